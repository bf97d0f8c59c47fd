//! Thin wrappers over the few system calls that `nix` does not cover.

use std::ffi::CStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

// The new mount API shares its numbers across x86_64 and aarch64 (asm-generic).
const SYS_OPEN_TREE: libc::c_long = 428;
const SYS_MOVE_MOUNT: libc::c_long = 429;
const SYS_CLOSE_RANGE: libc::c_long = 436;
const SYS_MOUNT_SETATTR: libc::c_long = 442;

pub const OPEN_TREE_CLONE: u32 = 1;
pub const OPEN_TREE_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
pub const AT_RECURSIVE: u32 = 0x8000;
pub const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `clone(2)` used like `fork(2)`, with namespace flags. Returns 0 in the child.
///
/// # Safety
/// The caller must be single-threaded (the child gets a copy of this thread only).
pub unsafe fn clone_fork(flags: libc::c_int) -> io::Result<libc::pid_t> {
    // SAFETY: a null stack makes clone behave like fork; the caller guarantees the
    // process is single-threaded, so the child's copy of the address space is
    // consistent.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    check(ret).map(|pid| pid as libc::pid_t)
}

/// Stack for [`spawn_shared`]: the program's set-up (Landlock, seccomp, argv) needs
/// little; a guard page below it turns an overflow into a fault, not corruption.
const SPAWN_STACK: usize = 1 << 20;
const PAGE: usize = 4096;

extern "C" fn spawn_trampoline(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `&mut dyn FnMut()` that `spawn_shared` passed, alive until
    // this process calls execve or exits (the parent is suspended until then).
    let f = unsafe { &mut *(arg as *mut &mut dyn FnMut()) };
    f();
    // SAFETY: ending this process without touching the shared memory's state.
    unsafe { libc::_exit(127) }
}

/// Run `f` in a new process that shares this one's memory until it calls execve or
/// exits (`CLONE_VM | CLONE_VFORK`, as `posix_spawn` does): no page tables are
/// copied and nothing is copied on write, and the caller is suspended until then.
/// `f` runs on its own stack and must end in execve or `_exit`; the child has its
/// own credentials, fd table, rlimits, signal dispositions and working directory.
/// Returns the child's pid.
///
/// # Safety
/// The caller must be single-threaded, and `f` must not unwind, return into shared
/// state it changed, or leave locks held (it ends in execve or `_exit`).
pub unsafe fn spawn_shared(f: &mut dyn FnMut()) -> io::Result<libc::pid_t> {
    // SAFETY: a fresh private mapping that we unmap after the child is gone from it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SPAWN_STACK + PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the lowest page of our own mapping becomes the guard page.
    unsafe { libc::mprotect(base, PAGE, libc::PROT_NONE) };
    let mut f = f;
    // SAFETY: the stack top is the end of the mapping (16-byte aligned); `f` outlives
    // the child's use of it because CLONE_VFORK suspends us until execve or exit.
    let pid = unsafe {
        libc::clone(
            spawn_trampoline,
            base.cast::<u8>().add(SPAWN_STACK + PAGE).cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut f as *mut &mut dyn FnMut()).cast(),
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: the child has left this memory (execve or exit) by now.
    unsafe { libc::munmap(base, SPAWN_STACK + PAGE) };
    if pid < 0 { Err(err) } else { Ok(pid) }
}

/// A detached copy of the mount tree at `path` (recursive).
pub fn open_tree_clone(dirfd: RawFd, path: &CStr, extra_flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain system call with a valid C string.
    let fd = check(unsafe {
        libc::syscall(
            SYS_OPEN_TREE,
            dirfd,
            path.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE | extra_flags,
        )
    })?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Set mount attributes on the tree behind `fd` (recursively).
pub fn mount_setattr_fd(
    fd: RawFd,
    set: u64,
    clear: u64,
    userns_fd: Option<RawFd>,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: userns_fd.map(|f| f as u64).unwrap_or(0),
    };
    // SAFETY: attr lives across the call and its size is passed.
    check(unsafe {
        libc::syscall(
            SYS_MOUNT_SETATTR,
            fd,
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH as u32) | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(|_| ())
}

/// Set mount attributes on the mount at `path` (not recursive).
pub fn mount_setattr_path(path: &CStr, set: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: attr lives across the call and its size is passed.
    check(unsafe {
        libc::syscall(
            SYS_MOUNT_SETATTR,
            libc::AT_FDCWD,
            path.as_ptr(),
            0u32,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(|_| ())
}

/// Attach the detached tree `fd` at `target`.
pub fn move_mount_to(fd: RawFd, target: &CStr) -> io::Result<()> {
    // SAFETY: plain system call with valid C strings.
    check(unsafe {
        libc::syscall(
            SYS_MOVE_MOUNT,
            fd,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(|_| ())
}

/// Mark every fd from `first` up as close-on-exec.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: plain system call.
    check(unsafe { libc::syscall(SYS_CLOSE_RANGE, first, u32::MAX, CLOSE_RANGE_CLOEXEC) })
        .map(|_| ())
}

/// Close every fd from 3 up except those in `keep` (sorted).
pub fn close_all_but(keep: &[RawFd]) {
    let mut from: u32 = 3;
    for &k in keep {
        let k = k as u32;
        if k >= from {
            if k > from {
                // SAFETY: closing fds this process no longer uses.
                unsafe { libc::syscall(SYS_CLOSE_RANGE, from, k - 1, 0u32) };
            }
            from = k + 1;
        }
    }
    // SAFETY: as above.
    unsafe { libc::syscall(SYS_CLOSE_RANGE, from, u32::MAX, 0u32) };
}

/// The number of threads of this process.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(usize::MAX)
}

/// The start time of a process in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), used to tell a live supervisor from a reused pid.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the
    // last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Write all of `buf` to a raw fd, retrying on EINTR.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is a valid slice.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_is_stable() {
        let me = std::process::id() as i32;
        let a = process_start_time(me);
        assert!(a.is_some());
        assert_eq!(a, process_start_time(me));
        assert_eq!(process_start_time(-5), None);
    }
}
