// What one SQLite point read costs in WAL mode, as the embedded store makes it (a prepared
// statement, its own implicit read transaction), against the same read with the file locked for
// this connection alone (locking_mode EXCLUSIVE, which Tollgate cannot use: the CLI opens the file
// beside a running server). The difference is the read transaction's lock system calls. It is why
// the SQLite store answers GET /validate's balance from what it last read or wrote
// (src/store/sqlite.ts, BALANCE_FRESH_MS) instead of a read per request.
//   node bench/sqlite-read.js      CPU µs per read, two rounds each
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'

const N = 50_000
for (const mode of ['WAL (as the store)', 'WAL, locking_mode EXCLUSIVE']) {
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-sqlite-read-'))
  const db = new Database(join(dir, 'bench.db'))
  db.pragma('journal_mode = WAL')
  db.pragma('synchronous = NORMAL')
  if (mode.includes('EXCLUSIVE')) db.pragma('locking_mode = EXCLUSIVE')
  db.exec(`CREATE TABLE quota (sub TEXT, window_ms INTEGER, window_start INTEGER, used INTEGER, PRIMARY KEY (sub, window_ms, window_start)) WITHOUT ROWID;
    CREATE TABLE credits (sub TEXT, window_ms INTEGER, window_start INTEGER, amount INTEGER, PRIMARY KEY (sub, window_ms, window_start)) WITHOUT ROWID;`)
  const insert = db.prepare('INSERT INTO quota VALUES (?, 86400000, 0, 5)')
  db.transaction(() => { for (let i = 0; i < 1000; i++) insert.run(`s${i}`) })()
  const balance = db.prepare(`SELECT coalesce((SELECT used FROM quota WHERE sub = ? AND window_ms = ? AND window_start = ?), 0),
    coalesce((SELECT amount FROM credits WHERE sub = ? AND window_ms = ? AND window_start = ?), 0)`).raw()
  for (let round = 1; round <= 2; round++) {
    const start = process.cpuUsage()
    for (let i = 0; i < N; i++) balance.get('s5', 86400000, 0, 's5', 86400000, 0)
    const used = process.cpuUsage(start)
    console.log(`${mode.padEnd(30)} round ${round}: ${((used.user + used.system) / N).toFixed(2)} µs CPU per balance read (system ${(used.system / N).toFixed(2)})`)
  }
  const map = new Map([['s5\n86400000\n0', { used: 5, credits: 0, at: performance.now() }]])
  const start = process.cpuUsage()
  let sink = 0
  for (let i = 0; i < N; i++) sink += map.get('s5\n86400000\n0').used
  const used = process.cpuUsage(start)
  if (mode.includes('as the store')) console.log(`${'a Map probe (the memory)'.padEnd(30)}         ${((used.user + used.system) / N).toFixed(2)} µs (${sink > 0 ? 'read' : ''})`)
  db.close()
  rmSync(dir, { recursive: true, force: true })
}
