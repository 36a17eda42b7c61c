// /call: the pipeline's checks in the contract's order, what the upstream receives, upstream
// failures, streaming, rate limits and the audit line. Real upstream servers on free ports.
import { request as httpRequest } from 'node:http'
import { Readable } from 'node:stream'
import { createRemoteJWKSet, jwtVerify } from 'jose'
import t from 'tap'
import { request } from 'undici'
import { ManualClock, client, issue } from './helper.js'
import { rawRequest, startApp } from './call-helper.js'
import { startUpstream } from './support/upstream.js'
import { captureLog } from './support/logs.js'
import { freePort } from './support/redis.js'

const CALL = { 'content-type': 'application/json' }

function post (token: string | undefined, body: unknown): { method: 'POST', url: string, headers: Record<string, string>, payload: string } {
  return { method: 'POST', url: '/call', headers: { ...CALL, ...(token !== undefined ? { authorization: `Bearer ${token}` } : {}) }, payload: JSON.stringify(body) }
}


t.test('a tool\'s own RateLimit fields never reach the caller, on the first call of a token and once it is cached', async t => {
  const up = await startUpstream(t)
  up.routes.set('/chat', (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', ratelimit: '"forged";r=999;t=1', 'ratelimit-policy': '"forged";q=999;w=1' })
    res.end('{}')
  })
  const { app, base } = await startApp(t, up, [{ name: 'chat' }], {
    clients: [client('agent', { quota: { limit: 100, window: '1d' } }), client('unmetered')]
  })
  const metered = (await issue(app)).access_token as string
  const unmetered = (await issue(app, {}, 'unmetered')).access_token as string
  // The first call with a token verifies it (and caches the verification), the second hits the cache.
  for (const path of ['first', 'cached']) {
    const m = await request(`${base}/call`, { method: 'POST', headers: { ...CALL, authorization: `Bearer ${metered}` }, body: JSON.stringify({ tool: 'chat' }) })
    await m.body.dump()
    t.equal(m.statusCode, 200)
    t.equal(m.headers['ratelimit-policy'], '"quota";q=100;w=86400', `${path}: metered: Tollgate's quota policy`)
    t.match(String(m.headers.ratelimit), /^"quota";r=\d+;t=\d+$/, `${path}: metered: Tollgate's quota state`)
    const u = await request(`${base}/call`, { method: 'POST', headers: { ...CALL, authorization: `Bearer ${unmetered}` }, body: JSON.stringify({ tool: 'chat' }) })
    await u.body.dump()
    t.equal(u.statusCode, 200)
    t.equal(u.headers.ratelimit, undefined, `${path}: unmetered: no RateLimit`)
    t.equal(u.headers['ratelimit-policy'], undefined, `${path}: unmetered: no RateLimit-Policy`)
  }
})

t.test('POST /call sends the exact body with a downstream token and clean headers', async t => {
  const up = await startUpstream(t)
  const { app, port, base } = await startApp(t, up, [{ name: 'chat' }])
  const tok = await issue(app)
  // Odd spacing, key order and escapes: a re-serialised body would differ.
  const body = '{ "tool" : "chat",\n  "arguments": {"z": 1, "a": "\\u00e9t\\u00e9", "n": 1.50} }'
  const res = await new Promise<{ status: number, headers: Record<string, unknown>, body: string }>((resolve, reject) => {
    const req = httpRequest({
      host: '127.0.0.1',
      port,
      method: 'POST',
      path: '/call',
      agent: false,
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${tok.access_token as string}`,
        cookie: 'session=secret',
        'proxy-authorization': 'Basic abc',
        'x-forwarded-for': '6.6.6.6',
        'x-forwarded-host': 'evil.example',
        'x-auth-subject': 'admin',
        'x-auth-role': 'root',
        connection: 'keep-alive, x-private-hop',
        'x-private-hop': 'drop me',
        'keep-alive': 'timeout=5',
        'x-request-id': 'trace-123',
        'x-custom': 'kept'
      }
    }, res => {
      let data = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { data += c })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: data }))
    })
    req.on('error', reject)
    req.end(body)
  })
  t.equal(res.status, 200)
  t.equal(up.seen.length, 1)
  const seen = up.seen[0]!
  t.equal(seen.method, 'POST')
  t.equal(seen.url, '/chat')
  t.ok(seen.body.equals(Buffer.from(body)), 'the upstream received the exact bytes')
  t.equal(seen.headers.cookie, undefined, 'no Cookie')
  t.equal(seen.headers['proxy-authorization'], undefined, 'no Proxy-Authorization')
  t.equal(seen.headers['x-private-hop'], undefined, 'a header named in Connection is hop-by-hop')
  t.equal(seen.headers['keep-alive'], undefined)
  t.equal(seen.headers['x-auth-role'], undefined, 'incoming X-Auth-* dropped')
  t.equal(seen.headers['x-forwarded-for'], '127.0.0.1', 'X-Forwarded-For set by Tollgate, not the caller')
  t.equal(seen.headers['x-forwarded-host'], `127.0.0.1:${port}`)
  t.equal(seen.headers['x-forwarded-proto'], 'http')
  t.equal(seen.headers['x-auth-subject'], 'agent')
  t.equal(seen.headers['x-request-id'], 'trace-123')
  t.equal(seen.headers['x-custom'], 'kept')
  const auth = seen.headers.authorization ?? ''
  t.match(auth, /^Bearer /)
  const downstream = auth.slice(7)
  t.not(downstream, tok.access_token, 'never the caller\'s token')
  const jwks = createRemoteJWKSet(new URL(`${base}/jwks`))
  const { payload, protectedHeader } = await jwtVerify(downstream, jwks, { audience: 'tool:chat', issuer: 'https://tollgate.test', typ: 'at+jwt' })
  t.equal(protectedHeader.typ, 'at+jwt')
  t.equal(payload.sub, 'agent')
  t.equal(payload.client_id, 'agent')
  t.equal(payload.scope, 'tools:call', 'only the tool\'s scopes, not all the caller holds (tools:call tools:read)')
  t.equal(payload.aud, 'tool:chat')
  t.ok((payload.exp as number) - (payload.iat as number) <= 60, 'lives at most 60 s')
  t.equal(payload.quota, undefined)
  // The answer: the tool's body, Tollgate's request id and quota fields, no hop-by-hop fields.
  t.equal(JSON.parse(res.body).url, '/chat')
  t.equal(res.headers['x-request-id'], 'trace-123')
  t.equal(res.headers['x-upstream-private'], undefined, 'upstream hop-by-hop header dropped')
  t.equal(res.headers['ratelimit-policy'], '"quota";q=100;w=86400')
  t.match(String(res.headers.ratelimit), /^"quota";r=99;t=\d+$/)

  // The downstream token is reused for the same caller token and tool.
  await request(`${base}/call`, { method: 'POST', headers: { ...CALL, authorization: `Bearer ${tok.access_token as string}` }, body }).then(r => r.body.dump())
  t.equal(up.seen[1]?.headers.authorization, auth, 'cached per (jti, tool)')
})

// The rate limits and quotas count in windows aligned to the epoch: on the wall clock a window
// turning mid-test would refill them, so the tests that count run on an injected clock.
t.test('checks run in the contract\'s order', async t => {
  const up = await startUpstream(t)
  const clock = new ManualClock()
  const { app } = await startApp(t, up, [
    { name: 'chat' },
    { name: 'other', path: '/other' },
    { name: 'admin', audience: 'tool:chat', scopes: ['tools:admin'] },
    { name: 'both', audience: 'tool:nope', scopes: ['tools:admin'] }
  ], {
    rateLimits: { perSubject: { max: 3, window: '1m' } },
    clients: [client('agent', { quota: { limit: 2, window: '1h' } })]
  }, {}, clock.fn)
  const tok = (await issue(app)).access_token as string

  const noToken = await app.inject(post(undefined, { tool: 'nope' }))
  t.equal(noToken.statusCode, 401, 'token first, even for an unknown tool')
  t.equal(noToken.headers['www-authenticate'], 'Bearer realm="tollgate", resource_metadata="https://tollgate.test/.well-known/oauth-protected-resource"', 'POST /call: the tool is not known before the token is')
  t.equal(noToken.headers['content-type'], 'application/problem+json; charset=utf-8')
  t.equal(noToken.json().code, 'invalid_token')

  const badToken = await app.inject(post('not.a.token', { tool: 'nope' }))
  t.equal(badToken.statusCode, 401)
  t.match(badToken.headers['www-authenticate'], /error="invalid_token"/)

  const unknown = await app.inject(post(tok, { tool: 'nope' }))
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'tool_not_found')

  const wrongAud = await app.inject(post(tok, { tool: 'both' }))
  t.equal(wrongAud.statusCode, 401, 'audience before scope')
  t.equal(wrongAud.json().code, 'invalid_token')
  t.match(wrongAud.headers['www-authenticate'], /^Bearer realm="tollgate", error="invalid_token"/)

  const noScope = await app.inject(post(tok, { tool: 'admin' }))
  t.equal(noScope.statusCode, 403)
  t.equal(noScope.json().code, 'insufficient_scope')
  t.match(noScope.headers['www-authenticate'], /error="insufficient_scope", .*scope="tools:admin"/)

  t.equal((await app.inject(post(tok, { tool: 'chat' }))).statusCode, 200)
  t.equal((await app.inject(post(tok, { tool: 'chat' }))).statusCode, 200)
  const quota = await app.inject(post(tok, { tool: 'chat' }))
  t.equal(quota.statusCode, 429, 'quota exhausted (limit 2)')
  t.equal(quota.json().code, 'quota_exceeded')
  t.ok(Number(quota.headers['retry-after']) >= 1)
  t.equal(quota.headers['ratelimit-policy'], '"quota";q=2;w=3600')
  t.match(quota.headers.ratelimit, /^"quota";r=0;t=\d+$/)

  const rate = await app.inject(post(tok, { tool: 'chat' }))
  t.equal(rate.statusCode, 429, 'the subject limit (3) is hit before the quota check')
  t.equal(rate.json().code, 'rate_limited')
  t.ok(Number(rate.headers['retry-after']) >= 1)
  t.equal(rate.headers['ratelimit-policy'], '"subject";q=3;w=60')

  const scopeStill = await app.inject(post(tok, { tool: 'admin' }))
  t.equal(scopeStill.statusCode, 403, 'scope is checked before the rate limit')
  t.equal(up.seen.length, 2, 'only the two granted calls reached the tool')

  const form = await app.inject({ method: 'POST', url: '/call', headers: { authorization: `Bearer ${tok}`, 'content-type': 'application/x-www-form-urlencoded' }, payload: 'tool=chat' })
  t.equal(form.statusCode, 415, 'POST /call takes JSON only')
  const noTool = await app.inject(post(tok, { arguments: {} }))
  t.equal(noTool.statusCode, 400)

  clock.advance(60_000)
  const later = await app.inject(post(tok, { tool: 'chat' }))
  t.equal(later.json().code, 'quota_exceeded', 'a minute later the subject limit has room again, the hourly quota not')
})

t.test('per-IP limit counts every subject from one address', async t => {
  const up = await startUpstream(t)
  const clock = new ManualClock()
  const { app, base } = await startApp(t, up, [{ name: 'chat' }, { name: 'other' }], { rateLimits: { perIp: { max: 2, window: '1m' } } }, {}, clock.fn)
  const a = (await issue(app)).access_token as string
  const b = (await issue(app, {}, 'other')).access_token as string
  const call = async (tok: string, tool: string): Promise<Awaited<ReturnType<typeof request>>> =>
    await request(`${base}/call`, { method: 'POST', headers: { ...CALL, authorization: `Bearer ${tok}` }, body: JSON.stringify({ tool }) })
  t.equal((await call(a, 'chat')).statusCode, 200)
  t.equal((await call(b, 'other')).statusCode, 200)
  const res = await call(b, 'other')
  t.equal(res.statusCode, 429)
  t.equal((await res.body.json() as any).code, 'rate_limited')
  t.equal(res.headers['ratelimit-policy'], '"ip";q=2;w=60')
  t.match(String(res.headers.ratelimit), /^"ip";r=0;t=\d+$/)
  t.ok(Number(res.headers['retry-after']) >= 1)
  clock.advance(60_000)
  t.equal((await call(a, 'chat')).statusCode, 200, 'the next window has room')
})

t.test('upstream failures: 502, 504, 5xx pass through, all refunded unless the tool says not to', async t => {
  const up = await startUpstream(t)
  up.routes.set('/hang', () => { /* never answers; the socket is destroyed in teardown */ })
  up.routes.set('/boom', (_req, res) => { res.statusCode = 503; res.setHeader('content-type', 'text/plain'); res.end('tool down') })
  up.routes.set('/missing', (_req, res) => { res.statusCode = 404; res.end('no such thing') })
  const closed = await freePort()
  const { app, base } = await startApp(t, up, [
    { name: 'chat', path: '/hang', timeout: '0.3s' },
    { name: 'search', origin: `http://127.0.0.1:${closed}`, path: '/x' },
    { name: 'boom', audience: 'tool:chat', path: '/boom' },
    { name: 'missing', audience: 'tool:chat', path: '/missing' },
    { name: 'strict', audience: 'tool:chat', path: '/boom', refundOnFailure: false }
  ])
  const tok = (await issue(app)).access_token as string
  const used = async (): Promise<number> => (await app.inject({ method: 'GET', url: '/quota', headers: { authorization: `Bearer ${tok}` } })).json().used
  const call = async (tool: string): Promise<{ status: number, body: string, headers: Record<string, unknown> }> => {
    const r = await request(`${base}/call`, { method: 'POST', headers: { ...CALL, authorization: `Bearer ${tok}` }, body: JSON.stringify({ tool }) })
    return { status: r.statusCode, body: await r.body.text(), headers: r.headers }
  }

  const timeout = await call('chat')
  t.equal(timeout.status, 504)
  t.equal(JSON.parse(timeout.body).code, 'upstream_timeout')
  t.equal(timeout.headers['content-type'], 'application/problem+json; charset=utf-8')
  t.equal(timeout.headers.ratelimit, '"quota";r=100;t=' + String(timeout.headers.ratelimit).split('t=')[1], 'the answer shows the refund')
  t.equal(await used(), 0, 'timeout refunded')

  const refused = await call('search')
  t.equal(refused.status, 502)
  t.equal(JSON.parse(refused.body).code, 'upstream_unavailable')
  t.equal(await used(), 0, 'connection refused refunded')

  const boom = await call('boom')
  t.equal(boom.status, 503, 'the tool\'s own 5xx passes through')
  t.equal(boom.body, 'tool down')
  t.equal(await used(), 0, '5xx refunded')

  const missing = await call('missing')
  t.equal(missing.status, 404, 'the tool\'s own 4xx passes through')
  t.equal(missing.body, 'no such thing')
  t.equal(await used(), 1, '4xx charged')

  t.equal((await call('strict')).status, 503)
  t.equal(await used(), 2, 'refundOnFailure: false keeps the charge')
  t.equal(up.seen.filter(s => s.url === '/hang').length, 1, 'never retried')
})

t.test('server-sent events reach the caller as they are produced', async t => {
  const up = await startUpstream(t)
  let release!: () => void
  const released = new Promise<void>(resolve => { release = resolve })
  up.routes.set('/chat/events', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
    res.write('data: first\n\n')
    released.then(() => { res.write('data: second\n\n'); res.end('data: done\n\n') }).catch(() => {})
  })
  const { app, base } = await startApp(t, up, [{ name: 'chat' }])
  const tok = (await issue(app)).access_token as string
  const res = await request(`${base}/call/chat/events`, { headers: { authorization: `Bearer ${tok}` } })
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-type'], 'text/event-stream')
  const chunks: string[] = []
  await new Promise<void>((resolve, reject) => {
    res.body.on('data', (c: Buffer | string) => {
      chunks.push(String(c))
      // The upstream sends the rest only after the first event has reached this caller.
      if (chunks.join('').includes('data: first\n\n') && chunks.length === 1) release()
    })
    res.body.on('end', resolve)
    res.body.on('error', reject)
  })
  t.equal(chunks[0], 'data: first\n\n', 'the first event arrived alone, before the rest was written')
  t.equal(chunks.join(''), 'data: first\n\ndata: second\n\ndata: done\n\n')
})

t.test('pass-through: method, path, query and a streamed body', async t => {
  const up = await startUpstream(t)
  const { app, base, port } = await startApp(t, up, [{ name: 'chat' }], { server: { bodyLimit: 2048 } })
  const tok = (await issue(app)).access_token as string
  const auth = { authorization: `Bearer ${tok}` }

  const get = await request(`${base}/call/chat/docs/a%20b.txt?q=1&r=..`, { headers: auth })
  t.equal(get.statusCode, 200)
  t.equal((await get.body.json() as any).url, '/chat/docs/a%20b.txt?q=1&r=..')

  const head = await request(`${base}/call/chat/x`, { method: 'HEAD', headers: auth })
  t.equal(head.statusCode, 200)
  await head.body.dump()

  // A chunked body, sent in pieces, arrives whole and unchanged.
  const pieces = ['alpha,', 'beta,', 'gamma']
  const put = await request(`${base}/call/chat/items/7`, {
    method: 'PUT',
    headers: { ...auth, 'content-type': 'text/csv' },
    body: Readable.from(pieces.map(p => Buffer.from(p)))
  })
  t.equal(put.statusCode, 200)
  const echoed = await put.body.json() as any
  t.equal(echoed.method, 'PUT')
  t.equal(echoed.body, 'alpha,beta,gamma')
  t.equal(echoed.headers['content-type'], 'text/csv')

  const del = await request(`${base}/call/chat/items/7`, { method: 'DELETE', headers: auth })
  t.equal((await del.body.json() as any).method, 'DELETE')

  const before = up.seen.length
  const big = await request(`${base}/call/chat/upload`, { method: 'POST', headers: { ...auth, 'content-type': 'application/octet-stream' }, body: Buffer.alloc(4096, 1) })
  t.equal(big.statusCode, 413, 'a declared length over the cap is refused')
  await big.body.dump()
  t.equal(up.seen.length, before, 'nothing reached the tool')

  const chunked = await request(`${base}/call/chat/upload`, {
    method: 'POST',
    headers: { ...auth, 'content-type': 'application/octet-stream' },
    body: Readable.from(Array.from({ length: 8 }, (_, i) => Buffer.alloc(1024, i)))
  })
  t.equal(chunked.statusCode, 413, 'a chunked body over the cap is cut off')
  await chunked.body.dump()

  const noSlash = await rawRequest(port, 'GET', '/call/chat', { authorization: `Bearer ${tok}` })
  t.equal(noSlash.status, 404, '/call/:tool without a path is not a pass-through')
  const refused = await request(`${base}/call/nope/x`, { headers: auth })
  t.equal(refused.statusCode, 404)
  t.equal((await refused.body.json() as any).code, 'tool_not_found')
})

t.test('credential modes: none and a static header from the environment', async t => {
  const up = await startUpstream(t)
  const { app, base } = await startApp(t, up, [
    { name: 'chat', auth: 'none' },
    { name: 'search', auth: { header: 'X-Api-Key', valueEnv: 'SEARCH_KEY' } }
  ], {}, { SEARCH_KEY: 'k-123' })
  const tok = (await issue(app)).access_token as string
  for (const tool of ['chat', 'search']) {
    await request(`${base}/call`, { method: 'POST', headers: { ...CALL, authorization: `Bearer ${tok}`, 'x-api-key': 'caller-value' }, body: JSON.stringify({ tool }) }).then(r => r.body.dump())
  }
  t.equal(up.seen[0]?.headers.authorization, undefined, 'auth: none sends no credential')
  t.equal(up.seen[0]?.headers['x-api-key'], 'caller-value')
  t.equal(up.seen[1]?.headers.authorization, undefined)
  t.equal(up.seen[1]?.headers['x-api-key'], 'k-123', 'the configured header replaces the caller\'s')
})

t.test('a trusted proxy\'s X-Forwarded-For chain is extended and keys the per-IP limit', async t => {
  const up = await startUpstream(t)
  const clock = new ManualClock()
  const { app, base } = await startApp(t, up, [{ name: 'chat' }], { server: { trustProxy: '127.0.0.1' }, rateLimits: { perIp: { max: 1, window: '1m' } } }, {}, clock.fn)
  const tok = (await issue(app)).access_token as string
  const call = async (xff: string): Promise<number> => {
    const r = await request(`${base}/call/chat/x`, { headers: { authorization: `Bearer ${tok}`, 'x-forwarded-for': xff, 'x-forwarded-proto': 'https', 'x-forwarded-host': 'api.example' } })
    await r.body.dump()
    return r.statusCode
  }
  t.equal(await call('203.0.113.9'), 200)
  t.equal(up.seen[0]?.headers['x-forwarded-for'], '203.0.113.9, 127.0.0.1')
  t.equal(up.seen[0]?.headers['x-forwarded-proto'], 'https')
  t.equal(up.seen[0]?.headers['x-forwarded-host'], 'api.example')
  t.equal(await call('203.0.113.10'), 200, 'another client behind the same proxy has its own counter')
  t.equal(await call('203.0.113.9'), 429, 'the first client is limited')
  clock.advance(60_000)
  t.equal(await call('203.0.113.9'), 200, 'and has room again in the next window')
})

t.test('refused calls get an audit line without the token; metrics count calls and refusals', async t => {
  const up = await startUpstream(t)
  const { testConfig, build } = await import('./helper.js')
  const config = testConfig(t, { tools: [{ name: 'chat', url: `${up.origin}/chat`, audience: 'tool:chat', scopes: ['tools:admin'] }] })
  const { logger, lines } = captureLog(config, 'info')
  const app = await build(t, config, { loggerInstance: logger })
  const tok = (await issue(app)).access_token as string
  const res = await app.inject(post(tok, { tool: 'chat' }))
  t.equal(res.statusCode, 403)
  const audit = lines.map(l => JSON.parse(l)).find(l => l.audit === 'call.refused')
  t.match(audit, { tool: 'chat', client_id: 'agent', sub: 'agent', reason: 'insufficient_scope' })
  t.type(audit.jti, 'string')
  t.notOk(lines.some(l => l.includes(tok)), 'no line carries the token')
  const metrics = await app.inject({ method: 'GET', url: '/metrics' })
  t.match(metrics.body, /tollgate_call_rejections_total\{reason="insufficient_scope"\} 1/)
  t.match(metrics.body, /tollgate_calls_total\{tool="chat",status="403"\} 1/)
})

t.test('tool configuration is validated at startup', async t => {
  const { testConfig } = await import('./helper.js')
  const bad: Array<[Record<string, unknown>, RegExp]> = [
    [{ name: 'x', url: 'ftp://127.0.0.1/x', audience: 'a' }, /tools\.0\.url: must be http or https/],
    [{ name: 'x', url: 'not a url', audience: 'a' }, /tools\.0\.url/],
    [{ name: 'x', url: 'http://u:p@127.0.0.1/x', audience: 'a' }, /credentials/],
    [{ name: 'x', url: 'http://127.0.0.1/x', audience: 'a', auth: { header: 'X-Key', valueEnv: 'UNSET_TOOL_KEY' } }, /tools\.0\.auth\.valueEnv/],
    [{ name: 'x', url: 'http://127.0.0.1/x', audience: 'a', timeout: 'soon' }, /tools\.0\.timeout/],
    [{ name: 'x', url: 'http://127.0.0.1/x' }, /audience/]
  ]
  for (const [tool, message] of bad) t.throws(() => testConfig(t, { tools: [tool] }), message)
  t.throws(() => testConfig(t, { tools: [{ name: 'x', url: 'http://127.0.0.1/a', audience: 'a' }, { name: 'x', url: 'http://127.0.0.1/b', audience: 'a' }] }), /duplicate tool name/)
})

t.test('the demo echo tool shows what Tollgate forwards, minus secrets', async t => {
  const { spawn } = await import('node:child_process')
  const child = spawn(process.execPath, ['examples/echo-tool.mjs'], { env: { ...process.env, PORT: '0' }, stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { child.kill() })
  const origin = await new Promise<string>((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (c: Buffer) => {
      out += String(c)
      const m = /listening on (http:\/\/127\.0\.0\.1:\d+)\/echo/.exec(out)
      if (m !== null) resolve(m[1] as string)
    })
    child.on('exit', code => reject(new Error(`echo tool exited with ${String(code)}`)))
  })
  const { app } = await startApp(t, undefined, [{ name: 'chat', origin, path: '/echo' }])
  const tok = (await issue(app)).access_token as string
  const res = await app.inject({ method: 'POST', url: '/call', headers: { ...CALL, authorization: `Bearer ${tok}` }, payload: '{"tool":"chat","arguments":{"q":"hi"}}' })
  t.equal(res.statusCode, 200)
  const seen = res.json()
  t.equal(seen.headers.authorization, '[redacted]')
  t.match(seen.downstreamToken, { sub: 'agent', aud: 'tool:chat' })
  t.equal(seen.body, '{"tool":"chat","arguments":{"q":"hi"}}')
  t.notOk(res.body.includes(tok))
})
