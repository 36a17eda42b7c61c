// Builds tap's test class with the plugins .taprc configures, unless it is built with them already.
// tap does this itself on its first run after an install, but that run still starts every test
// process with the default set's module loaders (@tapjs/typescript's ts-node and @tapjs/mock's hooks,
// which .taprc turns off): measured on a clean clone on Node 20, tap took 316 s on that first run and
// ~225 s on the next. `npm test` and `npm run test:unit` run this first; it takes ~0.4 s when nothing
// is to be done and ~10 s (`tap build`) once after `npm ci`.
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { TapConfig } from '@tapjs/config'
import { signature } from '@tapjs/test'

const config = await TapConfig.load()
if (config.pluginSignature !== signature) {
  console.log('tap: building its test class with the configured plugins (tap build)')
  const tap = fileURLToPath(new URL('dist/esm/run.mjs', import.meta.resolve('tap/package.json')))
  const result = spawnSync(process.execPath, [tap, 'build'], { stdio: 'inherit' })
  if (result.status !== 0) process.exit(result.status ?? 1)
}
