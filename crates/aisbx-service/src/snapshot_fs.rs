//! File trees read and written with fd-relative system calls only.
//!
//! Everything here resolves paths beneath an open directory with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`) or works on one
//! name inside an open directory, so a symlink (or `..`) planted by a sandboxed
//! program can never lead a read or a write outside the tree it belongs to.
//! Symlinks are read with `readlinkat` and recreated as links, never followed.
//!
//! A tree may be one directory, or the layers of a copy-on-write sandbox (its
//! overlay upper directory first, then its read-only lower tree): [`Layers`] merges
//! them the way overlayfs does (whiteouts hide, opaque directories hide the layers
//! below), so a stopped sandbox's workspace can be read exactly as it sees it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps,
};
use serde::{Deserialize, Serialize};

/// At most this many entries in one tree (bounds memory).
pub const MAX_ENTRIES: usize = 2_000_000;

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

/// One entry of a tree. `path` is relative, `/`-separated, any bytes but `/` and
/// NUL in a name; the empty path is the tree's root directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Modification time: seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    pub size: u64,
    /// A symlink's target (bytes, never resolved).
    pub target: Vec<u8>,
    /// Which layer the entry comes from (0 is the top).
    pub layer: usize,
}

pub fn io_err(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// `a/b` + `c` → `a/b/c`; `` + `c` → `c`.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The parent path and the last name of a non-empty relative path.
pub fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Is this a relative path whose every name is a real name (no `.`, `..`, empty
/// names or NUL)? The empty path (the root) is valid.
pub fn valid_rel(path: &[u8]) -> bool {
    path.is_empty()
        || (!path.contains(&0)
            && path
                .split(|&b| b == b'/')
                .all(|c| !c.is_empty() && c != b"." && c != b".."))
}

/// Normalise a user's relative path: drop `.` and empty names; refuse `..`, NUL and
/// absolute paths (`/workspace/...` is accepted as the workspace itself).
pub fn normalize_rel(p: &str) -> Result<Vec<u8>, String> {
    if p.contains('\0') {
        return Err(format!("{p:?} contains a NUL byte"));
    }
    let rest = if let Some(r) = p.strip_prefix("/workspace") {
        if !(r.is_empty() || r.starts_with('/')) {
            return Err(format!("{p:?} is outside /workspace"));
        }
        r
    } else if p.starts_with('/') {
        return Err(format!(
            "{p:?} is absolute; give a path relative to /workspace"
        ));
    } else {
        p
    };
    let mut out: Vec<u8> = Vec::new();
    for c in rest.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(format!("{p:?} leaves the workspace ('..')")),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c.as_bytes());
            }
        }
    }
    Ok(out)
}

/// Open `rel` beneath `root` without following any symlink or leaving `root`.
pub fn open_beneath(root: BorrowedFd<'_>, rel: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
    let path: &[u8] = if rel.is_empty() { b"." } else { rel };
    rfs::openat2(
        root,
        os(path),
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )
    .map_err(io_err)
}

pub fn open_dir(root: BorrowedFd<'_>, rel: &[u8]) -> io::Result<OwnedFd> {
    open_beneath(root, rel, OFlags::RDONLY | OFlags::DIRECTORY)
}

/// A directory of the host, opened by path (the caller's own choice of path).
pub fn open_host_dir(p: &std::path::Path) -> io::Result<OwnedFd> {
    rfs::open(
        p,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err)
}

/// Open a regular file beneath `root` for reading; anything else is refused.
pub fn open_file(root: BorrowedFd<'_>, rel: &[u8]) -> io::Result<OwnedFd> {
    // O_NONBLOCK: a FIFO swapped in after the scan must not block us.
    let fd = open_beneath(root, rel, OFlags::RDONLY | OFlags::NONBLOCK)?;
    let st = rfs::fstat(&fd).map_err(io_err)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::other(format!(
            "{} is no longer a regular file",
            String::from_utf8_lossy(rel)
        )));
    }
    Ok(fd)
}

/// `lstat` of `rel` beneath `root`, resolving its parents without symlinks.
pub fn stat_beneath(root: BorrowedFd<'_>, rel: &[u8]) -> io::Result<rfs::Stat> {
    if rel.is_empty() {
        return rfs::fstat(root).map_err(io_err);
    }
    let (dir, name) = split(rel);
    let dfd = open_dir(root, dir)?;
    rfs::statat(&dfd, os(name), AtFlags::SYMLINK_NOFOLLOW).map_err(io_err)
}

#[allow(clippy::unnecessary_cast)] // the field types differ between architectures
pub fn mtime_of(st: &rfs::Stat) -> (i64, u32) {
    (st.st_mtime as i64, st.st_mtime_nsec as u32)
}

fn kind_of(st: &rfs::Stat) -> Option<Kind> {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => Some(Kind::Dir),
        FileType::RegularFile => Some(Kind::File),
        FileType::Symlink => Some(Kind::Symlink),
        _ => None,
    }
}

fn node_from(
    dir: BorrowedFd<'_>,
    name: &[u8],
    path: Vec<u8>,
    st: &rfs::Stat,
    layer: usize,
) -> io::Result<Option<Node>> {
    let Some(kind) = kind_of(st) else {
        return Ok(None);
    };
    let target = if kind == Kind::Symlink {
        rfs::readlinkat(dir, os(name), Vec::new())
            .map_err(io_err)?
            .into_bytes()
    } else {
        Vec::new()
    };
    Ok(Some(Node {
        path,
        kind,
        mode: st.st_mode & 0o7777,
        mtime: mtime_of(st),
        size: if kind == Kind::File {
            st.st_size as u64
        } else {
            0
        },
        target,
        layer,
    }))
}

/// Merged children of a directory: name → (entry, the layers a directory spans).
type Children = BTreeMap<Vec<u8>, (Node, Vec<usize>)>;

/// A tree to read: one directory, or overlay layers (top first).
pub struct Layers {
    pub fds: Vec<OwnedFd>,
}

impl Layers {
    pub fn single(fd: OwnedFd) -> Self {
        Layers { fds: vec![fd] }
    }

    fn is_overlay(&self) -> bool {
        self.fds.len() > 1
    }

    pub fn fd(&self, layer: usize) -> BorrowedFd<'_> {
        self.fds[layer].as_fd()
    }

    /// Is the directory `fd` (in an upper layer) marked opaque?
    fn opaque(&self, layer: usize, fd: BorrowedFd<'_>) -> bool {
        if !self.is_overlay() || layer + 1 >= self.fds.len() {
            return false;
        }
        let mut buf = [0u8; 4];
        for name in ["user.overlay.opaque", "trusted.overlay.opaque"] {
            if let Ok(n) = rfs::fgetxattr(fd, name, &mut buf[..])
                && buf[..n] == *b"y"
            {
                return true;
            }
        }
        false
    }

    /// The merged children of directory `dir`, present as a directory in the
    /// layers `active` (top first): name → (node, layers the child directory spans).
    fn children(
        &self,
        dir: &[u8],
        active: &[usize],
        warn: &mut dyn FnMut(String),
    ) -> io::Result<Children> {
        let mut out: Children = BTreeMap::new();
        let mut hidden: BTreeSet<Vec<u8>> = BTreeSet::new();
        for (i, &layer) in active.iter().enumerate() {
            let dfd = match open_dir(self.fd(layer), dir) {
                Ok(f) => f,
                Err(e) if i > 0 => {
                    // A lower layer that lacks the directory contributes nothing.
                    let _ = e;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let opaque = self.opaque(layer, dfd.as_fd());
            let rd = rfs::Dir::read_from(&dfd).map_err(io_err)?;
            for ent in rd {
                let ent = ent.map_err(io_err)?;
                let name = ent.file_name().to_bytes().to_vec();
                if name == b"." || name == b".." {
                    continue;
                }
                if hidden.contains(&name) {
                    continue;
                }
                if out.contains_key(&name) {
                    continue; // a higher layer has it
                }
                let st = rfs::statat(&dfd, os(&name), AtFlags::SYMLINK_NOFOLLOW).map_err(io_err)?;
                let path = join(dir, &name);
                if self.is_overlay()
                    && layer + 1 < self.fds.len()
                    && FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice
                    && st.st_rdev == 0
                {
                    hidden.insert(name); // a whiteout: deleted in the sandbox
                    continue;
                }
                match node_from(dfd.as_fd(), &name, path.clone(), &st, layer)? {
                    Some(node) => {
                        let spans = if node.kind == Kind::Dir {
                            vec![layer]
                        } else {
                            Vec::new()
                        };
                        out.insert(name, (node, spans));
                    }
                    None => {
                        warn(format!(
                            "skipped {} (a device, socket or FIFO)",
                            String::from_utf8_lossy(&path)
                        ));
                        hidden.insert(name);
                    }
                }
            }
            if opaque {
                break;
            }
        }
        // A directory spans a lower layer only if that layer has a directory there
        // and the directory is not opaque in the layers above it; a non-directory
        // below ends the merge.
        for (node, spans) in out.values_mut() {
            if node.kind != Kind::Dir {
                continue;
            }
            let top = spans[0];
            let start = active
                .iter()
                .position(|&l| l == top)
                .unwrap_or(active.len());
            for &layer in active.iter().skip(start + 1) {
                let above = spans[spans.len() - 1];
                let opaque = match open_dir(self.fd(above), &node.path) {
                    Ok(fd) => self.opaque(above, fd.as_fd()),
                    Err(_) => true,
                };
                if opaque {
                    break;
                }
                match stat_beneath(self.fd(layer), &node.path) {
                    Ok(st) if kind_of(&st) == Some(Kind::Dir) => spans.push(layer),
                    Ok(_) => break,
                    Err(_) => {}
                }
            }
        }
        Ok(out)
    }

    /// The root node of the merged tree.
    fn root(&self) -> io::Result<(Node, Vec<usize>)> {
        let st = rfs::fstat(self.fd(0)).map_err(io_err)?;
        let node = Node {
            path: Vec::new(),
            kind: Kind::Dir,
            mode: st.st_mode & 0o7777,
            mtime: mtime_of(&st),
            size: 0,
            target: Vec::new(),
            layer: 0,
        };
        let mut spans = vec![0];
        if self.is_overlay() && !self.opaque(0, self.fd(0)) {
            spans.extend(1..self.fds.len());
        }
        Ok((node, spans))
    }

    /// Look one path up in the merged tree. `None` when it does not exist.
    pub fn lookup(
        &self,
        rel: &[u8],
        warn: &mut dyn FnMut(String),
    ) -> io::Result<Option<(Node, Vec<usize>)>> {
        let mut cur = self.root()?;
        if rel.is_empty() {
            return Ok(Some(cur));
        }
        for name in rel.split(|&b| b == b'/') {
            if cur.0.kind != Kind::Dir {
                return Ok(None);
            }
            let mut kids = self.children(&cur.0.path, &cur.1, warn)?;
            match kids.remove(name) {
                Some(k) => cur = k,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// Every entry at and below `rel` (parents before children, names sorted).
    pub fn scan(&self, rel: &[u8], warn: &mut dyn FnMut(String)) -> io::Result<Vec<Node>> {
        let Some(start) = self.lookup(rel, warn)? else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not exist", String::from_utf8_lossy(rel)),
            ));
        };
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some((node, spans)) = stack.pop() {
            let is_dir = node.kind == Kind::Dir;
            let path = node.path.clone();
            out.push(node);
            if out.len() > MAX_ENTRIES {
                return Err(io::Error::other(format!("more than {MAX_ENTRIES} entries")));
            }
            if is_dir {
                let kids = self.children(&path, &spans, warn)?;
                stack.extend(kids.into_values().rev());
            }
        }
        Ok(out)
    }
}

/// Read at most `max` bytes of a file.
pub fn read_prefix(fd: OwnedFd, max: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    std::fs::File::from(fd)
        .take(max as u64)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// BLAKE3 of a file's content and its length.
pub fn hash_fd(fd: &OwnedFd, progress: &mut dyn FnMut(u64)) -> io::Result<(blake3::Hash, u64)> {
    let mut f = std::fs::File::from(fd.try_clone()?);
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
        progress(r as u64);
    }
    Ok((h.finalize(), n))
}

/// Copy `src` into `dst` while hashing what was copied.
pub fn copy_hash(src: &OwnedFd, dst: &OwnedFd) -> io::Result<(blake3::Hash, u64)> {
    let mut r = std::fs::File::from(src.try_clone()?);
    let mut w = std::fs::File::from(dst.try_clone()?);
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = r.read(&mut buf)?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        w.write_all(&buf[..got])?;
        n += got as u64;
    }
    Ok((h.finalize(), n))
}

/// Copy file data: a reflink where the file system offers it, else an in-kernel
/// copy, else read and write.
pub fn copy_data(src: &OwnedFd, dst: &OwnedFd) -> io::Result<()> {
    if rfs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let len = rfs::fstat(src).map_err(io_err)?.st_size as u64;
    let mut done = 0u64;
    let mut kernel_ok = true;
    while done < len {
        match rfs::copy_file_range(src, None, dst, None, (len - done).min(1 << 30) as usize) {
            Ok(0) => break,
            Ok(n) => done += n as u64,
            Err(_) if done == 0 => {
                kernel_ok = false;
                break;
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    if kernel_ok {
        return Ok(());
    }
    let mut r = std::fs::File::from(src.try_clone()?);
    let mut w = std::fs::File::from(dst.try_clone()?);
    io::copy(&mut r, &mut w).map(|_| ())
}

pub fn timestamps(mtime: (i64, u32)) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.0,
        tv_nsec: mtime.1 as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Where a written file's data comes from.
pub enum Source<'a> {
    /// Hard-link this name of directory `dir` (an object of the snapshot store that
    /// already has the file's mode, mtime and owner). Falls back to a copy when the
    /// link count is exhausted.
    Link { dir: BorrowedFd<'a>, name: Vec<u8> },
    /// Copy this open file.
    Copy(OwnedFd),
}

/// Writes a tree beneath an open directory, creating every entry fd-relative.
pub struct Writer<'a> {
    pub root: BorrowedFd<'a>,
    /// Owner of everything written (None: the caller's).
    pub owner: Option<(u32, u32)>,
    /// Replace existing files (never through a symlink); else refuse them.
    pub overwrite: bool,
    parent: Option<(Vec<u8>, OwnedFd)>,
    dirs: Vec<Node>,
}

impl<'a> Writer<'a> {
    pub fn new(root: BorrowedFd<'a>, owner: Option<(u32, u32)>, overwrite: bool) -> Self {
        Writer {
            root,
            owner,
            overwrite,
            parent: None,
            dirs: Vec::new(),
        }
    }

    fn parent_fd(&mut self, dir: &[u8]) -> io::Result<OwnedFd> {
        if let Some((p, fd)) = &self.parent
            && p == dir
        {
            return fd.try_clone();
        }
        let fd = open_dir(self.root, dir)?;
        let out = fd.try_clone()?;
        self.parent = Some((dir.to_vec(), fd));
        Ok(out)
    }
}

fn chown_at(owner: Option<(u32, u32)>, dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    {
        if let Some((u, g)) = owner {
            rfs::chownat(
                dir,
                os(name),
                Some(rfs::Uid::from_raw(u)),
                Some(rfs::Gid::from_raw(g)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(io_err)?;
        }
        Ok(())
    }
}

impl Writer<'_> {
    /// Write one entry (parents must have been written before). Directory modes and
    /// times are applied by [`Writer::finish`], after their content.
    pub fn put(&mut self, node: &Node, source: Option<Source<'_>>) -> io::Result<()> {
        if !valid_rel(&node.path) {
            return Err(io::Error::other(format!(
                "refusing the path {:?}",
                String::from_utf8_lossy(&node.path)
            )));
        }
        if node.path.is_empty() {
            self.dirs.push(node.clone());
            return Ok(());
        }
        let (dir, name) = split(&node.path);
        let (dir, name) = (dir.to_vec(), name.to_vec());
        let owner = self.owner;
        let overwrite = self.overwrite;
        let pfd_owned = self.parent_fd(&dir)?;
        let pfd = pfd_owned.as_fd();
        match node.kind {
            Kind::Dir => {
                match rfs::mkdirat(pfd, os(&name), Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::EXIST) => {
                        let st = rfs::statat(pfd, os(&name), AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(io_err)?;
                        if kind_of(&st) != Some(Kind::Dir) {
                            return Err(io::Error::other(format!(
                                "{} exists and is not a directory",
                                String::from_utf8_lossy(&node.path)
                            )));
                        }
                    }
                    Err(e) => return Err(io_err(e)),
                }
                chown_at(owner, pfd, &name)?;
                self.dirs.push(node.clone());
            }
            Kind::Symlink => {
                if overwrite {
                    let _ = rfs::unlinkat(pfd, os(&name), AtFlags::empty());
                }
                rfs::symlinkat(os(&node.target), pfd, os(&name)).map_err(io_err)?;
                chown_at(owner, pfd, &name)?;
                rfs::utimensat(
                    pfd,
                    os(&name),
                    &timestamps(node.mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(io_err)?;
            }
            Kind::File => {
                let source = source.ok_or_else(|| io::Error::other("no data for a file"))?;
                let copy_from = match source {
                    Source::Link { dir, name: obj } => {
                        match rfs::linkat(dir, os(&obj), pfd, os(&name), AtFlags::empty()) {
                            Ok(()) => return Ok(()),
                            Err(rustix::io::Errno::MLINK) => {
                                open_beneath(dir, &obj, OFlags::RDONLY)?
                            }
                            Err(e) => return Err(io_err(e)),
                        }
                    }
                    Source::Copy(fd) => fd,
                };
                let mut flags =
                    OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                flags |= if overwrite {
                    OFlags::TRUNC
                } else {
                    OFlags::EXCL
                };
                let fd = rfs::openat(pfd, os(&name), flags, Mode::from_raw_mode(0o600)).map_err(
                    |e| {
                        if e == rustix::io::Errno::LOOP {
                            io::Error::other(format!(
                                "{} is a symlink; refusing to write through it",
                                String::from_utf8_lossy(&node.path)
                            ))
                        } else {
                            io_err(e)
                        }
                    },
                )?;
                copy_data(&copy_from, &fd)?;
                if let Some((u, g)) = owner {
                    rfs::fchown(
                        &fd,
                        Some(rfs::Uid::from_raw(u)),
                        Some(rfs::Gid::from_raw(g)),
                    )
                    .map_err(io_err)?;
                }
                rfs::fchmod(&fd, Mode::from_raw_mode(node.mode)).map_err(io_err)?;
                rfs::futimens(&fd, &timestamps(node.mtime)).map_err(io_err)?;
            }
        }
        Ok(())
    }

    /// Apply directory modes and times, deepest first.
    pub fn finish(mut self) -> io::Result<()> {
        self.parent = None;
        self.dirs.sort_by(|a, b| b.path.cmp(&a.path));
        for d in &self.dirs {
            let fd = open_dir(self.root, &d.path)?;
            if let Some((u, g)) = self.owner {
                rfs::fchown(
                    &fd,
                    Some(rfs::Uid::from_raw(u)),
                    Some(rfs::Gid::from_raw(g)),
                )
                .map_err(io_err)?;
            }
            rfs::fchmod(&fd, Mode::from_raw_mode(d.mode)).map_err(io_err)?;
            rfs::futimens(&fd, &timestamps(d.mtime)).map_err(io_err)?;
        }
        Ok(())
    }
}

/// Remove a directory tree we own, even one whose directories are read-only.
pub fn remove_tree(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => return std::fs::remove_file(path),
        Ok(_) => {}
    }
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
    for e in std::fs::read_dir(path)? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            remove_tree(&e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    std::fs::remove_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(join(b"", b"a"), b"a");
        assert_eq!(join(b"a", b"b"), b"a/b");
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
        assert!(valid_rel(b"a/b"));
        assert!(!valid_rel(b"a/../b"));
        assert!(!valid_rel(b"/a"));
        assert!(!valid_rel(b"a//b"));
        assert_eq!(normalize_rel("./a//b/").unwrap(), b"a/b");
        assert_eq!(normalize_rel("/workspace/x").unwrap(), b"x");
        assert_eq!(normalize_rel("/workspace").unwrap(), b"");
        assert!(normalize_rel("/etc").is_err());
        assert!(normalize_rel("/workspacex").is_err());
        assert!(normalize_rel("a/../../b").is_err());
    }
}
