// Signs a compact JWS with node:crypto alone, for tests that need a token Tollgate's signer would
// never write (another `typ`, another `kid`). ES256 signatures are written in low-S form, as
// Tollgate's own are, so the only thing unusual about such a token is what the test chose.
import { sign, type KeyObject } from 'node:crypto'

const P256_ORDER = BigInt('0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551')

/** The low-S twin of an ES256 signature (R || S): s' = n − s when s > n/2. */
export function lowS (signature: Buffer): Buffer {
  const s = BigInt('0x' + signature.subarray(32).toString('hex'))
  if (s <= P256_ORDER / 2n) return signature
  return Buffer.concat([signature.subarray(0, 32), Buffer.from((P256_ORDER - s).toString(16).padStart(64, '0'), 'hex')])
}

/** The high-S twin of an ES256 signature: the same (r, s) spelled (r, n − s); verifies just as well. */
export function highS (signature: Buffer): Buffer {
  const s = BigInt('0x' + signature.subarray(32).toString('hex'))
  if (s > P256_ORDER / 2n) return signature
  return Buffer.concat([signature.subarray(0, 32), Buffer.from((P256_ORDER - s).toString(16).padStart(64, '0'), 'hex')])
}

export function signCompact (header: Record<string, unknown>, payload: Record<string, unknown>, alg: 'ES256' | 'EdDSA' | 'RS256', key: KeyObject): string {
  const input = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`
  const data = Buffer.from(input)
  const signature = alg === 'ES256'
    ? lowS(sign('sha256', data, { key, dsaEncoding: 'ieee-p1363' }))
    : alg === 'EdDSA' ? sign(null, data, key) : sign('sha256', data, key)
  return `${input}.${signature.toString('base64url')}`
}
