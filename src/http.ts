// The HTTP server under Fastify and the request id: what is decided about a raw request before
// routing. Fastify builds its own server from its options; Tollgate builds it here because the
// header deadlines (headersTimeout, connectionsCheckingInterval, maxHeaderSize) are node:http
// options Fastify does not pass through.
import { randomUUID } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerOptions, type ServerResponse } from 'node:http'

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

/** The caller's X-Request-Id when it is a plain token of up to 128 characters, else a new UUID. */
export function requestId (req: IncomingMessage): string {
  const incoming = req.headers['x-request-id']
  return typeof incoming === 'string' && REQUEST_ID.test(incoming) ? incoming : randomUUID()
}

export interface HttpServerOptions {
  http: ServerOptions
  keepAliveTimeout: number
  requestTimeout: number
  connectionTimeout: number
}

/** The node:http server Fastify would create for these options (fastify/lib/server.js). */
export function createHttpServer (handler: (req: IncomingMessage, res: ServerResponse) => void, options: HttpServerOptions): Server {
  const server = createServer(options.http, handler)
  server.keepAliveTimeout = options.keepAliveTimeout
  server.requestTimeout = options.requestTimeout
  server.setTimeout(options.connectionTimeout)
  return server
}
