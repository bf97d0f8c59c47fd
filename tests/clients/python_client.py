#!/usr/bin/env python3
"""Drive aisbx-mcp with the official Python MCP SDK (`pip install mcp`).

    python3 tests/clients/python_client.py --bin target/x86_64-unknown-linux-gnu/debug/aisbx-mcp --transport stdio
    python3 tests/clients/python_client.py --bin target/x86_64-unknown-linux-gnu/debug/aisbx-mcp --transport http

Checks, per transport: the tool list (names, schemas), `run`, progress notifications,
`logging/setLevel`, `build` then `run` in the sandbox, a limit above the profile's
refused, and bad arguments (-32602 naming the field). For HTTP the script starts
`aisbx-mcp --http 127.0.0.1:0` itself, checks the token file it makes
($AISBX_HOME/mcp-token, mode 0600) and 401 without or with a wrong token, and connects
with the token; `unix` starts `aisbx-mcp --listen unix:PATH` and connects over the
socket without a token. `both` runs stdio, http and unix. Prints `N passed, N failed`;
exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import traceback
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from mcp import ClientSession, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client

RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    RESULTS.append((name, ok, detail))
    print(f"{'ok  ' if ok else 'FAIL'} {name}{(': ' + detail) if detail and not ok else ''}", flush=True)


@asynccontextmanager
async def stdio_session(bin_path: str, home: str) -> AsyncIterator[ClientSession]:
    env = dict(os.environ)
    env["AISBX_HOME"] = home
    env.pop("AISBX_MCP_TOKEN", None)
    params = StdioServerParameters(command=bin_path, args=[], env=env)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write, logging_callback=on_log) as session:
            await session.initialize()
            yield session


def start_server(bin_path: str, home: str, args: list[str], marker: str) -> tuple[subprocess.Popen, str]:
    """Starts aisbx-mcp with ARGS; returns it and its `serving MCP` line."""
    env = dict(os.environ)
    env["AISBX_HOME"] = home
    env.pop("AISBX_MCP_TOKEN", None)
    proc = subprocess.Popen(
        [bin_path, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    box: list[str] = []
    ready = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write("[server] " + line)
            if marker in line and not box:
                box.append(line)
                ready.set()

    threading.Thread(target=read_stderr, daemon=True).start()
    if not ready.wait(30):
        proc.kill()
        raise RuntimeError(f"aisbx-mcp {' '.join(args)} did not say where it serves")
    return proc, box[0]


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@asynccontextmanager
async def http_session(bin_path: str, home: str) -> AsyncIterator[ClientSession]:
    import httpx2  # the HTTP client the SDK uses
    from mcp.client.streamable_http import streamable_http_client

    proc, line = start_server(bin_path, home, ["--http", "127.0.0.1:0"], "serving MCP")
    try:
        m = re.search(r"(http://\S+/mcp)", line)
        if not m:
            raise RuntimeError(f"no URL in {line!r}")
        url = m.group(1)
        token_file = os.path.join(home, "mcp-token")
        mode = os.stat(token_file).st_mode & 0o7777
        check("http: token file made with mode 0600", mode == 0o600, oct(mode))
        with open(token_file) as f:
            token = f.read().strip()
        check("http: the token is never printed", token not in line, line)
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        accept = {"Accept": "application/json, text/event-stream"}
        r = httpx2.post(url, json=ping, headers=accept)
        check("http: no token -> 401", r.status_code == 401
              and r.headers.get("www-authenticate", "").startswith("Bearer"), f"got {r.status_code}")
        r = httpx2.post(url, json=ping, headers={**accept, "Authorization": f"Bearer {token}x"})
        check("http: wrong token -> 401", r.status_code == 401, f"got {r.status_code}")
        client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                    timeout=httpx2.Timeout(120.0))
        async with client:
            async with streamable_http_client(url, http_client=client) as (read, write, *_):
                async with ClientSession(read, write, logging_callback=on_log) as session:
                    await session.initialize()
                    yield session
    finally:
        stop(proc)


@asynccontextmanager
async def unix_session(bin_path: str, home: str) -> AsyncIterator[ClientSession]:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    sock = os.path.join(home, "mcp.sock")
    proc, _ = start_server(bin_path, home, ["--listen", f"unix:{sock}"], "serving MCP")
    try:
        mode = os.stat(sock).st_mode & 0o7777
        check("unix: socket made with mode 0600", mode == 0o600, oct(mode))
        client = httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=sock),
                                    timeout=httpx2.Timeout(120.0))
        async with client:
            async with streamable_http_client("http://localhost/mcp", http_client=client) as (read, write, *_):
                async with ClientSession(read, write, logging_callback=on_log) as session:
                    await session.initialize()
                    yield session
    finally:
        stop(proc)


LOGS: list[Any] = []


async def on_log(params: Any) -> None:
    LOGS.append(params)


def structured(result: Any) -> dict[str, Any]:
    sc = getattr(result, "structured_content", None)
    if sc is None:
        sc = getattr(result, "structuredContent", None)
    return sc or {}


async def expect_invalid(session: ClientSession, tool: str, args: dict[str, Any], field: str, label: str) -> None:
    try:
        result = await session.call_tool(tool, args)
    except MCPError as e:
        code = e.error.code
        msg = e.error.message
        data = e.error.data or {}
        ok = code == -32602 and field in msg and (not isinstance(data, dict) or data.get("field", field) == field)
        check(label, ok, f"code {code} message {msg!r} data {data!r}")
        return
    check(label, False, f"no error; result {result!r}")


async def exercise(session: ClientSession, transport: str) -> None:
    t = transport
    tools = await session.list_tools()
    names = [tool.name for tool in tools.tools]
    expected = [
        "run", "build", "profile_list",
        "sandbox_list", "sandbox_destroy", "file_write", "file_read", "file_list",
        "file_delete", "snapshot_create", "snapshot_restore", "snapshot_list",
        "snapshot_diff", "snapshot_delete", "quota",
    ]
    check(f"{t}: tools/list names", sorted(names) == sorted(expected), repr(names))
    for tool in tools.tools:
        out = getattr(tool, "output_schema", None) or getattr(tool, "outputSchema", None)
        inp = getattr(tool, "input_schema", None) or getattr(tool, "inputSchema", None)
        check(f"{t}: {tool.name} has description and schemas",
              bool(tool.description) and bool(out) and bool(inp), repr(tool))

    r = await session.call_tool("run", {"command": ["echo", "hello from python"]})
    sc = structured(r)
    check(f"{t}: run echo", not r.is_error and sc.get("stdout") == "hello from python\n"
          and sc.get("exit_code") == 0, repr(r))
    text = "".join(getattr(c, "text", "") for c in r.content)
    check(f"{t}: run has a text summary", "hello from python" in text and text.startswith("exit 0"), text)

    r = await session.call_tool("run", {"command": ["sh", "-c", "exit 7"]})
    check(f"{t}: non-zero exit is a normal result", not r.is_error and structured(r).get("exit_code") == 7, repr(r))

    # A dry run: the SDK validates the plan against run's output schema; nothing runs.
    r = await session.call_tool("run", {"code": "print(1)", "language": "python", "dry_run": True,
                                        "timeout_secs": 5})
    sc = structured(r)
    check(f"{t}: run dry_run returns the plan",
          not r.is_error and sc.get("dry_run") is True and sc.get("allowed") is True
          and sc.get("profile") == "python" and sc.get("limits", {}).get("timeout_secs") == 5
          and "exit_code" not in sc and sc.get("decision", {}).get("allowed") is True, repr(r))
    text = "".join(getattr(c, "text", "") for c in r.content)
    check(f"{t}: run dry_run says nothing ran", text.startswith("dry run, nothing ran: allowed"), text)

    await session.set_logging_level("debug")
    check(f"{t}: logging/setLevel", True)

    progress: list[tuple[float, str | None]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((p, message))

    r = await session.call_tool(
        "run", {"command": ["sh", "-c", "echo one; sleep 0.3; echo two"]},
        progress_callback=on_progress)
    increasing = all(b[0] > a[0] for a, b in zip(progress, progress[1:]))
    joined = "".join(m or "" for _, m in progress)
    check(f"{t}: progress notifications stream output",
          len(progress) >= 2 and increasing and joined == "one\ntwo\n", repr(progress))
    check(f"{t}: log messages received", len(LOGS) >= 1, repr(LOGS[:3]))

    name = f"py-{t}-{os.getpid()}"
    b = await session.call_tool("build", {"name": name, "files": {"data.txt": "42\n"},
                                          "setup": ["echo built > made.txt"]})
    bsc = structured(b)
    sid = bsc.get("sandbox_id")
    check(f"{t}: build", not b.is_error and bool(sid) and len(bsc.get("setup", [])) == 1, repr(b))
    if sid:
        r = await session.call_tool("run", {"sandbox_id": sid, "command": ["sh", "-c", "cat data.txt made.txt"]})
        check(f"{t}: run in the built sandbox", structured(r).get("stdout") == "42\nbuilt\n", repr(r))
        d = await session.call_tool("sandbox_destroy", {"sandbox_id": sid})
        check(f"{t}: sandbox_destroy", not d.is_error, repr(d))

    p = await session.call_tool("profile_list", {})
    check(f"{t}: profile_list", not p.is_error and len(structured(p).get("profiles", [])) >= 1, repr(p))

    await expect_invalid(session, "run", {"code": "print(1)", "command": ["ls"]}, "code", f"{t}: both code and command")
    await expect_invalid(session, "run", {}, "code", f"{t}: neither code nor command")
    await expect_invalid(session, "run", {"command": "ls"}, "command", f"{t}: command not a list")
    await expect_invalid(session, "run", {"command": ["ls"], "files": {"/etc/x": "y"}}, "files", f"{t}: absolute file path")
    await expect_invalid(session, "run", {"command": ["ls"], "files": {"../x": "y"}}, "files", f"{t}: '..' in a file path")
    await expect_invalid(session, "run", {"command": ["ls"], "timeout_secs": "long"}, "timeout_secs", f"{t}: timeout_secs type")

    r = await session.call_tool("run", {"command": ["true"], "profile": "strict", "timeout_secs": 20})
    text = "".join(getattr(c, "text", "") for c in r.content)
    check(f"{t}: a limit above the profile's is refused",
          r.is_error and "timeout_secs" in text and "never raise" in text, text)

    # Understood but not possible: an isError result in MCP's terms, not a JSON-RPC error.
    r = await session.call_tool("snapshot_restore", {"name": "no-such-snapshot", "sandbox_id": "x"})
    text = "".join(getattr(c, "text", "") for c in r.content)
    check(f"{t}: a missing snapshot is an isError result",
          r.is_error and "snapshot_list" in text and "aisbx snap" not in text, text)
    r = await session.call_tool("build", {"setup": ["echo a", "exit 3", "echo never"]})
    text = "".join(getattr(c, "text", "") for c in r.content)
    check(f"{t}: a failed setup step is named",
          r.is_error and "setup step 2 of 3" in text and "echo never" in text, text)
    if r.structured_content:
        await session.call_tool("sandbox_destroy", {"sandbox_id": r.structured_content["sandbox_id"]})

    r = await session.call_tool("run", {"command": ["echo", "still alive"]})
    check(f"{t}: still serving after bad arguments", structured(r).get("stdout") == "still alive\n", repr(r))


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="path to aisbx-mcp")
    ap.add_argument("--transport", choices=["stdio", "http", "unix", "both"], default="both")
    args = ap.parse_args()
    transports = ["stdio", "http", "unix"] if args.transport == "both" else [args.transport]
    for t in transports:
        with tempfile.TemporaryDirectory(prefix="aisbx-py-") as home:
            try:
                opener = {"stdio": stdio_session, "http": http_session, "unix": unix_session}[t]
                cm = opener(args.bin, home)
                async with cm as session:
                    await asyncio.wait_for(exercise(session, t), timeout=300)
            except Exception as e:  # report, do not hide
                traceback.print_exc()
                check(f"{t}: session", False, f"{type(e).__name__}: {e}")
    passed = sum(1 for _, ok, _ in RESULTS if ok)
    failed = len(RESULTS) - passed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
