// authorize: the token's audience and scopes against what the resource needs. For /call the
// resource is a configured tool (404 when unknown); for forward auth it is what the proxy names
// in the query. RFC 6750 §3.1: a token for another resource is invalid_token (401), a missing
// scope insufficient_scope (403).
import { InsufficientScope, InvalidToken } from '../errors.js'
import type { Principal } from '../tokens/index.js'
import type { Tool, ToolRegistry } from '../tools/index.js'
import { principalOf, type RequestContext } from './context.js'

export function requireAudience (principal: Principal, audience: string | undefined): void {
  if (audience !== undefined && !principal.aud.includes(audience)) {
    throw new InvalidToken(`the token is not valid for audience ${audience}`)
  }
}

export function requireScopes (principal: Principal, required: readonly string[]): void {
  for (let i = 0; i < required.length; i++) {
    if (!principal.scopes.has(required[i] as string)) throw new InsufficientScope(required.join(' '))
  }
}

/** Forward auth: the audience and scopes a proxy asked for (either may be absent). */
export function authorize (ctx: RequestContext, need: { audience?: string | undefined, scopes?: readonly string[] | undefined }): Principal {
  const principal = principalOf(ctx)
  requireAudience(principal, need.audience)
  if (need.scopes !== undefined) requireScopes(principal, need.scopes)
  return principal
}

/** /call: the named tool (404), then its audience (401) and scopes (403); records the tool. */
export function authorizeTool (tools: ToolRegistry, ctx: RequestContext, name: unknown): Tool {
  const tool = tools.get(name)
  ctx.tool = tool
  authorize(ctx, tool)
  return tool
}
