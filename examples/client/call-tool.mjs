// A program that keeps its credentials with tollgate/client: it calls a tool once and prints the
// answer's status, the quota fields and its own quota. Run it twice with the same
// TOLLGATE_CREDENTIALS_FILE: the first run starts from client credentials, the second resumes the
// refresh-token family the first one left in the file. Prints no token and no secret.
//
//   TOLLGATE_URL=http://127.0.0.1:8080 TOLLGATE_CLIENT_ID=agent_001 TOLLGATE_CLIENT_SECRET=... \
//   TOLLGATE_CREDENTIALS_FILE=./agent.credentials.json TOLLGATE_TOOL=chat node examples/client/call-tool.mjs
import { createTollgateClient, TollgateFamilyRevokedError } from 'tollgate/client'

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback
  if (value === undefined) throw new Error(`set ${name}`)
  return value
}

const client = createTollgateClient({
  baseUrl: env('TOLLGATE_URL', 'http://127.0.0.1:8080'),
  clientId: env('TOLLGATE_CLIENT_ID'),
  clientSecret: process.env.TOLLGATE_CLIENT_SECRET,
  credentialsFile: process.env.TOLLGATE_CREDENTIALS_FILE
})

try {
  const answer = await client.call(env('TOLLGATE_TOOL', 'chat'), { text: 'hello' })
  const quota = await client.quota()
  console.log(JSON.stringify({ status: answer.status, rateLimit: answer.rateLimit, body: answer.body, quota }))
} catch (err) {
  if (err instanceof TollgateFamilyRevokedError) {
    // The family was revoked or reused: the client gave up after one token request. A restart
    // starts again from client credentials (the file no longer holds a refresh token).
    console.error(`tollgate: ${err.message}`)
    process.exitCode = 2
  } else {
    throw err
  }
} finally {
  await client.close()
}
