//! Snapshots: a content-addressed, deduplicated store of file trees.
//!
//! Layout under `<home>/snapshots/`:
//! - `objects/<2 hex>/<key>`: one file per distinct (content, mode, mtime); the key is
//!   `<blake3 of the content>-<mode, octal>-<mtime seconds>.<nanoseconds>`. Objects are
//!   immutable. Mode and mtime are part of the key so that an object can be
//!   hard-linked into a materialized tree as is (see `trees/`).
//! - `manifests/<name>.json`: the snapshot: its metadata and every entry (path, kind,
//!   mode, mtime, size, object hash or symlink target).
//! - `trees/<id>/`: a snapshot materialized once, on its first restore into a
//!   sandbox, as directories and symlinks plus hard links to the objects; it is the
//!   read-only lower layer of the overlay of every sandbox restored from it.
//! - `tmp/`: work in progress; `lock`: an flock serializing writers.
//!
//! Atomicity: a snapshot's new objects are written under `tmp/`, then the file
//! system is synced, then they are renamed into `objects/`, synced again, and only
//! then is the manifest written (temp name, fsync, rename, fsync of the directory).
//! A manifest therefore exists only when everything it names is complete and on
//! disk, and a `kill -9` at any point leaves at most unreferenced temporary files
//! and objects, which the next writer removes. `snap rm` deletes the manifest, then
//! every object and tree nothing references any more.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{self as rfs, AtFlags, FlockOperation, Mode, OFlags, RenameFlags};
use serde::{Deserialize, Serialize};

use crate::ServiceError;
use crate::audit::rfc3339_now;
use crate::new_id;
use crate::sandbox::check_name;
use crate::snapshot_fs::{
    self as sfs, Kind, Layers, Node, Source, Writer, io_err, open_beneath, open_dir,
};

/// Manifest format version.
const FORMAT: u32 = 1;
/// Largest manifest read (about 3 million entries).
const MAX_MANIFEST: usize = 1 << 30;
/// Largest file shown as a unified diff.
const MAX_DIFF_BYTES: u64 = 64 << 10;

/// What a snapshot is, as `snap list` and the MCP `snapshot_list` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SnapshotInfo {
    pub name: String,
    /// Unique id of this snapshot (a name can be reused after `snap rm`).
    pub id: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// `sandbox:NAME` or `workdir:PATH`.
    pub source: String,
    /// The profile of the sandbox it was taken from.
    pub profile: Option<String>,
    /// The snapshot the source sandbox was restored from, if any.
    pub parent: Option<String>,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Total size of the files, in bytes.
    pub bytes: u64,
    /// Entries left out (devices, sockets, FIFOs).
    pub skipped: u64,
    /// Bytes of file data this snapshot shares with other snapshots (listings only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_bytes: Option<u64>,
    /// Set when the snapshot is damaged: why, in one sentence. A damaged snapshot
    /// cannot be restored or compared; the other fields are what could be read of
    /// it (zero or empty when nothing could). `snap rm` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

impl SnapshotInfo {
    /// A snapshot's record before anything of its content is known.
    fn blank(name: &str, id: String, created_at: String) -> SnapshotInfo {
        SnapshotInfo {
            name: name.to_string(),
            id,
            created_at,
            source: String::new(),
            profile: None,
            parent: None,
            files: 0,
            dirs: 0,
            symlinks: 0,
            bytes: 0,
            skipped: 0,
            shared_bytes: None,
            damaged: None,
        }
    }
}

/// A path or link target: a string when it is UTF-8, else hex of its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Bytes {
    Text(String),
    Hex { hex: String },
}

impl Bytes {
    fn from(b: &[u8]) -> Self {
        match std::str::from_utf8(b) {
            Ok(s) => Bytes::Text(s.to_string()),
            Err(_) => Bytes::Hex {
                hex: hex::encode(b),
            },
        }
    }
    fn to_vec(&self) -> Result<Vec<u8>, String> {
        match self {
            Bytes::Text(s) => Ok(s.as_bytes().to_vec()),
            Bytes::Hex { hex } => hex::decode(hex).map_err(|e| e.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    path: Bytes,
    kind: Kind,
    mode: u32,
    mtime: (i64, u32),
    #[serde(default, skip_serializing_if = "is_zero")]
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<Bytes>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    info: SnapshotInfo,
    entries: Vec<Entry>,
}

impl Manifest {
    /// Is this a manifest this aisbx can use for snapshot `name`? `Err`: why not,
    /// as the end of a sentence "snapshot 'x' is damaged: ...".
    fn check(&self, name: &str) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "its manifest has format {}, which this aisbx does not understand",
                self.format
            ));
        }
        if self.info.name != name {
            return Err(format!(
                "its manifest names another snapshot ('{}')",
                lossy(&self.info.name.as_bytes()[..self.info.name.len().min(64)])
            ));
        }
        if check_name(&self.info.id).is_err() {
            return Err("its manifest has no valid id".into());
        }
        let mut seen: HashMap<Vec<u8>, Kind> = HashMap::new();
        for e in &self.entries {
            let node = e
                .node()
                .map_err(|err| format!("its manifest lists a bad entry ({err})"))?;
            let path = lossy(&node.path);
            let path = if path.is_empty() { ".".into() } else { path };
            let (parent, _) = sfs::split(&node.path);
            if !node.path.is_empty() && !parent.is_empty() && seen.get(parent) != Some(&Kind::Dir) {
                return Err(format!("its manifest lists {path} before its directory"));
            }
            if node.path.is_empty() && e.kind != Kind::Dir {
                return Err("its manifest says the root is not a directory".into());
            }
            if seen.insert(node.path, e.kind).is_some() {
                return Err(format!("its manifest lists {path} twice"));
            }
            match (e.kind, &e.hash, &e.target) {
                (Kind::File, Some(h), None) if valid_hash(h) => {}
                (Kind::File, _, _) => {
                    return Err(format!("its manifest gives {path} no valid content hash"));
                }
                (Kind::Symlink, None, Some(_)) | (Kind::Dir, None, None) => {}
                _ => return Err(format!("its manifest describes {path} inconsistently")),
            }
        }
        Ok(())
    }
}

/// A BLAKE3 hash as the store names it: 64 lowercase hex digits.
fn valid_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Entry {
    fn node(&self) -> Result<Node, String> {
        let path = self.path.to_vec()?;
        if !sfs::valid_rel(&path) {
            return Err(format!("bad path {:?}", String::from_utf8_lossy(&path)));
        }
        Ok(Node {
            path,
            kind: self.kind,
            mode: self.mode & 0o7777,
            mtime: self.mtime,
            size: self.size,
            target: match &self.target {
                Some(t) => t.to_vec()?,
                None => Vec::new(),
            },
            layer: 0,
        })
    }

    fn key(&self) -> Option<String> {
        self.hash
            .as_ref()
            .map(|h| object_key(h, self.mode, self.mtime))
    }
}

fn object_key(hash: &str, mode: u32, mtime: (i64, u32)) -> String {
    format!("{hash}-{:o}-{}.{:09}", mode & 0o7777, mtime.0, mtime.1)
}

fn object_rel(key: &str) -> Vec<u8> {
    format!("objects/{}/{key}", &key[..2]).into_bytes()
}

/// Receives progress of long snapshot operations (the CLI draws a bar).
pub trait Progress: Send {
    /// A phase starts: `what` it is and how many bytes it will go through.
    fn start(&mut self, _what: &str, _total_bytes: u64) {}
    fn advance(&mut self, _bytes: u64) {}
    fn finish(&mut self) {}
    /// A warning for the user (a skipped device file, say).
    fn warn(&mut self, _message: &str) {}
}

/// No progress reporting.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a snapshot is taken of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SnapSource {
    Sandbox(String),
    Workdir(PathBuf),
}

/// Where a snapshot is restored to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum RestoreTarget {
    /// A new, empty or missing host directory (a copy, with reflinks where possible).
    Workdir(PathBuf),
    /// A new copy-on-write sandbox of this name.
    Sandbox(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RestoreResult {
    pub snapshot: String,
    /// The new sandbox, when restored into one.
    pub sandbox_id: Option<String>,
    /// The directory written, when restored into one.
    pub workdir: Option<String>,
    pub files: u64,
    pub bytes: u64,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileDiff {
    pub path: String,
    /// A unified diff (small text files only).
    pub unified: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SnapshotDiff {
    pub from: String,
    pub to: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Paths whose content, kind, mode or link target differ.
    pub changed: Vec<String>,
    pub diffs: Vec<FileDiff>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VerifyReport {
    pub ok: bool,
    pub snapshots: u64,
    pub objects_checked: u64,
    pub bytes_checked: u64,
    /// Objects no snapshot uses (left by an interrupted snapshot; freed by the next
    /// `snap rm`). Not an error.
    pub unreferenced_objects: u64,
    pub problems: Vec<String>,
}

/// The snapshot store of one state directory.
pub(crate) struct Store {
    root: PathBuf,
    dir: OwnedFd,
    _lock: OwnedFd,
    /// As root, the owner of the trees it writes: the host id its tenant's
    /// sandboxes map to (their overlay must read the tree as its owner).
    owner: Option<(u32, u32)>,
}

fn internal(what: &str, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(format!("{what}: {e}"))
}

fn mkdir_ok(dir: impl AsFd, name: &str, mode: u32) -> io::Result<()> {
    match rfs::mkdirat(dir, name, Mode::from_raw_mode(mode)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(io_err(e)),
    }
}

impl Store {
    /// Open (creating) the store and take its lock: exclusive for writers.
    pub(crate) fn open(home: &Path, exclusive: bool) -> Result<Store, ServiceError> {
        let root = home.join("snapshots");
        let made = (|| -> io::Result<Store> {
            std::fs::create_dir_all(&root)?;
            let dir = sfs::open_host_dir(&root)?;
            rfs::fchmod(&dir, Mode::from_raw_mode(0o700)).map_err(io_err)?;
            for d in ["objects", "manifests", "trees", "tmp", "damaged"] {
                mkdir_ok(&dir, d, 0o700)?;
            }
            let lock = rfs::openat(
                &dir,
                "lock",
                OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::from_raw_mode(0o600),
            )
            .map_err(io_err)?;
            rfs::flock(
                &lock,
                if exclusive {
                    FlockOperation::LockExclusive
                } else {
                    FlockOperation::LockShared
                },
            )
            .map_err(io_err)?;
            Ok(Store {
                root: root.clone(),
                dir,
                _lock: lock,
                owner: None,
            })
        })();
        made.map_err(|e| {
            internal(
                &format!("cannot open the snapshot store {}", root.display()),
                e,
            )
        })
    }

    /// The store writing its trees as `owner` (see [`Store::owner`]).
    fn owned_by(mut self, owner: Option<(u32, u32)>) -> Store {
        self.owner = owner;
        self
    }

    fn sub(&self, rel: &str) -> io::Result<OwnedFd> {
        open_dir(self.dir.as_fd(), rel.as_bytes())
    }

    /// Remove what an interrupted writer left in `tmp/` (caller holds the lock
    /// exclusively).
    fn clean_tmp(&self) {
        if let Ok(tmp) = self.sub("tmp") {
            for name in names_in(tmp.as_fd()) {
                let _ = sfs::remove_tree_at(tmp.as_fd(), &name);
            }
        }
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.root.join("manifests").join(format!("{name}.json"))
    }

    /// A snapshot's manifest, checked; `Err(None)` when there is no such snapshot,
    /// `Err(Some(why))` when it is damaged.
    fn load_manifest(&self, name: &str) -> Result<Manifest, Option<String>> {
        let fd = match open_beneath(
            self.dir.as_fd(),
            format!("manifests/{name}.json").as_bytes(),
            OFlags::RDONLY,
        ) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(None),
            Err(e) => return Err(Some(format!("its manifest cannot be opened ({e})"))),
        };
        let data = sfs::read_prefix(fd, MAX_MANIFEST + 1)
            .map_err(|e| Some(format!("its manifest cannot be read ({e})")))?;
        if data.len() > MAX_MANIFEST {
            return Err(Some(format!(
                "its manifest is larger than {} MiB",
                MAX_MANIFEST >> 20
            )));
        }
        let m: Manifest = serde_json::from_slice(&data).map_err(|e| {
            Some(match e.classify() {
                serde_json::error::Category::Eof => {
                    format!("its manifest is cut short ({e})")
                }
                serde_json::error::Category::Data => {
                    format!("its manifest is JSON but not a snapshot manifest ({e})")
                }
                _ => format!("its manifest is not valid JSON ({e})"),
            })
        })?;
        m.check(name).map_err(Some)?;
        Ok(m)
    }

    fn read_manifest(&self, name: &str) -> Result<Manifest, ServiceError> {
        check_name(name).map_err(|_| {
            ServiceError::invalid("snapshot", format!("'{name}' is not a valid snapshot name"))
        })?;
        self.load_manifest(name).map_err(|damage| match damage {
            None => ServiceError::invalid(
                "snapshot",
                format!("no snapshot named '{name}': list them with `aisbx snap list`"),
            ),
            Some(why) => ServiceError::Refused(format!(
                "snapshot '{name}' is damaged: {why}; it cannot be used, only removed (`aisbx snap rm {name}`)"
            )),
        })
    }

    fn manifest_names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("manifests"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.strip_suffix(".json")
                            .filter(|s| check_name(s).is_ok())
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn manifests(&self) -> Vec<(String, Result<Manifest, String>)> {
        self.manifest_names()
            .into_iter()
            .map(|n| {
                let m = self
                    .load_manifest(&n)
                    .map_err(|d| d.unwrap_or_else(|| "its manifest vanished".into()));
                (n, m)
            })
            .collect()
    }

    /// Objects a check found damaged (`damaged/<key>`, holding what is wrong):
    /// recorded by a restore into a directory and by `snap verify`, cleared by a
    /// `snap verify` that finds the object sound, or when the object is freed.
    fn bad_objects(&self) -> HashMap<String, String> {
        let Ok(dir) = self.sub("damaged") else {
            return HashMap::new();
        };
        names_in(dir.as_fd())
            .into_iter()
            .filter_map(|k| {
                let what = open_beneath(dir.as_fd(), &k, OFlags::RDONLY)
                    .and_then(|fd| sfs::read_prefix(fd, 200))
                    .ok()?;
                let what = match what.as_slice() {
                    b"missing" => "is missing",
                    _ => "does not match its hash",
                };
                Some((lossy(&k), what.to_string()))
            })
            .collect()
    }

    /// Record that a check found object `key` damaged (`missing`, or else its
    /// content does not match). Best effort: the check reports it either way.
    fn mark_bad(&self, key: &str, missing: bool) {
        if let Ok(dir) = self.sub("damaged")
            && let Ok(fd) = rfs::openat(
                &dir,
                key,
                OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::TRUNC
                    | OFlags::CLOEXEC
                    | OFlags::NOFOLLOW,
                Mode::from_raw_mode(0o600),
            )
        {
            let what: &[u8] = if missing { b"missing" } else { b"corrupt" };
            let _ = rustix::io::write(&fd, what);
        }
    }

    fn clear_bad(&self, key: &str) {
        if let Ok(dir) = self.sub("damaged") {
            let _ = rfs::unlinkat(&dir, key, AtFlags::empty());
        }
    }

    /// Why a sound manifest's snapshot is damaged anyway: the first of its files
    /// whose object a check found damaged.
    fn known_damage(m: &Manifest, bad: &HashMap<String, String>) -> Option<String> {
        if bad.is_empty() {
            return None;
        }
        m.entries.iter().find_map(|e| {
            let what = bad.get(&e.key()?)?;
            let path = e.path.to_vec().map(|p| lossy(&p)).unwrap_or_default();
            Some(format!(
                "the stored content of {path} {what} (found by an earlier check; `snap verify` checks again)"
            ))
        })
    }

    /// What can be shown of a damaged snapshot: its recorded metadata when that
    /// part of the manifest still reads, else its name and the manifest's mtime.
    fn damaged_info(&self, name: &str, why: String) -> SnapshotInfo {
        #[derive(Deserialize)]
        struct InfoOnly {
            info: SnapshotInfo,
        }
        let salvaged = open_beneath(
            self.dir.as_fd(),
            format!("manifests/{name}.json").as_bytes(),
            OFlags::RDONLY,
        )
        .and_then(|fd| sfs::read_prefix(fd, MAX_MANIFEST))
        .ok()
        .and_then(|d| serde_json::from_slice::<InfoOnly>(&d).ok())
        .map(|i| i.info)
        .filter(|i| i.name == name && check_name(&i.id).is_ok());
        let mut info = salvaged.unwrap_or_else(|| {
            let created_at = sfs::stat_beneath(
                self.dir.as_fd(),
                format!("manifests/{name}.json").as_bytes(),
            )
            .map(|st| crate::audit::rfc3339(st.st_mtime, 0))
            .unwrap_or_default();
            SnapshotInfo::blank(name, String::new(), created_at)
        });
        info.shared_bytes = None;
        info.damaged = Some(why);
        info
    }

    fn object_exists(&self, key: &str, size: u64) -> bool {
        sfs::stat_beneath(self.dir.as_fd(), &object_rel(key))
            .map(|st| st.st_size as u64 == size)
            .unwrap_or(false)
    }

    /// Take a snapshot of `layers` (caller holds the lock exclusively).
    fn create(
        &self,
        info: SnapshotInfo,
        layers: &Layers,
        progress: &mut dyn Progress,
    ) -> Result<SnapshotInfo, ServiceError> {
        let name = info.name.clone();
        if self.manifest_path(&name).exists() {
            return Err(ServiceError::invalid(
                "name",
                format!("a snapshot named '{name}' already exists"),
            ));
        }
        self.clean_tmp();
        let mut warnings = Vec::new();
        let nodes = layers
            .scan(b"", &mut |w| warnings.push(w))
            .map_err(|e| internal("cannot read the source tree", e))?;
        for w in &warnings {
            progress.warn(w);
        }
        let total: u64 = nodes.iter().map(|n| n.size).sum();
        progress.start("snapshot", total);
        let tmp = self.sub("tmp").map_err(|e| internal("tmp", e))?;
        let owner = self.owner;
        let mut pending: HashMap<String, String> = HashMap::new();
        let mut entries = Vec::with_capacity(nodes.len());
        let mut info = info;
        for node in &nodes {
            // Never setuid or setgid in the store, nor anywhere it is restored to.
            let mode = sfs::host_mode(node.kind, node.mode);
            let mut e = Entry {
                path: Bytes::from(&node.path),
                kind: node.kind,
                mode,
                mtime: node.mtime,
                size: 0,
                hash: None,
                target: None,
            };
            match node.kind {
                Kind::Dir => info.dirs += 1,
                Kind::Symlink => {
                    info.symlinks += 1;
                    e.target = Some(Bytes::from(&node.target));
                }
                Kind::File => {
                    info.files += 1;
                    let src = sfs::open_file(layers.fd(node.layer), &node.path).map_err(|err| {
                        internal(
                            &format!("cannot read {}", String::from_utf8_lossy(&node.path)),
                            err,
                        )
                    })?;
                    let (hash, size) = sfs::hash_fd(&src, &mut |n| progress.advance(n))
                        .map_err(|err| internal("reading a file", err))?;
                    let mut hash = hash.to_hex().to_string();
                    let mut size = size;
                    let key = object_key(&hash, mode, node.mtime);
                    if !pending.contains_key(&key) && !self.object_exists(&key, size) {
                        // New content: copy it while hashing again, so the object's
                        // name always matches what was stored.
                        let tname = format!("obj-{}", pending.len());
                        let out = rfs::openat(
                            &tmp,
                            tname.as_str(),
                            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                            Mode::from_raw_mode(0o600),
                        )
                        .map_err(|err| internal("writing an object", io_err(err)))?;
                        let src = sfs::open_file(layers.fd(node.layer), &node.path)
                            .map_err(|err| internal("reading a file", err))?;
                        let (h2, n2) = sfs::copy_hash(&src, &out)
                            .map_err(|err| internal("writing an object", err))?;
                        hash = h2.to_hex().to_string();
                        size = n2;
                        if let Some((u, g)) = owner {
                            rfs::fchown(
                                &out,
                                Some(rfs::Uid::from_raw(u)),
                                Some(rfs::Gid::from_raw(g)),
                            )
                            .map_err(|err| internal("writing an object", io_err(err)))?;
                        }
                        rfs::fchmod(&out, Mode::from_raw_mode(mode))
                            .map_err(|err| internal("writing an object", io_err(err)))?;
                        rfs::futimens(&out, &sfs::timestamps(node.mtime))
                            .map_err(|err| internal("writing an object", io_err(err)))?;
                        let key = object_key(&hash, mode, node.mtime);
                        if !self.object_exists(&key, size) && !pending.contains_key(&key) {
                            pending.insert(key, tname);
                        }
                    }
                    info.bytes += size;
                    e.size = size;
                    e.hash = Some(hash);
                }
            }
            entries.push(e);
        }
        info.skipped = warnings.len() as u64;
        progress.finish();
        // The new objects' data reaches the disk before they get their names, and
        // their names before the manifest that uses them.
        rfs::syncfs(&self.dir).map_err(|e| internal("syncing the store", io_err(e)))?;
        let objects = self.sub("objects").map_err(|e| internal("objects", e))?;
        for (key, tname) in &pending {
            mkdir_ok(&objects, &key[..2], 0o700).map_err(|e| internal("objects", e))?;
            let dir = open_dir(objects.as_fd(), &key.as_bytes()[..2])
                .map_err(|e| internal("objects", e))?;
            rfs::renameat(&tmp, tname.as_str(), &dir, key.as_str())
                .map_err(|e| internal("storing an object", io_err(e)))?;
        }
        rfs::syncfs(&self.dir).map_err(|e| internal("syncing the store", io_err(e)))?;
        let manifest = Manifest {
            format: FORMAT,
            info: info.clone(),
            entries,
        };
        self.write_manifest(&manifest)?;
        Ok(info)
    }

    fn write_manifest(&self, m: &Manifest) -> Result<(), ServiceError> {
        let json = serde_json::to_vec(m).map_err(|e| internal("encoding the manifest", e))?;
        let tmp = self.sub("tmp").map_err(|e| internal("tmp", e))?;
        let manifests = self
            .sub("manifests")
            .map_err(|e| internal("manifests", e))?;
        let tname = format!("manifest-{}", m.info.id);
        let fd = rfs::openat(
            &tmp,
            tname.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| internal("writing the manifest", io_err(e)))?;
        let mut f = std::fs::File::from(fd);
        io::Write::write_all(&mut f, &json).map_err(|e| internal("writing the manifest", e))?;
        f.sync_all()
            .map_err(|e| internal("writing the manifest", e))?;
        let final_name = format!("{}.json", m.info.name);
        rfs::renameat_with(
            &tmp,
            tname.as_str(),
            &manifests,
            final_name.as_str(),
            RenameFlags::NOREPLACE,
        )
        .map_err(|e| {
            if e == rustix::io::Errno::EXIST {
                ServiceError::invalid(
                    "name",
                    format!("a snapshot named '{}' already exists", m.info.name),
                )
            } else {
                internal("publishing the manifest", io_err(e))
            }
        })?;
        rfs::fsync(&manifests).map_err(|e| internal("syncing the manifests", io_err(e)))?;
        Ok(())
    }

    /// The materialized tree of a snapshot (made on first use; caller holds the
    /// lock exclusively). Directories and symlinks are created, files are hard
    /// links to the objects: its cost grows with the number of entries, not bytes.
    fn ensure_tree(&self, m: &Manifest) -> Result<PathBuf, ServiceError> {
        let id = &m.info.id;
        check_name(id).map_err(|_| ServiceError::Internal("bad snapshot id".into()))?;
        let final_path = self.root.join("trees").join(id);
        if final_path.is_dir() {
            return Ok(final_path);
        }
        self.clean_tmp();
        let tname = format!("tree-{id}");
        let tmp = self.sub("tmp").map_err(|e| internal("tmp", e))?;
        rfs::mkdirat(&tmp, tname.as_str(), Mode::from_raw_mode(0o700))
            .map_err(|e| internal("creating the tree", io_err(e)))?;
        let troot = open_dir(tmp.as_fd(), tname.as_bytes()).map_err(|e| internal("tree", e))?;
        let objects = self.sub("objects").map_err(|e| internal("objects", e))?;
        let mut w = Writer::new(troot.as_fd(), self.owner, false);
        for e in &m.entries {
            let node = e
                .node()
                .map_err(|err| internal("a damaged manifest entry", err))?;
            let source = e.key().map(|key| Source::Link {
                dir: objects.as_fd(),
                name: object_rel(&key)["objects/".len()..].to_vec(),
            });
            w.put(&node, source).map_err(|err| {
                internal(
                    &format!("materializing {}", String::from_utf8_lossy(&node.path)),
                    err,
                )
            })?;
        }
        w.finish()
            .map_err(|e| internal("materializing the tree", e))?;
        let trees = self.sub("trees").map_err(|e| internal("trees", e))?;
        rfs::syncfs(&self.dir).map_err(|e| internal("syncing the store", io_err(e)))?;
        rfs::renameat(&tmp, tname.as_str(), &trees, id.as_str())
            .map_err(|e| internal("publishing the tree", io_err(e)))?;
        rfs::fsync(&trees).map_err(|e| internal("syncing the trees", io_err(e)))?;
        Ok(final_path)
    }

    /// Delete every object and tree nothing references (caller holds the lock
    /// exclusively). A damaged manifest's references are unknown, so while one
    /// exists no object or tree is deleted; while a sandbox's record cannot be read,
    /// no tree is. Either is said in the result's `kept`, and is not an error.
    fn collect_garbage(&self, users: &TreeUsers) -> Result<Collected, ServiceError> {
        let mut keys: HashSet<String> = HashSet::new();
        let mut ids: HashSet<String> = users.ids.clone();
        let mut damaged = Vec::new();
        for (name, m) in self.manifests() {
            match m {
                Ok(m) => {
                    ids.insert(m.info.id.clone());
                    keys.extend(m.entries.iter().filter_map(Entry::key));
                }
                Err(_) => damaged.push(name),
            }
        }
        let mut out = Collected::default();
        if let Some(first) = damaged.first() {
            out.kept = Some(format!(
                "no data was freed: snapshot '{first}'{} is damaged, so which data it uses is unknown; it is freed once the damaged snapshot is removed",
                match damaged.len() {
                    1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                }
            ));
            self.clean_tmp();
            return Ok(out);
        }
        if let Ok(objects) = self.sub("objects") {
            for d in names_in(objects.as_fd()) {
                let Ok(dir) = open_dir(objects.as_fd(), &d) else {
                    continue;
                };
                for o in names_in(dir.as_fd()) {
                    if keys.contains(String::from_utf8_lossy(&o).as_ref()) {
                        continue;
                    }
                    let Ok(st) =
                        rfs::statat(&dir, OsStr::from_bytes(&o), AtFlags::SYMLINK_NOFOLLOW)
                    else {
                        continue;
                    };
                    if rfs::unlinkat(&dir, OsStr::from_bytes(&o), AtFlags::empty()).is_ok() {
                        out.freed_objects += 1;
                        // The space an object takes, holes excluded.
                        out.freed_bytes += (st.st_blocks as u64 * 512).min(st.st_size as u64);
                    }
                }
            }
        }
        if let Ok(marks) = self.sub("damaged") {
            for k in names_in(marks.as_fd()) {
                if !keys.contains(String::from_utf8_lossy(&k).as_ref()) {
                    let _ = rfs::unlinkat(&marks, OsStr::from_bytes(&k), AtFlags::empty());
                }
            }
        }
        match &users.unreadable {
            Some(sb) => {
                out.kept = Some(format!(
                    "no snapshot tree was freed: the record of sandbox '{sb}' cannot be read, so which tree it uses is unknown"
                ));
            }
            None => {
                if let Ok(trees) = self.sub("trees") {
                    for id in names_in(trees.as_fd()) {
                        if !ids.contains(String::from_utf8_lossy(&id).as_ref()) {
                            let _ = sfs::remove_tree_at(trees.as_fd(), &id);
                        }
                    }
                }
            }
        }
        self.clean_tmp();
        Ok(out)
    }
}

/// What a garbage collection freed, and why it kept what it could not judge.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    pub freed_objects: u64,
    pub freed_bytes: u64,
    pub kept: Option<String>,
}

/// The snapshot trees sandboxes use, read from their records (`lower`).
/// `unreadable`: a sandbox whose record is missing or cannot be read (its tree is
/// unknown).
#[derive(Debug, Default)]
struct TreeUsers {
    ids: HashSet<String>,
    unreadable: Option<String>,
}

fn tree_users(home: &Path) -> TreeUsers {
    let mut u = TreeUsers::default();
    let Ok(root) = sfs::open_host_dir(&home.join("sandboxes")) else {
        return u;
    };
    for id in names_in(root.as_fd()) {
        let record = open_beneath(root.as_fd(), &sfs::join(&id, b"meta.json"), OFlags::RDONLY)
            .and_then(|fd| sfs::read_prefix(fd, 1 << 20))
            .ok()
            .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
            .filter(|v| v.is_object());
        match record {
            Some(v) => {
                if let Some(tree) = v
                    .get("lower")
                    .and_then(|l| l.as_str())
                    .and_then(|l| Path::new(l).file_name())
                {
                    u.ids.insert(tree.to_string_lossy().into_owned());
                }
            }
            None => {
                if u.unreadable.is_none() {
                    u.unreadable = Some(lossy(&id));
                }
            }
        }
    }
    u
}

/// The names in an open directory (`.` and `..` left out; empty when unreadable).
fn names_in(dir: std::os::fd::BorrowedFd<'_>) -> Vec<Vec<u8>> {
    let Ok(rd) = rfs::Dir::read_from(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect()
}

fn node_key_map(m: &Manifest) -> BTreeMap<Vec<u8>, &Entry> {
    m.entries
        .iter()
        .filter_map(|e| e.path.to_vec().ok().map(|p| (p, e)))
        .collect()
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

// ----- the operations the service exposes -----

pub(crate) fn create(
    home: &Path,
    owner: Option<(u32, u32)>,
    name: &str,
    source: &SnapSource,
    progress: &mut dyn Progress,
) -> Result<SnapshotInfo, ServiceError> {
    check_name(name).map_err(|_| {
        ServiceError::invalid(
            "name",
            format!(
                "'{name}' is not a valid snapshot name: use 1-64 letters, digits, '_', '.', '-'"
            ),
        )
    })?;
    let mut info = SnapshotInfo::blank(name, new_id("snap"), rfc3339_now());
    let layers = match source {
        SnapSource::Sandbox(id) => {
            let sb = crate::sandbox::load(home, id)?;
            info.source = format!("sandbox:{id}");
            info.profile = Some(sb.profile.clone());
            info.parent = sb.from_snapshot.clone();
            crate::sandbox::layers(&sb)?
        }
        SnapSource::Workdir(dir) => {
            let canon = std::fs::canonicalize(dir)
                .map_err(|e| ServiceError::invalid("workdir", format!("{}: {e}", dir.display())))?;
            let home = std::fs::canonicalize(home).unwrap_or_else(|_| home.into());
            if canon.starts_with(&home) {
                return Err(ServiceError::invalid(
                    "workdir",
                    format!("{} holds aisbx state", dir.display()),
                ));
            }
            info.source = format!("workdir:{}", canon.display());
            let fd = sfs::open_host_dir(&canon)
                .map_err(|e| ServiceError::invalid("workdir", format!("{}: {e}", dir.display())))?;
            Layers::single(fd)
        }
    };
    let store = Store::open(home, true)?.owned_by(owner);
    store.create(info, &layers, progress)
}

pub(crate) fn list(home: &Path, with_sharing: bool) -> Result<Vec<SnapshotInfo>, ServiceError> {
    let store = Store::open(home, false)?;
    let bad = store.bad_objects();
    let mut ms = Vec::new();
    let mut out = Vec::new();
    for (name, m) in store.manifests() {
        match m {
            Ok(mut m) => {
                m.info.damaged = Store::known_damage(&m, &bad);
                ms.push(m)
            }
            Err(why) => out.push(store.damaged_info(&name, why)),
        }
    }
    if with_sharing {
        // How many snapshots use each object.
        let mut users: HashMap<String, u32> = HashMap::new();
        for m in &ms {
            let keys: HashSet<String> = m.entries.iter().filter_map(Entry::key).collect();
            for k in keys {
                *users.entry(k).or_default() += 1;
            }
        }
        for m in &ms {
            let mut seen = HashSet::new();
            let shared: u64 = m
                .entries
                .iter()
                .filter_map(|e| e.key().map(|k| (k, e.size)))
                .filter(|(k, _)| seen.insert(k.clone()))
                .filter(|(k, _)| users.get(k).copied().unwrap_or(0) > 1)
                .map(|(_, s)| s)
                .sum();
            let mut i = m.info.clone();
            i.shared_bytes = Some(shared);
            out.push(i);
        }
    } else {
        out.extend(ms.into_iter().map(|m| m.info));
    }
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
    Ok(out)
}

/// What `snap rm` reports.
pub(crate) struct Removed {
    pub collected: Collected,
    /// Set when the removed snapshot was damaged: why.
    pub was_damaged: Option<String>,
}

/// Remove a snapshot, damaged or not, then free what nothing uses any more.
/// Another snapshot being damaged never makes this fail: the collection then
/// keeps everything it cannot judge (see [`Store::collect_garbage`]).
pub(crate) fn remove(home: &Path, name: &str) -> Result<Removed, ServiceError> {
    check_name(name).map_err(|_| {
        ServiceError::invalid("snapshot", format!("'{name}' is not a valid snapshot name"))
    })?;
    let store = Store::open(home, true)?;
    let was_damaged = match store.load_manifest(name) {
        Ok(m) => Store::known_damage(&m, &store.bad_objects()),
        Err(None) => {
            return Err(ServiceError::invalid(
                "snapshot",
                format!("no snapshot named '{name}': list them with `aisbx snap list`"),
            ));
        }
        Err(Some(why)) => Some(why),
    };
    let manifests = store
        .sub("manifests")
        .map_err(|e| internal("manifests", e))?;
    let file = format!("{name}.json");
    // Whatever the file has become (even a directory), it goes.
    sfs::remove_tree_at(manifests.as_fd(), file.as_bytes())
        .map_err(|e| internal(&format!("cannot remove snapshot '{name}'"), e))?;
    let _ = rfs::fsync(&manifests);
    let collected = store.collect_garbage(&tree_users(home))?;
    Ok(Removed {
        collected,
        was_damaged,
    })
}

/// Free what sandboxes no longer use (after a sandbox is removed).
pub(crate) fn collect_garbage(home: &Path) -> Result<(), ServiceError> {
    let store = Store::open(home, true)?;
    store.collect_garbage(&tree_users(home)).map(|_| ())
}

/// Materialize a snapshot's tree for a new sandbox. Runs `with` while the store is
/// locked, so that the tree cannot be collected before the sandbox records it.
pub(crate) fn with_tree<T>(
    home: &Path,
    owner: Option<(u32, u32)>,
    name: &str,
    with: impl FnOnce(&SnapshotInfo, &Path) -> Result<T, ServiceError>,
) -> Result<T, ServiceError> {
    let store = Store::open(home, true)?.owned_by(owner);
    let m = store.read_manifest(name)?;
    if let Some(why) = Store::known_damage(&m, &store.bad_objects()) {
        return Err(ServiceError::Refused(format!(
            "snapshot '{name}' is damaged: {why}; it cannot be used, only removed (`aisbx snap rm {name}`)"
        )));
    }
    let tree = store.ensure_tree(&m)?;
    with(&m.info, &tree)
}

/// Copy a snapshot into a new (missing or empty) host directory.
pub(crate) fn restore_to_dir(
    home: &Path,
    name: &str,
    dir: &Path,
    progress: &mut dyn Progress,
) -> Result<RestoreResult, ServiceError> {
    let start = std::time::Instant::now();
    let store = Store::open(home, false)?;
    let m = store.read_manifest(name)?;
    let mut created = false;
    match std::fs::symlink_metadata(dir) {
        Ok(md) if md.is_dir() => {
            let empty = std::fs::read_dir(dir)
                .map(|mut r| r.next().is_none())
                .unwrap_or(false);
            if !empty {
                return Err(ServiceError::invalid(
                    "workdir",
                    format!(
                        "{} is not empty; restore into a new or empty directory",
                        dir.display()
                    ),
                ));
            }
        }
        Ok(_) => {
            return Err(ServiceError::invalid(
                "workdir",
                format!("{} exists and is not a directory", dir.display()),
            ));
        }
        Err(_) => {
            std::fs::create_dir(dir).map_err(|e| {
                ServiceError::invalid("workdir", format!("cannot create {}: {e}", dir.display()))
            })?;
            created = true;
        }
    }
    let r = restore_into(home, &store, &m, dir, created, progress);
    progress.finish();
    if r.is_err() && created {
        // Refused before anything was written: the directory made for it goes
        // (already gone, or not empty, are both fine to leave as they are).
        let _ = std::fs::remove_dir(dir);
    }
    let mut r = r?;
    r.duration_ms = start.elapsed().as_millis() as u64;
    Ok(r)
}

/// Copy `m` into the empty directory `dir`, checking each file's content against
/// its hash as it is copied. On any failure nothing restored is left: what was
/// written is removed (and `dir` too when `created`), or the error says what is
/// left.
fn restore_into(
    home: &Path,
    store: &Store,
    m: &Manifest,
    dir: &Path,
    created: bool,
    progress: &mut dyn Progress,
) -> Result<RestoreResult, ServiceError> {
    let name = &m.info.name;
    let canon = std::fs::canonicalize(dir)
        .map_err(|e| ServiceError::invalid("workdir", format!("{}: {e}", dir.display())))?;
    let home = std::fs::canonicalize(home).unwrap_or_else(|_| home.into());
    if canon.starts_with(&home) {
        return Err(ServiceError::invalid(
            "workdir",
            format!("{} holds aisbx state", dir.display()),
        ));
    }
    // As root, what is restored belongs to the directory's owner.
    // SAFETY: getter.
    let owner = if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(canon.parent().unwrap_or(&canon))
            .map_err(|e| internal("workdir", e))?;
        (md.uid() != 0).then_some((md.uid(), md.gid()))
    } else {
        None
    };
    let root = sfs::open_host_dir(&canon)
        .map_err(|e| ServiceError::invalid("workdir", format!("{}: {e}", dir.display())))?;
    let objects = store.sub("objects").map_err(|e| internal("objects", e))?;
    progress.start("restore", m.info.bytes);
    let written = (|| -> Result<(), ServiceError> {
        let mut w = Writer::new(root.as_fd(), owner, false);
        for e in &m.entries {
            let node = e
                .node()
                .map_err(|err| internal("a damaged manifest entry", err))?;
            let path = lossy(&node.path);
            let source = match (e.key(), &e.hash) {
                (Some(key), Some(hash)) => Some(Source::Checked {
                    fd: open_beneath(
                        objects.as_fd(),
                        &object_rel(&key)["objects/".len()..],
                        OFlags::RDONLY,
                    )
                    .map_err(|err| {
                        if err.kind() == io::ErrorKind::NotFound {
                            store.mark_bad(&key, true);
                        }
                        ServiceError::Refused(format!(
                            "snapshot '{name}' is damaged: the stored content of {path} cannot be opened ({err})"
                        ))
                    })?,
                    hash: blake3::Hash::from_hex(hash)
                        .map_err(|err| internal(&format!("the hash of {path}"), err))?,
                    size: e.size,
                }),
                _ => None,
            };
            w.put(&node, source).map_err(|err| {
                if sfs::is_mismatch(&err) {
                    if let Some(key) = e.key() {
                        store.mark_bad(&key, false);
                    }
                    ServiceError::Refused(format!(
                        "snapshot '{name}' is damaged: the stored content of {path} does not match its hash"
                    ))
                } else {
                    internal(&format!("restoring {path}"), err)
                }
            })?;
            progress.advance(node.size);
        }
        w.finish()
            .map_err(|e| internal("restoring directory modes", e))
    })();
    if let Err(e) = written {
        return Err(undo_restore(root, m, &canon, created, e));
    }
    Ok(RestoreResult {
        snapshot: name.to_string(),
        sandbox_id: None,
        workdir: Some(canon.display().to_string()),
        files: m.info.files,
        bytes: m.info.bytes,
        duration_ms: 0,
    })
}

/// Remove what a failed restore wrote into `root` (it was empty): the top-level
/// names of the manifest, then `root` itself when the restore created it. The
/// error gets the outcome appended: nothing left, or what is.
fn undo_restore(
    root: OwnedFd,
    m: &Manifest,
    dir: &Path,
    created: bool,
    e: ServiceError,
) -> ServiceError {
    let mut tops: BTreeSet<Vec<u8>> = BTreeSet::new();
    for entry in &m.entries {
        if let Ok(p) = entry.path.to_vec()
            && let Some(top) = p.split(|&b| b == b'/').next()
            && !top.is_empty()
        {
            tops.insert(top.to_vec());
        }
    }
    // Directories were made 0700 and get their modes only at the end; a removal
    // makes read-only ones writable through their fd.
    let mut left = None;
    for t in &tops {
        if let Err(err) = sfs::remove_tree_at(root.as_fd(), t) {
            left.get_or_insert(format!(
                "{} ({err})",
                dir.join(OsStr::from_bytes(t)).display()
            ));
        }
    }
    drop(root);
    if left.is_none()
        && created
        && let Err(err) = std::fs::remove_dir(dir)
    {
        left = Some(format!("{} ({err})", dir.display()));
    }
    let outcome = match left {
        None if created => format!("nothing was restored ({} was removed)", dir.display()),
        None => format!("nothing was restored ({} is empty again)", dir.display()),
        Some(what) => format!("the partial restore could not all be removed: {what} is left"),
    };
    let with = |msg: &str| format!("{msg}; {outcome}");
    match e {
        ServiceError::Refused(msg) => ServiceError::Refused(with(&msg)),
        ServiceError::Internal(msg) => ServiceError::Internal(with(&msg)),
        ServiceError::NotFound(msg) => ServiceError::NotFound(with(&msg)),
        ServiceError::InvalidArgument { field, message } => ServiceError::InvalidArgument {
            field,
            message: with(&message),
        },
        other => other,
    }
}

/// The content of a small file's object, only when it matches its hash (a
/// damaged object shows no diff).
fn read_object(store: &Store, e: &Entry, max: u64) -> Option<Vec<u8>> {
    let key = e.key()?;
    let fd = open_beneath(store.dir.as_fd(), &object_rel(&key), OFlags::RDONLY).ok()?;
    let data = sfs::read_prefix(fd, max as usize + 1).ok()?;
    (data.len() as u64 == e.size && blake3::hash(&data).to_hex().as_str() == e.hash.as_deref()?)
        .then_some(data)
}

pub(crate) fn diff(home: &Path, a: &str, b: &str) -> Result<SnapshotDiff, ServiceError> {
    let store = Store::open(home, false)?;
    let ma = store.read_manifest(a)?;
    let mb = store.read_manifest(b)?;
    let (ea, eb) = (node_key_map(&ma), node_key_map(&mb));
    let mut d = SnapshotDiff {
        from: a.to_string(),
        to: b.to_string(),
        added: Vec::new(),
        removed: Vec::new(),
        changed: Vec::new(),
        diffs: Vec::new(),
    };
    for (p, x) in &ea {
        match eb.get(p) {
            None => d.removed.push(lossy(p)),
            Some(y) => {
                if x.kind != y.kind || x.mode != y.mode || x.hash != y.hash || x.target != y.target
                {
                    d.changed.push(lossy(p));
                    if x.kind == Kind::File
                        && y.kind == Kind::File
                        && x.hash != y.hash
                        && x.size <= MAX_DIFF_BYTES
                        && y.size <= MAX_DIFF_BYTES
                        && let (Some(ca), Some(cb)) = (
                            read_object(&store, x, MAX_DIFF_BYTES),
                            read_object(&store, y, MAX_DIFF_BYTES),
                        )
                        && let (Ok(ta), Ok(tb)) =
                            (std::str::from_utf8(&ca), std::str::from_utf8(&cb))
                        && !ta.contains('\0')
                        && !tb.contains('\0')
                    {
                        let path = lossy(p);
                        let unified = similar::TextDiff::from_lines(ta, tb)
                            .unified_diff()
                            .context_radius(3)
                            .header(&format!("{a}/{path}"), &format!("{b}/{path}"))
                            .to_string();
                        d.diffs.push(FileDiff { path, unified });
                    }
                }
            }
        }
    }
    for p in eb.keys() {
        if !ea.contains_key(p) {
            d.added.push(lossy(p));
        }
    }
    Ok(d)
}

pub(crate) fn verify(home: &Path) -> Result<VerifyReport, ServiceError> {
    let store = Store::open(home, false)?;
    let mut r = VerifyReport {
        ok: true,
        snapshots: 0,
        objects_checked: 0,
        bytes_checked: 0,
        unreferenced_objects: 0,
        problems: Vec::new(),
    };
    // Every object a snapshot names: what it must be, and the first file using it
    // (named in a problem).
    struct Wanted {
        hash: String,
        mode: u32,
        mtime: (i64, u32),
        size: u64,
        user: String,
    }
    let mut wanted: BTreeMap<String, Wanted> = BTreeMap::new();
    for (name, m) in store.manifests() {
        r.snapshots += 1;
        // The manifest's structure (paths, duplicates, hashes) is checked on load.
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                r.problems
                    .push(format!("snapshot '{name}' is damaged: {e}"));
                continue;
            }
        };
        for e in &m.entries {
            if let (Some(k), Some(h)) = (e.key(), &e.hash) {
                wanted.entry(k).or_insert_with(|| Wanted {
                    hash: h.clone(),
                    mode: e.mode & 0o7777,
                    mtime: e.mtime,
                    size: e.size,
                    user: format!(
                        "{} in snapshot '{name}'",
                        e.path.to_vec().map(|p| lossy(&p)).unwrap_or_default()
                    ),
                });
            }
        }
    }
    for (key, w) in &wanted {
        let rel = object_rel(key);
        let user = &w.user;
        let fd = match open_beneath(store.dir.as_fd(), &rel, OFlags::RDONLY) {
            Ok(f) => f,
            Err(e) => {
                r.problems
                    .push(format!("object {key} ({user}) is missing: {e}"));
                store.mark_bad(key, true);
                continue;
            }
        };
        let st = rfs::fstat(&fd).map_err(|e| internal("stat", io_err(e)))?;
        if st.st_mode & 0o7777 != w.mode || sfs::mtime_of(&st) != w.mtime {
            r.problems
                .push(format!("object {key} ({user}) has a changed mode or mtime"));
        }
        match sfs::hash_fd(&fd, &mut |_| {}) {
            Ok((h, n)) => {
                r.objects_checked += 1;
                r.bytes_checked += n;
                if h.to_hex().as_str() != w.hash || n != w.size {
                    r.problems.push(format!(
                        "object {key} ({user}) is corrupt (its content changed)"
                    ));
                    store.mark_bad(key, false);
                } else {
                    store.clear_bad(key);
                }
            }
            Err(e) => r
                .problems
                .push(format!("object {key} ({user}) cannot be read: {e}")),
        }
    }
    if let Ok(rd) = std::fs::read_dir(store.root.join("objects")) {
        for d in rd.flatten() {
            for o in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                if !wanted.contains_key(o.file_name().to_string_lossy().as_ref()) {
                    r.unreferenced_objects += 1;
                }
            }
        }
    }
    r.ok = r.problems.is_empty();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "26e70f0a438787ee143979a9b519a4a330ea21e0a23d31fcb47051e70b8fe5ad";

    fn manifest(entries: serde_json::Value) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "format": FORMAT,
            "info": {
                "name": "s", "id": "snap-1", "created_at": "", "source": "",
                "profile": null, "parent": null, "files": 0, "dirs": 0,
                "symlinks": 0, "bytes": 0, "skipped": 0
            },
            "entries": entries,
        }))
        .unwrap()
    }

    fn dir(p: &str) -> serde_json::Value {
        serde_json::json!({"path": p, "kind": "dir", "mode": 0o755, "mtime": [0, 0]})
    }

    fn file(p: &str, hash: &str) -> serde_json::Value {
        serde_json::json!({"path": p, "kind": "file", "mode": 0o644, "mtime": [0, 0],
            "size": 1, "hash": hash})
    }

    #[test]
    fn a_sound_manifest_passes_its_check() {
        let m = manifest(serde_json::json!([dir(""), dir("d"), file("d/f", H)]));
        assert_eq!(m.check("s"), Ok(()));
    }

    #[test]
    fn damaged_manifests_are_refused_with_a_reason_and_no_panic() {
        let cases = [
            (
                serde_json::json!([dir(""), file("f", "é")]),
                "no valid content hash",
            ),
            (
                serde_json::json!([dir(""), file("f", "../../lock")]),
                "no valid content hash",
            ),
            (
                serde_json::json!([dir(""), file("f", &H[..10])]),
                "no valid content hash",
            ),
            (
                serde_json::json!([dir(""), file("f", H), file("f", H)]),
                "twice",
            ),
            (
                serde_json::json!([dir(""), file("d/f", H), dir("d")]),
                "before its directory",
            ),
            (
                serde_json::json!([dir(""), file("f", H), file("f/g", H)]),
                "before its directory",
            ),
            (serde_json::json!([dir(""), file("../x", H)]), "bad entry"),
            (serde_json::json!([dir(""), dir("a/./b")]), "bad entry"),
            (serde_json::json!([file("", H)]), "root is not a directory"),
            (
                serde_json::json!([dir(""), {"path": "l", "kind": "symlink", "mode": 0o777,
                    "mtime": [0, 0]}]),
                "inconsistently",
            ),
        ];
        for (entries, want) in cases {
            let m = manifest(entries.clone());
            let why = m.check("s").expect_err(&entries.to_string());
            assert!(why.contains(want), "{entries}: {why}");
        }
        let m = manifest(serde_json::json!([dir("")]));
        assert!(m.check("other").unwrap_err().contains("another snapshot"));
        let mut m = manifest(serde_json::json!([dir("")]));
        m.format = 99;
        assert!(m.check("s").unwrap_err().contains("format 99"));
        m.format = FORMAT;
        m.info.id = "../trees".into();
        assert!(m.check("s").unwrap_err().contains("no valid id"));
    }
}
