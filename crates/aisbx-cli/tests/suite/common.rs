use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_aisbx"))
}

/// A copy of the binary that `nobody` can run (the build's own may sit below a
/// directory it cannot enter), made once per test process in a 0755 directory.
pub fn bin_for_nobody() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let tmp = std::env::temp_dir();
        // Copies of test processes that are gone.
        for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("aisbx-test-bin-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = tmp.join(format!("aisbx-test-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let b = dir.join("aisbx");
        std::fs::copy(bin(), &b).expect("copy binary");
        std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // A child that another test thread forked while the copy was open for writing
        // holds that descriptor until it execs, and executing the copy fails with
        // ETXTBSY meanwhile: wait until it runs.
        for _ in 0..500 {
            match Command::new(&b).arg("--version").output() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => break,
            }
        }
        b
    })
    .clone()
}

/// A state directory private to one test. As root, persistent sandboxes mount their
/// disks under it; they are unmounted when it goes, so that nothing stays mounted.
pub struct Home(tempfile::TempDir);

impl Home {
    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        unmount_under(self.0.path());
    }
}

pub fn home() -> Home {
    Home(
        tempfile::Builder::new()
            .prefix("aisbx-test-home")
            .tempdir()
            .expect("tempdir"),
    )
}

/// Detach every mount below `dir` (sandbox disks a test did not remove).
pub fn unmount_under(dir: &std::path::Path) {
    let mut points = mounts_under(dir);
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: a valid C string; detaching a mount of our own test.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Mounts below `dir`, as /proc/self/mountinfo lists them.
pub fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

pub fn cmd(home: &std::path::Path) -> Command {
    let mut c = Command::new(bin());
    c.env("AISBX_HOME", home).stdin(Stdio::null());
    c
}

/// Run `aisbx ARGS` and return its output.
pub fn aisbx(args: &[&str]) -> Output {
    let h = home();
    cmd(h.path()).args(args).output().expect("run aisbx")
}

/// Run `aisbx run --json ARGS` and parse the RunResult.
pub fn run_json(args: &[&str]) -> (Value, i32) {
    let h = home();
    run_json_in(h.path(), args)
}

pub fn run_json_in(home: &std::path::Path, args: &[&str]) -> (Value, i32) {
    let mut full = vec!["run", "--json"];
    full.extend_from_slice(args);
    let out = cmd(home).args(&full).output().expect("run aisbx");
    let code = out.status.code().unwrap_or(-1);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not a RunResult ({e}); status {code}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, code)
}

/// Run a shell script in the sandbox; return (RunResult, exit status).
pub fn sh(script: &str) -> (Value, i32) {
    run_json(&["--", "/bin/sh", "-c", script])
}

/// Run Python code (the system python3, inside the sandbox).
pub fn py(code: &str) -> (Value, i32) {
    run_json(&["--", "/usr/bin/python3", "-c", code])
}

pub fn stdout(v: &Value) -> &str {
    v["stdout"].as_str().unwrap_or_default()
}

pub fn stderr(v: &Value) -> &str {
    v["stderr"].as_str().unwrap_or_default()
}

/// Feed `input` to aisbx's stdin.
pub fn with_stdin(args: &[&str], input: &[u8]) -> Output {
    let h = home();
    let mut child = cmd(h.path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    child.wait_with_output().expect("wait")
}

/// A unique marker for process names and files.
pub fn marker() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Host processes whose command line contains `needle`.
pub fn host_procs_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == me {
            continue;
        }
        if let Ok(cl) = std::fs::read(e.path().join("cmdline")) {
            let cl = String::from_utf8_lossy(&cl).replace('\0', " ");
            if cl.contains(needle) && !cl.contains("aisbx") {
                found.push(format!("{name}: {cl}"));
            }
        }
    }
    found
}

pub fn is_root() -> bool {
    // SAFETY: getter.
    unsafe { libc::geteuid() == 0 }
}

/// Run `aisbx ARGS` with state in `home`, assert it succeeded, return its stdout.
pub fn ok(home: &std::path::Path, args: &[&str]) -> String {
    let out = cmd(home).args(args).output().expect("run aisbx");
    assert!(
        out.status.success(),
        "aisbx {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
