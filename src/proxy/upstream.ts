// Upstream requests: one kept-alive undici Pool per tool origin, with connect, headers and body
// timeouts, TLS verification on and no retries. Translates undici's failures into the typed
// 502/504 errors where they are caught. Never decides who may call, never touches headers.
import type { OutgoingHttpHeaders, ServerResponse } from 'node:http'
import { Transform, type Readable, type TransformCallback } from 'node:stream'
import { Pool, type Dispatcher } from 'undici'
import { PayloadTooLarge, TollgateError, UpstreamTimeout, UpstreamUnavailable } from '../errors.js'
import type { BodyRewriter } from '../mcp/rpc.js'
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
   * Sends one request and resolves at the upstream's response headers with an UpstreamAnswer,
   * whose body is then relayed to the caller's response by `relayTo`: no stream objects in
   * between, backpressure through undici's pause and resume. The tool's timeout bounds the wait for
   * headers and each gap in the body. Never retried: a failure before the headers rejects with the
   * caller's answer (502 or 504).
   */
  async send (tool: Tool, req: UpstreamRequest): Promise<UpstreamAnswer> {
    let pool: Pool
    try {
      pool = this.pool(tool.origin)
    } catch (err) {
      throw translate(err)
    }
    return await new Promise<UpstreamAnswer>((resolve, reject) => {
      const answer = new UpstreamAnswer(resolve, reject)
      pool.dispatch({
        origin: tool.origin,
        method: req.method,
        path: req.path,
        headers: req.headers,
        body: req.body ?? null,
        headersTimeout: tool.timeoutMs,
        bodyTimeout: tool.timeoutMs
      }, answer)
    })
  }

  async close (): Promise<void> {
    this.#closed = true
    const pools = [...this.#pools.values()]
    this.#pools.clear()
    await Promise.all(pools.map(async p => { await p.destroy() }))
  }
}

/** What relayTo does to an answer besides relaying it (see relayTo). */
export interface RelayOptions {
  rewrite?: BodyRewriter | undefined
  tap?: AnswerTap | undefined
  beforeEnd?: ((trailers: Record<string, string | string[] | undefined>) => Promise<void>) | undefined
}

/**
 * Watches an answer's body on its way to the caller (the idempotency stage keeps it for replays).
 * Sees exactly the bytes the caller gets, never changes or delays them, except that the end of the
 * answer waits for `end` (so a retry sent after the answer finds it kept).
 */
export interface AnswerTap {
  /** Each chunk, as written to the caller. */
  data: (chunk: Buffer) => void
  /** The whole body went out; the caller's response ends when the promise settles (it never rejects). */
  end: () => Promise<void>
  /** The answer did not go out whole: its body broke off, or the caller went away. */
  abort: () => void
}

/**
 * One upstream answer, as an undici dispatch handler: its status and headers resolve `send`; its
 * body chunks wait (at most what arrives in the same tick) until `relayTo` names the caller's
 * response, then go straight to it. A body that breaks off destroys the caller's response and is
 * reported to `onBodyError`; the caller going away aborts the upstream request.
 */
export class UpstreamAnswer implements Dispatcher.DispatchHandler {
  statusCode = 0
  headers: Record<string, string | string[] | undefined> = {}
  #controller: Dispatcher.DispatchController | undefined
  #res: ServerResponse | undefined
  #pending: Buffer[] = []
  #ended = false
  #started = false
  #failure: Error | undefined
  #callerGone = false
  #onBodyError: ((err: Error) => void) | undefined
  /** Set by relayTo for an answer Tollgate must edit on the way (an MCP tools/list answer). */
  #rewrite: BodyRewriter | undefined
  /** The upstream's trailers (a chunked answer's), once it ended. */
  #trailers: Record<string, string | string[] | undefined> | undefined
  /** Set by relayTo: runs on the trailers before the caller's answer ends (settlement, CONTRACT §10). */
  #beforeEnd: ((trailers: Record<string, string | string[] | undefined>) => Promise<void>) | undefined
  /** Set by relayTo for an answer that is watched on the way (an idempotent call's). */
  #tap: AnswerTap | undefined

  constructor (readonly resolve: (answer: UpstreamAnswer) => void, readonly reject: (err: TollgateError) => void) {}

  onRequestStart (controller: Dispatcher.DispatchController): void {
    this.#controller = controller
  }

  onResponseStart (_controller: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[] | undefined>): void {
    this.statusCode = statusCode
    this.headers = headers
    this.#started = true
    this.resolve(this)
  }

  onResponseData (controller: Dispatcher.DispatchController, chunk: Buffer): void {
    const res = this.#res
    if (res === undefined) {
      // Not relayed yet: hold this chunk and wait for relayTo.
      this.#pending.push(chunk)
      controller.pause()
      return
    }
    this.#write(res, controller, chunk)
  }

  #write (res: ServerResponse, controller: Dispatcher.DispatchController | undefined, chunk: Buffer): void {
    let out: Buffer | undefined = chunk
    if (this.#rewrite !== undefined) {
      try {
        out = this.#rewrite.push(chunk)
      } catch (err) {
        this.#failure = err as Error
        controller?.abort(err as Error)
        this.#fail(res, err as Error)
        return
      }
      if (out === undefined) return
    }
    this.#tap?.data(out)
    if (!res.write(out) && controller !== undefined) {
      controller.pause()
      res.once('drain', () => { controller.resume() })
    }
  }

  onResponseEnd (_controller: Dispatcher.DispatchController, trailers: Record<string, string | string[] | undefined>): void {
    this.#trailers = trailers
    this.#ended = true
    const res = this.#res
    if (res === undefined) return
    this.#finish(res)
  }

  #finish (res: ServerResponse): void {
    if (this.#rewrite !== undefined) {
      let tail: Buffer | undefined
      try {
        tail = this.#rewrite.end()
      } catch (err) {
        this.#failure = err as Error
        this.#fail(res, err as Error)
        return
      }
      if (tail !== undefined) {
        this.#tap?.data(tail)
        res.write(tail)
      }
    }
    const tap = this.#tap
    const beforeEnd = this.#beforeEnd
    if (tap === undefined && beforeEnd === undefined) {
      res.end()
      return
    }
    // The answer ends once the hooks are done: what settlement charged is in the answer's log line,
    // and a kept idempotent answer is in the store before the caller can retry. The upstream's
    // trailers are never relayed.
    const settled = beforeEnd === undefined ? Promise.resolve() : beforeEnd(this.#trailers ?? {}).catch(() => {})
    settled.then(async () => { await tap?.end() }).finally(() => { res.end() })
  }

  onResponseError (_controller: Dispatcher.DispatchController, err: Error): void {
    if (!this.#started) {
      this.reject(translate(err))
      return
    }
    this.#failure = err
    if (this.#res !== undefined) this.#fail(this.#res, err)
  }

  /**
   * Writes the status and `headers` to the caller's response and relays the body into it.
   * `onBodyError` hears of a body that breaks off (not of the caller going away). Options:
   * `rewrite` edits the body on its way (an MCP tools/list answer); `tap` watches it (an idempotent
   * call's, kept for replays); `beforeEnd` gets the upstream's trailers once its body is complete,
   * and the caller's answer ends when it settles (settlement, CONTRACT §10).
   */
  relayTo (res: ServerResponse, headers: OutgoingHttpHeaders, onBodyError: (err: Error) => void, options: RelayOptions = {}): void {
    const { rewrite, tap, beforeEnd } = options
    this.#res = res
    this.#onBodyError = onBodyError
    this.#tap = tap
    this.#beforeEnd = beforeEnd
    if (rewrite !== undefined) {
      // The body changes length: it goes out chunked.
      this.#rewrite = rewrite
      delete headers['content-length']
    }
    res.once('close', () => {
      if (this.#ended || this.#failure !== undefined) return
      this.#callerGone = true
      this.#tap?.abort()
      this.#controller?.abort(new Error('the caller went away'))
    })
    res.writeHead(this.statusCode, headers)
    const pending = this.#pending
    this.#pending = []
    for (const chunk of pending) {
      this.#write(res, undefined, chunk)
      if (this.#failure !== undefined) return
    }
    if (this.#failure !== undefined) this.#fail(res, this.#failure)
    else if (this.#ended) this.#finish(res)
    else if (this.#controller?.paused === true) this.#controller.resume()
  }

  #fail (res: ServerResponse, err: Error): void {
    if (!this.#callerGone) {
      this.#onBodyError?.(err)
      this.#tap?.abort()
    }
    res.destroy(err)
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

/**
 * Reads a streamed request body whole, failing with 413 past `limit` bytes: for the calls that must
 * know the body before they are forwarded (an Idempotency-Key's body hash).
 */
export async function readBody (source: Readable, limit: number): Promise<Buffer> {
  return await new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = []
    let seen = 0
    let settled = false
    const fail = (err: Error): void => {
      if (settled) return
      settled = true
      source.off('data', onData)
      reject(err)
    }
    const onData = (chunk: Buffer): void => {
      seen += chunk.length
      if (seen <= limit) {
        chunks.push(chunk)
        return
      }
      // Not destroyed: the 413 still has to reach the caller; Node drops the rest of the body.
      source.pause()
      fail(new PayloadTooLarge())
    }
    source.on('data', onData)
    source.once('end', () => {
      if (settled) return
      settled = true
      resolve(Buffer.concat(chunks, seen))
    })
    // A caller that goes away mid-body: a 400 (nobody reads it), never a 500 or a promise left open.
    const broken = (err?: Error): void => { fail(new TollgateError('invalid_request', 400, 'the request body broke off', err !== undefined ? { cause: err } : undefined)) }
    source.once('error', broken)
    source.once('close', () => { broken() })
  })
}
