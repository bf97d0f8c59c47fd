//! OAuth 2.1 access tokens over HTTP: JWTs from the configured issuer, checked against
//! its JWKS (signature, algorithm, `iss`, `aud`, `exp`, `nbf`), the tenant taken from a
//! claim into the audit log, and the protected resource metadata published without
//! a token. The keys are made here, at test time.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use serde_json::{Value, json};

const ISSUER: &str = "https://issuer.example.com";
const AUDIENCE: &str = "aisbx-test";

/// An EC P-256 key made now, with its key id.
struct Key {
    kid: String,
    secret: p256::SecretKey,
}

impl Key {
    fn new(kid: &str) -> Key {
        let mut f = std::fs::File::open("/dev/urandom").expect("urandom");
        loop {
            let mut b = [0u8; 32];
            f.read_exact(&mut b).expect("random bytes");
            if let Ok(secret) = p256::SecretKey::from_slice(&b) {
                return Key {
                    kid: kid.to_string(),
                    secret,
                };
            }
        }
    }

    /// The uncompressed public point, 0x04 || x || y.
    fn point(&self) -> Vec<u8> {
        let p = self.secret.public_key().to_sec1_bytes().to_vec();
        assert_eq!(p.len(), 65, "an uncompressed point");
        assert_eq!(p[0], 4);
        p
    }

    fn jwk(&self) -> Value {
        let p = self.point();
        json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
    }

    /// A token signed with this key, ES256, the header naming `kid`.
    fn sign_as(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = kid.map(str::to_string);
        let der = self.secret.to_pkcs8_der().expect("pkcs8");
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_ec_der(der.as_bytes())).expect("sign")
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(Some(&self.kid), claims)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Claims that pass, for tenant `org`.
fn claims(org: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "org": org,
        "iat": now(), "exp": now() + 600})
}

fn write_jwks(path: &Path, keys: &[&Key]) {
    let set = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    // Written whole, then renamed: the server never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, set.to_string()).expect("write jwks");
    std::fs::rename(&tmp, path).expect("rename jwks");
}

/// An unsigned token or one with a made-up signature: `header.payload.signature`.
fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string()),
        B64.encode(signature)
    )
}

fn hs256(secret: &[u8], kid: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(
        &h,
        claims,
        &EncodingKey::from_secret(secret).expect("hmac key"),
    )
    .expect("hs256")
}

/// `GET path` without credentials.
fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    parse_response(&raw)
}

fn initialize_with(addr: SocketAddr, token: &str) -> HttpResponse {
    let auth = format!("Bearer {token}");
    http(
        addr,
        "POST",
        &[("Authorization", &auth)],
        Some(&initialize_request(1)),
    )
}

fn start(home: &Path, jwks: &Path, extra: &[&str]) -> HttpServer {
    let jwks = jwks.to_string_lossy().to_string();
    let mut args = vec![
        "--oauth-issuer",
        ISSUER,
        "--oauth-jwks",
        &jwks,
        "--oauth-audience",
        AUDIENCE,
    ];
    args.extend_from_slice(extra);
    HttpServer::start(home, &args, &[])
}

fn structured(r: &Value) -> &Value {
    assert_eq!(r["result"]["isError"], json!(false), "tool failed: {r}");
    &r["result"]["structuredContent"]
}

#[test]
fn a_valid_token_works_and_names_the_tenant_in_the_audit_log() {
    let home = home();
    let key = Key::new("k1");
    let jwks = home.path().join("jwks.json");
    write_jwks(&jwks, &[&key]);
    let srv = start(home.path(), &jwks, &["--oauth-tenant-claim", "org"]);

    let token = key.sign(&claims("acme"));
    let s = Session::open(srv.addr, Some(&token));
    let list = s.post(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
    let tools = list.rpc()["result"]["tools"]
        .as_array()
        .expect("tools")
        .len();
    assert!(tools > 3, "{:?}", list.rpc());
    let r = s.call(2, "run", json!({"command": ["echo", "from-acme"]}));
    assert_eq!(structured(&r.rpc())["stdout"], "from-acme\n");

    // The server's own token still works, and names no tenant.
    let own = Session::open(srv.addr, srv.token.as_deref());
    let r = own.call(3, "run", json!({"command": ["echo", "from-owner"]}));
    assert_eq!(structured(&r.rpc())["stdout"], "from-owner\n");

    // A session belongs to the credential that opened it: another tenant's token, or
    // the server's own, on acme's session finds no such session; no token is a 401.
    let other = key.sign(&claims("globex"));
    for auth in [
        Some(format!("Bearer {other}")),
        srv.token.as_ref().map(|t| format!("Bearer {t}")),
    ] {
        let hijack = Session {
            addr: s.addr,
            id: s.id.clone(),
            auth,
        };
        let r = hijack.call(4, "run", json!({"command": ["echo", "hijacked"]}));
        assert_eq!(r.status, 404, "{:?}", String::from_utf8_lossy(&r.body));
    }
    let bare = Session {
        addr: s.addr,
        id: s.id.clone(),
        auth: None,
    };
    assert_eq!(bare.call(5, "profile_list", json!({})).status, 401);
    // A fresh token of the same tenant keeps using it (tokens are refreshed).
    let mut later = claims("acme");
    later["exp"] = json!(now() + 900);
    let same = Session {
        addr: s.addr,
        id: s.id.clone(),
        auth: Some(format!("Bearer {}", key.sign(&later))),
    };
    let r = same.call(6, "run", json!({"command": ["echo", "acme-again"]}));
    assert_eq!(structured(&r.rpc())["stdout"], "acme-again\n");
    // globex gets a session of its own.
    let g = Session::open(srv.addr, Some(&other));
    let r = g.call(7, "run", json!({"command": ["echo", "as-globex"]}));
    assert_eq!(structured(&r.rpc())["stdout"], "as-globex\n");

    drop(srv);
    let log = home.path().join("audit.jsonl");
    let report = aisbx_service::audit::verify(&log).expect("verify");
    assert!(report.is_ok(), "{report:?}");
    let lines = aisbx_service::audit::tail(&log, 100).expect("tail");
    // In order: acme, the owner, acme, globex.
    let runs: Vec<&Value> = lines.iter().filter(|l| l["tool"] == "run").collect();
    assert_eq!(runs.len(), 4, "{lines:?}");
    let clients: Vec<&Value> = runs.iter().map(|l| &l["client"]).collect();
    assert_eq!(
        clients,
        [
            "tenant=acme; client=aisbx-it",
            "aisbx-it",
            "tenant=acme; client=aisbx-it",
            "tenant=globex; client=aisbx-it"
        ],
        "{runs:?}"
    );
}

#[test]
fn bad_tokens_are_refused_with_the_challenge() {
    let home = home();
    let key = Key::new("k1");
    let stranger = Key::new("k1");
    // Another key of the issuer: a token without `kid` is tried against both.
    let decoy = Key::new("k2");
    let jwks = home.path().join("jwks.json");
    write_jwks(&jwks, &[&key, &decoy]);
    let srv = start(home.path(), &jwks, &[]);
    let metadata = format!(
        "http://{}/.well-known/oauth-protected-resource/mcp",
        srv.addr
    );

    // No token: 401 pointing at the metadata, with no error code (RFC 6750 3.1).
    let r = http(srv.addr, "POST", &[], Some(&initialize_request(1)));
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").expect("challenge");
    assert_eq!(
        challenge,
        format!("Bearer resource_metadata=\"{metadata}\"")
    );

    let good = claims("acme");
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().expect("object").remove(k);
        c
    };
    let point = key.point();
    let jwk_text = key.jwk().to_string();
    let none_header = json!({"alg": "none", "typ": "JWT", "kid": "k1"});
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong audience",
            key.sign(&with("aud", json!("another-service"))),
            "another resource",
        ),
        (
            "expired an hour ago",
            key.sign(&with("exp", json!(now() - 3600))),
            "expired",
        ),
        (
            "not valid for an hour",
            key.sign(&with("nbf", json!(now() + 3600))),
            "not valid yet",
        ),
        (
            "another issuer",
            key.sign(&with("iss", json!("https://evil.example.com"))),
            "another issuer",
        ),
        ("no exp", key.sign(&without("exp")), "required claim"),
        ("no aud", key.sign(&without("aud")), "required claim"),
        (
            "signed by another key with the same kid",
            stranger.sign(&good),
            "signature",
        ),
        (
            "signed by another key, no kid",
            stranger.sign_as(None, &good),
            "signature",
        ),
        (
            "expired, no kid",
            key.sign_as(None, &with("exp", json!(now() - 3600))),
            "expired",
        ),
        (
            "an unknown kid",
            stranger.sign_as(Some("k9"), &good),
            "not signed by a key",
        ),
        (
            "alg none",
            raw_token(&none_header, &good, b""),
            "well-formed",
        ),
        (
            "HS256 keyed with the public point",
            hs256(&point, "k1", &good),
            "algorithm",
        ),
        (
            "HS256 keyed with the JWK",
            hs256(jwk_text.as_bytes(), "k1", &good),
            "algorithm",
        ),
        (
            "a valid signature on changed claims",
            {
                let t = key.sign(&good);
                let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
                parts[1] = B64.encode(with("org", json!("globex")).to_string());
                parts.join(".")
            },
            "signature",
        ),
        ("no tenant claim", key.sign(&without("sub")), "tenant"),
        (
            "a tenant that is not a name",
            key.sign(&with("sub", json!("a b\nc"))),
            "tenant",
        ),
        ("not a JWT", "x.y".to_string(), "well-formed"),
    ];
    for (what, token, said) in &cases {
        let r = initialize_with(srv.addr, token);
        assert_eq!(
            r.status,
            401,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let h = r.header("www-authenticate").expect("challenge");
        assert!(
            h.starts_with("Bearer error=\"invalid_token\", error_description=\"")
                && h.ends_with(&format!("resource_metadata=\"{metadata}\"")),
            "{what}: {h}"
        );
        assert!(h.contains(said), "{what}: {h}");
        let body: Value = serde_json::from_slice(&r.body).expect("json body");
        assert_eq!(body["error"], "invalid_token", "{what}");
    }
    // After all that, the good token still works (nothing was cached wrongly).
    assert_eq!(initialize_with(srv.addr, &key.sign(&good)).status, 200);
    // Nothing of the refused calls ran.
    let log = home.path().join("audit.jsonl");
    let lines = aisbx_service::audit::tail(&log, 100).unwrap_or_default();
    assert!(lines.iter().all(|l| l["tool"] != "run"), "{lines:?}");
}

#[test]
fn the_metadata_is_public_and_keys_can_rotate() {
    let home = home();
    let old = Key::new("2026-old");
    let jwks = home.path().join("jwks.json");
    write_jwks(&jwks, &[&old]);
    let srv = start(home.path(), &jwks, &[]);
    let resource = format!("http://{}/mcp", srv.addr);
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let r = get(srv.addr, path);
        assert_eq!(r.status, 200, "{path}");
        let doc: Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(doc["resource"], resource.as_str(), "{doc}");
        assert_eq!(doc["authorization_servers"], json!([ISSUER]), "{doc}");
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]), "{doc}");
    }
    let said = srv.stderr.lock().expect("lock").join("\n");
    assert!(said.contains(ISSUER) && said.contains(AUDIENCE), "{said}");

    // The issuer rotates: a token with the new key id is accepted once the file has it.
    let new = Key::new("2026-new");
    let token = new.sign(&claims("acme"));
    assert_eq!(initialize_with(srv.addr, &token).status, 401);
    write_jwks(&jwks, &[&old, &new]);
    // The file is looked at again at most every 2 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = initialize_with(srv.addr, &token).status;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new key is never used"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // A broken file leaves the keys as they were.
    std::fs::write(&jwks, "{broken").expect("write");
    std::thread::sleep(Duration::from_millis(2200));
    let unknown = Key::new("2026-later").sign(&claims("acme"));
    assert_eq!(initialize_with(srv.addr, &unknown).status, 401);
    assert_eq!(initialize_with(srv.addr, &token).status, 200);
    assert_eq!(
        initialize_with(srv.addr, &old.sign(&claims("acme"))).status,
        200
    );
}

#[test]
fn the_audience_defaults_to_the_resource_url() {
    let home = home();
    let key = Key::new("k1");
    let jwks = home.path().join("jwks.json");
    write_jwks(&jwks, &[&key]);
    let j = jwks.to_string_lossy().to_string();
    let srv = HttpServer::start(
        home.path(),
        &["--oauth-issuer", ISSUER, "--oauth-jwks", &j],
        &[],
    );
    let resource = format!("http://{}/mcp", srv.addr);
    let mut c = claims("acme");
    assert_eq!(initialize_with(srv.addr, &key.sign(&c)).status, 401);
    c["aud"] = json!([resource]);
    assert_eq!(initialize_with(srv.addr, &key.sign(&c)).status, 200);
}

fn refused_at_start(home: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .env("AISBX_HOME", home)
        .env_remove("AISBX_MCP_TOKEN")
        .args(["--http", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(125), "{args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_configurations_are_refused_with_a_sentence() {
    let home = home();
    let jwks = home.path().join("jwks.json");
    let j = jwks.to_string_lossy().to_string();
    let e = refused_at_start(home.path(), &["--oauth-issuer", ISSUER]);
    assert!(e.contains("--oauth-jwks"), "{e}");
    let e = refused_at_start(
        home.path(),
        &[
            "--oauth-issuer",
            ISSUER,
            "--oauth-jwks",
            "https://issuer.example.com/jwks",
        ],
    );
    assert!(e.contains("does not fetch keys"), "{e}");
    let e = refused_at_start(home.path(), &["--oauth-issuer", ISSUER, "--oauth-jwks", &j]);
    assert!(e.contains("cannot read the JWKS file"), "{e}");
    std::fs::write(
        &jwks,
        r#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}"#,
    )
    .expect("write");
    let e = refused_at_start(home.path(), &["--oauth-issuer", ISSUER, "--oauth-jwks", &j]);
    assert!(e.contains("shared secret"), "{e}");
    write_jwks(&jwks, &[&Key::new("k1")]);
    let e = refused_at_start(
        home.path(),
        &[
            "--oauth-issuer",
            "http://issuer.example.com",
            "--oauth-jwks",
            &j,
        ],
    );
    assert!(e.contains("https://"), "{e}");
    let e = refused_at_start(
        home.path(),
        &["--oauth-issuer", ISSUER, "--oauth-jwks", &j, "--no-auth"],
    );
    assert!(e.contains("--no-auth"), "{e}");
    let out = Command::new(BIN)
        .env("AISBX_HOME", home.path())
        .env_remove("AISBX_MCP_TOKEN")
        .args([
            "--http",
            "0.0.0.0:0",
            "--oauth-issuer",
            ISSUER,
            "--oauth-jwks",
            &j,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(125));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("give --oauth-resource"), "{e}");
}

/// An RSA key made now: its JWK (without `alg`, as many issuers publish them) and
/// its PKCS#1 DER for signing.
fn rsa_key(kid: &str) -> (Value, Vec<u8>) {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    let started = std::time::Instant::now();
    let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).expect("rsa key");
    eprintln!("made a 2048-bit RSA key in {:?}", started.elapsed());
    let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig",
        "n": B64.encode(key.n().to_be_bytes_trimmed_vartime()),
        "e": B64.encode(key.e().to_be_bytes_trimmed_vartime())});
    let der = key.to_pkcs1_der().expect("pkcs1").as_bytes().to_vec();
    (jwk, der)
}

fn rs(alg: Algorithm, kid: &str, der: &[u8], claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_rsa_der(der)).expect("sign")
}

#[test]
fn rsa_keys_verify_rs256_only() {
    let home = home();
    let (jwk, der) = rsa_key("r1");
    let jwks = home.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [jwk]}).to_string()).expect("write jwks");
    let srv = start(home.path(), &jwks, &[]);
    let good = claims("acme");
    assert_eq!(
        initialize_with(srv.addr, &rs(Algorithm::RS256, "r1", &der, &good)).status,
        200
    );
    // The same key with another RSA algorithm is not accepted: the key is pinned.
    for alg in [Algorithm::RS512, Algorithm::PS256] {
        let r = initialize_with(srv.addr, &rs(alg, "r1", &der, &good));
        assert_eq!(r.status, 401, "{alg:?}");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|h| h.contains("algorithm"))
        );
    }
    // HS256 keyed with the modulus, or with the JWK's text.
    let n = jwk["n"].as_str().expect("n").to_string();
    for secret in [n.as_bytes(), jwk.to_string().as_bytes(), &der[..]] {
        let r = initialize_with(srv.addr, &hs256(secret, "r1", &good));
        assert_eq!(r.status, 401);
    }
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 120);
    assert_eq!(
        initialize_with(srv.addr, &rs(Algorithm::RS256, "r1", &der, &expired)).status,
        401
    );
}
