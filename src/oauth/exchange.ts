// Token exchange (RFC 8693) for clients with `exchange: true`: a subject token from Tollgate itself
// or from a trusted issuer becomes a Tollgate access token for the same subject, acted on by the
// client (`act`), limited to audiences the client may use and to scopes both the subject token and
// the client have. A trusted issuer's `sub` is only unique within that issuer, so its subject is
// namespaced (`<issuer>#<sub>`, see externalSubject); a Tollgate token's `sub` is already
// Tollgate's and is kept as it is. Owns those rules; verification is Tokens' (own tokens) or
// TrustedIssuers' (the IdPs'). Never issues a refresh token: the exchanged authority must not
// outlive the subject token.
import type { Client } from '../clients/index.js'
import { OAuthError, StoreUnavailable, TollgateError } from '../errors.js'
import { decodeUnverified } from '../tokens/jwt.js'
import { precheck, TokenRefused } from '../tokens/precheck.js'
import type { AccessClaims, IssuedToken, QuotaClaim, Tokens } from '../tokens/index.js'
import type { TrustedIssuers } from './trusted-issuers.js'

export const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange'
export const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token'
export const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt'
const SUBJECT_TYPES = new Set([ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE])
/** Characters of a namespaced external subject (`<issuer>#<sub>`, encoded), at most. */
const MAX_SUBJECT_LENGTH = 1024

export interface ExchangeRequest {
  subjectToken: string | undefined
  subjectTokenType: string | undefined
  requestedTokenType?: string | undefined
  scopes?: string[] | undefined
  audiences?: string[] | undefined
  /** RFC 9449: bind the issued token to this DPoP key. */
  jkt?: string | undefined
}

export interface Exchanged {
  issued: IssuedToken
  ttl: number
  /** Where the subject token came from: `tollgate` or the trusted issuer's identifier. */
  subjectIssuer: string
  subjectKind: 'tollgate' | 'trusted'
}

export interface TokenExchangeOptions {
  tokens: Tokens
  trusted: TrustedIssuers
  clock: () => number
  /** Seconds: lifetime for clients without their own accessTtl. */
  accessTtl: number
}

interface Subject {
  sub: string
  scopes: string[]
  exp: number
  act?: unknown
  fid?: string
  quota?: QuotaClaim
  issuer: string
  kind: 'tollgate' | 'trusted'
}

export class TokenExchange {
  constructor (readonly options: TokenExchangeOptions) {}

  async exchange (client: Client, req: ExchangeRequest): Promise<Exchanged> {
    if (!client.exchange) throw new OAuthError('unauthorized_client', 'this client may not use token exchange')
    if (req.subjectToken === undefined || req.subjectToken === '') throw new OAuthError('invalid_request', 'subject_token is required')
    if (req.subjectTokenType === undefined) throw new OAuthError('invalid_request', 'subject_token_type is required')
    if (!SUBJECT_TYPES.has(req.subjectTokenType)) throw new OAuthError('invalid_request', `unsupported subject_token_type ${req.subjectTokenType}`)
    if (req.requestedTokenType !== undefined && !SUBJECT_TYPES.has(req.requestedTokenType)) {
      throw new OAuthError('invalid_request', `unsupported requested_token_type ${req.requestedTokenType}`)
    }

    const subject = await this.#subject(req.subjectToken)
    // Scopes no wider than both the subject's and the client's; audiences the client may use.
    const maxScopes = subject.scopes.filter(s => client.scopes.includes(s))
    const scopes = narrow(req.scopes, maxScopes, 'invalid_scope', 'scope')
    const audiences = narrow(req.audiences, client.audiences, 'invalid_target', 'audience')
    if (audiences.length === 0) throw new OAuthError('invalid_target', 'the client has no audience to issue a token for')

    // RFC 8693 §4.1: the current actor on top, earlier actors nested inside.
    const act: AccessClaims['act'] = { sub: client.id }
    if (isObject(subject.act)) act.act = subject.act
    const now = this.options.clock() / 1000
    // The exchanged token never outlives the subject token it stands for.
    const ttl = Math.max(1, Math.min(client.accessTtl ?? this.options.accessTtl, Math.floor(subject.exp - now)))
    const quota = subject.quota ?? client.quota
    const issued = this.options.tokens.issue({
      sub: subject.sub,
      clientId: client.id,
      scopes,
      audiences,
      ttl,
      act,
      // Derived from a Tollgate family: revoking that family denies this token too.
      ...(subject.fid !== undefined ? { fid: subject.fid } : {}),
      ...(quota !== undefined ? { quota } : {}),
      ...(req.jkt !== undefined ? { jkt: req.jkt } : {})
    })
    return { issued, ttl, subjectIssuer: subject.issuer, subjectKind: subject.kind }
  }

  async #subject (token: string): Promise<Subject> {
    const { tokens, trusted } = this.options
    let iss: unknown
    try {
      // Routed by the unverified `iss` (the pre-check, then the library's decoding); verified below.
      precheck(token, { lowS: false })
      iss = decodeUnverified(token).payload.iss
    } catch (err) {
      if (err instanceof TokenRefused) throw new OAuthError('invalid_request', `subject_token is not acceptable: ${err.message}`)
      throw err
    }
    if (iss === tokens.issuer) {
      let p
      try {
        p = tokens.verify(token)
      } catch (err) {
        if (err instanceof StoreUnavailable) throw new OAuthError('temporarily_unavailable', 'the state store is unavailable', 503, { cause: err })
        if (err instanceof TollgateError) throw new OAuthError('invalid_request', `subject_token is not acceptable: ${err.message}`, 400, { cause: err })
        throw err
      }
      const c = p.claims
      // A bound token is usable only with its key: exchanging it would launder it into one without.
      if (c.cnf !== undefined) throw new OAuthError('invalid_request', 'subject_token is not acceptable: it is DPoP-bound')
      return {
        sub: p.sub,
        scopes: [...p.scopes],
        exp: p.exp,
        act: c.act,
        issuer: tokens.issuer,
        kind: 'tollgate',
        ...(c.fid !== undefined ? { fid: c.fid } : {}),
        ...(c.quota !== undefined ? { quota: c.quota } : {})
      }
    }
    if (typeof iss !== 'string' || !trusted.has(iss)) throw new OAuthError('invalid_request', 'subject_token is not acceptable: issuer not trusted')
    const { claims, issuer } = await trusted.verify(token)
    // A lone surrogate would encode as U+FFFD, like a real one: two subs, one subject.
    if (/\p{Cs}/u.test(claims.sub)) throw new OAuthError('invalid_request', 'subject_token is not acceptable: sub is not well-formed Unicode')
    const sub = externalSubject(issuer, claims.sub)
    // The issued token must stay well under the 8 KiB token cap.
    if (sub.length > MAX_SUBJECT_LENGTH) throw new OAuthError('invalid_request', 'subject_token is not acceptable: sub is too long')
    return { sub, scopes: scopesOf(claims), exp: claims.exp, act: claims.act, issuer, kind: 'trusted' }
  }
}

/**
 * The Tollgate subject of a trusted issuer's user: `<issuer>#<sub>`, so users of two issuers, or a
 * user whose `sub` equals a client id, never share a subject (nor its quota or rate-limit counters).
 * Injective and header-safe (it travels as X-Auth-Subject): every byte outside printable ASCII
 * without space, and `%`, is percent-encoded (UTF-8), in the issuer also `#`, so the first `#`
 * always ends the issuer. A client id can never take this form: ids have no `#`.
 */
export function externalSubject (issuer: string, sub: string): string {
  return `${percentEncode(issuer, /[^\x21-\x22\x24\x26-\x7e]/)}#${percentEncode(sub, /[^\x21-\x24\x26-\x7e]/)}`
}

function percentEncode (value: string, unsafe: RegExp): string {
  if (!unsafe.test(value)) return value
  let out = ''
  for (const ch of value) {
    if (!unsafe.test(ch)) { out += ch; continue }
    for (const byte of Buffer.from(ch, 'utf8')) out += '%' + byte.toString(16).toUpperCase().padStart(2, '0')
  }
  return out
}

/** RFC 9068 `scope` (space-separated); many IdPs send `scp` as a string or an array instead. */
function scopesOf (claims: Record<string, unknown>): string[] {
  const raw = claims.scope ?? claims.scp
  if (typeof raw === 'string') return raw.split(' ').filter(Boolean)
  if (Array.isArray(raw)) return raw.filter((s): s is string => typeof s === 'string' && s !== '')
  return []
}

function isObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function narrow (requested: string[] | undefined, allowed: readonly string[], error: 'invalid_scope' | 'invalid_target', what: string): string[] {
  if (requested === undefined || requested.length === 0) return [...allowed]
  const refused = requested.filter(v => !allowed.includes(v))
  if (refused.length > 0) throw new OAuthError(error, `${what} not allowed: ${refused.join(' ')}`)
  return requested
}
