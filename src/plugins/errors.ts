// The one error handler. TollgateErrors become RFC 6749 §5.2 JSON on the OAuth endpoints and RFC
// 9457 problem+json elsewhere, with WWW-Authenticate where RFC 6750 asks for it. Fastify's own
// client errors (bad JSON, oversize or unsupported bodies, schema failures) are translated to the
// same shapes; anything unknown is a 500 without details, logged with its stack.
import { STATUS_CODES } from 'node:http'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { TollgateError, bearerChallenge, type ErrorCode } from '../errors.js'
import { DPOP_ALGORITHMS } from '../tokens/dpop.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Errors on this route use RFC 6749 §5.2 JSON. */
    oauth?: boolean
    /** Forward-auth route: a proxy understands only 2xx, 401 and 403 (rate limits answer 403 there). */
    forwardAuth?: boolean
    /**
     * The protected resource a 401 names in its challenge (RFC 9728 §5.1): the gateway, or the
     * tool of the request (`:tool`, or the tool authorize found), falling back to the gateway.
     */
    protectedResource?: 'gateway' | 'tool'
  }
}

const FASTIFY_CODES: Record<string, [number, ErrorCode]> = {
  FST_ERR_CTP_BODY_TOO_LARGE: [413, 'payload_too_large'],
  FST_ERR_CTP_INVALID_MEDIA_TYPE: [415, 'unsupported_media_type'],
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: [400, 'invalid_request'],
  FST_ERR_CTP_EMPTY_JSON_BODY: [400, 'invalid_request'],
  FST_ERR_CTP_INVALID_JSON_BODY: [400, 'invalid_request']
}

/** Turns any thrown value into a TollgateError; unknown errors become a detail-free 500. */
export function toTollgateError (err: unknown): TollgateError {
  if (err instanceof TollgateError) return err
  const e = err as Partial<FastifyError> & { validation?: unknown }
  if (e.validation !== undefined) {
    return new TollgateError('invalid_request', 400, (e.message ?? 'invalid request').replace(/^(body|querystring|params|headers)\/?/, '$1 '))
  }
  const known = e.code !== undefined ? FASTIFY_CODES[e.code] : undefined
  if (known !== undefined) {
    const detail = known[0] === 413 ? 'request body too large' : known[0] === 415 ? 'unsupported media type' : 'malformed request body'
    return new TollgateError(known[1], known[0], detail, { cause: err })
  }
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    return new TollgateError(e.statusCode === 404 ? 'not_found' : 'invalid_request', e.statusCode, e.statusCode === 404 ? 'not found' : 'bad request', { cause: err })
  }
  return new TollgateError('internal_error', 500, 'internal error', { cause: err })
}

export function sendError (request: FastifyRequest, reply: FastifyReply, err: TollgateError): FastifyReply {
  const config = request.routeOptions.config ?? {}
  let status = err.statusCode
  // A proxy's forward auth passes on only 401 and 403, so a rate-limited caller gets 403 there. A
  // spent quota at GET /validate?charge= stays 429 (CONTRACT §10): the shipped proxy examples
  // turn it into the client's 429.
  if (config.forwardAuth === true && status === 429 && err.code === 'rate_limited') status = 403
  reply.code(status)
  for (const [name, value] of Object.entries(err.headers)) reply.header(name, value)
  if (config.oauth === true) {
    reply.header('cache-control', 'no-store')
    // RFC 6749 has no code for an unavailable dependency; temporarily_unavailable is the closest.
    const code = err.code === 'store_unavailable' ? 'temporarily_unavailable' : err.code
    return reply.type('application/json').send({ error: code, error_description: err.message })
  }
  const challenge = bearerChallenge(err, status === 401 ? resourceMetadataUrl(request) : undefined, 'tollgate', DPOP_ALGORITHMS)
  if (challenge !== undefined && reply.getHeader('www-authenticate') === undefined) reply.header('www-authenticate', challenge)
  return reply.type('application/problem+json').send({
    type: `urn:tollgate:problem:${err.code}`,
    title: STATUS_CODES[status] ?? 'Error',
    status,
    detail: err.message,
    code: err.code
  })
}

function resourceMetadataUrl (request: FastifyRequest): string | undefined {
  const which = request.routeOptions.config?.protectedResource
  const resources = request.server.resources
  if (which === undefined || resources === undefined) return undefined
  if (which === 'gateway') return resources.metadataUrl
  return resources.metadataUrlFor(request.ctx?.tool?.name ?? (request.params as { tool?: unknown } | undefined)?.tool)
}

export default fp(async function errors (app) {
  app.setErrorHandler(async (error, request, reply) => {
    const err = toTollgateError(error)
    if (err.statusCode >= 500 && err.code === 'internal_error') {
      request.log.error({ err: error }, 'unhandled error')
    } else if (err.statusCode >= 500) {
      request.log.warn({ code: err.code, cause: (err.cause as Error | undefined)?.message }, err.message)
    }
    if (request.routeOptions.config?.oauth === true) {
      request.log.info({ audit: 'oauth.refused', route: request.routeOptions.url, client_id: request.ctx?.clientId, error: err.code, reason: err.message }, 'request refused')
      app.metrics?.tokensRefused.inc({ error: err.code })
    }
    return sendError(request, reply, err)
  })
  app.setNotFoundHandler(async (request, reply) => {
    return sendError(request, reply, new TollgateError('not_found', 404, `no route for ${request.method} ${request.url.split('?')[0] ?? ''}`))
  })
}, { name: 'tollgate-errors' })
