// Where the default logger writes: stdout through pino's asynchronous destination (SonicBoom), with
// the lines gathered first into 16 KiB batches, so a log line costs an array push instead of a
// write(2) on the request's path. Lines reach stdout when 16 KiB have gathered, at least every
// second, when the app closes (graceful shutdown and fatal errors both close it: src/server.ts),
// and at process exit (registered with on-exit-leak-free, as pino registers its destination). A
// kill -9 loses what has gathered: at most 16 KiB (about 70 access lines), or a second's worth.
//
// Closing waits (asynchronously) until SonicBoom has written everything, the write in progress
// included. The synchronous write-out at process exit cannot wait for a write in progress: it writes
// what SonicBoom still holds and what has gathered after it, through a synchronous SonicBoom on the
// same descriptor; only a write that is still in libuv's thread pool at that moment can land after
// them (pino's own exit flush has the same limit).
//
// Why the batch is here and not SonicBoom's own `minLength`: SonicBoom (4.2.1, and 5.0.2 alike)
// keeps what waits as one string, and on every write measures it whole (`Buffer.byteLength`) and
// appends to it (`+=`), so V8 flattens the growing string once per line: a 4 KiB minLength cost
// about 18 copies of up to 4 KiB for every 4 KiB written. Counted under callgrind at defaults (GET
// /validate, `TOLLGATE_LOG_LEVEL=info bash bench/instructions.sh`), the batch took 11,000
// event-loop instructions off each request (175,300 → 164,200); `node bench/log-line.js` measures
// one line into each. Why 16 KiB and not 4: each write goes through libuv's thread pool (a thread
// woken, the write, the main loop woken), which costs more than the bytes; side by side at defaults
// (`node bench/compare.js`, 10 connections, 8 rounds), 16 KiB batches ran GET /validate 1.06 and
// POST /call 1.06 times as fast as 4 KiB ones. test/log-destination.test.ts checks that every
// line arrives, in order, on each path out.
import onExit from 'on-exit-leak-free'
import pino from 'pino'

export interface LogDestination {
  readonly stream: LineBatch
  /** Writes whatever is buffered, synchronously. */
  flush: () => void
  /**
   * Stops the periodic flush, and calls back once everything written so far is out (at most
   * CLOSE_WAIT_MS later, if the destination stops answering); the stream stays usable.
   */
  close: (cb?: (err?: Error) => void) => void
}

/** Lines wait at most this long in the buffer when traffic is light. */
export const FLUSH_INTERVAL_MS = 1000

/** A batch is handed to SonicBoom once it holds this many characters. */
export const BATCH_CHARS = 16 * 1024

/** How long close waits for the writes to finish before it writes out synchronously and returns. */
export const CLOSE_WAIT_MS = 2000

/** The destination as pino sees it: lines in, 16 KiB batches out to SonicBoom. */
export class LineBatch implements pino.DestinationStream {
  #lines: string[] = []
  #chars = 0
  /**
   * `sonic` writes the batches asynchronously; `syncOut`, a synchronous SonicBoom on the same
   * descriptor, is only for flushSync.
   */
  constructor (readonly sonic: ReturnType<typeof pino.destination>, readonly syncOut: ReturnType<typeof pino.destination>) {}

  write (line: string): boolean {
    this.#lines.push(line)
    this.#chars += line.length
    if (this.#chars >= BATCH_CHARS) this.drain()
    return true
  }

  /** Hands what has gathered to SonicBoom, which writes it when its current write is done. */
  drain (): void {
    const batch = this.#take()
    if (batch !== undefined) this.sonic.write(batch)
  }

  /** What has gathered, as one string (undefined when nothing has). */
  #take (): string | undefined {
    if (this.#lines.length === 0) return undefined
    const batch = this.#lines.length === 1 ? this.#lines[0] as string : this.#lines.join('')
    this.#lines = []
    this.#chars = 0
    return batch
  }

  /**
   * Asynchronously: what has gathered goes out (SonicBoom writes at once when it is idle, else right
   * after its current write). With `cb` (pino's `logger.flush(cb)`): called once all of it is
   * written, or with the write's error.
   */
  flush (cb?: (err?: Error) => void): void {
    this.drain()
    if (cb === undefined) return
    const sonic = this.sonic
    const onDrain = (): void => { sonic.off('error', onError); cb() }
    const onError = (err: Error): void => { sonic.off('drain', onDrain); cb(err) }
    sonic.once('drain', onDrain)
    sonic.once('error', onError)
    // An empty write: SonicBoom says 'drain' when it and everything before it is written, also
    // when nothing was waiting.
    sonic.write('')
  }

  /**
   * Synchronously: what SonicBoom holds, then what has gathered, is written before this returns.
   * What has gathered goes through `syncOut`: handed to `sonic` while it is idle, it would start an
   * asynchronous write that SonicBoom's flushSync does not wait for. A write already in progress is
   * not waited for (see the top of this file).
   */
  flushSync (): void {
    this.sonic.flushSync()
    const batch = this.#take()
    if (batch !== undefined) this.syncOut.write(batch)
  }
}

/**
 * Writes out what has gathered, synchronously, unless stdout is gone (or SonicBoom was never opened:
 * nothing can be buffered then). Used on close and at process exit, where pino's own handler has
 * flushed SonicBoom first. Module-level: on-exit-leak-free holds the batch weakly, and a handler that
 * closed over it would keep it alive.
 */
function writeOut (batch: LineBatch): void {
  try {
    batch.flushSync()
  } catch {
    // Nothing to write to.
  }
}

export function logDestination (fd = 1): LogDestination {
  const stream = new LineBatch(pino.destination({ dest: fd, sync: false }), pino.destination({ dest: fd, sync: true }))
  onExit.register(stream, writeOut)
  const flush = (): void => { writeOut(stream) }
  const timer = setInterval(() => {
    try {
      stream.flush()
    } catch {
      // stdout is gone: nothing to write to.
    }
  }, FLUSH_INTERVAL_MS)
  timer.unref()
  return {
    stream,
    flush,
    close: (cb) => {
      clearInterval(timer)
      // SonicBoom answers a flush once its writes are done, or never once stdout is gone (pino then
      // makes its writes no-ops): wait at most CLOSE_WAIT_MS, then write out what is left.
      let answered = false
      const done = (err?: Error): void => {
        if (answered) return
        answered = true
        clearTimeout(wait)
        flush()
        cb?.(err)
      }
      const wait = setTimeout(done, CLOSE_WAIT_MS)
      wait.unref()
      try {
        stream.flush(done)
      } catch (err) {
        done(err as Error)
      }
    }
  }
}
