// authenticate: the access token from the Authorization header only, never from the query string
// or the body, verified through the one verification path (Tokens.verify). Two strategies share
// this stage (Oathkeeper's authenticator chain): `Bearer` (RFC 6750 §2.1) for unbound tokens, and
// `DPoP` (RFC 9449 §7.1) for tokens bound to a key (`cnf.jkt`), which also need a valid proof for
// this request. A bound token presented as Bearer is refused. A WebSocket handshake that cannot
// set headers may offer the token another way (the `bearer.` subprotocol, CONTRACT §9): the
// caller passes it as `offered`, used only when there is no Authorization header at all.
import { InvalidDpopProof, InvalidToken, MissingToken } from '../errors.js'
import type { Principal } from '../tokens/index.js'
import type { RequestContext } from './context.js'

export interface Verifier {
  verify: (token: string) => Principal
}

export interface ProofVerifier {
  /** The proof's key thumbprint when it is valid for the request, else throws InvalidDpopProof. */
  verify: (proof: string | string[] | undefined, req: { htm: string, htu: string, accessToken: string }) => Promise<string>
}

/** What a DPoP proof must match on this request: read only when the DPoP scheme is used. */
export interface DpopRequest {
  verifier: ProofVerifier
  proof: string | string[] | undefined
  htm: string
  htu: () => string
}

const BEARER = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i
const BEARER_SCHEME = /^Bearer\b/i
const DPOP = /^DPoP +([A-Za-z0-9\-._~+/]+=*) *$/i
const DPOP_SCHEME = /^DPoP\b/i

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

/**
 * Verifies the request's token and records the principal on the context; throws when it is
 * refused. Synchronous for Bearer; a promise for DPoP (the proof's signature and replay check).
 */
export function authenticate (tokens: Verifier, ctx: RequestContext, authorization: string | undefined, offered?: string): Principal
export function authenticate (tokens: Verifier, ctx: RequestContext, authorization: string | undefined, offered: string | undefined, dpop: DpopRequest | undefined): Principal | Promise<Principal>
export function authenticate (tokens: Verifier, ctx: RequestContext, authorization: string | undefined, offered?: string, dpop?: DpopRequest): Principal | Promise<Principal> {
  if (dpop !== undefined && authorization !== undefined && DPOP_SCHEME.test(authorization)) return authenticateDpop(tokens, ctx, authorization, dpop)
  const token = authorization === undefined && offered !== undefined ? offered : bearerToken(authorization)
  const principal = tokens.verify(token)
  // RFC 9449 §7.1: a bound token is worthless without its key; as a bearer token it is refused.
  if (principal.claims.cnf !== undefined) throw new InvalidToken('the token is DPoP-bound: present it as Authorization: DPoP with a proof')
  ctx.principal = principal
  return principal
}

async function authenticateDpop (tokens: Verifier, ctx: RequestContext, authorization: string, dpop: DpopRequest): Promise<Principal> {
  const m = DPOP.exec(authorization)
  if (m === null) throw new InvalidToken('malformed DPoP token')
  const token = m[1] as string
  const principal = tokens.verify(token)
  const jkt = principal.claims.cnf?.jkt
  if (typeof jkt !== 'string') throw new InvalidToken('the token is not DPoP-bound: present it as Authorization: Bearer')
  const proofKey = await dpop.verifier.verify(dpop.proof, { htm: dpop.htm, htu: dpop.htu(), accessToken: token })
  if (proofKey !== jkt) throw new InvalidDpopProof('the DPoP proof is signed by another key than the token is bound to')
  ctx.principal = principal
  return principal
}
