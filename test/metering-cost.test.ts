// Priced calls and settlement (CONTRACT §10 "Cost", "Settlement"): a costExpr in CEL priced per call
// from the arguments or the body size, refused at config load when it does not compile or is not
// bounded, 400 cost_unavailable (nothing charged, nothing forwarded) when it cannot price a call;
// a tool with `settle: true` reporting what a call really cost in a Tollgate-Cost header or in a
// trailer of a streamed answer, settled atomically (real SQLite, real Redis), never shown to the caller.
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { ConfigError, loadConfig } from '../src/config.js'
import { compileCostExpr } from '../src/metering/price.js'
import { createContext, meter, reportedCost, settle, settleReported } from '../src/pipeline/index.js'
import { Quotas } from '../src/quota/index.js'
import type { Store } from '../src/store/index.js'
import { SqliteStore } from '../src/store/sqlite.js'
import { ToolRegistry } from '../src/tools/index.js'
import { join } from 'node:path'
import { ManualClock, SECRET, build, client, issue, tempDir, testConfig } from './helper.js'
import { rawRequest } from './call-helper.js'
import { captureLog, type CapturedLog } from './support/logs.js'
import { deletePrefix, testRedisUrl, uniquePrefix } from './support/redis.js'
import { startUpstream, type Upstream } from './support/upstream.js'

const JSON_CT = { 'content-type': 'application/json' }

interface Gateway { app: FastifyInstance, base: string, port: number, log: CapturedLog, token: string }

/** An app on a free port with `tools` at `up`, the agent's quota at `limit` a day, its access log captured. */
async function gateway (t: Test, up: Upstream, tools: Array<Record<string, unknown>>, limit = 100, store?: Record<string, unknown>): Promise<Gateway> {
  const config = testConfig(t, {
    clients: [client('agent', { quota: { limit, window: '1d' } })],
    tools: tools.map(tool => ({ url: `${up.origin}/${tool.name as string}`, audience: `tool:${tool.name as string}`, scopes: ['tools:call'], ...tool })),
    ...(store !== undefined ? { store } : {})
  })
  const log = captureLog(config, 'info')
  const app = await build(t, config, { loggerInstance: log.logger, clock: new ManualClock().fn })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const port = (app.server.address() as AddressInfo).port
  const token = (await issue(app)).access_token as string
  return { app, base: `http://127.0.0.1:${port}`, port, log, token }
}

async function used (g: Gateway): Promise<number> {
  const res = await request(`${g.base}/quota`, { headers: { authorization: `Bearer ${g.token}` } })
  return ((await res.body.json()) as { used: number }).used
}

async function call (g: Gateway, body: unknown): Promise<{ status: number, headers: Record<string, unknown>, body: any }> {
  const res = await request(`${g.base}/call`, { method: 'POST', headers: { ...JSON_CT, authorization: `Bearer ${g.token}` }, body: JSON.stringify(body) })
  const text = await res.body.text()
  let parsed: unknown = text
  try { parsed = JSON.parse(text) } catch {}
  return { status: res.statusCode, headers: res.headers, body: parsed }
}

/** The access-log line of the request with this X-Request-Id (written when the answer finished). */
function accessLine (g: Gateway, requestId: unknown): any {
  return g.log.parsed.find(l => l.msg === 'request' && l.reqId === requestId)
}

function loadWith (tool: Record<string, unknown>): () => unknown {
  return () => loadConfig({ raw: { dataDir: '/tmp/unused', tools: [{ name: 'priced', url: 'http://127.0.0.1:9/x', audience: 'tool:x', ...tool }] }, env: { TOLLGATE_SECRET: SECRET } })
}

t.test('a costExpr that does not compile, or is not bounded, is a config error naming tools.N.costExpr', async t => {
  const refused: Array<[string, RegExp]> = [
    ['args.tokens +', /^config: tools\.0\.costExpr: does not compile/],
    ['nope * 2', /^config: tools\.0\.costExpr: does not compile/],
    ['"ten"', /^config: tools\.0\.costExpr: must give a number \(int, uint or double\), not string/],
    ['size > 10', /must give a number/],
    ['args.items.map(x, args.items.size()).size()', /must not read args inside a macro/],
    ['args.a.map(x, [1, 2].map(y, y)).size()', /must not nest macros/],
    ['args.s.matches("(a+)+$") ? 1 : 2', /must not call matches\(\)/],
    [`1${' + 1'.repeat(300)}`, /longer than 1024 characters/],
    [`1${' + 1'.repeat(200)}`, /does not compile: .*maxAstNodes/]
  ]
  for (const [expr, message] of refused) {
    t.throws(loadWith({ costExpr: expr }), message, expr.slice(0, 60))
    t.throws(loadWith({ costExpr: expr }), ConfigError)
  }
  t.throws(() => loadConfig({
    raw: { dataDir: '/tmp/unused', tools: [{ name: 'm', url: 'http://127.0.0.1:9/mcp', audience: 'tool:m', protocol: 'mcp', mcpTools: { search: { costExpr: 'args.q +' } } }] },
    env: { TOLLGATE_SECRET: SECRET }
  }), /^config: tools\.0\.mcpTools\.search\.costExpr: does not compile/, 'an MCP tool entry too')
  // Positive controls: these load, and a registry built from the config prices with them.
  for (const expr of ['int(args.tokens) * 2', '1 + size / 1024', 'has(args.model) && args.model == "large" ? 10u : 1u', 'args.items.map(x, int(x.n)).size()', '"tools:premium" in scopes ? 0.0 : 3.0']) {
    t.doesNotThrow(loadWith({ costExpr: expr }), expr)
  }
  const registry = new ToolRegistry(loadConfig({ raw: { dataDir: '/tmp/unused', tools: [{ name: 'priced', url: 'http://127.0.0.1:9/x', audience: 'tool:x', costExpr: 'int(args.n) + size' }] }, env: { TOLLGATE_SECRET: SECRET } }).tools)
  t.equal(registry.get('priced').price?.({ args: { n: 4 }, size: 3, method: 'POST', path: '', sub: 's', client_id: 'c', scopes: [] }), 7)
})

t.test('the price is an integer in [0, 10^9]: ints, uints and integral doubles count; anything else is cost_unavailable', async t => {
  const input = { size: 0, method: 'POST', path: '', sub: 'agent', client_id: 'agent', scopes: ['tools:call'] }
  const price = compileCostExpr('args.v')
  t.equal(price({ ...input, args: { v: 7 } }), 7, 'an integral double')
  t.equal(compileCostExpr('7u')({ ...input, args: {} }), 7, 'a uint')
  t.equal(compileCostExpr('1000000000')({ ...input, args: {} }), 1e9, 'the top of the range')
  for (const v of [2.5, -1, 1e9 + 1, 'x', null, [1], true]) {
    t.throws(() => price({ ...input, args: { v } }), { code: 'cost_unavailable', statusCode: 400 }, JSON.stringify(v))
  }
  t.throws(() => compileCostExpr('9223372036854775807 + int(args.v)')({ ...input, args: { v: 1 } }), { code: 'cost_unavailable' }, 'int64 overflow')
  t.throws(() => compileCostExpr('int(args.v)')({ ...input, args: {} }), { code: 'cost_unavailable' }, 'a missing argument')
  const all = compileCostExpr('size + (method == "PUT" ? 100 : 0) + (path == "a/b" ? 1000 : 0) + (sub == "agent" ? 10000 : 0) + (client_id == "agent" ? 100000 : 0) + ("tools:call" in scopes ? 1000000 : 0)')
  t.equal(all({ ...input, args: {}, size: 3, method: 'PUT', path: 'a/b' }), 1_111_103, 'every variable of CONTRACT §10')
})

t.test('a costExpr prices POST /call by an argument and a pass-through by its body size and JSON body', async t => {
  const up = await startUpstream(t)
  const g = await gateway(t, up, [
    { name: 'chat', costExpr: 'int(args.tokens) * 2' },
    { name: 'search', costExpr: 'size / 100 + (has(args.pages) ? int(args.pages) : 0)' }
  ])
  const first = await call(g, { tool: 'chat', arguments: { tokens: 7 } })
  t.equal(first.status, 200)
  t.equal(first.headers.ratelimit, '"quota";r=86;t=43200', 'the answer reports the priced charge')
  t.equal(await used(g), 14, 'quota used equals the price')
  t.equal(accessLine(g, first.headers['x-request-id'])?.charged, 14, 'the audit line carries the charge')

  // 250 bytes of text: size 250 → 2.
  const text = 'x'.repeat(250)
  const upload = await request(`${g.base}/call/search/upload`, { method: 'POST', headers: { 'content-type': 'text/plain', authorization: `Bearer ${g.token}` }, body: text })
  t.equal(upload.statusCode, 200)
  await upload.body.dump()
  t.equal(await used(g), 16, 'priced by body size')
  t.equal(up.seen.at(-1)?.body.toString(), text, 'the tool got the exact bytes')

  // A JSON body is `args`: 4 pages and 101 bytes → 5.
  const doc = JSON.stringify({ pages: 4, text: 'y'.repeat(80) })
  const json = await request(`${g.base}/call/search/index`, { method: 'PUT', headers: { ...JSON_CT, authorization: `Bearer ${g.token}` }, body: doc })
  t.equal(json.statusCode, 200)
  await json.body.dump()
  t.equal(doc.length, 101)
  t.equal(await used(g), 21, 'priced by the JSON body and its size')
  t.equal(up.seen.at(-1)?.body.toString(), doc)
  t.equal(up.seen.at(-1)?.method, 'PUT')

  // No body: args is {}, size 0 → 0.
  const get = await request(`${g.base}/call/search/status`, { headers: { authorization: `Bearer ${g.token}` } })
  t.equal(get.statusCode, 200)
  await get.body.dump()
  t.equal(await used(g), 21, 'a GET without a body costs 0 here')
  t.equal(up.seen.length, 4)
})

t.test('a call the costExpr cannot price is 400 cost_unavailable: nothing charged, nothing forwarded', async t => {
  const up = await startUpstream(t)
  const g = await gateway(t, up, [
    { name: 'chat', costExpr: 'int(args.tokens)' },
    { name: 'search', costExpr: 'has(args.pages) ? int(args.pages) : 1' }
  ])
  for (const args of [{}, { tokens: 'many' }, { tokens: -3 }, { tokens: 2e9 }]) {
    const res = await call(g, { tool: 'chat', arguments: args })
    t.equal(res.status, 400, JSON.stringify(args))
    t.equal(res.body.code, 'cost_unavailable')
    t.match(res.headers['content-type'], /^application\/problem\+json/)
  }
  const bad = await request(`${g.base}/call/search/index`, { method: 'POST', headers: { ...JSON_CT, authorization: `Bearer ${g.token}` }, body: '{"pages": 3' })
  t.equal(bad.statusCode, 400)
  t.equal(((await bad.body.json()) as { code: string }).code, 'cost_unavailable', 'a JSON body that does not parse cannot be priced')
  t.equal(await used(g), 0, 'nothing charged')
  t.equal(up.seen.length, 0, 'the upstream saw nothing')
  // Positive control: the same tools price and forward a good call.
  t.equal((await call(g, { tool: 'chat', arguments: { tokens: 3 } })).status, 200)
  t.equal(await used(g), 3)
  t.equal(up.seen.length, 1)
})

t.test('a tool without costExpr is charged its fixed cost; a body above server.bodyLimit is 413 before pricing', async t => {
  const up = await startUpstream(t)
  const g = await gateway(t, up, [{ name: 'chat', cost: 3 }, { name: 'search', costExpr: 'size' }])
  t.equal((await call(g, { tool: 'chat', arguments: { tokens: 1000 } })).status, 200)
  t.equal(await used(g), 3)
  const big = await request(`${g.base}/call/search/upload`, { method: 'POST', headers: { 'content-type': 'text/plain', authorization: `Bearer ${g.token}` }, body: 'z'.repeat(1_048_577) })
  t.equal(big.statusCode, 413)
  await big.body.dump()
  t.equal(await used(g), 3, 'nothing charged')
  t.equal(up.seen.length, 1)
})

t.test('an MCP tool entry with a costExpr prices each tools/call by its params.arguments', async t => {
  const up = await startUpstream(t)
  const g = await gateway(t, up, [{ name: 'chat', protocol: 'mcp', mcpTools: { search: { costExpr: 'int(args.pages) * 3' }, '*': { cost: 1 } } }])
  const rpc = (id: number, name: string, args: unknown): unknown => ({ jsonrpc: '2.0', id, method: 'tools/call', params: { name, arguments: args } })
  const post = async (body: unknown): Promise<{ status: number, body: any }> => {
    const res = await request(`${g.base}/call/chat`, { method: 'POST', headers: { ...JSON_CT, accept: 'application/json, text/event-stream', authorization: `Bearer ${g.token}` }, body: JSON.stringify(body) })
    const text = await res.body.text()
    return { status: res.statusCode, body: text === '' ? undefined : JSON.parse(text) }
  }
  t.equal((await post([rpc(1, 'search', { pages: 4 }), rpc(2, 'other', {})])).status, 200)
  t.equal(await used(g), 13, 'search at 3 × 4 pages, plus "*" at 1')
  const bad = await post(rpc(3, 'search', { pages: 'all' }))
  t.equal(bad.status, 400)
  t.equal(bad.body.code, 'cost_unavailable')
  t.equal(await used(g), 13, 'nothing charged')
  t.equal(up.seen.length, 1, 'nothing forwarded')
})

t.test('the settle stage alone: Tollgate-Cost values, settling, a refund after it, a store that fails', async t => {
  for (const [value, want] of [['7', 7], [' 12 ', 12], ['0', 0], ['1000000000', 1e9]] as const) t.equal(reportedCost(value), want, JSON.stringify(value))
  for (const value of [undefined, '', '-1', '+1', '1.0', '1e3', '0x10', '1000000001', '99999999999', 'ten', ['1', '2']]) t.equal(reportedCost(value), undefined, `malformed: ${JSON.stringify(value)}`)

  const store = SqliteStore.open(join(tempDir(t), 'settle.db'))
  t.teardown(async () => { await store.close() })
  const quotas = new Quotas(store, new ManualClock().fn)
  const tools = new ToolRegistry([
    { name: 'chat', url: 'http://127.0.0.1:9/chat', audience: 'tool:chat', scopes: [], cost: 5, timeout: 1, refundOnFailure: true, websocket: false, settle: true },
    { name: 'fixed', url: 'http://127.0.0.1:9/fixed', audience: 'tool:chat', scopes: [], cost: 5, timeout: 1, refundOnFailure: true, websocket: false }
  ])
  const warnings: string[] = []
  const log = { warn: (_obj: object, msg: string) => { warnings.push(msg) } }
  const charged = async (tool: string): Promise<ReturnType<typeof createContext>> => {
    const ctx = createContext('r', '127.0.0.1')
    ctx.principal = { sub: 'agent', clientId: 'agent', claims: { quota: { limit: 10, window: 86400 } } } as any
    ctx.tool = tools.get(tool)
    await meter(quotas, ctx, 5)
    return ctx
  }
  const usedNow = async (): Promise<number> => (await quotas.balance('agent', { limit: 10, window: 86400 })).used

  const ctx = await charged('chat')
  t.same(await settleReported(quotas, ctx, 8, log), { 'ratelimit-policy': '"quota";q=10;w=86400', ratelimit: '"quota";r=2;t=43200' })
  t.equal(ctx.charged, 8)
  t.equal(await usedNow(), 8)
  t.ok(await settle(quotas, ctx, true, log), 'the body broke off afterwards: refunded')
  t.equal(await usedNow(), 0, 'the refund gave back the settled 8, not the reserved 5')
  t.equal(ctx.charged, 0)
  t.equal(await settleReported(quotas, ctx, 3, log), undefined, 'a refunded call is not settled again')
  t.equal(await usedNow(), 0)

  const fixed = await charged('fixed')
  t.equal(await settleReported(quotas, fixed, 1, log), undefined, 'a tool without settle: true keeps its charge')
  t.equal(fixed.charged, 5)
  t.equal(await usedNow(), 5)

  const failing = new Quotas(new Proxy(store, { get: (target, name) => name === 'settleQuota' ? async () => { throw new Error('down') } : Reflect.get(target, name, target) }) as Store, new ManualClock().fn)
  const kept = await charged('chat')
  t.equal(await settleReported(failing, kept, 9, log), undefined)
  t.equal(kept.charged, 5, 'a settlement the store cannot take keeps the reservation')
  t.same(warnings, ['quota settlement failed'])
  t.equal(await usedNow(), 10)
})

/** Upstream answers for settlement: the reported cost comes from the request (`report`). */
function settlingUpstream (up: Upstream): void {
  // POST /chat: `{"report": "<value>"}` → Tollgate-Cost: <value> as a header.
  up.routes.set('/chat', (_req, res, body) => {
    const report = (JSON.parse(body.toString()) as { arguments?: { report?: string } }).arguments?.report
    res.setHeader('content-type', 'application/json')
    if (report !== undefined) res.setHeader('Tollgate-Cost', report)
    res.setHeader('Tollgate-Charged', '999999')
    res.end('{"ok":true}')
  })
  // GET /search/stream?report=<value>: a chunked answer with Tollgate-Cost as a trailer.
  up.routes.set('/search/stream', (req, res) => {
    const report = new URL(req.url ?? '', 'http://x').searchParams.get('report')
    res.setHeader('content-type', 'text/plain')
    res.setHeader('Trailer', 'Tollgate-Cost')
    res.write('part one\n')
    setTimeout(() => {
      res.write('part two\n')
      if (report !== null) res.addTrailers({ 'Tollgate-Cost': report })
      res.end()
    }, 20)
  })
}

function settlementSuite (t: Test, store: () => Promise<Record<string, unknown> | undefined>): void {
  t.test('a Tollgate-Cost header settles the reservation up and down; the caller sees Tollgate-Charged, never Tollgate-Cost', async t => {
    const up = await startUpstream(t)
    settlingUpstream(up)
    const g = await gateway(t, up, [{ name: 'chat', cost: 5, settle: true }], 100, await store())
    const higher = await call(g, { tool: 'chat', arguments: { report: '12' } })
    t.equal(higher.status, 200)
    t.equal(higher.headers['tollgate-charged'], '12')
    t.equal(higher.headers['tollgate-cost'], undefined, 'the tool\'s Tollgate-Cost never reaches the caller')
    t.equal(higher.headers.ratelimit, '"quota";r=88;t=43200', 'the RateLimit fields are after the settlement')
    t.equal(await used(g), 12, 'reserved 5, reported 12: usage +7')
    t.equal(accessLine(g, higher.headers['x-request-id'])?.charged, 12, 'the audit line carries the settled charge')

    const lower = await call(g, { tool: 'chat', arguments: { report: '1' } })
    t.equal(lower.headers['tollgate-charged'], '1')
    t.equal(await used(g), 13, 'reserved 5, reported 1: usage −4')
    const zero = await call(g, { tool: 'chat', arguments: { report: ' 0 ' } })
    t.equal(zero.headers['tollgate-charged'], '0')
    t.equal(await used(g), 13, 'reported 0: the whole reservation given back')

    for (const malformed of ['abc', '-1', '1.5', '1e3', '', '2000000000']) {
      const res = await call(g, { tool: 'chat', arguments: { report: malformed } })
      t.equal(res.status, 200)
      t.equal(res.headers['tollgate-charged'], '5', `malformed ${JSON.stringify(malformed)}: the reservation is the charge`)
      t.equal(res.headers['tollgate-cost'], undefined)
    }
    t.equal(await used(g), 13 + 6 * 5)
    const missing = await call(g, { tool: 'chat', arguments: {} })
    t.equal(missing.headers['tollgate-charged'], undefined, 'no report, no Tollgate-Charged')
    t.equal(await used(g), 48)
  })

  t.test('an increase applies past the limit and the next call is refused', async t => {
    const up = await startUpstream(t)
    settlingUpstream(up)
    const g = await gateway(t, up, [{ name: 'chat', cost: 5, settle: true }], 20, await store())
    const res = await call(g, { tool: 'chat', arguments: { report: '50' } })
    t.equal(res.status, 200)
    t.equal(res.headers['tollgate-charged'], '50')
    t.equal(res.headers.ratelimit, '"quota";r=0;t=43200')
    t.equal(await used(g), 50, 'the work was done: usage 50 of 20')
    const next = await call(g, { tool: 'chat', arguments: { report: '0' } })
    t.equal(next.status, 429)
    t.equal(next.body.code, 'quota_exceeded')
    t.equal(up.seen.length, 1, 'the refused call never reached the tool')
  })

  t.test('a trailer of a streamed answer settles up and down; the trailer never reaches the caller', async t => {
    const up = await startUpstream(t)
    settlingUpstream(up)
    const g = await gateway(t, up, [{ name: 'search', cost: 5, settle: true }], 100, await store())
    const stream = async (report?: string): Promise<{ status: number, head: string, body: string }> =>
      await rawRequest(g.port, 'GET', `/call/search/stream${report === undefined ? '' : `?report=${encodeURIComponent(report)}`}`, { authorization: `Bearer ${g.token}`, te: 'trailers' })
    const higher = await stream('9')
    t.equal(higher.status, 200)
    t.match(higher.head, /transfer-encoding: chunked/i, 'a streamed answer')
    t.match(higher.body, /part one\n[\s\S]*part two\n/)
    t.notMatch(higher.head + higher.body, /tollgate-cost/i, 'no Tollgate-Cost in the head, the body or a trailer')
    t.notMatch(higher.head, /tollgate-charged/i, 'reported in a trailer: the charge is in the audit line, not a header')
    t.equal(await used(g), 9, 'reserved 5, reported 9 in the trailer')
    const id = /x-request-id: (\S+)/i.exec(higher.head)?.[1]
    t.equal(accessLine(g, id)?.charged, 9, 'the audit line carries the settled charge')

    await stream('2')
    t.equal(await used(g), 11, 'reserved 5, reported 2: usage −3')
    await stream('nope')
    t.equal(await used(g), 16, 'a malformed trailer keeps the reservation')
    await stream()
    t.equal(await used(g), 21, 'no trailer keeps the reservation')
    t.equal(up.seen.length, 4)
  })

  t.test('a tool without settle: true cannot change the charge, and its Tollgate-Cost is still dropped', async t => {
    const up = await startUpstream(t)
    settlingUpstream(up)
    const g = await gateway(t, up, [{ name: 'chat', cost: 5 }, { name: 'search', cost: 5 }], 100, await store())
    const res = await call(g, { tool: 'chat', arguments: { report: '50' } })
    t.equal(res.status, 200)
    t.equal(res.headers['tollgate-cost'], undefined)
    t.equal(res.headers['tollgate-charged'], undefined, 'the tool\'s own Tollgate-Charged is dropped too')
    const streamed = await rawRequest(g.port, 'GET', '/call/search/stream?report=50', { authorization: `Bearer ${g.token}` })
    t.notMatch(streamed.head + streamed.body, /tollgate-cost/i)
    t.equal(await used(g), 10, 'two calls at the fixed cost')
  })
}

t.test('settlement on SQLite', async t => {
  settlementSuite(t, async () => undefined)
})

t.test('settlement on Redis', async t => {
  const url = await testRedisUrl(t)
  if (url === undefined) return
  settlementSuite(t, async () => {
    const keyPrefix = uniquePrefix('settle')
    t.teardown(async () => { await deletePrefix(url, keyPrefix) })
    return { redis: url, keyPrefix }
  })
})
