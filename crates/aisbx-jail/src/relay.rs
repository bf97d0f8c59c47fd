//! The forwarder of a run with filtered network ([`crate::NetRelay`]).
//!
//! The sandbox's network namespace holds only `lo`. The process that created it
//! (the init's namespace helper) listens there on `127.0.0.1:PORT` (TCP, the HTTP
//! proxy) and `127.0.0.1:53` (UDP and TCP, DNS), and relays every connection or
//! query to the Unix sockets in a host directory that the sandbox never sees
//! (`proxy.sock`, `dns.sock`), where aisbx's proxy decides what may pass. The
//! forwarder itself decides nothing: it copies bytes, IPv4 only.
//!
//! It binds its listeners while it still holds the capabilities of the sandbox's
//! user namespace (port 53 needs them), then drops to the least it needs before it
//! relays anything: the sandbox's id, no capabilities (bounding set included),
//! `no_new_privs`, not dumpable (so that the program, which runs as the same id,
//! cannot read its `/proc/PID/cwd` or fds or attach to it), its working directory
//! the socket directory (reached through an fd opened before the init pivoted),
//! and connects to the relative names there. Single-threaded (`poll`), with caps
//! on connections and queries; it dies with the init.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// The name of the proxy's socket in the socket directory.
pub const PROXY_SOCKET: &str = "proxy.sock";
/// The name of the DNS answerer's socket in the socket directory (DNS messages
/// framed as over TCP: a 2-byte big-endian length, then the message).
pub const DNS_SOCKET: &str = "dns.sock";

/// At most this many relayed TCP connections at once; past it a new one is
/// accepted and closed (the proxy's own per-run cap is lower, and recorded).
const MAX_CONNS: usize = 256;
/// At most this many DNS queries over UDP in flight.
const MAX_QUERIES: usize = 64;
/// A UDP query without an answer by then is dropped (the resolver retries).
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
const BUF: usize = 64 * 1024;

/// What the helper prepared for relaying, in the new network namespace.
pub struct Listeners {
    dir: OwnedFd,
    proxy: OwnedFd,
    dns_tcp: OwnedFd,
    dns_udp: OwnedFd,
}

fn last_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn owned(fd: libc::c_int, what: &str) -> Result<OwnedFd, String> {
    if fd < 0 {
        return Err(last_err(what));
    }
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_v4(port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; zero is a valid start.
    let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    a.sin_family = libc::AF_INET as libc::sa_family_t;
    a.sin_port = port.to_be();
    a.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
    a
}

fn bind_v4(ty: libc::c_int, port: u16) -> Result<OwnedFd, String> {
    let what = format!(
        "listening on 127.0.0.1:{port}/{}",
        if ty == libc::SOCK_STREAM {
            "tcp"
        } else {
            "udp"
        }
    );
    // SAFETY: plain socket calls on a new fd.
    let fd = owned(
        unsafe {
            libc::socket(
                libc::AF_INET,
                ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        },
        &what,
    )?;
    let a = sockaddr_v4(port);
    // SAFETY: a valid sockaddr_in and its size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&a as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(last_err(&what));
    }
    // SAFETY: listen on our socket.
    if ty == libc::SOCK_STREAM && unsafe { libc::listen(fd.as_raw_fd(), 128) } != 0 {
        return Err(last_err(&what));
    }
    Ok(fd)
}

impl Listeners {
    /// Open the socket directory (before the init pivots away from the host's
    /// root). Called in the helper before it creates the namespaces.
    pub fn open_dir(dir: &std::path::Path) -> Result<OwnedFd, String> {
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| "the network socket directory contains a NUL byte".to_string())?;
        // SAFETY: open with a valid C string.
        owned(
            unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            },
            &format!("opening the network socket directory {}", dir.display()),
        )
    }

    /// Bind the listeners, in the new network namespace with `lo` up.
    pub fn bind(dir: OwnedFd, port: u16) -> Result<Listeners, String> {
        Ok(Listeners {
            dir,
            proxy: bind_v4(libc::SOCK_STREAM, port)?,
            dns_tcp: bind_v4(libc::SOCK_STREAM, 53)?,
            dns_udp: bind_v4(libc::SOCK_DGRAM, 53)?,
        })
    }

    /// The fds the forwarder keeps.
    pub fn fds(&self) -> [RawFd; 4] {
        [
            self.dir.as_raw_fd(),
            self.proxy.as_raw_fd(),
            self.dns_tcp.as_raw_fd(),
            self.dns_udp.as_raw_fd(),
        ]
    }

    /// Drop to the sandbox's id without any privilege, then relay until killed.
    /// Returns only when dropping privileges failed.
    pub fn serve(self, sandbox_id: u32) -> String {
        if let Err(e) = drop_privileges(&self, sandbox_id) {
            return e;
        }
        relay_loop(&self);
        "the relay loop ended".into()
    }
}

fn drop_privileges(l: &Listeners, id: u32) -> Result<(), String> {
    // SAFETY: plain process-attribute calls on this process.
    unsafe {
        if libc::fchdir(l.dir.as_raw_fd()) != 0 {
            return Err(last_err("entering the network socket directory"));
        }
        if libc::setresgid(id, id, id) != 0 {
            return Err(last_err("setresgid"));
        }
        if libc::setresuid(id, id, id) != 0 {
            return Err(last_err("setresuid"));
        }
    }
    crate::child::drop_capabilities()?;
    // SAFETY: plain prctl calls.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(last_err("no_new_privs"));
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(last_err("PR_SET_DUMPABLE"));
        }
    }
    Ok(())
}

/// Connect to `name` in the working directory (the socket directory), without
/// blocking. A full backlog is an error: the client's connection is closed.
fn connect_unix(name: &str) -> Option<OwnedFd> {
    // SAFETY: a new socket fd.
    let fd = owned(
        unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        },
        "socket",
    )
    .ok()?;
    // SAFETY: sockaddr_un is plain data.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in a.sun_path.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: a valid sockaddr_un and its size.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&a as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    (r == 0).then_some(fd)
}

/// One direction of a relayed connection.
#[derive(Default)]
struct Dir {
    /// Read but not yet written.
    pending: Vec<u8>,
    /// The source reached EOF (or failed).
    eof: bool,
    /// EOF was passed on (`shutdown(SHUT_WR)` on the destination).
    done: bool,
}

struct Conn {
    client: OwnedFd,
    upstream: OwnedFd,
    up: Dir,
    down: Dir,
}

struct Query {
    client: libc::sockaddr_in,
    sock: OwnedFd,
    out: Vec<u8>,
    answer: Vec<u8>,
    started: Instant,
}

enum Io {
    Done(usize),
    Again,
    Closed,
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> Io {
    // SAFETY: reading into our buffer.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    match n {
        0 => Io::Closed,
        n if n > 0 => Io::Done(n as usize),
        _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock => Io::Again,
        _ => Io::Closed,
    }
}

fn write_fd(fd: RawFd, buf: &[u8]) -> Io {
    // SAFETY: sending from our buffer; MSG_NOSIGNAL: a closed peer is an error,
    // not SIGPIPE.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    match n {
        n if n >= 0 => Io::Done(n as usize),
        _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock => Io::Again,
        _ => Io::Closed,
    }
}

/// Move bytes from `src` to `dst` for one direction; false when the connection
/// is broken (an error other than EOF).
fn pump(src: RawFd, dst: RawFd, d: &mut Dir, scratch: &mut [u8]) -> bool {
    loop {
        if !d.pending.is_empty() {
            match write_fd(dst, &d.pending) {
                Io::Done(n) => {
                    d.pending.drain(..n);
                    if !d.pending.is_empty() {
                        return true;
                    }
                }
                Io::Again => return true,
                Io::Closed => return false,
            }
        }
        if d.eof {
            if !d.done {
                // SAFETY: shutdown on our socket.
                unsafe { libc::shutdown(dst, libc::SHUT_WR) };
                d.done = true;
            }
            return true;
        }
        match read_fd(src, scratch) {
            Io::Done(n) => d.pending.extend_from_slice(&scratch[..n]),
            Io::Again => return true,
            Io::Closed => d.eof = true,
        }
    }
}

fn accept(l: RawFd) -> Option<OwnedFd> {
    // SAFETY: accept4 without an address.
    let fd = unsafe {
        libc::accept4(
            l,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    owned(fd, "accept").ok()
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Receive one UDP query and send it on to the DNS socket.
fn start_query(udp: RawFd, scratch: &mut [u8], queries: &mut Vec<Query>) {
    // SAFETY: sockaddr_in is plain data.
    let mut from: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: receiving into our buffer and address.
    let n = unsafe {
        libc::recvfrom(
            udp,
            scratch.as_mut_ptr().cast(),
            scratch.len().min(u16::MAX as usize),
            0,
            (&mut from as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if n <= 0 || queries.len() >= MAX_QUERIES {
        return;
    }
    let n = n as usize;
    let Some(sock) = connect_unix(crate::relay::DNS_SOCKET) else {
        return;
    };
    let mut out = Vec::with_capacity(n + 2);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&scratch[..n]);
    queries.push(Query {
        client: from,
        sock,
        out,
        answer: Vec::new(),
        started: Instant::now(),
    });
}

/// Advance one UDP query; false when it is finished (answered or failed).
fn step_query(udp: RawFd, q: &mut Query, scratch: &mut [u8]) -> bool {
    while !q.out.is_empty() {
        match write_fd(q.sock.as_raw_fd(), &q.out) {
            Io::Done(n) => {
                q.out.drain(..n);
            }
            Io::Again => return true,
            Io::Closed => return false,
        }
    }
    let mut closed = false;
    loop {
        match read_fd(q.sock.as_raw_fd(), scratch) {
            Io::Done(n) => q.answer.extend_from_slice(&scratch[..n]),
            Io::Again => break,
            Io::Closed => {
                closed = true;
                break;
            }
        }
        if q.answer.len() > 2 + u16::MAX as usize {
            return false;
        }
    }
    if q.answer.len() >= 2 {
        let len = u16::from_be_bytes([q.answer[0], q.answer[1]]) as usize;
        if q.answer.len() >= 2 + len {
            // SAFETY: sending our buffer to the query's sender.
            unsafe {
                libc::sendto(
                    udp,
                    q.answer[2..2 + len].as_ptr().cast(),
                    len,
                    libc::MSG_NOSIGNAL,
                    (&q.client as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            return false;
        }
    }
    // Closed without a whole answer: nothing more will come.
    !closed && q.started.elapsed() < QUERY_TIMEOUT
}

fn relay_loop(l: &Listeners) {
    let mut conns: Vec<Conn> = Vec::new();
    let mut queries: Vec<Query> = Vec::new();
    let mut scratch = vec![0u8; BUF];
    let listeners = [
        (l.proxy.as_raw_fd(), PROXY_SOCKET),
        (l.dns_tcp.as_raw_fd(), DNS_SOCKET),
    ];
    loop {
        let mut fds: Vec<libc::pollfd> = listeners
            .iter()
            .map(|(fd, _)| pollfd(*fd, libc::POLLIN))
            .collect();
        fds.push(pollfd(l.dns_udp.as_raw_fd(), libc::POLLIN));
        for c in &conns {
            // Read a side only when nothing it sent is still waiting; wait to
            // write while something is.
            let ev = |from: &Dir, to: &Dir| {
                let mut e = 0;
                if from.pending.is_empty() && !from.eof {
                    e |= libc::POLLIN;
                }
                if !to.pending.is_empty() {
                    e |= libc::POLLOUT;
                }
                e
            };
            // A side with nothing to wait for is left out (a negative fd), so
            // that its hang-up does not wake the loop again and again while the
            // other side is slow.
            let slot = |fd: RawFd, e: libc::c_short| pollfd(if e == 0 { -1 } else { fd }, e);
            fds.push(slot(c.client.as_raw_fd(), ev(&c.up, &c.down)));
            fds.push(slot(c.upstream.as_raw_fd(), ev(&c.down, &c.up)));
        }
        for q in &queries {
            let e = if q.out.is_empty() {
                libc::POLLIN
            } else {
                libc::POLLOUT
            };
            fds.push(pollfd(q.sock.as_raw_fd(), e));
        }
        let timeout = if queries.is_empty() { -1 } else { 1000 };
        // SAFETY: poll on our array.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        // Existing connections first (their slots in `fds` follow the listeners).
        let base = listeners.len() + 1;
        let mut i = 0;
        conns.retain_mut(|c| {
            let (a, b) = (fds[base + 2 * i].revents, fds[base + 2 * i + 1].revents);
            i += 1;
            if a == 0 && b == 0 {
                return true;
            }
            if (a | b) & libc::POLLERR != 0 {
                return false;
            }
            let (cl, up) = (c.client.as_raw_fd(), c.upstream.as_raw_fd());
            let ok =
                pump(cl, up, &mut c.up, &mut scratch) && pump(up, cl, &mut c.down, &mut scratch);
            // A side that hung up takes nothing more: what was read from it still
            // goes on, what was meant for it is dropped.
            for (hup, to) in [(a, &mut c.down), (b, &mut c.up)] {
                if hup & libc::POLLHUP != 0 {
                    to.pending.clear();
                    to.eof = true;
                    to.done = true;
                }
            }
            ok && !(c.up.done && c.down.done)
        });
        let qbase = base + 2 * i;
        let mut j = 0;
        queries.retain_mut(|q| {
            let ev = fds[qbase + j].revents;
            j += 1;
            if ev == 0 {
                return q.started.elapsed() < QUERY_TIMEOUT;
            }
            step_query(l.dns_udp.as_raw_fd(), q, &mut scratch)
        });
        for (k, (fd, name)) in listeners.iter().enumerate() {
            if fds[k].revents & libc::POLLIN == 0 {
                continue;
            }
            // Take what is queued, up to the cap; past it, accept and close.
            while let Some(client) = accept(*fd) {
                if conns.len() >= MAX_CONNS {
                    continue;
                }
                let Some(upstream) = connect_unix(name) else {
                    continue;
                };
                conns.push(Conn {
                    client,
                    upstream,
                    up: Dir::default(),
                    down: Dir::default(),
                });
            }
        }
        if fds[listeners.len()].revents & libc::POLLIN != 0 {
            start_query(l.dns_udp.as_raw_fd(), &mut scratch, &mut queries);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pump_passes_bytes_and_eof_on() {
        let mut a = [0; 2];
        let mut b = [0; 2];
        // SAFETY: socketpair fills two fds each.
        unsafe {
            assert_eq!(
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK,
                    0,
                    a.as_mut_ptr()
                ),
                0
            );
            assert_eq!(
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK,
                    0,
                    b.as_mut_ptr()
                ),
                0
            );
        }
        // SAFETY: taking ownership of the fds just made.
        let [a0, a1, b0, b1] = [a[0], a[1], b[0], b[1]].map(|f| unsafe { OwnedFd::from_raw_fd(f) });
        let mut d = Dir::default();
        let mut scratch = vec![0u8; 8];
        assert!(matches!(
            write_fd(a0.as_raw_fd(), b"hello, relay"),
            Io::Done(12)
        ));
        // SAFETY: shutdown on our socket.
        unsafe { libc::shutdown(a0.as_raw_fd(), libc::SHUT_WR) };
        assert!(pump(a1.as_raw_fd(), b0.as_raw_fd(), &mut d, &mut scratch));
        assert!(d.eof && d.done && d.pending.is_empty());
        let mut got = vec![0u8; 64];
        let Io::Done(n) = read_fd(b1.as_raw_fd(), &mut got) else {
            panic!("nothing relayed");
        };
        assert_eq!(&got[..n], b"hello, relay");
        assert!(matches!(read_fd(b1.as_raw_fd(), &mut got), Io::Closed));
    }
}
