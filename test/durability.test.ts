// Durability under kill -9 (SQLite store): a real gateway process under load is SIGKILLed mid-load
// and restarted on the same data directory. Every answer it gave before dying must hold afterwards:
// every rotated refresh token stays dead, every revocation holds, every call answered 200 was charged,
// and the usage ledger holds exactly one charge line per unit charged (no line lost, none twice).
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import t from 'tap'
import { stringify } from 'yaml'
import { CLIENT_SECRET_HASH, FORM, SECRET, basic, tempDir } from './helper.js'
import { startGateway, type Gateway } from './support/process.js'
import { json, startUpstream } from './support/upstream.js'

async function post (gw: Gateway, path: string, fields: Record<string, string>, headers: Record<string, string> = {}): Promise<{ status: number, body: any }> {
  const res = await fetch(`${gw.url}${path}`, { method: 'POST', headers: { authorization: basic('agent'), ...FORM, ...headers }, body: new URLSearchParams(fields) })
  const text = await res.text()
  let body: any = text
  try { body = JSON.parse(text) } catch {}
  return { status: res.status, body }
}

t.test('answers given before a kill -9 hold after the restart', async t => {
  const dir = tempDir(t)
  const upstream = await startUpstream(t, { handler: json({ ok: true }) })
  const upstreamPort = upstream.port

  const file = join(dir, 'tollgate.yaml')
  writeFileSync(file, stringify({
    issuer: 'https://tollgate.test',
    dataDir: join(dir, 'data'),
    logLevel: 'warn',
    rateLimits: { token: { max: 1_000_000, window: '1m' }, perIp: { max: 1_000_000, window: '1m' }, perSubject: { max: 1_000_000, window: '1m' } },
    clients: [{ id: 'agent', secretHash: CLIENT_SECRET_HASH, scopes: ['tools:call'], audiences: ['tool:echo'], refresh: true, quota: { limit: 1_000_000, window: '1d' } }],
    tools: [{ name: 'echo', url: `http://127.0.0.1:${upstreamPort}/echo`, audience: 'tool:echo', scopes: ['tools:call'] }]
  }))
  const env = { TOLLGATE_SECRET: SECRET }
  const first = await startGateway(t, { cwd: dir, env, args: ['--config', file] })

  const rotatedAway: string[] = [] // refresh tokens whose rotation was answered 200
  const revoked: string[] = [] // access tokens whose revocation was answered 200
  let callsAnswered = 0
  let callsStarted = 0
  let callsAvailable = true
  let stop = false

  const start = await post(first, '/token', { grant_type: 'client_credentials' })
  t.equal(start.status, 200)
  const bearer = start.body.access_token as string

  // Four refresh chains, a revoker and a caller run until the process dies under them.
  const chain = async (): Promise<void> => {
    let current = (await post(first, '/token', { grant_type: 'client_credentials' })).body.refresh_token as string
    while (!stop) {
      try {
        const res = await post(first, '/refresh', { refresh_token: current })
        if (res.status !== 200) return
        rotatedAway.push(current)
        current = res.body.refresh_token
      } catch { return }
    }
  }
  const revoker = async (): Promise<void> => {
    while (!stop) {
      try {
        const tok = await post(first, '/token', { grant_type: 'client_credentials' })
        if (tok.status !== 200) return
        const res = await post(first, '/revoke', { token: tok.body.access_token })
        if (res.status === 200) revoked.push(tok.body.access_token)
      } catch { return }
    }
  }
  const caller = async (): Promise<void> => {
    while (!stop) {
      try {
        callsStarted++
        const res = await fetch(`${first.url}/call`, { method: 'POST', headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json' }, body: '{"tool":"echo","arguments":{}}' })
        await res.arrayBuffer()
        if (res.status === 404) { callsAvailable = false; return } // asserted below: a failure, not a skip
        if (res.status === 200) callsAnswered++
      } catch { return }
    }
  }
  let settled = false
  const load = Promise.all([chain(), chain(), chain(), chain(), revoker(), caller(), caller()]).finally(() => { settled = true })
  // Kill once every kind of work has answered at least a few times (progress, not time); stop
  // waiting if the workers have all ended on their own (an error answer under load ends a worker).
  while (!settled && (rotatedAway.length < 40 || revoked.length < 10 || (callsAvailable && callsAnswered < 20))) {
    await new Promise(resolve => setTimeout(resolve, 20))
    if (first.child.exitCode !== null) throw new Error(`gateway died by itself: ${first.output()}`)
  }
  first.child.kill('SIGKILL')
  stop = true
  const exited = first.child.exitCode !== null || first.child.signalCode !== null ? Promise.resolve() : once(first.child, 'exit')
  await load
  await exited
  t.ok(callsAvailable, 'POST /call is served (a 404 there would leave the quota checks below without calls)')
  t.ok(rotatedAway.length > 0 && revoked.length > 0 && callsAnswered > 0, `killed mid-load after ${rotatedAway.length} rotations, ${revoked.length} revocations, ${callsAnswered} calls`)

  const second = await startGateway(t, { cwd: dir, env, args: ['--config', file] })
  // Newest first: the last rotations before the kill are the ones a non-durable store would lose
  // (and presenting one revokes its family, which would hide older tokens of the same chain).
  for (const token of [...rotatedAway].reverse()) {
    const res = await post(second, '/refresh', { refresh_token: token })
    t.equal(res.status, 400, 'a rotated refresh token stays dead')
    if (res.status !== 400) break
  }
  for (const token of revoked) {
    const res = await fetch(`${second.url}/validate`, { headers: { authorization: `Bearer ${token}` } })
    t.equal(res.status, 401, 'a revocation holds')
    if (res.status !== 401) break
  }
  const quota = await (await fetch(`${second.url}/quota`, { headers: { authorization: `Bearer ${bearer}` } })).json() as { used: number }
  t.ok(quota.used >= callsAnswered, `every call answered 200 was charged (${quota.used} charged, ${callsAnswered} answered)`)
  t.ok(quota.used <= callsStarted, 'and nothing beyond the calls made')
  // Each charge's ledger line is written in the charge's own transaction (SqliteStore's group
  // commit), so a kill cannot keep one without the other. Read the file as an auditor would.
  const db = new Database(join(dir, 'data', 'tollgate.db'), { readonly: true })
  t.teardown(() => db.close())
  const charged = db.prepare("SELECT count(*) AS n, coalesce(sum(amount), 0) AS total FROM ledger WHERE kind = 'charge'").get() as { n: number, total: number }
  t.equal(charged.total, quota.used, `the ledger's charge lines add up to the usage after the kill (${charged.n} lines)`)
  t.equal(charged.n, quota.used, 'one line per call (cost 1)')
})
