//! Streamable HTTP at `/mcp`: loopback by default, Host/Origin checks against DNS
//! rebinding, and a bearer token (compared in constant time) required for any
//! non-loopback address.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

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

use crate::server::{AisbxServer, DisconnectToken, FrontEnd, Shared};

/// Largest POST body accepted (the tools cap their own arguments below this).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

const SESSION_HEADER: &str = "mcp-session-id";

#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// `HOST:PORT`, e.g. `127.0.0.1:8765`, `[::1]:0`, `localhost:8765`.
    pub addr: String,
    /// The bearer token clients must send; `None` = no authentication (loopback only).
    pub token: Option<String>,
    /// Extra allowed `Origin` values (`https://app.example.com:443`, `http://host:*`).
    pub allow_origins: Vec<String>,
    /// Extra allowed `Host` names (`mcp.example.com`, `mcp.example.com:8443`).
    pub allow_hosts: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot resolve {addr}: {source}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error(
        "refusing to serve on {0}: it is not a loopback address and no bearer token is configured; \
         pass --token-file FILE or set AISBX_MCP_TOKEN (or listen on 127.0.0.1)"
    )]
    NeedsToken(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Resolves `addr` and decides whether it may be served with the given options.
pub async fn resolve(opts: &HttpOptions) -> Result<SocketAddr, HttpError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(opts.addr.as_str())
        .await
        .map_err(|source| HttpError::Resolve {
            addr: opts.addr.clone(),
            source,
        })?
        .collect();
    let Some(first) = addrs.first().copied() else {
        return Err(HttpError::NoAddress(opts.addr.clone()));
    };
    let loopback = addrs.iter().all(|a| a.ip().is_loopback());
    if !loopback && opts.token.is_none() {
        return Err(HttpError::NeedsToken(opts.addr.clone()));
    }
    Ok(first)
}

fn allowed_hosts(bound: SocketAddr, opts: &HttpOptions) -> Option<Vec<String>> {
    let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
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

/// The router serving `/mcp` for `shared`, with the checks configured.
pub fn router(
    shared: Arc<Shared>,
    bound: SocketAddr,
    opts: &HttpOptions,
    shutdown: CancellationToken,
) -> Router {
    let mut config = StreamableHttpServerConfig::default()
        .with_allowed_origins(allowed_origins(opts))
        .enforce_origin_validation()
        .with_max_request_body_bytes(MAX_BODY_BYTES)
        .with_cancellation_token(shutdown);
    config = match allowed_hosts(bound, opts) {
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
    let mut router = Router::new()
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn_with_state(sessions, session_delete))
        .layer(middleware::from_fn(disconnect_guard));
    if let Some(token) = &opts.token {
        let expected = Arc::new(token_digest(token.as_bytes()));
        router = router.layer(middleware::from_fn_with_state(expected, require_bearer));
    }
    router
}

/// Serves until `shutdown` is cancelled. Prints the address to stderr once listening.
pub async fn serve(
    shared: Arc<Shared>,
    opts: HttpOptions,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    let addr = resolve(&opts).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    let app = router(shared, bound, &opts, shutdown.child_token());
    eprintln!(
        "aisbx-mcp: serving MCP (Streamable HTTP) at http://{bound}/mcp{}",
        if opts.token.is_some() {
            " (bearer token required)"
        } else {
            ""
        }
    );
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

async fn require_bearer(
    State(expected): State<Arc<[u8; 32]>>,
    req: Request,
    next: Next,
) -> Response {
    let ok = bearer(&req).is_some_and(|t| constant_time_eq(&token_digest(t), &expected));
    if ok {
        return next.run(req).await;
    }
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        "Unauthorized: send the aisbx-mcp bearer token as `Authorization: Bearer <token>`\n",
    )
        .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"aisbx-mcp\""),
    );
    resp
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

    #[tokio::test]
    async fn non_loopback_needs_a_token() {
        let mut o = HttpOptions {
            addr: "0.0.0.0:0".into(),
            ..Default::default()
        };
        assert!(matches!(resolve(&o).await, Err(HttpError::NeedsToken(_))));
        o.token = Some("t".into());
        assert!(resolve(&o).await.is_ok());
        let l = HttpOptions {
            addr: "127.0.0.1:0".into(),
            ..Default::default()
        };
        assert!(resolve(&l).await.is_ok());
        let l6 = HttpOptions {
            addr: "[::1]:0".into(),
            ..Default::default()
        };
        assert!(resolve(&l6).await.is_ok());
    }

    #[test]
    fn host_lists() {
        let o = HttpOptions::default();
        let lo: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert_eq!(
            allowed_hosts(lo, &o),
            Some(vec!["localhost".into(), "127.0.0.1".into(), "::1".into()])
        );
        let any: SocketAddr = "0.0.0.0:1".parse().expect("addr");
        assert_eq!(allowed_hosts(any, &o), None);
        let o2 = HttpOptions {
            allow_hosts: vec!["mcp.example.com".into()],
            ..Default::default()
        };
        assert!(
            allowed_hosts(any, &o2).is_some_and(|h| h.contains(&"mcp.example.com".to_string()))
        );
        let ip: SocketAddr = "10.1.2.3:1".parse().expect("addr");
        assert!(allowed_hosts(ip, &o).is_some_and(|h| h.contains(&"10.1.2.3".to_string())));
    }
}
