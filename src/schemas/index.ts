// Shared TypeBox schemas: registered once with `$id`, referenced by routes, and named components
// in the OpenAPI document.
import type { FastifyInstance } from 'fastify'
import { Type, type TSchema } from 'typebox'

export const OAuthErrorSchema = Type.Object({
  error: Type.String({ description: 'RFC 6749 §5.2 error code', examples: ['invalid_request'] }),
  error_description: Type.Optional(Type.String())
}, { $id: 'OAuthError', description: 'RFC 6749 §5.2 error response' })

export const ProblemSchema = Type.Object({
  type: Type.String(),
  title: Type.String(),
  status: Type.Integer(),
  detail: Type.String(),
  code: Type.String({ description: 'Stable machine-readable code', examples: ['invalid_token', 'insufficient_scope', 'quota_exceeded'] })
}, { $id: 'Problem', description: 'RFC 9457 problem details' })

const stringParam = (description: string): TSchema => Type.String({ description })

// RFC 8707 §2: repeatable; in a form as repeated fields, in JSON as a string or an array.
const resourceParam = Type.Union([Type.String(), Type.Array(Type.String(), { minItems: 1 })], {
  description: 'RFC 8707 resource indicator, repeatable: a tool\'s resource URI `<publicUrl>/call/<tool>` (listed in `protected_resources` of the server metadata). The token\'s audience is those tools\' audiences (together with any `audience`); an unknown resource, or one whose audience the client may not have, is `invalid_target`.'
})

export const TokenRequestSchema = Type.Object({
  grant_type: Type.String({ description: 'client_credentials, refresh_token or urn:ietf:params:oauth:grant-type:token-exchange' }),
  scope: Type.Optional(stringParam('Space-separated scopes; default: all the client may have')),
  audience: Type.Optional(stringParam('Space-separated audiences; default: all the client may use')),
  client_id: Type.Optional(stringParam('client_secret_post authentication')),
  client_secret: Type.Optional(stringParam('client_secret_post authentication')),
  refresh_token: Type.Optional(stringParam('refresh_token grant')),
  subject_token: Type.Optional(stringParam('token exchange (RFC 8693)')),
  subject_token_type: Type.Optional(stringParam('token exchange (RFC 8693)')),
  requested_token_type: Type.Optional(stringParam('token exchange (RFC 8693)')),
  resource: Type.Optional(resourceParam)
}, { $id: 'TokenRequest', additionalProperties: false })

export const TokenResponseSchema = Type.Object({
  access_token: Type.String(),
  token_type: Type.Union([Type.Literal('Bearer'), Type.Literal('DPoP')], { description: '`DPoP` when the request carried a DPoP proof and the token is bound to its key (RFC 9449 §5): present it as `Authorization: DPoP <token>` with a proof' }),
  expires_in: Type.Integer({ description: 'Seconds' }),
  scope: Type.String(),
  refresh_token: Type.Optional(Type.String()),
  issued_token_type: Type.Optional(Type.String())
}, { $id: 'TokenResponse' })

export const RefreshRequestSchema = Type.Object({
  grant_type: Type.Optional(Type.Literal('refresh_token')),
  refresh_token: Type.String(),
  scope: Type.Optional(stringParam('Space-separated; may narrow, never widen')),
  audience: Type.Optional(stringParam('Space-separated; may narrow, never widen')),
  resource: Type.Optional(resourceParam),
  client_id: Type.Optional(Type.String()),
  client_secret: Type.Optional(Type.String())
}, { $id: 'RefreshRequest', additionalProperties: false })

export const RevokeRequestSchema = Type.Object({
  token: Type.String(),
  token_type_hint: Type.Optional(Type.String({ description: 'access_token or refresh_token' })),
  client_id: Type.Optional(Type.String()),
  client_secret: Type.Optional(Type.String())
}, { $id: 'RevokeRequest', additionalProperties: false })

export const IntrospectionRequestSchema = Type.Object({
  token: Type.String(),
  token_type_hint: Type.Optional(Type.String()),
  audience: Type.Optional(stringParam('The token must carry this audience')),
  scope: Type.Optional(stringParam('Space-separated scopes the token must carry')),
  client_id: Type.Optional(Type.String()),
  client_secret: Type.Optional(Type.String())
}, { $id: 'IntrospectionRequest', additionalProperties: false })

export const QuotaUsageSchema = Type.Object({
  limit: Type.Integer(),
  used: Type.Integer(),
  remaining: Type.Integer(),
  reset: Type.Integer({ description: 'Seconds until the window resets' })
}, { $id: 'QuotaUsage' })

export const IntrospectionResponseSchema = Type.Object({
  active: Type.Boolean(),
  sub: Type.Optional(Type.String()),
  client_id: Type.Optional(Type.String()),
  scope: Type.Optional(Type.String()),
  aud: Type.Optional(Type.Union([Type.String(), Type.Array(Type.String())])),
  iss: Type.Optional(Type.String()),
  exp: Type.Optional(Type.Integer()),
  iat: Type.Optional(Type.Integer()),
  nbf: Type.Optional(Type.Integer()),
  jti: Type.Optional(Type.String()),
  token_type: Type.Optional(Type.Literal('access_token')),
  act: Type.Optional(Type.Object({ sub: Type.String() }, { additionalProperties: true })),
  cnf: Type.Optional(Type.Object({ jkt: Type.String() }, { description: 'RFC 9449 §6.2: the DPoP key a bound token is bound to (its JWK SHA-256 thumbprint)' })),
  quota: Type.Optional(Type.Ref('QuotaUsage'))
}, { $id: 'IntrospectionResponse', description: 'RFC 7662 §2.2' })

export const JwksSchema = Type.Object({
  keys: Type.Array(Type.Object({
    kty: Type.String(),
    kid: Type.String(),
    alg: Type.String(),
    use: Type.String(),
    crv: Type.Optional(Type.String()),
    x: Type.Optional(Type.String()),
    y: Type.Optional(Type.String()),
    n: Type.Optional(Type.String()),
    e: Type.Optional(Type.String())
  }))
}, { $id: 'Jwks', description: 'RFC 7517 JWK Set' })

export const HealthSchema = Type.Object({
  status: Type.Union([Type.Literal('ok'), Type.Literal('fail')]),
  checks: Type.Object({
    store: Type.Union([Type.Literal('ok'), Type.Literal('fail')]),
    keys: Type.Union([Type.Literal('ok'), Type.Literal('fail')])
  })
}, { $id: 'Health' })

export const MetadataSchema = Type.Object({
  issuer: Type.String(),
  token_endpoint: Type.String(),
  jwks_uri: Type.String(),
  introspection_endpoint: Type.String(),
  revocation_endpoint: Type.String(),
  grant_types_supported: Type.Array(Type.String()),
  response_types_supported: Type.Array(Type.String()),
  token_endpoint_auth_methods_supported: Type.Array(Type.String()),
  introspection_endpoint_auth_methods_supported: Type.Array(Type.String()),
  revocation_endpoint_auth_methods_supported: Type.Array(Type.String()),
  service_documentation: Type.String(),
  dpop_signing_alg_values_supported: Type.Array(Type.String(), { description: 'RFC 9449 §5.1: the algorithms accepted for DPoP proofs' }),
  protected_resources: Type.Array(Type.String(), { description: 'RFC 9728 §4: the tools\' resource identifiers `<publicUrl>/call/<tool>`, the values `resource` accepts at POST /token (RFC 8707)' })
}, { $id: 'AuthorizationServerMetadata', description: 'RFC 8414' })

export const ProtectedResourceMetadataSchema = Type.Object({
  resource: Type.String({ description: 'The resource identifier: `server.publicUrl`, or `<publicUrl>/call/<tool>` for a tool' }),
  authorization_servers: Type.Array(Type.String(), { description: 'The issuer, whose RFC 8414 metadata names the token endpoint' }),
  scopes_supported: Type.Array(Type.String()),
  bearer_methods_supported: Type.Array(Type.String(), { description: '`header` only: a token is never read from the query or the body' }),
  dpop_signing_alg_values_supported: Type.Optional(Type.Array(Type.String(), { description: 'RFC 9449: present when DPoP is on' }))
}, { $id: 'ProtectedResourceMetadata', description: 'RFC 9728 §2' })

export const SHARED_SCHEMAS = [
  OAuthErrorSchema, ProblemSchema, TokenRequestSchema, TokenResponseSchema, RefreshRequestSchema,
  RevokeRequestSchema, IntrospectionRequestSchema, QuotaUsageSchema, IntrospectionResponseSchema,
  JwksSchema, HealthSchema, MetadataSchema, ProtectedResourceMetadataSchema
]

export function addSharedSchemas (app: FastifyInstance): void {
  for (const schema of SHARED_SCHEMAS) app.addSchema(schema)
}

export const ref = (id: string): TSchema => Type.Ref(id)

const header = (description: string): TSchema => Type.String({ description })

/** Response headers documented once, named as the server sends them. */
export const headers = {
  wwwAuthenticateBasic: { 'WWW-Authenticate': header('RFC 6749 §5.2: `Basic realm="tollgate"` when client authentication failed') },
  wwwAuthenticateBearer: { 'WWW-Authenticate': header('RFC 6750 §3 challenge: `Bearer realm="tollgate"`, with `error` and `error_description` (and `scope` for insufficient_scope) when a token was presented; on a 401, `resource_metadata` names the RFC 9728 metadata URL of the tool called (or of the gateway)') },
  retryAfter: { 'Retry-After': header('Seconds to wait before retrying') },
  noStore: { 'Cache-Control': header('`no-store`: the answer carries or describes a credential') },
  quota: {
    'RateLimit-Policy': header('draft-ietf-httpapi-ratelimit-headers: `"quota";q=<limit>;w=<window seconds>`, when the token has a quota'),
    RateLimit: header('draft-ietf-httpapi-ratelimit-headers: `"quota";r=<remaining>;t=<seconds to reset>`, when the token has a quota')
  },
  charged: { 'Tollgate-Charged': header('CONTRACT §10: what the call was charged (an integer), when a tool with `settle: true` reported its cost in a `Tollgate-Cost` header') }
}

/**
 * An OpenAPI response object (description, media type, headers) that Fastify also accepts as a
 * response schema: it serializes by the reply's media type, so problem+json answers are
 * documented under the media type they are actually sent with.
 */
export function response (description: string, schema: TSchema, options: { media?: string, headers?: Record<string, TSchema> } = {}): Record<string, unknown> {
  return {
    description,
    content: { [options.media ?? 'application/json']: { schema } },
    ...(options.headers !== undefined ? { headers: options.headers } : {})
  }
}

const oauthError = (description: string, extra?: Record<string, TSchema>): Record<string, unknown> =>
  response(description, ref('OAuthError'), extra !== undefined ? { headers: extra } : {})

/** Response entries for the errors an OAuth endpoint can answer (RFC 6749 §5.2 JSON). */
export const oauthErrors = {
  400: oauthError('invalid_request, invalid_grant, invalid_scope, invalid_target, unauthorized_client or unsupported_grant_type'),
  401: oauthError('invalid_client: client authentication failed', headers.wwwAuthenticateBasic),
  413: oauthError('payload_too_large: the body is too large'),
  415: oauthError('unsupported_media_type: the body is neither a form nor JSON'),
  429: oauthError('rate_limited: too many requests from this address, or too many failed client authentications for this client id or address', headers.retryAfter),
  503: oauthError('temporarily_unavailable: the state store is unavailable, or too many client authentications are in progress (then with Retry-After)', headers.retryAfter)
}

/** An RFC 9457 problem+json response entry. */
export const problem = (description: string, extra?: Record<string, TSchema>): Record<string, unknown> =>
  response(description, ref('Problem'), { media: 'application/problem+json', ...(extra !== undefined ? { headers: extra } : {}) })
