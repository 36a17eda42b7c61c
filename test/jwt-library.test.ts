// The token stack on @fastify/jwt (fast-jwt underneath): what the pre-check adds (the low-S rule),
// and that every error the library can throw becomes a 401 invalid_token (or, for a subject token,
// a 400 invalid_request), never a 500. Tokens are issued by the real app (real SQLite file, real
// keys) or crafted with its real signing key, so the only thing wrong with each is the case under test.
import { createHash, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto'
import { createSigner, createVerifier, TOKEN_ERROR_CODES, TokenError } from 'fast-jwt'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { refusal, verifyWith } from '../src/tokens/jwt.js'
import { P256_HALF_ORDER, TokenRefused } from '../src/tokens/precheck.js'
import { FORM, basic, build, client, form, issue, testConfig, type TestContext } from './helper.js'
import { highS, lowS } from './support/sign.js'
import { startIdp } from './support/idp.js'

const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')

async function getValidate (app: FastifyInstance, token: string): Promise<{ statusCode: number, headers: Record<string, unknown> }> {
  return await app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${token}` } })
}

/** GET /validate answers 401 invalid_token with this description, and POST /validate says inactive. */
async function refused (t: any, app: FastifyInstance, token: string, description: RegExp, name: string): Promise<void> {
  const res = await getValidate(app, token)
  t.equal(res.statusCode, 401, `${name}: 401, not 500`)
  t.match(res.headers['www-authenticate'], /^Bearer realm="tollgate", error="invalid_token"/, `${name}: invalid_token`)
  t.match(res.headers['www-authenticate'], description, `${name}: says which rule refused it`)
  const post = await app.inject({ method: 'POST', url: '/validate', headers: { authorization: basic('agent'), ...FORM }, payload: form({ token }) })
  t.same(post.json(), { active: false }, `${name}: POST /validate → inactive`)
}

function craft (app: FastifyInstance, header: Record<string, unknown>, claims: Record<string, unknown>): string {
  const { kid, privateKey } = app.keys.signingKey()
  const input = `${b64({ alg: 'ES256', kid, typ: 'at+jwt', ...header })}.${b64(claims)}`
  return `${input}.${lowS(sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' })).toString('base64url')}`
}

function claims (extra: Record<string, unknown> = {}): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000)
  return { iss: 'https://tollgate.test', sub: 'agent', aud: ['tool:chat'], exp: now + 300, iat: now, nbf: now, jti: `j-${Math.random()}`, client_id: 'agent', scope: 'tools:call', ...extra }
}

t.test('a high-S twin of a valid ES256 signature is refused: one token, one spelling', async t => {
  const app = await build(t)
  const { access_token: token } = await issue(app)
  const dot = token.lastIndexOf('.')
  const signature = Buffer.from(token.slice(dot + 1), 'base64url')
  t.ok(Buffer.compare(signature.subarray(32), P256_HALF_ORDER) <= 0, 'Tollgate writes the low-S form')
  const twin = highS(signature)
  t.not(twin.toString('hex'), signature.toString('hex'), 'the twin is another byte string')
  // The twin is a genuine signature over the same input: only the low-S rule can refuse it.
  const publicKey = app.keys.verificationKey(app.keys.signingKey().kid)?.publicKey as KeyObject
  t.ok(verify('sha256', Buffer.from(token.slice(0, dot)), { key: publicKey, dsaEncoding: 'ieee-p1363' }, twin), 'the twin verifies with the key')
  const twinToken = `${token.slice(0, dot + 1)}${twin.toString('base64url')}`
  await refused(t, app, twinToken, /error_description="ES256 signature is not in low-S form"/, 'high-S twin')
  t.equal((await getValidate(app, token)).statusCode, 200, 'the low-S original passes')
  // And after the original is cached, the twin is still verified on its own, and still refused.
  await refused(t, app, twinToken, /low-S/, 'high-S twin after the original is cached')
})

t.test('every token Tollgate signs is low-S (access and downstream tokens share the signer)', async t => {
  const app = await build(t)
  let highSeen = 0
  for (let i = 0; i < 40; i++) {
    const { token } = app.tokens.issue({ sub: `s${i}`, clientId: 'agent', scopes: ['tools:call'], audiences: ['tool:chat'], ttl: 60 })
    const signature = Buffer.from(token.slice(token.lastIndexOf('.') + 1), 'base64url')
    t.equal(signature.length, 64)
    if (Buffer.compare(signature.subarray(32), P256_HALF_ORDER) > 0) highSeen++
    t.equal(app.tokens.verify(token).sub, `s${i}`)
  }
  t.equal(highSeen, 0, 'none of 40 signatures is high-S (OpenSSL alone would write about half)')
})

t.test('library errors through the app: 401 invalid_token with the rule, never 500', async t => {
  const app = await build(t)
  // FAST_JWT_INVALID_ALGORITHM: ES384 named in the header of a token signed by the ES256 key.
  await refused(t, app, craft(app, { alg: 'ES384' }, claims()), /algorithm not allowed for this key/, 'invalid algorithm')
  // FAST_JWT_INVALID_CLAIM_TYPE: iss is a number (fast-jwt's allowedIss check reads its type).
  await refused(t, app, craft(app, {}, claims({ iss: 1234 })), /claim rejected: The iss claim must be a string/, 'claim type')
  // FAST_JWT_INVALID_CLAIM_VALUE and FAST_JWT_MISSING_REQUIRED_CLAIM.
  await refused(t, app, craft(app, {}, claims({ iss: 'https://other.test' })), /claim rejected: The iss claim value is not allowed/, 'claim value')
  const noJti = claims()
  delete noJti.jti
  await refused(t, app, craft(app, {}, noJti), /claim rejected: The jti claim is required/, 'missing claim')
  // FAST_JWT_INVALID_TYPE and FAST_JWT_INVALID_SIGNATURE.
  await refused(t, app, craft(app, { typ: 'JWT' }, claims()), /token type not accepted/, 'typ')
  const good = craft(app, {}, claims())
  await refused(t, app, good.replace(/\.[^.]+\./, `.${b64(claims({ sub: 'admin' }))}.`), /invalid signature/, 'signature')
  // Inactive (nbf) is the claims validator's, against Tollgate's clock: also 401.
  await refused(t, app, craft(app, {}, claims({ nbf: Math.floor(Date.now() / 1000) + 3600 })), /token not yet valid/, 'nbf in the future')
})

t.test('each kind of fast-jwt error, thrown by the library itself, becomes a TokenRefused', async t => {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const pem = publicKey.export({ format: 'pem', type: 'spki' }) as string
  const signer = createSigner({ key: privateKey.export({ format: 'pem', type: 'pkcs8' }) as string, algorithm: 'ES256', kid: 'k' })
  const now = Math.floor(Date.now() / 1000)
  const thrown = async (run: () => unknown): Promise<unknown> => {
    try {
      await run()
    } catch (err) {
      return err
    }
    return undefined
  }

  // FAST_JWT_INACTIVE (nbf): a verifier with fast-jwt's own nbf rule on.
  const inactive = await thrown(() => createVerifier({ key: pem, algorithms: ['ES256'] })(signer({ sub: 'x', nbf: now + 3600 })))
  t.equal((inactive as TokenError).code, 'FAST_JWT_INACTIVE', 'the library threw FAST_JWT_INACTIVE')
  t.match(refusal(inactive), { message: 'token not yet valid', expired: false })

  // FAST_JWT_INVALID_ALGORITHM: an ES256 verifier given a token whose header says HS256.
  const hs256 = signer({ sub: 'x' }).replace(/^[^.]+/, b64({ alg: 'HS256', typ: 'JWT', kid: 'k' }))
  const algorithm = await thrown(() => createVerifier({ key: pem, algorithms: ['ES256'] })(hs256))
  t.equal((algorithm as TokenError).code, 'FAST_JWT_INVALID_ALGORITHM')
  t.match(refusal(algorithm), { message: 'algorithm not allowed for this key' })

  // FAST_JWT_INVALID_CLAIM_TYPE
  const claimType = await thrown(() => createVerifier({ key: pem, algorithms: ['ES256'], allowedSub: 'x' })(signer({ sub: 42 })))
  t.equal((claimType as TokenError).code, 'FAST_JWT_INVALID_CLAIM_TYPE')
  t.match(refusal(claimType), { message: /^claim rejected: The sub claim must be a string/ })

  // FAST_JWT_KEY_FETCHING_ERROR: the key function fails.
  const keyFailure = await thrown(async () => await createVerifier({ key: async () => { throw new Error('key store down') }, algorithms: ['ES256'] })(signer({ sub: 'x' })))
  t.equal((keyFailure as TokenError).code, 'FAST_JWT_KEY_FETCHING_ERROR')
  t.match(refusal(keyFailure), { message: 'unknown key' })

  // FAST_JWT_EXPIRED keeps the expired mark (token_expired on the wire).
  const expired = await thrown(() => createVerifier({ key: pem, algorithms: ['ES256'] })(signer({ sub: 'x', exp: now - 3600 })))
  t.equal((expired as TokenError).code, 'FAST_JWT_EXPIRED')
  t.match(refusal(expired), { message: 'token expired', expired: true })

  // verifyWith translates whatever the verifier throws; nothing from the library escapes.
  t.throws(() => verifyWith(createVerifier({ key: pem, algorithms: ['ES256'] }) as any, 'not.a.token'), TokenRefused)

  // Every code the library defines has a description (none falls through to a bare code).
  for (const code of Object.values(TOKEN_ERROR_CODES)) {
    const mapped = refusal(new TokenError(code, 'x'))
    t.type(mapped, TokenRefused, `${code} → TokenRefused`)
    t.notMatch(mapped.message, /^token refused \(/, `${code} has a description`)
  }
  t.match(refusal(new Error('not the library')), { message: 'token could not be verified' })
})

/** A trusted identity provider on a real port, serving one ES256 key. */
async function idp (t: TestContext): Promise<{ jwksUri: string, token: (claims: Record<string, unknown>, header?: Record<string, unknown>) => string }> {
  const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const kid = createHash('sha256').update('idp').digest('base64url').slice(0, 16)
  const { jwksUri } = await startIdp(t, { keys: [{ ...pair.publicKey.export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig' }] })
  const token = (claims: Record<string, unknown>, header: Record<string, unknown> = {}): string => {
    const input = `${b64({ alg: 'ES256', kid, typ: 'JWT', ...header })}.${b64(claims)}`
    // Not normalised: identity providers write either half of s, and both are accepted from them.
    return `${input}.${sign('sha256', Buffer.from(input), { key: pair.privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`
  }
  return { jwksUri, token }
}

t.test('library errors on a subject token: 400 invalid_request, never 500', async t => {
  const IDP = 'https://idp.example'
  const { jwksUri, token } = await idp(t)
  const app = await build(t, testConfig(t, {
    clients: [client('exchanger', { exchange: true, audiences: ['tool:chat'] })],
    trustedIssuers: [{ issuer: IDP, jwksUri, audiences: ['tollgate'] }]
  }))
  const now = Math.floor(Date.now() / 1000)
  const idpClaims = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({ iss: IDP, sub: 'user-1', aud: 'tollgate', iat: now, exp: now + 300, scope: 'tools:call', ...extra })
  const exchange = async (subject: string): Promise<{ statusCode: number, json: () => any }> => await app.inject({
    method: 'POST',
    url: '/token',
    headers: { authorization: basic('exchanger'), ...FORM },
    payload: form({ grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange', subject_token: subject, subject_token_type: 'urn:ietf:params:oauth:token-type:jwt' })
  })
  const ok = await exchange(token(idpClaims()))
  t.equal(ok.statusCode, 200, 'control: the IdP token is exchanged')
  const cases: Array<[string, string, RegExp]> = [
    ['aud not among the entry\'s audiences (FAST_JWT_INVALID_CLAIM_VALUE)', token(idpClaims({ aud: 'someone-else' })), /claim rejected: None of aud claim values are allowed|claim rejected: The aud claim value is not allowed/],
    ['aud of the wrong type (FAST_JWT_INVALID_CLAIM_TYPE)', token(idpClaims({ aud: 7 })), /claim rejected: The aud claim must be a string/],
    ['sub missing (FAST_JWT_MISSING_REQUIRED_CLAIM)', token(idpClaims({ sub: undefined })), /claim rejected: The sub claim is required/],
    ['signature of another payload (FAST_JWT_INVALID_SIGNATURE)', token(idpClaims()).replace(/\.[^.]+\./, `.${b64(idpClaims({ sub: 'admin' }))}.`), /invalid signature/],
    ['nbf in the future', token(idpClaims({ nbf: now + 3600 })), /token not yet valid/]
  ]
  for (const [name, subject, description] of cases) {
    const res = await exchange(subject)
    t.equal(res.statusCode, 400, `${name}: 400`)
    t.equal(res.json().error, 'invalid_request', `${name}: invalid_request`)
    t.match(res.json().error_description, description, `${name}: says why`)
  }
})

t.test('the signer\'s low-S rewrite is n − s, checked against BigInt arithmetic', async t => {
  const { lowS: rewrite } = await import('../src/tokens/precheck.js')
  const n = BigInt('0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551')
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  let rewritten = 0
  for (let i = 0; i < 64; i++) {
    const data = Buffer.from(`message ${i}`)
    const signature = sign('sha256', data, { key: privateKey, dsaEncoding: 'ieee-p1363' })
    const out = Buffer.from(rewrite(signature.toString('base64url')), 'base64url')
    const s = BigInt('0x' + signature.subarray(32).toString('hex'))
    const expected = s > n / 2n ? n - s : s
    if (expected !== s) rewritten++
    t.equal(out.subarray(32).toString('hex'), expected.toString(16).padStart(64, '0'), `signature ${i}: s' = ${expected === s ? 's' : 'n − s'}`)
    t.ok(verify('sha256', data, { key: publicKey, dsaEncoding: 'ieee-p1363' }, out), `signature ${i}: still verifies`)
  }
  t.ok(rewritten > 0, 'some signatures were high-S and rewritten')
})

t.test('each kind of error @fastify/jwt throws (inactive, invalid algorithm, claim type, key-function failure) is a 401 invalid_token, never a 500', async t => {
  const { pluginFor } = await import('../src/tokens/jwt.js')
  const { invalidToken } = await import('../src/tokens/index.js')
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const pem = publicKey.export({ format: 'pem', type: 'spki' }) as string
  const signing = pluginFor({
    secret: { private: privateKey.export({ format: 'pem', type: 'pkcs8' }) as string, public: pem },
    sign: { algorithm: 'ES256', kid: 'k' }
  })
  const now = Math.floor(Date.now() / 1000)
  // The plugin's verify, with the options that make it throw each kind (Tollgate's own leave time to
  // the claims validator and hold static keys, so these are what the mapping must still cover).
  const strict = pluginFor({ secret: { public: pem }, verify: { algorithms: ['ES256'], allowedSub: 'x', cache: false } })
  const keyFunction = pluginFor({ secret: { public: async () => { throw new Error('key store down') } }, verify: { algorithms: ['ES256'] } })
  const cases: Array<[string, string, () => unknown, RegExp]> = [
    ['FAST_JWT_INACTIVE', 'inactive (nbf)', () => strict.verify(signing.sign({ sub: 'x', nbf: now + 3600 })), /^token not yet valid$/],
    ['FAST_JWT_INVALID_ALGORITHM', 'invalid algorithm', () => strict.verify(signing.sign({ sub: 'x' }).replace(/^[^.]+/, b64({ alg: 'HS256', typ: 'JWT', kid: 'k' }))), /^algorithm not allowed for this key$/],
    ['FAST_JWT_INVALID_CLAIM_TYPE', 'claim type', () => strict.verify(signing.sign({ sub: 42 })), /^claim rejected: The sub claim must be a string/],
    ['FAST_JWT_KEY_FETCHING_ERROR', 'key-function failure', () => keyFunction.verify(signing.sign({ sub: 'x' })), /^unknown key$/]
  ]
  for (const [code, name, run, description] of cases) {
    let thrown: unknown
    try {
      await run()
    } catch (err) {
      thrown = err
    }
    t.equal((thrown as { code?: string }).code, code, `${name}: the plugin threw ${code}`)
    const refused = refusal(thrown)
    t.type(refused, TokenRefused, `${name}: a TokenRefused`)
    t.match(refused.message, description, `${name}: says which rule`)
    const answer = invalidToken(refused)
    t.equal(answer.statusCode, 401, `${name}: 401, not 500`)
    t.equal(answer.code, 'invalid_token', `${name}: invalid_token`)
  }
  // The plugin's own codes (its decode wraps malformed tokens) are mapped too.
  let decodeError: unknown
  try {
    signing.decode('not a token')
  } catch (err) {
    decodeError = err
  }
  t.match(decodeError, { code: 'FST_JWT_AUTHORIZATION_TOKEN_INVALID' })
  t.match(refusal(decodeError), { message: 'malformed token' })
})

t.test('a key the library refuses for its algorithm refuses the token: 401, never 500', async t => {
  const app = await build(t)
  const { access_token: token } = await issue(app)
  const real = app.keys.verificationKey.bind(app.keys)
  const x25519 = generateKeyPairSync('x25519').publicKey
  const swaps: Array<[string, (kid: string) => ReturnType<typeof real>]> = [
    // The ES256 key published as RS256: the plugin refuses to build an RS256 verifier from an EC key.
    ['EC key named RS256', kid => { const key = real(kid); return key === undefined ? undefined : { ...key, alg: 'RS256' as any } }],
    // A key type no JWS algorithm uses.
    ['X25519 key', kid => { const key = real(kid); return key === undefined ? undefined : { ...key, publicKey: x25519 } }]
  ]
  for (const [name, swap] of swaps) {
    app.keys.verificationKey = swap
    t.teardown(() => { app.keys.verificationKey = real })
    await refused(t, app, token, /error_description="unknown key"/, name)
  }
  app.keys.verificationKey = real
  t.equal((await getValidate(app, token)).statusCode, 200, 'control: with the real key the token passes')
})

t.test('interoperability: a Tollgate token passes @fastify/jwt registered in a plain Fastify app with the published key', async t => {
  const Fastify = (await import('fastify')).default
  const fastifyJwt = (await import('@fastify/jwt')).default
  const app = await build(t)
  const { access_token: token } = await issue(app)
  const key = app.keys.verificationKey(app.keys.signingKey().kid) as { publicKey: KeyObject }
  const other = Fastify()
  t.teardown(() => other.close())
  await other.register(fastifyJwt, {
    secret: { public: key.publicKey.export({ format: 'pem', type: 'spki' }) as string },
    verify: { algorithms: ['ES256'], allowedIss: 'https://tollgate.test', checkTyp: 'at+jwt' }
  })
  other.get('/me', async request => await request.jwtVerify())
  const res = await other.inject({ method: 'GET', url: '/me', headers: { authorization: `Bearer ${token}` } })
  t.equal(res.statusCode, 200)
  t.match(res.json(), { iss: 'https://tollgate.test', sub: 'agent', client_id: 'agent' })
})
