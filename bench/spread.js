// Spreads a request list over autocannon's connections (bench/run.js, bench/compare.js).

/**
 * Autocannon options spreading `requests` over `connections`: each connection cycles through its
 * own slice, so every request in the list is in use at once. (Handing every connection the whole
 * list makes autocannon build list × connections request buffers before it starts, which stalls it
 * long enough for its own 10 s request timeout to fire.)
 */
export function spread (requests, connections) {
  const size = Math.max(1, Math.ceil(requests.length / connections))
  let n = 0
  return {
    requests: requests.slice(0, size),
    setupClient: client => {
      const start = (n++ * size) % requests.length
      client.setRequests(requests.slice(start, start + size))
    }
  }
}
