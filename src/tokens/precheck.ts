// The pre-check: the strictness fast-jwt lacks, applied before the library sees a token, and nothing
// the library already does. It owns the 8 KiB cap, the compact shape (exactly three non-empty
// canonical base64url segments, so one token has one spelling), a UTF-8 JSON object header and a
// UTF-8 payload, the header members Tollgate never honours (`crit`, `jku`, `jwk`, `x5u`, `x5c`,
// `b64`, and `enc` / `cty`: no JWE, no nested JWT), and for Tollgate's own ES256 tokens the low-S
// form of the signature. It never checks a signature, an algorithm against a key, or a claim: those
// are the library's (tokens/jwt.ts) and the claims validator's (tokens/claims.ts).
import { isUtf8 } from 'node:buffer'

export const MAX_TOKEN_LENGTH = 8192

/** A token refused by a rule of the pre-check, the library or the claims validator; the message names the rule. */
export class TokenRefused extends Error {
  constructor (message: string, readonly expired = false) {
    super(message)
    this.name = 'TokenRefused'
  }
}

export interface PrecheckOptions {
  /**
   * Refuse an ES256 signature whose s is above n/2. On for Tollgate's own tokens (its signer always
   * writes low-S); off for trusted issuers, whose signers (like most) write either half.
   */
  lowS: boolean
}

/** Header members refused outright, with why (RFC 8725 §3.10, RFC 7515 §4.1.11, RFC 7797, SECURITY.md). */
const REFUSED_MEMBERS: ReadonlyArray<[string, string]> = [
  ['crit', 'unsupported critical header'], // we understand no extension; fast-jwt ignores a falsy crit
  ['b64', 'unencoded payloads are not accepted'],
  ['enc', 'JWE is not accepted'],
  ['cty', 'nested or typed content is not accepted'],
  ['jku', 'header jku is not accepted'],
  ['jwk', 'header jwk is not accepted'],
  ['x5u', 'header x5u is not accepted'],
  ['x5c', 'header x5c is not accepted']
]

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
const SEGMENT = /^[A-Za-z0-9_-]+$/
const utf8 = new TextDecoder('utf-8', { fatal: true })

/** (n − 1) / 2 for P-256's group order n: a low-S signature has s at most this. */
export const P256_HALF_ORDER = Buffer.from('7fffffff800000007fffffffffffffffde737d56d38bcf4279dce5617e3192a8', 'hex')
const P256_ORDER_BYTES = Buffer.from('ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551', 'hex')

/**
 * Canonical unpadded base64url: only the alphabet, never a length of 4k+1, and zero spare bits in the
 * last character. Both libraries would decode the other spellings to the same bytes.
 */
function canonical (segment: string): boolean {
  if (!SEGMENT.test(segment)) return false
  const rest = segment.length % 4
  if (rest === 0) return true
  if (rest === 1) return false
  const last = ALPHABET.indexOf(segment[segment.length - 1] as string)
  return (last & (rest === 2 ? 0x0f : 0x03)) === 0
}

/** Checks the token's shape and header; returns the decoded header (for the key lookup by `kid`). */
export function precheck (token: string, options: PrecheckOptions): Record<string, unknown> {
  if (token.length > MAX_TOKEN_LENGTH) throw new TokenRefused('token too large')
  const first = token.indexOf('.')
  const second = token.indexOf('.', first + 1)
  if (first <= 0 || second <= first + 1 || second === token.length - 1 || token.indexOf('.', second + 1) !== -1) {
    throw new TokenRefused('token is not a compact JWS')
  }
  const headerSegment = token.slice(0, first)
  const payloadSegment = token.slice(first + 1, second)
  const signatureSegment = token.slice(second + 1)
  if (!canonical(headerSegment)) throw new TokenRefused('header is not canonical base64url')
  if (!canonical(payloadSegment)) throw new TokenRefused('payload is not canonical base64url')
  if (!canonical(signatureSegment)) throw new TokenRefused('signature is not canonical base64url')

  let header: unknown
  try {
    header = JSON.parse(utf8.decode(Buffer.from(headerSegment, 'base64url')))
  } catch {
    throw new TokenRefused('header is not UTF-8 JSON')
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw new TokenRefused('header is not a JSON object')
  const h = header as Record<string, unknown>
  for (const [name, why] of REFUSED_MEMBERS) if (name in h) throw new TokenRefused(why)
  // fast-jwt decodes the payload leniently (invalid bytes become U+FFFD): two byte strings, one claim set.
  if (!isUtf8(Buffer.from(payloadSegment, 'base64url'))) throw new TokenRefused('payload is not UTF-8')

  if (options.lowS && h.alg === 'ES256') {
    // RFC 7518 §3.4: R || S, 32 octets each. (n − s) verifies as well as s: only the low one is accepted.
    const signature = Buffer.from(signatureSegment, 'base64url')
    if (signature.length !== 64) throw new TokenRefused('ES256 signature is not 64 octets')
    if (Buffer.compare(signature.subarray(32), P256_HALF_ORDER) > 0) throw new TokenRefused('ES256 signature is not in low-S form')
  }
  return h
}

/** Rewrites an ES256 signature (R || S, base64url) to its low-S twin when s is above n/2. */
export function lowS (signatureSegment: string): string {
  const signature = Buffer.from(signatureSegment, 'base64url')
  if (signature.length !== 64 || Buffer.compare(signature.subarray(32), P256_HALF_ORDER) <= 0) return signatureSegment
  // s' = n − s, byte by byte from the least significant end (n > s, so no borrow is left over).
  let borrow = 0
  for (let i = 31; i >= 0; i--) {
    const d = (P256_ORDER_BYTES[i] as number) - (signature[32 + i] as number) - borrow
    borrow = d < 0 ? 1 : 0
    signature[32 + i] = d & 0xff
  }
  return signature.toString('base64url')
}
