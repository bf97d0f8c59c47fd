//! The one check every host path that a request or a profile names goes through:
//! `--workdir`, `snap create --workdir`, `snap restore --workdir`, `cp`'s host
//! side, a profile's `ro_binds` and `rw_binds`, and an interpreter prefix a
//! profile names. The path is made canonical first (symlinks resolved; a missing
//! tail is allowed for a target that is yet to be made) and the canonical path is
//! checked and returned, so the caller uses what was checked.
//!
//! A path is refused when it *is*, *lies inside* or *contains* a place a sandbox
//! must not be given (docs/PROFILES.md, "Host paths"): the host root, system
//! directories, the shared top directories themselves, other users' homes, the
//! secret locations of the caller's home, and aisbx's own state and
//! configuration. The service's own read-only binds of system files (the
//! runtimes, `/etc/ld.so.cache`, ...) are not request paths and do not come here.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Directories a request may not name, nor anything inside them.
const SYSTEM_DIRS: &[&str] = &[
    "/etc", "/usr", "/boot", "/proc", "/sys", "/dev", "/run", "/root", "/var", "/bin", "/sbin",
    "/lib", "/lib32", "/lib64", "/libx32",
];

/// Where everything may be inside, but the directory itself is shared by every user
/// (or holds every home) and is refused.
const TOP_DIRS: &[&str] = &[
    "/home", "/opt", "/srv", "/mnt", "/media", "/tmp", "/var/tmp",
];

/// The one exception to `/var`: scratch space, like `/tmp`.
const VAR_TMP: &str = "/var/tmp";

/// Where credentials live in a home directory.
pub const HOME_SECRETS: &[&str] = &[
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".kube",
    ".docker",
    ".config/gcloud",
    ".config/gh",
    ".config/hub",
    ".config/aisbx",
    ".netrc",
    ".npmrc",
    ".pypirc",
    ".git-credentials",
    ".password-store",
    ".local/share/keyrings",
    ".local/share/aisbx",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".gem/credentials",
    ".pgpass",
    ".my.cnf",
    ".vault-token",
    ".terraform.d",
    ".mozilla",
    ".config/google-chrome",
    ".config/chromium",
];

/// What the path is for: a request's or profile's path gets every rule; a runtime
/// prefix the service found on the host `PATH` (pyenv, rustup) is its own choice
/// among system places, so only the rules about secrets, other users and aisbx
/// state apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Request,
    FoundRuntime,
}

/// A refused path: the path as given, and the rule, as one sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub path: PathBuf,
    pub rule: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.path.display(), self.rule)
    }
}

/// Who asks and what they opened: the caller's homes, aisbx's state, and the
/// places a user profile allowed explicitly (`[perimeter] allow`).
#[derive(Debug, Clone, Default)]
pub struct Perimeter {
    /// The caller's home directories (`$HOME` and the account's), canonical.
    pub homes: Vec<PathBuf>,
    /// aisbx's state directory and the user's profile directory, canonical.
    pub state: Vec<PathBuf>,
    /// Paths a user profile opened, canonical.
    pub allow: Vec<PathBuf>,
}

impl Perimeter {
    /// The caller's perimeter: `$HOME` and the account's home, `state` (the
    /// service's `$AISBX_HOME`) and the user profile directory.
    pub fn for_caller(state: &Path) -> Perimeter {
        let mut homes = Vec::new();
        if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty() && h != "/") {
            homes.push(canonical_or_self(Path::new(&h)));
        }
        if let Some(h) = account_home().filter(|h| h != Path::new("/")) {
            let h = canonical_or_self(&h);
            if !homes.contains(&h) {
                homes.push(h);
            }
        }
        let mut st = vec![canonical_or_self(state)];
        if let Some(u) = crate::profile::user_profiles_dir() {
            st.push(canonical_or_self(&u));
        }
        Perimeter {
            homes,
            state: st,
            allow: Vec::new(),
        }
    }

    /// The same perimeter, widened by a user profile's `[perimeter] allow`.
    pub fn allowing(mut self, allow: &[PathBuf]) -> Perimeter {
        self.allow = allow.iter().map(|p| canonical_or_self(p)).collect();
        self
    }
}

fn canonical_or_self(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The home directory of the effective user's account.
fn account_home() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0u8; 16 << 10];
    // SAFETY: getpwuid_r writes into `pw` and `buf` (of the length given) and sets
    // `out` to `&pw` on success; the strings it points to live in `buf`.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() || pw.pw_dir.is_null() {
        return None;
    }
    // SAFETY: pw_dir is a NUL-terminated string inside `buf`.
    let dir = unsafe { std::ffi::CStr::from_ptr(pw.pw_dir) };
    let dir = Path::new(std::ffi::OsStr::from_bytes(dir.to_bytes()));
    (dir.is_absolute()).then(|| dir.to_path_buf())
}

/// The canonical form of `path` (relative to the current directory when it is
/// relative): symlinks resolved; a tail that does not exist yet is kept as written
/// (it must not contain `..`).
pub fn canonical(path: &Path) -> std::io::Result<PathBuf> {
    match std::fs::canonicalize(path) {
        Ok(p) => Ok(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let name = match path.components().next_back() {
                Some(Component::Normal(n)) => n.to_os_string(),
                _ => return Err(e),
            };
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => std::env::current_dir()?,
            };
            Ok(canonical(&parent)?.join(name))
        }
        Err(e) => Err(e),
    }
}

/// How `a` relates to `b`: the same, inside it, or containing it.
fn relation(a: &Path, b: &Path) -> Option<&'static str> {
    if a == b {
        Some("is")
    } else if a.starts_with(b) {
        Some("lies inside")
    } else if b.starts_with(a) {
        Some("contains")
    } else {
        None
    }
}

/// Check one host path; returns its canonical form. The only check of host
/// paths that requests and profiles name.
pub fn check(path: &Path, usage: Use, perimeter: &Perimeter) -> Result<PathBuf, Refused> {
    let refuse = |rule: String| Refused {
        path: path.to_path_buf(),
        rule,
    };
    let canon = canonical(path).map_err(|e| refuse(format!("cannot be resolved: {e}")))?;
    check_canonical(&canon, usage, perimeter).map_err(refuse)?;
    Ok(canon)
}

/// The rules, on a canonical path; the error is the rule broken.
fn check_canonical(canon: &Path, usage: Use, p: &Perimeter) -> Result<(), String> {
    let shown = |q: &Path| q.display().to_string();
    if canon == Path::new("/") {
        return Err("is the host's root directory, which holds every other path".into());
    }
    // aisbx's state and configuration: never, whatever a profile allows.
    let state = || -> Result<(), String> {
        for s in &p.state {
            if let Some(how) = relation(canon, s) {
                return Err(format!(
                    "{how} {}, aisbx's own state or configuration, which no sandbox may be given",
                    shown(s)
                ));
            }
        }
        Ok(())
    };
    if usage == Use::Request && p.allow.iter().any(|a| canon.starts_with(a)) {
        return state();
    }
    if usage == Use::Request {
        let in_var_tmp = canon.starts_with(VAR_TMP);
        for d in SYSTEM_DIRS {
            if canon.starts_with(d) && !in_var_tmp {
                let how = if canon == Path::new(d) {
                    "is"
                } else {
                    "lies inside"
                };
                return Err(format!(
                    "{how} {d}, a system directory that no sandbox may be given"
                ));
            }
        }
        if let Some(d) = TOP_DIRS.iter().find(|d| canon == Path::new(d)) {
            return Err(format!(
                "is {d} itself, which every user shares; name a directory inside it"
            ));
        }
    }
    state()?;
    // Other users' homes: anything under /home/X that is not one of the caller's.
    if let Ok(rest) = canon.strip_prefix("/home")
        && let Some(Component::Normal(user)) = rest.components().next()
    {
        let theirs = Path::new("/home").join(user);
        if !p.homes.iter().any(|h| h.starts_with(&theirs)) {
            return Err(format!(
                "lies inside {}, another user's home",
                shown(&theirs)
            ));
        }
    }
    for h in &p.homes {
        for s in HOME_SECRETS {
            let secret = h.join(s);
            let mut forms = vec![secret.clone()];
            // A secret that is a link elsewhere is protected where it leads too.
            if std::fs::symlink_metadata(&secret).is_ok_and(|m| m.file_type().is_symlink())
                && let Ok(real) = std::fs::canonicalize(&secret)
            {
                forms.push(real);
            }
            for f in &forms {
                if let Some(how) = relation(canon, f) {
                    return Err(format!(
                        "{how} {}, where secrets are kept, which no sandbox may be given",
                        shown(f)
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perimeter(home: &Path, state: &Path) -> Perimeter {
        Perimeter {
            homes: vec![home.to_path_buf()],
            state: vec![state.to_path_buf()],
            allow: Vec::new(),
        }
    }

    /// A table of canonical paths and whether a request may name them.
    #[test]
    fn the_rules_on_a_table_of_paths() {
        let p = perimeter(Path::new("/home/me"), Path::new("/srv/aisbx-state"));
        let table: &[(&str, Option<&str>)] = &[
            ("/", Some("host's root")),
            ("/etc", Some("is /etc, a system directory")),
            ("/etc/cron.d", Some("lies inside /etc")),
            ("/usr/share/dict", Some("lies inside /usr")),
            ("/boot", Some("/boot")),
            ("/proc/1", Some("/proc")),
            ("/sys/fs", Some("/sys")),
            ("/dev/shm", Some("/dev")),
            ("/run/user/0", Some("/run")),
            ("/root", Some("is /root")),
            ("/root/.cargo", Some("lies inside /root")),
            ("/var", Some("is /var")),
            ("/var/lib/docker", Some("lies inside /var")),
            ("/var/tmp", Some("is /var/tmp itself")),
            ("/var/tmp/build", None),
            ("/home", Some("is /home itself")),
            ("/opt", Some("is /opt itself")),
            ("/srv", Some("is /srv itself")),
            ("/mnt", Some("is /mnt itself")),
            ("/media", Some("is /media itself")),
            ("/tmp", Some("is /tmp itself")),
            ("/tmp/xyz", None),
            ("/opt/data", None),
            ("/srv/models", None),
            ("/mnt/disk/project", None),
            ("/home/other", Some("another user's home")),
            ("/home/other/src", Some("/home/other, another user's home")),
            ("/home/me", Some("contains /home/me/.ssh")),
            ("/home/me/src/project", None),
            ("/home/me/.ssh", Some("is /home/me/.ssh")),
            ("/home/me/.ssh/keys", Some("lies inside /home/me/.ssh")),
            ("/home/me/.config", Some("contains /home/me/.config/gcloud")),
            (
                "/home/me/.config/gh/x",
                Some("lies inside /home/me/.config/gh"),
            ),
            ("/home/me/.netrc", Some("is /home/me/.netrc")),
            ("/home/me/.local/share", Some("contains")),
            ("/home/me/.local/bin", None),
            ("/srv/aisbx-state", Some("aisbx's own state")),
            ("/srv/aisbx-state/sandboxes/x", Some("aisbx's own state")),
        ];
        for (path, want) in table {
            let got = check_canonical(Path::new(path), Use::Request, &p);
            match (want, &got) {
                (None, Ok(())) => {}
                (Some(w), Err(e)) => assert!(e.contains(w), "{path}: {e} (wanted {w})"),
                _ => panic!("{path}: {got:?}, wanted {want:?}"),
            }
        }
        // The state directory's parent contains it.
        let e = check_canonical(Path::new("/srv/x").parent().unwrap(), Use::Request, &p);
        assert!(e.is_err());
    }

    #[test]
    fn a_found_runtime_is_checked_for_secrets_only() {
        let p = perimeter(Path::new("/root"), Path::new("/var/lib/aisbx"));
        for ok in [
            "/root/.pyenv/versions/3.12.1",
            "/root/.rustup/toolchains/stable",
            "/opt/node",
        ] {
            assert_eq!(
                check_canonical(Path::new(ok), Use::FoundRuntime, &p),
                Ok(()),
                "{ok}"
            );
        }
        for bad in [
            "/root",
            "/root/.ssh",
            "/home/other/.pyenv",
            "/var/lib/aisbx",
        ] {
            assert!(
                check_canonical(Path::new(bad), Use::FoundRuntime, &p).is_err(),
                "{bad}"
            );
        }
        // /root/.cargo holds the registry credentials.
        let e = check_canonical(Path::new("/root/.cargo"), Use::FoundRuntime, &p).unwrap_err();
        assert!(e.contains("/root/.cargo/credentials"), "{e}");
    }

    #[test]
    fn a_user_profile_may_widen_but_never_to_aisbx_state_or_root() {
        let p = perimeter(Path::new("/home/me"), Path::new("/var/lib/aisbx"))
            .allowing(&[PathBuf::from("/etc/myapp"), PathBuf::from("/var")]);
        assert_eq!(
            check_canonical(Path::new("/etc/myapp/conf"), Use::Request, &p),
            Ok(())
        );
        assert!(check_canonical(Path::new("/etc/other"), Use::Request, &p).is_err());
        assert!(check_canonical(Path::new("/var/lib/aisbx"), Use::Request, &p).is_err());
        assert!(check_canonical(Path::new("/var"), Use::Request, &p).is_err());
        assert!(check_canonical(Path::new("/"), Use::Request, &p).is_err());
    }

    #[test]
    fn symlinks_are_resolved_before_the_check() {
        let t = tempfile::tempdir().unwrap();
        let home = std::fs::canonicalize(t.path()).unwrap().join("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::create_dir(home.join("proj")).unwrap();
        std::os::unix::fs::symlink(home.join(".ssh"), home.join("proj/keys")).unwrap();
        std::os::unix::fs::symlink("/etc", home.join("proj/etc")).unwrap();
        let p = perimeter(&home, Path::new("/var/lib/aisbx"));
        assert_eq!(
            check(&home.join("proj"), Use::Request, &p).unwrap(),
            home.join("proj")
        );
        let e = check(&home.join("proj/keys"), Use::Request, &p).unwrap_err();
        assert!(e.to_string().contains("where secrets are kept"), "{e}");
        assert!(check(&home.join("proj/etc"), Use::Request, &p).is_err());
        assert!(check(&home.join("proj/.ssh/../.."), Use::Request, &p).is_err());
        // A target yet to be made is checked where it would be.
        assert_eq!(
            check(&home.join("proj/new/dir"), Use::Request, &p).unwrap(),
            home.join("proj/new/dir")
        );
        assert!(check(&home.join("proj/keys/new"), Use::Request, &p).is_err());
        // A secret that is a link elsewhere is protected there too.
        let elsewhere = home.join("proj/aws-real");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, home.join(".aws")).unwrap();
        let e = check(&elsewhere, Use::Request, &p).unwrap_err();
        assert!(e.rule.contains("where secrets are kept"), "{e}");
    }
}
