// WebSockets through /call/:tool/* (CONTRACT §9), against a real upstream WebSocket server.
import type { IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import { createRemoteJWKSet, jwtVerify } from 'jose'
import t from 'tap'
import WebSocket, { WebSocketServer } from 'ws'
import { ManualClock, client, issue, type TestContext } from './helper.js'
import { startApp } from './call-helper.js'

interface WsUpstream {
  origin: string
  handshakes: Array<{ url: string, headers: IncomingHttpHeaders }>
}

async function startWsUpstream (t: TestContext): Promise<WsUpstream> {
  const handshakes: WsUpstream['handshakes'] = []
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: protocols => protocols.has('chat.v1') ? 'chat.v1' : false })
  wss.on('connection', (socket, req) => {
    handshakes.push({ url: req.url ?? '', headers: req.headers })
    socket.send('hello from the tool')
    socket.on('message', (data, isBinary) => { socket.send(isBinary ? data : `echo: ${String(data)}`, { binary: isBinary }) })
  })
  await new Promise<void>(resolve => wss.once('listening', resolve))
  t.teardown(async () => {
    for (const c of wss.clients) c.terminate()
    await new Promise(resolve => wss.close(resolve))
  })
  return { origin: `http://127.0.0.1:${(wss.address() as AddressInfo).port}`, handshakes }
}

/** Resolves with the HTTP status of a refused handshake, or rejects if it was accepted. */
async function refusedWith (ws: WebSocket): Promise<{ status: number, body: string }> {
  return await new Promise((resolve, reject) => {
    ws.on('unexpected-response', (_req, res) => {
      let body = ''
      res.on('data', (c: Buffer) => { body += String(c) })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    ws.on('open', () => { ws.close(); reject(new Error('the upgrade was accepted')) })
    ws.on('error', () => {})
  })
}

async function opened (ws: WebSocket): Promise<string> {
  const first = new Promise<string>(resolve => ws.once('message', data => resolve(String(data))))
  await new Promise<void>((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); ws.once('unexpected-response', (_q, r) => reject(new Error(`refused ${r.statusCode ?? 0}`))) })
  return await first
}

async function closed (ws: WebSocket): Promise<{ code: number, reason: string }> {
  return await new Promise(resolve => ws.once('close', (code, reason) => resolve({ code, reason: String(reason) })))
}

async function setup (t: TestContext, clock?: ManualClock): Promise<{ app: Awaited<ReturnType<typeof startApp>>['app'], ws: string, base: string, up: WsUpstream }> {
  const up = await startWsUpstream(t)
  const { app, port, base } = await startApp(t, undefined, [
    { name: 'chat', origin: up.origin, path: '/stream', websocket: true },
    { name: 'search', origin: up.origin, path: '/plain' },
    { name: 'admin', origin: up.origin, path: '/admin', audience: 'tool:chat', scopes: ['tools:admin'], websocket: true }
  ], { clients: [client('agent', { quota: { limit: 10, window: '1h' } })] }, {}, clock?.fn)
  t.teardown(() => { app.server.closeAllConnections() })
  return { app, ws: `ws://127.0.0.1:${port}/call`, base, up }
}

t.test('refused before the upgrade without a valid token, scope or websocket tool', async t => {
  const { app, ws, up } = await setup(t)
  const none = await refusedWith(new WebSocket(`${ws}/chat/room`))
  t.equal(none.status, 401)
  t.equal(JSON.parse(none.body).code, 'invalid_token')
  const bad = await refusedWith(new WebSocket(`${ws}/chat/room`, ['bearer.abc.def.ghi']))
  t.equal(bad.status, 401)
  const tok = (await issue(app)).access_token as string
  const query = await refusedWith(new WebSocket(`${ws}/chat/room?access_token=${tok}`))
  t.equal(query.status, 401, 'never from the query string')
  const scope = await refusedWith(new WebSocket(`${ws}/admin/x`, { headers: { authorization: `Bearer ${tok}` } }))
  t.equal(scope.status, 403)
  t.equal(JSON.parse(scope.body).code, 'insufficient_scope')
  const plain = await refusedWith(new WebSocket(`${ws}/search/x`, { headers: { authorization: `Bearer ${tok}` } }))
  t.equal(plain.status, 400, 'a tool without websocket: true takes no upgrades')
  const unknown = await refusedWith(new WebSocket(`${ws}/nope/x`, { headers: { authorization: `Bearer ${tok}` } }))
  t.equal(unknown.status, 404)
  t.equal(up.handshakes.length, 0, 'the tool saw no handshake')
})

t.test('messages flow both ways; the tool sees the downstream token; one quota charge', async t => {
  const { app, ws, base, up } = await setup(t)
  const tok = (await issue(app)).access_token as string
  const sock = new WebSocket(`${ws}/chat/room?x=1`, ['chat.v1'], { headers: { authorization: `Bearer ${tok}`, cookie: 'c=1' } })
  t.equal(await opened(sock), 'hello from the tool')
  t.equal(sock.protocol, 'chat.v1', 'the tool\'s subprotocol choice reaches the caller')
  for (const text of ['one', 'two']) {
    const reply = new Promise<string>(resolve => sock.once('message', d => resolve(String(d))))
    sock.send(text)
    t.equal(await reply, `echo: ${text}`)
  }
  const bin = new Promise<Buffer>(resolve => sock.once('message', d => resolve(d as Buffer)))
  sock.send(Buffer.from([0, 1, 2]))
  t.same([...await bin], [0, 1, 2], 'binary frames stay binary')

  const hs = up.handshakes[0]!
  t.equal(hs.url, '/stream/room?x=1')
  t.equal(hs.headers.cookie, undefined)
  t.equal(hs.headers['sec-websocket-protocol'], 'chat.v1')
  const downstream = String(hs.headers.authorization).replace(/^Bearer /, '')
  t.not(downstream, tok)
  const { payload } = await jwtVerify(downstream, createRemoteJWKSet(new URL(`${base}/jwks`)), { audience: 'tool:chat', issuer: 'https://tollgate.test' })
  t.equal(payload.sub, 'agent')
  t.equal(hs.headers['x-auth-subject'], 'agent')

  const quota = await app.inject({ method: 'GET', url: '/quota', headers: { authorization: `Bearer ${tok}` } })
  t.equal(quota.json().used, 1, 'one charge for the connection, not per message')
  const done = closed(sock)
  sock.close(1000, 'bye')
  t.equal((await done).code, 1000)
})

t.test('the bearer subprotocol carries the token, is selected, and never goes upstream', async t => {
  const { app, ws, up } = await setup(t)
  const tok = (await issue(app)).access_token as string
  const sock = new WebSocket(`${ws}/chat/room`, [`bearer.${tok}`, 'chat.v1'])
  t.equal(await opened(sock), 'hello from the tool')
  t.equal(sock.protocol, `bearer.${tok}`)
  t.equal(up.handshakes[0]?.headers['sec-websocket-protocol'], 'chat.v1')
  t.notOk(JSON.stringify(up.handshakes[0]?.headers).includes(tok), 'the caller\'s token never reaches the tool')
  sock.terminate()
})

t.test('closed with 1008 when the caller\'s token expires', async t => {
  const clock = new ManualClock()
  const { app, ws } = await setup(t, clock)
  const tok = (await issue(app)).access_token as string // 5 minutes
  const sock = new WebSocket(`${ws}/chat/room`, { headers: { authorization: `Bearer ${tok}` } })
  await opened(sock)
  const done = closed(sock)
  clock.advance(5 * 60_000) // the connection's periodic check reads the app clock
  const { code, reason } = await done
  t.equal(code, 1008)
  t.equal(reason, 'token expired')
})

t.test('closed with 1008 when the caller\'s token is revoked', async t => {
  const { app, ws } = await setup(t)
  const tok = (await issue(app)).access_token as string
  const sock = new WebSocket(`${ws}/chat/room`, { headers: { authorization: `Bearer ${tok}` } })
  await opened(sock)
  const done = closed(sock)
  const p = app.tokens.verify(tok)
  await app.tokens.revokeAccessToken(p.jti, p.exp)
  const { code, reason } = await done
  t.equal(code, 1008)
  t.equal(reason, 'token revoked')
})

t.test('a tool that is down: 502 before the upgrade, and the charge is refunded', async t => {
  const { app, port } = await startApp(t, undefined, [{ name: 'chat', origin: 'http://127.0.0.1:9', path: '/x', websocket: true }], { clients: [client('agent', { quota: { limit: 10, window: '1h' } })] })
  const tok = (await issue(app)).access_token as string
  const res = await refusedWith(new WebSocket(`ws://127.0.0.1:${port}/call/chat/x`, { headers: { authorization: `Bearer ${tok}` } }))
  t.equal(res.status, 502)
  t.equal(JSON.parse(res.body).code, 'upstream_unavailable')
  const quota = await app.inject({ method: 'GET', url: '/quota', headers: { authorization: `Bearer ${tok}` } })
  t.equal(quota.json().used, 0)
})
