//! Allowlisted network egress for aisbx runs.
//!
//! A run's network namespace keeps only loopback; a forwarder inside it relays
//! `127.0.0.1:PORT` and `127.0.0.1:53` to the two Unix sockets a [`Proxy`] serves in a
//! per-run directory. The proxy decides every destination with a [`NetPolicy`]
//! (allowlist, denylist, caps), resolves names itself and dials only the public
//! address it checked, checks the TLS SNI (or HTTP Host) against the requested host,
//! and records every connection. This crate knows nothing about the jail or profiles.

mod addr;
mod dns;
mod proxy;
mod rule;
mod sni;

use std::path::PathBuf;

pub use addr::refused_class;
pub use proxy::{ConnRecord, NetReport, Proxy, ProxyOptions};
pub use rule::{NetPolicy, Rule, Verdict};

/// What went wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error(
        "network rule {rule:?} is not valid: {why}; write a host (example.org), a subdomain \
         wildcard (*.example.org) or an IP address (10.0.0.5, [2001:db8::1]), optionally \
         followed by :port"
    )]
    InvalidRule { rule: String, why: &'static str },
    #[error("the network proxy needs a secret and was given an empty one; pass a random secret")]
    EmptySecret,
    #[error("could not {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
