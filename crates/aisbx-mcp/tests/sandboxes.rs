//! The sandbox, file and snapshot tools through the real `aisbx-mcp` binary.

mod common;

use serde_json::{Value, json};

use common::*;

fn structured(r: &Value) -> &Value {
    assert_ne!(r["result"]["isError"], true, "{r}");
    &r["result"]["structuredContent"]
}

/// The text of an isError result (never a CLI command).
fn tool_error(r: &Value) -> String {
    assert_eq!(r["result"]["isError"], true, "{r}");
    let t = r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!t.contains("`aisbx "), "{t}");
    t
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
    // What the server understood but could not do is an isError result in MCP's terms.
    let t = tool_error(&s.call(
        19,
        "snapshot_restore",
        json!({"name": "nope", "sandbox_id": "x"}),
    ));
    assert!(
        t.contains("no snapshot named 'nope'") && t.contains("snapshot_list"),
        "{t}"
    );
    let t = tool_error(&s.call(
        20,
        "snapshot_create",
        json!({"name": "v1", "sandbox_id": "w"}),
    ));
    assert!(
        t.contains("already exists") && t.contains("snapshot_delete"),
        "{t}"
    );
    let t = tool_error(&s.call(
        22,
        "run",
        json!({"sandbox_id": "gone", "command": ["true"]}),
    ));
    assert!(t.contains("sandbox_list") && !t.contains("aisbx "), "{t}");
    assert_eq!(
        bad_field(&s.call(21, "sandbox_destroy", json!({"sandbox_id": 5}))),
        "sandbox_id"
    );
}

#[test]
fn binary_files_deletes_and_failed_setup_over_mcp() {
    let home = home();
    let mut s = StdioServer::start_initialized(home.path());
    // A failed setup step stops the build, names the step and the skipped ones.
    let b = s.call(
        2,
        "build",
        json!({"name": "p", "setup": ["echo a", "exit 3", "echo never"],
               "files": {"bin/blob": {"content": "AAEC/w==", "encoding": "base64"}, "t.txt": "text"}}),
    );
    let t = tool_error(&b);
    assert!(
        t.starts_with("setup step 2 of 3 (`exit 3`) failed: exit 3"),
        "{t}"
    );
    assert!(t.contains("Skipped: 3 (`echo never`)"), "{t}");
    assert_eq!(
        b["result"]["structuredContent"]["setup"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    // Binary files arrive intact, through `files` and file_write alike.
    let r = s.call(
        3,
        "run",
        json!({"sandbox_id": "p", "command": ["od", "-An", "-tx1", "bin/blob"]}),
    );
    assert_eq!(
        structured(&r)["stdout"].as_str().map(str::trim),
        Some("00 01 02 ff")
    );
    let r = s.call(
        4,
        "file_write",
        json!({"sandbox_id": "p", "path": "b2", "content": "/wA=", "encoding": "base64"}),
    );
    assert_eq!(structured(&r)["bytes"], 2);
    let r = s.call(5, "file_read", json!({"sandbox_id": "p", "path": "b2"}));
    assert_eq!(structured(&r)["encoding"], "base64");
    assert_eq!(structured(&r)["content"], "/wA=");
    // file_delete removes a symlink, never its target; a file; a directory.
    s.call(
        6,
        "run",
        json!({"sandbox_id": "p", "command": ["ln", "-s", "t.txt", "link"]}),
    );
    let r = s.call(7, "file_delete", json!({"sandbox_id": "p", "path": "link"}));
    assert_eq!(structured(&r)["kind"], "symlink");
    let r = s.call(8, "file_read", json!({"sandbox_id": "p", "path": "t.txt"}));
    assert_eq!(structured(&r)["content"], "text");
    let r = s.call(9, "file_delete", json!({"sandbox_id": "p", "path": "bin"}));
    assert_eq!(structured(&r)["kind"], "dir");
    let r = s.call(
        10,
        "file_list",
        json!({"sandbox_id": "p", "recursive": true}),
    );
    let paths: Vec<&str> = structured(&r)["entries"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["path"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(paths, ["b2", "t.txt"]);
    let t = tool_error(&s.call(11, "file_delete", json!({"sandbox_id": "p", "path": "bin"})));
    assert!(t.contains("does not exist"), "{t}");
    // A path through a symlink to the host is not followed.
    s.call(
        12,
        "run",
        json!({"sandbox_id": "p", "command": ["ln", "-s", "/etc", "etc"]}),
    );
    let t = tool_error(&s.call(
        13,
        "file_delete",
        json!({"sandbox_id": "p", "path": "etc/hostname"}),
    ));
    assert!(t.contains("does not exist"), "{t}");
    assert!(std::path::Path::new("/etc/hostname").exists());
    assert_eq!(
        bad_field(&s.call(
            14,
            "file_delete",
            json!({"sandbox_id": "p", "path": "../x"})
        )),
        "path"
    );
    // snapshot_delete.
    s.call(
        15,
        "snapshot_create",
        json!({"name": "s1", "sandbox_id": "p"}),
    );
    let r = s.call(16, "snapshot_delete", json!({"name": "s1"}));
    assert_eq!(structured(&r)["name"], "s1");
    let r = s.call(17, "snapshot_list", json!({}));
    assert_eq!(structured(&r)["snapshots"], json!([]));
    let t = tool_error(&s.call(18, "snapshot_delete", json!({"name": "s1"})));
    assert!(t.contains("no snapshot named 's1'"), "{t}");
    // In a copy-on-write sandbox, deleting a file of the snapshot hides it there only.
    s.call(
        19,
        "snapshot_create",
        json!({"name": "s2", "sandbox_id": "p"}),
    );
    let r = s.call(
        20,
        "snapshot_restore",
        json!({"name": "s2", "sandbox_id": "cow"}),
    );
    assert_eq!(structured(&r)["sandbox_id"], "cow");
    let r = s.call(
        21,
        "file_delete",
        json!({"sandbox_id": "cow", "path": "t.txt"}),
    );
    assert_eq!(structured(&r)["kind"], "file");
    let t = tool_error(&s.call(
        22,
        "file_read",
        json!({"sandbox_id": "cow", "path": "t.txt"}),
    ));
    assert!(t.contains("does not exist"), "{t}");
    let r = s.call(23, "file_read", json!({"sandbox_id": "p", "path": "t.txt"}));
    assert_eq!(structured(&r)["content"], "text");
    let r = s.call(
        24,
        "snapshot_restore",
        json!({"name": "s2", "sandbox_id": "cow2"}),
    );
    assert_eq!(structured(&r)["sandbox_id"], "cow2");
    let r = s.call(
        25,
        "file_read",
        json!({"sandbox_id": "cow2", "path": "t.txt"}),
    );
    assert_eq!(structured(&r)["content"], "text");
}
