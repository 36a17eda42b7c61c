// What only the Redis store has: connection URLs (Sentinel, Cluster), Cluster-ready key layout,
// TTLs that never end before the caller's expiry, bounded failure as StoreUnavailable, and
// connection errors logged without the URL's password and without crashing the process.
import t from 'tap'
import { Redis } from 'ioredis'
import { StoreUnavailable } from '../src/errors.js'
import { RedisStore, connectionPlan, redactUrl, type StoreLogger } from '../src/store/redis.js'
import { ManualClock } from './helper.js'
import { deletePrefix, freePort, redisServerMissing, startRedisServer, testRedisUrl, uniquePrefix } from './support/redis.js'
import { requires } from './support/skip.js'

const NOW = new ManualClock().now

t.test('store URLs: standalone, TLS, Sentinel and Cluster', async t => {
  const single = connectionPlan('redis://:pw@10.0.0.5:6380/2', 1500)
  t.equal(single.mode, 'standalone')
  t.match(single.options, { enableOfflineQueue: false, commandTimeout: 1500, connectTimeout: 1500, maxRetriesPerRequest: 1 })
  t.ok((single.options.retryStrategy as (n: number) => number)(100) <= 2000, 'reconnect backoff is capped')

  const sentinel = connectionPlan('redis+sentinel://user:p%40ss@s1:26379,s2,[::1]:26380/mymaster/3', 1000)
  t.equal(sentinel.mode, 'sentinel')
  t.match(sentinel.options, {
    name: 'mymaster',
    db: 3,
    username: 'user',
    password: 'p@ss',
    sentinelPassword: 'p@ss',
    sentinels: [{ host: 's1', port: 26379 }, { host: 's2', port: 26379 }, { host: '::1', port: 26380 }]
  })
  t.throws(() => connectionPlan('redis+sentinel://s1:26379', 1000), /master name/)

  const cluster = connectionPlan('rediss+cluster://n1:7000,n2:7001', 1000)
  t.equal(cluster.mode, 'cluster')
  t.same(cluster.nodes, [{ host: 'n1', port: 7000 }, { host: 'n2', port: 7001 }])
  t.same(cluster.options.tls, {})
  t.throws(() => connectionPlan('redis+cluster://n1:notaport', 1000), /bad host:port/)
})

t.test('passwords are redacted from URLs in messages', async t => {
  t.equal(redactUrl('cannot reach redis://:hunter2@db:6379/0'), 'cannot reach redis://***@db:6379/0')
  t.equal(redactUrl('rediss://alice:hunter2@db'), 'rediss://alice:***@db')
  t.equal(redactUrl('redis+sentinel://u:hunter2@s1,s2/m'), 'redis+sentinel://u:***@s1,s2/m')
  t.equal(redactUrl('redis://db:6379'), 'redis://db:6379')
})

t.test('connecting to nothing fails within the bound, naming the URL without its password', async t => {
  const port = await freePort()
  const started = performance.now()
  const err = await RedisStore.connect(`redis://:hunter2@127.0.0.1:${port}`, { timeoutMs: 500 }).then(() => undefined, (e: unknown) => e as Error)
  t.ok(err instanceof Error, 'refused')
  t.match(err?.message, `redis://***@127.0.0.1:${port}`)
  t.notMatch(err?.message, /hunter2/)
  t.ok(performance.now() - started < 10_000, 'bounded')
  await t.rejects(RedisStore.connect('redis://127.0.0.1:6379', { timeoutMs: 500, keyPrefix: 'bad{tag}' }), /keyPrefix/)
})

const redisUrl = await testRedisUrl(t)

if (redisUrl !== undefined) t.test('key layout: one hash tag per script, TTLs that outlive the caller\'s expiry', async t => {
  const url = redisUrl as string
  const keyPrefix = uniquePrefix('layout')
  const store = await RedisStore.connect(url, { timeoutMs: 2000, keyPrefix })
  const raw = new Redis(url)
  t.teardown(async () => {
    await store.close()
    raw.disconnect()
    await deletePrefix(url, keyPrefix)
  })
  const realNow = Date.now()
  const start = Math.floor(realNow / 60_000) * 60_000
  await store.consumeQuota('alice', start, 60_000, 10, 1)
  await store.consumeQuota('bob', 0, 60_000, 10, 1) // a window long past by Redis's clock
  await store.createFamily({ id: 'fam', clientId: 'c', sub: 's', scope: '', aud: ['a'], extra: {}, createdAt: NOW, expiresAt: NOW + 1000, currentHash: 'h0', lastUsedAt: NOW }, 'h0')
  await store.rotateRefresh('h0', 'h1', NOW + 1)
  await store.addRevocation({ kind: 'jti', id: 'j', expiresAt: NOW + 1000 })
  await store.incrementCounter('rl:ip:1', 60_000, realNow)
  await store.addKeyIfNoPending({ kid: 'k', alg: 'ES256', publicJwk: {}, privateEnc: 'blob', createdAt: NOW, activatesAt: NOW }, NOW)

  const keys = await raw.keys(`${keyPrefix}*`)
  const tag = (key: string): string => /\{([^}]+)\}/.exec(key)?.[1] ?? ''
  const tagsOf = (part: string): Set<string> => new Set(keys.filter(k => k.includes(`{${part}`)).map(tag))
  t.same([...tagsOf('rt')], ['rt'], 'refresh families, tokens and their index share one slot')
  t.same([...tagsOf('rv')], ['rv'], 'the revocation log shares one slot')
  t.same([...tagsOf('keys')], ['keys'], 'the key set shares one slot')
  t.ok(keys.every(k => tag(k) !== ''), 'every key has a hash tag')
  t.equal(keys.filter(k => k.includes('{q:')).length, 2, 'quota keys are per subject')

  const quotaTtl = await raw.pttl(`${keyPrefix}{q:alice}:60000:${start}`)
  t.ok(quotaTtl >= start + 60_000 - Date.now(), `the quota window lives at least to its end (${quotaTtl} ms)`)
  t.ok(await raw.pttl(`${keyPrefix}{q:bob}:60000:0`) > 0, 'a window already past by Redis\'s clock still gets a TTL, not instant deletion')
  t.equal(await store.getQuota('bob', 0, 60_000), 1)
  for (const k of [`${keyPrefix}{rt}:f:fam`, `${keyPrefix}{rt}:t:h0`, `${keyPrefix}{rt}:t:h1`, `${keyPrefix}{rt}:ft:fam`]) {
    t.ok(await raw.pttl(k) > 0, `${k.slice(keyPrefix.length)} expires with the family`)
  }
  const counterTtl = await raw.pttl(`${keyPrefix}{c:rl%3Aip%3A1}:${start}`)
  t.ok(counterTtl > 0 && counterTtl <= 60_000, `the counter expires with its window (${counterTtl} ms)`)
  t.same(JSON.parse(await raw.hget(`${keyPrefix}{keys}`, 'k') ?? '{}').privateEnc, 'blob', 'the key set keeps the encrypted blob as given')
})

t.test('when Redis goes away: StoreUnavailable, errors logged without the password, recovery', requires(t, redisServerMissing()), async t => {
  const password = 'hunter2-not-in-logs'
  const redis = await startRedisServer(t, { requirePass: password })
  const lines: string[] = []
  const log: StoreLogger = {
    warn: (obj, msg) => { lines.push(JSON.stringify({ level: 'warn', msg, ...obj })) },
    info: (obj, msg) => { lines.push(JSON.stringify({ level: 'info', msg, ...obj })) }
  }
  const store = await RedisStore.connect(redis.url, { timeoutMs: 1000, keyPrefix: uniquePrefix('down'), log })
  t.teardown(() => store.close())
  await store.consumeQuota('s', 0, 60_000, 5, 1)
  await t.rejects(RedisStore.connect(`redis://127.0.0.1:${redis.port}`, { timeoutMs: 200, keyPrefix: uniquePrefix('down') }), /^store\.redis: cannot connect to /, 'the server refuses a client without the password the URL carries')

  await redis.stop()
  // The one message that names the URL is a failed connect's, and this URL carries the password.
  const refused = await RedisStore.connect(redis.url, { timeoutMs: 200, keyPrefix: uniquePrefix('down') }).then(s => s.close(), (err: Error) => err)
  t.match(refused, { message: `store.redis: cannot connect to redis://***@127.0.0.1:${redis.port}: ` }, 'a failed connect names the server without its password')
  t.notOk(String(refused).includes(password), 'and nowhere in the message')
  await t.rejects(store.consumeQuota('s', 0, 60_000, 5, 1), StoreUnavailable)
  await t.rejects(store.ping(), StoreUnavailable)
  await t.rejects(store.listRevocations(undefined, NOW), StoreUnavailable)
  // The line comes from the connection's own close or error event, which may land just after the
  // first refused command: wait for it (bounded) rather than race it.
  const logDeadline = Date.now() + 5000
  while (Date.now() < logDeadline && !lines.some(l => l.includes('store.error'))) await new Promise(resolve => setTimeout(resolve, 20))
  t.ok(lines.some(l => l.includes('store.error')), 'the connection error was logged')

  await redis.start()
  const deadline = Date.now() + 30_000
  while (Date.now() < deadline && !(await store.ping().then(() => true, () => false))) await new Promise(resolve => setTimeout(resolve, 100))
  await t.resolves(store.ping(), 'the same store works again')
  t.ok(lines.some(l => l.includes('store.recovered')), 'the recovery was logged')
  t.notOk(lines.some(l => l.includes(password)), 'no log line carries the password')
})
