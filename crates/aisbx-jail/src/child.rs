//! Code that runs inside the sandbox: the init (pid 1 of the new pid namespace),
//! which builds the root and supervises the program from inside, and the program's
//! process, which drops every privilege and executes the program.
//!
//! Both run in a fork of the single-threaded supervisor. They report to it over the
//! status pipe with one line per message:
//! `E <text>` setup failed; `N <errno>` execve failed;
//! `X e <code> <cpu_ms> <maxrss_kib>` / `X s <signal> <cpu_ms> <maxrss_kib>` exit.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::mounts::{self, Prepared};
use crate::seccomp::Filters;
use crate::sys::{cloexec_from, spawn_shared, write_all};
use crate::{SANDBOX_ID, Spec, lsm};

/// The fds and prepared data the init needs (all inherited through the fork).
pub struct InitCtx<'a> {
    pub spec: &'a Spec,
    pub sync_r: RawFd,
    pub status_w: RawFd,
    pub stdin: RawFd,
    pub stdout_w: RawFd,
    pub stderr_w: RawFd,
    /// fds that belong to the supervisor and are closed first.
    pub parent_fds: Vec<RawFd>,
    pub filters: &'a Filters,
    pub prepared: Prepared,
}

/// The second message from the supervisor, once the run's cgroups exist: the
/// program's RLIMIT_DATA, and (v1) the `tasks` files the init writes `0` to, which
/// moves it into its cgroups.
struct CgroupReady {
    data_limit: u64,
    join: Vec<OwnedFd>,
}

/// Receive the supervisor's second message (cgroups ready). EOF: it gave up.
fn recv_cgroup_ready(sock: RawFd) -> Result<CgroupReady, String> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = [0u8; 8];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| format!("waiting for the run's cgroups: {e}"))?;
    if msg.bytes != 8 {
        exit_now(1);
    }
    let mut join = Vec::new();
    for c in msg.cmsgs().map_err(|e| e.to_string())? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel installed these fds for us.
            join.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok(CgroupReady {
        data_limit: u64::from_le_bytes(buf),
        join,
    })
}

/// Receive the binds the supervisor planned, up to the end marker. EOF: it gave up.
fn recv_binds(sock: RawFd) -> Result<Vec<mounts::BindPlan>, String> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    // A message holds a path and a link target, each at most PATH_MAX.
    let mut buf = vec![0u8; 2 * 4096 + 64];
    let mut plans = Vec::new();
    loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| format!("waiting for the binds: {e}"))?;
        if msg.bytes == 0 {
            exit_now(1);
        }
        if msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
        {
            return Err("a bind message from the supervisor was truncated".into());
        }
        let mut fd = None;
        for c in msg.cmsgs().map_err(|e| e.to_string())? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for f in fds {
                    // SAFETY: the kernel installed this fd for us.
                    let owned = unsafe { OwnedFd::from_raw_fd(f) };
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
        }
        let n = msg.bytes;
        if n == 1 && buf[0] == mounts::BIND_END {
            return Ok(plans);
        }
        plans.push(mounts::BindPlan::decode(&buf[..n], fd)?);
    }
}

fn report(fd: RawFd, msg: &str) {
    let _ = write_all(fd, msg.as_bytes());
}

fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process without running the parent's atexit handlers
    // or flushing its buffers, which this forked copy must not do.
    unsafe { libc::_exit(code) }
}

/// Namespaces made by the init's helper process ([`NsHelper`]) and then joined by
/// the init, so that creating them (a network namespace takes most of a
/// millisecond) runs in parallel with building the root.
pub const LATE_NAMESPACES: libc::c_int =
    libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;

/// A child of the init that creates the net, ipc and uts namespaces, sets the
/// hostname and brings up `lo`, then waits until the init has joined them.
struct NsHelper {
    pid: libc::pid_t,
    /// The helper's report: empty (EOF) on success, else the error text.
    report_r: OwnedFd,
    /// Held until the init has joined; the helper exits when it closes.
    hold_w: OwnedFd,
}

fn pipe_pair() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(errno_str("pipe"));
    }
    // SAFETY: the kernel returned two new fds that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl NsHelper {
    /// Fork the helper. It holds every capability of the sandbox's user namespace
    /// (the init has not changed ids yet) and needs no id mapping for its work.
    ///
    /// With `net`, it then stays as the run's forwarder ([`crate::relay`]): it
    /// gets the socket directory opened by the init (the host's root is still
    /// there), binds
    /// its listeners in the new namespace, and once the init has joined (the id
    /// maps exist by then) drops every privilege and relays until the init ends.
    fn start(hostname: &str, net: Option<&crate::NetRelay>) -> Result<NsHelper, String> {
        let (report_r, report_w) = pipe_pair()?;
        let (hold_r, hold_w) = pipe_pair()?;
        // Opened here, before the init covers the host's /tmp with its new root.
        let dir = net.map(|n| crate::relay::Listeners::open_dir(&n.dir));
        // SAFETY: the init is single-threaded; the child only makes system calls
        // and exits.
        let pid = unsafe { crate::sys::clone_fork(0) }.map_err(|e| format!("fork: {e}"))?;
        if pid == 0 {
            drop((report_r, hold_w));
            // SAFETY: lowering our own priority.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
            // SAFETY: plain prctl; the helper dies with the init.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            // SAFETY: plain unshare.
            let result = if unsafe { libc::unshare(LATE_NAMESPACES) } != 0 {
                Err(errno_str("creating the net, ipc and uts namespaces"))
            } else {
                nix::unistd::sethostname(hostname)
                    .map_err(|e| format!("sethostname: {e}"))
                    .and_then(|()| loopback_up())
            };
            let relay = match (result, dir, net) {
                (Err(msg), _, _) | (Ok(()), Some(Err(msg)), _) => {
                    report(report_w.as_raw_fd(), &msg);
                    None
                }
                (Ok(()), Some(Ok(dir)), Some(n)) => {
                    match crate::relay::Listeners::bind(dir, n.port) {
                        Ok(l) => Some(l),
                        Err(msg) => {
                            report(report_w.as_raw_fd(), &msg);
                            None
                        }
                    }
                }
                _ => None,
            };
            drop(report_w);
            let mut b = [0u8; 1];
            // SAFETY: blocking read into a local buffer until the init closes.
            unsafe { libc::read(hold_r.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
            if let Some(l) = relay {
                // Keep only the relay's fds: the run's stdio and status pipe
                // belong to the init and the program.
                let mut keep = l.fds().to_vec();
                keep.sort_unstable();
                crate::sys::close_all_but(&keep);
                // SAFETY: our own fds 0-2 onto /dev/null (the sandbox's: the
                // init has pivoted, and moved our root with its own).
                unsafe {
                    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                    for fd in 0..3 {
                        libc::dup2(null, fd);
                    }
                    if null > 2 {
                        libc::close(null);
                    }
                }
                let _ = l.serve(SANDBOX_ID);
                exit_now(1);
            }
            exit_now(0);
        }
        // The directory's fd is the forwarder's alone.
        drop(dir);
        Ok(NsHelper {
            pid,
            report_r,
            hold_w,
        })
    }

    /// Wait for the helper's namespaces and move the init into them.
    fn join(self) -> Result<(), String> {
        let mut msg = Vec::new();
        let mut f = std::fs::File::from(self.report_r);
        std::io::Read::read_to_end(&mut f, &mut msg)
            .map_err(|e| format!("waiting for the namespaces: {e}"))?;
        if !msg.is_empty() {
            return Err(String::from_utf8_lossy(&msg).into_owned());
        }
        // SAFETY: pidfd_open on our own live child.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if pidfd < 0 {
            return Err(errno_str("pidfd_open"));
        }
        // SAFETY: the kernel returned a new fd that we now own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
        // SAFETY: plain setns on a pidfd.
        if unsafe { libc::setns(pidfd.as_raw_fd(), LATE_NAMESPACES) } != 0 {
            return Err(errno_str("joining the net, ipc and uts namespaces"));
        }
        // The helper exits now; the init's reaping loop collects it.
        drop(self.hold_w);
        Ok(())
    }
}

/// Where the kernel finds this process's argv and environment strings, from
/// `/proc/self/stat` (fields 48 to 51): `[arg_start, arg_end, env_start, env_end]`.
fn arg_env_area(stat: &[u8]) -> Option<[usize; 4]> {
    // The command name (field 2) may hold anything but ends at the last ')'.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // `rest` starts at field 3.
    let mut area = [0usize; 4];
    for (i, a) in area.iter_mut().enumerate() {
        *a = fields.get(45 + i)?.parse().ok()?;
    }
    let [arg_start, arg_end, env_start, env_end] = area;
    (arg_start < arg_end && env_start <= env_end).then_some(area)
}

/// The init is a copy of aisbx, not a new program: its `/proc/1/cmdline` and
/// `/proc/1/environ` would show aisbx's host argv and environment (a `--env
/// SECRET=...` among them) to the sandbox. Overwrite both areas with zeros in
/// this copy (the supervisor's memory is not shared), before anything else is
/// forked from it; the cmdline then reads as NUL bytes only. Nothing in the init
/// reads its argv or environment afterwards.
fn scrub_host_args() -> Result<(), String> {
    let stat = std::fs::read("/proc/self/stat").map_err(|e| format!("/proc/self/stat: {e}"))?;
    let [arg_start, arg_end, env_start, env_end] =
        arg_env_area(&stat).ok_or("/proc/self/stat has no argument area")?;
    for (start, end) in [(arg_start, arg_end), (env_start, env_end)] {
        // SAFETY: the kernel's record of where this process's argv and environment
        // strings lie: mapped, writable memory (the initial stack) that no Rust
        // value refers to.
        unsafe { std::ptr::write_bytes(start as *mut u8, 0, end - start) };
    }
    Ok(())
}

/// The sandbox init. Never returns.
pub fn init_main(ctx: InitCtx<'_>) -> ! {
    for fd in &ctx.parent_fds {
        // SAFETY: closing fds this process does not use.
        unsafe { libc::close(*fd) };
    }
    if let Err(msg) = scrub_host_args() {
        report(
            ctx.status_w,
            &format!("E hiding the host arguments: {msg}\n"),
        );
        exit_now(1);
    }
    // Die with the supervisor; the kernel then kills the whole pid namespace.
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // New net, ipc and uts namespaces, made by a helper while the supervisor writes
    // our id maps and we build the root. A failure is reported once the status
    // pipe is ours to use below.
    let helper = NsHelper::start(&ctx.spec.hostname, ctx.spec.net.as_ref());
    // Wait until the supervisor has written our id maps. EOF means it died first.
    let mut b = [0u8; 1];
    // SAFETY: reading into a local buffer.
    let n = unsafe { libc::read(ctx.sync_r, b.as_mut_ptr().cast(), 1) };
    if n != 1 {
        exit_now(1);
    }
    let status_w = ctx.status_w;
    // "G": our gid map was written by root or by newgidmap, setgroups is
    // allowed: drop the caller's supplementary groups, which would still count
    // on host files. Where setgroups is denied anyway (a parent namespace denies
    // it), having none to drop is as good.
    let groups = if b[0] == b'G' {
        // SAFETY: setgroups with an empty list.
        match unsafe { libc::setgroups(0, std::ptr::null()) } {
            0 => Ok(()),
            _ => {
                let e = errno_str("dropping the supplementary groups");
                // SAFETY: getgroups with size 0 only counts.
                match unsafe { libc::getgroups(0, std::ptr::null_mut()) } {
                    0 => Ok(()),
                    _ => Err(e),
                }
            }
        }
    } else {
        Ok(())
    };
    match groups
        .and(helper)
        .and_then(|h| init_setup_and_wait(&ctx, h))
    {
        Ok(never) => match never {},
        Err(msg) => {
            report(status_w, &format!("E {}\n", msg.replace('\n', " ")));
            exit_now(1)
        }
    }
}

fn errno_str(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn init_setup_and_wait(ctx: &InitCtx<'_>, helper: NsHelper) -> Result<Infallible, String> {
    // Become the sandbox user; capabilities in our own user namespace stay.
    // SAFETY: plain id changes.
    unsafe {
        if libc::setresgid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID) != 0 {
            return Err(errno_str("setresgid"));
        }
        libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
        if libc::setresuid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID) != 0 {
            return Err(errno_str("setresuid"));
        }
    }
    raise_all_caps()?;
    mounts::build_root(ctx.spec, &ctx.prepared, || recv_binds(ctx.sync_r))?;
    helper.join()?;

    // Meanwhile the supervisor made the run's cgroups: join them before the program
    // exists, then give the sandbox a cgroup namespace rooted there.
    let ready = recv_cgroup_ready(ctx.sync_r)?;
    // SAFETY: closing our own fd.
    unsafe { libc::close(ctx.sync_r) };
    for fd in &ready.join {
        write_all(fd.as_raw_fd(), b"0").map_err(|e| format!("joining the run's cgroup: {e}"))?;
    }
    drop(ready.join);
    // SAFETY: plain unshare.
    if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
        return Err(errno_str("creating the cgroup namespace"));
    }

    // The program's stdio.
    // SAFETY: dup2 onto the standard fds.
    unsafe {
        for (from, to) in [(ctx.stdin, 0), (ctx.stdout_w, 1), (ctx.stderr_w, 2)] {
            if from != to && libc::dup2(from, to) < 0 {
                return Err(errno_str("dup2"));
            }
        }
    }
    // The program's process borrows our memory until its execve: nothing to copy.
    let mut program = || {
        // Only returns when something failed before execve.
        match program_main(ctx, ready.data_limit) {
            ProgramError::Exec(errno) => {
                report(ctx.status_w, &format!("N {errno}\n"));
                exit_now(127)
            }
            ProgramError::Setup(msg) => {
                report(ctx.status_w, &format!("E {}\n", msg.replace('\n', " ")));
                exit_now(125)
            }
        }
    };
    // SAFETY: the init is single-threaded; `program` ends in execve or _exit.
    let pid =
        unsafe { spawn_shared(&mut program) }.map_err(|e| format!("starting the program: {e}"))?;
    // The init keeps no copy of the program's stdio.
    // SAFETY: opening /dev/null and replacing our fds 0-2.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        for fd in [ctx.stdin, ctx.stdout_w, ctx.stderr_w] {
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
    // Reap everything until the program itself ends; then report and exit, which
    // makes the kernel kill whatever else is left in the namespace. CPU time is the
    // sum over every process reaped here.
    let mut cpu_ms = 0u64;
    loop {
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid out-parameter.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 with valid out-pointers.
        let r = unsafe { libc::wait4(-1, &mut status, libc::__WALL, &mut ru) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(errno_str("wait4"));
        }
        cpu_ms += tv_ms(&ru.ru_utime) + tv_ms(&ru.ru_stime);
        if r != pid {
            continue;
        }
        let rss = ru.ru_maxrss.max(0) as u64;
        let msg = if libc::WIFSIGNALED(status) {
            format!("X s {} {cpu_ms} {rss}\n", libc::WTERMSIG(status))
        } else {
            format!("X e {} {cpu_ms} {rss}\n", libc::WEXITSTATUS(status))
        };
        report(ctx.status_w, &msg);
        exit_now(0);
    }
}

fn tv_ms(tv: &libc::timeval) -> u64 {
    (tv.tv_sec.max(0) as u64) * 1000 + (tv.tv_usec.max(0) as u64) / 1000
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const CAP_V3: u32 = 0x2008_0522;

fn capset(eff: u32, perm: u32) -> Result<(), String> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let data = [CapData {
        effective: eff,
        permitted: perm,
        inheritable: 0,
    }; 2];
    // SAFETY: header and two data words, as capset(2) with version 3 expects.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r != 0 {
        Err(errno_str("capset"))
    } else {
        Ok(())
    }
}

/// After setresuid the effective set is cleared; bring back what is permitted
/// (full, in our own user namespace) for the mounts to come.
fn raise_all_caps() -> Result<(), String> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: as capget(2) with version 3 expects.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(errno_str("capget"));
    }
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    for d in data.iter_mut() {
        d.effective = d.permitted;
    }
    // SAFETY: as capset(2) with version 3 expects.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r != 0 {
        Err(errno_str("capset"))
    } else {
        Ok(())
    }
}

/// Bring up `lo` in the new network namespace (nothing else is there).
fn loopback_up() -> Result<(), String> {
    // SAFETY: socket/ioctl on a zeroed ifreq naming "lo".
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(errno_str("socket for lo"));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            libc::close(s);
            return Err(errno_str("reading lo flags"));
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        let r = libc::ioctl(s, libc::SIOCSIFFLAGS, &mut ifr);
        libc::close(s);
        if r < 0 {
            return Err(errno_str("bringing lo up"));
        }
    }
    Ok(())
}

enum ProgramError {
    Setup(String),
    Exec(i32),
}

fn set_rlimit(res: libc::__rlimit_resource_t, v: u64) -> Result<(), String> {
    let lim = libc::rlimit {
        rlim_cur: v as libc::rlim_t,
        rlim_max: v as libc::rlim_t,
    };
    // SAFETY: valid rlimit struct.
    if unsafe { libc::setrlimit(res, &lim) } != 0 {
        return Err(errno_str("setrlimit"));
    }
    Ok(())
}

/// The program's process: privileges off, then execve. Returns only on failure.
fn program_main(ctx: &InitCtx<'_>, data_limit: u64) -> ProgramError {
    match program_setup(ctx, data_limit) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn program_setup(ctx: &InitCtx<'_>, data_limit: u64) -> Result<Infallible, ProgramError> {
    let setup = ProgramError::Setup;
    let spec = ctx.spec;
    // SAFETY: plain process-attribute calls.
    unsafe {
        libc::setsid();
        // Default dispositions and an empty mask: ignored signals survive execve.
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    let l = &spec.limits;
    set_rlimit(libc::RLIMIT_NOFILE, l.nofile).map_err(setup)?;
    set_rlimit(libc::RLIMIT_CORE, 0).map_err(setup)?;
    set_rlimit(libc::RLIMIT_NPROC, l.pids).map_err(setup)?;
    set_rlimit(libc::RLIMIT_DATA, data_limit).map_err(setup)?;
    // CPU seconds as a backstop to the wall clock.
    set_rlimit(
        libc::RLIMIT_CPU,
        (l.wall.as_secs_f64() * l.cpus.max(1.0)).ceil() as u64 + 1,
    )
    .map_err(setup)?;
    cloexec_from(3).map_err(|e| setup(format!("close_range: {e}")))?;
    drop_capabilities().map_err(setup)?;
    mounts::write_workspace_files(&spec.workspace_files).map_err(setup)?;
    nix::unistd::chdir(spec.cwd.as_str())
        .map_err(|e| setup(format!("working directory {}: {e}", spec.cwd)))?;

    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| setup("argument contains a NUL byte".into()))?;
    let envp: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .collect::<Result<_, _>>()
        .map_err(|_| setup("environment contains a NUL byte".into()))?;
    let candidates = exec_candidates(spec);

    lsm::restrict(spec.landlock, &spec.rw_binds).map_err(setup)?;
    crate::seccomp::install(ctx.filters).map_err(setup)?;

    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    let mut errno = libc::ENOENT;
    for c in &candidates {
        // SAFETY: NUL-terminated argv/envp arrays of valid C strings.
        unsafe { libc::execve(c.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
        let e = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ENOENT);
        if e != libc::ENOENT && e != libc::ENOTDIR {
            errno = e;
        }
    }
    Err(ProgramError::Exec(errno))
}

/// The paths execve tries: argv[0] itself when it has a slash, else each PATH entry.
fn exec_candidates(spec: &Spec) -> Vec<CString> {
    let Some(arg0) = spec.argv.first() else {
        return Vec::new();
    };
    if arg0.contains('/') {
        return CString::new(arg0.as_bytes()).into_iter().collect();
    }
    let path = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    path.split(':')
        .filter(|d| !d.is_empty())
        .filter_map(|d| CString::new(format!("{d}/{arg0}")).ok())
        .collect()
}

/// Empty every capability set, the bounding set and the ambient set, and lock the
/// securebits so that nothing can bring them back.
pub(crate) fn drop_capabilities() -> Result<(), String> {
    const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
    const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
    const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
    // SAFETY: plain prctl calls.
    unsafe {
        for cap in 0..64 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
        if libc::prctl(
            libc::PR_SET_SECUREBITS,
            SECBIT_NOROOT
                | SECBIT_NOROOT_LOCKED
                | SECBIT_NO_SETUID_FIXUP
                | SECBIT_NO_SETUID_FIXUP_LOCKED
                | SECBIT_KEEP_CAPS_LOCKED,
            0,
            0,
            0,
        ) != 0
        {
            return Err(errno_str("locking securebits"));
        }
    }
    capset(0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argument_area_is_found_in_proc_stat() {
        // A command name with spaces and parentheses, then fields 3 to 52.
        let mut line = b"42 (a) (b c)) S".to_vec();
        for n in 4..=52u32 {
            line.extend_from_slice(format!(" {}", n * 10).as_bytes());
        }
        line.push(b'\n');
        assert_eq!(arg_env_area(&line), Some([480, 490, 500, 510]));
        // Truncated, or zeros (the kernel hides them from other processes): none.
        assert_eq!(arg_env_area(&line[..60]), None);
        let zeros = format!("1 (x) S{}", " 0".repeat(50));
        assert_eq!(arg_env_area(zeros.as_bytes()), None);
        // This process's own area holds its argv.
        let stat = std::fs::read("/proc/self/stat").expect("stat");
        let [a, b, e, f] = arg_env_area(&stat).expect("own area");
        assert!(a < b && b <= e && e <= f);
        // SAFETY: reading this process's own argv strings.
        let args = unsafe { std::slice::from_raw_parts(a as *const u8, b - a) };
        let first = std::env::args_os().next().expect("argv[0]");
        assert!(args.starts_with(first.as_encoded_bytes()));
    }
}
