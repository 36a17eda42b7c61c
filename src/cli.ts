#!/usr/bin/env node
// Entry point of the `tollgate` bin: runs a command and turns a config error into one line.
import './tick-shape-early.js'
import { main } from './commands.js'
import { ConfigError } from './config.js'

main(process.argv.slice(2)).then(code => {
  if (code >= 0) process.exitCode = code
}, (err: unknown) => {
  process.stderr.write(`${err instanceof ConfigError ? err.message : `tollgate: ${(err as Error).message}`}\n`)
  process.exitCode = 1
})
