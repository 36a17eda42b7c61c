// The `tollgate` command's verbs: serve, hash-secret, keys list|rotate|retire, usage export, openapi.
import { userInfo } from 'node:os'
import { parseArgs } from 'node:util'
import { hashSecret } from './clients/index.js'
import { loadConfig, publishAhead, type Config } from './config.js'

const HELP = `Usage: tollgate <command> [options]

Commands:
  serve [--config PATH]          start the gateway (default: the built-in demo configuration)
  hash-secret                    read a client secret on stdin, print its scrypt hash for secretHash
  keys list [--config PATH]      list signing keys and their states
  keys rotate [--config PATH] [--now]
                                 create the next signing key; it is published at once and signs
                                 after keys.publishAhead (--now: a fresh key signs at once, in every
                                 state, replacing a pending next key: the answer to a leak)
  keys retire <kid> --now [--config PATH]
                                 stop publishing a key and refuse every token it signed, at every
                                 replica within keys.reloadInterval (default 10 s); a signing key is
                                 first replaced by a fresh one
  usage export [--since ISO] [--format csv|jsonl] [--config PATH]
                                 write the usage ledger (every charge, refund, settlement, credit
                                 and reset) from the configured store to stdout, for billing
                                 (default csv, with a header line)
  openapi                        print the OpenAPI 3.1 document
  --help                         this text

Environment: TOLLGATE_CONFIG, TOLLGATE_PORT, TOLLGATE_HOST, TOLLGATE_DATA_DIR, TOLLGATE_REDIS_URL,
TOLLGATE_LOG_LEVEL, TOLLGATE_SECRET (the key-encryption secret; replicas must share it).
`

async function readStdin (): Promise<string> {
  const chunks: Buffer[] = []
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}

async function withKeys<T> (config: Config, fn: (keys: import('./keys/index.js').KeyManager) => Promise<T>): Promise<T> {
  const { openStore } = await import('./store/index.js')
  const { KeyManager } = await import('./keys/index.js')
  const { resolveSecret } = await import('./keys/material.js')
  const store = await openStore(config)
  try {
    const keys = new KeyManager({
      store,
      secret: resolveSecret(config.secret, config.dataDir).secret,
      algorithm: config.keys.algorithm,
      rotateAfter: config.keys.rotateAfter,
      publishAhead: publishAhead(config.keys),
      retireGrace: config.tokens.maxLifetime + config.tokens.leeway,
      log: { error: (obj, msg) => { process.stderr.write(`${msg}: ${JSON.stringify(obj)}\n`) } }
    })
    await keys.init()
    return await fn(keys)
  } finally {
    await store.close()
  }
}

/**
 * The audit line of a key emergency: one JSON line on stderr, shaped like the server's audit log
 * lines (`audit`, `msg`), naming kids only (never key material).
 */
function audit (event: string, fields: Record<string, unknown>, msg: string): void {
  let user: string | undefined
  try { user = userInfo().username } catch { user = undefined }
  process.stderr.write(JSON.stringify({ level: 30, time: Date.now(), audit: event, ...fields, user, pid: process.pid, msg }) + '\n')
}

function printKeys (keys: import('./keys/index.js').KeyManager): void {
  for (const k of keys.list()) {
    process.stdout.write(`${k.kid}  ${k.alg.padEnd(5)}  ${k.state.padEnd(7)}  signs from ${new Date(k.activatesAt).toISOString()}${k.removeAt !== undefined ? `  published until ${new Date(k.removeAt).toISOString()}` : ''}\n`)
  }
}

const OPTION_WORDS = new Set(['--now', '--config', '-c', '--help', '-h'])

/**
 * `keys retire <kid>`: a kid is base64url and may begin with '-' (one in 64 does), which parseArgs
 * would read as options; it is moved behind `--`, where it can only be a positional.
 */
function kidAsPositional (argv: string[]): string[] {
  const kid = argv[2]
  if (argv[0] !== 'keys' || argv[1] !== 'retire' || kid === undefined || !kid.startsWith('-') || kid === '--') return argv
  if (OPTION_WORDS.has(kid) || kid.startsWith('--config=')) return argv
  return [argv[0], argv[1], ...argv.slice(3), '--', kid]
}

/** Pages through the store's ledger and writes it to stdout, waiting when stdout is full. */
async function exportLedger (config: Config, format: 'csv' | 'jsonl', since: number | undefined): Promise<void> {
  const { openStore } = await import('./store/index.js')
  const { LEDGER_COLUMNS, csvRow, ledgerLine } = await import('./quota/ledger.js')
  const store = await openStore(config)
  const write = async (text: string): Promise<void> => {
    if (!process.stdout.write(text)) await new Promise(resolve => process.stdout.once('drain', resolve))
  }
  try {
    if (format === 'csv') await write(LEDGER_COLUMNS.join(',') + '\n')
    let after: string | undefined
    do {
      const page = await store.listLedger({ limit: 1000, ...(since !== undefined ? { since } : {}), ...(after !== undefined ? { after } : {}) })
      let out = ''
      for (const entry of page.entries) {
        const line = ledgerLine(entry)
        out += (format === 'csv' ? csvRow(line) : JSON.stringify(line)) + '\n'
      }
      if (out !== '') await write(out)
      after = page.next
    } while (after !== undefined)
  } finally {
    await store.close()
  }
}

export async function main (argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: kidAsPositional(argv),
    options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' }, now: { type: 'boolean' }, since: { type: 'string' }, format: { type: 'string' } },
    allowPositionals: true
  })
  const [command, sub] = positionals
  if (values.help === true || command === undefined || command === 'help') {
    process.stdout.write(HELP)
    return command === undefined && values.help !== true ? 1 : 0
  }
  const load = (): Config => loadConfig(values.config !== undefined ? { configPath: values.config } : {})
  switch (command) {
    case 'serve': {
      const { serve } = await import('./server.js')
      await serve(load())
      return -1 // keep running
    }
    case 'hash-secret': {
      const secret = (process.stdin.isTTY ? '' : await readStdin()).replace(/\r?\n$/, '')
      if (secret.length < 16) {
        process.stderr.write('hash-secret: pipe a secret of at least 16 characters on stdin\n')
        return 1
      }
      process.stdout.write(hashSecret(secret) + '\n')
      return 0
    }
    case 'keys': {
      if (sub !== 'list' && sub !== 'rotate' && sub !== 'retire') break
      if (sub === 'retire' && (positionals[2] === undefined || positionals.length > 3 || values.now !== true)) {
        process.stderr.write('keys retire: usage: tollgate keys retire <kid> --now (a scheduled retirement is what `keys rotate` does)\n')
        return 1
      }
      return await withKeys(load(), async (keys) => {
        if (sub === 'rotate' && values.now === true) {
          const { kid, deleted } = await keys.rotateNow()
          audit('keys.rotated_now', { kid, replaced: deleted }, 'emergency rotation: a fresh key signs at once')
          process.stdout.write(`created ${kid}\n`)
          for (const d of deleted) process.stdout.write(`deleted pending ${d}\n`)
        } else if (sub === 'rotate') {
          const kid = await keys.rotate()
          if (kid === undefined) {
            process.stderr.write('keys rotate: a rotation is already pending (see `tollgate keys list`; `keys rotate --now` replaces it)\n')
            return 1
          }
          process.stdout.write(`created ${kid}\n`)
        } else if (sub === 'retire') {
          const kid = positionals[2] as string
          if (!keys.list().some(k => k.kid === kid)) {
            process.stderr.write(`keys retire: no key ${kid} in the key set (see \`tollgate keys list\`)\n`)
            return 1
          }
          const { retired, rotated, deleted } = await keys.retireNow(kid)
          if (rotated !== undefined) {
            audit('keys.rotated_now', { kid: rotated, replaced: deleted.filter(d => d !== retired), reason: `retire ${retired}` }, 'emergency rotation: a fresh key signs at once')
            process.stdout.write(`created ${rotated}\n`)
          }
          audit('keys.retired_now', { kid: retired }, 'key retired at once: unpublished, its tokens refused')
          process.stdout.write(`retired ${retired}\n`)
        }
        printKeys(keys)
        return 0
      })
    }
    case 'usage': {
      if (sub !== 'export' || positionals.length > 2) break
      const format = values.format ?? 'csv'
      if (format !== 'csv' && format !== 'jsonl') {
        process.stderr.write('usage export: --format is csv or jsonl\n')
        return 1
      }
      let since: number | undefined
      if (values.since !== undefined) {
        since = /^\d{4}-\d{2}-\d{2}/.test(values.since) ? Date.parse(values.since) : Number.NaN
        if (Number.isNaN(since)) {
          process.stderr.write('usage export: --since must be an ISO 8601 time, e.g. 2026-11-30T00:00:00Z\n')
          return 1
        }
      }
      await exportLedger(load(), format, since)
      return 0
    }
    case 'openapi': {
      const { printOpenApi } = await import('./openapi.js')
      process.stdout.write(await printOpenApi())
      return 0
    }
  }
  process.stderr.write(`tollgate: unknown command ${positionals.join(' ')}\n\n${HELP}`)
  return 1
}

