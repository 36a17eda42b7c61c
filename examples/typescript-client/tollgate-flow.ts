// A typed Tollgate client in a few lines: types generated from openapi/openapi.json by
// openapi-typescript (into ./tollgate-api.d.ts, next to this file), requests sent with
// openapi-fetch. It walks the whole token life cycle once. test/generated-client.test.ts
// regenerates the types, type-checks this file with `tsc --strict` (so a schema regression is a
// compile error) and runs it against a live server and a real tool.
import createClient, { defaultPathSerializer, type Client } from 'openapi-fetch'
import type { components, paths } from './tollgate-api.js'

export type TokenResponse = components['schemas']['TokenResponse']
export type Problem = components['schemas']['Problem']
export type OAuthError = components['schemas']['OAuthError']

export interface FlowOptions {
  baseUrl: string
  clientId: string
  clientSecret: string
  /** A configured tool the client's token may call. */
  tool: string
  audience: string
  /** A client configured with audience and scope tollgate:admin: the flow then drives the admin API too. */
  adminClientId?: string
  adminClientSecret?: string
}

/**
 * The OAuth endpoints take the RFC 6749 form; openapi-fetch sends JSON unless told otherwise. An
 * array (RFC 8707 `resource`) becomes repeated fields.
 */
export function formBody (body: Record<string, string | string[] | undefined>): string {
  const form = new URLSearchParams()
  for (const [name, value] of Object.entries(body)) {
    if (Array.isArray(value)) for (const v of value) form.append(name, v)
    else if (value !== undefined) form.set(name, value)
  }
  return form.toString()
}

/**
 * `{path}` of /call/{tool}/{path} may span several segments: encode each one and keep the `/`
 * (an encoded `%2F` is refused as bad_path), everything else as openapi-fetch does by default.
 */
export function pathSerializer (pathname: string, params: Record<string, unknown>): string {
  const { path, ...rest } = params
  const expanded = typeof path === 'string' ? pathname.replace('{path}', path.split('/').map(encodeURIComponent).join('/')) : pathname
  return defaultPathSerializer(expanded, rest)
}

export function tollgateClient (baseUrl: string): Client<paths> {
  return createClient<paths>({ baseUrl, pathSerializer })
}

/** Runs token → introspect → forward auth → call → quota → refresh → revoke → jwks, plus typed errors. */
export async function runFlow (options: FlowOptions): Promise<Record<string, unknown>> {
  const tollgate = tollgateClient(options.baseUrl)
  const basic = 'Basic ' + Buffer.from(`${encodeURIComponent(options.clientId)}:${encodeURIComponent(options.clientSecret)}`).toString('base64')
  const oauth = { authorization: basic, 'content-type': 'application/x-www-form-urlencoded' }
  const seen: Record<string, unknown> = {}

  // 1. client_credentials (RFC 6749 §4.4): HTTP Basic and a form body.
  const issued = await tollgate.POST('/token', {
    headers: oauth,
    body: { grant_type: 'client_credentials', scope: 'tools:call', audience: options.audience },
    bodySerializer: formBody
  })
  if (issued.data === undefined) throw new Error(`token refused: ${issued.error.error}`)
  const token: TokenResponse = issued.data
  seen.token = { status: issued.response.status, token_type: token.token_type, scope: token.scope, expires_in: token.expires_in, hasRefresh: token.refresh_token !== undefined, cacheControl: issued.response.headers.get('cache-control') }
  const bearer = { authorization: `Bearer ${token.access_token}` }

  // A typed OAuth error: a scope the client may not have is 400 invalid_scope (RFC 6749 §5.2).
  const refused = await tollgate.POST('/token', {
    headers: oauth,
    body: { grant_type: 'client_credentials', scope: 'admin' },
    bodySerializer: formBody
  })
  const oauthError: OAuthError | undefined = refused.error
  seen.invalidScope = { status: refused.response.status, error: oauthError?.error, data: refused.data }

  // 2. Introspection (RFC 7662), client-authenticated.
  const introspected = await tollgate.POST('/validate', { headers: oauth, body: { token: token.access_token, scope: 'tools:call' }, bodySerializer: formBody })
  const claims = introspected.data
  seen.introspect = { status: introspected.response.status, active: claims?.active, sub: claims?.sub, client_id: claims?.client_id, aud: claims?.aud, quotaLimit: claims?.quota?.limit, jti: claims?.jti }

  // 3. Forward auth, as nginx auth_request would ask.
  const allowed = await tollgate.GET('/validate', { headers: bearer, params: { query: { audience: options.audience, scope: 'tools:call' } } })
  seen.forwardAuth = { status: allowed.response.status, sub: allowed.data?.sub, aud: allowed.data?.aud, subjectHeader: allowed.response.headers.get('x-auth-subject') }

  // A typed problem+json error (RFC 9457): no token is 401 with a Bearer challenge (RFC 6750 §3).
  const anonymous = await tollgate.GET('/validate', {})
  const problem: Problem | undefined = anonymous.error
  seen.forwardAuthAnonymous = { status: anonymous.response.status, code: problem?.code, problemStatus: problem?.status, contentType: anonymous.response.headers.get('content-type'), challenge: anonymous.response.headers.get('www-authenticate') }

  // 4. Call the tool: the body goes upstream unchanged; the tool's answer comes back.
  const called = await tollgate.POST('/call', { headers: bearer, body: { tool: options.tool, arguments: { text: 'hello' } } })
  seen.call = { status: called.response.status, data: called.data, rateLimit: called.response.headers.get('ratelimit'), policy: called.response.headers.get('ratelimit-policy') }

  // The REST-style pass-through, with a two-segment path.
  const passed = await tollgate.GET('/call/{tool}/{path}', { headers: bearer, params: { path: { tool: options.tool, path: 'items/a b' } } })
  seen.callPath = { status: passed.response.status, data: passed.data }

  // A typed problem for a tool that does not exist.
  const unknownTool = await tollgate.POST('/call', { headers: bearer, body: { tool: 'no-such-tool' } })
  seen.callUnknown = { status: unknownTool.response.status, code: unknownTool.error?.code }

  // 5. Quota: two calls charged so far (the unknown tool was refused before metering).
  const quota = await tollgate.GET('/quota', { headers: bearer })
  seen.quota = { status: quota.response.status, ...quota.data }

  // 6. Refresh: rotation (RFC 9700 §4.14) gives a new pair.
  const rotated = await tollgate.POST('/refresh', { headers: oauth, body: { refresh_token: token.refresh_token ?? '' }, bodySerializer: formBody })
  if (rotated.data === undefined) throw new Error(`refresh refused: ${rotated.error.error}`)
  const fresh: TokenResponse = rotated.data
  seen.refresh = { status: rotated.response.status, rotated: fresh.refresh_token !== undefined && fresh.refresh_token !== token.refresh_token, scope: fresh.scope }

  // 7. Revoke (RFC 7009) the new refresh token: its family and every access token issued from it
  // die; the rotated-away refresh token stays dead (a typed invalid_grant).
  const revoked = await tollgate.POST('/revoke', { headers: oauth, body: { token: fresh.refresh_token ?? '', token_type_hint: 'refresh_token' }, bodySerializer: formBody })
  const after = await tollgate.POST('/validate', { headers: oauth, body: { token: fresh.access_token }, bodySerializer: formBody })
  const denied = await tollgate.GET('/validate', { headers: { authorization: `Bearer ${fresh.access_token}` } })
  const replayed = await tollgate.POST('/refresh', { headers: oauth, body: { refresh_token: token.refresh_token ?? '' }, bodySerializer: formBody })
  seen.revoke = { status: revoked.response.status, activeAfter: after.data?.active, forwardAuthAfter: denied.response.status, code: denied.error?.code, replayStatus: replayed.response.status, replayError: replayed.error?.error }

  // 8. The JWKS a resource server verifies tokens with (RFC 7517).
  const jwks = await tollgate.GET('/jwks')
  const header = JSON.parse(Buffer.from(token.access_token.split('.')[0] ?? '', 'base64url').toString('utf8')) as { kid: string, alg: string }
  const key = jwks.data?.keys.find(k => k.kid === header.kid)
  seen.jwks = { status: jwks.response.status, kid: key?.kid, alg: key?.alg, tokenAlg: header.alg, use: key?.use }

  // 9. The admin API (its own security scheme, adminAuth): a token with audience and scope
  // tollgate:admin creates a client (its secret shown once) and adds credits to a subject.
  if (options.adminClientId !== undefined && options.adminClientSecret !== undefined) {
    const adminBasic = 'Basic ' + Buffer.from(`${encodeURIComponent(options.adminClientId)}:${encodeURIComponent(options.adminClientSecret)}`).toString('base64')
    const adminIssued = await tollgate.POST('/token', {
      headers: { authorization: adminBasic, 'content-type': 'application/x-www-form-urlencoded' },
      body: { grant_type: 'client_credentials', scope: 'tollgate:admin', audience: 'tollgate:admin' },
      bodySerializer: formBody
    })
    if (adminIssued.data === undefined) throw new Error(`admin token refused: ${adminIssued.error.error}`)
    const admin = { authorization: `Bearer ${adminIssued.data.access_token}` }
    const created = await tollgate.POST('/admin/clients', { headers: admin, body: { id: 'generated-client', scopes: ['tools:call'], audiences: [options.audience] } })
    const secret: string | undefined = created.data?.client_secret
    seen.adminCreate = { status: created.response.status, id: created.data?.id, source: created.data?.source, secretLength: secret?.length }
    const credited = await tollgate.POST('/admin/usage/{sub}/credits', { headers: admin, params: { path: { sub: options.clientId } }, body: { add: 5 } })
    seen.adminCredits = { status: credited.response.status, ...credited.data }
    const readOnly = await tollgate.PATCH('/admin/clients/{id}', { headers: admin, params: { path: { id: options.clientId } }, body: { disabled: true } })
    seen.adminReadOnly = { status: readOnly.response.status, code: readOnly.error?.code }
    const ledger = await tollgate.GET('/admin/ledger', { headers: admin, params: { query: { sub: options.clientId } } })
    seen.adminLedger = { status: ledger.response.status, kinds: ledger.data?.entries.map(e => e.kind) }
  }

  return seen
}
