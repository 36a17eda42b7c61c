import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { ConfigError, loadConfig, parseDuration } from '../src/config.js'
import { CLIENT_SECRET_HASH, tempDir } from './helper.js'

const env = { TOLLGATE_SECRET: 's'.repeat(32) }

t.test('durations', async t => {
  t.equal(parseDuration('30s', 'k'), 30)
  t.equal(parseDuration('5m', 'k'), 300)
  t.equal(parseDuration('1h', 'k'), 3600)
  t.equal(parseDuration('1d', 'k'), 86400)
  t.equal(parseDuration('250ms', 'k'), 0.25)
  t.equal(parseDuration(45, 'k'), 45)
  t.equal(parseDuration('45', 'k'), 45)
  t.throws(() => parseDuration('5 minutes', 'tokens.accessTtl'), { message: 'config: tokens.accessTtl: must be a duration such as 30s, 5m, 1h, 1d or a number of seconds (got "5 minutes")' })
  t.throws(() => parseDuration(-1, 'k'), ConfigError)
})

t.test('defaults follow the contract', async t => {
  const c = loadConfig({ raw: {}, env })
  t.same(c.server, { host: '0.0.0.0', port: 8080, trustProxy: false, bodyLimit: 1048576, requestTimeout: 30, headersTimeout: 10, keepAliveTimeout: 5, publicUrl: 'http://localhost:8080' })
  t.same(c.tokens, { accessTtl: 300, refreshTtl: 86400, refreshIdleTtl: 86400, leeway: 30, maxLifetime: 86400 })
  t.match(c.keys, { algorithm: 'ES256', rotateAfter: 90 * 86400, jwksMaxAge: 300 })
  t.same(c.rateLimits, { token: { max: 30, window: 60 }, perIp: { max: 600, window: 60 }, perSubject: { max: 300, window: 60 }, failedAuthPerClient: { max: 20, window: 300 }, failedAuthPerIp: { max: 20, window: 300 }, concurrentSecretChecks: 3, ipv6Prefix: 64, onStoreError: 'fail-closed' })
  t.same(c.introspection, { public: false })
  t.equal(c.issuer, 'http://localhost:8080')
})

t.test('a YAML file with environment overrides', async t => {
  const dir = tempDir(t)
  const file = join(dir, 'tollgate.yaml')
  writeFileSync(file, `
server: { port: 9000 }
tokens: { accessTtl: 10m }
clients:
  - id: agent_001
    secretEnv: AGENT_SECRET
    scopes: [tools:call]
    audiences: [tool:chat]
    quota: { limit: 5, window: 1h }
tools:
  - { name: chat, url: "http://127.0.0.1:9001/chat", audience: "tool:chat", timeout: 2s, auth: { header: X-Api-Key, valueEnv: CHAT_KEY } }
`)
  const c = loadConfig({ configPath: file, env: { ...env, TOLLGATE_PORT: '9100', TOLLGATE_HOST: '127.0.0.1', TOLLGATE_DATA_DIR: dir, TOLLGATE_LOG_LEVEL: 'warn', AGENT_SECRET: 'x'.repeat(20), CHAT_KEY: 'k-123' } })
  t.equal(c.server.port, 9100)
  t.equal(c.server.host, '127.0.0.1')
  t.equal(c.dataDir, dir)
  t.equal(c.logLevel, 'warn')
  t.equal(c.tokens.accessTtl, 600)
  t.match(c.clients[0], { id: 'agent_001', secret: 'x'.repeat(20), quota: { limit: 5, window: 3600 }, refresh: false, exchange: false, claims: {} })
  t.match(c.tools[0], { name: 'chat', timeout: 2, cost: 1, refundOnFailure: true, auth: { header: 'X-Api-Key', value: 'k-123' } })
  t.equal(c.source, file)

  const redis = loadConfig({ configPath: file, env: { ...env, TOLLGATE_REDIS_URL: 'redis://127.0.0.1:6379', AGENT_SECRET: 'x'.repeat(20), CHAT_KEY: 'k' } })
  t.same(redis.store, { redis: 'redis://127.0.0.1:6379', timeout: 2, keyPrefix: 'tollgate:' })
})

t.test('a bad value stops with one line naming the key', async t => {
  const cases: Array<[unknown, Record<string, string>, RegExp]> = [
    [{ tokens: { accessTtl: 'soon' } }, {}, /^config: tokens\.accessTtl: must be a duration/],
    [{ tokens: { acessTtl: '5m' } }, {}, /^config: tokens\.acessTtl: unknown key$/],
    [{ server: { port: 70000 } }, {}, /^config: server\.port: /],
    [{ keys: { algorithm: 'HS256' } }, {}, /^config: keys\.algorithm: /],
    [{ issuer: 'not a url' }, {}, /^config: issuer: must be an http\(s\) URL$/],
    [{ clients: [{ id: 'a', scopes: [] }] }, {}, /^config: clients\.0: set exactly one of secretHash or secretEnv$/],
    [{ clients: [{ id: 'a', secretEnv: 'MISSING_ENV' }] }, {}, /^config: clients\.0\.secretEnv: environment variable MISSING_ENV is not set$/],
    [{ clients: [{ id: 'a', secretHash: CLIENT_SECRET_HASH }, { id: 'a', secretHash: CLIENT_SECRET_HASH }] }, {}, /^config: clients\.1\.id: duplicate client id a$/],
    [{ clients: [{ id: 'a', secretHash: CLIENT_SECRET_HASH, claims: { sub: 'root' } }] }, {}, /^config: clients\.0\.claims\.sub: is a registered claim/],
    [{ tools: [{ name: 't', url: 'ftp://x', audience: 'a' }] }, {}, /^config: tools\.0\.url: must be http or https$/],
    [{ trustedIssuers: [{ issuer: 'https://idp', jwksUri: 'http://idp.example/jwks', audiences: ['x'] }] }, {}, /^config: trustedIssuers\.0\.jwksUri: must be https/],
    [{ store: { sqlite: 'a.db', redis: 'redis://x' } }, {}, /^config: store: set either sqlite or redis, not both$/],
    [{}, { TOLLGATE_SECRET: 'short' }, /^config: TOLLGATE_SECRET: must be at least 32 bytes/],
    [{}, { TOLLGATE_PORT: 'eighty' }, /^config: TOLLGATE_PORT: must be an integer$/]
  ]
  for (const [raw, extraEnv, message] of cases) {
    t.throws(() => loadConfig({ raw, env: { ...env, ...extraEnv } }), { name: 'ConfigError', message }, String(message))
  }
  const dir = tempDir(t)
  writeFileSync(join(dir, 'bad.yaml'), 'server: [unclosed')
  t.throws(() => loadConfig({ configPath: join(dir, 'bad.yaml'), env }), { message: /^config: \(root\): .*bad\.yaml is not valid YAML/ })
  t.throws(() => loadConfig({ configPath: join(dir, 'missing.yaml'), env }), { message: /cannot read .*missing\.yaml: ENOENT/ })
})

t.test('a client secretHash that is not a scrypt hash fails at startup', async t => {
  const { ClientRegistry } = await import('../src/clients/index.js')
  const c = loadConfig({ raw: { clients: [{ id: 'a', secretHash: 'plaintext-password' }] }, env })
  t.throws(() => new ClientRegistry(c.clients), { message: /^config: clients\.0\.secretHash: not a scrypt hash/ })
})

t.test('the built-in demo configuration generates its client secret once (0600)', async t => {
  const dir = tempDir(t)
  const first = loadConfig({ env: { ...env, TOLLGATE_DATA_DIR: dir } })
  t.equal(first.demo?.created, true)
  const again = loadConfig({ env: { ...env, TOLLGATE_DATA_DIR: dir } })
  t.equal(again.demo?.created, false)
  t.equal(again.clients[0]?.secret, first.clients[0]?.secret)
  t.ok((first.clients[0]?.secret ?? '').length >= 32)
  const { statSync } = await import('node:fs')
  t.equal(statSync(join(dir, 'demo-client-secret')).mode & 0o777, 0o600)
})
