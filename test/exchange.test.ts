import { SignJWT, exportJWK, generateKeyPair, type CryptoKey, type JWK } from 'jose'
import t from 'tap'
import { FORM, ManualClock, basic, build, client, form, issue } from './helper.js'
import { advance, claimsOf, forwardAuth, lifecycleConfig, revoke } from './lifecycle-helper.js'
import { startIdp, type Idp } from './support/idp.js'

const IDP = 'https://idp.test'
const ACCESS = 'urn:ietf:params:oauth:token-type:access_token'
const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'

interface SigningKey { kid: string, alg: string, privateKey: CryptoKey, jwk: JWK }

async function signingKey (kid: string, alg: 'ES256' | 'RS256' | 'ES384' = 'ES256'): Promise<SigningKey> {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true })
  return { kid, alg, privateKey, jwk: { ...await exportJWK(publicKey), kid, use: 'sig' } }
}

/** A "real IdP" style token: typ JWT, no client_id, no jti. */
async function idpToken (key: SigningKey, clock: ManualClock, claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}): Promise<string> {
  const now = Math.floor(clock.now / 1000)
  return await new SignJWT({ iss: IDP, sub: 'user-42', aud: 'tollgate', iat: now, exp: now + 600, scope: 'openid tools:call', ...claims })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT', ...header })
    .sign(key.privateKey)
}

/** Signed without jose's own header checks, to build what jose refuses to produce (e.g. crit). */
async function rawToken (key: SigningKey, clock: ManualClock, header: Record<string, unknown>): Promise<string> {
  const now = Math.floor(clock.now / 1000)
  const enc = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url')
  const input = `${enc({ alg: 'ES256', kid: key.kid, typ: 'JWT', ...header })}.${enc({ iss: IDP, sub: 'user-42', aud: 'tollgate', iat: now, exp: now + 600 })}`
  const sig = await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, key.privateKey, Buffer.from(input))
  return `${input}.${Buffer.from(sig).toString('base64url')}`
}

async function setup (t: any, options: { issuers?: Array<Record<string, unknown>>, idp?: Idp } = {}): Promise<{ app: any, clock: ManualClock, idp: Idp, key: SigningKey }> {
  const clock = new ManualClock()
  const idp = options.idp ?? await startIdp(t, { cacheControl: 'public, max-age=300' })
  const key = await signingKey('idp-key-1')
  idp.keys = [key.jwk]
  const config = lifecycleConfig(t, {
    clients: [
      client('agent', { refresh: true, quota: { limit: 100, window: '1d' } }),
      client('exchanger', { exchange: true, scopes: ['tools:call', 'tools:read'], audiences: ['tool:chat', 'tool:search'] }),
      client('other')
    ],
    trustedIssuers: options.issuers ?? [{ issuer: IDP, jwksUri: idp.jwksUri, audiences: ['tollgate', 'api'] }]
  })
  const app = await build(t, config, { clock: clock.fn })
  return { app, clock, idp, key }
}

async function exchange (app: any, fields: Record<string, string>, id = 'exchanger'): Promise<{ statusCode: number, body: any }> {
  const res = await app.inject({
    method: 'POST',
    url: '/token',
    headers: { authorization: basic(id), ...FORM },
    payload: form({ grant_type: EXCHANGE, subject_token_type: ACCESS, ...fields })
  })
  return { statusCode: res.statusCode, body: res.json() }
}

t.test('a Tollgate token is exchanged for one acted on by the client', async t => {
  const { app } = await setup(t)
  const subject = await issue(app, { scope: 'tools:call tools:read' })
  const res = await exchange(app, { subject_token: subject.access_token, scope: 'tools:call', audience: 'tool:chat' })
  t.equal(res.statusCode, 200)
  t.match(res.body, { token_type: 'Bearer', scope: 'tools:call', issued_token_type: ACCESS })
  t.equal(res.body.refresh_token, undefined, 'no refresh token: the exchanged authority never outlives the subject token')
  const claims = claimsOf(res.body.access_token)
  t.match(claims, { sub: 'agent', client_id: 'exchanger', act: { sub: 'exchanger' }, aud: 'tool:chat', scope: 'tools:call', quota: { limit: 100 } })
  t.equal(claims.act.act, undefined)
  t.equal(await forwardAuth(app, res.body.access_token), 200)

  // RFC 8693 §4.1: exchanging an exchanged token nests the earlier actor.
  const again = await exchange(app, { subject_token: res.body.access_token })
  t.equal(again.statusCode, 200)
  t.same(claimsOf(again.body.access_token).act, { sub: 'exchanger', act: { sub: 'exchanger' } })
  t.same(claimsOf(again.body.access_token).aud, ['tool:chat', 'tool:search'], 'default audience: all the client\'s')

  // Derived from the subject's refresh family: revoking the family denies the exchanged token too.
  t.equal((await revoke(app, subject.refresh_token)).statusCode, 200)
  t.equal(await forwardAuth(app, res.body.access_token), 401)
  const revoked = await exchange(app, { subject_token: subject.access_token })
  t.equal(revoked.statusCode, 400)
  t.equal(revoked.body.error, 'invalid_request', 'a revoked subject token is not acceptable')
  const metrics = await app.inject({ method: 'GET', url: '/metrics' })
  t.match(metrics.body, /tollgate_token_exchanges_total\{issuer="tollgate",result="issued"\} 2/)
})

t.test('a trusted issuer\'s token (typ JWT, no client_id, no jti) is exchanged; its keys are fetched once', async t => {
  const { app, clock, idp, key } = await setup(t)
  const subject = await idpToken(key, clock)
  t.equal(await forwardAuth(app, subject), 401, 'never accepted directly at /validate')

  const res = await exchange(app, { subject_token: subject, subject_token_type: 'urn:ietf:params:oauth:token-type:jwt' })
  t.equal(res.statusCode, 200, res.body.error_description ?? 'exchanged')
  t.equal(res.body.issued_token_type, ACCESS)
  const claims = claimsOf(res.body.access_token)
  t.match(claims, { iss: 'https://tollgate.test', sub: 'https://idp.test#user-42', client_id: 'exchanger', act: { sub: 'exchanger' }, scope: 'tools:call' },
    'scope: what both the subject token (openid tools:call) and the client (tools:call tools:read) have')
  t.ok(claims.exp - claims.iat <= 300)
  t.equal(await forwardAuth(app, res.body.access_token), 200)

  // RS256, no typ at all, `scp` as an array (as several IdPs send it), an earlier actor, and x5t beside kid.
  const rsa = await signingKey('idp-rsa', 'RS256')
  idp.keys = [key.jwk, rsa.jwk]
  await advance(app, clock, 301_000) // past the max-age: the set is refetched
  const now = Math.floor(clock.now / 1000)
  const rsaToken = await new SignJWT({ iss: IDP, sub: 'user-7', aud: ['other-api', 'api'], iat: now, exp: now + 60, scp: ['tools:read', 'tools:call'], act: { sub: 'gateway' } })
    .setProtectedHeader({ alg: 'RS256', kid: 'idp-rsa', x5t: 'aGVsbG8' }).sign(rsa.privateKey)
  const res2 = await exchange(app, { subject_token: rsaToken, scope: 'tools:read', audience: 'tool:search' })
  t.equal(res2.statusCode, 200, res2.body.error_description ?? 'exchanged')
  const c2 = claimsOf(res2.body.access_token)
  t.match(c2, { sub: 'https://idp.test#user-7', scope: 'tools:read', aud: 'tool:search', act: { sub: 'exchanger', act: { sub: 'gateway' } } })
  t.ok(c2.exp <= now + 60, 'never outlives the subject token')
  t.equal(idp.hits, 2, 'one fetch per max-age, not one per exchange')
})

t.test('exchange errors', async t => {
  const { app, clock, key } = await setup(t)
  const good = await idpToken(key, clock)
  const now = Math.floor(clock.now / 1000)
  const stranger = await signingKey('idp-key-1') // same kid, other key: a forged signature
  const cases: Array<[string, Record<string, string>, string, string?, RegExp?]> = [
    ['client without exchange: true', { subject_token: good }, 'unauthorized_client', 'other'],
    ['missing subject_token', {}, 'invalid_request'],
    ['unsupported subject_token_type', { subject_token: good, subject_token_type: 'urn:ietf:params:oauth:token-type:id_token' }, 'invalid_request'],
    ['unsupported requested_token_type', { subject_token: good, requested_token_type: 'urn:ietf:params:oauth:token-type:refresh_token' }, 'invalid_request'],
    ['garbage subject token', { subject_token: 'not.a.jwt' }, 'invalid_request'],
    ['forged signature', { subject_token: await idpToken(stranger, clock) }, 'invalid_request'],
    ['untrusted issuer', { subject_token: await idpToken(key, clock, { iss: 'https://evil.test' }) }, 'invalid_request'],
    ['audience not among the entry\'s', { subject_token: await idpToken(key, clock, { aud: 'someone-else' }) }, 'invalid_request'],
    ['expired', { subject_token: await idpToken(key, clock, { iat: now - 700, exp: now - 60 }) }, 'invalid_request'],
    ['issued in the future', { subject_token: await idpToken(key, clock, { iat: now + 600, exp: now + 900 }) }, 'invalid_request'],
    ['lifetime above the maximum', { subject_token: await idpToken(key, clock, { exp: now + 2 * 86400 }) }, 'invalid_request'],
    ['no sub', { subject_token: await idpToken(key, clock, { sub: undefined }) }, 'invalid_request'],
    ['no iat', { subject_token: await idpToken(key, clock, { iat: undefined }) }, 'invalid_request'],
    ['typ of an ID token or other JWT', { subject_token: await idpToken(key, clock, {}, { typ: 'id+jwt' }) }, 'invalid_request'],
    ['jku header', { subject_token: await idpToken(key, clock, {}, { jku: 'https://evil.test/jwks' }) }, 'invalid_request', undefined, /header jku is not accepted/],
    ['crit header', { subject_token: await rawToken(key, clock, { crit: ['exp'], exp: 1 }) }, 'invalid_request', undefined, /critical header/],
    ['unknown kid', { subject_token: await idpToken(key, clock, {}, { kid: 'nope' }) }, 'invalid_request'],
    ['scope the subject does not have', { subject_token: good, scope: 'tools:read' }, 'invalid_scope'],
    ['scope the client does not have', { subject_token: good, scope: 'openid' }, 'invalid_scope'],
    ['audience the client may not use', { subject_token: good, audience: 'tool:other' }, 'invalid_target']
  ]
  for (const [name, fields, error, id, reason] of cases) {
    const res = await exchange(app, fields, id)
    t.equal(res.statusCode, 400, `${name}: 400`)
    t.equal(res.body.error, error, `${name}: ${error}`)
    if (reason !== undefined) t.match(res.body.error_description, reason, `${name}: for that reason`)
  }
  const control = await exchange(app, { subject_token: await rawToken(key, clock, {}) })
  t.equal(control.statusCode, 200, 'the hand-signed control token without crit is accepted')
  const ok = await exchange(app, { subject_token: good })
  t.equal(ok.statusCode, 200, 'the good token still works after all that')
})

t.test('the issuer\'s algorithm allowlist is enforced', async t => {
  const idp = await startIdp(t, { cacheControl: 'public, max-age=300' })
  const { app, clock, key } = await setup(t, { idp, issuers: [{ issuer: IDP, jwksUri: idp.jwksUri, audiences: ['tollgate'], algorithms: ['RS256'] }] })
  const res = await exchange(app, { subject_token: await idpToken(key, clock) })
  t.equal(res.statusCode, 400)
  t.match(res.body.error_description, /algorithm ES256 not allowed/)
})

t.test('JWKS outage with nothing cached: 503 temporarily_unavailable, then recovery', async t => {
  const idp = await startIdp(t, { cacheControl: 'public, max-age=300' })
  idp.status = 500
  const { app, clock, key } = await setup(t, { idp })
  const subject = await idpToken(key, clock)
  const res = await exchange(app, { subject_token: subject })
  t.equal(res.statusCode, 503)
  t.same(res.body, { error: 'temporarily_unavailable', error_description: `the keys of trusted issuer ${IDP} cannot be fetched` })

  idp.status = 200
  t.equal((await exchange(app, { subject_token: subject })).statusCode, 200, 'works as soon as the issuer answers again')
})

t.test('JWKS outage with keys cached: the last good keys keep working', async t => {
  const { app, clock, idp, key } = await setup(t)
  idp.cacheControl = 'max-age=60'
  t.equal((await exchange(app, { subject_token: await idpToken(key, clock) })).statusCode, 200)
  t.equal(idp.hits, 1)

  idp.status = 500
  await advance(app, clock, 61_000) // past the cache lifetime: a refetch is due and fails
  t.equal((await exchange(app, { subject_token: await idpToken(key, clock) })).statusCode, 200, 'served with the last good keys')
  t.equal(idp.hits, 2, 'a refetch was attempted')
  t.equal((await exchange(app, { subject_token: await idpToken(key, clock) })).statusCode, 200)
  t.equal(idp.hits, 2, 'failed refetches are paced, not repeated on every request')

  await idp.stop() // connection refused from now on
  await advance(app, clock, 120_000)
  t.equal((await exchange(app, { subject_token: await idpToken(key, clock) })).statusCode, 200, 'still the last good keys')
})

t.test('an unknown kid refetches the set at most once per interval; Cache-Control max-age is bounded', async t => {
  const { app, clock, idp, key } = await setup(t)
  idp.cacheControl = 'max-age=5' // below the 60 s floor
  t.equal((await exchange(app, { subject_token: await idpToken(key, clock) })).statusCode, 200)
  await advance(app, clock, 30_000)
  t.equal((await exchange(app, { subject_token: await idpToken(key, clock) })).statusCode, 200)
  t.equal(idp.hits, 1, 'max-age=5 was raised to the 60 s floor')

  const rotated = await signingKey('idp-key-2')
  const early = await exchange(app, { subject_token: await idpToken(rotated, clock) })
  t.equal(early.statusCode, 400, 'unknown kid, not yet published')
  t.equal(idp.hits, 2, 'one refetch for the unknown kid')

  idp.keys = [key.jwk, rotated.jwk]
  t.equal((await exchange(app, { subject_token: await idpToken(rotated, clock) })).statusCode, 400, 'within the interval: no refetch')
  t.equal(idp.hits, 2)
  await advance(app, clock, 30_000) // the set is still fresh (refetched 30 s ago, max-age 60 s), but the kid interval has passed
  t.equal((await exchange(app, { subject_token: await idpToken(rotated, clock) })).statusCode, 200, 'the new key is picked up')
  t.equal(idp.hits, 3)
})
