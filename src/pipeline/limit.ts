// limit: the per-IP, then the per-subject rate limit (CONTRACT §3, §5), counted in the store so
// they hold across restarts and replicas. When the store counts in this process (SQLite) and both
// limits have room, one synchronous step counts both; otherwise the async limiters count, refuse
// with 429 rate_limited and say which limit it was.
import { principalOf, type RequestContext } from './context.js'

export interface Limiters {
  /**
   * Counts one request against both limits without a promise, when the store keeps its counters
   * in this process and both have room: true when counted. Otherwise nothing is counted and it is
   * false.
   */
  takeSync: (ip: string, sub: string) => boolean
  /** Counts one request for the address; throws RateLimited when over. */
  perIp: (ip: string) => Promise<void>
  /** Counts one request for the subject; throws RateLimited when over. */
  perSubject: (sub: string) => Promise<void>
}

async function limitAsync (limiters: Limiters, ip: string, sub: string): Promise<void> {
  await limiters.perIp(ip)
  await limiters.perSubject(sub)
}

/** undefined when counted at once; else a promise that settles when both limits were counted. */
export function limit (limiters: Limiters, ctx: RequestContext): Promise<void> | undefined {
  const sub = principalOf(ctx).sub
  if (limiters.takeSync(ctx.ip, sub)) return undefined
  return limitAsync(limiters, ctx.ip, sub)
}
