// MCP servers behind Tollgate (CONTRACT §12, issue 17 item 3). Real parts on both sides: an MCP
// server made with @modelcontextprotocol/sdk (Streamable HTTP, stateful sessions) on a free port,
// and the SDK's own client connecting through `<gateway>/call/<tool>` with a Tollgate token. One
// server answers with SSE streams (the SDK's default), the other with JSON (enableJsonResponse).
import { randomUUID } from 'node:crypto'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js'
import t from 'tap'
import { z } from 'zod'
import * as oauth from 'oauth4webapi'
import { loadConfig } from '../src/config.js'
import { MAX_FILTERED_BYTES, listFilterFor, planRequest } from '../src/mcp/rpc.js'
import { ToolRegistry, type Tool } from '../src/tools/index.js'
import { CLIENT_SECRET, SECRET, build, client, issue, testConfig, type TestContext } from './helper.js'
import { startApp } from './call-helper.js'
import { freePort } from './support/redis.js'

interface McpUpstream {
  origin: string
  /** tools/call requests the server ran, by MCP tool name. */
  calls: string[]
  /** Requests that reached the server, with the session header they carried. */
  requests: Array<{ method: string, session: string | undefined, version: string | undefined }>
  /** Resolved by the test when the client has seen the slow tool's first progress message. */
  firstSeen: { resolve: () => void, promise: Promise<void> }
}

function deferred (): { resolve: () => void, promise: Promise<void> } {
  let resolve = (): void => {}
  const promise = new Promise<void>(r => { resolve = r })
  return { resolve, promise }
}

async function startMcpServer (t: TestContext, json: boolean): Promise<McpUpstream> {
  const up: McpUpstream = { origin: '', calls: [], requests: [], firstSeen: deferred() }
  const transports = new Map<string, StreamableHTTPServerTransport>()
  const newServer = (): McpServer => {
    const server = new McpServer({ name: 'test-tools', version: '1.0.0' })
    server.registerTool('echo', { description: 'echoes', inputSchema: { text: z.string() } }, async ({ text }) => {
      up.calls.push('echo')
      return { content: [{ type: 'text', text }] }
    })
    server.registerTool('admin', { description: 'needs mcp:admin' }, async () => {
      up.calls.push('admin')
      return { content: [{ type: 'text', text: 'admin done' }] }
    })
    server.registerTool('hidden', { description: 'no entry in mcpTools' }, async () => {
      up.calls.push('hidden')
      return { content: [{ type: 'text', text: 'hidden' }] }
    })
    server.registerTool('slow', { description: 'reports progress, then answers', inputSchema: {} }, async (_args, extra) => {
      up.calls.push('slow')
      const token = extra._meta?.progressToken
      if (token !== undefined) {
        await extra.sendNotification({ method: 'notifications/progress', params: { progressToken: token, progress: 1, total: 2 } })
        // The answer is held until the client has seen the first part: an answer buffered whole on
        // the way would never let it, and the call would time out.
        await up.firstSeen.promise
        await extra.sendNotification({ method: 'notifications/progress', params: { progressToken: token, progress: 2, total: 2 } })
      }
      return { content: [{ type: 'text', text: 'slow done' }] }
    })
    return server
  }
  const http = createServer((req: IncomingMessage, res: ServerResponse) => {
    const session = req.headers['mcp-session-id'] as string | undefined
    up.requests.push({ method: req.method ?? '', session, version: req.headers['mcp-protocol-version'] as string | undefined })
    void (async () => {
      let transport = session === undefined ? undefined : transports.get(session)
      if (transport === undefined) {
        if (session !== undefined) {
          res.writeHead(404).end()
          return
        }
        transport = new StreamableHTTPServerTransport({
          sessionIdGenerator: () => randomUUID(),
          enableJsonResponse: json,
          onsessioninitialized: id => { transports.set(id, transport as StreamableHTTPServerTransport) }
        })
        await newServer().connect(transport)
      }
      await transport.handleRequest(req, res)
    })().catch(err => { if (!res.headersSent) res.writeHead(500).end(String(err)) })
  })
  await new Promise<void>(resolve => http.listen(0, '127.0.0.1', resolve))
  up.origin = `http://127.0.0.1:${(http.address() as AddressInfo).port}`
  t.teardown(async () => {
    for (const transport of transports.values()) await transport.close().catch(() => {})
    http.closeAllConnections()
    await new Promise(resolve => http.close(resolve))
  })
  return up
}

const MCP_TOOLS = { echo: { scopes: ['tools:call'], cost: 2 }, slow: { cost: 1 }, admin: { scopes: ['mcp:admin'], cost: 1 } }

async function setup (t: TestContext, json: boolean, quota = 100): Promise<{ up: McpUpstream, base: string, token: string }> {
  const up = await startMcpServer(t, json)
  const { app, base } = await startApp(t, undefined, [
    { name: 'mcp', origin: up.origin, path: '/mcp', protocol: 'mcp', mcpTools: MCP_TOOLS }
  ], { clients: [client('agent', { audiences: ['tool:mcp'], quota: { limit: quota, window: '1h' } })] })
  return { up, base, token: (await issue(app)).access_token as string }
}

async function connect (t: TestContext, base: string, token: string): Promise<Client> {
  const mcp = new Client({ name: 'test-client', version: '1.0.0' })
  const transport = new StreamableHTTPClientTransport(new URL(`${base}/call/mcp`), { requestInit: { headers: { authorization: `Bearer ${token}` } } })
  await mcp.connect(transport)
  t.teardown(async () => { await mcp.close().catch(() => {}) })
  return mcp
}

async function quotaUsed (base: string, token: string): Promise<number> {
  const res = await fetch(`${base}/quota`, { headers: { authorization: `Bearer ${token}` } })
  return ((await res.json()) as { used: number }).used
}

for (const json of [false, true]) {
  const kind = json ? 'JSON answers' : 'SSE answers'
  t.test(`the SDK's client through Tollgate (${kind}): initialize, list, call, refuse, spend`, async t => {
    const { up, base, token } = await setup(t, json, 5)
    const mcp = await connect(t, base, token)
    t.equal(mcp.getServerVersion()?.name, 'test-tools', 'initialized through the gateway')
    const session = up.requests.find(r => r.session !== undefined)?.session
    t.ok(session, 'the server\'s Mcp-Session-Id reached the client, which sends it back')
    t.ok(up.requests.some(r => r.version !== undefined), 'MCP-Protocol-Version reaches the server')

    const listed = (await mcp.listTools()).tools.map(tool => tool.name).sort()
    t.same(listed, ['echo', 'slow'], 'tools/list names only what the token may call (admin needs mcp:admin; hidden has no entry)')

    const answer = await mcp.callTool({ name: 'echo', arguments: { text: 'hello' } })
    t.same(answer.content, [{ type: 'text', text: 'hello' }], 'an allowed tool answers')
    t.equal(await quotaUsed(base, token), 2, 'charged at echo\'s cost (2); initialize and tools/list cost nothing')

    const forbidden = await mcp.callTool({ name: 'admin', arguments: {} }).then(() => 'answered', (err: Error) => err.message)
    t.match(forbidden, /403/, 'a tool the token lacks the scope for is refused with 403')
    const hidden = await mcp.callTool({ name: 'hidden', arguments: {} }).then(() => 'answered', (err: Error) => err.message)
    t.match(hidden, /404/, 'a tool with no mcpTools entry (and no "*") is refused')
    t.same(up.calls, ['echo'], 'neither refused call reached the server')

    await mcp.callTool({ name: 'echo', arguments: { text: 'again' } })
    t.equal(await quotaUsed(base, token), 4)
    const spent = await mcp.callTool({ name: 'echo', arguments: { text: 'one too many' } }).then(() => 'answered', (err: Error) => err.message)
    t.match(spent, /429/, 'a spent quota is 429')
    t.equal(await quotaUsed(base, token), 4, 'the refused call is not charged')
    t.same(up.calls, ['echo', 'echo'])

    // The server's own SSE stream (GET) and the end of the session (DELETE) are relayed too, with
    // the session id.
    if (!json) t.ok(up.requests.some(r => r.method === 'GET' && r.session === session), 'the client\'s GET stream reached the server with its session')
    await (mcp.transport as StreamableHTTPClientTransport).terminateSession()
    t.ok(up.requests.some(r => r.method === 'DELETE' && r.session === session), 'DELETE ends the session at the server')
    const after = await fetch(`${base}/call/mcp`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-session-id': session as string, 'mcp-protocol-version': '2025-06-18' }, body: JSON.stringify({ jsonrpc: '2.0', id: 9, method: 'tools/list' }) })
    t.equal(after.status, 404, 'the ended session is gone at the server (its 404 passed through)')
  })
}

t.test('a streamed (SSE) tool answer arrives in parts as the server sends them', async t => {
  const { up, base, token } = await setup(t, false)
  const mcp = await connect(t, base, token)
  const progress: number[] = []
  const result = await mcp.callTool({ name: 'slow', arguments: {} }, undefined, {
    onprogress: p => {
      progress.push(p.progress)
      if (p.progress === 1) up.firstSeen.resolve()
    },
    timeout: 10_000
  })
  t.same(progress, [1, 2], 'both parts arrived, the first before the server sent the rest')
  t.same(result.content, [{ type: 'text', text: 'slow done' }])
  t.equal(await quotaUsed(base, token), 1, 'charged once, at slow\'s cost')
})

t.test('raw requests: the scope challenge, batches, bounded parsing, and no way around the checks', async t => {
  const { up, base, token } = await setup(t, true)
  const auth = { authorization: `Bearer ${token}` }
  const post = async (body: string, extra: Record<string, string> = {}): Promise<Response> => await fetch(`${base}/call/mcp`, {
    method: 'POST',
    headers: { ...auth, 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...extra },
    body
  })
  const call = (id: number, name: string): Record<string, unknown> => ({ jsonrpc: '2.0', id, method: 'tools/call', params: { name, arguments: {} } })

  const forbidden = await post(JSON.stringify(call(1, 'admin')))
  t.equal(forbidden.status, 403)
  t.match(forbidden.headers.get('www-authenticate'), /^Bearer .*error="insufficient_scope".*scope="mcp:admin"/, 'the challenge names the scope needed')
  t.equal((await forbidden.json() as { code: string }).code, 'insufficient_scope')

  const batch = await post(JSON.stringify([call(1, 'echo'), call(2, 'admin')]))
  t.equal(batch.status, 403, 'one forbidden tools/call refuses the whole batch')

  for (const [body, why] of [['{"jsonrpc":"2.0",', 'malformed JSON'], ['[]', 'an empty batch'], ['[1]', 'a message that is not an object'],
    [JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: {} }), 'tools/call without a name'],
    ['{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list"}', 'a repeated member name']] as const) {
    const res = await post(body)
    t.equal(res.status, 400, why)
    t.equal((await res.json() as { code: string }).code, 'invalid_request', why)
  }
  const big = await post(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'echo', arguments: { text: 'x'.repeat(2 * 1024 * 1024) } } }))
  t.equal(big.status, 413, 'a body over the limit is 413')

  // The same MCP server cannot be reached around the per-tool checks.
  const passThrough = await fetch(`${base}/call/mcp/mcp`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify(call(1, 'admin')) })
  t.equal(passThrough.status, 400, 'the pass-through refuses an MCP tool')
  const postCall = await fetch(`${base}/call`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ tool: 'mcp', ...call(1, 'admin') }) })
  t.equal(postCall.status, 400, 'POST /call refuses an MCP tool')
  t.same(up.calls, [], 'nothing refused reached the server')
  t.equal(up.requests.length, 0, 'not even a request')

  const noToken = await fetch(`${base}/call/mcp`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(call(1, 'echo')) })
  t.equal(noToken.status, 401)
  t.match(noToken.headers.get('www-authenticate'), /resource_metadata="https:\/\/tollgate\.test\/\.well-known\/oauth-protected-resource\/call\/mcp"/, 'the challenge points at the MCP tool\'s RFC 9728 metadata')
})

t.test('discovery from a bare 401: resource_metadata, then the authorization server metadata, then a token with resource, then the call', async t => {
  // The MCP SDK's own OAuth flow insists on an authorization_endpoint, which RFC 8414 §2 makes
  // optional for a server without the authorization-code grant (Tollgate has none): the discovery
  // is done with oauth4webapi, an independent OAuth client, and the call with the SDK's client.
  const up = await startMcpServer(t, false)
  // The issuer must be reachable for discovery: the gateway's own address.
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  const app = await build(t, testConfig(t, {
    issuer: base,
    tools: [{ name: 'mcp', url: `${up.origin}/mcp`, audience: 'tool:mcp', scopes: ['tools:call'], protocol: 'mcp', mcpTools: MCP_TOOLS }],
    clients: [client('agent', { audiences: ['tool:mcp', 'tool:other'], quota: { limit: 100, window: '1h' } })]
  }))
  await app.listen({ port, host: '127.0.0.1' })
  const serverUrl = new URL(`${base}/call/mcp`)
  const insecure = { [oauth.allowInsecureRequests]: true }

  const bare = await fetch(serverUrl, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}' })
  t.equal(bare.status, 401, 'a bare request is refused')
  const metadataUrl = /resource_metadata="([^"]+)"/.exec(bare.headers.get('www-authenticate') ?? '')?.[1]
  t.equal(metadataUrl, `${base}/.well-known/oauth-protected-resource/call/mcp`, 'and names the tool\'s metadata')

  // RFC 9728 §3: the client derives the same URL from the resource identifier and checks `resource`.
  const rs = await oauth.processResourceDiscoveryResponse(serverUrl, await oauth.resourceDiscoveryRequest(serverUrl, insecure))
  t.equal(rs.resource, serverUrl.href)
  const issuer = new URL(rs.authorization_servers?.[0] as string)
  const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', ...insecure }))
  t.equal(as.token_endpoint, `${base}/token`, 'the authorization server metadata names the token endpoint')

  const response = await oauth.clientCredentialsGrantRequest(as, { client_id: 'agent' }, oauth.ClientSecretBasic(CLIENT_SECRET),
    { scope: 'tools:call', resource: rs.resource }, insecure)
  const token = (await oauth.processClientCredentialsResponse(as, { client_id: 'agent' }, response)).access_token
  const claims = JSON.parse(Buffer.from(token.split('.')[1] as string, 'base64url').toString()) as { aud: unknown }
  t.same([claims.aud].flat(), ['tool:mcp'], 'the token asked for the tool\'s resource URI carries its audience only')

  const mcp = await connect(t, base, token)
  const answer = await mcp.callTool({ name: 'echo', arguments: { text: 'found my way' } })
  t.same(answer.content, [{ type: 'text', text: 'found my way' }], 'and the call succeeds with it')
  t.same(up.calls, ['echo'])
})

t.test('config: mcpTools belong to MCP tools; a costExpr must compile', async t => {
  const config = (tool: Record<string, unknown>) => loadConfig({ raw: { issuer: 'https://tollgate.test', tools: [{ name: 'm', url: 'http://127.0.0.1:9/mcp', audience: 'tool:m', ...tool }] }, env: { TOLLGATE_SECRET: SECRET } })
  t.equal(config({ protocol: 'mcp', mcpTools: { '*': { cost: 0 } } }).tools[0]?.protocol, 'mcp')
  t.throws(() => config({ mcpTools: { echo: {} } }), /config: tools\.0\.mcpTools/, 'mcpTools without protocol: mcp')
  t.throws(() => config({ protocol: 'mcp', websocket: true }), /config: tools\.0\.websocket/)
  t.throws(() => config({ protocol: 'mcp', mcpTools: { echo: { costExpr: 'size(args) +' } } }), /config: tools\.0\.mcpTools\.echo\.costExpr: does not compile/)
  t.equal(config({ protocol: 'mcp', mcpTools: { echo: { costExpr: 'size(args)' } } }).tools[0]?.mcpTools?.echo?.costExpr, 'size(args)', 'a priced entry (test/metering-cost.test.ts)')
  t.throws(() => config({ protocol: 'grpc' }), /config: tools\.0\.protocol/)
})

t.test('the tools/list filters: split chunks, CRLF events, batches, and bounds', async t => {
  const tool = [...new ToolRegistry([{ name: 'm', url: 'http://127.0.0.1:9/mcp', audience: 'tool:m', scopes: [], cost: 1, timeout: 1, refundOnFailure: true, websocket: false, protocol: 'mcp', mcpTools: { echo: { scopes: ['a'] }, admin: { scopes: ['b'] } } }])][0] as Tool
  const scopes = new Set(['a'])
  const list = { jsonrpc: '2.0', id: 7, result: { tools: [{ name: 'echo' }, { name: 'admin' }, { name: 'other' }], nextCursor: 'c' } }
  const filtered = { jsonrpc: '2.0', id: 7, result: { tools: [{ name: 'echo' }], nextCursor: 'c' } }

  // SSE: an event split anywhere, CRLF line ends, an id field kept, other events byte for byte.
  const progress = 'event: message\r\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\r\n\r\n'
  const answer = `id: 42\r\nevent: message\r\ndata: ${JSON.stringify(list)}\r\n\r\n`
  const stream = Buffer.from(progress + answer)
  for (const cut of [1, 17, progress.length, progress.length + 9, stream.length - 1]) {
    const sse = listFilterFor('text/event-stream; charset=utf-8', tool, scopes, new Set([7])) as NonNullable<ReturnType<typeof listFilterFor>>
    const first = sse.push(stream.subarray(0, cut))
    const parts = [first, sse.push(stream.subarray(cut)), sse.end()].filter(b => b !== undefined).map(b => (b as Buffer).toString())
    const out = parts.join('')
    t.ok(out.startsWith(progress), `cut at ${cut}: the progress event unchanged`)
    if (cut >= progress.length) t.equal(first?.toString(), progress, `cut at ${cut}: a complete event is sent at once, before the rest arrives`)
    const data = /data: (.*)/.exec(out.slice(progress.length))?.[1] as string
    t.same(JSON.parse(data), filtered, `cut at ${cut}: the list answer filtered`)
    t.match(out.slice(progress.length), /^id: 42\nevent: message\n/, 'its other fields kept')
  }
  // A multi-byte character split between chunks survives.
  const accented = Buffer.from(`data: ${JSON.stringify({ ...list, result: { tools: [{ name: 'echo', description: 'é' }] } })}\n\n`)
  const sse = listFilterFor('text/event-stream', tool, scopes, new Set([7])) as NonNullable<ReturnType<typeof listFilterFor>>
  const at = accented.indexOf(Buffer.from('é')) + 1
  const out = [sse.push(accented.subarray(0, at)), sse.push(accented.subarray(at)), sse.end()].filter(b => b !== undefined).map(b => (b as Buffer).toString()).join('')
  t.match(out, /"description":"é"/)

  // JSON: a batch answer, only the listed id filtered.
  const json = listFilterFor('application/json', tool, scopes, new Set([7])) as NonNullable<ReturnType<typeof listFilterFor>>
  const other = { jsonrpc: '2.0', id: 8, result: { tools: [{ name: 'admin' }] } }
  t.equal(json.push(Buffer.from(JSON.stringify([list, other]))), undefined, 'a JSON answer is held until its end')
  t.same(JSON.parse((json.end() as Buffer).toString()), [filtered, other], 'only the tools/list answer asked for is cut')
  t.equal(listFilterFor('application/json', tool, scopes, new Set()), undefined, 'no tools/list asked: relayed untouched')
  t.equal(listFilterFor('text/plain', tool, scopes, new Set([7])), undefined)

  const broken = listFilterFor('application/json', tool, scopes, new Set([7])) as NonNullable<ReturnType<typeof listFilterFor>>
  broken.push(Buffer.from('{"jsonrpc":'))
  t.throws(() => broken.end(), /not JSON/, 'an unreadable tools/list answer fails instead of going out unfiltered')
  const huge = listFilterFor('application/json', tool, scopes, new Set([7])) as NonNullable<ReturnType<typeof listFilterFor>>
  t.throws(() => huge.push(Buffer.alloc(MAX_FILTERED_BYTES + 1)), /over/, 'held bytes are bounded')

  // planRequest: costs add up over a batch; other methods are free.
  const costly = [...new ToolRegistry([{ name: 'm', url: 'http://127.0.0.1:9/mcp', audience: 'tool:m', scopes: [], cost: 1, timeout: 1, refundOnFailure: true, websocket: false, protocol: 'mcp', mcpTools: { echo: { cost: 2 }, '*': { cost: 3 } } }])][0] as Tool
  const call = (name: string): unknown => ({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name } })
  t.equal(planRequest(costly, scopes, [call('echo'), call('anything'), { jsonrpc: '2.0', method: 'notifications/initialized' }]).cost, 5, 'echo 2 + "*" 3; a notification 0')
  t.same([...planRequest(costly, scopes, [{ jsonrpc: '2.0', id: 'x', method: 'tools/list' }]).listIds], ['x'])
})
