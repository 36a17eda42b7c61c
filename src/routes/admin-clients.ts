// Run-time clients (CONTRACT §11): created, changed, disabled, deleted and given new secrets
// through the admin API, kept in the store (secrets as scrypt hashes only), and effective at every
// replica within one client sync (src/clients/sync.ts), at once on this one. Clients from the
// config file are listed too but are read-only (409 client_from_config). Registered inside
// admin.ts, which guards every route. Every change writes an audit line; a secret appears only in
// the one answer that carries it, never in a log line.
import { randomBytes } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { Type, type Static } from 'typebox'
import { clientOf, hashSecretAsync } from '../clients/index.js'
import { RESERVED_CLAIMS } from '../config.js'
import { BadRequest, ClientExists, ClientFromConfig, ClientNotFound } from '../errors.js'
import type { StoredClient } from '../store/index.js'
import { headers, problem, response } from '../schemas/index.js'
import { adminActor, adminErrors, adminSecurity, storeCall } from './admin-common.js'

const Id = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$', description: 'Client id (as in the config file)' })
const Scopes = Type.Array(Type.String({ pattern: '^[\\x21\\x23-\\x5B\\x5D-\\x7E]+$' }), { maxItems: 100, description: 'Scopes the client may request' })
const Audiences = Type.Array(Type.String({ minLength: 1, maxLength: 512 }), { maxItems: 100, description: 'Audiences the client may request' })
const Quota = Type.Object({
  limit: Type.Integer({ minimum: 1, maximum: 1e12 }),
  window: Type.Integer({ minimum: 1, maximum: 366 * 86400, description: 'Seconds' })
}, { additionalProperties: false, description: 'The quota written into the client\'s tokens' })
const Claims = Type.Record(Type.String({ maxLength: 128 }), Type.Union([Type.String(), Type.Number(), Type.Boolean(), Type.Array(Type.String())]), { description: 'Static claims added to every access token (not registered claim names)' })
const AccessTtl = Type.Integer({ minimum: 1, description: 'Access-token lifetime in seconds (default tokens.accessTtl)' })

const ClientView = Type.Object({
  id: Type.String(),
  source: Type.Union([Type.Literal('config'), Type.Literal('admin')], { description: '`config`: from the config file, read-only; `admin`: created through this API' }),
  scopes: Type.Array(Type.String()),
  audiences: Type.Array(Type.String()),
  quota: Type.Optional(Quota),
  refresh: Type.Boolean(),
  exchange: Type.Boolean(),
  dpop: Type.Optional(Type.Union([Type.Literal('optional'), Type.Literal('required')])),
  accessTtl: Type.Optional(Type.Number()),
  claims: Type.Record(Type.String(), Type.Unknown()),
  disabled: Type.Boolean(),
  created_at: Type.Optional(Type.String({ format: 'date-time' })),
  updated_at: Type.Optional(Type.String({ format: 'date-time' }))
}, { description: 'A client (never its secret)' })

const ClientWithSecret = Type.Intersect([ClientView, Type.Object({
  client_secret: Type.String({ description: 'The client secret: shown once, stored only as a scrypt hash' })
})])

const CreateBody = Type.Object({
  id: Id,
  scopes: Type.Optional(Scopes),
  audiences: Type.Optional(Audiences),
  quota: Type.Optional(Quota),
  refresh: Type.Optional(Type.Boolean()),
  exchange: Type.Optional(Type.Boolean()),
  dpop: Type.Optional(Type.Union([Type.Literal('optional'), Type.Literal('required')])),
  accessTtl: Type.Optional(AccessTtl),
  claims: Type.Optional(Claims)
}, { additionalProperties: false })

const PatchBody = Type.Object({
  scopes: Type.Optional(Scopes),
  audiences: Type.Optional(Audiences),
  quota: Type.Optional(Type.Union([Quota, Type.Null()], { description: 'null removes the quota' })),
  refresh: Type.Optional(Type.Boolean()),
  exchange: Type.Optional(Type.Boolean()),
  accessTtl: Type.Optional(Type.Union([AccessTtl, Type.Null()], { description: 'null goes back to tokens.accessTtl' })),
  claims: Type.Optional(Claims),
  disabled: Type.Optional(Type.Boolean({ description: 'true: no tokens, and its access tokens stop working everywhere within 1 s; false: enabled again (tokens issued before it was disabled stay refused)' }))
}, { additionalProperties: false, minProperties: 1 })

const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }) })
const ClientList = Type.Object({ clients: Type.Array(ClientView) })
const SecretAnswer = Type.Object({ client_id: Type.String(), client_secret: Type.String({ description: 'The new secret: shown once; the old one stops working at once' }) })

type View = Static<typeof ClientView>

function iso (ms: number): string {
  return new Date(ms).toISOString()
}

function storedView (c: StoredClient): View {
  const v: View = { id: c.id, source: 'admin', scopes: c.scopes, audiences: c.audiences, refresh: c.refresh, exchange: c.exchange, claims: c.claims, disabled: c.disabled, created_at: iso(c.createdAt), updated_at: iso(c.updatedAt) }
  if (c.quota !== undefined) v.quota = c.quota
  if (c.dpop !== undefined) v.dpop = c.dpop
  if (c.accessTtl !== undefined) v.accessTtl = c.accessTtl
  return v
}

function newSecret (): string {
  return randomBytes(32).toString('base64url')
}

export default async function adminClientRoutes (app: FastifyInstance): Promise<void> {
  const configViews = (): View[] => app.config.clients.map(c => {
    const client = clientOf(c)
    const v: View = { id: client.id, source: 'config', scopes: [...client.scopes], audiences: [...client.audiences], refresh: client.refresh, exchange: client.exchange, claims: client.claims, disabled: false }
    if (client.quota !== undefined) v.quota = client.quota
    if (client.dpop !== undefined) v.dpop = client.dpop
    if (client.accessTtl !== undefined) v.accessTtl = client.accessTtl
    return v
  })

  async function stored (id: string): Promise<StoredClient | undefined> {
    const { clients } = await storeCall(app.store.listClients())
    return clients.find(c => c.id === id && !c.deleted)
  }

  /** The live stored client, or 409 for a config client / 404 for an unknown one. */
  async function changeable (id: string): Promise<StoredClient> {
    if (app.clients.fromConfig(id)) throw new ClientFromConfig(id)
    const current = await stored(id)
    if (current === undefined) throw new ClientNotFound(id)
    return current
  }

  function checkFields (body: { claims?: Record<string, unknown> | undefined, accessTtl?: number | null | undefined }): void {
    for (const name of Object.keys(body.claims ?? {})) {
      if (RESERVED_CLAIMS.has(name)) throw new BadRequest(`claims.${name} is a registered claim Tollgate sets itself`)
    }
    if (typeof body.accessTtl === 'number' && body.accessTtl > app.config.tokens.maxLifetime) throw new BadRequest('accessTtl must not exceed tokens.maxLifetime')
  }

  /** Writes the change and applies it here at once (other replicas within one client sync). */
  async function put (client: StoredClient, mode: 'create' | 'update', id: string): Promise<void> {
    const ok = await storeCall(app.store.putClient(client, mode))
    if (!ok) throw mode === 'create' ? new ClientExists(id) : new ClientNotFound(id)
    await storeCall(app.clientSync.sync(true))
  }

  const errors = { ...adminErrors }

  app.get('/admin/clients', {
    schema: {
      operationId: 'adminListClients',
      tags: ['admin'],
      summary: 'List clients',
      description: 'The config file\'s clients (`source: config`, read-only) and those created through this API (`source: admin`), never with secrets.',
      security: adminSecurity,
      response: { 200: response('Every client', ClientList), ...errors }
    }
  }, async () => {
    const { clients } = await storeCall(app.store.listClients())
    return { clients: [...configViews(), ...clients.filter(c => !c.deleted && !app.clients.fromConfig(c.id)).map(storedView)] }
  })

  app.get<{ Params: Static<typeof IdParams> }>('/admin/clients/:id', {
    schema: {
      operationId: 'adminGetClient',
      tags: ['admin'],
      summary: 'One client',
      description: 'A config-file client (`source: config`) or one created through this API (`source: admin`), never with its secret.',
      security: adminSecurity,
      params: IdParams,
      response: { 200: response('The client', ClientView), 404: problem('client_not_found'), ...errors }
    }
  }, async (request) => {
    const { id } = request.params
    const fromConfig = configViews().find(v => v.id === id)
    if (fromConfig !== undefined) return fromConfig
    const c = await stored(id)
    if (c === undefined) throw new ClientNotFound(id)
    return storedView(c)
  })

  app.post<{ Body: Static<typeof CreateBody> }>('/admin/clients', {
    schema: {
      operationId: 'adminCreateClient',
      tags: ['admin'],
      summary: 'Create a client',
      description: 'The fields of a config-file client except the secret (durations in seconds). The answer carries a generated secret, shown once; it is stored only as a scrypt hash. The client can get tokens at every replica within 1 s.',
      security: adminSecurity,
      body: CreateBody,
      response: {
        201: response('The client and its secret', ClientWithSecret, { headers: headers.noStore }),
        400: problem('A malformed request'),
        409: problem('client_from_config (the id is a config client\'s) or client_exists'),
        ...errors
      }
    }
  }, async (request, reply) => {
    const b = request.body
    checkFields(b)
    if (app.clients.fromConfig(b.id)) throw new ClientFromConfig(b.id)
    const secret = newSecret()
    const now = app.clock()
    const { clients: existing } = await storeCall(app.store.listClients())
    const tombstone = existing.find(c => c.id === b.id)
    if (tombstone !== undefined && !tombstone.deleted) throw new ClientExists(b.id)
    const client: StoredClient = {
      id: b.id,
      scopes: [...new Set(b.scopes ?? [])],
      audiences: [...new Set(b.audiences ?? [])],
      refresh: b.refresh ?? false,
      exchange: b.exchange ?? false,
      claims: b.claims ?? {},
      secretHash: await hashSecretAsync(secret),
      disabled: false,
      deleted: false,
      // A deleted client's tokens stay refused when its id is used again.
      notBefore: tombstone?.notBefore ?? 0,
      createdAt: now,
      updatedAt: now
    }
    if (b.quota !== undefined) client.quota = b.quota
    if (b.dpop !== undefined) client.dpop = b.dpop
    if (b.accessTtl !== undefined) client.accessTtl = b.accessTtl
    await put(client, 'create', b.id)
    request.log.info({ audit: 'admin.client.created', ...adminActor(request), client_id: b.id, scopes: client.scopes, audiences: client.audiences }, 'client created')
    reply.code(201)
    return { ...storedView(client), client_secret: secret }
  })

  app.patch<{ Params: Static<typeof IdParams>, Body: Static<typeof PatchBody> }>('/admin/clients/:id', {
    schema: {
      operationId: 'adminUpdateClient',
      tags: ['admin'],
      summary: 'Change or disable a client',
      description: 'Changes the given fields. `disabled: true` refuses the client new tokens and, within 1 s at every replica, its access and refresh tokens. Config-file clients are read-only.',
      security: adminSecurity,
      params: IdParams,
      body: PatchBody,
      response: {
        200: response('The client after the change', ClientView),
        400: problem('A malformed request'),
        404: problem('client_not_found'),
        409: problem('client_from_config: the client comes from the config file'),
        ...errors
      }
    }
  }, async (request) => {
    const { id } = request.params
    const b = request.body
    checkFields(b)
    const current = await changeable(id)
    const now = app.clock()
    const next: StoredClient = { ...current, updatedAt: now }
    if (b.scopes !== undefined) next.scopes = [...new Set(b.scopes)]
    if (b.audiences !== undefined) next.audiences = [...new Set(b.audiences)]
    if (b.quota === null) delete next.quota
    else if (b.quota !== undefined) next.quota = b.quota
    if (b.accessTtl === null) delete next.accessTtl
    else if (b.accessTtl !== undefined) next.accessTtl = b.accessTtl
    if (b.claims !== undefined) next.claims = b.claims
    if (b.refresh !== undefined) next.refresh = b.refresh
    if (b.exchange !== undefined) next.exchange = b.exchange
    if (b.disabled !== undefined) {
      next.disabled = b.disabled
      // Tokens issued up to now stay refused after the client is enabled again.
      if (b.disabled && !current.disabled) next.notBefore = Math.floor(now / 1000) + 1
    }
    await put(next, 'update', id)
    request.log.info({ audit: b.disabled === true ? 'admin.client.disabled' : 'admin.client.updated', ...adminActor(request), client_id: id, fields: Object.keys(b) }, 'client changed')
    return storedView(next)
  })

  app.post<{ Params: Static<typeof IdParams> }>('/admin/clients/:id/secret', {
    schema: {
      operationId: 'adminRotateClientSecret',
      tags: ['admin'],
      summary: 'Give a client a new secret',
      description: 'Generates a new secret, shown once. The old secret stops working at once here and within 1 s at every replica; tokens already issued keep working until they expire (disable the client to stop them).',
      security: adminSecurity,
      params: IdParams,
      response: {
        200: response('The new secret', SecretAnswer, { headers: headers.noStore }),
        404: problem('client_not_found'),
        409: problem('client_from_config: the client comes from the config file'),
        ...errors
      }
    }
  }, async (request) => {
    const { id } = request.params
    const current = await changeable(id)
    const secret = newSecret()
    await put({ ...current, secretHash: await hashSecretAsync(secret), updatedAt: app.clock() }, 'update', id)
    request.log.info({ audit: 'admin.client.secret_rotated', ...adminActor(request), client_id: id }, 'client secret rotated')
    return { client_id: id, client_secret: secret }
  })

  app.delete<{ Params: Static<typeof IdParams> }>('/admin/clients/:id', {
    schema: {
      operationId: 'adminDeleteClient',
      tags: ['admin'],
      summary: 'Delete a client',
      description: 'The client can no longer get tokens, and its access and refresh tokens stop working within 1 s at every replica. Config-file clients are read-only.',
      security: adminSecurity,
      params: IdParams,
      response: {
        204: { description: 'Deleted', type: 'null' },
        404: problem('client_not_found'),
        409: problem('client_from_config: the client comes from the config file'),
        ...errors
      }
    }
  }, async (request, reply) => {
    const { id } = request.params
    const current = await changeable(id)
    const now = app.clock()
    // A tombstone, so every replica keeps refusing the client's tokens.
    const { quota: _q, accessTtl: _a, dpop: _d, ...rest } = current
    await put({ ...rest, scopes: [], audiences: [], claims: {}, secretHash: '', disabled: true, deleted: true, notBefore: Math.floor(now / 1000) + 1, updatedAt: now }, 'update', id)
    request.log.info({ audit: 'admin.client.deleted', ...adminActor(request), client_id: id }, 'client deleted')
    reply.code(204)
  })
}
