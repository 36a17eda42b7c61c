// A tiny demo tool for the quick start: answers /echo (and anything under it) with the request it
// saw, minus secrets, so you can see what Tollgate forwards: the downstream token's claims (not
// the token), X-Forwarded-*, X-Auth-Subject, X-Request-Id and your body.
//   npm run demo:tool            # listens on 127.0.0.1:9001 (PORT to change)
import { createServer } from 'node:http'

const port = Number(process.env.PORT ?? 9001)
const SECRET_HEADERS = new Set(['authorization', 'cookie', 'proxy-authorization', 'x-api-key'])

// The JWT's claims only (decoded, not verified: a real tool verifies it against Tollgate's /jwks).
function claimsOf (authorization) {
  const m = /^Bearer ([^.]+)\.([^.]+)\.[^.]+$/.exec(authorization ?? '')
  if (m === null) return undefined
  try {
    return JSON.parse(Buffer.from(m[2], 'base64url').toString('utf8'))
  } catch {
    return undefined
  }
}

const server = createServer((req, res) => {
  const path = (req.url ?? '/').split('?')[0]
  if (path !== '/echo' && !path.startsWith('/echo/')) {
    res.writeHead(404, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ error: 'not found: try /echo' }))
    return
  }
  const chunks = []
  req.on('data', c => chunks.push(c))
  req.on('end', () => {
    const headers = {}
    for (const [name, value] of Object.entries(req.headers)) {
      headers[name] = SECRET_HEADERS.has(name) ? '[redacted]' : value
    }
    const body = Buffer.concat(chunks).toString('utf8')
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({
      method: req.method,
      url: req.url,
      headers,
      downstreamToken: claimsOf(req.headers.authorization),
      body
    }, null, 2) + '\n')
  })
})

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`echo tool listening on http://127.0.0.1:${server.address().port}/echo\n`)
})
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)))
