// The client registry's dummy secret check for unknown clients (issue 15, item 8): its scrypt
// parameters follow the configured clients, so an unknown id costs what most real ones cost.
import t from 'tap'
import { ClientRegistry, dummyParams, hashSecret } from '../src/clients/index.js'
import { build, client, testConfig } from './helper.js'

const CHEAP = { N: 2 ** 14, r: 4, p: 1 }
const OTHER = { N: 2 ** 14, r: 2, p: 1 }

function configured (id: string, params: { N: number, r: number, p: number }): any {
  return { id, secretHash: hashSecret(`${id}-secret-0123456789`, params), scopes: [], audiences: [], refresh: false, exchange: false, claims: {} }
}

t.test('the dummy hash uses the parameters of the configured clients', async t => {
  const registry = new ClientRegistry([configured('a', CHEAP), configured('b', CHEAP)])
  t.same(registry.dummyParams, CHEAP)
  t.equal(await registry.authenticate('nobody', 'x'), undefined, 'an unknown client is still refused')
  t.same(await registry.authenticate('a', 'a-secret-0123456789').then(c => c?.id), 'a')
})

t.test('with mixed parameters, the most common wins; a tie goes to the costlier', async t => {
  t.same(new ClientRegistry([configured('a', CHEAP), configured('b', OTHER), configured('c', CHEAP)]).dummyParams, CHEAP)
  t.same(dummyParams([OTHER, CHEAP]), CHEAP, 'N·r·p 2^16 beats 2^15')
  t.same(dummyParams([CHEAP, OTHER, OTHER]), OTHER)
  t.same(dummyParams([]), { N: 2 ** 15, r: 8, p: 1 }, 'no clients: the default parameters')
})

t.test('the app\'s registry follows the config', async t => {
  const app = await build(t, testConfig(t, { clients: [client('agent', { secretHash: hashSecret('agent-secret-0123456789', CHEAP) })] }))
  t.same(app.clients.dummyParams, CHEAP)
})
