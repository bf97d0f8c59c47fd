//! The real `aisbx-mcp --http` over raw HTTP/1.1: sessions, Host/Origin checks, bearer
//! tokens, the loopback rule, 32 concurrent runs and clients vanishing mid-call.
//! (Servers here use the state directory's token unless a test says otherwise.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn structured(r: &Value) -> &Value {
    assert_eq!(r["result"]["isError"], json!(false), "tool failed: {r}");
    &r["result"]["structuredContent"]
}

#[test]
fn session_lifecycle() {
    let home = home();
    let srv = HttpServer::start(home.path(), &[], &[]);
    let s = srv.session();

    let list = s.post(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
    assert_eq!(list.status, 200);
    assert_eq!(
        list.rpc()["result"]["tools"].as_array().map(Vec::len),
        Some(15)
    );

    // No session id: 400. Unknown session id: 404.
    let tools_list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let auth = srv.auth();
    let (k, v) = (auth[0].0, auth[0].1.as_str());
    let r = http(srv.addr, "POST", &[(k, v)], Some(&tools_list));
    assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(&r.body));
    let r = http(
        srv.addr,
        "POST",
        &[("Mcp-Session-Id", "no-such-session"), (k, v)],
        Some(&tools_list),
    );
    assert_eq!(r.status, 404);

    // DELETE ends the session; it is then unknown.
    let r = http(srv.addr, "DELETE", &s.headers(), None);
    assert!(
        r.status == 200 || r.status == 202 || r.status == 204,
        "DELETE: {}",
        r.status
    );
    let r = s.post(&tools_list);
    assert_eq!(r.status, 404, "after DELETE: {}", r.status);
}

#[test]
fn run_over_http_and_bad_arguments() {
    let home = home();
    let srv = HttpServer::start(home.path(), &[], &[]);
    let s = srv.session();
    let r = s.call(1, "run", json!({"command": ["echo", "over-http"]}));
    assert_eq!(r.status, 200);
    assert_eq!(structured(&r.rpc())["stdout"], "over-http\n");
    let r = s.call(2, "run", json!({"command": ["ls"], "files": {"/abs": "x"}}));
    let e = r.rpc();
    assert_eq!(e["error"]["code"], -32602, "{e}");
    assert_eq!(e["error"]["data"]["field"], "files", "{e}");
    // Malformed JSON body: an HTTP error, and the server keeps serving.
    let bad = {
        use std::io::{Read, Write};
        let mut st = std::net::TcpStream::connect(srv.addr).expect("connect");
        let body = "{not json";
        let req = format!(
            "POST /mcp HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nAuthorization: Bearer {}\r\nMcp-Session-Id: {}\r\nContent-Length: {}\r\n\r\n{}",
            srv.addr,
            srv.token.as_deref().expect("token"),
            s.id,
            body.len(),
            body
        );
        st.write_all(req.as_bytes()).expect("write");
        let mut buf = Vec::new();
        let _ = st.read_to_end(&mut buf);
        parse_response(&buf)
    };
    assert!(
        bad.status >= 400 && bad.status < 500,
        "malformed JSON: {}",
        bad.status
    );
    let r = s.post(&json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}));
    assert_eq!(r.rpc()["result"], json!({}));
}

#[test]
fn host_and_origin_are_checked() {
    let home = home();
    let srv = HttpServer::start(home.path(), &["--no-auth"], &[]);
    let init = initialize_request(1);
    let r = http(
        srv.addr,
        "POST",
        &[("Host", "evil.example:80")],
        Some(&init),
    );
    assert_eq!(r.status, 403, "foreign Host");
    let r = http(
        srv.addr,
        "POST",
        &[("Origin", "http://evil.example")],
        Some(&init),
    );
    assert_eq!(r.status, 403, "foreign Origin");
    let r = http(
        srv.addr,
        "POST",
        &[("Origin", "http://localhost:3000")],
        Some(&init),
    );
    assert_eq!(r.status, 200, "loopback Origin");
    let r = http(srv.addr, "POST", &[("Host", "localhost")], Some(&init));
    assert_eq!(r.status, 200, "loopback Host");
}

#[test]
fn extra_origins_can_be_allowed() {
    let home = home();
    let srv = HttpServer::start(
        home.path(),
        &["--no-auth", "--allow-origin", "https://app.example.com:443"],
        &[],
    );
    let init = initialize_request(1);
    let r = http(
        srv.addr,
        "POST",
        &[("Origin", "https://app.example.com")],
        Some(&init),
    );
    assert_eq!(r.status, 200);
    let r = http(
        srv.addr,
        "POST",
        &[("Origin", "https://other.example.com")],
        Some(&init),
    );
    assert_eq!(r.status, 403);
}

#[test]
fn bearer_token_is_required_when_configured() {
    let home = home();
    let token_file = home.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").expect("write token");
    let tf = token_file.to_string_lossy().to_string();
    // A token file others can read is refused.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = Command::new(BIN)
        .env("AISBX_HOME", home.path())
        .env_remove("AISBX_MCP_TOKEN")
        .args(["--http", "127.0.0.1:0", "--token-file", &tf])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mode 0644") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let srv = HttpServer::start(home.path(), &["--token-file", &tf], &[]);
    let init = initialize_request(1);
    let r = http(srv.addr, "POST", &[], Some(&init));
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer"))
    );
    let r = http(
        srv.addr,
        "POST",
        &[("Authorization", "Bearer wrong")],
        Some(&init),
    );
    assert_eq!(r.status, 401);
    let r = http(
        srv.addr,
        "POST",
        &[("Authorization", "Basic czNjcmV0LXRva2Vu")],
        Some(&init),
    );
    assert_eq!(r.status, 401);
    let s = Session::open(srv.addr, Some("s3cret-token"));
    let r = s.call(1, "run", json!({"command": ["echo", "authed"]}));
    assert_eq!(structured(&r.rpc())["stdout"], "authed\n");
    // Also from the environment.
    let srv2 = HttpServer::start(home.path(), &[], &[("AISBX_MCP_TOKEN", "env-token")]);
    assert_eq!(http(srv2.addr, "POST", &[], Some(&init)).status, 401);
    Session::open(srv2.addr, Some("env-token"));
}

#[test]
fn no_auth_is_refused_on_a_non_loopback_address() {
    let home = home();
    let out = Command::new(BIN)
        .env("AISBX_HOME", home.path())
        .env_remove("AISBX_MCP_TOKEN")
        .args(["--http", "0.0.0.0:0", "--no-auth"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing --no-auth") && err.contains("not a loopback address"),
        "{err}"
    );
    // Without --no-auth the same address is served, with the token.
    let srv = HttpServer::start_at(home.path(), "0.0.0.0:0", &[], &[]);
    assert!(srv.token.is_some());
    let init = initialize_request(1);
    let lo: std::net::SocketAddr = format!("127.0.0.1:{}", srv.addr.port())
        .parse()
        .expect("addr");
    assert_eq!(http(lo, "POST", &[], Some(&init)).status, 401);
}

#[test]
fn thirty_two_concurrent_runs() {
    let home = home();
    // 8 at once and the other 24 waiting their turn: all 32 complete.
    let srv = HttpServer::start(home.path(), &["--max-runs", "8", "--max-queued", "32"], &[]);
    let s = std::sync::Arc::new(srv.session());
    let handles: Vec<_> = (0..32)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || {
                let r = s.call(100 + i, "run", json!({"command": ["sh", "-c", format!("echo run-{i}; sleep 0.2; echo done-{i}")]}));
                (i, r.status, r.rpc())
            })
        })
        .collect();
    for h in handles {
        let (i, status, rpc) = h.join().expect("thread");
        assert_eq!(status, 200);
        assert_eq!(rpc["id"], json!(100 + i));
        assert_eq!(
            structured(&rpc)["stdout"],
            format!("run-{i}\ndone-{i}\n"),
            "{rpc}"
        );
    }
    let log = home.path().join("audit.jsonl");
    let report = aisbx_service::audit::verify(&log).expect("verify");
    assert!(report.is_ok(), "{report:?}");
    let lines = aisbx_service::audit::tail(&log, 1000).expect("tail");
    assert!(
        lines
            .iter()
            .filter(|l| l["front_end"] == "mcp-http" && l["tool"] == "run")
            .count()
            >= 32
    );
}

#[test]
fn a_client_vanishing_mid_call_leaves_nothing_running() {
    let home = home();
    let srv = HttpServer::start(home.path(), &[], &[]);
    let s = srv.session();
    let marker = unique_sleep();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "run", "arguments": {"command": ["sh", "-c", format!("sleep {marker}")]}}});
    let conn = http_start(srv.addr, "POST", &s.headers(), Some(&body));
    assert!(
        wait_present(&marker, Duration::from_secs(20)),
        "the run did not start"
    );
    drop(conn);
    assert!(
        wait_gone(&marker, Duration::from_secs(10)),
        "the run outlived its client"
    );
    // The server keeps serving, in the same session and in new ones.
    let r = s.call(2, "run", json!({"command": ["echo", "still-here"]}));
    assert_eq!(structured(&r.rpc())["stdout"], "still-here\n");
    let s2 = srv.session();
    let r = s2.post(&json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}));
    assert_eq!(r.rpc()["result"], json!({}));
}

#[test]
fn cancellation_over_http() {
    let home = home();
    let srv = HttpServer::start(home.path(), &[], &[]);
    let s = std::sync::Arc::new(srv.session());
    let marker = unique_sleep();
    let s2 = s.clone();
    let m2 = marker.clone();
    let call = std::thread::spawn(move || {
        s2.call(
            7,
            "run",
            json!({"command": ["sh", "-c", format!("sleep {m2}")]}),
        )
    });
    assert!(
        wait_present(&marker, Duration::from_secs(20)),
        "the run did not start"
    );
    let r = s.post(
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 7, "reason": "test"}}),
    );
    assert_eq!(r.status, 202);
    assert!(
        wait_gone(&marker, Duration::from_secs(5)),
        "the run was not killed"
    );
    let _ = call.join();
    let r = s.call(8, "run", json!({"command": ["echo", "ok"]}));
    assert_eq!(structured(&r.rpc())["stdout"], "ok\n");
}

#[test]
fn progress_notifications_over_http() {
    let home = home();
    let srv = HttpServer::start(home.path(), &[], &[]);
    let s = srv.session();
    let r = s.post(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "run", "arguments": {"command": ["sh", "-c", "echo a; sleep 0.3; echo b"]},
        "_meta": {"progressToken": 99}}}),
    );
    let msgs = r.messages();
    let progress: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert!(progress.len() >= 2, "{msgs:?}");
    assert!(progress.iter().all(|p| p["params"]["progressToken"] == 99));
    assert_eq!(structured(&r.rpc())["stdout"], "a\nb\n");
}
