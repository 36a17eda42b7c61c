// Helpers for the suites that run real outside programs (nginx, python3, chromium) against an app
// listening on a real port: locating a system binary (a failure in CI, a skip elsewhere), free
// ports and a listening app (the upstream is support/upstream.ts). No sleeps: readiness is a successful connect.
import { accessSync, constants } from 'node:fs'
import { connect, type AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import type { Config } from '../src/config.js'
import { build, type TestContext } from './helper.js'
import { freePort } from './support/redis.js'
import { skipOrFail, type Skippable } from './support/skip.js'

/**
 * The path of an executable if present. When missing: a failure under CI (scripts/ensure-system-deps.sh
 * should have installed it) and a skip elsewhere (support/skip.ts), saying what to install.
 */
export function requireExecutable (t: Skippable, path: string, hint: string): string | undefined {
  try {
    accessSync(path, constants.X_OK)
    return path
  } catch {
    skipOrFail(t, `${path} not found: ${hint} (or run scripts/ensure-system-deps.sh)`)
    return undefined
  }
}

/** A port that was free a moment ago (for programs that cannot listen on port 0 and report it). */
export { freePort }

/** Resolves once something accepts TCP connections on the port; gives up after `attempts` tries. */
export async function waitForPort (port: number, isAlive: () => boolean = () => true, attempts = 400): Promise<void> {
  for (let i = 0; i < attempts; i++) {
    if (!isAlive()) throw new Error(`the process meant to listen on ${port} exited`)
    const ok = await new Promise<boolean>(resolve => {
      const socket = connect(port, '127.0.0.1')
      socket.once('connect', () => { socket.destroy(); resolve(true) })
      socket.once('error', () => { resolve(false) })
    })
    if (ok) return
    await new Promise(resolve => setImmediate(resolve))
    await new Promise(resolve => setTimeout(resolve, 25))
  }
  throw new Error(`nothing listens on 127.0.0.1:${port}`)
}

/** Builds the app (helper.build) and listens on 127.0.0.1; the port given, or a free one. */
export async function listenApp (t: TestContext, config: Config, port = 0): Promise<{ app: FastifyInstance, url: string, port: number }> {
  const app = await build(t, config)
  await app.listen({ host: '127.0.0.1', port })
  const actual = (app.server.address() as AddressInfo).port
  return { app, url: `http://127.0.0.1:${actual}`, port: actual }
}
