// Contract lines that had no assertion (issue 20, item 4), each with a positive control:
// - X-Auth-* values are checked for CR/LF: a token the gateway's own key signed, whose `sub` carries
//   "\r\n", never becomes a header, at GET /validate or upstream from /call (CONTRACT §3, §5);
// - an unknown client costs the same work as a wrong secret: the same scrypt, counted at node:crypto
//   (CONTRACT §2);
// - `act` reaches the downstream token a tool receives from an exchanged caller (CONTRACT §5);
// - /health reports keys: "fail" when the store has lost the signing key (CONTRACT §6).
// One app on a real port and one real upstream serve the first three.
import { randomUUID, type KeyObject } from 'node:crypto'
import crypto from 'node:crypto'
import { syncBuiltinESMExports } from 'node:module'
import Database from 'better-sqlite3'
import { createLocalJWKSet, jwtVerify } from 'jose'
import t from 'tap'
import { deriveKek, openKeyRecord } from '../src/keys/material.js'
import { sqlitePath } from '../src/store/index.js'
import { CLIENT_SECRET, FORM, SECRET, basic, build, client, form, issue, testConfig } from './helper.js'
import { rawRequest, startApp, startUpstream } from './call-helper.js'
import { signCompact } from './support/sign.js'

const ISSUER = 'https://tollgate.test'
const upstream = await startUpstream(t)
const { app, port } = await startApp(t, upstream, [{ name: 'chat' }], {
  clients: [client('agent'), client('exchanger', { exchange: true }), client('counted')],
  rateLimits: { token: { max: 100_000, window: '1m' } }
})
t.teardown(() => { app.server.closeAllConnections() })

/** The raw bytes of an answer (status line and headers), read off the socket: nothing normalised. */
async function rawHead (path: string, headers: Record<string, string>): Promise<string> {
  return (await rawRequest(port, 'GET', path, headers)).head
}

t.test('GET /validate never emits a header with CR/LF, even for a token the gateway\'s own key signed', async t => {
  // The signing key as an insider holding TOLLGATE_SECRET and the store would get it: the stored,
  // encrypted record, opened with the key-encryption secret. It is the key the gateway signs with.
  const kid = JSON.parse(Buffer.from((await issue(app)).access_token.split('.')[0], 'base64url').toString()).kid as string
  const record = (await app.store.listKeys()).find(r => r.kid === kid)
  if (record === undefined) throw new Error('the signing key is not in the store')
  const key: KeyObject = openKeyRecord(record, deriveKek(SECRET)).privateKey
  const now = Math.floor(Date.now() / 1000)
  const sign = (sub: string): string => signCompact({ alg: record.alg, kid, typ: 'at+jwt' }, {
    iss: ISSUER, sub, aud: 'tool:chat', client_id: 'agent', scope: 'tools:call', iat: now, nbf: now, exp: now + 300, jti: randomUUID()
  }, record.alg, key)

  const control = await rawHead('/validate', { authorization: `Bearer ${sign('clean-subject')}` })
  t.match(control, /^HTTP\/1\.1 200 /, 'positive control: a token signed this way is accepted')
  t.match(control, /\r\nx-auth-subject: clean-subject\r\n/i)

  for (const sub of ['evil\r\nX-Injected: 1', 'evil\nX-Injected: 1', 'evil\rX-Injected: 1', 'tab\there', 'nul\u0000here', 'del\u007fhere']) {
    const head = await rawHead('/validate', { authorization: `Bearer ${sign(sub)}` })
    t.match(head, /^HTTP\/1\.1 401 /, `${JSON.stringify(sub)}: refused as 401, not a 500 or a 200`)
    t.match(head, /\r\nwww-authenticate: Bearer realm="tollgate", error="invalid_token", error_description="[^"\r\n]*"/i, 'with an RFC 6750 challenge')
    t.notMatch(head, /x-injected/i, 'no forged header line')
    t.notMatch(head, /x-auth-/i, 'no X-Auth-* header at all')
    for (const line of head.split('\r\n')) t.notMatch(line, /[\u0000-\u001f\u007f]/, 'no control character inside a header line')
  }

  // The same sub at /call, where it would become X-Auth-Subject upstream: refused, nothing forwarded.
  const call = async (sub: string): Promise<number> => (await app.inject({
    method: 'POST', url: '/call', headers: { authorization: `Bearer ${sign(sub)}`, 'content-type': 'application/json' }, payload: { tool: 'chat', arguments: {} }
  })).statusCode
  const seen = upstream.seen.length
  t.equal(await call('clean-subject'), 200, 'positive control: /call forwards for a clean sub')
  t.equal(upstream.seen.at(-1)?.headers['x-auth-subject'], 'clean-subject')
  t.equal(await call('evil\r\nX-Injected: 1'), 401, '/call refuses a sub with CR/LF')
  t.equal(upstream.seen.length, seen + 1, 'and forwards nothing for it')
})

/** Every node:crypto scrypt call made while `fn` runs, with its key length and cost parameters. */
async function scryptCalls (fn: () => Promise<unknown>): Promise<Array<{ keylen: number, N: number, r: number, p: number }>> {
  const calls: Array<{ keylen: number, N: number, r: number, p: number }> = []
  const original = crypto.scrypt
  // The ESM binding `import { scrypt } from 'node:crypto'` in src/clients follows the builtin
  // module's export once syncBuiltinESMExports runs, so this counts the calls the gateway makes.
  crypto.scrypt = ((password: any, salt: any, keylen: number, options: any, cb: any) => {
    calls.push({ keylen, N: options.N, r: options.r, p: options.p })
    return original(password, salt, keylen, options, cb)
  }) as typeof crypto.scrypt
  syncBuiltinESMExports()
  try {
    await fn()
  } finally {
    crypto.scrypt = original
    syncBuiltinESMExports()
  }
  return calls
}

t.test('an unknown client costs the same scrypt as a wrong secret, not just the same answer', async t => {
  type Answer = { statusCode: number, body: unknown, challenge: unknown }
  const token = async (id: string, secret: string, ip: string): Promise<Answer> => {
    const res = await app.inject({
      method: 'POST', url: '/token', remoteAddress: ip, headers: { authorization: basic(id, secret), ...FORM }, payload: form({ grant_type: 'client_credentials' })
    })
    return { statusCode: res.statusCode, body: res.json(), challenge: res.headers['www-authenticate'] }
  }
  // `counted` authenticates here first: no earlier request has put its pair in the verified cache.
  let answer: Answer | undefined
  const right = await scryptCalls(async () => { answer = await token('counted', CLIENT_SECRET, '192.0.2.1') })
  t.equal(answer?.statusCode, 200)
  t.equal(right.length, 1, 'positive control: a right secret checked for the first time runs one scrypt, and it is counted')
  const cached = await scryptCalls(async () => { answer = await token('counted', CLIENT_SECRET, '192.0.2.1') })
  t.equal(answer?.statusCode, 200)
  t.same(cached, [], 'positive control: a pair verified moments ago runs none, so the count is not constant')

  let wrongAnswer: Answer | undefined
  let unknownAnswer: Answer | undefined
  const wrong = await scryptCalls(async () => { wrongAnswer = await token('counted', 'not-the-agent-secret-0', '192.0.2.2') })
  const unknown = await scryptCalls(async () => { unknownAnswer = await token('no-such-client', 'not-the-agent-secret-0', '192.0.2.3') })
  t.equal(wrongAnswer?.statusCode, 401)
  t.same(unknownAnswer, wrongAnswer, 'the same answer')
  t.equal(wrong.length, 1, 'a wrong secret runs one scrypt')
  t.same(unknown, wrong, 'an unknown client runs one scrypt with the same cost parameters and key length')
  t.same(wrong, right, 'both cost what checking the real secret costs')
})

t.test('the downstream token of an exchanged caller carries act; a direct caller\'s does not', async t => {
  const jwks = createLocalJWKSet(JSON.parse(app.keys.jwks()))
  const callTool = async (accessToken: string): Promise<Record<string, any>> => {
    const before = upstream.seen.length
    const res = await app.inject({ method: 'POST', url: '/call', headers: { authorization: `Bearer ${accessToken}`, 'content-type': 'application/json' }, payload: { tool: 'chat', arguments: {} } })
    t.equal(res.statusCode, 200, res.body)
    t.equal(upstream.seen.length, before + 1, 'the tool was called once')
    const auth = String(upstream.seen.at(-1)?.headers.authorization)
    t.match(auth, /^Bearer /)
    const downstream = auth.slice('Bearer '.length)
    t.not(downstream, accessToken, 'the tool gets a downstream token, not the caller\'s')
    return (await jwtVerify(downstream, jwks, { issuer: ISSUER, audience: 'tool:chat', typ: 'at+jwt' })).payload
  }

  const direct = await issue(app, { audience: 'tool:chat' })
  const plain = await callTool(direct.access_token)
  t.equal(plain.sub, 'agent')
  t.equal(plain.act, undefined, 'positive control: a direct caller\'s downstream token has no act')

  const exchanged = await app.inject({
    method: 'POST',
    url: '/token',
    headers: { authorization: basic('exchanger'), ...FORM },
    payload: form({ grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange', subject_token: direct.access_token, subject_token_type: 'urn:ietf:params:oauth:token-type:access_token', audience: 'tool:chat' })
  })
  t.equal(exchanged.statusCode, 200, exchanged.body)
  const downstream = await callTool(exchanged.json().access_token)
  t.equal(downstream.sub, 'agent', 'the subject is the subject token\'s')
  t.equal(downstream.client_id, 'exchanger')
  t.same(downstream.act, { sub: 'exchanger' }, 'act names the client that exchanged')
})

t.test('/health reports keys: "fail" when the store has lost the key that signs', async t => {
  const config = testConfig(t, { keys: { publishAhead: 3600 } })
  const first = await build(t, config)
  const health = await first.inject({ method: 'GET', url: '/health' })
  t.same({ status: health.statusCode, body: health.json() }, { status: 200, body: { status: 'ok', checks: { store: 'ok', keys: 'ok' } } }, 'positive control: healthy before')
  const signing = (await first.keys.list()).find(k => k.state === 'current')?.kid as string
  const pending = await first.keys.rotate() // published now, signs in an hour
  t.type(pending, 'string')
  await first.close()

  // The active key's row goes from the SQLite file behind the gateway's back (a bad restore, an
  // operator's mistake); the pending key stays, so nothing re-creates a first key.
  const db = new Database(sqlitePath(config))
  try {
    t.equal(db.prepare('DELETE FROM keys WHERE kid = ?').run(signing).changes, 1)
  } finally {
    db.close()
  }

  const app = await build(t, config)
  const after = await app.inject({ method: 'GET', url: '/health' })
  t.equal(after.statusCode, 503)
  t.same(after.json(), { status: 'fail', checks: { store: 'ok', keys: 'fail' } })
  t.equal(after.headers['cache-control'], 'no-store')
  const token = await app.inject({ method: 'POST', url: '/token', headers: { authorization: basic('agent'), ...FORM }, payload: form({ grant_type: 'client_credentials' }) })
  t.equal(token.statusCode, 503, 'and no token is signed meanwhile')
})
