#!/usr/bin/env bash
# Makes sure the integration tests have Redis: Debian's redis-server and redis-cli are installed
# when missing, always, even when an external Redis answers (the fault, outage and Redis Cluster
# tests start redis-server processes of their own, and under CI a missing binary fails them);
# then a Redis answers at TOLLGATE_TEST_REDIS_URL (default redis://127.0.0.1:6379): the one there
# if it answers PING, else one started on that URL's port (loopback only, no persistence: test data
# only). Used by .ci/run; safe to run again.
set -euo pipefail

url="${TOLLGATE_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
rest="${url#*://}"
rest="${rest#*@}"          # drop credentials
hostport="${rest%%/*}"
host="${hostport%:*}"
port="${hostport##*:}"
[ "$port" = "$hostport" ] && port=6379
[ -z "$host" ] && host=127.0.0.1

answers () {
  command -v redis-cli >/dev/null 2>&1 && [ "$(redis-cli -u "$url" ping 2>/dev/null || true)" = "PONG" ]
}

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "redis: redis-server or redis-cli not found; installing Debian's redis-server"
  if [ "$(id -u)" = "0" ]; then
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n apt-get update && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server
  else
    echo "redis: cannot install redis-server (not root, no sudo)" >&2
    exit 1
  fi
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "redis: redis-server or redis-cli is still not on PATH after the install (PATH=${PATH})" >&2
    exit 1
  fi
fi
echo "redis: $(redis-server --version)"

# An external Redis, or the package's own service on the default port.
if answers; then
  echo "redis: answering at ${host}:${port}"
  exit 0
fi

case "$host" in
  127.*|localhost|::1) ;;
  *) echo "redis: nothing answers at ${host}:${port} and it is not a local address to start one on" >&2; exit 1 ;;
esac

log="${TMPDIR:-/tmp}/tollgate-test-redis-${port}.log"
echo "redis: starting redis-server on 127.0.0.1:${port} (log: ${log})"
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --logfile "$log"

for _ in $(seq 1 50); do
  if answers; then
    echo "redis: answering at ${host}:${port}"
    exit 0
  fi
  sleep 0.2
done
echo "redis: started but not answering at ${host}:${port}; see ${log}" >&2
exit 1
