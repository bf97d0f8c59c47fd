//! Project profiles are used only once the user has approved their exact
//! content (`aisbx trust DIR`), as direnv's `allow` does: code in a `--workdir`
//! run can write `.aisbx/profiles/`, so nothing there is configuration until the
//! user says so.
//!
//! The project's profile directory is read once, without following a symlink at
//! any level (`.aisbx`, `profiles`, each file); the bytes read are both hashed
//! and, when the hash is approved, parsed, so nothing can change between the
//! check and the use. An approval is a record under `$AISBX_HOME/trust/` keyed by
//! the canonical project directory: the digest of every file's name and content
//! in name order, and each file's own digest (to name what changed). Any change,
//! a file added, edited or removed, revokes it.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest profile file read.
const MAX_FILE_BYTES: u64 = 256 << 10;
/// Most entries a project's profile directory may hold.
const MAX_FILES: usize = 256;

/// A project's profile directory as read: every regular file's name and bytes,
/// in name order.
#[derive(Debug, Clone)]
pub struct ProjectFiles {
    /// The canonical project directory (the one holding `.aisbx`).
    pub root: PathBuf,
    /// `root/.aisbx/profiles`.
    pub dir: PathBuf,
    pub files: Vec<(String, Vec<u8>)>,
}

/// Whether a project's profiles are approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Trusted,
    /// Never approved; names the first file.
    New {
        file: PathBuf,
    },
    /// Approved once, changed since; names the first file added, edited or removed.
    Changed {
        file: PathBuf,
    },
}

/// The approval of one project, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub project: PathBuf,
    pub digest: String,
    /// Each file's name and SHA-256.
    pub files: Vec<(String, String)>,
}

fn io_err(e: rustix::io::Errno) -> std::io::Error {
    std::io::Error::from(e)
}

fn open_dir_nofollow(dir: &OwnedFd, name: &str, shown: &Path) -> Result<OwnedFd, String> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => format!(
            "{} is a symbolic link or not a directory; project profiles are read only from a real directory",
            shown.display()
        ),
        e => format!("cannot open {}: {}", shown.display(), io_err(e)),
    })
}

/// Read a project's profile directory (`root/.aisbx/profiles`) once.
pub fn read_project(root: &Path) -> Result<ProjectFiles, String> {
    let root =
        std::fs::canonicalize(root).map_err(|e| format!("cannot open {}: {e}", root.display()))?;
    let dir = root.join(".aisbx/profiles");
    let rfd = rustix::fs::open(
        &root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open {}: {}", root.display(), io_err(e)))?;
    let afd = open_dir_nofollow(&rfd, ".aisbx", &root.join(".aisbx"))?;
    let pfd = open_dir_nofollow(&afd, "profiles", &dir)?;
    let mut d = rustix::fs::Dir::read_from(&pfd)
        .map_err(|e| format!("cannot list {}: {}", dir.display(), io_err(e)))?;
    let mut names: Vec<Vec<u8>> = Vec::new();
    while let Some(ent) = d.read() {
        let ent = ent.map_err(|e| format!("cannot list {}: {}", dir.display(), io_err(e)))?;
        let n = ent.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        names.push(n.to_vec());
        if names.len() > MAX_FILES {
            return Err(format!(
                "{} holds more than {MAX_FILES} entries",
                dir.display()
            ));
        }
    }
    names.sort();
    let mut files = Vec::new();
    for n in names {
        let shown = dir.join(std::ffi::OsStr::from_bytes(&n));
        let name = String::from_utf8(n.clone())
            .map_err(|_| format!("{} has a name that is not UTF-8", shown.display()))?;
        let fd = match rustix::fs::openat(
            &pfd,
            n.as_slice(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP) => {
                return Err(format!(
                    "{} is a symbolic link; a project profile must be a regular file",
                    shown.display()
                ));
            }
            Err(e) => return Err(format!("cannot read {}: {}", shown.display(), io_err(e))),
        };
        let st = rustix::fs::fstat(&fd)
            .map_err(|e| format!("cannot read {}: {}", shown.display(), io_err(e)))?;
        let ft = rustix::fs::FileType::from_raw_mode(st.st_mode);
        if ft == rustix::fs::FileType::Directory {
            // aisbx reads no subdirectory.
            continue;
        }
        if ft != rustix::fs::FileType::RegularFile {
            return Err(format!(
                "{} is not a regular file; a project profile directory holds files only",
                shown.display()
            ));
        }
        let mut bytes = Vec::new();
        std::fs::File::from(fd)
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read {}: {e}", shown.display()))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(format!(
                "{} is larger than {} KiB",
                shown.display(),
                MAX_FILE_BYTES >> 10
            ));
        }
        files.push((name, bytes));
    }
    Ok(ProjectFiles { root, dir, files })
}

impl ProjectFiles {
    /// The SHA-256 of every file's name and content, in name order.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"aisbx project profiles v1\0");
        for (name, bytes) in &self.files {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        hex::encode(h.finalize())
    }

    fn record(&self) -> Record {
        Record {
            project: self.root.clone(),
            digest: self.digest(),
            files: self
                .files
                .iter()
                .map(|(n, b)| (n.clone(), hex::encode(Sha256::digest(b))))
                .collect(),
        }
    }

    /// Whether `home`'s trust records approve exactly these files.
    pub fn status(&self, home: &Path) -> Status {
        let first = || {
            self.dir
                .join(self.files.first().map(|f| f.0.as_str()).unwrap_or(""))
        };
        // An empty directory configures nothing.
        if self.files.is_empty() {
            return Status::Trusted;
        }
        let Some(rec) = read_record(home, &self.root) else {
            return Status::New { file: first() };
        };
        let now = self.record();
        if rec.digest == now.digest && rec.project == self.root {
            return Status::Trusted;
        }
        // Name the first file that differs: added or edited, else removed.
        let changed = now
            .files
            .iter()
            .find(|f| !rec.files.contains(f))
            .or_else(|| rec.files.iter().find(|f| !now.files.contains(f)))
            .map(|f| self.dir.join(&f.0))
            .unwrap_or_else(first);
        Status::Changed { file: changed }
    }
}

fn trust_dir(home: &Path) -> PathBuf {
    home.join("trust")
}

fn record_path(home: &Path, root: &Path) -> PathBuf {
    let key = hex::encode(Sha256::digest(root.as_os_str().as_bytes()));
    trust_dir(home).join(format!("{key}.json"))
}

fn read_record(home: &Path, root: &Path) -> Option<Record> {
    let text = std::fs::read(record_path(home, root)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Approve the project's profiles as read: `home/trust/<key>.json`, mode 0600 in
/// a 0700 directory, written whole and renamed into place.
pub fn approve(home: &Path, files: &ProjectFiles) -> std::io::Result<Record> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let dir = trust_dir(home);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let rec = files.record();
    let path = record_path(home, &files.root);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(&rec).unwrap_or_default())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(rec)
}

/// Withdraw the approval of a project; whether there was one.
pub fn revoke(home: &Path, root: &Path) -> std::io::Result<bool> {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    match std::fs::remove_file(record_path(home, &root)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every approval, by project directory.
pub fn list(home: &Path) -> Vec<Record> {
    let Ok(rd) = std::fs::read_dir(trust_dir(home)) else {
        return Vec::new();
    };
    let mut v: Vec<Record> = rd
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    v.sort_by(|a, b| a.project.cmp(&b.project));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("proj");
        std::fs::create_dir_all(root.join(".aisbx/profiles")).unwrap();
        std::fs::write(root.join(".aisbx/profiles/base.toml"), "name = \"base\"\n").unwrap();
        std::fs::write(root.join(".aisbx/profiles/team.toml"), "name = \"team\"\n").unwrap();
        (t, root)
    }

    #[test]
    fn approval_holds_until_anything_changes() {
        let (t, root) = project();
        let home = t.path().join("home");
        let pf = read_project(&root).unwrap();
        assert!(matches!(pf.status(&home), Status::New { .. }));
        approve(&home, &pf).unwrap();
        assert_eq!(read_project(&root).unwrap().status(&home), Status::Trusted);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&home.join("trust")), 0o700);
        assert_eq!(mode(&record_path(&home, &pf.root)), 0o600);
        // Edited.
        let p = root.join(".aisbx/profiles/base.toml");
        std::fs::write(&p, "name = \"base\"\n[limits]\npids = 9\n").unwrap();
        match read_project(&root).unwrap().status(&home) {
            Status::Changed { file } => assert!(file.ends_with("base.toml"), "{file:?}"),
            s => panic!("{s:?}"),
        }
        std::fs::write(&p, "name = \"base\"\n").unwrap();
        assert_eq!(read_project(&root).unwrap().status(&home), Status::Trusted);
        // Added, even a file that is not a profile.
        std::fs::write(root.join(".aisbx/profiles/notes.txt"), "x").unwrap();
        match read_project(&root).unwrap().status(&home) {
            Status::Changed { file } => assert!(file.ends_with("notes.txt"), "{file:?}"),
            s => panic!("{s:?}"),
        }
        std::fs::remove_file(root.join(".aisbx/profiles/notes.txt")).unwrap();
        // Removed.
        std::fs::remove_file(&p).unwrap();
        match read_project(&root).unwrap().status(&home) {
            Status::Changed { file } => assert!(file.ends_with("base.toml"), "{file:?}"),
            s => panic!("{s:?}"),
        }
        // An empty directory configures nothing: there is nothing to approve.
        std::fs::remove_file(root.join(".aisbx/profiles/team.toml")).unwrap();
        assert_eq!(read_project(&root).unwrap().status(&home), Status::Trusted);
        assert_eq!(list(&home).len(), 1);
        assert!(revoke(&home, &root).unwrap());
        assert!(!revoke(&home, &root).unwrap());
        assert!(list(&home).is_empty());
    }

    #[test]
    fn links_are_refused_at_every_level() {
        let (t, root) = project();
        let outside = t.path().join("outside.toml");
        std::fs::write(&outside, "name = \"x\"\n").unwrap();
        std::os::unix::fs::symlink(&outside, root.join(".aisbx/profiles/x.toml")).unwrap();
        let e = read_project(&root).unwrap_err();
        assert!(e.contains("x.toml is a symbolic link"), "{e}");
        // A linked directory.
        let other = t.path().join("other");
        std::fs::create_dir_all(other.join(".aisbx")).unwrap();
        std::os::unix::fs::symlink(root.join(".aisbx/profiles"), other.join(".aisbx/profiles"))
            .unwrap();
        let e = read_project(&other).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn the_digest_depends_on_names_and_contents() {
        let mk = |files: &[(&str, &str)]| ProjectFiles {
            root: PathBuf::from("/p"),
            dir: PathBuf::from("/p/.aisbx/profiles"),
            files: files
                .iter()
                .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec()))
                .collect(),
        };
        let a = mk(&[("a.toml", "x"), ("b.toml", "y")]).digest();
        assert_ne!(a, mk(&[("a.toml", "xb.toml"), ("", "y")]).digest());
        assert_ne!(a, mk(&[("a.toml", "y"), ("b.toml", "x")]).digest());
        assert_ne!(a, mk(&[("a.toml", "x")]).digest());
        assert_eq!(a, mk(&[("a.toml", "x"), ("b.toml", "y")]).digest());
    }
}
