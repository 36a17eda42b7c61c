// The baseline: a bare Fastify server with one route answering a JSON body of the same shape and
// size as GET /validate's, with the same response schema (fast-json-stringify on both sides). A
// second route, /bare-headers, answers the same body with the nine headers GET /validate's answer
// carries for a token with a quota claim (X-Request-Id, the four X-Auth-* identity headers,
// Cache-Control, the three X-Auth-Quota-* ones; values of the same length): the price of the
// contract's headers in Fastify and node:http alone, for the bench's bare_headers reference.
import Fastify from 'fastify'

const app = Fastify({ logger: false })
const body = { sub: 'bench', client_id: 'bench', scope: 'tools:call', aud: ['tool:echo'] }
const schema = {
  schema: {
    response: {
      200: {
        type: 'object',
        properties: { sub: { type: 'string' }, client_id: { type: 'string' }, scope: { type: 'string' }, aud: { type: 'array', items: { type: 'string' } } }
      }
    }
  }
}
app.get('/bare', schema, async () => body)
const headers = {
  'x-request-id': 'f5ed10bd-8b3e-47fd-b3a2-ab547f7feec9',
  'x-auth-subject': 'bench',
  'x-auth-client-id': 'bench',
  'x-auth-scope': 'tools:call',
  'x-auth-audience': 'tool:echo',
  'cache-control': 'no-store',
  'x-auth-quota-limit': '1000000000',
  'x-auth-quota-remaining': '999999999',
  'x-auth-quota-reset': '69255'
}
app.get('/bare-headers', schema, async (_request, reply) => {
  reply.headers(headers)
  return body
})
// PORT: for bench/instructions.sh, which runs it under valgrind without an IPC channel.
await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 0) })
process.send?.({ port: app.server.address().port })
process.on('disconnect', () => { app.close().then(() => process.exit(0)) })
