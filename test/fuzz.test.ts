// Property-based fuzzing of every endpoint's body, headers and path (fast-check, bounded runs):
// never a 5xx, never a crash, and a refused token never yields claims.
import fc from 'fast-check'
import t from 'tap'
import { basic, build, issue } from './helper.js'

const RUNS = Number(process.env.TOLLGATE_FUZZ_RUNS ?? 150)
const OAUTH_ROUTES = ['/token', '/refresh', '/revoke', '/validate']

const printable = fc.string({ unit: 'grapheme-ascii', maxLength: 64 })
const anyText = fc.string({ unit: 'binary', maxLength: 200 })
const param = fc.oneof(printable, anyText, fc.constant('client_credentials'), fc.constant('refresh_token'), fc.constant('urn:ietf:params:oauth:grant-type:token-exchange'))
const fields = fc.dictionary(fc.oneof(fc.constantFrom('grant_type', 'scope', 'audience', 'client_id', 'client_secret', 'token', 'refresh_token', 'subject_token', 'subject_token_type', 'token_type_hint'), printable), param, { maxKeys: 6 })
const contentType = fc.constantFrom('application/x-www-form-urlencoded', 'application/json', 'application/json; charset=utf-8', 'text/plain', 'multipart/form-data; boundary=x', 'application/xml', '', 'application/x-www-form-urlencoded; charset=latin1')
const jsonish = fc.oneof(fc.json({ maxDepth: 3 }), fields.map(f => JSON.stringify(f)), anyText)
const authorization = fc.oneof(
  fc.constant(undefined),
  fc.constant(basic('agent')),
  printable.map(s => `Basic ${s}`),
  printable.map(s => `Bearer ${s}`),
  anyText.map(s => `Basic ${Buffer.from(s).toString('base64')}`),
  fc.constantFrom('Bearer', 'Basic', 'Bearer  ', 'bearer a.b.c', 'Basic Og==', 'Basic YTo=', 'Negotiate x')
)

t.test('OAuth endpoints never answer 5xx to any body, content type or credentials', async t => {
  const app = await build(t)
  let errorBodies = 0
  await fc.assert(fc.asyncProperty(
    fc.constantFrom(...OAUTH_ROUTES),
    contentType,
    fc.oneof(fields.map(f => new URLSearchParams(f as Record<string, string>).toString()), jsonish),
    authorization,
    async (url, type, payload, auth) => {
      const headers: Record<string, string> = {}
      if (type !== '') headers['content-type'] = type
      if (auth !== undefined) headers.authorization = auth
      const res = await app.inject({ method: 'POST', url, headers, payload })
      if (res.statusCode >= 500) throw new Error(`${url} ${type} → ${res.statusCode} ${res.body}`)
      if (res.statusCode >= 400 && res.statusCode !== 404) {
        const body = res.json()
        if (typeof body.error !== 'string') throw new Error(`${url}: not an RFC 6749 error body: ${res.body}`)
        errorBodies++
      }
    }
  ), { numRuns: RUNS })
  t.ok(errorBodies > 0, `${RUNS} runs, ${errorBodies} error bodies checked`)
})

t.test('a refused token never yields claims, at either /validate', async t => {
  const app = await build(t)
  const real = (await issue(app)).access_token as string
  // Control: the real token passes both, so the refusals below are not a verifier refusing everything.
  t.equal((await app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${real}` } })).statusCode, 200, 'control: GET /validate')
  t.equal((await app.inject({ method: 'POST', url: '/validate', headers: { authorization: basic('agent') }, payload: { token: real } })).json().active, true, 'control: POST /validate')
  const mutate = fc.tuple(fc.nat({ max: real.length - 1 }), fc.constantFrom(...'ABCabc012-_.=+/ %\u0000é'.split(''))).map(([i, c]) => real.slice(0, i) + c + real.slice(i + 1))
  const token = fc.oneof(mutate, printable, anyText, fc.constant(real + '.'), fc.constant(real.split('.').reverse().join('.')))
  await fc.assert(fc.asyncProperty(token, async (tok) => {
    if (tok === real) return
    const get = await app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${tok}` } })
    if (get.statusCode >= 500) throw new Error(`GET /validate → ${get.statusCode}`)
    if (get.statusCode === 200) {
      // Only a mutation in a spare base64url bit could keep a token valid, and canonical decoding forbids that.
      throw new Error(`a mutated token passed: ${JSON.stringify(tok)}`)
    }
    if (get.headers['x-auth-subject'] !== undefined) throw new Error('identity header on a refusal')
    const post = await app.inject({ method: 'POST', url: '/validate', headers: { authorization: basic('agent') }, payload: { token: tok } })
    if (post.statusCode >= 500) throw new Error(`POST /validate → ${post.statusCode}`)
    const body = post.json()
    if (post.statusCode === 200 && (body.active !== false || Object.keys(body).length !== 1)) throw new Error(`claims for a refused token: ${post.body}`)
  }), { numRuns: RUNS * 2 })
  t.pass(`${RUNS * 2} runs, every mutation refused`)
})

t.test('any method, path and header set: never a 5xx', async t => {
  const app = await build(t)
  let routed = 0
  const segment = fc.oneof(printable.map(encodeURIComponent), fc.constantFrom('..', '%2e%2e', '%2f', '%00', 'validate', 'token', 'jwks', 'call', 'quota', '.well-known', 'docs', '%ZZ', '%5C', '%2F%2F', ''))
  await fc.assert(fc.asyncProperty(
    fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD'),
    fc.array(segment, { maxLength: 4 }),
    fc.option(printable.map(s => `?${encodeURIComponent(s)}=${encodeURIComponent(s)}`), { nil: '' }),
    fc.dictionary(fc.constantFrom('x-request-id', 'x-forwarded-for', 'content-type', 'accept', 'cookie', 'origin'), printable, { maxKeys: 4 }),
    async (method, parts, query, headers) => {
      const res = await app.inject({ method: method as any, url: `/${parts.join('/')}${query}`, headers })
      if (res.statusCode >= 500) throw new Error(`${method} /${parts.join('/')}${query} → ${res.statusCode} ${res.body}`)
      if (res.statusCode !== 404) routed++
    }
  ), { numRuns: RUNS })
  t.ok(routed > 0, `${RUNS} runs, ${routed} reached a route (not 404)`)
})
