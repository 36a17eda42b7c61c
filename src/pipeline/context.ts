// The one per-request state of the pipeline, declared once. Every path that runs the stages (the
// Fastify routes, the WebSocket upgrade) makes one with createContext() when the request arrives
// and hands it from stage to stage; nothing else about a request is kept anywhere. Knows nothing
// about Fastify.
import type { Charge, QuotaUsage } from '../quota/index.js'
import type { Principal } from '../tokens/index.js'
import type { Tool } from '../tools/index.js'
import type { IdempotencyHold } from './idempotency.js'
import type { RequestTrace } from '../tracing.js'

export interface RequestContext {
  /** The request id (X-Request-Id), also sent upstream and written in every log line. */
  readonly id: string
  /** The client address (server.trustProxy applied): the per-IP limit's key. */
  readonly ip: string
  /** authenticate: the verified token. */
  principal: Principal | undefined
  /** The client id the request claimed at an OAuth endpoint (verified or not), for audit lines. */
  clientId: string | undefined
  /** authorize: the tool called. */
  tool: Tool | undefined
  /** The raw bytes of a POST /call body (or of a pass-through body priced by a costExpr), sent upstream unchanged. */
  body: Buffer | undefined
  /** The checked upstream path and query of a pass-through call. */
  upstreamPath: string | undefined
  /** An MCP POST: the ids of its tools/list requests, whose answers are filtered (src/mcp/rpc.ts). */
  mcpListIds: Set<string | number> | undefined
  /** idempotency: the Idempotency-Key this call claimed, until its answer is kept or the key freed. */
  idempotency: IdempotencyHold | undefined
  /** meter: the quota charge taken for this call. */
  charge: Charge | undefined
  /** The usage to report in the RateLimit fields (after the charge, and after a refund). */
  usage: QuotaUsage | undefined
  /** settle: set once the charge was given back, so a call is refunded at most once. */
  refunded: boolean
  /** settle: what the call was finally charged (the reservation, or what the tool reported), for the audit line. */
  charged: number | undefined
  /** The request's spans (src/tracing.ts) when tracing is on; stages are traced through `trace?.`. */
  trace: RequestTrace | undefined
}

/** A fresh context; every field is present from the start, so its shape never changes. */
export function createContext (id: string, ip: string): RequestContext {
  return {
    id,
    ip,
    principal: undefined,
    clientId: undefined,
    tool: undefined,
    body: undefined,
    upstreamPath: undefined,
    mcpListIds: undefined,
    idempotency: undefined,
    charge: undefined,
    usage: undefined,
    refunded: false,
    charged: undefined,
    trace: undefined
  }
}

/** The verified principal, for stages that run after authenticate. */
export function principalOf (ctx: RequestContext): Principal {
  const principal = ctx.principal
  if (principal === undefined) throw new Error('pipeline: a stage ran before authenticate')
  return principal
}
