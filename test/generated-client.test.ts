// A client generated from the committed openapi/openapi.json drives the whole flow. The types come
// from openapi-typescript, the example program (examples/typescript-client/tollgate-flow.ts) is
// type-checked against them by the TypeScript compiler in strict mode, so a schema regression fails
// here, and then runs with openapi-fetch against the app on a free port and a real upstream tool.
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import openapiTS, { astToString } from 'openapi-typescript'
import t from 'tap'
import ts from 'typescript'
import { startApp } from './call-helper.js'
import { startUpstream } from './support/upstream.js'
import { CLIENT_SECRET, client, type TestContext } from './helper.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const SPEC = join(root, 'openapi/openapi.json')
const EXAMPLE = join(root, 'examples/typescript-client/tollgate-flow.ts')

/** A directory under test-artifacts/ (gitignored), so the program resolves openapi-fetch from node_modules. */
function artifactDir (t: TestContext): string {
  mkdirSync(join(root, 'test-artifacts'), { recursive: true })
  const dir = mkdtempSync(join(root, 'test-artifacts', 'generated-client-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  return dir
}

/** Generates tollgate-api.d.ts from a spec and copies the example program beside it. */
async function generate (dir: string, spec: Record<string, unknown>): Promise<string> {
  writeFileSync(join(dir, 'tollgate-api.d.ts'), astToString(await openapiTS(spec as any)))
  const program = join(dir, 'tollgate-flow.ts')
  copyFileSync(EXAMPLE, program)
  return program
}

const TSC_OPTIONS: ts.CompilerOptions = {
  noEmit: true,
  strict: true,
  noUncheckedIndexedAccess: true,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  skipLibCheck: true,
  types: ['node']
}
let lastProgram: ts.Program | undefined

/**
 * What `tsc --noEmit --strict --noUncheckedIndexedAccess --target es2022 --module nodenext
 * --moduleResolution nodenext --skipLibCheck --types node <program>` reports, through the compiler's
 * API in this process: each check hands the compiler the previous program, so the lib and Node type
 * files parsed for the first are reused by the second (tsc in a process of its own parsed them again).
 */
function typeCheck (program: string): { ok: boolean, output: string } {
  const host = ts.createCompilerHost(TSC_OPTIONS)
  const checked = ts.createProgram([program], TSC_OPTIONS, host, lastProgram)
  lastProgram = checked
  const diagnostics = ts.getPreEmitDiagnostics(checked)
  return { ok: diagnostics.length === 0, output: ts.formatDiagnostics(diagnostics, host) }
}

const committed = (): Record<string, any> => JSON.parse(readFileSync(SPEC, 'utf8'))

t.test('the example program type-checks against a client generated from the committed spec', async t => {
  const program = await generate(artifactDir(t), committed())
  const result = typeCheck(program)
  t.ok(result.ok, result.output || 'tsc --strict is clean')
})

t.test('a schema regression is a compile error in the client program', async t => {
  const spec = committed()
  // What a careless schema change would do: the problem code and the token field disappear.
  delete spec.components.schemas.Problem.properties.code
  delete spec.components.schemas.TokenResponse.properties.access_token
  const result = typeCheck(await generate(artifactDir(t), spec))
  t.notOk(result.ok, 'tsc refuses the program')
  t.match(result.output, /Property 'code' does not exist/)
  t.match(result.output, /Property 'access_token' does not exist/)
})

t.test('the generated client drives token, introspection, forward auth, call, quota, refresh, revoke and jwks', async t => {
  const upstream = await startUpstream(t)
  const { base } = await startApp(t, upstream, [{ name: 'chat' }], {
    clients: [
      client('agent', { quota: { limit: 100, window: '1d' }, claims: { role: 'user' }, refresh: true }),
      client('admin', { scopes: ['tollgate:admin'], audiences: ['tollgate:admin'] })
    ]
  })
  // The same file the first test type-checked (its import of the generated types is type-only).
  const { runFlow } = await import(pathToFileURL(EXAMPLE).href) as { runFlow: (options: Record<string, string>) => Promise<Record<string, unknown>> }
  const seen = await runFlow({ baseUrl: base, clientId: 'agent', clientSecret: CLIENT_SECRET, tool: 'chat', audience: 'tool:chat', adminClientId: 'admin', adminClientSecret: CLIENT_SECRET }) as Record<string, any>

  t.same(seen.token, { status: 200, token_type: 'Bearer', scope: 'tools:call', expires_in: 300, hasRefresh: true, cacheControl: 'no-store' })
  t.same(seen.invalidScope, { status: 400, error: 'invalid_scope', data: undefined }, 'a typed OAuth error')
  t.match(seen.introspect, { status: 200, active: true, sub: 'agent', client_id: 'agent', aud: 'tool:chat', quotaLimit: 100 })
  t.same(seen.forwardAuth, { status: 200, sub: 'agent', aud: ['tool:chat'], subjectHeader: 'agent' })
  t.match(seen.forwardAuthAnonymous, { status: 401, code: 'invalid_token', problemStatus: 401, contentType: /^application\/problem\+json/, challenge: 'Bearer realm="tollgate"' }, 'a typed problem+json error')

  t.equal(seen.call.status, 200)
  t.same(JSON.parse(seen.call.data.body), { tool: 'chat', arguments: { text: 'hello' } }, 'the tool got the body unchanged')
  t.equal(seen.call.data.url, '/chat')
  t.equal(seen.call.policy, '"quota";q=100;w=86400')
  t.match(seen.call.rateLimit, /^"quota";r=99;t=\d+$/)
  t.equal(seen.callPath.status, 200)
  t.equal(seen.callPath.data.url, '/chat/items/a%20b', 'the {path} parameter reached the tool as two segments')
  t.same(seen.callUnknown, { status: 404, code: 'tool_not_found' })
  t.match(seen.quota, { status: 200, sub: 'agent', limit: 100, used: 2, remaining: 98, window: 86400 })

  t.same(seen.refresh, { status: 200, rotated: true, scope: 'tools:call' })
  t.same(seen.revoke, { status: 200, activeAfter: false, forwardAuthAfter: 401, code: 'token_revoked', replayStatus: 400, replayError: 'invalid_grant' })
  t.match(seen.jwks, { status: 200, alg: 'ES256', tokenAlg: 'ES256', use: 'sig' })
  t.type(seen.jwks.kid, 'string', 'the token\'s kid is in the JWKS')

  t.same(seen.adminCreate, { status: 201, id: 'generated-client', source: 'admin', secretLength: 43 }, 'the admin API through its generated types')
  t.match(seen.adminCredits, { status: 200, sub: 'agent', limit: 100, used: 2, credits: 5, remaining: 103 })
  t.same(seen.adminReadOnly, { status: 409, code: 'client_from_config' })
  t.same(seen.adminLedger, { status: 200, kinds: ['charge', 'charge', 'credit'] })

  t.equal(upstream.seen.length, 2, 'exactly the two calls reached the tool')
})
