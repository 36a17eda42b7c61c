// GET /metrics: Prometheus text exposition of this process's registry.
import type { FastifyInstance } from 'fastify'
import { Type } from 'typebox'

export default async function metricsRoutes (app: FastifyInstance): Promise<void> {
  app.get('/metrics', {
    schema: {
      operationId: 'getMetrics',
      tags: ['operations'],
      summary: 'Prometheus metrics',
      description: 'This process\'s counters and histograms in the Prometheus text exposition format, for a scraper. Each replica answers for itself.',
      security: [],
      produces: ['text/plain'],
      response: { 200: Type.String({ description: 'Prometheus text format 0.0.4' }) }
    }
  }, async (_request, reply) => {
    reply.type(app.metrics.registry.contentType)
    return await app.metrics.registry.metrics()
  })
}
