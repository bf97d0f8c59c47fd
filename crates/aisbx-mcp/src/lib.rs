//! `aisbx-mcp`: the aisbx MCP server, on the official Rust SDK (`rmcp`).
//!
//! The tools (`run`, `build`, `profile_list`, the sandbox, file and snapshot tools)
//! call the same service functions as the `aisbx` CLI; this crate only checks
//! messages, maps arguments, streams output and formats results.
//! stdio by default; `--http ADDR` serves Streamable HTTP at `/mcp`.

pub mod admission;
pub mod auth;
pub mod http;
pub mod oauth;
pub mod protocol;
pub mod redact;
pub mod server;
pub mod tools;

/// The service this front end calls (the same one as the CLI).
pub(crate) mod backend {
    pub use aisbx_service::{Service, ServiceConfig, maybe_run_helper, policy};
}

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use crate::backend::maybe_run_helper;
use crate::backend::{Service, ServiceConfig, policy};
use crate::http::{HttpOptions, Listen};
use crate::server::{AisbxServer, FrontEnd, Shared};

/// The environment variable holding the HTTP bearer token (when no `--token-file`).
pub const TOKEN_ENV: &str = "AISBX_MCP_TOKEN";

/// Options of `aisbx-mcp` and `aisbx mcp`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct McpArgs {
    /// Serve Streamable HTTP at http://ADDR/mcp instead of stdio (e.g. 127.0.0.1:8765).
    /// Every request needs the bearer token of $AISBX_HOME/mcp-token (made on first
    /// start, mode 0600), --token-file or $AISBX_MCP_TOKEN.
    #[arg(long, value_name = "ADDR", group = "listener")]
    pub http: Option<String>,
    /// Serve Streamable HTTP on a Unix socket instead: `unix:PATH`. The socket is made
    /// with mode 0600 and only your own user (and root) is served; no token is needed.
    #[arg(long, value_name = "unix:PATH", group = "listener")]
    pub listen: Option<String>,
    /// A file whose content (trimmed) is the bearer token every HTTP request must carry
    /// (`Authorization: Bearer TOKEN`); it must be yours with mode 0600. Default:
    /// $AISBX_MCP_TOKEN if set, else $AISBX_HOME/mcp-token.
    #[arg(
        long,
        value_name = "FILE",
        requires = "http",
        conflicts_with = "no_auth"
    )]
    pub token_file: Option<PathBuf>,
    /// Serve HTTP without a token (loopback addresses only): any local user can then
    /// run code as you.
    #[arg(long, requires = "http")]
    pub no_auth: bool,
    /// Also accept OAuth 2.1 access tokens (JWTs) issued by this authorization server
    /// (its issuer identifier, the tokens' `iss`), checked with --oauth-jwks. The
    /// server's own token stays valid.
    #[arg(
        long,
        value_name = "URL",
        requires_all = ["http", "oauth_jwks"],
        conflicts_with = "no_auth"
    )]
    pub oauth_issuer: Option<String>,
    /// The issuer's signing keys: a file holding its JSON Web Key Set (what its
    /// jwks_uri serves). Re-read when a token names a key it lacks.
    #[arg(long, value_name = "FILE", requires = "oauth_issuer")]
    pub oauth_jwks: Option<PathBuf>,
    /// The audience (`aud`) access tokens must be issued for (default: the resource URL).
    #[arg(long, value_name = "AUD", requires = "oauth_issuer")]
    pub oauth_audience: Option<String>,
    /// This server's resource identifier, the URL clients reach its MCP endpoint at
    /// (default: http://ADDR/mcp); published in the protected resource metadata.
    #[arg(long, value_name = "URL", requires = "oauth_issuer")]
    pub oauth_resource: Option<String>,
    /// The access token claim that names the tenant.
    #[arg(
        long,
        value_name = "CLAIM",
        default_value = "sub",
        requires = "oauth_issuer"
    )]
    pub oauth_tenant_claim: String,
    /// Also accept browser requests from this Origin (repeatable), e.g.
    /// https://app.example.com:443 or http://devbox:*. Loopback origins are always allowed.
    #[arg(long = "allow-origin", value_name = "ORIGIN", requires = "listener")]
    pub allow_origins: Vec<String>,
    /// Also accept this Host header (repeatable), e.g. mcp.example.com. Loopback
    /// names are always allowed.
    #[arg(long = "allow-host", value_name = "HOST", requires = "listener")]
    pub allow_hosts: Vec<String>,
    /// Most runs (`run` calls, `build` setups, `file_write`) carried out at once
    /// (default: twice the number of cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_runs: Option<u32>,
    /// Most calls waiting for a free run slot (default: 4 × --max-runs); past it a
    /// call is answered "busy" at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub max_queued: Option<u32>,
    /// State directory (default: $AISBX_HOME, else $XDG_DATA_HOME/aisbx or ~/.local/share/aisbx).
    #[arg(long, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Policy directory deciding every request (default: $AISBX_POLICY, else
    /// /etc/aisbx/policy and $AISBX_HOME/policy, else the built-in policy; see
    /// docs/POLICY.md).
    #[arg(long, value_name = "DIR")]
    pub policy: Option<PathBuf>,
    /// The tenant of stdio clients and of the server's own token (default: the
    /// tenant `tenants.toml` maps your uid to, else `default`). Root may name any
    /// tenant of the file; another user only the one its uid is mapped to.
    #[arg(long, value_name = "NAME")]
    pub tenant: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error(transparent)]
    Token(#[from] auth::TokenError),
    #[error("${TOKEN_ENV} is set but empty")]
    EmptyTokenEnv,
    #[error("{0}")]
    Service(#[from] aisbx_service::ServiceError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the tool definitions are invalid: {0}")]
    Tools(String),
    #[error("the stdio server failed: {0}")]
    Stdio(String),
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error(transparent)]
    Tenants(#[from] aisbx_service::tenants::TenantError),
    #[error("{0}")]
    Tenant(String),
}

/// The bearer token for `--http`: `--token-file`, else `$AISBX_MCP_TOKEN`, else the
/// state directory's `mcp-token` (made on first start); `None` with `--no-auth`.
pub fn load_token(args: &McpArgs, home: &Path) -> Result<Option<auth::Token>, McpError> {
    if args.no_auth {
        return Ok(None);
    }
    if let Some(path) = &args.token_file {
        return Ok(Some(auth::Token {
            value: auth::read_named(path)?,
            origin: auth::TokenOrigin::File(path.clone()),
        }));
    }
    match std::env::var(TOKEN_ENV) {
        Ok(t) if t.trim().is_empty() => Err(McpError::EmptyTokenEnv),
        Ok(t) => Ok(Some(auth::Token {
            value: t.trim().to_string(),
            origin: auth::TokenOrigin::Env,
        })),
        Err(_) => Ok(Some(auth::load_or_create(home)?)),
    }
}

/// `1 tenant`, `2 tenants`.
pub(crate) fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Logs go to stderr only: stdout carries the protocol in stdio mode.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AISBX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rmcp::service=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Opens the service and what every server instance shares.
pub fn open_shared(
    config: ServiceConfig,
    admission: admission::Admission,
) -> Result<Arc<Shared>, McpError> {
    open_shared_as(config, admission, None)
}

/// The tenant of the server's own user: `--tenant`, when this user may name it,
/// else the one `tenants.toml` maps the real uid to.
fn own_tenant(
    t: &aisbx_service::tenants::Tenants,
    uid: u32,
    asked: Option<&str>,
) -> Result<String, McpError> {
    let mapped = t.tenant_of_uid(uid);
    let Some(asked) = asked else {
        return Ok(mapped);
    };
    if !t.exists(asked) {
        return Err(McpError::Tenant(format!(
            "--tenant {asked}: there is no such tenant; `aisbx tenant list` shows them"
        )));
    }
    if uid != 0 && asked != mapped {
        return Err(McpError::Tenant(format!(
            "--tenant {asked}: uid {uid} is the tenant '{mapped}' and may not act as another; only root may choose"
        )));
    }
    Ok(asked.to_string())
}

/// [`open_shared`] with the `--tenant` asked for.
pub fn open_shared_as(
    config: ServiceConfig,
    admission: admission::Admission,
    tenant: Option<&str>,
) -> Result<Arc<Shared>, McpError> {
    let service = Service::open(config)?;
    let file = aisbx_service::tenants::load(service.home())?;
    // SAFETY: getter.
    let uid = unsafe { libc::getuid() };
    let tenant = own_tenant(&file, uid, tenant)?;
    if let Err(e) = &service.policy().bundle {
        // Runs are refused with this reason; say it once where the operator looks.
        tracing::error!("{e}");
    }
    let tools = tools::shared_definitions().map_err(McpError::Tools)?;
    Ok(Arc::new(Shared {
        service,
        tools,
        admission,
        tenant,
        root_tenant: file.tenant_of_uid(0),
    }))
}

/// Runs the server until stdin closes (stdio) or a signal arrives (HTTP).
pub fn run(args: McpArgs) -> Result<(), McpError> {
    init_tracing();
    let max_runs = args
        .max_runs
        .map_or_else(admission::default_max_runs, |n| n as usize);
    let max_waiting = args
        .max_queued
        .map_or_else(|| admission::default_max_waiting(max_runs), |n| n as usize);
    let shared = open_shared_as(
        ServiceConfig {
            home: args.home.clone(),
            policy: args.policy.clone(),
        },
        admission::Admission::new(max_runs, max_waiting),
        args.tenant.as_deref(),
    )?;
    let listen = match (&args.http, &args.listen) {
        (Some(addr), _) => Some(Listen::Tcp(addr.clone())),
        (None, Some(spec)) => Some(Listen::parse(spec)?),
        (None, None) => None,
    };
    let token = match &listen {
        Some(Listen::Tcp(_)) => load_token(&args, shared.service.home())?,
        _ => None,
    };
    let oauth = args.oauth_issuer.as_ref().map(|issuer| oauth::OAuthConfig {
        issuer: issuer.clone(),
        audience: args.oauth_audience.clone(),
        jwks: args.oauth_jwks.clone().unwrap_or_default(),
        tenant_claim: args.oauth_tenant_claim.clone(),
        resource: args.oauth_resource.clone(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("aisbx-mcp")
        .build()
        .map_err(McpError::Runtime)?;
    let result = runtime.block_on(async move {
        tokio::spawn(watch_policy(shared.service.clone()));
        match listen {
            None => serve_stdio(shared).await,
            Some(listen) => {
                let opts = HttpOptions {
                    listen,
                    token,
                    allow_origins: args.allow_origins,
                    allow_hosts: args.allow_hosts,
                    oauth,
                };
                let shutdown = CancellationToken::new();
                tokio::spawn(cancel_on_signal(shutdown.clone()));
                http::serve(shared, opts, shutdown)
                    .await
                    .map_err(McpError::from)
            }
        }
    });
    // Handler tasks still running are dropped here, which cancels their runs; give
    // the blocking run threads a moment to kill their process trees and return.
    runtime.shutdown_timeout(Duration::from_secs(10));
    result
}

async fn serve_stdio(shared: Arc<Shared>) -> Result<(), McpError> {
    let server = AisbxServer::new(shared, FrontEnd::Stdio);
    let (stdin, stdout) = rmcp::transport::stdio_pipes();
    protocol::serve_framed(server, stdin, stdout)
        .await
        .map_err(McpError::Stdio)
}

/// How often the server looks at its policy's files for changes.
const POLICY_POLL: Duration = Duration::from_secs(2);

/// Reloads the policy when its files change (looked at every [`POLICY_POLL`]) or
/// on SIGHUP. A bundle that fails to parse or whose tests fail is not loaded: the
/// active policy stays, and the error is logged and recorded for
/// `aisbx policy status`.
async fn watch_policy(service: Service) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| tracing::warn!(%e, "cannot watch SIGHUP; the policy is still reloaded when its files change"))
        .ok();
    let mut tick = tokio::time::interval(POLICY_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            _ = hup_recv => {}
        }
        let svc = service.clone();
        let Ok(outcome) = tokio::task::spawn_blocking(move || svc.reload_policy()).await else {
            continue;
        };
        match outcome {
            policy::Reload::Unchanged => {}
            policy::Reload::Loaded { bundle } => {
                tracing::warn!("policy reloaded: bundle {bundle} decides requests from now on");
            }
            policy::Reload::Rejected { error, active, .. } => tracing::error!(
                "the changed policy was not loaded ({error}); the active policy ({}) stays",
                active.as_deref().unwrap_or("none: requests are refused")
            ),
        }
    }
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
}

/// `aisbx-mcp` / `aisbx mcp`: runs the server and returns the process exit status
/// (0, or 125 when aisbx-mcp itself failed or refused, with the reason on stderr).
pub fn main_with_args(args: McpArgs) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("aisbx-mcp: {e}");
            125
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_tenant_is_its_uids_and_only_root_may_choose() {
        let d = tempfile::tempdir().expect("tempdir");
        aisbx_service::tenants::add(d.path(), "acme").expect("add");
        aisbx_service::tenants::add(d.path(), "globex").expect("add");
        aisbx_service::tenants::map_uid(d.path(), "1000", Some("acme")).expect("map");
        let t = aisbx_service::tenants::load(d.path()).expect("load");
        assert_eq!(own_tenant(&t, 1000, None).expect("mapped"), "acme");
        assert_eq!(own_tenant(&t, 1001, None).expect("unmapped"), "default");
        assert_eq!(own_tenant(&t, 1000, Some("acme")).expect("its own"), "acme");
        assert!(own_tenant(&t, 1000, Some("globex")).is_err());
        assert!(own_tenant(&t, 1001, Some("acme")).is_err());
        assert_eq!(own_tenant(&t, 0, Some("globex")).expect("root"), "globex");
        assert!(own_tenant(&t, 0, Some("nobody")).is_err());
    }
}
