//! The three tools: their definitions (description, inputSchema, outputSchema), the
//! mapping of their JSON arguments to service requests, and the readable summaries.
//!
//! Arguments are checked field by field here (not by a blanket deserialisation) so
//! that every bad argument is answered with JSON-RPC -32602 naming the field.

use std::collections::BTreeMap;
use std::sync::Arc;

use aisbx_service::{
    BuildRequest, BuildResult, LimitOverrides, ProfileList, Program, RunRequest, RunResult,
};
use rmcp::handler::server::tool::{schema_for_input, schema_for_output};
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Largest `code` accepted.
pub const MAX_CODE_BYTES: usize = 1024 * 1024;
/// Largest `stdin` accepted.
pub const MAX_STDIN_BYTES: usize = 1024 * 1024;
/// Most entries in `files`.
pub const MAX_FILES: usize = 256;
/// Most bytes in all of `files` together (paths and contents).
pub const MAX_FILES_TOTAL_BYTES: usize = 4 * 1024 * 1024;
/// Longest file path in `files`.
pub const MAX_PATH_BYTES: usize = 1024;
/// Most `command` arguments / `setup` commands.
pub const MAX_ARGS: usize = 4096;
pub const MAX_SETUP: usize = 64;
/// Longest wall-time a caller may ask for here (the profile's policy may cap it lower).
pub const MAX_TIMEOUT_SECS: f64 = 24.0 * 3600.0;

/// A bad argument: becomes JSON-RPC -32602 with `data.field`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct ArgError {
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> ArgError {
    ArgError {
        field: field.to_string(),
        message: message.into(),
    }
}

// ----- input schemas (documentation for clients; the checks below are the truth) -----

/// Arguments of `run`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(extend("additionalProperties" = false))]
#[allow(dead_code)] // only its schema is used
pub struct RunInput {
    /// Source code to run. Give exactly one of `code` and `command`.
    code: Option<String>,
    /// The language of `code`: python, node, bash, sh, perl, ... (default: python).
    language: Option<String>,
    /// A program and its arguments, e.g. ["ls", "-la"]. Give exactly one of `code` and `command`.
    command: Option<Vec<String>>,
    /// Files written into the workspace before the run: relative path -> UTF-8 content.
    files: Option<BTreeMap<String, String>>,
    /// Text fed to the program's standard input.
    stdin: Option<String>,
    /// Sandbox profile (see `profile_list`); chosen from the language when absent.
    profile: Option<String>,
    /// Wall-clock limit in seconds (default: the profile's, 30 s).
    #[schemars(range(min = 0.001))]
    timeout_secs: Option<f64>,
    /// Run inside this persistent sandbox (made by `build`); its files persist across calls.
    sandbox_id: Option<String>,
}

/// Arguments of `build`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(extend("additionalProperties" = false))]
#[allow(dead_code)]
pub struct BuildInput {
    /// Sandbox profile (see `profile_list`; default: `default`).
    profile: Option<String>,
    /// A name for the sandbox; one is generated when absent.
    name: Option<String>,
    /// Files written into the sandbox's workspace: relative path -> UTF-8 content.
    files: Option<BTreeMap<String, String>>,
    /// Shell commands run one after another in the sandbox; stops at the first failure.
    setup: Option<Vec<String>>,
}

/// Arguments of `profile_list` (none).
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(extend("additionalProperties" = false))]
pub struct ProfileListInput {}

/// The three tool definitions, built once.
pub fn definitions() -> Result<Vec<Tool>, String> {
    let run = Tool::new(
        "run",
        "Run code or a command in a fresh, isolated Linux sandbox (no network, capped \
         memory, processes and time; nothing of the host visible) and return its exit \
         status and output. Give exactly one of `code` (with `language`) or `command`. \
         Optional `files` are written into the working directory /workspace first. With \
         `sandbox_id` (from `build`) the run happens in that persistent sandbox. A \
         non-zero exit or a timeout is a normal result; isError means the sandbox \
         refused or failed. Send a progressToken to receive output as it is produced.",
        schema_for_input::<RunInput>()?,
    )
    .with_title("Run code in a sandbox")
    .with_raw_output_schema(schema_for_output::<RunResult>())
    .with_annotations(
        ToolAnnotations::new()
            .read_only(false)
            .destructive(false)
            .idempotent(false)
            .open_world(false),
    );
    let build = Tool::new(
        "build",
        "Create a persistent sandbox with its own workspace and profile: write `files`, \
         then run the `setup` shell commands in it one after another (stopping at the \
         first failure). Returns its `sandbox_id`; pass that to `run` to work in the \
         same sandbox across calls.",
        schema_for_input::<BuildInput>()?,
    )
    .with_title("Create a persistent sandbox")
    .with_raw_output_schema(schema_for_output::<BuildResult>())
    .with_annotations(
        ToolAnnotations::new()
            .read_only(false)
            .destructive(false)
            .idempotent(false)
            .open_world(false),
    );
    let profile_list = Tool::new(
        "profile_list",
        "List the sandbox profiles (name, description, language, what it extends) and \
         whether each is available on this host.",
        schema_for_input::<ProfileListInput>()?,
    )
    .with_title("List sandbox profiles")
    .with_raw_output_schema(schema_for_output::<ProfileList>())
    .with_annotations(
        ToolAnnotations::new()
            .read_only(true)
            .destructive(false)
            .idempotent(true)
            .open_world(false),
    );
    Ok(vec![run, build, profile_list])
}

/// The tool definitions as shared, ready-to-list values.
pub fn shared_definitions() -> Result<Arc<Vec<Tool>>, String> {
    definitions().map(Arc::new)
}

// ----- argument checks -----

fn check_known(args: &Map<String, Value>, known: &[&str]) -> Result<(), ArgError> {
    for k in args.keys() {
        if !known.contains(&k.as_str()) {
            return Err(bad(
                k,
                format!("unknown argument; expected one of: {}", known.join(", ")),
            ));
        }
    }
    Ok(())
}

/// A present, non-null value of `field`.
fn get<'a>(args: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    args.get(field).filter(|v| !v.is_null())
}

fn opt_string(args: &Map<String, Value>, field: &str) -> Result<Option<String>, ArgError> {
    match get(args, field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(bad(
            field,
            format!("expected a string, got {}", type_name(other)),
        )),
    }
}

fn opt_string_list(
    args: &Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<Option<Vec<String>>, ArgError> {
    match get(args, field) {
        None => Ok(None),
        Some(Value::Array(items)) => {
            if items.len() > max {
                return Err(bad(
                    field,
                    format!("too many items ({}; at most {max})", items.len()),
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => {
                        if s.contains('\0') {
                            return Err(bad(field, format!("item {i} contains a NUL byte")));
                        }
                        out.push(s.clone());
                    }
                    other => {
                        return Err(bad(
                            field,
                            format!("item {i}: expected a string, got {}", type_name(other)),
                        ));
                    }
                }
            }
            Ok(Some(out))
        }
        Some(other) => Err(bad(
            field,
            format!("expected an array of strings, got {}", type_name(other)),
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A profile or sandbox name: letters, digits, `.`, `_`, `-`; 1..=64 bytes.
fn check_name(field: &str, s: &str) -> Result<(), ArgError> {
    if s.is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    if s.len() > 64 {
        return Err(bad(field, "longer than 64 characters"));
    }
    if s.starts_with('.') || s.starts_with('-') {
        return Err(bad(field, "must not start with '.' or '-'"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad(
            field,
            "may contain only letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

/// Checks one relative workspace path (the service checks symlinks on disk too).
pub fn check_file_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("an empty path".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!("a path longer than {MAX_PATH_BYTES} bytes"));
    }
    if path.contains('\0') {
        return Err(format!("'{}' contains a NUL byte", path.escape_debug()));
    }
    if path.starts_with('/') {
        return Err(format!(
            "'{path}' is absolute; paths are relative to /workspace"
        ));
    }
    if path.ends_with('/') {
        return Err(format!("'{path}' names a directory, not a file"));
    }
    for comp in path.split('/') {
        if comp == ".." {
            return Err(format!("'{path}' leaves the workspace ('..')"));
        }
    }
    if path.split('/').all(|c| c.is_empty() || c == ".") {
        return Err(format!("'{path}' names no file"));
    }
    Ok(())
}

fn opt_files(args: &Map<String, Value>, field: &str) -> Result<BTreeMap<String, String>, ArgError> {
    let Some(v) = get(args, field) else {
        return Ok(BTreeMap::new());
    };
    let Value::Object(m) = v else {
        return Err(bad(
            field,
            format!(
                "expected an object mapping relative paths to contents, got {}",
                type_name(v)
            ),
        ));
    };
    if m.len() > MAX_FILES {
        return Err(bad(
            field,
            format!("too many files ({}; at most {MAX_FILES})", m.len()),
        ));
    }
    let mut total = 0usize;
    let mut out = BTreeMap::new();
    for (path, content) in m {
        check_file_path(path).map_err(|why| bad(field, why))?;
        let Value::String(content) = content else {
            return Err(bad(
                field,
                format!(
                    "the content of '{path}' must be a string, got {}",
                    type_name(content)
                ),
            ));
        };
        total = total.saturating_add(path.len() + content.len());
        if total > MAX_FILES_TOTAL_BYTES {
            return Err(bad(
                field,
                format!("too large in total (more than {MAX_FILES_TOTAL_BYTES} bytes)"),
            ));
        }
        out.insert(path.clone(), content.clone());
    }
    Ok(out)
}

fn as_object(arguments: Option<&Map<String, Value>>) -> Map<String, Value> {
    arguments.cloned().unwrap_or_default()
}

/// `run` arguments to a service request.
pub fn parse_run(arguments: Option<&Map<String, Value>>) -> Result<RunRequest, ArgError> {
    let args = as_object(arguments);
    check_known(
        &args,
        &[
            "code",
            "language",
            "command",
            "files",
            "stdin",
            "profile",
            "timeout_secs",
            "sandbox_id",
        ],
    )?;
    let code = opt_string(&args, "code")?;
    let language = opt_string(&args, "language")?;
    let command = opt_string_list(&args, "command", MAX_ARGS)?;
    let program = match (code, command) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "code",
                "give exactly one of `code` and `command`, not both",
            ));
        }
        (None, None) => {
            return Err(bad(
                "code",
                "give exactly one of `code` (with `language`) and `command`",
            ));
        }
        (Some(code), None) => {
            if code.len() > MAX_CODE_BYTES {
                return Err(bad(
                    "code",
                    format!("too large ({} bytes; at most {MAX_CODE_BYTES})", code.len()),
                ));
            }
            if code.contains('\0') {
                return Err(bad("code", "contains a NUL byte"));
            }
            let language = match language {
                Some(l) => {
                    check_name("language", &l)?;
                    l
                }
                None => "python".to_string(),
            };
            Program::Code { language, code }
        }
        (None, Some(argv)) => {
            if language.is_some() {
                return Err(bad("language", "applies only to `code`, not to `command`"));
            }
            match argv.first() {
                None => return Err(bad("command", "must name a program")),
                Some(p) if p.is_empty() => {
                    return Err(bad("command", "the program name is empty"));
                }
                Some(_) => {}
            }
            Program::Command(argv)
        }
    };
    let mut req = RunRequest::new(program);
    req.files = opt_files(&args, "files")?;
    if let Some(stdin) = opt_string(&args, "stdin")? {
        if stdin.len() > MAX_STDIN_BYTES {
            return Err(bad(
                "stdin",
                format!(
                    "too large ({} bytes; at most {MAX_STDIN_BYTES})",
                    stdin.len()
                ),
            ));
        }
        req.stdin = Some(stdin.into_bytes());
    }
    if let Some(p) = opt_string(&args, "profile")? {
        check_name("profile", &p)?;
        req.profile = Some(p);
    }
    if let Some(id) = opt_string(&args, "sandbox_id")? {
        check_name("sandbox_id", &id)?;
        req.sandbox_id = Some(id);
    }
    if let Some(v) = get(&args, "timeout_secs") {
        let Some(t) = v.as_f64() else {
            return Err(bad(
                "timeout_secs",
                format!("expected a number of seconds, got {}", type_name(v)),
            ));
        };
        if !t.is_finite() || t <= 0.0 {
            return Err(bad("timeout_secs", "must be a positive number of seconds"));
        }
        if t > MAX_TIMEOUT_SECS {
            return Err(bad(
                "timeout_secs",
                format!("at most {MAX_TIMEOUT_SECS} seconds"),
            ));
        }
        req.limits = LimitOverrides {
            timeout_secs: Some(t),
            ..LimitOverrides::default()
        };
    }
    Ok(req)
}

/// `build` arguments to a service request.
pub fn parse_build(arguments: Option<&Map<String, Value>>) -> Result<BuildRequest, ArgError> {
    let args = as_object(arguments);
    check_known(&args, &["profile", "name", "files", "setup"])?;
    let mut req = BuildRequest::default();
    if let Some(p) = opt_string(&args, "profile")? {
        check_name("profile", &p)?;
        req.profile = Some(p);
    }
    if let Some(n) = opt_string(&args, "name")? {
        check_name("name", &n)?;
        req.name = Some(n);
    }
    req.files = opt_files(&args, "files")?;
    if let Some(setup) = opt_string_list(&args, "setup", MAX_SETUP)? {
        if let Some(i) = setup.iter().position(|s| s.trim().is_empty()) {
            return Err(bad("setup", format!("command {i} is empty")));
        }
        let total: usize = setup.iter().map(String::len).sum();
        if total > MAX_CODE_BYTES {
            return Err(bad(
                "setup",
                format!("too large ({total} bytes; at most {MAX_CODE_BYTES})"),
            ));
        }
        req.setup = setup;
    }
    Ok(req)
}

/// `profile_list` takes no arguments.
pub fn parse_profile_list(arguments: Option<&Map<String, Value>>) -> Result<(), ArgError> {
    check_known(&as_object(arguments), &[])
}

/// The arguments as the audit log digests them (what the client sent).
pub fn args_value(arguments: Option<&JsonObject>) -> Value {
    Value::Object(arguments.cloned().unwrap_or_default())
}

// ----- readable summaries -----

/// `exit 0 in 12 ms (profile python)` and the output.
pub fn run_summary(r: &RunResult) -> String {
    let mut s = String::new();
    if r.timed_out {
        s.push_str("timed out (the whole process tree was killed)");
    } else if let Some(sig) = r.signal {
        s.push_str(&format!("killed by signal {sig}"));
    } else if let Some(code) = r.exit_code {
        s.push_str(&format!("exit {code}"));
    } else {
        s.push_str("finished");
    }
    if r.oom_killed {
        s.push_str(", out of memory (the memory limit was reached)");
    }
    s.push_str(&format!(" in {} ms (profile {}", r.duration_ms, r.profile));
    if let Some(id) = &r.sandbox_id {
        s.push_str(&format!(", sandbox {id}"));
    }
    s.push(')');
    push_stream(&mut s, "stdout", &r.stdout, r.stdout_truncated);
    push_stream(&mut s, "stderr", &r.stderr, r.stderr_truncated);
    s
}

fn push_stream(s: &mut String, name: &str, text: &str, truncated: bool) {
    if text.is_empty() && !truncated {
        return;
    }
    s.push_str(&format!("\n--- {name} ---\n"));
    s.push_str(text);
    if !text.ends_with('\n') && !text.is_empty() {
        s.push('\n');
    }
    if truncated {
        s.push_str(&format!("[{name} truncated: the output cap was reached]\n"));
    }
}

pub fn build_summary(b: &BuildResult) -> String {
    let mut s = format!(
        "sandbox {} created at {} (profile {})",
        b.sandbox_id, b.created_at, b.profile
    );
    if b.setup.is_empty() {
        s.push_str("; no setup commands");
    }
    for (i, r) in b.setup.iter().enumerate() {
        s.push_str(&format!("\n=== setup {} ===\n", i + 1));
        s.push_str(&run_summary(r));
    }
    s.push_str(&format!(
        "\nUse `run` with sandbox_id \"{}\" to work in it.",
        b.sandbox_id
    ));
    s
}

pub fn profile_list_summary(p: &ProfileList) -> String {
    if p.profiles.is_empty() {
        return "no profiles".into();
    }
    let mut s = String::new();
    for (i, prof) in p.profiles.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(&prof.name);
        if let Some(l) = &prof.language {
            s.push_str(&format!(" [{l}]"));
        }
        if !prof.available {
            s.push_str(" (not available on this host)");
        }
        if !prof.description.is_empty() {
            s.push_str(": ");
            s.push_str(&prof.description);
        }
    }
    s
}

/// A short summary of a result for the audit log.
pub fn run_audit_summary(r: &RunResult) -> Value {
    serde_json::json!({
        "exit_code": r.exit_code,
        "signal": r.signal,
        "timed_out": r.timed_out,
        "oom_killed": r.oom_killed,
        "duration_ms": r.duration_ms,
        "profile": r.profile,
        "sandbox_id": r.sandbox_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn run_err(v: Value) -> ArgError {
        match parse_run(Some(&obj(v))) {
            Err(e) => e,
            Ok(r) => panic!("accepted: {r:?}"),
        }
    }

    #[test]
    fn definitions_have_schemas() {
        let defs = definitions().expect("definitions");
        let names: Vec<&str> = defs.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names, ["run", "build", "profile_list"]);
        for t in &defs {
            assert!(t.description.is_some());
            assert_eq!(t.input_schema.get("type"), Some(&json!("object")));
            let out = t.output_schema.as_ref().expect("output schema");
            assert_eq!(out.get("type"), Some(&json!("object")), "{}", t.name);
        }
        let run = &defs[0];
        let props = run.input_schema.get("properties").expect("properties");
        for f in [
            "code",
            "language",
            "command",
            "files",
            "stdin",
            "profile",
            "timeout_secs",
            "sandbox_id",
        ] {
            assert!(props.get(f).is_some(), "{f}");
        }
        let out = run.output_schema.as_ref().expect("out");
        let props = out.get("properties").expect("properties");
        for f in [
            "exit_code",
            "stdout",
            "stdout_truncated",
            "max_rss_kib",
            "sandbox_id",
        ] {
            assert!(props.get(f).is_some(), "{f}");
        }
    }

    #[test]
    fn run_code_and_command() {
        let r = parse_run(Some(&obj(json!({"code": "print(1)"})))).expect("ok");
        assert_eq!(
            r.program,
            Program::Code {
                language: "python".into(),
                code: "print(1)".into()
            }
        );
        let r = parse_run(Some(&obj(json!({"command": ["echo", "hi"], "stdin": "x",
            "timeout_secs": 5, "files": {"a/b.txt": "c"}, "profile": "default",
            "sandbox_id": "sb-1", "code": null}))))
        .expect("ok");
        assert_eq!(
            r.program,
            Program::Command(vec!["echo".into(), "hi".into()])
        );
        assert_eq!(r.stdin, Some(b"x".to_vec()));
        assert_eq!(r.limits.timeout_secs, Some(5.0));
        assert_eq!(r.files.get("a/b.txt").map(String::as_str), Some("c"));
        assert_eq!(r.sandbox_id.as_deref(), Some("sb-1"));
    }

    #[test]
    fn run_bad_arguments_name_the_field() {
        assert_eq!(run_err(json!({})).field, "code");
        assert_eq!(
            run_err(json!({"code": "x", "command": ["ls"]})).field,
            "code"
        );
        assert_eq!(run_err(json!({"code": 5})).field, "code");
        assert_eq!(run_err(json!({"command": "ls"})).field, "command");
        assert_eq!(run_err(json!({"command": []})).field, "command");
        assert_eq!(run_err(json!({"command": ["ls", 1]})).field, "command");
        assert_eq!(
            run_err(json!({"command": ["ls"], "language": "python"})).field,
            "language"
        );
        assert_eq!(
            run_err(json!({"code": "x", "timeout_secs": "5"})).field,
            "timeout_secs"
        );
        assert_eq!(
            run_err(json!({"code": "x", "timeout_secs": -1})).field,
            "timeout_secs"
        );
        assert_eq!(run_err(json!({"code": "x", "stdin": []})).field, "stdin");
        assert_eq!(
            run_err(json!({"code": "x", "profile": "../etc"})).field,
            "profile"
        );
        assert_eq!(run_err(json!({"code": "x", "cmd": ["ls"]})).field, "cmd");
        assert_eq!(
            run_err(json!({"code": "x".repeat(MAX_CODE_BYTES + 1)})).field,
            "code"
        );
    }

    #[test]
    fn bad_file_paths_are_refused() {
        for p in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "",
            "dir/",
            ".",
            "./",
        ] {
            let e = run_err(json!({"code": "x", "files": {p: "c"}}));
            assert_eq!(e.field, "files", "{p}");
        }
        let e = run_err(json!({"code": "x", "files": {"a": 1}}));
        assert_eq!(e.field, "files");
        let e = run_err(json!({"code": "x", "files": ["a"]}));
        assert_eq!(e.field, "files");
        let many: Map<String, Value> = (0..=MAX_FILES)
            .map(|i| (format!("f{i}"), json!("")))
            .collect();
        let e = run_err(json!({"code": "x", "files": many}));
        assert_eq!(e.field, "files");
        assert!(e.message.contains("too many"));
        let big = "x".repeat(MAX_FILES_TOTAL_BYTES);
        let e = run_err(json!({"code": "x", "files": {"a": big}}));
        assert!(e.message.contains("too large"), "{}", e.message);
        assert!(check_file_path("ok/.hidden/file.py").is_ok());
        assert!(check_file_path("a..b").is_ok());
    }

    #[test]
    fn build_and_profile_list_arguments() {
        let b = parse_build(Some(&obj(
            json!({"name": "proj", "setup": ["pip --version"], "files": {"x.py": ""}}),
        )))
        .expect("ok");
        assert_eq!(b.name.as_deref(), Some("proj"));
        assert_eq!(b.setup, vec!["pip --version".to_string()]);
        let e = parse_build(Some(&obj(json!({"setup": "ls"})))).expect_err("bad");
        assert_eq!(e.field, "setup");
        let e = parse_build(Some(&obj(json!({"name": "a b"})))).expect_err("bad");
        assert_eq!(e.field, "name");
        assert!(parse_profile_list(None).is_ok());
        assert!(parse_profile_list(Some(&Map::new())).is_ok());
        let e = parse_profile_list(Some(&obj(json!({"x": 1})))).expect_err("bad");
        assert_eq!(e.field, "x");
    }

    #[test]
    fn summaries() {
        let r = RunResult {
            exit_code: Some(3),
            signal: None,
            timed_out: false,
            oom_killed: false,
            stdout: "hello\n".into(),
            stderr: String::new(),
            stdout_truncated: true,
            stderr_truncated: false,
            duration_ms: 12,
            cpu_ms: 3,
            max_rss_kib: 1000,
            profile: "python".into(),
            sandbox_id: None,
        };
        let s = run_summary(&r);
        assert!(s.starts_with("exit 3 in 12 ms (profile python)"), "{s}");
        assert!(s.contains("--- stdout ---\nhello\n[stdout truncated"));
        assert!(!s.contains("stderr"));
    }
}
