//! The real `aisbx-mcp` binary over stdio: handshake, tools, bad input, streaming,
//! cancellation, disconnects and the audit log.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn structured(r: &Value) -> &Value {
    assert_eq!(r["result"]["isError"], json!(false), "tool failed: {r}");
    &r["result"]["structuredContent"]
}

fn field_of_error(r: &Value) -> (i64, String) {
    let e = &r["error"];
    (
        e["code"].as_i64().unwrap_or_default(),
        e["data"]["field"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn initialize_lists_tools_with_schemas() {
    let home = home();
    let mut s = StdioServer::start(home.path());
    let init = s.request(initialize_request(1));
    let caps = &init["result"]["capabilities"];
    assert!(caps.get("tools").is_some(), "{init}");
    assert!(caps.get("logging").is_some(), "{init}");
    assert_eq!(init["result"]["serverInfo"]["name"], "aisbx");
    s.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let list = s.request(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}));
    let tools = list["result"]["tools"].as_array().expect("tools");
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "run",
            "build",
            "profile_list",
            "sandbox_list",
            "sandbox_destroy",
            "file_write",
            "file_read",
            "file_list",
            "file_delete",
            "snapshot_create",
            "snapshot_restore",
            "snapshot_list",
            "snapshot_diff",
            "snapshot_delete",
            "quota"
        ]
    );
    for t in tools {
        assert!(
            t["description"].as_str().is_some_and(|d| d.len() > 20),
            "{t}"
        );
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        assert_eq!(t["outputSchema"]["type"], "object", "{t}");
    }
    let ping = s.request(json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}));
    assert_eq!(ping["result"], json!({}));
    let lvl = s.request(json!({"jsonrpc": "2.0", "id": 4, "method": "logging/setLevel", "params": {"level": "warning"}}));
    assert_eq!(lvl["result"], json!({}), "{lvl}");
}

#[test]
fn run_returns_a_run_result() {
    let home = home();
    let mut s = StdioServer::start_initialized(home.path());
    let r = s.call(1, "run", json!({"command": ["echo", "hello"]}));
    let sc = structured(&r);
    assert_eq!(sc["stdout"], "hello\n", "{r}");
    assert_eq!(sc["exit_code"], 0);
    for f in [
        "signal",
        "timed_out",
        "oom_killed",
        "stderr",
        "stdout_truncated",
        "stderr_truncated",
        "duration_ms",
        "cpu_ms",
        "max_rss_kib",
        "profile",
        "sandbox_id",
    ] {
        assert!(sc.get(f).is_some(), "missing {f}: {sc}");
    }
    let text = r["result"]["content"][0]["text"].as_str().expect("text");
    assert!(text.starts_with("exit 0"), "{text}");
    assert!(text.contains("hello"), "{text}");

    // A non-zero exit is a normal result, not an error.
    let r = s.call(
        2,
        "run",
        json!({"command": ["sh", "-c", "echo oops >&2; exit 3"]}),
    );
    let sc = structured(&r);
    assert_eq!(sc["exit_code"], 3);
    assert_eq!(sc["stderr"], "oops\n");

    // stdin and files.
    let r = s.call(
        3,
        "run",
        json!({"command": ["sh", "-c", "cat; cat in/a.txt"], "stdin": "from-stdin\n",
        "files": {"in/a.txt": "from-file\n"}}),
    );
    assert_eq!(structured(&r)["stdout"], "from-stdin\nfrom-file\n", "{r}");

    // A timeout is a normal result too.
    let r = s.call(
        4,
        "run",
        json!({"command": ["sleep", "10"], "timeout_secs": 0.5}),
    );
    let sc = structured(&r);
    assert_eq!(sc["timed_out"], true, "{r}");
}

#[test]
fn bad_arguments_are_invalid_params_naming_the_field() {
    let home = home();
    let mut s = StdioServer::start_initialized(home.path());
    let cases = [
        (json!({}), "code"),
        (json!({"code": "print(1)", "command": ["ls"]}), "code"),
        (json!({"code": 42}), "code"),
        (json!({"command": "ls -la"}), "command"),
        (
            json!({"command": ["ls"], "timeout_secs": "soon"}),
            "timeout_secs",
        ),
        (
            json!({"command": ["ls"], "files": {"/etc/passwd": "x"}}),
            "files",
        ),
        (
            json!({"command": ["ls"], "files": {"../escape": "x"}}),
            "files",
        ),
        (
            json!({"command": ["ls"], "files": {"a/../../b": "x"}}),
            "files",
        ),
        (json!({"command": ["ls"], "stdin": 5}), "stdin"),
        (json!({"command": ["ls"], "bogus": 1}), "bogus"),
    ];
    for (i, (args, field)) in cases.iter().enumerate() {
        let r = s.call(10 + i as u64, "run", args.clone());
        assert_eq!(
            field_of_error(&r),
            (-32602, field.to_string()),
            "{args}: {r}"
        );
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(field)),
            "{r}"
        );
    }
    let r = s.call(30, "build", json!({"setup": "not-a-list"}));
    assert_eq!(field_of_error(&r), (-32602, "setup".to_string()), "{r}");
    let r = s.call(31, "profile_list", json!({"x": 1}));
    assert_eq!(field_of_error(&r).0, -32602, "{r}");
    let r = s.call(32, "no_such_tool", json!({}));
    assert_eq!(field_of_error(&r).0, -32602, "{r}");
    // Still serving.
    let r = s.call(33, "run", json!({"command": ["true"]}));
    assert_eq!(structured(&r)["exit_code"], 0);
}

#[test]
fn malformed_json_and_unknown_methods_do_not_crash() {
    let home = home();
    let mut s = StdioServer::start_initialized(home.path());
    s.send_raw("this is not json");
    s.send_raw("{\"jsonrpc\": \"2.0\", \"id\": 5, \"method\": ");
    s.send_raw("[1, 2, 3]");
    s.send_raw("{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"tools/call\",\"params\":\"nope\"}");
    let r = s.request(json!({"jsonrpc": "2.0", "id": 7, "method": "no/such/method"}));
    assert_eq!(r["error"]["code"], -32601, "{r}");
    let r = s.request(json!({"jsonrpc": "2.0", "id": 8, "method": "ping"}));
    assert_eq!(r["result"], json!({}), "{r}");
    assert!(
        s.child.try_wait().expect("try_wait").is_none(),
        "server exited"
    );
}

#[test]
fn progress_streams_output_while_running() {
    let home = home();
    let mut s = StdioServer::start_initialized(home.path());
    let started = Instant::now();
    s.send(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "run",
        "arguments": {"command": ["sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.4; done"]},
        "_meta": {"progressToken": "tok-1"}}}),
    );
    let mut progress: Vec<(f64, String, Duration)> = Vec::new();
    let mut logs = 0;
    let response = loop {
        let m = s.recv(Duration::from_secs(30)).expect("message");
        match m["method"].as_str() {
            Some("notifications/progress") => {
                assert_eq!(m["params"]["progressToken"], "tok-1");
                progress.push((
                    m["params"]["progress"].as_f64().expect("progress"),
                    m["params"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    started.elapsed(),
                ));
            }
            Some("notifications/message") => logs += 1,
            _ => break m,
        }
    };
    let done = started.elapsed();
    assert_eq!(structured(&response)["stdout"], "line1\nline2\nline3\n");
    assert!(progress.len() >= 2, "{progress:?}");
    assert!(
        progress.windows(2).all(|w| w[1].0 > w[0].0),
        "not increasing: {progress:?}"
    );
    let all: String = progress.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(all, "line1\nline2\nline3\n");
    // The first line arrived well before the run ended.
    assert!(
        progress[0].2 + Duration::from_millis(500) < done,
        "{progress:?} done {done:?}"
    );
    assert!(logs >= 1, "no log messages");
}

#[test]
fn cancellation_kills_the_run_and_the_session_stays_usable() {
    let home = home();
    let mut s = StdioServer::start_initialized(home.path());
    let marker = unique_sleep();
    s.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "run", "arguments": {"command": ["sh", "-c", format!("sleep {marker}; echo never")]}}}));
    assert!(
        wait_present(&marker, Duration::from_secs(20)),
        "the run did not start"
    );
    s.send(
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 1, "reason": "test"}}),
    );
    assert!(
        wait_gone(&marker, Duration::from_secs(5)),
        "the run was not killed"
    );
    let r = s.call(2, "run", json!({"command": ["echo", "after"]}));
    assert_eq!(structured(&r)["stdout"], "after\n");
}

#[test]
fn client_disconnect_leaves_nothing_running() {
    let home = home();
    let mut s = StdioServer::start_initialized(home.path());
    let marker = unique_sleep();
    s.send(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "run", "arguments": {"command": ["sh", "-c", format!("sleep {marker}")]}}}),
    );
    assert!(
        wait_present(&marker, Duration::from_secs(20)),
        "the run did not start"
    );
    s.close_stdin();
    assert!(
        wait_gone(&marker, Duration::from_secs(10)),
        "the run outlived its client"
    );
    assert!(
        s.wait_exit(Duration::from_secs(15)).is_some(),
        "the server did not exit"
    );
}

#[test]
fn build_then_run_in_the_sandbox() {
    let home = home();
    let mut s = StdioServer::start_initialized(home.path());
    let b = s.call(
        1,
        "build",
        json!({"files": {"data.txt": "42\n"},
        "setup": ["echo setup-ok > made.txt"]}),
    );
    let sc = structured(&b);
    let id = sc["sandbox_id"].as_str().expect("sandbox_id").to_string();
    assert!(
        sc["created_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{b}"
    );
    assert_eq!(sc["setup"].as_array().map(Vec::len), Some(1), "{b}");
    assert_eq!(sc["setup"][0]["exit_code"], 0, "{b}");
    let r = s.call(2, "run", json!({"sandbox_id": id, "command": ["sh", "-c", "cat data.txt made.txt; echo kept > later.txt"]}));
    let rc = structured(&r);
    assert_eq!(rc["stdout"], "42\nsetup-ok\n", "{r}");
    assert_eq!(rc["sandbox_id"], json!(id));
    let r = s.call(
        3,
        "run",
        json!({"sandbox_id": id, "command": ["cat", "later.txt"]}),
    );
    assert_eq!(structured(&r)["stdout"], "kept\n", "{r}");
    // An unknown sandbox is a tool error, not a protocol error.
    let r = s.call(
        4,
        "run",
        json!({"sandbox_id": "no-such-sandbox-xyz", "command": ["true"]}),
    );
    assert_eq!(r["result"]["isError"], true, "{r}");
    let p = s.call(5, "profile_list", json!({}));
    assert!(
        structured(&p)["profiles"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{p}"
    );
}

#[test]
fn every_call_is_audited_and_the_chain_verifies() {
    let home = home();
    {
        let mut s = StdioServer::start_initialized(home.path());
        s.call(1, "run", json!({"command": ["true"]}));
        s.call(2, "run", json!({"code": "x", "command": ["true"]}));
        s.call(3, "profile_list", json!({}));
    }
    let log = home.path().join("audit.jsonl");
    let report = aisbx_service::audit::verify(&log).expect("verify");
    assert!(report.is_ok(), "{report:?}");
    let lines = aisbx_service::audit::tail(&log, 100).expect("tail");
    assert!(lines.len() >= 3, "{lines:?}");
    assert!(
        lines.iter().all(|l| l["front_end"] == "mcp-stdio"),
        "{lines:?}"
    );
    assert!(lines.iter().all(|l| l["client"] == "aisbx-it"), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l["tool"] == "run" && l["decision"] == "deny"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l["tool"] == "profile_list"),
        "{lines:?}"
    );
}

#[test]
fn progress_is_coalesced_and_nothing_is_lost() {
    let home = home();
    let mut s = StdioServer::start_initialized(home.path());
    let started = Instant::now();
    // 20,000 lines, one write each.
    s.send(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "run",
        "arguments": {"command": ["sh", "-c", "i=0; while [ $i -lt 20000 ]; do echo line$i; i=$((i+1)); done"]},
        "_meta": {"progressToken": "tok-2"}}}),
    );
    let mut texts: Vec<String> = Vec::new();
    let response = loop {
        let m = s.recv(Duration::from_secs(60)).expect("message");
        match m["method"].as_str() {
            Some("notifications/progress") => texts.push(
                m["params"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
            Some(_) => {}
            None => break m,
        }
    };
    let took = started.elapsed();
    eprintln!("{} progress notifications in {took:?}", texts.len());
    let expected: String = (0..20_000).map(|i| format!("line{i}\n")).collect();
    assert_eq!(structured(&response)["stdout"], expected.as_str());
    let joined: String = texts.concat();
    assert!(joined == expected, "streamed text differs from the output");
    // At most one per 50 ms, plus one per full 16 KiB, plus the last.
    let bound = took.as_millis() as usize / 50 + expected.len() / (16 * 1024) + 2;
    assert!(
        texts.len() <= bound,
        "{} notifications in {took:?} (bound {bound})",
        texts.len()
    );
    assert!(texts.len() < 500, "{} notifications", texts.len());
    assert!(texts.iter().all(|t| t.len() <= 16 * 1024));
}

#[test]
fn run_takes_env_memory_cpus_and_args_within_the_profile() {
    let home = home();
    let mut s = StdioServer::start_initialized(home.path());
    let r = s.call(
        1,
        "run",
        json!({"language": "sh", "code": "echo \"$GREETING $1 $2\"; cat /sys/fs/cgroup/memory.max 2>/dev/null || true",
               "args": ["a b", "c"], "env": {"GREETING": "hi"}, "memory": "64M", "cpus": 0.5}),
    );
    let out = structured(&r)["stdout"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(out.starts_with("hi a b c\n"), "{r}");
    // A raise is refused as an isError result naming the request's field.
    for (i, (args, field)) in [
        (json!({"command": ["true"], "memory": "1T"}), "memory "),
        (json!({"command": ["true"], "cpus": 512}), "cpus "),
        (
            json!({"command": ["true"], "timeout_secs": 1.0e6}),
            "timeout_secs ",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let r = s.call(2 + i as u64, "run", args);
        assert_eq!(r["result"]["isError"], true, "{r}");
        let t = r["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default();
        assert!(t.starts_with(field) && t.contains("never raise"), "{t}");
    }
    // Bad values are -32602 naming the field.
    for (i, (args, field)) in [
        (json!({"command": ["true"], "memory": "lots"}), "memory"),
        (json!({"command": ["true"], "env": {"A": 1}}), "env"),
        (json!({"command": ["true"], "args": ["x"]}), "args"),
        (json!({"code": "1", "args": "x"}), "args"),
    ]
    .into_iter()
    .enumerate()
    {
        let r = s.call(10 + i as u64, "run", args);
        assert_eq!(field_of_error(&r), (-32602, field.to_string()), "{r}");
    }
}
