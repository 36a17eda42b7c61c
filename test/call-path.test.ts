// Path safety on /call/:tool/*: the rest of the path never leaves the tool's base URL.
import fc from 'fast-check'
import t from 'tap'
import { checkRest, upstreamPath } from '../src/proxy/path.js'
import { ToolRegistry } from '../src/tools/index.js'
import { issue } from './helper.js'
import { rawRequest, startApp, startUpstream } from './call-helper.js'

const ATTEMPTS = [
  '/call/chat/../secret',
  '/call/chat/..',
  '/call/chat/a/../../secret',
  '/call/chat/%2e%2e/secret',
  '/call/chat/%2E%2E/secret',
  '/call/chat/.%2e/secret',
  '/call/chat/%2e/secret',
  '/call/chat/./secret',
  '/call/chat/..%2fsecret',
  '/call/chat/..%2Fsecret',
  '/call/chat/a%2f..%2f..%2fsecret',
  '/call/chat/..\\secret',
  '/call/chat/a\\..\\..\\secret',
  '/call/chat/%5c..%5csecret',
  '/call/chat//evil.example/x',
  '/call/chat/a//b',
  '/call/chat/http://evil.example/x',
  '/call/chat/http:%2f%2fevil.example/x',
  '/call/chat/https:evil.example',
  '/call/chat/a%00b',
  '/call/chat/a%0d%0aX-Injected:%201',
  '/call/chat/%zz'
]

t.test('traversal attempts are refused and reach nothing outside the base', async t => {
  const up = await startUpstream(t)
  const { app, port } = await startApp(t, up, [{ name: 'chat', path: '/api/chat' }])
  const tok = (await issue(app)).access_token as string
  for (const target of ATTEMPTS) {
    const res = await rawRequest(port, 'GET', target, { authorization: `Bearer ${tok}` })
    t.equal(res.status, 400, target)
  }
  t.equal(up.seen.length, 0, 'the upstream recorded no request')
  const quota = await app.inject({ method: 'GET', url: '/quota', headers: { authorization: `Bearer ${tok}` } })
  t.equal(quota.json().used, 0, 'refused paths are not charged')

  const ok = await rawRequest(port, 'GET', '/call/chat/a.b/..c/%41?x=../..', { authorization: `Bearer ${tok}` })
  t.equal(ok.status, 200, 'dots inside a segment and in the query are fine')
  t.equal(up.seen[0]?.url, '/api/chat/a.b/..c/%41?x=../..', 'the caller\'s bytes, under the base')
  const problem = await rawRequest(port, 'GET', '/call/chat/%2e%2e/x', { authorization: `Bearer ${tok}` })
  t.equal(JSON.parse(problem.body).code, 'bad_path')
})

t.test('any path upstreamPath accepts stays under the base', async t => {
  const [tool] = [...new ToolRegistry([{ name: 'x', url: 'http://127.0.0.1:9/base/', audience: 'a', scopes: [], cost: 1, timeout: 1, refundOnFailure: true, websocket: false }])]
  const piece = fc.constantFrom('..', '.', '%2e', '%2E', '%2f', '%5c', '\\', '/', '//', 'a', 'b.c', '%00', ':', 'http:', '@', '%25', '?', '#', '%')
  fc.assert(fc.property(fc.array(piece, { maxLength: 8 }), parts => {
    const rest = parts.join('')
    let path: string
    try {
      path = upstreamPath(tool!, rest, '')
    } catch {
      return true
    }
    const url = new URL(path, 'http://127.0.0.1:9')
    return url.origin === 'http://127.0.0.1:9' && (url.pathname === '/base' || url.pathname.startsWith('/base/')) && !url.pathname.split('/').includes('..')
  }), { numRuns: 2000 })
  t.throws(() => { checkRest('a/%2E%2e') }, { code: 'bad_path' })
  t.doesNotThrow(() => { checkRest('a/b/') }, 'a trailing slash is fine')
})
