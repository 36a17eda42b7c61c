// The test credentials and how a request presents them: the gateway's TOLLGATE_SECRET, the one
// client secret every test client shares (hashed once: scrypt is deliberately slow), HTTP Basic
// (RFC 6749 §2.3.1: id and secret form-urlencoded before base64) and the OAuth form body.
// test/helper.ts re-exports all of it.
import { hashSecret } from '../../src/clients/index.js'

export const SECRET = 'test-secret-test-secret-test-secret-0123'
export const CLIENT_SECRET = 'agent-secret-0123456789'
export const CLIENT_SECRET_HASH = hashSecret(CLIENT_SECRET)

export function basic (id: string, secret = CLIENT_SECRET): string {
  return 'Basic ' + Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')
}

export function form (fields: Record<string, string>): string {
  return new URLSearchParams(fields).toString()
}

export const FORM = { 'content-type': 'application/x-www-form-urlencoded' }
