// Replicas as one, for the state that matters most: two gateway processes on one Redis share the
// quota exactly, detect refresh-token reuse across replicas, and enforce a revocation made at one
// replica at the other within one second.
import t from 'tap'
import { startCluster, type Replica } from './support/cluster.js'
import { startUpstream } from './support/upstream.js'

const upstream = await startUpstream(t)
const cluster = await startCluster(t, {
  replicas: 2,
  config: {
    rateLimits: { token: { max: 100_000, window: '1m' }, perIp: { max: 100_000, window: '1m' }, perSubject: { max: 100_000, window: '1m' } },
    tools: [{ name: 'echo', url: `${upstream.origin}/echo`, audience: 'tool:chat', scopes: ['tools:call'] }]
  }
})
if (cluster !== undefined) { // else startCluster reported the missing Redis: a skip, or a failure under CI
  const [a, b] = cluster.replicas as [Replica, Replica]

  t.test('60 parallel calls spread over both replicas against a quota of 20: exactly 20 succeed', async t => {
    const token = (await cluster.issue(a)).access_token as string
    const before = upstream.seen.length
    const statuses = await Promise.all(Array.from({ length: 60 }, async (_, i) => {
      const res = await cluster.request(i % 2 === 0 ? a : b, '/call', {
        method: 'POST',
        bearer: token,
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ tool: 'echo', arguments: { i } })
      })
      await res.arrayBuffer()
      return res.status
    }))
    t.equal(statuses.filter(s => s === 200).length, 20, 'exactly the quota')
    t.equal(statuses.filter(s => s === 429).length, 40, 'the rest refused with 429')
    t.equal(upstream.seen.length - before, 20, 'the tool saw exactly 20 calls')
    for (const r of [a, b]) {
      const quota = await (await cluster.request(r, '/quota', { bearer: token })).json() as Record<string, number>
      t.match(quota, { limit: 20, used: 20, remaining: 0 }, `replica ${r.index} agrees`)
    }
  })

  t.test('a refresh token rotated at B and presented again at A is reuse: the family dies everywhere', async t => {
    const first = await cluster.issue(a)
    const rotated = await cluster.request(b, '/refresh', { form: { refresh_token: first.refresh_token } })
    t.equal(rotated.status, 200)
    const second = await rotated.json() as Record<string, string>
    const reuse = await cluster.request(a, '/refresh', { form: { refresh_token: first.refresh_token } })
    t.equal(reuse.status, 400)
    t.equal((await reuse.json() as Record<string, string>).error, 'invalid_grant')
    const newest = await cluster.request(b, '/refresh', { form: { refresh_token: second.refresh_token as string } })
    t.equal(newest.status, 400, 'the newest refresh token died too, at the other replica')
    await newest.arrayBuffer()
  })

  t.test('a revocation at A is refused at B within one second, even though B had cached the token', async t => {
    const token = (await cluster.issue(a)).access_token as string
    t.equal((await cluster.request(b, '/validate', { bearer: token })).status, 200, 'B has verified (and cached) it')
    const revoked = await cluster.request(a, '/revoke', { form: { token } })
    t.equal(revoked.status, 200)
    const since = Date.now()
    let status = 200
    while (status === 200 && Date.now() - since <= 1000) {
      status = (await cluster.request(b, '/validate', { bearer: token })).status
      if (status === 200) await new Promise(resolve => setTimeout(resolve, 25))
    }
    t.equal(status, 401, `B refuses it ${Date.now() - since} ms after the revocation answered`)
  })
}
