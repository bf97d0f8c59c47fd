//! The request and result types every front end speaks.
//!
//! `RunResult` is the contract of `aisbx run --json` and of the MCP `run` tool's
//! `structuredContent`: the same struct serialises to both.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Program {
    /// An argv, executed inside the sandbox (a bare name is looked up on the sandbox PATH).
    Command(Vec<String>),
    /// Source code in a language (`python`, `node`, `bash`, `sh`, `perl`, ...); an
    /// empty language means the profile's, else one detected from the code.
    Code { language: String, code: String },
    /// A host file; its content is copied into the sandbox and run by the language its
    /// extension or shebang names.
    File(PathBuf),
}

/// Per-call limits; `None` keeps the profile's value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitOverrides {
    pub timeout_secs: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
}

/// Who may set a request's limits, relative to its profile's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitPolicy {
    /// The user at the CLI: per-call limits may raise the profile's or lower them.
    #[default]
    MayRaise,
    /// A client of the server (MCP): per-call limits may only lower the profile's; a
    /// raise is refused, naming the field and the profile's value.
    LowerOnly,
}

/// How a request treats the profiles of the project it runs in (`.aisbx/profiles`
/// found from the workdir, or the current directory, upward). They are used only
/// once the user approved their exact content with `aisbx trust`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProjectProfiles {
    /// Use them when approved; refuse the request when they are not (the CLI's
    /// `run` and `exec`, where the user can approve them).
    Require,
    /// Use them when approved; leave them out otherwise (MCP, which never
    /// approves, and the service's own runs).
    #[default]
    TrustedOnly,
    /// Never use them (`--ignore-project-profiles`).
    Ignore,
}

/// One run request, as the CLI and the MCP server build it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    pub program: Program,
    /// Profile name; `None` detects one (docs/PROFILES.md), `base` for a plain command.
    pub profile: Option<String>,
    /// Host directory bound read-write at /workspace; `None` gives a fresh, capped
    /// workspace that disappears with the run.
    pub workdir: Option<PathBuf>,
    /// Run inside this persistent sandbox (its workspace and profile).
    pub sandbox_id: Option<String>,
    pub limits: LimitOverrides,
    /// Arguments for the code or the script (`sys.argv[1:]`, `process.argv.slice(2)`);
    /// a command carries its own.
    #[serde(default)]
    pub args: Vec<String>,
    /// Whether `limits` may raise the profile's (the CLI) or only lower them (MCP).
    #[serde(default)]
    pub limit_policy: LimitPolicy,
    /// Extra environment, after the profile's.
    pub env: Vec<(String, String)>,
    /// Files written into /workspace before the run (relative paths only), any bytes.
    #[serde(with = "file_map")]
    pub files: BTreeMap<String, Vec<u8>>,
    /// Bytes fed to the program's standard input (`None`: /dev/null, or the caller's
    /// stdin when the CLI passes it through).
    pub stdin: Option<Vec<u8>>,
    /// Pass the caller's own stdin through when `stdin` is `None` (the CLI does when
    /// its stdin is not a terminal).
    #[serde(default)]
    pub inherit_stdin: bool,
    #[serde(default)]
    pub project_profiles: ProjectProfiles,
    /// Who asks, for the policy (`input.caller`); `None` takes it from the
    /// request's [`RequestMeta`].
    #[serde(default)]
    pub caller: Option<Caller>,
}

impl RunRequest {
    pub fn new(program: Program) -> Self {
        RunRequest {
            program,
            profile: None,
            workdir: None,
            sandbox_id: None,
            limits: LimitOverrides::default(),
            args: Vec::new(),
            limit_policy: LimitPolicy::MayRaise,
            env: Vec::new(),
            files: BTreeMap::new(),
            stdin: None,
            inherit_stdin: false,
            project_profiles: ProjectProfiles::TrustedOnly,
            caller: None,
        }
    }
}

/// How a request reached aisbx (the policy's `input.caller.transport`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The `aisbx` command line.
    #[default]
    Cli,
    /// MCP over stdio.
    Stdio,
    /// MCP over HTTP.
    Http,
    /// MCP over a Unix socket.
    Unix,
}

/// Who asks: the policy's `input.caller`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// The tenant the request counts against and whose sandboxes and snapshots it
    /// sees (`default` unless the caller is mapped to another).
    pub tenant: String,
    pub transport: Transport,
    /// The client's self-reported name (MCP clientInfo), or the user for the CLI.
    pub client: Option<String>,
}

/// The tenant of every caller nothing maps to another tenant.
pub const DEFAULT_TENANT: &str = crate::tenants::DEFAULT_TENANT;

impl Caller {
    /// The caller a front end's [`RequestMeta`] describes.
    pub fn from_meta(meta: &RequestMeta) -> Caller {
        let transport = match meta.front_end.as_str() {
            "mcp-stdio" => Transport::Stdio,
            "mcp-http" => Transport::Http,
            "mcp-unix" => Transport::Unix,
            _ => Transport::Cli,
        };
        Caller {
            tenant: meta.tenant.clone(),
            transport,
            client: meta.client.clone(),
        }
    }
}

/// The outcome of one run. Field names are the product contract (SPEC "RunResult").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunResult {
    /// The program's exit status, `null` when it was killed by a signal.
    pub exit_code: Option<i32>,
    /// The signal that killed the program, if any.
    pub signal: Option<i32>,
    /// The wall-clock limit was reached and the whole process tree was killed.
    pub timed_out: bool,
    /// The kernel's OOM killer killed a process of the run (memory limit reached).
    pub oom_killed: bool,
    /// Standard output (UTF-8, invalid bytes replaced), at most the output cap.
    pub stdout: String,
    pub stderr: String,
    /// More output was produced than the cap; the rest was dropped.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
    pub cpu_ms: u64,
    pub max_rss_kib: u64,
    /// The profile the run used.
    pub profile: String,
    /// The persistent sandbox the run used, if any.
    pub sandbox_id: Option<String>,
    /// Destinations (`host:port`) the run tried to reach and was refused, in the
    /// order first tried: what to allow in the profile's `[network]` if they were
    /// meant (docs/NETWORK.md). Empty for a run without network.
    #[serde(default)]
    pub network_denied: Vec<String>,
}

impl RunResult {
    /// The CLI exit status for this result (SPEC: own code; 128+N on signal N; 124 on
    /// timeout).
    pub fn cli_exit_code(&self) -> i32 {
        if self.timed_out {
            124
        } else if let Some(sig) = self.signal {
            128 + sig
        } else {
            self.exit_code.unwrap_or(125)
        }
    }
}

/// What a run would do (`aisbx run --dry-run`, MCP `run` with `dry_run`): the
/// policy's decision, the resolved profile and the limits the run would get.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct RunPlan {
    /// Always true: nothing ran.
    pub dry_run: bool,
    /// Whether the policy lets the run go on.
    pub allowed: bool,
    pub decision: crate::policy::Decision,
    /// The profile the run would use.
    pub profile: String,
    /// The limits it would get, after the policy's ceilings.
    pub limits: RunLimits,
    /// What would be executed in the sandbox.
    pub argv: Vec<String>,
    pub sandbox_id: Option<String>,
    /// Where the policy came from.
    pub policy: String,
    /// What the run chose that the user did not say.
    pub notices: Vec<String>,
    /// Where the run could connect (its final allowlist, package indexes
    /// resolved); `null` for a run without network.
    pub network_allow: Option<Vec<String>>,
}

/// A run's limits, in the policy's units.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct RunLimits {
    pub timeout_secs: f64,
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpus: f64,
}

impl From<&aisbx_jail::Limits> for RunLimits {
    fn from(l: &aisbx_jail::Limits) -> RunLimits {
        RunLimits {
            timeout_secs: l.wall.as_secs_f64(),
            memory_bytes: l.memory_bytes,
            pids: l.pids,
            cpus: l.cpus,
        }
    }
}

/// Which front end a request came through, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMeta {
    /// `cli`, `mcp-stdio` or `mcp-http`.
    pub front_end: String,
    /// The client's self-reported name (MCP clientInfo), or the user for the CLI.
    pub client: Option<String>,
    /// The MCP tool or CLI command (`run`, `build`, ...).
    pub tool: String,
    /// The tenant the front end authenticated the caller as: its sandboxes,
    /// snapshots and quotas are the only ones the request reaches.
    #[serde(default = "default_tenant")]
    pub tenant: String,
}

fn default_tenant() -> String {
    DEFAULT_TENANT.to_string()
}

/// Receives a run's output as it is produced.
pub trait OutputSink: Send {
    fn stdout(&mut self, data: &[u8]);
    fn stderr(&mut self, data: &[u8]);
    /// A note from aisbx about the run, given before it starts: which profile it
    /// inferred, and why. Ignored unless a front end shows it.
    fn notice(&mut self, _text: &str) {}
}

/// A sink that drops everything (the result still carries the captured output).
pub struct NullSink;

impl OutputSink for NullSink {
    fn stdout(&mut self, _: &[u8]) {}
    fn stderr(&mut self, _: &[u8]) {}
}

/// Create a persistent sandbox (MCP `build`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildRequest {
    pub profile: Option<String>,
    /// A name for the sandbox; one is generated when absent.
    pub name: Option<String>,
    /// Files written into the sandbox's workspace (relative paths only), any bytes.
    #[serde(with = "file_map")]
    pub files: BTreeMap<String, Vec<u8>>,
    /// Shell commands run one after another in the sandbox (`sh -c`); stops at the
    /// first failure.
    pub setup: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BuildResult {
    pub sandbox_id: String,
    pub profile: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    pub setup: Vec<RunResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProfileInfo {
    pub name: String,
    pub description: String,
    /// The language the profile runs, if it is a language profile.
    pub language: Option<String>,
    pub extends: Vec<String>,
    /// Whether this host has what the profile needs (its runtime).
    pub available: bool,
    /// Where the profile comes from: `builtin`, `user` or `project`.
    #[serde(default)]
    pub source: String,
    /// The file of a `user` or `project` profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Why it is not available: the missing runtime, or what is wrong with the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProfileList {
    pub profiles: Vec<ProfileInfo>,
}

/// Cancels a run from another thread: the run's whole process tree is killed.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Files as requests serialise them (the audit log digests them): a UTF-8 content as
/// a string, other bytes as `{"base64": ...}`.
mod file_map {
    use std::collections::BTreeMap;

    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Content {
        Text(String),
        Bytes { base64: String },
    }

    pub fn serialize<S: Serializer>(
        files: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let m: BTreeMap<&String, Content> = files
            .iter()
            .map(|(k, v)| {
                let c = match std::str::from_utf8(v) {
                    Ok(t) => Content::Text(t.to_string()),
                    Err(_) => Content::Bytes {
                        base64: base64::engine::general_purpose::STANDARD.encode(v),
                    },
                };
                (k, c)
            })
            .collect();
        m.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        let m = BTreeMap::<String, Content>::deserialize(d)?;
        m.into_iter()
            .map(|(k, c)| {
                let v = match c {
                    Content::Text(t) => t.into_bytes(),
                    Content::Bytes { base64 } => base64::engine::general_purpose::STANDARD
                        .decode(base64)
                        .map_err(serde::de::Error::custom)?,
                };
                Ok((k, v))
            })
            .collect()
    }
}

/// A new random identifier with a prefix, e.g. `req-5f3a9c0e12ab`.
pub fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 6];
    // SAFETY: getrandom writes at most `b.len()` bytes into our buffer. A few bytes
    // never block once the kernel's pool is ready and are never cut short.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    format!("{prefix}-{}", hex::encode(b))
}
