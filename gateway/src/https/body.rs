//! Response body type shared by every handler.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};

/// Errors a response body can end with.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body: a boxed stream of bytes.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BodyError>;

/// A body with all its bytes in memory (JSON documents).
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// No body (HEAD, 204).
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}
