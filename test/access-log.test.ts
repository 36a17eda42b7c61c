// The access log of a real gateway process (`tollgate serve` on the demo configuration): its lines
// are buffered (pino's asynchronous destination) and must all reach stdout when the process stops,
// both on SIGTERM (graceful shutdown) and after an uncaught exception (a fatal error).
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { tempDir } from './helper.js'
import { jsonLines } from './support/logs.js'
import { startGateway } from './support/process.js'

const N = 300

/** Sends N requests with ids `<prefix>-<i>` (20 at a time) and resolves when all are answered. */
async function burst (url: string, prefix: string): Promise<void> {
  for (let i = 0; i < N; i += 20) {
    await Promise.all(Array.from({ length: 20 }, async (_, j) => {
      const res = await fetch(`${url}/health`, { headers: { 'x-request-id': `${prefix}-${i + j}` } })
      await res.arrayBuffer()
    }))
  }
}

function accessLines (output: string, prefix: string): any[] {
  return jsonLines(output).filter(l => l.msg === 'request' && typeof l.reqId === 'string' && l.reqId.startsWith(`${prefix}-`))
}

t.test('no access line is lost on SIGTERM', async t => {
  const gw = await startGateway(t, { cwd: tempDir(t) })
  await burst(gw.url, 'term')
  const exited = once(gw.child, 'exit')
  gw.child.kill('SIGTERM')
  const [code] = await exited
  t.equal(code, 0, 'a graceful exit')
  const lines = accessLines(gw.output(), 'term')
  t.equal(lines.length, N, 'one line for every request answered')
  t.equal(new Set(lines.map(l => l.reqId)).size, N, 'each request once')
  t.match(gw.output(), /"msg":"shutting down"/)
})

t.test('the last lines are there after an uncaught exception', async t => {
  const dir = tempDir(t)
  // Loaded before the CLI: on SIGWINCH the process throws from a timer, with nothing to catch it.
  const hook = join(dir, 'throw-on-usr2.mjs')
  writeFileSync(hook, "process.on('SIGWINCH', () => { setTimeout(() => { throw new Error('deliberate fatal error') }, 0) })\n")
  const gw = await startGateway(t, { cwd: dir, nodeArgs: ['--import', hook] })
  await burst(gw.url, 'fatal')
  const exited = once(gw.child, 'exit')
  gw.child.kill('SIGWINCH')
  const [code] = await exited
  t.not(code, 0, 'the process failed')
  const output = gw.output()
  t.match(output, /"msg":"shutting down after a fatal error"/)
  t.match(output, /deliberate fatal error/)
  t.equal(accessLines(output, 'fatal').length, N, 'every request answered before the error has its line')
})
