// The tick-object shape (src/tick-shape.ts). In a child Node process with V8's natives syntax, tick
// objects are made and then all dropped before each of several full collections, as a busy start-up
// does; afterwards the inline caches of nextTick's object literal are read from %DebugPrint. With
// the shape pinned they are monomorphic. Without it (the control) they are megamorphic on the V8 this
// project is measured on, which is the state that costs each request about 30 runtime calls; that
// control is asserted there and only reported on other V8 versions, whose collectors may differ.
// Nothing is mocked: real nextTicks, real collections, V8's own feedback.
import { createHook } from 'node:async_hooks'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { closeSync, existsSync, openSync, statSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { tickShapeProblemReproduced } from '../src/tick-shape.js'

// The built module (npm test builds first), so that the child is a plain Node with no loader.
const MODULE = new URL('../dist/tick-shape.js', import.meta.url)
const SOURCE = new URL('../src/tick-shape.ts', import.meta.url)

const SCRIPT = `
const { pinTickObjectShape, tickObjectShapePinned } = await import(${JSON.stringify(MODULE.href)})
if (process.env.PIN === '1') pinTickObjectShape()
console.log('pinned=' + tickObjectShapePinned())
for (let round = 0; round < 8; round++) {
  for (let i = 0; i < 100; i++) process.nextTick(() => {})
  await new Promise((resolve) => setImmediate(resolve))
  globalThis.gc()
}
await new Promise((resolve) => process.nextTick(resolve))
new Function('f', '%DebugPrint(f)')(process.nextTick)
`

interface Feedback { pinned: boolean, states: string[] }

/** The properties of nextTick's tick-object literal, from its source in this Node: async id, trigger
 * id, callback and args on Node 20; Node 22 and 24 add the async context frame. One literal slot each. */
function tickObjectProperties (): string[] {
  const literal = /const tickObject = \{([^}]*)\}/.exec(process.nextTick.toString())
  if (literal === null) throw new Error('no tick-object literal in the source of process.nextTick')
  return (literal[1] as string).split(',').map(p => p.trim()).filter(p => p !== '')
}
const PROPERTIES = tickObjectProperties()

/** The states of nextTick's DefineKeyedOwnPropertyInLiteral slots, one per property of the literal. */
async function literalFeedback (pin: boolean): Promise<Feedback> {
  // %DebugPrint writes through C stdio; Node makes a piped stdout non-blocking, which loses part of
  // it, so the child writes to a file.
  const dir = await mkdtemp(join(tmpdir(), 'tollgate-tick-'))
  const file = join(dir, 'out.txt')
  const fd = openSync(file, 'w')
  try {
    // A plain Node. Through env -i: tap adds its process-info hook (NODE_OPTIONS) to the environment
    // of every child it sees spawned, and under coverage that hook starts V8's precise coverage, in
    // which the literal's caches are megamorphic after the first hundred ticks whatever is pinned (a
    // state of coverage runs, not of a server).
    const child = spawn('/usr/bin/env', ['-i', `PATH=${process.env.PATH ?? '/usr/bin:/bin'}`, `PIN=${pin ? '1' : '0'}`, process.execPath, '--allow-natives-syntax', '--expose-gc', '--input-type=module', '-e', SCRIPT], {
      stdio: ['ignore', fd, 'pipe']
    })
    let err = ''
    child.stderr?.on('data', (c: Buffer) => { err += c.toString() })
    const [code] = await once(child, 'close') as [number | null]
    if (code !== 0) throw new Error(`child exited ${String(code)}: ${err}`)
    const out = await readFile(file, 'utf8')
    const states = [...out.matchAll(/slot #\d+ DefineKeyedOwnPropertyInLiteral (\w+)/g)].map(m => m[1] as string)
    return { pinned: out.includes('pinned=true'), states }
  } finally {
    closeSync(fd)
    await rm(dir, { recursive: true, force: true })
  }
}

t.before(() => {
  if (!existsSync(MODULE) || statSync(MODULE).mtimeMs < statSync(SOURCE).mtimeMs) throw new Error('dist/tick-shape.js is missing or older than its source: run npm run build (npm test does)')
})

t.test('with the shape pinned, tick objects keep one map chain through full collections', async (t) => {
  const fb = await literalFeedback(true)
  t.equal(fb.pinned, true, 'a tick object is held')
  t.same(PROPERTIES.slice(0, 2), ['[async_id_symbol]: asyncId', '[trigger_async_id_symbol]: triggerAsyncId'], 'the literal starts with async id and trigger id')
  t.same(PROPERTIES.slice(-2), ['callback', 'args'], 'and ends with callback and args')
  if (process.versions.v8.startsWith('11.3.')) t.equal(PROPERTIES.length, 4, `V8 ${process.versions.v8} (Node 20): four properties`)
  t.equal(fb.states.length, PROPERTIES.length, `one literal slot per property: ${PROPERTIES.join(', ')}`)
  t.same(fb.states, PROPERTIES.map(() => 'MONOMORPHIC'), 'every slot stays monomorphic')
})

t.test('control: without the pin the same collections make the later slots megamorphic', async (t) => {
  const fb = await literalFeedback(false)
  t.equal(fb.pinned, false)
  t.equal(fb.states.length, PROPERTIES.length)
  if (tickShapeProblemReproduced()) {
    t.same(fb.states.slice(1), PROPERTIES.slice(1).map(() => 'MEGAMORPHIC'), `V8 ${process.versions.v8}: the maps die and the caches go megamorphic (the pin is on for this V8)`)
  } else {
    t.comment(`V8 ${process.versions.v8}: without the pin the slots are ${fb.states.join(', ')}`)
  }
})

t.test('pinning twice holds the first object and makes no second hook', async (t) => {
  const { pinTickObjectShape, tickObjectShapePinned } = await import('../src/tick-shape.js')
  // Each pin that does anything makes exactly one tick object (taken by its own init hook): count
  // the TickObject inits each call makes with a hook of our own, enabled around the call only.
  const ticksMadeBy = (fn: () => void): unknown[] => {
    const made: unknown[] = []
    const watch = createHook({ init (_id, type, _trigger, resource) { if (type === 'TickObject') made.push(resource) } })
    watch.enable()
    try { fn() } finally { watch.disable() }
    return made
  }
  t.equal(tickObjectShapePinned(), false, 'nothing is pinned before the first call')
  const first = ticksMadeBy(pinTickObjectShape)
  t.equal(first.length, 1, 'the first call makes one tick object, the one it holds')
  t.equal(tickObjectShapePinned(), true)
  t.same(ticksMadeBy(pinTickObjectShape), [], 'the second call makes none: no second hook, nothing replaced')
  t.equal(tickObjectShapePinned(), true)
})

t.test('the pin is gated to the V8 versions where the control reproduces', async (t) => {
  t.equal(tickShapeProblemReproduced('11.3.244.8-node.38'), true, 'Node 20')
  t.equal(tickShapeProblemReproduced('13.6.233.17-node.63'), true, 'Node 24')
  t.equal(tickShapeProblemReproduced('12.4.254.21-node.33'), false, 'Node 22: not reproduced here, not pinned')
})
