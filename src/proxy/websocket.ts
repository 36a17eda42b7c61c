// WebSockets through /call/:tool/* (CONTRACT §9). Upgrade requests are dispatched through
// Fastify's router (as @fastify/websocket does), so every /call check runs in its hooks before
// anything is accepted; a refusal is an ordinary HTTP answer on the socket. Once the checks pass,
// the upstream handshake is made first (carrying the downstream token), and only then is the
// caller's upgrade accepted. Owns the relay and the connection's life (closed with 1008 when the
// caller's token expires or is revoked); never decides who may connect.
import { ServerResponse, type IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import WebSocket, { WebSocketServer, type RawData } from 'ws'
import type { Principal, Tokens } from '../tokens/index.js'
import type { Tool } from '../tools/index.js'
import { UpstreamTimeout, UpstreamUnavailable } from '../errors.js'

const kUpgrade = Symbol('tollgate.upgrade')
const BEARER_PROTOCOL = 'bearer.'
/** How often a live connection re-checks expiry (by the app clock) and revocation (ms). */
export const WS_CHECK_MS = 1000

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
  readonly #wss: WebSocketServer
  readonly #live = new Set<{ client: WebSocket, upstream: WebSocket }>()

  constructor (readonly app: FastifyInstance, readonly tokens: Tokens, readonly clock: () => number, readonly checkMs = WS_CHECK_MS) {
    this.#wss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      handleProtocols: (_protocols, req) => (req as UpgradeRequest)[kUpgrade]?.protocol ?? false
    })
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
      this.#wss.close()
    })
  }

  get size (): number {
    return this.#live.size
  }

  /**
   * Opens the upstream WebSocket, then accepts the caller's upgrade and relays both ways.
   * Throws UpstreamUnavailable/UpstreamTimeout (nothing accepted yet) when the upstream handshake fails.
   */
  async relay (request: FastifyRequest, reply: FastifyReply, options: RelayOptions): Promise<void> {
    const state = (request.raw as UpgradeRequest)[kUpgrade] as UpgradeState
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
      rejectUnauthorized: true
    })
    // Messages the tool sends before the caller is attached wait here. Listening from the start
    // matters: a first message in the same packet as the 101 is emitted right after 'open'.
    const early: Array<[RawData, boolean]> = []
    const onEarly = (data: RawData, isBinary: boolean): void => { early.push([data, isBinary]) }
    upstream.on('message', onEarly)
    await new Promise<void>((resolve, reject) => {
      upstream.once('open', () => { resolve() })
      upstream.once('unexpected-response', (_req, res) => {
        res.resume()
        upstream.terminate()
        reject(new UpstreamUnavailable(`the tool refused the WebSocket handshake (${res.statusCode ?? 'no status'})`))
      })
      upstream.once('error', err => {
        reject(/timed out/i.test(err.message) ? new UpstreamTimeout(undefined, { cause: err }) : new UpstreamUnavailable(undefined, { cause: err }))
      })
    })
    upstream.on('error', () => { upstream.terminate() })

    // CONTRACT §9: the `bearer.` subprotocol is selected in the 101 when it carried the token;
    // otherwise the caller gets the subprotocol the tool chose.
    state.protocol = bearer ?? (upstream.protocol !== '' && offered.includes(upstream.protocol) ? upstream.protocol : false)
    reply.hijack()
    state.socket.removeListener('error', state.guard)
    this.#wss.handleUpgrade(request.raw, state.socket, state.head, client => {
      this.#wire(request, client, upstream, early, onEarly, options.principal)
    })
  }

  #wire (request: FastifyRequest, client: WebSocket, upstream: WebSocket, early: Array<[RawData, boolean]>, onEarly: (d: RawData, b: boolean) => void, principal: Principal): void {
    const pair = { client, upstream }
    this.#live.add(pair)
    upstream.off('message', onEarly)
    for (const [data, isBinary] of early) client.send(data, { binary: isBinary })
    upstream.on('message', (data, isBinary) => { if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary }) })
    client.on('message', (data, isBinary) => { if (upstream.readyState === WebSocket.OPEN) upstream.send(data, { binary: isBinary }) })
    upstream.on('close', (code, reason) => { client.close(sendable(code), reason) })
    client.on('close', (code, reason) => {
      clearTimeout(timer)
      clearInterval(poll)
      this.#live.delete(pair)
      if (upstream.readyState === WebSocket.OPEN || upstream.readyState === WebSocket.CONNECTING) upstream.close(sendable(code), reason)
    })
    client.on('error', () => { client.terminate(); upstream.terminate() })

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
