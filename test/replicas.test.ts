// Replicas as one: real gateway processes sharing one Redis behave as one gateway. A token from
// replica A validates at replica B; the key set created by the first replica is the one every
// replica publishes; a rotation made with the CLI reaches every replica's /jwks within the key
// reload interval, before the new key signs. The replicas reload every second
// (keys.reloadInterval) rather than the default ten, so those waits are short.
import t from 'tap'
import { jwsHeader, startCluster, type Replica } from './support/cluster.js'

const KEY_RELOAD_MS = 1000

async function jwksKids (r: Replica): Promise<string[]> {
  const res = await cluster!.request(r, '/jwks')
  const body = await res.json() as { keys: Array<{ kid: string }> }
  return body.keys.map(k => k.kid)
}

const cluster = await startCluster(t, { replicas: 2, config: { keys: { reloadInterval: `${KEY_RELOAD_MS}ms` } } })
if (cluster !== undefined) { // else startCluster reported the missing Redis: a skip, or a failure under CI
  const [a, b] = cluster.replicas as [Replica, Replica]

  t.test('the first replica creates the key set; the others load it', async t => {
    const kidsA = await jwksKids(a)
    const kidsB = await jwksKids(b)
    t.equal(kidsA.length, 1)
    t.same(kidsB, kidsA, 'the same kid at both /jwks')
    t.ok(a.logs.some(l => l.includes('tollgate ready') && l.includes(kidsA[0] as string)), 'replica A signs with it')
    t.ok(b.logs.some(l => l.includes('tollgate ready') && l.includes(kidsA[0] as string)), 'replica B signs with it')
  })

  t.test('a token issued by replica A validates at replica B, and the other way round', async t => {
    const fromA = await cluster.issue(a)
    const atB = await cluster.request(b, '/validate', { bearer: fromA.access_token })
    t.equal(atB.status, 200)
    t.equal(atB.headers.get('x-auth-subject'), 'agent')
    t.equal(atB.headers.get('x-auth-client-id'), 'agent')

    const fromB = await cluster.issue(b, { scope: 'tools:read' })
    const atA = await cluster.request(a, '/validate', { form: { token: fromB.access_token } })
    t.match(await atA.json(), { active: true, sub: 'agent', scope: 'tools:read' }, 'introspection at A')

    const forged = (fromA.access_token as string).slice(0, -4) + 'AAAA'
    t.equal((await cluster.request(b, '/validate', { bearer: forged })).status, 401, 'a tampered token is refused')
  })

  t.test('a CLI rotation reaches both replicas\' /jwks within the reload interval, before the new key signs', async t => {
    const [oldKid] = await jwksKids(a)
    const rotated = await cluster.cli(['keys', 'rotate'])
    t.equal(rotated.status, 0, rotated.stderr)
    const newKid = /created (\S+)/.exec(rotated.stdout)?.[1]
    t.ok(newKid !== undefined && newKid !== oldKid, `created ${String(newKid)}`)
    t.match(rotated.stdout, /next/, 'listed as the next key')

    // Each replica re-reads the key set every KEY_RELOAD_MS; wait at most that plus a margin.
    const deadline = Date.now() + KEY_RELOAD_MS + 5000
    const seen = new Set<number>()
    while (seen.size < 2 && Date.now() < deadline) {
      for (const r of [a, b]) if ((await jwksKids(r)).includes(newKid as string)) seen.add(r.index)
      if (seen.size < 2) await new Promise(resolve => setTimeout(resolve, 200))
    }
    t.same([...seen].sort(), [0, 1], 'both replicas publish the new key')
    for (const r of [a, b]) {
      t.same((await jwksKids(r)).sort(), [oldKid, newKid].sort(), `replica ${r.index} publishes both keys`)
      const token = await cluster.issue(r)
      t.equal(jwsHeader(token.access_token).kid, oldKid, `replica ${r.index} still signs with the current key`)
    }
    const listed = await cluster.cli(['keys', 'list'])
    t.match(listed.stdout, new RegExp(`${oldKid as string}\\s+ES256\\s+current`))
    t.match(listed.stdout, new RegExp(`${newKid as string}\\s+ES256\\s+next`))
  })

  t.test('`keys retire --now` of the signing key, with a rotation pending: within the reload interval both replicas refuse its tokens', async t => {
    const before = await cluster.issue(a)
    const leaked = jwsHeader(before.access_token).kid as string
    t.equal((await cluster.request(b, '/validate', { bearer: before.access_token })).status, 200, 'valid at B before')
    const retired = await cluster.cli(['keys', 'retire', leaked, '--now'])
    t.equal(retired.status, 0, retired.status === 0 ? 'retire --now exits 0' : retired.stderr)
    const fresh = /^created (\S+)$/m.exec(retired.stdout)?.[1] as string
    t.ok(fresh, 'a fresh key was created first')
    t.match(retired.stderr, /"audit":"keys.retired_now"/, 'an audit line')

    const deadline = Date.now() + KEY_RELOAD_MS + 5000
    const done = new Set<number>()
    while (done.size < 2 && Date.now() < deadline) {
      for (const r of [a, b]) {
        if ((await cluster.request(r, '/validate', { bearer: before.access_token })).status === 401) done.add(r.index)
      }
      if (done.size < 2) await new Promise(resolve => setTimeout(resolve, 200))
    }
    t.same([...done].sort(), [0, 1], 'both replicas refuse the retired key\'s token')
    for (const r of [a, b]) {
      t.same(await jwksKids(r), [fresh], `replica ${r.index} publishes only the fresh key (the pending one was replaced)`)
      t.equal(jwsHeader((await cluster.issue(r)).access_token).kid, fresh, `replica ${r.index} signs with it`)
    }
  })

  t.test('no replica logged a secret or a token', async t => {
    const issued = await cluster.issue(a)
    await cluster.request(b, '/validate', { bearer: issued.access_token })
    for (const r of cluster.replicas) {
      const text = r.logs.join('\n')
      t.notMatch(text, issued.access_token, `replica ${r.index}`)
      t.notMatch(text, /agent-secret-0123456789/)
      t.notMatch(text, /test-secret-test-secret/)
    }
  })
}
