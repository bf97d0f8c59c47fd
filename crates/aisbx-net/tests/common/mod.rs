//! Helpers for the proxy's integration tests: a proxy in a temporary directory, clients
//! speaking to its Unix sockets, and real TCP peers on 127.0.0.1.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use aisbx_net::{NetPolicy, NetReport, Proxy, ProxyOptions, Rule};
use base64::Engine as _;

pub const SECRET: &str = "9f2c0e1d-test-secret";
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Env {
    pub dir: tempfile::TempDir,
    pub proxy: Option<Proxy>,
}

pub fn policy(allow: &[String]) -> NetPolicy {
    NetPolicy::new(
        allow.iter().map(|r| r.parse::<Rule>().unwrap()).collect(),
        Vec::new(),
    )
}

impl Env {
    pub fn start(policy: NetPolicy) -> Env {
        Env::start_with(policy, ProxyOptions::default())
    }

    pub fn start_with(policy: NetPolicy, options: ProxyOptions) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let proxy = Proxy::start_with(dir.path(), policy, SECRET, options).unwrap();
        Env {
            dir,
            proxy: Some(proxy),
        }
    }

    pub fn proxy_sock(&self) -> PathBuf {
        self.dir.path().join("proxy.sock")
    }

    pub fn dns_sock(&self) -> PathBuf {
        self.dir.path().join("dns.sock")
    }

    pub fn finish(&mut self) -> NetReport {
        self.proxy.take().unwrap().finish()
    }

    /// Opens a client connection to proxy.sock.
    pub fn client(&self) -> UnixStream {
        let s = UnixStream::connect(self.proxy_sock()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    }

    /// Sends CONNECT with the right credentials; returns the stream and the status.
    pub fn connect(&self, target: &str) -> (UnixStream, u16) {
        self.connect_auth(target, Some(&good_auth()))
    }

    pub fn connect_auth(&self, target: &str, auth: Option<&str>) -> (UnixStream, u16) {
        let mut s = self.client();
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(a) = auth {
            req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let (status, _) = read_head(&mut s);
        (s, status)
    }
}

pub fn good_auth() -> String {
    basic(&format!("aisbx:{SECRET}"))
}

pub fn basic(user_pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

/// Reads a response head byte by byte (so no tunnel byte is consumed); returns the
/// status and the head text.
pub fn read_head<R: Read>(s: &mut R) -> (u16, String) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            other => panic!(
                "connection ended inside a response head ({other:?}): {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let text = String::from_utf8(head).unwrap();
    let status = text[9..12].parse().unwrap();
    (status, text)
}

/// Reads until end of stream (or an error, e.g. a reset); returns what arrived.
pub fn read_to_end<R: Read>(s: &mut R) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// What a TCP peer does with each connection.
#[derive(Clone, Copy)]
pub enum Mode {
    /// Echo every byte back until end of stream.
    Echo,
    /// Read until end of stream, then report what came.
    Sink,
    /// Write this many bytes at once, then close.
    Blast(usize),
    /// Answer one HTTP request with "hello", reporting the request head.
    Http,
}

/// A TCP server on 127.0.0.1 that reports each connection's received bytes.
pub struct Peer {
    pub ip: String,
    pub port: u16,
    pub seen: Receiver<Vec<u8>>,
}

impl Peer {
    pub fn start(mode: Mode) -> Peer {
        Peer::start_on("127.0.0.1:0", mode)
    }

    /// A peer on `addr` (e.g. "127.0.0.2:443": any 127/8 address is local on Linux).
    pub fn start_on(addr: &str, mode: Mode) -> Peer {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let local = l.local_addr().unwrap();
        let port = local.port();
        let (tx, seen) = channel();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(WAIT)).unwrap();
                    let got = serve(&mut s, mode);
                    let _ = tx.send(got);
                });
            }
        });
        Peer {
            ip: local.ip().to_string(),
            port,
            seen,
        }
    }

    /// The bytes of the next connection the peer saw, if one came within `wait`.
    pub fn next(&self, wait: Duration) -> Option<Vec<u8>> {
        self.seen.recv_timeout(wait).ok()
    }

    pub fn target(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn rule(&self) -> String {
        self.target()
    }
}

fn serve(s: &mut TcpStream, mode: Mode) -> Vec<u8> {
    match mode {
        Mode::Echo => {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if s.write_all(&buf[..n]).is_err() {
                            return got;
                        }
                    }
                }
            }
        }
        Mode::Sink => read_to_end(s),
        Mode::Blast(n) => {
            let _ = s.write_all(&vec![b'x'; n]);
            let _ = s.shutdown(std::net::Shutdown::Write);
            read_to_end(s)
        }
        Mode::Http => {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(1) => head.push(b[0]),
                    _ => return head,
                }
            }
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            );
            head
        }
    }
}

/// A minimal ClientHello record naming `sni` (or no server name).
pub fn client_hello(sni: Option<&str>) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(name) = sni {
        let mut entry = vec![0u8];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name.as_bytes());
        let mut list = (entry.len() as u16).to_be_bytes().to_vec();
        list.extend_from_slice(&entry);
        exts.extend_from_slice(&[0, 0]);
        exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
        exts.extend_from_slice(&list);
    }
    exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1u8];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// A DNS query for `name` of type `qtype`, as a stub resolver sends it.
pub fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

/// An answer's id, rcode and A-record addresses (answers are parsed positionally: the
/// proxy writes each record as a 2-byte name pointer, type, class, TTL, length, data).
pub struct DnsAnswer {
    pub id: u16,
    pub rcode: u8,
    pub ancount: u16,
    pub a: Vec<std::net::Ipv4Addr>,
}

pub fn dns_ask(s: &mut UnixStream, query: &[u8]) -> DnsAnswer {
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    s.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg).unwrap();
    assert!(msg[2] & 0x80 != 0, "an answer has QR set");
    let ancount = u16::from_be_bytes([msg[6], msg[7]]);
    // Skip the question (uncompressed name + 4 bytes).
    let mut pos = 12;
    if u16::from_be_bytes([msg[4], msg[5]]) == 1 {
        while msg[pos] != 0 {
            pos += 1 + msg[pos] as usize;
        }
        pos += 5;
    }
    let mut a = Vec::new();
    for _ in 0..ancount {
        let rtype = u16::from_be_bytes([msg[pos + 2], msg[pos + 3]]);
        let rdlen = u16::from_be_bytes([msg[pos + 10], msg[pos + 11]]) as usize;
        let data = &msg[pos + 12..pos + 12 + rdlen];
        if rtype == 1 {
            a.push(std::net::Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        pos += 12 + rdlen;
    }
    DnsAnswer {
        id: u16::from_be_bytes([msg[0], msg[1]]),
        rcode: msg[3] & 0x0f,
        ancount,
        a,
    }
}
