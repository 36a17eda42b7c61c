// The embedded Store: one SQLite file (better-sqlite3, WAL). Every method is one statement or one
// IMMEDIATE transaction, so it is atomic against other connections to the same file (the CLI,
// a second process) as well as within this process. Calls are synchronous and short; the async
// signatures only match the Store interface.
import { mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import Database from 'better-sqlite3'
import type { Balance, CounterResult, CounterTake, IdempotencyClaim, IdempotentAnswer, KeyRecord, LedgerEntry, LedgerPage, LedgerQuery, QuotaResult, RefreshFamily, Revocation, RevocationPage, RotateResult, Store, StoredClient } from './index.js'

// The ledger is one rowid table, `seq` in append order, with nothing else written per line: every
// charge writes one, in the charge's own transaction, and each extra B-tree is one more page in
// every commit. The `(sub, seq)` index it had cost more than the line itself (4 to 35 µs per charge,
// more the more subjects, since each line lands at a random place in it) while the one query that
// reads the ledger (listLedger: `seq > ?` in order, `sub` and `since` as filters) never used it; and
// AUTOINCREMENT's sqlite_sequence row cost about 4 µs more (bench/README.md, "The usage ledger's
// cost"). What AUTOINCREMENT guaranteed is kept another way: a new line's seq is above every line's
// and above every cursor ever handed out (meta 'ledger_cursor', written by listLedger, a rare admin
// read), so an operator who trims the newest lines cannot make a held cursor skip new ones.
// Files made earlier lose the index when opened and keep AUTOINCREMENT (the same order, its cost).
const SCHEMA = `
CREATE TABLE IF NOT EXISTS keys (
  kid TEXT PRIMARY KEY, alg TEXT NOT NULL, public_jwk TEXT NOT NULL, private_enc TEXT NOT NULL,
  created_at INTEGER NOT NULL, activates_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS quota (
  sub TEXT NOT NULL, window_ms INTEGER NOT NULL, window_start INTEGER NOT NULL,
  used INTEGER NOT NULL, expires_at INTEGER NOT NULL,
  PRIMARY KEY (sub, window_ms, window_start)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS quota_expiry ON quota (expires_at);
CREATE TABLE IF NOT EXISTS families (
  id TEXT PRIMARY KEY, client_id TEXT NOT NULL, sub TEXT NOT NULL, scope TEXT NOT NULL,
  aud TEXT NOT NULL, extra TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
  current_hash TEXT NOT NULL, last_used_at INTEGER NOT NULL, revoked_at INTEGER
);
CREATE INDEX IF NOT EXISTS families_expiry ON families (expires_at);
CREATE TABLE IF NOT EXISTS refresh_tokens (
  hash TEXT PRIMARY KEY, family_id TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens (family_id);
CREATE TABLE IF NOT EXISTS revocations (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, id TEXT NOT NULL, expires_at INTEGER NOT NULL,
  UNIQUE (kind, id)
);
CREATE INDEX IF NOT EXISTS revocations_expiry ON revocations (expires_at);
CREATE TABLE IF NOT EXISTS counters (
  key TEXT PRIMARY KEY, window_start INTEGER NOT NULL, count INTEGER NOT NULL, expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS counters_expiry ON counters (expires_at);
CREATE TABLE IF NOT EXISTS seen (
  key TEXT PRIMARY KEY, expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_expiry ON seen (expires_at);
CREATE TABLE IF NOT EXISTS idempotency (
  key TEXT PRIMARY KEY, body_hash TEXT NOT NULL, owner TEXT NOT NULL,
  status INTEGER, content_type TEXT, body BLOB, expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency (expires_at);
CREATE TABLE IF NOT EXISTS credits (
  sub TEXT NOT NULL, window_ms INTEGER NOT NULL, window_start INTEGER NOT NULL,
  amount INTEGER NOT NULL, expires_at INTEGER NOT NULL,
  PRIMARY KEY (sub, window_ms, window_start)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS credits_expiry ON credits (expires_at);
CREATE TABLE IF NOT EXISTS ledger (
  seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, sub TEXT NOT NULL, client_id TEXT,
  tool TEXT, kind TEXT NOT NULL, amount INTEGER NOT NULL, request_id TEXT
);
DROP INDEX IF EXISTS ledger_sub;
CREATE TABLE IF NOT EXISTS clients (
  id TEXT PRIMARY KEY, data TEXT NOT NULL, live INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
  name TEXT PRIMARY KEY, value INTEGER NOT NULL
) WITHOUT ROWID;
`

const COUNTER_FLUSH_MS = 1000
/**
 * Turns of the event loop a write waits for others to share its commit, when the last commit was
 * shared (setImmediate each; an idle loop turns in microseconds). Each commit writes its pages as new
 * WAL frames and takes the file's locks. Measured on POST /call at defaults, 10 connections
 * (bench/README.md, "Group commit"): 2 turns 1.18 times 1, 3 turns 1.08 times 2, 4 the same as 3.
 */
const COMMIT_TURNS = 3
/**
 * Ledger lines one page examines at most: about 7 ms of one core for a filter that matches nothing
 * (70 ms per million lines, measured with a subject that has no line).
 */
export const LEDGER_SCAN = 100_000
/**
 * How long a balance this process read or wrote answers getBalanceSync without a read. A read in
 * WAL mode costs about 8 µs of lock system calls on this kind of machine (a Map probe, well under
 * one: bench/README.md), and GET /validate reports the balance on every answer. The charges
 * themselves always go to the file; only another process writing the same window (never Tollgate
 * itself: one process per SQLite file) could make a reported balance this much older.
 */
const BALANCE_FRESH_MS = 1000
/** Balances remembered at most; past that, the oldest is forgotten. */
const MAX_BALANCES = 100_000
/** Counters kept in memory at most; past that, ended windows are dropped (and all flushed). */
const MAX_COUNTERS = 100_000

interface FamilyRow {
  id: string
  client_id: string
  sub: string
  scope: string
  aud: string
  extra: string
  created_at: number
  expires_at: number
  current_hash: string
  last_used_at: number
  revoked_at: number | null
}

function toFamily (row: FamilyRow): RefreshFamily {
  const family: RefreshFamily = {
    id: row.id,
    clientId: row.client_id,
    sub: row.sub,
    scope: row.scope,
    aud: JSON.parse(row.aud),
    extra: JSON.parse(row.extra),
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    currentHash: row.current_hash,
    lastUsedAt: row.last_used_at
  }
  if (row.revoked_at !== null) family.revokedAt = row.revoked_at
  return family
}

/** A write of the hot path waiting for the next group commit. */
interface PendingWrite { run: () => unknown, resolve: (value: any) => void, reject: (e: unknown) => void }

/** A quota window's key in the balance memory: unambiguous for any subject, the two numbers end it. */
function balanceKey (sub: string, windowStart: number, windowMs: number): string {
  return `${sub}\n${windowMs}\n${windowStart}`
}

export class SqliteStore implements Store {
  readonly kind = 'sqlite' as const
  readonly #db: Database.Database
  readonly #stmt
  readonly #counters = new Map<string, { windowStart: number, expiresAt: number, count: number, pending: number }>()
  #flushTimer: NodeJS.Timeout | undefined
  #writes: PendingWrite[] = []
  /** Writes in the last group commit. */
  #lastBatch = 0
  /** Window (balanceKey) → its usage and credits as this process last read or wrote them. */
  readonly #balances = new Map<string, Balance & { at: number }>()
  /** The group commit's transaction, built once (better-sqlite3 builds a wrapper per transaction() call). */
  readonly #writeBatch: Database.Transaction<(batch: PendingWrite[]) => unknown[]>

  private constructor (db: Database.Database) {
    this.#db = db
    this.#stmt = {
      listKeys: db.prepare('SELECT * FROM keys ORDER BY activates_at'),
      pendingKeys: db.prepare('SELECT count(*) AS n FROM keys WHERE activates_at > ?').pluck(),
      insertKey: db.prepare('INSERT INTO keys (kid, alg, public_jwk, private_enc, created_at, activates_at) VALUES (?, ?, ?, ?, ?, ?)'),
      deleteKey: db.prepare('DELETE FROM keys WHERE kid = ?'),
      pendingKids: db.prepare('SELECT kid FROM keys WHERE activates_at > ?').pluck(),
      consume: db.prepare(`INSERT INTO quota (sub, window_ms, window_start, used, expires_at) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (sub, window_ms, window_start) DO UPDATE SET used = used + excluded.used
          WHERE used + excluded.used <= ? + coalesce((SELECT amount FROM credits c WHERE c.sub = excluded.sub AND c.window_ms = excluded.window_ms AND c.window_start = excluded.window_start), 0)
        RETURNING used`).pluck(),
      getCredits: db.prepare('SELECT amount FROM credits WHERE sub = ? AND window_ms = ? AND window_start = ?').pluck(),
      // Both rows in one statement, as an array (no row object): the balance GET /validate reports.
      getBalance: db.prepare(`SELECT coalesce((SELECT used FROM quota WHERE sub = ? AND window_ms = ? AND window_start = ?), 0),
        coalesce((SELECT amount FROM credits WHERE sub = ? AND window_ms = ? AND window_start = ?), 0)`).raw(),
      addCredits: db.prepare(`INSERT INTO credits (sub, window_ms, window_start, amount, expires_at) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (sub, window_ms, window_start) DO UPDATE SET amount = amount + excluded.amount RETURNING amount`).pluck(),
      resetQuota: db.prepare('UPDATE quota SET used = 0 WHERE sub = ? AND window_ms = ? AND window_start = ?'),
      purgeCredits: db.prepare('DELETE FROM credits WHERE (sub, window_ms, window_start) IN (SELECT sub, window_ms, window_start FROM credits WHERE expires_at <= ? LIMIT ?)'),
      appendLedger: db.prepare(`INSERT INTO ledger (seq, ts, sub, client_id, tool, kind, amount, request_id)
        VALUES (max(coalesce((SELECT max(seq) FROM ledger), 0), coalesce((SELECT value FROM meta WHERE name = 'ledger_cursor'), 0)) + 1,
          ?, ?, ?, ?, ?, ?, ?)`),
      keepLedgerCursor: db.prepare(`INSERT INTO meta (name, value) VALUES ('ledger_cursor', ?)
        ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)`),
      listLedger: db.prepare(`SELECT seq, ts, sub, client_id, tool, kind, amount, request_id FROM ledger
        WHERE seq > @after AND seq <= @upto AND (@sub IS NULL OR sub = @sub) AND ts >= @since ORDER BY seq LIMIT @limit`),
      firstLedgerSeq: db.prepare('SELECT min(seq) FROM ledger WHERE seq > ?').pluck(),
      lastLedgerSeq: db.prepare('SELECT coalesce(max(seq), 0) FROM ledger').pluck(),
      listClients: db.prepare('SELECT data FROM clients ORDER BY id').pluck(),
      clientLive: db.prepare('SELECT live FROM clients WHERE id = ?').pluck(),
      putClient: db.prepare('INSERT INTO clients (id, data, live) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET data = excluded.data, live = excluded.live'),
      getVersion: db.prepare("SELECT coalesce((SELECT value FROM meta WHERE name = 'clients'), 0)").pluck(),
      bumpVersion: db.prepare("INSERT INTO meta (name, value) VALUES ('clients', 1) ON CONFLICT (name) DO UPDATE SET value = value + 1"),
      refund: db.prepare('UPDATE quota SET used = max(0, used - ?) WHERE sub = ? AND window_ms = ? AND window_start = ?'),
      settle: db.prepare(`INSERT INTO quota (sub, window_ms, window_start, used, expires_at) VALUES (?, ?, ?, max(0, ?), ?)
        ON CONFLICT (sub, window_ms, window_start) DO UPDATE SET used = max(0, used + ?)
        RETURNING used`).pluck(),
      getQuota: db.prepare('SELECT used FROM quota WHERE sub = ? AND window_ms = ? AND window_start = ?').pluck(),
      insertFamily: db.prepare(`INSERT INTO families (id, client_id, sub, scope, aud, extra, created_at, expires_at, current_hash, last_used_at)
        VALUES (@id, @clientId, @sub, @scope, @aud, @extra, @createdAt, @expiresAt, @currentHash, @lastUsedAt)`),
      insertToken: db.prepare('INSERT INTO refresh_tokens (hash, family_id) VALUES (?, ?)'),
      familyOfToken: db.prepare('SELECT f.* FROM refresh_tokens t JOIN families f ON f.id = t.family_id WHERE t.hash = ?'),
      swap: db.prepare('UPDATE families SET current_hash = ?, last_used_at = ? WHERE id = ? AND current_hash = ? AND revoked_at IS NULL'),
      revokeFamily: db.prepare('UPDATE families SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL'),
      addRevocation: db.prepare(`INSERT INTO revocations (kind, id, expires_at) VALUES (?, ?, ?)
        ON CONFLICT (kind, id) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)`),
      listRevocations: db.prepare('SELECT seq, kind, id, expires_at FROM revocations WHERE seq > ? AND expires_at > ? ORDER BY seq LIMIT 5000'),
      maxSeq: db.prepare('SELECT coalesce(max(seq), 0) FROM revocations').pluck(),
      addToCounter: db.prepare(`INSERT INTO counters (key, window_start, count, expires_at) VALUES (?, ?, ?, ?)
        ON CONFLICT (key) DO UPDATE SET
          count = CASE WHEN window_start = excluded.window_start THEN count + excluded.count ELSE excluded.count END,
          window_start = excluded.window_start, expires_at = excluded.expires_at`),
      getCounter: db.prepare('SELECT window_start, count FROM counters WHERE key = ?'),
      purgeQuota: db.prepare('DELETE FROM quota WHERE (sub, window_ms, window_start) IN (SELECT sub, window_ms, window_start FROM quota WHERE expires_at <= ? LIMIT ?)'),
      expiredFamilies: db.prepare('SELECT id FROM families WHERE expires_at <= ? LIMIT ?').pluck(),
      deleteFamilyTokens: db.prepare('DELETE FROM refresh_tokens WHERE family_id = ?'),
      deleteFamily: db.prepare('DELETE FROM families WHERE id = ?'),
      purgeRevocations: db.prepare('DELETE FROM revocations WHERE seq IN (SELECT seq FROM revocations WHERE expires_at <= ? LIMIT ?)'),
      purgeCounters: db.prepare('DELETE FROM counters WHERE key IN (SELECT key FROM counters WHERE expires_at <= ? LIMIT ?)'),
      markSeen: db.prepare(`INSERT INTO seen (key, expires_at) VALUES (?, ?)
        ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at WHERE seen.expires_at <= ?`),
      purgeSeen: db.prepare('DELETE FROM seen WHERE key IN (SELECT key FROM seen WHERE expires_at <= ? LIMIT ?)'),
      // Inserted, or an expired record taken over (1 change); a live record: 0 changes.
      claimIdem: db.prepare(`INSERT INTO idempotency (key, body_hash, owner, expires_at) VALUES (?, ?, ?, ?)
        ON CONFLICT (key) DO UPDATE SET body_hash = excluded.body_hash, owner = excluded.owner,
          status = NULL, content_type = NULL, body = NULL, expires_at = excluded.expires_at
        WHERE idempotency.expires_at <= ?`),
      getIdem: db.prepare('SELECT body_hash, status, content_type, body FROM idempotency WHERE key = ?'),
      completeIdem: db.prepare(`UPDATE idempotency SET status = ?, content_type = ?, body = ?, expires_at = ?
        WHERE key = ? AND owner = ? AND status IS NULL AND expires_at > ?`),
      releaseIdem: db.prepare('DELETE FROM idempotency WHERE key = ? AND owner = ? AND status IS NULL'),
      purgeIdem: db.prepare('DELETE FROM idempotency WHERE key IN (SELECT key FROM idempotency WHERE expires_at <= ? LIMIT ?)'),
      ping: db.prepare('SELECT 1').pluck()
    }
    this.#writeBatch = db.transaction((batch: PendingWrite[]) => batch.map(w => w.run()))
  }

  static open (file: string): SqliteStore {
    if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true, mode: 0o700 })
    const db = new Database(file)
    db.pragma('journal_mode = WAL')
    db.pragma('synchronous = NORMAL') // durable across a process kill; an OS crash may lose the last commits
    db.pragma('busy_timeout = 1000') // a short wait: a second process (the CLI) holds locks only briefly
    db.pragma('foreign_keys = ON')
    db.exec(SCHEMA)
    return new SqliteStore(db)
  }

  async listKeys (): Promise<KeyRecord[]> {
    return (this.#stmt.listKeys.all() as any[]).map(row => ({
      kid: row.kid,
      alg: row.alg,
      publicJwk: JSON.parse(row.public_jwk),
      privateEnc: row.private_enc,
      createdAt: row.created_at,
      activatesAt: row.activates_at
    }))
  }

  async addKeyIfNoPending (key: KeyRecord, now: number): Promise<boolean> {
    return this.#db.transaction(() => {
      if ((this.#stmt.pendingKeys.get(now) as number) > 0) return false
      this.#stmt.insertKey.run(key.kid, key.alg, JSON.stringify(key.publicJwk), key.privateEnc, key.createdAt, key.activatesAt)
      return true
    }).immediate()
  }

  async deleteKeys (kids: string[]): Promise<void> {
    this.#db.transaction(() => { for (const kid of kids) this.#stmt.deleteKey.run(kid) }).immediate()
  }

  async replaceKeys (key: KeyRecord, now: number, retire: string[]): Promise<string[]> {
    return this.#db.transaction(() => {
      const deleted: string[] = []
      for (const kid of new Set([...(this.#stmt.pendingKids.all(now) as string[]), ...retire])) {
        if (this.#stmt.deleteKey.run(kid).changes > 0) deleted.push(kid)
      }
      this.#stmt.insertKey.run(key.kid, key.alg, JSON.stringify(key.publicJwk), key.privateEnc, key.createdAt, key.activatesAt)
      return deleted
    }).immediate()
  }

  // Group commit: the hot path's writes (charges, refunds, settlements, ledger lines, and an
  // Idempotency-Key's claim, kept answer or release) that arrive within COMMIT_TURNS turns of the event loop run in order as one IMMEDIATE
  // transaction. Each is still its own statements, checked by SQLite in order (exact under any
  // concurrency, across processes too), and no caller hears its result before the commit that makes
  // it durable; the batch only saves WAL commits. A write that fails fails the batch: every write in
  // it is rolled back and rejected (only the file failing can make these statements throw).
  async #write<T> (run: () => T): Promise<T> {
    return await new Promise((resolve, reject) => {
      this.#writes.push({ run, resolve, reject })
      // Alone last time: likely alone now, so it waits no turn for nobody (a caller alone would
      // only pay the loop's extra polls).
      if (this.#writes.length === 1) this.#commitAfter(this.#lastBatch > 1 ? COMMIT_TURNS : 1)
    })
  }

  #commitAfter (turns: number): void {
    setImmediate(() => { if (turns > 1) this.#commitAfter(turns - 1); else this.#commitWrites() })
  }

  #commitWrites (): void {
    const batch = this.#writes
    if (batch.length === 0) return // committed by close()
    this.#writes = []
    this.#lastBatch = batch.length
    let results: unknown[]
    try {
      results = this.#writeBatch.immediate(batch)
    } catch (err) {
      for (const w of batch) w.reject(err)
      return
    }
    batch.forEach((w, i) => { w.resolve(results[i]) })
  }

  async consumeQuota (sub: string, windowStart: number, windowMs: number, limit: number, cost: number, line?: LedgerEntry): Promise<QuotaResult> {
    return await this.#write(() => this.#charge(sub, windowStart, windowMs, limit, cost, line))
  }

  // In the group commit's transaction.
  #charge (sub: string, windowStart: number, windowMs: number, limit: number, cost: number, line: LedgerEntry | undefined): QuotaResult {
    // A first insert is not checked by the upsert's WHERE: a cost above the limit is checked
    // here, against the limit plus the window's credits.
    // Read once: nothing else writes inside this transaction.
    const credits = this.#credits(sub, windowStart, windowMs)
    const used = cost > limit + credits
      ? undefined
      : this.#stmt.consume.get(sub, windowMs, windowStart, cost, windowStart + windowMs, limit) as number | undefined
    const result: QuotaResult = used !== undefined
      ? { granted: true, used }
      : { granted: false, used: (this.#stmt.getQuota.get(sub, windowMs, windowStart) as number | undefined) ?? 0 }
    if (credits > 0) result.credits = credits
    this.#remember(balanceKey(sub, windowStart, windowMs), result.used, credits)
    if (result.granted && line !== undefined) {
      this.#stmt.appendLedger.run(line.ts, line.sub, line.clientId, line.tool, line.kind, line.amount, line.requestId)
      result.recorded = true
    }
    return result
  }

  // In the group commit; the remembered balance is forgotten when the write runs, so a read made
  // while it waited cannot outlive it.
  async refundQuota (sub: string, windowStart: number, windowMs: number, cost: number): Promise<void> {
    await this.#write(() => {
      this.#balances.delete(balanceKey(sub, windowStart, windowMs))
      this.#stmt.refund.run(cost, sub, windowMs, windowStart)
    })
  }

  // One upsert: atomic against concurrent charges and settlements, in this process and others.
  async settleQuota (sub: string, windowStart: number, windowMs: number, delta: number): Promise<number> {
    return await this.#write(() => {
      this.#balances.delete(balanceKey(sub, windowStart, windowMs))
      return this.#stmt.settle.get(sub, windowMs, windowStart, delta, windowStart + windowMs, delta) as number
    })
  }

  async getQuota (sub: string, windowStart: number, windowMs: number): Promise<number> {
    return (this.#stmt.getQuota.get(sub, windowMs, windowStart) as number | undefined) ?? 0
  }

  #credits (sub: string, windowStart: number, windowMs: number): number {
    return (this.#stmt.getCredits.get(sub, windowMs, windowStart) as number | undefined) ?? 0
  }

  async addCredits (sub: string, windowStart: number, windowMs: number, amount: number): Promise<number> {
    this.#balances.delete(balanceKey(sub, windowStart, windowMs))
    return this.#stmt.addCredits.get(sub, windowMs, windowStart, amount, windowStart + windowMs) as number
  }

  async getBalance (sub: string, windowStart: number, windowMs: number): Promise<Balance> {
    return this.getBalanceSync(sub, windowStart, windowMs)
  }

  getBalanceSync (sub: string, windowStart: number, windowMs: number): Balance {
    const key = balanceKey(sub, windowStart, windowMs)
    const known = this.#balances.get(key)
    if (known !== undefined && performance.now() - known.at < BALANCE_FRESH_MS) return { used: known.used, credits: known.credits }
    const [used, credits] = this.#stmt.getBalance.get(sub, windowMs, windowStart, sub, windowMs, windowStart) as [number, number]
    this.#remember(key, used, credits)
    return { used, credits }
  }

  #remember (key: string, used: number, credits: number): void {
    const balances = this.#balances
    if (balances.size >= MAX_BALANCES && !balances.has(key)) {
      const oldest = balances.keys().next()
      if (oldest.done !== true) balances.delete(oldest.value)
    }
    balances.set(key, { used, credits, at: performance.now() })
  }

  async resetQuota (sub: string, windowStart: number, windowMs: number): Promise<number> {
    this.#balances.delete(balanceKey(sub, windowStart, windowMs))
    return this.#db.transaction(() => {
      const used = (this.#stmt.getQuota.get(sub, windowMs, windowStart) as number | undefined) ?? 0
      this.#stmt.resetQuota.run(sub, windowMs, windowStart)
      return used
    }).immediate()
  }

  async appendLedger (entries: readonly LedgerEntry[]): Promise<void> {
    if (entries.length === 0) return
    await this.#write(() => {
      for (const e of entries) this.#stmt.appendLedger.run(e.ts, e.sub, e.clientId, e.tool, e.kind, e.amount, e.requestId)
    })
  }

  // One page examines at most LEDGER_SCAN lines, as the Redis store's script does: a filter that
  // matches rarely gives short or empty pages with a `next`, never one statement that holds the
  // event loop for the whole ledger. The window starts at the first line after the cursor, so lines
  // trimmed by an operator cost no empty pages; other gaps only make a window hold fewer lines.
  async listLedger (query: LedgerQuery): Promise<LedgerPage> {
    const parsed = query.after === undefined ? 0 : Number(query.after)
    const after = Number.isSafeInteger(parsed) && parsed > 0 ? parsed : 0
    const first = this.#stmt.firstLedgerSeq.get(after) as number | null
    if (first === null) return { entries: [], next: undefined }
    const upto = first - 1 + LEDGER_SCAN
    const rows = this.#stmt.listLedger.all({
      after,
      upto,
      sub: query.sub ?? null,
      since: query.since ?? 0,
      limit: query.limit
    }) as Array<{ seq: number, ts: number, sub: string, client_id: string | null, tool: string | null, kind: LedgerEntry['kind'], amount: number, request_id: string | null }>
    const last = rows.at(-1)
    let next: string | undefined
    if (rows.length === query.limit && last !== undefined) next = String(last.seq)
    else if ((this.#stmt.lastLedgerSeq.get() as number) > upto) next = String(upto)
    if (next !== undefined) this.#stmt.keepLedgerCursor.run(Number(next))
    return {
      entries: rows.map(r => ({ ts: r.ts, sub: r.sub, clientId: r.client_id, tool: r.tool, kind: r.kind, amount: r.amount, requestId: r.request_id })),
      next
    }
  }

  async listClients (): Promise<{ version: number, clients: StoredClient[] }> {
    return this.#db.transaction(() => ({
      version: this.#stmt.getVersion.get() as number,
      clients: (this.#stmt.listClients.all() as string[]).map(d => JSON.parse(d) as StoredClient)
    }))()
  }

  async clientsVersion (): Promise<number> {
    return this.#stmt.getVersion.get() as number
  }

  async putClient (client: StoredClient, mode: 'create' | 'update'): Promise<boolean> {
    return this.#db.transaction(() => {
      const live = this.#stmt.clientLive.get(client.id) as number | undefined
      if (mode === 'create' ? live === 1 : live !== 1) return false
      this.#stmt.putClient.run(client.id, JSON.stringify(client), client.deleted ? 0 : 1)
      this.#stmt.bumpVersion.run()
      return true
    }).immediate()
  }

  async createFamily (family: RefreshFamily, tokenHash: string): Promise<void> {
    this.#db.transaction(() => {
      this.#stmt.insertFamily.run({ ...family, aud: JSON.stringify(family.aud), extra: JSON.stringify(family.extra), currentHash: tokenHash })
      this.#stmt.insertToken.run(tokenHash, family.id)
    }).immediate()
  }

  async rotateRefresh (tokenHash: string, newHash: string, now: number): Promise<RotateResult> {
    return this.#db.transaction((): RotateResult => {
      const row = this.#stmt.familyOfToken.get(tokenHash) as FamilyRow | undefined
      if (row === undefined) return { status: 'unknown' }
      if (row.revoked_at !== null) return { status: 'revoked', family: toFamily(row) }
      if (row.current_hash !== tokenHash) {
        this.#stmt.revokeFamily.run(now, row.id)
        return { status: 'reused', family: { ...toFamily(row), revokedAt: now } }
      }
      this.#stmt.swap.run(newHash, now, row.id, tokenHash)
      this.#stmt.insertToken.run(newHash, row.id)
      return { status: 'rotated', family: { ...toFamily(row), currentHash: newHash, lastUsedAt: now } }
    }).immediate()
  }

  async findFamily (tokenHash: string): Promise<RefreshFamily | undefined> {
    const row = this.#stmt.familyOfToken.get(tokenHash) as FamilyRow | undefined
    return row === undefined ? undefined : toFamily(row)
  }

  async revokeFamily (id: string, now: number): Promise<void> {
    this.#stmt.revokeFamily.run(now, id)
  }

  async addRevocation (revocation: Revocation): Promise<void> {
    this.#stmt.addRevocation.run(revocation.kind, revocation.id, revocation.expiresAt)
  }

  async listRevocations (after: string | undefined, now: number): Promise<RevocationPage> {
    const from = after === undefined ? 0 : Number(after)
    const rows = this.#stmt.listRevocations.all(Number.isSafeInteger(from) ? from : 0, now) as Array<{ seq: number, kind: 'jti' | 'family', id: string, expires_at: number }>
    const last = rows.at(-1)
    // With no rows, move the cursor to the newest sequence so expired entries are not rescanned.
    const cursor = last !== undefined ? last.seq : Math.max(from, this.#stmt.maxSeq.get() as number)
    return { entries: rows.map(r => ({ kind: r.kind, id: r.id, expiresAt: r.expires_at })), cursor: String(cursor) }
  }

  // Rate-limit counters sit on every request's path, so they are counted in memory and written
  // to the file in one transaction at most every COUNTER_FLUSH_MS (and on close): a restart keeps
  // them, a kill -9 loses at most that last interval. The window's persisted count is read once,
  // when a key is first seen in a window.
  async incrementCounter (key: string, windowMs: number, now: number): Promise<CounterResult> {
    const counter = this.#counter(key, windowMs, now)
    this.#count(counter)
    return { count: counter.count, ttl: counter.windowStart + windowMs - now }
  }

  takeCountersSync (counters: readonly CounterTake[], now: number): boolean {
    const found = counters.map(c => this.#counter(c.key, c.windowMs, now))
    if (found.some((counter, i) => counter.count >= (counters[i] as CounterTake).max)) return false
    for (const counter of found) this.#count(counter)
    return true
  }

  #count (counter: { count: number, pending: number }): void {
    counter.count++
    counter.pending++
    this.#flushTimer ??= setTimeout(() => { this.#flushCounters(Date.now()) }, COUNTER_FLUSH_MS).unref()
  }

  /** The in-memory counter of `key` for the window holding `now`, read from the file when new. */
  #counter (key: string, windowMs: number, now: number): { windowStart: number, expiresAt: number, count: number, pending: number } {
    const windowStart = Math.floor(now / windowMs) * windowMs
    let counter = this.#counters.get(key)
    if (counter === undefined || counter.windowStart !== windowStart) {
      const row = this.#stmt.getCounter.get(key) as { window_start: number, count: number } | undefined
      const base = row !== undefined && row.window_start === windowStart ? row.count : 0
      if (counter !== undefined && counter.pending > 0) this.#flushCounters()
      counter = { windowStart, expiresAt: windowStart + windowMs, count: base, pending: 0 }
      if (this.#counters.size >= MAX_COUNTERS) this.#flushCounters(now)
      this.#counters.set(key, counter)
    }
    return counter
  }

  /** Writes pending increments; with `now`, also forgets counters whose window has ended. */
  #flushCounters (now?: number): void {
    if (this.#flushTimer !== undefined) clearTimeout(this.#flushTimer)
    this.#flushTimer = undefined
    if (!this.#db.open) return
    this.#db.transaction(() => {
      for (const [key, c] of this.#counters) {
        if (c.pending > 0) this.#stmt.addToCounter.run(key, c.windowStart, c.pending, c.expiresAt)
        c.pending = 0
        if (now !== undefined && (c.expiresAt <= now || this.#counters.size >= MAX_COUNTERS)) this.#counters.delete(key)
      }
    }).immediate()
  }

  async markSeen (key: string, expiresAt: number, now: number): Promise<boolean> {
    // One statement: inserted, or an expired record taken over (1 change); a live record: 0.
    return this.#stmt.markSeen.run(key, expiresAt, now).changes === 1
  }

  async claimIdempotencyKey (key: string, bodyHash: string, owner: string, expiresAt: number, now: number): Promise<IdempotencyClaim> {
    // In one transaction (the group commit's): the claim and, when it is taken, the record that holds it.
    return await this.#write((): IdempotencyClaim => {
      if (this.#stmt.claimIdem.run(key, bodyHash, owner, expiresAt, now).changes === 1) return { state: 'claimed' }
      const row = this.#stmt.getIdem.get(key) as { body_hash: string, status: number | null, content_type: string | null, body: Buffer | null }
      if (row.status === null) return { state: 'running', bodyHash: row.body_hash }
      return { state: 'done', bodyHash: row.body_hash, answer: { status: row.status, contentType: row.content_type ?? undefined, body: row.body ?? Buffer.alloc(0) } }
    })
  }

  async completeIdempotencyKey (key: string, owner: string, answer: IdempotentAnswer, expiresAt: number, now: number): Promise<boolean> {
    return await this.#write(() => this.#stmt.completeIdem.run(answer.status, answer.contentType ?? null, answer.body, expiresAt, key, owner, now).changes === 1)
  }

  async releaseIdempotencyKey (key: string, owner: string): Promise<void> {
    await this.#write(() => { this.#stmt.releaseIdem.run(key, owner) })
  }

  async purgeExpired (now: number, limit: number): Promise<number> {
    this.#flushCounters(now) // write pending increments and forget ended windows before purging rows
    return this.#db.transaction(() => {
      let n = this.#stmt.purgeQuota.run(now, limit).changes
      n += this.#stmt.purgeCredits.run(now, limit).changes
      for (const id of this.#stmt.expiredFamilies.all(now, limit) as string[]) {
        this.#stmt.deleteFamilyTokens.run(id)
        n += this.#stmt.deleteFamily.run(id).changes
      }
      n += this.#stmt.purgeRevocations.run(now, limit).changes
      n += this.#stmt.purgeCounters.run(now, limit).changes
      n += this.#stmt.purgeSeen.run(now, limit).changes
      n += this.#stmt.purgeIdem.run(now, limit).changes
      return n
    }).immediate()
  }

  async ping (): Promise<void> {
    this.#stmt.ping.get()
  }

  async close (): Promise<void> {
    if (this.#db.open) this.#commitWrites() // writes still waiting for their turn
    this.#flushCounters()
    if (this.#db.open) this.#db.close()
  }
}
