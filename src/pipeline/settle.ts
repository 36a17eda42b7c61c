// settle: after the tool answered (or failed to), the call's charge is final or given back. A call
// whose upstream failed (connection error, timeout, 5xx, a body that broke off) is refunded once,
// unless the tool sets `refundOnFailure: false` (CONTRACT §5). A tool with `settle: true` may report
// what the call really cost (`Tollgate-Cost`, CONTRACT §10): the charge taken by meter was then a
// reservation, settled here by the difference, atomically in the store.
import { MAX_COST } from '../metering/price.js'
import { quotaHeaders, type Quotas } from '../quota/index.js'
import type { RequestContext } from './context.js'

export interface SettleLog {
  warn: (obj: object, msg: string) => void
}

/**
 * Settles the context's call: with `failed`, refunds its charge once. Resolves with the RateLimit
 * fields after the refund when there was one to give back, else undefined. A store that cannot
 * take the refund is logged, never thrown: the caller's answer is the upstream failure.
 */
export async function settle (quotas: Quotas, ctx: RequestContext, failed: boolean, log: SettleLog): Promise<Record<string, string> | undefined> {
  const charge = ctx.charge
  const tool = ctx.tool
  if (!failed || charge === undefined || tool === undefined || ctx.refunded || !tool.refundOnFailure) return undefined
  ctx.refunded = true
  ctx.charged = 0
  try {
    await quotas.refund(charge.receipt)
  } catch (err) {
    log.warn({ err, tool: tool.name, sub: charge.receipt.sub }, 'quota refund failed')
    return undefined
  }
  const usage = charge.usage
  const used = Math.max(0, usage.used - charge.receipt.cost)
  // What was left grows by what came back (credits, when any, stay in it).
  ctx.usage = { ...usage, used, remaining: usage.remaining + (usage.used - used) }
  return quotaHeaders(ctx.usage)
}

/** The response field a tool reports a call's real cost in, as a header or a trailer. */
export const COST_FIELD = 'tollgate-cost'
/** The caller's answer: what the call was charged, when the tool reported it in a header. */
export const CHARGED_FIELD = 'tollgate-charged'

/**
 * A `Tollgate-Cost` value: an integer from 0 to 10^9 written in digits (surrounding blanks allowed),
 * else undefined (missing, repeated, signed, fractional, too large: malformed, the reservation stays).
 */
export function reportedCost (value: string | string[] | undefined): number | undefined {
  if (typeof value !== 'string') return undefined
  const digits = value.trim()
  if (!/^[0-9]{1,10}$/.test(digits)) return undefined
  const cost = Number(digits)
  return cost <= MAX_COST ? cost : undefined
}

/**
 * Settles the context's charge at `reported` (CONTRACT §10): usage changes by reported − reserved,
 * never below 0, an increase even past the limit. Only for a tool with `settle: true`, a metered
 * call and a charge not refunded. Resolves with the RateLimit fields after the settlement, or
 * undefined when there was nothing to settle. A store that cannot settle is logged and the
 * reservation stays the charge.
 */
export async function settleReported (quotas: Quotas, ctx: RequestContext, reported: number | undefined, log: SettleLog): Promise<Record<string, string> | undefined> {
  const charge = ctx.charge
  const tool = ctx.tool
  if (reported === undefined || charge === undefined || tool === undefined || !tool.settle || ctx.refunded) return undefined
  const delta = reported - charge.receipt.cost
  if (delta !== 0) {
    let used: number
    try {
      used = await quotas.settle(charge.receipt, delta)
    } catch (err) {
      log.warn({ err, tool: tool.name, sub: charge.receipt.sub }, 'quota settlement failed')
      return undefined
    }
    // A refund after this (the body broke off) gives back what was settled, not the reservation.
    charge.receipt = { ...charge.receipt, cost: reported }
    const usage = ctx.usage ?? charge.usage
    // What was left moves by the change in usage (credits, when any, stay in it).
    ctx.usage = { ...usage, used, remaining: Math.max(0, usage.remaining - (used - usage.used)) }
  }
  ctx.charged = reported
  return ctx.usage === undefined ? undefined : quotaHeaders(ctx.usage)
}
