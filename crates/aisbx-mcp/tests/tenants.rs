//! Tenant tokens over HTTP: a token of `tenants.toml` is accepted next to the
//! server's own, names its tenant (and token id) in the audit log, stops working as
//! soon as it is revoked or its tenant removed, and cannot use another's session.

mod common;

use std::os::unix::fs::PermissionsExt;

use aisbx_service::tenants;
use common::*;
use serde_json::{Value, json};

fn structured(r: &Value) -> &Value {
    assert_eq!(r["result"]["isError"], json!(false), "tool failed: {r}");
    &r["result"]["structuredContent"]
}

fn initialize_with(srv: &HttpServer, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    http(
        srv.addr,
        "POST",
        &[("Authorization", &auth)],
        Some(&initialize_request(1)),
    )
    .status
}

#[test]
fn tenant_tokens_are_accepted_audited_and_revocable() {
    let home = home();
    let acme = tenants::add(home.path(), "acme").expect("add acme");
    let globex = tenants::add(home.path(), "globex").expect("add globex");
    let srv = HttpServer::start(home.path(), &[], &[]);
    let said = srv.stderr.lock().expect("lock").join("\n");
    assert!(said.contains("the tokens of 2 tenants"), "{said}");

    let s = Session::open(srv.addr, Some(&acme));
    let r = s.call(1, "run", json!({"command": ["echo", "acme"]}));
    assert_eq!(structured(&r.rpc())["stdout"], "acme\n");
    // The server's own token still works.
    let own = srv.session();
    let r = own.call(2, "run", json!({"command": ["echo", "owner"]}));
    assert_eq!(structured(&r.rpc())["stdout"], "owner\n");
    // globex cannot use acme's session, nor can the owner.
    for t in [globex.as_str(), srv.token.as_deref().expect("own token")] {
        let hijack = Session {
            addr: s.addr,
            id: s.id.clone(),
            auth: Some(format!("Bearer {t}")),
        };
        assert_eq!(hijack.call(3, "profile_list", json!({})).status, 404);
    }
    // A near miss is refused.
    assert_eq!(initialize_with(&srv, &acme[..acme.len() - 1]), 401);
    assert_eq!(initialize_with(&srv, &format!("{acme}0")), 401);

    // Rotation with --keep: both tokens work; without: only the newest.
    let acme2 = tenants::rotate(home.path(), "acme", true).expect("rotate");
    assert_eq!(initialize_with(&srv, &acme), 200);
    assert_eq!(initialize_with(&srv, &acme2), 200);
    let acme3 = tenants::rotate(home.path(), "acme", false).expect("rotate");
    assert_eq!(initialize_with(&srv, &acme), 401, "rotated away at once");
    assert_eq!(initialize_with(&srv, &acme2), 401);
    let s3 = Session::open(srv.addr, Some(&acme3));
    // The session opened with the old token goes on with the new one (same tenant).
    let same = Session {
        addr: s.addr,
        id: s.id.clone(),
        auth: Some(format!("Bearer {acme3}")),
    };
    let r = same.call(4, "run", json!({"command": ["echo", "acme-again"]}));
    assert_eq!(structured(&r.rpc())["stdout"], "acme-again\n");

    // Removing a tenant ends its access at once, its sessions included.
    tenants::remove(home.path(), "acme").expect("rm");
    assert_eq!(initialize_with(&srv, &acme3), 401);
    assert_eq!(s3.call(5, "profile_list", json!({})).status, 401);
    assert_eq!(initialize_with(&srv, &globex), 200);

    // A tenants file others can read accepts no tenant token (the owner's still works).
    let file = home.path().join(tenants::TENANTS_FILE);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_eq!(initialize_with(&srv, &globex), 401);
    srv.session();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(initialize_with(&srv, &globex), 200);

    drop(srv);
    let lines = aisbx_service::audit::tail(&home.path().join("audit.jsonl"), 100).expect("tail");
    let clients: Vec<String> = lines
        .iter()
        .filter(|l| l["tool"] == "run")
        .map(|l| l["client"].as_str().unwrap_or("").to_string())
        .collect();
    let t = |tok: &str| -> String {
        // The id `tenant list` shows for this token.
        let id = tenants::load(home.path())
            .ok()
            .and_then(|f| f.authenticate(tok.as_bytes()))
            .map(|o| o.token_id);
        id.unwrap_or_default()
    };
    assert_eq!(clients.len(), 3, "{clients:?}");
    assert!(
        clients[0].starts_with("tenant=acme; token=") && clients[0].ends_with("; client=aisbx-it"),
        "{clients:?}"
    );
    assert_eq!(clients[1], "aisbx-it");
    assert!(clients[2].starts_with("tenant=acme; token="), "{clients:?}");
    assert_ne!(clients[0], clients[2], "two tokens, two ids");
    // globex's id is the one the file lists.
    assert_eq!(t(&globex).len(), 12);
}

#[test]
fn a_broken_tenants_file_stops_the_server_at_start() {
    let home = home();
    let file = home.path().join(tenants::TENANTS_FILE);
    std::fs::write(&file, "not toml [").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = std::process::Command::new(BIN)
        .env("AISBX_HOME", home.path())
        .env_remove("AISBX_MCP_TOKEN")
        .args(["--http", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tenants.toml") && err.contains("not a valid tenants file"),
        "{err}"
    );
    // The Unix socket (no tokens there) does not read it.
    let sock = home.path().join("s.sock");
    let _srv = UnixServer::start(home.path(), &sock);
}
