import t from 'tap'
import { FORM, ManualClock, basic, build, form, issue, testConfig } from './helper.js'

const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })

t.test('POST /validate introspects an active token with its quota usage', async t => {
  const app = await build(t)
  const tok = await issue(app)
  const res = await app.inject({ method: 'POST', url: '/validate', headers: { authorization: basic('other'), ...FORM }, payload: form({ token: tok.access_token }) })
  t.equal(res.statusCode, 200)
  t.equal(res.headers['cache-control'], 'no-store')
  const body = res.json()
  const claims = JSON.parse(Buffer.from(tok.access_token.split('.')[1], 'base64url').toString())
  t.same(body, {
    active: true,
    sub: 'agent',
    client_id: 'agent',
    scope: 'tools:call tools:read',
    aud: ['tool:chat', 'tool:search'],
    iss: 'https://tollgate.test',
    exp: claims.exp,
    iat: claims.iat,
    nbf: claims.nbf,
    jti: claims.jti,
    token_type: 'access_token',
    quota: { limit: 100, used: 0, remaining: 100, reset: body.quota.reset }
  })
  t.ok(body.quota.reset > 0 && body.quota.reset <= 86400, 'seconds until the window resets')
})

t.test('POST /validate answers {active:false} for anything not matching', async t => {
  const clock = new ManualClock(Date.now())
  const app = await build(t, undefined, { clock: clock.fn })
  const tok = await issue(app)
  const introspect = async (fields: Record<string, string>) => {
    const res = await app.inject({ method: 'POST', url: '/validate', headers: { authorization: basic('agent'), ...FORM }, payload: form(fields) })
    t.equal(res.statusCode, 200)
    return res.json()
  }
  t.same(await introspect({ token: 'garbage' }), { active: false })
  t.same(await introspect({ token: tok.access_token + 'x' }), { active: false })
  t.same(await introspect({ token: tok.access_token, audience: 'tool:other' }), { active: false })
  t.same(await introspect({ token: tok.access_token, scope: 'tools:call admin' }), { active: false })
  t.match(await introspect({ token: tok.access_token, audience: 'tool:chat', scope: 'tools:call' }), { active: true })
  clock.advance((300 + 30) * 1000)
  t.same(await introspect({ token: tok.access_token }), { active: false }, 'expired beyond the leeway, even though it was cached')
})

t.test('POST /validate needs client authentication unless introspection is public', async t => {
  const app = await build(t)
  const tok = await issue(app)
  const res = await app.inject({ method: 'POST', url: '/validate', headers: FORM, payload: form({ token: tok.access_token }) })
  t.equal(res.statusCode, 401)
  t.equal(res.json().error, 'invalid_client')
  t.equal(res.headers['www-authenticate'], 'Basic realm="tollgate"')

  const open = await build(t, testConfig(t, { introspection: { public: true } }))
  const tok2 = await issue(open)
  const res2 = await open.inject({ method: 'POST', url: '/validate', payload: { token: tok2.access_token } })
  t.equal(res2.statusCode, 200)
  t.equal(res2.json().active, true)

  const missing = await open.inject({ method: 'POST', url: '/validate', payload: {} })
  t.equal(missing.statusCode, 400)
  t.equal(missing.json().error, 'invalid_request')
})

t.test('GET /validate: 200 with X-Auth-* headers for a valid token', async t => {
  const app = await build(t)
  const tok = await issue(app, { scope: 'tools:call' })
  const res = await app.inject({ method: 'GET', url: '/validate?audience=tool:chat&scope=tools:call', headers: bearer(tok.access_token) })
  t.equal(res.statusCode, 200)
  t.equal(res.headers['x-auth-subject'], 'agent')
  t.equal(res.headers['x-auth-client-id'], 'agent')
  t.equal(res.headers['x-auth-scope'], 'tools:call')
  t.equal(res.headers['x-auth-audience'], 'tool:chat tool:search')
  t.same(res.json(), { sub: 'agent', client_id: 'agent', scope: 'tools:call', aud: ['tool:chat', 'tool:search'] })
})

t.test('GET /validate: 401 and 403 with RFC 6750 challenges', async t => {
  const app = await build(t)
  const tok = await issue(app, { scope: 'tools:read' })

  const none = await app.inject({ method: 'GET', url: '/validate' })
  t.equal(none.statusCode, 401)
  t.equal(none.headers['www-authenticate'], 'Bearer realm="tollgate", resource_metadata="https://tollgate.test/.well-known/oauth-protected-resource"', 'RFC 9728 §5.1: the gateway\'s metadata URL')
  t.match(none.headers['content-type'], /^application\/problem\+json/)
  t.match(none.json(), { status: 401, code: 'invalid_token', type: String, title: 'Unauthorized', detail: String })

  const query = await app.inject({ method: 'GET', url: `/validate?access_token=${tok.access_token}` })
  t.equal(query.statusCode, 401, 'a token in the query string is never read')
  t.equal(query.headers['www-authenticate'], 'Bearer realm="tollgate", resource_metadata="https://tollgate.test/.well-known/oauth-protected-resource"')

  const bad = await app.inject({ method: 'GET', url: '/validate', headers: bearer('a.b.c') })
  t.equal(bad.statusCode, 401)
  t.match(bad.headers['www-authenticate'], /^Bearer realm="tollgate", error="invalid_token", error_description="[^"]+", resource_metadata="https:\/\/tollgate\.test\/\.well-known\/oauth-protected-resource"$/)

  const aud = await app.inject({ method: 'GET', url: '/validate?audience=tool:other', headers: bearer(tok.access_token) })
  t.equal(aud.statusCode, 401)
  t.match(aud.headers['www-authenticate'], /error="invalid_token"/)

  const scope = await app.inject({ method: 'GET', url: '/validate?scope=tools:call', headers: bearer(tok.access_token) })
  t.equal(scope.statusCode, 403)
  t.equal(scope.headers['www-authenticate'], 'Bearer realm="tollgate", error="insufficient_scope", error_description="the token lacks a required scope: tools:call", scope="tools:call"')
  t.equal(scope.json().code, 'insufficient_scope')
  t.notOk(scope.headers['x-auth-subject'], 'no identity headers on a refusal')
})

t.test('GET /validate: a cached verification never outlives exp', async t => {
  const clock = new ManualClock(Date.now())
  const app = await build(t, undefined, { clock: clock.fn })
  const tok = await issue(app)
  const get = async () => (await app.inject({ method: 'GET', url: '/validate', headers: bearer(tok.access_token) })).statusCode
  t.equal(await get(), 200)
  t.equal(await get(), 200, 'served from the cache')
  clock.advance((300 + 29) * 1000)
  t.equal(await get(), 200, 'within the leeway')
  clock.advance(2000)
  const res = await app.inject({ method: 'GET', url: '/validate', headers: bearer(tok.access_token) })
  t.equal(res.statusCode, 401)
  t.equal(res.json().code, 'token_expired')
})

// The limits count in one-minute windows aligned to the epoch: on the wall clock a minute turning
// mid-test would refill them, so these tests run on an injected clock.
t.test('GET /validate: rate limited per subject, answered 403 for forward-auth proxies', async t => {
  const clock = new ManualClock()
  const app = await build(t, testConfig(t, { rateLimits: { perSubject: { max: 2, window: '1m' }, perIp: { max: 100, window: '1m' } } }), { clock: clock.fn })
  const tok = await issue(app)
  const codes = []
  for (let i = 0; i < 3; i++) codes.push((await app.inject({ method: 'GET', url: '/validate', headers: bearer(tok.access_token) })))
  t.same(codes.map(r => r.statusCode), [200, 200, 403])
  const limited = codes[2]!
  t.equal(limited.json().code, 'rate_limited')
  t.ok(Number(limited.headers['retry-after']) >= 1)
  t.match(limited.headers['ratelimit-policy'], /^"subject";q=2;w=60$/)
  clock.advance(60_000)
  t.equal((await app.inject({ method: 'GET', url: '/validate', headers: bearer(tok.access_token) })).statusCode, 200, 'the next window has room')
})

t.test('GET /validate: per-IP limit keys on the client address behind a trusted proxy', async t => {
  const clock = new ManualClock()
  const app = await build(t, testConfig(t, { server: { trustProxy: '127.0.0.1' }, rateLimits: { perIp: { max: 1, window: '1m' }, perSubject: { max: 100, window: '1m' } } }), { clock: clock.fn })
  const tok = await issue(app)
  const from = (xff: string) => app.inject({ method: 'GET', url: '/validate', remoteAddress: '127.0.0.1', headers: { ...bearer(tok.access_token), 'x-forwarded-for': xff } })
  t.equal((await from('203.0.113.1')).statusCode, 200)
  t.equal((await from('203.0.113.2')).statusCode, 200, 'another client behind the same proxy has its own budget')
  t.equal((await from('203.0.113.1')).statusCode, 403, 'the first client is over its budget')
  clock.advance(60_000)
  t.equal((await from('203.0.113.1')).statusCode, 200, 'and has room again in the next window')
})
