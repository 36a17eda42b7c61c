import t from 'tap'
import { FORM, basic, build, form, testConfig } from './helper.js'

t.test('rate-limit counters survive a restart on the same data directory', async t => {
  const config = testConfig(t, { rateLimits: { token: { max: 2, window: '1h' } } })
  const post = (app: Awaited<ReturnType<typeof build>>) => app.inject({ method: 'POST', url: '/token', headers: { authorization: basic('agent'), ...FORM }, payload: form({ grant_type: 'client_credentials' }) })
  const first = await build(t, config)
  t.equal((await post(first)).statusCode, 200)
  t.equal((await post(first)).statusCode, 200)
  await first.close()
  const second = await build(t, config)
  const res = await post(second)
  t.equal(res.statusCode, 429, 'the budget spent before the restart is still spent')
  t.equal(res.json().error, 'rate_limited')
})
