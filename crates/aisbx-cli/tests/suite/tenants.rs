//! `aisbx tenant`: tokens printed once and alone, only their hashes kept, and the
//! HTTP MCP server (`aisbx mcp --http`) accepting a tenant's token until it is removed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::common::*;

fn is_token(s: &str) -> bool {
    s.strip_prefix("aisbx_")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[test]
fn tokens_are_printed_once_alone_and_stored_as_hashes() {
    let h = home();
    let out = cmd(h.path())
        .args(["tenant", "add", "acme"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let token = stdout.strip_suffix('\n').expect("one line");
    assert!(is_token(token) && !token.contains('\n'), "{stdout:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shown only now"), "{err}");
    assert!(!err.contains(token));

    let file = h.path().join("tenants.toml");
    let meta = std::fs::symlink_metadata(&file).expect("tenants.toml");
    assert_eq!(meta.mode() & 0o7777, 0o600);
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(!text.contains(&token["aisbx_".len()..]), "{text}");
    assert!(text.contains("sha256 = "), "{text}");

    // list: names and token ids, never tokens.
    let list = ok(h.path(), &["tenant", "list"]);
    assert!(list.contains("acme") && !list.contains(token), "{list}");
    let v: Value =
        serde_json::from_str(&ok(h.path(), &["tenant", "list", "--json"])).expect("json");
    assert_eq!(v[0]["name"], "acme");
    let id = v[0]["tokens"][0]["id"].as_str().expect("id").to_string();
    assert!(list.contains(&id), "{list}");
    assert!(!v.to_string().contains(&token["aisbx_".len()..]));

    // Refusals: one sentence, status 125, nothing on stdout.
    for (args, said) in [
        (&["tenant", "add", "acme"][..], "already exists"),
        (&["tenant", "add", "../etc"][..], "not a tenant name"),
        (&["tenant", "add", "Acme"][..], "not a tenant name"),
        (&["tenant", "rm", "nobody"][..], "no tenant 'nobody'"),
        (&["tenant", "rotate", "nobody"][..], "no tenant 'nobody'"),
        (
            &["tenant", "revoke", "acme", "000000000000"][..],
            "has no token",
        ),
    ] {
        let out = cmd(h.path()).args(args).output().expect("run");
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(said), "{args:?}: {err}");
    }

    // rotate prints a new token alone; --keep keeps the old id, revoke removes it.
    let t2 = ok(h.path(), &["tenant", "rotate", "acme", "--keep"]);
    assert!(is_token(t2.trim_end()) && t2.trim_end() != token, "{t2}");
    let v: Value =
        serde_json::from_str(&ok(h.path(), &["tenant", "list", "--json"])).expect("json");
    assert_eq!(v[0]["tokens"].as_array().map(Vec::len), Some(2));
    ok(h.path(), &["tenant", "revoke", "acme", &id]);
    let v: Value =
        serde_json::from_str(&ok(h.path(), &["tenant", "list", "--json"])).expect("json");
    assert_eq!(v[0]["tokens"].as_array().map(Vec::len), Some(1));
    assert_ne!(v[0]["tokens"][0]["id"], id.as_str());
    ok(h.path(), &["tenant", "rm", "acme"]);
    let v: Value =
        serde_json::from_str(&ok(h.path(), &["tenant", "list", "--json"])).expect("json");
    assert_eq!(v, serde_json::json!([]));
}

struct Server(Child, SocketAddr);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(home: &std::path::Path) -> Server {
    let mut child = cmd(home)
        .env_remove("AISBX_MCP_TOKEN")
        .args(["mcp", "--http", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aisbx mcp");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server said where it serves")
            .expect("line");
        if let Some(rest) = line.split("http://").nth(1)
            && line.contains("serving MCP")
        {
            break rest
                .split("/mcp")
                .next()
                .and_then(|a| a.parse().ok())
                .expect("address");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server(child, addr)
}

/// POSTs an MCP `initialize` with this bearer token; returns the HTTP status.
fn initialize(addr: SocketAddr, token: &str) -> u16 {
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status")
}

#[test]
fn the_http_server_accepts_a_tenant_token_until_it_is_removed() {
    let h = home();
    let token = ok(h.path(), &["tenant", "add", "acme"])
        .trim_end()
        .to_string();
    let srv = serve(h.path());
    assert_eq!(initialize(srv.1, &token), 200);
    assert_eq!(initialize(srv.1, "aisbx_0000"), 401);
    let other = ok(h.path(), &["tenant", "add", "globex"])
        .trim_end()
        .to_string();
    assert_eq!(
        initialize(srv.1, &other),
        200,
        "a tenant added while serving"
    );
    ok(h.path(), &["tenant", "rm", "acme"]);
    assert_eq!(initialize(srv.1, &token), 401, "removed while serving");
    let new = ok(h.path(), &["tenant", "rotate", "globex"])
        .trim_end()
        .to_string();
    assert_eq!(initialize(srv.1, &other), 401, "rotated while serving");
    assert_eq!(initialize(srv.1, &new), 200);
}

/// `aisbx COMMAND...` in `home`: (exit status, stdout, stderr).
fn outcome(home: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = cmd(home).args(args).output().expect("run aisbx");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_is_the_tenant_of_its_uid_and_sees_only_its_state() {
    let h = home();
    let home = h.path();
    // SAFETY: getter.
    let uid = unsafe { libc::getuid() }.to_string();
    ok(home, &["tenant", "add", "acme"]);
    let (code, _, err) = outcome(home, &["tenant", "map", &uid, "nobody-here"]);
    assert_eq!(code, 125, "{err}");
    ok(home, &["tenant", "map", &uid, "acme"]);
    let v: Value = serde_json::from_str(&ok(home, &["tenant", "list", "--json"])).expect("json");
    assert_eq!(v[0]["uids"], serde_json::json!([uid]));
    assert_eq!(v[0]["index"], 1);
    ok(home, &["create", "box"]);
    ok(home, &["exec", "box", "--", "sh", "-c", "echo acme > f"]);
    ok(home, &["snap", "create", "snap", "--sandbox", "box"]);
    assert!(ok(home, &["ls"]).contains("box"));
    assert!(home.join("tenants/acme/sandboxes/box").is_dir());
    assert!(!home.join("sandboxes/box").exists());

    // Back to `default`: acme's names answer as missing ones.
    ok(home, &["tenant", "map", &uid, "default"]);
    assert!(!ok(home, &["ls"]).contains("box"));
    assert!(!ok(home, &["snap", "list"]).contains("snap"));
    for (theirs, missing) in [
        (vec!["rm", "box"], vec!["rm", "ghost"]),
        (
            vec!["exec", "box", "--", "cat", "f"],
            vec!["exec", "ghost", "--", "cat", "f"],
        ),
        (
            vec!["cp", "box:f", "/dev/null"],
            vec!["cp", "ghost:f", "/dev/null"],
        ),
        (vec!["snap", "rm", "snap"], vec!["snap", "rm", "ghost"]),
        (
            vec!["snap", "diff", "snap", "snap"],
            vec!["snap", "diff", "ghost", "ghost"],
        ),
        (
            vec!["snap", "restore", "snap", "--sandbox", "mine"],
            vec!["snap", "restore", "ghost", "--sandbox", "mine"],
        ),
    ] {
        let a = outcome(home, &theirs);
        let b = outcome(home, &missing);
        assert_ne!(a.0, 0, "{theirs:?}: {a:?}");
        assert_eq!(
            (
                a.0,
                a.2.replace("'box'", "'ghost'").replace("'snap'", "'ghost'")
            ),
            (b.0, b.2.clone()),
            "{theirs:?}"
        );
    }
    // And they are still acme's.
    ok(home, &["tenant", "map", &uid, "acme"]);
    assert_eq!(ok(home, &["exec", "box", "--", "cat", "f"]), "acme\n");
    ok(home, &["rm", "box"]);
    let lines: Vec<Value> = std::fs::read_to_string(home.join("audit.jsonl"))
        .expect("audit")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let of = |tool: &str| -> Vec<&str> {
        lines
            .iter()
            .filter(|l| l["tool"] == tool)
            .map(|l| l["tenant"].as_str().unwrap_or("?"))
            .collect()
    };
    assert_eq!(of("build"), ["acme"]);
    assert_eq!(of("sandbox_list"), ["acme", "default"]);
}

/// The `used` of one quota in `aisbx quota --json`.
fn quota_used(home: &std::path::Path, quota: &str) -> u64 {
    let v: Value = serde_json::from_str(&ok(home, &["quota", "--json"])).expect("json");
    v["quotas"]
        .as_array()
        .and_then(|a| a.iter().find(|q| q["quota"] == quota))
        .and_then(|q| q["used"].as_u64())
        .expect("quota listed")
}

#[test]
fn a_run_slot_is_given_back_when_its_process_is_killed() {
    let h = home();
    let home = h.path();
    ok(home, &["tenant", "quota", "default", "--runs", "1"]);
    let m = marker();
    let nap = format!("sleep 3{m}");
    let mut child = cmd(home)
        .args([
            "run",
            "--timeout",
            "60",
            "--",
            "sh",
            "-c",
            &format!("{nap} || true"),
        ])
        .spawn()
        .expect("spawn");
    let start = std::time::Instant::now();
    while quota_used(home, "concurrent_runs") == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the run never took its slot"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The one slot is taken: another run (another process) is refused.
    let (code, _, err) = outcome(home, &["run", "--", "true"]);
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains(
            "quota concurrent_runs reached for tenant 'default': 1 runs going on, limit 1"
        ),
        "{err}"
    );
    // A crash of the process holding it gives it back.
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    let start = std::time::Instant::now();
    loop {
        let (code, _, err) = outcome(home, &["run", "--", "true"]);
        if code == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the slot was not given back: {err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(quota_used(home, "concurrent_runs"), 0);
    assert!(
        host_procs_with(&nap).is_empty(),
        "the sandbox outlived aisbx"
    );
    // Removing the quota lifts it.
    ok(home, &["tenant", "quota", "default", "--runs", "none"]);
    let v: Value = serde_json::from_str(&ok(home, &["quota", "--json"])).expect("json");
    assert_eq!(v["quotas"][0]["limit"], Value::Null);
}

#[test]
fn a_policy_lowers_a_tenants_quotas_and_the_refusal_names_them() {
    let h = home();
    let home = h.path();
    let pol = home.join("pol");
    std::fs::create_dir(&pol).expect("mkdir");
    std::fs::write(
        pol.join("p.rego"),
        "package aisbx\ndefault allow := true\nquotas := {\"sandboxes\": 1, \"concurrent_runs\": 0} if input.caller.tenant == \"default\"\n",
    )
    .expect("write");
    let p = pol.to_str().expect("utf-8");
    // tenants.toml allows 5 sandboxes; the policy lowers it to 1.
    ok(home, &["tenant", "quota", "default", "--sandboxes", "5"]);
    ok(home, &["--policy", p, "create", "one"]);
    let (code, _, err) = outcome(home, &["--policy", p, "create", "two"]);
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains("quota sandboxes reached for tenant 'default': 1 sandboxes, limit 1"),
        "{err}"
    );
    assert!(!home.join("sandboxes/two").exists());
    // No run at all under the policy: refused, naming the quota; nothing ran.
    let (code, out, err) = outcome(home, &["--policy", p, "run", "--", "echo", "ran"]);
    assert_eq!((code, out.as_str()), (125, ""), "{err}");
    assert!(
        err.contains("quota concurrent_runs") && err.contains("limit 0"),
        "{err}"
    );
    let v: Value =
        serde_json::from_str(&ok(home, &["--policy", p, "quota", "--json"])).expect("json");
    assert_eq!(
        v["quotas"][1],
        serde_json::json!({"quota": "sandboxes", "used": 1, "limit": 1, "remaining": 0})
    );
    // Without the policy, the file's quota stands.
    ok(home, &["create", "two"]);
    ok(home, &["rm", "one", "two"]);
}

#[test]
fn the_cpu_quota_caps_a_run_and_refuses_the_next() {
    let h = home();
    let home = h.path();
    ok(
        home,
        &["tenant", "quota", "default", "--cpu-seconds-per-hour", "1"],
    );
    // A busy loop asking for 30 s gets at most the second that is left.
    let start = std::time::Instant::now();
    let out = cmd(home)
        .args([
            "run",
            "--json",
            "--timeout",
            "30",
            "--",
            "sh",
            "-c",
            "while :; do :; done",
        ])
        .output()
        .expect("run");
    let took = start.elapsed();
    let v: Value = serde_json::from_slice(&out.stdout).expect("RunResult");
    assert_eq!(v["timed_out"], true, "{v}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("quota: timeout lowered"), "{err}");
    let cpu_ms = v["cpu_ms"].as_u64().expect("cpu_ms");
    assert!(cpu_ms <= 1500, "{cpu_ms} ms of CPU");
    // Counted: once the hour's second is used up, runs are refused. (Each busy
    // run gets at most what is left, so a few more at most use up the rest.)
    let mut refused = None;
    for _ in 0..20 {
        let (code, _, err) = outcome(home, &["run", "--", "sh", "-c", "while :; do :; done"]);
        if code == 125 {
            refused = Some(err);
            break;
        }
        assert_eq!(code, 124, "{err}");
    }
    let err = refused.expect("the CPU quota never refused");
    assert!(
        err.contains("quota cpu_seconds_per_hour reached for tenant 'default'")
            && err.contains("limit 1"),
        "{err}"
    );
    assert!(quota_used(home, "cpu_seconds_per_hour") >= 1);
}
