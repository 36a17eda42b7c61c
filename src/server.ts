// Entry for `tollgate serve`: builds the app from the config, sets the server timeouts, listens,
// and shuts down gracefully (close-with-grace) on SIGINT/SIGTERM or a fatal error.
import closeWithGrace from 'close-with-grace'
import type { FastifyInstance } from 'fastify'
import { buildApp } from './app.js'
import type { Config } from './config.js'

export async function serve (config: Config): Promise<FastifyInstance> {
  const app = await buildApp(config)
  closeWithGrace({ delay: 10_000 }, async ({ signal, err }) => {
    if (err !== undefined) app.log.error({ err }, 'shutting down after a fatal error')
    else app.log.info({ signal }, 'shutting down')
    await app.close()
  })
  await app.listen({ host: config.server.host, port: config.server.port })
  app.log.info({ config: config.source, store: app.store.kind, issuer: config.issuer, kid: app.keys.list().find(k => k.state === 'current' && !app.keys.refused().includes(k.kid))?.kid, clients: app.clients.size }, 'tollgate ready')
  if (config.demo !== undefined) {
    const address = app.server.address()
    const port = typeof address === 'object' && address !== null ? address.port : config.server.port
    const lines = [
      '',
      'Tollgate is running on the built-in demo configuration.',
      `  demo client id:     ${config.demo.clientId}`,
      // The secret itself only on an interactive terminal at first start: stdout is often a log.
      config.demo.created && process.stdout.isTTY
        ? `  demo client secret: ${config.clients[0]?.secret ?? ''}  (generated now; kept in ${config.demo.secretFile})`
        : `  demo client secret: in ${config.demo.secretFile}`,
      `  try:  curl -s -u "${config.demo.clientId}:$(cat ${config.demo.secretFile})" -d grant_type=client_credentials http://127.0.0.1:${port}/token`,
      '  Pass --config FILE (or TOLLGATE_CONFIG) to run your own configuration.',
      ''
    ]
    process.stdout.write(lines.join('\n') + '\n')
  }
  return app
}
