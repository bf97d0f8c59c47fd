//! The one gate every request of every front end passes: [`Service::call`].
//!
//! A front end builds a [`Request`] and the [`RequestMeta`] of who sent it, and
//! decides nothing. The gate then, in this order:
//!
//! 1. **authenticates**: the caller is the one the front end's meta describes
//!    (the CLI's user, an MCP client over stdio, HTTP or a Unix socket);
//! 2. **decides** the request with the policy (`input.tool` is [`Request::tool`],
//!    the same name for a CLI command and its MCP tool; docs/POLICY.md). A run
//!    and a build are decided with their resolved profile, every other tool with
//!    its normalized request; a refusal ends the request here;
//! 3. **reserves** what the request takes of its tenant's quotas (tenants.toml's,
//!    lowered by the decision's `quotas`): a run slot, a start in the minute and
//!    CPU time left for a run or a build with setup commands, storage left for a
//!    request that writes; a refusal ends the request here, and the reservation
//!    ends with the work (a run's CPU time is counted when it ends);
//! 4. **executes** it on the layers below (runs, sandboxes, snapshots, profiles,
//!    the audit log, the jail's probe), on the caller's tenant's state only (its
//!    storage root, `tenant_scope.rs`): another tenant's names answer as not found;
//! 5. **records** one audit line: the tool, the digest of the arguments, allow,
//!    deny (with the policy's reasons) or error.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::{Value, json};

use crate::audit::{self, AuditEntry, digest_args};
use crate::policy;
use crate::policy::input::{
    AuditTailDoc, CopyDoc, EmptyDoc, FileListDoc, FilePathDoc, FileWriteDoc, NameDoc,
    ProfileDetectDoc, ProfileShowDoc, ProfileValidateDoc, RequestDoc, SandboxDoc,
    SnapshotCreateDoc, SnapshotDiffDoc, SnapshotListDoc, SnapshotRestoreDoc, WorkdirDoc,
};
use crate::profile_api::{ProfileDetected, ProfileShown, ValidatedFile};
use crate::runner::Prepared;
use crate::sandbox::{self, CopyResult, FileContent, FileDeleteResult, FileList, FileWriteResult};
use crate::snapshot::{
    NoProgress, Progress, RestoreResult, RestoreTarget, SnapSource, SnapshotDiff, SnapshotInfo,
    VerifyReport,
};
use crate::snapshot_api::{CopyEnd, SandboxDestroyed, SandboxList, SnapshotList, SnapshotRemoved};
use crate::{
    BuildRequest, BuildResult, Caller, CancelToken, NullSink, OutputSink, ProfileList, RequestMeta,
    RunPlan, RunRequest, RunResult, SandboxInfo, Service, ServiceError, profile,
};

/// One request: a CLI command or an MCP tool that reads state or runs code.
#[derive(Debug, Clone)]
pub enum Request {
    /// Run a program (`aisbx run`, `aisbx exec`; MCP `run`).
    Run(RunRequest),
    /// What a run would do, without running it (`aisbx run --dry-run`; MCP `run`
    /// with `dry_run`): decided as a `run`, the decision reported, not enforced.
    Plan(RunRequest),
    /// A persistent sandbox with files and setup commands (MCP `build`).
    Build(BuildRequest),
    ProfileList {
        /// Find a project's profiles from here upward (default: the current directory).
        project: Option<PathBuf>,
    },
    ProfileShow {
        name: String,
        project: Option<PathBuf>,
    },
    /// The profile a run would choose, and why.
    ProfileDetect {
        /// A script, or a project directory.
        path: Option<PathBuf>,
        code: Option<String>,
        lang: Option<String>,
        profile: Option<String>,
        workdir: Option<PathBuf>,
    },
    ProfileValidate {
        files: Vec<PathBuf>,
        workdir: Option<PathBuf>,
    },
    /// `aisbx create`: an empty sandbox (the tool `build`), or a copy-on-write one
    /// over a snapshot (the tool `snapshot_restore`).
    SandboxCreate {
        name: Option<String>,
        profile: Option<String>,
        from_snapshot: Option<String>,
    },
    SandboxList,
    SandboxDestroy {
        id: String,
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
    FileWrite {
        id: String,
        path: String,
        content: Vec<u8>,
    },
    FileDelete {
        id: String,
        path: String,
    },
    /// `aisbx cp` (the tool `copy_in` or `copy_out`, by direction).
    Copy {
        src: CopyEnd,
        dst: CopyEnd,
        keep_links: bool,
    },
    SnapshotCreate {
        name: String,
        source: SnapSource,
    },
    SnapshotRestore {
        name: String,
        target: RestoreTarget,
        profile: Option<String>,
    },
    SnapshotList {
        with_sharing: bool,
    },
    SnapshotDiff {
        from: String,
        to: String,
    },
    SnapshotDelete {
        name: String,
    },
    SnapshotVerify,
    /// The host's sandboxing layers (`aisbx doctor`).
    Doctor,
    AuditTail {
        n: usize,
    },
    AuditVerify,
    /// The caller's tenant's use of each quota and what is left (`aisbx quota`;
    /// MCP `quota`).
    Quota,
}

/// The names every tool has in the policy's `input.tool` and the audit log,
/// in the order docs/POLICY.md lists them.
pub const TOOLS: &[&str] = &[
    "run",
    "build",
    "profile_list",
    "profile_show",
    "profile_detect",
    "profile_validate",
    "sandbox_list",
    "sandbox_destroy",
    "file_read",
    "file_list",
    "file_write",
    "file_delete",
    "copy_in",
    "copy_out",
    "snapshot_create",
    "snapshot_restore",
    "snapshot_list",
    "snapshot_diff",
    "snapshot_delete",
    "snapshot_verify",
    "doctor",
    "audit_tail",
    "audit_verify",
    "quota",
];

impl Request {
    /// The tool's name: the policy's `input.tool` and the audit line's `tool`.
    /// A CLI command has the name of the MCP tool that does the same.
    pub fn tool(&self) -> &'static str {
        match self {
            Request::Run(_) | Request::Plan(_) => "run",
            Request::Build(_) => "build",
            Request::ProfileList { .. } => "profile_list",
            Request::ProfileShow { .. } => "profile_show",
            Request::ProfileDetect { .. } => "profile_detect",
            Request::ProfileValidate { .. } => "profile_validate",
            Request::SandboxCreate {
                from_snapshot: None,
                ..
            } => "build",
            Request::SandboxCreate { .. } => "snapshot_restore",
            Request::SandboxList => "sandbox_list",
            Request::SandboxDestroy { .. } => "sandbox_destroy",
            Request::FileRead { .. } => "file_read",
            Request::FileList { .. } => "file_list",
            Request::FileWrite { .. } => "file_write",
            Request::FileDelete { .. } => "file_delete",
            Request::Copy {
                src: CopyEnd::Host(_),
                ..
            } => "copy_in",
            Request::Copy { .. } => "copy_out",
            Request::SnapshotCreate { .. } => "snapshot_create",
            Request::SnapshotRestore { .. } => "snapshot_restore",
            Request::SnapshotList { .. } => "snapshot_list",
            Request::SnapshotDiff { .. } => "snapshot_diff",
            Request::SnapshotDelete { .. } => "snapshot_delete",
            Request::SnapshotVerify => "snapshot_verify",
            Request::Doctor => "doctor",
            Request::AuditTail { .. } => "audit_tail",
            Request::AuditVerify => "audit_verify",
            Request::Quota => "quota",
        }
    }

    /// The normalized request: what the audit line digests, and for every tool
    /// but `run` and `build` (which have theirs in `policy.rs`) the policy's
    /// `input.request`. Sizes, never contents.
    fn normalized(&self) -> Value {
        match self {
            Request::Run(r) | Request::Plan(r) => serde_json::to_value(r).unwrap_or_default(),
            Request::Build(b) => serde_json::to_value(b).unwrap_or_default(),
            other => serde_json::to_value(other.request_doc()).unwrap_or_default(),
        }
    }

    /// The policy's `input.request` of a tool other than `run` and `build`, as
    /// the types the published schema is generated from.
    fn request_doc(&self) -> RequestDoc {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
        match self {
            Request::Run(_) | Request::Plan(_) | Request::Build(_) => {
                RequestDoc::Empty(EmptyDoc {})
            }
            Request::ProfileList { project } => RequestDoc::ProfileList(WorkdirDoc {
                workdir: path(project),
            }),
            Request::ProfileShow { name, project } => RequestDoc::ProfileShow(ProfileShowDoc {
                name: name.clone(),
                workdir: path(project),
            }),
            Request::ProfileDetect {
                path: p,
                code,
                lang,
                profile,
                workdir,
            } => RequestDoc::ProfileDetect(ProfileDetectDoc {
                path: path(p),
                code_bytes: code.as_ref().map(String::len),
                language: lang.clone(),
                profile: profile.clone(),
                workdir: path(workdir),
            }),
            Request::ProfileValidate { files, workdir } => {
                RequestDoc::ProfileValidate(ProfileValidateDoc {
                    files: files
                        .iter()
                        .map(|f| f.to_string_lossy().into_owned())
                        .collect(),
                    workdir: path(workdir),
                })
            }
            // `create` is a build, or a restore into a new sandbox: the same
            // request as those tools'.
            Request::SandboxCreate {
                name,
                profile,
                from_snapshot: None,
            } => RequestDoc::Build(policy::input::BuildDoc {
                name: name.clone(),
                profile: profile.clone(),
                files: Vec::new(),
                setup: Vec::new(),
            }),
            Request::SandboxCreate {
                name,
                profile,
                from_snapshot: Some(from),
            } => RequestDoc::SnapshotRestore(SnapshotRestoreDoc {
                name: from.clone(),
                target: RestoreTarget::Sandbox(name.clone().unwrap_or_default()),
                profile: profile.clone(),
            }),
            Request::SandboxList
            | Request::SnapshotVerify
            | Request::Doctor
            | Request::AuditVerify
            | Request::Quota => RequestDoc::Empty(EmptyDoc {}),
            Request::SandboxDestroy { id } => RequestDoc::SandboxDestroy(SandboxDoc {
                sandbox_id: id.clone(),
            }),
            Request::FileRead { id, path } | Request::FileDelete { id, path } => {
                RequestDoc::FilePath(FilePathDoc {
                    sandbox_id: id.clone(),
                    path: path.clone(),
                })
            }
            Request::FileList {
                id,
                path,
                recursive,
            } => RequestDoc::FileList(FileListDoc {
                sandbox_id: id.clone(),
                path: path.clone(),
                recursive: *recursive,
            }),
            Request::FileWrite { id, path, content } => RequestDoc::FileWrite(FileWriteDoc {
                sandbox_id: id.clone(),
                path: path.clone(),
                bytes: content.len(),
            }),
            Request::Copy {
                src,
                dst,
                keep_links,
            } => RequestDoc::Copy(CopyDoc {
                src: src.clone(),
                dst: dst.clone(),
                keep_links: *keep_links,
            }),
            Request::SnapshotCreate { name, source } => {
                RequestDoc::SnapshotCreate(SnapshotCreateDoc {
                    name: name.clone(),
                    source: source.clone(),
                })
            }
            Request::SnapshotRestore {
                name,
                target,
                profile,
            } => RequestDoc::SnapshotRestore(SnapshotRestoreDoc {
                name: name.clone(),
                target: target.clone(),
                profile: profile.clone(),
            }),
            Request::SnapshotList { with_sharing } => RequestDoc::SnapshotList(SnapshotListDoc {
                with_sharing: *with_sharing,
            }),
            Request::SnapshotDiff { from, to } => RequestDoc::SnapshotDiff(SnapshotDiffDoc {
                from: from.clone(),
                to: to.clone(),
            }),
            Request::SnapshotDelete { name } => {
                RequestDoc::SnapshotDelete(NameDoc { name: name.clone() })
            }
            Request::AuditTail { n } => RequestDoc::AuditTail(AuditTailDoc { n: *n }),
        }
    }
}

/// The sandboxing layers of this host (`aisbx doctor`).
#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    #[serde(flatten)]
    pub jail: crate::doctor::Report,
    pub sandbox_disk: SandboxDisk,
    pub filtered_network: FilteredNetwork,
}

/// Whether runs whose profile allows named destinations reach them here.
#[derive(Debug, Clone, Serialize)]
pub struct FilteredNetwork {
    pub works: bool,
    pub detail: String,
}

/// Whether a persistent sandbox gets a capped disk of its own here.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxDisk {
    pub capped: bool,
    pub detail: String,
}

/// The result of one [`Request`], the variant of the same name.
// One per call, moved once to its front end: boxing the plan would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Response {
    Run(RunResult),
    Plan(RunPlan),
    Build(BuildResult),
    ProfileList {
        list: ProfileList,
        /// Why a project's profiles are left out (unapproved, unreadable).
        note: Option<String>,
    },
    ProfileShow(ProfileShown),
    ProfileDetect(ProfileDetected),
    ProfileValidate(Vec<ValidatedFile>),
    SandboxCreate(SandboxInfo),
    SandboxList(SandboxList),
    SandboxDestroy(SandboxDestroyed),
    FileRead(FileContent),
    FileList(FileList),
    FileWrite(FileWriteResult),
    FileDelete(FileDeleteResult),
    Copy(CopyResult),
    SnapshotCreate(SnapshotInfo),
    SnapshotRestore(RestoreResult),
    SnapshotList(SnapshotList),
    SnapshotDiff(SnapshotDiff),
    SnapshotDelete(SnapshotRemoved),
    SnapshotVerify(VerifyReport),
    Doctor(DoctorReport),
    AuditTail(Vec<Value>),
    AuditVerify(audit::VerifyReport),
    Quota(crate::quota::QuotaReport),
}

impl Response {
    /// What the audit line keeps of a result: outcomes and counts, no output or
    /// file contents.
    fn audit_summary(&self) -> Value {
        let v = |x: &dyn erased::Ser| crate::service::summarize(x.value());
        match self {
            Response::Run(r) => v(r),
            Response::Plan(p) => {
                json!({"dry_run": true, "allowed": p.allowed, "profile": p.profile})
            }
            Response::Build(b) => v(b),
            Response::ProfileList { list, .. } => v(list),
            Response::ProfileShow(s) => json!({"profile": s.name}),
            Response::ProfileDetect(d) => json!({"profile": d.profile, "basis": d.basis}),
            Response::ProfileValidate(files) => json!({
                "files": files.len(),
                "failed": files.iter().filter(|f| !f.errors.is_empty()).count(),
            }),
            Response::SandboxCreate(s) => v(s),
            Response::SandboxList(l) => json!({"sandboxes": l.sandboxes.len()}),
            Response::SandboxDestroy(d) => v(d),
            Response::FileRead(c) => {
                json!({"path": c.path, "size": c.size, "truncated": c.truncated})
            }
            Response::FileList(l) => json!({"entries": l.entries.len(), "truncated": l.truncated}),
            Response::FileWrite(w) => v(w),
            Response::FileDelete(d) => v(d),
            Response::Copy(c) => v(c),
            Response::SnapshotCreate(s) => v(s),
            Response::SnapshotRestore(r) => v(r),
            Response::SnapshotList(l) => json!({"snapshots": l.snapshots.len()}),
            Response::SnapshotDiff(d) => json!({
                "added": d.added.len(), "removed": d.removed.len(), "changed": d.changed.len()
            }),
            Response::SnapshotDelete(r) => v(r),
            Response::SnapshotVerify(r) => v(r),
            Response::Doctor(d) => json!({"ok": d.jail.ok()}),
            Response::AuditTail(lines) => json!({"lines": lines.len()}),
            Response::AuditVerify(r) => json!({"lines": r.lines, "ok": r.problem.is_none()}),
            Response::Quota(q) => json!({"tenant": q.tenant, "quotas": q.quotas.len()}),
        }
    }
}

/// Serialize behind a trait object, for the audit summaries.
mod erased {
    pub(super) trait Ser {
        fn value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
}

/// What a call may need beyond its request: where a run's output goes as it
/// comes, how the caller cancels it, and who hears a snapshot's progress.
pub struct CallIo<'a> {
    pub sink: &'a mut dyn OutputSink,
    pub cancel: &'a CancelToken,
    pub progress: &'a mut dyn Progress,
}

/// A request the policy let through, ready to execute.
enum Decided {
    /// A run with its jail specification (the decision applied to its limits).
    Run(Box<Prepared>),
    /// A dry run: its plan is the result.
    Plan(RunPlan),
    /// A build (`create` is one with no files or setup, answered with the
    /// sandbox's record).
    Build(BuildRequest, Box<profile::Profile>, bool),
    /// Anything else: decided on its normalized request.
    Other(Request),
}

impl Request {
    /// Whether the request writes to its tenant's storage (its storage quota is
    /// checked first). Runs and builds are reserved for as such.
    fn writes(&self) -> bool {
        matches!(
            self,
            Request::SandboxCreate { .. }
                | Request::FileWrite { .. }
                | Request::Copy {
                    dst: CopyEnd::Sandbox { .. },
                    ..
                }
                | Request::SnapshotCreate { .. }
                | Request::SnapshotRestore { .. }
        )
    }
}

/// What a request holds of its tenant's quotas while it is carried out (given
/// back when dropped).
enum Held {
    Nothing,
    /// A run's: finished with its result (its CPU time counted).
    Run(crate::quota::RunQuota),
    /// A build's run slot, or a writer's storage check.
    Reserved(#[allow(dead_code)] crate::quota::Reservation),
}

impl Service {
    /// The one entry of every front end: authenticate, decide, execute, record
    /// (see the module's documentation). Blocking; safe from any thread.
    pub fn call(
        &self,
        meta: &RequestMeta,
        request: Request,
        io: CallIo,
    ) -> Result<Response, ServiceError> {
        // Authenticate: the caller the front end established (a run may carry
        // one of its own); its tenant is always the one the front end
        // authenticated (`meta.tenant`), whatever a request carries.
        let mut caller = match &request {
            Request::Run(r) | Request::Plan(r) => r.caller.clone(),
            _ => None,
        }
        .unwrap_or_else(|| Caller::from_meta(meta));
        caller.tenant.clone_from(&meta.tenant);
        let tool = request.tool();
        let args = request.normalized();
        // The call's audit line and a run's connection events share this id.
        let request_id = crate::new_id("req");
        // Everything below reaches the caller's tenant's state only.
        let result = self.for_tenant(&caller.tenant).and_then(|svc| {
            let (mut decided, quotas) = svc.decide_request(&caller, request)?;
            if let Decided::Run(p) = &mut decided
                && let Some(net) = &mut p.net
            {
                net.audit_id = Some(request_id.clone());
            }
            // The tenant's quota is reserved here, once the request is decided and
            // before anything of it runs; the reservation ends with the work.
            let svc = svc.lowered(&quotas);
            let held = svc.reserve(&mut decided)?;
            svc.execute(decided, io, held)
        });
        self.record(request_id, meta, &caller.tenant, tool, &args, &result);
        result
    }

    /// The quota step: what the decided request takes of the tenant's quotas.
    fn reserve(&self, decided: &mut Decided) -> Result<Held, ServiceError> {
        use crate::quota::{Need, RunQuota};
        let scope = self.scope();
        let need = match decided {
            Decided::Run(p) => {
                let p = &mut **p;
                return RunQuota::start(scope, &mut p.spec.limits, &mut p.notices).map(Held::Run);
            }
            Decided::Plan(_) => return Ok(Held::Nothing),
            // A build's setup commands run in the one slot it holds.
            Decided::Build(req, _, _) if req.setup.is_empty() => Need::Storage,
            Decided::Build(..) => Need::Run,
            Decided::Other(r) if r.writes() => Need::Storage,
            Decided::Other(_) => return Ok(Held::Nothing),
        };
        crate::quota::reserve(scope, &scope.quota(), need).map(Held::Reserved)
    }

    /// [`Service::call`] for a request that streams nothing: its output is in its
    /// result, progress is not reported.
    pub fn call_quiet(
        &self,
        meta: &RequestMeta,
        request: Request,
        cancel: &CancelToken,
    ) -> Result<Response, ServiceError> {
        self.call(
            meta,
            request,
            CallIo {
                sink: &mut NullSink,
                cancel,
                progress: &mut NoProgress,
            },
        )
    }

    /// Records a request a front end refused before it could become a
    /// [`Request`] (arguments that do not parse, a server that is busy): one
    /// audit line, `deny`, with the reason and the kind of refusal.
    pub fn record_refusal(&self, meta: &RequestMeta, args: &Value, reason: &str, kind: Value) {
        self.append(AuditEntry {
            request_id: crate::new_id("req"),
            front_end: meta.front_end.clone(),
            client: meta.client.clone(),
            tenant: meta.tenant.clone(),
            tool: meta.tool.clone(),
            args_digest: digest_args(args),
            decision: "deny".into(),
            reason: Some(reason.to_string()),
            result: kind,
        });
    }

    /// The policy's step: a refusal ends the request here.
    /// Also the decision's `quotas`, which lower the tenant's for this request.
    fn decide_request(
        &self,
        caller: &Caller,
        request: Request,
    ) -> Result<(Decided, crate::tenants::Quota), ServiceError> {
        let decided = match request {
            Request::Run(mut req) => {
                // The run counts against (and caches downloads for) this caller.
                req.caller = Some(caller.clone());
                // Decided once its profile is resolved, before anything of the run
                // touches the host; the decision's ceilings lower its limits.
                let sandbox = self.load_sandbox(&req)?;
                let mut decide = |p: &profile::Profile, lang: Option<&str>| {
                    self.enforce(&policy::run_input(caller, &req, p, lang))
                };
                let p = self.runner().prepare(&req, sandbox, Some(&mut decide))?;
                let quotas = p.decision.as_ref().map(|d| d.quotas).unwrap_or_default();
                return Ok((Decided::Run(Box::new(p)), quotas));
            }
            Request::Plan(mut req) => {
                req.caller = Some(caller.clone());
                let sandbox = self.load_sandbox(&req)?;
                let mut decide = |p: &profile::Profile, lang: Option<&str>| {
                    self.decide(&policy::run_input(caller, &req, p, lang))
                };
                let p = self.runner().prepare(&req, sandbox, Some(&mut decide))?;
                let decision = p.decision.ok_or_else(|| {
                    ServiceError::Internal("the run was not decided by the policy".into())
                })?;
                Decided::Plan(RunPlan {
                    dry_run: true,
                    allowed: decision.allowed,
                    decision,
                    profile: p.profile,
                    limits: (&p.spec.limits).into(),
                    argv: p.spec.argv,
                    sandbox_id: p.sandbox_id,
                    policy: self.policy_origin(),
                    notices: p.notices,
                    network_allow: p.net.map(|n| n.allow),
                })
            }
            Request::Build(req) => {
                let (profile, quotas) = self.decide_build(caller, &req)?;
                return Ok((Decided::Build(req, profile, false), quotas));
            }
            Request::SandboxCreate {
                name,
                profile,
                from_snapshot: None,
            } => {
                let req = BuildRequest {
                    profile,
                    name,
                    ..BuildRequest::default()
                };
                let (profile, quotas) = self.decide_build(caller, &req)?;
                return Ok((Decided::Build(req, profile, true), quotas));
            }
            other => {
                let input = policy::tool_input(other.tool(), caller, other.request_doc());
                let d = self.enforce(&input)?;
                return Ok((Decided::Other(other), d.quotas));
            }
        };
        Ok((decided, crate::tenants::Quota::default()))
    }

    /// A build is decided with the profile it would use.
    fn decide_build(
        &self,
        caller: &Caller,
        req: &BuildRequest,
    ) -> Result<(Box<profile::Profile>, crate::tenants::Quota), ServiceError> {
        let catalog = self.profiles(None);
        let profile =
            catalog.resolve(req.profile.as_deref().unwrap_or(profile::DEFAULT_PROFILE))?;
        let d = self.enforce(&policy::build_input(caller, req, &profile))?;
        // A profile the policy requires: the sandbox gets it, decided again.
        match d.profile.filter(|p| *p != profile.name) {
            None => Ok((Box::new(profile), d.quotas)),
            Some(forced) => {
                let profile = catalog.resolve(&forced)?;
                let d = self.enforce(&policy::build_input(caller, req, &profile))?;
                match d.profile.filter(|p| *p != profile.name) {
                    None => Ok((Box::new(profile), d.quotas)),
                    Some(other) => Err(ServiceError::Refused(format!(
                        "refused by policy: it requires profile {forced}, and then profile {other} for a sandbox with {forced}; make the policy's `profile` rule agree with itself"
                    ))),
                }
            }
        }
    }

    fn load_sandbox(&self, req: &RunRequest) -> Result<Option<SandboxInfo>, ServiceError> {
        req.sandbox_id
            .as_deref()
            .map(|id| sandbox::load(self.store(), id))
            .transpose()
    }

    /// The work of a decided request, on the layers below the gate.
    fn execute(&self, decided: Decided, io: CallIo, held: Held) -> Result<Response, ServiceError> {
        let CallIo {
            sink,
            cancel,
            progress,
        } = io;
        let r = match decided {
            Decided::Run(p) => {
                // A run in a persistent sandbox holds it, so that it is never
                // removed under the run (destroying it stops the run first).
                let hold = p
                    .sandbox_id
                    .as_deref()
                    .map(|id| sandbox::hold_for_run(self.store(), id))
                    .transpose()?;
                let r = self.runner().execute(*p, sink, cancel, hold)?;
                if let Held::Run(q) = held {
                    q.finish(self.scope(), &r);
                }
                Response::Run(r)
            }
            Decided::Plan(plan) => Response::Plan(plan),
            Decided::Build(req, profile, create) => {
                let b = sandbox::build(self.runner(), req, &profile, cancel)?;
                if create {
                    Response::SandboxCreate(sandbox::load(self.store(), &b.sandbox_id)?)
                } else {
                    Response::Build(b)
                }
            }
            Decided::Other(request) => match request {
                Request::Run(_) | Request::Plan(_) | Request::Build(_) => {
                    return Err(ServiceError::Internal(
                        "a run or build was not decided with its profile".into(),
                    ));
                }
                Request::SandboxCreate {
                    from_snapshot: None,
                    ..
                } => {
                    return Err(ServiceError::Internal(
                        "an empty sandbox was not decided as a build".into(),
                    ));
                }
                Request::SandboxCreate {
                    name,
                    profile,
                    from_snapshot: Some(from),
                } => Response::SandboxCreate(sandbox::create(
                    self.runner(),
                    name.as_deref(),
                    profile.as_deref(),
                    &from,
                )?),
                Request::ProfileList { project } => {
                    let catalog = self.profiles(project.as_deref());
                    Response::ProfileList {
                        note: catalog.project_problem.clone(),
                        list: ProfileList {
                            profiles: catalog.infos(),
                        },
                    }
                }
                Request::ProfileShow { name, project } => {
                    Response::ProfileShow(self.profile_show(&name, project.as_deref())?)
                }
                Request::ProfileDetect {
                    path,
                    code,
                    lang,
                    profile,
                    workdir,
                } => Response::ProfileDetect(self.profile_detect(
                    path.as_deref(),
                    code.as_deref(),
                    lang.as_deref(),
                    profile.as_deref(),
                    workdir.as_deref(),
                )?),
                Request::ProfileValidate { files, workdir } => {
                    Response::ProfileValidate(self.profile_validate(&files, workdir.as_deref()))
                }
                Request::SandboxList => Response::SandboxList(self.sandbox_list()),
                Request::SandboxDestroy { id } => {
                    Response::SandboxDestroy(self.sandbox_destroy(&id)?)
                }
                Request::FileRead { id, path } => Response::FileRead(self.file_read(&id, &path)?),
                Request::FileList {
                    id,
                    path,
                    recursive,
                } => Response::FileList(self.file_list(&id, &path, recursive)?),
                Request::FileWrite { id, path, content } => {
                    Response::FileWrite(self.file_write(&id, &path, content, cancel)?)
                }
                Request::FileDelete { id, path } => {
                    Response::FileDelete(self.file_delete(&id, &path, cancel)?)
                }
                Request::Copy {
                    src,
                    dst,
                    keep_links,
                } => Response::Copy(self.copy(&src, &dst, keep_links, cancel)?),
                Request::SnapshotCreate { name, source } => {
                    Response::SnapshotCreate(self.snapshot_create(&name, &source, progress)?)
                }
                Request::SnapshotRestore {
                    name,
                    target,
                    profile,
                } => Response::SnapshotRestore(self.snapshot_restore(
                    &name,
                    &target,
                    profile.as_deref(),
                    progress,
                )?),
                Request::SnapshotList { with_sharing } => {
                    Response::SnapshotList(self.snapshot_list(with_sharing)?)
                }
                Request::SnapshotDiff { from, to } => {
                    Response::SnapshotDiff(self.snapshot_diff(&from, &to)?)
                }
                Request::SnapshotDelete { name } => {
                    Response::SnapshotDelete(self.snapshot_remove(&name)?)
                }
                Request::SnapshotVerify => Response::SnapshotVerify(self.snapshot_verify()?),
                Request::Doctor => {
                    let (capped, detail) = crate::disk::describe();
                    let (works, net) = crate::network::probe();
                    Response::Doctor(DoctorReport {
                        jail: aisbx_jail::probe(),
                        sandbox_disk: SandboxDisk { capped, detail },
                        filtered_network: FilteredNetwork { works, detail: net },
                    })
                }
                Request::AuditTail { n } => {
                    let path = self.audit_log().path();
                    Response::AuditTail(audit::tail(path, n).map_err(|e| {
                        ServiceError::Internal(format!(
                            "cannot read the audit log {}: {e}",
                            path.display()
                        ))
                    })?)
                }
                Request::Quota => {
                    Response::Quota(crate::quota::report(self.scope(), &self.quota())?)
                }
                Request::AuditVerify => {
                    let path = self.audit_log().path();
                    Response::AuditVerify(audit::verify(path).map_err(|e| {
                        ServiceError::Internal(format!(
                            "cannot verify the audit log {}: {e}",
                            path.display()
                        ))
                    })?)
                }
            },
        };
        Ok(r)
    }

    /// The audit line of one call.
    fn record(
        &self,
        request_id: String,
        meta: &RequestMeta,
        tenant: &str,
        tool: &str,
        args: &Value,
        result: &Result<Response, ServiceError>,
    ) {
        let (decision, reason, summary) = match result {
            Ok(r) => ("allow", None, r.audit_summary()),
            Err(
                e @ (ServiceError::InvalidArgument { .. }
                | ServiceError::Refused(_)
                | ServiceError::NoSuchSandbox(_)),
            ) => ("deny", Some(e.to_string()), Value::Null),
            Err(e) => ("error", Some(e.to_string()), Value::Null),
        };
        self.append(AuditEntry {
            request_id,
            front_end: meta.front_end.clone(),
            client: meta.client.clone(),
            tenant: tenant.to_string(),
            tool: tool.to_string(),
            args_digest: digest_args(args),
            decision: decision.to_string(),
            reason,
            result: summary,
        });
    }

    fn append(&self, entry: AuditEntry) {
        if let Err(e) = self.audit_log().append(entry) {
            eprintln!("aisbx: warning: could not append to the audit log: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(front_end: &str) -> RequestMeta {
        RequestMeta {
            front_end: front_end.into(),
            client: Some("tester".into()),
            tool: "ignored: the gate names the tool".into(),
            tenant: "default".into(),
        }
    }

    fn service(home: &std::path::Path, policy: Option<&std::path::Path>) -> Service {
        Service::open(crate::ServiceConfig {
            home: Some(home.to_path_buf()),
            policy: policy.map(std::path::Path::to_path_buf),
        })
        .expect("service")
    }

    fn audit_lines(home: &std::path::Path) -> Vec<Value> {
        audit::tail(&home.join("audit.jsonl"), 1000).expect("audit log")
    }

    /// One request of every kind, for the checks on names.
    fn every_request() -> Vec<Request> {
        let run = RunRequest::new(crate::Program::Command(vec!["true".into()]));
        let sb = |id: &str| CopyEnd::Sandbox {
            id: id.into(),
            path: "f".into(),
        };
        vec![
            Request::Run(run.clone()),
            Request::Plan(run),
            Request::Build(BuildRequest::default()),
            Request::ProfileList { project: None },
            Request::ProfileShow {
                name: "base".into(),
                project: None,
            },
            Request::ProfileDetect {
                path: None,
                code: Some("print(1)".into()),
                lang: None,
                profile: None,
                workdir: None,
            },
            Request::ProfileValidate {
                files: Vec::new(),
                workdir: None,
            },
            Request::SandboxCreate {
                name: None,
                profile: None,
                from_snapshot: None,
            },
            Request::SandboxCreate {
                name: None,
                profile: None,
                from_snapshot: Some("s".into()),
            },
            Request::SandboxList,
            Request::SandboxDestroy { id: "b".into() },
            Request::FileRead {
                id: "b".into(),
                path: "f".into(),
            },
            Request::FileList {
                id: "b".into(),
                path: String::new(),
                recursive: true,
            },
            Request::FileWrite {
                id: "b".into(),
                path: "f".into(),
                content: b"x".to_vec(),
            },
            Request::FileDelete {
                id: "b".into(),
                path: "f".into(),
            },
            Request::Copy {
                src: CopyEnd::Host("/h".into()),
                dst: sb("b"),
                keep_links: false,
            },
            Request::Copy {
                src: sb("b"),
                dst: CopyEnd::Host("/h".into()),
                keep_links: false,
            },
            Request::SnapshotCreate {
                name: "s".into(),
                source: SnapSource::Sandbox("b".into()),
            },
            Request::SnapshotRestore {
                name: "s".into(),
                target: RestoreTarget::Sandbox("c".into()),
                profile: None,
            },
            Request::SnapshotList {
                with_sharing: false,
            },
            Request::SnapshotDiff {
                from: "s".into(),
                to: "t".into(),
            },
            Request::SnapshotDelete { name: "s".into() },
            Request::SnapshotVerify,
            Request::Doctor,
            Request::AuditTail { n: 1 },
            Request::AuditVerify,
            Request::Quota,
        ]
    }

    /// Every tool's input document conforms to the published schema.
    #[test]
    fn every_tools_input_conforms_to_the_published_schema() {
        let caller = Caller {
            tenant: "default".into(),
            transport: crate::Transport::Cli,
            client: None,
        };
        for r in every_request() {
            if matches!(r, Request::Run(_) | Request::Plan(_) | Request::Build(_)) {
                continue;
            }
            let doc = policy::tool_input(r.tool(), &caller, r.request_doc());
            if let Err(e) = policy::input::testing::check(&doc) {
                panic!("{}: {e}\n{doc:#}", r.tool());
            }
        }
    }

    #[test]
    fn every_tool_has_a_documented_name() {
        let names: std::collections::BTreeSet<&str> =
            every_request().iter().map(Request::tool).collect();
        let listed: std::collections::BTreeSet<&str> = TOOLS.iter().copied().collect();
        assert_eq!(names, listed, "Request::tool and TOOLS differ");
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/POLICY.md"),
        )
        .expect("docs/POLICY.md");
        for t in TOOLS {
            assert!(
                doc.contains(&format!("| `{t}` |")),
                "docs/POLICY.md lacks a row for {t}"
            );
        }
    }

    #[test]
    fn the_default_policy_lets_every_tool_through_and_each_call_is_one_audit_line() {
        let t = tempfile::tempdir().expect("tempdir");
        let svc = service(t.path(), None);
        let cancel = CancelToken::default();
        let r = svc.call_quiet(&meta("cli"), Request::SandboxList, &cancel);
        assert!(
            matches!(r, Ok(Response::SandboxList(ref l)) if l.sandboxes.is_empty()),
            "{r:?}"
        );
        let r = svc.call_quiet(&meta("cli"), Request::AuditVerify, &cancel);
        assert!(
            matches!(r, Ok(Response::AuditVerify(ref v)) if v.problem.is_none()),
            "{r:?}"
        );
        // A request the policy allows and that then fails is audited as such.
        let r = svc.call_quiet(
            &meta("mcp-stdio"),
            Request::SandboxDestroy { id: "nope".into() },
            &cancel,
        );
        assert!(matches!(r, Err(ServiceError::NoSuchSandbox(_))), "{r:?}");
        let lines = audit_lines(t.path());
        let tools: Vec<&str> = lines.iter().filter_map(|l| l["tool"].as_str()).collect();
        assert_eq!(
            tools,
            ["sandbox_list", "audit_verify", "sandbox_destroy"],
            "{lines:?}"
        );
        assert_eq!(lines[0]["decision"], "allow");
        assert_eq!(lines[0]["result"], json!({"sandboxes": 0}));
        assert_eq!(lines[2]["decision"], "deny");
        assert_eq!(lines[2]["front_end"], "mcp-stdio");
    }

    #[test]
    fn a_deny_rule_refuses_any_tool_before_it_touches_anything_and_is_audited() {
        let t = tempfile::tempdir().expect("tempdir");
        let home = t.path().join("home");
        let pol = t.path().join("policy");
        std::fs::create_dir_all(&pol).expect("mkdir");
        std::fs::write(
            pol.join("p.rego"),
            "package aisbx\n\ndefault allow := true\n\nrefused := {\"sandbox_list\", \"file_write\", \"snapshot_restore\", \"doctor\"}\n\ndeny contains sprintf(\"%s is not for %s\", [input.tool, input.caller.transport]) if refused[input.tool]\n",
        )
        .expect("policy");
        let svc = service(&home, Some(&pol));
        let cancel = CancelToken::default();
        let denied = [
            (Request::SandboxList, "sandbox_list is not for stdio"),
            (
                // The sandbox does not exist: the policy answers first.
                Request::FileWrite {
                    id: "nope".into(),
                    path: "f".into(),
                    content: b"x".to_vec(),
                },
                "file_write is not for stdio",
            ),
            (
                Request::SnapshotRestore {
                    name: "s".into(),
                    target: RestoreTarget::Sandbox("c".into()),
                    profile: None,
                },
                "snapshot_restore is not for stdio",
            ),
            (
                // `aisbx create --from` is a restore too.
                Request::SandboxCreate {
                    name: Some("c".into()),
                    profile: None,
                    from_snapshot: Some("s".into()),
                },
                "snapshot_restore is not for stdio",
            ),
            (Request::Doctor, "doctor is not for stdio"),
        ];
        for (req, why) in denied {
            let tool = req.tool();
            match svc.call_quiet(&meta("mcp-stdio"), req, &cancel) {
                Err(ServiceError::Refused(m)) => assert!(m.contains(why), "{tool}: {m}"),
                other => panic!("{tool}: {other:?}"),
            }
            let last = audit_lines(&home).pop().expect("a line");
            assert_eq!(last["tool"], tool);
            assert_eq!(last["decision"], "deny");
            assert!(
                last["reason"].as_str().unwrap_or_default().contains(why),
                "{last}"
            );
        }
        // Nothing was made, and what the policy does not name still works.
        assert!(!home.join("sandboxes/c").exists());
        let r = svc.call_quiet(
            &meta("mcp-stdio"),
            Request::SnapshotList {
                with_sharing: false,
            },
            &cancel,
        );
        assert!(matches!(r, Ok(Response::SnapshotList(_))), "{r:?}");
    }

    #[test]
    fn the_gate_answers_from_the_tenant_of_the_meta_and_its_lowered_quotas() {
        let t = tempfile::tempdir().expect("tempdir");
        let home = t.path().join("home");
        let pol = t.path().join("policy");
        std::fs::create_dir_all(&pol).expect("mkdir");
        std::fs::write(
            pol.join("p.rego"),
            "package aisbx\n\ndefault allow := true\n\nquotas := {\"concurrent_runs\": 1} if input.caller.tenant == \"acme\"\n",
        )
        .expect("policy");
        std::fs::create_dir_all(&home).expect("home");
        crate::tenants::add(&home, "acme").expect("tenant");
        crate::tenants::set_quota(&home, "acme", |q| q.concurrent_runs = Some(3)).expect("quota");
        let svc = service(&home, Some(&pol));
        let cancel = CancelToken::default();
        let acme = RequestMeta {
            tenant: "acme".into(),
            ..meta("mcp-http")
        };
        let r = svc.call_quiet(&acme, Request::Quota, &cancel);
        let Ok(Response::Quota(q)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(q.tenant, "acme");
        let runs = q.quotas.iter().find(|u| u.quota == "concurrent_runs");
        assert_eq!(runs.and_then(|u| u.limit), Some(1), "{q:?}");
        // A request that names another tenant as its caller stays in the meta's.
        let mut run = RunRequest::new(crate::Program::Command(vec!["true".into()]));
        run.caller = Some(Caller {
            tenant: "default".into(),
            transport: crate::Transport::Http,
            client: None,
        });
        let r = svc.call_quiet(&acme, Request::Plan(run), &cancel);
        assert!(matches!(r, Ok(Response::Plan(_))), "{r:?}");
        let lines = audit_lines(&home);
        let tenants: Vec<&str> = lines.iter().filter_map(|l| l["tenant"].as_str()).collect();
        assert_eq!(tenants, ["acme", "acme"], "{lines:?}");
        // Its state is its own, beside the default tenant's.
        let root = home.join("tenants").join(crate::tenants::dir_name("acme"));
        assert!(root.join("quota").is_dir(), "{}", root.display());
        assert!(!home.join("quota").exists());
    }

    #[test]
    fn a_policy_that_does_not_load_refuses_every_tool_and_says_why() {
        let t = tempfile::tempdir().expect("tempdir");
        let home = t.path().join("home");
        let pol = t.path().join("policy");
        std::fs::create_dir_all(&pol).expect("mkdir");
        std::fs::write(pol.join("p.rego"), "package aisbx\n\nallow := {{\n").expect("policy");
        let svc = service(&home, Some(&pol));
        for req in [Request::SandboxList, Request::Doctor, Request::AuditVerify] {
            let tool = req.tool();
            match svc.call_quiet(&meta("cli"), req, &CancelToken::default()) {
                Err(ServiceError::Refused(m)) => {
                    assert!(m.contains("the policy cannot be loaded"), "{tool}: {m}")
                }
                other => panic!("{tool}: {other:?}"),
            }
        }
        let lines = audit_lines(&home);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines.iter().all(|l| l["decision"] == "deny"), "{lines:?}");
    }
}
