// The JWT library, fast-jwt (the engine of @fastify/jwt), and the only place Tollgate calls it:
// one signer and one verifier per key, each made once per key from its PEM and pinned to the key's
// one algorithm, so signing and verifying stay synchronous and pay no per-request set-up; fast-jwt's
// own cache is never enabled (Tokens keeps the verification cache; no cacheKeyBuilder). Every
// FAST_JWT_* error becomes a TokenRefused with a description that names the rule, so none can
// surface as a 500. Never sees HTTP, never checks time (tokens/claims.ts does).
import type { KeyObject } from 'node:crypto'
import { createDecoder, createSigner, createVerifier, TokenError } from 'fast-jwt'
import { lowS, TokenRefused } from './precheck.js'

export type JwtVerifier = (token: string) => Record<string, unknown>
export type JwtSigner = (payload: Record<string, unknown>) => string

export interface VerifierRules {
  /** The key's one algorithm. */
  algorithm: string
  /** `typ` the header must carry (case-insensitive, `application/` optional); none when undefined. */
  typ?: string
  /** Exact issuer. */
  issuer: string
  /** When set, `aud` (string or array) must contain one of these. */
  audiences?: readonly string[]
  /** Claims that must be present (their types and values are the claims validator's). */
  required: readonly string[]
}

/** A verifier for one public key. Time is left to the claims validator, read against Tollgate's clock. */
export function keyVerifier (publicKey: KeyObject, rules: VerifierRules): JwtVerifier {
  return createVerifier({
    key: publicKey.export({ format: 'pem', type: 'spki' }) as string,
    algorithms: [rules.algorithm as any],
    ...(rules.typ !== undefined ? { checkTyp: rules.typ } : {}),
    allowedIss: rules.issuer,
    ...(rules.audiences !== undefined ? { allowedAud: [...rules.audiences] } : {}),
    requiredClaims: [...rules.required],
    ignoreExpiration: true,
    ignoreNotBefore: true,
    cache: false
  }) as JwtVerifier
}

/** A signer for one private key: header `{ alg, typ: at+jwt, kid }`, the claims as given (no added iat/exp). */
export function keySigner (privateKey: KeyObject, algorithm: string, kid: string): JwtSigner {
  const sign = createSigner({
    key: privateKey.export({ format: 'pem', type: 'pkcs8' }) as string,
    algorithm: algorithm as any,
    kid,
    header: { alg: algorithm, typ: 'at+jwt' }
  }) as JwtSigner
  if (algorithm !== 'ES256') return sign
  // OpenSSL writes either half of s; the pre-check accepts only the low one, so the signer writes it.
  return payload => {
    const token = sign(payload)
    const dot = token.lastIndexOf('.')
    return token.slice(0, dot + 1) + lowS(token.slice(dot + 1))
  }
}

const decoder = createDecoder({ complete: true }) as (token: string) => { header: Record<string, unknown>, payload: Record<string, unknown> }

/** The library's decoding, no verification: only to route a token to its issuer before it is verified. */
export function decodeUnverified (token: string): { header: Record<string, unknown>, payload: Record<string, unknown> } {
  try {
    return decoder(token)
  } catch (err) {
    throw refusal(err)
  }
}

const DESCRIPTIONS: Record<string, string> = {
  FAST_JWT_INVALID_TYPE: 'token type not accepted',
  FAST_JWT_INVALID_ALGORITHM: 'algorithm not allowed for this key',
  FAST_JWT_INVALID_SIGNATURE: 'invalid signature',
  FAST_JWT_VERIFY_ERROR: 'invalid signature',
  FAST_JWT_MISSING_SIGNATURE: 'token is not signed',
  FAST_JWT_MALFORMED: 'malformed token',
  FAST_JWT_INVALID_PAYLOAD: 'payload is not a JSON object',
  FAST_JWT_INVALID_CRIT_HEADER: 'unsupported critical header',
  FAST_JWT_INACTIVE: 'token not yet valid',
  FAST_JWT_EXPIRED: 'token expired',
  FAST_JWT_KEY_FETCHING_ERROR: 'unknown key',
  FAST_JWT_MISSING_KEY: 'unknown key',
  FAST_JWT_INVALID_KEY: 'unknown key',
  // Raised by misuse of the library rather than by a token: still the token's refusal, never a 500.
  FAST_JWT_INVALID_OPTION: 'token could not be verified',
  FAST_JWT_SIGN_ERROR: 'token could not be verified'
}

/**
 * The refusal for an error the library threw. Claim errors keep fast-jwt's own sentence (it names
 * the claim, never its value); the others get a fixed description. The library error is not kept
 * as the cause: some carry the decoded header or payload, which must not reach a log line.
 */
export function refusal (err: unknown): TokenRefused {
  if (!(err instanceof TokenError)) return new TokenRefused('token could not be verified')
  const code = err.code as string
  if (code === 'FAST_JWT_MISSING_REQUIRED_CLAIM' || code === 'FAST_JWT_INVALID_CLAIM_TYPE' || code === 'FAST_JWT_INVALID_CLAIM_VALUE') {
    return new TokenRefused(`claim rejected: ${err.message}`)
  }
  return new TokenRefused(DESCRIPTIONS[code] ?? `token refused (${code})`, code === 'FAST_JWT_EXPIRED')
}

/** Runs a library verifier; every library error becomes a TokenRefused. */
export function verifyWith (verifier: JwtVerifier, token: string): Record<string, unknown> {
  try {
    return verifier(token)
  } catch (err) {
    throw refusal(err)
  }
}
