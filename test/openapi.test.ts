import { readFileSync } from 'node:fs'
import { compileErrors, validate } from '@readme/openapi-parser'
import t from 'tap'
import { generateOpenApi } from '../src/openapi.js'
import { build } from './helper.js'

const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options']

t.test('the served document is valid OpenAPI 3.1 with a bearer scheme and operationIds', async t => {
  const app = await build(t)
  const res = await app.inject({ method: 'GET', url: '/openapi.json' })
  t.equal(res.statusCode, 200)
  const doc = res.json()
  t.equal(doc.openapi, '3.1.0')
  const result = await validate(structuredClone(doc))
  t.ok(result.valid, result.valid ? 'valid' : compileErrors(result))
  t.same(doc.components.securitySchemes.bearerAuth, { type: 'http', scheme: 'bearer', bearerFormat: 'JWT', description: 'An access token from POST /token' })

  const ids = new Set<string>()
  for (const [path, item] of Object.entries<any>(doc.paths)) {
    for (const method of METHODS) {
      const op = item[method]
      if (op === undefined) continue
      t.type(op.operationId, 'string', `${method.toUpperCase()} ${path} has an operationId`)
      t.notOk(ids.has(op.operationId), `operationId ${op.operationId} is unique`)
      ids.add(op.operationId)
      t.ok(op.responses !== undefined && Object.keys(op.responses).length > 0, `${method.toUpperCase()} ${path} documents its responses`)
    }
  }
  for (const id of ['issueToken', 'introspectToken', 'forwardAuth', 'getJwks', 'getServerMetadata', 'getHealth', 'getMetrics']) {
    t.ok(ids.has(id), id)
  }
  t.ok(doc.paths['/validate'].get.security.some((s: any) => 'bearerAuth' in s), 'forward auth declares bearer security')
  t.same(Object.keys(doc.paths['/token'].post.requestBody.content).sort(), ['application/json', 'application/x-www-form-urlencoded'])
  t.ok(doc.components.schemas.OAuthError && doc.components.schemas.Problem && doc.components.schemas.TokenResponse, 'shared schemas are named components')
})

t.test('the committed openapi/openapi.json equals what the routes generate (run `npm run openapi`)', async t => {
  const committed = JSON.parse(readFileSync(new URL('../openapi/openapi.json', import.meta.url), 'utf8'))
  t.same(await generateOpenApi(), committed)
})

t.test('/docs serves the UI', async t => {
  const app = await build(t)
  const res = await app.inject({ method: 'GET', url: '/docs/' })
  t.equal(res.statusCode, 200)
  t.match(res.body, /swagger-ui/i)
})
