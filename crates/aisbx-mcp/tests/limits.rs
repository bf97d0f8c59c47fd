//! What one MCP caller may ask for: per-call limits may lower the profile's, never
//! raise them; and the server carries out at most --max-runs runs at once, with a
//! bounded queue, answering "busy" past it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn text(r: &Value) -> String {
    r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_caller_cannot_raise_the_profiles_timeout() {
    let home = home();
    let mut s = StdioServer::start_initialized(home.path());
    // strict allows 10 s: 20 is refused, naming the field and the profile's value,
    // and nothing runs.
    let r = s.call(
        1,
        "run",
        json!({"command": ["sh", "-c", "echo ran"], "profile": "strict", "timeout_secs": 20}),
    );
    assert_eq!(r["result"]["isError"], json!(true), "{r}");
    let t = text(&r);
    assert!(
        t.contains("timeout_secs 20 s is above profile 'strict''s limit of 10 s")
            && t.contains("never raise"),
        "{t}"
    );
    assert!(!t.contains("ran"));
    // The default profile's 30 s, likewise.
    let r = s.call(2, "run", json!({"command": ["true"], "timeout_secs": 31}));
    assert_eq!(r["result"]["isError"], json!(true), "{r}");
    assert!(text(&r).contains("limit of 30 s"), "{r}");
    // Equal is fine; lower is applied.
    let r = s.call(
        3,
        "run",
        json!({"command": ["echo", "ok"], "profile": "strict", "timeout_secs": 10}),
    );
    assert_eq!(r["result"]["structuredContent"]["stdout"], "ok\n", "{r}");
    let start = Instant::now();
    let r = s.call(
        4,
        "run",
        json!({"command": ["sh", "-c", "sleep 8"], "profile": "strict", "timeout_secs": 0.5}),
    );
    let sc = &r["result"]["structuredContent"];
    assert_eq!(sc["timed_out"], json!(true), "{r}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the lower timeout applied"
    );
    // The refusals are in the audit log.
    let lines = aisbx_service::audit::tail(&home.path().join("audit.jsonl"), 100).expect("tail");
    assert!(
        lines
            .iter()
            .any(|l| l["tool"] == "run" && l["decision"] == "deny"),
        "{lines:?}"
    );
}

#[test]
fn past_the_queue_a_call_is_told_busy() {
    let home = home();
    let srv = HttpServer::start(home.path(), &["--max-runs", "1", "--max-queued", "1"], &[]);
    let s = std::sync::Arc::new(srv.session());
    let marker = unique_sleep();
    let first = {
        let s = s.clone();
        let m = marker.clone();
        std::thread::spawn(move || {
            s.call(
                1,
                "run",
                json!({"command": ["sh", "-c", format!("sleep {m} & sleep 1.5; echo first")]}),
            )
            .rpc()
        })
    };
    assert!(
        wait_present(&marker, Duration::from_secs(20)),
        "the first run did not start"
    );
    let second = {
        let s = s.clone();
        std::thread::spawn(move || {
            s.call(2, "run", json!({"command": ["echo", "second"]}))
                .rpc()
        })
    };
    // Give the second call time to take its place in the queue.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let third = s
        .call(3, "run", json!({"command": ["echo", "third"]}))
        .rpc();
    assert_eq!(third["result"]["isError"], json!(true), "{third}");
    assert!(
        text(&third).starts_with("busy: 1 runs are running and 1 waiting"),
        "{third}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "busy is answered at once"
    );
    // A build's setup is a run too.
    let b = s.call(4, "build", json!({"setup": ["true"]})).rpc();
    assert!(text(&b).starts_with("busy:"), "{b}");
    // So is file_write (it writes from inside a sandbox run); listings are not.
    let w = s
        .call(
            6,
            "file_write",
            json!({"sandbox_id": "none", "path": "a", "content": ""}),
        )
        .rpc();
    assert!(text(&w).starts_with("busy:"), "{w}");
    let l = s.call(7, "sandbox_list", json!({})).rpc();
    assert_eq!(l["result"]["isError"], json!(false), "{l}");
    // The admitted calls complete, in turn.
    let f = first.join().expect("first");
    assert_eq!(f["result"]["structuredContent"]["stdout"], "first\n", "{f}");
    let sec = second.join().expect("second");
    assert_eq!(
        sec["result"]["structuredContent"]["stdout"], "second\n",
        "{sec}"
    );
    // And the server takes new runs again.
    let r = s
        .call(5, "run", json!({"command": ["echo", "again"]}))
        .rpc();
    assert_eq!(r["result"]["structuredContent"]["stdout"], "again\n", "{r}");
    assert!(wait_gone(&marker, Duration::from_secs(60)));
}

#[test]
fn a_waiting_client_that_goes_away_gives_up_its_place() {
    let home = home();
    let srv = HttpServer::start(home.path(), &["--max-runs", "1", "--max-queued", "1"], &[]);
    let s = std::sync::Arc::new(srv.session());
    let first_marker = unique_sleep();
    let first = {
        let s = s.clone();
        let m = first_marker.clone();
        std::thread::spawn(move || {
            s.call(
                1,
                "run",
                json!({"command": ["sh", "-c", format!("sleep {m} & sleep 3; echo first")]}),
            )
            .rpc()
        })
    };
    assert!(wait_present(&first_marker, Duration::from_secs(20)));
    // A second call waits in the queue, then its client disconnects.
    let gone_marker = unique_sleep();
    let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "run", "arguments": {"command": ["sh", "-c", format!("sleep {gone_marker}")]}}});
    let conn = http_start(s.addr, "POST", &s.headers(), Some(&body));
    std::thread::sleep(Duration::from_millis(800));
    let busy = s.call(3, "run", json!({"command": ["true"]})).rpc();
    assert!(
        text(&busy).starts_with("busy:"),
        "the queue is full: {busy}"
    );
    drop(conn);
    std::thread::sleep(Duration::from_millis(400));
    // Its place is free again: this call waits, then runs.
    let third = s
        .call(4, "run", json!({"command": ["echo", "third"]}))
        .rpc();
    assert_eq!(
        third["result"]["structuredContent"]["stdout"], "third\n",
        "{third}"
    );
    let f = first.join().expect("first");
    assert_eq!(f["result"]["structuredContent"]["stdout"], "first\n", "{f}");
    // The abandoned call never ran.
    assert!(processes_with(&gone_marker).is_empty());
    let log = aisbx_service::audit::tail(&home.path().join("audit.jsonl"), 100).expect("tail");
    assert!(
        log.iter()
            .any(|l| l["decision"] == "deny" && l["result"]["error"] == "cancelled"),
        "{log:?}"
    );
    assert!(wait_gone(&first_marker, Duration::from_secs(60)));
}
