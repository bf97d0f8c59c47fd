//! aisbx as root inside a container that lacks an isolation layer: a user
//! namespace whose root is mapped, made here with `unshare`. A refused run names
//! the first missing required layer and its remedy in the words `aisbx doctor`
//! uses, not whichever system call failed first.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::common::*;

fn have_unshare() -> bool {
    is_root()
        && Command::new("unshare")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// `aisbx ARGS` as root of a new user namespace (`unshare UNSHARE_ARGS`), after
/// the shell command `prelude` has run there.
fn in_userns(unshare_args: &[&str], prelude: &str, home: &Path, args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["60", "unshare"])
        .args(unshare_args)
        .args([
            "--",
            "/bin/sh",
            "-c",
            &format!("{prelude} && exec \"$@\""),
            "sh",
        ])
        .arg(bin())
        .args(args)
        .env("AISBX_HOME", home)
        .stdin(Stdio::null())
        .output()
        .expect("run unshare")
}

/// The layer `name` of `aisbx doctor --json`'s report.
fn doctor_layer(out: &Output, name: &str) -> Value {
    let d: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json: {e}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    d["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .find(|l| l["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} layer: {d}"))
}

/// doctor reports `name` missing and required, and the run was refused (125)
/// with the sentence that names it, in doctor's words (its detail is
/// "REASON; REMEDY"), and not with `not_this`, the low-level failure.
fn assert_refusal_names(doctor: &Output, run: &Output, name: &str, subject: &str, not_this: &str) {
    let layer = doctor_layer(doctor, name);
    assert_eq!(doctor.status.code(), Some(1), "{layer}");
    assert_eq!(layer["state"], "missing", "{layer}");
    assert_eq!(layer["required"], true, "{layer}");
    let detail = layer["detail"].as_str().unwrap_or_default();
    let (reason, remedy) = detail.split_once("; ").expect("reason; remedy");
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(125), "{err}");
    assert!(run.stdout.is_empty(), "{err}");
    let expected = format!("aisbx: {subject} not available here ({reason}): {remedy}");
    assert!(err.starts_with(&expected), "{err}\nexpected: {expected}");
    assert!(
        !err[..expected.len()].contains(not_this),
        "{err}: the refusal names {not_this}"
    );
}

#[test]
fn root_in_a_container_without_user_namespaces_is_told_so() {
    if !have_unshare() {
        return;
    }
    // What many container runtimes impose: no new user namespaces. The
    // namespace's root may lower the limit of its own namespace.
    let prelude = "echo 0 > /proc/sys/user/max_user_namespaces";
    let h = home();
    let doctor = in_userns(
        &["--user", "--map-root-user"],
        prelude,
        h.path(),
        &["doctor", "--json"],
    );
    let run = in_userns(
        &["--user", "--map-root-user"],
        prelude,
        h.path(),
        &["run", "--", "echo", "hi"],
    );
    assert_refusal_names(
        &doctor,
        &run,
        "user namespace",
        "the user namespace is",
        "supplementary groups",
    );
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("max_user_namespaces is 0"), "{err}");
    assert!(err.contains("sysctl -w user.max_user_namespaces="), "{err}");
    // The failed step stays as a detail.
    assert!(err.contains("the set-up failed at: "), "{err}");
    // The text report says it the same way.
    let text = in_userns(
        &["--user", "--map-root-user"],
        prelude,
        h.path(),
        &["doctor"],
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines().any(
            |l| l.contains("MISSING  user namespace") && l.contains("max_user_namespaces is 0")
        ),
        "{text}"
    );
    // Also when the program is a file to run, and as JSON.
    let run = in_userns(
        &["--user", "--map-root-user"],
        prelude,
        h.path(),
        &["run", "--json", "--", "/bin/true"],
    );
    assert_eq!(run.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("the user namespace is not available here"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn root_of_a_namespace_without_the_sandbox_id_is_told_so() {
    if !have_unshare() {
        return;
    }
    // Root is mapped, nothing else: no unprivileged id for the sandbox to be
    // (as in a container with a small id range).
    let h = home();
    let doctor = in_userns(
        &["--user", "--map-root-user"],
        "true",
        h.path(),
        &["doctor", "--json"],
    );
    let run = in_userns(
        &["--user", "--map-root-user"],
        "true",
        h.path(),
        &["run", "--", "echo", "hi"],
    );
    assert_refusal_names(
        &doctor,
        &run,
        "user namespace",
        "the user namespace is",
        "uid_map",
    );
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("uid map lacks 1879048192"), "{err}");
}

/// `aisbx ARGS` as root of a user namespace that maps the host's ids 0 to
/// 2,000,000,000 (the sandbox's id among them) and denies setgroups, with the
/// supplementary groups `groups` (setpriv's list, or none), in a mount namespace
/// of its own (as in a container).
fn in_setgroups_denied_userns(home: &Path, groups: Option<&str>, args: &[&str]) -> Output {
    let group_args = match groups {
        Some(g) => vec!["--groups", g],
        None => vec!["--clear-groups"],
    };
    let mut child = Command::new("timeout")
        .args(["60", "setpriv"])
        .args(group_args)
        .arg("--")
        .args(["unshare", "--user", "--mount", "--setgroups=deny", "--"])
        // The shell started before its namespace had maps, so it has no
        // capabilities; the exec that gives them marks a process non-dumpable,
        // which the exec after it undoes (as in a container, whose first
        // process starts mapped).
        .args(["/bin/sh", "-c", "read _ && exec env \"$@\"", "sh"])
        .arg(bin())
        .args(args)
        .env("AISBX_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // timeout → setpriv (execs unshare, which execs sh): the namespace's process
    // is timeout's child.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        let kids =
            std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
                .unwrap_or_default();
        let ready = kids.split_whitespace().next().filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/setgroups"))
                .is_ok_and(|s| s.trim() == "deny")
        });
        if let Some(p) = ready {
            break p.to_string();
        }
        assert!(Instant::now() < deadline, "the namespace did not appear");
        std::thread::sleep(Duration::from_millis(10));
    };
    for which in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{which}"), "0 0 2000000000\n").expect(which);
    }
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("release");
    drop(stdin);
    child.wait_with_output().expect("wait")
}

#[test]
fn root_whose_groups_cannot_be_dropped_is_told_so() {
    if !have_unshare() || Command::new("setpriv").arg("--version").output().is_err() {
        return;
    }
    let h = home();
    let doctor = in_setgroups_denied_userns(h.path(), Some("4"), &["doctor", "--json"]);
    let run = in_setgroups_denied_userns(h.path(), Some("4"), &["run", "--", "echo", "hi"]);
    assert_refusal_names(
        &doctor,
        &run,
        "supplementary groups",
        "dropping the supplementary groups is",
        "Operation not permitted",
    );
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("keep the groups 4"), "{err}");
    // The sandbox's init refused to go on with the groups.
    assert!(
        err.contains("(the set-up failed at: dropping the supplementary groups: "),
        "{err}"
    );
    // The layers before it are active, and without the group the same
    // namespace runs it.
    assert_eq!(doctor_layer(&doctor, "user namespace")["state"], "active");
    let run = in_setgroups_denied_userns(
        h.path(),
        None,
        &[
            "run",
            "--",
            "/bin/sh",
            "-c",
            "grep ^Groups /proc/self/status",
        ],
    );
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim_end(),
        "Groups:",
        "{err}"
    );
}

#[test]
fn root_drops_its_supplementary_groups_in_the_sandbox() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        return;
    }
    // A root:adm 0640 file in the workdir: readable through group 4 only.
    let w = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::chown(w.path(), Some(65534), Some(65534)).expect("chown");
    let log = w.path().join("adm.log");
    std::fs::write(&log, "ADM-ONLY-LINE").expect("write");
    std::os::unix::fs::chown(&log, Some(0), Some(4)).expect("chown");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let h = home();
    let out = Command::new("setpriv")
        .args(["--groups", "4,27", "--"])
        .arg(bin())
        .args(["run", "--json", "--workdir"])
        .arg(w.path())
        .args([
            "--",
            "/bin/sh",
            "-c",
            "grep ^Groups /proc/self/status; cat adm.log 2>/dev/null || echo refused",
        ])
        .env("AISBX_HOME", h.path())
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    assert_eq!(out.status.code(), Some(0), "{v}");
    let lines: Vec<&str> = stdout(&v).lines().map(str::trim_end).collect();
    assert_eq!(lines, ["Groups:", "refused"], "{v}");
}
