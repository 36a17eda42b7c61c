import { spawnSync } from 'node:child_process'
import { statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import t from 'tap'
import { stringify } from 'yaml'
import { KeyManager } from '../src/keys/index.js'
import { SqliteStore } from '../src/store/sqlite.js'
import { CLIENT_SECRET_HASH, ManualClock, SECRET, build, issue, reloadEvery, tempDir, testConfig, type TestContext } from './helper.js'

const bearer = (token: string) => ({ authorization: `Bearer ${token}` })
const kidOf = (token: string): string => JSON.parse(Buffer.from(token.split('.')[0] as string, 'base64url').toString()).kid

async function keyManager (t: TestContext, clock: ManualClock, overrides: Partial<ConstructorParameters<typeof KeyManager>[0]> = {}) {
  const store = SqliteStore.open(join(tempDir(t), 'keys.db'))
  t.teardown(() => store.close())
  const keys = new KeyManager({ store, secret: SECRET, algorithm: 'ES256', rotateAfter: 86400, publishAhead: 600, retireGrace: 3600, clock: clock.fn, ...overrides })
  await keys.init()
  return { store, keys }
}

t.test('rotation moves keys next → current → retired → removed, publishing before signing', async t => {
  const clock = new ManualClock()
  const { keys } = await keyManager(t, clock)
  const first = keys.signingKey().kid
  const next = await keys.rotate()
  t.ok(next)
  t.equal(await keys.rotate(), undefined, 'one pending rotation at a time')
  t.same(keys.list().map(k => [k.kid, k.state]), [[first, 'current'], [next, 'next']])
  t.equal(keys.signingKey().kid, first, 'the next key does not sign yet')
  t.same(JSON.parse(keys.jwks()).keys.map((k: any) => k.kid).sort(), [first, next].sort(), 'but it is published')

  clock.advance(600_000)
  t.equal(keys.signingKey().kid, next, 'after publishAhead the new key signs')
  t.same(keys.list().map(k => k.state), ['retired', 'current'])
  t.ok(keys.verificationKey(first), 'the retired key still verifies')

  clock.advance(3600_000)
  const changed = await keys.maintain()
  t.same(changed.removed, [first], 'removed after the longest token lifetime plus leeway')
  t.same(JSON.parse(keys.jwks()).keys.map((k: any) => k.kid), [next])
  t.equal(keys.verificationKey(first), undefined)
})

t.test('automatic rotation after rotateAfter, and on an algorithm change', async t => {
  const clock = new ManualClock()
  const { store, keys } = await keyManager(t, clock)
  t.same((await keys.maintain()).rotated, undefined, 'nothing due yet')
  clock.advance(86400_000)
  const rotated = (await keys.maintain()).rotated
  t.ok(rotated, 'a successor is created when the current key is rotateAfter old')
  t.equal(keys.list().find(k => k.kid === rotated)?.state, 'next')

  const ed = new KeyManager({ store, secret: SECRET, algorithm: 'EdDSA', rotateAfter: 86400, publishAhead: 0, retireGrace: 3600, clock: clock.fn })
  clock.advance(600_000)
  await ed.init()
  const changed = await ed.maintain()
  t.ok(changed.rotated, 'configuring another algorithm rotates to a key of that algorithm')
  t.equal(ed.signingKey().alg, 'EdDSA')
})

t.test('private keys are encrypted at rest and bound to their kid', async t => {
  const clock = new ManualClock()
  const dir = tempDir(t)
  const store = SqliteStore.open(join(dir, 'k.db'))
  const keys = new KeyManager({ store, secret: SECRET, algorithm: 'ES256', rotateAfter: 86400, publishAhead: 0, retireGrace: 3600, clock: clock.fn })
  await keys.init()
  await store.close()
  const db = new Database(join(dir, 'k.db'))
  const row = db.prepare('SELECT * FROM keys').get() as any
  t.match(row.private_enc, /^v1\.[\w-]+\.[\w-]+\.[\w-]+$/)
  t.notMatch(row.private_enc, /PRIVATE KEY|"d"/)
  t.notOk(row.public_jwk.includes('"d"'), 'only the public JWK is stored in clear')
  db.close()

  const again = SqliteStore.open(join(dir, 'k.db'))
  t.teardown(() => again.close())
  const wrong = new KeyManager({ store: again, secret: 'another-secret-another-secret-0123', algorithm: 'ES256', rotateAfter: 86400, publishAhead: 0, retireGrace: 3600 })
  await t.rejects(wrong.init(), /cannot decrypt the key set with this secret/)
})

t.test('EdDSA and RS256 keys issue tokens that validate', async t => {
  for (const algorithm of ['EdDSA', 'RS256']) {
    const app = await build(t, testConfig(t, { keys: { algorithm } }))
    const tok = await issue(app)
    t.equal(JSON.parse(Buffer.from(tok.access_token.split('.')[0], 'base64url').toString()).alg, algorithm)
    t.equal((await app.inject({ method: 'GET', url: '/validate', headers: bearer(tok.access_token) })).statusCode, 200, algorithm)
  }
})

t.test('without TOLLGATE_SECRET a secret is generated once into the data directory (0600)', async t => {
  const dataDir = tempDir(t)
  const config = testConfig(t, { dataDir }, {})
  delete config.secret
  const app = await build(t, config)
  const tok = await issue(app)
  t.equal(statSync(join(dataDir, 'secret')).mode & 0o777, 0o600)
  await app.close()
  const again = await build(t, config)
  t.equal((await again.inject({ method: 'GET', url: '/validate', headers: bearer(tok.access_token) })).statusCode, 200, 'the same generated secret decrypts the key set after a restart')
})

t.test('a token issued before a restart validates after it', async t => {
  const config = testConfig(t)
  const first = await build(t, config)
  const tok = await issue(first)
  await first.close()
  const second = await build(t, config)
  t.equal((await second.inject({ method: 'GET', url: '/validate', headers: bearer(tok.access_token) })).statusCode, 200)
})

t.test('`tollgate keys rotate`: new tokens carry the new kid, old ones still validate, both are published', async t => {
  const dir = tempDir(t)
  const raw = {
    issuer: 'https://tollgate.test',
    dataDir: dir,
    logLevel: 'silent',
    keys: { publishAhead: 0 },
    clients: [{ id: 'agent', secretHash: CLIENT_SECRET_HASH, scopes: ['tools:call'], audiences: ['tool:chat'] }]
  }
  const file = join(dir, 'tollgate.yaml')
  writeFileSync(file, stringify(raw))
  const config = reloadEvery(testConfig(t, raw), 60_000)
  const app = await build(t, config)
  const before = await issue(app)

  const cli = spawnSync(process.execPath, [...process.execArgv, 'src/cli.ts', 'keys', 'rotate', '--config', file], {
    env: { ...process.env, TOLLGATE_SECRET: SECRET },
    encoding: 'utf8'
  })
  t.equal(cli.status, 0, cli.stderr)
  const created = /^created (\S+)$/m.exec(cli.stdout)?.[1]
  t.ok(created, 'the CLI names the new key')
  t.match(cli.stdout, new RegExp(`${created}\\s+ES256\\s+current`))

  await app.keys.reload() // what the running server's reload timer does within its interval
  const after = await issue(app)
  t.equal(kidOf(after.access_token), created)
  t.not(kidOf(before.access_token), created)
  for (const tok of [before, after]) {
    t.equal((await app.inject({ method: 'GET', url: '/validate', headers: bearer(tok.access_token) })).statusCode, 200)
  }
  const kids = (await app.inject({ method: 'GET', url: '/jwks' })).json().keys.map((k: any) => k.kid)
  t.same(kids.sort(), [kidOf(before.access_token), created].sort())

  const list = spawnSync(process.execPath, [...process.execArgv, 'src/cli.ts', 'keys', 'list', '--config', file], { env: { ...process.env, TOLLGATE_SECRET: SECRET }, encoding: 'utf8' })
  t.equal(list.status, 0, list.stderr)
  t.match(list.stdout, /retired/)
})
