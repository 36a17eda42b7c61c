// Pricing (CONTRACT §10 "Cost"): what one call costs, from a tool's fixed `cost` or its `costExpr`,
// a CEL expression (@marcbachmann/cel-js; docs/architecture.md says why this library) compiled once
// at config load and evaluated per call. Owns the expression's variables, its bounds and the check
// of its result; never charges anything (src/pipeline/meter.ts does) and knows nothing about HTTP.
//
// Bounded cost. CEL has no loops, but the caller controls the inputs, so an expression is refused at
// load unless its evaluation stays linear in the size of the request:
// - at most MAX_EXPR_LENGTH characters and the parser's structural limits below (AST nodes, depth,
//   literal sizes), and it must type-check against the declared variables with a numeric result;
// - no comprehension macro (all, exists, exists_one, map, filter) inside another one, and no `args`
//   inside a macro's body (so `x in args.list` cannot turn one pass into a square);
// - no `matches`: the library runs it on JavaScript's backtracking RegExp, not RE2, and the caller
//   controls the string.
// The inputs are bounded by server.bodyLimit (the body) and the token size (scopes, sub). Each AST
// node is then evaluated at most once per element of the one list a macro walks.
import { Environment, type ASTNode, type ParseResult } from '@marcbachmann/cel-js'
import { TollgateError } from '../errors.js'
import { principalOf, type RequestContext } from '../pipeline/context.js'

/** The largest price a call may have (CONTRACT §10). */
export const MAX_COST = 1_000_000_000
/** The longest `costExpr`, in characters. */
export const MAX_EXPR_LENGTH = 1024

const LIMITS = { maxAstNodes: 256, maxDepth: 24, maxListElements: 64, maxMapEntries: 64, maxCallArguments: 8 }
const MACROS = new Set(['all', 'exists', 'exists_one', 'map', 'filter'])
const REFUSED_FUNCTIONS = new Set(['matches'])
const NUMERIC = new Set(['int', 'uint', 'double', 'dyn'])

/** The variables of a `costExpr`, as CONTRACT §10 names them. */
export interface PriceInput {
  /** POST /call: `arguments`; a pass-through: the JSON body, else {}; MCP: the tools/call `params.arguments`. */
  args: unknown
  /** Request body length in bytes. */
  size: number
  method: string
  /** The rest of the path (pass-through), '' otherwise. */
  path: string
  sub: string
  client_id: string
  scopes: readonly string[]
}

/** Prices one call: an integer in [0, MAX_COST], or throws CostUnavailable (400 cost_unavailable). */
export type Pricer = (input: PriceInput) => number

export class CostUnavailable extends TollgateError {
  constructor (detail = 'the call\'s price could not be computed') { super('cost_unavailable', 400, detail) }
}

const env = new Environment({ limits: LIMITS })
  .registerVariable('args', 'dyn')
  .registerVariable('size', 'int')
  .registerVariable('method', 'string')
  .registerVariable('path', 'string')
  .registerVariable('sub', 'string')
  .registerVariable('client_id', 'string')
  .registerVariable('scopes', 'list<string>')

/** What the call route knows of a call besides the principal: its `args`, body size, method and rest of the path. */
export interface CallFacts {
  args: unknown
  size: number
  method: string
  path: string
}

/**
 * The price of one call, for the meter stage: `cost` when the tool has no `costExpr` (nothing is
 * evaluated), else the expression over the call and the context's principal. Throws CostUnavailable.
 */
export function priceCall (price: Pricer | undefined, cost: number, ctx: RequestContext, call: CallFacts): number {
  if (price === undefined) return cost
  const principal = principalOf(ctx)
  return price({ ...call, sub: principal.sub, client_id: principal.clientId, scopes: [...principal.scopes] })
}

/**
 * Compiles a `costExpr` once. Throws an Error whose message says what is wrong (the caller names the
 * config key): syntax, types, a non-numeric result, or anything outside the bounds above.
 */
export function compileCostExpr (source: string): Pricer {
  if (source.length > MAX_EXPR_LENGTH) throw new Error(`is longer than ${MAX_EXPR_LENGTH} characters`)
  let program: ParseResult
  try {
    program = env.parse(source)
  } catch (err) {
    throw new Error(`does not compile: ${firstLine(err)}`)
  }
  const checked = program.check()
  if (!checked.valid) throw new Error(`does not compile: ${firstLine(checked.error)}`)
  if (checked.type === undefined || !NUMERIC.has(checked.type)) throw new Error(`must give a number (int, uint or double), not ${checked.type ?? 'nothing'}`)
  bounded(program.ast, 0, false)
  return (input) => {
    let value: unknown
    try {
      value = program({
        args: input.args,
        size: BigInt(input.size),
        method: input.method,
        path: input.path,
        sub: input.sub,
        client_id: input.client_id,
        scopes: input.scopes
      })
    } catch (err) {
      throw new CostUnavailable(`costExpr failed: ${firstLine(err).slice(0, 200)}`)
    }
    const cost = toCost(value)
    if (cost === undefined) throw new CostUnavailable(`costExpr gave ${describe(value)}, not an integer from 0 to ${MAX_COST}`)
    return cost
  }
}

/** Walks the AST: refuses nested macros, `args` inside a macro's body, and refused functions. */
function bounded (node: unknown, macroDepth: number, inMacroBody: boolean): void {
  if (Array.isArray(node)) {
    for (const n of node) bounded(n, macroDepth, inMacroBody)
    return
  }
  if (typeof node !== 'object' || node === null || !('op' in node)) return
  const { op, args } = node as ASTNode & { op: string, args: unknown }
  if (op === 'id' && args === 'args' && inMacroBody) throw new Error('must not read args inside a macro (all, exists, exists_one, map, filter): its cost would grow with the square of the input')
  if ((op === 'rcall' || op === 'call') && Array.isArray(args)) {
    const name = args[0]
    if (typeof name === 'string' && REFUSED_FUNCTIONS.has(name)) throw new Error(`must not call ${name}()`)
    if (op === 'rcall' && typeof name === 'string' && MACROS.has(name)) {
      if (macroDepth >= 1) throw new Error(`must not nest macros (${name} inside another): its cost would grow with the square of the input`)
      bounded(args[1], macroDepth, inMacroBody)
      bounded(args[2], macroDepth + 1, true)
      return
    }
  }
  bounded(args, macroDepth, inMacroBody)
}

/** An int, a uint or an integral double in [0, MAX_COST]; undefined for anything else. */
function toCost (value: unknown): number | undefined {
  if (typeof value === 'bigint') return value >= 0n && value <= BigInt(MAX_COST) ? Number(value) : undefined
  if (typeof value === 'number') return Number.isInteger(value) && value >= 0 && value <= MAX_COST ? value : undefined
  // A uint is a wrapper object around a bigint (JSON input never holds a bigint, so a map from
  // `args` with a `value` member cannot pass for one).
  if (typeof value === 'object' && value !== null && typeof (value as { value?: unknown }).value === 'bigint') return toCost((value as { value: bigint }).value)
  return undefined
}

function describe (value: unknown): string {
  if (typeof value === 'bigint' || typeof value === 'number') return String(value)
  if (typeof value === 'object' && value !== null && 'value' in value) return String((value as { value: unknown }).value)
  return `a ${value === null ? 'null' : typeof value}`
}

function firstLine (err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0] ?? ''
}
