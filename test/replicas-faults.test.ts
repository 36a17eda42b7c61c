// Real gateway processes on a Redis this test owns: stopping Redis turns protected routes and
// /health into 503 at every replica within the store timeout, the processes stay up, and when
// Redis is back they serve again without a restart. (Redis keeps an append-only file, as
// docs/scaling.md advises, so the key set survives its restart.)
import t from 'tap'
import { tempDir } from './helper.js'
import { startCluster, type Replica } from './support/cluster.js'
import { startUpstream } from './support/upstream.js'
import { redisServerMissing, startRedisServer } from './support/redis.js'
import { skipOrFail } from './support/skip.js'

const missing = redisServerMissing()
if (missing !== undefined) {
  skipOrFail(t, missing)
} else {
  const redis = await startRedisServer(t, { aofDir: tempDir(t) })
  const upstream = await startUpstream(t)
  const cluster = await startCluster(t, {
    replicas: 2,
    redisUrl: redis.url,
    config: {
      rateLimits: { token: { max: 100_000, window: '1m' }, perIp: { max: 100_000, window: '1m' }, perSubject: { max: 100_000, window: '1m' } },
      clients: [{ id: 'agent', secretHash: (await import('./helper.js')).CLIENT_SECRET_HASH, scopes: ['tools:call'], audiences: ['tool:chat'], quota: { limit: 1000, window: '1d' } }],
      tools: [{ name: 'echo', url: `${upstream.origin}/echo`, audience: 'tool:chat', scopes: ['tools:call'] }]
    }
  })
  const replicas = cluster?.replicas as Replica[]
  const call = async (r: Replica, token: string): Promise<number> => {
    const res = await cluster!.request(r, '/call', { method: 'POST', bearer: token, headers: { 'content-type': 'application/json' }, body: '{"tool":"echo"}' })
    await res.arrayBuffer()
    return res.status
  }

  t.test('Redis down: every replica fails closed with 503 and stays up; Redis back: they serve again', async t => {
    const token = (await cluster!.issue(replicas[0] as Replica)).access_token as string
    for (const r of replicas) t.equal(await call(r, token), 200, `replica ${r.index} calls the tool`)

    await redis.stop()
    for (const r of replicas) {
      const started = Date.now()
      t.equal(await call(r, token), 503, `replica ${r.index}: /call fails closed`)
      const health = await cluster!.request(r, '/health')
      t.equal(health.status, 503)
      t.match(await health.json(), { status: 'fail', checks: { store: 'fail' } })
      t.ok(Date.now() - started < 10_000, `answered within the bound (${Date.now() - started} ms for both)`)
      t.equal(r.process.exitCode, null, `replica ${r.index} is still running`)
    }
    const quota = await cluster!.request(replicas[1] as Replica, '/quota', { bearer: token })
    t.equal(quota.status, 503, 'quota is never granted or read without the store')
    await quota.arrayBuffer()

    await redis.start()
    for (const r of replicas) {
      const deadline = Date.now() + 30_000
      let status = 0
      while (status !== 200 && Date.now() < deadline) {
        status = await call(r, token)
        if (status !== 200) await new Promise(resolve => setTimeout(resolve, 200))
      }
      t.equal(status, 200, `replica ${r.index} serves again without a restart`)
      t.equal(r.process.exitCode, null)
    }
    t.notOk(replicas.some(r => r.logs.some(l => /unhandled|uncaught/i.test(l))), 'no unhandled rejection or exception in any log')
  })
}
