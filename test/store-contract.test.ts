// One contract for the Store interface, run against both implementations: SqliteStore on a temp
// file and RedisStore on a real Redis (TOLLGATE_TEST_REDIS_URL, the default port, or a private
// redis-server), and again on a Redis Cluster of three local nodes, where a script whose keys
// do not share one hash slot fails (CROSSSLOT) and keys are spread over the nodes. Every method, with the concurrency cases that make the gateway exact: quota
// check-and-charge, rotation compare-and-swap, one pending key rotation.
import { randomUUID } from 'node:crypto'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import type { KeyRecord, LedgerEntry, RefreshFamily, Store, StoredClient } from '../src/store/index.js'
import { RedisStore } from '../src/store/redis.js'
import { SqliteStore } from '../src/store/sqlite.js'
import { Quotas } from '../src/quota/index.js'
import { ManualClock, tempDir } from './helper.js'
import { deletePrefix, redisServerMissing, startRedisCluster, testRedisUrl, uniquePrefix } from './support/redis.js'
import { requires } from './support/skip.js'

type Open = (t: Test) => Promise<Store>

const NOW = new ManualClock().now
const MIN = 60_000
const DAY = 86_400_000

function keyRecord (kid: string, createdAt: number, activatesAt: number): KeyRecord {
  return {
    kid,
    alg: 'ES256',
    publicJwk: { kty: 'EC', crv: 'P-256', x: `x-${kid}`, y: `y-${kid}`, kid, alg: 'ES256', use: 'sig' },
    privateEnc: `v1.${kid}.encrypted-blob`,
    createdAt,
    activatesAt
  }
}

function family (overrides: Partial<RefreshFamily> = {}): RefreshFamily {
  return {
    id: randomUUID(),
    clientId: 'agent',
    sub: 'agent',
    scope: 'tools:call tools:read',
    aud: ['tool:chat', 'tool:search'],
    extra: { act: { sub: 'svc' } },
    createdAt: NOW,
    expiresAt: NOW + DAY,
    currentHash: 'h0',
    lastUsedAt: NOW,
    ...overrides
  }
}

function hash (): string {
  return randomUUID().replace(/-/g, '')
}

function contract (t: Test, open: Open): void {
  t.test('key set: add, the one-pending rule, list in activation order, delete', async t => {
    const store = await open(t)
    t.same(await store.listKeys(), [])
    const k1 = keyRecord('k1', NOW, NOW)
    t.equal(await store.addKeyIfNoPending(k1, NOW), true, 'first key added')
    t.same(await store.listKeys(), [k1], 'the record comes back unchanged (encrypted blob included)')
    const k2 = keyRecord('k2', NOW, NOW + 10 * MIN)
    t.equal(await store.addKeyIfNoPending(k2, NOW), true, 'k1 signs already: not pending')
    t.equal(await store.addKeyIfNoPending(keyRecord('k3', NOW, NOW + 20 * MIN), NOW + MIN), false, 'k2 is pending')
    const k3 = keyRecord('k3', NOW + 10 * MIN, NOW + 20 * MIN)
    t.equal(await store.addKeyIfNoPending(k3, NOW + 10 * MIN), true, 'k2 signs from then on')
    t.same((await store.listKeys()).map(k => k.kid), ['k1', 'k2', 'k3'])
    await store.deleteKeys(['k1', 'k3'])
    t.same(await store.listKeys(), [k2])
    await store.deleteKeys([])
    t.same((await store.listKeys()).map(k => k.kid), ['k2'])
  })

  t.test('key set: replaceKeys deletes the pending keys and the named ones and adds the new key in one step', async t => {
    const store = await open(t)
    const k1 = keyRecord('k1', NOW, NOW)
    const k2 = keyRecord('k2', NOW + MIN, NOW + MIN)
    await store.addKeyIfNoPending(k1, NOW)
    await store.addKeyIfNoPending(k2, NOW + MIN)
    const pending = keyRecord('pending', NOW + 2 * MIN, NOW + 20 * MIN)
    t.equal(await store.addKeyIfNoPending(pending, NOW + 2 * MIN), true)
    const fresh = keyRecord('fresh', NOW + 3 * MIN, NOW + 3 * MIN)
    t.same((await store.replaceKeys(fresh, NOW + 3 * MIN, ['k2', 'unknown'])).sort(), ['k2', 'pending'], 'the pending key and the named one, not the unknown kid')
    t.same(await store.listKeys(), [k1, fresh], 'k1 kept, the fresh key added unchanged')
    t.equal(await store.addKeyIfNoPending(keyRecord('next', NOW + 3 * MIN, NOW + 30 * MIN), NOW + 3 * MIN), true, 'no rotation is pending afterwards')
    const again = keyRecord('again', NOW + 4 * MIN, NOW + 4 * MIN)
    t.same(await store.replaceKeys(again, NOW + 4 * MIN, []), ['next'], 'nothing named: only the pending key goes')
    t.same((await store.listKeys()).map(k => k.kid), ['k1', 'fresh', 'again'])
  })

  t.test('key set: of 20 concurrent rotations exactly one is added', async t => {
    const store = await open(t)
    await store.addKeyIfNoPending(keyRecord('cur', NOW, NOW), NOW)
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) =>
      store.addKeyIfNoPending(keyRecord(`next-${i}`, NOW, NOW + 10 * MIN), NOW)))
    t.equal(results.filter(Boolean).length, 1)
    t.equal((await store.listKeys()).length, 2)
  })

  t.test('quota: 200 concurrent consumes against a limit of 50 grant exactly 50', async t => {
    const store = await open(t)
    const start = Math.floor(NOW / DAY) * DAY
    const results = await Promise.all(Array.from({ length: 200 }, () => store.consumeQuota('alice', start, DAY, 50, 1)))
    const granted = results.filter(r => r.granted)
    t.equal(granted.length, 50)
    t.same(granted.map(r => r.used).sort((a, b) => a - b), Array.from({ length: 50 }, (_, i) => i + 1), 'each grant saw its own count')
    t.ok(results.filter(r => !r.granted).every(r => r.used === 50), 'refusals report the usage unchanged')
    t.equal(await store.getQuota('alice', start, DAY), 50)
  })

  t.test('quota: costs, windows and subjects are separate; a cost above the limit is refused', async t => {
    const store = await open(t)
    t.same(await store.consumeQuota('bob', 0, MIN, 10, 4), { granted: true, used: 4 })
    t.same(await store.consumeQuota('bob', 0, MIN, 10, 7), { granted: false, used: 4 }, 'would exceed')
    t.same(await store.consumeQuota('bob', 0, MIN, 10, 6), { granted: true, used: 10 }, 'exactly the limit')
    t.same(await store.consumeQuota('bob', 0, MIN, 10, 0), { granted: true, used: 10 }, 'cost 0 at the limit')
    t.same(await store.consumeQuota('bob', MIN, MIN, 10, 1), { granted: true, used: 1 }, 'next window')
    t.same(await store.consumeQuota('bob', 0, 2 * MIN, 10, 1), { granted: true, used: 1 }, 'other window length')
    t.same(await store.consumeQuota('carol', 0, MIN, 3, 5), { granted: false, used: 0 }, 'cost above limit')
    t.equal(await store.getQuota('carol', 0, MIN), 0)
    t.equal(await store.getQuota('nobody', 0, MIN), 0)
    // Subjects with separators and braces never share a counter with another subject.
    await store.consumeQuota('a}:{b', 0, MIN, 10, 2)
    await store.consumeQuota('a', 0, MIN, 10, 1)
    t.equal(await store.getQuota('a}:{b', 0, MIN), 2)
    t.equal(await store.getQuota('a', 0, MIN), 1)
  })

  t.test('quota: refunds give back, never below zero, and make room again', async t => {
    const store = await open(t)
    await store.consumeQuota('dave', 0, MIN, 5, 5)
    t.same(await store.consumeQuota('dave', 0, MIN, 5, 1), { granted: false, used: 5 })
    await store.refundQuota('dave', 0, MIN, 2)
    t.equal(await store.getQuota('dave', 0, MIN), 3)
    t.same(await store.consumeQuota('dave', 0, MIN, 5, 2), { granted: true, used: 5 })
    await store.refundQuota('dave', 0, MIN, 50)
    t.equal(await store.getQuota('dave', 0, MIN), 0, 'clamped at zero')
    await store.refundQuota('eve', 0, MIN, 1)
    t.equal(await store.getQuota('eve', 0, MIN), 0, 'refund of an unused window stays zero')
    // Interleaved charges and refunds stay exact.
    await Promise.all(Array.from({ length: 100 }, (_, i) => i % 2 === 0
      ? store.consumeQuota('frank', 0, MIN, 1000, 3)
      : store.consumeQuota('frank', 0, MIN, 1000, 3).then(async () => { await store.refundQuota('frank', 0, MIN, 3) })))
    t.equal(await store.getQuota('frank', 0, MIN), 150)
  })

  t.test('quota settlement: reported − reserved applies whatever the limit, never below zero', async t => {
    const store = await open(t)
    t.same(await store.consumeQuota('sam', 0, MIN, 10, 4), { granted: true, used: 4 })
    t.equal(await store.settleQuota('sam', 0, MIN, 3), 7, 'an increase (the tool reported 7 for 4 reserved)')
    t.equal(await store.settleQuota('sam', 0, MIN, 9), 16, 'an increase applies even past the limit of 10')
    t.equal(await store.getQuota('sam', 0, MIN), 16)
    t.same(await store.consumeQuota('sam', 0, MIN, 10, 0), { granted: false, used: 16 }, 'past the limit: the next call is refused, even at cost 0')
    t.equal(await store.settleQuota('sam', 0, MIN, -5), 11, 'a decrease gives back')
    t.equal(await store.settleQuota('sam', 0, MIN, -100), 0, 'a refund never goes below zero')
    t.same(await store.consumeQuota('sam', 0, MIN, 10, 10), { granted: true, used: 10 }, 'the room is there again')
    t.equal(await store.settleQuota('sam', 0, MIN, 0), 10, 'zero changes nothing')
    t.equal(await store.settleQuota('tia', 0, MIN, -3), 0, 'a decrease on an unused window stays zero')
    t.equal(await store.getQuota('tia', 0, MIN), 0)
    t.equal(await store.settleQuota('uma', 0, MIN, 5), 5, 'an increase on an unused window creates its usage')
    t.equal(await store.getQuota('uma', 0, MIN), 5)
    t.equal(await store.getQuota('uma', MIN, MIN), 0, 'only in that window')
  })

  t.test('quota settlement: 100 concurrent settlements, charges and refunds stay exact', async t => {
    const store = await open(t)
    // 50 calls reserve 4 each; half settle at 9 (+5), half at 1 (−3): 50·4 + 25·5 − 25·3 = 250.
    await Promise.all(Array.from({ length: 50 }, async (_, i) => {
      const r = await store.consumeQuota('vic', 0, MIN, 1000, 4)
      t.ok(r.granted)
      await store.settleQuota('vic', 0, MIN, i % 2 === 0 ? 5 : -3)
    }))
    t.equal(await store.getQuota('vic', 0, MIN), 250)
    // Increases race past a limit: every one applies (the work was done), charges stop at the limit.
    await store.consumeQuota('walt', 0, MIN, 20, 20)
    const raced = await Promise.all(Array.from({ length: 60 }, async (_, i) => i % 3 === 0
      ? await store.settleQuota('walt', 0, MIN, 2)
      : (await store.consumeQuota('walt', 0, MIN, 20, 1)).granted))
    t.equal(raced.filter(r => r === true).length, 0, 'no charge is granted past the limit')
    t.equal(await store.getQuota('walt', 0, MIN), 20 + 20 * 2, 'all 20 increases applied')
    // Concurrent refunds bigger than the usage clamp at zero, whatever their order.
    await store.consumeQuota('xena', 0, MIN, 100, 30)
    const after = await Promise.all(Array.from({ length: 20 }, async () => await store.settleQuota('xena', 0, MIN, -7)))
    t.ok(after.every(u => u >= 0), 'no settlement ever reports a usage below zero')
    t.equal(Math.min(...after), 0)
    t.equal(await store.getQuota('xena', 0, MIN), 0, 'never below zero')
  })

  t.test('quota: credits raise the window\'s allowance, atomically under concurrency; reset clears usage, keeps credits', async t => {
    const store = await open(t)
    t.same(await store.getBalance('gina', 0, MIN), { used: 0, credits: 0 })
    t.same(await store.consumeQuota('gina', 0, MIN, 5, 5), { granted: true, used: 5 })
    t.same(await store.consumeQuota('gina', 0, MIN, 5, 1), { granted: false, used: 5 }, 'spent')
    t.equal(await store.addCredits('gina', 0, MIN, 10), 10)
    t.equal(await store.addCredits('gina', 0, MIN, 5), 15, 'credits add up')
    t.same(await store.getBalance('gina', 0, MIN), { used: 5, credits: 15 }, 'usage and credits read together')
    if (store.getBalanceSync !== undefined) t.same(store.getBalanceSync('gina', 0, MIN), { used: 5, credits: 15 }, 'the synchronous read agrees')
    t.same(await store.getBalance('gina', MIN, MIN), { used: 0, credits: 0 }, 'only that window')
    // 50 concurrent charges against limit 5 + 15 credits with 5 used: exactly 15 more.
    const results = await Promise.all(Array.from({ length: 50 }, () => store.consumeQuota('gina', 0, MIN, 5, 1)))
    t.equal(results.filter(r => r.granted).length, 15)
    t.ok(results.every(r => r.credits === 15), 'every answer reports the credits')
    t.equal(await store.getQuota('gina', 0, MIN), 20)
    t.same(await store.consumeQuota('gina', MIN, MIN, 5, 6), { granted: false, used: 0 }, 'the next window has no credits')
    // A first charge above the limit but within limit + credits.
    await store.addCredits('hank', 0, MIN, 4)
    t.same(await store.consumeQuota('hank', 0, MIN, 3, 7), { granted: true, used: 7, credits: 4 })
    t.equal(await store.resetQuota('gina', 0, MIN), 20, 'reset answers the usage it cleared')
    t.equal(await store.getQuota('gina', 0, MIN), 0)
    t.equal((await store.getBalance('gina', 0, MIN)).credits, 15, 'credits survive a reset')
    t.equal(await store.resetQuota('nobody', 0, MIN), 0)
    t.same(await store.consumeQuota('gina', 0, MIN, 5, 1), { granted: true, used: 1, credits: 15 })
  })

  t.test('quota: the balance read right after each kind of write is exact (no read answers from before it)', async t => {
    const store = await open(t)
    const balance = async (): Promise<unknown> => await store.getBalance('nina', 0, MIN)
    t.same(await balance(), { used: 0, credits: 0 })
    await store.consumeQuota('nina', 0, MIN, 10, 4)
    t.same(await balance(), { used: 4, credits: 0 }, 'after a charge')
    await store.refundQuota('nina', 0, MIN, 1)
    t.same(await balance(), { used: 3, credits: 0 }, 'after a refund')
    await store.settleQuota('nina', 0, MIN, 5)
    t.same(await balance(), { used: 8, credits: 0 }, 'after a settlement')
    await store.addCredits('nina', 0, MIN, 2)
    t.same(await balance(), { used: 8, credits: 2 }, 'after credits')
    await store.consumeQuota('nina', 0, MIN, 10, 5)
    t.same(await balance(), { used: 8, credits: 2 }, 'after a refused charge')
    await store.resetQuota('nina', 0, MIN)
    t.same(await balance(), { used: 0, credits: 2 }, 'after a reset')
    if (store.getBalanceSync !== undefined) t.same(store.getBalanceSync('nina', 0, MIN), { used: 0, credits: 2 }, 'the synchronous read agrees')
  })

  t.test('ledger: a charge\'s line goes with the charge where the store can write both at once, exactly once through Quotas', async t => {
    const store = await open(t)
    const line: LedgerEntry = { ts: NOW, sub: 'lena', clientId: 'agent', tool: 'chat', kind: 'charge', amount: 2, requestId: 'r1' }
    const granted = await store.consumeQuota('lena', 0, MIN, 5, 2, line)
    const refused = await store.consumeQuota('lena', 0, MIN, 5, 4, { ...line, amount: 4, requestId: 'r2' })
    t.equal(granted.granted, true)
    t.equal(refused.granted, false)
    t.not(refused.recorded, true, 'a refused charge has no line')
    if (store.kind === 'sqlite') t.equal(granted.recorded, true, 'SQLite writes the line in the charge\'s transaction')
    const lines = (await store.listLedger({ sub: 'lena', limit: 10 })).entries
    t.same(lines, granted.recorded === true ? [line] : [], 'the store wrote the line exactly when it says it did')
    // Through Quotas: every granted charge is in the ledger once, whoever writes it.
    const quotas = new Quotas(store, () => NOW)
    const quota = { limit: 3, window: 60 }
    const charges = await Promise.all(Array.from({ length: 5 }, async (_, i) => await quotas.consume('mona', quota, 1, { clientId: 'agent', tool: 'chat', requestId: `q${i}` })))
    t.equal(charges.filter(c => c.granted).length, 3)
    await quotas.ledger.flush()
    const mona = (await store.listLedger({ sub: 'mona', limit: 10 })).entries
    t.equal(mona.length, 3, 'one line per granted charge, none for the refused')
    t.ok(mona.every(l => l.kind === 'charge' && l.amount === 1 && l.clientId === 'agent' && l.tool === 'chat'))
  })

  t.test('ledger: appended in order, filtered by subject and time, paged to the end by the cursor', async t => {
    const store = await open(t)
    t.same(await store.listLedger({ limit: 10 }), { entries: [], next: undefined })
    const line = (i: number, sub: string): LedgerEntry => ({ ts: NOW + i, sub, clientId: sub === 'x' ? null : 'agent', tool: i % 2 === 0 ? 'chat' : null, kind: i % 3 === 0 ? 'refund' : 'charge', amount: i, requestId: `r${i}` })
    const lines = Array.from({ length: 25 }, (_, i) => line(i, i % 5 === 0 ? 'x' : 'alice'))
    await store.appendLedger(lines.slice(0, 10))
    await store.appendLedger([])
    await Promise.all(lines.slice(10).map(async l => { await store.appendLedger([l]) }))
    const all: LedgerEntry[] = []
    let after: string | undefined
    let pages = 0
    do {
      const page = await store.listLedger({ limit: 7, ...(after !== undefined ? { after } : {}) })
      all.push(...page.entries)
      after = page.next
      pages++
    } while (after !== undefined)
    t.equal(pages, 4, '7 + 7 + 7 + 4')
    t.same(all.slice(0, 10), lines.slice(0, 10), 'lines come back whole, in append order')
    t.same([...all].sort((a, b) => a.amount - b.amount), lines, 'every line once')
    const xs = await store.listLedger({ sub: 'x', limit: 100 })
    t.same(xs.entries.map(e => e.amount).sort((a, b) => a - b), [0, 5, 10, 15, 20])
    t.equal(xs.next, undefined)
    const late = await store.listLedger({ since: NOW + 20, limit: 100 })
    t.same(late.entries.map(e => e.amount).sort((a, b) => a - b), [20, 21, 22, 23, 24])
    const lateX = await store.listLedger({ sub: 'x', since: NOW + 6, limit: 2 })
    t.same(lateX.entries.map(e => e.amount).sort((a, b) => a - b).length, 2)
    const rest = await store.listLedger({ sub: 'x', since: NOW + 6, limit: 2, after: lateX.next as string })
    t.same([...lateX.entries, ...rest.entries].map(e => e.amount).sort((a, b) => a - b), [10, 15, 20])
  })

  t.test('clients: create, update, tombstone and create again, each bumping the version', async t => {
    const store = await open(t)
    t.same(await store.listClients(), { version: 0, clients: [] })
    t.equal(await store.clientsVersion(), 0)
    const c: StoredClient = { id: 'rt-1', scopes: ['a'], audiences: ['tool:x'], quota: { limit: 5, window: 60 }, refresh: false, exchange: false, claims: { role: 'r' }, secretHash: '$h', disabled: false, deleted: false, notBefore: 0, createdAt: NOW, updatedAt: NOW }
    t.equal(await store.putClient(c, 'update'), false, 'no client to update')
    t.equal(await store.putClient(c, 'create'), true)
    t.equal(await store.putClient(c, 'create'), false, 'the id is taken')
    t.equal(await store.clientsVersion(), 1)
    t.equal(await store.putClient({ ...c, disabled: true }, 'update'), true)
    t.same(await store.listClients(), { version: 2, clients: [{ ...c, disabled: true }] })
    await store.putClient({ ...c, id: 'rt-0' }, 'create')
    t.same((await store.listClients()).clients.map(x => x.id), ['rt-0', 'rt-1'], 'ordered by id')
    t.equal(await store.putClient({ ...c, deleted: true, secretHash: '' }, 'update'), true)
    t.equal(await store.putClient({ ...c, scopes: ['b'] }, 'update'), false, 'a tombstone is not updated')
    t.equal(await store.putClient({ ...c, scopes: ['c'] }, 'create'), true, 'a tombstone is replaced by a new client')
    const again = await store.listClients()
    t.equal(again.version, 5)
    t.same(again.clients.find(x => x.id === 'rt-1')?.scopes, ['c'])
    const racers = await Promise.all(Array.from({ length: 10 }, () => store.putClient({ ...c, id: 'race' }, 'create')))
    t.equal(racers.filter(Boolean).length, 1, 'of concurrent creations exactly one wins')
  })

  t.test('refresh: rotation moves the family to the new token; every token finds its family', async t => {
    const store = await open(t)
    const f = family()
    await store.createFamily(f, 'h0')
    t.same(await store.findFamily('h0'), { ...f, currentHash: 'h0' })
    const r1 = await store.rotateRefresh('h0', 'h1', NOW + 1000)
    t.same(r1, { status: 'rotated', family: { ...f, currentHash: 'h1', lastUsedAt: NOW + 1000 } })
    t.same(await store.findFamily('h0'), { ...f, currentHash: 'h1', lastUsedAt: NOW + 1000 }, 'an earlier token still finds it')
    t.same(await store.findFamily('h1'), { ...f, currentHash: 'h1', lastUsedAt: NOW + 1000 })
    t.same(await store.rotateRefresh('nope', 'h9', NOW), { status: 'unknown' })
    t.equal(await store.findFamily('nope'), undefined)
    await t.rejects(store.createFamily(family({ id: f.id }), hash()), 'a duplicate family id is refused')
    await t.rejects(store.createFamily(family(), 'h1'), 'a token hash already in use is refused')
    // The refusals are about the duplicates (the stores throw different errors for them): the
    // family is untouched, and a family with a fresh id and hash is still accepted.
    t.same(await store.findFamily('h1'), { ...f, currentHash: 'h1', lastUsedAt: NOW + 1000 }, 'the family is untouched')
    const fresh = family()
    const freshHash = hash()
    await store.createFamily(fresh, freshHash)
    t.same(await store.findFamily(freshHash), { ...fresh, currentHash: freshHash }, 'control: a new id and hash are accepted')
  })

  t.test('refresh: of 50 concurrent rotations of one token exactly one wins', async t => {
    const store = await open(t)
    const f = family()
    await store.createFamily(f, 'start')
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => store.rotateRefresh('start', `new-${i}`, NOW + 1)))
    const winners = results.filter(r => r.status === 'rotated')
    t.equal(winners.length, 1)
    t.ok(results.every(r => r.status === 'rotated' || r.status === 'reused' || r.status === 'revoked'))
    // The losers presented a token that was no longer current: reuse, so the family died.
    t.ok((await store.findFamily('start'))?.revokedAt !== undefined, 'the family is revoked')
  })

  t.test('refresh: a rotated token presented again revokes the family, newest included', async t => {
    const store = await open(t)
    const f = family()
    await store.createFamily(f, 'a0')
    await store.rotateRefresh('a0', 'a1', NOW + 1)
    await store.rotateRefresh('a1', 'a2', NOW + 2)
    const reused = await store.rotateRefresh('a0', 'x', NOW + 3)
    t.same(reused, { status: 'reused', family: { ...f, currentHash: 'a2', lastUsedAt: NOW + 2, revokedAt: NOW + 3 } })
    t.same(await store.rotateRefresh('a2', 'a3', NOW + 4), { status: 'revoked', family: { ...f, currentHash: 'a2', lastUsedAt: NOW + 2, revokedAt: NOW + 3 } })
    t.equal((await store.findFamily('a2'))?.revokedAt, NOW + 3)
    t.equal(await store.findFamily('x'), undefined, 'the reuse attempt registered no new token')
  })

  t.test('refresh: revokeFamily keeps the first revocation time; unknown ids are a no-op', async t => {
    const store = await open(t)
    const f = family()
    await store.createFamily(f, 'b0')
    await store.revokeFamily(f.id, NOW + 5)
    await store.revokeFamily(f.id, NOW + 9)
    await store.revokeFamily('no-such-family', NOW)
    t.same(await store.findFamily('b0'), { ...f, currentHash: 'b0', revokedAt: NOW + 5 })
    t.same(await store.rotateRefresh('b0', 'b1', NOW + 6), { status: 'revoked', family: { ...f, currentHash: 'b0', revokedAt: NOW + 5 } })
  })

  t.test('revocations: listed in order with a cursor, expired ones never, the later expiry kept', async t => {
    const store = await open(t)
    const first = await store.listRevocations(undefined, NOW)
    t.same(first.entries, [])
    await store.addRevocation({ kind: 'jti', id: 'j1', expiresAt: NOW + MIN })
    await store.addRevocation({ kind: 'family', id: 'f:1', expiresAt: NOW + DAY })
    await store.addRevocation({ kind: 'jti', id: 'old', expiresAt: NOW - 1 })
    const all = await store.listRevocations(undefined, NOW)
    t.same(all.entries, [{ kind: 'jti', id: 'j1', expiresAt: NOW + MIN }, { kind: 'family', id: 'f:1', expiresAt: NOW + DAY }])
    const none = await store.listRevocations(all.cursor, NOW)
    t.same(none.entries, [])
    t.ok(Number(none.cursor) >= Number(all.cursor), 'the cursor never goes back')
    await store.addRevocation({ kind: 'jti', id: 'j2', expiresAt: NOW + MIN })
    const next = await store.listRevocations(none.cursor, NOW)
    t.same(next.entries, [{ kind: 'jti', id: 'j2', expiresAt: NOW + MIN }], 'only what was added since')
    t.same((await store.listRevocations(undefined, NOW + 2 * MIN)).entries, [{ kind: 'family', id: 'f:1', expiresAt: NOW + DAY }], 'expired entries are left out')
    await store.addRevocation({ kind: 'jti', id: 'j1', expiresAt: NOW + 3 * MIN })
    await store.addRevocation({ kind: 'jti', id: 'j1', expiresAt: NOW + 2 * MIN })
    const j1 = (await store.listRevocations(undefined, NOW)).entries.filter(e => e.id === 'j1')
    t.same(j1, [{ kind: 'jti', id: 'j1', expiresAt: NOW + 3 * MIN }], 'one entry, with the later expiry')
    t.same((await store.listRevocations('not-a-cursor', NOW)).entries.length, 3, 'a bad cursor reads from the start')
  })

  t.test('revocations: pages of at most 5000, followed to the end by the cursor', async t => {
    const store = await open(t)
    const n = 5100
    for (let i = 0; i < n; i += 500) {
      await Promise.all(Array.from({ length: Math.min(500, n - i) }, (_, j) => store.addRevocation({ kind: 'jti', id: `p${i + j}`, expiresAt: NOW + MIN })))
    }
    const seen = new Set<string>()
    let cursor: string | undefined
    let pages = 0
    for (;;) {
      const page = await store.listRevocations(cursor, NOW)
      cursor = page.cursor
      if (page.entries.length === 0) break
      t.ok(page.entries.length <= 5000)
      for (const e of page.entries) seen.add(e.id)
      pages++
    }
    t.equal(seen.size, n)
    t.equal(pages, 2)
  })

  t.test('counters: fixed windows aligned to the epoch, counted exactly', async t => {
    const store = await open(t)
    const start = Math.floor(NOW / MIN) * MIN
    t.same(await store.incrementCounter('ip:1', MIN, start + 15_000), { count: 1, ttl: 45_000 })
    t.same(await store.incrementCounter('ip:1', MIN, start + 59_999), { count: 2, ttl: 1 })
    t.same(await store.incrementCounter('ip:2', MIN, start + 1), { count: 1, ttl: MIN - 1 }, 'another key')
    t.same(await store.incrementCounter('ip:1', MIN, start + MIN), { count: 1, ttl: MIN }, 'the next window starts at 1')
    const counts = await Promise.all(Array.from({ length: 200 }, () => store.incrementCounter('burst', MIN, start + 10)))
    t.same(counts.map(c => c.count).sort((a, b) => a - b), Array.from({ length: 200 }, (_, i) => i + 1))
  })

  t.test('purge: expired families (with all their tokens) and revocations go; live ones stay', async t => {
    const store = await open(t)
    const dead = family({ expiresAt: NOW + MIN })
    const live = family({ expiresAt: NOW + DAY })
    await store.createFamily(dead, 'd0')
    await store.rotateRefresh('d0', 'd1', NOW + 1)
    await store.createFamily(live, 'l0')
    await store.addRevocation({ kind: 'jti', id: 'gone', expiresAt: NOW + MIN })
    await store.addRevocation({ kind: 'jti', id: 'kept', expiresAt: NOW + DAY })
    const later = NOW + 2 * MIN
    const purged = await store.purgeExpired(later, 1000)
    t.ok(purged >= 2, `purged ${purged}`)
    t.equal(await store.findFamily('d0'), undefined)
    t.equal(await store.findFamily('d1'), undefined)
    t.same(await store.rotateRefresh('d1', 'd2', later), { status: 'unknown' })
    t.equal((await store.findFamily('l0'))?.id, live.id)
    // Listed with an earlier `now`, the purged entry is really gone, not just filtered.
    t.same((await store.listRevocations(undefined, NOW)).entries.map(e => e.id), ['kept'])
    t.equal(await store.purgeExpired(later, 1000), 0, 'nothing left to purge')
  })

  t.test('idempotency: a claim, then running, then the kept answer (bytes unchanged); only the owner completes or releases', async t => {
    const store = await open(t)
    const key = `idem-${hash()}`
    t.same(await store.claimIdempotencyKey(key, 'h1', 'owner-a', NOW + DAY, NOW), { state: 'claimed' })
    t.same(await store.claimIdempotencyKey(key, 'h2', 'owner-b', NOW + DAY, NOW), { state: 'running', bodyHash: 'h1' }, 'the first body hash is told')
    const body = Buffer.alloc(1024 * 1024)
    for (let i = 0; i < body.length; i++) body[i] = (i * 7) & 0xff
    const answer = { status: 201, contentType: 'application/octet-stream', body }
    t.equal(await store.completeIdempotencyKey(key, 'owner-b', answer, NOW + DAY, NOW), false, 'not the owner')
    await store.releaseIdempotencyKey(key, 'owner-b')
    t.equal((await store.claimIdempotencyKey(key, 'h1', 'owner-c', NOW + DAY, NOW)).state, 'running', 'another owner cannot release it')
    t.equal(await store.completeIdempotencyKey(key, 'owner-a', answer, NOW + DAY, NOW + MIN), true)
    t.equal(await store.completeIdempotencyKey(key, 'owner-a', { ...answer, status: 500 }, NOW + DAY, NOW + MIN), false, 'completed once')
    const done = await store.claimIdempotencyKey(key, 'h1', 'owner-d', NOW + DAY, NOW + 2 * MIN)
    t.equal(done.state, 'done')
    if (done.state !== 'done') return
    t.equal(done.bodyHash, 'h1')
    t.equal(done.answer.status, 201)
    t.equal(done.answer.contentType, 'application/octet-stream')
    t.ok(Buffer.isBuffer(done.answer.body) && done.answer.body.equals(body), 'every byte of the 1 MiB body comes back')
    await store.releaseIdempotencyKey(key, 'owner-a')
    t.equal((await store.claimIdempotencyKey(key, 'h1', 'owner-e', NOW + DAY, NOW)).state, 'done', 'a kept answer is never released')

    const empty = `idem-${hash()}`
    await store.claimIdempotencyKey(empty, 'h', 'o', NOW + DAY, NOW)
    await store.completeIdempotencyKey(empty, 'o', { status: 204, contentType: undefined, body: Buffer.alloc(0) }, NOW + DAY, NOW)
    t.same(await store.claimIdempotencyKey(empty, 'h', 'p', NOW + DAY, NOW), { state: 'done', bodyHash: 'h', answer: { status: 204, contentType: undefined, body: Buffer.alloc(0) } }, 'no content type, empty body')
  })

  t.test('idempotency: a released claim frees the key; scoped keys are separate', async t => {
    const store = await open(t)
    const key = `idem-${hash()}`
    t.same(await store.claimIdempotencyKey(key, 'h1', 'a', NOW + DAY, NOW), { state: 'claimed' })
    t.same(await store.claimIdempotencyKey(`${key}-other`, 'h1', 'a', NOW + DAY, NOW), { state: 'claimed' }, 'another key is free')
    await store.releaseIdempotencyKey(key, 'a')
    t.same(await store.claimIdempotencyKey(key, 'h2', 'b', NOW + DAY, NOW), { state: 'claimed' }, 'released: a new call with another body may claim it')
    t.same(await store.claimIdempotencyKey(key, 'h1', 'c', NOW + DAY, NOW), { state: 'running', bodyHash: 'h2' })
  })

  t.test('idempotency: an expired record is free again (SQLite by the caller\'s clock, Redis by its TTL)', async t => {
    const store = await open(t)
    const key = `idem-${hash()}`
    t.same(await store.claimIdempotencyKey(key, 'h1', 'a', NOW + 300, NOW), { state: 'claimed' })
    t.equal((await store.claimIdempotencyKey(key, 'h1', 'b', NOW + DAY, NOW)).state, 'running', 'live before its expiry')
    // Redis expires the 300 ms record on its own clock: ask until it is gone (bounded).
    const since = Date.now()
    let claim = await store.claimIdempotencyKey(key, 'h2', 'c', NOW + DAY, NOW + 400)
    while (claim.state !== 'claimed' && Date.now() - since < 2000) {
      await new Promise(resolve => setTimeout(resolve, 10))
      claim = await store.claimIdempotencyKey(key, 'h2', 'c', NOW + DAY, NOW + 400)
    }
    t.same(claim, { state: 'claimed' }, 'taken over with the new body hash')
    t.equal(await store.completeIdempotencyKey(key, 'a', { status: 200, contentType: undefined, body: Buffer.from('late') }, NOW + DAY, NOW + 400), false, 'the expired owner can no longer keep an answer')
    t.same(await store.claimIdempotencyKey(key, 'h2', 'd', NOW + DAY, NOW + 500), { state: 'running', bodyHash: 'h2' })
  })

  t.test('idempotency: of 50 concurrent claims of one key exactly one wins', async t => {
    const store = await open(t)
    const key = `idem-${hash()}`
    const results = await Promise.all(Array.from({ length: 50 }, async (_, i) => await store.claimIdempotencyKey(key, 'h', `owner-${i}`, NOW + DAY, NOW)))
    t.equal(results.filter(r => r.state === 'claimed').length, 1)
    t.equal(results.filter(r => r.state === 'running').length, 49)
  })

  t.test('ping answers while the store is up', async t => {
    const store = await open(t)
    await t.resolves(store.ping())
  })
}

t.test('SqliteStore', async t => {
  contract(t, async t => {
    const store = SqliteStore.open(join(tempDir(t), 'contract.db'))
    t.teardown(() => store.close())
    return store
  })
})

const redisUrl = await testRedisUrl(t)

if (redisUrl !== undefined) t.test('RedisStore', async t => { // else testRedisUrl reported it: a skip, or a failure under CI
  const url = redisUrl as string
  contract(t, async t => {
    const keyPrefix = uniquePrefix('contract')
    const store = await RedisStore.connect(url, { timeoutMs: 2000, keyPrefix })
    t.teardown(async () => {
      await store.close()
      await deletePrefix(url, keyPrefix)
    })
    t.equal(store.kind, 'redis')
    return store
  })
})

// Cluster mode refuses a script whose keys hash to different slots, so every operation passing
// here proves its keys share a hash tag; with three masters the keys also land on different nodes,
// so the client's slot routing (MOVED) is exercised too.
t.test('RedisStore on a three-node Redis Cluster', requires(t, redisServerMissing()), async t => {
  const cluster = await startRedisCluster(t, 3)
  contract(t, async t => {
    const store = await RedisStore.connect(cluster.url, { timeoutMs: 2000, keyPrefix: uniquePrefix('contract-cluster') })
    t.teardown(async () => { await store.close() })
    t.equal(store.kind, 'redis')
    return store
  })
  t.test('the keys written above are spread over all three nodes', async t => {
    for (const node of cluster.nodes) {
      const redis = new Redis(node.url)
      t.teardown(() => { redis.disconnect() })
      t.ok(await redis.dbsize() > 0, `node on port ${node.port} holds keys`)
    }
  })
})
