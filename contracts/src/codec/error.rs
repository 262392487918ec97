//! Typed codec errors.

use thiserror::Error;

use crate::events::DeadLetterReason;

/// Why a record could not be decoded. Never a panic.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum DecodeError {
    #[error("empty record: expected a Confluent-framed Avro value")]
    Empty,
    #[error("record of {len} bytes is shorter than the 5-byte Confluent header")]
    ShortHeader { len: usize },
    #[error("magic byte {found:#04x} is not the Confluent magic byte 0x00")]
    BadMagic { found: u8 },
    #[error("schema id {id} is not in the schema registry")]
    UnknownSchema { id: u32 },
    #[error("schema id {id} cannot be read as {reader}: {reason}")]
    Incompatible { id: u32, reader: &'static str, reason: String },
    #[error("Avro body does not decode with schema id {id}: {reason}")]
    Body { id: u32, reason: String },
    #[error("{extra} bytes left after the Avro body of schema id {id}")]
    TrailingBytes { id: u32, extra: usize },
    #[error("schema registry unavailable while resolving schema id {id}: {source}")]
    Registry { id: u32, source: RegistryError },
}

impl DecodeError {
    /// Whether trying the same bytes again later may succeed (the registry was unreachable).
    /// Retryable errors must not dead-letter the record.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DecodeError::Registry { source, .. } if source.retryable)
    }

    /// The dead-letter reason for this error.
    pub fn reason(&self) -> DeadLetterReason {
        match self {
            DecodeError::UnknownSchema { .. } => DeadLetterReason::UnknownSchema,
            DecodeError::Incompatible { .. } => DeadLetterReason::SchemaInvalid,
            DecodeError::Registry { .. } => DeadLetterReason::Other,
            DecodeError::Empty
            | DecodeError::ShortHeader { .. }
            | DecodeError::BadMagic { .. }
            | DecodeError::Body { .. }
            | DecodeError::TrailingBytes { .. } => DeadLetterReason::Undecodable,
        }
    }

    /// The writer schema id, when the header could be read.
    pub fn schema_id(&self) -> Option<u32> {
        match self {
            DecodeError::UnknownSchema { id }
            | DecodeError::Incompatible { id, .. }
            | DecodeError::Body { id, .. }
            | DecodeError::TrailingBytes { id, .. }
            | DecodeError::Registry { id, .. } => Some(*id),
            DecodeError::Empty | DecodeError::ShortHeader { .. } | DecodeError::BadMagic { .. } => None,
        }
    }
}

/// Why a value could not be encoded.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum EncodeError {
    #[error("schema for subject {subject} is not registered yet: call Codec::register first")]
    NotRegistered { subject: String },
    #[error("value does not match schema {schema}: {reason}")]
    Invalid { schema: &'static str, reason: String },
}

/// A failed call to the schema registry.
#[derive(Debug, Clone, Error, PartialEq)]
#[error("{message}")]
pub struct RegistryError {
    /// Confluent error code from the response body, when there was one (e.g. 40403, 409).
    pub error_code: Option<u32>,
    pub message: String,
    /// Whether the same call may succeed later (network error, 5xx).
    pub retryable: bool,
}

impl RegistryError {
    /// The error of a call to the registry at `registry` (shown as given: pass it through
    /// [`redact_credentials`]). The message always says what happened: the registry's answer
    /// (status, Confluent error code and message), or that it did not answer and why (every
    /// cause in the chain: timed out, connection refused, ...), with any credentials in URLs
    /// left out.
    pub(crate) fn from_src(err: &schema_registry_converter::error::SRCError, registry: &str) -> Self {
        use std::error::Error as _;
        let raw =
            err.source().and_then(|s| s.downcast_ref::<schema_registry_converter::schema_registry_common::RawError>());
        // schema_registry_converter reports a body that is not Confluent's error JSON as code 0.
        let error_code = raw.map(|r| r.error_code).filter(|code| *code != 0);
        let message = match raw {
            Some(r) => {
                format!("the schema registry at {registry}: {} (error_code {}: {})", err.error, r.error_code, r.message)
            }
            None => {
                let mut causes = vec![err.error.clone()];
                let mut source = err.source();
                while let Some(cause) = source {
                    causes.push(cause.to_string());
                    source = cause.source();
                }
                causes.retain(|c| !c.trim().is_empty());
                if causes.is_empty() {
                    causes.push("no reason given".to_owned());
                }
                format!("the schema registry at {registry} did not answer: {}", causes.join(": "))
            }
        };
        Self { error_code, retryable: is_retryable(error_code), message: redact_credentials(&message) }
    }
}

/// `text` with the credentials of every URL in it (`scheme://user:password@host`) replaced
/// by `***`, for errors and logs.
pub fn redact_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the path, query, fragment, or the end of the URL in the text.
        let end =
            tail.find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace() || c == ')').unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(user_end) => {
                out.push_str("***@");
                out.push_str(&authority[user_end + 1..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The one rule for registry failures: only an answer about the request itself is final —
/// Confluent's 404xx (subject, version or schema not found), 409 (incompatible) and 422xx
/// (invalid schema or version). Anything else says nothing about the record: no answer, a
/// body that is not Confluent's error JSON (a proxy's 404, a load balancer's 502), 401/403
/// (credentials), 429 (rate limited), 5xx and 500xx (the registry's own trouble). Those are
/// retried, never turned into a dead letter.
pub fn is_retryable(error_code: Option<u32>) -> bool {
    !matches!(error_code, Some(409 | 40400..=40499 | 42200..=42299))
}

#[cfg(test)]
mod tests {
    use super::is_retryable;

    #[test]
    fn credentials_in_urls_are_left_out() {
        use super::redact_credentials;
        assert_eq!(redact_credentials("http://user:pw@127.0.0.1:8081"), "http://***@127.0.0.1:8081");
        assert_eq!(
            redact_credentials("error sending request for url (http://u:p@h:1/subjects/x) then https://a@b/c"),
            "error sending request for url (http://***@h:1/subjects/x) then https://***@b/c"
        );
        assert_eq!(redact_credentials("no url, a@b"), "no url, a@b");
        assert_eq!(redact_credentials("http://h:1/p@q"), "http://h:1/p@q", "an @ in the path is no credential");
    }

    #[test]
    fn only_answers_about_the_request_are_final() {
        for final_code in [40401, 40403, 409, 42201, 42202] {
            assert!(!is_retryable(Some(final_code)), "{final_code}");
        }
        for outage in
            [None, Some(401), Some(403), Some(429), Some(500), Some(50001), Some(50002), Some(50003), Some(40101)]
        {
            assert!(is_retryable(outage), "{outage:?}");
        }
    }
}
