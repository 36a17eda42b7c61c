// The JWT library, @fastify/jwt (on fast-jwt), and the only place Tollgate calls it: one plugin
// decorator per key, made when the key is first used and kept while the key is, so its signer and
// verifier are built once, pinned to the key's one algorithm, and signing and verifying stay
// synchronous with no per-request set-up. The plugin's app-wide `app.jwt` holds one static key and
// rebuilds fast-jwt's signer or verifier on every call given another (measured, ES256: a signature
// 55 → 810 µs, a verification 100 → 330 µs), so the plugin is applied to each key instead
// (`pluginFor`). Its own caches are never enabled (Tokens keeps the verification cache; no
// cacheKeyBuilder). Every FAST_JWT_* error, and the plugin's own, becomes a TokenRefused with a
// description that names the rule, so none can surface as a 500. Never sees HTTP, never checks
// time (tokens/claims.ts does, against Tollgate's clock).
import { createPublicKey, type KeyObject } from 'node:crypto'
import { fastifyJwt, type FastifyJWTOptions, type JWT } from '@fastify/jwt'
import type { FastifyInstance } from 'fastify'
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

/**
 * @fastify/jwt's decorator (`sign`, `verify`, `decode`) for these options: the plugin run on a scope
 * that keeps only its `jwt` decorator (its request and reply decorators are not used: Tollgate reads
 * tokens itself). The plugin builds its signer and verifier here, once, from the key in `secret`.
 */
export function pluginFor (options: FastifyJWTOptions): JWT {
  let jwt: JWT | undefined
  let failure: Error | undefined
  const scope = {
    decorate (name: string, value: JWT) { if (name === 'jwt') jwt = value },
    decorateRequest () {},
    decorateReply () {}
  }
  fastifyJwt(scope as unknown as FastifyInstance, options, err => { failure = err })
  if (failure !== undefined) throw failure
  if (jwt === undefined) throw new Error('@fastify/jwt gave no decorator')
  return jwt
}

/**
 * A verifier for one public key. Time is left to the claims validator, read against Tollgate's clock.
 * A key the library refuses (a type it does not support, or not one for the algorithm) refuses the
 * token that named it: a TokenRefused, not a 500.
 */
export function keyVerifier (publicKey: KeyObject, rules: VerifierRules): JwtVerifier {
  let jwt: JWT
  try {
    jwt = verifierPlugin(publicKey, rules)
  } catch (err) {
    throw refusal(err)
  }
  return token => jwt.verify<Record<string, unknown>>(token)
}

function verifierPlugin (publicKey: KeyObject, rules: VerifierRules): JWT {
  return pluginFor({
    secret: { public: publicKey.export({ format: 'pem', type: 'spki' }) as string },
    verify: {
      algorithms: [rules.algorithm as any],
      ...(rules.typ !== undefined ? { checkTyp: rules.typ } : {}),
      allowedIss: rules.issuer,
      ...(rules.audiences !== undefined ? { allowedAud: [...rules.audiences] } : {}),
      requiredClaims: [...rules.required],
      ignoreExpiration: true,
      ignoreNotBefore: true,
      cache: false
    }
  })
}

/** A signer for one private key: header `{ alg, typ: at+jwt, kid }`, the claims as given (no added iat/exp). */
export function keySigner (privateKey: KeyObject, algorithm: string, kid: string): JwtSigner {
  const jwt = pluginFor({
    secret: {
      private: privateKey.export({ format: 'pem', type: 'pkcs8' }) as string,
      public: createPublicKey(privateKey).export({ format: 'pem', type: 'spki' }) as string
    },
    sign: { algorithm: algorithm as any, kid, header: { alg: algorithm, typ: 'at+jwt' } as any },
    verify: { algorithms: [algorithm as any], cache: false }
  })
  if (algorithm !== 'ES256') return payload => jwt.sign(payload)
  // OpenSSL writes either half of s; the pre-check accepts only the low one, so the signer writes it.
  return payload => {
    const token = jwt.sign(payload)
    const dot = token.lastIndexOf('.')
    return token.slice(0, dot + 1) + lowS(token.slice(dot + 1))
  }
}

/** Decoding only: the plugin needs a key to exist, and this one is never asked for (nothing is verified). */
const decoder = pluginFor({ secret: { public: () => { throw new Error('never verifies') } }, decode: { complete: true } })

/** The library's decoding, no verification: only to route a token to its issuer before it is verified. */
export function decodeUnverified (token: string): { header: Record<string, unknown>, payload: Record<string, unknown> } {
  try {
    const decoded = decoder.decode<{ header: Record<string, unknown>, payload: Record<string, unknown> }>(token)
    if (decoded === null) throw new TokenRefused('malformed token')
    return decoded
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
  FAST_JWT_SIGN_ERROR: 'token could not be verified',
  // The plugin's own (its decode wraps fast-jwt's malformed-token errors in this one).
  FST_JWT_AUTHORIZATION_TOKEN_INVALID: 'malformed token',
  FST_JWT_AUTHORIZATION_TOKEN_EXPIRED: 'token expired',
  FST_JWT_AUTHORIZATION_TOKEN_UNTRUSTED: 'token refused'
}

const CLAIM_CODES = new Set(['FAST_JWT_MISSING_REQUIRED_CLAIM', 'FAST_JWT_INVALID_CLAIM_TYPE', 'FAST_JWT_INVALID_CLAIM_VALUE'])

/**
 * The refusal for an error the library threw. Claim errors keep fast-jwt's own sentence (it names
 * the claim, never its value); the others get a fixed description. The library error is not kept
 * as the cause: some carry the decoded header or payload, which must not reach a log line.
 */
export function refusal (err: unknown): TokenRefused {
  if (err instanceof TokenRefused) return err
  const code = (err as { code?: unknown } | null)?.code
  if (typeof code !== 'string' || !(code.startsWith('FAST_JWT_') || code.startsWith('FST_JWT_'))) return new TokenRefused('token could not be verified')
  if (CLAIM_CODES.has(code)) return new TokenRefused(`claim rejected: ${(err as Error).message}`)
  return new TokenRefused(DESCRIPTIONS[code] ?? `token refused (${code})`, code === 'FAST_JWT_EXPIRED' || code === 'FST_JWT_AUTHORIZATION_TOKEN_EXPIRED')
}

/** Runs a library verifier; every library error becomes a TokenRefused. */
export function verifyWith (verifier: JwtVerifier, token: string): Record<string, unknown> {
  try {
    return verifier(token)
  } catch (err) {
    throw refusal(err)
  }
}
