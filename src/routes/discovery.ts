// Public discovery documents: the JWKS (RFC 7517) under two paths, the authorization server
// metadata (RFC 8414) and the protected resource metadata (RFC 9728) of the gateway and of each tool.
import type { FastifyInstance } from 'fastify'
import { Type } from 'typebox'
import { problem, ref } from '../schemas/index.js'
import { DPOP_ALGORITHMS } from '../tokens/dpop.js'
import { RESOURCE_METADATA_PATH } from '../tools/resources.js'

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
    service_documentation: `${base}/docs`,
    dpop_signing_alg_values_supported: [...DPOP_ALGORITHMS],
    // RFC 9728 §4: the resources tokens can be requested for (the RFC 8707 `resource` values).
    protected_resources: app.resources.toolResources
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

  // RFC 9728 §3: served under the bare well-known path and, when server.publicUrl has a path,
  // also under that path (where RFC 9728 §3.1 puts it: a proxy routes it here unchanged).
  const { resources } = app
  for (const [i, prefix] of resources.routePrefixes.entries()) {
    const suffix = i === 0 ? '' : 'UnderPublicPath'
    const hide = i > 0
    app.get(RESOURCE_METADATA_PATH + prefix, {
      schema: {
        operationId: `getResourceMetadata${suffix}`,
        ...(hide ? { hide: true } : {}),
        tags: ['keys'],
        summary: 'Protected resource metadata of the gateway (RFC 9728)',
        description: 'The gateway as an OAuth protected resource: its resource identifier (`server.publicUrl`), the authorization server that issues its tokens, the scopes its tools use and how to present a token. Cache for at most `max-age`.',
        security: [],
        response: { 200: ref('ProtectedResourceMetadata') }
      }
    }, async (_request, reply) => {
      reply.header('cache-control', `public, max-age=${maxAge}`)
      return resources.metadata
    })
    app.get(`${RESOURCE_METADATA_PATH}${prefix}/call/:tool`, {
      schema: {
        operationId: `getToolResourceMetadata${suffix}`,
        ...(hide ? { hide: true } : {}),
        tags: ['keys'],
        summary: 'Protected resource metadata of one tool (RFC 9728)',
        description: 'The tool as an OAuth protected resource: its resource identifier `<publicUrl>/call/<tool>` (the value of `resource` at POST /token, RFC 8707) and the scopes it requires. Cache for at most `max-age`.',
        security: [],
        params: Type.Object({ tool: Type.String({ description: 'The configured tool name' }) }),
        response: { 200: ref('ProtectedResourceMetadata'), 404: problem('No such tool (tool_not_found)') }
      }
    }, async (request, reply) => {
      const metadata = resources.toolMetadata((request.params as { tool: string }).tool)
      reply.header('cache-control', `public, max-age=${maxAge}`)
      return metadata
    })
  }
}
