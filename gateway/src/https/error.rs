//! The one place where failures become HTTP statuses and JSON bodies.
//!
//! Bodies are `{"error": code, "message": text}`; messages never carry internal paths,
//! storage details or backtraces (those go to the server log).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::body::{full, Body};
use crate::path::PathError;
use crate::transfer::TransferError;

/// An HTTP-level failure.
#[derive(Debug)]
pub struct ApiError {
    /// Status code.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable text, safe to show.
    pub message: String,
    /// Extra headers (`WWW-Authenticate`, `Content-Range`, `Allow`).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), headers: Vec::new() }
    }

    /// Add a header.
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// 401 with the challenge; identical for every kind of bad credential.
    pub fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or invalid credentials")
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"gateway\""))
    }

    /// The response.
    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        let mut resp = Response::new(full(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.to_string())
    }
}

impl From<TransferError> for ApiError {
    fn from(e: TransferError) -> Self {
        use StatusCode as S;
        match e {
            TransferError::InvalidPath(p) => p.into(),
            TransferError::Forbidden(_) => ApiError::new(S::FORBIDDEN, "forbidden", e.to_string()),
            TransferError::NotFound => ApiError::new(S::NOT_FOUND, "not_found", "no such object or directory"),
            TransferError::Conflict(m) => ApiError::new(S::CONFLICT, "conflict", m),
            TransferError::RangeNotSatisfiable { size } => {
                let value =
                    HeaderValue::from_str(&format!("bytes */{size}")).unwrap_or(HeaderValue::from_static("bytes */0"));
                ApiError::new(
                    S::RANGE_NOT_SATISFIABLE,
                    "range_not_satisfiable",
                    "requested range lies outside the object",
                )
                .with_header(header::CONTENT_RANGE, value)
            }
            TransferError::DigestMismatch => ApiError::new(S::BAD_REQUEST, "digest_mismatch", e.to_string()),
            TransferError::Integrity => ApiError::new(
                S::INTERNAL_SERVER_ERROR,
                "integrity_error",
                "the stored object failed its integrity check and was not returned",
            ),
            TransferError::Storage(_) => ApiError::new(S::INTERNAL_SERVER_ERROR, "storage_error", "storage failure"),
            TransferError::Unavailable(_) => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "storage temporarily unavailable; try again",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("5")),
            TransferError::Client(m) => ApiError::new(S::BAD_REQUEST, "bad_request_body", m),
            TransferError::TooLarge { .. } => ApiError::new(S::PAYLOAD_TOO_LARGE, "too_large", e.to_string()),
            TransferError::Audit(_) => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the audit trail cannot be written; no operation is performed",
            ),
        }
    }
}
