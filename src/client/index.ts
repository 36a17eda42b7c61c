// tollgate/client: a Tollgate client that keeps its credentials (CONTRACT §13). It owns one access
// token (cached, renewed ahead of expiry, one renewal shared by every concurrent caller) and, for a
// refresh client, the refresh-token family: rotated on every renewal (RFC 6749 §6, RFC 9700 §4.14)
// and, with `credentialsFile`, kept in a 0600 file replaced atomically, so a restarted process
// resumes its family. Requests go through openapi-fetch, typed by the types openapi-typescript
// generates from the committed openapi/openapi.json (./api.ts). It never logs anything, and no
// error it throws carries a token or a secret. It has no timers: renewal happens on use.
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { basename, dirname, join } from 'node:path'
import createClient, { defaultPathSerializer, type Client } from 'openapi-fetch'
import type { components, paths } from './api.js'

export interface TollgateClientOptions {
  /** The gateway's base URL, e.g. `https://tollgate.example`. */
  baseUrl: string
  clientId: string
  /** The client's secret (client_secret_basic). Needed for client credentials, and by Tollgate for refreshes too. */
  clientSecret?: string
  /** A refresh token to start from (used when `credentialsFile` holds none). */
  refreshToken?: string
  /** Space-separated scopes to ask for (default: all the client's). */
  scope?: string
  /** Space-separated audiences to ask for (default: all the client's). */
  audience?: string
  /** Where the current refresh token is kept (mode 0600, replaced atomically). */
  credentialsFile?: string
}

/** The quota and rate-limit fields of an answer, as numbers (draft-ietf-httpapi-ratelimit-headers). */
export interface RateLimitInfo {
  /** `q` of `RateLimit-Policy`: the quota's limit. */
  limit?: number
  /** `w` of `RateLimit-Policy`: the window, in seconds. */
  window?: number
  /** `r` of `RateLimit`: what is left in this window. */
  remaining?: number
  /** `t` of `RateLimit`: seconds until the window resets. */
  reset?: number
  /** `Retry-After` of a 429, in seconds. */
  retryAfter?: number
}

export interface CallResult {
  status: number
  headers: Headers
  /** Parsed JSON when the answer is JSON, else the text. */
  body: unknown
  rateLimit: RateLimitInfo
}

export interface Quota {
  limit: number
  used: number
  remaining: number
  /** Seconds. */
  window: number
  /** Seconds until the window resets. */
  reset: number
}

export interface PassThroughInit {
  method?: string
  /** A string, bytes, or a value sent as JSON. Sent again on the one retry after a 401. */
  body?: string | Uint8Array | Record<string, unknown> | unknown[]
  headers?: Record<string, string>
  query?: Record<string, string>
}

export interface TollgateClient {
  /** A valid access token: the cached one, or one renewal shared by every concurrent caller. */
  accessToken: () => Promise<string>
  /** POST /call `{ tool, arguments }`; one retry after re-authentication on a 401. */
  call: (tool: string, args?: Record<string, unknown>) => Promise<CallResult>
  /** Any method on /call/{tool}/{path} (REST-style pass-through); one retry after a 401. */
  callPath: (tool: string, path: string, init?: PassThroughInit) => Promise<CallResult>
  /** GET /quota: the caller's own usage. */
  quota: () => Promise<Quota>
  /** Waits for a renewal in flight (so its refresh token is persisted); later uses reject. */
  close: () => Promise<void>
}

/** A failure talking to Tollgate: `code` is the OAuth `error` or the problem `code`. */
export class TollgateError extends Error {
  constructor (message: string, readonly status?: number, readonly code?: string, options?: ErrorOptions) {
    super(message, options)
    this.name = new.target.name
  }
}

/**
 * The refresh-token family is gone: revoked, reused (RFC 9700 §4.14.2: Tollgate then revokes the
 * whole family), expired or idle. Rejected once, from one token request; the client never retries
 * it, and every later use rejects at once with the same error. Start again from client credentials
 * (a new process finds no refresh token in `credentialsFile`) or a new refresh token.
 */
export class TollgateFamilyRevokedError extends TollgateError {
  constructor (description?: string) {
    super(`the refresh token family is no longer valid${description !== undefined ? `: ${description}` : ''}`, 400, 'invalid_grant')
  }
}

type TokenResponse = components['schemas']['TokenResponse']

/** Renew when less than this share of the token's lifetime is left (at most RENEW_AHEAD_MAX_MS). */
const RENEW_AHEAD_SHARE = 0.2
const RENEW_AHEAD_MAX_MS = 60_000
const FILE_VERSION = 1

interface CachedToken {
  token: string
  expiresAt: number
  renewAt: number
}

/** `{path}` may span segments: encode each one and keep the `/` (an encoded `%2F` is refused). */
function pathSerializer (pathname: string, params: Record<string, unknown>): string {
  const { path, ...rest } = params
  const expanded = typeof path === 'string' ? pathname.replace('{path}', path.split('/').map(encodeURIComponent).join('/')) : pathname
  return defaultPathSerializer(expanded, rest)
}

/** A form body; an array value (RFC 8707 `resource`) becomes repeated fields. */
function formBody (body: Record<string, string | string[] | undefined>): string {
  const form = new URLSearchParams()
  for (const [name, value] of Object.entries(body)) {
    if (Array.isArray(value)) for (const v of value) form.append(name, v)
    else if (value !== undefined) form.set(name, value)
  }
  return form.toString()
}

/** The integer parameters of the first member of a structured-field list (`"quota";r=5;t=60`). */
function sfParams (value: string | null): Record<string, number> {
  const out: Record<string, number> = {}
  if (value === null) return out
  const first = value.split(',')[0] ?? ''
  for (const part of first.split(';').slice(1)) {
    const [key, raw] = part.trim().split('=')
    const n = Number(raw)
    if (key !== undefined && key !== '' && raw !== undefined && /^-?\d+$/.test(raw.trim()) && Number.isSafeInteger(n)) out[key] = n
  }
  return out
}

/** RateLimit, RateLimit-Policy and Retry-After of an answer, as numbers. */
export function parseRateLimit (headers: Headers): RateLimitInfo {
  const policy = sfParams(headers.get('ratelimit-policy'))
  const state = sfParams(headers.get('ratelimit'))
  const info: RateLimitInfo = {}
  if (policy.q !== undefined) info.limit = policy.q
  if (policy.w !== undefined) info.window = policy.w
  if (state.r !== undefined) info.remaining = state.r
  if (state.t !== undefined) info.reset = state.t
  const retry = headers.get('retry-after')
  if (retry !== null && /^\d+$/.test(retry.trim())) info.retryAfter = Number(retry)
  return info
}

/** An answer with its body read: parsed JSON when the answer is JSON, else the text. */
interface Answer {
  response: Response
  body: unknown
}

async function readBody (response: Response): Promise<unknown> {
  return parseBody(await response.text(), response)
}

function parseBody (text: string, response: Response): unknown {
  if (text === '') return undefined
  if (/[/+]json\b/i.test(response.headers.get('content-type') ?? '')) {
    try {
      return JSON.parse(text)
    } catch {
      return text
    }
  }
  return text
}

/** openapi-fetch's answer as an Answer: it has parsed an error body already; a success body came as text. */
function fromFetch (r: { data?: unknown, error?: unknown, response: Response }): Answer {
  return { response: r.response, body: r.response.ok ? parseBody(typeof r.data === 'string' ? r.data : '', r.response) : r.error }
}

/** The refresh token kept in `file`, when it is this client's. */
function loadRefreshToken (file: string, clientId: string): string | undefined {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw new TollgateError(`cannot read the credentials file ${file}`, undefined, undefined, { cause: err })
  }
  let parsed: { version?: unknown, clientId?: unknown, refreshToken?: unknown }
  try {
    parsed = JSON.parse(text)
  } catch (err) {
    throw new TollgateError(`the credentials file ${file} is not JSON`, undefined, undefined, { cause: err })
  }
  if (parsed.clientId !== clientId) throw new TollgateError(`the credentials file ${file} belongs to another client`)
  return typeof parsed.refreshToken === 'string' && parsed.refreshToken !== '' ? parsed.refreshToken : undefined
}

/** Replaces `file` atomically: a 0600 temp file in the same directory, fsynced, then renamed over it. */
function storeRefreshToken (file: string, clientId: string, refreshToken: string | undefined): void {
  const tmp = join(dirname(file), `.${basename(file)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`)
  const data = JSON.stringify({ version: FILE_VERSION, clientId, refreshToken: refreshToken ?? null, updatedAt: new Date().toISOString() }) + '\n'
  const fd = openSync(tmp, 'wx', 0o600)
  try {
    writeSync(fd, data)
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
  try {
    renameSync(tmp, file)
  } catch (err) {
    try { unlinkSync(tmp) } catch {}
    throw new TollgateError(`cannot replace the credentials file ${file}`, undefined, undefined, { cause: err })
  }
}

export function createTollgateClient (options: TollgateClientOptions): TollgateClient {
  if (typeof options.baseUrl !== 'string' || options.baseUrl === '') throw new TypeError('baseUrl is required')
  if (typeof options.clientId !== 'string' || options.clientId === '') throw new TypeError('clientId is required')
  const baseUrl = options.baseUrl.replace(/\/+$/, '')
  const api: Client<paths> = createClient<paths>({ baseUrl, pathSerializer })
  const basic = options.clientSecret !== undefined
    ? 'Basic ' + Buffer.from(`${encodeURIComponent(options.clientId)}:${encodeURIComponent(options.clientSecret)}`).toString('base64')
    : undefined

  let refreshToken: string | undefined
  let loaded = false
  let cached: CachedToken | undefined
  let renewing: Promise<CachedToken> | undefined
  let revoked: TollgateFamilyRevokedError | undefined
  let closed = false

  const currentRefreshToken = (): string | undefined => {
    if (!loaded) {
      loaded = true
      const stored = options.credentialsFile !== undefined ? loadRefreshToken(options.credentialsFile, options.clientId) : undefined
      refreshToken = stored ?? options.refreshToken
    }
    return refreshToken
  }

  const keepRefreshToken = (token: string | undefined): void => {
    refreshToken = token
    if (options.credentialsFile !== undefined) storeRefreshToken(options.credentialsFile, options.clientId, token)
  }

  const requestToken = async (): Promise<CachedToken> => {
    const presented = currentRefreshToken()
    const grant: Record<string, string | undefined> = presented !== undefined
      ? { grant_type: 'refresh_token', refresh_token: presented }
      : { grant_type: 'client_credentials' }
    if (basic === undefined) grant.client_id = options.clientId
    const started = Date.now()
    const { data, error, response } = await api.POST('/token', {
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...(basic !== undefined ? { authorization: basic } : {}) },
      body: { ...grant, scope: options.scope, audience: options.audience } as any,
      bodySerializer: formBody
    })
    if (data === undefined) {
      const oauth = (typeof error === 'object' && error !== null ? error : {}) as { error?: string, error_description?: string }
      if (presented !== undefined && oauth.error === 'invalid_grant') {
        // The family is dead: say so once, forget the token (a restart then starts afresh), never retry.
        revoked = new TollgateFamilyRevokedError(oauth.error_description)
        keepRefreshToken(undefined)
        throw revoked
      }
      throw new TollgateError(`token request refused: ${response.status} ${oauth.error ?? ''}${oauth.error_description !== undefined ? ` (${oauth.error_description})` : ''}`.trim(), response.status, oauth.error)
    }
    const token = data as TokenResponse
    if (token.refresh_token !== undefined) keepRefreshToken(token.refresh_token)
    const lifetime = Math.max(1, token.expires_in) * 1000
    const expiresAt = started + lifetime
    return { token: token.access_token, expiresAt, renewAt: expiresAt - Math.min(RENEW_AHEAD_MAX_MS, lifetime * RENEW_AHEAD_SHARE) }
  }

  const usable = (): void => {
    if (closed) throw new TollgateError('the client is closed')
    if (revoked !== undefined) throw revoked
  }

  const accessToken = async (): Promise<string> => {
    usable()
    if (cached !== undefined && Date.now() < cached.renewAt) return cached.token
    // Single flight: every caller that finds the token due waits for the same request.
    renewing ??= requestToken().then(fresh => {
      cached = fresh
      return fresh
    }).finally(() => { renewing = undefined })
    return (await renewing).token
  }

  /** Sends with the current token; on a 401, drops that token (unless already replaced), renews once and sends again. */
  const withToken = async (send: (bearer: string) => Promise<Answer>): Promise<Answer> => {
    const token = await accessToken()
    const first = await send(token)
    if (first.response.status !== 401) return first
    if (cached?.token === token) cached = undefined
    return await send(await accessToken())
  }

  const result = ({ response, body }: Answer): CallResult => ({
    status: response.status,
    headers: response.headers,
    body,
    rateLimit: parseRateLimit(response.headers)
  })

  return {
    accessToken,

    async call (tool, args = {}) {
      return result(await withToken(async bearer => fromFetch(await api.POST('/call', {
        headers: { authorization: `Bearer ${bearer}` },
        body: { tool, arguments: args },
        parseAs: 'text'
      }))))
    },

    async callPath (tool, path, init = {}) {
      const method = (init.method ?? 'GET').toUpperCase()
      const isJson = init.body !== undefined && typeof init.body !== 'string' && !(init.body instanceof Uint8Array)
      const body = isJson ? JSON.stringify(init.body) : init.body as string | Uint8Array | undefined
      const query = init.query !== undefined && Object.keys(init.query).length > 0 ? `?${new URLSearchParams(init.query).toString()}` : ''
      const url = `${baseUrl}${pathSerializer('/call/{tool}/{path}', { tool, path: path.replace(/^\/+/, '') })}${query}`
      return result(await withToken(async bearer => {
        const response = await fetch(url, {
          method,
          headers: { ...(isJson ? { 'content-type': 'application/json' } : {}), ...init.headers, authorization: `Bearer ${bearer}` },
          ...(body !== undefined ? { body: body as BodyInit } : {})
        })
        return { response, body: await readBody(response) }
      }))
    },

    async quota () {
      const answer = await withToken(async bearer => fromFetch(await api.GET('/quota', { headers: { authorization: `Bearer ${bearer}` }, parseAs: 'text' })))
      const response = answer.response
      const body = answer.body as Record<string, unknown> | string | undefined
      if (response.status !== 200 || typeof body !== 'object') {
        const problem = (typeof body === 'object' && body !== null ? body : {}) as { code?: string, detail?: string }
        throw new TollgateError(`quota request refused: ${response.status}${problem.detail !== undefined ? ` (${problem.detail})` : ''}`, response.status, problem.code)
      }
      const number = (name: string): number => {
        const n = Number(body[name])
        if (!Number.isFinite(n)) throw new TollgateError(`quota answer without a numeric ${name}`, response.status)
        return n
      }
      return { limit: number('limit'), used: number('used'), remaining: number('remaining'), window: number('window'), reset: number('reset') }
    },

    async close () {
      closed = true
      if (renewing !== undefined) await renewing.then(() => undefined, () => undefined)
    }
  }
}
