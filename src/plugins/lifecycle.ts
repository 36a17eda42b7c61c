// Decorates the app with the token-lifecycle pieces: refresh-token families (app.refreshTokens),
// trusted issuers' key sets (app.trustedIssuers) and token exchange (app.tokenExchange). Holds no
// timers or connections of its own: the JWKS caches fetch on demand.
import fp from 'fastify-plugin'
import { TokenExchange } from '../oauth/exchange.js'
import { RefreshTokens } from '../oauth/refresh.js'
import { TrustedIssuers } from '../oauth/trusted-issuers.js'

declare module 'fastify' {
  interface FastifyInstance {
    refreshTokens: RefreshTokens
    trustedIssuers: TrustedIssuers
    tokenExchange: TokenExchange
  }
}

export default fp(async function lifecycle (app) {
  const { config, clock, store, tokens } = app
  app.decorate('refreshTokens', new RefreshTokens({
    store,
    tokens,
    clock,
    refreshTtl: config.tokens.refreshTtl,
    refreshIdleTtl: config.tokens.refreshIdleTtl,
    maxLifetime: config.tokens.maxLifetime,
    accessTtl: config.tokens.accessTtl
  }))
  const trusted = new TrustedIssuers({
    issuers: config.trustedIssuers,
    leeway: config.tokens.leeway,
    maxLifetime: config.tokens.maxLifetime,
    clock
  })
  app.decorate('trustedIssuers', trusted)
  app.decorate('tokenExchange', new TokenExchange({ tokens, trusted, clock, accessTtl: config.tokens.accessTtl }))
}, { name: 'tollgate-lifecycle', dependencies: ['tollgate-core'] })
