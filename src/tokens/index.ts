// Access tokens: minting (RFC 9068 profile) and the one verification path every protected route
// uses, in layers (STYLE.md): the pre-check (precheck.ts), the library with the key named by `kid`
// (jwt.ts: @fastify/jwt, one signer and one verifier per key), the claims validator (claims.ts), then
// revocation (#checkLive: the one place, on cache hits too).
// Verification keeps a bounded cache keyed by the exact token string, which skips all of that on a
// repeat; a cache hit still checks time, key presence and revocation, so the cache never outlives
// `exp`, a removed key or a revocation. Knows nothing about HTTP.
import { randomUUID, type KeyObject } from 'node:crypto'
import { InvalidToken, StoreUnavailable } from '../errors.js'
import type { KeyManager, VerificationKey } from '../keys/index.js'
import type { Store } from '../store/index.js'
import { expired, validateClaims } from './claims.js'
import { keySigner, keyVerifier, verifyWith, type JwtSigner, type JwtVerifier } from './jwt.js'
import { MAX_TOKEN_LENGTH, precheck, TokenRefused } from './precheck.js'


export interface QuotaClaim {
  limit: number
  /** Seconds. */
  window: number
}

export interface AccessClaims {
  iss: string
  sub: string
  aud: string | string[]
  exp: number
  iat: number
  nbf: number
  jti: string
  client_id: string
  scope: string
  quota?: QuotaClaim
  act?: { sub: string, act?: unknown }
  /** Refresh-family id, when minted from a refresh-token family (revoking the family denies it). */
  fid?: string
  /** RFC 9449 §6.1: the DPoP key the token is bound to (its RFC 7638 thumbprint). */
  cnf?: { jkt: string }
  [claim: string]: unknown
}

/** The verified caller of a request. */
export interface Principal {
  sub: string
  clientId: string
  scope: string
  scopes: ReadonlySet<string>
  aud: readonly string[]
  jti: string
  exp: number
  claims: Readonly<AccessClaims>
}

export interface IssueRequest {
  sub: string
  clientId: string
  scopes: readonly string[]
  audiences: readonly string[]
  /** Lifetime in seconds. */
  ttl: number
  quota?: QuotaClaim
  act?: AccessClaims['act']
  fid?: string
  claims?: Record<string, unknown>
  /** A token for a tool to receive (proxy/downstream-token.ts): marked so no Tollgate endpoint accepts it. */
  downstream?: boolean
  /** RFC 9449: binds the token to this DPoP key thumbprint (`cnf.jkt`). */
  jkt?: string
}

/**
 * The claim that marks a downstream token. A tool receives it as its own access token (RFC 9068
 * `at+jwt`, its audience); Tollgate refuses it everywhere, so whoever sees it (the tool, its logs,
 * the link) cannot replay it at /call, /validate, /quota, /revoke or a token exchange.
 */
export const TOKEN_USE_CLAIM = 'token_use'
export const DOWNSTREAM_USE = 'downstream'

export interface IssuedToken {
  token: string
  claims: AccessClaims
}

export interface TokensOptions {
  keys: KeyManager
  store: Store
  issuer: string
  /** Seconds. */
  leeway: number
  /** Seconds: a token whose exp − iat exceeds this is refused. */
  maxLifetime: number
  clock?: () => number
  cacheSize?: number
  /** How often revocations made by other processes are pulled in (ms). */
  revocationSyncMs?: number
  /** How stale the revocation list may get (store unreachable) before verification fails closed (ms). */
  revocationMaxStalenessMs?: number
}

/** Claims every Tollgate access token carries (RFC 9068 §2.2 and CONTRACT §2). */
const REQUIRED = ['iss', 'sub', 'aud', 'exp', 'iat', 'jti', 'client_id'] as const
const STRING_CLAIMS = ['iss', 'sub', 'jti', 'client_id'] as const

/** A TokenRefused as the 401 every protected route answers. */
export function invalidToken (err: TokenRefused): InvalidToken {
  return new InvalidToken(err.message, err.expired ? 'token_expired' : 'invalid_token')
}

interface CacheEntry {
  token: string
  principal: Principal
  kid: string
}

/**
 * The verification cache's key for a token: its last 43 characters, the end of the signature (258
 * bits). Every request brings a fresh string, whose hash a Map lookup computes over all of it:
 * hashing these instead of the whole token (500 characters and more) was the largest part of a
 * cache probe. The whole token is compared on a hit, so a hit is exact.
 */
const CACHE_KEY_CHARS = 43

function cacheKey (token: string): string {
  return token.length > CACHE_KEY_CHARS ? token.slice(-CACHE_KEY_CHARS) : token
}

export class Tokens {
  readonly #opts: TokensOptions
  readonly #clock: () => number
  readonly #cache = new Map<string, CacheEntry>()
  readonly #cacheSize: number
  readonly revocations: RevocationList
  /**
   * Client id → epoch seconds: that client's tokens issued before it are refused (Infinity: all of
   * them, while the client is disabled or deleted). Kept by the client registry's sync.
   */
  clientDenials: ReadonlyMap<string, number> = new Map()
  /**
   * The library's signer and verifier of each key (an @fastify/jwt decorator per key), made once per
   * key (keyed by its KeyObject, which the key manager loads once per kid and drops when the key is removed).
   */
  readonly #verifiers = new WeakMap<KeyObject, JwtVerifier>()
  readonly #signers = new WeakMap<KeyObject, JwtSigner>()

  constructor (options: TokensOptions) {
    this.#opts = options
    this.#clock = options.clock ?? Date.now
    this.#cacheSize = options.cacheSize ?? 10_000
    this.revocations = new RevocationList(options.store, this.#clock, options.revocationSyncMs ?? 250, options.revocationMaxStalenessMs ?? 5000)
  }

  get issuer (): string {
    return this.#opts.issuer
  }

  issue (req: IssueRequest): IssuedToken {
    const key = this.#opts.keys.signingKey()
    const now = Math.floor(this.#clock() / 1000)
    const claims: AccessClaims = {
      ...req.claims,
      iss: this.#opts.issuer,
      sub: req.sub,
      aud: req.audiences.length === 1 ? req.audiences[0] as string : [...req.audiences],
      exp: now + Math.max(1, Math.floor(req.ttl)),
      iat: now,
      nbf: now,
      jti: randomUUID(),
      client_id: req.clientId,
      scope: req.scopes.join(' ')
    }
    if (req.quota !== undefined) claims.quota = req.quota
    if (req.act !== undefined) claims.act = req.act
    if (req.fid !== undefined) claims.fid = req.fid
    if (req.jkt !== undefined) claims.cnf = { jkt: req.jkt }
    if (req.downstream === true) (claims as Record<string, unknown>)[TOKEN_USE_CLAIM] = DOWNSTREAM_USE
    let sign = this.#signers.get(key.privateKey)
    if (sign === undefined) {
      sign = keySigner(key.privateKey, key.alg, key.kid)
      this.#signers.set(key.privateKey, sign)
    }
    return { token: sign(claims), claims }
  }

  /** Verifies a Tollgate access token. Throws InvalidToken (401) or StoreUnavailable (503). */
  verify (token: string): Principal {
    if (token.length > MAX_TOKEN_LENGTH) throw new InvalidToken('token too large')
    this.revocations.assertFresh()
    const now = this.#clock()
    // Keyed by the end of the token and compared whole (cacheKey), which is cheaper than a SHA-256
    // per request and exact. Revocation is still checked by jti on a hit.
    const key = cacheKey(token)
    const hit = this.#hit(key, token)
    if (hit !== undefined) {
      if (this.#opts.keys.verificationKey(hit.kid) === undefined) {
        this.#cache.delete(key)
      } else {
        this.#checkLive(hit.principal.claims, now)
        return hit.principal
      }
    }
    const { principal, kid } = this.#verifyFresh(token, now)
    if (this.#cache.size >= this.#cacheSize) {
      // Evict the oldest entry (Map keeps insertion order): bounded memory under any token mix.
      const oldest = this.#cache.keys().next()
      if (oldest.done !== true) this.#cache.delete(oldest.value)
    }
    this.#cache.set(key, { token, principal, kid })
    return principal
  }

  /** The cache entry of exactly this token. */
  #hit (key: string, token: string): CacheEntry | undefined {
    const hit = this.#cache.get(key)
    return hit !== undefined && hit.token === token ? hit : undefined
  }

  /**
   * The principal of a token verified before, when every rule `verify` applies to a cache hit
   * still holds (revocation list fresh, key still published, not expired, not revoked); otherwise
   * undefined, and the caller takes the full path through `verify`, which says why. Never throws.
   */
  peek (token: string): Principal | undefined {
    const hit = this.#hit(cacheKey(token), token)
    if (hit === undefined || this.revocations.stale()) return undefined
    const claims = hit.principal.claims
    if (this.#opts.keys.verificationKey(hit.kid) === undefined) return undefined
    if (expired(claims.exp, this.#clock() / 1000, this.#opts.leeway) || this.revocations.denies(claims) || this.#clientDenied(claims)) return undefined
    return hit.principal
  }

  /** Expiry and revocation, checked on every use, cached or not: the one place a revoked token is refused. */
  #checkLive (claims: AccessClaims, nowMs: number): void {
    if (expired(claims.exp, nowMs / 1000, this.#opts.leeway)) throw new InvalidToken('token expired', 'token_expired')
    if (this.revocations.denies(claims)) throw new InvalidToken('token revoked', 'token_revoked')
    if (this.#clientDenied(claims)) throw new InvalidToken('the token\'s client is disabled, deleted or was disabled after the token was issued', 'token_revoked')
  }

  /** Admin API: the token's client is disabled or deleted, or was after the token was issued. */
  #clientDenied (claims: AccessClaims): boolean {
    const denials = this.clientDenials
    if (denials.size === 0) return false
    const notBefore = denials.get(claims.client_id)
    return notBefore !== undefined && claims.iat < notBefore
  }

  #verifierOf (key: VerificationKey): JwtVerifier {
    let verifier = this.#verifiers.get(key.publicKey)
    if (verifier === undefined) {
      verifier = keyVerifier(key.publicKey, { algorithm: key.alg, typ: 'at+jwt', issuer: this.#opts.issuer, required: REQUIRED })
      this.#verifiers.set(key.publicKey, verifier)
    }
    return verifier
  }

  #verifyFresh (token: string, nowMs: number): { principal: Principal, kid: string } {
    let claims: AccessClaims
    let aud: string[]
    let kid: string
    try {
      const header = precheck(token, { lowS: true })
      if (typeof header.kid !== 'string') throw new TokenRefused('unknown key')
      const key = this.#opts.keys.verificationKey(header.kid)
      if (key === undefined) throw new TokenRefused('unknown key')
      kid = key.kid
      const c = verifyWith(this.#verifierOf(key), token)
      const audience = typeof c.aud === 'string' ? [c.aud] : c.aud
      if (!Array.isArray(audience) || audience.length === 0 || !audience.every(a => typeof a === 'string' && a !== '')) {
        throw new TokenRefused('claim aud missing or malformed')
      }
      aud = audience as string[]
      if (c.scope !== undefined && typeof c.scope !== 'string') throw new TokenRefused('claim scope is not a string')
      claims = validateClaims<AccessClaims>(c, nowMs / 1000, { leeway: this.#opts.leeway, maxLifetime: this.#opts.maxLifetime, strings: STRING_CLAIMS })
      // A token minted for a tool: never accepted here (any value of the claim, so no spelling slips by).
      if (c[TOKEN_USE_CLAIM] !== undefined) throw new TokenRefused('a downstream token is for its tool only')
    } catch (err) {
      if (err instanceof TokenRefused) throw invalidToken(err)
      throw err
    }
    this.#checkLive(claims, nowMs)

    const scope = claims.scope ?? ''
    const principal: Principal = Object.freeze({
      sub: claims.sub,
      clientId: claims.client_id,
      scope,
      scopes: new Set(scope.split(' ').filter(Boolean)),
      aud: Object.freeze(aud as string[]),
      jti: claims.jti,
      exp: claims.exp,
      claims: Object.freeze(claims)
    })
    return { principal, kid }
  }

  /** Denies an access token by `jti` until `exp` (seconds), here at once and at every replica within a sync. */
  async revokeAccessToken (jti: string, exp: number): Promise<void> {
    // Kept past exp by the leeway, during which verification would still accept the token.
    await this.revocations.add({ kind: 'jti', id: jti, expiresAt: (exp + this.#opts.leeway) * 1000 })
  }

  /** Denies every access token carrying `fid` until `expiresAt` (ms). */
  async revokeFamilyTokens (fid: string, expiresAt: number): Promise<void> {
    await this.revocations.add({ kind: 'family', id: fid, expiresAt: expiresAt + this.#opts.leeway * 1000 })
  }

  async start (): Promise<void> {
    await this.revocations.start()
  }

  stop (): void {
    this.revocations.stop()
  }
}

/**
 * Every replica's in-memory view of the store's denylist: a lookup on the hot path is a Map
 * probe. Local revocations apply at once; others' within one sync interval. When the store cannot
 * be read for longer than the allowed staleness, `assertFresh` fails closed.
 */
export class RevocationList {
  readonly #jtis = new Map<string, number>()
  readonly #families = new Map<string, number>()
  #cursor: string | undefined
  #lastSync = 0
  /** Set while syncs fail; a stalled event loop alone (no failed sync) never counts as stale. */
  #failing = false
  #timer: NodeJS.Timeout | undefined
  #syncing: Promise<void> | undefined

  constructor (
    readonly store: Store,
    readonly clock: () => number,
    readonly intervalMs: number,
    readonly maxStalenessMs: number
  ) {}

  async start (): Promise<void> {
    await this.sync()
    this.#timer = setInterval(() => { this.sync().catch(() => {}) }, this.intervalMs)
    this.#timer.unref()
  }

  stop (): void {
    if (this.#timer !== undefined) clearInterval(this.#timer)
    this.#timer = undefined
  }

  /** Pulls entries added since the last sync; one sync at a time. */
  async sync (): Promise<void> {
    this.#syncing ??= (async () => {
      try {
        const now = this.clock()
        let page
        do {
          page = await this.store.listRevocations(this.#cursor, now)
          for (const entry of page.entries) this.#remember(entry.kind, entry.id, entry.expiresAt)
          this.#cursor = page.cursor
        } while (page.entries.length > 0)
        this.#lastSync = performance.now() // real elapsed time, not the (injectable) token clock
        this.#failing = false
        this.#prune(now)
      } catch (err) {
        this.#failing = true
        throw err
      } finally {
        this.#syncing = undefined
      }
    })()
    return await this.#syncing
  }

  assertFresh (): void {
    if (this.stale()) throw new StoreUnavailable()
  }

  /** True while syncs have failed for longer than the allowed staleness. */
  stale (): boolean {
    return this.#failing && this.#timer !== undefined && performance.now() - this.#lastSync > this.maxStalenessMs
  }

  async add (entry: { kind: 'jti' | 'family', id: string, expiresAt: number }): Promise<void> {
    await this.store.addRevocation(entry)
    this.#remember(entry.kind, entry.id, entry.expiresAt)
  }

  denies (claims: { jti: string, fid?: string, exp: number }): boolean {
    if (this.#jtis.has(claims.jti)) return true
    return claims.fid !== undefined && this.#families.has(claims.fid)
  }

  get size (): number {
    return this.#jtis.size + this.#families.size
  }

  #remember (kind: 'jti' | 'family', id: string, expiresAt: number): void {
    const map = kind === 'jti' ? this.#jtis : this.#families
    map.set(id, Math.max(expiresAt, map.get(id) ?? 0))
  }

  #prune (now: number): void {
    // Entries are kept until the last token they deny has expired (plus a margin for leeway).
    const margin = 5 * 60_000
    for (const map of [this.#jtis, this.#families]) {
      for (const [id, expiresAt] of map) if (expiresAt + margin < now) map.delete(id)
    }
  }
}
