// meter: charges the subject's quota for a call, atomically in the store (CONTRACT §5). The limit
// and window come from the token's `quota` claim; a token without one is not metered. A spent
// quota is 429 quota_exceeded with Retry-After and the RateLimit fields; a store that cannot answer
// fails closed (503). The charge is recorded on the context for settle.
import { QuotaExceeded, StoreUnavailable, TollgateError } from '../errors.js'
import { quotaHeaders, type Quotas } from '../quota/index.js'
import { principalOf, type RequestContext } from './context.js'

/**
 * Charges `cost` for the call; resolves with the RateLimit fields for the answer (undefined when
 * the token is not metered), or rejects with QuotaExceeded / StoreUnavailable.
 */
export async function meter (quotas: Quotas, ctx: RequestContext, cost: number): Promise<Record<string, string> | undefined> {
  const principal = principalOf(ctx)
  const quota = principal.claims.quota
  if (quota === undefined) return undefined
  let charge
  try {
    charge = await quotas.consume(principal.sub, quota, cost, { clientId: principal.clientId, tool: ctx.tool?.name, requestId: ctx.id })
  } catch (err) {
    throw err instanceof TollgateError ? err : new StoreUnavailable({ cause: err })
  }
  const headers = quotaHeaders(charge.usage)
  if (!charge.granted) {
    const err = new QuotaExceeded(charge.usage.reset)
    Object.assign(err.headers, headers)
    throw err
  }
  ctx.charge = charge
  ctx.charged = cost
  ctx.usage = charge.usage
  return headers
}
