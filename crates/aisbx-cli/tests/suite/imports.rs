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

#[test]
fn a_script_finds_its_siblings() {
    // Not under /tmp, which the sandbox has its own of.
    let p = tempfile::Builder::new()
        .prefix("aisbx-script")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    for name in ["helper.py", "lib.js"] {
        std::fs::copy(project().path().join(name), p.path().join(name)).expect("copy");
    }
    std::fs::write(
        p.path().join("main.py"),
        "import helper, sys\nprint(helper.f(), sys.argv[1:])\n",
    )
    .expect("write");
    std::fs::write(
        p.path().join("main.js"),
        "console.log(require('./lib').f(), __dirname === process.argv[2])\n",
    )
    .expect("write");
    let dir = std::fs::canonicalize(p.path()).expect("canonical");
    let py = dir.join("main.py");
    let (v, code) = run_json(&[py.to_str().expect("utf-8"), "--", "a"]);
    assert_eq!((code, stdout(&v)), (0, "42 ['a']\n"), "{v}");
    let js = dir.join("main.js");
    let (v, code) = run_json(&[
        js.to_str().expect("utf-8"),
        "--",
        dir.to_str().expect("utf-8"),
    ]);
    assert_eq!((code, stdout(&v)), (0, "42 true\n"), "{v}");
    // Its directory is read-only inside.
    std::fs::write(p.path().join("w.py"), "open(__file__ + '.x', 'w')\n").expect("write");
    let (v, code) = run_json(&[dir.join("w.py").to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{v}");
    assert!(stderr(&v).contains("Read-only file system"), "{v}");
}

#[test]
fn a_script_whose_directory_may_not_be_bound_runs_from_a_copy() {
    // /tmp itself is shared by every user: never bound.
    let path = std::env::temp_dir().join(format!("aisbx-alone-{}.py", marker()));
    std::fs::write(&path, "print('alone')\n").expect("write");
    let out = aisbx(&["run", path.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alone\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("running a copy of"), "{err}");
    assert!(err.contains("which every user shares"), "{err}");
    // A directory inside /tmp would be hidden by the sandbox's own /tmp.
    let p = project();
    let f = p.path().join("alone.py");
    std::fs::write(&f, "print('copy')\n").expect("write");
    let out = aisbx(&["run", f.to_str().expect("utf-8")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "copy\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("under /tmp, which the sandbox has its own of"),
        "{err}"
    );
}
