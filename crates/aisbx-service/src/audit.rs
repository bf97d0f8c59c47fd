//! The hash-chained JSONL audit log.
//!
//! Every request, from any front end, appends one line to `<home>/audit.jsonl`. A line
//! is a JSON object in canonical form (keys sorted, no insignificant white space):
//!
//! ```text
//! {"args_digest":"…","client":…,"decision":"allow","front_end":"cli","hash":"…",
//!  "prev":"…","reason":null,"request_id":"…","result":{…},"seq":7,
//!  "tenant":"default","time":"2026-11-24T10:00:00.123Z","tool":"run"}
//! ```
//!
//! `seq` counts from 1; `prev` is the previous line's `hash` (64 zeros for the first
//! line); `hash` is the SHA-256 (hex) of `prev` followed by the canonical line without
//! its `hash` key. Editing, removing or reordering a line breaks the chain at that line.
//!
//! Removing lines from the end cannot break a chain, so a small head record
//! (`<log>.head`: the last seq and hash) is rewritten with every append; `verify`
//! compares the end of the chain against it.
//!
//! Writers in many threads and in several processes (a CLI and an MCP server at once)
//! serialise on an in-process mutex and an exclusive `flock` on the log file, held
//! around reading the last line, appending and updating the head record.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Length of a head record: 20-digit seq, space, 64 hex digits, newline.
const HEAD_LEN: usize = 20 + 1 + 64 + 1;

/// One request, as the gate records it (front ends cannot build one: only the
/// gate writes the log).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AuditEntry {
    pub request_id: String,
    /// `cli`, `mcp-stdio` or `mcp-http`.
    pub front_end: String,
    pub client: Option<String>,
    /// The tenant the request counted against.
    pub tenant: String,
    pub tool: String,
    /// SHA-256 hex of the canonical JSON of the arguments (see [`digest_args`]).
    pub args_digest: String,
    /// `allow`, `deny` or `error`.
    pub decision: String,
    pub reason: Option<String>,
    /// A summary of the result (exit_code, timed_out, duration_ms, ...).
    pub result: Value,
}

/// An append-only, hash-chained audit log. `Send + Sync`: share one per process.
#[derive(Debug)]
pub(crate) struct AuditLog {
    path: PathBuf,
    inner: Mutex<Files>,
    /// The hash of the policy bundle that decides requests, written on every line.
    policy: std::sync::RwLock<Option<String>>,
}

#[derive(Debug)]
struct Files {
    log: File,
    head: File,
}

impl AuditLog {
    /// Opens (creating if needed, mode 0600, parent directories 0700) the log at `path`.
    pub fn open(path: PathBuf) -> Result<AuditLog, io::Error> {
        let open_log = || {
            OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
        };
        // The directory exists on every open but the first.
        let log = match open_log() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)?;
                }
                open_log()?
            }
            other => other?,
        };
        let head = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(head_path(&path))?;
        Ok(AuditLog {
            path,
            inner: Mutex::new(Files { log, head }),
            policy: std::sync::RwLock::new(None),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names the policy bundle (its hash) on every line appended from now on: set
    /// when the service loads its policy, and again when a server reloads it.
    pub fn set_policy(&self, bundle_hash: &str) {
        let mut p = self.policy.write().unwrap_or_else(|e| e.into_inner());
        *p = Some(bundle_hash.to_string());
    }

    /// Appends one line, chained to the current last line.
    pub fn append(&self, entry: AuditEntry) -> Result<(), io::Error> {
        // A panic in another thread while it held the mutex leaves nothing half-done
        // that the file lock does not also cover, so a poisoned mutex is still usable.
        let mut files = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let _lock = FileLock::exclusive(&files.log)?;
        let (last, needs_newline) = last_record(&mut files.log)?;
        let (seq, prev) = match last {
            Some((seq, hash)) => (seq + 1, hash),
            None => (1, GENESIS.to_string()),
        };
        let mut obj = Map::new();
        obj.insert("seq".into(), Value::from(seq));
        obj.insert("time".into(), Value::String(rfc3339_now()));
        obj.insert("request_id".into(), Value::String(entry.request_id));
        obj.insert("front_end".into(), Value::String(entry.front_end));
        obj.insert("client".into(), opt_str(entry.client));
        obj.insert("tenant".into(), Value::String(entry.tenant));
        obj.insert("tool".into(), Value::String(entry.tool));
        obj.insert("args_digest".into(), Value::String(entry.args_digest));
        obj.insert("decision".into(), Value::String(entry.decision));
        obj.insert("reason".into(), opt_str(entry.reason));
        obj.insert("result".into(), entry.result);
        let policy = self
            .policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(p) = policy {
            obj.insert("policy".into(), Value::String(p));
        }
        obj.insert("prev".into(), Value::String(prev.clone()));
        let hash = chain_hash(&prev, &obj);
        obj.insert("hash".into(), Value::String(hash.clone()));
        let mut line = String::new();
        if needs_newline {
            // A writer died mid-line: end its torn line so ours stands on its own;
            // `verify` reports the torn line.
            line.push('\n');
        }
        line.push_str(&canonical(&Value::Object(obj)));
        line.push('\n');
        files.log.write_all(line.as_bytes())?;
        let head = format!("{seq:020} {hash}\n");
        files.head.write_all_at(head.as_bytes(), 0)?;
        Ok(())
    }
}

fn opt_str(s: Option<String>) -> Value {
    s.map(Value::String).unwrap_or(Value::Null)
}

fn head_path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_os_string();
    s.push(".head");
    PathBuf::from(s)
}

/// An advisory `flock` held until dropped. Holds the raw descriptor: the `File` it
/// came from is declared before the lock and so outlives it.
struct FileLock(RawFd);

impl FileLock {
    fn exclusive(f: &File) -> io::Result<Self> {
        Self::take(f.as_raw_fd(), libc::LOCK_EX)
    }
    fn shared(f: &File) -> io::Result<Self> {
        Self::take(f.as_raw_fd(), libc::LOCK_SH)
    }
    fn take(fd: RawFd, op: libc::c_int) -> io::Result<Self> {
        loop {
            // SAFETY: flock on an open file descriptor; no memory is involved.
            let rc = unsafe { libc::flock(fd, op) };
            if rc == 0 {
                return Ok(FileLock(fd));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            libc::flock(self.0, libc::LOCK_UN);
        }
    }
}

/// The last well-formed record's (seq, hash), reading backwards from the end, and
/// whether the file ends without a newline (a torn last line).
fn last_record(f: &mut File) -> io::Result<(Option<(u64, String)>, bool)> {
    let len = f.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok((None, false));
    }
    let mut last_byte = [0u8; 1];
    f.read_exact_at(&mut last_byte, len - 1)?;
    let needs_newline = last_byte[0] != b'\n';
    // Read backwards in growing chunks. `window` holds bytes [pos, end) where `end` is
    // the start of the last line already found unusable (initially the file's end).
    let mut pos = len;
    let mut window: Vec<u8> = Vec::new();
    let mut chunk = 8192u64;
    loop {
        let start = pos.saturating_sub(chunk);
        let mut buf = vec![0u8; (pos - start) as usize];
        f.read_exact_at(&mut buf, start)?;
        buf.extend_from_slice(&window);
        window = buf;
        pos = start;
        let mut end = window.len();
        while end > 0 {
            let line_end = if window[end - 1] == b'\n' {
                end - 1
            } else {
                end
            };
            let line_start = match window[..line_end].iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None if pos == 0 => 0,
                None => break, // the line starts before the window: read more
            };
            if let Some(rec) = parse_seq_hash(&window[line_start..line_end]) {
                return Ok((Some(rec), needs_newline));
            }
            end = line_start;
        }
        if pos == 0 {
            return Ok((None, needs_newline));
        }
        window.truncate(end);
        chunk = chunk.saturating_mul(2);
    }
}

fn parse_seq_hash(line: &[u8]) -> Option<(u64, String)> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let seq = v.get("seq")?.as_u64()?;
    let hash = v.get("hash")?.as_str()?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((seq, hash.to_string()))
}

/// `sha256(prev || canonical(obj without "hash"))`, hex.
fn chain_hash(prev: &str, obj: &Map<String, Value>) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(canonical_object(obj, Some("hash")).as_bytes());
    hex::encode(h.finalize())
}

/// SHA-256 hex of the canonical JSON of `v`.
pub(crate) fn digest_args(v: &Value) -> String {
    hex::encode(Sha256::digest(canonical(v).as_bytes()))
}

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no white space, strings and
/// numbers as serde_json writes them. Independent of serde_json's `preserve_order`.
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn canonical_object(m: &Map<String, Value>, skip: Option<&str>) -> String {
    let mut out = String::new();
    write_object(m, skip, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => write_object(m, None, out),
        Value::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        // Scalars: serde_json's own compact form (cannot fail for a Value).
        other => out.push_str(&other.to_string()),
    }
}

fn write_object(m: &Map<String, Value>, skip: Option<&str>, out: &mut String) {
    let mut keys: Vec<&String> = m.keys().filter(|k| Some(k.as_str()) != skip).collect();
    keys.sort();
    out.push('{');
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String((*k).clone()).to_string());
        out.push(':');
        if let Some(v) = m.get(*k) {
            write_canonical(v, out);
        }
    }
    out.push('}');
}

/// Now, as RFC 3339 UTC with milliseconds (`2026-11-24T10:00:00.123Z`).
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_millis())
}

/// Formats seconds since the Unix epoch (UTC) as RFC 3339.
pub fn rfc3339(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// What is wrong at the first bad line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// Not a JSON object with the chain fields (also a torn, half-written line).
    Malformed,
    /// The content no longer matches its hash, or a line's hash was recomputed so
    /// that the next line's `prev` no longer matches it.
    Edited,
    /// One or more lines before this one are missing.
    Removed,
    /// The line is out of order (or duplicated).
    Reordered,
    /// Lines were removed from the end (the head record is ahead of the log).
    Truncated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyProblem {
    /// 1-based line number in the file.
    pub line: u64,
    pub kind: ProblemKind,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Lines read.
    pub lines: u64,
    /// The last good line's seq and hash.
    pub last_seq: u64,
    pub last_hash: String,
    /// The first problem; `None` when the whole chain is intact.
    pub problem: Option<VerifyProblem>,
    /// Whether a head record was found and compared.
    pub head_checked: bool,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

struct Parsed {
    seq: u64,
    prev: String,
    hash: String,
    obj: Map<String, Value>,
}

fn parse_line(line: &str) -> Result<Parsed, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(obj) = v else {
        return Err("not a JSON object".into());
    };
    let seq = obj
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or("no numeric \"seq\"")?;
    let prev = obj
        .get("prev")
        .and_then(Value::as_str)
        .ok_or("no \"prev\"")?
        .to_string();
    let hash = obj
        .get("hash")
        .and_then(Value::as_str)
        .ok_or("no \"hash\"")?
        .to_string();
    Ok(Parsed {
        seq,
        prev,
        hash,
        obj,
    })
}

/// Checks the whole chain of the log at `path` (and its head record) and names the
/// first bad line. A missing log is an empty, intact log.
pub fn verify(path: &Path) -> Result<VerifyReport, io::Error> {
    let mut report = VerifyReport {
        lines: 0,
        last_seq: 0,
        last_hash: GENESIS.to_string(),
        problem: None,
        head_checked: false,
    };
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(e),
    };
    let mut content = Vec::new();
    let head = {
        let _lock = FileLock::shared(&file)?;
        file.read_to_end(&mut content)?;
        read_head(path)?
    };
    let text = String::from_utf8_lossy(&content);
    let mut lines: Vec<&str> = text.split('\n').collect();
    let torn = !content.is_empty() && content.last() != Some(&b'\n');
    if !torn {
        lines.pop(); // the empty piece after the final newline
    }
    // Where each seq appears, to tell a reordered line from a removed one.
    let seqs: Vec<Option<u64>> = lines
        .iter()
        .map(|l| parse_seq_hash(l.as_bytes()).map(|(s, _)| s))
        .collect();
    let mut hashes: Vec<String> = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let n = i as u64 + 1;
        report.lines = n;
        let bad = |kind, message: String| {
            Some(VerifyProblem {
                line: n,
                kind,
                message,
            })
        };
        let rec = match parse_line(line) {
            Ok(r) => r,
            Err(why) => {
                let why = if torn && i + 1 == lines.len() {
                    format!("{why}; the last line is incomplete (torn write or truncated)")
                } else {
                    why
                };
                report.problem = bad(ProblemKind::Malformed, format!("line {n}: {why}"));
                return Ok(report);
            }
        };
        if chain_hash(&rec.prev, &rec.obj) != rec.hash {
            report.problem = bad(
                ProblemKind::Edited,
                format!(
                    "line {n} (seq {}) was edited: its hash does not match its content",
                    rec.seq
                ),
            );
            return Ok(report);
        }
        let expected = report.last_seq + 1;
        if rec.seq != expected {
            let found_later = seqs[i + 1..].contains(&Some(expected));
            report.problem = if rec.seq < expected || found_later {
                bad(
                    ProblemKind::Reordered,
                    format!(
                        "line {n} is out of order: seq {} where seq {expected} was expected",
                        rec.seq
                    ),
                )
            } else {
                let missing = if rec.seq - 1 == expected {
                    format!("seq {expected} is")
                } else {
                    format!("seq {expected}..={} are", rec.seq - 1)
                };
                bad(
                    ProblemKind::Removed,
                    format!("lines are missing before line {n}: {missing} not in the log"),
                )
            };
            return Ok(report);
        }
        if rec.prev != report.last_hash {
            // Same seq, self-consistent, but does not chain: the line before was
            // rewritten (hash recomputed) or this line's prev was.
            report.problem = if i > 0 {
                Some(VerifyProblem {
                    line: n - 1,
                    kind: ProblemKind::Edited,
                    message: format!(
                        "line {} (seq {}) was edited: its hash is not the one line {n} chains to",
                        n - 1,
                        report.last_seq
                    ),
                })
            } else {
                bad(
                    ProblemKind::Edited,
                    format!("line {n}: the first line must chain to the genesis hash"),
                )
            };
            return Ok(report);
        }
        report.last_seq = rec.seq;
        report.last_hash = rec.hash.clone();
        hashes.push(rec.hash);
    }
    if let Some((head_seq, head_hash)) = head {
        report.head_checked = true;
        if head_seq > report.last_seq {
            report.problem = Some(VerifyProblem {
                line: report.lines + 1,
                kind: ProblemKind::Truncated,
                message: format!(
                    "the log ends at seq {} but its head record says seq {head_seq}: lines were removed from the end",
                    report.last_seq
                ),
            });
        } else if head_seq >= 1 {
            // The head may trail the log by a line if a writer died between the two
            // writes; it must still name a line of this chain.
            let at = hashes.get((head_seq - 1) as usize);
            if at != Some(&head_hash) {
                report.problem = Some(VerifyProblem {
                    line: head_seq,
                    kind: ProblemKind::Edited,
                    message: format!(
                        "line {head_seq} does not match the head record's hash: the log was rewritten"
                    ),
                });
            }
        }
    }
    Ok(report)
}

/// The head record (seq, hash), or `None` when absent or empty.
fn read_head(log: &Path) -> io::Result<Option<(u64, String)>> {
    let mut buf = Vec::new();
    match File::open(head_path(log)) {
        Ok(mut f) => {
            f.read_to_end(&mut buf)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    if buf.is_empty() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&buf);
    let rec = text.get(..HEAD_LEN - 1).and_then(|s| {
        let (seq, hash) = s.split_once(' ')?;
        Some((seq.parse::<u64>().ok()?, hash.to_string()))
    });
    match rec {
        Some(r) => Ok(Some(r)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: malformed head record", head_path(log).display()),
        )),
    }
}

/// The last `n` lines, each parsed (a line that is not JSON comes back as a string).
pub fn tail(path: &Path, n: usize) -> Result<Vec<Value>, io::Error> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if n == 0 {
        return Ok(Vec::new());
    }
    // Read backwards until n newlines (plus one) are in hand.
    let len = file.seek(SeekFrom::End(0))?;
    let mut pos = len;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = 16384u64;
    while pos > 0 {
        let start = pos.saturating_sub(chunk);
        let mut part = vec![0u8; (pos - start) as usize];
        file.read_exact_at(&mut part, start)?;
        part.extend_from_slice(&buf);
        buf = part;
        pos = start;
        if buf.iter().filter(|&&b| b == b'\n').count() > n {
            break;
        }
        chunk = chunk.saturating_mul(2);
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    if pos > 0 && !lines.is_empty() {
        lines.remove(0); // partial first line of the window
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines[skip..]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String((*l).to_string())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn entry(i: usize) -> AuditEntry {
        AuditEntry {
            request_id: format!("req-{i}"),
            front_end: "cli".into(),
            client: Some("tester".into()),
            tenant: "default".into(),
            tool: "run".into(),
            args_digest: digest_args(&json!({"command": ["echo", i]})),
            decision: "allow".into(),
            reason: None,
            result: json!({"exit_code": 0, "timed_out": false, "duration_ms": i}),
        }
    }

    fn log_with(n: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("audit.jsonl");
        let log = AuditLog::open(path.clone()).expect("open");
        for i in 0..n {
            log.append(entry(i)).expect("append");
        }
        (dir, path)
    }

    fn read_lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .expect("read")
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn write_lines(p: &Path, lines: &[String]) {
        let mut s = lines.join("\n");
        s.push('\n');
        std::fs::write(p, s).expect("write");
    }

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_795_000_000, 999), "2026-11-18T11:06:40.999Z");
        assert_eq!(rfc3339(-1, 0), "1969-12-31T23:59:59.000Z");
    }

    #[test]
    fn canonical_sorts_keys_and_digest_is_stable() {
        let a = json!({"b": 1, "a": {"y": [1, "x"], "x": null}});
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,"x"]},"b":1}"#).expect("json");
        assert_eq!(canonical(&a), r#"{"a":{"x":null,"y":[1,"x"]},"b":1}"#);
        assert_eq!(digest_args(&a), digest_args(&b));
        assert_eq!(digest_args(&a).len(), 64);
    }

    #[test]
    fn append_then_verify_ok() {
        let (_d, path) = log_with(5);
        let r = verify(&path).expect("verify");
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.lines, 5);
        assert_eq!(r.last_seq, 5);
        assert!(r.head_checked);
        let lines = read_lines(&path);
        let first: Value = serde_json::from_str(&lines[0]).expect("json");
        assert_eq!(first["seq"], 1);
        assert_eq!(first["prev"], GENESIS);
        assert_eq!(first["front_end"], "cli");
        assert_eq!(first["decision"], "allow");
        assert!(first["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        let mode = std::fs::metadata(&path).expect("meta");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        // Reopening continues the chain.
        let log = AuditLog::open(path.clone()).expect("reopen");
        log.append(entry(9)).expect("append");
        assert!(verify(&path).expect("verify").is_ok());
    }

    #[test]
    fn missing_log_is_empty_and_ok() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("none.jsonl");
        assert!(verify(&p).expect("verify").is_ok());
        assert!(tail(&p, 3).expect("tail").is_empty());
    }

    #[test]
    fn detects_edit() {
        let (_d, path) = log_with(5);
        let mut lines = read_lines(&path);
        lines[2] = lines[2].replace("\"exit_code\":0", "\"exit_code\":1");
        write_lines(&path, &lines);
        let r = verify(&path).expect("verify");
        let p = r.problem.expect("problem");
        assert_eq!((p.line, p.kind), (3, ProblemKind::Edited), "{}", p.message);
    }

    #[test]
    fn detects_edit_with_recomputed_hash() {
        let (_d, path) = log_with(5);
        let mut lines = read_lines(&path);
        let Value::Object(mut obj) = serde_json::from_str(&lines[1]).expect("json") else {
            panic!("not an object")
        };
        obj.insert("decision".into(), json!("deny"));
        let prev = obj["prev"].as_str().expect("prev").to_string();
        let h = chain_hash(&prev, &obj);
        obj.insert("hash".into(), json!(h));
        lines[1] = canonical(&Value::Object(obj));
        write_lines(&path, &lines);
        let p = verify(&path).expect("verify").problem.expect("problem");
        assert_eq!((p.line, p.kind), (2, ProblemKind::Edited), "{}", p.message);
    }

    #[test]
    fn detects_removal() {
        let (_d, path) = log_with(6);
        let mut lines = read_lines(&path);
        lines.remove(3);
        write_lines(&path, &lines);
        let p = verify(&path).expect("verify").problem.expect("problem");
        assert_eq!((p.line, p.kind), (4, ProblemKind::Removed), "{}", p.message);
    }

    #[test]
    fn detects_reorder() {
        let (_d, path) = log_with(6);
        let mut lines = read_lines(&path);
        lines.swap(2, 3);
        write_lines(&path, &lines);
        let p = verify(&path).expect("verify").problem.expect("problem");
        assert_eq!(
            (p.line, p.kind),
            (3, ProblemKind::Reordered),
            "{}",
            p.message
        );
    }

    #[test]
    fn detects_truncation_at_end() {
        let (_d, path) = log_with(6);
        let lines = read_lines(&path);
        write_lines(&path, &lines[..4]);
        let p = verify(&path).expect("verify").problem.expect("problem");
        assert_eq!(
            (p.line, p.kind),
            (5, ProblemKind::Truncated),
            "{}",
            p.message
        );
    }

    #[test]
    fn detects_torn_last_line_and_appends_after_it() {
        let (_d, path) = log_with(3);
        let content = std::fs::read(&path).expect("read");
        std::fs::write(&path, &content[..content.len() - 20]).expect("write");
        let p = verify(&path).expect("verify").problem.expect("problem");
        assert_eq!(
            (p.line, p.kind),
            (3, ProblemKind::Malformed),
            "{}",
            p.message
        );
        // A new append still works and starts on its own line, chained to line 2.
        let log = AuditLog::open(path.clone()).expect("open");
        log.append(entry(7)).expect("append");
        let lines = read_lines(&path);
        assert_eq!(lines.len(), 4);
        let last: Value = serde_json::from_str(&lines[3]).expect("json");
        assert_eq!(last["seq"], 3);
        let p = verify(&path).expect("verify").problem.expect("problem");
        assert_eq!(p.line, 3);
    }

    #[test]
    fn tail_returns_last_n() {
        let (_d, path) = log_with(10);
        let t = tail(&path, 3).expect("tail");
        let seqs: Vec<u64> = t.iter().filter_map(|v| v["seq"].as_u64()).collect();
        assert_eq!(seqs, vec![8, 9, 10]);
        assert_eq!(tail(&path, 100).expect("tail").len(), 10);
        assert!(tail(&path, 0).expect("tail").is_empty());
    }

    #[test]
    fn tail_with_long_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(path.clone()).expect("open");
        for i in 0..5 {
            let mut e = entry(i);
            e.reason = Some("x".repeat(40_000));
            log.append(e).expect("append");
        }
        let t = tail(&path, 2).expect("tail");
        assert_eq!(t.len(), 2);
        assert_eq!(t[1]["seq"], 5);
        assert!(verify(&path).expect("verify").is_ok());
    }

    #[test]
    fn eight_threads_fifty_appends_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = Arc::new(AuditLog::open(path.clone()).expect("open"));
        // Half the threads share one AuditLog, half open their own (as separate
        // processes would): both must serialise.
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let shared = Arc::clone(&log);
                let p = path.clone();
                std::thread::spawn(move || {
                    let own = if t % 2 == 0 {
                        None
                    } else {
                        Some(AuditLog::open(p).expect("open"))
                    };
                    for i in 0..50 {
                        let l = own.as_ref().unwrap_or(&shared);
                        l.append(entry(t * 100 + i)).expect("append");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("join");
        }
        let r = verify(&path).expect("verify");
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.lines, 400);
        assert_eq!(r.last_seq, 400);
    }
}
