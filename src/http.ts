// The HTTP server under Fastify, and what is decided about a raw request before routing: its
// request id, its client address, and the lanes. A lane is a precompiled answer for one hot,
// narrow case (GET /validate with a token verified before): it answers from the raw request in
// one synchronous step, or declines without writing anything and the request goes through Fastify
// as usual. Every refusal, every error and every case a lane does not recognise is Fastify's.
import { randomUUID } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerOptions, type ServerResponse } from 'node:http'
import proxyAddr from '@fastify/proxy-addr'
import { pinTickObjectShape } from './tick-shape.js'

/**
 * Returns false having read and written nothing, and Fastify takes the request; or returns true
 * and answers it, or later hands it to Fastify after all by calling `fallback` (once, having
 * written nothing).
 */
export type Lane = (req: IncomingMessage, res: ServerResponse, fallback: () => void) => boolean

/** A lane that counts the requests it answered and, if it hands some to Fastify after all, those. */
export type CountedLane = Lane & { served: number, handedOver?: number }

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

/** The caller's X-Request-Id when it is a plain token of up to 128 characters, else a new UUID. */
export function requestId (req: IncomingMessage): string {
  const incoming = req.headers['x-request-id']
  return typeof incoming === 'string' && REQUEST_ID.test(incoming) ? incoming : randomUUID()
}

/**
 * The token of an `Authorization: Bearer <token>` header with exactly one space, unchecked: for a
 * lookup in the verification cache, whose keys are all well-formed tokens, so anything else
 * misses there and goes to the route, which parses the header strictly.
 */
export function bearerCandidate (header: string | undefined): string | undefined {
  if (header === undefined || header.length < 8 || header.charCodeAt(6) !== 32) return undefined
  const scheme = header.slice(0, 6)
  return scheme === 'Bearer' || scheme.toLowerCase() === 'bearer' ? header.slice(7) : undefined
}

interface LevelLogger {
  isLevelEnabled?: (level: string) => boolean
  child: (bindings: Record<string, unknown>) => { info: (obj: object, msg: string) => void }
}

/**
 * The two lines Fastify logs for every request at info ("incoming request", "request completed"),
 * for a request a lane answered, in the same shape; nothing when info is off.
 */
export function logAnswered (log: LevelLogger, id: string, req: { method: string, url: string, ip: string | undefined }, statusCode: number, responseTime: number): void {
  if (log.isLevelEnabled?.('info') !== true) return
  const reqLog = log.child({ reqId: id })
  reqLog.info({ req }, 'incoming request')
  reqLog.info({ res: { statusCode }, responseTime }, 'request completed')
}

export type TrustProxy = boolean | string | string[] | number

/**
 * `request.ip` as Fastify computes it for the same trustProxy setting (fastify/lib/request.js):
 * the peer address, or with trusted proxies the last untrusted hop of X-Forwarded-For. A hop count
 * trusts nobody, as in Fastify (a count cannot check the immediate peer).
 */
export function clientAddress (trustProxy: TrustProxy): (req: IncomingMessage) => string | undefined {
  if (trustProxy === false) return req => req.socket.remoteAddress
  let trust: (addr: string, i: number) => boolean
  if (trustProxy === true) trust = () => true
  else if (typeof trustProxy === 'number') trust = () => false
  else trust = proxyAddr.compile(typeof trustProxy === 'string' ? trustProxy.split(',').map(s => s.trim()) : trustProxy)
  return req => {
    const all = proxyAddr.all(req, trust)
    return all[all.length - 1]
  }
}

export interface HttpServerOptions {
  http: ServerOptions
  keepAliveTimeout: number
  requestTimeout: number
  connectionTimeout: number
}

/**
 * The node:http server Fastify would create for these options (fastify/lib/server.js), with the
 * lanes tried before Fastify's handler. It also pins the shape of Node's tick objects, which every
 * request makes dozens of (src/tick-shape.ts).
 */
export function createHttpServer (handler: (req: IncomingMessage, res: ServerResponse) => void, options: HttpServerOptions, lanes: readonly Lane[], onLaneError: (err: unknown) => void = () => {}): Server {
  pinTickObjectShape()
  const server = createServer(options.http, (req, res) => {
    const fallback = (): void => { handler(req, res) }
    for (let i = 0; i < lanes.length; i++) {
      try {
        if ((lanes[i] as Lane)(req, res, fallback)) return
      } catch (err) {
        // A lane's bug never takes the process down: before anything was written the request is
        // Fastify's; after, the connection is cut.
        onLaneError(err)
        if (res.headersSent) {
          res.destroy()
          return
        }
        break
      }
    }
    handler(req, res)
  })
  server.keepAliveTimeout = options.keepAliveTimeout
  server.requestTimeout = options.requestTimeout
  server.setTimeout(options.connectionTimeout)
  return server
}
