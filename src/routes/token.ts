// POST /token (RFC 6749 §4.4, §6; RFC 8693). Thin: authenticates the client, dispatches on
// grant_type to the grant functions, writes the RFC 6749 §5.1 answer and the audit line.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { Client } from '../clients/index.js'
import { InvalidDpopProof, OAuthError } from '../errors.js'
import { authenticateClient, rejectRepeatedParameters, repeated, spaceList } from '../oauth/client-auth.js'
import { ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT } from '../oauth/exchange.js'
import type { AuditSink } from '../oauth/refresh.js'
import { headers, oauthErrors, ref, response } from '../schemas/index.js'
import type { IssuedToken } from '../tokens/index.js'

// A few KiB: room for a subject token at the 8 KiB token cap plus the other form fields, no more.
export const TOKEN_BODY_LIMIT = 10 * 1024
const CONSUMES = ['application/x-www-form-urlencoded', 'application/json']

export interface GrantResult {
  issued: IssuedToken
  /** Lifetime in seconds, for expires_in. */
  ttl: number
  refreshToken?: string
  issuedTokenType?: string
}

/** `jkt`: the DPoP key the access token is bound to (RFC 9449), when the request carried a proof. */
export type Grant = (app: FastifyInstance, request: FastifyRequest, client: Client, body: Record<string, string | undefined>, jkt: string | undefined) => Promise<GrantResult>

/**
 * RFC 9449 §5: the DPoP key the tokens of this request are bound to, from its `DPoP` proof for
 * POST <issuer><path>. A client without `dpop` may not send one; a `required` client must.
 */
export async function dpopBinding (app: FastifyInstance, request: FastifyRequest, client: Client, path: string): Promise<string | undefined> {
  const proof = request.headers.dpop
  if (proof === undefined) {
    if (client.dpop === 'required') throw new InvalidDpopProof('this client must present a DPoP proof', 400)
    return undefined
  }
  if (client.dpop === undefined) throw new InvalidDpopProof('this client may not use DPoP', 400)
  try {
    return await app.dpop.verify(proof, { htm: 'POST', htu: app.config.issuer.replace(/\/+$/, '') + path })
  } catch (err) {
    if (err instanceof InvalidDpopProof) throw new InvalidDpopProof(err.message, 400, { cause: err })
    throw err
  }
}


/** Requested values must be a subset of what is allowed; none requested means all allowed. */
export function narrow (requested: string[] | undefined, allowed: readonly string[], error: 'invalid_scope' | 'invalid_target', what: string): string[] {
  if (requested === undefined || requested.length === 0) return [...allowed]
  const refused = requested.filter(v => !allowed.includes(v))
  if (refused.length > 0) throw new OAuthError(error, `${what} not allowed: ${refused.join(' ')}`)
  return requested
}

/**
 * The audiences a token request names: `audience` (space-separated) together with the audiences of
 * its RFC 8707 `resource` values, each of which must be a tool's resource URI whose audience is in
 * `allowed` (else invalid_target). undefined when neither is given (the grant's default applies).
 */
export function requestedAudiences (app: FastifyInstance, allowed: readonly string[], body: Record<string, string | undefined>): string[] | undefined {
  const audiences = spaceList(body.audience)
  const resources = repeated(body.resource as unknown)
  if (resources === undefined) return audiences
  return [...new Set([...(audiences ?? []), ...app.resources.audiencesFor(resources, allowed)])]
}

/** RFC 6749 §4.4. */
const clientCredentialsGrant: Grant = async (app, _request, client, body, jkt) => {
  const scopes = narrow(spaceList(body.scope), client.scopes, 'invalid_scope', 'scope')
  const audiences = narrow(requestedAudiences(app, client.audiences, body), client.audiences, 'invalid_target', 'audience')
  if (audiences.length === 0) throw new OAuthError('invalid_target', 'the client has no audience to issue a token for')
  const ttl = client.accessTtl ?? app.config.tokens.accessTtl
  // A refresh client's grant starts a family: its first access token already carries the family
  // id, so revoking the family (or detecting reuse) denies this token too (CONTRACT §4).
  const fid = client.refresh ? app.refreshTokens.newFamilyId() : undefined
  const request = {
    sub: client.id,
    clientId: client.id,
    scopes,
    audiences,
    ttl,
    claims: client.claims,
    ...(client.quota !== undefined ? { quota: client.quota } : {}),
    ...(fid !== undefined ? { fid } : {}),
    ...(jkt !== undefined ? { jkt } : {})
  }
  const result: GrantResult = { issued: app.tokens.issue(request), ttl }
  if (fid !== undefined) result.refreshToken = await app.refreshTokens.start(client, result.issued)
  return result
}

/** RFC 6749 §6, also served at POST /refresh: rotates the refresh token and mints an access token. */
export const refreshGrant: Grant = async (app, request, client, body, jkt) => {
  if (!client.refresh) throw new OAuthError('unauthorized_client', 'this client may not use refresh tokens')
  if (body.refresh_token === undefined || body.refresh_token === '') throw new OAuthError('invalid_request', 'refresh_token is required')
  let reused = false
  const audit: AuditSink = (event, fields) => {
    if (event === 'refresh.reuse_detected') reused = true
    request.log.info({ audit: event, ...fields }, event === 'refresh.reuse_detected' ? 'refresh token reuse detected: family revoked' : 'refresh token rotated')
  }
  try {
    const rotated = await app.refreshTokens.rotate(client, body.refresh_token, { scopes: spaceList(body.scope), audiences: requestedAudiences(app, client.audiences, body), jkt }, audit)
    app.metrics.refreshes.inc({ result: 'rotated' })
    return { issued: rotated.issued, ttl: rotated.ttl, refreshToken: rotated.refreshToken }
  } catch (err) {
    app.metrics.refreshes.inc({ result: reused ? 'reused' : 'refused' })
    throw err
  }
}

/** RFC 8693 token exchange. */
const tokenExchangeGrant: Grant = async (app, request, client, body, jkt) => {
  let exchanged
  try {
    if (!client.exchange) throw new OAuthError('unauthorized_client', 'this client may not use token exchange')
    exchanged = await app.tokenExchange.exchange(client, {
      subjectToken: body.subject_token,
      subjectTokenType: body.subject_token_type,
      requestedTokenType: body.requested_token_type,
      scopes: spaceList(body.scope),
      audiences: requestedAudiences(app, client.audiences, body),
      jkt
    })
  } catch (err) {
    app.metrics.exchanges.inc({ issuer: 'unknown', result: (err as { code?: string }).code ?? 'error' })
    throw err
  }
  const { claims } = exchanged.issued
  app.metrics.exchanges.inc({ issuer: exchanged.subjectKind, result: 'issued' })
  request.log.info({ audit: 'token.exchanged', client_id: client.id, sub: claims.sub, jti: claims.jti, family_id: claims.fid, subject_issuer: exchanged.subjectIssuer, scope: claims.scope, aud: claims.aud }, 'token exchanged')
  // RFC 8693 §2.2.1: issued_token_type is required in the answer.
  return { issued: exchanged.issued, ttl: exchanged.ttl, issuedTokenType: ACCESS_TOKEN_TYPE }
}

/** Grants by grant_type: fixed at load, read-only, the same for every app instance. */
const GRANTS: ReadonlyMap<string, Grant> = new Map([
  ['client_credentials', clientCredentialsGrant],
  ['refresh_token', refreshGrant],
  [TOKEN_EXCHANGE_GRANT, tokenExchangeGrant]
])

export function sendTokenResponse (app: FastifyInstance, request: FastifyRequest, reply: FastifyReply, client: Client, grantType: string, result: GrantResult): FastifyReply {
  const { claims } = result.issued
  app.metrics.tokensIssued.inc({ grant_type: grantType })
  request.log.info({ audit: 'token.issued', grant_type: grantType, client_id: client.id, sub: claims.sub, scope: claims.scope, aud: claims.aud, jti: claims.jti, exp: claims.exp }, 'token issued')
  reply.header('cache-control', 'no-store').header('pragma', 'no-cache')
  return reply.send({
    access_token: result.issued.token,
    // RFC 9449 §5: a bound token's type is DPoP.
    token_type: claims.cnf !== undefined ? 'DPoP' : 'Bearer',
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
      description: 'client_credentials (RFC 6749 §4.4), refresh_token (§6) and token exchange (RFC 8693). Client authentication: HTTP Basic or client_id + client_secret in the body. `resource` (RFC 8707, repeatable) names tools by their resource URI. A client configured with `dpop` may send a `DPoP` proof header (RFC 9449) for POST `<issuer>/token`: the access token is then bound to the proof\'s key (`cnf.jkt`, `token_type: DPoP`); a `required` client must, a client without `dpop` may not (400 invalid_dpop_proof).',
      security: [{ clientBasic: [] }, {}],
      consumes: CONSUMES,
      body: ref('TokenRequest'),
      response: { 200: response('Tokens issued (RFC 6749 §5.1); `refresh_token` only for refresh clients, `issued_token_type` only for token exchange', ref('TokenResponse'), { headers: headers.noStore }), ...oauthErrors }
    }
  }, async (request, reply) => {
    const body = request.body as Record<string, string | undefined>
    const grantType = body.grant_type as string
    const grant = GRANTS.get(grantType)
    const client = await authenticateClient(request, app.clients)
    if (grant === undefined) throw new OAuthError('unsupported_grant_type', `grant_type ${grantType} is not supported`)
    const jkt = await dpopBinding(app, request, client, '/token')
    const result = await grant(app, request, client, body, jkt)
    return sendTokenResponse(app, request, reply, client, grantType, result)
  })
}
