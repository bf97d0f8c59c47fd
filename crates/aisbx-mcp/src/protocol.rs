//! Every message a client sends is checked here before the SDK sees it, so that each
//! malformed one gets a JSON-RPC error (the SDK drops some without a word): bytes that
//! are not JSON (-32700), JSON that is not a JSON-RPC message (-32600), a message
//! larger than [`MAX_MESSAGE_BYTES`] (-32600), and a request whose `params` cannot be
//! what its method needs (-32602, with a sentence). Values echoed back are cut to
//! [`MAX_ECHO_BYTES`].
//!
//! Over stdio, [`serve_framed`] reads the lines itself and hands the good ones to the
//! SDK through an in-memory pipe; over HTTP, a middleware calls [`check`] on the body.

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// Largest message accepted (one stdio line, one HTTP body).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Most bytes of a client's value repeated in an error message.
pub const MAX_ECHO_BYTES: usize = 200;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;

/// Methods whose `params` must be an object.
const PARAMS_REQUIRED: &[&str] = &[
    "initialize",
    "tools/call",
    "logging/setLevel",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/get",
    "completion/complete",
];

/// `s` cut to at most [`MAX_ECHO_BYTES`] (on a character boundary), with `…` when cut.
pub fn cut(s: &str) -> String {
    if s.len() <= MAX_ECHO_BYTES {
        return s.to_string();
    }
    let mut end = MAX_ECHO_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A JSON-RPC error response (`id` null when the message's id is unknown).
pub fn error_response(
    id: Value,
    code: i64,
    message: impl Into<String>,
    data: Option<Value>,
) -> Value {
    let mut error = json!({ "code": code, "message": message.into() });
    if let Some(d) = data {
        error["data"] = d;
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

/// The error for a message over [`MAX_MESSAGE_BYTES`].
pub fn too_large() -> Value {
    error_response(
        Value::Null,
        INVALID_REQUEST,
        format!(
            "Invalid Request: the message is larger than {} MiB, the server's limit; it was discarded",
            MAX_MESSAGE_BYTES >> 20
        ),
        None,
    )
}

/// `Ok` when the message may go to the SDK; else the error response to send.
pub fn check(bytes: &[u8]) -> Result<(), Value> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        error_response(
            Value::Null,
            PARSE_ERROR,
            format!(
                "Parse error: the message is not valid JSON ({})",
                cut(&e.to_string())
            ),
            None,
        )
    })?;
    let Value::Object(obj) = &v else {
        return Err(error_response(
            Value::Null,
            INVALID_REQUEST,
            "Invalid Request: a message must be one JSON-RPC 2.0 object (batches are not supported)",
            None,
        ));
    };
    // The id is echoed only when it is a valid one.
    let id = match obj.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    };
    let invalid = |why: &str| {
        Err(error_response(
            id.clone(),
            INVALID_REQUEST,
            format!("Invalid Request: {why}"),
            None,
        ))
    };
    if obj.get("jsonrpc") != Some(&json!("2.0")) {
        return invalid("`jsonrpc` must be \"2.0\"");
    }
    match obj.get("method") {
        None => {}
        Some(Value::String(method)) => {
            if method.len() > MAX_ECHO_BYTES {
                return Err(error_response(
                    id,
                    METHOD_NOT_FOUND,
                    format!("Method not found: '{}'", cut(method)),
                    None,
                ));
            }
            if obj.contains_key("id") && id.is_null() {
                return invalid("`id` must be a string or a number");
            }
            check_params(method, obj.get("params")).map_err(|(message, field)| {
                error_response(
                    id.clone(),
                    INVALID_PARAMS,
                    message,
                    Some(json!({ "field": field })),
                )
            })?;
        }
        Some(_) => return invalid("`method` must be a string"),
    }
    if let Err(e) = serde_json::from_value::<rmcp::model::ClientJsonRpcMessage>(v.clone()) {
        return match obj.get("method") {
            Some(Value::String(m)) if obj.contains_key("id") => Err(error_response(
                id,
                INVALID_PARAMS,
                format!("Invalid params for {}: {}", cut(m), cut(&e.to_string())),
                Some(json!({ "field": "params" })),
            )),
            _ => invalid("not a JSON-RPC 2.0 request, notification or response"),
        };
    }
    Ok(())
}

/// Params a request's method needs; `Err((sentence, field))`.
fn check_params(method: &str, params: Option<&Value>) -> Result<(), (String, &'static str)> {
    let params = params.filter(|p| !p.is_null());
    if !PARAMS_REQUIRED.contains(&method) {
        return match params {
            None | Some(Value::Object(_)) => Ok(()),
            Some(_) => Err((
                format!("Invalid params: `params` of {method} must be an object"),
                "params",
            )),
        };
    }
    let Some(Value::Object(p)) = params else {
        let what = if method == "tools/call" {
            " with the tool's `name` and its `arguments` object"
        } else {
            ""
        };
        return Err((
            format!("Invalid params: {method} needs `params`, an object{what}"),
            "params",
        ));
    };
    if method == "tools/call" {
        match p.get("name") {
            Some(Value::String(_)) => {}
            _ => {
                return Err((
                    "Invalid params: tools/call needs `params.name`, the tool's name (a string; tools/list has them)".into(),
                    "name",
                ));
            }
        }
        match p.get("arguments") {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(other) => {
                return Err((
                    format!(
                        "Invalid params: `arguments` must be an object mapping the tool's argument names to values, not {}",
                        type_name(other)
                    ),
                    "arguments",
                ));
            }
        }
    }
    Ok(())
}

/// `a string`, `an array`, ... for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What the line reader produced.
enum Line {
    /// A complete line (without its `\n`).
    Message(Vec<u8>),
    /// A line longer than the limit, skipped to its end.
    TooLarge,
}

/// Reads `\n`-terminated lines of at most `max` bytes; a longer one is skipped up to its
/// end without being kept.
struct LineReader<R> {
    inner: BufReader<R>,
    max: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    async fn next(&mut self) -> std::io::Result<Option<Line>> {
        let mut line = Vec::new();
        let mut over = false;
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                // End of input: a last line without `\n` still counts.
                return Ok(match (over, line.is_empty()) {
                    (true, _) => Some(Line::TooLarge),
                    (false, true) => None,
                    (false, false) => Some(Line::Message(line)),
                });
            }
            let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            if !over {
                if line.len() + chunk.len() > self.max {
                    over = true;
                    line = Vec::new();
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            let used = found.unwrap_or(buf.len());
            self.inner.consume(used);
            if found.is_some() {
                return Ok(Some(if over {
                    Line::TooLarge
                } else {
                    Line::Message(line)
                }));
            }
        }
    }
}

/// Size of the in-memory pipes between the framer and the SDK.
const PIPE_BYTES: usize = 256 * 1024;

/// Serves `handler` over the line-framed `input`/`output` (stdio): every line is
/// checked, errors are answered here, good lines go to the SDK. The SDK's messages
/// and these errors reach `output` as whole lines. Returns when `input` ends and the
/// SDK has finished.
pub async fn serve_framed<S, R, W>(handler: S, input: R, output: W) -> Result<(), String>
where
    S: rmcp::ServerHandler,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    use rmcp::ServiceExt;
    let (sdk_in, mut to_sdk) = tokio::io::duplex(PIPE_BYTES);
    let (from_sdk, sdk_out) = tokio::io::duplex(PIPE_BYTES);
    let (err_tx, err_rx) = mpsc::unbounded_channel::<Value>();
    let writer = tokio::spawn(write_lines(from_sdk, err_rx, output));
    let reader = tokio::spawn(async move {
        let mut lines = LineReader {
            inner: BufReader::with_capacity(64 * 1024, input),
            max: MAX_MESSAGE_BYTES,
        };
        loop {
            let line = match lines.next().await {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(%e, "cannot read stdin");
                    break;
                }
            };
            match line {
                Line::TooLarge => {
                    let _ = err_tx.send(too_large());
                }
                Line::Message(mut m) => {
                    if m.last() == Some(&b'\r') {
                        m.pop();
                    }
                    // RFC 8259 lets a parser ignore a byte order mark; the SDK does.
                    if m.starts_with(b"\xEF\xBB\xBF") {
                        m.drain(..3);
                    }
                    if m.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match check(&m) {
                        Ok(()) => {
                            m.push(b'\n');
                            if to_sdk.write_all(&m).await.is_err() {
                                break;
                            }
                        }
                        Err(reply) => {
                            let _ = err_tx.send(reply);
                        }
                    }
                }
            }
        }
        // Closing the pipe ends the SDK's session, as the end of stdin does.
        let _ = to_sdk.shutdown().await;
    });
    let result = async {
        let running = handler
            .serve((sdk_in, sdk_out))
            .await
            .map_err(|e| e.to_string())?;
        running.waiting().await.map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    }
    .await;
    reader.abort();
    // The SDK's end of the output pipe is gone with the session: the writer drains it.
    let _ = writer.await;
    result
}

/// Copies the SDK's output lines and the framer's errors to `output`, each as a whole
/// line.
async fn write_lines<W: AsyncWrite + Unpin>(
    from_sdk: tokio::io::DuplexStream,
    mut errors: mpsc::UnboundedReceiver<Value>,
    mut output: W,
) {
    let mut sdk = BufReader::new(from_sdk);
    let mut line = Vec::new();
    let mut sdk_open = true;
    let mut errors_open = true;
    while sdk_open || errors_open {
        tokio::select! {
            n = sdk.read_until(b'\n', &mut line), if sdk_open => match n {
                Ok(0) | Err(_) => sdk_open = false,
                Ok(_) => {
                    if line.last() != Some(&b'\n') {
                        line.push(b'\n');
                    }
                    if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
                        return;
                    }
                    line.clear();
                }
            },
            e = errors.recv(), if errors_open => match e {
                None => errors_open = false,
                Some(v) => {
                    let mut bytes = v.to_string().into_bytes();
                    bytes.push(b'\n');
                    if output.write_all(&bytes).await.is_err() || output.flush().await.is_err() {
                        return;
                    }
                }
            },
        }
        // Once the SDK is done, errors still queued are written, then the writer ends.
        if !sdk_open {
            while let Ok(v) = errors.try_recv() {
                let mut bytes = v.to_string().into_bytes();
                bytes.push(b'\n');
                let _ = output.write_all(&bytes).await;
            }
            let _ = output.flush().await;
            return;
        }
    }
    let _ = output.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Result<(), Value>) -> i64 {
        r.expect_err("refused")["error"]["code"]
            .as_i64()
            .expect("code")
    }

    #[test]
    fn malformed_messages_get_their_codes() {
        assert_eq!(code(check(b"not json")), PARSE_ERROR);
        assert_eq!(code(check(br#"{"jsonrpc":"2.0","id":1,"#)), PARSE_ERROR);
        assert_eq!(code(check(b"[1,2]")), INVALID_REQUEST);
        assert_eq!(code(check(b"42")), INVALID_REQUEST);
        assert_eq!(code(check(br#"{"id":1,"method":"ping"}"#)), INVALID_REQUEST);
        assert_eq!(
            code(check(br#"{"jsonrpc":"2.0","id":1,"method":5}"#)),
            INVALID_REQUEST
        );
        assert_eq!(
            code(check(br#"{"jsonrpc":"2.0","foo":1}"#)),
            INVALID_REQUEST
        );
        let e = check(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call"}"#).expect_err("bad");
        assert_eq!(e["id"], 7);
        assert_eq!(e["error"]["code"], INVALID_PARAMS);
        assert_eq!(e["error"]["data"]["field"], "params");
        let e = check(
            br#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"run","arguments":"x"}}"#,
        )
        .expect_err("bad");
        assert_eq!(e["id"], "a");
        assert_eq!(e["error"]["code"], INVALID_PARAMS);
        assert_eq!(e["error"]["data"]["field"], "arguments");
        assert!(
            e["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("not a string")),
            "{e}"
        );
        assert!(check(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).is_ok());
        assert!(check(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).is_ok());
        assert!(
            check(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run"}}"#)
                .is_ok()
        );
    }

    #[test]
    fn echoed_values_are_cut() {
        let long = "m".repeat(10_000);
        let msg = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{long}"}}"#);
        let e = check(msg.as_bytes()).expect_err("bad");
        assert_eq!(e["error"]["code"], METHOD_NOT_FOUND);
        assert!(e.to_string().len() < 400, "{e}");
        assert_eq!(cut("é".repeat(150).as_str()).len(), 200 + "…".len());
        assert_eq!(cut("short"), "short");
    }

    #[tokio::test]
    async fn long_lines_are_skipped_without_being_kept() {
        let mut input = vec![b'x'; 100];
        input.push(b'\n');
        input.extend_from_slice(b"ok\nlast");
        let mut r = LineReader {
            inner: BufReader::with_capacity(16, &input[..]),
            max: 50,
        };
        assert!(matches!(r.next().await, Ok(Some(Line::TooLarge))));
        assert!(matches!(r.next().await, Ok(Some(Line::Message(m))) if m == b"ok"));
        assert!(matches!(r.next().await, Ok(Some(Line::Message(m))) if m == b"last"));
        assert!(matches!(r.next().await, Ok(None)));
    }
}
