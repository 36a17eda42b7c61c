// The SQLite ledger's layout: a rowid table in append order with no secondary index (each charge
// writes a line, and an index is one more B-tree write per charge: bench/README.md). A file made by
// an earlier version (AUTOINCREMENT and a (sub, seq) index) opens, loses the index, keeps its lines
// and its order, and new lines follow its last one. Real files, opened by better-sqlite3 directly
// to read the schema.
import { join } from 'node:path'
import Database from 'better-sqlite3'
import t from 'tap'
import type { LedgerEntry } from '../src/store/index.js'
import { SqliteStore } from '../src/store/sqlite.js'
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

t.test('a new file: the ledger has no index and no AUTOINCREMENT; the query that pages it reads in seq order', async t => {
  const file = join(tempDir(t), 'tollgate.db')
  const store = SqliteStore.open(file)
  t.teardown(() => store.close())
  const { ledger, indexes } = schemaOf(file)
  t.match(ledger, /seq INTEGER PRIMARY KEY,/)
  t.notMatch(ledger, /AUTOINCREMENT/i)
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
