//! Code sent to `run` imports the files given with it, written by `build`, or
//! written earlier into the sandbox, as `python -c` / `node -e` in /workspace would.

mod common;

use serde_json::{Value, json};

use common::*;

fn stdout_of(r: &Value) -> String {
    assert_ne!(r["result"]["isError"], true, "{r}");
    r["result"]["structuredContent"]["stdout"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn code_imports_files_given_with_the_run_and_in_a_sandbox() {
    let home = home();
    let mut s = StdioServer::start_initialized(home.path());
    let r = s.call(
        2,
        "run",
        json!({"language": "python", "files": {"helper.py": "def f(): return 42"},
               "code": "import helper\nprint(helper.f())"}),
    );
    assert_eq!(stdout_of(&r), "42\n");
    let r = s.call(
        3,
        "run",
        json!({"language": "node", "files": {"lib/util.js": "exports.f = () => 7"},
               "code": "console.log(require('./lib/util').f())"}),
    );
    assert_eq!(stdout_of(&r), "7\n");

    let b = s.call(
        4,
        "build",
        json!({"name": "imp", "profile": "python", "files": {"helper.py": "def f(): return 1"}}),
    );
    assert_ne!(b["result"]["isError"], true, "{b}");
    let r = s.call(
        5,
        "run",
        json!({"sandbox_id": "imp", "language": "python", "code": "import helper\nprint(helper.f())"}),
    );
    assert_eq!(stdout_of(&r), "1\n");
    let w = s.call(
        6,
        "file_write",
        json!({"sandbox_id": "imp", "path": "later.py", "content": "X = 'later'"}),
    );
    assert_ne!(w["result"]["isError"], true, "{w}");
    let r = s.call(
        7,
        "run",
        json!({"sandbox_id": "imp", "language": "python", "code": "from later import X\nprint(X)"}),
    );
    assert_eq!(stdout_of(&r), "later\n");
    let d = s.call(8, "sandbox_destroy", json!({"sandbox_id": "imp"}));
    assert_ne!(d["result"]["isError"], true, "{d}");
}
