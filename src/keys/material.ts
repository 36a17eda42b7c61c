// Key material: generation, RFC 7638 thumbprints, AES-256-GCM encryption of private keys under the
// key-encryption secret, and the check that a stored record is whole (openKeyRecord). Pure
// functions over node:crypto; no state, no store.
import { createCipheriv, createDecipheriv, createHash, createPrivateKey, createPublicKey, generateKeyPairSync, hkdfSync, randomBytes, type KeyObject } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'

export type SigningAlgorithm = 'ES256' | 'EdDSA' | 'RS256'

export interface GeneratedKey {
  kid: string
  alg: SigningAlgorithm
  publicJwk: Record<string, unknown>
  privateKey: KeyObject
}

export function generateKey (alg: SigningAlgorithm): GeneratedKey {
  const pair = alg === 'ES256'
    ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : alg === 'EdDSA'
      ? generateKeyPairSync('ed25519')
      : generateKeyPairSync('rsa', { modulusLength: 3072 })
  const jwk = pair.publicKey.export({ format: 'jwk' }) as Record<string, unknown>
  const kid = thumbprint(jwk)
  return { kid, alg, privateKey: pair.privateKey, publicJwk: { ...jwk, kid, alg, use: 'sig' } }
}

/** RFC 7638 §3: SHA-256 over the required members in lexicographic order, base64url. */
export function thumbprint (jwk: Record<string, unknown>): string {
  const members = jwk.kty === 'EC'
    ? { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y }
    : jwk.kty === 'OKP'
      ? { crv: jwk.crv, kty: jwk.kty, x: jwk.x }
      : { e: jwk.e, kty: jwk.kty, n: jwk.n }
  return createHash('sha256').update(JSON.stringify(members)).digest('base64url')
}

/** RFC 8725 §3.5 / SECURITY.md: refuse weak keys at startup. */
export function assertKeyStrength (key: KeyObject, alg: SigningAlgorithm): void {
  const details = key.asymmetricKeyDetails ?? {}
  if (alg === 'RS256' && (key.asymmetricKeyType !== 'rsa' || (details.modulusLength ?? 0) < 2048)) {
    throw new Error('RS256 keys must be RSA of at least 2048 bits')
  }
  if (alg === 'ES256' && (key.asymmetricKeyType !== 'ec' || details.namedCurve !== 'prime256v1')) {
    throw new Error('ES256 keys must be on P-256')
  }
  if (alg === 'EdDSA' && key.asymmetricKeyType !== 'ed25519') throw new Error('EdDSA keys must be Ed25519')
}

/** Derives the AES-256 key-encryption key from the operator's secret. */
export function deriveKek (secret: string): Buffer {
  return Buffer.from(hkdfSync('sha256', Buffer.from(secret, 'utf8'), 'tollgate/kek', 'key-encryption v1', 32))
}

export function encryptPrivateKey (key: KeyObject, kid: string, kek: Buffer): string {
  const iv = randomBytes(12)
  const cipher = createCipheriv('aes-256-gcm', kek, iv)
  cipher.setAAD(Buffer.from(kid)) // binds the ciphertext to its kid: rows cannot be swapped
  const der = key.export({ format: 'der', type: 'pkcs8' })
  const body = Buffer.concat([cipher.update(der), cipher.final()])
  return ['v1', iv.toString('base64url'), body.toString('base64url'), cipher.getAuthTag().toString('base64url')].join('.')
}

/** AES-GCM: a 96-bit IV and the full 128-bit tag (NIST SP 800-38D §5.2.1.2); a shorter tag is forgeable. */
const GCM_IV_BYTES = 12
const GCM_TAG_BYTES = 16

/**
 * A stored key record that cannot be used: it does not decrypt, or what is stored in clear (kid,
 * alg, public JWK) does not match the private key. The message names the kid and the rule, never
 * any key material. `undecryptable` tells a wrong secret (or a re-encrypted row) from a row whose
 * clear fields were altered.
 */
export class KeyRecordRefused extends Error {
  constructor (readonly kid: string, readonly reason: string, readonly undecryptable = false, options?: ErrorOptions) {
    super(`key ${kid.slice(0, 64)}: ${reason}`, options)
    this.name = 'KeyRecordRefused'
  }
}

export function decryptPrivateKey (blob: string, kid: string, kek: Buffer): KeyObject {
  const [version, ivText, body, tagText, ...rest] = blob.split('.')
  if (version !== 'v1' || ivText === undefined || body === undefined || tagText === undefined || rest.length > 0) throw new KeyRecordRefused(kid, 'unknown encryption format')
  const iv = Buffer.from(ivText, 'base64url')
  const tag = Buffer.from(tagText, 'base64url')
  if (iv.length !== GCM_IV_BYTES) throw new KeyRecordRefused(kid, `the GCM IV is ${iv.length} bytes, not ${GCM_IV_BYTES}`)
  // Without authTagLength, Node accepts a tag as short as 4 bytes, which an attacker can guess.
  if (tag.length !== GCM_TAG_BYTES) throw new KeyRecordRefused(kid, `the GCM tag is ${tag.length} bytes, not ${GCM_TAG_BYTES}`)
  const decipher = createDecipheriv('aes-256-gcm', kek, iv, { authTagLength: GCM_TAG_BYTES })
  decipher.setAAD(Buffer.from(kid))
  decipher.setAuthTag(tag)
  let der: Buffer
  try {
    der = Buffer.concat([decipher.update(Buffer.from(body, 'base64url')), decipher.final()])
  } catch (err) {
    throw new KeyRecordRefused(kid, 'cannot decrypt the key set with this secret (is TOLLGATE_SECRET the one the keys were created with?)', true, { cause: err })
  }
  return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' })
}

/** The public JWK a key publishes: the public half derived from the private key, then kid, alg, use. */
export function publishedJwk (privateKey: KeyObject, kid: string, alg: SigningAlgorithm): Record<string, unknown> {
  const jwk = createPublicKey(privateKey).export({ format: 'jwk' }) as Record<string, unknown>
  return { ...jwk, kid, alg, use: 'sig' }
}

export interface OpenedKey {
  privateKey: KeyObject
  publicKey: KeyObject
  /** Built from the private key, never copied from the record. */
  publicJwk: Record<string, unknown>
}

/**
 * Opens a stored key record and checks it is whole. The private half is authenticated by AES-GCM
 * (its kid is the associated data); everything else is stored in clear, so it is checked against
 * the private half: the public key is derived from it, the kid must be its RFC 7638 thumbprint, the
 * alg must fit it, and the stored public JWK must equal the derived one. Whoever can write the store
 * but not read the secret therefore cannot swap in a public key of their own. Every kid Tollgate
 * has written is the thumbprint (generateKey, since the first version), so no older form is accepted.
 */
export function openKeyRecord (record: { kid: string, alg: SigningAlgorithm, publicJwk: Record<string, unknown>, privateEnc: string }, kek: Buffer): OpenedKey {
  const { kid, alg } = record
  const privateKey = decryptPrivateKey(record.privateEnc, kid, kek)
  const publicKey = createPublicKey(privateKey)
  try {
    assertKeyStrength(publicKey, alg)
  } catch (err) {
    throw new KeyRecordRefused(kid, `the alg does not fit the key (${(err as Error).message})`)
  }
  const publicJwk = publishedJwk(privateKey, kid, alg)
  if (thumbprint(publicJwk) !== kid) throw new KeyRecordRefused(kid, 'the kid is not the RFC 7638 thumbprint of the private key')
  if (!sameMembers(record.publicJwk, publicJwk)) throw new KeyRecordRefused(kid, 'the stored public JWK does not match the private key')
  return { privateKey, publicKey, publicJwk }
}

function sameMembers (a: Record<string, unknown>, b: Record<string, unknown>): boolean {
  if (typeof a !== 'object' || a === null) return false
  const keys = Object.keys(b)
  return Object.keys(a).length === keys.length && keys.every(k => Object.hasOwn(a, k) && a[k] === b[k])
}

/**
 * The key-encryption secret: TOLLGATE_SECRET when set, else a random one generated once into the
 * data directory with mode 0600 (the embedded default). Replicas must share TOLLGATE_SECRET.
 */
export function resolveSecret (configured: string | undefined, dataDir: string): { secret: string, generated: boolean, file?: string } {
  if (configured !== undefined) return { secret: configured, generated: false }
  const dir = resolve(dataDir)
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  const file = join(dir, 'secret')
  let generated = false
  if (!existsSync(file)) {
    writeFileSync(file, randomBytes(32).toString('base64url') + '\n', { mode: 0o600, flag: 'wx' })
    generated = true
  }
  chmodSync(file, 0o600)
  return { secret: readFileSync(file, 'utf8').trim(), generated, file }
}
