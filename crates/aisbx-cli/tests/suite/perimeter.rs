//! What a sandbox leaves on the host and learns of it: no setuid or setgid file,
//! no host argv or environment in its /proc, no odd stdin, no spare namespaces or
//! inotify instances, and a tmpfs that fills up with ENOSPC instead of an OOM kill.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::common::*;

/// Tries every system call that can give a file the setuid or setgid bit, each
/// through its own system call number (x86_64), in the directory `argv[1]`, and
/// prints `name:result` for each; `plain` checks that ordinary modes still work.
pub const SETID_ATTEMPTS: &str = r#"
import ctypes, errno, os, stat, sys
os.chdir(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
def sc(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    if r < 0:
        raise OSError(ctypes.get_errno(), "syscall")
    return r
AT = -100
S = 0o4755
G = 0o2755
open("f", "w").close()
fd = os.open("f", os.O_RDONLY)
class How(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]
how = How(os.O_CREAT | os.O_WRONLY, S, 0)
tries = [
    ("chmod", lambda: sc(90, b"f", S)),
    ("fchmod", lambda: sc(91, fd, G)),
    ("fchmodat", lambda: sc(268, AT, b"f", S)),
    ("fchmodat2", lambda: sc(452, AT, b"f", G, 0)),
    ("open", lambda: os.close(sc(2, b"o1", os.O_CREAT | os.O_WRONLY, S))),
    ("openat", lambda: os.close(sc(257, AT, b"o2", os.O_CREAT | os.O_WRONLY, G))),
    ("tmpfile", lambda: os.close(sc(257, AT, b".", os.O_TMPFILE | os.O_WRONLY, S))),
    ("creat", lambda: os.close(sc(85, b"o3", G))),
    ("mkdir", lambda: sc(83, b"d1", G)),
    ("mkdirat", lambda: sc(258, AT, b"d2", S)),
    ("mknod", lambda: sc(133, b"n1", stat.S_IFREG | S, 0)),
    ("mknodat", lambda: sc(259, AT, b"n2", stat.S_IFREG | G, 0)),
    ("openat2", lambda: os.close(sc(437, AT, b"o4", ctypes.byref(how), ctypes.sizeof(how)))),
    ("os.chmod", lambda: os.chmod("f", 0o6755)),
    ("os.open", lambda: os.close(os.open("o5", os.O_CREAT | os.O_WRONLY, S))),
    ("os.mkdir", lambda: os.mkdir("d3", G)),
    ("os.mknod", lambda: os.mknod("n3", stat.S_IFREG | S)),
    ("plain", lambda: (os.chmod("f", 0o755), os.mkdir("d4", 0o755), os.close(os.open("o6", os.O_CREAT | os.O_WRONLY, 0o644)))),
]
out = []
for name, f in tries:
    try:
        f()
        out.append(name + ":ok")
    except OSError as e:
        out.append(name + ":" + errno.errorcode.get(e.errno, str(e.errno)))
print(" ".join(out))
"#;

/// The shell version: a copy of a shell made setuid, and a directory made setgid.
pub const SETID_SHELL: &str = "cd \"$1\" && cp /bin/sh x && { chmod 4755 x 2>/dev/null && echo sh-suid:ok || echo sh-suid:EPERM; } && mkdir -p g && { chmod g+s g 2>/dev/null && echo sh-sgid:ok || echo sh-sgid:EPERM; }";

/// Check the attempts' report: every set-id attempt refused, openat2 unknown,
/// plain modes fine.
pub fn assert_setid_refused(report: &str) {
    let results: Vec<&str> = report.split_whitespace().collect();
    assert_eq!(results.len(), 18, "{report}");
    for r in results {
        let (name, res) = r.split_once(':').unwrap_or((r, ""));
        let want = match name {
            "plain" => "ok",
            "openat2" => "ENOSYS",
            _ => "EPERM",
        };
        assert_eq!(res, want, "{name} in {report}");
    }
}

/// Every entry under `root` (itself excluded) with a setuid or setgid bit; a
/// directory with only the setgid bit is allowed when `sgid_dirs` (it inherited
/// it from a setgid parent: group inheritance, not a privilege).
pub fn setid_entries(root: &Path, sgid_dirs: bool) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let m = std::fs::symlink_metadata(e.path()).expect("metadata");
            let bits = m.mode() & 0o6000;
            let inherited = sgid_dirs && m.is_dir() && bits == 0o2000;
            if bits != 0 && !inherited {
                found.push(format!("{} {:o}", e.path().display(), m.mode()));
            }
            if m.is_dir() {
                todo.push(e.path());
            }
        }
    }
    found
}

/// A workspace owned by root (the tempdir of this root test process), made
/// searchable; `mode` lets a test make it setgid.
fn root_workdir(mode: u32) -> tempfile::TempDir {
    std::fs::create_dir_all("/srv").expect("/srv");
    let d = tempfile::tempdir_in("/srv").expect("tempdir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
    d
}

fn setid_attempts_in_workdir(w: &Path) {
    let p = w.to_str().expect("utf-8");
    let (v, code) = run_json(&[
        "--workdir",
        p,
        "--",
        "/usr/bin/python3",
        "-c",
        SETID_ATTEMPTS,
        ".",
    ]);
    assert_eq!(code, 0, "{v}");
    assert_setid_refused(stdout(&v));
    let (v, code) = run_json(&[
        "--workdir",
        p,
        "--",
        "/bin/sh",
        "-c",
        SETID_SHELL,
        "sh",
        ".",
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(stdout(&v), "sh-suid:EPERM\nsh-sgid:EPERM\n", "{v}");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn no_setid_file_in_a_root_owned_workdir() {
    if !is_root() {
        return;
    }
    let w = root_workdir(0o755);
    assert_eq!(std::fs::metadata(w.path()).expect("meta").uid(), 0);
    setid_attempts_in_workdir(w.path());
    // What the sandbox made belongs to root on the host: none of it is set-id.
    let x = w.path().join("x");
    assert_eq!(std::fs::metadata(&x).expect("x").uid(), 0);
    assert_eq!(setid_entries(w.path(), false), Vec::<String>::new());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_setgid_workdir_gives_its_group_to_directories_only() {
    // The kernel passes a setgid directory's bit on to new subdirectories (so that
    // they keep handing down the group); files get the group, never the bit.
    if !is_root() {
        return;
    }
    let w = root_workdir(0o2775);
    setid_attempts_in_workdir(w.path());
    let (v, code) = run_json(&[
        "--workdir",
        w.path().to_str().expect("utf-8"),
        "--",
        "/bin/sh",
        "-c",
        "mkdir sub && echo x > sub/file && echo x > file && cp /bin/sh sub/sh",
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        std::fs::metadata(w.path().join("sub")).expect("sub").mode() & 0o6000,
        0o2000
    );
    assert_eq!(setid_entries(w.path(), true), Vec::<String>::new());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn no_setid_file_in_a_read_write_bind() {
    if !is_root() {
        return;
    }
    let bind = root_workdir(0o755);
    let config = tempfile::tempdir().expect("tempdir");
    let profiles = config.path().join("aisbx/profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    std::fs::write(
        profiles.join("setid.toml"),
        format!(
            "extends = [\"base\"]\n[filesystem]\nrw_binds = [\"{}\"]\n",
            bind.path().display()
        ),
    )
    .expect("profile");
    let h = home();
    let b = bind.path().to_str().expect("utf-8");
    let run = |args: &[&str]| {
        let out = cmd(h.path())
            .env("XDG_CONFIG_HOME", config.path())
            .args(["run", "--json", "--profile", "setid", "--"])
            .args(args)
            .output()
            .expect("run");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(out.status.code(), Some(0), "{v}");
        stdout(&v).to_string()
    };
    assert_setid_refused(&run(&["/usr/bin/python3", "-c", SETID_ATTEMPTS, b]));
    assert_eq!(
        run(&["/bin/sh", "-c", SETID_SHELL, "sh", b]),
        "sh-suid:EPERM\nsh-sgid:EPERM\n"
    );
    assert!(bind.path().join("x").exists());
    assert_eq!(setid_entries(bind.path(), false), Vec::<String>::new());
}

#[test]
fn openat2_answers_enosys_so_that_callers_fall_back() {
    // A program that tries openat2 first (as some runtimes do) still opens files.
    let (v, code) = py(concat!(
        "import ctypes, os\n",
        "libc = ctypes.CDLL(None, use_errno=True)\n",
        "how = (ctypes.c_uint64 * 3)(0, 0, 0)\n",
        "r = libc.syscall(ctypes.c_long(437), ctypes.c_long(-100), b'/etc/passwd', how, ctypes.c_long(24))\n",
        "print(r, os.strerror(ctypes.get_errno()))\n",
        "print(len(open('/etc/passwd').read()) > 0)\n",
    ));
    assert_eq!(code, 0, "{v}");
    assert_eq!(stdout(&v), "-1 Function not implemented\nTrue\n", "{v}");
}

#[test]
fn the_sandbox_sees_nothing_of_the_host_command_line() {
    // Every process's cmdline and environ inside, the init's included.
    let (v, code) = run_json(&[
        "--env",
        "SECRET=hunter2",
        "--",
        "/bin/sh",
        "-c",
        "for p in /proc/[0-9]*; do echo \"$p\"; cat $p/cmdline; echo; cat $p/environ 2>&1; echo; done",
    ]);
    assert_eq!(code, 0, "{v}");
    let out = stdout(&v);
    assert!(out.contains("/proc/1\n"), "{v}");
    // The program's own environment has the variable; nothing else may.
    let init = out
        .split("/proc/")
        .find(|s| s.starts_with("1\n"))
        .expect("/proc/1");
    assert!(!init.contains("hunter2"), "{init:?}");
    assert!(!init.contains("SECRET"), "{init:?}");
    assert!(!init.contains("--env"), "{init:?}");
    assert!(!init.contains("--json"), "{init:?}");
    // The init's cmdline: NUL bytes only.
    let cmdline = init
        .strip_prefix("1\n")
        .and_then(|s| s.split('\n').next())
        .expect("cmdline");
    assert!(cmdline.bytes().all(|b| b == 0), "{cmdline:?}");
    for other in out.split("/proc/").filter(|s| !s.is_empty()) {
        let mut lines = other.splitn(2, '\n');
        let pid = lines.next().unwrap_or_default();
        let rest = lines.next().unwrap_or_default();
        assert!(!rest.contains("--env"), "/proc/{pid}: {rest:?}");
        assert!(
            !rest.contains(&bin().display().to_string()),
            "/proc/{pid}: {rest:?}"
        );
    }
}

/// `aisbx run --json -- ARGS` with `stdin` as its standard input.
fn run_with_stdin(stdin: std::process::Stdio, args: &[&str]) -> std::process::Output {
    let h = home();
    cmd(h.path())
        .args(["run", "--json", "--"])
        .args(args)
        .stdin(stdin)
        .output()
        .expect("run")
}

#[test]
fn a_directory_or_device_as_stdin_is_refused() {
    for path in ["/", "/dev/zero"] {
        let f = std::fs::File::open(path).expect("open");
        let out = run_with_stdin(f.into(), &["/bin/ls", "-la", "/proc/self/fd/0"]);
        assert_eq!(out.status.code(), Some(125), "{path}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("standard input is a"), "{path}: {err}");
    }
    // /dev/null is fine.
    let f = std::fs::File::open("/dev/null").expect("open");
    let out = run_with_stdin(f.into(), &["/bin/cat"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn a_socket_as_stdin_reaches_the_sandbox_as_a_pipe() {
    use std::io::Write;
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    ours.write_all(b"through the relay\n").expect("write");
    ours.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let out = run_with_stdin(
        std::os::fd::OwnedFd::from(theirs).into(),
        &[
            "/bin/sh",
            "-c",
            "cat; stat -L -c %F /proc/self/fd/0; echo back >&0 2>/dev/null || echo no-write",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(stdout(&v), "through the relay\nfifo\nno-write\n", "{v}");
}

#[test]
fn a_writable_file_as_stdin_is_reopened_read_only() {
    use std::io::{Seek, SeekFrom};
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path().join("input");
    std::fs::write(&p, "skip\nread me\n").expect("write");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .expect("open");
    f.seek(SeekFrom::Start(5)).expect("seek");
    let out = run_with_stdin(
        f.into(),
        &[
            "/bin/sh",
            "-c",
            "cat; echo OVERWRITTEN >&0 2>/dev/null || echo no-write",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(stdout(&v), "read me\nno-write\n", "{v}");
    assert_eq!(
        std::fs::read_to_string(&p).expect("read"),
        "skip\nread me\n"
    );
}

fn host_user_limits() -> Vec<String> {
    [
        "max_user_namespaces",
        "max_inotify_instances",
        "max_inotify_watches",
    ]
    .iter()
    .map(|k| std::fs::read_to_string(format!("/proc/sys/user/{k}")).expect("sysctl"))
    .collect()
}

#[test]
fn the_sandbox_user_namespace_has_its_own_small_limits() {
    let before = host_user_limits();
    let (v, code) = py(concat!(
        "import ctypes, os\n",
        "for k in ('max_user_namespaces', 'max_inotify_instances', 'max_inotify_watches'):\n",
        "    print(open('/proc/sys/user/' + k).read().strip())\n",
        "libc = ctypes.CDLL(None, use_errno=True)\n",
        "fds = []\n",
        "while len(fds) < 200:\n",
        "    fd = libc.inotify_init1(0)\n",
        "    if fd < 0:\n",
        "        print(len(fds), os.strerror(ctypes.get_errno()))\n",
        "        break\n",
        "    fds.append(fd)\n",
        "try:\n",
        "    open('/proc/sys/user/max_user_namespaces', 'w').write('5')\n",
        "except OSError as e:\n",
        "    print('write refused')\n",
    ));
    assert_eq!(code, 0, "{v}");
    let out = stdout(&v);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{v}");
    assert_eq!(&lines[..3], ["0", "32", "8192"], "{v}");
    // At most the namespace's cap (fewer when the host user already uses many).
    let (n, err) = lines[3].split_once(' ').expect("count and error");
    let n: u32 = n.parse().expect("count");
    assert!(n <= 32, "{v}");
    assert_eq!(err, "Too many open files", "{v}");
    assert_eq!(lines[4], "write refused", "{v}");
    assert_eq!(host_user_limits(), before);
}

#[test]
fn filling_the_tmpfs_ends_in_enospc_not_an_oom_kill() {
    // 256 MiB of memory; 400 MiB into /workspace, then /tmp and /dev/shm on top:
    // each write stops at a full file system, and the run goes on to its end.
    let (v, code) = run_json(&[
        "--memory",
        "256M",
        "--",
        "/bin/sh",
        "-c",
        "for f in /workspace/fill /tmp/fill /dev/shm/fill; do dd if=/dev/zero of=$f bs=1M count=400 2>/dev/null; echo \"dd=$?\"; done; \
         df -k /workspace /tmp /dev/shm | awk 'NR>1 {s+=$3} END {print s}'; echo end",
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["oom_killed"], false, "{v}");
    let out = stdout(&v);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{v}");
    assert_eq!(&lines[..3], ["dd=1", "dd=1", "dd=1"], "{v}");
    assert_eq!(lines[4], "end", "{v}");
    // What they hold together: at most three quarters of the memory limit.
    let used_kib: u64 = lines[3].parse().expect("df");
    assert!(used_kib <= 192 * 1024 && used_kib > 150 * 1024, "{v}");
}
