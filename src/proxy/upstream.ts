// Upstream requests: one kept-alive undici Pool per tool origin, with connect, headers and body
// timeouts, TLS verification on and no retries. Translates undici's failures into the typed
// 502/504 errors where they are caught. Never decides who may call, never touches headers.
import { Transform, type Readable, type TransformCallback } from 'node:stream'
import { Pool, type Dispatcher } from 'undici'
import { PayloadTooLarge, TollgateError, UpstreamTimeout, UpstreamUnavailable } from '../errors.js'
import type { Tool } from '../tools/index.js'

/** Connect timeout cap (ms): a tool's own timeout applies when it is shorter. */
const CONNECT_TIMEOUT_MS = 10_000
const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT', 'ETIMEDOUT'])

export interface UpstreamRequest {
  method: Dispatcher.HttpMethod
  /** Origin-relative path and query, already checked by proxy/path.ts. */
  path: string
  headers: Record<string, string | string[]>
  body?: Buffer | Readable | null
}

export class Upstreams {
  readonly #pools = new Map<string, Pool>()
  readonly #connectTimeout = new Map<string, number>()
  #closed = false

  /** Pools are created at startup for every configured tool, so the hot path only looks one up. */
  constructor (tools: Iterable<Tool>, readonly connections = 128) {
    for (const tool of tools) {
      const ms = Math.min(CONNECT_TIMEOUT_MS, tool.timeoutMs)
      this.#connectTimeout.set(tool.origin, Math.max(ms, this.#connectTimeout.get(tool.origin) ?? 0))
    }
  }

  pool (origin: string): Pool {
    let pool = this.#pools.get(origin)
    if (pool === undefined) {
      if (this.#closed) throw new UpstreamUnavailable('the gateway is shutting down')
      const connectTimeout = this.#connectTimeout.get(origin) ?? CONNECT_TIMEOUT_MS
      pool = new Pool(origin, {
        connections: this.connections,
        pipelining: 1,
        keepAliveTimeout: 4_000,
        connect: { timeout: connectTimeout, rejectUnauthorized: true }
      })
      this.#pools.set(origin, pool)
    }
    return pool
  }

  /**
   * Sends one request and resolves at the upstream's response headers; the body streams on.
   * The tool's timeout bounds the wait for headers and each gap in the response body.
   * Never retried: a failure is the caller's answer (502 or 504).
   */
  async request (tool: Tool, req: UpstreamRequest): Promise<Dispatcher.ResponseData> {
    try {
      return await this.pool(tool.origin).request({
        method: req.method,
        path: req.path,
        headers: req.headers,
        body: req.body ?? null,
        headersTimeout: tool.timeoutMs,
        bodyTimeout: tool.timeoutMs
      })
    } catch (err) {
      throw translate(err)
    }
  }

  async close (): Promise<void> {
    this.#closed = true
    const pools = [...this.#pools.values()]
    this.#pools.clear()
    await Promise.all(pools.map(async p => { await p.destroy() }))
  }
}

/** undici and socket errors → 504 upstream_timeout or 502 upstream_unavailable (with cause). */
export function translate (err: unknown): TollgateError {
  if (err instanceof TollgateError) return err
  // A request body that failed (our size cap, or the caller went away) surfaces as its own error.
  const cause = (err as { cause?: unknown }).cause
  if (cause instanceof TollgateError) return cause
  const code = (err as { code?: string }).code ?? ''
  if (TIMEOUT_CODES.has(code)) return new UpstreamTimeout(undefined, { cause: err })
  return new UpstreamUnavailable(undefined, { cause: err })
}

/**
 * Caps a streamed request body (streams bypass Fastify's bodyLimit): passes bytes through and
 * fails with 413 once more than `limit` have gone by.
 */
export function capBody (source: Readable, limit: number): Readable {
  let seen = 0
  const cap = new Transform({
    transform (chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
      seen += chunk.length
      if (seen > limit) cb(new PayloadTooLarge())
      else cb(null, chunk)
    }
  })
  source.on('error', err => cap.destroy(err))
  return source.pipe(cap)
}
