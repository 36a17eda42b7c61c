// GET /health: liveness and readiness with per-dependency checks; 503 when one fails, so a load
// balancer takes the replica out while the process stays up and recovers by itself.
import type { FastifyInstance } from 'fastify'
import { ref, response } from '../schemas/index.js'

const STORE_CHECK_MS = 1000

export default async function healthRoutes (app: FastifyInstance): Promise<void> {
  app.get('/health', {
    schema: {
      operationId: 'getHealth',
      tags: ['operations'],
      summary: 'Health and readiness',
      description: 'Liveness and readiness with one check per dependency (the store and the signing keys), for load balancers and orchestrators. 503 while a dependency fails; the process stays up and recovers by itself.',
      security: [],
      response: { 200: response('Every dependency is ok', ref('Health')), 503: response('A dependency failed: take this replica out of rotation', ref('Health')) }
    }
  }, async (_request, reply) => {
    const store = await withTimeout(app.store.ping(), STORE_CHECK_MS).then(() => 'ok' as const, () => 'fail' as const)
    const keys = app.keys.healthy() ? 'ok' as const : 'fail' as const
    const status = store === 'ok' && keys === 'ok' ? 'ok' : 'fail'
    reply.code(status === 'ok' ? 200 : 503).header('cache-control', 'no-store')
    return { status, checks: { store, keys } }
  })
}

async function withTimeout<T> (promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => { reject(new Error('timeout')) }, ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}
