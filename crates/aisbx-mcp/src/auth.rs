//! The HTTP server's bearer token: `$AISBX_HOME/mcp-token`, made on first start with
//! mode 0600 from the moment it exists, reused afterwards, and refused when another
//! user could read or replace it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The token file's name in the state directory.
pub const TOKEN_FILE: &str = "mcp-token";
/// Random bytes in a new token (hex-encoded: 64 characters).
const TOKEN_BYTES: usize = 32;
/// Longest token file read.
const MAX_TOKEN_FILE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the token file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing the token file {path}: {why}")]
    Insecure { path: PathBuf, why: String },
    #[error("the token file {0} is empty; delete it and start again to make a new token")]
    Empty(PathBuf),
    #[error("cannot get random bytes for a token: {0}")]
    Random(std::io::Error),
}

/// Where the token came from (what the server tells its user on start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOrigin {
    /// Made now at this path.
    Created(PathBuf),
    /// Read from this file (the state directory's, or `--token-file`).
    File(PathBuf),
    /// `$AISBX_MCP_TOKEN`.
    Env,
}

/// The token and its origin.
#[derive(Debug, Clone)]
pub struct Token {
    pub value: String,
    pub origin: TokenOrigin,
}

/// Whether a token file with this owner and mode may be used by `uid`: owned by the
/// caller (or root, for a file the caller named) and with no access for group or others.
pub fn check_owner_and_mode(
    file_uid: u32,
    mode: u32,
    uid: u32,
    root_may_own: bool,
) -> Result<(), String> {
    if file_uid != uid && !(root_may_own && file_uid == 0) {
        return Err(format!(
            "it is owned by uid {file_uid}, not by you (uid {uid}); delete it or give a file of your own"
        ));
    }
    if mode & 0o077 != 0 {
        return Err(format!(
            "its mode {:04o} lets other users read or change it; run `chmod 600` on it, or delete it to make a new token",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Reads a token from an opened file after checking its type, owner and mode.
fn read_checked(mut f: File, path: &Path, root_may_own: bool) -> Result<String, TokenError> {
    let meta = f.metadata().map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(TokenError::Insecure {
            path: path.to_path_buf(),
            why: "it is not a regular file".into(),
        });
    }
    check_owner_and_mode(meta.uid(), meta.mode(), geteuid(), root_may_own).map_err(|why| {
        TokenError::Insecure {
            path: path.to_path_buf(),
            why,
        }
    })?;
    let mut raw = String::new();
    (&mut f)
        .take(MAX_TOKEN_FILE)
        .read_to_string(&mut raw)
        .map_err(|source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let t = raw.trim();
    if t.is_empty() {
        return Err(TokenError::Empty(path.to_path_buf()));
    }
    Ok(t.to_string())
}

/// Reads a token file the user named (`--token-file`); links are followed, the file
/// reached is checked (opened non-blocking: a FIFO is refused, not waited on).
pub fn read_named(path: &Path) -> Result<String, TokenError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    read_checked(f, path, true)
}

fn geteuid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn random_token() -> Result<String, TokenError> {
    let b = aisbx_service::tenants::random_bytes::<TOKEN_BYTES>().map_err(TokenError::Random)?;
    Ok(hex::encode(b))
}

/// The state directory's token: read it, or make it when there is none.
///
/// A new token is written to a private temporary file (created `O_EXCL`, mode 0600)
/// and then hard-linked into place, so the token file is never readable by others
/// and never seen half-written; two servers starting at once end with the same token.
pub fn load_or_create(home: &Path) -> Result<Token, TokenError> {
    let path = home.join(TOKEN_FILE);
    for _ in 0..3 {
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => {
                return Ok(Token {
                    value: read_checked(f, &path, false)?,
                    origin: TokenOrigin::File(path),
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(TokenError::Insecure {
                    path,
                    why: "it is a symbolic link; delete it to make a new token".into(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(TokenError::Read { path, source }),
        }
        let value = random_token()?;
        let tmp = home.join(format!(".{TOKEN_FILE}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let create = |source| TokenError::Create {
            path: path.clone(),
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(create)?;
        // The umask can only remove bits; make the mode exactly 0600.
        let written = f
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .and_then(|()| f.write_all(format!("{value}\n").as_bytes()))
            .and_then(|()| f.sync_all());
        drop(f);
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                return Ok(Token {
                    value,
                    origin: TokenOrigin::Created(path),
                });
            }
            // Another server made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(create(source)),
        }
    }
    Err(TokenError::Create {
        path,
        source: std::io::Error::other("it keeps changing while being read"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_and_mode_rules() {
        assert!(check_owner_and_mode(1000, 0o100600, 1000, false).is_ok());
        assert!(check_owner_and_mode(1000, 0o100400, 1000, false).is_ok());
        let e = check_owner_and_mode(1000, 0o100644, 1000, false).expect_err("0644");
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
        assert!(check_owner_and_mode(1000, 0o100640, 1000, false).is_err());
        assert!(check_owner_and_mode(1000, 0o100602, 1000, false).is_err());
        let e = check_owner_and_mode(1001, 0o100600, 1000, false).expect_err("owner");
        assert!(e.contains("uid 1001"), "{e}");
        assert!(check_owner_and_mode(0, 0o100600, 1000, false).is_err());
        assert!(check_owner_and_mode(0, 0o100600, 1000, true).is_ok());
    }

    #[test]
    fn created_once_then_reused() {
        let d = tempfile::tempdir().expect("tempdir");
        let t = load_or_create(d.path()).expect("create");
        assert!(matches!(t.origin, TokenOrigin::Created(_)));
        assert_eq!(t.value.len(), 2 * TOKEN_BYTES);
        let p = d.path().join(TOKEN_FILE);
        let meta = std::fs::metadata(&p).expect("meta");
        assert_eq!(meta.mode() & 0o7777, 0o600);
        let again = load_or_create(d.path()).expect("reuse");
        assert_eq!(again.value, t.value);
        assert_eq!(again.origin, TokenOrigin::File(p.clone()));
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(d.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(TOKEN_FILE)]);
        // A looser mode is refused, not repaired.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = load_or_create(d.path()).expect_err("0644");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // A link is refused.
        std::fs::remove_file(&p).expect("rm");
        std::os::unix::fs::symlink("/etc/hostname", &p).expect("symlink");
        let e = load_or_create(d.path()).expect_err("link");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // An empty file is refused.
        std::fs::remove_file(&p).expect("rm");
        std::fs::write(&p, "").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(
            load_or_create(d.path()),
            Err(TokenError::Empty(_))
        ));
    }

    #[test]
    fn a_named_file_must_be_a_private_regular_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let e = read_named(&fifo).expect_err("a FIFO");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let f = d.path().join("t");
        std::fs::write(&f, "  tok \n").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_named(&f).expect("read"), "tok");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o604)).expect("chmod");
        assert!(matches!(read_named(&f), Err(TokenError::Insecure { .. })));
    }

    #[test]
    fn tokens_are_random() {
        assert_ne!(random_token().expect("a"), random_token().expect("b"));
    }
}
