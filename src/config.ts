// Configuration: the only reader of the config file and of process.env. It reads both once,
// converts durations to seconds, applies defaults and validates everything with one TypeBox
// schema. A bad value throws ConfigError with one line naming the key; it never lets a
// half-valid config through.
import proxyAddr from '@fastify/proxy-addr'
import { randomBytes } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { isIP } from 'node:net'
import { join, resolve } from 'node:path'
import { Type, type Static } from 'typebox'
import { Value } from 'typebox/value'
import { parse as parseYaml } from 'yaml'
import { compileCostExpr, type Pricer } from './metering/price.js'

export class ConfigError extends Error {
  constructor (readonly key: string, message: string) {
    super(`config: ${key === '' ? '(root)' : key}: ${message}`)
    this.name = 'ConfigError'
  }
}

/** A `costExpr` compiled (CONTRACT §10), or a ConfigError naming `key`. */
export function compileCost (source: string, key: string): Pricer {
  try {
    return compileCostExpr(source)
  } catch (err) {
    throw new ConfigError(key, (err as Error).message)
  }
}

const DURATION_UNITS: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 }

/** `30s`, `5m`, `1h`, `1d`, `250ms` or a bare number of seconds → seconds. */
export function parseDuration (value: unknown, key: string): number {
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) return value
  if (typeof value === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(value)
    if (m !== null) return Number(m[1]) * (DURATION_UNITS[m[2] ?? 's'] ?? 1)
  }
  throw new ConfigError(key, `must be a duration such as 30s, 5m, 1h, 1d or a number of seconds (got ${JSON.stringify(value)})`)
}

const Seconds = Type.Number({ minimum: 0 })
const PositiveSeconds = Type.Number({ exclusiveMinimum: 0 })
const Name = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$' })
const ScopeToken = Type.String({ pattern: '^[\\x21\\x23-\\x5B\\x5D-\\x7E]+$' }) // RFC 6749 §3.3
const Limit = Type.Object({ max: Type.Integer({ minimum: 1 }), window: PositiveSeconds }, { additionalProperties: false })
const Algorithm = Type.Union([Type.Literal('ES256'), Type.Literal('EdDSA'), Type.Literal('RS256')])

const ClientSchema = Type.Object({
  id: Name,
  secretHash: Type.Optional(Type.String({ minLength: 1 })),
  secretEnv: Type.Optional(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$' })),
  /** Filled from secretEnv (or the demo secret file) by this module; never written in YAML. */
  secret: Type.Optional(Type.String({ minLength: 1 })),
  scopes: Type.Array(ScopeToken, { default: [] }),
  audiences: Type.Array(Type.String({ minLength: 1 }), { default: [] }),
  quota: Type.Optional(Type.Object({ limit: Type.Integer({ minimum: 1 }), window: Type.Integer({ minimum: 1 }) }, { additionalProperties: false })),
  refresh: Type.Boolean({ default: false }),
  exchange: Type.Boolean({ default: false }),
  /** RFC 9449 (CONTRACT §12): optional binds a token when a DPoP proof comes with the request; required refuses a request without one. */
  dpop: Type.Optional(Type.Union([Type.Literal('optional'), Type.Literal('required')])),
  accessTtl: Type.Optional(PositiveSeconds),
  claims: Type.Record(Type.String(), Type.Union([Type.String(), Type.Number(), Type.Boolean(), Type.Array(Type.String())]), { default: {} })
}, { additionalProperties: false })

const TrustedIssuerSchema = Type.Object({
  issuer: Type.String({ minLength: 1 }),
  jwksUri: Type.String({ minLength: 1 }),
  audiences: Type.Array(Type.String({ minLength: 1 }), { minItems: 1 }),
  algorithms: Type.Array(Type.Union([Type.Literal('ES256'), Type.Literal('ES384'), Type.Literal('RS256'), Type.Literal('PS256'), Type.Literal('EdDSA')]), { minItems: 1, default: ['ES256', 'RS256'] })
}, { additionalProperties: false })

const ToolAuth = Type.Union([
  Type.Literal('token'),
  Type.Literal('none'),
  Type.Object({ header: Type.String({ pattern: '^[A-Za-z0-9-]+$' }), valueEnv: Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$' }), value: Type.Optional(Type.String()) }, { additionalProperties: false })
])

const ToolSchema = Type.Object({
  name: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$' }),
  url: Type.String({ minLength: 1 }),
  audience: Type.String({ minLength: 1 }),
  scopes: Type.Array(ScopeToken, { default: [] }),
  cost: Type.Integer({ minimum: 0, default: 1 }),
  // A CEL expression priced per call (CONTRACT §10, src/metering/price.ts); replaces `cost` when set.
  costExpr: Type.Optional(Type.String({ minLength: 1 })),
  // The tool may report what a call really cost in a Tollgate-Cost header or trailer (CONTRACT §10).
  settle: Type.Optional(Type.Boolean({ default: false })),
  timeout: Type.Number({ exclusiveMinimum: 0, default: 30 }),
  auth: Type.Optional(ToolAuth),
  refundOnFailure: Type.Boolean({ default: true }),
  websocket: Type.Boolean({ default: false }),
  // `mcp`: an MCP server speaking Streamable HTTP at `url`, reached at /call/<name> (CONTRACT §12).
  protocol: Type.Optional(Type.Union([Type.Literal('http'), Type.Literal('mcp')], { default: 'http' })),
  // MCP tool name (or "*", the default entry) → the scopes a `tools/call` of it needs and its cost.
  mcpTools: Type.Optional(Type.Record(Type.String({ minLength: 1, maxLength: 128 }), Type.Object({
    scopes: Type.Optional(Type.Array(ScopeToken)),
    cost: Type.Optional(Type.Integer({ minimum: 0 })),
    costExpr: Type.Optional(Type.String())
  }, { additionalProperties: false }))),
  // The largest WebSocket message (bytes) accepted from either side; larger ones close with 1009.
  maxPayload: Type.Optional(Type.Integer({ minimum: 1, maximum: 2 ** 31 - 1, default: 1_048_576 }))
}, { additionalProperties: false })

// OpenTelemetry traces (docs/tracing.md): off unless an OTLP/HTTP endpoint is configured, here or
// through the standard OTEL_* variables (applyOtelEnv).
const TracingSchema = Type.Object({
  /** The OTLP/HTTP base URL, as OTEL_EXPORTER_OTLP_ENDPOINT: spans go to `<otlpEndpoint>/v1/traces`. */
  otlpEndpoint: Type.Optional(Type.String({ minLength: 1 })),
  /** The full traces URL, as OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, used as it is; wins over otlpEndpoint. */
  otlpTracesEndpoint: Type.Optional(Type.String({ minLength: 1 })),
  /** The `service.name` of every span. */
  serviceName: Type.String({ minLength: 1, default: 'tollgate' }),
  /** The share of new traces recorded (a caller's sampled flag is followed); all when absent. */
  sampleRatio: Type.Optional(Type.Number({ minimum: 0, maximum: 1 })),
  /** false turns tracing off even with an endpoint (OTEL_SDK_DISABLED=true). */
  enabled: Type.Boolean({ default: true })
}, { additionalProperties: false, default: {} })

export const ConfigSchema = Type.Object({
  server: Type.Object({
    host: Type.String({ default: '0.0.0.0' }),
    port: Type.Integer({ minimum: 0, maximum: 65535, default: 8080 }),
    trustProxy: Type.Union([Type.Boolean(), Type.String(), Type.Array(Type.String()), Type.Integer({ minimum: 0 })], { default: false }),
    bodyLimit: Type.Integer({ minimum: 1024, default: 1048576 }),
    requestTimeout: Type.Number({ minimum: 0, default: 30 }),
    headersTimeout: Type.Number({ minimum: 0, default: 10 }),
    keepAliveTimeout: Type.Number({ minimum: 0, default: 5 }),
    /** The gateway's public base URL (CONTRACT §12); a tool's resource URI is `<publicUrl>/call/<tool>`. Default: issuer. */
    publicUrl: Type.Optional(Type.String({ minLength: 1 }))
  }, { additionalProperties: false, default: {} }),
  issuer: Type.String({ minLength: 1, default: 'http://localhost:8080' }),
  dataDir: Type.String({ minLength: 1, default: './data' }),
  logLevel: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map(l => Type.Literal(l)), { default: 'info' }),
  /** One JSON line per request at `info` (src/plugins/access-log.ts); false turns it off. */
  accessLog: Type.Boolean({ default: true }),
  store: Type.Object({
    sqlite: Type.Optional(Type.String({ minLength: 1 })),
    /** redis://, rediss://, redis+sentinel://host:port,.../master, redis+cluster://host:port,... */
    redis: Type.Optional(Type.String({ pattern: '^rediss?(\\+(sentinel|cluster))?://' })),
    /** Prepended to every Redis key: several deployments can share one Redis. */
    keyPrefix: Type.String({ pattern: '^[^{}]*$', default: 'tollgate:' }),
    /** How long a store operation may take before the request fails closed with 503. */
    timeout: Type.Number({ exclusiveMinimum: 0, default: 2 })
  }, { additionalProperties: false, default: {} }),
  keys: Type.Object({
    algorithm: Type.Union([Algorithm], { default: 'ES256' }),
    rotateAfter: Type.Number({ exclusiveMinimum: 0, default: 90 * 86400 }),
    /** How long a new key is published before it signs: at least the JWKS max-age plus one reload. */
    publishAhead: Type.Optional(Seconds),
    /**
     * How often each replica re-reads the key set (and rotates when due). At most a minute: a running
     * server picks up a rotation within 60 s (CONTRACT §8).
     */
    reloadInterval: Type.Number({ exclusiveMinimum: 0, maximum: 60, default: 10 }),
    /** JWKS `Cache-Control: max-age`. */
    jwksMaxAge: Type.Number({ minimum: 0, default: 300 })
  }, { additionalProperties: false, default: {} }),
  tokens: Type.Object({
    accessTtl: Type.Number({ exclusiveMinimum: 0, default: 300 }),
    refreshTtl: Type.Number({ exclusiveMinimum: 0, default: 86400 }),
    refreshIdleTtl: Type.Number({ exclusiveMinimum: 0, default: 86400 }),
    leeway: Type.Number({ minimum: 0, maximum: 300, default: 30 }),
    maxLifetime: Type.Number({ exclusiveMinimum: 0, default: 86400 })
  }, { additionalProperties: false, default: {} }),
  introspection: Type.Object({ public: Type.Boolean({ default: false }) }, { additionalProperties: false, default: {} }),
  forwardAuth: Type.Object({
    /** The audience GET /validate requires when the proxy names none (`?audience=`). */
    defaultAudience: Type.Optional(Type.String({ minLength: 1 }))
  }, { additionalProperties: false, default: {} }),
  metrics: Type.Object({
    /** An environment variable holding a bearer token that GET /metrics then requires. */
    tokenEnv: Type.Optional(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$' })),
    /** Filled from tokenEnv by this module; never written in YAML. */
    token: Type.Optional(Type.String())
  }, { additionalProperties: false, default: {} }),
  rateLimits: Type.Object({
    token: Type.Intersect([Limit], { default: { max: 30, window: 60 } }),
    perIp: Type.Intersect([Limit], { default: { max: 600, window: 60 } }),
    perSubject: Type.Intersect([Limit], { default: { max: 300, window: 60 } }),
    /** Failed client authentications (wrong secret, unknown client) per presented client id, and per client IP. */
    failedAuthPerClient: Type.Intersect([Limit], { default: { max: 20, window: 300 } }),
    failedAuthPerIp: Type.Intersect([Limit], { default: { max: 20, window: 300 } }),
    /** Secret checks (scrypt) running at once; more wait in a short queue, then get 503. Keep below UV_THREADPOOL_SIZE (4). */
    concurrentSecretChecks: Type.Integer({ minimum: 1, maximum: 64, default: 3 }),
    /** Per-IP limits count an IPv6 client by its network of this prefix length. */
    ipv6Prefix: Type.Integer({ minimum: 1, maximum: 128, default: 64 }),
    /** What rate limiting does when the store cannot be reached: refuse (503) or let requests through. */
    onStoreError: Type.Union([Type.Literal('fail-closed'), Type.Literal('fail-open')], { default: 'fail-closed' })
  }, { additionalProperties: false, default: {} }),
  tracing: TracingSchema,
  clients: Type.Array(ClientSchema, { default: [] }),
  trustedIssuers: Type.Array(TrustedIssuerSchema, { default: [] }),
  tools: Type.Array(ToolSchema, { default: [] })
}, { additionalProperties: false })

export type Config = Static<typeof ConfigSchema> & {
  /** The key-encryption secret from TOLLGATE_SECRET, if set. */
  secret?: string
  /** Set when no config file was given and the built-in demo configuration is in use. */
  demo?: { clientId: string, secretFile: string, created: boolean }
  /** Where the config came from, for the startup log line. */
  source: string
}
export type ClientConfig = Static<typeof ClientSchema>
export type ToolConfig = Static<typeof ToolSchema>
export type TrustedIssuerConfig = Static<typeof TrustedIssuerSchema>

// Keys holding durations, as paths; `*` stands for every array element.
const DURATION_PATHS = [
  'server.requestTimeout', 'server.headersTimeout', 'server.keepAliveTimeout', 'store.timeout',
  'keys.rotateAfter', 'keys.publishAhead', 'keys.jwksMaxAge', 'keys.reloadInterval',
  'tokens.accessTtl', 'tokens.refreshTtl', 'tokens.refreshIdleTtl', 'tokens.leeway', 'tokens.maxLifetime',
  'rateLimits.token.window', 'rateLimits.perIp.window', 'rateLimits.perSubject.window',
  'rateLimits.failedAuthPerClient.window', 'rateLimits.failedAuthPerIp.window',
  'clients.*.accessTtl', 'clients.*.quota.window', 'tools.*.timeout'
]

/**
 * `keys.publishAhead`, or by default the JWKS cache lifetime plus two key reloads and 30 s: a new key
 * is in every cached JWKS before any replica signs with it.
 */
export function publishAhead (keys: Config['keys']): number {
  return keys.publishAhead ?? keys.jwksMaxAge + 2 * keys.reloadInterval + 30
}

export interface LoadOptions {
  /** `--config PATH`; falls back to TOLLGATE_CONFIG, then to the built-in demo configuration. */
  configPath?: string
  env?: NodeJS.ProcessEnv
  /** A config object instead of a file (tests). */
  raw?: unknown
}

export function loadConfig (options: LoadOptions = {}): Config {
  const env = options.env ?? process.env
  const path = options.configPath ?? nonEmpty(env.TOLLGATE_CONFIG)
  let raw: unknown
  let source: string
  if (options.raw !== undefined) {
    raw = structuredClone(options.raw)
    source = 'inline'
  } else if (path !== undefined) {
    let text: string
    try {
      text = readFileSync(path, 'utf8')
    } catch (err) {
      throw new ConfigError('', `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`)
    }
    try {
      raw = parseYaml(text) ?? {}
    } catch (err) {
      throw new ConfigError('', `${path} is not valid YAML: ${(err as Error).message.split('\n')[0] ?? ''}`)
    }
    source = resolve(path)
  } else {
    raw = demoConfig()
    source = 'built-in demo configuration'
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ConfigError('', 'must be a mapping')
  const doc = raw as Record<string, any>

  applyEnv(doc, env)
  applyOtelEnv(doc, env)
  for (const path of DURATION_PATHS) convertDurations(doc, path.split('.'), [])

  const withDefaults = Value.Default(ConfigSchema, doc) as unknown
  const first = [...Value.Errors(ConfigSchema, withDefaults)][0]
  if (first !== undefined) throw new ConfigError(keyOf(first.instancePath), explain(first))
  const config = withDefaults as Config
  config.source = source
  if (env.TOLLGATE_SECRET !== undefined) config.secret = env.TOLLGATE_SECRET

  check(config, env)
  if (source === 'built-in demo configuration') config.demo = ensureDemoSecret(config)
  return config
}

function nonEmpty (value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value
}

function applyEnv (doc: Record<string, any>, env: NodeJS.ProcessEnv): void {
  const section = (name: string): Record<string, any> => {
    if (typeof doc[name] !== 'object' || doc[name] === null) doc[name] = {}
    return doc[name]
  }
  if (nonEmpty(env.TOLLGATE_PORT) !== undefined) {
    const port = Number(env.TOLLGATE_PORT)
    if (!Number.isInteger(port)) throw new ConfigError('TOLLGATE_PORT', 'must be an integer')
    section('server').port = port
  }
  if (nonEmpty(env.TOLLGATE_HOST) !== undefined) section('server').host = env.TOLLGATE_HOST
  if (nonEmpty(env.TOLLGATE_DATA_DIR) !== undefined) doc.dataDir = env.TOLLGATE_DATA_DIR
  if (nonEmpty(env.TOLLGATE_LOG_LEVEL) !== undefined) doc.logLevel = env.TOLLGATE_LOG_LEVEL
  if (nonEmpty(env.TOLLGATE_REDIS_URL) !== undefined) {
    const store = section('store')
    delete store.sqlite
    store.redis = env.TOLLGATE_REDIS_URL
  }
}

/**
 * The OpenTelemetry SDK's standard variables that name where and how traces go. The exporter
 * itself still reads its transport variables (OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _COMPRESSION,
 * _CERTIFICATE), so an API key for a hosted backend never passes through Tollgate's config.
 */
function applyOtelEnv (doc: Record<string, any>, env: NodeJS.ProcessEnv): void {
  const names = ['OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', 'OTEL_SERVICE_NAME', 'OTEL_SDK_DISABLED', 'OTEL_TRACES_SAMPLER']
  if (names.every(name => nonEmpty(env[name]) === undefined)) return
  if (typeof doc.tracing !== 'object' || doc.tracing === null) doc.tracing = {}
  const tracing = doc.tracing as Record<string, unknown>
  if (nonEmpty(env.OTEL_EXPORTER_OTLP_ENDPOINT) !== undefined) tracing.otlpEndpoint = env.OTEL_EXPORTER_OTLP_ENDPOINT
  if (nonEmpty(env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) !== undefined) tracing.otlpTracesEndpoint = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
  if (nonEmpty(env.OTEL_SERVICE_NAME) !== undefined) tracing.serviceName = env.OTEL_SERVICE_NAME
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') tracing.enabled = false
  const sampler = nonEmpty(env.OTEL_TRACES_SAMPLER)?.trim().toLowerCase()
  if (sampler === undefined) return
  // Tollgate always follows a caller's sampled flag (parent-based); only the root ratio is chosen.
  if (sampler === 'always_on' || sampler === 'parentbased_always_on') tracing.sampleRatio = 1
  else if (sampler === 'always_off' || sampler === 'parentbased_always_off') tracing.sampleRatio = 0
  else if (sampler === 'traceidratio' || sampler === 'parentbased_traceidratio') {
    const ratio = Number(nonEmpty(env.OTEL_TRACES_SAMPLER_ARG) ?? '1')
    if (!Number.isFinite(ratio) || ratio < 0 || ratio > 1) throw new ConfigError('OTEL_TRACES_SAMPLER_ARG', 'must be a number from 0 to 1')
    tracing.sampleRatio = ratio
  } else throw new ConfigError('OTEL_TRACES_SAMPLER', 'must be always_on, always_off, traceidratio or their parentbased_ forms')
}

function convertDurations (node: any, rest: string[], trail: string[]): void {
  if (node === null || typeof node !== 'object') return
  const [head, ...tail] = rest
  if (head === undefined) return
  if (head === '*') {
    if (!Array.isArray(node)) return
    node.forEach((item, i) => convertDurations(item, tail, [...trail, String(i)]))
    return
  }
  if (!(head in node)) return
  if (tail.length === 0) node[head] = parseDuration(node[head], [...trail, head].join('.'))
  else convertDurations(node[head], tail, [...trail, head])
}

function keyOf (pointer: string): string {
  return pointer.split('/').filter(Boolean).map(p => p.replace(/~1/g, '/').replace(/~0/g, '~')).join('.')
}

function explain (error: { keyword: string, message: string, params: any }): string {
  // An additional property is reported at its own path as the `false` schema.
  if (error.keyword === 'boolean' || error.keyword === 'additionalProperties') return 'unknown key'
  if (error.keyword === 'required') return `missing required key(s) ${JSON.stringify(error.params.requiredProperties ?? error.params)}`
  return error.message
}

// Rules one schema cannot say well: cross-field and semantic checks.
function check (config: Config, env: NodeJS.ProcessEnv): void {
  if (config.store.sqlite !== undefined && config.store.redis !== undefined) {
    throw new ConfigError('store', 'set either sqlite or redis, not both')
  }
  try {
    const issuer = new URL(config.issuer)
    if (issuer.protocol !== 'https:' && issuer.protocol !== 'http:') throw new Error('scheme')
  } catch {
    throw new ConfigError('issuer', 'must be an http(s) URL')
  }
  config.server.publicUrl = baseUrl(config.server.publicUrl ?? config.issuer, config.server.publicUrl === undefined ? 'issuer' : 'server.publicUrl')
  checkTrustProxy(config.server.trustProxy)
  checkTracing(config.tracing)
  if (config.tokens.accessTtl > config.tokens.maxLifetime) {
    throw new ConfigError('tokens.accessTtl', 'must not exceed tokens.maxLifetime')
  }
  if (config.secret !== undefined && Buffer.byteLength(config.secret) < 32) {
    throw new ConfigError('TOLLGATE_SECRET', 'must be at least 32 bytes (e.g. `openssl rand -base64 32`)')
  }
  if (config.metrics.token !== undefined) throw new ConfigError('metrics.token', 'plaintext tokens are not accepted: use metrics.tokenEnv')
  if (config.metrics.tokenEnv !== undefined) {
    const value = env[config.metrics.tokenEnv]
    if (value === undefined || value.length < 16) throw new ConfigError('metrics.tokenEnv', `environment variable ${config.metrics.tokenEnv} must hold a token of at least 16 characters`)
    config.metrics.token = value
  }
  const ids = new Set<string>()
  config.clients.forEach((client, i) => {
    const key = `clients.${i}`
    if (ids.has(client.id)) throw new ConfigError(`${key}.id`, `duplicate client id ${client.id}`)
    ids.add(client.id)
    if (client.secret !== undefined) throw new ConfigError(`${key}.secret`, 'plaintext secrets are not accepted: use secretHash or secretEnv')
    if ((client.secretHash === undefined) === (client.secretEnv === undefined)) {
      throw new ConfigError(key, 'set exactly one of secretHash or secretEnv')
    }
    if (client.secretEnv !== undefined) {
      const value = env[client.secretEnv]
      if (value === undefined || value === '') throw new ConfigError(`${key}.secretEnv`, `environment variable ${client.secretEnv} is not set`)
      client.secret = value
    }
    if (client.accessTtl !== undefined && client.accessTtl > config.tokens.maxLifetime) {
      throw new ConfigError(`${key}.accessTtl`, 'must not exceed tokens.maxLifetime')
    }
    for (const name of Object.keys(client.claims)) {
      if (RESERVED_CLAIMS.has(name)) throw new ConfigError(`${key}.claims.${name}`, 'is a registered claim Tollgate sets itself')
    }
  })
  config.trustedIssuers.forEach((ti, i) => {
    if (!isAllowedJwksUri(ti.jwksUri)) throw new ConfigError(`trustedIssuers.${i}.jwksUri`, 'must be https (http only to a loopback address)')
  })
  const names = new Set<string>()
  config.tools.forEach((tool, i) => {
    const key = `tools.${i}`
    if (names.has(tool.name)) throw new ConfigError(`${key}.name`, `duplicate tool name ${tool.name}`)
    names.add(tool.name)
    parseToolUrl(tool.url, `${key}.url`)
    if (tool.costExpr !== undefined) compileCost(tool.costExpr, `${key}.costExpr`)
    if (tool.protocol === 'mcp' && tool.websocket) throw new ConfigError(`${key}.websocket`, 'an MCP tool speaks Streamable HTTP, not WebSocket')
    if (tool.mcpTools !== undefined) {
      if (tool.protocol !== 'mcp') throw new ConfigError(`${key}.mcpTools`, 'only a tool with protocol: mcp has MCP tools')
      for (const [name, entry] of Object.entries(tool.mcpTools)) {
        if (entry.costExpr !== undefined) compileCost(entry.costExpr, `${key}.mcpTools.${name}.costExpr`)
      }
    }
    const auth = tool.auth
    if (typeof auth === 'object') {
      const value = env[auth.valueEnv]
      if (value === undefined || value === '') throw new ConfigError(`${key}.auth.valueEnv`, `environment variable ${auth.valueEnv} is not set`)
      if (/[\r\n\0]/.test(value)) throw new ConfigError(`${key}.auth.valueEnv`, 'value contains control characters')
      auth.value = value
    }
  })
}

/**
 * A hop count is refused: Tollgate's own address resolution would trust no proxy for it, so every
 * client behind the proxy would share the proxy's rate-limit buckets. Addresses are compiled here
 * as Fastify compiles them, so a typo stops startup with the key named.
 */
function checkTrustProxy (trustProxy: Config['server']['trustProxy']): void {
  if (typeof trustProxy === 'number') {
    throw new ConfigError('server.trustProxy', 'a hop count is not supported: list the proxies\' addresses or CIDRs (e.g. [10.0.0.0/8]), or set true')
  }
  if (typeof trustProxy === 'boolean') return
  try {
    proxyAddr.compile(typeof trustProxy === 'string' ? trustProxy.split(',').map(s => s.trim()) : trustProxy)
  } catch (err) {
    throw new ConfigError('server.trustProxy', (err as Error).message)
  }
}

/** OTLP endpoints are absolute http(s) URLs without credentials (send those as OTEL_EXPORTER_OTLP_HEADERS). */
function checkTracing (tracing: Config['tracing']): void {
  for (const key of ['otlpEndpoint', 'otlpTracesEndpoint'] as const) {
    const value = tracing[key]
    if (value === undefined) continue
    let url: URL
    try {
      url = new URL(value)
    } catch {
      throw new ConfigError(`tracing.${key}`, 'must be an absolute http(s) URL')
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ConfigError(`tracing.${key}`, 'must be http or https')
    if (url.username !== '' || url.password !== '') throw new ConfigError(`tracing.${key}`, 'must not carry credentials: use OTEL_EXPORTER_OTLP_HEADERS')
  }
}

/**
 * A public base URL (server.publicUrl, or the issuer standing in for it): absolute http(s), no
 * credentials, query or fragment; normalised (lower-case host, no trailing slash), so resource URIs
 * built from it are compared exactly and can be written into a header as a quoted string.
 */
export function baseUrl (value: string, key: string): string {
  const url = parseToolUrl(value, key)
  // An empty query or fragment (`https://gw/?`) parses away: refuse the marker too.
  if (value.includes('#') || value.includes('?')) throw new ConfigError(key, 'must not carry a query or fragment')
  return url.origin + url.pathname.replace(/\/+$/, '')
}

/** A tool's base URL: absolute http(s), no credentials, no query or fragment. */
export function parseToolUrl (value: string, key: string): URL {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    throw new ConfigError(key, 'must be an absolute http(s) URL')
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ConfigError(key, 'must be http or https')
  if (url.username !== '' || url.password !== '') throw new ConfigError(key, 'must not carry credentials')
  if (url.search !== '' || url.hash !== '') throw new ConfigError(key, 'must not carry a query or fragment')
  return url
}

export const RESERVED_CLAIMS = new Set(['iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'jti', 'client_id', 'scope', 'quota', 'act', 'fid', 'cnf', 'may_act'])

export function isAllowedJwksUri (uri: string): boolean {
  let url: URL
  try {
    url = new URL(uri)
  } catch {
    return false
  }
  if (url.protocol === 'https:') return true
  if (url.protocol !== 'http:') return false
  const host = url.hostname.replace(/^\[|\]$/g, '')
  if (host === 'localhost') return true
  if (isIP(host) === 4) return host.startsWith('127.')
  return host === '::1'
}

const DEMO_CLIENT = 'demo'

function demoConfig (): Record<string, unknown> {
  return {
    clients: [{
      id: DEMO_CLIENT,
      secretHash: 'pending', // replaced by ensureDemoSecret
      scopes: ['tools:call', 'tools:read'],
      audiences: ['tool:echo'],
      quota: { limit: 100, window: '1d' },
      refresh: true,
      exchange: true,
      claims: { role: 'demo' }
    }],
    tools: [{ name: 'echo', url: 'http://127.0.0.1:9001/echo', audience: 'tool:echo', scopes: ['tools:call'] }]
  }
}

// The demo client's secret is generated once at first start into the data directory (0600), so no
// secret that would work elsewhere ships in code or docs.
function ensureDemoSecret (config: Config): NonNullable<Config['demo']> {
  const dir = resolve(config.dataDir)
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  const secretFile = join(dir, 'demo-client-secret')
  let created = false
  if (!existsSync(secretFile)) {
    writeFileSync(secretFile, randomBytes(24).toString('base64url') + '\n', { mode: 0o600, flag: 'wx' })
    created = true
  }
  chmodSync(secretFile, 0o600)
  const client = config.clients.find(c => c.id === DEMO_CLIENT)
  if (client !== undefined) {
    delete client.secretHash
    client.secret = readFileSync(secretFile, 'utf8').trim()
  }
  return { clientId: DEMO_CLIENT, secretFile, created }
}
