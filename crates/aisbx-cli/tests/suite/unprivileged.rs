//! The same guarantees for an unprivileged user (here `nobody`, started from the
//! root test process with setpriv): no cgroup v1 delegation, so rlimits are the
//! only limits, and doctor says so.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::common::*;

const NOBODY: u32 = 65534;

struct Env {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    home: PathBuf,
}

/// A copy of the binary and a state dir that `nobody` can use.
fn setup() -> Option<Env> {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = bin_for_nobody();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).expect("mkdir");
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).expect("chown");
    Some(Env {
        _dir: dir,
        bin,
        home,
    })
}

fn as_nobody(env: &Env, args: &[&str]) -> Output {
    as_nobody_in(env, None, args)
}

/// As `nobody`, with the supplementary groups `groups` (setpriv's list), or none.
fn as_nobody_in(env: &Env, groups: Option<&str>, args: &[&str]) -> Output {
    let group_args = match groups {
        Some(g) => vec!["--groups", g],
        None => vec!["--clear-groups"],
    };
    Command::new("setpriv")
        .args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
        ])
        .args(group_args)
        .arg("--")
        .arg(&env.bin)
        .args(args)
        .env("AISBX_HOME", &env.home)
        .env("HOME", &env.home)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
        .output()
        .expect("setpriv")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn unprivileged_runs_are_isolated() {
    let Some(env) = setup() else { return };
    // A secret that nobody may read on the host, outside anything bound.
    let secret_dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::chown(secret_dir.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
    let secret = secret_dir.path().join("secret");
    std::fs::write(&secret, "NOBODY-SECRET-42").expect("write");
    std::os::unix::fs::chown(&secret, Some(NOBODY), Some(NOBODY)).expect("chown");
    let out = as_nobody(
        &env,
        &[
            "run",
            "--json",
            "--",
            "/bin/sh",
            "-c",
            &format!(
                "id -u; cat {} 2>&1; ls /; grep CapEff /proc/self/status; hostname",
                secret.display()
            ),
        ],
    );
    let v = json(&out);
    assert_eq!(out.status.code(), Some(0), "{v}");
    let s = stdout(&v);
    assert!(s.starts_with("1000\n"), "{v}");
    assert!(!s.contains("NOBODY-SECRET-42"), "{v}");
    assert!(s.contains("CapEff:\t0000000000000000"), "{v}");
    assert!(s.trim_end().ends_with("aisbx"), "{v}");
}

#[test]
fn unprivileged_limits_fall_back_to_rlimits() {
    let Some(env) = setup() else { return };
    let out = as_nobody(
        &env,
        &[
            "run",
            "--json",
            "--memory",
            "64M",
            "--",
            "/usr/bin/python3",
            "-c",
            "b=bytearray(200<<20)\nprint('SURVIVED')",
        ],
    );
    let v = json(&out);
    assert!(!stdout(&v).contains("SURVIVED"), "{v}");
    assert!(stderr(&v).contains("MemoryError"), "{v}");
    let out = as_nobody(
        &env,
        &["run", "--json", "--timeout", "0.5", "--", "sleep", "5"],
    );
    assert_eq!(out.status.code(), Some(124));
    let out = as_nobody(&env, &["doctor", "--json"]);
    let d = json(&out);
    let cg = d["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .find(|l| l["name"] == "cgroups")
        .cloned()
        .expect("cgroups layer");
    assert_eq!(cg["state"], "missing", "{d}");
    assert!(
        cg["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("rlimits"),
        "{d}"
    );
}

#[test]
fn unprivileged_workdir_files_belong_to_the_user() {
    use std::os::unix::fs::MetadataExt;
    let Some(env) = setup() else { return };
    let w = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::chown(w.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
    let out = as_nobody(
        &env,
        &[
            "run",
            "--workdir",
            w.path().to_str().unwrap_or_default(),
            "--",
            "/bin/sh",
            "-c",
            "echo x > f",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(Path::new(w.path()).join("f"))
            .expect("f")
            .uid(),
        NOBODY
    );
}

#[test]
fn unprivileged_copy_on_write_restore_keeps_the_snapshot_intact() {
    let Some(env) = setup() else { return };
    let ok = |args: &[&str]| {
        let out = as_nobody(&env, args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&["create", "s1"]);
    ok(&[
        "exec",
        "s1",
        "--",
        "/bin/sh",
        "-c",
        "echo one > a.txt; mkdir d; echo two > d/b",
    ]);
    ok(&["snap", "create", "snap1", "--sandbox", "s1"]);
    ok(&["snap", "restore", "snap1", "--sandbox", "s2"]);
    let seen = ok(&[
        "exec",
        "s2",
        "--",
        "/bin/sh",
        "-c",
        "cat a.txt d/b; echo changed > a.txt; rm d/b",
    ]);
    assert_eq!(seen, "one\ntwo\n");
    ok(&["snap", "verify"]);
    ok(&["snap", "restore", "snap1", "--sandbox", "s3"]);
    assert_eq!(
        ok(&["exec", "s3", "--", "/bin/cat", "a.txt", "d/b"]),
        "one\ntwo\n"
    );
}

#[cfg(target_arch = "x86_64")]
#[test]
fn unprivileged_runs_make_no_setid_file() {
    use super::perimeter::{SETID_ATTEMPTS, SETID_SHELL, assert_setid_refused, setid_entries};
    let Some(env) = setup() else { return };
    let w = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::chown(w.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
    let p = w.path().to_str().unwrap_or_default();
    let out = as_nobody(
        &env,
        &[
            "run",
            "--json",
            "--workdir",
            p,
            "--",
            "/usr/bin/python3",
            "-c",
            SETID_ATTEMPTS,
            ".",
        ],
    );
    let v = json(&out);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_setid_refused(stdout(&v));
    let out = as_nobody(
        &env,
        &[
            "run",
            "--json",
            "--workdir",
            p,
            "--",
            "/bin/sh",
            "-c",
            SETID_SHELL,
            "sh",
            ".",
        ],
    );
    let v = json(&out);
    assert_eq!(stdout(&v), "sh-suid:EPERM\nsh-sgid:EPERM\n", "{v}");
    assert!(w.path().join("x").exists());
    assert_eq!(setid_entries(w.path(), false), Vec::<String>::new());
}

#[test]
fn unprivileged_runs_get_the_user_namespace_limits() {
    let Some(env) = setup() else { return };
    let out = as_nobody(
        &env,
        &[
            "run",
            "--json",
            "--",
            "/bin/cat",
            "/proc/sys/user/max_user_namespaces",
            "/proc/sys/user/max_inotify_instances",
            "/proc/sys/user/max_inotify_watches",
        ],
    );
    let v = json(&out);
    assert_eq!(stdout(&v), "0\n32\n8192\n", "{v}");
}

#[test]
fn unprivileged_supplementary_groups_are_dropped_or_reported() {
    // nobody in the adm group (4), and a root:adm 0640 file in its workdir.
    let Some(env) = setup() else { return };
    let w = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::chown(w.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
    let log = w.path().join("adm.log");
    std::fs::write(&log, "ADM-ONLY-LINE").expect("write");
    std::os::unix::fs::chown(&log, Some(0), Some(4)).expect("chown");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let d = json(&as_nobody_in(&env, Some("4"), &["doctor", "--json"]));
    let layer = d["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .find(|l| l["name"] == "supplementary groups")
        .cloned()
        .expect("groups layer");
    let detail = layer["detail"].as_str().unwrap_or_default();
    let out = as_nobody_in(
        &env,
        Some("4"),
        &[
            "run",
            "--json",
            "--workdir",
            w.path().to_str().unwrap_or_default(),
            "--",
            "/bin/sh",
            "-c",
            "cat adm.log 2>/dev/null || echo refused; grep ^Groups /proc/self/status",
        ],
    );
    let v = json(&out);
    if layer["state"] == "active" {
        // newgidmap and a subordinate range: the group is gone inside.
        assert!(detail.contains("newgidmap"), "{d}");
        assert_eq!(stdout(&v).lines().next(), Some("refused"), "{v}");
    } else {
        // Without them, doctor says the group stays, and why; and it does.
        assert!(detail.starts_with("kept:") && detail.contains("(4)"), "{d}");
        assert!(
            detail.contains("newgidmap") || detail.contains("/etc/subgid"),
            "{d}"
        );
        assert!(stdout(&v).starts_with("ADM-ONLY-LINE"), "{v}");
    }
    // Without supplementary groups there is nothing to drop.
    let d = json(&as_nobody(&env, &["doctor", "--json"]));
    assert!(d.to_string().contains("this user has none to drop"), "{d}");
}
