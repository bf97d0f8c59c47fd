//! Running the jail from any thread. The jail must be set up from a single-threaded
//! process; a multi-threaded caller (the MCP server) re-executes its own binary as
//! a helper that runs the jail and streams framed output back over a pipe:
//! `[tag: u8][len: u32 LE][bytes]`, tag 1 stdout, 2 stderr, 3 outcome (JSON),
//! 4 error (JSON `{kind, message}`).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use aisbx_jail::{JailError, Outcome, Sink, Spec, Stdin};

use crate::sandbox::RunHold;
use crate::{CancelToken, OutputSink, ServiceError};

/// The hidden first argument that turns a binary into the helper.
pub const HELPER_ARG: &str = "__aisbx_jail_helper";

const TAG_STDOUT: u8 = 1;
const TAG_STDERR: u8 = 2;
const TAG_OUTCOME: u8 = 3;
const TAG_ERROR: u8 = 4;
/// No frame is larger than this (output arrives in 64 KiB chunks).
const MAX_FRAME: usize = 16 << 20;

struct Adapter<'a> {
    sink: &'a mut dyn OutputSink,
    stop: Stop<'a>,
}

/// When a run must end early: the caller cancelled it, or its sandbox is being
/// destroyed.
#[derive(Clone, Copy)]
struct Stop<'a> {
    cancel: &'a CancelToken,
    hold: Option<&'a RunHold>,
}

impl Stop<'_> {
    fn now(&self) -> bool {
        self.cancel.is_cancelled() || self.hold.is_some_and(RunHold::removed)
    }
}

impl Sink for Adapter<'_> {
    fn stdout(&mut self, d: &[u8]) {
        self.sink.stdout(d)
    }
    fn stderr(&mut self, d: &[u8]) {
        self.sink.stderr(d)
    }
    fn cancelled(&mut self) -> bool {
        self.stop.now()
    }
}

fn map_err(e: JailError) -> ServiceError {
    match e {
        JailError::LayerMissing { .. } | JailError::InvalidSpec(_) => {
            ServiceError::Refused(e.to_string())
        }
        other => ServiceError::Internal(other.to_string()),
    }
}

fn error_kind(e: &ServiceError) -> &'static str {
    match e {
        ServiceError::Refused(_) => "refused",
        _ => "internal",
    }
}

/// Run the jail here when this process is single-threaded, else in a helper. The
/// jail checks the thread count itself before it does anything, so its refusal is
/// the signal to use the helper.
pub(crate) fn run_jail(
    spec: &Spec,
    sink: &mut dyn OutputSink,
    cancel: &CancelToken,
    hold: Option<&RunHold>,
) -> Result<Outcome, ServiceError> {
    let stop = Stop { cancel, hold };
    match aisbx_jail::run(spec, &mut Adapter { sink, stop }) {
        Err(JailError::NotSingleThreaded) => run_in_helper(spec, sink, stop),
        other => other.map_err(map_err),
    }
}

/// If this process was started as the helper, run it and exit.
pub fn maybe_run_helper() {
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == HELPER_ARG) {
        std::process::exit(helper_main());
    }
}

struct FrameSink {
    out: std::io::Stdout,
}

impl FrameSink {
    fn frame(&mut self, tag: u8, data: &[u8]) {
        let mut lock = self.out.lock();
        let _ = lock.write_all(&[tag]);
        let _ = lock.write_all(&(data.len() as u32).to_le_bytes());
        let _ = lock.write_all(data);
        let _ = lock.flush();
    }
}

impl Sink for FrameSink {
    fn stdout(&mut self, d: &[u8]) {
        self.frame(TAG_STDOUT, d)
    }
    fn stderr(&mut self, d: &[u8]) {
        self.frame(TAG_STDERR, d)
    }
}

fn helper_main() -> i32 {
    let mut input = Vec::new();
    let mut sink = FrameSink {
        out: std::io::stdout(),
    };
    let spec: Result<Spec, String> = std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice(&input).map_err(|e| e.to_string()));
    let result = match spec {
        Ok(mut spec) => {
            if spec.stdin == Stdin::Inherit {
                spec.stdin = Stdin::Null;
            }
            aisbx_jail::run(&spec, &mut sink).map_err(map_err)
        }
        Err(e) => Err(ServiceError::Internal(format!(
            "the jail helper got a bad specification: {e}"
        ))),
    };
    match result {
        Ok(o) => {
            sink.frame(TAG_OUTCOME, &serde_json::to_vec(&o).unwrap_or_default());
            0
        }
        Err(e) => {
            let msg = serde_json::json!({"kind": error_kind(&e), "message": e.to_string()});
            sink.frame(TAG_ERROR, msg.to_string().as_bytes());
            1
        }
    }
}

fn run_in_helper(
    spec: &Spec,
    sink: &mut dyn OutputSink,
    stop: Stop<'_>,
) -> Result<Outcome, ServiceError> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| {
        ServiceError::Internal(format!(
            "cannot find the aisbx binary to run the jail helper: {e}"
        ))
    })?;
    let mut cmd = Command::new(exe);
    cmd.arg(HELPER_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: prctl is async-signal-safe. The helper ends its run cleanly (killing
    // the sandbox, removing its cgroups) when this thread goes away.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ServiceError::Internal(format!("cannot start the jail helper: {e}")))?;
    let spec_json = serde_json::to_vec(spec).map_err(|e| ServiceError::Internal(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // The helper reads the whole specification before it does anything else.
        let _ = stdin.write_all(&spec_json);
    }
    let Some(mut out) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(ServiceError::Internal(
            "the jail helper has no output pipe".into(),
        ));
    };
    let fd = out.as_raw_fd();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut result: Option<Result<Outcome, ServiceError>> = None;
    let mut signalled = false;
    loop {
        if !signalled && stop.now() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            signalled = true;
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, 100) };
        if n == 0 {
            continue;
        }
        let r = match out.read(&mut chunk) {
            Ok(0) => break,
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        buf.extend_from_slice(&chunk[..r]);
        // Decode every complete frame.
        let mut off = 0;
        while buf.len() - off >= 5 {
            let len = u32::from_le_bytes([buf[off + 1], buf[off + 2], buf[off + 3], buf[off + 4]])
                as usize;
            if len > MAX_FRAME {
                result = Some(Err(ServiceError::Internal(
                    "the jail helper sent a malformed frame".into(),
                )));
                break;
            }
            if buf.len() - off < 5 + len {
                break;
            }
            let data = &buf[off + 5..off + 5 + len];
            match buf[off] {
                TAG_STDOUT => sink.stdout(data),
                TAG_STDERR => sink.stderr(data),
                TAG_OUTCOME => {
                    result = Some(serde_json::from_slice(data).map_err(|e| {
                        ServiceError::Internal(format!("bad outcome from the jail helper: {e}"))
                    }))
                }
                TAG_ERROR => {
                    let v: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
                    let msg = v["message"]
                        .as_str()
                        .unwrap_or("the jail helper failed")
                        .to_string();
                    result = Some(Err(if v["kind"] == "refused" {
                        ServiceError::Refused(msg)
                    } else {
                        ServiceError::Internal(msg)
                    }));
                }
                _ => {
                    result = Some(Err(ServiceError::Internal(
                        "the jail helper sent an unknown frame".into(),
                    )))
                }
            }
            off += 5 + len;
        }
        buf.drain(..off);
    }
    let status = child.wait();
    result.unwrap_or_else(|| {
        Err(ServiceError::Internal(format!(
            "the jail helper ended without a result ({})",
            status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string())
        )))
    })
}
