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

/** A ledger line as the admin API and `tollgate usage export` write it (CONTRACT §11). */
export interface LedgerLine {
  ts: string
  sub: string
  client_id: string | null
  tool: string | null
  kind: LedgerEntry['kind']
  amount: number
  request_id: string | null
}

export function ledgerLine (e: LedgerEntry): LedgerLine {
  return { ts: new Date(e.ts).toISOString(), sub: e.sub, client_id: e.clientId, tool: e.tool, kind: e.kind, amount: e.amount, request_id: e.requestId }
}

export const LEDGER_COLUMNS = ['ts', 'sub', 'client_id', 'tool', 'kind', 'amount', 'request_id'] as const

/**
 * One CSV row (RFC 4180: fields with a comma, quote or line break are quoted, quotes doubled). A
 * text field starting with =, +, -, @, tab or CR gets a leading ' so a spreadsheet never runs it
 * as a formula (subjects may come from an identity provider); amounts are written as numbers.
 */
export function csvRow (line: LedgerLine): string {
  return LEDGER_COLUMNS.map(column => {
    const value = line[column]
    if (value === null) return ''
    if (typeof value === 'number') return String(value)
    const text = /^[=+\-@\t\r]/.test(value) ? `'${value}` : value
    return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text
  }).join(',')
}
