//! Every malformed message gets a JSON-RPC error, over stdio and HTTP, and the
//! server keeps serving: through the real `aisbx-mcp` binary.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use common::*;

/// The next message with `id` null (an error for a message whose id is unknown).
fn next_null_id_error(s: &mut StdioServer) -> Value {
    if let Some(i) = s.backlog.iter().position(|m| m["id"].is_null()) {
        return s.backlog.remove(i);
    }
    loop {
        let m = s
            .recv(Duration::from_secs(60))
            .expect("no reply to a malformed message");
        if m["id"].is_null() {
            return m;
        }
        s.backlog.push(m);
    }
}

#[test]
fn stdio_answers_every_malformed_message() {
    let home = home();
    let mut s = StdioServer::start_initialized(home.path());
    s.send_raw("this is not json");
    let e = next_null_id_error(&mut s);
    assert_eq!(e["error"]["code"], -32700, "{e}");
    s.send_raw("{\"jsonrpc\": \"2.0\", \"id\": 5, \"method\": ");
    assert_eq!(next_null_id_error(&mut s)["error"]["code"], -32700);
    // A byte order mark is allowed (RFC 8259).
    s.send_raw("\u{feff}{\"jsonrpc\": \"2.0\", \"id\": 3, \"method\": \"ping\"}");
    assert_eq!(s.response(3, Duration::from_secs(30))["result"], json!({}));
    s.send_raw("[1, 2, 3]");
    assert_eq!(next_null_id_error(&mut s)["error"]["code"], -32600);
    s.send_raw("{\"id\": 1, \"method\": \"ping\"}");
    let e = s.response(1, Duration::from_secs(60));
    assert_eq!(e["error"]["code"], -32600, "{e}");
    // A 60 MB line: refused without being kept, and the next line is served.
    let big = "x".repeat(60 << 20);
    s.send_raw(&big);
    drop(big);
    let e = next_null_id_error(&mut s);
    assert_eq!(e["error"]["code"], -32600, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("16 MiB")),
        "{e}"
    );
    // tools/call without params, or with string arguments: -32602 with a sentence.
    let r = s.request(json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call"}));
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert_eq!(r["error"]["data"]["field"], "params", "{r}");
    let r = s.request(json!({"jsonrpc": "2.0", "id": 11, "method": "tools/call",
        "params": {"name": "run", "arguments": "print(1)"}}));
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert_eq!(r["error"]["data"]["field"], "arguments", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("must be an object")),
        "{r}"
    );
    // A 10 MB tool name or method is echoed cut to 200 bytes.
    let long = "t".repeat(10 << 20);
    let r = s.call(12, &long, json!({}));
    assert_eq!(r["error"]["code"], -32602, "{r:.300}");
    assert!(r.to_string().len() < 1000, "{:.300}", r.to_string());
    let r = s.request(json!({"jsonrpc": "2.0", "id": 13, "method": long}));
    assert_eq!(r["error"]["code"], -32601);
    assert!(r.to_string().len() < 1000, "{:.300}", r.to_string());
    // Long argument names and values are not echoed whole either.
    for (i, args) in [
        json!({"name": long, "sandbox_id": "x"}),
        json!({"name": "s", "sandbox_id": long}),
        json!({"name": "s", "sandbox_id": "x", long.clone(): 1}),
    ]
    .into_iter()
    .enumerate()
    {
        let r = s.call(20 + i as u64, "snapshot_create", args);
        assert!(r.to_string().len() < 1000, "{:.300}", r.to_string());
        assert!(
            r["error"]["code"] == -32602 || r["result"]["isError"] == true,
            "{:.300}",
            r.to_string()
        );
    }
    // Still serving.
    let r = s.call(14, "run", json!({"command": ["echo", "ok"]}));
    assert_eq!(r["result"]["structuredContent"]["stdout"], "ok\n", "{r}");
    assert!(s.child.try_wait().expect("try_wait").is_none());
}

/// POSTs raw bytes as JSON to the session's endpoint.
fn post_raw(srv: &HttpServer, session: &Session, body: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n",
        srv.addr,
        body.len()
    );
    for (k, v) in session.headers() {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write");
    // A server refusing an oversized body may stop reading it: the answer still comes.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let r = parse_response(&raw);
    let v = serde_json::from_slice(&r.body).unwrap_or_else(|_| {
        r.messages()
            .into_iter()
            .next()
            .unwrap_or_else(|| json!({"raw": String::from_utf8_lossy(&r.body)}))
    });
    (r.status, v)
}

#[test]
fn http_answers_a_body_that_is_not_json_with_400() {
    let home = home();
    let srv = HttpServer::start(home.path(), &[], &[]);
    let s = srv.session();
    let (status, v) = post_raw(&srv, &s, b"this is not json");
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], -32700, "{v}");
    let (status, v) = post_raw(&srv, &s, b"{\"jsonrpc\":\"2.0\",\"id\":1,");
    assert_eq!((status, v["error"]["code"].clone()), (400, json!(-32700)));
    let (status, v) = post_raw(&srv, &s, b"{\"hello\": 1}");
    assert_eq!((status, v["error"]["code"].clone()), (400, json!(-32600)));
    let (status, v) = post_raw(
        &srv,
        &s,
        br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"run","arguments":"x"}}"#,
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert_eq!(v["id"], 4, "{v}");
    // A body over the 16 MiB limit: 413 with a JSON-RPC error.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":6,"method":"ping","params":{{"x":"{}"}}}}"#,
        "y".repeat(16 << 20)
    );
    let (status, v) = post_raw(&srv, &s, big.as_bytes());
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["error"]["code"], -32600, "{v}");
    // Still serving.
    let r = s.call(5, "run", json!({"command": ["echo", "ok"]}));
    assert_eq!(r.rpc()["result"]["structuredContent"]["stdout"], "ok\n");
}

#[test]
fn an_unknown_option_exits_125() {
    let out = std::process::Command::new(BIN)
        .arg("--bogus")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
}
