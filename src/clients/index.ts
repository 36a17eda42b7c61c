// The client registry (from config) and client-secret verification. Secrets are kept only as
// scrypt hashes; comparison is timing-safe on equal-length digests, and an unknown client costs
// the same scrypt as a wrong secret (with the parameters most configured clients use), so neither
// timing nor answer tells them apart. Scrypt runs on libuv's small thread pool: only a few run at
// once, a few more wait, and the rest are refused at once rather than queued without bound.
import { createHmac, randomBytes, scrypt as scryptCb, scryptSync, timingSafeEqual, type ScryptOptions } from 'node:crypto'
import type { ClientConfig } from '../config.js'
import type { StoredClient } from '../store/index.js'
import { OAuthError } from '../errors.js'
import type { QuotaClaim } from '../tokens/index.js'

export interface Client {
  id: string
  scopes: readonly string[]
  audiences: readonly string[]
  quota?: QuotaClaim
  refresh: boolean
  exchange: boolean
  /** RFC 9449: may (optional) or must (required) bind its access tokens to a DPoP key. */
  dpop?: 'optional' | 'required'
  /** Seconds; falls back to tokens.accessTtl. */
  accessTtl?: number
  claims: Record<string, unknown>
}

export interface ScryptHash {
  params: { N: number, r: number, p: number }
  salt: Buffer
  hash: Buffer
}

const DEFAULT_PARAMS = { N: 2 ** 15, r: 8, p: 1 }
const KEY_LENGTH = 32
const MAXMEM = 256 * 1024 * 1024

function scrypt (secret: string, salt: Buffer, params: ScryptHash['params']): Promise<Buffer> {
  const options: ScryptOptions = { ...params, maxmem: MAXMEM }
  return new Promise((resolve, reject) => {
    scryptCb(secret, salt, KEY_LENGTH, options, (err, key) => { err === null ? resolve(key) : reject(err) })
  })
}

/** `$scrypt$ln=15,r=8,p=1$<salt>$<hash>` (PHC string format, base64 without padding). */
export function hashSecret (secret: string, params = DEFAULT_PARAMS): string {
  const salt = randomBytes(16)
  const hash = scryptSync(secret, salt, KEY_LENGTH, { ...params, maxmem: MAXMEM })
  return `$scrypt$ln=${Math.log2(params.N)},r=${params.r},p=${params.p}$${salt.toString('base64').replace(/=+$/, '')}$${hash.toString('base64').replace(/=+$/, '')}`
}

/** hashSecret off the event loop (the admin API hashes the secrets it generates). */
export async function hashSecretAsync (secret: string, params = DEFAULT_PARAMS): Promise<string> {
  const salt = randomBytes(16)
  const hash = await scrypt(secret, salt, params)
  return `$scrypt$ln=${Math.log2(params.N)},r=${params.r},p=${params.p}$${salt.toString('base64').replace(/=+$/, '')}$${hash.toString('base64').replace(/=+$/, '')}`
}

export function parseSecretHash (text: string): ScryptHash {
  const m = /^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]{16,})\$([A-Za-z0-9+/]{43})$/.exec(text)
  if (m === null) throw new Error('not a scrypt hash from `tollgate hash-secret`')
  const ln = Number(m[1])
  if (ln < 14 || ln > 20) throw new Error('scrypt cost ln must be between 14 and 20')
  return { params: { N: 2 ** ln, r: Number(m[2]), p: Number(m[3]) }, salt: Buffer.from(m[4] as string, 'base64'), hash: Buffer.from(m[5] as string, 'base64') }
}

/** Every secret-check slot and the queue behind them are taken: try again in a moment. */
export class SecretChecksBusy extends OAuthError {
  constructor () {
    super('temporarily_unavailable', 'too many client authentications in progress; retry shortly', 503)
    this.headers['retry-after'] = '1'
  }
}

/** Secret checks running and waiting now, the most that ever ran at once, how many ran, how many were refused. */
export interface SecretCheckStats { running: number, waiting: number, peak: number, started: number, refused: number }

/** A counting semaphore with a bounded queue: `run` refuses (SecretChecksBusy) when both are full. */
class Slots {
  #running = 0
  #peak = 0
  #refused = 0
  #started = 0
  readonly #waiting: Array<() => void> = []

  constructor (readonly size: number, readonly queue: number) {}

  async run<T> (fn: () => Promise<T>): Promise<T> {
    if (this.#running < this.size) {
      this.#running++
    } else {
      if (this.#waiting.length >= this.queue) {
        this.#refused++
        throw new SecretChecksBusy()
      }
      // The slot is handed over by the finishing run, so #running stays the same.
      await new Promise<void>(resolve => this.#waiting.push(resolve))
    }
    this.#peak = Math.max(this.#peak, this.#running)
    this.#started++
    try {
      return await fn()
    } finally {
      const next = this.#waiting.shift()
      if (next !== undefined) next()
      else this.#running--
    }
  }

  get stats (): SecretCheckStats {
    return { running: this.#running, waiting: this.#waiting.length, peak: this.#peak, started: this.#started, refused: this.#refused }
  }
}

export interface ClientRegistryOptions {
  /** Secret checks (scrypt) running at once; as many again times four may wait. Default 3. */
  concurrentSecretChecks?: number
}

/**
 * The parameters the dummy hash for unknown clients uses: those most configured clients use (ties
 * go to the costlier), so an unknown id answers at the speed of most real ones.
 */
export function dummyParams (hashes: ReadonlyArray<ScryptHash['params']>): ScryptHash['params'] {
  const counts = new Map<string, { params: ScryptHash['params'], n: number }>()
  for (const params of hashes) {
    const key = `${params.N},${params.r},${params.p}`
    const seen = counts.get(key)
    if (seen === undefined) counts.set(key, { params, n: 1 })
    else seen.n++
  }
  const cost = (p: ScryptHash['params']): number => p.N * p.r * p.p
  let best: { params: ScryptHash['params'], n: number } | undefined
  for (const entry of counts.values()) {
    if (best === undefined || entry.n > best.n || (entry.n === best.n && cost(entry.params) > cost(best.params))) best = entry
  }
  return { ...(best?.params ?? DEFAULT_PARAMS) }
}

/** A stored (run-time) client as the registry serves it. */
export function clientOf (c: StoredClient | ClientConfig): Client {
  const client: Client = {
    id: c.id,
    scopes: [...new Set(c.scopes)],
    audiences: [...new Set(c.audiences)],
    refresh: c.refresh,
    exchange: c.exchange,
    claims: c.claims
  }
  if (c.quota !== undefined) client.quota = { limit: c.quota.limit, window: c.quota.window }
  if (c.accessTtl !== undefined) client.accessTtl = c.accessTtl
  if (c.dpop !== undefined) client.dpop = c.dpop
  return client
}

export class ClientRegistry {
  readonly #clients = new Map<string, { client: Client, secret: ScryptHash }>()
  /** The ids of the config file's clients: read-only at run time, never replaced by a stored one. */
  readonly #configIds = new Set<string>()
  /**
   * Client id → epoch seconds: that client's access tokens issued before it are refused (Infinity
   * while the client is disabled or deleted). Read by Tokens on every verification.
   */
  readonly denials = new Map<string, number>()
  readonly #dummy: ScryptHash
  /** HMACs of recently verified (id, secret) pairs: repeat issuance skips scrypt. Process-local key. */
  readonly #verified = new Map<string, number>()
  readonly #hmacKey = randomBytes(32)
  readonly #clock: () => number
  readonly #slots: Slots

  constructor (configs: readonly ClientConfig[], clock: () => number = Date.now, options: ClientRegistryOptions = {}) {
    this.#clock = clock
    const size = options.concurrentSecretChecks ?? 3
    this.#slots = new Slots(size, size * 4)
    configs.forEach((c, i) => {
      let secret: ScryptHash
      try {
        secret = parseSecretHash(c.secretHash ?? hashSecret(c.secret as string))
      } catch (err) {
        throw new Error(`config: clients.${i}.secretHash: ${(err as Error).message}`)
      }
      this.#clients.set(c.id, { client: clientOf(c), secret })
      this.#configIds.add(c.id)
    })
    const params = dummyParams([...this.#clients.values()].map(e => e.secret.params))
    // An unknown client's secret is run through scrypt with these parameters and compared with a
    // random digest no secret produces: the same work as a wrong secret, without paying for a
    // hash at start-up (it was a third of the time to build an app).
    this.#dummy = { params, salt: randomBytes(16), hash: randomBytes(KEY_LENGTH) }
  }

  /** The scrypt parameters an unknown client's secret is checked with. */
  get dummyParams (): ScryptHash['params'] {
    return { ...this.#dummy.params }
  }

  get secretChecks (): SecretCheckStats {
    return this.#slots.stats
  }

  get (id: string): Client | undefined {
    return this.#clients.get(id)?.client
  }

  get size (): number {
    return this.#clients.size
  }

  fromConfig (id: string): boolean {
    return this.#configIds.has(id)
  }

  /**
   * Replaces the run-time clients with `stored` (the store's whole set, tombstones included). A
   * disabled or deleted client is no longer served (it cannot authenticate, so it gets no token and
   * cannot refresh), and its access tokens are denied through `denials`. Recently verified secrets
   * are forgotten, so a rotated secret stops working at once.
   */
  applyStored (stored: readonly StoredClient[]): void {
    for (const id of [...this.#clients.keys()]) if (!this.#configIds.has(id)) this.#clients.delete(id)
    this.denials.clear()
    this.#verified.clear()
    for (const c of stored) {
      if (this.#configIds.has(c.id)) continue
      if (c.disabled || c.deleted) {
        this.denials.set(c.id, Number.POSITIVE_INFINITY)
        continue
      }
      if (c.notBefore > 0) this.denials.set(c.id, c.notBefore)
      let secret: ScryptHash
      try {
        secret = parseSecretHash(c.secretHash)
      } catch {
        continue // never written by Tollgate: the client cannot authenticate
      }
      this.#clients.set(c.id, { client: clientOf(c), secret })
    }
  }

  /**
   * The client when `secret` is right; undefined for an unknown client or a wrong secret alike.
   * `beforeCheck` runs only when the secret must be checked with scrypt (not for a pair verified
   * recently), and may throw to refuse without that work. Throws SecretChecksBusy when too many
   * checks are running and waiting.
   */
  async authenticate (id: string, secret: string, beforeCheck?: () => void): Promise<Client | undefined> {
    const entry = this.#clients.get(id)
    const mac = createHmac('sha256', this.#hmacKey).update(id).update('\0').update(secret).digest('base64')
    const seen = this.#verified.get(mac)
    if (entry !== undefined && seen !== undefined && seen > this.#clock()) return entry.client

    beforeCheck?.()
    const stored = entry?.secret ?? this.#dummy
    const derived = await this.#slots.run(() => scrypt(secret, stored.salt, stored.params))
    const ok = timingSafeEqual(derived, stored.hash) && entry !== undefined
    if (!ok) return undefined
    if (this.#verified.size >= 1000) this.#verified.delete(this.#verified.keys().next().value as string)
    this.#verified.set(mac, this.#clock() + 5 * 60_000)
    return entry.client
  }
}
