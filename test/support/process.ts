// The one spawner of real gateway processes (`node dist/cli.js serve`), for single-process tests
// and for support/cluster.ts's replicas alike. dist/ is rebuilt first when any source is newer
// (ensureBuilt), so a test never runs stale code after a source edit under plain `tap`. A gateway
// listens on a free port of 127.0.0.1; it is ready at its first 200 from /health, or (readyLine) at
// its "tollgate ready" log line, and is stopped (SIGTERM, SIGKILL after 5 s) in teardown.
// Its stdout and stderr are kept as lines; support/logs.ts parses them.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { chmodSync, mkdirSync, readdirSync, rmdirSync, statSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import type { TestContext } from '../helper.js'
import { freePort } from './redis.js'

export { freePort }

export const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)))
export const CLI = join(ROOT, 'dist', 'cli.js')
/**
 * Node arguments for every `node dist/cli.js` a test spawns: loads test/support/preload.mjs first,
 * which spares a process the cost of tap's module hooks on the app's ES-module packages on Node 20
 * (the figures are in that file); the same modules load, only earlier.
 */
export const PRELOAD = ['--import', pathToFileURL(join(ROOT, 'test', 'support', 'preload.mjs')).href]

function newestMtime (dir: string): number {
  let newest = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(path) : statSync(path).mtimeMs)
  }
  return newest
}

/** Compiles src/ into dist/ unless dist/cli.js is newer than every source (one build at a time). */
export function ensureBuilt (): void {
  const stale = (): boolean => {
    try {
      return statSync(CLI).mtimeMs < newestMtime(join(ROOT, 'src'))
    } catch {
      return true
    }
  }
  if (!stale()) return
  const lock = join(ROOT, '.build-lock')
  const deadline = Date.now() + 120_000
  for (;;) {
    try {
      mkdirSync(lock)
      break
    } catch {
      if (Date.now() > deadline) throw new Error(`another build holds ${lock}; remove it if stale`)
      spawnSync('sleep', ['0.2'])
    }
  }
  try {
    if (!stale()) return
    const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
    const result = spawnSync(process.execPath, [tsc, '-p', join(ROOT, 'tsconfig.build.json')], { cwd: ROOT, encoding: 'utf8' })
    if (result.status !== 0) throw new Error(`build failed:\n${result.stdout}${result.stderr}`)
    // The package's bin, as `npm run build` leaves it (npx runs it directly).
    chmodSync(CLI, 0o755)
  } finally {
    rmdirSync(lock)
  }
}

export interface GatewayOptions {
  cwd: string
  /** The whole environment besides PATH, TOLLGATE_PORT and TOLLGATE_HOST (nothing else is inherited). */
  env?: Record<string, string | undefined>
  /** After `serve`, e.g. ['--config', file]. */
  args?: string[]
  /** Before the script, e.g. ['--import', hook]. */
  nodeArgs?: string[]
  /** Names the process in errors (e.g. "replica 1"); default "gateway". */
  name?: string
  /**
   * Ready only once the "tollgate ready" line has been read (then /health must answer 200), so
   * `logs` holds it; needs logLevel info or lower. Default: ready at the first 200 from /health.
   */
  readyLine?: boolean
}

export interface Gateway {
  port: number
  url: string
  child: ChildProcess
  /** stdout and stderr lines so far (JSON log lines at the configured level), complete lines only. */
  logs: string[]
  /** Everything written to stdout and stderr so far, as written. */
  output: () => string
  /** SIGTERM, then SIGKILL if it has not exited after 5 s; resolves once it has exited. */
  stop: () => Promise<void>
}

export async function startGateway (t: TestContext, options: GatewayOptions): Promise<Gateway> {
  ensureBuilt()
  const name = options.name ?? 'gateway'
  const port = await freePort()
  const child = spawn(process.execPath, [...PRELOAD, ...(options.nodeArgs ?? []), CLI, 'serve', ...(options.args ?? [])], {
    cwd: options.cwd,
    env: { PATH: process.env.PATH ?? '', TOLLGATE_PORT: String(port), TOLLGATE_HOST: '127.0.0.1', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let out = ''
  let partial = ''
  const logs: string[] = []
  let announceReady: () => void = () => {}
  const ready = new Promise<void>(resolve => { announceReady = resolve })
  const onData = (chunk: Buffer): void => {
    const text = chunk.toString()
    out += text
    const lines = (partial + text).split('\n')
    partial = lines.pop() ?? ''
    for (const line of lines) {
      logs.push(line)
      if (line.includes('"tollgate ready"')) announceReady()
    }
  }
  child.stdout?.on('data', onData)
  child.stderr?.on('data', onData)
  const exited = new Promise<void>(resolve => child.once('exit', () => { resolve() }))
  const running = (): boolean => child.exitCode === null && child.signalCode === null
  const stop = async (): Promise<void> => {
    if (!running()) return
    child.kill('SIGTERM')
    const timer = setTimeout(() => { child.kill('SIGKILL') }, 5000)
    await exited
    clearTimeout(timer)
  }
  t.teardown(stop)
  const url = `http://127.0.0.1:${port}`
  // A bound on start-up, not a performance assertion: on a loaded 2-core machine a cold start (module
  // loading, the key-encryption secret, SQLite) has taken over 20 s.
  const deadline = Date.now() + 60_000
  const exitedEarly = (): Error => new Error(`${name} exited with ${String(child.exitCode ?? child.signalCode)} before it was ready:\n${out}`)
  if (options.readyLine === true) {
    const timeout = new Promise<'timeout'>(resolve => setTimeout(resolve, 60_000, 'timeout').unref())
    const outcome = await Promise.race([ready.then(() => 'ready' as const), exited.then(() => 'exited' as const), timeout])
    if (outcome === 'exited') throw exitedEarly()
    if (outcome === 'timeout') throw new Error(`${name} logged no "tollgate ready" line:\n${out}`)
    const res = await fetch(`${url}/health`)
    if (res.status !== 200) throw new Error(`${name} is not healthy: ${res.status} ${await res.text()}`)
  } else {
    for (;;) {
      if (!running()) throw exitedEarly()
      try {
        const res = await fetch(`${url}/health`)
        await res.arrayBuffer()
        if (res.status === 200) break
      } catch {}
      if (Date.now() > deadline) throw new Error(`${name} did not become healthy:\n${out}`)
      await Promise.race([exited, new Promise(resolve => setTimeout(resolve, 100))])
    }
  }
  return { port, url, child, logs, output: () => out, stop }
}
