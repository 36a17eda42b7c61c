// POST /revoke (RFC 7009): revokes an access token (by its jti, until its exp) or a refresh token
// (its whole family and every access token minted from it). Client-authenticated as at /token; a
// client revokes only its own tokens (CONTRACT §4). Unknown, invalid and expired tokens get the
// same 200 as revoked ones (RFC 7009 §2.2), so the answer tells a caller nothing about a token.
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { Type } from 'typebox'
import type { Client } from '../clients/index.js'
import { OAuthError, StoreUnavailable, TollgateError } from '../errors.js'
import { authenticateClient, rejectRepeatedParameters } from '../oauth/client-auth.js'
import { oauthErrors, ref } from '../schemas/index.js'
import type { Principal } from '../tokens/index.js'

export const REVOKE_BODY_LIMIT = 16 * 1024

interface RevokeBody {
  token: string
  token_type_hint?: string
}

type Outcome = 'revoked' | 'not_found'

export default async function revokeRoutes (app: FastifyInstance): Promise<void> {
  const { metrics } = app

  const notYours = (): OAuthError => new OAuthError('unauthorized_client', 'the token was not issued to this client')

  async function revokeAccess (request: FastifyRequest, client: Client, token: string): Promise<Outcome> {
    if (!token.includes('.')) return 'not_found'
    let principal: Principal
    try {
      principal = app.tokens.verify(token)
    } catch (err) {
      if (err instanceof StoreUnavailable) throw new OAuthError('temporarily_unavailable', 'the state store is unavailable', 503, { cause: err })
      if (err instanceof TollgateError) return 'not_found' // expired, invalid or revoked already: nothing to do
      throw err
    }
    if (principal.clientId !== client.id) throw notYours()
    await app.tokens.revokeAccessToken(principal.jti, principal.exp)
    metrics.revocations.inc({ type: 'access_token' })
    request.log.info({ audit: 'token.revoked', token_type: 'access_token', client_id: client.id, sub: principal.sub, jti: principal.jti }, 'access token revoked')
    return 'revoked'
  }

  async function revokeRefresh (request: FastifyRequest, client: Client, token: string): Promise<Outcome> {
    const family = await app.refreshTokens.find(token)
    if (family === undefined) return 'not_found'
    if (family.clientId !== client.id) throw notYours()
    if (family.revokedAt === undefined) {
      await app.refreshTokens.revoke(family)
      metrics.revocations.inc({ type: 'refresh_token' })
      request.log.info({ audit: 'token.revoked', token_type: 'refresh_token', client_id: client.id, sub: family.sub, family_id: family.id }, 'refresh token family revoked')
    }
    return 'revoked'
  }

  app.post('/revoke', {
    bodyLimit: REVOKE_BODY_LIMIT,
    config: { oauth: true },
    onRequest: app.limiters.token,
    preValidation: rejectRepeatedParameters,
    schema: {
      operationId: 'revokeToken',
      tags: ['tokens'],
      summary: 'Revoke an access or refresh token (RFC 7009)',
      description: 'An access token is denied until its `exp`; a refresh token revokes its whole family and every access token issued from it. Revoked, unknown and invalid tokens all get 200 with an empty body. A token issued to another client is refused with 400 `unauthorized_client` and keeps working. Client authentication as at /token.',
      security: [{ clientBasic: [] }, {}],
      consumes: ['application/x-www-form-urlencoded', 'application/json'],
      body: ref('RevokeRequest'),
      response: {
        200: Type.Null({ description: 'Revoked, or unknown or invalid (RFC 7009 §2.2): the same empty answer' }),
        ...oauthErrors
      }
    }
  }, async (request, reply) => {
    const client = await authenticateClient(request, app.clients)
    const { token, token_type_hint: hint } = request.body as RevokeBody
    // RFC 7009 §2.1: the hint only orders the search; an unknown hint is ignored.
    const order = hint === 'refresh_token' ? [revokeRefresh, revokeAccess] : [revokeAccess, revokeRefresh]
    let outcome: Outcome = 'not_found'
    for (const attempt of order) {
      outcome = await attempt(request, client, token)
      if (outcome === 'revoked') break
    }
    if (outcome === 'not_found') metrics.revocations.inc({ type: 'unknown' })
    reply.header('cache-control', 'no-store').code(200)
    return await reply.send()
  })
}
