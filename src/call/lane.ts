// The call lane: POST /call for a token verified before, run from the raw request without
// Fastify's routing, hooks and per-stage promises. It goes through the same stages as the route,
// in the same order, on the same pieces (token cache, tool registry, limiters, quota, downstream
// tokens, header hygiene, upstream pools), and answers only when the tool answers.
//
// Every refusal and every upstream failure is handed to Fastify's route with what the lane has
// already done (the body it read, the limits it counted, the quota charge, the upstream error),
// so the route answers, refunds, audits and counts it exactly as for a request it had from the
// start, and nothing is counted, charged or sent upstream twice. A request the lane does not
// recognise before reading the body is Fastify's from the start.
import type { IncomingMessage, ServerResponse, OutgoingHttpHeaders } from 'node:http'
import type { FastifyInstance } from 'fastify'
import { bearerCandidate, logAnswered, requestId, type Lane } from '../http.js'
import { isHeaderSafe } from '../plugins/auth.js'
import type { DownstreamTokens } from '../proxy/downstream-token.js'
import { callerResponseHeaders, upstreamRequestHeaders } from '../proxy/headers.js'
import type { Upstreams } from '../proxy/upstream.js'
import { quotaHeaders, type Charge } from '../quota/index.js'
import type { TollgateError } from '../errors.js'
import type { Tool, ToolRegistry } from '../tools/index.js'

/** What the lane did before handing a request to Fastify's route. */
export interface Handoff {
  id: string
  body: Buffer
  /** The per-IP and per-subject limits counted this request. */
  limitsCounted: boolean
  /** The quota answer (granted or not): the route uses it instead of charging again. */
  charge?: Charge
  /** The upstream failed before answering: the route answers it, without a retry. */
  upstreamError?: TollgateError
  /** The lane gave the charge back already (the charge's usage says so). */
  refunded?: boolean
}

const handoffs = new WeakMap<IncomingMessage, Handoff>()

export function handoffOf (req: IncomingMessage): Handoff | undefined {
  return handoffs.get(req)
}

/** The request id the lane gave a request it handed over, so both halves log and send one id. */
export function laneRequestId (req: IncomingMessage): string | undefined {
  return handoffs.get(req)?.id
}

const JSON_TYPES = new Set(['application/json', 'application/json; charset=utf-8'])
// Fastify's JSON parser refuses prototype keys (secure-json-parse, protoAction 'error').
const PROTO_KEYS = /"(?:__proto__|constructor)"/

interface Deps {
  tools: ToolRegistry
  upstreams: Upstreams
  downstream: DownstreamTokens
}

export function callLane (app: FastifyInstance, deps: Deps): (Lane & { served: number, handedOver: number }) | undefined {
  // Behind a trusted proxy the client address, scheme and host come from forwarded headers: the
  // route works them out, so the lane stays out of the way.
  if (app.config.server.trustProxy !== false) return undefined
  // A store that counts elsewhere (Redis) is asked with a promise: the route does that.
  if (app.store.takeCountersSync === undefined) return undefined
  const { tokens, limiters, quotas, metrics, log } = app
  const { tools, upstreams, downstream } = deps
  const bodyLimit = app.config.server.bodyLimit

  const lane = (req: IncomingMessage, res: ServerResponse, fallback: () => void): boolean => {
    if (req.method !== 'POST' || req.url !== '/call') return false
    const headers = req.headers
    const contentType = headers['content-type']
    const length = Number(headers['content-length'])
    if (contentType === undefined || !JSON_TYPES.has(contentType.toLowerCase())) return false
    if (!(length > 0 && length <= bodyLimit) || headers['transfer-encoding'] !== undefined || headers.expect !== undefined) return false
    const token = bearerCandidate(headers.authorization)
    if (headers.host === undefined || token === undefined || tokens.peek(token) === undefined) return false

    // Taken: read the body, then run the pipeline.
    const started = performance.now()
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => { chunks.push(chunk) })
    req.once('end', () => {
      const body = chunks.length === 1 ? chunks[0] as Buffer : Buffer.concat(chunks)
      run(req, res, fallback, token, body, started).catch((err: unknown) => {
        // A bug, not a refusal (those are handed over): answered 500 as the error handler would.
        log.error({ err }, 'call lane failed')
        if (res.headersSent) {
          res.destroy()
          return
        }
        const problem = JSON.stringify({ type: 'urn:tollgate:problem:internal_error', title: 'Internal Server Error', status: 500, detail: 'internal error', code: 'internal_error' })
        res.writeHead(500, { 'content-type': 'application/problem+json; charset=utf-8', 'content-length': Buffer.byteLength(problem) })
        res.end(problem)
      })
    })
    return true
  }

  async function run (req: IncomingMessage, res: ServerResponse, fallback: () => void, token: string, body: Buffer, started: number): Promise<void> {
    const id = requestId(req)
    const handoff: Handoff = { id, body, limitsCounted: false }
    const handOver = (): void => {
      handoffs.set(req, handoff)
      result.handedOver++
      fallback()
    }
    // authenticate: again, now that the body is in (the token may have been revoked meanwhile)
    const principal = tokens.peek(token)
    if (principal === undefined || !isHeaderSafe(principal.sub)) return handOver()
    // the body: a JSON object naming a tool, as the route's schema wants
    const tool = toolOf(body)
    if (tool === undefined) return handOver()
    // authorize: audience, then scopes
    if (!principal.aud.includes(tool.audience) || !tool.scopes.every(s => principal.scopes.has(s))) return handOver()
    // limit: per IP, then per subject
    const ip = req.socket.remoteAddress
    if (ip === undefined || !limiters.takeSync(ip, principal.sub)) return handOver()
    handoff.limitsCounted = true
    // meter
    const quota = principal.claims.quota
    if (quota !== undefined) {
      try {
        handoff.charge = await quotas.consume(principal.sub, quota, tool.cost)
      } catch {
        return handOver() // the route charges again and, if the store still fails, says so
      }
      if (!handoff.charge.granted) return handOver()
    }
    // relay → proxy
    const credential = tool.auth.kind === 'token'
      ? { name: 'authorization', value: `Bearer ${downstream.for(principal, tool)}` }
      : tool.auth.kind === 'header' ? { name: tool.auth.header, value: tool.auth.value } : undefined
    const upstreamHeaders = upstreamRequestHeaders(req.headers, {
      clientIp: ip,
      peerIp: ip,
      trustedPeer: false,
      proto: (req.socket as { encrypted?: boolean }).encrypted === true ? 'https' : 'http',
      host: req.headers.host as string,
      requestId: id,
      subject: principal.sub,
      ...(credential !== undefined ? { credential } : {})
    })
    // settle: a failed call is refunded once, whether the tool failed to answer, answered 5xx or
    // its body broke off
    const charge = handoff.charge
    let usage = charge?.usage
    let refunded = false
    const refund = async (): Promise<void> => {
      if (charge === undefined || refunded || !tool.refundOnFailure) return
      refunded = true
      try {
        await quotas.refund(charge.receipt)
      } catch (err) {
        log.child({ reqId: id }).warn({ err, tool: tool.name, sub: charge.receipt.sub }, 'quota refund failed')
        return
      }
      const used = Math.max(0, charge.usage.used - charge.receipt.cost)
      usage = { ...charge.usage, used, remaining: Math.max(0, charge.usage.limit - used) }
    }
    const sent = process.hrtime.bigint()
    let answer
    try {
      answer = await upstreams.send(tool, { method: 'POST', path: tool.url.pathname, headers: upstreamHeaders, body })
    } catch (err) {
      // Refunded here, where the charge is known to be this call's; the route answers the failure.
      await refund()
      if (charge !== undefined && usage !== undefined) handoff.charge = { ...charge, usage }
      handoff.refunded = refunded
      handoff.upstreamError = err as TollgateError
      return handOver()
    }
    metrics.observeUpstream(tool.name, Number(process.hrtime.bigint() - sent) / 1e9)
    if (answer.statusCode >= 500) await refund()
    const out: OutgoingHttpHeaders = callerResponseHeaders(answer.headers)
    out['x-request-id'] = id
    if (usage !== undefined) Object.assign(out, quotaHeaders(usage))
    const status = answer.statusCode
    res.once('finish', () => {
      metrics.countCall(tool.name, status)
      const elapsed = performance.now() - started
      metrics.observeRequest('POST', '/call', status, elapsed / 1000)
      logAnswered(log, id, { method: 'POST', url: '/call', ip }, status, elapsed)
    })
    result.served++
    answer.relayTo(res, out, () => { refund().catch(() => {}) })
  }

  /** The configured tool a POST /call body names, when the body is one the route would accept. */
  function toolOf (body: Buffer): Tool | undefined {
    const text = body.toString('utf8')
    if (PROTO_KEYS.test(text)) return undefined
    let parsed: unknown
    try {
      parsed = JSON.parse(text)
    } catch {
      return undefined
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return undefined
    const { tool: name, arguments: args } = parsed as { tool?: unknown, arguments?: unknown }
    if (typeof name !== 'string' || name === '') return undefined
    if (args !== undefined && (typeof args !== 'object' || args === null || Array.isArray(args))) return undefined
    try {
      return tools.get(name)
    } catch {
      return undefined
    }
  }

  const result = Object.assign(lane, { served: 0, handedOver: 0 })
  return result
}
