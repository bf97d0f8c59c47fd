//! Profiles: what a run may do and what it runs with.
//!
//! A profile is a TOML file (schema and rules: docs/PROFILES.md). They come from
//! three sources, later overriding earlier by name: the built-ins embedded in the
//! binary (`profiles/*.toml`), the user's config dir, and the project's
//! `.aisbx/profiles/`. A profile `extends` others; the chain is linearized
//! (depth-first, left to right, parents before children, each once) and merged
//! (scalars override, tables merge, lists replace unless `{ append = [...] }`),
//! remembering which layer set each value. Per-call options override last
//! ([`check_limits`]).

pub mod detect;
pub mod schema;
pub mod trust;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aisbx_jail::{Enforcement, Limits, SeccompLevel};

pub use detect::{Basis, DetectInput, Detection};
pub use schema::{Diag, Layer, Val};

use crate::runtime::{self, Feed, Language};
use crate::{LimitOverrides, LimitPolicy, ProfileInfo, ProjectProfiles, ServiceError};

/// The profile of a plain command.
pub const DEFAULT_PROFILE: &str = "base";
/// An older name of `base`, still accepted.
pub const DEFAULT_ALIAS: &str = "default";

/// The built-in profiles, in listing order (languages in detection order).
const BUILTINS: &[(&str, &str)] = &[
    ("base", include_str!("../../profiles/base.toml")),
    ("strict", include_str!("../../profiles/strict.toml")),
    ("dev", include_str!("../../profiles/dev.toml")),
    ("python", include_str!("../../profiles/python.toml")),
    ("python-dev", include_str!("../../profiles/python-dev.toml")),
    (
        "python-prod",
        include_str!("../../profiles/python-prod.toml"),
    ),
    ("node", include_str!("../../profiles/node.toml")),
    ("node-dev", include_str!("../../profiles/node-dev.toml")),
    ("node-prod", include_str!("../../profiles/node-prod.toml")),
    ("bash", include_str!("../../profiles/bash.toml")),
    ("bash-dev", include_str!("../../profiles/bash-dev.toml")),
    ("bash-prod", include_str!("../../profiles/bash-prod.toml")),
    ("sh", include_str!("../../profiles/sh.toml")),
    ("perl", include_str!("../../profiles/perl.toml")),
    ("go", include_str!("../../profiles/go.toml")),
    ("ruby", include_str!("../../profiles/ruby.toml")),
    ("java", include_str!("../../profiles/java.toml")),
    ("rust", include_str!("../../profiles/rust.toml")),
];

/// Largest profile file read.
const MAX_FILE_BYTES: u64 = 256 << 10;

/// Where a profile file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Builtin,
    User,
    Project,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Builtin => "builtin",
            Source::User => "user",
            Source::Project => "project",
        })
    }
}

/// Every problem found in a profile and its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileError {
    pub diags: Vec<Diag>,
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.diags.iter().map(Diag::to_string).collect();
        f.write_str(&lines.join("; "))
    }
}

impl From<ProfileError> for ServiceError {
    fn from(e: ProfileError) -> Self {
        // A problem with a request argument rather than a file names that argument.
        let field = match e.diags.as_slice() {
            [d] if d.line == 0 && (d.file == "profile" || d.file == "language") => {
                return ServiceError::invalid(&d.file, d.message.clone());
            }
            _ => "profile",
        };
        ServiceError::invalid(field, e.to_string())
    }
}

fn error(file: &str, message: String) -> ProfileError {
    ProfileError {
        diags: vec![Diag {
            file: file.to_string(),
            line: 0,
            col: 0,
            message,
        }],
    }
}

/// One layer of a resolved profile's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    pub name: String,
    pub source: Source,
    pub file: String,
}

impl LayerRef {
    pub fn label(&self) -> String {
        format!("{} ({})", self.name, self.source)
    }
}

/// A merged value and the layers that set it (more than one for appended lists).
#[derive(Debug, Clone, PartialEq)]
pub struct Provenanced {
    pub val: Val,
    pub from: Vec<String>,
}

/// A resolved profile: the merge of its chain, ready for a run.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub extends: Vec<String>,
    pub source: Source,
    pub file: String,
    /// The linearized chain, base first, this profile last.
    pub chain: Vec<LayerRef>,
    pub language: Option<Language>,
    pub limits: Limits,
    pub workspace_bytes: u64,
    /// The language's `runtime.env`, then the profile's `[env]` over it.
    pub env: Vec<(String, String)>,
    pub ro_binds: Vec<PathBuf>,
    /// Host directories bound read-write at the same path.
    pub rw_binds: Vec<PathBuf>,
    pub seccomp: SeccompLevel,
    pub landlock: Enforcement,
    /// Host paths a user profile opened to the host-path check (`[perimeter] allow`).
    pub perimeter_allow: Vec<PathBuf>,
    /// `[network]`: `None` when `mode = "none"` (no network at all).
    pub network: Option<NetworkSettings>,
    /// Every effective value by dotted path, with where it came from.
    pub values: BTreeMap<String, Provenanced>,
}

/// A profile's `[network]` with `mode = "allowlist"`: where a run may connect,
/// through aisbx's proxy (crate::network turns it into the run's allowlist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// Package indexes by ecosystem (`python`, `node`), resolved at run time
    /// from the host's pip and npm configuration.
    pub packages: Vec<String>,
    pub max_connections: u32,
    pub max_egress: u64,
}

/// The SPEC's default limits.
pub fn default_limits() -> Limits {
    Limits {
        wall: Duration::from_secs(30),
        memory_bytes: 512 << 20,
        pids: 256,
        cpus: 1.0,
        nofile: 1024,
        tmp_bytes: 256 << 20,
        output_bytes: 1 << 20,
    }
}

/// Label of values no layer set.
pub const SPEC_DEFAULT: &str = "SPEC default";

fn spec_defaults() -> BTreeMap<String, Provenanced> {
    let l = default_limits();
    let mut m = BTreeMap::new();
    let mut put = |k: &str, val: Val| {
        m.insert(
            k.to_string(),
            Provenanced {
                val,
                from: vec![SPEC_DEFAULT.to_string()],
            },
        );
    };
    put("limits.timeout", Val::Float(l.wall.as_secs_f64()));
    put("limits.memory", Val::Int(l.memory_bytes));
    put("limits.pids", Val::Int(l.pids));
    put("limits.cpus", Val::Float(l.cpus));
    put("limits.nofile", Val::Int(l.nofile));
    put("limits.workspace", Val::Int(1 << 30));
    put("limits.tmp", Val::Int(l.tmp_bytes));
    put("limits.output", Val::Int(l.output_bytes as u64));
    put("network.mode", Val::Text("none".into()));
    put("network.max_connections", Val::Int(64));
    put("network.max_egress", Val::Int(2 << 30));
    put("security.seccomp", Val::Text("default".into()));
    put("security.landlock", Val::Text("best-effort".into()));
    m
}

/// One profile file as loaded: checked, or with every problem found. Built-ins
/// are parsed on first use: a run needs only its own chain, not all of them.
#[derive(Debug, Clone)]
pub struct FileEntry {
    pub source: Source,
    pub file: String,
    pub path: Option<PathBuf>,
    /// The profile's name: the file's stem until the file is parsed.
    name: String,
    builtin_text: Option<&'static str>,
    /// The text of a user or project file: what it might match in detection
    /// when it fails its check.
    text: Option<String>,
    parsed: std::sync::OnceLock<Result<Layer, Vec<Diag>>>,
}

impl FileEntry {
    fn checked(
        source: Source,
        file: String,
        path: Option<PathBuf>,
        layer: Result<Layer, Vec<Diag>>,
    ) -> Self {
        let name = match &layer {
            Ok(l) => l.name.clone(),
            Err(_) => stem_of(&file),
        };
        FileEntry {
            source,
            file,
            path,
            name,
            builtin_text: None,
            text: None,
            parsed: std::sync::OnceLock::from(layer),
        }
    }

    /// The checked profile of this file, or every problem found in it.
    pub fn layer(&self) -> &Result<Layer, Vec<Diag>> {
        self.parsed.get_or_init(|| {
            let text = self.builtin_text.unwrap_or_default();
            schema::parse(text, &self.name, self.source, &self.file, None)
        })
    }
}

/// Every profile from every source.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// By name: the files defining it, lowest source first (the last one wins).
    files: BTreeMap<String, Vec<FileEntry>>,
    order: Vec<String>,
    pub user_dir: Option<PathBuf>,
    pub project_dir: Option<PathBuf>,
    /// The project found, when its profiles are not in use: why (one sentence).
    pub project_problem: Option<String>,
    /// A project's profiles that are not approved: listed, never resolved.
    untrusted: Vec<FileEntry>,
    /// The PATH host runtimes are looked up on.
    pub host_path: String,
}

/// `$XDG_CONFIG_HOME/aisbx/profiles`, else `~/.config/aisbx/profiles`.
pub fn user_profiles_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("aisbx/profiles"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".config/aisbx/profiles"))
}

/// The nearest `.aisbx/profiles/` from `start` upward.
pub fn project_profiles_dir(start: &Path) -> Option<PathBuf> {
    let start = std::fs::canonicalize(start).unwrap_or_else(|_| start.to_path_buf());
    start
        .ancestors()
        .map(|d| d.join(".aisbx/profiles"))
        .find(|p| p.is_dir())
}

impl Catalog {
    /// Built-ins only.
    pub fn builtin() -> Catalog {
        let mut c = Catalog {
            files: BTreeMap::new(),
            order: Vec::new(),
            user_dir: None,
            project_dir: None,
            project_problem: None,
            untrusted: Vec::new(),
            host_path: std::env::var("PATH").unwrap_or_default(),
        };
        for (name, text) in BUILTINS {
            c.add(FileEntry {
                source: Source::Builtin,
                file: format!("builtin:{name}.toml"),
                path: None,
                name: name.to_string(),
                builtin_text: Some(text),
                text: None,
                parsed: std::sync::OnceLock::new(),
            });
        }
        c
    }

    /// Built-ins, then the user's profiles, then the project's found from
    /// `project_start` (the working directory, or `--workdir`) upward, if the
    /// user approved them (`aisbx trust`, recorded in the default `$AISBX_HOME`).
    pub fn load(project_start: Option<&Path>) -> Catalog {
        Catalog::load_with(
            project_start,
            &crate::default_home(),
            ProjectProfiles::TrustedOnly,
        )
    }

    /// Built-ins, then the user's profiles, then the project's found from
    /// `project_start` upward: used only when approved in `home`'s trust records
    /// (else listed as untrusted, and [`Catalog::project_problem`] says why), or
    /// not at all with [`ProjectProfiles::Ignore`].
    pub fn load_with(project_start: Option<&Path>, home: &Path, mode: ProjectProfiles) -> Catalog {
        Catalog::load_project(project_start, home, mode, false)
    }

    /// As [`Catalog::load_with`] (trusted only), except that a project's
    /// unapproved profiles are in it too, for review (`aisbx profile show` and
    /// `validate`, which run nothing); [`Catalog::project_problem`] still says
    /// they are not approved.
    pub fn load_for_review(project_start: Option<&Path>, home: &Path) -> Catalog {
        Catalog::load_project(project_start, home, ProjectProfiles::TrustedOnly, true)
    }

    fn load_project(
        project_start: Option<&Path>,
        home: &Path,
        mode: ProjectProfiles,
        review: bool,
    ) -> Catalog {
        let mut c = Catalog::builtin();
        if let Some(d) = user_profiles_dir() {
            c.add_dir(&d, Source::User);
            c.user_dir = Some(d);
        }
        if mode == ProjectProfiles::Ignore {
            return c;
        }
        let start = project_start
            .map(Path::to_path_buf)
            .or_else(|| std::env::current_dir().ok());
        if let Some(d) = start.as_deref().and_then(project_profiles_dir) {
            c.add_project(&d, home, review);
            c.project_dir = Some(d);
        }
        c
    }

    /// Read a project's profile directory once; use it if approved.
    fn add_project(&mut self, dir: &Path, home: &Path, review: bool) {
        let root = dir
            .parent()
            .and_then(Path::parent)
            .unwrap_or(dir)
            .to_path_buf();
        let pf = match trust::read_project(&root) {
            Ok(pf) => pf,
            Err(why) => {
                self.project_problem = Some(format!(
                    "the project profiles in {} cannot be used: {why}; fix them, or run with --ignore-project-profiles",
                    dir.display()
                ));
                return;
            }
        };
        let mut entries: Vec<FileEntry> = pf
            .files
            .iter()
            .filter(|(n, _)| n.ends_with(".toml"))
            .map(|(n, bytes)| {
                let entry = load_bytes(&pf.dir.join(n), Source::Project, bytes);
                check_project_entry(entry, &pf.root)
            })
            .collect();
        let status = pf.status(home);
        if status == trust::Status::Trusted || review {
            let builtin_count = BUILTINS.len();
            for e in entries.drain(..) {
                self.add(e);
            }
            let (b, rest) = self.order.split_at(builtin_count.min(self.order.len()));
            let mut rest = rest.to_vec();
            rest.sort();
            self.order = b.iter().cloned().chain(rest).collect();
        }
        match status {
            trust::Status::Trusted => {}
            trust::Status::New { file } => {
                self.project_problem = Some(format!(
                    "the project profile {} is not trusted: review it, then approve the project's profiles with `aisbx trust {}`, or run with --ignore-project-profiles",
                    file.display(),
                    pf.root.display()
                ));
                self.untrusted = entries;
            }
            trust::Status::Changed { file } => {
                self.project_problem = Some(format!(
                    "the project profile {} changed since the project's profiles were approved: review it, then approve them again with `aisbx trust {}`, or run with --ignore-project-profiles",
                    file.display(),
                    pf.root.display()
                ));
                self.untrusted = entries;
            }
        }
    }

    pub fn with_host_path(mut self, host_path: &str) -> Catalog {
        self.host_path = host_path.to_string();
        self
    }

    fn add(&mut self, f: FileEntry) {
        let name = f.name.clone();
        if !self.files.contains_key(&name) {
            self.order.push(name.clone());
        }
        self.files.entry(name).or_default().push(f);
    }

    /// Add every `*.toml` of a directory (sorted by name).
    pub fn add_dir(&mut self, dir: &Path, source: Source) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        let builtin_count = BUILTINS.len();
        for p in paths {
            self.add(load_file(&p, source));
        }
        // Names first seen here list after the built-ins, alphabetically.
        let (b, rest) = self.order.split_at(builtin_count.min(self.order.len()));
        let mut rest = rest.to_vec();
        rest.sort();
        self.order = b.iter().cloned().chain(rest).collect();
    }

    /// Every profile name, in listing order.
    pub fn names(&self) -> &[String] {
        &self.order
    }

    /// The files defining `name`, lowest source first.
    pub fn files(&self, name: &str) -> &[FileEntry] {
        self.files.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    fn canonical<'a>(&self, name: &'a str) -> &'a str {
        if name == DEFAULT_ALIAS && !self.files.contains_key(DEFAULT_ALIAS) {
            DEFAULT_PROFILE
        } else {
            name
        }
    }

    fn not_found(&self, name: &str, context: &str) -> ProfileError {
        if self.untrusted.iter().any(|f| f.name == name) {
            return error(
                "profile",
                format!(
                    "{context}profile '{name}' is a project profile that is not trusted: review the project's .aisbx/profiles and approve them with `aisbx trust`"
                ),
            );
        }
        let mut msg = format!("{context}no profile named '{name}'");
        if let Some(s) = schema::suggest(name, self.order.iter().map(String::as_str)) {
            msg.push_str(&format!("; did you mean '{s}'?"));
        } else {
            msg.push_str(&format!(" (known: {})", self.order.join(", ")));
        }
        error("profile", msg)
    }

    /// Resolve a profile by name: its chain linearized and merged.
    pub fn resolve(&self, name: &str) -> Result<Profile, ProfileError> {
        let name = self.canonical(name);
        let stack = self
            .files
            .get(name)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| self.not_found(name, ""))?;
        self.resolve_node((name.to_string(), stack.len() - 1))
    }

    /// Resolve a layer that is not in the catalog (a file given to `validate`),
    /// against the catalog.
    pub fn resolve_layer(&self, layer: Layer) -> Result<Profile, ProfileError> {
        let mut c = self.clone();
        let name = layer.name.clone();
        c.add(FileEntry::checked(
            layer.source,
            layer.file.clone(),
            layer.path.clone(),
            Ok(layer),
        ));
        let idx = c.files[&name].len() - 1;
        c.resolve_node((name, idx))
    }

    fn layer(&self, node: &(String, usize)) -> Result<&Layer, ProfileError> {
        match self.files.get(&node.0).and_then(|s| s.get(node.1)) {
            Some(f) => f
                .layer()
                .as_ref()
                .map_err(|d| ProfileError { diags: d.clone() }),
            None => Err(self.not_found(&node.0, "")),
        }
    }

    fn label(&self, node: &(String, usize)) -> String {
        match self.files.get(&node.0).and_then(|s| s.get(node.1)) {
            Some(f) => format!("{} ({})", node.0, f.source),
            None => node.0.clone(),
        }
    }

    /// The node a name in `extends` of `from` refers to: the highest source's
    /// profile of that name, except that a profile extending its own name gets the
    /// next lower source's.
    fn parent(
        &self,
        from: &(String, usize),
        name: &str,
        chain: &[String],
        file: &str,
        line: usize,
    ) -> Result<(String, usize), ProfileError> {
        let name = self.canonical(name);
        let stack = self.files.get(name).filter(|s| !s.is_empty());
        let chain_txt = || {
            let mut c = chain.to_vec();
            c.push(name.to_string());
            c.join(" → ")
        };
        if name == from.0 {
            if from.1 == 0 {
                return Err(ProfileError {
                    diags: vec![Diag {
                        file: file.into(),
                        line,
                        col: 1,
                        message: format!(
                            "'{name}' extends itself and there is no lower-level '{name}' to extend (chain: {})",
                            chain_txt()
                        ),
                    }],
                });
            }
            return Ok((name.to_string(), from.1 - 1));
        }
        match stack {
            Some(s) => Ok((name.to_string(), s.len() - 1)),
            None => {
                let mut e = self.not_found(name, "");
                e.diags[0] = Diag {
                    file: file.into(),
                    line,
                    col: 1,
                    message: format!(
                        "'{}' extends {} (chain: {})",
                        from.0,
                        e.diags[0]
                            .message
                            .replacen("no profile named", "a missing profile", 1),
                        chain_txt()
                    ),
                };
                Err(e)
            }
        }
    }

    /// Depth-first, left to right, parents before children; each layer kept at its
    /// first position.
    fn linearize(
        &self,
        node: &(String, usize),
        path: &mut Vec<(String, usize)>,
        out: &mut Vec<(String, usize)>,
    ) -> Result<(), ProfileError> {
        if path.contains(node) {
            let mut names: Vec<String> = path
                .iter()
                .skip_while(|n| *n != node)
                .map(|n| self.label(n))
                .collect();
            names.push(self.label(node));
            let file = self.layer(node).map(|l| l.file.clone()).unwrap_or_default();
            return Err(error(
                &file,
                format!(
                    "profiles extend each other in a cycle: {}",
                    names.join(" → ")
                ),
            ));
        }
        let layer = self.layer(node)?;
        path.push(node.clone());
        let chain: Vec<String> = path.iter().map(|n| n.0.clone()).collect();
        for (parent, line) in &layer.extends {
            let p = self.parent(node, parent, &chain, &layer.file, *line)?;
            self.linearize(&p, path, out)?;
        }
        path.pop();
        if !out.contains(node) {
            out.push(node.clone());
        }
        Ok(())
    }

    fn resolve_node(&self, node: (String, usize)) -> Result<Profile, ProfileError> {
        let mut order = Vec::new();
        self.linearize(&node, &mut Vec::new(), &mut order)?;
        let mut values = spec_defaults();
        let mut chain = Vec::new();
        for n in &order {
            let layer = self.layer(n)?;
            let label = format!("{} ({})", layer.name, layer.source);
            chain.push(LayerRef {
                name: layer.name.clone(),
                source: layer.source,
                file: layer.file.clone(),
            });
            for (k, e) in &layer.values {
                // `name` and `description` belong to the profile itself.
                if (k == "name" || k == "description") && n != &node {
                    continue;
                }
                match (&e.val, values.get_mut(k)) {
                    (Val::Append(add), Some(p)) => {
                        if let Val::List(l) = &mut p.val {
                            l.extend(add.iter().cloned());
                            p.from.push(label.clone());
                            continue;
                        }
                        *p = Provenanced {
                            val: Val::List(add.clone()),
                            from: vec![label.clone()],
                        };
                    }
                    (v, _) => {
                        let val = match v {
                            Val::Append(a) => Val::List(a.clone()),
                            other => other.clone(),
                        };
                        values.insert(
                            k.clone(),
                            Provenanced {
                                val,
                                from: vec![label.clone()],
                            },
                        );
                    }
                }
            }
        }
        let top = self.layer(&node)?;
        build(top, chain, values)
    }

    /// Every resolved language profile (a profile named after its language), in
    /// detection order.
    pub fn languages(&self) -> Vec<Profile> {
        self.order
            .iter()
            .filter_map(|n| self.resolve(n).ok())
            .filter(|p| p.language.as_ref().is_some_and(|l| l.name == p.name))
            .collect()
    }

    /// The list entry of a profile (also for a broken one).
    pub fn info(&self, name: &str) -> ProfileInfo {
        let top = self.files(name).last();
        let (source, path) = top
            .map(|f| {
                (
                    f.source.to_string(),
                    f.path.as_ref().map(|p| p.display().to_string()),
                )
            })
            .unwrap_or_default();
        match self.resolve(name) {
            Ok(p) => {
                let missing = p
                    .language
                    .as_ref()
                    .and_then(|l| runtime::resolve(l, &self.host_path).err());
                ProfileInfo {
                    name: p.name.clone(),
                    description: p.description.clone(),
                    language: p.language.as_ref().map(|l| l.name.clone()),
                    extends: p.extends.clone(),
                    available: missing.is_none(),
                    source,
                    path,
                    missing,
                }
            }
            Err(e) => ProfileInfo {
                name: name.to_string(),
                description: String::new(),
                language: None,
                extends: top
                    .and_then(|f| f.layer().as_ref().ok())
                    .map(|l| l.extends.iter().map(|e| e.0.clone()).collect())
                    .unwrap_or_default(),
                available: false,
                source,
                path,
                missing: Some(format!("the profile is invalid: {e}")),
            },
        }
    }

    /// Every profile's list entry, then the project's unapproved profiles, marked.
    pub fn infos(&self) -> Vec<ProfileInfo> {
        let mut v: Vec<ProfileInfo> = self.order.iter().map(|n| self.info(n)).collect();
        for f in &self.untrusted {
            v.push(ProfileInfo {
                name: f.name.clone(),
                description: f
                    .layer()
                    .as_ref()
                    .ok()
                    .and_then(|l| l.values.get("description"))
                    .and_then(|e| match &e.val {
                        Val::Text(t) => Some(t.clone()),
                        _ => None,
                    })
                    .unwrap_or_default(),
                language: None,
                extends: Vec::new(),
                available: false,
                source: Source::Project.to_string(),
                path: f.path.as_ref().map(|p| p.display().to_string()),
                missing: Some(
                    "not trusted: review the project's profiles and approve them with `aisbx trust`"
                        .into(),
                ),
            });
        }
        v
    }
}

fn stem_of(file: &str) -> String {
    let f = file.rsplit('/').next().unwrap_or(file);
    let f = f.strip_prefix("builtin:").unwrap_or(f);
    f.strip_suffix(".toml").unwrap_or(f).to_string()
}

/// Read and check one profile file.
pub fn load_file(path: &Path, source: Source) -> FileEntry {
    let file = path.display().to_string();
    let fail = |message: String| {
        FileEntry::checked(
            source,
            file.clone(),
            Some(path.to_path_buf()),
            Err(vec![Diag {
                file: file.clone(),
                line: 0,
                col: 0,
                message,
            }]),
        )
    };
    match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            return fail(format!(
                "the file is larger than {} KiB",
                MAX_FILE_BYTES >> 10
            ));
        }
        Ok(_) => {}
        Err(e) => return fail(format!("cannot read it: {e}")),
    }
    match std::fs::read(path) {
        Ok(bytes) => load_bytes(path, source, &bytes),
        Err(e) => fail(format!("cannot read it: {e}")),
    }
}

/// Check one profile file from the bytes already read (the same bytes a trust
/// check hashed).
pub fn load_bytes(path: &Path, source: Source, bytes: &[u8]) -> FileEntry {
    let file = path.display().to_string();
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = std::str::from_utf8(bytes).ok();
    let layer = match text {
        Some(text) => schema::parse(text, &stem, source, &file, Some(path.to_path_buf())),
        None => Err(vec![Diag {
            file: file.clone(),
            line: 0,
            col: 0,
            message: "the file is not UTF-8".into(),
        }]),
    };
    let mut entry = FileEntry::checked(source, file, Some(path.to_path_buf()), layer);
    entry.text = text.map(str::to_string);
    entry
}

/// What a project profile may not do even when approved: bind read-write outside
/// its project, name an interpreter outside the system directories, or widen the
/// host-path check. `root` is the canonical project directory.
pub fn check_project_layer(layer: &Layer, root: &Path) -> Vec<Diag> {
    let mut diags = Vec::new();
    let mut bad = |line: usize, message: String| {
        diags.push(Diag {
            file: layer.file.clone(),
            line,
            col: 1,
            message,
        })
    };
    let items = |k: &str| -> (usize, Vec<String>) {
        match layer.values.get(k) {
            Some(schema::Entry {
                val: Val::List(l) | Val::Append(l),
                line,
            }) => (*line, l.clone()),
            _ => (0, Vec::new()),
        }
    };
    let (line, rw) = items("filesystem.rw_binds");
    for b in rw {
        let inside = crate::hostpath::canonical(Path::new(&b)).is_ok_and(|c| c.starts_with(root));
        if !inside {
            bad(
                line,
                format!(
                    "filesystem.rw_binds: '{b}' is outside the project directory {}; a project profile may bind read-write only inside its project",
                    root.display()
                ),
            );
        }
    }
    let (line, interps) = items("runtime.interpreters");
    for i in interps {
        if i.starts_with('/') && !runtime::is_system(Path::new(&i)) {
            bad(
                line,
                format!(
                    "runtime.interpreters: '{i}' is outside the system directories (/usr, /bin, /sbin, /lib); a project profile names an interpreter by name or under those"
                ),
            );
        }
    }
    if let Some((k, e)) = layer
        .values
        .iter()
        .find(|(k, _)| k.starts_with("perimeter."))
    {
        bad(
            e.line,
            format!(
                "{k}: only a user profile may widen the host-path check, not a project profile"
            ),
        );
    }
    diags
}

/// A project file entry with the project's own rules applied.
fn check_project_entry(entry: FileEntry, root: &Path) -> FileEntry {
    let diags = match entry.layer() {
        Ok(l) => check_project_layer(l, root),
        Err(_) => return entry,
    };
    if diags.is_empty() {
        return entry;
    }
    let mut checked = FileEntry::checked(entry.source, entry.file, entry.path, Err(diags));
    checked.text = entry.text;
    checked
}

fn text(values: &BTreeMap<String, Provenanced>, k: &str) -> Option<String> {
    match values.get(k).map(|p| &p.val) {
        Some(Val::Text(s)) => Some(s.clone()),
        _ => None,
    }
}

fn list(values: &BTreeMap<String, Provenanced>, k: &str) -> Vec<String> {
    match values.get(k).map(|p| &p.val) {
        Some(Val::List(l)) => l.clone(),
        _ => Vec::new(),
    }
}

fn int(values: &BTreeMap<String, Provenanced>, k: &str) -> u64 {
    match values.get(k).map(|p| &p.val) {
        Some(Val::Int(i)) => *i,
        _ => 0,
    }
}

fn float(values: &BTreeMap<String, Provenanced>, k: &str) -> f64 {
    match values.get(k).map(|p| &p.val) {
        Some(Val::Float(f)) => *f,
        Some(Val::Int(i)) => *i as f64,
        _ => 0.0,
    }
}

fn env_of(values: &BTreeMap<String, Provenanced>, prefix: &str) -> Vec<(String, String)> {
    values
        .iter()
        .filter_map(|(k, p)| {
            let name = k.strip_prefix(prefix)?;
            match &p.val {
                Val::Text(v) => Some((name.to_string(), v.clone())),
                _ => None,
            }
        })
        .collect()
}

/// The typed profile from merged values, checking what only the merge shows.
fn build(
    top: &Layer,
    chain: Vec<LayerRef>,
    values: BTreeMap<String, Provenanced>,
) -> Result<Profile, ProfileError> {
    let mut diags = Vec::new();
    let mut bad = |m: String| {
        diags.push(Diag {
            file: top.file.clone(),
            line: 0,
            col: 0,
            message: m,
        })
    };
    let has_runtime = values.keys().any(|k| k.starts_with("runtime."));
    let language = if has_runtime {
        let feed = match text(&values, "runtime.feed").as_deref() {
            Some("none") => Feed::None,
            _ => Feed::File,
        };
        let lang = Language {
            name: text(&values, "runtime.language").unwrap_or_default(),
            aliases: list(&values, "runtime.aliases"),
            interpreters: list(&values, "runtime.interpreters"),
            requires: list(&values, "runtime.requires"),
            feed,
            file_name: text(&values, "runtime.file_name").unwrap_or_else(|| "main".into()),
            run: values
                .get("runtime.run")
                .map(|_| list(&values, "runtime.run"))
                .unwrap_or_else(|| vec!["{interpreter}".into(), "{file}".into()]),
            run_code: list(&values, "runtime.run_code"),
            extensions: list(&values, "runtime.extensions")
                .into_iter()
                .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
                .collect(),
            markers: list(&values, "runtime.markers"),
            hints: list(&values, "runtime.hints"),
            env: env_of(&values, "runtime.env."),
        };
        if lang.name.is_empty() {
            bad("the profile has a [runtime] section but no runtime.language".into());
        }
        if lang.interpreters.is_empty() {
            bad(format!(
                "runtime.interpreters of language '{}' is empty: name at least one executable",
                lang.name
            ));
        }
        if feed == Feed::File {
            if lang.run.is_empty() || !lang.run.iter().any(|a| a.contains("{file}")) {
                bad("runtime.run must contain \"{file}\", where the code file goes".into());
            }
            if !lang.run_code.is_empty() && !lang.run_code.iter().any(|a| a.contains("{file}")) {
                bad("runtime.run_code must contain \"{file}\", where the code file goes".into());
            }
            if aisbx_jail::check_relative(&lang.file_name).is_err() || lang.file_name.contains('/')
            {
                bad(format!(
                    "runtime.file_name '{}' must be a plain file name",
                    lang.file_name
                ));
            }
        }
        Some(lang)
    } else {
        None
    };
    if !diags.is_empty() {
        return Err(ProfileError { diags });
    }
    let limits = Limits {
        wall: Duration::from_secs_f64(float(&values, "limits.timeout")),
        memory_bytes: int(&values, "limits.memory"),
        pids: int(&values, "limits.pids"),
        cpus: float(&values, "limits.cpus"),
        nofile: int(&values, "limits.nofile"),
        tmp_bytes: int(&values, "limits.tmp"),
        output_bytes: usize::try_from(int(&values, "limits.output")).unwrap_or(usize::MAX),
    };
    Ok(Profile {
        name: top.name.clone(),
        description: text(&values, "description").unwrap_or_default(),
        extends: top.extends.iter().map(|e| e.0.clone()).collect(),
        source: top.source,
        file: top.file.clone(),
        chain,
        language,
        limits,
        workspace_bytes: int(&values, "limits.workspace"),
        env: {
            // The language's environment first; the profile's own `[env]` wins.
            let mut env = env_of(&values, "runtime.env.");
            for (k, v) in env_of(&values, "env.") {
                env.retain(|(ek, _)| *ek != k);
                env.push((k, v));
            }
            env
        },
        ro_binds: list(&values, "filesystem.ro_binds")
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        rw_binds: list(&values, "filesystem.rw_binds")
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        seccomp: match text(&values, "security.seccomp").as_deref() {
            Some("dev") => SeccompLevel::Dev,
            _ => SeccompLevel::Default,
        },
        landlock: match text(&values, "security.landlock").as_deref() {
            Some("required") => Enforcement::Required,
            _ => Enforcement::BestEffort,
        },
        perimeter_allow: list(&values, "perimeter.allow")
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        network: (text(&values, "network.mode").as_deref() == Some("allowlist")).then(|| {
            NetworkSettings {
                allow: list(&values, "network.allow"),
                deny: list(&values, "network.deny"),
                packages: list(&values, "network.packages"),
                max_connections: u32::try_from(int(&values, "network.max_connections"))
                    .unwrap_or(u32::MAX),
                max_egress: int(&values, "network.max_egress"),
            }
        }),
        values,
    })
}

impl Profile {
    /// The effective profile as TOML, each value followed by the layer it came from.
    pub fn render_resolved(&self) -> String {
        let mut out = format!(
            "# profile {} ({}, {})\n# chain, applied in this order: {}\n",
            self.name,
            self.source,
            self.file,
            self.chain
                .iter()
                .map(LayerRef::label)
                .collect::<Vec<_>>()
                .join(" → ")
        );
        out.push_str(&format!(
            "name = \"{}\"\nextends = {}\n",
            self.name,
            toml_list(&self.extends)
        ));
        let mut section = String::new();
        let mut rows: Vec<(String, String, &str, &Provenanced)> = Vec::new();
        for (k, p) in &self.values {
            if k == "name" {
                continue;
            }
            let (sec, key) = match k.split_once('.') {
                Some(("env", var)) => ("env".to_string(), var.to_string()),
                Some(("runtime", rest)) if rest.starts_with("env.") => {
                    ("runtime.env".to_string(), rest["env.".len()..].to_string())
                }
                Some((s, key)) => (s.to_string(), key.to_string()),
                None => (String::new(), k.clone()),
            };
            rows.push((sec, key, k, p));
        }
        // A section's own keys before its subtables (`[runtime]` before `[runtime.env]`).
        rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        for (sec, key, k, p) in rows {
            if sec != section {
                out.push_str(&format!("\n[{sec}]\n"));
                section = sec;
            }
            let line = format!("{} = {}", toml_key(&key), render_val(k, &p.val));
            out.push_str(&format!("{line:<40} # {}\n", p.from.join(" + ")));
        }
        out
    }

    /// The effective profile as JSON: `{name, chain, values: {path: {value, from}}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let values: serde_json::Map<String, serde_json::Value> = self
            .values
            .iter()
            .map(|(k, p)| {
                let v = match &p.val {
                    Val::Text(s) => serde_json::json!(s),
                    Val::Int(i) => serde_json::json!(i),
                    Val::Float(f) => serde_json::json!(f),
                    Val::List(l) | Val::Append(l) => serde_json::json!(l),
                };
                (k.clone(), serde_json::json!({"value": v, "from": p.from}))
            })
            .collect();
        serde_json::json!({
            "name": self.name,
            "source": self.source.to_string(),
            "file": self.file,
            "extends": self.extends,
            "chain": self.chain.iter().map(|c| serde_json::json!({"name": c.name, "source": c.source.to_string(), "file": c.file})).collect::<Vec<_>>(),
            "values": values,
        })
    }
}

fn toml_key(k: &str) -> String {
    if k.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        format!("\"{}\"", k.escape_default())
    }
}

fn toml_list(l: &[String]) -> String {
    let items: Vec<String> = l
        .iter()
        .map(|s| format!("\"{}\"", s.escape_default()))
        .collect();
    format!("[{}]", items.join(", "))
}

fn render_val(path: &str, v: &Val) -> String {
    match v {
        Val::Text(s) => format!("\"{}\"", s.escape_default()),
        Val::Int(i)
            if path.starts_with("limits.")
                && !path.ends_with("pids")
                && !path.ends_with("nofile") =>
        {
            format!("\"{}\"", schema::human_bytes(*i))
        }
        Val::Int(i) => i.to_string(),
        Val::Float(f) if path == "limits.timeout" => format!("\"{f}s\""),
        Val::Float(f) => f.to_string(),
        Val::List(l) | Val::Append(l) => toml_list(l),
    }
}

/// Apply per-call overrides, refusing values outside sane bounds.
pub fn check_limits(mut l: Limits, o: &LimitOverrides) -> Result<Limits, ServiceError> {
    if let Some(t) = o.timeout_secs {
        if !(t > 0.0 && t <= 86_400.0) {
            return Err(ServiceError::invalid(
                "timeout",
                format!("{t} s is out of range: give 0 < seconds ≤ 86400"),
            ));
        }
        l.wall = Duration::from_secs_f64(t);
    }
    if let Some(m) = o.memory_bytes {
        if !((4 << 20)..=(1 << 40)).contains(&m) {
            return Err(ServiceError::invalid(
                "memory",
                format!("{m} bytes is out of range: give 4M to 1T"),
            ));
        }
        l.memory_bytes = m;
    }
    if let Some(p) = o.pids {
        if !(2..=1_000_000).contains(&p) {
            return Err(ServiceError::invalid(
                "pids",
                format!("{p} is out of range: give 2 to 1000000"),
            ));
        }
        l.pids = p;
    }
    if let Some(c) = o.cpus {
        if !(0.01..=1024.0).contains(&c) {
            return Err(ServiceError::invalid(
                "cpus",
                format!("{c} is out of range: give 0.01 to 1024"),
            ));
        }
        l.cpus = c;
    }
    Ok(l)
}

/// Apply per-call overrides under `policy`: the profile's limits, changed by `o`.
/// Under [`LimitPolicy::LowerOnly`] (MCP) a value above the profile's is refused,
/// naming the field and the profile's value; the bounds of [`check_limits`] hold
/// for everyone.
pub fn limits_for(
    profile: &str,
    l: Limits,
    o: &LimitOverrides,
    policy: LimitPolicy,
) -> Result<Limits, ServiceError> {
    if policy == LimitPolicy::LowerOnly {
        let raise = |field: &str, asked: String, limit: String| {
            Err(ServiceError::Refused(format!(
                "{field} {asked} is above profile '{profile}''s limit of {limit}: a client may lower a profile's limits, never raise them; ask for at most {limit} or use a profile with a higher limit"
            )))
        };
        if let Some(t) = o.timeout_secs
            && t > l.wall.as_secs_f64()
        {
            let w = l.wall.as_secs_f64();
            return raise("timeout_secs", format!("{t} s"), format!("{w} s"));
        }
        if let Some(m) = o.memory_bytes
            && m > l.memory_bytes
        {
            return raise(
                "memory_bytes",
                schema::human_bytes(m),
                schema::human_bytes(l.memory_bytes),
            );
        }
        if let Some(p) = o.pids
            && p > l.pids
        {
            return raise("pids", p.to_string(), l.pids.to_string());
        }
        if let Some(c) = o.cpus
            && c > l.cpus
        {
            return raise("cpus", c.to_string(), l.cpus.to_string());
        }
    }
    check_limits(l, o)
}

#[cfg(test)]
mod limit_policy_tests {
    use super::*;

    #[test]
    fn a_client_may_lower_never_raise() {
        let mut l = default_limits();
        l.wall = Duration::from_secs(10);
        let ask = |o: LimitOverrides, p| limits_for("strict", l.clone(), &o, p);
        let t = |s| LimitOverrides {
            timeout_secs: Some(s),
            ..Default::default()
        };
        match ask(t(20.0), LimitPolicy::LowerOnly) {
            Err(ServiceError::Refused(m)) => {
                assert!(
                    m.starts_with("timeout_secs 20 s is above profile 'strict''s limit of 10 s"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        let lowered = ask(t(2.0), LimitPolicy::LowerOnly).expect("lower");
        assert_eq!(lowered.wall, Duration::from_secs(2));
        assert!(ask(t(10.0), LimitPolicy::LowerOnly).is_ok());
        // The CLI user may raise.
        let raised = ask(t(20.0), LimitPolicy::MayRaise).expect("raise");
        assert_eq!(raised.wall, Duration::from_secs(20));
        // The bounds hold for everyone.
        assert!(ask(t(f64::NAN), LimitPolicy::LowerOnly).is_err());
        assert!(ask(t(0.0), LimitPolicy::LowerOnly).is_err());
        for (o, field) in [
            (
                LimitOverrides {
                    memory_bytes: Some(l.memory_bytes * 2),
                    ..Default::default()
                },
                "memory_bytes",
            ),
            (
                LimitOverrides {
                    pids: Some(l.pids + 1),
                    ..Default::default()
                },
                "pids",
            ),
            (
                LimitOverrides {
                    cpus: Some(l.cpus + 0.5),
                    ..Default::default()
                },
                "cpus",
            ),
        ] {
            match ask(o.clone(), LimitPolicy::LowerOnly) {
                Err(ServiceError::Refused(m)) => assert!(m.starts_with(field), "{m}"),
                other => panic!("{field}: {other:?}"),
            }
            assert!(ask(o, LimitPolicy::MayRaise).is_ok(), "{field}");
        }
        let smaller = LimitOverrides {
            memory_bytes: Some(64 << 20),
            pids: Some(10),
            cpus: Some(0.5),
            ..Default::default()
        };
        let got = ask(smaller, LimitPolicy::LowerOnly).expect("lower all");
        assert_eq!((got.memory_bytes, got.pids, got.cpus), (64 << 20, 10, 0.5));
    }
}

#[cfg(test)]
mod tests;
