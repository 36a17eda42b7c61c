// Runs the README's quick start verbatim (bar the port) against a real gateway process started the
// way `npm start` starts it: the built-in demo configuration in a fresh directory.
import { spawnSync } from 'node:child_process'
import { copyFileSync, readFileSync, symlinkSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { tempDir } from './helper.js'
import { startGateway } from './support/process.js'

const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')
const block = /<!-- quickstart:begin -->\s*```sh\n([\s\S]*?)```\s*<!-- quickstart:end -->/.exec(readme)?.[1]

t.test('the README quick start works on a fresh directory', async t => {
  t.ok(block, 'the README has a quick-start block')
  const cwd = tempDir(t)
  // What a clone has that the steps use: the demo tool and its npm script.
  symlinkSync(fileURLToPath(new URL('../examples', import.meta.url)), `${cwd}/examples`)
  copyFileSync(fileURLToPath(new URL('../package.json', import.meta.url)), `${cwd}/package.json`)
  const gw = await startGateway(t, { cwd })
  t.match(gw.output(), /demo client id:\s+demo/, 'the operator is told about the demo client')
  t.match(gw.output(), /data\/demo-client-secret/, 'and where its secret is')

  // A step that fails ends the run at once: the trap stops the demo tool, whose open stdout would
  // otherwise keep spawnSync waiting until tap's timeout.
  const script = `set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null' EXIT\n${(block as string).replaceAll('127.0.0.1:8080', `127.0.0.1:${gw.port}`)}`
  const run = spawnSync('bash', ['-c', script], { cwd, encoding: 'utf8' })
  t.equal(run.status, 0, run.stderr)
  const out = run.stdout
  t.match(out, /"access_token":"[\w-]+\.[\w-]+\.[\w-]+","token_type":"Bearer","expires_in":300/, 'step 1: a token')
  t.match(out, /HTTP\/1\.1 200 OK[\s\S]*x-auth-subject: demo/i, 'step 2: forward auth allows it')
  t.match(out, /"active":true,"sub":"demo"/, 'step 3: introspection says active')
  t.match(out, /\{"keys":\[\{"kty":"EC"/, 'step 4: the JWKS')
  t.match(out, /\{"status":"ok","checks":\{"store":"ok","keys":"ok"\}\}/, 'and health')
  t.match(out, /"aud":"tool:echo"/, 'step 5: the tool saw a downstream token for its own audience')
  t.match(out, /"body": "\{\\"tool\\":\\"echo\\",\\"arguments\\":\{\\"text\\":\\"hello\\"\}\}"/, 'and the body unchanged')
  t.match(out, /\{"sub":"demo","limit":100,"used":1,"remaining":99,"window":86400,"reset":\d+\}/, 'the call was charged to the quota')
  t.notOk(gw.output().includes(readFileSync(`${cwd}/data/demo-client-secret`, 'utf8').trim()), 'the secret is not printed when stdout is not a terminal')
})
