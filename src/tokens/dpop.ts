// DPoP proofs (RFC 9449 §4.3): the one check of a `DPoP` header, at POST /token and wherever a
// bound access token is presented. Layered as token verification is: a pre-check (one header,
// bounded size), the library (jose: `typ` dpop+jwt, an allowlisted asymmetric algorithm, the
// signature by the public key embedded in the header), then the claims (htm, htu, iat within the
// leeway, ath), then the replay check of `jti` in the store, shared by every replica. Knows nothing
// about HTTP beyond the method and URI it is given; never logs a proof or a token.
import { createHash } from 'node:crypto'
import { calculateJwkThumbprint, decodeProtectedHeader, EmbeddedJWK, jwtVerify, type JWK } from 'jose'
import { InvalidDpopProof, StoreUnavailable, TollgateError } from '../errors.js'
import type { Store } from '../store/index.js'

/** The proof algorithms accepted (RFC 9449 §5.1 dpop_signing_alg_values_supported): asymmetric only, never `none` or HS*. EdDSA and Ed25519 (RFC 9864's fully-specified name) are the same Ed25519 signature. */
export const DPOP_ALGORITHMS = ['ES256', 'EdDSA', 'Ed25519'] as const
/** A proof carries one small public key: anything longer is refused before parsing. */
const MAX_PROOF_LENGTH = 4096
const MAX_JTI_LENGTH = 256

export interface DpopOptions {
  store: Store
  clock: () => number
  /** Seconds: how far a proof's `iat` may be from now, either way. */
  leeway: number
}

export interface ProofRequest {
  /** The HTTP method the proof must name. */
  htm: string
  /** The URI the proof must name (its query and fragment are ignored on both sides). */
  htu: string
  /** The access token presented with the proof: its hash must be the proof's `ath`. */
  accessToken?: string
}

/** RFC 9449 §4.3 step 9: compared without query and fragment, after URL normalisation. */
export function normaliseHtu (value: string): string | undefined {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    return undefined
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return undefined
  return url.origin + url.pathname
}

/** RFC 9449 §4.2: `ath` is the base64url SHA-256 of the access token's ASCII. */
export function accessTokenHash (token: string): string {
  return createHash('sha256').update(token, 'ascii').digest('base64url')
}

export class DpopVerifier {
  constructor (readonly options: DpopOptions) {}

  /** The proof's key thumbprint (`jkt`) when the proof is valid for the request; InvalidDpopProof otherwise. */
  async verify (header: string | string[] | undefined, req: ProofRequest): Promise<string> {
    if (header === undefined || header === '') throw new InvalidDpopProof('a DPoP proof is required')
    // RFC 9449 §4.3 step 1: exactly one DPoP header (Node joins repeated unknown headers with ", ").
    if (Array.isArray(header) || header.includes(',')) throw new InvalidDpopProof('exactly one DPoP header is allowed')
    if (header.length > MAX_PROOF_LENGTH) throw new InvalidDpopProof('the DPoP proof is too large')
    if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(header)) throw new InvalidDpopProof('the DPoP proof is not a compact JWS')
    const now = this.options.clock()
    let payload
    let jwk: JWK
    try {
      const protectedHeader = decodeProtectedHeader(header)
      if (typeof protectedHeader.jwk !== 'object' || protectedHeader.jwk === null) throw new Error('no jwk header')
      const verified = await jwtVerify(header, EmbeddedJWK, {
        typ: 'dpop+jwt',
        algorithms: [...DPOP_ALGORITHMS],
        currentDate: new Date(now),
        clockTolerance: this.options.leeway,
        requiredClaims: ['jti', 'htm', 'htu', 'iat']
      })
      payload = verified.payload
      jwk = verified.protectedHeader.jwk as JWK
    } catch (err) {
      throw new InvalidDpopProof(`the DPoP proof is not valid: ${describe(err)}`, 401, { cause: err })
    }
    const { jti, htm, htu, iat, ath } = payload as { jti: unknown, htm: unknown, htu: unknown, iat: unknown, ath?: unknown }
    if (typeof jti !== 'string' || jti === '' || jti.length > MAX_JTI_LENGTH) throw new InvalidDpopProof('the DPoP proof has no usable jti')
    if (htm !== req.htm) throw new InvalidDpopProof('the DPoP proof is for another HTTP method (htm)')
    const expected = normaliseHtu(req.htu)
    if (typeof htu !== 'string' || expected === undefined || normaliseHtu(htu) !== expected) throw new InvalidDpopProof('the DPoP proof is for another URI (htu)')
    // RFC 9449 §11.1: iat bounds the window in which a jti must be remembered.
    if (typeof iat !== 'number' || Math.abs(now / 1000 - iat) > this.options.leeway) throw new InvalidDpopProof('the DPoP proof was not made just now (iat)')
    if (req.accessToken !== undefined) {
      if (ath === undefined) throw new InvalidDpopProof('the DPoP proof lacks ath for the access token')
      if (ath !== accessTokenHash(req.accessToken)) throw new InvalidDpopProof('the DPoP proof is for another access token (ath)')
    }
    const jkt = await calculateJwkThumbprint(jwk, 'sha256')
    // Remembered until the proof's iat leaves the window; keyed by the key and jti (hashed: bounded).
    const key = 'dpop:' + createHash('sha256').update(`${jkt}\u0000${jti}`).digest('base64url')
    let fresh: boolean
    try {
      fresh = await this.options.store.markSeen(key, (iat + this.options.leeway + 1) * 1000, now)
    } catch (err) {
      throw err instanceof TollgateError ? err : new StoreUnavailable({ cause: err })
    }
    if (!fresh) throw new InvalidDpopProof('the DPoP proof was used before (jti)')
    return jkt
  }
}

function describe (err: unknown): string {
  const code = (err as { code?: unknown }).code
  if (code === 'ERR_JOSE_ALG_NOT_ALLOWED' || code === 'ERR_JOSE_NOT_SUPPORTED') return 'algorithm not allowed'
  if (code === 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED') return 'bad signature'
  if (code === 'ERR_JWT_CLAIM_VALIDATION_FAILED') return `claim ${String((err as { claim?: unknown }).claim ?? '')} refused`
  if (code === 'ERR_JWT_EXPIRED') return 'expired'
  return 'malformed'
}
