//! Persistent sandboxes through the real binary: create, exec, ls, rm, cp.

use std::os::unix::fs::symlink;
use std::path::Path;

use super::common::*;

#[test]
fn create_exec_ls_rm() {
    let h = home();
    ok(h.path(), &["create", "dev"]);
    let out = cmd(h.path())
        .args([
            "exec",
            "dev",
            "--",
            "sh",
            "-c",
            "echo kept > /workspace/f; exit 3",
        ])
        .output()
        .expect("exec");
    assert_eq!(out.status.code(), Some(3));
    let out = cmd(h.path())
        .args(["exec", "--json", "dev", "--", "cat", "/workspace/f"])
        .output()
        .expect("exec");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("RunResult");
    assert_eq!(v["stdout"], "kept\n");
    assert_eq!(v["sandbox_id"], "dev");
    let ls = ok(h.path(), &["ls", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ls).expect("json");
    assert_eq!(v["sandboxes"][0]["id"], "dev");
    let again = cmd(h.path())
        .args(["create", "dev"])
        .output()
        .expect("create");
    assert_eq!(
        again.status.code(),
        Some(125),
        "a second sandbox of one name"
    );
    ok(h.path(), &["rm", "dev"]);
    let gone = cmd(h.path())
        .args(["exec", "dev", "--", "true"])
        .output()
        .expect("exec");
    assert_eq!(gone.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no sandbox named 'dev'"));
}

#[test]
fn cp_in_and_out_copies_links_as_links() {
    let h = home();
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("proj");
    std::fs::create_dir_all(src.join("d/empty")).expect("mkdir");
    std::fs::write(src.join("d/a.txt"), "alpha").expect("write");
    symlink("/etc/hostname", src.join("link")).expect("symlink");
    ok(h.path(), &["create", "box"]);
    ok(
        h.path(),
        &["cp", src.to_str().unwrap_or_default(), "box:in"],
    );
    let out = cmd(h.path())
        .args([
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "cat in/d/a.txt; readlink in/link; test -d in/d/empty && echo empty-ok",
        ])
        .output()
        .expect("exec");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alpha/etc/hostname\nempty-ok\n"
    );
    // The sandbox plants a symlink to a host secret and a file; copying out keeps
    // the link as a link and never reads the host file through it.
    ok(
        h.path(),
        &[
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "ln -s /etc/shadow steal; echo out > o.txt",
        ],
    );
    let dst = t.path().join("back");
    ok(h.path(), &["cp", "box:", dst.to_str().unwrap_or_default()]);
    assert_eq!(
        std::fs::read_to_string(dst.join("o.txt")).expect("o.txt"),
        "out\n"
    );
    // A link pointing out of the copied tree is left out unless asked for.
    assert!(std::fs::symlink_metadata(dst.join("steal")).is_err());
    let dst = t.path().join("back2");
    ok(
        h.path(),
        &[
            "cp",
            "--keep-links",
            "box:",
            dst.to_str().unwrap_or_default(),
        ],
    );
    let m = std::fs::symlink_metadata(dst.join("steal")).expect("steal");
    assert!(m.file_type().is_symlink(), "copied as a link");
    assert_eq!(
        std::fs::read_link(dst.join("steal")).expect("link"),
        Path::new("/etc/shadow")
    );
    // Reading through a sandbox symlink is refused.
    let out = cmd(h.path())
        .args([
            "cp",
            "box:steal/x",
            t.path().join("x").to_str().unwrap_or_default(),
        ])
        .output()
        .expect("cp");
    assert_eq!(out.status.code(), Some(125));
    assert!(!t.path().join("x").exists());
    // `..` and absolute paths outside /workspace are refused.
    for bad in ["box:../etc/passwd", "box:/etc/passwd"] {
        let out = cmd(h.path())
            .args(["cp", bad, t.path().join("y").to_str().unwrap_or_default()])
            .output()
            .expect("cp");
        assert_eq!(out.status.code(), Some(125), "{bad}");
        assert!(!t.path().join("y").exists());
    }
    // Copying into a path whose parent is a sandbox symlink to a host directory
    // writes inside the sandbox only (the copy happens in a sandbox run).
    let host_dir = t.path().join("hostdir");
    std::fs::create_dir(&host_dir).expect("mkdir");
    let hd = host_dir.to_str().unwrap_or_default().to_string();
    ok(
        h.path(),
        &["exec", "box", "--", "ln", "-s", &hd, "/workspace/esc"],
    );
    let _ = cmd(h.path())
        .args([
            "cp",
            src.join("d/a.txt").to_str().unwrap_or_default(),
            "box:esc/a.txt",
        ])
        .output()
        .expect("cp");
    assert!(
        std::fs::read_dir(&host_dir).expect("read").next().is_none(),
        "nothing was written on the host"
    );
}

#[test]
fn concurrent_runs_in_a_copy_on_write_sandbox_take_turns() {
    let h = home();
    ok(h.path(), &["create", "base"]);
    ok(h.path(), &["exec", "base", "--", "sh", "-c", "echo 0 > n"]);
    ok(h.path(), &["snap", "create", "s", "--sandbox", "base"]);
    ok(h.path(), &["snap", "restore", "s", "--sandbox", "cow"]);
    // Each run reads, waits, then writes: interleaved runs would lose an update.
    let script = "n=$(cat n); sleep 0.3; echo $((n+1)) > n";
    let children: Vec<_> = (0..3)
        .map(|_| {
            cmd(h.path())
                .args(["exec", "cow", "--", "sh", "-c", script])
                .spawn()
                .expect("spawn")
        })
        .collect();
    for c in children {
        assert!(c.wait_with_output().expect("wait").status.success());
    }
    assert_eq!(ok(h.path(), &["exec", "cow", "--", "cat", "n"]), "3\n");
    // The snapshot itself is untouched.
    ok(h.path(), &["snap", "restore", "s", "--sandbox", "again"]);
    assert_eq!(ok(h.path(), &["exec", "again", "--", "cat", "n"]), "0\n");
}
