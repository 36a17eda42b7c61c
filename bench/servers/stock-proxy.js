// The stock proxy baseline for POST /call: Fastify + @fastify/reply-from to the same upstream, with
// no authentication, no quota and no header hygiene, over a kept-alive undici pool.
// argv[2]: the upstream base URL.
import replyFrom from '@fastify/reply-from'
import Fastify from 'fastify'

const base = process.argv[2]
const app = Fastify({ logger: false })
await app.register(replyFrom, { base, undici: { connections: 128, pipelining: 1 } })
app.removeAllContentTypeParsers()
// Stream the body through unparsed, as a proxy does.
app.addContentTypeParser('*', (_request, payload, done) => { done(null, payload) })
app.post('/call', (_request, reply) => { reply.from('/echo') })
// PORT: for bench/instructions.sh, which runs it under valgrind without an IPC channel.
await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 0) })
process.send?.({ port: app.server.address().port })
process.on('disconnect', () => { app.close().then(() => process.exit(0)) })
