//! Per-tenant quotas: checked and reserved at the start of a run, build or
//! sandbox creation, atomically across every process using the state directory
//! (CLI commands and servers at once), and released on every path.
//!
//! Each tenant keeps its accounting in `quota/` of its own state (see
//! `Service::store`):
//!
//! - concurrent runs: `run-slot.N` files, N below the limit. A run holds one with
//!   an exclusive `flock` for as long as it goes on; the kernel drops the lock when
//!   the holder's file is closed, so a run that ends, is cancelled, or whose process
//!   crashes or is killed gives its slot back by itself.
//! - runs per minute and CPU seconds per hour: ledgers (`runs.log`: one start time
//!   per line; `cpu.log`: an end time and the CPU milliseconds of a run), read and
//!   rewritten under the exclusive lock of `ledger.lock`. A run's start is counted
//!   when it is admitted; its CPU time when it ends (see [`charged_cpu_ms`] for a
//!   run whose CPU time could not be measured). A run's time limit is lowered
//!   so that its CPU time cannot pass what is left of the hour's; runs going on at
//!   once each get that, so together they may pass it, and the next is refused.
//! - sandboxes: the entries of the tenant's `sandboxes/`, counted under the same
//!   lock, which is held until the new sandbox's directory exists.
//! - storage: the bytes allocated to the tenant's sandboxes and snapshot store, a
//!   file with several links (a deduplicated snapshot object) counted once. Checked
//!   before each request that writes; a request may pass it by what it writes.

use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{self as rfs, AtFlags, FlockOperation, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::ServiceError;
use crate::tenant_scope::Scope;
use crate::tenants::Quota;

const DIR: &str = "quota";
const LEDGER_LOCK: &str = "ledger.lock";
const RUNS_LOG: &str = "runs.log";
const CPU_LOG: &str = "cpu.log";
const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;
/// Most concurrent-run slots looked at (a larger limit is as good as none).
const MAX_SLOTS: u64 = 4096;
/// Most entries a storage count looks at before it stops (then it reports what it
/// counted so far).
const MAX_WALK: usize = 2_000_000;

/// What a request needs from its tenant's quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// A run (or a build's setup runs): a run slot, a start in the minute, CPU
    /// time left, storage left.
    Run,
    /// A request that writes to the tenant's storage and runs nothing.
    Storage,
}

/// One quota's use and what is left, for `aisbx quota` and the MCP `quota` tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QuotaUse {
    /// `concurrent_runs`, `sandboxes`, `storage_bytes`, `cpu_seconds_per_hour`,
    /// `runs_per_minute`.
    pub quota: String,
    pub used: u64,
    /// `null`: no limit.
    pub limit: Option<u64>,
    /// `null`: no limit.
    pub remaining: Option<u64>,
}

/// The caller's tenant and each of its quotas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QuotaReport {
    pub tenant: String,
    pub quotas: Vec<QuotaUse>,
}

/// What a request holds of its tenant's quotas; dropping it gives its run slot
/// back (the kernel does the same when the process dies).
#[derive(Debug, Default)]
pub(crate) struct Reservation {
    _slot: Option<OwnedFd>,
    /// CPU milliseconds left in the hour, when the tenant has a CPU quota: a run's
    /// time limit is lowered so that it cannot use more.
    pub(crate) cpu_left_ms: Option<u64>,
}

/// Held while a new sandbox's directory is made, so that two creations never
/// both take the last place.
pub(crate) struct SandboxTurn {
    _lock: Option<OwnedFd>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn internal(what: &str, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(format!("tenant quotas: {what}: {e}"))
}

/// The refusal past a quota: its name, use and limit, and what to do.
fn refusal(
    tenant: &str,
    quota: &str,
    used: u64,
    limit: u64,
    what: &str,
    todo: &str,
) -> ServiceError {
    ServiceError::Refused(format!(
        "quota {quota} reached for tenant '{tenant}': {used} {what}, limit {limit}; {todo}"
    ))
}

/// The tenant's `quota/` directory, opened (made when missing).
fn quota_dir(svc: &Scope) -> Result<OwnedFd, ServiceError> {
    let root = svc.store();
    let dir = root.join(DIR);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(internal(&format!("cannot create {}", dir.display()), e)),
    }
    let parent = crate::snapshot_fs::open_host_dir(root)
        .map_err(|e| internal(&format!("cannot open {}", root.display()), e))?;
    crate::snapshot_fs::open_dir(parent.as_fd(), DIR.as_bytes())
        .map_err(|e| internal(&format!("cannot open {}", dir.display()), e))
}

fn open_file(dir: BorrowedFd<'_>, name: &str) -> Result<OwnedFd, ServiceError> {
    rfs::openat(
        dir,
        name,
        OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| internal(&format!("cannot open {DIR}/{name}"), e))
}

/// The ledgers' lock, held exclusively until dropped.
fn ledger_lock(dir: BorrowedFd<'_>) -> Result<OwnedFd, ServiceError> {
    let fd = open_file(dir, LEDGER_LOCK)?;
    rfs::flock(&fd, FlockOperation::LockExclusive)
        .map_err(|e| internal("cannot lock the ledgers", e))?;
    Ok(fd)
}

/// A ledger's lines, each a list of numbers; unreadable lines are dropped.
fn read_ledger(dir: BorrowedFd<'_>, name: &str) -> Result<Vec<Vec<u64>>, ServiceError> {
    let fd = open_file(dir, name)?;
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(64 << 20)
        .read_to_string(&mut text)
        .map_err(|e| internal(&format!("cannot read {DIR}/{name}"), e))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            l.split_ascii_whitespace()
                .map(|n| n.parse::<u64>().ok())
                .collect::<Option<Vec<u64>>>()
        })
        .collect())
}

fn write_ledger(dir: BorrowedFd<'_>, name: &str, lines: &[Vec<u64>]) -> Result<(), ServiceError> {
    let mut text = String::new();
    for l in lines {
        let words: Vec<String> = l.iter().map(u64::to_string).collect();
        text.push_str(&words.join(" "));
        text.push('\n');
    }
    let mut f = std::fs::File::from(open_file(dir, name)?);
    f.set_len(0)
        .and_then(|()| f.rewind())
        .and_then(|()| f.write_all(text.as_bytes()))
        .map_err(|e| internal(&format!("cannot write {DIR}/{name}"), e))
}

/// The starts of the last minute (oldest first).
fn recent_starts(dir: BorrowedFd<'_>, now: u64) -> Result<Vec<u64>, ServiceError> {
    let mut v: Vec<u64> = read_ledger(dir, RUNS_LOG)?
        .into_iter()
        .filter_map(|l| l.first().copied())
        .filter(|t| *t + MINUTE_MS > now && *t <= now + MINUTE_MS)
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// The CPU milliseconds of the last hour, with the entries still in it.
fn recent_cpu(dir: BorrowedFd<'_>, now: u64) -> Result<(u64, Vec<Vec<u64>>), ServiceError> {
    let kept: Vec<Vec<u64>> = read_ledger(dir, CPU_LOG)?
        .into_iter()
        .filter(|l| l.len() == 2 && l[0] + HOUR_MS > now && l[0] <= now + HOUR_MS)
        .collect();
    let used = kept.iter().map(|l| l[1]).fold(0u64, u64::saturating_add);
    Ok((used, kept))
}

/// Whether slot `i` is held by a run (probed with a lock that is let go at once).
fn slot_held(dir: BorrowedFd<'_>, i: u64) -> Result<bool, ServiceError> {
    let fd = open_file(dir, &format!("run-slot.{i}"))?;
    match rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(false),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(true),
        Err(e) => Err(internal("cannot probe a run slot", e)),
    }
}

/// A free run slot below `limit`, locked; `None` when all are taken.
fn take_slot(dir: BorrowedFd<'_>, limit: u64) -> Result<Option<OwnedFd>, ServiceError> {
    for i in 0..limit.min(MAX_SLOTS) {
        let fd = open_file(dir, &format!("run-slot.{i}"))?;
        match rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(Some(fd)),
            Err(rustix::io::Errno::WOULDBLOCK) => continue,
            Err(e) => return Err(internal("cannot lock a run slot", e)),
        }
    }
    Ok(None)
}

fn count_slots(dir: BorrowedFd<'_>, limit: u64) -> Result<u64, ServiceError> {
    let mut n = 0;
    for i in 0..limit.min(MAX_SLOTS) {
        n += u64::from(slot_held(dir, i)?);
    }
    Ok(n)
}

/// The entries of the tenant's `sandboxes/` (ones being made or removed included).
fn count_sandboxes(svc: &Scope) -> u64 {
    std::fs::read_dir(svc.store().join("sandboxes"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| !e.file_name().as_encoded_bytes().starts_with(b"."))
                .count() as u64
        })
        .unwrap_or(0)
}

/// The bytes allocated to the tenant's sandboxes and snapshots: every file under
/// them on their own file system (a sandbox's disk image, not the files mounted
/// from it), each inode once. Directories are opened one by one beneath their
/// parent, never through a symlink.
pub(crate) fn storage_used(svc: &Scope) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut budget = MAX_WALK;
    for sub in ["sandboxes", "snapshots"] {
        let Ok(fd) = crate::snapshot_fs::open_host_dir(&svc.store().join(sub)) else {
            continue;
        };
        let Ok(st) = rfs::fstat(&fd) else { continue };
        walk(fd, st.st_dev, &mut seen, &mut total, &mut budget);
    }
    total
}

#[allow(clippy::unnecessary_cast)] // the field types differ between architectures
fn walk(
    dir: OwnedFd,
    dev: u64,
    seen: &mut std::collections::HashSet<(u64, u64)>,
    total: &mut u64,
    budget: &mut usize,
) {
    let Ok(rd) = rfs::Dir::read_from(&dir) else {
        return;
    };
    let names: Vec<Vec<u8>> = rd
        .flatten()
        .map(|e| e.file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect();
    for name in names {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let Ok(st) = rfs::statat(&dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if st.st_dev as u64 != dev {
            continue;
        }
        if seen.insert((st.st_dev as u64, st.st_ino as u64)) {
            *total = total.saturating_add((st.st_blocks as u64).saturating_mul(512));
        }
        if rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Directory
            && let Ok(sub) = crate::snapshot_fs::open_dir(dir.as_fd(), &name)
        {
            walk(sub, dev, seen, total, budget);
        }
    }
}

/// Refuses when the tenant's storage is used up.
fn check_storage(svc: &Scope, q: &Quota) -> Result<(), ServiceError> {
    if let Some(limit) = q.storage_bytes {
        let used = storage_used(svc);
        if used >= limit {
            return Err(refusal(
                svc.tenant(),
                "storage_bytes",
                used,
                limit,
                "bytes stored",
                "remove sandboxes or snapshots it no longer needs",
            ));
        }
    }
    Ok(())
}

/// Checks and reserves what `need` takes of the tenant's quotas `q` (tenants.toml's
/// lowered by the policy's). Nothing is touched when the tenant has no quota.
pub(crate) fn reserve(svc: &Scope, q: &Quota, need: Need) -> Result<Reservation, ServiceError> {
    if q.is_empty() {
        return Ok(Reservation::default());
    }
    let tenant = svc.tenant();
    check_storage(svc, q)?;
    if need == Need::Storage {
        return Ok(Reservation::default());
    }
    let dir = quota_dir(svc)?;
    let slot = match q.concurrent_runs {
        Some(limit) => match take_slot(dir.as_fd(), limit)? {
            Some(fd) => Some(fd),
            None => {
                let used = count_slots(dir.as_fd(), limit)?;
                return Err(refusal(
                    tenant,
                    "concurrent_runs",
                    used.max(limit),
                    limit,
                    "runs going on",
                    "try again when one has ended",
                ));
            }
        },
        None => None,
    };
    let mut cpu_left_ms = None;
    if q.runs_per_minute.is_some() || q.cpu_seconds_per_hour.is_some() {
        let _lock = ledger_lock(dir.as_fd())?;
        let now = now_ms();
        if let Some(limit) = q.cpu_seconds_per_hour {
            let (used_ms, _) = recent_cpu(dir.as_fd(), now)?;
            cpu_left_ms = Some(limit.saturating_mul(1000).saturating_sub(used_ms));
            if used_ms >= limit.saturating_mul(1000) {
                return Err(refusal(
                    tenant,
                    "cpu_seconds_per_hour",
                    used_ms / 1000,
                    limit,
                    "CPU seconds used in the last hour",
                    "try again later",
                ));
            }
        }
        if let Some(limit) = q.runs_per_minute {
            let mut starts = recent_starts(dir.as_fd(), now)?;
            if starts.len() as u64 >= limit {
                let wait = retry_after(&starts, limit, now);
                return Err(refusal(
                    tenant,
                    "runs_per_minute",
                    starts.len() as u64,
                    limit,
                    "runs started in the last minute",
                    &format!("try again in {wait} s"),
                ));
            }
            starts.push(now);
            let lines: Vec<Vec<u64>> = starts.into_iter().map(|t| vec![t]).collect();
            write_ledger(dir.as_fd(), RUNS_LOG, &lines)?;
        }
    }
    Ok(Reservation {
        _slot: slot,
        cpu_left_ms,
    })
}

/// Seconds until one more run fits in the minute.
fn retry_after(starts: &[u64], limit: u64, now: u64) -> u64 {
    // The run that has to leave the window for one more to fit.
    let idx = (starts.len() as u64).saturating_sub(limit) as usize;
    let at = starts.get(idx).copied().unwrap_or(now) + MINUTE_MS;
    at.saturating_sub(now).div_ceil(1000).max(1)
}

/// When the tenant's runs-per-minute quota would refuse a run now: the seconds
/// until it would not (HTTP answers 429 with `Retry-After` then). Nothing is
/// reserved.
pub(crate) fn rate_wait(
    svc: &Scope,
    q: &Quota,
) -> Result<Option<(u64, ServiceError)>, ServiceError> {
    let Some(limit) = q.runs_per_minute else {
        return Ok(None);
    };
    let dir = quota_dir(svc)?;
    let _lock = ledger_lock(dir.as_fd())?;
    let now = now_ms();
    let starts = recent_starts(dir.as_fd(), now)?;
    if (starts.len() as u64) < limit {
        return Ok(None);
    }
    let wait = retry_after(&starts, limit, now);
    Ok(Some((
        wait,
        refusal(
            svc.tenant(),
            "runs_per_minute",
            starts.len() as u64,
            limit,
            "runs started in the last minute",
            &format!("try again in {wait} s"),
        ),
    )))
}

/// A run's hold on its tenant's quotas, from its start ([`RunQuota::start`]) to
/// its end ([`RunQuota::finish`], or drop: a run that failed to start).
pub(crate) struct RunQuota {
    _reserved: Reservation,
    quota: Quota,
    cpus: f64,
}

impl RunQuota {
    /// Reserves what a run takes of `svc`'s tenant's quotas; when the tenant has
    /// a CPU quota, lowers the run's time limit so that it cannot use more CPU
    /// than is left of the hour's (noted).
    pub(crate) fn start(
        svc: &Scope,
        limits: &mut aisbx_jail::Limits,
        notices: &mut Vec<String>,
    ) -> Result<RunQuota, ServiceError> {
        let quota = svc.quota();
        let reserved = reserve(svc, &quota, Need::Run)?;
        if let Some(ms) = reserved.cpu_left_ms {
            let cap = std::time::Duration::from_millis(ms)
                .div_f64(limits.cpus.max(1.0))
                .max(std::time::Duration::from_millis(100));
            if limits.wall > cap {
                limits.wall = cap;
                notices.push(format!(
                    "quota: timeout lowered to {:.1} s (the CPU seconds left this hour)",
                    cap.as_secs_f64()
                ));
            }
        }
        Ok(RunQuota {
            _reserved: reserved,
            quota,
            cpus: limits.cpus,
        })
    }

    /// The run has ended: its slot is given back and its CPU time counted.
    pub(crate) fn finish(self, svc: &Scope, r: &crate::RunResult) {
        let RunQuota {
            _reserved,
            quota,
            cpus,
        } = self;
        drop(_reserved);
        if let Err(e) = record_cpu(svc, &quota, charged_cpu_ms(r, cpus)) {
            eprintln!("aisbx: warning: the run's CPU time was not counted: {e}");
        }
    }
}

/// The CPU time a run is charged: what was measured; when it could not be (a run
/// killed at its time limit or by a signal whose init could not report it, where
/// the cgroup gives no CPU time either), the most it could have used, its wall
/// time times its CPUs, so that timing out is never a way around the quota.
pub(crate) fn charged_cpu_ms(r: &crate::RunResult, cpus: f64) -> u64 {
    if r.cpu_ms == 0 && (r.timed_out || r.signal == Some(libc::SIGKILL)) {
        (r.duration_ms as f64 * cpus.max(1.0)).ceil() as u64
    } else {
        r.cpu_ms
    }
}

/// Counts a finished run's CPU time against the tenant's hourly quota.
pub(crate) fn record_cpu(svc: &Scope, q: &Quota, cpu_ms: u64) -> Result<(), ServiceError> {
    if q.cpu_seconds_per_hour.is_none() || cpu_ms == 0 {
        return Ok(());
    }
    let dir = quota_dir(svc)?;
    let _lock = ledger_lock(dir.as_fd())?;
    let now = now_ms();
    let (_, mut kept) = recent_cpu(dir.as_fd(), now)?;
    kept.push(vec![now, cpu_ms]);
    write_ledger(dir.as_fd(), CPU_LOG, &kept)
}

/// Takes the tenant's sandbox-count turn: refuses when it has as many sandboxes
/// as its quota allows; else holds the lock until the new sandbox's directory is
/// made (drop the turn then).
pub(crate) fn sandbox_turn(svc: &Scope) -> Result<SandboxTurn, ServiceError> {
    let q = svc.quota();
    let Some(limit) = q.sandboxes else {
        return Ok(SandboxTurn { _lock: None });
    };
    let dir = quota_dir(svc)?;
    let lock = ledger_lock(dir.as_fd())?;
    let used = count_sandboxes(svc);
    if used >= limit {
        return Err(refusal(
            svc.tenant(),
            "sandboxes",
            used,
            limit,
            "sandboxes",
            "remove one it no longer needs (sandbox_destroy, `aisbx rm`)",
        ));
    }
    Ok(SandboxTurn { _lock: Some(lock) })
}

/// The use of each quota of the tenant, and what is left of it.
pub(crate) fn report(svc: &Scope, q: &Quota) -> Result<QuotaReport, ServiceError> {
    let dir = quota_dir(svc)?;
    let now = now_ms();
    let (runs, cpu_ms) = {
        let _lock = ledger_lock(dir.as_fd())?;
        (
            recent_starts(dir.as_fd(), now)?.len() as u64,
            recent_cpu(dir.as_fd(), now)?.0,
        )
    };
    let slots = match q.concurrent_runs {
        Some(l) => count_slots(dir.as_fd(), l)?,
        // Without a limit, the slots are not used: count none.
        None => 0,
    };
    let one = |quota: &str, used: u64, limit: Option<u64>| QuotaUse {
        quota: quota.to_string(),
        used,
        limit,
        remaining: limit.map(|l| l.saturating_sub(used)),
    };
    Ok(QuotaReport {
        tenant: svc.tenant().to_string(),
        quotas: vec![
            one("concurrent_runs", slots, q.concurrent_runs),
            one("sandboxes", count_sandboxes(svc), q.sandboxes),
            one("storage_bytes", storage_used(svc), q.storage_bytes),
            one(
                "cpu_seconds_per_hour",
                cpu_ms / 1000,
                q.cpu_seconds_per_hour,
            ),
            one("runs_per_minute", runs, q.runs_per_minute),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::Path;

    fn service(home: &Path, tenant: &str, q: Quota) -> Scope {
        crate::tenants::add(home, tenant).ok();
        crate::tenants::set_quota(home, tenant, |x| *x = q).expect("quota");
        crate::Service::open(crate::ServiceConfig {
            home: Some(home.to_path_buf()),
            ..Default::default()
        })
        .expect("service")
        .for_tenant(tenant)
        .expect("tenant")
        .scope()
        .clone()
    }

    #[test]
    fn concurrent_runs_are_slots_given_back_on_drop() {
        let d = tempfile::tempdir().expect("tempdir");
        let q = Quota {
            concurrent_runs: Some(2),
            ..Quota::default()
        };
        let svc = service(d.path(), "acme", q);
        let a = reserve(&svc, &q, Need::Run).expect("first");
        let b = reserve(&svc, &q, Need::Run).expect("second");
        let e = reserve(&svc, &q, Need::Run).expect_err("third").to_string();
        assert!(
            e.contains("quota concurrent_runs reached for tenant 'acme': 2 runs going on, limit 2"),
            "{e}"
        );
        assert_eq!(report(&svc, &q).expect("report").quotas[0].used, 2);
        drop(a);
        let c = reserve(&svc, &q, Need::Run).expect("a slot was given back");
        drop((b, c));
        assert_eq!(report(&svc, &q).expect("report").quotas[0].used, 0);
        // Another tenant has slots of its own.
        let other = service(d.path(), "globex", q);
        let _x = reserve(&other, &q, Need::Run).expect("globex");
    }

    #[test]
    fn runs_per_minute_and_cpu_per_hour() {
        let d = tempfile::tempdir().expect("tempdir");
        let q = Quota {
            runs_per_minute: Some(3),
            cpu_seconds_per_hour: Some(2),
            ..Quota::default()
        };
        let svc = service(d.path(), "acme", q);
        for _ in 0..3 {
            reserve(&svc, &q, Need::Run).expect("within the rate");
        }
        let (wait, e) = rate_wait(&svc, &q).expect("wait").expect("past the rate");
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(e.to_string().contains("runs_per_minute"), "{e}");
        let e = reserve(&svc, &q, Need::Run).expect_err("past").to_string();
        assert!(
            e.contains("runs_per_minute") && e.contains("3 runs started"),
            "{e}"
        );
        // A minute-old start no longer counts.
        let dir = quota_dir(&svc).expect("dir");
        let old = now_ms() - MINUTE_MS - 1;
        write_ledger(dir.as_fd(), RUNS_LOG, &[vec![old], vec![old], vec![old]]).expect("write");
        assert!(rate_wait(&svc, &q).expect("wait").is_none());
        reserve(&svc, &q, Need::Run).expect("the window moved");
        // CPU: refused once the hour's use reaches the quota.
        record_cpu(&svc, &q, 1500).expect("record");
        let r = reserve(&svc, &q, Need::Run).expect("1.5 s of 2");
        assert_eq!(r.cpu_left_ms, Some(500));
        record_cpu(&svc, &q, 600).expect("record");
        let e = reserve(&svc, &q, Need::Run).expect_err("past").to_string();
        assert!(
            e.contains("cpu_seconds_per_hour") && e.contains("2 CPU seconds"),
            "{e}"
        );
        let r = report(&svc, &q).expect("report");
        let cpu = r
            .quotas
            .iter()
            .find(|u| u.quota == "cpu_seconds_per_hour")
            .expect("cpu");
        assert_eq!((cpu.used, cpu.limit, cpu.remaining), (2, Some(2), Some(0)));
    }

    #[test]
    fn a_run_whose_cpu_time_is_unknown_is_charged_its_most() {
        let mut r: crate::RunResult = serde_json::from_value(serde_json::json!({
            "exit_code": 0, "signal": null, "timed_out": false, "oom_killed": false,
            "stdout": "", "stderr": "", "stdout_truncated": false, "stderr_truncated": false,
            "duration_ms": 1500, "cpu_ms": 700, "max_rss_kib": 0, "profile": "base",
            "sandbox_id": null
        }))
        .expect("result");
        assert_eq!(charged_cpu_ms(&r, 2.0), 700);
        r.cpu_ms = 0;
        assert_eq!(
            charged_cpu_ms(&r, 2.0),
            0,
            "an idle run that ended by itself"
        );
        r.timed_out = true;
        assert_eq!(charged_cpu_ms(&r, 2.0), 3000);
        assert_eq!(charged_cpu_ms(&r, 0.5), 1500);
        r.timed_out = false;
        r.signal = Some(libc::SIGKILL);
        assert_eq!(charged_cpu_ms(&r, 1.0), 1500);
    }

    #[test]
    fn sandboxes_and_storage() {
        let d = tempfile::tempdir().expect("tempdir");
        let q = Quota {
            sandboxes: Some(1),
            storage_bytes: Some(64 << 10),
            ..Quota::default()
        };
        let svc = service(d.path(), "acme", q);
        let sb = svc.store().join("sandboxes");
        {
            let _t = sandbox_turn(&svc).expect("first");
            std::fs::create_dir_all(sb.join("one")).expect("mkdir");
        }
        let e = sandbox_turn(&svc).err().expect("second").to_string();
        assert!(
            e.contains("quota sandboxes") && e.contains("1 sandboxes, limit 1"),
            "{e}"
        );
        reserve(&svc, &q, Need::Storage).expect("empty");
        // 128 KiB written, and a second link to it, counted once.
        std::fs::write(sb.join("one/big"), vec![7u8; 128 << 10]).expect("write");
        std::fs::hard_link(sb.join("one/big"), sb.join("one/again")).expect("link");
        let used = storage_used(&svc);
        assert!((128 << 10..192 << 10).contains(&used), "{used}");
        let e = reserve(&svc, &q, Need::Storage)
            .expect_err("full")
            .to_string();
        assert!(e.contains("quota storage_bytes"), "{e}");
        // A symlink out of the tree is not followed.
        std::os::unix::fs::symlink("/usr", sb.join("one/usr")).expect("symlink");
        assert!(storage_used(&svc) < 192 << 10);
    }
}
