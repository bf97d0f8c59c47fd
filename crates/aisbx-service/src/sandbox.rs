//! Persistent sandboxes: a workspace on the host under the state directory and the
//! profile it runs with. Every run in one gets a fresh jail over that workspace, so
//! files persist across calls while processes do not.

use std::cell::Cell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{self as rfs, AtFlags, FlockOperation, Mode, OFlags};

use serde::{Deserialize, Serialize};

use crate::audit::rfc3339_now;
use crate::new_id;
use crate::runner::Runner;
use crate::snapshot_fs::{self, Layers};
use crate::{
    BuildRequest, BuildResult, CancelToken, NullSink, Program, RunRequest, RunResult, ServiceError,
    profile,
};

/// What is recorded about a sandbox (`meta.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct SandboxInfo {
    pub id: String,
    pub profile: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// The snapshot this sandbox was restored from (a copy-on-write sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
    /// Its files live on a capped disk of their own (`disk.rs`): as root.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(skip)]
    pub disk: bool,
    /// The snapshot's materialized tree: the read-only lower layer of its overlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub lower: Option<PathBuf>,
    /// Where its files are on the host: the workspace, or the overlay's upper layer.
    #[serde(skip)]
    #[schemars(skip)]
    pub workspace: PathBuf,
}

impl SandboxInfo {
    /// What the jail mounts at /workspace for a run in this sandbox.
    pub fn jail_workspace(&self) -> aisbx_jail::Workspace {
        match &self.lower {
            Some(lower) => aisbx_jail::Workspace::Overlay {
                lower: lower.clone(),
                upper: self.workspace.clone(),
                work: self
                    .workspace
                    .parent()
                    .map(|p| p.join("work"))
                    .unwrap_or_default(),
            },
            None => aisbx_jail::Workspace::Bind {
                host: self.workspace.clone(),
            },
        }
    }
}

fn sandboxes_dir(home: &Path) -> PathBuf {
    home.join("sandboxes")
}

/// Names: 1–64 of `A-Z a-z 0-9 _ . -`, not starting with a dot or dash.
pub fn check_name(name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            "name",
            format!(
                "'{name}' is not a valid sandbox name: use 1-64 letters, digits, '_', '.', '-'"
            ),
        ))
    }
}

pub(crate) fn load(home: &Path, id: &str) -> Result<SandboxInfo, ServiceError> {
    check_name(id).map_err(|_| {
        ServiceError::invalid("sandbox_id", format!("'{id}' is not a valid sandbox id"))
    })?;
    let dir = sandboxes_dir(home).join(id);
    let meta = std::fs::read(dir.join("meta.json"))
        .map_err(|_| ServiceError::NoSuchSandbox(id.to_string()))?;
    let mut info: SandboxInfo = serde_json::from_slice(&meta).map_err(|e| {
        ServiceError::Internal(format!("the record of sandbox '{id}' is damaged: {e}"))
    })?;
    if info.disk {
        crate::disk::ensure_mounted(&dir)?;
    }
    info.workspace = workspace_path(&dir, info.disk, info.lower.is_some());
    Ok(info)
}

/// Where a sandbox's files are: on its disk when it has one; the upper layer of an
/// overlay over a snapshot, else a plain workspace directory. An overlay's work
/// directory is the upper layer's sibling `work`.
fn workspace_path(dir: &Path, disk: bool, overlay: bool) -> PathBuf {
    let base = if disk {
        dir.join(crate::disk::MOUNT)
    } else if overlay {
        dir.join("overlay")
    } else {
        return dir.join("workspace");
    };
    base.join(if overlay { "upper" } else { "workspace" })
}

/// Give a new sandbox in `dir` the place for its files: a capped disk as root (the
/// profile's workspace size), else a directory. Returns whether it has a disk and the
/// directories the sandbox writes (handed to its user).
fn make_storage(
    dir: &Path,
    bytes: u64,
    overlay: bool,
    owner: Option<(u32, u32)>,
) -> Result<bool, ServiceError> {
    let disk = crate::disk::support().is_ok();
    let base = if disk {
        crate::disk::create(dir, bytes)?
    } else if overlay {
        let b = dir.join("overlay");
        std::fs::create_dir(&b)
            .map_err(|e| ServiceError::Internal(format!("cannot create {}: {e}", b.display())))?;
        b
    } else {
        dir.to_path_buf()
    };
    let names: &[&str] = if overlay {
        &["upper", "work"]
    } else {
        &["workspace"]
    };
    for n in names {
        let d = base.join(n);
        std::fs::create_dir(&d)
            .map_err(|e| ServiceError::Internal(format!("cannot create {}: {e}", d.display())))?;
        hand_to_sandbox(&d, owner)?;
    }
    Ok(disk)
}

/// Remove a sandbox directory that was being made (its disk unmounted first).
fn discard(dir: &Path) {
    let _ = crate::disk::unmount(dir);
    let _ = snapshot_fs::remove_tree(dir);
}

/// Every persistent sandbox, oldest first.
pub fn list_sandboxes(home: &Path) -> Vec<SandboxInfo> {
    let mut v: Vec<SandboxInfo> = std::fs::read_dir(sandboxes_dir(home))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| load(home, &e.file_name().to_string_lossy()).ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    v
}

/// How long `destroy` waits for the runs in a sandbox to stop.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// How often a run checks whether its sandbox is being destroyed.
const REMOVED_CHECK: Duration = Duration::from_millis(50);

/// A run's hold on its persistent sandbox: a shared `flock` on the sandbox's
/// record (`meta.json`), taken before the run starts and kept until it has ended.
/// Destroying a sandbox unlinks the record, so that no new run starts and every
/// running one stops itself (see [`RunHold::removed`]), then takes the same lock
/// exclusively: the files are removed only when no run is left.
pub(crate) struct RunHold {
    meta: OwnedFd,
    last_check: Cell<Instant>,
    removed: Cell<bool>,
}

impl RunHold {
    /// Has the sandbox been destroyed (its record unlinked) since the run started?
    /// Checked at most every 50 ms: one `fstat`.
    pub(crate) fn removed(&self) -> bool {
        if self.removed.get() {
            return true;
        }
        let now = Instant::now();
        if now.duration_since(self.last_check.get()) >= REMOVED_CHECK {
            self.last_check.set(now);
            if rfs::fstat(&self.meta).is_ok_and(|st| st.st_nlink == 0) {
                self.removed.set(true);
            }
        }
        self.removed.get()
    }

    /// Did the run stop because its sandbox was destroyed?
    pub(crate) fn was_removed(&self) -> bool {
        self.removed.get()
    }
}

/// Take a run's hold on sandbox `id` (waits while the sandbox is being destroyed,
/// then reports it gone).
pub(crate) fn hold_for_run(home: &Path, id: &str) -> Result<RunHold, ServiceError> {
    let path = sandboxes_dir(home).join(id).join("meta.json");
    let gone = || ServiceError::NoSuchSandbox(id.to_string());
    let meta = rfs::open(
        &path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|_| gone())?;
    rfs::flock(&meta, FlockOperation::LockShared)
        .map_err(|e| ServiceError::Internal(format!("cannot lock sandbox '{id}': {e}")))?;
    if rfs::fstat(&meta).map_err(|_| gone())?.st_nlink == 0 {
        return Err(gone());
    }
    Ok(RunHold {
        meta,
        last_check: Cell::new(Instant::now()),
        removed: Cell::new(false),
    })
}

/// Delete a sandbox and its workspace (and the snapshot tree it alone used). Its
/// runs are stopped first, under the lock each run holds ([`RunHold`]); the files
/// are then removed fd-relative, never following a link the sandbox made.
pub fn remove_sandbox(home: &Path, id: &str) -> Result<(), ServiceError> {
    let fail =
        |e: std::io::Error| ServiceError::Internal(format!("cannot remove sandbox '{id}': {e}"));
    let info = match load(home, id) {
        Ok(info) => info,
        Err(ServiceError::NoSuchSandbox(_)) if check_name(id).is_ok() => {
            // What an interrupted removal left: a directory without a record, in
            // which no run can start.
            let root = match snapshot_fs::open_host_dir(&sandboxes_dir(home)) {
                Ok(r) => r,
                Err(_) => return Err(ServiceError::NoSuchSandbox(id.to_string())),
            };
            if snapshot_fs::stat_beneath(root.as_fd(), id.as_bytes()).is_err() {
                return Err(ServiceError::NoSuchSandbox(id.to_string()));
            }
            crate::disk::unmount(&sandboxes_dir(home).join(id))?;
            snapshot_fs::remove_tree_at(root.as_fd(), id.as_bytes()).map_err(fail)?;
            return crate::snapshot::collect_garbage(home);
        }
        Err(e) => return Err(e),
    };
    let root = snapshot_fs::open_host_dir(&sandboxes_dir(home)).map_err(fail)?;
    let dir = snapshot_fs::open_dir(root.as_fd(), info.id.as_bytes()).map_err(fail)?;
    let meta = snapshot_fs::open_beneath(dir.as_fd(), b"meta.json", OFlags::RDONLY)
        .map_err(|_| ServiceError::NoSuchSandbox(id.to_string()))?;
    let record =
        snapshot_fs::read_prefix(meta.try_clone().map_err(fail)?, 1 << 20).map_err(fail)?;
    // The record goes first: no new run starts, running ones stop themselves, and a
    // half-removed sandbox is never listed.
    match rfs::unlinkat(&dir, "meta.json", AtFlags::empty()) {
        Ok(()) => {}
        Err(rustix::io::Errno::NOENT) => return Err(ServiceError::NoSuchSandbox(id.to_string())),
        Err(e) => return Err(fail(snapshot_fs::io_err(e))),
    }
    let deadline = Instant::now() + STOP_WAIT;
    loop {
        match rfs::flock(&meta, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                let restored = restore_record(dir.as_fd(), &record);
                let why = if e == rustix::io::Errno::WOULDBLOCK {
                    format!("a run in it did not stop within {} s", STOP_WAIT.as_secs())
                } else {
                    format!("cannot lock it: {e}")
                };
                return Err(ServiceError::Refused(match restored {
                    Ok(()) => format!(
                        "sandbox '{id}' was not removed: {why}; try again when its runs have ended"
                    ),
                    Err(re) => format!(
                        "sandbox '{id}' was not removed ({why}) and its record could not be put back ({re}); `aisbx rm {id}` again removes it"
                    ),
                }));
            }
        }
    }
    drop(dir);
    if info.disk {
        crate::disk::unmount(&sandboxes_dir(home).join(&info.id))?;
    }
    snapshot_fs::remove_tree_at(root.as_fd(), info.id.as_bytes()).map_err(fail)?;
    drop(meta);
    if info.lower.is_some() {
        crate::snapshot::collect_garbage(home)?;
    }
    Ok(())
}

/// Put a sandbox's record back after a removal that could not stop its runs.
fn restore_record(dir: BorrowedFd<'_>, record: &[u8]) -> std::io::Result<()> {
    let tmp = "meta.json.tmp";
    let fd = rfs::openat(
        dir,
        tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut f = std::fs::File::from(fd);
    std::io::Write::write_all(&mut f, record)?;
    f.sync_all()?;
    rfs::renameat(dir, tmp, dir, "meta.json")?;
    Ok(())
}

/// The sandbox's files as the sandbox sees them: its workspace, or its overlay's
/// upper layer above the snapshot tree.
pub(crate) fn layers(sb: &SandboxInfo) -> Result<Layers, ServiceError> {
    let open = |p: &Path| {
        snapshot_fs::open_host_dir(p).map_err(|e| {
            ServiceError::Internal(format!(
                "the files of sandbox '{}' cannot be opened ({}: {e})",
                sb.id,
                p.display()
            ))
        })
    };
    let mut fds = vec![open(&sb.workspace)?];
    if let Some(lower) = &sb.lower {
        fds.push(open(lower)?);
    }
    Ok(Layers { fds })
}

/// Create a copy-on-write sandbox over a snapshot (an empty one is a [`build`]).
pub(crate) fn create(
    runner: &Runner,
    name: Option<&str>,
    profile_name: Option<&str>,
    from: &str,
) -> Result<SandboxInfo, ServiceError> {
    let id = match name {
        Some(n) => {
            check_name(n)?;
            n.to_string()
        }
        None => new_id("sbx"),
    };
    crate::snapshot::with_tree(runner.store(), runner.owner(), from, |snap, tree| {
        let pname = profile_name
            .map(str::to_string)
            .or_else(|| snap.profile.clone())
            .unwrap_or_else(|| profile::DEFAULT_PROFILE.to_string());
        let profile = runner.profiles(None).resolve(&pname)?;
        let dir = new_sandbox_dir(runner, &id)?;
        let made = (|| -> Result<SandboxInfo, ServiceError> {
            let disk = make_storage(&dir, profile.workspace_bytes, true, runner.owner())?;
            let info = SandboxInfo {
                id: id.clone(),
                profile: profile.name.clone(),
                created_at: rfc3339_now(),
                from_snapshot: Some(snap.name.clone()),
                disk,
                lower: Some(tree.to_path_buf()),
                workspace: workspace_path(&dir, disk, true),
            };
            write_meta(&dir, &info)?;
            Ok(info)
        })();
        if made.is_err() {
            discard(&dir);
        }
        made
    })
}

fn new_sandbox_dir(runner: &Runner, id: &str) -> Result<PathBuf, ServiceError> {
    let root = sandboxes_dir(runner.store());
    std::fs::create_dir_all(&root)
        .map_err(|e| ServiceError::Internal(format!("cannot create {}: {e}", root.display())))?;
    let dir = root.join(id);
    // Counted against the tenant's sandboxes until its directory exists.
    let _turn = crate::quota::sandbox_turn(runner.scope())?;
    match std::fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(ServiceError::invalid(
            "name",
            format!("a sandbox named '{id}' already exists"),
        )),
        Err(e) => Err(ServiceError::Internal(format!(
            "cannot create {}: {e}",
            dir.display()
        ))),
    }
}

/// As root, a sandbox's writable directories belong to the unprivileged id the
/// sandbox maps to (its tenant's).
fn hand_to_sandbox(p: &Path, owner: Option<(u32, u32)>) -> Result<(), ServiceError> {
    if let Some((u, g)) = owner {
        std::os::unix::fs::chown(p, Some(u), Some(g)).map_err(|e| {
            ServiceError::Internal(format!(
                "cannot hand {} to the sandbox user: {e}",
                p.display()
            ))
        })?;
    }
    Ok(())
}

fn write_meta(dir: &Path, info: &SandboxInfo) -> Result<(), ServiceError> {
    let json =
        serde_json::to_vec_pretty(info).map_err(|e| ServiceError::Internal(e.to_string()))?;
    let tmp = dir.join("meta.json.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join("meta.json"))
    };
    write().map_err(|e| ServiceError::Internal(format!("cannot record the sandbox: {e}")))
}

/// A run the service makes in sandbox `sb` for a request already decided (files
/// written, setup commands, copies, removals): no decision of its own.
fn internal_run(
    runner: &Runner,
    sb: &SandboxInfo,
    r: &RunRequest,
    cancel: &CancelToken,
) -> Result<RunResult, ServiceError> {
    let p = runner.prepare(r, Some(sb.clone()), None)?;
    run_prepared(runner, sb, p, cancel)
}

/// Execute a run prepared for sandbox `sb`, holding the sandbox meanwhile.
fn run_prepared(
    runner: &Runner,
    sb: &SandboxInfo,
    p: crate::runner::Prepared,
    cancel: &CancelToken,
) -> Result<RunResult, ServiceError> {
    let hold = hold_for_run(runner.store(), &sb.id)?;
    runner.execute(p, &mut NullSink, cancel, Some(hold))
}

pub(crate) fn build(
    runner: &Runner,
    req: BuildRequest,
    profile: &profile::Profile,
    cancel: &CancelToken,
) -> Result<BuildResult, ServiceError> {
    let id = match &req.name {
        Some(n) => {
            check_name(n)?;
            n.clone()
        }
        None => new_id("sbx"),
    };
    if req.setup.len() > 64 {
        return Err(ServiceError::invalid(
            "setup",
            "more than 64 setup commands",
        ));
    }
    let root = sandboxes_dir(runner.store());
    std::fs::create_dir_all(&root)
        .map_err(|e| ServiceError::Internal(format!("cannot create {}: {e}", root.display())))?;
    let dir = root.join(&id);
    let turn = crate::quota::sandbox_turn(runner.scope())?;
    let made_dir = std::fs::create_dir(&dir);
    drop(turn);
    match made_dir {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(ServiceError::invalid(
                "name",
                format!("a sandbox named '{id}' already exists"),
            ));
        }
        Err(e) => {
            return Err(ServiceError::Internal(format!(
                "cannot create {}: {e}",
                dir.display()
            )));
        }
    }
    let made = (|| -> Result<SandboxInfo, ServiceError> {
        let disk = make_storage(&dir, profile.workspace_bytes, false, runner.owner())?;
        let info = SandboxInfo {
            id: id.clone(),
            profile: profile.name.clone(),
            created_at: rfc3339_now(),
            from_snapshot: None,
            disk,
            lower: None,
            workspace: workspace_path(&dir, disk, false),
        };
        write_meta(&dir, &info)?;
        Ok(info)
    })();
    let info = match made {
        Ok(i) => i,
        Err(e) => {
            discard(&dir);
            return Err(e);
        }
    };
    let mut setup = Vec::new();
    // Files are written from inside a sandbox run, so a path can never reach the host.
    if !req.files.is_empty() {
        let mut r = RunRequest::new(Program::Command(vec!["true".into()]));
        r.sandbox_id = Some(info.id.clone());
        r.files = req.files.clone();
        let res = internal_run(runner, &info, &r, cancel);
        if let Err(e) = res {
            let _ = remove_sandbox(runner.store(), &info.id);
            return Err(e);
        }
    }
    for cmd in &req.setup {
        let mut r = RunRequest::new(Program::Command(vec![
            "sh".into(),
            "-c".into(),
            cmd.clone(),
        ]));
        r.sandbox_id = Some(info.id.clone());
        let res = internal_run(runner, &info, &r, cancel)?;
        let failed = res.exit_code != Some(0);
        setup.push(res);
        if failed || cancel.is_cancelled() {
            break;
        }
    }
    // The setup's CPU time counts against the tenant's hourly quota (the build
    // holds one run slot for all of it, reserved at the gate).
    let cpu_ms = setup
        .iter()
        .map(|r| crate::quota::charged_cpu_ms(r, profile.limits.cpus))
        .sum();
    let scope = runner.scope();
    if let Err(e) = crate::quota::record_cpu(scope, &scope.quota(), cpu_ms) {
        eprintln!("aisbx: warning: the setup's CPU time was not counted: {e}");
    }
    Ok(BuildResult {
        sandbox_id: info.id,
        profile: info.profile,
        created_at: info.created_at,
        setup,
    })
}

// ----- files in a sandbox -----

/// Largest file `file_read` returns whole (the rest is cut, and `truncated` says so).
pub const MAX_READ_BYTES: usize = 1 << 20;
/// Most entries `file_list` returns.
pub const MAX_LIST_ENTRIES: usize = 10_000;

/// A file read from a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileContent {
    pub sandbox_id: String,
    pub path: String,
    /// The file's full size in bytes.
    pub size: u64,
    /// `utf-8` (the text as is) or `base64` (the file is not valid UTF-8).
    pub encoding: String,
    pub content: String,
    /// Only the first 1 MiB was returned.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileEntry {
    /// Relative to /workspace.
    pub path: String,
    /// `dir`, `file` or `symlink`.
    pub kind: snapshot_fs::Kind,
    pub size: u64,
    /// Permission bits, octal, e.g. `644`.
    pub mode: String,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// A symlink's target (never followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileList {
    pub sandbox_id: String,
    pub path: String,
    pub entries: Vec<FileEntry>,
    /// More than 10,000 entries: the rest were left out.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileWriteResult {
    pub sandbox_id: String,
    pub path: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CopyResult {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Entries left out, one sentence each (devices, sockets, FIFOs; symlinks
    /// that point outside the copied tree, unless links are kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Does a symlink at `depth` directories below the root of a copied tree point
/// outside it? Absolute targets do; a relative one does when its leading `..`
/// climb above the root. A `..` after a name is counted as leaving too, since the
/// name may itself be a link. A link that is the copied root (`depth` None) has
/// nothing of the tree around it, so every target leaves.
pub fn link_leaves_tree(target: &[u8], depth: Option<usize>) -> bool {
    let Some(depth) = depth else {
        return true;
    };
    if target.is_empty() || target.starts_with(b"/") {
        return true;
    }
    let mut up = 0usize;
    let mut named = false;
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." if named => return true,
            b".." => up += 1,
            _ => named = true,
        }
    }
    up > depth
}

fn rel_arg(field: &str, p: &str) -> Result<Vec<u8>, ServiceError> {
    snapshot_fs::normalize_rel(p).map_err(|e| ServiceError::invalid(field, e))
}

fn io_internal(what: String) -> impl FnOnce(std::io::Error) -> ServiceError {
    move |e| ServiceError::Internal(format!("{what}: {e}"))
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Read a file of a sandbox, from the host side, never following a symlink.
pub(crate) fn file_read(
    runner: &Runner,
    id: &str,
    path: &str,
) -> Result<FileContent, ServiceError> {
    let sb = load(runner.store(), id)?;
    let rel = rel_arg("path", path)?;
    let layers = layers(&sb)?;
    let node = layers
        .lookup(&rel, &mut |_| {})
        .map_err(io_internal(format!("cannot read {path}")))?
        .map(|(n, _)| n)
        .ok_or_else(|| {
            ServiceError::invalid("path", format!("{path} does not exist in sandbox '{id}'"))
        })?;
    if node.kind != snapshot_fs::Kind::File {
        return Err(ServiceError::invalid(
            "path",
            format!(
                "{path} is not a regular file (it is a {:?}); file_list shows what is there",
                node.kind
            )
            .to_lowercase(),
        ));
    }
    let fd = snapshot_fs::open_file(layers.fd(node.layer), &node.path)
        .map_err(io_internal(format!("cannot read {path}")))?;
    let data = snapshot_fs::read_prefix(fd, MAX_READ_BYTES)
        .map_err(io_internal(format!("cannot read {path}")))?;
    let truncated = (data.len() as u64) < node.size;
    let (encoding, content) = match String::from_utf8(data) {
        Ok(s) => ("utf-8", s),
        Err(e) => ("base64", base64(e.as_bytes())),
    };
    Ok(FileContent {
        sandbox_id: sb.id,
        path: String::from_utf8_lossy(&rel).into_owned(),
        size: node.size,
        encoding: encoding.into(),
        content,
        truncated,
    })
}

/// List a directory of a sandbox (recursively when asked).
pub(crate) fn file_list(
    runner: &Runner,
    id: &str,
    path: &str,
    recursive: bool,
) -> Result<FileList, ServiceError> {
    let sb = load(runner.store(), id)?;
    let rel = rel_arg("path", path)?;
    let layers = layers(&sb)?;
    let nodes: Vec<snapshot_fs::Node> = if recursive {
        layers
            .scan(&rel, &mut |_| {})
            .map_err(|e| ServiceError::invalid("path", format!("{path}: {e}")))?
    } else {
        let start = layers
            .lookup(&rel, &mut |_| {})
            .map_err(io_internal(format!("cannot list {path}")))?
            .ok_or_else(|| {
                ServiceError::invalid("path", format!("{path} does not exist in sandbox '{id}'"))
            })?;
        let mut v = vec![start.0.clone()];
        if start.0.kind == snapshot_fs::Kind::Dir {
            // One level: the directory's children.
            let all = layers
                .scan(&rel, &mut |_| {})
                .map_err(io_internal(format!("cannot list {path}")))?;
            let depth = rel.split(|&b| b == b'/').filter(|c| !c.is_empty()).count() + 1;
            v = all
                .into_iter()
                .filter(|n| {
                    n.path
                        .split(|&b| b == b'/')
                        .filter(|c| !c.is_empty())
                        .count()
                        == depth
                })
                .collect();
        }
        v
    };
    let truncated = nodes.len() > MAX_LIST_ENTRIES;
    let entries = nodes
        .into_iter()
        .filter(|n| !n.path.is_empty())
        .take(MAX_LIST_ENTRIES)
        .map(|n| FileEntry {
            path: String::from_utf8_lossy(&n.path).into_owned(),
            kind: n.kind,
            size: n.size,
            mode: format!("{:o}", n.mode),
            mtime: n.mtime.0,
            target: (n.kind == snapshot_fs::Kind::Symlink)
                .then(|| String::from_utf8_lossy(&n.target).into_owned()),
        })
        .collect();
    Ok(FileList {
        sandbox_id: sb.id,
        path: String::from_utf8_lossy(&rel).into_owned(),
        entries,
        truncated,
    })
}

/// Write a file into a sandbox, from inside a sandbox run.
pub(crate) fn file_write(
    runner: &Runner,
    id: &str,
    path: &str,
    content: Vec<u8>,
    cancel: &CancelToken,
) -> Result<FileWriteResult, ServiceError> {
    let sb = load(runner.store(), id)?;
    let rel = rel_arg("path", path)?;
    if rel.is_empty() {
        return Err(ServiceError::invalid(
            "path",
            "names the workspace itself, not a file",
        ));
    }
    let rel = String::from_utf8_lossy(&rel).into_owned();
    let bytes = content.len() as u64;
    let mut r = RunRequest::new(Program::Command(vec!["true".into()]));
    r.sandbox_id = Some(sb.id.clone());
    r.files.insert(rel.clone(), content);
    let res = runner
        .prepare(&r, Some(sb.clone()), None)
        .map_err(|e| match e {
            ServiceError::InvalidArgument { message, .. } => ServiceError::invalid("path", message),
            other => other,
        })
        .and_then(|p| run_prepared(runner, &sb, p, cancel))?;
    if res.exit_code != Some(0) {
        return Err(ServiceError::Refused(format!(
            "writing {rel} in sandbox '{id}' failed: {}",
            res.stderr.trim()
        )));
    }
    Ok(FileWriteResult {
        sandbox_id: sb.id,
        path: rel,
        bytes,
    })
}

/// What `file_delete` removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileDeleteResult {
    pub sandbox_id: String,
    pub path: String,
    /// What the path was: `file`, `dir` (removed with everything in it) or `symlink`
    /// (the link itself; its target is untouched).
    pub kind: snapshot_fs::Kind,
}

/// Delete a file, a symlink (never its target) or a directory tree of a sandbox.
/// The path is looked up from the host side fd-relative, never following a symlink
/// (one on the way counts as missing); the removal itself happens inside a sandbox
/// run, which also makes the whiteouts a copy-on-write sandbox needs. Whatever the
/// sandbox does to its tree meanwhile, the removal cannot reach past its own files.
pub(crate) fn file_delete(
    runner: &Runner,
    id: &str,
    path: &str,
    cancel: &CancelToken,
) -> Result<FileDeleteResult, ServiceError> {
    let sb = load(runner.store(), id)?;
    let rel = rel_arg("path", path)?;
    if rel.is_empty() {
        return Err(ServiceError::invalid(
            "path",
            "names the workspace itself, not a file in it",
        ));
    }
    let layers = layers(&sb)?;
    let node = layers
        .lookup(&rel, &mut |_| {})
        .map_err(io_internal(format!("cannot look up {path}")))?
        .map(|(n, _)| n)
        .ok_or_else(|| {
            ServiceError::invalid("path", format!("{path} does not exist in sandbox '{id}'"))
        })?;
    drop(layers);
    let rel = String::from_utf8_lossy(&rel).into_owned();
    let mut r = RunRequest::new(Program::Command(vec![
        "rm".into(),
        "-rf".into(),
        "--".into(),
        format!("/workspace/{rel}"),
    ]));
    r.sandbox_id = Some(sb.id.clone());
    let res = internal_run(runner, &sb, &r, cancel)?;
    if res.exit_code != Some(0) {
        return Err(ServiceError::Refused(format!(
            "deleting {rel} in sandbox '{id}' failed: {}",
            res.stderr.trim()
        )));
    }
    Ok(FileDeleteResult {
        sandbox_id: sb.id,
        path: rel,
        kind: node.kind,
    })
}

/// Copy a file or tree out of a sandbox to the host. Read fd-relative from the
/// sandbox's files without following any symlink; symlinks are copied as links.
pub(crate) fn copy_out(
    runner: &Runner,
    id: &str,
    path: &str,
    dst: &Path,
    keep_links: bool,
) -> Result<CopyResult, ServiceError> {
    let sb = load(runner.store(), id)?;
    let rel = rel_arg("path", path)?;
    let layers = layers(&sb)?;
    let mut warnings = Vec::new();
    let nodes = layers
        .scan(&rel, &mut |w| warnings.push(w))
        .map_err(|e| ServiceError::invalid("path", format!("{path}: {e}")))?;
    let src_name: Vec<u8> = match snapshot_fs::split(&rel).1 {
        b"" => sb.id.as_bytes().to_vec(),
        n => n.to_vec(),
    };
    // cp semantics: into an existing directory, else as the new name.
    let (parent, name) = if dst.is_dir() {
        (dst.to_path_buf(), src_name)
    } else {
        let name = dst
            .file_name()
            .map(|n| std::os::unix::ffi::OsStrExt::as_bytes(n).to_vec())
            .ok_or_else(|| {
                ServiceError::invalid("destination", format!("{} names no file", dst.display()))
            })?;
        let parent = match dst.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        (parent, name)
    };
    let root = snapshot_fs::open_host_dir(&parent)
        .map_err(|e| ServiceError::invalid("destination", format!("{}: {e}", parent.display())))?;
    let mut w = snapshot_fs::Writer::new(std::os::fd::AsFd::as_fd(&root), None, true);
    let mut res = CopyResult {
        files: 0,
        dirs: 0,
        symlinks: 0,
        bytes: 0,
        warnings,
    };
    for n in &nodes {
        if n.kind == snapshot_fs::Kind::Symlink && !keep_links {
            let depth = (n.path.len() > rel.len())
                .then(|| n.path[rel.len()..].iter().filter(|&&b| b == b'/').count());
            // Below the root of a whole-workspace copy, names start without '/'.
            let depth = depth.map(|d| if rel.is_empty() { d } else { d - 1 });
            if link_leaves_tree(&n.target, depth) {
                res.warnings.push(format!(
                    "skipped the symlink {} -> {} (it points outside what was copied; --keep-links copies it)",
                    String::from_utf8_lossy(&n.path),
                    String::from_utf8_lossy(&n.target)
                ));
                continue;
            }
        }
        let mut out = n.clone();
        out.path = name.clone();
        let rest = &n.path[rel.len()..];
        if rel.is_empty() && !rest.is_empty() {
            out.path.push(b'/');
        }
        out.path.extend_from_slice(rest);
        let source = match n.kind {
            snapshot_fs::Kind::File => {
                res.files += 1;
                res.bytes += n.size;
                Some(snapshot_fs::Source::Copy(
                    snapshot_fs::open_file(layers.fd(n.layer), &n.path).map_err(io_internal(
                        format!("cannot read {}", String::from_utf8_lossy(&n.path)),
                    ))?,
                ))
            }
            snapshot_fs::Kind::Dir => {
                res.dirs += 1;
                None
            }
            snapshot_fs::Kind::Symlink => {
                res.symlinks += 1;
                None
            }
        };
        w.put(&out, source).map_err(io_internal(format!(
            "cannot write {}",
            String::from_utf8_lossy(&out.path)
        )))?;
    }
    w.finish()
        .map_err(io_internal("cannot set directory modes".into()))?;
    Ok(res)
}

/// The script that unpacks a copy inside the sandbox: into `$1` when it is a
/// directory (as `$2`), else as `$1` itself.
const COPY_IN_SCRIPT: &str = r#"set -e
d="/workspace/$1"
if [ -d "$d" ] && [ ! -L "$d" ]; then d="$d/$2"; fi
p=$(dirname -- "$d")
mkdir -p -- "$p"
t=$(mktemp -d -p "$p" .aisbx-cp.XXXXXX)
trap 'rm -rf -- "$t"' EXIT
tar -x -p -f - -C "$t"
rm -rf -- "$d"
mv -f -T -- "$t/x" "$d"
"#;

/// Copy a host file or tree into a sandbox. The host side only reads (no symlink
/// followed below `src`); the writing happens inside a sandbox run, as the
/// sandbox's user, so nothing outside the sandbox can be reached.
pub(crate) fn copy_in(
    runner: &Runner,
    src: &Path,
    id: &str,
    path: &str,
    cancel: &CancelToken,
) -> Result<CopyResult, ServiceError> {
    let sb = load(runner.store(), id)?;
    let rel = rel_arg("path", path)?;
    let rel = String::from_utf8(rel).map_err(|_| ServiceError::invalid("path", "not UTF-8"))?;
    let parent = match src.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = src
        .file_name()
        .map(|n| std::os::unix::ffi::OsStrExt::as_bytes(n).to_vec())
        .ok_or_else(|| {
            ServiceError::invalid("source", format!("{} names no file", src.display()))
        })?;
    let base_str = String::from_utf8(base.clone()).map_err(|_| {
        ServiceError::invalid(
            "source",
            "the source's name is not UTF-8; name the destination fully",
        )
    })?;
    let host = Layers::single(
        snapshot_fs::open_host_dir(&parent)
            .map_err(|e| ServiceError::invalid("source", format!("{}: {e}", parent.display())))?,
    );
    let mut warnings = Vec::new();
    let nodes = host
        .scan(&base, &mut |w| warnings.push(w))
        .map_err(|e| ServiceError::invalid("source", format!("{}: {e}", src.display())))?;
    let limit = crate::runner::MAX_STDIN_BYTES as u64 - (1 << 20);
    let total: u64 = nodes.iter().map(|n| n.size + 1024).sum();
    if total > limit {
        return Err(ServiceError::invalid(
            "source",
            format!(
                "{} is too large to copy in one call (at most {} MiB)",
                src.display(),
                limit >> 20
            ),
        ));
    }
    let mut res = CopyResult {
        files: 0,
        dirs: 0,
        symlinks: 0,
        bytes: 0,
        warnings,
    };
    let mut b = tar::Builder::new(Vec::new());
    for n in &nodes {
        let mut name = b"x".to_vec();
        name.extend_from_slice(&n.path[base.len()..]);
        let name = std::path::PathBuf::from(
            <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(name),
        );
        let mut h = tar::Header::new_gnu();
        // Never setuid or setgid, as everything aisbx writes.
        h.set_mode(snapshot_fs::host_mode(n.kind, n.mode));
        h.set_mtime(n.mtime.0.max(0) as u64);
        let r = match n.kind {
            snapshot_fs::Kind::Dir => {
                res.dirs += 1;
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, &name, std::io::empty())
            }
            snapshot_fs::Kind::Symlink => {
                res.symlinks += 1;
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                let target = std::path::PathBuf::from(
                    <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(
                        n.target.clone(),
                    ),
                );
                b.append_link(&mut h, &name, &target)
            }
            snapshot_fs::Kind::File => {
                let fd = snapshot_fs::open_file(host.fd(0), &n.path).map_err(io_internal(
                    format!("cannot read {}", String::from_utf8_lossy(&n.path)),
                ))?;
                let data = snapshot_fs::read_prefix(fd, limit as usize).map_err(io_internal(
                    format!("cannot read {}", String::from_utf8_lossy(&n.path)),
                ))?;
                res.files += 1;
                res.bytes += data.len() as u64;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, &name, data.as_slice())
            }
        };
        r.map_err(io_internal("cannot pack the copy".into()))?;
    }
    let archive = b
        .into_inner()
        .map_err(io_internal("cannot pack the copy".into()))?;
    let mut r = RunRequest::new(Program::Command(vec![
        "/bin/sh".into(),
        "-c".into(),
        COPY_IN_SCRIPT.into(),
        "sh".into(),
        rel,
        base_str,
    ]));
    r.sandbox_id = Some(sb.id.clone());
    r.stdin = Some(archive);
    let out = internal_run(runner, &sb, &r, cancel)?;
    if out.exit_code != Some(0) {
        return Err(ServiceError::Refused(format!(
            "copying into sandbox '{id}' failed: {}",
            out.stderr.trim()
        )));
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_that_leave_the_copied_tree() {
        for (t, d) in [
            ("a/b", 0),
            ("../x", 1),
            ("../../x", 2),
            ("./x", 0),
            ("..", 1),
        ] {
            assert!(!link_leaves_tree(t.as_bytes(), Some(d)), "{t} at {d}");
        }
        for (t, d) in [
            ("/etc/passwd", 3),
            ("..", 0),
            ("../../x", 1),
            ("a/../../x", 5),
            ("s/../x", 0),
            ("", 1),
        ] {
            assert!(link_leaves_tree(t.as_bytes(), Some(d)), "{t} at {d}");
        }
        assert!(link_leaves_tree(b"x", None));
    }

    #[test]
    fn names() {
        for ok in ["a", "dev-env", "x_1.2"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
