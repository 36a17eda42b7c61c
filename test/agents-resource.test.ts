// CONTRACT §12: server.publicUrl, RFC 9728 protected resource metadata (the gateway's and each
// tool's, named in every 401 challenge of /call and GET /validate), and RFC 8707 `resource` at
// POST /token for client_credentials, refresh_token and token exchange.
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { startApp, startUpstream } from './call-helper.js'
import { basic, client, FORM, testConfig, type TestContext } from './helper.js'
import { decodeJwt } from 'jose'

const PUBLIC = 'https://gw.example'
const TOOLS = [
  { name: 'chat' },
  { name: 'search', scopes: ['tools:read'] },
  { name: 'other' },
  // A second tool with chat's audience: resource URIs map to audiences, which may be shared.
  { name: 'chat2', audience: 'tool:chat', path: '/chat' }
]
const CLIENTS = [
  client('agent', { audiences: ['tool:chat', 'tool:search'], refresh: true }),
  client('broker', { audiences: ['tool:chat', 'tool:search'], exchange: true })
]

async function gateway (t: TestContext, overrides: Record<string, unknown> = {}): Promise<{ app: FastifyInstance, base: string }> {
  const up = await startUpstream(t)
  return await startApp(t, up, TOOLS, { server: { publicUrl: PUBLIC }, clients: CLIENTS, ...overrides })
}

/** POST /token with a form built from pairs, so a field can repeat. */
async function token (app: FastifyInstance, pairs: Array<[string, string]>, id = 'agent'): Promise<{ statusCode: number, json: () => any }> {
  return await app.inject({ method: 'POST', url: '/token', headers: { ...FORM, authorization: basic(id) }, payload: new URLSearchParams(pairs).toString() })
}

const bearer = (tok: string): Record<string, string> => ({ authorization: `Bearer ${tok}` })

t.test('server.publicUrl: defaults to the issuer, normalised; refused when it is not a plain http(s) URL', async t => {
  t.equal(testConfig(t).server.publicUrl, 'https://tollgate.test')
  t.equal(testConfig(t, { issuer: 'https://tollgate.test/' }).server.publicUrl, 'https://tollgate.test')
  t.equal(testConfig(t, { server: { publicUrl: 'https://GW.example/base/' } }).server.publicUrl, 'https://gw.example/base')
  t.throws(() => testConfig(t, { server: { publicUrl: 'ftp://gw.example' } }), /^config: server\.publicUrl: must be http or https$/)
  t.throws(() => testConfig(t, { server: { publicUrl: 'gw.example' } }), /^config: server\.publicUrl: must be an absolute http\(s\) URL$/)
  t.throws(() => testConfig(t, { server: { publicUrl: 'https://gw.example/?a=1' } }), /^config: server\.publicUrl: must not carry a query or fragment$/)
  t.throws(() => testConfig(t, { server: { publicUrl: 'https://u:p@gw.example' } }), /^config: server\.publicUrl: must not carry credentials$/)
})

t.test('RFC 9728: the gateway\'s and each tool\'s protected resource metadata', async t => {
  const { app } = await gateway(t)
  const gw = await app.inject({ method: 'GET', url: '/.well-known/oauth-protected-resource' })
  t.equal(gw.statusCode, 200)
  t.equal(gw.headers['cache-control'], 'public, max-age=300')
  t.same(gw.json(), {
    resource: PUBLIC,
    authorization_servers: ['https://tollgate.test'],
    scopes_supported: ['tools:call', 'tools:read'],
    bearer_methods_supported: ['header']
  }, 'no dpop_signing_alg_values_supported while DPoP is off')

  const chat = await app.inject({ method: 'GET', url: '/.well-known/oauth-protected-resource/call/chat' })
  t.equal(chat.statusCode, 200)
  t.same(chat.json(), {
    resource: `${PUBLIC}/call/chat`,
    authorization_servers: ['https://tollgate.test'],
    scopes_supported: ['tools:call'],
    bearer_methods_supported: ['header']
  })
  t.equal((await app.inject({ method: 'GET', url: '/.well-known/oauth-protected-resource/call/search' })).json().scopes_supported[0], 'tools:read')

  const unknown = await app.inject({ method: 'GET', url: '/.well-known/oauth-protected-resource/call/nope' })
  t.equal(unknown.statusCode, 404)
  t.match(unknown.headers['content-type'], /^application\/problem\+json/)
  t.match(unknown.json(), { status: 404, code: 'tool_not_found' })

  const as = (await app.inject({ method: 'GET', url: '/.well-known/oauth-authorization-server' })).json()
  t.same(as.protected_resources, [`${PUBLIC}/call/chat`, `${PUBLIC}/call/search`, `${PUBLIC}/call/other`, `${PUBLIC}/call/chat2`], 'RFC 9728 §4 in the RFC 8414 metadata')
})

t.test('RFC 9728 §3.1: a publicUrl with a path puts the well-known segment before it', async t => {
  const { app } = await gateway(t, { server: { publicUrl: `${PUBLIC}/gw/` } })
  const nested = await app.inject({ method: 'GET', url: '/.well-known/oauth-protected-resource/gw/call/chat' })
  t.equal(nested.statusCode, 200)
  t.equal(nested.json().resource, `${PUBLIC}/gw/call/chat`)
  t.equal((await app.inject({ method: 'GET', url: '/.well-known/oauth-protected-resource/gw' })).json().resource, `${PUBLIC}/gw`)
  t.equal((await app.inject({ method: 'GET', url: '/.well-known/oauth-protected-resource/call/chat' })).json().resource, `${PUBLIC}/gw/call/chat`, 'also served without the path')
  const res = await app.inject({ method: 'GET', url: '/call/chat/x' })
  t.equal(res.headers['www-authenticate'], `Bearer realm="tollgate", resource_metadata="${PUBLIC}/.well-known/oauth-protected-resource/gw/call/chat"`)
})

t.test('every 401 from /call and GET /validate names the protected resource metadata', async t => {
  const { app } = await gateway(t)
  const tok = (await token(app, [['grant_type', 'client_credentials']])).json().access_token as string
  const gwUrl = `${PUBLIC}/.well-known/oauth-protected-resource`
  const chatUrl = `${gwUrl}/call/chat`

  const cases: Array<[string, Record<string, unknown>, string, boolean]> = [
    ['GET /validate, no token', { method: 'GET', url: '/validate' }, gwUrl, false],
    ['GET /validate, bad token', { method: 'GET', url: '/validate', headers: bearer('a.b.c') }, gwUrl, true],
    ['GET /validate, wrong audience', { method: 'GET', url: '/validate?audience=tool:other', headers: bearer(tok) }, gwUrl, true],
    ['/call/chat/*, no token', { method: 'GET', url: '/call/chat/x' }, chatUrl, false],
    ['/call/chat/*, bad token', { method: 'POST', url: '/call/chat/x', headers: bearer('a.b.c') }, chatUrl, true],
    ['/call/other/*, wrong audience', { method: 'GET', url: '/call/other/x', headers: bearer(tok) }, `${gwUrl}/call/other`, true],
    ['/call/nope/*: no such tool, the gateway\'s', { method: 'GET', url: '/call/nope/x' }, gwUrl, false],
    ['POST /call, no token: the tool is not read yet', { method: 'POST', url: '/call', payload: { tool: 'chat' } }, gwUrl, false],
    ['POST /call, wrong audience: the tool\'s', { method: 'POST', url: '/call', headers: bearer(tok), payload: { tool: 'other' } }, `${gwUrl}/call/other`, true]
  ]
  for (const [name, request, url, presented] of cases) {
    const res = await app.inject(request as any)
    t.equal(res.statusCode, 401, name)
    const challenge = res.headers['www-authenticate'] as string
    if (presented) t.match(challenge, /^Bearer realm="tollgate", error="invalid_token", error_description="[^"]*", resource_metadata="[^"]+"$/, name)
    else t.equal(challenge, `Bearer realm="tollgate", resource_metadata="${url}"`, name)
    t.ok(challenge.endsWith(`, resource_metadata="${url}"`), `${name}: ${url}`)
  }
  // A 403 keeps its RFC 6750 challenge as it was.
  const narrow = (await token(app, [['grant_type', 'client_credentials'], ['scope', 'tools:read']])).json().access_token as string
  const forbidden = await app.inject({ method: 'GET', url: '/call/chat/x', headers: bearer(narrow) })
  t.equal(forbidden.statusCode, 403)
  t.notMatch(forbidden.headers['www-authenticate'], /resource_metadata/)
})

t.test('RFC 8707: client_credentials with resource', async t => {
  const { app } = await gateway(t)
  const one = await token(app, [['grant_type', 'client_credentials'], ['resource', `${PUBLIC}/call/chat`]])
  t.equal(one.statusCode, 200)
  t.same(decodeJwt(one.json().access_token).aud, 'tool:chat', 'aud is the tool\'s audience')

  const two = await token(app, [['grant_type', 'client_credentials'], ['resource', `${PUBLIC}/call/chat`], ['resource', `${PUBLIC}/call/search`], ['resource', `${PUBLIC}/call/chat2`]])
  t.equal(two.statusCode, 200, 'resource may repeat')
  t.same(decodeJwt(two.json().access_token).aud, ['tool:chat', 'tool:search'], 'shared audiences once')

  const json = await app.inject({ method: 'POST', url: '/token', headers: { authorization: basic('agent') }, payload: { grant_type: 'client_credentials', resource: [`${PUBLIC}/call/search`] } })
  t.equal(json.statusCode, 200, 'JSON: an array')
  t.same(decodeJwt(json.json().access_token).aud, 'tool:search')

  // The token works at the tool it was asked for, and not at another.
  const tok = one.json().access_token as string
  t.equal((await app.inject({ method: 'GET', url: '/call/chat/x', headers: bearer(tok) })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: '/call/search/x', headers: bearer(tok) })).statusCode, 401)

  const refused: Array<[string, string[]]> = [
    ['a tool whose audience the client may not have', [`${PUBLIC}/call/other`]],
    ['an unknown tool', [`${PUBLIC}/call/nope`]],
    ['the gateway itself', [PUBLIC]],
    ['another host', ['https://evil.example/call/chat']],
    ['a trailing slash', [`${PUBLIC}/call/chat/`]],
    ['a fragment', [`${PUBLIC}/call/chat#x`]],
    ['empty', ['']],
    ['a relative reference', ['/call/chat']],
    ['one good, one bad', [`${PUBLIC}/call/chat`, `${PUBLIC}/call/other`]],
    ['control characters', [`${PUBLIC}/call/chat\r\nx: y`]]
  ]
  for (const [name, resources] of refused) {
    const res = await token(app, [['grant_type', 'client_credentials'], ...resources.map(r => ['resource', r] as [string, string])])
    t.equal(res.statusCode, 400, name)
    t.equal(res.json().error, 'invalid_target', name)
    t.notMatch(res.json().error_description, /[\r\n"\\]/, `${name}: a clean description`)
  }
  const bad = await app.inject({ method: 'POST', url: '/token', headers: { authorization: basic('agent') }, payload: { grant_type: 'client_credentials', resource: [1] } })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().error, 'invalid_request', 'a non-string resource is malformed')
  const repeatedScope = await token(app, [['grant_type', 'client_credentials'], ['scope', 'tools:call'], ['scope', 'tools:read']])
  t.equal(repeatedScope.json().error, 'invalid_request', 'other parameters still may not repeat')
})

t.test('RFC 8707: refresh_token with resource narrows, never widens', async t => {
  const { app } = await gateway(t)
  const first = (await token(app, [['grant_type', 'client_credentials'], ['resource', `${PUBLIC}/call/chat`], ['resource', `${PUBLIC}/call/search`]])).json()
  const narrowed = await token(app, [['grant_type', 'refresh_token'], ['refresh_token', first.refresh_token], ['resource', `${PUBLIC}/call/search`]])
  t.equal(narrowed.statusCode, 200)
  t.same(decodeJwt(narrowed.json().access_token).aud, 'tool:search')

  const onlyChat = (await token(app, [['grant_type', 'client_credentials'], ['resource', `${PUBLIC}/call/chat`]])).json()
  const wider = await token(app, [['grant_type', 'refresh_token'], ['refresh_token', onlyChat.refresh_token], ['resource', `${PUBLIC}/call/search`]])
  t.equal(wider.statusCode, 400)
  t.equal(wider.json().error, 'invalid_target', 'not beyond the first grant')
  const unknown = await token(app, [['grant_type', 'refresh_token'], ['refresh_token', onlyChat.refresh_token], ['resource', `${PUBLIC}/call/nope`]])
  t.equal(unknown.json().error, 'invalid_target')
  const still = await token(app, [['grant_type', 'refresh_token'], ['refresh_token', onlyChat.refresh_token]])
  t.equal(still.statusCode, 200, 'a refused request did not consume the refresh token')

  const viaRefresh = await app.inject({ method: 'POST', url: '/refresh', headers: { ...FORM, authorization: basic('agent') }, payload: new URLSearchParams([['refresh_token', narrowed.json().refresh_token], ['resource', `${PUBLIC}/call/search`]]).toString() })
  t.equal(viaRefresh.statusCode, 200, 'POST /refresh takes it too')
  t.same(decodeJwt(viaRefresh.json().access_token).aud, 'tool:search')
})

t.test('RFC 8707: token exchange with resource', async t => {
  const { app } = await gateway(t)
  const subject = (await token(app, [['grant_type', 'client_credentials']])).json().access_token as string
  const exchange = (resources: string[], id = 'broker'): Promise<{ statusCode: number, json: () => any }> => token(app, [
    ['grant_type', 'urn:ietf:params:oauth:grant-type:token-exchange'],
    ['subject_token', subject],
    ['subject_token_type', 'urn:ietf:params:oauth:token-type:access_token'],
    ...resources.map(r => ['resource', r] as [string, string])
  ], id)
  const ok = await exchange([`${PUBLIC}/call/search`])
  t.equal(ok.statusCode, 200)
  const claims = decodeJwt(ok.json().access_token)
  t.same(claims.aud, 'tool:search')
  t.same(claims.act, { sub: 'broker' })
  const other = await exchange([`${PUBLIC}/call/other`])
  t.equal(other.statusCode, 400)
  t.equal(other.json().error, 'invalid_target')
  t.equal((await exchange([`${PUBLIC}/call/other`], 'agent')).json().error, 'unauthorized_client', 'a client without exchange is told so first')
})
