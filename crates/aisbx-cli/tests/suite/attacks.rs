//! Each test attempts an escape and asserts that it fails.

use std::io::Read;
use std::net::TcpListener;

use super::common::*;

#[test]
fn cannot_read_a_secret_in_the_host_home() {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let name = format!("aisbx-secret-{}", marker());
    let path = std::path::Path::new(&home).join(&name);
    std::fs::write(&path, "TOPSECRET-7f3a").expect("plant secret");
    let (v, _) = sh(&format!(
        "cat '{p}'; ls -la '{home}'; cat /proc/1/root'{p}'; grep -r TOPSECRET-7f3a /etc /tmp /workspace /run 2>/dev/null; echo done",
        p = path.display()
    ));
    let _ = std::fs::remove_file(&path);
    assert!(stdout(&v).contains("done"), "{v}");
    assert!(!stdout(&v).contains("TOPSECRET-7f3a"), "secret leaked: {v}");
    assert!(!stdout(&v).contains(&name), "host home listed: {v}");
}

#[test]
fn root_holds_only_the_runtime() {
    let (v, code) = sh("ls -1 /");
    assert_eq!(code, 0, "{v}");
    let entries: Vec<&str> = stdout(&v).lines().collect();
    for forbidden in ["home", "root", "var", "srv", "mnt", "opt", "boot", "media"] {
        assert!(
            !entries.contains(&forbidden),
            "/{forbidden} visible: {entries:?}"
        );
    }
    for needed in ["usr", "proc", "dev", "tmp", "workspace", "etc"] {
        assert!(entries.contains(&needed), "/{needed} missing: {entries:?}");
    }
    // /etc is synthesized: no shadow, no host users.
    let (v, _) = sh("cat /etc/shadow; cat /etc/passwd");
    assert!(!stdout(&v).contains("root:$"), "{v}");
    assert!(stdout(&v).contains("sandbox:x:1000"), "{v}");
}

#[test]
fn cannot_write_outside_workspace_and_tmp() {
    let (v, code) = sh(
        "for f in /usr/x /etc/x /x /run/aisbx/x /dev/x /proc/x /usr/lib/x; do \
           if touch $f 2>/dev/null; then echo WROTE $f; fi; done; \
         touch /workspace/ok /tmp/ok /dev/shm/ok && echo inside-ok",
    );
    assert_eq!(code, 0, "{v}");
    assert!(!stdout(&v).contains("WROTE"), "{v}");
    assert!(stdout(&v).contains("inside-ok"), "{v}");
}

#[test]
fn cannot_reach_a_host_tcp_listener() {
    let l = TcpListener::bind("127.0.0.1:0").expect("listen");
    l.set_nonblocking(true).expect("nonblocking");
    let port = l.local_addr().expect("addr").port();
    let (v, _) = py(&format!(
        "import socket\ns=socket.socket()\ns.settimeout(2)\ntry:\n s.connect(('127.0.0.1',{port})); print('CONNECTED')\nexcept OSError as e: print('refused', e.errno)"
    ));
    assert!(stdout(&v).contains("refused"), "{v}");
    assert!(l.accept().is_err(), "the host listener got a connection");
}

#[test]
fn cannot_reach_a_host_abstract_unix_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("aisbx-test-{}", marker());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
    let l = std::os::unix::net::UnixListener::bind_addr(&addr).expect("bind abstract");
    l.set_nonblocking(true).expect("nonblocking");
    let (v, _) = py(&format!(
        "import socket\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect('\\0{name}'); print('CONNECTED')\nexcept OSError as e: print('refused', e.errno)"
    ));
    assert!(stdout(&v).contains("refused"), "{v}");
    assert!(l.accept().is_err(), "the host socket got a connection");
}

#[test]
fn network_is_loopback_only() {
    let (v, _) = py(
        "import socket\nprint(sorted(n for _,n in socket.if_nameindex()))\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ntry:\n s.connect(('8.8.8.8',53)); print('ROUTE')\nexcept OSError as e: print('unreachable', e.errno)",
    );
    assert!(stdout(&v).contains("['lo']"), "{v}");
    assert!(stdout(&v).contains("unreachable"), "{v}");
}

#[test]
fn cannot_see_or_signal_host_processes() {
    let me = std::process::id();
    let (v, _) = sh(&format!(
        "ls /proc | grep -c '^[0-9]'; kill -0 {me} 2>&1 && echo SIGNALLED; kill -9 1 2>&1; echo end"
    ));
    let n: usize = stdout(&v)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(999);
    assert!(n <= 6, "sandbox sees {n} pids: {v}");
    assert!(!stdout(&v).contains("SIGNALLED"), "{v}");
    assert!(stdout(&v).contains("end"), "{v}");
}

#[test]
fn keeps_no_capability_and_no_new_privs() {
    let (v, _) =
        sh("grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status; id -u");
    let out = stdout(&v);
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(cap))
            .unwrap_or_else(|| panic!("{cap} missing: {v}"));
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
    assert!(out.contains("NoNewPrivs:\t1"), "{v}");
    assert!(out.contains("Seccomp:\t2"), "{v}");
    assert!(out.lines().last() == Some("1000"), "{v}");
}

/// (name, x86_64 number, arguments)
#[cfg(target_arch = "x86_64")]
const DENIED: &[(&str, i64, &str)] = &[
    ("ptrace", 101, "0,0,0,0"),
    ("bpf", 321, "0,0,0"),
    ("keyctl", 250, "0,0,0,0,0"),
    ("add_key", 248, "0,0,0,0,0"),
    ("io_uring_setup", 425, "1,0"),
    ("mount", 165, "0,0,0,0,0"),
    ("unshare(CLONE_NEWUSER)", 272, "0x10000000"),
    ("unshare(CLONE_NEWNS)", 272, "0x00020000"),
    ("setns", 308, "0,0"),
    ("perf_event_open", 298, "0,0,0,0,0"),
    ("userfaultfd", 323, "0"),
    ("pivot_root", 155, "0,0"),
    ("open_by_handle_at", 304, "0,0,0"),
    ("process_vm_readv", 310, "1,0,0,0,0,0"),
    ("kexec_load", 246, "0,0,0,0"),
    ("init_module", 175, "0,0,0"),
    ("swapon", 167, "0,0"),
    ("syslog", 103, "0,0,0"),
    ("iopl", 172, "3"),
    ("ioperm", 173, "0,1,1"),
    ("clone(CLONE_NEWUSER)", 56, "0x10000011,0,0,0,0"),
];

#[cfg(target_arch = "x86_64")]
#[test]
fn dangerous_system_calls_fail_with_eperm() {
    let mut code = String::from(
        "import ctypes\nlibc=ctypes.CDLL(None,use_errno=True)\nlibc.syscall.restype=ctypes.c_long\n",
    );
    for (name, nr, args) in DENIED {
        code.push_str(&format!(
            "r=libc.syscall({nr},{args}); print('{name}', r, ctypes.get_errno())\n"
        ));
    }
    let (v, _) = py(&code);
    let out = stdout(&v);
    for (name, _, _) in DENIED {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not tried: {v}"));
        assert!(
            line.ends_with(" -1 1"),
            "{name} was not refused with EPERM: {line}"
        );
    }
    // clone3 answers ENOSYS so that libc falls back to clone, which is filtered.
    let (v, _) = py(
        "import ctypes\nlibc=ctypes.CDLL(None,use_errno=True)\nprint(libc.syscall(435,0,0), ctypes.get_errno())",
    );
    assert_eq!(stdout(&v).trim(), "-1 38", "{v}");
    // Threads and plain forks still work.
    let (v, code) = py(
        "import threading,os\nt=threading.Thread(target=print,args=('thread',)); t.start(); t.join()\npid=os.fork()\nif pid==0: os._exit(7)\nprint(os.waitstatus_to_exitcode(os.waitpid(pid,0)[1]))",
    );
    assert_eq!(code, 0, "{v}");
    assert_eq!(stdout(&v), "thread\n7\n", "{v}");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x32_and_32bit_abis_kill_the_process() {
    // getpid through the x32 ABI (bit 30 set).
    let (v, code) =
        py("import ctypes\nlibc=ctypes.CDLL(None)\nlibc.syscall(0x40000000|39)\nprint('SURVIVED')");
    assert!(!stdout(&v).contains("SURVIVED"), "{v}");
    assert_eq!(v["signal"], 31, "expected SIGSYS: {v}");
    assert_eq!(code, 128 + 31);
}

#[test]
fn terminal_injection_and_vsock_are_refused() {
    let (v, _) = py(
        "import fcntl,termios,socket,errno\ntry:\n fcntl.ioctl(0, termios.TIOCSTI, b'x'); print('TIOCSTI ok')\nexcept OSError as e: print('TIOCSTI', e.errno)\ntry:\n socket.socket(40, socket.SOCK_STREAM); print('VSOCK ok')\nexcept OSError as e: print('VSOCK', e.errno)",
    );
    assert!(stdout(&v).contains("TIOCSTI 1\n"), "{v}");
    assert!(stdout(&v).contains("VSOCK 1\n"), "{v}");
}

#[test]
fn caller_environment_does_not_leak() {
    let h = home();
    let out = cmd(h.path())
        .env("AISBX_TEST_SECRET_TOKEN", "leaky-value-123")
        .args(["run", "--json", "-e", "MINE=1", "--", "/usr/bin/env"])
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let env = stdout(&v);
    assert!(!env.contains("leaky-value-123"), "{env}");
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    for n in &names {
        assert!(
            ["PATH", "HOME", "LANG", "TERM", "MINE", "PWD"].contains(n),
            "unexpected variable {n}: {env}"
        );
    }
    assert!(env.contains("MINE=1"), "{env}");
}

#[test]
fn hostname_and_ipc_are_private() {
    let (v, _) = sh("hostname; cat /proc/sys/kernel/hostname; ls /dev/shm | wc -l; ls /dev");
    let out = stdout(&v);
    assert!(out.starts_with("aisbx\naisbx\n0\n"), "{v}");
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm",
    ] {
        assert!(out.lines().any(|l| l == dev), "/dev/{dev} missing: {out}");
    }
    for dev in ["sda", "vda", "kvm", "mem", "kmsg"] {
        assert!(!out.lines().any(|l| l == dev), "/dev/{dev} exposed: {out}");
    }
}

#[test]
fn every_namespace_is_new_and_loopback_works() {
    // The net, ipc and uts namespaces are made by a helper and joined by the init:
    // the program must be in them, not in the host's.
    let kinds = ["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"];
    let script = kinds
        .iter()
        .map(|k| format!("readlink /proc/self/ns/{k}"))
        .collect::<Vec<_>>()
        .join("; ");
    let (v, code) = sh(&script);
    assert_eq!(code, 0, "{v}");
    let inside: Vec<&str> = stdout(&v).lines().collect();
    assert_eq!(inside.len(), kinds.len(), "{v}");
    for (k, ns) in kinds.iter().zip(&inside) {
        let host = std::fs::read_link(format!("/proc/self/ns/{k}")).expect("host ns");
        assert_ne!(
            host.to_string_lossy(),
            *ns,
            "{k} namespace shared with the host"
        );
    }
    let (v, _) = py(
        "import socket\ns=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\nc=socket.create_connection(s.getsockname(), timeout=2); a,_=s.accept(); c.sendall(b'ping'); print(a.recv(4).decode())",
    );
    assert_eq!(stdout(&v), "ping\n", "{v}");
}

#[test]
fn proc_kernel_knobs_are_read_only() {
    let (v, _) = sh(
        "echo 1 > /proc/sys/kernel/sysrq 2>/dev/null && echo WROTE; echo c > /proc/sysrq-trigger 2>/dev/null && echo TRIGGERED; echo end",
    );
    assert_eq!(stdout(&v), "end\n", "{v}");
}

#[test]
fn cannot_escape_via_setuid_binaries() {
    // su/mount are setuid root on the host; with no_new_privs and nosuid they give nothing.
    let (v, _) = sh(
        "ls -l /usr/bin/su /bin/mount 2>/dev/null | head -1; su -c id root </dev/null 2>&1; mount -t tmpfs x /tmp 2>&1; id -u",
    );
    assert!(stdout(&v).trim_end().ends_with("1000"), "{v}");
    assert!(!stdout(&v).contains("uid=0"), "{v}");
}

#[test]
fn host_files_read_through_binds_stay_read_only() {
    let (v, _) = sh("echo x >> /usr/bin/env 2>&1; echo x > /etc/ld.so.cache 2>&1; echo end");
    assert!(stdout(&v).ends_with("end\n"), "{v}");
    let mut f = std::fs::File::open("/usr/bin/env").expect("open");
    let mut head = [0u8; 4];
    f.read_exact(&mut head).expect("read");
    assert_eq!(&head, b"\x7fELF");
}
