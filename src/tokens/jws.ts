// Strict JWS compact serialisation (RFC 7515) for the three algorithms Tollgate signs with. Parsing
// refuses everything RFC 8725 warns about before any key is touched: wrong shape, non-canonical
// base64url, non-object or non-UTF-8 JSON, `crit`, key-carrying headers, nested JWTs. The key is
// chosen only by `kid` from an in-memory map, and its one pinned algorithm must match `alg`.
import { sign as cryptoSign, verify as cryptoVerify, type KeyObject } from 'node:crypto'
import type { SigningAlgorithm } from '../keys/material.js'

export const MAX_TOKEN_LENGTH = 8192

export class JwsError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'JwsError'
  }
}

export interface ParsedJws {
  header: Record<string, unknown>
  payload: Record<string, unknown>
  signingInput: string
  signature: Buffer
}

const SEGMENT = /^[A-Za-z0-9_-]+$/
const utf8 = new TextDecoder('utf-8', { fatal: true })
/** Header members that name or carry a key: never honoured (RFC 8725 §3.10, SECURITY.md). */
const KEY_HEADERS = ['jku', 'x5u', 'jwk', 'x5c', 'x5t', 'x5t#S256']
/** Certificate thumbprints only name a key; identity providers (Entra ID) send them beside `kid`. */
const THUMBPRINT_HEADERS = new Set(['x5t', 'x5t#S256'])

export interface ParseOptions {
  /** Tolerate (and ignore) `x5t` / `x5t#S256`: for trusted issuers' tokens, whose key is chosen by `kid` alone. */
  ignoreThumbprints?: boolean
}

function decodeSegment (segment: string, what: string): Buffer {
  if (!SEGMENT.test(segment)) throw new JwsError(`${what} is not base64url`)
  const bytes = Buffer.from(segment, 'base64url')
  // Canonical form only: trailing bits must be zero, so one token has exactly one spelling.
  if (bytes.toString('base64url') !== segment) throw new JwsError(`${what} is not canonical base64url`)
  return bytes
}

function decodeJsonObject (segment: string, what: string): Record<string, unknown> {
  let text: string
  try {
    text = utf8.decode(decodeSegment(segment, what))
  } catch (err) {
    if (err instanceof JwsError) throw err
    throw new JwsError(`${what} is not UTF-8`)
  }
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    throw new JwsError(`${what} is not JSON`)
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new JwsError(`${what} is not a JSON object`)
  return value as Record<string, unknown>
}

/** Splits and decodes a compact JWS, enforcing the shape rules. Verifies nothing cryptographic. */
export function parseCompact (token: string, options: ParseOptions = {}): ParsedJws {
  if (token.length > MAX_TOKEN_LENGTH) throw new JwsError('token too large')
  const first = token.indexOf('.')
  const second = token.indexOf('.', first + 1)
  if (first <= 0 || second <= first + 1 || token.indexOf('.', second + 1) !== -1 || second === token.length - 1) {
    throw new JwsError('token is not a compact JWS')
  }
  const headerSegment = token.slice(0, first)
  const header = decodeJsonObject(headerSegment, 'header')
  if (typeof header.alg !== 'string') throw new JwsError('header alg missing')
  if ('enc' in header) throw new JwsError('JWE is not accepted')
  if ('crit' in header) throw new JwsError('unsupported critical header') // RFC 7515 §4.1.11: we understand no extensions
  if ('b64' in header) throw new JwsError('unencoded payloads are not accepted')
  if ('cty' in header) throw new JwsError('nested or typed content is not accepted')
  for (const name of KEY_HEADERS) {
    if (name in header && !(options.ignoreThumbprints === true && THUMBPRINT_HEADERS.has(name))) throw new JwsError(`header ${name} is not accepted`)
  }
  const payload = decodeJsonObject(token.slice(first + 1, second), 'payload')
  const signature = decodeSegment(token.slice(second + 1), 'signature')
  return { header, payload, signingInput: token.slice(0, second), signature }
}

export function signCompact (header: Record<string, unknown>, payload: Record<string, unknown>, alg: SigningAlgorithm, key: KeyObject): string {
  const input = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`
  const data = Buffer.from(input)
  const signature = alg === 'ES256'
    ? cryptoSign('sha256', data, { key, dsaEncoding: 'ieee-p1363' })
    : alg === 'EdDSA'
      ? cryptoSign(null, data, key)
      : cryptoSign('sha256', data, key)
  return `${input}.${signature.toString('base64url')}`
}

/** Verifies a signature with the key's pinned algorithm. Returns false, never throws, on mismatch. */
export function verifySignature (parsed: ParsedJws, alg: SigningAlgorithm, key: KeyObject): boolean {
  if (parsed.header.alg !== alg) return false
  const data = Buffer.from(parsed.signingInput)
  const sig = parsed.signature
  try {
    if (alg === 'ES256') {
      // RFC 7518 §3.4: exactly R || S, 32 octets each; neither may be zero.
      if (sig.length !== 64 || isZero(sig.subarray(0, 32)) || isZero(sig.subarray(32))) return false
      return cryptoVerify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, sig)
    }
    if (alg === 'EdDSA') return sig.length === 64 && cryptoVerify(null, data, key, sig)
    const modulusBytes = Math.ceil((key.asymmetricKeyDetails?.modulusLength ?? 0) / 8)
    return sig.length === modulusBytes && cryptoVerify('sha256', data, key, sig)
  } catch {
    return false
  }
}

function isZero (bytes: Buffer): boolean {
  for (const b of bytes) if (b !== 0) return false
  return true
}
