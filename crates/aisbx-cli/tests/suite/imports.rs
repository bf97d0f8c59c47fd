//! Code given with `--code` behaves as if it were run in /workspace (`python -c`,
//! `node -e`): the files there import and `require` by name, and errors still point
//! at the code's own lines.

use std::path::Path;

use super::common::*;

/// A workdir holding one module per language.
fn project() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    let w = |name: &str, body: &str| std::fs::write(d.path().join(name), body).expect("write");
    w("helper.py", "def f():\n    return 42\n");
    w("lib.js", "module.exports = { f: () => 42 };\n");
    w("Lib.pm", "package Lib;\nsub f { 42 }\n1;\n");
    d
}

fn run_code(dir: &Path, lang: &str, code: &str) -> (serde_json::Value, i32) {
    run_json(&[
        "--workdir",
        dir.to_str().expect("utf-8 path"),
        "--lang",
        lang,
        "--code",
        code,
    ])
}

#[test]
fn python_code_imports_workspace_modules() {
    let p = project();
    let (v, code) = run_code(p.path(), "python", "import helper\nprint(helper.f())");
    assert_eq!((code, stdout(&v)), (0, "42\n"), "{v}");
}

#[test]
fn python_tracebacks_name_the_code_line() {
    let p = project();
    let (v, code) = run_code(
        p.path(),
        "python",
        "import helper\nx = 1\nraise ValueError('boom')",
    );
    assert_eq!(code, 1, "{v}");
    assert!(stderr(&v).contains("line 3"), "{v}");
    assert!(stderr(&v).contains("raise ValueError('boom')"), "{v}");
}

#[test]
fn node_code_requires_relative_and_bare_names() {
    let p = project();
    let (v, code) = run_code(
        p.path(),
        "node",
        "const a = require('./lib'), b = require('lib');\nconsole.log(a.f() + b.f(), require.main === module, __dirname, process.cwd())",
    );
    assert_eq!(
        (code, stdout(&v)),
        (0, "84 true /workspace /workspace\n"),
        "{v}"
    );
}

#[test]
fn node_errors_name_the_code_line() {
    let (v, code) = run_json(&["--lang", "node", "--code", "let a = 1;\nnull.x;"]);
    assert_eq!(code, 1, "{v}");
    assert!(stderr(&v).contains("[code]:2"), "{v}");
}

#[test]
fn perl_code_uses_workspace_modules() {
    let p = project();
    let (v, code) = run_code(p.path(), "perl", "use Lib;\nprint Lib::f(), qq(\\n);");
    assert_eq!((code, stdout(&v)), (0, "42\n"), "{v}");
}
