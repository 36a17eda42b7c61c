// SECURITY.md "Tokens presented to Tollgate", line by line. Every attack token is crafted here with
// node:crypto and, unless the attack is about the signature itself, signed with Tollgate's REAL
// signing key, so the only thing wrong with it is the attack: remove the defence and the test fails.
// A control token crafted the same way must pass, which proves the crafting is right.
import { createHmac, generateKeyPairSync, sign, type KeyObject } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { startUpstream, type Upstream } from './support/upstream.js'
import { FORM, basic, build, client, form, testConfig, type TestContext } from './helper.js'
import { lowS } from './support/sign.js'
import { startIdp } from './support/idp.js'

const b64 = (value: unknown): string => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url')

const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'
const ACCESS = 'urn:ietf:params:oauth:token-type:access_token'
const IDP = 'https://idp.test'

interface Kit {
  app: FastifyInstance
  upstream: Upstream
  kid: string
  key: KeyObject
  publicKey: KeyObject
  header: () => Record<string, unknown>
  claims: () => Record<string, unknown>
  es256: (header: Record<string, unknown>, payload: unknown) => string
}

/**
 * An app with a tool (`chat`, on a real upstream that records every request), a client that may
 * exchange tokens, and optionally trusted issuers. The /token limit is lifted: every attack token
 * is also a failed exchange from one address.
 */
async function kit (t: TestContext, trustedIssuers: Array<Record<string, unknown>> = []): Promise<Kit> {
  const upstream = await startUpstream(t)
  const app = await build(t, testConfig(t, {
    clients: [
      client('agent', { quota: { limit: 100, window: '1d' }, claims: { role: 'user' }, refresh: true }),
      client('exchanger', { exchange: true, audiences: ['tool:chat'] })
    ],
    tools: [{ name: 'chat', url: `${upstream.origin}/chat`, audience: 'tool:chat', scopes: ['tools:call'] }],
    trustedIssuers,
    rateLimits: { token: { max: 100_000, window: '1m' }, perIp: { max: 100_000, window: '1m' }, perSubject: { max: 100_000, window: '1m' } }
  }))
  const { kid, privateKey } = app.keys.signingKey()
  const publicKey = app.keys.verificationKey(kid)?.publicKey as KeyObject
  const now = Math.floor(Date.now() / 1000)
  const claims = () => ({ iss: 'https://tollgate.test', sub: 'agent', aud: ['tool:chat'], exp: now + 300, iat: now, nbf: now, jti: `j-${Math.random()}`, client_id: 'agent', scope: 'tools:call' })
  const header = () => ({ alg: 'ES256', kid, typ: 'at+jwt' })
  // Low-S, as Tollgate's signer writes: a control token must differ from a good one only by its attack.
  const es256 = (h: Record<string, unknown>, p: unknown): string => {
    const input = `${b64(h)}.${b64(p)}`
    return `${input}.${lowS(sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' })).toString('base64url')}`
  }
  return { app, upstream, kid, key: privateKey, publicKey, header, claims, es256 }
}

async function getValidate (app: FastifyInstance, token: string): Promise<{ statusCode: number, headers: Record<string, unknown> }> {
  return await app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${token}` } })
}

async function postValidate (app: FastifyInstance, token: string): Promise<unknown> {
  return (await app.inject({ method: 'POST', url: '/validate', headers: { authorization: basic('agent'), ...FORM }, payload: form({ token }) })).json()
}

async function call (app: FastifyInstance, token: string): Promise<{ statusCode: number, headers: Record<string, unknown>, json: () => any }> {
  return await app.inject({ method: 'POST', url: '/call', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, payload: '{"tool":"chat","arguments":{}}' })
}

async function exchange (app: FastifyInstance, token: string, type = ACCESS): Promise<{ statusCode: number, json: () => any }> {
  return await app.inject({ method: 'POST', url: '/token', headers: { authorization: basic('exchanger'), ...FORM }, payload: form({ grant_type: EXCHANGE, subject_token: token, subject_token_type: type }) })
}

/** The token is refused at GET /validate, at POST /call (and nothing reaches the tool). */
async function refusedDirectly (t: any, k: Kit, token: string, name: string): Promise<void> {
  const get = await getValidate(k.app, token)
  t.equal(get.statusCode, 401, `${name}: GET /validate → 401`)
  if (get.statusCode === 401) t.match(get.headers['www-authenticate'], /^Bearer realm="tollgate"/, `${name}: challenge`)
  t.same(await postValidate(k.app, token), { active: false }, `${name}: POST /validate → inactive`)
  const before = k.upstream.seen.length
  const res = await call(k.app, token)
  t.equal(res.statusCode, 401, `${name}: POST /call → 401`)
  if (res.statusCode === 401) {
    t.match(res.json().code, /^(invalid_token|token_expired)$/, `${name}: /call code`)
    t.match(res.headers['www-authenticate'], /^Bearer realm="tollgate", error="invalid_token"/, `${name}: /call challenge (RFC 6750 §3.1)`)
  }
  t.equal(k.upstream.seen.length, before, `${name}: the tool saw no request`)
}

/**
 * What every channel must answer for a refused token: GET /validate 401, POST /validate inactive,
 * POST /call 401 with nothing sent upstream, and as a token exchange's subject_token 400
 * invalid_request (RFC 8693 §2.2.2): /token's body cap leaves room for a token at the 8 KiB limit.
 */
async function refusedEverywhere (t: any, k: Kit, token: string, name: string): Promise<void> {
  await refusedDirectly(t, k, token, name)
  const ex = await exchange(k.app, token)
  if (ex.statusCode === 413) {
    t.ok(token.length > 9 * 1024, `${name}: only a body over /token's 10 KiB cap is refused before parsing`)
    return
  }
  t.equal(ex.statusCode, 400, `${name}: as a subject_token → 400`)
  t.equal(ex.json().error, 'invalid_request', `${name}: as a subject_token → invalid_request`)
}

function replaceSignature (token: string, signature: Buffer): string {
  return `${token.slice(0, token.lastIndexOf('.'))}.${signature.toString('base64url')}`
}

t.test('control: a token crafted here with the real key passes on every channel', async t => {
  const k = await kit(t)
  const token = k.es256(k.header(), k.claims())
  t.equal((await getValidate(k.app, token)).statusCode, 200, 'GET /validate')
  t.match(await postValidate(k.app, token), { active: true, sub: 'agent' }, 'POST /validate')
  t.equal((await call(k.app, token)).statusCode, 200, 'POST /call')
  t.equal(k.upstream.seen.length, 1, 'the tool saw the call')
  const ex = await exchange(k.app, token)
  t.equal(ex.statusCode, 200, 'accepted as a subject_token')
  t.equal(ex.json().issued_token_type, ACCESS)
})

t.test('alg none, and algorithms other than the one pinned to the key', async t => {
  const k = await kit(t)
  const unsigned = `${b64({ ...k.header(), alg: 'none' })}.${b64(k.claims())}.`
  await refusedEverywhere(t, k, unsigned, 'alg none, empty signature')
  await refusedEverywhere(t, k, `${b64({ ...k.header(), alg: 'none' })}.${b64(k.claims())}`, 'alg none, two segments')
  for (const alg of ['ES384', 'ES512', 'RS256', 'PS256', 'EdDSA', 'ES256K', 'NONE', 'es256']) {
    await refusedEverywhere(t, k, k.es256({ ...k.header(), alg }, k.claims()), `alg ${alg} with the ES256 key`)
  }
})

t.test('HS256 "signed" with the public key in every encoding', async t => {
  const k = await kit(t)
  const spki = k.publicKey.export({ format: 'pem', type: 'spki' }) as string
  const jwk = k.publicKey.export({ format: 'jwk' })
  const secrets: Record<string, string | Buffer> = {
    'PEM (SPKI)': spki,
    'PEM without trailing newline': spki.trimEnd(),
    'PEM with CRLF': spki.replace(/\n/g, '\r\n'),
    'DER (SPKI)': k.publicKey.export({ format: 'der', type: 'spki' }),
    'JWK JSON': JSON.stringify(jwk),
    'JWK JSON with kid': JSON.stringify({ ...jwk, kid: k.kid, alg: 'ES256', use: 'sig' }),
    'the JWKS document': k.app.keys.jwks(),
    'the kid': k.kid
  }
  for (const [name, secret] of Object.entries(secrets)) {
    for (const alg of ['HS256', 'HS384', 'HS512']) {
      const header = { ...k.header(), alg }
      const input = `${b64(header)}.${b64(k.claims())}`
      const mac = createHmac(`sha${alg.slice(2)}`, secret).update(input).digest('base64url')
      await refusedEverywhere(t, k, `${input}.${mac}`, `${alg} keyed with ${name}`)
    }
  }
})

t.test('ES256 signatures that are not exactly 64 octets, or have r = 0 or s = 0', async t => {
  const k = await kit(t)
  const good = k.es256(k.header(), k.claims())
  const sig = Buffer.from(good.split('.')[2] as string, 'base64url')
  const input = good.slice(0, good.lastIndexOf('.'))
  const der = sign('sha256', Buffer.from(input), { key: k.key, dsaEncoding: 'der' })
  await refusedEverywhere(t, k, replaceSignature(good, der), 'a valid DER-encoded signature')
  await refusedEverywhere(t, k, replaceSignature(good, sig.subarray(0, 63)), '63 octets')
  await refusedEverywhere(t, k, replaceSignature(good, Buffer.concat([sig, Buffer.from([0])])), '65 octets')
  await refusedEverywhere(t, k, replaceSignature(good, Buffer.concat([sig, sig])), '128 octets')
  await refusedEverywhere(t, k, replaceSignature(good, Buffer.concat([Buffer.alloc(32), sig.subarray(32)])), 'r = 0')
  await refusedEverywhere(t, k, replaceSignature(good, Buffer.concat([sig.subarray(0, 32), Buffer.alloc(32)])), 's = 0')
  await refusedEverywhere(t, k, replaceSignature(good, Buffer.alloc(64)), 'r = s = 0 (psychic signature)')
  const flipped = Buffer.from(sig)
  flipped[10] = (flipped[10] as number) ^ 1
  await refusedEverywhere(t, k, replaceSignature(good, flipped), 'one bit flipped')
  await refusedEverywhere(t, k, k.es256(k.header(), { ...k.claims(), sub: 'admin' }).replace(/\.[^.]+\./, `.${b64({ ...k.claims(), sub: 'admin2' })}.`), 'payload swapped after signing')
})

t.test('crit: empty, unknown, registered, or naming an absent parameter', async t => {
  const k = await kit(t)
  const cases: Array<[string, unknown]> = [['empty', []], ['unknown', ['x-custom']], ['registered', ['exp']], ['absent', ['b64']], ['not an array', 'exp'], ['registered header', ['alg']]]
  for (const [name, crit] of cases) {
    const header: Record<string, unknown> = { ...k.header(), crit }
    if (name === 'unknown') header['x-custom'] = true
    await refusedEverywhere(t, k, k.es256(header, k.claims()), `crit ${name}`)
  }
})

t.test('jku, x5u, jwk, x5c headers are never used to find a key', async t => {
  const k = await kit(t)
  const attacker = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const attackerJwk = attacker.publicKey.export({ format: 'jwk' })
  const signWithAttacker = (h: Record<string, unknown>): string => {
    const input = `${b64(h)}.${b64(k.claims())}`
    return `${input}.${sign('sha256', Buffer.from(input), { key: attacker.privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`
  }
  const cert = 'MIIBfake' // the value never matters: the member alone is refused
  const headers: Record<string, Record<string, unknown>> = {
    'jwk with the attacker key': { alg: 'ES256', typ: 'at+jwt', jwk: attackerJwk },
    'jwk with the attacker key and our kid': { alg: 'ES256', typ: 'at+jwt', kid: k.kid, jwk: attackerJwk },
    'jku to an attacker host': { alg: 'ES256', typ: 'at+jwt', kid: 'attacker', jku: 'http://127.0.0.1:1/jwks.json' },
    'x5u to an attacker host': { alg: 'ES256', typ: 'at+jwt', kid: 'attacker', x5u: 'http://127.0.0.1:1/cert.pem' },
    'x5c with an attacker certificate': { alg: 'ES256', typ: 'at+jwt', kid: k.kid, x5c: [cert] }
  }
  for (const [name, header] of Object.entries(headers)) {
    await refusedEverywhere(t, k, signWithAttacker(header), `${name} (attacker-signed)`)
  }
  // Even signed with the real key, the members are refused outright.
  for (const member of ['jku', 'x5u', 'jwk', 'x5c']) {
    const value = member === 'jwk' ? attackerJwk : member === 'x5c' ? [cert] : 'http://127.0.0.1:1/x'
    await refusedEverywhere(t, k, k.es256({ ...k.header(), [member]: value }, k.claims()), `${member} present on a really signed token`)
  }
})

t.test('kid unknown, or carrying traversal, quotes or NUL', async t => {
  const k = await kit(t)
  for (const kid of ['unknown', '../../../../etc/passwd', `${k.kid}/../${k.kid}`, `${k.kid}"`, "' OR '1'='1", `${k.kid}\u0000`, '', 42, null, ['x']]) {
    await refusedEverywhere(t, k, k.es256({ ...k.header(), kid }, k.claims()), `kid ${JSON.stringify(kid)}`)
  }
})

t.test('malformed serialisations', async t => {
  const k = await kit(t)
  const good = k.es256(k.header(), k.claims())
  const [h, p, s] = good.split('.') as [string, string, string]
  const nonCanonical = (seg: string): string => {
    // The last character of an unpadded segment carries spare bits; set them.
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
    const last = seg.at(-1) as string
    return seg.slice(0, -1) + (alphabet[alphabet.indexOf(last) + 1] ?? 'A')
  }
  const cases: Record<string, string> = {
    'four segments': `${good}.${s}`,
    'five segments (JWE shape)': `${h}.${p}.${s}.${s}.${s}`,
    'padding': `${h}=.${p}.${s}`,
    'whitespace': `${h}. ${p}.${s}`,
    'standard base64 characters': `${h}.${p.replace(/-/g, '+').replace(/_/g, '/')}+/.${s}`,
    'non-canonical signature': `${h}.${p}.${nonCanonical(s)}`,
    'empty payload': `${h}..${s}`,
    'header not JSON': k.es256({} as any, k.claims()).replace(/^[^.]+/, b64('not json')),
    'JWE header': k.es256({ alg: 'RSA-OAEP', enc: 'A256GCM', kid: k.kid, typ: 'at+jwt' }, k.claims())
  }
  for (const [name, token] of Object.entries(cases)) await refusedEverywhere(t, k, token, name)

  const raw = (header: Record<string, unknown>, payloadBytes: Buffer): string => {
    const input = `${b64(header)}.${payloadBytes.toString('base64url')}`
    return `${input}.${lowS(sign('sha256', Buffer.from(input), { key: k.key, dsaEncoding: 'ieee-p1363' })).toString('base64url')}`
  }
  await refusedEverywhere(t, k, raw(k.header(), Buffer.from('[1,2,3]')), 'payload is an array')
  await refusedEverywhere(t, k, raw(k.header(), Buffer.from('"string"')), 'payload is a string')
  await refusedEverywhere(t, k, raw(k.header(), Buffer.from('null')), 'payload is null')
  await refusedEverywhere(t, k, raw(k.header(), Buffer.concat([Buffer.from(JSON.stringify(k.claims()).slice(0, -1) + ',"x":"'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')])), 'payload is not UTF-8')
  await refusedEverywhere(t, k, k.es256({ ...k.header(), cty: 'JWT' }, k.claims()), 'nested JWT (cty JWT)')
  const inner = k.es256(k.header(), k.claims())
  const nestedInput = `${b64({ ...k.header(), cty: 'JWT' })}.${Buffer.from(inner).toString('base64url')}`
  await refusedEverywhere(t, k, `${nestedInput}.${lowS(sign('sha256', Buffer.from(nestedInput), { key: k.key, dsaEncoding: 'ieee-p1363' })).toString('base64url')}`, 'nested JWT payload')
})

t.test('typ other than at+jwt', async t => {
  const k = await kit(t)
  for (const typ of [undefined, 'JWT', 'jwt', 'id_token+jwt', 'application/jwt', 'at+jwt ', 1]) {
    const header: Record<string, unknown> = { ...k.header(), typ }
    if (typ === undefined) delete header.typ
    await refusedEverywhere(t, k, k.es256(header, k.claims()), `typ ${JSON.stringify(typ)}`)
  }
  const ok = await k.app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${k.es256({ ...k.header(), typ: 'application/at+jwt' }, k.claims())}` } })
  t.equal(ok.statusCode, 200, 'application/at+jwt is the same media type (RFC 9068 §4)')
})

t.test('missing or malformed registered claims', async t => {
  const k = await kit(t)
  for (const name of ['iss', 'sub', 'aud', 'exp', 'iat', 'jti', 'client_id']) {
    const claims = k.claims()
    delete claims[name]
    await refusedEverywhere(t, k, k.es256(k.header(), claims), `missing ${name}`)
  }
  const bad: Record<string, Record<string, unknown>> = {
    'iss as an array': { iss: ['https://tollgate.test'] },
    'iss of another issuer': { iss: 'https://evil.test' },
    'iss with a trailing slash': { iss: 'https://tollgate.test/' },
    'aud empty array': { aud: [] },
    'aud with a non-string': { aud: ['tool:chat', 1] },
    'sub empty': { sub: '' },
    'sub as a number': { sub: 42 },
    'scope as an array': { scope: ['tools:call'] },
    'exp as a string': { exp: String(Math.floor(Date.now() / 1000) + 300) },
    'nbf as a string': { nbf: '0' },
    'iat as null': { iat: null }
  }
  for (const [name, override] of Object.entries(bad)) {
    await refusedEverywhere(t, k, k.es256(k.header(), { ...k.claims(), ...override }), name)
  }
})

t.test('time claims', async t => {
  const k = await kit(t)
  const now = Math.floor(Date.now() / 1000)
  const leeway = 30
  const cases: Record<string, Record<string, unknown>> = {
    'exp at now − leeway': { exp: now - leeway, iat: now - 600, nbf: now - 600 },
    'exp long past': { exp: now - 3600, iat: now - 4000, nbf: now - 4000 },
    'nbf after now + leeway': { nbf: now + leeway + 60 },
    'iat after now + leeway': { iat: now + leeway + 60, exp: now + 600 },
    'exp: 1e300': { exp: 1e300 },
    'lifetime above the maximum': { exp: now + 86400 + 3600 },
    'exp: Infinity-like huge number': { exp: 9007199254740993 }
  }
  for (const [name, override] of Object.entries(cases)) {
    await refusedEverywhere(t, k, k.es256(k.header(), { ...k.claims(), ...override }), name)
  }
  const within = await k.app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${k.es256(k.header(), { ...k.claims(), exp: now - 5, iat: now - 300, nbf: now - 300 })}` } })
  t.equal(within.statusCode, 200, 'expired 5 s ago is still within the 30 s leeway')
})

t.test('tokens longer than 8 KiB', async t => {
  const k = await kit(t)
  const big = k.es256(k.header(), { ...k.claims(), pad: 'x'.repeat(8200) })
  t.ok(big.length > 8192)
  await refusedEverywhere(t, k, big, 'oversize, validly signed')
  const justUnder = k.es256(k.header(), { ...k.claims(), pad: 'x'.repeat(5500) })
  t.ok(justUnder.length <= 8192)
  t.equal((await k.app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${justUnder}` } })).statusCode, 200, 'a large token under the cap passes')
  t.not((await exchange(k.app, justUnder)).statusCode, 413, 'and fits in a token exchange body')
})

t.test('a token that ends like a cached one is verified on its own: the cache compares whole tokens', async t => {
  const k = await kit(t)
  const good = k.es256(k.header(), k.claims())
  t.equal((await getValidate(k.app, good)).statusCode, 200, 'the genuine token, now cached')
  const signature = good.slice(good.lastIndexOf('.') + 1)
  // The genuine signature under another payload: the same cache key, another token.
  const spliced = `${b64(k.header())}.${b64({ ...k.claims(), sub: 'admin' })}.${signature}`
  // The genuine payload with its signature altered before the characters the cache is keyed by.
  const altered = `${good.slice(0, good.lastIndexOf('.') + 1)}${signature[0] === 'A' ? 'B' : 'A'}${signature.slice(1)}`
  for (const [name, token] of [['genuine signature over another payload', spliced], ['signature altered outside the cache key', altered]] as const) {
    t.equal(token.slice(-43), good.slice(-43), `${name}: ends like the cached token`)
    t.equal(k.app.tokens.peek(token), undefined, `${name}: not a cache hit`)
    await refusedEverywhere(t, k, token, name)
  }
  t.equal(k.app.tokens.peek(good)?.sub, 'agent', 'the genuine token is still cached')
  t.equal((await getValidate(k.app, good)).statusCode, 200, 'and still valid')
})

t.test('a token in the query string is never read', async t => {
  const k = await kit(t)
  const token = k.es256(k.header(), k.claims())
  for (const name of ['access_token', 'token', 'bearer']) {
    const res = await k.app.inject({ method: 'GET', url: `/validate?${name}=${token}` })
    t.equal(res.statusCode, 401, name)
    t.match(res.headers['www-authenticate'], /^Bearer realm="tollgate", resource_metadata="[^"]+"$/, `${name}: treated as no token at all`)
  }
})

// ---- Trusted issuers (CONTRACT §2): their tokens are subject tokens of an exchange, nothing else.

interface IdpKey { kid: string, alg: string, privateKey: KeyObject, publicKey: KeyObject }

/** A stand-in identity provider on a free port serving a JWKS with one key of each type. */
async function idp (t: TestContext): Promise<{ jwksUri: string, keys: Record<string, IdpKey> }> {
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const ec384 = generateKeyPairSync('ec', { namedCurve: 'P-384' })
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const ed = generateKeyPairSync('ed25519')
  const keys: Record<string, IdpKey> = {
    es: { kid: 'idp-es', alg: 'ES256', ...ec },
    ec384: { kid: 'idp-ec384', alg: 'ES384', ...ec384 },
    rsa: { kid: 'idp-rsa', alg: 'RS256', ...rsa },
    ed: { kid: 'idp-ed', alg: 'EdDSA', ...ed }
  }
  // No `alg` member on the JWKs: only the issuer's allowlist stands between a key and an algorithm.
  const { jwksUri } = await startIdp(t, { keys: Object.values(keys).map(k => ({ ...k.publicKey.export({ format: 'jwk' }), kid: k.kid, use: 'sig' })) })
  return { jwksUri, keys }
}

/** Signs with node:crypto for any algorithm name, whatever the key really is meant for. */
function signAs (alg: string, key: KeyObject, header: Record<string, unknown>, payload: unknown): string {
  const input = Buffer.from(`${b64({ alg, ...header })}.${b64(payload)}`)
  let signature: Buffer
  switch (alg) {
    case 'ES256': signature = sign('sha256', input, { key, dsaEncoding: 'ieee-p1363' }); break
    case 'ES384': signature = sign('sha384', input, { key, dsaEncoding: 'ieee-p1363' }); break
    case 'RS256': signature = sign('sha256', input, key); break
    case 'PS256': signature = sign('sha256', input, { key, padding: 6 /* RSA_PKCS1_PSS_PADDING */, saltLength: 32 }); break
    case 'EdDSA': signature = sign(null, input, key); break
    default: throw new Error(`no signer for ${alg}`)
  }
  return `${input.toString()}.${signature.toString('base64url')}`
}

function idpClaims (extra: Record<string, unknown> = {}): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000)
  return { iss: IDP, sub: 'user-42', aud: 'tollgate', iat: now, exp: now + 300, scope: 'tools:call', ...extra }
}

t.test('a trusted issuer\'s token is accepted for exchange only, never at /validate or /call', async t => {
  const { jwksUri, keys } = await idp(t)
  const k = await kit(t, [{ issuer: IDP, jwksUri, audiences: ['tollgate', 'tool:chat'] }])
  const es = keys.es as IdpKey
  const now = Math.floor(Date.now() / 1000)
  const plain = signAs('ES256', es.privateKey, { kid: es.kid, typ: 'JWT' }, idpClaims())
  // Shaped exactly like a Tollgate access token (typ, audience, client_id, jti, nbf), but from the IdP.
  const lookalike = signAs('ES256', es.privateKey, { kid: es.kid, typ: 'at+jwt' }, idpClaims({ aud: ['tool:chat'], client_id: 'agent', jti: 'idp-1', nbf: now }))
  for (const [name, token] of [['a plain IdP token', plain], ['an IdP token shaped like a Tollgate access token', lookalike]] as const) {
    const ex = await exchange(k.app, token, 'urn:ietf:params:oauth:token-type:jwt')
    t.equal(ex.statusCode, 200, `${name}: a valid subject token (control)`)
    await refusedDirectly(t, k, token, name)
  }
  const rsa = keys.rsa as IdpKey
  await refusedDirectly(t, k, signAs('RS256', rsa.privateKey, { kid: rsa.kid, typ: 'at+jwt' }, idpClaims({ aud: ['tool:chat'], client_id: 'agent', jti: 'idp-2', nbf: now })), 'an RS256 IdP token')
  // The IdP's key published under Tollgate's own kid: Tollgate looks up only its own key set.
  await refusedDirectly(t, k, signAs('ES256', es.privateKey, { kid: k.kid, typ: 'at+jwt' }, idpClaims({ aud: ['tool:chat'], client_id: 'agent', jti: 'idp-3', nbf: now })), 'an IdP token under Tollgate\'s kid')
  // Tollgate's issuer name on an IdP-signed token: refused everywhere, exchange included.
  await refusedEverywhere(t, k, signAs('ES256', es.privateKey, { kid: es.kid, typ: 'at+jwt' }, { ...k.claims() }), 'Tollgate\'s iss, signed by the IdP')
  await refusedEverywhere(t, k, signAs('ES256', es.privateKey, { kid: k.kid, typ: 'at+jwt' }, { ...k.claims() }), 'Tollgate\'s iss and kid, signed by the IdP')
})

t.test('HS256 "signed" with a trusted issuer\'s public key, as a subject token', async t => {
  const { jwksUri, keys } = await idp(t)
  const k = await kit(t, [{ issuer: IDP, jwksUri, audiences: ['tollgate'] }])
  const jwksDoc = await (await fetch(jwksUri)).text()
  for (const key of [keys.es as IdpKey, keys.rsa as IdpKey]) {
    const jwk = key.publicKey.export({ format: 'jwk' })
    const spki = key.publicKey.export({ format: 'pem', type: 'spki' }) as string
    const secrets: Record<string, string | Buffer> = {
      'PEM (SPKI)': spki,
      'PEM without trailing newline': spki.trimEnd(),
      'DER (SPKI)': key.publicKey.export({ format: 'der', type: 'spki' }),
      'JWK JSON': JSON.stringify(jwk),
      'JWK JSON as published': JSON.stringify({ ...jwk, kid: key.kid, use: 'sig' }),
      'the JWKS document': jwksDoc,
      'the raw public value': Buffer.from((jwk.x ?? jwk.n) as string, 'base64url')
    }
    if (key.alg === 'RS256') secrets['PEM (PKCS#1)'] = key.publicKey.export({ format: 'pem', type: 'pkcs1' }) as string
    for (const [what, secret] of Object.entries(secrets)) {
      for (const alg of ['HS256', 'HS384', 'HS512']) {
        for (const typ of ['JWT', 'at+jwt']) {
          const input = `${b64({ alg, kid: key.kid, typ })}.${b64(idpClaims({ jti: `h-${Math.random()}` }))}`
          const mac = createHmac(`sha${alg.slice(2)}`, secret).update(input).digest('base64url')
          const token = `${input}.${mac}`
          const ex = await exchange(k.app, token, 'urn:ietf:params:oauth:token-type:jwt')
          t.equal(ex.statusCode, 400, `${alg}/${typ} keyed with ${key.kid} ${what}: 400`)
          t.equal(ex.json().error, 'invalid_request', `${alg}/${typ} keyed with ${key.kid} ${what}: invalid_request`)
        }
      }
    }
  }
  // One representative through the direct channels too.
  const es = keys.es as IdpKey
  const input = `${b64({ alg: 'HS256', kid: es.kid, typ: 'at+jwt' })}.${b64(idpClaims({ aud: ['tool:chat'], client_id: 'agent', jti: 'h' }))}`
  await refusedDirectly(t, k, `${input}.${createHmac('sha256', es.publicKey.export({ format: 'pem', type: 'spki' })).update(input).digest('base64url')}`, 'HS256 keyed with the IdP PEM')
  t.throws(() => testConfig(t, { trustedIssuers: [{ issuer: IDP, jwksUri, audiences: ['tollgate'], algorithms: ['HS256'] }] }), /trustedIssuers\.0\.algorithms/, 'an HMAC algorithm cannot even be configured')
})

t.test('alg not in the issuer\'s allowlist: refused even with a genuine signature', async t => {
  const { jwksUri, keys } = await idp(t)
  const STRICT = 'https://strict.idp.test'
  const k = await kit(t, [
    { issuer: IDP, jwksUri, audiences: ['tollgate'] }, // default allowlist: ES256, RS256
    { issuer: STRICT, jwksUri, audiences: ['tollgate'], algorithms: ['ES256'] }
  ])
  const es = keys.es as IdpKey
  const rsa = keys.rsa as IdpKey
  const ec384 = keys.ec384 as IdpKey
  const ed = keys.ed as IdpKey
  const JWT = 'urn:ietf:params:oauth:token-type:jwt'
  const token = (issuer: string, alg: string, key: IdpKey, header: Record<string, unknown> = {}): string =>
    signAs(alg, key.privateKey, { kid: key.kid, typ: 'JWT', ...header }, idpClaims({ iss: issuer }))

  // Controls: each allowed pair really verifies, so a refusal below is the allowlist's doing.
  t.equal((await exchange(k.app, token(IDP, 'ES256', es), JWT)).statusCode, 200, 'ES256 under the default allowlist')
  t.equal((await exchange(k.app, token(IDP, 'RS256', rsa), JWT)).statusCode, 200, 'RS256 under the default allowlist')
  t.equal((await exchange(k.app, token(STRICT, 'ES256', es), JWT)).statusCode, 200, 'ES256 under [ES256]')

  const refused: Array<[string, string]> = [
    [IDP, 'PS256'], [IDP, 'ES384'], [IDP, 'EdDSA'],
    [STRICT, 'RS256'], [STRICT, 'PS256'], [STRICT, 'ES384'], [STRICT, 'EdDSA']
  ]
  const keyFor: Record<string, IdpKey> = { RS256: rsa, PS256: rsa, ES384: ec384, EdDSA: ed }
  for (const [issuer, alg] of refused) {
    const res = await exchange(k.app, token(issuer, alg, keyFor[alg] as IdpKey), JWT)
    t.equal(res.statusCode, 400, `${issuer} ${alg}: 400`)
    t.equal(res.json().error, 'invalid_request', `${issuer} ${alg}: invalid_request`)
    t.match(res.json().error_description, new RegExp(`algorithm ${alg} not allowed`), `${issuer} ${alg}: for that reason`)
  }
  // Spellings and key confusion around the allowlist.
  const odd: Array<[string, string]> = [
    ['alg none', `${b64({ alg: 'none', kid: es.kid, typ: 'JWT' })}.${b64(idpClaims())}.`],
    ['alg es256 (lower case)', `${token(IDP, 'ES256', es).replace(/^[^.]+/, b64({ alg: 'es256', kid: es.kid, typ: 'JWT' }))}`],
    ['RS256 header naming the EC key', signAs('RS256', rsa.privateKey, { kid: es.kid, typ: 'JWT' }, idpClaims())],
    ['ES256 header naming the RSA key', signAs('ES256', es.privateKey, { kid: rsa.kid, typ: 'JWT' }, idpClaims())],
    ['ES256 header, signed with P-384, naming the P-384 key', signAs('ES384', ec384.privateKey, { kid: ec384.kid, typ: 'JWT' }, idpClaims()).replace(/^[^.]+/, b64({ alg: 'ES256', kid: ec384.kid, typ: 'JWT' }))],
    ['alg as an array', `${b64({ alg: ['ES256'], kid: es.kid, typ: 'JWT' })}.${b64(idpClaims())}.${token(IDP, 'ES256', es).split('.')[2] as string}`]
  ]
  for (const [name, tok] of odd) {
    const res = await exchange(k.app, tok, JWT)
    t.equal(res.statusCode, 400, `${name}: 400`)
    t.equal(res.json().error, 'invalid_request', `${name}: invalid_request`)
  }
})
