// Rate limits through @fastify/rate-limit, with counters kept in the Store (so they survive a
// restart and are shared by replicas on Redis). Each limit is a small async check the routes call
// where it belongs in their pipeline: per IP on the OAuth endpoints; per IP and per verified
// subject on /validate and /call. The plugin's one-limit-per-request guard does not apply to
// `createRateLimit`, which is why the checks are built on it.
import rateLimit, { type FastifyRateLimitStoreCtor } from '@fastify/rate-limit'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { RateLimited, StoreUnavailable } from '../errors.js'
import { limitKey } from '../limits/address.js'
import type { Store } from '../store/index.js'

export type Limiter = (request: FastifyRequest) => Promise<void>

declare module 'fastify' {
  interface FastifyInstance {
    limiters: {
      token: Limiter
      perIp: Limiter
      perSubject: Limiter
      /**
       * Counts one request against the per-IP and per-subject limits without a promise, when the
       * store keeps its counters in this process and both limits have room: true when counted.
       * Otherwise (a shared store, a limit reached, a store error) nothing is counted, it is false,
       * and the caller goes through perIp and perSubject, which count, refuse and say why.
       */
      takeSync: (ip: string, sub: string) => boolean
    }
  }
}

/** How many addresses and subjects the synchronous path keeps a built counter key for (each). */
const MAX_CACHED_KEYS = 10_000

/** The Store key of a limiter's counter; the adapter's prefix and the synchronous path agree on it. */
function counterKey (namespace: string, key: string): string {
  return `rl:${namespace}:${key}`
}

type IncrCallback = (err: Error | null, res?: { current: number, ttl: number }) => void

/** A @fastify/rate-limit store class over Store.incrementCounter, namespaced per limiter. */
function storeAdapter (store: Store, clock: () => number): FastifyRateLimitStoreCtor {
  return class StoreRateLimitStore {
    constructor (_options: unknown, readonly namespace = 'route') {}

    incr (key: string, cb: IncrCallback, timeWindow: number): void {
      store.incrementCounter(counterKey(this.namespace, key), timeWindow, clock()).then(
        r => { cb(null, { current: r.count, ttl: r.ttl }) },
        err => { cb(new StoreUnavailable({ cause: err })) }
      )
    }

    child (routeOptions: object): StoreRateLimitStore {
      const named = routeOptions as { nameSpace?: string, groupId?: string }
      return new StoreRateLimitStore(routeOptions, named.nameSpace ?? named.groupId ?? 'route')
    }
  }
}

export default fp(async function rateLimits (app: FastifyInstance) {
  const limits = app.config.rateLimits
  await app.register(rateLimit, {
    global: false,
    store: storeAdapter(app.store, app.clock),
    skipOnError: limits.onStoreError === 'fail-open'
  })

  const make = (name: string, limit: { max: number, window: number }, key: (r: FastifyRequest) => string): Limiter => {
    const check = app.createRateLimit({ max: limit.max, timeWindow: limit.window * 1000, keyGenerator: key, nameSpace: name } as any)
    return async (request) => {
      const result = await check(request)
      if (!result.isAllowed && result.isExceeded) {
        app.metrics.rejections.inc({ reason: `rate_limited_${name}` })
        const err = new RateLimited(result.ttlInSeconds, `rate limit exceeded (${name})`)
        err.headers['ratelimit-policy'] = `"${name}";q=${limit.max};w=${limit.window}`
        err.headers.ratelimit = `"${name}";r=0;t=${result.ttlInSeconds}`
        throw err
      }
    }
  }
  const { store, clock } = app
  const ipWindow = limits.perIp.window * 1000
  const subjectWindow = limits.perSubject.window * 1000
  // The lanes' counter keys, built once per address and subject: the strings a lane passes are the
  // same objects request after request (a socket's address, a cached token's subject), so a lookup
  // here reuses their hashes, and the store's map is then asked with the same key object, where a key
  // built per request is a new string to hash in the store's map. Bounded: cleared when full.
  const ipKeys = new Map<string, string>()
  const subjectKeys = new Map<string, string>()
  const keyOf = (keys: Map<string, string>, namespace: string, value: string): string => {
    let key = keys.get(value)
    if (key === undefined) {
      if (keys.size >= MAX_CACHED_KEYS) keys.clear()
      key = counterKey(namespace, namespace === 'ip' ? limitKey(value, limits.ipv6Prefix) : value)
      keys.set(value, key)
    }
    return key
  }
  const takeSync = (ip: string, sub: string): boolean => {
    if (store.takeCountersSync === undefined) return false
    try {
      return store.takeCountersSync([
        { key: keyOf(ipKeys, 'ip', ip), windowMs: ipWindow, max: limits.perIp.max },
        { key: keyOf(subjectKeys, 'subject', sub), windowMs: subjectWindow, max: limits.perSubject.max }
      ], clock())
    } catch {
      return false
    }
  }
  app.decorate('limiters', {
    token: make('token', limits.token, r => limitKey(r.ip, limits.ipv6Prefix)),
    perIp: make('ip', limits.perIp, r => limitKey(r.ip, limits.ipv6Prefix)),
    perSubject: make('subject', limits.perSubject, r => r.principal?.sub ?? `ip:${r.ip}`),
    takeSync
  })
}, { name: 'tollgate-rate-limits', dependencies: ['tollgate-core', 'tollgate-metrics'] })
