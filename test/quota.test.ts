// Quota on /call and GET /quota (CONTRACT §5): exact under concurrency, per subject across
// tokens, fixed windows aligned to the epoch, refunds for failed upstream calls.
import t from 'tap'
import { request } from 'undici'
import { ManualClock, client, issue } from './helper.js'
import { startApp } from './call-helper.js'
import { startUpstream } from './support/upstream.js'

const CALL = { 'content-type': 'application/json' }

t.test('60 parallel calls against a quota of 20: exactly 20 succeed, and a new token does not reset usage', async t => {
  const up = await startUpstream(t)
  // An injected clock: the hour window is aligned to the epoch, and one turning mid-test refills it.
  const { app, base } = await startApp(t, up, [{ name: 'chat' }], { clients: [client('agent', { quota: { limit: 20, window: '1h' } })] }, {}, new ManualClock().fn)
  const tok = (await issue(app)).access_token as string
  const statuses = await Promise.all(Array.from({ length: 60 }, async () => {
    const r = await request(`${base}/call`, { method: 'POST', headers: { ...CALL, authorization: `Bearer ${tok}` }, body: '{"tool":"chat","arguments":{}}' })
    const body = await r.body.json() as { code?: string }
    return r.statusCode === 429 ? body.code : r.statusCode
  }))
  t.equal(statuses.filter(s => s === 200).length, 20)
  t.equal(statuses.filter(s => s === 'quota_exceeded').length, 40)
  t.equal(up.seen.length, 20, 'the tool saw exactly 20 calls')

  const fresh = (await issue(app)).access_token as string
  const again = await request(`${base}/call`, { method: 'POST', headers: { ...CALL, authorization: `Bearer ${fresh}` }, body: '{"tool":"chat"}' })
  t.equal(again.statusCode, 429, 'a new token for the same subject does not reset usage')
  await again.body.dump()

  const quota = await request(`${base}/quota`, { headers: { authorization: `Bearer ${fresh}` } })
  t.equal(quota.statusCode, 200)
  const body = await quota.body.json() as Record<string, number | string>
  t.match(body, { sub: 'agent', limit: 20, used: 20, remaining: 0, window: 3600 })
  t.ok((body.reset as number) > 0 && (body.reset as number) <= 3600)
  t.equal(quota.headers['ratelimit-policy'], '"quota";q=20;w=3600')
  t.equal(quota.headers.ratelimit, `"quota";r=0;t=${body.reset}`)
})

t.test('fixed windows aligned to the epoch; failed calls are refunded; cost counts', async t => {
  const up = await startUpstream(t)
  up.routes.set('/fail', (_req, res) => { res.statusCode = 500; res.end() })
  // 10 minutes into an hour window.
  const clock = new ManualClock(Date.UTC(2026, 10, 24, 12, 10, 0))
  const { app } = await startApp(t, up, [
    { name: 'chat', cost: 2 },
    { name: 'search', path: '/fail' }
  ], { clients: [client('agent', { quota: { limit: 5, window: '1h' } })] }, {}, clock.fn)
  let tok = (await issue(app)).access_token as string
  const call = async (tool: string): Promise<any> => await app.inject({ method: 'POST', url: '/call', headers: { ...CALL, authorization: `Bearer ${tok}` }, payload: JSON.stringify({ tool }) })
  const quota = async (): Promise<any> => (await app.inject({ method: 'GET', url: '/quota', headers: { authorization: `Bearer ${tok}` } })).json()

  t.same(await quota(), { sub: 'agent', limit: 5, used: 0, remaining: 5, window: 3600, reset: 3000 })
  const first = await call('chat')
  t.equal(first.statusCode, 200)
  t.equal(first.headers.ratelimit, '"quota";r=3;t=3000')
  t.equal((await call('chat')).statusCode, 200)
  t.equal((await call('chat')).statusCode, 429, 'cost 2 with 1 left is refused')
  t.equal((await call('search')).statusCode, 500)
  t.match(await quota(), { used: 4, remaining: 1 }, 'the 5xx call was refunded')

  clock.advance(50 * 60_000) // the next window starts at 13:00, whatever the token's age
  await app.tokens.revocations.sync() // the manual clock jumped past the revocation list's freshness
  tok = (await issue(app)).access_token as string
  t.match(await quota(), { used: 0, remaining: 5, reset: 3600 })
  t.equal((await call('chat')).statusCode, 200)
})

t.test('GET /quota: bearer only; a token without a quota is not metered', async t => {
  const up = await startUpstream(t)
  const { app } = await startApp(t, up, [{ name: 'other' }])
  const none = await app.inject({ method: 'GET', url: '/quota' })
  t.equal(none.statusCode, 401)
  t.equal(none.headers['www-authenticate'], 'Bearer realm="tollgate"')
  const tok = (await issue(app, {}, 'other')).access_token as string
  const res = await app.inject({ method: 'GET', url: '/quota', headers: { authorization: `Bearer ${tok}` } })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { sub: 'other', limit: null, used: null, remaining: null, window: null, reset: null })
  t.equal(res.headers.ratelimit, undefined)
  const call = await app.inject({ method: 'POST', url: '/call', headers: { ...CALL, authorization: `Bearer ${tok}` }, payload: '{"tool":"other"}' })
  t.equal(call.statusCode, 200, 'unmetered calls go through')
  t.equal(call.headers.ratelimit, undefined)
})

t.test('a body that breaks off is refunded; a caller who walks away is charged', async t => {
  const up = await startUpstream(t)
  let sent!: () => void
  const firstChunk = new Promise<void>(resolve => { sent = resolve })
  up.routes.set('/broken/x', (req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.write('partial', () => { setImmediate(() => req.socket.destroy()) })
  })
  let upstreamGone!: () => void
  const gone = new Promise<void>(resolve => { upstreamGone = resolve })
  up.routes.set('/slow/x', (_req, res) => {
    res.on('close', () => upstreamGone())
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.write('first', () => sent())
  })
  const { app, base } = await startApp(t, up, [{ name: 'chat', path: '/broken' }, { name: 'search', path: '/slow' }])
  const tok = (await issue(app)).access_token as string
  const used = async (): Promise<number> => (await app.inject({ method: 'GET', url: '/quota', headers: { authorization: `Bearer ${tok}` } })).json().used

  const broken = await request(`${base}/call/chat/x`, { headers: { authorization: `Bearer ${tok}` } })
  t.equal(broken.statusCode, 200)
  await t.rejects(broken.body.text(), { code: 'UND_ERR_SOCKET' }, 'the caller sees the body break off (the socket closes mid-body)')
  // The refund runs when the proxy sees the upstream body fail; wait for the store to show it.
  for (let i = 0; i < 1000 && await used() !== 0; i++) await new Promise(resolve => setImmediate(resolve))
  t.equal(await used(), 0, 'refunded')

  const ac = new AbortController()
  const slow = await request(`${base}/call/search/x`, { headers: { authorization: `Bearer ${tok}` }, signal: ac.signal })
  await firstChunk
  ac.abort()
  await slow.body.text().catch(() => {})
  await gone // the proxy has dropped the upstream request, so any refund would have run by now
  await new Promise(resolve => setImmediate(resolve))
  t.equal(await used(), 1, 'charged: the caller aborted, the tool did not fail')
})
