// Public discovery documents: the JWKS (RFC 7517) under two paths and the authorization server
// metadata (RFC 8414).
import type { FastifyInstance } from 'fastify'
import { ref } from '../schemas/index.js'

export default async function discoveryRoutes (app: FastifyInstance): Promise<void> {
  const maxAge = app.config.keys.jwksMaxAge
  const jwks = {
    schema: {
      tags: ['keys'],
      summary: 'Public signing keys (JWK Set)',
      description: 'Every key that may have signed a live token, and the next key before it signs. Cache for at most `max-age`.',
      security: [],
      response: { 200: ref('Jwks') }
    }
  }
  const handler = async (_request: unknown, reply: any): Promise<string> => {
    reply.header('cache-control', `public, max-age=${maxAge}`).type('application/json')
    return app.keys.jwks() // a prebuilt string: no re-serialisation per request
  }
  app.get('/jwks', { schema: { ...jwks.schema, operationId: 'getJwks' } }, handler)
  app.get('/.well-known/jwks.json', { schema: { ...jwks.schema, operationId: 'getWellKnownJwks' } }, handler)

  const base = app.config.issuer.replace(/\/+$/, '')
  const metadata = {
    issuer: app.config.issuer,
    token_endpoint: `${base}/token`,
    jwks_uri: `${base}/.well-known/jwks.json`,
    introspection_endpoint: `${base}/validate`,
    revocation_endpoint: `${base}/revoke`,
    grant_types_supported: ['client_credentials', 'refresh_token', 'urn:ietf:params:oauth:grant-type:token-exchange'],
    response_types_supported: [],
    token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
    introspection_endpoint_auth_methods_supported: app.config.introspection.public ? ['none', 'client_secret_basic', 'client_secret_post'] : ['client_secret_basic', 'client_secret_post'],
    revocation_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
    service_documentation: `${base}/docs`
  }
  app.get('/.well-known/oauth-authorization-server', {
    schema: {
      operationId: 'getServerMetadata',
      tags: ['keys'],
      summary: 'Authorization server metadata (RFC 8414)',
      description: 'The endpoints, grant types and client authentication methods of this gateway, for OAuth client libraries that discover them. Cache for at most `max-age`.',
      security: [],
      response: { 200: ref('AuthorizationServerMetadata') }
    }
  }, async (_request, reply) => {
    reply.header('cache-control', `public, max-age=${maxAge}`)
    return metadata
  })
}
