// buildApp(config): registers the plugins and routes in an explicit order. The order is part of
// the security design (errors and request ids first, then state, then limits and auth, then
// routes), which is why nothing is autoloaded.
import formbody from '@fastify/formbody'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { Config } from './config.js'
import { createHttpServer, requestId } from './http.js'
import { logDestination } from './log-destination.js'
import { createContext, type RequestContext } from './pipeline/index.js'
import accessLogPlugin from './plugins/access-log.js'
import authPlugin from './plugins/auth.js'
import corePlugin, { type CoreOptions } from './plugins/core.js'
import errorsPlugin from './plugins/errors.js'
import lifecyclePlugin from './plugins/lifecycle.js'
import metricsPlugin from './plugins/metrics.js'
import rateLimitPlugin from './plugins/rate-limit.js'
import tracingPlugin from './plugins/tracing.js'
import adminRoutes from './routes/admin.js'
import callRoutes from './routes/call.js'
import discoveryRoutes from './routes/discovery.js'
import healthRoutes from './routes/health.js'
import metricsRoutes from './routes/metrics.js'
import quotaRoutes from './routes/quota.js'
import refreshRoutes from './routes/refresh.js'
import revokeRoutes from './routes/revoke.js'
import tokenRoutes from './routes/token.js'
import validateRoutes from './routes/validate.js'
import { addSharedSchemas } from './schemas/index.js'
import { sharedCompilers } from './schemas/compilers.js'

export interface BuildOptions extends Omit<CoreOptions, 'config'> {
  /** Fastify logger option; defaults to JSON logs at the configured level with redaction, written to stdout through a buffered asynchronous destination. */
  logger?: FastifyServerOptions['logger']
  loggerInstance?: FastifyServerOptions['loggerInstance']
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The pipeline's state for this request (src/pipeline/context.ts), made when it arrives. */
    ctx: RequestContext
  }
}

/** Paths that must never reach a log line (RFC 6750 tokens, client secrets, key material). */
export const REDACT_PATHS = [
  'req.headers.authorization', 'req.headers.cookie', 'req.headers["proxy-authorization"]', 'req.headers.dpop',
  'req.headers["x-api-key"]', 'res.headers["set-cookie"]',
  '*.client_secret', '*.secret', '*.token', '*.access_token', '*.refresh_token', '*.subject_token',
  '*.password', '*.privateKey', '*.privateEnc'
]

export function loggerOptions (config: Config): FastifyServerOptions['logger'] {
  return {
    level: config.logLevel,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    serializers: {
      // Method and path only: a query string may carry anything, and headers carry credentials.
      req: (req: { method: string, url: string, ip?: string, id?: string }) => ({
        method: req.method,
        url: req.url.split('?')[0],
        remoteAddress: req.ip
      })
    }
  }
}

type LevelName = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace'

/** A request logger that becomes a real pino child only when a line is actually written. */
class LazyLogger {
  #child: FastifyBaseLogger | undefined
  constructor (readonly parent: FastifyBaseLogger, readonly bindings: Record<string, unknown>, readonly opts: object) {}
  get level (): string { return this.#child?.level ?? this.parent.level }
  set level (level: string) { this.#real().level = level }
  #real (): FastifyBaseLogger { return (this.#child ??= this.parent.child(this.bindings, this.opts)) }
  #write (level: LevelName, args: unknown[]): void {
    if (this.#child !== undefined || this.isLevelEnabled(level)) (this.#real()[level] as (...a: unknown[]) => void)(...args)
  }

  isLevelEnabled (level: string): boolean {
    const logger = (this.#child ?? this.parent) as { isLevelEnabled?: (l: string) => boolean }
    return logger.isLevelEnabled?.(level) ?? true
  }
  fatal (...args: unknown[]): void { this.#write('fatal', args) }
  error (...args: unknown[]): void { this.#write('error', args) }
  warn (...args: unknown[]): void { this.#write('warn', args) }
  info (...args: unknown[]): void { this.#write('info', args) }
  debug (...args: unknown[]): void { this.#write('debug', args) }
  trace (...args: unknown[]): void { this.#write('trace', args) }
  silent (): void {}
  child (bindings: Record<string, unknown>, opts?: object): FastifyBaseLogger { return this.#real().child(bindings, opts) }
}

export async function buildApp (config: Config, options: BuildOptions = {}): Promise<FastifyInstance> {
  const http = {
    headersTimeout: config.server.headersTimeout * 1000,
    requestTimeout: config.server.requestTimeout * 1000,
    // Node checks header and request deadlines every connectionsCheckingInterval (30 s by
    // default): tighten it so a slow-headers client is cut off close to headersTimeout, with its
    // 408. A quarter of headersTimeout (100 ms to 1 s): at a full headersTimeout the check could
    // come as late as twice that, after the idle-socket timeout (requestTimeout) had already closed
    // the connection without a word.
    connectionsCheckingInterval: Math.max(100, Math.min(1000, config.server.headersTimeout * 1000 / 4)),
    maxHeaderSize: 16 * 1024
  }
  const fastifyOptions: FastifyServerOptions = {
    trustProxy: config.server.trustProxy as any,
    bodyLimit: config.server.bodyLimit,
    requestTimeout: config.server.requestTimeout * 1000,
    keepAliveTimeout: config.server.keepAliveTimeout * 1000,
    connectionTimeout: config.server.requestTimeout * 1000,
    requestIdHeader: false,
    genReqId: requestId,
    // Fastify's two lines per request are replaced by one access-log line (plugins/access-log.ts).
    logController: new LogController({ disableRequestLogging: true }),
    // The server Fastify would build, with the header deadlines above (not Fastify options).
    serverFactory: (handler) => createHttpServer(handler, {
      http,
      keepAliveTimeout: config.server.keepAliveTimeout * 1000,
      requestTimeout: config.server.requestTimeout * 1000,
      connectionTimeout: config.server.requestTimeout * 1000
    }),
    routerOptions: { maxParamLength: 2048 },
    // RFC 6749 §3.1: unrecognised parameters are ignored (removed), never an error.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: true } },
    schemaController: sharedCompilers
  }
  // Request loggers are created lazily: most requests never write a line at the configured level,
  // and a pino child (bindings serialised, redaction set up) per request is measurable.
  fastifyOptions.childLoggerFactory = (logger, bindings, opts) => new LazyLogger(logger, bindings, opts) as unknown as FastifyBaseLogger
  const destination = options.loggerInstance === undefined && options.logger === undefined ? logDestination() : undefined
  if (options.loggerInstance !== undefined) fastifyOptions.loggerInstance = options.loggerInstance
  else fastifyOptions.logger = options.logger ?? { ...loggerOptions(config) as object, stream: destination?.stream }
  const app = Fastify(fastifyOptions)
  // The buffered log lines reach stdout when the app closes (and close-with-grace closes it on a
  // signal or a fatal error: src/server.ts).
  if (destination !== undefined) app.addHook('onClose', (_app, done) => { destination.close(() => { done() }) })

  // Bodies are forms or JSON (and raw streams on /call, which registers its own parser): any
  // other media type is 415, not a string handed to a handler.
  app.removeContentTypeParser('text/plain')

  // Every request gets its id header and its pipeline context first. Callback style: this runs on
  // every request, and an async hook costs a promise per call.
  app.decorateRequest('ctx', null as unknown as RequestContext)
  app.addHook('onRequest', (request, reply, done) => {
    request.ctx = createContext(request.id, request.ip)
    reply.header('x-request-id', request.id)
    done()
  })
  // Spans start right after the context (and only when tracing is configured: src/tracing.ts).
  await app.register(tracingPlugin, { config: config.tracing })

  await app.register(errorsPlugin)
  await app.register(metricsPlugin)
  await app.register(formbody, { bodyLimit: config.server.bodyLimit })
  await app.register(corePlugin, { ...options, config })
  await app.register(rateLimitPlugin)
  await app.register(authPlugin)
  await app.register(lifecyclePlugin)
  await app.register(accessLogPlugin)

  addSharedSchemas(app)
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Tollgate',
        version: '1.0.0',
        contact: { name: 'Tollgate maintainers' },
        license: { name: 'Apache-2.0', identifier: 'Apache-2.0' },
        description: 'HTTP auth gateway: issues, validates, refreshes and revokes short-lived access tokens, publishes its signing keys, and proxies calls to downstream tools behind audience, scope, rate-limit and quota checks.'
      },
      // A template: the committed document is generic, a running gateway fills in its own issuer.
      servers: [{ url: '{issuer}', description: 'This gateway (its issuer URL)', variables: { issuer: { default: config.issuer, description: 'The gateway\'s public base URL' } } }],
      tags: [
        { name: 'tokens', description: 'Issue, refresh and revoke tokens' },
        { name: 'validation', description: 'Introspection and forward auth' },
        { name: 'keys', description: 'Public keys and server metadata' },
        { name: 'tools', description: 'Calls to downstream tools' },
        { name: 'operations', description: 'Health and metrics' },
        { name: 'admin', description: 'Admin API: clients, credits and the usage ledger at run time (token with audience and scope tollgate:admin)' }
      ],
      components: {
        securitySchemes: {
          bearerAuth: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT', description: 'An access token from POST /token' },
          clientBasic: { type: 'http', scheme: 'basic', description: 'Client credentials (client_secret_basic)' },
          adminAuth: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT', description: 'An access token from POST /token with audience `tollgate:admin` and scope `tollgate:admin` (issued to a client configured with them)' }
        }
      }
    },
    refResolver: {
      buildLocalReference: (json, _baseUri, _fragment, i) => (typeof json.$id === 'string' ? json.$id : `def-${i}`)
    }
  })
  await app.register(swaggerUi, { routePrefix: '/docs', uiConfig: { tryItOutEnabled: true } })

  await app.register(tokenRoutes)
  await app.register(refreshRoutes)
  await app.register(revokeRoutes)
  await app.register(validateRoutes)
  await app.register(discoveryRoutes)
  await app.register(healthRoutes)
  await app.register(metricsRoutes)
  await app.register(callRoutes)
  await app.register(quotaRoutes)
  await app.register(adminRoutes)
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger())

  return app
}
