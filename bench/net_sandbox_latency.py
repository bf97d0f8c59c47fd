#!/usr/bin/env python3
"""Latency of one HTTPS request from inside a sandbox, through the whole path out
(program -> the forwarder on 127.0.0.1:3128 -> the run's proxy -> the index),
against the same request made directly from the host.

One request = a new TCP connection, the TLS handshake (certificate verified against
the host's bundle) and `HEAD <index path>` until the response head has arrived.
Inside: `aisbx run --profile python-dev` (whose allowlist is the host's Python
package index, as pip is configured here), each request a CONNECT with the run's
credentials from HTTPS_PROXY. The sandbox's requests run in one run; the host's
are made before and after it, half each, so that both see the same network. The
destination is read from the run's own allowlist (`aisbx run --dry-run`): no
registry host is written in this file. bench/net_latency.py isolates the proxy.

    bench/net_sandbox_latency.py [--runs N] [--aisbx PATH]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs on the host (direct) and in the sandbox (through the proxy); prints the
# milliseconds of each request, one per line.
PROBE = r'''
import base64, os, socket, ssl, sys, time
host, n = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE"))
proxy = os.environ.get("HTTPS_PROXY")
def one():
    t = time.perf_counter()
    if proxy:
        cred = proxy.split("//", 1)[1].split("@", 1)[0]
        s = socket.create_connection(("127.0.0.1", 3128), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(("CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\nProxy-Authorization: Basic %s\r\n\r\n"
                   % (host, host, base64.b64encode(cred.encode()).decode())).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            b = s.recv(1)
            if not b:
                raise SystemExit("proxy closed")
            head += b
        if b" 200" not in head.split(b"\r\n")[0]:
            raise SystemExit(head.split(b"\r\n")[0].decode())
    else:
        s = socket.create_connection((host, 443), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t_ = ctx.wrap_socket(s, server_hostname=host)
    t_.sendall(("HEAD /simple/ HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host).encode())
    got = b""
    while b"\r\n\r\n" not in got:
        b = t_.recv(4096)
        if not b:
            break
        got += b
    t_.close()
    return (time.perf_counter() - t) * 1000
one()  # warm the resolver and the TLS library
for _ in range(n):
    print("%.3f" % one())
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--aisbx", default=os.path.join(ROOT, "target/release/aisbx"))
    a = ap.parse_args()
    plan = json.loads(subprocess.run(
        [a.aisbx, "run", "--dry-run", "--json", "--profile", "python-dev", "--", "true"],
        capture_output=True, text=True, check=True).stdout)
    host = next(h for h in plan["network_allow"] if ":" not in h)

    def host_times(n):
        out = subprocess.run([sys.executable, "-c", PROBE, host, str(n)], env={
            k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
            capture_output=True, text=True, check=True).stdout
        return [float(x) for x in out.split()]

    direct = host_times(a.runs // 2)
    r = json.loads(subprocess.run(
        [a.aisbx, "run", "--json", "--profile", "python-dev", "--timeout", "600", "--",
         "python3", "-c", PROBE, host, str(a.runs)],
        capture_output=True, text=True).stdout)
    if r["exit_code"] != 0:
        sys.exit("the sandbox's requests failed: " + r["stderr"])
    sandbox = [float(x) for x in r["stdout"].split()]
    direct += host_times(a.runs - a.runs // 2)
    md, ms = statistics.median(direct), statistics.median(sandbox)
    print(f"{a.runs} HTTPS requests (TCP + TLS + HEAD) to the package index, medians in ms")
    print(f"host, direct:              {md:8.2f}")
    print(f"sandbox, through the proxy:{ms:8.2f}")
    print(f"added:                     {ms - md:8.2f}")


if __name__ == "__main__":
    main()
