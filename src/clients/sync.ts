// Every replica's copy of the run-time clients (admin API, CONTRACT §11). The store keeps the
// clients and a version counter that every change bumps in the same atomic step; each replica
// polls the version (one small read) every `intervalMs` and reloads the set when it moved, so a
// change is effective everywhere within one interval, and at once on the replica that made it.
// A failed poll keeps the last set and is retried on the next tick (token verification fails
// closed on its own when the store stays unreachable: src/tokens RevocationList).
import type { Store } from '../store/index.js'
import type { ClientRegistry } from './index.js'

export class ClientSync {
  #version = -1
  #timer: NodeJS.Timeout | undefined
  #running: Promise<void> | undefined
  #polls = 0

  constructor (readonly store: Store, readonly registry: ClientRegistry, readonly intervalMs: number, readonly onError: (err: unknown) => void = () => {}) {}

  async start (): Promise<void> {
    await this.sync(true)
    this.#timer = setInterval(() => { this.sync().catch(this.onError) }, this.intervalMs)
    this.#timer.unref()
  }

  /** Successful polls so far (each a version read, and a reload when it moved). */
  get polls (): number {
    return this.#polls
  }

  stop (): void {
    if (this.#timer !== undefined) clearInterval(this.#timer)
    this.#timer = undefined
  }

  /** Reloads the clients when the version moved (always with `force`); one sync at a time. */
  async sync (force = false): Promise<void> {
    if (this.#running !== undefined) {
      await this.#running
      if (!force) return
    }
    this.#running = (async () => {
      try {
        if (force || await this.store.clientsVersion() !== this.#version) {
          const { version, clients } = await this.store.listClients()
          this.registry.applyStored(clients)
          this.#version = version
        }
        this.#polls++ // a successful poll only
      } finally {
        this.#running = undefined
      }
    })()
    await this.#running
  }
}
