//! The service's operations on persistent sandboxes and snapshots, which the gate
//! (`gate.rs`) carries out for `aisbx create | ls | rm | cp | snap ...` and the MCP
//! `sandbox_*`, `file_*` and `snapshot_*` tools after deciding them; the gate
//! records each one in the audit log.

use serde::{Deserialize, Serialize};

use crate::sandbox::{self, CopyResult, FileContent, FileList, FileWriteResult, SandboxInfo};
use crate::snapshot::{
    self, Progress, RestoreResult, RestoreTarget, SnapSource, SnapshotDiff, SnapshotInfo,
    VerifyReport,
};
use crate::{CancelToken, Service, ServiceError};

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum CopyEnd {
    Host(std::path::PathBuf),
    Sandbox { id: String, path: String },
}

impl Service {
    pub(crate) fn sandbox_list(&self) -> SandboxList {
        SandboxList {
            sandboxes: sandbox::list_sandboxes(self.store()),
        }
    }

    pub(crate) fn sandbox_destroy(&self, id: &str) -> Result<SandboxDestroyed, ServiceError> {
        sandbox::remove_sandbox(self.store(), id).map(|()| SandboxDestroyed {
            sandbox_id: id.to_string(),
            destroyed: true,
        })
    }

    pub(crate) fn file_read(&self, id: &str, path: &str) -> Result<FileContent, ServiceError> {
        sandbox::file_read(self.runner(), id, path)
    }

    pub(crate) fn file_list(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<FileList, ServiceError> {
        sandbox::file_list(self.runner(), id, path, recursive)
    }

    pub(crate) fn file_write(
        &self,
        id: &str,
        path: &str,
        content: Vec<u8>,
        cancel: &CancelToken,
    ) -> Result<FileWriteResult, ServiceError> {
        sandbox::file_write(self.runner(), id, path, content, cancel)
    }

    /// Delete a file, symlink or directory tree of a sandbox (MCP `file_delete`).
    pub(crate) fn file_delete(
        &self,
        id: &str,
        path: &str,
        cancel: &CancelToken,
    ) -> Result<crate::sandbox::FileDeleteResult, ServiceError> {
        sandbox::file_delete(self.runner(), id, path, cancel)
    }

    /// `aisbx cp`: host → sandbox (through a sandbox run) or sandbox → host
    /// (fd-relative reads that never follow a sandbox symlink). Out of a sandbox,
    /// a symlink pointing outside the copied tree is left out (with a warning in
    /// the result) unless `keep_links`.
    pub(crate) fn copy(
        &self,
        src: &CopyEnd,
        dst: &CopyEnd,
        keep_links: bool,
        cancel: &CancelToken,
    ) -> Result<CopyResult, ServiceError> {
        let perimeter = self.perimeter();
        match (src, dst) {
            (CopyEnd::Host(s), CopyEnd::Sandbox { id, path }) => self
                .check_host_path("source", s, &perimeter)
                .and_then(|s| sandbox::copy_in(self.runner(), &s, id, path, cancel)),
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
                    .and_then(|d| sandbox::copy_out(self.runner(), id, path, &d, keep_links))
            }
            _ => Err(ServiceError::invalid(
                "destination",
                "exactly one side of a copy must be a sandbox (NAME:path)",
            )),
        }
    }

    pub(crate) fn snapshot_create(
        &self,
        name: &str,
        source: &SnapSource,
        progress: &mut dyn Progress,
    ) -> Result<SnapshotInfo, ServiceError> {
        match source {
            SnapSource::Workdir(dir) => self
                .check_host_path("workdir", dir, &self.perimeter())
                .and_then(|d| {
                    snapshot::create(
                        self.store(),
                        self.sandbox_owner(),
                        name,
                        &SnapSource::Workdir(d),
                        progress,
                    )
                }),
            SnapSource::Sandbox(_) => {
                snapshot::create(self.store(), self.sandbox_owner(), name, source, progress)
            }
        }
    }

    pub(crate) fn snapshot_restore(
        &self,
        name: &str,
        target: &RestoreTarget,
        profile: Option<&str>,
        progress: &mut dyn Progress,
    ) -> Result<RestoreResult, ServiceError> {
        match target {
            // A directory holds files and runs nothing: a profile would be ignored.
            RestoreTarget::Workdir(_) if profile.is_some() => Err(ServiceError::invalid(
                "profile",
                "a restore into a directory (--workdir) runs nothing, so a profile has no use there: drop --profile, or restore into a new sandbox (--sandbox NAME), whose runs use it",
            )),
            RestoreTarget::Workdir(dir) => self
                .check_host_path("workdir", dir, &self.perimeter())
                .and_then(|d| snapshot::restore_to_dir(self.store(), name, &d, progress)),
            RestoreTarget::Sandbox(id) => {
                let start = std::time::Instant::now();
                sandbox::create(self.runner(), Some(id), profile, name).and_then(|sb| {
                    let info = snapshot::list(self.store(), false)?
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
        }
    }

    pub(crate) fn snapshot_list(&self, with_sharing: bool) -> Result<SnapshotList, ServiceError> {
        snapshot::list(self.store(), with_sharing).map(|snapshots| SnapshotList { snapshots })
    }

    pub(crate) fn snapshot_diff(&self, from: &str, to: &str) -> Result<SnapshotDiff, ServiceError> {
        snapshot::diff(self.store(), from, to)
    }

    pub(crate) fn snapshot_remove(&self, name: &str) -> Result<SnapshotRemoved, ServiceError> {
        snapshot::remove(self.store(), name).map(|r| SnapshotRemoved {
            name: name.to_string(),
            freed_objects: r.collected.freed_objects,
            freed_bytes: r.collected.freed_bytes,
            was_damaged: r.was_damaged,
            kept: r.collected.kept,
        })
    }

    pub(crate) fn snapshot_verify(&self) -> Result<VerifyReport, ServiceError> {
        snapshot::verify(self.store())
    }
}
