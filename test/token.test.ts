import t from 'tap'
import { CLIENT_SECRET, FORM, ManualClock, basic, build, form, issue, testConfig } from './helper.js'
import { captureLog } from './support/logs.js'

function decode (token: string): { header: any, payload: any } {
  const [h, p] = token.split('.')
  return { header: JSON.parse(Buffer.from(h as string, 'base64url').toString()), payload: JSON.parse(Buffer.from(p as string, 'base64url').toString()) }
}

t.test('client_credentials with HTTP Basic issues an RFC 9068 access token', async t => {
  const app = await build(t)
  const res = await app.inject({ method: 'POST', url: '/token', headers: { authorization: basic('agent'), ...FORM }, payload: form({ grant_type: 'client_credentials' }) })
  t.equal(res.statusCode, 200)
  t.equal(res.headers['cache-control'], 'no-store')
  t.equal(res.headers.pragma, 'no-cache')
  t.match(res.headers['content-type'], /^application\/json/)
  const body = res.json()
  t.match(body, { access_token: String, token_type: String, expires_in: Number, scope: String })
  t.equal(body.token_type, 'Bearer')
  t.equal(body.expires_in, 300)
  t.equal(body.scope, 'tools:call tools:read')
  const { header, payload } = decode(body.access_token)
  t.same(header, { alg: 'ES256', kid: app.keys.signingKey().kid, typ: 'at+jwt' })
  t.equal(payload.iss, 'https://tollgate.test')
  t.equal(payload.sub, 'agent')
  t.equal(payload.client_id, 'agent')
  t.same(payload.aud, ['tool:chat', 'tool:search'])
  t.equal(payload.scope, 'tools:call tools:read')
  t.equal(payload.exp - payload.iat, 300)
  t.equal(payload.nbf, payload.iat)
  t.match(payload.jti, /^[0-9a-f-]{36}$/)
  t.same(payload.quota, { limit: 100, window: 86400 })
  t.equal(payload.role, 'user', 'static claims from the client config')
})

t.test('client_secret_post and JSON bodies work too', async t => {
  const app = await build(t)
  const post = await app.inject({ method: 'POST', url: '/token', headers: FORM, payload: form({ grant_type: 'client_credentials', client_id: 'agent', client_secret: CLIENT_SECRET }) })
  t.equal(post.statusCode, 200)
  const json = await app.inject({ method: 'POST', url: '/token', payload: { grant_type: 'client_credentials', client_id: 'agent', client_secret: CLIENT_SECRET, scope: 'tools:read' } })
  t.equal(json.statusCode, 200)
  t.equal(json.json().scope, 'tools:read')
})

t.test('scope and audience narrow to a subset, and refuse anything wider', async t => {
  const app = await build(t)
  const narrow = await issue(app, { scope: 'tools:call', audience: 'tool:chat' })
  t.equal(narrow.scope, 'tools:call')
  t.equal(decode(narrow.access_token).payload.aud, 'tool:chat', 'a single audience is a string')

  const scope = await app.inject({ method: 'POST', url: '/token', headers: { authorization: basic('agent'), ...FORM }, payload: form({ grant_type: 'client_credentials', scope: 'tools:call admin' }) })
  t.equal(scope.statusCode, 400)
  t.same(scope.json(), { error: 'invalid_scope', error_description: 'scope not allowed: admin' })
  const aud = await app.inject({ method: 'POST', url: '/token', headers: { authorization: basic('agent'), ...FORM }, payload: form({ grant_type: 'client_credentials', audience: 'tool:other' }) })
  t.equal(aud.statusCode, 400)
  t.equal(aud.json().error, 'invalid_target')
})

t.test('a client accessTtl overrides tokens.accessTtl', async t => {
  const config = testConfig(t, { clients: [{ id: 'agent', secretHash: (await import('./helper.js')).CLIENT_SECRET_HASH, scopes: ['a'], audiences: ['x'], accessTtl: '1h' }] })
  const app = await build(t, config)
  const tok = await issue(app)
  t.equal(tok.expires_in, 3600)
  t.notOk('refresh_token' in tok, 'no refresh token for a client without refresh: true')
  t.notOk('quota' in decode(tok.access_token).payload, 'no quota claim without a client quota')
})

t.test('client authentication failures', async t => {
  const app = await build(t)
  const token = (headers: Record<string, string>, fields: Record<string, string>) =>
    app.inject({ method: 'POST', url: '/token', headers: { ...FORM, ...headers }, payload: form({ grant_type: 'client_credentials', ...fields }) })

  const none = await token({}, {})
  t.equal(none.statusCode, 401)
  t.equal(none.headers['www-authenticate'], 'Basic realm="tollgate"')
  t.equal(none.json().error, 'invalid_client')

  const wrong = await token({ authorization: basic('agent', 'wrong-secret') }, {})
  const unknown = await token({ authorization: basic('nobody', 'wrong-secret') }, {})
  t.equal(wrong.statusCode, 401)
  t.same(wrong.json(), unknown.json(), 'unknown client and wrong secret get the same answer')
  t.equal(wrong.headers['www-authenticate'], unknown.headers['www-authenticate'])
  t.same(wrong.json(), { error: 'invalid_client', error_description: 'client authentication failed' })

  const postWrong = await token({}, { client_id: 'agent', client_secret: 'nope' })
  t.equal(postWrong.statusCode, 401)

  const both = await token({ authorization: basic('agent') }, { client_secret: CLIENT_SECRET })
  t.equal(both.statusCode, 400)
  t.equal(both.json().error, 'invalid_request', 'two authentication methods at once')

  const malformed = await token({ authorization: 'Basic !!!' }, {})
  t.equal(malformed.statusCode, 401)
})

t.test('grant and request errors are RFC 6749 §5.2 JSON', async t => {
  const app = await build(t)
  const post = (payload: string, headers: Record<string, string> = FORM) =>
    app.inject({ method: 'POST', url: '/token', headers: { authorization: basic('agent'), ...headers }, payload })

  for (const grant of ['password', 'implicit', 'authorization_code', 'urn:unknown']) {
    const res = await post(form({ grant_type: grant, username: 'u', password: 'p' }))
    t.equal(res.statusCode, 400, grant)
    t.equal(res.json().error, 'unsupported_grant_type', grant)
  }
  const missing = await post(form({ scope: 'tools:call' }))
  t.equal(missing.statusCode, 400)
  t.equal(missing.json().error, 'invalid_request')

  const repeated = await post('grant_type=client_credentials&scope=tools:call&scope=tools:read')
  t.equal(repeated.statusCode, 400)
  t.same(repeated.json(), { error: 'invalid_request', error_description: 'parameter scope is repeated' })

  const badJson = await post('{"grant_type": ', { 'content-type': 'application/json' })
  t.equal(badJson.statusCode, 400)
  t.equal(badJson.json().error, 'invalid_request')

  const nonString = await post(JSON.stringify({ grant_type: 'client_credentials', scope: ['a'] }), { 'content-type': 'application/json' })
  t.equal(nonString.statusCode, 400)
  t.equal(nonString.json().error, 'invalid_request')

  const huge = await post(form({ grant_type: 'client_credentials', scope: 'x'.repeat(10_500) }))
  t.equal(huge.statusCode, 413)
  t.equal(huge.json().error, 'payload_too_large')

  const media = await post('grant_type=client_credentials', { 'content-type': 'text/plain' })
  t.equal(media.statusCode, 415)
  t.equal(media.json().error, 'unsupported_media_type')

  const unknownParam = await post(form({ grant_type: 'client_credentials', foo: 'bar' }))
  t.equal(unknownParam.statusCode, 200, 'RFC 6749 §3.1: unrecognised parameters are ignored')
})

t.test('failed and successful attempts are rate limited per IP on /token', async t => {
  // An injected clock: the windows are aligned to the epoch, so a minute turning mid-test on the
  // wall clock would give the last requests a fresh budget.
  const clock = new ManualClock()
  const app = await build(t, testConfig(t, { rateLimits: { token: { max: 3, window: '1m' } } }), { clock: clock.fn })
  const codes: number[] = []
  for (let i = 0; i < 5; i++) {
    const res = await app.inject({ method: 'POST', url: '/token', headers: { authorization: basic('agent', i % 2 === 0 ? 'wrong' : CLIENT_SECRET), ...FORM }, payload: form({ grant_type: 'client_credentials' }) })
    codes.push(res.statusCode)
    if (res.statusCode === 429) {
      t.equal(res.json().error, 'rate_limited')
      t.ok(Number(res.headers['retry-after']) >= 1, 'Retry-After is set')
    }
  }
  t.same(codes, [401, 200, 401, 429, 429])
  const other = await app.inject({ method: 'POST', url: '/token', remoteAddress: '10.0.0.9', headers: { authorization: basic('agent'), ...FORM }, payload: form({ grant_type: 'client_credentials' }) })
  t.equal(other.statusCode, 200, 'another IP has its own budget')
  clock.advance(60_000)
  const next = await app.inject({ method: 'POST', url: '/token', headers: { authorization: basic('agent'), ...FORM }, payload: form({ grant_type: 'client_credentials' }) })
  t.equal(next.statusCode, 200, 'the next window has room')
})

t.test('issuance writes an audit line and metrics, and never logs the secret or the token', async t => {
  const { buildApp } = await import('../src/app.js')
  const config = testConfig(t, { logLevel: 'debug' })
  const { logger, lines } = captureLog(config)
  const app = await buildApp(config, { loggerInstance: logger })
  t.teardown(() => app.close())
  const tok = await issue(app)
  await app.inject({ method: 'POST', url: '/token', headers: { authorization: basic('agent', 'not-the-secret'), ...FORM }, payload: form({ grant_type: 'client_credentials' }) })
  const log = lines.join('')
  const audits = lines.map(l => JSON.parse(l)).filter(l => l.audit !== undefined)
  t.equal(audits.length, 2, 'one audit line per request') // t.match alone checks only the leading entries
  t.match(audits, [
    { audit: 'token.issued', client_id: 'agent', grant_type: 'client_credentials', sub: 'agent' },
    { audit: 'oauth.refused', client_id: 'agent', error: 'invalid_client' }
  ])
  t.notOk(log.includes(CLIENT_SECRET), 'no client secret')
  t.notOk(log.includes('not-the-secret'), 'no presented secret')
  t.notOk(log.includes(tok.access_token), 'no access token')
  t.notOk(log.includes(tok.access_token.split('.')[2]), 'not even the signature')
  t.notOk(log.includes(Buffer.from(`agent:${CLIENT_SECRET}`).toString('base64')), 'no Basic credentials')
  const metrics = await app.inject({ method: 'GET', url: '/metrics' })
  t.match(metrics.body, /tollgate_tokens_issued_total\{grant_type="client_credentials"\} 1/)
  t.match(metrics.body, /tollgate_token_requests_refused_total\{error="invalid_client"\} 1/)
})
