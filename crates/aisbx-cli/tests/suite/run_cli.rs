//! `aisbx run` as a user meets it: the three forms, streaming, JSON, exit statuses,
//! bad input.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use super::common::*;

#[test]
fn command_form_streams_and_returns_the_exit_status() {
    let out = aisbx(&[
        "run",
        "--",
        "/bin/sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
}

#[test]
fn json_result_has_every_field() {
    let (v, code) = run_json(&["--", "/bin/sh", "-c", "echo hi; exit 3"]);
    assert_eq!(code, 3);
    for f in [
        "exit_code",
        "signal",
        "timed_out",
        "oom_killed",
        "stdout",
        "stderr",
        "stdout_truncated",
        "stderr_truncated",
        "duration_ms",
        "cpu_ms",
        "max_rss_kib",
        "profile",
        "sandbox_id",
    ] {
        assert!(v.get(f).is_some(), "{f} missing: {v}");
    }
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["signal"], serde_json::Value::Null);
    assert_eq!(v["stdout"], "hi\n");
    assert_eq!(v["profile"], "base");
    assert_eq!(v["sandbox_id"], serde_json::Value::Null);
}

#[test]
fn code_form_runs_each_language() {
    let cases = [
        (
            "python",
            "import sys; print('py', sys.version_info[0])",
            "py 3\n",
        ),
        ("node", "console.log('js', 1+1)", "js 2\n"),
        ("bash", "echo bash ${BASH_VERSINFO[0]:+ok}", "bash ok\n"),
        ("sh", "echo sh", "sh\n"),
        ("perl", "print \"pl\\n\"", "pl\n"),
    ];
    for (lang, code, want) in cases {
        let (v, status) = run_json(&["--lang", lang, "--code", code]);
        assert_eq!(status, 0, "{lang}: {v}");
        assert_eq!(stdout(&v), want, "{lang}: {v}");
        assert_eq!(v["profile"], lang);
    }
    // Java reads its configuration from /etc/java-<N>-openjdk, bound per run.
    if std::path::Path::new("/usr/bin/java").exists() {
        let code = "public class Main { public static void main(String[] a) { System.out.println(\"jv\"); } }";
        let (v, status) = run_json(&["--timeout", "60", "--lang", "java", "--code", code]);
        assert_eq!(status, 0, "java: {v}");
        assert_eq!(stdout(&v), "jv\n", "java: {v}");
    }
    // Debian's per-version python configuration is there too, as on the host.
    if let Ok(py) = std::fs::canonicalize("/usr/bin/python3") {
        let etc = std::path::Path::new("/etc").join(py.file_name().unwrap_or_default());
        if etc.is_dir() {
            let (v, _) = sh(&format!("test -d {} && echo bound", etc.display()));
            assert_eq!(stdout(&v), "bound\n", "{v}");
        }
    }
}

#[test]
fn file_form_by_extension_and_by_shebang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let py = dir.path().join("hello.py");
    std::fs::write(&py, "print('from file')\n").expect("write");
    let tool = dir.path().join("tool");
    std::fs::write(&tool, "#!/usr/bin/env node\nconsole.log('shebang node')\n").expect("write");
    let (v, code) = run_json(&[py.to_str().unwrap_or_default()]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(stdout(&v), "from file\n");
    let (v, code) = run_json(&[tool.to_str().unwrap_or_default()]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(stdout(&v), "shebang node\n");
    assert_eq!(v["profile"], "node");
}

#[test]
fn pyenv_interpreter_runs_from_its_own_prefix() {
    // The host's python3 may be a pyenv shim: the real interpreter's prefix is bound.
    let (v, code) = run_json(&[
        "--lang",
        "python",
        "--code",
        "import sys, ssl, json; print(sys.prefix)",
    ]);
    assert_eq!(code, 0, "{v}");
    assert!(stdout(&v).starts_with('/'), "{v}");
}

#[test]
fn exit_statuses_follow_the_spec() {
    assert_eq!(
        aisbx(&["run", "--", "/bin/sh", "-c", "kill -TERM $$"])
            .status
            .code(),
        Some(128 + 15)
    );
    assert_eq!(
        aisbx(&["run", "--timeout", "0.5", "--", "sleep", "5"])
            .status
            .code(),
        Some(124)
    );
    let nf = aisbx(&["run", "--", "no-such-program-xyz"]);
    assert_eq!(nf.status.code(), Some(127));
    assert!(
        String::from_utf8_lossy(&nf.stderr).contains("not found"),
        "{nf:?}"
    );
    assert_eq!(
        aisbx(&["run", "--", "/etc/hostname"]).status.code(),
        Some(126)
    );
}

#[test]
fn bad_input_gets_one_sentence_and_125() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    let mut many = vec!["run", "--"];
    many.extend(std::iter::repeat_n("x", 5000));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "--frobnicate", "--", "true"], "--frobnicate"),
        (
            vec!["run", "--memory", "12XB", "--", "true"],
            "invalid size '12XB'",
        ),
        (vec!["run", "--timeout=-3", "--", "true"], "timeout"),
        (
            vec!["run", missing.to_str().unwrap_or_default()],
            "cannot read",
        ),
        (
            vec![
                "run",
                "--workdir",
                missing.to_str().unwrap_or_default(),
                "--",
                "true",
            ],
            "workdir",
        ),
        (
            vec!["run", "--lang", "cobol", "--code", "x"],
            "unknown language",
        ),
        (many, "more than 4096 arguments"),
        (vec!["run"], "nothing to run"),
        (vec!["run", "--pids", "1", "--", "true"], "pids"),
        (vec!["run", "--env", "NOEQUALS", "--", "true"], "K=V"),
    ];
    for (args, needle) in cases {
        let out = aisbx(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(125),
            "{:?}: {err}",
            &args[..args.len().min(3)]
        );
        assert!(
            err.contains(needle),
            "{:?}: {err}",
            &args[..args.len().min(3)]
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn non_utf8_output_is_carried() {
    let (v, code) = sh("printf 'a\\377\\376b'");
    assert_eq!(code, 0);
    assert_eq!(stdout(&v), "a\u{fffd}\u{fffd}b");
    let out = aisbx(&["run", "--", "/bin/sh", "-c", "printf 'a\\377b'"]);
    assert_eq!(out.stdout, b"a\xffb");
}

#[test]
fn stdin_is_passed_through() {
    let out = with_stdin(&["run", "--", "/usr/bin/wc", "-c"], b"12345");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");
}

#[test]
fn output_streams_live() {
    // The program writes a line, then waits for input that the test sends only after
    // it has read that line: this finishes only if output is streamed live.
    let h = home();
    let mut child = cmd(h.path())
        .args([
            "run",
            "--timeout",
            "20",
            "--",
            "/bin/sh",
            "-c",
            "echo first; read x; echo got $x",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("first"));
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "ping").expect("write");
    drop(stdin);
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("got ping")
    );
    assert!(child.wait().expect("wait").success());
}

#[test]
fn workdir_is_bound_and_files_belong_to_its_owner() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("input.txt"), "hello").expect("write");
    let w = dir.path().to_str().unwrap_or_default();
    let (v, code) = run_json(&[
        "--workdir",
        w,
        "--",
        "/bin/sh",
        "-c",
        "cat input.txt; echo made > out.txt; mkdir sub; touch sub/f",
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(stdout(&v), "hello");
    let owner = std::fs::metadata(dir.path()).expect("meta").uid();
    for f in ["out.txt", "sub", "sub/f"] {
        let m = std::fs::metadata(dir.path().join(f)).expect("created");
        assert_eq!(m.uid(), owner, "{f} belongs to uid {}", m.uid());
    }
    // A directory of another (non-root) user: files are that user's.
    if is_root() {
        let other = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::chown(other.path(), Some(4242), Some(4242)).expect("chown");
        let (v, code) = run_json(&[
            "--workdir",
            other.path().to_str().unwrap_or_default(),
            "--",
            "/bin/sh",
            "-c",
            "touch made",
        ]);
        assert_eq!(code, 0, "{v}");
        assert_eq!(
            std::fs::metadata(other.path().join("made"))
                .expect("made")
                .uid(),
            4242
        );
    }
}

#[test]
fn fresh_workspace_is_gone_after_the_run() {
    let (v, _) = sh("echo data > /workspace/f; ls /workspace");
    assert_eq!(stdout(&v), "f\n");
    let (v, _) = sh("ls -A /workspace | wc -l");
    assert_eq!(stdout(&v).trim(), "0");
}

#[test]
fn doctor_reports_every_layer() {
    let out = aisbx(&["doctor", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let names: Vec<&str> = v["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    for n in [
        "user namespace",
        "mount namespace",
        "pid namespace",
        "net namespace",
        "ipc namespace",
        "uts namespace",
        "cgroup namespace",
        "no_new_privs",
        "seccomp",
        "landlock",
        "cgroups",
    ] {
        assert!(names.contains(&n), "{n} missing from doctor: {names:?}");
    }
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert!(v["landlock_abi"].as_i64().unwrap_or(0) >= 1);
    let text = aisbx(&["doctor"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("cgroup version"));
}

#[test]
fn help_teaches() {
    let out = aisbx(&["run", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let h = String::from_utf8_lossy(&out.stdout);
    for needle in ["--workdir", "--memory", "--json", "Exit status", "Examples"] {
        assert!(h.contains(needle), "{needle} missing from help");
    }
    // `run` is parsed on a fast path; its errors still come from the full parser.
    let out = aisbx(&["run", "--frobnicate", "--", "true"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("Usage: aisbx run"), "{e}");
}

#[test]
fn a_missing_runtime_is_127_never_a_host_fallback() {
    let h = home();
    let out = cmd(h.path())
        .env("PATH", "/nonexistent")
        .args(["run", "--lang", "node", "--code", "console.log(1)"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not installed"),
        "{out:?}"
    );
}

#[test]
fn oversized_scripts_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.py");
    std::fs::write(&big, "#".repeat(5 << 20)).expect("write");
    let out = aisbx(&["run", big.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("larger than"),
        "{out:?}"
    );
}

#[test]
fn a_relative_state_directory_is_refused() {
    let t = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(bin())
        .current_dir(t.path())
        .env("AISBX_HOME", "state")
        .args(["run", "--", "true"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run aisbx");
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must be an absolute path"), "{err}");
    assert!(!t.path().join("state").exists(), "nothing is created");
}
