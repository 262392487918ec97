//! The registry's HTTP errors: Confluent's status, `error_code` and message.

use serde::Serialize;
use warp::http::StatusCode;

/// Confluent's content type, on every response.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// An error reply: `{"error_code": ..., "message": ...}` with the matching HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error_code}: {message}")]
pub struct ApiError {
    pub error_code: u32,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error_code: u32,
    message: &'a str,
}

impl ApiError {
    fn new(error_code: u32, message: impl Into<String>) -> Self {
        Self { error_code, message: message.into() }
    }

    /// HTTP status for the Confluent error code (its first three digits, or itself).
    pub fn status(&self) -> StatusCode {
        let code = if self.error_code >= 10_000 { self.error_code / 100 } else { self.error_code };
        u16::try_from(code).ok().and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn subject_not_found(subject: &str) -> Self {
        Self::new(40401, format!("Subject '{subject}' not found."))
    }
    pub fn version_not_found(subject: &str, version: u32) -> Self {
        Self::new(40402, format!("Version {version} not found for subject '{subject}'."))
    }
    pub fn schema_not_found() -> Self {
        Self::new(40403, "Schema not found")
    }
    pub fn subject_soft_deleted(subject: &str) -> Self {
        Self::new(40404, format!("Subject '{subject}' was soft deleted. Set permanent=true to delete permanently"))
    }
    pub fn subject_not_soft_deleted(subject: &str) -> Self {
        Self::new(40405, format!("Subject '{subject}' was not deleted first before being permanently deleted"))
    }
    pub fn version_soft_deleted(subject: &str, version: u32) -> Self {
        Self::new(
            40406,
            format!("Subject '{subject}' Version {version} was soft deleted. Set permanent=true to delete permanently"),
        )
    }
    pub fn version_not_soft_deleted(subject: &str, version: u32) -> Self {
        Self::new(
            40407,
            format!("Subject '{subject}' Version {version} was not deleted first before being permanently deleted"),
        )
    }
    pub fn subject_level_compatibility_not_configured(subject: &str) -> Self {
        Self::new(40408, format!("Subject '{subject}' does not have subject-level compatibility configured"))
    }
    pub fn incompatible(subject: &str, details: &[String]) -> Self {
        Self::new(
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
                details.join(", ")
            ),
        )
    }
    pub fn invalid_schema(reason: impl std::fmt::Display) -> Self {
        Self::new(42201, format!("Invalid schema: {reason}"))
    }
    pub fn invalid_version(version: &str) -> Self {
        Self::new(
            42202,
            format!("The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""),
        )
    }
    pub fn invalid_compatibility_level(level: &str) -> Self {
        Self::new(
            42203,
            format!("Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive; got '{level}'"),
        )
    }
    pub fn bad_request(reason: impl std::fmt::Display) -> Self {
        Self::new(400, format!("Bad request: {reason}"))
    }
    pub fn payload_too_large(limit: u64) -> Self {
        Self::new(413, format!("Request body is larger than {limit} bytes"))
    }
    pub fn unauthorized(reason: &str) -> Self {
        Self::new(40101, format!("Unauthorized: {reason}"))
    }
    pub fn forbidden(user: &str, needed: crate::auth::Role) -> Self {
        Self::new(40301, format!("User {user} is denied this operation: it needs the {needed:?} role"))
    }
    pub fn invalid_subject(subject: &str, reason: &str) -> Self {
        Self::new(42208, format!("Invalid subject {subject:?}: {reason}"))
    }
    pub fn route_not_found() -> Self {
        Self::new(404, "HTTP 404 Not Found")
    }
    pub fn method_not_allowed() -> Self {
        Self::new(405, "HTTP 405 Method Not Allowed")
    }
    pub fn store(reason: impl std::fmt::Display) -> Self {
        Self::new(50001, format!("Error in the backend data store: {reason}"))
    }
    pub fn timeout(reason: impl std::fmt::Display) -> Self {
        Self::new(50002, format!("Operation timed out: {reason}"))
    }
}

impl warp::Reply for ApiError {
    fn into_response(self) -> warp::reply::Response {
        let body =
            serde_json::to_vec(&Body { error_code: self.error_code, message: &self.message }).unwrap_or_default();
        let mut response = warp::reply::Response::new(body.into());
        *response.status_mut() = self.status();
        if let Ok(value) = warp::http::HeaderValue::from_str(CONTENT_TYPE) {
            response.headers_mut().insert(warp::http::header::CONTENT_TYPE, value);
        }
        if self.error_code == 40101 {
            response.headers_mut().insert(
                warp::http::header::WWW_AUTHENTICATE,
                warp::http::HeaderValue::from_static("Basic realm=\"streamscore-registry\""),
            );
        }
        response
    }
}
