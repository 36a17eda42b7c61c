import { spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { tempDir } from './helper.js'

const script = new URL('../scripts/check-deps.mjs', import.meta.url).pathname

t.test('the resolved dependency tree has no version below its advisory floor', async t => {
  const run = spawnSync(process.execPath, [script], { encoding: 'utf8' })
  t.equal(run.status, 0, run.stderr)
})

t.test('the check fails on a vulnerable resolution (so it can fail)', async t => {
  const dir = tempDir(t)
  const lock = join(dir, 'package-lock.json')
  writeFileSync(lock, JSON.stringify({
    packages: {
      '': { name: 'x' },
      'node_modules/fastify': { version: '5.7.2' },
      'node_modules/@fastify/jwt/node_modules/fast-jwt': { version: '5.0.6' },
      'node_modules/@fastify/reply-from': { version: '12.6.5' }
    }
  }))
  const run = spawnSync(process.execPath, [script, lock], { encoding: 'utf8' })
  t.equal(run.status, 1)
  t.match(run.stderr, /fastify@5\.7\.2 is below 5\.8\.3/)
  t.match(run.stderr, /fast-jwt@5\.0\.6 is below 6\.3\.4/)
  t.notMatch(run.stderr, /reply-from/)
})
