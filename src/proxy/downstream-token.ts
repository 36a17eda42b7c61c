// Downstream tokens: the short-lived Tollgate token a tool receives instead of the caller's
// (CONTRACT §5). Audience is the tool's, subject, scope, client_id and act are the caller's, and it
// lives at most 60 s and never past the caller's token. Minted tokens are cached per (caller jti,
// tool) until shortly before they expire, so the hot path signs once per minute per caller and
// tool. Never sees HTTP; never caches past the caller's token (revocation is checked on the
// caller's token before the cache is consulted).
import type { Principal, Tokens } from '../tokens/index.js'
import type { Tool } from '../tools/index.js'

export const DOWNSTREAM_MAX_TTL = 60
/** A cached token is replaced when less than this is left (seconds), so a tool never gets one about to expire. */
const RENEW_BEFORE = 10
const MAX_ENTRIES = 10_000

interface Entry {
  token: string
  exp: number
}

export class DownstreamTokens {
  readonly #cache = new Map<string, Entry>()

  constructor (readonly tokens: Tokens, readonly clock: () => number) {}

  /** A bearer token for `tool` on behalf of `caller`. */
  for (caller: Principal, tool: Tool): string {
    const now = Math.floor(this.clock() / 1000)
    const key = `${caller.jti}\u0000${tool.name}`
    const hit = this.#cache.get(key)
    if (hit !== undefined && hit.exp - now > Math.min(RENEW_BEFORE, (caller.exp - now) / 2)) return hit.token
    const ttl = Math.max(1, Math.min(DOWNSTREAM_MAX_TTL, caller.exp - now))
    const c = caller.claims
    const { token, claims } = this.tokens.issue({
      sub: caller.sub,
      clientId: caller.clientId,
      // Only what the tool needs: its required scopes (the caller holds them all, or authorize refused).
      scopes: tool.scopes.filter(scope => caller.scopes.has(scope)),
      audiences: [tool.audience],
      ttl,
      downstream: true,
      ...(c.act !== undefined ? { act: c.act } : {})
    })
    if (this.#cache.size >= MAX_ENTRIES) {
      // Drop the oldest entry (Map keeps insertion order): bounded memory under any caller mix.
      const oldest = this.#cache.keys().next()
      if (oldest.done !== true) this.#cache.delete(oldest.value)
    }
    this.#cache.delete(key)
    this.#cache.set(key, { token, exp: claims.exp })
    return token
  }

  get size (): number {
    return this.#cache.size
  }
}
