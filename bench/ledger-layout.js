// The SQLite store's charge transaction, in one process, for ledger layouts side by side: the
// quota upsert with its credits read (as src/store/sqlite.ts runs it) plus one ledger line per
// charge, group-committed in batches (as the store's group commit does; about 2–3 charges per commit
// at 10 connections). Each layout has its own file; rounds alternate between them; the figures are
// the median µs per charge, and each layout's ratio to the one Tollgate uses.
//
//   node bench/ledger-layout.js [--subjects 1,1000] [--batch 3] [--charges 60000] [--rounds 6]
//
// Layouts:
//   index+autoincrement  seq AUTOINCREMENT and an index on (sub, seq) (Tollgate before 2026-12-01)
//   autoincrement        seq AUTOINCREMENT, no index (files made before keep this)
//   tollgate             seq numbered in the INSERT above every line and every handed-out cursor
//   rowid                plain rowid (what SQLite assigns; can restart after the newest lines are deleted)
//   no-line              the charge alone (no ledger), the floor
// Files go to a temporary folder, removed at the end.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import Database from 'better-sqlite3'
import { median } from './processes.js'

const { values: args } = parseArgs({
  options: {
    subjects: { type: 'string', default: '1,1000' },
    batch: { type: 'string', default: '3' },
    charges: { type: 'string', default: '60000' },
    rounds: { type: 'string', default: '6' }
  }
})
const BATCH = Number(args.batch)
const CHARGES = Number(args.charges)
const ROUNDS = Number(args.rounds)

const LAYOUTS = {
  'index+autoincrement': { seq: 'seq INTEGER PRIMARY KEY AUTOINCREMENT', index: true, numbered: false, line: true },
  autoincrement: { seq: 'seq INTEGER PRIMARY KEY AUTOINCREMENT', index: false, numbered: false, line: true },
  tollgate: { seq: 'seq INTEGER PRIMARY KEY', index: false, numbered: true, line: true },
  rowid: { seq: 'seq INTEGER PRIMARY KEY', index: false, numbered: false, line: true },
  'no-line': { seq: 'seq INTEGER PRIMARY KEY', index: false, numbered: true, line: false }
}

const dir = mkdtempSync(join(tmpdir(), 'tollgate-ledger-layout-'))

function open (name, layout) {
  const db = new Database(join(dir, `${name}.db`))
  db.pragma('journal_mode = WAL')
  db.pragma('synchronous = NORMAL')
  // The tables the charge touches, as src/store/sqlite.ts creates them.
  db.exec(`
    CREATE TABLE quota (sub TEXT NOT NULL, window_ms INTEGER NOT NULL, window_start INTEGER NOT NULL,
      used INTEGER NOT NULL, expires_at INTEGER NOT NULL, PRIMARY KEY (sub, window_ms, window_start)) WITHOUT ROWID;
    CREATE INDEX quota_expiry ON quota (expires_at);
    CREATE TABLE credits (sub TEXT NOT NULL, window_ms INTEGER NOT NULL, window_start INTEGER NOT NULL,
      amount INTEGER NOT NULL, expires_at INTEGER NOT NULL, PRIMARY KEY (sub, window_ms, window_start)) WITHOUT ROWID;
    CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE ledger (${layout.seq}, ts INTEGER NOT NULL, sub TEXT NOT NULL, client_id TEXT,
      tool TEXT, kind TEXT NOT NULL, amount INTEGER NOT NULL, request_id TEXT);
    ${layout.index ? 'CREATE INDEX ledger_sub ON ledger (sub, seq);' : ''}`)
  const credits = db.prepare('SELECT amount FROM credits WHERE sub = ? AND window_ms = ? AND window_start = ?').pluck()
  const consume = db.prepare(`INSERT INTO quota (sub, window_ms, window_start, used, expires_at) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (sub, window_ms, window_start) DO UPDATE SET used = used + excluded.used
      WHERE used + excluded.used <= ? + coalesce((SELECT amount FROM credits c WHERE c.sub = excluded.sub AND c.window_ms = excluded.window_ms AND c.window_start = excluded.window_start), 0)
    RETURNING used`).pluck()
  const append = layout.numbered
    ? db.prepare(`INSERT INTO ledger (seq, ts, sub, client_id, tool, kind, amount, request_id)
        VALUES (max(coalesce((SELECT max(seq) FROM ledger), 0), coalesce((SELECT value FROM meta WHERE name = 'ledger_cursor'), 0)) + 1, ?, ?, ?, ?, ?, ?, ?)`)
    : db.prepare('INSERT INTO ledger (ts, sub, client_id, tool, kind, amount, request_id) VALUES (?, ?, ?, ?, ?, ?, ?)')
  const commit = db.transaction(batch => {
    for (const c of batch) {
      credits.get(c.sub, 60_000, 0)
      consume.get(c.sub, 60_000, 0, 1, 60_000, 1e15)
      if (layout.line) append.run(Date.now(), c.sub, 'bench', 'echo', 'charge', 1, c.requestId)
    }
  })
  return { db, commit }
}

for (const subjects of args.subjects.split(',').map(Number)) {
  const subs = Array.from({ length: subjects }, (_, i) => `user-${i}`)
  const opened = Object.fromEntries(Object.entries(LAYOUTS).map(([name, layout]) => [name, open(`${name}-${subjects}`, layout)]))
  const times = Object.fromEntries(Object.keys(LAYOUTS).map(name => [name, []]))
  let n = 0
  for (let round = 0; round < ROUNDS; round++) {
    for (const name of Object.keys(LAYOUTS)) {
      const started = process.hrtime.bigint()
      for (let i = 0; i < CHARGES; i += BATCH) {
        const batch = []
        for (let j = 0; j < BATCH; j++, n++) batch.push({ sub: subs[n % subjects], requestId: `req-${n.toString(36).padStart(10, '0')}` })
        opened[name].commit.immediate(batch)
      }
      times[name].push(Number(process.hrtime.bigint() - started) / 1000 / CHARGES)
    }
  }
  const ours = median(times.tollgate)
  console.log(`${subjects} subject(s), ${BATCH} charges per commit, ${ROUNDS} rounds of ${CHARGES} charges per layout:`)
  for (const name of Object.keys(LAYOUTS)) {
    const m = median(times[name])
    console.log(`  ${name.padEnd(20)} ${m.toFixed(2).padStart(7)} µs per charge   ${(m / ours).toFixed(2)} × tollgate`)
  }
  for (const { db } of Object.values(opened)) db.close()
}
rmSync(dir, { recursive: true, force: true })
