// POST /call authorizes the body as parsed and forwards its exact bytes: a body that parsers can
// read two ways (a repeated member name, an escaped prototype key) is refused with 400 before
// anything is authorized, charged or forwarded. Real gateway and upstream over HTTP.
import fc from 'fast-check'
import t from 'tap'
import { duplicateKey } from '../src/json/duplicate-keys.js'
import { startApp } from './call-helper.js'
import { startUpstream } from './support/upstream.js'
import { issue } from './helper.js'

t.test('duplicateKey finds a repeated name at any depth, after unescaping, and nothing else', async t => {
  t.equal(duplicateKey('{"tool":"a","tool":"b"}'), 'tool')
  t.equal(duplicateKey('{"tool":"a","t\\u006fol":"b"}'), 'tool', 'an escaped spelling of the same name')
  t.equal(duplicateKey('{"tool":"a","arguments":{"x":1,"y":{"z":2,"z":3}}}'), 'z', 'nested')
  t.equal(duplicateKey('{"a":"}{\\"a\\":1,","b":[{"a":1},{"a":2}]}'), undefined, 'braces and quotes inside strings; objects in an array are separate')
  t.equal(duplicateKey('{"a":"}{\\"a\\":1,","a":2}'), 'a')
  t.equal(duplicateKey('[{"k":1,"k":2}]'), 'k', 'inside an array')
  t.equal(duplicateKey('{"a":{"a":{"a":1}}}'), undefined, 'the same name at different depths')
  t.equal(duplicateKey('{"\\\\":1,"\\"":2,"\\\\\\"":3}'), undefined, 'escaped backslashes and quotes end strings right')
  t.equal(duplicateKey('{"\\\\":1,"\\u005c":2}'), '\\')
  // Any text JSON.stringify makes has unique names: never reported.
  fc.assert(fc.property(fc.jsonValue(), v => duplicateKey(JSON.stringify(v)) === undefined), { numRuns: 300 })
  // A name repeated in any generated object is found.
  fc.assert(fc.property(fc.dictionary(fc.string(), fc.jsonValue(), { minKeys: 1 }), fc.jsonValue(), (obj, value) => {
    const name = Object.keys(obj)[0] as string
    const text = JSON.stringify(obj).slice(0, -1) + ',' + JSON.stringify(name) + ':' + JSON.stringify(value) + '}'
    return duplicateKey(text) === name
  }), { numRuns: 300 })
})

t.test('POST /call: a repeated or prototype member name is 400, nothing forwarded or charged', async t => {
  const up = await startUpstream(t)
  const { app, base } = await startApp(t, up, [{ name: 'chat' }, { name: 'search' }])
  const token = (await issue(app)).access_token as string
  const post = async (body: string): Promise<{ status: number, json: any }> => {
    const res = await fetch(`${base}/call`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body })
    return { status: res.status, json: await res.json() }
  }
  const ok = await post('{"tool":"chat"}')
  t.equal(ok.status, 200, 'control: a plain body is forwarded')
  t.equal(up.seen.length, 1)
  for (const body of [
    '{"tool":"chat","tool":"search"}',
    '{"tool":"chat","t\\u006fol":"search"}',
    '{"tool":"chat","arguments":{"n":1,"n":2}}',
    '{"tool":"chat","\\u005f_proto__":{"x":1}}',
    '{"tool":"chat","constructor":{"prototype":{"x":1}}}'
  ]) {
    const res = await post(body)
    t.equal(res.status, 400, body)
    t.equal(res.json.code, 'invalid_request', body)
  }
  t.equal(up.seen.length, 1, 'nothing reached the tool')
  const quota = await app.inject({ method: 'GET', url: '/quota', headers: { authorization: `Bearer ${token}` } })
  t.equal(quota.json().used, 1, 'only the control call was charged')
})
