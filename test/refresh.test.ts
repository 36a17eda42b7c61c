import t from 'tap'
import { FORM, ManualClock, basic, build, client, form, issue } from './helper.js'
import { advance, claimsOf, forwardAuth, introspect, lifecycleConfig, refresh } from './lifecycle-helper.js'

t.test('a refresh client gets an opaque refresh token that rotates on every use', async t => {
  const app = await build(t, lifecycleConfig(t))
  const first = await issue(app, { scope: 'tools:call tools:read' })
  t.match(first.refresh_token, /^tgr_[A-Za-z0-9_-]{43}$/, '256 random bits, base64url')
  t.ok(claimsOf(first.access_token).fid, 'the first access token carries the family id')

  const second = await refresh(app, first.refresh_token)
  t.equal(second.statusCode, 200)
  t.not(second.body.refresh_token, first.refresh_token, 'a new refresh token every time')
  const claims = claimsOf(second.body.access_token)
  t.match(claims, { sub: 'agent', client_id: 'agent', scope: 'tools:call tools:read', role: 'user', quota: { limit: 100, window: 86400 }, fid: claimsOf(first.access_token).fid },
    'sub, client_id, quota and static claims carried over')
  t.equal(await forwardAuth(app, second.body.access_token), 200)

  const third = await refresh(app, second.body.refresh_token)
  t.equal(third.statusCode, 200, 'the newest token rotates again')
})

t.test('grant_type=refresh_token at /token rotates too, and only stored hashes exist', async t => {
  const app = await build(t, lifecycleConfig(t))
  const first = await issue(app)
  const res = await app.inject({ method: 'POST', url: '/token', headers: { authorization: basic('agent'), ...FORM }, payload: form({ grant_type: 'refresh_token', refresh_token: first.refresh_token }) })
  t.equal(res.statusCode, 200)
  t.ok(res.json().refresh_token)
  t.equal(res.headers['cache-control'], 'no-store')
  t.equal(await app.store.findFamily(first.refresh_token), undefined, 'the token itself is no lookup key: only its hash is stored')
})

t.test('a rotated refresh token presented again revokes its family, newest token and access tokens included', async t => {
  const app = await build(t, lifecycleConfig(t))
  const first = await issue(app)
  const second = await refresh(app, first.refresh_token)
  t.equal(second.statusCode, 200)
  t.equal(await forwardAuth(app, first.access_token), 200)

  const reuse = await refresh(app, first.refresh_token)
  t.equal(reuse.statusCode, 400)
  t.equal(reuse.body.error, 'invalid_grant')
  const newest = await refresh(app, second.body.refresh_token)
  t.equal(newest.statusCode, 400, 'the newest token died too')
  t.equal(newest.body.error, 'invalid_grant')
  t.equal(await forwardAuth(app, second.body.access_token), 401, 'the access token from the rotation is refused')
  t.equal(await forwardAuth(app, first.access_token), 401, 'the access token of the first grant is refused')
  t.equal(await introspect(app, second.body.access_token), false)
  const metrics = await app.inject({ method: 'GET', url: '/metrics' })
  t.match(metrics.body, /tollgate_refreshes_total\{result="reused"\} 1/)

  const unrelated = await issue(app)
  t.equal(await forwardAuth(app, unrelated.access_token), 200, 'other families are untouched')
  t.equal((await refresh(app, unrelated.refresh_token)).statusCode, 200)
})

t.test('20 parallel refreshes with one token over real HTTP: exactly one wins', async t => {
  const app = await build(t, lifecycleConfig(t))
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address() as { port: number }
  const first = await issue(app)
  const results = await Promise.all(Array.from({ length: 20 }, async () => {
    const res = await fetch(`http://127.0.0.1:${address.port}/refresh`, {
      method: 'POST',
      headers: { authorization: basic('agent'), ...FORM },
      body: form({ refresh_token: first.refresh_token })
    })
    return { status: res.status, body: await res.json() as any }
  }))
  const won = results.filter(r => r.status === 200)
  t.equal(won.length, 1, 'exactly one 200')
  t.same(results.filter(r => r.status !== 200).map(r => [r.status, r.body.error]), Array(19).fill([400, 'invalid_grant']))
  // The losers presented a token that had just been rotated: that is reuse, so the family is gone.
  t.equal((await refresh(app, won[0]?.body.refresh_token)).statusCode, 400, 'the concurrent reuse revoked the family')
})

t.test('a refresh token presented by another client is invalid_grant and stays usable by its owner', async t => {
  const app = await build(t, lifecycleConfig(t, {
    clients: [client('agent', { refresh: true }), client('thief', { refresh: true })]
  }))
  const first = await issue(app)
  const stolen = await refresh(app, first.refresh_token, {}, 'thief')
  t.equal(stolen.statusCode, 400)
  t.equal(stolen.body.error, 'invalid_grant')
  t.equal((await refresh(app, first.refresh_token)).statusCode, 200)
})

t.test('a client without refresh: true gets no refresh token and may not use the grant', async t => {
  const app = await build(t, lifecycleConfig(t))
  const tok = await issue(app, {}, 'other')
  t.equal(tok.refresh_token, undefined)
  t.equal(claimsOf(tok.access_token).fid, undefined)
  const res = await refresh(app, 'tgr_' + 'A'.repeat(43), {}, 'other')
  t.equal(res.statusCode, 400)
  t.equal(res.body.error, 'unauthorized_client')
})

t.test('a refresh narrows scope and audience, never widens them', async t => {
  const app = await build(t, lifecycleConfig(t))
  const first = await issue(app, { scope: 'tools:call', audience: 'tool:chat' })

  const wider = await refresh(app, first.refresh_token, { scope: 'tools:call tools:read' })
  t.equal(wider.statusCode, 400)
  t.equal(wider.body.error, 'invalid_scope')
  const elsewhere = await refresh(app, first.refresh_token, { audience: 'tool:search' })
  t.equal(elsewhere.statusCode, 400)
  t.equal(elsewhere.body.error, 'invalid_target')

  // The refused requests did not consume the token.
  const same = await refresh(app, first.refresh_token)
  t.equal(same.statusCode, 200)
  t.match(claimsOf(same.body.access_token), { scope: 'tools:call', aud: 'tool:chat' })

  const wide = await issue(app)
  const narrowed = await refresh(app, wide.refresh_token, { scope: 'tools:read', audience: 'tool:search' })
  t.equal(narrowed.statusCode, 200)
  t.match(claimsOf(narrowed.body.access_token), { scope: 'tools:read', aud: 'tool:search' })
  t.equal(narrowed.body.scope, 'tools:read')
  const back = await refresh(app, narrowed.body.refresh_token, { scope: 'tools:call tools:read' })
  t.equal(back.statusCode, 200, 'the family keeps the original grant as its maximum')
  t.equal(back.body.scope, 'tools:call tools:read')
})

t.test('idle expiry: a family unused for refreshIdleTtl is refused', async t => {
  const clock = new ManualClock()
  const app = await build(t, lifecycleConfig(t, { tokens: { refreshTtl: '1d', refreshIdleTtl: '1h' } }), { clock: clock.fn })
  const first = await issue(app)
  await advance(app, clock, 59 * 60_000)
  const second = await refresh(app, first.refresh_token)
  t.equal(second.statusCode, 200, 'used within the idle window')
  await advance(app, clock, 59 * 60_000)
  const third = await refresh(app, second.body.refresh_token)
  t.equal(third.statusCode, 200, 'each use restarts the idle window')
  await advance(app, clock, 60 * 60_000)
  const idle = await refresh(app, third.body.refresh_token)
  t.equal(idle.statusCode, 400)
  t.same(idle.body, { error: 'invalid_grant', error_description: 'refresh token expired (unused for too long)' })
})

t.test('absolute expiry: a family dies refreshTtl after its first grant, however often it is used', async t => {
  const clock = new ManualClock()
  const app = await build(t, lifecycleConfig(t, { tokens: { refreshTtl: '3h', refreshIdleTtl: '2h' } }), { clock: clock.fn })
  let current = (await issue(app)).refresh_token as string
  for (let i = 0; i < 2; i++) {
    await advance(app, clock, 80 * 60_000)
    const next = await refresh(app, current)
    t.equal(next.statusCode, 200)
    current = next.body.refresh_token
  }
  await advance(app, clock, 20 * 60_000) // 3 h after the first grant
  const expired = await refresh(app, current)
  t.equal(expired.statusCode, 400)
  t.same(expired.body, { error: 'invalid_grant', error_description: 'refresh token expired' })
})

t.test('malformed, unknown and missing refresh tokens are invalid_grant / invalid_request', async t => {
  const app = await build(t, lifecycleConfig(t))
  t.equal((await refresh(app, 'not-a-refresh-token')).body.error, 'invalid_grant')
  t.equal((await refresh(app, 'tgr_' + 'B'.repeat(43))).body.error, 'invalid_grant')
  const missing = await app.inject({ method: 'POST', url: '/token', headers: { authorization: basic('agent'), ...FORM }, payload: form({ grant_type: 'refresh_token' }) })
  t.equal(missing.statusCode, 400)
  t.equal(missing.json().error, 'invalid_request')
  const unauth = await app.inject({ method: 'POST', url: '/refresh', headers: FORM, payload: form({ refresh_token: 'tgr_' + 'B'.repeat(43) }) })
  t.equal(unauth.statusCode, 401)
  t.equal(unauth.json().error, 'invalid_client')
})
