// Benchmark harness (`npm run bench`): starts Tollgate from the built dist, a bare Fastify route, a
// real upstream tool server and a stock Fastify + reply-from proxy, each in its own child process
// (none shares an event loop with autocannon, which runs here), then measures the scenarios below
// in interleaved rounds (A B A B ...) and reports medians and the ratios the architecture budgets,
// and the p99 that /call adds at half of its peak, with the open-loop paced probe of bench/paced.js.
// Tollgate runs its default configuration (bench/tollgate-config.js: access log on), only its rate
// limits and quota raised. Tollgate has no fast path today (one pipeline: docs/performance.md);
// `--lanes both` measures a build that has one (`server.fastPath: false` turns it off) against
// itself, as the decision rule for keeping a fast path asks (bench/README.md). HAProxy 2.6 with
// `jwt_verify` (bench/haproxy.js) is the `haproxy_jwt` reference for POST /call, when installed.
//
//   node bench/run.js [--duration 5] [--rounds 2] [--connections 10,50] [--lanes on|off|both]
//                     [--only name,name] [--haproxy-threads 1] [--subjects 100000] [--warmup 2] [--json]
//   node bench/run.js --profile   one CPU profile of GET /validate (repeated token) into bench/results/
//
// It sends traffic only to 127.0.0.1 and stops by itself. Results go to stdout (and with --json,
// to bench/results/bench-<time>.json).
import { generateKeyPairSync, sign } from 'node:crypto'
import { createServer as createHttpServer } from 'node:http'
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import autocannon from 'autocannon'
import { HAPROXY_INSTALL_HINT, haproxyVersion, startHaproxy } from './haproxy.js'
import { pacedProbe } from './paced.js'
import { tollgateConfig } from './tollgate-config.js'
import { freePort } from './free-port.js'
import { BASIC, ROOT, children, cpuMicros, median, startHelper, startTollgate, stopAll, tempDirs } from './processes.js'
import { spread } from './spread.js'

const RESULTS = join(ROOT, 'bench', 'results')

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '5' },
    rounds: { type: 'string', default: '2' },
    connections: { type: 'string', default: '10,50' },
    lanes: { type: 'string', default: 'on' },
    'haproxy-threads': { type: 'string', default: '1' },
    tokens: { type: 'string', default: '1000' },
    'uncached-tokens': { type: 'string', default: '12000' },
    only: { type: 'string' },
    json: { type: 'boolean', default: false },
    profile: { type: 'boolean', default: false },
    'profile-call': { type: 'boolean', default: false },
    subjects: { type: 'string', default: '100000' },
    warmup: { type: 'string', default: '2' }
  }
})
const DURATION = Number(args.duration)
const ROUNDS = Math.max(2, Number(args.rounds))
// Seconds of unmeasured load per scenario before the first round (0: none).
const WARMUP = Number(args.warmup)
// Each scenario is measured at each of these connection counts; ratios are per count.
const CONNECTIONS = args.connections.split(',').map(c => Number(c.trim()))
if (CONNECTIONS.length === 0 || !CONNECTIONS.every(c => Number.isInteger(c) && c > 0)) throw new Error(`--connections: positive integers separated by commas, not ${args.connections}`)
// Tollgates to measure: `on` is the default configuration, `off` the same with server.fastPath: false.
if (!['on', 'off', 'both'].includes(args.lanes)) throw new Error(`--lanes: on, off or both, not ${args.lanes}`)
let LANES = args.lanes === 'both' ? ['on', 'off'] : [args.lanes]
const HAPROXY_THREADS = Number(args['haproxy-threads'])
const DISTINCT = Number(args.tokens)
// More than the verification cache holds (10,000), spread over the connections so that a token
// comes back only after all the others: every request pays the full ES256 verification.
const UNCACHED = Number(args['uncached-tokens'])
const QUOTA_SUBJECTS = Number(args.subjects)
// The half-load latency probe (bench/paced.js): enough keep-alive connections that one is always
// free at half of the peak, and one second sent but not recorded before each measurement.
const PROBE_CONNECTIONS = 64
const PROBE_WARMUP = 1

/** Peak resident set size of a process (VmHWM), in MiB. */
function peakRssMiB (pid) {
  const m = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return m === null ? NaN : Number(m[1]) / 1024
}

/**
 * What a Tollgate holds now, from its /metrics (prom-client's process and V8 heap gauges), in MiB:
 * the resident set, the V8 heap in use and as allocated, and V8's external memory (Buffers and
 * other ArrayBuffers). The peak (VmHWM) above says how high it went; this says how much of it is the
 * heap's own headroom. Undefined when /metrics does not answer (the run's figures stand without it).
 */
async function memoryNow (url) {
  let text
  try {
    const res = await fetch(`${url}/metrics`)
    if (!res.ok) return undefined
    text = await res.text()
  } catch {
    return undefined
  }
  const gauge = name => {
    const m = new RegExp(`^tollgate_${name} (\\S+)$`, 'm').exec(text)
    return m === null ? NaN : Number(m[1]) / 1048576
  }
  return { rss: gauge('process_resident_memory_bytes'), heapUsed: gauge('nodejs_heap_size_used_bytes'), heapTotal: gauge('nodejs_heap_size_total_bytes'), external: gauge('nodejs_external_memory_bytes') }
}

const memoryText = m => m === undefined
  ? 'memory now: /metrics did not answer'
  : `now ${num(m.rss, 1)} MiB resident, V8 heap ${num(m.heapUsed, 1)} MiB used of ${num(m.heapTotal, 1)} MiB allocated, Buffers ${num(m.external, 1)} MiB`

// ---------------------------------------------------------------------------------------------
// Talking to Tollgate

const TOKEN_BODY = 'grant_type=client_credentials'

async function issueToken (url) {
  return (await issueTokenWithTtl(url)).token
}

async function issueTokenWithTtl (url) {
  const res = await fetch(`${url}/token`, { method: 'POST', headers: { authorization: BASIC, 'content-type': 'application/x-www-form-urlencoded' }, body: TOKEN_BODY })
  if (res.status !== 200) throw new Error(`POST /token: ${res.status} ${await res.text()}`)
  const body = await res.json()
  return { token: body.access_token, ttl: body.expires_in }
}

async function issueTokens (url, n) {
  const tokens = []
  // A few at a time: this is setup, not a measurement.
  for (let i = 0; i < n; i += 50) tokens.push(...await Promise.all(Array.from({ length: Math.min(50, n - i) }, () => issueToken(url))))
  return tokens
}

/**
 * The tokens a Tollgate's scenarios send: one repeated, `tg.distinct` distinct ones (DISTINCT when
 * validate_distinct runs) and `tg.uncached` for validate_uncached (UNCACHED when it runs). Access tokens live 300 s by default and a run takes
 * longer, so they are issued again (between measurements, never during one) whenever the next
 * `seconds` would take them within 15 s of their expiry.
 */
async function freshTokens (tg, seconds) {
  const age = (Date.now() - (tg.issuedAt ?? 0)) / 1000
  if (tg.token !== undefined && age + seconds < tg.ttl - 15) return
  if (seconds > (tg.ttl ?? Infinity) - 15 && !tg.warned) {
    tg.warned = true
    process.stderr.write(`WARNING: one block of measurements (~${Math.round(seconds)} s) outlives an access token (${tg.ttl} s): shorten --duration\n`)
  }
  const issuedAt = Date.now()
  const first = await issueTokenWithTtl(tg.tollgate.url)
  tg.token = first.token
  tg.ttl = first.ttl
  tg.tokens = await issueTokens(tg.tollgate.url, tg.distinct)
  tg.uncachedTokens = await issueTokens(tg.tollgate.url, tg.uncached)
  tg.issuedAt = issuedAt
}

// ---------------------------------------------------------------------------------------------
// Measuring

function cannon (opts) {
  return new Promise((resolve, reject) => {
    const errorCodes = {}
    const instance = autocannon({ duration: DURATION, pipelining: 1, ...opts }, (err, result) => {
      if (err) reject(err)
      else resolve({ ...result, errorCodes })
    })
    instance.on('reqError', e => { const code = e.code ?? e.message; errorCodes[code] = (errorCodes[code] ?? 0) + 1 })
  })
}


// The scenarios a fast path (lane) can answer: measured on each Tollgate of --lanes. On the one
// with server.fastPath: false their names end in `:off`.
const LANE_SCENARIOS = ['validate_repeat', 'validate_distinct', 'call']
// No lane answers validate_uncached, but it runs on each Tollgate too: it fills each one's
// verification cache alike (the two must be in the same state for on/off to compare), and its
// on/off ratio is the control, about 1.00 when the comparison is fair.
const CONTROL_SCENARIOS = ['validate_uncached']
const PER_LANE = [...LANE_SCENARIOS, ...CONTROL_SCENARIOS]
const laneName = (base, lane) => lane === 'on' ? base : `${base}:off`

/**
 * The scenarios, in the order each round runs them (odd rounds reversed). Each is { name, base,
 * pid(), opts(connections) }: `base` is the name without the lane suffix. Ratios are computed from
 * the medians at the end.
 */
function scenarios (ctx) {
  const validate = token => ({ method: 'GET', path: '/validate', headers: { authorization: `Bearer ${token}` } })
  const primary = ctx.tollgates[0]
  const perLane = (base, make) => ctx.tollgates.map(tg => ({ name: laneName(base, tg.lane), base, lane: tg.lane, pid: () => tg.tollgate.child.pid, opts: c => make(tg, c) }))
  const call = (url, token) => ({ url: `${url}/call`, method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: CALL_BODY })
  const list = [
    // The bare route answering also the nine headers GET /validate answers with (bench/servers/bare.js):
    // what the contract's headers cost in Fastify and node:http alone. No budget; bare_headers/bare
    // and validate_repeat/bare_headers are printed beside the budget.
    { name: 'bare_headers', pid: () => ctx.bare.child.pid, opts: () => ({ url: ctx.bare.url, requests: [{ method: 'GET', path: '/bare-headers', headers: { authorization: `Bearer ${primary.token}` } }] }) },
    // The same request bytes as validate_repeat (the bare route ignores the header), so the ratio
    // compares what the servers do, not the size of what they read.
    { name: 'bare', pid: () => ctx.bare.child.pid, opts: () => ({ url: ctx.bare.url, requests: [{ method: 'GET', path: '/bare', headers: { authorization: `Bearer ${primary.token}` } }] }) },
    ...perLane('validate_repeat', tg => ({ url: tg.tollgate.url, requests: [validate(tg.token)] })),
    ...perLane('validate_distinct', (tg, c) => ({ url: tg.tollgate.url, ...spread(tg.tokens.map(validate), c) })),
    // No budget rests on these two: only at the largest connection count, to keep the run short.
    // validate_uncached on each Tollgate (the control, CONTROL_SCENARIOS); token_issue (no lane, no
    // state kept) on the first only.
    ...perLane('validate_uncached', (tg, c) => ({ url: tg.tollgate.url, ...spread(tg.uncachedTokens.map(validate), c) })).map(s => ({ ...s, peakOnly: true })),
    {
      name: 'token_issue',
      peakOnly: true,
      pid: () => primary.tollgate.child.pid,
      opts: () => ({ url: `${primary.tollgate.url}/token`, method: 'POST', headers: { authorization: BASIC, 'content-type': 'application/x-www-form-urlencoded' }, body: TOKEN_BODY })
    },
    { name: 'direct', pid: () => ctx.upstream.child.pid, opts: () => ({ url: `${ctx.upstream.url}/echo`, method: 'POST', headers: { 'content-type': 'application/json' }, body: CALL_BODY }) }
  ]
  // HAProxy next to call, call next to the stock proxy: the pairs of the budgets run back to back.
  if (ctx.haproxy !== undefined) list.push({ name: 'haproxy_jwt', pid: () => ctx.haproxy.child.pid, opts: () => call(ctx.haproxy.url, primary.token) })
  const calls = perLane('call', tg => call(tg.tollgate.url, tg.token))
  list.push(calls[0])
  list.push({ name: 'stock_proxy', pid: () => ctx.stockProxy.child.pid, opts: () => ({ url: `${ctx.stockProxy.url}/call`, method: 'POST', headers: { 'content-type': 'application/json' }, body: CALL_BODY }) })
  list.push(...calls.slice(1))
  // Metering beside call (no budget; issue: "reported beside it"): the same call priced by a
  // costExpr (tool echo_priced), and with a fresh Idempotency-Key on every request (each claims its
  // key and keeps its answer in the store; none is a replay).
  list.push({ name: 'call_priced', pid: () => primary.tollgate.child.pid, opts: () => ({ ...call(primary.tollgate.url, primary.token), body: PRICED_BODY }) })
  let idempotencyKeys = 0
  const run = `${process.pid}-${Date.now()}`
  list.push({
    name: 'call_idempotent',
    pid: () => primary.tollgate.child.pid,
    opts: () => {
      const base = call(primary.tollgate.url, primary.token)
      return { url: base.url, requests: [{ method: 'POST', path: '/call', body: CALL_BODY, setupRequest: req => ({ ...req, headers: { ...base.headers, 'idempotency-key': `bench-${run}-${++idempotencyKeys}` } }) }] }
    }
  })
  return list.map(s => ({ base: s.name, ...s }))
}

const CALL_BODY = JSON.stringify({ tool: 'echo', arguments: { text: 'hello' } })
const PRICED_BODY = JSON.stringify({ tool: 'echo_priced', arguments: { text: 'hello' } })

/**
 * A trusted identity provider served from this process: its JWKS on /jwks, and ES256 tokens for
 * any subject, so the quota fill can give each of 100,000 users their own Tollgate token.
 */
async function startIssuer () {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const jwk = { ...publicKey.export({ format: 'jwk' }), kid: 'bench-idp', alg: 'ES256', use: 'sig' }
  const server = createHttpServer((req, res) => {
    res.setHeader('content-type', 'application/json')
    res.setHeader('cache-control', 'max-age=3600')
    res.end(JSON.stringify({ keys: [jwk] }))
  })
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  const url = `http://127.0.0.1:${server.address().port}`
  const b64 = v => Buffer.from(JSON.stringify(v)).toString('base64url')
  const header = b64({ alg: 'ES256', kid: 'bench-idp', typ: 'JWT' })
  const tokenFor = sub => {
    const now = Math.floor(Date.now() / 1000)
    const input = `${header}.${b64({ iss: url, sub, aud: 'tollgate', iat: now, exp: now + 600, scope: 'tools:call' })}`
    return `${input}.${sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`
  }
  server.unref()
  return { url, tokenFor, close: () => server.close() }
}

/**
 * Makes `subjects` distinct users spend quota through POST /call (each: a token exchange of an
 * identity-provider token for a Tollgate token, then one call), ~64 in flight, so the peak RSS read
 * afterwards includes every per-subject structure. Returns how many calls were answered 200.
 */
async function fillQuotaSubjects (ctx, subjects) {
  if (subjects <= 0) return undefined
  const { tollgate } = ctx.tollgates[0]
  let next = 0
  let charged = 0
  let retried = 0
  const worker = async () => {
    while (next < subjects) {
      const i = next++
      const body = new URLSearchParams({
        grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
        subject_token: ctx.issuer.tokenFor(`user-${i}`),
        subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
        audience: 'tool:echo'
      })
      // 64 workers can outrun the client-authentication guard (a bounded number of secret checks in
      // flight; 503 temporarily_unavailable with Retry-After beyond it): a 503 is retried, as a client should.
      let ex
      for (let attempt = 1; ; attempt++) {
        ex = await fetch(`${tollgate.url}/token`, { method: 'POST', headers: { authorization: BASIC, 'content-type': 'application/x-www-form-urlencoded' }, body })
        if (ex.status !== 503 || attempt === 20) break
        await ex.arrayBuffer()
        retried++
        await new Promise(resolve => setTimeout(resolve, 50 * attempt))
      }
      if (ex.status !== 200) throw new Error(`token exchange for user-${i}: ${ex.status} ${await ex.text()}`)
      const { access_token: token } = await ex.json()
      const res = await fetch(`${tollgate.url}/call`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: CALL_BODY })
      await res.arrayBuffer()
      if (res.status === 200) charged++
    }
  }
  const started = Date.now()
  await Promise.all(Array.from({ length: 64 }, worker))
  process.stderr.write(`  ${subjects} subjects exchanged and charged in ${Math.round((Date.now() - started) / 1000)} s (${retried} token requests retried after a 503)\n`)
  return charged
}

/**
 * p99 that /call adds at half of its peak: the upstream called directly and through Tollgate at
 * the same fixed request rate, side by side (A B B A over the rounds, medians). Measured with the
 * open-loop, evenly paced probe of bench/paced.js rather than autocannon's overallRate, whose
 * connections each spend their per-second budget flat out at the start of every second: the
 * queueing in those bursts, on both sides, swamped the gateway's own share. Latency runs from each
 * request's scheduled send time (see bench/README.md).
 */
async function addedLatencyAtHalfLoad (ctx, peakRps) {
  const rate = Math.max(100, Math.floor(peakRps / 2))
  const tg = ctx.tollgates[0]
  await freshTokens(tg, ROUNDS * 2 * (DURATION + PROBE_WARMUP + 1) + 10)
  const shapes = {
    direct: { origin: ctx.upstream.url, path: '/echo', headers: { 'content-type': 'application/json' } },
    call: { origin: tg.tollgate.url, path: '/call', headers: { authorization: `Bearer ${tg.token}`, 'content-type': 'application/json' } }
  }
  const samples = { direct: [], call: [] }
  for (let round = 0; round < ROUNDS; round++) {
    for (const name of round % 2 === 0 ? ['direct', 'call'] : ['call', 'direct']) {
      const r = await pacedProbe({ ...shapes[name], method: 'POST', body: CALL_BODY, rate, duration: DURATION, warmup: PROBE_WARMUP, connections: PROBE_CONNECTIONS })
      samples[name].push(r)
      process.stderr.write(`  half load round ${round + 1} ${pad(name, 7)} ${rate} req/s: p50 ${num(r.p50, 2)} p90 ${num(r.p90, 2)} p99 ${num(r.p99, 2)} max ${num(r.max, 2)} ms, ${r.count} answers, ${r.errors} errors, ${r.non2xx} non-2xx, ${r.late} late, send lag p99 ${num(r.lagP99, 2)} ms\n`)
    }
  }
  const med = (name, key) => median(samples[name].map(s => s[key]))
  const sum = (name, key) => samples[name].reduce((n, s) => n + s[key], 0)
  return {
    rate,
    direct: med('direct', 'p99'),
    call: med('call', 'p99'),
    directP50: med('direct', 'p50'),
    callP50: med('call', 'p50'),
    directP90: med('direct', 'p90'),
    callP90: med('call', 'p90'),
    directMax: med('direct', 'max'),
    callMax: med('call', 'max'),
    directSendLagP99: med('direct', 'lagP99'),
    callSendLagP99: med('call', 'lagP99'),
    count: { direct: sum('direct', 'count'), call: sum('call', 'count') },
    errors: { direct: sum('direct', 'errors'), call: sum('call', 'errors') },
    non2xx: { direct: sum('direct', 'non2xx'), call: sum('call', 'non2xx') },
    late: { direct: sum('direct', 'late'), call: sum('call', 'late') },
    probe: { method: 'open loop, evenly paced, latency from scheduled send time', connections: PROBE_CONNECTIONS, warmup: PROBE_WARMUP, duration: DURATION },
    rounds: samples
  }
}

function summarise (samples) {
  return {
    rps: median(samples.map(s => s.rps)),
    cpu: median(samples.map(s => s.cpuPerRequest)),
    p50: median(samples.map(s => s.p50)),
    p99: median(samples.map(s => s.p99)),
    rounds: samples.map(s => Math.round(s.rps)),
    non2xx: samples.reduce((n, s) => n + s.non2xx, 0),
    codes: samples.map(s => ({ ...Object.fromEntries(Object.entries(s.codes ?? {}).map(([code, v]) => [code, v.count])), ...s.errorCodes })),
    errors: samples.reduce((n, s) => n + s.errors, 0)
  }
}

// [label, a, b, budget (a minimum of a/b's req/s), whether a and b measure servers in the same role,
// so that their CPU per request compares too (the upstream's CPU says nothing about a proxy's)]. A
// lane scenario (LANE_SCENARIOS) gives one row per Tollgate of --lanes: `call/direct` and
// `call:off/direct`.
const RATIOS = [
  ['validate_repeat/bare', 'validate_repeat', 'bare', 0.80, true],
  ['bare_headers/bare', 'bare_headers', 'bare', undefined, true],
  ['validate_repeat/bare_headers', 'validate_repeat', 'bare_headers', undefined, true],
  ['validate_distinct/bare', 'validate_distinct', 'bare', undefined, true],
  ['validate_uncached/bare', 'validate_uncached', 'bare', undefined, true],
  ['stock_proxy/direct', 'stock_proxy', 'direct', undefined, false],
  ['call/direct', 'call', 'direct', 0.30, false],
  ['call/stock_proxy', 'call', 'stock_proxy', 1.00, true],
  ['call/haproxy_jwt', 'call', 'haproxy_jwt', 1.00, true],
  ['call_priced/call', 'call_priced', 'call', undefined, true],
  ['call_idempotent/call', 'call_idempotent', 'call', undefined, true]
]
// The decision rule for a fast path: kept only where, at defaults, lanes on earn at least this over
// lanes off in req/s and in server CPU per request.
const LANE_GAIN = 1.10

function pad (s, n) { return String(s).padEnd(n) }
function num (x, digits = 0) { return Number.isFinite(x) ? x.toFixed(digits) : 'n/a' }

/**
 * Every ratio at one connection count: { label, a, b, budget, ratio (of the median req/s), perRound,
 * cpu (b's server µs/req over a's: requests per CPU-second of a's server relative to b's, for pairs in
 * the same role), kind: 'budget' | 'lanes' }.
 */
function ratiosAt (results, samples, lanes) {
  const rows = []
  const pair = (label, a, b, budget, sameRole, kind) => {
    if (results[a] === undefined || results[b] === undefined) return
    const ratio = results[a].rps / results[b].rps
    // Each round's a and b ran in the same round at the same connection count (the least disturbed
    // by the machine's drift).
    const perRound = samples.get(a).map((s, i) => s.rps / samples.get(b)[i].rps)
    const cpu = sameRole ? results[b].cpu / results[a].cpu : undefined
    rows.push({ label, a, b, budget, ratio, perRound, cpu, kind })
  }
  for (const lane of lanes) {
    for (const [label, a, b, budget, sameRole] of RATIOS) {
      if (lane !== lanes[0] && !PER_LANE.includes(a)) continue
      const la = PER_LANE.includes(a) ? laneName(a, lane) : a
      pair(PER_LANE.includes(a) ? label.replace(a, la) : label, la, b, budget, sameRole, 'budget')
    }
  }
  for (const base of LANE_SCENARIOS) pair(`${base} on/off`, base, laneName(base, 'off'), LANE_GAIN, true, 'lanes')
  for (const base of CONTROL_SCENARIOS) pair(`${base} on/off (control)`, base, laneName(base, 'off'), undefined, true, 'control')
  return rows
}

function met (value, budget) { return budget === undefined || !Number.isFinite(value) ? '' : value >= budget ? 'met' : 'NOT met' }

// ---------------------------------------------------------------------------------------------

async function profileValidate (ctx) {
  // The one Tollgate started for measuring is stopped; a second one runs under --cpu-prof.
  mkdirSync(RESULTS, { recursive: true })
  const dir = mkdtempSync(join(RESULTS, 'cpuprof-'))
  const tollgate = await startTollgate(ctx.upstream.url, ctx.issuer.url, { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${dir}`] })
  const token = await issueToken(tollgate.url)
  const request = args['profile-call']
    ? { method: 'POST', path: '/call', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: CALL_BODY }
    : { method: 'GET', path: '/validate', headers: { authorization: `Bearer ${token}` } }
  const result = await cannon({ url: tollgate.url, requests: [request], connections: Math.max(...CONNECTIONS), duration: Math.max(DURATION, 10) })
  await tollgate.stop()
  const file = readdirSync(dir).find(f => f.endsWith('.cpuprofile'))
  console.log(`${request.method} ${request.path} under --cpu-prof: ${num(result.requests.average)} req/s; profile: ${join(dir, file ?? '(none written)')}`)
  console.log(`summarise it with: node bench/profile-summary.js ${join(dir, file ?? '')}`)
}

async function main () {
  const started = Date.now()
  const upstream = await startHelper('upstream')
  const [bare, stockProxy] = await Promise.all([startHelper('bare'), startHelper('stock-proxy', [upstream.url])])
  const ctx = { upstream, bare, stockProxy, issuer: await startIssuer() }

  if (args.profile || args['profile-call']) {
    await profileValidate(ctx)
    return
  }

  // One Tollgate per lane setting; the first is the primary (validate_uncached, token_issue, the
  // half-load probe, the quota fill, HAProxy's token and key).
  const only = args.only?.split(',')
  const wanted = s => only === undefined || only.includes(s.name) || only.includes(s.base)
  const wantedName = name => wanted({ name, base: name.replace(/:off$/, '') })
  ctx.tollgates = []
  let lanesNoteSkipped
  for (const lane of LANES) {
    let tollgate
    try {
      tollgate = await startTollgate(upstream.url, ctx.issuer.url, { config: { fastPath: lane === 'off' ? false : undefined } })
    } catch (err) {
      // --lanes both against a Tollgate whose config schema has no server.fastPath yet: measure the
      // defaults alone and say so, rather than stop.
      if (lane !== 'off' || LANES.length !== 2) throw err
      lanesNoteSkipped = `lanes off skipped: this Tollgate did not start with server.fastPath: false (${err.message.split(' (')[0]}; is the key in its config schema?); no on/off comparison in this run`
      console.log(lanesNoteSkipped)
      continue
    }
    const primary = ctx.tollgates.length === 0
    // Only the tokens some selected scenario sends.
    const tg = { lane, tollgate, primary, distinct: wantedName(laneName('validate_distinct', lane)) ? DISTINCT : 0, uncached: wantedName(laneName('validate_uncached', lane)) ? UNCACHED : 0 }
    await freshTokens(tg, 0)
    ctx.tollgates.push(tg)
  }
  const primary = ctx.tollgates[0]
  LANES = ctx.tollgates.map(tg => tg.lane)
  // HAProxy only when its scenario is wanted.
  const haproxyWanted = wantedName('haproxy_jwt')
  let haproxyNote
  if (haproxyWanted) {
    const version = haproxyVersion()
    if (version === undefined) {
      haproxyNote = `haproxy is not installed: the haproxy_jwt reference (call/haproxy_jwt) is skipped. Install it with: ${HAPROXY_INSTALL_HINT}`
      console.log(haproxyNote)
    } else {
      ctx.haproxy = await startHaproxy({ port: await freePort(), upstreamUrl: `${upstream.url}/echo`, tollgateUrl: primary.tollgate.url, token: primary.token, threads: HAPROXY_THREADS, body: CALL_BODY })
      ctx.haproxy.version = version
      children.push(ctx.haproxy.child)
      tempDirs.push(ctx.haproxy.dir)
    }
  }
  const lanesNote = LANES.map(l => l === 'on' ? `pid ${ctx.tollgates.find(t => t.lane === l).tollgate.child.pid} defaults` : `pid ${ctx.tollgates.find(t => t.lane === l).tollgate.child.pid} server.fastPath: false (names end in :off)`).join('; ')
  console.log(`node ${process.version}; connections ${CONNECTIONS.join(', ')}; ${DURATION} s per measurement, ${ROUNDS} rounds; ${primary.distinct} distinct tokens (${primary.uncached} for uncached)`)
  console.log(`Tollgate: default configuration (access log on, log level info) but rate limits and quota raised; ${lanesNote}`)
  if (ctx.haproxy !== undefined) console.log(`HAProxy reference: ${ctx.haproxy.version}, nbthread ${HAPROXY_THREADS}, pid ${ctx.haproxy.child.pid}`)

  const list = scenarios(ctx).filter(wanted)
  if (list.length === 0) throw new Error(`--only ${args.only}: no such scenario`)
  const peakCount = Math.max(...CONNECTIONS)
  const at = connections => list.filter(s => !s.peakOnly || connections === peakCount)
  const samples = new Map(CONNECTIONS.map(c => [c, new Map(at(c).map(s => [s.name, []]))]))
  // Seconds one block (every scenario at one connection count) takes, to keep tokens fresh through it.
  const blockSeconds = list.length * (DURATION + 1) + 10
  // Each scenario once, unmeasured, at the highest connection count: JIT compilation, the SQLite
  // file's first pages and the connection pools are behind every server before the first measured
  // round. Without it the first POST /call round at 10 connections often ran at half the second.
  if (WARMUP > 0) {
    for (const tg of ctx.tollgates) await freshTokens(tg, list.length * (WARMUP + 1) + 10)
    for (const scenario of list) {
      await cannon({ connections: peakCount, ...scenario.opts(peakCount), duration: WARMUP })
      process.stderr.write(`  warm-up ${pad(scenario.name, 22)}\n`)
    }
  }
  for (let round = 0; round < ROUNDS; round++) {
    // Odd rounds run in reverse order (A B B A), so a drift of the machine does not favour one side.
    const counts = round % 2 === 0 ? CONNECTIONS : [...CONNECTIONS].reverse()
    for (const connections of counts) {
      for (const tg of ctx.tollgates) await freshTokens(tg, blockSeconds)
      const order = round % 2 === 0 ? at(connections) : [...at(connections)].reverse()
      for (const scenario of order) {
        const pid = scenario.pid()
        const cpuBefore = cpuMicros(pid)
        const r = await cannon({ connections, ...scenario.opts(connections) })
        const served = r.requests.total
        samples.get(connections).get(scenario.name).push({ cpuPerRequest: served > 0 ? (cpuMicros(pid) - cpuBefore) / served : NaN, rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99, non2xx: r.non2xx, errors: r.errors + r.timeouts, codes: r.statusCodeStats, errorCodes: r.errorCodes })
        process.stderr.write(`  round ${round + 1} c${pad(connections, 4)} ${pad(scenario.name, 22)} ${num(r.requests.average)} req/s\n`)
      }
    }
  }
  const rssAfterLoad = Object.fromEntries(ctx.tollgates.map(tg => [tg.lane, peakRssMiB(tg.tollgate.child.pid)]))
  const callSamples = samples.get(peakCount).get(laneName('call', primary.lane))
  const callPeak = callSamples?.length > 0 ? median(callSamples.map(s => s.rps)) : undefined
  const halfLoad = callPeak !== undefined ? await addedLatencyAtHalfLoad(ctx, callPeak) : undefined
  const quotaSubjects = await fillQuotaSubjects(ctx, QUOTA_SUBJECTS)
  const rssAfterSubjects = quotaSubjects !== undefined ? peakRssMiB(primary.tollgate.child.pid) : undefined
  const memoryAfterSubjects = quotaSubjects !== undefined ? await memoryNow(primary.tollgate.url) : undefined
  const accessLogMiB = Object.fromEntries(ctx.tollgates.map(tg => [tg.lane, tg.tollgate.logBytes() / 1048576]))

  const results = {}
  const ratios = {}
  for (const c of CONNECTIONS) {
    results[c] = Object.fromEntries([...samples.get(c)].map(([name, s]) => [name, summarise(s)]))
    ratios[c] = ratiosAt(results[c], samples.get(c), LANES)
  }
  for (const c of CONNECTIONS) {
    console.log('')
    console.log(`── ${c} connections ──`)
    console.log(`${pad('scenario', 22)}${pad('req/s', 10)}${pad('p50 ms', 9)}${pad('p99 ms', 9)}${pad('server µs/req', 15)}${pad('per round', 24)}failed`)
    for (const [name, r] of Object.entries(results[c])) {
      console.log(`${pad(name, 22)}${pad(num(r.rps), 10)}${pad(num(r.p50, 1), 9)}${pad(num(r.p99, 1), 9)}${pad(num(r.cpu, 1), 15)}${pad(r.rounds.join(' '), 24)}${r.non2xx + r.errors}`)
    }
    console.log('')
    // Three views of each ratio: of the medians, per round (the two sides of a round ran back to
    // back), and by server CPU per request.
    if (ratios[c].length > 0) console.log(`${pad('ratio', 36)}${pad('of medians', 12)}${pad('per round', 22)}${pad('by server CPU', 15)}budget`)
    for (const r of ratios[c]) {
      const budget = r.kind === 'control' ? 'no lane: about 1.00 if fair' : r.budget === undefined ? '' : r.kind === 'lanes' ? `>= ${r.budget.toFixed(2)} (req/s and CPU)` : `>= ${r.budget.toFixed(2)}`
      console.log(`${pad(r.label, 36)}${pad(num(r.ratio, 2), 12)}${pad(r.perRound.map(x => x.toFixed(2)).join(' '), 22)}${pad(num(r.cpu, 2), 15)}${budget}`)
    }
  }
  console.log('')
  if (halfLoad !== undefined) {
    console.log(`p99 added by /call at half of its peak at ${peakCount} connections (${halfLoad.rate} req/s): ${num(halfLoad.call - halfLoad.direct, 2)} ms (call p99 ${num(halfLoad.call, 2)} ms, direct p99 ${num(halfLoad.direct, 2)} ms; p50 ${num(halfLoad.callP50, 2)} vs ${num(halfLoad.directP50, 2)} ms)   target < 2 ms`)
    console.log(`  p90 ${num(halfLoad.callP90, 2)} vs ${num(halfLoad.directP90, 2)} ms; max ${num(halfLoad.callMax, 2)} vs ${num(halfLoad.directMax, 2)} ms (call vs direct; open-loop paced probe, ${PROBE_CONNECTIONS} connections, latency from scheduled send, probe send lag p99 ${num(halfLoad.callSendLagP99, 2)} / ${num(halfLoad.directSendLagP99, 2)} ms)`)
    const failed = halfLoad.errors.call + halfLoad.errors.direct + halfLoad.non2xx.call + halfLoad.non2xx.direct
    if (failed > 0) console.log(`WARNING: half-load probe: ${halfLoad.errors.call}/${halfLoad.errors.direct} errors, ${halfLoad.non2xx.call}/${halfLoad.non2xx.direct} non-2xx (call/direct): its figures are not valid`)
    const late = halfLoad.late.call + halfLoad.late.direct
    if (late > 0) console.log(`note: half-load probe: ${halfLoad.late.call}/${halfLoad.late.direct} requests (call/direct) found all ${PROBE_CONNECTIONS} connections busy and waited for one (counted in their latency)`)
  }
  for (const tg of ctx.tollgates) {
    const which = tg.lane === 'on' ? 'Tollgate' : 'Tollgate (server.fastPath: false)'
    console.log(`${which} peak RSS (VmHWM) after the measurements: ${num(rssAfterLoad[tg.lane], 1)} MiB; access log written: ${num(accessLogMiB[tg.lane], 1)} MiB`)
  }
  console.log(`${primary.lane === 'on' ? 'Tollgate' : 'Tollgate (server.fastPath: false)'} peak RSS after ${QUOTA_SUBJECTS} distinct subjects used quota: ${rssAfterSubjects !== undefined ? `${num(rssAfterSubjects, 1)} MiB (${quotaSubjects} charged; ${memoryText(memoryAfterSubjects)})` : 'n/a (--subjects 0)'}`)
  for (const c of CONNECTIONS) {
    const bad = Object.entries(results[c]).filter(([, r]) => r.non2xx + r.errors > 0)
    for (const [name, r] of bad) console.log(`WARNING: ${name} at ${c} connections: ${r.non2xx} non-2xx answers, ${r.errors} errors or timeouts (status codes per round: ${JSON.stringify(r.codes)}): its figures are not valid`)
  }

  // The budgets, compactly: ratios of medians (req/s) in this run, per connection count.
  const budgets = budgetTable(ratios, haproxyNote !== undefined)
  console.log('')
  console.log(`budgets (ratios of medians, this run)${haproxyNote !== undefined ? '; haproxy_jwt skipped: haproxy not installed' : ''}${lanesNoteSkipped !== undefined ? '; lanes off skipped: server.fastPath not accepted' : ''}`)
  const width = 48
  console.log(`${pad('budget', width)}${CONNECTIONS.map(c => pad(`c=${c}`, 16)).join('')}`)
  for (const row of budgets) {
    if (row.heading !== undefined) { console.log(row.heading); continue }
    const cell = c => row.skipped ? 'skipped' : row.values[c] === undefined ? 'n/a' : `${num(row.values[c], 2)} ${met(row.values[c], row.min)}`
    console.log(`${pad(row.label, width)}${CONNECTIONS.map(c => pad(cell(c), 16)).join('')}`)
  }
  console.log(`bench took ${Math.round((Date.now() - started) / 1000)} s`)

  if (args.json) {
    mkdirSync(RESULTS, { recursive: true })
    const file = join(RESULTS, `bench-${new Date().toISOString().replace(/[:.]/g, '-')}.json`)
    const haproxy = ctx.haproxy !== undefined ? { version: ctx.haproxy.version, threads: HAPROXY_THREADS, config: ctx.haproxy.config } : { skipped: haproxyNote ?? 'not in --only' }
    writeFileSync(file, JSON.stringify({
      node: process.version,
      connections: CONNECTIONS,
      lanes: LANES,
      duration: DURATION,
      rounds: ROUNDS,
      // The YAML each Tollgate ran (with port 0 in place of its port).
      tollgateConfig: Object.fromEntries(LANES.map(lane => [lane, tollgateConfig(0, upstream.url, ctx.issuer.url, { fastPath: lane === 'off' ? false : undefined })])),
      haproxy,
      results,
      ratios,
      budgets: budgets.filter(b => b.heading === undefined).map(b => ({ ...b, met: Object.fromEntries(Object.entries(b.values).map(([c, v]) => [c, b.min === undefined || v === undefined ? undefined : v >= b.min])) })),
      halfLoad,
      rssAfterLoad,
      rssAfterSubjects,
      memoryAfterSubjects,
      accessLogMiB
    }, null, 2) + '\n')
    console.log(`written ${file}`)
  }
  for (const tg of ctx.tollgates) await tg.tollgate.stop()
  if (ctx.haproxy !== undefined) await ctx.haproxy.stop()
  ctx.issuer.close()
}

/**
 * Rows of the closing table: the architecture's budgets at defaults, the same ratios with
 * server.fastPath: false (what the budgets would be without the fast paths), and the fast-path
 * decision rule (lanes on / lanes off, req/s and server CPU per request, each >= LANE_GAIN).
 */
function budgetTable (ratios, haproxySkipped) {
  const rows = []
  const value = (label, key) => Object.fromEntries(CONNECTIONS.map(c => [c, ratios[c].find(r => r.label === label)?.[key]]))
  const budgetRows = suffix => RATIOS.filter(([, , , min]) => min !== undefined).map(([label, a, , min]) => {
    const l = suffix === '' ? label : label.replace(a, laneName(a, 'off'))
    const skipped = haproxySkipped && l.endsWith('/haproxy_jwt')
    return { label: `${l} >= ${min.toFixed(2)}`, min, values: value(l, 'ratio'), skipped }
  })
  if (LANES[0] === 'on') {
    rows.push({ heading: 'at defaults:' }, ...budgetRows(''))
  }
  if (LANES.includes('off')) {
    rows.push({ heading: 'with server.fastPath: false (not the defaults):' }, ...budgetRows(':off'))
  }
  if (LANES.length === 2) {
    rows.push({ heading: `fast paths, lanes on / lanes off (kept only if both >= ${LANE_GAIN.toFixed(2)}):` })
    for (const base of LANE_SCENARIOS) {
      const label = `${base} on/off`
      rows.push({ label: `${label} req/s >= ${LANE_GAIN.toFixed(2)}`, min: LANE_GAIN, values: value(label, 'ratio') })
      rows.push({ label: `${label} CPU/req >= ${LANE_GAIN.toFixed(2)}`, min: LANE_GAIN, values: value(label, 'cpu') })
    }
    for (const base of CONTROL_SCENARIOS) {
      const label = `${base} on/off (control)`
      rows.push({ label: `${base} on/off req/s (control, ~1)`, values: value(label, 'ratio') })
      rows.push({ label: `${base} on/off CPU/req (control, ~1)`, values: value(label, 'cpu') })
    }
  }
  // Rows whose scenarios were not measured (--only) are left out, and then headings with no rows.
  const kept = rows.filter(r => r.heading !== undefined || r.skipped || Object.values(r.values).some(v => v !== undefined))
  return kept.filter((r, i) => r.heading === undefined || (kept[i + 1] !== undefined && kept[i + 1].heading === undefined))
}

main().then(() => { stopAll() }, err => {
  console.error(`bench: ${err.stack ?? err}`)
  stopAll()
  process.exitCode = 1
})
