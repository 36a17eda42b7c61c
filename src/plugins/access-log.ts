// The access log (CONTRACT §7 `accessLog`): one JSON line per request, written when the answer is
// finished, in place of Fastify's two ("incoming request", "request completed"). Fields: time,
// pid, hostname, reqId, method, path (never the query: it may carry anything), status, ms, ip, and
// when known sub, client_id, tool and (a metered call) charged. Written at `info` to the app logger's destination; off with
// `accessLog: false` or a level above info.
//
// The line goes through its own pino logger on the same destination, without the redaction pass:
// it is built from the fixed fields above, none of which holds a header, a body or a secret, and
// redaction (a walk of every wildcard path per line) was 8.5% of the CPU of GET /validate at
// defaults (bench/run.js --profile, recorded in docs/performance.md). test/forward-auth.test.ts
// pins the fields and that no token reaches the line.
import { hostname } from 'node:os'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import pino from 'pino'
import type { RequestContext } from '../pipeline/index.js'

/** The path of a request target, without its query. */
export function pathOf (url: string): string {
  const q = url.indexOf('?')
  return q === -1 ? url : url.slice(0, q)
}

interface LevelLogger {
  level: string
  info: (obj: object, msg: string) => void
  isLevelEnabled?: (level: string) => boolean
}

/** The logger the access lines go through: the app logger's destination without redaction, or the app logger itself. */
function accessLogger (app: FastifyInstance): LevelLogger {
  const log = app.log as unknown as LevelLogger & Record<symbol, unknown>
  const stream = log[pino.symbols.streamSym] as pino.DestinationStream | undefined
  if (stream === undefined || typeof log.isLevelEnabled !== 'function') return log
  return pino({ level: log.level, base: { pid: process.pid, hostname: hostname() } }, stream)
}

export default fp(async function accessLog (app: FastifyInstance) {
  if (!app.config.accessLog) return
  const log = accessLogger(app)
  if (log.isLevelEnabled?.('info') === false) return
  app.addHook('onResponse', (request, reply, done) => {
    // Null only for a request Fastify refused before its hooks ran (a malformed URL).
    const ctx = request.ctx as RequestContext | null
    const principal = ctx?.principal
    log.info({
      reqId: request.id,
      method: request.method,
      path: pathOf(request.url),
      status: reply.statusCode,
      ms: Math.round(reply.elapsedTime * 100) / 100,
      ip: ctx?.ip ?? request.ip,
      sub: principal?.sub,
      client_id: principal?.clientId ?? ctx?.clientId,
      tool: ctx?.tool?.name,
      // What a metered call was charged (after a refund or a settlement, CONTRACT §10).
      charged: ctx?.charged
    }, 'request')
    done()
  })
}, { name: 'tollgate-access-log', dependencies: ['tollgate-core'] })
