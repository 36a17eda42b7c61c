// Client authentication under attack (issue 15, item 7): failed authentications are counted per
// client id and per address and refused before any scrypt past the limit; scrypt runs a bounded
// number at a time and the excess is refused at once; per-IP keys count an IPv6 client by its /64;
// a hop-count trustProxy is a config error.
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import { ConfigError, loadConfig } from '../src/config.js'
import { deletePrefix, testRedisUrl, uniquePrefix } from './support/redis.js'
import { CLIENT_SECRET, FORM, SECRET, ManualClock, basic, build, form, issue, testConfig, type TestContext } from './helper.js'

const WRONG = 'not-the-secret-at-all'

/** On a still clock: the failure counters' windows are epoch-aligned, and a boundary mid-test would reset them. */
async function limitedApp (t: TestContext, rateLimits: Record<string, unknown> = {}): Promise<any> {
  const clock = new ManualClock(Date.UTC(2026, 10, 24, 12, 1, 0))
  return await build(t, testConfig(t, {
    rateLimits: {
      token: { max: 10_000, window: '1m' },
      failedAuthPerClient: { max: 5, window: '5m' },
      failedAuthPerIp: { max: 5, window: '5m' },
      ...rateLimits
    }
  }), { clock: clock.fn })
}

async function token (app: any, id: string, secret: string, ip: string): Promise<{ statusCode: number, body: any, headers: Record<string, unknown> }> {
  const res = await app.inject({
    method: 'POST',
    url: '/token',
    remoteAddress: ip,
    headers: { authorization: basic(id, secret), ...FORM },
    payload: form({ grant_type: 'client_credentials' })
  })
  return { statusCode: res.statusCode, body: res.json(), headers: res.headers }
}

t.test('a flood of wrong secrets for one client is refused past the per-client limit, from fresh addresses too', async t => {
  const app = await limitedApp(t)
  t.equal((await token(app, 'agent', CLIENT_SECRET, '10.0.0.100')).statusCode, 200, 'agent authenticates once before the flood')

  for (let i = 1; i <= 5; i++) {
    const res = await token(app, 'agent', WRONG, `10.0.0.${i}`)
    t.equal(res.statusCode, 401, `failure ${i} is answered as usual`)
  }
  const before = app.clients.secretChecks.started
  const refused = await token(app, 'agent', WRONG, '10.0.0.6')
  t.equal(refused.statusCode, 429, 'a fresh address does not help: the client id is over its limit')
  t.same(refused.body, { error: 'rate_limited', error_description: 'too many failed client authentications' })
  const retryAfter = Number(refused.headers['retry-after'])
  t.ok(retryAfter >= 1 && retryAfter <= 300, `Retry-After is the rest of the 5-minute window (${retryAfter})`)
  t.equal((await token(app, 'agent', WRONG, '2001:db8::1')).statusCode, 429)
  t.equal(app.clients.secretChecks.started, before, 'refused before any scrypt ran')

  t.equal((await token(app, 'agent', CLIENT_SECRET, '10.0.0.7')).statusCode, 200, 'the owner, verified recently, keeps working')
  t.equal((await token(app, 'other', WRONG, '10.0.0.8')).statusCode, 401, 'another client is not locked')

  // Unknown ids are counted and refused exactly like known ones: the lockout names no client.
  for (let i = 1; i <= 5; i++) t.equal((await token(app, 'ghost', WRONG, `10.1.0.${i}`)).statusCode, 401)
  t.equal((await token(app, 'ghost', WRONG, '10.1.0.6')).statusCode, 429)
})

t.test('a flood from one address is refused past the per-IP limit, whatever client ids it tries; IPv6 by its /64', async t => {
  const app = await limitedApp(t, { failedAuthPerClient: { max: 1000, window: '5m' } })
  for (let i = 1; i <= 5; i++) t.equal((await token(app, `ghost-${i}`, WRONG, '192.0.2.1')).statusCode, 401)
  const before = app.clients.secretChecks.started
  const refused = await token(app, 'ghost-6', WRONG, '192.0.2.1')
  t.equal(refused.statusCode, 429)
  t.equal(refused.body.error, 'rate_limited')
  t.equal((await token(app, 'agent', CLIENT_SECRET, '::ffff:192.0.2.1')).statusCode, 429, 'the same address written as IPv6, with an unverified secret')
  t.equal(app.clients.secretChecks.started, before, 'refused before any scrypt ran')
  t.equal((await token(app, 'ghost-7', WRONG, '192.0.2.2')).statusCode, 401, 'another address is not locked')

  for (let i = 1; i <= 5; i++) t.equal((await token(app, `six-${i}`, WRONG, `2001:db8:5:5::${i}`)).statusCode, 401)
  t.equal((await token(app, 'six-6', WRONG, '2001:db8:5:5:ffff:1:2:3')).statusCode, 429, 'rotating within the /64 does not help')
  t.equal((await token(app, 'six-7', WRONG, '2001:db8:5:6::1')).statusCode, 401, 'the next /64 is another client')
})

t.test('50 parallel bad logins: scrypt runs two at a time, the excess gets 503 at once, every request is answered', async t => {
  const app = await build(t, testConfig(t, {
    rateLimits: {
      token: { max: 10_000, window: '1m' },
      failedAuthPerClient: { max: 10_000, window: '5m' },
      failedAuthPerIp: { max: 10_000, window: '5m' },
      concurrentSecretChecks: 2
    }
  }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
  const arrivals: number[] = []
  const answers = await Promise.all(Array.from({ length: 50 }, async () => {
    const res = await request(`${base}/token`, {
      method: 'POST',
      headers: { authorization: basic('agent', WRONG), ...FORM },
      body: form({ grant_type: 'client_credentials' }),
      headersTimeout: 20_000,
      bodyTimeout: 20_000
    })
    const body = await res.body.json() as { error: string }
    arrivals.push(res.statusCode)
    return { status: res.statusCode, error: body.error, retryAfter: res.headers['retry-after'] }
  }))
  t.equal(answers.length, 50, 'all answered')
  const busy = answers.filter(a => a.status === 503)
  const failed = answers.filter(a => a.status === 401)
  t.equal(busy.length + failed.length, 50, 'each is a 401 (checked) or a 503 (busy)')
  t.ok(busy.length > 0, `some were refused as busy (${busy.length})`)
  t.ok(failed.length >= 2 * 5, `the running and queued ones were checked (${failed.length})`)
  t.same(busy[0], { status: 503, error: 'temporarily_unavailable', retryAfter: '1' })
  // Refusals do not wait for the queue: the first one comes back before the queued checks are done.
  // (Not "before the first check": on a slow machine the first scrypt can finish before the last of
  // the 50 requests has even arrived, so a 401 may come first; that was seen in CI.)
  t.ok(arrivals.indexOf(503) < arrivals.lastIndexOf(401), 'the refusals came back before the queued checks were done')
  const stats = app.clients.secretChecks
  t.equal(stats.peak, 2, 'never more than two scrypt runs at once')
  t.equal(stats.started, failed.length)
  t.equal(stats.refused, busy.length)
  t.same([stats.running, stats.waiting], [0, 0])
})

t.test('per-IP limits on /token count an IPv6 client by its /64, and IPv4-mapped IPv6 as IPv4', async t => {
  // On a fixed clock: a minute boundary between two requests would reset the window mid-test.
  const app = await build(t, testConfig(t, { rateLimits: { token: { max: 2, window: '1m' } } }), { clock: new ManualClock().fn })
  const post = async (ip: string): Promise<number> => (await token(app, 'agent', CLIENT_SECRET, ip)).statusCode
  t.equal(await post('2001:db8:1:2::1'), 200)
  t.equal(await post('2001:db8:1:2::2'), 200)
  t.equal(await post('2001:db8:1:2:aaaa::3'), 429, 'a third address in the same /64 shares its budget')
  t.equal(await post('2001:db8:1:3::1'), 200, 'another /64 has its own')
  t.equal(await post('198.51.100.1'), 200)
  t.equal(await post('::ffff:198.51.100.1'), 200)
  t.equal(await post('198.51.100.1'), 429, 'the IPv4-mapped form counted against the IPv4 address')
})

t.test('rateLimits.ipv6Prefix sets the network length', async t => {
  // On a fixed clock: a minute boundary between two requests would reset the window mid-test.
  const app = await build(t, testConfig(t, { rateLimits: { token: { max: 1, window: '1m' }, ipv6Prefix: 48 } }), { clock: new ManualClock().fn })
  const post = async (ip: string): Promise<number> => (await token(app, 'agent', CLIENT_SECRET, ip)).statusCode
  t.equal(await post('2001:db8:1:2::1'), 200)
  t.equal(await post('2001:db8:1:ffff::1'), 429, 'same /48')
  t.throws(() => testConfig(t, { rateLimits: { ipv6Prefix: 129 } }), /config: rateLimits\.ipv6Prefix: /)
})

t.test('server.trustProxy: a hop count is a config error naming the key; addresses are checked at startup', async t => {
  const load = (trustProxy: unknown): unknown => loadConfig({ raw: { server: { trustProxy } }, env: { TOLLGATE_SECRET: SECRET } })
  for (const hops of [1, 0, 2]) {
    t.throws(() => load(hops), new ConfigError('server.trustProxy', 'a hop count is not supported: list the proxies\' addresses or CIDRs (e.g. [10.0.0.0/8]), or set true'))
  }
  t.throws(() => load('10.0.0.0/8, not-an-address'), /^config: server\.trustProxy: /)
  t.throws(() => load(['10.0.0.0/33']), /^config: server\.trustProxy: /)
  for (const ok of [false, true, '127.0.0.1', '10.0.0.0/8, ::1', ['loopback', '192.168.0.0/16']]) {
    t.doesNotThrow(() => load(ok), JSON.stringify(ok))
  }
})

t.test('GET /validate counts a client on a dual-stack socket (::ffff:a.b.c.d) under its IPv4 address', async t => {
  // On a fixed clock: a minute boundary between two requests would reset the window mid-test.
  const app = await build(t, testConfig(t, { rateLimits: { perIp: { max: 2, window: '1m' } } }), { clock: new ManualClock().fn })
  await app.listen({ port: 0, host: '::' })
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}/validate`
  const authorization = `Bearer ${(await issue(app)).access_token as string}`
  const routed = await app.inject({ method: 'GET', url: '/validate', remoteAddress: '127.0.0.1', headers: { authorization } })
  t.equal(routed.statusCode, 200, 'counted once as 127.0.0.1')
  const second = await request(url, { headers: { authorization } })
  await second.body.dump()
  t.equal(second.statusCode, 200, 'counted once more, from ::ffff:127.0.0.1 over the dual-stack socket')
  const third = await request(url, { headers: { authorization } })
  await third.body.dump()
  t.not(third.statusCode, 200, 'the third request from the same address is over the per-IP limit of 2')
  t.ok(third.headers['retry-after'] !== undefined)
})

t.test('replicas on one Redis share the failure counters: a replica that has not seen the limit refuses from its next failure on', async t => {
  const url = await testRedisUrl(t)
  if (url === undefined) return // testRedisUrl reported it: a skip, or a failure under CI
  const prefix = uniquePrefix('failed-auth')
  t.teardown(() => deletePrefix(url, prefix))
  const replica = async (): Promise<any> => await build(t, testConfig(t, {
    store: { redis: url, keyPrefix: prefix },
    rateLimits: { token: { max: 10_000, window: '1m' }, failedAuthPerClient: { max: 3, window: '5m' }, failedAuthPerIp: { max: 1000, window: '5m' } }
  }))
  const a = await replica()
  const b = await replica()
  for (let i = 1; i <= 3; i++) t.equal((await token(a, 'agent', WRONG, `10.2.0.${i}`)).statusCode, 401)
  t.equal((await token(a, 'agent', WRONG, '10.2.0.4')).statusCode, 429, 'replica a refuses past the limit')
  t.equal((await token(b, 'agent', WRONG, '10.2.0.5')).statusCode, 401, 'replica b checks once more: the store has no read, its failure finds the count over the limit')
  const before = b.clients.secretChecks.started
  t.equal((await token(b, 'agent', WRONG, '10.2.0.6')).statusCode, 429, 'then refuses too')
  t.equal(b.clients.secretChecks.started, before)
})
