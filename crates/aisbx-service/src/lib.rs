//! The aisbx service: the one API that the CLI (`aisbx`) and the MCP server
//! (`aisbx-mcp`) both call, through one gate ([`Service::call`], `gate.rs`) that
//! decides every request with the policy, carries it out and records it in the
//! audit log. Front ends build a [`Request`] and format its [`Response`]; the
//! operations behind the gate are private to this crate.

pub mod api;
pub mod audit;
pub(crate) mod disk;
mod error;
mod gate;
mod helper;
pub mod hostpath;
pub mod network;
pub mod policy;
pub mod profile;
mod profile_api;
pub mod quota;
mod runner;
pub mod runtime;
mod sandbox;
mod service;
pub mod snapshot;
mod snapshot_api;
pub(crate) mod snapshot_fs;
mod tenant_scope;
pub mod tenants;

/// The host's sandboxing layers, as `aisbx doctor` reports them.
pub mod doctor {
    pub use aisbx_jail::{Layer, LayerState, Report};
}

pub use api::*;
pub use error::ServiceError;
pub use gate::{CallIo, DoctorReport, FilteredNetwork, Request, Response, SandboxDisk, TOOLS};
pub use helper::maybe_run_helper;
pub use profile_api::{ProfileDetected, ProfileShown, ValidatedFile};
pub use sandbox::{
    CopyResult, FileContent, FileDeleteResult, FileEntry, FileList, FileWriteResult, SandboxInfo,
};
pub use service::{Service, ServiceConfig, default_home};
pub use snapshot::{
    NoProgress, Progress, RestoreResult, RestoreTarget, SnapSource, SnapshotDiff, SnapshotInfo,
    VerifyReport,
};
pub use snapshot_api::{CopyEnd, SandboxDestroyed, SandboxList, SnapshotList, SnapshotRemoved};
/// What a sandbox path is (`file_list`, `file_delete`).
pub use snapshot_fs::Kind as FileKind;
