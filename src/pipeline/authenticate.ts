// authenticate: the bearer token (RFC 6750 §2.1) from the Authorization header only, never from
// the query string or the body, verified through the one verification path (Tokens.verify). A
// WebSocket handshake that cannot set headers may offer the token another way (the `bearer.`
// subprotocol, CONTRACT §9): the caller passes it as `offered`, used only when there is no
// Authorization header at all.
import { InvalidToken, MissingToken } from '../errors.js'
import type { Principal } from '../tokens/index.js'
import type { RequestContext } from './context.js'

export interface Verifier {
  verify: (token: string) => Principal
}

const BEARER = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i
const BEARER_SCHEME = /^Bearer\b/i

/** The bearer token of an Authorization header, or throws MissingToken / InvalidToken. */
export function bearerToken (header: string | undefined): string {
  if (header === undefined || header === '') throw new MissingToken()
  const m = BEARER.exec(header)
  if (m === null) {
    if (BEARER_SCHEME.test(header)) throw new InvalidToken('malformed bearer token')
    throw new MissingToken()
  }
  return m[1] as string
}

/** Verifies the request's token and records the principal on the context; throws when it is refused. */
export function authenticate (tokens: Verifier, ctx: RequestContext, authorization: string | undefined, offered?: string): Principal {
  const token = authorization === undefined && offered !== undefined ? offered : bearerToken(authorization)
  const principal = tokens.verify(token)
  ctx.principal = principal
  return principal
}
