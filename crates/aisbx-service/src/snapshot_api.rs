//! The service calls for persistent sandboxes and snapshots: what `aisbx create |
//! ls | rm | cp | snap ...` and the MCP `sandbox_*`, `file_*` and `snapshot_*` tools
//! call. Each one is recorded in the audit log, like `run` and `build`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::sandbox::{self, CopyResult, FileContent, FileList, FileWriteResult, SandboxInfo};
use crate::snapshot::{
    self, Progress, RestoreResult, RestoreTarget, SnapSource, SnapshotDiff, SnapshotInfo,
    VerifyReport,
};
use crate::{Caller, CancelToken, RequestMeta, Service, ServiceError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SandboxDestroyed {
    pub sandbox_id: String,
    pub destroyed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SnapshotList {
    pub snapshots: Vec<SnapshotInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SnapshotRemoved {
    pub name: String,
    /// Objects no other snapshot used, now deleted.
    pub freed_objects: u64,
    pub freed_bytes: u64,
    /// Set when the snapshot removed was damaged: why it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub was_damaged: Option<String>,
    /// Set when data that may be unused was kept: why (another snapshot is
    /// damaged, so what it uses is unknown). Not an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
}

/// Where `cp` copies from or to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CopyEnd {
    Host(std::path::PathBuf),
    Sandbox { id: String, path: String },
}

impl Service {
    /// Create a persistent sandbox: empty, or copy-on-write over a snapshot.
    pub fn sandbox_create(
        &self,
        meta: &RequestMeta,
        name: Option<&str>,
        profile: Option<&str>,
        from_snapshot: Option<&str>,
    ) -> Result<SandboxInfo, ServiceError> {
        let args = serde_json::json!({"name": name, "profile": profile, "from": from_snapshot});
        let r = self.writer(meta).and_then(|svc| {
            sandbox::create(&svc, name, profile, from_snapshot, &Caller::from_meta(meta))
        });
        self.record(meta, &args, &r);
        r
    }

    pub fn sandbox_list(&self, meta: &RequestMeta) -> Result<SandboxList, ServiceError> {
        let r = self.for_meta(meta).map(|svc| SandboxList {
            sandboxes: sandbox::list_sandboxes(&svc),
        });
        self.record(meta, &serde_json::json!({}), &r);
        r
    }

    pub fn sandbox_destroy(
        &self,
        meta: &RequestMeta,
        id: &str,
    ) -> Result<SandboxDestroyed, ServiceError> {
        let r = self
            .for_meta(meta)
            .and_then(|svc| sandbox::remove_sandbox(&svc, id))
            .map(|()| SandboxDestroyed {
                sandbox_id: id.to_string(),
                destroyed: true,
            });
        self.record(meta, &serde_json::json!({"sandbox_id": id}), &r);
        r
    }

    pub fn file_read(
        &self,
        meta: &RequestMeta,
        id: &str,
        path: &str,
    ) -> Result<FileContent, ServiceError> {
        let r = self
            .for_meta(meta)
            .and_then(|svc| sandbox::file_read(&svc, id, path));
        let summary = match &r {
            Ok(c) => {
                Ok(serde_json::json!({"path": c.path, "size": c.size, "truncated": c.truncated}))
            }
            Err(e) => Err(clone_err(e)),
        };
        self.record(
            meta,
            &serde_json::json!({"sandbox_id": id, "path": path}),
            &summary,
        );
        r
    }

    pub fn file_list(
        &self,
        meta: &RequestMeta,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<FileList, ServiceError> {
        let r = self
            .for_meta(meta)
            .and_then(|svc| sandbox::file_list(&svc, id, path, recursive));
        let summary = match &r {
            Ok(l) => Ok(serde_json::json!({"entries": l.entries.len(), "truncated": l.truncated})),
            Err(e) => Err(clone_err(e)),
        };
        self.record(
            meta,
            &serde_json::json!({"sandbox_id": id, "path": path, "recursive": recursive}),
            &summary,
        );
        r
    }

    pub fn file_write(
        &self,
        meta: &RequestMeta,
        id: &str,
        path: &str,
        content: Vec<u8>,
        cancel: &CancelToken,
    ) -> Result<FileWriteResult, ServiceError> {
        let args = serde_json::json!({"sandbox_id": id, "path": path, "bytes": content.len()});
        let r = self
            .writer(meta)
            .and_then(|svc| sandbox::file_write(&svc, id, path, content, cancel));
        self.record(meta, &args, &r);
        r
    }

    /// Delete a file, symlink or directory tree of a sandbox (MCP `file_delete`).
    pub fn file_delete(
        &self,
        meta: &RequestMeta,
        id: &str,
        path: &str,
        cancel: &CancelToken,
    ) -> Result<crate::sandbox::FileDeleteResult, ServiceError> {
        let r = self
            .for_meta(meta)
            .and_then(|svc| sandbox::file_delete(&svc, id, path, cancel));
        self.record(
            meta,
            &serde_json::json!({"sandbox_id": id, "path": path}),
            &r,
        );
        r
    }

    /// `aisbx cp`: host → sandbox (through a sandbox run) or sandbox → host
    /// (fd-relative reads that never follow a sandbox symlink). Out of a sandbox,
    /// a symlink pointing outside the copied tree is left out (with a warning in
    /// the result) unless `keep_links`.
    pub fn copy(
        &self,
        meta: &RequestMeta,
        src: &CopyEnd,
        dst: &CopyEnd,
        keep_links: bool,
        cancel: &CancelToken,
    ) -> Result<CopyResult, ServiceError> {
        let args = serde_json::json!({"src": src, "dst": dst, "keep_links": keep_links});
        let perimeter = self.perimeter();
        let to_sandbox = matches!(dst, CopyEnd::Sandbox { .. });
        let svc = if to_sandbox {
            self.writer(meta)
        } else {
            self.for_meta(meta)
        };
        let r = svc.and_then(|svc| match (src, dst) {
            (CopyEnd::Host(s), CopyEnd::Sandbox { id, path }) => self
                .check_host_path("source", s, &perimeter)
                .and_then(|s| sandbox::copy_in(&svc, &s, id, path, cancel)),
            (CopyEnd::Sandbox { id, path }, CopyEnd::Host(d)) => {
                // What is written: into an existing directory, under the copied
                // entry's name; else the destination itself.
                let target = if d.is_dir() {
                    let name = path
                        .trim_end_matches('/')
                        .rsplit('/')
                        .next()
                        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
                        .unwrap_or(id);
                    d.join(name)
                } else {
                    d.clone()
                };
                self.check_host_path("destination", &target, &perimeter)
                    .and_then(|checked| {
                        if d.is_dir() {
                            crate::hostpath::canonical(d).map_err(|e| {
                                ServiceError::invalid(
                                    "destination",
                                    format!("{}: {e}", d.display()),
                                )
                            })
                        } else {
                            Ok(checked)
                        }
                    })
                    .and_then(|d| sandbox::copy_out(&svc, id, path, &d, keep_links))
            }
            _ => Err(ServiceError::invalid(
                "destination",
                "exactly one side of a copy must be a sandbox (NAME:path)",
            )),
        });
        self.record(meta, &args, &r);
        r
    }

    pub fn snapshot_create(
        &self,
        meta: &RequestMeta,
        name: &str,
        source: &SnapSource,
        progress: &mut dyn Progress,
    ) -> Result<SnapshotInfo, ServiceError> {
        let args = serde_json::json!({"name": name, "source": source});
        let r = self.writer(meta).and_then(|svc| match source {
            SnapSource::Workdir(dir) => self
                .check_host_path("workdir", dir, &self.perimeter())
                .and_then(|d| snapshot::create(&svc, name, &SnapSource::Workdir(d), progress)),
            SnapSource::Sandbox(_) => snapshot::create(&svc, name, source, progress),
        });
        self.record(meta, &args, &r);
        r
    }

    pub fn snapshot_restore(
        &self,
        meta: &RequestMeta,
        name: &str,
        target: &RestoreTarget,
        profile: Option<&str>,
        progress: &mut dyn Progress,
    ) -> Result<RestoreResult, ServiceError> {
        let args = serde_json::json!({"name": name, "target": target, "profile": profile});
        let r = self.writer(meta).and_then(|svc| match target {
            // A directory holds files and runs nothing: a profile would be ignored.
            RestoreTarget::Workdir(_) if profile.is_some() => Err(ServiceError::invalid(
                "profile",
                "a restore into a directory (--workdir) runs nothing, so a profile has no use there: drop --profile, or restore into a new sandbox (--sandbox NAME), whose runs use it",
            )),
            RestoreTarget::Workdir(dir) => self
                .check_host_path("workdir", dir, &self.perimeter())
                .and_then(|d| snapshot::restore_to_dir(&svc, name, &d, progress)),
            RestoreTarget::Sandbox(id) => {
                let start = std::time::Instant::now();
                sandbox::create(
                    &svc,
                    Some(id),
                    profile,
                    Some(name),
                    &Caller::from_meta(meta),
                )
                .and_then(|sb| {
                    let info = snapshot::list(&svc, false)?
                        .into_iter()
                        .find(|s| s.name == name);
                    Ok(RestoreResult {
                        snapshot: name.to_string(),
                        sandbox_id: Some(sb.id),
                        workdir: None,
                        files: info.as_ref().map(|i| i.files).unwrap_or(0),
                        bytes: info.as_ref().map(|i| i.bytes).unwrap_or(0),
                        duration_ms: start.elapsed().as_millis() as u64,
                    })
                })
            }
        });
        self.record(meta, &args, &r);
        r
    }

    pub fn snapshot_list(
        &self,
        meta: &RequestMeta,
        with_sharing: bool,
    ) -> Result<SnapshotList, ServiceError> {
        let r = self
            .for_meta(meta)
            .and_then(|svc| snapshot::list(&svc, with_sharing))
            .map(|snapshots| SnapshotList { snapshots });
        let summary = match &r {
            Ok(l) => Ok(serde_json::json!({"snapshots": l.snapshots.len()})),
            Err(e) => Err(clone_err(e)),
        };
        self.record(meta, &serde_json::json!({}), &summary);
        r
    }

    pub fn snapshot_diff(
        &self,
        meta: &RequestMeta,
        from: &str,
        to: &str,
    ) -> Result<SnapshotDiff, ServiceError> {
        let r = self
            .for_meta(meta)
            .and_then(|svc| snapshot::diff(&svc, from, to));
        let summary = match &r {
            Ok(d) => Ok(serde_json::json!({
                "added": d.added.len(), "removed": d.removed.len(), "changed": d.changed.len()
            })),
            Err(e) => Err(clone_err(e)),
        };
        self.record(meta, &serde_json::json!({"from": from, "to": to}), &summary);
        r
    }

    pub fn snapshot_remove(
        &self,
        meta: &RequestMeta,
        name: &str,
    ) -> Result<SnapshotRemoved, ServiceError> {
        let r = self
            .for_meta(meta)
            .and_then(|svc| snapshot::remove(&svc, name))
            .map(|r| SnapshotRemoved {
                name: name.to_string(),
                freed_objects: r.collected.freed_objects,
                freed_bytes: r.collected.freed_bytes,
                was_damaged: r.was_damaged,
                kept: r.collected.kept,
            });
        self.record(meta, &serde_json::json!({"name": name}), &r);
        r
    }

    pub fn snapshot_verify(&self, meta: &RequestMeta) -> Result<VerifyReport, ServiceError> {
        let r = self.for_meta(meta).and_then(|svc| snapshot::verify(&svc));
        self.record(meta, &serde_json::json!({}), &r);
        r
    }

    /// The caller's view for a request that writes to its tenant's storage: its
    /// storage quota checked (the policy's `quotas` applied) before anything is
    /// written.
    fn writer(&self, meta: &RequestMeta) -> Result<Service, ServiceError> {
        let svc = self.for_meta(meta)?.with_policy_quotas(meta)?;
        crate::quota::reserve(&svc, &svc.quota(), crate::quota::Need::Storage)?;
        Ok(svc)
    }

    /// The home of the store, for front ends that print where things are.
    pub fn snapshots_dir(&self) -> std::path::PathBuf {
        Path::new(self.store()).join("snapshots")
    }
}

/// The audit record of a failed call keeps its class and message.
fn clone_err(e: &ServiceError) -> ServiceError {
    match e {
        ServiceError::InvalidArgument { field, message } => ServiceError::InvalidArgument {
            field: field.clone(),
            message: message.clone(),
        },
        ServiceError::Refused(m) => ServiceError::Refused(m.clone()),
        ServiceError::NotFound(m) => ServiceError::NotFound(m.clone()),
        ServiceError::NoSuchSandbox(m) => ServiceError::NoSuchSandbox(m.clone()),
        ServiceError::Internal(m) => ServiceError::Internal(m.clone()),
    }
}
