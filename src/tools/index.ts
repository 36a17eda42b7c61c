// The tool registry: the configured downstream tools, checked once at startup and kept in a Map
// for the hot path. Owns each tool's parsed base URL, path prefix and credential mode; never
// talks to a tool, never decides who may call one.
import type { ToolConfig } from '../config.js'
import { ConfigError, compileCost, parseToolUrl } from '../config.js'
import type { Pricer } from '../metering/price.js'
import { ToolNotFound } from '../errors.js'

/** Bytes: tools[].maxPayload when unset (ws's own default is 100 MiB). */
export const DEFAULT_MAX_PAYLOAD = 1_048_576

export type ToolAuth =
  | { kind: 'token' }
  | { kind: 'none' }
  | { kind: 'header', header: string, value: string }

export interface Tool {
  name: string
  /** The configured URL: POST /call posts here; /call/:tool/* uses it as the base. */
  url: URL
  /** `scheme://host:port`, the key of the connection pool. */
  origin: string
  /** The base path without its trailing slash ('' for the root); every upstream path starts with it. */
  basePath: string
  audience: string
  scopes: readonly string[]
  cost: number
  /** The compiled `costExpr` (CONTRACT §10); undefined for a fixed `cost`. */
  price: Pricer | undefined
  /** `settle: true`: the charge is a reservation the tool's Tollgate-Cost settles (CONTRACT §10). */
  settle: boolean
  /** Milliseconds. */
  timeoutMs: number
  auth: ToolAuth
  refundOnFailure: boolean
  websocket: boolean
  /** Bytes: the largest WebSocket message relayed either way (RFC 6455 §7.4.1: 1009 above it). */
  maxPayload: number
  /** `mcp`: an MCP server (Streamable HTTP) whose `tools/call` requests are checked and charged one by one. */
  protocol: 'http' | 'mcp'
  /** MCP tool name (or `*`) → what a `tools/call` of it needs and costs; empty for an HTTP tool. */
  mcpTools: ReadonlyMap<string, McpToolRule>
}

export interface McpToolRule {
  scopes: readonly string[]
  cost: number
  /** The compiled `costExpr`, priced with the tools/call `params.arguments` as `args`. */
  price: Pricer | undefined
}

export class ToolRegistry {
  readonly #tools = new Map<string, Tool>()

  constructor (configs: readonly ToolConfig[]) {
    configs.forEach((c, i) => {
      const tool = toTool(c, `tools.${i}`)
      if (this.#tools.has(tool.name)) throw new ConfigError(`tools.${i}.name`, `duplicate tool name ${tool.name}`)
      this.#tools.set(tool.name, tool)
    })
  }

  /** The tool, or throws ToolNotFound (404). */
  get (name: unknown): Tool {
    const tool = typeof name === 'string' ? this.#tools.get(name) : undefined
    if (tool === undefined) throw new ToolNotFound(typeof name === 'string' ? name : '')
    return tool
  }

  get size (): number {
    return this.#tools.size
  }

  [Symbol.iterator] (): IterableIterator<Tool> {
    return this.#tools.values()
  }
}

// config.ts has already checked the scheme, credentials and query; these asserts keep the
// registry safe when it is built from anything else (tests, embedding).
function toTool (c: ToolConfig, key: string): Tool {
  const url = parseToolUrl(c.url, `${key}.url`)
  let auth: ToolAuth
  if (c.auth === undefined || c.auth === 'token') auth = { kind: 'token' }
  else if (c.auth === 'none') auth = { kind: 'none' }
  else {
    if (c.auth.value === undefined || c.auth.value === '') throw new ConfigError(`${key}.auth.valueEnv`, `environment variable ${c.auth.valueEnv} is not set`)
    const header = c.auth.header.toLowerCase()
    if (['host', 'connection', 'content-length', 'transfer-encoding', 'upgrade'].includes(header) || header.startsWith('x-forwarded-')) {
      throw new ConfigError(`${key}.auth.header`, `${c.auth.header} cannot carry a credential`)
    }
    auth = { kind: 'header', header, value: c.auth.value }
  }
  const maxPayload = c.maxPayload ?? DEFAULT_MAX_PAYLOAD
  if (!Number.isSafeInteger(maxPayload) || maxPayload < 1) throw new ConfigError(`${key}.maxPayload`, 'must be a positive number of bytes')
  return {
    name: c.name,
    url,
    origin: url.origin,
    basePath: url.pathname.replace(/\/+$/, ''),
    audience: c.audience,
    scopes: [...c.scopes],
    cost: c.cost,
    price: c.costExpr === undefined ? undefined : compileCost(c.costExpr, `${key}.costExpr`),
    settle: c.settle ?? false,
    timeoutMs: Math.max(1, Math.round(c.timeout * 1000)),
    auth,
    refundOnFailure: c.refundOnFailure,
    websocket: c.websocket,
    maxPayload,
    protocol: c.protocol ?? 'http',
    mcpTools: new Map(Object.entries(c.mcpTools ?? {}).map(([name, rule]) => [name, {
      scopes: [...(rule.scopes ?? [])],
      cost: rule.cost ?? 1,
      price: rule.costExpr === undefined ? undefined : compileCost(rule.costExpr, `${key}.mcpTools.${name}.costExpr`)
    }]))
  }
}
