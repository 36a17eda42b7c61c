// The admin API (CONTRACT §11) over two replicas on one real Redis (a unique key prefix each run):
// the guard (401 / 403), credits added at one replica usable at the other, resets, the ledger
// adding up to the usage, run-time clients created, disabled, deleted and given new secrets with
// the effect reaching the other replica within 1 s, and config clients read-only (409).
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { buildApp } from '../src/app.js'
import { loadConfig } from '../src/config.js'
import { FORM, ManualClock, SECRET, basic, client, form, tempDir } from './helper.js'
import { captureLog } from './support/logs.js'
import { runTollgate, type Run } from './support/command.js'
import { startApp, startUpstream } from './call-helper.js'
import { deletePrefix, testRedisUrl, uniquePrefix } from './support/redis.js'

const ADMIN = client('admin', { scopes: ['tollgate:admin', 'tools:call'], audiences: ['tollgate:admin', 'tool:chat'] })
const CLIENTS = [
  ADMIN,
  client('metered', { quota: { limit: 2, window: '1h' } }),
  client('agent', { quota: { limit: 100, window: '1d' } })
]

async function token (app: FastifyInstance, id: string, fields: Record<string, string> = {}, secret?: string): Promise<{ status: number, body: any }> {
  const res = await app.inject({ method: 'POST', url: '/token', headers: { authorization: basic(id, secret), ...FORM }, payload: form({ grant_type: 'client_credentials', ...fields }) })
  return { status: res.statusCode, body: res.json() }
}

async function adminToken (app: FastifyInstance): Promise<string> {
  const res = await token(app, 'admin', { audience: 'tollgate:admin', scope: 'tollgate:admin' })
  if (res.status !== 200) throw new Error(`admin token: ${res.status}`)
  return res.body.access_token
}

async function admin (app: FastifyInstance, bearer: string, method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, payload?: unknown): Promise<{ status: number, body: any, headers: Record<string, unknown> }> {
  const res = await app.inject({ method, url, headers: { authorization: `Bearer ${bearer}`, ...(payload !== undefined ? { 'content-type': 'application/json' } : {}) }, ...(payload !== undefined ? { payload: JSON.stringify(payload) } : {}) })
  return { status: res.statusCode, body: res.body === '' ? undefined : res.json(), headers: res.headers }
}

/** Polls `check` until it is true, for at most `ms` of real time (no fixed sleep); the elapsed ms, or undefined. */
/**
 * "Effective at every replica within 1 s" (CONTRACT §11) rests on one mechanism: each replica polls
 * the store every clientSyncMs (250 ms by default) and applies what changed. So the check is not a
 * stopwatch (a loaded machine stretches any wall-clock bound): `replica` must show the change once
 * two of its polls have completed after the change was made (the first may have begun before it),
 * and its poll interval must be at most 1 s. The elapsed time goes into the message for the reader.
 */
async function afterNextSync (t: Test, replica: FastifyInstance, check: () => Promise<boolean>, what: string): Promise<void> {
  t.ok(replica.clientSync.intervalMs <= 1000, 'the replica polls the client set at least once a second')
  const start = performance.now()
  const from = replica.clientSync.polls
  while (replica.clientSync.polls < from + 2) {
    if (performance.now() - start > 60_000) break // a stuck poll fails the check below, not the run
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  t.ok(replica.clientSync.polls >= from + 2 && await check(), `${what} after the replica's next poll (${Math.round(performance.now() - start)} ms here)`)
}

const redisUrl = await testRedisUrl(t)
const upstream = await startUpstream(t)

async function replicas (t: Test, clock?: ManualClock): Promise<[FastifyInstance, FastifyInstance]> {
  const keyPrefix = uniquePrefix('admin')
  t.teardown(async () => { await deletePrefix(redisUrl as string, keyPrefix) })
  const one = async (): Promise<FastifyInstance> => (await startApp(t, upstream, [
    { name: 'chat' },
    { name: 'broken', origin: 'http://127.0.0.1:9', audience: 'tool:chat' }
  ], {
    clients: CLIENTS,
    store: { redis: redisUrl, keyPrefix, timeout: '2s' },
    // Polling /token while a change propagates counts failed authentications: room for them.
    rateLimits: { token: { max: 100_000, window: '1m' }, perSubject: { max: 100_000, window: '1m' }, failedAuthPerClient: { max: 10_000, window: '5m' }, failedAuthPerIp: { max: 10_000, window: '5m' } }
  }, {}, clock?.fn)).app
  return [await one(), await one()]
}

async function call (app: FastifyInstance, bearer: string, tool = 'chat'): Promise<number> {
  const res = await app.inject({ method: 'POST', url: '/call', headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json' }, payload: JSON.stringify({ tool, arguments: {} }) })
  return res.statusCode
}

t.test('the guard: a token with audience and scope tollgate:admin, else 401 / 403 problems', { skip: redisUrl === undefined ? 'no Redis' : false }, async t => {
  const [a] = await replicas(t)
  const res = await a.inject({ method: 'GET', url: '/admin/clients' })
  t.equal(res.statusCode, 401, 'no token')
  t.match(res.headers['content-type'], /^application\/problem\+json/)
  t.match(res.headers['www-authenticate'], /^Bearer realm="tollgate"/)
  const agent = (await token(a, 'agent')).body.access_token
  const noAud = await admin(a, agent, 'GET', '/admin/clients')
  t.equal(noAud.status, 401, 'a token without audience tollgate:admin')
  t.equal(noAud.body.code, 'invalid_token')
  const noScope = (await token(a, 'admin', { audience: 'tollgate:admin', scope: 'tools:call' })).body.access_token
  const forbidden = await admin(a, noScope, 'POST', '/admin/usage/metered/credits', { add: 5 })
  t.equal(forbidden.status, 403, 'audience but not the scope')
  t.equal(forbidden.body.code, 'insufficient_scope')
  t.match(forbidden.headers['www-authenticate'], /scope="tollgate:admin"/)
  const ok = await admin(a, await adminToken(a), 'GET', '/admin/clients')
  t.equal(ok.status, 200, 'positive control: the admin token')
  t.equal(ok.headers['cache-control'], 'no-store')
})

t.test('credits added at one replica are usable at the other; reset; the ledger adds up to the usage', { skip: redisUrl === undefined ? 'no Redis' : false }, async t => {
  const clock = new ManualClock()
  const [a, b] = await replicas(t, clock)
  const root = await adminToken(a)
  const metered = (await token(b, 'metered')).body.access_token
  t.equal(await call(b, metered), 200)
  t.equal(await call(b, metered), 200)
  t.equal(await call(b, metered), 429, 'limit 2 spent at replica B')
  t.equal(await call(b, metered, 'broken'), 429, 'spent: refused before the upstream')

  const credited = await admin(a, root, 'POST', '/admin/usage/metered/credits', { add: 3 })
  t.equal(credited.status, 200)
  t.same(credited.body, { sub: 'metered', limit: 2, used: 2, remaining: 3, window: 3600, reset: credited.body.reset, credits: 3 })
  t.equal(await call(b, metered), 200, 'the credit is usable at replica B at once')
  const broken = await b.inject({ method: 'POST', url: '/call', headers: { authorization: `Bearer ${metered}`, 'content-type': 'application/json' }, payload: JSON.stringify({ tool: 'broken', arguments: {} }) })
  t.equal(broken.statusCode, 502, 'a failed call is charged, then refunded')
  // 3 used of 2 + 3 credits before it: the refund leaves 2, credits counted.
  t.match(broken.headers.ratelimit, /^"quota";r=2;t=\d+$/, 'the refund\'s RateLimit field counts the credits')
  t.equal(await call(b, metered), 200)
  t.equal(await call(b, metered), 200)
  t.equal(await call(b, metered), 429, 'limit + credits spent')
  const quota = await b.inject({ method: 'GET', url: '/quota', headers: { authorization: `Bearer ${metered}` } })
  t.match(quota.json(), { limit: 2, used: 5, remaining: 0 }, 'GET /quota counts the credits')

  const usage = await admin(b, await adminToken(b), 'GET', '/admin/usage/metered')
  t.match(usage.body, { sub: 'metered', limit: 2, used: 5, remaining: 0, window: 3600, credits: 3 })

  const reset = await admin(a, root, 'POST', '/admin/usage/metered/reset')
  t.equal(reset.status, 200)
  t.match(reset.body, { used: 0, remaining: 5, credits: 3 }, 'used back to 0; credits stay for the window')
  t.equal(await call(b, metered), 200, 'usable again after the reset')

  // The ledger: every charge, refund, credit and reset, from both replicas.
  const want = (await admin(a, root, 'GET', '/admin/usage/metered')).body
  t.equal(want.used, 1)
  // Each replica writes its lines after the turn that made them: B's are written once flushed.
  await b.quotas.ledger.flush()
  const lines: any[] = []
  let after: string | null = null
  do {
    const page: { status: number, body: any } = await admin(a, root, 'GET', `/admin/ledger?sub=metered&limit=2${after !== null ? `&after=${after}` : ''}`)
    if (page.status !== 200) throw new Error(JSON.stringify(page.body))
    lines.push(...page.body.entries)
    after = page.body.next
  } while (after !== null)
  t.equal(lines.length, 10, 'replica B\'s lines are in the ledger, read through A, page by page')
  const sum = (kind: string): number => lines.filter(l => l.kind === kind).reduce((n, l) => n + l.amount, 0)
  t.same(lines.map(l => l.kind).sort(), ['charge', 'charge', 'charge', 'charge', 'charge', 'charge', 'charge', 'credit', 'refund', 'reset'])
  t.equal(sum('charge') - sum('refund') - sum('reset'), want.used, 'charges − refunds − resets = usage')
  t.equal(sum('credit'), want.credits, 'credits')
  t.match(lines.find(l => l.kind === 'refund'), { sub: 'metered', client_id: 'metered', tool: 'broken', amount: 1, request_id: /\S/ })
  t.match(lines.find(l => l.kind === 'credit'), { client_id: 'admin', tool: null, amount: 3 })
  t.ok(lines.every(l => l.ts === new Date(clock.now).toISOString()), 'times from the gateway clock, ISO 8601')

  const since = await admin(a, root, 'GET', `/admin/ledger?since=${encodeURIComponent(new Date(clock.now + 1000).toISOString())}`)
  t.same(since.body, { entries: [], next: null }, 'since filters by time')
  t.equal((await admin(a, root, 'GET', '/admin/ledger?since=yesterday')).status, 400, 'a malformed since is 400')

  t.equal((await admin(a, root, 'GET', '/admin/usage/somebody')).body.code, 'quota_unknown', 'a subject that is no client needs limit and window')
  t.match((await admin(a, root, 'GET', '/admin/usage/somebody?limit=10&window=60')).body, { sub: 'somebody', limit: 10, used: 0, window: 60, credits: 0 })
  t.equal((await admin(a, root, 'POST', '/admin/usage/metered/credits', { add: -1 })).status, 400, 'add must be positive')
})

t.test('run-time clients: created at one replica, disabled, rotated and deleted with effect at the other within 1 s', { skip: redisUrl === undefined ? 'no Redis' : false }, async t => {
  const [a, b] = await replicas(t)
  const root = await adminToken(a)
  // A quota large enough that the polls below (each a charged call until a change arrives) never spend it.
  const created = await admin(a, root, 'POST', '/admin/clients', { id: 'runtime-1', scopes: ['tools:call'], audiences: ['tool:chat'], quota: { limit: 1000, window: 60 }, refresh: true, claims: { role: 'bot' } })
  t.equal(created.status, 201)
  t.equal(created.headers['cache-control'], 'no-store')
  t.match(created.body, { id: 'runtime-1', source: 'admin', scopes: ['tools:call'], quota: { limit: 1000, window: 60 }, disabled: false, client_secret: /^[A-Za-z0-9_-]{43}$/ })
  const secret = created.body.client_secret as string
  t.equal((await admin(a, root, 'POST', '/admin/clients', { id: 'runtime-1' })).body.code, 'client_exists')

  let issued: { status: number, body: any } = { status: 0, body: undefined }
  await afterNextSync(t, b, async () => { issued = await token(b, 'runtime-1', {}, secret); return issued.status === 200 }, 'the new client gets a token at replica B')
  const access = issued.body.access_token as string
  const refresh = issued.body.refresh_token as string
  t.equal(await call(b, access), 200, 'its token works at replica B')
  const other = (await token(b, 'agent')).body.access_token

  const listed = await admin(b, await adminToken(b), 'GET', '/admin/clients')
  t.same(listed.body.clients.map((c: any) => `${c.id}:${c.source}`), ['admin:config', 'metered:config', 'agent:config', 'runtime-1:admin'])
  t.notOk(JSON.stringify(listed.body).includes(secret), 'never a secret in a listing')

  // Rotation: the old secret stops, the new one works (at the other replica, within 1 s).
  const rotated = await admin(a, root, 'POST', '/admin/clients/runtime-1/secret')
  t.equal(rotated.status, 200)
  const fresh = rotated.body.client_secret as string
  t.not(fresh, secret)
  t.equal((await token(a, 'runtime-1', {}, secret)).status, 401, 'the old secret stops at once where it was rotated')
  await afterNextSync(t, b, async () => (await token(b, 'runtime-1', {}, secret)).status === 401, 'the old secret stops at replica B')
  t.equal((await token(b, 'runtime-1', {}, fresh)).status, 200, 'the new secret works at replica B')
  t.equal(await call(b, access), 200, 'tokens issued before the rotation keep working')

  // Disable at A: B refuses the token within 1 s; another client's token keeps working.
  const disabled = await admin(a, root, 'PATCH', '/admin/clients/runtime-1', { disabled: true })
  t.equal(disabled.status, 200)
  t.equal(disabled.body.disabled, true)
  await afterNextSync(t, b, async () => await call(b, access) === 401, 'the disabled client\'s access token is refused at replica B')
  const refused = await b.inject({ method: 'GET', url: '/quota', headers: { authorization: `Bearer ${access}` } })
  t.equal(refused.json().code, 'token_revoked')
  t.equal(await call(b, other), 200, 'positive control: another client\'s token at replica B')
  t.equal((await token(b, 'runtime-1', {}, fresh)).status, 401, 'a disabled client gets no token')
  const refreshed = await b.inject({ method: 'POST', url: '/token', headers: { authorization: basic('runtime-1', fresh), ...FORM }, payload: form({ grant_type: 'refresh_token', refresh_token: refresh }) })
  t.equal(refreshed.statusCode, 401, 'nor refreshes its refresh token')

  // Enabled again: new tokens work, the old one stays refused.
  t.equal((await admin(a, root, 'PATCH', '/admin/clients/runtime-1', { disabled: false, scopes: ['tools:call', 'tools:read'] })).status, 200)
  let again: { status: number, body: any } = { status: 0, body: undefined }
  let lastCall = 0
  await afterNextSync(t, b, async () => {
    again = await token(b, 'runtime-1', {}, fresh)
    lastCall = again.status === 200 ? await call(b, again.body.access_token) : 0
    return lastCall === 200
  }, 'enabled again: a new token works at replica B')
  t.equal(lastCall, 200, `token ${again.status} ${JSON.stringify(again.body).slice(0, 200)}`)
  t.equal(again.body.scope, 'tools:call tools:read', 'the changed scopes are in the new token')
  t.equal(await call(b, access), 401, 'the token from before the disable stays refused')

  // Delete at A: B refuses within 1 s; the id is gone from the listing.
  const live = again.body.access_token as string
  t.equal((await admin(a, root, 'DELETE', '/admin/clients/runtime-1')).status, 204)
  await afterNextSync(t, b, async () => await call(b, live) === 401, 'a deleted client\'s token is refused at replica B')
  t.equal((await token(b, 'runtime-1', {}, fresh)).status, 401, 'a deleted client gets no token')
  t.equal((await admin(a, root, 'GET', '/admin/clients/runtime-1')).status, 404)
  t.equal((await admin(a, root, 'PATCH', '/admin/clients/runtime-1', { disabled: false })).body.code, 'client_not_found')
})

t.test('config clients are listed but read-only: 409 client_from_config', { skip: redisUrl === undefined ? 'no Redis' : false }, async t => {
  const [a] = await replicas(t)
  const root = await adminToken(a)
  t.match((await admin(a, root, 'GET', '/admin/clients/agent')).body, { id: 'agent', source: 'config', quota: { limit: 100, window: 86400 }, disabled: false })
  for (const [method, url, payload] of [
    ['PATCH', '/admin/clients/agent', { disabled: true }],
    ['POST', '/admin/clients/agent/secret', undefined],
    ['DELETE', '/admin/clients/agent', undefined],
    ['POST', '/admin/clients', { id: 'agent' }]
  ] as const) {
    const res = await admin(a, root, method, url, payload)
    t.equal(res.status, 409, `${method} ${url}`)
    t.equal(res.body.code, 'client_from_config')
  }
  t.equal((await token(a, 'agent')).status, 200, 'the config client still works')
  t.equal((await admin(a, root, 'POST', '/admin/clients', { id: 'bad', claims: { sub: 'x' } })).status, 400, 'a registered claim is refused')
  t.equal((await admin(a, root, 'POST', '/admin/clients', { id: 'bad id' })).status, 400, 'a malformed id is refused')
})


const cli = async (args: string[], env: Record<string, string>): Promise<Run> => await runTollgate(args, { env: { PATH: process.env.PATH ?? '', ...env } })

t.test('tollgate usage export writes the ledger as CSV and JSONL from the configured store (the real CLI)', async t => {
  const dir = tempDir(t)
  const file = join(dir, 'tollgate.yaml')
  // JSON is YAML: the config file the CLI and the app both read, on one SQLite file.
  writeFileSync(file, JSON.stringify({
    issuer: 'https://tollgate.test',
    dataDir: dir,
    logLevel: 'silent',
    clients: [ADMIN, client('metered', { quota: { limit: 10, window: '1h' } })],
    tools: [{ name: 'chat', url: `${upstream.origin}/chat`, audience: 'tool:chat', scopes: ['tools:call'] }]
  }))
  const env = { TOLLGATE_SECRET: SECRET }
  const clock = new ManualClock()
  const app = await buildApp(loadConfig({ configPath: file, env }), { logger: false, clock: clock.fn })
  await app.ready()
  const metered = (await token(app, 'metered')).body.access_token
  t.equal(await call(app, metered), 200)
  clock.advance(60_000)
  t.equal(await call(app, metered), 200)
  const root = await adminToken(app)
  // A subject from an identity provider may be anything: a credit for one that looks like a formula.
  t.equal((await admin(app, root, 'POST', `/admin/usage/${encodeURIComponent('=evil,"x"')}/credits`, { add: 2, limit: 5, window: 60 })).status, 200)
  t.equal((await admin(app, root, 'POST', '/admin/usage/metered/credits', { add: 4 })).status, 200)
  await app.close() // writes the last ledger lines

  const csv = await cli(['usage', 'export', '--config', file], env)
  t.equal(csv.status, 0, csv.stderr)
  const rows = csv.stdout.trimEnd().split('\n')
  t.equal(rows[0], 'ts,sub,client_id,tool,kind,amount,request_id')
  t.equal(rows.length, 5, 'a header and four lines')
  t.match(rows[1], new RegExp(`^${new Date(clock.now - 60_000).toISOString()},metered,metered,chat,charge,1,\\S+$`))
  t.match(rows[3], /^[^,]+,"'=evil,""x""",admin,,credit,2,\S+$/, 'quoted, and never a spreadsheet formula')
  t.match(rows[4], /,metered,admin,,credit,4,/)

  const jsonl = await cli(['usage', 'export', '--format', 'jsonl', '--since', new Date(clock.now).toISOString(), '--config', file], env)
  t.equal(jsonl.status, 0, jsonl.stderr)
  const lines = jsonl.stdout.trimEnd().split('\n').map(l => JSON.parse(l))
  t.same(lines.map(l => `${l.sub}:${l.kind}:${l.amount}`), ['metered:charge:1', '=evil,"x":credit:2', 'metered:credit:4'], '--since leaves out the earlier line')
  t.same(Object.keys(lines[0]), ['ts', 'sub', 'client_id', 'tool', 'kind', 'amount', 'request_id'])

  const bad = await cli(['usage', 'export', '--format', 'xml', '--config', file], env)
  t.equal(bad.status, 1)
  t.match(bad.stderr, /--format is csv or jsonl/)
  t.equal((await cli(['usage', 'export', '--since', 'last week', '--config', file], env)).status, 1, 'a malformed --since')
})

t.test('every admin change writes an audit line naming the admin; no secret ever reaches a log line', async t => {
  const config = loadConfig({
    raw: { issuer: 'https://tollgate.test', dataDir: tempDir(t), logLevel: 'info', clients: [ADMIN, client('metered', { quota: { limit: 2, window: '1h' } })] },
    env: { TOLLGATE_SECRET: SECRET }
  })
  const log = captureLog(config, 'info')
  const app = await buildApp(config, { loggerInstance: log.logger })
  t.teardown(() => app.close())
  await app.ready()
  const root = await adminToken(app)
  const created = await admin(app, root, 'POST', '/admin/clients', { id: 'logged', scopes: [], audiences: [] })
  const rotated = await admin(app, root, 'POST', '/admin/clients/logged/secret')
  await admin(app, root, 'PATCH', '/admin/clients/logged', { disabled: true })
  await admin(app, root, 'PATCH', '/admin/clients/logged', { claims: { team: 'a' } })
  await admin(app, root, 'DELETE', '/admin/clients/logged')
  await admin(app, root, 'POST', '/admin/usage/metered/credits', { add: 1 })
  await admin(app, root, 'POST', '/admin/usage/metered/reset', {})
  const audits = log.parsed.filter(l => typeof l.audit === 'string' && l.audit.startsWith('admin.'))
  t.same(audits.map(l => l.audit), ['admin.client.created', 'admin.client.secret_rotated', 'admin.client.disabled', 'admin.client.updated', 'admin.client.deleted', 'admin.usage.credited', 'admin.usage.reset'])
  t.ok(audits.every(l => l.admin_client_id === 'admin' && l.admin_sub === 'admin'), 'each names who made the change')
  t.match(audits[0], { client_id: 'logged' })
  t.match(audits[5], { sub: 'metered', add: 1 })
  const all = log.lines.join('\n')
  t.notOk(all.includes(created.body.client_secret as string), 'the created secret is in no log line')
  t.notOk(all.includes(rotated.body.client_secret as string), 'the rotated secret is in no log line')
  t.notOk(all.includes(root), 'nor the admin token')
})
