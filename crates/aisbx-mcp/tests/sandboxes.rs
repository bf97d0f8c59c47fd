//! The sandbox, file and snapshot tools through the real `aisbx-mcp` binary.

mod common;

use serde_json::{Value, json};

use common::*;

fn structured(r: &Value) -> &Value {
    assert_ne!(r["result"]["isError"], true, "{r}");
    &r["result"]["structuredContent"]
}

fn bad_field(r: &Value) -> String {
    assert_eq!(r["error"]["code"], -32602, "{r}");
    r["error"]["data"]["field"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn files_snapshots_and_restore_over_mcp() {
    let home = home();
    let mut s = StdioServer::start_initialized(home.path());
    let b = s.call(2, "build", json!({"name": "w"}));
    assert_eq!(structured(&b)["sandbox_id"], "w");
    let r = s.call(
        3,
        "file_write",
        json!({"sandbox_id": "w", "path": "src/main.py", "content": "print('v1')\n"}),
    );
    assert_eq!(structured(&r)["bytes"], 12);
    let r = s.call(
        4,
        "file_read",
        json!({"sandbox_id": "w", "path": "src/main.py"}),
    );
    assert_eq!(structured(&r)["content"], "print('v1')\n");
    assert_eq!(structured(&r)["encoding"], "utf-8");
    let r = s.call(
        5,
        "file_list",
        json!({"sandbox_id": "w", "recursive": true}),
    );
    let paths: Vec<&str> = structured(&r)["entries"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["path"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(paths, ["src", "src/main.py"]);
    let r = s.call(
        6,
        "snapshot_create",
        json!({"name": "v1", "sandbox_id": "w"}),
    );
    assert_eq!(structured(&r)["files"], 1);
    s.call(
        7,
        "file_write",
        json!({"sandbox_id": "w", "path": "src/main.py", "content": "print('v2')\n"}),
    );
    s.call(
        8,
        "snapshot_create",
        json!({"name": "v2", "sandbox_id": "w"}),
    );
    let r = s.call(9, "snapshot_diff", json!({"from": "v1", "to": "v2"}));
    assert_eq!(structured(&r)["changed"], json!(["src/main.py"]));
    // Go back: a new sandbox from v1, copy-on-write.
    let r = s.call(
        10,
        "snapshot_restore",
        json!({"name": "v1", "sandbox_id": "back"}),
    );
    assert_eq!(structured(&r)["sandbox_id"], "back");
    let r = s.call(
        11,
        "run",
        json!({"sandbox_id": "back", "command": ["cat", "src/main.py"]}),
    );
    assert_eq!(structured(&r)["stdout"], "print('v1')\n");
    let r = s.call(12, "snapshot_list", json!({}));
    assert_eq!(
        structured(&r)["snapshots"].as_array().map(Vec::len),
        Some(2)
    );
    let r = s.call(13, "sandbox_list", json!({}));
    assert_eq!(
        structured(&r)["sandboxes"].as_array().map(Vec::len),
        Some(2)
    );
    let r = s.call(14, "sandbox_destroy", json!({"sandbox_id": "back"}));
    assert_eq!(structured(&r)["destroyed"], true);
    // A file_read of a sandbox symlink to a host file is refused, not followed.
    s.call(
        15,
        "run",
        json!({"sandbox_id": "w", "command": ["ln", "-s", "/etc/passwd", "pw"]}),
    );
    let r = s.call(16, "file_read", json!({"sandbox_id": "w", "path": "pw"}));
    assert_eq!(bad_field(&r), "path");
    // Bad arguments name their field.
    assert_eq!(
        bad_field(&s.call(17, "file_read", json!({"sandbox_id": "w", "path": "../x"}))),
        "path"
    );
    assert_eq!(
        bad_field(&s.call(18, "file_write", json!({"sandbox_id": "w", "path": "a"}))),
        "content"
    );
    assert_eq!(
        bad_field(&s.call(
            19,
            "snapshot_restore",
            json!({"name": "nope", "sandbox_id": "x"})
        )),
        "snapshot"
    );
    assert_eq!(
        bad_field(&s.call(
            20,
            "snapshot_create",
            json!({"name": "v1", "sandbox_id": "w"})
        )),
        "name"
    );
    assert_eq!(
        bad_field(&s.call(21, "sandbox_destroy", json!({"sandbox_id": 5}))),
        "sandbox_id"
    );
}
