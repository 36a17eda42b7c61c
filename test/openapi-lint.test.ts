// The committed openapi/openapi.json passes both linters a generated-client user is likely to run:
// Redocly's `recommended` rules (redocly.yaml) and Spectral's `oas` ruleset (.spectral.yaml), with no
// error and no warning. Each runs as the real command from node_modules/.bin, offline.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ROOT } from './support/process.js'
import { run, type Run } from './support/command.js'

const SPEC = 'openapi/openapi.json'
const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options']

async function lint (bin: string, args: string[]): Promise<Run> {
  return await run(join(ROOT, 'node_modules', '.bin', bin), args, { env: { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true', NO_COLOR: '1' } })
}

/** The JSON document in a command's output (after any banner a tool prints first). */
function json (text: string, open: '{' | '['): any {
  const start = text.indexOf(open)
  if (start < 0) throw new Error(`no JSON in: ${text.slice(0, 500)}`)
  return JSON.parse(text.slice(start))
}

t.test('Redocly recommended: no errors, no warnings', async t => {
  const res = await lint('redocly', ['lint', SPEC, '--config', 'redocly.yaml', '--format', 'json'])
  const report = json(res.stdout, '{')
  const problems = (report.problems as any[]).map(p => `${p.severity} ${p.ruleId} ${p.location?.[0]?.pointer ?? ''}: ${p.message}`)
  t.same(problems, [], 'no problems')
  t.same(report.totals, { errors: 0, warnings: 0, ignored: 0 })
  t.equal(res.status, 0, res.status === 0 ? 'exits 0' : res.stderr)
})

t.test('Spectral oas: no errors, no warnings, no hints', async t => {
  // Spectral prints a summary after the JSON on stdout: the report goes to a file instead.
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-spectral-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const output = join(dir, 'report.json')
  const res = await lint('spectral', ['lint', SPEC, '--ruleset', '.spectral.yaml', '--format', 'json', '--output', output, '--fail-severity', 'hint'])
  const results = JSON.parse(readFileSync(output, 'utf8')) as any[]
  t.same(results.map(r => `${r.code} ${r.path.join('.')}: ${r.message}`), [], 'no problems')
  t.equal(res.status, 0, res.status === 0 ? 'exits 0' : `${res.stdout}${res.stderr}`)
})

t.test('the one rule turned off still holds where it means something: every secured operation documents a 4XX', async t => {
  const doc = JSON.parse(readFileSync(join(ROOT, SPEC), 'utf8'))
  let secured = 0
  for (const [path, item] of Object.entries<any>(doc.paths)) {
    for (const method of METHODS) {
      const op = item[method]
      if (op === undefined) continue
      if (Array.isArray(op.security) && op.security.length === 0) {
        // A public document named by a path parameter (a tool's RFC 9728 metadata) can be 404, nothing else.
        const possible = /\{[^}]+\}/.test(path) ? ['404'] : []
        t.notOk(Object.keys(op.responses).some(code => code.startsWith('4') && !possible.includes(code)), `${method.toUpperCase()} ${path} is public and documents no 4XX it cannot give`)
        continue
      }
      secured++
      t.ok(Object.keys(op.responses).some(code => /^4(\d\d|XX)$/.test(code)), `${method.toUpperCase()} ${path} documents a 4XX`)
    }
  }
  t.ok(secured > 5, 'secured operations were checked')
})
