use thiserror::Error;

/// Everything the service can refuse or fail at. Each message is one sentence for a
/// user: what failed, why, and what to do.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// A request argument is wrong; `field` names it (MCP maps this to -32602).
    #[error("invalid {field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// The request is well-formed but aisbx will not run it (policy, missing layer,
    /// missing runtime, ...).
    #[error("{0}")]
    Refused(String),
    /// The program or runtime was not found.
    #[error("{0}")]
    NotFound(String),
    /// No such persistent sandbox.
    #[error(
        "no sandbox named '{0}': list them with `aisbx ls` or create one with `aisbx create NAME`"
    )]
    NoSuchSandbox(String),
    /// aisbx itself failed (I/O, kernel refused a layer, ...).
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ServiceError::InvalidArgument {
            field: field.to_string(),
            message: message.into(),
        }
    }
}
