// The baseline: a bare Fastify server with one route answering a JSON body of the same shape and
// size as GET /validate's, with the same response schema (fast-json-stringify on both sides).
import Fastify from 'fastify'

const app = Fastify({ logger: false })
const body = { sub: 'bench', client_id: 'bench', scope: 'tools:call', aud: ['tool:echo'] }
app.get('/bare', {
  schema: {
    response: {
      200: {
        type: 'object',
        properties: { sub: { type: 'string' }, client_id: { type: 'string' }, scope: { type: 'string' }, aud: { type: 'array', items: { type: 'string' } } }
      }
    }
  }
}, async () => body)
// PORT: for bench/instructions.sh, which runs it under valgrind without an IPC channel.
await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 0) })
process.send?.({ port: app.server.address().port })
process.on('disconnect', () => { app.close().then(() => process.exit(0)) })
