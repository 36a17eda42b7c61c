// The scaling example stays runnable: its Tollgate config loads with the environment the compose
// file gives each replica, and the compose file has Redis with AOF, two replicas sharing one
// secret and one Redis URL, and nginx in front with the replicas as its upstreams.
import { readFileSync } from 'node:fs'
import t from 'tap'
import { parse } from 'yaml'
import { loadConfig } from '../src/config.js'
import { SECRET } from './helper.js'

t.test('examples/scaling/tollgate.yaml loads as every replica loads it', async t => {
  const config = loadConfig({
    configPath: 'examples/scaling/tollgate.yaml',
    env: { TOLLGATE_SECRET: SECRET, AGENT_SECRET: 'agent-secret-from-env-0123', TOLLGATE_REDIS_URL: 'redis://redis:6379' }
  })
  t.equal(config.store.redis, 'redis://redis:6379')
  t.equal(config.server.trustProxy, '172.28.0.10', 'trusts exactly the load balancer')
})

t.test('examples/docker-compose.yml: Redis with AOF, two replicas, nginx in front', async t => {
  const compose = parse(readFileSync('examples/docker-compose.yml', 'utf8'), { merge: true }) // compose resolves << merge keys
  t.match(compose.services.redis.command.join(' '), /--appendonly yes --appendfsync everysec/)
  const replicas = Object.keys(compose.services).filter(name => name.startsWith('tollgate-'))
  t.same(replicas, ['tollgate-1', 'tollgate-2'])
  for (const name of replicas) {
    t.match(compose.services[name].environment, { TOLLGATE_REDIS_URL: 'redis://redis:6379', TOLLGATE_SECRET: /TOLLGATE_SECRET/ })
  }
  t.equal(compose.services.lb.networks.tollgate.ipv4_address, '172.28.0.10')
  const nginx = readFileSync('examples/scaling/nginx.conf', 'utf8')
  for (const name of replicas) t.match(nginx, `server ${name}:8080`)
})
