// The `tollgate` command's verbs: serve, hash-secret, keys list|rotate, openapi.
import { parseArgs } from 'node:util'
import { hashSecret } from './clients/index.js'
import { loadConfig, type Config } from './config.js'

const HELP = `Usage: tollgate <command> [options]

Commands:
  serve [--config PATH]          start the gateway (default: the built-in demo configuration)
  hash-secret                    read a client secret on stdin, print its scrypt hash for secretHash
  keys list [--config PATH]      list signing keys and their states
  keys rotate [--config PATH] [--now]
                                 create the next signing key; it is published at once and signs
                                 after keys.publishAhead (--now: sign at once, e.g. after a leak)
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
      publishAhead: config.keys.publishAhead ?? config.keys.jwksMaxAge + 50,
      retireGrace: config.tokens.maxLifetime + config.tokens.leeway,
      log: { error: (obj, msg) => { process.stderr.write(`${msg}: ${JSON.stringify(obj)}\n`) } }
    })
    await keys.init()
    return await fn(keys)
  } finally {
    await store.close()
  }
}

export async function main (argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' }, now: { type: 'boolean' } },
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
      if (sub !== 'list' && sub !== 'rotate') break
      return await withKeys(load(), async (keys) => {
        if (sub === 'rotate') {
          const kid = await keys.rotate(values.now === true ? { publishAhead: 0 } : {})
          if (kid === undefined) {
            process.stderr.write('keys rotate: a rotation is already pending (see `tollgate keys list`)\n')
            return 1
          }
          process.stdout.write(`created ${kid}\n`)
        }
        for (const k of keys.list()) {
          process.stdout.write(`${k.kid}  ${k.alg.padEnd(5)}  ${k.state.padEnd(7)}  signs from ${new Date(k.activatesAt).toISOString()}${k.removeAt !== undefined ? `  published until ${new Date(k.removeAt).toISOString()}` : ''}\n`)
        }
        return 0
      })
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

