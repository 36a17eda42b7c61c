// Test fixtures for /call: a real upstream HTTP server on a free port that records what it saw,
// an app listening on a free port with tools pointing at it, and a raw-socket client for paths no
// HTTP client would send as written.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { connect, type AddressInfo, type Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { build, testConfig, type TestContext } from './helper.js'

export interface Seen {
  method: string
  url: string
  headers: IncomingMessage['headers']
  body: Buffer
}

export interface Upstream {
  server: Server
  port: number
  origin: string
  seen: Seen[]
  /** Handlers by exact path (without query); the default answers 200 with what it saw. */
  routes: Map<string, (req: IncomingMessage, res: ServerResponse, body: Buffer) => void>
}

export async function startUpstream (t: TestContext): Promise<Upstream> {
  const sockets = new Set<Socket>()
  const routes: Upstream['routes'] = new Map()
  const seen: Seen[] = []
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks)
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body })
      const handler = routes.get((req.url ?? '').split('?')[0] ?? '')
      if (handler !== undefined) { handler(req, res, body); return }
      res.setHeader('content-type', 'application/json')
      res.setHeader('connection', 'x-upstream-private')
      res.setHeader('x-upstream-private', 'hop')
      res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body: body.toString('utf8') }))
    })
  })
  server.on('connection', s => { sockets.add(s); s.on('close', () => sockets.delete(s)) })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    await new Promise(resolve => server.close(resolve))
  })
  const port = (server.address() as AddressInfo).port
  return { server, port, origin: `http://127.0.0.1:${port}`, seen, routes }
}

export interface ToolSpec {
  name: string
  path?: string
  origin?: string
  [key: string]: unknown
}

/** An app on a free port with the given tools (defaults: audience tool:<name>, scope tools:call). */
export async function startApp (t: TestContext, upstream: Upstream | undefined, tools: ToolSpec[], overrides: Record<string, unknown> = {}, env: Record<string, string> = {}, clock?: () => number): Promise<{ app: FastifyInstance, base: string, port: number }> {
  const config = testConfig(t, {
    tools: tools.map(({ name, path, origin, ...rest }) => ({
      name,
      url: `${origin ?? upstream?.origin ?? 'http://127.0.0.1:9'}${path ?? `/${name}`}`,
      audience: `tool:${name}`,
      scopes: ['tools:call'],
      ...rest
    })),
    ...overrides
  }, env)
  const app = await build(t, config, clock !== undefined ? { clock } : {})
  await app.listen({ port: 0, host: '127.0.0.1' })
  const port = (app.server.address() as AddressInfo).port
  return { app, base: `http://127.0.0.1:${port}`, port }
}

/** Sends exactly these bytes as the request line's target and returns the status code and body. */
export async function rawRequest (port: number, method: string, target: string, headers: Record<string, string> = {}): Promise<{ status: number, body: string }> {
  return await new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    const lines = [`${method} ${target} HTTP/1.1`, 'host: 127.0.0.1', 'connection: close', ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`), '', '']
    let data = ''
    socket.setEncoding('latin1')
    socket.on('data', (c: string) => { data += c })
    socket.on('error', reject)
    socket.on('close', () => {
      const m = /^HTTP\/1\.1 (\d{3})/.exec(data)
      const body = data.slice(data.indexOf('\r\n\r\n') + 4)
      resolve({ status: m === null ? 0 : Number(m[1]), body })
    })
    socket.write(lines.join('\r\n'))
  })
}
