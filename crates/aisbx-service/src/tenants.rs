//! Tenants and their HTTP bearer tokens: `tenants.toml` in the state directory.
//!
//! The file holds each token's SHA-256, never the token: a token is printed once,
//! when it is made (`aisbx tenant add NAME`, `aisbx tenant rotate NAME`). It is
//! written whole to a private temporary file and renamed into place (mode 0600, under
//! an exclusive lock, so two commands never lose each other's change), and it is
//! refused when another user could read or replace it.
//!
//! ```toml
//! [[tenant]]
//! name = "acme"
//! created = "2026-12-01T23:50:00.000Z"
//!
//! [[tenant.token]]
//! id = "3f9a1c0d2b7e"
//! sha256 = "…64 hex digits…"
//! created = "2026-12-01T23:50:00.000Z"
//! ```

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file's name in the state directory.
pub const TENANTS_FILE: &str = "tenants.toml";
const LOCK_FILE: &str = ".tenants.lock";
/// Longest file read.
const MAX_FILE: u64 = 4 * 1024 * 1024;
/// Every token starts with this (secret scanners can recognise it).
pub const TOKEN_PREFIX: &str = "aisbx_";
/// Longest tenant name.
pub const MAX_NAME: usize = 64;
/// The tenant of every caller nothing maps to another; its state is the state
/// directory's own (no `tenants/` subdirectory), as before tenants existed.
pub const DEFAULT_TENANT: &str = "default";
/// Most host-id ranges: `DEFAULT_HOST_ID + index * 65536` stays below 2^32 - 1.
pub const MAX_INDEX: u32 = ((u32::MAX - aisbx_jail::DEFAULT_HOST_ID) >> 16) - 1;

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing {path}: {why}")]
    Insecure { path: PathBuf, why: String },
    #[error("{path} is not a valid tenants file: {why}; fix it or remove it")]
    Parse { path: PathBuf, why: String },
    #[error(
        "'{0}' is not a tenant name: use 1 to {MAX_NAME} lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
    )]
    BadName(String),
    #[error("the tenant '{0}' already exists; `aisbx tenant rotate {0}` gives it a new token")]
    Exists(String),
    #[error("there is no tenant '{0}'; `aisbx tenant list` shows them")]
    NoSuchTenant(String),
    #[error("the tenant '{0}' has no token {1}; `aisbx tenant list` shows its token ids")]
    NoSuchToken(String, String),
    #[error("cannot get random bytes for a token: {0}")]
    Random(std::io::Error),
    #[error("'{0}' is the tenant of every unmapped caller and has no tokens; choose another name")]
    Reserved(String),
    #[error("no host-id range is left for another tenant (at most {MAX_INDEX})")]
    NoIndex,
    #[error("'{0}' is not a user id: give a number such as 1000")]
    BadUid(String),
}

/// One token, by its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    /// A short public name for the token (the start of its hash's hash): shown by
    /// `tenant list`, written to the audit log, used to revoke it.
    pub id: String,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    pub created: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub name: String,
    pub created: String,
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenEntry>,
}

/// What the file says about a tenant besides its tokens (`[tenants.NAME]`): its
/// host-id index and its quotas. Kept when a tenant is removed, so that a tenant
/// made again under the same name finds its files under the same host ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Which range of host ids its sandboxes run under as root
    /// (`DEFAULT_HOST_ID + index * 65536`); given once, never reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    #[serde(default, skip_serializing_if = "Quota::is_empty")]
    pub quota: Quota,
}

/// A tenant's quotas (`[tenants.NAME.quota]`); a missing one is unlimited.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Runs (and builds) going on at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent_runs: Option<u64>,
    /// Persistent sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandboxes: Option<u64>,
    /// Bytes on disk: sandboxes' files and snapshots (a deduplicated object once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_bytes: Option<u64>,
    /// CPU seconds used by runs over the last hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds_per_hour: Option<u64>,
    /// Runs started over the last minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_per_minute: Option<u64>,
}

impl Quota {
    pub fn is_empty(&self) -> bool {
        *self == Quota::default()
    }

    /// Each quota at the lower of the two (a missing one does not raise).
    pub fn lowered_by(&self, other: &Quota) -> Quota {
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        Quota {
            concurrent_runs: min(self.concurrent_runs, other.concurrent_runs),
            sandboxes: min(self.sandboxes, other.sandboxes),
            storage_bytes: min(self.storage_bytes, other.storage_bytes),
            cpu_seconds_per_hour: min(self.cpu_seconds_per_hour, other.cpu_seconds_per_hour),
            runs_per_minute: min(self.runs_per_minute, other.runs_per_minute),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenants {
    /// The next host-id index to give (indexes are never reused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_index: Option<u32>,
    /// Which tenant a local user is (`[uids]`, `1000 = "alice"`): the CLI's, a
    /// Unix-socket peer's and a stdio server's user. Unmapped users are `default`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub uids: BTreeMap<String, String>,
    /// Per tenant (`default` included): index and quotas.
    #[serde(
        default,
        rename = "tenants",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub settings: BTreeMap<String, Settings>,
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<Tenant>,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    pub tenant: String,
    pub token_id: String,
}

/// Whether `name` may name a tenant (it may become a directory name).
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        })
}

fn token_hash(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// The public id of a token: the first 12 hex digits of the SHA-256 of its hash (so
/// the id tells nothing usable about the token or its stored hash).
fn token_id(hash: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(hash)[..6])
}

fn random_token() -> Result<String, TenantError> {
    let b = random_bytes::<32>().map_err(TenantError::Random)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(b)))
}

/// `N` bytes from the kernel's random source (`getrandom`), for tokens.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    let mut filled = 0;
    while filled < b.len() {
        // SAFETY: getrandom writes at most the remaining length into our buffer.
        let n = unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), b.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(b)
}

/// Compares two digests without an early exit.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

impl Tenants {
    /// The tenant a presented token belongs to. Every stored hash is compared, each
    /// in constant time.
    pub fn authenticate(&self, token: &[u8]) -> Option<TokenOwner> {
        let presented = token_hash(token);
        let mut found = None;
        for t in &self.tenants {
            for k in &t.tokens {
                let mut stored = [0u8; 32];
                if hex::decode_to_slice(&k.sha256, &mut stored).is_err() {
                    continue;
                }
                if same_digest(&presented, &stored) && found.is_none() {
                    found = Some(TokenOwner {
                        tenant: t.name.clone(),
                        token_id: k.id.clone(),
                    });
                }
            }
        }
        found
    }

    /// The tenant a local user is: the one `[uids]` maps it to, else `default`.
    pub fn tenant_of_uid(&self, uid: u32) -> String {
        self.uids
            .get(&uid.to_string())
            .cloned()
            .unwrap_or_else(|| DEFAULT_TENANT.to_string())
    }

    /// Whether `name` is a tenant of the file (or `default`).
    pub fn exists(&self, name: &str) -> bool {
        name == DEFAULT_TENANT || self.tenants.iter().any(|t| t.name == name)
    }

    /// The quotas the file sets for `tenant` (none: unlimited).
    pub fn quota(&self, tenant: &str) -> Quota {
        self.settings
            .get(tenant)
            .map(|s| s.quota)
            .unwrap_or_default()
    }

    /// Gives `name` a host-id index when it has none; returns it (`default`: 0).
    fn index_for(&mut self, name: &str) -> Result<u32, TenantError> {
        if name == DEFAULT_TENANT {
            return Ok(0);
        }
        if let Some(i) = self.settings.get(name).and_then(|s| s.index) {
            return Ok(i);
        }
        // One past every index given, whatever `next_index` says.
        let used = self
            .settings
            .values()
            .filter_map(|s| s.index)
            .max()
            .unwrap_or(0);
        let i = self.next_index.unwrap_or(1).max(used + 1).max(1);
        if i > MAX_INDEX {
            return Err(TenantError::NoIndex);
        }
        self.next_index = Some(i + 1);
        self.settings.entry(name.to_string()).or_default().index = Some(i);
        Ok(i)
    }

    fn get_mut(&mut self, name: &str) -> Result<&mut Tenant, TenantError> {
        self.tenants
            .iter_mut()
            .find(|t| t.name == name)
            .ok_or_else(|| TenantError::NoSuchTenant(name.to_string()))
    }
}

/// The path of the tenants file in `home`.
pub fn path(home: &Path) -> PathBuf {
    home.join(TENANTS_FILE)
}

/// What identifies a version of the file and its metadata (a chmod or chown counts,
/// through ctime), to notice a change without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mode: u32,
    uid: u32,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The file's [`Stamp`]; `None` when there is no file.
pub fn stamp(home: &Path) -> Option<Stamp> {
    let m = std::fs::symlink_metadata(path(home)).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mode: m.mode(),
        uid: m.uid(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// Reads the tenants file (none: no tenants). It must be a regular file (not a
/// link), owned by this user and not readable or writable by others.
pub fn load(home: &Path) -> Result<Tenants, TenantError> {
    let path = path(home);
    let read = |source| TenantError::Read {
        path: path.clone(),
        source,
    };
    let mut f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tenants::default()),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(TenantError::Insecure {
                path,
                why: "it is a symbolic link".into(),
            });
        }
        Err(e) => return Err(read(e)),
    };
    let meta = f.metadata().map_err(read)?;
    let uid = nix::unistd::geteuid().as_raw();
    if !meta.is_file() {
        return Err(TenantError::Insecure {
            path,
            why: "it is not a regular file".into(),
        });
    }
    if meta.uid() != uid {
        return Err(TenantError::Insecure {
            path,
            why: format!("it is owned by uid {}, not by you (uid {uid})", meta.uid()),
        });
    }
    if meta.mode() & 0o077 != 0 {
        return Err(TenantError::Insecure {
            path,
            why: format!(
                "its mode {:04o} lets other users read or change it; run `chmod 600` on it",
                meta.mode() & 0o7777
            ),
        });
    }
    let mut raw = String::new();
    (&mut f)
        .take(MAX_FILE)
        .read_to_string(&mut raw)
        .map_err(read)?;
    let t: Tenants = toml::from_str(&raw).map_err(|e| TenantError::Parse {
        path: path.clone(),
        why: e.to_string().trim().replace('\n', " "),
    })?;
    for tenant in &t.tenants {
        if !valid_name(&tenant.name) || tenant.name == DEFAULT_TENANT {
            return Err(TenantError::Parse {
                path: path.clone(),
                why: format!("'{}' is not a tenant name", tenant.name),
            });
        }
    }
    for (uid, name) in &t.uids {
        if uid.parse::<u32>().is_err() || !valid_name(name) {
            return Err(TenantError::Parse {
                path: path.clone(),
                why: format!("[uids] maps '{uid}' to '{name}': use a user id and a tenant name"),
            });
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for i in t.settings.values().filter_map(|s| s.index) {
        if i == 0 || i > MAX_INDEX || !seen.insert(i) {
            return Err(TenantError::Parse {
                path: path.clone(),
                why: format!("index {i} is used twice or not between 1 and {MAX_INDEX}"),
            });
        }
    }
    Ok(t)
}

/// Writes the file whole: a private temporary file, synced, renamed into place.
fn store(home: &Path, t: &Tenants) -> Result<(), TenantError> {
    let write = |source| TenantError::Write {
        path: path(home),
        source,
    };
    let text = toml::to_string(t).map_err(|e| write(std::io::Error::other(e.to_string())))?;
    crate::service::write_private_file(home, TENANTS_FILE, text.as_bytes()).map_err(write)
}

/// Runs `change` on the file's content under an exclusive lock, then stores it.
fn modify<R>(
    home: &Path,
    change: impl FnOnce(&mut Tenants) -> Result<R, TenantError>,
) -> Result<R, TenantError> {
    std::fs::create_dir_all(home).map_err(|source| TenantError::Write {
        path: home.to_path_buf(),
        source,
    })?;
    let lock_path = home.join(LOCK_FILE);
    let lock_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock_path)
        .map_err(|source| TenantError::Write {
            path: lock_path.clone(),
            source,
        })?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).map_err(
        |(_, e)| TenantError::Write {
            path: lock_path.clone(),
            source: e.into(),
        },
    )?;
    let mut t = load(home)?;
    let r = change(&mut t)?;
    store(home, &t)?;
    Ok(r)
}

fn new_token_entry() -> Result<(String, TokenEntry), TenantError> {
    let token = random_token()?;
    let hash = token_hash(token.as_bytes());
    Ok((
        token,
        TokenEntry {
            id: token_id(&hash),
            sha256: hex::encode(hash),
            created: crate::audit::rfc3339_now(),
        },
    ))
}

/// Makes a tenant with one token; returns the token (the only time it is known).
pub fn add(home: &Path, name: &str) -> Result<String, TenantError> {
    if !valid_name(name) {
        return Err(TenantError::BadName(name.to_string()));
    }
    if name == DEFAULT_TENANT {
        return Err(TenantError::Reserved(name.to_string()));
    }
    modify(home, |t| {
        if t.tenants.iter().any(|x| x.name == name) {
            return Err(TenantError::Exists(name.to_string()));
        }
        t.index_for(name)?;
        let (token, entry) = new_token_entry()?;
        t.tenants.push(Tenant {
            name: name.to_string(),
            created: entry.created.clone(),
            tokens: vec![entry],
        });
        Ok(token)
    })
}

/// Gives a tenant a new token; its other tokens stop working unless `keep` (then
/// they work until revoked, so clients can move over). Returns the new token.
pub fn rotate(home: &Path, name: &str, keep: bool) -> Result<String, TenantError> {
    modify(home, |t| {
        let tenant = t.get_mut(name)?;
        let (token, entry) = new_token_entry()?;
        if !keep {
            tenant.tokens.clear();
        }
        tenant.tokens.push(entry);
        Ok(token)
    })
}

/// Revokes one token of a tenant, by id.
pub fn revoke(home: &Path, name: &str, id: &str) -> Result<(), TenantError> {
    modify(home, |t| {
        let tenant = t.get_mut(name)?;
        let before = tenant.tokens.len();
        tenant.tokens.retain(|k| k.id != id);
        if tenant.tokens.len() == before {
            return Err(TenantError::NoSuchToken(name.to_string(), id.to_string()));
        }
        Ok(())
    })
}

/// Removes a tenant, its tokens and the users mapped to it (they are `default`
/// again). Its index and quotas are kept: made again, it finds its files.
pub fn remove(home: &Path, name: &str) -> Result<(), TenantError> {
    modify(home, |t| {
        let before = t.tenants.len();
        t.tenants.retain(|x| x.name != name);
        if t.tenants.len() == before {
            return Err(TenantError::NoSuchTenant(name.to_string()));
        }
        t.uids.retain(|_, v| v != name);
        Ok(())
    })
}

/// As root, the host uid and gid the sandboxes of the tenant with host-id index
/// `index` run under (and its files belong to): one range of 65536 per tenant
/// above the jail's default id.
pub fn host_id(index: u32) -> u32 {
    aisbx_jail::DEFAULT_HOST_ID + (index << 16)
}

/// The host-id index of `tenant` (0 for `default`), given and recorded on first
/// use: a tenant named by an access token's claim has no entry until then.
pub fn host_index(home: &Path, tenant: &str) -> Result<u32, TenantError> {
    if tenant == DEFAULT_TENANT {
        return Ok(0);
    }
    if let Some(i) = load(home)?.settings.get(tenant).and_then(|s| s.index) {
        return Ok(i);
    }
    modify(home, |t| t.index_for(tenant))
}

/// The directory name of a tenant's state under `tenants/`: its name when that is a
/// tenant name of this file; otherwise (a name from an access token's claim, which
/// may hold any visible character) `_` and the name's SHA-256, which no tenant
/// name can be (they start with a letter or digit).
pub fn dir_name(tenant: &str) -> String {
    if valid_name(tenant) {
        tenant.to_string()
    } else {
        format!("_{}", hex::encode(&Sha256::digest(tenant.as_bytes())[..20]))
    }
}

/// Maps a local user to a tenant (`None`: back to `default`).
pub fn map_uid(home: &Path, uid: &str, tenant: Option<&str>) -> Result<(), TenantError> {
    let n: u32 = uid
        .parse()
        .map_err(|_| TenantError::BadUid(uid.to_string()))?;
    modify(home, |t| {
        match tenant {
            Some(name) if name != DEFAULT_TENANT => {
                if !t.exists(name) {
                    return Err(TenantError::NoSuchTenant(name.to_string()));
                }
                t.uids.insert(n.to_string(), name.to_string());
            }
            _ => {
                t.uids.remove(&n.to_string());
            }
        }
        Ok(())
    })
}

/// Sets a tenant's quotas (`default` included): each `Some` replaces the file's
/// value; `Some(None)` removes it (unlimited).
pub fn set_quota(
    home: &Path,
    tenant: &str,
    change: impl FnOnce(&mut Quota),
) -> Result<Quota, TenantError> {
    modify(home, |t| {
        if !t.exists(tenant) {
            return Err(TenantError::NoSuchTenant(tenant.to_string()));
        }
        let s = t.settings.entry(tenant.to_string()).or_default();
        change(&mut s.quota);
        Ok(s.quota)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn names() {
        for ok in ["acme", "a", "team-1", "x_y.z", "0day"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Acme",
            "-x",
            ".x",
            "a/b",
            "..",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name(&"a".repeat(64)));
    }

    #[test]
    fn add_authenticate_rotate_revoke_remove() {
        let d = tempfile::tempdir().expect("tempdir");
        let home = d.path();
        assert_eq!(load(home).expect("none"), Tenants::default());
        let a = add(home, "acme").expect("add");
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        let b = add(home, "globex").expect("add");
        assert!(matches!(add(home, "acme"), Err(TenantError::Exists(_))));
        assert!(matches!(add(home, "../x"), Err(TenantError::BadName(_))));

        // The file has hashes, never tokens, and is private.
        let text = std::fs::read_to_string(path(home)).expect("read");
        assert!(!text.contains(&a) && !text.contains(&a[TOKEN_PREFIX.len()..]));
        assert!(text.contains(&hex::encode(token_hash(a.as_bytes()))));
        let mode = std::fs::metadata(path(home)).expect("meta").mode();
        assert_eq!(mode & 0o7777, 0o600);

        let t = load(home).expect("load");
        let owner = t.authenticate(a.as_bytes()).expect("acme's token");
        assert_eq!(owner.tenant, "acme");
        assert_eq!(
            t.authenticate(b.as_bytes()).expect("globex").tenant,
            "globex"
        );
        assert_eq!(t.authenticate(b"aisbx_nope"), None);
        assert_eq!(t.authenticate(&a.as_bytes()[..a.len() - 1]), None);

        // Rotation with --keep: both work; revoking the old one leaves the new.
        let a2 = rotate(home, "acme", true).expect("rotate");
        let t = load(home).expect("load");
        assert!(t.authenticate(a.as_bytes()).is_some());
        assert!(t.authenticate(a2.as_bytes()).is_some());
        revoke(home, "acme", &owner.token_id).expect("revoke");
        let t = load(home).expect("load");
        assert!(t.authenticate(a.as_bytes()).is_none());
        assert!(t.authenticate(a2.as_bytes()).is_some());
        assert!(matches!(
            revoke(home, "acme", &owner.token_id),
            Err(TenantError::NoSuchToken(..))
        ));
        // Rotation without --keep replaces every token.
        let a3 = rotate(home, "acme", false).expect("rotate");
        let t = load(home).expect("load");
        assert!(t.authenticate(a2.as_bytes()).is_none());
        assert!(t.authenticate(a3.as_bytes()).is_some());
        assert!(matches!(
            rotate(home, "nobody", false),
            Err(TenantError::NoSuchTenant(_))
        ));

        remove(home, "acme").expect("rm");
        let t = load(home).expect("load");
        assert!(t.authenticate(a3.as_bytes()).is_none());
        assert!(t.authenticate(b.as_bytes()).is_some());
        assert!(matches!(
            remove(home, "acme"),
            Err(TenantError::NoSuchTenant(_))
        ));
        // No temporary file is left behind.
        let mut names: Vec<_> = std::fs::read_dir(home)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [LOCK_FILE, TENANTS_FILE]);
    }

    #[test]
    fn an_unsafe_or_broken_file_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let home = d.path();
        add(home, "acme").expect("add");
        let p = path(home);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = load(home).expect_err("0644");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // And nothing is changed through it.
        assert!(add(home, "globex").is_err());
        std::fs::remove_file(&p).expect("rm");
        std::os::unix::fs::symlink("/etc/hostname", &p).expect("symlink");
        let e = load(home).expect_err("link");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::fs::remove_file(&p).expect("rm");
        std::fs::write(&p, "[[tenant]]\nname = \"../etc\"\ncreated = \"x\"\n").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(load(home), Err(TenantError::Parse { .. })));
        std::fs::write(&p, "not toml [").expect("write");
        assert!(matches!(load(home), Err(TenantError::Parse { .. })));
        // A file another user owns (and so could rewrite) is refused, even private.
        if nix::unistd::geteuid().is_root() {
            std::fs::remove_file(&p).expect("rm");
            add(home, "acme").expect("add");
            std::os::unix::fs::chown(&p, Some(65534), Some(65534)).expect("chown");
            let e = load(home).expect_err("owned by nobody");
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        }
    }

    #[test]
    fn indexes_uids_and_quotas() {
        let d = tempfile::tempdir().expect("tempdir");
        let home = d.path();
        assert!(matches!(
            add(home, "default"),
            Err(TenantError::Reserved(_))
        ));
        add(home, "acme").expect("add");
        add(home, "globex").expect("add");
        assert_eq!(host_index(home, "default").expect("default"), 0);
        assert_eq!(host_index(home, "acme").expect("acme"), 1);
        assert_eq!(host_index(home, "globex").expect("globex"), 2);
        // A tenant named by an access token gets the next one, kept.
        assert_eq!(host_index(home, "auth0|42").expect("jwt"), 3);
        assert_eq!(host_index(home, "auth0|42").expect("jwt"), 3);
        // Removed and made again: the same index (its files are still its own);
        // never another tenant's.
        remove(home, "acme").expect("rm");
        add(home, "initech").expect("add");
        assert_eq!(host_index(home, "initech").expect("initech"), 4);
        add(home, "acme").expect("add");
        assert_eq!(host_index(home, "acme").expect("acme"), 1);

        assert_eq!(dir_name("acme"), "acme");
        let h = dir_name("auth0|42");
        assert!(
            h.starts_with('_') && h.len() == 41 && !valid_name(&h),
            "{h}"
        );
        assert_ne!(dir_name("../x"), "../x");

        let t = load(home).expect("load");
        assert_eq!(t.tenant_of_uid(1000), DEFAULT_TENANT);
        map_uid(home, "1000", Some("acme")).expect("map");
        assert!(matches!(
            map_uid(home, "1001", Some("nobody")),
            Err(TenantError::NoSuchTenant(_))
        ));
        assert!(matches!(
            map_uid(home, "x", Some("acme")),
            Err(TenantError::BadUid(_))
        ));
        let t = load(home).expect("load");
        assert_eq!(t.tenant_of_uid(1000), "acme");
        assert_eq!(t.tenant_of_uid(1001), DEFAULT_TENANT);
        map_uid(home, "1000", None).expect("unmap");
        map_uid(home, "1002", Some("globex")).expect("map");
        remove(home, "globex").expect("rm");
        assert_eq!(
            load(home).expect("load").tenant_of_uid(1002),
            DEFAULT_TENANT
        );
        add(home, "globex").expect("add again");
        assert_eq!(host_index(home, "globex").expect("globex"), 2);
        assert_eq!(
            load(home).expect("load").tenant_of_uid(1000),
            DEFAULT_TENANT
        );

        let q = set_quota(home, "acme", |q| q.concurrent_runs = Some(2)).expect("quota");
        assert_eq!(q.concurrent_runs, Some(2));
        set_quota(home, DEFAULT_TENANT, |q| q.runs_per_minute = Some(60)).expect("default");
        assert!(matches!(
            set_quota(home, "nobody", |_| {}),
            Err(TenantError::NoSuchTenant(_))
        ));
        let t = load(home).expect("load");
        assert_eq!(t.quota("acme").concurrent_runs, Some(2));
        assert_eq!(t.quota("default").runs_per_minute, Some(60));
        assert!(t.quota("globex").is_empty());

        // A hand-edited file giving two tenants one index is refused.
        let text = std::fs::read_to_string(path(home)).expect("read");
        let text = text.replace("index = 2", "index = 1");
        std::fs::write(path(home), text).expect("write");
        assert!(matches!(load(home), Err(TenantError::Parse { .. })));
    }

    #[test]
    fn concurrent_adds_are_all_kept() {
        let d = tempfile::tempdir().expect("tempdir");
        let home = d.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let h = home.clone();
                std::thread::spawn(move || add(&h, &format!("t{i}")).expect("add"))
            })
            .collect();
        let tokens: Vec<String> = threads
            .into_iter()
            .map(|t| t.join().expect("join"))
            .collect();
        let t = load(&home).expect("load");
        assert_eq!(t.tenants.len(), 8);
        for (i, tok) in tokens.iter().enumerate() {
            assert_eq!(
                t.authenticate(tok.as_bytes()).expect("token").tenant,
                format!("t{i}")
            );
        }
    }
}
