//! The seccomp-bpf filter the sandboxed program runs under.
//!
//! One classic-BPF program, compiled here from the policy below:
//! - any architecture other than the native one (32-bit compat calls) and, on
//!   x86_64, any x32 system call number kill the process;
//! - `clone3` fails with `ENOSYS`, so that libc falls back to `clone`, whose flags
//!   (unlike clone3's, which sit in memory) the filter can inspect;
//! - `openat2` fails with `ENOSYS`, so that callers fall back to `openat`: its
//!   mode sits in a struct in memory, which the filter cannot read;
//! - the deny list fails with `EPERM`, some calls only for some arguments
//!   (namespace flags, terminal injection, vsock, unusual personalities, and a
//!   mode with the setuid or setgid bit in `chmod`, `fchmod`, `fchmodat`,
//!   `fchmodat2`, and in `open`, `openat`, `creat`, `mkdir`, `mkdirat`, `mknod`,
//!   `mknodat` when they create), so that no file the sandbox writes, in a
//!   root-owned workspace or a read-write bind, is ever setuid or setgid;
//! - everything else is allowed.
//!
//! The system call number is found by binary search, so a call passes about a
//! dozen instructions, and the program is small. That matters at start-up: the
//! kernel JIT-compiles the filter and, for its per-syscall verdict cache, runs it
//! once for every system call number when it is installed; a linear filter of
//! the same list (as generic filter compilers emit) costs several times more.
//! The compiler is checked by running its output through a small BPF interpreter
//! against the policy, for every call number (see the tests).

use crate::SeccompLevel;

/// Namespace-creating clone/unshare flags (CLONE_NEWTIME included). All sit in
/// the low 32 bits, the only bits clone and unshare honour.
const NS_FLAGS: u32 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP) as u32
    | 0x80;

/// System calls denied outright at every level.
fn always_denied() -> Vec<i64> {
    // libc::c_long is i64 on the 64-bit targets aisbx supports.
    let mut v: Vec<i64> = vec![
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_setns,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_reboot,
        libc::SYS_syslog,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_quotactl_fd,
        libc::SYS_lookup_dcookie,
        libc::SYS_fanotify_init,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_vhangup,
        libc::SYS_pidfd_getfd,
        libc::SYS_kcmp,
        libc::SYS_move_pages,
        libc::SYS_migrate_pages,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend_from_slice(&[
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_uselib,
        libc::SYS_modify_ldt,
        libc::SYS_nfsservctl,
        libc::SYS__sysctl,
    ]);
    v
}

/// Denied unless the level is `Dev` (debuggers need them).
fn debugger_calls() -> Vec<i64> {
    [
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
    ]
    .to_vec()
}

/// The personalities a program may switch to (`personality(0xffffffff)` queries).
fn allowed_personas(level: SeccompLevel) -> Vec<u32> {
    let mut v = vec![0, 0x0008, 0x2_0000, 0x2_0008, 0xffff_ffff];
    if level == SeccompLevel::Dev {
        v.push(0x0004_0000); // ADDR_NO_RANDOMIZE, for debuggers
    }
    v
}

const SYS_CLONE3: u32 = 435;

/// The mode bits no file the sandbox creates or changes may get. A mode is a
/// `umode_t` in the kernel (16 bits): only the low word of the argument counts.
const SETID_BITS: u32 = libc::S_ISUID | libc::S_ISGID;

/// The open flags with which `open`/`openat` create a file and use their mode
/// (`O_CREAT`, and `__O_TMPFILE`, the bit of `O_TMPFILE` that is not
/// `O_DIRECTORY`); without them the kernel ignores the mode.
const CREATE_FLAGS: u32 = libc::O_CREAT as u32 | (libc::O_TMPFILE & !libc::O_DIRECTORY) as u32;

/// System calls whose argument `i` is a mode applied as given: EPERM when it has
/// [`SETID_BITS`].
fn mode_calls() -> Vec<(i64, u32)> {
    let mut v = vec![
        (libc::SYS_fchmod, 1),
        (libc::SYS_fchmodat, 2),
        (libc::SYS_fchmodat2, 2),
        (libc::SYS_mkdirat, 2),
        (libc::SYS_mknodat, 2),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend_from_slice(&[
        (libc::SYS_chmod, 1),
        (libc::SYS_creat, 1),
        (libc::SYS_mkdir, 1),
        (libc::SYS_mknod, 1),
    ]);
    v
}

/// System calls that create a file with the mode in argument `mode` when the
/// flags in argument `flags` have one of [`CREATE_FLAGS`]: (number, flags, mode).
fn open_calls() -> Vec<(i64, u32, u32)> {
    let mut v = vec![(libc::SYS_openat, 2, 3)];
    #[cfg(target_arch = "x86_64")]
    v.push((libc::SYS_open, 1, 2));
    v
}

/// What the filter does with one system call number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Eperm,
    Enosys,
    /// EPERM when the first argument has a namespace flag (clone, unshare).
    NsFlags,
    /// EPERM for ioctl(TIOCSTI) and ioctl(TIOCLINUX).
    TerminalIoctl,
    /// EPERM for socket(AF_VSOCK, ...): vsock is not namespaced and reaches the
    /// hypervisor's host.
    Vsock,
    /// EPERM unless the personality is one of [`allowed_personas`].
    Persona,
    /// EPERM when argument `.0` (a mode) has [`SETID_BITS`].
    SetidMode(u32),
    /// EPERM when argument `flags` has [`CREATE_FLAGS`] and argument `mode` has
    /// [`SETID_BITS`].
    SetidCreate {
        flags: u32,
        mode: u32,
    },
}

/// The policy: every system call number that is not simply allowed.
fn policy(level: SeccompLevel) -> Vec<(u32, Verdict)> {
    let mut calls = always_denied();
    if level == SeccompLevel::Default {
        calls.extend(debugger_calls());
    }
    let mut v: Vec<(u32, Verdict)> = calls
        .into_iter()
        .map(|nr| (nr as u32, Verdict::Eperm))
        .collect();
    v.extend(
        mode_calls()
            .into_iter()
            .map(|(nr, arg)| (nr as u32, Verdict::SetidMode(arg))),
    );
    v.extend(
        open_calls()
            .into_iter()
            .map(|(nr, flags, mode)| (nr as u32, Verdict::SetidCreate { flags, mode })),
    );
    v.extend([
        (SYS_CLONE3, Verdict::Enosys),
        (libc::SYS_openat2 as u32, Verdict::Enosys),
        (libc::SYS_unshare as u32, Verdict::NsFlags),
        // clone's flags are its first argument on x86_64 and aarch64.
        (libc::SYS_clone as u32, Verdict::NsFlags),
        (libc::SYS_ioctl as u32, Verdict::TerminalIoctl),
        (libc::SYS_socket as u32, Verdict::Vsock),
        (libc::SYS_personality as u32, Verdict::Persona),
    ]);
    v.sort_by_key(|e| e.0);
    v.dedup_by_key(|e| e.0);
    v
}

// Classic BPF opcodes and seccomp return values.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_JMP_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_EPERM: u32 = SECCOMP_RET_ERRNO | libc::EPERM as u32;
const RET_ENOSYS: u32 = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

// Offsets in struct seccomp_data: nr, arch, then the arguments (8 bytes each,
// whose low 32 bits come first on these little-endian targets).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
#[cfg(target_endian = "little")]
const fn arg_low(i: u32) -> u32 {
    16 + 8 * i
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_00b7;
/// x32 system call numbers have this bit set.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// A compiled program, ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
pub struct Filters(Vec<libc::sock_filter>);

/// Jump targets while compiling.
type Label = usize;

enum Op {
    Ld(u32),
    /// Conditional jump: opcode, constant, target if true, target if false
    /// (`None`: the next instruction).
    Jmp(u16, u32, Option<Label>, Option<Label>),
    Ret(u32),
    Mark(Label),
}

struct Asm {
    ops: Vec<Op>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels += 1;
        self.labels - 1
    }

    /// Jump to `t` if the accumulator equals `k`, else to `f` (`None`: the next
    /// instruction).
    fn jeq(&mut self, k: u32, t: Option<Label>, f: Option<Label>) {
        self.ops.push(Op::Jmp(BPF_JMP_JEQ_K, k, t, f));
    }

    /// Binary search over `calls` (sorted by number, at least one): a matching
    /// number jumps to its verdict's label, anything else to `allow`.
    fn search(&mut self, calls: &[(u32, Label)], allow: Label) {
        if calls.len() <= 3 {
            for (i, &(nr, target)) in calls.iter().enumerate() {
                let miss = (i + 1 == calls.len()).then_some(allow);
                self.jeq(nr, Some(target), miss);
            }
            return;
        }
        let (low, high) = calls.split_at(calls.len() / 2);
        let upper = self.label();
        self.ops
            .push(Op::Jmp(BPF_JMP_JGE_K, high[0].0, Some(upper), None));
        self.search(low, allow);
        self.ops.push(Op::Mark(upper));
        self.search(high, allow);
    }

    /// Resolve labels into the forward 8-bit offsets classic BPF jumps take.
    fn assemble(self) -> Result<Vec<libc::sock_filter>, String> {
        let mut at = vec![usize::MAX; self.labels];
        let mut n = 0;
        for op in &self.ops {
            match op {
                Op::Mark(l) => at[*l] = n,
                _ => n += 1,
            }
        }
        let mut out = Vec::with_capacity(n);
        for op in &self.ops {
            let here = out.len();
            let off = |t: &Option<Label>| -> Result<u8, String> {
                let Some(l) = t else { return Ok(0) };
                at[*l]
                    .checked_sub(here + 1)
                    .and_then(|d| u8::try_from(d).ok())
                    .ok_or_else(|| "seccomp filter too large for a BPF jump".to_string())
            };
            let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
            match op {
                Op::Mark(_) => {}
                Op::Ld(off) => out.push(ins(BPF_LD_W_ABS, 0, 0, *off)),
                Op::Ret(v) => out.push(ins(BPF_RET_K, 0, 0, *v)),
                Op::Jmp(code, k, t, f) => out.push(ins(*code, off(t)?, off(f)?, *k)),
            }
        }
        Ok(out)
    }
}

/// Compile the filter for `level`.
pub fn compile(level: SeccompLevel) -> Result<Filters, String> {
    let mut a = Asm {
        ops: Vec::new(),
        labels: 0,
    };
    let [allow, eperm, enosys, kill, ns, tty, vsock, persona] = [0; 8].map(|_| a.label());
    a.ops.push(Op::Ld(OFF_ARCH));
    a.jeq(AUDIT_ARCH_NATIVE, None, Some(kill));
    a.ops.push(Op::Ld(OFF_NR));
    #[cfg(target_arch = "x86_64")]
    a.ops
        .push(Op::Jmp(BPF_JMP_JGE_K, X32_SYSCALL_BIT, Some(kill), None));
    // The argument checks on modes: one block for each distinct verdict.
    let mut mode_blocks: Vec<(Verdict, Label)> = Vec::new();
    let mut calls: Vec<(u32, Label)> = Vec::new();
    for (nr, v) in policy(level) {
        let target = match v {
            Verdict::Eperm => eperm,
            Verdict::Enosys => enosys,
            Verdict::NsFlags => ns,
            Verdict::TerminalIoctl => tty,
            Verdict::Vsock => vsock,
            Verdict::Persona => persona,
            Verdict::SetidMode(_) | Verdict::SetidCreate { .. } => {
                match mode_blocks.iter().find(|b| b.0 == v) {
                    Some(b) => b.1,
                    None => {
                        let l = a.label();
                        mode_blocks.push((v, l));
                        l
                    }
                }
            }
        };
        calls.push((nr, target));
    }
    a.search(&calls, allow);

    for (v, l) in mode_blocks {
        a.ops.push(Op::Mark(l));
        let mode = match v {
            Verdict::SetidCreate { flags, mode } => {
                a.ops.push(Op::Ld(arg_low(flags)));
                a.ops
                    .push(Op::Jmp(BPF_JMP_JSET_K, CREATE_FLAGS, None, Some(allow)));
                mode
            }
            Verdict::SetidMode(mode) => mode,
            _ => continue, // only mode verdicts have blocks
        };
        a.ops.push(Op::Ld(arg_low(mode)));
        a.ops.push(Op::Jmp(
            BPF_JMP_JSET_K,
            SETID_BITS,
            Some(eperm),
            Some(allow),
        ));
    }

    a.ops.push(Op::Mark(ns));
    a.ops.push(Op::Ld(arg_low(0)));
    a.ops
        .push(Op::Jmp(BPF_JMP_JSET_K, NS_FLAGS, Some(eperm), Some(allow)));
    a.ops.push(Op::Mark(tty));
    a.ops.push(Op::Ld(arg_low(1)));
    a.jeq(libc::TIOCSTI as u32, Some(eperm), None);
    a.jeq(libc::TIOCLINUX as u32, Some(eperm), Some(allow));
    a.ops.push(Op::Mark(vsock));
    a.ops.push(Op::Ld(arg_low(0)));
    a.jeq(libc::AF_VSOCK as u32, Some(eperm), Some(allow));
    a.ops.push(Op::Mark(persona));
    a.ops.push(Op::Ld(arg_low(0)));
    for p in allowed_personas(level) {
        a.jeq(p, Some(allow), None);
    }
    a.ops.push(Op::Mark(eperm));
    a.ops.push(Op::Ret(RET_EPERM));
    a.ops.push(Op::Mark(allow));
    a.ops.push(Op::Ret(SECCOMP_RET_ALLOW));
    a.ops.push(Op::Mark(enosys));
    a.ops.push(Op::Ret(RET_ENOSYS));
    a.ops.push(Op::Mark(kill));
    a.ops.push(Op::Ret(SECCOMP_RET_KILL_PROCESS));
    a.assemble().map(Filters)
}

/// Install the filter on the calling thread, after setting `no_new_privs`.
pub fn install(filter: &Filters) -> Result<(), String> {
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.0.len()).map_err(|_| "seccomp filter too long".to_string())?,
        filter: filter.0.as_ptr().cast_mut(),
    };
    // SAFETY: prctl and seccomp with a program that lives across the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(format!(
                "setting no_new_privs: {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(format!(
                "installing the seccomp filter: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the policy says for one call, written independently of the compiler.
    fn expected(level: SeccompLevel, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        if arch != AUDIT_ARCH_NATIVE {
            return SECCOMP_RET_KILL_PROCESS;
        }
        #[cfg(target_arch = "x86_64")]
        if nr & X32_SYSCALL_BIT != 0 {
            return SECCOMP_RET_KILL_PROCESS;
        }
        let n = nr as i64;
        let low = |i: usize| args[i] as u32;
        let denied = always_denied().contains(&n)
            || (level == SeccompLevel::Default && debugger_calls().contains(&n))
            || ((n == libc::SYS_clone || n == libc::SYS_unshare) && low(0) & NS_FLAGS != 0)
            || (n == libc::SYS_ioctl
                && (low(1) == libc::TIOCSTI as u32 || low(1) == libc::TIOCLINUX as u32))
            || (n == libc::SYS_socket && low(0) == libc::AF_VSOCK as u32)
            || (n == libc::SYS_personality && !allowed_personas(level).contains(&low(0)));
        // Modes: the setuid/setgid bits of the low word; open flags: O_CREAT or
        // the O_TMPFILE bit, in the low word.
        let setid = |i: usize| low(i) & 0o6000 != 0;
        let creates = |i: usize| low(i) & (0o100 | 0o2000_0000) != 0;
        let mut mode_arg = vec![
            (libc::SYS_fchmod, 1),
            (libc::SYS_fchmodat, 2),
            (452, 2), // fchmodat2
            (libc::SYS_mkdirat, 2),
            (libc::SYS_mknodat, 2),
        ];
        #[cfg(target_arch = "x86_64")]
        mode_arg.extend([
            (libc::SYS_chmod, 1),
            (libc::SYS_creat, 1),
            (libc::SYS_mkdir, 1),
            (libc::SYS_mknod, 1),
        ]);
        #[cfg(target_arch = "x86_64")]
        let setid_open = n == libc::SYS_open && creates(1) && setid(2);
        #[cfg(not(target_arch = "x86_64"))]
        let setid_open = false;
        let denied = denied
            || mode_arg.iter().any(|&(c, i)| c == n && setid(i))
            || setid_open
            || (n == libc::SYS_openat && creates(2) && setid(3));
        if nr == SYS_CLONE3 || nr == 437 {
            RET_ENOSYS
        } else if denied {
            RET_EPERM
        } else {
            SECCOMP_RET_ALLOW
        }
    }

    /// A classic-BPF interpreter for the instructions the compiler emits: the
    /// verdict and the number of instructions run.
    fn run(prog: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> (u32, usize) {
        let mut data = Vec::new();
        data.extend_from_slice(&nr.to_le_bytes());
        data.extend_from_slice(&arch.to_le_bytes());
        data.extend_from_slice(&0u64.to_le_bytes());
        for a in args {
            data.extend_from_slice(&a.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        for steps in 1.. {
            let i = prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    let o = i.k as usize;
                    acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                }
                BPF_RET_K => return (i.k, steps),
                BPF_JMP_JEQ_K | BPF_JMP_JGE_K | BPF_JMP_JSET_K => {
                    let hit = match i.code {
                        BPF_JMP_JEQ_K => acc == i.k,
                        BPF_JMP_JGE_K => acc >= i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += if hit { i.jt } else { i.jf } as usize;
                }
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
        unreachable!()
    }

    #[test]
    fn the_program_follows_the_policy_for_every_call() {
        let probes: Vec<[u64; 6]> = {
            let mut v = vec![[0; 6], [u64::MAX; 6]];
            for f in [libc::CLONE_NEWUSER, libc::CLONE_NEWNET, 0x80, libc::SIGCHLD] {
                v.push([f as u64, 0, 0, 0, 0, 0]);
                v.push([(1 << 40) | f as u64, 0, 0, 0, 0, 0]);
            }
            for c in [libc::TIOCSTI, libc::TIOCLINUX, libc::TCGETS] {
                v.push([0, c, 0, 0, 0, 0]);
                v.push([0, (7 << 32) | c, 0, 0, 0, 0]);
            }
            // Flags and modes for the open, chmod, mkdir and mknod families, in
            // every argument position they take: plain and set-id modes, a file
            // type with a set-id mode, create and non-create flags, the bits only
            // in the high word (which the kernel ignores), and both at once.
            let words: [u64; 9] = [
                0,
                0o755,
                0o4755,
                0o2755,
                0o10_0000 | 0o6000,
                libc::O_CREAT as u64 | libc::O_WRONLY as u64,
                libc::O_TMPFILE as u64,
                (0o6000 | libc::O_CREAT as u64 | libc::O_TMPFILE as u64) << 32,
                0o4000 | libc::O_CREAT as u64,
            ];
            for &a in &words {
                for &b in &words {
                    for &c in &words {
                        v.push([0, a, b, c, 0, 0]);
                    }
                }
            }
            for p in [
                libc::AF_VSOCK as u64,
                libc::AF_INET as u64,
                0x4_0000,
                0xffff_ffff,
            ] {
                v.push([p, 0, 0, 0, 0, 0]);
            }
            v
        };
        for level in [SeccompLevel::Default, SeccompLevel::Dev] {
            let prog = compile(level).expect("the filter compiles").0;
            assert!(prog.len() < 256, "{} instructions", prog.len());
            for arch in [AUDIT_ARCH_NATIVE, 0x4000_0003 /* i386 */] {
                for nr in (0..1024).chain([0x4000_0027, 0x4000_0000 | 435, u32::MAX]) {
                    for args in &probes {
                        assert_eq!(
                            run(&prog, arch, nr, *args).0,
                            expected(level, arch, nr, *args),
                            "level {level:?} arch {arch:#x} nr {nr} args {args:x?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_call_passes_few_instructions() {
        // Binary search: any call number is decided in about a dozen instructions.
        let prog = compile(SeccompLevel::Default).unwrap().0;
        let worst = (0..1024)
            .map(|nr| run(&prog, AUDIT_ARCH_NATIVE, nr, [0; 6]).1)
            .max();
        assert!(worst.is_some_and(|w| w <= 16), "{worst:?} steps");
    }

    #[test]
    fn dev_level_allows_ptrace_default_does_not() {
        assert!(!always_denied().contains(&libc::SYS_ptrace));
        assert!(debugger_calls().contains(&libc::SYS_ptrace));
        let nr = libc::SYS_ptrace as u32;
        assert!(policy(SeccompLevel::Default).iter().any(|e| e.0 == nr));
        assert!(!policy(SeccompLevel::Dev).iter().any(|e| e.0 == nr));
    }
}
