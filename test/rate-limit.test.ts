import t from 'tap'
import { FORM, ManualClock, basic, build, form, testConfig } from './helper.js'

t.test('rate-limit counters survive a restart on the same data directory', async t => {
  const config = testConfig(t, { rateLimits: { token: { max: 2, window: '1h' } } })
  const post = (app: Awaited<ReturnType<typeof build>>) => app.inject({ method: 'POST', url: '/token', headers: { authorization: basic('agent'), ...FORM }, payload: form({ grant_type: 'client_credentials' }) })
  // One injected clock for both processes: the hour window is aligned to the epoch.
  const clock = new ManualClock()
  const first = await build(t, config, { clock: clock.fn })
  t.equal((await post(first)).statusCode, 200)
  t.equal((await post(first)).statusCode, 200)
  await first.close()
  const second = await build(t, config, { clock: clock.fn })
  const res = await post(second)
  t.equal(res.statusCode, 429, 'the budget spent before the restart is still spent')
  t.equal(res.json().error, 'rate_limited')
})
