// The request pipeline (docs/architecture.md): authenticate → authorize → limit → meter → relay →
// proxy → settle, one Fastify-free function per stage over one RequestContext. The routes
// (routes/call.ts, routes/validate.ts) and the WebSocket upgrade call these and nothing else.
export { createContext, principalOf, type RequestContext } from './context.js'
export { authenticate, bearerToken, type DpopRequest, type ProofVerifier, type Verifier } from './authenticate.js'
export { authorize, authorizeTool, requireAudience, requireScopes } from './authorize.js'
export { limit, type Limiters } from './limit.js'
export { meter } from './meter.js'
export { AnswerCapture, claimIdempotency, finishIdempotency, idempotencyKey, IDEMPOTENCY_TTL_MS, MAX_KEPT_BODY, type IdempotencyHold } from './idempotency.js'
export { relayHeaders, toolCredential, type Arrival } from './relay.js'
export { settle, settleReported, reportedCost, COST_FIELD, CHARGED_FIELD, type SettleLog } from './settle.js'
export { headerSafe, isHeaderSafe } from './header-safe.js'
