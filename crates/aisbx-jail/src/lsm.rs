//! Landlock: the program may read and execute anywhere in its (already minimal)
//! root, and write only beneath the writable places. With ABI 6+ it also cannot
//! signal or reach abstract unix sockets outside its own domain.

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, path_beneath_rules,
};

use crate::Enforcement;

/// The newest ABI whose rights we ask for; older kernels enforce what they know.
const TARGET_ABI: ABI = ABI::V6;

/// Directories where the program may create, write and delete.
pub const WRITABLE_DIRS: &[&str] = &["/workspace", "/tmp", "/dev/shm"];
/// Device files the program may write to.
pub const WRITABLE_FILES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/tty",
    "/dev/pts",
];

/// Restrict the calling thread (inherited by everything it executes).
/// Returns `full`, `partial` or `none`.
pub fn restrict(
    mode: Enforcement,
    extra_writable: &[std::path::PathBuf],
) -> Result<&'static str, String> {
    let level = match mode {
        Enforcement::BestEffort => CompatLevel::BestEffort,
        Enforcement::Required => CompatLevel::HardRequirement,
    };
    let err = |e: landlock::RulesetError| format!("Landlock: {e}");
    let status = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .map_err(err)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(TARGET_ABI)))
        .map_err(err)?
        .add_rules(path_beneath_rules(
            WRITABLE_DIRS,
            AccessFs::from_all(TARGET_ABI),
        ))
        .map_err(err)?
        .add_rules(path_beneath_rules(
            extra_writable,
            AccessFs::from_all(TARGET_ABI),
        ))
        .map_err(err)?
        .add_rules(path_beneath_rules(
            WRITABLE_FILES,
            AccessFs::from_all(TARGET_ABI),
        ))
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "full",
        RulesetStatus::PartiallyEnforced => "partial",
        RulesetStatus::NotEnforced => "none",
    })
}

/// The Landlock ABI version the running kernel offers (0 when it has none).
pub fn kernel_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: the documented version query: null attr, zero size.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 { 0 } else { v }
}
