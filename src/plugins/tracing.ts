// Tracing as Fastify hooks (docs/tracing.md): decorates `app.tracing` (src/tracing.ts), and when it
// is on, starts each request's server span when the request arrives, gives a refusal's code to the
// open span, ends the spans when the answer is finished and sends the last ones when the app
// closes. With tracing off it adds no hook at all: the stages' `ctx.trace?.` calls see undefined.
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { RequestContext } from '../pipeline/index.js'
import { createTracing, type Tracing, type TracingConfig, type TracingOptions } from '../tracing.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The tracer provider and exporter, or undefined when tracing is off. */
    tracing: Tracing | undefined
  }
}

export interface TracingPluginOptions extends TracingOptions {
  config: TracingConfig
}

export default fp(async function tracingPlugin (app: FastifyInstance, options: TracingPluginOptions) {
  const tracing = await createTracing(options.config, options)
  app.decorate('tracing', tracing)
  if (tracing === undefined) return

  // After the root hook that makes the context (src/app.ts), before any route's own hooks.
  app.addHook('onRequest', (request, _reply, done) => {
    request.ctx.trace = tracing.startRequest({
      method: request.method,
      route: request.routeOptions.url,
      url: request.url,
      headers: request.headers
    })
    done()
  })
  app.addHook('onError', (request, _reply, error, done) => {
    request.ctx?.trace?.fail(error)
    done()
  })
  const finish = (request: FastifyRequest, statusCode: number): void => {
    // Null only for a request Fastify refused before its hooks ran (a malformed URL).
    const ctx = request.ctx as RequestContext | null
    const trace = ctx?.trace
    if (ctx === null || trace === undefined) return
    const principal = ctx.principal
    trace.finish({
      statusCode,
      requestId: ctx.id,
      tool: ctx.tool?.name,
      sub: principal?.sub,
      clientId: principal?.clientId ?? ctx.clientId
    })
  }
  app.addHook('onResponse', (request, reply, done) => {
    finish(request, reply.statusCode)
    done()
  })
  app.addHook('onRequestAbort', (request, done) => {
    // The caller went away before an answer: 499, as proxies log it.
    finish(request, 499)
    done()
  })
  app.addHook('onClose', async () => { await tracing.shutdown() })
}, { name: 'tollgate-tracing' })
