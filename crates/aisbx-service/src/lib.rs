//! The aisbx service: the one API that the CLI (`aisbx`) and the MCP server
//! (`aisbx-mcp`) both call. It turns a request into a jail specification (profile,
//! runtime, binds, limits, environment), runs it, and records it in the audit log.
//! Front ends only map arguments and format results.

pub mod api;
pub mod audit;
pub mod disk;
mod error;
mod helper;
pub mod hostpath;
pub mod policy;
pub mod profile;
pub mod quota;
pub mod runtime;
mod sandbox;
mod service;
pub mod snapshot;
mod snapshot_api;
pub mod snapshot_fs;
mod tenant_scope;
pub mod tenants;

pub use api::*;
pub use error::ServiceError;
pub use helper::maybe_run_helper;
pub use sandbox::{
    CopyResult, FileContent, FileDeleteResult, FileEntry, FileList, FileWriteResult, SandboxInfo,
    list_sandboxes, remove_sandbox,
};
pub use service::{Service, ServiceConfig, default_home, new_id};
pub use snapshot::{
    NoProgress, Progress, RestoreResult, RestoreTarget, SnapSource, SnapshotDiff, SnapshotInfo,
    VerifyReport,
};
pub use snapshot_api::{CopyEnd, SandboxDestroyed, SandboxList, SnapshotList, SnapshotRemoved};
