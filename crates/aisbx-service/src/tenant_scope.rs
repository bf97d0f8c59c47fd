//! A tenant's view of the service: [`Service::for_tenant`] gives a handle whose
//! sandboxes, snapshot store, quota accounting (its storage root), host id (as
//! root) and quotas are the tenant's alone, so that every operation below it
//! reaches that tenant's state and nothing else. Also the quota requests of the
//! front ends (`aisbx quota`, the MCP `quota` tool, HTTP's early 429).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::policy;
use crate::service::ensure_private_dir;
use crate::{Caller, RequestMeta, Service, ServiceError};

/// `tenants.toml` as last read, and what identified that version.
pub(crate) type TenantsSeen = (Option<crate::tenants::Stamp>, Arc<crate::tenants::Tenants>);

/// One tenant's share of the state (see [`Service::for_tenant`]).
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

impl Service {
    /// The tenant this handle reaches the sandboxes and snapshots of.
    pub fn tenant(&self) -> &str {
        &self.scope.tenant
    }

    /// Where the tenant's sandboxes (`sandboxes/`) and snapshots (`snapshots/`) are.
    pub fn store(&self) -> &Path {
        &self.scope.root
    }

    /// As root, the owner of the tenant's sandbox files and snapshot trees: the
    /// host id its sandboxes map to. `None` when not root (files are the user's).
    pub(crate) fn sandbox_owner(&self) -> Option<(u32, u32)> {
        // SAFETY: getter.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let id = self.scope.host_id.unwrap_or(aisbx_jail::DEFAULT_HOST_ID);
        Some((id, id))
    }

    /// `tenants.toml`, re-read only when it changed (one `lstat` otherwise).
    pub fn tenants_file(&self) -> Result<Arc<crate::tenants::Tenants>, ServiceError> {
        let home = &self.inner.home;
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
        let home = &self.inner.home;
        let file = self.tenants_file()?;
        let quota = file.quota(tenant);
        let (root, host_id) = if tenant == crate::tenants::DEFAULT_TENANT {
            (home.clone(), None)
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
                Some(aisbx_jail::DEFAULT_HOST_ID + (index << 16))
            } else {
                None
            };
            (root, host_id)
        };
        Ok(Service {
            inner: self.inner.clone(),
            scope: Arc::new(Scope {
                tenant: tenant.to_string(),
                root,
                host_id,
                quota,
            }),
        })
    }

    /// The quotas of this handle's tenant (tenants.toml's, lowered by the policy's).
    pub fn quota(&self) -> crate::tenants::Quota {
        self.scope.quota
    }

    /// This handle with its quotas lowered by `by` (a policy's `quotas`).
    pub(crate) fn lowered(&self, by: &crate::tenants::Quota) -> Service {
        if by.is_empty() {
            return self.clone();
        }
        Service {
            inner: self.inner.clone(),
            scope: Arc::new(Scope {
                tenant: self.scope.tenant.clone(),
                root: self.scope.root.clone(),
                host_id: self.scope.host_id,
                quota: self.scope.quota.lowered_by(by),
            }),
        }
    }

    /// This handle with the policy's `quotas` for `tool` applied, for requests the
    /// policy does not otherwise decide (input: the tool and the caller only).
    pub(crate) fn with_policy_quotas(&self, meta: &RequestMeta) -> Result<Service, ServiceError> {
        let input = serde_json::json!({
            "tool": meta.tool,
            "caller": policy::caller_value(&Caller::from_meta(meta)),
        });
        let q = match &self.inner.policy {
            Ok(b) => b.quotas(&input).map_err(ServiceError::Refused)?,
            // A policy that cannot be loaded lowers nothing (the requests it
            // decides are refused with the reason).
            Err(_) => crate::tenants::Quota::default(),
        };
        Ok(self.lowered(&q))
    }

    /// The caller's tenant's use of each quota and what is left (`aisbx quota`, the
    /// MCP `quota` tool).
    pub fn quota_report(
        &self,
        meta: &RequestMeta,
    ) -> Result<crate::quota::QuotaReport, ServiceError> {
        let r = self
            .for_meta(meta)
            .and_then(|svc| svc.with_policy_quotas(meta))
            .and_then(|svc| crate::quota::report(&svc, &svc.quota()));
        self.record(meta, &serde_json::json!({}), &r);
        r
    }

    /// When the caller's tenant is past its runs-per-minute quota, the refusal
    /// (written to the audit log) and the seconds until a run fits again: the
    /// HTTP front end answers 429 with `Retry-After` before the request goes
    /// further. Nothing is reserved; the run's own reservation stays the
    /// authority (this only answers early).
    pub fn rate_limited(
        &self,
        meta: &RequestMeta,
        args: &serde_json::Value,
    ) -> Option<(ServiceError, u64)> {
        let svc = self.for_meta(meta).ok()?.with_policy_quotas(meta).ok()?;
        let (wait, refusal) = crate::quota::rate_wait(&svc, &svc.quota()).ok()??;
        let r: Result<(), ServiceError> = Err(ServiceError::Refused(refusal.to_string()));
        self.record(meta, args, &r);
        Some((refusal, wait))
    }

    /// This service as the caller of `meta` sees it ([`Service::for_tenant`]).
    pub(crate) fn for_meta(&self, meta: &RequestMeta) -> Result<Service, ServiceError> {
        self.for_tenant(&meta.tenant)
    }
}
