// Real Redis for tests: the one at TOLLGATE_TEST_REDIS_URL (else redis://127.0.0.1:6379) when it
// answers, else a redis-server started here on a free port and stopped in teardown. A Redis (or a
// redis-server binary) that cannot be had is a skip here and a failure under CI (support/skip.ts). Servers started here are waited
// for by their "Ready to accept connections" line (a handshake, not a sleep).
import { spawn, type ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { createServer, connect } from 'node:net'
import { Redis } from 'ioredis'
import { tempDir, type TestContext } from '../helper.js'
import { skipOrFail, type Skippable } from './skip.js'

/**
 * A port for a server that another process will open (a gateway, a redis-server), chosen below
 * Linux's ephemeral range (32768–60999): between this check and that process's listen, no
 * outgoing connection and no `listen(0)` server of a parallel test can take it, as happened with
 * ports from the ephemeral range (a restarted gateway found its port held by another test).
 */
export async function freePort (): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000)
    const free = await new Promise<boolean>(resolve => {
      const server = createServer()
      server.once('error', () => { resolve(false) })
      server.listen(port, '127.0.0.1', () => { server.close(() => { resolve(true) }) })
    })
    if (free) return port
    if (attempt > 100) throw new Error('no free port between 20000 and 32000')
  }
}

/** Sends PING over a raw socket; true when a Redis answers +PONG (or asks for auth). */
export async function redisAnswers (url: string, timeoutMs = 1000): Promise<boolean> {
  let host = '127.0.0.1'
  let port = 6379
  try {
    const u = new URL(url)
    host = u.hostname.replace(/^\[|\]$/g, '') || host
    port = u.port === '' ? 6379 : Number(u.port)
  } catch {
    return false
  }
  return await new Promise(resolve => {
    const socket = connect({ host, port })
    const done = (ok: boolean): void => { socket.destroy(); resolve(ok) }
    socket.setTimeout(timeoutMs, () => { done(false) })
    socket.once('error', () => { done(false) })
    socket.once('connect', () => { socket.write('PING\r\n') })
    socket.once('data', (data) => { done(/^(\+PONG|-NOAUTH)/.test(data.toString())) })
  })
}

export interface RedisServer {
  port: number
  url: string
  /** Stops the server (SHUTDOWN NOSAVE over the wire, then waits for the process to exit). */
  stop: () => Promise<void>
  /** Starts it again on the same port with the same options. */
  start: () => Promise<void>
  /** The running server's process id (to SIGSTOP it, say). */
  pid: () => number
}

export interface RedisServerOptions {
  /** A directory for an append-only file: data then survives stop/start. */
  aofDir?: string
  requirePass?: string
  port?: number
  /** A Redis Cluster node: its cluster bus port and the folder for its nodes.conf (startRedisCluster). */
  cluster?: { busPort: number, dir: string }
}

/** Starts a private redis-server on a free port; stopped in teardown. */
export async function startRedisServer (t: TestContext, options: RedisServerOptions = {}): Promise<RedisServer> {
  const port = options.port ?? await freePort()
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--daemonize', 'no', '--loglevel', 'notice']
  if (options.aofDir !== undefined) args.push('--appendonly', 'yes', '--appendfsync', 'always', '--dir', options.aofDir)
  else args.push('--appendonly', 'no')
  if (options.requirePass !== undefined) args.push('--requirepass', options.requirePass)
  if (options.cluster !== undefined) {
    // The bus port is set (not port + 10000, which may be taken or above 65535).
    args.push('--cluster-enabled', 'yes', '--cluster-port', String(options.cluster.busPort),
      '--cluster-config-file', join(options.cluster.dir, `nodes-${port}.conf`), '--cluster-node-timeout', '5000')
  }
  let child: ChildProcess | undefined

  const start = async (): Promise<void> => {
    const proc = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] })
    child = proc
    await new Promise<void>((resolve, reject) => {
      let out = ''
      const onData = (chunk: Buffer): void => {
        out += chunk.toString()
        if (out.includes('Ready to accept connections')) {
          proc.stdout?.off('data', onData)
          proc.stdout?.resume()
          resolve()
        }
      }
      proc.stdout?.on('data', onData)
      proc.stderr?.resume()
      proc.once('error', reject)
      proc.once('exit', (code) => { reject(new Error(`redis-server exited with ${String(code)}: ${out.slice(-500)}`)) })
    })
  }

  const stop = async (): Promise<void> => {
    const proc = child
    child = undefined
    if (proc === undefined || proc.exitCode !== null) return
    const exited = new Promise<void>(resolve => proc.once('exit', () => { resolve() }))
    proc.kill('SIGTERM') // redis-server shuts down cleanly on SIGTERM (and writes its AOF)
    await exited
  }

  await start()
  t.teardown(stop)
  const pid = (): number => {
    if (child?.pid === undefined) throw new Error('redis-server is not running')
    return child.pid
  }
  return { port, url: `redis://${options.requirePass !== undefined ? `:${options.requirePass}@` : ''}127.0.0.1:${port}`, stop, start, pid }
}

export interface RedisCluster {
  nodes: RedisServer[]
  /** The store URL for it: redis+cluster://127.0.0.1:p1,127.0.0.1:p2,... */
  url: string
}

/** Distinct free ports (a port just freed can be handed out again by the next freePort). */
async function freePorts (count: number): Promise<number[]> {
  const ports = new Set<number>()
  while (ports.size < count) ports.add(await freePort())
  return [...ports]
}

/**
 * A Redis Cluster of `size` local redis-server nodes (masters, no replicas) on free ports, the 16384
 * slots split evenly between them; stopped in teardown. Built with CLUSTER ADDSLOTS, SET-CONFIG-EPOCH
 * and MEET (what `redis-cli --cluster create` sends), and returned once every node reports
 * cluster_state:ok and knows every other node, so the first command meets a settled slot map.
 */
export async function startRedisCluster (t: TestContext, size = 3): Promise<RedisCluster> {
  const dir = tempDir(t, 'tollgate-redis-cluster-')
  const ports = await freePorts(size * 2)
  const nodes = await Promise.all(Array.from({ length: size }, async (_, i) =>
    await startRedisServer(t, { port: ports[2 * i], cluster: { busPort: ports[2 * i + 1] as number, dir } })))
  const clients = nodes.map(node => new Redis(node.url, { lazyConnect: true, maxRetriesPerRequest: 1 }))
  try {
    await Promise.all(clients.map(async (c, i) => {
      await c.connect()
      const from = Math.floor(16384 * i / size)
      const to = Math.floor(16384 * (i + 1) / size)
      await c.call('CLUSTER', 'ADDSLOTS', ...Array.from({ length: to - from }, (_, k) => String(from + k)))
      await c.call('CLUSTER', 'SET-CONFIG-EPOCH', String(i + 1))
    }))
    const [first] = clients
    for (let i = 1; i < size; i++) await first?.call('CLUSTER', 'MEET', '127.0.0.1', String(ports[2 * i]), String(ports[2 * i + 1]))
    // Gossip has no event to await from here: poll each node's own view, bounded.
    const deadline = Date.now() + 30_000
    for (;;) {
      const infos = await Promise.all(clients.map(async c => String(await c.call('CLUSTER', 'INFO'))))
      if (infos.every(info => info.includes('cluster_state:ok') && info.includes(`cluster_known_nodes:${size}`))) break
      if (Date.now() > deadline) throw new Error(`the Redis Cluster did not settle within 30 s:\n${infos.join('\n')}`)
      await new Promise(resolve => setTimeout(resolve, 50))
    }
  } finally {
    for (const c of clients) c.disconnect()
  }
  return { nodes, url: `redis+cluster://${nodes.map(n => `127.0.0.1:${n.port}`).join(',')}` }
}

export function hasRedisServerBinary (): boolean {
  return (process.env.PATH ?? '').split(':').some(dir => dir !== '' && existsSync(`${dir}/redis-server`))
}

/** Why a test that starts its own redis-server cannot run here, or undefined when it can (for requires()). */
export function redisServerMissing (): string | undefined {
  return hasRedisServerBinary() ? undefined : 'redis-server is not installed (run scripts/ensure-redis.sh, or apt-get install redis-server)'
}

/**
 * The Redis URL for store tests: TOLLGATE_TEST_REDIS_URL or the default port when it answers,
 * else a private server. Undefined when there is no Redis at all: then this has already reported it
 * on `t` (a skip, or a failure under CI), and the caller just does not run what needed Redis.
 */
export async function testRedisUrl (t: Skippable): Promise<string | undefined> {
  const configured = process.env.TOLLGATE_TEST_REDIS_URL
  const url = configured !== undefined && configured !== '' ? configured : 'redis://127.0.0.1:6379'
  if (await redisAnswers(url)) return url
  if (hasRedisServerBinary()) return (await startRedisServer(t)).url
  skipOrFail(t, `no Redis answers at ${url} and redis-server is not installed (run scripts/ensure-redis.sh)`)
  return undefined
}

/** A key prefix no other test run uses, so parallel test files never collide. */
export function uniquePrefix (name = 'test'): string {
  return `tgtest:${name}:${randomUUID()}:`
}

/** Deletes every key under a prefix (teardown hygiene on a shared Redis). */
export async function deletePrefix (url: string, prefix: string): Promise<void> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, enableOfflineQueue: false, retryStrategy: () => null })
  redis.on('error', () => {})
  try {
    await redis.connect()
    let cursor = '0'
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
      cursor = next
      if (keys.length > 0) await redis.del(...keys)
    } while (cursor !== '0')
  } catch {
    // the server is gone already: nothing to clean
  } finally {
    redis.disconnect()
  }
}
