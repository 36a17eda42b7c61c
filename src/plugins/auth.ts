// Bearer authentication (RFC 6750 §2.1): the token comes from the Authorization header only, never
// from the query string or the body. `app.authenticate` verifies it through the one verification
// path (app.tokens) and sets `request.principal`; the authorization checks (audience, scope) are
// small functions the routes call in the pipeline's order.
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { InsufficientScope, InvalidToken, MissingToken } from '../errors.js'
import type { Principal } from '../tokens/index.js'

declare module 'fastify' {
  interface FastifyRequest {
    principal?: Principal
  }
  interface FastifyInstance {
    authenticate: (request: FastifyRequest) => Promise<void>
  }
}

const BEARER = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i

/** The bearer token of a request, or throws MissingToken / InvalidToken. */
export function bearerToken (request: FastifyRequest): string {
  const header = request.headers.authorization
  if (header === undefined || header === '') throw new MissingToken()
  const m = BEARER.exec(header)
  if (m === null) {
    if (/^Bearer\b/i.test(header)) throw new InvalidToken('malformed bearer token')
    throw new MissingToken()
  }
  return m[1] as string
}

/** RFC 6750: a token for another resource is invalid_token (401). */
export function requireAudience (principal: Principal, audience: string | undefined): void {
  if (audience !== undefined && !principal.aud.includes(audience)) {
    throw new InvalidToken(`the token is not valid for audience ${audience}`)
  }
}

export function requireScopes (principal: Principal, required: readonly string[]): void {
  const missing = required.filter(s => !principal.scopes.has(s))
  if (missing.length > 0) throw new InsufficientScope(required.join(' '))
}

const HEADER_SAFE = /^[\x20-\x7e]*$/

/** Printable ASCII only, so no CR/LF or control character reaches a header. */
export function isHeaderSafe (value: string): boolean {
  return HEADER_SAFE.test(value)
}

/** A header-safe claim value, or InvalidToken. */
export function headerSafe (value: string, what: string): string {
  if (!isHeaderSafe(value)) throw new InvalidToken(`claim ${what} cannot be carried in a header`)
  return value
}

export default fp(async function auth (app: FastifyInstance) {
  app.decorateRequest('principal', undefined)
  app.decorate('authenticate', async (request: FastifyRequest) => {
    request.principal = app.tokens.verify(bearerToken(request))
  })
}, { name: 'tollgate-auth', dependencies: ['tollgate-core'] })
