// The access log (CONTRACT §7 `accessLog`): one JSON line per request, written when the answer is
// finished, in place of Fastify's two ("incoming request", "request completed"). Fields: time (by
// pino), reqId, method, path (never the query: it may carry anything), status, ms, ip, and when
// known sub, client_id and tool. Written at `info` through the app's logger, so redaction and the
// level apply as to every line; `accessLog: false` turns it off.
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { RequestContext } from '../pipeline/index.js'

/** The path of a request target, without its query. */
export function pathOf (url: string): string {
  const q = url.indexOf('?')
  return q === -1 ? url : url.slice(0, q)
}

export default fp(async function accessLog (app: FastifyInstance) {
  if (!app.config.accessLog) return
  const log = app.log as typeof app.log & { isLevelEnabled: (level: string) => boolean }
  app.addHook('onResponse', (request, reply, done) => {
    if (log.isLevelEnabled('info')) {
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
        tool: ctx?.tool?.name
      }, 'request')
    }
    done()
  })
}, { name: 'tollgate-access-log', dependencies: ['tollgate-core'] })
