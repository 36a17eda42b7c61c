#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: GET /validate (one token repeated,
# through the one pipeline) against the bare Fastify route of `npm run bench`, each server
# under callgrind in turn, sent the same request; with CALL=1 also POST /call against
# the stock Fastify + reply-from proxy, both to the same upstream (which runs outside callgrind). The
# figure compared is the event loop's (the main thread's) instructions, which move far less than req/s
# or CPU time on a shared machine; V8's background threads are printed too but vary between runs, and
# the gateway's timers (revocation sync) add work per second, which valgrind's slowdown spreads over
# fewer requests. It counts user-space work only (the kernel's is the same for the validate pair: one
# read and one writev per request).
#
# It also prints how often V8 took its slow path for the tick objects of process.nextTick
# (Runtime_DefineKeyedOwnPropertyInLiteral) per request: 0 is right; see bench/README.md for the
# state that made it about 30 per request (40,000 instructions) in some starts, and src/tick-shape.ts.
#
#   bash bench/instructions.sh            (needs valgrind: apt-get install valgrind; run `npm run build` first)
#   REQUESTS=3000 WARMUP=9000 KEEP=1 CALL=1 bash bench/instructions.sh   (KEEP: keep the callgrind files)
#   TOLLGATE_LOG_LEVEL=info bash bench/instructions.sh   (Tollgate's default level, access log on, as
#                                                         `npm run bench` runs it; warn when unset, the
#                                                         level the recorded counts were taken at)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REQUESTS=${REQUESTS:-3000}
WARMUP=${WARMUP:-9000}
command -v valgrind >/dev/null || { echo "bench/instructions.sh needs valgrind (apt-get install valgrind)" >&2; exit 2; }
[ -f "$ROOT/dist/cli.js" ] || { echo "build first: npm run build" >&2; exit 2; }
WORK=$(mktemp -d)
PIDS=()
cleanup () { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; if [ -n "${KEEP:-}" ]; then echo "callgrind files kept in $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

free_port () { node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }

CALL_BODY='{"tool":"echo","arguments":{"text":"hello"}}'

# drive URL PATH AUTH N [POST]: N requests over 10 keep-alive connections (GET, or with POST the
# bench's /call body); fails on any non-2xx answer.
drive () {
  local request="{ method: 'GET', path: '$2', headers: { authorization: '$3' } }"
  if [ "${5:-}" = POST ]; then request="{ method: 'POST', path: '$2', headers: { authorization: '$3', 'content-type': 'application/json' }, body: '$CALL_BODY' }"; fi
  node --input-type=module -e "
    import autocannon from '$ROOT/node_modules/autocannon/autocannon.js'
    autocannon({ url: '$1', connections: 10, amount: $4, requests: [$request] }, (err, r) => {
      if (err || r.non2xx > 0 || r.errors > 0) { console.error('drive: failed', err ?? r.statusCodeStats); process.exit(1) }
    })"
}

# wait_http URL: until it answers (a server under valgrind takes a minute or so to start).
wait_http () {
  for _ in $(seq 1 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.5; done
  echo "no answer from $1" >&2; exit 1
}

# measure NAME PID URL PATH AUTH [POST]: warm up, then count the instructions of REQUESTS requests.
measure () {
  local name=$1 pid=$2 url=$3 path=$4 auth=$5 method=${6:-GET}
  drive "$url" "$path" "$auth" "$WARMUP" "$method"
  callgrind_control -z "$pid" >/dev/null 2>&1
  drive "$url" "$path" "$auth" "$REQUESTS" "$method"
  callgrind_control -d "$pid" >/dev/null 2>&1
  local file; file=$(ls -t "$WORK/$name.$pid".* | head -1)
  local total; total=$(grep -m1 '^totals:\|^summary:' "$file" | awk '{print $2}')
  # The event loop's share (uv_run, inclusive): the main thread's work for the requests. The rest is
  # V8's background threads (concurrent compilation and GC), whose share varies from run to run.
  local loop; loop=$(callgrind_annotate --inclusive=yes --threshold=100 "$file" 2>/dev/null | awk '/:uv_run \[/ && !found { gsub(",", "", $1); print $1; found = 1 }')
  # Calls into the runtime's DefineKeyedOwnPropertyInLiteral: the sum of its callers' call counts.
  local calls; calls=$(callgrind_annotate --tree=caller --inclusive=yes --threshold=100 "$file" 2>/dev/null | awk '
    printed { next }
    /^$/ { if (hit) { print n; printed = 1 } n = 0; next }
    /\* .*Runtime_DefineKeyedOwnPropertyInLiteral/ { hit = 1; next }
    /< .*\([0-9,]+x\)/ { match($0, /\([0-9,]+x\)/); c = substr($0, RSTART + 1, RLENGTH - 3); gsub(",", "", c); n += c }
    END { if (hit && !printed) print n }')
  # (No early exit in these awk programs: callgrind_annotate would die of SIGPIPE and, with
  # pipefail, end the script.)
  echo "$name $(( ${loop:-0} / REQUESTS )) $((total / REQUESTS)) $(( ${calls:-0} / REQUESTS ))"
}

CG=(valgrind --tool=callgrind --dump-instr=no)

# The bare Fastify route of bench/servers/bare.js.
BARE_PORT=$(free_port)
PORT=$BARE_PORT "${CG[@]}" --callgrind-out-file="$WORK/bare.%p" node "$ROOT/bench/servers/bare.js" >"$WORK/bare.log" 2>&1 &
BARE_PID=$!; PIDS+=("$BARE_PID")

# The upstream tool (not counted) and, with CALL=1, the stock proxy to it.
UP_PORT=$(free_port)
PORT=$UP_PORT node "$ROOT/bench/servers/upstream.js" >"$WORK/upstream.log" 2>&1 &
PIDS+=("$!")
if [ -n "${CALL:-}" ]; then
  STOCK_PORT=$(free_port)
  PORT=$STOCK_PORT "${CG[@]}" --callgrind-out-file="$WORK/stock.%p" node "$ROOT/bench/servers/stock-proxy.js" "http://127.0.0.1:$UP_PORT" >"$WORK/stock.log" 2>&1 &
  STOCK_PID=$!; PIDS+=("$STOCK_PID")
fi

# Tollgate with the config `npm run bench` runs (bench/tollgate-config.js: SQLite, defaults but for
# limits far above what is sent), but at log level warn unless TOLLGATE_LOG_LEVEL says otherwise,
# so that its counts compare with the ones recorded in bench/README.md (taken at warn).
TG_PORT=$(free_port)
SECRET=$(node -e "console.log(require('crypto').randomBytes(24).toString('base64url'))")
node "$ROOT/bench/tollgate-config.js" "$TG_PORT" "http://127.0.0.1:$UP_PORT" >"$WORK/tollgate.yaml"
TOLLGATE_DATA_DIR=$WORK/data TOLLGATE_LOG_LEVEL=${TOLLGATE_LOG_LEVEL:-warn} BENCH_CLIENT_SECRET=$SECRET \
  TOLLGATE_SECRET=$(node -e "console.log(require('crypto').randomBytes(32).toString('base64'))") \
  "${CG[@]}" --callgrind-out-file="$WORK/tollgate.%p" node "$ROOT/dist/cli.js" serve --config "$WORK/tollgate.yaml" >"$WORK/tollgate.log" 2>&1 &
TG_PID=$!; PIDS+=("$TG_PID")

wait_http "http://127.0.0.1:$BARE_PORT/bare"
wait_http "http://127.0.0.1:$TG_PORT/health"
TOKEN=$(curl -sf -u "bench:$SECRET" -d grant_type=client_credentials "http://127.0.0.1:$TG_PORT/token" | node -pe 'JSON.parse(require("fs").readFileSync(0)).access_token')
AUTH="Bearer $TOKEN"

echo "instructions per request (callgrind, $REQUESTS requests after $WARMUP warm-up), node $(node --version)"
printf '%-24s %18s %18s %18s\n' server 'event loop/req' 'all threads/req' 'nextTick slow/req'
read -r _ BARE_IR BARE_ALL BARE_SLOW < <(measure bare "$BARE_PID" "http://127.0.0.1:$BARE_PORT" /bare "$AUTH")
printf '%-24s %18s %18s %18s\n' 'bare Fastify route' "$BARE_IR" "$BARE_ALL" "$BARE_SLOW"
# The same route answering GET /validate's nine headers (bench/servers/bare.js, /bare-headers).
read -r _ BH_IR BH_ALL BH_SLOW < <(measure bare "$BARE_PID" "http://127.0.0.1:$BARE_PORT" /bare-headers "$AUTH")
printf '%-24s %18s %18s %18s\n' 'bare route, 9 headers' "$BH_IR" "$BH_ALL" "$BH_SLOW"
read -r _ TG_IR TG_ALL TG_SLOW < <(measure tollgate "$TG_PID" "http://127.0.0.1:$TG_PORT" /validate "$AUTH")
printf '%-24s %18s %18s %18s\n' 'GET /validate' "$TG_IR" "$TG_ALL" "$TG_SLOW"
node -e "console.log('validate_repeat/bare by event-loop instructions: ' + ($BARE_IR / $TG_IR).toFixed(2) + '   budget >= 0.80')"
node -e "console.log('bare_headers/bare: ' + ($BARE_IR / $BH_IR).toFixed(2) + ', validate_repeat/bare_headers: ' + ($BH_IR / $TG_IR).toFixed(2) + '   (no budget)')"

if [ -n "${CALL:-}" ]; then
  # The stock proxy answers only POST /call: any HTTP answer means it is up.
  for _ in $(seq 1 600); do [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$STOCK_PORT/")" != 000 ] && break; sleep 0.5; done
  read -r _ STOCK_IR STOCK_ALL STOCK_SLOW < <(measure stock "$STOCK_PID" "http://127.0.0.1:$STOCK_PORT" /call "$AUTH" POST)
  printf '%-24s %18s %18s %18s\n' 'stock proxy POST /call' "$STOCK_IR" "$STOCK_ALL" "$STOCK_SLOW"
  read -r _ CALL_IR CALL_ALL CALL_SLOW < <(measure tollgate "$TG_PID" "http://127.0.0.1:$TG_PORT" /call "$AUTH" POST)
  printf '%-24s %18s %18s %18s\n' 'POST /call' "$CALL_IR" "$CALL_ALL" "$CALL_SLOW"
  node -e "console.log('call/stock_proxy by event-loop instructions: ' + ($STOCK_IR / $CALL_IR).toFixed(2) + '   budget >= 1.00')"
fi
