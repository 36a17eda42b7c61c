// The /call pipeline: authenticate → authorize → limit → meter → relay → proxy
// → settle. Each stage is a small function that throws a typed error when it says no; the routes
// (routes/call.ts) wire them into Fastify hooks in exactly the contract's order (CONTRACT §5):
// 401 token, 404 tool, 401 audience, 403 scope, 429 rate (IP, then subject), 429 quota.
// Owns the per-request call state and the quota charge's life; never parses bodies or paths.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { QuotaExceeded, StoreUnavailable, TollgateError } from '../errors.js'
import { bearerToken, headerSafe, requireAudience, requireScopes } from '../plugins/auth.js'
import type { DownstreamTokens } from '../proxy/downstream-token.js'
import { handoffOf } from './lane.js'
import { upstreamRequestHeaders } from '../proxy/headers.js'
import { quotaHeaders, type Charge } from '../quota/index.js'
import type { Principal } from '../tokens/index.js'
import type { Tool, ToolRegistry } from '../tools/index.js'

export interface CallState {
  tool: Tool
  charge?: Charge
  /** Set once the charge was given back, so a call is refunded at most once. */
  refunded?: boolean
  /** When the upstream request was sent (process.hrtime.bigint()). */
  startedAt?: bigint
}

declare module 'fastify' {
  interface FastifyRequest {
    call?: CallState
  }
}

export interface Pipeline {
  /** 401: the bearer token (Authorization, or for a WebSocket handshake the `bearer.` subprotocol). An onRequest hook. */
  authenticate: (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void) => void
  /** 404, 401 audience, 403 scope. `name` comes from the path or the JSON body. */
  authorize: (request: FastifyRequest, name: unknown) => Tool
  /** 429 rate_limited: per IP, then per subject. Nothing to wait for when the store counts in this process. */
  limit: (request: FastifyRequest) => Promise<void> | undefined
  /** 429 quota_exceeded; sets the RateLimit headers on the answer. */
  meter: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  /** The upstream request headers (hygiene + downstream credential). */
  relay: (request: FastifyRequest, tool: Tool, options?: { websocket?: boolean }) => Record<string, string | string[]>
  /** Gives the charge back when the upstream failed and the tool allows it; updates RateLimit. */
  settle: (request: FastifyRequest, reply: FastifyReply | undefined, failed: boolean) => Promise<void>
}

export interface PipelineDeps {
  tools: ToolRegistry
  downstream: DownstreamTokens
  /** Extracts a token for a WebSocket handshake when no Authorization header is present. */
  subprotocolToken: (request: FastifyRequest) => string | undefined
}

export function createPipeline (app: FastifyInstance, deps: PipelineDeps): Pipeline {
  const { tools, downstream } = deps

  // Callback style: verification is synchronous, and an async hook costs a promise per call.
  const authenticate = (request: FastifyRequest, _reply: FastifyReply, done: (err?: Error) => void): void => {
    try {
      const token = request.headers.authorization === undefined ? deps.subprotocolToken(request) : undefined
      request.principal = app.tokens.verify(token ?? bearerToken(request))
    } catch (err) {
      done(err as Error)
      return
    }
    done()
  }

  const authorize = (request: FastifyRequest, name: unknown): Tool => {
    const tool = tools.get(name)
    request.call = { tool }
    const principal = request.principal as Principal
    requireAudience(principal, tool.audience)
    requireScopes(principal, tool.scopes)
    return tool
  }

  const limitAsync = async (request: FastifyRequest): Promise<void> => {
    await app.limiters.perIp(request)
    await app.limiters.perSubject(request)
  }
  const limit = (request: FastifyRequest): Promise<void> | undefined => {
    if (handoffOf(request.raw)?.limitsCounted === true) return undefined // by the call lane
    // Counted at once when both limits have room; otherwise the limiters count, refuse and say why.
    if (app.limiters.takeSync(request.ip, (request.principal as Principal).sub)) return undefined
    return limitAsync(request)
  }

  const meter = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const principal = request.principal as Principal
    const call = request.call as CallState
    const quota = principal.claims.quota
    if (quota === undefined) return // CONTRACT §5: tokens without a quota claim are not metered
    // The call lane's answer, when it charged before handing the request over; else charge now.
    const handoff = handoffOf(request.raw)
    if (handoff?.refunded === true) call.refunded = true
    const charge = handoff?.charge ?? await app.quotas.consume(principal.sub, quota, call.tool.cost).catch((err: unknown) => {
      throw err instanceof TollgateError ? err : new StoreUnavailable({ cause: err }) // fail closed
    })
    const headers = quotaHeaders(charge.usage)
    if (!charge.granted) {
      const err = new QuotaExceeded(charge.usage.reset)
      Object.assign(err.headers, headers)
      throw err
    }
    call.charge = charge
    reply.headers(headers)
  }

  const relay = (request: FastifyRequest, tool: Tool, options: { websocket?: boolean } = {}): Record<string, string | string[]> => {
    const principal = request.principal as Principal
    let credential: { name: string, value: string } | undefined
    if (tool.auth.kind === 'token') credential = { name: 'authorization', value: `Bearer ${downstream.for(principal, tool)}` }
    else if (tool.auth.kind === 'header') credential = { name: tool.auth.header, value: tool.auth.value }
    const ips = request.ips
    return upstreamRequestHeaders(request.headers, {
      clientIp: request.ip,
      peerIp: request.socket.remoteAddress ?? request.ip,
      // proxy-addr lists the peer and then every trusted hop: more than one means the peer is a
      // trusted proxy that sent X-Forwarded-For.
      trustedPeer: ips !== undefined && ips.length > 1,
      proto: request.protocol,
      host: request.host,
      requestId: request.id,
      subject: headerSafe(principal.sub, 'sub'),
      ...(credential !== undefined ? { credential } : {}),
      ...(options.websocket === true ? { websocket: true } : {})
    })
  }

  const settle = async (request: FastifyRequest, reply: FastifyReply | undefined, failed: boolean): Promise<void> => {
    const call = request.call
    const charge = call?.charge
    if (call === undefined || charge === undefined || !failed || call.refunded === true || !call.tool.refundOnFailure) return
    call.refunded = true
    try {
      await app.quotas.refund(charge.receipt)
    } catch (err) {
      request.log.warn({ err, tool: call.tool.name, sub: charge.receipt.sub }, 'quota refund failed')
      return
    }
    const usage = charge.usage
    const used = Math.max(0, usage.used - charge.receipt.cost)
    if (reply !== undefined && !reply.sent) {
      reply.headers(quotaHeaders({ ...usage, used, remaining: Math.max(0, usage.limit - used) }))
    }
  }

  return { authenticate, authorize, limit, meter, relay, settle }
}

/** Why a call was refused, for the audit line and the rejections metric. */
export function refusalReason (err: unknown): string {
  return err instanceof TollgateError ? err.code : 'internal_error'
}
