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
    // Nor does a server on the Unix socket or stdio start: the file says which
    // tenant their users are.
    let sock = home.path().join("s.sock");
    for args in [
        vec!["--listen".to_string(), format!("unix:{}", sock.display())],
        vec![],
    ] {
        let out = std::process::Command::new(BIN)
            .env("AISBX_HOME", home.path())
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not a valid tenants file"),
            "{args:?}"
        );
    }
}

/// A tool call's outcome as text: the structured result, or the error a client
/// is shown (a tool error's text, or a JSON-RPC error's message).
fn outcome(r: &Value) -> Result<Value, String> {
    if let Some(e) = r.get("error") {
        return Err(format!("rpc error: {}", e["message"]));
    }
    if r["result"]["isError"] == json!(true) {
        return Err(r["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string());
    }
    Ok(r["result"]["structuredContent"].clone())
}

#[test]
fn a_tenant_sees_and_touches_only_its_own_sandboxes_and_snapshots() {
    let home = home();
    let acme = tenants::add(home.path(), "acme").expect("add acme");
    let globex = tenants::add(home.path(), "globex").expect("add globex");
    let srv = HttpServer::start(home.path(), &[], &[]);
    let a = Session::open(srv.addr, Some(&acme));
    let b = Session::open(srv.addr, Some(&globex));
    let owner = srv.session();
    let mut id = 10;
    let mut call = |s: &Session, tool: &str, args: Value| {
        id += 1;
        outcome(&s.call(id, tool, args).rpc())
    };

    // acme: a sandbox with a file, and a snapshot of it.
    call(
        &a,
        "build",
        json!({"name": "box", "files": {"secret.txt": "acme's"}}),
    )
    .expect("build");
    call(
        &a,
        "snapshot_create",
        json!({"name": "snap", "sandbox_id": "box"}),
    )
    .expect("snap");
    call(
        &a,
        "snapshot_create",
        json!({"name": "snap2", "sandbox_id": "box"}),
    )
    .expect("snap2");
    assert_eq!(
        call(
            &a,
            "file_read",
            json!({"sandbox_id": "box", "path": "secret.txt"})
        )
        .expect("read")["content"],
        "acme's"
    );

    // globex lists nothing of it, and every tool answers for acme's names
    // exactly as for names that do not exist.
    let listed = call(&b, "sandbox_list", json!({})).expect("list");
    assert_eq!(listed["sandboxes"], json!([]), "{listed}");
    let snaps = call(&b, "snapshot_list", json!({})).expect("list");
    assert_eq!(snaps["snapshots"], json!([]), "{snaps}");
    let attempts: Vec<(&str, Value)> = vec![
        (
            "file_read",
            json!({"sandbox_id": "box", "path": "secret.txt"}),
        ),
        ("file_list", json!({"sandbox_id": "box"})),
        (
            "file_write",
            json!({"sandbox_id": "box", "path": "x", "content": "globex"}),
        ),
        (
            "file_delete",
            json!({"sandbox_id": "box", "path": "secret.txt"}),
        ),
        (
            "run",
            json!({"sandbox_id": "box", "command": ["cat", "secret.txt"]}),
        ),
        (
            "snapshot_create",
            json!({"name": "stolen", "sandbox_id": "box"}),
        ),
        ("sandbox_destroy", json!({"sandbox_id": "box"})),
        (
            "snapshot_restore",
            json!({"name": "snap", "sandbox_id": "mine"}),
        ),
        ("snapshot_diff", json!({"from": "snap", "to": "snap2"})),
        ("snapshot_delete", json!({"name": "snap"})),
    ];
    for (tool, args) in &attempts {
        let theirs = call(&b, tool, args.clone()).expect_err(tool);
        let ghost: Value = serde_json::from_str(
            &args
                .to_string()
                .replace("\"box\"", "\"ghost\"")
                .replace("\"snap\"", "\"ghost\"")
                .replace("\"snap2\"", "\"ghost2\""),
        )
        .expect("json");
        let none = call(&b, tool, ghost).expect_err(tool);
        assert_eq!(
            theirs
                .replace("'box'", "'ghost'")
                .replace("'snap'", "'ghost'")
                .replace("'snap2'", "'ghost2'"),
            none,
            "{tool}: another tenant's name must answer as a missing one"
        );
        assert!(!theirs.contains("acme"), "{tool}: {theirs}");
        assert!(
            theirs.contains("no sandbox named") || theirs.contains("no snapshot named"),
            "{tool}: {theirs}"
        );
    }
    // The server's own user (tenant default) sees none of it either.
    let listed = call(&owner, "sandbox_list", json!({})).expect("list");
    assert_eq!(listed["sandboxes"], json!([]), "{listed}");

    // globex has a namespace of its own: the same names are free for it.
    call(
        &b,
        "build",
        json!({"name": "box", "files": {"secret.txt": "globex's"}}),
    )
    .expect("build");
    call(
        &b,
        "snapshot_create",
        json!({"name": "snap", "sandbox_id": "box"}),
    )
    .expect("snap");
    call(&b, "sandbox_destroy", json!({"sandbox_id": "box"})).expect("destroy");
    call(&b, "snapshot_delete", json!({"name": "snap"})).expect("rm snap");

    // acme's are untouched.
    let r = call(
        &a,
        "run",
        json!({"sandbox_id": "box", "command": ["cat", "secret.txt"]}),
    )
    .expect("run");
    assert_eq!(r["stdout"], "acme's");
    let snaps = call(&a, "snapshot_list", json!({})).expect("list");
    assert_eq!(
        snaps["snapshots"].as_array().map(Vec::len),
        Some(2),
        "{snaps}"
    );
    let d = call(&a, "snapshot_diff", json!({"from": "snap", "to": "snap2"})).expect("diff");
    assert_eq!(d["changed"], json!([]));

    // On disk: acme's state is under tenants/acme; as root its files belong to
    // its own host id, not the default one nor globex's.
    let acme_dir = home.path().join("tenants/acme");
    assert!(acme_dir.join("sandboxes/box/meta.json").exists());
    assert!(acme_dir.join("snapshots/manifests").is_dir());
    assert!(!home.path().join("sandboxes/box").exists());
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::MetadataExt;
        let f = call(
            &a,
            "run",
            json!({"sandbox_id": "box", "command": ["sh", "-c", "echo x > made-here"]}),
        );
        f.expect("run");
        let file = walk_find(&acme_dir.join("sandboxes/box"), "made-here").expect("file on host");
        let uid = std::fs::metadata(&file).expect("stat").uid();
        let t = tenants::load(home.path()).expect("load");
        let index = t.settings["acme"].index.expect("acme's index");
        assert_eq!(uid, tenants::host_id(index), "{}", file.display());
        assert_ne!(t.settings["globex"].index, Some(index));
    }
    call(&a, "sandbox_destroy", json!({"sandbox_id": "box"})).expect("destroy");
    drop(srv);

    // Every line names its tenant.
    let lines = aisbx_service::audit::tail(&home.path().join("audit.jsonl"), 200).expect("tail");
    let tenants_of = |tool: &str| -> std::collections::BTreeSet<String> {
        lines
            .iter()
            .filter(|l| l["tool"] == tool)
            .map(|l| l["tenant"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    assert_eq!(
        tenants_of("sandbox_list"),
        ["default", "globex"].map(String::from).into()
    );
    assert_eq!(
        tenants_of("file_read"),
        ["acme", "globex"].map(String::from).into()
    );
    assert_eq!(
        tenants_of("build"),
        ["acme", "globex"].map(String::from).into()
    );
}

/// The first file named `name` under `dir`.
fn walk_find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if e.file_name() == name {
            return Some(p);
        }
        if e.file_type().ok()?.is_dir()
            && let Some(f) = walk_find(&p, name)
        {
            return Some(f);
        }
    }
    None
}

#[test]
fn quotas_hold_under_32_concurrent_clients_and_the_rate_limit_answers_429() {
    let home = home();
    let acme = tenants::add(home.path(), "acme").expect("add acme");
    let globex = tenants::add(home.path(), "globex").expect("add globex");
    tenants::set_quota(home.path(), "acme", |q| q.concurrent_runs = Some(2)).expect("quota");
    tenants::set_quota(home.path(), "globex", |q| q.runs_per_minute = Some(3)).expect("quota");
    // The server's own admission is wider than the quota: the quota must be what
    // holds.
    let srv = HttpServer::start(
        home.path(),
        &["--max-runs", "64", "--max-queued", "256"],
        &[],
    );

    let sessions: Vec<Session> = (0..32)
        .map(|_| Session::open(srv.addr, Some(&acme)))
        .collect();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(sessions.len()));
    let threads: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                let r = s.call(
                    100 + i as u64,
                    "run",
                    json!({"command": ["sh", "-c", "date +%s%N; sleep 1; date +%s%N"]}),
                );
                outcome(&r.rpc())
            })
        })
        .collect();
    let mut spans = Vec::new();
    let mut refused = 0;
    for t in threads {
        match t.join().expect("join") {
            Ok(v) => {
                let stamps: Vec<u128> = v["stdout"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.parse().ok())
                    .collect();
                assert_eq!(stamps.len(), 2, "{v}");
                spans.push((stamps[0], stamps[1]));
            }
            Err(e) => {
                assert!(
                    e.contains("quota concurrent_runs reached for tenant 'acme'")
                        && e.contains("limit 2"),
                    "{e}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(spans.len() + refused, 32);
    assert!(spans.len() >= 2, "{} ran", spans.len());
    // At no moment were more than two of acme's runs going on.
    let most = spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(most <= 2, "{most} runs at once: {spans:?}");
    eprintln!(
        "{} ran, {refused} refused, at most {most} at once",
        spans.len()
    );

    // The slots were all given back.
    let s = Session::open(srv.addr, Some(&acme));
    let q = outcome(&s.call(1, "quota", json!({})).rpc()).expect("quota");
    assert_eq!(q["tenant"], "acme");
    assert_eq!(
        q["quotas"][0],
        json!({"quota": "concurrent_runs", "used": 0, "limit": 2, "remaining": 2})
    );

    // globex: three runs a minute, the fourth is answered 429 with Retry-After
    // (acme's slots are not globex's concern).
    let g = Session::open(srv.addr, Some(&globex));
    for i in 0..3 {
        outcome(&g.call(200 + i, "run", json!({"command": ["true"]})).rpc()).expect("within");
    }
    let r = g.call(210, "run", json!({"command": ["true"]}));
    assert_eq!(r.status, 429, "{:?}", String::from_utf8_lossy(&r.body));
    let wait: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&wait), "{wait}");
    let body: Value = serde_json::from_slice(&r.body).expect("json");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("quota runs_per_minute reached for tenant 'globex': 3 runs started in the last minute, limit 3"),
        "{body}"
    );
    assert_eq!(body["id"], 210);
    let q = outcome(&g.call(211, "quota", json!({})).rpc()).expect("quota");
    assert_eq!(
        q["quotas"][4],
        json!({"quota": "runs_per_minute", "used": 3, "limit": 3, "remaining": 0})
    );
    // Other tools are not rate limited.
    outcome(&g.call(212, "sandbox_list", json!({})).rpc()).expect("list");
    drop(srv);
    let lines = aisbx_service::audit::tail(&home.path().join("audit.jsonl"), 200).expect("tail");
    assert!(lines.iter().any(|l| {
        l["tenant"] == "globex"
            && l["decision"] == "deny"
            && l["reason"]
                .as_str()
                .is_some_and(|r| r.contains("runs_per_minute"))
    }));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["tenant"] == "acme"
                && l["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("concurrent_runs")))
            .count(),
        refused
    );
}

#[test]
fn stdio_and_unix_socket_callers_are_the_tenant_of_their_uid() {
    let home = home();
    tenants::add(home.path(), "acme").expect("add acme");
    tenants::add(home.path(), "globex").expect("add globex");
    // SAFETY: getter.
    let uid = unsafe { libc::getuid() };
    tenants::map_uid(home.path(), &uid.to_string(), Some("acme")).expect("map");

    // stdio: the uid's tenant.
    let mut s = StdioServer::start_initialized(home.path());
    let r = s.call(1, "build", json!({"name": "mine"}));
    assert_eq!(structured(&r)["sandbox_id"], "mine");
    let r = s.call(2, "quota", json!({}));
    assert_eq!(structured(&r)["tenant"], "acme");
    drop(s);
    assert!(home.path().join("tenants/acme/sandboxes/mine").is_dir());

    // --tenant: only a tenant this uid may be (root: any of the file's).
    let out = std::process::Command::new(BIN)
        .env("AISBX_HOME", home.path())
        .args(["--tenant", "globex"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    if uid == 0 {
        let mut s = StdioServer::start_with(home.path(), &["--tenant", "globex"]);
        s.request(initialize_request(0));
        s.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        let r = s.call(3, "sandbox_list", json!({}));
        assert_eq!(structured(&r)["sandboxes"], json!([]), "{r}");
        let r = s.call(4, "quota", json!({}));
        assert_eq!(structured(&r)["tenant"], "globex");
    } else {
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(err.contains("may not act as another"), "{err}");
    }
    let out = std::process::Command::new(BIN)
        .env("AISBX_HOME", home.path())
        .args(["--tenant", "nobody-here"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such tenant"));

    // The Unix socket: the peer's uid decides, not the server's --tenant.
    if uid == 0 {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("mcp.sock");
        let _srv = UnixServer::start_with(home.path(), &sock, &["--tenant", "globex"]);
        let r = http_unix(&sock, "POST", &[], Some(&initialize_request(0)));
        let id = r.header("mcp-session-id").expect("session").to_string();
        let h = [
            ("Mcp-Session-Id", id.as_str()),
            ("MCP-Protocol-Version", PROTOCOL),
        ];
        http_unix(
            &sock,
            "POST",
            &h,
            Some(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})),
        );
        let r = http_unix(
            &sock,
            "POST",
            &h,
            Some(&json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                "params": {"name": "sandbox_list", "arguments": {}}})),
        );
        let ids: Vec<String> = structured(&r.rpc())["sandboxes"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|s| s["id"].as_str().map(String::from))
            .collect();
        assert_eq!(ids, ["mine"], "root's uid is mapped to acme");
    }
}
