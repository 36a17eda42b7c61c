#!/usr/bin/env bash
# Installs the Debian packages the integration suites run against, and only those missing:
#   nginx                          test/nginx.test.ts (auth_request in front of GET /validate)
#   python3-jwt python3-cryptography  test/python-verifier.test.ts (PyJWT + PyJWKClient, ES256)
#   chromium                       test/docs-browser.test.ts (playwright-core drives it; no browser download)
# Idempotent and quiet; .ci/run calls it before the tests. Needs root (or sudo) only when something is missing.
set -euo pipefail

want=(nginx python3-jwt python3-cryptography chromium)
missing=()
for pkg in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=''
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO='sudo -n'; else
    echo "ensure-system-deps: missing ${missing[*]} and not root; install them with apt-get" >&2
    exit 1
  fi
fi
echo "ensure-system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
