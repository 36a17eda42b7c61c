// MCP servers behind Tollgate (CONTRACT §12). A tool with `protocol: mcp` speaks Streamable HTTP;
// every JSON-RPC message the caller POSTs is read here (the body is already bounded by the route's
// body limit): each `tools/call` is checked against the tool's `mcpTools` (the named entry, else
// `*`, else refused) and priced; other methods cost nothing. Answers to `tools/list` are cut to the
// MCP tools the caller's scopes allow, in a JSON answer or in an SSE stream, event by event, so a
// streamed answer still arrives in parts. Answers to anything else are relayed untouched.
import { InsufficientScope, TollgateError } from '../errors.js'
import type { Pricer } from '../metering/price.js'
import type { McpToolRule, Tool } from '../tools/index.js'

/** What one POSTed JSON-RPC message or batch costs, and the ids of its `tools/list` requests. */
export interface RpcPlan {
  cost: number
  /** Ids of `tools/list` requests: their answers are filtered. */
  listIds: Set<string | number>
}

/** The largest answer (bytes) or SSE event held while a `tools/list` answer is filtered. */
export const MAX_FILTERED_BYTES = 8 * 1024 * 1024

export function ruleFor (tool: Tool, name: string): McpToolRule | undefined {
  return tool.mcpTools.get(name) ?? tool.mcpTools.get('*')
}

function permits (rule: McpToolRule, scopes: ReadonlySet<string>): boolean {
  return rule.scopes.every(s => scopes.has(s))
}

function invalid (detail: string): TollgateError {
  return new TollgateError('invalid_request', 400, detail)
}

/**
 * Checks a POSTed JSON-RPC message or batch (CONTRACT §12): 400 for a body that is not JSON-RPC,
 * 404 for a `tools/call` of an MCP tool that has no entry (and no `*`), 403 insufficient_scope with
 * the entry's scopes when the caller lacks one. Resolves with the total cost.
 */
export function planRequest (tool: Tool, scopes: ReadonlySet<string>, body: unknown, price?: (pricer: Pricer, args: unknown) => number): RpcPlan {
  const messages = Array.isArray(body) ? body : [body]
  if (messages.length === 0) throw invalid('an empty JSON-RPC batch')
  const plan: RpcPlan = { cost: 0, listIds: new Set() }
  for (const message of messages) {
    if (typeof message !== 'object' || message === null || Array.isArray(message)) throw invalid('each JSON-RPC message must be an object')
    const { method, params, id } = message as { method?: unknown, params?: unknown, id?: unknown }
    // A message without a method is the caller's answer to a request of the server's.
    if (method === undefined) continue
    if (typeof method !== 'string') throw invalid('a JSON-RPC method must be a string')
    if (method === 'tools/call') {
      const name = (params as { name?: unknown } | null | undefined)?.name
      if (typeof name !== 'string' || name === '') throw invalid('tools/call needs params.name')
      const rule = ruleFor(tool, name)
      if (rule === undefined) throw new TollgateError('tool_not_found', 404, `MCP tool ${JSON.stringify(name.slice(0, 128))} is not offered through ${tool.name}`)
      if (!permits(rule, scopes)) throw new InsufficientScope(rule.scopes.join(' '), `calling MCP tool ${JSON.stringify(name.slice(0, 128))} needs scope ${rule.scopes.join(' ')}`)
      // A priced entry (costExpr): its `args` are the call's params.arguments (CONTRACT §10, §12).
      if (rule.price === undefined) plan.cost += rule.cost
      else if (price === undefined) throw new Error('planRequest: a priced MCP tool needs a price function')
      else plan.cost += price(rule.price, (params as { arguments?: unknown }).arguments ?? {})
    } else if (method === 'tools/list' && (typeof id === 'string' || typeof id === 'number')) {
      plan.listIds.add(id)
    }
  }
  return plan
}

/** Rewrites a body as it streams: `push` returns what may be sent now, `end` the rest. Throws to fail the answer. */
export interface BodyRewriter {
  push: (chunk: Buffer) => Buffer | undefined
  end: () => Buffer | undefined
}

/** A JSON-RPC message (or batch) with every answer to one of `listIds` cut to what `scopes` allow. */
function filterMessages (value: unknown, tool: Tool, scopes: ReadonlySet<string>, listIds: Set<string | number>): unknown {
  const one = (m: unknown): unknown => {
    if (typeof m !== 'object' || m === null) return m
    const { id, result } = m as { id?: unknown, result?: unknown }
    if ((typeof id !== 'string' && typeof id !== 'number') || !listIds.has(id)) return m
    const tools = (result as { tools?: unknown } | undefined)?.tools
    if (!Array.isArray(tools)) return m
    const allowed = tools.filter(t => {
      const name = (t as { name?: unknown } | null)?.name
      if (typeof name !== 'string') return false
      const rule = ruleFor(tool, name)
      return rule !== undefined && permits(rule, scopes)
    })
    return { ...m, result: { ...(result as object), tools: allowed } }
  }
  return Array.isArray(value) ? value.map(one) : one(value)
}

class Oversized extends Error {
  constructor () { super(`an MCP answer to filter is over ${MAX_FILTERED_BYTES} bytes`) }
}

/** A JSON answer holding `tools/list` results: held whole (bounded), filtered at its end. */
export function jsonListFilter (tool: Tool, scopes: ReadonlySet<string>, listIds: Set<string | number>): BodyRewriter {
  const chunks: Buffer[] = []
  let size = 0
  return {
    push (chunk) {
      size += chunk.length
      if (size > MAX_FILTERED_BYTES) throw new Oversized()
      chunks.push(chunk)
      return undefined
    },
    end () {
      const text = Buffer.concat(chunks).toString('utf8')
      let value: unknown
      try {
        value = JSON.parse(text)
      } catch {
        throw new Error('the MCP server answered tools/list with a body that is not JSON')
      }
      return Buffer.from(JSON.stringify(filterMessages(value, tool, scopes, listIds)))
    }
  }
}

/**
 * An SSE stream (text/event-stream) that may carry `tools/list` results: each event is sent as soon
 * as it is complete; an event whose data is an answer to one of `listIds` is sent filtered (its
 * other fields kept), every other event byte for byte.
 */
export function sseListFilter (tool: Tool, scopes: ReadonlySet<string>, listIds: Set<string | number>): BodyRewriter {
  let pending = ''
  const rewriteEvent = (event: string): string => {
    const lines = event.split(/\r\n|\r|\n/)
    const data: string[] = []
    const other: string[] = []
    for (const line of lines) {
      if (line.startsWith('data:')) data.push(line.slice(line.startsWith('data: ') ? 6 : 5))
      else other.push(line)
    }
    if (data.length === 0) return event
    let value: unknown
    try {
      value = JSON.parse(data.join('\n'))
    } catch {
      return event
    }
    const filtered = filterMessages(value, tool, scopes, listIds)
    if (filtered === value) return event
    return [...other, `data: ${JSON.stringify(filtered)}`].join('\n')
  }
  const drain = (final: boolean): Buffer | undefined => {
    let out = ''
    for (;;) {
      const m = /\r\n\r\n|\n\n|\r\r/.exec(pending)
      if (m === null) break
      out += rewriteEvent(pending.slice(0, m.index)) + m[0]
      pending = pending.slice(m.index + m[0].length)
    }
    if (final && pending !== '') {
      out += rewriteEvent(pending)
      pending = ''
    }
    if (Buffer.byteLength(pending) > MAX_FILTERED_BYTES) throw new Oversized()
    return out === '' ? undefined : Buffer.from(out)
  }
  const decoder = new TextDecoder('utf-8')
  return {
    push (chunk) {
      pending += decoder.decode(chunk, { stream: true })
      return drain(false)
    },
    end () {
      pending += decoder.decode()
      return drain(true)
    }
  }
}

/** The rewriter for an answer to a POST that asked for `tools/list`, by the answer's media type. */
export function listFilterFor (contentType: string | string[] | undefined, tool: Tool, scopes: ReadonlySet<string>, listIds: Set<string | number>): BodyRewriter | undefined {
  if (listIds.size === 0) return undefined
  const type = (Array.isArray(contentType) ? contentType[0] : contentType)?.split(';')[0]?.trim().toLowerCase()
  if (type === 'text/event-stream') return sseListFilter(tool, scopes, listIds)
  if (type === 'application/json') return jsonListFilter(tool, scopes, listIds)
  return undefined
}
