//! The seccomp-bpf filters the sandboxed program runs under.
//!
//! Two filters are installed; the kernel applies the stricter verdict of both:
//! - a guard, written out below (eight instructions): any architecture other than
//!   the native one, and on x86_64 any x32 system call number, kills the process;
//!   `clone3` fails with `ENOSYS`, so that libc falls back to `clone`, whose flags
//!   (unlike clone3's, which sit in memory) the deny list can inspect;
//! - a deny list compiled with `seccompiler`: the calls below fail with `EPERM`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use crate::SeccompLevel;

const EPERM: u32 = libc::EPERM as u32;

/// Namespace-creating clone/unshare flags.
const NS_FLAGS: [u64; 7] = [
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
];
const CLONE_NEWTIME: u64 = 0x80;

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

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
}

fn cond32(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| e.to_string())
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conds).map_err(|e| e.to_string())
}

/// One rule per namespace flag: "argument `arg` has this bit set".
fn ns_flag_rules(arg: u8) -> Result<Vec<SeccompRule>, String> {
    NS_FLAGS
        .iter()
        .chain(std::iter::once(&CLONE_NEWTIME))
        .map(|&f| rule(vec![cond(arg, SeccompCmpOp::MaskedEq(f), f)?]))
        .collect()
}

fn target_arch() -> Result<TargetArch, String> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|_| format!("seccomp is not supported on {}", std::env::consts::ARCH))
}

/// Compile the deny-list filter for `level`.
pub fn deny_list(level: SeccompLevel) -> Result<Filters, String> {
    let mut eperm: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut calls = always_denied();
    if level == SeccompLevel::Default {
        calls.extend(debugger_calls());
    }
    for nr in calls {
        eperm.insert(nr, vec![]);
    }
    eperm.insert(libc::SYS_unshare, ns_flag_rules(0)?);
    // clone's flags are its first argument on x86_64 and aarch64.
    eperm.insert(libc::SYS_clone, ns_flag_rules(0)?);
    // ioctl(fd, TIOCSTI/TIOCLINUX): push input into a terminal.
    eperm.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![cond32(1, SeccompCmpOp::Eq, libc::TIOCSTI)?])?,
            rule(vec![cond32(1, SeccompCmpOp::Eq, libc::TIOCLINUX)?])?,
        ],
    );
    // socket(AF_VSOCK, ...): vsock is not namespaced and reaches the hypervisor host.
    eperm.insert(
        libc::SYS_socket,
        vec![rule(vec![cond32(
            0,
            SeccompCmpOp::Eq,
            libc::AF_VSOCK as u64,
        )?])?],
    );
    // personality(): only the harmless personas.
    let mut allowed_personas = vec![0u64, 0x0008, 0x2_0000, 0x2_0008, 0xffff_ffff];
    if level == SeccompLevel::Dev {
        allowed_personas.push(0x0004_0000); // ADDR_NO_RANDOMIZE, for debuggers
    }
    let persona_conds = allowed_personas
        .into_iter()
        .map(|p| cond32(0, SeccompCmpOp::Ne, p))
        .collect::<Result<Vec<_>, _>>()?;
    eperm.insert(libc::SYS_personality, vec![rule(persona_conds)?]);

    let arch = target_arch()?;
    let eperm_filter = SeccompFilter::new(
        eperm,
        SeccompAction::Allow,
        SeccompAction::Errno(EPERM),
        arch,
    )
    .map_err(|e| e.to_string())?;
    let prog: BpfProgram = eperm_filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    Ok(Filters(vec![prog]))
}

/// The compiled deny-list programs, installed one after another.
pub struct Filters(Vec<BpfProgram>);

// Classic BPF opcodes.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
#[cfg(target_arch = "x86_64")]
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
// offsetof(struct seccomp_data, arch) and (…, nr)
const OFF_ARCH: u32 = 4;
const OFF_NR: u32 = 0;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_00b7;

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

const SYS_CLONE3: u32 = 435;

/// The guard: kill on a foreign architecture (32-bit compat calls) and, on x86_64,
/// on x32 numbers (bit 30 set); `clone3` → ENOSYS.
pub fn abi_guard() -> BpfProgram {
    let enosys = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    #[cfg(target_arch = "x86_64")]
    {
        vec![
            ins(BPF_LD_W_ABS, 0, 0, OFF_ARCH),
            ins(BPF_JMP_JEQ_K, 0, 5, AUDIT_ARCH_NATIVE), // foreign arch → kill
            ins(BPF_LD_W_ABS, 0, 0, OFF_NR),
            ins(BPF_JMP_JGE_K, 3, 0, 0x4000_0000), // x32 → kill
            ins(BPF_JMP_JEQ_K, 1, 0, SYS_CLONE3),  // clone3 → ENOSYS
            ins(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
            ins(BPF_RET_K, 0, 0, enosys),
            ins(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        ]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        vec![
            ins(BPF_LD_W_ABS, 0, 0, OFF_ARCH),
            ins(BPF_JMP_JEQ_K, 0, 4, AUDIT_ARCH_NATIVE), // foreign arch → kill
            ins(BPF_LD_W_ABS, 0, 0, OFF_NR),
            ins(BPF_JMP_JEQ_K, 1, 0, SYS_CLONE3), // clone3 → ENOSYS
            ins(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
            ins(BPF_RET_K, 0, 0, enosys),
            ins(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        ]
    }
}

/// Install the filters on the calling thread (sets `no_new_privs`).
pub fn install(deny: &Filters) -> Result<(), String> {
    seccompiler::apply_filter(&abi_guard())
        .map_err(|e| format!("installing the ABI guard: {e}"))?;
    for p in &deny.0 {
        seccompiler::apply_filter(p).map_err(|e| format!("installing the seccomp filter: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_levels_compile_into_two_programs() {
        for level in [SeccompLevel::Default, SeccompLevel::Dev] {
            let progs = deny_list(level).expect("filter compiles").0;
            assert_eq!(progs.len(), 1);
            assert!(progs.iter().all(|p| !p.is_empty() && p.len() < 4096));
        }
    }

    #[test]
    fn dev_level_allows_ptrace_default_does_not() {
        assert!(!always_denied().contains(&libc::SYS_ptrace));
        assert!(debugger_calls().contains(&libc::SYS_ptrace));
    }

    #[test]
    fn abi_guard_ends_in_returns() {
        let g = abi_guard();
        assert_eq!(g.last().map(|i| i.k), Some(SECCOMP_RET_KILL_PROCESS));
        // every jump stays inside the program and lands on a return
        for (n, i) in g.iter().enumerate() {
            if i.code != BPF_LD_W_ABS && i.code != BPF_RET_K {
                for off in [i.jt, i.jf] {
                    let t = n + 1 + off as usize;
                    assert!(t < g.len());
                }
            }
        }
        let rets: Vec<u32> = g
            .iter()
            .filter(|i| i.code == BPF_RET_K)
            .map(|i| i.k)
            .collect();
        assert!(rets.contains(&(SECCOMP_RET_ERRNO | libc::ENOSYS as u32)));
        assert!(rets.contains(&SECCOMP_RET_ALLOW));
    }
}
