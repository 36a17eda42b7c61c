// A real upstream tool server for the benchmark: node:http answering a small JSON body to any
// request (after reading the request body), kept-alive. Runs in its own process; reports its port
// to the parent over IPC.
import { createServer } from 'node:http'

const body = JSON.stringify({ ok: true, tool: 'echo', result: { text: 'hello' } })
const server = createServer((req, res) => {
  req.resume()
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  })
})
server.keepAliveTimeout = 65_000
// PORT: for bench/instructions.sh, which starts it without an IPC channel.
server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => { process.send?.({ port: server.address().port }) })
process.on('disconnect', () => { process.exit(0) })
