// The pipeline's stages called directly as functions (src/pipeline/), on real pieces: the app's
// token verifier, limiters and quota counters over the real SQLite file, a real tool registry and
// real downstream tokens. Each stage's yes, each of its noes (the error class, code and status),
// and what it records on the request context.
import { decodeJwt } from 'jose'
import t from 'tap'
import { InsufficientScope, InvalidToken, MissingToken, QuotaExceeded, RateLimited, StoreUnavailable, ToolNotFound } from '../src/errors.js'
import { AnswerCapture, MAX_KEPT_BODY, idempotencyKey, createContext, authenticate, authorize, authorizeTool, bearerToken, headerSafe, limit, meter, principalOf, relayHeaders, settle, type RequestContext } from '../src/pipeline/index.js'
import { DownstreamTokens } from '../src/proxy/downstream-token.js'
import { Quotas } from '../src/quota/index.js'
import { ToolRegistry } from '../src/tools/index.js'
import { openStore } from '../src/store/index.js'
import { ManualClock, build, client, issue, testConfig, type TestContext } from './helper.js'

const TOOLS = [
  { name: 'chat', url: 'http://127.0.0.1:9/chat', audience: 'tool:chat', scopes: ['tools:call'], cost: 3 },
  { name: 'admin', url: 'http://127.0.0.1:9/admin', audience: 'tool:chat', scopes: ['tools:call', 'tools:admin'] },
  { name: 'other', url: 'http://127.0.0.1:9/other', audience: 'tool:other', scopes: ['tools:call'] },
  { name: 'plain', url: 'http://127.0.0.1:9/plain', audience: 'tool:chat', scopes: [], auth: 'none' },
  { name: 'keep', url: 'http://127.0.0.1:9/keep', audience: 'tool:chat', scopes: [], refundOnFailure: false }
]

async function setup (t: TestContext, overrides: Record<string, unknown> = {}): Promise<{ app: Awaited<ReturnType<typeof build>>, tools: ToolRegistry, token: string, ctx: () => RequestContext }> {
  const clock = new ManualClock(Date.UTC(2026, 10, 24, 12, 0, 5))
  const config = testConfig(t, { tools: TOOLS, clients: [client('agent', { quota: { limit: 5, window: '1d' } })], ...overrides })
  const app = await build(t, config, { clock: clock.fn })
  const token = (await issue(app)).access_token as string
  return { app, tools: new ToolRegistry(config.tools), token, ctx: () => createContext('req-1', '192.0.2.7') }
}

/** Quota counters over a real SQLite store that has been closed: every operation fails. */
async function closedQuotas (t: TestContext): Promise<Quotas> {
  const store = await openStore(testConfig(t), { warn: () => {}, info: () => {}, error: () => {} } as any)
  await store.close()
  return new Quotas(store)
}

function authenticated (app: { tokens: { verify: (t: string) => any } }, token: string, ctx: RequestContext): RequestContext {
  authenticate(app.tokens, ctx, `Bearer ${token}`)
  return ctx
}

t.test('createContext: every field present from the start', async t => {
  const ctx = createContext('id-1', '10.0.0.1')
  t.same(Object.keys(ctx).sort(), ['body', 'charge', 'charged', 'clientId', 'id', 'ip', 'principal', 'refunded', 'tool', 'trace', 'upstreamPath', 'mcpListIds', 'idempotency', 'usage'].sort())
  t.equal(ctx.refunded, false)
  t.throws(() => principalOf(ctx), /before authenticate/, 'a stage that needs the principal refuses to run before authenticate')
})

t.test('authenticate', async t => {
  const { app, token, ctx } = await setup(t)
  t.throws(() => bearerToken(undefined), MissingToken)
  t.throws(() => bearerToken(''), MissingToken)
  t.throws(() => bearerToken('Basic YTpi'), MissingToken, 'another scheme: no bearer token at all')
  t.throws(() => bearerToken('Bearer a b'), InvalidToken, 'a malformed bearer credential')
  t.equal(bearerToken(`bearer   ${token}`), token, 'the scheme is case-insensitive (RFC 9110 §11.1)')

  const c = ctx()
  const principal = authenticate(app.tokens, c, `Bearer ${token}`)
  t.equal(principal.sub, 'agent')
  t.equal(c.principal, principal, 'recorded on the context')

  const bad = ctx()
  t.throws(() => authenticate(app.tokens, bad, `Bearer ${token.slice(0, -4)}AAAA`), { code: 'invalid_token', statusCode: 401 })
  t.equal(bad.principal, undefined, 'nothing recorded for a refused token')

  t.equal(authenticate(app.tokens, ctx(), undefined, token).sub, 'agent', 'an offered token (WebSocket subprotocol) without an Authorization header')
  t.throws(() => authenticate(app.tokens, ctx(), 'Bearer x.y.z', token), InvalidToken, 'the Authorization header wins over an offered token')
})

t.test('authorize and authorizeTool', async t => {
  const { app, tools, token, ctx } = await setup(t)
  const c = authenticated(app, token, ctx())
  t.equal(authorize(c, {}).sub, 'agent', 'nothing asked: allowed')
  t.equal(authorize(c, { audience: 'tool:chat', scopes: ['tools:call', 'tools:read'] }).sub, 'agent')
  t.throws(() => authorize(c, { audience: 'tool:nope' }), { name: 'InvalidToken', code: 'invalid_token', statusCode: 401 }, 'RFC 6750: another resource\'s token is invalid_token')
  t.throws(() => authorize(c, { scopes: ['tools:call', 'tools:admin'] }), { name: 'InsufficientScope', statusCode: 403, requiredScope: 'tools:call tools:admin' })

  const toolCtx = authenticated(app, token, ctx())
  t.equal(authorizeTool(tools, toolCtx, 'chat').name, 'chat')
  t.equal(toolCtx.tool?.name, 'chat', 'the tool is recorded')
  t.throws(() => authorizeTool(tools, authenticated(app, token, ctx()), 'nope'), { name: 'ToolNotFound', statusCode: 404 })
  t.throws(() => authorizeTool(tools, authenticated(app, token, ctx()), { name: 'chat' }), ToolNotFound, 'a name that is not a string')
  t.throws(() => authorizeTool(tools, authenticated(app, token, ctx()), 'other'), { code: 'invalid_token', statusCode: 401 }, 'audience before scopes')
  t.throws(() => authorizeTool(tools, authenticated(app, token, ctx()), 'admin'), { code: 'insufficient_scope', statusCode: 403 })
})

t.test('limit: per IP, then per subject, counted synchronously on SQLite', async t => {
  const { app, token, ctx } = await setup(t, { rateLimits: { perIp: { max: 3, window: '1m' }, perSubject: { max: 2, window: '1m' } } })
  const c = authenticated(app, token, ctx())
  t.equal(limit(app.limiters, c), undefined, 'counted without a promise')
  t.equal(limit(app.limiters, c), undefined)
  const third = limit(app.limiters, c)
  t.ok(third instanceof Promise, 'a limit reached: the async limiters say which')
  await t.rejects(third as Promise<void>, { name: 'RateLimited', statusCode: 429, message: /\(subject\)/ })
  t.equal(third instanceof Promise ? 'async' : 'sync', 'async')
  // The per-IP count went on while the subject's limit refused (IP is counted first).
  const otherSubject = createContext('req-2', '192.0.2.7')
  otherSubject.principal = { ...principalOf(c), sub: 'someone-else' }
  await t.rejects(limit(app.limiters, otherSubject) as Promise<void>, { message: /\(ip\)/ }, 'the address is over its limit for every subject')
  const elsewhere = createContext('req-3', '192.0.2.8')
  elsewhere.principal = otherSubject.principal
  t.equal(limit(app.limiters, elsewhere), undefined, 'another address and subject have room')
})

t.test('meter: charges the token\'s quota and records the charge', async t => {
  const { app, tools, token, ctx } = await setup(t)
  const c = authenticated(app, token, ctx())
  const chat = authorizeTool(tools, c, 'chat')
  t.same(await meter(app.quotas, c, chat.cost), { 'ratelimit-policy': '"quota";q=5;w=86400', ratelimit: '"quota";r=2;t=43195' })
  t.equal(c.charge?.receipt.cost, 3)
  t.equal(c.usage?.used, 3)
  const again = authenticated(app, token, ctx())
  const err = await meter(app.quotas, again, 3).then(() => undefined, (e: unknown) => e)
  t.type(err, QuotaExceeded)
  t.match(err, { statusCode: 429, headers: { 'retry-after': '43195', ratelimit: '"quota";r=2;t=43195' } }, 'refused with the usage as it stands')
  t.equal(again.charge, undefined, 'no charge recorded for a refused call')
  t.same(await meter(app.quotas, authenticated(app, token, ctx()), 2), { 'ratelimit-policy': '"quota";q=5;w=86400', ratelimit: '"quota";r=0;t=43195' }, 'exactly up to the limit')

  const unmetered = authenticated(app, token, ctx())
  unmetered.principal = { ...principalOf(unmetered), claims: { ...principalOf(unmetered).claims, quota: undefined } } as any
  t.equal(await meter(app.quotas, unmetered, 1), undefined, 'a token without a quota claim is not metered')

  // A store that cannot answer (a real SQLite store, closed): fail closed.
  await t.rejects(meter(await closedQuotas(t), authenticated(app, token, ctx()), 1), { name: 'StoreUnavailable', statusCode: 503 })
})

t.test('relay: hygiene, forwarding fields and the tool\'s own credential', async t => {
  const { app, tools, token, ctx } = await setup(t)
  const downstream = new DownstreamTokens(app.tokens, app.clock)
  const arrival = { headers: { authorization: `Bearer ${token}`, cookie: 'a=b', 'x-forwarded-for': '6.6.6.6', 'x-auth-subject': 'admin', accept: 'application/json', host: 'gw.test' }, peerIp: '192.0.2.7', trustedPeer: false, proto: 'https', host: 'gw.test' }
  const c = authenticated(app, token, ctx())
  const chat = authorizeTool(tools, c, 'chat')
  const headers = relayHeaders(downstream, c, chat, arrival)
  t.equal(headers.accept, 'application/json')
  t.equal(headers.cookie, undefined)
  t.equal(headers['x-auth-subject'], 'agent')
  t.equal(headers['x-forwarded-for'], '192.0.2.7', 'the caller\'s own X-Forwarded-For is not trusted')
  t.equal(headers['x-forwarded-proto'], 'https')
  t.equal(headers['x-request-id'], 'req-1')
  const bearer = String(headers.authorization)
  t.not(bearer, `Bearer ${token}`, 'never the caller\'s token')
  const claims = decodeJwt(bearer.slice('Bearer '.length))
  t.match(claims, { aud: 'tool:chat', sub: 'agent' })
  t.ok((claims.exp as number) - (claims.iat as number) <= 60, 'short-lived')

  const plain = authenticated(app, token, ctx())
  t.equal(relayHeaders(downstream, plain, authorizeTool(tools, plain, 'plain'), arrival).authorization, undefined, 'auth: none sends no credential')

  const crlf = authenticated(app, token, ctx())
  crlf.principal = { ...principalOf(crlf), sub: 'agent\r\nx-injected: 1' }
  t.throws(() => relayHeaders(downstream, crlf, chat, arrival), { name: 'InvalidToken', message: /sub cannot be carried in a header/ })
  t.throws(() => headerSafe('a\u0000b', 'scope'), InvalidToken)
})

t.test('settle: a failed call is refunded once; a tool may keep the charge', async t => {
  const { app, tools, token, ctx } = await setup(t)
  const warnings: object[] = []
  const log = { warn: (obj: object) => { warnings.push(obj) } }
  const c = authenticated(app, token, ctx())
  await meter(app.quotas, c, authorizeTool(tools, c, 'chat').cost)
  t.equal(await settle(app.quotas, c, false, log), undefined, 'a call that did not fail keeps its charge')
  t.equal((await app.quotas.balance('agent', { limit: 5, window: 86400 })).used, 3)
  t.same(await settle(app.quotas, c, true, log), { 'ratelimit-policy': '"quota";q=5;w=86400', ratelimit: '"quota";r=5;t=43195' })
  t.equal(c.refunded, true)
  t.equal(await settle(app.quotas, c, true, log), undefined, 'at most once')
  t.equal((await app.quotas.balance('agent', { limit: 5, window: 86400 })).used, 0, 'refunded exactly once')

  const kept = authenticated(app, token, ctx())
  await meter(app.quotas, kept, authorizeTool(tools, kept, 'keep').cost)
  t.equal(await settle(app.quotas, kept, true, log), undefined)
  t.equal((await app.quotas.balance('agent', { limit: 5, window: 86400 })).used, 1, 'refundOnFailure: false keeps the charge')

  const broken = authenticated(app, token, ctx())
  await meter(app.quotas, broken, authorizeTool(tools, broken, 'chat').cost)
  t.equal(await settle(await closedQuotas(t), broken, true, log), undefined, 'a refund the store refuses is not thrown')
  t.match(warnings, [{ tool: 'chat', sub: 'agent' }])
  t.equal(warnings.length, 1)
})

t.test('idempotency: the key is 1 to 255 printable ASCII characters, given once; the capture keeps at most 1 MiB', async t => {
  t.equal(idempotencyKey(undefined), undefined, 'no header, no stage')
  t.equal(idempotencyKey('a b~!'), 'a b~!')
  t.equal(idempotencyKey('"sf-string"'), '"sf-string"', 'taken as sent: quotes are part of the key')
  t.equal(idempotencyKey('k'.repeat(255)), 'k'.repeat(255))
  for (const bad of ['', 'k'.repeat(256), 'a\tb', 'caf\u00e9', 'a\u0000']) {
    t.throws(() => idempotencyKey(bad), { code: 'invalid_request', statusCode: 400 }, JSON.stringify(bad))
  }
  t.throws(() => idempotencyKey(['a', 'b']), { code: 'invalid_request' })
  t.throws(() => idempotencyKey('a, b', 2), { code: 'invalid_request' }, 'two header lines joined by Node')

  const fits = new AnswerCapture()
  fits.push(Buffer.alloc(MAX_KEPT_BODY - 1, 1))
  fits.push(Buffer.alloc(1, 2))
  t.equal(fits.body()?.length, MAX_KEPT_BODY)
  const over = new AnswerCapture()
  over.push(Buffer.alloc(MAX_KEPT_BODY, 1))
  over.push(Buffer.alloc(1, 2))
  over.push(Buffer.alloc(0))
  t.equal(over.body(), undefined, 'one byte over: not kept')
  t.same(new AnswerCapture().body(), Buffer.alloc(0), 'an empty body is kept')
})
