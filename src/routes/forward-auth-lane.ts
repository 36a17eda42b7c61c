// The forward-auth lane: GET /validate for a token verified before, decided from the raw request
// in one synchronous step. It is the hottest request a gateway sees (nginx, Traefik or Envoy ask
// it before every request they pass on), and going through Fastify's routing, hooks, promises and
// serialisers costs more than the decision itself: a verification-cache probe, a revocation check,
// two counters and header writes.
//
// It answers only what the route in validate.ts would answer 200, with the same headers, body,
// counters, metrics and log lines (test/forward-auth-lane.test.ts compares the two side by side).
// Anything else (no or unknown token, a failed check, a limit reached, a store that keeps its
// counters elsewhere, a query it does not recognise, the server closing) is declined before
// anything is written, and Fastify's route decides it and says why.
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { FastifyInstance } from 'fastify'
import { bearerCandidate, clientAddress, logAnswered, requestId, type Lane, type TrustProxy } from '../http.js'
import { isHeaderSafe } from '../plugins/auth.js'
import type { Principal } from '../tokens/index.js'

/** A query of audience and scope only, with nothing to decode. */
const PLAIN_QUERY = /^[A-Za-z0-9\-._~:/=&]*$/

/** What a principal's 200 answer carries, built once per cached token. */
interface Decision {
  subject: string
  clientId: string
  scope: string
  audience: string
  body: string
  length: string
}

function decisionOf (p: Principal): Decision | undefined {
  const audience = p.aud.join(' ')
  if (![p.sub, p.clientId, p.scope, audience].every(isHeaderSafe)) return undefined
  const body = JSON.stringify({ sub: p.sub, client_id: p.clientId, scope: p.scope, aud: p.aud })
  return { subject: p.sub, clientId: p.clientId, scope: p.scope, audience, body, length: String(Buffer.byteLength(body)) }
}

/** `?audience=..&scope=..` (each at most once) as { audience, scope }, or undefined to decline. */
function parseQuery (query: string): { audience?: string, scope?: string } | undefined {
  if (!PLAIN_QUERY.test(query)) return undefined
  const out: { audience?: string, scope?: string } = {}
  for (const pair of query.split('&')) {
    if (pair === '') continue
    const eq = pair.indexOf('=')
    const name = eq === -1 ? pair : pair.slice(0, eq)
    if ((name !== 'audience' && name !== 'scope') || out[name] !== undefined) return undefined
    out[name] = eq === -1 ? '' : pair.slice(eq + 1)
  }
  return out
}

function allowed (p: Principal, query: { audience?: string, scope?: string }): boolean {
  if (query.audience !== undefined && !p.aud.includes(query.audience)) return false
  if (query.scope !== undefined) {
    for (const s of query.scope.split(' ')) if (s !== '' && !p.scopes.has(s)) return false
  }
  return true
}

export function forwardAuthLane (app: FastifyInstance): Lane & { served: number } {
  const { tokens, limiters, metrics, log } = app
  const ip = clientAddress(app.config.server.trustProxy as TrustProxy)
  const decisions = new WeakMap<Principal, Decision | null>()
  const allowedCount = metrics.validationCount('forward_auth', 'allowed')
  const duration = metrics.requestDuration.series('GET', '/validate', '200')

  const lane = (req: IncomingMessage, res: ServerResponse): boolean => {
    const url = req.url as string
    if (req.method !== 'GET' || !url.startsWith('/validate')) return false
    let query: { audience?: string, scope?: string } = {}
    if (url.length > 9) {
      if (url.charCodeAt(9) !== 63 /* ? */) return false
      const parsed = parseQuery(url.slice(10))
      if (parsed === undefined) return false
      query = parsed
    }
    const headers = req.headers
    if (headers['content-length'] !== undefined || headers['transfer-encoding'] !== undefined) return false
    const token = bearerCandidate(headers.authorization)
    if (token === undefined) return false
    const principal = tokens.peek(token)
    if (principal === undefined || !allowed(principal, query)) return false
    let decision = decisions.get(principal)
    if (decision === undefined) {
      decision = decisionOf(principal) ?? null
      decisions.set(principal, decision)
    }
    if (decision === null) return false
    const address = ip(req)
    if (address === undefined || !limiters.takeSync(address, principal.sub)) return false

    // Decided: from here on the request is answered here.
    const started = performance.now()
    const id = requestId(req)
    allowedCount.inc()
    // A flat [name, value, ...] list: node:http walks it by index, where an object costs a keyed
    // lookup and an own-property check per header.
    res.writeHead(200, [
      'x-request-id', id,
      'x-auth-subject', decision.subject,
      'x-auth-client-id', decision.clientId,
      'x-auth-scope', decision.scope,
      'x-auth-audience', decision.audience,
      'cache-control', 'no-store',
      'content-type', 'application/json; charset=utf-8',
      'content-length', decision.length
    ])
    res.end(decision.body)
    const elapsed = performance.now() - started
    duration.observe(elapsed / 1000)
    logAnswered(log, id, { method: 'GET', url, ip: address }, 200, elapsed)
    result.served++
    return true
  }
  const result = Object.assign(lane, { served: 0 })
  return result
}
