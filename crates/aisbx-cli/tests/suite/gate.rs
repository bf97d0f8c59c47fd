//! One gate for every front end: the same deny rule, given with `--policy DIR`,
//! refuses the same requests over the CLI, MCP over stdio and MCP over HTTP,
//! through the real binary (`aisbx`, `aisbx mcp`, `aisbx mcp --http`), and each
//! refusal is one audit line with the same reason. Not only runs: restores and
//! writes into a sandbox too, before they change anything.

use std::path::Path;

use serde_json::{Value, json};

use super::common::{cmd, home};

#[path = "../../../aisbx-mcp/tests/common/mod.rs"]
#[allow(dead_code, clippy::all)]
mod mcp;

const POLICY: &str = "package aisbx

default allow := true

deny contains \"no shells here\" if {
\tinput.tool == \"run\"
\tinput.request.command[0] == \"sh\"
}

deny contains \"restores are off\" if input.tool == \"snapshot_restore\"

deny contains \"writes are off\" if input.tool == \"file_write\"
";

const SHELL: &str = "refused by policy: no shells here";
const RESTORE: &str = "refused by policy: restores are off";
const WRITE: &str = "refused by policy: writes are off";

fn cli(home: &Path, pol: &Path, args: &[&str]) -> std::process::Output {
    let mut c = cmd(home);
    c.arg("--policy").arg(pol).args(args);
    c.output().expect("aisbx")
}

/// The text of an `isError` tool result.
fn refusal(resp: &Value) -> String {
    let r = &resp["result"];
    assert_eq!(r["isError"], json!(true), "{resp}");
    r["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn audit(home: &Path) -> Vec<Value> {
    std::fs::read_to_string(home.join("audit.jsonl"))
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

#[test]
fn a_deny_rule_refuses_the_same_requests_over_cli_stdio_and_http_with_one_reason() {
    let h = home();
    let pol = h.path().join("pol");
    std::fs::create_dir_all(&pol).expect("mkdir");
    std::fs::write(pol.join("p.rego"), POLICY).expect("policy");
    let polarg = pol.to_str().expect("utf-8");

    // What the rule does not name goes through: a sandbox and a snapshot of it.
    for args in [
        &["create", "box"][..],
        &["snap", "create", "s1", "--sandbox", "box"],
    ] {
        let o = cli(h.path(), &pol, args);
        assert!(o.status.success(), "{args:?}: {o:?}");
    }

    // The CLI.
    let cases: [(&[&str], &str); 3] = [
        (&["run", "--", "sh", "-c", "echo no"], SHELL),
        (&["snap", "restore", "s1", "--sandbox", "box2"], RESTORE),
        (&["create", "box3", "--from", "s1"], RESTORE),
    ];
    for (args, why) in cases {
        let o = cli(h.path(), &pol, args);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
        assert!(!String::from_utf8_lossy(&o.stdout).contains("no"), "{o:?}");
    }

    let calls = [
        ("run", json!({"command": ["sh", "-c", "echo no"]}), SHELL),
        (
            "snapshot_restore",
            json!({"name": "s1", "sandbox_id": "box2"}),
            RESTORE,
        ),
        (
            "file_write",
            json!({"sandbox_id": "box", "path": "f.txt", "content": "x"}),
            WRITE,
        ),
    ];

    // MCP over stdio (`aisbx --policy DIR mcp`).
    let mut s = mcp::StdioServer::start_with(h.path(), &["--policy", polarg]);
    let r = s.request(mcp::initialize_request(0));
    assert!(r.get("result").is_some(), "{r}");
    s.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    for (i, (tool, args, why)) in calls.iter().enumerate() {
        let r = s.call(10 + i as u64, tool, args.clone());
        let text = refusal(&r);
        assert!(text.contains(why), "stdio {tool}: {text}");
    }
    let r = s.call(20, "run", json!({"command": ["echo", "yes"]}));
    assert_eq!(r["result"]["structuredContent"]["stdout"], "yes\n", "{r}");
    drop(s);

    // MCP over HTTP (`aisbx --policy DIR mcp --http 127.0.0.1:0`).
    let srv = mcp::HttpServer::start(h.path(), &["--policy", polarg], &[]);
    let session = srv.session();
    for (i, (tool, args, why)) in calls.iter().enumerate() {
        let r = session.call(30 + i as u64, tool, args.clone()).rpc();
        let text = refusal(&r);
        assert!(text.contains(why), "http {tool}: {text}");
    }
    drop(srv);

    // Nothing was restored or written.
    let o = cli(h.path(), &pol, &["ls", "--json"]);
    let ls: Value = serde_json::from_slice(&o.stdout).expect("ls --json");
    let names: Vec<&str> = ls["sandboxes"]
        .as_array()
        .expect("sandboxes")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(names, ["box"], "{ls}");
    let o = cli(
        h.path(),
        &pol,
        &["exec", "box", "--", "test", "!", "-e", "f.txt"],
    );
    assert!(o.status.success(), "f.txt was written: {o:?}");

    // One deny line per refusal, the same reason whichever front end it came by.
    let lines = audit(h.path());
    let denied = |tool: &str| -> Vec<(String, String)> {
        lines
            .iter()
            .filter(|l| l["tool"] == tool && l["decision"] == "deny")
            .map(|l| {
                (
                    l["front_end"].as_str().unwrap_or_default().to_string(),
                    l["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        denied("run"),
        pairs(&[("cli", SHELL), ("mcp-stdio", SHELL), ("mcp-http", SHELL)]),
        "{lines:#?}"
    );
    assert_eq!(
        denied("snapshot_restore"),
        pairs(&[
            ("cli", RESTORE),
            ("cli", RESTORE),
            ("mcp-stdio", RESTORE),
            ("mcp-http", RESTORE)
        ]),
        "{lines:#?}"
    );
    assert_eq!(
        denied("file_write"),
        pairs(&[("mcp-stdio", WRITE), ("mcp-http", WRITE)]),
        "{lines:#?}"
    );
}
