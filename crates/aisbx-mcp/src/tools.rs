//! The tools: their definitions (description, inputSchema, outputSchema) and the
//! typed argument structs that both generate each input schema and parse the calls,
//! so the two never disagree. A bad argument is a [`ArgError`] naming the field
//! (through the deserializer's path); the limits on sizes and counts live in the
//! service alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use aisbx_service::{
    BuildRequest, BuildResult, LimitOverrides, LimitPolicy, ProfileList, Program, RunRequest,
    RunResult,
};
use base64::Engine;
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::protocol::cut;

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

// ----- argument structs: the schema and the parser -----

/// How a file's `content` is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum Encoding {
    /// The text as is.
    #[default]
    #[serde(rename = "utf-8")]
    Utf8,
    /// Any bytes, base64-encoded (RFC 4648, with padding).
    #[serde(rename = "base64")]
    Base64,
}

/// One entry of `files`: a UTF-8 text, or `{"content": ..., "encoding": "base64"}`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FileArg {
    /// UTF-8 text.
    Text(String),
    /// Content with its encoding.
    Encoded(EncodedFile),
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncodedFile {
    /// The content, as `encoding` says.
    pub content: String,
    /// `utf-8` (default) or `base64`.
    #[serde(default)]
    pub encoding: Encoding,
}

/// Arguments of `run`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// Source code to run, like `python -c` / `node -e` in /workspace (files there
    /// import by name). Give exactly one of `code` and `command`.
    #[serde(default)]
    pub code: Option<String>,
    /// The language of `code`: python, node, bash, sh, perl, ruby, ... (default: the
    /// profile's language, else detected from the code).
    #[serde(default)]
    pub language: Option<String>,
    /// A program and its arguments, e.g. ["ls", "-la"]. Give exactly one of `code` and `command`.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Arguments for `code` (`sys.argv[1:]`, `process.argv.slice(2)`); a `command` carries its own.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Files written into /workspace before the run: relative path -> UTF-8 text, or
    /// {"content": "<base64>", "encoding": "base64"} for any bytes.
    #[serde(default)]
    pub files: Option<BTreeMap<String, FileArg>>,
    /// Text fed to the program's standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Extra environment variables, after the profile's.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Sandbox profile (see `profile_list`); chosen from the language when absent.
    #[serde(default)]
    pub profile: Option<String>,
    /// Wall-clock limit in seconds: at most the profile's (a larger value is refused).
    #[serde(default)]
    #[schemars(range(min = 0.001))]
    pub timeout_secs: Option<f64>,
    /// Memory limit as a size: "256M", "1G", "512KiB" (binary multiples) or a byte
    /// count "1048576"; at most the profile's.
    #[serde(default)]
    pub memory: Option<String>,
    /// CPU limit in cores, e.g. 0.5; at most the profile's.
    #[serde(default)]
    #[schemars(range(min = 0.01))]
    pub cpus: Option<f64>,
    /// Run inside this persistent sandbox (its id comes from `build` or
    /// `snapshot_restore`); its files persist across calls.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// Run nothing: return whether the policy allows the run, the profile it
    /// would use and the limits it would get.
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// Arguments of `build`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildArgs {
    /// Sandbox profile (see `profile_list`; default: `base`).
    #[serde(default)]
    pub profile: Option<String>,
    /// The new sandbox's id; one is generated when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Files written into the sandbox's workspace, as in `run`.
    #[serde(default)]
    pub files: Option<BTreeMap<String, FileArg>>,
    /// Shell commands run one after another in the sandbox; the first that fails
    /// stops the build (the result says which, and which were skipped).
    #[serde(default)]
    pub setup: Option<Vec<String>>,
}

/// No arguments.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// Arguments of `sandbox_destroy`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxIdArgs {
    /// The persistent sandbox (from `build` or `snapshot_restore`).
    pub sandbox_id: String,
}

/// Arguments of `file_write`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileWriteArgs {
    /// The persistent sandbox (from `build` or `snapshot_restore`).
    pub sandbox_id: String,
    /// Path relative to /workspace; missing directories are created.
    pub path: String,
    /// The file's new content, as `encoding` says.
    pub content: String,
    /// `utf-8` (default: `content` is the text) or `base64` (any bytes) — the shape
    /// `file_read` returns.
    #[serde(default)]
    pub encoding: Option<Encoding>,
}

/// Arguments of `file_read` and `file_delete`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilePathArgs {
    /// The persistent sandbox (from `build` or `snapshot_restore`).
    pub sandbox_id: String,
    /// Path relative to /workspace.
    pub path: String,
}

/// Arguments of `file_list`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileListArgs {
    /// The persistent sandbox (from `build` or `snapshot_restore`).
    pub sandbox_id: String,
    /// Directory relative to /workspace (default: /workspace itself).
    #[serde(default)]
    pub path: Option<String>,
    /// List everything below it, not only its entries (default false).
    #[serde(default)]
    pub recursive: Option<bool>,
}

/// Arguments of `snapshot_create`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateArgs {
    /// The new snapshot's name: letters, digits, '.', '_', '-'.
    pub name: String,
    /// The persistent sandbox whose files are saved.
    pub sandbox_id: String,
}

/// Arguments of `snapshot_restore`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRestoreArgs {
    /// The snapshot to restore (an existing name from `snapshot_list`).
    pub name: String,
    /// The id of the NEW sandbox made from it (must not exist yet); use it as
    /// `sandbox_id` in `run` and the file tools.
    pub sandbox_id: String,
    /// Profile of the new sandbox (default: the snapshot's).
    #[serde(default)]
    pub profile: Option<String>,
}

/// Arguments of `snapshot_delete`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotNameArgs {
    /// The snapshot to delete.
    pub name: String,
}

/// Arguments of `snapshot_diff`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotDiffArgs {
    /// The older snapshot.
    pub from: String,
    /// The newer snapshot.
    pub to: String,
}

/// Parses a tool's arguments into its struct; an error names the field through the
/// deserializer's path (the first segment is the argument, the rest is where in it).
pub fn parse<T: DeserializeOwned>(arguments: Option<&JsonObject>) -> Result<T, ArgError> {
    let value = Value::Object(arguments.cloned().unwrap_or_default());
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let mut message = inner.clone();
        // Root-level errors name their field in the message: `unknown field `x``.
        let quoted = inner
            .split('`')
            .nth(1)
            .filter(|_| inner.starts_with("unknown field") || inner.starts_with("missing field"))
            .map(str::to_string);
        if message.contains("untagged enum FileArg") {
            message = "expected a string (UTF-8 text) or {\"content\": ..., \"encoding\": \"utf-8\" | \"base64\"}".into();
        }
        if let Some(q) = &quoted {
            if inner.starts_with("unknown field") {
                message = format!(
                    "unknown argument '{}'; {}",
                    cut(q),
                    inner
                        .split_once(", ")
                        .map(|(_, rest)| rest)
                        .unwrap_or("this tool takes none")
                );
            } else {
                message = "is required".into();
            }
        }
        let field = if path == "." || path.is_empty() {
            quoted.unwrap_or_else(|| "arguments".into())
        } else {
            path.split(['.', '[']).next().unwrap_or("arguments").to_string()
        };
        let message = if path == "." || path.is_empty() || !path.contains(['.', '[']) {
            cut(&message)
        } else {
            format!("at {}: {}", cut(&path), cut(&message))
        };
        ArgError {
            field: cut(&field),
            message,
        }
    })
}

/// The file contents as bytes.
fn file_bytes(
    field: &str,
    files: Option<BTreeMap<String, FileArg>>,
) -> Result<BTreeMap<String, Vec<u8>>, ArgError> {
    let mut out = BTreeMap::new();
    for (path, f) in files.unwrap_or_default() {
        let bytes = match f {
            FileArg::Text(t) => t.into_bytes(),
            FileArg::Encoded(EncodedFile { content, encoding }) => decode(&content, encoding)
                .map_err(|why| bad(field, format!("the content of '{}': {why}", cut(&path))))?,
        };
        out.insert(path, bytes);
    }
    Ok(out)
}

fn decode(content: &str, encoding: Encoding) -> Result<Vec<u8>, String> {
    match encoding {
        Encoding::Utf8 => Ok(content.as_bytes().to_vec()),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(content.trim())
            .map_err(|e| format!("not valid base64 ({e})")),
    }
}

/// `run` arguments to a service request.
pub fn parse_run(arguments: Option<&JsonObject>) -> Result<RunRequest, ArgError> {
    run_request(parse::<RunArgs>(arguments)?)
}

/// `run` arguments to a service request, and whether it is a dry run.
pub fn parse_run_call(arguments: Option<&JsonObject>) -> Result<(RunRequest, bool), ArgError> {
    let a = parse::<RunArgs>(arguments)?;
    let dry_run = a.dry_run.unwrap_or(false);
    Ok((run_request(a)?, dry_run))
}

pub fn run_request(a: RunArgs) -> Result<RunRequest, ArgError> {
    let program = match (a.code, a.command) {
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
        (Some(code), None) => Program::Code {
            // Empty: the service takes the profile's language, else detects it from
            // the code (the same rules as `aisbx run --code`).
            language: a.language.unwrap_or_default(),
            code,
        },
        (None, Some(argv)) => {
            if a.language.is_some() {
                return Err(bad("language", "applies only to `code`, not to `command`"));
            }
            if a.args.is_some() {
                return Err(bad(
                    "args",
                    "applies only to `code`; put a command's arguments in `command`",
                ));
            }
            Program::Command(argv)
        }
    };
    let mut req = RunRequest::new(program);
    // A client may lower the profile's limits, never raise them.
    req.limit_policy = LimitPolicy::LowerOnly;
    req.args = a.args.unwrap_or_default();
    req.files = file_bytes("files", a.files)?;
    req.stdin = a.stdin.map(String::into_bytes);
    req.env = a.env.unwrap_or_default().into_iter().collect();
    req.profile = a.profile;
    req.sandbox_id = a.sandbox_id;
    let memory_bytes = match a.memory {
        None => None,
        Some(m) => Some(
            aisbx_service::profile::schema::parse_size(&m).ok_or_else(|| {
                bad(
                    "memory",
                    format!(
                        "'{}' is not a size: give e.g. \"256M\", \"1G\" or a number of bytes",
                        cut(&m)
                    ),
                )
            })?,
        ),
    };
    req.limits = LimitOverrides {
        timeout_secs: a.timeout_secs,
        memory_bytes,
        pids: None,
        cpus: a.cpus,
    };
    Ok(req)
}

/// `build` arguments to a service request.
pub fn parse_build(arguments: Option<&JsonObject>) -> Result<BuildRequest, ArgError> {
    let a: BuildArgs = parse(arguments)?;
    Ok(BuildRequest {
        profile: a.profile,
        name: a.name,
        files: file_bytes("files", a.files)?,
        setup: a.setup.unwrap_or_default(),
    })
}

/// Names of the sandbox, file and snapshot tools.
pub const SANDBOX_TOOLS: &[&str] = &[
    "sandbox_list",
    "sandbox_destroy",
    "file_write",
    "file_read",
    "file_list",
    "file_delete",
    "snapshot_create",
    "snapshot_restore",
    "snapshot_list",
    "snapshot_diff",
    "snapshot_delete",
    "quota",
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
        content: Vec<u8>,
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
    FileDelete {
        id: String,
        path: String,
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
    SnapshotDelete {
        name: String,
    },
    Quota,
}

impl SandboxCall {
    /// Whether the call is carried out by a sandbox run (and takes a run slot).
    pub fn runs(&self) -> bool {
        matches!(
            self,
            SandboxCall::FileWrite { .. } | SandboxCall::FileDelete { .. }
        )
    }
}

/// Arguments of a sandbox, file or snapshot tool.
pub fn parse_sandbox_call(
    tool: &str,
    arguments: Option<&JsonObject>,
) -> Result<SandboxCall, ArgError> {
    Ok(match tool {
        "sandbox_list" => {
            parse::<NoArgs>(arguments)?;
            SandboxCall::SandboxList
        }
        "snapshot_list" => {
            parse::<NoArgs>(arguments)?;
            SandboxCall::SnapshotList
        }
        "sandbox_destroy" => SandboxCall::SandboxDestroy {
            id: parse::<SandboxIdArgs>(arguments)?.sandbox_id,
        },
        "file_write" => {
            let a: FileWriteArgs = parse(arguments)?;
            let content = decode(&a.content, a.encoding.unwrap_or_default())
                .map_err(|why| bad("content", why))?;
            SandboxCall::FileWrite {
                id: a.sandbox_id,
                path: a.path,
                content,
            }
        }
        "file_read" => {
            let a: FilePathArgs = parse(arguments)?;
            SandboxCall::FileRead {
                id: a.sandbox_id,
                path: a.path,
            }
        }
        "file_delete" => {
            let a: FilePathArgs = parse(arguments)?;
            SandboxCall::FileDelete {
                id: a.sandbox_id,
                path: a.path,
            }
        }
        "file_list" => {
            let a: FileListArgs = parse(arguments)?;
            SandboxCall::FileList {
                id: a.sandbox_id,
                path: a.path.unwrap_or_default(),
                recursive: a.recursive.unwrap_or(false),
            }
        }
        "snapshot_create" => {
            let a: SnapshotCreateArgs = parse(arguments)?;
            SandboxCall::SnapshotCreate {
                name: a.name,
                id: a.sandbox_id,
            }
        }
        "snapshot_restore" => {
            let a: SnapshotRestoreArgs = parse(arguments)?;
            SandboxCall::SnapshotRestore {
                name: a.name,
                id: a.sandbox_id,
                profile: a.profile,
            }
        }
        "snapshot_diff" => {
            let a: SnapshotDiffArgs = parse(arguments)?;
            SandboxCall::SnapshotDiff {
                from: a.from,
                to: a.to,
            }
        }
        "snapshot_delete" => SandboxCall::SnapshotDelete {
            name: parse::<SnapshotNameArgs>(arguments)?.name,
        },
        "quota" => {
            parse::<NoArgs>(arguments)?;
            SandboxCall::Quota
        }
        other => return Err(bad("name", format!("unknown tool '{}'", cut(other)))),
    })
}

/// `profile_list` takes no arguments.
pub fn parse_profile_list(arguments: Option<&JsonObject>) -> Result<(), ArgError> {
    parse::<NoArgs>(arguments).map(|_| ())
}

/// The arguments as the audit log digests them (what the client sent).
pub fn args_value(arguments: Option<&JsonObject>) -> Value {
    Value::Object(arguments.cloned().unwrap_or_default())
}

// ----- schemas -----

/// JSON Schema formats (2020-12) a validator knows; others (`uint64`, `int32`,
/// `double`, ...) are dropped.
const STANDARD_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Keywords that describe a schema rather than constrain its type: kept outside the
/// `anyOf` a nullable type becomes.
const ANNOTATIONS: &[&str] = &["title", "description", "default", "examples", "deprecated"];

/// Makes a schema plain JSON Schema 2020-12 for strict clients: `type: [T, "null"]`
/// becomes `anyOf: [{type: T, ...}, {type: "null"}]`, non-standard formats go.
pub fn strict_schema(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(f)) = m.get("format")
                && !STANDARD_FORMATS.contains(&f.as_str())
            {
                m.remove("format");
            }
            // Doc comments wrap lines; a description is one paragraph.
            if let Some(Value::String(d)) = m.get_mut("description")
                && d.contains('\n')
            {
                *d = d.split_whitespace().collect::<Vec<_>>().join(" ");
            }
            for child in m.values_mut() {
                strict_schema(child);
            }
            let nullable = match m.get("type") {
                Some(Value::Array(types)) if types.iter().any(|t| t == "null") => Some(
                    types
                        .iter()
                        .filter(|t| *t != "null")
                        .cloned()
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            };
            if let Some(types) = nullable {
                m.remove("type");
                let mut inner = Map::new();
                inner.insert(
                    "type".into(),
                    match types.len() {
                        1 => types[0].clone(),
                        _ => Value::Array(types),
                    },
                );
                let keys: Vec<String> = m
                    .keys()
                    .filter(|k| !ANNOTATIONS.contains(&k.as_str()))
                    .cloned()
                    .collect();
                for k in keys {
                    if let Some(val) = m.remove(&k) {
                        inner.insert(k, val);
                    }
                }
                m.insert(
                    "anyOf".into(),
                    Value::Array(vec![
                        Value::Object(inner),
                        serde_json::json!({"type": "null"}),
                    ]),
                );
            }
            // `anyOf: [X, {type: null}]` as schemars writes it for an optional enum.
            if let Some(Value::Array(alts)) = m.get_mut("anyOf") {
                for a in alts.iter_mut() {
                    strict_schema(a);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strict_schema),
        _ => {}
    }
}

fn schema<T: JsonSchema>(for_output: bool) -> Result<Arc<JsonObject>, String> {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.inline_subschemas = true;
    if for_output {
        settings = settings.for_serialize();
    } else {
        settings = settings.for_deserialize();
    }
    let root = settings.into_generator().into_root_schema_for::<T>();
    let mut v = serde_json::to_value(root).map_err(|e| e.to_string())?;
    strict_schema(&mut v);
    let Value::Object(mut m) = v else {
        return Err("a schema is not an object".into());
    };
    m.remove("$schema");
    m.remove("title");
    m.remove("$defs");
    if m.get("type") != Some(&Value::String("object".into())) {
        return Err("a tool schema must describe an object".into());
    }
    Ok(Arc::new(m))
}

fn tool<I: JsonSchema, O: JsonSchema>(
    name: &'static str,
    title: &'static str,
    description: &'static str,
    read_only: bool,
    destructive: bool,
) -> Result<Tool, String> {
    tool_with_output::<I>(
        name,
        title,
        description,
        read_only,
        destructive,
        schema::<O>(true)?,
    )
}

/// The output schema of `run`: a `RunResult`, or with `dry_run` a `RunPlan`.
fn run_output_schema() -> Result<Arc<JsonObject>, String> {
    let mut m = JsonObject::new();
    m.insert("type".into(), serde_json::json!("object"));
    m.insert(
        "anyOf".into(),
        serde_json::json!([
            Value::Object((*schema::<RunResult>(true)?).clone()),
            Value::Object((*schema::<aisbx_service::RunPlan>(true)?).clone()),
        ]),
    );
    Ok(Arc::new(m))
}

fn tool_with_output<I: JsonSchema>(
    name: &'static str,
    title: &'static str,
    description: &'static str,
    read_only: bool,
    destructive: bool,
    output: Arc<JsonObject>,
) -> Result<Tool, String> {
    Ok(Tool::new(name, description, schema::<I>(false)?)
        .with_title(title)
        .with_raw_output_schema(output)
        .with_annotations(
            ToolAnnotations::new()
                .read_only(read_only)
                .destructive(destructive)
                .idempotent(read_only)
                .open_world(false),
        ))
}

/// What every sandbox may and may not do, for the descriptions.
const NO_NETWORK: &str = "There is no network and no package installation (pip, npm, apt) \
     unless a profile allows it; use what the profile provides (see profile_list).";

/// The tool definitions.
pub fn definitions() -> Result<Vec<Tool>, String> {
    use aisbx_service::{
        FileContent, FileDeleteResult, FileList, FileWriteResult, RestoreResult, SandboxDestroyed,
        SandboxList, SnapshotDiff, SnapshotInfo, SnapshotList, SnapshotRemoved,
    };
    let run_desc: &'static str = Box::leak(
        format!(
            "Run code or a command in a fresh, isolated Linux sandbox (capped memory, \
             processes and time; nothing of the host visible) and return its exit status \
             and output. {NO_NETWORK} Give exactly one of `code` (with `language`; it runs \
             like `python -c` in /workspace, so files there import by name) or `command`. \
             `files` are written into /workspace first. With `sandbox_id` (from `build` or \
             `snapshot_restore`) the run happens in that persistent sandbox and its files \
             stay. `timeout_secs`, `memory` and `cpus` may lower the profile's limits, never \
             raise them. A non-zero exit or a timeout is a normal result; isError means \
             aisbx refused or failed. Send a progressToken to receive output as it is \
             produced. With `dry_run: true` nothing runs: the result says whether the \
             policy allows the run (`allowed`, `decision`), the profile and the limits \
             it would get."
        )
        .into_boxed_str(),
    );
    let build_desc: &'static str = Box::leak(
        format!(
            "Create a persistent sandbox with its own workspace and profile: write `files`, \
             then run the `setup` shell commands in it one after another. Returns its \
             `sandbox_id`: pass it to `run` and the file and snapshot tools to work in the \
             same sandbox across calls. If a setup command fails the build stops there and \
             answers isError naming the failed step and the skipped ones (the sandbox is \
             kept for inspection). {NO_NETWORK}"
        )
        .into_boxed_str(),
    );
    Ok(vec![
        tool_with_output::<RunArgs>(
            "run",
            "Run code in a sandbox",
            run_desc,
            false,
            false,
            run_output_schema()?,
        )?,
        tool::<BuildArgs, BuildResult>(
            "build",
            "Create a persistent sandbox",
            build_desc,
            false,
            false,
        )?,
        tool::<NoArgs, ProfileList>(
            "profile_list",
            "List sandbox profiles",
            "List the sandbox profiles (name, description, language, what it extends) and \
             whether each is available on this host.",
            true,
            false,
        )?,
        tool::<NoArgs, SandboxList>(
            "sandbox_list",
            "List persistent sandboxes",
            "List the persistent sandboxes: id, profile, creation time and the snapshot each \
             was restored from.",
            true,
            false,
        )?,
        tool::<SandboxIdArgs, SandboxDestroyed>(
            "sandbox_destroy",
            "Destroy a persistent sandbox",
            "Delete a persistent sandbox and all its files. Snapshots taken of it are kept.",
            false,
            true,
        )?,
        tool::<FileWriteArgs, FileWriteResult>(
            "file_write",
            "Write a file in a sandbox",
            "Write a file of a persistent sandbox (path relative to /workspace), creating \
             missing directories: `content` is UTF-8 text, or any bytes in base64 with \
             `encoding: \"base64\"` (the shape file_read returns). The write happens inside \
             the sandbox: symlinks cannot lead it elsewhere.",
            false,
            false,
        )?,
        tool::<FilePathArgs, FileContent>(
            "file_read",
            "Read a file of a sandbox",
            "Read a file of a persistent sandbox (path relative to /workspace), at most 1 MiB; \
             text comes back as is (`encoding: \"utf-8\"`), other bytes as base64 \
             (`encoding: \"base64\"`). Symlinks are not followed.",
            true,
            false,
        )?,
        tool::<FileListArgs, FileList>(
            "file_list",
            "List files of a sandbox",
            "List a directory of a persistent sandbox (relative to /workspace): path, kind \
             (file, dir, symlink), size, mode and mtime of each entry; `recursive` lists \
             the whole tree (at most 10,000 entries).",
            true,
            false,
        )?,
        tool::<FilePathArgs, FileDeleteResult>(
            "file_delete",
            "Delete a file of a sandbox",
            "Delete a file, a symlink (never its target) or a directory with everything in \
             it, in a persistent sandbox (path relative to /workspace). A path through a \
             symlink is not followed.",
            false,
            true,
        )?,
        tool::<SnapshotCreateArgs, SnapshotInfo>(
            "snapshot_create",
            "Snapshot a sandbox",
            "Save the files of a persistent sandbox as a snapshot called `name` (modes, \
             times, symlinks kept; content stored once across snapshots). Restore it later \
             with snapshot_restore to go back to this point.",
            false,
            false,
        )?,
        tool::<SnapshotRestoreArgs, RestoreResult>(
            "snapshot_restore",
            "Restore a snapshot into a new sandbox",
            "Create a NEW persistent sandbox with the id `sandbox_id` from the snapshot \
             `name`, copy-on-write: instant whatever its size, and nothing the sandbox does \
             changes the snapshot. Then use `sandbox_id` with `run` and the file tools.",
            false,
            false,
        )?,
        tool::<NoArgs, SnapshotList>(
            "snapshot_list",
            "List snapshots",
            "List the snapshots: name, creation time, source, profile, parent, size, file \
             count and bytes shared with other snapshots.",
            true,
            false,
        )?,
        tool::<SnapshotDiffArgs, SnapshotDiff>(
            "snapshot_diff",
            "Compare two snapshots",
            "The paths added, removed and changed from one snapshot to another, with a \
             unified diff for small text files.",
            true,
            false,
        )?,
        tool::<SnapshotNameArgs, SnapshotRemoved>(
            "snapshot_delete",
            "Delete a snapshot",
            "Delete a snapshot; content no other snapshot or sandbox uses is freed. \
             Sandboxes restored from it keep working.",
            false,
            true,
        )?,
        tool::<NoArgs, aisbx_service::quota::QuotaReport>(
            "quota",
            "Show your quotas",
            "Your tenant's quotas: for each (concurrent_runs, sandboxes, storage_bytes, \
             cpu_seconds_per_hour, runs_per_minute) what is used, the limit and what \
             remains (null: no limit). A call past a quota is refused naming it; plan \
             with what remains.",
            true,
            false,
        )?,
    ])
}

/// The argument names of a tool.
pub fn fields_of(tool: &str) -> &'static [&'static str] {
    match tool {
        "run" => &[
            "code",
            "language",
            "command",
            "args",
            "files",
            "stdin",
            "env",
            "profile",
            "timeout_secs",
            "memory",
            "cpus",
            "sandbox_id",
            "dry_run",
        ],
        "build" => &["profile", "name", "files", "setup"],
        "sandbox_destroy" => &["sandbox_id"],
        "file_write" => &["sandbox_id", "path", "content", "encoding"],
        "file_read" | "file_delete" => &["sandbox_id", "path"],
        "file_list" => &["sandbox_id", "path", "recursive"],
        "snapshot_create" => &["name", "sandbox_id"],
        "snapshot_restore" => &["name", "sandbox_id", "profile"],
        "snapshot_diff" => &["from", "to"],
        "snapshot_delete" => &["name"],
        _ => &[],
    }
}

/// The isError text of a build whose setup stopped at a failed step, if it did.
pub fn build_failure(b: &BuildResult, setup: &[String]) -> Option<String> {
    let last = b.setup.last()?;
    let failed = last.exit_code != Some(0);
    let cut_short = b.setup.len() < setup.len();
    if !failed && !cut_short {
        return None;
    }
    let i = b.setup.len() - 1;
    let cmd = setup.get(i).map(String::as_str).unwrap_or_default();
    let mut s = format!(
        "setup step {} of {} (`{}`) failed: {}",
        i + 1,
        setup.len(),
        cut(cmd),
        run_summary(last)
    );
    let skipped: Vec<String> = setup[i + 1..]
        .iter()
        .enumerate()
        .map(|(k, c)| format!("{} (`{}`)", i + 2 + k, cut(c)))
        .collect();
    if skipped.is_empty() {
        s.push_str("\nNo step was skipped.");
    } else {
        s.push_str(&format!("\nSkipped: {}.", skipped.join(", ")));
    }
    s.push_str(&format!(
        "\nThe sandbox {} was created and kept: fix it with `run` and sandbox_id \"{}\", or remove it with sandbox_destroy.",
        b.sandbox_id, b.sandbox_id
    ));
    Some(s)
}

/// The tool definitions as shared, ready-to-list values.
pub fn shared_definitions() -> Result<Arc<Vec<Tool>>, String> {
    definitions().map(Arc::new)
}

// ----- readable summaries -----

/// `exit 0 in 12 ms (profile python)` and the output.
/// The text of a dry run's result.
pub fn plan_summary(p: &aisbx_service::RunPlan) -> String {
    let decision = p
        .decision
        .refusal()
        .unwrap_or_else(|| "allowed by policy".to_string());
    let l = &p.limits;
    let mut s = format!(
        "dry run, nothing ran: {decision}\nprofile: {}\nlimits: timeout {} s, memory {} bytes, pids {}, cpus {}\ncommand: {}",
        p.profile,
        l.timeout_secs,
        l.memory_bytes,
        l.pids,
        l.cpus,
        p.argv.join(" ")
    );
    for n in &p.notices {
        s.push_str("\nnote: ");
        s.push_str(n);
    }
    s
}

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
    if !r.network_denied.is_empty() {
        s.push_str(&format!(
            "\nnetwork refused: {} (not in the profile's [network] allow)",
            r.network_denied.join(", ")
        ));
    }
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
        "network_denied": r.network_denied,
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

    /// Every `type` is one name, every `format` standard, everywhere in a schema.
    fn assert_strict(v: &Value, at: &str) {
        match v {
            Value::Object(m) => {
                if let Some(t) = m.get("type") {
                    assert!(t.is_string(), "{at}: type {t}");
                }
                if let Some(Value::String(f)) = m.get("format") {
                    assert!(STANDARD_FORMATS.contains(&f.as_str()), "{at}: format {f}");
                }
                assert!(!m.contains_key("nullable"), "{at}");
                if let Some(Value::String(d)) = m.get("description") {
                    assert!(!d.contains('\n'), "{at}: {d}");
                }
                assert!(!m.contains_key("$ref"), "{at}");
                for (k, c) in m {
                    assert_strict(c, &format!("{at}/{k}"));
                }
            }
            Value::Array(a) => a.iter().for_each(|c| assert_strict(c, at)),
            _ => {}
        }
    }

    #[test]
    fn definitions_have_strict_schemas() {
        let defs = definitions().expect("definitions");
        let names: Vec<&str> = defs.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names[..3], ["run", "build", "profile_list"]);
        assert_eq!(names[3..], *SANDBOX_TOOLS);
        for t in &defs {
            assert!(t.description.is_some());
            assert_eq!(t.input_schema.get("type"), Some(&json!("object")));
            let out = t.output_schema.as_ref().expect("output schema");
            assert_eq!(out.get("type"), Some(&json!("object")), "{}", t.name);
            assert_strict(&Value::Object((*t.input_schema).clone()), &t.name);
            assert_strict(&Value::Object((**out).clone()), &t.name);
            // The schema's properties are the fields the parser and the error mapping know.
            let props: Vec<&str> = t
                .input_schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().map(String::as_str).collect())
                .unwrap_or_default();
            let mut known = fields_of(&t.name).to_vec();
            known.sort_unstable();
            let mut props = props;
            props.sort_unstable();
            assert_eq!(props, known, "{}", t.name);
        }
        let out = defs[0].output_schema.as_ref().expect("out");
        // `run` answers a RunResult, or with dry_run a RunPlan.
        let result = &out["anyOf"][0];
        let plan = &out["anyOf"][1];
        // A nullable result field is anyOf [integer, null].
        assert_eq!(
            result["properties"]["exit_code"]["anyOf"][1],
            json!({"type": "null"})
        );
        assert_eq!(plan["properties"]["dry_run"]["type"], json!("boolean"));
        assert_eq!(
            plan["properties"]["limits"]["properties"]["memory_bytes"]["type"],
            json!("integer")
        );
    }

    #[test]
    fn run_code_and_command() {
        let r = parse_run(Some(&obj(json!({"code": "print(1)", "args": ["a"]})))).expect("ok");
        assert_eq!(
            r.program,
            Program::Code {
                language: String::new(),
                code: "print(1)".into()
            }
        );
        assert_eq!(r.args, vec!["a".to_string()]);
        let r = parse_run(Some(&obj(json!({"command": ["echo", "hi"], "stdin": "x",
            "timeout_secs": 5, "files": {"a/b.txt": "c", "bin": {"content": "AAH/", "encoding": "base64"}},
            "profile": "default", "env": {"A": "1"}, "memory": "64M", "cpus": 0.5,
            "sandbox_id": "sb-1", "code": null}))))
        .expect("ok");
        assert_eq!(
            r.program,
            Program::Command(vec!["echo".into(), "hi".into()])
        );
        assert_eq!(r.stdin, Some(b"x".to_vec()));
        assert_eq!(r.limits.timeout_secs, Some(5.0));
        assert_eq!(r.limits.memory_bytes, Some(64 << 20));
        assert_eq!(r.limits.cpus, Some(0.5));
        assert_eq!(r.env, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(r.limit_policy, LimitPolicy::LowerOnly);
        assert_eq!(r.files.get("a/b.txt").map(Vec::as_slice), Some(&b"c"[..]));
        assert_eq!(
            r.files.get("bin").map(Vec::as_slice),
            Some(&[0u8, 1, 255][..])
        );
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
        assert_eq!(run_err(json!({"command": ["ls", 1]})).field, "command");
        assert_eq!(
            run_err(json!({"command": ["ls"], "language": "python"})).field,
            "language"
        );
        assert_eq!(
            run_err(json!({"code": "x", "timeout_secs": "5"})).field,
            "timeout_secs"
        );
        assert_eq!(run_err(json!({"code": "x", "stdin": []})).field, "stdin");
        assert_eq!(
            run_err(json!({"code": "x", "memory": "lots"})).field,
            "memory"
        );
        assert_eq!(run_err(json!({"code": "x", "env": {"A": 1}})).field, "env");
        let e = run_err(json!({"code": "x", "cmd": ["ls"]}));
        assert_eq!(e.field, "cmd");
        assert!(
            e.message.contains("unknown argument 'cmd'"),
            "{}",
            e.message
        );
        let e = run_err(json!({"code": "x", "files": {"a": 1}}));
        assert_eq!(e.field, "files");
        assert!(e.message.contains("base64"), "{}", e.message);
        let e =
            run_err(json!({"code": "x", "files": {"a": {"content": "!!", "encoding": "base64"}}}));
        assert_eq!(e.field, "files");
        let long = "k".repeat(10_000);
        let e = run_err(json!({"code": "x", long.clone(): 1}));
        assert!(e.field.len() <= 204 && e.message.len() < 600, "{e:?}");
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
        assert_eq!(
            call(
                "file_write",
                json!({"sandbox_id": "a", "path": "x", "content": "AP8=", "encoding": "base64"})
            ),
            Ok(SandboxCall::FileWrite {
                id: "a".into(),
                path: "x".into(),
                content: vec![0, 255],
            })
        );
        let field = |t: &str, v: Value| call(t, v).expect_err("bad").field;
        assert_eq!(field("file_read", json!({"sandbox_id": "a"})), "path");
        assert_eq!(
            field("file_write", json!({"sandbox_id": "a", "path": "x"})),
            "content"
        );
        assert_eq!(
            field(
                "file_write",
                json!({"sandbox_id": "a", "path": "x", "content": "", "encoding": "hex"})
            ),
            "encoding"
        );
        assert_eq!(
            field("file_list", json!({"sandbox_id": "a", "recursive": "yes"})),
            "recursive"
        );
        assert_eq!(field("sandbox_destroy", json!({})), "sandbox_id");
        assert_eq!(field("snapshot_delete", json!({})), "name");
        assert_eq!(field("file_delete", json!({"sandbox_id": "a"})), "path");
        assert_eq!(field("snapshot_diff", json!({"from": "a"})), "to");
        assert_eq!(field("snapshot_list", json!({"x": 1})), "x");
        assert!(parse_profile_list(None).is_ok());
    }

    #[test]
    fn a_failed_setup_step_is_named() {
        let r = |code| RunResult {
            exit_code: Some(code),
            signal: None,
            timed_out: false,
            oom_killed: false,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: 1,
            cpu_ms: 0,
            max_rss_kib: 0,
            profile: "default".into(),
            sandbox_id: Some("sb".into()),
            network_denied: Vec::new(),
        };
        let setup: Vec<String> = ["echo a", "exit 3", "echo never"]
            .map(String::from)
            .to_vec();
        let mut b = BuildResult {
            sandbox_id: "sb".into(),
            profile: "default".into(),
            created_at: String::new(),
            setup: vec![r(0), r(3)],
        };
        let t = build_failure(&b, &setup).expect("failed");
        assert!(
            t.starts_with("setup step 2 of 3 (`exit 3`) failed: exit 3"),
            "{t}"
        );
        assert!(t.contains("Skipped: 3 (`echo never`)."), "{t}");
        b.setup = vec![r(0), r(0), r(0)];
        assert_eq!(build_failure(&b, &setup), None);
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
            network_denied: Vec::new(),
        };
        let s = run_summary(&r);
        assert!(s.starts_with("exit 3 in 12 ms (profile python)"), "{s}");
        assert!(s.contains("--- stdout ---\nhello\n[stdout truncated"));
        assert!(!s.contains("stderr"));
    }
}
