// Replicas as one: a harness that runs N real gateway processes (support/process.ts startGateway)
// on free ports, sharing one Redis key prefix and one TOLLGATE_SECRET, from one YAML config written
// to a temp dir, and stops every process in teardown before it deletes the prefix. Helpers issue
// tokens and run the `tollgate` CLI against the same config, so tests of quota, refresh and
// revocation across replicas stay short.
import { spawn, type ChildProcess } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Agent, Headers, fetch, type RequestInit, type Response } from 'undici'
import { stringify } from 'yaml'
import { CLIENT_SECRET, CLIENT_SECRET_HASH, SECRET, basic, client, tempDir, type TestContext } from '../helper.js'
import { CLI, PRELOAD, ROOT, ensureBuilt, startGateway, type Gateway } from './process.js'
import { deletePrefix, testRedisUrl, uniquePrefix } from './redis.js'
import type { Skippable } from './skip.js'

// Idle sockets are dropped well before the replicas' keep-alive timeout (5 s), so a request never
// lands on a connection the server is closing.
const dispatcher = new Agent({ keepAliveTimeout: 1000, keepAliveMaxTimeout: 1000 })

// Re-exported for files that still import them from here.
export { ROOT, ensureBuilt }

/** A replica is a gateway (support/process.ts) with its index; `process` is its child process. */
export interface Replica extends Gateway {
  index: number
  process: ChildProcess
}

export interface ClusterOptions {
  replicas?: number
  /** Merged over the default config, top-level key by key (clients, tools, rateLimits, tokens, ...). */
  config?: Record<string, unknown>
  /** Extra environment for every replica (e.g. tool secrets named by `valueEnv`). */
  env?: Record<string, string>
  /** Start replica 0 first and the others once it is ready (default), or all at once. */
  staggered?: boolean
  logLevel?: string
  /** A Redis of the test's own (e.g. one it stops and starts); default: the shared test Redis. */
  redisUrl?: string
}

export interface Cluster {
  replicas: Replica[]
  redisUrl: string
  keyPrefix: string
  configFile: string
  dir: string
  /** POST /token (client_credentials unless `fields.grant_type` says otherwise) at a replica; throws unless 200. */
  issue: (replica: Replica, fields?: Record<string, string>, clientId?: string) => Promise<Record<string, any>>
  /** Any request at a replica; `form` sends an OAuth form body with the client's Basic credentials. */
  request: (replica: Replica, path: string, init?: RequestInit & { form?: Record<string, string>, clientId?: string, bearer?: string }) => Promise<Response>
  /** Runs `tollgate <args> --config <file>` with the replicas' environment. */
  cli: (args: string[]) => Promise<{ status: number | null, stdout: string, stderr: string }>
  /** Starts one more replica on the same config. */
  add: () => Promise<Replica>
}

/** The default clients: `agent` (quota 20 per day, refresh), `other`, and `exchanger` (token exchange). */
export function defaultClusterConfig (): Record<string, unknown> {
  return {
    issuer: 'https://tollgate.test',
    clients: [
      client('agent', { quota: { limit: 20, window: '1d' }, claims: { role: 'user' }, refresh: true }),
      client('other', { audiences: ['tool:other'], refresh: true }),
      client('exchanger', { exchange: true })
    ],
    tools: []
  }
}

/**
 * Starts `replicas` gateway processes on one Redis (TOLLGATE_TEST_REDIS_URL, the default port or
 * a private redis-server). Undefined when no Redis can be had: testRedisUrl has reported that on
 * `t` (a skip here, a failure under CI), so the caller runs nothing more.
 */
export async function startCluster (t: Skippable, options: ClusterOptions = {}): Promise<Cluster | undefined> {
  const redisUrl = options.redisUrl ?? await testRedisUrl(t)
  if (redisUrl === undefined) return undefined
  const dir = tempDir(t, 'tollgate-cluster-')
  const keyPrefix = uniquePrefix('cluster')
  const config = {
    ...defaultClusterConfig(),
    logLevel: options.logLevel ?? 'info',
    ...options.config,
    store: { redis: redisUrl, keyPrefix, timeout: '2s' }
  }
  const configFile = join(dir, 'tollgate.yaml')
  writeFileSync(configFile, stringify(config), { mode: 0o600 })
  const baseEnv: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    TOLLGATE_SECRET: SECRET,
    ...options.env
  }
  const replicas: Replica[] = []
  t.teardown(async () => {
    await Promise.all(replicas.map(async r => { await r.stop() }))
    await deletePrefix(redisUrl, keyPrefix)
  })

  const add = async (): Promise<Replica> => {
    const index = replicas.length
    const gateway = await startGateway(t, {
      cwd: dir,
      env: { ...baseEnv, TOLLGATE_DATA_DIR: join(dir, `replica-${index}`) },
      args: ['--config', configFile],
      name: `replica ${index}`,
      readyLine: true
    })
    const replica: Replica = { ...gateway, index, process: gateway.child }
    replicas.push(replica)
    return replica
  }

  const count = options.replicas ?? 2
  if (options.staggered === false) {
    await Promise.all(Array.from({ length: count }, add))
  } else {
    await add()
    await Promise.all(Array.from({ length: count - 1 }, add))
  }

  const request: Cluster['request'] = async (replica, path, init = {}) => {
    const { form, clientId, bearer, ...rest } = init
    const headers = new Headers(rest.headers)
    if (form !== undefined) {
      headers.set('content-type', 'application/x-www-form-urlencoded')
      if (!headers.has('authorization')) headers.set('authorization', basic(clientId ?? 'agent', CLIENT_SECRET))
    }
    if (bearer !== undefined) headers.set('authorization', `Bearer ${bearer}`)
    try {
      return await fetch(`${replica.url}${path}`, {
        ...rest,
        dispatcher,
        method: rest.method ?? (form !== undefined ? 'POST' : 'GET'),
        headers,
        ...(form !== undefined ? { body: new URLSearchParams(form).toString() } : {})
      })
    } catch (err) {
      const cause = (err as Error & { cause?: Error }).cause
      const state = replica.process.exitCode !== null || replica.process.signalCode !== null
        ? `exited (${String(replica.process.exitCode ?? replica.process.signalCode)}); last log lines:\n${replica.logs.slice(-20).join('\n')}`
        : 'still running'
      throw new Error(`${path} at replica ${replica.index} failed: ${String(cause?.message ?? err)}; the replica is ${state}`, { cause: err })
    }
  }

  const issue: Cluster['issue'] = async (replica, fields = {}, clientId = 'agent') => {
    const res = await request(replica, '/token', { form: { grant_type: 'client_credentials', ...fields }, clientId })
    const body = await res.text()
    if (res.status !== 200) throw new Error(`token request at replica ${replica.index} failed: ${res.status} ${body}`)
    return JSON.parse(body)
  }

  // Asynchronous on purpose: a blocked event loop would let kept-alive sockets go stale unnoticed.
  const cli: Cluster['cli'] = async (args) => {
    const child = spawn(process.execPath, [...PRELOAD, CLI, ...args, '--config', configFile], {
      cwd: dir,
      env: { ...baseEnv, TOLLGATE_DATA_DIR: join(dir, 'cli') },
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 60_000
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
    const status = await new Promise<number | null>((resolve, reject) => {
      child.once('error', reject)
      child.once('close', code => { resolve(code) })
    })
    return { status, stdout, stderr }
  }

  return { replicas, redisUrl, keyPrefix, configFile, dir, issue, request, cli, add }
}

/** The JWS header of a compact token (to read its kid). */
export function jwsHeader (token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split('.')[0] ?? '', 'base64url').toString('utf8'))
}

export { CLIENT_SECRET, CLIENT_SECRET_HASH, SECRET }
