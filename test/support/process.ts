// Real gateway processes for tests: spawn `node dist/cli.js serve` on a free port and wait for
// /health. The test suite builds dist/ first (npm test runs the build).
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import type { TestContext } from '../helper.js'

export const CLI = fileURLToPath(new URL('../../dist/cli.js', import.meta.url))

import { freePort } from './redis.js'

export { freePort }

export interface Gateway {
  port: number
  url: string
  child: ChildProcess
  output: () => string
}

export async function startGateway (t: TestContext, options: { cwd: string, env?: Record<string, string>, args?: string[], nodeArgs?: string[] }): Promise<Gateway> {
  if (!existsSync(CLI)) throw new Error('dist/cli.js is missing: run `npm run build` (npm test does)')
  const port = await freePort()
  let out = ''
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), CLI, 'serve', ...(options.args ?? [])], {
    cwd: options.cwd,
    env: { PATH: process.env.PATH ?? '', TOLLGATE_PORT: String(port), TOLLGATE_HOST: '127.0.0.1', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  child.stdout?.on('data', (d: Buffer) => { out += d.toString() })
  child.stderr?.on('data', (d: Buffer) => { out += d.toString() })
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  const url = `http://127.0.0.1:${port}`
  // A bound on start-up, not a performance assertion: on a loaded 2-core machine a cold start (module
  // loading, the key-encryption secret, SQLite) has taken over 20 s.
  const deadline = Date.now() + 60_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`gateway exited with ${child.exitCode}: ${out}`)
    try {
      const res = await fetch(`${url}/health`)
      if (res.status === 200) break
    } catch {}
    if (Date.now() > deadline) throw new Error(`gateway did not become healthy: ${out}`)
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  return { port, url, child, output: () => out }
}
