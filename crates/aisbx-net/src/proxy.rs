//! The per-run proxy: `proxy.sock` (HTTP CONNECT and absolute-URI HTTP) and `dns.sock`
//! (DNS over a stream), on a thread with its own single-threaded tokio runtime.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};

use crate::rule::Host;
use crate::sni::{self, Peek};
use crate::{NetError, NetPolicy, Verdict, addr, dns};

/// Client sockets open at once on `proxy.sock` (idle keep-alive ones included).
const MAX_CLIENTS: usize = 512;
/// Client sockets open at once on `dns.sock`.
const MAX_DNS_CLIENTS: usize = 64;
/// Records kept per run; past it records are counted in `records_dropped`.
const MAX_RECORDS: usize = 100_000;
/// Distinct denied destinations kept per run.
const MAX_DENIED: usize = 1000;
/// Time for one name resolution.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for one TCP connect to one address; at most `MAX_DIAL` addresses are tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_DIAL: usize = 4;
/// A client must send a request head within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// An idle DNS client is closed after this time.
const DNS_IDLE: Duration = Duration::from_secs(30);
/// Largest DNS query accepted.
const MAX_DNS_QUERY: usize = 4096;
/// Bytes read at a time in a tunnel.
const CHUNK: usize = 16 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// One connection (or refused attempt) through the proxy; one audit event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnRecord {
    /// The destination as requested, normalised (lower case; IPv6 in brackets).
    pub host: String,
    pub port: u16,
    /// The address dialled, once one was.
    pub addr: Option<IpAddr>,
    /// Whether the connection was let through to the destination.
    pub allowed: bool,
    /// For a refused connection, the rule that denied it or why (SNI mismatch, private
    /// address, connection cap, failed authentication); for an allowed one that was cut
    /// short, why ("byte cap"); else `None`.
    pub reason: Option<String>,
    /// Bytes from the sandbox to the destination (tunnel payload; for plain HTTP the
    /// request head and body).
    pub bytes_up: u64,
    /// Bytes from the destination to the sandbox.
    pub bytes_down: u64,
    pub duration_ms: u64,
}

/// What happened during one run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetReport {
    /// Every connection, in the order they ended (at most 100 000 per run).
    pub connections: Vec<ConnRecord>,
    /// Destinations refused by the allowlist or the address checks, as "host:port",
    /// deduplicated, in order of first refusal (at most 1000). When the SNI or Host
    /// header names another host than the one asked for, that other host is listed
    /// (it is where the program meant to go). Caps, failed authentication and
    /// malformed traffic are not listed: allowing something would change nothing.
    pub denied: Vec<String>,
    /// Records not kept because the run passed 100 000 connections.
    pub records_dropped: u64,
}

/// Extra knobs for [`Proxy::start_with`].
#[derive(Clone, Debug, Default)]
pub struct ProxyOptions {
    /// Fixed answers consulted before the system resolver, like `/etc/hosts` entries
    /// or curl's `--resolve` (names are matched case-insensitively). The addresses are
    /// checked exactly like resolved ones.
    pub hosts: Vec<(String, Vec<IpAddr>)>,
}

#[derive(Default)]
struct Log {
    records: Vec<ConnRecord>,
    denied: Vec<String>,
    denied_seen: HashSet<String>,
    dropped: u64,
}

struct Shared {
    policy: NetPolicy,
    /// `aisbx:` + secret, what Proxy-Authorization must decode to.
    credentials: Vec<u8>,
    hosts: HashMap<String, Vec<IpAddr>>,
    conns: Arc<Semaphore>,
    bytes_used: AtomicU64,
    log: Mutex<Log>,
}

impl Shared {
    /// Takes up to `n` bytes from the run's budget; returns how many may pass.
    fn take_bytes(&self, n: u64) -> u64 {
        let cap = self.policy.max_egress_bytes;
        let mut cur = self.bytes_used.load(Ordering::Relaxed);
        loop {
            let grant = n.min(cap.saturating_sub(cur));
            match self.bytes_used.compare_exchange_weak(
                cur,
                cur + grant,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return grant,
                Err(actual) => cur = actual,
            }
        }
    }

    fn push(&self, record: ConnRecord, listed: Option<String>) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = listed
            && log.denied.len() < MAX_DENIED
            && log.denied_seen.insert(key.clone())
        {
            log.denied.push(key);
        }
        if log.records.len() < MAX_RECORDS {
            log.records.push(record);
        } else {
            log.dropped += 1;
        }
    }

    async fn lookup(&self, name: &str) -> io::Result<Vec<IpAddr>> {
        if let Some(ips) = self.hosts.get(name) {
            return Ok(ips.clone());
        }
        let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, 0)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "name resolution timed out"))??;
        let mut ips: Vec<IpAddr> = Vec::new();
        for a in found {
            if !ips.contains(&a.ip()) {
                ips.push(a.ip());
            }
        }
        Ok(ips)
    }
}

/// The outcome of one connection, written when its [`Conn`] is dropped.
struct Outcome {
    allowed: bool,
    reason: Option<String>,
    /// The "host:port" to list in the report's `denied`, if any.
    listed: Option<String>,
    addr: Option<IpAddr>,
}

/// One connection's record in the making; pushed to the log on drop, so a connection
/// cut by `finish` is recorded too.
struct Conn {
    shared: Arc<Shared>,
    host: String,
    port: u16,
    start: Instant,
    up: AtomicU64,
    down: AtomicU64,
    outcome: Mutex<Outcome>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Conn {
    fn new(shared: &Arc<Shared>, host: String, port: u16) -> Conn {
        Conn {
            shared: shared.clone(),
            host,
            port,
            start: Instant::now(),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            outcome: Mutex::new(Outcome {
                allowed: false,
                reason: None,
                listed: None,
                addr: None,
            }),
            _permit: None,
        }
    }

    fn outcome(&self) -> std::sync::MutexGuard<'_, Outcome> {
        self.outcome.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refused; `listed` puts this connection's "host:port" in the report's `denied`.
    fn refuse(&self, reason: impl Into<String>, listed: bool) {
        let key = listed.then(|| format!("{}:{}", self.host, self.port));
        self.refuse_as(reason, key);
    }

    /// Refused; `listed` is what to put in the report's `denied`: the destination the
    /// program really wanted when that differs from the one it asked the proxy for (the
    /// SNI or Host header name), so that an agent can tell the user what to allow.
    fn refuse_as(&self, reason: impl Into<String>, listed: Option<String>) {
        let mut o = self.outcome();
        o.allowed = false;
        o.reason = Some(reason.into());
        o.listed = listed;
    }

    fn allow(&self, addr: IpAddr) {
        let mut o = self.outcome();
        o.allowed = true;
        o.addr = Some(addr);
    }

    /// Allowed but cut short.
    fn cut(&self, reason: &str) {
        let mut o = self.outcome();
        if o.reason.is_none() {
            o.reason = Some(reason.to_string());
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let o = self.outcome();
        let record = ConnRecord {
            host: self.host.clone(),
            port: self.port,
            addr: o.addr,
            allowed: o.allowed,
            reason: o.reason.clone(),
            bytes_up: self.up.load(Ordering::Relaxed),
            bytes_down: self.down.load(Ordering::Relaxed),
            duration_ms: u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        let listed = o.listed.clone();
        drop(o);
        self.shared.push(record, listed);
    }
}

/// A running proxy; [`Proxy::finish`] stops it and returns the report.
pub struct Proxy {
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    sockets: [PathBuf; 2],
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NetError + 'a {
    move |source| NetError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn listen(path: &Path) -> Result<std::os::unix::net::UnixListener, NetError> {
    let l = std::os::unix::net::UnixListener::bind(path)
        .map_err(io_err("listen on the socket", path))?;
    let ready = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(io_err("set the permissions of the socket", path))
        .and_then(|()| {
            l.set_nonblocking(true)
                .map_err(io_err("configure the socket", path))
        });
    if let Err(e) = ready {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(l)
}

impl Proxy {
    /// Serve in `dir` (an existing directory; the caller made it 0700): `dir/proxy.sock`
    /// (HTTP proxy: CONNECT and absolute-URI HTTP; every request must carry
    /// `Proxy-Authorization: Basic base64("aisbx:" + secret)`, else 407) and `dir/dns.sock`
    /// (DNS over a stream: each query and answer framed as in DNS over TCP, a 2-byte
    /// big-endian length then the message). Sockets are chmod 0666; the directory is the gate.
    /// Runs on its own thread with its own tokio runtime; returns once both listen.
    pub fn start(dir: &Path, policy: NetPolicy, secret: &str) -> Result<Proxy, NetError> {
        Proxy::start_with(dir, policy, secret, ProxyOptions::default())
    }

    /// [`Proxy::start`] with options.
    pub fn start_with(
        dir: &Path,
        policy: NetPolicy,
        secret: &str,
        options: ProxyOptions,
    ) -> Result<Proxy, NetError> {
        if secret.is_empty() {
            return Err(NetError::EmptySecret);
        }
        let proxy_path = dir.join(crate::PROXY_SOCK);
        let dns_path = dir.join(crate::DNS_SOCK);
        let proxy_l = listen(&proxy_path)?;
        let dns_l = match listen(&dns_path) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_file(&proxy_path);
                return Err(e);
            }
        };
        let cleanup = |e: NetError| {
            let _ = std::fs::remove_file(&proxy_path);
            let _ = std::fs::remove_file(&dns_path);
            e
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("aisbx-net")
            .build()
            .map_err(io_err("start the proxy's runtime for", dir))
            .map_err(cleanup)?;
        let (proxy_l, dns_l) = {
            let _guard = rt.enter();
            let p = UnixListener::from_std(proxy_l)
                .map_err(io_err("serve", &proxy_path))
                .map_err(cleanup)?;
            let d = UnixListener::from_std(dns_l)
                .map_err(io_err("serve", &dns_path))
                .map_err(cleanup)?;
            (p, d)
        };
        let mut hosts = HashMap::new();
        for (name, ips) in options.hosts {
            if let Some(n) = crate::rule::normalise_name(&name) {
                hosts.insert(n, ips);
            }
        }
        let shared = Arc::new(Shared {
            conns: Arc::new(Semaphore::new(
                (policy.max_connections as usize).min(Semaphore::MAX_PERMITS),
            )),
            policy,
            credentials: format!("{}:{secret}", crate::PROXY_USER).into_bytes(),
            hosts,
            bytes_used: AtomicU64::new(0),
            log: Mutex::new(Log::default()),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let served = shared.clone();
        let thread = std::thread::Builder::new()
            .name("aisbx-net".into())
            .spawn(move || {
                rt.block_on(serve(proxy_l, dns_l, served, stop_rx));
                // Drops every connection task: each records itself as it goes.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(io_err("start the proxy thread for", dir))
            .map_err(cleanup)?;
        Ok(Proxy {
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
            sockets: [proxy_path, dns_path],
        })
    }

    fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
    }

    /// Stop serving, close every connection, and return what happened.
    pub fn finish(mut self) -> NetReport {
        self.stop();
        let mut log = self.shared.log.lock().unwrap_or_else(|e| e.into_inner());
        NetReport {
            connections: std::mem::take(&mut log.records),
            denied: std::mem::take(&mut log.denied),
            records_dropped: log.dropped,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(
    proxy: UnixListener,
    dns: UnixListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    let dns_clients = Arc::new(Semaphore::new(MAX_DNS_CLIENTS));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            r = proxy.accept() => match r {
                Ok((stream, _)) => {
                    if let Ok(permit) = clients.clone().try_acquire_owned() {
                        tokio::spawn(serve_client(stream, shared.clone(), permit));
                    }
                }
                // Out of descriptors or similar: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
            r = dns.accept() => match r {
                Ok((stream, _)) => {
                    if let Ok(permit) = dns_clients.clone().try_acquire_owned() {
                        tokio::spawn(serve_dns(stream, shared.clone(), permit));
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
        }
    }
}

async fn serve_client(stream: UnixStream, shared: Arc<Shared>, _permit: OwnedSemaphorePermit) {
    let svc = service_fn(move |req| handle(req, shared.clone()));
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades()
        .await;
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<ProxyBody> {
    let mut body = msg.into();
    body.push('\n');
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether the request carries `Proxy-Authorization: Basic base64("aisbx:" + secret)`.
fn authorised(headers: &HeaderMap, credentials: &[u8]) -> bool {
    let mut values = headers.get_all(header::PROXY_AUTHORIZATION).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(v) = v.to_str() else {
        return false;
    };
    let Some((scheme, token)) = v.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(token.trim()) else {
        return false;
    };
    // Compare without an early exit on the first differing byte.
    decoded.len() == credentials.len()
        && decoded
            .iter()
            .zip(credentials)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A host as shown in records: normalised when valid, else the raw text, bounded.
fn shown(raw: &str) -> String {
    match Host::parse(raw) {
        Some(h) => h.to_string(),
        None => raw.chars().take(255).collect(),
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<ProxyBody>, Infallible> {
    if !authorised(req.headers(), &shared.credentials) {
        let (host, port) = match req.uri().authority() {
            Some(a) => (
                shown(a.host()),
                a.port_u16().unwrap_or(if req.method() == Method::CONNECT {
                    0
                } else {
                    80
                }),
            ),
            None => (String::new(), 0),
        };
        Conn::new(&shared, host, port).refuse("proxy authentication failed", false);
        let mut r = text(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "this proxy needs the run's credentials in Proxy-Authorization",
        );
        r.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"aisbx\""),
        );
        return Ok(r);
    }
    Ok(if req.method() == Method::CONNECT {
        connect(req, shared).await
    } else {
        forward(req, shared).await
    })
}

/// Why a destination was refused before dialling.
struct Refusal {
    status: StatusCode,
    reason: String,
    listed: bool,
}

/// The allowlist, the connection cap, resolution and the address checks, then the
/// dial: everything between a request naming `host:port` and a connected socket.
async fn open(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    host: &Host,
    port: u16,
) -> Result<TcpStream, Refusal> {
    if let Verdict::Deny { reason } = shared.policy.decide_host(host, port) {
        return Err(Refusal {
            status: StatusCode::FORBIDDEN,
            reason,
            listed: true,
        });
    }
    let Ok(permit) = shared.conns.clone().try_acquire_owned() else {
        return Err(Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "connection cap".to_string(),
            listed: false,
        });
    };
    conn._permit = Some(permit);
    let addrs = resolve_checked(shared, host, port).await?;
    let mut last = None;
    for a in addrs.into_iter().take(MAX_DIAL) {
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect(SocketAddr::new(a, port)),
        )
        .await
        {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                conn.allow(a);
                return Ok(s);
            }
            Ok(Err(e)) => last = Some(format!("{a}: {e}")),
            Err(_) => last = Some(format!("{a}: timed out")),
        }
    }
    Err(Refusal {
        status: StatusCode::BAD_GATEWAY,
        reason: format!(
            "could not connect ({})",
            last.unwrap_or_else(|| "no address".into())
        ),
        listed: false,
    })
}

/// The addresses the proxy may dial for `host`: an IP literal as is (only an IP rule
/// naming exactly it lets it through `decide`), a name resolved once here and filtered
/// to public unicast addresses not denied by an IP rule.
async fn resolve_checked(shared: &Shared, host: &Host, port: u16) -> Result<Vec<IpAddr>, Refusal> {
    let name = match host {
        Host::Ip(ip) => return Ok(vec![*ip]),
        Host::Name(n) => n,
    };
    let ips = shared.lookup(name).await.map_err(|e| Refusal {
        status: StatusCode::BAD_GATEWAY,
        reason: format!("could not resolve {name}: {e}"),
        listed: false,
    })?;
    let mut ok = Vec::new();
    let mut refused = None;
    for ip in ips {
        if let Some(class) = addr::refused_class(ip) {
            refused.get_or_insert_with(|| format!("{name} resolves to {ip}, a {class} address"));
        } else if let Some(rule) = shared.policy.denied_addr(ip, port) {
            refused.get_or_insert_with(|| {
                format!("{name} resolves to {ip}, denied by rule \"{rule}\"")
            });
        } else {
            ok.push(ip);
        }
    }
    if ok.is_empty() {
        return Err(match refused {
            Some(reason) => Refusal {
                status: StatusCode::FORBIDDEN,
                reason,
                listed: true,
            },
            None => Refusal {
                status: StatusCode::BAD_GATEWAY,
                reason: format!("{name} has no address"),
                listed: false,
            },
        });
    }
    Ok(ok)
}

async fn connect(req: Request<Incoming>, shared: Arc<Shared>) -> Response<ProxyBody> {
    let Some(authority) = req.uri().authority().cloned() else {
        Conn::new(&shared, String::new(), 0).refuse("CONNECT without host:port", false);
        return text(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    };
    let port = authority.port_u16().unwrap_or(0);
    let mut conn = Conn::new(&shared, shown(authority.host()), port);
    let Some(host) = Host::parse(authority.host()) else {
        conn.refuse("not a valid host name", false);
        return text(StatusCode::BAD_REQUEST, "CONNECT needs a valid host:port");
    };
    if port == 0 {
        conn.refuse("no port", false);
        return text(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    }
    let upstream = match open(&shared, &mut conn, &host, port).await {
        Ok(s) => s,
        Err(r) => {
            let msg = format!("aisbx refused {}:{}: {}", conn.host, port, r.reason);
            conn.refuse(r.reason, r.listed);
            return text(r.status, msg);
        }
    };
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(client) => tunnel(TokioIo::new(client), upstream, &conn, &host, port).await,
            Err(_) => conn.cut("the client left before the tunnel opened"),
        }
    });
    Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    )
}

/// How one direction of a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// End of stream, passed on as a half-close.
    Eof,
    /// The run's byte cap was reached.
    Cap,
    /// A read or write failed, or the first bytes were refused.
    Stop,
}

/// Copies `r` to `w`, counting into `counter` and taking every byte from the run's budget.
async fn pump<R, W>(r: &mut R, w: &mut W, shared: &Shared, counter: &AtomicU64) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => {
                let _ = w.shutdown().await;
                return End::Eof;
            }
            Ok(n) => n,
            Err(_) => return End::Stop,
        };
        if !send(w, &buf[..n], shared, counter).await {
            return if shared.bytes_used.load(Ordering::Relaxed) >= shared.policy.max_egress_bytes {
                End::Cap
            } else {
                End::Stop
            };
        }
    }
}

/// Writes what the byte budget allows of `data`; false when not all of it was written.
async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    shared: &Shared,
    counter: &AtomicU64,
) -> bool {
    let n = data.len() as u64;
    let grant = shared.take_bytes(n);
    if grant > 0 {
        // grant <= data.len(), so the cast is exact.
        if w.write_all(&data[..grant as usize]).await.is_err() {
            return false;
        }
        counter.fetch_add(grant, Ordering::Relaxed);
    }
    grant == n
}

/// Reads the client's first bytes and checks them against the CONNECT: a TLS
/// ClientHello must name the CONNECT host; TLS without SNI only to an IP literal;
/// other bytes only to ports other than 443. Returns the bytes read, or why not.
async fn first_bytes<R: AsyncRead + Unpin>(
    r: &mut R,
    host: &Host,
    port: u16,
) -> Result<Vec<u8>, Option<(String, Option<String>)>> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        match sni::peek(&buf) {
            Peek::NeedMore => {
                if buf.len() > sni::MAX_HELLO + 16 * CHUNK {
                    return Err(Some(("a ClientHello that never ends".into(), None)));
                }
                let mut chunk = vec![0u8; CHUNK];
                match r.read(&mut chunk).await {
                    Ok(0) | Err(_) => return Err(None),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            Peek::NotTls if port == 443 => {
                return Err(Some(("non-TLS bytes to port 443".into(), None)));
            }
            Peek::NotTls => return Ok(buf),
            Peek::Hello { sni: None } if host.is_ip() => return Ok(buf),
            Peek::Hello { sni: None } => {
                return Err(Some((
                    "SNI missing: a TLS ClientHello without a server name".into(),
                    None,
                )));
            }
            Peek::Hello { sni: Some(name) } => {
                let named = std::str::from_utf8(&name)
                    .ok()
                    .and_then(crate::rule::normalise_name);
                if named
                    .as_ref()
                    .is_some_and(|n| Host::Name(n.clone()) == *host)
                {
                    return Ok(buf);
                }
                let shown: String = String::from_utf8_lossy(&name).chars().take(255).collect();
                return Err(Some((
                    format!("SNI {shown:?} differs from the CONNECT host {host}"),
                    named.map(|n| format!("{n}:{port}")),
                )));
            }
            Peek::Malformed(why) => return Err(Some((format!("malformed TLS: {why}"), None))),
        }
    }
}

async fn tunnel<C>(client: C, upstream: TcpStream, conn: &Conn, host: &Host, port: u16)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let shared = &conn.shared;
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = upstream.into_split();
    let stop = Notify::new();
    // Each direction stops the other when it ends other than by a clean end of stream.
    let finish = |end: End| match end {
        End::Eof => {}
        End::Cap => {
            conn.cut("byte cap");
            stop.notify_one();
        }
        End::Stop => stop.notify_one(),
    };
    let up = async {
        let end = match first_bytes(&mut cr, host, port).await {
            Ok(first) => {
                if send(&mut uw, &first, shared, &conn.up).await {
                    pump(&mut cr, &mut uw, shared, &conn.up).await
                } else if shared.bytes_used.load(Ordering::Relaxed)
                    >= shared.policy.max_egress_bytes
                {
                    End::Cap
                } else {
                    End::Stop
                }
            }
            Err(Some((reason, listed))) => {
                conn.refuse_as(reason, listed);
                End::Stop
            }
            Err(None) => {
                let _ = uw.shutdown().await;
                End::Eof
            }
        };
        finish(end);
    };
    let down = async {
        finish(pump(&mut ur, &mut cw, shared, &conn.down).await);
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = stop.notified() => {}
    }
}

/// Hop-by-hop headers (RFC 9110 7.6.1) and the proxy's own, removed before forwarding.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| *n != header::HOST)
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(n);
    }
    h.remove("proxy-connection");
    h.remove("keep-alive");
}

/// Rough size of a message head on the wire, for the byte budget.
fn head_size(first_line: usize, h: &HeaderMap) -> u64 {
    let fields: usize = h.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    (first_line + 2 + fields + 2) as u64
}

/// The Host header's host and port, when there is exactly one.
fn host_header(h: &HeaderMap) -> Option<(Host, u16)> {
    let mut values = h.get_all(header::HOST).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return None;
    };
    let a: http::uri::Authority = v.to_str().ok()?.parse().ok()?;
    Some((Host::parse(a.host())?, a.port_u16().unwrap_or(80)))
}

async fn forward(req: Request<Incoming>, shared: Arc<Shared>) -> Response<ProxyBody> {
    let uri = req.uri().clone();
    let Some(authority) = uri.authority() else {
        return text(
            StatusCode::BAD_REQUEST,
            "this is a proxy: send CONNECT host:port, or an absolute http:// URI",
        );
    };
    let port = authority.port_u16().unwrap_or(80);
    let mut conn = Conn::new(&shared, shown(authority.host()), port);
    if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
        conn.refuse("not an http:// URI", false);
        return text(
            StatusCode::BAD_REQUEST,
            "only http:// URIs are forwarded; use CONNECT for https",
        );
    }
    let Some(host) = Host::parse(authority.host()) else {
        conn.refuse("not a valid host name", false);
        return text(
            StatusCode::BAD_REQUEST,
            "the URI's host is not a valid host name",
        );
    };
    match host_header(req.headers()) {
        Some((h, p)) if h == host && p == port => {}
        other => {
            let (why, listed) = match other {
                Some((h, p)) => (
                    format!("Host header {h}:{p} differs from the URI host {host}:{port}"),
                    Some(format!("{h}:{p}")),
                ),
                None => (
                    "Host header missing or not one valid host".to_string(),
                    None,
                ),
            };
            let msg = format!("aisbx refused {host}:{port}: {why}");
            conn.refuse_as(why, listed);
            return text(StatusCode::MISDIRECTED_REQUEST, msg);
        }
    }
    let tcp = match open(&shared, &mut conn, &host, port).await {
        Ok(s) => s,
        Err(r) => {
            let msg = format!("aisbx refused {host}:{port}: {}", r.reason);
            conn.refuse(r.reason, r.listed);
            return text(r.status, msg);
        }
    };
    let conn = Arc::new(conn);
    let (mut parts, body) = req.into_parts();
    let host_value = parts.headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(v) = host_value {
        parts.headers.insert(header::HOST, v);
    }
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    parts.uri = match path.parse::<Uri>() {
        Ok(u) => u,
        Err(_) => return text(StatusCode::BAD_REQUEST, "the URI's path is not valid"),
    };
    let head = head_size(
        parts.method.as_str().len() + path.len() + 10,
        &parts.headers,
    );
    if shared.take_bytes(head) < head {
        conn.cut("byte cap");
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "aisbx: the run's network byte cap is reached",
        );
    }
    conn.up.fetch_add(head, Ordering::Relaxed);
    let upstream_req = Request::from_parts(
        parts,
        Counted {
            inner: body,
            conn: conn.clone(),
            down: false,
        },
    );
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
            Ok(x) => x,
            Err(e) => {
                conn.cut("upstream HTTP handshake failed");
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("aisbx: upstream failed: {e}"),
                );
            }
        };
    tokio::spawn(connection);
    let resp = match sender.send_request(upstream_req).await {
        Ok(r) => r,
        Err(e) => {
            conn.cut("upstream request failed");
            return text(
                StatusCode::BAD_GATEWAY,
                format!("aisbx: upstream failed: {e}"),
            );
        }
    };
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let head = head_size(16, &parts.headers);
    if shared.take_bytes(head) < head {
        conn.cut("byte cap");
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "aisbx: the run's network byte cap is reached",
        );
    }
    conn.down.fetch_add(head, Ordering::Relaxed);
    Response::from_parts(
        parts,
        Counted {
            inner: body,
            conn,
            down: true,
        }
        .boxed(),
    )
}

/// A body whose data frames are counted and taken from the run's byte budget; past the
/// budget it fails, which aborts the message.
struct Counted {
    inner: Incoming,
    conn: Arc<Conn>,
    down: bool,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            Some(Ok(f)) => f,
        };
        if let Some(data) = frame.data_ref() {
            let n = data.len() as u64;
            let grant = this.conn.shared.take_bytes(n);
            let counter = if this.down {
                &this.conn.down
            } else {
                &this.conn.up
            };
            counter.fetch_add(grant, Ordering::Relaxed);
            if grant < n {
                this.conn.cut("byte cap");
                return Poll::Ready(Some(Err("the run's network byte cap is reached".into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn serve_dns(mut s: UnixStream, shared: Arc<Shared>, _permit: OwnedSemaphorePermit) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(DNS_IDLE, s.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let n = usize::from(u16::from_be_bytes(len));
        if n > MAX_DNS_QUERY {
            return;
        }
        let mut msg = vec![0u8; n];
        match tokio::time::timeout(DNS_IDLE, s.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(answer) = answer_dns(&msg, &shared).await else {
            continue;
        };
        let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&answer);
        if s.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// The answer to one query: A records for allowlisted names (public IPv4 addresses
/// only), empty NOERROR for their AAAA (the sandbox is IPv4-only), NXDOMAIN for any
/// other name, REFUSED for other types and classes.
async fn answer_dns(msg: &[u8], shared: &Shared) -> Option<Vec<u8>> {
    let policy = &shared.policy;
    let q = match dns::parse(msg) {
        Ok(q) => q,
        Err(bad) => return bad.answer(),
    };
    if !q.is_class_in() || (q.qtype != dns::TYPE_A && q.qtype != dns::TYPE_AAAA) {
        return Some(q.answer(dns::REFUSED, &[]));
    }
    let Some(name) = q.name.as_deref() else {
        return Some(q.answer(dns::NXDOMAIN, &[]));
    };
    if !policy.allows_name(name) {
        return Some(q.answer(dns::NXDOMAIN, &[]));
    }
    if q.qtype == dns::TYPE_AAAA {
        return Some(q.answer(dns::NOERROR, &[]));
    }
    match shared.lookup(name).await {
        Err(_) => Some(q.answer(dns::SERVFAIL, &[])),
        Ok(ips) => {
            let v4: Vec<Ipv4Addr> = ips
                .into_iter()
                .filter_map(|ip| match ip {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                })
                .filter(|a| addr::refused_class(IpAddr::V4(*a)).is_none())
                .filter(|a| {
                    !policy
                        .deny
                        .iter()
                        .any(|r| r.ip() == Some(IpAddr::V4(*a)) && r.port().is_none())
                })
                .collect();
            Some(q.answer(dns::NOERROR, &v4))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_header(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_str(v).unwrap(),
        );
        h
    }

    #[test]
    fn credentials_must_match_exactly() {
        let creds = b"aisbx:s3cret";
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(authorised(
            &auth_header(&format!("Basic {}", b64("aisbx:s3cret"))),
            creds
        ));
        assert!(authorised(
            &auth_header(&format!("basic  {} ", b64("aisbx:s3cret"))),
            creds
        ));
        for bad in [
            format!("Basic {}", b64("aisbx:s3cre")),
            format!("Basic {}", b64("aisbx:s3cret ")),
            format!("Basic {}", b64("Aisbx:s3cret")),
            format!("Bearer {}", b64("aisbx:s3cret")),
            "Basic".to_string(),
            "Basic ====".to_string(),
            String::new(),
        ] {
            assert!(!authorised(&auth_header(&bad), creds), "{bad:?}");
        }
        assert!(!authorised(&HeaderMap::new(), creds));
        let mut two = auth_header(&format!("Basic {}", b64("aisbx:s3cret")));
        two.append(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {}", b64("aisbx:s3cret"))).unwrap(),
        );
        assert!(!authorised(&two, creds), "two credentials are one too many");
    }

    #[test]
    fn hop_by_hop_headers_go_but_host_stays() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("host", "example.org"),
            ("connection", "keep-alive, x-secret, host"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("user-agent", "pip"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["host", "user-agent"]);
    }

    #[test]
    fn the_byte_budget_is_shared_and_never_overdrawn() {
        let shared = Shared {
            policy: NetPolicy {
                max_egress_bytes: 100,
                ..NetPolicy::new(vec![], vec![])
            },
            credentials: Vec::new(),
            hosts: HashMap::new(),
            conns: Arc::new(Semaphore::new(1)),
            bytes_used: AtomicU64::new(0),
            log: Mutex::new(Log::default()),
        };
        assert_eq!(shared.take_bytes(60), 60);
        assert_eq!(shared.take_bytes(60), 40);
        assert_eq!(shared.take_bytes(1), 0);
        assert_eq!(shared.bytes_used.load(Ordering::Relaxed), 100);
    }
}
