// What every admin route shares (CONTRACT §11): the audience and scope the guard asks for, the
// errors and security scheme each route documents, store failures as 503, and who made a change.
import type { FastifyRequest } from 'fastify'
import { StoreUnavailable, TollgateError } from '../errors.js'
import { principalOf } from '../pipeline/index.js'
import { headers, problem } from '../schemas/index.js'

export const ADMIN_AUDIENCE = 'tollgate:admin'
export const ADMIN_SCOPE = 'tollgate:admin'
export const ADMIN_SCOPES = [ADMIN_SCOPE]

/** The errors every admin route can answer. */
export const adminErrors = {
  401: problem('No token, or an invalid, expired or revoked one, or one without audience tollgate:admin', headers.wwwAuthenticateBearer),
  403: problem('The token lacks scope tollgate:admin', headers.wwwAuthenticateBearer),
  503: problem('The state store is unavailable')
}

export const adminSecurity = [{ adminAuth: [] }]

/** Store failures become 503; the admin API's own refusals pass through. */
export async function storeCall<T> (op: Promise<T>): Promise<T> {
  try {
    return await op
  } catch (err) {
    throw err instanceof TollgateError ? err : new StoreUnavailable({ cause: err })
  }
}

/** Who made an admin change, for audit lines. */
export function adminActor (request: FastifyRequest): { admin_client_id: string, admin_sub: string } {
  const p = principalOf(request.ctx)
  return { admin_client_id: p.clientId, admin_sub: p.sub }
}

