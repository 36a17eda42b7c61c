// A free TCP port on 127.0.0.1, for the bench's servers (bench/run.js, bench/compare.js).
import { createServer } from 'node:net'

export async function freePort () {
  const server = createServer()
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address()
  await new Promise(resolve => server.close(resolve))
  return port
}
