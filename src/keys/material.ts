// Key material: generation, RFC 7638 thumbprints, and AES-256-GCM encryption of private keys
// under the key-encryption secret. Pure functions over node:crypto; no state, no store.
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

export function publicKeyFromJwk (jwk: Record<string, unknown>): KeyObject {
  const { kid, alg, use, key_ops: _ops, ...material } = jwk
  return createPublicKey({ key: material as any, format: 'jwk' })
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

export function decryptPrivateKey (blob: string, kid: string, kek: Buffer): KeyObject {
  const [version, iv, body, tag] = blob.split('.')
  if (version !== 'v1' || iv === undefined || body === undefined || tag === undefined) throw new Error(`key ${kid}: unknown encryption format`)
  const decipher = createDecipheriv('aes-256-gcm', kek, Buffer.from(iv, 'base64url'))
  decipher.setAAD(Buffer.from(kid))
  decipher.setAuthTag(Buffer.from(tag, 'base64url'))
  let der: Buffer
  try {
    der = Buffer.concat([decipher.update(Buffer.from(body, 'base64url')), decipher.final()])
  } catch (err) {
    throw new Error(`key ${kid}: cannot decrypt the key set with this secret (is TOLLGATE_SECRET the one the keys were created with?)`, { cause: err })
  }
  return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' })
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
