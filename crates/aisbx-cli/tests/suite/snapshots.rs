//! Snapshots through the real binary: fidelity, copy-on-write restore that the
//! sandbox cannot damage, deduplication, removal, diff, and crash safety.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use super::common::*;

fn json(home: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&ok(home, args)).expect("json")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// A tree with every kind of thing a snapshot must keep (and a FIFO it must skip).
fn sample_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/empty")).expect("mkdir");
    std::fs::write(root.join("exec.sh"), "#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(root.join("exec.sh"), std::fs::Permissions::from_mode(0o751))
        .expect("chmod");
    std::fs::write(root.join("sub/data.txt"), "one\ntwo\nthree\n").expect("write");
    std::fs::write(root.join(OsStr::from_bytes(b"odd\xffname\n")), "x").expect("odd name");
    symlink("/etc/shadow", root.join("sub/link")).expect("symlink");
    let fifo = std::ffi::CString::new(root.join("fifo").as_os_str().as_bytes()).expect("c");
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let old = std::ffi::CString::new(root.join("sub").as_os_str().as_bytes()).expect("c");
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 5,
        },
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 5,
        },
    ];
    // SAFETY: utimensat with a valid path and two timespecs.
    unsafe { libc::utimensat(libc::AT_FDCWD, old.as_ptr(), times.as_ptr(), 0) };
}

/// (relative path, kind, mode, mtime, content or link target) of one entry.
type Described = (Vec<u8>, &'static str, u32, i64, Vec<u8>);

/// Every entry below `root`, sorted.
fn describe(root: &Path) -> Vec<Described> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).expect("read_dir").flatten() {
            let m = std::fs::symlink_metadata(e.path()).expect("lstat");
            let rel = e
                .path()
                .strip_prefix(root)
                .expect("rel")
                .as_os_str()
                .as_bytes()
                .to_vec();
            let ft = m.file_type();
            let (kind, data) = if ft.is_symlink() {
                (
                    "link",
                    std::fs::read_link(e.path())
                        .expect("link")
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
            } else if ft.is_dir() {
                stack.push(e.path());
                ("dir", Vec::new())
            } else if ft.is_file() {
                ("file", std::fs::read(e.path()).expect("read"))
            } else {
                ("other", Vec::new())
            };
            let mtime = if ft.is_symlink() { 0 } else { m.mtime() };
            out.push((rel, kind, m.mode() & 0o7777, mtime, data));
        }
    }
    out.sort();
    out
}

#[test]
fn fidelity_through_snapshot_and_restore() {
    let h = home();
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("src");
    sample_tree(&src);
    let out = cmd(h.path())
        .args(["snap", "create", "s1", "--workdir", s(&src), "--json"])
        .output()
        .expect("snap");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fifo"),
        "a warning names the FIFO"
    );
    let info: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(info["skipped"], 1);
    let dst = t.path().join("dst");
    ok(h.path(), &["snap", "restore", "s1", "--workdir", s(&dst)]);
    let want: Vec<_> = describe(&src)
        .into_iter()
        .filter(|e| e.1 != "other")
        .collect();
    assert_eq!(describe(&dst), want);
    // Not into a non-empty directory.
    let again = cmd(h.path())
        .args(["snap", "restore", "s1", "--workdir", s(&dst)])
        .output()
        .expect("restore");
    assert_eq!(again.status.code(), Some(125));
    // The same tree, restored into a sandbox, looks the same from inside.
    ok(h.path(), &["snap", "restore", "s1", "--sandbox", "sb"]);
    let out = cmd(h.path())
        .args([
            "exec",
            "sb",
            "--",
            "sh",
            "-c",
            "stat -c '%n %a %Y' sub exec.sh; readlink sub/link; cat sub/data.txt",
        ])
        .output()
        .expect("exec");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "sub 755 1000000000\nexec.sh 751 ".to_string()
            + &std::fs::metadata(src.join("exec.sh"))
                .expect("m")
                .mtime()
                .to_string()
            + "\n/etc/shadow\none\ntwo\nthree\n"
    );
}

#[test]
fn a_sandbox_cannot_change_its_snapshot() {
    let h = home();
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("src");
    sample_tree(&src);
    ok(h.path(), &["snap", "create", "base", "--workdir", s(&src)]);
    ok(
        h.path(),
        &["snap", "restore", "base", "--sandbox", "victim"],
    );
    // Everything a program can do to the files it was given.
    let attack = "set +e; for f in exec.sh sub/data.txt; do echo evil > $f; chmod 777 $f; \
        touch -d 2020-01-01 $f; truncate -s 0 $f; done; \
        ln -f exec.sh hard 2>/dev/null; echo evil >> hard; rm -rf sub; mv exec.sh moved; \
        mkdir sub; echo new > sub/data.txt; find / -xdev -samefile moved 2>/dev/null; \
        cat /proc/self/mountinfo | grep -c ' /workspace '";
    let out = cmd(h.path())
        .args(["exec", "victim", "--", "sh", "-c", attack])
        .output()
        .expect("exec");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(h.path(), &["snap", "verify", "--json"]);
    assert_eq!(v["ok"], true, "{v}");
    // A second sandbox from the same snapshot sees the original files.
    ok(h.path(), &["snap", "restore", "base", "--sandbox", "fresh"]);
    let out = cmd(h.path())
        .args([
            "exec",
            "fresh",
            "--",
            "sh",
            "-c",
            "cat exec.sh sub/data.txt; stat -c %a exec.sh",
        ])
        .output()
        .expect("exec");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "#!/bin/sh\necho hi\none\ntwo\nthree\n751\n"
    );
    // The victim's changes are its own, and a snapshot of it records them.
    ok(
        h.path(),
        &["snap", "create", "after", "--sandbox", "victim"],
    );
    let d = json(h.path(), &["snap", "diff", "base", "after", "--json"]);
    assert!(
        d["added"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p == "moved")),
        "{d}"
    );
    assert!(
        d["removed"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p == "sub/link")),
        "{d}"
    );
    assert!(
        d["changed"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p == "sub/data.txt")),
        "{d}"
    );
    let unified = d["diffs"][0]["unified"].as_str().unwrap_or_default();
    assert!(
        unified.contains("-one") && unified.contains("+new"),
        "{unified}"
    );
}

#[test]
fn nearly_equal_snapshots_share_storage_and_rm_frees() {
    let h = home();
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    for i in 0..20 {
        std::fs::write(src.join(format!("f{i}")), vec![i as u8; 256 << 10]).expect("write");
    }
    ok(h.path(), &["snap", "create", "a", "--workdir", s(&src)]);
    std::fs::write(src.join("f0"), b"changed").expect("write");
    ok(h.path(), &["snap", "create", "b", "--workdir", s(&src)]);
    let store_bytes = || -> u64 {
        let mut n = 0;
        for d in std::fs::read_dir(h.path().join("snapshots/objects"))
            .expect("objects")
            .flatten()
        {
            for o in std::fs::read_dir(d.path()).expect("dir").flatten() {
                n += o.metadata().expect("m").len();
            }
        }
        n
    };
    let one = 20 * (256 << 10) as u64;
    assert!(
        store_bytes() <= one + 16,
        "two nearly equal snapshots cost one: {}",
        store_bytes()
    );
    let l = json(h.path(), &["snap", "list", "--json"]);
    assert_eq!(l["snapshots"][1]["shared_bytes"], 19 * (256 << 10));
    ok(h.path(), &["snap", "rm", "a"]);
    assert_eq!(
        store_bytes(),
        19 * (256 << 10) + 7,
        "a's own object was freed"
    );
    ok(h.path(), &["snap", "rm", "b"]);
    assert_eq!(store_bytes(), 0);
    assert_eq!(json(h.path(), &["snap", "verify", "--json"])["ok"], true);
}

#[test]
fn kill_9_during_a_snapshot_leaves_a_valid_store() {
    let h = home();
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    for i in 0..64u32 {
        let data: Vec<u8> = (0..(1u32 << 20))
            .map(|j| (j.wrapping_mul(i + 7) >> 3) as u8)
            .collect();
        std::fs::write(src.join(format!("f{i}")), data).expect("write");
    }
    let mut completed = 0;
    for (round, delay_ms) in [5u64, 40, 120, 300, 700, 1500].into_iter().enumerate() {
        let name = format!("s{round}");
        let mut child = cmd(h.path())
            .args(["snap", "create", &name, "--workdir", s(&src)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().expect("wait");
        let v = json(h.path(), &["snap", "verify", "--json"]);
        assert_eq!(v["ok"], true, "after kill at {delay_ms} ms: {v}");
        let l = json(h.path(), &["snap", "list", "--json"]);
        let listed = l["snapshots"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["name"] == name.as_str()));
        if listed {
            completed += 1;
            let x = l["snapshots"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["name"] == name.as_str()).cloned())
                .unwrap_or_default();
            assert_eq!(x["files"], 64, "a listed snapshot is complete");
        } else {
            assert!(!status.success(), "a finished snapshot is listed");
        }
        // Nothing of an interrupted one survives the next writer.
        ok(
            h.path(),
            &[
                "snap",
                "create",
                &format!("after{round}"),
                "--workdir",
                s(&src),
            ],
        );
        ok(h.path(), &["snap", "rm", &format!("after{round}")]);
        assert!(
            std::fs::read_dir(h.path().join("snapshots/tmp"))
                .expect("tmp")
                .next()
                .is_none(),
            "temporary files are cleaned"
        );
    }
    let _ = completed;
}
