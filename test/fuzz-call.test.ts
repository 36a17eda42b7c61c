// Property-based fuzzing of /call (fast-check, bounded runs) against a real, healthy upstream on a
// free port: whatever the body, headers, method or path, the gateway never answers 5xx (with a
// healthy tool nothing is an upstream failure), a pass-through never leaves the tool's base path,
// and random interleavings of parallel calls with random costs never exceed the quota.
import fc from 'fast-check'
import t from 'tap'
import { request } from 'undici'
import { rawRequest, startApp } from './call-helper.js'
import { startUpstream } from './support/upstream.js'
import { ManualClock, client, issue } from './helper.js'
import { advance } from './lifecycle-helper.js'

const RUNS = Number(process.env.TOLLGATE_FUZZ_RUNS ?? 150)
const HIGH = { max: 1_000_000, window: '1m' }

const printable = fc.string({ unit: 'grapheme-ascii', maxLength: 48 })
const anyText = fc.string({ unit: 'binary', maxLength: 200 })
// Weighted towards what gets through, so the upstream path is exercised as often as the refusals.
const toolName = fc.oneof({ arbitrary: fc.constantFrom('chat', 'search'), weight: 4 }, fc.constantFrom('other', 'nope', '', 'CHAT', 'chat ', '__proto__', 'constructor', 'toString'))
const caller = fc.oneof({ arbitrary: fc.constant('agent'), weight: 4 }, fc.constantFrom('other', 'none', 'garbage'))
const json = fc.json({ maxDepth: 3 })
const contentType = fc.oneof({ arbitrary: fc.constant('application/json'), weight: 3 }, fc.constantFrom(undefined, 'application/json; charset=utf-8', 'application/JSON', 'text/plain', 'application/x-www-form-urlencoded', 'application/octet-stream', 'multipart/form-data; boundary=x', 'application/problem+json', '*/*', 'application/json; charset=latin1'))
/** Request headers a caller (or an attacker) may add; values are printable so every client can send them. */
const headerSet = fc.dictionary(
  fc.constantFrom('x-request-id', 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'forwarded', 'x-auth-subject', 'accept', 'accept-encoding',
    'cookie', 'origin', 'connection', 'te', 'trailer', 'keep-alive', 'proxy-authorization', 'expect', 'range', 'if-none-match', 'x-api-key', 'via', 'max-forwards', 'x-custom'),
  fc.oneof(printable, fc.constantFrom('close', 'keep-alive', '100-continue', 'trailers', 'gzip', 'bytes=0-1', 'x-custom, cookie', '127.0.0.1, 10.0.0.1')),
  { maxKeys: 4 }
)
const method = fc.constantFrom('GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS')
const segment = fc.oneof(
  { arbitrary: printable.map(encodeURIComponent), weight: 4 },
  fc.constantFrom('..', '.', '%2e%2e', '%2E%2e', '.%2e', '%2f', '%2F', '%5c', '%00', '%0a', '%ZZ', '%', '%e9', '%c3%a9', 'a;b', '@', 'http:', 'a:b', '~', '!$&\'()*+,;=', 'x', '')
)
const query = fc.option(fc.tuple(printable, printable).map(([k, v]) => `?${encodeURIComponent(k)}=${encodeURIComponent(v)}`), { nil: '' })

/** Each path segment the upstream received, decoded: never a dot segment, never a smuggled separator. */
function staysUnder (url: string, base: string): boolean {
  const path = url.split('?')[0] as string
  if (path !== base && !path.startsWith(`${base}/`)) return false
  return path.slice(base.length).split('/').every(raw => {
    let seg: string
    try { seg = decodeURIComponent(raw) } catch { return true /* sent as the caller's own bytes; no separator hides in it */ }
    return seg !== '.' && seg !== '..' && !seg.includes('/') && !seg.includes('\\')
  })
}

async function fixture (t: any): Promise<{ up: Awaited<ReturnType<typeof startUpstream>>, app: any, port: number, tokens: Record<string, string | undefined> }> {
  const up = await startUpstream(t)
  const { app, port } = await startApp(t, up, [
    { name: 'chat' },
    { name: 'search', path: '/api/v1/search' },
    { name: 'other' }
  ], {
    server: { bodyLimit: 4096 },
    rateLimits: { token: HIGH, perIp: HIGH, perSubject: HIGH },
    clients: [client('agent', { quota: { limit: 1_000_000, window: '1d' } }), client('other', { audiences: ['tool:other'] })]
  })
  const tokens = {
    agent: (await issue(app)).access_token as string,
    other: (await issue(app, {}, 'other')).access_token as string,
    none: undefined,
    garbage: 'a.b.c'
  }
  return { up, app, port, tokens }
}

t.test('POST /call: any body, content type, headers and token, never a 5xx', async t => {
  const { up, app, tokens } = await fixture(t)
  let forwarded = 0
  const body = fc.oneof(
    { arbitrary: fc.record({ tool: toolName, arguments: fc.option(fc.dictionary(printable, json, { maxKeys: 4 }), { nil: undefined }) }, { requiredKeys: ['tool'] }).map(b => JSON.stringify(b)), weight: 4 },
    fc.record({ tool: toolName, arguments: fc.option(json, { nil: undefined }) }, { requiredKeys: [] }).map(b => JSON.stringify(b)),
    fc.record({ tool: fc.oneof(toolName, json), arguments: json }).map(b => JSON.stringify(b)),
    json.map(j => j),
    anyText,
    fc.constantFrom('', '{', '{"tool":"chat"', '{"tool":"chat"}{"tool":"search"}', '{"tool":"chat","tool":"search"}', '{"__proto__":{"tool":"chat"}}', '{"tool":"chat","arguments":[]}', '{"tool":"chat","arguments":null}', 'null', '[]', '"chat"')
  )
  await fc.assert(fc.asyncProperty(body, contentType, headerSet, caller, async (payload, type, extra, who) => {
    const headers: Record<string, string> = { ...extra }
    if (type !== undefined) headers['content-type'] = type
    const token = tokens[who]
    if (token !== undefined) headers.authorization = `Bearer ${token}`
    const before = up.seen.length
    const res = await app.inject({ method: 'POST', url: '/call', headers, payload })
    if (res.statusCode >= 500) throw new Error(`POST /call ${JSON.stringify(headers)} ${JSON.stringify(payload)} → ${res.statusCode} ${res.body}`)
    if (res.statusCode >= 400 && !/^application\/problem\+json/.test(String(res.headers['content-type']))) throw new Error(`not problem+json: ${res.statusCode} ${res.body}`)
    if (res.headers['x-request-id'] === undefined) throw new Error('no X-Request-Id')
    const reached = up.seen.length - before
    if (res.statusCode === 200 && reached !== 1) throw new Error(`200 but the tool saw ${reached} requests`)
    if (res.statusCode !== 200 && reached !== 0) throw new Error(`${res.statusCode} but the tool saw ${reached} requests`)
    if (reached === 1) {
      forwarded++
      const seen = up.seen.at(-1)!
      if (seen.headers.cookie !== undefined || seen.headers['proxy-authorization'] !== undefined) throw new Error('a caller credential reached the tool')
      if (seen.headers.authorization === headers.authorization) throw new Error('the caller\'s token reached the tool')
    }
  }), { numRuns: RUNS })
  t.ok(forwarded > 0, `${RUNS} runs, ${forwarded} forwarded to the tool`)
})

t.test('/call/:tool/*: any method, path, query, headers and body, never a 5xx, never outside the base', async t => {
  const { up, app, tokens } = await fixture(t)
  let forwarded = 0
  const body = fc.option(fc.oneof(anyText, json.map(j => j), fc.uint8Array({ maxLength: 6000 }).map(a => Buffer.from(a))), { nil: undefined })
  await fc.assert(fc.asyncProperty(method, toolName, fc.array(segment, { maxLength: 5 }), query, headerSet, contentType, body, caller,
    async (verb, tool, parts, search, extra, type, payload, who) => {
      const headers: Record<string, string> = { ...extra }
      if (type !== undefined) headers['content-type'] = type
      const token = tokens[who]
      if (token !== undefined) headers.authorization = `Bearer ${token}`
      const url = `/call/${encodeURIComponent(tool)}/${parts.join('/')}${search}`
      const before = up.seen.length
      const res = await app.inject({ method: verb as any, url, headers, ...(payload !== undefined && verb !== 'GET' && verb !== 'HEAD' ? { payload } : {}) })
      if (res.statusCode >= 500) throw new Error(`${verb} ${url} ${JSON.stringify(headers)} → ${res.statusCode} ${res.body}`)
      const reached = up.seen.slice(before)
      forwarded += reached.length
      if (res.statusCode === 200 && reached.length !== 1) throw new Error(`200 but the tool saw ${reached.length} requests`)
      for (const seen of reached) {
        const base = tool === 'search' ? '/api/v1/search' : `/${tool}`
        if (!staysUnder(seen.url, base)) throw new Error(`${url} reached the tool as ${seen.url}`)
        if (seen.method !== verb) throw new Error(`${verb} reached the tool as ${seen.method}`)
      }
    }), { numRuns: RUNS * 2 })
  t.ok(forwarded > 0, `${RUNS * 2} runs, ${forwarded} forwarded to the tool`)
})

t.test('raw request targets over a real socket: never a 5xx, never outside the base', async t => {
  const { up, port, tokens } = await fixture(t)
  // Controls: ordinary targets reach the tool, under its base, as written; so the property below
  // cannot hold merely because every request is refused.
  for (const [target, reaches] of [['/call/chat/a/b', '/chat/a/b'], ['/call/search/x%20y/z.json?q=1', '/api/v1/search/x%20y/z.json?q=1'], ['/call/chat/a.b/..c/', '/chat/a.b/..c/']]) {
    const before = up.seen.length
    const res = await rawRequest(port, 'GET', target as string, { authorization: `Bearer ${tokens.agent as string}` })
    t.equal(res.status, 200, `control: ${target as string}`)
    t.same(up.seen.slice(before).map(s => s.url), [reaches], `control: ${target as string} reaches the tool as ${reaches as string}`)
  }
  let forwarded = 0
  // Bytes no HTTP client would send as written: raw dots, backslashes, absolute forms, UTF-8.
  const rawSegment = fc.oneof(segment, fc.constantFrom('..', '.', '\\..', '..\\', 'a\\b', 'é', '%2e.', 'http://evil.test', '//evil.test', '?', '#frag', '%3f', '%23'))
  await fc.assert(fc.asyncProperty(fc.constantFrom('GET', 'DELETE', 'OPTIONS'), fc.constantFrom('chat', 'search'), fc.array(rawSegment, { minLength: 1, maxLength: 4 }), async (verb, tool, parts) => {
    const target = `/call/${tool}/${parts.join('/')}`
    const before = up.seen.length
    const res = await rawRequest(port, verb, target, { authorization: `Bearer ${tokens.agent as string}` })
    if (res.status >= 500) throw new Error(`${verb} ${target} → ${res.status} ${res.body}`)
    const reached = up.seen.slice(before)
    forwarded += reached.length
    if (res.status === 200 && reached.length !== 1) throw new Error(`200 but the tool saw ${reached.length} requests`)
    for (const seen of reached) {
      const base = tool === 'search' ? '/api/v1/search' : '/chat'
      if (!staysUnder(seen.url, base)) throw new Error(`${target} reached the tool as ${seen.url}`)
    }
  }), { numRuns: Math.ceil(RUNS / 2) })
  t.ok(forwarded > 0, `${Math.ceil(RUNS / 2)} runs, ${forwarded} forwarded to the tool`)
})

t.test('random interleavings of parallel calls with random costs never exceed the quota', async t => {
  const up = await startUpstream(t)
  up.routes.set('/flaky/x', (_req, res) => { res.statusCode = 503; res.end('tool down') })
  const clock = new ManualClock()
  const LIMIT = 12
  const WINDOW = 3600
  const tools = [
    { name: 'one', cost: 1 },
    { name: 'two', cost: 2 },
    { name: 'three', cost: 3 },
    { name: 'free', cost: 0 },
    { name: 'huge', cost: LIMIT + 1 },
    { name: 'flaky', cost: 2 } // answers 503: refunded
  ]
  const { app, base } = await startApp(t, up, tools.map(({ name, cost }) => ({ name, cost, audience: 'tool:chat' })), {
    rateLimits: { token: HIGH, perIp: HIGH, perSubject: HIGH },
    clients: [client('agent', { quota: { limit: LIMIT, window: WINDOW } })]
  }, {}, clock.fn)
  const costOf = new Map(tools.map(x => [x.name, x.cost]))
  let runs = 0
  let grantedTotal = 0
  await fc.assert(fc.asyncProperty(
    fc.array(fc.record({ tool: fc.constantFrom(...tools.map(x => x.name)), style: fc.constantFrom('json', 'path'), delay: fc.nat({ max: 3 }) }), { minLength: 1, maxLength: 24 }),
    async (calls) => {
      runs++
      // A fresh quota window for each run (fixed windows aligned to the epoch), and a fresh token.
      await advance(app, clock, WINDOW * 1000)
      const tok = (await issue(app)).access_token as string
      const auth = { authorization: `Bearer ${tok}` }
      const before = up.seen.length
      const answers = await Promise.all(calls.map(async ({ tool, style, delay }) => {
        // A few turns of the event loop apart, so requests interleave at different stages.
        for (let i = 0; i < delay; i++) await new Promise(resolve => setImmediate(resolve))
        const res = style === 'json'
          ? await request(`${base}/call`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ tool }) })
          : await request(`${base}/call/${tool}/x`, { method: 'POST', headers: auth, body: 'payload' })
        await res.body.dump()
        return { tool, status: res.statusCode }
      }))
      const quota = (await app.inject({ method: 'GET', url: '/quota', headers: auth })).json()
      const granted = answers.filter(a => a.status === 200)
      grantedTotal += granted.length
      const failed = answers.filter(a => a.status === 503)
      const charged = granted.reduce((sum, a) => sum + (costOf.get(a.tool) ?? 0), 0)
      const reached = up.seen.length - before
      const other = answers.filter(a => a.status !== 200 && a.status !== 503 && a.status !== 429)
      if (other.length > 0) throw new Error(`unexpected answers: ${JSON.stringify(other)}`)
      if (answers.some(a => a.status === 503 && a.tool !== 'flaky')) throw new Error('503 from a healthy tool')
      if (quota.used > quota.limit) throw new Error(`used ${quota.used} > limit ${quota.limit}`)
      if (quota.used !== charged) throw new Error(`used ${quota.used}, but the granted calls cost ${charged}: ${JSON.stringify(answers)}`)
      if (reached !== granted.length + failed.length) throw new Error(`the tools saw ${reached} requests for ${granted.length} granted and ${failed.length} failed calls`)
      if (answers.some(a => a.tool === 'huge' && a.status !== 429)) throw new Error('a call costing more than the whole quota went through')
    }
  ), { numRuns: Math.max(20, Math.ceil(RUNS / 5)) })
  t.ok(runs >= 20, `${runs} runs`)
  t.ok(grantedTotal > 0, `${grantedTotal} calls granted: the quota was spent, not only refused`)
})
