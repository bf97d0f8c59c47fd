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
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Timespec, Timestamps,
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

/// The permission bits a file or directory written on the host may carry: never
/// setuid or setgid (a sandbox's file must not run with its host owner's rights),
/// and the sticky bit only on a directory.
pub fn host_mode(kind: Kind, mode: u32) -> u32 {
    match kind {
        Kind::Dir => mode & 0o1777,
        _ => mode & 0o777,
    }
}

/// The next data extent of a file at or after `off`, below `len`: `(start, end)`,
/// found with `SEEK_DATA`/`SEEK_HOLE` so that holes are neither read nor written.
/// A file system without them reports the whole rest as data.
fn next_data(fd: BorrowedFd<'_>, off: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    if off >= len {
        return Ok(None);
    }
    let start = match rfs::seek(fd, rfs::SeekFrom::Data(off)) {
        Ok(s) => s,
        Err(rustix::io::Errno::NXIO) => return Ok(None),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
            return Ok(Some((off, len)));
        }
        Err(e) => return Err(io_err(e)),
    };
    if start >= len {
        return Ok(None);
    }
    let end = match rfs::seek(fd, rfs::SeekFrom::Hole(start)) {
        Ok(e) => e.min(len),
        Err(_) => len,
    };
    Ok(Some((start, end.max(start + 1).min(len))))
}

const CHUNK: usize = 1 << 20;

/// Feed `n` zero bytes (a hole) to the hash.
fn hash_zeros(h: &mut blake3::Hasher, zeros: &[u8], mut n: u64) {
    while n > 0 {
        let k = n.min(zeros.len() as u64) as usize;
        h.update(&zeros[..k]);
        n -= k as u64;
    }
}

/// Read `src`'s logical content (holes as zeros, without reading them): calls
/// `data(offset, bytes)` for every piece of data. Returns the BLAKE3 of the
/// content and its length; a file that shrinks meanwhile ends where it ends.
fn walk_content(
    src: &OwnedFd,
    progress: &mut dyn FnMut(u64),
    data: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<(blake3::Hash, u64)> {
    let len = rfs::fstat(src).map_err(io_err)?.st_size as u64;
    let mut h = blake3::Hasher::new();
    let zeros = vec![0u8; CHUNK];
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while let Some((start, end)) = next_data(src.as_fd(), off, len)? {
        hash_zeros(&mut h, &zeros, start - off);
        progress(start - off);
        off = start;
        while off < end {
            let want = ((end - off) as usize).min(CHUNK);
            let got = match rustix::io::pread(src, &mut buf[..want], off) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(io_err(e)),
            };
            if got == 0 {
                return Ok((h.finalize(), off)); // it shrank
            }
            h.update(&buf[..got]);
            data(off, &buf[..got])?;
            off += got as u64;
            progress(got as u64);
        }
    }
    hash_zeros(&mut h, &zeros, len - off);
    progress(len - off);
    Ok((h.finalize(), len))
}

/// BLAKE3 of a file's content and its length (holes are hashed as the zeros they
/// read as, without reading them).
pub fn hash_fd(fd: &OwnedFd, progress: &mut dyn FnMut(u64)) -> io::Result<(blake3::Hash, u64)> {
    walk_content(fd, progress, &mut |_, _| Ok(()))
}

fn pwrite_all(fd: &OwnedFd, mut data: &[u8], mut off: u64) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::pwrite(fd, data, off) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                data = &data[n..];
                off += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    Ok(())
}

/// Copy `src` into the empty file `dst` while hashing what was copied. Holes stay
/// holes: only data is written, and the length is set at the end.
pub fn copy_hash(src: &OwnedFd, dst: &OwnedFd) -> io::Result<(blake3::Hash, u64)> {
    let (h, n) = walk_content(src, &mut |_| {}, &mut |off, d| pwrite_all(dst, d, off))?;
    rfs::ftruncate(dst, n).map_err(io_err)?;
    Ok((h, n))
}

/// Copy `src[start..end]` to the same offsets of `dst`: in the kernel when it can,
/// else by reading and writing.
fn copy_range(
    src: &OwnedFd,
    dst: &OwnedFd,
    start: u64,
    end: u64,
    kernel: &mut bool,
) -> io::Result<()> {
    let mut off = start;
    while off < end && *kernel {
        let (mut i, mut o) = (off, off);
        match rfs::copy_file_range(
            src,
            Some(&mut i),
            dst,
            Some(&mut o),
            ((end - off) as usize).min(1 << 30),
        ) {
            Ok(0) => return Ok(()), // it shrank
            Ok(n) => off += n as u64,
            Err(rustix::io::Errno::INTR) => {}
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::INVAL
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP,
            ) => *kernel = false,
            Err(e) => return Err(io_err(e)),
        }
    }
    let mut buf = vec![0u8; CHUNK.min((end - off) as usize)];
    while off < end {
        let want = ((end - off) as usize).min(buf.len());
        let got = match rustix::io::pread(src, &mut buf[..want], off) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io_err(e)),
        };
        if got == 0 {
            return Ok(());
        }
        pwrite_all(dst, &buf[..got], off)?;
        off += got as u64;
    }
    Ok(())
}

/// Copy file data into the empty file `dst`: a reflink where the file system
/// offers it, else the data extents only (in the kernel where it can), so that a
/// sparse file stays sparse.
pub fn copy_data(src: &OwnedFd, dst: &OwnedFd) -> io::Result<()> {
    if rfs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let len = rfs::fstat(src).map_err(io_err)?.st_size as u64;
    let mut kernel = true;
    let mut off = 0u64;
    while let Some((start, end)) = next_data(src.as_fd(), off, len)? {
        copy_range(src, dst, start, end, &mut kernel)?;
        off = end;
    }
    rfs::ftruncate(dst, len).map_err(io_err)
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
    /// Copy this open file and check that what was written has this BLAKE3 hash
    /// and length: on a mismatch `put` fails with a [`ContentMismatch`] error.
    Checked {
        fd: OwnedFd,
        hash: blake3::Hash,
        size: u64,
    },
}

/// What [`Writer::put`] fails with when a [`Source::Checked`] file's content is not
/// what it should be (find it with [`is_mismatch`]).
#[derive(Debug)]
pub struct ContentMismatch;

impl std::fmt::Display for ContentMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the content does not match its hash")
    }
}

impl std::error::Error for ContentMismatch {}

/// Is this the error of a [`Source::Checked`] copy whose content did not match?
pub fn is_mismatch(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<ContentMismatch>())
}

/// Copy `src` into the empty file `dst` (open for reading and writing) and check
/// what landed: a reflink where the file system offers it, then the copy is
/// hashed; else the data is hashed as it is copied (holes stay holes).
pub fn copy_checked(
    src: &OwnedFd,
    dst: &OwnedFd,
    hash: &blake3::Hash,
    size: u64,
) -> io::Result<()> {
    let (h, n) = if rfs::ioctl_ficlone(dst, src).is_ok() {
        hash_fd(dst, &mut |_| {})?
    } else {
        copy_hash(src, dst)?
    };
    if h != *hash || n != size {
        return Err(io::Error::new(io::ErrorKind::InvalidData, ContentMismatch));
    }
    Ok(())
}

/// Writes a tree beneath an open directory, creating every entry fd-relative.
/// Nothing it writes is setuid or setgid ([`host_mode`]), and files keep their
/// holes.
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
                let mut expect = None;
                let copy_from = match source {
                    // An object with a setuid or setgid bit (stored by an older
                    // aisbx) is copied, so that the bits can be dropped.
                    Source::Link { dir, name: obj }
                        if node.mode == host_mode(node.kind, node.mode) =>
                    {
                        match rfs::linkat(dir, os(&obj), pfd, os(&name), AtFlags::empty()) {
                            Ok(()) => return Ok(()),
                            Err(rustix::io::Errno::MLINK) => {
                                open_beneath(dir, &obj, OFlags::RDONLY)?
                            }
                            Err(e) => return Err(io_err(e)),
                        }
                    }
                    Source::Link { dir, name: obj } => open_beneath(dir, &obj, OFlags::RDONLY)?,
                    Source::Copy(fd) => fd,
                    Source::Checked { fd, hash, size } => {
                        expect = Some((hash, size));
                        fd
                    }
                };
                // Read and write: a checked copy is read back after a reflink.
                let mut flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
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
                match &expect {
                    Some((hash, size)) => copy_checked(&copy_from, &fd, hash, *size)?,
                    None => copy_data(&copy_from, &fd)?,
                }
                if let Some((u, g)) = owner {
                    rfs::fchown(
                        &fd,
                        Some(rfs::Uid::from_raw(u)),
                        Some(rfs::Gid::from_raw(g)),
                    )
                    .map_err(io_err)?;
                }
                rfs::fchmod(&fd, Mode::from_raw_mode(host_mode(node.kind, node.mode)))
                    .map_err(io_err)?;
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
            rfs::fchmod(&fd, Mode::from_raw_mode(host_mode(d.kind, d.mode))).map_err(io_err)?;
            rfs::futimens(&fd, &timestamps(d.mtime)).map_err(io_err)?;
        }
        Ok(())
    }
}

/// Directories deeper than this below the root of a removal are moved up to the
/// root first, so that a removal holds at most this many open directories and
/// never recurses on the stack, however deep the tree.
const REMOVE_DEPTH: usize = 32;

/// Remove a directory tree, even one whose directories are read-only. `path`
/// itself is the caller's choice (state under aisbx's home); everything below it
/// is treated as hostile: see [`remove_tree_at`]. A missing `path` is success.
pub fn remove_tree(path: &std::path::Path) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} names no entry", path.display())))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let pfd = match open_host_dir(parent) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    remove_tree_at(pfd.as_fd(), name.as_bytes())
}

/// One directory being removed: its fd, its name in its parent and the names of
/// the subdirectories still to remove.
struct RmFrame {
    fd: OwnedFd,
    name: Vec<u8>,
    /// Relative to the parent of the removal, for messages.
    path: Vec<u8>,
    subdirs: Vec<Vec<u8>>,
}

fn rm_path(dir: &[u8], name: &[u8]) -> String {
    String::from_utf8_lossy(&join(dir, name)).into_owned()
}

fn top_path(stack: &[RmFrame]) -> &[u8] {
    stack.last().map(|f| f.path.as_slice()).unwrap_or(&[])
}

fn rm_err(what: &str, path: String, e: rustix::io::Errno) -> io::Error {
    let why = match e {
        rustix::io::Errno::NOENT => "it vanished during the removal".to_string(),
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
            "it was replaced by something that is not a directory".to_string()
        }
        rustix::io::Errno::ISDIR => "it was replaced by a directory".to_string(),
        rustix::io::Errno::NOTEMPTY => "entries were added during the removal".to_string(),
        e => io_err(e).to_string(),
    };
    io::Error::other(format!("cannot {what} {path}: {why}"))
}

/// Open directory `name` of `dir` for removing its entries: never through a
/// symlink, and made writable and searchable by us when the sandbox left it
/// read-only (or unreadable).
fn open_for_removal(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rfs::openat(dir, os(name), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::ACCESS) => {
            // Unreadable: chmod the directory itself through an O_PATH handle (which
            // pins the inode, so nothing can be swapped in), then reopen it.
            let p = rfs::openat(
                dir,
                os(name),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            use std::os::fd::AsRawFd;
            rfs::chmod(
                format!("/proc/self/fd/{}", p.as_raw_fd()).as_str(),
                Mode::from_raw_mode(0o700),
            )?;
            rfs::openat(&p, ".", flags, Mode::empty())?
        }
        Err(e) => return Err(e),
    };
    let st = rfs::fstat(&fd)?;
    if st.st_mode & 0o700 != 0o700 {
        // Best effort: root needs no permission, and an error shows at the unlink.
        let _ = rfs::fchmod(&fd, Mode::from_raw_mode(0o700));
    }
    Ok(fd)
}

/// Read a directory being removed, then unlink every non-directory in it (after
/// the listing, so that no entry is missed by changing the directory while it is
/// read); return the names of its subdirectories.
fn rm_entries(dir: &[u8], fd: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut subdirs = Vec::new();
    let mut others = Vec::new();
    let rd = rfs::Dir::read_from(fd).map_err(io_err)?;
    for ent in rd {
        let ent = ent.map_err(io_err)?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let ft = match ent.file_type() {
            FileType::Unknown => {
                let st = rfs::statat(fd, os(name), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| rm_err("inspect", rm_path(dir, name), e))?;
                FileType::from_raw_mode(st.st_mode)
            }
            t => t,
        };
        if ft == FileType::Directory {
            subdirs.push(name.to_vec());
        } else {
            others.push(name.to_vec());
        }
    }
    for name in others {
        // unlinkat never follows a symlink: it removes the link itself.
        rfs::unlinkat(fd, os(&name), AtFlags::empty())
            .map_err(|e| rm_err("remove", rm_path(dir, &name), e))?;
    }
    Ok(subdirs)
}

/// Remove `name` of the directory `parent` and everything below it, fd-relative:
/// every directory is opened with `O_NOFOLLOW | O_DIRECTORY` from its parent's fd
/// and every entry is unlinked with `unlinkat` on its parent's fd, so a symlink
/// swapped in for a directory (by a program still running in a sandbox) is never
/// followed. An entry that vanishes or changes kind during the removal is an
/// error naming it, not success. Read-only directories are made writable (through
/// their fd) first; trees of any depth are removed with an explicit stack of at
/// most [`REMOVE_DEPTH`] open directories. A missing `name` is success.
pub fn remove_tree_at(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let st = match rfs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(rm_err("inspect", rm_path(&[], name), e)),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return rfs::unlinkat(parent, os(name), AtFlags::empty())
            .map_err(|e| rm_err("remove", rm_path(&[], name), e));
    }
    let fd = open_for_removal(parent, name).map_err(|e| rm_err("open", rm_path(&[], name), e))?;
    let subdirs = rm_entries(name, fd.as_fd())?;
    let mut stack = vec![RmFrame {
        fd,
        name: name.to_vec(),
        path: name.to_vec(),
        subdirs,
    }];
    let mut moved = 0u64;
    while let Some(top) = stack.last_mut() {
        let Some(sub) = top.subdirs.pop() else {
            let done = stack.pop().expect("a frame");
            drop(done.fd);
            let pfd = stack.last().map(|f| f.fd.as_fd()).unwrap_or(parent);
            rfs::unlinkat(pfd, os(&done.name), AtFlags::REMOVEDIR)
                .map_err(|e| rm_err("remove", rm_path(&[], &done.path), e))?;
            continue;
        };
        let child = open_for_removal(top.fd.as_fd(), &sub)
            .map_err(|e| rm_err("open", rm_path(&top.path, &sub), e))?;
        if stack.len() >= REMOVE_DEPTH {
            // Too deep: move the subtree to the root of the removal under a fresh
            // name and remove it from there later. Both ends are fds we hold.
            drop(child);
            let from = stack.len() - 1;
            loop {
                let fresh = format!(".aisbx-rm-{moved}");
                moved += 1;
                match rfs::renameat_with(
                    stack[from].fd.as_fd(),
                    os(&sub),
                    stack[0].fd.as_fd(),
                    fresh.as_str(),
                    RenameFlags::NOREPLACE,
                ) {
                    Ok(()) => {
                        stack[0].subdirs.push(fresh.into_bytes());
                        break;
                    }
                    Err(rustix::io::Errno::EXIST) => continue,
                    Err(e) => return Err(rm_err("move up", rm_path(top_path(&stack), &sub), e)),
                }
            }
            continue;
        }
        let path = join(top_path(&stack), &sub);
        let subdirs = rm_entries(&path, child.as_fd())?;
        stack.push(RmFrame {
            fd: child,
            name: sub,
            path,
            subdirs,
        });
    }
    Ok(())
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

    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn remove_tree_handles_read_only_and_deep_trees_and_links() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("tree");
        // A chain far deeper than REMOVE_DEPTH, with files and links at each level.
        let mut d = root.clone();
        for i in 0..(REMOVE_DEPTH * 5) {
            d = d.join(format!("d{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("f"), "x").unwrap();
            std::os::unix::fs::symlink(outside.path(), d.join("out")).unwrap();
        }
        // Read-only and unreadable directories, as a sandbox may leave them.
        std::fs::create_dir_all(root.join("ro/inner")).unwrap();
        std::fs::write(root.join("ro/inner/f"), "x").unwrap();
        chmod(&root.join("ro/inner"), 0o500);
        chmod(&root.join("ro"), 0o000);
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        assert!(outside.path().join("keep").exists());
        // Removing what is not there is success.
        remove_tree(&root).unwrap();
    }

    #[test]
    fn remove_tree_never_follows_a_swapped_in_symlink() {
        // A thread plays the sandbox: it keeps swapping a directory full of empty
        // directories for a symlink to a directory outside while the tree is
        // removed. The outside files must survive; the removal may fail.
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        for i in 0..50 {
            std::fs::write(victim.join(format!("c{i}")), "x").unwrap();
        }
        for round in 0..5 {
            let t = tempfile::tempdir().unwrap();
            let root = t.path().join("tree");
            let swap = root.join("t");
            for i in 0..2000 {
                std::fs::create_dir_all(swap.join(format!("e{i}"))).unwrap();
            }
            std::fs::create_dir(swap.join("victim")).unwrap();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let st = stop.clone();
            let (r2, sw, out) = (root.clone(), swap.clone(), outside.path().to_path_buf());
            let th = std::thread::spawn(move || {
                let aside = r2.join("t2");
                while !st.load(std::sync::atomic::Ordering::Relaxed) {
                    if std::fs::rename(&sw, &aside).is_ok() {
                        let _ = std::os::unix::fs::symlink(&out, &sw);
                        std::thread::yield_now();
                        let _ = std::fs::remove_file(&sw);
                        let _ = std::fs::rename(&aside, &sw);
                    }
                }
            });
            let r = remove_tree(&root);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            th.join().unwrap();
            // (The path-based removal this replaced deleted `victim` itself, through
            // the link, in the first round.)
            let left = std::fs::read_dir(&victim).map(|d| d.count()).unwrap_or(0);
            assert_eq!(
                left, 50,
                "round {round}: outside files were deleted ({r:?})"
            );
            // Whatever is left (after an error) goes now that nothing swaps.
            remove_tree(&root).unwrap();
        }
    }

    #[test]
    fn host_modes_drop_setuid_and_setgid() {
        assert_eq!(host_mode(Kind::File, 0o4755), 0o755);
        assert_eq!(host_mode(Kind::File, 0o2755), 0o755);
        assert_eq!(host_mode(Kind::File, 0o1644), 0o644);
        assert_eq!(host_mode(Kind::Dir, 0o3777), 0o1777);
        assert_eq!(host_mode(Kind::Dir, 0o6755), 0o755);
    }

    #[test]
    fn sparse_files_stay_sparse_and_hash_as_their_content() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("sparse");
        let len: u64 = 64 << 20;
        {
            let f = std::fs::File::create(&src).unwrap();
            f.set_len(len).unwrap();
            use std::os::unix::fs::FileExt;
            f.write_at(b"head", 0).unwrap();
            f.write_at(b"middle", 20 << 20).unwrap();
            f.write_at(b"tail", len - 4).unwrap();
        }
        let mut logical = vec![0u8; len as usize];
        logical[..4].copy_from_slice(b"head");
        logical[20 << 20..(20 << 20) + 6].copy_from_slice(b"middle");
        logical[len as usize - 4..].copy_from_slice(b"tail");
        let want = blake3::hash(&logical);
        let dir = open_host_dir(t.path()).unwrap();
        let s = open_file(dir.as_fd(), b"sparse").unwrap();
        assert_eq!(hash_fd(&s, &mut |_| {}).unwrap(), (want, len));
        let mk = |name: &str| {
            rfs::openat(
                &dir,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .unwrap()
        };
        let a = mk("a");
        assert_eq!(copy_hash(&s, &a).unwrap(), (want, len));
        let b = mk("b");
        copy_data(&s, &b).unwrap();
        for name in ["a", "b"] {
            let p = t.path().join(name);
            assert_eq!(std::fs::read(&p).unwrap(), logical, "{name}");
            let md = std::fs::metadata(&p).unwrap();
            assert!(
                md.blocks() * 512 < 1 << 20,
                "{name} takes {} blocks",
                md.blocks()
            );
        }
    }

    #[test]
    fn a_checked_copy_refuses_content_that_does_not_match() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("obj"), b"the stored content").unwrap();
        let good = blake3::hash(b"the stored content");
        let dir = open_host_dir(t.path()).unwrap();
        std::fs::create_dir(t.path().join("out")).unwrap();
        let out = open_dir(dir.as_fd(), b"out").unwrap();
        let mut w = Writer::new(out.as_fd(), None, false);
        let node = |name: &[u8]| Node {
            path: name.to_vec(),
            kind: Kind::File,
            mode: 0o640,
            mtime: (1_000_000_000, 0),
            size: 18,
            target: Vec::new(),
            layer: 0,
        };
        let src = || open_file(dir.as_fd(), b"obj").unwrap();
        w.put(
            &node(b"ok"),
            Some(Source::Checked {
                fd: src(),
                hash: good,
                size: 18,
            }),
        )
        .unwrap();
        assert_eq!(
            std::fs::read(t.path().join("out/ok")).unwrap(),
            b"the stored content"
        );
        let e = w
            .put(
                &node(b"bad-hash"),
                Some(Source::Checked {
                    fd: src(),
                    hash: blake3::hash(b"something else"),
                    size: 18,
                }),
            )
            .unwrap_err();
        assert!(is_mismatch(&e), "{e}");
        let e = w
            .put(
                &node(b"bad-size"),
                Some(Source::Checked {
                    fd: src(),
                    hash: good,
                    size: 17,
                }),
            )
            .unwrap_err();
        assert!(is_mismatch(&e), "{e}");
        assert!(!is_mismatch(&io::Error::other("other")));
    }
}
