// The call lane (src/call/lane.ts) runs POST /call from the raw request for tokens verified
// before, and hands every refusal and upstream failure to Fastify's route with what it has done.
// Two real gateways run side by side over real HTTP, one with the lane and one without, against
// one real upstream; both get the same requests, and must give the same answers (status, headers
// but Date and generated ids, body), send the upstream the same requests (each exactly once), and
// count, charge and refund alike. The lane's own counters show it answered and handed over, so a
// lane that always declined could not pass.
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { buildApp } from '../src/app.js'
import { client, issue, testConfig } from './helper.js'
import { startUpstream, type Upstream } from './call-helper.js'

interface Answer { status: number, headers: Record<string, string>, body: string }
interface Gateway { app: FastifyInstance, base: string, port: number }

const TOOLS = (origin: string): object[] => [
  { name: 'chat', url: `${origin}/chat`, audience: 'tool:chat', scopes: ['tools:call'] },
  { name: 'search', url: `${origin}/search`, audience: 'tool:search', scopes: ['tools:call', 'tools:read'], cost: 2 },
  { name: 'other', url: `${origin}/other`, audience: 'tool:other', scopes: ['tools:call'] },
  { name: 'admin', url: `${origin}/admin`, audience: 'tool:chat', scopes: ['tools:admin'] },
  { name: 'broken', url: `${origin}/broken`, audience: 'tool:chat', scopes: ['tools:call'] },
  { name: 'keep', url: `${origin}/broken`, audience: 'tool:chat', scopes: ['tools:call'], refundOnFailure: false },
  { name: 'slow', url: `${origin}/slow`, audience: 'tool:chat', scopes: ['tools:call'], timeout: '300ms' },
  { name: 'down', url: 'http://127.0.0.1:9/down', audience: 'tool:chat', scopes: ['tools:call'] }
]

async function gateway (t: Test, upstream: Upstream, lanes: boolean, overrides: Record<string, unknown>): Promise<Gateway> {
  const app = await buildApp(testConfig(t, { tools: TOOLS(upstream.origin), ...overrides }), { logger: false, lanes })
  t.teardown(() => app.close())
  await app.listen({ host: '127.0.0.1', port: 0 })
  const port = (app.server.address() as AddressInfo).port
  return { app, base: `http://127.0.0.1:${port}`, port }
}

async function pair (t: Test, overrides: Record<string, unknown> = {}): Promise<{ upstream: Upstream, lane: Gateway, plain: Gateway }> {
  const upstream = await startUpstream(t)
  upstream.routes.set('/broken', (_req, res) => { res.writeHead(500, { 'content-type': 'application/json' }); res.end('{"error":"tool broke"}') })
  upstream.routes.set('/slow', () => {}) // never answers: the tool's timeout
  const lane = await gateway(t, upstream, true, overrides)
  const plain = await gateway(t, upstream, false, overrides)
  t.ok(lane.app.lanes.has('call'), 'the call lane runs on the first gateway')
  t.equal(plain.app.lanes.size, 0, 'no lane on the second')
  return { upstream, lane, plain }
}

async function call (gw: Gateway, token: string, body: string, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await fetch(`${gw.base}/call`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...headers }, body })
  return { status: res.status, headers: Object.fromEntries(res.headers), body: await res.text() }
}

/** Everything that must match: ids, dates, ports and the per-gateway downstream token normalised. */
function comparable (a: Answer, gw: Gateway): object {
  const headers = { ...a.headers }
  delete headers.date
  delete headers['keep-alive']
  if (/^[0-9a-f-]{36}$/.test(headers['x-request-id'] ?? '')) headers['x-request-id'] = '<uuid>'
  // Seconds to the window's reset: the two requests are apart in time, so it may tick in between.
  if (headers.ratelimit !== undefined) {
    const reset = /;t=(\d+)$/.exec(headers.ratelimit)
    const seconds = Number(reset?.[1])
    if (headers.ratelimit.startsWith('"quota"')) t.ok(Math.abs(seconds - resetNow()) <= 2, `quota reset ${seconds} s`)
    else t.ok(seconds >= 0 && seconds <= 60, `limit reset ${seconds} s`) // the test's limiter windows are 1 min
    headers.ratelimit = headers.ratelimit.replace(/;t=\d+$/, ';t=<s>')
  }
  let body: any = a.body
  try { body = JSON.parse(a.body) } catch {}
  if (body?.headers !== undefined) {
    // The upstream echoed what it received.
    const seen = { ...body.headers }
    t.match(seen.authorization, /^Bearer [\w-]+\.[\w-]+\.[\w-]+$/, 'the tool got a bearer token')
    seen.authorization = '<downstream token>'
    if (/^[0-9a-f-]{36}$/.test(seen['x-request-id'])) seen['x-request-id'] = '<uuid>'
    seen['x-forwarded-host'] = String(seen['x-forwarded-host']).replace(`:${gw.port}`, ':<port>')
    body = { ...body, headers: seen }
  }
  return { status: a.status, headers, body }
}

/** Seconds until the end of the current 1-day quota window (windows align to the epoch). */
function resetNow (): number {
  const day = 86_400_000
  return Math.ceil((day - (Date.now() % day)) / 1000)
}

const ok = JSON.stringify({ tool: 'chat', arguments: { text: 'hello' } })

/** Fixed windows align to the epoch: a sequence that straddles a minute's end would see it reset. */
async function clearOfMinuteEdge (): Promise<void> {
  const left = 60_000 - (Date.now() % 60_000)
  if (left < 5000) await new Promise(resolve => setTimeout(resolve, left + 50))
}

t.test('the lane answers and refuses exactly as the route does', async t => {
  const { upstream, lane, plain } = await pair(t)
  const tok = { lane: (await issue(lane.app)).access_token, plain: (await issue(plain.app)).access_token }
  const narrow = { lane: (await issue(lane.app, { scope: 'tools:call' })).access_token, plain: (await issue(plain.app, { scope: 'tools:call' })).access_token }
  const cases: Array<[string, string, 'tok' | 'narrow', Record<string, string>?]> = [
    ['a call the tool answers', ok, 'tok'],
    ['a tool with cost 2 and two scopes', JSON.stringify({ tool: 'search' }), 'tok'],
    ['the caller\'s request id goes through', ok, 'tok', { 'x-request-id': 'edge-42' }],
    ['charset in the media type', ok, 'tok', { 'content-type': 'application/json; charset=utf-8' }],
    ['a tool that answers 500 (refunded)', JSON.stringify({ tool: 'broken' }), 'tok'],
    ['a tool that answers 500, no refund', JSON.stringify({ tool: 'keep' }), 'tok'],
    ['a tool that cannot be reached (502, refunded)', JSON.stringify({ tool: 'down' }), 'tok'],
    ['a tool that does not answer in time (504, refunded)', JSON.stringify({ tool: 'slow' }), 'tok'],
    ['unknown tool', JSON.stringify({ tool: 'nope' }), 'tok'],
    ['malformed JSON', '{"tool": "chat"', 'tok'],
    ['no tool field', JSON.stringify({ arguments: {} }), 'tok'],
    ['empty tool name', JSON.stringify({ tool: '' }), 'tok'],
    ['arguments not an object', JSON.stringify({ tool: 'chat', arguments: [1] }), 'tok'],
    ['a JSON array', '[1,2]', 'tok'],
    ['prototype key', '{"tool":"chat","__proto__":{"x":1}}', 'tok'],
    ['audience the token lacks', JSON.stringify({ tool: 'other' }), 'tok'],
    ['scope the token lacks', JSON.stringify({ tool: 'admin' }), 'tok'],
    ['narrowed token without a tool scope', JSON.stringify({ tool: 'search' }), 'narrow'],
    ['another media type', ok, 'tok', { 'content-type': 'text/plain' }]
  ]
  for (const [name, body, which, headers] of cases) {
    for (let i = 0; i < 3; i++) {
      const token = which === 'tok' ? tok : narrow
      const before = upstream.seen.length
      const a = await call(lane, token.lane, body, headers)
      const laneSent = upstream.seen.length - before
      const b = await call(plain, token.plain, body, headers)
      const plainSent = upstream.seen.length - before - laneSent
      t.same(comparable(a, lane), comparable(b, plain), `${name} (#${i + 1})`)
      t.equal(laneSent, plainSent, `${name}: the upstream saw the same number of requests`)
      t.ok(laneSent <= 1, `${name}: at most one upstream request`)
    }
  }
  const counted = lane.app.lanes.get('call')
  t.ok((counted?.served ?? 0) >= 10, `the lane answered the cached calls (${counted?.served})`)
  t.ok((counted?.handedOver ?? 0) >= 20, `and handed refusals and failures to the route (${counted?.handedOver})`)
  // Quota used on both sides after the same calls, refunds included.
  const usage = async (gw: Gateway, token: string): Promise<Record<string, unknown>> => {
    const body = await (await fetch(`${gw.base}/quota`, { headers: { authorization: `Bearer ${token}` } })).json() as Record<string, unknown>
    t.ok(Math.abs(Number(body.reset) - resetNow()) <= 2, 'reset: the end of the day window')
    return { ...body, reset: '<s>' } // seconds to the window's end tick between the two reads
  }
  const [a, b] = [await usage(lane, tok.lane), await usage(plain, tok.plain)]
  t.ok(Number(a.used) > 0, `quota was used (${a.used})`)
  t.same(a, b, 'the same quota used')
})

t.test('quota and rate limits run out at the same call', async t => {
  for (const overrides of [
    { clients: [client('agent', { quota: { limit: 3, window: '1d' } })] },
    { rateLimits: { perSubject: { max: 3, window: '1m' }, perIp: { max: 100, window: '1m' } } },
    { rateLimits: { perSubject: { max: 100, window: '1m' }, perIp: { max: 3, window: '1m' } } }
  ]) {
    const { lane, plain } = await pair(t, overrides)
    const tok = { lane: (await issue(lane.app)).access_token, plain: (await issue(plain.app)).access_token }
    await clearOfMinuteEdge()
    const seq = { lane: [] as object[], plain: [] as object[] }
    for (let i = 0; i < 5; i++) {
      seq.lane.push(comparable(await call(lane, tok.lane, ok), lane))
      seq.plain.push(comparable(await call(plain, tok.plain, ok), plain))
    }
    t.same(seq.lane, seq.plain, JSON.stringify(overrides))
    t.same(seq.lane.map(a => (a as Answer).status), [200, 200, 200, 429, 429])
    t.ok((lane.app.lanes.get('call')?.served ?? 0) >= 2)
  }
})

t.test('a token revoked after it was cached is refused, not relayed', async t => {
  const { upstream, lane } = await pair(t)
  const tok = await issue(lane.app)
  t.equal((await call(lane, tok.access_token, ok)).status, 200)
  t.equal((await call(lane, tok.access_token, ok)).status, 200)
  const revoked = await lane.app.inject({ method: 'POST', url: '/revoke', headers: { authorization: 'Basic ' + Buffer.from('agent:agent-secret-0123456789').toString('base64'), 'content-type': 'application/x-www-form-urlencoded' }, payload: `token=${tok.access_token}` })
  t.equal(revoked.statusCode, 200)
  const before = upstream.seen.length
  const res = await call(lane, tok.access_token, ok)
  t.equal(res.status, 401)
  t.equal(upstream.seen.length, before, 'nothing reached the tool')
})
