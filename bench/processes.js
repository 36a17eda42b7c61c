// The processes a benchmark starts and what it reads off them, shared by bench/run.js and
// bench/compare.js: helper servers (bench/servers/*.js), Tollgate itself as shipped, their CPU time,
// and the median of a run's samples. Every process and temp dir is tracked here and stopped or
// removed when the benchmark exits (`stopAll`, also on SIGINT and SIGTERM).
import { fork, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { tollgateConfig } from './tollgate-config.js'
import { freePort } from './free-port.js'

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')

/** Child processes started here (stopped at exit). */
export const children = []
/** Temp dirs (Tollgate's data dir with its access log, HAProxy's config) removed at exit, if a stop did not already. */
export const tempDirs = []

export function stopAll () {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true })
}
process.on('exit', stopAll)
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => { stopAll(); process.exit(130) })

/** Forks a helper server (bench/servers/*.js) and resolves with its port, sent over IPC. */
export function startHelper (name, argv = []) {
  return new Promise((resolve, reject) => {
    const child = fork(join(ROOT, 'bench', 'servers', `${name}.js`), argv, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    children.push(child)
    child.once('message', m => { resolve({ child, port: m.port, url: `http://127.0.0.1:${m.port}` }) })
    child.once('exit', code => { reject(new Error(`${name} exited with ${code} before listening`)) })
  })
}

/** The bench client's secret (BENCH_CLIENT_SECRET of bench/tollgate-config.js), and its Basic header. */
export const CLIENT_SECRET = randomBytes(24).toString('base64url')
export const BASIC = 'Basic ' + Buffer.from(`bench:${CLIENT_SECRET}`).toString('base64')

/**
 * Tollgate as shipped: `node <dir>/dist/cli.js serve --config FILE`, SQLite in a temp data dir, with
 * the configuration of bench/tollgate-config.js (defaults but for the raised limits and quota;
 * `config` is passed to it). No TOLLGATE_* variable of the caller's environment is passed on (it
 * could change a default) except the ones set here. Its stdout, the access log (info, the default
 * level), goes to a file in the data dir, as a log file or a container runtime's pipe would take
 * it; the file is removed with the data dir. `dir` is a build's root (this tree's by default);
 * `nodeArgs` go before the script (e.g. --cpu-prof).
 */
export async function startTollgate (upstreamUrl, issuerUrl, { dir = ROOT, nodeArgs = [], config = {} } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'tollgate-bench-'))
  tempDirs.push(dataDir)
  const port = await freePort()
  const configFile = join(dataDir, 'tollgate.yaml')
  writeFileSync(configFile, tollgateConfig(port, upstreamUrl, issuerUrl, config))
  const accessLog = join(dataDir, 'stdout.log')
  const logFd = openSync(accessLog, 'w')
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TOLLGATE_')))
  const child = spawn(process.execPath, [...nodeArgs, join(dir, 'dist', 'cli.js'), 'serve', '--config', configFile], {
    cwd: dir,
    env: {
      ...env,
      TOLLGATE_DATA_DIR: dataDir,
      TOLLGATE_SECRET: randomBytes(32).toString('base64'),
      BENCH_CLIENT_SECRET: CLIENT_SECRET
    },
    stdio: ['ignore', logFd, 'inherit']
  })
  closeSync(logFd)
  children.push(child)
  const url = `http://127.0.0.1:${port}`
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) {
      const hint = config.fastPath === false ? ' (with server.fastPath: false: if the config schema rejects the key, this Tollgate predates it; run with --lanes on)' : ''
      throw new Error(`tollgate exited with ${child.exitCode}${hint}`)
    }
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
  /** Bytes Tollgate has written to stdout (its access log) so far. */
  const logBytes = () => { try { return statSync(accessLog).size } catch { return NaN } }
  return { child, port, url, stop, logBytes }
}

/** CPU time a process has used so far (user + system), in microseconds, from /proc/<pid>/stat. */
export function cpuMicros (pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return (Number(fields[11]) + Number(fields[12])) * (1e6 / 100) // clock ticks of 10 ms
}

export function median (values) {
  const s = [...values].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2
}
