// What one access-log line costs the event loop, in process, three ways side by side: pino's
// `info()` into pino's asynchronous destination with its own 4 KiB `minLength` (the access log
// before 2026-12-01), pino's `info()` into Tollgate's LineBatch (src/log-destination.ts), and the
// hand-built line (src/plugins/access-log.ts) into the LineBatch (today). Lines go to /dev/null (or
// FILE), 1,000 per turn of the event loop, so the asynchronous writes complete as they would in a
// server; each way runs three times, alternating, and the median is printed.
//   npm run build && node bench/log-line.js [FILE]
import { openSync } from 'node:fs'
import { hostname } from 'node:os'
import pino from 'pino'
import { LineBatch } from '../dist/log-destination.js'
import { accessLine, accessLineHead } from '../dist/plugins/access-log.js'

const N = 200_000
const fd = openSync(process.argv[2] ?? '/dev/null', 'w')
const fields = { reqId: '0b8f3c52-5d1e-4c4e-9a53-0c2b7f1e9d41', method: 'GET', path: '/validate', status: 200, ms: 0.12, ip: '127.0.0.1', sub: 'bench', client_id: 'bench', tool: undefined, charged: undefined }
const base = { pid: process.pid, hostname: hostname() }
const head = accessLineHead(process.pid, hostname())

const ways = {
  'pino info(), SonicBoom minLength 4 KiB': () => {
    const log = pino({ base }, pino.destination({ dest: fd, sync: false, minLength: 4096 }))
    return () => { log.info(fields, 'request') }
  },
  'pino info(), LineBatch': () => {
    const log = pino({ base }, new LineBatch(pino.destination({ dest: fd, sync: false }), pino.destination({ dest: fd, sync: true })))
    return () => { log.info(fields, 'request') }
  },
  'hand-built line, LineBatch (Tollgate)': () => {
    const batch = new LineBatch(pino.destination({ dest: fd, sync: false }), pino.destination({ dest: fd, sync: true }))
    return () => { batch.write(accessLine(head, Date.now(), fields)) }
  }
}

async function run (make) {
  const line = make()
  let i = 0
  const start = process.cpuUsage()
  await new Promise(resolve => {
    const turn = () => {
      for (let k = 0; k < 1000; k++, i++) line()
      if (i < N) setImmediate(turn)
      else resolve()
    }
    turn()
  })
  const used = process.cpuUsage(start)
  return (used.user + used.system) / N
}

const results = Object.fromEntries(Object.keys(ways).map(k => [k, []]))
for (let round = 0; round < 3; round++) {
  for (const [name, make] of Object.entries(ways)) results[name].push(await run(make))
}
const median = xs => [...xs].sort((a, b) => a - b)[1]
console.log(`CPU µs per access line (median of 3 runs of ${N.toLocaleString('en')} lines), node ${process.version}`)
for (const [name, xs] of Object.entries(results)) console.log(`${name.padEnd(42)} ${median(xs).toFixed(3)}   (${xs.map(x => x.toFixed(3)).join(', ')})`)
