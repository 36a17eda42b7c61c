// POST /call and any method /call/:tool/* (CONTRACT §5, §9). Thin: wires the pipeline's stages
// into Fastify hooks in the contract's order (onRequest: authenticate; preHandler: authorize →
// path → limit → meter; handler: relay → proxy → settle), streams bodies both ways, and writes the
// audit line for each refused call. The tools, pools and downstream-token cache live here because
// only these routes use them; they are built (and the tool list validated) at registration.
import type { SwaggerTransform } from '@fastify/swagger'
import type { FastifyInstance, FastifyReply, FastifyRequest, FastifySchema, HookHandlerDoneFunction } from 'fastify'
import { Type } from 'typebox'
import { duplicateKey } from '../json/duplicate-keys.js'
import { PayloadTooLarge, TollgateError, UpstreamTimeout, UpstreamUnavailable } from '../errors.js'
import { AnswerCapture, CHARGED_FIELD, COST_FIELD, authenticate, authorizeTool, claimIdempotency, finishIdempotency, idempotencyKey, limit, meter, principalOf, relayHeaders, reportedCost, settle, settleReported, type Arrival, type RequestContext } from '../pipeline/index.js'
import { CostUnavailable, priceCall, type CallFacts } from '../metering/price.js'
import { quotaHeaders } from '../quota/index.js'
import { DownstreamTokens } from '../proxy/downstream-token.js'
import { callerResponseHeaders } from '../proxy/headers.js'
import { splitCallUrl, upstreamPath } from '../proxy/path.js'
import { Upstreams, capBody, readBody, translate, type AnswerTap, type UpstreamRequest } from '../proxy/upstream.js'
import { WebSocketRelay, isUpgrade, subprotocolToken } from '../proxy/websocket.js'
import { listFilterFor, planRequest, type BodyRewriter } from '../mcp/rpc.js'
import { headers, problem, response } from '../schemas/index.js'
import { ToolRegistry, type Tool } from '../tools/index.js'
import type { IncomingMessage, OutgoingHttpHeaders } from 'node:http'
import type { Readable } from 'node:stream'

/** Why a call was refused, for the audit line and the rejections metric. */
export function refusalReason (err: unknown): string {
  return err instanceof TollgateError ? err.code : 'internal_error'
}

const PASS_THROUGH_METHODS = ['POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const

/** application/json and any `+json` media type (RFC 6839 §3.1): a pass-through body priced as `args`. */
const JSON_MEDIA = /^application\/(?:[a-z0-9!#$&^_.+-]*\+)?json\s*(?:;|$)/i

/** A pass-through call's `args` (CONTRACT §10): its JSON body when there is one, else {}. */
function passThroughArgs (contentType: string | undefined, body: Buffer | undefined): unknown {
  if (body === undefined || body.length === 0 || contentType === undefined || !JSON_MEDIA.test(contentType)) return {}
  try {
    return JSON.parse(body.toString('utf8'))
  } catch {
    throw new CostUnavailable('the body is sent as JSON but does not parse, so its costExpr cannot price it')
  }
}

const CallRequestSchema = Type.Object({
  tool: Type.String({ minLength: 1, description: 'The configured tool name' }),
  arguments: Type.Optional(Type.Object({}, { additionalProperties: true, description: 'Passed to the tool as part of the unchanged body' }))
}, { additionalProperties: true })

const errorResponses = {
  400: problem('Malformed request, (pass-through) a path that would leave the tool\'s base (bad_path), or a call the tool\'s costExpr cannot price (cost_unavailable: nothing charged or forwarded)'),
  401: problem('No token, or an invalid, expired or revoked one, or one without the tool\'s audience', headers.wwwAuthenticateBearer),
  403: problem('The token lacks a scope the tool requires (insufficient_scope)', headers.wwwAuthenticateBearer),
  404: problem('No such tool (tool_not_found)'),
  413: problem('The body is too large (payload_too_large)'),
  415: problem('POST /call takes application/json only (unsupported_media_type)'),
  429: problem('rate_limited or quota_exceeded', { ...headers.retryAfter, ...headers.quota }),
  502: problem('The tool could not be reached (upstream_unavailable); the call is refunded', headers.quota),
  503: problem('The state store is unavailable (store_unavailable)'),
  504: problem('The tool did not answer in time (upstream_timeout); the call is refunded', headers.quota)
}

/** The tool's own answer: any status, media type and body, streamed back unchanged. */
const toolAnswer = response('The tool\'s answer, passed through with its status, media type and body (its own 4xx/5xx too)', Type.Unknown(), { media: '*/*', headers: { ...headers.quota, ...headers.charged } })

/** CONTRACT §10: what a call that honours Idempotency-Key may also answer. */
const idempotentAnswer = response('The tool\'s answer, passed through with its status, media type and body (its own 4xx/5xx too); or the kept answer of an earlier call with the same Idempotency-Key and body, replayed with `Idempotent-Replayed: true`', Type.Unknown(), {
  media: '*/*',
  headers: { ...headers.quota, 'Idempotent-Replayed': Type.String({ description: '`true` on an answer replayed for a repeated Idempotency-Key' }) }
})
const idempotencyResponses = {
  409: problem('A call with the same Idempotency-Key is still running (idempotency_in_flight)'),
  422: problem('The Idempotency-Key was used with another request body (idempotency_key_reused)')
}

const IDEMPOTENCY_DOC = ' With `Idempotency-Key` (1–255 printable ASCII characters; else 400 invalid_request), scoped to the subject and the tool and kept 24 h: the same key and body (SHA-256 of the bytes) replay the first answer (status, content type, body up to 1 MiB) with `Idempotent-Replayed: true`, neither forwarded nor charged; 409 idempotency_in_flight while the first call runs; 422 idempotency_key_reused for another body. A call whose answer was not kept (over 1 MiB, or refunded after an upstream failure) frees its key.'

/** The request header, documented only: the idempotency stage checks it (a schema would cost every call a validation). */
const IdempotencyHeaderDoc = Type.Object({
  'Idempotency-Key': Type.Optional(Type.String({ minLength: 1, maxLength: 255, pattern: '^[\\x20-\\x7e]+$', description: 'draft-ietf-httpapi-idempotency-key-header: a key unique to this operation' }))
})

/** @fastify/swagger transform: documents the Idempotency-Key request header. */
const documentIdempotency: SwaggerTransform = ({ schema, url }) => ({ schema: { ...schema, headers: IdempotencyHeaderDoc }, url })

const CALL_HEADERS_DOC = 'A DPoP-bound token (RFC 9449) is presented as `Authorization: DPoP <token>` with a `DPoP` proof for this method and `<publicUrl><path>`; a refused proof is 401 with `WWW-Authenticate: DPoP error="invalid_dpop_proof"`, a bound token sent as Bearer is 401 invalid_token. Every answer after the audience and scope checks carries `RateLimit-Policy: "quota";q=<limit>;w=<window>` and `RateLimit: "quota";r=<remaining>;t=<reset>` when the token has a quota; 429 answers carry `Retry-After`.'

const PassThroughParamsDoc = Type.Object({
  tool: Type.String({ description: 'The configured tool name' }),
  path: Type.String({ description: 'The rest of the path below the tool\'s base URL. It may hold several segments: send `/` unencoded (`%2F` is refused as bad_path), so give a generated client a path serializer that encodes each segment, not the whole value.' })
})

/** @fastify/swagger transform: documents `/call/:tool/*` as `/call/{tool}/{path}`, and an optional raw body on POST, PUT and PATCH. */
const documentPassThrough: SwaggerTransform = ({ schema, url, route }) => {
  const doc: FastifySchema = { ...schema, params: PassThroughParamsDoc }
  if (route.method !== 'GET' && route.method !== 'HEAD' && !(Array.isArray(route.method) && route.method.includes('GET'))) doc.headers = IdempotencyHeaderDoc
  if (doc.consumes !== undefined) doc.body = Type.Unknown({ description: 'Streamed to the tool unchanged, any media type' })
  return { schema: doc, url: url.replace(/\*$/, ':path') }
}

function isStream (body: unknown): body is Readable {
  return body !== undefined && body !== null && typeof (body as Readable).pipe === 'function'
}

export default async function callRoutes (app: FastifyInstance): Promise<void> {
  const tools = new ToolRegistry(app.config.tools)
  const upstreams = new Upstreams(tools)
  app.addHook('onClose', async () => { await upstreams.close() })
  const downstream = new DownstreamTokens(app.tokens, app.clock)
  const relay = new WebSocketRelay(app, app.tokens, app.clock)
  relay.listen()
  const bodyLimit = app.config.server.bodyLimit
  const { metrics, tokens, limiters, quotas, store, clock } = app

  /** How the request reached Tollgate, for the upstream's forwarding fields. */
  const arrival = (request: FastifyRequest): Arrival => {
    const ips = request.ips
    return {
      headers: request.headers,
      peerIp: request.socket.remoteAddress ?? request.ip,
      // proxy-addr lists the peer and then every trusted hop: more than one means the peer is a
      // trusted proxy that sent X-Forwarded-For.
      trustedPeer: ips !== undefined && ips.length > 1,
      proto: request.protocol,
      host: request.host
    }
  }

  // ---- The stages as Fastify hooks (docs/architecture.md), in the contract's order (CONTRACT
  // §5): 401 token, 404 tool, 401 audience, 403 scope, 429 rate (IP, then subject), 429 quota.

  /** onRequest: authenticate (Authorization; for a WebSocket handshake also the `bearer.` subprotocol). */
  const authenticateCall = (request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction): void => {
    const ctx = request.ctx
    ctx.trace?.enter('authenticate')
    let result
    try {
      const authorization = request.headers.authorization
      result = authenticate(tokens, ctx, authorization, authorization === undefined ? subprotocolToken(request) : undefined, app.dpopRequest(request))
    } catch (err) {
      done(err as Error)
      return
    }
    if (result instanceof Promise) {
      result.then(() => { ctx.trace?.leave(); done() }, done)
      return
    }
    ctx.trace?.leave()
    done()
  }

  /**
   * preHandler: limit → idempotency → meter, after authorize (and, for a pass-through, the path
   * check). A tool with a costExpr is priced from `facts` (src/metering/price.ts); any other is
   * charged its fixed cost without a look at the call. True when the call was answered here, as a
   * replay of a kept answer: not charged.
   */
  const limitAndMeter = async (request: FastifyRequest, reply: FastifyReply, tool: Tool, facts: (request: FastifyRequest) => CallFacts | Promise<CallFacts>): Promise<boolean> => {
    const ctx = request.ctx
    ctx.trace?.enter('limit')
    await limit(limiters, ctx)
    // Only a request that carries the header pays for the stage (CONTRACT §10: not on GET).
    if (request.headers['idempotency-key'] !== undefined && request.method !== 'GET' && request.method !== 'HEAD') {
      ctx.trace?.enter('idempotency')
      if (await replayed(request, reply)) {
        ctx.trace?.leave()
        return true
      }
    }
    ctx.trace?.enter('meter')
    let cost = tool.cost
    if (tool.price !== undefined) {
      const known = facts(request)
      cost = priceCall(tool.price, tool.cost, ctx, known instanceof Promise ? await known : known)
    }
    const quotaFields = await meter(quotas, ctx, cost)
    ctx.trace?.leave()
    if (quotaFields !== undefined) reply.headers(quotaFields)
    return false
  }

  /**
   * idempotency: claims the request's Idempotency-Key, or sends the kept answer (true). A streamed
   * pass-through body is read whole first (bounded by server.bodyLimit): its hash decides.
   */
  const replayed = async (request: FastifyRequest, reply: FastifyReply): Promise<boolean> => {
    const ctx = request.ctx
    // headersDistinct tells a header sent twice (Node joins those with ", "); app.inject has none.
    const distinct = (request.raw.headersDistinct as IncomingMessage['headersDistinct'] | undefined)?.['idempotency-key']
    const key = idempotencyKey(request.headers['idempotency-key'], distinct?.length)
    if (key === undefined) return false
    if (ctx.body === undefined && isStream(request.body)) {
      const length = Number(request.headers['content-length'] ?? 0)
      if (length > bodyLimit) throw new PayloadTooLarge()
      ctx.body = await readBody(request.body, bodyLimit)
    }
    const answer = await claimIdempotency(store, clock(), ctx, key, ctx.body)
    if (answer === undefined) return false
    const quota = principalOf(ctx).claims.quota
    if (quota !== undefined) {
      // Every /call answer carries the RateLimit fields; a replay's are read, nothing is charged.
      try {
        reply.headers(quotaHeaders(await quotas.balance(principalOf(ctx).sub, quota)))
      } catch (err) {
        request.log.warn({ err }, 'quota usage unavailable for a replayed answer')
      }
    }
    reply.code(answer.status)
    if (answer.contentType !== undefined) reply.header('content-type', answer.contentType)
    reply.header('idempotent-replayed', 'true')
    request.log.info({ audit: 'call.replayed', tool: ctx.tool?.name, client_id: principalOf(ctx).clientId, sub: principalOf(ctx).sub, status: answer.status }, 'idempotent call replayed')
    reply.send(answer.body)
    return true
  }

  /** Keeps the answer of a call holding an Idempotency-Key as it streams, or frees the key. */
  const idempotencyTap = (request: FastifyRequest, status: number, contentType: unknown): AnswerTap => {
    const ctx = request.ctx
    const capture = new AnswerCapture()
    // CONTRACT §10: a streamed answer (an event stream) is not kept; its key is freed.
    const streamed = typeof contentType === 'string' && contentType.split(';')[0]?.trim().toLowerCase() === 'text/event-stream'
    return {
      data: chunk => { if (!streamed) capture.push(chunk) },
      end: async () => {
        const body = streamed ? undefined : capture.body()
        await finishIdempotency(store, clock(), ctx, body === undefined ? undefined : { status, contentType: typeof contentType === 'string' ? contentType : undefined, body }, request.log)
      },
      abort: () => { finishIdempotency(store, clock(), ctx, undefined, request.log).catch(() => {}) }
    }
  }

  /** authorize for /call: the named tool, its audience and scopes. */
  const authorizeCall = (ctx: RequestContext, name: unknown): Tool => {
    ctx.trace?.enter('authorize')
    const tool = authorizeTool(tools, ctx, name)
    ctx.trace?.leave()
    return tool
  }

  /** relay: the upstream request's headers. */
  const relayCall = (request: FastifyRequest, tool: Tool, options?: { websocket: boolean }): Record<string, string | string[]> => {
    const ctx = request.ctx
    ctx.trace?.enter('relay')
    const headers = relayHeaders(downstream, ctx, tool, arrival(request), options)
    ctx.trace?.leave()
    return headers
  }

  /** settle with the reply still Fastify's: a refund updates the RateLimit fields of the answer. */
  const settleReply = async (request: FastifyRequest, reply: FastifyReply | undefined, failed: boolean): Promise<void> => {
    const ctx = request.ctx
    // Only a failed call has anything to settle (a refund): only it gets a span.
    const trace = failed ? ctx.trace : undefined
    trace?.enter('settle')
    const quotaFields = await settle(quotas, ctx, failed, request.log)
    trace?.leave({ 'tollgate.refunded': ctx.refunded })
    if (quotaFields !== undefined && reply !== undefined && !reply.sent) reply.headers(quotaFields)
  }

  // Audit and metrics for every refusal on these routes (never the token itself).
  app.addHook('onError', async (request, _reply, error) => {
    const reason = refusalReason(error)
    const ctx = request.ctx
    const p = ctx.principal
    const tool = ctx.tool?.name ?? (request.params as { tool?: string } | undefined)?.tool ?? (request.body as { tool?: unknown } | undefined)?.tool
    request.log.info({ audit: 'call.refused', tool: typeof tool === 'string' ? tool.slice(0, 64) : undefined, client_id: p?.clientId, sub: p?.sub, jti: p?.jti, reason }, 'call refused')
    // Rate-limit refusals are counted by the limiters; upstream failures are not refusals.
    if (reason !== 'rate_limited' && !reason.startsWith('upstream_')) metrics.rejections.inc({ reason })
  })
  app.addHook('onResponse', (request, reply, done) => {
    const tool = request.ctx.tool
    if (tool !== undefined && reply.statusCode !== 101) metrics.countCall(tool.name, reply.statusCode)
    // A call that claimed an Idempotency-Key and ended before its answer was kept (refused by the
    // quota, an upstream failure, any error): its key is free for a retry.
    if (request.ctx.idempotency !== undefined) finishIdempotency(store, clock(), request.ctx, undefined, request.log).catch(() => {})
    done()
  })

  /**
   * proxy → settle: one upstream request, refunded when it fails. At the upstream's headers the
   * reply is taken over from Fastify (hooks still run on finish) and the body goes straight from
   * undici to the caller's socket.
   */
  async function forward (request: FastifyRequest, reply: FastifyReply, tool: Tool, req: UpstreamRequest, rewriteFor?: (headers: Record<string, string | string[] | undefined>) => BodyRewriter | undefined): Promise<FastifyReply> {
    const started = process.hrtime.bigint()
    const trace = request.ctx.trace
    trace?.upstream(req.method, tool.url, req.headers)
    let answer
    try {
      answer = await upstreams.send(tool, req)
    } catch (err) {
      const e = translate(err)
      trace?.upstreamFailed(e)
      if (e instanceof UpstreamUnavailable || e instanceof UpstreamTimeout) await settleReply(request, reply, true)
      throw e
    }
    metrics.observeUpstream(tool.name, Number(process.hrtime.bigint() - started) / 1e9)
    trace?.upstreamAnswered(answer.statusCode)
    if (answer.statusCode >= 500) await settleReply(request, reply, true)
    // Settlement (CONTRACT §10): the tool's Tollgate-Cost header settles the charge now, and the
    // caller hears what it was charged; without one, a trailer may settle it before the answer ends.
    let beforeEnd: ((trailers: Record<string, string | string[] | undefined>) => Promise<void>) | undefined
    const ctx = request.ctx
    if (tool.settle && ctx.charge !== undefined && !ctx.refunded) {
      const reported = answer.headers[COST_FIELD]
      if (reported !== undefined) {
        const quotaFields = await settleReported(quotas, ctx, reportedCost(reported), request.log)
        if (quotaFields !== undefined) reply.headers(quotaFields)
        reply.header(CHARGED_FIELD, String(ctx.charged))
      } else {
        beforeEnd = async trailers => { await settleReported(quotas, ctx, reportedCost(trailers[COST_FIELD]), request.log) }
      }
    }
    // The tool's headers (callerResponseHeaders, never its Tollgate-Cost); Tollgate's own
    // (request id, quota, Tollgate-Charged) win over anything the tool sent under the same names.
    const headers: OutgoingHttpHeaders = callerResponseHeaders(answer.headers)
    Object.assign(headers, reply.getHeaders())
    headers['x-request-id'] = request.id
    reply.hijack()
    // A body that breaks off (reset, body timeout) is an upstream failure too; the caller going
    // away is not.
    const tap = request.ctx.idempotency !== undefined ? idempotencyTap(request, answer.statusCode, headers['content-type']) : undefined
    answer.relayTo(reply.raw, headers, (err) => {
      trace?.upstreamFailed(err)
      settleReply(request, undefined, true).catch(() => {})
    }, { rewrite: rewriteFor?.(answer.headers), beforeEnd, tap })
    return reply
  }

  /** POST /call: what a costExpr prices (CONTRACT §10): `arguments`, the body's size. */
  const callFacts = (request: FastifyRequest): CallFacts => ({
    args: (request.body as { arguments?: unknown }).arguments ?? {},
    size: request.ctx.body?.length ?? 0,
    method: 'POST',
    path: ''
  })

  /**
   * A pass-through call priced by a costExpr: its body is read whole (bounded by server.bodyLimit)
   * and later sent upstream as exactly these bytes; `args` is that body when it is JSON.
   */
  const passThroughFacts = async (request: FastifyRequest): Promise<CallFacts> => {
    const ctx = request.ctx
    const stream = request.body as Readable | undefined | null
    // An Idempotency-Key may have had the body read already (to hash it).
    if (ctx.body === undefined && isStream(stream) && !isUpgrade(request)) {
      if (Number(request.headers['content-length'] ?? 0) > bodyLimit) throw new PayloadTooLarge()
      ctx.body = await readBody(stream, bodyLimit)
    }
    const { rest } = splitCallUrl(request.raw.url ?? '')
    return { args: passThroughArgs(request.headers['content-type'], ctx.body), size: ctx.body?.length ?? 0, method: request.method, path: rest }
  }

  /** An MCP tool is reached only at /call/<tool>, where each tools/call is checked and charged. */
  const refuseMcp = (tool: Tool): void => {
    if (tool.protocol === 'mcp') throw new TollgateError('invalid_request', 400, `tool ${tool.name} is an MCP server: use /call/${tool.name} as its URL`)
  }

  /**
   * application/json only, kept as the exact bytes received (they go upstream unchanged) and parsed
   * once for the checks; a member name given twice is refused, since the tool could read it
   * differently.
   */
  const exactJson = (scope: FastifyInstance): void => {
    scope.removeAllContentTypeParsers()
    const parseJson = scope.getDefaultJsonParser('error', 'error')
    scope.addContentTypeParser('application/json', { parseAs: 'buffer', bodyLimit }, (request, body, done) => {
      request.ctx.body = body as Buffer
      const text = (body as Buffer).toString('utf8')
      parseJson(request, text, (err, parsed) => {
        if (err !== null) {
          done(err, undefined)
          return
        }
        // The exact bytes are forwarded: a name the tool could read differently is refused.
        const repeated = duplicateKey(text)
        if (repeated !== undefined) {
          done(new TollgateError('invalid_request', 400, `the body repeats the member name ${JSON.stringify(repeated.slice(0, 64))}`), undefined)
          return
        }
        done(null, parsed)
      })
    })
  }

  // ---- /call/:tool for MCP tools (CONTRACT §12): Streamable HTTP relayed; every tools/call in a
  // POSTed message or batch checked against mcpTools and charged; tools/list answers filtered.
  await app.register(async function callMcp (scope) {
    exactJson(scope)
    const preHandler = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
      const ctx = request.ctx
      const tool = authorizeCall(ctx, (request.params as { tool: string }).tool)
      if (tool.protocol !== 'mcp') throw new TollgateError('not_found', 404, `tool ${tool.name} is not an MCP server: call /call/${tool.name}/<path> or POST /call`)
      const { search } = splitCallUrl(request.raw.url ?? '')
      ctx.upstreamPath = upstreamPath(tool, '', search)
      let cost = 0
      if (request.method === 'POST') {
        const principal = principalOf(ctx)
        const plan = planRequest(tool, principal.scopes, request.body, (price, args) => priceCall(price, 0, ctx, { args, size: ctx.body?.length ?? 0, method: 'POST', path: '' }))
        cost = plan.cost
        ctx.mcpListIds = plan.listIds
      }
      ctx.trace?.enter('limit')
      await limit(limiters, ctx)
      if (cost > 0) {
        ctx.trace?.enter('meter')
        const quotaFields = await meter(quotas, ctx, cost)
        if (quotaFields !== undefined) reply.headers(quotaFields)
      }
      ctx.trace?.leave()
    }
    const handler = async (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> => {
      const ctx = request.ctx
      const tool = ctx.tool as Tool
      const listIds = ctx.mcpListIds
      const scopes = principalOf(ctx).scopes
      return await forward(request, reply, tool, {
        method: request.method as UpstreamRequest['method'],
        path: ctx.upstreamPath as string,
        headers: relayCall(request, tool),
        body: request.method === 'POST' ? (ctx.body ?? null) : null
      }, listIds === undefined ? undefined : headers => listFilterFor(headers['content-type'], tool, scopes, listIds))
    }
    for (const method of ['POST', 'GET', 'DELETE'] as const) {
      scope.route({
        method,
        url: '/call/:tool',
        config: { protectedResource: 'tool' },
        onRequest: authenticateCall,
        preHandler,
        schema: {
          operationId: `callMcp${method[0]}${method.slice(1).toLowerCase()}`,
          tags: ['tools'],
          summary: `An MCP server behind Tollgate (Streamable HTTP, ${method})`,
          description: 'For a tool with `protocol: mcp`, `/call/{tool}` is the MCP server URL a client uses: POST (JSON-RPC messages; answers as JSON or SSE), GET (the server\'s SSE stream) and DELETE (end the session), with `Mcp-Session-Id` and `MCP-Protocol-Version` passed both ways. Every `tools/call` is checked against the tool\'s `mcpTools` (403 insufficient_scope with the scope needed; 404 for an MCP tool not offered) and charged at its cost (429 quota_exceeded when spent); `tools/list` answers list only the MCP tools the token\'s scopes allow. ' + CALL_HEADERS_DOC,
          security: [{ bearerAuth: [] }],
          params: Type.Object({ tool: Type.String({ description: 'The configured tool name' }) }),
          ...(method === 'POST' ? { body: Type.Unknown({ description: 'A JSON-RPC 2.0 message or batch' }) } : {}),
          response: { 200: toolAnswer, ...errorResponses }
        },
        handler
      })
    }
  })

  // ---- POST /call: the JSON body goes to the tool's url as the exact bytes received.
  await app.register(async function callJson (scope) {
    exactJson(scope)
    scope.post('/call', {
      schema: {
        operationId: 'callTool',
        tags: ['tools'],
        summary: 'Call a tool',
        description: 'Checks, in order: bearer token (401), tool known (404), audience (401 invalid_token), scopes (403), rate limits per IP then per subject (429 rate_limited), Idempotency-Key (409, 422), quota (429 quota_exceeded). The unchanged body is POSTed to the tool\'s `url`; the tool\'s status, headers and body stream back. ' + CALL_HEADERS_DOC + IDEMPOTENCY_DOC,
        security: [{ bearerAuth: [] }],
        body: CallRequestSchema,
        response: { 200: idempotentAnswer, ...errorResponses, ...idempotencyResponses }
      },
      config: { protectedResource: 'tool', swaggerTransform: documentIdempotency },
      onRequest: authenticateCall,
      // One hook for the remaining checks, in the pipeline's order: a hook per stage costs a
      // promise and a dispatch on every call.
      preHandler: async (request, reply) => {
        const tool = authorizeCall(request.ctx, (request.body as { tool: string }).tool)
        refuseMcp(tool)
        if (await limitAndMeter(request, reply, tool, callFacts)) return reply
      }
    }, async (request, reply) => {
      const ctx = request.ctx
      const tool = ctx.tool as Tool
      return await forward(request, reply, tool, {
        method: 'POST',
        path: tool.url.pathname,
        headers: relayCall(request, tool),
        body: ctx.body ?? null
      })
    })
  })

  // ---- /call/:tool/*: method, rest of the path, query and a streamed body to the tool's base.
  await app.register(async function callPassThrough (scope) {
    // Bodies are not buffered: the raw request stream goes upstream (capped below).
    scope.removeAllContentTypeParsers()
    scope.addContentTypeParser('*', (_request, payload, done) => { done(null, payload) })

    const preHandler = async (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply | undefined> => {
      const ctx = request.ctx
      const tool = authorizeCall(ctx, (request.params as { tool: string }).tool)
      refuseMcp(tool)
      if (isUpgrade(request) && !tool.websocket) throw new TollgateError('invalid_request', 400, `tool ${tool.name} does not accept WebSocket connections`)
      const { rest, search } = splitCallUrl(request.raw.url ?? '')
      ctx.upstreamPath = upstreamPath(tool, rest, search)
      if (await limitAndMeter(request, reply, tool, passThroughFacts)) return reply
    }
    const handler = async (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply | undefined> => {
      const ctx = request.ctx
      const tool = ctx.tool as Tool
      const path = ctx.upstreamPath as string
      if (isUpgrade(request)) {
        try {
          const headers = relayCall(request, tool, { websocket: true })
          // No client span for a WebSocket: the tool's parent is the request's span.
          ctx.trace?.inject(headers)
          await relay.relay(request, reply, { tool, path, headers, principal: principalOf(ctx) })
        } catch (err) {
          await settleReply(request, reply, true)
          throw err
        }
        metrics.countCall(tool.name, 101)
        return undefined
      }
      // An idempotent or priced call's body was read whole (to hash it, or to price it).
      let body: Readable | Buffer | null = ctx.body ?? null
      if (body === null && isStream(request.body)) {
        const length = Number(request.headers['content-length'] ?? 0)
        if (length > bodyLimit) throw new PayloadTooLarge()
        body = capBody(request.body, bodyLimit)
      }
      return await forward(request, reply, tool, {
        method: request.method as UpstreamRequest['method'],
        path,
        headers: relayCall(request, tool),
        body
      })
    }
    const options = {
      onRequest: authenticateCall,
      preHandler
    }
    // One route per method so each gets its own operationId in the OpenAPI document (HEAD comes
    // with GET). The document names the wildcard `{path}`: OpenAPI has no `*` parameter, and
    // generated clients (openapi-fetch) leave a literal `{*}` in the URL.
    for (const method of ['GET', ...PASS_THROUGH_METHODS] as const) {
      const withBody = method === 'POST' || method === 'PUT' || method === 'PATCH'
      const idempotent = method !== 'GET'
      scope.route({
        ...options,
        method,
        url: '/call/:tool/*',
        config: { swaggerTransform: documentPassThrough, protectedResource: 'tool' },
        schema: {
          operationId: method === 'GET' ? 'callToolPath' : `callToolPath${method[0]}${method.slice(1).toLowerCase()}`,
          tags: ['tools'],
          summary: `REST-style pass-through to a tool (${method})`,
          description: 'Any method (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS): the method, the rest of the path, the query and the streamed body go to the tool\'s base URL. The same checks as POST /call; a path that would leave the base (`..`, encoded dots or slashes, backslashes, `//`, absolute URLs, encoded NUL) is 400 bad_path. A tool with `websocket: true` accepts WebSocket upgrades on GET (token in Authorization or the `bearer.<token>` subprotocol). ' + CALL_HEADERS_DOC + (idempotent ? IDEMPOTENCY_DOC + ' The body of a call with the key is read whole (up to server.bodyLimit) before it is forwarded.' : ''),
          security: [{ bearerAuth: [] }],
          params: Type.Object({ tool: Type.String(), '*': Type.String() }),
          ...(withBody ? { consumes: ['*/*'] } : {}),
          response: idempotent ? { 200: idempotentAnswer, ...errorResponses, ...idempotencyResponses } : { 200: toolAnswer, ...errorResponses }
        },
        handler
      })
    }
  })
}
