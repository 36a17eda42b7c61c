// SECURITY.md "Tokens presented to Tollgate", line by line. Every attack token is crafted here with
// node:crypto and, unless the attack is about the signature itself, signed with Tollgate's REAL
// signing key, so the only thing wrong with it is the attack: remove the defence and the test fails.
// A control token crafted the same way must pass, which proves the crafting is right.
import { createHmac, generateKeyPairSync, sign, type KeyObject } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { FORM, basic, build, form, type TestContext } from './helper.js'

const b64 = (value: unknown): string => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url')

interface Kit {
  app: FastifyInstance
  kid: string
  key: KeyObject
  publicKey: KeyObject
  header: () => Record<string, unknown>
  claims: () => Record<string, unknown>
  es256: (header: Record<string, unknown>, payload: unknown) => string
}

async function kit (t: TestContext): Promise<Kit> {
  const app = await build(t)
  const { kid, privateKey } = app.keys.signingKey()
  const publicKey = app.keys.verificationKey(kid)?.publicKey as KeyObject
  const now = Math.floor(Date.now() / 1000)
  const claims = () => ({ iss: 'https://tollgate.test', sub: 'agent', aud: ['tool:chat'], exp: now + 300, iat: now, nbf: now, jti: `j-${Math.random()}`, client_id: 'agent', scope: 'tools:call' })
  const header = () => ({ alg: 'ES256', kid, typ: 'at+jwt' })
  const es256 = (h: Record<string, unknown>, p: unknown): string => {
    const input = `${b64(h)}.${b64(p)}`
    return `${input}.${sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`
  }
  return { app, kid, key: privateKey, publicKey, header, claims, es256 }
}

/** What every channel must answer for a refused token. */
async function refusedEverywhere (t: any, app: FastifyInstance, token: string, name: string): Promise<void> {
  const get = await app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${token}` } })
  t.equal(get.statusCode, 401, `${name}: GET /validate → 401`)
  if (get.statusCode === 401) t.match(get.headers['www-authenticate'], /^Bearer realm="tollgate"/, `${name}: challenge`)
  const post = await app.inject({ method: 'POST', url: '/validate', headers: { authorization: basic('agent'), ...FORM }, payload: form({ token }) })
  t.same(post.json(), { active: false }, `${name}: POST /validate → inactive`)
}

function replaceSignature (token: string, signature: Buffer): string {
  return `${token.slice(0, token.lastIndexOf('.'))}.${signature.toString('base64url')}`
}

t.test('control: a token crafted here with the real key passes', async t => {
  const k = await kit(t)
  const token = k.es256(k.header(), k.claims())
  const res = await k.app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${token}` } })
  t.equal(res.statusCode, 200)
})

t.test('alg none, and algorithms other than the one pinned to the key', async t => {
  const k = await kit(t)
  const unsigned = `${b64({ ...k.header(), alg: 'none' })}.${b64(k.claims())}.`
  await refusedEverywhere(t, k.app, unsigned, 'alg none, empty signature')
  await refusedEverywhere(t, k.app, `${b64({ ...k.header(), alg: 'none' })}.${b64(k.claims())}`, 'alg none, two segments')
  for (const alg of ['ES384', 'ES512', 'RS256', 'PS256', 'EdDSA', 'ES256K', 'NONE', 'es256']) {
    await refusedEverywhere(t, k.app, k.es256({ ...k.header(), alg }, k.claims()), `alg ${alg} with the ES256 key`)
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
      await refusedEverywhere(t, k.app, `${input}.${mac}`, `${alg} keyed with ${name}`)
    }
  }
})

t.test('ES256 signatures that are not exactly 64 octets, or have r = 0 or s = 0', async t => {
  const k = await kit(t)
  const good = k.es256(k.header(), k.claims())
  const sig = Buffer.from(good.split('.')[2] as string, 'base64url')
  const input = good.slice(0, good.lastIndexOf('.'))
  const der = sign('sha256', Buffer.from(input), { key: k.key, dsaEncoding: 'der' })
  await refusedEverywhere(t, k.app, replaceSignature(good, der), 'a valid DER-encoded signature')
  await refusedEverywhere(t, k.app, replaceSignature(good, sig.subarray(0, 63)), '63 octets')
  await refusedEverywhere(t, k.app, replaceSignature(good, Buffer.concat([sig, Buffer.from([0])])), '65 octets')
  await refusedEverywhere(t, k.app, replaceSignature(good, Buffer.concat([sig, sig])), '128 octets')
  await refusedEverywhere(t, k.app, replaceSignature(good, Buffer.concat([Buffer.alloc(32), sig.subarray(32)])), 'r = 0')
  await refusedEverywhere(t, k.app, replaceSignature(good, Buffer.concat([sig.subarray(0, 32), Buffer.alloc(32)])), 's = 0')
  await refusedEverywhere(t, k.app, replaceSignature(good, Buffer.alloc(64)), 'r = s = 0 (psychic signature)')
  const flipped = Buffer.from(sig)
  flipped[10] = (flipped[10] as number) ^ 1
  await refusedEverywhere(t, k.app, replaceSignature(good, flipped), 'one bit flipped')
  await refusedEverywhere(t, k.app, k.es256(k.header(), { ...k.claims(), sub: 'admin' }).replace(/\.[^.]+\./, `.${b64({ ...k.claims(), sub: 'admin2' })}.`), 'payload swapped after signing')
})

t.test('crit: empty, unknown, registered, or naming an absent parameter', async t => {
  const k = await kit(t)
  const cases: Array<[string, unknown]> = [['empty', []], ['unknown', ['x-custom']], ['registered', ['exp']], ['absent', ['b64']], ['not an array', 'exp'], ['registered header', ['alg']]]
  for (const [name, crit] of cases) {
    const header: Record<string, unknown> = { ...k.header(), crit }
    if (name === 'unknown') header['x-custom'] = true
    await refusedEverywhere(t, k.app, k.es256(header, k.claims()), `crit ${name}`)
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
    await refusedEverywhere(t, k.app, signWithAttacker(header), `${name} (attacker-signed)`)
  }
  // Even signed with the real key, the members are refused outright.
  for (const member of ['jku', 'x5u', 'jwk', 'x5c']) {
    const value = member === 'jwk' ? attackerJwk : member === 'x5c' ? [cert] : 'http://127.0.0.1:1/x'
    await refusedEverywhere(t, k.app, k.es256({ ...k.header(), [member]: value }, k.claims()), `${member} present on a really signed token`)
  }
})

t.test('kid unknown, or carrying traversal, quotes or NUL', async t => {
  const k = await kit(t)
  for (const kid of ['unknown', '../../../../etc/passwd', `${k.kid}/../${k.kid}`, `${k.kid}"`, "' OR '1'='1", `${k.kid}\u0000`, '', 42, null, ['x']]) {
    await refusedEverywhere(t, k.app, k.es256({ ...k.header(), kid }, k.claims()), `kid ${JSON.stringify(kid)}`)
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
  for (const [name, token] of Object.entries(cases)) await refusedEverywhere(t, k.app, token, name)

  const raw = (header: Record<string, unknown>, payloadBytes: Buffer): string => {
    const input = `${b64(header)}.${payloadBytes.toString('base64url')}`
    return `${input}.${sign('sha256', Buffer.from(input), { key: k.key, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`
  }
  await refusedEverywhere(t, k.app, raw(k.header(), Buffer.from('[1,2,3]')), 'payload is an array')
  await refusedEverywhere(t, k.app, raw(k.header(), Buffer.from('"string"')), 'payload is a string')
  await refusedEverywhere(t, k.app, raw(k.header(), Buffer.from('null')), 'payload is null')
  await refusedEverywhere(t, k.app, raw(k.header(), Buffer.concat([Buffer.from(JSON.stringify(k.claims()).slice(0, -1) + ',"x":"'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')])), 'payload is not UTF-8')
  await refusedEverywhere(t, k.app, k.es256({ ...k.header(), cty: 'JWT' }, k.claims()), 'nested JWT (cty JWT)')
  const inner = k.es256(k.header(), k.claims())
  const nestedInput = `${b64({ ...k.header(), cty: 'JWT' })}.${Buffer.from(inner).toString('base64url')}`
  await refusedEverywhere(t, k.app, `${nestedInput}.${sign('sha256', Buffer.from(nestedInput), { key: k.key, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`, 'nested JWT payload')
})

t.test('typ other than at+jwt', async t => {
  const k = await kit(t)
  for (const typ of [undefined, 'JWT', 'jwt', 'id_token+jwt', 'application/jwt', 'at+jwt ', 1]) {
    const header: Record<string, unknown> = { ...k.header(), typ }
    if (typ === undefined) delete header.typ
    await refusedEverywhere(t, k.app, k.es256(header, k.claims()), `typ ${JSON.stringify(typ)}`)
  }
  const ok = await k.app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${k.es256({ ...k.header(), typ: 'application/at+jwt' }, k.claims())}` } })
  t.equal(ok.statusCode, 200, 'application/at+jwt is the same media type (RFC 9068 §4)')
})

t.test('missing or malformed registered claims', async t => {
  const k = await kit(t)
  for (const name of ['iss', 'sub', 'aud', 'exp', 'iat', 'jti', 'client_id']) {
    const claims = k.claims()
    delete claims[name]
    await refusedEverywhere(t, k.app, k.es256(k.header(), claims), `missing ${name}`)
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
    await refusedEverywhere(t, k.app, k.es256(k.header(), { ...k.claims(), ...override }), name)
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
    await refusedEverywhere(t, k.app, k.es256(k.header(), { ...k.claims(), ...override }), name)
  }
  const within = await k.app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${k.es256(k.header(), { ...k.claims(), exp: now - 5, iat: now - 300, nbf: now - 300 })}` } })
  t.equal(within.statusCode, 200, 'expired 5 s ago is still within the 30 s leeway')
})

t.test('tokens longer than 8 KiB', async t => {
  const k = await kit(t)
  const big = k.es256(k.header(), { ...k.claims(), pad: 'x'.repeat(8200) })
  t.ok(big.length > 8192)
  await refusedEverywhere(t, k.app, big, 'oversize, validly signed')
  const justUnder = k.es256(k.header(), { ...k.claims(), pad: 'x'.repeat(5500) })
  t.ok(justUnder.length <= 8192)
  t.equal((await k.app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${justUnder}` } })).statusCode, 200, 'a large token under the cap passes')
})

t.test('a token in the query string is never read', async t => {
  const k = await kit(t)
  const token = k.es256(k.header(), k.claims())
  for (const name of ['access_token', 'token', 'bearer']) {
    const res = await k.app.inject({ method: 'GET', url: `/validate?${name}=${token}` })
    t.equal(res.statusCode, 401, name)
    t.equal(res.headers['www-authenticate'], 'Bearer realm="tollgate"', `${name}: treated as no token at all`)
  }
})
