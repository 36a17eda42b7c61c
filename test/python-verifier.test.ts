// An independent verifier: Debian's python3 with PyJWT (PyJWKClient over real HTTP against the
// running app's /jwks, ES256 pinned, iss and aud checked) accepts a token from POST /token and
// rejects tampered or mis-typed ones. The script is the documented example in examples/python/.
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { signCompact } from './support/sign.js'
import { basic, testConfig } from './helper.js'
import { skipOrFail } from './support/skip.js'
import { listenApp, requireExecutable } from './system.js'

const SCRIPT = fileURLToPath(new URL('../examples/python/verify_token.py', import.meta.url))

interface Outcome { code: number | null, stdout: string, stderr: string }

function runVerifier (python: string, token: string, args: string[]): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    // Debian's interpreter with only the system site-packages (no user or virtualenv packages).
    const child = spawn(python, ['-s', SCRIPT, ...args], { env: { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8' }, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
    child.on('error', reject)
    child.on('close', code => { resolve({ code, stdout, stderr }) })
    child.stdin.end(token) // on stdin: a token never goes on a command line
  })
}

const python = requireExecutable(t, '/usr/bin/python3', 'apt-get install python3 python3-jwt python3-cryptography')
if (python !== undefined) {
  const probe = await runVerifier(python, '', [])
  if (/ModuleNotFoundError/.test(probe.stderr)) {
    skipOrFail(t, 'PyJWT is missing for /usr/bin/python3: apt-get install python3-jwt python3-cryptography')
  } else {
    const { app, url } = await listenApp(t, testConfig(t))
    const jwksUrl = `${url}/jwks`
    const issuer = app.config.issuer

    // Over real HTTP, as a client would.
    const res = await fetch(`${url}/token`, {
      method: 'POST',
      headers: { authorization: basic('agent'), 'content-type': 'application/x-www-form-urlencoded' },
      body: 'grant_type=client_credentials&audience=tool%3Achat'
    })
    t.equal(res.status, 200, 'token issued')
    const token = ((await res.json()) as { access_token: string }).access_token

    t.test('PyJWT verifies a token from /token with the keys from /jwks', async t => {
      const out = await runVerifier(python, token, [jwksUrl, issuer, 'tool:chat'])
      t.equal(out.code, 0, out.stderr)
      const claims = JSON.parse(out.stdout)
      t.match(claims, { iss: issuer, sub: 'agent', aud: 'tool:chat', client_id: 'agent', scope: 'tools:call tools:read', role: 'user' })
    })

    t.test('a tampered payload is rejected by the same script', async t => {
      const [h, p, s] = token.split('.') as [string, string, string]
      const payload = JSON.parse(Buffer.from(p, 'base64url').toString())
      payload.scope = 'tools:call tools:read tools:admin'
      const forged = `${h}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${s}`
      const out = await runVerifier(python, forged, [jwksUrl, issuer, 'tool:chat'])
      t.equal(out.code, 1)
      t.match(out.stderr, /rejected: InvalidSignatureError/)
      t.equal(out.stdout, '')
    })

    t.test('another audience or issuer is rejected', async t => {
      const aud = await runVerifier(python, token, [jwksUrl, issuer, 'tool:search'])
      t.equal(aud.code, 1)
      t.match(aud.stderr, /rejected: InvalidAudienceError/)
      const iss = await runVerifier(python, token, [jwksUrl, 'https://elsewhere.test', 'tool:chat'])
      t.equal(iss.code, 1)
      t.match(iss.stderr, /rejected: InvalidIssuerError/)
    })

    t.test('a JWT signed by Tollgate\'s key but not typed at+jwt is rejected', async t => {
      const key = app.keys.signingKey()
      const claims = JSON.parse(Buffer.from(token.split('.')[1] as string, 'base64url').toString())
      const idToken = signCompact({ alg: key.alg, kid: key.kid, typ: 'JWT' }, claims, key.alg, key.privateKey)
      const out = await runVerifier(python, idToken, [jwksUrl, issuer, 'tool:chat'])
      t.equal(out.code, 1)
      t.match(out.stderr, /typ 'JWT' is not at\+jwt/)
    })

    t.test('an HS256 token "signed" with the public JWK is rejected (algorithm pinned)', async t => {
      const jwks = await (await fetch(jwksUrl)).json() as { keys: Array<Record<string, string>> }
      const { createHmac } = await import('node:crypto')
      const claims = token.split('.')[1] as string
      const header = Buffer.from(JSON.stringify({ alg: 'HS256', kid: jwks.keys[0]?.kid, typ: 'at+jwt' })).toString('base64url')
      const mac = createHmac('sha256', JSON.stringify(jwks.keys[0])).update(`${header}.${claims}`).digest('base64url')
      // Control: the same script with the same JWKS URL accepts the genuine token, so the refusal
      // below is not a key lookup that failed.
      t.equal((await runVerifier(python, token, [jwksUrl, issuer, 'tool:chat'])).code, 0, 'control: the real token passes')
      const out = await runVerifier(python, `${header}.${claims}.${mac}`, [jwksUrl, issuer, 'tool:chat'])
      t.equal(out.code, 1)
      t.match(out.stderr, /^rejected: InvalidAlgorithmError: /, 'refused for its algorithm, not for a missing key')
      t.equal(out.stdout, '')
    })
  }
}
