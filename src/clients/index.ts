// The client registry (from config) and client-secret verification. Secrets are kept only as
// scrypt hashes; comparison is timing-safe on equal-length digests, and an unknown client costs
// the same scrypt as a wrong secret, so neither timing nor answer tells them apart.
import { createHmac, randomBytes, scrypt as scryptCb, scryptSync, timingSafeEqual, type ScryptOptions } from 'node:crypto'
import type { ClientConfig } from '../config.js'
import type { QuotaClaim } from '../tokens/index.js'

export interface Client {
  id: string
  scopes: readonly string[]
  audiences: readonly string[]
  quota?: QuotaClaim
  refresh: boolean
  exchange: boolean
  /** Seconds; falls back to tokens.accessTtl. */
  accessTtl?: number
  claims: Record<string, unknown>
}

interface ScryptHash {
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

export function parseSecretHash (text: string): ScryptHash {
  const m = /^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]{16,})\$([A-Za-z0-9+/]{43})$/.exec(text)
  if (m === null) throw new Error('not a scrypt hash from `tollgate hash-secret`')
  const ln = Number(m[1])
  if (ln < 14 || ln > 20) throw new Error('scrypt cost ln must be between 14 and 20')
  return { params: { N: 2 ** ln, r: Number(m[2]), p: Number(m[3]) }, salt: Buffer.from(m[4] as string, 'base64'), hash: Buffer.from(m[5] as string, 'base64') }
}

export class ClientRegistry {
  readonly #clients = new Map<string, { client: Client, secret: ScryptHash }>()
  readonly #dummy: ScryptHash
  /** HMACs of recently verified (id, secret) pairs: repeat issuance skips scrypt. Process-local key. */
  readonly #verified = new Map<string, number>()
  readonly #hmacKey = randomBytes(32)
  readonly #clock: () => number

  constructor (configs: readonly ClientConfig[], clock: () => number = Date.now) {
    this.#clock = clock
    configs.forEach((c, i) => {
      let secret: ScryptHash
      try {
        secret = parseSecretHash(c.secretHash ?? hashSecret(c.secret as string))
      } catch (err) {
        throw new Error(`config: clients.${i}.secretHash: ${(err as Error).message}`)
      }
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
      this.#clients.set(c.id, { client, secret })
    })
    this.#dummy = parseSecretHash(hashSecret(randomBytes(16).toString('hex')))
  }

  get (id: string): Client | undefined {
    return this.#clients.get(id)?.client
  }

  get size (): number {
    return this.#clients.size
  }

  /** The client when `secret` is right; undefined for an unknown client or a wrong secret alike. */
  async authenticate (id: string, secret: string): Promise<Client | undefined> {
    const entry = this.#clients.get(id)
    const mac = createHmac('sha256', this.#hmacKey).update(id).update('\0').update(secret).digest('base64')
    const seen = this.#verified.get(mac)
    if (entry !== undefined && seen !== undefined && seen > this.#clock()) return entry.client

    const stored = entry?.secret ?? this.#dummy
    const derived = await scrypt(secret, stored.salt, stored.params)
    const ok = timingSafeEqual(derived, stored.hash) && entry !== undefined
    if (!ok) return undefined
    if (this.#verified.size >= 1000) this.#verified.delete(this.#verified.keys().next().value as string)
    this.#verified.set(mac, this.#clock() + 5 * 60_000)
    return entry.client
  }
}
