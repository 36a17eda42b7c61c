// tollgate/client against a real gateway on a free port (real SQLite file, real upstream tool):
// resuming a refresh family across a process restart, one token request for 50 concurrent calls at
// expiry, a revoked family rejected once with the typed error (no retry storm), one retry after the
// 401 of a retired key, numbers from the RateLimit and quota fields, and the 0600 credentials file.
// Token requests are counted on the gateway's HTTP server itself.
import { execFile } from 'node:child_process'
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { promisify } from 'node:util'
import openapiTS, { astToString } from 'openapi-typescript'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { stringify } from 'yaml'
import { buildApp } from '../src/app.js'
import { createTollgateClient, TollgateFamilyRevokedError, type TollgateClient } from '../src/client/index.js'
import { startUpstream } from './support/upstream.js'
import { CLIENT_SECRET, FORM, basic, client, form, reloadEvery, tempDir, testConfig, type TestContext } from './helper.js'
import { ROOT, ensureBuilt } from './support/process.js'
import { tollgateInProcess } from './support/command.js'

const run = promisify(execFile)
const kidOf = (token: string): string => JSON.parse(Buffer.from(token.split('.')[0] as string, 'base64url').toString()).kid
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

interface Gateway {
  app: FastifyInstance
  base: string
  dir: string
  configFile: string
  /** Every request the gateway's HTTP server finished: path and status. */
  seen: Array<{ path: string, status: number }>
  count: (path: string, status?: number) => number
}

async function gateway (t: TestContext, accessTtl = '5m'): Promise<Gateway> {
  const upstream = await startUpstream(t)
  const dir = tempDir(t)
  const raw = {
    issuer: 'https://tollgate.test',
    dataDir: dir,
    logLevel: 'silent',
    clients: [client('agent', { refresh: true, accessTtl, audiences: ['tool:echo'], quota: { limit: 1000, window: '1d' } })],
    tools: [{ name: 'echo', url: `${upstream.origin}/echo`, audience: 'tool:echo', scopes: ['tools:call'] }]
  }
  const configFile = join(dir, 'tollgate.yaml')
  writeFileSync(configFile, stringify(raw), { mode: 0o600 })
  const app = await buildApp(reloadEvery(testConfig(t, raw), 200), { logger: false })
  t.teardown(() => app.close())
  await app.ready()
  const seen: Gateway['seen'] = []
  // Counted on the raw server, so no request can escape the count whatever Fastify refuses it with.
  app.server.on('request', (req, res) => {
    res.on('finish', () => { seen.push({ path: (req.url ?? '').split('?')[0] as string, status: res.statusCode }) })
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
  const count = (path: string, status?: number): number => seen.filter(s => s.path === path && (status === undefined || s.status === status)).length
  return { app, base, dir, configFile, seen, count }
}

function newClient (t: TestContext, gw: Gateway, extra: Partial<Parameters<typeof createTollgateClient>[0]> = {}): TollgateClient {
  const c = createTollgateClient({ baseUrl: gw.base, clientId: 'agent', clientSecret: CLIENT_SECRET, ...extra })
  t.teardown(() => c.close())
  return c
}

async function refreshWith (gw: Gateway, refreshToken: string): Promise<{ status: number, error?: string }> {
  const res = await gw.app.inject({ method: 'POST', url: '/token', headers: { ...FORM, authorization: basic('agent') }, payload: form({ grant_type: 'refresh_token', refresh_token: refreshToken }) })
  return { status: res.statusCode, error: res.json().error }
}

t.test('src/client/api.ts is what openapi-typescript generates from the committed spec (run `npm run openapi`)', async t => {
  const spec = JSON.parse(readFileSync(join(ROOT, 'openapi/openapi.json'), 'utf8'))
  const generated = astToString(await openapiTS(spec))
  const committed = readFileSync(join(ROOT, 'src/client/api.ts'), 'utf8')
  const body = (text: string): string => text.slice(text.indexOf('export '))
  t.equal(body(committed), body(generated))
})

t.test('a call, its RateLimit fields and the quota come back as numbers; the credentials file is 0600 and replaced atomically', async t => {
  const gw = await gateway(t)
  const file = join(gw.dir, 'agent.credentials.json')
  const c = newClient(t, gw, { credentialsFile: file })
  const answer = await c.call('echo', { text: 'hi' })
  t.equal(answer.status, 200)
  t.match(answer.body, { method: 'POST', body: JSON.stringify({ tool: 'echo', arguments: { text: 'hi' } }) }, 'the tool saw the call')
  t.same(answer.rateLimit, { limit: 1000, window: 86400, remaining: 999, reset: answer.rateLimit.reset })
  t.ok(Number.isInteger(answer.rateLimit.reset) && (answer.rateLimit.reset as number) > 0, 'reset is a number of seconds')

  const passed = await c.callPath('echo', 'items/a b', { method: 'PUT', body: { n: 1 }, query: { q: 'x' } })
  t.equal(passed.status, 200)
  t.match(passed.body, { method: 'PUT', url: '/echo/items/a%20b?q=x', body: '{"n":1}' }, 'the pass-through helper sent method, path, query and body')
  t.equal(passed.rateLimit.remaining, 998)

  // One read: `reset` counts down, and two reads a second apart would differ.
  const quota = await c.quota()
  t.same(quota, { limit: 1000, used: 2, remaining: 998, window: 86400, reset: quota.reset })
  t.ok(Number.isInteger(quota.reset) && quota.reset > 0, 'reset is a number of seconds')
  t.equal(gw.count('/token'), 1, 'one token for all of it')

  t.equal(statSync(file).mode & 0o777, 0o600)
  const stored = JSON.parse(readFileSync(file, 'utf8'))
  t.match(stored, { version: 1, clientId: 'agent', refreshToken: /^tgr_/ })
  t.same(readdirSync(gw.dir).filter(f => f.endsWith('.tmp')), [], 'no temp file left behind')
})

t.test('across a process restart the client resumes its family with the persisted refresh token', async t => {
  ensureBuilt() // the example imports tollgate/client, i.e. dist/client/index.js
  const gw = await gateway(t)
  const file = join(gw.dir, 'agent.credentials.json')
  const env = { ...process.env, TOLLGATE_URL: gw.base, TOLLGATE_CLIENT_ID: 'agent', TOLLGATE_CLIENT_SECRET: CLIENT_SECRET, TOLLGATE_CREDENTIALS_FILE: file, TOLLGATE_TOOL: 'echo' }
  const example = join(ROOT, 'examples/client/call-tool.mjs')

  const first = await run(process.execPath, [example], { env, cwd: ROOT })
  t.match(JSON.parse(first.stdout), { status: 200, rateLimit: { limit: 1000, remaining: 999 }, quota: { used: 1 } })
  t.equal(gw.count('/token', 200), 1, 'the first process got its tokens with one request')
  const persisted = JSON.parse(readFileSync(file, 'utf8')).refreshToken as string
  t.match(persisted, /^tgr_/, 'and left its refresh token in the file')

  const second = await run(process.execPath, [example], { env, cwd: ROOT })
  t.match(JSON.parse(second.stdout), { status: 200, quota: { used: 2 } })
  t.equal(gw.count('/token', 200), 2, 'the restarted process made one token request')
  const rotated = JSON.parse(readFileSync(file, 'utf8')).refreshToken as string
  t.not(rotated, persisted, 'the file now holds the rotated refresh token')
  for (const out of [first, second]) {
    t.notMatch(out.stdout + out.stderr, persisted, 'no refresh token in the output')
    t.notMatch(out.stdout + out.stderr, CLIENT_SECRET, 'no secret in the output')
  }

  // Proof that the second process refreshed with the persisted token, in the same family: presenting
  // that token again is reuse, which revokes its family, and the file's newest token dies with it.
  t.same(await refreshWith(gw, persisted), { status: 400, error: 'invalid_grant' }, 'the persisted token was rotated by the second process')
  t.same(await refreshWith(gw, rotated), { status: 400, error: 'invalid_grant' }, 'the newest token belonged to the same family')
})

t.test('50 concurrent calls at token expiry cause exactly one token request', async t => {
  // The client reads the wall clock (it takes no clock), so real time has to pass: a 2 s token is
  // reused for its first 1.6 s (renewal starts with a fifth of the lifetime left), and is past its
  // expiry after the sleep.
  const gw = await gateway(t, '2s')
  const c = newClient(t, gw)
  const first = await c.accessToken()
  t.equal(gw.count('/token'), 1)
  t.equal(await c.accessToken(), first, 'the cached token is reused')
  await sleep(2100)
  const answers = await Promise.all(Array.from({ length: 50 }, async (_, i) => await c.call('echo', { i })))
  t.same(answers.map(a => a.status), Array(50).fill(200), 'every call succeeded')
  t.equal(gw.count('/token'), 2, 'one renewal shared by the 50 callers')
  t.equal(gw.count('/call', 401), 0, 'no call went out with the expired token')
  t.not(await c.accessToken(), first)
})

t.test('a revoked family rejects with TollgateFamilyRevokedError once, without a retry storm', async t => {
  const gw = await gateway(t)
  const file = join(gw.dir, 'agent.credentials.json')
  const c = newClient(t, gw, { credentialsFile: file })
  t.equal((await c.call('echo', {})).status, 200)
  const refreshToken = JSON.parse(readFileSync(file, 'utf8')).refreshToken as string
  const revoked = await gw.app.inject({ method: 'POST', url: '/revoke', headers: { ...FORM, authorization: basic('agent') }, payload: form({ token: refreshToken }) })
  t.equal(revoked.statusCode, 200, 'the family is revoked (its access tokens too)')
  const current = await c.accessToken()
  const deadline = Date.now() + 5000
  const refused = async (): Promise<boolean> => (await gw.app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${current}` } })).statusCode === 401
  while (!await refused() && Date.now() < deadline) await sleep(50)
  t.ok(await refused(), 'the gateway refuses the family\'s access token')
  const tokenRequests = gw.count('/token')

  const results = await Promise.allSettled(Array.from({ length: 10 }, async () => await c.call('echo', {})))
  t.ok(results.every(r => r.status === 'rejected' && r.reason instanceof TollgateFamilyRevokedError), 'every concurrent call rejects with the typed error')
  const error = (results[0] as PromiseRejectedResult).reason as TollgateFamilyRevokedError
  t.match(error, { name: 'TollgateFamilyRevokedError', code: 'invalid_grant', status: 400 })
  t.notMatch(error.message, refreshToken, 'the error carries no token')
  t.equal(gw.count('/token') - tokenRequests, 1, 'one refresh attempt for all of them')
  t.equal(gw.count('/call', 401), 10, 'each call went out once with its revoked token, and was not retried')

  const calls = gw.seen.length
  await t.rejects(c.call('echo', {}), TollgateFamilyRevokedError, 'a later call rejects too')
  await t.rejects(c.accessToken(), TollgateFamilyRevokedError)
  await t.rejects(c.quota(), TollgateFamilyRevokedError)
  t.equal(gw.seen.length, calls, '... without any request')
  t.equal(JSON.parse(readFileSync(file, 'utf8')).refreshToken, null, 'the dead token is gone from the file, so a restart starts afresh')

  const restarted = newClient(t, gw, { credentialsFile: file })
  t.equal((await restarted.call('echo', {})).status, 200, 'a new client on that file starts again from client credentials')
})

t.test('a 401 from a retired key is retried once after re-authentication, and succeeds', async t => {
  const gw = await gateway(t)
  const c = newClient(t, gw)
  t.equal((await c.call('echo', {})).status, 200)
  const leaked = kidOf(await c.accessToken())

  const rotated = await tollgateInProcess(['keys', 'rotate', '--now', '--config', gw.configFile])
  t.equal(rotated.status, 0, rotated.stderr)
  const retired = await tollgateInProcess(['keys', 'retire', leaked, '--now', '--config', gw.configFile])
  t.equal(retired.status, 0, retired.stderr)
  const deadline = Date.now() + 5000
  while (gw.app.keys.verificationKey(leaked) !== undefined && Date.now() < deadline) await sleep(50)
  t.equal(gw.app.keys.verificationKey(leaked), undefined, 'the gateway dropped the key within its reload interval')

  const tokens = gw.count('/token')
  const answer = await c.call('echo', { after: 'retire' })
  t.equal(answer.status, 200, 'the call succeeded')
  t.equal(gw.count('/call', 401), 1, 'after one 401')
  t.equal(gw.count('/token') - tokens, 1, 'and one re-authentication')
  t.not(kidOf(await c.accessToken()), leaked, 'the new token is signed by the new key')

  // Any other refusal is answered as it is, with no re-authentication and no retry.
  const before = { calls: gw.seen.length, tokens: gw.count('/token') }
  const unknown = await c.callPath('nope', 'x')
  t.equal(unknown.status, 404, 'an unknown tool is answered 404')
  t.same({ calls: gw.seen.length, tokens: gw.count('/token') }, { calls: before.calls + 1, tokens: before.tokens }, 'in one request')
})
