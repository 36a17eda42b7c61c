// Quota metering: fixed windows aligned to multiples of the window since the Unix epoch, counted
// per subject in the store, so a new token never resets usage. Check-and-charge is one atomic
// store operation; a refund gives back what a failed call took. Knows nothing about HTTP.
import type { Store } from '../store/index.js'
import type { QuotaClaim } from '../tokens/index.js'

export interface QuotaUsage {
  limit: number
  used: number
  remaining: number
  /** Seconds. */
  window: number
  /** Seconds until the window resets. */
  reset: number
}

export interface Charge {
  granted: boolean
  usage: QuotaUsage
  /** Pass to refund() to give the charge back. */
  receipt: { sub: string, windowStart: number, windowMs: number, cost: number }
}

export class Quotas {
  constructor (readonly store: Store, readonly clock: () => number = Date.now) {}

  #window (quota: QuotaClaim): { windowStart: number, windowMs: number, reset: number } {
    const windowMs = quota.window * 1000
    const now = this.clock()
    const windowStart = Math.floor(now / windowMs) * windowMs
    return { windowStart, windowMs, reset: Math.ceil((windowStart + windowMs - now) / 1000) }
  }

  #usage (quota: QuotaClaim, used: number, reset: number): QuotaUsage {
    return { limit: quota.limit, used, remaining: Math.max(0, quota.limit - used), window: quota.window, reset }
  }

  async usage (sub: string, quota: QuotaClaim): Promise<QuotaUsage> {
    const w = this.#window(quota)
    return this.#usage(quota, await this.store.getQuota(sub, w.windowStart, w.windowMs), w.reset)
  }

  async consume (sub: string, quota: QuotaClaim, cost: number): Promise<Charge> {
    const w = this.#window(quota)
    const result = await this.store.consumeQuota(sub, w.windowStart, w.windowMs, quota.limit, cost)
    return {
      granted: result.granted,
      usage: this.#usage(quota, result.used, w.reset),
      receipt: { sub, windowStart: w.windowStart, windowMs: w.windowMs, cost }
    }
  }

  /**
   * Settles a charge by `delta` (reported − reserved, CONTRACT §10) in the charge's own window:
   * never below 0, an increase even past the limit. Resolves with the usage after it.
   */
  async settle (receipt: Charge['receipt'], delta: number): Promise<number> {
    return await this.store.settleQuota(receipt.sub, receipt.windowStart, receipt.windowMs, delta)
  }

  async refund (receipt: Charge['receipt']): Promise<void> {
    if (receipt.cost > 0) await this.store.refundQuota(receipt.sub, receipt.windowStart, receipt.windowMs, receipt.cost)
  }
}

/** draft-ietf-httpapi-ratelimit-headers structured fields for the "quota" policy. */
export function quotaHeaders (usage: QuotaUsage): Record<string, string> {
  return {
    'ratelimit-policy': `"quota";q=${usage.limit};w=${usage.window}`,
    ratelimit: `"quota";r=${usage.remaining};t=${usage.reset}`
  }
}
