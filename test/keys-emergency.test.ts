// Key emergencies (CONTRACT §13): `keys rotate --now` makes a fresh key sign at once in every state,
// `keys retire <kid> --now` unpublishes a key and refuses its tokens at every replica within the
// key reload interval, and both write an audit line. On the key manager alone, then through the
// real CLI against a running app on SQLite, and against two apps sharing one Redis.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { stringify } from 'yaml'
import { KeyManager } from '../src/keys/index.js'
import { SqliteStore } from '../src/store/sqlite.js'
import { CLIENT_SECRET_HASH, FORM, ManualClock, SECRET, build, form, basic, issue, reloadEvery, tempDir, testConfig, type TestContext } from './helper.js'
import { jsonLines } from './support/logs.js'
import { runTollgate, tollgateInProcess, type Run } from './support/command.js'
import { deletePrefix, testRedisUrl, uniquePrefix } from './support/redis.js'

const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })
const kidOf = (token: string): string => JSON.parse(Buffer.from(token.split('.')[0] as string, 'base64url').toString()).kid
const RELOAD_MS = 300

async function keyManager (t: TestContext, clock: ManualClock): Promise<KeyManager> {
  const store = SqliteStore.open(join(tempDir(t), 'keys.db'))
  t.teardown(() => store.close())
  const keys = new KeyManager({ store, secret: SECRET, algorithm: 'ES256', rotateAfter: 86400, publishAhead: 600, retireGrace: 3600, clock: clock.fn })
  await keys.init()
  return keys
}

/** Runs the real `tollgate` command (dist/cli.js, built when stale). */
async function cli (args: string[]): Promise<Run> {
  return await runTollgate(args, { env: { ...process.env, TOLLGATE_SECRET: SECRET } })
}

function auditLines (stderr: string): Array<Record<string, any>> {
  return jsonLines(stderr)
}

async function validateStatus (app: FastifyInstance, token: string): Promise<number> {
  return (await app.inject({ method: 'GET', url: '/validate', headers: bearer(token) })).statusCode
}

async function jwksKids (app: FastifyInstance): Promise<string[]> {
  return (await app.inject({ method: 'GET', url: '/jwks' })).json().keys.map((k: any) => k.kid).sort()
}

/** Polls until `check` holds, for at most `ms` (the reload interval plus a margin); returns whether it did. */
async function within (ms: number, check: () => Promise<boolean>): Promise<boolean> {
  const deadline = Date.now() + ms
  for (;;) {
    if (await check()) return true
    if (Date.now() > deadline) return false
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

/** A config file for the CLI and the same config for in-process apps. */
function setup (t: TestContext, store?: Record<string, unknown>): { file: string, raw: Record<string, unknown> } {
  const dir = tempDir(t)
  const raw: Record<string, unknown> = {
    issuer: 'https://tollgate.test',
    dataDir: dir,
    logLevel: 'silent',
    clients: [{ id: 'agent', secretHash: CLIENT_SECRET_HASH, scopes: ['tools:call'], audiences: ['tool:chat'] }],
    ...(store !== undefined ? { store } : {})
  }
  const file = join(dir, 'tollgate.yaml')
  writeFileSync(file, stringify(raw), { mode: 0o600 })
  return { file, raw }
}

t.test('rotateNow: a fresh key signs at once, with or without a pending next key', async t => {
  const clock = new ManualClock()
  const keys = await keyManager(t, clock)
  const first = keys.signingKey().kid
  const pending = await keys.rotate()
  t.ok(pending)
  t.equal(await keys.rotate(), undefined, 'a scheduled rotation is refused while one is pending')

  const now = await keys.rotateNow()
  t.same(now.deleted, [pending], 'the pending key is replaced, not promoted (it may have leaked too)')
  t.equal(keys.signingKey().kid, now.kid, 'the fresh key signs at once')
  t.same(keys.list().map(k => [k.kid, k.state]), [[first, 'retired'], [now.kid, 'current']])
  t.ok(keys.verificationKey(first), 'the previous key still verifies until retired')
  t.equal(keys.verificationKey(pending as string), undefined, 'the replaced key is no longer published')

  clock.advance(1000)
  const again = await keys.rotateNow()
  t.same(again.deleted, [], 'with nothing pending nothing is deleted')
  t.equal(keys.signingKey().kid, again.kid)
})

t.test('retireNow: unpublished at once; the signing key (and the only key) is replaced first', async t => {
  const clock = new ManualClock()
  const keys = await keyManager(t, clock)
  const only = keys.signingKey().kid
  const first = await keys.retireNow(only)
  t.equal(first.retired, only)
  t.ok(first.rotated, 'retiring the only key creates a new one')
  t.equal(keys.signingKey().kid, first.rotated, 'which signs at once')
  t.same(keys.list().map(k => k.kid), [first.rotated], 'the retired key is gone from the set')
  t.equal(keys.verificationKey(only), undefined)
  t.notOk(JSON.parse(keys.jwks()).keys.some((k: any) => k.kid === only), 'and from the JWKS')

  clock.advance(1000)
  const second = await keys.rotateNow()
  const retired = await keys.retireNow(first.rotated as string)
  t.same(retired, { retired: first.rotated, deleted: [first.rotated] }, 'a key that no longer signs is just removed, no rotation')
  t.equal(keys.signingKey().kid, second.kid, 'the signing key is unchanged')

  const next = await keys.rotate()
  const pendingRetired = await keys.retireNow(next as string)
  t.same(pendingRetired, { retired: next, deleted: [next] }, 'a pending key can be retired too')
  t.equal(keys.signingKey().kid, second.kid)
  await t.rejects(keys.retireNow('no-such-kid'), /no key no-such-kid/)
})

t.test('CLI on SQLite: rotate --now with a rotation pending, then retire --now of the leaked key, seen by a running app', async t => {
  const { file, raw } = setup(t)
  const app = await build(t, reloadEvery(testConfig(t, raw), RELOAD_MS))
  const leaked = kidOf((await issue(app)).access_token)
  const before = await issue(app)

  const scheduled = await tollgateInProcess(['keys', 'rotate', '--config', file])
  t.equal(scheduled.status, 0, scheduled.stderr)
  const pending = /^created (\S+)$/m.exec(scheduled.stdout)?.[1] as string
  const blocked = await tollgateInProcess(['keys', 'rotate', '--config', file])
  t.equal(blocked.status, 1, 'a second scheduled rotation is still refused')
  t.match(blocked.stderr, /already pending/)

  const now = await cli(['keys', 'rotate', '--now', '--config', file])
  t.equal(now.status, 0, now.status === 0 ? 'rotate --now works with a rotation pending' : now.stderr)
  const fresh = /^created (\S+)$/m.exec(now.stdout)?.[1] as string
  t.match(now.stdout, new RegExp(`^deleted pending ${pending}$`, 'm'))
  t.match(now.stdout, new RegExp(`${fresh}\\s+ES256\\s+current`))
  // Exact counts and lists: t.match on an array checks only as many entries as the pattern has.
  const rotated = auditLines(now.stderr)
  t.equal(rotated.length, 1, 'one audit line')
  t.match(rotated, [{ audit: 'keys.rotated_now', kid: fresh }])
  t.same(rotated[0]?.replaced, [pending], 'replacing exactly the pending key')

  t.ok(await within(RELOAD_MS * 4 + 2000, async () => kidOf((await issue(app)).access_token) === fresh), 'the running app signs with the fresh key within the reload interval')
  t.equal(await validateStatus(app, before.access_token), 200, 'tokens of the old key still pass until it is retired')

  const retire = await cli(['keys', 'retire', leaked, '--now', '--config', file])
  t.equal(retire.status, 0, retire.status === 0 ? 'retire --now exits 0' : retire.stderr)
  t.match(retire.stdout, new RegExp(`^retired ${leaked}$`, 'm'))
  t.notMatch(retire.stdout, /^created/m, 'no rotation: the leaked key no longer signed')
  const lines = auditLines(retire.stderr)
  t.equal(lines.length, 1, 'one audit line')
  t.match(lines, [{ audit: 'keys.retired_now', kid: leaked }])
  t.notMatch(retire.stderr, /privateEnc|"d"|BEGIN/, 'no key material in the audit line')

  t.ok(await within(RELOAD_MS * 4 + 2000, async () => await validateStatus(app, before.access_token) === 401), 'the leaked key\'s token is refused within the reload interval')
  const introspected = await app.inject({ method: 'POST', url: '/validate', headers: { ...FORM, authorization: basic('agent') }, payload: form({ token: before.access_token }) })
  t.same(introspected.json(), { active: false }, 'introspection says inactive')
  t.same(await jwksKids(app), [fresh], 'only the fresh key is published')
  t.equal(await validateStatus(app, (await issue(app)).access_token), 200, 'new tokens work')

  const unknown = await tollgateInProcess(['keys', 'retire', 'no-such-kid', '--now', '--config', file])
  t.equal(unknown.status, 1)
  t.match(unknown.stderr, /no key no-such-kid/)
  // A kid is base64url: one in 64 begins with '-', and must still be read as the kid, not an option.
  const dashed = await tollgateInProcess(['keys', 'retire', '-uXyZ_dash-first', '--now', '--config', file])
  t.equal(dashed.status, 1)
  t.match(dashed.stderr, /no key -uXyZ_dash-first in the key set/)
  const withoutNow = await tollgateInProcess(['keys', 'retire', fresh, '--config', file])
  t.equal(withoutNow.status, 1, 'retire without --now is refused')
  t.match(withoutNow.stderr, /--now/)
})

t.test('CLI on Redis: retiring the signing key reaches two running replicas within the reload interval', async t => {
  const url = await testRedisUrl(t)
  if (url === undefined) return // testRedisUrl reported it: a skip, or a failure under CI
  const keyPrefix = uniquePrefix('keys-emergency')
  t.teardown(async () => { await deletePrefix(url, keyPrefix) })
  const { file, raw } = setup(t, { redis: url, keyPrefix, timeout: '2s' })
  const a = await build(t, reloadEvery(testConfig(t, raw), RELOAD_MS))
  const b = await build(t, reloadEvery(testConfig(t, raw), RELOAD_MS))
  const leaked = a.keys.signingKey().kid
  t.equal(b.keys.signingKey().kid, leaked, 'both replicas sign with one key')
  const fromA = await issue(a)
  const fromB = await issue(b)
  for (const app of [a, b]) {
    for (const tok of [fromA, fromB]) t.equal(await validateStatus(app, tok.access_token), 200, 'valid (and now in the verification cache)')
  }

  const retire = await cli(['keys', 'retire', leaked, '--now', '--config', file])
  t.equal(retire.status, 0, retire.status === 0 ? 'retire --now exits 0' : retire.stderr)
  const fresh = /^created (\S+)$/m.exec(retire.stdout)?.[1] as string
  t.ok(fresh, 'the signing key was replaced first')
  const audits = auditLines(retire.stderr)
  t.equal(audits.length, 2, 'two audit lines')
  t.match(audits, [
    { audit: 'keys.rotated_now', kid: fresh, reason: `retire ${leaked}` },
    { audit: 'keys.retired_now', kid: leaked }
  ])

  for (const [name, app] of [['A', a], ['B', b]] as const) {
    t.ok(await within(RELOAD_MS * 4 + 2000, async () =>
      await validateStatus(app, fromA.access_token) === 401 && await validateStatus(app, fromB.access_token) === 401),
    `replica ${name} refuses every token of the retired key within the reload interval`)
    t.same(await jwksKids(app), [fresh], `replica ${name} publishes only the fresh key`)
  }
  const newA = await issue(a)
  t.equal(kidOf(newA.access_token), fresh)
  t.equal(await validateStatus(b, newA.access_token), 200, 'a new token from A validates at B')
})
