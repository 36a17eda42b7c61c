// The `tollgate` command run in the test's own process (the code `tollgate keys ...` runs, minus the
// process start, which costs seconds per call on a loaded machine), its output captured.
import { main } from '../../src/commands.js'
import { SECRET } from '../helper.js'

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
