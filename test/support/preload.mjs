// The ES-module packages a test process or a spawned `tollgate` loads, loaded first with require():
// a required ES module graph is loaded without the asynchronous module hooks of module.register(),
// into the one module cache, so a later `import` of the same package finds every file loaded.
// It matters where tap's hooks (@tapjs/processinfo, in every test process and in every node process
// a test spawns) run on a hooks thread, as on Node 20 (with ./ts-hooks.mjs): each imported file
// costs two round trips to that thread. Where hooks run on the loading thread (Node 24.13 and later)
// it changes nothing but the order in which the same modules load. Measured with tap's arguments on Node 20 (`/usr/bin/time node
// --enable-source-maps --import=<processinfo> --import=./test/support/ts-register.mjs
// test/smoke.test.ts`, three runs): 4.5-5.0 CPU-s per test process with the packages imported, 3.0-3.4
// with this. Each package is resolved as `import` resolves it (the ES-module build, not a CommonJS
// twin), so the module loaded is the one the app imports.
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
for (const name of ['typebox', 'typebox/value', 'jose', '@marcbachmann/cel-js', 'ws']) {
  require(fileURLToPath(import.meta.resolve(name)))
}
