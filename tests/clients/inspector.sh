#!/usr/bin/env bash
# List aisbx-mcp's tools with the MCP Inspector CLI in --strict mode and fail on any
# schema finding, warnings included; then check the same schemas with Ajv
# (schema_check.mjs) for what the Inspector does not look at: non-standard formats.
#
#   tests/clients/inspector.sh [PATH-TO-aisbx-mcp]
#
# The Inspector (pinned by tests/clients/inspector/package-lock.json) needs
# Node >= 22.19: the npm package `node` provides it, installed next to it in
# $AISBX_INSPECTOR_DIR (default ~/.cache/aisbx-inspector). Ajv comes from
# tests/clients/package-lock.json. `--strict` prints each finding (path, issue,
# suggestion) but exits non-zero only on error-severity ones, so this script reads
# the findings from the `--format json` envelope and counts warnings as failures.
# Prints `N passed, N failed`; exits 1 on any failure.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="${1:-${AISBX_MCP_BIN:-$ROOT/target/$(rustc -vV | sed -n 's/^host: //p')/debug/aisbx-mcp}}"
# The exact tool list is checked by the SDK clients; here: the list came through.
CORE_TOOLS=(run build profile_list)

if [[ ! -x "$BIN" ]]; then
  echo "inspector: $BIN not found; build it first (cargo build -p aisbx-mcp)" >&2
  exit 2
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

# shellcheck source=tests/clients/npm_deps.sh
source "$HERE/npm_deps.sh"
DIR="$(inspector_dir)"
npm_deps "$HERE/inspector" "$DIR"
npm_deps "$HERE" "$HERE"
NODE22="$DIR/node_modules/.bin/node"
"$NODE22" --version >/dev/null 2>&1 || { echo "inspector: $NODE22 does not run" >&2; exit 1; }
echo "inspector: node $("$NODE22" --version), @modelcontextprotocol/inspector $("$NODE22" -p 'require("'"$DIR"'/node_modules/@modelcontextprotocol/inspector/package.json").version')" >&2

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; }

# The Inspector keeps a catalog and a client config under ~; give it a scratch one.
rc=0
PATH="$DIR/node_modules/.bin:$PATH" HOME="$WORK" \
  MCP_CATALOG_PATH="$WORK/catalog.json" MCP_CLIENT_CONFIG_PATH="$WORK/client.json" \
  timeout 120 inspector --cli -e "AISBX_HOME=$WORK/home" "$BIN" \
  --method tools/list --strict --format json >"$WORK/tools.json" 2>"$WORK/stderr" || rc=$?

# Every finding of the envelope, one line each: severity tool schema.path rule.
summary="$("$NODE22" -e '
  const env = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const tools = (env.result && env.result.tools) || [];
  const lines = [];
  for (const { toolName, findings } of env.schemaFindings || []) {
    for (const f of findings) lines.push(`${f.severity} ${toolName} ${f.schema}.${f.path} ${f.rule}`);
  }
  console.log(tools.map((t) => t.name).join(" "));
  for (const l of lines) console.log(l);
' "$WORK/tools.json" 2>"$WORK/parse.err")" || { cat "$WORK/stderr" "$WORK/parse.err" >&2; summary=""; }

names=" $(head -n1 <<<"$summary") "
missing=()
for t in "${CORE_TOOLS[@]}"; do [[ "$names" == *" $t "* ]] || missing+=("$t"); done
ntools=$(wc -w <<<"$names")
if [[ $rc -eq 0 && ${#missing[@]} -eq 0 ]]; then
  pass "inspector --cli lists the tools over stdio ($ntools)"
else
  fail "inspector --cli lists the tools over stdio: exit $rc, $ntools tools, missing: ${missing[*]:-none}"
  tail -n 20 "$WORK/stderr"
fi

findings="$(tail -n +2 <<<"$summary" | sed '/^$/d')"
if [[ -n "$summary" && -z "$findings" ]]; then
  pass "inspector --strict: no schema warning or error"
elif [[ -n "$summary" ]]; then
  nerr=$(grep -c '^error ' <<<"$findings" || true)
  nwarn=$(grep -c '^warning ' <<<"$findings" || true)
  kinds=$(awk '{print $1 " " $4}' <<<"$findings" | sort | uniq -c | awk '{printf "%s%s %s %s", sep, $1, $2, $3; sep=", "}')
  fail "inspector --strict: $nerr errors, $nwarn warnings ($kinds)"
  sed 's/^/       /' <<<"$findings"
else
  fail "inspector --strict: no findings report to read"
fi

# The same schemas through Ajv strict mode and the JSON Schema format list.
if [[ -n "$summary" ]]; then
  rc=0
  node "$HERE/schema_check.mjs" "$WORK/tools.json" >"$WORK/schema.out" 2>&1 || rc=$?
  sed '$d' "$WORK/schema.out"
  last="$(tail -n1 "$WORK/schema.out")"
  if [[ "$last" =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
    passed=$((passed + BASH_REMATCH[1]))
    failed=$((failed + BASH_REMATCH[2]))
    [[ $rc -eq 0 || ${BASH_REMATCH[2]} -gt 0 ]] || fail "schema check exited $rc"
  else
    fail "schema check: $last"
  fi
fi

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
