// WebSockets on /call/<tool> (CONTRACT §9): the rate limit and the quota refuse BEFORE the upgrade
// (the caller gets the HTTP error, the tool sees no TCP connection at all), and POST /revoke closes
// a live connection with 1008 within 5 s. One app on a real port, on an injected clock (the limit
// and quota windows cannot roll over mid-test), and one real upstream WebSocket server that counts
// every TCP connection it accepts. Each case uses its own client, so its own subject. The last
// case runs two replicas on one Redis: the revocation is made at one, the connection lives at the other.
import { createServer } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import t from 'tap'
import WebSocket, { WebSocketServer } from 'ws'
import { FORM, ManualClock, basic, client, form, issue } from './helper.js'
import { startApp } from './call-helper.js'
import { deletePrefix, testRedisUrl, uniquePrefix } from './support/redis.js'

// The tool: echoes messages; counts TCP connections (a refused upgrade must not open one).
const server = createServer((_req, res) => { res.writeHead(404).end() })
const wss = new WebSocketServer({ noServer: true })
let tcpConnections = 0
let handshakes = 0
server.on('connection', (_socket: Socket) => { tcpConnections++ })
server.on('upgrade', (req, socket, head) => {
  handshakes++
  wss.handleUpgrade(req, socket, head, ws => { ws.on('message', data => { ws.send(`echo: ${String(data)}`) }) })
})
await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
t.teardown(async () => {
  for (const ws of wss.clients) ws.terminate()
  server.closeAllConnections()
  await new Promise(resolve => server.close(resolve))
})
const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`

const clock = new ManualClock()
const { app, port } = await startApp(t, undefined, [{ name: 'chat', origin, path: '/stream', websocket: true }], {
  clients: [
    client('metered', { quota: { limit: 1, window: '1h' } }),
    client('limited'),
    client('watched')
  ],
  rateLimits: { perSubject: { max: 2, window: '1h' }, token: { max: 100_000, window: '1m' } }
}, {}, clock.fn)
t.teardown(() => { app.server.closeAllConnections() })
const url = `ws://127.0.0.1:${port}/call/chat/room`

async function opened (ws: WebSocket): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('error', reject)
    ws.once('unexpected-response', (_req, res) => { reject(new Error(`refused with ${res.statusCode ?? 0}`)) })
  })
}

async function echo (ws: WebSocket, text: string): Promise<string> {
  const reply = new Promise<string>(resolve => ws.once('message', data => { resolve(String(data)) }))
  ws.send(text)
  return await reply
}

/** The HTTP answer to a refused handshake (rejects if the upgrade was accepted). */
async function refused (ws: WebSocket): Promise<{ status: number, headers: Record<string, unknown>, body: any }> {
  return await new Promise((resolve, reject) => {
    ws.on('unexpected-response', (_req, res) => {
      let body = ''
      res.on('data', (c: Buffer) => { body += String(c) })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, headers: res.headers, body: JSON.parse(body) }) })
    })
    ws.on('open', () => { ws.terminate(); reject(new Error('the upgrade was accepted')) })
    ws.on('error', () => {})
  })
}

const connect = (token: string, to = url): WebSocket => new WebSocket(to, { headers: { authorization: `Bearer ${token}` } })

/** The close of `ws` if it comes within `ms`, else undefined (a regression fails instead of hanging). */
async function closedWithin (ws: WebSocket, ms: number): Promise<{ code: number, reason: string, at: number } | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const closed = new Promise<{ code: number, reason: string, at: number }>(resolve => {
    ws.once('close', (code, reason) => { resolve({ code, reason: String(reason), at: performance.now() }) })
  })
  const deadline = new Promise<undefined>(resolve => { timer = setTimeout(() => { resolve(undefined) }, ms) })
  try {
    return await Promise.race([closed, deadline])
  } finally {
    clearTimeout(timer)
  }
}

t.test('a spent quota refuses the upgrade with 429 quota_exceeded; the tool sees no connection', async t => {
  const token = (await issue(app, {}, 'metered')).access_token as string
  const tcpBefore = tcpConnections
  const first = connect(token)
  await opened(first)
  t.equal(await echo(first, 'hi'), 'echo: hi', 'positive control: the one connection the quota allows reaches the tool')
  t.equal(tcpConnections, tcpBefore + 1, 'positive control: the tool counted its TCP connection')
  first.terminate()

  const handshakesBefore = handshakes
  const tcpAfterFirst = tcpConnections
  const res = await refused(connect(token))
  t.equal(res.status, 429)
  t.equal(res.body.code, 'quota_exceeded')
  t.ok(Number(res.headers['retry-after']) > 0, 'with Retry-After')
  t.match(res.headers.ratelimit, /^"quota";r=0;t=\d+$/)
  t.equal(handshakes, handshakesBefore, 'no handshake reached the tool')
  t.equal(tcpConnections, tcpAfterFirst, 'no TCP connection was opened to the tool')
})

t.test('a rate-limited subject is refused the upgrade with 429 rate_limited; the tool sees no connection', async t => {
  const token = (await issue(app, {}, 'limited')).access_token as string
  for (let i = 1; i <= 2; i++) {
    const ws = connect(token)
    await opened(ws)
    t.equal(await echo(ws, `n${i}`), `echo: n${i}`, `positive control: connection ${i} of the 2 the limit allows is relayed`)
    ws.terminate()
  }
  const handshakesBefore = handshakes
  const tcpBefore = tcpConnections
  const res = await refused(connect(token))
  t.equal(res.status, 429)
  t.equal(res.body.code, 'rate_limited')
  t.ok(Number(res.headers['retry-after']) > 0, 'with Retry-After')
  t.equal(handshakes, handshakesBefore, 'no handshake reached the tool')
  t.equal(tcpConnections, tcpBefore, 'no TCP connection was opened to the tool')
})

t.test('POST /revoke closes a live WebSocket with 1008 within 5 s; another token\'s connection stays open', async t => {
  const revoked = (await issue(app, {}, 'watched')).access_token as string
  const kept = (await issue(app, {}, 'watched')).access_token as string
  const doomed = connect(revoked)
  const other = connect(kept)
  await Promise.all([opened(doomed), opened(other)])
  t.equal(await echo(doomed, 'before'), 'echo: before')

  const res = await app.inject({ method: 'POST', url: '/revoke', headers: { authorization: basic('watched'), ...FORM }, payload: form({ token: revoked }) })
  t.equal(res.statusCode, 200)
  const revokedAt = performance.now()
  const result = await closedWithin(doomed, 5000)
  if (result === undefined) {
    t.fail('the connection was still open 5 s after POST /revoke answered')
    doomed.terminate()
  } else {
    t.equal(result.code, 1008)
    t.equal(result.reason, 'token revoked')
    t.ok(result.at - revokedAt < 5000, `closed ${Math.round(result.at - revokedAt)} ms after the revocation`)
  }
  t.equal(other.readyState, WebSocket.OPEN, 'positive control: the connection of a token that was not revoked stays open')
  t.equal(await echo(other, 'after'), 'echo: after', 'and keeps relaying')
  other.terminate()
})

// Replicas on one Redis: the connection lives at replica B, the revocation is made at replica A.
const redisUrl = await testRedisUrl(t)
t.test('POST /revoke at one replica closes a WebSocket held by another within 5 s', { skip: redisUrl === undefined ? 'no Redis' : false }, async t => {
  const keyPrefix = uniquePrefix('ws-revoke')
  t.teardown(async () => { await deletePrefix(redisUrl as string, keyPrefix) })
  const replica = async (): Promise<Awaited<ReturnType<typeof startApp>>> => {
    const started = await startApp(t, undefined, [{ name: 'chat', origin, path: '/stream', websocket: true }], {
      clients: [client('watched')],
      store: { redis: redisUrl, keyPrefix, timeout: '2s' }
    })
    t.teardown(() => { started.app.server.closeAllConnections() })
    return started
  }
  const a = await replica()
  const b = await replica()
  const revoked = (await issue(a.app, {}, 'watched')).access_token as string
  const kept = (await issue(a.app, {}, 'watched')).access_token as string
  const atB = `ws://127.0.0.1:${b.port}/call/chat/room`
  const doomed = connect(revoked, atB)
  const other = connect(kept, atB)
  await Promise.all([opened(doomed), opened(other)])
  t.equal(await echo(doomed, 'before'), 'echo: before')

  const res = await a.app.inject({ method: 'POST', url: '/revoke', headers: { authorization: basic('watched'), ...FORM }, payload: form({ token: revoked }) })
  t.equal(res.statusCode, 200)
  const revokedAt = performance.now()
  const result = await closedWithin(doomed, 5000)
  if (result === undefined) {
    t.fail('the connection at replica B was still open 5 s after POST /revoke answered at replica A')
    doomed.terminate()
  } else {
    t.equal(result.code, 1008)
    t.equal(result.reason, 'token revoked')
    t.ok(result.at - revokedAt < 5000, `closed ${Math.round(result.at - revokedAt)} ms after the revocation`)
  }
  t.equal(other.readyState, WebSocket.OPEN, 'positive control: the other token\'s connection at replica B stays open')
  t.equal(await echo(other, 'after'), 'echo: after')
  other.terminate()
})
