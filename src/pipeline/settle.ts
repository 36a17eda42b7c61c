// settle: after the tool answered (or failed to), the call's charge is final or given back. A call
// whose upstream failed (connection error, timeout, 5xx, a body that broke off) is refunded once,
// unless the tool sets `refundOnFailure: false` (CONTRACT §5).
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
  try {
    await quotas.refund(charge.receipt)
  } catch (err) {
    log.warn({ err, tool: tool.name, sub: charge.receipt.sub }, 'quota refund failed')
    return undefined
  }
  const usage = charge.usage
  const used = Math.max(0, usage.used - charge.receipt.cost)
  ctx.usage = { ...usage, used, remaining: Math.max(0, usage.limit - used) }
  return quotaHeaders(ctx.usage)
}
