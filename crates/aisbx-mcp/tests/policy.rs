//! The Rego policy over MCP: a deny refuses the same request over stdio and
//! HTTP with the caller's transport in the reason, as an `isError` result, and
//! the audit line carries the reason and the bundle's hash.

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

const POLICY: &str = "package aisbx

default allow := true

deny contains sprintf(\"no shells over %s\", [input.caller.transport]) if {
\tinput.request.command[0] == \"sh\"
}
";

fn audit_lines(home: &Path) -> Vec<Value> {
    std::fs::read_to_string(home.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

fn error_text(result: &Value) -> String {
    assert_eq!(result["isError"], json!(true), "{result}");
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_deny_refuses_over_stdio_and_http_with_the_transport() {
    let home = home();
    // The state directory's policy/ is one of the standard policy directories.
    let dir = home.path().join("policy");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("p.rego"), POLICY).expect("write");

    let mut s = StdioServer::start_initialized(home.path());
    let r = s.call(1, "run", json!({"command": ["sh", "-c", "echo no"]}));
    let msg = error_text(&r["result"]);
    assert!(
        msg.contains("refused by policy: no shells over stdio"),
        "{msg}"
    );
    let r = s.call(2, "run", json!({"command": ["echo", "yes"]}));
    assert_eq!(r["result"]["isError"], json!(false), "{r}");
    assert_eq!(r["result"]["structuredContent"]["stdout"], "yes\n");
    drop(s);

    // The same directory named explicitly, over HTTP.
    let other = tempfile::tempdir().expect("tempdir");
    let srv = HttpServer::start(
        other.path(),
        &["--policy", dir.to_str().expect("utf-8")],
        &[],
    );
    let r = srv
        .session()
        .call(3, "run", json!({"command": ["sh", "-c", "echo no"]}))
        .rpc();
    let msg = error_text(&r["result"]);
    assert!(
        msg.contains("refused by policy: no shells over http"),
        "{msg}"
    );

    let stdio_line = audit_lines(home.path())
        .into_iter()
        .find(|l| l["decision"] == "deny")
        .expect("a deny line");
    assert_eq!(stdio_line["front_end"], "mcp-stdio");
    assert_eq!(
        stdio_line["reason"],
        "refused by policy: no shells over stdio"
    );
    let http_line = audit_lines(other.path())
        .into_iter()
        .find(|l| l["decision"] == "deny")
        .expect("a deny line");
    assert_eq!(http_line["front_end"], "mcp-http");
    assert_eq!(
        http_line["reason"],
        "refused by policy: no shells over http"
    );
    // One bundle, one hash, wherever it was read from.
    assert!(
        stdio_line["policy"]
            .as_str()
            .is_some_and(|h| h.starts_with("sha256:")),
        "{stdio_line}"
    );
    assert_eq!(stdio_line["policy"], http_line["policy"]);
}

#[test]
fn a_dry_run_returns_the_decision_profile_and_limits_without_running() {
    let home = home();
    let dir = home.path().join("policy");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("p.rego"), POLICY).expect("write");
    let mut s = StdioServer::start_initialized(home.path());

    // Refused: the plan says so and why; it is a result, not an error.
    let r = s.call(
        1,
        "run",
        json!({"command": ["sh", "-c", "echo ran > /workspace/x"], "dry_run": true}),
    );
    let res = &r["result"];
    assert_eq!(res["isError"], json!(false), "{r}");
    let plan = &res["structuredContent"];
    assert_eq!(plan["dry_run"], json!(true), "{r}");
    assert_eq!(plan["allowed"], json!(false), "{r}");
    assert_eq!(
        plan["decision"]["deny"],
        json!(["no shells over stdio"]),
        "{r}"
    );
    assert_eq!(
        plan["argv"],
        json!(["sh", "-c", "echo ran > /workspace/x"]),
        "{r}"
    );
    assert!(plan.get("exit_code").is_none(), "{r}");
    let text = res["content"][0]["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("dry run, nothing ran: refused by policy: no shells over stdio"),
        "{text}"
    );

    // Allowed: the profile and the limits the run would get (a lower memory asked).
    let r = s.call(
        2,
        "run",
        json!({"code": "print(1)", "language": "python", "memory": "64M", "dry_run": true}),
    );
    let plan = &r["result"]["structuredContent"];
    assert_eq!(plan["allowed"], json!(true), "{r}");
    assert_eq!(plan["profile"], json!("python"), "{r}");
    assert_eq!(plan["limits"]["memory_bytes"], json!(64 << 20), "{r}");
    assert!(
        plan["limits"]["timeout_secs"]
            .as_f64()
            .is_some_and(|t| t > 0.0),
        "{r}"
    );

    // A dry run that is false runs.
    let r = s.call(
        3,
        "run",
        json!({"command": ["echo", "ran"], "dry_run": false}),
    );
    assert_eq!(r["result"]["structuredContent"]["stdout"], "ran\n", "{r}");
    drop(s);

    // Each is one audit line; the dry runs record that nothing ran.
    let runs: Vec<Value> = audit_lines(home.path())
        .into_iter()
        .filter(|l| l["tool"] == "run")
        .collect();
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert_eq!(runs[0]["result"]["dry_run"], json!(true), "{runs:?}");
    assert_eq!(runs[0]["result"]["allowed"], json!(false), "{runs:?}");
    assert_eq!(runs[1]["result"]["allowed"], json!(true), "{runs:?}");
    assert_eq!(runs[2]["result"]["exit_code"], json!(0), "{runs:?}");
}
