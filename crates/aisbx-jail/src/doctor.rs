//! `aisbx doctor`: which isolation layers this host and user actually have, each
//! found by trying it in a short-lived child process.

use serde::Serialize;

use crate::DEFAULT_HOST_ID;
use crate::cgroup::{Hierarchy, detect};
use crate::lsm::kernel_abi;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerState {
    Active,
    Missing,
}

#[derive(Debug, Clone, Serialize)]
pub struct Layer {
    pub name: String,
    pub state: LayerState,
    /// Whether a run refuses to start without it.
    pub required: bool,
    /// What the layer does, or, when it is missing, why and what to do about it.
    pub detail: String,
    /// When missing: the subject of the refusal ("the user namespace is").
    #[serde(skip)]
    subject: String,
    /// When missing: why (the first half of `detail`).
    #[serde(skip)]
    reason: String,
    /// When missing: what to do (the second half of `detail`).
    #[serde(skip)]
    remedy: String,
}

impl Layer {
    fn active(name: &str, required: bool, detail: impl Into<String>) -> Layer {
        Layer {
            name: name.to_string(),
            state: LayerState::Active,
            required,
            detail: detail.into(),
            subject: String::new(),
            reason: String::new(),
            remedy: String::new(),
        }
    }

    fn missing(
        name: &str,
        subject: &str,
        required: bool,
        reason: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Layer {
        let (reason, remedy) = (reason.into(), remedy.into());
        Layer {
            name: name.to_string(),
            state: LayerState::Missing,
            required,
            detail: format!("{reason}; {remedy}"),
            subject: subject.to_string(),
            reason,
            remedy,
        }
    }

    /// The sentence a run refused for want of this layer gives, in doctor's words.
    pub fn refusal(&self) -> String {
        format!(
            "{} not available here ({}): {}",
            self.subject, self.reason, self.remedy
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub layers: Vec<Layer>,
    /// `v1`, `v2` or `none`.
    pub cgroup_version: String,
    pub cgroup_controllers: Vec<String>,
    pub landlock_abi: i64,
    pub running_as_root: bool,
}

impl Report {
    /// True when every layer the default profile requires is active.
    pub fn ok(&self) -> bool {
        self.layers
            .iter()
            .all(|l| !l.required || l.state == LayerState::Active)
    }
}

/// Run `f` in a forked child and return its exit status (0 = success) or the errno
/// it reported as its exit code.
fn in_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the caller is the single-threaded CLI; the child only makes system
    // calls and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return -1;
    }
    if pid == 0 {
        let code = f();
        // SAFETY: leave the forked child without running the parent's handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: reaping our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(1)
        .min(255)
}

fn explain(code: i32) -> String {
    if code > 0 {
        std::io::Error::from_raw_os_error(code).to_string()
    } else {
        "the probe itself failed".into()
    }
}

/// A sysctl's value, trimmed; `None` when this kernel has no such file.
fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|v| v.trim().to_string())
}

const USERNS: &str = "the user namespace is";

/// Why `unshare(CLONE_NEWUSER)` failed with `code`, and what to do about it.
fn userns_cause(code: i32, root: bool) -> (String, String) {
    let generic_remedy = "run aisbx where user namespaces are allowed: a container needs a seccomp profile and security options that permit unshare(CLONE_NEWUSER), or run aisbx outside it";
    match code {
        libc::ENOSPC => match sysctl("/proc/sys/user/max_user_namespaces").as_deref() {
            Some("0") => (
                "user.max_user_namespaces is 0: this host, or the container aisbx runs in, forbids new user namespaces".into(),
                "allow them with `sysctl -w user.max_user_namespaces=15000` (on the host, or in the container if it may), or start the container with user namespaces allowed".into(),
            ),
            limit => (
                format!(
                    "the limit on user namespaces is reached (user.max_user_namespaces is {} here, an enclosing container's may be lower, and at most 32 may nest)",
                    limit.unwrap_or("unknown")
                ),
                "raise user.max_user_namespaces where it is lower (`sysctl -w user.max_user_namespaces=15000`), or run aisbx less deeply nested".into(),
            ),
        },
        libc::EPERM
            if !root && sysctl("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") =>
        {
            (
                "kernel.unprivileged_userns_clone is 0: this kernel lets only root create user namespaces".into(),
                "allow them with `sysctl -w kernel.unprivileged_userns_clone=1`, or run aisbx as root".into(),
            )
        }
        libc::EPERM
            if !root
                && sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref()
                    == Some("1") =>
        {
            (
                "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns is 1)".into(),
                "give aisbx an AppArmor profile that allows `userns`, or `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`".into(),
            )
        }
        libc::EPERM => (
            "the kernel refused to create one (Operation not permitted): a seccomp filter or a security module of the container aisbx runs in forbids it, or aisbx runs in a chroot".into(),
            generic_remedy.into(),
        ),
        libc::EUSERS => (
            "too many user namespaces are nested here".into(),
            "run aisbx less deeply nested".into(),
        ),
        libc::EINVAL => (
            "this kernel is built without user namespaces (CONFIG_USER_NS)".into(),
            "use a kernel with CONFIG_USER_NS".into(),
        ),
        other => (
            format!("creating one failed: {}", explain(other)),
            generic_remedy.into(),
        ),
    }
}

/// Whether an id map (`/proc/self/uid_map`'s lines: inside, outside, count)
/// gives `id` a name inside, that is, whether the namespace that reads it sees `id`.
fn map_includes(map: &str, id: u32) -> bool {
    map.lines().any(|l| {
        let f: Vec<u64> = l
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        f.len() == 3 && f[0] <= u64::from(id) && u64::from(id) < f[0] + f[2]
    })
}

/// Whether this process's user namespace maps the id `id` (`which`: uid or gid).
fn maps(which: &str, id: u32) -> bool {
    let map = std::fs::read_to_string(format!("/proc/self/{which}_map")).unwrap_or_default();
    map_includes(&map, id)
}

/// The user namespace: can one be made (the second value), and (as root) can the
/// sandbox's user map to `host_ids`, an unprivileged id of the namespace aisbx
/// runs in?
fn userns_layer(root: bool, (host_uid, host_gid): (u32, u32)) -> (Layer, bool) {
    let code = in_child(|| {
        // SAFETY: unshare in a throwaway child.
        if unsafe { libc::unshare(libc::CLONE_NEWUSER) } == 0 {
            0
        } else {
            errno()
        }
    });
    let name = "user namespace";
    if code != 0 {
        let (reason, remedy) = userns_cause(code, root);
        return (Layer::missing(name, USERNS, true, reason, remedy), false);
    }
    if root {
        for (which, id) in [("uid", host_uid), ("gid", host_gid)] {
            if !maps(which, id) {
                let layer = Layer::missing(
                    name,
                    USERNS,
                    true,
                    format!(
                        "aisbx runs as root of a user namespace whose {which} map lacks {id}, the unprivileged id the sandbox runs as"
                    ),
                    "give this namespace (the container aisbx runs in) an id range that includes it, or run aisbx as a non-root user here",
                );
                return (layer, true);
            }
        }
    }
    (
        Layer::active(name, true, "sandboxed code runs as an unprivileged id"),
        true,
    )
}

/// The other namespaces, each made inside a new user namespace, as a run does.
const NAMESPACES: [(&str, &str, libc::c_int); 6] = [
    (
        "mount namespace",
        "the mount namespace is",
        libc::CLONE_NEWNS,
    ),
    ("pid namespace", "the pid namespace is", libc::CLONE_NEWPID),
    ("net namespace", "the net namespace is", libc::CLONE_NEWNET),
    ("ipc namespace", "the ipc namespace is", libc::CLONE_NEWIPC),
    ("uts namespace", "the uts namespace is", libc::CLONE_NEWUTS),
    (
        "cgroup namespace",
        "the cgroup namespace is",
        libc::CLONE_NEWCGROUP,
    ),
];

/// One of [`NAMESPACES`]; `userns` is the user namespace's layer when none can
/// be made.
fn namespace_layer(name: &str, subject: &str, flag: libc::c_int, userns: Option<&Layer>) -> Layer {
    if let Some(userns) = userns {
        return Layer::missing(
            name,
            subject,
            true,
            "it is made inside a user namespace, which is missing here",
            userns.remedy.clone(),
        );
    }
    let code = in_child(|| {
        // SAFETY: unshare in a throwaway child.
        if unsafe { libc::unshare(libc::CLONE_NEWUSER | flag) } == 0 {
            0
        } else {
            errno()
        }
    });
    if code == 0 {
        Layer::active(name, true, "isolated")
    } else {
        Layer::missing(
            name,
            subject,
            true,
            format!("creating one failed: {}", explain(code)),
            "use a kernel that has it, and run aisbx where a container's seccomp profile or security module does not forbid it",
        )
    }
}

fn nnp_layer() -> Layer {
    let code = in_child(|| {
        // SAFETY: prctl in a throwaway child.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0 {
            0
        } else {
            errno()
        }
    });
    if code == 0 {
        Layer::active(
            "no_new_privs",
            true,
            "set-uid and file capabilities cannot raise privileges",
        )
    } else {
        Layer::missing(
            "no_new_privs",
            "no_new_privs is",
            true,
            explain(code),
            "use a kernel with no_new_privs (Linux 3.5 or later)",
        )
    }
}

fn seccomp_layer() -> Layer {
    let code = in_child(|| {
        let Ok(f) = crate::seccomp::compile(crate::SeccompLevel::Default) else {
            return 2;
        };
        if crate::seccomp::install(&f).is_err() {
            return errno();
        }
        // The filter must now refuse mount(2).
        // SAFETY: a mount call that the filter must block.
        let r = unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                0,
                std::ptr::null(),
            )
        };
        if r != 0 && errno() == libc::EPERM {
            0
        } else {
            3
        }
    });
    match code {
        0 => Layer::active(
            "seccomp",
            true,
            "deny-list filter and x32/32-bit ABI guard installed",
        ),
        3 => Layer::missing(
            "seccomp",
            "seccomp is",
            true,
            "the installed filter did not refuse mount(2)",
            "use a kernel with seccomp-bpf (CONFIG_SECCOMP_FILTER)",
        ),
        _ => Layer::missing(
            "seccomp",
            "seccomp is",
            true,
            format!("installing the filter failed: {}", explain(code)),
            "use a kernel with seccomp-bpf (CONFIG_SECCOMP_FILTER)",
        ),
    }
}

/// The layers a run cannot do without, in the order a run needs them, handed to
/// `each` until it returns `false`. As root, dropping the supplementary groups is
/// one of them (a run refuses to keep root's groups).
fn required_layers(root: bool, host_ids: (u32, u32), each: &mut dyn FnMut(Layer) -> bool) {
    let (userns, made) = userns_layer(root, host_ids);
    if !each(userns.clone()) {
        return;
    }
    for (name, subject, flag) in NAMESPACES {
        if !each(namespace_layer(
            name,
            subject,
            flag,
            (!made).then_some(&userns),
        )) {
            return;
        }
    }
    if !each(nnp_layer()) || !each(seccomp_layer()) {
        return;
    }
    if root {
        each(groups_layer(true));
    }
}

/// The first required layer that is missing here, for a run that mapped the
/// sandbox to `host_ids` and failed to set up: it probes only as far as that
/// layer. Called on that failure path only; a run that works never probes.
pub(crate) fn first_missing_required(host_ids: (u32, u32)) -> Option<Layer> {
    let mut found = None;
    required_layers(is_root(), host_ids, &mut |l| {
        if l.required && l.state == LayerState::Missing {
            found = Some(l);
            false
        } else {
            true
        }
    });
    found
}

/// The cgroup layer, for a run that requires it and found none.
pub(crate) fn cgroup_layer() -> Layer {
    cgroups(&detect()).0
}

fn is_root() -> bool {
    // SAFETY: getter.
    unsafe { libc::geteuid() == 0 }
}

/// Probe every layer.
pub fn probe() -> Report {
    let root = is_root();
    let mut layers = Vec::new();
    required_layers(root, (DEFAULT_HOST_ID, DEFAULT_HOST_ID), &mut |l| {
        layers.push(l);
        true
    });
    let abi = kernel_abi();
    layers.push(if abi > 0 {
        Layer::active(
            "landlock",
            false,
            format!("ABI {abi}: writes confined to /workspace, /tmp and a few devices"),
        )
    } else {
        Layer::missing(
            "landlock",
            "Landlock is",
            false,
            "the kernel lacks Landlock (5.13+ with lsm=landlock)",
            "mount, seccomp and uid isolation still apply; a profile with `landlock = \"required\"` is refused",
        )
    });
    let hierarchy = detect();
    let (cg_layer, version, controllers) = cgroups(&hierarchy);
    layers.push(cg_layer);
    if !root {
        layers.push(groups_layer(false));
    }
    Report {
        layers,
        cgroup_version: version,
        cgroup_controllers: controllers,
        landlock_abi: abi,
        running_as_root: root,
    }
}

/// The cgroup layer, the hierarchy's version and its controllers.
fn cgroups(hierarchy: &Option<Hierarchy>) -> (Layer, String, Vec<String>) {
    const NAME: &str = "cgroups";
    const SUBJECT: &str = "cgroup limits are";
    const FALLBACK: &str = "limits fall back to rlimits only (for cgroup limits, run aisbx as root, or on cgroup v2 in a cgroup delegated to this user)";
    match hierarchy {
        Some(Hierarchy::V1(m)) => {
            let names: Vec<String> = m.iter().map(|(c, _)| c.clone()).collect();
            let layer = if m.iter().all(|(_, p)| writable_dir(p)) {
                Layer::active(
                    NAME,
                    false,
                    format!(
                        "v1 controllers {}: memory, pids and CPU are limited per run",
                        names.join(", ")
                    ),
                )
            } else {
                Layer::missing(
                    NAME,
                    SUBJECT,
                    false,
                    "v1 controllers are not writable by this user (v1 cannot be delegated)",
                    FALLBACK,
                )
            };
            (layer, "v1".into(), names)
        }
        Some(Hierarchy::V2(root, c)) => {
            let layer = if writable_dir(root) || writable_dir(&root.join("aisbx")) {
                Layer::active(
                    NAME,
                    false,
                    format!(
                        "v2 at {}: memory, pids and CPU are limited per run",
                        root.display()
                    ),
                )
            } else {
                Layer::missing(
                    NAME,
                    SUBJECT,
                    false,
                    "cgroup v2 is not delegated to this user",
                    FALLBACK,
                )
            };
            (layer, "v2".into(), c.clone())
        }
        None => (
            Layer::missing(
                NAME,
                SUBJECT,
                false,
                "no memory/pids controller is mounted",
                FALLBACK,
            ),
            "none".into(),
            Vec::new(),
        ),
    }
}

fn writable_dir(p: &std::path::Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: access(2) on a valid C string.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

fn list(ids: &[u32]) -> String {
    ids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the caller's supplementary groups reach the sandbox. As root they are
/// dropped in each run, and a run refuses when they cannot be.
fn groups_layer(root: bool) -> Layer {
    const NAME: &str = "supplementary groups";
    if root {
        let groups: Vec<u32> = nix::unistd::getgroups()
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default();
        if groups.is_empty() {
            return Layer::active(NAME, true, "aisbx runs as root with none to drop");
        }
        if sysctl("/proc/self/setgroups").as_deref() == Some("deny") {
            return Layer::missing(
                NAME,
                "dropping the supplementary groups is",
                true,
                format!(
                    "aisbx runs as root of a user namespace that forbids setgroups (/proc/self/setgroups is deny), so the sandbox would keep the groups {}",
                    list(&groups)
                ),
                "start aisbx without supplementary groups, or in a user namespace that allows setgroups",
            );
        }
        return Layer::active(NAME, true, "dropped in each run (aisbx runs as root)");
    }
    let extra = crate::groups::extra_groups();
    if extra.is_empty() {
        return Layer::active(NAME, false, "this user has none to drop");
    }
    match crate::groups::gid_mapper() {
        Ok(_) => Layer::active(
            NAME,
            false,
            "dropped in each run: newgidmap maps a subordinate gid from /etc/subgid, so the sandbox may call setgroups",
        ),
        Err(why) => Layer {
            name: NAME.into(),
            state: LayerState::Missing,
            required: false,
            detail: format!(
                "kept: the sandbox keeps this user's supplementary groups ({}) for access to host files, because {why}",
                list(&extra)
            ),
            subject: "dropping the supplementary groups is".into(),
            reason: why,
            remedy: "install newgidmap (Debian package uidmap) and give this user subordinate gids in /etc/subgid".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps_are_read_as_ranges() {
        let host = "         0          0 4294967295\n";
        assert!(map_includes(host, 0));
        assert!(map_includes(host, DEFAULT_HOST_ID));
        let root_only = "         0          0          1\n";
        assert!(map_includes(root_only, 0));
        assert!(!map_includes(root_only, DEFAULT_HOST_ID));
        let rootless = "0 1000 1\n1 100000 65536\n";
        assert!(map_includes(rootless, 65536));
        assert!(!map_includes(rootless, 65537));
        assert!(!map_includes("", 0));
        assert!(!map_includes("garbage\n1 2\n", 1));
    }

    #[test]
    fn a_refusal_names_the_layer_its_reason_and_remedy_in_doctors_words() {
        let l = Layer::missing("user namespace", USERNS, true, "why it is", "what to do");
        assert_eq!(l.state, LayerState::Missing);
        assert_eq!(l.detail, "why it is; what to do");
        assert_eq!(
            l.refusal(),
            "the user namespace is not available here (why it is): what to do"
        );
    }

    #[test]
    fn userns_errors_are_explained_with_a_remedy() {
        for code in [
            libc::ENOSPC,
            libc::EPERM,
            libc::EUSERS,
            libc::EINVAL,
            libc::ENOMEM,
        ] {
            for root in [false, true] {
                let (reason, remedy) = userns_cause(code, root);
                assert!(!reason.is_empty() && !remedy.is_empty(), "{code}");
            }
        }
        let (reason, _) = userns_cause(libc::EINVAL, true);
        assert!(reason.contains("CONFIG_USER_NS"));
        let (reason, remedy) = userns_cause(libc::ENOSPC, true);
        assert!(reason.contains("max_user_namespaces"), "{reason}");
        assert!(remedy.contains("max_user_namespaces"), "{remedy}");
    }
}
