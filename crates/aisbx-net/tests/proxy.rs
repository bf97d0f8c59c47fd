//! The proxy driven over its Unix sockets, with real TCP peers on 127.0.0.1 (allowed only
//! by rules naming 127.0.0.1 and the peer's port explicitly).

mod common;

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use aisbx_net::{NetPolicy, ProxyOptions};
use common::*;

const NOTHING: Duration = Duration::from_millis(300);

#[test]
fn sockets_are_0666_and_removed_by_finish() {
    let mut env = Env::start(policy(&[]));
    for s in [env.proxy_sock(), env.dns_sock()] {
        let meta = std::fs::metadata(&s).unwrap();
        assert!(meta.file_type().is_socket(), "{}", s.display());
        assert_eq!(meta.permissions().mode() & 0o777, 0o666, "{}", s.display());
    }
    let report = env.finish();
    assert!(report.connections.is_empty());
    assert!(!env.proxy_sock().exists() && !env.dns_sock().exists());
    assert!(UnixStream::connect(env.proxy_sock()).is_err());
}

#[test]
fn start_refuses_an_empty_secret_and_a_taken_socket() {
    let dir = tempfile::tempdir().unwrap();
    let err = aisbx_net::Proxy::start(dir.path(), policy(&[]), "")
        .err()
        .unwrap();
    assert!(err.to_string().contains("secret"), "{err}");
    let first = aisbx_net::Proxy::start(dir.path(), policy(&[]), SECRET).unwrap();
    let err = aisbx_net::Proxy::start(dir.path(), policy(&[]), SECRET)
        .err()
        .unwrap();
    assert!(err.to_string().contains("proxy.sock"), "{err}");
    drop(first);
}

#[test]
fn connect_to_an_allowed_destination_tunnels_both_ways() {
    let peer = Peer::start(Mode::Echo);
    let mut env = Env::start(policy(&[peer.rule()]));
    let (mut s, status) = env.connect(&peer.target());
    assert_eq!(status, 200);
    s.write_all(b"ping through the tunnel\n").unwrap();
    let mut back = [0u8; 24];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping through the tunnel\n");
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(read_to_end(&mut s).is_empty());
    assert_eq!(peer.next(WAIT).unwrap(), b"ping through the tunnel\n");
    drop(s);
    let report = env.finish();
    assert_eq!(report.connections.len(), 1, "{report:?}");
    let r = &report.connections[0];
    assert_eq!((r.host.as_str(), r.port), ("127.0.0.1", peer.port));
    assert!(r.allowed);
    assert_eq!(r.reason, None);
    assert_eq!(r.addr, Some("127.0.0.1".parse::<IpAddr>().unwrap()));
    assert_eq!((r.bytes_up, r.bytes_down), (24, 24));
    assert!(report.denied.is_empty());
}

#[test]
fn connect_outside_the_allowlist_is_403_and_listed() {
    let peer = Peer::start(Mode::Sink);
    let other = Peer::start(Mode::Sink);
    let mut env = Env::start(policy(&[peer.rule(), "example.org".into()]));
    for target in [
        other.target(),
        "example.org:8443".into(),
        "example.com:443".into(),
    ] {
        let (_s, status) = env.connect(&target);
        assert_eq!(status, 403, "{target}");
    }
    assert!(
        other.next(NOTHING).is_none(),
        "the unlisted peer was reached"
    );
    let report = env.finish();
    assert_eq!(
        report.denied,
        vec![
            other.target(),
            "example.org:8443".to_string(),
            "example.com:443".to_string()
        ]
    );
    assert!(report.connections.iter().all(|r| !r.allowed
        && r.reason.as_deref() == Some("not in the allowlist")
        && r.addr.is_none()));
}

#[test]
fn deny_wins_over_allow() {
    let peer = Peer::start(Mode::Sink);
    let mut p = policy(&[peer.rule()]);
    p.deny.push("127.0.0.1".parse().unwrap());
    let mut env = Env::start(p);
    assert_eq!(env.connect(&peer.target()).1, 403);
    assert!(peer.next(NOTHING).is_none());
    let report = env.finish();
    assert_eq!(
        report.connections[0].reason.as_deref(),
        Some("denied by rule \"127.0.0.1\"")
    );
}

#[test]
fn missing_or_wrong_credentials_get_407() {
    let peer = Peer::start(Mode::Sink);
    let mut env = Env::start(policy(&[peer.rule()]));
    let wrong = [
        None,
        Some(basic("aisbx:not-the-secret")),
        Some(basic(&format!("root:{SECRET}"))),
        Some(basic(&format!("aisbx:{SECRET}x"))),
        Some(format!("Bearer {SECRET}")),
        Some("Basic !!!notbase64".to_string()),
        Some("Basic".to_string()),
    ];
    for auth in &wrong {
        let mut s = env.client();
        let mut req = format!(
            "CONNECT {} HTTP/1.1\r\nHost: {}\r\n",
            peer.target(),
            peer.target()
        );
        if let Some(a) = auth {
            req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let (status, head) = read_head(&mut s);
        assert_eq!(status, 407, "{auth:?}");
        assert!(
            head.to_ascii_lowercase()
                .contains("proxy-authenticate: basic"),
            "{head}"
        );
    }
    // Plain HTTP needs them too.
    let mut s = env.client();
    let t = peer.target();
    write!(s, "GET http://{t}/ HTTP/1.1\r\nHost: {t}\r\n\r\n").unwrap();
    assert_eq!(read_head(&mut s).0, 407);
    // Case-insensitive scheme with the right secret passes.
    let lower = good_auth().replacen("Basic", "bAsIc", 1);
    assert_eq!(env.connect_auth(&peer.target(), Some(&lower)).1, 200);
    assert!(peer.next(WAIT).is_some());
    let report = env.finish();
    let refused: Vec<_> = report.connections.iter().filter(|r| !r.allowed).collect();
    assert_eq!(refused.len(), wrong.len() + 1);
    assert!(
        refused
            .iter()
            .all(|r| r.reason.as_deref() == Some("proxy authentication failed"))
    );
    assert!(
        report.denied.is_empty(),
        "failed authentication is not a destination to allow"
    );
}

#[test]
fn sni_different_from_the_connect_host_is_refused() {
    let peer = Peer::start(Mode::Sink);
    let mut env = Env::start(policy(&[peer.rule()]));
    let (mut s, status) = env.connect(&peer.target());
    assert_eq!(status, 200);
    s.write_all(&client_hello(Some("example.org"))).unwrap();
    assert!(read_to_end(&mut s).is_empty());
    // The peer was dialled but never received a byte.
    assert_eq!(peer.next(WAIT).unwrap(), b"");
    let report = env.finish();
    let r = &report.connections[0];
    assert!(!r.allowed);
    assert_eq!(r.bytes_up, 0);
    let reason = r.reason.as_deref().unwrap();
    assert!(
        reason.starts_with("SNI \"example.org\" differs"),
        "{reason}"
    );
    // Listed is where the program meant to go, not the allowed host it asked for.
    assert_eq!(report.denied, vec![format!("example.org:{}", peer.port)]);
}

#[test]
fn tls_without_sni_passes_only_to_an_ip_literal() {
    let peer = Peer::start(Mode::Sink);
    let mut env = Env::start(policy(&[peer.rule()]));
    let (mut s, status) = env.connect(&peer.target());
    assert_eq!(status, 200);
    let hello = client_hello(None);
    s.write_all(&hello).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    read_to_end(&mut s);
    assert_eq!(peer.next(WAIT).unwrap(), hello);
    let report = env.finish();
    assert!(report.connections[0].allowed);
    assert_eq!(report.connections[0].bytes_up, hello.len() as u64);
}

#[test]
fn names_resolving_to_internal_addresses_are_refused() {
    let peer = Peer::start(Mode::Sink);
    let options = ProxyOptions {
        hosts: vec![
            (
                "metadata.test".into(),
                vec!["169.254.169.254".parse().unwrap()],
            ),
            (
                "mixed.test".into(),
                vec!["127.0.0.1".parse().unwrap(), "10.1.2.3".parse().unwrap()],
            ),
            (
                "mapped.test".into(),
                vec!["::ffff:127.0.0.1".parse().unwrap()],
            ),
            ("self.test".into(), vec!["127.0.0.1".parse().unwrap()]),
        ],
    };
    let port = peer.port;
    let mut env = Env::start_with(
        policy(&[
            format!("localhost:{port}"),
            "metadata.test".into(),
            format!("mixed.test:{port}"),
            format!("mapped.test:{port}"),
            format!("self.test:{port}"),
        ]),
        options,
    );
    for target in [
        format!("localhost:{port}"),
        "metadata.test:80".into(),
        format!("mixed.test:{port}"),
        format!("mapped.test:{port}"),
        format!("self.test:{port}"),
    ] {
        assert_eq!(env.connect(&target).1, 403, "{target}");
    }
    assert!(
        peer.next(NOTHING).is_none(),
        "a refused name reached the peer"
    );
    let report = env.finish();
    let reasons: Vec<&str> = report
        .connections
        .iter()
        .map(|r| r.reason.as_deref().unwrap())
        .collect();
    assert!(reasons[0].contains("loopback"), "{reasons:?}");
    assert!(
        reasons[1].contains("169.254.169.254") && reasons[1].contains("metadata"),
        "{reasons:?}"
    );
    assert!(reasons[2].contains("127.0.0.1"), "{reasons:?}");
    assert!(reasons[3].contains("::ffff:127.0.0.1"), "{reasons:?}");
    assert!(reasons[4].contains("loopback"), "{reasons:?}");
    assert_eq!(report.denied.len(), 5);
}

#[test]
fn loopback_ipv6_and_mapped_literals_are_refused() {
    let peer = Peer::start(Mode::Sink);
    let port = peer.port;
    let mut env = Env::start(policy(&[peer.rule(), format!("*.test:{port}")]));
    for target in [
        format!("[::1]:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("[::ffff:7f00:1]:{port}"),
        format!("[0:0:0:0:0:ffff:127.0.0.1]:{port}"),
        format!("[::127.0.0.1]:{port}"),
        format!("127.1:{port}"),
        format!("2130706433:{port}"),
        format!("0x7f.1:{port}"),
        format!("0.0.0.0:{port}"),
    ] {
        let (_s, status) = env.connect(&target);
        assert!(status == 403 || status == 400, "{target}: {status}");
    }
    assert!(peer.next(NOTHING).is_none(), "a literal reached the peer");
    let report = env.finish();
    assert!(
        report
            .connections
            .iter()
            .all(|r| !r.allowed && r.addr.is_none())
    );
}

#[test]
fn connections_past_the_cap_get_503() {
    let peer = Peer::start(Mode::Echo);
    let mut p = policy(&[peer.rule()]);
    p.max_connections = 2;
    let mut env = Env::start(p);
    let (a, sa) = env.connect(&peer.target());
    let (b, sb) = env.connect(&peer.target());
    assert_eq!((sa, sb), (200, 200));
    let (_c, sc) = env.connect(&peer.target());
    assert_eq!(sc, 503);
    // Closing one frees its slot.
    drop(a);
    assert!(peer.next(WAIT).is_some());
    let mut freed = false;
    for _ in 0..50 {
        let (_d, sd) = env.connect(&peer.target());
        if sd == 200 {
            freed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(freed, "a closed tunnel did not free its slot");
    drop(b);
    let report = env.finish();
    let capped: Vec<_> = report
        .connections
        .iter()
        .filter(|r| r.reason.as_deref() == Some("connection cap"))
        .collect();
    assert!(!capped.is_empty());
    assert!(capped.iter().all(|r| !r.allowed));
    assert!(report.denied.is_empty());
}

#[test]
fn a_download_past_the_byte_cap_is_cut() {
    let peer = Peer::start(Mode::Blast(50_000));
    let mut p = policy(&[peer.rule()]);
    p.max_egress_bytes = 1000;
    let mut env = Env::start(p);
    let (mut s, status) = env.connect(&peer.target());
    assert_eq!(status, 200);
    let got = read_to_end(&mut s);
    assert_eq!(got.len(), 1000);
    // The budget is the run's: the next tunnel gets nothing through.
    let (mut s2, status) = env.connect(&peer.target());
    assert_eq!(status, 200);
    assert!(read_to_end(&mut s2).is_empty());
    let report = env.finish();
    let r = &report.connections[0];
    assert_eq!(r.reason.as_deref(), Some("byte cap"), "{report:?}");
    assert_eq!(r.bytes_down, 1000);
    assert!(
        report
            .connections
            .iter()
            .map(|r| r.bytes_up + r.bytes_down)
            .sum::<u64>()
            <= 1000
    );
}

#[test]
fn an_upload_past_the_byte_cap_is_cut() {
    let peer = Peer::start(Mode::Sink);
    let mut p = policy(&[peer.rule()]);
    p.max_egress_bytes = 4096;
    let mut env = Env::start(p);
    let (mut s, status) = env.connect(&peer.target());
    assert_eq!(status, 200);
    let data = vec![b'u'; 64 * 1024];
    let _ = s.write_all(&data);
    read_to_end(&mut s);
    let got = peer.next(WAIT).unwrap();
    assert_eq!(got.len(), 4096);
    let report = env.finish();
    assert_eq!(report.connections[0].reason.as_deref(), Some("byte cap"));
    assert_eq!(report.connections[0].bytes_up, 4096);
}

#[test]
fn plain_bytes_pass_to_other_ports_but_not_to_443() {
    let peer = Peer::start(Mode::Sink);
    let https = Peer::start_on("127.0.0.2:443", Mode::Sink);
    let mut env = Env::start(policy(&[peer.rule(), https.rule()]));
    let (mut s, status) = env.connect(&peer.target());
    assert_eq!(status, 200);
    s.write_all(b"SSH-2.0-client\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    read_to_end(&mut s);
    assert_eq!(peer.next(WAIT).unwrap(), b"SSH-2.0-client\r\n");
    let (mut s, status) = env.connect(&https.target());
    assert_eq!(status, 200);
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(read_to_end(&mut s).is_empty());
    assert_eq!(
        https.next(WAIT).unwrap(),
        b"",
        "plain bytes reached port 443"
    );
    let report = env.finish();
    let r = report.connections.iter().find(|r| r.port == 443).unwrap();
    assert!(!r.allowed);
    assert_eq!(r.reason.as_deref(), Some("non-TLS bytes to port 443"));
}

#[test]
fn absolute_uri_http_is_forwarded_in_origin_form() {
    let peer = Peer::start(Mode::Http);
    let mut env = Env::start(policy(&[peer.rule()]));
    let t = peer.target();
    let mut s = env.client();
    write!(
        s,
        "GET http://{t}/simple/pkg/?q=1 HTTP/1.1\r\nHost: {t}\r\nProxy-Authorization: {}\r\nProxy-Connection: keep-alive\r\nUser-Agent: test\r\n\r\n",
        good_auth()
    )
    .unwrap();
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 200, "{head}");
    let mut body = [0u8; 5];
    s.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"hello");
    let seen = String::from_utf8(peer.next(WAIT).unwrap()).unwrap();
    assert!(
        seen.starts_with("GET /simple/pkg/?q=1 HTTP/1.1\r\n"),
        "{seen}"
    );
    let lower = seen.to_ascii_lowercase();
    assert!(lower.contains(&format!("host: {t}\r\n")), "{seen}");
    assert!(lower.contains("user-agent: test\r\n"), "{seen}");
    assert!(!lower.contains("proxy-authorization"), "{seen}");
    assert!(!lower.contains("proxy-connection"), "{seen}");
    drop(s);
    let report = env.finish();
    let r = &report.connections[0];
    assert!(r.allowed, "{report:?}");
    assert!(r.bytes_up > 0 && r.bytes_down >= 5, "{r:?}");
}

#[test]
fn http_with_a_different_host_header_gets_421() {
    let peer = Peer::start(Mode::Http);
    let mut env = Env::start(policy(&[peer.rule(), "example.org".into()]));
    let t = peer.target();
    for host in ["example.org", "127.0.0.1", "127.0.0.1:1", ""] {
        let mut s = env.client();
        write!(
            s,
            "GET http://{t}/ HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {}\r\n\r\n",
            good_auth()
        )
        .unwrap();
        assert_eq!(read_head(&mut s).0, 421, "Host: {host}");
    }
    // Two Host headers, one of them right.
    let mut s = env.client();
    write!(
        s,
        "GET http://{t}/ HTTP/1.1\r\nHost: {t}\r\nHost: example.org\r\nProxy-Authorization: {}\r\n\r\n",
        good_auth()
    )
    .unwrap();
    let status = read_head(&mut s).0;
    assert!(status == 421 || status == 400, "{status}");
    assert!(
        peer.next(NOTHING).is_none(),
        "a mismatched request reached the peer"
    );
    let report = env.finish();
    assert!(report.connections.iter().all(|r| !r.allowed));
    assert_eq!(
        report.denied,
        vec!["example.org:80", "127.0.0.1:80", "127.0.0.1:1"]
    );
}

#[test]
fn http_outside_the_allowlist_gets_403_and_https_uris_400() {
    let peer = Peer::start(Mode::Http);
    let mut env = Env::start(policy(&["example.org".into()]));
    let t = peer.target();
    for (uri, host, want) in [
        (format!("http://{t}/"), t.clone(), 403),
        (
            "https://example.org/".to_string(),
            "example.org".to_string(),
            400,
        ),
        ("/".to_string(), "example.org".to_string(), 400),
    ] {
        let mut s = env.client();
        write!(
            s,
            "GET {uri} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {}\r\n\r\n",
            good_auth()
        )
        .unwrap();
        assert_eq!(read_head(&mut s).0, want, "{uri}");
    }
    assert!(peer.next(NOTHING).is_none());
    let report = env.finish();
    assert_eq!(report.denied, vec![t]);
}

#[test]
fn finish_closes_open_tunnels_and_records_them() {
    let peer = Peer::start(Mode::Echo);
    let mut env = Env::start(policy(&[peer.rule()]));
    let (mut s, status) = env.connect(&peer.target());
    assert_eq!(status, 200);
    s.write_all(b"abc").unwrap();
    let mut back = [0u8; 3];
    s.read_exact(&mut back).unwrap();
    let report = env.finish();
    assert!(read_to_end(&mut s).is_empty(), "the tunnel stayed open");
    assert_eq!(report.connections.len(), 1);
    assert_eq!(report.connections[0].bytes_up, 3);
    assert!(report.connections[0].allowed);
}

#[test]
fn dns_answers_only_allowlisted_names() {
    let options = ProxyOptions {
        hosts: vec![
            (
                "pkg.test".into(),
                vec![
                    "93.184.215.14".parse().unwrap(),
                    "10.1.1.1".parse().unwrap(),
                    "2606:4700::1111".parse().unwrap(),
                    "151.101.0.223".parse().unwrap(),
                ],
            ),
            ("meta.test".into(), vec!["169.254.169.254".parse().unwrap()]),
            ("other.test".into(), vec!["93.184.215.15".parse().unwrap()]),
        ],
    };
    let mut env = Env::start_with(
        policy(&["pkg.test".into(), "meta.test".into(), "*.sub.test".into()]),
        options,
    );
    let mut s = UnixStream::connect(env.dns_sock()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    // A: only the public IPv4 addresses.
    let a = dns_ask(&mut s, &dns_query(0x1234, "PKG.test", 1));
    assert_eq!((a.id, a.rcode), (0x1234, 0));
    assert_eq!(
        a.a,
        vec![
            "93.184.215.14".parse::<std::net::Ipv4Addr>().unwrap(),
            "151.101.0.223".parse().unwrap()
        ]
    );
    // AAAA: empty NOERROR.
    let a = dns_ask(&mut s, &dns_query(2, "pkg.test", 28));
    assert_eq!((a.rcode, a.ancount), (0, 0));
    // TXT and ANY: refused, for listed and unlisted names alike.
    for (name, t) in [
        ("pkg.test", 16),
        ("secret-data.other.test", 16),
        ("pkg.test", 255),
    ] {
        let a = dns_ask(&mut s, &dns_query(3, name, t));
        assert_eq!((a.rcode, a.ancount), (5, 0), "{name} type {t}");
    }
    // Unlisted names: NXDOMAIN, even when they resolve.
    for name in ["other.test", "sub.test", "pkg.test.evil", "localhost"] {
        let a = dns_ask(&mut s, &dns_query(4, name, 1));
        assert_eq!((a.rcode, a.ancount), (3, 0), "{name}");
    }
    // Listed but internal: no address.
    let a = dns_ask(&mut s, &dns_query(5, "meta.test", 1));
    assert_eq!((a.rcode, a.ancount), (0, 0));
    // A malformed query gets FORMERR and the connection keeps working.
    let mut two_questions = dns_query(6, "pkg.test", 1);
    two_questions[5] = 2;
    let a = dns_ask(&mut s, &two_questions);
    assert_eq!(a.rcode, 1);
    let a = dns_ask(&mut s, &dns_query(7, "pkg.test", 1));
    assert_eq!((a.id, a.rcode, a.ancount), (7, 0, 2));
    // An oversized frame closes the connection.
    s.write_all(&[0xff, 0xff]).unwrap();
    s.write_all(&[0u8; 64]).unwrap();
    assert!(read_to_end(&mut s).is_empty());
    let report = env.finish();
    assert!(report.connections.is_empty());
}

#[test]
fn a_report_serialises_for_the_audit_log() {
    let peer = Peer::start(Mode::Sink);
    let mut env = Env::start(NetPolicy::new(vec![], vec![]));
    assert_eq!(env.connect(&peer.target()).1, 403);
    let report = env.finish();
    let v = serde_json::to_value(&report).unwrap();
    let r = &v["connections"][0];
    assert_eq!(r["host"], "127.0.0.1");
    assert_eq!(r["port"], peer.port);
    assert_eq!(r["allowed"], false);
    assert_eq!(r["reason"], "not in the allowlist");
    assert_eq!(r["addr"], serde_json::Value::Null);
    assert_eq!(v["denied"][0], peer.target());
}

#[test]
fn starts_and_finishes_from_inside_an_async_runtime() {
    // The MCP server calls the service from tokio tasks: the proxy's own runtime must
    // not clash with the caller's.
    let peer = Peer::start(Mode::Echo);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let proxy = aisbx_net::Proxy::start(dir.path(), policy(&[peer.rule()]), SECRET).unwrap();
        let sock = dir.path().join("proxy.sock");
        let target = peer.target();
        let status = tokio::task::spawn_blocking(move || {
            let mut s = UnixStream::connect(sock).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            write!(
                s,
                "CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
                good_auth()
            )
            .unwrap();
            read_head(&mut s).0
        })
        .await
        .unwrap();
        assert_eq!(status, 200);
        proxy.finish()
    });
    assert_eq!(report.connections.len(), 1);
    assert!(report.connections[0].allowed);
}

#[test]
fn concurrent_tunnels_carry_their_bytes_intact() {
    let peer = Peer::start(Mode::Echo);
    let mut env = Env::start(policy(&[peer.rule()]));
    let sock = env.proxy_sock();
    let target = peer.target();
    const TUNNELS: usize = 16;
    const SIZE: usize = 256 * 1024;
    let workers: Vec<_> = (0..TUNNELS)
        .map(|i| {
            let sock = sock.clone();
            let target = target.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(sock).unwrap();
                s.set_read_timeout(Some(WAIT)).unwrap();
                write!(
                    s,
                    "CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
                    good_auth()
                )
                .unwrap();
                assert_eq!(read_head(&mut s).0, 200);
                // A pattern that differs per tunnel and per position.
                let data: Vec<u8> = (0..SIZE).map(|j| (j * 31 + i * 7) as u8).collect();
                let mut writer = s.try_clone().unwrap();
                let sent = data.clone();
                let w = std::thread::spawn(move || {
                    writer.write_all(&sent).unwrap();
                    writer.shutdown(std::net::Shutdown::Write).unwrap();
                });
                let back = read_to_end(&mut s);
                w.join().unwrap();
                assert!(back == data, "tunnel {i}: {} bytes came back", back.len());
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let report = env.finish();
    assert_eq!(report.connections.len(), TUNNELS);
    for r in &report.connections {
        assert!(r.allowed && r.reason.is_none(), "{r:?}");
        assert_eq!((r.bytes_up, r.bytes_down), (SIZE as u64, SIZE as u64));
    }
}

#[test]
fn garbage_on_both_sockets_leaves_the_proxy_serving() {
    let peer = Peer::start(Mode::Echo);
    let mut env = Env::start(policy(&[peer.rule()]));
    // A small deterministic generator: the same garbage on every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let t = peer.target();
    let prefixes: [&[u8]; 4] = [
        b"",
        b"CONNECT ",
        format!("GET http://{t}/ HTTP/1.1\r\n").leak().as_bytes(),
        b"\x16\x03\x01",
    ];
    for i in 0..200 {
        let len = (next() % 3000) as usize;
        let mut junk = prefixes[i % prefixes.len()].to_vec();
        junk.extend((0..len).map(|_| next() as u8));
        for path in [env.proxy_sock(), env.dns_sock()] {
            let mut s = UnixStream::connect(path).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let _ = s.write_all(&junk);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    }
    // Garbage after a valid CONNECT to an IP literal on a non-443 port is just bytes.
    let (mut s, status) = env.connect(&t);
    assert_eq!(status, 200);
    s.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here");
    drop(s);
    let mut d = UnixStream::connect(env.dns_sock()).unwrap();
    d.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(dns_ask(&mut d, &dns_query(9, "unlisted.test", 1)).rcode, 3);
    env.finish();
}
