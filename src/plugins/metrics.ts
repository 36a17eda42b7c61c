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

type Labels = Record<string, string>

// prom-client hashes the label object on every inc() and observe(), even through a child from
// labels(): about 0.2 and 0.4 µs, the largest share of a forward-auth answer's own work. The hot paths
// count in the two kinds below instead: plain numbers per bound label set, read only when the
// registry is scraped. The exposition is the same as prom-client's.

/** One label set of a counter: counted in a plain number, added to the counter when it is read. */
export class CountChild {
  pending = 0
  constructor (readonly labels: Labels) {}
  inc (): void { this.pending++ }
}

/** A counter that also takes CountChild counts, folded in whenever the registry reads it. */
function foldingCounter<T extends string> (config: { name: string, help: string, labelNames: readonly T[], registers: Registry[] }, children: CountChild[]): Counter<T> {
  return new Counter<T>({
    ...config,
    collect () {
      for (const child of children) {
        if (child.pending === 0) continue
        const n = child.pending
        child.pending = 0
        this.inc(child.labels as Partial<Record<T, string>>, n)
      }
    }
  })
}

/** One label set of a SeriesHistogram: bucket counts, sum and count, observed in place. */
export class HistogramSeries {
  readonly counts: number[]
  sum = 0
  count = 0
  constructor (readonly labels: Labels, readonly bounds: readonly number[]) {
    this.counts = new Array<number>(bounds.length + 1).fill(0)
  }

  observe (seconds: number): void {
    if (!Number.isFinite(seconds)) return
    const bounds = this.bounds
    let i = 0
    while (i < bounds.length && seconds > (bounds[i] as number)) i++
    this.counts[i] = (this.counts[i] as number) + 1
    this.sum += seconds
    this.count++
  }
}

/**
 * A Prometheus histogram whose label sets are bound once and observed without hashing. It is
 * registered in a prom-client registry as a metric of its own (get() and reset(), which is all the
 * registry asks of a metric) and exposed in the same lines as prom-client's Histogram: cumulative
 * `_bucket` lines with `le`, then `_sum` and `_count`, per label set.
 */
export class SeriesHistogram {
  readonly type = 'histogram'
  readonly aggregator = 'sum'
  readonly #series = new Map<string, HistogramSeries>()
  readonly buckets: readonly number[]

  constructor (readonly name: string, readonly help: string, readonly labelNames: readonly string[], buckets: readonly number[], registry: Registry) {
    this.buckets = [...buckets].sort((a, b) => a - b)
    registry.registerMetric(this as unknown as Histogram)
  }

  /** The series of these label values (in labelNames order), created on first use. */
  series (...values: string[]): HistogramSeries {
    const key = values.join('\u0000')
    let series = this.#series.get(key)
    if (series === undefined) {
      const labels: Labels = {}
      this.labelNames.forEach((name, i) => { labels[name] = values[i] ?? '' })
      series = new HistogramSeries(labels, this.buckets)
      this.#series.set(key, series)
    }
    return series
  }

  async get (): Promise<{ name: string, help: string, type: string, aggregator: string, values: Array<{ labels: Record<string, string | number>, value: number, metricName: string }> }> {
    const values: Array<{ labels: Record<string, string | number>, value: number, metricName: string }> = []
    for (const s of this.#series.values()) {
      let cumulative = 0
      this.buckets.forEach((le, i) => {
        cumulative += s.counts[i] as number
        values.push({ labels: { ...s.labels, le }, value: cumulative, metricName: `${this.name}_bucket` })
      })
      values.push({ labels: { ...s.labels, le: '+Inf' }, value: s.count, metricName: `${this.name}_bucket` })
      values.push({ labels: { ...s.labels }, value: s.sum, metricName: `${this.name}_sum` })
      values.push({ labels: { ...s.labels }, value: s.count, metricName: `${this.name}_count` })
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values }
  }

  reset (): void {
    this.#series.clear()
  }
}

export class Metrics {
  readonly registry = new Registry()
  readonly #countChildren = { validations: [] as CountChild[], calls: [] as CountChild[] }
  readonly tokensIssued = new Counter({ name: 'tollgate_tokens_issued_total', help: 'Access tokens issued, by grant type.', labelNames: ['grant_type'] as const, registers: [this.registry] })
  readonly tokensRefused = new Counter({ name: 'tollgate_token_requests_refused_total', help: 'Token, refresh and revocation requests refused, by OAuth error.', labelNames: ['error'] as const, registers: [this.registry] })
  readonly validations = foldingCounter({ name: 'tollgate_validations_total', help: 'Token validations, by endpoint and result.', labelNames: ['endpoint', 'result'] as const, registers: [this.registry] }, this.#countChildren.validations)
  readonly refreshes = new Counter({ name: 'tollgate_refreshes_total', help: 'Refresh-token uses, by result (rotated, reused, refused).', labelNames: ['result'] as const, registers: [this.registry] })
  readonly revocations = new Counter({ name: 'tollgate_revocations_total', help: 'Revocation requests, by token type.', labelNames: ['type'] as const, registers: [this.registry] })
  readonly exchanges = new Counter({ name: 'tollgate_token_exchanges_total', help: 'Token exchanges, by subject token issuer kind and result.', labelNames: ['issuer', 'result'] as const, registers: [this.registry] })
  readonly calls = foldingCounter({ name: 'tollgate_calls_total', help: 'Tool calls, by tool and status code.', labelNames: ['tool', 'status'] as const, registers: [this.registry] }, this.#countChildren.calls)
  readonly rejections = new Counter({ name: 'tollgate_call_rejections_total', help: 'Calls refused before the upstream, by reason.', labelNames: ['reason'] as const, registers: [this.registry] })
  readonly upstreamDuration = new SeriesHistogram('tollgate_upstream_duration_seconds', 'Upstream response time (to headers), by tool.', ['tool'], [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], this.registry)
  readonly requestDuration = new SeriesHistogram('tollgate_http_request_duration_seconds', 'HTTP request duration, by method, route and status code.', ['method', 'route', 'status_code'], [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], this.registry)

  // The calls counter's children, by status and tool; the validations counter's, by endpoint and result.
  readonly #calls = new Map<string, CountChild>()
  readonly #validations = new Map<string, CountChild>()

  constructor () {
    collectDefaultMetrics({ register: this.registry, prefix: 'tollgate_' })
  }

  /** A new child of a folding counter, for one label set. */
  #countChild (children: CountChild[], labels: Labels): CountChild {
    const child = new CountChild(labels)
    children.push(child)
    return child
  }

  /** The validations child of one label set, bound on first use. */
  validationCount (endpoint: string, result: string): CountChild {
    return bound(this.#validations, `${endpoint} ${result}`, () => this.#countChild(this.#countChildren.validations, { endpoint, result }))
  }

  observeRequest (method: string, route: string, statusCode: number, seconds: number): void {
    this.requestDuration.series(method, route, String(statusCode)).observe(seconds)
  }

  countCall (tool: string, statusCode: number): void {
    bound(this.#calls, `${statusCode} ${tool}`, () => this.#countChild(this.#countChildren.calls, { tool, status: String(statusCode) })).inc()
  }

  observeUpstream (tool: string, seconds: number): void {
    this.upstreamDuration.series(tool).observe(seconds)
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
