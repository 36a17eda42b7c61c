// Shortcuts for the token-lifecycle tests: refresh, revoke, forward auth and introspection, a
// config with a high /token rate limit (these tests make many OAuth requests from one address),
// and advancing an injected clock.
import type { FastifyInstance } from 'fastify'
import type { Config } from '../src/config.js'
import { FORM, basic, form, testConfig, type ManualClock, type TestContext } from './helper.js'

export function lifecycleConfig (t: TestContext, overrides: Record<string, unknown> = {}): Config {
  return testConfig(t, { rateLimits: { token: { max: 100_000, window: '1m' } }, ...overrides })
}

export async function refresh (app: FastifyInstance, refreshToken: string, fields: Record<string, string> = {}, id = 'agent'): Promise<{ statusCode: number, body: any }> {
  const res = await app.inject({
    method: 'POST',
    url: '/refresh',
    headers: { authorization: basic(id), ...FORM },
    payload: form({ refresh_token: refreshToken, ...fields })
  })
  return { statusCode: res.statusCode, body: res.json() }
}

export async function revoke (app: FastifyInstance, token: string, fields: Record<string, string> = {}, id = 'agent'): Promise<{ statusCode: number, body: string, headers: Record<string, unknown> }> {
  const res = await app.inject({
    method: 'POST',
    url: '/revoke',
    headers: { authorization: basic(id), ...FORM },
    payload: form({ token, ...fields })
  })
  return { statusCode: res.statusCode, body: res.body, headers: res.headers }
}

/** GET /validate status for an access token. */
export async function forwardAuth (app: FastifyInstance, accessToken: string): Promise<number> {
  const res = await app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${accessToken}` } })
  return res.statusCode
}

/** POST /validate `active` for an access token. */
export async function introspect (app: FastifyInstance, accessToken: string): Promise<boolean> {
  const res = await app.inject({ method: 'POST', url: '/validate', headers: { authorization: basic('agent'), ...FORM }, payload: form({ token: accessToken }) })
  if (res.statusCode !== 200) throw new Error(`introspection failed: ${res.statusCode} ${res.body}`)
  return res.json().active
}

export function claimsOf (jwt: string): Record<string, any> {
  return JSON.parse(Buffer.from(jwt.split('.')[1] as string, 'base64url').toString('utf8'))
}

/**
 * Moves the injected clock, then syncs the revocation list once: the list fails closed when its
 * last sync looks older than the allowed staleness, and the sync timer runs on real time.
 */
export async function advance (app: FastifyInstance, clock: ManualClock, ms: number): Promise<void> {
  clock.advance(ms)
  await app.tokens.revocations.sync()
}
