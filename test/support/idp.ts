// A stand-in identity provider for token-exchange tests: its JWKS served over real HTTP on a free
// port (support/upstream.ts underneath), with keys, status and Cache-Control a test may change at
// any time, a count of fetches, and stop() to make it unreachable. It holds public keys only and
// never signs: each test signs its subject tokens the way it needs (jose, or node:crypto for what
// jose refuses to produce).
import type { TestContext } from '../helper.js'
import { startUpstream } from './upstream.js'

export interface IdpOptions {
  /** JWKs served as `{ keys }`; may be replaced later through `idp.keys`. */
  keys?: object[]
  /** Cache-Control on a 200; none by default. */
  cacheControl?: string
}

export interface Idp {
  port: number
  /** http://127.0.0.1:<port>/jwks (any path answers the same). */
  jwksUri: string
  keys: object[]
  /** Anything but 200 answers that status with the body `down`. */
  status: number
  cacheControl: string | undefined
  /** Requests received so far, failed ones included. */
  readonly hits: number
  /** Closes the server: connections are refused from now on. */
  stop: () => Promise<void>
}

export async function startIdp (t: TestContext, options: IdpOptions = {}): Promise<Idp> {
  const upstream = await startUpstream(t, {
    handler: (_req, res) => {
      if (idp.status !== 200) { res.writeHead(idp.status).end('down'); return }
      res.writeHead(200, { 'content-type': 'application/json', ...(idp.cacheControl !== undefined ? { 'cache-control': idp.cacheControl } : {}) })
      res.end(JSON.stringify({ keys: idp.keys }))
    }
  })
  const server = upstream.server
  const idp: Idp = {
    port: upstream.port,
    jwksUri: `${upstream.origin}/jwks`,
    keys: options.keys ?? [],
    status: 200,
    cacheControl: options.cacheControl,
    get hits (): number { return upstream.seen.length },
    stop: async (): Promise<void> => {
      if (!server.listening) return
      server.closeAllConnections()
      await new Promise(resolve => server.close(resolve))
    }
  }
  return idp
}
