// POST /validate: token introspection (RFC 7662). GET /validate: the forward-auth decision for
// nginx auth_request, Traefik ForwardAuth and Envoy ext_authz (200, 401 or 403 only).
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import { Type } from 'typebox'
import { OAuthError, StoreUnavailable, TollgateError } from '../errors.js'
import { authenticateClient, rejectRepeatedParameters, spaceList } from '../oauth/client-auth.js'
import { authorize, headerSafe, limit, meter, principalOf, requireAudience, requireScopes } from '../pipeline/index.js'
import type { QuotaUsage } from '../quota/index.js'
import { headers, oauthErrors, problem, ref, response } from '../schemas/index.js'
import type { Principal } from '../tokens/index.js'

export const INTROSPECTION_BODY_LIMIT = 16 * 1024

interface IntrospectionBody {
  token: string
  token_type_hint?: string
  audience?: string
  scope?: string
}

interface ForwardAuthDecision {
  sub: string
  client_id: string
  scope: string
  aud: readonly string[]
}

interface ForwardAuthQuery {
  audience?: string
  scope?: string
  charge?: string
}

/** The largest `charge`, the bound of a tool's cost (CONTRACT §10). */
export const MAX_CHARGE = 1_000_000_000

/**
 * `?charge=`: a decimal integer in [0, MAX_CHARGE] (spelled out at its end), without leading
 * zeros. The schema holds the whole rule, so a malformed value is a 400 before any stage runs.
 */
const CHARGE_PATTERN = '^(0|[1-9][0-9]{0,8}|1000000000)$'

/** The balance a proxy can pass on (CONTRACT §10), from a usage just read or just charged. */
function balanceHeaders (usage: QuotaUsage): Record<string, string> {
  return {
    'x-auth-quota-limit': String(usage.limit),
    'x-auth-quota-remaining': String(usage.remaining),
    'x-auth-quota-reset': String(usage.reset)
  }
}

export default async function validateRoutes (app: FastifyInstance): Promise<void> {
  const { metrics, quotas } = app
  // A proxy that names no audience still gets one checked, when configured (a token for another
  // service must not open this one).
  const defaultAudience = app.config.forwardAuth.defaultAudience
  // Counted without prom-client's per-call label hashing (src/plugins/metrics.ts).
  const allowed = metrics.validationCount('forward_auth', 'allowed')

  app.post('/validate', {
    bodyLimit: INTROSPECTION_BODY_LIMIT,
    config: { oauth: true },
    onRequest: app.limiters.token,
    preValidation: rejectRepeatedParameters,
    schema: {
      operationId: 'introspectToken',
      tags: ['validation'],
      summary: 'Introspect a token (RFC 7662)',
      description: 'Answers `{"active": false}` for anything invalid, expired, revoked or not matching the optional `audience` and `scope`. Client-authenticated unless introspection is public.',
      security: [{ clientBasic: [] }, {}],
      consumes: ['application/x-www-form-urlencoded', 'application/json'],
      body: ref('IntrospectionRequest'),
      response: { 200: response('The token\'s claims, or `{"active": false}` (RFC 7662 §2.2)', ref('IntrospectionResponse'), { headers: headers.noStore }), ...oauthErrors }
    }
  }, async (request, reply) => {
    if (!app.config.introspection.public) await authenticateClient(request, app.clients)
    const body = request.body as IntrospectionBody
    reply.header('cache-control', 'no-store')
    let principal: Principal
    try {
      principal = app.tokens.verify(body.token)
      requireAudience(principal, body.audience)
      requireScopes(principal, spaceList(body.scope) ?? [])
    } catch (err) {
      if (err instanceof StoreUnavailable) throw new OAuthError('temporarily_unavailable', 'the state store is unavailable', 503)
      if (!(err instanceof TollgateError)) throw err
      metrics.validationCount('introspect', err.code).inc()
      return { active: false } // RFC 7662 §2.2: no reason is given
    }
    metrics.validationCount('introspect', 'active').inc()
    const c = principal.claims
    const answer: Record<string, unknown> = {
      active: true,
      sub: c.sub,
      client_id: c.client_id,
      scope: c.scope,
      aud: c.aud,
      iss: c.iss,
      exp: c.exp,
      iat: c.iat,
      nbf: c.nbf,
      jti: c.jti,
      token_type: 'access_token'
    }
    if (c.act !== undefined) answer.act = c.act
    if (c.cnf !== undefined) answer.cnf = c.cnf
    if (c.quota !== undefined) {
      const usage = await app.quotas.balance(c.sub, c.quota).catch((err: unknown) => {
        throw new OAuthError('temporarily_unavailable', 'the state store is unavailable', 503, { cause: err })
      })
      answer.quota = { limit: usage.limit, used: usage.used, remaining: usage.remaining, reset: usage.reset }
    }
    return answer
  })

  app.get('/validate', {
    config: { forwardAuth: true, protectedResource: 'gateway' },
    schema: {
      operationId: 'forwardAuth',
      tags: ['validation'],
      summary: 'Forward-auth decision',
      description: 'For nginx `auth_request`, Traefik ForwardAuth and Envoy ext_authz. The token is read from `Authorization: Bearer` only, or, for a DPoP-bound token, `Authorization: DPoP` with a `DPoP` proof (RFC 9449) whose `htm`/`htu` name the original request: behind a trusted proxy, `X-Forwarded-Method` and `X-Forwarded-Proto`/`-Host`/`-Uri`; otherwise GET `<publicUrl>/validate`. A refused proof is 401 with `WWW-Authenticate: DPoP error="invalid_dpop_proof"`. 200 carries `X-Auth-Subject`, `X-Auth-Client-Id`, `X-Auth-Scope` and `X-Auth-Audience`; 401 and 403 carry an RFC 6750 `WWW-Authenticate` challenge. A rate-limited caller gets 403 with `Retry-After`, since a forwarding proxy passes on only 401 and 403. For a token with a `quota` claim, 200 also carries `X-Auth-Quota-Limit`, `X-Auth-Quota-Remaining` and `X-Auth-Quota-Reset`. With `charge=N`, the subject\'s quota is charged N atomically, on the same counter as /call; a spent quota is 429 quota_exceeded with `Retry-After` and the RateLimit fields. A token without a quota claim is not metered: nothing is charged and it gets 200.',
      security: [{ bearerAuth: [] }],
      querystring: Type.Object({
        audience: Type.Optional(Type.String({ description: 'The token must carry this audience' })),
        scope: Type.Optional(Type.String({ description: 'Space-separated scopes the token must carry' })),
        charge: Type.Optional(Type.String({ pattern: CHARGE_PATTERN, description: `Charge the subject\'s quota this much (an integer from 0 to ${MAX_CHARGE}), atomically and on the same counter as /call; a token without a quota claim is not metered` }))
      }, { additionalProperties: false }),
      response: {
        200: response('Allowed: the identity is in the X-Auth-* headers and, for direct callers, the body', Type.Object({
          sub: Type.String(),
          client_id: Type.String(),
          scope: Type.String({ description: 'Space-separated' }),
          aud: Type.Array(Type.String())
        }, { $id: 'ForwardAuthDecision' }), {
          headers: {
            'X-Auth-Subject': Type.String({ description: 'The token\'s `sub`' }),
            'X-Auth-Client-Id': Type.String({ description: 'The token\'s `client_id`' }),
            'X-Auth-Scope': Type.String({ description: 'The token\'s scopes, space-separated' }),
            'X-Auth-Audience': Type.String({ description: 'The token\'s audiences, space-separated' }),
            'X-Auth-Quota-Limit': Type.String({ description: 'The quota\'s limit per window, when the token has a quota claim' }),
            'X-Auth-Quota-Remaining': Type.String({ description: 'What is left in the current window (after this request\'s charge), when the token has a quota claim' }),
            'X-Auth-Quota-Reset': Type.String({ description: 'Seconds until the current window resets, when the token has a quota claim' })
          }
        }),
        400: problem('A malformed query: a `charge` that is not an integer from 0 to 1000000000 written without leading zeros, or a repeated parameter'),
        401: problem('No token, or an invalid, expired or revoked one, or one without the required audience', headers.wwwAuthenticateBearer),
        403: problem('The token lacks a required scope (insufficient_scope), or the caller is rate-limited (rate_limited, with Retry-After)', { ...headers.wwwAuthenticateBearer, ...headers.retryAfter }),
        429: problem('With `charge`: the quota is spent (quota_exceeded); nothing was charged', { ...headers.retryAfter, ...headers.quota }),
        503: problem('The state store is unavailable')
      }
    },
    // The pipeline stopped after limit, or after meter with ?charge= (docs/architecture.md):
    // authenticate, then authorize, limit (and meter) in one hook. Callback style, and limit
    // answers without a promise when the store counts in this process: this is the gateway's
    // hottest route.
    onRequest: app.authenticate,
    preHandler: (request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction) => {
      const ctx = request.ctx
      const query = request.query as ForwardAuthQuery
      let counting
      try {
        ctx.trace?.enter('authorize')
        authorize(ctx, { audience: query.audience ?? defaultAudience, scopes: spaceList(query.scope) })
        ctx.trace?.enter('limit')
        counting = limit(app.limiters, ctx)
      } catch (err) {
        done(err as Error)
        return
      }
      if (query.charge !== undefined) {
        // Metering through a reverse proxy (CONTRACT §10): the one meter stage, as on /call.
        const charge = Number(query.charge)
        const metering = async (): Promise<void> => {
          if (counting !== undefined) await counting
          ctx.trace?.enter('meter')
          await meter(quotas, ctx, charge)
          ctx.trace?.leave()
        }
        metering().then(() => { done() }, done)
      } else if (counting === undefined) {
        ctx.trace?.leave()
        done()
      } else {
        counting.then(() => {
          ctx.trace?.leave()
          done()
        }, done)
      }
    },
    onError: (_request, _reply, err, done) => {
      metrics.validationCount('forward_auth', (err as TollgateError).code ?? 'error').inc()
      done()
    }
  }, (request, reply) => {
    const ctx = request.ctx
    const p = principalOf(ctx)
    // The balance (CONTRACT §10): after a charge, the usage it left; else one store read, and
    // only for a token with a quota claim (nothing at all for one without). Without a promise
    // when the store reads in this process (SQLite): this is the gateway's hottest route.
    const quota = p.claims.quota
    if (ctx.usage !== undefined || quota === undefined) return decision(reply, p, ctx.usage)
    let usage
    try {
      usage = quotas.balanceSync(p.sub, quota)
    } catch (err) {
      throw new StoreUnavailable({ cause: err })
    }
    if (usage !== undefined) return decision(reply, p, usage)
    return quotas.balance(p.sub, quota).then(u => decision(reply, p, u), (err: unknown) => { throw new StoreUnavailable({ cause: err }) })
  })

  // A principal's identity headers, made once per principal: the verification cache hands back the
  // same Principal for a repeated token, and the header checks and the join cost about 3,900
  // event-loop instructions per answer (bench/README.md, "What each part of GET /validate costs").
  const identities = new WeakMap<Principal, Readonly<Record<string, string>>>()
  function identityHeaders (p: Principal): Readonly<Record<string, string>> {
    let headers = identities.get(p)
    if (headers === undefined) {
      headers = {
        'x-auth-subject': headerSafe(p.sub, 'sub'),
        'x-auth-client-id': headerSafe(p.clientId, 'client_id'),
        'x-auth-scope': headerSafe(p.scope, 'scope'),
        'x-auth-audience': headerSafe(p.aud.join(' '), 'aud'),
        'cache-control': 'no-store'
      }
      identities.set(p, headers)
    }
    return headers
  }

  /** The forward-auth answer: identity headers, the balance when there is one, the body. */
  function decision (reply: FastifyReply, p: Principal, usage: QuotaUsage | undefined): ForwardAuthDecision {
    allowed.inc()
    reply.headers(identityHeaders(p))
    if (usage !== undefined) reply.headers(balanceHeaders(usage))
    return { sub: p.sub, client_id: p.clientId, scope: p.scope, aud: p.aud }
  }
}
