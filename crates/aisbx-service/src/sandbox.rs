//! Persistent sandboxes: a workspace on the host under the state directory and the
//! profile it runs with. Every run in one gets a fresh jail over that workspace, so
//! files persist across calls while processes do not.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::rfc3339_now;
use crate::service::{Service, new_id};
use crate::{
    BuildRequest, BuildResult, CancelToken, NullSink, Program, RunRequest, ServiceError, profile,
};

/// What is recorded about a sandbox (`meta.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SandboxInfo {
    pub id: String,
    pub profile: String,
    pub created_at: String,
    #[serde(skip)]
    pub workspace: PathBuf,
}

fn sandboxes_dir(home: &Path) -> PathBuf {
    home.join("sandboxes")
}

/// Names: 1–64 of `A-Z a-z 0-9 _ . -`, not starting with a dot or dash.
pub fn check_name(name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            "name",
            format!(
                "'{name}' is not a valid sandbox name: use 1-64 letters, digits, '_', '.', '-'"
            ),
        ))
    }
}

pub(crate) fn load(svc: &Service, id: &str) -> Result<SandboxInfo, ServiceError> {
    check_name(id).map_err(|_| {
        ServiceError::invalid("sandbox_id", format!("'{id}' is not a valid sandbox id"))
    })?;
    let dir = sandboxes_dir(svc.home()).join(id);
    let meta = std::fs::read(dir.join("meta.json"))
        .map_err(|_| ServiceError::NoSuchSandbox(id.to_string()))?;
    let mut info: SandboxInfo = serde_json::from_slice(&meta).map_err(|e| {
        ServiceError::Internal(format!("the record of sandbox '{id}' is damaged: {e}"))
    })?;
    info.workspace = dir.join("workspace");
    Ok(info)
}

/// Every persistent sandbox, oldest first.
pub fn list_sandboxes(svc: &Service) -> Vec<SandboxInfo> {
    let mut v: Vec<SandboxInfo> = std::fs::read_dir(sandboxes_dir(svc.home()))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| load(svc, &e.file_name().to_string_lossy()).ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    v
}

/// Delete a sandbox and its workspace.
pub fn remove_sandbox(svc: &Service, id: &str) -> Result<(), ServiceError> {
    let info = load(svc, id)?;
    let dir = info
        .workspace
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| ServiceError::Internal("bad sandbox path".into()))?;
    std::fs::remove_dir_all(&dir)
        .map_err(|e| ServiceError::Internal(format!("cannot remove sandbox '{id}': {e}")))
}

pub(crate) fn build(
    svc: &Service,
    req: BuildRequest,
    cancel: &CancelToken,
) -> Result<BuildResult, ServiceError> {
    let id = match &req.name {
        Some(n) => {
            check_name(n)?;
            n.clone()
        }
        None => new_id("sbx"),
    };
    let profile = profile::find(req.profile.as_deref().unwrap_or(profile::DEFAULT_PROFILE))?;
    if req.setup.len() > 64 {
        return Err(ServiceError::invalid(
            "setup",
            "more than 64 setup commands",
        ));
    }
    let root = sandboxes_dir(svc.home());
    std::fs::create_dir_all(&root)
        .map_err(|e| ServiceError::Internal(format!("cannot create {}: {e}", root.display())))?;
    let dir = root.join(&id);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(ServiceError::invalid(
                "name",
                format!("a sandbox named '{id}' already exists"),
            ));
        }
        Err(e) => {
            return Err(ServiceError::Internal(format!(
                "cannot create {}: {e}",
                dir.display()
            )));
        }
    }
    let workspace = dir.join("workspace");
    let made = (|| -> Result<SandboxInfo, ServiceError> {
        std::fs::create_dir(&workspace).map_err(|e| {
            ServiceError::Internal(format!("cannot create {}: {e}", workspace.display()))
        })?;
        // As root, the workspace belongs to the unprivileged id the sandbox maps to.
        // SAFETY: getter.
        if unsafe { libc::geteuid() } == 0 {
            let id = aisbx_jail::DEFAULT_HOST_ID;
            std::os::unix::fs::chown(&workspace, Some(id), Some(id)).map_err(|e| {
                ServiceError::Internal(format!(
                    "cannot hand {} to the sandbox user: {e}",
                    workspace.display()
                ))
            })?;
        }
        let info = SandboxInfo {
            id: id.clone(),
            profile: profile.name.clone(),
            created_at: rfc3339_now(),
            workspace: workspace.clone(),
        };
        let json =
            serde_json::to_vec_pretty(&info).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let tmp = dir.join("meta.json.tmp");
        std::fs::write(&tmp, json)
            .map_err(|e| ServiceError::Internal(format!("cannot record the sandbox: {e}")))?;
        std::fs::rename(&tmp, dir.join("meta.json"))
            .map_err(|e| ServiceError::Internal(format!("cannot record the sandbox: {e}")))?;
        Ok(info)
    })();
    let info = match made {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let mut setup = Vec::new();
    // Files are written from inside a sandbox run, so a path can never reach the host.
    if !req.files.is_empty() {
        let mut r = RunRequest::new(Program::Command(vec!["true".into()]));
        r.sandbox_id = Some(info.id.clone());
        r.files = req.files.clone();
        let p = svc.prepare(&r);
        let res = p.and_then(|p| svc.execute(p, &mut NullSink, cancel));
        if let Err(e) = res {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    }
    for cmd in &req.setup {
        let mut r = RunRequest::new(Program::Command(vec![
            "sh".into(),
            "-c".into(),
            cmd.clone(),
        ]));
        r.sandbox_id = Some(info.id.clone());
        let res = svc
            .prepare(&r)
            .and_then(|p| svc.execute(p, &mut NullSink, cancel))?;
        let failed = res.exit_code != Some(0);
        setup.push(res);
        if failed || cancel.is_cancelled() {
            break;
        }
    }
    Ok(BuildResult {
        sandbox_id: info.id,
        profile: info.profile,
        created_at: info.created_at,
        setup,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "dev-env", "x_1.2"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
