#!/usr/bin/env bash
# Run python_client.py with the official Python MCP SDK, in a venv made on first use.
#   tests/clients/run_python.sh [PATH-TO-aisbx-mcp] [--transport stdio|http|both]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${1:-${AISBX_MCP_BIN:-$ROOT/target/$(rustc -vV | sed -n 's/^host: //p')/debug/aisbx-mcp}}"
shift || true
VENV="${AISBX_PY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/aisbx-mcp-venv}"
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import mcp' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "mcp>=2.3,<3"
fi
exec "$VENV/bin/python" "$ROOT/tests/clients/python_client.py" --bin "$BIN" "$@"
