// The token a tool receives (CONTRACT §5: aud = the tool's audience, the caller's sub, at most
// 60 s) is a distinct kind: it carries only the tool's scopes and no Tollgate endpoint accepts it,
// so a tool, its logs or the link it travels on cannot replay it at Tollgate. Real gateway and
// upstream over HTTP; the token is the one the upstream actually received.
import { decodeJwt } from 'jose'
import t from 'tap'
import { startApp } from './call-helper.js'
import { startUpstream } from './support/upstream.js'
import { FORM, basic, issue } from './helper.js'

const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'
const ACCESS = 'urn:ietf:params:oauth:token-type:access_token'

t.test('a downstream token carries only the tool\'s scopes and is refused by every Tollgate endpoint', async t => {
  const up = await startUpstream(t)
  const { app, base } = await startApp(t, up, [{ name: 'chat' }], {
    clients: [
      { id: 'agent', secretHash: (await import('./helper.js')).CLIENT_SECRET_HASH, scopes: ['tools:call', 'tools:read'], audiences: ['tool:chat', 'tool:search'], quota: { limit: 100, window: '1d' } },
      { id: 'exchanger', secretHash: (await import('./helper.js')).CLIENT_SECRET_HASH, scopes: ['tools:call'], audiences: ['tool:chat'], exchange: true }
    ]
  })
  const caller = (await issue(app)).access_token as string
  const called = await fetch(`${base}/call`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${caller}` }, body: '{"tool":"chat"}' })
  t.equal(called.status, 200)
  await called.arrayBuffer()
  const downstream = String(up.seen[0]?.headers.authorization).replace(/^Bearer /, '')
  const claims = decodeJwt(downstream)
  t.match(claims, { aud: 'tool:chat', sub: 'agent', scope: 'tools:call', token_use: 'downstream' }, 'the tool\'s scope only (the caller also holds tools:read)')
  t.equal(claims.quota, undefined)

  const bearer = { authorization: `Bearer ${downstream}` }
  const refusals = [
    await app.inject({ method: 'GET', url: '/validate', headers: bearer }),
    await app.inject({ method: 'GET', url: '/validate?audience=tool:chat', headers: bearer }),
    await app.inject({ method: 'POST', url: '/call', headers: { ...bearer, 'content-type': 'application/json' }, payload: '{"tool":"chat"}' }),
    await app.inject({ method: 'GET', url: '/quota', headers: bearer })
  ]
  for (const res of refusals) {
    t.equal(res.statusCode, 401, String(res.raw.req.url))
    t.equal(res.json().code, 'invalid_token')
  }
  t.equal(up.seen.length, 1, 'the replayed call reached no tool')
  const form = { authorization: basic('agent'), ...FORM }
  const introspected = await app.inject({ method: 'POST', url: '/validate', headers: form, payload: new URLSearchParams({ token: downstream }).toString() })
  t.same(introspected.json(), { active: false }, 'introspection: inactive')
  const exchanged = await app.inject({ method: 'POST', url: '/token', headers: { ...form, authorization: basic('exchanger') }, payload: new URLSearchParams({ grant_type: EXCHANGE, subject_token: downstream, subject_token_type: ACCESS }).toString() })
  t.equal(exchanged.statusCode, 400, 'not a subject token for an exchange')
  t.equal(exchanged.json().error, 'invalid_request')
  // Control: the caller's own token still passes where the downstream one did not.
  t.equal((await app.inject({ method: 'GET', url: '/validate?audience=tool:chat', headers: { authorization: `Bearer ${caller}` } })).statusCode, 200)
})
