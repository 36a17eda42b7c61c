// The SQLite store's own layout and batching. The ledger: a rowid table in append order with no secondary index (each charge
// writes a line, and an index is one more B-tree write per charge: bench/README.md). A file made by
// an earlier version (with a (sub, seq) index) opens, loses the index, keeps its lines and their
// order, and new lines follow its last one. A page examines a bounded number of lines, and the
// sequence does not restart when an operator deletes the newest lines. Real files, opened by
// better-sqlite3 directly to read or change them as an operator would.
import { statSync } from 'node:fs'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import t from 'tap'
import type { LedgerEntry } from '../src/store/index.js'
import { LEDGER_SCAN, SqliteStore } from '../src/store/sqlite.js'
import { tempDir } from './helper.js'

const line = (i: number, sub: string): LedgerEntry => ({ ts: 1_700_000_000_000 + i, sub, clientId: 'agent', tool: 'chat', kind: 'charge', amount: i, requestId: `r${i}` })

function schemaOf (file: string): { ledger: string, indexes: string[] } {
  const db = new Database(file, { readonly: true })
  try {
    const ledger = db.prepare("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'ledger'").pluck().get() as string
    const indexes = db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ledger'").pluck().all() as string[]
    return { ledger, indexes }
  } finally {
    db.close()
  }
}

async function readAll (store: SqliteStore, sub?: string): Promise<LedgerEntry[]> {
  const all: LedgerEntry[] = []
  let after: string | undefined
  do {
    const page = await store.listLedger({ limit: 3, ...(sub !== undefined ? { sub } : {}), ...(after !== undefined ? { after } : {}) })
    all.push(...page.entries)
    after = page.next
  } while (after !== undefined)
  return all
}

t.test('a new file: the ledger has no secondary index and no AUTOINCREMENT; the query that pages it reads in seq order', async t => {
  const file = join(tempDir(t), 'tollgate.db')
  const store = SqliteStore.open(file)
  t.teardown(() => store.close())
  const { ledger, indexes } = schemaOf(file)
  t.match(ledger, /seq INTEGER PRIMARY KEY,/)
  t.notMatch(ledger, /AUTOINCREMENT/i, 'no sqlite_sequence row written per line')
  t.same(indexes, [], 'no secondary index: nothing but the table is written per line')
  const lines = Array.from({ length: 10 }, (_, i) => line(i, i % 2 === 0 ? 'even' : 'odd'))
  await store.appendLedger(lines)
  t.same(await readAll(store), lines, 'every line, in append order, over pages of 3')
  t.same(await readAll(store, 'odd'), lines.filter(l => l.sub === 'odd'), 'filtered by subject, in order')
})

t.test('a file from an earlier version: the index is dropped, its lines and order are kept, new lines follow', async t => {
  const file = join(tempDir(t), 'tollgate.db')
  const old = new Database(file)
  old.pragma('journal_mode = WAL')
  old.exec(`CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, sub TEXT NOT NULL, client_id TEXT,
    tool TEXT, kind TEXT NOT NULL, amount INTEGER NOT NULL, request_id TEXT
  );
  CREATE INDEX ledger_sub ON ledger (sub, seq);`)
  const insert = old.prepare('INSERT INTO ledger (ts, sub, client_id, tool, kind, amount, request_id) VALUES (?, ?, ?, ?, ?, ?, ?)')
  const before = Array.from({ length: 5 }, (_, i) => line(i, 'mona'))
  for (const e of before) insert.run(e.ts, e.sub, e.clientId, e.tool, e.kind, e.amount, e.requestId)
  old.close()
  t.same(schemaOf(file).indexes, ['ledger_sub'], 'the earlier layout, as it was written')

  const store = SqliteStore.open(file)
  t.teardown(() => store.close())
  t.same(schemaOf(file).indexes, [], 'the index is gone once the file is opened')
  const after = Array.from({ length: 4 }, (_, i) => line(10 + i, 'mona'))
  await store.appendLedger(after)
  t.same(await readAll(store), [...before, ...after], 'old lines first, new lines after them, none lost or repeated')
  t.same(await readAll(store, 'mona'), [...before, ...after])
})

t.test('a page examines at most LEDGER_SCAN lines: a rare subject is found over short pages, each with a next', async t => {
  const file = join(tempDir(t), 'tollgate.db')
  const store = SqliteStore.open(file)
  t.teardown(() => store.close())
  // 2.5 windows of other subjects' lines, written straight into the file (one transaction), then
  // the rare subject's two lines at the end.
  const db = new Database(file)
  const insert = db.prepare('INSERT INTO ledger (ts, sub, client_id, tool, kind, amount, request_id) VALUES (?, ?, ?, ?, ?, ?, ?)')
  const others = Math.floor(LEDGER_SCAN * 2.5)
  db.transaction(() => { for (let i = 0; i < others; i++) insert.run(i, `user-${i % 100}`, 'agent', 'chat', 'charge', 1, null) })()
  db.close()
  await store.appendLedger([line(1, 'rare'), line(2, 'rare')])

  const pages: Array<{ n: number, next: string | undefined }> = []
  const found: LedgerEntry[] = []
  let after: string | undefined
  do {
    const page = await store.listLedger({ sub: 'rare', limit: 10, ...(after !== undefined ? { after } : {}) })
    pages.push({ n: page.entries.length, next: page.next })
    found.push(...page.entries)
    after = page.next
  } while (after !== undefined && pages.length < 10)
  t.same(found, [line(1, 'rare'), line(2, 'rare')], 'both lines, once each')
  t.same(pages.map(p => p.n), [0, 0, 2], 'two empty pages of LEDGER_SCAN lines each, then the page that reaches the end')
  t.same(pages.map(p => p.next), [String(LEDGER_SCAN), String(2 * LEDGER_SCAN), undefined])
  const full = await store.listLedger({ limit: 5 })
  t.equal(full.entries.length, 5, 'an unfiltered page is full')
  t.equal(full.next, '5')
})

t.test('lines trimmed by an operator: no empty pages for them, and the sequence does not restart', async t => {
  const file = join(tempDir(t), 'tollgate.db')
  const store = SqliteStore.open(file)
  t.teardown(() => store.close())
  const first = Array.from({ length: 6 }, (_, i) => line(i, 'mona'))
  await store.appendLedger(first)
  const page = await store.listLedger({ limit: 4 })
  t.equal(page.next, '4', 'an exporter holds this cursor')
  // The operator exports and deletes everything, the newest lines included.
  const db = new Database(file)
  db.exec('DELETE FROM ledger')
  db.close()
  const later = [line(10, 'mona'), line(11, 'mona')]
  await store.appendLedger(later)
  const resumed = await store.listLedger({ limit: 10, after: page.next as string })
  t.same(resumed.entries, later, 'the cursor finds every line written after the trim')
  t.equal(resumed.next, undefined)

  // Far more trimmed lines than one page examines: the first page still reaches the rest.
  const db2 = new Database(file)
  const insert = db2.prepare('INSERT INTO ledger (ts, sub, client_id, tool, kind, amount, request_id) VALUES (?, ?, ?, ?, ?, ?, ?)')
  db2.transaction(() => { for (let i = 0; i < LEDGER_SCAN + 10; i++) insert.run(i, 'old', null, null, 'charge', 1, null) })()
  db2.exec('DELETE FROM ledger')
  db2.close()
  await store.appendLedger([line(20, 'mona')])
  t.same(await store.listLedger({ limit: 10 }), { entries: [line(20, 'mona')], next: undefined }, 'one page, no empty ones for the trimmed')
})

t.test('group commit: after a shared commit, charges over three turns of the loop share one; a lone caller does not wait', async t => {
  const file = join(tempDir(t), 'tollgate.db')
  const store = SqliteStore.open(file)
  t.teardown(() => store.close())
  const W = 60_000
  const charge = async (): Promise<unknown> => await store.consumeQuota('s', 0, W, 1_000_000, 1)
  const turn = async (): Promise<void> => { await new Promise(resolve => setImmediate(resolve)) }
  // WAL frames: each commit appends the pages it wrote (here the quota row's one page) to the WAL.
  const wal = (): number => statSync(`${file}-wal`).size
  await charge() // the row exists: a later charge rewrites one page
  await Promise.all([charge(), charge()]) // a batch of two: the next charge waits for company
  let before = wal()
  const spread = [charge()]
  await turn()
  spread.push(charge())
  await turn()
  spread.push(charge())
  const results = await Promise.all(spread)
  t.same(results.map(r => (r as { granted: boolean }).granted), [true, true, true])
  const frame = 24 + 4096
  t.equal(wal() - before, frame, 'three charges in three turns: one commit, one WAL frame')

  // The last commit held three; one caller alone next commits at once, then is alone again.
  await charge()
  before = wal()
  const first = charge()
  await turn()
  const second = charge()
  await Promise.all([first, second])
  t.equal(wal() - before, 2 * frame, 'alone last time: committed in its first turn, before the second caller came')
  t.equal(await store.getQuota('s', 0, W), 9, 'every charge once')
})

t.test('close() commits the charges still waiting for their turn', async t => {
  const file = join(tempDir(t), 'tollgate.db')
  const store = SqliteStore.open(file)
  const W = 60_000
  await Promise.all([store.consumeQuota('s', 0, W, 10, 1), store.consumeQuota('s', 0, W, 10, 1)])
  const waiting = store.consumeQuota('s', 0, W, 10, 1, line(1, 's'))
  await store.close()
  t.match(await waiting, { granted: true, used: 3, recorded: true })
  const reopened = SqliteStore.open(file)
  t.teardown(() => reopened.close())
  t.equal(await reopened.getQuota('s', 0, W), 3, 'in the file')
  t.equal((await reopened.listLedger({ limit: 10 })).entries.length, 1, 'with its ledger line')
})

t.test('group commit: Idempotency-Key claims go through it too, in order', async t => {
  const file = join(tempDir(t), 'tollgate.db')
  const store = SqliteStore.open(file)
  t.teardown(() => store.close())
  const turn = async (): Promise<void> => { await new Promise(resolve => setImmediate(resolve)) }
  const wal = (): number => statSync(`${file}-wal`).size
  const claim = async (key: string): Promise<unknown> => await store.claimIdempotencyKey(key, 'h', `owner-${key}`, 2_000_000_000_000, 1_000_000_000_000)
  await Promise.all([claim('a'), claim('b')]) // the table's page exists; the last commit was shared
  const before = wal()
  const claims = [claim('c')]
  await turn()
  claims.push(claim('d'))
  await turn()
  claims.push(claim('c')) // the same key again, after the first claim of it in the same commit
  t.same(await Promise.all(claims), [{ state: 'claimed' }, { state: 'claimed' }, { state: 'running', bodyHash: 'h' }], 'in order: the second claim of c sees the first')
  // One commit writes the table's page and its expiry index's page: two frames (three commits: six).
  t.equal(wal() - before, 2 * (24 + 4096), 'three claims over three turns: one commit')
  t.equal(await store.completeIdempotencyKey('c', 'owner-c', { status: 200, contentType: 'application/json', body: Buffer.from('{}') }, 2_000_000_000_000, 1_000_000_000_000), true)
  t.match(await claim('c'), { state: 'done', answer: { status: 200 } })
})
