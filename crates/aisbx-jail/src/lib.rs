//! The aisbx jail: the security boundary of one sandboxed run.
//!
//! This crate is deliberately small and synchronous. Given a [`Spec`] it:
//! 1. creates cgroups for the run (v1 or v2, detected at run time) on the host side;
//! 2. clones an init process into new user, mount, pid, net, ipc, uts and cgroup
//!    namespaces, maps the sandbox uid to an unprivileged host uid, and places it
//!    in the cgroups;
//! 3. in that init: builds a fresh root on a tmpfs (read-only binds of the runtime,
//!    synthesized `/etc` files, fresh `/proc`, minimal `/dev`, capped `/tmp` and
//!    `/workspace`), pivots into it, detaches the host root, and forks the program;
//! 4. in the program's process: rlimits, all capabilities dropped, Landlock,
//!    `no_new_privs` and seccomp, then `execve`;
//! 5. supervises: streams and caps output, enforces the wall-clock limit, kills the
//!    whole tree (the pid namespace dies with its init), reads OOM and usage counters,
//!    and removes the cgroups.
//!
//! It holds no business logic: which binds, limits and environment a run gets is the
//! service's decision. [`run`] must be called from a single-threaded process (the
//! service re-executes itself as a helper when it is multi-threaded).

mod cgroup;
mod child;
mod doctor;
mod groups;
mod lsm;
mod mounts;
mod relay;
mod seccomp;
mod supervisor;
mod sys;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use cgroup::reap_stale;
pub use doctor::{Layer, LayerState, Report, probe};
pub use mounts::check_relative;
pub use relay::{DNS_SOCKET, PROXY_SOCKET};
pub use supervisor::run;

/// The uid and gid the sandboxed program has inside its user namespace.
pub const SANDBOX_ID: u32 = 1000;

/// When aisbx runs as root, the host uid/gid the sandbox maps to (an unprivileged
/// id that no account uses), unless the workspace belongs to another non-root user.
pub const DEFAULT_HOST_ID: u32 = 0x7000_0000;

/// Where code and scripts given to a run are placed inside the sandbox (read-only).
pub const CODE_DIR: &str = "/run/aisbx";

/// Everything the jail needs to know about one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// argv; `argv[0]` is a path inside the sandbox or a name looked up on `PATH`.
    pub argv: Vec<String>,
    /// The complete environment of the program.
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd: String,
    /// Host paths bound read-only at the same path inside (missing ones are skipped).
    pub ro_binds: Vec<PathBuf>,
    /// Host directories bound read-write at the same path inside (they must exist).
    /// As for a `Bind` workspace, what the sandbox creates there belongs to the
    /// directory's owner on the host.
    #[serde(default)]
    pub rw_binds: Vec<PathBuf>,
    /// Files written under `/etc` (name, content), e.g. a synthesized `passwd`.
    pub etc_files: Vec<(String, Vec<u8>)>,
    /// Files written under [`CODE_DIR`] (name, content), read-only for the program.
    pub code_files: Vec<(String, Vec<u8>)>,
    pub workspace: Workspace,
    /// Files written into `/workspace` before the program starts (relative paths).
    pub workspace_files: Vec<(String, Vec<u8>)>,
    pub limits: Limits,
    pub stdin: Stdin,
    pub hostname: String,
    pub landlock: Enforcement,
    pub seccomp: SeccompLevel,
    /// Refuse to run when memory/pids/cpu cannot be limited through cgroups
    /// (otherwise rlimits alone are used).
    pub require_cgroups: bool,
    /// Filtered network: `None` (the default) leaves the sandbox with `lo` only
    /// and nothing listening; see [`NetRelay`].
    #[serde(default)]
    pub net: Option<NetRelay>,
    /// As root: the host uid and gid the sandbox maps to instead of
    /// [`DEFAULT_HOST_ID`] (one range per tenant, so that one tenant's sandboxes
    /// cannot touch another's files). At least `DEFAULT_HOST_ID`; refused when
    /// not root. A workspace owned by another non-root user still maps to its
    /// owner, as without it.
    #[serde(default)]
    pub host_id: Option<u32>,
}

/// The path out of a run with filtered network. Inside, a forwarder listens on
/// `127.0.0.1:port` (TCP) and `127.0.0.1:53` (UDP and TCP), IPv4 only, and relays
/// each connection to [`PROXY_SOCKET`] and each DNS query (framed as over TCP)
/// to [`DNS_SOCKET`] in `dir`. The directory is never mounted into the sandbox;
/// the caller made it `0700` and whoever serves the sockets decides what passes.
/// As root the jail hands the directory to the sandbox's host id (the forwarder
/// runs as that id, without privileges).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetRelay {
    pub dir: PathBuf,
    pub port: u16,
}

/// What is mounted at `/workspace`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Workspace {
    /// A fresh tmpfs of this many bytes, gone with the run.
    Tmpfs { size_bytes: u64 },
    /// A host directory, bound read-write. Files the sandbox creates there belong to
    /// the directory's owner on the host.
    Bind { host: PathBuf },
    /// Copy-on-write: an overlay mounted at `/workspace` with the host directory
    /// `lower` as its read-only lower layer and `upper`/`work` as its writable layer.
    /// Whatever the sandbox writes, renames or deletes lands in `upper`; `lower` is
    /// never written (it may be shared by many sandboxes). `upper` and `work` must be
    /// siblings (overlayfs needs them on one mount) and, like a `Bind` workspace,
    /// belong to the uid the sandbox maps to (never to root); their names may not
    /// contain `,`, `:` or a backslash (they go into the mount options).
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
    },
}

/// Resource limits of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub wall: Duration,
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpus: f64,
    pub nofile: u64,
    pub tmp_bytes: u64,
    /// Per stream; output past it is dropped and the stream is closed.
    pub output_bytes: usize,
}

/// The program's standard input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Stdin {
    Null,
    Bytes(Vec<u8>),
    /// Pass the caller's fd 0 through (only when it is not a terminal).
    Inherit,
}

/// How a layer that the kernel may lack is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Enforcement {
    /// Use it where the kernel has it; report when it does not.
    BestEffort,
    /// Refuse the run when the kernel lacks it.
    Required,
}

/// Which seccomp filter the program gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompLevel {
    /// The full deny list.
    Default,
    /// The deny list minus `ptrace` and `process_vm_*`, for debuggers.
    Dev,
}

/// What happened to a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub oom_killed: bool,
    /// The run was cancelled (by the caller or a signal to aisbx) and killed.
    pub cancelled: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
    pub cpu_ms: u64,
    pub max_rss_kib: u64,
    /// `execve` of the program failed with this errno (ENOENT → not found).
    pub exec_errno: Option<i32>,
    /// Which layers were actually in force for this run.
    pub layers: AppliedLayers,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedLayers {
    /// `v1`, `v2` or empty when cgroups were not used.
    pub cgroup: String,
    /// `full`, `partial` or `none`.
    pub landlock: String,
}

/// Receives output as the run produces it, and may cancel it.
pub trait Sink {
    fn stdout(&mut self, data: &[u8]);
    fn stderr(&mut self, data: &[u8]);
    /// Polled while the run goes on; `true` kills the run's whole process tree.
    fn cancelled(&mut self) -> bool {
        false
    }
}

/// Why a run could not be carried out.
#[derive(Debug, Error)]
pub enum JailError {
    #[error("aisbx must set up the sandbox from a single-threaded process")]
    NotSingleThreaded,
    /// A layer the run needs is missing here: `message` is doctor's sentence for
    /// it (which layer, why, what to do), with the step that failed, if any.
    #[error("{message}")]
    LayerMissing { layer: String, message: String },
    #[error("setting up the sandbox failed: {0}")]
    Setup(String),
    #[error("invalid sandbox specification: {0}")]
    InvalidSpec(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl JailError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        JailError::Io {
            context: context.into(),
            source,
        }
    }
}
