//! Allowlist rules and the decision they make for one destination.
//!
//! A rule is one of
//! - an exact host name, `example.org` (matches `example.org` only);
//! - a subdomain wildcard, `*.example.org`: strict subdomains only (`a.example.org`,
//!   `a.b.example.org`), NOT the apex `example.org` (list both to allow both);
//! - an IP literal, `10.0.0.5`, `2001:db8::1` or `[2001:db8::1]`: matches a destination
//!   written as exactly that address, never a name that resolves to it. An IP rule is the
//!   only way to reach a loopback, private, link-local or metadata address;
//!
//! each optionally followed by `:port` (`example.net:8443`, `[2001:db8::1]:443`).
//!
//! Ports: in `allow`, a rule without a port allows ports 80 and 443; in `deny`, a rule
//! without a port denies every port. Host names compare case-insensitively and a single
//! trailing dot is ignored. An IPv4-mapped IPv6 literal (`[::ffff:10.0.0.5]`) is a
//! different destination from `10.0.0.5`: an allow rule for one does not allow the other.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::NetError;

/// Longest host name accepted (RFC 1035, without the root label).
const MAX_NAME: usize = 253;
/// Longest label accepted.
const MAX_LABEL: usize = 63;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Target {
    /// A lower-case host name without a trailing dot.
    Exact(String),
    /// The suffix after `*.`, lower case.
    Subdomains(String),
    Ip(IpAddr),
}

/// One allowlist or denylist entry; see the module documentation for the syntax.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    target: Target,
    port: Option<u16>,
}

/// A destination as the proxy sees it, after normalisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Host {
    Name(String),
    Ip(IpAddr),
}

impl Host {
    /// Normalises a destination host: `[v6]` and bare IP literals become `Ip`, names are
    /// lower-cased without a trailing dot and must be valid host names.
    pub(crate) fn parse(host: &str) -> Option<Host> {
        if let Some(inner) = host.strip_prefix('[') {
            let inner = inner.strip_suffix(']')?;
            return inner
                .parse::<std::net::Ipv6Addr>()
                .ok()
                .map(|a| Host::Ip(IpAddr::V6(a)));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(Host::Ip(ip));
        }
        normalise_name(host).map(Host::Name)
    }

    pub(crate) fn is_ip(&self) -> bool {
        matches!(self, Host::Ip(_))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

/// Lower-cases `name`, drops one trailing dot and checks it is a host name: labels of
/// 1..=63 characters from `[a-z0-9_-]`, at most 253 characters in all.
pub(crate) fn normalise_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    let ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    ok.then(|| name.to_ascii_lowercase())
}

fn invalid(rule: &str, why: &'static str) -> NetError {
    NetError::InvalidRule {
        rule: rule.chars().take(300).collect(),
        why,
    }
}

fn parse_port(rule: &str, text: &str) -> Result<u16, NetError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(rule, "the port is not a number"));
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid(rule, "the port must be between 1 and 65535")),
        Ok(p) => Ok(p),
    }
}

impl FromStr for Rule {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Rule, NetError> {
        let text = s.trim();
        if text.is_empty() {
            return Err(invalid(s, "it is empty"));
        }
        // `[v6]` or `[v6]:port`.
        if let Some(rest) = text.strip_prefix('[') {
            let (inner, after) = rest
                .split_once(']')
                .ok_or_else(|| invalid(s, "a '[' without its ']'"))?;
            let ip = inner
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| invalid(s, "the text in brackets is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(parse_port(
                    s,
                    p.strip_prefix(':')
                        .ok_or_else(|| invalid(s, "only ':port' may follow ']'"))?,
                )?),
            };
            return Ok(Rule {
                target: Target::Ip(IpAddr::V6(ip)),
                port,
            });
        }
        // A bare IPv4 or IPv6 address (an IPv6 address with a port needs brackets).
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Rule {
                target: Target::Ip(ip),
                port: None,
            });
        }
        let (host, port) = match text.split_once(':') {
            None => (text, None),
            Some((h, p)) => {
                if p.contains(':') {
                    return Err(invalid(
                        s,
                        "write an IPv6 address in brackets, [2001:db8::1]:443",
                    ));
                }
                (h, Some(parse_port(s, p)?))
            }
        };
        if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
            return Ok(Rule {
                target: Target::Ip(IpAddr::V4(ip)),
                port,
            });
        }
        let (wild, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        if name.contains('*') {
            return Err(invalid(
                s,
                "'*' is only allowed as the whole first label, *.example.org",
            ));
        }
        let name = normalise_name(name).ok_or_else(|| {
            invalid(
                s,
                "the host name is not valid (letters, digits, '-' and '_' in dot-separated labels)",
            )
        })?;
        let target = if wild {
            Target::Subdomains(name)
        } else {
            Target::Exact(name)
        };
        Ok(Rule { target, port })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Exact(n) => f.write_str(n)?,
            Target::Subdomains(n) => write!(f, "*.{n}")?,
            Target::Ip(IpAddr::V4(a)) => write!(f, "{a}")?,
            Target::Ip(IpAddr::V6(a)) if self.port.is_some() => write!(f, "[{a}]")?,
            Target::Ip(IpAddr::V6(a)) => write!(f, "{a}")?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

impl Rule {
    fn matches_host(&self, host: &Host) -> bool {
        match (&self.target, host) {
            (Target::Exact(r), Host::Name(h)) => r == h,
            (Target::Subdomains(r), Host::Name(h)) => {
                h.len() > r.len() + 1
                    && h.ends_with(r.as_str())
                    && h.as_bytes()[h.len() - r.len() - 1] == b'.'
            }
            (Target::Ip(r), Host::Ip(h)) => r == h,
            _ => false,
        }
    }

    fn allows(&self, host: &Host, port: u16) -> bool {
        let port_ok = match self.port {
            Some(p) => p == port,
            None => port == 80 || port == 443,
        };
        port_ok && self.matches_host(host)
    }

    fn denies(&self, host: &Host, port: u16) -> bool {
        self.port.is_none_or(|p| p == port) && self.matches_host(host)
    }

    /// The address this rule names, when it is an IP rule.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.target {
            Target::Ip(a) => Some(a),
            _ => None,
        }
    }

    /// The port this rule names, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The ports an allow rule lets through: its own, else 80 and 443.
    fn allowed_ports(&self) -> Vec<u16> {
        match self.port {
            Some(p) => vec![p],
            None => vec![80, 443],
        }
    }

    /// Whether every host this rule matches is matched by `other` too.
    fn hosts_within(&self, other: &Rule) -> bool {
        let strictly_below = |name: &str, suffix: &str| {
            name.len() > suffix.len() + 1
                && name.ends_with(suffix)
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
        };
        match (&self.target, &other.target) {
            (Target::Exact(a), Target::Exact(b)) => a == b,
            (Target::Exact(a), Target::Subdomains(r)) => strictly_below(a, r),
            (Target::Subdomains(a), Target::Subdomains(r)) => a == r || strictly_below(a, r),
            (Target::Ip(a), Target::Ip(b)) => a == b,
            _ => false,
        }
    }
}

impl serde::Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A rule deserialises from its text form, so a profile's `allow = ["example.org"]`
/// reads straight into `Vec<Rule>` and a bad entry is reported with the reason.
impl<'de> serde::Deserialize<'de> for Rule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rule, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a run may connect, and how much.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetPolicy {
    pub allow: Vec<Rule>,
    /// Deny wins over allow. A deny rule without a port denies every port; a deny IP
    /// rule also refuses a name that resolves to that address.
    pub deny: Vec<Rule>,
    /// Connections (CONNECT tunnels and forwarded HTTP requests) open at once, per run.
    /// 0 allows none.
    pub max_connections: u32,
    /// Bytes through the proxy per run, BOTH directions counted: payload sent upstream
    /// plus payload received from upstream (tunnel bytes; for plain HTTP, the request
    /// and response heads and bodies). Past it the connection is closed. 0 allows none.
    pub max_egress_bytes: u64,
}

/// The decision for one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// `reason` names the deny rule that matched, or says "not in the allowlist".
    Deny {
        reason: String,
    },
}

/// No destination allowed, default caps.
impl Default for NetPolicy {
    fn default() -> NetPolicy {
        NetPolicy::new(Vec::new(), Vec::new())
    }
}

impl NetPolicy {
    /// Default for `max_connections` when a profile does not say.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 64;
    /// Default for `max_egress_bytes` when a profile does not say (4 GiB).
    pub const DEFAULT_MAX_EGRESS_BYTES: u64 = 4 << 30;

    /// A policy with the default caps.
    pub fn new(allow: Vec<Rule>, deny: Vec<Rule>) -> NetPolicy {
        NetPolicy {
            allow,
            deny,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_egress_bytes: Self::DEFAULT_MAX_EGRESS_BYTES,
        }
    }

    /// Whether this policy's allow rules let through everything the allow rule
    /// `rule` lets through (its deny rules are not consulted): how a narrower
    /// list keeps only the entries of a wider one that it covers.
    pub fn covers(&self, rule: &Rule) -> bool {
        rule.allowed_ports().into_iter().all(|port| {
            self.allow
                .iter()
                .any(|a| a.allowed_ports().contains(&port) && rule.hosts_within(a))
        })
    }

    /// Decides whether a run may connect to `host:port`. `host` is a name, an IPv4
    /// literal, or an IPv6 literal with or without brackets.
    pub fn decide(&self, host: &str, port: u16) -> Verdict {
        match Host::parse(host) {
            Some(h) => self.decide_host(&h, port),
            None => Verdict::Deny {
                reason: "not a valid host name".to_string(),
            },
        }
    }

    pub(crate) fn decide_host(&self, host: &Host, port: u16) -> Verdict {
        if port == 0 {
            return Verdict::Deny {
                reason: "port 0".to_string(),
            };
        }
        if let Some(rule) = self.deny.iter().find(|r| r.denies(host, port)) {
            return Verdict::Deny {
                reason: format!("denied by rule \"{rule}\""),
            };
        }
        if self.allow.iter().any(|r| r.allows(host, port)) {
            Verdict::Allow
        } else {
            Verdict::Deny {
                reason: "not in the allowlist".to_string(),
            }
        }
    }

    /// The deny IP rule that refuses `addr` on `port`, if any (a name resolving to a
    /// denied address is refused too).
    pub(crate) fn denied_addr(&self, addr: IpAddr, port: u16) -> Option<&Rule> {
        self.deny
            .iter()
            .find(|r| r.ip() == Some(addr) && r.port.is_none_or(|p| p == port))
    }

    /// Whether DNS may answer for `name` (already normalised): some allow rule names it
    /// (on any port) and no deny rule refuses it on every port.
    pub(crate) fn allows_name(&self, name: &str) -> bool {
        let host = Host::Name(name.to_string());
        !self
            .deny
            .iter()
            .any(|r| r.port.is_none() && r.matches_host(&host))
            && self.allow.iter().any(|r| r.matches_host(&host))
    }
}

#[cfg(test)]
mod cover_tests {
    use super::*;

    fn pol(rules: &[&str]) -> NetPolicy {
        NetPolicy::new(rules.iter().map(|r| r.parse().unwrap()).collect(), vec![])
    }

    fn covers(rules: &[&str], rule: &str) -> bool {
        pol(rules).covers(&rule.parse().unwrap())
    }

    #[test]
    fn a_rule_is_covered_only_by_rules_that_let_through_all_it_does() {
        assert!(covers(&["pypi.org"], "pypi.org"));
        assert!(covers(&["*.pythonhosted.org"], "files.pythonhosted.org"));
        assert!(covers(&["*.org"], "*.pythonhosted.org"));
        assert!(covers(&["*.example.org"], "*.example.org"));
        assert!(covers(
            &["example.org:80", "example.org:443"],
            "example.org"
        ));
        assert!(covers(&["example.org"], "example.org:443"));
        assert!(covers(&["10.0.0.5"], "10.0.0.5"));
        // Narrower never widens: the apex is not a subdomain, a wildcard is not
        // covered by one name, another port is not covered by the defaults.
        assert!(!covers(&["*.example.org"], "example.org"));
        assert!(!covers(&["files.pythonhosted.org"], "*.pythonhosted.org"));
        assert!(!covers(&["example.org"], "example.org:8443"));
        assert!(!covers(&["example.org:443"], "example.org"));
        assert!(!covers(&["example.org"], "example.net"));
        assert!(!covers(&["*.ample.org"], "example.org"));
        assert!(!covers(&[], "example.org"));
        assert!(!covers(&["10.0.0.5"], "10.0.0.6"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> Rule {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn policy(allow: &[&str], deny: &[&str]) -> NetPolicy {
        NetPolicy::new(
            allow.iter().map(|s| rule(s)).collect(),
            deny.iter().map(|s| rule(s)).collect(),
        )
    }

    #[test]
    fn parses_and_prints_every_form() {
        for (input, shown) in [
            ("example.org", "example.org"),
            ("Example.ORG.", "example.org"),
            ("*.example.org", "*.example.org"),
            ("example.net:8443", "example.net:8443"),
            ("10.0.0.5", "10.0.0.5"),
            ("10.0.0.5:8080", "10.0.0.5:8080"),
            ("[2001:db8::1]:443", "[2001:db8::1]:443"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            ("  files.pythonhosted.org  ", "files.pythonhosted.org"),
            ("_srv.example.org", "_srv.example.org"),
        ] {
            assert_eq!(rule(input).to_string(), shown, "{input}");
        }
        assert_eq!(rule("[2001:db8::1]:443").port(), Some(443));
        assert_eq!(rule("10.0.0.5").ip(), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(rule("example.org").ip(), None);
    }

    #[test]
    fn rules_round_trip_through_serde_as_text() {
        let rules: Vec<Rule> =
            serde_json::from_str(r#"["*.example.org", "[2001:db8::1]:443", "Example.net:8443"]"#)
                .unwrap();
        assert_eq!(
            serde_json::to_string(&rules).unwrap(),
            r#"["*.example.org","[2001:db8::1]:443","example.net:8443"]"#
        );
        let err = serde_json::from_str::<Vec<Rule>>(r#"["exa mple.org"]"#).unwrap_err();
        assert!(err.to_string().contains("is not valid"), "{err}");
        assert_eq!(
            NetPolicy::default().decide("example.org", 443),
            Verdict::Deny {
                reason: "not in the allowlist".into()
            }
        );
    }

    #[test]
    fn rejects_malformed_rules() {
        for bad in [
            "",
            "   ",
            "*",
            "*.",
            "**.example.org",
            "a.*.example.org",
            "example*.org",
            "example.org:0",
            "example.org:65536",
            "example.org:",
            "example.org:http",
            "example.org:-1",
            "exa mple.org",
            "example..org",
            "http://example.org",
            "example.org/path",
            "[2001:db8::1",
            "[2001:db8::1]443",
            "[10.0.0.1]",
            "2001:db8::1:443:x",
            "a:b:c",
            "ex\u{e4}mple.org",
            &"a".repeat(64),
            &format!("{}.org", "a.".repeat(130)),
        ] {
            let err = bad.parse::<Rule>().expect_err(bad);
            assert!(err.to_string().contains("is not valid"), "{bad}: {err}");
        }
    }

    #[test]
    fn exact_names_match_only_themselves_on_default_ports() {
        let p = policy(&["example.org"], &[]);
        assert_eq!(p.decide("example.org", 443), Verdict::Allow);
        assert_eq!(p.decide("EXAMPLE.org.", 80), Verdict::Allow);
        for (h, port) in [
            ("example.org", 8443),
            ("example.org", 22),
            ("www.example.org", 443),
            ("notexample.org", 443),
            ("example.org.evil.com", 443),
            ("example.or", 443),
        ] {
            assert_eq!(
                p.decide(h, port),
                Verdict::Deny {
                    reason: "not in the allowlist".into()
                },
                "{h}:{port}"
            );
        }
    }

    #[test]
    fn wildcards_match_strict_subdomains_only() {
        let p = policy(&["*.example.org"], &[]);
        assert_eq!(p.decide("a.example.org", 443), Verdict::Allow);
        assert_eq!(p.decide("a.b.example.org", 80), Verdict::Allow);
        assert_ne!(p.decide("example.org", 443), Verdict::Allow);
        assert_ne!(p.decide("aexample.org", 443), Verdict::Allow);
        assert_ne!(p.decide(".example.org", 443), Verdict::Allow);
        assert_ne!(p.decide("a.example.org.evil", 443), Verdict::Allow);
    }

    #[test]
    fn explicit_port_replaces_the_defaults() {
        let p = policy(&["example.net:8443"], &[]);
        assert_eq!(p.decide("example.net", 8443), Verdict::Allow);
        assert_ne!(p.decide("example.net", 443), Verdict::Allow);
        assert_ne!(p.decide("example.net", 80), Verdict::Allow);
        assert_ne!(p.decide("example.net", 0), Verdict::Allow);
    }

    #[test]
    fn deny_wins_and_names_its_rule() {
        let p = policy(
            &["*.example.org", "example.org:8080"],
            &["bad.example.org", "example.org:8080"],
        );
        assert_eq!(p.decide("good.example.org", 443), Verdict::Allow);
        assert_eq!(
            p.decide("bad.example.org", 443),
            Verdict::Deny {
                reason: "denied by rule \"bad.example.org\"".into()
            }
        );
        // A deny rule without a port denies every port.
        assert_ne!(p.decide("bad.example.org", 9999), Verdict::Allow);
        assert_eq!(
            p.decide("example.org", 8080),
            Verdict::Deny {
                reason: "denied by rule \"example.org:8080\"".into()
            }
        );
    }

    #[test]
    fn ip_rules_match_exactly_that_literal() {
        let p = policy(&["127.0.0.1:8080", "[2001:db8::1]:443", "10.0.0.5"], &[]);
        assert_eq!(p.decide("127.0.0.1", 8080), Verdict::Allow);
        assert_eq!(p.decide("[2001:db8::1]", 443), Verdict::Allow);
        assert_eq!(p.decide("2001:db8::1", 443), Verdict::Allow);
        assert_eq!(p.decide("10.0.0.5", 443), Verdict::Allow);
        for (h, port) in [
            ("127.0.0.1", 8081),
            ("127.0.0.2", 8080),
            ("[::ffff:127.0.0.1]", 8080),
            ("::ffff:127.0.0.1", 8080),
            ("[::1]", 8080),
            ("localhost", 8080),
            ("[2001:db8::2]", 443),
            ("10.0.0.5", 22),
        ] {
            assert_ne!(p.decide(h, port), Verdict::Allow, "{h}:{port}");
        }
        // Names never match IP rules and IPs never match name rules.
        let p = policy(&["example.org"], &[]);
        assert_ne!(p.decide("93.184.215.14", 443), Verdict::Allow);
    }

    #[test]
    fn garbage_hosts_are_denied_not_panicking() {
        let p = policy(&["*.example.org"], &[]);
        for h in [
            "",
            "[",
            "[]",
            "[::1",
            "a b.example.org",
            "x.example.org/evil",
            "x.example.org\0",
            "x.example.org:443",
            "\u{130}.example.org",
        ] {
            assert_eq!(
                p.decide(h, 443),
                Verdict::Deny {
                    reason: "not a valid host name".into()
                },
                "{h:?}"
            );
        }
    }

    #[test]
    fn dns_names_follow_the_rules_on_any_port() {
        let p = policy(&["example.net:8443", "*.example.org"], &["x.example.org"]);
        assert!(p.allows_name("example.net"));
        assert!(p.allows_name("a.example.org"));
        assert!(!p.allows_name("example.org"));
        assert!(!p.allows_name("x.example.org"));
        assert!(!p.allows_name("example.com"));
    }

    #[test]
    fn deny_ip_rules_catch_resolved_addresses() {
        let p = policy(&["example.org"], &["93.184.215.14", "10.0.0.1:80"]);
        assert!(
            p.denied_addr("93.184.215.14".parse().unwrap(), 443)
                .is_some()
        );
        assert!(p.denied_addr("10.0.0.1".parse().unwrap(), 80).is_some());
        assert!(p.denied_addr("10.0.0.1".parse().unwrap(), 443).is_none());
        assert!(
            p.denied_addr("93.184.215.15".parse().unwrap(), 443)
                .is_none()
        );
    }
}
