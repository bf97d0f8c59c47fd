//! Nothing is left behind: no process, cgroup or mount, also after daemons and
//! after `kill -9` of aisbx itself.

use std::time::{Duration, Instant};

use super::common::*;

fn run_cgroups() -> Vec<String> {
    let mut v = Vec::new();
    for c in ["memory", "pids", "cpu", "cpuacct"] {
        for e in std::fs::read_dir(format!("/sys/fs/cgroup/{c}/aisbx"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().is_dir() {
                v.push(e.path().display().to_string());
            }
        }
    }
    v
}

#[test]
fn daemons_do_not_survive_the_run() {
    let m = marker();
    let script = format!(
        "setsid sh -c 'sleep 91{m} & sleep 92{m}' & \
         (sh -c 'sleep 93{m} &' &) ; \
         nohup sleep 94{m} >/dev/null 2>&1 & \
         sleep 0.3; echo started"
    );
    let (v, code) = sh(&script);
    assert_eq!(code, 0, "{v}");
    assert!(stdout(&v).contains("started"));
    for n in 91..=94 {
        let left = host_procs_with(&format!("sleep {n}{m}"));
        assert!(left.is_empty(), "daemon survived: {left:?}");
    }
}

#[test]
fn no_mounts_leak_to_the_host() {
    let before = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .count();
    let (_, code) = sh("true");
    assert_eq!(code, 0);
    let after = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .count();
    assert_eq!(before, after);
}

#[test]
fn kill_9_of_aisbx_leaves_nothing_after_the_next_start() {
    if !is_root() {
        return;
    }
    let m = marker();
    let h = home();
    let mut child = cmd(h.path())
        .args([
            "run",
            "--",
            "/bin/sh",
            "-c",
            &format!("sleep 95{m} & sleep 96{m}"),
        ])
        .spawn()
        .expect("spawn");
    let pid = child.id();
    // Wait until the sandbox runs.
    let t = Instant::now();
    while host_procs_with(&format!("sleep 96{m}")).is_empty()
        && t.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !host_procs_with(&format!("sleep 96{m}")).is_empty(),
        "the sandbox did not start"
    );
    let own = |p: &str| p.contains(&format!("/{pid}-"));
    assert!(
        run_cgroups().iter().any(|p| own(p)),
        "no cgroup for the run"
    );
    // SAFETY: killing our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = child.wait();
    // The sandbox dies with its supervisor (parent-death signal on its init).
    let t = Instant::now();
    while !(host_procs_with(&format!("sleep 95{m}")).is_empty()
        && host_procs_with(&format!("sleep 96{m}")).is_empty())
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(host_procs_with(&format!("sleep 95{m}")).is_empty());
    assert!(host_procs_with(&format!("sleep 96{m}")).is_empty());
    // Its cgroups are left until the next aisbx starts a run (which may be another
    // test's, running at the same time), and that start removes them.
    let (_, code) = run_json_in(h.path(), &["--", "/bin/true"]);
    assert_eq!(code, 0);
    assert!(
        !run_cgroups().iter().any(|p| own(p)),
        "stale cgroup not removed: {:?}",
        run_cgroups()
    );
}

#[test]
fn cgroups_are_removed_after_each_run() {
    if !is_root() {
        return;
    }
    let h = home();
    let child = cmd(h.path())
        .args(["run", "--", "/bin/true"])
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let mine = format!("/{pid}-");
    assert!(
        !run_cgroups().iter().any(|p| p.contains(&mine)),
        "{:?}",
        run_cgroups()
    );
}
