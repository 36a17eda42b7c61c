// The admin API (CONTRACT §11): credits, resets and the usage ledger here; run-time clients in
// admin-clients.ts, registered inside this plugin so every /admin route shares its guard. The
// guard is the pipeline's authenticate and authorize stages: a Tollgate access token with audience
// `tollgate:admin` and scope `tollgate:admin` (401 / 403 as on every protected route). Every change
// writes an audit line naming the admin token's client and subject.
import type { FastifyInstance } from 'fastify'
import { Type, type Static } from 'typebox'
import { BadRequest, QuotaUnknown } from '../errors.js'
import { authorize, principalOf } from '../pipeline/index.js'
import { ledgerLine } from '../quota/ledger.js'
import type { QuotaClaim } from '../tokens/index.js'
import { problem, response } from '../schemas/index.js'
import adminClientRoutes from './admin-clients.js'
import { ADMIN_AUDIENCE, ADMIN_SCOPES, adminActor, adminErrors, adminSecurity, storeCall } from './admin-common.js'

const Balance = Type.Object({
  sub: Type.String(),
  limit: Type.Integer({ description: 'Cost units allowed per window (the subject\'s quota)' }),
  used: Type.Integer({ description: 'Used in the current window' }),
  remaining: Type.Integer({ description: 'limit + credits − used, at least 0' }),
  window: Type.Integer({ description: 'Window length in seconds' }),
  reset: Type.Integer({ description: 'Seconds until the window resets' }),
  credits: Type.Integer({ description: 'Added to the allowance of the current window' })
}, { description: 'A subject\'s quota in the current window' })

const QuotaGiven = {
  limit: Type.Optional(Type.Integer({ minimum: 0, maximum: 1e12, description: 'The subject\'s quota limit, when the subject is not a client with a quota' })),
  window: Type.Optional(Type.Integer({ minimum: 1, maximum: 366 * 86400, description: 'The subject\'s quota window in seconds, with `limit`' }))
}
// Query strings are not coerced (ajv coerceTypes is off): numbers come as digit strings.
const Digits = (description: string) => Type.String({ pattern: '^[0-9]{1,12}$', description })
const UsageQuery = Type.Object({
  limit: Type.Optional(Digits('The subject\'s quota limit, when the subject is not a client with a quota')),
  window: Type.Optional(Digits('The subject\'s quota window in seconds, with `limit`'))
})
const CreditsBody = Type.Object({
  add: Type.Integer({ minimum: 1, maximum: 1e12, description: 'Cost units to add to the current window\'s allowance' }),
  ...QuotaGiven
}, { additionalProperties: false })
const ResetBody = Type.Object(QuotaGiven, { additionalProperties: false })
const SubParams = Type.Object({ sub: Type.String({ minLength: 1, maxLength: 1024, description: 'The subject (`sub` claim); for client-credentials tokens the client id' }) })

const LedgerLine = Type.Object({
  ts: Type.String({ format: 'date-time' }),
  sub: Type.String(),
  client_id: Type.Union([Type.String(), Type.Null()]),
  tool: Type.Union([Type.String(), Type.Null()]),
  kind: Type.Union([Type.Literal('charge'), Type.Literal('refund'), Type.Literal('settle'), Type.Literal('credit'), Type.Literal('reset')]),
  amount: Type.Integer({ description: 'Cost units: charged, given back, changed by a settlement, credited, or cleared by a reset' }),
  request_id: Type.Union([Type.String(), Type.Null()])
}, { description: 'One line of the usage ledger' })
const LedgerPageSchema = Type.Object({
  entries: Type.Array(LedgerLine),
  next: Type.Union([Type.String(), Type.Null()], { description: 'Pass as `after` for the next page; null when the ledger was read to its end' })
})
const LedgerQuery = Type.Object({
  sub: Type.Optional(Type.String({ minLength: 1, maxLength: 1024, description: 'Only this subject\'s lines' })),
  since: Type.Optional(Type.String({ maxLength: 64, description: 'Only lines at or after this time (ISO 8601, e.g. 2026-11-30T00:00:00Z)' })),
  limit: Type.Optional(Type.String({ pattern: '^(1000|[1-9][0-9]{0,2})$', description: 'Lines per page, 1 to 1000 (default 100)' })),
  after: Type.Optional(Type.String({ pattern: '^[0-9]{1,20}$', description: 'The `next` cursor of the previous page' }))
})

/** An ISO 8601 time as epoch ms, or BadRequest naming the field. */
export function parseSince (since: string | undefined, name = 'since'): number | undefined {
  if (since === undefined) return undefined
  const ms = /^\d{4}-\d{2}-\d{2}/.test(since) ? Date.parse(since) : Number.NaN
  if (Number.isNaN(ms)) throw new BadRequest(`${name} must be an ISO 8601 time, e.g. 2026-11-30T00:00:00Z`)
  return ms
}


export default async function adminRoutes (app: FastifyInstance): Promise<void> {
  // The guard for every route in this plugin: authenticate (401), then audience and scope (401 / 403).
  app.addHook('onRequest', app.authenticate)
  app.addHook('preHandler', (request, _reply, done) => {
    try {
      authorize(request.ctx, { audience: ADMIN_AUDIENCE, scopes: ADMIN_SCOPES })
    } catch (err) {
      done(err as Error)
      return
    }
    done()
  })
  app.addHook('onSend', async (_request, reply) => { reply.header('cache-control', 'no-store') })

  /** The subject's quota: its client's (sub == client id), else the one the request gives. */
  function quotaOf (sub: string, given: { limit?: number | undefined, window?: number | undefined }): QuotaClaim {
    if (given.limit !== undefined && given.window !== undefined) return { limit: given.limit, window: given.window }
    if (given.limit !== undefined || given.window !== undefined) throw new BadRequest('limit and window go together')
    const quota = app.clients.get(sub)?.quota
    if (quota === undefined) throw new QuotaUnknown(sub)
    return quota
  }

  const balance = (sub: string, b: { limit: number, used: number, remaining: number, window: number, reset: number, credits: number }): Static<typeof Balance> =>
    ({ sub, limit: b.limit, used: b.used, remaining: b.remaining, window: b.window, reset: b.reset, credits: b.credits })

  app.get<{ Params: Static<typeof SubParams>, Querystring: Static<typeof UsageQuery> }>('/admin/usage/:sub', {
    schema: {
      operationId: 'adminGetUsage',
      tags: ['admin'],
      summary: 'A subject\'s quota usage and credits',
      description: 'The subject\'s usage in the current window of its quota. The quota (limit and window) is that of the client whose id is the subject (client-credentials tokens); for another subject pass `limit` and `window`.',
      security: adminSecurity,
      params: SubParams,
      querystring: UsageQuery,
      response: { 200: response('Usage in the current window', Balance), 400: problem('quota_unknown: the subject is not a client with a quota and no limit and window were given; or a malformed request'), ...adminErrors }
    }
  }, async (request) => {
    const { sub } = request.params
    const q = request.query
    const window = q.window === undefined ? undefined : Number(q.window)
    if (window === 0) throw new BadRequest('window must be at least 1 second')
    return balance(sub, await storeCall(app.quotas.balance(sub, quotaOf(sub, { limit: q.limit === undefined ? undefined : Number(q.limit), window }))))
  })

  app.post<{ Params: Static<typeof SubParams>, Body: Static<typeof CreditsBody> }>('/admin/usage/:sub/credits', {
    schema: {
      operationId: 'adminAddCredits',
      tags: ['admin'],
      summary: 'Add credits to a subject\'s current window',
      description: 'Adds `add` cost units to the subject\'s allowance for the current window of its quota (limit + credits), at every replica at once (the charge reads the credits in the same atomic step). Credits end with the window. Recorded in the ledger as `credit`.',
      security: adminSecurity,
      params: SubParams,
      body: CreditsBody,
      response: { 200: response('Usage after the credit', Balance), 400: problem('quota_unknown, or a malformed request'), ...adminErrors }
    }
  }, async (request) => {
    const { sub } = request.params
    const quota = quotaOf(sub, request.body)
    const after = await storeCall(app.quotas.addCredits(sub, quota, request.body.add, { clientId: principalOf(request.ctx).clientId, requestId: request.id }))
    request.log.info({ audit: 'admin.usage.credited', ...adminActor(request), sub, add: request.body.add, credits: after.credits }, 'credits added')
    return balance(sub, after)
  })

  app.post<{ Params: Static<typeof SubParams>, Body: Static<typeof ResetBody> }>('/admin/usage/:sub/reset', {
    schema: {
      operationId: 'adminResetUsage',
      tags: ['admin'],
      summary: 'Reset a subject\'s usage in the current window',
      description: 'Sets the subject\'s usage in the current window back to 0 (credits stay). Recorded in the ledger as `reset` with the usage cleared as its amount. The body is optional.',
      security: adminSecurity,
      params: SubParams,
      body: ResetBody,
      response: { 200: response('Usage after the reset', Balance), 400: problem('quota_unknown, or a malformed request'), ...adminErrors }
    },
    // A POST without a body is an empty object (validation runs after this hook).
    preValidation: (request, _reply, done) => { request.body ??= {}; done() }
  }, async (request) => {
    const { sub } = request.params
    const quota = quotaOf(sub, request.body)
    const after = await storeCall(app.quotas.reset(sub, quota, { clientId: principalOf(request.ctx).clientId, requestId: request.id }))
    request.log.info({ audit: 'admin.usage.reset', ...adminActor(request), sub }, 'usage reset')
    return balance(sub, after)
  })

  app.get<{ Querystring: Static<typeof LedgerQuery> }>('/admin/ledger', {
    schema: {
      operationId: 'adminListLedger',
      tags: ['admin'],
      summary: 'Page through the usage ledger',
      description: 'Lines in the order they were written: every charge, refund, settlement, credit and reset. Filter by `sub` and `since`; follow `next` (as `after`) until it is null: one call examines a bounded number of lines, so a filtered page may be short or empty and still have a `next`.',
      security: adminSecurity,
      querystring: LedgerQuery,
      response: { 200: response('One page of the ledger', LedgerPageSchema), 400: problem('A malformed request'), ...adminErrors }
    }
  }, async (request) => {
    const q = request.query
    const since = parseSince(q.since)
    // Lines recorded by this replica are written first; other replicas write theirs within a turn of their event loop.
    await app.quotas.ledger.flush()
    const page = await storeCall(app.store.listLedger({
      limit: q.limit === undefined ? 100 : Number(q.limit),
      ...(q.sub !== undefined ? { sub: q.sub } : {}),
      ...(since !== undefined ? { since } : {}),
      ...(q.after !== undefined ? { after: q.after } : {})
    }))
    return { entries: page.entries.map(ledgerLine), next: page.next ?? null }
  })

  await app.register(adminClientRoutes)
}
