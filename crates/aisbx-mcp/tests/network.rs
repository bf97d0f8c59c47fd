//! Network by allowlist over MCP (docs/NETWORK.md): `build` with a pip setup
//! command installs through the proxy, and `run` reports what was refused.

mod common;

use serde_json::{Value, json};

use common::*;

fn structured(r: &Value) -> &Value {
    assert_ne!(r["result"]["isError"], true, "{r}");
    &r["result"]["structuredContent"]
}

#[test]
fn build_installs_with_pip_and_run_lists_refused_destinations() {
    let home = home();
    let mut s = StdioServer::start_initialized(home.path());
    let b = s.call(
        2,
        "build",
        json!({"name": "py", "profile": "python-dev",
               "setup": ["python3 -m pip install --ignore-installed six"]}),
    );
    let setup = &structured(&b)["setup"][0];
    assert_eq!(setup["exit_code"], 0, "{b:#}");
    let r = s.call(
        3,
        "run",
        json!({"sandbox_id": "py", "language": "python",
               "code": "import six, urllib.request\nprint(six.__file__)\ntry:\n    urllib.request.urlopen('https://unlisted.example.com/', timeout=10)\nexcept Exception as e:\n    print('refused')\n"}),
    );
    let out = structured(&r);
    assert_eq!(out["exit_code"], 0, "{r:#}");
    let stdout = out["stdout"].as_str().unwrap_or_default();
    assert!(stdout.starts_with("/workspace/.local/"), "{stdout}");
    assert!(stdout.ends_with("refused\n"), "{stdout}");
    assert_eq!(
        out["network_denied"],
        json!(["unlisted.example.com:443"]),
        "{r:#}"
    );
    let text = r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        text.contains("network refused: unlisted.example.com:443"),
        "{text}"
    );
}
