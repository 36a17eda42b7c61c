// The test credentials and how a request presents them: the gateway's TOLLGATE_SECRET, the one
// client secret every test client shares (hashed once: scrypt is deliberately slow), HTTP Basic
// (RFC 6749 §2.3.1: id and secret form-urlencoded before base64) and the OAuth form body.
// test/helper.ts re-exports all of it.
import { hashSecret } from '../../src/clients/index.js'

export const SECRET = 'test-secret-test-secret-test-secret-0123'
export const CLIENT_SECRET = 'agent-secret-0123456789'
// The lowest cost the config accepts (ln=14; `tollgate hash-secret` uses ln=15): every token request
// of a fresh app runs one real scrypt, hundreds across the suite, and ln=15 costs three times as
// much here. The code path is the same; tests of the default cost use hashSecret() without params.
export const CLIENT_SECRET_HASH = hashSecret(CLIENT_SECRET, { N: 2 ** 14, r: 8, p: 1 })

export function basic (id: string, secret = CLIENT_SECRET): string {
  return 'Basic ' + Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')
}

export function form (fields: Record<string, string>): string {
  return new URLSearchParams(fields).toString()
}

export const FORM = { 'content-type': 'application/x-www-form-urlencoded' }
