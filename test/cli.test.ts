// The `tollgate` command as users run it (CONTRACT §7, §8): `hash-secret` exactly as the docs pipe
// it through npx, `openapi`, `--help`, and `serve` configured by TOLLGATE_CONFIG alone. Real
// processes on the built dist/ (rebuilt first when a source is newer).
import { spawn } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { stringify } from 'yaml'
import { CLIENT_SECRET_HASH, FORM, basic, build, form, tempDir, testConfig } from './helper.js'
import { CLI, PRELOAD, ROOT, ensureBuilt } from './support/process.js'
import { run, runTollgate, tollgateInProcess } from './support/command.js'
import { freePort } from './support/redis.js'

ensureBuilt()


t.test('hash-secret as docs/configuration.md pipes it: the hash authenticates the client, a wrong secret does not', async t => {
  const secret = 'a-client-secret-from-the-cli-0123'
  // The documented command, word for word, in a shell. npx finds the package's own bin; it is
  // told never to install anything (an unresolved name must fail, not fetch from a registry).
  const res = await run('/bin/sh', ['-c', 'printf \'%s\' "$AGENT_SECRET" | npx tollgate hash-secret'], {
    env: { PATH: process.env.PATH, HOME: process.env.HOME, AGENT_SECRET: secret, npm_config_yes: 'false', npm_config_offline: 'true', npm_config_update_notifier: 'false' }
  })
  t.equal(res.status, 0, res.stderr)
  const lines = res.stdout.split('\n')
  t.same(lines.slice(1), [''], 'one line on stdout')
  const hash = lines[0] as string
  t.match(hash, /^\$scrypt\$ln=\d+,r=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]{43}$/)
  t.notOk(res.stdout.includes(secret) || res.stderr.includes(secret), 'the secret is never echoed')

  const app = await build(t, testConfig(t, { clients: [{ id: 'cli-client', secretHash: hash, scopes: ['tools:call'], audiences: ['tool:chat'] }] }))
  const token = async (secretTried: string): Promise<{ statusCode: number, json: () => any }> => await app.inject({
    method: 'POST', url: '/token', headers: { authorization: basic('cli-client', secretTried), ...FORM }, payload: form({ grant_type: 'client_credentials' })
  })
  const good = await token(secret)
  t.equal(good.statusCode, 200, 'the secret whose hash was printed gets a token')
  t.equal(good.json().token_type, 'Bearer')
  const wrong = await token(secret + 'x')
  t.equal(wrong.statusCode, 401, 'a wrong secret does not')
  t.equal(wrong.json().error, 'invalid_client')
})

t.test('tollgate openapi prints the document GET /openapi.json serves and openapi/openapi.json holds', async t => {
  const res = await runTollgate(['openapi'])
  t.equal(res.status, 0, res.stderr)
  const printed = JSON.parse(res.stdout)
  t.equal(printed.openapi, '3.1.0')
  t.ok(Object.keys(printed.paths).length > 10, 'a whole document, not a stub')
  // The document names the gateway's issuer as the servers[] default: the CLI's is the default issuer.
  const app = await build(t, testConfig(t, { issuer: 'http://localhost:8080' }))
  const served = (await app.inject({ method: 'GET', url: '/openapi.json' })).json()
  t.same(printed, served, 'the same document as GET /openapi.json')
  t.same(printed, JSON.parse(readFileSync(join(ROOT, 'openapi', 'openapi.json'), 'utf8')), 'the same document as the committed file')
})

t.test('tollgate --help lists every verb of CONTRACT §8 and exits 0', async t => {
  const res = await runTollgate(['--help'])
  t.equal(res.status, 0)
  t.equal(res.stderr, '')
  for (const verb of [/^\s+serve \[--config PATH\]/m, /^\s+hash-secret\s/m, /^\s+keys list\b/m, /^\s+keys rotate\b/m, /^\s+keys retire <kid> --now\b/m, /^\s+openapi\s/m, /^\s+--help\s/m]) {
    t.match(res.stdout, verb)
  }
  t.match(res.stdout, /TOLLGATE_CONFIG/, 'names the config variable')
  // The same code without a verb, in this process (a process start costs seconds on a loaded machine).
  const bare = await tollgateInProcess([])
  t.equal(bare.status, 1, 'no verb at all is a usage error (the positive control: the exit code is not constant)')
  t.equal(bare.stdout, res.stdout, 'with the same text')
})

t.test('tollgate serve with TOLLGATE_CONFIG as its only environment variable uses that file', async t => {
  const dir = tempDir(t)
  const port = await freePort()
  const file = join(dir, 'from-env.yaml')
  writeFileSync(file, stringify({
    server: { host: '127.0.0.1', port },
    issuer: 'https://from-env.tollgate.test',
    dataDir: join(dir, 'data'),
    logLevel: 'info',
    clients: [{ id: 'env-client', secretHash: CLIENT_SECRET_HASH, scopes: ['tools:call'], audiences: ['tool:chat'] }]
  }), { mode: 0o600 })
  // Nothing else: no PATH, no TOLLGATE_PORT/HOST/SECRET/DATA_DIR. The port, the issuer and the
  // client exist only in the file.
  const child = spawn(process.execPath, [...PRELOAD, CLI, 'serve'], { cwd: dir, env: { TOLLGATE_CONFIG: file }, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  let out = ''
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`no "tollgate ready" within 60 s:\n${out}`)) }, 60_000)
    const onData = (c: Buffer): void => {
      out += c.toString()
      if (out.includes('"tollgate ready"')) { clearTimeout(timer); resolve() }
    }
    child.stdout.on('data', onData)
    child.stderr.on('data', onData)
    child.once('exit', code => { clearTimeout(timer); reject(new Error(`serve exited with ${String(code)}:\n${out}`)) })
  })
  const base = `http://127.0.0.1:${port}`
  const meta = await (await fetch(`${base}/.well-known/oauth-authorization-server`)).json() as Record<string, unknown>
  t.equal(meta.issuer, 'https://from-env.tollgate.test', 'the issuer from the file')
  const res = await fetch(`${base}/token`, { method: 'POST', headers: { authorization: basic('env-client'), ...FORM }, body: form({ grant_type: 'client_credentials' }) })
  t.equal(res.status, 200, 'a client that exists only in the file gets a token')
  const demo = await fetch(`${base}/token`, { method: 'POST', headers: { authorization: basic('agent'), ...FORM }, body: form({ grant_type: 'client_credentials' }) })
  t.equal(demo.status, 401, 'a client the file does not name gets none')
  const exited = new Promise(resolve => child.once('exit', resolve))
  child.kill('SIGTERM')
  await exited
})
