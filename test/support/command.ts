// The `tollgate` command run in the test's own process (the code `tollgate keys ...` runs, minus the
// process start, which costs seconds per call on a loaded machine), its output captured.
import { spawn } from 'node:child_process'
import { main } from '../../src/commands.js'
import { SECRET } from '../helper.js'
import { CLI, PRELOAD, ROOT, ensureBuilt } from './process.js'

export interface Run { status: number | null, stdout: string, stderr: string }

/**
 * Runs a program to its end without blocking the event loop (tests keep serving while it runs),
 * its output captured: by default in the project's root, with only PATH in its environment.
 */
export async function run (file: string, args: string[], options: { env?: NodeJS.ProcessEnv, input?: string, cwd?: string } = {}): Promise<Run> {
  const child = spawn(file, args, { cwd: options.cwd ?? ROOT, env: options.env ?? { PATH: process.env.PATH }, stdio: ['pipe', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
  child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
  child.stdin.end(options.input ?? '')
  const status = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject)
    child.once('close', code => { resolve(code) })
  })
  return { status, stdout, stderr }
}

/** The built `tollgate` command (dist/cli.js, rebuilt first when stale) run to its end, as `run` runs a program. */
export async function runTollgate (args: string[], options: Parameters<typeof run>[2] = {}): Promise<Run> {
  ensureBuilt()
  return await run(process.execPath, [...PRELOAD, CLI, ...args], options)
}

export async function tollgateInProcess (args: string[]): Promise<{ status: number, stdout: string, stderr: string }> {
  process.env.TOLLGATE_SECRET = SECRET
  let stdout = ''
  let stderr = ''
  const out = process.stdout.write
  const err = process.stderr.write
  process.stdout.write = ((chunk: string) => { stdout += String(chunk); return true }) as typeof process.stdout.write
  process.stderr.write = ((chunk: string) => { stderr += String(chunk); return true }) as typeof process.stderr.write
  try {
    return { status: await main(args), stdout, stderr }
  } finally {
    process.stdout.write = out
    process.stderr.write = err
  }
}
