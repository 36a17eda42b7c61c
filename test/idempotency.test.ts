// Idempotency-Key on /call (CONTRACT §10, draft-ietf-httpapi-idempotency-key-header): a replay
// answers the first call's status, content type and body with Idempotent-Replayed: true, neither
// forwarded nor charged; 409 while the first call runs, 422 for another body; a call whose answer
// was not kept (refunded failure, over 1 MiB) may be retried; keys are per subject and per tool;
// and over two replicas on one Redis, 20 parallel calls with one key reach the tool once.
import { Readable } from 'node:stream'
import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { request } from 'undici'
import { ManualClock, client, issue, type TestContext } from './helper.js'
import { startApp } from './call-helper.js'
import { deletePrefix, freePort, testRedisUrl, uniquePrefix } from './support/redis.js'
import { startUpstream, type Upstream } from './support/upstream.js'

const MIB = 1024 * 1024

interface Answer { status: number, headers: Record<string, string | string[] | undefined>, body: Buffer }

async function call (base: string, token: string, body: string, key?: string, path = '/call', method = 'POST'): Promise<Answer> {
  const headers: Record<string, string> = { authorization: `Bearer ${token}`, 'content-type': 'application/json' }
  if (key !== undefined) headers['idempotency-key'] = key
  const res = await request(`${base}${path}`, { method: method as 'POST', headers, body })
  return { status: res.statusCode, headers: res.headers, body: Buffer.from(await res.body.arrayBuffer()) }
}

async function used (base: string, token: string): Promise<number> {
  const res = await request(`${base}/quota`, { headers: { authorization: `Bearer ${token}` } })
  return (await res.body.json() as { used: number }).used
}

function code (answer: Answer): string | undefined {
  return (JSON.parse(answer.body.toString()) as { code?: string }).code
}

/** An app on SQLite with tools chat and search on `up`, a quota of 100 a day for agent and agent2. */
async function gateway (t: TestContext, up: Upstream, tools: Array<Record<string, unknown>> = []): Promise<{ app: FastifyInstance, base: string, token: string, token2: string }> {
  const { app, base } = await startApp(t, up, [{ name: 'chat' }, { name: 'search' }, ...tools as Array<{ name: string }>], {
    clients: [client('agent', { quota: { limit: 100, window: '1d' } }), client('agent2', { quota: { limit: 100, window: '1d' } })]
  }, {}, new ManualClock().fn)
  return { app, base, token: (await issue(app)).access_token as string, token2: (await issue(app, {}, 'agent2')).access_token as string }
}

t.test('the same key and body replay the first answer: the tool sees one request, the quota one charge', async t => {
  const up = await startUpstream(t)
  let n = 0
  up.routes.set('/chat', (_req, res) => { res.writeHead(201, { 'content-type': 'text/x-answer; charset=utf-8', 'x-tool': 'yes' }); res.end(`answer ${++n} \u00e9`) })
  const { app, base, token } = await gateway(t, up)
  const body = '{"tool":"chat","arguments":{"q":1}}'
  const first = await call(base, token, body, 'key-1')
  t.equal(first.status, 201)
  t.equal(first.headers['idempotent-replayed'], undefined, 'the first answer is not a replay')
  t.equal(first.body.toString(), 'answer 1 \u00e9')
  const second = await call(base, token, body, 'key-1')
  t.equal(second.status, 201)
  t.equal(second.headers['content-type'], 'text/x-answer; charset=utf-8')
  t.ok(second.body.equals(first.body), 'the same body, byte for byte')
  t.equal(second.headers['idempotent-replayed'], 'true')
  t.ok(typeof second.headers['x-request-id'] === 'string')
  t.match(second.headers.ratelimit, /r=99;/, 'a replay carries the RateLimit fields, uncharged')
  t.equal(up.seen.length, 1, 'the tool saw one request')
  t.equal(await used(base, token), 1, 'one charge')

  const injected = await app.inject({ method: 'POST', url: '/call', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'idempotency-key': 'key-1' }, payload: body })
  t.equal(injected.headers['idempotent-replayed'], 'true', 'app.inject (no headersDistinct) replays too')
  const other = await call(base, token, body, 'key-2')
  t.equal(other.body.toString(), 'answer 2 \u00e9', 'positive control: another key is a new call')
  const none = await call(base, token, body)
  t.equal(none.body.toString(), 'answer 3 \u00e9', 'positive control: no key, no replay')
  t.equal(up.seen.length, 3)
  t.equal(await used(base, token), 3)
})

t.test('a pass-through POST with a key: the streamed body is hashed, the answer replayed', async t => {
  const up = await startUpstream(t)
  const { base, token } = await gateway(t, up)
  const first = await call(base, token, 'raw body', 'pt-1', '/call/chat/items')
  t.equal(first.status, 200)
  t.equal((JSON.parse(first.body.toString()) as { body: string }).body, 'raw body', 'the tool got the body unchanged')
  const again = await call(base, token, 'raw body', 'pt-1', '/call/chat/items')
  t.equal(again.headers['idempotent-replayed'], 'true')
  t.ok(again.body.equals(first.body))
  const other = await call(base, token, 'another body', 'pt-1', '/call/chat/items')
  t.equal(other.status, 422)
  t.equal(code(other), 'idempotency_key_reused')
  const del = await call(base, token, '', 'pt-del', '/call/chat/items/1', 'DELETE')
  const delAgain = await call(base, token, '', 'pt-del', '/call/chat/items/1', 'DELETE')
  t.equal(del.status, 200)
  t.equal(delAgain.headers['idempotent-replayed'], 'true', 'DELETE honours the key too')
  const seenBefore = up.seen.length
  const huge = await request(`${base}/call/chat/items`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/octet-stream', 'idempotency-key': 'pt-huge' },
    body: Readable.from([Buffer.alloc(MIB), Buffer.alloc(1)]) // chunked: no length to refuse it early
  })
  t.equal(huge.statusCode, 413, 'a streamed body read to hash it is bounded by server.bodyLimit')
  t.equal((await huge.body.json() as { code: string }).code, 'payload_too_large')
  t.equal(up.seen.length, seenBefore, 'not forwarded')
  const get = await call(base, token, '', 'pt-get', '/call/chat/items', 'GET')
  const getAgain = await call(base, token, '', 'pt-get', '/call/chat/items', 'GET')
  t.equal(get.status, 200)
  t.equal(getAgain.headers['idempotent-replayed'], undefined, 'GET ignores the key')
  t.equal(up.seen.length, 4)
  t.equal(await used(base, token), 4, 'the 413 was not charged')
  t.equal((await call(base, token, 'small', 'pt-huge', '/call/chat/items')).status, 200, 'nor did it hold its key')
})

t.test('the same key while the first call runs: 409 idempotency_in_flight; then the replay', async t => {
  const up = await startUpstream(t)
  let release: (() => void) | undefined
  const arrived = new Promise<void>(resolve => {
    up.routes.set('/chat', (_req, res) => {
      release = () => { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"done":true}') }
      resolve()
    })
  })
  const { base, token } = await gateway(t, up)
  const body = '{"tool":"chat"}'
  const first = call(base, token, body, 'slow')
  await arrived
  const during = await call(base, token, body, 'slow')
  t.equal(during.status, 409)
  t.match(during.headers['content-type'], /^application\/problem\+json/)
  t.equal(code(during), 'idempotency_in_flight')
  const reused = await call(base, token, '{"tool":"chat","arguments":{}}', 'slow')
  t.equal(reused.status, 422, 'another body while it runs: 422')
  ;(release as () => void)()
  t.equal((await first).status, 200)
  const after = await call(base, token, body, 'slow')
  t.equal(after.status, 200)
  t.equal(after.headers['idempotent-replayed'], 'true')
  t.equal(after.body.toString(), '{"done":true}')
  t.equal(up.seen.length, 1)
  t.equal(await used(base, token), 1, 'neither the 409 nor the 422 nor the replay was charged')
})

t.test('the same key with another body: 422 idempotency_key_reused, nothing forwarded or charged', async t => {
  const up = await startUpstream(t)
  const { base, token } = await gateway(t, up)
  t.equal((await call(base, token, '{"tool":"chat","arguments":{"a":1}}', 'k')).status, 200)
  const other = await call(base, token, '{"tool":"chat","arguments":{"a":2}}', 'k')
  t.equal(other.status, 422)
  t.match(other.headers['content-type'], /^application\/problem\+json/)
  t.match(JSON.parse(other.body.toString()), { status: 422, code: 'idempotency_key_reused' })
  const spaced = await call(base, token, '{"tool":"chat", "arguments":{"a":1}}', 'k')
  t.equal(spaced.status, 422, 'the same JSON with other bytes is another body (SHA-256 of the bytes)')
  t.equal(up.seen.length, 1)
  t.equal(await used(base, token), 1)
})

t.test('a refunded failure frees the key: the retry is a new call; a kept (charged) failure replays', async t => {
  const up = await startUpstream(t)
  let fail = true
  up.routes.set('/chat', (_req, res) => {
    res.writeHead(fail ? 502 : 200, { 'content-type': 'text/plain' })
    res.end(fail ? 'bad gateway' : 'fine')
  })
  up.routes.set('/kept', (_req, res) => { res.writeHead(500, { 'content-type': 'text/plain' }); res.end('charged failure') })
  const closed = await freePort()
  const { base, token } = await gateway(t, up, [
    { name: 'gone', audience: 'tool:chat', origin: `http://127.0.0.1:${closed}` },
    { name: 'kept', audience: 'tool:chat', refundOnFailure: false }
  ])
  const body = '{"tool":"chat"}'
  const failed = await call(base, token, body, 'retry-me')
  t.equal(failed.status, 502)
  t.equal(await used(base, token), 0, 'refunded')
  fail = false
  const retried = await call(base, token, body, 'retry-me')
  t.equal(retried.status, 200, 'the retry reached the tool')
  t.equal(retried.headers['idempotent-replayed'], undefined)
  t.equal(retried.body.toString(), 'fine')
  t.equal(up.seen.length, 2)
  t.equal((await call(base, token, body, 'retry-me')).headers['idempotent-replayed'], 'true', 'now kept')

  const unreachable = '{"tool":"gone"}'
  const first = await call(base, token, unreachable, 'gone-1')
  t.equal(first.status, 502)
  t.equal(code(first), 'upstream_unavailable')
  const again = await call(base, token, unreachable, 'gone-1')
  t.equal(again.status, 502, 'an unreachable tool: retried, not 409, not replayed')
  t.equal(again.headers['idempotent-replayed'], undefined)

  const keptBody = '{"tool":"kept"}'
  t.equal((await call(base, token, keptBody, 'kept-1')).status, 500)
  const replay = await call(base, token, keptBody, 'kept-1')
  t.equal(replay.status, 500)
  t.equal(replay.headers['idempotent-replayed'], 'true', 'positive control: a failure that stays charged is kept')
  t.equal(await used(base, token), 2, 'the successful retry and the charged failure')
})

t.test('a call refused by the quota after its claim frees the key', async t => {
  const up = await startUpstream(t)
  const clock = new ManualClock()
  const { app, base } = await startApp(t, up, [{ name: 'chat' }], { clients: [client('agent', { quota: { limit: 1, window: '1m' } })] }, {}, clock.fn)
  const token = (await issue(app)).access_token as string
  t.equal((await call(base, token, '{"tool":"chat"}', 'a')).status, 200)
  const refused = await call(base, token, '{"tool":"chat"}', 'b')
  t.equal(refused.status, 429)
  t.equal(code(refused), 'quota_exceeded')
  const again = await call(base, token, '{"tool":"chat"}', 'b')
  t.equal(code(again), 'quota_exceeded', 'refused again, not 409: the key was freed')
  clock.advance(60_000)
  const later = await call(base, token, '{"tool":"chat"}', 'b')
  t.equal(later.status, 200, 'in the next window the key runs as a new call')
  t.equal(later.headers['idempotent-replayed'], undefined)
  t.equal(up.seen.length, 2)
})

t.test('an answer over 1 MiB is not kept (the key is freed); one of exactly 1 MiB is', async t => {
  const up = await startUpstream(t)
  up.routes.set('/chat', (_req, res) => { res.writeHead(200, { 'content-type': 'application/octet-stream' }); res.end(Buffer.alloc(MIB + 1, 7)) })
  up.routes.set('/search', (_req, res) => { res.writeHead(200, { 'content-type': 'application/octet-stream' }); res.end(Buffer.alloc(MIB, 8)) })
  const { base, token } = await gateway(t, up)
  const big = await call(base, token, '{"tool":"chat"}', 'big')
  t.equal(big.body.length, MIB + 1, 'the caller got all of it')
  const bigAgain = await call(base, token, '{"tool":"chat"}', 'big')
  t.equal(bigAgain.headers['idempotent-replayed'], undefined, 'not kept: the retry is a new call')
  t.equal(up.seen.length, 2)
  await call(base, token, '{"tool":"search"}', 'fits')
  const fits = await call(base, token, '{"tool":"search"}', 'fits')
  t.equal(fits.headers['idempotent-replayed'], 'true')
  t.ok(fits.body.equals(Buffer.alloc(MIB, 8)))
  t.equal(up.seen.length, 3)
})

t.test('a streamed answer (an event stream) is not kept: the key is freed (CONTRACT §10)', async t => {
  const up = await startUpstream(t)
  up.routes.set('/chat', (_req, res) => { res.writeHead(200, { 'content-type': 'text/event-stream' }); res.write('data: one\n\n'); res.end('data: two\n\n') })
  up.routes.set('/search', (_req, res) => { res.writeHead(200, { 'content-type': 'text/plain' }); res.write('one '); res.end('two') })
  const { base, token } = await gateway(t, up)
  const first = await call(base, token, '{"tool":"chat"}', 'sse')
  t.equal(first.body.toString(), 'data: one\n\ndata: two\n\n', 'the caller got the stream')
  const again = await call(base, token, '{"tool":"chat"}', 'sse')
  t.equal(again.headers['idempotent-replayed'], undefined, 'not kept: the retry is a new call')
  t.equal(up.seen.length, 2)
  // Control: a chunked answer that is not an event stream is kept.
  await call(base, token, '{"tool":"search"}', 'chunked')
  const kept = await call(base, token, '{"tool":"search"}', 'chunked')
  t.equal(kept.headers['idempotent-replayed'], 'true')
  t.equal(kept.body.toString(), 'one two')
  t.equal(up.seen.length, 3)
})

t.test('Idempotency-Key: 1 to 255 printable ASCII characters, once; anything else is 400 before any charge', async t => {
  const up = await startUpstream(t)
  const { base, token } = await gateway(t, up)
  const raw = async (key: string | string[]): Promise<{ status: number, code?: string }> => await new Promise((resolve, reject) => {
    const req = httpRequest(`${base}/call`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'idempotency-key': key } }, (res: IncomingMessage) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, code: (JSON.parse(Buffer.concat(chunks).toString() || '{}') as { code?: string }).code }) })
    })
    req.on('error', reject)
    req.end('{"tool":"chat"}')
  })
  for (const [what, key] of [['empty', ''], ['256 characters', 'k'.repeat(256)], ['a tab', 'a\tb'], ['a non-ASCII character', 'caf\u00e9'], ['given twice', ['a', 'b']]] as Array<[string, string | string[]]>) {
    t.same(await raw(key), { status: 400, code: 'invalid_request' }, what)
  }
  t.equal(up.seen.length, 0)
  t.equal(await used(base, token), 0, 'nothing charged')
  t.same(await raw('k'.repeat(255)), { status: 200, code: undefined }, 'positive control: 255 characters')
  t.same(await raw(' !"~ x '.trim()), { status: 200, code: undefined }, 'positive control: printable punctuation and spaces')
})

t.test('keys are scoped to the subject and to the tool', async t => {
  const up = await startUpstream(t)
  const { base, token, token2 } = await gateway(t, up)
  const body = 'same bytes'
  t.equal((await call(base, token, body, 'shared', '/call/chat/x')).status, 200)
  const otherTool = await call(base, token, body, 'shared', '/call/search/x')
  t.equal(otherTool.headers['idempotent-replayed'], undefined, 'another tool: a new call')
  const otherSubject = await call(base, token2, body, 'shared', '/call/chat/x')
  t.equal(otherSubject.headers['idempotent-replayed'], undefined, 'another subject: a new call')
  t.equal(up.seen.length, 3)
  t.equal((await call(base, token, body, 'shared', '/call/chat/x')).headers['idempotent-replayed'], 'true', 'positive control: same subject and tool replay')
  t.equal((await call(base, token, '{"tool":"search"}', 'json')).status, 200)
  t.equal((await call(base, token, '{"tool":"chat"}', 'json')).status, 200, 'POST /call: the same key for another tool is not 422')
  t.equal(up.seen.length, 5)
})

const redisUrl = await testRedisUrl(t)
t.test('20 parallel calls with one key over two replicas on one Redis: one upstream call, one charge', { skip: redisUrl === undefined ? 'no Redis' : false }, async t => {
  const keyPrefix = uniquePrefix('idempotency')
  t.teardown(async () => { await deletePrefix(redisUrl as string, keyPrefix) })
  const up = await startUpstream(t)
  // No hold: the 19 others land while the first runs (409) or after its answer was kept (replay).
  let answered = 0
  up.routes.set('/chat', (_req, res: ServerResponse) => { res.writeHead(200, { 'content-type': 'application/json' }); res.end(`{"n":${++answered}}`) })
  const replica = async (): Promise<Awaited<ReturnType<typeof startApp>>> => {
    const started = await startApp(t, up, [{ name: 'chat' }], {
      clients: [client('agent', { quota: { limit: 100, window: '1d' } })],
      store: { redis: redisUrl, keyPrefix, timeout: '2s' }
    })
    t.teardown(() => { started.app.server.closeAllConnections() })
    return started
  }
  const a = await replica()
  const b = await replica()
  const token = (await issue(a.app)).access_token as string
  const body = '{"tool":"chat","arguments":{"order":42}}'
  const answers = await Promise.all(Array.from({ length: 20 }, async (_, i) => await call(i % 2 === 0 ? a.base : b.base, token, body, 'order-42')))
  const fresh = answers.filter(r => r.status === 200 && r.headers['idempotent-replayed'] === undefined)
  const replays = answers.filter(r => r.status === 200 && r.headers['idempotent-replayed'] === 'true')
  const inFlight = answers.filter(r => r.status === 409 && code(r) === 'idempotency_in_flight')
  t.equal(fresh.length, 1, 'one call ran')
  t.equal(replays.length + inFlight.length, 19, `the 19 others: ${replays.length} replays, ${inFlight.length} in flight`)
  for (const r of replays) t.equal(r.body.toString(), '{"n":1}')
  t.equal(up.seen.length, 1, 'the tool saw exactly one call')
  t.equal(await used(a.base, token), 1, 'one charge (replica A)')
  t.equal(await used(b.base, token), 1, 'one charge (replica B)')
  const later = await call(b.base, token, body, 'order-42')
  t.equal(later.headers['idempotent-replayed'], 'true', 'afterwards, either replica replays')
  const control = await call(a.base, token, body, 'order-43')
  t.equal(control.headers['idempotent-replayed'], undefined, 'positive control: another key runs')
  t.equal(up.seen.length, 2)
})
