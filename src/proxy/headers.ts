// Header hygiene between the caller and a tool (CONTRACT §5, SECURITY.md "Proxying"). Owns which
// request headers reach the upstream and which response headers reach the caller; never decides
// who may call, never logs a value.
import type { IncomingHttpHeaders } from 'node:http'

// RFC 9110 §7.6.1 hop-by-hop fields, plus the legacy ones proxies still see.
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'te', 'trailer', 'transfer-encoding', 'upgrade',
  'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'http2-settings'
])

// Expectations are between the caller and Tollgate (Node answers `100-continue` itself, RFC 9110
// §10.1.1); undici refuses to send the field at all, which would turn any request carrying it into a 502.
const CALLER_ONLY = new Set(['expect'])

// The caller's credentials never reach a tool; Tollgate sets its own. A DPoP proof (RFC 9449) is
// one too: it was made for Tollgate's URI and is spent here.
const CREDENTIALS = new Set(['authorization', 'cookie', 'dpop'])

// Set by Tollgate itself below; the caller's values are dropped (or, for a trusted proxy, the
// X-Forwarded-For chain is extended).
const SET_BY_GATEWAY = new Set(['host', 'x-request-id', 'forwarded', 'x-real-ip'])

// W3C Trace Context (docs/tracing.md): with tracing on, the tool gets Tollgate's own span as its
// parent, never the caller's fields unchanged; with tracing off they pass through as any field.
const TRACE_CONTEXT = new Set(['traceparent', 'tracestate'])

/** Field names listed in a Connection header (RFC 9110 §7.6.1): they are hop-by-hop too. */
function connectionListed (headers: IncomingHttpHeaders): Set<string> | undefined {
  const value = headers.connection
  if (value === undefined || value === '') return undefined
  return new Set(String(value).split(',').map(s => s.trim().toLowerCase()).filter(Boolean))
}

export interface ForwardContext {
  /** The client IP as Fastify computed it (honours server.trustProxy). */
  clientIp: string
  /** The TCP peer's address. */
  peerIp: string
  /** Whether the peer is a trusted proxy that sent a forwarding chain. */
  trustedPeer: boolean
  proto: string
  host: string
  requestId: string
  /** X-Auth-Subject, already checked for header safety. */
  subject: string
  /** The credential header for the upstream, if any (lower-case name). */
  credential?: { name: string, value: string }
  /** A WebSocket handshake keeps its Upgrade header and Sec-WebSocket-* fields are set by ws. */
  websocket?: boolean
  /** Tracing is on: the caller's traceparent and tracestate are dropped (src/tracing.ts sets Tollgate's). */
  traced?: boolean
}

/** The headers to send upstream for a caller's request. */
export function upstreamRequestHeaders (incoming: IncomingHttpHeaders, ctx: ForwardContext): Record<string, string | string[]> {
  const listed = connectionListed(incoming)
  const out: Record<string, string | string[]> = {}
  for (const name in incoming) {
    const value = incoming[name]
    if (value === undefined) continue
    if (HOP_BY_HOP.has(name) || CREDENTIALS.has(name) || SET_BY_GATEWAY.has(name) || CALLER_ONLY.has(name)) continue
    if (name.startsWith('proxy-') || name.startsWith('x-forwarded-') || name.startsWith('x-auth-')) continue
    if (listed?.has(name) === true) continue
    if (ctx.websocket === true && name.startsWith('sec-websocket-')) continue
    if (ctx.traced === true && TRACE_CONTEXT.has(name)) continue
    out[name] = value
  }
  const chain = ctx.trustedPeer ? incoming['x-forwarded-for'] : undefined
  out['x-forwarded-for'] = chain !== undefined && chain !== '' ? `${String(chain)}, ${ctx.peerIp}` : ctx.clientIp
  out['x-forwarded-proto'] = ctx.proto
  out['x-forwarded-host'] = ctx.host
  out['x-request-id'] = ctx.requestId
  out['x-auth-subject'] = ctx.subject
  if (ctx.credential !== undefined) out[ctx.credential.name] = ctx.credential.value
  return out
}

// Quota fields are Tollgate's to send: a tool's own never reach the caller. Nor does the cost a tool
// reports for settlement (CONTRACT §10), or a Tollgate-Charged it made up.
const GATEWAY_ANSWER = new Set(['ratelimit', 'ratelimit-policy', 'tollgate-cost', 'tollgate-charged'])

/** The upstream's response headers for the caller: without hop-by-hop fields or the tool's RateLimit fields. */
export function callerResponseHeaders (incoming: Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  const listed = connectionListed(incoming as IncomingHttpHeaders)
  const out: Record<string, string | string[]> = {}
  for (const name in incoming) {
    const value = incoming[name]
    if (value === undefined) continue
    if (HOP_BY_HOP.has(name) || GATEWAY_ANSWER.has(name) || listed?.has(name) === true) continue
    out[name] = value
  }
  return out
}
