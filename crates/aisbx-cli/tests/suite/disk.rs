//! A persistent sandbox's disk is capped (as root: an ext4 image per sandbox): a
//! write past the cap fails with ENOSPC in the program, the host's disk never holds
//! more than the cap, and nothing stays mounted after `aisbx rm`.

use std::path::Path;
use std::process::Output;

use super::common::*;

/// A user profile `small` (python, 32 MiB workspace) under `config`.
fn small_profile(config: &Path) {
    let dir = config.join("aisbx/profiles");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("small.toml"),
        "extends = [\"python\"]\ndescription = \"a small disk\"\n[limits]\nworkspace = \"32M\"\n",
    )
    .expect("write profile");
}

fn aisbx_cfg(home: &Path, config: &Path, args: &[&str]) -> Output {
    cmd(home)
        .env("XDG_CONFIG_HOME", config)
        .args(args)
        .output()
        .expect("run aisbx")
}

fn exec_sh(home: &Path, config: &Path, sb: &str, script: &str) -> serde_json::Value {
    let out = aisbx_cfg(
        home,
        config,
        &["exec", "--json", sb, "--", "sh", "-c", script],
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not a RunResult ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Blocks the file really takes on the host, in bytes.
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).expect("stat").blocks() * 512
}

#[test]
fn writes_past_the_cap_fail_with_enospc_and_nothing_stays_mounted() {
    if !is_root() {
        eprintln!("skipped: the disk cap needs root");
        return;
    }
    let h = home();
    let cfg = tempfile::tempdir().expect("tempdir");
    small_profile(cfg.path());
    let out = aisbx_cfg(
        h.path(),
        cfg.path(),
        &["create", "box", "--profile", "small"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = h.path().join("sandboxes/box/disk.img");
    assert!(
        allocated(&image) < 4 << 20,
        "a new disk is sparse, {} bytes",
        allocated(&image)
    );

    // 100 MiB into a 32 MiB disk: dd fails on ENOSPC; the run itself is normal.
    let v = exec_sh(
        h.path(),
        cfg.path(),
        "box",
        "dd if=/dev/zero of=/workspace/big bs=1M count=100; echo dd=$?; df -k /workspace | tail -1",
    );
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(v["oom_killed"], false);
    assert!(stderr(&v).contains("No space left on device"), "{v}");
    assert!(stdout(&v).contains("dd=1"), "{v}");
    let size_kib: u64 = stdout(&v)
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("df size");
    assert!(size_kib <= 32 << 10, "df shows {size_kib} KiB");
    assert!(
        allocated(&image) <= 33 << 20,
        "the host holds {} bytes for a 32 MiB disk",
        allocated(&image)
    );

    // Freed space is usable again, and files persist across runs.
    let v = exec_sh(
        h.path(),
        cfg.path(),
        "box",
        "rm /workspace/big && echo kept > /workspace/f && cat /workspace/f",
    );
    assert_eq!(stdout(&v), "kept\n", "{v}");

    // After a reboot nothing is mounted: the next use mounts the disk again.
    let mnt = h.path().join("sandboxes/box/disk");
    assert_eq!(mounts_under(h.path()), vec![mnt.display().to_string()]);
    unmount_under(h.path());
    assert!(mounts_under(h.path()).is_empty());
    let v = exec_sh(h.path(), cfg.path(), "box", "cat /workspace/f");
    assert_eq!(stdout(&v), "kept\n", "{v}");

    // A copy-on-write sandbox restored from a snapshot has its own capped disk.
    ok(h.path(), &["snap", "create", "s", "--sandbox", "box"]);
    let out = aisbx_cfg(
        h.path(),
        cfg.path(),
        &["snap", "restore", "s", "--sandbox", "copy"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = exec_sh(
        h.path(),
        cfg.path(),
        "copy",
        "cat /workspace/f; dd if=/dev/zero of=/workspace/big bs=1M count=100; echo dd=$?",
    );
    assert!(stdout(&v).starts_with("kept\n"), "{v}");
    assert!(stdout(&v).contains("dd=1"), "{v}");
    assert!(stderr(&v).contains("No space left on device"), "{v}");

    ok(h.path(), &["rm", "box"]);
    ok(h.path(), &["rm", "copy"]);
    assert!(
        mounts_under(h.path()).is_empty(),
        "left mounted: {:?}",
        mounts_under(h.path())
    );
    assert!(!h.path().join("sandboxes/box").exists());
}

#[test]
fn doctor_says_what_a_sandbox_disk_is() {
    let out = aisbx(&["doctor", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["sandbox_disk"]["capped"], is_root(), "{v}");
    let text = String::from_utf8_lossy(&aisbx(&["doctor"]).stdout).into_owned();
    assert!(text.contains("sandbox disks:"), "{text}");
}

#[test]
fn a_disk_whose_state_was_deleted_is_unmounted_by_the_next_create() {
    if !is_root() {
        eprintln!("skipped: the disk cap needs root");
        return;
    }
    let h = home();
    ok(h.path(), &["create", "gone"]);
    let mnt = h.path().join("sandboxes/gone/disk");
    assert_eq!(mounts_under(h.path()), vec![mnt.display().to_string()]);
    // The state is deleted by hand, not with `aisbx rm`: its image goes, the mount
    // stays (and `rm -rf` fails on the mount point).
    let _ = std::process::Command::new("rm")
        .args(["-rf"])
        .arg(h.path().join("sandboxes"))
        .status();
    assert_eq!(mounts_under(h.path()), vec![mnt.display().to_string()]);
    let other = home();
    ok(other.path(), &["create", "next"]);
    assert!(
        mounts_under(h.path()).is_empty(),
        "left mounted: {:?}",
        mounts_under(h.path())
    );
    ok(other.path(), &["rm", "next"]);
}
