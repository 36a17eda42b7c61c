// rateLimits.onStoreError, both modes (docs/configuration.md, docs/scaling.md), against a Redis
// this test owns and stops: with `fail-closed` (the default) a rate-limited route answers 503 when
// its counter cannot be read; with `fail-open` it lets the request through, while the quota still
// fails closed. Each app first shows its limiter really counts in Redis.
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { FORM, basic, build, form, testConfig } from './helper.js'
import { hasRedisServerBinary, startRedisServer, uniquePrefix } from './support/redis.js'
import { requires } from './support/skip.js'

interface Answer { statusCode: number, body: any }

async function token (app: FastifyInstance, ip: string, clientId = 'other'): Promise<Answer> {
  const res = await app.inject({ method: 'POST', url: '/token', remoteAddress: ip, headers: { authorization: basic(clientId), ...FORM }, payload: form({ grant_type: 'client_credentials' }) })
  return { statusCode: res.statusCode, body: res.json() }
}

t.test('onStoreError with a Redis that stops', requires(t, hasRedisServerBinary() ? undefined : 'redis-server is not installed (run scripts/ensure-redis.sh)'), async t => {
  const redis = await startRedisServer(t)
  const appFor = async (mode: 'fail-closed' | 'fail-open'): Promise<FastifyInstance> => await build(t, testConfig(t, {
    store: { redis: redis.url, timeout: '1s', keyPrefix: uniquePrefix(`on-store-error-${mode}`) },
    rateLimits: { token: { max: 2, window: '1h' }, onStoreError: mode }
  }))
  const closed = await appFor('fail-closed')
  const open = await appFor('fail-open')

  // Positive control, store up: in both modes the per-IP /token limit counts in Redis and refuses
  // the third request from one address.
  const access: Record<string, string> = {}
  for (const [name, app] of [['fail-closed', closed], ['fail-open', open]] as const) {
    const first = await token(app, '192.0.2.10')
    t.equal(first.statusCode, 200, `${name}: a token while Redis is up`)
    access[name] = first.body.access_token
    t.equal((await token(app, '192.0.2.10')).statusCode, 200)
    const third = await token(app, '192.0.2.10')
    t.equal(third.statusCode, 429, `${name}: the limiter counts (third request from one address refused)`)
    // `agent` has a quota: its token reads usage from the store.
    access[name] = (await token(app, '192.0.2.11', 'agent')).body.access_token
    t.equal((await app.inject({ method: 'GET', url: '/quota', headers: { authorization: `Bearer ${access[name] as string}` } })).statusCode, 200)
  }

  await redis.stop()

  for (const [name, app] of [['fail-closed', closed], ['fail-open', open]] as const) {
    const health = await app.inject({ method: 'GET', url: '/health' })
    t.same({ statusCode: health.statusCode, body: health.json() }, { statusCode: 503, body: { status: 'fail', checks: { store: 'fail', keys: 'ok' } } }, `${name}: the store is really down`)
  }

  const refused = await token(closed, '192.0.2.20')
  t.equal(refused.statusCode, 503, 'fail-closed: the rate-limited route answers 503')
  t.same(refused.body, { error: 'temporarily_unavailable', error_description: 'the state store is unavailable' })

  const let_through = await token(open, '192.0.2.20')
  t.equal(let_through.statusCode, 200, 'fail-open: the same request gets its token')
  t.equal(let_through.body.token_type, 'Bearer')
  t.type(let_through.body.access_token, 'string')
  t.equal((await token(open, '192.0.2.10')).statusCode, 200, 'fail-open: even the address that was over its limit (no counter can be read)')

  // fail-open covers the rate-limit counters only: the quota still fails closed.
  const quota = await open.inject({ method: 'GET', url: '/quota', headers: { authorization: `Bearer ${access['fail-open'] as string}` } })
  t.equal(quota.statusCode, 503, 'fail-open: GET /quota, which reads the quota counter, still fails closed')
})
