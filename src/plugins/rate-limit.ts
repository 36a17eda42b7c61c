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
import type { Limiters } from '../pipeline/index.js'
import type { Store } from '../store/index.js'

/** An onRequest hook that counts the request against the per-IP limit of the OAuth endpoints. */
export type RequestLimiter = (request: FastifyRequest) => Promise<void>

declare module 'fastify' {
  interface FastifyInstance {
    limiters: Limiters & { token: RequestLimiter }
  }
}

/**
 * What @fastify/rate-limit's check reads of the "request" it is given: our keyGenerator's input,
 * and routeOptions.config for its groupId. The limits are keyed by strings the pipeline knows
 * (an address, a subject), not by a Fastify request.
 */
interface Keyed { key: string, routeOptions: { config: Record<string, never> } }
const NO_ROUTE = { config: {} }

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

  const make = (name: string, limit: { max: number, window: number }): (key: string) => Promise<void> => {
    const check = app.createRateLimit({ max: limit.max, timeWindow: limit.window * 1000, keyGenerator: (r: Keyed) => r.key, nameSpace: name } as any)
    return async (key) => {
      const result = await check({ key, routeOptions: NO_ROUTE } as Keyed as unknown as FastifyRequest)
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
  // The synchronous path's counter keys, built once per address and subject: a lookup here is
  // cheaper than building `rl:ip:<address>` per request, and the store's map is then asked with the
  // same key object. Bounded: cleared when full.
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
  const token = make('token', limits.token)
  const ipLimit = make('ip', limits.perIp)
  app.decorate('limiters', {
    token: async (request: FastifyRequest) => { await token(limitKey(request.ip, limits.ipv6Prefix)) },
    perIp: (ip: string) => ipLimit(limitKey(ip, limits.ipv6Prefix)),
    perSubject: make('subject', limits.perSubject),
    takeSync
  })
}, { name: 'tollgate-rate-limits', dependencies: ['tollgate-core', 'tollgate-metrics'] })
