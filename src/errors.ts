// The error hierarchy: every refusal Tollgate makes is one of these, with a stable `code`.
// Hooks and handlers throw them; plugins/errors.ts maps them once to RFC 6749 §5.2 JSON on the
// OAuth endpoints and to RFC 9457 problem+json everywhere else. Nothing here knows about HTTP
// beyond the status number.

export type OAuthErrorCode =
  | 'invalid_request'
  | 'invalid_client'
  | 'invalid_grant'
  | 'unauthorized_client'
  | 'unsupported_grant_type'
  | 'invalid_scope'
  | 'invalid_target'
  | 'unsupported_token_type'
  | 'temporarily_unavailable'
  | 'server_error'
  | 'invalid_dpop_proof'

export type ErrorCode =
  | OAuthErrorCode
  | 'invalid_token'
  | 'token_expired'
  | 'token_revoked'
  | 'insufficient_scope'
  | 'rate_limited'
  | 'quota_exceeded'
  | 'cost_unavailable'
  | 'tool_not_found'
  | 'bad_path'
  | 'not_found'
  | 'payload_too_large'
  | 'unsupported_media_type'
  | 'upstream_unavailable'
  | 'upstream_timeout'
  | 'store_unavailable'
  | 'idempotency_in_flight'
  | 'idempotency_key_reused'
  | 'internal_error'
  | 'client_from_config'
  | 'client_not_found'
  | 'client_exists'
  | 'quota_unknown'

export class TollgateError extends Error {
  /** Extra response headers (WWW-Authenticate, Retry-After, ...). */
  headers: Record<string, string> = {}

  constructor (
    readonly code: ErrorCode,
    readonly statusCode: number,
    detail?: string,
    options?: ErrorOptions
  ) {
    super(detail ?? code, options)
    this.name = new.target.name
  }
}

/** An RFC 6749 §5.2 error; `code` is the OAuth `error` value. */
export class OAuthError extends TollgateError {
  constructor (code: OAuthErrorCode, detail: string, statusCode = 400, options?: ErrorOptions) {
    super(code, statusCode, detail, options)
  }
}

export class InvalidClient extends OAuthError {
  constructor (detail = 'client authentication failed') {
    super('invalid_client', detail, 401)
    this.headers['www-authenticate'] = 'Basic realm="tollgate"'
  }
}

/** RFC 6750 §3: a missing, malformed, expired or revoked bearer token. */
export class InvalidToken extends TollgateError {
  constructor (detail = 'invalid token', code: 'invalid_token' | 'token_expired' | 'token_revoked' = 'invalid_token') {
    super(code, 401, detail)
  }
}

/** RFC 6750 §3.1: the request carried no token at all (no error attribute in the challenge). */
export class MissingToken extends TollgateError {
  constructor () {
    super('invalid_token', 401, 'a bearer token is required')
  }
}

/**
 * RFC 9449: a missing or refused DPoP proof. 401 with a `DPoP` challenge where a bound token is
 * used (§7.1); 400 at the token endpoint (§5), as an OAuth error.
 */
export class InvalidDpopProof extends TollgateError {
  constructor (detail: string, statusCode: 400 | 401 = 401, options?: ErrorOptions) {
    super('invalid_dpop_proof', statusCode, detail, options)
  }
}

export class InsufficientScope extends TollgateError {
  constructor (readonly requiredScope: string, detail = `the token lacks a required scope: ${requiredScope}`) {
    super('insufficient_scope', 403, detail)
  }
}

export class RateLimited extends TollgateError {
  constructor (retryAfterSeconds: number, detail = 'rate limit exceeded') {
    super('rate_limited', 429, detail)
    this.headers['retry-after'] = String(Math.max(1, Math.ceil(retryAfterSeconds)))
  }
}

export class QuotaExceeded extends TollgateError {
  constructor (retryAfterSeconds: number, detail = 'quota exhausted for this window') {
    super('quota_exceeded', 429, detail)
    this.headers['retry-after'] = String(Math.max(1, Math.ceil(retryAfterSeconds)))
  }
}

export class ToolNotFound extends TollgateError {
  constructor (name: string) { super('tool_not_found', 404, `no tool named ${JSON.stringify(name.slice(0, 64))}`) }
}

/** A /call/:tool/* path that would leave the tool's base URL (traversal, encoded separators, NUL). */
export class BadPath extends TollgateError {
  constructor (detail = 'the path is not allowed') { super('bad_path', 400, detail) }
}

export class PayloadTooLarge extends TollgateError {
  constructor (detail = 'request body too large') { super('payload_too_large', 413, detail) }
}

/** The upstream refused or dropped the connection (RFC 9110 §15.6.3). */
export class UpstreamUnavailable extends TollgateError {
  constructor (detail = 'the tool is unavailable', options?: ErrorOptions) { super('upstream_unavailable', 502, detail, options) }
}

/** The upstream did not answer within the tool's timeout (RFC 9110 §15.6.5). */
export class UpstreamTimeout extends TollgateError {
  constructor (detail = 'the tool did not answer in time', options?: ErrorOptions) { super('upstream_timeout', 504, detail, options) }
}

/** draft-ietf-httpapi-idempotency-key-header §2.7: a call with the key is still running. */
export class IdempotencyInFlight extends TollgateError {
  constructor (detail = 'a call with this Idempotency-Key is still running; retry once it has answered') { super('idempotency_in_flight', 409, detail) }
}

/** draft-ietf-httpapi-idempotency-key-header §2.7: the key was used with another request body. */
export class IdempotencyKeyReused extends TollgateError {
  constructor (detail = 'this Idempotency-Key was used with another request body') { super('idempotency_key_reused', 422, detail) }
}

export class StoreUnavailable extends TollgateError {
  constructor (options?: ErrorOptions) {
    super('store_unavailable', 503, 'the state store is unavailable', options)
  }
}

/**
 * The RFC 6750 §3 challenge for a refusal, if it takes one (with error="..." once a token was
 * presented). `resourceMetadata` (RFC 9728 §5.1) is added to 401 challenges only.
 */
export function bearerChallenge (err: TollgateError, resourceMetadata?: string, realm = 'tollgate', dpopAlgorithms?: readonly string[]): string | undefined {
  const metadata = resourceMetadata !== undefined && err.statusCode === 401 ? `, resource_metadata=${quotedString(resourceMetadata)}` : ''
  if (err instanceof InvalidDpopProof && err.statusCode === 401) {
    const algs = dpopAlgorithms !== undefined ? `, algs="${quote(dpopAlgorithms.join(' '))}"` : ''
    return `DPoP error="invalid_dpop_proof", error_description="${quote(err.message)}"${algs}${metadata}`
  }
  if (err instanceof MissingToken) return `Bearer realm="${realm}"${metadata}`
  if (err instanceof InsufficientScope) {
    return `Bearer realm="${realm}", error="insufficient_scope", error_description="${quote(err.message)}", scope="${quote(err.requiredScope)}"`
  }
  if (err.statusCode === 401) {
    return `Bearer realm="${realm}", error="invalid_token", error_description="${quote(err.message)}"${metadata}`
  }
  return undefined
}

// RFC 6750 §3: attribute values are quoted-strings; keep them to printable ASCII without quotes.
function quote (value: string): string {
  return value.replace(/[^\x20-\x7e]|["\\]/g, '')
}

/**
 * RFC 9110 §5.6.4 quoted-string for a value that must arrive unchanged (a URL): `"` and `\` are
 * escaped; anything outside printable ASCII is percent-encoded, so no header can be split or forged.
 */
export function quotedString (value: string): string {
  const safe = value.replace(/[^\x20-\x7e]/gu, c => [...Buffer.from(c, 'utf8')].map(b => '%' + b.toString(16).toUpperCase().padStart(2, '0')).join(''))
  return `"${safe.replace(/["\\]/g, c => '\\' + c)}"`
}

/** Admin API (CONTRACT §11): a client from the config file is read-only at run time. */
export class ClientFromConfig extends TollgateError {
  constructor (id: string) { super('client_from_config', 409, `client ${JSON.stringify(id)} comes from the config file and is read-only; change it there`) }
}

export class ClientNotFound extends TollgateError {
  constructor (id: string) { super('client_not_found', 404, `no client ${JSON.stringify(id.slice(0, 128))}`) }
}

export class ClientExists extends TollgateError {
  constructor (id: string) { super('client_exists', 409, `a client ${JSON.stringify(id)} exists already`) }
}

/** Admin usage routes: the subject's quota (limit, window) is neither a client's nor given. */
export class QuotaUnknown extends TollgateError {
  constructor (sub: string) { super('quota_unknown', 400, `no client ${JSON.stringify(sub.slice(0, 128))} with a quota: pass limit and window`) }
}

/** A malformed request outside the OAuth endpoints (problem+json). */
export class BadRequest extends TollgateError {
  constructor (detail: string) { super('invalid_request', 400, detail) }
}
