// nginx in front of Tollgate: Debian's nginx runs examples/nginx/tollgate-auth.conf (rendered with
// test ports) with auth_request to the app's GET /validate, protecting a real node:http upstream.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { join } from 'node:path'
import t from 'tap'
import { client, issue, tempDir, testConfig } from './helper.js'
import { freePort, listenApp, requireExecutable, waitForPort } from './system.js'
import { startUpstream } from './support/upstream.js'

const TEMPLATE = new URL('../examples/nginx/tollgate-auth.conf', import.meta.url)

/** The example config with its three addresses replaced; each must occur exactly once, so drift fails here. */
function renderExample (ports: { tollgate: number, upstream: number, nginx: number }): string {
  let text = readFileSync(TEMPLATE, 'utf8')
  const swaps: Array<[string, string]> = [
    ['server 127.0.0.1:8080;', `server 127.0.0.1:${ports.tollgate};`],
    ['server 127.0.0.1:9001;', `server 127.0.0.1:${ports.upstream};`],
    ['listen 127.0.0.1:8000;', `listen 127.0.0.1:${ports.nginx};`]
  ]
  for (const [from, to] of swaps) {
    if (text.split(from).length !== 2) throw new Error(`${TEMPLATE.pathname}: expected exactly one "${from}"`)
    text = text.replace(from, to)
  }
  return text
}

interface Answer { status: number, headers: IncomingHttpHeaders, rawHeaders: string[], body: string }

function get (port: number, path: string, headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, headers, agent: false }, res => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, headers: res.headers, rawHeaders: res.rawHeaders, body: Buffer.concat(chunks).toString() }) })
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

function headerValues (answer: Answer, name: string): string[] {
  const values: string[] = []
  for (let i = 0; i < answer.rawHeaders.length; i += 2) {
    if (answer.rawHeaders[i]?.toLowerCase() === name) values.push(answer.rawHeaders[i + 1] ?? '')
  }
  return values
}

const nginxBin = requireExecutable(t, '/usr/sbin/nginx', 'apt-get install nginx')
if (nginxBin !== undefined) {
  const config = testConfig(t, {
    server: { trustProxy: '127.0.0.1' },
    // A window of a day, so no window boundary falls inside the test.
    rateLimits: { perSubject: { max: 3, window: '1d' } },
    clients: [
      client('agent', { claims: { role: 'user' } }),
      client('operator', { scopes: ['tools:call', 'tools:admin'] }),
      client('burst'),
      // A quota of one call a day: its balance travels through nginx, and the metered location
      // spends it (three requests in all, within the perSubject limit of 3).
      client('metered', { quota: { limit: 1, window: '1d' } })
    ]
  })
  const { app, port: tollgatePort } = await listenApp(t, config)
  const upstream = await startUpstream(t, {
    handler: (req, res) => {
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ ok: true, path: req.url, subject: req.headers['x-auth-subject'] ?? null, remaining: req.headers['x-auth-quota-remaining'] ?? null }))
    }
  })
  const nginxPort = await freePort()

  const prefix = tempDir(t, 'tollgate-nginx-')
  for (const dir of ['tmp/body', 'tmp/proxy', 'tmp/fastcgi', 'tmp/uwsgi', 'tmp/scgi']) mkdirSync(join(prefix, dir), { recursive: true })
  writeFileSync(join(prefix, 'tollgate-auth.conf'), renderExample({ tollgate: tollgatePort, upstream: upstream.port, nginx: nginxPort }))
  writeFileSync(join(prefix, 'nginx.conf'), `
daemon off;
master_process off;
worker_processes 1;
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log warn;
events { worker_connections 128; }
http {
  access_log off;
  client_body_temp_path ${prefix}/tmp/body;
  proxy_temp_path ${prefix}/tmp/proxy;
  fastcgi_temp_path ${prefix}/tmp/fastcgi;
  uwsgi_temp_path ${prefix}/tmp/uwsgi;
  scgi_temp_path ${prefix}/tmp/scgi;
  include tollgate-auth.conf;
}
`)
  const nginx: ChildProcess = spawn(nginxBin, ['-p', prefix, '-c', join(prefix, 'nginx.conf'), '-e', join(prefix, 'error.log')], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  nginx.stderr?.on('data', (c: Buffer) => { stderr += c.toString() })
  const exited = new Promise<void>(resolve => nginx.once('exit', () => { resolve() }))
  t.teardown(async () => {
    if (nginx.exitCode === null) nginx.kill('SIGTERM')
    await exited
  })
  try {
    await waitForPort(nginxPort, () => nginx.exitCode === null)
  } catch (err) {
    let log = ''
    try { log = readFileSync(join(prefix, 'error.log'), 'utf8') } catch {}
    throw new Error(`nginx did not start: ${(err as Error).message}\n${stderr}\n${log}`)
  }

  const agent = (await issue(app, {}, 'agent')).access_token as string
  const operator = (await issue(app, {}, 'operator')).access_token as string
  const burst = (await issue(app, {}, 'burst')).access_token as string
  const metered = (await issue(app, {}, 'metered')).access_token as string

  t.test('a valid token reaches the upstream with X-Auth-Subject, and without the token', async t => {
    const before = upstream.seen.length
    const res = await get(nginxPort, '/orders?id=7', { authorization: `Bearer ${agent}`, 'x-auth-subject': 'forged-admin' })
    t.equal(res.status, 200, res.body)
    t.same(JSON.parse(res.body), { ok: true, path: '/orders?id=7', subject: 'agent', remaining: null })
    t.equal(upstream.seen.length, before + 1)
    const seen = upstream.seen.at(-1)?.headers ?? {}
    t.equal(seen['x-auth-subject'], 'agent', 'the client-sent X-Auth-Subject was replaced by Tollgate\'s')
    t.equal(seen['x-auth-client-id'], 'agent')
    t.equal(seen['x-auth-scope'], 'tools:call tools:read')
    t.equal(seen['x-auth-audience'], 'tool:chat tool:search')
    t.notOk(seen.authorization, 'the caller\'s token is not passed on')
  })

  t.test('no token: 401 with Tollgate\'s challenge, upstream not reached', async t => {
    const before = upstream.seen.length
    const res = await get(nginxPort, '/orders')
    t.equal(res.status, 401)
    t.match(headerValues(res, 'www-authenticate'), [/^Bearer realm="tollgate", resource_metadata="[^"]+\/\.well-known\/oauth-protected-resource"$/])
    t.equal(res.headers['content-type'], 'application/problem+json')
    t.equal(JSON.parse(res.body).status, 401)
    t.equal(upstream.seen.length, before)
  })

  t.test('a tampered token: 401 invalid_token, upstream not reached', async t => {
    const before = upstream.seen.length
    const [h, p, s] = agent.split('.') as [string, string, string]
    const payload = JSON.parse(Buffer.from(p, 'base64url').toString())
    payload.sub = 'someone-else'
    const forged = `${h}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${s}`
    const res = await get(nginxPort, '/orders', { authorization: `Bearer ${forged}` })
    t.equal(res.status, 401)
    const challenges = headerValues(res, 'www-authenticate')
    t.equal(challenges.length, 1, 'exactly one challenge')
    t.match(challenges[0], /^Bearer realm="tollgate", error="invalid_token", error_description="[^"]+", resource_metadata="[^"]+"$/)
    t.equal(upstream.seen.length, before)
  })

  t.test('a token without the required scope: 403 insufficient_scope, upstream not reached', async t => {
    const before = upstream.seen.length
    const res = await get(nginxPort, '/admin/users', { authorization: `Bearer ${agent}` })
    t.equal(res.status, 403)
    const challenges = headerValues(res, 'www-authenticate')
    t.equal(challenges.length, 1)
    t.match(challenges[0], /error="insufficient_scope"/)
    t.match(challenges[0], /scope="tools:admin"/)
    t.same(headerValues(res, 'retry-after'), [], 'no Retry-After when not rate-limited')
    t.equal(upstream.seen.length, before)
  })

  t.test('a token with the required scope passes the admin location', async t => {
    const res = await get(nginxPort, '/admin/users', { authorization: `Bearer ${operator}` })
    t.equal(res.status, 200, res.body)
    t.equal(JSON.parse(res.body).subject, 'operator')
  })

  t.test('the internal validation location cannot be called from outside', async t => {
    const res = await get(nginxPort, '/_tollgate/validate', { authorization: `Bearer ${agent}` })
    t.equal(res.status, 404)
  })

  t.test('a rate-limited caller gets 403 with Retry-After through nginx', async t => {
    for (let i = 0; i < 3; i++) t.equal((await get(nginxPort, '/orders', { authorization: `Bearer ${burst}` })).status, 200)
    const before = upstream.seen.length
    const res = await get(nginxPort, '/orders', { authorization: `Bearer ${burst}` })
    t.equal(res.status, 403)
    const retryAfter = headerValues(res, 'retry-after')
    t.equal(retryAfter.length, 1)
    t.ok(Number(retryAfter[0]) > 0, 'Retry-After is a positive number of seconds')
    t.equal(upstream.seen.length, before)
  })

  t.test('metering through nginx: the balance is passed on, then a spent quota is 429 for the client', async t => {
    const quota = async (): Promise<any> => (await app.inject({ method: 'GET', url: '/quota', headers: { authorization: `Bearer ${metered}` } })).json()
    const balance = (res: Answer): string[][] => ['x-auth-quota-limit', 'x-auth-quota-remaining', 'x-auth-quota-reset'].map(name => headerValues(res, name))

    // An unmetered location: the balance reaches the client and the application; nothing is charged.
    const plain = await get(nginxPort, '/orders', { authorization: `Bearer ${metered}`, 'x-auth-quota-remaining': '999' })
    t.equal(plain.status, 200, plain.body)
    t.match(balance(plain), [['1'], ['1'], [/^[1-9][0-9]*$/]], 'one X-Auth-Quota-* each, with Tollgate\'s values')
    t.ok(Number(headerValues(plain, 'x-auth-quota-reset')[0]) <= 86400)
    t.equal(JSON.parse(plain.body).remaining, '1', 'the application gets Tollgate\'s balance, not the client\'s forged one')
    t.match(await quota(), { used: 0 })

    // The metered location charges 1: the answer carries the balance after the charge.
    const before = upstream.seen.length
    const charged = await get(nginxPort, '/metered/report', { authorization: `Bearer ${metered}` })
    t.equal(charged.status, 200, charged.body)
    t.same(headerValues(charged, 'x-auth-quota-remaining'), ['0'])
    t.equal(JSON.parse(charged.body).path, '/metered/report')
    t.equal(upstream.seen.length, before + 1)
    t.match(await quota(), { used: 1, remaining: 0 }, 'the charge is on the counter GET /quota reads')

    // Spent: 429 for the client, with Retry-After and the RateLimit fields; the application is not asked.
    const spent = await get(nginxPort, '/metered/report', { authorization: `Bearer ${metered}` })
    t.equal(spent.status, 429, spent.body)
    t.match(JSON.parse(spent.body), { status: 429, code: 'quota_exceeded' })
    t.equal(spent.headers['content-type'], 'application/problem+json')
    const retryAfter = headerValues(spent, 'retry-after')
    t.equal(retryAfter.length, 1)
    t.ok(Number(retryAfter[0]) > 0 && Number(retryAfter[0]) <= 86400, 'Retry-After: seconds until the window resets')
    t.same(headerValues(spent, 'ratelimit-policy'), ['"quota";q=1;w=86400'])
    t.same(headerValues(spent, 'ratelimit'), [`"quota";r=0;t=${retryAfter[0] ?? ''}`])
    t.equal(upstream.seen.length, before + 1, 'the application was not reached')
    t.match(await quota(), { used: 1 }, 'a refused charge takes nothing')
  })

  t.test('a token without a quota passes the metered location uncharged and without a balance', async t => {
    const res = await get(nginxPort, '/metered/report', { authorization: `Bearer ${operator}` })
    t.equal(res.status, 200, res.body)
    t.same(headerValues(res, 'x-auth-quota-remaining'), [])
    t.same(headerValues(res, 'x-auth-quota-limit'), [])
    t.equal(JSON.parse(res.body).remaining, null)
  })

  // Last: it stops Tollgate. With no answer from Tollgate the metered location fails closed as a
  // 500, not as the 429 the previous test saw (the @tollgate_500 location tells them apart).
  t.test('Tollgate gone: the metered location answers 500, the application is not reached', async t => {
    await app.close()
    const before = upstream.seen.length
    const res = await get(nginxPort, '/metered/report', { authorization: `Bearer ${metered}` })
    t.equal(res.status, 500, res.body)
    t.match(JSON.parse(res.body), { status: 500, code: 'internal_error' })
    t.same(headerValues(res, 'retry-after'), [])
    t.equal(upstream.seen.length, before)
  })
}
