// POST /token (RFC 6749 §4.4, §6; RFC 8693). Thin: authenticates the client, dispatches on
// grant_type to the grant functions, writes the RFC 6749 §5.1 answer and the audit line.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { Client } from '../clients/index.js'
import { OAuthError } from '../errors.js'
import { authenticateClient, rejectRepeatedParameters, spaceList } from '../oauth/client-auth.js'
import { oauthErrors, ref } from '../schemas/index.js'
import type { IssuedToken } from '../tokens/index.js'

export const TOKEN_BODY_LIMIT = 4096
const CONSUMES = ['application/x-www-form-urlencoded', 'application/json']

export interface GrantResult {
  issued: IssuedToken
  /** Lifetime in seconds, for expires_in. */
  ttl: number
  refreshToken?: string
  issuedTokenType?: string
}

export type Grant = (app: FastifyInstance, request: FastifyRequest, client: Client, body: Record<string, string | undefined>) => Promise<GrantResult>

/** Grants by grant_type. Registered here; further grants are added by their own modules. */
export const grants = new Map<string, Grant>()

/** Requested values must be a subset of what is allowed; none requested means all allowed. */
export function narrow (requested: string[] | undefined, allowed: readonly string[], error: 'invalid_scope' | 'invalid_target', what: string): string[] {
  if (requested === undefined || requested.length === 0) return [...allowed]
  const refused = requested.filter(v => !allowed.includes(v))
  if (refused.length > 0) throw new OAuthError(error, `${what} not allowed: ${refused.join(' ')}`)
  return requested
}

grants.set('client_credentials', async (app, _request, client, body) => {
  const scopes = narrow(spaceList(body.scope), client.scopes, 'invalid_scope', 'scope')
  const audiences = narrow(spaceList(body.audience), client.audiences, 'invalid_target', 'audience')
  if (audiences.length === 0) throw new OAuthError('invalid_target', 'the client has no audience to issue a token for')
  const ttl = client.accessTtl ?? app.config.tokens.accessTtl
  const request = { sub: client.id, clientId: client.id, scopes, audiences, ttl, claims: client.claims, ...(client.quota !== undefined ? { quota: client.quota } : {}) }
  const result: GrantResult = { issued: app.tokens.issue(request), ttl }
  if (client.refresh && app.refreshTokens !== undefined) {
    result.refreshToken = await app.refreshTokens.start(client, result.issued, ttl)
  }
  return result
})

declare module 'fastify' {
  interface FastifyInstance {
    /** Refresh-token families; present once the lifecycle module is registered. */
    refreshTokens?: {
      start: (client: Client, issued: IssuedToken, ttl: number) => Promise<string>
    }
  }
}

export function sendTokenResponse (app: FastifyInstance, request: FastifyRequest, reply: FastifyReply, client: Client, grantType: string, result: GrantResult): FastifyReply {
  const { claims } = result.issued
  app.metrics.tokensIssued.inc({ grant_type: grantType })
  request.log.info({ audit: 'token.issued', grant_type: grantType, client_id: client.id, sub: claims.sub, scope: claims.scope, aud: claims.aud, jti: claims.jti, exp: claims.exp }, 'token issued')
  reply.header('cache-control', 'no-store').header('pragma', 'no-cache')
  return reply.send({
    access_token: result.issued.token,
    token_type: 'Bearer',
    expires_in: Math.floor(result.ttl),
    scope: claims.scope,
    ...(result.refreshToken !== undefined ? { refresh_token: result.refreshToken } : {}),
    ...(result.issuedTokenType !== undefined ? { issued_token_type: result.issuedTokenType } : {})
  })
}

export default async function tokenRoutes (app: FastifyInstance): Promise<void> {
  app.post('/token', {
    bodyLimit: TOKEN_BODY_LIMIT,
    config: { oauth: true },
    onRequest: app.limiters.token,
    preValidation: rejectRepeatedParameters,
    schema: {
      operationId: 'issueToken',
      tags: ['tokens'],
      summary: 'Issue an access token',
      description: 'client_credentials (RFC 6749 §4.4), refresh_token (§6) and token exchange (RFC 8693). Client authentication: HTTP Basic or client_id + client_secret in the body.',
      security: [{ clientBasic: [] }, {}],
      consumes: CONSUMES,
      body: ref('TokenRequest'),
      response: { 200: ref('TokenResponse'), ...oauthErrors }
    }
  }, async (request, reply) => {
    const body = request.body as Record<string, string | undefined>
    const grantType = body.grant_type as string
    const grant = grants.get(grantType)
    const client = await authenticateClient(request, app.clients)
    if (grant === undefined) throw new OAuthError('unsupported_grant_type', `grant_type ${grantType} is not supported`)
    const result = await grant(app, request, client, body)
    return sendTokenResponse(app, request, reply, client, grantType, result)
  })
}
