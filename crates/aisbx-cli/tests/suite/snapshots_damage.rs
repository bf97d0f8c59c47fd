//! Damaged snapshots through the real binary: a damaged manifest is listed as
//! damaged, can be removed, and never makes the removal of another snapshot fail
//! or take its data; a tampered object is refused by a restore into a directory
//! (which leaves nothing behind) and reported by `snap verify`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use super::common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn run(home: &Path, args: &[&str]) -> Output {
    cmd(home).args(args).output().expect("run aisbx")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(home: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&ok(home, args)).expect("json")
}

/// Every file below `root` (relative path → content).
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).expect("read_dir").flatten() {
            let ft = e.file_type().expect("type");
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(root).expect("rel").to_path_buf();
                out.insert(rel, std::fs::read(e.path()).unwrap_or_default());
            }
        }
    }
    out
}

/// The store's objects (path → content).
fn objects(home: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files(&home.join("snapshots/objects"))
}

/// The snapshot's entry of `snap list --json`.
fn listed(home: &Path, name: &str) -> Option<Value> {
    json(home, &["snap", "list", "--json"])["snapshots"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name).cloned())
}

/// Three snapshots sharing some files: `keep` (a, shared), `victim` (a, shared,
/// v-only), `other` (shared, o-only). Returns the source directories.
fn three_snapshots(home: &Path, t: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mk = |name: &str, files: &[(&str, &str)]| {
        let d = t.join(name);
        std::fs::create_dir_all(d.join("sub")).expect("mkdir");
        for (f, c) in files {
            std::fs::write(d.join(f), c).expect("write");
            // Equal content only dedups with equal mtimes.
            let p = std::ffi::CString::new(d.join(f).to_str().unwrap_or_default()).expect("c");
            let ts = [libc::timespec {
                tv_sec: 1_700_000_000,
                tv_nsec: 0,
            }; 2];
            // SAFETY: a valid path and two timespecs.
            unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), ts.as_ptr(), 0) };
        }
        d
    };
    let keep = mk("keep", &[("a.txt", "kept\n"), ("sub/shared", "shared\n")]);
    let victim = mk(
        "victim",
        &[
            ("a.txt", "kept\n"),
            ("sub/shared", "shared\n"),
            ("v-only", "victim's own\n"),
        ],
    );
    let other = mk(
        "other",
        &[("sub/shared", "shared\n"), ("o-only", "other's\n")],
    );
    for (n, d) in [("keep", &keep), ("victim", &victim), ("other", &other)] {
        ok(home, &["snap", "create", n, "--workdir", s(d)]);
    }
    (keep, victim, other)
}

/// Turns a manifest's bytes into damaged ones.
type Damage = dyn Fn(&[u8]) -> Vec<u8>;

#[test]
fn a_damaged_manifest_is_listed_removable_and_never_blocks_another() {
    let truncate = |m: &[u8]| m[..m.len() / 2].to_vec();
    let garbage = |_: &[u8]| b"\x00\xff\xfe not json at all \x01".to_vec();
    let wrong_json = |_: &[u8]| br#"{"hello": ["world"]}"#.to_vec();
    // Valid JSON, valid manifest shape, but a hash that is no hash (and would
    // name a path outside objects/ if used).
    let bad_hash = |m: &[u8]| {
        let mut v: Value = serde_json::from_slice(m).expect("manifest");
        for e in v["entries"].as_array_mut().expect("entries") {
            if e["kind"] == "file" {
                e["hash"] = Value::from("../../lock");
            }
        }
        serde_json::to_vec(&v).expect("json")
    };
    let cases: [(&str, &Damage, &str); 4] = [
        ("truncated", &truncate, "cut short"),
        ("garbage", &garbage, "not valid JSON"),
        ("wrong JSON", &wrong_json, "not a snapshot manifest"),
        ("bad hash", &bad_hash, "no valid content hash"),
    ];
    for (what, damage, reason) in cases {
        let h = home();
        let t = tempfile::tempdir().expect("tempdir");
        let (keep, _, _) = three_snapshots(h.path(), t.path());
        let manifest = h.path().join("snapshots/manifests/victim.json");
        let damaged = damage(&std::fs::read(&manifest).expect("manifest"));
        std::fs::write(&manifest, &damaged).expect("damage");
        let objects_before = objects(h.path());

        // Listed, marked damaged with a one-sentence reason (text and JSON).
        let out = ok(h.path(), &["snap", "list"]);
        let line = out
            .lines()
            .find(|l| l.starts_with("victim"))
            .unwrap_or_else(|| panic!("{what}: victim is listed: {out}"));
        assert!(
            line.contains("DAMAGED") && line.contains(reason),
            "{what}: {line}"
        );
        assert!(out.lines().any(|l| l == "keep"), "{what}: {out}");
        let v = listed(h.path(), "victim").expect("victim in --json");
        let why = v["damaged"].as_str().unwrap_or_default();
        assert!(why.contains(reason) && !why.contains('\n'), "{what}: {v}");
        assert!(listed(h.path(), "keep").is_some_and(|k| k["damaged"].is_null()));
        let meta = ok(h.path(), &["snap", "list", "--show-metadata"]);
        assert!(
            meta.lines()
                .any(|l| l.starts_with("victim") && l.contains("DAMAGED")),
            "{what}: {meta}"
        );

        // It cannot be used, and says why.
        let dst = t.path().join("restored-victim");
        let out = run(
            h.path(),
            &["snap", "restore", "victim", "--workdir", s(&dst)],
        );
        assert_eq!(out.status.code(), Some(125), "{what}");
        assert!(text(&out.stderr).contains("is damaged"), "{what}");
        assert!(
            !dst.exists(),
            "{what}: a refused restore leaves no directory"
        );
        let out = run(h.path(), &["snap", "restore", "victim", "--sandbox", "sb"]);
        assert_eq!(out.status.code(), Some(125), "{what}");
        assert!(text(&out.stderr).contains("is damaged"), "{what}");
        let out = run(h.path(), &["snap", "verify"]);
        assert_eq!(out.status.code(), Some(1), "{what}");
        assert!(
            text(&out.stdout).contains("snapshot 'victim' is damaged"),
            "{what}: {}",
            text(&out.stdout)
        );

        // Removing another snapshot succeeds, says it kept the data, and leaves
        // the damaged one exactly as it was, with every object it may use.
        let out = run(h.path(), &["snap", "rm", "other"]);
        assert!(out.status.success(), "{what}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("snapshot 'victim' is damaged"),
            "{what}: {}",
            text(&out.stderr)
        );
        assert!(listed(h.path(), "other").is_none(), "{what}");
        assert_eq!(std::fs::read(&manifest).expect("still there"), damaged);
        assert_eq!(objects(h.path()), objects_before, "{what}: nothing freed");
        assert!(
            listed(h.path(), "victim").is_some_and(|v| v["damaged"].is_string()),
            "{what}"
        );

        // The damaged one goes; then what only it and `other` used is freed, and
        // `keep` is whole.
        let out = run(h.path(), &["snap", "rm", "victim"]);
        assert!(out.status.success(), "{what}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("was damaged"), "{what}");
        assert!(!manifest.exists(), "{what}");
        assert!(listed(h.path(), "victim").is_none(), "{what}");
        let v = json(h.path(), &["snap", "verify", "--json"]);
        assert_eq!(v["ok"], true, "{what}: {v}");
        assert_eq!(v["unreferenced_objects"], 0, "{what}: {v}");
        let contents: Vec<Vec<u8>> = objects(h.path()).into_values().collect();
        assert_eq!(contents.len(), 2, "{what}: only keep's objects are left");
        let dst = t.path().join("restored-keep");
        ok(h.path(), &["snap", "restore", "keep", "--workdir", s(&dst)]);
        assert_eq!(files(&dst), files(&keep), "{what}");
        // Removing a missing snapshot is still an error.
        let out = run(h.path(), &["snap", "rm", "victim"]);
        assert_eq!(out.status.code(), Some(125), "{what}");
        assert!(text(&out.stderr).contains("no snapshot named 'victim'"));
    }
}

#[test]
fn a_manifest_that_is_a_link_or_directory_is_damaged_and_removable() {
    let h = home();
    let t = tempfile::tempdir().expect("tempdir");
    three_snapshots(h.path(), t.path());
    let manifests = h.path().join("snapshots/manifests");
    std::fs::create_dir(manifests.join("dir.json")).expect("mkdir");
    std::fs::write(manifests.join("dir.json/x"), "x").expect("write");
    std::os::unix::fs::symlink(manifests.join("keep.json"), manifests.join("link.json"))
        .expect("symlink");
    for name in ["dir", "link"] {
        let v = listed(h.path(), name).unwrap_or_else(|| panic!("{name} listed"));
        assert!(v["damaged"].is_string(), "{v}");
    }
    ok(h.path(), &["snap", "rm", "dir", "link"]);
    assert!(!manifests.join("dir.json").exists());
    assert!(
        manifests.join("keep.json").is_file(),
        "a link's target stays"
    );
    assert_eq!(json(h.path(), &["snap", "verify", "--json"])["ok"], true);
}

/// The object holding exactly `content`.
fn object_of(home: &Path, content: &[u8]) -> PathBuf {
    let root = home.join("snapshots/objects");
    objects(home)
        .into_iter()
        .find(|(_, c)| c == content)
        .map(|(p, _)| root.join(p))
        .expect("the object")
}

#[test]
fn a_tampered_object_is_refused_by_a_restore_into_a_directory() {
    let h = home();
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d/e")).expect("mkdir");
    std::fs::write(src.join("a.txt"), "first\n").expect("write");
    std::fs::write(src.join("d/e/b.txt"), "the one we flip\n").expect("write");
    let big: Vec<u8> = (0..(3u32 << 20)).map(|i| ((i * 7) >> 5) as u8).collect();
    std::fs::write(src.join("d/z-big"), &big).expect("write");
    ok(h.path(), &["snap", "create", "s", "--workdir", s(&src)]);
    let obj = object_of(h.path(), b"the one we flip\n");
    // Flip one byte, keeping the length (and the mode and mtime the key names).
    let md = std::fs::metadata(&obj).expect("object");
    let mut data = std::fs::read(&obj).expect("read");
    data[4] ^= 0x20;
    std::fs::write(&obj, &data).expect("write");
    std::fs::File::options()
        .write(true)
        .open(&obj)
        .and_then(|f| f.set_modified(md.modified().expect("mtime")))
        .expect("mtime");

    // A diff still lists the change but shows no content of a damaged object.
    std::fs::write(src.join("d/e/b.txt"), "the one we changed\n").expect("write");
    ok(h.path(), &["snap", "create", "s2", "--workdir", s(&src)]);
    let d = json(h.path(), &["snap", "diff", "s", "s2", "--json"]);
    assert_eq!(d["changed"], serde_json::json!(["d/e/b.txt"]), "{d}");
    assert_eq!(d["diffs"], serde_json::json!([]), "{d}");
    ok(h.path(), &["snap", "rm", "s2"]);
    std::fs::write(src.join("d/e/b.txt"), "the one we flip\n").expect("write");

    // Into a new directory: refused, the file named, the directory gone.
    let dst = t.path().join("new");
    let out = run(h.path(), &["snap", "restore", "s", "--workdir", s(&dst)]);
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.contains("d/e/b.txt") && err.contains("does not match its hash"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one sentence: {err}");
    assert!(!dst.exists(), "nothing half-restored: {err}");
    // Into an existing empty directory: refused, and it is empty again.
    let dst = t.path().join("empty");
    std::fs::create_dir(&dst).expect("mkdir");
    let out = run(h.path(), &["snap", "restore", "s", "--workdir", s(&dst)]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("d/e/b.txt"));
    assert!(
        std::fs::read_dir(&dst).expect("dir").next().is_none(),
        "left empty"
    );
    assert!(!text(&out.stdout).contains("restored"));

    // What the restore found is remembered: the snapshot is listed damaged, and a
    // copy-on-write restore of it is refused.
    let l = listed(h.path(), "s").expect("listed");
    let why = l["damaged"].as_str().unwrap_or_default();
    assert!(why.contains("d/e/b.txt") && !why.contains('\n'), "{l}");
    assert_eq!(l["files"], 3, "its metadata is still shown: {l}");
    let out = ok(h.path(), &["snap", "list"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("s (DAMAGED: ") && l.contains("d/e/b.txt")),
        "{out}"
    );
    let out = run(h.path(), &["snap", "restore", "s", "--sandbox", "sb"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("d/e/b.txt"),
        "{}",
        text(&out.stderr)
    );
    // Removing another snapshot leaves it as it is.
    let other = t.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    std::fs::write(other.join("x"), "unrelated\n").expect("write");
    ok(
        h.path(),
        &["snap", "create", "other", "--workdir", s(&other)],
    );
    let before = objects(h.path());
    let out = run(h.path(), &["snap", "rm", "other"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut after = objects(h.path());
    assert_eq!(after.len() + 1, before.len(), "only other's object went");
    after.retain(|k, _| before.contains_key(k));
    assert_eq!(after.len() + 1, before.len());
    assert!(
        before
            .iter()
            .all(|(k, v)| { after.get(k).is_none_or(|a| a == v) })
    );
    assert_eq!(std::fs::read(&obj).expect("still there"), data);
    assert!(listed(h.path(), "s").is_some_and(|l| l["damaged"].is_string()));

    // `snap verify` names the object and the file using it.
    let out = run(h.path(), &["snap", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(1), "{v}");
    let problems = v["problems"].to_string();
    assert!(
        problems.contains("d/e/b.txt in snapshot 's'") && problems.contains("corrupt"),
        "{problems}"
    );
    assert_eq!(run(h.path(), &["snap", "verify"]).status.code(), Some(1));

    // Put back, the same restore succeeds and is exact.
    data[4] ^= 0x20;
    std::fs::write(&obj, &data).expect("write");
    std::fs::File::options()
        .write(true)
        .open(&obj)
        .and_then(|f| f.set_modified(md.modified().expect("mtime")))
        .expect("mtime");
    // ... and once `snap verify` finds it sound again, it is no longer damaged.
    assert!(listed(h.path(), "s").is_some_and(|l| l["damaged"].is_string()));
    assert_eq!(json(h.path(), &["snap", "verify", "--json"])["ok"], true);
    assert!(listed(h.path(), "s").is_some_and(|l| l["damaged"].is_null()));
    let dst = t.path().join("good");
    ok(h.path(), &["snap", "restore", "s", "--workdir", s(&dst)]);
    assert_eq!(files(&dst), files(&src));

    // A tampered object of another length is refused too.
    let big_obj = object_of(h.path(), &big);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&big_obj)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"more"))
        .expect("append");
    let dst = t.path().join("longer");
    let out = run(h.path(), &["snap", "restore", "s", "--workdir", s(&dst)]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("d/z-big"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dst.exists());
    // A damaged snapshot's data can still be removed, and its record with it.
    let out = run(h.path(), &["snap", "rm", "s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("was damaged"),
        "{}",
        text(&out.stderr)
    );
    assert!(objects(h.path()).is_empty());
    assert!(
        std::fs::read_dir(h.path().join("snapshots/damaged"))
            .expect("damaged")
            .next()
            .is_none()
    );
}

#[test]
fn a_sandbox_over_a_damaged_snapshot_keeps_its_files() {
    let h = home();
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("f.txt"), "over the snapshot\n").expect("write");
    ok(h.path(), &["snap", "create", "s", "--workdir", s(&src)]);
    ok(h.path(), &["snap", "restore", "s", "--sandbox", "sb"]);
    let trees = h.path().join("snapshots/trees");
    let tree_count = || std::fs::read_dir(&trees).expect("trees").count();
    assert_eq!(tree_count(), 1);
    std::fs::write(h.path().join("snapshots/manifests/s.json"), "{").expect("damage");
    // The sandbox runs on its tree, which needs no manifest.
    let cat = || {
        let out = run(h.path(), &["exec", "sb", "--", "cat", "f.txt"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(cat(), "over the snapshot\n");
    ok(h.path(), &["snap", "rm", "s"]);
    assert_eq!(tree_count(), 1, "the tree stays while the sandbox uses it");
    assert_eq!(cat(), "over the snapshot\n");

    // A sandbox whose record cannot be read may use any tree: none is freed.
    ok(h.path(), &["snap", "create", "s2", "--workdir", s(&src)]);
    ok(h.path(), &["snap", "restore", "s2", "--sandbox", "sb2"]);
    assert_eq!(tree_count(), 2);
    let record = h.path().join("sandboxes/sb/meta.json");
    let saved = std::fs::read(&record).expect("record");
    std::fs::write(&record, "not a record").expect("damage");
    ok(h.path(), &["rm", "sb2"]);
    let out = run(h.path(), &["snap", "rm", "s2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("record of sandbox 'sb' cannot be read"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        tree_count(),
        2,
        "no tree freed while a record is unreadable"
    );
    std::fs::write(&record, &saved).expect("restore record");
    assert_eq!(cat(), "over the snapshot\n");
    ok(h.path(), &["rm", "sb"]);
    assert_eq!(tree_count(), 0, "then both trees are freed");
}
