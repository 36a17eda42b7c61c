// Benchmark harness (`npm run bench`): starts Tollgate from the built dist, a bare Fastify route, a
// real upstream tool server and a stock Fastify + reply-from proxy, each in its own child process
// (none shares an event loop with autocannon, which runs here), then measures the scenarios below
// in interleaved rounds (A B A B ...) and reports medians and the ratios the architecture budgets,
// and the p99 that /call adds at half of its peak, with the open-loop paced probe of bench/paced.js.
//
//   node bench/run.js [--duration 5] [--rounds 2] [--connections 50] [--only name,name] [--json]
//   node bench/run.js --profile   one CPU profile of GET /validate (repeated token) into bench/results/
//
// It sends traffic only to 127.0.0.1 and stops by itself. Results go to stdout (and with --json,
// to bench/results/bench-<time>.json).
import { spawn, fork } from 'node:child_process'
import { generateKeyPairSync, randomBytes, sign } from 'node:crypto'
import { createServer as createHttpServer } from 'node:http'
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import autocannon from 'autocannon'
import { pacedProbe } from './paced.js'
import { tollgateConfig } from './tollgate-config.js'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
const RESULTS = join(ROOT, 'bench', 'results')

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '5' },
    rounds: { type: 'string', default: '2' },
    connections: { type: 'string', default: '50' },
    tokens: { type: 'string', default: '1000' },
    'uncached-tokens': { type: 'string', default: '12000' },
    only: { type: 'string' },
    json: { type: 'boolean', default: false },
    profile: { type: 'boolean', default: false },
    'profile-call': { type: 'boolean', default: false },
    subjects: { type: 'string', default: '100000' }
  }
})
const DURATION = Number(args.duration)
const ROUNDS = Math.max(2, Number(args.rounds))
const CONNECTIONS = Number(args.connections)
const DISTINCT = Number(args.tokens)
// More than the verification cache holds (10,000), spread over the connections so that a token
// comes back only after all the others: every request pays the full ES256 verification.
const UNCACHED = Number(args['uncached-tokens'])
const QUOTA_SUBJECTS = Number(args.subjects)
// The half-load latency probe (bench/paced.js): enough keep-alive connections that one is always
// free at half of the peak, and one second sent but not recorded before each measurement.
const PROBE_CONNECTIONS = 64
const PROBE_WARMUP = 1

// ---------------------------------------------------------------------------------------------
// Child processes

const children = []

function stopAll () {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
}
process.on('exit', stopAll)
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => { stopAll(); process.exit(130) })

/** Forks a helper server (bench/servers/*.js) and resolves with its port, sent over IPC. */
function startHelper (name, argv = []) {
  return new Promise((resolve, reject) => {
    const child = fork(join(ROOT, 'bench', 'servers', `${name}.js`), argv, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    children.push(child)
    child.once('message', m => { resolve({ child, port: m.port, url: `http://127.0.0.1:${m.port}` }) })
    child.once('exit', code => { reject(new Error(`${name} exited with ${code} before listening`)) })
  })
}

async function freePort () {
  const server = createServer()
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address()
  await new Promise(resolve => server.close(resolve))
  return port
}

const CLIENT_SECRET = randomBytes(24).toString('base64url')

/** Tollgate as shipped: `node dist/cli.js serve --config FILE`, SQLite in a temp data dir. */
async function startTollgate (upstreamUrl, issuerUrl, { profileDir } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'tollgate-bench-'))
  const port = await freePort()
  const configFile = join(dataDir, 'tollgate.yaml')
  writeFileSync(configFile, tollgateConfig(port, upstreamUrl, issuerUrl))
  const nodeArgs = profileDir !== undefined ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : []
  const child = spawn(process.execPath, [...nodeArgs, join(ROOT, 'dist', 'cli.js'), 'serve', '--config', configFile], {
    env: {
      ...process.env,
      TOLLGATE_DATA_DIR: dataDir,
      TOLLGATE_LOG_LEVEL: 'warn',
      TOLLGATE_SECRET: randomBytes(32).toString('base64'),
      BENCH_CLIENT_SECRET: CLIENT_SECRET
    },
    stdio: ['ignore', 'ignore', 'inherit']
  })
  children.push(child)
  const url = `http://127.0.0.1:${port}`
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`tollgate exited with ${child.exitCode}`)
    try {
      if ((await fetch(`${url}/health`)).status === 200) break
    } catch {}
    if (i > 400) throw new Error('tollgate did not become healthy')
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  const stop = async () => {
    if (child.exitCode === null) {
      const exited = new Promise(resolve => child.once('exit', resolve))
      child.kill('SIGTERM') // close-with-grace: a clean exit, so --cpu-prof writes its profile
      await exited
    }
    rmSync(dataDir, { recursive: true, force: true })
  }
  return { child, port, url, stop }
}

/** CPU time a process has used so far (user + system), in microseconds, from /proc/<pid>/stat. */
function cpuMicros (pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return (Number(fields[11]) + Number(fields[12])) * (1e6 / 100) // clock ticks of 10 ms
}

/** Peak resident set size of a process (VmHWM), in MiB. */
function peakRssMiB (pid) {
  const m = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return m === null ? NaN : Number(m[1]) / 1024
}

// ---------------------------------------------------------------------------------------------
// Talking to Tollgate

const BASIC = 'Basic ' + Buffer.from(`bench:${CLIENT_SECRET}`).toString('base64')
const TOKEN_BODY = 'grant_type=client_credentials'

async function issueToken (url) {
  const res = await fetch(`${url}/token`, { method: 'POST', headers: { authorization: BASIC, 'content-type': 'application/x-www-form-urlencoded' }, body: TOKEN_BODY })
  if (res.status !== 200) throw new Error(`POST /token: ${res.status} ${await res.text()}`)
  return (await res.json()).access_token
}

async function issueTokens (url, n) {
  const tokens = []
  // A few at a time: this is setup, not a measurement.
  for (let i = 0; i < n; i += 50) tokens.push(...await Promise.all(Array.from({ length: Math.min(50, n - i) }, () => issueToken(url))))
  return tokens
}

// ---------------------------------------------------------------------------------------------
// Measuring

function cannon (opts) {
  return new Promise((resolve, reject) => {
    const errorCodes = {}
    const instance = autocannon({ connections: CONNECTIONS, duration: DURATION, pipelining: 1, ...opts }, (err, result) => {
      if (err) reject(err)
      else resolve({ ...result, errorCodes })
    })
    instance.on('reqError', e => { const code = e.code ?? e.message; errorCodes[code] = (errorCodes[code] ?? 0) + 1 })
  })
}

/**
 * Autocannon options spreading `requests` over the connections: each connection cycles through its
 * own slice, so every request in the list is in use at once. (Handing every connection the whole
 * list makes autocannon build list × connections request buffers before it starts, which stalls it
 * long enough for its own 10 s request timeout to fire.)
 */
function spread (requests) {
  const size = Math.max(1, Math.ceil(requests.length / CONNECTIONS))
  let n = 0
  return {
    requests: requests.slice(0, size),
    setupClient: client => {
      const start = (n++ * size) % requests.length
      client.setRequests(requests.slice(start, start + size))
    }
  }
}

/**
 * The scenarios, in the order each round runs them. Each is { name, run(): autocannon options }.
 * Ratios are computed from the medians at the end.
 */
function scenarios (ctx) {
  const validate = token => ({ method: 'GET', path: '/validate', headers: { authorization: `Bearer ${token}` } })
  const distinct = ctx.tokens.map(validate)
  const uncached = ctx.uncachedTokens.map(validate)
  const list = [
    // The same request bytes as validate_repeat (the bare route ignores the header), so the ratio
    // compares what the servers do, not the size of what they read.
    { name: 'bare', pid: () => ctx.bare.child.pid, opts: () => ({ url: ctx.bare.url, requests: [{ method: 'GET', path: '/bare', headers: { authorization: `Bearer ${ctx.token}` } }] }) },
    { name: 'validate_repeat', pid: () => ctx.tollgate.child.pid, opts: () => ({ url: ctx.tollgate.url, requests: [validate(ctx.token)] }) },
    { name: 'validate_distinct', pid: () => ctx.tollgate.child.pid, opts: () => ({ url: ctx.tollgate.url, ...spread(distinct) }) },
    { name: 'validate_uncached', pid: () => ctx.tollgate.child.pid, opts: () => ({ url: ctx.tollgate.url, ...spread(uncached) }) },
    {
      name: 'token_issue',
      pid: () => ctx.tollgate.child.pid,
      opts: () => ({ url: `${ctx.tollgate.url}/token`, method: 'POST', headers: { authorization: BASIC, 'content-type': 'application/x-www-form-urlencoded' }, body: TOKEN_BODY })
    },
    { name: 'direct', pid: () => ctx.upstream.child.pid, opts: () => ({ url: `${ctx.upstream.url}/echo`, method: 'POST', headers: { 'content-type': 'application/json' }, body: CALL_BODY }) },
    { name: 'stock_proxy', pid: () => ctx.stockProxy.child.pid, opts: () => ({ url: `${ctx.stockProxy.url}/call`, method: 'POST', headers: { 'content-type': 'application/json' }, body: CALL_BODY }) }
  ]
  const call = callScenario(ctx)
  if (call !== undefined) list.push(call)
  return list
}

const CALL_BODY = JSON.stringify({ tool: 'echo', arguments: { text: 'hello' } })

function callScenario (ctx) {
  return { name: 'call', pid: () => ctx.tollgate.child.pid, opts: () => ({ url: `${ctx.tollgate.url}/call`, method: 'POST', headers: { authorization: `Bearer ${ctx.token}`, 'content-type': 'application/json' }, body: CALL_BODY }) }
}

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
  let next = 0
  let charged = 0
  const worker = async () => {
    while (next < subjects) {
      const i = next++
      const body = new URLSearchParams({
        grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
        subject_token: ctx.issuer.tokenFor(`user-${i}`),
        subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
        audience: 'tool:echo'
      })
      const ex = await fetch(`${ctx.tollgate.url}/token`, { method: 'POST', headers: { authorization: BASIC, 'content-type': 'application/x-www-form-urlencoded' }, body })
      if (ex.status !== 200) throw new Error(`token exchange for user-${i}: ${ex.status} ${await ex.text()}`)
      const { access_token: token } = await ex.json()
      const res = await fetch(`${ctx.tollgate.url}/call`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: CALL_BODY })
      await res.arrayBuffer()
      if (res.status === 200) charged++
    }
  }
  const started = Date.now()
  await Promise.all(Array.from({ length: 64 }, worker))
  process.stderr.write(`  ${subjects} subjects exchanged and charged in ${Math.round((Date.now() - started) / 1000)} s\n`)
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
  const shapes = {
    direct: { origin: ctx.upstream.url, path: '/echo', headers: { 'content-type': 'application/json' } },
    call: { origin: ctx.tollgate.url, path: '/call', headers: { authorization: `Bearer ${ctx.token}`, 'content-type': 'application/json' } }
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

function median (values) {
  const s = [...values].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2
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

// [label, a, b, budget, whether a and b measure servers in the same role, so that their CPU per
// request compares too (the upstream's CPU says nothing about a proxy's)]
const RATIOS = [
  ['validate_repeat/bare', 'validate_repeat', 'bare', '>= 0.80', true],
  ['validate_distinct/bare', 'validate_distinct', 'bare', '', true],
  ['validate_uncached/bare', 'validate_uncached', 'bare', '', true],
  ['stock_proxy/direct', 'stock_proxy', 'direct', '', false],
  ['call/direct', 'call', 'direct', '>= 0.30', false],
  ['call/stock_proxy', 'call', 'stock_proxy', '>= 1.00', true]
]

function pad (s, n) { return String(s).padEnd(n) }
function num (x, digits = 0) { return Number.isFinite(x) ? x.toFixed(digits) : 'n/a' }

// ---------------------------------------------------------------------------------------------

async function profileValidate (ctx) {
  // The one Tollgate started for measuring is stopped; a second one runs under --cpu-prof.
  mkdirSync(RESULTS, { recursive: true })
  const dir = mkdtempSync(join(RESULTS, 'cpuprof-'))
  const tollgate = await startTollgate(ctx.upstream.url, ctx.issuer.url, { profileDir: dir })
  const token = await issueToken(tollgate.url)
  const request = args['profile-call']
    ? { method: 'POST', path: '/call', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: CALL_BODY }
    : { method: 'GET', path: '/validate', headers: { authorization: `Bearer ${token}` } }
  const result = await cannon({ url: tollgate.url, requests: [request], duration: Math.max(DURATION, 10) })
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

  ctx.tollgate = await startTollgate(upstream.url, ctx.issuer.url)
  ctx.token = await issueToken(ctx.tollgate.url)
  ctx.tokens = await issueTokens(ctx.tollgate.url, DISTINCT)
  ctx.uncachedTokens = await issueTokens(ctx.tollgate.url, UNCACHED)
  console.log(`node ${process.version}, ${CONNECTIONS} connections, ${DURATION} s per measurement, ${ROUNDS} rounds, ${DISTINCT} distinct tokens (${UNCACHED} for uncached); Tollgate pid ${ctx.tollgate.child.pid}`)

  const only = args.only?.split(',')
  const list = scenarios(ctx).filter(s => only === undefined || only.includes(s.name))
  const samples = new Map(list.map(s => [s.name, []]))
  for (let round = 0; round < ROUNDS; round++) {
    // Odd rounds run in reverse order (A B B A), so a drift of the machine does not favour one side.
    const order = round % 2 === 0 ? list : [...list].reverse()
    for (const scenario of order) {
      const pid = scenario.pid()
      const cpuBefore = cpuMicros(pid)
      const r = await cannon(scenario.opts())
      const served = r.requests.total
      samples.get(scenario.name).push({ cpuPerRequest: served > 0 ? (cpuMicros(pid) - cpuBefore) / served : NaN, rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99, non2xx: r.non2xx, errors: r.errors + r.timeouts, codes: r.statusCodeStats, errorCodes: r.errorCodes })
      process.stderr.write(`  round ${round + 1} ${pad(scenario.name, 18)} ${num(r.requests.average)} req/s\n`)
    }
  }
  const rssAfterLoad = peakRssMiB(ctx.tollgate.child.pid)
  const callPeak = samples.get('call')?.length > 0 ? median(samples.get('call').map(s => s.rps)) : undefined
  const halfLoad = callPeak !== undefined ? await addedLatencyAtHalfLoad(ctx, callPeak) : undefined
  const quotaSubjects = await fillQuotaSubjects(ctx, QUOTA_SUBJECTS)
  const rssAfterSubjects = quotaSubjects !== undefined ? peakRssMiB(ctx.tollgate.child.pid) : undefined

  const results = Object.fromEntries([...samples].map(([name, s]) => [name, summarise(s)]))
  console.log('')
  console.log(`${pad('scenario', 20)}${pad('req/s', 10)}${pad('p50 ms', 9)}${pad('p99 ms', 9)}${pad('server µs/req', 15)}${pad('per round', 32)}failed`)
  for (const [name, r] of Object.entries(results)) {
    console.log(`${pad(name, 20)}${pad(num(r.rps), 10)}${pad(num(r.p50, 1), 9)}${pad(num(r.p99, 1), 9)}${pad(num(r.cpu, 1), 15)}${pad(r.rounds.join(' '), 32)}${r.non2xx + r.errors}`)
  }
  console.log('')
  // Two views of each ratio: of the medians, and per round (the two sides of a round ran back to
  // back, so a round's ratio is the least disturbed by the shared machine's drift).
  const ratios = {}
  const roundRatios = {}
  const cpuRatios = {}
  console.log(`${pad('ratio', 26)}${pad('of medians', 12)}${pad('per round', 28)}${pad('by server CPU', 15)}budget`)
  for (const [label, a, b, target, sameRole] of RATIOS) {
    const ratio = results[a] !== undefined && results[b] !== undefined ? results[a].rps / results[b].rps : undefined
    const perRound = ratio !== undefined ? samples.get(a).map((s, i) => s.rps / samples.get(b)[i].rps) : []
    // Requests per CPU-second of a's server relative to b's: how much work each request costs the
    // server itself, which the machine's drift between rounds disturbs less than req/s.
    const cpu = ratio !== undefined && sameRole ? results[b].cpu / results[a].cpu : undefined
    ratios[label] = ratio
    roundRatios[label] = perRound
    cpuRatios[label] = cpu
    console.log(`${pad(label, 26)}${pad(ratio !== undefined ? ratio.toFixed(2) : 'n/a', 12)}${pad(perRound.map(r => r.toFixed(2)).join(' '), 28)}${pad(cpu !== undefined ? cpu.toFixed(2) : '', 15)}${target}`)
  }
  console.log('')
  if (halfLoad !== undefined) {
    console.log(`p99 added by /call at half of its peak (${halfLoad.rate} req/s): ${num(halfLoad.call - halfLoad.direct, 2)} ms (call p99 ${num(halfLoad.call, 2)} ms, direct p99 ${num(halfLoad.direct, 2)} ms; p50 ${num(halfLoad.callP50, 2)} vs ${num(halfLoad.directP50, 2)} ms)   target < 2 ms`)
    console.log(`  p90 ${num(halfLoad.callP90, 2)} vs ${num(halfLoad.directP90, 2)} ms; max ${num(halfLoad.callMax, 2)} vs ${num(halfLoad.directMax, 2)} ms (call vs direct; open-loop paced probe, ${PROBE_CONNECTIONS} connections, latency from scheduled send, probe send lag p99 ${num(halfLoad.callSendLagP99, 2)} / ${num(halfLoad.directSendLagP99, 2)} ms)`)
    const failed = halfLoad.errors.call + halfLoad.errors.direct + halfLoad.non2xx.call + halfLoad.non2xx.direct
    if (failed > 0) console.log(`WARNING: half-load probe: ${halfLoad.errors.call}/${halfLoad.errors.direct} errors, ${halfLoad.non2xx.call}/${halfLoad.non2xx.direct} non-2xx (call/direct): its figures are not valid`)
    const late = halfLoad.late.call + halfLoad.late.direct
    if (late > 0) console.log(`note: half-load probe: ${halfLoad.late.call}/${halfLoad.late.direct} requests (call/direct) found all ${PROBE_CONNECTIONS} connections busy and waited for one (counted in their latency)`)
  }
  console.log(`Tollgate peak RSS (VmHWM) after the measurements: ${num(rssAfterLoad, 1)} MiB`)
  console.log(`Tollgate peak RSS after ${QUOTA_SUBJECTS} distinct subjects used quota: ${rssAfterSubjects !== undefined ? `${num(rssAfterSubjects, 1)} MiB (${quotaSubjects} charged)` : 'n/a (--subjects 0)'}`)
  const bad = Object.entries(results).filter(([, r]) => r.non2xx + r.errors > 0)
  for (const [name, r] of bad) console.log(`WARNING: ${name}: ${r.non2xx} non-2xx answers, ${r.errors} errors or timeouts (status codes per round: ${JSON.stringify(r.codes)}): its figures are not valid`)
  console.log(`bench took ${Math.round((Date.now() - started) / 1000)} s`)

  if (args.json) {
    mkdirSync(RESULTS, { recursive: true })
    const file = join(RESULTS, `bench-${new Date().toISOString().replace(/[:.]/g, '-')}.json`)
    writeFileSync(file, JSON.stringify({ node: process.version, connections: CONNECTIONS, duration: DURATION, rounds: ROUNDS, results, ratios, roundRatios, cpuRatios, halfLoad, rssAfterLoad, rssAfterSubjects }, null, 2) + '\n')
    console.log(`written ${file}`)
  }
  await ctx.tollgate.stop()
  ctx.issuer.close()
}

main().then(() => { stopAll() }, err => {
  console.error(`bench: ${err.stack ?? err}`)
  stopAll()
  process.exitCode = 1
})
