// Test fixtures for /call: an app listening on a free port with tools pointing at an upstream
// (support/upstream.ts), and a raw-socket client for paths no HTTP client would send as written.
import { connect, type AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { build, testConfig, type TestContext } from './helper.js'
import type { Upstream } from './support/upstream.js'

// The upstream lives in support/upstream.ts; re-exported for files that still import it from here.
export { startUpstream, type Seen, type Upstream } from './support/upstream.js'

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

/** Sends exactly these bytes as the request line's target and returns the status code, the raw head (status line and header lines, nothing normalised) and the body. */
export async function rawRequest (port: number, method: string, target: string, headers: Record<string, string> = {}): Promise<{ status: number, head: string, body: string }> {
  return await new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    const lines = [`${method} ${target} HTTP/1.1`, 'host: 127.0.0.1', 'connection: close', ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`), '', '']
    let data = ''
    socket.setEncoding('latin1')
    socket.on('data', (c: string) => { data += c })
    socket.on('error', reject)
    socket.on('close', () => {
      const m = /^HTTP\/1\.1 (\d{3})/.exec(data)
      const end = data.indexOf('\r\n\r\n')
      resolve({ status: m === null ? 0 : Number(m[1]), head: end < 0 ? data : data.slice(0, end), body: end < 0 ? '' : data.slice(end + 4) })
    })
    socket.write(lines.join('\r\n'))
  })
}
