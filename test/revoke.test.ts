import t from 'tap'
import { FORM, basic, build, client, form, issue } from './helper.js'
import { claimsOf, forwardAuth, introspect, lifecycleConfig, refresh, revoke } from './lifecycle-helper.js'

t.test('a revoked access token is refused at once by GET and POST /validate, even after a cached verification', async t => {
  const app = await build(t, lifecycleConfig(t))
  const tok = await issue(app)
  t.equal(await forwardAuth(app, tok.access_token), 200, 'verified once: now in the verification cache')
  const res = await revoke(app, tok.access_token, { token_type_hint: 'access_token' })
  t.equal(res.statusCode, 200)
  t.equal(res.body, '', 'RFC 7009 §2.2: an empty 200')
  t.equal(res.headers['cache-control'], 'no-store')
  t.equal(await forwardAuth(app, tok.access_token), 401)
  t.equal(await introspect(app, tok.access_token), false)
  t.equal((await refresh(app, tok.refresh_token)).statusCode, 200, 'revoking an access token leaves its refresh family alone')
  t.equal((await revoke(app, tok.access_token)).statusCode, 200, 'revoking again is still 200')
  const metrics = await app.inject({ method: 'GET', url: '/metrics' })
  t.match(metrics.body, /tollgate_revocations_total\{type="access_token"\} 1/)
})

t.test('a revoked refresh token takes its family and every access token from it, the first grant\'s included', async t => {
  const app = await build(t, lifecycleConfig(t))
  const first = await issue(app)
  const second = await refresh(app, first.refresh_token)
  t.equal(await forwardAuth(app, first.access_token), 200)
  t.equal(await forwardAuth(app, second.body.access_token), 200)

  const res = await revoke(app, second.body.refresh_token, { token_type_hint: 'refresh_token' })
  t.equal(res.statusCode, 200)
  t.equal(await forwardAuth(app, first.access_token), 401, 'the first grant\'s access token')
  t.equal(await forwardAuth(app, second.body.access_token), 401, 'the rotated access token')
  t.equal(await introspect(app, second.body.access_token), false)
  const again = await refresh(app, second.body.refresh_token)
  t.equal(again.statusCode, 400)
  t.equal(again.body.error, 'invalid_grant')

  const other = await issue(app)
  t.equal(await forwardAuth(app, other.access_token), 200, 'another family of the same client is untouched')
})

t.test('a refresh token sent without a hint (or with a wrong one) is found anyway', async t => {
  const app = await build(t, lifecycleConfig(t))
  const tok = await issue(app)
  t.equal((await revoke(app, tok.refresh_token, { token_type_hint: 'access_token' })).statusCode, 200)
  t.equal(await forwardAuth(app, tok.access_token), 401)
  const tok2 = await issue(app)
  t.equal((await revoke(app, tok2.access_token, { token_type_hint: 'refresh_token' })).statusCode, 200)
  t.equal(await forwardAuth(app, tok2.access_token), 401)
  const tok3 = await issue(app)
  t.equal((await revoke(app, tok3.refresh_token, { token_type_hint: 'something_else' })).statusCode, 200)
  t.equal((await refresh(app, tok3.refresh_token)).statusCode, 400)
})

t.test('unknown, invalid and expired tokens get 200 and change nothing', async t => {
  const app = await build(t, lifecycleConfig(t))
  const tok = await issue(app)
  for (const token of ['nonsense', 'tgr_' + 'C'.repeat(43), 'a.b.c', tok.access_token.slice(0, -4) + 'AAAA']) {
    const res = await revoke(app, token)
    t.equal(res.statusCode, 200, `200 for ${token.slice(0, 12)}…`)
  }
  t.equal(await forwardAuth(app, tok.access_token), 200)
  t.equal((await refresh(app, tok.refresh_token)).statusCode, 200)
})

t.test('another client\'s tokens are refused with unauthorized_client and keep working', async t => {
  const app = await build(t, lifecycleConfig(t, { clients: [client('agent', { refresh: true }), client('other', { refresh: true })] }))
  const tok = await issue(app)
  for (const token of [tok.access_token, tok.refresh_token]) {
    const res = await revoke(app, token, {}, 'other')
    t.equal(res.statusCode, 400)
    t.same(JSON.parse(res.body), { error: 'unauthorized_client', error_description: 'the token was not issued to this client' })
  }
  t.equal(await forwardAuth(app, tok.access_token), 200, 'the access token still works')
  t.equal((await refresh(app, tok.refresh_token)).statusCode, 200, 'the refresh token still works')
})

t.test('/revoke needs client authentication and a token', async t => {
  const app = await build(t, lifecycleConfig(t))
  const tok = await issue(app)
  const anonymous = await app.inject({ method: 'POST', url: '/revoke', headers: FORM, payload: form({ token: tok.access_token }) })
  t.equal(anonymous.statusCode, 401)
  t.equal(anonymous.json().error, 'invalid_client')
  t.equal(anonymous.headers['www-authenticate'], 'Basic realm="tollgate"')
  const noToken = await app.inject({ method: 'POST', url: '/revoke', headers: { authorization: basic('agent'), ...FORM }, payload: form({}) })
  t.equal(noToken.statusCode, 400)
  t.equal(noToken.json().error, 'invalid_request')
  const json = await app.inject({ method: 'POST', url: '/revoke', headers: { authorization: basic('agent') }, payload: { token: tok.access_token } })
  t.equal(json.statusCode, 200, 'JSON bodies work too')
  t.equal(await forwardAuth(app, tok.access_token), 401)
})

t.test('families and revocations survive a restart on the same data directory', async t => {
  const config = lifecycleConfig(t)
  const first = await build(t, config)
  const revoked = await issue(first)
  const kept = await issue(first)
  const rotated = await refresh(first, kept.refresh_token)
  const dead = await issue(first)
  t.equal((await revoke(first, revoked.access_token)).statusCode, 200)
  t.equal((await revoke(first, dead.refresh_token)).statusCode, 200)
  await first.close()

  const second = await build(t, config)
  t.equal(await forwardAuth(second, revoked.access_token), 401, 'a revoked access token stays revoked')
  t.equal(await forwardAuth(second, dead.access_token), 401, 'a revoked family\'s access token stays revoked')
  t.equal((await refresh(second, dead.refresh_token)).body.error, 'invalid_grant')
  t.equal(await forwardAuth(second, rotated.body.access_token), 200)
  const next = await refresh(second, rotated.body.refresh_token)
  t.equal(next.statusCode, 200, 'a live family rotates after the restart')
  t.equal(claimsOf(next.body.access_token).fid, claimsOf(kept.access_token).fid)
  const reuse = await refresh(second, kept.refresh_token)
  t.equal(reuse.body.error, 'invalid_grant', 'a token rotated before the restart is still reuse')
  t.equal(await forwardAuth(second, next.body.access_token), 401, 'and reuse kills the family')
})
