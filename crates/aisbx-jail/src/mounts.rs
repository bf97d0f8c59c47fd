//! The sandbox's file system, built by its init inside the new mount namespace:
//! a tmpfs root, read-only binds of what the runtime needs, synthesized `/etc`
//! files, a fresh `/proc`, a minimal `/dev`, capped `/tmp` and `/workspace`.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::sys::{
    MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, mount_setattr_fd, mount_setattr_path,
    move_mount_to, open_tree_clone,
};
use crate::{CODE_DIR, SANDBOX_ID, Spec, Workspace};

/// Where the host root is reachable between the first pivot and its detachment.
const OLD: &str = "/.oldroot";
/// The directory the new root's tmpfs is mounted on before pivoting (it exists on
/// every host, and in our private mount namespace covering it hides nothing from
/// the binds: they are made from the old root after the pivot).
const BASE: &str = "/tmp";

/// Top-level host paths that merged-/usr systems make symlinks, bound or linked.
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
];

/// Devices bound from the host into the sandbox's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// /proc entries made read-only over the fresh /proc.
const PROC_READONLY: &[&str] = &["sys", "sysrq-trigger", "irq", "bus", "fs"];

/// Limits of the sandbox's own user namespace, set by its init (which holds
/// CAP_SYS_RESOURCE there) before the program starts. Each charge to them also
/// counts against the caller's host-wide limits, so these caps keep a sandbox
/// from using up the caller's inotify quota; and no user namespace can be made
/// inside, a second layer under the seccomp filter.
pub const USERNS_LIMITS: &[(&str, u32)] = &[
    ("/proc/sys/user/max_user_namespaces", 0),
    ("/proc/sys/user/max_inotify_instances", 32),
    ("/proc/sys/user/max_inotify_watches", 8192),
];

/// Write [`USERNS_LIMITS`] (a kernel without one of these knobs is skipped).
fn limit_user_namespace() -> R<()> {
    for (path, value) in USERNS_LIMITS {
        match fs::write(path, format!("{value}\n")) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("setting {path}: {e}")),
        }
    }
    Ok(())
}

type R<T> = Result<T, String>;

/// The cap of the tmpfs at `/dev`, which `/dev/shm` shares.
const DEV_CAP: u64 = 64 << 20;

/// The sizes of the run's writable tmpfs: `/workspace` (when it is one), `/tmp`
/// and `/dev` (with `/dev/shm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TmpfsSizes {
    pub workspace: Option<u64>,
    pub tmp: u64,
    pub dev: u64,
}

/// What a tmpfs holds is charged to the run's memory: were `/workspace`, `/tmp`
/// and `/dev/shm` allowed more than the memory limit between them, filling them
/// would end in an OOM kill of the whole run instead of `ENOSPC` in the program
/// that writes. So their sizes add up to at most three quarters of the memory
/// limit (a quarter is kept for the processes): when their caps (the spec's
/// workspace and tmp sizes, 64 MiB for `/dev`) add up to more, each shrinks in
/// proportion. Sizes are whole pages, at least one.
pub fn tmpfs_sizes(spec: &Spec) -> TmpfsSizes {
    const PAGE: u64 = 4096;
    let workspace = match spec.workspace {
        Workspace::Tmpfs { size_bytes } => Some(size_bytes),
        _ => None,
    };
    let caps = [workspace.unwrap_or(0), spec.limits.tmp_bytes, DEV_CAP];
    let total: u128 = caps.iter().map(|&c| u128::from(c)).sum();
    let budget = u128::from(spec.limits.memory_bytes) / 4 * 3;
    let size = |cap: u64| -> u64 {
        let s = if total > budget {
            // Fits in u64: at most `cap`.
            (u128::from(cap) * budget / total) as u64
        } else {
            cap
        };
        (s / PAGE).max(1) * PAGE
    };
    TmpfsSizes {
        workspace: workspace.map(size),
        tmp: size(spec.limits.tmp_bytes),
        dev: size(DEV_CAP),
    }
}

fn cs(p: &Path) -> R<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| format!("path {} contains a NUL byte", p.display()))
}

fn ctx(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> String {
    move |e| format!("{}: {e}", what())
}

fn mnt<P: AsRef<Path>>(
    src: Option<&str>,
    target: P,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> R<()> {
    let target = target.as_ref();
    mount(src, target, fstype, flags, data).map_err(|e| {
        format!(
            "mounting {} on {}: {e}",
            fstype.or(src).unwrap_or("?"),
            target.display()
        )
    })
}

thread_local! {
    /// Directories this process already made or found (the init builds the root
    /// alone): most mount points share parents, and a system call saved is a path
    /// walk saved.
    static MADE: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Forget the directories made so far: after the root changes, or after removing one.
fn forget_made() {
    MADE.with(|m| m.borrow_mut().clear());
}

/// Forget the directories beneath `p`, which a mount now covers.
fn forget_under(p: &Path) {
    MADE.with(|m| m.borrow_mut().retain(|d| d == p || !d.starts_with(p)));
}

/// `mkdir -p`, with one system call when the parent exists (the common case) and
/// none for a directory made before.
fn mkdir_p(p: &Path) -> R<()> {
    if p == Path::new("/") || MADE.with(|m| m.borrow().iter().any(|d| d == p)) {
        return Ok(());
    }
    let made = |p: &Path| MADE.with(|m| m.borrow_mut().push(p.to_path_buf()));
    match fs::DirBuilder::new().mode(0o755).create(p) {
        Ok(()) => made(p),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => made(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = p.parent() {
                mkdir_p(parent)?;
            }
            match fs::DirBuilder::new().mode(0o755).create(p) {
                Ok(()) => made(p),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => made(p),
                Err(e) => return Err(format!("creating {}: {e}", p.display())),
            }
        }
        Err(e) => return Err(format!("creating {}: {e}", p.display())),
    }
    Ok(())
}

/// A read-only bind, planned either on the host side (as root, where the host
/// paths are readable) or inside the init (as an unprivileged user, who reads
/// exactly what that user may read).
pub enum BindPlan {
    /// Recreate a symlink at `path` pointing at `target`.
    Link { path: PathBuf, target: PathBuf },
    /// Attach the detached, read-only tree `fd` at `path`.
    Tree {
        path: PathBuf,
        fd: OwnedFd,
        is_dir: bool,
    },
}

/// How the supervisor hands a planned bind to the init: one message per plan on
/// the control socket, `[kind][path length, u32 LE][path][link target]`, with the
/// detached tree's fd attached for a tree; a lone [`BIND_END`] ends the list.
const BIND_LINK: u8 = 0;
const BIND_DIR: u8 = 1;
const BIND_FILE: u8 = 2;
pub const BIND_END: u8 = 0xff;

impl BindPlan {
    /// The message for this plan, and the fd to send with it.
    pub fn encode(&self) -> (Vec<u8>, Option<std::os::fd::RawFd>) {
        let (kind, path, rest, fd) = match self {
            BindPlan::Link { path, target } => (BIND_LINK, path, target.as_os_str(), None),
            BindPlan::Tree { path, fd, is_dir } => (
                if *is_dir { BIND_DIR } else { BIND_FILE },
                path,
                std::ffi::OsStr::new(""),
                Some(fd.as_raw_fd()),
            ),
        };
        let p = path.as_os_str().as_bytes();
        let mut m = Vec::with_capacity(5 + p.len() + rest.len());
        m.push(kind);
        m.extend_from_slice(&(p.len() as u32).to_le_bytes());
        m.extend_from_slice(p);
        m.extend_from_slice(rest.as_bytes());
        (m, fd)
    }

    /// The plan a message describes (`fd`: the one that came with it).
    pub fn decode(m: &[u8], fd: Option<OwnedFd>) -> R<BindPlan> {
        use std::ffi::OsStr;
        let bad = || "malformed bind message from the supervisor".to_string();
        let (&kind, rest) = m.split_first().ok_or_else(bad)?;
        let len = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(bad)? as usize;
        let path = rest.get(4..4 + len).ok_or_else(bad)?;
        let tail = &rest[4 + len..];
        let path = PathBuf::from(OsStr::from_bytes(path));
        match (kind, fd) {
            (BIND_LINK, None) => Ok(BindPlan::Link {
                path,
                target: PathBuf::from(OsStr::from_bytes(tail)),
            }),
            (BIND_DIR | BIND_FILE, Some(fd)) if tail.is_empty() => Ok(BindPlan::Tree {
                path,
                fd,
                is_dir: kind == BIND_DIR,
            }),
            _ => Err(bad()),
        }
    }
}

/// Plan the read-only bind of host path `path`, looked up beneath `root` (`/` on
/// the host side, the old root inside the init). `None` when it does not exist.
pub fn plan_bind(path: &Path, root: &Path) -> R<Option<BindPlan>> {
    plan_bind_with(
        path,
        root,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )
}

/// Plan the read-write bind of a host directory (it must exist and be a real
/// directory, not a link).
pub fn plan_rw_bind(path: &Path, root: &Path) -> R<BindPlan> {
    let src = root.join(path.strip_prefix("/").unwrap_or(path));
    match fs::symlink_metadata(&src) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "read-write bind {} is not a directory",
                path.display()
            ));
        }
        Err(e) => return Err(format!("read-write bind {}: {e}", path.display())),
    }
    plan_bind_with(path, root, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)?
        .ok_or_else(|| format!("read-write bind {} is not accessible", path.display()))
}

fn plan_bind_with(path: &Path, root: &Path, attrs: u64) -> R<Option<BindPlan>> {
    let src = root.join(path.strip_prefix("/").unwrap_or(path));
    let meta = match fs::symlink_metadata(&src) {
        Ok(m) => m,
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.kind() == io::ErrorKind::PermissionDenied =>
        {
            return Ok(None);
        }
        Err(e) => return Err(format!("binding {}: {e}", path.display())),
    };
    if meta.file_type().is_symlink() {
        let target =
            fs::read_link(&src).map_err(ctx(|| format!("reading link {}", path.display())))?;
        return Ok(Some(BindPlan::Link {
            path: path.to_path_buf(),
            target,
        }));
    }
    let fd = open_tree_clone(libc::AT_FDCWD, &cs(&src)?, 0)
        .map_err(ctx(|| format!("cloning the mount of {}", path.display())))?;
    mount_setattr_fd(fd.as_raw_fd(), attrs, 0, None)
        .map_err(ctx(|| format!("securing the bind of {}", path.display())))?;
    Ok(Some(BindPlan::Tree {
        path: path.to_path_buf(),
        fd,
        is_dir: meta.is_dir(),
    }))
}

/// Carry out a planned bind in the new root.
fn apply_bind(plan: &BindPlan) -> R<()> {
    match plan {
        BindPlan::Link { path, target } => {
            if let Some(parent) = path.parent() {
                mkdir_p(parent)?;
            }
            match symlink(target, path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(format!("linking {}: {e}", path.display())),
            }
        }
        BindPlan::Tree { path, fd, is_dir } => {
            if *is_dir {
                mkdir_p(path)?;
            } else {
                if let Some(parent) = path.parent() {
                    mkdir_p(parent)?;
                }
                fs::File::create(path)
                    .map_err(ctx(|| format!("creating mount point {}", path.display())))?;
            }
            move_mount_to(fd.as_raw_fd(), &cs(path)?)
                .map_err(ctx(|| format!("mounting {}", path.display())))?;
            forget_under(path);
            Ok(())
        }
    }
}

/// Every path the root gets read-only: the system directories, then the spec's.
pub fn bind_paths(spec: &Spec) -> R<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = SYSTEM_DIRS.iter().map(PathBuf::from).collect();
    for p in &spec.ro_binds {
        if !p.is_absolute() {
            return Err(format!(
                "read-only bind {} is not an absolute path",
                p.display()
            ));
        }
        v.push(p.clone());
    }
    Ok(v)
}

/// Plan every read-only bind beneath `root`.
pub fn plan_ro_binds(spec: &Spec, root: &Path) -> R<Vec<BindPlan>> {
    let mut plans = Vec::new();
    for p in bind_paths(spec)? {
        if let Some(plan) = plan_bind(&p, root)? {
            plans.push(plan);
        }
    }
    Ok(plans)
}

/// Check the read-write binds of a spec: absolute, and not inside another one.
pub fn check_rw_binds(spec: &Spec) -> R<()> {
    for p in &spec.rw_binds {
        if !p.is_absolute() {
            return Err(format!(
                "read-write bind {} is not an absolute path",
                p.display()
            ));
        }
        if p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!("read-write bind {} contains '..'", p.display()));
        }
        for fixed in ["/", "/proc", "/dev", "/tmp", "/workspace", "/etc", CODE_DIR] {
            if p == Path::new(fixed) {
                return Err(format!("{} cannot be a read-write bind", p.display()));
            }
        }
    }
    Ok(())
}

/// Plan every bind beneath `root`: the read-only ones, then the read-write ones
/// (plain binds: used inside the init of an unprivileged user, where files
/// belong to that user anyway).
pub fn plan_binds(spec: &Spec, root: &Path) -> R<Vec<BindPlan>> {
    let mut plans = plan_ro_binds(spec, root)?;
    for p in &spec.rw_binds {
        plans.push(plan_rw_bind(p, root)?);
    }
    Ok(plans)
}

fn write_file(path: &Path, content: &[u8], mode: u32) -> R<()> {
    if let Some(parent) = path.parent() {
        mkdir_p(parent)?;
    }
    fs::write(path, content).map_err(ctx(|| format!("writing {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(ctx(|| format!("setting the mode of {}", path.display())))
}

/// What the supervisor prepared on the host side, when running as root: the
/// read-only binds and an idmapped workspace, as detached mounts to attach here.
#[derive(Default)]
pub struct Prepared {
    /// The supervisor plans the binds (as root) and sends them over the control
    /// socket after the clone; otherwise the init plans them from the old root.
    pub binds_from_supervisor: bool,
    pub workspace: Option<OwnedFd>,
    pub overlay: Option<OverlayLayers>,
}

/// The layers of a copy-on-write workspace as detached mounts: `lower` read-only,
/// `rw` the directory holding the upper and work directories (overlayfs wants both
/// on one mount). Cloned on the host side as root (the sandbox's id cannot walk
/// the root-only state directory), else inside the init from the old root.
pub struct OverlayLayers {
    pub lower: OwnedFd,
    pub rw: OwnedFd,
}

/// Where the layers are attached, in the new root, while the overlay is mounted.
const OVL_STAGE: &str = "/.aisbx-ovl";

/// The basename of an overlay upper or work directory, checked for use in the
/// mount options.
pub fn overlay_dir_name(p: &Path) -> R<String> {
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && !n.contains([',', ':', '\\']) && *n != "..")
        .ok_or_else(|| format!("overlay directory {} has an unusable name", p.display()))?;
    Ok(name.to_string())
}

/// Clone the overlay layers, looked up beneath `root`.
pub fn plan_overlay(lower: &Path, upper: &Path, root: &Path) -> R<OverlayLayers> {
    let beneath = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let rw_dir = upper
        .parent()
        .ok_or_else(|| format!("overlay upper {} has no parent", upper.display()))?;
    let lower_fd = open_tree_clone(libc::AT_FDCWD, &cs(&beneath(lower))?, 0)
        .map_err(ctx(|| format!("cloning the mount of {}", lower.display())))?;
    // The lower layer is read-only at the mount level too: overlayfs never writes it,
    // and nothing else can through this mount.
    mount_setattr_fd(
        lower_fd.as_raw_fd(),
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        0,
        None,
    )
    .map_err(ctx(|| format!("making {} read-only", lower.display())))?;
    let rw_fd = open_tree_clone(libc::AT_FDCWD, &cs(&beneath(rw_dir))?, 0)
        .map_err(ctx(|| format!("cloning the mount of {}", rw_dir.display())))?;
    mount_setattr_fd(
        rw_fd.as_raw_fd(),
        MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        0,
        None,
    )
    .map_err(ctx(|| format!("securing {}", rw_dir.display())))?;
    Ok(OverlayLayers {
        lower: lower_fd,
        rw: rw_fd,
    })
}

/// Mount the copy-on-write workspace at /workspace, in the new root (after the
/// pivot, before the host root is detached). The layers are attached under a
/// staging directory, overlayfs takes its own private references to them, and the
/// staging mounts are detached again: the program never sees the layers.
///
/// Options: `userxattr` (the mounter is the sandbox's user namespace, so overlay
/// metadata lives in `user.overlay.*`); `redirect_dir=nofollow`, `metacopy=off`,
/// `index=off` so that the upper directory holds only plain files, directories,
/// symlinks, whiteouts and opaque markers, which aisbx can read back on the host.
fn mount_overlay(layers: &OverlayLayers, upper: &str, work: &str) -> R<()> {
    let stage = Path::new(OVL_STAGE);
    let lower_at = stage.join("lower");
    let rw_at = stage.join("rw");
    mkdir_p(&lower_at)?;
    mkdir_p(&rw_at)?;
    move_mount_to(layers.lower.as_raw_fd(), &cs(&lower_at)?)
        .map_err(ctx(|| "attaching the snapshot layer".to_string()))?;
    move_mount_to(layers.rw.as_raw_fd(), &cs(&rw_at)?)
        .map_err(ctx(|| "attaching the writable layer".to_string()))?;
    let opts = format!(
        "userxattr,redirect_dir=nofollow,metacopy=off,index=off,lowerdir={},upperdir={}/{upper},workdir={}/{work}",
        lower_at.display(),
        rw_at.display(),
        rw_at.display()
    );
    mnt(
        Some("overlay"),
        "/workspace",
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&opts),
    )?;
    for p in [&lower_at, &rw_at] {
        umount2(p, MntFlags::MNT_DETACH)
            .map_err(|e| format!("detaching the staging mount {}: {e}", p.display()))?;
        fs::remove_dir(p).map_err(ctx(|| format!("removing {}", p.display())))?;
    }
    forget_made();
    fs::remove_dir(stage).map_err(ctx(|| format!("removing {}", stage.display())))
}

/// Build the whole root and pivot into it. Runs in the sandbox init, in its own
/// user and mount namespaces, before the program is forked.
pub fn build_root(
    spec: &Spec,
    prepared: &Prepared,
    receive_binds: impl FnOnce() -> R<Vec<BindPlan>>,
) -> R<()> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    // Nothing we do may propagate back to the host.
    mnt(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;
    mnt(
        Some("tmpfs"),
        BASE,
        Some("tmpfs"),
        nosuid_nodev,
        Some("mode=0755,size=16m,nr_inodes=8192"),
    )?;
    let put_old = PathBuf::from(BASE).join(OLD.trim_start_matches('/'));
    mkdir_p(&put_old)?;
    nix::unistd::pivot_root(BASE, &put_old).map_err(|e| format!("pivot_root: {e}"))?;
    forget_made();
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;

    let plans = if prepared.binds_from_supervisor {
        receive_binds()?
    } else {
        plan_binds(spec, Path::new(OLD))?
    };
    plans.iter().try_for_each(apply_bind)?;

    // /etc: only what the service synthesized or chose to bind.
    mkdir_p(Path::new("/etc"))?;
    for (name, content) in &spec.etc_files {
        if name.contains('/') || name.starts_with('.') {
            return Err(format!("bad /etc file name {name:?}"));
        }
        write_file(&Path::new("/etc").join(name), content, 0o644)?;
    }

    // A fresh /proc for the new pid namespace, with the kernel knobs read-only.
    mkdir_p(Path::new("/proc"))?;
    mnt(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    limit_user_namespace()?;
    for p in PROC_READONLY {
        let path = Path::new("/proc").join(p);
        // Entries this kernel lacks are skipped.
        let cloned = open_tree_clone(libc::AT_FDCWD, &cs(&path)?, 0);
        if !matches!(&cloned, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            let fd = cloned.map_err(ctx(|| format!("cloning {}", path.display())))?;
            mount_setattr_fd(
                fd.as_raw_fd(),
                MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                0,
                None,
            )
            .map_err(ctx(|| format!("making {} read-only", path.display())))?;
            move_mount_to(fd.as_raw_fd(), &cs(&path)?)
                .map_err(ctx(|| format!("covering {}", path.display())))?;
        }
    }

    let sizes = tmpfs_sizes(spec);
    build_dev(sizes.dev)?;

    // /tmp and /workspace.
    mkdir_p(Path::new("/tmp"))?;
    mnt(
        Some("tmpfs"),
        "/tmp",
        Some("tmpfs"),
        nosuid_nodev,
        Some(&format!("mode=1777,size={}", sizes.tmp)),
    )?;
    mkdir_p(Path::new("/workspace"))?;
    match (&spec.workspace, &prepared.workspace) {
        (_, Some(fd)) => {
            move_mount_to(fd.as_raw_fd(), c"/workspace")
                .map_err(ctx(|| "mounting the workspace".to_string()))?;
        }
        (Workspace::Overlay { lower, upper, work }, None) => {
            let (u, w) = (overlay_dir_name(upper)?, overlay_dir_name(work)?);
            match &prepared.overlay {
                Some(layers) => mount_overlay(layers, &u, &w)?,
                None => mount_overlay(&plan_overlay(lower, upper, Path::new(OLD))?, &u, &w)?,
            }
        }
        (Workspace::Tmpfs { size_bytes }, None) => mnt(
            Some("tmpfs"),
            "/workspace",
            Some("tmpfs"),
            nosuid_nodev,
            Some(&format!(
                "mode=0755,uid={SANDBOX_ID},gid={SANDBOX_ID},size={}",
                sizes.workspace.unwrap_or(*size_bytes)
            )),
        )?,
        (Workspace::Bind { host }, None) => {
            let src = Path::new(OLD).join(host.strip_prefix("/").unwrap_or(host));
            let fd = open_tree_clone(libc::AT_FDCWD, &cs(&src)?, 0)
                .map_err(ctx(|| format!("cloning the mount of {}", host.display())))?;
            mount_setattr_fd(
                fd.as_raw_fd(),
                MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                0,
                None,
            )
            .map_err(ctx(|| format!("securing {}", host.display())))?;
            move_mount_to(fd.as_raw_fd(), c"/workspace")
                .map_err(ctx(|| "mounting the workspace".to_string()))?;
        }
    }

    // Code given to the run, read-only with the root.
    let code_dir = Path::new(CODE_DIR);
    mkdir_p(code_dir)?;
    for (name, content) in &spec.code_files {
        if name.contains('/') || name.starts_with('.') || name.is_empty() {
            return Err(format!("bad code file name {name:?}"));
        }
        write_file(&code_dir.join(name), content, 0o755)?;
    }

    // Detach the host root for good.
    umount2(OLD, MntFlags::MNT_DETACH).map_err(|e| format!("detaching the host root: {e}"))?;
    fs::remove_dir(OLD).map_err(ctx(|| "removing the old root mount point".to_string()))?;
    forget_made();
    mount_setattr_path(
        c"/",
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )
    .map_err(ctx(|| "making the root read-only".to_string()))?;
    Ok(())
}

fn build_dev(size: u64) -> R<()> {
    mkdir_p(Path::new("/dev"))?;
    // One tmpfs for /dev and the POSIX shared memory in /dev/shm (64 MiB between
    // them, less for a small memory limit); the devices are binds with their own
    // mount flags.
    mnt(
        Some("tmpfs"),
        "/dev",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(&format!("mode=0755,size={size},nr_inodes=4096")),
    )?;
    for d in DEVICES {
        let src = Path::new("/dev").join(d);
        let old_src = Path::new(OLD).join("dev").join(d);
        // Devices the host lacks are skipped.
        let fd = match open_tree_clone(libc::AT_FDCWD, &cs(&old_src)?, 0) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            r => r.map_err(ctx(|| format!("cloning {}", old_src.display())))?,
        };
        fs::File::create(&src).map_err(ctx(|| format!("creating {}", src.display())))?;
        mount_setattr_fd(
            fd.as_raw_fd(),
            MOUNT_ATTR_NOSUID | crate::sys::MOUNT_ATTR_NOEXEC,
            0,
            None,
        )
        .map_err(ctx(|| format!("securing {}", src.display())))?;
        move_mount_to(fd.as_raw_fd(), &cs(&src)?)
            .map_err(ctx(|| format!("mounting {}", src.display())))?;
    }
    mkdir_p(Path::new("/dev/pts"))?;
    mnt(
        Some("devpts"),
        "/dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    mkdir_p(Path::new("/dev/shm"))?;
    fs::set_permissions("/dev/shm", fs::Permissions::from_mode(0o1777))
        .map_err(ctx(|| "setting the mode of /dev/shm".to_string()))?;
    for (link, target) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, link).map_err(ctx(|| format!("linking {link}")))?;
    }
    Ok(())
}

/// Check a workspace-relative path: no absolute paths, no `..`, nothing empty.
pub fn check_relative(p: &str) -> R<PathBuf> {
    let path = Path::new(p);
    if p.is_empty() || p.contains('\0') {
        return Err(format!("file path {p:?} is empty or contains a NUL byte"));
    }
    if path.is_absolute() {
        return Err(format!(
            "file path {p:?} is absolute; give a path relative to /workspace"
        ));
    }
    for c in path.components() {
        match c {
            std::path::Component::Normal(_) | std::path::Component::CurDir => {}
            _ => return Err(format!("file path {p:?} leaves the workspace")),
        }
    }
    Ok(path.to_path_buf())
}

/// Write the request's files into /workspace. Runs in the program's process after
/// every capability is dropped; no component may be a symlink.
pub fn write_workspace_files(files: &[(String, Vec<u8>)]) -> R<()> {
    for (name, content) in files {
        let rel = check_relative(name)?;
        let mut dir = PathBuf::from("/workspace");
        let comps: Vec<_> = rel.components().collect();
        for (i, c) in comps.iter().enumerate() {
            dir.push(c.as_os_str());
            let last = i + 1 == comps.len();
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(format!("file path {name:?} goes through a symlink"));
                }
                Ok(m) if !last && !m.is_dir() => {
                    return Err(format!(
                        "file path {name:?}: {} is not a directory",
                        dir.display()
                    ));
                }
                Ok(_) => {}
                Err(_) if !last => {
                    fs::create_dir(&dir).map_err(ctx(|| format!("creating {}", dir.display())))?
                }
                Err(_) => {}
            }
        }
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&dir)
            .map_err(ctx(|| format!("writing {name}")))?;
        f.write_all(content)
            .map_err(ctx(|| format!("writing {name}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_plans_cross_the_socket_intact() {
        let link = BindPlan::Link {
            path: "/bin".into(),
            target: "usr/bin".into(),
        };
        let (m, fd) = link.encode();
        assert!(fd.is_none());
        match BindPlan::decode(&m, None).unwrap() {
            BindPlan::Link { path, target } => {
                assert_eq!(path, Path::new("/bin"));
                assert_eq!(target, Path::new("usr/bin"));
            }
            BindPlan::Tree { .. } => panic!("a link came back as a tree"),
        }
        let null: OwnedFd = fs::File::open("/dev/null").unwrap().into();
        let tree = BindPlan::Tree {
            path: "/etc/odd name\nwith newline".into(),
            fd: null,
            is_dir: false,
        };
        let (m, fd) = tree.encode();
        let dup = fd.map(|f| {
            // SAFETY: duplicating a live fd into one we own.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(libc::dup(f)) }
        });
        match BindPlan::decode(&m, dup).unwrap() {
            BindPlan::Tree { path, is_dir, .. } => {
                assert_eq!(path, Path::new("/etc/odd name\nwith newline"));
                assert!(!is_dir);
            }
            BindPlan::Link { .. } => panic!("a tree came back as a link"),
        }
        // A tree without its fd, a truncated message, an unknown kind: refused.
        assert!(BindPlan::decode(&m, None).is_err());
        assert!(BindPlan::decode(&m[..3], None).is_err());
        assert!(BindPlan::decode(&[7, 0, 0, 0, 0], None).is_err());
    }

    fn spec(memory: u64, workspace: Workspace, tmp: u64) -> Spec {
        Spec {
            argv: vec!["/bin/true".into()],
            env: Vec::new(),
            cwd: "/workspace".into(),
            ro_binds: Vec::new(),
            rw_binds: Vec::new(),
            etc_files: Vec::new(),
            code_files: Vec::new(),
            workspace,
            workspace_files: Vec::new(),
            limits: crate::Limits {
                wall: std::time::Duration::from_secs(1),
                memory_bytes: memory,
                pids: 16,
                cpus: 1.0,
                nofile: 64,
                tmp_bytes: tmp,
                output_bytes: 1024,
            },
            stdin: crate::Stdin::Null,
            hostname: "aisbx".into(),
            landlock: crate::Enforcement::BestEffort,
            seccomp: crate::SeccompLevel::Default,
            require_cgroups: false,
            net: None,
            host_id: None,
        }
    }

    #[test]
    fn tmpfs_sizes_stay_below_the_memory_limit() {
        const M: u64 = 1 << 20;
        let ws = |n: u64| Workspace::Tmpfs { size_bytes: n };
        // Room for every cap: unchanged.
        let s = tmpfs_sizes(&spec(2048 * M, ws(1024 * M), 256 * M));
        assert_eq!(
            s,
            TmpfsSizes {
                workspace: Some(1024 * M),
                tmp: 256 * M,
                dev: 64 * M
            }
        );
        // 256 MiB of memory: 192 MiB between them, in proportion to the caps.
        let s = tmpfs_sizes(&spec(256 * M, ws(1024 * M), 256 * M));
        let sum = s.workspace.unwrap_or(0) + s.tmp + s.dev;
        assert!(sum <= 192 * M && sum > 191 * M, "{s:?}");
        assert!(
            s.workspace.unwrap_or(0) > 4 * s.tmp && s.tmp > 3 * s.dev,
            "{s:?}"
        );
        // Only /tmp and /dev when the workspace is not a tmpfs.
        let s = tmpfs_sizes(&spec(
            64 * M,
            Workspace::Bind {
                host: "/srv/x".into(),
            },
            256 * M,
        ));
        assert_eq!(s.workspace, None);
        assert!(s.tmp + s.dev <= 48 * M, "{s:?}");
        // Whole pages, never zero; no overflow for huge values.
        for (mem, w, t) in [
            (4 * M, 1, 1),
            (4 * M, u64::MAX, u64::MAX),
            (u64::MAX, u64::MAX, u64::MAX),
            (5 * M + 7, 3 * M + 1, M - 1),
        ] {
            let s = tmpfs_sizes(&spec(mem, ws(w), t));
            for v in [s.workspace.unwrap_or(4096), s.tmp, s.dev] {
                assert!(v >= 4096 && v % 4096 == 0, "{mem} {w} {t}: {s:?}");
            }
            if mem < u64::MAX {
                // Rounding down to pages keeps the sum in the budget; the
                // one-page minimum may add a page to a tiny one.
                assert!(
                    s.workspace.unwrap_or(0) + s.tmp + s.dev <= mem / 4 * 3 + 2 * 4096,
                    "{mem} {w} {t}: {s:?}"
                );
            }
        }
    }

    #[test]
    fn relative_paths_are_checked() {
        assert!(check_relative("a/b.txt").is_ok());
        assert!(check_relative("./a").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a\0b"] {
            assert!(check_relative(bad).is_err(), "{bad:?} accepted");
        }
    }
}
