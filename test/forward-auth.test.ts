// GET /validate over real HTTP for tokens the verification cache already holds: a revoked or
// expired token is refused and says why, the limits count every request, and each request writes
// exactly one access-log line and one metric count.
import { request as httpRequest } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { buildApp } from '../src/app.js'
import type { Config } from '../src/config.js'
import { revoke } from './lifecycle-helper.js'
import { ManualClock, issue, testConfig, type TestContext } from './helper.js'
import { captureLog } from './support/logs.js'

interface Answer { status: number, headers: Record<string, string | string[] | undefined>, body: string }

async function get (base: string, path: string, headers: Record<string, string> = {}): Promise<Answer> {
  return await new Promise((resolve, reject) => {
    const req = httpRequest(`${base}${path}`, { headers }, res => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }) })
    })
    req.on('error', reject)
    req.end()
  })
}

interface Gateway {
  app: FastifyInstance
  base: string
  lines: any[]
  /** Resolves once the response to the request with this X-Request-Id has finished (its access line is written by then). */
  finished: (requestId: string) => Promise<void>
}

async function gateway (t: TestContext, config: Config, clock?: () => number): Promise<Gateway> {
  const { logger, parsed: lines } = captureLog(config, 'info')
  const app = await buildApp(config, {
    loggerInstance: logger,
    ...(clock !== undefined ? { clock } : {})
  })
  t.teardown(() => app.close())
  // Fastify's own 'finish' listener runs the onResponse hooks (the access line) and was added before
  // this one, so a request's id is recorded here only after its line was written.
  const done = new Set<string>()
  const waiting = new Map<string, () => void>()
  app.server.on('request', (req, res) => {
    const id = req.headers['x-request-id']
    if (typeof id === 'string') res.once('finish', () => { done.add(id); waiting.get(id)?.() })
  })
  const finished = async (id: string): Promise<void> => { if (!done.has(id)) await new Promise<void>(resolve => waiting.set(id, resolve)) }
  await app.listen({ host: '127.0.0.1', port: 0 })
  return { app, base: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, lines, finished }
}

const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })

t.test('a cached token that is revoked is refused at once; others still pass', async t => {
  const gw = await gateway(t, testConfig(t))
  const tok = (await issue(gw.app)).access_token
  const other = (await issue(gw.app)).access_token
  t.equal((await get(gw.base, '/validate', bearer(tok))).status, 200)
  t.equal((await get(gw.base, '/validate', bearer(tok))).status, 200, 'cached')
  t.equal((await get(gw.base, '/validate', bearer(other))).status, 200)
  t.equal((await revoke(gw.app, tok)).statusCode, 200)
  const revoked = await get(gw.base, '/validate', bearer(tok))
  t.equal(revoked.status, 401, 'revoked')
  t.match(revoked.headers['www-authenticate'], /error="invalid_token"/)
  t.equal((await get(gw.base, '/validate', bearer(other))).status, 200, 'another token still passes')
})

t.test('a cached token that expired is refused as token_expired', async t => {
  const clock = new ManualClock(Date.now())
  const gw = await gateway(t, testConfig(t), clock.fn)
  const tok = (await issue(gw.app)).access_token
  t.equal((await get(gw.base, '/validate', bearer(tok))).status, 200)
  t.equal((await get(gw.base, '/validate', bearer(tok))).status, 200, 'cached')
  clock.advance((300 + 30 + 1) * 1000) // accessTtl 5 min + leeway 30 s
  const res = await get(gw.base, '/validate', bearer(tok))
  t.equal(res.status, 401)
  t.equal(JSON.parse(res.body).code, 'token_expired')
  t.match(res.headers['www-authenticate'], /error="invalid_token"/)
  t.equal((await get(gw.base, '/validate', bearer((await issue(gw.app)).access_token))).status, 200, 'a fresh token passes')
})

t.test('the per-subject limit counts cached tokens of one subject together', async t => {
  const clock = new ManualClock(Date.UTC(2026, 10, 24, 12, 0, 5)) // well inside a minute window
  const gw = await gateway(t, testConfig(t, { rateLimits: { perSubject: { max: 3, window: '1m' } } }), clock.fn)
  const a = (await issue(gw.app)).access_token
  const b = (await issue(gw.app)).access_token
  const statuses = []
  for (const tok of [a, a, b, b, a]) statuses.push((await get(gw.base, '/validate', bearer(tok))).status)
  // A forwarding proxy passes on only 401 and 403: a rate-limited caller gets 403 with Retry-After.
  t.same(statuses, [200, 200, 200, 403, 403])
  const limited = await get(gw.base, '/validate', bearer(a))
  t.equal(JSON.parse(limited.body).code, 'rate_limited')
  t.ok(Number(limited.headers['retry-after']) > 0)
  clock.advance(60_000)
  t.equal((await get(gw.base, '/validate', bearer(b))).status, 200, 'the next window has room')
})

t.test('a claim that cannot be carried in a header is refused, and refused again when its token is cached', async t => {
  const gw = await gateway(t, testConfig(t))
  // Only Tollgate's own key signs tokens it accepts; this one is signed by it in process, as a
  // defect elsewhere could: a subject with a line break would split X-Auth-Subject.
  const { token } = gw.app.tokens.issue({ sub: 'agent\r\nx-injected: 1', clientId: 'agent', scopes: ['tools:call'], audiences: ['tool:chat'], ttl: 60 })
  for (const attempt of ['first', 'second (verification cache hit)']) {
    const res = await get(gw.base, '/validate', bearer(token))
    t.equal(res.status, 401, `${attempt}: 401`)
    t.equal(res.headers['x-auth-subject'], undefined, `${attempt}: no identity header`)
    t.equal(res.headers['x-injected'], undefined, `${attempt}: nothing injected`)
    t.equal(JSON.parse(res.body).code, 'invalid_token')
  }
  const fine = (await issue(gw.app)).access_token
  const ok = await get(gw.base, '/validate', bearer(fine))
  t.equal(ok.status, 200)
  t.equal(ok.headers['x-auth-subject'], 'agent')
  t.equal((await get(gw.base, '/validate', bearer(fine))).headers['x-auth-subject'], 'agent', 'the same headers for the cached principal')
})

t.test('one access-log line and one metric count per request', async t => {
  const gw = await gateway(t, testConfig(t))
  const tok = (await issue(gw.app)).access_token
  for (let i = 0; i < 4; i++) t.equal((await get(gw.base, '/validate?scope=tools:call', { ...bearer(tok), 'x-request-id': `req-${i}` })).status, 200)
  t.equal((await get(gw.base, '/validate', { ...bearer('not-a-token'), 'x-request-id': 'req-bad' })).status, 401)
  const text = (await get(gw.base, '/metrics')).body
  t.match(text, /^tollgate_validations_total\{endpoint="forward_auth",result="allowed"\} 4$/m)
  t.match(text, /^tollgate_http_request_duration_seconds_count\{method="GET",route="\/validate",status_code="200"\} 4$/m)
  // Lines are written when the answer is finished: wait for the last one.
  await gw.finished('req-bad')
  const access = gw.lines.filter(l => typeof l.reqId === 'string' && l.reqId.startsWith('req-') && l.msg === 'request')
  t.equal(access.length, 5, 'exactly one line per request')
  const first = access.find(l => l.reqId === 'req-0')
  t.same(Object.keys(first).sort(), ['client_id', 'ip', 'level', 'method', 'ms', 'msg', 'path', 'pid', 'hostname', 'reqId', 'status', 'sub', 'time'].sort())
  t.match(first, { level: 30, method: 'GET', path: '/validate', status: 200, ip: '127.0.0.1', sub: 'agent', client_id: 'agent', msg: 'request' })
  t.type(first.ms, 'number')
  t.type(first.time, 'number')
  const bad = access.find(l => l.reqId === 'req-bad')
  t.match(bad, { status: 401, path: '/validate' })
  t.notOk('sub' in bad, 'no subject for a refused token')
  t.notOk(gw.lines.some(l => l.msg === 'incoming request' || l.msg === 'request completed'), 'not Fastify\'s two lines')
  t.notOk(JSON.stringify(gw.lines).includes(tok), 'no token in any line')
  t.notOk(JSON.stringify(gw.lines).includes('scope=tools'), 'no query string in any line')
})

t.test('accessLog: false writes no access line', async t => {
  const gw = await gateway(t, testConfig(t, { accessLog: false }))
  const tok = (await issue(gw.app)).access_token
  t.equal((await get(gw.base, '/validate', { ...bearer(tok), 'x-request-id': 'req-off' })).status, 200)
  t.equal((await get(gw.base, '/health', { 'x-request-id': 'req-off-2' })).status, 200)
  await gw.finished('req-off')
  await gw.finished('req-off-2')
  t.equal(gw.lines.filter(l => l.msg === 'request').length, 0)
  t.ok(gw.lines.some(l => l.audit === 'token.issued'), 'other lines are still written')
})

t.test('forwardAuth.defaultAudience is required when the proxy names no audience', async t => {
  const gw = await gateway(t, testConfig(t, { forwardAuth: { defaultAudience: 'tool:search' } }))
  const chat = (await issue(gw.app, { audience: 'tool:chat' })).access_token
  const both = (await issue(gw.app)).access_token
  const refused = await get(gw.base, '/validate', bearer(chat))
  t.equal(refused.status, 401, 'a token for another service does not pass without ?audience')
  t.match(refused.headers['www-authenticate'], /error="invalid_token"/)
  t.equal((await get(gw.base, '/validate', bearer(both))).status, 200, 'a token for the default audience passes')
  t.equal((await get(gw.base, '/validate?audience=tool:chat', bearer(chat))).status, 200, 'an audience the proxy names takes its place')
  const plain = await gateway(t, testConfig(t))
  t.equal((await get(plain.base, '/validate', bearer((await issue(plain.app, { audience: 'tool:chat' })).access_token))).status, 200, 'control: without the setting, any audience passes')
})

t.test('metrics.tokenEnv protects GET /metrics with a bearer token', async t => {
  const secret = 'metrics-token-0123456789abcdef'
  const gw = await gateway(t, testConfig(t, { metrics: { tokenEnv: 'SCRAPE_TOKEN' } }, { SCRAPE_TOKEN: secret }))
  const none = await get(gw.base, '/metrics')
  t.equal(none.status, 401)
  t.equal(none.headers['www-authenticate'], 'Bearer realm="tollgate"')
  t.equal((await get(gw.base, '/metrics', bearer('metrics-token-0123456789abcdeX'))).status, 401, 'a wrong token')
  t.equal((await get(gw.base, '/metrics', bearer((await issue(gw.app)).access_token))).status, 401, 'an access token is not the metrics token')
  const ok = await get(gw.base, '/metrics', bearer(secret))
  t.equal(ok.status, 200)
  t.match(ok.body, /^# HELP /m)
  t.notOk(JSON.stringify(gw.lines).includes(secret), 'the token is never logged')
  t.throws(() => testConfig(t, { metrics: { tokenEnv: 'SCRAPE_TOKEN' } }, { SCRAPE_TOKEN: 'short' }), /^config: metrics\.tokenEnv: /)
  t.throws(() => testConfig(t, { metrics: { token: secret } }), /^config: metrics\.token: /)
})
