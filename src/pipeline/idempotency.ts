// idempotency: the Idempotency-Key of a call that changes something (CONTRACT §10,
// draft-ietf-httpapi-idempotency-key-header). Runs after limit and before meter, so a replay is
// never charged and never forwarded. The key is scoped to the subject and the tool and claimed in
// the store (shared by replicas), atomically: of concurrent calls with one key exactly one runs;
// the others see it running (409) or, once its answer is kept, get that answer again. A call whose
// answer is not kept (over 1 MiB, refunded after an upstream failure, broken off) frees its key.
// Never reads HTTP: the route adapter hands it the header value and the exact body bytes.
import { createHash, randomUUID } from 'node:crypto'
import { IdempotencyInFlight, IdempotencyKeyReused, StoreUnavailable, TollgateError } from '../errors.js'
import type { IdempotentAnswer, Store } from '../store/index.js'
import { principalOf, type RequestContext } from './context.js'

/** How long a key and its answer are kept (CONTRACT §10: 24 h). */
export const IDEMPOTENCY_TTL_MS = 24 * 60 * 60 * 1000
/** The largest answer body kept for replays (CONTRACT §10: 1 MiB). */
export const MAX_KEPT_BODY = 1024 * 1024

export type IdempotencyStore = Pick<Store, 'claimIdempotencyKey' | 'completeIdempotencyKey' | 'releaseIdempotencyKey'>

/** The key a call holds while it runs (on the context until the answer is kept or the key freed). */
export interface IdempotencyHold {
  /** The store key: subject, tool and Idempotency-Key, unambiguously joined. */
  key: string
  /** This call's claim, so only it can keep an answer under the key or free it. */
  owner: string
}

export interface IdempotencyLog {
  warn: (obj: object, msg: string) => void
}

const KEY = /^[\x20-\x7e]{1,255}$/

/**
 * The Idempotency-Key of a request, or undefined without one. 1–255 printable ASCII characters,
 * taken as sent (a structured-field string's quotes are part of it); given twice, or anything
 * else, is 400 invalid_request.
 */
export function idempotencyKey (value: string | string[] | undefined, count = 1): string | undefined {
  if (value === undefined) return undefined
  if (Array.isArray(value) || count > 1) throw new TollgateError('invalid_request', 400, 'Idempotency-Key is given more than once')
  if (!KEY.test(value)) throw new TollgateError('invalid_request', 400, 'Idempotency-Key must be 1 to 255 printable ASCII characters')
  return value
}

/** SHA-256 of the exact body bytes (hex): what "the same body" means. */
export function bodyHash (body: Buffer | undefined): string {
  return createHash('sha256').update(body ?? Buffer.alloc(0)).digest('hex')
}

/**
 * Claims `key` for the context's call with `body`. Resolves undefined when this call owns the key
 * and runs (ctx.idempotency is set), or with the kept answer to replay; throws 409
 * idempotency_in_flight while another call with the key runs, 422 idempotency_key_reused when the
 * key came with another body, 503 when the store cannot answer (fail closed).
 */
export async function claimIdempotency (store: IdempotencyStore, now: number, ctx: RequestContext, key: string, body: Buffer | undefined): Promise<IdempotentAnswer | undefined> {
  const sub = principalOf(ctx).sub
  const tool = ctx.tool
  if (tool === undefined) throw new Error('pipeline: idempotency ran before authorize')
  const scoped = JSON.stringify([sub, tool.name, key])
  const hash = bodyHash(body)
  const owner = randomUUID()
  let claim
  try {
    claim = await store.claimIdempotencyKey(scoped, hash, owner, now + IDEMPOTENCY_TTL_MS, now)
  } catch (err) {
    throw err instanceof TollgateError ? err : new StoreUnavailable({ cause: err })
  }
  if (claim.state === 'claimed') {
    ctx.idempotency = { key: scoped, owner }
    return undefined
  }
  if (claim.bodyHash !== hash) throw new IdempotencyKeyReused()
  if (claim.state === 'running') throw new IdempotencyInFlight()
  return claim.answer
}

/**
 * Ends the context's hold on its key: keeps `answer` for replays, or (undefined) frees the key so
 * a retry runs as a new call. At most once per call; never throws (the caller has its answer; a
 * store failure is logged and the record expires by itself).
 */
export async function finishIdempotency (store: IdempotencyStore, now: number, ctx: RequestContext, answer: IdempotentAnswer | undefined, log: IdempotencyLog): Promise<void> {
  const hold = ctx.idempotency
  if (hold === undefined) return
  ctx.idempotency = undefined
  try {
    if (answer !== undefined && !ctx.refunded) await store.completeIdempotencyKey(hold.key, hold.owner, answer, now + IDEMPOTENCY_TTL_MS, now)
    else await store.releaseIdempotencyKey(hold.key, hold.owner)
  } catch (err) {
    log.warn({ err, tool: ctx.tool?.name }, answer !== undefined ? 'idempotent answer not kept' : 'idempotency key not released')
  }
}

/**
 * Tees an answer body as it streams to the caller: keeps the chunks while they fit in
 * MAX_KEPT_BODY, and forgets them (for good) once they do not.
 */
export class AnswerCapture {
  #chunks: Buffer[] = []
  #size = 0
  #overflowed = false

  push (chunk: Buffer): void {
    if (this.#overflowed) return
    this.#size += chunk.length
    if (this.#size > MAX_KEPT_BODY) {
      this.#overflowed = true
      this.#chunks = []
      return
    }
    this.#chunks.push(chunk)
  }

  /** The whole body, or undefined when it did not fit. */
  body (): Buffer | undefined {
    return this.#overflowed ? undefined : Buffer.concat(this.#chunks, this.#size)
  }
}
