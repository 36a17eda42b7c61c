// Decorates the app with the Fastify-free pieces (store, keys, tokens, clients, quotas), starts
// their background work (key maintenance, revocation sync, housekeeping) and closes everything
// on `onClose`, so `app.close()` leaves nothing running.
import fp from 'fastify-plugin'
import { ClientRegistry } from '../clients/index.js'
import { ClientSync } from '../clients/sync.js'
import { publishAhead, type Config } from '../config.js'
import { KeyManager } from '../keys/index.js'
import { resolveSecret } from '../keys/material.js'
import { FailedClientAuth } from '../oauth/failed-auth.js'
import { Quotas } from '../quota/index.js'
import { openStore, type Store } from '../store/index.js'
import { Tokens } from '../tokens/index.js'
import { ProtectedResources } from '../tools/resources.js'
import { DPOP_ALGORITHMS, DpopVerifier } from '../tokens/dpop.js'

export interface CoreOptions {
  config: Config
  clock?: () => number
  /** A store to use instead of opening the configured one (its owner closes it). */
  store?: Store
  /** How often expired records are purged (ms). */
  purgeMs?: number
  /** How often each replica checks the store for client changes made through the admin API (ms). */
  clientSyncMs?: number
}

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
    clock: () => number
    store: Store
    keys: KeyManager
    tokens: Tokens
    clients: ClientRegistry
    /** Keeps `clients` in step with the run-time clients in the store (admin API). */
    clientSync: ClientSync
    /** Failed client authentications per client id and per address (src/oauth/failed-auth.ts). */
    failedClientAuth: FailedClientAuth
    quotas: Quotas
    /** The gateway and its tools as protected resources (RFC 9728, RFC 8707). */
    resources: ProtectedResources
    /** RFC 9449 proof verification, with its jti replay cache in the store. */
    dpop: DpopVerifier
  }
}

/** Run-time client changes reach every replica within this (CONTRACT §11: within 1 s). */
export const CLIENT_SYNC_MS = 250

export default fp<CoreOptions>(async function core (app, opts) {
  const { config } = opts
  const clock = opts.clock ?? Date.now
  const store = opts.store ?? await openStore(config, app.log)
  let quotas: Quotas | undefined
  app.addHook('onClose', async () => {
    // Ledger lines still waiting are written before the store closes.
    await quotas?.ledger.flush()
    if (opts.store === undefined) await store.close()
  })

  const { secret, generated, file } = resolveSecret(config.secret, config.dataDir)
  if (generated) app.log.warn({ file }, 'generated a key-encryption secret; set TOLLGATE_SECRET to manage it yourself (replicas must share one)')
  const keyReloadMs = config.keys.reloadInterval * 1000
  const keys = new KeyManager({
    store,
    secret,
    algorithm: config.keys.algorithm,
    rotateAfter: config.keys.rotateAfter,
    publishAhead: publishAhead(config.keys),
    retireGrace: config.tokens.maxLifetime + config.tokens.leeway,
    clock,
    log: app.log
  })
  await keys.init()
  await keys.maintain()

  const tokens = new Tokens({
    keys,
    store,
    issuer: config.issuer,
    leeway: config.tokens.leeway,
    maxLifetime: config.tokens.maxLifetime,
    clock
  })
  await tokens.start()

  app.decorate('config', config)
  app.decorate('clock', clock)
  app.decorate('store', store)
  app.decorate('keys', keys)
  app.decorate('tokens', tokens)
  const clients = new ClientRegistry(config.clients, clock, { concurrentSecretChecks: config.rateLimits.concurrentSecretChecks })
  tokens.clientDenials = clients.denials
  const clientSync = new ClientSync(store, clients, opts.clientSyncMs ?? CLIENT_SYNC_MS, err => { app.log.warn({ err }, 'client sync failed') })
  await clientSync.start()
  app.decorate('clients', clients)
  app.decorate('clientSync', clientSync)
  app.decorate('failedClientAuth', new FailedClientAuth(store, clock, config.rateLimits))
  quotas = new Quotas(store, clock, {
    onLedgerError: (err, lost) => { app.log.error({ err, event: 'ledger.lost', lost }, 'usage ledger lines could not be written') }
  })
  app.decorate('quotas', quotas)
  app.decorate('resources', new ProtectedResources({
    publicUrl: config.server.publicUrl ?? config.issuer,
    issuer: config.issuer,
    tools: config.tools,
    // DPoP is on when some client may use it (CONTRACT §12).
    dpopAlgorithms: config.clients.some(c => c.dpop !== undefined) ? DPOP_ALGORITHMS : undefined
  }))
  app.decorate('dpop', new DpopVerifier({ store, clock, leeway: config.tokens.leeway }))

  const timers = [
    setInterval(() => {
      keys.maintain().then(
        changed => { if (changed.rotated !== undefined || changed.removed.length > 0) app.log.info({ event: 'keys.maintained', ...changed }, 'key set changed') },
        err => app.log.error({ err }, 'key maintenance failed')
      )
    }, keyReloadMs),
    setInterval(() => {
      store.purgeExpired(clock(), 1000).then(
        n => { if (n > 0) app.log.debug({ purged: n }, 'purged expired records') },
        err => app.log.warn({ err }, 'purge failed')
      )
    }, opts.purgeMs ?? 60_000)
  ]
  for (const t of timers) t.unref()
  app.addHook('onClose', async () => {
    for (const t of timers) clearInterval(t)
    tokens.stop()
    clientSync.stop()
  })
}, { name: 'tollgate-core' })
