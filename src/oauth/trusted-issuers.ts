// Trusted issuers (CONTRACT §2): verifying tokens from configured identity providers, used ONLY as
// subject tokens of a token exchange, never at /validate or /call. Owns each issuer's remote JWKS
// cache: one shared in-flight fetch, Cache-Control max-age within bounds, the last good key set kept
// when a refetch fails, at most one refetch per interval for an unknown `kid`, a request timeout.
// The key is chosen by `kid` from the fetched set only, with the issuer's algorithm allowlist; the
// token's own header never names a key (no jku/jwk/x5u/x5c) or an extension (no crit). Verification
// is the same stack as Tollgate's own tokens: the pre-check (without the low-S rule: identity
// providers' signers write either half), @fastify/jwt with one verifier per fetched key, and the one
// claims validator. Knows nothing about HTTP routes; it fetches the configured jwksUri and nothing else.
import { createPublicKey, type JsonWebKey } from 'node:crypto'
import type { TrustedIssuerConfig } from '../config.js'
import { OAuthError } from '../errors.js'
import { validateClaims } from '../tokens/claims.js'
import { decodeUnverified, keyVerifier, verifyWith, type JwtVerifier } from '../tokens/jwt.js'
import { precheck, TokenRefused } from '../tokens/precheck.js'

/** A JSON Web Key as an issuer publishes it (RFC 7517). */
type JWK = JsonWebKey & { kid?: string, alg?: string, use?: string, kty?: string, crv?: string, x?: string, n?: string }

/** RFC 8725 §3.11 / RFC 9068: a plain JWT (typ absent or JWT) or an access token (at+jwt). */
const ACCEPTED_TYP = new Set(['jwt', 'at+jwt', 'application/jwt', 'application/at+jwt'])
/** Algorithms a key type can serve; the token's `alg` must also be in the issuer's allowlist. */
const ALGS_FOR_KEY: Record<string, readonly string[]> = {
  'EC:P-256': ['ES256'],
  'EC:P-384': ['ES384'],
  RSA: ['RS256', 'PS256'],
  'OKP:Ed25519': ['EdDSA']
}
const MAX_JWKS_BYTES = 256 * 1024

export interface TrustedIssuersOptions {
  issuers: readonly TrustedIssuerConfig[]
  /** Seconds. */
  leeway: number
  /** Seconds: exp − iat above this is refused. */
  maxLifetime: number
  clock?: () => number
  /** JWKS request timeout (ms). */
  fetchTimeoutMs?: number
  /** Cache lifetime when the JWKS answer has no max-age (s), and its bounds (s). */
  defaultMaxAge?: number
  minMaxAge?: number
  maxMaxAge?: number
  /** An unknown `kid`, or a failed fetch, triggers at most one refetch per this interval (ms). */
  refetchIntervalMs?: number
}

export interface TrustedToken {
  issuer: string
  claims: Record<string, unknown> & { sub: string, exp: number, iat: number }
}

/** Thrown when a JWKS cannot be fetched and no earlier keys are cached: a dependency is down. */
export class JwksUnavailable extends OAuthError {
  constructor (issuer: string, options?: ErrorOptions) {
    super('temporarily_unavailable', `the keys of trusted issuer ${issuer} cannot be fetched`, 503, options)
  }
}

interface KeySet {
  keys: readonly JWK[]
  /** Epoch ms after which the set is refetched (the set is still used if that fails). */
  expiresAt: number
}

/** One issuer's JWKS: fetched lazily, cached by its max-age, last good set kept on failure. */
export class RemoteJwks {
  #set: KeySet | undefined
  #inflight: Promise<KeySet | undefined> | undefined
  /** Epoch ms of the last fetch attempt (success or not): paces refetches. */
  #lastAttempt = -Infinity
  /** The library's verifier of each fetched key and algorithm, made once. */
  readonly #verifiers = new Map<string, JwtVerifier | undefined>()

  constructor (
    readonly issuer: string,
    readonly uri: string,
    readonly options: Required<Omit<TrustedIssuersOptions, 'issuers' | 'leeway' | 'maxLifetime'>>,
    readonly audiences: readonly string[] = []
  ) {}

  /** A verifier for the key `kid` usable with `alg`, or undefined when the (fresh or last good) set has none. */
  async verifier (kid: string | undefined, alg: string): Promise<JwtVerifier | undefined> {
    const now = this.options.clock()
    let set = this.#set
    if (set === undefined || now >= set.expiresAt) set = await this.#refresh(set === undefined)
    let jwk = set === undefined ? undefined : pick(set.keys, kid, alg)
    // An unknown kid may be a key the issuer just rotated in: refetch, but not more than once per interval.
    if (jwk === undefined && now - this.#lastAttempt >= this.options.refetchIntervalMs) {
      set = await this.#refresh(false)
      jwk = set === undefined ? undefined : pick(set.keys, kid, alg)
    }
    if (set === undefined) throw new JwksUnavailable(this.issuer)
    if (jwk === undefined) return undefined
    const cacheKey = `${jwk.kid ?? ''}\0${alg}\0${jwk.kty ?? ''}\0${jwk.x ?? jwk.n ?? ''}`
    if (this.#verifiers.has(cacheKey)) return this.#verifiers.get(cacheKey)
    let verifier: JwtVerifier | undefined
    try {
      const { kid: _kid, alg: _alg, use: _use, key_ops: _ops, ...material } = jwk as JWK & { key_ops?: unknown }
      verifier = keyVerifier(createPublicKey({ key: material, format: 'jwk' }), {
        algorithm: alg,
        issuer: this.issuer,
        audiences: this.audiences,
        required: ['sub', 'exp', 'iat']
      })
    } catch {
      verifier = undefined // a key the library or node:crypto cannot use is no key
    }
    if (this.#verifiers.size > 100) this.#verifiers.clear()
    this.#verifiers.set(cacheKey, verifier)
    return verifier
  }

  /**
   * Fetches the set, sharing one in-flight request between callers. On failure keeps (and
   * returns) the last good set; `mustTry` forces an attempt when nothing is cached, otherwise
   * failed attempts are paced by the refetch interval so an outage is not hammered.
   */
  async #refresh (mustTry: boolean): Promise<KeySet | undefined> {
    const now = this.options.clock()
    if (!mustTry && this.#inflight === undefined && now - this.#lastAttempt < this.options.refetchIntervalMs) return this.#set
    this.#inflight ??= (async () => {
      this.#lastAttempt = now
      try {
        this.#set = await this.#fetch()
      } catch {
        // Keep serving the last good keys (if any); the caller decides what "none" means.
      } finally {
        this.#inflight = undefined
      }
      return this.#set
    })()
    return await this.#inflight
  }

  async #fetch (): Promise<KeySet> {
    const res = await fetch(this.uri, {
      headers: { accept: 'application/json, application/jwk-set+json' },
      redirect: 'error',
      signal: AbortSignal.timeout(this.options.fetchTimeoutMs)
    })
    if (res.status !== 200) {
      await res.body?.cancel()
      throw new Error(`JWKS answered ${res.status}`)
    }
    const length = Number(res.headers.get('content-length') ?? '0')
    if (length > MAX_JWKS_BYTES) {
      await res.body?.cancel()
      throw new Error('JWKS too large')
    }
    const text = await res.text()
    if (text.length > MAX_JWKS_BYTES) throw new Error('JWKS too large')
    const doc = JSON.parse(text) as { keys?: unknown }
    if (!Array.isArray(doc.keys)) throw new Error('JWKS has no keys array')
    // Only public signature keys: never a symmetric key (an HMAC secret would allow forgery), nor a private one.
    const keys = doc.keys.filter((k): k is JWK => typeof k === 'object' && k !== null &&
      typeof (k as JWK).kty === 'string' && (k as JWK).kty !== 'oct' && !('d' in k) &&
      ((k as JWK).use === undefined || (k as JWK).use === 'sig'))
    return { keys, expiresAt: this.options.clock() + this.#maxAge(res.headers.get('cache-control')) * 1000 }
  }

  #maxAge (cacheControl: string | null): number {
    const { defaultMaxAge, minMaxAge, maxMaxAge } = this.options
    const m = cacheControl === null ? null : /(?:^|[,\s])max-age=(\d+)/i.exec(cacheControl)
    const noCache = cacheControl !== null && /(?:^|[,\s])(no-store|no-cache)(?:$|[,\s=])/i.test(cacheControl)
    const value = noCache ? 0 : m === null ? defaultMaxAge : Number(m[1])
    return Math.min(maxMaxAge, Math.max(minMaxAge, value))
  }
}

function pick (keys: readonly JWK[], kid: string | undefined, alg: string): JWK | undefined {
  const usable = keys.filter(k => {
    const type = k.kty === 'RSA' ? 'RSA' : `${k.kty}:${k.crv ?? ''}`
    if (!(ALGS_FOR_KEY[type] ?? []).includes(alg)) return false
    // A key pinned to one algorithm serves only that one.
    return k.alg === undefined || k.alg === alg
  })
  if (kid !== undefined) return usable.find(k => k.kid === kid)
  // No kid: acceptable only when the set leaves no choice.
  return usable.length === 1 ? usable[0] : undefined
}

export class TrustedIssuers {
  readonly #entries = new Map<string, { config: TrustedIssuerConfig, jwks: RemoteJwks }>()
  readonly #opts: TrustedIssuersOptions
  readonly #clock: () => number

  constructor (options: TrustedIssuersOptions) {
    this.#opts = options
    this.#clock = options.clock ?? Date.now
    const jwksOptions = {
      clock: this.#clock,
      fetchTimeoutMs: options.fetchTimeoutMs ?? 5000,
      defaultMaxAge: options.defaultMaxAge ?? 300,
      minMaxAge: options.minMaxAge ?? 60,
      maxMaxAge: options.maxMaxAge ?? 86400,
      refetchIntervalMs: options.refetchIntervalMs ?? 30_000
    }
    for (const config of options.issuers) {
      this.#entries.set(config.issuer, { config, jwks: new RemoteJwks(config.issuer, config.jwksUri, jwksOptions, config.audiences) })
    }
  }

  has (issuer: string): boolean {
    return this.#entries.has(issuer)
  }

  get size (): number {
    return this.#entries.size
  }

  /**
   * Verifies a token from a trusted issuer. Throws OAuthError invalid_request (RFC 8693 §2.2.2:
   * the subject token is invalid or unacceptable) or JwksUnavailable (503).
   */
  async verify (token: string): Promise<TrustedToken> {
    const refuse = (why: string): OAuthError => new OAuthError('invalid_request', `subject_token is not acceptable: ${why}`, 400)
    let claims: TrustedToken['claims']
    let config: TrustedIssuerConfig
    try {
      const header = precheck(token, { lowS: false })
      // The library decodes, unverified, only to find the issuer whose keys verify the token.
      const { payload } = decodeUnverified(token)
      const entry = typeof payload.iss === 'string' ? this.#entries.get(payload.iss) : undefined
      if (entry === undefined) throw new TokenRefused('issuer not trusted')
      config = entry.config
      if (header.typ !== undefined && (typeof header.typ !== 'string' || !ACCEPTED_TYP.has(header.typ.toLowerCase()))) throw new TokenRefused('token type not accepted')
      const alg = header.alg
      if (typeof alg !== 'string' || !(config.algorithms as readonly string[]).includes(alg)) throw new TokenRefused(`algorithm ${String(alg)} not allowed for this issuer`)
      if (header.kid !== undefined && typeof header.kid !== 'string') throw new TokenRefused('unknown key')
      const verifier = await entry.jwks.verifier(header.kid as string | undefined, alg)
      if (verifier === undefined) throw new TokenRefused('unknown key')
      const verified = verifyWith(verifier, token)
      const { leeway, maxLifetime } = this.#opts
      claims = validateClaims<TrustedToken['claims']>(verified, this.#clock() / 1000, { leeway, maxLifetime, strings: ['sub'] })
    } catch (err) {
      if (err instanceof TokenRefused) throw refuse(err.message)
      throw err
    }
    return { issuer: config.issuer, claims }
  }
}
