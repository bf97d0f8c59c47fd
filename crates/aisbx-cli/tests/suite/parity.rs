//! What the MCP tools can do, the CLI can do too: arguments for a script or code,
//! code in a persistent sandbox, and the same limits for `exec` as for `run`.

use super::common::*;

#[test]
fn a_script_gets_the_arguments_after_the_separator() {
    let t = tempfile::tempdir().expect("tempdir");
    let f = t.path().join("args.py");
    std::fs::write(&f, "import sys\nprint(sys.argv[1:])\n").expect("write");
    let (v, code) = run_json(&[f.to_str().expect("utf-8"), "--", "a", "b c", "--flag"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(stdout(&v), "['a', 'b c', '--flag']\n");
}

#[test]
fn code_gets_the_arguments_after_the_separator() {
    let (v, code) = run_json(&[
        "--lang",
        "node",
        "--code",
        "console.log(JSON.stringify(process.argv.slice(2)))",
        "--",
        "x",
        "y",
    ]);
    assert_eq!((code, stdout(&v)), (0, "[\"x\",\"y\"]\n"), "{v}");
}

#[test]
fn exec_runs_code_in_a_sandbox_with_run_s_limits() {
    let h = home();
    ok(h.path(), &["create", "box", "--profile", "python"]);
    let out = cmd(h.path())
        .args([
            "exec",
            "--json",
            "--pids",
            "16",
            "--cpus",
            "0.5",
            "box",
            "--code",
            "open('kept', 'w').write('1')\nimport sys\nprint(sys.argv[1:])",
            "--",
            "q",
        ])
        .output()
        .expect("exec");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("RunResult");
    assert_eq!(stdout(&v), "['q']\n", "{v}");
    assert_eq!(v["profile"], "python");
    let out = cmd(h.path())
        .args(["exec", "box", "--", "cat", "kept"])
        .output()
        .expect("exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1");
    let out = cmd(h.path())
        .args(["exec", "box", "--lang", "node", "--code", "1"])
        .output()
        .expect("exec");
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("runs python, not 'node'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(h.path(), &["rm", "box"]);
}
