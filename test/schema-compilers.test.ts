// src/schemas/compilers.ts: Fastify's own compilers, pooled for the process so that a second app
// does not compile every route schema again. Checked against Fastify's defaults (a fresh pair per
// instance) on the same routes, and for the pooling itself.
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import { Type } from 'typebox'
import { sharedCompilers } from '../src/schemas/compilers.js'
import { build, issue } from './helper.js'

const Shared = Type.Object({ code: Type.String() }, { $id: 'Shared' })
const Body = Type.Object({ name: Type.String({ minLength: 2 }), n: Type.Optional(Type.Integer({ minimum: 0 })) }, { additionalProperties: false })
const Answer = Type.Object({ name: Type.String(), n: Type.Integer(), shared: Type.Ref('Shared') })

/** The same routes and options as an app, with Fastify's default compilers or the shared ones. */
async function sample (shared: boolean): Promise<FastifyInstance> {
  const app = Fastify({
    ajv: { customOptions: { coerceTypes: false, removeAdditional: true } },
    ...(shared ? { schemaController: sharedCompilers } : {})
  })
  app.addSchema(Shared)
  app.post('/echo', { schema: { body: Body, response: { 200: Answer } } }, async request => {
    const body = request.body as { name: string, n?: number }
    // Fields the response schema does not name are dropped by the serializer.
    return { name: body.name, n: body.n ?? 0, shared: { code: 'x', secret: 'never sent' }, extra: true }
  })
  await app.ready()
  t.teardown(() => app.close())
  return app
}

t.test('the shared compilers answer exactly as Fastify\'s own, for valid and refused bodies', async t => {
  const [own, shared] = await Promise.all([sample(false), sample(true)])
  const bodies = [
    { name: 'ab', n: 3 },
    { name: 'ab' },
    { name: 'ab', n: 3, unknown: 'removed' }, // additionalProperties false + removeAdditional: removed, not refused
    { name: 'a' },
    { name: 'ab', n: -1 },
    { name: 'ab', n: '3' }, // no coercion
    { n: 1 },
    []
  ]
  for (const payload of bodies) {
    const [a, b] = await Promise.all([own, shared].map(app => app.inject({ method: 'POST', url: '/echo', payload })))
    t.equal(b?.statusCode, a?.statusCode, `status for ${JSON.stringify(payload)}`)
    t.equal(b?.body, a?.body, `body for ${JSON.stringify(payload)}`)
  }
  // Positive control: the cases above are not all alike.
  const statuses = new Set(await Promise.all(bodies.map(async payload => (await shared.inject({ method: 'POST', url: '/echo', payload })).statusCode)))
  t.same([...statuses].sort(), [200, 400])
  const ok = await shared.inject({ method: 'POST', url: '/echo', payload: { name: 'ab', n: 3, unknown: 1 } })
  t.same(ok.json(), { name: 'ab', n: 3, shared: { code: 'x' } })
})

t.test('one compiled serializer per schema text and shared schemas; a different set compiles its own', async t => {
  const { buildSerializer } = sharedCompilers.compilersFactory
  const externals = { Shared }
  const first = buildSerializer(externals, {})
  const again = buildSerializer({ Shared }, {})
  t.equal(again, first, 'equal shared schemas and options: the same pool')
  const route = { schema: Answer, method: 'POST', url: '/a', httpStatus: '200' }
  const serialize = first(route)
  t.equal(first({ ...route, url: '/b' }), serialize, 'the same schema object: compiled once')
  t.equal(first({ ...route, schema: structuredClone(Answer) }), serialize, 'another object with the same content (as each app builds its own): compiled once')
  t.equal(serialize({ name: 'n', n: 1, shared: { code: 'c' }, more: 1 }), '{"name":"n","n":1,"shared":{"code":"c"}}')
  const other = buildSerializer({ Shared: { ...Shared, properties: { code: Type.Integer() } } }, {})
  t.not(other, first, 'other shared schemas: another pool')
  t.equal(other(route)({ name: 'n', n: 1, shared: { code: 7 } }), '{"name":"n","n":1,"shared":{"code":7}}')
  const narrower = first({ ...route, schema: Type.Object({ name: Type.String() }) })
  t.not(narrower, serialize, 'another schema: compiled for itself')
  t.equal(narrower({ name: 'n', n: 1 }), '{"name":"n"}')
})

t.test('one compiled validator per schema text; the same text in another object is the same validator', async t => {
  const { buildValidator } = sharedCompilers.compilersFactory
  const options = { customOptions: { coerceTypes: false, removeAdditional: true } }
  const compile = buildValidator({ Shared }, options)
  t.equal(buildValidator({ Shared }, { customOptions: { coerceTypes: false, removeAdditional: true } }), compile, 'equal shared schemas and options: the same pool')
  const validate = compile({ schema: Body, method: 'POST', url: '/a', httpPart: 'body' })
  t.equal(compile({ schema: structuredClone(Body), method: 'PUT', url: '/b', httpPart: 'body' }), validate, 'the same content in another object: compiled once')
  t.equal(validate({ name: 'ab', n: 1 }), true)
  t.equal(validate({ name: 'a' }), false, 'minLength holds')
  const stricter = compile({ schema: Type.Object({ name: Type.String({ minLength: 3 }) }), method: 'POST', url: '/a', httpPart: 'body' })
  t.not(stricter, validate, 'a schema that differs only in a limit: compiled for itself')
  t.equal(stricter({ name: 'ab' }), false)
  t.equal(validate({ name: 'ab' }), true, 'and the first still answers by its own limit')
  const coercing = buildValidator({ Shared }, { customOptions: { coerceTypes: true } })
  t.not(coercing, compile, 'other options: another pool')
  t.equal(coercing({ schema: Type.Object({ n: Type.Integer() }), httpPart: 'querystring' })({ n: '3' }), true, 'that pool coerces')
})

t.test('a second Tollgate app in the process compiles less than the first, and answers alike', async t => {
  const cpu = async (): Promise<number> => {
    const start = process.cpuUsage()
    const app = await build(t)
    await app.ready()
    const used = process.cpuUsage(start)
    return used.user + used.system
  }
  // Not a timing assertion: printed for the record (machines here are shared and noisy).
  const [first, second] = [await cpu(), await cpu()]
  t.comment(`CPU to build and ready an app: first ${Math.round(first / 1000)} ms, second ${Math.round(second / 1000)} ms`)
  const a = await build(t)
  const b = await build(t)
  for (const app of [a, b]) {
    // A serialized answer (the token response schema) and a validated query string.
    const token = await issue(app)
    t.same(Object.keys(token).sort(), ['access_token', 'expires_in', 'refresh_token', 'scope', 'token_type'])
    const res = await app.inject({ method: 'GET', url: '/validate?charge=x', headers: { authorization: `Bearer ${token.access_token}` } })
    t.equal(res.statusCode, 400, 'a malformed charge is refused')
  }
})
