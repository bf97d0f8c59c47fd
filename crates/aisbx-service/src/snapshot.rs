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
use crate::sandbox::check_name;
use crate::service::new_id;
use crate::snapshot_fs::{
    self as sfs, Kind, Layers, Node, Source, Writer, io_err, open_beneath, open_dir,
};

/// Manifest format version.
const FORMAT: u32 = 1;
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SnapSource {
    Sandbox(String),
    Workdir(PathBuf),
}

/// Where a snapshot is restored to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

fn internal(what: &str, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(format!("{what}: {e}"))
}

/// The owner of everything in the store and of copy-on-write sandboxes: as root,
/// the unprivileged id sandboxes map to (their overlay must read it as its owner).
pub(crate) fn store_owner() -> Option<(u32, u32)> {
    // SAFETY: getter.
    if unsafe { libc::geteuid() } == 0 {
        Some((aisbx_jail::DEFAULT_HOST_ID, aisbx_jail::DEFAULT_HOST_ID))
    } else {
        None
    }
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
            for d in ["objects", "manifests", "trees", "tmp"] {
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
            })
        })();
        made.map_err(|e| {
            internal(
                &format!("cannot open the snapshot store {}", root.display()),
                e,
            )
        })
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

    fn read_manifest(&self, name: &str) -> Result<Manifest, ServiceError> {
        check_name(name).map_err(|_| {
            ServiceError::invalid("snapshot", format!("'{name}' is not a valid snapshot name"))
        })?;
        let fd = open_beneath(
            self.dir.as_fd(),
            format!("manifests/{name}.json").as_bytes(),
            OFlags::RDONLY,
        )
        .map_err(|_| {
            ServiceError::invalid(
                "snapshot",
                format!("no snapshot named '{name}': list them with `aisbx snap list`"),
            )
        })?;
        let data = sfs::read_prefix(fd, 1 << 30).map_err(|e| internal("reading a manifest", e))?;
        let m: Manifest = serde_json::from_slice(&data).map_err(|e| {
            ServiceError::Internal(format!("the manifest of snapshot '{name}' is damaged: {e}"))
        })?;
        if m.format != FORMAT || m.info.name != name {
            return Err(ServiceError::Internal(format!(
                "the manifest of snapshot '{name}' is not one this aisbx understands"
            )));
        }
        Ok(m)
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

    fn manifests(&self) -> Vec<(String, Result<Manifest, ServiceError>)> {
        self.manifest_names()
            .into_iter()
            .map(|n| {
                let m = self.read_manifest(&n);
                (n, m)
            })
            .collect()
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
        let owner = store_owner();
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
        let mut w = Writer::new(troot.as_fd(), store_owner(), false);
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
    /// exclusively). `tree_users` are the trees sandboxes still use.
    fn collect_garbage(&self, tree_users: &HashSet<String>) -> Result<(u64, u64), ServiceError> {
        let mut keys: HashSet<String> = HashSet::new();
        let mut ids: HashSet<String> = tree_users.clone();
        for (name, m) in self.manifests() {
            let m = m.map_err(|e| {
                ServiceError::Internal(format!(
                    "not freeing anything: snapshot '{name}' cannot be read ({e})"
                ))
            })?;
            ids.insert(m.info.id.clone());
            keys.extend(m.entries.iter().filter_map(Entry::key));
        }
        let mut freed_objects = 0u64;
        let mut freed_bytes = 0u64;
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
                        freed_objects += 1;
                        // The space an object takes, holes excluded.
                        freed_bytes += (st.st_blocks as u64 * 512).min(st.st_size as u64);
                    }
                }
            }
        }
        if let Ok(trees) = self.sub("trees") {
            for id in names_in(trees.as_fd()) {
                if !ids.contains(String::from_utf8_lossy(&id).as_ref()) {
                    let _ = sfs::remove_tree_at(trees.as_fd(), &id);
                }
            }
        }
        self.clean_tmp();
        Ok((freed_objects, freed_bytes))
    }
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
    svc: &crate::Service,
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
    let mut info = SnapshotInfo {
        name: name.to_string(),
        id: new_id("snap"),
        created_at: rfc3339_now(),
        source: String::new(),
        profile: None,
        parent: None,
        files: 0,
        dirs: 0,
        symlinks: 0,
        bytes: 0,
        skipped: 0,
        shared_bytes: None,
    };
    let layers = match source {
        SnapSource::Sandbox(id) => {
            let sb = crate::sandbox::load(svc, id)?;
            info.source = format!("sandbox:{id}");
            info.profile = Some(sb.profile.clone());
            info.parent = sb.from_snapshot.clone();
            crate::sandbox::layers(&sb)?
        }
        SnapSource::Workdir(dir) => {
            let canon = std::fs::canonicalize(dir)
                .map_err(|e| ServiceError::invalid("workdir", format!("{}: {e}", dir.display())))?;
            let home = std::fs::canonicalize(svc.home()).unwrap_or_else(|_| svc.home().into());
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
    let store = Store::open(svc.home(), true)?;
    store.create(info, &layers, progress)
}

pub(crate) fn list(
    svc: &crate::Service,
    with_sharing: bool,
) -> Result<Vec<SnapshotInfo>, ServiceError> {
    let store = Store::open(svc.home(), false)?;
    let ms: Vec<Manifest> = store
        .manifests()
        .into_iter()
        .filter_map(|(_, m)| m.ok())
        .collect();
    let mut out = Vec::new();
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
        out = ms.into_iter().map(|m| m.info).collect();
    }
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
    Ok(out)
}

pub(crate) fn remove(svc: &crate::Service, name: &str) -> Result<(u64, u64), ServiceError> {
    let store = Store::open(svc.home(), true)?;
    store.read_manifest(name)?;
    std::fs::remove_file(store.manifest_path(name))
        .map_err(|e| internal(&format!("cannot remove snapshot '{name}'"), e))?;
    if let Ok(fd) = store.sub("manifests") {
        let _ = rfs::fsync(&fd);
    }
    store.collect_garbage(&crate::sandbox::trees_in_use(svc))
}

/// Free what sandboxes no longer use (after a sandbox is removed).
pub(crate) fn collect_garbage(svc: &crate::Service) -> Result<(), ServiceError> {
    let store = Store::open(svc.home(), true)?;
    store
        .collect_garbage(&crate::sandbox::trees_in_use(svc))
        .map(|_| ())
}

/// Materialize a snapshot's tree for a new sandbox. Runs `with` while the store is
/// locked, so that the tree cannot be collected before the sandbox records it.
pub(crate) fn with_tree<T>(
    svc: &crate::Service,
    name: &str,
    with: impl FnOnce(&SnapshotInfo, &Path) -> Result<T, ServiceError>,
) -> Result<T, ServiceError> {
    let store = Store::open(svc.home(), true)?;
    let m = store.read_manifest(name)?;
    let tree = store.ensure_tree(&m)?;
    with(&m.info, &tree)
}

/// Copy a snapshot into a new (missing or empty) host directory.
pub(crate) fn restore_to_dir(
    svc: &crate::Service,
    name: &str,
    dir: &Path,
    progress: &mut dyn Progress,
) -> Result<RestoreResult, ServiceError> {
    let start = std::time::Instant::now();
    let store = Store::open(svc.home(), false)?;
    let m = store.read_manifest(name)?;
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
        Err(_) => std::fs::create_dir(dir).map_err(|e| {
            ServiceError::invalid("workdir", format!("cannot create {}: {e}", dir.display()))
        })?,
    }
    let canon = std::fs::canonicalize(dir)
        .map_err(|e| ServiceError::invalid("workdir", format!("{}: {e}", dir.display())))?;
    let home = std::fs::canonicalize(svc.home()).unwrap_or_else(|_| svc.home().into());
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
    let mut w = Writer::new(root.as_fd(), owner, false);
    for e in &m.entries {
        let node = e
            .node()
            .map_err(|err| internal("a damaged manifest entry", err))?;
        let source = match e.key() {
            Some(key) => Some(Source::Copy(
                open_beneath(
                    objects.as_fd(),
                    &object_rel(&key)["objects/".len()..],
                    OFlags::RDONLY,
                )
                .map_err(|err| internal(&format!("object of {}", lossy(&node.path)), err))?,
            )),
            None => None,
        };
        w.put(&node, source)
            .map_err(|err| internal(&format!("restoring {}", lossy(&node.path)), err))?;
        progress.advance(node.size);
    }
    w.finish()
        .map_err(|e| internal("restoring directory modes", e))?;
    progress.finish();
    Ok(RestoreResult {
        snapshot: name.to_string(),
        sandbox_id: None,
        workdir: Some(canon.display().to_string()),
        files: m.info.files,
        bytes: m.info.bytes,
        duration_ms: start.elapsed().as_millis() as u64,
    })
}

fn read_object(store: &Store, key: &str, max: u64) -> Option<Vec<u8>> {
    let fd = open_beneath(store.dir.as_fd(), &object_rel(key), OFlags::RDONLY).ok()?;
    sfs::read_prefix(fd, max as usize).ok()
}

pub(crate) fn diff(svc: &crate::Service, a: &str, b: &str) -> Result<SnapshotDiff, ServiceError> {
    let store = Store::open(svc.home(), false)?;
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
                        && let (Some(ka), Some(kb)) = (x.key(), y.key())
                        && let (Some(ca), Some(cb)) = (
                            read_object(&store, &ka, MAX_DIFF_BYTES),
                            read_object(&store, &kb, MAX_DIFF_BYTES),
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

pub(crate) fn verify(svc: &crate::Service) -> Result<VerifyReport, ServiceError> {
    let store = Store::open(svc.home(), false)?;
    let mut r = VerifyReport {
        ok: true,
        snapshots: 0,
        objects_checked: 0,
        bytes_checked: 0,
        unreferenced_objects: 0,
        problems: Vec::new(),
    };
    let mut wanted: BTreeMap<String, (String, u32, (i64, u32), u64)> = BTreeMap::new();
    for (name, m) in store.manifests() {
        r.snapshots += 1;
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                r.problems.push(format!("snapshot '{name}': {e}"));
                continue;
            }
        };
        let mut seen = BTreeSet::new();
        for e in &m.entries {
            match e.node() {
                Ok(n) => {
                    if !seen.insert(n.path.clone()) {
                        r.problems.push(format!(
                            "snapshot '{name}': {} is listed twice",
                            lossy(&n.path)
                        ));
                    }
                }
                Err(err) => r.problems.push(format!("snapshot '{name}': {err}")),
            }
            if let (Some(k), Some(h)) = (e.key(), &e.hash) {
                wanted.insert(k, (h.clone(), e.mode & 0o7777, e.mtime, e.size));
            }
        }
    }
    for (key, (hash, mode, mtime, size)) in &wanted {
        let rel = object_rel(key);
        let fd = match open_beneath(store.dir.as_fd(), &rel, OFlags::RDONLY) {
            Ok(f) => f,
            Err(e) => {
                r.problems.push(format!("object {key} is missing: {e}"));
                continue;
            }
        };
        let st = rfs::fstat(&fd).map_err(|e| internal("stat", io_err(e)))?;
        if st.st_mode & 0o7777 != *mode || sfs::mtime_of(&st) != *mtime {
            r.problems
                .push(format!("object {key} has a changed mode or mtime"));
        }
        match sfs::hash_fd(&fd, &mut |_| {}) {
            Ok((h, n)) => {
                r.objects_checked += 1;
                r.bytes_checked += n;
                if h.to_hex().as_str() != hash || n != *size {
                    r.problems
                        .push(format!("object {key} is corrupt (its content changed)"));
                }
            }
            Err(e) => r.problems.push(format!("object {key} cannot be read: {e}")),
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
