// The signing key set. Owns creation, encryption at rest, rotation and the public JWKS; never signs
// or verifies a token itself (tokens/ does, with the keys this hands out).
//
// A key's state is derived from two times kept in the store, so every replica computes the same
// answer and a rotation is a single insert:
//   next     activatesAt > now                  published, not signing yet
//   current  the newest key with activatesAt <= now: signs
//   retired  an older key: published until (the time it stopped signing) + max token lifetime + leeway
//   removed  past that: deleted from the store
//
// Every record is checked when it is first read (material.ts openKeyRecord): one that does not
// decrypt, or whose kid, alg or public JWK does not match its private key, is refused: logged
// once, never published, never used to sign or verify, and healthy() is false while it is stored.
// Key emergencies (a leak) bypass the schedule: `rotateNow` makes a fresh key sign at once whatever is
// pending, and `retireNow` deletes a key from the store, so every replica stops publishing it and
// refuses its tokens at its next reload (the verification cache checks key presence on every hit).
import type { KeyObject } from 'node:crypto'
import type { KeyRecord, Store } from '../store/index.js'
import { OAuthError } from '../errors.js'
import { KeyRecordRefused, deriveKek, encryptPrivateKey, generateKey, openKeyRecord, type SigningAlgorithm } from './material.js'

export type KeyState = 'next' | 'current' | 'retired' | 'removed'

export interface SigningKey {
  kid: string
  alg: SigningAlgorithm
  privateKey: KeyObject
}

export interface VerificationKey {
  kid: string
  alg: SigningAlgorithm
  publicKey: KeyObject
}

export interface KeyInfo {
  kid: string
  alg: SigningAlgorithm
  state: KeyState
  createdAt: number
  activatesAt: number
  /** When the key stopped signing (retired keys). */
  retiredAt?: number
  /** When the key leaves the JWKS (retired keys). */
  removeAt?: number
}

export interface KeyManagerOptions {
  store: Store
  secret: string
  algorithm: SigningAlgorithm
  /** Seconds a key signs before a successor is created. */
  rotateAfter: number
  /** Seconds a new key is published before it signs. */
  publishAhead: number
  /** Seconds: the longest lifetime any token can have, plus leeway (how long a retired key stays published). */
  retireGrace: number
  clock?: () => number
  /** Where a refused key record is reported (pino-shaped); nothing but its kid and the rule. */
  log?: { error: (obj: object, msg: string) => void }
}

export class KeyManager {
  readonly #store: Store
  readonly #kek: Buffer
  readonly #opts: KeyManagerOptions
  readonly #clock: () => number
  /** Decrypted material by kid; key rows never change, so a kid's material is loaded once. */
  readonly #material = new Map<string, { record: KeyRecord, privateKey: KeyObject, publicKey: KeyObject, publicJwk: Record<string, unknown> }>()
  /** Stored records that failed their check, by kid: the reason last logged. */
  readonly #refused = new Map<string, KeyRecordRefused>()
  #records: KeyRecord[] = []
  #published = new Map<string, VerificationKey>()
  #jwks = '{"keys":[]}'
  #jwksKids = ''

  constructor (options: KeyManagerOptions) {
    this.#opts = options
    this.#store = options.store
    this.#kek = deriveKek(options.secret)
    this.#clock = options.clock ?? Date.now
  }

  /** Loads the key set, creating the first key when the store has none. */
  async init (): Promise<void> {
    await this.reload()
    // A secret that opens none of the stored keys is a configuration mistake: stop at startup.
    const refused = [...this.#refused.values()]
    if (this.#material.size === 0 && refused.length > 0 && refused.every(r => r.undecryptable)) throw refused[0] as KeyRecordRefused
    if (this.#records.length === 0) await this.#createFirst()
  }

  // The first key signs at once: nobody can hold a stale JWKS yet. It is added only while the set
  // is still empty (every key counts as pending before MIN_SAFE_INTEGER), so replicas starting
  // together, or re-creating a key set their store lost, agree on one key.
  async #createFirst (): Promise<void> {
    const now = this.#clock()
    await this.#add(now, now, Number.MIN_SAFE_INTEGER)
    await this.reload()
  }

  /** Re-reads the key set from the store (another replica or the CLI may have rotated). */
  async reload (): Promise<void> {
    const records = await this.#store.listKeys()
    for (const record of records) {
      if (this.#material.has(record.kid)) continue
      try {
        this.#material.set(record.kid, { record, ...openKeyRecord(record, this.#kek) })
        this.#refused.delete(record.kid)
      } catch (err) {
        if (!(err instanceof KeyRecordRefused)) throw err
        if (this.#refused.get(record.kid)?.reason !== err.reason) {
          this.#opts.log?.error({ event: 'keys.refused', kid: err.kid.slice(0, 64), reason: err.reason }, 'refused a stored signing key: it is not used to sign or verify')
        }
        this.#refused.set(record.kid, err)
      }
    }
    for (const kid of this.#material.keys()) {
      if (!records.some(r => r.kid === kid)) this.#material.delete(kid)
    }
    for (const kid of this.#refused.keys()) {
      if (!records.some(r => r.kid === kid)) this.#refused.delete(kid)
    }
    this.#records = records.sort((a, b) => a.activatesAt - b.activatesAt || a.createdAt - b.createdAt)
    this.#refreshPublished()
  }

  /** Rotation and removal due now; run periodically. Returns what changed, for the log. */
  async maintain (): Promise<{ rotated?: string, removed: string[] }> {
    await this.reload()
    // An empty set means the store lost its data (e.g. Redis restarted without persistence).
    if (this.#records.length === 0) await this.#createFirst()
    const now = this.#clock()
    const infos = this.list()
    const removed = infos.filter(k => k.state === 'removed').map(k => k.kid)
    if (removed.length > 0) await this.#store.deleteKeys(removed)
    const current = infos.find(k => k.state === 'current')
    const pending = infos.some(k => k.state === 'next')
    let rotated: string | undefined
    const due = current === undefined ||
      now - current.activatesAt >= this.#opts.rotateAfter * 1000 ||
      current.alg !== this.#opts.algorithm
    if (due && !pending) rotated = await this.rotate()
    if (removed.length > 0 || rotated !== undefined) await this.reload()
    return rotated === undefined ? { removed } : { rotated, removed }
  }

  /**
   * Creates the next key: published now, signing after `publishAhead`. Returns its kid, or
   * undefined when a rotation is already pending.
   */
  async rotate (options: { publishAhead?: number } = {}): Promise<string | undefined> {
    const now = this.#clock()
    const kid = await this.#add(now, now + (options.publishAhead ?? this.#opts.publishAhead) * 1000)
    if (kid !== undefined) await this.reload()
    return kid
  }

  /**
   * Emergency rotation: a fresh key signs at once, in every state. A pending next key is replaced,
   * not promoted: it was created before the leak was found and may have leaked with the rest.
   * `retire` names keys deleted in the same step. Returns the new kid and every kid deleted.
   */
  async rotateNow (retire: string[] = []): Promise<{ kid: string, deleted: string[] }> {
    const now = this.#clock()
    const key = this.#generate(now, now)
    const deleted = await this.#store.replaceKeys(key.record, now, retire)
    await this.reload()
    return { kid: key.kid, deleted }
  }

  /**
   * Emergency retirement: `kid` leaves the store at once (no grace), so it is no longer published
   * and tokens it signed are refused at every replica once it reloads. When it is the signing key
   * (the only key is), a fresh key is created and signs in the same step: the set is never left
   * without one, and an older retired key never becomes the signing key again.
   * Throws when `kid` is not in the set.
   */
  async retireNow (kid: string): Promise<{ retired: string, rotated?: string, deleted: string[] }> {
    await this.reload()
    const info = this.list().find(k => k.kid === kid)
    if (info === undefined) throw new Error(`no key ${kid} in the key set`)
    if (info.state === 'current') {
      const { kid: rotated, deleted } = await this.rotateNow([kid])
      return { retired: kid, rotated, deleted }
    }
    await this.#store.deleteKeys([kid])
    await this.reload()
    return { retired: kid, deleted: [kid] }
  }

  #generate (createdAt: number, activatesAt: number): { kid: string, record: KeyRecord } {
    const key = generateKey(this.#opts.algorithm)
    return {
      kid: key.kid,
      record: {
        kid: key.kid,
        alg: key.alg,
        publicJwk: key.publicJwk,
        privateEnc: encryptPrivateKey(key.privateKey, key.kid, this.#kek),
        createdAt,
        activatesAt
      }
    }
  }

  async #add (createdAt: number, activatesAt: number, pendingAfter = createdAt): Promise<string | undefined> {
    const { kid, record } = this.#generate(createdAt, activatesAt)
    return (await this.#store.addKeyIfNoPending(record, pendingAfter)) ? kid : undefined
  }

  /** Every key with its state at `now`. */
  list (now = this.#clock()): KeyInfo[] {
    const active = this.#records.filter(r => r.activatesAt <= now)
    const current = active.at(-1)
    return this.#records.map(r => {
      const info: KeyInfo = { kid: r.kid, alg: r.alg, state: 'next', createdAt: r.createdAt, activatesAt: r.activatesAt }
      if (r.activatesAt > now) return info
      if (r === current) return { ...info, state: 'current' }
      // Retired when the key after it started signing.
      const successor = active[active.indexOf(r) + 1]
      const retiredAt = successor?.activatesAt ?? now
      const removeAt = retiredAt + this.#opts.retireGrace * 1000
      return { ...info, state: removeAt <= now ? 'removed' : 'retired', retiredAt, removeAt }
    })
  }

  /** The key that signs now. Throws when there is none (the store has not been initialised). */
  signingKey (): SigningKey {
    const now = this.#clock()
    let current: KeyRecord | undefined
    for (const r of this.#records) if (r.activatesAt <= now) current = r
    const material = current === undefined ? undefined : this.#material.get(current.kid)
    // A 503, not a 500: the key set is unusable until an operator rotates or restores it.
    if (current === undefined || material === undefined) throw new OAuthError('temporarily_unavailable', 'no signing key is available', 503)
    return { kid: current.kid, alg: current.alg, privateKey: material.privateKey }
  }

  /** A published key by kid, looked up only in memory (never fetched, never a path). */
  verificationKey (kid: string): VerificationKey | undefined {
    return this.#published.get(kid)
  }

  /** The public JWKS document as a JSON string (RFC 7517), rebuilt only when the set changes. */
  jwks (): string {
    this.#refreshPublished()
    return this.#jwks
  }

  /** True when a key can sign now and no stored key was refused. */
  healthy (): boolean {
    if (this.#refused.size > 0) return false
    try {
      this.signingKey()
      return true
    } catch {
      return false
    }
  }

  /** The kids of stored records that failed their check (see the top of this file). */
  refused (): string[] {
    return [...this.#refused.keys()]
  }

  #refreshPublished (): void {
    const published = this.list().filter(k => k.state !== 'removed')
    const kids = published.map(k => k.kid).join(',')
    if (kids === this.#jwksKids) return
    const map = new Map<string, VerificationKey>()
    const keys: Array<Record<string, unknown>> = []
    for (const info of published) {
      const material = this.#material.get(info.kid)
      if (material === undefined) continue
      map.set(info.kid, { kid: info.kid, alg: info.alg, publicKey: material.publicKey })
      keys.push(material.publicJwk)
    }
    this.#published = map
    this.#jwks = JSON.stringify({ keys })
    this.#jwksKids = kids
  }
}
