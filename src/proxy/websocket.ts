// WebSockets through /call/:tool/* (CONTRACT §9). Upgrade requests are dispatched through
// Fastify's router (as @fastify/websocket does), so every /call check runs in its hooks before
// anything is accepted; a refusal is an ordinary HTTP answer on the socket. Once the checks pass,
// the caller's handshake is validated in full (the checks ws's handleUpgrade would make), then the
// upstream handshake is made (carrying the downstream token), and only then is the caller's
// upgrade accepted. An upstream never outlives a caller that went away before it was wired.
// Owns the relay and the connection's life: message size (tools[].maxPayload, 1009 above it),
// backpressure both ways, and closing with 1008 when the caller's token expires or is revoked;
// never decides who may connect.
import { ServerResponse, type IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import WebSocket, { WebSocketServer, type RawData } from 'ws'
import type { Principal, Tokens } from '../tokens/index.js'
import type { Tool } from '../tools/index.js'
import { TollgateError, UpstreamTimeout, UpstreamUnavailable } from '../errors.js'

const kUpgrade = Symbol('tollgate.upgrade')
const BEARER_PROTOCOL = 'bearer.'
/** How often a live connection re-checks expiry (by the app clock) and revocation (ms). */
export const WS_CHECK_MS = 1000
/**
 * Backpressure (bytes): a side stops being read once more than HIGH bytes wait to be written to
 * the other side, and is read again when that falls to LOW. What one connection holds is bounded by
 * about HIGH + one socket read + one message (maxPayload) each way.
 */
export const WS_HIGH_WATER = 1024 * 1024
export const WS_LOW_WATER = 256 * 1024

// RFC 6455 §4.2.1 and ws's handleUpgrade: a 16-byte nonce in base64.
const KEY = /^[+/0-9A-Za-z]{22}==$/
// RFC 7230 §3.2.6 token characters.
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/

interface UpgradeState {
  socket: Duplex
  head: Buffer
  guard: () => void
  /** The subprotocol chosen for the caller's 101. */
  protocol?: string | false
}

type UpgradeRequest = IncomingMessage & { [kUpgrade]?: UpgradeState }

export function isUpgrade (request: FastifyRequest): boolean {
  return (request.raw as UpgradeRequest)[kUpgrade] !== undefined
}

/** The subprotocols a caller offered (RFC 6455 §4.1), in order. */
export function offeredProtocols (request: FastifyRequest): string[] {
  const header = request.headers['sec-websocket-protocol']
  if (header === undefined) return []
  return String(header).split(',').map(s => s.trim()).filter(Boolean)
}

/** A token offered as the `bearer.<token>` subprotocol, for a WebSocket handshake only. */
export function subprotocolToken (request: FastifyRequest): string | undefined {
  if (!isUpgrade(request)) return undefined
  const offered = offeredProtocols(request).find(p => p.startsWith(BEARER_PROTOCOL))
  return offered === undefined ? undefined : offered.slice(BEARER_PROTOCOL.length)
}

/**
 * Every check ws's handleUpgrade makes before it accepts (RFC 6455 §4.2.1), made before the tool is
 * dialled: a handshake refused here never opens an upstream connection. Throws a 400 (405 for a
 * method other than GET) that the error handler answers on the socket.
 */
export function assertValidHandshake (req: IncomingMessage): void {
  if (req.method !== 'GET') throw new TollgateError('invalid_request', 405, 'a WebSocket handshake must be a GET')
  const upgrade = req.headers.upgrade
  if (typeof upgrade !== 'string' || upgrade.toLowerCase() !== 'websocket') throw new TollgateError('invalid_request', 400, 'invalid Upgrade header')
  const key = req.headers['sec-websocket-key']
  if (typeof key !== 'string' || !KEY.test(key)) throw new TollgateError('invalid_request', 400, 'missing or invalid Sec-WebSocket-Key header')
  const version = req.headers['sec-websocket-version']
  if (version !== '13' && version !== '8') throw new TollgateError('invalid_request', 400, 'missing or invalid Sec-WebSocket-Version header')
  const protocols = req.headers['sec-websocket-protocol']
  if (protocols !== undefined) {
    // One header line (Node joins repeats with ", "); tokens separated by commas with optional
    // spaces or tabs around them, none empty, none repeated.
    const list = String(protocols).split(',').map(p => p.replace(/^[ \t]+|[ \t]+$/g, ''))
    if (list.some(p => !TOKEN.test(p)) || new Set(list).size !== list.length) throw new TollgateError('invalid_request', 400, 'invalid Sec-WebSocket-Protocol header')
  }
}

/**
 * Relays messages from one side to the other with backpressure: when the destination has more
 * than WS_HIGH_WATER bytes waiting (its bufferedAmount: ws's queue plus the socket's buffer), the
 * source socket is paused, so the kernel's window pushes back on the sender; it resumes when a
 * write completes with WS_LOW_WATER or less left.
 */
function pipeMessages (from: WebSocket, to: WebSocket): void {
  let paused = false
  const drained = (): void => {
    if (paused && to.bufferedAmount <= WS_LOW_WATER) {
      paused = false
      from.resume()
    }
  }
  from.on('message', (data, isBinary) => {
    if (to.readyState !== WebSocket.OPEN) return
    to.send(data, { binary: isBinary }, drained)
    if (!paused && to.bufferedAmount > WS_HIGH_WATER) {
      paused = true
      from.pause()
    }
  })
}

// RFC 6455 §7.4: 1005, 1006 and 1015 are never sent in a close frame.
function sendable (code: number): number {
  return code === 1005 || code === 1006 || code === 1015 || code < 1000 || code > 4999 ? 1000 : code
}

export interface RelayOptions {
  tool: Tool
  /** Origin-relative path and query, already checked. */
  path: string
  headers: Record<string, string | string[]>
  principal: Principal
}

export class WebSocketRelay {
  /** One server per maxPayload in use: ws takes the limit per server, tools set it per tool. */
  readonly #servers = new Map<number, WebSocketServer>()
  readonly #live = new Set<{ client: WebSocket, upstream: WebSocket }>()

  constructor (readonly app: FastifyInstance, readonly tokens: Tokens, readonly clock: () => number, readonly checkMs = WS_CHECK_MS) {}

  #server (maxPayload: number): WebSocketServer {
    let wss = this.#servers.get(maxPayload)
    if (wss === undefined) {
      wss = new WebSocketServer({
        noServer: true,
        perMessageDeflate: false,
        maxPayload,
        handleProtocols: (_protocols, req) => (req as UpgradeRequest)[kUpgrade]?.protocol ?? false
      })
      this.#servers.set(maxPayload, wss)
    }
    return wss
  }

  /** Routes every upgrade request through Fastify; a refused one gets its HTTP answer and is closed. */
  listen (): void {
    const onUpgrade = (req: UpgradeRequest, socket: Duplex, head: Buffer): void => {
      const guard = (): void => { socket.destroy() }
      socket.on('error', guard)
      req[kUpgrade] = { socket, head, guard }
      const res = new ServerResponse(req)
      res.assignSocket(socket as Socket)
      res.on('finish', () => { socket.end() })
      try {
        this.app.routing(req, res)
      } catch (err) {
        this.app.log.warn({ err }, 'websocket upgrade failed')
        socket.destroy()
      }
    }
    this.app.server.on('upgrade', onUpgrade)
    this.app.addHook('preClose', async () => {
      this.app.server.off('upgrade', onUpgrade)
      for (const { client, upstream } of this.#live) {
        client.close(1001, 'server shutting down')
        upstream.terminate()
      }
    })
    this.app.addHook('onClose', async () => {
      for (const { client } of this.#live) client.terminate()
      for (const wss of this.#servers.values()) wss.close()
    })
  }

  get size (): number {
    return this.#live.size
  }

  /**
   * Validates the caller's handshake, opens the upstream WebSocket, then accepts the caller's
   * upgrade and relays both ways. Throws (nothing accepted yet) a 400/405 for an invalid handshake,
   * UpstreamUnavailable/UpstreamTimeout when the upstream handshake fails, and a 400 when the caller
   * went away meanwhile; in every case no upstream connection is left open.
   */
  async relay (request: FastifyRequest, reply: FastifyReply, options: RelayOptions): Promise<void> {
    const state = (request.raw as UpgradeRequest)[kUpgrade] as UpgradeState
    assertValidHandshake(request.raw)
    if (state.socket.destroyed) throw new TollgateError('invalid_request', 400, 'the caller went away during the handshake')
    const { maxPayload } = options.tool
    const offered = offeredProtocols(request)
    const bearer = offered.find(p => p.startsWith(BEARER_PROTOCOL))
    // The bearer subprotocol never goes upstream; the others are offered to the tool as they came.
    const forward = offered.filter(p => !p.startsWith(BEARER_PROTOCOL))
    const url = new URL(options.path, options.tool.origin)
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:'
    const upstream = new WebSocket(url, forward, {
      headers: options.headers as Record<string, string>,
      handshakeTimeout: options.tool.timeoutMs,
      perMessageDeflate: false,
      followRedirects: false,
      rejectUnauthorized: true,
      maxPayload
    })
    // A caller that hangs up while the tool is being dialled (or before it is wired) takes the
    // upstream with it. 'end' counts: an upgrade socket is half-open, so a caller's FIN alone
    // never brings 'close', and ws refuses to upgrade a socket that is no longer readable.
    let wired = false
    let callerGone: (() => void) | undefined
    const onCallerClose = (): void => {
      if (wired) return
      upstream.terminate()
      callerGone?.()
    }
    const unwatchCaller = (): void => {
      state.socket.removeListener('close', onCallerClose)
      state.socket.removeListener('end', onCallerClose)
    }
    state.socket.once('close', onCallerClose)
    state.socket.once('end', onCallerClose)
    // Messages the tool sends before the caller is attached wait here. Listening from the start
    // matters: a first message in the same packet as the 101 is emitted right after 'open'.
    const early: Array<[RawData, boolean]> = []
    const onEarly = (data: RawData, isBinary: boolean): void => { early.push([data, isBinary]) }
    upstream.on('message', onEarly)
    const dialled = new Promise<void>((resolve, reject) => {
      callerGone = () => { reject(new TollgateError('invalid_request', 400, 'the caller went away during the handshake')) }
      upstream.once('open', () => {
        // Read nothing more from the tool until the caller is attached (see `early`).
        upstream.pause()
        resolve()
      })
      upstream.once('unexpected-response', (_req, res) => {
        res.resume()
        upstream.terminate()
        reject(new UpstreamUnavailable(`the tool refused the WebSocket handshake (${res.statusCode ?? 'no status'})`))
      })
      upstream.once('error', err => {
        upstream.terminate()
        reject(/timed out/i.test(err.message) ? new UpstreamTimeout(undefined, { cause: err }) : new UpstreamUnavailable(undefined, { cause: err }))
      })
    })
    try {
      await dialled
    } catch (err) {
      unwatchCaller()
      throw err
    }
    upstream.on('error', () => { upstream.terminate() })

    // CONTRACT §9: the `bearer.` subprotocol is selected in the 101 when it carried the token;
    // otherwise the caller gets the subprotocol the tool chose.
    state.protocol = bearer ?? (upstream.protocol !== '' && offered.includes(upstream.protocol) ? upstream.protocol : false)
    state.socket.removeListener('error', state.guard)
    try {
      this.#server(maxPayload).handleUpgrade(request.raw, state.socket, state.head, client => {
        wired = true
        unwatchCaller()
        this.#wire(request, client, upstream, early, onEarly, options.principal)
      })
    } finally {
      // handleUpgrade answers synchronously; if it refused (or found the caller gone) the upstream goes too.
      if (!wired) {
        upstream.terminate()
        unwatchCaller()
        state.socket.destroy()
      }
    }
    // Thrown before hijacking, so the caller's charge is refunded like any failed handshake.
    if (!wired) throw new TollgateError('invalid_request', 400, 'the caller went away during the handshake')
    reply.hijack()
  }

  #wire (request: FastifyRequest, client: WebSocket, upstream: WebSocket, early: Array<[RawData, boolean]>, onEarly: (d: RawData, b: boolean) => void, principal: Principal): void {
    const pair = { client, upstream }
    this.#live.add(pair)
    upstream.off('message', onEarly)
    for (const [data, isBinary] of early) client.send(data, { binary: isBinary })
    pipeMessages(upstream, client)
    pipeMessages(client, upstream)
    upstream.resume()
    // A tool that broke the protocol (a message over maxPayload, say) or dropped the connection
    // without a close frame: 1014 (bad gateway), not a normal close.
    let upstreamFailed = false
    upstream.on('error', () => { upstreamFailed = true })
    upstream.on('close', (code, reason) => {
      if (upstreamFailed || code === 1006) client.close(1014, 'the tool connection failed')
      else client.close(sendable(code), reason)
    })
    client.on('close', (code, reason) => {
      clearTimeout(timer)
      clearInterval(poll)
      this.#live.delete(pair)
      if (upstream.readyState === WebSocket.OPEN || upstream.readyState === WebSocket.CONNECTING) upstream.close(sendable(code), reason)
    })
    // ws has already started the close handshake with the caller for a protocol error (1009 for a
    // message over maxPayload, 1002...): let it finish, and end the tool's side now.
    client.on('error', () => { if (upstream.readyState === WebSocket.OPEN) upstream.close(1001, 'caller connection failed'); else upstream.terminate() })

    // RFC 6455 §7.4.1 1008 (policy violation): the caller's token expired or was revoked.
    const expMs = principal.exp * 1000
    const check = (): void => {
      let reason: string | undefined
      if (this.clock() >= expMs) reason = 'token expired'
      else if (this.tokens.revocations.denies(principal.claims)) reason = 'token revoked'
      if (reason === undefined) return
      request.log.info({ audit: 'call.ws.closed', tool: request.ctx.tool?.name, sub: principal.sub, jti: principal.jti, reason }, 'websocket closed')
      client.close(1008, reason)
      upstream.close(1008, reason)
    }
    const timer = setTimeout(check, Math.min(Math.max(0, expMs - this.clock()), 2 ** 31 - 1))
    const poll = setInterval(check, this.checkMs)
    timer.unref()
    poll.unref()
  }
}
