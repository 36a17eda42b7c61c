// Quota metering: fixed windows aligned to multiples of the window since the Unix epoch, counted
// per subject in the store, so a new token never resets usage. Check-and-charge is one atomic
// store operation; a refund gives back what a failed call took. Credits (admin API) raise one
// window's allowance above the limit. Every charge, refund, credit and reset is recorded in the
// usage ledger here, the one place they all pass. Knows nothing about HTTP.
import type { Balance, LedgerEntry, Store } from '../store/index.js'
import type { QuotaClaim } from '../tokens/index.js'
import { Ledger } from './ledger.js'

export { Ledger } from './ledger.js'

export interface QuotaUsage {
  limit: number
  used: number
  remaining: number
  /** Seconds. */
  window: number
  /** Seconds until the window resets. */
  reset: number
}

/** Who made a charge, for its ledger line. */
export interface ChargeMeta {
  clientId?: string | undefined
  tool?: string | undefined
  requestId?: string | undefined
}

export interface Charge {
  granted: boolean
  usage: QuotaUsage
  /** Pass to refund() to give the charge back. */
  receipt: { sub: string, windowStart: number, windowMs: number, cost: number, meta?: ChargeMeta | undefined }
}

export interface QuotasOptions {
  /** A ledger line could not be written (logged by the caller). */
  onLedgerError?: (err: unknown, lost: number) => void
}

export class Quotas {
  readonly ledger: Ledger

  constructor (readonly store: Store, readonly clock: () => number = Date.now, options: QuotasOptions = {}) {
    this.ledger = new Ledger(store, options.onLedgerError)
  }

  /** Appends one line to the usage ledger (settlements and other kinds recorded elsewhere use this too). */
  record (sub: string, kind: LedgerEntry['kind'], amount: number, meta: ChargeMeta = {}): void {
    this.ledger.record(this.#line(sub, kind, amount, meta))
  }

  #line (sub: string, kind: LedgerEntry['kind'], amount: number, meta: ChargeMeta = {}): LedgerEntry {
    return { ts: this.clock(), sub, clientId: meta.clientId ?? null, tool: meta.tool ?? null, kind, amount, requestId: meta.requestId ?? null }
  }

  #window (quota: QuotaClaim): { windowStart: number, windowMs: number, reset: number } {
    const windowMs = quota.window * 1000
    const now = this.clock()
    const windowStart = Math.floor(now / windowMs) * windowMs
    return { windowStart, windowMs, reset: Math.ceil((windowStart + windowMs - now) / 1000) }
  }

  #usage (quota: QuotaClaim, used: number, reset: number, credits = 0): QuotaUsage {
    return { limit: quota.limit, used, remaining: Math.max(0, quota.limit + credits - used), window: quota.window, reset }
  }

  /** Usage with the window's credits (the admin API's view). */
  async balance (sub: string, quota: QuotaClaim): Promise<QuotaUsage & { credits: number }> {
    const w = this.#window(quota)
    return this.#balance(quota, w.reset, await this.store.getBalance(sub, w.windowStart, w.windowMs))
  }

  /**
   * `balance` without a promise, when the store keeps quotas in this process (SQLite); undefined
   * otherwise, and the caller awaits `balance`. A store error is thrown as it is.
   */
  balanceSync (sub: string, quota: QuotaClaim): (QuotaUsage & { credits: number }) | undefined {
    if (this.store.getBalanceSync === undefined) return undefined
    const w = this.#window(quota)
    return this.#balance(quota, w.reset, this.store.getBalanceSync(sub, w.windowStart, w.windowMs))
  }

  #balance (quota: QuotaClaim, reset: number, b: Balance): QuotaUsage & { credits: number } {
    return { limit: quota.limit, used: b.used, remaining: Math.max(0, quota.limit + b.credits - b.used), window: quota.window, reset, credits: b.credits }
  }

  async consume (sub: string, quota: QuotaClaim, cost: number, meta?: ChargeMeta): Promise<Charge> {
    const w = this.#window(quota)
    // The charge's ledger line goes with it where the store can write both in one transaction.
    const line = cost > 0 ? this.#line(sub, 'charge', cost, meta) : undefined
    const result = await this.store.consumeQuota(sub, w.windowStart, w.windowMs, quota.limit, cost, line)
    if (result.granted && line !== undefined && result.recorded !== true) this.ledger.record(line)
    return {
      granted: result.granted,
      usage: this.#usage(quota, result.used, w.reset, result.credits),
      receipt: { sub, windowStart: w.windowStart, windowMs: w.windowMs, cost, meta }
    }
  }

  /**
   * Settles a charge by `delta` (reported − reserved, CONTRACT §10) in the charge's own window:
   * never below 0, an increase even past the limit. Resolves with the usage after it.
   */
  async settle (receipt: Charge['receipt'], delta: number): Promise<number> {
    const used = await this.store.settleQuota(receipt.sub, receipt.windowStart, receipt.windowMs, delta)
    this.record(receipt.sub, 'settle', delta, receipt.meta)
    return used
  }

  async refund (receipt: Charge['receipt']): Promise<void> {
    if (receipt.cost <= 0) return
    await this.store.refundQuota(receipt.sub, receipt.windowStart, receipt.windowMs, receipt.cost)
    this.record(receipt.sub, 'refund', receipt.cost, receipt.meta)
  }

  /** Adds `amount` to the subject's allowance for the current window. */
  async addCredits (sub: string, quota: QuotaClaim, amount: number, meta?: ChargeMeta): Promise<QuotaUsage & { credits: number }> {
    const w = this.#window(quota)
    await this.store.addCredits(sub, w.windowStart, w.windowMs, amount)
    this.record(sub, 'credit', amount, meta)
    return await this.balance(sub, quota)
  }

  /** Sets the subject's usage in the current window back to 0; the ledger line carries what was cleared. */
  async reset (sub: string, quota: QuotaClaim, meta?: ChargeMeta): Promise<QuotaUsage & { credits: number }> {
    const w = this.#window(quota)
    const cleared = await this.store.resetQuota(sub, w.windowStart, w.windowMs)
    this.record(sub, 'reset', cleared, meta)
    return await this.balance(sub, quota)
  }
}

/** draft-ietf-httpapi-ratelimit-headers structured fields for the "quota" policy. */
export function quotaHeaders (usage: QuotaUsage): Record<string, string> {
  return {
    'ratelimit-policy': `"quota";q=${usage.limit};w=${usage.window}`,
    ratelimit: `"quota";r=${usage.remaining};t=${usage.reset}`
  }
}
