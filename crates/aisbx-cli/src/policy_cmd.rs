//! `aisbx policy init|check|test|eval|status`: write, check, test and inspect the
//! Rego policy that decides every request (docs/POLICY.md). The service reads
//! and evaluates the bundle (`aisbx_service::policy`); this file only prints.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use aisbx_service::policy::{self, Bundle, DEFAULT_FILES, Origin, Sources};
use clap::Subcommand;

use crate::{EXIT_AISBX, print_json};

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Write the default policy and its tests into DIR, to start a policy from.
    Init {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Parse every file of the bundle; errors are reported as file:line:col.
    Check {
        /// The policy directory (default: the one requests are decided by).
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Run every `test_*` rule of the bundle and print pass or fail for each
    /// (exit status 1 when one fails).
    Test {
        /// The policy directory (default: the one requests are decided by).
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print the decision for an input document (docs/POLICY.md); exit status 0
    /// when it is allowed, 1 when it is refused.
    Eval {
        /// A JSON file holding the input document (`-` for standard input).
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// Also print the input, each rule's value and what the policy printed.
        #[arg(long)]
        explain: bool,
        /// The policy directory (default: the one requests are decided by).
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print the JSON Schema of the input document every decision gets (the
    /// same as docs/policy-input.schema.json), for editors and policy tests.
    Schema,
    /// Which policy decides requests: its directory, its bundle hash, the git
    /// commit of the directory and whether it has changes, and what a running
    /// server did when the files last changed.
    Status {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(c: PolicyCmd, global: Option<PathBuf>) -> u8 {
    let home = aisbx_service::default_home();
    // A directory given to the command, else --policy, else $AISBX_POLICY.
    let explicit = |dir: Option<PathBuf>| dir.or_else(|| global.clone()).or_else(policy::env_dir);
    let locate = |dir: Option<PathBuf>| -> Result<Sources, u8> {
        Sources::locate(explicit(dir).as_deref(), &home).map_err(|e| {
            eprintln!("aisbx: {e}");
            EXIT_AISBX
        })
    };
    match c {
        PolicyCmd::Init { dir } => init(&dir),
        PolicyCmd::Check { dir } => match locate(dir) {
            Ok(s) => check(&s),
            Err(c) => c,
        },
        PolicyCmd::Test { dir } => match locate(dir) {
            Ok(s) => test(&s),
            Err(c) => c,
        },
        PolicyCmd::Eval {
            input,
            explain,
            dir,
        } => match locate(dir) {
            Ok(s) => eval(&s, &input, explain),
            Err(c) => c,
        },
        PolicyCmd::Schema => {
            outln!("{}", policy::input::schema_json().trim_end());
            0
        }
        PolicyCmd::Status { json } => match locate(None) {
            Ok(s) => status(&home, &s, json),
            Err(c) => c,
        },
    }
}

fn init(dir: &Path) -> u8 {
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("aisbx: cannot create {}: {e}", dir.display());
        return EXIT_AISBX;
    }
    for (name, text) in DEFAULT_FILES {
        let path = dir.join(name);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
        if let Err(e) = written {
            let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
                "it already exists; remove it or choose another directory".to_string()
            } else {
                e.to_string()
            };
            eprintln!("aisbx: cannot write {}: {why}", path.display());
            return EXIT_AISBX;
        }
        outln!("wrote {}", path.display());
    }
    outln!(
        "Edit the policy, then `aisbx policy test {}` and run with `aisbx --policy {} run ...`.",
        dir.display(),
        dir.display()
    );
    0
}

fn check(s: &Sources) -> u8 {
    let problems = s.check();
    if problems.is_empty() {
        outln!(
            "{}: {} ok ({})",
            s.origin,
            crate::counted(s.files.len() as u64, "file", "files"),
            s.hash
        );
        return 0;
    }
    for p in &problems {
        eprintln!("{}", with_dir(s, p));
    }
    eprintln!(
        "aisbx: {} in the policy {}",
        crate::counted(problems.len() as u64, "problem", "problems"),
        s.origin
    );
    1
}

/// A message naming a bundle file by its name, with its directory in front, so
/// that `file:line:col` opens in an editor from anywhere.
fn with_dir(s: &Sources, msg: &str) -> String {
    if let Origin::Explicit { dir } = &s.origin
        && s.files
            .iter()
            .any(|f| msg.starts_with(&format!("{}:", f.name)))
    {
        return format!("{}", dir.join(msg).display());
    }
    msg.to_string()
}

fn test(s: &Sources) -> u8 {
    let outcomes = match policy::run_tests(s) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{}", with_dir(s, &e.0));
            eprintln!(
                "aisbx: the policy {} does not load, so no test ran",
                s.origin
            );
            return 1;
        }
    };
    let mut failed = 0;
    for t in &outcomes {
        if t.passed {
            outln!("PASS  {}  ({})", t.name, t.file);
        } else {
            failed += 1;
            match &t.error {
                Some(e) => outln!("FAIL  {}  ({}): {e}", t.name, t.file),
                None => outln!("FAIL  {}  ({})", t.name, t.file),
            }
        }
    }
    outln!("{} passed, {failed} failed", outcomes.len() - failed);
    if outcomes.is_empty() {
        eprintln!(
            "aisbx: no test_* rule in the policy {}; tests go in *_test.rego files",
            s.origin
        );
    }
    if failed > 0 { 1 } else { 0 }
}

fn eval(s: &Sources, input: &Path, explain: bool) -> u8 {
    let text = if input == Path::new("-") {
        let mut t = String::new();
        std::io::stdin().read_to_string(&mut t).map(|_| t)
    } else {
        std::fs::read_to_string(input)
    };
    let doc: serde_json::Value = match text
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("not JSON: {e}")))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("aisbx: cannot read the input {}: {e}", input.display());
            return EXIT_AISBX;
        }
    };
    let bundle = match Bundle::parse(s, false) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("aisbx: {}", with_dir(s, &e.0));
            return EXIT_AISBX;
        }
    };
    let d = bundle.decide(&doc);
    if explain {
        let rules: serde_json::Map<String, serde_json::Value> = ["allow", "deny", "limits"]
            .iter()
            .map(|r| {
                let v = bundle
                    .eval_rule(&format!("data.aisbx.{r}"), &doc)
                    .unwrap_or_else(|e| format!("(error: {e})"));
                (r.to_string(), serde_json::Value::String(v))
            })
            .collect();
        print_json(&serde_json::json!({
            "policy": s.origin.to_string(),
            "bundle": s.hash,
            "input": doc,
            "rules": rules,
            "prints": bundle.prints(&doc),
            "decision": d,
        }));
    } else {
        print_json(&d);
    }
    if d.allowed { 0 } else { 1 }
}

/// The git state of a policy directory, when git is installed and the
/// directory is in a work tree.
fn git_state(dir: &Path) -> Option<serde_json::Value> {
    // The repository's own configuration must not run anything (fsmonitor).
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "core.fsmonitor=false"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if git(&["rev-parse", "--is-inside-work-tree"])? != "true" {
        return None;
    }
    let commit = git(&["rev-parse", "HEAD"]);
    let dirty = git(&["status", "--porcelain", "--", "."]).map(|s| !s.is_empty());
    Some(serde_json::json!({"commit": commit, "dirty": dirty}))
}

fn status(home: &Path, s: &Sources, json: bool) -> u8 {
    let dirs: Vec<PathBuf> = match &s.origin {
        Origin::Default => Vec::new(),
        Origin::Explicit { dir } => vec![dir.clone()],
        Origin::Standard { dirs } => dirs.clone(),
    };
    let loaded = Bundle::parse(s, false).map(|_| ()).map_err(|e| e.0);
    // What a running server did when the files last changed (it may be deciding
    // with an older bundle than the files on disk, when the new one was refused).
    let last = policy::last_reload(home);
    let git: Vec<serde_json::Value> = dirs
        .iter()
        .map(|d| serde_json::json!({"dir": d, "git": git_state(d)}))
        .collect();
    if json {
        print_json(&serde_json::json!({
            "policy": s.origin,
            "bundle": s.hash,
            "files": s.files.iter().map(|f| &f.name).collect::<Vec<_>>(),
            "loaded": loaded.is_ok(),
            "error": loaded.as_ref().err(),
            "dirs": git,
            "last_reload": last,
        }));
    } else {
        outln!("policy:  {}", s.origin);
        outln!("bundle:  {}", s.hash);
        outln!(
            "files:   {}",
            s.files
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        match &loaded {
            Ok(()) => outln!("state:   loaded"),
            Err(e) => outln!("state:   NOT LOADED, requests are refused: {e}"),
        }
        for (d, g) in dirs.iter().zip(&git) {
            match g.get("git").filter(|g| !g.is_null()) {
                Some(g) => outln!(
                    "git:     {} at {}{}",
                    d.display(),
                    g["commit"].as_str().unwrap_or("(no commit yet)"),
                    if g["dirty"].as_bool() == Some(true) {
                        ", with uncommitted changes"
                    } else {
                        ""
                    }
                ),
                None => outln!("git:     {} is not in a git work tree", d.display()),
            }
        }
        if let Some(r) = &last {
            let by = format!("{} by aisbx-mcp (pid {})", r.time, r.pid);
            match &r.reload {
                policy::Reload::Loaded { bundle } => {
                    outln!("server:  reloaded at {by}: bundle {bundle}")
                }
                policy::Reload::Rejected {
                    bundle,
                    error,
                    active,
                } => outln!(
                    "server:  at {by}, the changed policy{} was NOT loaded: {error}; the server still decides with {}",
                    bundle
                        .as_deref()
                        .map(|b| format!(" (bundle {b})"))
                        .unwrap_or_default(),
                    active
                        .as_deref()
                        .map(|a| format!("bundle {a}"))
                        .unwrap_or_else(|| "no policy (requests are refused)".into())
                ),
                policy::Reload::Unchanged => {}
            }
        }
    }
    if loaded.is_ok() { 0 } else { 1 }
}
