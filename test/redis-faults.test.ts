// Fail closed, bounded, and recover: a gateway on a Redis this test owns. Stopping Redis (or
// freezing it with SIGSTOP) turns protected routes and /health into 503 within store.timeout,
// without a crash or an unhandled rejection; when Redis is back the same gateway serves again.
// The test's Redis keeps an append-only file in a temp dir, so data (the key set) survives its
// restart, as the deployment guide advises (docs/scaling.md).
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { FORM, basic, build, issue, tempDir, testConfig } from './helper.js'
import { redisServerMissing, startRedisServer, uniquePrefix } from './support/redis.js'
import { requires } from './support/skip.js'

/** A generous ceiling: the bound under test is store.timeout (1 s here), not speed. */
const CEILING_MS = 10_000

async function timed<T> (fn: () => Promise<T>): Promise<{ value: T, ms: number }> {
  const started = performance.now()
  const value = await fn()
  return { value, ms: performance.now() - started }
}

/** Polls until `check` holds (a readiness wait, never an assertion on time). */
async function until (check: () => Promise<boolean>, what: string, limitMs = 30_000): Promise<void> {
  const deadline = Date.now() + limitMs
  while (Date.now() < deadline) {
    if (await check()) return
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  throw new Error(`gave up waiting for ${what}`)
}

const unhandled: unknown[] = []
const onUnhandled = (reason: unknown): void => { unhandled.push(reason) }
process.on('unhandledRejection', onUnhandled)
t.teardown(() => { process.off('unhandledRejection', onUnhandled) })

const needsServer = requires(t, redisServerMissing())

t.test('Redis down: 503 within the bound, process alive; Redis back: served again without a restart', needsServer, async t => {
  const redis = await startRedisServer(t, { aofDir: tempDir(t, 'tollgate-aof-') })
  const config = testConfig(t, { store: { redis: redis.url, timeout: '1s', keyPrefix: uniquePrefix('faults') } })
  const app = await build(t, config)
  t.equal(app.store.kind, 'redis')

  const token = (await issue(app)).access_token as string
  const validate = async (): Promise<number> => (await app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${token}` } })).statusCode
  const tokenRequest = async (): Promise<{ statusCode: number, body: string }> => await app.inject({
    method: 'POST',
    url: '/token',
    headers: { authorization: basic('agent'), ...FORM },
    payload: 'grant_type=client_credentials'
  })
  const health = async (): Promise<{ statusCode: number, json: any }> => {
    const res = await app.inject({ method: 'GET', url: '/health' })
    return { statusCode: res.statusCode, json: res.json() }
  }
  t.equal(await validate(), 200)
  t.same(await health(), { statusCode: 200, json: { status: 'ok', checks: { store: 'ok', keys: 'ok' } } })

  await redis.stop()

  const v = await timed(validate)
  t.equal(v.value, 503, 'GET /validate fails closed')
  t.ok(v.ms < CEILING_MS, `GET /validate answered in ${Math.round(v.ms)} ms`)
  const tk = await timed(tokenRequest)
  t.equal(tk.value.statusCode, 503, 'POST /token fails closed')
  t.same(JSON.parse(tk.value.body), { error: 'temporarily_unavailable', error_description: 'the state store is unavailable' }, 'an RFC 6749 §5.2 body, no token')
  t.ok(tk.ms < CEILING_MS, `POST /token answered in ${Math.round(tk.ms)} ms`)
  const h = await timed(health)
  t.same(h.value, { statusCode: 503, json: { status: 'fail', checks: { store: 'fail', keys: 'ok' } } })
  t.ok(h.ms < CEILING_MS, `/health answered in ${Math.round(h.ms)} ms`)
  // The key maintenance and revocation sync timers keep failing in the background meanwhile.
  await app.tokens.revocations.sync().catch(() => {})
  await app.keys.maintain().catch(() => {})

  await redis.start()
  await until(async () => (await health()).statusCode === 200, '/health to recover')
  await until(async () => await validate() === 200, 'GET /validate to recover')
  t.equal(await validate(), 200, 'the token issued before the outage validates again')
  t.equal((await tokenRequest()).statusCode, 200, 'tokens are issued again')
  t.same(unhandled, [], 'no unhandled rejection')
})

t.test('a frozen Redis (SIGSTOP: connection open, no answers) is bounded by store.timeout', needsServer, async t => {
  const redis = await startRedisServer(t)
  const config = testConfig(t, { store: { redis: redis.url, timeout: '1s', keyPrefix: uniquePrefix('frozen') } })
  const app: FastifyInstance = await build(t, config)
  const token = (await issue(app)).access_token as string
  const pid = redis.pid()
  process.kill(pid, 'SIGSTOP')
  let resumed = false
  const resume = (): void => { if (!resumed) { resumed = true; process.kill(pid, 'SIGCONT') } }
  t.teardown(resume)

  const v = await timed(async () => (await app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${token}` } })).statusCode)
  t.equal(v.value, 503)
  t.ok(v.ms < CEILING_MS, `GET /validate answered in ${Math.round(v.ms)} ms`)
  const h = await timed(async () => (await app.inject({ method: 'GET', url: '/health' })).statusCode)
  t.equal(h.value, 503)
  t.ok(h.ms < CEILING_MS, `/health answered in ${Math.round(h.ms)} ms`)

  resume()
  await until(async () => (await app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${token}` } })).statusCode === 200, 'recovery after SIGCONT')
  t.same(unhandled, [], 'no unhandled rejection')
})

t.test('Redis back without its data: the key set is re-created, and tokens of the lost set are refused', needsServer, async t => {
  const redis = await startRedisServer(t) // no persistence: a restart empties it
  const config = testConfig(t, { store: { redis: redis.url, timeout: '1s', keyPrefix: uniquePrefix('lost') } })
  const app = await build(t, config)
  const before = (await issue(app)).access_token as string
  const oldKid = app.keys.signingKey().kid

  await redis.stop()
  await redis.start()
  await until(async () => (await app.inject({ method: 'GET', url: '/health' })).statusCode === 200, '/health to recover')
  t.same(await app.store.listKeys(), [], 'the store came back empty')
  await app.keys.maintain() // what the key timer does every reload interval
  const newKid = app.keys.signingKey().kid
  t.not(newKid, oldKid, 'a new key signs')
  t.same((await app.store.listKeys()).map(k => k.kid), [newKid], 'and is in the store for the other replicas')
  await until(async () => (await app.inject({ method: 'GET', url: '/health' })).statusCode === 200, 'revocation sync')
  const old = await app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${before}` } })
  t.equal(old.statusCode, 401, 'a token of the lost key set is refused (its revocations were lost too)')
  const after = (await issue(app)).access_token as string
  t.equal((await app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${after}` } })).statusCode, 200)
  t.same(unhandled, [], 'no unhandled rejection')
})
