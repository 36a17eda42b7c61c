// Exchanged subjects are namespaced by their issuer (issue 15, item 6): users of two trusted
// issuers with the same `sub`, and an IdP user whose `sub` is a Tollgate client id, are distinct
// principals with their own X-Auth-Subject and their own quota counters.
import { SignJWT, exportJWK, generateKeyPair, type CryptoKey } from 'jose'
import t from 'tap'
import { externalSubject } from '../src/oauth/exchange.js'
import { startApp } from './call-helper.js'
import { startUpstream } from './support/upstream.js'
import { FORM, basic, client, form, issue, type TestContext } from './helper.js'
import { claimsOf } from './lifecycle-helper.js'
import { startIdp } from './support/idp.js'

const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'
const ACCESS = 'urn:ietf:params:oauth:token-type:access_token'
const CALL = { 'content-type': 'application/json' }

interface Idp { issuer: string, jwksUri: string, sign: (sub: string) => Promise<string> }

/** An identity provider: a key pair, and its JWKS served on a free port (support/idp.ts). */
async function startIssuer (t: TestContext, issuer: string): Promise<Idp> {
  const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true })
  const jwk = { ...await exportJWK(publicKey), kid: 'k1', use: 'sig' }
  const { jwksUri } = await startIdp(t, { keys: [jwk], cacheControl: 'max-age=300' })
  const sign = async (sub: string): Promise<string> => await signAs(privateKey, issuer, sub)
  return { issuer, jwksUri, sign }
}

async function signAs (key: CryptoKey, issuer: string, sub: string): Promise<string> {
  const now = Math.floor(Date.now() / 1000)
  return await new SignJWT({ iss: issuer, sub, aud: 'tollgate', iat: now, exp: now + 600, scope: 'tools:call' })
    .setProtectedHeader({ alg: 'ES256', kid: 'k1', typ: 'JWT' }).sign(key)
}

async function setup (t: TestContext): Promise<{ app: any, idpA: Idp, idpB: Idp, seen: Array<{ headers: Record<string, unknown> }> }> {
  const idpA = await startIssuer(t, 'https://idp-a.test')
  const idpB = await startIssuer(t, 'https://idp-b.test/tenant')
  const up = await startUpstream(t)
  const { app } = await startApp(t, up, [{ name: 'chat' }], {
    rateLimits: { token: { max: 10_000, window: '1m' } },
    clients: [
      client('agent', { quota: { limit: 10, window: '1h' } }),
      client('exchanger', { exchange: true, scopes: ['tools:call'], audiences: ['tool:chat'], quota: { limit: 10, window: '1h' } })
    ],
    trustedIssuers: [idpA, idpB].map(i => ({ issuer: i.issuer, jwksUri: i.jwksUri, audiences: ['tollgate'] }))
  })
  return { app, idpA, idpB, seen: up.seen }
}

async function exchange (app: any, subjectToken: string): Promise<{ statusCode: number, body: any }> {
  const res = await app.inject({
    method: 'POST',
    url: '/token',
    headers: { authorization: basic('exchanger'), ...FORM },
    payload: form({ grant_type: EXCHANGE, subject_token_type: ACCESS, subject_token: subjectToken })
  })
  return { statusCode: res.statusCode, body: res.json() }
}

async function exchanged (app: any, subjectToken: string): Promise<string> {
  const res = await exchange(app, subjectToken)
  if (res.statusCode !== 200) throw new Error(`exchange failed: ${res.statusCode} ${JSON.stringify(res.body)}`)
  return res.body.access_token
}

async function call (app: any, token: string): Promise<number> {
  const res = await app.inject({ method: 'POST', url: '/call', headers: { ...CALL, authorization: `Bearer ${token}` }, payload: '{"tool":"chat"}' })
  return res.statusCode
}

async function used (app: any, token: string): Promise<{ sub: string, used: number }> {
  const res = await app.inject({ method: 'GET', url: '/quota', headers: { authorization: `Bearer ${token}` } })
  const { sub, used } = res.json()
  return { sub, used }
}

t.test('the same sub at two issuers, and a sub equal to a client id, are three subjects with three quota counters', async t => {
  const { app, idpA, idpB, seen } = await setup(t)
  const aUser = await exchanged(app, await idpA.sign('user-1'))
  const bUser = await exchanged(app, await idpB.sign('user-1'))
  const aAgent = await exchanged(app, await idpA.sign('agent'))
  const agent = (await issue(app, {}, 'agent')).access_token as string

  t.same([aUser, bUser, aAgent, agent].map(tok => claimsOf(tok).sub), [
    'https://idp-a.test#user-1',
    'https://idp-b.test/tenant#user-1',
    'https://idp-a.test#agent',
    'agent'
  ])

  // X-Auth-Subject, at GET /validate and upstream, is the namespaced subject.
  const validated = await app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${aAgent}` } })
  t.equal(validated.statusCode, 200)
  t.equal(validated.headers['x-auth-subject'], 'https://idp-a.test#agent')
  t.equal(await call(app, aAgent), 200)
  t.equal(seen.at(-1)?.headers['x-auth-subject'], 'https://idp-a.test#agent')

  // Spend IdP A's user-1 quota: nobody else's counter moves.
  for (let i = 0; i < 3; i++) t.equal(await call(app, aUser), 200)
  t.same(await used(app, aUser), { sub: 'https://idp-a.test#user-1', used: 3 })
  t.same(await used(app, bUser), { sub: 'https://idp-b.test/tenant#user-1', used: 0 }, 'the same sub at another issuer is another counter')
  t.same(await used(app, aAgent), { sub: 'https://idp-a.test#agent', used: 1 }, 'the IdP user named like a client has its own counter')
  t.same(await used(app, agent), { sub: 'agent', used: 0 }, 'the client `agent` is untouched by the IdP user `agent`')

  // Exhausting the IdP user `agent` leaves the client `agent` its full quota.
  for (let i = 0; i < 9; i++) t.equal(await call(app, aAgent), 200)
  t.equal(await call(app, aAgent), 429)
  t.equal(await call(app, agent), 200)
})

t.test('exchanging a Tollgate token keeps its sub as it is', async t => {
  const { app, idpA } = await setup(t)
  const first = await exchanged(app, await idpA.sign('user-1'))
  const again = await exchanged(app, first)
  t.equal(claimsOf(again).sub, 'https://idp-a.test#user-1', 'not namespaced twice')
  const own = await exchanged(app, (await issue(app, {}, 'agent')).access_token)
  t.equal(claimsOf(own).sub, 'agent', 'a Tollgate client\'s subject stays the client id')
})

t.test('subs with characters a header cannot carry become printable ASCII, without collisions', async t => {
  const { app, idpA } = await setup(t)
  const subs = ['jürgen', 'a b', 'a%20b', 'line\r\nX-Evil: 1', 'x#y', '\t']
  const subjects: string[] = []
  for (const sub of subs) {
    const token = await exchanged(app, await idpA.sign(sub))
    const subject = claimsOf(token).sub as string
    subjects.push(subject)
    t.match(subject, /^[\x21-\x7e]+$/, `printable ASCII for ${JSON.stringify(sub)}`)
    const validated = await app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${token}` } })
    t.equal(validated.statusCode, 200, 'X-Auth-Subject can carry it')
    t.equal(validated.headers['x-auth-subject'], subject)
  }
  t.same(subjects, [
    'https://idp-a.test#j%C3%BCrgen',
    'https://idp-a.test#a%20b',
    'https://idp-a.test#a%2520b',
    'https://idp-a.test#line%0D%0AX-Evil:%201',
    'https://idp-a.test#x#y',
    'https://idp-a.test#%09'
  ])
  t.equal(new Set(subjects).size, subs.length)

  const lone = await exchange(app, await idpA.sign('a\uD800'))
  t.equal(lone.statusCode, 400)
  t.equal(lone.body.error, 'invalid_request', 'a lone surrogate is refused, not folded into U+FFFD')
  const long = await exchange(app, await idpA.sign('x'.repeat(1100)))
  t.equal(long.statusCode, 400)
  t.equal(long.body.error, 'invalid_request', 'a sub too long for a header-sized subject is refused')
})

t.test('the issuer part never contains the separator: distinct (issuer, sub) pairs never meet', async t => {
  t.equal(externalSubject('https://a#b', 'c'), 'https://a%23b#c')
  t.not(externalSubject('https://a#b', 'c'), externalSubject('https://a', 'b#c'))
  t.not(externalSubject('https://a', '%41'), externalSubject('https://a', 'A'))
  t.equal(externalSubject('https://ä', 'x'), 'https://%C3%A4#x')
})
