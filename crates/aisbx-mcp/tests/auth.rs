//! Who may call the HTTP server: the state directory's bearer token (made once,
//! mode 0600, required on every request), `--no-auth` only on loopback, and the Unix
//! socket (mode 0600, peers checked with SO_PEERCRED), also against `nobody`.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::{Value, json};

const NOBODY: u32 = 65534;

fn structured(r: &Value) -> &Value {
    assert_eq!(r["result"]["isError"], json!(false), "tool failed: {r}");
    &r["result"]["structuredContent"]
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `argv` as nobody (no groups), or `None` when this cannot be done here (not
/// root, or no setpriv, or no `argv[0]` that nobody can run).
fn as_nobody(argv: &[&str]) -> Option<Output> {
    let runnable = |p: &str| {
        ["/usr/local/bin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(p).exists())
            || (p.starts_with('/') && Path::new(p).exists())
    };
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and setpriv");
        return None;
    }
    if !runnable(argv[0]) {
        eprintln!("skipped: {} is not installed", argv[0]);
        return None;
    }
    let id = NOBODY.to_string();
    Some(
        Command::new("setpriv")
            .args(["--reuid", &id, "--regid", &id, "--clear-groups", "--"])
            .args(argv)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(Stdio::null())
            .output()
            .expect("setpriv"),
    )
}

/// Connects to a Unix socket and sends one request; prints `connect: ERRNO` or
/// `reply: N bytes`.
const PY_CONNECT: &str = r#"
import errno, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect: " + errno.errorcode.get(e.errno, str(e.errno)))
    sys.exit(0)
s.settimeout(10)
data = b""
try:
    s.sendall(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nConnection: close\r\n\r\n{}")
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
except OSError as e:
    print("io: " + errno.errorcode.get(e.errno, str(e.errno)))
print("reply: %d bytes" % len(data))
"#;

fn python() -> &'static str {
    // Not a user's shim: nobody must be able to run it.
    "/usr/bin/python3"
}

fn stderr_text(srv: &HttpServer) -> String {
    srv.stderr.lock().expect("lock").join("\n")
}

#[test]
fn token_is_made_once_private_and_required() {
    let home = home();
    let srv = HttpServer::start(home.path(), &[], &[]);
    let token = srv
        .token
        .clone()
        .expect("the server uses the state directory's token");
    let file = home.path().join("mcp-token");
    let meta = std::fs::symlink_metadata(&file).expect("token file");
    assert!(meta.file_type().is_file());
    assert_eq!(meta.mode() & 0o7777, 0o600, "the token file is 0600");
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    assert!(token.len() >= 32, "a long random token");
    let said = stderr_text(&srv);
    assert!(said.contains("made a new bearer token in"), "{said}");
    assert!(said.contains("Authorization: Bearer <token>"), "{said}");
    assert!(said.contains(&file.display().to_string()), "{said}");
    assert!(!said.contains(&token), "the token itself is never printed");

    let init = initialize_request(1);
    // No token, a wrong one, a wrong scheme: 401 with a JSON body and the challenge.
    let wrong = format!("Bearer {}x", token);
    let basic = format!("Basic {token}");
    for h in [
        vec![],
        vec![("Authorization", wrong.as_str())],
        vec![("Authorization", basic.as_str())],
    ] {
        let r = http(srv.addr, "POST", &h, Some(&init));
        assert_eq!(r.status, 401, "{h:?}");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{h:?}"
        );
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json"))
        );
        let body: Value = serde_json::from_slice(&r.body).expect("JSON body");
        assert_eq!(body["error"], "unauthorized");
    }
    // Every method and path, not only initialize.
    let r = http(srv.addr, "GET", &[], None);
    assert_eq!(r.status, 401);
    let r = http(srv.addr, "DELETE", &[("Mcp-Session-Id", "x")], None);
    assert_eq!(r.status, 401);
    // The token works.
    let s = srv.session();
    let r = s.call(1, "run", json!({"command": ["echo", "authed"]}));
    assert_eq!(structured(&r.rpc())["stdout"], "authed\n");
    // A session id without the token is not enough.
    let h: Vec<(&str, &str)> = s
        .headers()
        .into_iter()
        .filter(|(k, _)| *k != "Authorization")
        .collect();
    let r = http(
        srv.addr,
        "POST",
        &h,
        Some(&json!({"jsonrpc": "2.0", "id": 2, "method": "ping"})),
    );
    assert_eq!(r.status, 401);
    drop(srv);

    // Later starts reuse it and do not announce a new one.
    let srv = HttpServer::start(home.path(), &[], &[]);
    assert_eq!(srv.token.as_deref(), Some(token.as_str()));
    assert!(!stderr_text(&srv).contains("made a new bearer token"));
    drop(srv);

    // A token file others could read is refused with a sentence, not repaired.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let out = Command::new(BIN)
        .env("AISBX_HOME", home.path())
        .env_remove("AISBX_MCP_TOKEN")
        .args(["--http", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mcp-token") && err.contains("chmod 600"),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(&file).expect("meta").mode() & 0o7777,
        0o640
    );
    // One owned by another user too.
    if is_root() {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::os::unix::fs::chown(&file, Some(NOBODY), None).expect("chown");
        let out = Command::new(BIN)
            .env("AISBX_HOME", home.path())
            .env_remove("AISBX_MCP_TOKEN")
            .args(["--http", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(125));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("owned by uid 65534"), "{err}");
    }
}

#[test]
fn nobody_cannot_read_the_token() {
    let home = home();
    // Let nobody reach the directory, so that only the file's own mode protects it.
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let srv = HttpServer::start(home.path(), &[], &[]);
    let token = srv.token.clone().expect("token");
    let file = home.path().join("mcp-token");
    let Some(out) = as_nobody(&["cat", &file.to_string_lossy()]) else {
        return;
    };
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&token));
    // And without it nobody is turned away over TCP.
    let url = format!("http://{}/mcp", srv.addr);
    let Some(out) = as_nobody(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-H",
        "Accept: application/json, text/event-stream",
        "--data",
        &initialize_request(1).to_string(),
        &url,
    ]) else {
        return;
    };
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401", "{out:?}");
}

#[test]
fn no_auth_on_loopback_says_what_it_means() {
    let home = home();
    let srv = HttpServer::start(home.path(), &["--no-auth"], &[]);
    assert!(srv.token.is_none());
    let said = stderr_text(&srv);
    assert!(
        said.contains("without authentication (--no-auth): any local user can connect and run code as this user"),
        "{said}"
    );
    assert!(
        !home.path().join("mcp-token").exists(),
        "no token made with --no-auth"
    );
    let s = Session::open(srv.addr, None);
    let r = s.call(1, "run", json!({"command": ["echo", "open"]}));
    assert_eq!(structured(&r.rpc())["stdout"], "open\n");
    // --no-auth with a token file is a contradiction.
    let out = Command::new(BIN)
        .env("AISBX_HOME", home.path())
        .args([
            "--http",
            "127.0.0.1:0",
            "--no-auth",
            "--token-file",
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_ne!(out.status.code(), Some(0));
}

fn unix_session(path: &Path) -> (String, Vec<(&'static str, String)>) {
    let r = http_unix(path, "POST", &[], Some(&initialize_request(0)));
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let id = r.header("mcp-session-id").expect("session id").to_string();
    let h = vec![
        ("Mcp-Session-Id", id.clone()),
        ("MCP-Protocol-Version", PROTOCOL.to_string()),
    ];
    let hh: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let n = http_unix(
        path,
        "POST",
        &hh,
        Some(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})),
    );
    assert!(n.status == 202 || n.status == 200, "{}", n.status);
    (id, h)
}

#[test]
fn unix_socket_serves_the_own_user_only() {
    let home = home();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("mcp.sock");
    // A stale socket (nobody listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("stale socket"));
    let srv = UnixServer::start(home.path(), &sock);
    let meta = std::fs::symlink_metadata(&sock).expect("socket");
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    assert_eq!(meta.mode() & 0o7777, 0o600, "the socket is 0600");
    assert!(
        !home.path().join("mcp-token").exists(),
        "no token for the socket"
    );

    // The own user is served without a token.
    let (_id, h) = unix_session(&sock);
    let hh: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = http_unix(
        &sock,
        "POST",
        &hh,
        Some(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "run", "arguments": {"command": ["echo", "over-unix"]}}})),
    );
    assert_eq!(structured(&r.rpc())["stdout"], "over-unix\n");

    // nobody can reach the directory but not the socket: EACCES.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let p = sock.to_string_lossy().to_string();
    let Some(out) = as_nobody(&[python(), "-c", PY_CONNECT, &p]) else {
        return;
    };
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said.trim(), "connect: EACCES", "{out:?}");

    // Were the socket's mode loosened behind the server's back, the peer check
    // still closes nobody's connection without an answer.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = as_nobody(&[python(), "-c", PY_CONNECT, &p]).expect("as nobody");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.trim().ends_with("reply: 0 bytes"), "{out:?}");
    let log = srv.stderr.lock().expect("lock").join("\n");
    assert!(
        log.contains("closed a connection from another user"),
        "{log}"
    );
    // The own user still is.
    let (_id2, _) = unix_session(&sock);
    // On SIGTERM the server ends and removes its socket.
    let mut srv = srv;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(srv.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = srv.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert!(!sock.exists(), "the socket is removed on exit");
}

#[test]
fn unix_socket_refuses_a_path_that_is_not_a_socket() {
    let home = home();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("precious");
    std::fs::write(&file, "keep").expect("write");
    let spec = format!("unix:{}", file.display());
    let out = Command::new(BIN)
        .env("AISBX_HOME", home.path())
        .args(["--listen", &spec])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "keep");
    let out = Command::new(BIN)
        .env("AISBX_HOME", home.path())
        .args(["--listen", "127.0.0.1:80"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unix:PATH"));
}
