// Where the default logger writes: stdout through pino's asynchronous, buffered destination
// (SonicBoom, minLength 4 KiB), so a log line costs a string append instead of a write(2) on the
// request's path. Lines reach stdout when 4 KiB have gathered, at least every second, when the app
// closes (graceful shutdown and fatal errors both close it: src/server.ts), and at process exit
// (pino registers the destination with on-exit-leak-free).
import pino from 'pino'

export interface LogDestination {
  readonly stream: pino.DestinationStream
  /** Writes whatever is buffered, synchronously. */
  flush: () => void
  /** Stops the periodic flush and writes what is buffered; the stream stays usable. */
  close: () => void
}

/** Lines wait at most this long in the buffer when traffic is light. */
export const FLUSH_INTERVAL_MS = 1000

export function logDestination (fd = 1): LogDestination {
  const stream = pino.destination({ dest: fd, sync: false, minLength: 4096 })
  const flush = (): void => {
    try {
      stream.flushSync()
    } catch {
      // Not open yet (nothing can be buffered then), or stdout is gone: nothing to write to.
    }
  }
  const timer = setInterval(() => { stream.flush() }, FLUSH_INTERVAL_MS)
  timer.unref()
  return {
    stream,
    flush,
    close: () => {
      clearInterval(timer)
      flush()
    }
  }
}
