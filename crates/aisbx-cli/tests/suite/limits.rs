//! Limits: memory, processes, time, output and disk. Every payload is bounded:
//! at most 4 GiB allocated, at most 3000 short-lived processes.

use super::common::*;

#[test]
fn memory_limit_kills_and_reports_oom() {
    // Touch 64 MiB chunks up to 1 GiB against a 128 MiB limit.
    let (v, code) = run_json(&[
        "--memory",
        "128M",
        "--",
        "/usr/bin/python3",
        "-c",
        "a=[]\nfor i in range(16): a.append(bytearray(64<<20))\nprint('SURVIVED')",
    ]);
    assert_eq!(v["oom_killed"], true, "{v}");
    assert!(!stdout(&v).contains("SURVIVED"), "{v}");
    assert_eq!(v["signal"], 9, "{v}");
    assert_eq!(code, 137);
}

#[test]
fn memory_below_the_limit_is_fine() {
    let (v, code) = run_json(&[
        "--memory",
        "256M",
        "--",
        "/usr/bin/python3",
        "-c",
        "b=bytearray(64<<20)\nprint(len(b))",
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["oom_killed"], false);
    assert!(v["max_rss_kib"].as_u64().unwrap_or(0) > 60 * 1024, "{v}");
}

#[test]
fn process_limit_stops_forks() {
    // Up to 300 children that each sleep 2 s and exit by themselves; the limit is 40.
    let (v, code) = run_json(&[
        "--pids",
        "40",
        "--",
        "/usr/bin/python3",
        "-c",
        "import os,time\nok=fail=0\nfor i in range(300):\n try:\n  pid=os.fork()\n except OSError:\n  fail+=1; continue\n if pid==0:\n  time.sleep(2); os._exit(0)\n ok+=1\nprint(ok, fail)",
    ]);
    assert_eq!(code, 0, "{v}");
    let nums: Vec<u64> = stdout(&v)
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(nums.len(), 2, "{v}");
    assert!(
        nums[0] < 40,
        "{} forks succeeded past a limit of 40",
        nums[0]
    );
    assert!(nums[1] > 250, "{v}");
}

#[test]
fn timeout_kills_the_whole_tree() {
    let m = marker();
    let (v, code) = run_json(&[
        "--timeout",
        "1",
        "--",
        "/bin/sh",
        "-c",
        &format!("sleep 7{m} & sleep 8{m}; wait"),
    ]);
    assert_eq!(v["timed_out"], true, "{v}");
    assert_eq!(code, 124);
    assert!(v["duration_ms"].as_u64().unwrap_or(0) >= 1000, "{v}");
    assert!(host_procs_with(&format!("sleep 7{m}")).is_empty());
    assert!(host_procs_with(&format!("sleep 8{m}")).is_empty());
}

#[test]
fn output_beyond_the_cap_is_dropped_and_the_run_ends() {
    // An endless writer: the stream is cut at 1 MiB and the writer gets EPIPE.
    let (v, _) = run_json(&["--timeout", "20", "--", "/usr/bin/yes"]);
    assert_eq!(
        v["stdout_truncated"],
        true,
        "{}",
        &v.to_string()[..200.min(v.to_string().len())]
    );
    assert_eq!(
        v["timed_out"], false,
        "the run did not end after truncation"
    );
    assert_eq!(stdout(&v).len(), 1 << 20);
    assert_eq!(v["stderr_truncated"], false);
    // Below the cap nothing is flagged.
    let (v, _) = sh("head -c 1000 /dev/zero | tr '\\0' a");
    assert_eq!(stdout(&v).len(), 1000);
    assert_eq!(v["stdout_truncated"], false);
}

/// The script that writes `mib` MiB of zeros to `path` and then prints the size
/// of what it could write.
fn fill(path: &str, mib: u32) -> String {
    format!("dd if=/dev/zero of={path} bs=1M count={mib} 2>&1; ls -l {path} | awk '{{print $5}}'")
}

/// The run of a [`fill`] hit a full file system, and wrote at most `cap` bytes.
fn assert_filled_up_to(v: &serde_json::Value, cap: u64) {
    let out = stdout(v);
    assert!(out.contains("No space left on device"), "{v}");
    let size: u64 = out
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(u64::MAX);
    assert!(size <= cap, "{size}");
}

#[test]
fn tmp_is_capped() {
    let (v, _) = sh(&fill("/tmp/fill", 300));
    assert_filled_up_to(&v, 256 << 20);
}

#[test]
fn dev_shm_is_capped() {
    // /dev and /dev/shm share one 64 MiB tmpfs.
    let (v, _) = sh(&fill("/dev/shm/fill", 100));
    assert_filled_up_to(&v, 64 << 20);
}

#[test]
fn ephemeral_workspace_is_capped_at_one_gib() {
    // tmpfs pages count against memory: give the run room for them.
    let (v, _) = run_json(&[
        "--memory",
        "2G",
        "--",
        "/bin/sh",
        "-c",
        &fill("/workspace/fill", 1100),
    ]);
    assert_filled_up_to(&v, 1 << 30);
}

#[test]
fn open_files_and_core_dumps_are_limited() {
    let (v, _) = sh("ulimit -n; ulimit -c");
    assert_eq!(stdout(&v), "1024\n0\n", "{v}");
}

#[test]
fn cpu_limit_is_reported_in_cpu_ms() {
    let (v, code) = run_json(&[
        "--cpus",
        "0.5",
        "--",
        "/usr/bin/python3",
        "-c",
        "import time\nt=time.time()\nwhile time.time()-t<0.6: pass",
    ]);
    assert_eq!(code, 0, "{v}");
    let cpu = v["cpu_ms"].as_u64().unwrap_or(0);
    // Half a core for 0.6 s of wall time: clearly below the wall time.
    assert!(cpu > 50 && cpu < 550, "cpu_ms {cpu}: {v}");
}
