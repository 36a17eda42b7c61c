// Tracing (docs/tracing.md): a real OTLP/HTTP receiver on a free port decodes what the gateway
// exports (JSON encoding), a real upstream tool records the `traceparent` it gets, and the gateway
// listens on a real port. Spans are read after app.close(), which sends the last batch.
import type { IncomingHttpHeaders } from 'node:http'
import t from 'tap'
import { request } from 'undici'
import { loadConfig } from '../src/config.js'
import { tracesUrl } from '../src/tracing.js'
import { CLIENT_SECRET, SECRET, client, issue, type TestContext } from './helper.js'
import { startApp } from './call-helper.js'
import { startUpstream } from './support/upstream.js'

interface Receiver {
  origin: string
  /** Every POST body, as received. */
  payloads: string[]
  /** Every request's path and content type. */
  requests: Array<{ url: string, contentType: string | undefined }>
}

/** An OTLP/HTTP traces receiver (node:http): answers 200 with an empty ExportTraceServiceResponse. */
async function startReceiver (t: TestContext): Promise<Receiver> {
  const payloads: string[] = []
  const requests: Receiver['requests'] = []
  const server = await startUpstream(t, {
    handler: (req, res, body) => {
      requests.push({ url: req.url ?? '', contentType: req.headers['content-type'] })
      payloads.push(body.toString('utf8'))
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end('{}')
    }
  })
  return { origin: server.origin, payloads, requests }
}

interface DecodedSpan {
  traceId: string
  spanId: string
  parentSpanId: string | undefined
  name: string
  kind: number
  attributes: Record<string, unknown>
  status: { code?: number, message?: string }
}

const SPAN_KIND = { INTERNAL: 1, SERVER: 2, CLIENT: 3 }
const STATUS_ERROR = 2

/** The spans of OTLP JSON ExportTraceServiceRequest bodies, attributes flattened. */
function decode (payloads: string[]): DecodedSpan[] {
  const spans: DecodedSpan[] = []
  for (const payload of payloads) {
    const body = JSON.parse(payload) as { resourceSpans: Array<{ scopeSpans: Array<{ spans: any[] }> }> }
    for (const rs of body.resourceSpans) {
      for (const ss of rs.scopeSpans) {
        for (const s of ss.spans) {
          const attributes: Record<string, unknown> = {}
          for (const a of s.attributes ?? []) {
            const v = a.value
            attributes[a.key] = v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : undefined) ?? v.boolValue ?? v.doubleValue
          }
          spans.push({
            traceId: s.traceId,
            spanId: s.spanId,
            parentSpanId: s.parentSpanId === '' ? undefined : s.parentSpanId,
            name: s.name,
            kind: s.kind,
            attributes,
            status: s.status ?? {}
          })
        }
      }
    }
  }
  return spans
}

function serviceNames (payloads: string[]): string[] {
  return payloads.flatMap(p => (JSON.parse(p).resourceSpans as any[]).map(rs => rs.resource.attributes.find((a: any) => a.key === 'service.name')?.value.stringValue))
}

/** The traceparent a tool received: `00-<trace id>-<parent id>-<flags>`. */
function traceparentOf (headers: IncomingHttpHeaders): { traceId: string, parentId: string, flags: string } {
  const m = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(String(headers.traceparent))
  if (m === null) throw new Error(`no valid traceparent: ${String(headers.traceparent)}`)
  return { traceId: m[1] as string, parentId: m[2] as string, flags: m[3] as string }
}

async function call (base: string, token: string, extra: Record<string, string> = {}): Promise<number> {
  const res = await request(`${base}/call`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}`, ...extra },
    body: JSON.stringify({ tool: 'chat', arguments: { q: 'hello' } })
  })
  await res.body.dump()
  return res.statusCode
}

const STAGES = ['authenticate', 'authorize', 'limit', 'meter', 'relay']

t.test('a /call is one trace: the request span, a child span per stage and for the upstream call, whose traceparent the tool gets', async t => {
  const receiver = await startReceiver(t)
  const up = await startUpstream(t)
  const { app, base } = await startApp(t, up, [{ name: 'chat' }], { tracing: { otlpEndpoint: receiver.origin, serviceName: 'gateway-under-test' } })
  t.ok(app.tracing, 'tracing is on')
  const token = (await issue(app)).access_token as string
  t.equal(await call(base, token), 200)
  await app.close()

  t.ok(receiver.requests.length > 0, 'spans were exported')
  for (const r of receiver.requests) {
    t.equal(r.url, '/v1/traces', 'sent to <endpoint>/v1/traces')
    t.equal(r.contentType, 'application/json')
  }
  t.same([...new Set(serviceNames(receiver.payloads))], ['gateway-under-test'])
  const spans = decode(receiver.payloads)
  const server = spans.find(s => s.name === 'POST /call')
  if (server === undefined) throw new Error('no POST /call span')
  const trace = spans.filter(s => s.traceId === server.traceId)
  t.same(new Set(spans.filter(s => s.name !== 'POST /token').map(s => s.traceId)), new Set([server.traceId]), 'one trace id across the call\'s spans')
  t.not(spans.find(s => s.name === 'POST /token')?.traceId, server.traceId, 'issuing the token was a trace of its own')

  t.equal(server.kind, SPAN_KIND.SERVER)
  t.equal(server.parentSpanId, undefined, 'the request span is the root')
  t.match(server.attributes, {
    'http.request.method': 'POST',
    'url.path': '/call',
    'http.route': '/call',
    'http.response.status_code': 200,
    'tollgate.tool': 'chat',
    'tollgate.client_id': 'agent',
    'enduser.id': 'agent'
  })
  t.same(trace.map(s => s.name).sort(), ['POST /call', ...STAGES, 'upstream'].sort(), 'exactly the stage spans and the upstream span')
  for (const name of [...STAGES, 'upstream']) {
    const span = trace.find(s => s.name === name)
    t.equal(span?.parentSpanId, server.spanId, `${name} is a child of the request span`)
    t.not(span?.status.code, STATUS_ERROR, `${name} did not fail`)
  }
  const upstream = trace.find(s => s.name === 'upstream') as DecodedSpan
  t.equal(upstream.kind, SPAN_KIND.CLIENT)
  t.match(upstream.attributes, { 'http.request.method': 'POST', 'server.address': '127.0.0.1', 'server.port': up.port, 'http.response.status_code': 200 })

  const seen = up.seen[0]
  if (seen === undefined) throw new Error('the tool was not called')
  const parent = traceparentOf(seen.headers)
  t.equal(parent.traceId, server.traceId, 'the tool continues the same trace')
  t.equal(parent.parentId, upstream.spanId, 'with the upstream span as its parent')
  t.equal(parent.flags, '01', 'sampled')

  // Nothing secret anywhere in what was exported: not the access token, not the downstream token
  // the tool got, not the client's secret, not the key-encryption secret.
  const downstream = String(seen.headers.authorization).replace(/^Bearer /, '')
  t.ok(downstream.length > 20, 'the tool got a downstream token')
  const everything = receiver.payloads.join('\n')
  for (const [what, secret] of [['access token', token], ['downstream token', downstream], ['client secret', CLIENT_SECRET], ['TOLLGATE_SECRET', SECRET]] as const) {
    t.notOk(everything.includes(secret), `no ${what} in the exported spans`)
    // A token's signature alone is unique to it too.
    if (what.endsWith('token')) t.notOk(everything.includes(secret.split('.')[2] as string), `no part of the ${what}`)
  }
  t.notOk(/authorization|bearer/i.test(everything), 'no Authorization header or scheme in any attribute')
})

t.test('a caller\'s traceparent is continued, and the tool gets Tollgate\'s upstream span as parent, not the caller\'s header', async t => {
  const receiver = await startReceiver(t)
  const up = await startUpstream(t)
  const { app, base } = await startApp(t, up, [{ name: 'chat' }], { tracing: { otlpEndpoint: receiver.origin } })
  const token = (await issue(app)).access_token as string
  const callerTrace = '4bf92f3577b34da6a3ce929d0e0e4736'
  const callerSpan = '00f067aa0ba902b7'
  const traceparent = `00-${callerTrace}-${callerSpan}-01`
  t.equal(await call(base, token, { traceparent, tracestate: 'vendor=abc' }), 200)
  await app.close()

  const spans = decode(receiver.payloads)
  const server = spans.find(s => s.name === 'POST /call') as DecodedSpan
  t.equal(server.traceId, callerTrace, 'the caller\'s trace goes on')
  t.equal(server.parentSpanId, callerSpan, 'the request span is a child of the caller\'s span')
  const upstream = spans.find(s => s.name === 'upstream' && s.traceId === callerTrace) as DecodedSpan
  const seen = up.seen[0]?.headers ?? {}
  t.not(seen.traceparent, traceparent, 'the caller\'s traceparent was not forwarded unchanged')
  t.same(traceparentOf(seen), { traceId: callerTrace, parentId: upstream.spanId, flags: '01' })
  t.equal(seen.tracestate, 'vendor=abc', 'the trace state goes on with the trace')
})

t.test('a caller\'s unsampled trace is followed: nothing recorded, the flag passed on', async t => {
  const receiver = await startReceiver(t)
  const up = await startUpstream(t)
  const { app, base } = await startApp(t, up, [{ name: 'chat' }], { tracing: { otlpEndpoint: receiver.origin } })
  const token = (await issue(app)).access_token as string
  const callerTrace = '0af7651916cd43dd8448eb211c80319c'
  t.equal(await call(base, token, { traceparent: `00-${callerTrace}-b7ad6b7169203331-00` }), 200)
  await app.close()
  t.notOk(decode(receiver.payloads).some(s => s.traceId === callerTrace), 'no span of the unsampled trace')
  const parent = traceparentOf(up.seen[0]?.headers ?? {})
  t.equal(parent.traceId, callerTrace)
  t.equal(parent.flags, '00')
  t.not(parent.parentId, 'b7ad6b7169203331')
})

t.test('a refused call: the refusing stage\'s span carries the error code, and no later stage runs', async t => {
  const receiver = await startReceiver(t)
  const up = await startUpstream(t)
  const { app, base } = await startApp(t, up, [{ name: 'chat', scopes: ['tools:admin'] }], { tracing: { otlpEndpoint: receiver.origin } })
  const token = (await issue(app)).access_token as string
  t.equal(await call(base, token), 403)
  await app.close()
  t.equal(up.seen.length, 0, 'the tool was not called')

  const spans = decode(receiver.payloads)
  const server = spans.find(s => s.name === 'POST /call') as DecodedSpan
  const trace = spans.filter(s => s.traceId === server.traceId)
  t.same(trace.map(s => s.name).sort(), ['POST /call', 'authenticate', 'authorize'].sort())
  const authorize = trace.find(s => s.name === 'authorize') as DecodedSpan
  t.same(authorize.status, { code: STATUS_ERROR, message: 'insufficient_scope' })
  t.equal(authorize.attributes['error.type'], 'insufficient_scope')
  t.match(server.attributes, { 'error.type': 'insufficient_scope', 'http.response.status_code': 403 })
  t.not(server.status.code, STATUS_ERROR, 'a 4xx is not an error of the server span (HTTP conventions)')
})

t.test('a tool that cannot be reached: the upstream span fails with the code and settle refunds', async t => {
  const receiver = await startReceiver(t)
  // No upstream: the tool's URL is a closed port.
  const { app, base } = await startApp(t, undefined, [{ name: 'chat' }], { tracing: { otlpEndpoint: receiver.origin } })
  const token = (await issue(app)).access_token as string
  t.equal(await call(base, token), 502)
  await app.close()
  const spans = decode(receiver.payloads)
  const server = spans.find(s => s.name === 'POST /call') as DecodedSpan
  const trace = spans.filter(s => s.traceId === server.traceId)
  const upstream = trace.find(s => s.name === 'upstream') as DecodedSpan
  t.same(upstream.status, { code: STATUS_ERROR, message: 'upstream_unavailable' })
  const settle = trace.find(s => s.name === 'settle') as DecodedSpan
  t.equal(settle?.parentSpanId, server.spanId)
  t.equal(settle?.attributes['tollgate.refunded'], true)
  t.match(server.attributes, { 'error.type': 'upstream_unavailable', 'http.response.status_code': 502 })
  t.equal(server.status.code, STATUS_ERROR)
})

t.test('GET /validate: the request span with authenticate, authorize and limit; never the query', async t => {
  const receiver = await startReceiver(t)
  const { app, base } = await startApp(t, undefined, [], { tracing: { otlpEndpoint: receiver.origin } })
  const token = (await issue(app)).access_token as string
  const res = await request(`${base}/validate?audience=tool:chat&scope=tools:call`, { headers: { authorization: `Bearer ${token}` } })
  await res.body.dump()
  t.equal(res.statusCode, 200)
  await app.close()
  const spans = decode(receiver.payloads)
  const server = spans.find(s => s.name === 'GET /validate') as DecodedSpan
  t.match(server.attributes, { 'url.path': '/validate', 'http.route': '/validate', 'http.response.status_code': 200 })
  t.same(spans.filter(s => s.traceId === server.traceId && s !== server).map(s => [s.name, s.parentSpanId]),
    [['authenticate', server.spanId], ['authorize', server.spanId], ['limit', server.spanId]])
  t.notOk(receiver.payloads.join('').includes('tools:call'), 'the query is not recorded')
})

t.test('tracing off (the default): no exporter, nothing sent, and a caller\'s traceparent passes through unchanged', async t => {
  const receiver = await startReceiver(t)
  const up = await startUpstream(t)
  const { app, base } = await startApp(t, up, [{ name: 'chat' }])
  t.equal(app.tracing, undefined, 'no tracer provider or exporter was built')
  const token = (await issue(app)).access_token as string
  const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
  t.equal(await call(base, token, { traceparent, tracestate: 'vendor=abc' }), 200)
  await app.close()
  t.equal(up.seen[0]?.headers.traceparent, traceparent)
  t.equal(up.seen[0]?.headers.tracestate, 'vendor=abc')
  t.equal(receiver.requests.length, 0, 'nothing reached the receiver')
})

t.test('config: tracing is on only with an endpoint; the standard OTEL_* variables map onto it', async t => {
  const load = (raw: Record<string, unknown>, env: Record<string, string> = {}): ReturnType<typeof loadConfig> =>
    loadConfig({ raw: { dataDir: '/nonexistent-unused', clients: [client('a')], ...raw }, env: { TOLLGATE_SECRET: SECRET, ...env } })
  t.same(load({}).tracing, { serviceName: 'tollgate', enabled: true })
  t.equal(tracesUrl(load({}).tracing), undefined, 'off by default')
  t.equal(tracesUrl(load({ tracing: { otlpEndpoint: 'http://collector:4318' } }).tracing), 'http://collector:4318/v1/traces')
  t.equal(tracesUrl(load({ tracing: { otlpEndpoint: 'https://otlp.example/base/' } }).tracing), 'https://otlp.example/base/v1/traces')
  const fromEnv = load({}, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_SERVICE_NAME: 'edge-gw' })
  t.equal(tracesUrl(fromEnv.tracing), 'http://collector:4318/v1/traces')
  t.equal(fromEnv.tracing.serviceName, 'edge-gw')
  t.equal(tracesUrl(load({ tracing: { otlpEndpoint: 'http://a:4318' } }, { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://b:4318/custom' }).tracing), 'http://b:4318/custom', 'the traces endpoint is used as it is and wins')
  t.equal(tracesUrl(load({}, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_SDK_DISABLED: 'true' }).tracing), undefined, 'OTEL_SDK_DISABLED turns it off')
  t.equal(load({}, { OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.25' }).tracing.sampleRatio, 0.25)
  t.throws(() => load({ tracing: { otlpEndpoint: 'collector:4318' } }), /tracing\.otlpEndpoint: must be http or https/)
  t.throws(() => load({ tracing: { otlpEndpoint: 'http://user:pass@collector:4318' } }), /tracing\.otlpEndpoint: must not carry credentials/)
  t.throws(() => load({ tracing: { otlpEndpoint: 'http://c:4318', headers: {} } }), /tracing\.headers: unknown key/)
  t.throws(() => load({ tracing: { sampleRatio: 2 } }), /tracing\.sampleRatio/)
  t.throws(() => load({}, { OTEL_TRACES_SAMPLER: 'jaeger_remote' }), /OTEL_TRACES_SAMPLER/)
})
