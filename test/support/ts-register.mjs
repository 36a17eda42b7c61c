// Loads TypeScript in test processes (.taprc `node-arg`): registers ts-hooks.mjs, which strips the
// types of each .ts file with SWC as Node loads it. Type-checking is `npm run typecheck`, not this.
//
// Hooks registered with module.register() run on their own thread, and every ES module imported
// after them crosses to that thread and back, twice (resolve, then load). The app's ES-module
// packages are about 750 files (typebox alone 679: `typebox/value` pulls in most of the package),
// none of them TypeScript, so they are imported first, before the hooks exist, and later imports
// find them loaded. Measured on Node 20 (`/usr/bin/time node --import=<this> test/smoke.test.ts`,
// three runs each, user + system): 3.31–3.52 CPU-s per test process with the hooks first, 2.73–2.90
// with this (both with the tracing SDK loaded only when tracing is on, src/tracing.ts).
//
// Where Node has module.registerHooks() (22.15 and later: Node 24 in CI), the same hooks run
// synchronously on the loading thread, nothing crosses threads and nothing is loaded ahead.
import * as module from 'node:module'

if (typeof module.registerHooks === 'function') {
  const { resolveSync, loadSync } = await import('./ts-hooks.mjs')
  module.registerHooks({ resolve: resolveSync, load: loadSync })
} else {
  await Promise.all([import('typebox'), import('typebox/value'), import('jose'), import('@marcbachmann/cel-js'), import('ws')])
  module.register('./ts-hooks.mjs', import.meta.url)
}
