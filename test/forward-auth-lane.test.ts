// The forward-auth lane (src/routes/forward-auth-lane.ts) answers GET /validate ahead of Fastify's
// router for tokens verified before. These tests run two real gateways side by side over real
// HTTP, one with the lane and one without, send both the same requests, and require the same
// answers: status, headers (all but Date and generated request ids), body, rate-limit counting,
// metrics and log lines. They also check that the lane did answer (its `served` count), so a lane
// that always declined could not pass.
import { request as httpRequest } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Writable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import pino from 'pino'
import t, { type Test } from 'tap'
import { buildApp, loggerOptions } from '../src/app.js'
import type { Config } from '../src/config.js'
import { revoke } from './lifecycle-helper.js'
import { ManualClock, issue, testConfig, type TestContext } from './helper.js'

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

interface Gateway { app: FastifyInstance, base: string, lines: any[] }

async function gateway (t: TestContext, config: Config, lanes: boolean, clock?: () => number, logLevel?: string): Promise<Gateway> {
  const lines: any[] = []
  const sink = new Writable({ write (chunk, _enc, done) { lines.push(JSON.parse(String(chunk))); done() } })
  const options = logLevel === undefined
    ? { logger: false as const }
    : { loggerInstance: pino({ ...(loggerOptions({ ...config, logLevel } as Config) as object), level: logLevel }, sink) }
  const app = await buildApp(config, { ...options, lanes, ...(clock !== undefined ? { clock } : {}) })
  t.teardown(() => app.close())
  await app.listen({ host: '127.0.0.1', port: 0 })
  return { app, base: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, lines }
}

/** Two gateways on the same config (each its own data dir), with and without the lane. */
async function pair (t: Test, overrides: Record<string, unknown> = {}, opts: { clock?: () => number, logLevel?: string } = {}): Promise<{ lane: Gateway, plain: Gateway }> {
  const lane = await gateway(t, testConfig(t, overrides), true, opts.clock, opts.logLevel)
  const plain = await gateway(t, testConfig(t, overrides), false, opts.clock, opts.logLevel)
  t.ok(lane.app.lanes.has('forward-auth'), 'the lane runs on the first gateway')
  t.equal(plain.app.lanes.size, 0, 'and no lane on the second')
  return { lane, plain }
}

/** What must match between the two: everything but Date and a generated request id. */
function comparable (a: Answer): object {
  const headers = { ...a.headers }
  delete headers.date
  if (typeof headers['x-request-id'] === 'string' && /^[0-9a-f-]{36}$/.test(headers['x-request-id'])) headers['x-request-id'] = '<uuid>'
  let body: unknown = a.body
  try { body = JSON.parse(a.body) } catch {}
  return { status: a.status, headers, body }
}

const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })

/** Fixed windows align to the epoch: a sequence that straddles a minute's end would see it reset. */
async function clearOfMinuteEdge (): Promise<void> {
  const left = 60_000 - (Date.now() % 60_000)
  if (left < 5000) await new Promise(resolve => setTimeout(resolve, left + 50))
}

t.test('the lane answers exactly what the route answers, for every kind of request', async t => {
  const { lane, plain } = await pair(t)
  const tokens = { lane: (await issue(lane.app)).access_token, plain: (await issue(plain.app)).access_token }
  const narrow = { lane: (await issue(lane.app, { scope: 'tools:read' })).access_token, plain: (await issue(plain.app, { scope: 'tools:read' })).access_token }
  const cases: Array<[string, string, (tok: typeof tokens) => Record<string, string>]> = [
    ['valid token', '/validate', tok => bearer(tok.lane)],
    ['audience and scope that fit', '/validate?audience=tool:chat&scope=tools:call', tok => bearer(tok.lane)],
    ['empty query', '/validate?', tok => bearer(tok.lane)],
    ['encoded scope list', '/validate?scope=tools:call%20tools:read', tok => bearer(tok.lane)],
    ['plus-separated scope list', '/validate?scope=tools:call+tools:read', tok => bearer(tok.lane)],
    ['unknown query parameter (ignored)', '/validate?foo=bar', tok => bearer(tok.lane)],
    ['repeated parameter', '/validate?scope=tools:call&scope=tools:read', tok => bearer(tok.lane)],
    ['audience the token lacks', '/validate?audience=tool:other', tok => bearer(tok.lane)],
    ['scope the token lacks', '/validate?scope=admin', tok => bearer(tok.lane)],
    ['narrowed token, scope it lacks', '/validate?scope=tools:call', () => bearer(narrow.lane)],
    ['narrowed token, scope it has', '/validate?scope=tools:read', () => bearer(narrow.lane)],
    ['valid caller request id is echoed', '/validate', tok => ({ ...bearer(tok.lane), 'x-request-id': 'edge-123.abc' })],
    ['invalid caller request id is replaced', '/validate', tok => ({ ...bearer(tok.lane), 'x-request-id': 'bad id with spaces' })],
    ['no token', '/validate', () => ({})],
    ['lower-case scheme, extra spaces', '/validate', tok => ({ authorization: `bearer   ${tok.lane}` })],
    ['basic credentials', '/validate', () => ({ authorization: 'Basic YTpi' })],
    ['malformed token', '/validate', () => bearer('a.b.c')],
    ['trailing slash', '/validate/', tok => bearer(tok.lane)],
    ['another path', '/validatex', tok => bearer(tok.lane)]
  ]
  // The first GET of a token verifies and caches it (Fastify's route); from the second on the
  // lane may answer. Every case is sent three times to both.
  for (const [name, path, headersFor] of cases) {
    for (let i = 0; i < 3; i++) {
      const laneHeaders = headersFor(tokens)
      const plainHeaders = Object.fromEntries(Object.entries(laneHeaders).map(([k, v]) => [k, v.replace(tokens.lane, tokens.plain).replace(narrow.lane, narrow.plain)]))
      const [a, b] = await Promise.all([get(lane.base, path, laneHeaders), get(plain.base, path, plainHeaders)])
      t.same(comparable(a), comparable(b), `${name} (#${i + 1})`)
    }
  }
  t.ok((lane.app.lanes.get('forward-auth')?.served ?? 0) >= 8, `the lane answered the cached 200s (${lane.app.lanes.get('forward-auth')?.served})`)
})

t.test('the lane counts against the per-IP and per-subject limits as the route does', async t => {
  for (const limits of [{ perIp: { max: 3, window: '1m' }, perSubject: { max: 100, window: '1m' } }, { perIp: { max: 100, window: '1m' }, perSubject: { max: 3, window: '1m' } }]) {
    // One still clock for both gateways: Retry-After counts the window's seconds left, and on a busy
    // machine a second could tick between the lane's request and the route's (16 against 17).
    const clock = new ManualClock(Date.now())
    const { lane, plain } = await pair(t, { rateLimits: limits }, { clock: clock.fn })
    const tokens = { lane: (await issue(lane.app)).access_token, plain: (await issue(plain.app)).access_token }
    await clearOfMinuteEdge()
    const seq = { lane: [] as object[], plain: [] as object[] }
    for (let i = 0; i < 5; i++) {
      seq.lane.push(comparable(await get(lane.base, '/validate', bearer(tokens.lane))))
      seq.plain.push(comparable(await get(plain.base, '/validate', bearer(tokens.plain))))
    }
    t.same(seq.lane, seq.plain, `same answers under ${JSON.stringify(limits)}`)
    t.same(seq.lane.map(a => (a as Answer).status), [200, 200, 200, 403, 403], 'three allowed, then refused')
    t.ok((lane.app.lanes.get('forward-auth')?.served ?? 0) >= 2, 'the lane answered the allowed repeats')
  }
})

t.test('behind a trusted proxy the lane keys the per-IP limit on the forwarded client', async t => {
  const { lane, plain } = await pair(t, { server: { trustProxy: '127.0.0.1' }, rateLimits: { perIp: { max: 2, window: '1m' }, perSubject: { max: 100, window: '1m' } } })
  const tokens = { lane: (await issue(lane.app)).access_token, plain: (await issue(plain.app)).access_token }
  await clearOfMinuteEdge()
  const statuses = { lane: [] as number[], plain: [] as number[] }
  for (const xff of ['203.0.113.1', '203.0.113.1', '203.0.113.2', '203.0.113.1', '203.0.113.2', '203.0.113.3']) {
    statuses.lane.push((await get(lane.base, '/validate', { ...bearer(tokens.lane), 'x-forwarded-for': xff })).status)
    statuses.plain.push((await get(plain.base, '/validate', { ...bearer(tokens.plain), 'x-forwarded-for': xff })).status)
  }
  t.same(statuses.lane, [200, 200, 200, 403, 200, 200])
  t.same(statuses.lane, statuses.plain)
  t.ok((lane.app.lanes.get('forward-auth')?.served ?? 0) >= 1)
})

t.test('a revoked or expired token is never answered by the lane', async t => {
  const clock = new ManualClock(Date.now())
  const { lane, plain } = await pair(t, {}, { clock: clock.fn })
  for (const gw of [lane, plain]) {
    const tok = (await issue(gw.app)).access_token
    const other = (await issue(gw.app)).access_token
    t.equal((await get(gw.base, '/validate', bearer(tok))).status, 200)
    t.equal((await get(gw.base, '/validate', bearer(tok))).status, 200, 'cached')
    t.equal((await get(gw.base, '/validate', bearer(other))).status, 200)
    t.equal((await revoke(gw.app, tok)).statusCode, 200)
    const revoked = await get(gw.base, '/validate', bearer(tok))
    t.equal(revoked.status, 401, 'revoked')
    t.match(revoked.headers['www-authenticate'], /invalid_token/)
    t.equal((await get(gw.base, '/validate', bearer(other))).status, 200, 'another token still passes')
  }
  clock.advance((300 + 30 + 1) * 1000)
  for (const gw of [lane, plain]) {
    const res = await get(gw.base, '/validate', bearer((await issue(gw.app)).access_token))
    t.equal(res.status, 200, 'a fresh token passes')
  }
  const before = lane.app.lanes.get('forward-auth')?.served ?? 0
  t.ok(before >= 2)
})

t.test('an expired cached token falls through to the route, which says why', async t => {
  const clock = new ManualClock(Date.now())
  const { lane, plain } = await pair(t, {}, { clock: clock.fn })
  const answers: Answer[] = []
  for (const gw of [lane, plain]) {
    const tok = (await issue(gw.app)).access_token
    await get(gw.base, '/validate', bearer(tok))
    await get(gw.base, '/validate', bearer(tok))
    answers.push(await get(gw.base, '/validate', bearer(tok)))
  }
  t.equal(answers[0]?.status, 200)
  clock.advance((300 + 30 + 1) * 1000)
  const expired = { lane: '', plain: '' }
  // A new token per gateway was cached above; its successor expires in both.
  for (const [name, gw] of [['lane', lane], ['plain', plain]] as const) {
    const tok = (await issue(gw.app)).access_token
    await get(gw.base, '/validate', bearer(tok))
    clock.advance((300 + 30 + 1) * 1000)
    const res = await get(gw.base, '/validate', bearer(tok))
    t.equal(res.status, 401, `${name}: expired`)
    t.equal(JSON.parse(res.body).code, 'token_expired')
    expired[name] = res.body
    clock.now -= (300 + 30 + 1) * 1000
  }
  t.same(JSON.parse(expired.lane), JSON.parse(expired.plain))
})

t.test('metrics and request log lines match', async t => {
  const { lane, plain } = await pair(t, {}, { logLevel: 'info' })
  for (const gw of [lane, plain]) {
    const tok = (await issue(gw.app)).access_token
    for (let i = 0; i < 4; i++) t.equal((await get(gw.base, '/validate', { ...bearer(tok), 'x-request-id': `req-${i}` })).status, 200)
  }
  t.ok((lane.app.lanes.get('forward-auth')?.served ?? 0) >= 3)
  const metric = async (gw: Gateway, pattern: RegExp): Promise<number> => {
    const text = (await get(gw.base, '/metrics')).body
    const m = pattern.exec(text)
    return m === null ? NaN : Number(m[1])
  }
  for (const pattern of [
    /^tollgate_validations_total\{endpoint="forward_auth",result="allowed"\} (\d+)$/m,
    /^tollgate_http_request_duration_seconds_count\{method="GET",route="\/validate",status_code="200"\} (\d+)$/m
  ]) {
    const [a, b] = [await metric(lane, pattern), await metric(plain, pattern)]
    t.equal(a, 4, `${pattern.source}: four allowed`)
    t.equal(a, b, 'the same on both')
  }
  const requestLines = (gw: Gateway): object[] => gw.lines
    .filter(l => typeof l.reqId === 'string' && l.reqId.startsWith('req-'))
    .map(l => ({ level: l.level, msg: l.msg, reqId: l.reqId, req: l.req, statusCode: l.res?.statusCode, timed: typeof l.responseTime === 'number' }))
  t.equal(requestLines(lane).length, 8, 'incoming and completed for each of four')
  t.same(requestLines(lane), requestLines(plain))
  t.notOk(JSON.stringify(lane.lines).includes('Bearer'), 'no credential in the lane\'s log lines')
})

t.test('a lane that throws never takes the server down', async t => {
  const gw = await gateway(t, testConfig(t), true)
  let mode: 'before' | 'after' | 'off' = 'before'
  const boom = Object.assign((_req: unknown, res: { writeHead: (s: number) => void }): boolean => {
    if (mode === 'off') return false
    if (mode === 'after') res.writeHead(200)
    throw new Error('lane bug')
  }, { served: 0 })
  // Tried after the forward-auth lane, which declines /health, so every request reaches it.
  gw.app.addLane('boom', boom as never)
  const before = await get(gw.base, '/health')
  t.equal(before.status, 200, 'thrown before writing: Fastify answered')
  mode = 'after'
  await t.rejects(get(gw.base, '/health'), 'thrown after writing: the connection is cut')
  mode = 'off'
  t.equal((await get(gw.base, '/health')).status, 200, 'the server still serves')
})
