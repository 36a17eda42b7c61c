// The one test upstream: a real node:http server on a free port of 127.0.0.1 that records every
// request it saw (method, URL, headers, whole body) and answers with `handler`, a per-path route, or
// a JSON echo. Closed at teardown: closeAllConnections, then any socket left (an upgraded one), then
// close. It never speaks WebSocket or counts connections: tests that need that keep their own
// server (call-websocket*.test.ts), as does upstream-faults.test.ts, which writes raw TCP.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import type { TestContext } from '../helper.js'

export interface Seen {
  method: string
  url: string
  headers: IncomingMessage['headers']
  body: Buffer
}

export type Handler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void

export interface UpstreamOptions {
  /** Answers every request no route claims; default: the JSON echo below. */
  handler?: Handler
}

export interface Upstream {
  server: Server
  port: number
  /** http://127.0.0.1:<port> */
  origin: string
  /** Requests seen so far, in arrival order, recorded once each body has arrived. */
  seen: Seen[]
  /** Handlers by exact path (without query); checked before `handler`. */
  routes: Map<string, Handler>
}

/**
 * The default answer: 200 with a JSON echo of what arrived ({ method, url, headers, body }), plus a
 * hop-by-hop header named in Connection that a proxy must not pass on.
 */
function echo (req: IncomingMessage, res: ServerResponse, body: Buffer): void {
  res.setHeader('content-type', 'application/json')
  res.setHeader('connection', 'x-upstream-private')
  res.setHeader('x-upstream-private', 'hop')
  res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body: body.toString('utf8') }))
}

export async function startUpstream (t: TestContext, options: UpstreamOptions = {}): Promise<Upstream> {
  const sockets = new Set<Socket>()
  const routes: Upstream['routes'] = new Map()
  const seen: Seen[] = []
  const fallback = options.handler ?? echo
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks)
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body })
      const handler = routes.get((req.url ?? '').split('?')[0] ?? '') ?? fallback
      handler(req, res, body)
    })
  })
  server.on('connection', s => { sockets.add(s); s.on('close', () => sockets.delete(s)) })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    for (const s of sockets) s.destroy()
    await new Promise(resolve => server.close(resolve))
  })
  const port = (server.address() as AddressInfo).port
  return { server, port, origin: `http://127.0.0.1:${port}`, seen, routes }
}

/** A JSON answer for `handler`: `startUpstream(t, { handler: json({ ok: true }) })`. */
export function json (body: unknown, status = 200): Handler {
  return (_req, res) => {
    res.writeHead(status, { 'content-type': 'application/json' })
    res.end(JSON.stringify(body))
  }
}
