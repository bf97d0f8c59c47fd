#!/usr/bin/env bash
# Run the @modelcontextprotocol/conformance server scenarios that apply to aisbx-mcp
# (a tools server) against `aisbx-mcp --http --no-auth` (loopback), plus a
# session-lifecycle check and a bearer-token check.
#
#   tests/clients/conformance.sh [PATH-TO-aisbx-mcp]
#
# Needs npm (the suite needs Node >= 22: the npm package node@22 provides it, installed
# next to the suite in $AISBX_CONFORMANCE_DIR, default ~/.cache/aisbx-conformance).
# Prints `N passed, N failed`; exits 1 on any failure. See tests/clients/README.md for
# the scenarios that do not apply and why.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${1:-${AISBX_MCP_BIN:-$ROOT/target/$(rustc -vV | sed -n 's/^host: //p')/debug/aisbx-mcp}}"
SUITE_VERSION="${AISBX_CONFORMANCE_VERSION:-0.1.16}"
DIR="${AISBX_CONFORMANCE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aisbx-conformance}"
SCENARIOS=(
  server-initialize
  ping
  tools-list
  logging-set-level
  server-sse-multiple-streams
  server-sse-polling
  dns-rebinding-protection
)

if [[ ! -x "$BIN" ]]; then
  echo "conformance: $BIN not found; build it first (cargo build -p aisbx-mcp)" >&2
  exit 2
fi

mkdir -p "$DIR"
if [[ ! -x "$DIR/node_modules/.bin/conformance" || ! -x "$DIR/node_modules/.bin/node" ]]; then
  echo "conformance: installing node@22 and @modelcontextprotocol/conformance@$SUITE_VERSION into $DIR" >&2
  (cd "$DIR" && { [[ -f package.json ]] || npm init -y >/dev/null; } &&
    npm install --no-audit --no-fund --silent node@22 "@modelcontextprotocol/conformance@$SUITE_VERSION" >&2)
fi
export PATH="$DIR/node_modules/.bin:$PATH"
echo "conformance: node $(node --version)" >&2

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# The suite sends no credentials: serve it on loopback with --no-auth (the bearer
# token is checked separately below).
AISBX_HOME="$WORK/home" "$BIN" --http 127.0.0.1:0 --no-auth 2>"$WORK/server.log" &
SERVER_PID=$!
URL=""
for _ in $(seq 1 150); do
  URL="$(grep -o 'http://[^ ]*/mcp' "$WORK/server.log" | head -n1 || true)"
  [[ -n "$URL" ]] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; echo "conformance: server exited" >&2; exit 1; }
  sleep 0.1
done
[[ -n "$URL" ]] || { echo "conformance: server did not start" >&2; exit 1; }
echo "conformance: server at $URL" >&2

passed=0
failed=0
failures=()
for s in "${SCENARIOS[@]}"; do
  if (cd "$WORK" && timeout 120 conformance server --url "$URL" --scenario "$s") >"$WORK/$s.log" 2>&1; then
    passed=$((passed + 1)); echo "ok   $s"
  else
    failed=$((failed + 1)); failures+=("$s"); echo "FAIL $s"
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/$s.log" | grep -v 'unknown format' | tail -n 25
  fi
done

# Session lifecycle (no scenario in the suite yet): 400 without a session id, 404 for
# an unknown one, DELETE ends a session, which is then unknown (404).
lifecycle() {
  local hdr="$WORK/h" init code sid
  init='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"conformance-sh","version":"1"}}}'
  local accept='Accept: application/json, text/event-stream' ct='Content-Type: application/json'
  code=$(curl -s -o /dev/null -D "$hdr" -w '%{http_code}' -H "$accept" -H "$ct" -d "$init" "$URL")
  [[ "$code" == 200 ]] || { echo "initialize: $code"; return 1; }
  sid=$(tr -d '\r' <"$hdr" | awk -F': ' 'tolower($1)=="mcp-session-id"{print $2}')
  [[ -n "$sid" ]] || { echo "no mcp-session-id header"; return 1; }
  local list='{"jsonrpc":"2.0","id":2,"method":"tools/list"}'
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "$accept" -H "$ct" -d "$list" "$URL")
  [[ "$code" == 400 ]] || { echo "without a session id: $code (want 400)"; return 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "$accept" -H "$ct" -H "Mcp-Session-Id: no-such-session" -d "$list" "$URL")
  [[ "$code" == 404 ]] || { echo "unknown session: $code (want 404)"; return 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "$accept" -H "$ct" -H "Mcp-Session-Id: $sid" -d "$list" "$URL")
  [[ "$code" == 200 ]] || { echo "tools/list in the session: $code"; return 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' -X DELETE -H "Mcp-Session-Id: $sid" "$URL")
  [[ "$code" =~ ^20[04]$ ]] || { echo "DELETE: $code"; return 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "$accept" -H "$ct" -H "Mcp-Session-Id: $sid" -d "$list" "$URL")
  [[ "$code" == 404 ]] || { echo "after DELETE: $code (want 404)"; return 1; }
}
if out=$(lifecycle 2>&1); then
  passed=$((passed + 1)); echo "ok   session-lifecycle"
else
  failed=$((failed + 1)); failures+=(session-lifecycle); echo "FAIL session-lifecycle: $out"
fi

# Authentication (no scenario in the suite): a server started without --no-auth makes
# $AISBX_HOME/mcp-token (mode 0600) and answers 401 without it, 200 with it.
auth() {
  local log="$WORK/auth.log" url="" pid code mode token
  local init='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"conformance-sh","version":"1"}}}'
  local accept='Accept: application/json, text/event-stream' ct='Content-Type: application/json'
  AISBX_HOME="$WORK/home-auth" "$BIN" --http 127.0.0.1:0 2>"$log" &
  pid=$!
  for _ in $(seq 1 150); do
    url="$(grep -o 'http://[^ ;]*/mcp' "$log" | head -n1 || true)"
    [[ -n "$url" ]] && break
    sleep 0.1
  done
  [[ -n "$url" ]] || { kill "$pid"; echo "the server did not start"; return 1; }
  mode=$(stat -c %a "$WORK/home-auth/mcp-token")
  token=$(cat "$WORK/home-auth/mcp-token")
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "$accept" -H "$ct" -d "$init" "$url")
  local with
  with=$(curl -s -o /dev/null -w '%{http_code}' -H "$accept" -H "$ct" -H "Authorization: Bearer $token" -d "$init" "$url")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  [[ "$mode" == 600 ]] || { echo "token file mode $mode (want 600)"; return 1; }
  [[ "$code" == 401 ]] || { echo "without the token: $code (want 401)"; return 1; }
  [[ "$with" == 200 ]] || { echo "with the token: $with (want 200)"; return 1; }
}
if out=$(auth 2>&1); then
  passed=$((passed + 1)); echo "ok   bearer-token"
else
  failed=$((failed + 1)); failures+=(bearer-token); echo "FAIL bearer-token: $out"
fi

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
