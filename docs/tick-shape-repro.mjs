// Standalone reproduction of the tick-object shape problem (src/tick-shape.ts), for a Node issue.
//   node --allow-natives-syntax --expose-gc docs/tick-shape-repro.mjs        the control
//   node --allow-natives-syntax --expose-gc docs/tick-shape-repro.mjs pin    one tick object held
// Each round queues 100 nextTicks, lets them run, and forces a full collection while none is
// queued. Then %DebugPrint(process.nextTick) shows the feedback of the tick object literal's
// DefineKeyedOwnPropertyInLiteral slots: grep 'DefineKeyedOwnPropertyInLiteral'.
// Seen here: V8 11.3 (Node 20.20) and V8 13.6 (Node 24.x): MONOMORPHIC then MEGAMORPHIC without the
// pin; all MONOMORPHIC with it.
import { createHook } from 'node:async_hooks'
let pinned
if (process.argv[2] === 'pin') {
  const hook = createHook({ init (_id, type, _t, resource) { if (type === 'TickObject' && pinned === undefined) pinned = resource } })
  hook.enable(); process.nextTick(() => {}); hook.disable()
}
for (let round = 0; round < 8; round++) {
  for (let i = 0; i < 100; i++) process.nextTick(() => {})
  await new Promise((resolve) => setImmediate(resolve))
  globalThis.gc()
}
await new Promise((resolve) => process.nextTick(resolve))
new Function('f', '%DebugPrint(f)')(process.nextTick)
