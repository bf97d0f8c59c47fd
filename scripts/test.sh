#!/usr/bin/env bash
# The whole aisbx test suite: formatting, lints, unit and integration tests (real
# sandboxes; run as root to cover both the root and the unprivileged path), then the
# MCP server against real clients: the official Python and TypeScript SDKs, the MCP
# conformance suite and the MCP Inspector's strict schema check. Needs python3 (with
# venv), node >= 20 and npm; the client suites install themselves (pinned versions)
# on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo test (unit + integration: real sandboxes)"
cargo test --workspace 2>&1 | tee /tmp/aisbx-cargo-test.log | grep -E '^(test result|running|.*FAILED|.*panicked)' || true
if grep -qE '^test result: FAILED|error: test failed|could not compile' /tmp/aisbx-cargo-test.log; then
  grep -E 'panicked|FAILED' -A5 /tmp/aisbx-cargo-test.log | head -80
  echo "cargo test failed" >&2
  exit 1
fi
passed=$(grep -oE '^test result: ok\. [0-9]+ passed' /tmp/aisbx-cargo-test.log | awk '{s+=$4} END {print s+0}')

step "MCP: Python SDK client (stdio, HTTP, Unix socket)"
cargo build --quiet -p aisbx-mcp
# Binaries live under the host's target tuple (see .cargo/config.toml).
host=$(rustc -vV | sed -n 's/^host: //p')
mcp_bin="${CARGO_TARGET_DIR:-target}/$host/debug/aisbx-mcp"
tests/clients/run_python.sh "$mcp_bin" --transport both

step "MCP: TypeScript SDK client (stdio, HTTP, Unix socket)"
tests/clients/run_ts.sh "$mcp_bin" --transport all

step "MCP: conformance suite"
tests/clients/conformance.sh "$mcp_bin"

step "MCP: Inspector --strict and JSON Schema check of the tool schemas"
tests/clients/inspector.sh "$mcp_bin"

step "summary"
echo "cargo: ${passed} passed, 0 failed"
