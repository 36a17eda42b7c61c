// Refresh-token families (RFC 6749 §6, RFC 9700 §4.14): starting a family with a grant, rotating
// on every use with reuse detection, and revoking a family together with the access tokens minted
// from it. Owns the refresh-token format (opaque, 256 random bits, stored only as a SHA-256 hash)
// and the rules (ownership, absolute and idle expiry, never widening). The store does the atomic
// compare-and-swap; this module never touches HTTP and never logs or returns a token it was given.
import { createHash, randomBytes, randomUUID } from 'node:crypto'
import type { Client } from '../clients/index.js'
import { OAuthError } from '../errors.js'
import type { RefreshFamily, Store } from '../store/index.js'
import type { AccessClaims, IssuedToken, Tokens } from '../tokens/index.js'

/** Refresh tokens start with this, so a leaked one is recognisable (secret scanners) and never taken for a JWT. */
export const REFRESH_PREFIX = 'tgr_'
const REFRESH_FORMAT = /^tgr_[A-Za-z0-9_-]{43}$/

/** Claims the family does not carry over: Tollgate sets them on every access token it mints. */
const MINTED_CLAIMS = new Set(['iss', 'sub', 'aud', 'exp', 'iat', 'nbf', 'jti', 'client_id', 'scope', 'fid', 'cnf'])

export type AuditSink = (event: 'refresh.rotated' | 'refresh.reuse_detected' | 'token.revoked', fields: Record<string, unknown>) => void

export interface RefreshTokensOptions {
  store: Store
  tokens: Tokens
  clock: () => number
  /** Seconds: a family's absolute lifetime from its first grant. */
  refreshTtl: number
  /** Seconds: a family unused for this long is refused. */
  refreshIdleTtl: number
  /** Seconds: the longest any access token lives; family revocations deny tokens that long. */
  maxLifetime: number
  /** Seconds: access-token lifetime for clients without their own accessTtl. */
  accessTtl: number
}

export interface RotateRequest {
  scopes?: string[] | undefined
  audiences?: string[] | undefined
  /** RFC 9449: bind the new access token to this DPoP key (the refresh token itself stays unbound: confidential clients). */
  jkt?: string | undefined
}

export interface Rotated {
  issued: IssuedToken
  ttl: number
  refreshToken: string
  family: RefreshFamily
}

export function hashRefreshToken (token: string): string {
  return createHash('sha256').update(token).digest('base64url')
}

function newRefreshToken (): string {
  return REFRESH_PREFIX + randomBytes(32).toString('base64url')
}

export class RefreshTokens {
  readonly #o: RefreshTokensOptions

  constructor (options: RefreshTokensOptions) {
    this.#o = options
  }

  /** A family id for the access token issued with a family's first grant (it carries it as `fid`). */
  newFamilyId (): string {
    return randomUUID()
  }

  /**
   * Starts the family named by `issued.claims.fid` with the grant just made; returns its first
   * refresh token. The family's scope and audience are the issued token's: the most a refresh
   * may ask for. The unregistered claims (`quota`, `act`, static claims) are kept with it; a refresh
   * carries `act` on and takes `quota` and the static claims from the client's current config.
   */
  async start (client: Client, issued: IssuedToken): Promise<string> {
    const { claims } = issued
    if (claims.fid === undefined) throw new Error('the access token of a family grant must carry fid')
    const now = this.#o.clock()
    const extra: Record<string, unknown> = {}
    for (const [name, value] of Object.entries(claims)) if (!MINTED_CLAIMS.has(name)) extra[name] = value
    const token = newRefreshToken()
    await this.#o.store.createFamily({
      id: claims.fid,
      clientId: client.id,
      sub: claims.sub,
      scope: claims.scope,
      aud: typeof claims.aud === 'string' ? [claims.aud] : [...claims.aud],
      extra,
      createdAt: now,
      expiresAt: now + this.#o.refreshTtl * 1000,
      currentHash: '',
      lastUsedAt: now
    }, hashRefreshToken(token))
    return token
  }

  /**
   * Rotates `token` for `client`. The family is looked up and refused first (unknown, another
   * client's, revoked, expired, or a request that widens), so a refused request never consumes the
   * token; then the store's compare-and-swap decides between concurrent uses: exactly one rotates,
   * every other one is reuse and revokes the family with all its access tokens.
   */
  async rotate (client: Client, token: string, req: RotateRequest, audit: AuditSink): Promise<Rotated> {
    if (!REFRESH_FORMAT.test(token)) throw new OAuthError('invalid_grant', 'invalid refresh token')
    const hash = hashRefreshToken(token)
    const { store } = this.#o
    const found = await store.findFamily(hash)
    if (found === undefined) throw new OAuthError('invalid_grant', 'invalid refresh token')
    // RFC 6749 §10.4: bound to the client it was issued to. Same answer as unknown: says nothing.
    if (found.clientId !== client.id) throw new OAuthError('invalid_grant', 'invalid refresh token')
    if (found.revokedAt !== undefined) throw new OAuthError('invalid_grant', 'refresh token revoked')
    const now = this.#o.clock()
    // Expired families are refused before the compare-and-swap: an expired family cannot mint
    // anything, so there is nothing left for reuse detection to protect.
    if (now >= found.expiresAt) throw new OAuthError('invalid_grant', 'refresh token expired')
    if (now >= found.lastUsedAt + this.#o.refreshIdleTtl * 1000) throw new OAuthError('invalid_grant', 'refresh token expired (unused for too long)')

    // RFC 6749 §6: a refresh may narrow, never widen, what was originally granted. A client whose
    // configuration lost a scope or audience since then does not get it back by refreshing.
    const maxScopes = found.scope.split(' ').filter(s => s !== '' && client.scopes.includes(s))
    const maxAud = found.aud.filter(a => client.audiences.includes(a))
    const scopes = narrowTo(req.scopes, maxScopes, 'invalid_scope', 'scope')
    const audiences = narrowTo(req.audiences, maxAud, 'invalid_target', 'audience')
    if (audiences.length === 0) throw new OAuthError('invalid_target', 'no audience left to issue a token for')

    const next = newRefreshToken()
    const result = await store.rotateRefresh(hash, hashRefreshToken(next), now)
    if (result.status === 'reused') {
      await this.#killFamily(result.family.id, now)
      audit('refresh.reuse_detected', { client_id: client.id, family_id: result.family.id, sub: result.family.sub })
      throw new OAuthError('invalid_grant', 'refresh token reused: the token family is revoked')
    }
    if (result.status !== 'rotated') throw new OAuthError('invalid_grant', result.status === 'revoked' ? 'refresh token revoked' : 'invalid refresh token')

    const family = result.family
    // `quota` and the static claims are the client's as configured now, not as they were at the
    // first grant: a quota cut or a changed role applies from the next refresh on. `act` is the
    // grant's own and is carried over.
    const { act } = family.extra as { act?: AccessClaims['act'] }
    const quota = client.quota
    const ttl = client.accessTtl ?? this.#o.accessTtl
    const issued = this.#o.tokens.issue({
      sub: family.sub,
      clientId: family.clientId,
      scopes,
      audiences,
      ttl,
      fid: family.id,
      claims: client.claims,
      ...(quota !== undefined ? { quota } : {}),
      ...(act !== undefined ? { act } : {}),
      ...(req.jkt !== undefined ? { jkt: req.jkt } : {})
    })
    audit('refresh.rotated', { client_id: client.id, family_id: family.id, sub: family.sub, jti: issued.claims.jti })
    return { issued, ttl, refreshToken: next, family }
  }

  /** The family a refresh token (current or earlier) belongs to, or undefined. */
  async find (token: string): Promise<RefreshFamily | undefined> {
    if (!REFRESH_FORMAT.test(token)) return undefined
    return await this.#o.store.findFamily(hashRefreshToken(token))
  }

  /** Revokes a family: its refresh tokens stop working, and so does every access token it minted. */
  async revoke (family: RefreshFamily): Promise<void> {
    await this.#killFamily(family.id, this.#o.clock())
  }

  async #killFamily (id: string, now: number): Promise<void> {
    await this.#o.store.revokeFamily(id, now)
    // Any access token from the family was minted before now and lives at most maxLifetime.
    await this.#o.tokens.revokeFamilyTokens(id, now + this.#o.maxLifetime * 1000)
  }
}

function narrowTo (requested: string[] | undefined, allowed: readonly string[], error: 'invalid_scope' | 'invalid_target', what: string): string[] {
  if (requested === undefined || requested.length === 0) return [...allowed]
  const refused = requested.filter(v => !allowed.includes(v))
  if (refused.length > 0) throw new OAuthError(error, `${what} wider than originally granted: ${refused.join(' ')}`)
  return requested
}
