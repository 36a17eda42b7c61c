// POST /refresh: rotates a refresh token (RFC 6749 §6, RFC 9700 §4.14), the same grant as
// grant_type=refresh_token at /token. Thin: the rules live in src/oauth/refresh.ts.
import type { FastifyInstance } from 'fastify'
import { authenticateClient, rejectRepeatedParameters } from '../oauth/client-auth.js'
import { headers, oauthErrors, ref, response } from '../schemas/index.js'
import { TOKEN_BODY_LIMIT, dpopBinding, refreshGrant, sendTokenResponse } from './token.js'

export default async function refreshRoutes (app: FastifyInstance): Promise<void> {
  app.post('/refresh', {
    bodyLimit: TOKEN_BODY_LIMIT,
    config: { oauth: true },
    onRequest: app.limiters.token,
    preValidation: rejectRepeatedParameters,
    schema: {
      operationId: 'refreshToken',
      tags: ['tokens'],
      summary: 'Rotate a refresh token',
      description: 'Answers a new access token and a new refresh token; the presented refresh token stops working. Presenting an already-rotated token is reuse: `invalid_grant`, and the whole token family is revoked, access tokens included. `scope` and `audience` may narrow what was originally granted, never widen it. Client authentication as at /token.',
      security: [{ clientBasic: [] }, {}],
      consumes: ['application/x-www-form-urlencoded', 'application/json'],
      body: ref('RefreshRequest'),
      response: { 200: response('A new access token and a new refresh token (RFC 6749 §6)', ref('TokenResponse'), { headers: headers.noStore }), ...oauthErrors }
    }
  }, async (request, reply) => {
    const client = await authenticateClient(request, app.clients)
    const jkt = await dpopBinding(app, request, client, '/refresh')
    const result = await refreshGrant(app, request, client, request.body as Record<string, string | undefined>, jkt)
    return sendTokenResponse(app, request, reply, client, 'refresh_token', result)
  })
}
