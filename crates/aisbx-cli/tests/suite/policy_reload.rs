//! A running server reloads its policy when the files change or on SIGHUP, as a
//! whole and only with a bundle that parses and passes its own tests: a broken
//! bundle or one with a failing test leaves the active policy deciding, and
//! `aisbx policy status` says so.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common::*;

const NO_SHELLS: &str = "package aisbx

default allow := true

deny contains \"no shells\" if {
\tinput.request.command[0] == \"sh\"
}
";

const BROKEN: &str = "package aisbx

default allow := true

deny contains \"no shells\" if {
\tinput.request.command[0] == 
";

const ALLOW_ALL: &str = "package aisbx

default allow := true
";

const FAILING_TEST: &str = "package aisbx_test

import data.aisbx

test_shells_refused if {
\tcount(aisbx.deny) > 0 with input as {\"request\": {\"command\": [\"sh\"]}}
}
";

/// `aisbx mcp` on stdio, initialized.
struct Server {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    next_id: u64,
}

impl Server {
    fn start(home: &Path) -> Server {
        let mut child = cmd(home)
            .args(["mcp"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn aisbx mcp");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take().expect("stdin");
        let mut s = Server {
            child,
            stdin,
            lines,
            next_id: 1,
        };
        let init = s.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "reload-test", "version": "1"}}),
        );
        assert!(init.get("result").is_some(), "{init}");
        s.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        s
    }

    fn send(&mut self, v: &Value) {
        writeln!(self.stdin, "{v}").expect("write");
        self.stdin.flush().expect("flush");
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).expect("a response in time");
            let v: Value = serde_json::from_str(&line).expect("json");
            if v["id"] == json!(id) {
                return v;
            }
        }
    }

    /// Runs `sh -c 'echo hi'`; returns the refusal's text, or None when it ran.
    fn shell_refusal(&mut self) -> Option<String> {
        let r = self.request(
            "tools/call",
            json!({"name": "run", "arguments": {"command": ["sh", "-c", "echo hi"]}}),
        );
        let result = &r["result"];
        if result["isError"] == json!(true) {
            return Some(result["content"][0]["text"].as_str()?.to_string());
        }
        assert_eq!(result["structuredContent"]["stdout"], "hi\n", "{r}");
        None
    }

    fn hup(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn last_reload(home: &Path) -> Option<Value> {
    let text = std::fs::read(home.join("policy-reload.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Waits until the server's reload record differs from `before`.
fn next_reload(home: &Path, before: &Option<Value>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(now) = last_reload(home)
            && Some(&now) != before.as_ref()
        {
            return now;
        }
        assert!(Instant::now() < deadline, "the server did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_bad_policy_on_reload_leaves_the_good_one_deciding() {
    let home = home();
    let dir = home.path().join("policy");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("p.rego"), NO_SHELLS).expect("write");
    let mut s = Server::start(home.path());
    let refusal = s.shell_refusal().expect("refused");
    assert!(refusal.contains("no shells"), "{refusal}");

    // A syntax error, noticed on SIGHUP: not loaded; the old policy still refuses.
    std::fs::write(dir.join("p.rego"), BROKEN).expect("write");
    s.hup();
    let r = next_reload(home.path(), &None);
    assert_eq!(r["outcome"], "rejected", "{r}");
    assert!(
        r["error"].as_str().unwrap_or_default().contains("p.rego"),
        "{r}"
    );
    assert!(s.shell_refusal().is_some_and(|m| m.contains("no shells")));
    let status = cmd(home.path())
        .args(["policy", "status"])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("was NOT loaded") && text.contains("the server still decides with bundle"),
        "{text}"
    );

    // Parses, but its own test fails: not loaded either.
    std::fs::write(dir.join("p.rego"), ALLOW_ALL).expect("write");
    std::fs::write(dir.join("p_test.rego"), FAILING_TEST).expect("write");
    let r = next_reload(home.path(), &Some(r));
    assert_eq!(r["outcome"], "rejected", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap_or_default()
            .contains("test_shells_refused"),
        "{r}"
    );
    assert!(s.shell_refusal().is_some());

    // A good bundle (found by the file watch, no signal): it decides from now on,
    // and the audit log names the new bundle.
    std::fs::remove_file(dir.join("p_test.rego")).expect("rm");
    let r = next_reload(home.path(), &Some(r));
    assert_eq!(r["outcome"], "loaded", "{r}");
    assert_eq!(s.shell_refusal(), None);
    let audit = std::fs::read_to_string(home.path().join("audit.jsonl")).expect("audit");
    let hashes: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json")["policy"].clone())
        .collect();
    assert_eq!(hashes.last(), Some(&r["bundle"]), "{audit}");
    assert_ne!(hashes.first(), hashes.last(), "{audit}");
}
