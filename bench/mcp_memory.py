#!/usr/bin/env python3
"""Memory of the MCP server over Streamable HTTP: at idle and under N concurrent
clients (default 32), each opening its own session and calling `run` a few times.

    python3 bench/mcp_memory.py [--mcp PATH] [--clients 32] [--runs 5]

Reports the server process's resident memory (VmRSS) at idle after one session, its
peak (VmHWM) while the clients run, and its VmRSS after they finished. Runs go
through the jail helper processes, which are not counted: they are per run and exit
with it. Standard library only; traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mcp_roundtrip import Http, find  # noqa: E402


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/{pid}/status")


class Client(Http):
    """Another session on a server that is already running."""

    def __init__(self, server: Http):
        import http.client

        host, port = server.url.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port))
        self.token = server.token
        self.session = ""
        self.id = 0
        self.rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                "clientInfo": {"name": "bench-memory", "version": "1"}})
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mcp", default=None)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    mcp = a.mcp or find("aisbx-mcp")
    with tempfile.TemporaryDirectory(prefix="aisbx-bench-") as home:
        env = dict(os.environ, AISBX_HOME=home)
        env.pop("AISBX_MCP_TOKEN", None)
        # Room for every client's run at once, so that none is turned away busy.
        server = Http(mcp, env, ("--max-runs", str(a.clients), "--max-queued", str(4 * a.clients)))
        pid = server.p.pid
        try:
            server.rpc("tools/call", {"name": "run", "arguments": {"command": ["true"]}})
            time.sleep(0.5)
            idle = status_kib(pid, "VmRSS")
            errors: list[str] = []

            def work() -> None:
                try:
                    c = Client(server)
                    for _ in range(a.runs):
                        m = c.rpc("tools/call", {"name": "run", "arguments": {"command": ["true"]}})
                        if m.get("result", {}).get("isError") is not False:
                            errors.append(str(m)[:200])
                    c.conn.close()
                except Exception as e:  # report, do not hide
                    errors.append(f"{type(e).__name__}: {e}")

            threads = [threading.Thread(target=work) for _ in range(a.clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            took = time.perf_counter() - t0
            peak = status_kib(pid, "VmHWM")
            after = status_kib(pid, "VmRSS")
        finally:
            server.close()
    print(f"server: {mcp}")
    print(f"idle (one session):               VmRSS {idle / 1024:6.1f} MiB")
    print(f"{a.clients} clients x {a.runs} runs ({took:.1f} s): VmHWM {peak / 1024:6.1f} MiB (peak)")
    print(f"after them:                       VmRSS {after / 1024:6.1f} MiB")
    print(f"errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
