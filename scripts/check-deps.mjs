#!/usr/bin/env node
// Fails when package-lock.json resolves a version of a security-sensitive package below the first
// release without known advisories. Run by the test suite and usable in any pipeline:
//   node scripts/check-deps.mjs [path/to/package-lock.json]
import { readFileSync } from 'node:fs'

export const FLOORS = {
  fastify: '5.8.3', // CVE-2026-25223 (Content-Type tab bypass), CVE-2026-3635 (X-Forwarded-* spoofing), GHSA-mrq3-vjjr-p77c
  'fast-jwt': '6.3.4', // algorithm confusion, empty keys, crit, cache and non-expiring-token advisories
  '@fastify/jwt': '10.2.5',
  '@fastify/reply-from': '12.6.5',
  '@fastify/http-proxy': '11.6.6', // parameterised-prefix advisory
  jose: '6.0.0',
  ws: '8.17.1' // CVE-2024-37890 (header count DoS)
}

function compare (a, b) {
  const pa = a.split(/[.+-]/).slice(0, 3).map(Number)
  const pb = b.split(/[.+-]/).slice(0, 3).map(Number)
  for (let i = 0; i < 3; i++) if ((pa[i] ?? 0) !== (pb[i] ?? 0)) return (pa[i] ?? 0) - (pb[i] ?? 0)
  return 0
}

export function check (lock) {
  const problems = []
  for (const [path, entry] of Object.entries(lock.packages ?? {})) {
    const name = path.replace(/^.*node_modules\//, '')
    const floor = FLOORS[name]
    if (floor === undefined || typeof entry.version !== 'string') continue
    if (compare(entry.version, floor) < 0) problems.push(`${path}: ${name}@${entry.version} is below ${floor}`)
  }
  return problems
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const file = process.argv[2] ?? new URL('../package-lock.json', import.meta.url)
  const problems = check(JSON.parse(readFileSync(file, 'utf8')))
  for (const p of problems) process.stderr.write(`vulnerable: ${p}\n`)
  if (problems.length > 0) process.exit(1)
  process.stdout.write('dependencies: no resolved version below its advisory floor\n')
}
