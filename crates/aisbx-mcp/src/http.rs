//! Streamable HTTP at `/mcp`, on TCP or a Unix socket.
//!
//! TCP: every request needs the bearer token (compared in constant time) unless
//! `--no-auth`, which only a loopback address may use; Host/Origin checks guard
//! against DNS rebinding. Unix socket: mode 0600, and each connection's peer uid
//! (`SO_PEERCRED`) must be the server's own or root's.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use http_body::{Frame, SizeHint};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::auth::{Token, TokenOrigin};
use crate::oauth::{METADATA_PATH, OAuthConfig, Verifier};
use crate::server::{AisbxServer, DisconnectToken, FrontEnd, Shared};
use aisbx_service::tenants;

/// Largest POST body accepted (the tools cap their own arguments below this).
pub const MAX_BODY_BYTES: usize = crate::protocol::MAX_MESSAGE_BYTES;

const SESSION_HEADER: &str = "mcp-session-id";

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `HOST:PORT`, e.g. `127.0.0.1:8765`, `[::1]:0`, `localhost:8765`.
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl Listen {
    /// `--listen unix:PATH`.
    pub fn parse(spec: &str) -> Result<Listen, HttpError> {
        match spec.strip_prefix("unix:") {
            Some(p) if !p.is_empty() => Ok(Listen::Unix(PathBuf::from(p))),
            _ => Err(HttpError::ListenSpec(spec.to_string())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub listen: Listen,
    /// The bearer token clients must send; `None` = no authentication (`--no-auth`
    /// on loopback, or a Unix socket, whose peers are checked instead).
    pub token: Option<Token>,
    /// Extra allowed `Origin` values (`https://app.example.com:443`, `http://host:*`).
    pub allow_origins: Vec<String>,
    /// Extra allowed `Host` names (`mcp.example.com`, `mcp.example.com:8443`).
    pub allow_hosts: Vec<String>,
    /// Also accept JWT access tokens from this issuer (TCP only).
    pub oauth: Option<OAuthConfig>,
}

impl HttpOptions {
    /// Options for a TCP address (tests and embedders).
    pub fn tcp(addr: &str, token: Option<Token>) -> Self {
        HttpOptions {
            listen: Listen::Tcp(addr.to_string()),
            token,
            allow_origins: Vec::new(),
            allow_hosts: Vec::new(),
            oauth: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot resolve {addr}: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error(
        "refusing --no-auth on {0}: it is not a loopback address, so anyone who can reach it could run code as you; drop --no-auth (a bearer token is then required) or listen on 127.0.0.1"
    )]
    NoAuthNotLoopback(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error(
        "--listen takes unix:PATH (e.g. unix:/run/user/1000/aisbx-mcp.sock), not '{0}'; use --http ADDR for TCP"
    )]
    ListenSpec(String),
    #[error("refusing to listen on {0}: it exists and is not a socket; choose another path")]
    NotASocket(PathBuf),
    #[error("refusing to listen on {0}: another server is listening on it")]
    SocketInUse(PathBuf),
    #[error("cannot listen on the Unix socket {path}: {source}")]
    UnixBind { path: PathBuf, source: io::Error },
    #[error("the HTTP server failed: {0}")]
    Serve(io::Error),
    #[error(
        "give --oauth-resource URL (the URL clients reach /mcp at, e.g. https://mcp.example.com/mcp): listening on {0}, every interface, the server cannot tell it, and access tokens are issued for it"
    )]
    NoResource(String),
    #[error(transparent)]
    OAuth(#[from] crate::oauth::OAuthError),
    #[error(transparent)]
    Tenants(#[from] tenants::TenantError),
}

/// Resolves `addr` and decides whether it may be served with the given token.
pub async fn resolve(addr: &str, token: Option<&Token>) -> Result<SocketAddr, HttpError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|source| HttpError::Resolve {
            addr: addr.to_string(),
            source,
        })?
        .collect();
    let Some(first) = addrs.first().copied() else {
        return Err(HttpError::NoAddress(addr.to_string()));
    };
    let loopback = addrs.iter().all(|a| a.ip().is_loopback());
    if !loopback && token.is_none() {
        return Err(HttpError::NoAuthNotLoopback(addr.to_string()));
    }
    Ok(first)
}

const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The Host names accepted on a TCP address; `None` when they cannot be checked.
fn allowed_hosts(bound: SocketAddr, opts: &HttpOptions) -> Option<Vec<String>> {
    let mut hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|h| h.to_string()).collect();
    let ip = bound.ip();
    if !ip.is_loopback() && !ip.is_unspecified() {
        hosts.push(match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => v6.to_string(),
        });
    }
    hosts.extend(opts.allow_hosts.iter().cloned());
    if ip.is_unspecified() && opts.allow_hosts.is_empty() {
        // Listening on every interface with no host names given: the Host header
        // cannot be checked; the bearer token (required here) protects the server.
        return None;
    }
    Some(hosts)
}

fn allowed_origins(opts: &HttpOptions) -> Vec<String> {
    let mut origins: Vec<String> = vec![
        "http://localhost:*".into(),
        "http://127.0.0.1:*".into(),
        "http://[::1]:*".into(),
        "https://localhost:*".into(),
        "https://127.0.0.1:*".into(),
        "https://[::1]:*".into(),
    ];
    origins.extend(opts.allow_origins.iter().cloned());
    origins
}

/// The router serving `/mcp` for `shared`, with the checks configured; `hosts` are
/// the accepted Host names (`None`: not checked); `oauth`: JWT access tokens are
/// accepted too, and the protected resource metadata is published.
pub fn router(
    shared: Arc<Shared>,
    hosts: Option<Vec<String>>,
    opts: &HttpOptions,
    oauth: Option<Arc<Verifier>>,
    shutdown: CancellationToken,
) -> Result<Router, HttpError> {
    let mut config = StreamableHttpServerConfig::default()
        .with_allowed_origins(allowed_origins(opts))
        .enforce_origin_validation()
        .with_max_request_body_bytes(MAX_BODY_BYTES)
        .with_cancellation_token(shutdown);
    config = match hosts {
        Some(h) => config.with_allowed_hosts(h),
        None => config.disable_allowed_hosts(),
    };
    let factory_shared = shared.clone();
    let sessions = Arc::new(LocalSessionManager::default());
    let mcp = StreamableHttpService::new(
        move || Ok(AisbxServer::new(factory_shared.clone(), FrontEnd::Http)),
        sessions.clone(),
        config,
    );
    let gate_sessions = sessions.clone();
    let mut router = Router::new()
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            check_message,
        ))
        .layer(middleware::from_fn_with_state(sessions, session_delete))
        .layer(middleware::from_fn(disconnect_guard));
    if opts.token.is_some() || oauth.is_some() {
        let tenants = TenantTokens::open(shared.service.home())?;
        let count = tenants.current().tenants.len();
        if count > 0 {
            eprintln!(
                "aisbx-mcp: also accepting the tokens of {} (`aisbx tenant list`)",
                crate::plural(count, "tenant", "tenants")
            );
        }
        let state = Arc::new(Gate {
            tenants,
            server_token: opts
                .token
                .as_ref()
                .map(|t| token_digest(t.value.as_bytes())),
            metadata_url: oauth.as_ref().map(|v| metadata_url(v.resource())),
            oauth: oauth.clone(),
            sessions: gate_sessions,
            owners: std::sync::Mutex::new(std::collections::HashMap::new()),
        });
        router = router.layer(middleware::from_fn_with_state(state, require_bearer));
    }
    // Added after the bearer check: the metadata is public (clients read it to learn
    // where to get a token).
    if let Some(v) = oauth {
        let doc = Arc::new(v.metadata());
        let d2 = doc.clone();
        router = router
            .route(
                METADATA_PATH,
                axum::routing::get(move || async move { axum::Json((*doc).clone()) }),
            )
            .route(
                &format!("{METADATA_PATH}/{{*resource}}"),
                axum::routing::get(move || async move { axum::Json((*d2).clone()) }),
            );
    }
    Ok(router)
}

/// Where a resource's metadata is published (RFC 9728 section 3.1: the well-known
/// path goes between the host and the resource's path).
pub fn metadata_url(resource: &str) -> String {
    let after_scheme = resource.find("://").map_or(0, |i| i + 3);
    let (origin, path) = match resource[after_scheme..].find('/') {
        Some(i) => resource.split_at(after_scheme + i),
        None => (resource, ""),
    };
    let path = path
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .trim_end_matches('/');
    format!("{origin}{METADATA_PATH}{path}")
}

/// Serves until `shutdown` is cancelled. Prints where, and how to authenticate, to
/// stderr once listening (never the token itself).
pub async fn serve(
    shared: Arc<Shared>,
    opts: HttpOptions,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    match opts.listen.clone() {
        Listen::Tcp(addr) => serve_tcp(shared, &addr, opts, shutdown).await,
        Listen::Unix(path) => serve_unix(shared, &path, opts, shutdown).await,
    }
}

fn uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

async fn serve_tcp(
    shared: Arc<Shared>,
    addr: &str,
    opts: HttpOptions,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    let addr = resolve(addr, opts.token.as_ref()).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    let url = format!("http://{bound}/mcp");
    let oauth = match &opts.oauth {
        Some(c) if c.resource.is_none() && bound.ip().is_unspecified() => {
            return Err(HttpError::NoResource(bound.to_string()));
        }
        Some(c) => Some(Arc::new(Verifier::new(c, &url)?)),
        None => None,
    };
    let app = router(
        shared,
        allowed_hosts(bound, &opts),
        &opts,
        oauth.clone(),
        shutdown.child_token(),
    )?;
    match opts.token.as_ref().map(|t| &t.origin) {
        None => eprintln!(
            "aisbx-mcp: serving MCP (Streamable HTTP) at {url} without authentication (--no-auth): any local user can connect and run code as this user (uid {})",
            uid()
        ),
        Some(origin) => {
            let from = match origin {
                TokenOrigin::Created(p) => {
                    eprintln!(
                        "aisbx-mcp: made a new bearer token in {} (mode 0600, kept for later starts)",
                        p.display()
                    );
                    format!("the content of {}", p.display())
                }
                TokenOrigin::File(p) => format!("the content of {}", p.display()),
                TokenOrigin::Env => "the value of $AISBX_MCP_TOKEN".to_string(),
            };
            eprintln!(
                "aisbx-mcp: serving MCP (Streamable HTTP) at {url}; clients must send `Authorization: Bearer <token>`, <token> being {from}"
            );
        }
    }
    if let Some(v) = &oauth {
        eprintln!(
            "aisbx-mcp: also accepting OAuth access tokens (JWT) issued by {} for the audience {}; resource metadata at {}",
            v.issuer(),
            v.audience(),
            metadata_url(v.resource())
        );
    }
    // Responses are small SSE events written one after another: without TCP_NODELAY,
    // Nagle's algorithm and the client's delayed ACK add ~40 ms to every call.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(HttpError::Serve)
}

/// Whether a Unix-socket peer may be served: the server's own user, or root.
pub fn peer_allowed(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == own_uid || peer_uid == 0
}

/// A Unix-socket connection's peer, on each of its requests (its uid names its
/// tenant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixPeer {
    pub uid: Option<u32>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, PeerCheckedUnix>>
    for UnixPeer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, PeerCheckedUnix>) -> Self {
        UnixPeer {
            uid: s.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

/// A Unix listener that closes every connection whose peer is not allowed.
pub struct PeerCheckedUnix {
    inner: tokio::net::UnixListener,
    own_uid: u32,
}

impl axum::serve::Listener for PeerCheckedUnix {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => match stream.peer_cred() {
                    Ok(c) if peer_allowed(c.uid(), self.own_uid) => return (stream, addr),
                    Ok(c) => {
                        tracing::warn!(
                            uid = c.uid(),
                            pid = ?c.pid(),
                            "closed a connection from another user (only uid {} and root may connect)",
                            self.own_uid
                        );
                    }
                    Err(e) => tracing::warn!(%e, "closed a connection whose peer is unknown"),
                },
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) {
                        // Out of file descriptors and the like: wait, then go on.
                        tracing::error!(%e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Makes the socket at `path`, mode 0600 from the moment it exists. A stale socket
/// (nobody listening) is replaced; anything else at the path is refused.
pub fn bind_unix(path: &Path) -> Result<std::os::unix::net::UnixListener, HttpError> {
    let err = |source| HttpError::UnixBind {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(HttpError::SocketInUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(err)?;
            }
            Err(e) => return Err(err(e)),
        },
        Ok(_) => return Err(HttpError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    // bind() creates the file with 0777 & ~umask: a umask of 0177 makes it 0600 at
    // once (nothing else in the process creates files at this point of start-up).
    // SAFETY: umask only swaps the process's file mode mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(err)?;
    let m = std::fs::symlink_metadata(path).map_err(err)?;
    if !m.file_type().is_socket() || m.mode() & 0o077 != 0 || m.uid() != uid() {
        return Err(err(io::Error::other(format!(
            "the socket was replaced or has mode {:04o}",
            m.mode() & 0o7777
        ))));
    }
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

async fn serve_unix(
    shared: Arc<Shared>,
    path: &Path,
    opts: HttpOptions,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    let std_listener = bind_unix(path)?;
    let ino = std::fs::symlink_metadata(path).map(|m| m.ino()).ok();
    let inner =
        tokio::net::UnixListener::from_std(std_listener).map_err(|source| HttpError::UnixBind {
            path: path.to_path_buf(),
            source,
        })?;
    let own_uid = uid();
    let mut hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|h| h.to_string()).collect();
    hosts.extend(opts.allow_hosts.iter().cloned());
    let app = router(shared, Some(hosts), &opts, None, shutdown.child_token())?;
    let who = if own_uid == 0 {
        "root".to_string()
    } else {
        format!("uid {own_uid} and root")
    };
    eprintln!(
        "aisbx-mcp: serving MCP (Streamable HTTP) on the Unix socket {} (mode 0600; only {who} served), e.g. curl --unix-socket {} http://localhost/mcp",
        path.display(),
        path.display()
    );
    let result = axum::serve(
        PeerCheckedUnix { inner, own_uid },
        app.into_make_service_with_connect_info::<UnixPeer>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
    .map_err(HttpError::Serve);
    // Remove the socket if it is still the one made here.
    if let Ok(m) = std::fs::symlink_metadata(path)
        && Some(m.ino()) == ino
        && m.file_type().is_socket()
    {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn token_digest(t: &[u8]) -> [u8; 32] {
    Sha256::digest(t).into()
}

/// Compares two digests without an early exit (the digests hide the token's length).
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(req: &Request) -> Option<&[u8]> {
    let v = req.headers().get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = v.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let t = rest.trim_ascii();
    (!t.is_empty()).then_some(t)
}

/// What the bearer check accepts.
struct Gate {
    /// SHA-256 of the server's own token.
    server_token: Option<[u8; 32]>,
    oauth: Option<Arc<Verifier>>,
    metadata_url: Option<String>,
    sessions: Arc<LocalSessionManager>,
    /// Who opened each session: only the same principal may use it.
    owners: std::sync::Mutex<std::collections::HashMap<String, Principal>>,
    /// The state directory's tenants file, re-read when it changes.
    tenants: TenantTokens,
}

/// The tenants' tokens (`tenants.toml`), as last read.
struct TenantTokens {
    home: PathBuf,
    cached: std::sync::Mutex<(Option<tenants::Stamp>, Arc<tenants::Tenants>)>,
}

impl TenantTokens {
    /// Reads the file now (start-up: a file that cannot be used stops the server).
    fn open(home: &Path) -> Result<TenantTokens, tenants::TenantError> {
        let stamp = tenants::stamp(home);
        let t = tenants::load(home)?;
        Ok(TenantTokens {
            home: home.to_path_buf(),
            cached: std::sync::Mutex::new((stamp, Arc::new(t))),
        })
    }

    /// The current tenants: the file is looked at on every use, so a removed tenant
    /// or revoked token stops working at once. A file that became unusable accepts
    /// no tenant token until it is fixed (logged).
    fn current(&self) -> Arc<tenants::Tenants> {
        let stamp = tenants::stamp(&self.home);
        let mut cached = match self.cached.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if cached.0 != stamp {
            let t = match tenants::load(&self.home) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(%e, "accepting no tenant token until the tenants file is fixed");
                    tenants::Tenants::default()
                }
            };
            *cached = (stamp, Arc::new(t));
        }
        cached.1.clone()
    }
}

/// Whom a session belongs to: a tenant, or (`None`) the server's own user.
type Principal = Option<String>;

impl Gate {
    fn owner(&self, session: &str) -> Option<Principal> {
        let owners = match self.owners.lock() {
            Ok(o) => o,
            Err(poisoned) => poisoned.into_inner(),
        };
        owners.get(session).cloned()
    }

    /// Records who opened `session`, forgetting the sessions that ended.
    async fn opened(&self, session: String, who: Principal) {
        let live = self.sessions.sessions.read().await;
        let mut owners = match self.owners.lock() {
            Ok(o) => o,
            Err(poisoned) => poisoned.into_inner(),
        };
        owners.retain(|id, _| live.contains_key(id.as_str()));
        owners.insert(session, who);
    }
}

/// Who an HTTP request authenticated as; set on the request by the bearer check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticated {
    /// The server's own token (the user running the server).
    ServerToken,
    /// A tenant: by one of its tokens of `tenants.toml` (`token_id`), or by a JWT
    /// access token whose claim names it (`token_id` = `None`).
    Tenant {
        name: String,
        token_id: Option<String>,
    },
}

impl Authenticated {
    fn principal(&self) -> Principal {
        match self {
            Authenticated::ServerToken => None,
            Authenticated::Tenant { name, .. } => Some(name.clone()),
        }
    }
}

async fn require_bearer(State(gate): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    let presented = bearer(&req);
    let own = presented.is_some_and(|t| {
        gate.server_token
            .as_ref()
            .is_some_and(|d| constant_time_eq(&token_digest(t), d))
    });
    let mut refusal = None;
    let tenant_token = presented
        .filter(|t| !own && t.starts_with(tenants::TOKEN_PREFIX.as_bytes()))
        .and_then(|t| gate.tenants.current().authenticate(t));
    let who = if own {
        Some(Authenticated::ServerToken)
    } else if let Some(owner) = tenant_token {
        Some(Authenticated::Tenant {
            name: owner.tenant,
            token_id: Some(owner.token_id),
        })
    } else if let (Some(t), Some(v)) = (presented, &gate.oauth) {
        match std::str::from_utf8(t).map_err(|_| crate::oauth::Refusal::Malformed) {
            Ok(t) => match v.verify(t) {
                Ok(tenant) => Some(Authenticated::Tenant {
                    name: tenant,
                    token_id: None,
                }),
                Err(r) => {
                    tracing::info!(reason = %r, "refused an access token");
                    refusal = Some(r);
                    None
                }
            },
            Err(r) => {
                refusal = Some(r);
                None
            }
        }
    } else {
        None
    };
    if let Some(who) = who {
        let session = req
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(id) = &session
            && gate.owner(id).is_some_and(|owner| owner != who.principal())
        {
            // Another credential's session answers as one that does not exist.
            tracing::info!("refused a session opened with another credential");
            return (StatusCode::NOT_FOUND, "Not Found: no such session\n").into_response();
        }
        let principal = who.principal();
        req.extensions_mut().insert(who);
        let resp = next.run(req).await;
        if session.is_none()
            && let Some(id) = resp
                .headers()
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
        {
            gate.opened(id.to_string(), principal).await;
        }
        return resp;
    }
    let (message, challenge) = match (&gate.oauth, &gate.metadata_url) {
        (Some(v), Some(url)) => {
            let message = format!(
                "send an access token issued by {} for {} (or the aisbx-mcp bearer token) as `Authorization: Bearer <token>`{}",
                v.issuer(),
                v.audience(),
                refusal.map_or(String::new(), |r| format!("; {r}"))
            );
            // RFC 6750 section 3: no error code when no token was sent.
            let challenge = match refusal {
                Some(r) => format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\", resource_metadata=\"{url}\"",
                    r.description()
                ),
                None => format!("Bearer resource_metadata=\"{url}\""),
            };
            (message, HeaderValue::from_str(&challenge).ok())
        }
        _ => (
            "send the aisbx-mcp bearer token as `Authorization: Bearer <token>`; the server's user finds it in mcp-token in its aisbx state directory".to_string(),
            None,
        ),
    };
    let body = serde_json::json!({
        "error": if refusal.is_some() { "invalid_token" } else { "unauthorized" },
        "message": message,
    });
    let mut resp = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        challenge.unwrap_or_else(|| HeaderValue::from_static("Bearer realm=\"aisbx-mcp\"")),
    );
    resp
}

/// A POSTed JSON body is checked before the SDK sees it ([`crate::protocol::check`]):
/// one that is not JSON, not a JSON-RPC message or has impossible `params` is answered
/// `400 Bad Request` with the JSON-RPC error; one over the size limit `413`, likewise.
async fn check_message(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case("application/json"))
        });
    if req.method() != Method::POST || !json {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                axum::Json(crate::protocol::too_large()),
            )
                .into_response();
        }
    };
    if let Err(reply) = crate::protocol::check(&bytes) {
        return (StatusCode::BAD_REQUEST, axum::Json(reply)).into_response();
    }
    if let Some(resp) = rate_limited(&shared, &parts, &bytes).await {
        return resp;
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// A `run` or `build` call from a tenant past its runs-per-minute quota: `429 Too
/// Many Requests` with `Retry-After`, and the refusal as a JSON-RPC error naming
/// the quota, its use and its limit. Other quotas are refused by the tool (an
/// `isError` result); the service's reservation remains the authority.
async fn rate_limited(
    shared: &Arc<Shared>,
    parts: &axum::http::request::Parts,
    bytes: &[u8],
) -> Option<Response> {
    let msg: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if msg.get("method").and_then(|m| m.as_str()) != Some("tools/call") {
        return None;
    }
    let tool = msg.pointer("/params/name").and_then(|n| n.as_str())?;
    if !matches!(tool, "run" | "build") {
        return None;
    }
    let (tenant, client) = crate::server::caller_of(Some(&parts.extensions), shared, None);
    let meta = aisbx_service::RequestMeta {
        front_end: FrontEnd::Http.name().to_string(),
        client,
        tool: tool.to_string(),
        tenant,
    };
    let args = msg
        .pointer("/params/arguments")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    let service = shared.service.clone();
    let (refusal, wait) = tokio::task::spawn_blocking(move || service.rate_limited(&meta, &args))
        .await
        .ok()??;
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": msg.get("id").cloned().unwrap_or(serde_json::Value::Null),
        "error": {
            "code": -32000,
            "message": refusal.to_string(),
            "data": {"quota": "runs_per_minute", "retry_after_secs": wait},
        },
    });
    let mut resp = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&wait.to_string()).unwrap_or(HeaderValue::from_static("60")),
    );
    Some(resp)
}

/// `DELETE /mcp`: 404 for a session that does not exist (never did, or already
/// ended), and `204 No Content` once one is ended (clients expect 200 or 204).
async fn session_delete(
    State(sessions): State<Arc<LocalSessionManager>>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != Method::DELETE {
        return next.run(req).await;
    }
    if let Some(id) = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        let known = sessions.sessions.read().await.contains_key(id);
        if !known {
            return (StatusCode::NOT_FOUND, "Not Found: no such session\n").into_response();
        }
    }
    let mut resp = next.run(req).await;
    if resp.status() == StatusCode::ACCEPTED {
        *resp.status_mut() = StatusCode::NO_CONTENT;
        *resp.body_mut() = Body::empty();
    }
    resp
}

/// Gives each request a [`DisconnectToken`] that is cancelled if its response body is
/// dropped before it ended (the client went away mid-call), so its run is killed.
async fn disconnect_guard(mut req: Request, next: Next) -> Response {
    let token = CancellationToken::new();
    req.extensions_mut().insert(DisconnectToken(token.clone()));
    let resp = next.run(req).await;
    let (parts, body) = resp.into_parts();
    Response::from_parts(
        parts,
        Body::new(GuardBody {
            inner: body,
            token,
            done: false,
        }),
    )
}

struct GuardBody {
    inner: Body,
    token: CancellationToken,
    done: bool,
}

impl HttpBody for GuardBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            this.done = true;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GuardBody {
    fn drop(&mut self) {
        if !self.done && !self.inner.is_end_stream() {
            self.token.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        let a = token_digest(b"secret");
        assert!(constant_time_eq(&a, &token_digest(b"secret")));
        assert!(!constant_time_eq(&a, &token_digest(b"secreT")));
        assert!(!constant_time_eq(&a, &token_digest(b"")));
    }

    #[test]
    fn bearer_header_parsing() {
        let mk = |v: &str| {
            let mut r = Request::new(Body::empty());
            r.headers_mut().insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(v).expect("header"),
            );
            r
        };
        assert_eq!(bearer(&mk("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&mk("bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(&mk("Basic abc")), None);
        assert_eq!(bearer(&mk("Bearer ")), None);
        assert_eq!(bearer(&mk("Bear")), None);
        assert_eq!(bearer(&Request::new(Body::empty())), None);
    }

    fn token() -> Token {
        Token {
            value: "t".into(),
            origin: TokenOrigin::Env,
        }
    }

    #[tokio::test]
    async fn no_auth_only_on_loopback() {
        assert!(matches!(
            resolve("0.0.0.0:0", None).await,
            Err(HttpError::NoAuthNotLoopback(_))
        ));
        assert!(resolve("0.0.0.0:0", Some(&token())).await.is_ok());
        assert!(resolve("127.0.0.1:0", None).await.is_ok());
        assert!(resolve("[::1]:0", None).await.is_ok());
    }

    #[test]
    fn metadata_urls_put_the_well_known_path_before_the_resource_path() {
        assert_eq!(
            metadata_url("http://127.0.0.1:8765/mcp"),
            "http://127.0.0.1:8765/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("https://mcp.example.com/tools/mcp/?x=1"),
            "https://mcp.example.com/.well-known/oauth-protected-resource/tools/mcp"
        );
        assert_eq!(
            metadata_url("https://mcp.example.com"),
            "https://mcp.example.com/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn listen_specs() {
        assert_eq!(
            Listen::parse("unix:/tmp/a.sock").expect("unix"),
            Listen::Unix(PathBuf::from("/tmp/a.sock"))
        );
        assert!(Listen::parse("unix:").is_err());
        assert!(Listen::parse("127.0.0.1:80").is_err());
        assert!(Listen::parse("/tmp/a.sock").is_err());
    }

    #[test]
    fn only_the_own_user_and_root_are_served() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(65534, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(65534, 0));
    }

    #[test]
    fn unix_socket_is_private_and_stale_ones_are_replaced() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("s.sock");
        let l = bind_unix(&p).expect("bind");
        assert_eq!(std::fs::metadata(&p).expect("meta").mode() & 0o7777, 0o600);
        // In use: refused.
        assert!(matches!(bind_unix(&p), Err(HttpError::SocketInUse(_))));
        drop(l);
        // Stale (nobody listens): replaced.
        let l = bind_unix(&p).expect("rebind a stale socket");
        drop(l);
        // Not a socket: refused, and left alone.
        let f = d.path().join("file");
        std::fs::write(&f, "keep").expect("write");
        assert!(matches!(bind_unix(&f), Err(HttpError::NotASocket(_))));
        assert_eq!(std::fs::read_to_string(&f).expect("read"), "keep");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&f, &link).expect("symlink");
        assert!(matches!(bind_unix(&link), Err(HttpError::NotASocket(_))));
    }

    #[test]
    fn host_lists() {
        let o = HttpOptions::tcp("127.0.0.1:0", None);
        let lo: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert_eq!(
            allowed_hosts(lo, &o),
            Some(vec!["localhost".into(), "127.0.0.1".into(), "::1".into()])
        );
        let any: SocketAddr = "0.0.0.0:1".parse().expect("addr");
        assert_eq!(allowed_hosts(any, &o), None);
        let o2 = HttpOptions {
            allow_hosts: vec!["mcp.example.com".into()],
            ..HttpOptions::tcp("0.0.0.0:0", None)
        };
        assert!(
            allowed_hosts(any, &o2).is_some_and(|h| h.contains(&"mcp.example.com".to_string()))
        );
        let ip: SocketAddr = "10.1.2.3:1".parse().expect("addr");
        assert!(allowed_hosts(ip, &o).is_some_and(|h| h.contains(&"10.1.2.3".to_string())));
    }
}
