#!/usr/bin/env python3
"""MCP `run` round trip (stdio and Streamable HTTP) against `aisbx run` of the same
command, measured in the same run, interleaved.

    python3 bench/mcp_roundtrip.py [--aisbx PATH] [--mcp PATH] [-n 30] [-- COMMAND...]

Default command: `true`. The CLI figure is the wall time of a whole `aisbx run --json
-- COMMAND` process; the MCP figures are the wall time from writing a `tools/call` to
reading its response on a warm server (stdio: one connection; HTTP: one session over
a keep-alive connection). Prints medians and 90th percentiles in milliseconds and the
MCP overhead over the CLI (target: <= CLI + 2 ms). Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def host_tuple() -> str:
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    return next(l.split(": ", 1)[1] for l in out.splitlines() if l.startswith("host: "))


def find(name: str) -> str:
    # Binaries live under the host's target tuple (see .cargo/config.toml).
    for profile in ("release", "debug"):
        p = os.path.join(ROOT, "target", host_tuple(), profile, name)
        if os.path.exists(p):
            return p
    sys.exit(f"{name} not built: cargo build --release -p aisbx-cli -p aisbx-mcp")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Stdio:
    def __init__(self, path: str, env: dict[str, str]):
        self.p = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, env=env, bufsize=0)
        self.id = 0
        self.rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                "clientInfo": {"name": "bench", "version": "1"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, msg: dict) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write((json.dumps(msg) + "\n").encode())

    def rpc(self, method: str, params: dict) -> dict:
        self.id += 1
        self.send({"jsonrpc": "2.0", "id": self.id, "method": method, "params": params})
        assert self.p.stdout is not None
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError("aisbx-mcp closed stdout")
            m = json.loads(line)
            if m.get("id") == self.id:
                return m

    def close(self) -> None:
        self.p.terminate()
        self.p.wait()


class Http:
    def __init__(self, path: str, env: dict[str, str], extra: tuple[str, ...] = ()):
        self.p = subprocess.Popen([path, "--http", "127.0.0.1:0", *extra], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
        self.url = ""
        ready = threading.Event()

        def read() -> None:
            assert self.p.stderr is not None
            for line in self.p.stderr:
                m = re.search(r"http://([^/\s]+)/mcp", line)
                if m and not self.url:
                    self.url = m.group(1)
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30):
            raise RuntimeError("aisbx-mcp --http did not start")
        host, port = self.url.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port))
        # The server makes its bearer token on first start.
        with open(os.path.join(env["AISBX_HOME"], "mcp-token")) as f:
            self.token = f.read().strip()
        self.session = ""
        self.id = 0
        self.rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                "clientInfo": {"name": "bench", "version": "1"}})
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def post(self, msg: dict) -> tuple[http.client.HTTPResponse, bytes]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                   "MCP-Protocol-Version": "2025-06-18", "Authorization": f"Bearer {self.token}"}
        if self.session:
            headers["Mcp-Session-Id"] = self.session
        self.conn.request("POST", "/mcp", body=json.dumps(msg), headers=headers)
        r = self.conn.getresponse()
        body = r.read()
        sid = r.getheader("mcp-session-id")
        if sid:
            self.session = sid
        return r, body

    def rpc(self, method: str, params: dict) -> dict:
        self.id += 1
        _, body = self.post({"jsonrpc": "2.0", "id": self.id, "method": method, "params": params})
        for line in body.decode().splitlines():
            if line.startswith("data:"):
                data = line[5:].strip()
                if data:
                    m = json.loads(data)
                    if m.get("id") == self.id:
                        return m
        if body.strip().startswith(b"{"):
            return json.loads(body)
        raise RuntimeError(f"no response in {body[:200]!r}")

    def close(self) -> None:
        self.conn.close()
        self.p.terminate()
        self.p.wait()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--aisbx", default=None)
    ap.add_argument("--mcp", default=None)
    ap.add_argument("-n", type=int, default=30)
    ap.add_argument("command", nargs="*", default=["true"])
    a = ap.parse_args()
    aisbx = a.aisbx or find("aisbx")
    mcp = a.mcp or find("aisbx-mcp")
    cmd = a.command or ["true"]
    with tempfile.TemporaryDirectory(prefix="aisbx-bench-") as home:
        env = dict(os.environ, AISBX_HOME=home)
        env.pop("AISBX_MCP_TOKEN", None)
        stdio = Stdio(mcp, env)
        web = Http(mcp, env)
        args = {"command": cmd}
        times: dict[str, list[float]] = {"cli": [], "mcp-stdio": [], "mcp-http": []}
        try:
            # Warm up each path once.
            subprocess.run([aisbx, "run", "--json", "--", *cmd], env=env, capture_output=True, check=False)
            stdio.rpc("tools/call", {"name": "run", "arguments": args})
            web.rpc("tools/call", {"name": "run", "arguments": args})
            for _ in range(a.n):
                t = time.perf_counter()
                r = subprocess.run([aisbx, "run", "--json", "--", *cmd], env=env, capture_output=True, check=False)
                times["cli"].append((time.perf_counter() - t) * 1000)
                if r.returncode == 125:
                    sys.exit(f"aisbx run failed: {r.stderr.decode()[:500]}")
                t = time.perf_counter()
                m = stdio.rpc("tools/call", {"name": "run", "arguments": args})
                times["mcp-stdio"].append((time.perf_counter() - t) * 1000)
                if m.get("result", {}).get("isError") is not False:
                    sys.exit(f"MCP run failed: {m}")
                t = time.perf_counter()
                m = web.rpc("tools/call", {"name": "run", "arguments": args})
                times["mcp-http"].append((time.perf_counter() - t) * 1000)
                if m.get("result", {}).get("isError") is not False:
                    sys.exit(f"MCP run failed: {m}")
        finally:
            stdio.close()
            web.close()
    cli = statistics.median(times["cli"])
    print(f"command: {' '.join(cmd)}   iterations: {a.n}   binaries: {aisbx}, {mcp}")
    print(f"{'path':<10} {'median ms':>10} {'p90 ms':>8} {'vs CLI':>9}")
    for k, xs in times.items():
        med = statistics.median(xs)
        diff = "" if k == "cli" else f"{med - cli:+8.2f}"
        print(f"{k:<10} {med:>10.2f} {pct(xs, 90):>8.2f} {diff:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
