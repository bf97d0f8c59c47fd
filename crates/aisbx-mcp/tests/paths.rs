//! MCP results never name a host path: a snapshot of a workdir (made at the CLI's
//! side, with the same state directory) is listed with source `workdir`; sandboxes
//! restored from it show no lower layer; profiles show no file; errors name neither
//! the state directory nor the caller's home.

mod common;

use common::*;
use serde_json::{Value, json};

fn result_text(r: &Value) -> String {
    r.to_string()
}

#[test]
fn listings_and_errors_name_no_host_path() {
    let home = home();
    let work = tempfile::Builder::new()
        .prefix("aisbx-mcp-workdir-")
        .tempdir()
        .expect("workdir");
    std::fs::write(work.path().join("main.py"), "print('hi')\n").expect("write");
    let config = tempfile::Builder::new()
        .prefix("aisbx-mcp-config-")
        .tempdir()
        .expect("config");
    let profiles = config.path().join("aisbx/profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    std::fs::write(
        profiles.join("mine.toml"),
        "description = \"mine\"\nextends = [\"base\"]\n",
    )
    .expect("profile");
    std::fs::write(profiles.join("broken.toml"), "limits = 5\n").expect("profile");

    // The CLI's `aisbx snap create from-dir --workdir DIR`: the same service call.
    {
        let svc = aisbx_service::Service::open(aisbx_service::ServiceConfig {
            home: Some(home.path().to_path_buf()),
            ..Default::default()
        })
        .expect("service");
        let meta = aisbx_service::RequestMeta {
            front_end: "cli".into(),
            client: None,
            tool: "snap create".into(),
            tenant: "default".into(),
        };
        let request = aisbx_service::Request::SnapshotCreate {
            name: "from-dir".into(),
            source: aisbx_service::SnapSource::Workdir(work.path().to_path_buf()),
        };
        let info = match svc.call_quiet(&meta, request, &Default::default()) {
            Ok(aisbx_service::Response::SnapshotCreate(info)) => info,
            other => panic!("snapshot of a workdir: {other:?}"),
        };
        // The CLI still sees where it came from.
        assert!(info.source.starts_with("workdir:"), "{}", info.source);
    }

    let xdg = config.path().to_string_lossy().to_string();
    let srv = HttpServer::start(home.path(), &[], &[("XDG_CONFIG_HOME", &xdg)]);
    let s = srv.session();
    let mut seen = Vec::new();
    let mut call = |id: u64, tool: &str, args: Value| {
        let r = s.call(id, tool, args).rpc();
        seen.push((tool.to_string(), result_text(&r)));
        r
    };
    let r = call(
        1,
        "snapshot_restore",
        json!({"name": "from-dir", "sandbox_id": "sb-paths"}),
    );
    assert_eq!(r["result"]["isError"], json!(false), "{r}");
    let r = call(2, "snapshot_list", json!({}));
    let snaps = r["result"]["structuredContent"]["snapshots"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mine = snaps
        .iter()
        .find(|s| s["name"] == "from-dir")
        .expect("listed");
    assert_eq!(mine["source"], "workdir", "{mine}");
    let r = call(3, "sandbox_list", json!({}));
    let sbs = r["result"]["structuredContent"]["sandboxes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sb = sbs.iter().find(|s| s["id"] == "sb-paths").expect("listed");
    assert_eq!(sb["from_snapshot"], "from-dir", "{sb}");
    assert!(sb.get("lower").is_none(), "{sb}");
    let r = call(4, "profile_list", json!({}));
    let profs = r["result"]["structuredContent"]["profiles"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let p = profs
        .iter()
        .find(|p| p["name"] == "mine")
        .expect("user profile listed");
    assert_eq!(p["source"], "user", "{p}");
    assert!(p.get("path").is_none(), "{p}");
    call(
        5,
        "snapshot_create",
        json!({"name": "again", "sandbox_id": "sb-paths"}),
    );
    call(
        6,
        "file_list",
        json!({"sandbox_id": "sb-paths", "path": ".", "recursive": true}),
    );
    call(
        7,
        "snapshot_diff",
        json!({"from": "from-dir", "to": "again"}),
    );
    // Refusals and failures too.
    call(
        8,
        "snapshot_restore",
        json!({"name": "no-such", "sandbox_id": "sb-x"}),
    );
    call(9, "run", json!({"command": ["true"], "profile": "broken"}));
    call(
        10,
        "file_read",
        json!({"sandbox_id": "sb-paths", "path": "nope.txt"}),
    );
    call(
        11,
        "sandbox_destroy",
        json!({"sandbox_id": "no-such-sandbox"}),
    );

    let forbidden = [
        home.path().to_string_lossy().to_string(),
        work.path().to_string_lossy().to_string(),
        config.path().to_string_lossy().to_string(),
    ];
    for (tool, text) in &seen {
        for f in &forbidden {
            assert!(!text.contains(f.as_str()), "{tool} names {f}: {text}");
        }
    }
}
