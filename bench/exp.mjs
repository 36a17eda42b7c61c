import Fastify from 'fastify'
import { randomUUID } from 'node:crypto'
const v = process.argv[2]
const opts = { logger: false }
if (v.includes('L')) opts.logger = { level: 'warn' }
if (v.includes('H')) opts.http = { headersTimeout: 10000, requestTimeout: 30000, connectionsCheckingInterval: 1000, maxHeaderSize: 16384 }
if (v.includes('T')) { opts.requestTimeout = 30000; opts.connectionTimeout = 30000; opts.keepAliveTimeout = 5000 }
if (v.includes('G')) { opts.requestIdHeader = false; opts.genReqId = () => randomUUID() }
const app = Fastify(opts)
if (v.includes('R')) app.addHook('onRequest', (req, reply, done) => { reply.header('x-request-id', req.id); done() })
const body = { sub: 'bench', client_id: 'bench', scope: 'tools:call', aud: ['tool:echo'] }
app.get('/bare', async () => body)
await app.listen({ host: '127.0.0.1', port: Number(process.argv[3]) })
