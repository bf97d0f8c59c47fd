//! Network by allowlist (docs/NETWORK.md), through the real binary: packages
//! install from the host's configured indexes and import in the next run; every
//! other way out is refused, recorded in the audit log and in `network_denied`,
//! and the host's network is unchanged.
//!
//! These tests reach the package indexes the host's pip and npm are configured
//! for; the indexes are read from `aisbx run --dry-run` (the run's final
//! allowlist), never named here.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::common::*;

/// A user profile directory holding `nettest.toml`.
fn config_with(profile: &str) -> tempfile::TempDir {
    let config = tempfile::tempdir().expect("tempdir");
    let dir = config.path().join("aisbx/profiles");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("nettest.toml"), profile).expect("write profile");
    config
}

fn cmd_cfg(home: &Path, config: &Path) -> Command {
    let mut c = cmd(home);
    c.env("XDG_CONFIG_HOME", config);
    c
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}); status {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The run's final allowlist for `profile`, from a dry run.
fn allowlist(home: &Path, config: &Path, profile: &str) -> Vec<String> {
    let out = cmd_cfg(home, config)
        .args([
            "run",
            "--dry-run",
            "--json",
            "--profile",
            profile,
            "--",
            "true",
        ])
        .output()
        .expect("dry run");
    let plan = json_of(&out);
    plan["network_allow"]
        .as_array()
        .unwrap_or_else(|| panic!("no network_allow in {plan}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

/// The audit log's connection events.
fn connections(home: &Path) -> Vec<Value> {
    std::fs::read_to_string(home.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["front_end"] == "net" && v["tool"] == "connect")
        .collect()
}

/// The directory of the `proxy.sock` that process `pid` listens on (its fds'
/// socket inodes, looked up in `/proc/net/unix`).
fn listening_socket_dir(pid: u32) -> Option<std::path::PathBuf> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    table.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (inode, path) = (f.get(6)?, f.get(7)?);
        (inodes.iter().any(|i| i == inode) && path.ends_with("/proxy.sock"))
            .then(|| Path::new(path).parent().map(Path::to_path_buf))
            .flatten()
    })
}

/// The host's network stack as `ip` shows it (links, addresses, routes).
fn host_network() -> String {
    let mut s = String::new();
    for args in [
        &["-o", "link"][..],
        &["-o", "addr"],
        &["route"],
        &["-6", "route"],
    ] {
        if let Ok(o) = Command::new("ip").args(args).output() {
            s.push_str(&String::from_utf8_lossy(&o.stdout));
        }
    }
    s
}

#[test]
fn pip_install_in_a_python_dev_sandbox_imports_in_the_next_run() {
    let h = home();
    ok(h.path(), &["create", "pydev", "--profile", "python-dev"]);
    // six may be installed on the host: --ignore-installed makes pip fetch it
    // through the proxy into the sandbox's user site.
    let out = cmd(h.path())
        .args([
            "exec",
            "pydev",
            "--",
            "python3",
            "-m",
            "pip",
            "install",
            "--ignore-installed",
            "six",
        ])
        .output()
        .expect("pip install");
    assert!(
        out.status.success(),
        "pip install failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = ok(
        h.path(),
        &[
            "exec",
            "pydev",
            "--",
            "python3",
            "-c",
            "import six; print(six.__file__)",
        ],
    );
    assert!(
        got.trim().starts_with("/workspace/.local/"),
        "six was not imported from the sandbox's install: {got}"
    );
    // Each connection was recorded, allowed, with bytes from the index.
    let conns = connections(h.path());
    assert!(
        conns.iter().any(|c| c["decision"] == "allow"
            && c["result"]["bytes_down"].as_u64().unwrap_or(0) > 1000
            && c["result"]["run_id"].is_string()),
        "no allowed connection with a download in the audit log: {conns:#?}"
    );
    ok(h.path(), &["rm", "pydev"]);
}

#[test]
fn npm_install_in_a_node_dev_sandbox_requires_in_the_next_run() {
    if Command::new("npm").arg("--version").output().is_err() {
        eprintln!("npm is not installed here: the node-dev install test does not apply");
        return;
    }
    let h = home();
    ok(h.path(), &["create", "nodedev", "--profile", "node-dev"]);
    let out = cmd(h.path())
        .args([
            "exec",
            "nodedev",
            "--",
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "is-number",
        ])
        .output()
        .expect("npm install");
    assert!(
        out.status.success(),
        "npm install failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = ok(
        h.path(),
        &[
            "exec",
            "nodedev",
            "--",
            "node",
            "-e",
            "console.log(require('is-number')(5), require.resolve('is-number'))",
        ],
    );
    assert!(
        got.starts_with("true /workspace/node_modules/is-number/"),
        "{got}"
    );
    ok(h.path(), &["rm", "nodedev"]);
}

/// Every way out but the allowlisted one, tried from inside one run.
const ATTACKS: &str = r#"
import base64, json, os, socket, ssl, struct, sys
INDEX = sys.argv[1]
res = {}
url = os.environ["HTTPS_PROXY"]
secret = url.split("@")[0].rsplit(":", 1)[1]
auth = base64.b64encode(("aisbx:" + secret).encode()).decode()

def connect_status(host, port, with_auth=True):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    req = "CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n" % (host, port, host, port)
    if with_auth:
        req += "Proxy-Authorization: Basic %s\r\n" % auth
    s.sendall((req + "\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        if not b:
            break
        head += b
    return s, head.split(b"\r\n")[0].decode(errors="replace")

def attempt(name, f):
    try:
        res[name] = f()
    except Exception as e:
        res[name] = "error: %s: %s" % (type(e).__name__, e)

attempt("direct_tcp", lambda: socket.create_connection(("1.1.1.1", 443), timeout=5) and "connected")
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", ("8.8.8.8", 53))
    return "sent"
attempt("udp_out", udp)
attempt("dns_unlisted", lambda: socket.gethostbyname("unlisted.example.com"))
attempt("dns_allowed", lambda: socket.gethostbyname(INDEX))
def query(name, qtype):
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(10)
    s.sendto(q, ("127.0.0.1", 53))
    a = s.recv(4096)
    return {"rcode": a[3] & 15, "answers": struct.unpack(">H", a[6:8])[0]}
attempt("dns_txt", lambda: query(INDEX, 16))
attempt("dns_a_unlisted", lambda: query("unlisted.example.com", 1))
attempt("connect_unlisted", lambda: connect_status("unlisted.example.com", 443)[1])
attempt("connect_noauth", lambda: connect_status(INDEX, 443, False)[1])
attempt("connect_loopback_name", lambda: connect_status("localhost", 443)[1])
attempt("connect_v6_loopback", lambda: connect_status("[::1]", 443)[1])
attempt("connect_mapped", lambda: connect_status("[::ffff:127.0.0.1]", 443)[1])
attempt("connect_metadata", lambda: connect_status("169.254.169.254", 80)[1])
def sni():
    s, line = connect_status(INDEX, 443)
    if " 200" not in line:
        return "no tunnel: " + line
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.wrap_socket(s, server_hostname="sni-mismatch.example.com")
    return "handshake completed"
attempt("sni_mismatch", sni)
def flood():
    held, codes = [], []
    for i in range(8):
        s, line = connect_status(INDEX, 443)
        held.append(s)
        codes.append(line.split(" ")[1] if " " in line else line)
    return codes
attempt("flood", flood)
print(json.dumps(res))
"#;

#[test]
fn every_other_way_out_is_refused_and_recorded() {
    let h = home();
    let config = config_with(
        "extends = [\"python-dev\"]\n[network]\nallow = [\"localhost\"]\nmax_connections = 3\n",
    );
    let allow = allowlist(h.path(), config.path(), "nettest");
    // The first package index host, as the host's pip names it.
    let index = allow
        .iter()
        .find(|a| *a != "localhost")
        .map(|a| a.split(':').next().unwrap_or_default().to_string())
        .expect("a package index in the allowlist");
    let before = host_network();
    let out = cmd_cfg(h.path(), config.path())
        .args([
            "run",
            "--json",
            "--profile",
            "nettest",
            "--",
            "python3",
            "-c",
            ATTACKS,
            &index,
        ])
        .output()
        .expect("run");
    let r = json_of(&out);
    assert_eq!(r["exit_code"], 0, "{r:#}");
    let res: Value = serde_json::from_str(stdout(&r).trim()).expect("attack results");
    let s = |k: &str| res[k].as_str().unwrap_or_default().to_string();
    // No route but loopback.
    assert!(
        s("direct_tcp").contains("Network is unreachable"),
        "{res:#}"
    );
    assert!(s("udp_out").contains("Network is unreachable"), "{res:#}");
    // DNS answers allowlisted names only, and no TXT.
    assert!(s("dns_unlisted").starts_with("error:"), "{res:#}");
    assert!(s("dns_allowed").split('.').count() == 4, "{res:#}");
    assert_eq!(res["dns_txt"]["answers"], 0, "{res:#}");
    assert_ne!(res["dns_txt"]["rcode"], 0, "{res:#}");
    assert_eq!(res["dns_a_unlisted"]["rcode"], 3, "NXDOMAIN: {res:#}");
    // The proxy refuses what is not allowed, and anyone without the secret.
    assert!(s("connect_unlisted").contains(" 403"), "{res:#}");
    assert!(s("connect_noauth").contains(" 407"), "{res:#}");
    for k in [
        "connect_loopback_name",
        "connect_v6_loopback",
        "connect_mapped",
        "connect_metadata",
    ] {
        let line = s(k);
        assert!(
            line.starts_with("HTTP/1.1 4") || line.starts_with("HTTP/1.1 5"),
            "{k}: {res:#}"
        );
    }
    assert!(s("sni_mismatch").starts_with("error:"), "{res:#}");
    // Past the cap of 3 connections at once: refused.
    let codes: Vec<&str> = res["flood"]
        .as_array()
        .unwrap_or_else(|| panic!("{res:#}"))
        .iter()
        .map(|c| c.as_str().unwrap_or_default())
        .collect();
    assert!(
        codes.iter().filter(|c| **c == "200").count() <= 3,
        "{codes:?}"
    );
    assert!(codes.contains(&"503"), "{codes:?}");
    // The result names the destinations the program meant to reach.
    let denied: Vec<&str> = r["network_denied"]
        .as_array()
        .expect("network_denied")
        .iter()
        .map(|d| d.as_str().unwrap_or_default())
        .collect();
    for d in [
        "unlisted.example.com:443",
        "169.254.169.254:80",
        "sni-mismatch.example.com:443",
    ] {
        assert!(denied.contains(&d), "{d} not in {denied:?}");
    }
    // Each refusal is an audit event with the reason.
    let conns = connections(h.path());
    let refused = |needle: &str| {
        conns.iter().any(|c| {
            c["decision"] == "deny"
                && c["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_lowercase()
                    .contains(needle)
        })
    };
    for needle in ["allowlist", "cap", "sni"] {
        assert!(refused(needle), "no refusal for '{needle}' in {conns:#?}");
    }
    // Each names the run: the request id of the run's own audit line.
    let runs: Vec<String> = std::fs::read_to_string(h.path().join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["front_end"] == "cli" && v["tool"] == "run")
        .filter_map(|v| v["request_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(runs.len(), 2, "the dry run and the run: {runs:?}");
    assert!(
        conns
            .iter()
            .all(|c| c["result"]["run_id"] == runs[1].as_str()),
        "{runs:?} {conns:#?}"
    );
    assert_eq!(before, host_network(), "the host's network changed");
}

#[test]
fn a_run_without_network_has_none() {
    let (r, code) = py(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 3128), timeout=2)\n    print('open')\nexcept OSError as e:\n    print('refused')\n",
    );
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(stdout(&r), "refused\n");
    assert_eq!(r["network_denied"], serde_json::json!([]));
}

#[test]
fn another_user_or_run_cannot_use_a_runs_proxy_socket() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("needs root and setpriv");
        return;
    }
    let h = home();
    let run = cmd(h.path())
        .args([
            "run",
            "--json",
            "--profile",
            "python-dev",
            "--",
            "sleep",
            "6",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    // This run's directory: where the socket aisbx itself listens on lies.
    let mut dir = None;
    for _ in 0..400 {
        dir = listening_socket_dir(run.id());
        if dir.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let dir = dir.expect("the run's socket directory");
    let mode = std::fs::metadata(&dir).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
    let sock = dir.join("proxy.sock");
    // A request over the socket, as another user: the status line or the error.
    let try_as = |uid: u32| -> String {
        let code = format!(
            "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect({:?})\n    s.sendall(b'CONNECT example.org:443 HTTP/1.1\\r\\nHost: example.org:443\\r\\n\\r\\n')\n    print(s.recv(64).split(b'\\r\\n')[0].decode())\nexcept OSError as e:\n    print(type(e).__name__)\n",
            sock.to_string_lossy()
        );
        let out = Command::new("setpriv")
            .args([
                "--reuid",
                &uid.to_string(),
                "--regid",
                &uid.to_string(),
                "--clear-groups",
                "--",
                "/usr/bin/python3",
                "-c",
                &code,
            ])
            .output()
            .expect("setpriv");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // nobody cannot enter the directory.
    assert_eq!(try_as(65534), "PermissionError");
    // The id every root run's sandbox maps to (its forwarder's) reaches the
    // socket, but without this run's secret the proxy refuses.
    assert_eq!(
        try_as(0x7000_0000),
        "HTTP/1.1 407 Proxy Authentication Required"
    );
    let out = run.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The directory is gone with the run.
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn doctor_says_filtered_egress_works() {
    let h = home();
    let out = cmd(h.path())
        .args(["doctor", "--json"])
        .output()
        .expect("doctor");
    let v = json_of(&out);
    assert_eq!(v["filtered_network"]["works"], true, "{v:#}");
    let text = ok(h.path(), &["doctor"]);
    assert!(text.contains("network:        works:"), "{text}");
}

#[test]
fn an_unprivileged_user_gets_filtered_egress_too() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("needs root (to become nobody) and setpriv");
        return;
    }
    const NOBODY: u32 = 65534;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let state = dir.path().join("home");
    std::fs::create_dir(&state).expect("mkdir");
    std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY)).expect("chown");
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "--",
            ])
            .arg(bin_for_nobody())
            .args(args)
            .env("AISBX_HOME", &state)
            .env("HOME", &state)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(Stdio::null())
            .output()
            .expect("setpriv")
    };
    let dry = json_of(&as_nobody(&[
        "run",
        "--dry-run",
        "--json",
        "--profile",
        "python-dev",
        "--",
        "true",
    ]));
    let index = dry["network_allow"][0]
        .as_str()
        .expect("an index")
        .to_string();
    let code = format!(
        "import socket\nprint(len(socket.gethostbyname({index:?}).split('.')))\ntry:\n    socket.create_connection(('1.1.1.1', 443), timeout=5)\nexcept OSError as e:\n    print(e.errno)\n"
    );
    let r = json_of(&as_nobody(&[
        "run",
        "--json",
        "--profile",
        "python-dev",
        "--",
        "python3",
        "-c",
        &code,
    ]));
    assert_eq!(stdout(&r), format!("4\n{}\n", libc::ENETUNREACH), "{r:#}");
}

#[test]
fn a_download_past_the_byte_cap_is_cut_and_recorded() {
    let h = home();
    let config = config_with("extends = [\"python-dev\"]\n[network]\nmax_egress = \"1M\"\n");
    // pip's own wheel is larger than 1 MiB.
    let out = cmd_cfg(h.path(), config.path())
        .args([
            "run",
            "--json",
            "--profile",
            "nettest",
            "--",
            "python3",
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--retries",
            "0",
            "-d",
            "/tmp/d",
            "pip",
        ])
        .output()
        .expect("run");
    let r = json_of(&out);
    assert_ne!(r["exit_code"], 0, "the download went through: {r:#}");
    let conns = connections(h.path());
    assert!(
        conns.iter().any(|c| c["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("byte cap")),
        "no byte cap in {conns:#?}"
    );
    let total: u64 = conns
        .iter()
        .map(|c| {
            c["result"]["bytes_up"].as_u64().unwrap_or(0)
                + c["result"]["bytes_down"].as_u64().unwrap_or(0)
        })
        .sum();
    assert!(
        total <= (1 << 20) + (64 << 10),
        "{total} bytes passed a 1 MiB cap"
    );
}
