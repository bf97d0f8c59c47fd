//! `sandbox_destroy` while a run in the sandbox is still going (the run is in a
//! jail helper process, as for every MCP run): the run is stopped first.

mod common;

use std::time::Duration;

use serde_json::json;

use common::*;

#[test]
fn destroy_stops_a_running_sandbox_first() {
    let home = home();
    let mut s = StdioServer::start_initialized(home.path());
    let b = s.call(2, "build", json!({"name": "busy"}));
    assert_eq!(
        b["result"]["structuredContent"]["sandbox_id"], "busy",
        "{b}"
    );
    let marker = unique_sleep();
    s.send(
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "run",
            "arguments": {"sandbox_id": "busy", "command": ["sh", "-c", format!("sleep {marker}")]}
        }}),
    );
    assert!(
        wait_present(&marker, Duration::from_secs(20)),
        "the run did not start"
    );
    let r = s.call(4, "sandbox_destroy", json!({"sandbox_id": "busy"}));
    assert_eq!(r["result"]["structuredContent"]["destroyed"], true, "{r}");
    // By the time destroy answered, the run was over.
    assert!(
        processes_with(&marker).is_empty(),
        "the run outlived destroy"
    );
    let run = s.response(3, Duration::from_secs(10));
    let result = &run["result"]["structuredContent"];
    assert_ne!(result["exit_code"], 0, "{run}");
    assert!(
        result["stderr"]
            .as_str()
            .unwrap_or_default()
            .contains("sandbox 'busy' was removed"),
        "{run}"
    );
    assert!(
        !home.path().join("sandboxes/busy").exists(),
        "the sandbox's files are gone"
    );
    let r = s.call(5, "file_list", json!({"sandbox_id": "busy"}));
    assert!(
        r.get("error").is_some() || r["result"]["isError"] == true,
        "{r}"
    );
}
