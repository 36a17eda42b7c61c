// The access log (CONTRACT §7 `accessLog`): one JSON line per request, written when the answer is
// finished, in place of Fastify's two ("incoming request", "request completed"). Fields: time,
// pid, hostname, reqId, method, path (never the query: it may carry anything), status, ms, ip, and
// when known sub, client_id, tool and (a metered call) charged. Written at `info` to the app logger's destination; off with
// `accessLog: false` or a level above info.
//
// The line is written straight to the app logger's destination, in pino's own format (the fields
// above after pino's `level`, `time`, `pid` and `hostname`, then `msg`), built here as one string:
// it holds only the fixed fields above, none of which is a header, a body or a secret, so neither
// the redaction pass (a walk of every wildcard path per line: 8.5% of the CPU of GET /validate at
// defaults, docs/performance.md) nor pino's general serialiser (a walk of the object's keys with
// serializer and stringifier lookups per key) is needed for it. Counted under callgrind at defaults
// (GET /validate, `TOLLGATE_LOG_LEVEL=info bash bench/instructions.sh`), this string against
// pino's `info()` saved 17,600 event-loop instructions per request. test/access-log-line.test.ts
// compares the line with the one pino writes for the same fields; test/forward-auth.test.ts pins
// the fields and that no token reaches the line.
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

/** What one access line says. */
export interface AccessFields {
  reqId: string
  method: string
  path: string
  status: number
  ms: number
  ip: string
  sub: string | undefined
  client_id: string | undefined
  tool: string | undefined
  charged: number | undefined
}

/** What JSON.stringify would escape in a string: quote, backslash, control characters, surrogates. */
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/

/** A string as JSON text: quoted, and escaped by JSON.stringify when it needs escaping (the fields are mostly plain). */
function json (value: string): string {
  return NEEDS_ESCAPE.test(value) ? JSON.stringify(value) : '"' + value + '"'
}

/** A number as JSON text (null for what JSON has no number for). */
function num (value: number): string {
  return Number.isFinite(value) ? String(value) : 'null'
}

/**
 * One access line as pino writes `logger.info(fields, 'request')` at level 30 with base
 * `{ pid, hostname }`: the same keys in the same order, undefined fields left out, a newline at the
 * end. `head` is `accessLineHead(pid, hostname)`.
 */
export function accessLine (head: AccessLineHead, time: number, f: AccessFields): string {
  let line = head.start + time + head.base + json(f.reqId) + ',"method":' + json(f.method) + ',"path":' + json(f.path) +
    ',"status":' + num(f.status) + ',"ms":' + num(f.ms) + ',"ip":' + json(f.ip)
  if (f.sub !== undefined) line += ',"sub":' + json(f.sub)
  if (f.client_id !== undefined) line += ',"client_id":' + json(f.client_id)
  if (f.tool !== undefined) line += ',"tool":' + json(f.tool)
  if (f.charged !== undefined) line += ',"charged":' + num(f.charged)
  return line + ',"msg":"request"}\n'
}

export interface AccessLineHead { start: string, base: string }

/** The fixed parts of every access line of this process. */
export function accessLineHead (pid: number, host: string): AccessLineHead {
  return { start: '{"level":30,"time":', base: ',"pid":' + pid + ',"hostname":' + json(host) + ',"reqId":' }
}

interface LevelLogger {
  info: (obj: object, msg: string) => void
  isLevelEnabled?: (level: string) => boolean
}

/** Where access lines go: the app logger's destination when it has one, else the app logger itself. */
function accessTarget (app: FastifyInstance): { stream: pino.DestinationStream } | { log: LevelLogger } | undefined {
  const log = app.log as unknown as LevelLogger & Record<symbol, unknown>
  if (log.isLevelEnabled?.('info') === false) return undefined
  const stream = log[pino.symbols.streamSym] as pino.DestinationStream | undefined
  if (stream === undefined || typeof log.isLevelEnabled !== 'function') return { log }
  return { stream }
}

export default fp(async function accessLog (app: FastifyInstance) {
  if (!app.config.accessLog) return
  const target = accessTarget(app)
  if (target === undefined) return
  const head = accessLineHead(process.pid, hostname())
  const write = 'stream' in target
    ? (fields: AccessFields) => { target.stream.write(accessLine(head, Date.now(), fields)) }
    : (fields: AccessFields) => { target.log.info(fields, 'request') }
  app.addHook('onResponse', (request, reply, done) => {
    // Null only for a request Fastify refused before its hooks ran (a malformed URL).
    const ctx = request.ctx as RequestContext | null
    const principal = ctx?.principal
    write({
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
    })
    done()
  })
}, { name: 'tollgate-access-log', dependencies: ['tollgate-core'] })
