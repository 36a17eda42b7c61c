// An open-loop, evenly paced latency probe for the benchmark harness (bench/run.js).
//
// Request i is due at start + i / rate. A timer loop sends every request whose time has come
// (catching up after a late timer) without waiting for any answer, over a pool of keep-alive
// connections (undici Pool, pipelining 1). If every connection is busy when a request is due, it is
// counted as "late" and waits in the pool's queue for the next free connection. Latency runs from
// the request's scheduled time to its complete response body, so time spent waiting for the probe
// itself or for a connection is counted, not hidden (no coordinated omission).
//
// The first `warmup` seconds are sent but not recorded. The probe runs in the harness process next
// to the servers it measures, so it is kept cheap: one prebuilt request (body buffer and flat header
// array) for every send, handler objects reused from a free list, latencies in a preallocated
// Float64Array sorted once at the end.
import { performance } from 'node:perf_hooks'
import { Pool } from 'undici'

/**
 * Sends `rate` requests per second, evenly spaced, for `warmup` + `duration` seconds and returns
 * the latency distribution of those scheduled after the warm-up:
 * { rate, connections, count, errors, non2xx, late, p50, p90, p99, max, lagP50, lagP99, lagMax,
 *   errorCodes }, times in ms. `lag*` is how late the probe sent requests (its timer granularity
 * and event-loop delay), already included in the latencies.
 */
export async function pacedProbe ({ origin, path, method = 'POST', headers = {}, body, rate, duration, warmup = 1, connections = 64, timeoutMs = 10_000 }) {
  if (!(rate > 0) || !(duration > 0)) throw new Error(`pacedProbe: bad rate ${rate} or duration ${duration}`)
  const pool = new Pool(origin, { connections, pipelining: 1, headersTimeout: timeoutMs, bodyTimeout: timeoutMs, keepAliveTimeout: 60_000 })
  const request = {
    path,
    method,
    headers: Object.entries(headers).flat(),
    body: body === undefined ? null : Buffer.from(body)
  }

  const interval = 1000 / rate // ms between scheduled sends
  const warmN = Math.round(rate * warmup)
  const total = warmN + Math.round(rate * duration)
  const latency = new Float64Array(total - warmN)
  const lag = new Float64Array(total - warmN)
  let recorded = 0
  let errors = 0
  let non2xx = 0
  let late = 0
  let inflight = 0
  let sent = 0
  let sending = true
  const errorCodes = {}
  let t0 = 0
  let allSettled
  const settled = new Promise(resolve => { allSettled = resolve })

  const free = []
  const settle = handler => {
    handler.live = false
    free.push(handler)
    if (--inflight === 0 && !sending) allSettled()
  }

  // A legacy-style undici dispatch handler (undici passes it through without wrapping).
  class Probe {
    i = 0
    status = 0
    live = false
    onConnect () {}
    onHeaders (status) { this.status = status; return true }
    onData () { return true }
    onComplete () {
      if (!this.live) return
      const end = performance.now()
      if (this.i >= warmN) {
        latency[recorded++] = end - (t0 + this.i * interval)
        if (this.status < 200 || this.status > 299) non2xx++
      }
      settle(this)
    }

    onError (err) {
      if (!this.live) return
      if (this.i >= warmN) {
        errors++
        const code = err.code ?? err.message
        errorCodes[code] = (errorCodes[code] ?? 0) + 1
      }
      settle(this)
    }
  }

  let timer
  const tick = () => {
    const due = Math.min(total, Math.floor((performance.now() - t0) / interval) + 1)
    while (sent < due) {
      const i = sent++
      const handler = free.pop() ?? new Probe()
      handler.i = i
      handler.status = 0
      handler.live = true
      if (i >= warmN) {
        lag[i - warmN] = performance.now() - (t0 + i * interval)
        if (inflight >= connections) late++
      }
      inflight++
      pool.dispatch(request, handler)
    }
    if (sent < total) {
      timer = setTimeout(tick, Math.max(1, t0 + sent * interval - performance.now()))
    } else {
      sending = false
      if (inflight === 0) allSettled()
    }
  }
  t0 = performance.now()
  tick()

  // Wait for the last answers; whatever is still outstanding after timeoutMs fails as an error.
  let deadline
  const gaveUp = await Promise.race([
    settled.then(() => false),
    new Promise(resolve => { deadline = setTimeout(resolve, (warmup + duration) * 1000 + timeoutMs, true) })
  ])
  clearTimeout(deadline)
  clearTimeout(timer)
  if (gaveUp) {
    sending = false
    await pool.destroy()
    if (inflight > 0) await settled
  } else {
    await pool.close()
  }

  const sorted = latency.subarray(0, recorded).sort()
  const lags = lag.subarray(0, Math.max(0, sent - warmN)).sort()
  return {
    rate,
    connections,
    count: recorded,
    errors,
    non2xx,
    late,
    p50: quantile(sorted, 0.5),
    p90: quantile(sorted, 0.9),
    p99: quantile(sorted, 0.99),
    max: sorted.length > 0 ? sorted[sorted.length - 1] : NaN,
    lagP50: quantile(lags, 0.5),
    lagP99: quantile(lags, 0.99),
    lagMax: lags.length > 0 ? lags[lags.length - 1] : NaN,
    errorCodes
  }
}

/** Nearest-rank quantile of an ascending array. */
function quantile (sorted, q) {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]
}
