// Loads TypeScript in test processes (.taprc `node-arg`): registers ts-hooks.mjs, which strips the
// types of each .ts file with SWC as Node loads it. Type-checking is `npm run typecheck`, not this.
//
// Where Node has module.registerHooks() (22.15 and later: Node 24 in CI), the hooks run
// synchronously on the loading thread. On Node 20 they run on a hooks thread (module.register), as
// do tap's own (@tapjs/processinfo, registered before this file, and on Node before 24.13 also where
// registerHooks exists): each imported ES module crosses to that thread and back twice (resolve,
// then load), ~1.5 ms of CPU a file. The ES-module packages the app and tap load are about 1,100
// files (typebox alone 677, tap ~150), none of them TypeScript, so they are loaded first with
// require(), which takes no asynchronous hook (./preload.mjs has the figures); where no hook runs
// on a thread, loading them first changes nothing.
import * as module from 'node:module'
import { fileURLToPath } from 'node:url'

await import('./preload.mjs')
// tap's ES-module build, the one `import t from 'tap'` resolves (require('tap') would pick its
// CommonJS build: a second tap).
module.createRequire(import.meta.url)(fileURLToPath(import.meta.resolve('tap')))

if (typeof module.registerHooks === 'function') {
  const { resolveSync, loadSync } = await import('./ts-hooks.mjs')
  module.registerHooks({ resolve: resolveSync, load: loadSync })
} else {
  module.register('./ts-hooks.mjs', import.meta.url)
}
