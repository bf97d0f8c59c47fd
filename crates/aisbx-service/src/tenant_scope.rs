//! A tenant's view of the service: [`Service::for_tenant`] gives a handle whose
//! sandboxes, snapshot store, quota accounting (its storage root), host id (as
//! root) and quotas are the tenant's alone, so that every operation the gate
//! executes reaches that tenant's state and nothing else. Also HTTP's early 429
//! for a tenant past its runs-per-minute quota.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::service::ensure_private_dir;
use crate::{Caller, RequestMeta, Service, ServiceError};

/// `tenants.toml` as last read, and what identified that version.
pub(crate) type TenantsSeen = (Option<crate::tenants::Stamp>, Arc<crate::tenants::Tenants>);

/// One tenant's share of the state (see [`Service::for_tenant`]).
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub(crate) tenant: String,
    /// Where its sandboxes and snapshot store live: the state directory itself for
    /// `default`, `tenants/NAME/` in it for any other tenant.
    pub(crate) root: PathBuf,
    /// As root, the host id its sandboxes run under and its files belong to
    /// (`None`: the jail's default id, `DEFAULT_HOST_ID`).
    pub(crate) host_id: Option<u32>,
    /// Its quotas: tenants.toml's, lowered by the policy's for the request.
    pub(crate) quota: crate::tenants::Quota,
}

impl Scope {
    /// The `default` tenant of the state directory `home`, without quotas.
    pub(crate) fn default_in(home: &Path) -> Scope {
        Scope {
            tenant: crate::tenants::DEFAULT_TENANT.to_string(),
            root: home.to_path_buf(),
            host_id: None,
            quota: crate::tenants::Quota::default(),
        }
    }

    pub(crate) fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Where the tenant's sandboxes (`sandboxes/`) and snapshots (`snapshots/`) are.
    pub(crate) fn store(&self) -> &Path {
        &self.root
    }

    pub(crate) fn quota(&self) -> crate::tenants::Quota {
        self.quota
    }

    /// As root, the owner of the tenant's sandbox files and snapshot trees: the
    /// host id its sandboxes map to. `None` when not root (files are the user's).
    pub(crate) fn owner(&self) -> Option<(u32, u32)> {
        // SAFETY: getter.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let id = self.host_id.unwrap_or(aisbx_jail::DEFAULT_HOST_ID);
        Some((id, id))
    }
}

impl Service {
    /// The tenant this handle reaches the sandboxes and snapshots of.
    pub fn tenant(&self) -> &str {
        self.scope().tenant()
    }

    /// Where the tenant's sandboxes (`sandboxes/`) and snapshots (`snapshots/`) are.
    pub fn store(&self) -> &Path {
        self.scope().store()
    }

    pub(crate) fn scope(&self) -> &Scope {
        self.runner.scope()
    }

    /// As root, the owner of the tenant's sandbox files and snapshot trees.
    pub(crate) fn sandbox_owner(&self) -> Option<(u32, u32)> {
        self.scope().owner()
    }

    /// `tenants.toml`, re-read only when it changed (one `lstat` otherwise).
    pub fn tenants_file(&self) -> Result<Arc<crate::tenants::Tenants>, ServiceError> {
        let home = self.home();
        let stamp = crate::tenants::stamp(home);
        let mut seen = match self.inner.tenants.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((s, t)) = seen.as_ref()
            && *s == stamp
        {
            return Ok(t.clone());
        }
        let t =
            Arc::new(crate::tenants::load(home).map_err(|e| ServiceError::Refused(e.to_string()))?);
        *seen = Some((stamp, t.clone()));
        Ok(t)
    }

    /// This service as `tenant` sees it: its own sandboxes, snapshots, host id and
    /// quotas only. `default` keeps the state directory's layout; another tenant's
    /// state is `tenants/<name>/` in it (made on first use), and as root its
    /// sandboxes run under `DEFAULT_HOST_ID + index * 65536`, its index recorded
    /// in `tenants.toml`.
    pub fn for_tenant(&self, tenant: &str) -> Result<Service, ServiceError> {
        let home = self.home();
        let file = self.tenants_file()?;
        let quota = file.quota(tenant);
        let (root, host_id) = if tenant == crate::tenants::DEFAULT_TENANT {
            (home.to_path_buf(), None)
        } else {
            if tenant.is_empty() || tenant.len() > 256 || tenant.chars().any(|c| c.is_control()) {
                return Err(ServiceError::Refused(format!(
                    "'{}' cannot name a tenant",
                    tenant.escape_debug()
                )));
            }
            let root = home.join("tenants").join(crate::tenants::dir_name(tenant));
            ensure_private_dir(&root).map_err(|e| {
                ServiceError::Internal(format!(
                    "cannot create the state of tenant '{tenant}' in {}: {e}",
                    root.display()
                ))
            })?;
            // SAFETY: getter.
            let host_id = if unsafe { libc::geteuid() } == 0 {
                let index = match file.settings.get(tenant).and_then(|s| s.index) {
                    Some(i) => i,
                    None => crate::tenants::host_index(home, tenant)
                        .map_err(|e| ServiceError::Refused(e.to_string()))?,
                };
                Some(crate::tenants::host_id(index))
            } else {
                None
            };
            (root, host_id)
        };
        Ok(self.with_scope(Scope {
            tenant: tenant.to_string(),
            root,
            host_id,
            quota,
        }))
    }

    fn with_scope(&self, scope: Scope) -> Service {
        Service {
            inner: self.inner.clone(),
            runner: Arc::new(self.runner.with_scope(scope)),
        }
    }

    /// The quotas of this handle's tenant (tenants.toml's, lowered by the policy's).
    pub fn quota(&self) -> crate::tenants::Quota {
        self.scope().quota
    }

    /// This handle with its quotas lowered by `by` (a policy's `quotas`).
    pub(crate) fn lowered(&self, by: &crate::tenants::Quota) -> Service {
        if by.is_empty() {
            return self.clone();
        }
        let mut scope = self.scope().clone();
        scope.quota = scope.quota.lowered_by(by);
        self.with_scope(scope)
    }

    /// When the caller's tenant is past its runs-per-minute quota, the refusal
    /// (written to the audit log) and the seconds until a run fits again: the
    /// HTTP front end answers 429 with `Retry-After` before the request goes
    /// further. Nothing is reserved; the run's own reservation at the gate stays
    /// the authority (this only answers early).
    pub fn rate_limited(
        &self,
        meta: &RequestMeta,
        args: &serde_json::Value,
    ) -> Option<(ServiceError, u64)> {
        let svc = self.for_tenant(&meta.tenant).ok()?;
        // The policy's `quotas` for the tool and the caller alone.
        let input = serde_json::json!({
            "tool": meta.tool,
            "caller": crate::policy::caller_value(&Caller::from_meta(meta)),
        });
        let q = match &self.policy().bundle {
            Ok(b) => b.quotas(&input).ok()?,
            Err(_) => crate::tenants::Quota::default(),
        };
        let svc = svc.lowered(&q);
        let (wait, refusal) = crate::quota::rate_wait(svc.scope(), &svc.quota()).ok()??;
        self.record_refusal(
            meta,
            args,
            &refusal.to_string(),
            serde_json::json!({"refused": "runs_per_minute"}),
        );
        Some((refusal, wait))
    }
}
