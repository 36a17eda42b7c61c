// Client authentication for the OAuth endpoints (RFC 6749 §2.3.1): HTTP Basic
// (client_secret_basic) or client_id + client_secret in the body (client_secret_post), never both.
import type { FastifyRequest } from 'fastify'
import type { Client, ClientRegistry } from '../clients/index.js'
import { InvalidClient, OAuthError } from '../errors.js'

export interface OAuthBody {
  client_id?: string
  client_secret?: string
  [name: string]: unknown
}

interface Credentials {
  id: string
  secret: string
}

function formDecode (value: string): string {
  return decodeURIComponent(value.replace(/\+/g, ' '))
}

function basicCredentials (header: string | undefined): Credentials | undefined | 'malformed' {
  if (header === undefined) return undefined
  const m = /^Basic ([A-Za-z0-9+/]+={0,2})$/i.exec(header.trim())
  if (m === null) return /^Basic\b/i.test(header.trim()) ? 'malformed' : undefined
  const decoded = Buffer.from(m[1] as string, 'base64').toString('utf8')
  const colon = decoded.indexOf(':')
  if (colon <= 0) return 'malformed'
  try {
    // RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
    return { id: formDecode(decoded.slice(0, colon)), secret: formDecode(decoded.slice(colon + 1)) }
  } catch {
    return 'malformed'
  }
}

/** The authenticated client, or throws invalid_client (401) / invalid_request (400). */
export async function authenticateClient (request: FastifyRequest, clients: ClientRegistry): Promise<Client> {
  const body = (request.body ?? {}) as OAuthBody
  const basic = basicCredentials(request.headers.authorization)
  if (basic === 'malformed') throw new InvalidClient('malformed Basic credentials')
  if (basic !== undefined) {
    if (body.client_secret !== undefined) throw new OAuthError('invalid_request', 'use one client authentication method, not Basic and client_secret together')
    if (body.client_id !== undefined && body.client_id !== basic.id) throw new OAuthError('invalid_request', 'client_id in the body differs from the Basic credentials')
  }
  const creds = basic ?? (body.client_id !== undefined && body.client_secret !== undefined
    ? { id: body.client_id, secret: body.client_secret }
    : undefined)
  if (creds === undefined) {
    if (body.client_id !== undefined) request.ctx.clientId = body.client_id
    throw new InvalidClient('client authentication required')
  }
  request.ctx.clientId = creds.id
  // Failures are counted per client id and per address; past either limit the attempt is refused
  // before its scrypt runs. A pair verified recently skips both (a locked-out id's owner keeps working).
  const failures = request.server.failedClientAuth
  const client = await clients.authenticate(creds.id, creds.secret, () => { failures.check(creds.id, request.ip) })
  if (client === undefined) {
    try {
      await failures.record(creds.id, request.ip)
    } catch (err) {
      // The answer is a refusal either way; the scrypt bound still holds without the counters.
      request.log.warn({ err: (err as Error).message }, 'failed client authentication not counted: the store is unavailable')
    }
    throw new InvalidClient()
  }
  return client
}

/** Space-separated list (RFC 6749 §3.3), de-duplicated, order kept. */
export function spaceList (value: unknown): string[] | undefined {
  if (value === undefined) return undefined
  if (typeof value !== 'string') throw new OAuthError('invalid_request', 'list parameters must be space-separated strings')
  return [...new Set(value.split(' ').filter(Boolean))]
}

/** Parameters that may be given more than once: RFC 8707 §2 `resource`. */
const REPEATABLE = new Set(['resource'])

/**
 * preValidation for OAuth bodies: a repeated parameter (form) or a non-string value (JSON) is
 * invalid_request (RFC 6749 §3.1), before the schema sees it. `resource` (RFC 8707 §2) may repeat:
 * a form gives it as several fields, JSON as an array of strings.
 */
export async function rejectRepeatedParameters (request: FastifyRequest): Promise<void> {
  const body = request.body
  if (body === undefined || body === null) return
  if (typeof body !== 'object' || Array.isArray(body)) throw new OAuthError('invalid_request', 'the body must be a form or a JSON object')
  for (const [name, value] of Object.entries(body)) {
    if (Array.isArray(value)) {
      if (!REPEATABLE.has(name)) throw new OAuthError('invalid_request', `parameter ${name} is repeated`)
      if (!value.every(v => typeof v === 'string')) throw new OAuthError('invalid_request', `parameter ${name} must be strings`)
      continue
    }
    if (value !== null && typeof value === 'object') throw new OAuthError('invalid_request', `parameter ${name} must be a string`)
  }
}

/** Every value of a repeatable parameter (RFC 8707 `resource`), or undefined when it is absent. */
export function repeated (value: unknown): string[] | undefined {
  if (value === undefined) return undefined
  const values = Array.isArray(value) ? value : [value]
  if (!values.every((v): v is string => typeof v === 'string')) throw new OAuthError('invalid_request', 'resource must be a string or strings')
  return values
}
