// The docs in a real browser: playwright-core drives Debian's chromium (never a downloaded one) to
// /docs on the app listening on a real port. Every operation in the served /openapi.json must be
// listed by Swagger UI, and "Try it out" → "Execute" on GET /health must show a 200 response.
// The screenshot goes to test-artifacts/docs.png (gitignored) for a person to look at.
import { mkdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import t from 'tap'
import { tempDir, testConfig } from './helper.js'
import { freePort, listenApp, requireExecutable } from './system.js'

const ARTIFACTS = fileURLToPath(new URL('../test-artifacts/', import.meta.url))
const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace']

const executablePath = requireExecutable(t, '/usr/bin/chromium', 'apt-get install chromium')
if (executablePath !== undefined) {
  // The UI's "Execute" calls the spec's server URL, which is the issuer: make it this app's address.
  const port = await freePort()
  const { url } = await listenApp(t, testConfig(t, { issuer: `http://127.0.0.1:${port}` }), port)

  const context = await chromium.launchPersistentContext(tempDir(t, 'tollgate-chromium-'), {
    executablePath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 900 }
  })
  t.teardown(() => context.close())
  const page = context.pages()[0] ?? await context.newPage()
  page.setDefaultTimeout(20_000) // a bound on waiting for the UI, not a performance assertion
  // Nothing but this app may be contacted: the UI's assets are served locally.
  const foreign: string[] = []
  page.on('request', req => { if (!req.url().startsWith(url) && !req.url().startsWith('data:')) foreign.push(req.url()) })

  const spec = await (await fetch(`${url}/openapi.json`)).json() as { paths: Record<string, Record<string, { operationId?: string }>> }
  const expected = Object.entries(spec.paths).flatMap(([path, item]) =>
    Object.entries(item).filter(([m]) => METHODS.includes(m)).map(([method, op]) => ({ path, method, operationId: op.operationId })))

  await page.goto(`${url}/docs`)
  await page.locator('.opblock').first().waitFor()

  t.test('every operation of /openapi.json is listed in the UI', async t => {
    t.ok(expected.length >= 8, `the spec lists ${expected.length} operations`)
    const listed = await page.locator('.opblock').evaluateAll(blocks => blocks.map(b => ({
      id: b.id,
      method: (b.querySelector('.opblock-summary-method')?.textContent ?? '').trim().toLowerCase(),
      path: b.querySelector('.opblock-summary-path')?.getAttribute('data-path') ?? ''
    })))
    for (const op of expected) {
      const found = listed.some(l => (op.operationId !== undefined && l.id.endsWith(`-${op.operationId}`)) || (l.method === op.method && l.path === op.path))
      t.ok(found, `${op.method.toUpperCase()} ${op.path} (${op.operationId ?? 'no operationId'}) is listed`)
    }
    t.equal(listed.length, expected.length, 'and nothing else')
  })

  t.test('Try it out → Execute on GET /health shows 200', async t => {
    const health = page.locator('.opblock').filter({ has: page.locator('.opblock-summary-path[data-path="/health"]') })
    await health.locator('.opblock-summary').first().click()
    // The UI is configured with tryItOutEnabled, so the button may already read "Cancel": click it
    // only when it offers "Try it out", else it would switch the form off again.
    const tryOut = health.locator('button.try-out__btn')
    if (/try it out/i.test(await tryOut.textContent() ?? '')) await tryOut.click()
    await health.locator('button.execute').click()
    const status = health.locator('.live-responses-table tbody .response-col_status').first()
    await status.waitFor()
    t.equal((await status.textContent())?.trim(), '200')
    const body = await health.locator('.live-responses-table .highlight-code, .live-responses-table pre').first().textContent()
    t.match(body ?? '', /"status": ?"ok"/)
    mkdirSync(ARTIFACTS, { recursive: true })
    await page.screenshot({ path: `${ARTIFACTS}docs.png`, fullPage: true })
    t.same(foreign, [], 'the page contacted nothing but the app')
  })
}
