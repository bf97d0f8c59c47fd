//! Per-run cgroups for memory, pids and CPU, on cgroup v1 or v2 (detected at run
//! time; hosts that still mount the controllers as v1 beside a nearly empty v2
//! hierarchy are common).
//!
//! Each run gets `<hierarchy>/aisbx/<supervisor pid>-<its start time>-<n>`: a later
//! aisbx can tell whether the supervisor that made a cgroup is still alive, and
//! removes the cgroups of dead ones ([`reap_stale`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::Limits;
use crate::sys::process_start_time;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// `cpuacct` is not created on its own: CPU time comes from `cpuacct.usage` when
/// it shares the `cpu` mount, else from the init's sum of every reaped process.
const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
const PARENT: &str = "aisbx";

/// Which cgroup interface a host offers for our controllers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// One v1 mount per controller name (several names may share a mount).
    V1(Vec<(String, PathBuf)>),
    /// The unified hierarchy at this path, with these controllers available.
    V2(PathBuf, Vec<String>),
}

/// Detect the hierarchy to use: v2 when it offers memory and pids, else v1.
pub fn detect() -> Option<Hierarchy> {
    detect_at(Path::new(CGROUP_ROOT))
}

/// The hierarchy, detected once per process: cgroup mounts do not change under a
/// running aisbx, and detection costs a dozen system calls on cgroupfs.
fn hierarchy() -> Option<&'static Hierarchy> {
    static H: std::sync::OnceLock<Option<Hierarchy>> = std::sync::OnceLock::new();
    H.get_or_init(detect).as_ref()
}

fn v2_controllers(dir: &Path) -> Option<Vec<String>> {
    let s = fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
    Some(s.split_whitespace().map(str::to_string).collect())
}

fn detect_at(root: &Path) -> Option<Hierarchy> {
    for v2 in [root.to_path_buf(), root.join("unified")] {
        if let Some(ctrls) = v2_controllers(&v2)
            && ctrls.iter().any(|c| c == "memory")
            && ctrls.iter().any(|c| c == "pids")
        {
            return Some(Hierarchy::V2(v2, ctrls));
        }
    }
    let mut v1 = Vec::new();
    for c in V1_CONTROLLERS {
        let p = root.join(c);
        if p.join("cgroup.procs").exists() {
            // `cpu` and `cpuacct` are often links to one `cpu,cpuacct` mount.
            let real = match fs::read_link(&p) {
                Ok(target) => root.join(target),
                Err(_) => p,
            };
            v1.push((c.to_string(), real));
        }
    }
    if v1.iter().any(|(c, _)| c == "memory") {
        Some(Hierarchy::V1(v1))
    } else {
        None
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The cgroup(s) of one run.
#[derive(Debug)]
pub struct RunCgroup {
    version: &'static str,
    /// (controller, directory); for v2 a single entry with controller "".
    dirs: Vec<(String, PathBuf)>,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// This process's pid and start time, read once.
fn me() -> (i32, u64) {
    static ME: std::sync::OnceLock<(i32, u64)> = std::sync::OnceLock::new();
    *ME.get_or_init(|| {
        let pid = std::process::id() as i32;
        (pid, process_start_time(pid).unwrap_or(0))
    })
}

fn run_name() -> String {
    let (pid, start) = me();
    format!("{pid}-{start}-{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

impl RunCgroup {
    /// Create and configure the cgroups of a run. `Ok(None)`: this host or user has
    /// no cgroups we may use (rlimits remain).
    pub fn create(limits: &Limits) -> Result<Option<RunCgroup>, String> {
        match hierarchy() {
            Some(h) => Self::create_in(h, limits),
            None => Ok(None),
        }
    }

    pub fn create_in(h: &Hierarchy, limits: &Limits) -> Result<Option<RunCgroup>, String> {
        let name = run_name();
        match h {
            Hierarchy::V1(mounts) => {
                let mut made = RunCgroup {
                    version: "v1",
                    dirs: Vec::new(),
                };
                let mut seen: Vec<&PathBuf> = Vec::new();
                for (ctrl, mount) in mounts {
                    if seen.contains(&mount) {
                        continue;
                    }
                    seen.push(mount);
                    let parent = mount.join(PARENT);
                    if let Err(e) = fs::create_dir(&parent)
                        && e.kind() != io::ErrorKind::AlreadyExists
                    {
                        if e.kind() == io::ErrorKind::PermissionDenied
                            || e.raw_os_error() == Some(libc::EROFS)
                        {
                            // Not ours to use (unprivileged user on v1).
                            made.destroy();
                            return Ok(None);
                        }
                        return Err(format!("creating {}: {e}", parent.display()));
                    }
                    let dir = parent.join(&name);
                    match fs::create_dir(&dir) {
                        Ok(()) => made.dirs.push((ctrl.clone(), dir)),
                        Err(e)
                            if e.kind() == io::ErrorKind::PermissionDenied
                                || e.raw_os_error() == Some(libc::EROFS) =>
                        {
                            made.destroy();
                            return Ok(None);
                        }
                        Err(e) => {
                            made.destroy();
                            return Err(format!("creating {}: {e}", dir.display()));
                        }
                    }
                }
                made.configure_v1(limits)
                    .inspect_err(|_| made.destroy_now())?;
                Ok(Some(made))
            }
            Hierarchy::V2(root, _) => {
                let parent = root.join(PARENT);
                let enable = "+memory +pids +cpu";
                if let Err(e) = fs::create_dir(&parent)
                    && e.kind() != io::ErrorKind::AlreadyExists
                {
                    if e.kind() == io::ErrorKind::PermissionDenied
                        || e.raw_os_error() == Some(libc::EROFS)
                    {
                        return Ok(None);
                    }
                    return Err(format!("creating {}: {e}", parent.display()));
                }
                // Controllers must be enabled for the children of each level.
                for level in [root.as_path(), parent.as_path()] {
                    let _ = write(&level.join("cgroup.subtree_control"), enable);
                }
                let dir = parent.join(&name);
                match fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(e)
                        if e.kind() == io::ErrorKind::PermissionDenied
                            || e.raw_os_error() == Some(libc::EROFS) =>
                    {
                        return Ok(None);
                    }
                    Err(e) => return Err(format!("creating {}: {e}", dir.display())),
                }
                let made = RunCgroup {
                    version: "v2",
                    dirs: vec![(String::new(), dir)],
                };
                made.configure_v2(limits)
                    .inspect_err(|_| made.destroy_now())?;
                Ok(Some(made))
            }
        }
    }

    fn dir_of(&self, ctrl: &str) -> Option<&Path> {
        if self.version == "v2" {
            return self.dirs.first().map(|(_, d)| d.as_path());
        }
        self.dirs
            .iter()
            .find(|(c, _)| c == ctrl)
            .map(|(_, d)| d.as_path())
            .or_else(|| {
                // A controller that shares a mount with another (cpu,cpuacct).
                self.dirs
                    .iter()
                    .find(|(_, d)| d.to_string_lossy().contains(ctrl))
                    .map(|(_, d)| d.as_path())
            })
    }

    fn configure_v1(&self, l: &Limits) -> Result<(), String> {
        let e = |e: io::Error| e.to_string();
        if let Some(d) = self.dir_of("memory") {
            write(
                &d.join("memory.limit_in_bytes"),
                &l.memory_bytes.to_string(),
            )
            .map_err(e)?;
            // No swap: memory+swap capped at the same value, where the kernel has it.
            let sw = d.join("memory.memsw.limit_in_bytes");
            if sw.exists() {
                write(&sw, &l.memory_bytes.to_string()).map_err(e)?;
            }
        }
        if let Some(d) = self.dir_of("pids") {
            write(&d.join("pids.max"), &l.pids.to_string()).map_err(e)?;
        }
        if let Some(d) = self.dir_of("cpu") {
            // A new cgroup's period is the kernel's default, 100 ms: only the quota
            // needs writing.
            let period = 100_000u64;
            let quota = (l.cpus * period as f64).round().max(1000.0) as u64;
            write(&d.join("cpu.cfs_quota_us"), &quota.to_string()).map_err(e)?;
        }
        Ok(())
    }

    fn configure_v2(&self, l: &Limits) -> Result<(), String> {
        let e = |e: io::Error| e.to_string();
        let Some(d) = self.dirs.first().map(|(_, d)| d) else {
            return Ok(());
        };
        write(&d.join("memory.max"), &l.memory_bytes.to_string()).map_err(e)?;
        let swap = d.join("memory.swap.max");
        if swap.exists() {
            write(&swap, "0").map_err(e)?;
        }
        write(&d.join("pids.max"), &l.pids.to_string()).map_err(e)?;
        let cpu = d.join("cpu.max");
        if cpu.exists() {
            let period = 100_000u64;
            let quota = (l.cpus * period as f64).round().max(1000.0) as u64;
            write(&cpu, &format!("{quota} {period}")).map_err(e)?;
        }
        Ok(())
    }

    pub fn version(&self) -> &'static str {
        self.version
    }

    /// On v1, the `tasks` files of the run's cgroups, opened here (with the
    /// supervisor's credentials, which the kernel checks) for the sandbox init to
    /// move itself in by writing `0`. Moving the calling thread skips the global
    /// threadgroup lock that a write of another pid to `cgroup.procs` takes, and
    /// with it an RCU grace period (milliseconds) per run.
    pub fn self_join_fds(&self) -> Result<Vec<std::os::fd::OwnedFd>, String> {
        if self.version != "v1" {
            return Ok(Vec::new());
        }
        self.dirs
            .iter()
            .map(|(_, d)| {
                let p = d.join("tasks");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map(std::os::fd::OwnedFd::from)
                    .map_err(|e| format!("opening {}: {e}", p.display()))
            })
            .collect()
    }

    /// Move `pid` into every cgroup of the run.
    pub fn add(&self, pid: i32) -> Result<(), String> {
        for (_, d) in &self.dirs {
            write(&d.join("cgroup.procs"), &pid.to_string()).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn read_key(&self, ctrl: &str, file: &str, key: &str) -> Option<u64> {
        let s = fs::read_to_string(self.dir_of(ctrl)?.join(file)).ok()?;
        s.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
        })
    }

    fn read_num(&self, ctrl: &str, file: &str) -> Option<u64> {
        fs::read_to_string(self.dir_of(ctrl)?.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether the kernel's OOM killer killed a process of this run.
    pub fn oom_killed(&self) -> bool {
        let n = if self.version == "v2" {
            self.read_key("memory", "memory.events", "oom_kill")
        } else {
            self.read_key("memory", "memory.oom_control", "oom_kill")
        };
        n.unwrap_or(0) > 0
    }

    /// Peak memory use of the run, in KiB.
    pub fn peak_kib(&self) -> Option<u64> {
        let bytes = if self.version == "v2" {
            self.read_num("memory", "memory.peak")
        } else {
            self.read_num("memory", "memory.max_usage_in_bytes")
        }?;
        Some(bytes / 1024)
    }

    /// CPU time used by the run, in milliseconds.
    pub fn cpu_ms(&self) -> Option<u64> {
        if self.version == "v2" {
            self.read_key("cpu", "cpu.stat", "usage_usec")
                .map(|us| us / 1000)
        } else {
            self.read_num("cpu", "cpuacct.usage")
                .map(|ns| ns / 1_000_000)
        }
    }

    /// SIGKILL everything left in the run's cgroups.
    pub fn kill_all(&self) {
        for (_, d) in &self.dirs {
            kill_cgroup(d);
        }
    }

    /// Kill what is left and remove the cgroups.
    pub fn destroy(mut self) {
        self.destroy_now();
        self.dirs.clear();
    }

    fn destroy_now(&self) {
        for (_, d) in &self.dirs {
            remove_cgroup(d);
        }
    }
}

fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn kill_cgroup(dir: &Path) {
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() && fs::write(&kill_file, "1").is_ok() {
        return;
    }
    for _ in 0..50 {
        let pids = procs(dir);
        if pids.is_empty() {
            return;
        }
        for p in pids {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Kill what is in a cgroup and remove it, waiting up to two seconds for the
/// processes to be gone.
fn remove_cgroup(dir: &Path) {
    let mut deadline: Option<Instant> = None;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) if deadline.is_none_or(|d| Instant::now() < d) => {
                deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(2));
                kill_cgroup(dir);
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
}

/// Whether a run cgroup's name says its supervisor is gone.
fn is_stale(name: &str) -> bool {
    let mut it = name.split('-');
    let (Some(pid), Some(start)) = (it.next(), it.next()) else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
        return false;
    };
    if pid == me().0 {
        // Ours, unless an earlier process had our pid.
        return start != me().1;
    }
    process_start_time(pid) != Some(start)
}

/// Remove the cgroups that runs of dead aisbx processes left behind (after a
/// `kill -9`, say), killing whatever is still in them. Returns how many it removed.
pub fn reap_stale() -> usize {
    let dirs: Vec<PathBuf> = match hierarchy() {
        Some(Hierarchy::V1(m)) => m.iter().map(|(_, p)| p.join(PARENT)).collect(),
        Some(Hierarchy::V2(root, _)) => vec![root.join(PARENT)],
        None => Vec::new(),
    };
    let mut removed = 0;
    for parent in dirs {
        let Ok(rd) = fs::read_dir(&parent) else {
            continue;
        };
        for ent in rd.flatten() {
            // Most entries are the interface files of the parent: skip them by name
            // and type without a stat.
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.starts_with(|c: char| c.is_ascii_digit())
                && ent.file_type().is_ok_and(|t| t.is_dir())
                && is_stale(&name)
            {
                remove_cgroup(&ent.path());
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_v1(root: &Path) {
        for c in ["memory", "pids", "cpu", "cpuacct"] {
            fs::create_dir_all(root.join(c)).unwrap();
            fs::write(root.join(c).join("cgroup.procs"), "").unwrap();
        }
        fs::create_dir_all(root.join("unified")).unwrap();
        fs::write(root.join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
    }

    #[test]
    fn hybrid_host_uses_v1() {
        let t = tempfile::tempdir().unwrap();
        fake_v1(t.path());
        match detect_at(t.path()) {
            Some(Hierarchy::V1(m)) => assert_eq!(m.len(), 3),
            other => panic!("expected v1, got {other:?}"),
        }
    }

    #[test]
    fn unified_host_with_controllers_uses_v2() {
        let t = tempfile::tempdir().unwrap();
        fs::write(
            t.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        assert!(matches!(detect_at(t.path()), Some(Hierarchy::V2(..))));
    }

    #[test]
    fn no_controllers_means_none() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("cgroup.controllers"), "hugetlb\n").unwrap();
        assert_eq!(detect_at(t.path()), None);
    }

    #[test]
    fn v2_limits_are_written_in_v2_syntax() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        fs::write(t.path().join("cgroup.subtree_control"), "").unwrap();
        let h = detect_at(t.path()).unwrap();
        let limits = Limits {
            wall: Duration::from_secs(1),
            memory_bytes: 256 << 20,
            pids: 64,
            cpus: 1.5,
            nofile: 1024,
            tmp_bytes: 1 << 20,
            output_bytes: 1 << 20,
        };
        // A plain directory does not create the interface files; pre-create cpu.max
        // so that it is written, as the kernel would offer it.
        let cg = RunCgroup::create_in(&h, &limits).unwrap().unwrap();
        let dir = cg.dirs[0].1.clone();
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).unwrap(),
            "268435456"
        );
        assert_eq!(fs::read_to_string(dir.join("pids.max")).unwrap(), "64");
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert!(cg.oom_killed());
        fs::write(dir.join("cpu.stat"), "usage_usec 12345\nuser_usec 1\n").unwrap();
        assert_eq!(cg.cpu_ms(), Some(12));
        // remove the regular files the kernel would not have, then destroy
        for f in ["memory.max", "pids.max", "memory.events", "cpu.stat"] {
            fs::remove_file(dir.join(f)).unwrap();
        }
        cg.destroy();
        assert!(!dir.exists());
    }

    #[test]
    fn stale_names() {
        let me = std::process::id() as i32;
        let start = process_start_time(me).unwrap();
        assert!(!is_stale(&format!("{me}-{start}-0")));
        assert!(is_stale(&format!("{me}-{}-0", start + 1)));
        assert!(!is_stale("not-a-run"));
    }
}
