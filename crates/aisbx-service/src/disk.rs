//! A persistent sandbox's disk cap.
//!
//! As root, a persistent sandbox's files live on an ext4 file system of their own: a
//! sparse image file (`disk.img`, the profile's `limits.workspace` in size) in the
//! sandbox's directory, attached to a loop device and mounted at `disk/` with
//! `nosuid,nodev`. A write past the cap fails with `ENOSPC` in the program, as on a
//! full disk, and never reaches the host's file system; the image only takes the
//! blocks that were written. The mount stays until the sandbox is destroyed; after a
//! reboot the next use mounts it again. The loop device is set to detach itself when
//! the file system is unmounted.
//!
//! An unprivileged user cannot mount a block file system, so its sandboxes keep their
//! files in a plain directory, limited only by the host disk; `aisbx doctor` says so.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ServiceError;

/// The image file in a sandbox's directory.
pub const IMAGE: &str = "disk.img";
/// Where the image is mounted, in a sandbox's directory.
pub const MOUNT: &str = "disk";
/// The smallest disk made (ext4 needs room for its own metadata and journal).
pub const MIN_BYTES: u64 = 16 << 20;

/// Whether this process can give sandboxes a capped disk, and if not, why.
pub fn support() -> Result<PathBuf, String> {
    // SAFETY: getter.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "uncapped: an unprivileged user cannot mount a disk, so a persistent sandbox's files are limited only by the host disk (run as root for a hard cap)"
                .into(),
        );
    }
    if !in_initial_user_namespace() {
        return Err(
            "uncapped: aisbx runs in a user namespace (a container), where a disk cannot be mounted, so a persistent sandbox's files are limited only by the host disk"
                .into(),
        );
    }
    let mkfs = mkfs_path().ok_or_else(|| {
        "mkfs.ext4 was not found (install e2fsprogs): persistent sandboxes are not capped"
            .to_string()
    })?;
    if !Path::new("/dev/loop-control").exists() {
        return Err(
            "/dev/loop-control is missing (no loop devices): persistent sandboxes are not capped"
                .into(),
        );
    }
    Ok(mkfs)
}

/// One line for `aisbx doctor`: what a persistent sandbox's disk is here.
pub fn describe() -> (bool, String) {
    match support() {
        Ok(_) => (
            true,
            "capped: an ext4 disk of its own per sandbox (the profile's limits.workspace); a write past it fails with ENOSPC".into(),
        ),
        Err(why) => (false, why),
    }
}

/// Whether this process is in the host's own user namespace, where root may mount a
/// block device (root in a container's user namespace may not).
fn in_initial_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(false)
}

/// Unmount the disks of sandboxes whose state was deleted without `aisbx rm` (their
/// image file is gone, so nothing can use them again): a mount of a loop device at
/// `.../sandboxes/ID/disk` whose backing file is deleted. Called when a sandbox is
/// made, so that such leftovers do not pile up.
pub fn reap_stale() {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(point), Some(fstype), Some(source)) =
            (fields.get(4), fields.get(dash + 1), fields.get(dash + 2))
        else {
            continue;
        };
        let Some(dev) = source.strip_prefix("/dev/") else {
            continue;
        };
        // Paths with spaces are octal-escaped in mountinfo; ours never have any.
        let mnt = Path::new(point);
        let is_sandbox_disk = *fstype == "ext4"
            && dev.starts_with("loop")
            && mnt.file_name() == Some(std::ffi::OsStr::new(MOUNT))
            && mnt
                .parent()
                .and_then(Path::parent)
                .and_then(Path::file_name)
                == Some(std::ffi::OsStr::new("sandboxes"));
        if !is_sandbox_disk {
            continue;
        }
        let backing = std::fs::read_to_string(format!("/sys/block/{dev}/loop/backing_file"))
            .unwrap_or_default();
        if backing.trim_end().ends_with(" (deleted)") {
            use nix::mount::{MntFlags, umount2};
            let _ = umount2(mnt, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
        }
    }
}

fn mkfs_path() -> Option<PathBuf> {
    ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn internal(what: String) -> impl FnOnce(io::Error) -> ServiceError {
    move |e| ServiceError::Internal(format!("{what}: {e}"))
}

/// Make the sandbox's disk in `dir`: a sparse image of `bytes`, formatted ext4, and
/// mounted at `dir/disk`. Returns the mount point.
pub fn create(dir: &Path, bytes: u64) -> Result<PathBuf, ServiceError> {
    let mkfs = support().map_err(ServiceError::Internal)?;
    reap_stale();
    let bytes = bytes.max(MIN_BYTES);
    let image = dir.join(IMAGE);
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&image)
        .map_err(internal(format!(
            "cannot create the sandbox's disk {}",
            image.display()
        )))?;
    f.set_len(bytes)
        .map_err(internal("cannot size the sandbox's disk".into()))?;
    drop(f);
    // No reserved blocks (the whole cap is the sandbox's); lazy journal and inode
    // table initialisation, so that the image starts at a few hundred KiB.
    let out = Command::new(&mkfs)
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
            "-L",
            "aisbx",
        ])
        .arg(&image)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(internal(format!("cannot run {}", mkfs.display())))?;
    if !out.status.success() {
        return Err(ServiceError::Internal(format!(
            "{} failed on the sandbox's disk: {}",
            mkfs.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mnt = dir.join(MOUNT);
    std::fs::create_dir(&mnt).map_err(internal(format!("cannot create {}", mnt.display())))?;
    mount(&image, &mnt)?;
    Ok(mnt)
}

/// Mount the sandbox's disk again if it is not mounted (after a reboot). A lock on the
/// image keeps two processes from mounting it twice.
pub fn ensure_mounted(dir: &Path) -> Result<(), ServiceError> {
    let mnt = dir.join(MOUNT);
    if is_mount_root(&mnt)? {
        return Ok(());
    }
    support().map_err(|why| {
        ServiceError::Refused(format!(
            "the sandbox's disk is not mounted and cannot be mounted here ({why})"
        ))
    })?;
    let image = dir.join(IMAGE);
    let lock = File::open(&image).map_err(internal(format!(
        "cannot open the sandbox's disk {}",
        image.display()
    )))?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| ServiceError::Internal(format!("cannot lock the sandbox's disk: {e}")))?;
    if is_mount_root(&mnt)? {
        return Ok(());
    }
    mount(&image, &mnt)
}

/// Unmount the sandbox's disk (its loop device then detaches itself). A disk that is
/// not mounted is fine.
pub fn unmount(dir: &Path) -> Result<(), ServiceError> {
    let mnt = dir.join(MOUNT);
    match is_mount_root(&mnt) {
        Ok(true) => {}
        Ok(false) => return Ok(()),
        Err(_) if !mnt.exists() => return Ok(()),
        Err(e) => return Err(e),
    }
    use nix::mount::{MntFlags, umount2};
    match umount2(&mnt, MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) => Ok(()),
        // Still in use by a process of the host: detach it now, the kernel frees it
        // when the last user is gone.
        Err(nix::errno::Errno::EBUSY) => {
            umount2(&mnt, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).map_err(|e| {
                ServiceError::Internal(format!("cannot unmount the sandbox's disk: {e}"))
            })
        }
        Err(e) => Err(ServiceError::Internal(format!(
            "cannot unmount the sandbox's disk: {e}"
        ))),
    }
}

/// Whether `p` is the root of a mount (never following a link).
fn is_mount_root(p: &Path) -> Result<bool, ServiceError> {
    use rustix::fs::{AtFlags, CWD, StatxFlags, statx};
    let st = statx(CWD, p, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS)
        .map_err(|e| ServiceError::Internal(format!("cannot inspect {}: {e}", p.display())))?;
    use rustix::fs::StatxAttributes;
    if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
        return Ok(st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT));
    }
    // An old kernel: a mount root is on another device than its parent.
    let parent = p.parent().unwrap_or(Path::new("/"));
    let pst = statx(
        CWD,
        parent,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )
    .map_err(|e| ServiceError::Internal(format!("cannot inspect {}: {e}", parent.display())))?;
    Ok((st.stx_dev_major, st.stx_dev_minor) != (pst.stx_dev_major, pst.stx_dev_minor))
}

// ----- loop devices (linux/loop.h) -----

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attach `image` to a free loop device (detached again when its file system is
/// unmounted) and mount it at `mnt`.
fn mount(image: &Path, mnt: &Path) -> Result<(), ServiceError> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(image)
        .map_err(internal(format!(
            "cannot open the sandbox's disk {}",
            image.display()
        )))?;
    let ctl = File::open("/dev/loop-control")
        .map_err(internal("cannot open /dev/loop-control".into()))?;
    let mut last = io::Error::from_raw_os_error(libc::EBUSY);
    // Another process may take the free device between the two calls: try again.
    for _ in 0..16 {
        // SAFETY: an ioctl without an argument on the loop control device.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(ServiceError::Internal(format!(
                "no free loop device for the sandbox's disk: {}",
                io::Error::last_os_error()
            )));
        }
        let dev = format!("/dev/loop{n}");
        let loopf = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&dev)
        {
            Ok(f) => f,
            Err(e) => {
                last = e;
                continue;
            }
        };
        // SAFETY: an all-zero loop_config is valid; the fields set below are plain data.
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = backing.as_raw_fd() as u32;
        cfg.info.flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: LOOP_CONFIGURE reads one loop_config, which `cfg` is.
        let r = unsafe { libc::ioctl(loopf.as_raw_fd(), LOOP_CONFIGURE, &cfg) };
        if r < 0 {
            last = io::Error::last_os_error();
            if last.raw_os_error() == Some(libc::EBUSY) {
                continue;
            }
            return Err(ServiceError::Internal(format!(
                "cannot attach the sandbox's disk to {dev}: {last}"
            )));
        }
        use nix::mount::MsFlags;
        let res = nix::mount::mount(
            Some(dev.as_str()),
            mnt,
            Some("ext4"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
            Some("errors=remount-ro"),
        );
        // The mount holds the device now; closing ours lets autoclear detach it at
        // unmount (or now, if the mount failed).
        drop(loopf);
        return res.map_err(|e| {
            ServiceError::Internal(format!(
                "cannot mount the sandbox's disk at {}: {e}",
                mnt.display()
            ))
        });
    }
    Err(ServiceError::Internal(format!(
        "no free loop device for the sandbox's disk: {last}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_config_matches_the_kernel_layout() {
        // linux/loop.h: loop_info64 is 232 bytes, loop_config 304.
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn a_plain_directory_is_not_a_mount_root() {
        let d = tempfile::tempdir().expect("tempdir");
        assert!(!is_mount_root(d.path()).expect("statx"));
        assert!(is_mount_root(Path::new("/proc")).expect("statx"));
    }
}
