// Bearer authentication as a Fastify hook: `app.authenticate` runs the pipeline's authenticate
// stage (src/pipeline/authenticate.ts) on the request's context, for routes that need only a
// verified token (GET /validate, GET /quota, /call).
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import fp from 'fastify-plugin'
import { authenticate } from '../pipeline/index.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** An onRequest hook: 401 unless the request carries a valid bearer token. */
    authenticate: (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) => void
  }
}

export default fp(async function auth (app: FastifyInstance) {
  const { tokens } = app
  // Callback style: verification is synchronous, and an async hook costs a promise per request.
  app.decorate('authenticate', (request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction) => {
    const ctx = request.ctx
    ctx.trace?.enter('authenticate')
    try {
      authenticate(tokens, ctx, request.headers.authorization)
    } catch (err) {
      done(err as Error)
      return
    }
    ctx.trace?.leave()
    done()
  })
}, { name: 'tollgate-auth', dependencies: ['tollgate-core'] })
