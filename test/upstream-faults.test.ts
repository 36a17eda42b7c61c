// Upstreams that misbehave at the byte level (SECURITY.md "A 5xx is a bug unless a dependency is
// down"): a raw TCP server on a free port that answers with garbage, closes before or in the middle
// of its headers, or breaks off its body. Before the headers the caller gets 502 upstream_unavailable
// and the quota charge back; after them the caller's connection ends and the process lives on.
import { request as httpRequest } from 'node:http'
import { createServer, type AddressInfo, type Socket } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import { startApp } from './call-helper.js'
import { startUpstream } from './support/upstream.js'
import { issue, type TestContext } from './helper.js'

/** What the fake upstream writes for each path (then it closes the connection). */
const ANSWERS: Record<string, string | Buffer> = {
  '/garbage': Buffer.from([0x00, 0xff, 0x13, 0x37, 0x0d, 0x0a, 0x0d, 0x0a, 0xde, 0xad]),
  '/ssh': 'SSH-2.0-OpenSSH_9.6\r\n',
  '/close': '',
  '/half-headers': 'HTTP/1.1 200 OK\r\nContent-Type: text/pla',
  '/bad-status': 'HTTP/1.1 2000 Whatever\r\n\r\n',
  '/nul-header': 'HTTP/1.1 200 OK\r\nX-Bad: a\u0000b\r\nContent-Length: 2\r\n\r\nok',
  '/cl-and-te': 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
  '/two-lengths': 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello',
  '/continue-only': 'HTTP/1.1 100 Continue\r\n\r\n',
  // After the headers: the body breaks off.
  '/short-body': 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\npartial',
  '/bad-chunk': 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n',
  '/open-chunk': 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n'
}
const BEFORE_HEADERS = ['/garbage', '/ssh', '/close', '/half-headers', '/bad-status', '/nul-header', '/cl-and-te', '/two-lengths', '/continue-only']
const AFTER_HEADERS = ['/short-body', '/bad-chunk', '/open-chunk']

async function rawUpstream (t: TestContext): Promise<{ origin: string, requests: string[] }> {
  const sockets = new Set<Socket>()
  const requests: string[] = []
  const server = createServer(socket => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    let head = ''
    socket.on('data', (chunk: Buffer) => {
      head += chunk.toString('latin1')
      if (!head.includes('\r\n\r\n')) return
      // The tool's base is its first segment: /call/<tool>/x arrives as /<tool>/x.
      const path = `/${(/^[A-Z]+ \/([^/?\s]*)/.exec(head)?.[1] ?? '')}`
      requests.push(path)
      const answer = ANSWERS[path] ?? 'HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n'
      // Written, then the connection is cut: no FIN-then-wait, the peer sees the bytes and a close.
      socket.end(answer)
      head = ''
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    await new Promise(resolve => server.close(resolve))
  })
  return { origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests }
}

async function setup (t: TestContext): Promise<{ base: string, app: any, token: string, requests: string[] }> {
  const raw = await rawUpstream(t)
  const tools = Object.keys(ANSWERS).map(path => ({ name: path.slice(1), origin: raw.origin, path, audience: 'tool:chat' }))
  const { app, base } = await startApp(t, undefined, [...tools, { name: 'fine', audience: 'tool:chat', origin: (await startUpstream(t)).origin }])
  const token = (await issue(app)).access_token as string
  return { base, app, token, requests: raw.requests }
}

async function used (app: any, token: string): Promise<number> {
  return (await app.inject({ method: 'GET', url: '/quota', headers: { authorization: `Bearer ${token}` } })).json().used
}

t.test('an upstream that answers garbage or closes before its headers: 502, refunded', async t => {
  const { base, app, token, requests } = await setup(t)
  for (const path of BEFORE_HEADERS) {
    const tool = path.slice(1)
    for (const style of ['json', 'path'] as const) {
      const res = style === 'json'
        ? await request(`${base}/call`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ tool }) })
        : await request(`${base}/call/${tool}/x`, { headers: { authorization: `Bearer ${token}` } })
      const body = await res.body.text()
      t.equal(res.statusCode, 502, `${path} (${style}): 502`)
      t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8', `${path} (${style}): problem+json`)
      t.equal(JSON.parse(body).code, 'upstream_unavailable', `${path} (${style}): upstream_unavailable`)
      t.notMatch(body, /OpenSSH|Whatever|\u0000|at .*\.js/, `${path} (${style}): nothing of the upstream's bytes, no stack`)
      t.equal(await used(app, token), 0, `${path} (${style}): refunded`)
    }
  }
  t.equal(requests.filter(p => p === '/garbage').length, 2, 'each call reached the upstream once: never retried')
})

t.test('a body that breaks off after the headers ends the caller\'s connection; the process lives on', async t => {
  const { base, app, token } = await setup(t)
  for (const path of AFTER_HEADERS) {
    const tool = path.slice(1)
    for (const style of ['json', 'path'] as const) {
      const res = style === 'json'
        ? await request(`${base}/call`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ tool }) })
        : await request(`${base}/call/${tool}/x`, { headers: { authorization: `Bearer ${token}` } })
      t.equal(res.statusCode, 200, `${path} (${style}): the headers were already on their way`)
      // The caller must see the break (never a silently complete-looking short body), and never hang.
      const outcome = await res.body.text().then(text => ({ ok: true, text }), (err: Error) => ({ ok: false, text: err.message }))
      t.notOk(outcome.ok, `${path} (${style}): the caller's body ends in an error (${outcome.text})`)
      // The refund runs when the proxy sees the upstream body fail: wait for the store to show it.
      for (let i = 0; i < 1000 && await used(app, token) !== 0; i++) await new Promise(resolve => setImmediate(resolve))
      t.equal(await used(app, token), 0, `${path} (${style}): refunded`)
    }
  }
  const health = await request(`${base}/health`)
  t.equal(health.statusCode, 200, 'still serving')
  await health.body.dump()
  const fine = await request(`${base}/call`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: '{"tool":"fine"}' })
  t.equal(fine.statusCode, 200, 'a healthy tool still works')
  await fine.body.dump()
})

t.test('a caller\'s Expect: 100-continue is answered by Tollgate and never sent upstream', async t => {
  const up = await startUpstream(t)
  const { app, port } = await startApp(t, up, [{ name: 'chat' }])
  const token = (await issue(app)).access_token as string
  for (const path of ['/call', '/call/chat/x']) {
    const body = path === '/call' ? '{"tool":"chat"}' : 'payload'
    const res = await new Promise<{ status: number, continued: boolean }>((resolve, reject) => {
      let continued = false
      const req = httpRequest({ host: '127.0.0.1', port, method: 'POST', path, agent: false, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', expect: '100-continue', 'content-length': Buffer.byteLength(body) } }, res => {
        res.resume()
        res.on('end', () => resolve({ status: res.statusCode ?? 0, continued }))
      })
      req.on('continue', () => { continued = true; req.end(body) })
      req.on('error', reject)
    })
    t.ok(res.continued, `${path}: 100 Continue came first`)
    t.equal(res.status, 200, `${path}: 200, not a 502`)
    t.equal(up.seen.at(-1)?.headers.expect, undefined, `${path}: no Expect upstream`)
    t.equal(up.seen.at(-1)?.body.toString(), body, `${path}: the body arrived`)
  }
})
