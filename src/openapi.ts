// The OpenAPI document, generated from the route schemas of an app built on a throwaway
// in-memory store. `tollgate openapi` prints it; `npm run openapi` writes openapi/openapi.json.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { buildApp } from './app.js'
import { loadConfig } from './config.js'

export async function generateOpenApi (): Promise<Record<string, unknown>> {
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-openapi-'))
  const config = loadConfig({ raw: { dataDir: dir, store: { sqlite: ':memory:' } }, env: { TOLLGATE_SECRET: 'x'.repeat(32) } })
  const app = await buildApp(config, { logger: false })
  try {
    await app.ready()
    return app.swagger() as unknown as Record<string, unknown>
  } finally {
    await app.close()
    rmSync(dir, { recursive: true, force: true })
  }
}

export async function printOpenApi (): Promise<string> {
  return JSON.stringify(await generateOpenApi(), null, 2) + '\n'
}
