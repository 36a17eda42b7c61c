// The README stays short and every document it leads to is there: each relative Markdown link in
// README.md and docs/*.md names a file that exists, each #anchor into a Markdown file names one of
// its headings (GitHub's slugs), and every docs/*.md can be reached from the README.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { parse as parseYaml } from 'yaml'
import { loadConfig } from '../src/config.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const readmePath = join(root, 'README.md')
const docsDir = join(root, 'docs')
const docs = readdirSync(docsDir).filter(f => f.endsWith('.md')).map(f => join(docsDir, f))
const MAX_README_CHARS = 10_000

/** The lines of a Markdown file outside fenced code blocks. */
function proseLines (text: string): string[] {
  const lines: string[] = []
  let fence: string | undefined
  for (const line of text.split('\n')) {
    const m = /^\s{0,3}(`{3,}|~{3,})/.exec(line)
    if (m !== null) {
      const marker = m[1] as string
      if (fence === undefined) fence = marker
      else if (marker[0] === fence[0] && marker.length >= fence.length) fence = undefined
      continue
    }
    if (fence === undefined) lines.push(line)
  }
  return lines
}

/** GitHub's heading anchor (github-slugger): lower case, punctuation dropped, spaces to hyphens. */
function slug (heading: string): string {
  const text = heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1') // links and images: their text
    .replace(/<[^>]+>/g, '') // inline HTML
    .replace(/[`*]/g, '') // code spans and emphasis markers
    .trim()
    .toLowerCase()
  return text.replace(/[^\p{L}\p{M}\p{N}\p{Pc}\- ]/gu, '').replace(/ /g, '-')
}

/** The anchors of a Markdown file's headings, duplicates numbered as GitHub numbers them. */
function anchors (file: string): Set<string> {
  const seen = new Map<string, number>()
  const out = new Set<string>()
  for (const line of proseLines(readFileSync(file, 'utf8'))) {
    const m = /^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$/.exec(line)
    if (m === null) continue
    const base = slug(m[1] as string)
    const n = seen.get(base) ?? 0
    seen.set(base, n + 1)
    out.add(n === 0 ? base : `${base}-${n}`)
  }
  return out
}

/** Relative link targets of a Markdown file (not http(s), mailto or other schemes; not in code). */
function links (file: string): string[] {
  const targets: string[] = []
  for (const line of proseLines(readFileSync(file, 'utf8'))) {
    const prose = line.replace(/(`+)[\s\S]*?\1/g, '``') // code spans hold no links
    for (const m of prose.matchAll(/\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) {
      const target = m[1] as string
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue
      targets.push(target)
    }
  }
  return targets
}

t.test('the helpers: GitHub slugs and link extraction', async t => {
  t.equal(slug('nginx (`auth_request`)'), 'nginx-auth_request')
  t.equal(slug('Revocation — POST /revoke (RFC 7009)'), 'revocation--post-revoke-rfc-7009')
  t.equal(slug('History: V8 tick objects'), 'history-v8-tick-objects')
  t.equal(slug('`server`'), 'server')
})

t.test('README.md is under 10,000 characters', async t => {
  const length = [...readFileSync(readmePath, 'utf8')].length
  t.ok(length < MAX_README_CHARS, `README.md has ${length} characters`)
})

t.test('every relative link in README.md and docs/*.md resolves', async t => {
  for (const file of [readmePath, ...docs]) {
    const name = relative(root, file)
    const found = links(file)
    if (file === readmePath) t.ok(found.length > 0, 'the README links to its documents')
    for (const target of found) {
      const hash = target.indexOf('#')
      const path = decodeURIComponent(hash === -1 ? target : target.slice(0, hash))
      const anchor = hash === -1 ? undefined : decodeURIComponent(target.slice(hash + 1))
      const resolved = path === '' ? file : resolve(dirname(file), path)
      t.ok(existsSync(resolved), `${name}: ${target} exists`)
      if (anchor === undefined || !existsSync(resolved) || !resolved.endsWith('.md') || statSync(resolved).isDirectory()) continue
      t.ok(anchors(resolved).has(anchor), `${name}: ${target} names a heading of ${relative(root, resolved)}`)
    }
  }
})

t.test('every docs/*.md can be reached from README.md', async t => {
  const reached = new Set<string>([readmePath])
  const queue = [readmePath]
  for (let file = queue.shift(); file !== undefined; file = queue.shift()) {
    for (const target of links(file)) {
      const path = decodeURIComponent(target.split('#')[0] as string)
      if (path === '') continue
      const resolved = resolve(dirname(file), path)
      if (resolved.endsWith('.md') && existsSync(resolved) && !reached.has(resolved)) {
        reached.add(resolved)
        queue.push(resolved)
      }
    }
  }
  for (const doc of docs) t.ok(reached.has(doc), `${relative(root, doc)} is reachable from the README`)
})

t.test('the README\'s minimal configuration is a valid configuration', async t => {
  const readme = readFileSync(readmePath, 'utf8')
  const section = readme.slice(readme.indexOf('\n## Configuration'))
  const yaml = /```yaml\n([\s\S]*?)```/.exec(section)?.[1]
  t.ok(yaml, 'the Configuration section has a YAML example')
  const config = loadConfig({ raw: parseYaml(yaml as string), env: { AGENT_001_SECRET: 'agent-secret-0123456789' } })
  t.equal(config.clients.length, 1)
  t.equal(config.tools.length, 1)
})
