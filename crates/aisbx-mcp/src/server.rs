//! The MCP server handler: maps tool calls to the service, streams output as progress
//! notifications and log messages, and turns cancellation and disconnects into
//! `CancelToken::cancel()`.

// Logging is deprecated by SEP-2577 in newer protocol revisions, but it is part of the
// revisions our clients speak and of aisbx's contract (`logging/setLevel`).
#![allow(deprecated)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use aisbx_service::{
    CallIo, CancelToken, NoProgress, NullSink, OutputSink, Request, RequestMeta, Response,
    ServiceError,
};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, LoggingLevel, LoggingMessageNotificationParam,
    PaginatedRequestParams, ProgressNotificationParam, ProgressToken, ServerCapabilities,
    ServerConfig, SetLevelRequestParams, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, Peer, RoleServer, ServerHandler};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admission::{Admission, NotAdmitted};
use crate::backend::Service;
use crate::redact;
use crate::tools::{self, ArgError};

/// Which transport a server instance answers on (the audit log's `front_end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontEnd {
    Stdio,
    Http,
}

impl FrontEnd {
    pub fn name(self) -> &'static str {
        match self {
            FrontEnd::Stdio => "mcp-stdio",
            FrontEnd::Http => "mcp-http",
        }
    }
}

/// Set on an HTTP request by the server's middleware; cancelled when the client goes
/// away before its response was sent.
#[derive(Debug, Clone)]
pub struct DisconnectToken(pub CancellationToken);

/// Most output bytes forwarded as notifications per stream and call (the result still
/// carries the captured output).
const MAX_STREAMED_BYTES: usize = 1024 * 1024;
/// Largest message of one progress notification.
const MAX_NOTIFY_CHUNK: usize = 16 * 1024;

/// What every instance (one per stdio connection or HTTP session) shares.
pub struct Shared {
    pub service: Service,
    pub tools: Arc<Vec<Tool>>,
    /// How many runs may go on at once, and wait.
    pub admission: Admission,
    /// The tenant of stdio clients, of the server's own token and of Unix-socket
    /// peers of the server's own user (`--tenant`, else its uid's).
    pub tenant: String,
    /// The tenant of a root peer on the Unix socket (its uid's in `tenants.toml`).
    pub root_tenant: String,
}

/// One MCP server instance.
#[derive(Clone)]
pub struct AisbxServer {
    shared: Arc<Shared>,
    front_end: FrontEnd,
    /// The session's minimum log level (`logging/setLevel`).
    level: Arc<Mutex<LoggingLevel>>,
}

fn level_rank(l: LoggingLevel) -> u8 {
    match l {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

fn arg_error(e: ArgError) -> McpError {
    McpError::invalid_params(e.to_string(), Some(json!({ "field": e.field })))
}

/// The tool result for a service error, by the rule of docs/MCP.md: an argument the
/// request itself gets wrong is JSON-RPC -32602 naming the request's field; what the
/// server understood but could not carry out (a missing sandbox or snapshot, a name
/// taken, a limit or policy, aisbx's own failure) is an `isError` result with one
/// sentence and a hint in MCP's terms. No host path reaches the client: aisbx's own
/// failures become a sentence with a reference (the detail goes to the server's
/// log), and other messages have the state directory and home replaced.
fn service_error(
    e: ServiceError,
    home: &Path,
    tool: &str,
    arguments: Option<&JsonObject>,
) -> Result<CallToolResponse, McpError> {
    let e = cut_echoes(e, arguments);
    match e {
        ServiceError::InvalidArgument { field, message } => {
            let message = mcp_terms(&redact::text(&message, home));
            if about_state(&message) {
                return Ok(tool_error(message));
            }
            Err(arg_error(ArgError {
                field: request_field(tool, &field, &message, arguments),
                message,
            }))
        }
        ServiceError::NoSuchSandbox(id) => Ok(tool_error(format!(
            "no sandbox named '{}': sandbox_list shows the sandboxes; build or snapshot_restore makes one",
            crate::protocol::cut(&id)
        ))),
        ServiceError::Internal(detail) => {
            let reference = aisbx_service::new_id("err");
            tracing::error!(%reference, %detail, "a call failed inside aisbx");
            Ok(tool_error(format!(
                "aisbx failed internally (reference {reference}); the server's log has the details"
            )))
        }
        other => Ok(tool_error(mcp_terms(&redact::text(
            &other.to_string(),
            home,
        )))),
    }
}

/// The service's message with every long value of the request it repeats cut to
/// [`crate::protocol::MAX_ECHO_BYTES`].
fn cut_echoes(e: ServiceError, arguments: Option<&JsonObject>) -> ServiceError {
    fn long_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::String(s) if s.len() > crate::protocol::MAX_ECHO_BYTES => out.push(s),
            Value::Array(a) => a.iter().for_each(|x| long_strings(x, out)),
            Value::Object(m) => {
                for (k, x) in m {
                    if k.len() > crate::protocol::MAX_ECHO_BYTES {
                        out.push(k);
                    }
                    long_strings(x, out);
                }
            }
            _ => {}
        }
    }
    let Some(args) = arguments else { return e };
    let mut long = Vec::new();
    for (k, v) in args {
        if k.len() > crate::protocol::MAX_ECHO_BYTES {
            long.push(k.as_str());
        }
        long_strings(v, &mut long);
    }
    if long.is_empty() {
        return e;
    }
    // Longest first, so a value inside another is not cut twice.
    long.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let cut = |m: String| {
        long.iter()
            .fold(m, |m, s| m.replace(*s, &crate::protocol::cut(s)))
    };
    match e {
        ServiceError::InvalidArgument { field, message } => ServiceError::InvalidArgument {
            field,
            message: cut(message),
        },
        ServiceError::Refused(m) => ServiceError::Refused(cut(m)),
        ServiceError::NotFound(m) => ServiceError::NotFound(cut(m)),
        ServiceError::NoSuchSandbox(m) => ServiceError::NoSuchSandbox(m),
        ServiceError::Internal(m) => ServiceError::Internal(m),
    }
}

/// Whether a refused argument is about the server's state (a name that does not
/// exist or is taken) rather than the request itself.
fn about_state(message: &str) -> bool {
    message.contains("does not exist")
        || message.contains("already exists")
        || message.starts_with("no snapshot named")
        || message.contains("no profile named")
}

/// The service's hints speak of the command line; MCP clients get theirs.
fn mcp_terms(text: &str) -> String {
    let mut t = text
        .replace(
            "list them with `aisbx snap list`",
            "snapshot_list shows the snapshots",
        )
        .replace("memory_bytes ", "memory ")
        // The CLI's flags, as the MCP arguments that do the same.
        .replace(" --lang", " `language`")
        .replace(" --profile", " `profile`")
        .replace(" --timeout", " `timeout_secs`")
        .replace(" --memory", " `memory`")
        .replace(" --cpus", " `cpus`");
    if t.contains("no profile named") {
        t.push_str("; profile_list shows the profiles");
    }
    if t.contains("already exists") {
        t.push_str("; choose another name, or delete it first (sandbox_destroy, snapshot_delete)");
    }
    // Any other hint naming an aisbx command or flag is cut at the clause it starts.
    if let Some(at) = t.find("`aisbx ").or_else(|| t.find(" --")) {
        let clause = t[..at].rfind([':', ';']).unwrap_or(at);
        t.truncate(clause);
        t.push_str(
            ": choose a profile that profile_list shows as available, or ask the server's user",
        );
    }
    t
}

/// The request's own name of a field the service named.
fn request_field(tool: &str, field: &str, message: &str, arguments: Option<&JsonObject>) -> String {
    let mapped = match (tool, field) {
        ("snapshot_restore", "name") => "sandbox_id",
        ("snapshot_create" | "snapshot_restore" | "snapshot_delete", "snapshot") => "name",
        ("snapshot_diff", "snapshot") => {
            let from = arguments
                .and_then(|a| a.get("from"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !from.is_empty() && message.contains(&format!("'{from}'")) {
                "from"
            } else {
                "to"
            }
        }
        ("build", "sandbox_id") => "name",
        (_, "memory_bytes") => "memory",
        (_, f) => f,
    };
    if tools::fields_of(tool).contains(&mapped) {
        mapped.to_string()
    } else {
        "arguments".to_string()
    }
}

/// The audit line's `client`: the client's self-reported name, preceded by the tenant
/// the request authenticated as and, for a token of the tenants file, that token's id
/// (`tenant=acme; token=3f9a1c0d2b7e; client=claude-code`). Tenant names and token
/// ids have no spaces, so these come first and unambiguous whatever the client calls
/// itself.
pub fn client_field(tenant: Option<(&str, Option<&str>)>, name: Option<String>) -> Option<String> {
    let Some((t, id)) = tenant else {
        return name;
    };
    let mut s = format!("tenant={t}");
    if let Some(id) = id {
        s.push_str(&format!("; token={id}"));
    }
    if let Some(n) = name {
        s.push_str(&format!("; client={n}"));
    }
    Some(s)
}

/// The tenant and the audit `client` of a request: the tenant comes from the
/// HTTP credential (a tenant token or an access token's claim), else from the
/// Unix-socket peer's uid, else it is the server's own (stdio, the server's own
/// token). `ext`: the HTTP request's extensions (none on stdio).
pub fn caller_of(
    ext: Option<&axum::http::Extensions>,
    shared: &Shared,
    name: Option<String>,
) -> (String, Option<String>) {
    let authenticated = ext
        .and_then(|e| e.get::<crate::http::Authenticated>())
        .and_then(|a| match a {
            crate::http::Authenticated::Tenant { name, token_id } => {
                Some((name.as_str(), token_id.as_deref()))
            }
            crate::http::Authenticated::ServerToken => None,
        });
    let peer_uid = ext
        .and_then(|e| e.get::<axum::extract::ConnectInfo<crate::http::UnixPeer>>())
        .and_then(|c| c.0.uid);
    let tenant = match (authenticated, peer_uid) {
        (Some((t, _)), _) => t.to_string(),
        (None, Some(0)) => shared.root_tenant.clone(),
        (None, _) => shared.tenant.clone(),
    };
    (tenant, client_field(authenticated, name))
}

fn tool_error(text: String) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(text)]).into()
}

fn structured(summary: String, value: Value) -> CallToolResponse {
    let mut r = CallToolResult::success(vec![ContentBlock::text(summary)]);
    r.structured_content = Some(value);
    r.into()
}

/// Cancels the run if the handler's future is dropped before the run returned (the
/// transport went away): nothing may be left running.
struct CancelOnDrop(CancelToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

enum Chunk {
    Out(Vec<u8>),
    Err(Vec<u8>),
}

/// Forwards output from the service's blocking thread to the async side.
struct ChannelSink {
    tx: mpsc::UnboundedSender<Chunk>,
    out_left: usize,
    err_left: usize,
}

impl ChannelSink {
    fn take(left: &mut usize, data: &[u8]) -> Option<Vec<u8>> {
        let n = data.len().min(*left);
        if n == 0 {
            return None;
        }
        *left -= n;
        Some(data[..n].to_vec())
    }
}

impl OutputSink for ChannelSink {
    fn stdout(&mut self, data: &[u8]) {
        if let Some(d) = Self::take(&mut self.out_left, data) {
            let _ = self.tx.send(Chunk::Out(d));
        }
    }
    fn stderr(&mut self, data: &[u8]) {
        if let Some(d) = Self::take(&mut self.err_left, data) {
            let _ = self.tx.send(Chunk::Err(d));
        }
    }
}

/// Splits off the longest valid UTF-8 prefix, keeping an incomplete trailing sequence
/// for the next chunk; invalid bytes are replaced.
fn take_text(pending: &mut Vec<u8>) -> String {
    match std::str::from_utf8(pending) {
        Ok(s) => {
            let s = s.to_string();
            pending.clear();
            s
        }
        Err(e) if e.error_len().is_none() => {
            // An incomplete sequence at the end: keep it.
            let valid = e.valid_up_to();
            let rest = pending.split_off(valid);
            let s = String::from_utf8_lossy(pending).into_owned();
            *pending = rest;
            s
        }
        Err(_) => {
            let s = String::from_utf8_lossy(pending).into_owned();
            pending.clear();
            s
        }
    }
}

/// How often buffered output is sent at most (unless [`MAX_NOTIFY_CHUNK`] fills first).
const NOTIFY_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Sends output as progress notifications (and log messages at `info`), coalesced:
/// at most one per stream per [`NOTIFY_EVERY`], or sooner when [`MAX_NOTIFY_CHUNK`]
/// bytes are waiting; nothing is lost.
struct Streamer {
    peer: Peer<RoleServer>,
    token: ProgressToken,
    level: Arc<Mutex<LoggingLevel>>,
    sent_bytes: u64,
    /// Bytes not yet valid UTF-8 (a sequence cut between chunks).
    out_pending: Vec<u8>,
    err_pending: Vec<u8>,
    /// Text waiting for the next send.
    out_text: String,
    err_text: String,
}

impl Streamer {
    fn new(peer: Peer<RoleServer>, token: ProgressToken, level: Arc<Mutex<LoggingLevel>>) -> Self {
        Streamer {
            peer,
            token,
            level,
            sent_bytes: 0,
            out_pending: Vec::new(),
            err_pending: Vec::new(),
            out_text: String::new(),
            err_text: String::new(),
        }
    }

    async fn send(&mut self, stream: &'static str, text: String) {
        if text.is_empty() {
            return;
        }
        self.sent_bytes += text.len() as u64;
        let message = if stream == "stderr" {
            format!("[stderr] {text}")
        } else {
            text.clone()
        };
        let p = ProgressNotificationParam::new(self.token.clone(), self.sent_bytes as f64)
            .with_message(message);
        // A failed send means the client is gone; the run is cancelled elsewhere.
        let _ = self.peer.notify_progress(p).await;
        let wanted = self
            .level
            .lock()
            .map(|l| level_rank(LoggingLevel::Info) >= level_rank(*l))
            .unwrap_or(true);
        if wanted {
            let log = LoggingMessageNotificationParam::new(
                LoggingLevel::Info,
                json!({ "stream": stream, "text": text }),
            )
            .with_logger("aisbx.run");
            let _ = self.peer.notify_logging_message(log).await;
        }
    }

    /// Takes in a chunk; sends at once only what fills whole [`MAX_NOTIFY_CHUNK`]s.
    async fn chunk(&mut self, c: Chunk) {
        let stream = match c {
            Chunk::Out(d) => {
                self.out_pending.extend_from_slice(&d);
                let t = take_text(&mut self.out_pending);
                self.out_text.push_str(&t);
                "stdout"
            }
            Chunk::Err(d) => {
                self.err_pending.extend_from_slice(&d);
                let t = take_text(&mut self.err_pending);
                self.err_text.push_str(&t);
                "stderr"
            }
        };
        loop {
            let text = if stream == "stdout" {
                &mut self.out_text
            } else {
                &mut self.err_text
            };
            if text.len() < MAX_NOTIFY_CHUNK {
                break;
            }
            let mut cut = MAX_NOTIFY_CHUNK;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let rest = text.split_off(cut);
            let piece = std::mem::replace(text, rest);
            self.send(stream, piece).await;
        }
    }

    fn waiting(&self) -> bool {
        !self.out_text.is_empty() || !self.err_text.is_empty()
    }

    /// Sends what is waiting.
    async fn flush(&mut self) {
        let out = std::mem::take(&mut self.out_text);
        self.send("stdout", out).await;
        let err = std::mem::take(&mut self.err_text);
        self.send("stderr", err).await;
    }

    async fn finish(&mut self) {
        let out = String::from_utf8_lossy(&std::mem::take(&mut self.out_pending)).into_owned();
        self.out_text.push_str(&out);
        let err = String::from_utf8_lossy(&std::mem::take(&mut self.err_pending)).into_owned();
        self.err_text.push_str(&err);
        self.flush().await;
    }
}

impl AisbxServer {
    pub fn new(shared: Arc<Shared>, front_end: FrontEnd) -> Self {
        AisbxServer {
            shared,
            front_end,
            level: Arc::new(Mutex::new(LoggingLevel::Info)),
        }
    }

    /// Who asks: see [`caller_of`].
    fn meta(&self, tool: &str, ctx: &RequestContext<RoleServer>) -> RequestMeta {
        let name = ctx.peer.peer_info().map(|i| i.client_info.name.clone());
        let ext = ctx
            .extensions
            .get::<axum::http::request::Parts>()
            .map(|p| &p.extensions);
        let (tenant, client) = caller_of(ext, &self.shared, name);
        RequestMeta {
            front_end: self.front_end.name().to_string(),
            client,
            tool: tool.to_string(),
            tenant,
        }
    }

    /// Records a request the front end refused before it reached the service.
    fn audit_refusal(&self, meta: &RequestMeta, args: &Value, e: &ArgError) {
        self.shared.service.record_refusal(
            meta,
            args,
            &e.to_string(),
            json!({ "error": "invalid_params", "field": e.field }),
        );
    }

    fn home(&self) -> &Path {
        self.shared.service.home()
    }

    /// A run slot, or the refusal to answer with (busy, or cancelled while waiting).
    async fn admit(
        &self,
        meta: &RequestMeta,
        arguments: Option<&JsonObject>,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, CallToolResponse> {
        let disconnected = Self::disconnect_token(ctx);
        let refusal = tokio::select! {
            r = self.shared.admission.admit(&ctx.ct) => match r {
                Ok(permit) => return Ok(permit),
                Err(e) => e,
            },
            _ = disconnected.cancelled() => NotAdmitted::Cancelled,
        };
        self.shared.service.record_refusal(
            meta,
            &tools::args_value(arguments),
            &refusal.to_string(),
            json!({ "error": match refusal {
                NotAdmitted::Busy { .. } => "busy",
                NotAdmitted::Cancelled => "cancelled",
            }}),
        );
        Err(tool_error(refusal.to_string()))
    }

    fn disconnect_token(ctx: &RequestContext<RoleServer>) -> CancellationToken {
        ctx.extensions
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.extensions.get::<DisconnectToken>())
            .map(|t| t.0.clone())
            .unwrap_or_default()
    }

    async fn call_run(
        &self,
        arguments: Option<&JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let meta = self.meta("run", &ctx);
        let (req, dry_run) = match tools::parse_run_call(arguments) {
            Ok(r) => r,
            Err(e) => {
                self.audit_refusal(&meta, &tools::args_value(arguments), &e);
                return Err(arg_error(e));
            }
        };
        if dry_run {
            // Nothing runs: no run slot is taken.
            let service = self.shared.service.clone();
            let home = self.home().to_path_buf();
            let outcome = tokio::task::spawn_blocking(move || {
                match service.call_quiet(&meta, Request::Plan(req), &CancelToken::default()) {
                    Ok(Response::Plan(p)) => Ok(redact::run_plan(p, &home)),
                    Ok(other) => Err(unexpected(other)),
                    Err(e) => Err(e),
                }
            })
            .await;
            return respond(outcome, self.home(), "run", arguments, tools::plan_summary);
        }
        let _slot = match self.admit(&meta, arguments, &ctx).await {
            Ok(p) => p,
            Err(refusal) => return Ok(refusal),
        };
        let cancel = CancelToken::default();
        let _guard = CancelOnDrop(cancel.clone());
        let progress = ctx.meta.get_progress_token();
        let (tx, mut rx) = mpsc::unbounded_channel::<Chunk>();
        let sink: Box<dyn OutputSink> = if progress.is_some() {
            Box::new(ChannelSink {
                tx,
                out_left: MAX_STREAMED_BYTES,
                err_left: MAX_STREAMED_BYTES,
            })
        } else {
            drop(tx);
            Box::new(NullSink)
        };
        let mut streamer =
            progress.map(|token| Streamer::new(ctx.peer.clone(), token, self.level.clone()));
        let mut tick = tokio::time::interval(NOTIFY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let service = self.shared.service.clone();
        let run_cancel = cancel.clone();
        let mut task = tokio::task::spawn_blocking(move || {
            let mut sink = sink;
            let io = CallIo {
                sink: sink.as_mut(),
                cancel: &run_cancel,
                progress: &mut NoProgress,
            };
            match service.call(&meta, Request::Run(req), io) {
                Ok(Response::Run(r)) => Ok(r),
                Ok(other) => Err(unexpected(other)),
                Err(e) => Err(e),
            }
        });
        let disconnected = Self::disconnect_token(&ctx);
        let mut rx_open = true;
        let outcome = loop {
            tokio::select! {
                res = &mut task => break res,
                _ = ctx.ct.cancelled(), if !cancel.is_cancelled() => {
                    tracing::info!("run cancelled by the client");
                    cancel.cancel();
                }
                _ = disconnected.cancelled(), if !cancel.is_cancelled() => {
                    tracing::info!("client disconnected: cancelling its run");
                    cancel.cancel();
                }
                _ = tick.tick(), if streamer.as_ref().is_some_and(Streamer::waiting) => {
                    if let Some(s) = streamer.as_mut() {
                        s.flush().await;
                    }
                }
                c = rx.recv(), if rx_open => match c {
                    Some(c) => {
                        if let Some(s) = streamer.as_mut() {
                            s.chunk(c).await;
                        }
                    }
                    None => rx_open = false,
                },
            }
        };
        // The sink is dropped with the finished task: drain what it left.
        if let Some(s) = streamer.as_mut() {
            while let Ok(c) = rx.try_recv() {
                s.chunk(c).await;
            }
            s.finish().await;
        }
        respond(outcome, self.home(), "run", arguments, tools::run_summary)
    }

    async fn call_build(
        &self,
        arguments: Option<&JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let meta = self.meta("build", &ctx);
        let req = match tools::parse_build(arguments) {
            Ok(r) => r,
            Err(e) => {
                self.audit_refusal(&meta, &tools::args_value(arguments), &e);
                return Err(arg_error(e));
            }
        };
        let _slot = match self.admit(&meta, arguments, &ctx).await {
            Ok(p) => p,
            Err(refusal) => return Ok(refusal),
        };
        let service = self.shared.service.clone();
        let setup = req.setup.clone();
        let outcome = Self::cancellable(&ctx, move |cancel| {
            match service.call_quiet(&meta, Request::Build(req), cancel) {
                Ok(Response::Build(b)) => Ok(b),
                Ok(other) => Err(unexpected(other)),
                Err(e) => Err(e),
            }
        })
        .await;
        if let Ok(Ok(b)) = &outcome
            && let Some(text) = tools::build_failure(b, &setup)
        {
            let value = serde_json::to_value(b)
                .map_err(|e| McpError::internal_error(e.to_string(), None))?;
            let mut r = CallToolResult::error(vec![ContentBlock::text(text)]);
            r.structured_content = Some(value);
            return Ok(r.into());
        }
        respond(
            outcome,
            self.home(),
            "build",
            arguments,
            tools::build_summary,
        )
    }

    async fn call_profile_list(
        &self,
        arguments: Option<&JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let meta = self.meta("profile_list", &ctx);
        if let Err(e) = tools::parse_profile_list(arguments) {
            self.audit_refusal(&meta, &tools::args_value(arguments), &e);
            return Err(arg_error(e));
        }
        let service = self.shared.service.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let request = Request::ProfileList { project: None };
            match service.call_quiet(&meta, request, &CancelToken::default()) {
                Ok(Response::ProfileList { list, .. }) => Ok(redact::profile_list(list)),
                Ok(other) => Err(unexpected(other)),
                Err(e) => Err(e),
            }
        })
        .await;
        respond(
            outcome,
            self.home(),
            "profile_list",
            arguments,
            tools::profile_list_summary,
        )
    }
}

impl AisbxServer {
    /// The sandbox, file and snapshot tools: parse, run on a blocking thread, and
    /// return the result as `structuredContent` with a readable summary.
    async fn call_sandbox_tool(
        &self,
        tool: &str,
        arguments: Option<&JsonObject>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let meta = self.meta(tool, &ctx);
        let call = match tools::parse_sandbox_call(tool, arguments) {
            Ok(c) => c,
            Err(e) => {
                self.audit_refusal(&meta, &tools::args_value(arguments), &e);
                return Err(arg_error(e));
            }
        };
        // file_write and file_delete are sandbox runs: they take a run slot like `run`.
        let _slot = if call.runs() {
            match self.admit(&meta, arguments, &ctx).await {
                Ok(p) => Some(p),
                Err(refusal) => return Ok(refusal),
            }
        } else {
            None
        };
        let service = self.shared.service.clone();
        let outcome = Self::cancellable(&ctx, move |cancel| {
            run_sandbox_call(&service, &meta, call, cancel)
        })
        .await;
        match outcome {
            Ok(Ok((summary, value))) => Ok(structured(summary, value)),
            Ok(Err(e)) => service_error(e, self.home(), tool, arguments),
            Err(join) => service_error(
                ServiceError::Internal(format!("the worker thread failed: {join}")),
                self.home(),
                tool,
                arguments,
            ),
        }
    }

    /// Run `f` on a blocking thread with a cancel token that fires when the client
    /// cancels the request or disconnects, or when this future is dropped.
    async fn cancellable<T: Send + 'static>(
        ctx: &RequestContext<RoleServer>,
        f: impl FnOnce(&CancelToken) -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let cancel = CancelToken::default();
        let _guard = CancelOnDrop(cancel.clone());
        let task_cancel = cancel.clone();
        let mut task = tokio::task::spawn_blocking(move || f(&task_cancel));
        let disconnected = Self::disconnect_token(ctx);
        loop {
            tokio::select! {
                res = &mut task => break res,
                _ = ctx.ct.cancelled(), if !cancel.is_cancelled() => cancel.cancel(),
                _ = disconnected.cancelled(), if !cancel.is_cancelled() => cancel.cancel(),
            }
        }
    }
}

/// A service result as a tool response: `structuredContent` plus a readable
/// summary, or the service's refusal as `isError`.
fn respond<T: serde::Serialize>(
    outcome: Result<Result<T, ServiceError>, tokio::task::JoinError>,
    home: &Path,
    tool: &str,
    arguments: Option<&JsonObject>,
    summary: impl FnOnce(&T) -> String,
) -> Result<CallToolResponse, McpError> {
    match outcome {
        Ok(Ok(result)) => {
            let value = serde_json::to_value(&result)
                .map_err(|e| McpError::internal_error(e.to_string(), None))?;
            Ok(structured(summary(&result), value))
        }
        Ok(Err(e)) => service_error(e, home, tool, arguments),
        Err(join) => service_error(
            ServiceError::Internal(format!("the worker thread failed: {join}")),
            home,
            tool,
            arguments,
        ),
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, ServiceError> {
    serde_json::to_value(v).map_err(|e| ServiceError::Internal(e.to_string()))
}

/// A response of another kind than the request's: a bug, reported as one.
fn unexpected(r: Response) -> ServiceError {
    ServiceError::Internal(format!(
        "the service answered with an unexpected result: {r:?}"
    ))
}

/// Carry out one sandbox, file or snapshot call (blocking) through the service's
/// gate, which decides and audits it.
fn run_sandbox_call(
    service: &Service,
    meta: &RequestMeta,
    call: tools::SandboxCall,
    cancel: &CancelToken,
) -> Result<(String, Value), ServiceError> {
    use aisbx_service::{FileKind, RestoreTarget, SnapSource};
    use tools::SandboxCall as C;
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    // The sandbox a snapshot is taken of or restored into, for the summary.
    let sandbox = match &call {
        C::SnapshotCreate { id, .. } | C::SnapshotRestore { id, .. } => id.clone(),
        _ => String::new(),
    };
    let request = match call {
        C::SandboxList => Request::SandboxList,
        C::SandboxDestroy { id } => Request::SandboxDestroy { id },
        C::FileWrite { id, path, content } => Request::FileWrite { id, path, content },
        C::FileDelete { id, path } => Request::FileDelete { id, path },
        C::SnapshotDelete { name } => Request::SnapshotDelete { name },
        C::FileRead { id, path } => Request::FileRead { id, path },
        C::FileList {
            id,
            path,
            recursive,
        } => Request::FileList {
            id,
            path,
            recursive,
        },
        C::SnapshotCreate { name, id } => Request::SnapshotCreate {
            name,
            source: SnapSource::Sandbox(id),
        },
        C::SnapshotRestore { name, id, profile } => Request::SnapshotRestore {
            name,
            target: RestoreTarget::Sandbox(id),
            profile,
        },
        C::SnapshotList => Request::SnapshotList { with_sharing: true },
        C::SnapshotDiff { from, to } => Request::SnapshotDiff { from, to },
        C::Quota => Request::Quota,
    };
    let (summary, value) = match service.call_quiet(meta, request, cancel)? {
        Response::SandboxList(l) => {
            let v = to_value(&redact::sandbox_list(l))?;
            (pretty(&v), v)
        }
        Response::Quota(q) => {
            let v = to_value(&q)?;
            (pretty(&v), v)
        }
        Response::SandboxDestroy(d) => {
            (format!("sandbox {} destroyed", d.sandbox_id), to_value(&d)?)
        }
        Response::FileWrite(r) => (
            format!(
                "wrote {} bytes to {} in sandbox {}",
                r.bytes, r.path, r.sandbox_id
            ),
            to_value(&r)?,
        ),
        Response::FileDelete(r) => (
            format!("deleted {} in sandbox {}", r.path, r.sandbox_id),
            to_value(&r)?,
        ),
        Response::SnapshotDelete(r) => (
            format!(
                "snapshot {} deleted ({} bytes freed)",
                r.name, r.freed_bytes
            ),
            to_value(&r)?,
        ),
        Response::FileRead(r) => {
            let s = if r.encoding == "utf-8" {
                r.content.clone()
            } else {
                format!("({} bytes, not UTF-8: base64 in structuredContent)", r.size)
            };
            (s, to_value(&r)?)
        }
        Response::FileList(r) => {
            let mut s: String = r
                .entries
                .iter()
                .map(|e| {
                    let kind = match e.kind {
                        FileKind::Dir => "dir ",
                        FileKind::File => "file",
                        FileKind::Symlink => "link",
                    };
                    format!("{kind} {:>10} {}\n", e.size, e.path)
                })
                .collect();
            if r.truncated {
                s.push_str("[more entries left out]\n");
            }
            (s, to_value(&r)?)
        }
        Response::SnapshotCreate(r) => {
            let r = redact::snapshot_info(r);
            (
                format!(
                    "snapshot {} of sandbox {sandbox}: {} files, {} bytes",
                    r.name, r.files, r.bytes
                ),
                to_value(&r)?,
            )
        }
        Response::SnapshotRestore(r) => {
            let r = redact::restore_result(r);
            (
                format!(
                    "sandbox {sandbox} restored from snapshot {}; use it with `run` and sandbox_id \"{sandbox}\"",
                    r.snapshot
                ),
                to_value(&r)?,
            )
        }
        Response::SnapshotList(l) => {
            let v = to_value(&redact::snapshot_list(l))?;
            (pretty(&v), v)
        }
        Response::SnapshotDiff(d) => {
            let mut s = String::new();
            for p in &d.added {
                s.push_str(&format!("A {p}\n"));
            }
            for p in &d.removed {
                s.push_str(&format!("D {p}\n"));
            }
            for p in &d.changed {
                s.push_str(&format!("M {p}\n"));
            }
            for f in &d.diffs {
                s.push_str(&f.unified);
            }
            if s.is_empty() {
                s = "no differences".into();
            }
            (s, to_value(&d)?)
        }
        other => return Err(unexpected(other)),
    };
    Ok((summary, value))
}

impl ServerHandler for AisbxServer {
    fn get_info(&self) -> ServerConfig {
        let mut implementation = Implementation::new("aisbx", env!("CARGO_PKG_VERSION"));
        implementation.title = Some("aisbx sandbox".to_string());
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_logging()
                .build(),
        )
        .with_server_info(implementation)
        .with_instructions(
            "aisbx runs code in an isolated Linux sandbox. Use `run` for one-off code or \
             commands (code runs in /workspace, where `files` you pass import by name). \
             For work across calls, `build` creates a persistent sandbox and returns its \
             sandbox_id; pass it to `run`, the file_* tools and snapshot_create. \
             snapshot_restore makes a NEW sandbox (its `sandbox_id`) from a snapshot \
             (its `name`). `profile_list` shows the runtimes. Sandboxes have no network \
             and cannot install packages (pip, npm, apt) unless a profile allows it. A \
             malformed request is a JSON-RPC error; a request aisbx understood but could \
             not carry out is a result with isError and a sentence saying why.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(
            self.shared.tools.as_ref().clone(),
        ))
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        match self.level.lock() {
            Ok(mut l) => *l = request.level,
            Err(poisoned) => *poisoned.into_inner() = request.level,
        }
        Ok(())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.as_ref();
        match request.name.as_ref() {
            "run" => self.call_run(args, context).await,
            "build" => self.call_build(args, context).await,
            "profile_list" => self.call_profile_list(args, context).await,
            t if tools::SANDBOX_TOOLS.contains(&t) => {
                self.call_sandbox_tool(t, args, context).await
            }
            other => Err(McpError::invalid_params(
                format!(
                    "unknown tool '{}': the tools are run, build, profile_list, {}",
                    crate::protocol::cut(other),
                    tools::SANDBOX_TOOLS.join(", ")
                ),
                Some(json!({ "field": "name" })),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_chunks_are_joined() {
        let s = "héllo";
        let bytes = s.as_bytes();
        let mut pending = bytes[..2].to_vec(); // "h" + first byte of "é"
        assert_eq!(take_text(&mut pending), "h");
        assert_eq!(pending.len(), 1);
        pending.extend_from_slice(&bytes[2..]);
        assert_eq!(take_text(&mut pending), "éllo");
        assert!(pending.is_empty());
        let mut bad = vec![b'a', 0xff, b'b'];
        assert_eq!(take_text(&mut bad), "a\u{fffd}b");
    }

    #[test]
    fn sink_caps_forwarded_bytes() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut sink = ChannelSink {
            tx,
            out_left: 5,
            err_left: 0,
        };
        sink.stdout(b"abc");
        sink.stdout(b"defg");
        sink.stdout(b"h");
        sink.stderr(b"x");
        let mut got = Vec::new();
        while let Ok(Chunk::Out(d)) = rx.try_recv() {
            got.extend(d);
        }
        assert_eq!(got, b"abcde");
    }

    #[test]
    fn service_errors_map() {
        let home = Path::new("/var/lib/aisbx-test-home");
        let e = service_error(
            ServiceError::invalid("files", "bad path"),
            home,
            "run",
            None,
        )
        .expect_err("err");
        assert_eq!(e.code, rmcp::model::ErrorCode::INVALID_PARAMS);
        assert_eq!(e.data, Some(json!({"field": "files"})));
        let Ok(CallToolResponse::Complete(r)) = service_error(
            ServiceError::Refused("no landlock".into()),
            home,
            "run",
            None,
        ) else {
            panic!("expected a tool result")
        };
        assert_eq!(r.is_error, Some(true));
    }

    #[test]
    fn long_values_are_not_echoed_whole() {
        let long = "n".repeat(100_000);
        let mut args = JsonObject::new();
        args.insert("name".into(), json!(long));
        let e = service_error(
            ServiceError::invalid("snapshot", format!("'{long}' is not a valid snapshot name")),
            Path::new("/h"),
            "snapshot_create",
            Some(&args),
        )
        .expect_err("invalid");
        assert!(e.message.len() < 400, "{}", e.message.len());
        assert_eq!(e.data, Some(json!({"field": "name"})));
    }

    #[test]
    fn errors_speak_mcp() {
        let home = Path::new("/h");
        let t = text_of(service_error(
            ServiceError::NoSuchSandbox("nope".into()),
            home,
            "run",
            None,
        ));
        assert!(t.contains("sandbox_list") && !t.contains("aisbx ls"), "{t}");
        let t = text_of(service_error(
            ServiceError::invalid(
                "snapshot",
                "no snapshot named 'x': list them with `aisbx snap list`",
            ),
            home,
            "snapshot_restore",
            None,
        ));
        assert!(
            t.contains("snapshot_list") && !t.contains("aisbx snap"),
            "{t}"
        );
        let t = text_of(service_error(
            ServiceError::Refused(
                "the project profile p is not trusted: review it, then approve them with `aisbx trust /x`, or run with --ignore-project-profiles".into(),
            ),
            home,
            "run",
            None,
        ));
        assert!(!t.contains("aisbx trust") && !t.contains("--ignore"), "{t}");
        let e = service_error(
            ServiceError::invalid(
                "language",
                "cannot tell the language of the code: no known extension; give --lang or --profile",
            ),
            home,
            "run",
            None,
        )
        .expect_err("invalid");
        assert!(
            e.message.ends_with("give `language` or `profile`"),
            "{}",
            e.message
        );
        let e = service_error(
            ServiceError::invalid("name", "'a b' is not a valid sandbox name"),
            home,
            "snapshot_restore",
            None,
        )
        .expect_err("invalid");
        assert_eq!(e.data, Some(json!({"field": "sandbox_id"})));
        let e = service_error(ServiceError::invalid("workdir", "x"), home, "run", None)
            .expect_err("invalid");
        assert_eq!(e.data, Some(json!({"field": "arguments"})));
    }

    fn text_of(r: Result<CallToolResponse, McpError>) -> String {
        let Ok(CallToolResponse::Complete(r)) = r else {
            panic!("expected a tool result")
        };
        assert_eq!(r.is_error, Some(true));
        serde_json::to_string(&r.content).expect("json")
    }

    #[test]
    fn errors_name_no_host_path() {
        let home = Path::new("/var/lib/aisbx-test-home");
        let t = text_of(service_error(
            ServiceError::Internal(
                "cannot write /var/lib/aisbx-test-home/sandboxes/x/meta.json: EIO".into(),
            ),
            home,
            "run",
            None,
        ));
        assert!(t.contains("failed internally (reference err-"), "{t}");
        assert!(!t.contains("/var/lib") && !t.contains("meta.json"), "{t}");
        let t = text_of(service_error(
            ServiceError::Refused("cannot open /var/lib/aisbx-test-home/snapshots/s".into()),
            home,
            "run",
            None,
        ));
        assert!(!t.contains("/var/lib/aisbx-test-home"), "{t}");
        assert!(t.contains("cannot open $AISBX_HOME/snapshots/s"), "{t}");
        let e = service_error(
            ServiceError::invalid("profile", "in /var/lib/aisbx-test-home/profiles/x.toml"),
            home,
            "run",
            None,
        )
        .expect_err("invalid");
        assert!(
            !e.message.contains("/var/lib/aisbx-test-home"),
            "{}",
            e.message
        );
    }
}
