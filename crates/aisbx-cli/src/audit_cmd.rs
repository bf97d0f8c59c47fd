//! `aisbx audit tail [-n N] [--json]` and `aisbx audit verify`.
//!
//! Both return the process exit status: 0 on success; `verify` returns 1 when the
//! chain is broken; 125 when the log cannot be read.

use std::io::Write;
use std::path::PathBuf;

use aisbx_service::{Request, Response, Service, audit};
use serde_json::Value;

use crate::{call, fail, open_service, unexpected};

/// The audit log of the service's state directory (named in messages).
fn log_path(svc: &Service) -> PathBuf {
    svc.home().join("audit.jsonl")
}

/// Prints the last `n` entries, oldest first: one JSON object per line with `json`,
/// else one readable line each.
pub fn tail(n: usize, json: bool) -> i32 {
    match open_service() {
        Ok(svc) => tail_in(&svc, n, json),
        Err(code) => code.into(),
    }
}

fn tail_in(svc: &Service, n: usize, json: bool) -> i32 {
    let entries = match call(svc, Request::AuditTail { n }) {
        Ok(Response::AuditTail(e)) => e,
        Ok(other) => return unexpected(other).into(),
        Err(e) => return fail(&e).into(),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for e in &entries {
        let line = if json { e.to_string() } else { format_entry(e) };
        if writeln!(out, "{line}").is_err() {
            // stdout closed (e.g. piped into `head`): nothing more to do.
            return 0;
        }
    }
    0
}

/// Checks the hash chain; names the first bad line.
pub fn verify() -> i32 {
    match open_service() {
        Ok(svc) => verify_in(&svc),
        Err(code) => code.into(),
    }
}

fn verify_in(svc: &Service) -> i32 {
    let path = log_path(svc);
    match call(svc, Request::AuditVerify) {
        Ok(Response::AuditVerify(r)) => match &r.problem {
            None => {
                let head = if r.head_checked {
                    "head record matches"
                } else {
                    "no head record to compare"
                };
                outln!(
                    "audit log OK: {} line{}, last seq {}, {head} ({})",
                    r.lines,
                    if r.lines == 1 { "" } else { "s" },
                    r.last_seq,
                    path.display()
                );
                0
            }
            Some(p) => {
                outln!(
                    "audit log BROKEN at line {} ({}): {}",
                    p.line,
                    kind_name(p.kind),
                    p.message
                );
                outln!(
                    "  {} line{} before it verified; file: {}",
                    r.last_seq,
                    if r.last_seq == 1 { "" } else { "s" },
                    path.display()
                );
                1
            }
        },
        Ok(other) => unexpected(other).into(),
        Err(e) => fail(&e).into(),
    }
}

fn kind_name(k: audit::ProblemKind) -> &'static str {
    match k {
        audit::ProblemKind::Malformed => "malformed",
        audit::ProblemKind::Edited => "edited",
        audit::ProblemKind::Removed => "removed",
        audit::ProblemKind::Reordered => "reordered",
        audit::ProblemKind::Truncated => "truncated",
    }
}

/// `2026-11-24T10:00:00.123Z  #7  mcp-http(claude-code)  run  allow  exit 0, 12 ms`
pub fn format_entry(e: &Value) -> String {
    let Value::Object(m) = e else {
        // A line that is not JSON: show it as it is.
        return format!("(malformed) {}", e.as_str().unwrap_or_default());
    };
    let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    let seq = m
        .get("seq")
        .and_then(Value::as_u64)
        .map(|n| format!("#{n}"))
        .unwrap_or_else(|| "#?".into());
    let mut who = match m.get("client").and_then(Value::as_str) {
        Some(c) => format!("{}({c})", s("front_end")),
        None => s("front_end"),
    };
    // The tenant, unless it is the one of every unmapped caller.
    if let Some(t) = m
        .get("tenant")
        .and_then(Value::as_str)
        .filter(|t| *t != aisbx_service::tenants::DEFAULT_TENANT)
    {
        who.push_str(&format!(" tenant={t}"));
    }
    let mut line = format!(
        "{}  {seq}  {who}  {}  {}",
        s("time"),
        s("tool"),
        s("decision")
    );
    let summary = summarize_result(m.get("result"));
    if !summary.is_empty() {
        line.push_str("  ");
        line.push_str(&summary);
    }
    if let Some(r) = m.get("reason").and_then(Value::as_str) {
        line.push_str("  reason: ");
        line.push_str(r);
    }
    line
}

fn summarize_result(r: Option<&Value>) -> String {
    let Some(Value::Object(m)) = r else {
        return String::new();
    };
    let mut parts: Vec<String> = Vec::new();
    if m.get("timed_out").and_then(Value::as_bool) == Some(true) {
        parts.push("timed out".into());
    }
    if let Some(sig) = m.get("signal").and_then(Value::as_i64) {
        parts.push(format!("signal {sig}"));
    } else if let Some(code) = m.get("exit_code").and_then(Value::as_i64) {
        parts.push(format!("exit {code}"));
    }
    if m.get("oom_killed").and_then(Value::as_bool) == Some(true) {
        parts.push("oom".into());
    }
    if let Some(id) = m.get("sandbox_id").and_then(Value::as_str) {
        parts.push(format!("sandbox {id}"));
    }
    if let Some(ms) = m.get("duration_ms").and_then(Value::as_u64) {
        parts.push(format!("{ms} ms"));
    }
    if parts.is_empty() {
        // Some other summary: show it compactly.
        return Value::Object(m.clone()).to_string();
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn format_line() {
        let v = json!({"time": "2026-11-24T10:00:00.123Z", "seq": 7, "front_end": "mcp-http",
            "client": "claude-code", "tool": "run", "decision": "allow", "reason": null,
            "result": {"exit_code": 0, "timed_out": false, "duration_ms": 12}});
        assert_eq!(
            format_entry(&v),
            "2026-11-24T10:00:00.123Z  #7  mcp-http(claude-code)  run  allow  exit 0, 12 ms"
        );
        let d = json!({"time": "t", "seq": 8, "front_end": "cli", "client": null, "tool": "run",
            "decision": "deny", "reason": "network not allowed", "result": null});
        assert_eq!(
            format_entry(&d),
            "t  #8  cli  run  deny  reason: network not allowed"
        );
        let t = json!({"time": "t", "seq": 9, "front_end": "mcp-http", "client": null,
            "tenant": "acme", "tool": "quota", "decision": "allow", "reason": null, "result": null});
        assert_eq!(
            format_entry(&t),
            "t  #9  mcp-http tenant=acme  quota  allow"
        );
        assert_eq!(format_entry(&json!("garbage")), "(malformed) garbage");
    }

    #[test]
    fn verify_and_tail_exit_codes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let svc = Service::open(aisbx_service::ServiceConfig {
            home: Some(dir.path().to_path_buf()),
            ..Default::default()
        })
        .expect("open");
        assert_eq!(verify_in(&svc), 0);
        assert_eq!(tail_in(&svc, 5, false), 0);
        // Every call through the gate writes a line: the two above and three more.
        for _ in 0..3 {
            call(&svc, Request::SandboxList).expect("sandbox_list");
        }
        assert_eq!(verify_in(&svc), 0);
        assert_eq!(tail_in(&svc, 2, true), 0);
        let p = log_path(&svc);
        let text = std::fs::read_to_string(&p).expect("read");
        assert_eq!(text.lines().count(), 7, "{text}");
        assert!(text.contains("\"tool\":\"sandbox_list\""), "{text}");
        std::fs::write(&p, text.replacen("\"sandboxes\":0", "\"sandboxes\":3", 1)).expect("write");
        assert_eq!(verify_in(&svc), 1);
    }
}
