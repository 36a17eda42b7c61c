import t from 'tap'
import { build, issue } from './helper.js'

t.test('a token issued by /token passes GET /validate', async t => {
  const app = await build(t)
  const tok = await issue(app)
  const res = await app.inject({ method: 'GET', url: '/validate', headers: { authorization: `Bearer ${tok.access_token}` } })
  t.equal(res.statusCode, 200)
  t.equal(res.headers['x-auth-subject'], 'agent')
})
