#!/usr/bin/env bash
# Run ts_client.mjs with the official TypeScript MCP SDK, installed first (npm ci,
# versions pinned by tests/clients/package-lock.json) into tests/clients/node_modules.
#   tests/clients/run_ts.sh [PATH-TO-aisbx-mcp] [--transport stdio|http|unix|all]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="${AISBX_MCP_BIN:-$ROOT/target/$(rustc -vV | sed -n 's/^host: //p')/debug/aisbx-mcp}"
if [[ $# -gt 0 && "$1" != --* ]]; then BIN="$1"; shift; fi
if [[ ! -x "$BIN" ]]; then
  echo "run_ts: $BIN not found; build it first (cargo build -p aisbx-mcp)" >&2
  exit 2
fi
# shellcheck source=tests/clients/npm_deps.sh
source "$HERE/npm_deps.sh"
npm_deps "$HERE" "$HERE"
echo "run_ts: node $(node --version), @modelcontextprotocol/sdk $(node -p 'require("'"$HERE"'/node_modules/@modelcontextprotocol/sdk/package.json").version')" >&2
exec node "$HERE/ts_client.mjs" --bin "$BIN" "$@"
