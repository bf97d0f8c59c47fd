#!/usr/bin/env python3
"""Latency the network proxy adds to one HTTPS request, against the same request
made directly from the host.

One request = a new TCP connection, the TLS handshake (certificate verified against
the host's bundle) and `HEAD <index path>` until the response head has arrived. Direct:
TCP to the index host's port. Through the proxy: the proxy's Unix socket, `CONNECT
host:port` with the run's Proxy-Authorization, then the same TLS and request inside
the tunnel; the proxy resolves the name, checks the address and the ClientHello's SNI
and relays every byte. The pairs are interleaved so that both see the same network
state; the report gives the medians, their difference and the median of the
per-pair differences. A second figure isolates the proxy's own cost from the
network's noise: connect and one 1 KiB round trip to a local echo server, direct and
through CONNECT (allowed by a rule naming 127.0.0.1 and its port).

The destination is the host's own Python package index, as pip is configured here
(PIP_INDEX_URL, `pip config list`, else pip's built-in default as pip reports it);
no registry host is written in this file. This measures the proxy itself; inside a
sandbox the in-namespace forwarder adds one more local relay.

    bench/net_latency.py [--runs N] [--proxy PATH] [--url URL]
"""
import argparse
import base64
import os
import secrets
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pip_index_url():
    """The index pip on this host uses: environment, then pip's configuration, then
    pip's own default."""
    env = os.environ.get("PIP_INDEX_URL")
    if env:
        return env.split()[0]
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True, text=True, timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith(".index-url"):
            return value.strip().strip("'\"")
    return subprocess.run(
        [sys.executable, "-c",
         "from pip._internal.models.index import PyPI; print(PyPI.simple_url)"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()


def ca_context():
    ctx = ssl.create_default_context()
    for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        path = os.environ.get(var)
        if path and os.path.isfile(path):
            ctx.load_verify_locations(cafile=path)
            break
    return ctx


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"connection closed inside a response head: {data[:200]!r}")
        data += chunk
    return data.split(b"\r\n", 1)[0]


def https_head(sock, ctx, host, path):
    tls = ctx.wrap_socket(sock, server_hostname=host)
    try:
        tls.sendall(
            f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: aisbx-bench\r\n"
            f"Connection: close\r\n\r\n".encode()
        )
        status = read_head(tls)
    finally:
        tls.close()
    if not status.startswith(b"HTTP/1.1 2") and not status.startswith(b"HTTP/1.1 3"):
        raise RuntimeError(f"unexpected answer: {status!r}")


def direct(ctx, host, port, path):
    t0 = time.perf_counter()
    s = socket.create_connection((host, port), timeout=30)
    # As pip (urllib3) and curl do, and as the proxy does for its upstream sockets:
    # without it, Nagle's algorithm and delayed ACKs hold back the request that follows
    # the TLS Finished, and the direct path looks tens of milliseconds slower.
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    https_head(s, ctx, host, path)
    return time.perf_counter() - t0


def proxied(ctx, sock_path, auth, host, port, path):
    t0 = time.perf_counter()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(sock_path)
    s.sendall(
        f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Proxy-Authorization: {auth}\r\n\r\n".encode()
    )
    # Read the CONNECT answer byte by byte: nothing of the tunnel may be consumed.
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        b = s.recv(1)
        if not b:
            raise RuntimeError(f"proxy closed the connection: {head!r}")
        head += b
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"proxy refused: {head!r}")
    https_head(s, ctx, host, path)
    return time.perf_counter() - t0


def start_echo():
    """A TCP echo server on 127.0.0.1, for the proxy's own overhead without a network."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)

    def serve(c):
        with c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                data = c.recv(65536)
                if not data:
                    return
                c.sendall(data)

    def loop():
        while True:
            c, _ = srv.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv.getsockname()[1]


def echo_direct(port, payload):
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        got += s.recv(65536)
    s.close()
    return time.perf_counter() - t0


def echo_proxied(sock_path, auth, port, payload):
    t0 = time.perf_counter()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    s.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += s.recv(1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"proxy refused: {head!r}")
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        got += s.recv(65536)
    s.close()
    return time.perf_counter() - t0


def build_proxy():
    subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "aisbx-net", "--example", "netproxy"],
        cwd=ROOT, check=True,
    )
    for sub in ("target/x86_64-unknown-linux-gnu/release/examples/netproxy",
                "target/release/examples/netproxy"):
        p = os.path.join(ROOT, sub)
        if os.path.exists(p):
            return p
    host = subprocess.run(["rustc", "-vV"], capture_output=True, text=True).stdout
    tuple_ = [l.split()[1] for l in host.splitlines() if l.startswith("host:")][0]
    return os.path.join(ROOT, "target", tuple_, "release", "examples", "netproxy")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--proxy", help="the netproxy example binary (built if not given)")
    ap.add_argument("--url", help="an https URL to request instead of pip's index")
    args = ap.parse_args()

    url = urllib.parse.urlsplit(args.url or pip_index_url())
    if url.scheme != "https" or not url.hostname:
        sys.exit(f"net_latency: need an https index URL, got {url.geturl()!r}")
    host, port = url.hostname, url.port or 443
    path = url.path or "/"
    if not path.endswith("/"):
        path += "/"
    proxy_bin = args.proxy or build_proxy()
    ctx = ca_context()

    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o700)
        secret = secrets.token_hex(16)
        rule = host if port in (80, 443) else f"{host}:{port}"
        echo_port = start_echo()
        p = subprocess.Popen([proxy_bin, d, secret, rule, f"127.0.0.1:{echo_port}"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            if p.stdout.readline().strip() != "ready":
                sys.exit("net_latency: the proxy did not start")
            sock_path = os.path.join(d, "proxy.sock")
            auth = "Basic " + base64.b64encode(f"aisbx:{secret}".encode()).decode()
            # Warm up both paths (DNS caches, TLS session state is not reused).
            direct(ctx, host, port, path)
            proxied(ctx, sock_path, auth, host, port, path)
            d_times, p_times = [], []
            for i in range(args.runs):
                if i % 2 == 0:
                    d_times.append(direct(ctx, host, port, path))
                    p_times.append(proxied(ctx, sock_path, auth, host, port, path))
                else:
                    p_times.append(proxied(ctx, sock_path, auth, host, port, path))
                    d_times.append(direct(ctx, host, port, path))
            # The proxy's own cost: connect and one 1 KiB round trip to a local echo
            # server, direct against through CONNECT.
            payload = b"x" * 1024
            e_d, e_p = [], []
            for i in range(args.runs * 4):
                e_d.append(echo_direct(echo_port, payload))
                e_p.append(echo_proxied(sock_path, auth, echo_port, payload))
        finally:
            p.stdin.close()
            report = p.stdout.read()
            p.wait(timeout=30)

    ms = lambda xs: statistics.median(xs) * 1000
    diffs = [(b - a) for a, b in zip(d_times, p_times)]
    print(f"HEAD https://{host}:{port}{path}  ({args.runs} requests each, new connection each)")
    print(f"  direct from the host   median {ms(d_times):7.2f} ms   "
          f"min {min(d_times) * 1000:7.2f} ms")
    print(f"  through the proxy      median {ms(p_times):7.2f} ms   "
          f"min {min(p_times) * 1000:7.2f} ms")
    print(f"  added by the proxy     {ms(p_times) - ms(d_times):+7.2f} ms (difference of medians), "
          f"{ms(diffs):+7.2f} ms (median of paired differences)")
    print(f"local echo, connect + 1 KiB round trip ({args.runs * 4} each)")
    print(f"  direct                 median {ms(e_d):7.3f} ms")
    print(f"  through the proxy      median {ms(e_p):7.3f} ms   "
          f"added {ms(e_p) - ms(e_d):+7.3f} ms")
    n = report.count('"allowed":true')
    print(f"  proxy recorded {n} allowed connections")


if __name__ == "__main__":
    main()
