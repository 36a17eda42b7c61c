// The default log destination (src/log-destination.ts): lines gather into 16 KiB batches in front of
// pino's asynchronous SonicBoom. Every line must come out whole and in order: when a batch fills,
// within a second when traffic is light, on close, and at process exit without a close (both when
// the process calls process.exit and when its event loop simply runs out).
import { spawn } from 'node:child_process'
import { pbkdf2 } from 'node:crypto'
import { once } from 'node:events'
import { closeSync, openSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import pino from 'pino'
import t from 'tap'
import { BATCH_CHARS, FLUSH_INTERVAL_MS, logDestination } from '../src/log-destination.js'
import { tempDir } from './helper.js'
import { ROOT, ensureBuilt } from './support/process.js'

/** Lines of varying length (some not ASCII), numbered so that order shows. */
function lines (n: number): string[] {
  return Array.from({ length: n }, (_, i) => JSON.stringify({ i, pad: 'x'.repeat(i % 300), text: i % 7 === 0 ? 'é✓' : 'a' }) + '\n')
}

t.test('lines come out whole and in order, a batch at a time', async t => {
  const file = join(tempDir(t), 'out.log')
  const fd = openSync(file, 'w')
  t.teardown(() => { closeSync(fd) })
  const destination = logDestination(fd)
  const written = lines(5000)
  const batchOfLines = written.slice(0, 10).join('')
  t.ok(batchOfLines.length < BATCH_CHARS, 'ten lines are less than a batch')
  for (const line of written.slice(0, 10)) destination.stream.write(line)
  await sleep(50)
  t.equal(readFileSync(file, 'utf8'), '', 'less than a batch waits')
  for (const line of written.slice(10)) destination.stream.write(line)
  // Batches went out while lines were still arriving (the writes are asynchronous).
  for (let i = 0; i < 100 && readFileSync(file, 'utf8').length === 0; i++) await sleep(20)
  const partial = readFileSync(file, 'utf8')
  t.ok(partial.length > 0 && written.join('').startsWith(partial), 'full batches are written before a close, as a prefix of the lines')
  await new Promise<void>((resolve, reject) => { destination.close(err => { if (err != null) reject(err); else resolve() }) })
  t.equal(readFileSync(file, 'utf8'), written.join(''), 'after close: every line, in order')
})

t.test('flush() writes what has gathered before it returns, the thread pool busy', async t => {
  const file = join(tempDir(t), 'out.log')
  const fd = openSync(file, 'w')
  const destination = logDestination(fd)
  t.teardown(() => { destination.close(); closeSync(fd) })
  // Every thread of libuv's pool busy for a while: an asynchronous write (SonicBoom's) waits behind
  // them, so only a synchronous one can be on disk when flush() returns. (Started this way, the
  // exit handler's write-out used to hand what had gathered to SonicBoom, which then wrote it
  // asynchronously and its flushSync did not wait for it.)
  const threads = Number(process.env.UV_THREADPOOL_SIZE ?? 4)
  const busy = Array.from({ length: threads }, async () => { await promisify(pbkdf2)('busy', 'salt', 1_000_000, 32, 'sha256') })
  const written = lines(3)
  for (const line of written) destination.stream.write(line)
  destination.flush()
  t.equal(readFileSync(file, 'utf8'), written.join(''), 'on disk when flush() returns')
  destination.stream.write(written[0] as string)
  destination.flush()
  t.equal(readFileSync(file, 'utf8'), written.join('') + (written[0] as string), 'and again, after more lines')
  await Promise.all(busy)
})

t.test('a line waits at most about a second when traffic is light', async t => {
  const file = join(tempDir(t), 'out.log')
  const fd = openSync(file, 'w')
  const destination = logDestination(fd)
  t.teardown(() => { destination.close(); closeSync(fd) })
  destination.stream.write('{"msg":"alone"}\n')
  await sleep(FLUSH_INTERVAL_MS / 4)
  t.equal(readFileSync(file, 'utf8'), '', 'not written at once')
  for (let i = 0; i < 50 && readFileSync(file, 'utf8') === ''; i++) await sleep(100)
  t.equal(readFileSync(file, 'utf8'), '{"msg":"alone"}\n', 'written by the periodic flush')
})

t.test("pino's logger.flush(cb) hears when what gathered is written", async t => {
  const file = join(tempDir(t), 'out.log')
  const fd = openSync(file, 'w')
  const destination = logDestination(fd)
  t.teardown(() => { destination.close(); closeSync(fd) })
  const logger = pino({ base: null, timestamp: false }, destination.stream)
  logger.info('one')
  logger.info('two')
  t.equal(readFileSync(file, 'utf8'), '', 'less than a batch waits')
  await new Promise<void>((resolve, reject) => { logger.flush(err => { if (err != null) reject(err); else resolve() }) })
  t.equal(readFileSync(file, 'utf8'), '{"level":30,"msg":"one"}\n{"level":30,"msg":"two"}\n', 'written when the callback runs')
})

t.test('at process exit without a close, nothing gathered is lost', async t => {
  ensureBuilt()
  const moduleUrl = pathToFileURL(join(ROOT, 'dist', 'log-destination.js')).href
  const expected = lines(2000).join('')
  for (const [how, end] of [['process.exit()', 'process.exit(0)'], ['the event loop running out', '']] as const) {
    const script = `
      const { logDestination } = await import(${JSON.stringify(moduleUrl)})
      const d = logDestination(1)
      for (let i = 0; i < 2000; i++) d.stream.write(JSON.stringify({ i, pad: 'x'.repeat(i % 300), text: i % 7 === 0 ? 'é✓' : 'a' }) + '\\n')
      ${end}`
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.setEncoding('utf8').on('data', (s: string) => { out += s })
    // 'close': the process has exited and its stdout is read to the end.
    const [code] = await once(child, 'close') as [number]
    t.equal(code, 0, `${how}: exit code`)
    t.equal(out, expected, `${how}: every line, in order`)
  }
})
