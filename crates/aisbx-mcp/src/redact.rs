//! What MCP clients are never told: host paths. Results name a workdir snapshot's
//! source `workdir`, leave out a sandbox's lower layer and a profile's file, and
//! error messages have the user profile directory, the state directory and the
//! home directory replaced.

use std::path::Path;

use aisbx_service::{ProfileList, RestoreResult, RunPlan, SandboxList, SnapshotInfo, SnapshotList};

/// `text` with a user profile named by its file name alone, the state directory
/// written `$AISBX_HOME` and the user's home `~`.
pub fn text(text: &str, home: &Path) -> String {
    let mut out = text.to_string();
    if let Some(dir) = aisbx_service::profile::user_profiles_dir() {
        let d = dir.to_string_lossy();
        let d = d.trim_end_matches('/');
        if d.len() > 1 {
            out = out.replace(&format!("{d}/"), "");
        }
    }
    let mut states = vec![home.to_path_buf()];
    if let Ok(canon) = std::fs::canonicalize(home)
        && canon != home
    {
        states.push(canon);
    }
    for state in states {
        out = replace_path(&out, &state, "$AISBX_HOME");
    }
    if let Some(user_home) = std::env::var_os("HOME").map(std::path::PathBuf::from)
        && user_home.is_absolute()
        && user_home.components().count() > 1
    {
        out = replace_path(&out, &user_home, "~");
    }
    out
}

/// Replaces `path` where it is a whole path or a leading part of one (`/root` in
/// `/root/x`, not in `/rootfs`).
fn replace_path(text: &str, path: &Path, with: &str) -> String {
    let p = path.to_string_lossy();
    let p = p.trim_end_matches('/');
    if p.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(p) {
        let after = &rest[i + p.len()..];
        let whole = !after
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || "._-".contains(c));
        out.push_str(&rest[..i]);
        out.push_str(if whole { with } else { p });
        rest = after;
    }
    out.push_str(rest);
    out
}

pub fn sandbox_list(mut l: SandboxList) -> SandboxList {
    for sb in &mut l.sandboxes {
        sb.lower = None;
    }
    l
}

/// A snapshot of a workdir names its source `workdir`, not the directory.
pub fn snapshot_info(mut s: SnapshotInfo) -> SnapshotInfo {
    if s.source.starts_with("workdir:") || s.source == "workdir" {
        s.source = "workdir".into();
    } else if !s.source.starts_with("sandbox:") {
        s.source = "other".into();
    }
    s
}

pub fn snapshot_list(mut l: SnapshotList) -> SnapshotList {
    l.snapshots = l.snapshots.into_iter().map(snapshot_info).collect();
    l
}

pub fn restore_result(mut r: RestoreResult) -> RestoreResult {
    if r.workdir.is_some() {
        r.workdir = Some("workdir".into());
    }
    r
}

/// Profiles without the file they come from (`source` says builtin, user or project).
pub fn profile_list(mut l: ProfileList) -> ProfileList {
    for p in &mut l.profiles {
        if let Some(path) = p.path.take()
            && let Some(m) = &p.missing
        {
            p.missing = Some(m.replace(&path, "its file"));
        }
    }
    l
}

/// A dry run's plan: its command and notes may name a script or a project's
/// directory under the home or state directory.
pub fn run_plan(mut p: RunPlan, home: &Path) -> RunPlan {
    p.argv = p.argv.iter().map(|a| text(a, home)).collect();
    p.notices = p.notices.iter().map(|n| text(n, home)).collect();
    p.policy = text(&p.policy, home);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_replaced() {
        let home = Path::new("/srv/state/aisbx");
        assert_eq!(
            text("cannot open /srv/state/aisbx/snapshots/a: EIO", home),
            "cannot open $AISBX_HOME/snapshots/a: EIO"
        );
        assert_eq!(text("no path here", home), "no path here");
        assert_eq!(
            replace_path(
                "/root/a, /rootfs/b, /root: x /root",
                Path::new("/root"),
                "~"
            ),
            "~/a, /rootfs/b, ~: x ~"
        );
    }

    #[test]
    fn workdir_sources_are_named_workdir() {
        let mk = |source: &str| SnapshotInfo {
            name: "s".into(),
            id: "i".into(),
            created_at: String::new(),
            source: source.into(),
            profile: None,
            parent: None,
            files: 0,
            dirs: 0,
            symlinks: 0,
            bytes: 0,
            skipped: 0,
            shared_bytes: None,
            damaged: None,
        };
        assert_eq!(snapshot_info(mk("workdir:/home/u/proj")).source, "workdir");
        assert_eq!(snapshot_info(mk("sandbox:sb-1")).source, "sandbox:sb-1");
        assert_eq!(snapshot_info(mk("/odd/path")).source, "other");
    }
}
