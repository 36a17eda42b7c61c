// Side-by-side benchmark of two Tollgate builds: the base (by default the `main` branch, built here
// into a temporary folder from `git archive`, with a symlink to this tree's node_modules) and this
// tree's dist. Both run at the default configuration with only the rate limits raised
// (bench/tollgate-config.js: log level info, so the access log is on; it goes to a file in each
// data dir), each in its own process, calling the same upstream (bench/servers/upstream.js), and
// autocannon alternates rounds between them (A B, then B A, same duration), for:
//   validate_uncached  GET /validate over more tokens than the verification cache holds (10,000):
//                      every request pays the full ES256 verification
//   validate_repeat    GET /validate, one token repeated
//   token_issue        POST /token, client_credentials with HTTP Basic
//   call               POST /call to the echo tool, charged to the client's quota (cost 1)
//   call_idempotent    the same with a fresh Idempotency-Key on every request (not in the default set)
// It prints req/s and server CPU µs per request for each round, the medians, and this tree's
// median over the base's (for CPU: the base's over this tree's, so above 1 is better either way),
// with the median of the per-round ratios (each round's pair ran back to back).
//
//   npm run build && node bench/compare.js [--base-ref main] [--base-dir DIR] [--rounds 4]
//        [--duration 5] [--connections 50] [--uncached-tokens 12000]
//        [--only validate_uncached,validate_repeat,token_issue,call,call_idempotent]
//
// Traffic goes to 127.0.0.1 only; the temporary build and data folders are removed at the end.
import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import autocannon from 'autocannon'
import { BASIC, ROOT, cpuMicros, median, startHelper, startTollgate, stopAll, tempDirs } from './processes.js'
import { spread } from './spread.js'

const { values: args } = parseArgs({
  options: {
    'base-ref': { type: 'string', default: 'main' },
    'base-dir': { type: 'string' },
    rounds: { type: 'string', default: '4' },
    duration: { type: 'string', default: '5' },
    connections: { type: 'string', default: '50' },
    'uncached-tokens': { type: 'string', default: '12000' },
    only: { type: 'string' }
  }
})
const ROUNDS = Number(args.rounds)
const DURATION = Number(args.duration)
const CONNECTIONS = Number(args.connections)
const UNCACHED = Number(args['uncached-tokens'])

/** The base build: `git archive <ref>` compiled with this tree's TypeScript and node_modules. */
function buildBase () {
  if (args['base-dir'] !== undefined) return args['base-dir']
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-base-'))
  tempDirs.push(dir)
  const ref = args['base-ref']
  execFileSync('sh', ['-c', `git -C "${ROOT}" archive "${ref}" src package.json tsconfig.json tsconfig.build.json | tar -x -C "${dir}"`])
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'))
  // No declarations: only the JavaScript runs here, and through the node_modules symlink tsc finds
  // some inferred types not portable (TS2742) and would refuse to emit declarations for them.
  execFileSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(dir, 'tsconfig.build.json'), '--declaration', 'false'], { stdio: 'inherit' })
  const commit = execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', ref]).toString().trim()
  process.stdout.write(`base: ${ref} (${commit}) built in ${dir}\n`)
  return dir
}

const TOKEN_BODY = 'grant_type=client_credentials'

async function issueTokens (url, n) {
  const tokens = []
  const one = async () => {
    const res = await fetch(`${url}/token`, { method: 'POST', headers: { authorization: BASIC, 'content-type': 'application/x-www-form-urlencoded' }, body: TOKEN_BODY })
    if (res.status !== 200) throw new Error(`POST /token: ${res.status}`)
    return (await res.json()).access_token
  }
  // The first request pays scrypt; later ones hit the verified-secret cache (concurrent first
  // requests would queue behind the scrypt limit and be refused with 503).
  tokens.push(await one())
  for (let i = 1; i < n; i += 50) tokens.push(...await Promise.all(Array.from({ length: Math.min(50, n - i) }, one)))
  return tokens
}


function cannon (opts) {
  return new Promise((resolve, reject) => {
    autocannon({ connections: CONNECTIONS, duration: DURATION, pipelining: 1, ...opts }, (err, result) => {
      if (err) reject(err)
      else resolve(result)
    })
  })
}

const CALL_BODY = JSON.stringify({ tool: 'echo', arguments: { text: 'hello' } })

const ALL_SCENARIOS = {
  validate_uncached: g => ({ url: g.url, ...spread(g.tokens.map(token => ({ method: 'GET', path: '/validate', headers: { authorization: `Bearer ${token}` } })), CONNECTIONS) }),
  validate_repeat: g => ({ url: `${g.url}/validate`, headers: { authorization: `Bearer ${g.tokens[0]}` } }),
  token_issue: g => ({ url: `${g.url}/token`, method: 'POST', headers: { authorization: BASIC, 'content-type': 'application/x-www-form-urlencoded' }, body: TOKEN_BODY }),
  call: g => ({ url: `${g.url}/call`, method: 'POST', headers: { authorization: `Bearer ${g.tokens[0]}`, 'content-type': 'application/json' }, body: CALL_BODY }),
  // A fresh Idempotency-Key on every request: each claims its key, is charged, and keeps its answer.
  call_idempotent: g => {
    const headers = { authorization: `Bearer ${g.tokens[0]}`, 'content-type': 'application/json' }
    const run = `${process.pid}-${++idempotentRuns}`
    let n = 0
    return { url: g.url, requests: [{ method: 'POST', path: '/call', body: CALL_BODY, setupRequest: req => ({ ...req, headers: { ...headers, 'idempotency-key': `compare-${run}-${++n}` } }) }] }
  }
}
let idempotentRuns = 0

const DEFAULT_SET = ['validate_uncached', 'validate_repeat', 'token_issue', 'call']
const SCENARIOS = Object.fromEntries(Object.entries(ALL_SCENARIOS).filter(([name]) => (args.only?.split(',') ?? DEFAULT_SET).includes(name)))

async function main () {
  if (!existsSync(join(ROOT, 'dist', 'cli.js'))) throw new Error('build this tree first: npm run build')
  const baseDir = buildBase()
  const upstream = await startHelper('upstream')
  // Defaults, as bench/run.js runs them, without the echo_priced tool (a base build from before
  // costExpr would refuse it): the access log on, to a file.
  const start = async (name, dir) => ({ name, ...await startTollgate(upstream.url, undefined, { dir, config: { priced: false } }) })
  const base = await start('base', baseDir)
  const head = await start('head', ROOT)
  for (const g of [base, head]) {
    g.tokens = await issueTokens(g.url, 'validate_uncached' in SCENARIOS ? UNCACHED : 1)
    g.results = Object.fromEntries(Object.keys(SCENARIOS).map(s => [s, []]))
    g.cpu = Object.fromEntries(Object.keys(SCENARIOS).map(s => [s, []]))
  }
  process.stdout.write(`${ROUNDS} rounds × ${DURATION} s, ${CONNECTIONS} connections, ${UNCACHED} tokens each for validate_uncached\n`)
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? [base, head] : [head, base]
    for (const [scenario, opts] of Object.entries(SCENARIOS)) {
      for (const g of order) {
        const cpuBefore = cpuMicros(g.child.pid)
        const result = await cannon(opts(g))
        const cpu = (cpuMicros(g.child.pid) - cpuBefore) / Math.max(1, result.requests.total)
        const bad = result.non2xx + result.errors + result.timeouts
        if (bad > 0) throw new Error(`${g.name} ${scenario}: ${bad} failed requests`)
        g.results[scenario].push(result.requests.average)
        g.cpu[scenario].push(cpu)
        process.stdout.write(`round ${round + 1} ${scenario.padEnd(17)} ${g.name}: ${result.requests.average.toFixed(0).padStart(5)} req/s  ${cpu.toFixed(0).padStart(4)} server µs/req\n`)
      }
    }
  }
  // On a shared machine req/s swings with the other tenants; server CPU per request moves much less.
  // The per-round ratios pair each base round with the head round next to it, so a slow spell of
  // the machine moves both.
  process.stdout.write('\nmedians            req/s base   req/s head   head/base   µs/req base   µs/req head   base/head   per-round head/base req/s, base/head µs\n')
  for (const scenario of Object.keys(SCENARIOS)) {
    const b = median(base.results[scenario])
    const h = median(head.results[scenario])
    const cb = median(base.cpu[scenario])
    const ch = median(head.cpu[scenario])
    const rps = median(head.results[scenario].map((v, i) => v / base.results[scenario][i]))
    const cpu = median(base.cpu[scenario].map((v, i) => v / head.cpu[scenario][i]))
    process.stdout.write(`${scenario.padEnd(17)} ${b.toFixed(0).padStart(11)} ${h.toFixed(0).padStart(12)} ${(h / b).toFixed(3).padStart(11)} ${cb.toFixed(0).padStart(13)} ${ch.toFixed(0).padStart(13)} ${(cb / ch).toFixed(3).padStart(11)}   ${rps.toFixed(3)}, ${cpu.toFixed(3)}\n`)
  }
}

main().then(() => { stopAll() }, err => {
  console.error(err)
  stopAll()
  process.exitCode = 1
})
