// Limits that keep one client from hurting others: body caps per route, header size, and server
// timeouts that close a connection whose headers never finish (slow loris).
import { connect } from 'node:net'
import t from 'tap'
import { FORM, basic, build, form, issue, testConfig } from './helper.js'

t.test('per-route body limits: /token and /validate are capped at a few KiB', async t => {
  const app = await build(t)
  const token = await app.inject({ method: 'POST', url: '/token', headers: { authorization: basic('agent'), ...FORM }, payload: form({ grant_type: 'client_credentials', pad: 'x'.repeat(10_500) }) })
  t.equal(token.statusCode, 413)
  t.same(token.json(), { error: 'payload_too_large', error_description: 'request body too large' })
  const introspect = await app.inject({ method: 'POST', url: '/validate', headers: { authorization: basic('agent'), ...FORM }, payload: form({ token: 'x'.repeat(17 * 1024) }) })
  t.equal(introspect.statusCode, 413)
  const ok = await app.inject({ method: 'POST', url: '/validate', headers: { authorization: basic('agent'), ...FORM }, payload: form({ token: 'x'.repeat(9000) }) })
  t.same(ok.json(), { active: false }, 'an oversize token inside the body limit is simply inactive')
})

t.test('headers over 16 KiB are refused with 431', async t => {
  const app = await build(t)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const res = await fetch(`http://127.0.0.1:${port}/health`, { headers: { 'x-big': 'y'.repeat(17 * 1024) } })
  t.equal(res.status, 431)
  const tok = await issue(app)
  const fine = await fetch(`http://127.0.0.1:${port}/validate`, { headers: { authorization: `Bearer ${tok.access_token}` } })
  t.equal(fine.status, 200)
})

t.test('a connection whose headers never finish is closed by headersTimeout', async t => {
  // Margins that cannot race: the headers deadline (300 ms, checked every 100 ms) against an idle-
  // socket and request timeout of 60 s, far beyond the 15 s safety net below. A close without a 408,
  // or none before the net, fails.
  const app = await build(t, testConfig(t, { server: { headersTimeout: '300ms', requestTimeout: '60s' } }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const started = Date.now()
  const outcome = await new Promise<{ data: string, closed: boolean }>((resolve) => {
    const socket = connect(port, '127.0.0.1', () => {
      socket.write('GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ') // never ends the headers
    })
    let data = ''
    socket.on('data', d => { data += d.toString() })
    socket.on('close', () => { resolve({ data, closed: true }) })
    socket.on('error', () => {})
    setTimeout(() => { socket.destroy(); resolve({ data, closed: false }) }, 15_000).unref()
  })
  const elapsed = Date.now() - started
  t.ok(outcome.closed, `the server closed the connection (after ${elapsed} ms)`)
  t.ok(elapsed >= 290, 'not before the headers deadline')
  // The 408 shows the headers deadline closed it; the idle-socket timeout closes without a word.
  t.match(outcome.data, /^HTTP\/1\.1 408/, 'with 408 Request Timeout')
})
