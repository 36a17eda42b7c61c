// The one claims validator: the rules every accepted token's claims follow, for Tollgate's own
// tokens and trusted issuers' alike (CONTRACT §2, §3). The time rules live here and nowhere else,
// read against Tollgate's clock (injectable): fast-jwt reads Date.now() or a timestamp fixed when
// its verifier is made, and has no rule for `iat` in the future or for exp − iat. Signature,
// algorithm, `typ`, `iss` and `aud` values are the library's (tokens/jwt.ts). Throws TokenRefused.
import { TokenRefused } from './precheck.js'

export interface ClaimRules {
  /** Seconds of clock skew allowed on every time rule. */
  leeway: number
  /** Seconds: a token whose exp − iat exceeds this is refused. */
  maxLifetime: number
  /** Claims that must be non-empty strings. */
  strings: readonly string[]
}

function isTime (value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value)
}

/** Checks `claims` at `now` (seconds); returns them typed when every rule holds. */
export function validateClaims<T extends { exp: number, iat: number, nbf?: number }> (claims: Record<string, unknown>, now: number, rules: ClaimRules): T {
  for (const name of rules.strings) {
    const value = claims[name]
    if (typeof value !== 'string' || value === '') throw new TokenRefused(`claim ${name} missing or not a string`)
  }
  if (!isTime(claims.exp)) throw new TokenRefused('claim exp missing or not a number')
  if (!isTime(claims.iat)) throw new TokenRefused('claim iat missing or not a number')
  if (claims.nbf !== undefined && !isTime(claims.nbf)) throw new TokenRefused('claim nbf is not a number')
  const { leeway } = rules
  if (claims.iat > now + leeway) throw new TokenRefused('token issued in the future')
  if (claims.nbf !== undefined && claims.nbf > now + leeway) throw new TokenRefused('token not yet valid')
  if (claims.exp - claims.iat > rules.maxLifetime) throw new TokenRefused('token lifetime exceeds the maximum')
  if (expired(claims.exp, now, leeway)) throw new TokenRefused('token expired', true)
  return claims as T
}

/** The expiry rule alone, for a verification cache hit: `exp` at or before now − leeway. */
export function expired (exp: number, now: number, leeway: number): boolean {
  return exp <= now - leeway
}
