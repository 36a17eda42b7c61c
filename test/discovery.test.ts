import { calculateJwkThumbprint } from 'jose'
import t from 'tap'
import { build, testConfig } from './helper.js'

t.test('GET /jwks and /.well-known/jwks.json publish the signing key', async t => {
  const app = await build(t)
  const a = await app.inject({ method: 'GET', url: '/jwks' })
  const b = await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })
  t.equal(a.statusCode, 200)
  t.equal(a.body, b.body)
  t.equal(a.headers['cache-control'], 'public, max-age=300')
  t.match(a.headers['content-type'], /^application\/json/)
  const { keys } = a.json()
  t.equal(keys.length, 1)
  const [key] = keys
  t.same(Object.keys(key).sort(), ['alg', 'crv', 'kid', 'kty', 'use', 'x', 'y'])
  t.match(key, { kty: 'EC', crv: 'P-256', alg: 'ES256', use: 'sig' })
  t.equal(key.kid, await calculateJwkThumbprint(key, 'sha256'), 'kid is the RFC 7638 thumbprint')
  t.equal(key.kid, app.keys.signingKey().kid)
  t.notOk('d' in key, 'never the private part')
})

t.test('GET /.well-known/oauth-authorization-server (RFC 8414)', async t => {
  const app = await build(t)
  const res = await app.inject({ method: 'GET', url: '/.well-known/oauth-authorization-server' })
  t.equal(res.statusCode, 200)
  t.same(res.json(), {
    issuer: 'https://tollgate.test',
    token_endpoint: 'https://tollgate.test/token',
    jwks_uri: 'https://tollgate.test/.well-known/jwks.json',
    introspection_endpoint: 'https://tollgate.test/validate',
    revocation_endpoint: 'https://tollgate.test/revoke',
    grant_types_supported: ['client_credentials', 'refresh_token', 'urn:ietf:params:oauth:grant-type:token-exchange'],
    response_types_supported: [],
    token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
    introspection_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
    revocation_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
    service_documentation: 'https://tollgate.test/docs',
    dpop_signing_alg_values_supported: ['ES256', 'EdDSA', 'Ed25519'],
    protected_resources: []
  })
})

t.test('GET /health reports each dependency and answers 503 when one fails', async t => {
  const app = await build(t)
  const ok = await app.inject({ method: 'GET', url: '/health' })
  t.equal(ok.statusCode, 200)
  t.same(ok.json(), { status: 'ok', checks: { store: 'ok', keys: 'ok' } })
  await app.store.close() // the database goes away under a running app
  const fail = await app.inject({ method: 'GET', url: '/health' })
  t.equal(fail.statusCode, 503)
  t.same(fail.json(), { status: 'fail', checks: { store: 'fail', keys: 'ok' } })
})

t.test('GET /metrics exposes Prometheus text with request durations and validations', async t => {
  const app = await build(t)
  await app.inject({ method: 'GET', url: '/validate' })
  const res = await app.inject({ method: 'GET', url: '/metrics' })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/plain/)
  t.match(res.body, /# TYPE tollgate_http_request_duration_seconds histogram/)
  t.match(res.body, /tollgate_http_request_duration_seconds_count\{method="GET",route="\/validate",status_code="401"\} 1/)
  t.match(res.body, /tollgate_validations_total\{endpoint="forward_auth",result="invalid_token"\} 1/)
  t.match(res.body, /tollgate_process_resident_memory_bytes/)
})

t.test('every answer carries X-Request-Id; a safe incoming one is kept, others replaced', async t => {
  const app = await build(t)
  for (const url of ['/health', '/jwks', '/nowhere', '/validate']) {
    const res = await app.inject({ method: 'GET', url })
    t.match(res.headers['x-request-id'], /^[0-9a-f-]{36}$/, url)
  }
  const kept = await app.inject({ method: 'GET', url: '/health', headers: { 'x-request-id': 'trace-abc.123' } })
  t.equal(kept.headers['x-request-id'], 'trace-abc.123')
  const replaced = await app.inject({ method: 'GET', url: '/health', headers: { 'x-request-id': 'bad id\twith "stuff"' } })
  t.match(replaced.headers['x-request-id'], /^[0-9a-f-]{36}$/)
  const notFound = await app.inject({ method: 'GET', url: '/nowhere' })
  t.equal(notFound.statusCode, 404)
  t.match(notFound.json(), { code: 'not_found', status: 404 })
  t.match(notFound.headers['content-type'], /^application\/problem\+json/)
})

t.test('server timeouts and the body limit come from the config', async t => {
  const app = await build(t, testConfig(t, { server: { requestTimeout: '20s', headersTimeout: '7s', keepAliveTimeout: '3s', bodyLimit: 4096 } }))
  t.equal(app.server.requestTimeout, 20_000)
  t.equal(app.server.headersTimeout, 7000)
  t.equal(app.server.keepAliveTimeout, 3000)
  t.equal(app.initialConfig.bodyLimit, 4096)
})
