// The hot-path metric kinds of src/plugins/metrics.ts (SeriesHistogram, CountChild) against
// prom-client itself: the same observations give the same exposition lines as prom-client's own
// Histogram and Counter, counts are never lost or counted twice across scrapes, and a reset clears them.
import t from 'tap'
import { Counter, Histogram, Registry } from 'prom-client'
import { Metrics } from '../src/plugins/metrics.js'

/** The sample lines of one metric family, each with its labels sorted, as a sorted list. */
function samples (text: string, family: string): string[] {
  return text.split('\n')
    .filter(line => line.startsWith(family))
    .map(line => {
      const m = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line)
      if (m === null) throw new Error(`unparsed line ${line}`)
      const labels = (m[2] ?? '').split(/,(?=[a-z_]+=")/).filter(Boolean).sort().join(',')
      return `${m[1] as string}{${labels}} ${m[3] as string}`
    })
    .sort()
}

const BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
// On bounds, between them, below the first, above the last, zero.
const OBSERVED = [0, 0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.01, 0.2, 0.5, 0.75, 4.9, 5, 7, 120]

t.test('a SeriesHistogram is exposed as prom-client exposes a Histogram of the same observations', async (t) => {
  const metrics = new Metrics()
  const reference = new Registry()
  const histogram = new Histogram({ name: 'tollgate_http_request_duration_seconds', help: 'HTTP request duration, by method, route and status code.', labelNames: ['method', 'route', 'status_code'], buckets: BUCKETS, registers: [reference] })

  const lane = metrics.requestDuration.series('GET', '/validate', '200')
  for (const v of OBSERVED) {
    lane.observe(v)
    histogram.labels({ method: 'GET', route: '/validate', status_code: '200' }).observe(v)
  }
  for (const v of OBSERVED.slice(0, 5)) {
    metrics.observeRequest('POST', '/call', 502, v)
    histogram.labels({ method: 'POST', route: '/call', status_code: '502' }).observe(v)
  }
  const ours = samples(await metrics.registry.metrics(), 'tollgate_http_request_duration_seconds')
  const theirs = samples(await reference.metrics(), 'tollgate_http_request_duration_seconds')
  t.equal(ours.length, 2 * (BUCKETS.length + 3), 'buckets, +Inf, sum and count for each label set')
  t.same(ours, theirs, 'the same lines as prom-client')
  t.match(await metrics.registry.metrics(), /# TYPE tollgate_http_request_duration_seconds histogram/)

  const json = await metrics.registry.getMetricsAsJSON()
  const family = json.find(m => m.name === 'tollgate_http_request_duration_seconds')
  t.equal(family?.type, 'histogram')
  t.ok(family?.values.some(v => (v as { metricName?: string }).metricName === 'tollgate_http_request_duration_seconds_count' && v.value === OBSERVED.length), 'JSON export too')
})

t.test('a value that is not a finite number is not observed', async (t) => {
  const metrics = new Metrics()
  const series = metrics.upstreamDuration.series('echo')
  series.observe(Number.NaN)
  series.observe(Number.POSITIVE_INFINITY)
  series.observe(0.02)
  t.equal(series.count, 1)
  t.equal(series.sum, 0.02)
})

t.test('CountChild counts are folded into the counter when it is read, once', async (t) => {
  const metrics = new Metrics()
  const reference = new Registry()
  const counter = new Counter({ name: 'tollgate_validations_total', help: 'Token validations, by endpoint and result.', labelNames: ['endpoint', 'result'], registers: [reference] })
  const allowed = metrics.validationCount('forward_auth', 'allowed')
  t.equal(metrics.validationCount('forward_auth', 'allowed'), allowed, 'one child per label set, bound once')
  for (let i = 0; i < 3; i++) allowed.inc()
  metrics.validations.inc({ endpoint: 'forward_auth', result: 'allowed' }, 2)
  metrics.validations.inc({ endpoint: 'introspect', result: 'active' })
  counter.inc({ endpoint: 'forward_auth', result: 'allowed' }, 5)
  counter.inc({ endpoint: 'introspect', result: 'active' })
  t.same(samples(await metrics.registry.metrics(), 'tollgate_validations_total'), samples(await reference.metrics(), 'tollgate_validations_total'))
  t.same(samples(await metrics.registry.metrics(), 'tollgate_validations_total'), samples(await reference.metrics(), 'tollgate_validations_total'), 'a second scrape counts nothing twice')
  allowed.inc()
  t.match(await metrics.registry.metrics(), /^tollgate_validations_total\{endpoint="forward_auth",result="allowed"\} 6$/m)

  metrics.countCall('echo', 200)
  metrics.countCall('echo', 200)
  metrics.countCall('echo', 502)
  const text = await metrics.registry.metrics()
  t.match(text, /^tollgate_calls_total\{tool="echo",status="200"\} 2$/m)
  t.match(text, /^tollgate_calls_total\{tool="echo",status="502"\} 1$/m)
})

t.test('resetting the registry clears the series', async (t) => {
  const metrics = new Metrics()
  metrics.requestDuration.series('GET', '/health', '200').observe(0.001)
  t.match(await metrics.registry.metrics(), /tollgate_http_request_duration_seconds_count\{method="GET",route="\/health",status_code="200"\} 1/)
  metrics.registry.resetMetrics()
  t.notMatch(await metrics.registry.metrics(), /tollgate_http_request_duration_seconds_count/)
})
