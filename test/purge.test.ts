import { join } from 'node:path'
import t from 'tap'
import { hashRefreshToken } from '../src/oauth/refresh.js'
import type { RefreshFamily } from '../src/store/index.js'
import { SqliteStore } from '../src/store/sqlite.js'
import { ManualClock, build, issue, tempDir } from './helper.js'
import { advance, forwardAuth, lifecycleConfig, refresh, revoke } from './lifecycle-helper.js'

const T0 = Date.UTC(2026, 10, 24, 12, 0, 0)
const HOUR = 3600_000

function family (id: string, expiresAt: number, revokedAt?: number): RefreshFamily {
  return { id, clientId: 'agent', sub: 'agent', scope: 'a', aud: ['x'], extra: {}, createdAt: T0 - HOUR, expiresAt, currentHash: '', lastUsedAt: T0 - HOUR, ...(revokedAt !== undefined ? { revokedAt } : {}) }
}

t.test('purgeExpired removes exactly the expired families (with their tokens), revocations, quota windows and counters', async t => {
  const store = SqliteStore.open(join(tempDir(t), 'tollgate.db'))
  t.teardown(() => store.close())

  await store.createFamily(family('expired', T0 - 1), 'h-expired-1')
  await store.rotateRefresh('h-expired-1', 'h-expired-2', T0 - HOUR / 2)
  await store.createFamily(family('at-now', T0), 'h-now')
  await store.createFamily(family('live', T0 + HOUR), 'h-live-1')
  await store.rotateRefresh('h-live-1', 'h-live-2', T0 - HOUR / 2)
  await store.createFamily(family('revoked-live', T0 + HOUR), 'h-revoked')
  await store.revokeFamily('revoked-live', T0 - 10)

  await store.addRevocation({ kind: 'jti', id: 'old', expiresAt: T0 - 1 })
  await store.addRevocation({ kind: 'jti', id: 'new', expiresAt: T0 + 1 })
  await store.addRevocation({ kind: 'family', id: 'old-fam', expiresAt: T0 })
  await store.addRevocation({ kind: 'family', id: 'new-fam', expiresAt: T0 + HOUR })

  const minute = 60_000
  await store.consumeQuota('s', T0 - 2 * minute, minute, 10, 3) // window ended at T0 - 1 min
  await store.consumeQuota('s', T0, minute, 10, 4) // the current window
  await store.incrementCounter('old', minute, T0 - 2 * minute)
  await store.incrementCounter('new', minute, T0)

  const purged = await store.purgeExpired(T0, 1000)
  t.equal(purged, 6, 'two families, two revocations, one quota window, one counter')

  t.equal(await store.findFamily('h-expired-1'), undefined)
  t.equal(await store.findFamily('h-expired-2'), undefined)
  t.equal(await store.findFamily('h-now'), undefined, 'expiresAt is exclusive: at that instant it is expired')
  t.equal((await store.findFamily('h-live-1'))?.id, 'live', 'a live family keeps its earlier tokens (reuse detection needs them)')
  t.equal((await store.findFamily('h-live-2'))?.id, 'live')
  t.equal((await store.findFamily('h-revoked'))?.revokedAt, T0 - 10, 'a revoked family is kept until it expires')

  const { entries } = await store.listRevocations(undefined, 0)
  t.same(entries.map(e => e.id).sort(), ['new', 'new-fam'])
  t.equal(await store.getQuota('s', T0 - 2 * minute, minute), 0)
  t.equal(await store.getQuota('s', T0, minute), 4)
  t.equal((await store.incrementCounter('new', minute, T0)).count, 2, 'a live counter keeps counting')
  t.equal((await store.incrementCounter('old', minute, T0 - 2 * minute)).count, 1, 'an expired counter started over')

  t.equal(await store.purgeExpired(T0, 1000), 1, 'only the counter just re-created in a past window')
  t.equal(await store.purgeExpired(T0, 1000), 0, 'nothing more to purge')
})

t.test('purgeExpired honours its limit per kind', async t => {
  const store = SqliteStore.open(join(tempDir(t), 'tollgate.db'))
  t.teardown(() => store.close())
  for (let i = 0; i < 5; i++) await store.createFamily(family(`f${i}`, T0 - 1), `h${i}`)
  t.equal(await store.purgeExpired(T0, 2), 2)
  t.equal(await store.purgeExpired(T0, 2), 2)
  t.equal(await store.purgeExpired(T0, 2), 1)
})

t.test('in the app: purging on the injected clock keeps what is still needed', async t => {
  const clock = new ManualClock(T0)
  const app = await build(t, lifecycleConfig(t, { tokens: { accessTtl: '5m', refreshTtl: '2h', refreshIdleTtl: '2h', maxLifetime: '1h' } }), { clock: clock.fn })
  const live = await issue(app)
  const revoked = await issue(app)
  t.equal((await revoke(app, revoked.access_token)).statusCode, 200)
  const revocations = async (): Promise<number> => (await app.store.listRevocations(undefined, 0)).entries.length
  await app.store.purgeExpired(clock.now, 1000)
  t.equal(await revocations(), 1, 'the revocation is kept while its token lives')
  t.equal(await forwardAuth(app, revoked.access_token), 401)

  await advance(app, clock, HOUR)
  await app.store.purgeExpired(clock.now, 1000)
  t.equal(await revocations(), 0, 'the revocation outlived its token: purged')
  t.equal((await refresh(app, live.refresh_token)).statusCode, 200, 'the live family survives the purge')
  t.ok(await app.store.findFamily(hashRefreshToken(live.refresh_token)))

  await advance(app, clock, HOUR)
  await app.store.purgeExpired(clock.now, 1000)
  t.equal(await app.store.findFamily(hashRefreshToken(live.refresh_token)), undefined, 'the family reached its absolute expiry: purged')
  t.equal(await app.store.findFamily(hashRefreshToken(revoked.refresh_token)), undefined)
  t.equal((await refresh(app, live.refresh_token)).body.error, 'invalid_grant')
})
