//! The perimeter around a run, through the real `aisbx` binary: a project's own
//! profiles (which code in a `--workdir` run can write) are used only once the
//! user approved their exact content, and every host path a request or profile
//! names goes through one check (docs/PROFILES.md, "Trust" and "Host paths").
//! Each test attempts the attack and asserts it is refused with exit 125 and one
//! sentence, and that the host is untouched.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use super::common::*;

const NOBODY: u32 = 65534;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// A caller: a state dir, a config dir and a home of its own (with secrets).
struct Caller {
    _t: tempfile::TempDir,
    state: PathBuf,
    config: PathBuf,
    home: PathBuf,
}

impl Caller {
    fn new() -> Caller {
        let t = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(t.path()).expect("canonical");
        let (state, config, home) = (root.join("state"), root.join("config"), root.join("home"));
        for d in [&state, &config, &home.join(".ssh")] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(home.join(".ssh/id_ed25519"), "PRIVATE-KEY-7f3a91").expect("key");
        Caller {
            _t: t,
            state,
            config,
            home,
        }
    }

    fn cmd(&self, cwd: &Path) -> Command {
        let mut c = cmd(&self.state);
        c.current_dir(cwd)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", &self.config);
        c
    }

    fn run(&self, cwd: &Path, args: &[&str]) -> Output {
        self.cmd(cwd).args(args).output().expect("run aisbx")
    }
}

/// Exit 125 and one line on stderr that contains every `needle`.
fn refused(out: &Output, needles: &[&str]) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "one sentence: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
}

fn succeeded(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    text(&out.stdout)
}

/// A project outside /tmp (the sandbox has its own /tmp, which hides binds of
/// the host's), so that a read-write bind would really reach the host.
fn srv_dir() -> tempfile::TempDir {
    std::fs::create_dir_all("/srv").expect("/srv");
    tempfile::tempdir_in("/srv").expect("tempdir")
}

#[test]
fn a_sandbox_cannot_loosen_its_own_next_run() {
    let c = Caller::new();
    let project = srv_dir();
    let p = std::fs::canonicalize(project.path()).expect("canonical");
    // A stand-in for /etc/cron.d: a host directory outside the project.
    let target = srv_dir();
    let t = std::fs::canonicalize(target.path()).expect("canonical");
    // Code in a --workdir run writes a profile for the next run: a read-write
    // bind of the host directory, the dev seccomp filter, higher limits.
    let evil = format!(
        "[filesystem]\nrw_binds = [\"{}\"]\n[security]\nseccomp = \"dev\"\n[limits]\npids = 100000\n",
        t.display()
    );
    let write = format!(
        "mkdir -p .aisbx/profiles && printf '%s' '{evil}' > .aisbx/profiles/base.toml && echo written"
    );
    let out = c.run(
        &p,
        &["run", "--workdir", s(&p), "--", "/bin/sh", "-c", &write],
    );
    assert_eq!(succeeded(&out), "written\n");
    let file = p.join(".aisbx/profiles/base.toml");
    assert!(file.is_file());

    // The next, identical kind of command is refused, naming the file and the way on.
    let attack = format!("echo owned > {}/job && echo wrote", t.display());
    let next = |c: &Caller, extra: &[&str]| {
        let mut args = vec!["run", "--workdir", s(&p)];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "/bin/sh", "-c", &attack]);
        c.run(&p, &args)
    };
    let out = next(&c, &[]);
    let trust_cmd = format!("aisbx trust {}", p.display());
    refused(
        &out,
        &[
            s(&file),
            &trust_cmd,
            "--ignore-project-profiles",
            "not trusted",
        ],
    );
    assert!(!t.join("job").exists(), "the host directory was written");
    // From the project directory itself (no --workdir), the same.
    let out = c.run(&p, &["run", "--", "/bin/true"]);
    refused(&out, &[s(&file), &trust_cmd]);

    // --ignore-project-profiles: the run goes ahead without them.
    let out = next(&c, &["--ignore-project-profiles"]);
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(!t.join("job").exists(), "the host directory was written");

    // Approved, a project profile still cannot bind outside its project read-write.
    succeeded(&c.run(&p, &["trust"]));
    let out = next(&c, &[]);
    refused(&out, &["outside the project directory", s(&t)]);
    assert!(!t.join("job").exists(), "the host directory was written");

    // A profile the user wants: approved, it loads; any edit revokes it.
    std::fs::create_dir(p.join("out")).expect("mkdir");
    std::fs::write(
        &file,
        format!(
            "[env]\nTEAM = \"approved\"\n[filesystem]\nrw_binds = [\"{}\"]\n",
            p.join("out").display()
        ),
    )
    .expect("write");
    let probe = [
        "run",
        "--",
        "/bin/sh",
        "-c",
        "echo $TEAM; echo x > $PWD/out/made 2>/dev/null; echo done",
    ];
    let out = c.run(&p, &probe);
    refused(&out, &[s(&file), "changed since", &trust_cmd]);
    let out = c.run(&p, &["trust", s(&p)]);
    assert!(succeeded(&out).contains("trusted"), "{out:?}");
    let out = c.run(&p, &["run", "--", "/bin/sh", "-c", "echo $TEAM"]);
    assert_eq!(succeeded(&out), "approved\n");
    std::fs::write(
        &file,
        format!(
            "{}# a comment\n",
            std::fs::read_to_string(&file).expect("read")
        ),
    )
    .expect("write");
    refused(&c.run(&p, &probe), &["changed since"]);
    // A file added next to it revokes too, whatever it is.
    succeeded(&c.run(&p, &["trust"]));
    std::fs::write(p.join(".aisbx/profiles/README"), "x").expect("write");
    refused(&c.run(&p, &probe), &["README", "changed since"]);
    std::fs::remove_file(p.join(".aisbx/profiles/README")).expect("rm");
    assert_eq!(
        succeeded(&c.run(&p, &["run", "--", "/bin/sh", "-c", "echo $TEAM"])),
        "approved\n"
    );

    // --list and --revoke.
    let out = succeeded(&c.run(&p, &["trust", "--list"]));
    assert!(out.contains("trusted") && out.contains(s(&p)), "{out}");
    succeeded(&c.run(&p, &["trust", "--revoke"]));
    refused(&c.run(&p, &["run", "--", "/bin/true"]), &["not trusted"]);
    // The approval lives in the state directory, readable by its owner only.
    let trust_dir = c.state.join("trust");
    let mode = std::fs::metadata(&trust_dir)
        .expect("trust dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);

    // profile list shows it marked rather than failing.
    let out = c.run(&p, &["profile", "list", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let row = v["profiles"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["source"] == "project"))
        .cloned()
        .expect("the project's profile is listed");
    assert_eq!(row["available"], false, "{row}");
    assert!(
        row["missing"]
            .as_str()
            .unwrap_or("")
            .contains("aisbx trust"),
        "{row}"
    );
}

#[test]
fn project_profiles_are_read_without_following_links() {
    let c = Caller::new();
    let project = tempfile::tempdir().expect("tempdir");
    let p = std::fs::canonicalize(project.path()).expect("canonical");
    let dir = p.join(".aisbx/profiles");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let elsewhere = p.join("elsewhere.toml");
    std::fs::write(&elsewhere, "[env]\nX = \"1\"\n").expect("write");
    std::os::unix::fs::symlink(&elsewhere, dir.join("base.toml")).expect("symlink");
    refused(&c.run(&p, &["run", "--", "/bin/true"]), &["symbolic link"]);
    let out = c.run(&p, &["trust"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(text(&out.stderr).contains("symbolic link"), "{out:?}");
    assert!(
        !c.state.join("trust").exists()
            || std::fs::read_dir(c.state.join("trust"))
                .expect("ls")
                .next()
                .is_none()
    );
}

#[test]
fn a_project_profile_cannot_name_an_interpreter_or_widen_the_check() {
    let c = Caller::new();
    let project = tempfile::tempdir().expect("tempdir");
    let p = std::fs::canonicalize(project.path()).expect("canonical");
    let dir = p.join(".aisbx/profiles");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("evil.toml"),
        format!(
            "[runtime]\nlanguage = \"evil\"\ninterpreters = [\"{}/bin/sh\"]\nextensions = [\"evil\"]\n",
            c.home.display()
        ),
    )
    .expect("write");
    std::fs::write(dir.join("wide.toml"), "[perimeter]\nallow = [\"/etc\"]\n").expect("write");
    succeeded(&c.run(&p, &["trust"]));
    let out = c.run(&p, &["run", "--profile", "evil", "--code", "x"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        text(&out.stderr).contains("outside the system directories"),
        "{out:?}"
    );
    let out = c.run(&p, &["run", "--profile", "wide", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        text(&out.stderr).contains("only a user profile may widen"),
        "{out:?}"
    );
}

#[test]
fn workdirs_the_check_refuses() {
    let c = Caller::new();
    let mark = format!("aisbx-perimeter-{}", marker());
    let inside_ssh = c.home.join(".ssh/keys");
    std::fs::create_dir(&inside_ssh).expect("mkdir");
    let link = c.home.join("proj-link");
    std::os::unix::fs::symlink("/etc", &link).expect("symlink");
    let cases: Vec<(PathBuf, &str)> = vec![
        (PathBuf::from("/etc"), "is /etc, a system directory"),
        (PathBuf::from("/etc/ssl"), "lies inside /etc"),
        (PathBuf::from("/root"), "/root"),
        (PathBuf::from("/usr/lib"), "lies inside /usr"),
        (PathBuf::from("/var"), "is /var"),
        (PathBuf::from("/"), "host's root"),
        (PathBuf::from("/tmp"), "is /tmp itself"),
        (PathBuf::from("/home"), "is /home itself"),
        (c.home.clone(), "contains"),
        (c.home.join(".ssh"), "where secrets are kept"),
        (inside_ssh.clone(), "lies inside"),
        (c.state.clone(), "aisbx's own state"),
        (c.config.join("aisbx"), "aisbx's own state or configuration"),
        (link.clone(), "is /etc"),
    ];
    std::fs::create_dir_all(c.config.join("aisbx")).expect("mkdir");
    let write = format!("echo owned > /workspace/{mark}");
    for (dir, rule) in &cases {
        let out = c.run(
            &c.home,
            &["run", "--workdir", s(dir), "--", "/bin/sh", "-c", &write],
        );
        refused(&out, &["invalid workdir", rule]);
        let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        assert!(
            !canon.join(&mark).exists(),
            "{} was written",
            canon.display()
        );
    }
    // A project in the caller's home is fine, and so is one under /tmp or /var/tmp.
    let proj = c.home.join("src/proj");
    std::fs::create_dir_all(&proj).expect("mkdir");
    let var_tmp = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    for ok in [proj.as_path(), var_tmp.path()] {
        let out = c.run(
            &c.home,
            &["run", "--workdir", s(ok), "--", "/bin/sh", "-c", &write],
        );
        succeeded(&out);
        assert!(ok.join(&mark).exists());
    }
}

#[test]
fn snapshots_and_copies_name_only_paths_the_check_allows() {
    let c = Caller::new();
    let cwd = tempfile::tempdir().expect("tempdir");
    let cwd = cwd.path();
    // snap create of /etc, and of the caller's home: refused, nothing stored.
    for (dir, rule) in [("/etc", "is /etc"), (s(&c.home), "contains")] {
        let out = c.run(cwd, &["snap", "create", "leak", "--workdir", dir]);
        refused(&out, &["invalid workdir", rule]);
    }
    let list = succeeded(&c.run(cwd, &["snap", "list", "--json"]));
    assert!(!list.contains("leak"), "{list}");
    // A legitimate one, to restore and copy with.
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("f.txt"), "data").expect("write");
    succeeded(&c.run(cwd, &["snap", "create", "ok", "--workdir", s(src.path())]));
    let mark = format!("aisbx-perimeter-{}", marker());
    for dir in [
        format!("/etc/{mark}"),
        format!("{}/.ssh/{mark}", c.home.display()),
    ] {
        let out = c.run(cwd, &["snap", "restore", "ok", "--workdir", &dir]);
        refused(&out, &["invalid workdir"]);
        assert!(!Path::new(&dir).exists(), "{dir} was made");
    }
    // cp: a host source or destination goes through the same check.
    succeeded(&c.run(cwd, &["create", "box", "--from", "ok"]));
    let out = c.run(cwd, &["cp", "/etc/shadow", "box:shadow"]);
    refused(&out, &["invalid source", "lies inside /etc"]);
    let out = c.run(
        cwd,
        &[
            "cp",
            &format!("{}/.ssh/id_ed25519", c.home.display()),
            "box:key",
        ],
    );
    refused(&out, &["invalid source", "where secrets are kept"]);
    let out = c.run(cwd, &["cp", "box:f.txt", &format!("/etc/{mark}")]);
    refused(&out, &["invalid destination", "lies inside /etc"]);
    assert!(!Path::new(&format!("/etc/{mark}")).exists());
    let out = c.run(cwd, &["cp", "box:f.txt", s(&c.home.join(".ssh"))]);
    refused(&out, &["invalid destination", "where secrets are kept"]);
    assert!(!c.home.join(".ssh/f.txt").exists());
    // Into a directory the check allows: fine, even if it is /tmp itself's child.
    let dst = tempfile::tempdir().expect("tempdir");
    succeeded(&c.run(cwd, &["cp", "box:f.txt", s(dst.path())]));
    assert_eq!(
        std::fs::read_to_string(dst.path().join("f.txt")).expect("copied"),
        "data"
    );
    succeeded(&c.run(cwd, &["rm", "box"]));
}

/// A user profile whose language's interpreter is a host path: its prefix (two
/// levels up) would be bound read-only into the sandbox.
fn interpreter_profile(c: &Caller, interpreter: &str) {
    let dir = c.config.join("aisbx/profiles");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("tool.toml"),
        format!(
            "[runtime]\nlanguage = \"tool\"\ninterpreters = [\"{interpreter}\"]\nextensions = [\"tool\"]\nrun = [\"{{interpreter}}\", \"{{file}}\"]\n"
        ),
    )
    .expect("profile");
}

#[test]
fn an_interpreter_prefix_named_by_a_profile_is_checked() {
    let c = Caller::new();
    let cwd = tempfile::tempdir().expect("tempdir");
    // A shell placed where a prefix would expose the fake home and its key.
    for d in ["bin", ".ssh/bin"] {
        std::fs::create_dir_all(c.home.join(d)).expect("mkdir");
        std::fs::copy("/bin/sh", c.home.join(d).join("sh")).expect("copy sh");
    }
    let read_key = format!("cat {}/.ssh/id_ed25519; echo done", c.home.display());
    for (interp, rule) in [
        (format!("{}/bin/sh", c.home.display()), "contains"),
        (
            format!("{}/.ssh/bin/sh", c.home.display()),
            "where secrets are kept",
        ),
        // A path that walks back out through the secret dir: resolved first.
        (format!("{}/.ssh/../bin/sh", c.home.display()), "contains"),
    ] {
        interpreter_profile(&c, &interp);
        let out = c.run(
            cwd.path(),
            &["run", "--profile", "tool", "--code", &read_key],
        );
        assert!(
            !text(&out.stdout).contains("PRIVATE-KEY"),
            "{interp}: {out:?}"
        );
        refused(&out, &["interpreter", rule]);
    }
    // The same tool outside any home is bound and runs.
    let tools = srv_dir();
    std::fs::create_dir(tools.path().join("bin")).expect("mkdir");
    std::fs::copy("/bin/sh", tools.path().join("bin/sh")).expect("copy sh");
    interpreter_profile(&c, &format!("{}/bin/sh", tools.path().display()));
    let out = c.run(
        cwd.path(),
        &["run", "--profile", "tool", "--code", &read_key],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!text(&out.stdout).contains("PRIVATE-KEY"), "{out:?}");
    assert!(text(&out.stdout).contains("done"), "{out:?}");
}

/// One MCP `run` over stdio, in `cwd`; the tool result's structured content.
fn mcp_run(c: &Caller, cwd: &Path, args: Value) -> Value {
    let mut child = c
        .cmd(cwd)
        .arg("mcp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("aisbx mcp");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut send = |v: Value| writeln!(stdin, "{v}").expect("send");
    send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "perimeter-test", "version": "1"}}}),
    );
    let _init = lines.next().expect("initialize answer").expect("read");
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "run", "arguments": args}}));
    let answer: Value = loop {
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

#[test]
fn mcp_never_uses_an_unapproved_project_profile() {
    let c = Caller::new();
    let project = tempfile::tempdir().expect("tempdir");
    let p = std::fs::canonicalize(project.path()).expect("canonical");
    let dir = p.join(".aisbx/profiles");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("base.toml"), "[env]\nTEAM = \"project\"\n").expect("write");
    let args = json!({"command": ["/bin/sh", "-c", "echo team=$TEAM"]});
    let v = mcp_run(&c, &p, args.clone());
    let out = v.to_string();
    assert!(out.contains("team=\\n") || out.contains("team=\""), "{out}");
    assert!(!out.contains("team=project"), "{out}");
    // Approved by the user (MCP never approves), it is used.
    succeeded(&c.run(&p, &["trust"]));
    let v = mcp_run(&c, &p, args);
    assert!(v.to_string().contains("team=project"), "{v}");
}

#[test]
fn the_perimeter_holds_for_an_unprivileged_user() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = bin_for_nobody();
    let (state, home, project) = (
        t.path().join("state"),
        t.path().join("home"),
        t.path().join("project"),
    );
    for d in [&state, &home.join(".ssh"), &project.join(".aisbx/profiles")] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::write(
        project.join(".aisbx/profiles/base.toml"),
        "[env]\nTEAM = \"p\"\n",
    )
    .expect("write");
    for d in [
        &state,
        &home,
        &home.join(".ssh"),
        &project,
        &project.join(".aisbx"),
        &project.join(".aisbx/profiles"),
    ] {
        std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
    let as_nobody = |cwd: &Path, args: &[&str]| -> Output {
        Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "--",
            ])
            .arg(&bin)
            .args(args)
            .current_dir(cwd)
            .env("AISBX_HOME", &state)
            .env("HOME", &home)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(Stdio::null())
            .output()
            .expect("setpriv")
    };
    for (dir, rule) in [
        ("/etc", "is /etc"),
        ("/root", "/root"),
        (s(&home), "contains"),
        (s(&state), "aisbx's own state"),
    ] {
        let out = as_nobody(&project, &["run", "--workdir", dir, "--", "/bin/true"]);
        refused(&out, &["invalid workdir", rule]);
    }
    let out = as_nobody(&project, &["run", "--", "/bin/sh", "-c", "echo $TEAM"]);
    refused(&out, &["not trusted", "aisbx trust"]);
    assert_eq!(
        succeeded(&as_nobody(&project, &["trust"])).lines().count(),
        1
    );
    let out = as_nobody(&project, &["run", "--", "/bin/sh", "-c", "echo $TEAM"]);
    assert_eq!(succeeded(&out), "p\n");

    // nobody's own profile names a tool in its home: the home holds its key.
    let key = home.join(".ssh/id_ed25519");
    std::fs::write(&key, "NOBODY-KEY-5c1e").expect("key");
    let profiles = home.join(".config/aisbx/profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    std::fs::create_dir_all(home.join("bin")).expect("mkdir");
    std::fs::copy("/bin/sh", home.join("bin/sh")).expect("copy sh");
    std::fs::write(
        profiles.join("tool.toml"),
        format!(
            "[runtime]\nlanguage = \"tool\"\ninterpreters = [\"{}/bin/sh\"]\nextensions = [\"tool\"]\n",
            home.display()
        ),
    )
    .expect("profile");
    for p in [
        key.clone(),
        home.join(".config"),
        home.join(".config/aisbx"),
        profiles.clone(),
        profiles.join("tool.toml"),
    ] {
        std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
    let out = as_nobody(
        t.path(),
        &[
            "run",
            "--profile",
            "tool",
            "--code",
            &format!("cat {}", key.display()),
        ],
    );
    assert!(!text(&out.stdout).contains("NOBODY-KEY"), "{out:?}");
    refused(&out, &["interpreter", "cannot be bound", "contains"]);
}
