//! Supplementary groups of a non-root caller.
//!
//! A process keeps its supplementary groups when it enters a new user namespace,
//! and the kernel checks them against host files (a `root:adm 0640` log in a
//! bound directory, say). As root, the supervisor writes the sandbox's gid map
//! itself, which leaves `setgroups` allowed, and the sandbox's init drops them
//! before it changes ids. An
//! unprivileged caller cannot: the kernel lets a user namespace call `setgroups`
//! only when its gid map was written by someone privileged over the parent
//! namespace. `newgidmap` (shadow's setuid helper, Debian package `uidmap`) is
//! that someone when `/etc/subgid` gives the user a subordinate range: it maps
//! the user's own gid and one subordinate gid, leaves `setgroups` allowed, and
//! the sandbox's init then drops every supplementary group before it changes
//! ids. Without `newgidmap` or a range, the groups stay, and `aisbx doctor` says
//! so.

use std::path::{Path, PathBuf};

/// Where `newgidmap` is looked for (the setuid helper must be the system's).
const NEWGIDMAP: &[&str] = &["/usr/bin/newgidmap", "/bin/newgidmap"];

/// The calling process's supplementary groups other than its effective gid.
pub fn extra_groups() -> Vec<u32> {
    // SAFETY: getter.
    let egid = unsafe { libc::getegid() };
    nix::unistd::getgroups()
        .map(|g| {
            g.into_iter()
                .map(|g| g.as_raw())
                .filter(|&g| g != egid)
                .collect()
        })
        .unwrap_or_default()
}

/// How the sandbox's gid map is written so that its groups can be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GidMapper {
    newgidmap: PathBuf,
    /// The first subordinate gid of the user's first range.
    sub_gid: u32,
}

/// The first subordinate gid `/etc/subgid` (content `subgid`) gives the user
/// `name` (uid `uid`): entries `owner:start:count`, owner by name or number.
fn first_subgid(subgid: &str, name: &str, uid: u32) -> Option<u32> {
    subgid.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (owner, start, count) = (f.next()?, f.next()?, f.next()?);
        let start: u32 = start.parse().ok()?;
        let count: u32 = count.parse().ok()?;
        let owner_is_user = owner == name || owner.parse::<u32>().ok() == Some(uid);
        (owner_is_user && count > 0 && f.next().is_none()).then_some(start)
    })
}

/// The way to drop this user's groups, or why there is none.
pub fn gid_mapper() -> Result<GidMapper, String> {
    let newgidmap = NEWGIDMAP
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or("newgidmap is not installed (Debian package uidmap)")?;
    // SAFETY: getter.
    let uid = unsafe { libc::getuid() };
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .ok_or_else(|| format!("uid {uid} has no user name for /etc/subgid"))?;
    let subgid = std::fs::read_to_string("/etc/subgid").unwrap_or_default();
    let sub_gid = first_subgid(&subgid, &user.name, uid).ok_or_else(|| {
        format!(
            "/etc/subgid gives {} no subordinate gids (usermod --add-subgids)",
            user.name
        )
    })?;
    // newgidmap maps the user's own gid only when it is the passwd entry's.
    // SAFETY: getter.
    let egid = unsafe { libc::getegid() };
    if user.gid.as_raw() != egid {
        return Err(format!(
            "the effective gid {egid} is not {}'s primary group, which newgidmap requires",
            user.name
        ));
    }
    Ok(GidMapper {
        newgidmap: newgidmap.to_path_buf(),
        sub_gid,
    })
}

impl GidMapper {
    /// Write the gid map of process `pid`: `inside` → `host_gid`, and `inside + 1`
    /// → one subordinate gid (what makes newgidmap leave `setgroups` allowed).
    pub fn map(&self, pid: i32, inside: u32, host_gid: u32) -> Result<(), String> {
        let out = std::process::Command::new(&self.newgidmap)
            .args([
                pid.to_string(),
                inside.to_string(),
                host_gid.to_string(),
                "1".into(),
                (inside + 1).to_string(),
                self.sub_gid.to_string(),
                "1".into(),
            ])
            .env_clear()
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", self.newgidmap.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed: {}",
                self.newgidmap.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_are_found_by_name_or_uid() {
        let f = "# comment\nalice:100000:65536\nbob:200000:0\n1001:300000:10\nbad:x:1\ncarol:400000:5:extra\n";
        assert_eq!(first_subgid(f, "alice", 1000), Some(100_000));
        assert_eq!(first_subgid(f, "bob", 1002), None, "an empty range");
        assert_eq!(first_subgid(f, "dave", 1001), Some(300_000));
        assert_eq!(first_subgid(f, "bad", 7), None);
        assert_eq!(first_subgid(f, "carol", 7), None);
        assert_eq!(first_subgid("", "alice", 1000), None);
    }
}
