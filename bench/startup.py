#!/usr/bin/env python3
"""Start-up cost of a sandboxed run: aisbx against bubblewrap, in the same run.

Measures the wall time of `aisbx run -- /usr/bin/true` and of
`aisbx run --lang python --code pass`, each next to bubblewrap doing the same
(user, mount, pid, net, ipc, uts namespaces, read-only /usr, fresh /proc and /dev,
tmpfs /tmp and /workspace, uid 1000). The runs are interleaved so that both see the
same machine state; the report gives medians, the ratio of the medians aisbx /
bubblewrap, and the median of the ratios of back-to-back pairs.

aisbx runs code from a file (`python3 /run/aisbx/main.py`, so that tracebacks show
the source lines), and Python starts a file a little slower than `-c`. The python
case is therefore measured twice: against bubblewrap running the same interpreter
on the same file at the same path with the same environment ("python pass"), and
against bubblewrap running `python3 -c pass` ("python -c").

aisbx additionally applies what bubblewrap does not: cgroup limits (memory, pids,
CPU), seccomp, Landlock, rlimits, a synthesized /etc and an audit record.

    bench/startup.py [--runs N] [--aisbx PATH]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bwrap_base(extra_ro=()):
    args = [
        "bwrap", "--unshare-all", "--die-with-parent", "--new-session",
        "--ro-bind", "/usr", "/usr",
    ]
    for name in ("bin", "lib", "lib64", "sbin"):
        p = "/" + name
        if os.path.islink(p):
            args += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            args += ["--ro-bind", p, p]
    for p in extra_ro:
        args += ["--ro-bind", p, p]
    args += [
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/workspace",
        "--chdir", "/workspace", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
        "--uid", "1000", "--gid", "1000",
    ]
    return args


def python_interpreter():
    """The interpreter aisbx resolves for --lang python (pyenv shims included)."""
    out = subprocess.run(
        ["python3", "-c", "import sys; print(sys.executable); print(sys.base_prefix)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    return os.path.realpath(out[0]), out[1]


def timed(cmd, env):
    """Wall time of one run in ms. `cmd` is an argv, or a function that returns an
    argv and the fds the run reads (opened anew for each run)."""
    fds = []
    if callable(cmd):
        cmd, fds = cmd()
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, pass_fds=fds)
    dt = time.perf_counter() - t
    for fd in fds:
        os.close(fd)
    if r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stderr.decode(errors='replace')}")
    return dt * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--aisbx", default=None, help="default: target/<host tuple>/release/aisbx")
    a = ap.parse_args()
    if a.aisbx is None:
        # Binaries live under the host's target tuple (see .cargo/config.toml).
        host = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
        tuple_ = next(l.split(": ", 1)[1] for l in host.splitlines() if l.startswith("host: "))
        a.aisbx = os.path.join(ROOT, "target", tuple_, "release", "aisbx")
    if not shutil.which("bwrap"):
        sys.exit("bubblewrap is needed as the baseline: apt-get install bubblewrap")
    if not os.path.exists(a.aisbx):
        sys.exit(f"{a.aisbx} not found: cargo build --release --bin aisbx")
    home = tempfile.mkdtemp(prefix="aisbx-bench-")
    env = dict(os.environ, AISBX_HOME=home)
    exe, prefix = python_interpreter()
    py_binds = [] if prefix.startswith("/usr") else [prefix]
    # The code file and environment aisbx gives a python run (profile "python").
    code = os.path.join(home, "main.py")
    with open(code, "w") as f:
        f.write("pass\n")
    py_env = ["--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONUNBUFFERED", "1",
              "--setenv", "PYTHONDONTWRITEBYTECODE", "1"]

    def bwrap_same_file():
        fd = os.open(code, os.O_RDONLY)
        return bwrap_base(py_binds) + py_env + [
            "--file", str(fd), "/run/aisbx/main.py", exe, "/run/aisbx/main.py"], [fd]

    py_aisbx = [a.aisbx, "run", "--lang", "python", "--code", "pass"]
    cases = [
        ("true", [a.aisbx, "run", "--", "/usr/bin/true"], bwrap_base() + ["/usr/bin/true"]),
        ("python pass", py_aisbx, bwrap_same_file),
        ("python -c", py_aisbx, bwrap_base(py_binds) + [exe, "-c", "pass"]),
    ]
    print(f"{a.runs} interleaved runs each; medians in ms (p10-p90)")
    print(f"{'case':<12} {'aisbx':>20} {'bubblewrap':>20} {'ratio':>7} {'pairs':>7}")
    try:
        for name, ours, theirs in cases:
            for _ in range(5):  # warm up caches
                timed(ours, env)
                timed(theirs, env)
            xs, ys = [], []
            for i in range(a.runs):
                # Alternate which goes first, so neither always follows the other.
                if i % 2 == 0:
                    xs.append(timed(ours, env))
                    ys.append(timed(theirs, env))
                else:
                    ys.append(timed(theirs, env))
                    xs.append(timed(ours, env))

            def fmt(v):
                q = statistics.quantiles(v, n=10)
                return f"{statistics.median(v):6.2f} ({q[0]:.1f}-{q[-1]:.1f})"

            ratio = statistics.median(xs) / statistics.median(ys)
            # Each pair ran back to back: their ratio is immune to slow drifts of
            # the machine.
            pairs = statistics.median(x / y for x, y in zip(xs, ys))
            print(f"{name:<12} {fmt(xs):>20} {fmt(ys):>20} {ratio:6.2f}x {pairs:6.2f}x")
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
