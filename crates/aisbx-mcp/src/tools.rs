//! The three tools: their definitions (description, inputSchema, outputSchema), the
//! mapping of their JSON arguments to service requests, and the readable summaries.
//!
//! Arguments are checked field by field here (not by a blanket deserialisation) so
//! that every bad argument is answered with JSON-RPC -32602 naming the field.

use std::collections::BTreeMap;
use std::sync::Arc;

use aisbx_service::{
    BuildRequest, BuildResult, LimitOverrides, LimitPolicy, ProfileList, Program, RunRequest,
    RunResult,
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
    /// The language of `code`: python, node, bash, sh, perl, ... (default: the
    /// profile's language, else detected from the code).
    language: Option<String>,
    /// A program and its arguments, e.g. ["ls", "-la"]. Give exactly one of `code` and `command`.
    command: Option<Vec<String>>,
    /// Files written into the workspace before the run: relative path -> UTF-8 content.
    files: Option<BTreeMap<String, String>>,
    /// Text fed to the program's standard input.
    stdin: Option<String>,
    /// Sandbox profile (see `profile_list`); chosen from the language when absent.
    profile: Option<String>,
    /// Wall-clock limit in seconds: at most the profile's (30 s unless the profile
    /// says otherwise); a larger value is refused.
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

/// Arguments of `sandbox_list` and `snapshot_list` (none).
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(extend("additionalProperties" = false))]
pub struct NoInput {}

/// Arguments of `sandbox_destroy`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(extend("additionalProperties" = false))]
#[allow(dead_code)]
pub struct SandboxIdInput {
    /// The persistent sandbox (from `build` or `snapshot_restore`).
    sandbox_id: String,
}

/// Arguments of `file_write`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(extend("additionalProperties" = false))]
#[allow(dead_code)]
pub struct FileWriteInput {
    /// The persistent sandbox.
    sandbox_id: String,
    /// Path relative to /workspace; missing directories are created.
    path: String,
    /// UTF-8 text written to the file (replacing it).
    content: String,
}

/// Arguments of `file_read`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(extend("additionalProperties" = false))]
#[allow(dead_code)]
pub struct FileReadInput {
    /// The persistent sandbox.
    sandbox_id: String,
    /// Path relative to /workspace.
    path: String,
}

/// Arguments of `file_list`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(extend("additionalProperties" = false))]
#[allow(dead_code)]
pub struct FileListInput {
    /// The persistent sandbox.
    sandbox_id: String,
    /// Directory relative to /workspace (default: /workspace itself).
    path: Option<String>,
    /// List everything below it, not only its entries (default false).
    recursive: Option<bool>,
}

/// Arguments of `snapshot_create`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(extend("additionalProperties" = false))]
#[allow(dead_code)]
pub struct SnapshotCreateInput {
    /// A new snapshot name: letters, digits, '.', '_', '-'.
    name: String,
    /// The persistent sandbox whose files are saved.
    sandbox_id: String,
}

/// Arguments of `snapshot_restore`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(extend("additionalProperties" = false))]
#[allow(dead_code)]
pub struct SnapshotRestoreInput {
    /// The snapshot to restore.
    name: String,
    /// Name of the new sandbox made from it (copy-on-write: the snapshot is never changed).
    sandbox_id: String,
    /// Profile of the new sandbox (default: the snapshot's).
    profile: Option<String>,
}

/// Arguments of `snapshot_diff`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(extend("additionalProperties" = false))]
#[allow(dead_code)]
pub struct SnapshotDiffInput {
    /// The older snapshot.
    from: String,
    /// The newer snapshot.
    to: String,
}

fn tool<I: JsonSchema + 'static, O: JsonSchema + 'static>(
    name: &'static str,
    title: &'static str,
    description: &'static str,
    read_only: bool,
    destructive: bool,
) -> Result<Tool, String> {
    Ok(Tool::new(name, description, schema_for_input::<I>()?)
        .with_title(title)
        .with_raw_output_schema(schema_for_output::<O>())
        .with_annotations(
            ToolAnnotations::new()
                .read_only(read_only)
                .destructive(destructive)
                .idempotent(read_only)
                .open_world(false),
        ))
}

/// The sandbox, file and snapshot tools.
fn sandbox_definitions() -> Result<Vec<Tool>, String> {
    use aisbx_service::{
        FileContent, FileList, FileWriteResult, RestoreResult, SandboxDestroyed, SandboxList,
        SnapshotDiff, SnapshotInfo, SnapshotList,
    };
    Ok(vec![
        tool::<NoInput, SandboxList>(
            "sandbox_list",
            "List persistent sandboxes",
            "List the persistent sandboxes: id, profile, creation time and the snapshot each \
             was restored from.",
            true,
            false,
        )?,
        tool::<SandboxIdInput, SandboxDestroyed>(
            "sandbox_destroy",
            "Destroy a persistent sandbox",
            "Delete a persistent sandbox and all its files. Snapshots taken of it are kept.",
            false,
            true,
        )?,
        tool::<FileWriteInput, FileWriteResult>(
            "file_write",
            "Write a file in a sandbox",
            "Write UTF-8 text to a file of a persistent sandbox (path relative to \
             /workspace), creating missing directories. The write happens inside the \
             sandbox: symlinks cannot lead it elsewhere.",
            false,
            false,
        )?,
        tool::<FileReadInput, FileContent>(
            "file_read",
            "Read a file of a sandbox",
            "Read a file of a persistent sandbox (path relative to /workspace), at most 1 MiB; \
             text comes back as is, other bytes as base64. Symlinks are not followed.",
            true,
            false,
        )?,
        tool::<FileListInput, FileList>(
            "file_list",
            "List files of a sandbox",
            "List a directory of a persistent sandbox (relative to /workspace): path, kind \
             (file, dir, symlink), size, mode and mtime of each entry; `recursive` lists \
             the whole tree (at most 10,000 entries).",
            true,
            false,
        )?,
        tool::<SnapshotCreateInput, SnapshotInfo>(
            "snapshot_create",
            "Snapshot a sandbox",
            "Save the files of a persistent sandbox as a named snapshot (modes, times, \
             symlinks kept; content stored once across snapshots). Restore it later with \
             snapshot_restore to go back to this point.",
            false,
            false,
        )?,
        tool::<SnapshotRestoreInput, RestoreResult>(
            "snapshot_restore",
            "Restore a snapshot into a new sandbox",
            "Create a new persistent sandbox from a snapshot, copy-on-write: instant whatever \
             its size, and nothing the sandbox does changes the snapshot.",
            false,
            false,
        )?,
        tool::<NoInput, SnapshotList>(
            "snapshot_list",
            "List snapshots",
            "List the snapshots: name, creation time, source, profile, parent, size, file \
             count and bytes shared with other snapshots.",
            true,
            false,
        )?,
        tool::<SnapshotDiffInput, SnapshotDiff>(
            "snapshot_diff",
            "Compare two snapshots",
            "The paths added, removed and changed from one snapshot to another, with a \
             unified diff for small text files.",
            true,
            false,
        )?,
    ])
}

/// The tool definitions, built once.
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
    let mut all = vec![run, build, profile_list];
    all.extend(sandbox_definitions()?);
    Ok(all)
}

/// Names of the sandbox, file and snapshot tools.
pub const SANDBOX_TOOLS: &[&str] = &[
    "sandbox_list",
    "sandbox_destroy",
    "file_write",
    "file_read",
    "file_list",
    "snapshot_create",
    "snapshot_restore",
    "snapshot_list",
    "snapshot_diff",
];

/// A checked call of one of [`SANDBOX_TOOLS`].
#[derive(Debug, Clone, PartialEq)]
pub enum SandboxCall {
    SandboxList,
    SandboxDestroy {
        id: String,
    },
    FileWrite {
        id: String,
        path: String,
        content: String,
    },
    FileRead {
        id: String,
        path: String,
    },
    FileList {
        id: String,
        path: String,
        recursive: bool,
    },
    SnapshotCreate {
        name: String,
        id: String,
    },
    SnapshotRestore {
        name: String,
        id: String,
        profile: Option<String>,
    },
    SnapshotList,
    SnapshotDiff {
        from: String,
        to: String,
    },
}

fn req_string(args: &Map<String, Value>, field: &str) -> Result<String, ArgError> {
    opt_string(args, field)?.ok_or_else(|| bad(field, "is required"))
}

fn req_name(args: &Map<String, Value>, field: &str) -> Result<String, ArgError> {
    let s = req_string(args, field)?;
    check_name(field, &s)?;
    Ok(s)
}

/// Arguments of a sandbox, file or snapshot tool.
pub fn parse_sandbox_call(
    tool: &str,
    arguments: Option<&Map<String, Value>>,
) -> Result<SandboxCall, ArgError> {
    let args = as_object(arguments);
    let known: &[&str] = match tool {
        "sandbox_list" | "snapshot_list" => &[],
        "sandbox_destroy" => &["sandbox_id"],
        "file_write" => &["sandbox_id", "path", "content"],
        "file_read" => &["sandbox_id", "path"],
        "file_list" => &["sandbox_id", "path", "recursive"],
        "snapshot_create" => &["name", "sandbox_id"],
        "snapshot_restore" => &["name", "sandbox_id", "profile"],
        "snapshot_diff" => &["from", "to"],
        other => return Err(bad("name", format!("unknown tool '{other}'"))),
    };
    check_known(&args, known)?;
    let path = |field: &str| -> Result<String, ArgError> {
        let p = req_string(&args, field)?;
        check_file_path(&p).map_err(|why| bad(field, why))?;
        Ok(p)
    };
    Ok(match tool {
        "sandbox_list" => SandboxCall::SandboxList,
        "snapshot_list" => SandboxCall::SnapshotList,
        "sandbox_destroy" => SandboxCall::SandboxDestroy {
            id: req_name(&args, "sandbox_id")?,
        },
        "file_write" => {
            let id = req_name(&args, "sandbox_id")?;
            let path = path("path")?;
            let content = req_string(&args, "content")?;
            if content.len() > MAX_FILES_TOTAL_BYTES {
                return Err(bad(
                    "content",
                    format!(
                        "too large ({} bytes; at most {MAX_FILES_TOTAL_BYTES})",
                        content.len()
                    ),
                ));
            }
            SandboxCall::FileWrite { id, path, content }
        }
        "file_read" => SandboxCall::FileRead {
            id: req_name(&args, "sandbox_id")?,
            path: path("path")?,
        },
        "file_list" => {
            let id = req_name(&args, "sandbox_id")?;
            let p = opt_string(&args, "path")?.unwrap_or_default();
            if !p.is_empty() && p != "." {
                check_file_path(p.trim_end_matches('/')).map_err(|why| bad("path", why))?;
            }
            let recursive = match get(&args, "recursive") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => {
                    return Err(bad(
                        "recursive",
                        format!("expected a boolean, got {}", type_name(v)),
                    ));
                }
            };
            SandboxCall::FileList {
                id,
                path: p,
                recursive,
            }
        }
        "snapshot_create" => SandboxCall::SnapshotCreate {
            name: req_name(&args, "name")?,
            id: req_name(&args, "sandbox_id")?,
        },
        "snapshot_restore" => {
            let name = req_name(&args, "name")?;
            let id = req_name(&args, "sandbox_id")?;
            let profile = match opt_string(&args, "profile")? {
                Some(p) => {
                    check_name("profile", &p)?;
                    Some(p)
                }
                None => None,
            };
            SandboxCall::SnapshotRestore { name, id, profile }
        }
        _ => SandboxCall::SnapshotDiff {
            from: req_name(&args, "from")?,
            to: req_name(&args, "to")?,
        },
    })
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
                // Empty: the service takes the profile's language, else detects
                // it from the code (the same rules as `aisbx run --code`).
                None => String::new(),
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
    // A client may lower the profile's limits, never raise them.
    req.limit_policy = LimitPolicy::LowerOnly;
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
        assert_eq!(names[..3], ["run", "build", "profile_list"]);
        assert_eq!(names[3..], *SANDBOX_TOOLS);
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
                language: String::new(),
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
        assert_eq!(r.limit_policy, LimitPolicy::LowerOnly);
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
    fn sandbox_tool_arguments_name_the_field() {
        let call = |t: &str, v: Value| parse_sandbox_call(t, Some(&obj(v)));
        assert_eq!(
            call("file_read", json!({"sandbox_id": "a", "path": "x/y"})),
            Ok(SandboxCall::FileRead {
                id: "a".into(),
                path: "x/y".into()
            })
        );
        let field = |t: &str, v: Value| call(t, v).expect_err("bad").field;
        assert_eq!(field("file_read", json!({"sandbox_id": "a"})), "path");
        assert_eq!(
            field("file_read", json!({"sandbox_id": "a", "path": "../x"})),
            "path"
        );
        assert_eq!(
            field(
                "file_read",
                json!({"sandbox_id": "a", "path": "/etc/passwd"})
            ),
            "path"
        );
        assert_eq!(
            field("file_write", json!({"sandbox_id": "a", "path": "x"})),
            "content"
        );
        assert_eq!(
            field(
                "file_write",
                json!({"sandbox_id": "a b", "path": "x", "content": ""})
            ),
            "sandbox_id"
        );
        assert_eq!(
            field("file_list", json!({"sandbox_id": "a", "recursive": "yes"})),
            "recursive"
        );
        assert_eq!(field("sandbox_destroy", json!({})), "sandbox_id");
        assert_eq!(
            field(
                "snapshot_create",
                json!({"name": "../x", "sandbox_id": "a"})
            ),
            "name"
        );
        assert_eq!(
            field(
                "snapshot_restore",
                json!({"name": "s", "sandbox_id": "a", "profile": 1})
            ),
            "profile"
        );
        assert_eq!(field("snapshot_diff", json!({"from": "a"})), "to");
        assert_eq!(field("snapshot_list", json!({"x": 1})), "x");
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
