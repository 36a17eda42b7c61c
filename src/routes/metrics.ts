// GET /metrics: Prometheus text exposition of this process's registry. Open by default (bind the
// port where only the scraper reaches it); with `metrics.tokenEnv` it requires that bearer token.
import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { Type } from 'typebox'
import { InvalidToken } from '../errors.js'
import { bearerToken } from '../pipeline/index.js'
import { headers, problem } from '../schemas/index.js'

const digest = (value: string): Buffer => createHash('sha256').update(value).digest()

export default async function metricsRoutes (app: FastifyInstance): Promise<void> {
  const token = app.config.metrics.token
  const expected = token !== undefined ? digest(token) : undefined
  app.get('/metrics', {
    schema: {
      operationId: 'getMetrics',
      tags: ['operations'],
      summary: 'Prometheus metrics',
      description: 'This process\'s counters and histograms in the Prometheus text exposition format, for a scraper. Each replica answers for itself. Open unless `metrics.tokenEnv` is set; then the scraper sends that token as `Authorization: Bearer`.',
      security: expected !== undefined ? [{ bearerAuth: [] }] : [],
      produces: ['text/plain'],
      response: {
        200: Type.String({ description: 'Prometheus text format 0.0.4' }),
        ...(expected !== undefined ? { 401: problem('No token, or not the metrics token', headers.wwwAuthenticateBearer) } : {})
      }
    },
    ...(expected !== undefined
      ? {
          onRequest: async (request: FastifyRequest) => {
            // Compared as digests, in constant time, so the comparison says nothing about the token.
            if (!timingSafeEqual(digest(bearerToken(request.headers.authorization)), expected)) throw new InvalidToken('not the metrics token')
          }
        }
      : {})
  }, async (_request, reply) => {
    reply.type(app.metrics.registry.contentType)
    return await app.metrics.registry.metrics()
  })
}
