// The shared Store for replicas: Redis through ioredis. Owns the key layout and one Lua script per
// multi-key operation, so every Store method is atomic across any number of gateway processes.
// Never holds business rules (callers decide what a rotation or a revocation means), and never
// waits on Redis for longer than the configured timeout: with the offline queue off, a command
// against a lost connection fails at once, and commandTimeout bounds one that hangs. Every failure
// is rethrown as StoreUnavailable, which the routes answer with 503 (fail closed).
//
// Key layout (P = keyPrefix). Keys one script touches share a {hash tag}, so Redis Cluster can run
// every script on one node; per-subject and per-counter tags spread the hot keys over the slots.
//   P{keys}              hash   kid → KeyRecord JSON (private key stays encrypted, as with SQLite)
//   P{keys}:act          zset   kid by activatesAt (the "pending rotation" check)
//   P{q:<sub>}:<w>:<s>   string quota usage of a subject in the window of length w starting at s
//   P{rt}:f:<id>         hash   refresh family: data (immutable JSON), cur, used, rev
//   P{rt}:t:<hash>       string refresh-token hash → family id (every token of the family, for reuse detection)
//   P{rt}:ft:<id>        set    the family's token hashes (to delete them with the family)
//   P{rt}:exp            zset   family id by expiresAt (purge by the caller's clock)
//   P{rv}:seq            string the revocation log's sequence
//   P{rv}:log            zset   "kind:id" by sequence (listRevocations(after) reads it in order)
//   P{rv}:ent            hash   "kind:id" → expiresAt
//   P{rv}:exp            zset   "kind:id" by expiresAt (purge)
//   P{c:<key>}:<start>   string rate-limit counter of one fixed window
//   P{idem:<key>}        hash   idempotency record: o (owner), h (body hash), and once kept s (status), ct, b (body)
//   P{q:<sub>}:<w>:<s>:cr string credits of that window (admin API): the allowance above the limit
//   P{lg}:seq            string the usage ledger's sequence
//   P{lg}:log            zset   ledger line JSON ("<seq>|<json>") by sequence
//   P{cl}                hash   client id → StoredClient JSON (clients created at run time)
//   P{cl}:ver            string the client set's version (every replica polls it)
//
// Times: the Store's times are the caller's clock (epoch ms, possibly injected). Redis TTLs run on
// Redis's own clock, so a TTL is never set to end before the caller's expiry could: each one is
// max(expiry, Redis now) plus a skew allowance. Removal that must follow the caller's clock (a
// family, a revocation) is done by purgeExpired through the expiry indexes; TTLs are a backstop.
import { Redis, Cluster, type RedisOptions, type ClusterOptions } from 'ioredis'
import { StoreUnavailable } from '../errors.js'
import type { Balance, CounterResult, IdempotencyClaim, IdempotentAnswer, KeyRecord, LedgerEntry, LedgerPage, LedgerQuery, QuotaResult, RefreshFamily, Revocation, RevocationPage, RotateResult, Store, StoredClient } from './index.js'

export interface RedisStoreOptions {
  /** Bound on every store operation and on connecting (ms). */
  timeoutMs: number
  /** Prepended to every key, so several deployments (or test runs) can share one Redis. */
  keyPrefix?: string
  /** Where connection errors and recoveries are reported (pino-compatible); never given the URL. */
  log?: StoreLogger
}

export interface StoreLogger {
  warn: (obj: Record<string, unknown>, msg: string) => void
  info: (obj: Record<string, unknown>, msg: string) => void
}

/** Extra time a TTL runs past the caller's expiry: covers clock skew between replicas and Redis. */
const SKEW_MS = 5 * 60_000
/** Revocation entries returned per listRevocations call (as the SQLite store). */
const REVOCATION_PAGE = 5000
/** Longest reconnect backoff (ms): a recovered Redis is used again within about this long. */
const MAX_BACKOFF_MS = 2000
/** Error-log throttle while Redis stays down (every reconnect attempt emits 'error'). */
const ERROR_LOG_INTERVAL_MS = 10_000
const DUPLICATE = 'TGDUP'

// Redis TIME in ms, for TTLs that must not end before the caller's expiry. Scripts run with
// effects replication (default since Redis 5, the only mode in 7), so TIME before writes is allowed.
const LUA_EXPIRE_AT = `
local function expire_at (ms, grace)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return string.format('%.0f', math.max(tonumber(ms), now) + tonumber(grace))
end
`

const SCRIPTS = {
  // KEYS: hash, act zset. ARGV: kid, json, activatesAt, now
  tgAddKey: {
    numberOfKeys: 2,
    lua: `
if redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[4], '+inf') > 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1`
  },
  // KEYS: hash, act zset. ARGV: kids...
  tgDeleteKeys: {
    numberOfKeys: 2,
    lua: `
for i = 1, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[2], ARGV[i])
end
return #ARGV`
  },
  // KEYS: hash, act zset. ARGV: kid, json, activatesAt, now, kids to retire... Returns the kids deleted.
  tgReplaceKeys: {
    numberOfKeys: 2,
    lua: `
local doomed = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[4], '+inf')
for i = 5, #ARGV do doomed[#doomed + 1] = ARGV[i] end
local deleted = {}
for _, kid in ipairs(doomed) do
  if redis.call('HDEL', KEYS[1], kid) == 1 then deleted[#deleted + 1] = kid end
  redis.call('ZREM', KEYS[2], kid)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return deleted`
  },
  // KEYS: quota key, its credits key. ARGV: cost, limit, windowEnd, grace. Check-and-charge in one
  // step, against the limit plus the window's credits.
  tgConsume: {
    numberOfKeys: 2,
    lua: LUA_EXPIRE_AT + `
local cost = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local credits = tonumber(redis.call('GET', KEYS[2]) or '0')
local allowed = tonumber(ARGV[2]) + credits
if cost > allowed or used + cost > allowed then return {0, used, credits} end
used = redis.call('INCRBY', KEYS[1], cost)
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIREAT', KEYS[1], expire_at(ARGV[3], ARGV[4])) end
return {1, used, credits}`
  },
  // KEYS: credits key. ARGV: amount, windowEnd, grace.
  tgAddCredits: {
    numberOfKeys: 1,
    lua: LUA_EXPIRE_AT + `
local c = redis.call('INCRBY', KEYS[1], tonumber(ARGV[1]))
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIREAT', KEYS[1], expire_at(ARGV[2], ARGV[3])) end
return c`
  },
  // KEYS: quota key. Returns the usage it had; the window's TTL is kept.
  tgResetQuota: {
    numberOfKeys: 1,
    lua: `
local used = tonumber(redis.call('GET', KEYS[1]) or false)
if not used then return 0 end
redis.call('SET', KEYS[1], 0, 'KEEPTTL')
return used`
  },
  // KEYS: seq, log. ARGV: JSON lines.
  tgAppendLedger: {
    numberOfKeys: 2,
    lua: `
for i = 1, #ARGV do
  local seq = redis.call('INCR', KEYS[1])
  redis.call('ZADD', KEYS[2], seq, string.format('%d', seq) .. '|' .. ARGV[i])
end
return #ARGV`
  },
  // KEYS: log. ARGV: after, sub ('' for all), since, limit. Scans at most 20000 lines per call.
  // Returns {next|'', line, line, ...}.
  tgListLedger: {
    numberOfKeys: 1,
    lua: `
local cursor = tonumber(ARGV[1])
local sub = ARGV[2]
local since = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local out = {''}
local scanned = 0
while true do
  local page = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%.0f', cursor), '+inf', 'WITHSCORES', 'LIMIT', 0, 1000)
  if #page == 0 then return out end
  for i = 1, #page, 2 do
    cursor = tonumber(page[i + 1])
    local line = page[i]
    local json = string.sub(line, string.find(line, '|', 1, true) + 1)
    local e = cjson.decode(json)
    if (sub == '' or e.sub == sub) and tonumber(e.ts) >= since then
      out[#out + 1] = json
      if #out - 1 >= limit then out[1] = string.format('%.0f', cursor) return out end
    end
  end
  scanned = scanned + #page / 2
  if scanned >= 20000 then out[1] = string.format('%.0f', cursor) return out end
  if #page < 2000 then return out end
end`
  },
  // KEYS: hash, version. ARGV: id, json, mode ('create' | 'update'), live ('1' | '0').
  tgPutClient: {
    numberOfKeys: 2,
    lua: `
local old = redis.call('HGET', KEYS[1], ARGV[1])
local live = old and cjson.decode(old).deleted == false
if ARGV[3] == 'create' and live then return 0 end
if ARGV[3] == 'update' and not live then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('INCR', KEYS[2])`
  },
  // KEYS: hash, version. Returns {version, json...}.
  tgListClients: {
    numberOfKeys: 2,
    lua: `
local out = {redis.call('GET', KEYS[2]) or '0'}
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do out[#out + 1] = v end
return out`
  },
  // KEYS: quota key. ARGV: cost. Never below zero; the window's TTL is kept.
  tgRefund: {
    numberOfKeys: 1,
    lua: `
local used = tonumber(redis.call('GET', KEYS[1]) or false)
if not used then return 0 end
redis.call('SET', KEYS[1], math.max(0, used - tonumber(ARGV[1])), 'KEEPTTL')
return 1`
  },
  // KEYS: quota key. ARGV: delta, windowEnd, grace. Settlement: whatever the limit, never below
  // zero; a window with no record gets one (an increase) with the window's TTL.
  tgSettle: {
    numberOfKeys: 1,
    lua: LUA_EXPIRE_AT + `
local before = redis.call('GET', KEYS[1])
local used = math.max(0, tonumber(before or '0') + tonumber(ARGV[1]))
if before then
  redis.call('SET', KEYS[1], string.format('%.0f', used), 'KEEPTTL')
elseif used > 0 then
  redis.call('SET', KEYS[1], string.format('%.0f', used))
  redis.call('PEXPIREAT', KEYS[1], expire_at(ARGV[2], ARGV[3]))
end
return used`
  },
  // KEYS: family, token, family tokens, expiry zset. ARGV: data, hash, lastUsedAt, expiresAt, id, grace, revokedAt|''
  tgCreateFamily: {
    numberOfKeys: 4,
    lua: LUA_EXPIRE_AT + `
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return redis.error_reply('${DUPLICATE} refresh family or token exists')
end
redis.call('HSET', KEYS[1], 'data', ARGV[1], 'cur', ARGV[2], 'used', ARGV[3])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'rev', ARGV[7]) end
redis.call('SET', KEYS[2], ARGV[5])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
local at = expire_at(ARGV[4], ARGV[6])
for i = 1, 3 do redis.call('PEXPIREAT', KEYS[i], at) end
return 1`
  },
  // Compare-and-swap rotation with reuse detection (RFC 9700 §4.14.2).
  // KEYS: presented token, new token. ARGV: base (P{rt}:), presented hash, new hash, now
  tgRotate: {
    numberOfKeys: 2,
    lua: `
local id = redis.call('GET', KEYS[1])
if not id then return {'unknown'} end
local f = ARGV[1] .. 'f:' .. id
local h = redis.call('HMGET', f, 'data', 'cur', 'used', 'rev')
if not h[1] then return {'unknown'} end
if h[4] then return {'revoked', h[1], h[2], h[3], h[4]} end
if h[2] ~= ARGV[2] then
  redis.call('HSET', f, 'rev', ARGV[4])
  return {'reused', h[1], h[2], h[3], ARGV[4]}
end
if redis.call('EXISTS', KEYS[2]) == 1 then return redis.error_reply('${DUPLICATE} refresh token exists') end
redis.call('HSET', f, 'cur', ARGV[3], 'used', ARGV[4])
redis.call('SET', KEYS[2], id)
redis.call('SADD', ARGV[1] .. 'ft:' .. id, ARGV[3])
local ttl = redis.call('PTTL', f)
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return {'rotated', h[1], ARGV[3], ARGV[4]}`
  },
  // KEYS: token. ARGV: base
  tgFindFamily: {
    numberOfKeys: 1,
    lua: `
local id = redis.call('GET', KEYS[1])
if not id then return {} end
local h = redis.call('HMGET', ARGV[1] .. 'f:' .. id, 'data', 'cur', 'used', 'rev')
if not h[1] then return {} end
return h`
  },
  // KEYS: family. ARGV: now
  tgRevokeFamily: {
    numberOfKeys: 1,
    lua: `
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'rev') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'rev', ARGV[1])
return 1`
  },
  // KEYS: seq, log, entries, expiry. ARGV: member, expiresAt. Keeps the later expiry; a changed
  // entry gets a new sequence so every replica's next sync sees it again.
  tgAddRevocation: {
    numberOfKeys: 4,
    lua: `
local old = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or false)
if old and old >= tonumber(ARGV[2]) then return 0 end
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
return 1`
  },
  // KEYS: seq, log, entries. ARGV: after, now, limit. Returns {cursor, member, expiresAt, ...}.
  tgListRevocations: {
    numberOfKeys: 3,
    lua: `
local after = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local out = {}
local cursor = after
local scanned = 0
local page_size = 1000
while true do
  local page = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. string.format('%.0f', cursor), '+inf', 'WITHSCORES', 'LIMIT', 0, page_size)
  local full = false
  for i = 1, #page, 2 do
    cursor = tonumber(page[i + 1])
    local e = redis.call('HGET', KEYS[3], page[i])
    if e and tonumber(e) > now then
      out[#out + 1] = page[i]
      out[#out + 1] = e
      if #out / 2 >= limit then full = true break end
    end
  end
  scanned = scanned + #page / 2
  if full or scanned >= 20000 then break end
  if #page < page_size * 2 then
    -- The whole log was read: with nothing live, jump to the newest sequence, so expired
    -- entries are not rescanned on every sync.
    if #out == 0 then cursor = math.max(cursor, tonumber(redis.call('GET', KEYS[1]) or '0')) end
    break
  end
end
table.insert(out, 1, string.format('%.0f', cursor))
return out`
  },
  // KEYS: rate-limit counter. ARGV: ttl ms. INCR and its window's expiry in one step.
  tgCounter: {
    numberOfKeys: 1,
    lua: `
local c = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return c`
  },
  // KEYS: idempotency record. ARGV: body hash, owner, ttl ms. Claimed: {1}; else {0, hash, status|'', ct|'', body|''}.
  tgIdemClaim: {
    numberOfKeys: 1,
    lua: `
if redis.call('HSETNX', KEYS[1], 'o', ARGV[2]) == 1 then
  redis.call('HSET', KEYS[1], 'h', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1}
end
local r = redis.call('HMGET', KEYS[1], 'h', 's', 'ct', 'b')
return {0, r[1] or '', r[2] or '', r[3] or '', r[4] or ''}`
  },
  // KEYS: idempotency record. ARGV: owner, status, content type|'', body, ttl ms. Only the owner's running claim.
  tgIdemComplete: {
    numberOfKeys: 1,
    lua: `
if redis.call('HGET', KEYS[1], 'o') ~= ARGV[1] or redis.call('HEXISTS', KEYS[1], 's') == 1 then return 0 end
redis.call('HSET', KEYS[1], 's', ARGV[2], 'ct', ARGV[3], 'b', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1`
  },
  // KEYS: idempotency record. ARGV: owner. Frees the owner's running claim.
  tgIdemRelease: {
    numberOfKeys: 1,
    lua: `
if redis.call('HGET', KEYS[1], 'o') ~= ARGV[1] or redis.call('HEXISTS', KEYS[1], 's') == 1 then return 0 end
return redis.call('DEL', KEYS[1])`
  },
  // KEYS: log, entries, expiry. ARGV: now, limit
  tgPurgeRevocations: {
    numberOfKeys: 3,
    lua: `
local ms = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(ms) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('HDEL', KEYS[2], m)
  redis.call('ZREM', KEYS[3], m)
end
return #ms`
  },
  // KEYS: family expiry zset. ARGV: base, now, limit
  tgPurgeFamilies: {
    numberOfKeys: 1,
    lua: `
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local n = 0
for _, id in ipairs(ids) do
  local ft = ARGV[1] .. 'ft:' .. id
  for _, h in ipairs(redis.call('SMEMBERS', ft)) do redis.call('DEL', ARGV[1] .. 't:' .. h) end
  n = n + redis.call('DEL', ARGV[1] .. 'f:' .. id)
  redis.call('DEL', ft)
  redis.call('ZREM', KEYS[1], id)
end
return n`
  }
} as const

type ScriptName = keyof typeof SCRIPTS
type Client = Redis | Cluster
type Scripted = Record<ScriptName, (...args: Array<string | number | Buffer>) => Promise<unknown>> & {
  /** ioredis's Buffer variant of a defined command: bulk replies as Buffers (a kept body is bytes). */
  tgIdemClaimBuffer: (...args: Array<string | number>) => Promise<unknown>
}

/** Removes the password from a redis URL (and anything that looks like one in a message). */
export function redactUrl (text: string): string {
  return text.replace(/(rediss?(?:\+\w+)?:\/\/)([^@/\s]*)@/gi, (_m, scheme: string, auth: string) => {
    const user = auth.includes(':') ? auth.slice(0, auth.indexOf(':')) : ''
    return `${scheme}${user === '' ? '' : user + ':'}***@`
  })
}

export interface ConnectionPlan {
  mode: 'standalone' | 'sentinel' | 'cluster'
  /** Standalone: the URL itself. */
  url?: string
  nodes?: Array<{ host: string, port: number }>
  options: RedisOptions
}

/**
 * Reads a store URL into ioredis options. Besides `redis://` and `rediss://` (TLS) it accepts
 *   redis+sentinel://[user:password@]host:port[,host:port...]/<master name>[/db]
 *   redis+cluster://[user:password@]host:port[,host:port...]   (rediss+cluster:// with TLS)
 * so Sentinel and Cluster need no extra config keys.
 */
export function connectionPlan (url: string, timeoutMs: number): ConnectionPlan {
  const base: RedisOptions = {
    // Fail closed, bounded: no queueing while disconnected, one attempt per command, a deadline
    // on each command and on connecting, and reconnects with capped backoff.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: timeoutMs,
    connectTimeout: timeoutMs,
    retryStrategy: (times: number) => Math.min(100 * 2 ** Math.min(times, 5), MAX_BACKOFF_MS),
    lazyConnect: true
  }
  const m = /^(rediss?)\+(sentinel|cluster):\/\/(?:([^@/]*)@)?([^/?#]+)(?:\/([^/?#]*))?(?:\/(\d+))?\/?$/.exec(url)
  if (m === null) return { mode: 'standalone', url, options: base }
  const [, scheme, kind, auth, hostList, name, db] = m
  const nodes = (hostList as string).split(',').map(hp => {
    const i = hp.lastIndexOf(':')
    const host = (i > 0 ? hp.slice(0, i) : hp).replace(/^\[|\]$/g, '')
    const port = i > 0 ? Number(hp.slice(i + 1)) : (kind === 'sentinel' ? 26379 : 6379)
    if (host === '' || !Number.isInteger(port) || port <= 0 || port > 65535) throw new Error(`store.redis: bad host:port ${JSON.stringify(hp)}`)
    return { host, port }
  })
  const credentials: RedisOptions = {}
  if (auth !== undefined && auth !== '') {
    const i = auth.indexOf(':')
    const user = decodeURIComponent(i >= 0 ? auth.slice(0, i) : '')
    const password = decodeURIComponent(i >= 0 ? auth.slice(i + 1) : auth)
    if (user !== '') credentials.username = user
    if (password !== '') credentials.password = password
  }
  if (scheme === 'rediss') credentials.tls = {}
  if (kind === 'sentinel') {
    if (name === undefined || name === '') throw new Error('store.redis: a redis+sentinel:// URL needs the master name as its path')
    const options: RedisOptions = { ...base, ...credentials, sentinels: nodes, name, sentinelMaxConnections: 10 }
    // The same credentials for the sentinels, which is the usual setup; set them apart in ioredis if not.
    if (credentials.password !== undefined) options.sentinelPassword = credentials.password
    if (db !== undefined) options.db = Number(db)
    return { mode: 'sentinel', nodes, options }
  }
  return { mode: 'cluster', nodes, options: { ...base, ...credentials } }
}

export class RedisStore implements Store {
  readonly kind = 'redis' as const
  readonly #redis: Client
  readonly #scripts: Scripted
  readonly #p: string
  readonly #log: StoreLogger | undefined
  #lastErrorLog = 0
  #down = false
  #closing = false

  private constructor (redis: Client, prefix: string, log: StoreLogger | undefined) {
    this.#redis = redis
    this.#p = prefix
    this.#log = log
    for (const [name, def] of Object.entries(SCRIPTS)) redis.defineCommand(name, { numberOfKeys: def.numberOfKeys, lua: def.lua })
    this.#scripts = redis as unknown as Scripted
    // An 'error' event without a listener would crash the process: always listen, log throttled,
    // and never the URL (it may carry a password).
    redis.on('error', (err: Error) => { this.#onError(err) })
    redis.on('close', () => {
      if (this.#down || this.#closing) return
      this.#down = true
      this.#log?.warn({ event: 'store.error', store: 'redis', error: 'connection lost; reconnecting' }, 'redis connection lost')
    })
    redis.on('ready', () => {
      if (this.#down) this.#log?.info({ event: 'store.recovered', store: 'redis' }, 'redis connection restored')
      this.#down = false
    })
  }

  static async connect (url: string, options: RedisStoreOptions): Promise<RedisStore> {
    const prefix = options.keyPrefix ?? 'tollgate:'
    if (/[{}]/.test(prefix)) throw new Error('store: keyPrefix must not contain { or } (they form Redis Cluster hash tags)')
    const plan = connectionPlan(url, options.timeoutMs)
    let redis: Client
    if (plan.mode === 'cluster') {
      const { lazyConnect: _lazy, enableOfflineQueue, ...redisOptions } = plan.options
      const clusterOptions: ClusterOptions = {
        redisOptions,
        enableOfflineQueue: enableOfflineQueue ?? false,
        lazyConnect: true,
        clusterRetryStrategy: (times: number) => Math.min(100 * 2 ** Math.min(times, 5), MAX_BACKOFF_MS)
      }
      redis = new Cluster(plan.nodes ?? [], clusterOptions)
    } else if (plan.mode === 'sentinel') {
      redis = new Redis(plan.options)
    } else {
      redis = new Redis(url, plan.options)
    }
    const store = new RedisStore(redis, prefix, options.log)
    try {
      await withDeadline(redis.connect(), options.timeoutMs * 2 + 1000)
      await withDeadline(redis.ping(), options.timeoutMs + 1000)
    } catch (err) {
      redis.disconnect()
      throw new Error(`store.redis: cannot connect to ${redactUrl(url)}: ${redactUrl((err as Error).message)}`)
    }
    return store
  }

  #onError (err: Error): void {
    this.#down = true
    const now = Date.now()
    if (now - this.#lastErrorLog < ERROR_LOG_INTERVAL_MS) return
    this.#lastErrorLog = now
    this.#log?.warn({ event: 'store.error', store: 'redis', error: redactUrl(err.message), code: (err as NodeJS.ErrnoException).code }, 'redis connection error')
  }

  async #do<T> (op: () => Promise<T>): Promise<T> {
    try {
      return await op()
    } catch (err) {
      // Our own consistency refusals are not outages; everything else (connection lost, timeout,
      // OOM, failover in progress) fails closed as 503.
      if (err instanceof Error && err.message.startsWith(DUPLICATE)) throw new Error(err.message.slice(DUPLICATE.length + 1), { cause: err })
      throw new StoreUnavailable({ cause: err })
    }
  }

  // ---- key names
  #keysHash (): string { return `${this.#p}{keys}` }
  #keysAct (): string { return `${this.#p}{keys}:act` }
  #quota (sub: string, windowStart: number, windowMs: number): string { return `${this.#p}{q:${encodeURIComponent(sub)}}:${windowMs}:${windowStart}` }
  #rt (): string { return `${this.#p}{rt}:` }
  #rv (name: 'seq' | 'log' | 'ent' | 'exp'): string { return `${this.#p}{rv}:${name}` }

  // ---- key set
  async listKeys (): Promise<KeyRecord[]> {
    const values = await this.#do(async () => await this.#redis.hvals(this.#keysHash()))
    return values.map(v => JSON.parse(v) as KeyRecord).sort((a, b) => a.activatesAt - b.activatesAt)
  }

  async addKeyIfNoPending (key: KeyRecord, now: number): Promise<boolean> {
    const added = await this.#do(async () => await this.#scripts.tgAddKey(this.#keysHash(), this.#keysAct(), key.kid, JSON.stringify(key), key.activatesAt, now))
    return added === 1
  }

  async deleteKeys (kids: string[]): Promise<void> {
    if (kids.length === 0) return
    await this.#do(async () => await this.#scripts.tgDeleteKeys(this.#keysHash(), this.#keysAct(), ...kids))
  }

  async replaceKeys (key: KeyRecord, now: number, retire: string[]): Promise<string[]> {
    return await this.#do(async () => await this.#scripts.tgReplaceKeys(this.#keysHash(), this.#keysAct(), key.kid, JSON.stringify(key), key.activatesAt, now, ...retire)) as string[]
  }

  // ---- quota
  async consumeQuota (sub: string, windowStart: number, windowMs: number, limit: number, cost: number): Promise<QuotaResult> {
    const key = this.#quota(sub, windowStart, windowMs)
    const [granted, used, credits] = await this.#do(async () => await this.#scripts.tgConsume(key, `${key}:cr`, cost, limit, windowStart + windowMs, SKEW_MS)) as [number, number, number]
    return credits > 0 ? { granted: granted === 1, used, credits } : { granted: granted === 1, used }
  }

  async addCredits (sub: string, windowStart: number, windowMs: number, amount: number): Promise<number> {
    return await this.#do(async () => await this.#scripts.tgAddCredits(`${this.#quota(sub, windowStart, windowMs)}:cr`, amount, windowStart + windowMs, SKEW_MS)) as number
  }

  // Both keys share the subject's hash tag (one slot in a cluster): one MGET, one round trip.
  async getBalance (sub: string, windowStart: number, windowMs: number): Promise<Balance> {
    const key = this.#quota(sub, windowStart, windowMs)
    const [used, credits] = await this.#do(async () => await this.#redis.mget(key, `${key}:cr`))
    return { used: used == null ? 0 : Number(used), credits: credits == null ? 0 : Number(credits) }
  }

  async resetQuota (sub: string, windowStart: number, windowMs: number): Promise<number> {
    return await this.#do(async () => await this.#scripts.tgResetQuota(this.#quota(sub, windowStart, windowMs))) as number
  }

  // ---- usage ledger
  async appendLedger (entries: readonly LedgerEntry[]): Promise<void> {
    if (entries.length === 0) return
    await this.#do(async () => await this.#scripts.tgAppendLedger(`${this.#p}{lg}:seq`, `${this.#p}{lg}:log`, ...entries.map(e => JSON.stringify(e))))
  }

  async listLedger (query: LedgerQuery): Promise<LedgerPage> {
    const after = query.after === undefined ? 0 : Number(query.after)
    const reply = await this.#do(async () => await this.#scripts.tgListLedger(`${this.#p}{lg}:log`,
      Number.isSafeInteger(after) && after > 0 ? after : 0, query.sub ?? '', query.since ?? 0, query.limit)) as string[]
    return { entries: reply.slice(1).map(j => JSON.parse(j) as LedgerEntry), next: reply[0] === '' ? undefined : reply[0] }
  }

  // ---- clients created at run time
  async listClients (): Promise<{ version: number, clients: StoredClient[] }> {
    const reply = await this.#do(async () => await this.#scripts.tgListClients(`${this.#p}{cl}`, `${this.#p}{cl}:ver`)) as string[]
    return { version: Number(reply[0]), clients: reply.slice(1).map(j => JSON.parse(j) as StoredClient).sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : 0) }
  }

  async clientsVersion (): Promise<number> {
    const v = await this.#do(async () => await this.#redis.get(`${this.#p}{cl}:ver`))
    return v === null ? 0 : Number(v)
  }

  async putClient (client: StoredClient, mode: 'create' | 'update'): Promise<boolean> {
    const v = await this.#do(async () => await this.#scripts.tgPutClient(`${this.#p}{cl}`, `${this.#p}{cl}:ver`, client.id, JSON.stringify(client), mode)) as number
    return v > 0
  }

  async refundQuota (sub: string, windowStart: number, windowMs: number, cost: number): Promise<void> {
    await this.#do(async () => await this.#scripts.tgRefund(this.#quota(sub, windowStart, windowMs), cost))
  }

  async settleQuota (sub: string, windowStart: number, windowMs: number, delta: number): Promise<number> {
    return await this.#do(async () => await this.#scripts.tgSettle(this.#quota(sub, windowStart, windowMs), delta, windowStart + windowMs, SKEW_MS)) as number
  }

  async getQuota (sub: string, windowStart: number, windowMs: number): Promise<number> {
    const used = await this.#do(async () => await this.#redis.get(this.#quota(sub, windowStart, windowMs)))
    return used === null ? 0 : Number(used)
  }

  // ---- refresh-token families
  async createFamily (family: RefreshFamily, tokenHash: string): Promise<void> {
    const rt = this.#rt()
    const data = JSON.stringify({ id: family.id, clientId: family.clientId, sub: family.sub, scope: family.scope, aud: family.aud, extra: family.extra, createdAt: family.createdAt, expiresAt: family.expiresAt })
    await this.#do(async () => await this.#scripts.tgCreateFamily(
      `${rt}f:${family.id}`, `${rt}t:${tokenHash}`, `${rt}ft:${family.id}`, `${rt}exp`,
      data, tokenHash, family.lastUsedAt, family.expiresAt, family.id, SKEW_MS, family.revokedAt ?? ''))
  }

  async rotateRefresh (tokenHash: string, newHash: string, now: number): Promise<RotateResult> {
    const rt = this.#rt()
    const reply = await this.#do(async () => await this.#scripts.tgRotate(`${rt}t:${tokenHash}`, `${rt}t:${newHash}`, rt, tokenHash, newHash, now)) as Array<string | null>
    const status = reply[0] as RotateResult['status']
    if (status === 'unknown') return { status }
    return { status, family: toFamily(reply.slice(1)) }
  }

  async findFamily (tokenHash: string): Promise<RefreshFamily | undefined> {
    const rt = this.#rt()
    const reply = await this.#do(async () => await this.#scripts.tgFindFamily(`${rt}t:${tokenHash}`, rt)) as Array<string | null>
    return reply.length === 0 ? undefined : toFamily(reply)
  }

  async revokeFamily (id: string, now: number): Promise<void> {
    await this.#do(async () => await this.#scripts.tgRevokeFamily(`${this.#rt()}f:${id}`, now))
  }

  // ---- revocations
  async addRevocation (revocation: Revocation): Promise<void> {
    await this.#do(async () => await this.#scripts.tgAddRevocation(
      this.#rv('seq'), this.#rv('log'), this.#rv('ent'), this.#rv('exp'),
      `${revocation.kind}:${revocation.id}`, revocation.expiresAt))
  }

  async listRevocations (after: string | undefined, now: number): Promise<RevocationPage> {
    const from = after === undefined ? 0 : Number(after)
    const reply = await this.#do(async () => await this.#scripts.tgListRevocations(
      this.#rv('seq'), this.#rv('log'), this.#rv('ent'),
      Number.isSafeInteger(from) && from > 0 ? from : 0, now, REVOCATION_PAGE)) as string[]
    const entries: Revocation[] = []
    for (let i = 1; i + 1 < reply.length; i += 2) {
      const member = reply[i] as string
      const sep = member.indexOf(':')
      entries.push({ kind: member.slice(0, sep) as Revocation['kind'], id: member.slice(sep + 1), expiresAt: Number(reply[i + 1]) })
    }
    return { entries, cursor: reply[0] as string }
  }

  // ---- rate-limit counters: fixed windows aligned like the SQLite store's
  async incrementCounter (key: string, windowMs: number, now: number): Promise<CounterResult> {
    const windowStart = Math.floor(now / windowMs) * windowMs
    const ttl = windowStart + windowMs - now
    const count = await this.#do(async () => await this.#scripts.tgCounter(`${this.#p}{c:${encodeURIComponent(key)}}:${windowStart}`, Math.max(1, ttl))) as number
    return { count, ttl }
  }

  // ---- housekeeping
  async markSeen (key: string, expiresAt: number, now: number): Promise<boolean> {
    // SET NX PX: atomic, and Redis expires the record itself (nothing to purge).
    const ttl = Math.max(1, Math.ceil(expiresAt - now))
    const reply = await this.#do(async () => await this.#redis.set(`${this.#p}{seen:${encodeURIComponent(key)}}`, '1', 'PX', ttl, 'NX'))
    return reply === 'OK'
  }

  // ---- idempotency keys: one hash per key; Redis expires it on the caller's clock's TTL.
  #idem (key: string): string { return `${this.#p}{idem:${encodeURIComponent(key)}}` }

  async claimIdempotencyKey (key: string, bodyHash: string, owner: string, expiresAt: number, now: number): Promise<IdempotencyClaim> {
    const ttl = Math.max(1, Math.ceil(expiresAt - now))
    const reply = await this.#do(async () => await this.#scripts.tgIdemClaimBuffer(this.#idem(key), bodyHash, owner, ttl)) as [number, Buffer?, Buffer?, Buffer?, Buffer?]
    if (reply[0] === 1) return { state: 'claimed' }
    const [, hash, status, contentType, body] = reply as [number, Buffer, Buffer, Buffer, Buffer]
    if (status.length === 0) return { state: 'running', bodyHash: hash.toString() }
    const ct = contentType.toString()
    return { state: 'done', bodyHash: hash.toString(), answer: { status: Number(status.toString()), contentType: ct === '' ? undefined : ct, body } }
  }

  async completeIdempotencyKey (key: string, owner: string, answer: IdempotentAnswer, expiresAt: number, now: number): Promise<boolean> {
    const ttl = Math.max(1, Math.ceil(expiresAt - now))
    return await this.#do(async () => await this.#scripts.tgIdemComplete(this.#idem(key), owner, answer.status, answer.contentType ?? '', answer.body, ttl)) === 1
  }

  async releaseIdempotencyKey (key: string, owner: string): Promise<void> {
    await this.#do(async () => await this.#scripts.tgIdemRelease(this.#idem(key), owner))
  }

  async purgeExpired (now: number, limit: number): Promise<number> {
    // Quota windows and counters go by their TTLs; families and revocations follow the caller's clock.
    const revocations = await this.#do(async () => await this.#scripts.tgPurgeRevocations(this.#rv('log'), this.#rv('ent'), this.#rv('exp'), now, limit)) as number
    const families = await this.#do(async () => await this.#scripts.tgPurgeFamilies(`${this.#rt()}exp`, this.#rt(), now, limit)) as number
    return revocations + families
  }

  async ping (): Promise<void> {
    await this.#do(async () => await this.#redis.ping())
  }

  async close (): Promise<void> {
    this.#closing = true
    try {
      if (this.#redis.status === 'ready') await withDeadline(this.#redis.quit(), 1000)
    } catch {
      // closing anyway
    } finally {
      this.#redis.disconnect()
    }
  }
}

function toFamily (h: Array<string | null>): RefreshFamily {
  const [data, cur, used, rev] = h
  const d = JSON.parse(data as string) as Omit<RefreshFamily, 'currentHash' | 'lastUsedAt' | 'revokedAt'>
  const family: RefreshFamily = { ...d, currentHash: cur as string, lastUsedAt: Number(used) }
  if (rev !== null && rev !== undefined && rev !== '') family.revokedAt = Number(rev)
  return family
}

async function withDeadline<T> (promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([promise, new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => { reject(new Error(`timed out after ${ms} ms`)) }, ms)
    })])
  } finally {
    clearTimeout(timer)
  }
}
