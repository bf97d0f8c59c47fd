//! The service: its state (the state directory, the audit log, the policy
//! bundle) and the operations the gate (`gate.rs`) carries out. Front ends reach
//! none of these operations: they call [`Service::call`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ServiceError;
use crate::audit::AuditLog;
use crate::hostpath::{self, Perimeter, Use};
use crate::policy::{self, Decision, PolicyError};
use crate::profile;
use crate::runner::{Runner, SANDBOX_PATH};

#[derive(Debug, Clone, Default)]
pub struct ServiceConfig {
    /// State directory; `None` means `$AISBX_HOME`, else the XDG data dir
    /// (`/var/lib/aisbx` for root).
    pub home: Option<PathBuf>,
    /// The policy directory (`--policy DIR`); `None` means `$AISBX_POLICY`, else
    /// `/etc/aisbx/policy` and `$AISBX_HOME/policy` together, else the embedded
    /// default policy (docs/POLICY.md).
    pub policy: Option<PathBuf>,
}

/// The state directory per the SPEC.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("AISBX_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    // SAFETY: getter.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/aisbx");
    }
    // A relative XDG_DATA_HOME is invalid and ignored, as the XDG spec says.
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|h| Path::new(h).is_absolute()) {
        return PathBuf::from(x).join("aisbx");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/share/aisbx")
}

pub(crate) struct Inner {
    audit: Arc<AuditLog>,
    /// Where the policy comes from: `--policy DIR` / `AISBX_POLICY`, else the
    /// standard directories, else the embedded default.
    policy_dir: Option<PathBuf>,
    /// The active policy: read and parsed by `open`, replaced as a whole by a
    /// successful `reload_policy`.
    policy: std::sync::RwLock<Arc<ActivePolicy>>,
    /// `tenants.toml` as last read, and what identified that version.
    pub(crate) tenants: std::sync::Mutex<Option<crate::tenant_scope::TenantsSeen>>,
}

/// The policy that decides requests now.
#[derive(Debug)]
pub struct ActivePolicy {
    /// The bundle; when it cannot be loaded, every request it would decide is
    /// refused with the reason.
    pub bundle: Result<policy::Bundle, PolicyError>,
    /// The bundle's hash (also of one that failed to parse), for the audit log.
    pub hash: Option<String>,
}

/// The aisbx service. Cheap to clone; safe to share between threads. Front ends
/// reach it through [`Service::call`] (`gate.rs`); the operations below are the
/// gate's to call.
#[derive(Clone)]
pub struct Service {
    pub(crate) inner: Arc<Inner>,
    /// The state directory, the host PATH runs need, and whose sandboxes and
    /// snapshots this handle reaches: the caller's tenant (`tenant_scope.rs`).
    pub(crate) runner: Arc<Runner>,
}

impl Service {
    pub fn open(cfg: ServiceConfig) -> Result<Service, ServiceError> {
        let home = cfg.home.unwrap_or_else(default_home);
        if !home.is_absolute() {
            // Its meaning would change with the directory each command starts in.
            return Err(ServiceError::Refused(format!(
                "the state directory must be an absolute path, not '{}': set AISBX_HOME to one (e.g. \"$PWD/{}\")",
                home.display(),
                home.display()
            )));
        }
        ensure_private_dir(&home).map_err(|e| {
            ServiceError::Internal(format!(
                "cannot create the state directory {}: {e}; set AISBX_HOME to a writable directory",
                home.display()
            ))
        })?;
        let audit = Arc::new(AuditLog::open(home.join("audit.jsonl")).map_err(|e| {
            ServiceError::Internal(format!(
                "cannot open the audit log in {}: {e}",
                home.display()
            ))
        })?);
        let host_path = std::env::var("PATH").unwrap_or_else(|_| SANDBOX_PATH.to_string());
        let policy_dir = cfg.policy.or_else(policy::env_dir);
        let sources = policy::Sources::locate(policy_dir.as_deref(), &home);
        let hash = sources.as_ref().ok().map(|s| s.hash.clone());
        let bundle = sources
            .and_then(|s| policy::Bundle::parse(&s, false))
            .map_err(|e| {
                // The first line: a parser's excerpt of the source follows it.
                let first = e.0.lines().next().unwrap_or_default();
                PolicyError(format!(
                    "the policy cannot be loaded, so requests are refused: {first}; check it with `aisbx policy check`"
                ))
            });
        if let Some(h) = &hash {
            audit.set_policy(h);
        }
        Ok(Service {
            runner: Arc::new(Runner::new(home, host_path).with_audit(audit.clone())),
            inner: Arc::new(Inner {
                audit,
                policy_dir,
                policy: std::sync::RwLock::new(Arc::new(ActivePolicy { bundle, hash })),
                tenants: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The policy requests are decided by now (a reload may replace it later).
    pub fn policy(&self) -> Arc<ActivePolicy> {
        let p = self.inner.policy.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&p)
    }

    /// Reads the policy's files again and, when they changed, replaces the active
    /// policy as a whole — only when the new bundle parses and every one of its
    /// `test_*` rules passes. Otherwise the active policy stays, and the outcome
    /// says why; either way it is written to `policy-reload.json` in the state
    /// directory for `aisbx policy status`.
    pub fn reload_policy(&self) -> policy::Reload {
        let active = self.policy();
        let outcome = match policy::Sources::locate(self.inner.policy_dir.as_deref(), self.home()) {
            Err(e) => policy::Reload::Rejected {
                bundle: None,
                error: e.0,
                active: active.hash.clone(),
            },
            Ok(src) if active.hash.as_deref() == Some(src.hash.as_str()) => {
                return policy::Reload::Unchanged;
            }
            Ok(src) => match policy::Bundle::parse(&src, false).and_then(|b| {
                policy::tests_pass(&src)?;
                Ok(b)
            }) {
                Ok(bundle) => {
                    let hash = src.hash.clone();
                    self.inner.audit.set_policy(&hash);
                    let mut p = self.inner.policy.write().unwrap_or_else(|e| e.into_inner());
                    *p = Arc::new(ActivePolicy {
                        bundle: Ok(bundle),
                        hash: Some(hash.clone()),
                    });
                    policy::Reload::Loaded { bundle: hash }
                }
                Err(e) => policy::Reload::Rejected {
                    bundle: Some(src.hash.clone()),
                    error: e.0,
                    active: active.hash.clone(),
                },
            },
        };
        policy::record_reload(self.home(), &outcome);
        outcome
    }

    /// Decides `input` (the document of docs/POLICY.md) with the service's policy.
    pub(crate) fn decide(&self, input: &serde_json::Value) -> Result<Decision, ServiceError> {
        match &self.policy().bundle {
            Ok(b) => Ok(b.decide(input)),
            Err(e) => Err(ServiceError::Refused(e.0.clone())),
        }
    }

    /// Decides `input` and refuses unless the policy allows it.
    pub(crate) fn enforce(&self, input: &serde_json::Value) -> Result<Decision, ServiceError> {
        let d = self.decide(input)?;
        match d.refusal() {
            Some(why) => Err(ServiceError::Refused(why)),
            None => Ok(d),
        }
    }

    /// The state directory (read-only: front ends find the tenants file and the
    /// server's token there).
    pub fn home(&self) -> &Path {
        self.runner.home()
    }

    pub(crate) fn audit_log(&self) -> &AuditLog {
        &self.inner.audit
    }

    pub(crate) fn runner(&self) -> &Runner {
        &self.runner
    }

    /// Where the policy came from, in words.
    pub fn policy_origin(&self) -> String {
        match &self.policy().bundle {
            Ok(b) => b.origin.to_string(),
            Err(_) => "(not loaded)".to_string(),
        }
    }

    /// Every profile, for `aisbx profile show|detect|validate`; host runtimes are
    /// looked up on the caller's PATH. A project's profiles are in it only when
    /// approved (`aisbx trust`); otherwise they are listed as untrusted.
    pub(crate) fn profiles(&self, project_start: Option<&Path>) -> profile::Catalog {
        self.runner.profiles(project_start)
    }

    /// As [`Service::profiles`], with a project's unapproved profiles in it too,
    /// for review (`aisbx profile show|validate`); runs never use this.
    pub(crate) fn profiles_for_review(&self, project_start: Option<&Path>) -> profile::Catalog {
        profile::Catalog::load_for_review(project_start, self.home())
            .with_host_path(self.runner.host_path())
    }

    /// The caller's perimeter for the host-path check (no profile widening).
    pub(crate) fn perimeter(&self) -> Perimeter {
        Perimeter::for_caller(self.home())
    }

    /// The one check of a host path a request names ([`hostpath::check`]): its
    /// canonical form, or an invalid `field` naming the rule broken.
    pub(crate) fn check_host_path(
        &self,
        field: &str,
        path: &Path,
        perimeter: &Perimeter,
    ) -> Result<PathBuf, ServiceError> {
        hostpath::check(path, Use::Request, perimeter)
            .map_err(|e| ServiceError::invalid(field, e.to_string()))
    }
}

/// Make `dir` (and its parents) if it is missing, and leave it readable by its
/// owner alone: it holds the audit log and the sandboxes.
pub(crate) fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    if std::fs::metadata(dir)?.permissions().mode() & 0o077 != 0 {
        // Best effort: a directory we do not own stays as it is.
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// Replaces `dir/name` whole with `bytes`, readable by its owner alone: a fresh
/// temporary file beside it (never following a link), synced, renamed into
/// place, so that a reader sees the old content or the new, never a part.
pub(crate) fn write_private_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    // The umask can only remove bits; make the mode exactly 0600.
    let done = f
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| f.write_all(bytes))
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, dir.join(name)));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub(crate) fn summarize(v: serde_json::Value) -> serde_json::Value {
    // Keep the audit line small: no output, only the outcome.
    match v {
        serde_json::Value::Object(mut m) => {
            for k in ["stdout", "stderr"] {
                if let Some(s) = m.remove(k) {
                    m.insert(
                        format!("{k}_bytes"),
                        serde_json::json!(s.as_str().map(str::len).unwrap_or(0)),
                    );
                }
            }
            if let Some(serde_json::Value::Array(setup)) = m.remove("setup") {
                m.insert(
                    "setup".into(),
                    serde_json::Value::Array(setup.into_iter().map(summarize).collect()),
                );
            }
            if let Some(serde_json::Value::Array(p)) = m.remove("profiles") {
                m.insert("profiles".into(), serde_json::json!(p.len()));
            }
            serde_json::Value::Object(m)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::new_id;

    #[test]
    fn ids_are_random() {
        let ids: std::collections::BTreeSet<String> = (0..64).map(|_| new_id("req")).collect();
        assert_eq!(ids.len(), 64, "{ids:?}");
        for id in &ids {
            let hex = id.strip_prefix("req-").unwrap();
            assert!(
                hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id}"
            );
        }
        assert!(!ids.contains("req-000000000000"));
    }

    #[test]
    fn the_state_directory_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let t = tempfile::tempdir().unwrap();
        // Missing, with a missing parent: the parent gets the usual mode.
        let home = t.path().join("data/aisbx");
        ensure_private_dir(&home).unwrap();
        assert_eq!(mode(&home), 0o700);
        std::fs::create_dir(t.path().join("ref")).unwrap();
        assert_eq!(mode(&t.path().join("data")), mode(&t.path().join("ref")));
        // Present but open to others: closed again.
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&home).unwrap();
        assert_eq!(mode(&home), 0o700);
        // A file in the way is an error, not a success.
        let file = t.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(ensure_private_dir(&file).is_err());
        // The audit log opens in a directory it has to make.
        let log = AuditLog::open(t.path().join("new/dir/audit.jsonl")).unwrap();
        assert!(log.path().exists());
    }

    #[test]
    fn summaries_drop_output() {
        let s = summarize(serde_json::json!({"stdout": "abc", "stderr": "", "exit_code": 0}));
        assert_eq!(
            s,
            serde_json::json!({"stdout_bytes": 3, "stderr_bytes": 0, "exit_code": 0})
        );
    }
}
