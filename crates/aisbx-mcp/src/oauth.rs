//! OAuth 2.1 bearer tokens for the HTTP server, as the MCP authorization spec
//! describes: the server is a protected resource that accepts JWT access tokens from
//! one configured issuer, checks them against the issuer's keys (a JWKS file), and
//! publishes its metadata (RFC 9728) at `/.well-known/oauth-protected-resource`.
//!
//! A token is accepted when its signature verifies with a key of the JWKS, using the
//! algorithm that key is pinned to (the JWK's `alg`, else the one its type and curve
//! imply; never `none`, never an HMAC: a public key is never used as a shared
//! secret), and its `iss`, `aud`, `exp` and `nbf` hold. The tenant is one of its
//! claims (`sub` by default).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Largest JWKS file read.
const MAX_JWKS_BYTES: u64 = 1024 * 1024;
/// Longest tenant name taken from a claim.
pub const MAX_TENANT_LEN: usize = 128;
/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// How often, at most, the JWKS file is looked at again for a key id it lacks.
const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// The well-known path of the protected resource metadata.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// How the server checks JWT access tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConfig {
    /// The authorization server's issuer identifier (the tokens' `iss`).
    pub issuer: String,
    /// The `aud` tokens must carry; `None`: the resource URL.
    pub audience: Option<String>,
    /// The issuer's keys, a JWKS document (`{"keys": [...]}`).
    pub jwks: PathBuf,
    /// The claim naming the tenant.
    pub tenant_claim: String,
    /// This server's resource identifier (its MCP endpoint URL); `None`: made from
    /// the address it listens on.
    pub resource: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("cannot read the JWKS file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the JWKS file {path} is larger than {MAX_JWKS_BYTES} bytes; give the issuer's key set only"
    )]
    TooLarge { path: PathBuf },
    #[error("the JWKS file {path} is not a JSON Web Key Set ({{\"keys\": [...]}}): {why}")]
    Parse { path: PathBuf, why: String },
    #[error(
        "the JWKS file {path} has no key aisbx-mcp can verify signatures with (RSA, EC P-256/P-384 or Ed25519 public keys){skipped}"
    )]
    NoUsableKey { path: PathBuf, skipped: String },
    #[error(
        "refusing the JWKS file {path}: key {kid} is a shared secret (kty \"oct\"); an issuer's JWKS holds public keys only"
    )]
    SharedSecret { path: PathBuf, kid: String },
    #[error(
        "--oauth-jwks takes a file holding the issuer's JWKS, not the URL {0}: this server does not fetch keys over the network; download the issuer's jwks_uri to a file and name it"
    )]
    JwksUrl(String),
    #[error("--oauth-issuer must be an https:// URL (or http:// on a loopback host), not '{0}'")]
    Issuer(String),
    #[error("--oauth-tenant-claim must name a claim, not an empty string")]
    EmptyClaim,
    #[error(
        "--oauth-resource must be an http:// or https:// URL of visible ASCII characters without quotes or backslashes (e.g. https://mcp.example.com/mcp), not '{0}'"
    )]
    Resource(String),
}

/// Why a token was refused; each says it in a fixed sentence (sent to the client in
/// `error_description`, so it never repeats the token's content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    UnknownKey,
    Algorithm,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    MissingClaim,
    Tenant,
}

impl Refusal {
    pub fn description(self) -> &'static str {
        match self {
            Refusal::Malformed => "the token is not a well-formed JWT",
            Refusal::UnknownKey => "the token is not signed by a key of the configured issuer",
            Refusal::Algorithm => "the token's algorithm is not the one its key is meant for",
            Refusal::Signature => "the token's signature is not valid",
            Refusal::Expired => "the token has expired",
            Refusal::NotYetValid => "the token is not valid yet",
            Refusal::Issuer => "the token was issued by another issuer",
            Refusal::Audience => "the token was issued for another resource (audience)",
            Refusal::MissingClaim => "the token lacks a required claim (exp, iss or aud)",
            Refusal::Tenant => "the token's tenant claim is missing or not a usable tenant name",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.description())
    }
}

/// One verification key, pinned to one algorithm.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// What identifies a version of the JWKS file (re-read when it changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

/// Checks JWT access tokens against one issuer's keys.
pub struct Verifier {
    issuer: String,
    audience: String,
    resource: String,
    tenant_claim: String,
    jwks: PathBuf,
    keys: RwLock<Arc<Vec<Key>>>,
    /// The loaded file's stamp, and when it was last looked at.
    seen: Mutex<(Stamp, Instant)>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("resource", &self.resource)
            .field("tenant_claim", &self.tenant_claim)
            .field("jwks", &self.jwks)
            .finish_non_exhaustive()
    }
}

/// Whether `url` is `https://…`, or `http://` on a loopback host.
fn acceptable_issuer(url: &str) -> bool {
    if url.starts_with("https://") && url.len() > "https://".len() {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `url` can be the resource identifier: it is quoted in a header and JSON.
fn acceptable_resource(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && url
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

impl Verifier {
    /// Loads the JWKS; `default_resource` is this server's MCP URL, used when the
    /// configuration names none.
    pub fn new(config: &OAuthConfig, default_resource: &str) -> Result<Verifier, OAuthError> {
        let jwks = config.jwks.to_string_lossy();
        if jwks.starts_with("http://") || jwks.starts_with("https://") {
            return Err(OAuthError::JwksUrl(jwks.into_owned()));
        }
        if !acceptable_issuer(&config.issuer) {
            return Err(OAuthError::Issuer(config.issuer.clone()));
        }
        if config.tenant_claim.is_empty() {
            return Err(OAuthError::EmptyClaim);
        }
        let (keys, stamp) = load_jwks(&config.jwks)?;
        let resource = config
            .resource
            .clone()
            .unwrap_or_else(|| default_resource.to_string());
        if !acceptable_resource(&resource) {
            return Err(OAuthError::Resource(resource));
        }
        Ok(Verifier {
            issuer: config.issuer.clone(),
            audience: config.audience.clone().unwrap_or_else(|| resource.clone()),
            resource,
            tenant_claim: config.tenant_claim.clone(),
            jwks: config.jwks.clone(),
            keys: RwLock::new(Arc::new(keys)),
            seen: Mutex::new((stamp, Instant::now())),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The protected resource metadata (RFC 9728) this server publishes.
    pub fn metadata(&self) -> Value {
        serde_json::json!({
            "resource": self.resource,
            "authorization_servers": [self.issuer],
            "bearer_methods_supported": ["header"],
            "resource_name": "aisbx-mcp",
        })
    }

    fn current_keys(&self) -> Arc<Vec<Key>> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the JWKS file if it changed (at most every [`RELOAD_EVERY`]); a file
    /// that no longer loads leaves the keys as they were.
    fn reload_if_changed(&self) -> bool {
        let mut seen = match self.seen.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if seen.1.elapsed() < RELOAD_EVERY {
            return false;
        }
        seen.1 = Instant::now();
        let Ok(now) = std::fs::metadata(&self.jwks).map(|m| stamp_of(&m)) else {
            return false;
        };
        if now == seen.0 {
            return false;
        }
        match load_jwks(&self.jwks) {
            Ok((keys, stamp)) => {
                seen.0 = stamp;
                let mut slot = match self.keys.write() {
                    Ok(k) => k,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *slot = Arc::new(keys);
                tracing::info!(jwks = %self.jwks.display(), "reloaded the issuer's keys");
                true
            }
            Err(e) => {
                seen.0 = now;
                tracing::warn!(%e, "kept the previous keys");
                false
            }
        }
    }

    /// Verifies `token`; returns the tenant it names.
    pub fn verify(&self, token: &str) -> Result<String, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        let mut keys = self.current_keys();
        if !has_candidate(&keys, header.kid.as_deref(), header.alg) && self.reload_if_changed() {
            keys = self.current_keys();
        }
        let mut result = Err(Refusal::UnknownKey);
        for k in keys.iter() {
            if let Some(kid) = header.kid.as_deref()
                && k.kid.as_deref() != Some(kid)
            {
                continue;
            }
            if header.kid.is_none() && k.alg != header.alg {
                continue;
            }
            result = self.verify_with(token, k);
            // The signature is checked before the claims: any other outcome means
            // this key signed it, and its answer (e.g. expired) is the one to give.
            if header.kid.is_some() || !matches!(result, Err(Refusal::Signature)) {
                break;
            }
        }
        result
    }

    fn verify_with(&self, token: &str, k: &Key) -> Result<String, Refusal> {
        let mut v = Validation::new(k.alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.leeway = LEEWAY_SECS;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidAlgorithm | K::InvalidAlgorithmName | K::InvalidKeyFormat => {
                    Refusal::Algorithm
                }
                K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) => {
                    Refusal::Signature
                }
                K::ExpiredSignature => Refusal::Expired,
                K::ImmatureSignature => Refusal::NotYetValid,
                K::InvalidIssuer => Refusal::Issuer,
                K::InvalidAudience => Refusal::Audience,
                K::MissingRequiredClaim(_) => Refusal::MissingClaim,
                _ => Refusal::Malformed,
            }
        })?;
        let tenant = data.claims.get(&self.tenant_claim).ok_or(Refusal::Tenant)?;
        tenant_name(tenant).ok_or(Refusal::Tenant)
    }
}

fn has_candidate(keys: &[Key], kid: Option<&str>, alg: Algorithm) -> bool {
    keys.iter().any(|k| match kid {
        Some(kid) => k.kid.as_deref() == Some(kid),
        None => k.alg == alg,
    })
}

/// A claim's value as a tenant name: a string of 1 to [`MAX_TENANT_LEN`] visible
/// ASCII characters (no spaces or control characters: it is written to logs), and
/// not `default`, the tenant of the server's own user and unmapped callers.
pub fn tenant_name(v: &Value) -> Option<String> {
    let s = v.as_str()?;
    let ok = !s.is_empty()
        && s.len() <= MAX_TENANT_LEN
        && s.bytes().all(|b| b.is_ascii_graphic())
        && s != aisbx_service::tenants::DEFAULT_TENANT;
    ok.then(|| s.to_string())
}

fn stamp_of(m: &std::fs::Metadata) -> Stamp {
    Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    }
}

/// The algorithm a JWK verifies with, or why it cannot be used.
fn pinned_alg(jwk: &Jwk) -> Result<Algorithm, String> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => None,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => return Err("an EC curve other than P-256 and P-384".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => Some(Algorithm::EdDSA),
            _ => return Err("an OKP curve other than Ed25519".into()),
        },
        AlgorithmParameters::OctetKey(_) => return Err("oct".into()),
        _ => return Err("an unknown key type".into()),
    };
    let named = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(match a {
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::ES384 => Algorithm::ES384,
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::RS384 => Algorithm::RS384,
            KeyAlgorithm::RS512 => Algorithm::RS512,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::PS384 => Algorithm::PS384,
            KeyAlgorithm::PS512 => Algorithm::PS512,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            other => return Err(format!("alg {other:?}, not a public-key signature")),
        }),
    };
    match (implied, named) {
        (Some(i), Some(n)) if i != n => Err(format!("alg {n:?} on a key made for {i:?}")),
        (Some(i), _) => Ok(i),
        (None, Some(n))
            if matches!(
                n,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) =>
        {
            Ok(n)
        }
        (None, Some(n)) => Err(format!("alg {n:?} on an RSA key")),
        // An RSA key without `alg`: RS256, the algorithm OAuth issuers use.
        (None, None) => Ok(Algorithm::RS256),
    }
}

fn load_jwks(path: &Path) -> Result<(Vec<Key>, Stamp), OAuthError> {
    let read = |source| OAuthError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(read)?;
    let meta = f.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(read(std::io::Error::other("it is not a regular file")));
    }
    let mut raw = Vec::new();
    (&mut f)
        .take(MAX_JWKS_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(read)?;
    if raw.len() as u64 > MAX_JWKS_BYTES {
        return Err(OAuthError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let set: JwkSet = serde_json::from_slice(&raw).map_err(|e| OAuthError::Parse {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let name = jwk
            .common
            .key_id
            .clone()
            .unwrap_or_else(|| format!("#{}", i + 1));
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            return Err(OAuthError::SharedSecret {
                path: path.to_path_buf(),
                kid: name,
            });
        }
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            skipped.push(format!("{name}: not a signing key"));
            continue;
        }
        let alg = match pinned_alg(jwk) {
            Ok(a) => a,
            Err(why) => {
                skipped.push(format!("{name}: {why}"));
                continue;
            }
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            }),
            Err(e) => skipped.push(format!("{name}: {e}")),
        }
    }
    for s in &skipped {
        tracing::warn!(jwks = %path.display(), "skipped a key: {s}");
    }
    if keys.is_empty() {
        return Err(OAuthError::NoUsableKey {
            path: path.to_path_buf(),
            skipped: if skipped.is_empty() {
                String::new()
            } else {
                format!("; skipped {}", skipped.join(", "))
            },
        });
    }
    Ok((keys, stamp_of(&meta)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_must_be_https_or_loopback() {
        assert!(acceptable_issuer("https://auth.example.com"));
        assert!(acceptable_issuer("http://127.0.0.1:9000/realms/x"));
        assert!(acceptable_issuer("http://localhost:9000"));
        assert!(acceptable_issuer("http://[::1]:9000/"));
        assert!(!acceptable_issuer("http://auth.example.com"));
        assert!(!acceptable_issuer("http://localhost.example.com"));
        assert!(!acceptable_issuer("https://"));
        assert!(!acceptable_issuer("auth.example.com"));
    }

    #[test]
    fn resources_are_urls_that_can_be_quoted() {
        assert!(acceptable_resource("https://mcp.example.com/mcp"));
        assert!(acceptable_resource("http://127.0.0.1:8765/mcp"));
        assert!(!acceptable_resource("mcp.example.com/mcp"));
        assert!(!acceptable_resource("https://"));
        assert!(!acceptable_resource("https:///mcp"));
        assert!(!acceptable_resource("https://a/\"x"));
        assert!(!acceptable_resource("https://a/\\x"));
        assert!(!acceptable_resource("https://a/ x"));
        assert!(!acceptable_resource("https://a/é"));
    }

    #[test]
    fn tenant_names_are_bounded_visible_ascii() {
        assert_eq!(tenant_name(&Value::from("acme")), Some("acme".into()));
        assert_eq!(
            tenant_name(&Value::from("auth0|1234")),
            Some("auth0|1234".into())
        );
        assert_eq!(tenant_name(&Value::from("")), None);
        assert_eq!(tenant_name(&Value::from("default")), None);
        assert_eq!(tenant_name(&Value::from("a b")), None);
        assert_eq!(tenant_name(&Value::from("a\nb")), None);
        assert_eq!(tenant_name(&Value::from("é")), None);
        assert_eq!(tenant_name(&Value::from(42)), None);
        assert_eq!(
            tenant_name(&Value::from("x".repeat(MAX_TENANT_LEN))).map(|s| s.len()),
            Some(MAX_TENANT_LEN)
        );
        assert_eq!(
            tenant_name(&Value::from("x".repeat(MAX_TENANT_LEN + 1))),
            None
        );
    }

    fn jwk(v: Value) -> Jwk {
        serde_json::from_value(v).expect("jwk")
    }

    #[test]
    fn keys_are_pinned_to_one_algorithm() {
        let ec = |crv: &str, alg: Option<&str>| {
            let mut v = serde_json::json!({"kty": "EC", "crv": crv, "x": "AA", "y": "AA"});
            if let Some(a) = alg {
                v["alg"] = a.into();
            }
            jwk(v)
        };
        assert_eq!(pinned_alg(&ec("P-256", None)), Ok(Algorithm::ES256));
        assert_eq!(pinned_alg(&ec("P-384", None)), Ok(Algorithm::ES384));
        assert_eq!(
            pinned_alg(&ec("P-256", Some("ES256"))),
            Ok(Algorithm::ES256)
        );
        assert!(pinned_alg(&ec("P-256", Some("ES384"))).is_err());
        assert!(pinned_alg(&ec("P-256", Some("HS256"))).is_err());
        assert!(pinned_alg(&ec("P-521", None)).is_err());
        let rsa = |alg: Option<&str>| {
            let mut v = serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"});
            if let Some(a) = alg {
                v["alg"] = a.into();
            }
            jwk(v)
        };
        assert_eq!(pinned_alg(&rsa(None)), Ok(Algorithm::RS256));
        assert_eq!(pinned_alg(&rsa(Some("PS256"))), Ok(Algorithm::PS256));
        assert!(pinned_alg(&rsa(Some("ES256"))).is_err());
        assert!(pinned_alg(&rsa(Some("RSA-OAEP"))).is_err());
        assert!(pinned_alg(&rsa(Some("HS256"))).is_err());
    }

    #[test]
    fn a_jwks_with_a_shared_secret_or_no_usable_key_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("jwks.json");
        std::fs::write(&p, r#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}"#).expect("write");
        let e = load_jwks(&p).err().expect("oct refused");
        assert!(e.to_string().contains("shared secret"), "{e}");
        std::fs::write(
            &p,
            r#"{"keys":[{"kty":"EC","crv":"P-521","kid":"big","x":"AA","y":"AA"}]}"#,
        )
        .expect("write");
        let e = load_jwks(&p).err().expect("no usable key");
        assert!(e.to_string().contains("big: an EC curve"), "{e}");
        std::fs::write(&p, "not json").expect("write");
        assert!(matches!(load_jwks(&p), Err(OAuthError::Parse { .. })));
        let e = Verifier::new(
            &OAuthConfig {
                issuer: "https://auth.example.com".into(),
                audience: None,
                jwks: PathBuf::from("https://auth.example.com/jwks"),
                tenant_claim: "sub".into(),
                resource: None,
            },
            "http://127.0.0.1:1/mcp",
        )
        .expect_err("a URL");
        assert!(matches!(e, OAuthError::JwksUrl(_)), "{e}");
    }
}
