//! Policy as code: every request is decided by a Rego policy (evaluated with
//! `regorus`) before it runs.
//!
//! The contract (docs/POLICY.md) is fixed so that policies stay portable: package
//! `aisbx`; `allow` (boolean; undefined refuses), `deny` (a set of reasons; any
//! refuses), `limits` (an object of ceilings: `timeout_secs`, `memory_bytes`,
//! `pids`, `cpus`). A bundle is read once per process and parsed once; each
//! decision evaluates on a clone of the prepared engine.
//!
//! Where the bundle comes from: an explicit directory (`--policy DIR` or
//! `AISBX_POLICY`) alone; otherwise `/etc/aisbx/policy/` and `$AISBX_HOME/policy/`
//! together, as one bundle; when neither holds a `.rego` file, the embedded
//! default policy, which allows every request (today's behaviour).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::{BuildRequest, Caller, LimitOverrides, Program, RunRequest};
use crate::profile::{Profile, schema::Val};

/// The default bundle: the policy and its tests (what `aisbx policy init` writes).
pub const DEFAULT_POLICY: &str = include_str!("default.rego");
pub const DEFAULT_POLICY_TEST: &str = include_str!("default_test.rego");
/// File names of the default bundle.
pub const DEFAULT_FILES: [(&str, &str); 2] = [
    ("aisbx.rego", DEFAULT_POLICY),
    ("aisbx_test.rego", DEFAULT_POLICY_TEST),
];

/// The administrator's policy directory.
pub const SYSTEM_DIR: &str = "/etc/aisbx/policy";
/// The environment variable naming an explicit policy directory.
pub const ENV_VAR: &str = "AISBX_POLICY";

/// Bounds on what a bundle may hold: policies are configuration, not data sets.
const MAX_FILE_BYTES: u64 = 1 << 20;
const MAX_FILES: usize = 512;
const MAX_DEPTH: usize = 8;
/// Longest one decision may evaluate before it fails (and so refuses).
const EVAL_LIMIT: Duration = Duration::from_millis(250);

/// A policy that cannot be read, parsed or evaluated; one sentence for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolicyError {}

/// What a bundle file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Rego source.
    Rego,
    /// A JSON object merged into `data` at its root.
    Data,
}

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFile {
    /// Its name for messages and the hash: the path relative to its directory
    /// (prefixed by the directory when two directories are combined).
    pub name: String,
    /// Where it was read from (`None` for the embedded default).
    pub path: Option<PathBuf>,
    pub kind: FileKind,
    pub text: String,
}

impl BundleFile {
    /// A `*_test.rego` file: loaded by `policy test` and `policy check`, not to
    /// decide requests (as `opa test` names them).
    pub fn is_test(&self) -> bool {
        self.kind == FileKind::Rego && self.name.ends_with("_test.rego")
    }
}

/// Where a bundle came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Origin {
    /// The embedded default policy.
    Default,
    /// `--policy DIR` or `AISBX_POLICY`.
    Explicit { dir: PathBuf },
    /// `/etc/aisbx/policy` and `$AISBX_HOME/policy`, those that hold files.
    Standard { dirs: Vec<PathBuf> },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("the embedded default policy"),
            Origin::Explicit { dir } => write!(f, "{}", dir.display()),
            Origin::Standard { dirs } => {
                let d: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                f.write_str(&d.join(" + "))
            }
        }
    }
}

/// The policy directories a service reads, in the order of [`Bundle::load`].
pub fn standard_dirs(home: &Path) -> Vec<PathBuf> {
    vec![PathBuf::from(SYSTEM_DIR), home.join("policy")]
}

/// The explicit policy directory from the environment, when set.
pub fn env_dir() -> Option<PathBuf> {
    std::env::var_os(ENV_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The files of a bundle and their hash, before parsing.
#[derive(Debug, Clone)]
pub struct Sources {
    pub origin: Origin,
    pub files: Vec<BundleFile>,
    /// `sha256:` and the hex digest over every file's name and content.
    pub hash: String,
}

impl Sources {
    /// The embedded default bundle.
    pub fn default_bundle() -> Sources {
        let files = DEFAULT_FILES
            .iter()
            .map(|(name, text)| BundleFile {
                name: (*name).to_string(),
                path: None,
                kind: FileKind::Rego,
                text: (*text).to_string(),
            })
            .collect();
        Sources::new(Origin::Default, files)
    }

    fn new(origin: Origin, mut files: Vec<BundleFile>) -> Sources {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let hash = bundle_hash(&files);
        Sources {
            origin,
            files,
            hash,
        }
    }

    /// The files of an explicit directory: it must exist and hold a `.rego` file.
    pub fn from_dir(dir: &Path) -> Result<Sources, PolicyError> {
        let meta = std::fs::metadata(dir).map_err(|e| {
            PolicyError(format!(
                "cannot read the policy directory {}: {e}; create it with `aisbx policy init {}`",
                dir.display(),
                dir.display()
            ))
        })?;
        if !meta.is_dir() {
            return Err(PolicyError(format!(
                "the policy path {} is not a directory; give a directory of .rego files",
                dir.display()
            )));
        }
        let mut files = Vec::new();
        walk(dir, dir, "", 0, &mut files)?;
        if !files.iter().any(|f| f.kind == FileKind::Rego) {
            return Err(PolicyError(format!(
                "the policy directory {} holds no .rego file; start from the default with `aisbx policy init {}`",
                dir.display(),
                dir.display()
            )));
        }
        Ok(Sources::new(
            Origin::Explicit {
                dir: dir.to_path_buf(),
            },
            files,
        ))
    }

    /// The files of the standard directories, combined (a missing directory is
    /// skipped); the embedded default when none holds a `.rego` file.
    pub fn from_standard(dirs: &[PathBuf]) -> Result<Sources, PolicyError> {
        let mut per_dir = Vec::new();
        for d in dirs {
            match std::fs::metadata(d) {
                Ok(m) if m.is_dir() => {
                    let mut files = Vec::new();
                    walk(d, d, "", 0, &mut files)?;
                    if !files.is_empty() {
                        per_dir.push((d.clone(), files));
                    }
                }
                Ok(_) => {
                    return Err(PolicyError(format!(
                        "the policy path {} is not a directory; remove it or make it a directory of .rego files",
                        d.display()
                    )));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(PolicyError(format!(
                        "cannot read the policy directory {}: {e}",
                        d.display()
                    )));
                }
            }
        }
        let any_rego = per_dir
            .iter()
            .any(|(_, f)| f.iter().any(|f| f.kind == FileKind::Rego));
        if !any_rego {
            return Ok(Sources::default_bundle());
        }
        let combined = per_dir.len() > 1;
        let used: Vec<PathBuf> = per_dir.iter().map(|(d, _)| d.clone()).collect();
        let mut files = Vec::new();
        for (d, fs) in per_dir {
            for mut f in fs {
                if combined {
                    f.name = format!("{}/{}", d.display(), f.name);
                }
                files.push(f);
            }
        }
        Ok(Sources::new(Origin::Standard { dirs: used }, files))
    }

    /// The bundle a service uses: `explicit` alone when given, else the
    /// standard directories for `home`.
    pub fn locate(explicit: Option<&Path>, home: &Path) -> Result<Sources, PolicyError> {
        match explicit {
            Some(d) => Sources::from_dir(d),
            None => Sources::from_standard(&standard_dirs(home)),
        }
    }

    /// Every problem of the bundle, each `file:line:col: message` where the
    /// parser gives one; empty when the bundle loads.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for f in &self.files {
            let r: Result<(), String> = match f.kind {
                FileKind::Rego => regorus::Engine::new()
                    .add_policy(f.name.clone(), f.text.clone())
                    .map(|_| ())
                    .map_err(|e| located(&e.to_string())),
                FileKind::Data => data_value(f).map(|_| ()).map_err(|e| e.0),
            };
            if let Err(e) = r {
                problems.push(e);
            }
        }
        if problems.is_empty()
            && let Err(e) = Bundle::parse(self, true)
        {
            problems.push(e.0);
        }
        problems
    }
}

/// A parser message as `file:line:col: message`, then the parser's excerpt:
/// regorus puts the place on a `--> file:line:col` line and the message on an
/// `error:` line.
pub fn located(msg: &str) -> String {
    let place = msg
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("--> "))
        .map(str::trim);
    let what = msg
        .lines()
        .rev()
        .find_map(|l| l.trim_start().strip_prefix("error: "))
        .map(str::trim);
    match (place, what) {
        (Some(p), Some(w)) => {
            let excerpt: Vec<&str> = msg
                .lines()
                .filter(|l| {
                    let t = l.trim_start();
                    !t.is_empty() && !t.starts_with("--> ") && !t.starts_with("error: ")
                })
                .collect();
            format!("{p}: {w}\n{}", excerpt.join("\n"))
        }
        _ => msg.to_string(),
    }
}

/// `sha256:` + hex over each file's name, a NUL, its length and its content, in
/// name order: the same files give the same hash wherever they are.
fn bundle_hash(files: &[BundleFile]) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.name.as_bytes());
        h.update([0u8]);
        h.update((f.text.len() as u64).to_le_bytes());
        h.update(f.text.as_bytes());
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Collects the `.rego` and `.json` files under `dir` (hidden entries such as
/// `.git` skipped), in name order.
fn walk(
    root: &Path,
    dir: &Path,
    prefix: &str,
    depth: usize,
    out: &mut Vec<BundleFile>,
) -> Result<(), PolicyError> {
    if depth > MAX_DEPTH {
        return Err(PolicyError(format!(
            "the policy directory {} is nested more than {MAX_DEPTH} levels deep",
            root.display()
        )));
    }
    let rd = std::fs::read_dir(dir)
        .map_err(|e| PolicyError(format!("cannot list {}: {e}", dir.display())))?;
    let mut entries: Vec<(String, PathBuf)> = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| PolicyError(format!("cannot list {}: {e}", dir.display())))?;
        let Some(name) = ent.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        // A link to a directory is not followed (it could lead anywhere, or
        // round in a circle); a link to a file is read.
        let linked_dir = ent.file_type().is_ok_and(|t| t.is_symlink()) && ent.path().is_dir();
        if !linked_dir {
            entries.push((name, ent.path()));
        }
    }
    entries.sort();
    for (name, path) in entries {
        let rel = format!("{prefix}{name}");
        let meta = std::fs::metadata(&path)
            .map_err(|e| PolicyError(format!("cannot read {}: {e}", path.display())))?;
        if meta.is_dir() {
            walk(root, &path, &format!("{rel}/"), depth + 1, out)?;
            continue;
        }
        let kind = if name.ends_with(".rego") {
            FileKind::Rego
        } else if name.ends_with(".json") {
            FileKind::Data
        } else {
            continue;
        };
        if meta.len() > MAX_FILE_BYTES {
            return Err(PolicyError(format!(
                "the policy file {} is larger than {} KiB",
                path.display(),
                MAX_FILE_BYTES >> 10
            )));
        }
        if out.len() >= MAX_FILES {
            return Err(PolicyError(format!(
                "the policy directory {} holds more than {MAX_FILES} files",
                root.display()
            )));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| {
            PolicyError(format!(
                "cannot read the policy file {}: {e}",
                path.display()
            ))
        })?;
        out.push(BundleFile {
            name: rel,
            path: Some(path),
            kind,
            text,
        });
    }
    Ok(())
}

fn data_value(f: &BundleFile) -> Result<regorus::Value, PolicyError> {
    let v: serde_json::Value = serde_json::from_str(&f.text).map_err(|e| {
        PolicyError(format!(
            "{}:{}:{}: invalid JSON: {e}",
            f.name,
            e.line(),
            e.column()
        ))
    })?;
    if !v.is_object() {
        return Err(PolicyError(format!(
            "{}: a data file must hold a JSON object (it is merged into `data`)",
            f.name
        )));
    }
    Ok(regorus::Value::from(v))
}

/// Ceilings a policy puts on a run's limits; `None` leaves a limit as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Ceilings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
}

impl Ceilings {
    pub fn is_empty(&self) -> bool {
        *self == Ceilings::default()
    }

    /// Lowers `limits` to the ceilings; returns a note for each limit lowered.
    pub fn apply(&self, limits: &mut aisbx_jail::Limits) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(t) = self.timeout_secs
            && limits.wall.as_secs_f64() > t
        {
            limits.wall = Duration::from_secs_f64(t);
            notes.push(format!("timeout lowered to {t} s"));
        }
        if let Some(m) = self.memory_bytes
            && limits.memory_bytes > m
        {
            limits.memory_bytes = m;
            notes.push(format!("memory lowered to {m} bytes"));
        }
        if let Some(p) = self.pids
            && limits.pids > p
        {
            limits.pids = p;
            notes.push(format!("pids lowered to {p}"));
        }
        if let Some(c) = self.cpus
            && limits.cpus > c
        {
            limits.cpus = c;
            notes.push(format!("cpus lowered to {c}"));
        }
        notes
    }
}

/// The policy's `network` rule: `allow` (when given) is the most a run may
/// reach — the profile's destinations it does not cover are dropped — and
/// `deny` is added to the profile's (deny wins). It can narrow, never widen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkObligation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// The outcome of evaluating a request.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Decision {
    /// The request may go on: `allow` is true and `deny` is empty.
    pub allowed: bool,
    /// The value of `allow` (`false` when undefined).
    pub allow: bool,
    /// The reasons to refuse: `deny`'s, or why the policy refused without one.
    pub deny: Vec<String>,
    /// The ceilings to apply.
    pub limits: Ceilings,
    /// The profile the policy forces (its `profile` rule), for `run` and `build`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// How the policy narrows a run's network (its `network` rule).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkObligation>,
    /// Quotas of the caller's tenant the policy lowers (`quotas`; tenants.toml's
    /// stand where it says nothing, and it can only lower them).
    #[serde(skip_serializing_if = "crate::tenants::Quota::is_empty")]
    pub quotas: crate::tenants::Quota,
    /// The bundle's hash.
    pub bundle: String,
}

impl Decision {
    /// The refusal to give the caller, when the request may not go on.
    pub fn refusal(&self) -> Option<String> {
        (!self.allowed).then(|| format!("refused by policy: {}", self.deny.join("; ")))
    }
}

/// A parsed, prepared bundle. Clone it freely: the engine is shared until a
/// decision evaluates on its own copy.
#[derive(Clone)]
pub struct Bundle {
    pub origin: Origin,
    pub hash: String,
    engine: regorus::Engine,
    /// Which of `deny`, `limits` and `profile` the bundle declares (`allow` it must).
    has_deny: bool,
    has_limits: bool,
    has_profile: bool,
    has_network: bool,
    has_quotas: bool,
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("origin", &self.origin)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

fn engine() -> regorus::Engine {
    let mut e = regorus::Engine::new();
    e.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
        limit: EVAL_LIMIT,
        check_interval: std::num::NonZeroU32::MIN.saturating_add(63),
    });
    e
}

impl Bundle {
    /// Parses the bundle (without its `*_test.rego` files unless `with_tests`)
    /// and prepares it for evaluation.
    pub fn parse(src: &Sources, with_tests: bool) -> Result<Bundle, PolicyError> {
        let mut e = engine();
        // The files of package aisbx, by the name they were added under.
        let mut aisbx_files = Vec::new();
        for f in &src.files {
            match f.kind {
                FileKind::Rego if with_tests || !f.is_test() => {
                    let pkg = e
                        .add_policy(f.name.clone(), f.text.clone())
                        .map_err(|e| PolicyError(located(&e.to_string())))?;
                    if pkg == "data.aisbx" {
                        aisbx_files.push(f.name.as_str());
                    }
                }
                FileKind::Rego => {}
                FileKind::Data => {
                    let v = data_value(f)?;
                    e.add_data(v)
                        .map_err(|err| PolicyError(format!("{}: {err}", f.name)))?;
                }
            }
        }
        if aisbx_files.is_empty() {
            return Err(PolicyError(format!(
                "no file of the policy bundle ({}) declares `package aisbx`, so no request could be allowed; see docs/POLICY.md",
                src.origin
            )));
        }
        // Which rules are declared, from the rule heads (regorus refuses to
        // evaluate a rule no module declares, where Rego would call it undefined).
        let declared = |rule: &str| -> Result<bool, PolicyError> {
            let mut any = false;
            for name in &aisbx_files {
                any |= e
                    .has_declared_rule_rooted_at(name, rule)
                    .map_err(|err| PolicyError(format!("{name}: {err}")))?;
            }
            Ok(any)
        };
        if !declared("allow")? {
            return Err(PolicyError(format!(
                "the policy bundle ({}) declares no `allow` rule in package aisbx, so no request could be allowed; see docs/POLICY.md",
                src.origin
            )));
        }
        let has_deny = declared("deny")?;
        let has_limits = declared("limits")?;
        let has_profile = declared("profile")?;
        let has_network = declared("network")?;
        let has_quotas = declared("quotas")?;
        // A first evaluation analyses the modules once; clones keep that work.
        e.set_input(regorus::Value::new_object());
        let _ = e.eval_rule("data.aisbx.allow".to_string());
        Ok(Bundle {
            origin: src.origin.clone(),
            hash: src.hash.clone(),
            engine: e,
            has_deny,
            has_limits,
            has_profile,
            has_network,
            has_quotas,
        })
    }

    /// Decides one request: `input` is the document of docs/POLICY.md.
    pub fn decide(&self, input: &serde_json::Value) -> Decision {
        let mut e = self.engine.clone();
        e.set_input(regorus::Value::from(input.clone()));
        let mut deny = Vec::new();
        let failed = |what: &str, err: &dyn fmt::Display| {
            format!("the policy's `{what}` failed to evaluate: {err}")
        };
        let allow = match e.eval_rule("data.aisbx.allow".to_string()) {
            Ok(regorus::Value::Undefined) => false,
            Ok(v) => match v.as_bool() {
                Ok(b) => *b,
                Err(_) => {
                    deny.push(format!("the policy's `allow` is {v}, not a boolean"));
                    false
                }
            },
            Err(err) => {
                deny.push(failed("allow", &err));
                false
            }
        };
        let deny_v = if self.has_deny {
            e.eval_rule("data.aisbx.deny".to_string())
        } else {
            Ok(regorus::Value::Undefined)
        };
        match deny_v {
            Ok(regorus::Value::Undefined) => {}
            Ok(v) => match v.as_set() {
                Ok(set) => {
                    for r in set.iter() {
                        match r.as_string() {
                            Ok(s) => deny.push(s.to_string()),
                            Err(_) => deny.push(r.to_string()),
                        }
                    }
                }
                Err(_) => deny.push(format!("the policy's `deny` is {v}, not a set of strings")),
            },
            Err(err) => deny.push(failed("deny", &err)),
        }
        let limits_v = if self.has_limits {
            eval_tree(&mut e, "data.aisbx.limits")
        } else {
            Ok(regorus::Value::Undefined)
        };
        let limits = match limits_v {
            Ok(regorus::Value::Undefined) => Ceilings::default(),
            Ok(v) => match ceilings(&v) {
                Ok(c) => c,
                Err(why) => {
                    deny.push(why);
                    Ceilings::default()
                }
            },
            Err(err) => {
                deny.push(failed("limits", &err));
                Ceilings::default()
            }
        };
        let profile = if self.has_profile {
            match e.eval_rule("data.aisbx.profile".to_string()) {
                Ok(regorus::Value::Undefined) => None,
                Ok(v) => match v.as_string() {
                    Ok(name) => Some(name.to_string()),
                    Err(_) => {
                        deny.push(format!(
                            "the policy's `profile` is {v}, not a profile's name"
                        ));
                        None
                    }
                },
                Err(err) => {
                    deny.push(failed("profile", &err));
                    None
                }
            }
        } else {
            None
        };
        let network = if self.has_network {
            match eval_tree(&mut e, "data.aisbx.network") {
                Ok(regorus::Value::Undefined) => None,
                Ok(v) => match v.to_json_str().map_err(|e| e.to_string()).and_then(|j| {
                    serde_json::from_str::<NetworkObligation>(&j).map_err(|e| e.to_string())
                }) {
                    Ok(n) => Some(n),
                    Err(why) => {
                        deny.push(format!(
                            "the policy's `network` is {v}, not {{\"allow\": [...], \"deny\": [...]}} of destinations: {why}"
                        ));
                        None
                    }
                },
                Err(err) => {
                    deny.push(failed("network", &err));
                    None
                }
            }
        } else {
            None
        };
        let quotas = match self.quotas_in(&mut e) {
            Ok(q) => q,
            Err(why) => {
                deny.push(why);
                crate::tenants::Quota::default()
            }
        };
        if !allow && deny.is_empty() {
            deny.push("the policy does not allow this request (`allow` is not true)".to_string());
        }
        Decision {
            allowed: allow && deny.is_empty(),
            allow,
            deny,
            limits,
            profile,
            network,
            quotas,
            bundle: self.hash.clone(),
        }
    }

    /// The policy's `quotas` for `input` alone (for requests it does not decide
    /// otherwise, and the `quota` tool); none when the bundle declares none.
    pub fn quotas(&self, input: &serde_json::Value) -> Result<crate::tenants::Quota, String> {
        if !self.has_quotas {
            return Ok(crate::tenants::Quota::default());
        }
        let mut e = self.engine.clone();
        e.set_input(regorus::Value::from(input.clone()));
        self.quotas_in(&mut e)
    }

    fn quotas_in(&self, e: &mut regorus::Engine) -> Result<crate::tenants::Quota, String> {
        if !self.has_quotas {
            return Ok(crate::tenants::Quota::default());
        }
        match eval_tree(e, "data.aisbx.quotas") {
            Ok(regorus::Value::Undefined) => Ok(crate::tenants::Quota::default()),
            Ok(v) => quota_ceilings(&v),
            Err(err) => Err(format!("the policy's `quotas` failed to evaluate: {err}")),
        }
    }

    /// Evaluates any rule (for `policy eval --explain` and tests).
    pub fn eval_rule(&self, rule: &str, input: &serde_json::Value) -> Result<String, PolicyError> {
        let mut e = self.engine.clone();
        e.set_input(regorus::Value::from(input.clone()));
        let v = e
            .eval_rule(rule.to_string())
            .map_err(|err| PolicyError(err.to_string()))?;
        Ok(v.to_string())
    }

    /// What `print(...)` calls in the policy wrote while deciding `input`.
    pub fn prints(&self, input: &serde_json::Value) -> Vec<String> {
        let mut e = self.engine.clone();
        e.set_gather_prints(true);
        e.set_input(regorus::Value::from(input.clone()));
        let _ = e.eval_rule("data.aisbx.allow".to_string());
        if self.has_deny {
            let _ = e.eval_rule("data.aisbx.deny".to_string());
        }
        if self.has_limits {
            let _ = e.eval_rule("data.aisbx.limits".to_string());
        }
        if self.has_quotas {
            let _ = e.eval_rule("data.aisbx.quotas".to_string());
        }
        e.take_prints().unwrap_or_default()
    }
}

/// The quotas of a `quotas` value: whole numbers (zero allowed: none at all) for
/// the quotas aisbx knows; anything else is an error, as for `limits`.
fn quota_ceilings(v: &regorus::Value) -> Result<crate::tenants::Quota, String> {
    let obj = v
        .as_object()
        .map_err(|_| format!("the policy's `quotas` is {v}, not an object"))?;
    let mut q = crate::tenants::Quota::default();
    for (k, val) in obj.iter() {
        let key = k.as_string().map(|s| s.to_string()).unwrap_or_default();
        let n = val
            .as_number()
            .ok()
            .and_then(|n| n.as_f64())
            .filter(|n| n.is_finite() && *n >= 0.0 && n.fract() == 0.0 && *n <= u64::MAX as f64)
            .ok_or_else(|| {
                format!("the policy's `quotas.{key}` is {val}, not a whole number of at least 0")
            })? as u64;
        let slot = match key.as_str() {
            "concurrent_runs" => &mut q.concurrent_runs,
            "sandboxes" => &mut q.sandboxes,
            "storage_bytes" => &mut q.storage_bytes,
            "cpu_seconds_per_hour" => &mut q.cpu_seconds_per_hour,
            "runs_per_minute" => &mut q.runs_per_minute,
            _ => {
                return Err(format!(
                    "the policy's `quotas` names `{key}`, which is not a quota aisbx knows (concurrent_runs, sandboxes, storage_bytes, cpu_seconds_per_hour, runs_per_minute)"
                ));
            }
        };
        *slot = Some(n);
    }
    Ok(q)
}

/// The ceilings of a `limits` value; an unknown key or a value that is not a
/// positive number is an error, so that a typo never goes unnoticed.
/// The value of `path`, also when the bundle declares only rules below it
/// (`limits.memory_bytes := ...`), which `eval_rule` does not accept: then the
/// value is the object a query for `path` builds from them.
fn eval_tree(e: &mut regorus::Engine, path: &str) -> Result<regorus::Value, String> {
    match e.eval_rule(path.to_string()) {
        Err(err) if err.to_string().contains("not a valid rule path") => {
            let r = e
                .eval_query(path.to_string(), false)
                .map_err(|e| e.to_string())?;
            Ok(r.result
                .into_iter()
                .next()
                .and_then(|r| r.expressions.into_iter().next())
                .map(|x| x.value)
                .unwrap_or(regorus::Value::Undefined))
        }
        other => other.map_err(|e| e.to_string()),
    }
}

fn ceilings(v: &regorus::Value) -> Result<Ceilings, String> {
    let obj = v
        .as_object()
        .map_err(|_| format!("the policy's `limits` is {v}, not an object"))?;
    let mut c = Ceilings::default();
    for (k, val) in obj.iter() {
        let key = k.as_string().map(|s| s.to_string()).unwrap_or_default();
        let num = val.as_number().ok().and_then(|n| n.as_f64());
        let Some(n) = num.filter(|n| n.is_finite() && *n > 0.0) else {
            return Err(format!(
                "the policy's `limits.{key}` is {val}, not a positive number"
            ));
        };
        match key.as_str() {
            "timeout_secs" => c.timeout_secs = Some(n),
            "cpus" => c.cpus = Some(n),
            "memory_bytes" | "pids" => {
                if n.fract() != 0.0 || n > u64::MAX as f64 {
                    return Err(format!(
                        "the policy's `limits.{key}` is {val}, not a whole number"
                    ));
                }
                if key == "pids" {
                    c.pids = Some(n as u64);
                } else {
                    c.memory_bytes = Some(n as u64);
                }
            }
            _ => {
                return Err(format!(
                    "the policy's `limits` names `{key}`, which is not a ceiling aisbx knows (timeout_secs, memory_bytes, pids, cpus)"
                ));
            }
        }
    }
    Ok(c)
}

fn to_value<T: Serialize>(doc: &T) -> serde_json::Value {
    // Plain structs of strings and numbers: serializing them cannot fail.
    serde_json::to_value(doc).unwrap_or_default()
}

fn caller_doc(c: &Caller) -> input::CallerDoc {
    input::CallerDoc {
        tenant: c.tenant.clone(),
        transport: c.transport,
        client: c.client.clone(),
    }
}

/// The `caller` of the input document.
pub fn caller_value(c: &Caller) -> serde_json::Value {
    to_value(&caller_doc(c))
}

fn asked_limits(l: &LimitOverrides) -> input::AskedLimits {
    input::AskedLimits {
        timeout_secs: l.timeout_secs,
        memory_bytes: l.memory_bytes,
        pids: l.pids,
        cpus: l.cpus,
    }
}

fn paths(p: &[PathBuf]) -> Vec<String> {
    p.iter().map(|p| p.to_string_lossy().into_owned()).collect()
}

fn profile_doc(p: &Profile) -> input::ProfileDoc {
    let network = match p.values.get("network.mode").map(|v| &v.val) {
        Some(Val::Text(t)) => t.clone(),
        _ => "none".to_string(),
    };
    input::ProfileDoc {
        name: p.name.clone(),
        language: p.language.as_ref().map(|l| l.name.clone()),
        limits: limits_doc(&p.limits),
        seccomp: match p.seccomp {
            aisbx_jail::SeccompLevel::Default => "default",
            aisbx_jail::SeccompLevel::Dev => "dev",
        }
        .to_string(),
        landlock: match p.landlock {
            aisbx_jail::Enforcement::BestEffort => "best-effort",
            aisbx_jail::Enforcement::Required => "required",
        }
        .to_string(),
        network,
        network_allow: p
            .network
            .as_ref()
            .map(|n| n.allow.clone())
            .unwrap_or_default(),
        network_packages: p
            .network
            .as_ref()
            .map(|n| n.packages.clone())
            .unwrap_or_default(),
        ro_binds: paths(&p.ro_binds),
        rw_binds: paths(&p.rw_binds),
        source: p.source.to_string(),
    }
}

/// The `profile` of the input document: the resolved profile.
pub fn profile_value(p: &Profile) -> serde_json::Value {
    to_value(&profile_doc(p))
}

fn limits_doc(l: &aisbx_jail::Limits) -> input::LimitsDoc {
    input::LimitsDoc {
        timeout_secs: l.wall.as_secs_f64(),
        memory_bytes: l.memory_bytes,
        pids: l.pids,
        cpus: l.cpus,
    }
}

/// Limits in the input document's units.
pub fn limits_value(l: &aisbx_jail::Limits) -> serde_json::Value {
    to_value(&limits_doc(l))
}

/// The input document of a `run`: `language` is the one the run resolved to.
pub fn run_input(
    caller: &Caller,
    req: &RunRequest,
    profile: &Profile,
    language: Option<&str>,
) -> serde_json::Value {
    let (code, command, file) = match &req.program {
        Program::Code { code, .. } => (Some(code.clone()), None, None),
        Program::Command(argv) => (None, Some(argv.clone()), None),
        Program::File(p) => (None, None, Some(p.to_string_lossy().into_owned())),
    };
    to_value(&input::Input {
        tool: "run".into(),
        caller: caller_doc(caller),
        request: input::RequestDoc::Run(input::RunDoc {
            language: language.map(str::to_string),
            code_bytes: code.as_ref().map(String::len).unwrap_or(0),
            code,
            command,
            file,
            args: req.args.clone(),
            files: req.files.keys().cloned().collect(),
            env: req.env.iter().map(|(k, _)| k.clone()).collect(),
            limits: asked_limits(&req.limits),
            sandbox_id: req.sandbox_id.clone(),
            workdir: req.workdir.is_some(),
        }),
        profile: Some(profile_doc(profile)),
    })
}

/// The input document of a `build` (a persistent sandbox with setup commands).
pub fn build_input(caller: &Caller, req: &BuildRequest, profile: &Profile) -> serde_json::Value {
    to_value(&input::Input {
        tool: "build".into(),
        caller: caller_doc(caller),
        request: input::RequestDoc::Build(input::BuildDoc {
            name: req.name.clone(),
            profile: req.profile.clone(),
            files: req.files.keys().cloned().collect(),
            setup: req.setup.clone(),
        }),
        profile: Some(profile_doc(profile)),
    })
}

/// The input document of every tool but `run` and `build`: no profile.
pub fn tool_input(tool: &str, caller: &Caller, request: input::RequestDoc) -> serde_json::Value {
    to_value(&input::Input {
        tool: tool.to_string(),
        caller: caller_doc(caller),
        request,
        profile: None,
    })
}

/// The result of one `test_*` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestOutcome {
    /// `data.<package>.<rule>`.
    pub name: String,
    pub file: String,
    pub passed: bool,
    /// Why it failed, when evaluation failed rather than being false.
    pub error: Option<String>,
}

/// The `test_*` rules of a Rego source, with its package: rule heads at the
/// start of a line (`test_x if {`, `test_x := ...`, `test_x {`), not functions.
pub fn test_rules(text: &str) -> (Option<String>, Vec<String>) {
    let mut package = None;
    let mut names: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("package ") {
            if package.is_none() {
                package = Some(rest.split('#').next().unwrap_or("").trim().to_string());
            }
            continue;
        }
        if !line.starts_with("test_") {
            continue;
        }
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let after = line[name.len()..].trim_start();
        if after.starts_with('(') || after.starts_with('[') || after.starts_with('.') {
            continue;
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    (package, names)
}

/// Runs every `test_*` rule of the bundle (all its files, tests included).
pub fn run_tests(src: &Sources) -> Result<Vec<TestOutcome>, PolicyError> {
    let bundle = Bundle::parse(src, true)?;
    let mut out = Vec::new();
    for f in src.files.iter().filter(|f| f.kind == FileKind::Rego) {
        let (package, names) = test_rules(&f.text);
        let Some(package) = package else { continue };
        for n in names {
            let rule = format!("data.{package}.{n}");
            let mut e = bundle.engine.clone();
            e.set_input(regorus::Value::new_object());
            let (passed, error) = match e.eval_rule(rule.clone()) {
                Ok(v) => (v == regorus::Value::from(true), None),
                Err(err) => (false, Some(err.to_string())),
            };
            out.push(TestOutcome {
                name: rule,
                file: f.name.clone(),
                passed,
                error,
            });
        }
    }
    Ok(out)
}

pub mod input;
mod reload;
pub use reload::{Reload, ReloadRecord, last_reload, record_path, record_reload, tests_pass};

#[cfg(test)]
mod tests;
