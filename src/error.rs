//! The edge error type of the management API: one HTTP status + one stable code + a human message.
//!
//! Every 4xx/5xx under `/api/` is built from an [`ApiError`] and rendered as the contract's body
//! `{"code", "message", "error_id", "timestamp"}`. Module errors (`StoreError`, validation errors) are
//! converted into it at the edge; internals (a Redis error text) are logged with the `error_id` and never
//! sent to the client.

use hyper::StatusCode;
use serde::Serialize;

use crate::store::StoreError;

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable UPPER_SNAKE code; clients branch on it, so it never changes once shipped.
    pub code: &'static str,
    pub message: String,
    /// The methods the route takes, for the `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), allow: None }
    }

    /// `405 METHOD_NOT_ALLOWED` with the route's methods in `Allow`.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", format!("this route takes {allow}"))
        }
    }

    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", message)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "missing or invalid credentials")
    }

    pub fn forbidden(permission: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", format!("this API key lacks the `{permission}` permission"))
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::bad_request("INVALID_BODY", message)
    }

    /// Renders the contract's JSON body, minting a fresh `error_id`.
    pub fn to_body(&self) -> ErrorBody<'_> {
        ErrorBody {
            code: self.code,
            message: &self.message,
            error_id: uuid::Uuid::new_v4().to_string(),
            timestamp: crate::model::now_rfc3339(),
        }
    }
}

/// The JSON shape of an error, fixed by the contract.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub code: &'static str,
    pub message: &'a str,
    pub error_id: String,
    pub timestamp: String,
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        // The detail goes to the log (with the error id, see `api::respond_error`), not to the client.
        tracing::error!(error = %err, "store error while serving the API");
        match err {
            StoreError::Unavailable(_) | StoreError::Timeout => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "STORE_UNAVAILABLE",
                "the link store is unreachable; retry shortly",
            ),
            StoreError::Corrupt(_) | StoreError::CodeSpaceExhausted => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "internal error")
            }
        }
    }
}
