// Keeps the hidden class of Node's tick objects alive for the life of the process.
//
// Every process.nextTick builds `{ [async_id_symbol], [trigger_async_id_symbol], callback, args }`;
// a request through node:http makes about 30 of them (stream ends, resumes, write callbacks). V8
// gives that literal's objects a chain of hidden classes (maps) that only live as long as some tick
// object does: tick objects die young, so a full garbage collection that runs while none is queued
// frees the chain, and the next tick builds a new one. After four such collections the literal's
// inline caches have seen five chains and go megamorphic, and from then on every optimised function
// that inlines nextTick defines the three later properties through a runtime call
// (Runtime_DefineKeyedOwnPropertyInLiteral) instead of storing them in place: about 40,000 extra
// instructions per GET /validate, a third of the process's work. Whether it happens depended on when
// the start-up's collections fell (about half of a large process's starts); bench/instructions.sh
// counts those calls, and test/tick-shape.test.ts reproduces it with forced collections.
//
// Holding one tick object keeps its map, and through the maps' back pointers the whole chain,
// alive, so every later tick object gets the same maps and the caches stay monomorphic. The object is
// taken once, from the public async_hooks init hook, which is enabled for one nextTick only, by the
// CLI before anything else loads (tick-shape-early.ts), and only on the V8 versions where
// test/tick-shape.test.ts reproduces the problem (docs/tick-shape-repro.mjs is the standalone
// reproduction). A program that builds the app itself may call pinTickObjectShape() first thing.
import { createHook } from 'node:async_hooks'

let pinned: object | undefined

/** V8 versions (prefixes) on which the unpinned control goes megamorphic: Node 20.x and Node 24.x. */
export const REPRODUCED_ON_V8 = ['11.3.', '13.6.'] as const

/** Whether this process's V8 is one where the problem was reproduced. */
export function tickShapeProblemReproduced (v8 = process.versions.v8): boolean {
  return REPRODUCED_ON_V8.some(prefix => v8.startsWith(prefix))
}

/** Takes one tick object and holds it for the life of the process (once; later calls do nothing). */
export function pinTickObjectShape (): void {
  if (pinned !== undefined) return
  const hook = createHook({
    init (_asyncId, type, _triggerAsyncId, resource) {
      if (type === 'TickObject' && pinned === undefined) pinned = resource
    }
  })
  hook.enable()
  try {
    process.nextTick(noop)
  } finally {
    hook.disable()
  }
}

/** Whether a tick object is held (for the tests). */
export function tickObjectShapePinned (): boolean {
  return pinned !== undefined
}

function noop (): void {}
