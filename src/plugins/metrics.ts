// Prometheus metrics: one registry per app (tests build many apps in one process), the counters
// the other pieces increment, and the request-duration histogram fed by an onResponse hook.
import fp from 'fastify-plugin'
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

/** The metric child bound to one label set, bound on first use. */
function bound<T> (children: Map<string, T>, key: string, bind: () => T): T {
  let child = children.get(key)
  if (child === undefined) {
    child = bind()
    children.set(key, child)
  }
  return child
}

export class Metrics {
  readonly registry = new Registry()
  readonly tokensIssued = new Counter({ name: 'tollgate_tokens_issued_total', help: 'Access tokens issued, by grant type.', labelNames: ['grant_type'] as const, registers: [this.registry] })
  readonly tokensRefused = new Counter({ name: 'tollgate_token_requests_refused_total', help: 'Token, refresh and revocation requests refused, by OAuth error.', labelNames: ['error'] as const, registers: [this.registry] })
  readonly validations = new Counter({ name: 'tollgate_validations_total', help: 'Token validations, by endpoint and result.', labelNames: ['endpoint', 'result'] as const, registers: [this.registry] })
  readonly refreshes = new Counter({ name: 'tollgate_refreshes_total', help: 'Refresh-token uses, by result (rotated, reused, refused).', labelNames: ['result'] as const, registers: [this.registry] })
  readonly revocations = new Counter({ name: 'tollgate_revocations_total', help: 'Revocation requests, by token type.', labelNames: ['type'] as const, registers: [this.registry] })
  readonly exchanges = new Counter({ name: 'tollgate_token_exchanges_total', help: 'Token exchanges, by subject token issuer kind and result.', labelNames: ['issuer', 'result'] as const, registers: [this.registry] })
  readonly calls = new Counter({ name: 'tollgate_calls_total', help: 'Tool calls, by tool and status code.', labelNames: ['tool', 'status'] as const, registers: [this.registry] })
  readonly rejections = new Counter({ name: 'tollgate_call_rejections_total', help: 'Calls refused before the upstream, by reason.', labelNames: ['reason'] as const, registers: [this.registry] })
  readonly upstreamDuration = new Histogram({ name: 'tollgate_upstream_duration_seconds', help: 'Upstream response time (to headers), by tool.', labelNames: ['tool'] as const, buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers: [this.registry] })
  readonly requestDuration = new Histogram({ name: 'tollgate_http_request_duration_seconds', help: 'HTTP request duration, by method, route and status code.', labelNames: ['method', 'route', 'status_code'] as const, buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], registers: [this.registry] })

  // Label sets seen on the hot paths, bound once: prom-client hashes a label object on every call.
  readonly #durations = new Map<string, { observe: (v: number) => void }>()
  readonly #calls = new Map<string, { inc: () => void }>()
  readonly #upstream = new Map<string, { observe: (v: number) => void }>()

  constructor () {
    collectDefaultMetrics({ register: this.registry, prefix: 'tollgate_' })
  }

  observeRequest (method: string, route: string, statusCode: number, seconds: number): void {
    bound(this.#durations, `${method} ${statusCode} ${route}`, () => this.requestDuration.labels({ method, route, status_code: String(statusCode) })).observe(seconds)
  }

  countCall (tool: string, statusCode: number): void {
    bound(this.#calls, `${statusCode} ${tool}`, () => this.calls.labels({ tool, status: String(statusCode) })).inc()
  }

  observeUpstream (tool: string, seconds: number): void {
    bound(this.#upstream, tool, () => this.upstreamDuration.labels({ tool })).observe(seconds)
  }
}

declare module 'fastify' {
  interface FastifyInstance { metrics: Metrics }
}

export default fp(async function metricsPlugin (app) {
  const metrics = new Metrics()
  app.decorate('metrics', metrics)
  app.addHook('onResponse', (request, reply, done) => {
    metrics.observeRequest(request.method, request.routeOptions.url ?? 'unmatched', reply.statusCode, reply.elapsedTime / 1000)
    done()
  })
}, { name: 'tollgate-metrics' })
