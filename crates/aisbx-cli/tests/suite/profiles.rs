//! Profiles through the real `aisbx` binary: list, show, detect, validate, and the
//! profile `aisbx run` chooses (docs/PROFILES.md).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use super::common::*;

/// `aisbx ARGS` with a private config dir (and a state dir inside it, where
/// `aisbx trust` keeps its approvals), run in `cwd`.
fn aisbx_in(cwd: &Path, config: &Path, args: &[&str]) -> Output {
    let mut c: Command = cmd(&config.join("state"));
    c.current_dir(cwd)
        .env("XDG_CONFIG_HOME", config)
        .args(args)
        .output()
        .expect("run aisbx")
}

/// Approve the project's profiles found from `cwd`.
fn trust(cwd: &Path, config: &Path) {
    let out = aisbx_in(cwd, config, &["trust"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A project directory with `.aisbx/profiles/<name>.toml` files, and a config dir.
fn project(profiles: &[(&str, &str)]) -> (tempfile::TempDir, tempfile::TempDir) {
    let p = tempfile::tempdir().expect("tempdir");
    let dir = p.path().join(".aisbx/profiles");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (name, body) in profiles {
        std::fs::write(dir.join(format!("{name}.toml")), body).expect("write");
    }
    (p, tempfile::tempdir().expect("tempdir"))
}

fn list_json(cwd: &Path, config: &Path) -> Vec<Value> {
    let out = aisbx_in(cwd, config, &["profile", "list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    v["profiles"].as_array().cloned().unwrap_or_default()
}

#[test]
fn list_shows_every_builtin_with_source_and_availability() {
    let (p, cfg) = project(&[]);
    let list = list_json(p.path(), cfg.path());
    let names: Vec<&str> = list.iter().filter_map(|p| p["name"].as_str()).collect();
    for want in [
        "base",
        "strict",
        "dev",
        "python",
        "python-dev",
        "python-prod",
        "node",
        "node-dev",
        "node-prod",
        "bash",
        "bash-dev",
        "bash-prod",
        "sh",
        "perl",
        "go",
        "ruby",
        "java",
        "rust",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for p in &list {
        assert_eq!(p["source"], "builtin", "{p}");
        assert!(p["available"].is_boolean(), "{p}");
        if p["available"] == false {
            assert!(p["missing"].as_str().is_some_and(|m| !m.is_empty()), "{p}");
        }
    }
    let base = list.iter().find(|p| p["name"] == "base").expect("base");
    assert_eq!(base["available"], true);
    let out = aisbx_in(p.path(), cfg.path(), &["profile", "list"]);
    let t = text(&out.stdout);
    assert!(t.starts_with("NAME"), "{t}");
    assert!(t.contains("SOURCE"), "{t}");
}

#[test]
fn a_project_profile_overrides_a_builtin_and_the_run_uses_it() {
    let (p, cfg) = project(&[(
        "python",
        "description = \"team python\"\nextends = [\"python\"]\n[env]\nTEAM = \"yes\"\n[limits]\ntimeout = \"7s\"\n",
    )]);
    trust(p.path(), cfg.path());
    let list = list_json(p.path(), cfg.path());
    let py = list.iter().find(|x| x["name"] == "python").expect("python");
    assert_eq!(py["source"], "project", "{py}");
    assert_eq!(py["description"], "team python");

    let out = aisbx_in(
        p.path(),
        cfg.path(),
        &["profile", "show", "python", "--resolved"],
    );
    let t = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        t.contains("base (builtin) → python (builtin) → python (project)"),
        "{t}"
    );
    assert!(
        t.lines()
            .any(|l| l.starts_with("timeout = \"7s\"") && l.ends_with("# python (project)")),
        "{t}"
    );
    assert!(
        t.lines()
            .any(|l| l.starts_with("pids = 256") && l.ends_with("# base (builtin)")),
        "{t}"
    );

    // The run picks the project's python: its env and its limit.
    let out = aisbx_in(
        p.path(),
        cfg.path(),
        &[
            "run",
            "--json",
            "--lang",
            "python",
            "--code",
            "import os; print(os.environ.get('TEAM'))",
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("RunResult");
    assert_eq!(stdout(&v), "yes\n", "{v}");
    assert_eq!(v["profile"], "python");
}

#[test]
fn user_profiles_sit_between_builtins_and_the_project() {
    let (p, cfg) = project(&[("team", "extends = [\"mine\"]\n[limits]\npids = 33\n")]);
    trust(p.path(), cfg.path());
    let user = cfg.path().join("aisbx/profiles");
    std::fs::create_dir_all(&user).expect("mkdir");
    std::fs::write(
        user.join("mine.toml"),
        "description = \"my defaults\"\nextends = [\"base\"]\n[limits]\npids = 22\nnofile = 99\n",
    )
    .expect("write");
    let out = aisbx_in(p.path(), cfg.path(), &["profile", "show", "team", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["values"]["limits.pids"]["value"], 33);
    assert_eq!(v["values"]["limits.pids"]["from"][0], "team (project)");
    assert_eq!(v["values"]["limits.nofile"]["value"], 99);
    assert_eq!(v["values"]["limits.nofile"]["from"][0], "mine (user)");
    let list = list_json(p.path(), cfg.path());
    let mine = list.iter().find(|x| x["name"] == "mine").expect("mine");
    assert_eq!(mine["source"], "user");
}

#[test]
fn detect_explains_its_choice() {
    let (p, cfg) = project(&[]);
    let d = p.path();
    std::fs::write(d.join("package.json"), "{}").expect("write");
    std::fs::write(d.join("stray.py"), "print(1)\n").expect("write");
    std::fs::write(d.join("tool"), "#!/usr/bin/env python3\nprint(1)\n").expect("write");
    let detect = |args: &[&str]| -> Value {
        let mut full = vec!["profile", "detect", "--json"];
        full.extend_from_slice(args);
        let out = aisbx_in(d, cfg.path(), &full);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let cases: &[(&[&str], &str, &str)] = &[
        (&["stray.py"], "python", "extension"),
        (&["tool"], "python", "shebang"),
        (&["."], "node", "marker"),
        (&[], "node", "marker"),
        (&["--code", "x = 1", "--workdir", "."], "node", "marker"),
        (&["--code", "console.log(1)"], "node", "code"),
        (&["--code", "print(1)", "--lang", "py"], "python", "lang"),
        (&["stray.py", "--profile", "strict"], "strict", "profile"),
    ];
    for (args, profile, basis) in cases {
        let v = detect(args);
        assert_eq!(v["profile"], *profile, "{args:?}: {v}");
        assert_eq!(v["basis"], *basis, "{args:?}: {v}");
        assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    }
    let out = aisbx_in(d, cfg.path(), &["profile", "detect", "--code", "42"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("cannot tell the language"),
        "{out:?}"
    );
}

#[test]
fn run_says_on_stderr_which_profile_it_inferred() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tool = dir.path().join("tool");
    std::fs::write(&tool, "#!/usr/bin/env python3\nprint('inferred')\n").expect("write");
    let out = aisbx(&["run", "--json", tool.to_str().unwrap_or_default()]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is only the RunResult");
    assert_eq!(stdout(&v), "inferred\n");
    assert_eq!(v["profile"], "python");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("aisbx: using profile python ("), "{err}");
    // --code without --lang: the code decides, and says so.
    let out = aisbx(&["run", "--code", "console.log('js', 6*7)"]);
    assert_eq!(text(&out.stdout), "js 42\n", "{out:?}");
    assert!(text(&out.stderr).contains("using profile node"), "{out:?}");
    // Told explicitly, or a plain command: nothing is added.
    let out = aisbx(&["run", "--lang", "python", "--code", "print(1)"]);
    assert_eq!(text(&out.stderr), "");
    let out = aisbx(&["run", "--", "/bin/true"]);
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn profiles_set_limits_env_and_seccomp_of_the_run() {
    // strict: 10 s wall time and 64 processes.
    let (v, code) = run_json(&["--profile", "strict", "--", "/bin/sh", "-c", "ulimit -n"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(stdout(&v), "256\n", "{v}");
    assert_eq!(v["profile"], "strict");
    // A per-call option overrides the profile last.
    let (v, code) = run_json(&[
        "--profile",
        "strict",
        "--timeout",
        "0.5",
        "--",
        "sleep",
        "3",
    ]);
    assert_eq!(code, 124, "{v}");
    // A runtime-less profile with a language gets the language's environment.
    let (v, code) = run_json(&[
        "--profile",
        "strict",
        "--lang",
        "python",
        "--code",
        "import os; print(os.environ.get('PYTHONUNBUFFERED'))",
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(stdout(&v), "1\n");
    assert_eq!(v["profile"], "strict");
}

#[test]
fn validate_lists_every_error_with_lines_and_exits_non_zero() {
    let (p, cfg) = project(&[]);
    let bad = p.path().join("bad.toml");
    std::fs::write(
        &bad,
        "extends = [\"base\"]\n[limits]\ntimout = \"5s\"\nmemory = \"lots\"\n[security]\nseccomp = \"off\"\n[filesystem]\nro_binds = [\"/root/.ssh\"]\n[network]\nallow = [\"https://example.com\"]\n",
    )
    .expect("write");
    let out = aisbx_in(p.path(), cfg.path(), &["profile", "validate", "bad.toml"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let t = text(&out.stdout);
    assert!(t.contains("5 errors"), "{t}");
    assert!(
        t.contains("bad.toml:3:1: unknown key 'timout' in [limits]; did you mean 'timeout'?"),
        "{t}"
    );
    assert!(t.contains("bad.toml:4:"), "{t}");
    assert!(t.contains("bad.toml:6:"), "{t}");
    assert!(t.contains("/root/.ssh"), "{t}");
    assert!(
        t.contains("network.allow: 'https://example.com' is not a destination"),
        "{t}"
    );

    let good = p.path().join("good.toml");
    std::fs::write(&good, "extends = [\"python\", \"dev\"]\n").expect("write");
    let out = aisbx_in(p.path(), cfg.path(), &["profile", "validate", "good.toml"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text(&out.stdout).contains(
            "ok (chain: base (builtin) → python (builtin) → dev (builtin) → good (project)"
        ),
        "{out:?}"
    );

    // A broken chain: a cycle through project files, and a missing parent.
    let (p, cfg) = project(&[("a", "extends = [\"b\"]\n"), ("b", "extends = [\"a\"]\n")]);
    let out = aisbx_in(
        p.path(),
        cfg.path(),
        &["profile", "validate", ".aisbx/profiles/a.toml"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stdout).contains("cycle"), "{out:?}");
    let lost = p.path().join("lost.toml");
    std::fs::write(&lost, "extends = [\"nowhere\"]\n").expect("write");
    let out = aisbx_in(p.path(), cfg.path(), &["profile", "validate", "lost.toml"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stdout).contains("chain: lost → nowhere"),
        "{out:?}"
    );
}

#[test]
fn a_run_with_an_invalid_or_unavailable_profile_is_refused_clearly() {
    let (p, cfg) = project(&[
        (
            "typo",
            "extends = [\"base\"]\n[security]\nseccom = \"dev\"\n",
        ),
        (
            "cobol",
            "extends = [\"base\"]\n[runtime]\nlanguage = \"cobol\"\ninterpreters = [\"no-such-cobc-xyz\"]\nextensions = [\"cob\"]\n",
        ),
    ]);
    trust(p.path(), cfg.path());
    let out = aisbx_in(
        p.path(),
        cfg.path(),
        &["run", "--profile", "typo", "--", "true"],
    );
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        text(&out.stderr).contains("did you mean 'seccomp'?"),
        "{out:?}"
    );
    let list = list_json(p.path(), cfg.path());
    let cobol = list.iter().find(|x| x["name"] == "cobol").expect("cobol");
    assert_eq!(cobol["available"], false);
    assert!(
        cobol["missing"]
            .as_str()
            .unwrap_or_default()
            .contains("no-such-cobc-xyz"),
        "{cobol}"
    );
    let out = aisbx_in(
        p.path(),
        cfg.path(),
        &["run", "--lang", "cobol", "--code", "x"],
    );
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(
        text(&out.stderr).contains("cobol is not installed"),
        "{out:?}"
    );
}

#[test]
fn read_write_binds_from_a_project_profile() {
    use std::os::unix::fs::MetadataExt;
    // A project profile binds read-write only inside its project, read-only
    // elsewhere. The sandbox has its own /tmp, which would hide binds under the
    // host's: use directories elsewhere.
    std::fs::create_dir_all("/srv").expect("/srv");
    let project = tempfile::tempdir_in("/srv").expect("tempdir");
    let shared = tempfile::tempdir_in(project.path()).expect("tempdir");
    let other = tempfile::tempdir_in("/srv").expect("tempdir");
    std::fs::write(other.path().join("ro.txt"), "x").expect("write");
    let profiles = project.path().join(".aisbx/profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    std::fs::write(
        profiles.join("cache.toml"),
        format!(
            "extends = [\"base\"]\n[filesystem]\nrw_binds = [\"{}\"]\nro_binds = [\"{}\"]\n",
            shared.path().display(),
            other.path().display()
        ),
    )
    .expect("profile");
    let h = home();
    let out = cmd(h.path())
        .current_dir(project.path())
        .arg("trust")
        .output()
        .expect("trust");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let script = format!(
        "echo kept > {s}/made.txt && echo wrote; echo no > {o}/ro.txt 2>/dev/null || echo ro-refused; echo no > {o}/new 2>/dev/null || echo ro-new-refused",
        s = shared.path().display(),
        o = other.path().display()
    );
    let out = cmd(h.path())
        .current_dir(project.path())
        .args([
            "run",
            "--json",
            "--profile",
            "cache",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ])
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(stdout(&v), "wrote\nro-refused\nro-new-refused\n", "{v}");
    let made = shared.path().join("made.txt");
    assert_eq!(std::fs::read_to_string(&made).expect("made"), "kept\n");
    // It belongs to the directory's owner, not to a stray uid.
    let owner = std::fs::metadata(shared.path()).expect("meta").uid();
    assert_eq!(std::fs::metadata(&made).expect("meta").uid(), owner);
    assert_eq!(
        std::fs::read_to_string(other.path().join("ro.txt")).expect("ro"),
        "x"
    );
}

#[test]
fn read_write_binds_of_secrets_are_refused() {
    let project = tempfile::tempdir().expect("tempdir");
    let profiles = project.path().join(".aisbx/profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    std::fs::write(
        profiles.join("bad.toml"),
        "[filesystem]\nrw_binds = [\"/root\"]\n",
    )
    .expect("profile");
    let h = home();
    let out = cmd(h.path())
        .current_dir(project.path())
        .arg("trust")
        .output()
        .expect("trust");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = cmd(h.path())
        .current_dir(project.path())
        .args(["run", "--profile", "bad", "--", "true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/root"),
        "{out:?}"
    );
}

/// One MCP `tools/call` over stdio (`aisbx mcp`), in `cwd` with the config dir
/// of [`aisbx_in`]: the whole answer.
fn mcp_call(cwd: &Path, config: &Path, tool: &str, args: Value) -> Value {
    mcp_call_in(cwd, config, &config.join("state"), &[], tool, args)
}

/// As [`mcp_call`], with `$AISBX_HOME` set to `env_home` and `aisbx mcp MCP_ARGS`.
fn mcp_call_in(
    cwd: &Path,
    config: &Path,
    env_home: &Path,
    mcp_args: &[&str],
    tool: &str,
    args: Value,
) -> Value {
    use std::io::{BufRead, BufReader, Write};
    let mut child = cmd(env_home)
        .current_dir(cwd)
        .env("XDG_CONFIG_HOME", config)
        .arg("mcp")
        .args(mcp_args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("aisbx mcp");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut send = |v: Value| writeln!(stdin, "{v}").expect("send");
    send(
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "profiles-test", "version": "1"}}}),
    );
    let _init = lines.next().expect("initialize answer").expect("read");
    send(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    send(
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": tool, "arguments": args}}),
    );
    let answer = loop {
        let line = lines.next().expect("tool answer").expect("read");
        let v: Value = serde_json::from_str(&line).expect("json");
        if v["id"] == 2 {
            break v;
        }
    };
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    answer
}

/// Every entry point that resolves a profile, with a broken `python.toml` whose
/// error is at `file`:3:1 (a user or an approved project profile), run in `cwd`:
/// each is refused naming the file and the line, never "unknown language" nor
/// a run with the built-in python.
fn every_entry_point_names_the_broken_file(cwd: &Path, cfg: &Path, file: &Path) {
    let at = format!("{}:3:1: unknown key 'timout'", file.display());
    let refused = |args: &[&str]| {
        let out = aisbx_in(cwd, cfg, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {out:?}");
        assert!(err.contains(&at), "{args:?}: {err}");
        assert!(!err.contains("unknown language"), "{args:?}: {err}");
        assert!(!err.contains("cannot tell"), "{args:?}: {err}");
        assert_eq!(text(&out.stdout), "", "{args:?}: ran anyway");
    };
    let w = tempfile::tempdir_in(cwd).expect("tempdir");
    let d = w.path();
    std::fs::write(d.join("x.py"), "print('ran')\n").expect("write");
    std::fs::write(d.join("tool"), "#!/usr/bin/env python3\nprint('ran')\n").expect("write");
    let proj = d.join("proj");
    std::fs::create_dir(&proj).expect("mkdir");
    std::fs::write(proj.join("requirements.txt"), "").expect("write");
    let s = |p: &Path| p.to_str().unwrap_or_default().to_string();
    let (x, tool, proj) = (s(&d.join("x.py")), s(&d.join("tool")), s(&proj));
    refused(&["run", "--lang", "python", "--code", "print('ran')"]);
    refused(&["run", "--lang", "py", "--code", "print('ran')"]);
    refused(&["run", &x]);
    refused(&["run", &tool]);
    refused(&["run", "--code", "import os\nprint('ran')"]);
    refused(&["run", "--workdir", &proj, "--", "/bin/echo", "ran"]);
    refused(&["run", "--profile", "python", "--code", "print('ran')"]);
    refused(&[
        "run",
        "--profile",
        "strict",
        "--lang",
        "python",
        "--code",
        "1",
    ]);
    refused(&["profile", "detect", &x]);
    refused(&["create", "--profile", "python", "pybox"]);
    // A snapshot restored into a sandbox with the broken profile.
    assert_eq!(
        aisbx_in(cwd, cfg, &["create", "plain"]).status.code(),
        Some(0)
    );
    let snap = aisbx_in(cwd, cfg, &["snap", "create", "s1", "--sandbox", "plain"]);
    assert_eq!(snap.status.code(), Some(0), "{snap:?}");
    refused(&[
        "snap",
        "restore",
        "s1",
        "--sandbox",
        "r1",
        "--profile",
        "python",
    ]);
    let ls = text(&aisbx_in(cwd, cfg, &["ls"]).stdout);
    assert!(!ls.contains("pybox") && !ls.contains("r1"), "{ls}");
    // MCP: run with a language, run detecting it, build with the profile. (MCP
    // names a user profile by its file name alone: no host path for clients.)
    let mcp_at = "python.toml:3:1: unknown key 'timout'";
    for (tool, args) in [
        (
            "run",
            serde_json::json!({"language": "python", "code": "print('ran')"}),
        ),
        (
            "run",
            serde_json::json!({"code": "import os\nprint('ran')"}),
        ),
        ("build", serde_json::json!({"profile": "python"})),
    ] {
        let v = mcp_call(cwd, cfg, tool, args.clone());
        let all = v.to_string();
        assert!(all.contains(mcp_at), "{tool} {args}: {all}");
        assert!(!all.contains("unknown language"), "{tool} {args}: {all}");
        assert!(!all.contains("ran\\n"), "{tool} {args}: {all}");
    }
    // What it could not have matched still runs.
    let out = aisbx_in(cwd, cfg, &["run", "--lang", "sh", "--code", "echo fine"]);
    assert_eq!(text(&out.stdout), "fine\n", "{out:?}");
    aisbx_in(cwd, cfg, &["rm", "plain"]);
    unmount_under(cfg);
}

const BROKEN_PYTHON: &str = "extends = [\"python\"]\n[limits]\ntimout = \"5s\"\n";

#[test]
fn a_broken_user_profile_is_named_wherever_it_is_used() {
    let (p, cfg) = project(&[]);
    let user = cfg.path().join("aisbx/profiles");
    std::fs::create_dir_all(&user).expect("mkdir");
    std::fs::write(user.join("python.toml"), BROKEN_PYTHON).expect("write");
    every_entry_point_names_the_broken_file(p.path(), cfg.path(), &user.join("python.toml"));
}

#[test]
fn a_broken_approved_project_profile_is_named_wherever_it_is_used() {
    let (p, cfg) = project(&[("python", BROKEN_PYTHON)]);
    trust(p.path(), cfg.path());
    let root = std::fs::canonicalize(p.path()).expect("canonical");
    let file = root.join(".aisbx/profiles/python.toml");
    every_entry_point_names_the_broken_file(&root, cfg.path(), &file);
}

#[test]
fn snap_restore_uses_its_profile_or_refuses_it() {
    let (p, cfg) = project(&[]);
    let (cwd, cfg) = (p.path(), cfg.path());
    let ok = |args: &[&str]| {
        let out = aisbx_in(cwd, cfg, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        text(&out.stdout)
    };
    ok(&["create", "src"]);
    ok(&[
        "exec",
        "src",
        "--",
        "/bin/sh",
        "-c",
        "echo kept > /workspace/f",
    ]);
    ok(&["snap", "create", "s", "--sandbox", "src"]);
    // An unknown profile: refused with a suggestion, and no sandbox made.
    let out = aisbx_in(
        cwd,
        cfg,
        &[
            "snap",
            "restore",
            "s",
            "--sandbox",
            "r",
            "--profile",
            "stirct",
        ],
    );
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("no profile named 'stirct'"), "{err}");
    assert!(err.contains("did you mean 'strict'?"), "{err}");
    assert!(!ok(&["ls"]).contains("\nr "), "a sandbox was made");
    // A known one: the sandbox has it, and its runs get its limits (strict: 256 files).
    ok(&[
        "snap",
        "restore",
        "s",
        "--sandbox",
        "r",
        "--profile",
        "strict",
    ]);
    let ls: Value = serde_json::from_str(&ok(&["ls", "--json"])).expect("json");
    let r = ls["sandboxes"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["id"] == "r"))
        .cloned()
        .expect("sandbox r");
    assert_eq!(r["profile"], "strict", "{r}");
    let got = ok(&[
        "exec",
        "r",
        "--",
        "/bin/sh",
        "-c",
        "cat /workspace/f; ulimit -n",
    ]);
    assert_eq!(got, "kept\n256\n");
    // Without --profile: the snapshot's (src's: base, 1024 files).
    ok(&["snap", "restore", "s", "--sandbox", "r2"]);
    assert_eq!(
        ok(&["exec", "r2", "--", "/bin/sh", "-c", "ulimit -n"]),
        "1024\n"
    );
    // Into a directory a profile has no use: refused, nothing written.
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("out");
    let out = aisbx_in(
        cwd,
        cfg,
        &[
            "snap",
            "restore",
            "s",
            "--workdir",
            target.to_str().unwrap_or_default(),
            "--profile",
            "strict",
        ],
    );
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("drop --profile"), "{err}");
    assert!(!target.exists());
    for sb in ["r", "r2", "src"] {
        ok(&["rm", sb]);
    }
    unmount_under(cfg);
}

#[test]
fn mcp_build_and_run_see_the_same_approvals() {
    // Approved in one state directory, served with `--home` set to it while
    // $AISBX_HOME names another: run and build both use the approved profile.
    let (p, cfg) = project(&[("team", "extends = [\"base\"]\n[env]\nTEAM = \"approved\"\n")]);
    trust(p.path(), cfg.path());
    let state = cfg.path().join("state");
    let home = state.to_str().unwrap_or_default();
    let elsewhere = cfg.path().join("elsewhere");
    let call = |tool: &str, args: Value| {
        mcp_call_in(
            p.path(),
            cfg.path(),
            &elsewhere,
            &["--home", home],
            tool,
            args,
        )
    };
    let v = call(
        "run",
        serde_json::json!({"profile": "team", "command": ["/bin/sh", "-c", "echo $TEAM"]}),
    );
    assert!(v.to_string().contains("approved\\n"), "{v}");
    let v = call(
        "build",
        serde_json::json!({"profile": "team", "name": "tb"}),
    );
    let all = v.to_string();
    assert!(!all.contains("not trusted"), "{all}");
    assert_eq!(v["result"]["structuredContent"]["profile"], "team", "{all}");
    aisbx_in(p.path(), cfg.path(), &["rm", "tb"]);
    unmount_under(cfg.path());
}
