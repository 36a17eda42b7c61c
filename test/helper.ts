// Test helpers: a fresh app per test on its own temporary data directory (the real SQLite file),
// closed in teardown; an injectable clock; and shortcuts for the common requests. The shared
// fixtures live in support/ (credentials, upstream, idp, process, logs, cluster, redis).
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { buildApp, type BuildOptions } from '../src/app.js'
import { loadConfig, type Config } from '../src/config.js'
import { CLIENT_SECRET_HASH, SECRET, basic } from './support/credentials.js'

// The credentials live in support/credentials.ts; re-exported so every test imports them from here.
export { CLIENT_SECRET, CLIENT_SECRET_HASH, FORM, SECRET, basic, form } from './support/credentials.js'

export interface TestContext {
  teardown: (fn: () => unknown) => void
}

export class ManualClock {
  constructor (public now = Date.UTC(2026, 10, 24, 12, 0, 0)) {}
  readonly fn = (): number => this.now
  advance (ms: number): void { this.now += ms }
}

export function tempDir (t: TestContext, prefix = 'tollgate-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  return dir
}

export function client (id: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { id, secretHash: CLIENT_SECRET_HASH, scopes: ['tools:call', 'tools:read'], audiences: ['tool:chat', 'tool:search'], ...extra }
}

/** A config with two clients (`agent` with a quota and claims, `other`), on a temp data directory. */
export function testConfig (t: TestContext, overrides: Record<string, unknown> = {}, env: Record<string, string> = {}): Config {
  const dataDir = (overrides.dataDir as string | undefined) ?? tempDir(t)
  return loadConfig({
    raw: {
      issuer: 'https://tollgate.test',
      dataDir,
      logLevel: 'silent',
      clients: [
        client('agent', { quota: { limit: 100, window: '1d' }, claims: { role: 'user' }, refresh: true }),
        client('other', { audiences: ['tool:other'] })
      ],
      ...overrides
    },
    env: { TOLLGATE_SECRET: SECRET, ...env }
  })
}

/** `config` with its key set re-read every `ms` (`keys.reloadInterval`), for tests that wait on a reload. */
export function reloadEvery (config: Config, ms: number): Config {
  config.keys.reloadInterval = ms / 1000
  return config
}

export async function build (t: TestContext, config?: Config, options: BuildOptions = {}): Promise<FastifyInstance> {
  const app = await buildApp(config ?? testConfig(t), { logger: false, ...options })
  t.teardown(() => app.close())
  await app.ready()
  return app
}

export async function issue (app: FastifyInstance, fields: Record<string, string> = {}, id = 'agent'): Promise<any> {
  const res = await app.inject({
    method: 'POST',
    url: '/token',
    headers: { authorization: basic(id), 'content-type': 'application/x-www-form-urlencoded' },
    payload: new URLSearchParams({ grant_type: 'client_credentials', ...fields }).toString()
  })
  if (res.statusCode !== 200) throw new Error(`token request failed: ${res.statusCode} ${res.body}`)
  return res.json()
}
