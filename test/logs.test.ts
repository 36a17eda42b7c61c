// No secret in any log line (SECURITY.md "Everywhere"; CONTRACT §6). A full flow runs with logging
// at debug level: client credentials, refresh, rotation reuse, exchange of a trusted issuer's token
// and of a Tollgate token, introspection, forward auth, /call with a downstream token and with a
// static header secret from the environment, revocation, and failed logins with a wrong secret.
// Then every secret the flow saw or held is searched for in the captured log: client secrets (from
// a hash and from an env var), the presented wrong secrets, Basic credentials, access tokens and their
// signature segments, refresh tokens, downstream tokens, subject tokens, the static tool secret,
// TOLLGATE_SECRET and the private key material. The same flow runs against an in-process app
// (its logger writing into memory: support/logs.ts) and a real gateway process at TOLLGATE_LOG_LEVEL=debug.
import { generateKeyPairSync, sign } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import t from 'tap'
import { stringify } from 'yaml'
import { loadConfig } from '../src/config.js'
import { decryptPrivateKey, deriveKek } from '../src/keys/material.js'
import { startUpstream, type Upstream } from './support/upstream.js'
import { CLIENT_SECRET, CLIENT_SECRET_HASH, FORM, SECRET, basic, form, tempDir, type TestContext } from './helper.js'
import { startGateway } from './support/process.js'
import { captureLog } from './support/logs.js'
import { startIdp } from './support/idp.js'

const IDP = 'https://idp.test'
const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt'
const ACCESS = 'urn:ietf:params:oauth:token-type:access_token'
const STATIC_TOOL_SECRET = 'static-tool-secret-7f3a9c'
const ENV_CLIENT_SECRET = 'env-client-secret-51d0e2'
const WRONG_SECRETS = ['wrong-secret-presented-1', 'wrong-secret-presented-2', 'wrong-secret-presented-3']

interface Answer { status: number, body: string, json: () => any }
type Send = (method: string, url: string, headers?: Record<string, string>, body?: string) => Promise<Answer>

const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url')

/** Everything a test run needs besides the gateway: a tool upstream and a trusted issuer. */
async function dependencies (t: TestContext): Promise<{ upstream: Upstream, jwksUri: string, idpToken: (jti: string) => string }> {
  const upstream = await startUpstream(t)
  const idpKey = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const { jwksUri } = await startIdp(t, { keys: [{ ...idpKey.publicKey.export({ format: 'jwk' }), kid: 'idp-1', use: 'sig', alg: 'ES256' }] })
  const idpToken = (jti: string): string => {
    const now = Math.floor(Date.now() / 1000)
    const input = `${b64({ alg: 'ES256', kid: 'idp-1', typ: 'JWT' })}.${b64({ iss: IDP, sub: 'user-42', aud: 'tollgate', iat: now, exp: now + 300, scope: 'tools:call', jti })}`
    return `${input}.${sign('sha256', Buffer.from(input), { key: idpKey.privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`
  }
  return { upstream, jwksUri, idpToken }
}

function rawConfig (dataDir: string, upstream: Upstream, jwksUri: string): Record<string, unknown> {
  const high = { max: 1_000_000, window: '1m' }
  return {
    issuer: 'https://tollgate.test',
    dataDir,
    logLevel: 'debug',
    rateLimits: { token: high, perIp: high, perSubject: high },
    clients: [
      { id: 'agent', secretHash: CLIENT_SECRET_HASH, scopes: ['tools:call'], audiences: ['tool:chat', 'tool:search'], refresh: true, quota: { limit: 1000, window: '1d' } },
      { id: 'exchanger', secretEnv: 'EXCHANGER_SECRET', scopes: ['tools:call'], audiences: ['tool:chat', 'tool:search'], exchange: true }
    ],
    trustedIssuers: [{ issuer: IDP, jwksUri, audiences: ['tollgate'] }],
    tools: [
      { name: 'chat', url: `${upstream.origin}/chat`, audience: 'tool:chat', scopes: ['tools:call'] },
      { name: 'search', url: `${upstream.origin}/search`, audience: 'tool:search', scopes: ['tools:call'], auth: { header: 'X-Api-Key', valueEnv: 'SEARCH_KEY' } }
    ]
  }
}

const ENV = { TOLLGATE_SECRET: SECRET, SEARCH_KEY: STATIC_TOOL_SECRET, EXCHANGER_SECRET: ENV_CLIENT_SECRET }

/**
 * Runs the whole flow and returns every secret it saw, by name. Each step asserts its own outcome,
 * so a flow that silently stopped working cannot make the log look clean.
 */
async function flow (t: any, send: Send, upstream: Upstream, idpToken: (jti: string) => string): Promise<Record<string, string>> {
  const secrets: Record<string, string> = {}
  const keep = (name: string, token: string): void => {
    secrets[name] = token
    const parts = token.split('.')
    if (parts.length === 3) secrets[`${name} (signature)`] = parts[2] as string
  }
  const agent = { authorization: basic('agent', CLIENT_SECRET), ...FORM }
  const exchanger = { authorization: basic('exchanger', ENV_CLIENT_SECRET), ...FORM }

  // client_credentials, twice: one family to rotate, one to revoke.
  const first = await send('POST', '/token', agent, form({ grant_type: 'client_credentials' }))
  t.equal(first.status, 200, 'client_credentials')
  keep('access token 1', first.json().access_token)
  keep('refresh token 1', first.json().refresh_token)
  const second = await send('POST', '/token', { ...FORM }, form({ grant_type: 'client_credentials', client_id: 'agent', client_secret: CLIENT_SECRET }))
  t.equal(second.status, 200, 'client_credentials with client_secret_post')
  keep('access token 2', second.json().access_token)
  keep('refresh token 2', second.json().refresh_token)
  const json = await send('POST', '/token', { 'content-type': 'application/json' }, JSON.stringify({ grant_type: 'client_credentials', client_id: 'agent', client_secret: CLIENT_SECRET }))
  t.equal(json.status, 200, 'client_credentials with a JSON body')
  keep('access token 3', json.json().access_token)
  keep('refresh token 3', json.json().refresh_token)

  // Refresh, then present the rotated token again (reuse: the family dies).
  const rotated = await send('POST', '/refresh', agent, form({ refresh_token: secrets['refresh token 1'] as string }))
  t.equal(rotated.status, 200, 'refresh')
  keep('rotated access token', rotated.json().access_token)
  keep('rotated refresh token', rotated.json().refresh_token)
  const viaToken = await send('POST', '/token', agent, form({ grant_type: 'refresh_token', refresh_token: secrets['rotated refresh token'] as string }))
  t.equal(viaToken.status, 200, 'refresh at /token')
  keep('refreshed access token', viaToken.json().access_token)
  keep('refreshed refresh token', viaToken.json().refresh_token)
  const reuse = await send('POST', '/refresh', agent, form({ refresh_token: secrets['refresh token 1'] as string }))
  t.equal(reuse.status, 400, 'rotation reuse refused')
  t.equal(reuse.json().error, 'invalid_grant')

  // Token exchange: a trusted issuer's token and a Tollgate token as subject tokens; one refused.
  keep('subject token (trusted issuer)', idpToken('s-1'))
  const exTrusted = await send('POST', '/token', exchanger, form({ grant_type: EXCHANGE, subject_token: secrets['subject token (trusted issuer)'] as string, subject_token_type: JWT_TYPE }))
  t.equal(exTrusted.status, 200, `exchange of a trusted issuer's token ${exTrusted.body}`)
  keep('exchanged access token (trusted)', exTrusted.json().access_token)
  const exTollgate = await send('POST', '/token', exchanger, form({ grant_type: EXCHANGE, subject_token: secrets['access token 2'] as string, subject_token_type: ACCESS }))
  t.equal(exTollgate.status, 200, 'exchange of a Tollgate token')
  keep('exchanged access token (tollgate)', exTollgate.json().access_token)
  const forged = (secrets['subject token (trusted issuer)'] as string).slice(0, -6) + 'AAAAAA'
  keep('refused subject token', forged)
  const exRefused = await send('POST', '/token', exchanger, form({ grant_type: EXCHANGE, subject_token: forged, subject_token_type: JWT_TYPE }))
  t.equal(exRefused.status, 400, 'a forged subject token is refused')

  // Introspection and forward auth, accepted and refused; a token in a query string is never read.
  const access = secrets['access token 3'] as string
  const active = await send('POST', '/validate', agent, form({ token: access }))
  t.equal(active.json().active, true, 'introspection: active')
  const inactive = await send('POST', '/validate', agent, form({ token: access.slice(0, -4) + 'AAAA' }))
  t.same(inactive.json(), { active: false }, 'introspection: inactive')
  t.equal((await send('GET', '/validate', { authorization: `Bearer ${access}` })).status, 200, 'forward auth: 200')
  t.equal((await send('GET', '/validate?scope=tools:admin', { authorization: `Bearer ${access}` })).status, 403, 'forward auth: 403')
  t.equal((await send('GET', '/validate', { authorization: `Bearer ${access.slice(0, -4)}AAAA` })).status, 401, 'forward auth: 401')
  t.equal((await send('GET', `/validate?access_token=${access}`)).status, 401, 'a token in the query string is not read')
  t.equal((await send('GET', `/no-such-route?access_token=${access}&client_secret=${CLIENT_SECRET}`)).status, 404, '404 with credentials in the query')

  // /call: a downstream token (auth: token) and a static header secret (auth: header from env).
  const before = upstream.seen.length
  const chat = await send('POST', '/call', { authorization: `Bearer ${access}`, 'content-type': 'application/json', cookie: 'session=cookie-secret-value' }, '{"tool":"chat","arguments":{"q":"hi"}}')
  t.equal(chat.status, 200, '/call with auth: token')
  const search = await send('GET', `/call/search/q?token=${access}`, { authorization: `Bearer ${access}` })
  t.equal(search.status, 200, '/call/:tool/* with a static header secret')
  const exchangedCall = await send('POST', '/call', { authorization: `Bearer ${secrets['exchanged access token (trusted)'] as string}`, 'content-type': 'application/json' }, '{"tool":"chat"}')
  t.equal(exchangedCall.status, 200, '/call with an exchanged token')
  const seen = upstream.seen.slice(before)
  t.equal(seen.length, 3)
  keep('downstream token', String(seen[0]?.headers.authorization).replace(/^Bearer /, ''))
  keep('downstream token (exchanged)', String(seen[2]?.headers.authorization).replace(/^Bearer /, ''))
  t.equal(seen[1]?.headers['x-api-key'], STATIC_TOOL_SECRET, 'the static secret reached the tool')
  secrets['cookie'] = 'cookie-secret-value'
  const refusedCall = await send('POST', '/call', { authorization: `Bearer ${forged}`, 'content-type': 'application/json' }, '{"tool":"chat"}')
  t.equal(refusedCall.status, 401, '/call refused')

  // Revocation of a refresh token and of an access token.
  t.equal((await send('POST', '/revoke', agent, form({ token: secrets['refresh token 2'] as string }))).status, 200, 'revoke a refresh token')
  t.equal((await send('POST', '/revoke', agent, form({ token: secrets['access token 3'] as string, token_type_hint: 'access_token' }))).status, 200, 'revoke an access token')
  t.equal((await send('GET', '/validate', { authorization: `Bearer ${secrets['access token 3'] as string}` })).status, 401, 'the revoked token is refused')

  // Failed logins with wrong secrets: Basic, client_secret_post, and at /validate and /revoke.
  const [w1, w2, w3] = WRONG_SECRETS as [string, string, string]
  t.equal((await send('POST', '/token', { authorization: basic('agent', w1), ...FORM }, form({ grant_type: 'client_credentials' }))).status, 401, 'wrong secret (Basic)')
  t.equal((await send('POST', '/token', { ...FORM }, form({ grant_type: 'client_credentials', client_id: 'exchanger', client_secret: w2 }))).status, 401, 'wrong secret (post)')
  t.equal((await send('POST', '/token', { authorization: basic('nobody', w3), ...FORM }, form({ grant_type: 'client_credentials' }))).status, 401, 'unknown client')
  t.equal((await send('POST', '/validate', { authorization: basic('agent', w3), ...FORM }, form({ token: access }))).status, 401, 'wrong secret at /validate')
  t.equal((await send('POST', '/revoke', { authorization: basic('agent', w3), ...FORM }, form({ token: secrets['refreshed refresh token'] as string }))).status, 401, 'wrong secret at /revoke')
  WRONG_SECRETS.forEach((w, i) => { secrets[`wrong secret ${i + 1}`] = w })
  return secrets
}

/** Adds the gateway's own secrets (client secrets, env secrets, key material) and checks the log. */
function assertClean (t: any, log: string, flowSecrets: Record<string, string>, keyMaterial: Record<string, string>): void {
  const needles: Record<string, string> = {
    ...flowSecrets,
    ...keyMaterial,
    'client secret (hashed client)': CLIENT_SECRET,
    'client secret (from env)': ENV_CLIENT_SECRET,
    'static tool secret': STATIC_TOOL_SECRET,
    TOLLGATE_SECRET: SECRET,
    'Basic credentials (agent)': Buffer.from(`agent:${CLIENT_SECRET}`).toString('base64'),
    'Basic credentials (exchanger)': Buffer.from(`exchanger:${ENV_CLIENT_SECRET}`).toString('base64'),
    'PEM header': '-----BEGIN',
    'PRIVATE KEY': 'PRIVATE KEY'
  }
  for (const [i, w] of WRONG_SECRETS.entries()) needles[`Basic with wrong secret ${i + 1}`] = Buffer.from(`agent:${w}`).toString('base64')
  for (const [name, value] of Object.entries(needles)) {
    t.ok(value.length >= 8, `${name}: a needle worth searching for`)
    const at = log.indexOf(value)
    t.equal(at, -1, `${name} is not in the log${at === -1 ? '' : `: …${log.slice(Math.max(0, at - 200), at + 40)}…`}`)
  }
}

/** The private key material of every key in the store: the encrypted blob, its body, the JWK `d`. */
function keyMaterialOf (rows: Array<{ kid: string, private_enc: string }>): Record<string, string> {
  const out: Record<string, string> = {}
  for (const { kid, private_enc: blob } of rows) {
    out[`encrypted key blob ${kid}`] = blob
    out[`encrypted key body ${kid}`] = blob.split('.')[2] as string
    const key = decryptPrivateKey(blob, kid, deriveKek(SECRET))
    out[`JWK d of ${kid}`] = key.export({ format: 'jwk' }).d as string
    out[`PKCS#8 of ${kid} (base64)`] = (key.export({ format: 'der', type: 'pkcs8' }) as Buffer).toString('base64').slice(-40)
  }
  return out
}

function storedKeys (dataDir: string): Array<{ kid: string, private_enc: string }> {
  const db = new Database(join(dataDir, 'tollgate.db'), { readonly: true, fileMustExist: true })
  try {
    return db.prepare('SELECT kid, private_enc FROM keys').all() as Array<{ kid: string, private_enc: string }>
  } finally {
    db.close()
  }
}

t.test('in process at debug level: a full flow leaves no secret in the log', async t => {
  const { upstream, jwksUri, idpToken } = await dependencies(t)
  const dataDir = tempDir(t)
  const config = loadConfig({ raw: rawConfig(dataDir, upstream, jwksUri), env: ENV })
  const { logger, lines } = captureLog(config)
  const { buildApp } = await import('../src/app.js')
  const app = await buildApp(config, { loggerInstance: logger })
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const send: Send = async (method, url, headers = {}, body) => {
    const res = await app.inject({ method: method as any, url, headers, ...(body !== undefined ? { payload: body } : {}) })
    return { status: res.statusCode, body: res.body, json: () => res.json() }
  }
  const secrets = await flow(t, send, upstream, idpToken)
  const log = lines.join('')
  const parsed = lines.map(l => JSON.parse(l))
  t.equal(app.log.level, 'debug', 'the logger ran at debug level')
  t.ok(parsed.filter(l => l.msg === 'request' && typeof l.status === 'number').length >= 28, 'every request was logged (one access line each)')
  for (const audit of ['token.issued', 'refresh.rotated', 'refresh.reuse_detected', 'oauth.refused', 'call.refused']) {
    t.ok(parsed.some(l => l.audit === audit), `the log has a ${audit} line`)
  }
  assertClean(t, log, secrets, keyMaterialOf(storedKeys(dataDir)))
})

t.test('a real gateway process at TOLLGATE_LOG_LEVEL=debug: stdout and stderr carry no secret', async t => {
  const { upstream, jwksUri, idpToken } = await dependencies(t)
  const dir = tempDir(t)
  const dataDir = join(dir, 'data')
  const raw = rawConfig(dataDir, upstream, jwksUri)
  delete raw.logLevel // from the environment, as an operator would set it
  const file = join(dir, 'tollgate.yaml')
  writeFileSync(file, stringify(raw))
  const gw = await startGateway(t, { cwd: dir, env: { ...ENV, TOLLGATE_LOG_LEVEL: 'debug' }, args: ['--config', file] })
  const send: Send = async (method, url, headers = {}, body) => {
    const res = await fetch(`${gw.url}${url}`, { method, headers, ...(body !== undefined ? { body } : {}) })
    const text = await res.text()
    return { status: res.status, body: text, json: () => JSON.parse(text) }
  }
  const secrets = await flow(t, send, upstream, idpToken)
  // Stop it the way an operator would, so shutdown lines are captured too.
  const exited = new Promise(resolve => gw.child.once('exit', resolve))
  gw.child.kill('SIGTERM')
  await exited
  const output = gw.output()
  t.ok((output.match(/"msg":"request"/g) ?? []).length >= 28, 'every request was logged (one access line each), flushed before exit')
  t.match(output, /"audit":"refresh.reuse_detected"/)
  assertClean(t, output, secrets, keyMaterialOf(storedKeys(dataDir)))
})
