// Token authentication as a Fastify hook: `app.authenticate` runs the pipeline's authenticate
// stage (src/pipeline/authenticate.ts) on the request's context, for routes that need only a
// verified token (GET /validate, GET /quota, /call). `app.dpopRequest` says what a DPoP proof must
// match on a request: its method and public URI (`server.publicUrl` and the path), or, at GET
// /validate behind a trusted proxy, the original request's (X-Forwarded-Method, -Proto, -Host, -Uri).
import proxyAddr from '@fastify/proxy-addr'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { authenticate, type DpopRequest } from '../pipeline/index.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** An onRequest hook: 401 unless the request carries a valid token (and, for a bound one, its DPoP proof). */
    authenticate: (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) => void
    /** What the DPoP proof of `request` must match; undefined unless it uses the DPoP scheme. */
    dpopRequest: (request: FastifyRequest) => DpopRequest | undefined
  }
}

const DPOP_SCHEME = /^DPoP\b/i

/** Whether the TCP peer is a trusted proxy (server.trustProxy), compiled as Fastify compiles it. */
function trustFunction (trustProxy: Config['server']['trustProxy']): (address: string) => boolean {
  if (trustProxy === true) return () => true
  if (trustProxy === false || typeof trustProxy === 'number') return () => false
  const trust = proxyAddr.compile(typeof trustProxy === 'string' ? trustProxy.split(',').map(s => s.trim()) : trustProxy)
  return (address) => trust(address, 0)
}

function single (value: string | string[] | undefined): string | undefined {
  return typeof value === 'string' && value !== '' ? value : undefined
}

export default fp(async function auth (app: FastifyInstance) {
  const { tokens } = app
  const base = app.resources.resource
  const trusted = trustFunction(app.config.server.trustProxy)

  app.decorate('dpopRequest', (request: FastifyRequest): DpopRequest | undefined => {
    const authorization = request.headers.authorization
    if (authorization === undefined || !DPOP_SCHEME.test(authorization)) return undefined
    const path = (request.raw.url ?? '/').split('?')[0] as string
    let htm = request.method
    let htu = (): string => base + path
    const h = request.headers
    if (request.routeOptions.config?.forwardAuth === true && trusted(request.socket.remoteAddress ?? '')) {
      // RFC 9449 §4.3 checks the request the client made, which reached the proxy, not Tollgate.
      const method = single(h['x-forwarded-method'])
      const proto = single(h['x-forwarded-proto'])
      const host = single(h['x-forwarded-host'])
      const uri = single(h['x-forwarded-uri'])
      if (method !== undefined) htm = method
      if (proto !== undefined && host !== undefined && uri !== undefined) htu = () => `${proto}://${host}${uri.startsWith('/') ? uri : '/' + uri}`
    }
    return { verifier: app.dpop, proof: h.dpop, htm, htu }
  })

  // Callback style: Bearer verification is synchronous, and an async hook costs a promise per request.
  app.decorate('authenticate', (request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction) => {
    const ctx = request.ctx
    ctx.trace?.enter('authenticate')
    let result
    try {
      result = authenticate(tokens, ctx, request.headers.authorization, undefined, app.dpopRequest(request))
    } catch (err) {
      done(err as Error)
      return
    }
    if (result instanceof Promise) {
      result.then(() => { ctx.trace?.leave(); done() }, done)
      return
    }
    ctx.trace?.leave()
    done()
  })
}, { name: 'tollgate-auth', dependencies: ['tollgate-core'] })
