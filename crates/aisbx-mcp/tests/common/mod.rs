//! Helpers for the integration tests: the real `aisbx-mcp` binary, a line-based
//! JSON-RPC client over its stdio, and a small raw HTTP/1.1 client for Streamable HTTP.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The `aisbx-mcp` binary (empty where these helpers drive `aisbx mcp` instead:
/// the CLI's suite includes this file).
pub const BIN: &str = match option_env!("CARGO_BIN_EXE_aisbx-mcp") {
    Some(b) => b,
    None => "",
};

/// The MCP server: `aisbx-mcp`, or in the CLI's suite `aisbx [ARGS] mcp`, where
/// `ARGS` are global options of the CLI (`--policy DIR`).
pub fn server_command(cli_args: &[&str]) -> Command {
    if !BIN.is_empty() {
        return Command::new(BIN);
    }
    let cli = match option_env!("CARGO_BIN_EXE_aisbx") {
        Some(b) => b,
        None => panic!("neither aisbx-mcp nor aisbx was built for this test"),
    };
    let mut c = Command::new(cli);
    c.args(cli_args).arg("mcp");
    c
}
pub const PROTOCOL: &str = "2025-06-18";

/// A state directory for one test. As root, persistent sandboxes mount their disks
/// under it; those still mounted are detached when it goes.
pub struct Home(tempfile::TempDir);

impl Home {
    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let prefix = format!("{}/", self.0.path().display());
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for p in info.lines().filter_map(|l| l.split(' ').nth(4)) {
            if let Some(c) = p
                .starts_with(&prefix)
                .then(|| std::ffi::CString::new(p).ok())
                .flatten()
            {
                // SAFETY: a valid C string; detaching a mount of our own test.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

pub fn home() -> Home {
    Home(
        tempfile::Builder::new()
            .prefix("aisbx-mcp-test-")
            .tempdir()
            .expect("tempdir"),
    )
}

pub fn initialize_request(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": PROTOCOL,
        "capabilities": {},
        "clientInfo": {"name": "aisbx-it", "version": "1.0"}
    }})
}

/// Processes whose command line contains `marker` (e.g. a unique sleep duration).
pub fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                found.push(pid);
            }
        }
    }
    found
}

/// Waits until no process carries `marker`; returns whether that happened in time.
pub fn wait_gone(marker: &str, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if processes_with(marker).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    processes_with(marker).is_empty()
}

/// Waits until some process carries `marker`.
pub fn wait_present(marker: &str, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if !processes_with(marker).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A unique `sleep` argument, so a test can find its own process.
pub fn unique_sleep() -> String {
    let n = std::process::id() % 1000;
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 1000)
        .unwrap_or(0);
    static C: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let c = C.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{}.{:03}{:03}{}", 40 + c, n, t, c)
}

// ---------- stdio ----------

pub struct StdioServer {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Messages read while waiting for something else.
    pub backlog: Vec<Value>,
}

impl StdioServer {
    pub fn start(home: &Path) -> StdioServer {
        StdioServer::start_with(home, &[])
    }

    /// Starts the server with arguments (for `aisbx mcp`, the CLI's own before
    /// `mcp`).
    pub fn start_with(home: &Path, args: &[&str]) -> StdioServer {
        let mut cmd = if BIN.is_empty() {
            server_command(args)
        } else {
            let mut c = Command::new(BIN);
            c.args(args);
            c
        };
        let mut child = cmd
            .env("AISBX_HOME", home)
            .env_remove("AISBX_MCP_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn aisbx-mcp");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        StdioServer {
            child,
            stdin,
            lines: rx,
            backlog: Vec::new(),
        }
    }

    /// Starts and completes the initialize handshake.
    pub fn start_initialized(home: &Path) -> StdioServer {
        let mut s = StdioServer::start(home);
        let r = s.request(initialize_request(0));
        assert!(r.get("result").is_some(), "initialize failed: {r}");
        s.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        s
    }

    pub fn send_raw(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).expect("write");
        stdin.write_all(b"\n").expect("write");
        stdin.flush().expect("flush");
    }

    pub fn send(&mut self, v: &Value) {
        self.send_raw(&v.to_string());
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next message from the server.
    pub fn recv(&mut self, timeout: Duration) -> Option<Value> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("server wrote non-JSON to stdout ({e}): {line}")),
        )
    }

    /// Waits for the response with this id, keeping other messages in the backlog.
    pub fn response(&mut self, id: u64, timeout: Duration) -> Value {
        if let Some(i) = self
            .backlog
            .iter()
            .position(|m| m.get("id") == Some(&json!(id)) && m.get("method").is_none())
        {
            return self.backlog.remove(i);
        }
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let m = self
                .recv(left)
                .unwrap_or_else(|| panic!("no response to request {id} in {timeout:?}"));
            if m.get("id") == Some(&json!(id)) && m.get("method").is_none() {
                return m;
            }
            self.backlog.push(m);
        }
    }

    pub fn request(&mut self, v: Value) -> Value {
        let id = v["id"].as_u64().expect("numeric id");
        self.send(&v);
        self.response(id, Duration::from_secs(60))
    }

    pub fn call(&mut self, id: u64, tool: &str, args: Value) -> Value {
        self.request(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": args}}))
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for StdioServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------- HTTP ----------

pub struct HttpServer {
    pub child: Child,
    pub addr: SocketAddr,
    /// The bearer token of the state directory's `mcp-token`, when the server uses it.
    pub token: Option<String>,
    /// Everything the server printed to stderr so far.
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Starts `aisbx-mcp ARGS...` and waits for the line naming where it serves; returns
/// the child, that line's parsed address (if TCP), and the stderr lines.
fn spawn_server(
    home: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (Child, String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    // `aisbx mcp`: the CLI's `--policy DIR` goes before `mcp`, the server's
    // arguments after it.
    let (cli, args): (Vec<&str>, Vec<&str>) = if BIN.is_empty() {
        let cli = match args.iter().position(|a| *a == "--policy") {
            Some(i) if i + 1 < args.len() => vec![args[i], args[i + 1]],
            _ => Vec::new(),
        };
        let rest = args.iter().copied().filter(|a| !cli.contains(a)).collect();
        (cli, rest)
    } else {
        (Vec::new(), args.to_vec())
    };
    let mut cmd = server_command(&cli);
    cmd.env("AISBX_HOME", home)
        .env_remove("AISBX_MCP_TOKEN")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn aisbx-mcp");
    let stderr = child.stderr.take().expect("stderr");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let l2 = lines.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("[server] {line}");
            l2.lock().expect("lock").push(line.clone());
            if line.contains("serving MCP")
                && let Some(t) = tx.take()
            {
                let _ = t.send(line);
            }
        }
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            panic!(
                "the server did not say where it serves: {:?}",
                lines.lock().expect("lock")
            )
        }
    };
    (child, line, lines)
}

impl HttpServer {
    /// Starts `aisbx-mcp --http 127.0.0.1:0 EXTRA...` and reads the bound address
    /// (and the state directory's token, if the server uses it).
    pub fn start(home: &Path, extra: &[&str], envs: &[(&str, &str)]) -> HttpServer {
        HttpServer::start_at(home, "127.0.0.1:0", extra, envs)
    }

    /// Starts `aisbx-mcp --http ADDR EXTRA...`.
    pub fn start_at(home: &Path, addr: &str, extra: &[&str], envs: &[(&str, &str)]) -> HttpServer {
        let mut args = vec!["--http", addr];
        args.extend_from_slice(extra);
        let (child, line, stderr) = spawn_server(home, &args, envs);
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split("/mcp").next())
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let token = line
            .contains("mcp-token")
            .then(|| std::fs::read_to_string(home.join("mcp-token")).expect("read mcp-token"))
            .map(|t| t.trim().to_string());
        HttpServer {
            child,
            addr,
            token,
            stderr,
        }
    }

    /// An initialized session with the server's token.
    pub fn session(&self) -> Session {
        Session::open(self.addr, self.token.as_deref())
    }

    /// The `Authorization` header for raw requests.
    pub fn auth(&self) -> Vec<(&'static str, String)> {
        self.token
            .iter()
            .map(|t| ("Authorization", format!("Bearer {t}")))
            .collect()
    }
}

/// `aisbx-mcp --listen unix:PATH`.
pub struct UnixServer {
    pub child: Child,
    pub path: PathBuf,
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl UnixServer {
    pub fn start(home: &Path, path: &Path) -> UnixServer {
        UnixServer::start_with(home, path, &[])
    }

    /// `aisbx-mcp --listen unix:PATH EXTRA...`.
    pub fn start_with(home: &Path, path: &Path, extra: &[&str]) -> UnixServer {
        let spec = format!("unix:{}", path.display());
        let mut args = vec!["--listen", spec.as_str()];
        args.extend_from_slice(extra);
        let (child, _line, stderr) = spawn_server(home, &args, &[]);
        UnixServer {
            child,
            path: path.to_path_buf(),
            stderr,
        }
    }
}

impl Drop for UnixServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request over a Unix socket; reads the whole response.
pub fn http_unix(
    path: &Path,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> HttpResponse {
    let mut s = std::os::unix::net::UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    write_request(&mut s, "localhost", method, headers, body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    parse_response(&raw)
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// JSON-RPC messages in the body (an SSE stream or one JSON document).
    pub fn messages(&self) -> Vec<Value> {
        let text = String::from_utf8_lossy(&self.body);
        if self
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
        {
            return serde_json::from_str(&text).into_iter().collect();
        }
        let mut out = Vec::new();
        for event in text.split("\n\n") {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue;
            }
            if let Ok(v) = serde_json::from_str::<Value>(&data.join("\n")) {
                out.push(v);
            }
        }
        out
    }

    /// The response (not a notification) among the messages.
    pub fn rpc(&self) -> Value {
        self.messages()
            .into_iter()
            .find(|m| m.get("id").is_some() && m.get("method").is_none())
            .unwrap_or_else(|| {
                panic!(
                    "no JSON-RPC response in {} {:?}",
                    self.status,
                    String::from_utf8_lossy(&self.body)
                )
            })
    }
}

/// One HTTP/1.1 request with `Connection: close`; reads the whole response.
pub fn http(
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> HttpResponse {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    write_request(&mut s, &addr.to_string(), method, headers, body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    parse_response(&raw)
}

/// Sends a request and returns the open stream (to drop it mid-call).
pub fn http_start(
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    write_request(&mut s, &addr.to_string(), method, headers, body);
    s
}

fn write_request(
    s: &mut impl Write,
    host: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} /mcp HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("host") {
        req.push_str(&format!("Host: {host}\r\n"));
    }
    if !has("accept") {
        req.push_str("Accept: application/json, text/event-stream\r\n");
    }
    if !has("content-type") && method == "POST" {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).expect("write request");
}

pub fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let size =
            usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        b = &b[eol + 2..];
        if size == 0 || b.len() < size {
            out.extend_from_slice(&b[..size.min(b.len())]);
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[(size + 2).min(b.len())..];
    }
    out
}

/// An initialized HTTP session.
pub struct Session {
    pub addr: SocketAddr,
    pub id: String,
    pub auth: Option<String>,
}

impl Session {
    pub fn open(addr: SocketAddr, auth: Option<&str>) -> Session {
        let auth = auth.map(|t| format!("Bearer {t}"));
        let mut h: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            h.push(("Authorization", a));
        }
        let r = http(addr, "POST", &h, Some(&initialize_request(0)));
        assert_eq!(
            r.status,
            200,
            "initialize: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let id = r
            .header("mcp-session-id")
            .expect("mcp-session-id")
            .to_string();
        let s = Session { addr, id, auth };
        let n = s.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        assert!(
            n.status == 202 || n.status == 200,
            "initialized: {}",
            n.status
        );
        s
    }

    pub fn headers(&self) -> Vec<(&str, &str)> {
        let mut h = vec![
            ("Mcp-Session-Id", self.id.as_str()),
            ("MCP-Protocol-Version", PROTOCOL),
        ];
        if let Some(a) = &self.auth {
            h.push(("Authorization", a.as_str()));
        }
        h
    }

    pub fn post(&self, v: &Value) -> HttpResponse {
        http(self.addr, "POST", &self.headers(), Some(v))
    }

    pub fn call(&self, id: u64, tool: &str, args: Value) -> HttpResponse {
        self.post(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": args}}))
    }
}

pub fn home_path(d: &Home) -> PathBuf {
    d.path().to_path_buf()
}
