// Counting failed client authentications (a wrong secret or an unknown client id, alike) per
// presented client id and per client address (an IPv6 client by its network, src/limits/address.ts),
// in the store's rate-limit counters, so replicas share them and they survive a restart. Past
// either limit, further attempts are refused with 429 before any scrypt runs: a flood of wrong
// secrets costs neither CPU nor thread-pool time, from one address or from many against one id.
// Unknown ids are counted exactly like known ones, so a lockout says nothing about which exist.
//
// The store only increments counters; there is no read. A failure that takes a counter to its
// limit marks that key locked here until the window ends, and `check` reads only that mark: a
// replica that has not seen the limit reached yet learns it at its own next failure (one scrypt).
import { createHash } from 'node:crypto'
import { RateLimited } from '../errors.js'
import { limitKey } from '../limits/address.js'
import type { Store } from '../store/index.js'

export interface FailedAuthLimits {
  failedAuthPerClient: { max: number, window: number }
  failedAuthPerIp: { max: number, window: number }
  ipv6Prefix: number
}

/** Locked keys kept at most; past that, ended locks are dropped, then all (they re-lock on the next failure). */
const MAX_LOCKS = 10_000

export class FailedClientAuth {
  /** Counter key → epoch ms at which its window, and so the lock, ends. */
  readonly #locked = new Map<string, number>()

  constructor (readonly store: Store, readonly clock: () => number, readonly limits: FailedAuthLimits) {}

  /** Throws RateLimited when this client id or this address has failed too often in the window. */
  check (clientId: string, ip: string): void {
    const now = this.clock()
    for (const key of this.#keys(clientId, ip)) {
      const until = this.#locked.get(key)
      if (until === undefined) continue
      if (until > now) throw new RateLimited((until - now) / 1000, 'too many failed client authentications')
      this.#locked.delete(key)
    }
  }

  /** Counts one failure against the client id and the address. */
  async record (clientId: string, ip: string): Promise<void> {
    const now = this.clock()
    const [clientKey, ipKey] = this.#keys(clientId, ip)
    const { failedAuthPerClient: perClient, failedAuthPerIp: perIp } = this.limits
    const counted = await Promise.all([
      this.store.incrementCounter(clientKey, perClient.window * 1000, now),
      this.store.incrementCounter(ipKey, perIp.window * 1000, now)
    ])
    if (counted[0].count >= perClient.max) this.#lock(clientKey, now + counted[0].ttl)
    if (counted[1].count >= perIp.max) this.#lock(ipKey, now + counted[1].ttl)
  }

  #keys (clientId: string, ip: string): [string, string] {
    // Presented ids are anything a caller sends: long or unprintable ones are counted by a hash
    // (`#` never appears in a configured id, so the two forms cannot meet).
    const id = clientId.length <= 128 && /^[\x21-\x7e]+$/.test(clientId)
      ? clientId
      : '#' + createHash('sha256').update(clientId).digest('base64url')
    return [`rl:auth-fail-client:${id}`, `rl:auth-fail-ip:${limitKey(ip, this.limits.ipv6Prefix)}`]
  }

  #lock (key: string, until: number): void {
    if (this.#locked.size >= MAX_LOCKS) {
      const now = this.clock()
      for (const [k, end] of this.#locked) if (end <= now) this.#locked.delete(k)
      if (this.#locked.size >= MAX_LOCKS) this.#locked.clear()
    }
    this.#locked.set(key, until)
  }
}
