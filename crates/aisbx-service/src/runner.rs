//! One run, from request to result: the profile chosen, the policy's decision
//! asked through the caller's callback, the jail specification built, the jail run
//! and its outcome mapped. Below the gate (`gate.rs`), beside sandboxes and
//! snapshots; it knows the state directory and the host PATH, not the service.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aisbx_jail::{CODE_DIR, Outcome, Spec, Stdin, Workspace};

use crate::hostpath::{self, Perimeter, Use};
use crate::network;
use crate::policy::Decision;
use crate::profile::{self, Profile};
use crate::runtime::{self, Language};
use crate::sandbox::{RunHold, SandboxInfo};
use crate::tenant_scope::Scope;
use crate::{
    CancelToken, OutputSink, Program, ProjectProfiles, RunRequest, RunResult, ServiceError,
};

/// Largest script or code accepted (the sandbox gets it as a file).
pub const MAX_CODE_BYTES: usize = 4 << 20;
/// Largest argv accepted, in arguments and in bytes.
pub const MAX_ARGS: usize = 4096;
pub const MAX_ARGV_BYTES: usize = 512 << 10;
/// Limits on files written into the workspace by one request.
pub const MAX_FILES: usize = 1000;
pub const MAX_FILES_BYTES: usize = 32 << 20;
pub const MAX_STDIN_BYTES: usize = 16 << 20;
pub const MAX_ENV: usize = 256;

/// The sandbox's PATH; an interpreter prefix outside /usr is put first.
pub const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host `/etc` entries the runtimes read (library cache, alternatives, time zone,
/// certificates, interpreter configuration); nothing with secrets. Each is a
/// mount of every run, so only what programs read at run time: not ldconfig's
/// `ld.so.conf*` or the certificate tooling's `ca-certificates`.
const ETC_BINDS: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/ssl/certs",
    "/etc/mime.types",
    "/etc/perl",
];
/// Per-version interpreter configuration in `/etc` (`python3.11`,
/// `java-17-openjdk`), found from where the host's default `python3` and `java`
/// lead rather than by listing `/etc` (an ext4 directory listing costs a tenth of
/// a millisecond of every run). Entries that do not exist are skipped when binding.
fn etc_runtime_dirs() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/etc/python3")];
    // /usr/bin/python3 -> python3.11
    if let Ok(py) = std::fs::canonicalize("/usr/bin/python3")
        && let Some(name) = py.file_name().and_then(|n| n.to_str())
        && name.starts_with("python3.")
    {
        v.push(Path::new("/etc").join(name));
    }
    // /usr/bin/java -> /usr/lib/jvm/java-17-openjdk-amd64/bin/java -> java-17-openjdk
    if let Ok(java) = std::fs::canonicalize("/usr/bin/java")
        && let Some(jvm) = java
            .ancestors()
            .find(|a| a.parent() == Some(Path::new("/usr/lib/jvm")))
            .and_then(|a| a.file_name())
            .and_then(|n| n.to_str())
    {
        let mut name = jvm;
        // The JVM directory names the architecture; /etc's does not.
        if let Some((base, _arch)) = jvm.rsplit_once('-')
            && base.ends_with("-openjdk")
        {
            name = base;
        }
        v.push(Path::new("/etc").join(name));
    }
    v
}

/// A file of code for the sandbox: (name, content).
type CodeFile = (String, Vec<u8>);

/// A prepared run: the jail specification plus what the result needs.
pub(crate) struct Prepared {
    pub spec: Spec,
    pub profile: String,
    pub sandbox_id: Option<String>,
    /// Which profile was inferred and why, when aisbx chose it.
    /// What the run chose that the user did not say (shown on stderr by the CLI).
    pub notices: Vec<String>,
    /// The policy's decision (`None` for the service's own runs).
    pub decision: Option<Decision>,
    /// Filtered network (a profile with `[network] mode = "allowlist"`).
    pub net: Option<crate::network::NetPlan>,
}

/// The policy's step of a run: given the resolved profile and language, the
/// decision (a refusal is an error). `None` for the service's own runs (setup
/// commands, file operations), which the request that caused them was decided for.
pub(crate) type Decide<'a> =
    &'a mut dyn FnMut(&Profile, Option<&str>) -> Result<Decision, ServiceError>;

/// What runs need from the host: the state directory, the caller's PATH, the
/// audit log that a run's network connections are recorded in, and the tenant
/// whose sandboxes and snapshots it reaches (its storage root and host id).
#[derive(Debug, Clone)]
pub(crate) struct Runner {
    home: PathBuf,
    /// The caller's PATH, used to find host runtimes.
    host_path: String,
    audit: Option<std::sync::Arc<crate::audit::AuditLog>>,
    scope: std::sync::Arc<Scope>,
}

impl Runner {
    /// A runner for the `default` tenant, whose state is the state directory's.
    pub(crate) fn new(home: PathBuf, host_path: String) -> Runner {
        Runner {
            scope: std::sync::Arc::new(Scope::default_in(&home)),
            home,
            host_path,
            audit: None,
        }
    }

    /// This runner for the tenant of `scope`.
    pub(crate) fn with_scope(&self, scope: Scope) -> Runner {
        Runner {
            scope: std::sync::Arc::new(scope),
            ..self.clone()
        }
    }

    /// The tenant this runner reaches the state of.
    pub(crate) fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Where the tenant's sandboxes (`sandboxes/`) and snapshots (`snapshots/`) are.
    pub(crate) fn store(&self) -> &Path {
        &self.scope.root
    }

    /// As root, the owner of the tenant's sandbox files and snapshot trees.
    pub(crate) fn owner(&self) -> Option<(u32, u32)> {
        self.scope.owner()
    }

    /// Records each network connection of a run in `audit`.
    pub(crate) fn with_audit(mut self, audit: std::sync::Arc<crate::audit::AuditLog>) -> Runner {
        self.audit = Some(audit);
        self
    }

    pub(crate) fn home(&self) -> &Path {
        &self.home
    }

    pub(crate) fn host_path(&self) -> &str {
        &self.host_path
    }

    /// The profiles a run may use; a project's only when approved.
    pub(crate) fn profiles(&self, project_start: Option<&Path>) -> profile::Catalog {
        profile::Catalog::load_with(project_start, &self.home, ProjectProfiles::TrustedOnly)
            .with_host_path(&self.host_path)
    }

    /// Turn a request into a jail specification.
    /// `sandbox` is the loaded record of `req.sandbox_id` (the caller loads it).
    pub(crate) fn prepare(
        &self,
        req: &RunRequest,
        sandbox: Option<SandboxInfo>,
        decide: Option<Decide>,
    ) -> Result<Prepared, ServiceError> {
        if sandbox.as_ref().map(|s| s.id.as_str()) != req.sandbox_id.as_deref() {
            return Err(ServiceError::Internal(
                "the run's sandbox was not loaded".into(),
            ));
        }
        if sandbox.is_some() && req.workdir.is_some() {
            return Err(ServiceError::invalid(
                "workdir",
                "a run in a persistent sandbox uses the sandbox's workspace; drop --workdir",
            ));
        }
        // Program → code; then the profile and language, chosen by profile::detect
        // (the same code `aisbx profile detect` and the CLI's notice use).
        let script = match &req.program {
            Program::File(path) => Some((path.clone(), read_script(path)?)),
            _ => None,
        };
        if !req.args.is_empty() {
            if matches!(req.program, Program::Command(_)) {
                return Err(ServiceError::invalid(
                    "args",
                    "arguments go with code or a script; a command carries its own",
                ));
            }
            check_args(&req.args)?;
        }
        let (lang_arg, code, argv_tail) = match &req.program {
            Program::Command(argv) => {
                check_argv(argv)?;
                (None, None, argv.clone())
            }
            Program::Code { language, code } => {
                if code.len() > MAX_CODE_BYTES {
                    return Err(ServiceError::invalid(
                        "code",
                        format!(
                            "{} bytes is more than the {} MiB limit",
                            code.len(),
                            MAX_CODE_BYTES >> 20
                        ),
                    ));
                }
                let l = Some(language.as_str()).filter(|l| !l.is_empty());
                (l, Some(code.as_str()), Vec::new())
            }
            Program::File(_) => (None, None, Vec::new()),
        };
        let catalog =
            profile::Catalog::load_with(req.workdir.as_deref(), self.home(), req.project_profiles)
                .with_host_path(&self.host_path);
        if req.project_profiles == ProjectProfiles::Require
            && let Some(why) = &catalog.project_problem
        {
            return Err(ServiceError::Refused(why.clone()));
        }
        // The profile the policy forces, when it names one other than the run's:
        // the run is then resolved and decided again with that profile.
        let mut forced: Option<String> = None;
        let mut decide = decide;
        let (profile, lang, code_file, limits, decision, notices) = loop {
            let detection = catalog.detect(&profile::DetectInput {
                profile: forced.as_deref().or(req
                    .profile
                    .as_deref()
                    .or(sandbox.as_ref().map(|sb| sb.profile.as_str()))),
                lang: lang_arg,
                file: script.as_ref().map(|(p, c)| (p.as_path(), c.as_slice())),
                code,
                dir: req
                    .workdir
                    .as_deref()
                    .or(sandbox.as_ref().map(|sb| sb.workspace.as_path())),
            })?;
            let mut notices: Vec<String> = detection
                .inferred()
                .then(|| {
                    format!(
                        "using profile {} ({})",
                        detection.profile.name, detection.reason
                    )
                })
                .into_iter()
                .collect();
            if let Some(f) = &forced {
                notices = vec![format!(
                    "policy: using profile {f}, which the policy requires"
                )];
            }
            let mut profile: Profile = detection.profile;
            let lang: Option<Language> = detection.language;
            if profile.language.is_none()
                && let Some(l) = &lang
            {
                // `--profile strict --lang python`: the language's environment too.
                let own = std::mem::take(&mut profile.env);
                profile.env = l.env.clone();
                for (k, v) in own {
                    profile.env.retain(|(ek, _)| *ek != k);
                    profile.env.push((k, v));
                }
            }
            let code_file: Option<CodeFile> = match (&req.program, &lang) {
                (Program::Code { code, .. }, Some(l)) => {
                    Some((l.file_name.clone(), code.clone().into_bytes()))
                }
                (Program::File(path), Some(l)) => {
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .filter(|n| !n.starts_with('.') && !n.contains('/'))
                        .unwrap_or_else(|| l.file_name.clone());
                    script.as_ref().map(|(_, content)| (name, content.clone()))
                }
                _ => None,
            };
            let mut limits = profile::limits_for(
                &profile.name,
                profile.limits.clone(),
                &req.limits,
                req.limit_policy,
            )?;
            // The policy decides with the resolved profile, before anything of the
            // run touches the host; its ceilings lower the limits.
            let decision = match decide.as_mut() {
                None => None,
                Some(decide) => {
                    let d = decide(&profile, lang.as_ref().map(|l| l.name.as_str()))?;
                    if let Some(p) = d.profile.as_ref().filter(|p| **p != profile.name) {
                        if let Some(f) = &forced {
                            return Err(ServiceError::Refused(format!(
                                "refused by policy: it requires profile {f}, and then profile {p} for a run with {f}; make the policy's `profile` rule agree with itself"
                            )));
                        }
                        forced = Some(p.clone());
                        continue;
                    }
                    for note in d.limits.apply(&mut limits) {
                        notices.push(format!("policy: {note}"));
                    }
                    Some(d)
                }
            };
            break (profile, lang, code_file, limits, decision, notices);
        };
        let mut notices = notices;
        // Made only when a path must be checked: most runs name none.
        let mut perimeter: Option<Perimeter> = None;
        let mut perimeter = || -> Perimeter {
            perimeter
                .get_or_insert_with(|| {
                    Perimeter::for_caller(self.home()).allowing(&profile.perimeter_allow)
                })
                .clone()
        };

        let mut ro_binds: Vec<PathBuf> = ETC_BINDS.iter().map(PathBuf::from).collect();
        ro_binds.extend(etc_runtime_dirs());
        // A script runs from its own directory, bound read-only at its host path, so
        // that its siblings import as they do on the host; when that directory may
        // not be bound, from a copy of the file alone.
        let mut script_in_place: Option<PathBuf> = None;
        if let (Program::File(path), Some(_)) = (&req.program, &code_file) {
            match script_dir(path, &perimeter()) {
                Ok((file, dir)) => {
                    ro_binds.push(dir);
                    script_in_place = Some(file);
                }
                // Said only when there are siblings it could have wanted.
                Err(why) if has_siblings(path) => notices.push(format!(
                    "running a copy of {} alone (its directory is not bound: {why})",
                    path.display()
                )),
                Err(_) => {}
            }
        }
        let mut path_var = SANDBOX_PATH.to_string();
        let mut argv = argv_tail;
        let mut code_files = Vec::new();
        if let Some(l) = &lang {
            let rt = runtime::resolve(l, &self.host_path).map_err(ServiceError::NotFound)?;
            if let Some(prefix) = &rt.prefix {
                // A prefix the profile named is a host path like a bind; one found
                // on the host PATH is checked for secrets only.
                let usage = if rt.named {
                    Use::Request
                } else {
                    Use::FoundRuntime
                };
                let prefix = hostpath::check(prefix, usage, &perimeter()).map_err(|e| {
                    ServiceError::Refused(format!(
                        "profile '{}': the interpreter {} cannot be bound: {e}",
                        profile.name,
                        rt.interpreter.display()
                    ))
                })?;
                path_var = format!("{}:{path_var}", prefix.join("bin").display());
                ro_binds.push(prefix);
            }
            if let Some((name, content)) = code_file {
                if l.feed == runtime::Feed::None {
                    return Err(ServiceError::invalid(
                        "profile",
                        format!(
                            "profile '{}' runs commands only ({} code is not fed to it); give a command after `--`",
                            profile.name, l.name
                        ),
                    ));
                }
                let in_sandbox = format!("{CODE_DIR}/{name}");
                argv = match (&req.program, &script_in_place) {
                    (_, Some(file)) => l.argv(&rt.interpreter, &file.to_string_lossy()),
                    (Program::File(_), None) => l.argv(&rt.interpreter, &in_sandbox),
                    _ => l.code_argv(&rt.interpreter, &in_sandbox),
                };
                if script_in_place.is_none() {
                    code_files.push((name, content));
                }
                argv.extend(req.args.iter().cloned());
            }
        }
        let mut rw_binds = Vec::new();
        for (list, out, what) in [
            (&profile.rw_binds, &mut rw_binds, "filesystem.rw_binds"),
            (&profile.ro_binds, &mut ro_binds, "filesystem.ro_binds"),
        ] {
            for b in list {
                profile::schema::check_bind(&b.to_string_lossy()).map_err(|e| {
                    ServiceError::Refused(format!("profile '{}': {what}: {e}", profile.name))
                })?;
                let canon = hostpath::check(b, Use::Request, &perimeter()).map_err(|e| {
                    ServiceError::Refused(format!("profile '{}': {what}: {e}", profile.name))
                })?;
                // A missing read-only bind is skipped, as the service's own are; a
                // read-write one must exist.
                if what == "filesystem.rw_binds" && !canon.is_dir() {
                    return Err(ServiceError::Refused(format!(
                        "profile '{}': {what}: {} is not an existing directory on this host",
                        profile.name,
                        b.display()
                    )));
                }
                out.push(canon);
            }
        }

        let mut env = build_env(&profile, &path_var, &req.env)?;
        let mut etc = etc_files();
        let net = match &profile.network {
            None => None,
            Some(settings) => {
                let (allow, deny) =
                    network::final_allowlist(settings, &profile.name, &self.host_path)?;
                // The policy may narrow where the run connects, never widen it.
                let (allow, deny) = match decision.as_ref().and_then(|d| d.network.as_ref()) {
                    None => (allow, deny),
                    Some(ob) => {
                        let n = network::narrow(allow, deny, ob)?;
                        if !n.dropped.is_empty() {
                            notices.push(format!(
                                "policy: network to {} not allowed",
                                n.dropped.join(", ")
                            ));
                        }
                        (n.allow, n.deny)
                    }
                };
                let tenant = req
                    .caller
                    .as_ref()
                    .map_or_else(|| crate::DEFAULT_TENANT.to_string(), |c| c.tenant.clone());
                let secret = network::new_secret()?;
                let ca = network::ca_bundle();
                if let Some(ca) = &ca
                    && !ro_binds.iter().any(|b| ca.starts_with(b))
                {
                    ro_binds.push(ca.clone());
                }
                // Bound at its host path, which must not lie where the sandbox
                // has its own directory. Made when the run starts (a dry run
                // makes nothing on the host).
                let cache = Some(network::cache_dir(self.home(), &tenant)?).filter(|c| {
                    let own = ["/tmp", "/run", "/dev", "/proc", "/workspace", "/etc"]
                        .into_iter()
                        .find(|d| c.starts_with(d));
                    if let Some(d) = own {
                        notices.push(format!(
                            "downloads are not cached: the state directory lies under {d}, which the sandbox has its own of"
                        ));
                    }
                    own.is_none()
                });
                // The proxy's variables come last: the only way out is the proxy.
                for (k, v) in network::env(&secret, ca.as_deref(), cache.as_deref()) {
                    env.retain(|(ek, _)| *ek != k);
                    env.push((k, v));
                }
                network::etc_files(&mut etc);
                rw_binds.extend(cache);
                Some(network::NetPlan {
                    allow,
                    deny,
                    max_connections: settings.max_connections,
                    max_egress: settings.max_egress,
                    secret,
                    tenant,
                    audit_id: None,
                })
            }
        };
        let workspace = match (&sandbox, &req.workdir) {
            (Some(sb), _) => sb.jail_workspace(),
            (None, Some(dir)) => Workspace::Bind {
                host: check_workdir(dir, &perimeter())?,
            },
            (None, None) => Workspace::Tmpfs {
                size_bytes: profile.workspace_bytes,
            },
        };
        let workspace_files = check_files(&req.files)?;
        let stdin = match &req.stdin {
            Some(b) if b.len() > MAX_STDIN_BYTES => {
                return Err(ServiceError::invalid(
                    "stdin",
                    format!(
                        "{} bytes is more than the {} MiB limit",
                        b.len(),
                        MAX_STDIN_BYTES >> 20
                    ),
                ));
            }
            Some(b) => Stdin::Bytes(b.clone()),
            None if req.inherit_stdin => Stdin::Inherit,
            None => Stdin::Null,
        };
        let spec = Spec {
            argv,
            env,
            cwd: "/workspace".into(),
            ro_binds,
            rw_binds,
            etc_files: etc,
            code_files,
            workspace,
            workspace_files,
            limits,
            stdin,
            hostname: "aisbx".into(),
            landlock: profile.landlock,
            seccomp: profile.seccomp,
            require_cgroups: false,
            net: None,
            host_id: self.scope.host_id,
        };
        Ok(Prepared {
            spec,
            profile: profile.name.clone(),
            sandbox_id: sandbox.map(|s| s.id),
            notices,
            decision,
            net,
        })
    }

    pub(crate) fn execute(
        &self,
        mut p: Prepared,
        sink: &mut dyn OutputSink,
        cancel: &CancelToken,
        hold: Option<RunHold>,
    ) -> Result<RunResult, ServiceError> {
        // A run with network: its own proxy, serving in a private directory,
        // for as long as the run lasts. (Its thread makes this process
        // multi-threaded: the jail then runs in a helper process.)
        let net = match &p.net {
            Some(plan) => {
                if p.spec
                    .rw_binds
                    .iter()
                    .any(|b| b.starts_with(self.home().join("cache")))
                {
                    network::tenant_cache(self.home(), &plan.tenant)?;
                }
                let (proxy, dir) = network::start_proxy(plan)?;
                p.spec.net = Some(aisbx_jail::NetRelay {
                    dir: dir.path().to_path_buf(),
                    port: network::PROXY_PORT,
                });
                Some((proxy, dir, plan.tenant.clone(), plan.audit_id.clone()))
            }
            None => None,
        };
        let result = self.execute_jail(&p, sink, cancel, hold);
        match net {
            Some((proxy, dir, tenant, audit_id)) => {
                let report = proxy.finish();
                drop(dir);
                if let Some(log) = &self.audit {
                    network::audit(log, &tenant, audit_id, &report);
                }
                result.map(|mut r| {
                    r.network_denied = report.denied;
                    r
                })
            }
            None => result,
        }
    }

    fn execute_jail(
        &self,
        p: &Prepared,
        sink: &mut dyn OutputSink,
        cancel: &CancelToken,
        hold: Option<RunHold>,
    ) -> Result<RunResult, ServiceError> {
        // Two overlay mounts must never share an upper directory: runs in one
        // copy-on-write sandbox take turns (held until the run has ended).
        for n in &p.notices {
            sink.notice(n);
        }
        // A run in a persistent sandbox holds it, so that it is never removed under
        // the run (destroying it stops the run first).
        if p.sandbox_id.is_some() != hold.is_some() {
            return Err(ServiceError::Internal(
                "a run in a sandbox must hold it".into(),
            ));
        }
        let _turn = match &p.spec.workspace {
            Workspace::Overlay { upper, .. } => Some(overlay_turn(upper)?),
            _ => None,
        };
        let outcome = crate::helper::run_jail(&p.spec, sink, cancel, hold.as_ref())?;
        let (mut result, note) = to_result(outcome, p);
        // The note on a program that could not be executed goes to the live stream too.
        if let Some(note) = note {
            sink.stderr(note.as_bytes());
        }
        if let (Some(h), Some(id)) = (&hold, &p.sandbox_id)
            && h.was_removed()
        {
            let note = format!("aisbx: sandbox '{id}' was removed; the run was stopped\n");
            sink.stderr(note.as_bytes());
            result.stderr.push_str(&note);
        }
        Ok(result)
    }
}

/// Wait for, then hold, the exclusive lock of a copy-on-write sandbox's upper
/// layer (a lock file beside it; released when the returned guard is dropped).
fn overlay_turn(upper: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, ServiceError> {
    let lock = upper.with_extension("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|e| ServiceError::Internal(format!("cannot open {}: {e}", lock.display())))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| ServiceError::Internal(format!("cannot lock {}: {e}", lock.display())))
}

fn check_argv(argv: &[String]) -> Result<(), ServiceError> {
    if argv.is_empty() || argv[0].is_empty() {
        return Err(ServiceError::invalid("command", "no command given"));
    }
    check_words("command", argv)
}

/// The arguments given to code or a script.
fn check_args(args: &[String]) -> Result<(), ServiceError> {
    check_words("args", args)
}

fn check_words(field: &'static str, argv: &[String]) -> Result<(), ServiceError> {
    if argv.len() > MAX_ARGS || argv.iter().map(|a| a.len() + 1).sum::<usize>() > MAX_ARGV_BYTES {
        return Err(ServiceError::invalid(
            field,
            format!(
                "more than {MAX_ARGS} arguments or {} KiB in all",
                MAX_ARGV_BYTES >> 10
            ),
        ));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(ServiceError::invalid(
            field,
            "an argument contains a NUL byte",
        ));
    }
    Ok(())
}

/// A script's canonical path and its directory, when the directory passes the host
/// path check (a script in `/tmp` itself or in a home directory does not).
fn script_dir(path: &Path, perimeter: &Perimeter) -> Result<(PathBuf, PathBuf), String> {
    let file = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
    let dir = file
        .parent()
        .ok_or_else(|| "it has no parent directory".to_string())?;
    let dir = hostpath::check(dir, Use::Request, perimeter).map_err(|e| e.rule)?;
    // The sandbox has its own of these: a bind there would be hidden.
    for own in ["/tmp", "/dev", "/proc", "/run", "/workspace"] {
        if dir.starts_with(own) {
            return Err(format!(
                "it is under {own}, which the sandbox has its own of"
            ));
        }
    }
    Ok((file, dir))
}

/// Whether the file's directory holds anything besides it.
fn has_siblings(path: &Path) -> bool {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .any(|e| Some(e.file_name().as_os_str()) != path.file_name())
        })
        .unwrap_or(false)
}

fn read_script(path: &Path) -> Result<Vec<u8>, ServiceError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        ServiceError::invalid("file", format!("cannot read {}: {e}", path.display()))
    })?;
    if !meta.is_file() {
        return Err(ServiceError::invalid(
            "file",
            format!("{} is not a regular file", path.display()),
        ));
    }
    if meta.len() > MAX_CODE_BYTES as u64 {
        return Err(ServiceError::invalid(
            "file",
            format!(
                "{} is larger than the {} MiB limit",
                path.display(),
                MAX_CODE_BYTES >> 20
            ),
        ));
    }
    std::fs::read(path)
        .map_err(|e| ServiceError::invalid("file", format!("cannot read {}: {e}", path.display())))
}

/// `--workdir`: an existing directory that passes the host-path check; its
/// canonical path.
fn check_workdir(dir: &Path, perimeter: &Perimeter) -> Result<PathBuf, ServiceError> {
    let canon = std::fs::canonicalize(dir).map_err(|e| {
        ServiceError::invalid(
            "workdir",
            format!(
                "{}: {e}; create it first or drop --workdir for a fresh workspace",
                dir.display()
            ),
        )
    })?;
    if !canon.is_dir() {
        return Err(ServiceError::invalid(
            "workdir",
            format!("{} is not a directory", dir.display()),
        ));
    }
    hostpath::check(&canon, Use::Request, perimeter)
        .map_err(|e| ServiceError::invalid("workdir", format!("{} {}", dir.display(), e.rule)))
}

fn check_files(files: &BTreeMap<String, Vec<u8>>) -> Result<Vec<(String, Vec<u8>)>, ServiceError> {
    if files.len() > MAX_FILES {
        return Err(ServiceError::invalid(
            "files",
            format!(
                "{} files is more than the limit of {MAX_FILES}",
                files.len()
            ),
        ));
    }
    let total: usize = files.values().map(Vec::len).sum();
    if total > MAX_FILES_BYTES {
        return Err(ServiceError::invalid(
            "files",
            format!(
                "{total} bytes of files is more than the {} MiB limit",
                MAX_FILES_BYTES >> 20
            ),
        ));
    }
    files
        .iter()
        .map(|(k, v)| {
            aisbx_jail::check_relative(k).map_err(|e| ServiceError::invalid("files", e))?;
            Ok((k.clone(), v.clone()))
        })
        .collect()
}

fn valid_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn build_env(
    profile: &Profile,
    path_var: &str,
    extra: &[(String, String)],
) -> Result<Vec<(String, String)>, ServiceError> {
    if extra.len() > MAX_ENV {
        return Err(ServiceError::invalid(
            "env",
            format!("more than {MAX_ENV} variables"),
        ));
    }
    let term = std::env::var("TERM")
        .ok()
        .filter(|t| {
            !t.is_empty()
                && t.len() < 64
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
        })
        .unwrap_or_else(|| "dumb".into());
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), path_var.to_string()),
        ("HOME".into(), "/tmp".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TERM".into(), term),
    ];
    let mut set = |k: &str, v: &str| {
        if let Some(slot) = env.iter_mut().find(|(ek, _)| ek == k) {
            slot.1 = v.to_string();
        } else {
            env.push((k.to_string(), v.to_string()));
        }
    };
    for (k, v) in &profile.env {
        set(k, v);
    }
    for (k, v) in extra {
        if !valid_env_name(k) {
            return Err(ServiceError::invalid(
                "env",
                format!("'{k}' is not a valid variable name"),
            ));
        }
        if v.contains('\0') || v.len() > 128 << 10 {
            return Err(ServiceError::invalid(
                "env",
                format!("the value of {k} contains a NUL byte or is longer than 128 KiB"),
            ));
        }
        set(k, v);
    }
    Ok(env)
}

fn etc_files() -> Vec<(String, Vec<u8>)> {
    let id = aisbx_jail::SANDBOX_ID;
    vec![
        (
            "passwd".into(),
            format!("root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{id}:{id}:sandbox:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n").into_bytes(),
        ),
        ("group".into(), format!("root:x:0:\nsandbox:x:{id}:\nnogroup:x:65534:\n").into_bytes()),
        ("hosts".into(), b"127.0.0.1 localhost aisbx\n::1 localhost ip6-localhost ip6-loopback\n".to_vec()),
        ("hostname".into(), b"aisbx\n".to_vec()),
        ("nsswitch.conf".into(), b"passwd: files\ngroup: files\nhosts: files\n".to_vec()),
        ("resolv.conf".into(), b"# no network in this sandbox\n".to_vec()),
    ]
}

/// The SPEC's RunResult from the jail's outcome.
/// Also returns the note added to stderr when the program could not be executed.
fn to_result(o: Outcome, p: &Prepared) -> (RunResult, Option<String>) {
    let mut stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let mut exit_code = o.exit_code;
    let mut note = None;
    if let Some(errno) = o.exec_errno {
        let prog = p.spec.argv.first().cloned().unwrap_or_default();
        let (n, code) = if errno == libc::ENOENT {
            (
                format!("aisbx: {prog}: command not found in the sandbox\n"),
                127,
            )
        } else {
            (
                format!(
                    "aisbx: {prog}: cannot execute: {}\n",
                    std::io::Error::from_raw_os_error(errno)
                ),
                126,
            )
        };
        stderr.push_str(&n);
        exit_code = Some(code);
        note = Some(n);
    }
    let r = RunResult {
        exit_code,
        signal: o.signal,
        timed_out: o.timed_out,
        oom_killed: o.oom_killed,
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr,
        stdout_truncated: o.stdout_truncated,
        stderr_truncated: o.stderr_truncated,
        duration_ms: o.duration_ms,
        cpu_ms: o.cpu_ms,
        max_rss_kib: o.max_rss_kib,
        profile: p.profile.clone(),
        sandbox_id: p.sandbox_id.clone(),
        network_denied: Vec::new(),
    };
    (r, note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_is_clean_and_overridable() {
        let p = profile::Catalog::builtin().resolve("python").unwrap();
        let env = build_env(
            &p,
            "/usr/bin",
            &[
                ("FOO".into(), "1".into()),
                ("HOME".into(), "/workspace".into()),
            ],
        )
        .unwrap();
        let get = |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone());
        assert_eq!(get("PATH").as_deref(), Some("/usr/bin"));
        assert_eq!(get("HOME").as_deref(), Some("/workspace"));
        assert_eq!(get("PYTHONUNBUFFERED").as_deref(), Some("1"));
        assert_eq!(get("FOO").as_deref(), Some("1"));
        assert!(build_env(&p, "/", &[("A=B".into(), "1".into())]).is_err());
        assert!(build_env(&p, "/", &[("".into(), "1".into())]).is_err());
    }

    #[test]
    fn file_paths_must_stay_inside() {
        let mut f = BTreeMap::new();
        f.insert("ok/a.txt".to_string(), b"x".to_vec());
        assert!(check_files(&f).is_ok());
        for bad in ["/etc/passwd", "../up", "a/../../b"] {
            let mut f = BTreeMap::new();
            f.insert(bad.to_string(), Vec::new());
            match check_files(&f) {
                Err(ServiceError::InvalidArgument { field, .. }) => assert_eq!(field, "files"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn arguments_go_with_code_or_a_script_only() {
        let t = tempfile::tempdir().unwrap();
        let svc = Runner::new(
            t.path().to_path_buf(),
            std::env::var("PATH").unwrap_or_else(|_| SANDBOX_PATH.to_string()),
        );
        let mut req = RunRequest::new(Program::Command(vec!["echo".into()]));
        req.args = vec!["x".into()];
        match svc.prepare(&req, None, None) {
            Err(ServiceError::InvalidArgument { field, .. }) => assert_eq!(field, "args"),
            other => panic!("{:?}", other.err()),
        }
        let mut req = RunRequest::new(Program::Code {
            language: "sh".into(),
            code: "echo".into(),
        });
        req.args = vec!["a".into(), "b\0".into()];
        match svc.prepare(&req, None, None) {
            Err(ServiceError::InvalidArgument { field, .. }) => assert_eq!(field, "args"),
            other => panic!("{:?}", other.err()),
        }
        req.args = vec!["a".into(), "b".into()];
        let p = svc.prepare(&req, None, None).unwrap();
        assert_eq!(p.spec.argv[p.spec.argv.len() - 2..], ["a", "b"]);
    }

    #[test]
    fn workdir_checks() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("state");
        std::fs::create_dir(&home).unwrap();
        let p = Perimeter {
            homes: vec![PathBuf::from("/home/me")],
            state: vec![std::fs::canonicalize(&home).unwrap()],
            allow: Vec::new(),
        };
        assert!(check_workdir(Path::new("/"), &p).is_err());
        assert!(check_workdir(&t.path().join("missing"), &p).is_err());
        assert!(check_workdir(&home, &p).is_err());
        assert!(
            check_workdir(t.path(), &p).is_err(),
            "a parent of the state dir"
        );
        for sys in ["/etc", "/root", "/usr/bin", "/tmp"] {
            let e = check_workdir(Path::new(sys), &p).unwrap_err().to_string();
            assert!(
                e.contains("no sandbox may be given") || e.contains("itself"),
                "{e}"
            );
        }
        let w = t.path().join("w");
        std::fs::create_dir(&w).unwrap();
        assert_eq!(
            check_workdir(&w, &p).unwrap(),
            std::fs::canonicalize(&w).unwrap()
        );
        let f = w.join("file");
        std::fs::write(&f, "").unwrap();
        assert!(check_workdir(&f, &p).is_err());
    }
}
