import t from 'tap'
import { FORM, basic, build, client, form, issue } from './helper.js'
import { lifecycleConfig, refresh, revoke } from './lifecycle-helper.js'
import { captureLog } from './support/logs.js'

t.test('lifecycle events are audited with ids only, never a token', async t => {
  const config = lifecycleConfig(t, {
    clients: [client('agent', { refresh: true }), client('exchanger', { exchange: true })]
  })
  const { logger, parsed: lines } = captureLog(config, 'info')
  const app = await build(t, config, { loggerInstance: logger })

  const first = await issue(app)
  const second = await refresh(app, first.refresh_token)
  const reuse = await refresh(app, first.refresh_token)
  t.equal(reuse.statusCode, 400)
  const other = await issue(app)
  await revoke(app, other.access_token)
  await revoke(app, other.refresh_token)
  const exchanged = await app.inject({
    method: 'POST',
    url: '/token',
    headers: { authorization: basic('exchanger'), ...FORM },
    payload: form({ grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange', subject_token: first.access_token, subject_token_type: 'urn:ietf:params:oauth:token-type:access_token' })
  })
  t.equal(exchanged.statusCode, 400, 'the subject token died with its family')
  const third = await issue(app)
  const ok = await app.inject({
    method: 'POST',
    url: '/token',
    headers: { authorization: basic('exchanger'), ...FORM },
    payload: form({ grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange', subject_token: third.access_token, subject_token_type: 'urn:ietf:params:oauth:token-type:access_token' })
  })
  t.equal(ok.statusCode, 200)

  const audit = (name: string): any[] => lines.filter(l => l.audit === name)
  const fid = (jwt: string): string => JSON.parse(Buffer.from(jwt.split('.')[1] as string, 'base64url').toString()).fid
  // Exactly these lines: t.match on an array checks only as many entries as the pattern has, so
  // the count is asserted too (an extra or duplicated audit line fails).
  const exactly = (name: string, want: object[]): void => {
    const got = audit(name)
    t.equal(got.length, want.length, `${name}: ${want.length} line(s)`)
    t.match(got, want, name)
  }
  exactly('refresh.rotated', [{ client_id: 'agent', family_id: fid(first.access_token), sub: 'agent', jti: String }])
  exactly('refresh.reuse_detected', [{ client_id: 'agent', family_id: fid(first.access_token), sub: 'agent' }])
  exactly('token.revoked', [
    { token_type: 'access_token', client_id: 'agent', jti: String },
    { token_type: 'refresh_token', client_id: 'agent', family_id: fid(other.access_token) }
  ])
  exactly('token.exchanged', [{ client_id: 'exchanger', sub: 'agent', jti: String, subject_issuer: 'https://tollgate.test' }])

  const text = lines.map(l => JSON.stringify(l)).join('\n')
  for (const token of [first, second.body, other, third, ok.json()].flatMap(b => [b.access_token, b.refresh_token]).filter(Boolean)) {
    t.notOk(text.includes(token), 'no token in any log line')
  }
})
