// The usage ledger's writer: every charge, refund, settlement, credit and reset becomes one line
// (CONTRACT §11). Lines recorded within one turn of the event loop are written to the store in one
// call, after the turn, so a charge on the hot path costs an array push, not a store round trip.
// `flush()` waits for everything recorded so far (the admin routes call it before reading, and the
// app on close). A line that cannot be written is reported to `onError`, never thrown at the call
// that made it: the call's answer does not depend on the ledger.
import type { LedgerEntry, Store } from '../store/index.js'

export class Ledger {
  #pending: LedgerEntry[] = []
  #writing: Promise<void> = Promise.resolve()

  constructor (readonly store: Store, readonly onError: (err: unknown, lost: number) => void = () => {}) {}

  record (entry: LedgerEntry): void {
    this.#pending.push(entry)
    if (this.#pending.length === 1) setImmediate(() => { void this.#write() })
  }

  #write (): Promise<void> {
    const batch = this.#pending
    if (batch.length === 0) return this.#writing
    this.#pending = []
    // One write at a time keeps the lines in the order they were recorded.
    this.#writing = this.#writing.then(async () => {
      try {
        await this.store.appendLedger(batch)
      } catch (err) {
        this.onError(err, batch.length)
      }
    })
    return this.#writing
  }

  /** Resolves when every line recorded before the call is written (or reported lost). */
  async flush (): Promise<void> {
    await this.#write()
  }
}
