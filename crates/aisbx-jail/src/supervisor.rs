//! The host side of a run: prepare, clone the init into its namespaces, map ids,
//! place it in cgroups, then stream output, enforce the wall clock and collect the
//! outcome. Everything the run made is gone when [`run`] returns.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use crate::cgroup::RunCgroup;
use crate::child::{InitCtx, init_main};
use crate::mounts::{BIND_END, BindPlan, Prepared, check_rw_binds, plan_ro_binds, plan_rw_bind};
use crate::sys::{clone_fork, thread_count, write_all};
use crate::{
    DEFAULT_HOST_ID, JailError, Outcome, SANDBOX_ID, Sink, Spec, Stdin, Workspace, seccomp,
};

/// The namespaces the init is cloned into. It enters new net, ipc and uts
/// namespaces itself right away ([`crate::child::LATE_NAMESPACES`]), so that
/// creating them (a network namespace takes a while) overlaps the supervisor's
/// work on id maps and cgroups.
const NAMESPACES: libc::c_int = libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID;

/// Upper bounds that keep a specification sane.
const MAX_ARGV_BYTES: usize = 1 << 20;

fn pipe() -> Result<(OwnedFd, OwnedFd), JailError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(JailError::io(
            "creating a pipe",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the kernel returned two new fds that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn socketpair() -> Result<(OwnedFd, OwnedFd), JailError> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType};
    nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| JailError::io("creating the control socket", e.into()))
}

/// Tell the init its cgroups are ready: RLIMIT_DATA for the program, and the v1
/// `tasks` files to join through.
fn send_cgroup_ready(sock: &OwnedFd, data_limit: u64, join: &[OwnedFd]) -> Result<(), JailError> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let raw: Vec<std::os::fd::RawFd> = join.iter().map(|f| f.as_raw_fd()).collect();
    let bytes = data_limit.to_le_bytes();
    let iov = [std::io::IoSlice::new(&bytes)];
    let cmsgs: Vec<ControlMessage> = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None)
        .map(|_| ())
        .map_err(|e| JailError::io("handing the cgroups to the sandbox", e.into()))
}

fn validate(spec: &Spec) -> Result<(), JailError> {
    let bad = |m: &str| Err(JailError::InvalidSpec(m.to_string()));
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return bad("no program to run");
    }
    let total: usize = spec.argv.iter().map(|a| a.len() + 1).sum::<usize>()
        + spec
            .env
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
    if total > MAX_ARGV_BYTES {
        return bad("the arguments and environment exceed 1 MiB");
    }
    if spec.argv.iter().any(|a| a.contains('\0'))
        || spec
            .env
            .iter()
            .any(|(k, v)| k.contains(['\0', '=']) || v.contains('\0'))
    {
        return bad(
            "an argument or environment variable contains a NUL byte (or a name contains '=')",
        );
    }
    if let Some(n) = &spec.net
        && (!n.dir.is_absolute() || n.port == 0 || n.port == 53)
    {
        return bad(
            "the network relay needs an absolute socket directory and a port other than 0 and 53",
        );
    }
    if !spec.cwd.starts_with('/') {
        return bad("the working directory must be an absolute path inside the sandbox");
    }
    let l = &spec.limits;
    if l.memory_bytes < (4 << 20)
        || l.pids < 2
        || l.cpus <= 0.0
        || l.nofile < 16
        || l.wall.is_zero()
    {
        return bad(
            "limits too small: memory ≥ 4 MiB, pids ≥ 2, cpus > 0, open files ≥ 16, time > 0",
        );
    }
    Ok(())
}

/// The host id a root-run sandbox maps to unless its workspace has another
/// owner: the spec's, else [`DEFAULT_HOST_ID`].
fn chosen_host_id(spec: &Spec) -> u32 {
    spec.host_id.unwrap_or(DEFAULT_HOST_ID)
}

/// Which host uid/gid the sandbox user maps to.
fn host_ids(spec: &Spec) -> Result<(u32, u32), JailError> {
    // SAFETY: getters without preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if let Some(id) = spec.host_id {
        if euid != 0 {
            return Err(JailError::InvalidSpec(
                "a host id for the sandbox can be chosen only by root; leave it unset".into(),
            ));
        }
        if id < DEFAULT_HOST_ID || id == u32::MAX {
            return Err(JailError::InvalidSpec(format!(
                "host id {id} is not an unused unprivileged id (from {DEFAULT_HOST_ID} up)"
            )));
        }
    }
    if euid != 0 {
        return Ok((euid, egid));
    }
    if let Workspace::Bind { host } | Workspace::Overlay { upper: host, .. } = &spec.workspace {
        let m = std::fs::metadata(host)
            .map_err(|e| JailError::io(format!("workspace {}", host.display()), e))?;
        if m.uid() != 0 {
            return Ok((m.uid(), m.gid()));
        }
    }
    let id = chosen_host_id(spec);
    Ok((id, id))
}

/// An idmapped, detached copy of a directory (a root-owned workspace, a
/// read-write bind), so that what the sandbox writes there belongs to the
/// directory's owner on the host while the sandbox runs as an unprivileged id.
/// Prepared on the host side (it needs host privileges).
fn idmapped_workspace(
    host: &std::path::Path,
    host_uid: u32,
    host_gid: u32,
) -> Result<OwnedFd, JailError> {
    use crate::sys::{
        MOUNT_ATTR_IDMAP, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, mount_setattr_fd, open_tree_clone,
    };
    let m = std::fs::metadata(host)
        .map_err(|e| JailError::io(format!("workspace {}", host.display()), e))?;
    // A throwaway user namespace whose mapping is the mount's: on-disk owner ↔
    // the sandbox's host id.
    let (r, w) = pipe()?;
    // SAFETY: single-threaded (checked by the caller); the child only blocks on read.
    let pid = unsafe { clone_fork(libc::CLONE_NEWUSER) }
        .map_err(|e| JailError::io("creating an id-mapping namespace", e))?;
    if pid == 0 {
        drop(w);
        let mut b = [0u8; 1];
        // SAFETY: read into a local buffer, then exit.
        unsafe {
            libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1);
            libc::_exit(0)
        }
    }
    drop(r);
    let result = (|| {
        std::fs::write(
            format!("/proc/{pid}/uid_map"),
            format!("{} {host_uid} 1\n", m.uid()),
        )
        .map_err(|e| JailError::io("writing the workspace uid map", e))?;
        std::fs::write(format!("/proc/{pid}/setgroups"), "deny\n")
            .map_err(|e| JailError::io("setgroups", e))?;
        std::fs::write(
            format!("/proc/{pid}/gid_map"),
            format!("{} {host_gid} 1\n", m.gid()),
        )
        .map_err(|e| JailError::io("writing the workspace gid map", e))?;
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/user"))
            .map_err(|e| JailError::io("opening the mapping namespace", e))?;
        let path = std::ffi::CString::new(host.as_os_str().as_encoded_bytes())
            .map_err(|_| JailError::InvalidSpec("workspace path contains a NUL byte".into()))?;
        let fd = open_tree_clone(libc::AT_FDCWD, &path, 0)
            .map_err(|e| JailError::io(format!("cloning the mount of {}", host.display()), e))?;
        mount_setattr_fd(fd.as_raw_fd(), MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, Some(ns.as_raw_fd())).map_err(|e| {
            JailError::Setup(format!(
                "cannot map ownership of the root-owned workspace {} ({e}); its file system may not support idmapped mounts: use a directory owned by a non-root user",
                host.display()
            ))
        })?;
        Ok(fd)
    })();
    drop(w);
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    result
}

/// The binds, planned on the host side as root: the sandbox's id cannot read
/// root-only host directories (a pyenv under /root, say), so the read-only binds
/// are cloned here, with host privileges. What the sandbox writes to a read-write
/// bind belongs to the directory's owner, through an idmapped mount when that is
/// not the sandbox's id.
fn host_binds(spec: &Spec, host_uid: u32, host_gid: u32) -> Result<Vec<BindPlan>, JailError> {
    let mut plans = plan_ro_binds(spec, std::path::Path::new("/")).map_err(JailError::Setup)?;
    for p in &spec.rw_binds {
        let meta = std::fs::metadata(p)
            .map_err(|e| JailError::io(format!("read-write bind {}", p.display()), e))?;
        if meta.uid() == host_uid {
            plans.push(plan_rw_bind(p, std::path::Path::new("/")).map_err(JailError::Setup)?);
        } else {
            plans.push(BindPlan::Tree {
                path: p.clone(),
                fd: idmapped_workspace(p, host_uid, host_gid)?,
                is_dir: true,
            });
        }
    }
    Ok(plans)
}

/// The forwarder of a run with network runs as the sandbox's host id and
/// connects to the sockets in `dir`: the directory must be that id's and no
/// one else's (`0700`). Opened without following a link, changed through the fd.
fn hand_socket_dir(dir: &std::path::Path, uid: u32, gid: u32) -> Result<(), JailError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(|e| JailError::io(format!("network socket directory {}", dir.display()), e))?;
    let m = f
        .metadata()
        .map_err(|e| JailError::io(format!("network socket directory {}", dir.display()), e))?;
    if m.mode() & 0o077 != 0 {
        return Err(JailError::InvalidSpec(format!(
            "the network socket directory {} is open to other users; it must be 0700",
            dir.display()
        )));
    }
    if (m.uid(), m.gid()) != (uid, gid) {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(|e| {
            JailError::io(
                format!(
                    "handing the network socket directory {} to the sandbox's id",
                    dir.display()
                ),
                e,
            )
        })?;
    }
    Ok(())
}

/// Hand the planned binds to the init, one message per bind (see
/// [`BindPlan::encode`]), then the end marker.
fn send_binds(sock: &OwnedFd, plans: &[BindPlan]) -> Result<(), JailError> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let send = |m: &[u8], fd: Option<std::os::fd::RawFd>| {
        let fds = fd.map(|f| [f]);
        let cmsgs: Vec<ControlMessage> = fds
            .as_ref()
            .map(|f| ControlMessage::ScmRights(f))
            .into_iter()
            .collect();
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[std::io::IoSlice::new(m)],
            &cmsgs,
            MsgFlags::empty(),
            None,
        )
        .map(|_| ())
        .map_err(|e| JailError::io("handing the binds to the sandbox", e.into()))
    };
    for p in plans {
        let (m, fd) = p.encode();
        send(&m, fd)?;
    }
    send(&[BIND_END], None)
}

/// Host-side checks of a copy-on-write workspace: three directories, upper and
/// work side by side with usable names, the writable ones not root's (the sandbox
/// runs as their owner, and must never run as, or write as, root).
fn check_overlay(
    lower: &std::path::Path,
    upper: &std::path::Path,
    work: &std::path::Path,
) -> Result<(), JailError> {
    for (what, p) in [("lower", lower), ("upper", upper), ("work", work)] {
        let m = std::fs::symlink_metadata(p)
            .map_err(|e| JailError::io(format!("overlay {what} {}", p.display()), e))?;
        if !m.is_dir() || !p.is_absolute() {
            return Err(JailError::InvalidSpec(format!(
                "overlay {what} {} is not an absolute path to a directory",
                p.display()
            )));
        }
        if what != "lower" && m.uid() == 0 {
            return Err(JailError::InvalidSpec(format!(
                "overlay {what} {} belongs to root; it must belong to the sandbox's user",
                p.display()
            )));
        }
    }
    if upper.parent() != work.parent() {
        return Err(JailError::InvalidSpec(
            "overlay upper and work directories must be side by side".into(),
        ));
    }
    crate::mounts::overlay_dir_name(upper).map_err(JailError::InvalidSpec)?;
    crate::mounts::overlay_dir_name(work).map_err(JailError::InvalidSpec)?;
    Ok(())
}

/// The program's stdin when the supervisor writes it: the write end of a pipe,
/// what is still to be written, and where more comes from (a socket relayed to
/// the pipe), if anywhere.
struct Feed {
    w: OwnedFd,
    buf: Vec<u8>,
    src: Option<OwnedFd>,
}

/// What the program gets when aisbx passes its own stdin on.
enum InheritedStdin {
    /// The fd itself (or a read-only reopening of it).
    Fd(OwnedFd),
    /// A socket: relayed through a pipe by the supervisor.
    Relay(OwnedFd),
}

/// aisbx's stdin, for the program: only a pipe, a regular file, a terminal or
/// `/dev/null` reaches the sandbox, and only for reading. A pipe or regular file
/// open for writing too is reopened read-only (a regular file at the same
/// offset); a socket is relayed through a pipe, so the sandbox never holds it;
/// anything else (a directory, a device, ...) is refused: it would hand the
/// sandbox a host object that its own file system does not have.
fn inherited_stdin() -> Result<InheritedStdin, JailError> {
    let null = || -> Result<OwnedFd, JailError> {
        Ok(std::fs::File::open("/dev/null")
            .map_err(|e| JailError::io("/dev/null", e))?
            .into())
    };
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(0, &mut st) } != 0 {
        // No stdin at all.
        return null().map(InheritedStdin::Fd);
    }
    let dup = || -> Result<OwnedFd, JailError> {
        // SAFETY: duplicating our fd 0.
        let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
        if fd < 0 {
            return Err(JailError::io(
                "duplicating stdin",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: we own the duplicate.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    // SAFETY: plain fcntl on fd 0.
    let read_only = unsafe { libc::fcntl(0, libc::F_GETFL) } & libc::O_ACCMODE == libc::O_RDONLY;
    let reopen = |keep_offset: bool| -> Result<OwnedFd, JailError> {
        let f = std::fs::File::open("/proc/self/fd/0")
            .map_err(|e| JailError::io("reopening stdin read-only", e))?;
        if keep_offset {
            // SAFETY: lseek on fds we hold.
            unsafe {
                let at = libc::lseek(0, 0, libc::SEEK_CUR);
                if at > 0 {
                    libc::lseek(f.as_raw_fd(), at, libc::SEEK_SET);
                }
            }
        }
        Ok(f.into())
    };
    let refuse = |what: &str| {
        Err(JailError::InvalidSpec(format!(
            "standard input is {what}; a sandbox reads only a pipe, a regular file, a terminal or /dev/null: redirect stdin from a file or from /dev/null"
        )))
    };
    match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO if read_only => dup().map(InheritedStdin::Fd),
        libc::S_IFIFO => reopen(false).map(InheritedStdin::Fd),
        libc::S_IFREG if read_only => dup().map(InheritedStdin::Fd),
        libc::S_IFREG => reopen(true).map(InheritedStdin::Fd),
        libc::S_IFSOCK => dup().map(InheritedStdin::Relay),
        // SAFETY: isatty on fd 0.
        libc::S_IFCHR if unsafe { libc::isatty(0) } == 1 => dup().map(InheritedStdin::Fd),
        libc::S_IFCHR if st.st_rdev == libc::makedev(1, 3) => null().map(InheritedStdin::Fd),
        libc::S_IFCHR => refuse("a device"),
        libc::S_IFBLK => refuse("a block device"),
        libc::S_IFDIR => refuse("a directory"),
        _ => refuse("neither a pipe nor a file"),
    }
}

struct Stream {
    fd: Option<OwnedFd>,
    buf: Vec<u8>,
    truncated: bool,
}

impl Stream {
    fn new(fd: OwnedFd) -> Self {
        Stream {
            fd: Some(fd),
            buf: Vec::new(),
            truncated: false,
        }
    }
}

/// Signals that end a run early when aisbx itself receives them.
fn block_signals() -> Result<(OwnedFd, libc::sigset_t), JailError> {
    // SAFETY: sigset manipulation and signalfd on valid structures.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::sigaddset(&mut set, s);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            return Err(JailError::io("signalfd", std::io::Error::last_os_error()));
        }
        Ok((OwnedFd::from_raw_fd(fd), old))
    }
}

/// Run one program in a fresh sandbox. Blocks until it has ended and everything it
/// left behind is gone. Called from a multi-threaded process it returns
/// [`JailError::NotSingleThreaded`] before doing anything.
///
/// When setting up fails, a missing isolation layer is the likelier cause than
/// whichever system call noticed it first: the failure then names the first
/// required layer that doctor finds missing, with its remedy, and the failed
/// step as a detail. Only a failed set-up probes; a run that works never does.
pub fn run(spec: &Spec, sink: &mut dyn Sink) -> Result<Outcome, JailError> {
    validate(spec)?;
    if thread_count() != 1 {
        return Err(JailError::NotSingleThreaded);
    }
    let mut ids = (chosen_host_id(spec), chosen_host_id(spec));
    match run_checked(spec, sink, &mut ids) {
        Err(e @ (JailError::Io { .. } | JailError::Setup(_))) => Err(missing_layer_or(e, ids)),
        other => other,
    }
}

/// `e`, or the first missing required layer if there is one.
fn missing_layer_or(e: JailError, host_ids: (u32, u32)) -> JailError {
    let Some(layer) = crate::doctor::first_missing_required(host_ids) else {
        return e;
    };
    let step = match e {
        JailError::Setup(m) => m,
        other => other.to_string(),
    };
    JailError::LayerMissing {
        message: format!("{} (the set-up failed at: {step})", layer.refusal()),
        layer: layer.name,
    }
}

fn run_checked(
    spec: &Spec,
    sink: &mut dyn Sink,
    ids: &mut (u32, u32),
) -> Result<Outcome, JailError> {
    let filters = seccomp::compile(spec.seccomp).map_err(JailError::Setup)?;
    // SAFETY: getter without preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // Supplementary groups (root's group among them) would follow the init into
    // the sandbox. The init drops them once its gid map is written: as root, the
    // supervisor writes that map itself; a non-root caller needs newgidmap (see
    // `groups`), else they stay. They are dropped after the clone, in the
    // sandbox's own user namespace, so that where user namespaces are missing
    // (root in a container that forbids them, whose setgroups is also denied)
    // that is what a failed run reports.
    let gid_mapper = if root || crate::groups::extra_groups().is_empty() {
        None
    } else {
        crate::groups::gid_mapper().ok()
    };
    let (host_uid, host_gid) = host_ids(spec)?;
    *ids = (host_uid, host_gid);
    let mut prepared = Prepared::default();
    if let Workspace::Bind { host } = &spec.workspace {
        if !host.is_dir() {
            return Err(JailError::InvalidSpec(format!(
                "workspace {} is not a directory",
                host.display()
            )));
        }
        if root && host_uid == chosen_host_id(spec) {
            prepared.workspace = Some(idmapped_workspace(host, host_uid, host_gid)?);
        }
    }
    if let Workspace::Overlay { lower, upper, work } = &spec.workspace {
        check_overlay(lower, upper, work)?;
        if root {
            prepared.overlay = Some(
                crate::mounts::plan_overlay(lower, upper, std::path::Path::new("/"))
                    .map_err(JailError::Setup)?,
            );
        }
    }
    check_rw_binds(spec).map_err(JailError::InvalidSpec)?;
    if let Some(net) = &spec.net {
        hand_socket_dir(&net.dir, host_uid, host_gid)?;
    }
    // As root the binds are planned here, after the clone (see `host_binds`).
    prepared.binds_from_supervisor = root;

    // The cgroups are made after the clone, while the sandbox builds its root.
    let mut cgroup: Option<RunCgroup> = None;
    let result = run_in(
        spec,
        sink,
        &filters,
        &mut cgroup,
        prepared,
        (host_uid, host_gid, gid_mapper),
    );
    if let Some(cg) = cgroup {
        // Kills whatever might be left (nothing, normally) and removes the cgroups.
        cg.destroy();
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    spec: &Spec,
    sink: &mut dyn Sink,
    filters: &seccomp::Filters,
    cgroup: &mut Option<RunCgroup>,
    prepared: Prepared,
    (host_uid, host_gid, gid_mapper): (u32, u32, Option<crate::groups::GidMapper>),
) -> Result<Outcome, JailError> {
    let (sync_r, sync_w) = socketpair()?;
    let (status_r, status_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let mut stdin_feed: Option<Feed> = None;
    let mut feed = |buf: Vec<u8>, src: Option<OwnedFd>| -> Result<OwnedFd, JailError> {
        let (r, w) = pipe()?;
        // SAFETY: making our write end non-blocking.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        stdin_feed = Some(Feed { w, buf, src });
        Ok(r)
    };
    let stdin_child: OwnedFd = match &spec.stdin {
        Stdin::Null => std::fs::File::open("/dev/null")
            .map_err(|e| JailError::io("/dev/null", e))?
            .into(),
        Stdin::Inherit => match inherited_stdin()? {
            InheritedStdin::Fd(fd) => fd,
            InheritedStdin::Relay(src) => feed(Vec::new(), Some(src))?,
        },
        Stdin::Bytes(b) => feed(b.clone(), None)?,
    };
    let (sigfd, old_mask) = block_signals()?;
    let start = Instant::now();

    // SAFETY: `run` checked that this process is single-threaded.
    let pid = match unsafe { clone_fork(NAMESPACES) } {
        Ok(p) => p,
        Err(e) => {
            // SAFETY: restoring the mask we saved.
            unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
            return Err(JailError::io(
                "creating the sandbox's user, mount and pid namespaces",
                e,
            ));
        }
    };
    if pid == 0 {
        let mut parent_fds = vec![
            sync_w.as_raw_fd(),
            status_r.as_raw_fd(),
            out_r.as_raw_fd(),
            err_r.as_raw_fd(),
            sigfd.as_raw_fd(),
        ];
        if let Some(f) = &stdin_feed {
            parent_fds.push(f.w.as_raw_fd());
            parent_fds.extend(f.src.as_ref().map(|s| s.as_raw_fd()));
        }
        init_main(InitCtx {
            spec,
            sync_r: sync_r.as_raw_fd(),
            status_w: status_w.as_raw_fd(),
            stdin: stdin_child.as_raw_fd(),
            stdout_w: out_w.as_raw_fd(),
            stderr_w: err_w.as_raw_fd(),
            parent_fds,
            filters,
            prepared,
        });
    }
    let binds_from_supervisor = prepared.binds_from_supervisor;
    drop((sync_r, status_w, out_w, err_w, stdin_child, prepared));

    let outcome = supervise(
        spec,
        sink,
        pid,
        cgroup,
        sync_w,
        status_r,
        out_r,
        err_r,
        stdin_feed,
        &sigfd,
        start,
        (host_uid, host_gid, binds_from_supervisor),
        gid_mapper,
    );
    // SAFETY: restoring the mask we saved.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
    outcome
}

/// The error the init reported ("E ..."), from what it wrote to the status pipe
/// before it exited; read without waiting.
fn init_report(status_r: &OwnedFd) -> Option<String> {
    // SAFETY: making our own fd non-blocking.
    unsafe { libc::fcntl(status_r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut buf = vec![0u8; 4096];
    // SAFETY: reading into our buffer.
    let n = unsafe { libc::read(status_r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(usize::try_from(n).ok()?);
    String::from_utf8_lossy(&buf)
        .lines()
        .find_map(|l| l.strip_prefix("E ").map(str::to_string))
}

fn kill_tree(pid: i32, cgroup: Option<&RunCgroup>) {
    // Killing the init of a pid namespace kills every process in it.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    if let Some(cg) = cgroup {
        cg.kill_all();
    }
}

#[allow(clippy::too_many_arguments)]
fn supervise(
    spec: &Spec,
    sink: &mut dyn Sink,
    pid: i32,
    cgroup_slot: &mut Option<RunCgroup>,
    sync_w: OwnedFd,
    status_r: OwnedFd,
    out_r: OwnedFd,
    err_r: OwnedFd,
    mut stdin_feed: Option<Feed>,
    sigfd: &OwnedFd,
    start: Instant,
    (host_uid, host_gid, binds_from_supervisor): (u32, u32, bool),
    gid_mapper: Option<crate::groups::GidMapper>,
) -> Result<Outcome, JailError> {
    let setup = (|| -> Result<(), JailError> {
        let w = |file: &str, content: String| {
            std::fs::write(format!("/proc/{pid}/{file}"), content)
                .map_err(|e| JailError::io(format!("writing {file} of the sandbox"), e))
        };
        w("uid_map", format!("{SANDBOX_ID} {host_uid} 1\n"))?;
        // As root (privileged over the parent namespace) or with newgidmap,
        // setgroups stays allowed and the init drops the groups ("G"); if
        // newgidmap fails, the groups stay, as without it ("g").
        // SAFETY: getter.
        let root = unsafe { libc::geteuid() } == 0;
        let drop_groups = if root {
            w("gid_map", format!("{SANDBOX_ID} {host_gid} 1\n"))?;
            true
        } else {
            gid_mapper
                .as_ref()
                .is_some_and(|m| m.map(pid, SANDBOX_ID, host_gid).is_ok())
        };
        if !drop_groups {
            w("setgroups", "deny\n".into())?;
            w("gid_map", format!("{SANDBOX_ID} {host_gid} 1\n"))?;
        }
        write_all(sync_w.as_raw_fd(), if drop_groups { b"G" } else { b"g" })
            .map_err(|e| JailError::io("starting the sandbox", e))?;
        // The init now changes ids and mounts its new root; plan the binds meanwhile.
        if binds_from_supervisor {
            send_binds(&sync_w, &host_binds(spec, host_uid, host_gid)?)?;
        }
        // The sandbox now builds its root; make its cgroups meanwhile.
        *cgroup_slot = RunCgroup::create(&spec.limits).map_err(JailError::Setup)?;
        if cgroup_slot.is_none() && spec.require_cgroups {
            let layer = crate::doctor::cgroup_layer();
            return Err(JailError::LayerMissing {
                message: if layer.state == crate::LayerState::Missing {
                    layer.refusal()
                } else {
                    "cgroup limits are not available here (no memory/pids cgroup could be made for this run): run aisbx as root, or on cgroup v2 in a cgroup delegated to this user".into()
                },
                layer: layer.name,
            });
        }
        // With a cgroup the memory limit is enforced there and RLIMIT_DATA is only a
        // backstop; without one it is the limit.
        let data_limit = match cgroup_slot {
            Some(_) => spec.limits.memory_bytes.saturating_mul(2),
            None => spec.limits.memory_bytes,
        };
        let join = match cgroup_slot.as_ref() {
            Some(cg) => {
                let fds = cg.self_join_fds().map_err(JailError::Setup)?;
                if fds.is_empty() {
                    // v2: no self-join through `tasks`; move the init from here.
                    cg.add(pid).map_err(|e| {
                        JailError::Setup(format!("placing the sandbox in its cgroup: {e}"))
                    })?;
                }
                fds
            }
            None => Vec::new(),
        };
        send_cgroup_ready(&sync_w, data_limit, &join)?;
        // Cgroups left by runs whose aisbx was killed: removed while this one starts.
        crate::cgroup::reap_stale();
        Ok(())
    })();
    drop(sync_w);
    let cgroup = cgroup_slot.as_ref();
    if let Err(e) = setup {
        kill_tree(pid, cgroup);
        // SAFETY: reaping our child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        // The init may have failed first and said why (then the step here
        // failed only because it was gone): its reason is the better one.
        return Err(init_report(&status_r).map_or(e, JailError::Setup));
    }

    let cap = spec.limits.output_bytes;
    let mut streams = [Stream::new(out_r), Stream::new(err_r)];
    let mut status_fd = Some(status_r);
    let mut status_buf = Vec::new();
    let deadline = start + spec.limits.wall;
    let mut timed_out = false;
    let mut cancelled = false;
    let mut init_gone_at: Option<Instant> = None;
    let mut chunk = vec![0u8; 64 * 1024];

    loop {
        let now = Instant::now();
        if !timed_out && !cancelled && now >= deadline {
            timed_out = true;
            kill_tree(pid, cgroup);
        }
        if !timed_out && !cancelled && sink.cancelled() {
            cancelled = true;
            kill_tree(pid, cgroup);
        }
        if status_fd.is_none() && streams.iter().all(|s| s.fd.is_none()) {
            break;
        }
        // Once the init is gone, its namespace is being torn down; stop waiting for
        // stragglers after a short grace.
        if let Some(t) = init_gone_at
            && now.duration_since(t) > Duration::from_secs(2)
        {
            break;
        }
        let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(5);
        let mut roles: Vec<u8> = Vec::with_capacity(5);
        for (i, s) in streams.iter().enumerate() {
            if let Some(fd) = &s.fd {
                pfds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                roles.push(i as u8);
            }
        }
        if let Some(fd) = &status_fd {
            pfds.push(libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            roles.push(2);
        }
        if let Some(f) = &stdin_feed {
            // Write what we have; with nothing left, wait for more from the source.
            match (&f.src, f.buf.is_empty()) {
                (Some(src), true) => {
                    pfds.push(libc::pollfd {
                        fd: src.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    roles.push(5);
                }
                _ => {
                    pfds.push(libc::pollfd {
                        fd: f.w.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    });
                    roles.push(3);
                }
            }
        }
        pfds.push(libc::pollfd {
            fd: sigfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        roles.push(4);
        let until_deadline = deadline.saturating_duration_since(now);
        let wait = if timed_out || cancelled {
            Duration::from_millis(50)
        } else {
            until_deadline.min(Duration::from_millis(100))
        };
        // SAFETY: pfds is a valid array of pollfd.
        let n = unsafe {
            libc::poll(
                pfds.as_mut_ptr(),
                pfds.len() as libc::nfds_t,
                wait.as_millis().max(1) as i32,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            kill_tree(pid, cgroup);
            return Err(JailError::io("poll", e));
        }
        for (p, role) in pfds.iter().zip(roles) {
            if p.revents == 0 {
                continue;
            }
            match role {
                0 | 1 => {
                    let s = &mut streams[role as usize];
                    let Some(fd) = &s.fd else { continue };
                    // SAFETY: reading into our buffer.
                    let r = unsafe {
                        libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len())
                    };
                    if r <= 0 {
                        if r < 0
                            && std::io::Error::last_os_error().kind()
                                == std::io::ErrorKind::Interrupted
                        {
                            continue;
                        }
                        s.fd = None;
                        continue;
                    }
                    let data = &chunk[..r as usize];
                    let room = cap.saturating_sub(s.buf.len());
                    let keep = &data[..data.len().min(room)];
                    if !keep.is_empty() {
                        s.buf.extend_from_slice(keep);
                        if role == 0 {
                            sink.stdout(keep);
                        } else {
                            sink.stderr(keep);
                        }
                    }
                    if keep.len() < data.len() {
                        // Over the cap: drop the rest and close the stream, so a
                        // program that keeps writing gets EPIPE instead of running on.
                        s.truncated = true;
                        s.fd = None;
                    }
                }
                2 => {
                    let Some(fd) = &status_fd else { continue };
                    // SAFETY: reading into our buffer.
                    let r = unsafe {
                        libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len())
                    };
                    if r > 0 {
                        status_buf.extend_from_slice(&chunk[..r as usize]);
                        if status_buf.len() > 64 * 1024 {
                            status_buf.truncate(64 * 1024);
                        }
                    } else if r == 0 {
                        // The init has exited: the kernel kills everything else in
                        // its pid namespace.
                        status_fd = None;
                        init_gone_at = Some(Instant::now());
                    }
                }
                3 => {
                    let mut done = true;
                    if let Some(f) = &mut stdin_feed
                        && p.revents & libc::POLLOUT != 0
                    {
                        // SAFETY: writing from our buffer to a non-blocking pipe.
                        let w = unsafe {
                            libc::write(
                                f.w.as_raw_fd(),
                                f.buf.as_ptr().cast(),
                                f.buf.len().min(64 * 1024),
                            )
                        };
                        if w > 0 {
                            f.buf.drain(..w as usize);
                            done = f.buf.is_empty() && f.src.is_none();
                        } else {
                            done = std::io::Error::last_os_error().kind()
                                != std::io::ErrorKind::WouldBlock;
                        }
                    }
                    if done {
                        stdin_feed = None;
                    }
                }
                5 => {
                    // More input from a relayed source; EOF or an error ends it.
                    if let Some(f) = &mut stdin_feed
                        && let Some(src) = &f.src
                    {
                        // SAFETY: reading into our buffer.
                        let r = unsafe {
                            libc::read(src.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len())
                        };
                        if r > 0 {
                            f.buf.extend_from_slice(&chunk[..r as usize]);
                        } else if r == 0
                            || std::io::Error::last_os_error().kind()
                                != std::io::ErrorKind::Interrupted
                        {
                            stdin_feed = None;
                        }
                    }
                }
                _ => {
                    // A signal to aisbx: drain it and end the run.
                    // SAFETY: reading a signalfd record into a buffer of its size.
                    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
                    unsafe {
                        libc::read(
                            sigfd.as_raw_fd(),
                            (&mut info as *mut libc::signalfd_siginfo).cast(),
                            std::mem::size_of::<libc::signalfd_siginfo>(),
                        )
                    };
                    if !cancelled && !timed_out {
                        cancelled = true;
                        kill_tree(pid, cgroup);
                    }
                }
            }
        }
    }
    drop(stdin_feed);
    drop(streams.iter_mut().map(|s| s.fd.take()).collect::<Vec<_>>());
    // SAFETY: signalling our own child (a no-op when it has exited).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let mut wstatus = 0;
    // SAFETY: reaping our child (it is dead or dying).
    unsafe { libc::waitpid(pid, &mut wstatus, 0) };
    let duration = start.elapsed();

    let mut out = Outcome {
        timed_out,
        cancelled,
        duration_ms: duration.as_millis() as u64,
        ..Default::default()
    };
    let [so, se] = streams;
    out.stdout = so.buf;
    out.stdout_truncated = so.truncated;
    out.stderr = se.buf;
    out.stderr_truncated = se.truncated;

    let mut exited = false;
    let mut setup_error: Option<String> = None;
    for line in String::from_utf8_lossy(&status_buf).lines() {
        let mut it = line.splitn(2, ' ');
        match (it.next(), it.next()) {
            (Some("E"), Some(msg)) => setup_error = Some(msg.to_string()),
            (Some("N"), Some(errno)) => out.exec_errno = errno.trim().parse().ok(),
            (Some("X"), Some(rest)) => {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if f.len() == 4 {
                    let v: i32 = f[1].parse().unwrap_or(0);
                    if f[0] == "s" {
                        out.signal = Some(v);
                    } else {
                        out.exit_code = Some(v);
                    }
                    out.cpu_ms = f[2].parse().unwrap_or(0);
                    out.max_rss_kib = f[3].parse().unwrap_or(0);
                    exited = true;
                }
            }
            _ => {}
        }
    }
    if let Some(cg) = cgroup {
        out.oom_killed = cg.oom_killed();
        if let Some(ms) = cg.cpu_ms() {
            out.cpu_ms = ms;
        }
        if out.max_rss_kib == 0 {
            out.max_rss_kib = cg.peak_kib().unwrap_or(0);
        }
        out.layers.cgroup = cg.version().to_string();
    }
    if let Some(msg) = setup_error
        && out.exec_errno.is_none()
    {
        return Err(JailError::Setup(msg));
    }
    if timed_out || cancelled {
        out.exit_code = None;
        out.signal = Some(libc::SIGKILL);
    } else if !exited {
        if out.exec_errno.is_some() {
            out.exit_code = Some(127);
        } else if out.oom_killed {
            out.signal = Some(libc::SIGKILL);
        } else {
            return Err(JailError::Setup(format!(
                "the sandbox init ended without a report (wait status {wstatus:#x})"
            )));
        }
    }
    out.layers.landlock = "applied".into();
    Ok(out)
}
