// Fastify's own schema compilers (@fastify/ajv-compiler for validation, @fastify/fast-json-stringify-
// compiler for responses), shared by every app this process builds. Fastify makes a new pair per
// instance, so each instance compiled every route schema again: about half of building an app
// (measured: 170–320 ms of CPU per build, ajv and fast-json-stringify 52 % of it), paid by every
// test that builds one (hundreds per run) and by nothing in production, which builds one app.
// What is shared is what the libraries themselves pool within one instance: a compiler per set of
// shared schemas and options (@fastify/ajv-compiler's own pool key), and under it each compiled
// function per schema object (Ajv keeps compiled schemas by object; serializers are kept here the
// same way, in a WeakMap). Inputs are immutable: the same schema, shared schemas and options give
// the same function, so an app sees exactly what its own compilers would have built.
import AjvCompiler from '@fastify/ajv-compiler'
import { SerializerSelector, type SerializerCompiler, type SerializerFactory, type Serializer } from '@fastify/fast-json-stringify-compiler'

const buildValidator = AjvCompiler()

const selectSerializer = SerializerSelector()
/** Shared schemas and options (JSON) → the compiler for them, keeping each serializer by schema object. */
const serializerPools = new Map<string, SerializerCompiler>()

const buildSerializer: SerializerFactory = (externalSchemas, options) => {
  const key = JSON.stringify(externalSchemas) + JSON.stringify(options)
  let pool = serializerPools.get(key)
  if (pool === undefined) {
    const compile = selectSerializer(externalSchemas, options)
    const compiled = new WeakMap<object, Serializer>()
    pool = route => {
      const schema = route.schema
      if (typeof schema !== 'object' || schema === null) return compile(route)
      let serializer = compiled.get(schema)
      if (serializer === undefined) {
        serializer = compile(route)
        compiled.set(schema, serializer)
      }
      return serializer
    }
    serializerPools.set(key, pool)
  }
  return pool
}

/** Fastify's `schemaController` option: its default compilers, pooled for the process. */
export const sharedCompilers = { compilersFactory: { buildValidator, buildSerializer } }
