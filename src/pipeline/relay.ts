// relay: what the tool receives instead of the caller's request headers (CONTRACT §5): the
// header hygiene of proxy/headers.ts, the forwarding fields, X-Auth-Subject, and the tool's own
// credential (a short-lived downstream token by default, never the caller's).
import type { IncomingHttpHeaders } from 'node:http'
import type { DownstreamTokens } from '../proxy/downstream-token.js'
import { upstreamRequestHeaders } from '../proxy/headers.js'
import type { Tool } from '../tools/index.js'
import { principalOf, type RequestContext } from './context.js'
import { headerSafe } from './header-safe.js'

/** How the request reached Tollgate, as the HTTP layer saw it. */
export interface Arrival {
  headers: IncomingHttpHeaders
  /** The TCP peer's address. */
  peerIp: string
  /** Whether the peer is a trusted proxy that sent a forwarding chain. */
  trustedPeer: boolean
  proto: string
  host: string
}

/** The tool's credential header, if it takes one. */
export function toolCredential (downstream: DownstreamTokens, ctx: RequestContext, tool: Tool): { name: string, value: string } | undefined {
  if (tool.auth.kind === 'token') return { name: 'authorization', value: `Bearer ${downstream.for(principalOf(ctx), tool)}` }
  if (tool.auth.kind === 'header') return { name: tool.auth.header, value: tool.auth.value }
  return undefined
}

/** The upstream request headers for the context's call to `tool`. */
export function relayHeaders (downstream: DownstreamTokens, ctx: RequestContext, tool: Tool, arrival: Arrival, options: { websocket?: boolean } = {}): Record<string, string | string[]> {
  const credential = toolCredential(downstream, ctx, tool)
  return upstreamRequestHeaders(arrival.headers, {
    clientIp: ctx.ip,
    peerIp: arrival.peerIp,
    trustedPeer: arrival.trustedPeer,
    proto: arrival.proto,
    host: arrival.host,
    requestId: ctx.id,
    subject: headerSafe(principalOf(ctx).sub, 'sub'),
    ...(credential !== undefined ? { credential } : {}),
    ...(options.websocket === true ? { websocket: true } : {}),
    traced: ctx.trace !== undefined
  })
}
