// Balance everywhere and metering through a reverse proxy (CONTRACT §10): GET /validate 200
// answers carry X-Auth-Quota-Limit/-Remaining/-Reset for a token with a quota claim (none for a
// token without one), and GET /validate?charge=N charges the subject's quota on the same counter
// as /call and GET /quota, refusing a spent quota with 429 quota_exceeded. Over real HTTP, on the
// real SQLite file, and on a real Redis shared by two replicas.
import fc from 'fast-check'
import t from 'tap'
import { request } from 'undici'
import type { FastifyInstance } from 'fastify'
import { ManualClock, client, issue, type TestContext } from './helper.js'
import { startApp, startUpstream } from './call-helper.js'
import { deletePrefix, testRedisUrl, uniquePrefix } from './support/redis.js'

interface Answer { status: number, headers: Record<string, string | string[] | undefined>, body: any }

const QUOTA_HEADERS = ['x-auth-quota-limit', 'x-auth-quota-remaining', 'x-auth-quota-reset']

async function get (base: string, path: string, token?: string): Promise<Answer> {
  const res = await request(`${base}${path}`, { headers: token !== undefined ? { authorization: `Bearer ${token}` } : {} })
  const text = await res.body.text()
  return { status: res.statusCode, headers: res.headers, body: text === '' ? undefined : JSON.parse(text) }
}

async function callTool (base: string, token: string): Promise<Answer> {
  const res = await request(`${base}/call`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: '{"tool":"chat","arguments":{}}' })
  const text = await res.body.text()
  return { status: res.statusCode, headers: res.headers, body: text }
}

function balance (a: Answer): Record<string, unknown> {
  return Object.fromEntries(QUOTA_HEADERS.map(name => [name, a.headers[name]]))
}

const CLIENTS = [
  // accessTtl long enough that the manual clock's jumps below never expire a token
  client('agent', { quota: { limit: 5, window: '1h' }, accessTtl: '2h' }),
  client('free', { accessTtl: '2h' })
]

/** An app with the `chat` tool (cost 1) on a real upstream, its clock 10 minutes into an hour window. */
async function gateway (t: TestContext, clock: ManualClock, overrides: Record<string, unknown> = {}): Promise<{ app: FastifyInstance, base: string }> {
  const up = await startUpstream(t)
  return await startApp(t, up, [{ name: 'chat' }], { clients: CLIENTS, ...overrides }, {}, clock.fn)
}

t.test('200 answers carry the balance for a token with a quota claim, none for one without', async t => {
  const clock = new ManualClock(Date.UTC(2026, 10, 24, 12, 10, 0))
  const { app, base } = await gateway(t, clock)
  const agent = (await issue(app, {}, 'agent')).access_token as string
  const free = (await issue(app, {}, 'free')).access_token as string

  const first = await get(base, '/validate', agent)
  t.equal(first.status, 200)
  t.same(balance(first), { 'x-auth-quota-limit': '5', 'x-auth-quota-remaining': '5', 'x-auth-quota-reset': '3000' })
  t.equal(first.headers['x-auth-subject'], 'agent', 'the identity headers are still there')

  t.equal((await callTool(base, agent)).status, 200)
  t.equal((await callTool(base, agent)).status, 200)
  clock.advance(20 * 60_000) // 12:30: the window resets at 13:00
  await app.tokens.revocations.sync() // the manual clock jumped past the revocation list's freshness
  const after = await get(base, '/validate', agent)
  t.equal(after.status, 200)
  t.same(balance(after), { 'x-auth-quota-limit': '5', 'x-auth-quota-remaining': '3', 'x-auth-quota-reset': '1800' }, 'remaining after two /call charges; reset counts down with the clock')

  clock.advance(30 * 60_000) // 13:00: a new window
  await app.tokens.revocations.sync()
  t.same(balance(await get(base, '/validate', agent)), { 'x-auth-quota-limit': '5', 'x-auth-quota-remaining': '5', 'x-auth-quota-reset': '3600' }, 'a new window is full again')

  const unmetered = await get(base, '/validate', free)
  t.equal(unmetered.status, 200)
  t.equal(unmetered.headers['x-auth-subject'], 'free')
  for (const name of QUOTA_HEADERS) t.equal(unmetered.headers[name], undefined, `no ${name} for a token without a quota claim`)
})

t.test('?charge=N charges the counter /call and GET /quota see; a spent quota is 429 quota_exceeded', async t => {
  const clock = new ManualClock(Date.UTC(2026, 10, 24, 12, 10, 0))
  const { app, base } = await gateway(t, clock)
  const agent = (await issue(app, {}, 'agent')).access_token as string
  const quota = async (): Promise<any> => (await get(base, '/quota', agent)).body

  const charged = await get(base, '/validate?charge=2', agent)
  t.equal(charged.status, 200)
  t.same(balance(charged), { 'x-auth-quota-limit': '5', 'x-auth-quota-remaining': '3', 'x-auth-quota-reset': '3000' }, 'the balance after the charge')
  t.match(await quota(), { used: 2, remaining: 3 }, 'GET /quota sees the charge')

  const call = await callTool(base, agent)
  t.equal(call.status, 200)
  t.equal(call.headers.ratelimit, '"quota";r=2;t=3000', '/call charges the same counter')

  t.equal((await get(base, '/validate', agent)).headers['x-auth-quota-remaining'], '2', 'a plain GET /validate charges nothing')
  t.equal((await get(base, '/validate?charge=0', agent)).headers['x-auth-quota-remaining'], '2', 'charge=0 charges nothing')
  t.match(await quota(), { used: 3 })

  const tooMuch = await get(base, '/validate?charge=3', agent)
  t.equal(tooMuch.status, 429, 'a charge above what is left is refused whole')
  t.match(await quota(), { used: 3 }, 'and takes nothing')

  t.equal((await get(base, '/validate?charge=2', agent)).headers['x-auth-quota-remaining'], '0', 'exactly what is left is granted')
  const spent = await get(base, '/validate?charge=1', agent)
  t.equal(spent.status, 429)
  t.match(spent.headers['content-type'], /^application\/problem\+json/)
  t.match(spent.body, { status: 429, code: 'quota_exceeded' })
  t.equal(spent.headers['retry-after'], '3000', 'Retry-After: seconds until the window resets')
  t.equal(spent.headers['ratelimit-policy'], '"quota";q=5;w=3600')
  t.equal(spent.headers.ratelimit, '"quota";r=0;t=3000')
  for (const name of QUOTA_HEADERS) t.equal(spent.headers[name], undefined, `no ${name} on a refusal`)
  t.equal((await callTool(base, agent)).status, 429, '/call sees the spent quota')
  t.match(await quota(), { used: 5, remaining: 0 })
  t.equal((await get(base, '/validate', agent)).status, 200, 'without charge a spent quota still validates (the balance says 0)')

  clock.advance(50 * 60_000)
  await app.tokens.revocations.sync()
  t.equal((await get(base, '/validate?charge=1', agent)).status, 200, 'the next window charges again')
})

t.test('?charge on a token without a quota claim: 200, nothing charged, no balance', async t => {
  const clock = new ManualClock(Date.UTC(2026, 10, 24, 12, 10, 0))
  const { app, base } = await gateway(t, clock)
  const free = (await issue(app, {}, 'free')).access_token as string
  for (let i = 0; i < 3; i++) {
    const res = await get(base, '/validate?charge=1000000000', free)
    t.equal(res.status, 200)
    for (const name of QUOTA_HEADERS) t.equal(res.headers[name], undefined)
  }
  t.same((await get(base, '/quota', free)).body, { sub: 'free', limit: null, used: null, remaining: null, window: null, reset: null })
})

t.test('a malformed charge is 400 invalid_request and charges nothing', async t => {
  const clock = new ManualClock(Date.UTC(2026, 10, 24, 12, 10, 0))
  const { app, base } = await gateway(t, clock)
  const agent = (await issue(app, {}, 'agent')).access_token as string
  const bad = ['', 'abc', '-1', '1.5', '1e3', '0x10', '01', '+1', ' 1', '1000000001', '99999999999999999999', '1&charge=2']
  for (const value of bad) {
    const res = await get(base, `/validate?charge=${encodeURIComponent(value).replace('%26charge%3D', '&charge=')}`, agent)
    t.equal(res.status, 400, `charge=${JSON.stringify(value)}`)
    t.match(res.body, { status: 400, code: 'invalid_request', detail: /charge/ })
    t.match(res.headers['content-type'], /^application\/problem\+json/)
  }
  t.match((await get(base, '/quota', agent)).body, { used: 0 }, 'nothing was charged')
  // Positive controls: the largest charge is well-formed (refused only because the quota is 5), one fits.
  const largest = await get(base, '/validate?charge=1000000000', agent)
  t.equal(largest.status, 429)
  t.match(largest.body, { code: 'quota_exceeded' })
  t.equal((await get(base, '/validate?charge=1', agent)).status, 200)
  t.match((await get(base, '/quota', agent)).body, { used: 1 })
  t.equal((await get(base, '/validate?charge=1')).status, 401, 'no token: 401 before anything else')
})

t.test('20 parallel charges against what is left: exactly that many pass', async t => {
  const clock = new ManualClock(Date.UTC(2026, 10, 24, 12, 10, 0))
  const { app, base } = await gateway(t, clock)
  const agent = (await issue(app, {}, 'agent')).access_token as string
  const statuses = await Promise.all(Array.from({ length: 20 }, async () => (await get(base, '/validate?charge=1', agent)).status))
  t.equal(statuses.filter(s => s === 200).length, 5)
  t.equal(statuses.filter(s => s === 429).length, 15)
  t.match((await get(base, '/quota', agent)).body, { used: 5 })
})

t.test('rate limits on GET /validate stay 403 with Retry-After (only a spent quota is 429)', async t => {
  const clock = new ManualClock(Date.UTC(2026, 10, 24, 12, 10, 0))
  const { app, base } = await gateway(t, clock, { rateLimits: { perSubject: { max: 2, window: '1d' } } })
  const agent = (await issue(app, {}, 'agent')).access_token as string
  t.equal((await get(base, '/validate?charge=1', agent)).status, 200)
  t.equal((await get(base, '/validate?charge=1', agent)).status, 200)
  const limited = await get(base, '/validate?charge=1', agent)
  t.equal(limited.status, 403)
  t.match(limited.body, { code: 'rate_limited' })
  t.ok(Number(limited.headers['retry-after']) > 0)
  t.match((await get(base, '/quota', agent)).body, { used: 2 }, 'a rate-limited request is not charged')
})

t.test('any charge value: 200, 400 or 429, never a 5xx, and the counter moves by exactly the granted charges', async t => {
  const clock = new ManualClock(Date.UTC(2026, 10, 24, 12, 10, 0))
  const { app } = await gateway(t, clock, {
    rateLimits: { perSubject: { max: 100000, window: '1d' } },
    clients: [client('agent', { quota: { limit: 1000, window: '1d' }, accessTtl: '2h' })]
  })
  const agent = (await issue(app, {}, 'agent')).access_token as string
  let granted = 0
  const counts = { 200: 0, 400: 0, 429: 0 }
  const value = fc.oneof(fc.nat({ max: 40 }).map(String), fc.string({ maxLength: 12 }), fc.constantFrom('1e1', '-0', '0.0', '00', '1000000000', '1000000001'))
  await fc.assert(fc.asyncProperty(value, async v => {
    const res = await app.inject({ method: 'GET', url: `/validate?charge=${encodeURIComponent(v)}`, headers: { authorization: `Bearer ${agent}` } })
    if (res.statusCode !== 200 && res.statusCode !== 400 && res.statusCode !== 429) throw new Error(`charge=${JSON.stringify(v)} → ${res.statusCode}`)
    const wellFormed = /^(0|[1-9][0-9]{0,8}|1000000000)$/.test(v)
    if (wellFormed !== (res.statusCode !== 400)) throw new Error(`charge=${JSON.stringify(v)} → ${res.statusCode}`)
    counts[res.statusCode as 200 | 400 | 429]++
    if (res.statusCode === 200) granted += Number(v)
  }), { numRuns: 300 })
  const used = (await app.inject({ method: 'GET', url: '/quota', headers: { authorization: `Bearer ${agent}` } })).json().used
  t.equal(used, granted, 'GET /quota counts exactly the granted charges')
  t.ok(counts[200] > 0 && counts[400] > 0, `both granted and malformed values were tried (${JSON.stringify(counts)})`)
})

const redisUrl = await testRedisUrl(t)

t.test('two replicas on one Redis charge one counter', { skip: redisUrl === undefined ? 'no Redis' : false }, async t => {
  const url = redisUrl as string
  const keyPrefix = uniquePrefix('validate-charge')
  t.teardown(async () => { await deletePrefix(url, keyPrefix) })
  const clock = new ManualClock(Date.UTC(2026, 10, 24, 12, 10, 0))
  const store = { redis: url, keyPrefix }
  const a = await gateway(t, clock, { store })
  const b = await gateway(t, clock, { store })
  const agent = (await issue(a.app, {}, 'agent')).access_token as string

  t.equal((await get(a.base, '/validate?charge=2', agent)).status, 200)
  t.equal((await callTool(b.base, agent)).status, 200)
  t.same(balance(await get(b.base, '/validate', agent)), { 'x-auth-quota-limit': '5', 'x-auth-quota-remaining': '2', 'x-auth-quota-reset': '3000' }, 'B reads what A charged and what B charged')
  const statuses = await Promise.all(Array.from({ length: 10 }, async (_, i) => (await get(i % 2 === 0 ? a.base : b.base, '/validate?charge=1', agent)).status))
  t.equal(statuses.filter(s => s === 200).length, 2, 'exactly what was left, across both replicas')
  const spent = await get(a.base, '/validate?charge=1', agent)
  t.equal(spent.status, 429)
  t.equal(spent.headers.ratelimit, '"quota";r=0;t=3000')
  t.match((await get(b.base, '/quota', agent)).body, { used: 5, remaining: 0 })
})
