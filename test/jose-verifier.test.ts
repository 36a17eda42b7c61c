// An independent verifier in Node: jose's createRemoteJWKSet + jwtVerify against the running
// server's /jwks over real HTTP, with the algorithm pinned and issuer, audience and typ checked,
// as a service behind Tollgate would do it (docs/integrations.md shows the same code).
import { createRemoteJWKSet, errors, jwtVerify, type JWTVerifyOptions } from 'jose'
import t from 'tap'
import { signCompact } from './support/sign.js'
import { basic, testConfig } from './helper.js'
import { listenApp } from './system.js'

const { app, url } = await listenApp(t, testConfig(t))
const JWKS = createRemoteJWKSet(new URL(`${url}/jwks`), { timeoutDuration: 2000 })
const options: JWTVerifyOptions = {
  algorithms: ['ES256'],
  issuer: app.config.issuer,
  audience: 'tool:chat',
  typ: 'at+jwt',
  requiredClaims: ['sub', 'jti', 'client_id', 'iat', 'exp'],
  clockTolerance: 30
}

async function tokenFromServer (): Promise<string> {
  const res = await fetch(`${url}/token`, {
    method: 'POST',
    headers: { authorization: basic('agent'), 'content-type': 'application/x-www-form-urlencoded' },
    body: 'grant_type=client_credentials&audience=tool%3Achat%20tool%3Asearch'
  })
  if (res.status !== 200) throw new Error(`token request failed: ${res.status}`)
  return ((await res.json()) as { access_token: string }).access_token
}

const token = await tokenFromServer()

t.test('jose verifies a token from /token with the keys from /jwks', async t => {
  const { payload, protectedHeader } = await jwtVerify(token, JWKS, options)
  t.same(protectedHeader, { alg: 'ES256', typ: 'at+jwt', kid: app.keys.signingKey().kid })
  t.match(payload, { iss: app.config.issuer, sub: 'agent', client_id: 'agent', scope: 'tools:call tools:read' })
  t.same(payload.aud, ['tool:chat', 'tool:search'], 'exactly the requested audiences') // t.match would pass a longer list
})

t.test('a tampered payload fails the signature check', async t => {
  const [h, p, s] = token.split('.') as [string, string, string]
  const payload = JSON.parse(Buffer.from(p, 'base64url').toString())
  payload.sub = 'admin'
  await t.rejects(jwtVerify(`${h}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${s}`, JWKS, options), errors.JWSSignatureVerificationFailed)
})

t.test('issuer, audience and typ are each enforced', async t => {
  await t.rejects(jwtVerify(token, JWKS, { ...options, issuer: 'https://elsewhere.test' }), { code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim: 'iss' })
  await t.rejects(jwtVerify(token, JWKS, { ...options, audience: 'tool:other' }), { code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim: 'aud' })
  const key = app.keys.signingKey()
  const claims = JSON.parse(Buffer.from(token.split('.')[1] as string, 'base64url').toString())
  const plainJwt = signCompact({ alg: key.alg, kid: key.kid, typ: 'JWT' }, claims, key.alg, key.privateKey)
  await t.rejects(jwtVerify(plainJwt, JWKS, options), { code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim: 'typ' })
  // The same token passes without the typ check: the rejection above is the typ rule's doing.
  await t.resolves(jwtVerify(plainJwt, JWKS, { ...options, typ: undefined }))
})

t.test('an unknown kid is refused after one refetch of /jwks', async t => {
  const key = app.keys.signingKey()
  const claims = JSON.parse(Buffer.from(token.split('.')[1] as string, 'base64url').toString())
  const stranger = signCompact({ alg: key.alg, kid: 'not-a-tollgate-kid', typ: 'at+jwt' }, claims, key.alg, key.privateKey)
  await t.rejects(jwtVerify(stranger, JWKS, options), errors.JWKSNoMatchingKey)
})
