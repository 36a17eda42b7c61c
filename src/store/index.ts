// The Store: every piece of durable or shared state behind one interface. Each method is one
// atomic operation, so the SQLite implementation does it in one transaction and the Redis one in
// one Lua script. Business rules (who may rotate what, when a key becomes current) live in the
// callers; the store only keeps and swaps state. All times are epoch milliseconds.
import type { Config } from '../config.js'
import type { StoreLogger } from './redis.js'

export interface KeyRecord {
  /** RFC 7638 thumbprint of the public key. */
  kid: string
  alg: 'ES256' | 'EdDSA' | 'RS256'
  /** Public JWK (JSON object). */
  publicJwk: Record<string, unknown>
  /** Private key, PKCS#8 DER encrypted with AES-256-GCM under the key-encryption secret. */
  privateEnc: string
  /** Published in the JWKS from this time on. */
  createdAt: number
  /** Signs from this time on (createdAt + publish-ahead). */
  activatesAt: number
}

/** A window's usage and its credits (the allowance above the limit, admin API). */
export interface Balance {
  used: number
  credits: number
}

export interface QuotaResult {
  granted: boolean
  /** Usage in the window after the operation (unchanged when refused). */
  used: number
  /** Credits added to the window's allowance (admin API); the check allowed limit + credits. */
  credits?: number
  /** True when the charge's ledger line was written with it, in the same transaction. */
  recorded?: boolean
}

/** What a usage-ledger line records (CONTRACT §11). */
export type LedgerKind = 'charge' | 'refund' | 'settle' | 'credit' | 'reset'

export interface LedgerEntry {
  /** Epoch ms (the caller's clock). */
  ts: number
  sub: string
  clientId: string | null
  tool: string | null
  kind: LedgerKind
  /** Cost units: positive for a charge or a credit, the amount given back for a refund, the change for a settlement, the usage cleared for a reset. */
  amount: number
  requestId: string | null
}

export interface LedgerQuery {
  /** Only this subject's lines. */
  sub?: string
  /** Only lines with ts >= since (epoch ms). */
  since?: number
  /** The cursor of the previous page. */
  after?: string
  limit: number
}

export interface LedgerPage {
  entries: LedgerEntry[]
  /** Pass back as `after` for the next page; undefined when the ledger was read to its end. */
  next: string | undefined
}

/** A client created at run time through the admin API (CONTRACT §11). */
export interface StoredClient {
  id: string
  scopes: string[]
  audiences: string[]
  quota?: { limit: number, window: number }
  refresh: boolean
  exchange: boolean
  accessTtl?: number
  claims: Record<string, unknown>
  dpop?: 'optional' | 'required'
  /** scrypt hash (src/clients hashSecret); empty for a deleted client. */
  secretHash: string
  disabled: boolean
  /** A tombstone: kept so every replica refuses the client's tokens. */
  deleted: boolean
  /** Access tokens of this client issued before this time (epoch seconds) are refused. */
  notBefore: number
  createdAt: number
  updatedAt: number
}

export interface RefreshFamily {
  id: string
  clientId: string
  sub: string
  scope: string
  aud: string[]
  /** Extra claims carried into every access token minted from the family (e.g. `act`). */
  extra: Record<string, unknown>
  createdAt: number
  /** Absolute expiry (createdAt + refreshTtl). */
  expiresAt: number
  /** Hash of the one refresh token that may be used now. */
  currentHash: string
  lastUsedAt: number
  /** Set when the family was revoked (reuse detected or explicit revocation). */
  revokedAt?: number
}

export type RotateResult =
  /** The presented token was current: it is now replaced by `newHash`. */
  | { status: 'rotated', family: RefreshFamily }
  /** The presented token was an earlier one of a live family: the family is now revoked. */
  | { status: 'reused', family: RefreshFamily }
  /** The family is revoked already, or the token is unknown. */
  | { status: 'revoked', family: RefreshFamily }
  | { status: 'unknown' }

export interface Revocation {
  kind: 'jti' | 'family'
  id: string
  /** The entry is kept until then: the latest `exp` of any token it denies. */
  expiresAt: number
}

export interface RevocationPage {
  entries: Revocation[]
  /** Pass back as `after` to get what was added since. */
  cursor: string
}

export interface CounterTake {
  key: string
  windowMs: number
  max: number
}

export interface CounterResult {
  count: number
  /** Milliseconds until the counter's window ends. */
  ttl: number
}

/** A kept answer of an idempotent call (CONTRACT §10): replayed to later calls with its key. */
export interface IdempotentAnswer {
  status: number
  contentType: string | undefined
  body: Buffer
}

export type IdempotencyClaim =
  /** The key was free (or its record had expired): the caller owns it now and runs the call. */
  | { state: 'claimed' }
  /** Another call with the key is still running. */
  | { state: 'running', bodyHash: string }
  /** A call with the key finished and its answer was kept. */
  | { state: 'done', bodyHash: string, answer: IdempotentAnswer }

export interface Store {
  readonly kind: 'sqlite' | 'redis'

  // ---- key set
  listKeys (): Promise<KeyRecord[]>
  /** Adds `key` unless some key activates after `now` (one pending rotation at a time). */
  addKeyIfNoPending (key: KeyRecord, now: number): Promise<boolean>
  deleteKeys (kids: string[]): Promise<void>
  /**
   * In one step: deletes every key that activates after `now` and the keys in `retire`, then adds
   * `key` (key emergencies: a fresh key signs at once whatever is pending). Returns the kids deleted.
   */
  replaceKeys (key: KeyRecord, now: number, retire: string[]): Promise<string[]>

  // ---- quota: fixed windows keyed by subject and window start
  /**
   * Atomically adds `cost` to the window's usage if the result stays <= limit (plus the window's
   * credits). With `line`, a store that can append it to the ledger in the charge's own transaction
   * does so when the charge is granted, and answers `recorded: true` (SQLite: the line is exactly
   * as durable as the charge); otherwise the caller records it.
   */
  consumeQuota (sub: string, windowStart: number, windowMs: number, limit: number, cost: number, line?: LedgerEntry): Promise<QuotaResult>
  /** Gives back `cost` (never below zero). */
  refundQuota (sub: string, windowStart: number, windowMs: number, cost: number): Promise<void>
  getQuota (sub: string, windowStart: number, windowMs: number): Promise<number>
  /**
   * Settlement (CONTRACT §10): adds `delta` (negative gives back) to the window's usage whatever the
   * limit, never below zero; resolves with the usage after it. Creates the window's record when an
   * increase finds none.
   */
  settleQuota (sub: string, windowStart: number, windowMs: number, delta: number): Promise<number>
  /** Adds `amount` to the window's credits (its allowance above the limit); returns the credits now. */
  addCredits (sub: string, windowStart: number, windowMs: number, amount: number): Promise<number>
  /** The window's usage and credits, read together (one statement, or one round trip). */
  getBalance (sub: string, windowStart: number, windowMs: number): Promise<Balance>
  /**
   * Optional, for stores that keep quotas in this process: getBalance without a promise. GET
   * /validate reports the balance on every answer (CONTRACT §10), so this read is on its hot path.
   */
  getBalanceSync?: (sub: string, windowStart: number, windowMs: number) => Balance
  /** Sets the window's usage back to 0; returns the usage it had. */
  resetQuota (sub: string, windowStart: number, windowMs: number): Promise<number>

  // ---- usage ledger (append-only; paged by an opaque cursor in append order)
  appendLedger (entries: readonly LedgerEntry[]): Promise<void>
  listLedger (query: LedgerQuery): Promise<LedgerPage>

  // ---- clients created at run time
  /** Every stored client, tombstones included, and the version of the set. */
  listClients (): Promise<{ version: number, clients: StoredClient[] }>
  /** The version of the client set: bumped by every putClient. */
  clientsVersion (): Promise<number>
  /**
   * Writes `client` and bumps the version, atomically. `create`: only when no live client has the id
   * (a tombstone is replaced). `update`: only when a live client has it. Returns false otherwise.
   */
  putClient (client: StoredClient, mode: 'create' | 'update'): Promise<boolean>

  // ---- refresh-token families
  createFamily (family: RefreshFamily, tokenHash: string): Promise<void>
  /**
   * Compare-and-swap rotation. When `tokenHash` is the family's current token and the family is
   * live, the family moves to `newHash` and `lastUsedAt = now`. When it is an earlier token of the
   * family, the family is revoked at `now` (reuse detection). Exactly one of any number of
   * concurrent callers with the same token gets `rotated`.
   */
  rotateRefresh (tokenHash: string, newHash: string, now: number): Promise<RotateResult>
  /** The family a refresh token (current or earlier) belongs to. */
  findFamily (tokenHash: string): Promise<RefreshFamily | undefined>
  revokeFamily (id: string, now: number): Promise<void>

  // ---- revocations (denylist of access-token `jti`s and refresh families)
  addRevocation (revocation: Revocation): Promise<void>
  /** Entries added after `after` (all live ones when undefined), for every replica's in-memory set. */
  listRevocations (after: string | undefined, now: number): Promise<RevocationPage>

  // ---- rate-limit counters (fixed windows)
  incrementCounter (key: string, windowMs: number, now: number): Promise<CounterResult>
  /**
   * Optional, for stores that keep counters in this process: counts one more in every one of
   * `counters` when each is below its max, synchronously, and returns true; otherwise counts
   * nothing and returns false. The limit stage (src/pipeline/limit.ts) uses it to count without a promise; a store
   * without it is always asked through incrementCounter.
   */
  takeCountersSync?: (counters: readonly CounterTake[], now: number) => boolean

  // ---- one-time values (DPoP proof jtis, RFC 9449 §11.1)
  /**
   * Records `key` until `expiresAt`: true when it was not recorded yet (or its record had expired),
   * false when it was (a replay). Atomic: of concurrent callers with one key, exactly one gets true.
   */
  markSeen (key: string, expiresAt: number, now: number): Promise<boolean>

  // ---- idempotency keys (CONTRACT §10); `key` is already scoped (subject, tool, key)
  /**
   * Claims `key` for a call with the body hash `bodyHash`, run by `owner` (a random id), until
   * `expiresAt`; or tells what holds it. Atomic: of concurrent callers with one free key, exactly
   * one gets `claimed`. An expired record counts as free.
   */
  claimIdempotencyKey (key: string, bodyHash: string, owner: string, expiresAt: number, now: number): Promise<IdempotencyClaim>
  /** Keeps `answer` under the key `owner` claimed, until `expiresAt`; false when the claim is gone. */
  completeIdempotencyKey (key: string, owner: string, answer: IdempotentAnswer, expiresAt: number, now: number): Promise<boolean>
  /** Frees the key `owner` claimed and has not completed, so it may be used again; else a no-op. */
  releaseIdempotencyKey (key: string, owner: string): Promise<void>

  // ---- housekeeping
  /** Deletes up to `limit` expired records of each kind; returns how many went. */
  purgeExpired (now: number, limit: number): Promise<number>
  /** Throws when the store cannot serve requests. */
  ping (): Promise<void>
  close (): Promise<void>
}

export async function openStore (config: Config, log?: StoreLogger): Promise<Store> {
  if (config.store.redis !== undefined) {
    const { RedisStore } = await import('./redis.js')
    return await RedisStore.connect(config.store.redis, { timeoutMs: config.store.timeout * 1000, keyPrefix: config.store.keyPrefix, ...(log !== undefined ? { log } : {}) })
  }
  const { SqliteStore } = await import('./sqlite.js')
  return SqliteStore.open(sqlitePath(config))
}

export function sqlitePath (config: Config): string {
  return config.store.sqlite ?? `${config.dataDir.replace(/\/+$/, '')}/tollgate.db`
}
