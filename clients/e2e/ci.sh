#!/usr/bin/env bash
# The demo bundle check and the browser end-to-end tests, as .ci/run runs them.
# Needs the release binary (cargo build --release) unless CUSTOMWS_BIN points elsewhere.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing Debian's chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
chromium --version

echo "== clients/demo: the committed bundle matches its source"
(cd "$repo/clients/demo" && npm ci --no-audit --no-fund && npm run check)

echo "== clients/e2e: chromium against customws serve --dev"
(cd "$here" && npm ci --no-audit --no-fund && timeout 300 npm test)
