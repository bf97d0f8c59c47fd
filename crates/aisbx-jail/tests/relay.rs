//! The forwarder of a run with filtered network, through the real jail: a tiny
//! Unix-socket echo server stands in for the proxy and the DNS answerer. It runs
//! without the test harness, because the jail must be set up from a
//! single-threaded process (the server is a forked child).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use aisbx_jail::{
    DNS_SOCKET, Enforcement, Limits, NetRelay, PROXY_SOCKET, SeccompLevel, Sink, Spec, Stdin,
    Workspace,
};

struct Quiet;
impl Sink for Quiet {
    fn stdout(&mut self, _: &[u8]) {}
    fn stderr(&mut self, _: &[u8]) {}
}

/// Echo every byte on `proxy.sock`; answer each framed query on `dns.sock` with
/// `re:` and the query, framed.
fn serve(dir: &Path) -> ! {
    let proxy = UnixListener::bind(dir.join(PROXY_SOCKET)).expect("bind proxy.sock");
    let dns = UnixListener::bind(dir.join(DNS_SOCKET)).expect("bind dns.sock");
    for s in [PROXY_SOCKET, DNS_SOCKET] {
        std::fs::set_permissions(dir.join(s), std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    std::thread::spawn(move || {
        for mut c in dns.incoming().flatten() {
            std::thread::spawn(move || {
                let mut len = [0u8; 2];
                while c.read_exact(&mut len).is_ok() {
                    let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                    if c.read_exact(&mut q).is_err() {
                        break;
                    }
                    let mut a = b"re:".to_vec();
                    a.extend_from_slice(&q);
                    let mut out = (a.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&a);
                    if c.write_all(&out).is_err() {
                        break;
                    }
                }
            });
        }
    });
    for c in proxy.incoming().flatten() {
        std::thread::spawn(move || {
            let mut r = c.try_clone().unwrap();
            let mut w = c;
            let _ = std::io::copy(&mut r, &mut w);
            let _ = w.shutdown(std::net::Shutdown::Write);
        });
    }
    std::process::exit(0)
}

const SCRIPT: &str = r#"
exec 3<>/dev/tcp/127.0.0.1/3128 && printf 'hello relay' >&3 && echo "tcp:$(head -c 11 <&3)"
exec 4<>/dev/udp/127.0.0.1/53 && printf 'query1' >&4 && echo "udp:$(head -c 9 <&4)"
exec 5<>/dev/tcp/127.0.0.1/53 && printf '\000\002q2' >&5 && echo "dnstcp:$(head -c 7 <&5 | tail -c 5)"
exec 6<>/dev/tcp/127.0.0.1/3128
head -c 300000 /dev/urandom > /tmp/sent
(cat /tmp/sent >&6) &
head -c 300000 <&6 > /tmp/got
cmp -s /tmp/sent /tmp/got && echo big:ok
(exec 7<>/dev/tcp/192.0.2.1/80) 2>/dev/null && echo direct:open || echo direct:refused
(exec 7<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && echo other-port:open || echo other-port:refused
grep -E '^(Uid|Gid|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/2/status | tr -s '\t' ' '
ls /proc/2/cwd/ >/dev/null 2>&1 && echo forwarder-cwd:readable || echo forwarder-cwd:hidden
ls /proc/2/fd/ >/dev/null 2>&1 && echo forwarder-fd:readable || echo forwarder-fd:hidden
ls /proc/2/root/ >/dev/null 2>&1 && echo forwarder-root:readable || echo forwarder-root:hidden
"#;

fn spec(script: &str, net: Option<NetRelay>) -> Spec {
    Spec {
        argv: vec!["/bin/bash".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: "/".into(),
        ro_binds: ["/usr", "/bin", "/lib", "/lib64"]
            .iter()
            .map(Into::into)
            .collect(),
        rw_binds: Vec::new(),
        etc_files: Vec::new(),
        code_files: Vec::new(),
        workspace: Workspace::Tmpfs {
            size_bytes: 16 << 20,
        },
        workspace_files: Vec::new(),
        limits: Limits {
            wall: Duration::from_secs(20),
            memory_bytes: 256 << 20,
            pids: 64,
            cpus: 1.0,
            nofile: 256,
            tmp_bytes: 16 << 20,
            output_bytes: 1 << 20,
        },
        stdin: Stdin::Null,
        hostname: "aisbx".into(),
        landlock: Enforcement::BestEffort,
        seccomp: SeccompLevel::Default,
        require_cgroups: false,
        net,
        host_id: None,
    }
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("net");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    // SAFETY: single-threaded here (no harness); the child only serves and exits.
    let server = unsafe { libc::fork() };
    assert!(server >= 0, "fork");
    if server == 0 {
        serve(&dir);
    }
    for _ in 0..200 {
        if dir.join(DNS_SOCKET).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    let net = NetRelay {
        dir: dir.clone(),
        port: 3128,
    };
    let out = aisbx_jail::run(&spec(SCRIPT, Some(net.clone())), &mut Quiet);
    // SAFETY: ending and reaping our own child.
    unsafe {
        libc::kill(server, libc::SIGKILL);
        libc::waitpid(server, std::ptr::null_mut(), 0);
    }
    let out = out.expect("run with a relay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    let has = |s: &str| {
        assert!(
            stdout.lines().any(|l| l == s),
            "no '{s}' in:\n{stdout}\n{stderr}"
        )
    };
    // Bytes pass both ways, DNS over UDP and TCP reaches the DNS socket, a large
    // transfer arrives intact.
    has("tcp:hello relay");
    has("udp:re:query1");
    has("dnstcp:re:q2");
    has("big:ok");
    // Nothing else is reachable: no route out, nothing else listening.
    has("direct:refused");
    has("other-port:refused");
    // The forwarder holds no privilege and hides its fds and directory.
    for l in [
        "Uid: 1000 1000 1000 1000",
        "Gid: 1000 1000 1000 1000",
        "CapPrm: 0000000000000000",
        "CapEff: 0000000000000000",
        "CapBnd: 0000000000000000",
        "CapAmb: 0000000000000000",
        "NoNewPrivs: 1",
        "forwarder-cwd:hidden",
        "forwarder-fd:hidden",
        "forwarder-root:hidden",
    ] {
        has(l);
    }

    // Without a relay nothing listens inside.
    let out = aisbx_jail::run(
        &spec(
            "(exec 3<>/dev/tcp/127.0.0.1/3128) 2>/dev/null && echo open || echo refused; \
             (exec 3<>/dev/udp/127.0.0.1/53; printf x >&3; timeout 1 head -c 1 <&3) 2>/dev/null && echo dns || echo no-dns",
            None,
        ),
        &mut Quiet,
    )
    .expect("run without a relay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, "refused\nno-dns\n", "{stdout}");

    // A socket directory other users may enter is refused.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = aisbx_jail::run(&spec("true", Some(net)), &mut Quiet).expect_err("0755 dir");
    assert!(err.to_string().contains("must be 0700"), "{err}");
    println!("relay: ok");
}
