// Issue 15, item 2: WebSocket upstreams never leak, messages are capped, and a slow side slows the
// other. Against a real upstream WebSocket server on a free port that counts its TCP connections.
import { createServer, type IncomingMessage } from 'node:http'
import { connect, type AddressInfo, type Socket } from 'node:net'
import t from 'tap'
import WebSocket, { WebSocketServer } from 'ws'
import { WS_HIGH_WATER } from '../src/proxy/websocket.js'
import { loadConfig } from '../src/config.js'
import { ToolRegistry } from '../src/tools/index.js'
import { SECRET, client, issue, type TestContext } from './helper.js'
import { startApp } from './call-helper.js'

interface CountingUpstream {
  origin: string
  /** TCP connections open at the tool now, and ever accepted. */
  open: () => number
  total: () => number
  /** Milliseconds the tool waits before answering a handshake. */
  delayMs: number
  onConnection: (ws: WebSocket, req: IncomingMessage) => void
}

async function startCountingUpstream (t: TestContext): Promise<CountingUpstream> {
  const server = createServer((_req, res) => { res.writeHead(404).end() })
  const wss = new WebSocketServer({ noServer: true, maxPayload: 256 * 1024 * 1024 })
  let open = 0
  let total = 0
  const pending = new Set<NodeJS.Timeout>()
  const up: CountingUpstream = {
    origin: '',
    open: () => open,
    total: () => total,
    delayMs: 0,
    onConnection: ws => { ws.on('message', (data, isBinary) => { ws.send(data, { binary: isBinary }) }) }
  }
  server.on('connection', (socket: Socket) => {
    open++
    total++
    socket.once('close', () => { open-- })
  })
  server.on('upgrade', (req, socket, head) => {
    socket.on('error', () => {})
    // Like any server, close a connection whose peer left while its handshake was pending (an
    // upgraded socket is half-open by default).
    const left = (): void => { socket.destroy() }
    socket.once('end', left)
    const timer = setTimeout(() => {
      pending.delete(timer)
      socket.off('end', left)
      if (socket.destroyed) return
      wss.handleUpgrade(req, socket, head, ws => { up.onConnection(ws, req) })
    }, up.delayMs)
    pending.add(timer)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  up.origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  t.teardown(async () => {
    // A handshake the tool is still delaying must not keep the test process alive.
    for (const timer of pending) clearTimeout(timer)
    for (const ws of wss.clients) ws.terminate()
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
  })
  return up
}

async function setup (t: TestContext, maxPayload?: number): Promise<{ up: CountingUpstream, port: number, token: string }> {
  const up = await startCountingUpstream(t)
  const { app, port } = await startApp(t, undefined, [
    { name: 'chat', origin: up.origin, path: '/stream', websocket: true, timeout: 5, ...(maxPayload === undefined ? {} : { maxPayload }) }
  ], { clients: [client('agent', { quota: { limit: 1000, window: '1h' } })] })
  t.teardown(() => { app.server.closeAllConnections() })
  return { up, port, token: (await issue(app)).access_token as string }
}

/** Polls (no fixed sleep) until `ok()` or the deadline; returns the last value of `ok()`. */
async function until (ok: () => boolean, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms
  while (!ok() && Date.now() < end) await new Promise(resolve => setTimeout(resolve, 20))
  return ok()
}

/** The promise's value, or a rejection after `ms` (a regression fails instead of hanging). */
async function within<T> (promise: Promise<T>, ms = 10_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => { reject(new Error(`nothing within ${ms} ms`)) }, ms) })
  try {
    return await Promise.race([promise, late])
  } finally {
    clearTimeout(timer)
  }
}

const VALID_KEY = 'dGhlIHNhbXBsZSBub25jZQ=='

/** Sends a raw handshake and returns the status line's code (0 if the socket closed without one). */
async function handshake (port: number, method: string, headers: Record<string, string>): Promise<number> {
  return await new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    let data = ''
    socket.setEncoding('latin1')
    socket.on('data', (c: string) => { data += c })
    socket.on('error', reject)
    socket.on('close', () => { resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(data)?.[1] ?? 0)) })
    const lines = [`${method} /call/chat/room HTTP/1.1`, 'host: 127.0.0.1', ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`), '', '']
    socket.write(lines.join('\r\n'))
  })
}

t.test('aborted handshakes leave no upstream connection open', async t => {
  const { up, port, token } = await setup(t)
  const base = { authorization: `Bearer ${token}`, connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': VALID_KEY }
  const N = 5
  const kinds: Array<[string, string, Record<string, string>, number]> = [
    ['a bad Sec-WebSocket-Key', 'GET', { ...base, 'sec-websocket-key': 'not-a-nonce' }, 400],
    ['a POST with Upgrade: websocket', 'POST', { ...base, 'content-length': '0' }, 405],
    ['a malformed subprotocol list', 'GET', { ...base, 'sec-websocket-protocol': 'chat.v1,,chat.v2' }, 400],
    ['a subprotocol offered twice', 'GET', { ...base, 'sec-websocket-protocol': 'chat.v1, chat.v1' }, 400],
    ['a missing Sec-WebSocket-Version', 'GET', { ...base, 'sec-websocket-version': '' }, 400]
  ]
  for (const [name, method, headers, status] of kinds) {
    for (let i = 0; i < N; i++) t.equal(await handshake(port, method, headers), status, name)
  }
  t.equal(up.total(), 0, 'an invalid handshake never dials the tool')

  // A caller that hangs up while the tool is still answering its handshake.
  up.delayMs = 300
  for (let i = 0; i < N; i++) {
    const dialled = up.total()
    const socket = connect(port, '127.0.0.1')
    socket.on('error', () => {})
    const lines = ['GET /call/chat/room HTTP/1.1', 'host: 127.0.0.1', ...Object.entries(base).map(([k, v]) => `${k}: ${v}`), '', '']
    socket.write(lines.join('\r\n'))
    t.ok(await until(() => up.total() > dialled), 'the tool is being dialled')
    socket.destroy()
  }
  t.ok(await until(() => up.open() === 0, 2000), `no upstream connection left open (${up.open()} open)`)
  t.equal(up.open(), 0)
  const quota = await fetch(`http://127.0.0.1:${port}/quota`, { headers: { authorization: `Bearer ${token}` } })
  const body = await quota.json() as { used: number }
  t.equal(body.used, 0, `no aborted handshake kept its quota charge (${JSON.stringify(body)})`)

  // The gateway still works afterwards.
  up.delayMs = 0
  const ws = new WebSocket(`ws://127.0.0.1:${port}/call/chat/room`, { headers: { authorization: `Bearer ${token}` } })
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  const echo = new Promise(resolve => ws.once('message', d => resolve(String(d))))
  ws.send('still here')
  t.equal(await echo, 'still here')
  ws.close()
  t.ok(await until(() => up.open() === 0), 'a closed connection closes its upstream')
})

t.test('a tool that does not finish its handshake within its timeout: 504, and its connection is closed', async t => {
  const up = await startCountingUpstream(t)
  const { app, port } = await startApp(t, undefined, [{ name: 'chat', origin: up.origin, path: '/stream', websocket: true, timeout: 0.3 }],
    { clients: [client('agent', { quota: { limit: 1000, window: '1h' } })] })
  t.teardown(() => { app.server.closeAllConnections() })
  const token = (await issue(app)).access_token as string
  up.delayMs = 60_000
  const status = await handshake(port, 'GET', { authorization: `Bearer ${token}`, connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': VALID_KEY })
  t.equal(status, 504)
  t.equal(up.total(), 1, 'the tool was dialled')
  t.ok(await until(() => up.open() === 0), 'and its connection closed at the timeout')
})

t.test('tools[].maxPayload: bytes, 1 MiB by default, checked at startup', async t => {
  const config = (tool: Record<string, unknown>) => loadConfig({ raw: { issuer: 'https://tollgate.test', tools: [{ name: 'chat', url: 'http://127.0.0.1:9/x', audience: 'tool:chat', ...tool }] }, env: { TOLLGATE_SECRET: SECRET } })
  t.equal([...new ToolRegistry(config({}).tools)][0]?.maxPayload, 1_048_576)
  t.equal([...new ToolRegistry(config({ maxPayload: 4096 }).tools)][0]?.maxPayload, 4096)
  t.throws(() => config({ maxPayload: 0 }), /config: tools\.0\.maxPayload/)
  t.throws(() => config({ maxPayload: '1MiB' }), /config: tools\.0\.maxPayload/)
})

t.test('a message over tools[].maxPayload closes with 1009, either way', async t => {
  const max = 64 * 1024
  const { up, port, token } = await setup(t, max)
  const ws = new WebSocket(`ws://127.0.0.1:${port}/call/chat/room`, { headers: { authorization: `Bearer ${token}` }, maxPayload: 8 * max })
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  ws.on('error', () => {})
  const echo = new Promise<Buffer>(resolve => ws.once('message', d => resolve(d as Buffer)))
  ws.send(Buffer.alloc(max, 1))
  t.equal((await within(echo)).length, max, 'a message of exactly maxPayload passes')
  const closed = new Promise<number>(resolve => ws.once('close', code => resolve(code)))
  ws.send(Buffer.alloc(max + 1, 2))
  t.equal(await within(closed).catch(() => 'open'), 1009, 'one byte more: 1009 (message too big)')
  t.ok(await until(() => up.open() === 0), 'and the tool\'s connection is closed')

  // From the tool: the gateway reads no more than maxPayload from it either.
  up.onConnection = socket => { socket.on('message', () => { socket.send(Buffer.alloc(max + 1, 3)) }) }
  const ws2 = new WebSocket(`ws://127.0.0.1:${port}/call/chat/room`, { headers: { authorization: `Bearer ${token}` }, maxPayload: 8 * max })
  await new Promise((resolve, reject) => { ws2.once('open', resolve); ws2.once('error', reject) })
  let got = 0
  ws2.on('message', () => { got++ })
  const closed2 = new Promise<number>(resolve => ws2.once('close', code => resolve(code)))
  ws2.send('send me too much')
  const code = await within(closed2).catch(() => 'open')
  t.equal(got, 0, 'the oversized message never reaches the caller')
  t.equal(code, 1014, 'the caller is told the tool connection failed (1014, bad gateway)')
})

/**
 * Sends TOTAL bytes in CHUNK-byte messages, the next one only when the last was handed to the
 * kernel: `flushed` is what the network took. (A socket's bufferedAmount would not do: Node writes
 * everything queued in one writev and counts it down only when all of it is written.)
 */
function pump (ws: WebSocket, total: number, chunkSize: number): { flushed: () => number } {
  let flushed = 0
  const chunk = Buffer.alloc(chunkSize, 7)
  const next = (): void => {
    if (flushed >= total || ws.readyState !== WebSocket.OPEN) return
    ws.send(chunk, err => { if (err === undefined || err === null) { flushed += chunkSize; next() } })
  }
  next()
  return { flushed: () => flushed }
}

/** Resolves once `value()` has not changed for `quietMs` (or after `ms`). */
async function settled (value: () => number, quietMs = 500, ms = 20_000): Promise<number> {
  let last = -1
  let since = Date.now()
  await until(() => {
    const now = value()
    if (now !== last) { last = now; since = Date.now() }
    return Date.now() - since >= quietMs
  }, ms)
  return value()
}

const CHUNK = 64 * 1024
const TOTAL = 40 * 1024 * 1024
// What the sender could hand over while the other end reads nothing: kernel socket buffers on
// the way (two per hop; loopback autotuning took about 10 MiB in all here) plus what the gateway holds, which is
// about WS_HIGH_WATER + one socket read + one message. Without backpressure it is all of TOTAL.
const BOUND = 20 * 1024 * 1024
const mib = (n: number): string => (n / 2 ** 20).toFixed(1)

t.test('backpressure: a caller that does not read pauses the tool (bounded buffering in the gateway)', async t => {
  const { up, port, token } = await setup(t)
  let tool: { flushed: () => number } | undefined
  up.onConnection = socket => { socket.once('message', () => { tool = pump(socket, TOTAL, CHUNK) }) }
  const ws = new WebSocket(`ws://127.0.0.1:${port}/call/chat/room`, { headers: { authorization: `Bearer ${token}` } })
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  let received = 0
  ws.on('message', d => { received += (d as Buffer).length })
  ws.pause() // the caller stops reading
  ws.send('go')
  t.ok(await until(() => tool !== undefined && tool.flushed() > 0), 'the tool is sending')

  const left = await settled(() => (tool as { flushed: () => number }).flushed())
  t.ok(left < BOUND, `the gateway stopped reading from the tool: ${mib(left)} MiB left the tool of ${mib(TOTAL)} MiB (bound ${mib(BOUND)}, high water ${mib(WS_HIGH_WATER)})`)
  t.equal(received, 0, 'the caller has read nothing')

  ws.resume() // the caller reads again: the tool is resumed, everything arrives
  t.ok(await until(() => received === TOTAL, 60_000), `the caller got every byte once it read (${received})`)
  ws.close()
})

t.test('backpressure: a tool that does not read pauses the caller', async t => {
  const { up, port, token } = await setup(t)
  let tool: WebSocket | undefined
  let received = 0
  up.onConnection = socket => {
    tool = socket
    socket.pause() // the tool stops reading
    socket.on('message', d => { received += (d as Buffer).length })
  }
  const ws = new WebSocket(`ws://127.0.0.1:${port}/call/chat/room`, { headers: { authorization: `Bearer ${token}` } })
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  t.ok(await until(() => tool !== undefined), 'the tool is connected')
  const caller = pump(ws, TOTAL, CHUNK)
  const left = await settled(caller.flushed)
  t.ok(left < BOUND, `the gateway stopped reading from the caller: ${mib(left)} MiB left the caller of ${mib(TOTAL)} MiB`)
  ;(tool as WebSocket).resume()
  t.ok(await until(() => received === TOTAL, 60_000), `the tool got every byte once it read (${received})`)
  ws.close()
})
