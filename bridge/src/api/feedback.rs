//! `POST /v1/feedback`: ground truth for requests the caller's tenant made, published to the
//! feedback topic as the same `Feedback` events any Confluent Avro serializer writes. The API
//! key decides the tenant; a label of another tenant's request is dead-lettered by the
//! monitor (`FEEDBACK_TENANT_MISMATCH`), since only the join knows whose request it is.

use serde::Deserialize;
use serde_json::{json, Value};
use streamscore_contracts::Feedback;
use warp::http::{HeaderMap, StatusCode};

use super::{json_response, ApiError, MAX_ROWS};
use crate::Bridge;

/// One label as the caller sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Label {
    request_id: String,
    actual: Value,
    /// RFC 3339, or µs since the epoch; default: now.
    #[serde(default)]
    observed_at: Option<Value>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    attributes: Option<std::collections::HashMap<String, String>>,
}

/// One label, or `{"feedback": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Body {
    Many { feedback: Vec<Label> },
    One(Label),
}

impl Bridge {
    pub(super) async fn feedback(&self, headers: &HeaderMap, body: &[u8]) -> Result<warp::reply::Response, ApiError> {
        let tenant = self.caller(headers, crate::jwt::Scope::Feedback)?.tenant;
        let labels = match serde_json::from_slice::<Body>(body) {
            Ok(Body::Many { feedback }) => feedback,
            Ok(Body::One(label)) => vec![label],
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "expected {{\"request_id\", \"actual\", \"observed_at\"?, \"source\"?, \"attributes\"?}} or \
                     {{\"feedback\": [...]}}: {e}"
                )))
            }
        };
        if labels.is_empty() || labels.len() > MAX_ROWS {
            return Err(ApiError::bad_request(format!("1 to {MAX_ROWS} labels per call, not {}", labels.len())));
        }
        let now = streamscore_contracts::now_micros();
        let mut events = Vec::with_capacity(labels.len());
        for (i, label) in labels.into_iter().enumerate() {
            events.push(feedback_event(i, label, &tenant, now)?);
        }
        let codec = &self.feedback_codec;
        if codec.schema_id().is_none() {
            codec.register().await.map_err(|e| {
                ApiError::unavailable("REGISTRY_UNAVAILABLE", format!("cannot register the feedback schema: {e}"))
            })?;
        }
        let mut payloads = Vec::with_capacity(events.len());
        for event in &events {
            let bytes = codec
                .encode(event)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()))?;
            payloads.push(bytes);
        }
        self.publish_to(&self.config.feedback_topic, &tenant, payloads, self.config.deadline).await?;
        let ids: Vec<&str> = events.iter().map(|e| e.request_id.as_str()).collect();
        Ok(json_response(StatusCode::ACCEPTED, &json!({"accepted": events.len(), "request_ids": ids})))
    }
}

/// The event of label `i`, or why it is not one (400 for a shape, 422 for a value).
fn feedback_event(i: usize, label: Label, tenant: &str, now: i64) -> Result<Feedback, ApiError> {
    let at = |what: String| format!("label {i}: {what}");
    let request_id = label.request_id.trim().to_owned();
    if request_id.is_empty() || request_id.len() > 256 {
        return Err(ApiError::bad_request(at("request_id must be 1 to 256 characters".to_owned())));
    }
    let actual = label
        .actual
        .as_f64()
        .ok_or_else(|| ApiError::bad_request(at(format!("actual must be a number (1 or 0), not {}", label.actual))))?;
    if actual != 0.0 && actual != 1.0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "FEEDBACK_INVALID",
            at(format!("actual {actual} is not a label: 1 (positive) or 0 (negative)")),
        ));
    }
    let observed_at = match label.observed_at {
        None | Some(Value::Null) => now,
        Some(Value::Number(n)) => {
            n.as_i64().ok_or_else(|| ApiError::bad_request(at("observed_at: whole µs since the epoch".to_owned())))?
        }
        Some(Value::String(text)) => {
            let time = humantime::parse_rfc3339_weak(&text)
                .map_err(|e| ApiError::bad_request(at(format!("observed_at {text:?}: RFC 3339 ({e})"))))?;
            let since = time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
        }
        Some(other) => return Err(ApiError::bad_request(at(format!("observed_at: RFC 3339 or µs, not {other}")))),
    };
    Ok(Feedback {
        request_id,
        tenant: tenant.to_owned(),
        actual,
        observed_at,
        source: label.source,
        attributes: label.attributes,
    })
}

impl Bridge {
    /// Publishes `payloads` to `topic` keyed by `tenant` and waits for the broker's
    /// acknowledgements (at most `wait`).
    async fn publish_to(
        &self,
        topic: &str,
        tenant: &str,
        payloads: Vec<Vec<u8>>,
        wait: std::time::Duration,
    ) -> Result<(), ApiError> {
        use rdkafka::producer::FutureRecord;
        let mut deliveries = Vec::with_capacity(payloads.len());
        for payload in &payloads {
            let record = FutureRecord::to(topic).key(tenant.as_bytes()).payload(payload.as_slice());
            let delivery = streamscore_kafka::produce::enqueue(&self.producer, record).await.map_err(|e| {
                ApiError::unavailable("BROKER_UNAVAILABLE", format!("cannot publish the feedback: {e}"))
            })?;
            deliveries.push(delivery);
        }
        super::acknowledged(
            deliveries,
            wait,
            "feedback",
            "the broker did not acknowledge the feedback in time; it may still be recorded: send it again (a \
             label sent twice counts once)",
        )
        .await
    }
}
