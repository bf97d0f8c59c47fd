//! `aisbx doctor`: which isolation layers this host and user actually have, each
//! found by trying it in a short-lived child process.

use serde::Serialize;

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
    /// Whether the default profile refuses to run without it.
    pub required: bool,
    pub detail: String,
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
    if code == 0 {
        "works".into()
    } else if code > 0 {
        std::io::Error::from_raw_os_error(code).to_string()
    } else {
        "probe failed".into()
    }
}

fn layer(name: &str, code: i32, required: bool, ok_detail: &str, missing_hint: &str) -> Layer {
    Layer {
        name: name.to_string(),
        state: if code == 0 {
            LayerState::Active
        } else {
            LayerState::Missing
        },
        required,
        detail: if code == 0 {
            ok_detail.to_string()
        } else {
            format!("{}; {missing_hint}", explain(code))
        },
    }
}

/// Probe every layer.
pub fn probe() -> Report {
    // SAFETY: getter.
    let root = unsafe { libc::geteuid() } == 0;
    let mut layers = Vec::new();
    let userns = in_child(|| {
        // SAFETY: unshare in a throwaway child.
        if unsafe { libc::unshare(libc::CLONE_NEWUSER) } == 0 {
            0
        } else {
            errno()
        }
    });
    layers.push(layer(
        "user namespace",
        userns,
        true,
        "sandboxed code runs as an unprivileged id",
        "enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces>0, or the AppArmor restriction)",
    ));
    for (name, flag) in [
        ("mount namespace", libc::CLONE_NEWNS),
        ("pid namespace", libc::CLONE_NEWPID),
        ("net namespace", libc::CLONE_NEWNET),
        ("ipc namespace", libc::CLONE_NEWIPC),
        ("uts namespace", libc::CLONE_NEWUTS),
        ("cgroup namespace", libc::CLONE_NEWCGROUP),
    ] {
        let code = in_child(|| {
            // SAFETY: unshare in a throwaway child.
            if unsafe { libc::unshare(libc::CLONE_NEWUSER | flag) } == 0 {
                0
            } else {
                errno()
            }
        });
        layers.push(layer(
            name,
            code,
            true,
            "isolated",
            "the kernel lacks it or forbids it for this user",
        ));
    }
    let nnp = in_child(|| {
        // SAFETY: prctl in a throwaway child.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0 {
            0
        } else {
            errno()
        }
    });
    layers.push(layer(
        "no_new_privs",
        nnp,
        true,
        "set-uid and file capabilities cannot raise privileges",
        "kernel too old",
    ));
    let seccomp = in_child(|| {
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
    layers.push(layer(
        "seccomp",
        seccomp,
        true,
        "deny-list filter and x32/32-bit ABI guard installed",
        "the kernel lacks seccomp-bpf",
    ));
    let abi = kernel_abi();
    layers.push(Layer {
        name: "landlock".into(),
        state: if abi > 0 { LayerState::Active } else { LayerState::Missing },
        required: false,
        detail: if abi > 0 {
            format!("ABI {abi}: writes confined to /workspace, /tmp and a few devices")
        } else {
            "the kernel lacks Landlock (5.13+ with lsm=landlock); mount, seccomp and uid isolation still apply".into()
        },
    });
    let (version, controllers, cg_detail, cg_ok) = match detect() {
        Some(Hierarchy::V1(m)) => {
            let names: Vec<String> = m.iter().map(|(c, _)| c.clone()).collect();
            let writable = m.iter().all(|(_, p)| writable_dir(p));
            let detail = if writable {
                format!(
                    "v1 controllers {}: memory, pids and CPU are limited per run",
                    names.join(", ")
                )
            } else {
                "v1 controllers are not writable by this user (v1 cannot be delegated): limits fall back to rlimits only".into()
            };
            ("v1".to_string(), names, detail, writable)
        }
        Some(Hierarchy::V2(root, c)) => {
            let writable = writable_dir(&root) || writable_dir(&root.join("aisbx"));
            let detail = if writable {
                format!(
                    "v2 at {}: memory, pids and CPU are limited per run",
                    root.display()
                )
            } else {
                "v2 is not delegated to this user: limits fall back to rlimits only".into()
            };
            ("v2".to_string(), c, detail, writable)
        }
        None => (
            "none".to_string(),
            Vec::new(),
            "no memory/pids controller mounted: limits fall back to rlimits only".to_string(),
            false,
        ),
    };
    layers.push(Layer {
        name: "cgroups".into(),
        state: if cg_ok {
            LayerState::Active
        } else {
            LayerState::Missing
        },
        required: false,
        detail: cg_detail,
    });
    layers.push(groups_layer(root));
    Report {
        layers,
        cgroup_version: version,
        cgroup_controllers: controllers,
        landlock_abi: abi,
        running_as_root: root,
    }
}

fn writable_dir(p: &std::path::Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: access(2) on a valid C string.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Whether the caller's supplementary groups reach the sandbox.
fn groups_layer(root: bool) -> Layer {
    let extra = crate::groups::extra_groups();
    let (ok, detail) = if root {
        (
            true,
            "dropped before each run (aisbx runs as root)".to_string(),
        )
    } else if extra.is_empty() {
        (true, "this user has none to drop".to_string())
    } else {
        match crate::groups::gid_mapper() {
            Ok(_) => (
                true,
                "dropped in each run: newgidmap maps a subordinate gid from /etc/subgid, so the sandbox may call setgroups".to_string(),
            ),
            Err(why) => (
                false,
                format!(
                    "kept: the sandbox keeps this user's supplementary groups ({}) for access to host files, because {why}",
                    extra
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    };
    Layer {
        name: "supplementary groups".into(),
        state: if ok {
            LayerState::Active
        } else {
            LayerState::Missing
        },
        required: false,
        detail,
    }
}
