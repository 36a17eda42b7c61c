// Log capture, one way for every test: an app's pino logger (the production options from
// loggerOptions: level, redaction, serializers) writing into memory, kept both as the lines as written
// and parsed as JSON; and the JSON lines of a process's output (support/process.ts keeps it). It never
// filters lines: each test picks the ones it asserts on.
import { Writable } from 'node:stream'
import type { FastifyServerOptions } from 'fastify'
import pino from 'pino'
import { loggerOptions } from '../../src/app.js'
import type { Config } from '../../src/config.js'

export interface CapturedLog {
  /** For buildApp / build options: `{ loggerInstance: log.logger }`. */
  logger: NonNullable<FastifyServerOptions['loggerInstance']>
  /** Every line as written, without its newline. */
  lines: string[]
  /** The same lines parsed as JSON. */
  parsed: any[]
}

/** A logger with the app's own options at `level` (default: the config's logLevel) that writes here. */
export function captureLog (config: Config, level: string = config.logLevel): CapturedLog {
  const lines: string[] = []
  const parsed: any[] = []
  let partial = ''
  const stream = new Writable({
    write (chunk, _enc, done) {
      const all = (partial + String(chunk)).split('\n')
      partial = all.pop() ?? ''
      for (const line of all) {
        if (line === '') continue
        lines.push(line)
        parsed.push(JSON.parse(line))
      }
      done()
    }
  })
  const logger = pino({ ...(loggerOptions(config) as object), level }, stream) as unknown as CapturedLog['logger']
  return { logger, lines, parsed }
}

/** The JSON lines of a process's output (stdout and stderr may carry other text too). */
export function jsonLines (output: string | string[]): any[] {
  const lines = typeof output === 'string' ? output.split('\n') : output
  return lines.filter(l => l.startsWith('{')).map(l => JSON.parse(l))
}
