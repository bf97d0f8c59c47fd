//! The Rego policy through the real binary: a deny refuses before anything runs
//! and is audited with its reason and the bundle's hash; ceilings hold; the
//! policy commands report what `opa` users expect.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use super::common::{cmd, home};

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join(name), text).expect("write");
}

/// `aisbx --policy POL ...` with state in `home`.
fn with_policy(home: &Path, pol: &Path) -> Command {
    let mut c = cmd(home);
    c.arg("--policy").arg(pol);
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn last_audit(home: &Path) -> Value {
    let log = std::fs::read_to_string(home.join("audit.jsonl")).expect("audit log");
    serde_json::from_str(log.lines().last().expect("a line")).expect("json")
}

fn bundle_hash(home: &Path, dir: &Path) -> String {
    let o = with_policy(home, dir)
        .args(["policy", "status", "--json"])
        .output()
        .expect("status");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    v["bundle"].as_str().expect("bundle").to_string()
}

const NO_SHELLS: &str = "package aisbx

default allow := true

deny contains \"no shells here\" if input.request.command[0] == \"sh\"
";

#[test]
fn a_deny_rule_refuses_the_run_before_it_starts_and_is_audited() {
    let h = home();
    let pol = h.path().join("pol");
    write(&pol, "p.rego", NO_SHELLS);
    let work = tempfile::tempdir().expect("tempdir");
    let o = with_policy(h.path(), &pol)
        .arg("run")
        .arg("--workdir")
        .arg(work.path())
        .args(["--", "sh", "-c", "touch ran"])
        .output()
        .expect("run");
    assert_eq!(code(&o), 125, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("refused by policy: no shells here"),
        "{}",
        text(&o.stderr)
    );
    assert!(!work.path().join("ran").exists(), "the program ran");
    let line = last_audit(h.path());
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["reason"], "refused by policy: no shells here");
    assert_eq!(line["policy"], bundle_hash(h.path(), &pol));
    // The same policy through the environment; other commands still run.
    let o = cmd(h.path())
        .env("AISBX_POLICY", &pol)
        .args(["run", "--", "/usr/bin/true"])
        .output()
        .expect("run");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let o = cmd(h.path())
        .env("AISBX_POLICY", &pol)
        .args(["run", "--", "sh", "-c", "true"])
        .output()
        .expect("run");
    assert_eq!(code(&o), 125, "{}", text(&o.stderr));
    // --policy after the subcommand, and as --policy=DIR, mean the same.
    for args in [
        vec![
            "run".to_string(),
            "--policy".into(),
            pol.display().to_string(),
        ],
        vec![format!("--policy={}", pol.display()), "run".into()],
    ] {
        let o = cmd(h.path())
            .args(&args)
            .args(["--", "sh", "-c", "true"])
            .output()
            .expect("run");
        assert_eq!(code(&o), 125, "{args:?}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains("no shells here"), "{args:?}");
    }
    // The audit chain still verifies with the new field.
    let o = cmd(h.path())
        .args(["audit", "verify"])
        .output()
        .expect("verify");
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
}

#[test]
fn a_limits_ceiling_cuts_a_run_short() {
    let h = home();
    let pol = h.path().join("pol");
    write(
        &pol,
        "p.rego",
        "package aisbx\n\ndefault allow := true\n\nlimits := {\"timeout_secs\": 1}\n",
    );
    let start = std::time::Instant::now();
    let o = with_policy(h.path(), &pol)
        .args(["run", "--json", "--timeout", "20", "--", "sleep", "10"])
        .output()
        .expect("run");
    assert_eq!(code(&o), 124, "{}", text(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).expect("RunResult");
    assert_eq!(r["timed_out"], true);
    assert!(r["duration_ms"].as_u64().expect("ms") < 5000, "{r}");
    assert!(start.elapsed() < std::time::Duration::from_secs(8));
    assert!(
        text(&o.stderr).contains("policy: timeout lowered to 1 s"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn the_default_policy_allows_and_is_named_in_the_audit_log() {
    let h = home();
    let o = cmd(h.path())
        .args(["run", "--", "/usr/bin/true"])
        .output()
        .expect("run");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let o = cmd(h.path())
        .args(["policy", "status", "--json"])
        .output()
        .expect("status");
    let st: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(st["policy"]["kind"], "default");
    assert_eq!(st["loaded"], true);
    let line = last_audit(h.path());
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["policy"], st["bundle"]);
    // `policy init` writes exactly the default bundle: the same hash.
    let pol = h.path().join("pol");
    let o = cmd(h.path())
        .arg("policy")
        .arg("init")
        .arg(&pol)
        .output()
        .expect("init");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(Value::from(bundle_hash(h.path(), &pol)), st["bundle"]);
    // A second init does not overwrite.
    let o = cmd(h.path())
        .arg("policy")
        .arg("init")
        .arg(&pol)
        .output()
        .expect("init");
    assert_eq!(code(&o), 125);
    assert!(text(&o.stderr).contains("already exists"));
}

#[test]
fn policy_test_passes_and_fails_like_opa_test() {
    let h = home();
    let pol = h.path().join("pol");
    let init = cmd(h.path())
        .arg("policy")
        .arg("init")
        .arg(&pol)
        .output()
        .expect("init");
    assert_eq!(code(&init), 0);
    let o = cmd(h.path())
        .arg("policy")
        .arg("test")
        .arg(&pol)
        .output()
        .expect("test");
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(text(&o.stdout).contains("PASS  data.aisbx_test.test_allows_a_plain_run"));
    assert!(text(&o.stdout).contains("4 passed, 0 failed"));
    write(
        &pol,
        "wrong_test.rego",
        "package wrong_test\n\nimport data.aisbx\n\ntest_refuses_http if {\n\tnot aisbx.allow with input as {\"caller\": {\"transport\": \"http\"}}\n}\n",
    );
    let o = cmd(h.path())
        .arg("policy")
        .arg("test")
        .arg(&pol)
        .output()
        .expect("test");
    assert_eq!(code(&o), 1, "{}", text(&o.stdout));
    assert!(
        text(&o.stdout).contains("FAIL  data.wrong_test.test_refuses_http  (wrong_test.rego)"),
        "{}",
        text(&o.stdout)
    );
    assert!(text(&o.stdout).contains("4 passed, 1 failed"));
}

#[test]
fn policy_check_reports_file_and_line_and_a_broken_policy_refuses_runs() {
    let h = home();
    let pol = h.path().join("pol");
    write(
        &pol,
        "good.rego",
        "package aisbx\n\ndefault allow := true\n",
    );
    let o = cmd(h.path())
        .arg("policy")
        .arg("check")
        .arg(&pol)
        .output()
        .expect("check");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    write(
        &pol,
        "bad.rego",
        "package aisbx\n\nallow if {\n  input.x ==\n}\n",
    );
    let o = cmd(h.path())
        .arg("policy")
        .arg("check")
        .arg(&pol)
        .output()
        .expect("check");
    assert_eq!(code(&o), 1);
    let want = format!(
        "{}:5:1: expecting expression",
        pol.join("bad.rego").display()
    );
    assert!(text(&o.stderr).contains(&want), "{}", text(&o.stderr));
    // Fail closed: a policy that does not load refuses every run.
    let o = with_policy(h.path(), &pol)
        .args(["run", "--", "/usr/bin/true"])
        .output()
        .expect("run");
    assert_eq!(code(&o), 125);
    assert!(
        text(&o.stderr)
            .contains("the policy cannot be loaded, so requests are refused: bad.rego:5:1"),
        "{}",
        text(&o.stderr)
    );
    // A missing directory named explicitly is an error too, not the default.
    let o = cmd(h.path())
        .args([
            "--policy",
            "/nonexistent/policy",
            "run",
            "--",
            "/usr/bin/true",
        ])
        .output()
        .expect("run");
    assert_eq!(code(&o), 125);
}

#[test]
fn dry_run_shows_the_decision_profile_and_limits_without_running() {
    let h = home();
    let pol = h.path().join("pol");
    write(&pol, "p.rego", NO_SHELLS);
    write(
        &pol,
        "limits.rego",
        "package aisbx\n\nlimits := {\"memory_bytes\": 134217728}\n",
    );
    let work = tempfile::tempdir().expect("tempdir");
    let o = with_policy(h.path(), &pol)
        .arg("run")
        .arg("--dry-run")
        .arg("--json")
        .arg("--workdir")
        .arg(work.path())
        .args(["--", "sh", "-c", "touch ran"])
        .output()
        .expect("run");
    assert_eq!(code(&o), 125, "{}", text(&o.stderr));
    let plan: Value = serde_json::from_slice(&o.stdout).expect("plan");
    assert_eq!(plan["allowed"], false);
    assert_eq!(plan["decision"]["deny"][0], "no shells here");
    assert_eq!(plan["profile"], "base");
    assert_eq!(plan["limits"]["memory_bytes"], 134217728);
    assert!(!work.path().join("ran").exists());
    let o = with_policy(h.path(), &pol)
        .args(["run", "--dry-run", "--", "/usr/bin/true"])
        .output()
        .expect("run");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("decision: allowed"), "{out}");
    assert!(out.contains("memory 134217728 bytes"), "{out}");
}

#[test]
fn policy_eval_prints_the_decision_for_an_input() {
    let h = home();
    let pol = h.path().join("pol");
    write(&pol, "p.rego", NO_SHELLS);
    let input = h.path().join("req.json");
    std::fs::write(
        &input,
        r#"{"tool": "run", "caller": {"tenant": "t", "transport": "cli"}, "request": {"command": ["sh"]}}"#,
    )
    .expect("write");
    let o = with_policy(h.path(), &pol)
        .args(["policy", "eval", "--explain", "--input"])
        .arg(&input)
        .output()
        .expect("eval");
    assert_eq!(code(&o), 1, "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["decision"]["deny"][0], "no shells here");
    assert_eq!(v["input"]["request"]["command"][0], "sh");
    assert_eq!(v["rules"]["allow"], "true");
}

#[test]
fn policy_status_shows_the_git_commit_and_changes() {
    if std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: git is not installed");
        return;
    }
    let h = home();
    let pol = h.path().join("pol");
    write(&pol, "p.rego", NO_SHELLS);
    let git = |args: &[&str]| {
        let o = std::process::Command::new("git")
            .arg("-C")
            .arg(&pol)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .expect("git");
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "policy"]);
    let head = git(&["rev-parse", "HEAD"]);
    let status = || {
        let o = with_policy(h.path(), &pol)
            .args(["policy", "status"])
            .output()
            .expect("status");
        text(&o.stdout)
    };
    let s = status();
    assert!(s.contains(&format!("at {head}")), "{s}");
    assert!(!s.contains("uncommitted"), "{s}");
    write(&pol, "p.rego", "package aisbx\n\ndefault allow := true\n");
    assert!(status().contains("with uncommitted changes"));
}

/// The worked examples of docs/POLICY.md: each directory's tests pass, copied
/// elsewhere as a user would.
#[test]
fn the_documented_examples_pass_their_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/policy-examples");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("docs/policy-examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 5, "{dirs:?}");
    let h = home();
    for d in dirs {
        let name = d.file_name().expect("name").to_owned();
        let copy = h.path().join(&name);
        std::fs::create_dir_all(&copy).expect("mkdir");
        for f in std::fs::read_dir(&d).expect("list") {
            let f = f.expect("entry").path();
            std::fs::copy(&f, copy.join(f.file_name().expect("name"))).expect("copy");
        }
        let o = cmd(h.path())
            .arg("policy")
            .arg("test")
            .arg(&copy)
            .output()
            .expect("test");
        let out = text(&o.stdout);
        assert_eq!(code(&o), 0, "{}: {out}{}", d.display(), text(&o.stderr));
        assert!(out.contains(" passed, 0 failed"), "{out}");
        assert!(
            !out.contains("\n0 passed"),
            "{}: no test ran: {out}",
            d.display()
        );
    }
}

#[test]
fn the_code_size_example_refuses_large_code_through_the_binary() {
    let h = home();
    let pol = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/policy-examples/code-size");
    let big = format!("x = 1\n{}", "#".repeat(70_000));
    let o = with_policy(h.path(), &pol)
        .args(["run", "--lang", "python", "--code", &big])
        .output()
        .expect("run");
    assert_eq!(code(&o), 125, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("the code is 70006 bytes, more than the 65536 allowed"),
        "{}",
        text(&o.stderr)
    );
    let o = with_policy(h.path(), &pol)
        .args(["run", "--lang", "python", "--code", "print(6 * 7)"])
        .output()
        .expect("run");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "42\n");
}

#[test]
fn a_build_is_decided_too_and_a_refused_one_leaves_no_sandbox() {
    let h = home();
    let pol = h.path().join("pol");
    write(
        &pol,
        "p.rego",
        "package aisbx\n\ndefault allow := true\n\ndeny contains sprintf(\"no %s sandboxes\", [input.profile.name]) if {\n\tinput.tool == \"build\"\n\tinput.profile.name == \"python\"\n}\n",
    );
    let o = with_policy(h.path(), &pol)
        .args(["create", "sb-py", "--profile", "python"])
        .output()
        .expect("create");
    assert_eq!(code(&o), 125, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("refused by policy: no python sandboxes"),
        "{}",
        text(&o.stderr)
    );
    let o = with_policy(h.path(), &pol)
        .args(["ls", "--json"])
        .output()
        .expect("ls");
    assert!(!text(&o.stdout).contains("sb-py"), "{}", text(&o.stdout));
    assert!(!h.path().join("sandboxes/sb-py").exists());
    // Another profile is built; a run inside it is decided as a `run`.
    let o = with_policy(h.path(), &pol)
        .args(["create", "sb-base"])
        .output()
        .expect("create");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let o = with_policy(h.path(), &pol)
        .args(["exec", "sb-base", "--", "echo", "in"])
        .output()
        .expect("exec");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "in\n");
    let o = cmd(h.path()).args(["rm", "sb-base"]).output().expect("rm");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
}

/// The policy's `profile` rule forces a profile on runs and builds: the run is
/// resolved and decided again with it; a policy that then names yet another
/// profile refuses instead of going round.
#[test]
fn a_policy_can_force_the_profile_of_runs_and_builds() {
    let h = home();
    let pol = h.path().join("pol");
    write(
        &pol,
        "p.rego",
        "package aisbx\n\ndefault allow := true\n\nprofile := \"strict\" if input.profile.name == \"python\"\n",
    );
    let o = with_policy(h.path(), &pol)
        .args(["run", "--json", "--lang", "python", "--code", "print(6*7)"])
        .output()
        .expect("run");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).expect("RunResult");
    assert_eq!(r["stdout"], "42\n", "{r}");
    assert_eq!(r["profile"], "strict", "{r}");
    assert!(
        text(&o.stderr).contains("policy: using profile strict"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(last_audit(h.path())["decision"], "allow");
    // A build asked with python gets the profile the policy requires.
    let o = with_policy(h.path(), &pol)
        .args(["create", "sb-forced", "--profile", "python"])
        .output()
        .expect("create");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let o = with_policy(h.path(), &pol)
        .args(["ls", "--json"])
        .output()
        .expect("ls");
    let list: Value = serde_json::from_slice(&o.stdout).expect("ls json");
    let sb = list["sandboxes"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["id"] == "sb-forced"))
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(sb["profile"], "strict", "{sb}");
    let o = cmd(h.path())
        .args(["rm", "sb-forced"])
        .output()
        .expect("rm");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));

    // A policy that disagrees with itself refuses, with the reason.
    write(
        &pol,
        "p.rego",
        "package aisbx\n\ndefault allow := true\n\nprofile := \"strict\" if input.profile.name == \"python\"\n\nprofile := \"python\" if input.profile.name == \"strict\"\n",
    );
    let o = with_policy(h.path(), &pol)
        .args(["run", "--lang", "python", "--code", "print(1)"])
        .output()
        .expect("run");
    assert_eq!(code(&o), 125, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("agree with itself"),
        "{}",
        text(&o.stderr)
    );
    assert!(o.stdout.is_empty());
}

/// The policy's `network` rule narrows where a run may connect: the profile's
/// destinations it does not cover are dropped (the dry run shows what is left),
/// and a connection to one of them is refused at the proxy and listed.
#[test]
fn a_policy_narrows_a_runs_network_and_never_widens_it() {
    let h = home();
    let pol = h.path().join("pol");
    write(
        &pol,
        "p.rego",
        "package aisbx\n\ndefault allow := true\n\nnetwork := {\"allow\": [\"*.example.org\", \"pypi.org:8443\"], \"deny\": [\"www.example.org\"]} if {\n\t\"python\" in input.profile.network_packages\n}\n",
    );
    let o = with_policy(h.path(), &pol)
        .args([
            "run",
            "--dry-run",
            "--json",
            "--profile",
            "python-dev",
            "--code",
            "print(1)",
        ])
        .output()
        .expect("dry run");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let plan: Value = serde_json::from_slice(&o.stdout).expect("plan");
    // python-dev allows its package index (pypi.org, …): none is covered by
    // "*.example.org" or by pypi.org on another port.
    assert_eq!(plan["network_allow"], serde_json::json!([]), "{plan}");
    assert!(
        plan["notices"]
            .to_string()
            .contains("policy: network to pypi.org"),
        "{plan}"
    );
    let code_ = "import urllib.request\ntry:\n    urllib.request.urlopen('https://pypi.org/simple/', timeout=20)\n    print('reached')\nexcept Exception as e:\n    print('refused', type(e).__name__)\n";
    let o = with_policy(h.path(), &pol)
        .args(["run", "--json", "--profile", "python-dev", "--code", code_])
        .output()
        .expect("run");
    let r: Value = serde_json::from_slice(&o.stdout).expect("RunResult");
    assert!(
        r["stdout"]
            .as_str()
            .unwrap_or_default()
            .starts_with("refused"),
        "{r}"
    );
    assert_eq!(
        r["network_denied"],
        serde_json::json!(["pypi.org:443"]),
        "{r}"
    );
}
