// The access line is built by hand (src/plugins/access-log.ts) instead of by pino's `info()`, for
// speed: it must be the line pino itself writes for the same fields, character for character.
import fc from 'fast-check'
import pino from 'pino'
import t from 'tap'
import { accessLine, accessLineHead, type AccessFields } from '../src/plugins/access-log.js'

/** The line pino writes for `fields` at info, with this pid, hostname and time. */
function pinoLine (fields: AccessFields, pid: number, host: string, time: number): string {
  let out = ''
  // pino writes synchronously into the destination's write(): the line is there on return.
  const logger = pino({ base: { pid, hostname: host }, timestamp: () => `,"time":${time}` }, { write: (s: string) => { out += s } } as unknown as pino.DestinationStream)
  logger.info(fields, 'request')
  return out
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/

const text = fc.string({ unit: 'binary', maxLength: 120 })
const fields: fc.Arbitrary<AccessFields> = fc.record({
  reqId: text,
  method: fc.constantFrom('GET', 'POST', 'HEAD', 'DELETE'),
  path: text,
  status: fc.integer({ min: 100, max: 599 }),
  // What Fastify measures, and what JSON has no number for (pino writes null).
  ms: fc.oneof(fc.double({ min: 0, max: 1e6, noNaN: true }).map(ms => Math.round(ms * 100) / 100), fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY)),
  ip: fc.oneof(fc.ipV4(), fc.ipV6()),
  sub: fc.option(text, { nil: undefined }),
  client_id: fc.option(text, { nil: undefined }),
  tool: fc.option(text, { nil: undefined }),
  charged: fc.option(fc.integer({ min: 0, max: 1_000_000_000 }), { nil: undefined })
})

t.test('the hand-built line is the line pino writes for the same fields', async t => {
  let exact = 0
  fc.assert(fc.property(fields, fc.string({ maxLength: 40 }), fc.integer({ min: 1, max: 4_000_000 }), fc.nat(), (f, host, pid, time) => {
    const ours = accessLine(accessLineHead(pid, host), time, f)
    const theirs = pinoLine(f, pid, host, time)
    // Parsed, always the same object (the keys in the same order).
    const a = JSON.parse(ours) as Record<string, unknown>
    const b = JSON.parse(theirs) as Record<string, unknown>
    if (JSON.stringify(Object.keys(a)) !== JSON.stringify(Object.keys(b))) return false
    if (!Object.keys(a).every(k => Object.is(a[k], b[k]))) return false
    // As text, the same characters, but for a lone surrogate: pino writes it raw (not valid
    // UTF-8 once encoded), JSON.stringify escapes it (\udXXX), which reads back the same.
    const lone = [f.reqId, f.path, f.sub, f.client_id, f.tool, host].some(s => s !== undefined && LONE_SURROGATE.test(s))
    if (!lone) {
      exact++
      if (ours !== theirs) return false
    }
    return ours.endsWith('\n') && ours.indexOf('\n') === ours.length - 1
  }), { numRuns: 2000 })
  t.ok(exact > 500, `compared character for character in ${exact} of 2000 cases`)
})

t.test('fields that are not known are left out, as pino leaves out undefined', async t => {
  const head = accessLineHead(42, 'gw-1')
  const line = accessLine(head, 1700000000000, { reqId: 'r-1', method: 'GET', path: '/health', status: 200, ms: 0.25, ip: '127.0.0.1', sub: undefined, client_id: undefined, tool: undefined, charged: undefined })
  t.equal(line, '{"level":30,"time":1700000000000,"pid":42,"hostname":"gw-1","reqId":"r-1","method":"GET","path":"/health","status":200,"ms":0.25,"ip":"127.0.0.1","msg":"request"}\n')
  t.equal(line, pinoLine({ reqId: 'r-1', method: 'GET', path: '/health', status: 200, ms: 0.25, ip: '127.0.0.1', sub: undefined, client_id: undefined, tool: undefined, charged: undefined }, 42, 'gw-1', 1700000000000))
  const quoted = accessLine(head, 1, { reqId: 'r-2', method: 'POST', path: '/call/"x"\\\n', status: 502, ms: 1, ip: '::1', sub: 'a"b', client_id: 'c\u0000', tool: 'é', charged: 3 })
  t.same(JSON.parse(quoted), { level: 30, time: 1, pid: 42, hostname: 'gw-1', reqId: 'r-2', method: 'POST', path: '/call/"x"\\\n', status: 502, ms: 1, ip: '::1', sub: 'a"b', client_id: 'c\u0000', tool: 'é', charged: 3, msg: 'request' }, 'quotes, backslashes and control characters are escaped')
})
