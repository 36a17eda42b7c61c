// GET /quota: the caller's own quota usage in the current window (CONTRACT §5), with the same
// RateLimit fields as /call. A token without a quota claim is not metered: it gets 200 with
// `limit`, `used`, `remaining`, `window` and `reset` all null and no RateLimit fields.
import type { FastifyInstance } from 'fastify'
import { Type } from 'typebox'
import { StoreUnavailable } from '../errors.js'
import { quotaHeaders } from '../quota/index.js'
import { headers, problem, response } from '../schemas/index.js'
import { principalOf } from '../pipeline/index.js'

const NullableInt = (description: string) => Type.Union([Type.Integer(), Type.Null()], { description })

export default async function quotaRoutes (app: FastifyInstance): Promise<void> {
  app.get('/quota', {
    schema: {
      operationId: 'getQuota',
      tags: ['tools'],
      summary: 'The caller\'s quota usage',
      description: 'Usage of the caller\'s subject in the current fixed window (aligned to multiples of the window since the Unix epoch). Carries `RateLimit-Policy` and `RateLimit`. For a token without a quota claim (not metered) every number is null.',
      security: [{ bearerAuth: [] }],
      response: {
        200: response('Usage in the current window', Type.Object({
          sub: Type.String(),
          limit: NullableInt('Calls (cost units) allowed per window; null when not metered'),
          used: NullableInt('Used in the current window'),
          remaining: NullableInt('Left in the current window'),
          window: NullableInt('Window length in seconds'),
          reset: NullableInt('Seconds until the window resets')
        }, { $id: 'QuotaStatus' }), { headers: headers.quota }),
        401: problem('No token, or an invalid, expired or revoked one', headers.wwwAuthenticateBearer),
        503: problem('The state store is unavailable')
      }
    },
    onRequest: app.authenticate
  }, async (request, reply) => {
    const p = principalOf(request.ctx)
    reply.header('cache-control', 'no-store')
    const quota = p.claims.quota
    if (quota === undefined) return { sub: p.sub, limit: null, used: null, remaining: null, window: null, reset: null }
    const usage = await app.quotas.balance(p.sub, quota).catch((err: unknown) => { throw new StoreUnavailable({ cause: err }) })
    reply.headers(quotaHeaders(usage))
    return { sub: p.sub, limit: usage.limit, used: usage.used, remaining: usage.remaining, window: usage.window, reset: usage.reset }
  })
}
