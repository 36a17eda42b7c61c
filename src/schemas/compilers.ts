// Fastify's own schema compilers (@fastify/ajv-compiler for validation, @fastify/fast-json-stringify-
// compiler for responses), shared by every app this process builds. Fastify makes a new pair per
// instance, so each instance compiled every route schema again: about half of building an app
// (measured: 170–320 ms of CPU per build, ajv and fast-json-stringify 52 % of it), paid by every
// test that builds one (hundreds per run) and by nothing in production, which builds one app.
// What is shared is what the libraries themselves pool within one instance: a compiler per set of
// shared schemas and options (@fastify/ajv-compiler's own pool key), and under it each compiled
// function per schema. A schema is known by its JSON text, not by its object: routes build their
// schema objects when they register, so each app brings new objects with the same content, and a
// memo by object compiled them all again (26 % of an app build's CPU, measured with 40 builds in
// one process under --cpu-prof; an app build after the first, 150 → ~50 ms of CPU: 33–108 ms in
// 11 builds, process.cpuUsage). What either library compiles
// from a schema depends on nothing but its JSON content and the pool's shared schemas and options
// (route, method and status only name the route in error messages), so an app sees exactly what its
// own compilers would have built. Tollgate's schemas are JSON (TypeBox 1.x keeps its markers in
// string keys, which the text includes).
import AjvCompiler, { type ValidatorFactory } from '@fastify/ajv-compiler'
import { SerializerSelector, type SerializerFactory } from '@fastify/fast-json-stringify-compiler'

/** `compile` once per distinct schema text; a route whose schema is no object is compiled as is. */
function bySchemaText<R extends { schema?: unknown }, F> (compile: (route: R) => F): (route: R) => F {
  const compiled = new Map<string, F>()
  return route => {
    if (typeof route.schema !== 'object' || route.schema === null) return compile(route)
    const text = JSON.stringify(route.schema)
    let fn = compiled.get(text)
    if (fn === undefined) {
      fn = compile(route)
      compiled.set(text, fn)
    }
    return fn
  }
}

/** Shared schemas and options → `make(...)`'s compiler for them, made once and memoised by schema text. */
function pooled<E, O, R extends { schema?: unknown }, F> (make: (externalSchemas: E, options: O) => (route: R) => F): (externalSchemas: E, options: O) => (route: R) => F {
  const pools = new Map<string, (route: R) => F>()
  return (externalSchemas, options) => {
    const key = JSON.stringify(externalSchemas) + JSON.stringify(options)
    let pool = pools.get(key)
    if (pool === undefined) {
      pool = bySchemaText(make(externalSchemas, options))
      pools.set(key, pool)
    }
    return pool
  }
}

const buildValidator: ValidatorFactory = pooled(AjvCompiler())
const buildSerializer: SerializerFactory = pooled(SerializerSelector())

/** Fastify's `schemaController` option: its default compilers, pooled for the process. */
export const sharedCompilers = { compilersFactory: { buildValidator, buildSerializer } }
