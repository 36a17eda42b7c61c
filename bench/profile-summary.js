// Summarises a V8 .cpuprofile (from `node bench/run.js --profile`): self time by function and by
// file or package, and inclusive time of Tollgate's own functions (dist/), as shares of all samples.
//   node bench/profile-summary.js FILE.cpuprofile [--top 25]
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'

const { values, positionals } = parseArgs({ options: { top: { type: 'string', default: '25' } }, allowPositionals: true })
const file = positionals[0]
if (file === undefined) {
  console.error('usage: node bench/profile-summary.js FILE.cpuprofile [--top N]')
  process.exit(2)
}
const TOP = Number(values.top)
const profile = JSON.parse(readFileSync(file, 'utf8'))

const byId = new Map(profile.nodes.map(n => [n.id, n]))
const parent = new Map()
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)

function where (url) {
  if (url === '') return '(native/V8)'
  const nm = url.lastIndexOf('/node_modules/')
  if (nm !== -1) {
    const rest = url.slice(nm + '/node_modules/'.length).split('/')
    return rest[0].startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]
  }
  const dist = url.indexOf('/dist/')
  if (dist !== -1) return `tollgate ${url.slice(dist + 1)}`
  if (url.startsWith('node:')) return url
  return url.replace(/^file:\/\//, '')
}

function frameKey (node) {
  const f = node.callFrame
  return `${f.functionName || '(anonymous)'}  ${where(f.url)}:${f.lineNumber + 1}`
}

const self = new Map()
const selfByPlace = new Map()
const inclusiveTollgate = new Map()
let total = 0
let idle = 0
profile.samples.forEach((id, i) => {
  const dt = profile.timeDeltas[i] ?? 0
  const node = byId.get(id)
  total += dt
  const name = node.callFrame.functionName
  if (name === '(idle)' || name === '(program)' || name === '(garbage collector)') {
    if (name === '(idle)') idle += dt
  }
  const key = frameKey(node)
  self.set(key, (self.get(key) ?? 0) + dt)
  const place = name === '(garbage collector)' ? '(garbage collector)' : name === '(idle)' ? '(idle)' : where(node.callFrame.url)
  selfByPlace.set(place, (selfByPlace.get(place) ?? 0) + dt)
  // Inclusive time of Tollgate's own frames: each distinct frame on the stack counts once.
  const seen = new Set()
  for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
    const n = byId.get(cur)
    if (!n.callFrame.url.includes('/dist/')) continue
    const k = frameKey(n)
    if (seen.has(k)) continue
    seen.add(k)
    inclusiveTollgate.set(k, (inclusiveTollgate.get(k) ?? 0) + dt)
  }
})

const busy = total - idle
const pct = x => `${(100 * x / busy).toFixed(1).padStart(5)}%`
const top = (map, n) => [...map].sort((a, b) => b[1] - a[1]).slice(0, n)

console.log(`${file}\nsampled ${(total / 1e6).toFixed(1)} s, busy ${(busy / 1e6).toFixed(1)} s (shares below are of busy time)\n`)
console.log('self time by file or package:')
for (const [k, v] of top(selfByPlace, TOP)) if (k !== '(idle)') console.log(`  ${pct(v)}  ${k}`)
console.log('\nself time by function:')
for (const [k, v] of top(self, TOP)) if (!k.startsWith('(idle)')) console.log(`  ${pct(v)}  ${k}`)
console.log('\ninclusive time of Tollgate functions (dist/):')
for (const [k, v] of top(inclusiveTollgate, TOP)) console.log(`  ${pct(v)}  ${k}`)
