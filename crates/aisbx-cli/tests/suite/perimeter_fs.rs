//! What the host does with a sandbox's files, attacked through the real binary:
//! removal while a run in the sandbox swaps directories for symlinks, setuid
//! files, links out of the tree, sparse files. As root and as `nobody`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::common::*;

const NOBODY: u32 = 65534;

/// Who runs aisbx: root (this test process), or `nobody` through setpriv with a
/// copy of the binary it can execute.
struct Actor {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    home: PathBuf,
    nobody: bool,
}

impl Drop for Actor {
    fn drop(&mut self) {
        // As root, sandboxes a test left keep their disks mounted under its home.
        unmount_under(&self.home);
    }
}

impl Actor {
    fn root() -> Actor {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("mkdir");
        Actor {
            _dir: dir,
            bin: bin(),
            home,
            nobody: false,
        }
    }

    fn nobody() -> Option<Actor> {
        if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let b = bin_for_nobody();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("mkdir");
        give(&home, NOBODY);
        Some(Actor {
            _dir: dir,
            bin: b,
            home,
            nobody: true,
        })
    }

    /// The uid whose files are at stake.
    fn uid(&self) -> u32 {
        if self.nobody { NOBODY } else { 0 }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = if self.nobody {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                &NOBODY.to_string(),
                "--regid",
                &NOBODY.to_string(),
                "--clear-groups",
                "--",
            ])
            .arg(&self.bin);
            c.env("HOME", &self.home)
                .env("PATH", "/usr/local/bin:/usr/bin:/bin");
            c
        } else {
            Command::new(&self.bin)
        };
        c.args(args)
            .env("AISBX_HOME", &self.home)
            .stdin(Stdio::null());
        c
    }

    fn out(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run aisbx")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.out(args);
        assert!(
            out.status.success(),
            "aisbx {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn sandbox_dir(&self, name: &str) -> PathBuf {
        self.home.join("sandboxes").join(name)
    }

    /// Where a plain sandbox's files are on the host: on its own disk as root.
    fn workspace(&self, name: &str) -> PathBuf {
        let dir = self.sandbox_dir(name);
        if dir.join("disk").is_dir() {
            dir.join("disk/workspace")
        } else {
            dir.join("workspace")
        }
    }
}

fn give(p: &Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(uid)).expect("chown");
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A host directory outside every sandbox, owned by `uid`, holding canary files
/// at its top and in `victim/` (the name the sandbox below plants).
fn canaries(uid: u32) -> tempfile::TempDir {
    let c = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(c.path().join("victim")).expect("mkdir");
    for d in [c.path().to_path_buf(), c.path().join("victim")] {
        for i in 0..20 {
            let f = d.join(format!("canary{i}"));
            std::fs::write(&f, "precious").expect("write");
            give(&f, uid);
        }
        give(&d, uid);
    }
    c
}

fn count_canaries(c: &Path) -> usize {
    [c.to_path_buf(), c.join("victim")]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with("canary"))
        .count()
}

/// The sandbox's side of the removal race: four directories, each with 1,500
/// empty directories and one named `victim`. Then it watches them: as soon as
/// one loses an entry (the host has started removing it), it moves that
/// directory aside and puts a symlink to the host canary directory (argv[1]) in
/// its place, while the host is still going through the names it listed.
const SWAPPER: &str = r#"
import os, sys, time
c = sys.argv[1]
os.chdir('/workspace')
todo = ['t%d' % k for k in range(4)]
for t in todo:
    os.mkdir(t)
    for i in range(1500):
        os.mkdir('%s/e%d' % (t, i))
    os.mkdir(t + '/victim')
full = {t: os.lstat(t).st_nlink for t in todo}
print('ready', flush=True)
while todo:
    for t in list(todo):
        try:
            if os.lstat(t).st_nlink < full[t]:
                os.rename(t, '.aside-' + t)
                os.symlink(c, t)
                todo.remove(t)
        except OSError:
            pass
    time.sleep(0.0005)
time.sleep(60)
"#;

/// `aisbx rm` of a sandbox while a run in it waits for the removal to start,
/// then swaps the directory being removed for a symlink to a host directory.
/// The removal this replaced walked the tree by path: it went on through the
/// names it had listed, now resolved through the link, and deleted the canaries
/// in the host's `victim/` (checked by running this test against that code: 20
/// of 40 canaries were left in 3 runs out of 3, as root and as nobody, rm
/// failing ~50 ms after it started; the window is the walk of one directory,
/// ~1,500 removals, of which the sandbox needs a few milliseconds to notice and
/// swap). Now rm stops the run first and the walk
/// never follows a link, so every canary survives and rm either succeeds or
/// fails cleanly.
fn removal_race(a: &Actor) {
    let c = canaries(a.uid());
    a.ok(&["create", "race"]);
    let mut run = a
        .cmd(&[
            "exec",
            "race",
            "--timeout",
            "60",
            "--",
            "/usr/bin/python3",
            "-c",
            SWAPPER,
            s(c.path()),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn exec");
    let mut line = String::new();
    BufReader::new(run.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line, "ready\n", "the run did not get ready");
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let rm = a.out(&["rm", "race"]);
    let took = t.elapsed();
    let left = count_canaries(c.path());
    if left != 40 {
        let _ = run.kill();
        let _ = run.wait();
        panic!("host files were deleted: {left} of 40 canaries left (rm took {took:?})");
    }
    // The run ends, stopped by rm (or by its own timeout, which would fail below).
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = run.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = run.kill();
            panic!("the run in the removed sandbox is still going");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = String::from_utf8_lossy(&rm.stderr);
    if rm.status.success() {
        assert!(!a.sandbox_dir("race").exists(), "rm left the sandbox");
        assert!(!status.success(), "the run was stopped, not finished");
    } else {
        assert_eq!(rm.status.code(), Some(125), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    }
    assert!(
        took < Duration::from_secs(15),
        "rm took {took:?}: {:?} {err}",
        rm.status
    );
}

#[test]
fn removal_while_a_run_swaps_links_spares_host_files() {
    if !is_root() {
        return;
    }
    removal_race(&Actor::root());
}

#[test]
fn unprivileged_removal_while_a_run_swaps_links_spares_host_files() {
    let Some(a) = Actor::nobody() else { return };
    removal_race(&a);
}

#[test]
fn destroy_stops_the_runs_and_new_runs_find_it_gone() {
    let a = Actor::root();
    a.ok(&["create", "busy"]);
    let run = a
        .cmd(&["exec", "busy", "--timeout", "60", "--", "sleep", "50"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until the run holds the sandbox.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    a.ok(&["rm", "busy"]);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let out = run.wait_with_output().expect("wait");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sandbox 'busy' was removed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!a.sandbox_dir("busy").exists());
    let out = a.out(&["exec", "busy", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
}

/// Mode bits of a host file.
fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).expect("stat").mode() & 0o7777
}

fn setuid_files_never_reach_the_host(a: &Actor) {
    let t = tempfile::tempdir().expect("tempdir");
    give(t.path(), a.uid());
    a.ok(&["create", "su"]);
    // The sandbox tries to make setuid/setgid files itself (the jail may refuse)...
    let _ = a.out(&[
        "exec",
        "su",
        "--",
        "/bin/sh",
        "-c",
        "cp /bin/sh x; chmod 4755 x; cp /bin/sh y; chmod 2755 y; mkdir -p d; chmod 2775 d",
    ]);
    // ...and files with the bits are planted as if it had succeeded (or as an
    // older aisbx may have stored them).
    let ws = a.workspace("su");
    for (name, m) in [("planted-u", 0o4755), ("planted-g", 0o2711)] {
        let p = ws.join(name);
        std::fs::write(&p, "#!/bin/sh\n").expect("write");
        give(&p, std::fs::metadata(&ws).expect("ws").uid());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).expect("chmod");
    }
    let check = |root: &Path, what: &str| {
        for name in ["planted-u", "planted-g", "x", "y", "d"] {
            let p = root.join(name);
            if p.symlink_metadata().is_ok() {
                assert_eq!(mode(&p) & 0o6000, 0, "{what}: {name} is {:o}", mode(&p));
            }
        }
        assert!(root.join("planted-u").exists(), "{what}: nothing copied");
        assert_eq!(mode(&root.join("planted-u")), 0o755, "{what}");
        assert_eq!(mode(&root.join("planted-g")), 0o711, "{what}");
    };
    let out = t.path().join("cp-out");
    a.ok(&["cp", "su:", s(&out)]);
    check(&out, "cp out");
    a.ok(&["cp", "su:planted-u", s(&t.path().join("one"))]);
    assert_eq!(mode(&t.path().join("one")), 0o755);
    a.ok(&["snap", "create", "su-snap", "--sandbox", "su"]);
    let restored = t.path().join("restored");
    a.ok(&["snap", "restore", "su-snap", "--workdir", s(&restored)]);
    check(&restored, "restore --workdir");
    a.ok(&["snap", "restore", "su-snap", "--sandbox", "su2"]);
    let listed = a.ok(&[
        "exec",
        "su2",
        "--",
        "/bin/sh",
        "-c",
        "stat -c '%a %n' planted-u planted-g",
    ]);
    assert_eq!(listed, "755 planted-u\n711 planted-g\n");
    // Nothing in the store is setuid or setgid either.
    for e in walk(&a.home.join("snapshots")) {
        assert_eq!(mode(&e) & 0o6000, 0, "{} in the store", e.display());
    }
    // A snapshot of a host directory holding a setuid file restores without it.
    let w = t.path().join("wd");
    std::fs::create_dir(&w).expect("mkdir");
    give(&w, a.uid());
    let f = w.join("tool");
    std::fs::write(&f, "x").expect("write");
    give(&f, a.uid());
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o6755)).expect("chmod");
    a.ok(&["snap", "create", "wd-snap", "--workdir", s(&w)]);
    let back = t.path().join("wd-back");
    a.ok(&["snap", "restore", "wd-snap", "--workdir", s(&back)]);
    assert_eq!(mode(&back.join("tool")), 0o755);
    // Copied in, the file is not setuid inside the sandbox's files either.
    a.ok(&["cp", s(&f), "su:tool"]);
    assert_eq!(mode(&ws.join("tool")) & 0o6000, 0);
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn cp_out_and_restore_never_make_setuid_files() {
    if !is_root() {
        return;
    }
    setuid_files_never_reach_the_host(&Actor::root());
}

#[test]
fn unprivileged_cp_out_and_restore_never_make_setuid_files() {
    let Some(a) = Actor::nobody() else { return };
    setuid_files_never_reach_the_host(&a);
}

#[test]
fn cp_out_skips_links_that_leave_the_tree_unless_kept() {
    let a = Actor::root();
    let t = tempfile::tempdir().expect("tempdir");
    a.ok(&["create", "ln"]);
    a.ok(&[
        "exec",
        "ln",
        "--",
        "/bin/sh",
        "-c",
        "mkdir -p d/e; echo hi > d/f; \
         ln -s /etc/passwd d/abs; ln -s ../../.. d/up; ln -s ../f d/e/ok; \
         ln -s f d/sib; ln -s e/../../x d/tricky; ln -s ../d/f d/back",
    ]);
    let out = t.path().join("plain");
    let r = a.out(&["cp", "ln:d", s(&out)]);
    assert!(r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    for gone in ["abs", "up", "tricky", "back"] {
        assert!(
            out.join(gone).symlink_metadata().is_err(),
            "{gone} was copied"
        );
        assert!(
            err.contains(&format!("d/{gone} ->")),
            "no warning for {gone}: {err}"
        );
    }
    for kept in ["e/ok", "sib"] {
        assert!(
            out.join(kept)
                .symlink_metadata()
                .expect(kept)
                .file_type()
                .is_symlink(),
            "{kept}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(out.join("e/ok")).expect("ok"),
        "hi\n"
    );
    // A link copied on its own has nothing of the tree around it.
    let one = t.path().join("one");
    let r = a.out(&["cp", "ln:d/sib", s(&one)]);
    assert!(r.status.success());
    assert!(one.symlink_metadata().is_err());
    assert!(String::from_utf8_lossy(&r.stderr).contains("--keep-links"));
    // --keep-links copies them all, as links.
    let kept = t.path().join("kept");
    a.ok(&["cp", "--keep-links", "ln:d", s(&kept)]);
    assert_eq!(
        std::fs::read_link(kept.join("abs")).expect("abs"),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        std::fs::read_link(kept.join("up")).expect("up"),
        Path::new("../../..")
    );
}

/// Bytes a file or tree takes on disk.
fn disk_bytes(root: &Path) -> u64 {
    let own = std::fs::symlink_metadata(root)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0);
    own + walk(root)
        .iter()
        .map(|p| {
            std::fs::symlink_metadata(p)
                .map(|m| m.blocks() * 512)
                .unwrap_or(0)
        })
        .sum::<u64>()
}

#[test]
fn snapshots_and_copies_keep_holes() {
    let a = Actor::root();
    let t = tempfile::tempdir().expect("tempdir");
    a.ok(&["create", "sp"]);
    a.ok(&[
        "exec",
        "sp",
        "--",
        "/bin/sh",
        "-c",
        "echo head > big; truncate -s 300M big; echo tail >> big; sha256sum big > sum",
    ]);
    let big = a.workspace("sp").join("big");
    assert_eq!(std::fs::metadata(&big).expect("big").len(), (300 << 20) + 5);
    let store = a.home.join("snapshots");
    let before = disk_bytes(&store);
    a.ok(&["snap", "create", "sparse", "--sandbox", "sp"]);
    let grown = disk_bytes(&store) - before;
    assert!(grown < 4 << 20, "the store grew by {grown} bytes");
    let restored = t.path().join("restored");
    a.ok(&["snap", "restore", "sparse", "--workdir", s(&restored)]);
    let copied = t.path().join("copied");
    a.ok(&["cp", "sp:big", s(&copied)]);
    let want = std::fs::read(a.workspace("sp").join("sum")).expect("sum");
    let want = String::from_utf8_lossy(&want);
    let want = want.split_whitespace().next().expect("hash");
    for f in [restored.join("big"), copied] {
        let md = std::fs::metadata(&f).expect("restored");
        assert_eq!(md.len(), (300 << 20) + 5, "{}", f.display());
        assert!(
            md.blocks() * 512 < 1 << 20,
            "{} takes {} blocks",
            f.display(),
            md.blocks()
        );
        let out = Command::new("sha256sum")
            .arg(&f)
            .output()
            .expect("sha256sum");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(want),
            "{}",
            f.display()
        );
    }
    // Restored into a sandbox, it reads the same.
    a.ok(&["snap", "restore", "sparse", "--sandbox", "sp2"]);
    a.ok(&["exec", "sp2", "--", "sha256sum", "-c", "sum"]);
}

/// A sandbox may leave read-only and unreadable directories behind (and a
/// copy-on-write sandbox's overlay leaves a mode-000 work directory), and trees
/// deeper than PATH_MAX: rm removes them all, plain and copy-on-write, and the
/// snapshot tree goes with `snap rm`.
fn rm_removes_what_a_sandbox_locked(a: &Actor) {
    a.ok(&["create", "lk"]);
    a.ok(&[
        "exec",
        "lk",
        "--",
        "/bin/sh",
        "-c",
        "mkdir -p ro/in; echo x > ro/in/f; chmod 500 ro/in; chmod 555 ro",
    ]);
    a.ok(&["snap", "create", "lk-snap", "--sandbox", "lk"]);
    a.ok(&[
        "exec",
        "lk",
        "--",
        "/bin/sh",
        "-c",
        "mkdir -p un/in; echo y > un/in/f; chmod 0 un/in un",
    ]);
    // A chain of directories deeper than any path the host could name (PATH_MAX).
    a.ok(&[
        "exec",
        "lk",
        "--",
        "/usr/bin/python3",
        "-c",
        "import os\nfor i in range(3000):\n    os.mkdir('deep'); os.chdir('deep')\nopen('f', 'w').close()",
    ]);
    a.ok(&["snap", "restore", "lk-snap", "--sandbox", "lk2"]);
    a.ok(&[
        "exec",
        "lk2",
        "--",
        "/bin/sh",
        "-c",
        "mkdir -p q/r; echo z > q/r/f; chmod 0 q",
    ]);
    a.ok(&["rm", "lk", "lk2"]);
    assert!(!a.sandbox_dir("lk").exists());
    assert!(!a.sandbox_dir("lk2").exists());
    a.ok(&["snap", "rm", "lk-snap"]);
    let trees = a.home.join("snapshots/trees");
    assert_eq!(std::fs::read_dir(&trees).expect("trees").count(), 0);
}

#[test]
fn rm_removes_read_only_and_unreadable_directories() {
    if !is_root() {
        return;
    }
    rm_removes_what_a_sandbox_locked(&Actor::root());
}

#[test]
fn unprivileged_rm_removes_read_only_and_unreadable_directories() {
    let Some(a) = Actor::nobody() else { return };
    rm_removes_what_a_sandbox_locked(&a);
}
