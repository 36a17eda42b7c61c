// Issue 15, item 3: a stored key record is bound to its private key. Whoever can write the store
// (but does not hold TOLLGATE_SECRET) swaps the public JWK, changes the kid or truncates the GCM
// tag: the record is refused on load with one log line naming only the kid and the rule, /health
// answers 503 with keys: "fail", the key is not published, and a token forged with a swapped-in
// key does not validate. Run on the real SQLite file and on real Redis.
import { generateKeyPairSync, randomUUID } from 'node:crypto'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { Redis } from 'ioredis'
import { SignJWT, importJWK } from 'jose'
import t, { type Test } from 'tap'
import { KeyManager } from '../src/keys/index.js'
import { thumbprint } from '../src/keys/material.js'
import type { KeyRecord, Store } from '../src/store/index.js'
import { RedisStore } from '../src/store/redis.js'
import { SqliteStore } from '../src/store/sqlite.js'
import { FORM, ManualClock, SECRET, basic, build, form, issue, tempDir, testConfig, type TestContext } from './helper.js'
import { captureLog } from './support/logs.js'
import { deletePrefix, testRedisUrl, uniquePrefix } from './support/redis.js'

type Tamper = (record: KeyRecord) => KeyRecord

interface Backend {
  store: Store
  /** Rewrites one stored record in place, behind the store's back (what an attacker with write access does). */
  tamper: (kid: string, change: Tamper) => Promise<void>
}

async function sqliteBackend (t: TestContext): Promise<Backend> {
  const file = join(tempDir(t), 'keys.db')
  const store = SqliteStore.open(file)
  t.teardown(() => store.close())
  return {
    store,
    tamper: async (kid, change) => {
      const db = new Database(file)
      try {
        const row = db.prepare('SELECT * FROM keys WHERE kid = ?').get(kid) as any
        const next = change({ kid: row.kid, alg: row.alg, publicJwk: JSON.parse(row.public_jwk), privateEnc: row.private_enc, createdAt: row.created_at, activatesAt: row.activates_at })
        db.prepare('UPDATE keys SET kid = ?, alg = ?, public_jwk = ?, private_enc = ? WHERE kid = ?').run(next.kid, next.alg, JSON.stringify(next.publicJwk), next.privateEnc, kid)
      } finally {
        db.close()
      }
    }
  }
}

async function redisBackend (t: TestContext, url: string): Promise<Backend> {
  const keyPrefix = uniquePrefix('keys-integrity')
  const store = await RedisStore.connect(url, { timeoutMs: 2000, keyPrefix })
  const raw = new Redis(url)
  t.teardown(async () => {
    await store.close()
    raw.disconnect()
    await deletePrefix(url, keyPrefix)
  })
  const hash = `${keyPrefix}{keys}`
  return {
    store,
    tamper: async (kid, change) => {
      const next = change(JSON.parse(await raw.hget(hash, kid) as string) as KeyRecord)
      await raw.multi().hdel(hash, kid).hset(hash, next.kid, JSON.stringify(next))
        .zrem(`${hash}:act`, kid).zadd(`${hash}:act`, next.activatesAt, next.kid).exec()
    }
  }
}

/** A key pair the attacker made: its public JWK goes into the store, its private half signs forgeries. */
function attackerKey (): { publicJwk: Record<string, unknown>, privateJwk: Record<string, unknown>, thumbprint: string } {
  const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const publicJwk = pair.publicKey.export({ format: 'jwk' }) as Record<string, unknown>
  return { publicJwk, privateJwk: pair.privateKey.export({ format: 'jwk' }) as Record<string, unknown>, thumbprint: thumbprint(publicJwk) }
}

const attacker = attackerKey()

const tampers: Record<string, Tamper> = {
  'a swapped public JWK': r => ({ ...r, publicJwk: { ...attacker.publicJwk, kid: r.kid, alg: r.alg, use: 'sig' } }),
  'a changed kid': r => ({ ...r, kid: attacker.thumbprint, publicJwk: { ...attacker.publicJwk, kid: attacker.thumbprint, alg: r.alg, use: 'sig' } }),
  'a truncated GCM tag': r => {
    const [v, iv, body, tag] = r.privateEnc.split('.') as [string, string, string, string]
    return { ...r, privateEnc: [v, iv, body, Buffer.from(tag, 'base64url').subarray(0, 4).toString('base64url')].join('.') }
  }
}

async function forge (kid: string): Promise<string> {
  const now = Math.floor(Date.now() / 1000)
  return await new SignJWT({ client_id: 'agent', scope: 'tools:call' })
    .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid })
    .setIssuer('https://tollgate.test').setSubject('agent').setAudience('tool:chat')
    .setIssuedAt(now).setExpirationTime(now + 300).setJti(randomUUID())
    .sign(await importJWK(attacker.privateJwk, 'ES256'))
}

async function suite (t: Test, open: (t: TestContext) => Promise<Backend>): Promise<void> {
  t.test('intact records load: the published key and the signing key come from the private half', async t => {
    const { store } = await open(t)
    const clock = new ManualClock()
    const keys = new KeyManager({ store, secret: SECRET, algorithm: 'ES256', rotateAfter: 86400, publishAhead: 0, retireGrace: 3600, clock: clock.fn })
    await keys.init()
    await keys.rotate()
    const again = new KeyManager({ store, secret: SECRET, algorithm: 'ES256', rotateAfter: 86400, publishAhead: 0, retireGrace: 3600, clock: clock.fn })
    await again.init()
    t.same(again.refused(), [])
    t.equal(again.healthy(), true)
    const published = JSON.parse(again.jwks()).keys
    t.equal(published.length, 2)
    for (const jwk of published) t.equal(jwk.kid, thumbprint(jwk), 'every kid is the RFC 7638 thumbprint of its published key')
  })

  for (const [name, change] of Object.entries(tampers)) {
    t.test(`a record with ${name} is refused, logged without key material, and /health fails`, async t => {
      const backend = await open(t)
      const config = testConfig(t, { keys: { publishAhead: 0 } })
      const first = await build(t, config, { store: backend.store })
      const victim = first.keys.signingKey().kid
      const good = await issue(first)
      // A second key signs from now on, so the key set stays usable and only the victim is refused.
      const successor = await first.keys.rotate({ publishAhead: 0 }) as string
      await first.close()
      const storedBefore = (await backend.store.listKeys()).find(r => r.kid === victim) as KeyRecord
      await backend.tamper(victim, change)

      const { logger, lines } = captureLog(config, 'info')
      const app = await build(t, config, { store: backend.store, loggerInstance: logger })
      const tamperedKid = name === 'a changed kid' ? attacker.thumbprint : victim

      t.same(app.keys.refused(), [tamperedKid], 'the record is refused')
      const refusals = lines.map(l => JSON.parse(l)).filter(l => l.event === 'keys.refused')
      t.equal(refusals.length, 1, 'one log line')
      t.match(refusals[0], { level: 50, kid: tamperedKid, reason: String })
      for (const line of lines) {
        t.notOk(line.includes(storedBefore.privateEnc.split('.')[2] as string), 'no ciphertext in the log')
        t.notOk(line.includes(String(attacker.publicJwk.x)) || line.includes(String(attacker.privateJwk.d)), 'no key material in the log')
      }

      const health = await app.inject({ method: 'GET', url: '/health' })
      t.equal(health.statusCode, 503)
      t.same(health.json(), { status: 'fail', checks: { store: 'ok', keys: 'fail' } })

      const kids = (await app.inject({ method: 'GET', url: '/jwks' })).json().keys.map((k: any) => k.kid)
      t.same(kids, [successor], 'the refused key is not published')
      const forged = await forge(tamperedKid)
      const check = await app.inject({ method: 'POST', url: '/validate', headers: { authorization: basic('agent'), ...FORM }, payload: form({ token: forged }) })
      t.same(check.json(), { active: false }, 'a token signed with the swapped-in key does not validate')
      t.equal((await app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${good.access_token}` } })).statusCode, 401,
        'nor does one the refused key really signed: the record cannot be trusted')
      t.equal(app.keys.signingKey().kid, successor, 'the refused key never signs')
    })
  }

  t.test('a tampered current key stops signing: /token answers 503, never a token from it', async t => {
    const backend = await open(t)
    const config = testConfig(t)
    const first = await build(t, config, { store: backend.store })
    const victim = first.keys.signingKey().kid
    await first.close()
    await backend.tamper(victim, tampers['a swapped public JWK'] as Tamper)
    const app = await build(t, config, { store: backend.store })
    t.same(app.keys.refused(), [victim])
    const token = await app.inject({ method: 'POST', url: '/token', headers: { authorization: basic('agent'), ...FORM }, payload: form({ grant_type: 'client_credentials' }) })
    t.equal(token.statusCode, 503)
    t.equal(token.json().error, 'temporarily_unavailable')
    t.equal((await app.inject({ method: 'GET', url: '/health' })).statusCode, 503)
  })

  t.test('a secret that opens none of the stored keys still stops startup', async t => {
    const { store } = await open(t)
    const keys = new KeyManager({ store, secret: SECRET, algorithm: 'ES256', rotateAfter: 86400, publishAhead: 0, retireGrace: 3600 })
    await keys.init()
    const wrong = new KeyManager({ store, secret: 'another-secret-another-secret-0123', algorithm: 'ES256', rotateAfter: 86400, publishAhead: 0, retireGrace: 3600 })
    await t.rejects(wrong.init(), /cannot decrypt the key set with this secret/)
  })
}

t.test('SQLite', async t => { await suite(t, sqliteBackend) })

const redisUrl = await testRedisUrl(t)
if (redisUrl !== undefined) t.test('Redis', async t => { // else testRedisUrl reported it: a skip, or a failure under CI
  await suite(t, async t => await redisBackend(t, redisUrl as string))
})
