// CONTRACT §12 DPoP (RFC 9449), driven by independent client code: oauth4webapi (token requests and
// protected-resource requests with its DPoP handle) and the `dpop` package (hand-made proofs for
// each refusal). Real HTTP to a gateway on a free port; each refusal has its positive control.
import { createHash } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { calculateThumbprint, generateKeyPair, generateProof, type KeyPair } from 'dpop'
import * as oauth from 'oauth4webapi'
import t from 'tap'
import { decodeJwt, exportJWK, SignJWT } from 'jose'
import { startApp, startUpstream } from './call-helper.js'
import { CLIENT_SECRET, basic, client, FORM, build, testConfig, type TestContext } from './helper.js'
import { deletePrefix, testRedisUrl, uniquePrefix } from './support/redis.js'

const ISSUER = 'https://tollgate.test'
const CLIENTS = [
  client('bound', { audiences: ['tool:chat'], dpop: 'optional', refresh: true }),
  client('strict', { audiences: ['tool:chat'], dpop: 'required' }),
  client('plain', { audiences: ['tool:chat'] })
]

type Fetch = (url: string, init: any) => Promise<Response>
interface Gateway { app: FastifyInstance, base: string, fetch: Fetch }

/** A gateway on a free port; its fetch sends requests for https://tollgate.test/... there. */
async function gateway (t: TestContext, overrides: Record<string, unknown> = {}): Promise<Gateway> {
  const up = await startUpstream(t)
  const { app, base } = await startApp(t, up, [{ name: 'chat' }], { clients: CLIENTS, ...overrides })
  const local: Fetch = async (input, init) => {
    const url = new URL(input)
    return await fetch(base + url.pathname + url.search, init)
  }
  return { app, base, fetch: local }
}

const as: oauth.AuthorizationServer = { issuer: ISSUER, token_endpoint: `${ISSUER}/token` }

/** A token from oauth4webapi's client_credentials request, with a DPoP proof when a key is given. */
async function clientCredentials (gw: Gateway, id: string, key?: CryptoKeyPair): Promise<oauth.TokenEndpointResponse> {
  const c: oauth.Client = { client_id: id }
  const options: oauth.ClientCredentialsGrantRequestOptions = { [oauth.customFetch]: gw.fetch }
  if (key !== undefined) options.DPoP = oauth.DPoP(c, key)
  const res = await oauth.clientCredentialsGrantRequest(as, c, oauth.ClientSecretBasic(CLIENT_SECRET), new URLSearchParams(), options)
  return await oauth.processClientCredentialsResponse(as, c, res)
}

async function callTool (gw: Gateway, path: string, headers: Record<string, string>): Promise<Response> {
  return await fetch(gw.base + path, { headers })
}

t.test('RFC 8414 and RFC 9728 metadata list the DPoP algorithms', async t => {
  const gw = await gateway(t)
  const as = await (await fetch(`${gw.base}/.well-known/oauth-authorization-server`)).json() as Record<string, unknown>
  t.same(as.dpop_signing_alg_values_supported, ['ES256', 'EdDSA', 'Ed25519'])
  const pr = await (await fetch(`${gw.base}/.well-known/oauth-protected-resource/call/chat`)).json() as Record<string, unknown>
  t.same(pr.dpop_signing_alg_values_supported, ['ES256', 'EdDSA', 'Ed25519'], 'DPoP is on: some client may use it')
})

t.test('a proof at /token binds the token; oauth4webapi then calls the tool with it', async t => {
  const gw = await gateway(t)
  const key = await generateKeyPair('ES256')
  const tokens = await clientCredentials(gw, 'bound', key)
  t.equal(tokens.token_type, 'dpop', 'token_type DPoP (oauth4webapi lower-cases it)')
  const claims = decodeJwt(tokens.access_token)
  t.same(claims.cnf, { jkt: await calculateThumbprint(key.publicKey) }, 'cnf.jkt is the proof key\'s thumbprint')

  const c: oauth.Client = { client_id: 'bound' }
  const res = await oauth.protectedResourceRequest(tokens.access_token, 'GET', new URL(`${ISSUER}/call/chat/items?x=1`), new Headers(), null, { DPoP: oauth.DPoP(c, key), [oauth.customFetch]: gw.fetch })
  t.equal(res.status, 200, 'a bound token with its proof is accepted')
  const seen = await res.json() as { url: string, headers: Record<string, string> }
  t.equal(seen.url, '/chat/items?x=1')
  t.notOk('dpop' in seen.headers, 'the proof is not passed upstream')
  t.match(seen.headers.authorization, /^Bearer /, 'the tool gets its own downstream token')

  // Without a proof the same client gets an unbound Bearer token (dpop: optional).
  const unbound = await clientCredentials(gw, 'bound')
  t.equal(unbound.token_type, 'bearer')
  t.equal(decodeJwt(unbound.access_token).cnf, undefined)

  // Introspection shows the binding (RFC 9449 §6.2).
  const intro = await gw.app.inject({ method: 'POST', url: '/validate', headers: { ...FORM, authorization: basic('bound') }, payload: new URLSearchParams({ token: tokens.access_token }).toString() })
  t.same(intro.json().cnf, claims.cnf)
})

t.test('dpop: required gets no unbound token; a client without dpop may not send a proof', async t => {
  const gw = await gateway(t)
  const key = await generateKeyPair('ES256')
  const none = await gw.app.inject({ method: 'POST', url: '/token', headers: { ...FORM, authorization: basic('strict') }, payload: 'grant_type=client_credentials' })
  t.equal(none.statusCode, 400)
  t.equal(none.json().error, 'invalid_dpop_proof')
  const ok = await clientCredentials(gw, 'strict', key)
  t.equal(ok.token_type, 'dpop', 'positive control: with a proof')

  const proof = await generateProof(key, `${ISSUER}/token`, 'POST')
  const plain = await gw.app.inject({ method: 'POST', url: '/token', headers: { ...FORM, authorization: basic('plain'), dpop: proof }, payload: 'grant_type=client_credentials' })
  t.equal(plain.statusCode, 400)
  t.equal(plain.json().error, 'invalid_dpop_proof')

  const wrongHtu = await gw.app.inject({ method: 'POST', url: '/token', headers: { ...FORM, authorization: basic('strict'), dpop: await generateProof(key, `${ISSUER}/other`, 'POST') }, payload: 'grant_type=client_credentials' })
  t.equal(wrongHtu.json().error, 'invalid_dpop_proof', 'a proof for another URI at /token')
})

t.test('a bound token cannot be exchanged into an unbound one', async t => {
  const gw = await gateway(t, { clients: [...CLIENTS, client('broker', { audiences: ['tool:chat'], exchange: true })] })
  const exchange = async (subject: string): Promise<{ statusCode: number, json: () => any }> => await gw.app.inject({
    method: 'POST',
    url: '/token',
    headers: { ...FORM, authorization: basic('broker') },
    payload: new URLSearchParams({ grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange', subject_token: subject, subject_token_type: 'urn:ietf:params:oauth:token-type:access_token' }).toString()
  })
  t.equal((await exchange((await clientCredentials(gw, 'bound')).access_token)).statusCode, 200, 'positive control: an unbound subject token')
  const refused = await exchange((await clientCredentials(gw, 'bound', await generateKeyPair('ES256'))).access_token)
  t.equal(refused.statusCode, 400)
  t.equal(refused.json().error, 'invalid_request')
  t.match(refused.json().error_description, /DPoP-bound/)
})

t.test('refresh and /refresh bind the new access token to the proof\'s key', async t => {
  const gw = await gateway(t)
  const key = await generateKeyPair('ES256')
  const first = await clientCredentials(gw, 'bound', key)
  const refreshed = await gw.app.inject({ method: 'POST', url: '/refresh', headers: { ...FORM, authorization: basic('bound'), dpop: await generateProof(key, `${ISSUER}/refresh`, 'POST') }, payload: new URLSearchParams({ refresh_token: first.refresh_token as string }).toString() })
  t.equal(refreshed.statusCode, 200)
  t.equal(refreshed.json().token_type, 'DPoP')
  t.same(decodeJwt(refreshed.json().access_token).cnf, decodeJwt(first.access_token).cnf)
})

/** A bound token and a fresh proof maker for it. */
async function bound (gw: Gateway): Promise<{ token: string, key: KeyPair, proof: (htu: string, htm: string, withAth?: boolean) => Promise<string> }> {
  const key = await generateKeyPair('ES256')
  const token = (await clientCredentials(gw, 'bound', key)).access_token
  return { token, key, proof: async (htu, htm, withAth = true) => await generateProof(key, htu, htm, undefined, withAth ? token : undefined) }
}

t.test('each refusal at /call answers 401 with a DPoP challenge; each has a positive control', async t => {
  const gw = await gateway(t)
  const b = await bound(gw)
  const url = `${ISSUER}/call/chat/x`
  const dpopAuth = (proof: string): Record<string, string> => ({ authorization: `DPoP ${b.token}`, dpop: proof })
  const refused = async (res: Response, name: string): Promise<void> => {
    t.equal(res.status, 401, name)
    t.match(res.headers.get('www-authenticate'), /^DPoP error="invalid_dpop_proof", error_description="[^"]+", algs="ES256 EdDSA Ed25519", resource_metadata="https:\/\/tollgate\.test\/\.well-known\/oauth-protected-resource\/call\/chat"$/, `${name}: challenge`)
    t.equal((await res.json() as { code: string }).code, 'invalid_dpop_proof', name)
  }

  // Replay: the same proof twice.
  const once = await b.proof(url, 'GET')
  t.equal((await callTool(gw, '/call/chat/x', dpopAuth(once))).status, 200, 'positive control: first use')
  await refused(await callTool(gw, '/call/chat/x', dpopAuth(once)), 'replayed proof')

  // Wrong htu.
  t.equal((await callTool(gw, '/call/chat/x', dpopAuth(await b.proof(url, 'GET')))).status, 200, 'positive control: right htu')
  await refused(await callTool(gw, '/call/chat/x', dpopAuth(await b.proof(`${ISSUER}/call/chat/y`, 'GET'))), 'wrong htu')
  await refused(await callTool(gw, '/call/chat/x', dpopAuth(await b.proof(`https://evil.test/call/chat/x`, 'GET'))), 'another origin')

  // Wrong htm.
  const post = await fetch(gw.base + '/call/chat/x', { method: 'POST', headers: dpopAuth(await b.proof(url, 'POST')), body: 'a' })
  t.equal(post.status, 200, 'positive control: right htm')
  await refused(await fetch(gw.base + '/call/chat/x', { method: 'POST', headers: dpopAuth(await b.proof(url, 'GET')), body: 'a' }), 'wrong htm')

  // Missing ath.
  await refused(await callTool(gw, '/call/chat/x', dpopAuth(await b.proof(url, 'GET', false))), 'missing ath')
  // Another key than the token's.
  const otherKey = await generateKeyPair('ES256')
  await refused(await callTool(gw, '/call/chat/x', dpopAuth(await generateProof(otherKey, url, 'GET', undefined, b.token))), 'another key')
  // No proof at all.
  await refused(await callTool(gw, '/call/chat/x', { authorization: `DPoP ${b.token}` }), 'no proof')
  // iat outside the leeway (30 s) either way; the `dpop` package always stamps now, so jose signs these.
  const stamped = async (iat: number): Promise<string> => await new SignJWT({ htm: 'GET', htu: url, jti: crypto.randomUUID(), ath: createHash('sha256').update(b.token).digest('base64url') })
    .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk: await exportJWK(b.key.publicKey) }).setIssuedAt(iat).sign(b.key.privateKey)
  const now = Math.floor(Date.now() / 1000)
  t.equal((await callTool(gw, '/call/chat/x', dpopAuth(await stamped(now - 5)))).status, 200, 'positive control: iat within the leeway')
  await refused(await callTool(gw, '/call/chat/x', dpopAuth(await stamped(now - 120))), 'iat too old')
  await refused(await callTool(gw, '/call/chat/x', dpopAuth(await stamped(now + 120))), 'iat in the future')

  // A bound token as Bearer: invalid_token.
  const asBearer = await callTool(gw, '/call/chat/x', { authorization: `Bearer ${b.token}` })
  t.equal(asBearer.status, 401, 'bound token as Bearer')
  t.match(asBearer.headers.get('www-authenticate'), /^Bearer realm="tollgate", error="invalid_token", error_description="[^"]*DPoP[^"]*", resource_metadata="[^"]+"$/)
  t.equal((await asBearer.json() as { code: string }).code, 'invalid_token')
  // Positive control: an unbound token as Bearer still works.
  const unbound = (await clientCredentials(gw, 'bound')).access_token
  t.equal((await callTool(gw, '/call/chat/x', { authorization: `Bearer ${unbound}` })).status, 200, 'positive control: unbound Bearer')
  const unboundAsDpop = await callTool(gw, '/call/chat/x', { authorization: `DPoP ${unbound}`, dpop: await generateProof(b.key, url, 'GET', undefined, unbound) })
  t.equal(unboundAsDpop.status, 401, 'an unbound token under the DPoP scheme')

  // An HS256 "proof" and alg none are refused.
  const [h, p] = once.split('.') as [string, string]
  const none = `${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(h, 'base64url').toString()), alg: 'none' })).toString('base64url')}.${p}.`
  await refused(await callTool(gw, '/call/chat/x', dpopAuth(none)), 'alg none')
  const claimsFor = { htm: 'GET', htu: url, ath: createHash('sha256').update(b.token).digest('base64url') }
  const leaky = await generateKeyPair('ES256', { extractable: true })
  const withPrivate = await new SignJWT({ ...claimsFor, jti: crypto.randomUUID() })
    .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk: await exportJWK(leaky.privateKey) }).setIssuedAt().sign(leaky.privateKey)
  await refused(await callTool(gw, '/call/chat/x', dpopAuth(withPrivate)), 'a jwk header with the private key')
  const hmac = await new SignJWT({ ...claimsFor, jti: crypto.randomUUID() })
    .setProtectedHeader({ alg: 'HS256', typ: 'dpop+jwt', jwk: await exportJWK(b.key.publicKey) }).setIssuedAt().sign(new TextEncoder().encode('0123456789abcdef0123456789abcdef'))
  await refused(await callTool(gw, '/call/chat/x', dpopAuth(hmac)), 'HS256')
  const wrongTyp = await new SignJWT({ ...claimsFor, jti: crypto.randomUUID() })
    .setProtectedHeader({ alg: 'ES256', typ: 'JWT', jwk: await exportJWK(b.key.publicKey) }).setIssuedAt().sign(b.key.privateKey)
  await refused(await callTool(gw, '/call/chat/x', dpopAuth(wrongTyp)), 'typ other than dpop+jwt')
  const eddsa = await generateKeyPair('Ed25519')
  const edToken = (await clientCredentials(gw, 'bound', eddsa)).access_token
  t.equal((await callTool(gw, '/call/chat/x', { authorization: `DPoP ${edToken}`, dpop: await generateProof(eddsa, url, 'GET', undefined, edToken) })).status, 200, 'positive control: an Ed25519 key')
})

t.test('GET /quota takes a bound token with its proof, and refuses it as Bearer', async t => {
  const gw = await gateway(t)
  const b = await bound(gw)
  t.equal((await callTool(gw, '/quota', { authorization: `DPoP ${b.token}`, dpop: await b.proof(`${ISSUER}/quota`, 'GET') })).status, 200, 'positive control')
  t.equal((await callTool(gw, '/quota', { authorization: `DPoP ${b.token}`, dpop: await b.proof(`${ISSUER}/validate`, 'GET') })).status, 401, 'a proof for another URI')
  t.equal((await callTool(gw, '/quota', { authorization: `Bearer ${b.token}` })).status, 401, 'as Bearer')
})

t.test('GET /validate behind a trusted proxy checks htm/htu against X-Forwarded-*', async t => {
  const app = await build(t, testConfig(t, { clients: CLIENTS, server: { trustProxy: ['127.0.0.1'] }, forwardAuth: { defaultAudience: 'tool:chat' } }))
  const gw: Gateway = { app, base: '', fetch: async (input, init) => {
    const url = new URL(input)
    const res = await app.inject({ method: (init?.method ?? 'GET') as 'POST', url: url.pathname + url.search, headers: Object.fromEntries(new Headers(init?.headers).entries()), ...(init?.body != null ? { payload: String(init.body) } : {}) })
    return new Response(res.body, { status: res.statusCode, headers: res.headers as Record<string, string> })
  } }
  const b = await bound(gw)
  const forwarded = { 'x-forwarded-method': 'POST', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'app.example', 'x-forwarded-uri': '/orders/7?expand=1', 'x-forwarded-for': '203.0.113.9' }
  const validate = async (proof: string, headers: Record<string, string> = forwarded, remoteAddress = '127.0.0.1'): Promise<{ statusCode: number, headers: Record<string, unknown> }> =>
    await app.inject({ method: 'GET', url: '/validate', remoteAddress, headers: { ...headers, authorization: `DPoP ${b.token}`, dpop: proof } })

  t.equal((await validate(await b.proof('https://app.example/orders/7', 'POST'))).statusCode, 200, 'the original request\'s method and URI')
  const wrongHtm = await validate(await b.proof('https://app.example/orders/7', 'GET'))
  t.equal(wrongHtm.statusCode, 401, 'htm is X-Forwarded-Method')
  t.match(wrongHtm.headers['www-authenticate'], /^DPoP error="invalid_dpop_proof"/)
  t.equal((await validate(await b.proof(`${ISSUER}/validate`, 'GET'))).statusCode, 401, 'htu is the forwarded URI, not /validate')
  t.equal((await validate(await b.proof('https://app.example/orders/8', 'POST'))).statusCode, 401, 'another path')

  // From an untrusted peer the forwarding headers are ignored: the proof names /validate itself.
  t.equal((await validate(await b.proof('https://app.example/orders/7', 'POST'), forwarded, '10.9.9.9')).statusCode, 401, 'untrusted peer: forwarded values not used')
  t.equal((await validate(await b.proof(`${ISSUER}/validate`, 'GET'), forwarded, '10.9.9.9')).statusCode, 200, 'untrusted peer: the gateway\'s own URI')
  t.equal((await app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${b.token}` } })).statusCode, 401, 'bound token as Bearer at /validate')
})

const redisUrl = await testRedisUrl(t)

t.test('a proof used at one replica is refused at another (Redis store)', { skip: redisUrl === undefined ? 'no Redis' : false }, async t => {
  const url = redisUrl as string
  const keyPrefix = uniquePrefix('dpop')
  t.teardown(async () => { await deletePrefix(url, keyPrefix) })
  const store = { redis: url, keyPrefix }
  const a = await gateway(t, { store })
  const bApp = await gateway(t, { store })
  const b = await bound(a)
  const proof = await b.proof(`${ISSUER}/call/chat/x`, 'GET')
  t.equal((await callTool(a, '/call/chat/x', { authorization: `DPoP ${b.token}`, dpop: proof })).status, 200, 'replica A accepts it once')
  const replay = await callTool(bApp, '/call/chat/x', { authorization: `DPoP ${b.token}`, dpop: proof })
  t.equal(replay.status, 401, 'replica B refuses the replay')
  t.match(replay.headers.get('www-authenticate'), /invalid_dpop_proof/)
  t.equal((await callTool(bApp, '/call/chat/x', { authorization: `DPoP ${b.token}`, dpop: await b.proof(`${ISSUER}/call/chat/x`, 'GET') })).status, 200, 'positive control: a fresh proof at B')
})

t.test('a proof used at one process is refused at another on the same SQLite file', async t => {
  const a = await gateway(t)
  const bApp = await gateway(t, { dataDir: a.app.config.dataDir })
  const b = await bound(a)
  const proof = await b.proof(`${ISSUER}/call/chat/x`, 'GET')
  t.equal((await callTool(a, '/call/chat/x', { authorization: `DPoP ${b.token}`, dpop: proof })).status, 200)
  t.equal((await callTool(bApp, '/call/chat/x', { authorization: `DPoP ${b.token}`, dpop: proof })).status, 401, 'the replay cache is in the store')
})

t.test('store.markSeen: once per key until it expires (both backends)', async t => {
  const { SqliteStore } = await import('../src/store/sqlite.js')
  const stores: Array<[string, () => Promise<{ markSeen: (k: string, e: number, n: number) => Promise<boolean>, close: () => Promise<void> }>]> = [
    ['sqlite', async () => SqliteStore.open(':memory:')]
  ]
  if (redisUrl !== undefined) {
    const { RedisStore } = await import('../src/store/redis.js')
    const keyPrefix = uniquePrefix('seen')
    t.teardown(async () => { await deletePrefix(redisUrl, keyPrefix) })
    stores.push(['redis', async () => await RedisStore.connect(redisUrl, { timeoutMs: 2000, keyPrefix })])
  }
  for (const [name, open] of stores) {
    const store = await open()
    const now = Date.now()
    t.equal(await store.markSeen('k1', now + 200, now), true, `${name}: first`)
    t.equal(await store.markSeen('k1', now + 200, now), false, `${name}: replay`)
    t.same(await Promise.all([1, 2, 3, 4].map(async () => await store.markSeen('k2', now + 60_000, now))).then(r => r.filter(Boolean).length), 1, `${name}: exactly one of concurrent callers`)
    if (name === 'sqlite') t.equal(await store.markSeen('k1', now + 60_000, now + 201), true, `${name}: after expiry`)
    await store.close()
  }
})
