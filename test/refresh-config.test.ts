// A refresh takes the client's quota and static claims from its configuration as it is now
// (issue 15, item 8): a quota cut or a changed claim applies from the next refresh on, even for
// a family started before the change.
import t from 'tap'
import { build, client, issue, tempDir } from './helper.js'
import { claimsOf, lifecycleConfig, refresh } from './lifecycle-helper.js'

t.test('after a restart with a new quota and new claims, a refresh carries the new ones', async t => {
  const dataDir = tempDir(t)
  const before = await build(t, lifecycleConfig(t, {
    dataDir,
    clients: [
      client('agent', { refresh: true, quota: { limit: 100, window: '1d' }, claims: { role: 'admin', team: 'red' } }),
      client('plain', { refresh: true, quota: { limit: 50, window: '1d' }, claims: { role: 'user' } })
    ]
  }))
  const first = await issue(before)
  t.match(claimsOf(first.access_token), { quota: { limit: 100, window: 86400 }, role: 'admin', team: 'red' })
  const plain = await issue(before, {}, 'plain')
  await before.close()

  const after = await build(t, lifecycleConfig(t, {
    dataDir,
    clients: [
      client('agent', { refresh: true, quota: { limit: 5, window: '1h' }, claims: { role: 'user' } }),
      client('plain', { refresh: true })
    ]
  }))
  const res = await refresh(after, first.refresh_token)
  t.equal(res.statusCode, 200)
  const claims = claimsOf(res.body.access_token)
  t.same(claims.quota, { limit: 5, window: 3600 }, 'the quota as configured now')
  t.equal(claims.role, 'user', 'the claims as configured now')
  t.equal(claims.team, undefined, 'a claim no longer configured is gone')
  t.equal(claims.sub, 'agent')

  const quota = await after.inject({ method: 'GET', url: '/quota', headers: { authorization: `Bearer ${res.body.access_token as string}` } })
  t.match(quota.json(), { sub: 'agent', limit: 5, window: 3600 }, 'GET /quota reads the new limit')

  const unmetered = await refresh(after, plain.refresh_token, {}, 'plain')
  t.equal(unmetered.statusCode, 200)
  t.equal(claimsOf(unmetered.body.access_token).quota, undefined, 'a client whose quota was removed gets none')
  t.equal(claimsOf(unmetered.body.access_token).role, undefined)

  const again = await refresh(after, res.body.refresh_token)
  t.same(claimsOf(again.body.access_token).quota, { limit: 5, window: 3600 }, 'and on every later refresh')
})
