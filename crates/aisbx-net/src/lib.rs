//! Allowlisted network egress for aisbx runs.
//!
//! A run's network namespace keeps only loopback; a forwarder inside it relays
//! `127.0.0.1:PORT` and `127.0.0.1:53` to the two Unix sockets a [`Proxy`] serves in a
//! per-run directory. This crate is that proxy; it knows nothing about the jail or
//! profiles.
//!
//! What the proxy enforces, per run:
//! - Every request carries `Proxy-Authorization: Basic base64("aisbx:" + secret)`, else
//!   407 (checked on every request of a keep-alive connection).
//! - `CONNECT host:port` and absolute-URI `http://` requests pass [`NetPolicy::decide`]
//!   (see [`Rule`] for the syntax and matching), else 403 with the reason.
//! - Names are resolved by the proxy (once), and only public unicast addresses are
//!   dialled: loopback, private, link-local and metadata, CGNAT, unspecified, multicast,
//!   broadcast and reserved ranges, and IPv4-mapped/compatible, NAT64
//!   and 6to4 forms of them are refused ([`refused_class`]), as are addresses named by
//!   a deny IP rule. An IP literal is dialled as is, which only an allow rule naming
//!   exactly that address permits. The address checked is the address dialled: no
//!   second lookup, so DNS rebinding cannot swap it.
//! - After a CONNECT, the client's first bytes are read before any reaches the
//!   destination: a TLS ClientHello must carry an SNI equal to the CONNECT host
//!   (case-insensitive, trailing dot ignored); TLS without SNI passes only to an IP
//!   literal (a client cannot put an address in SNI); non-TLS bytes pass only to ports
//!   other than 443. Otherwise the tunnel is closed (the 200 is already sent, so the
//!   421 of the design is a close) and recorded as refused with an "SNI ..." reason.
//!   For plain HTTP the Host header must equal the URI's host and port, else 421.
//!   Bytes the destination sends first (SSH, SMTP banners) flow while the proxy waits.
//! - Caps: [`NetPolicy::max_connections`] tunnels and HTTP requests at once (past it,
//!   503, reason "connection cap"); [`NetPolicy::max_egress_bytes`] bytes per run, both
//!   directions (past it the connection is closed, reason "byte cap").
//! - `dns.sock`: A for allowlisted names answers the public IPv4 addresses the proxy's
//!   resolver returns; AAAA for them is an empty NOERROR (the sandbox is IPv4 only);
//!   other names get NXDOMAIN; other types (TXT, ANY, ...) REFUSED; malformed queries
//!   FORMERR. Queries are parsed by hand with strict bounds.
//! - Every connection, allowed or refused, becomes a [`ConnRecord`] in the
//!   [`NetReport`] that [`Proxy::finish`] returns.
//!
//! What it does not stop: data sent to an allowed destination (or to an allowed
//! wildcard domain's name servers, through the names the proxy looks up), timing, and
//! plain HTTP sent through a CONNECT tunnel to a port other than 443 with another Host
//! header (only a tunnel's first bytes are inspected; absolute-URI requests are
//! checked one by one).
//!
//! [`Proxy::finish`] (and dropping a [`Proxy`]) blocks until the proxy's thread has
//! stopped, at most about a second; from async code call it in `spawn_blocking`.

mod addr;
mod dns;
mod proxy;
mod rule;
mod sni;

use std::path::PathBuf;

pub use addr::refused_class;

/// The HTTP proxy socket's name in the directory given to [`Proxy::start`].
pub const PROXY_SOCK: &str = "proxy.sock";
/// The DNS socket's name in the directory given to [`Proxy::start`].
pub const DNS_SOCK: &str = "dns.sock";
/// The user name in the proxy credentials: `Basic base64("aisbx:" + secret)`, i.e.
/// `http://aisbx:SECRET@127.0.0.1:PORT` in a proxy URL.
pub const PROXY_USER: &str = "aisbx";
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
