//! TEMPORARY stand-in for `aisbx_service::Service` while service.rs is being written.
//! NOT a sandbox: it runs programs directly. To be deleted before this crate is done.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aisbx_service::audit::{AuditEntry, AuditLog, digest_args};
use aisbx_service::{
    BuildRequest, BuildResult, CancelToken, OutputSink, ProfileInfo, ProfileList, Program,
    RequestMeta, RunRequest, RunResult, ServiceError,
};

pub struct ServiceConfig {
    pub home: Option<PathBuf>,
}

#[derive(Clone)]
pub struct Service(Arc<Inner>);

struct Inner {
    home: PathBuf,
    audit: AuditLog,
}

pub fn maybe_run_helper() {}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Service {
    pub fn open(cfg: ServiceConfig) -> Result<Service, ServiceError> {
        let home = cfg
            .home
            .or_else(|| std::env::var_os("AISBX_HOME").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/tmp/aisbx-standin"));
        std::fs::create_dir_all(&home).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let audit = AuditLog::open(home.join("audit.jsonl"))
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok(Service(Arc::new(Inner { home, audit })))
    }

    pub fn home(&self) -> &Path {
        &self.0.home
    }

    pub fn audit_log(&self) -> &AuditLog {
        &self.0.audit
    }

    fn audit(&self, meta: &RequestMeta, args: serde_json::Value, result: serde_json::Value) {
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = self.0.audit.append(AuditEntry {
            request_id: format!("{}-{id}", std::process::id()),
            front_end: meta.front_end.clone(),
            client: meta.client.clone(),
            tool: meta.tool.clone(),
            args_digest: digest_args(&args),
            decision: "allow".into(),
            reason: None,
            result,
        });
    }

    pub fn run(
        &self,
        meta: &RequestMeta,
        req: RunRequest,
        sink: &mut dyn OutputSink,
        cancel: &CancelToken,
    ) -> Result<RunResult, ServiceError> {
        let args = serde_json::to_value(&req).unwrap_or_default();
        let dir = match &req.sandbox_id {
            Some(id) => {
                let d = self.0.home.join("sandboxes").join(id);
                if !d.is_dir() {
                    return Err(ServiceError::NoSuchSandbox(id.clone()));
                }
                d
            }
            None => {
                let d = self.0.home.join("tmp").join(format!(
                    "run-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                ));
                std::fs::create_dir_all(&d).map_err(|e| ServiceError::Internal(e.to_string()))?;
                d
            }
        };
        for (p, c) in &req.files {
            let f = dir.join(p);
            if let Some(parent) = f.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            std::fs::write(&f, c).map_err(|e| ServiceError::Internal(e.to_string()))?;
        }
        let argv: Vec<String> = match &req.program {
            Program::Command(a) => a.clone(),
            Program::Code { language, code } => match language.as_str() {
                "python" => vec!["python3".into(), "-c".into(), code.clone()],
                "bash" | "sh" => vec![language.clone(), "-c".into(), code.clone()],
                "node" => vec!["node".into(), "-e".into(), code.clone()],
                other => return Err(ServiceError::invalid("language", format!("unknown {other}"))),
            },
            Program::File(_) => return Err(ServiceError::Refused("no files".into())),
        };
        let r = self.exec(&argv, &dir, req.stdin.clone(), req.limits.timeout_secs, sink, cancel);
        if req.sandbox_id.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let mut r = r?;
        r.sandbox_id = req.sandbox_id.clone();
        self.audit(meta, args, serde_json::json!({"exit_code": r.exit_code, "timed_out": r.timed_out, "duration_ms": r.duration_ms}));
        Ok(r)
    }

    fn exec(
        &self,
        argv: &[String],
        dir: &Path,
        stdin: Option<Vec<u8>>,
        timeout: Option<f64>,
        sink: &mut dyn OutputSink,
        cancel: &CancelToken,
    ) -> Result<RunResult, ServiceError> {
        let start = Instant::now();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(dir)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(RunResult {
                    exit_code: Some(127),
                    signal: None,
                    timed_out: false,
                    oom_killed: false,
                    stdout: String::new(),
                    stderr: format!("{}: not found\n", argv[0]),
                    stdout_truncated: false,
                    stderr_truncated: false,
                    duration_ms: 0,
                    cpu_ms: 0,
                    max_rss_kib: 0,
                    profile: "standin".into(),
                    sandbox_id: None,
                });
            }
            Err(e) => return Err(ServiceError::Internal(e.to_string())),
        };
        if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
            std::thread::spawn(move || {
                use std::io::Write;
                let _ = w.write_all(&data);
            });
        }
        let (tx, rx) = mpsc::channel::<(u8, Vec<u8>)>();
        let mut readers = Vec::new();
        for (n, pipe) in [
            (1u8, child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
            (2u8, child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
        ] {
            if let Some(mut p) = pipe {
                let tx = tx.clone();
                readers.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    while let Ok(k) = p.read(&mut buf) {
                        if k == 0 || tx.send((n, buf[..k].to_vec())).is_err() {
                            break;
                        }
                    }
                }));
            }
        }
        drop(tx);
        let pid = child.id() as i32;
        let deadline = start + Duration::from_secs_f64(timeout.unwrap_or(30.0));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut timed_out = false;
        let mut killed = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(10)) {
                Ok((1, d)) => {
                    sink.stdout(&d);
                    out.extend_from_slice(&d);
                }
                Ok((_, d)) => {
                    sink.stderr(&d);
                    err.extend_from_slice(&d);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if !killed && (cancel.is_cancelled() || Instant::now() > deadline) {
                timed_out = !cancel.is_cancelled();
                unsafe {
                    libc_kill(-pid);
                }
                killed = true;
            }
        }
        let status = child.wait().map_err(|e| ServiceError::Internal(e.to_string()))?;
        for r in readers {
            let _ = r.join();
        }
        use std::os::unix::process::ExitStatusExt;
        Ok(RunResult {
            exit_code: status.code(),
            signal: status.signal(),
            timed_out,
            oom_killed: false,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: start.elapsed().as_millis() as u64,
            cpu_ms: 0,
            max_rss_kib: 0,
            profile: "standin".into(),
            sandbox_id: None,
        })
    }

    pub fn build(
        &self,
        meta: &RequestMeta,
        req: BuildRequest,
        cancel: &CancelToken,
    ) -> Result<BuildResult, ServiceError> {
        let id = req.name.clone().unwrap_or_else(|| {
            format!("sb-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
        });
        let dir = self.0.home.join("sandboxes").join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| ServiceError::Internal(e.to_string()))?;
        for (p, c) in &req.files {
            std::fs::write(dir.join(p), c).map_err(|e| ServiceError::Internal(e.to_string()))?;
        }
        let mut setup = Vec::new();
        for s in &req.setup {
            let r = self.exec(
                &["sh".into(), "-c".into(), s.clone()],
                &dir,
                None,
                None,
                &mut aisbx_service::NullSink,
                cancel,
            )?;
            let ok = r.exit_code == Some(0);
            setup.push(r);
            if !ok {
                break;
            }
        }
        self.audit(meta, serde_json::to_value(&req).unwrap_or_default(), serde_json::json!({"sandbox_id": id}));
        Ok(BuildResult {
            sandbox_id: id,
            profile: req.profile.unwrap_or_else(|| "default".into()),
            created_at: aisbx_service::audit::rfc3339_now(),
            setup,
        })
    }

    pub fn profile_list(&self, meta: &RequestMeta) -> Result<ProfileList, ServiceError> {
        self.audit(meta, serde_json::json!({}), serde_json::json!({}));
        Ok(ProfileList {
            profiles: vec![ProfileInfo {
                name: "default".into(),
                description: "stand-in".into(),
                language: None,
                extends: vec![],
                available: true,
            }],
        })
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn c_kill(pid: i32, sig: i32) -> i32;
}

unsafe fn libc_kill(pid: i32) {
    unsafe {
        c_kill(pid, 9);
    }
}
