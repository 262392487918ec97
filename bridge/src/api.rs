//! The HTTP API: Open Inference Protocol v2 (KServe/Triton's), streamscore's own JSON, and
//! health, readiness, metrics and the OpenAPI document.
//!
//! One request's path: authenticate (the key decides the tenant), route and check with
//! ingest's own code (bad input is answered now, never dead-lettered), register the waiter,
//! publish the `InferenceRequest` (Confluent-framed, `reply_to` = this instance, a request id
//! the bridge generates), wait for the outcome on the predictions topic, answer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use streamscore_contracts::{DeadLetterReason, Features, InferenceRequest, OutcomeStatus, PredictionOutcome};
use streamscore_modelstore::{ModelVersion, RouteError};
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::Filter;

mod feedback;

use crate::auth;
use crate::idempotency::{Begin, Claim, Kept};
use crate::jwt::{self, Scope};
use crate::waiters::{Lookup, WaitError};
use crate::Bridge;
use streamscore_tls::PeerCertificate;

/// Rows one call may carry.
pub const MAX_ROWS: usize = 1000;

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Healthz,
    Ready,
    Metrics,
    OpenApi,
    ServerMetadata,
    ServerLive,
    ServerReady,
    ModelReady,
    ModelMetadata,
    Infer,
    Predict,
    RequestStatus,
    Feedback,
}

/// One route: its method, its path as the OpenAPI document writes it (`{name}` matches one
/// segment), what it does, and its `route` metric label.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub endpoint: Endpoint,
    pub label: &'static str,
}

const fn route(method: &'static str, path: &'static str, endpoint: Endpoint, label: &'static str) -> Route {
    Route { method, path, endpoint, label }
}

/// Every route the bridge serves: requests are dispatched through this table, a path it has
/// under another method is a 405 naming the methods it has, and the OpenAPI document lists
/// exactly these (tested).
pub const ROUTES: &[Route] = &[
    route("GET", "/healthz", Endpoint::Healthz, "healthz"),
    route("GET", "/ready", Endpoint::Ready, "ready"),
    route("GET", "/metrics", Endpoint::Metrics, "metrics"),
    route("GET", "/openapi.json", Endpoint::OpenApi, "openapi"),
    route("GET", "/v2", Endpoint::ServerMetadata, "v2_server"),
    route("GET", "/v2/health/live", Endpoint::ServerLive, "v2_health"),
    route("GET", "/v2/health/ready", Endpoint::ServerReady, "v2_health"),
    route("GET", "/v2/models/{model}/ready", Endpoint::ModelReady, "v2_model_ready"),
    route("GET", "/v2/models/{model}/versions/{version}/ready", Endpoint::ModelReady, "v2_model_ready"),
    route("GET", "/v2/models/{model}", Endpoint::ModelMetadata, "v2_model_metadata"),
    route("GET", "/v2/models/{model}/versions/{version}", Endpoint::ModelMetadata, "v2_model_metadata"),
    route("POST", "/v2/models/{model}/infer", Endpoint::Infer, "v2_infer"),
    route("POST", "/v2/models/{model}/versions/{version}/infer", Endpoint::Infer, "v2_infer"),
    route("POST", "/v1/models/{model}/predict", Endpoint::Predict, "v1_predict"),
    route("GET", "/v1/requests/{id}", Endpoint::RequestStatus, "v1_request"),
    route("POST", "/v1/feedback", Endpoint::Feedback, "v1_feedback"),
];

impl Route {
    /// The path's parameters (in order) when `segments` is this route's path.
    fn parameters<'a>(&self, segments: &[&'a str]) -> Option<Vec<&'a str>> {
        let mut parts = self.path.split('/').filter(|s| !s.is_empty());
        let mut parameters = Vec::new();
        for segment in segments {
            let part = parts.next()?;
            if part.starts_with('{') {
                parameters.push(*segment);
            } else if part != *segment {
                return None;
            }
        }
        parts.next().is_none().then_some(parameters)
    }
}

/// The route `method` and `segments` name with its path parameters, else the methods the path
/// has under other routes (empty: no such path).
pub fn resolve<'a>(method: &Method, segments: &[&'a str]) -> Result<(&'static Route, Vec<&'a str>), Vec<&'static str>> {
    let mut allowed = Vec::new();
    for route in ROUTES {
        if let Some(parameters) = route.parameters(segments) {
            if route.method == method.as_str() {
                return Ok((route, parameters));
            }
            if !allowed.contains(&route.method) {
                allowed.push(route.method);
            }
        }
    }
    Err(allowed)
}

/// Which error shape a route answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// `{"error": "<message>", ...}` (Open Inference Protocol v2).
    Oip,
    /// `{"error": {"code", "message", "details", "request_id"}}`.
    Own,
}

/// Which `WWW-Authenticate` challenge an error carries (RFC 6750).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Challenge {
    /// No credential, or an unknown API key.
    Credentials,
    /// A bearer token that is not valid; the message is the description.
    InvalidToken,
    /// A valid token without this scope.
    InsufficientScope(Scope),
}

/// An error answer: status, stable code, message, details, and the headers it needs.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    retry_after_secs: Option<u64>,
    rate_limit: Option<(u32, u32)>,
    /// The `WWW-Authenticate` challenge of a 401 or a 403 for a missing scope.
    challenge: Option<Challenge>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Value::Null,
            retry_after_secs: None,
            rate_limit: None,
            challenge: None,
        }
    }

    fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    fn unauthorized(message: &str) -> Self {
        let mut error = Self::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", message);
        error.challenge = Some(Challenge::Credentials);
        error
    }

    /// 401 for a bearer token that is not valid (RFC 6750 `invalid_token`).
    fn invalid_token(why: &jwt::TokenError) -> Self {
        let mut error = Self::new(StatusCode::UNAUTHORIZED, "INVALID_TOKEN", format!("bearer token refused: {why}"));
        error.challenge = Some(Challenge::InvalidToken);
        error
    }

    /// 403 for a valid token without `scope` (RFC 6750 `insufficient_scope`).
    fn insufficient_scope(scope: Scope) -> Self {
        let name = scope.as_str();
        let mut error = Self::new(
            StatusCode::FORBIDDEN,
            "INSUFFICIENT_SCOPE",
            format!("this call needs the {name} scope, which the token does not grant"),
        )
        .details(json!({"scope": name}));
        error.challenge = Some(Challenge::InsufficientScope(scope));
        error
    }

    /// 405: `path` exists under `allowed` methods only (the `Allow` header and `details.allow`).
    fn method_not_allowed(method: &Method, path: &str, allowed: &[&str]) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("{path} does not take {method}; it takes {}", allowed.join(", ")),
        )
        .details(json!({ "allow": allowed }))
    }

    fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(1)
    }

    fn render(&self, dialect: Dialect, request_id: &str) -> warp::reply::Response {
        let body = match dialect {
            Dialect::Oip => json!({
                "error": self.message,
                "code": self.code,
                "details": self.details,
                "request_id": request_id,
            }),
            Dialect::Own => json!({"error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
                "request_id": request_id,
            }}),
        };
        let mut response = json_response(self.status, &body);
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after_secs {
            headers.insert("retry-after", HeaderValue::from(secs));
        }
        if let Some((limit, burst)) = self.rate_limit {
            let reset = self.retry_after_secs.unwrap_or(1);
            headers.insert("ratelimit-limit", HeaderValue::from(burst));
            headers.insert("ratelimit-remaining", HeaderValue::from(0_u32));
            headers.insert("ratelimit-reset", HeaderValue::from(reset));
            if let Ok(policy) = HeaderValue::from_str(&format!("{burst};w=1;rate={limit}")) {
                headers.insert("ratelimit-policy", policy);
            }
        }
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            // The methods the path takes, from the details `method_not_allowed` wrote.
            let methods: Vec<&str> =
                self.details["allow"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if let Ok(allow) = HeaderValue::from_str(&methods.join(", ")) {
                headers.insert(warp::http::header::ALLOW, allow);
            }
        }
        if let Some(challenge) = self.challenge {
            let realm = "realm=\"streamscore\"";
            let challenge = match challenge {
                Challenge::Credentials => format!("Bearer {realm}, charset=\"UTF-8\""),
                Challenge::InvalidToken => {
                    format!(
                        "Bearer {realm}, error=\"invalid_token\", error_description=\"{}\"",
                        quotable(&self.message)
                    )
                }
                Challenge::InsufficientScope(scope) => {
                    format!("Bearer {realm}, error=\"insufficient_scope\", scope=\"{}\"", scope.as_str())
                }
            };
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.insert(warp::http::header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

/// `text` as the inside of a quoted-string: printable ASCII without `"` or `\\`.
fn quotable(text: &str) -> String {
    text.chars().map(|c| if (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ' { c } else { '\'' }).collect()
}

fn json_response(status: StatusCode, body: &Value) -> warp::reply::Response {
    let mut response = warp::reply::Response::new(body.to_string().into());
    *response.status_mut() = status;
    response.headers_mut().insert(warp::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn empty(status: StatusCode) -> warp::reply::Response {
    let mut response = warp::reply::Response::new(String::new().into());
    *response.status_mut() = status;
    response
}

/// The warp filter serving every route.
pub fn routes(bridge: Arc<Bridge>) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let answer = answer(bridge);
    answer
        .recover(|rejection: warp::Rejection| async move {
            // Only warp's own extractors reject (a malformed request line or headers).
            let error = ApiError::bad_request(format!("malformed request: {rejection:?}"));
            Ok::<_, Infallible>(error.render(Dialect::Own, &uuid::Uuid::new_v4().to_string()))
        })
        .unify()
}

tokio::task_local! {
    /// The client certificate of the connection a call came on (mutual TLS), for the call's
    /// own task: only the TLS listener puts one on a request ([`streamscore_tls::server`]).
    static PEER: Option<PeerCertificate>;
}

fn answer(bridge: Arc<Bridge>) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    // The query string, or none (`?explain=true` on /v1 predict).
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PeerCertificate>())
        .and(warp::body::stream())
        .then(move |method: Method, path: warp::path::FullPath, query: String, headers: HeaderMap, peer, body| {
            let bridge = Arc::clone(&bridge);
            async move {
                let started = Instant::now();
                let body = read_limited(body, bridge.config.max_body_bytes).await;
                let handled = bridge.handle(&method, path.as_str(), &query, &headers, body);
                let (route, response) = PEER.scope(peer, handled).await;
                metrics::counter!(
                    "streamscore_bridge_requests_total",
                    "route" => route,
                    "code" => status_label(response.status()),
                )
                .increment(1);
                metrics::histogram!("streamscore_bridge_request_duration_seconds", "route" => route)
                    .record(started.elapsed().as_secs_f64());
                response
            }
        })
}

/// Status codes as metric labels: the ones the bridge answers with, anything else `other`.
fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        202 => "202",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        504 => "504",
        _ => "other",
    }
}

/// Why a body was not read.
#[derive(Debug)]
enum BodyError {
    TooLarge(usize),
    Read(String),
}

/// Reads a body up to `limit` bytes, counting what actually arrives (chunked bodies too).
async fn read_limited<S, B>(stream: S, limit: usize) -> Result<Bytes, BodyError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut stream = std::pin::pin!(stream);
    let mut body = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        if body.len() + chunk.remaining() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            body.extend_from_slice(piece);
            let n = piece.len();
            chunk.advance(n);
        }
    }
    Ok(body.freeze())
}

/// A call's `Idempotency-Key` (or request id), as [`Bridge::idempotency`] found it.
enum Idempotent {
    /// No key, or a route that publishes nothing.
    No,
    /// The first call with the key: its answer is kept.
    First(&'static str, Claim),
    /// A retry: the first answer.
    Replay(&'static str, Kept),
}

/// The kept answer, marked `Idempotent-Replayed: true`.
fn replay(kept: Kept) -> warp::reply::Response {
    let mut response = warp::reply::Response::new(kept.body.into());
    *response.status_mut() = StatusCode::from_u16(kept.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    if let Some(content_type) = kept.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(warp::http::header::CONTENT_TYPE, content_type);
    }
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

/// Keeps `response` as the answer to the claim's key, writes it to the idempotency topic
/// (waiting at most [`crate::idempotency::topic::WRITE_WAIT`] for the broker), and hands it on.
async fn keep(
    claim: Claim,
    journal: Option<&crate::idempotency::topic::Journal>,
    response: warp::reply::Response,
) -> warp::reply::Response {
    use http_body_util::BodyExt;
    let (parts, body) = response.into_parts();
    let Ok(collected) = body.collect().await else {
        // Our own bodies are in memory; a failure here keeps nothing (the claim frees the key).
        return warp::reply::Response::from_parts(parts, Bytes::new().into());
    };
    let body = collected.to_bytes();
    let content_type =
        parts.headers.get(warp::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let answer = claim.keep(Kept { status: parts.status.as_u16(), content_type, body: body.clone() });
    if let (Some(journal), Some(answer)) = (journal, answer) {
        journal.write(&answer).await;
    }
    warp::reply::Response::from_parts(parts, body.into())
}

/// How a call names its idempotency key.
enum KeySource<'a> {
    /// `Idempotency-Key`.
    Header(&'a str),
    /// The caller's own request id, the body's `id`, repeated.
    RequestId(String),
}

impl KeySource<'_> {
    /// The key as held ([`crate::idempotency::key_hash`]).
    fn hash(&self, tenant: &str) -> crate::idempotency::KeyHash {
        match self {
            KeySource::Header(key) => crate::idempotency::key_hash(tenant, key),
            KeySource::RequestId(id) => {
                crate::idempotency::key_hash(tenant, &format!("{}{id}", crate::idempotency::REQUEST_ID_PREFIX))
            }
        }
    }

    /// How an answer names it: `Idempotency-Key K` or `request id I` (at most 255 characters
    /// of it).
    fn describe(&self) -> String {
        match self {
            KeySource::Header(key) => format!("Idempotency-Key {key}"),
            KeySource::RequestId(id) => {
                let shown: String = id.chars().take(crate::idempotency::MAX_KEY_LEN).collect();
                let more = if shown.len() < id.len() { "..." } else { "" };
                format!("request id {shown:?}{more}")
            }
        }
    }
}

/// The body's `id`, when it is a non-empty string: the caller's own request id (`id` of an
/// Open Inference Protocol request, `id` of a `/v1` predict).
fn body_request_id(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct WithId {
        #[serde(default)]
        id: Option<Value>,
    }
    match serde_json::from_slice::<WithId>(body).ok()?.id? {
        Value::String(id) if !id.is_empty() => Some(id),
        _ => None,
    }
}

/// Who is calling: the tenant, and the token when a token (not an API key) named it.
#[derive(Debug)]
pub(crate) struct Caller {
    pub(crate) tenant: String,
    token: Option<jwt::TokenIdentity>,
}

/// The tenant a client certificate's subject names in the policy, if any.
fn certificate_tenant(authority: &crate::rotate::Authority, peer: &PeerCertificate) -> Option<String> {
    authority.subjects.get(&peer.subject).cloned()
}

impl Caller {
    /// Whether the caller may do `scope`: always with an API key, with a token when it grants it.
    pub(crate) fn may(&self, scope: Scope) -> Result<(), ApiError> {
        match &self.token {
            Some(token) if !token.has(scope) => Err(ApiError::insufficient_scope(scope)),
            _ => Ok(()),
        }
    }
}

/// What one call scored: per row, its request id and outcome.
struct Scored {
    rows: Vec<(String, PredictionOutcome)>,
}

impl Bridge {
    async fn handle(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        headers: &HeaderMap,
        body: Result<Bytes, BodyError>,
    ) -> (&'static str, warp::reply::Response) {
        let call_id = uuid::Uuid::new_v4().to_string();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let dialect = if segments.first() == Some(&"v2") { Dialect::Oip } else { Dialect::Own };
        let (route, result, claim) = match self.idempotency(method, &segments, query, headers, &body) {
            Ok(Idempotent::No) => (None, None, None),
            Ok(Idempotent::First(label, claim)) => (Some(label), None, Some(claim)),
            Ok(Idempotent::Replay(label, kept)) => (Some(label), Some(Ok(replay(kept))), None),
            Err((label, error)) => (Some(label), Some(Err(error)), None),
        };
        let (route, result) = match (route, result) {
            (Some(route), Some(result)) => (route, result),
            _ => self.dispatch(method, &segments, query, headers, body, &call_id).await,
        };
        // Transient refusals before anything was published are not kept: a retry runs again.
        let claim = claim.filter(|_| match &result {
            Ok(response) => response.status().is_success(),
            Err(e) => !matches!(e.status.as_u16(), 401 | 403 | 409 | 503) && e.code != "TENANT_WAITERS_EXCEEDED",
        });
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                if error.status.is_server_error() {
                    tracing::warn!(route, code = error.code, "{}", error.message);
                }
                error.render(dialect, &call_id)
            }
        };
        if let Some(claim) = claim {
            response = keep(claim, self.journal.as_ref(), response).await;
        }
        if let Ok(value) = HeaderValue::from_str(&call_id) {
            response.headers_mut().insert("x-request-id", value);
        }
        (route, response)
    }

    /// Whether the call is a retry: with `Idempotency-Key` on a route that publishes, or
    /// without one the caller's request id (the body's `id`) on predict and infer, the first
    /// answer to the key, or a claim to answer it first, or why neither.
    fn idempotency(
        &self,
        method: &Method,
        segments: &[&str],
        query: &str,
        headers: &HeaderMap,
        body: &Result<Bytes, BodyError>,
    ) -> Result<Idempotent, (&'static str, ApiError)> {
        let Ok((route, _)) = resolve(method, segments) else { return Ok(Idempotent::No) };
        let scope = match route.endpoint {
            Endpoint::Infer | Endpoint::Predict => Scope::Predict,
            Endpoint::Feedback => Scope::Feedback,
            _ => return Ok(Idempotent::No),
        };
        let Ok(body) = body else { return Ok(Idempotent::No) };
        let fail = |error| Err((route.label, error));
        let key = match headers.get("idempotency-key").map(|value| value.to_str()) {
            Some(Ok(key)) if crate::idempotency::valid_key(key) => KeySource::Header(key),
            Some(_) => {
                return fail(ApiError::bad_request(format!(
                    "Idempotency-Key must be 1 to {} visible ASCII characters",
                    crate::idempotency::MAX_KEY_LEN
                )))
            }
            // A feedback label's request_id names the request it labels, not the call.
            None if scope == Scope::Predict => match body_request_id(body) {
                Some(id) => KeySource::RequestId(id),
                None => return Ok(Idempotent::No),
            },
            None => return Ok(Idempotent::No),
        };
        let tenant = match self.caller(headers, scope) {
            Ok(caller) => caller.tenant,
            Err(error) => return fail(error),
        };
        let mut request = Vec::with_capacity(body.len() + 64);
        for part in [method.as_str().as_bytes(), segments.join("/").as_bytes(), query.as_bytes()] {
            request.extend_from_slice(&(part.len() as u64).to_be_bytes());
            request.extend_from_slice(part);
        }
        request.extend_from_slice(body);
        match self.idempotency.begin(key.hash(&tenant), streamscore_contracts::sha256(&request)) {
            Begin::Run(claim) => Ok(Idempotent::First(route.label, claim)),
            Begin::Replay(kept) => Ok(Idempotent::Replay(route.label, kept)),
            Begin::Mismatch => fail(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "IDEMPOTENCY_KEY_REUSED",
                format!("{} was used for another request within 24 h; use a new one for a new request", key.describe()),
            )),
            Begin::Running => fail(
                ApiError::new(
                    StatusCode::CONFLICT,
                    "IDEMPOTENCY_KEY_IN_USE",
                    format!("the first call with {} is still running; retry when it has answered", key.describe()),
                )
                .retry_after(1),
            ),
            Begin::Loading => fail(ApiError::unavailable(
                "IDEMPOTENCY_LOADING",
                "the answers kept for retries are still being read back after a start; retry shortly",
            )),
        }
    }

    async fn dispatch(
        &self,
        method: &Method,
        segments: &[&str],
        query: &str,
        headers: &HeaderMap,
        body: Result<Bytes, BodyError>,
        call_id: &str,
    ) -> (&'static str, Result<warp::reply::Response, ApiError>) {
        let body = match body {
            Ok(body) => body,
            Err(BodyError::TooLarge(limit)) => {
                let error = ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "BODY_TOO_LARGE",
                    format!("the body is over the limit of {limit} bytes"),
                );
                return ("other", Err(error));
            }
            Err(BodyError::Read(e)) => return ("other", Err(ApiError::bad_request(format!("reading the body: {e}")))),
        };
        let (route, parameters) = match resolve(method, segments) {
            Ok(found) => found,
            Err(allowed) if allowed.is_empty() => {
                let path = format!("/{}", segments.join("/"));
                return ("other", Err(ApiError::not_found("NOT_FOUND", format!("no route {method} {path}"))));
            }
            Err(allowed) => {
                let path = format!("/{}", segments.join("/"));
                return ("other", Err(ApiError::method_not_allowed(method, &path, &allowed)));
            }
        };
        // The table's paths name their parameters in this order: model, then version (or id).
        let first = parameters.first().copied().unwrap_or_default();
        let version = parameters.get(1).copied();
        let result = match route.endpoint {
            Endpoint::Healthz => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
            Endpoint::Ready => Ok(self.readiness().await.1),
            Endpoint::Metrics => Ok(self.metrics()),
            Endpoint::OpenApi => Ok(json_response(StatusCode::OK, &crate::openapi::document())),
            Endpoint::ServerMetadata => Ok(json_response(StatusCode::OK, &self.server_metadata())),
            Endpoint::ServerLive => Ok(empty(StatusCode::OK)),
            Endpoint::ServerReady => {
                let ready = self.readiness().await.0;
                Ok(empty(if ready { StatusCode::OK } else { StatusCode::BAD_REQUEST }))
            }
            Endpoint::ModelReady => Ok(self.model_ready(first, version).await),
            Endpoint::ModelMetadata => self.model_metadata(headers, first, version),
            Endpoint::Infer => self.oip_infer(headers, first, version, &body, call_id).await,
            Endpoint::Predict => self.predict(headers, first, query, &body, call_id).await,
            Endpoint::RequestStatus => self.request_status(headers, first),
            Endpoint::Feedback => self.feedback(headers, &body).await,
        };
        (route.label, result)
    }

    /// Who is calling, from the API key or the bearer token, and whether it may do `scope`.
    /// An API key may do everything its tenant may; a token only what its scopes say.
    fn caller(&self, headers: &HeaderMap, scope: Scope) -> Result<Caller, ApiError> {
        let caller = self.identify(headers)?;
        self.may(&caller, scope)?;
        Ok(caller)
    }

    /// Whether `caller` may do `scope`; a refusal is recorded ([`crate::authlog`]).
    fn may(&self, caller: &Caller, scope: Scope) -> Result<(), ApiError> {
        caller.may(scope).inspect_err(|error| self.authlog.refused(Some(&caller.tenant), error.code))
    }

    /// `error`, recorded as a refusal of `tenant` (when the credential named one).
    fn refuse(&self, tenant: Option<&str>, error: ApiError) -> ApiError {
        self.authlog.refused(tenant, error.code);
        error
    }

    /// The caller a credential names (an API key, a bearer token) or, without one, the client
    /// certificate's subject (mutual TLS); a refusal is recorded. A certificate whose subject
    /// names a tenant and a credential naming another is a 403: one call, one tenant.
    fn identify(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let authority = self.authority.get();
        let peer = PEER.try_with(Clone::clone).ok().flatten();
        let by_certificate = peer.as_ref().and_then(|p| certificate_tenant(&authority, p));
        if let Some(peer) = &peer {
            self.authlog.certificate(by_certificate.as_deref(), peer);
        }
        let Some(credential) = auth::presented_key(headers) else {
            if let Some(tenant) = by_certificate {
                return Ok(Caller { tenant, token: None });
            }
            let message = match &peer {
                Some(peer) => format!(
                    "the client certificate {:?} is no tenant's (client_certificate_subjects in the tenant policy); \
                     present an API key or a bearer token (Authorization: Bearer ... or X-API-Key)",
                    peer.subject
                ),
                None => "an API key or a bearer token is required (Authorization: Bearer ... or X-API-Key)".to_owned(),
            };
            return Err(self.refuse(None, ApiError::unauthorized(&message)));
        };
        let caller = match &self.jwt {
            Some((jwks, expect)) if jwt::looks_like_jwt(credential) => {
                let identity = jwks
                    .get()
                    .verify(credential, expect)
                    .map_err(|e| self.refuse(None, ApiError::invalid_token(&e)))?;
                // A token names a tenant; only one the policy lists may call.
                if !authority.policy.file.tenants.contains_key(&identity.tenant) {
                    let message =
                        format!("tenant {} may not call: the tenant policy does not list it", identity.tenant);
                    let error = ApiError::new(StatusCode::FORBIDDEN, "UNKNOWN_TENANT", message);
                    return Err(self.refuse(Some(&identity.tenant), error));
                }
                Caller { tenant: identity.tenant.clone(), token: Some(identity) }
            }
            _ => match authority.keys.tenant(credential) {
                Some(tenant) => Caller { tenant: tenant.to_owned(), token: None },
                None => return Err(self.refuse(None, ApiError::unauthorized("unknown API key"))),
            },
        };
        match by_certificate {
            Some(tenant) if tenant != caller.tenant => {
                let message = format!(
                    "the client certificate is tenant {tenant}'s and the credential tenant {}'s: one call is one \
                     tenant's",
                    caller.tenant
                );
                let error = ApiError::new(StatusCode::FORBIDDEN, "CERTIFICATE_TENANT_MISMATCH", message);
                Err(self.refuse(Some(&caller.tenant), error))
            }
            _ => Ok(caller),
        }
    }

    fn metrics(&self) -> warp::reply::Response {
        let text = self.metrics.as_ref().map_or_else(String::new, |render| render());
        let mut response = warp::reply::Response::new(text.into());
        response
            .headers_mut()
            .insert(warp::http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
        response
    }

    /// Broker, registry and models, each checked; ready when all are. The broker's answer is
    /// at most [`crate::ready::BROKER_CHECK_TTL`] old, however many ask. The body says which
    /// check failed and nothing else: no addresses, no instance id (`reply_to`), no versions.
    pub async fn readiness(&self) -> (bool, warp::reply::Response) {
        let registry = self.request_codec.schema_id().is_some();
        let models = !self.store.current().models().is_empty();
        let broker = self.broker.reachable().await;
        // The answers kept before this start are read back (calls with a key are served).
        let idempotency = self.idempotency.is_loaded();
        let ready = registry && models && broker && idempotency;
        let body = json!({
            "ready": ready,
            "checks": {"broker": broker, "registry": registry, "models": models, "idempotency": idempotency},
        });
        (ready, json_response(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body))
    }

    fn server_metadata(&self) -> Value {
        json!({"name": "streamscore", "version": env!("CARGO_PKG_VERSION"), "extensions": []})
    }

    /// The version a call runs: the path's, else the tenant's pin, else the default.
    fn route(&self, tenant: Option<&str>, model: &str, version: Option<&str>) -> Result<Arc<ModelVersion>, ApiError> {
        let authority = self.authority.get();
        let pin = tenant.and_then(|t| authority.policy.pin(t, model));
        self.store.current().route(model, version, pin).map_err(|e| match e {
            RouteError::UnknownModel { .. } => ApiError::not_found("UNKNOWN_MODEL", e.to_string()),
            RouteError::UnknownVersion { .. } => ApiError::not_found("UNKNOWN_MODEL_VERSION", e.to_string()),
            RouteError::Refused { .. } => ApiError::unavailable("MODEL_REFUSED", e.to_string()),
        })
    }

    async fn model_ready(&self, model: &str, version: Option<&str>) -> warp::reply::Response {
        let known = self.route(None, model, version).is_ok();
        let ready = known && self.readiness().await.0;
        empty(if ready { StatusCode::OK } else { StatusCode::BAD_REQUEST })
    }

    fn model_metadata(
        &self,
        headers: &HeaderMap,
        model: &str,
        version: Option<&str>,
    ) -> Result<warp::reply::Response, ApiError> {
        let tenant = self.caller(headers, Scope::Predict)?.tenant;
        self.allowed(&tenant, model)?;
        let routed = self.route(Some(&tenant), model, version)?;
        let versions: Vec<String> = match version {
            Some(v) => vec![v.to_owned()],
            None => {
                let store = self.store.current();
                let mut all: Vec<String> =
                    store.versions().filter(|v| v.meta.name == model).map(|v| v.meta.version.clone()).collect();
                all.sort();
                all
            }
        };
        let features = routed.meta.features.len();
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "name": model,
                "versions": versions,
                "platform": "onnxruntime_onnx",
                "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, features]}],
                "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}],
                "parameters": {
                    "feature_names": routed.meta.features.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
                    "version_for_this_key": routed.meta.version,
                },
            }),
        ))
    }

    /// Whether `tenant` may use `model`; checked before the model is looked up, so a tenant
    /// gets 403 for a model it may not use whether that model exists or not. A refusal is
    /// recorded ([`crate::authlog`]), as those of credentials and scopes are.
    fn allowed(&self, tenant: &str, model: &str) -> Result<(), ApiError> {
        let allowed = match self.authority.get().policy.tenant(tenant) {
            None => {
                Err(ApiError::new(StatusCode::FORBIDDEN, "UNKNOWN_TENANT", format!("tenant {tenant} may not call")))
            }
            Some(p) if !p.allowed_models.is_empty() && !p.allowed_models.iter().any(|m| m == model) => {
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "MODEL_NOT_ALLOWED",
                    format!("tenant {tenant} may not use {model}"),
                ))
            }
            Some(_) => Ok(()),
        };
        allowed.map_err(|error| self.refuse(Some(tenant), error))
    }

    async fn oip_infer(
        &self,
        headers: &HeaderMap,
        model: &str,
        version: Option<&str>,
        body: &[u8],
        call_id: &str,
    ) -> Result<warp::reply::Response, ApiError> {
        let caller = self.caller(headers, Scope::Predict)?;
        let tenant = caller.tenant.clone();
        self.allowed(&tenant, model)?;
        let routed = self.route(Some(&tenant), model, version)?;
        if headers.contains_key("inference-header-content-length") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "BINARY_TENSORS_UNSUPPORTED",
                "the binary tensor data extension is not supported: send the tensor as JSON `data`",
            ));
        }
        let names: Vec<&str> = routed.meta.features.iter().map(|f| f.name.as_str()).collect();
        let (request, rows) = parse_oip(body, &names)?;
        let explain = request.explain()?;
        if explain {
            self.may(&caller, Scope::Explain)?;
        }
        explainable(&routed, explain)?;
        let scored = self.score(call_id, &tenant, model, version, rows, request.id.as_deref(), explain).await?;
        let data: Vec<f64> = scored.rows.iter().map(|(_, o)| o.score.unwrap_or(f64::NAN)).collect();
        let first = &scored.rows[0].1;
        let mut body = json!({
            "model_name": model,
            "model_version": first.model_version,
            "outputs": [{"name": "score", "datatype": "FP32", "shape": [data.len(), 1], "data": data}],
            "parameters": {
                "request_ids": scored.rows.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
                "backend": first.backend,
                "labels": scored.rows.iter().map(|(_, o)| o.label.as_deref()).collect::<Vec<_>>(),
            },
        });
        if explain {
            body["parameters"]["explanations"] =
                scored.rows.iter().map(|(_, o)| o.explanation.as_ref().map_or(Value::Null, explanation_json)).collect();
        }
        if let Some(id) = request.id {
            body["id"] = Value::String(id);
        }
        Ok(json_response(StatusCode::OK, &body))
    }

    async fn predict(
        &self,
        headers: &HeaderMap,
        model: &str,
        query: &str,
        body: &[u8],
        call_id: &str,
    ) -> Result<warp::reply::Response, ApiError> {
        let caller = self.caller(headers, Scope::Predict)?;
        let tenant = caller.tenant.clone();
        self.allowed(&tenant, model)?;
        let mut request = parse_predict(body)?;
        let explain = request.explain(query)?;
        if explain {
            self.may(&caller, Scope::Explain)?;
        }
        let routed = self.route(Some(&tenant), model, request.version.as_deref())?;
        explainable(&routed, explain)?;
        let rows = request.take_rows()?;
        let (version, client) = (request.version.as_deref(), request.id.as_deref());
        let scored = self.score(call_id, &tenant, model, version, rows, client, explain).await?;
        let predictions: Vec<Value> = scored.rows.iter().map(|(id, o)| prediction_json(id, o)).collect();
        let mut body = json!({"predictions": predictions});
        if let Some(id) = request.id {
            body["id"] = Value::String(id);
        }
        Ok(json_response(StatusCode::OK, &body))
    }

    fn request_status(&self, headers: &HeaderMap, id: &str) -> Result<warp::reply::Response, ApiError> {
        let tenant = self.caller(headers, Scope::Predict)?.tenant;
        match self.waiters.lookup(&tenant, id) {
            Lookup::Answered(outcome) => {
                match outcome_error(
                    std::slice::from_ref(&(id.to_owned(), *outcome.clone())),
                    &self.authority.get().policy,
                ) {
                    None => Ok(json_response(
                        StatusCode::OK,
                        &json!({"status": "answered", "prediction": prediction_json(id, &outcome)}),
                    )),
                    Some(error) => Err(error),
                }
            }
            Lookup::Pending | Lookup::Waiting => {
                Ok(json_response(StatusCode::ACCEPTED, &json!({"status": "pending", "request_id": id})))
            }
            Lookup::Unknown => Err(ApiError::not_found(
                "REQUEST_NOT_FOUND",
                format!(
                    "request {id} is not one this bridge instance is keeping for your tenant (answers are kept {} s)",
                    crate::waiters::KEEP_LATE.as_secs()
                ),
            )),
        }
    }

    /// Checks, publishes and waits for the outcomes of one call's rows; `explain`: each
    /// request asks for an explanation (the attribute `explain` = `true`).
    #[allow(clippy::too_many_arguments)]
    async fn score(
        &self,
        call_id: &str,
        tenant: &str,
        model: &str,
        version: Option<&str>,
        rows: Vec<Features>,
        client_id: Option<&str>,
        explain: bool,
    ) -> Result<Scored, ApiError> {
        let started = Instant::now();
        let deadline = self.config.deadline;
        let left = || deadline.saturating_sub(started.elapsed());
        let store = self.store.current();
        let authority = self.authority.get();
        let ids: Vec<String> = if rows.len() == 1 {
            vec![call_id.to_owned()]
        } else {
            rows.iter().map(|_| uuid::Uuid::new_v4().to_string()).collect()
        };
        let now = streamscore_contracts::now_micros();
        let mut payloads = Vec::with_capacity(rows.len());
        for (row, (features, id)) in rows.into_iter().zip(&ids).enumerate() {
            let mut attributes = HashMap::from([("via".to_owned(), "bridge".to_owned())]);
            if let Some(client) = client_id {
                attributes.insert("client_request_id".to_owned(), client.to_owned());
            }
            if explain {
                attributes.insert(streamscore_contracts::EXPLAIN_ATTRIBUTE.to_owned(), "true".to_owned());
            }
            let request = InferenceRequest {
                request_id: id.clone(),
                tenant: tenant.to_owned(),
                model: model.to_owned(),
                model_version: version.map(str::to_owned),
                features,
                created_at: now,
                reply_to: Some(self.config.instance.clone()),
                attributes,
            };
            if let Some((reason, detail)) = streamscore_ingest::check_request(
                &request,
                &authority.tenants,
                Some(&store),
                &authority.pins,
                &self.rollouts.current(),
            ) {
                return Err(check_error(reason, detail).details(json!({"row": row, "reason": reason.code()})));
            }
            let bytes = self.request_codec.encode(&request).map_err(|e| {
                ApiError::unavailable("REGISTRY_UNAVAILABLE", format!("cannot encode the request: {e}"))
            })?;
            payloads.push(bytes);
        }
        // Dropped unsettled (this future dropped: the client hung up), the registration
        // forgets every request still waiting.
        let mut registration = self.waiters.register(tenant, &ids, left()).await.map_err(|e| match e {
            WaitError::Full { .. } => ApiError::unavailable("TOO_MANY_WAITING", e.to_string()),
            WaitError::TenantFull { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TENANT_WAITERS_EXCEEDED", e.to_string()).retry_after(1)
            }
            WaitError::NotListening => ApiError::unavailable("BROKER_UNAVAILABLE", e.to_string()),
        })?;
        if let Err(error) = self.publish(tenant, payloads, left()).await {
            if error.status == StatusCode::GATEWAY_TIMEOUT {
                registration.give_up(0);
            }
            return Err(error.details(json!({"request_ids": ids})));
        }
        let mut rows = Vec::with_capacity(ids.len());
        for (id, receiver) in ids.iter().zip(registration.take_receivers()) {
            match tokio::time::timeout(left(), receiver).await {
                Ok(Ok(outcome)) => rows.push((id.clone(), outcome)),
                _ => {
                    let pending: Vec<String> = ids[rows.len()..].to_vec();
                    registration.give_up(rows.len());
                    return Err(ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "DEADLINE_EXCEEDED",
                        format!(
                            "no outcome within {} ms; GET /v1/requests/{{id}} answers when it comes",
                            deadline.as_millis()
                        ),
                    )
                    .details(json!({"request_ids": pending})));
                }
            }
        }
        registration.finish();
        match outcome_error(&rows, &self.authority.get().policy) {
            Some(error) => Err(error),
            None => Ok(Scored { rows }),
        }
    }

    /// Publishes the rows and waits for the broker's acknowledgements.
    async fn publish(&self, tenant: &str, payloads: Vec<Vec<u8>>, wait: Duration) -> Result<(), ApiError> {
        use rdkafka::producer::FutureRecord;
        let mut deliveries = Vec::with_capacity(payloads.len());
        let authority = self.authority.get();
        for payload in &payloads {
            // A tenant bound to Kafka principals has its own topic (ingest refuses it on the
            // shared one); the bridge, which authenticated the caller by API key, writes there.
            let topic = authority.policy.bound_tenants().find(|(t, _)| *t == tenant).map_or_else(
                || self.config.requests_topic.clone(),
                |(t, _)| streamscore_ingest::TenantTopics::topic_for(&self.config.requests_topic, t),
            );
            let record = FutureRecord::to(&topic).key(tenant.as_bytes()).payload(payload.as_slice());
            let delivery = streamscore_kafka::produce::enqueue(&self.producer, record)
                .await
                .map_err(|e| ApiError::unavailable("BROKER_UNAVAILABLE", format!("cannot publish the request: {e}")))?;
            deliveries.push(delivery);
        }
        acknowledged(
            deliveries,
            wait,
            "request",
            "the broker did not acknowledge the request in time; it may still be scored",
        )
        .await
    }
}

/// The answer a refusal by ingest's check gets: what the caller sent is wrong (4xx).
/// Every delivery of `what` (the request, the feedback) acknowledged by the broker within
/// `wait`; else the caller's error: 504 `DEADLINE_EXCEEDED` saying `late`, or 503
/// `BROKER_UNAVAILABLE` with the broker's refusal.
async fn acknowledged<F, T, E: std::fmt::Display, M, C>(
    deliveries: Vec<F>,
    wait: Duration,
    what: &str,
    late: &'static str,
) -> Result<(), ApiError>
where
    F: std::future::Future<Output = Result<Result<T, (E, M)>, C>>,
{
    let results = tokio::time::timeout(wait, futures::future::join_all(deliveries))
        .await
        .map_err(|_| ApiError::new(StatusCode::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED", late))?;
    for result in results {
        match result {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                return Err(ApiError::unavailable("BROKER_UNAVAILABLE", format!("the broker refused the {what}: {e}")))
            }
            Err(_) => return Err(ApiError::unavailable("BROKER_UNAVAILABLE", "the producer went away")),
        }
    }
    Ok(())
}

fn check_error(reason: DeadLetterReason, detail: String) -> ApiError {
    let status = match reason {
        DeadLetterReason::UnknownModel | DeadLetterReason::UnknownModelVersion => StatusCode::NOT_FOUND,
        DeadLetterReason::UnknownTenant => StatusCode::FORBIDDEN,
        DeadLetterReason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, reason.code(), detail)
}

/// The error a call's outcomes give, if any row was not scored (the first such row decides).
fn outcome_error(rows: &[(String, PredictionOutcome)], policy: &streamscore_infer::quota::Policy) -> Option<ApiError> {
    let (row, (id, outcome)) = rows.iter().enumerate().find(|(_, (_, o))| o.status != OutcomeStatus::Scored)?;
    let reason = outcome.reason.clone().unwrap_or_else(|| "UNKNOWN".to_owned());
    let detail = outcome.detail.clone().unwrap_or_else(|| reason.clone());
    let details = json!({"row": row, "request_id": id, "reason": reason});
    let code: &'static str = match reason.as_str() {
        "QUOTA_EXCEEDED" => "QUOTA_EXCEEDED",
        "IN_FLIGHT_EXCEEDED" => "IN_FLIGHT_EXCEEDED",
        "MODEL_NOT_ALLOWED" => "MODEL_NOT_ALLOWED",
        "UNKNOWN_TENANT" => "UNKNOWN_TENANT",
        "UNKNOWN_MODEL" => "UNKNOWN_MODEL",
        "UNKNOWN_MODEL_VERSION" => "UNKNOWN_MODEL_VERSION",
        "MODEL_NOT_LOADED" => "MODEL_NOT_LOADED",
        "MODEL_REFUSED" => "MODEL_REFUSED",
        "MODEL_ERROR" => "MODEL_ERROR",
        "EXPLAIN_INVALID" => "EXPLAIN_INVALID",
        "EXPLANATION_UNAVAILABLE" => "EXPLANATION_UNAVAILABLE",
        _ if outcome.status == OutcomeStatus::Failed => "MODEL_ERROR",
        _ => "REJECTED",
    };
    let status = match (outcome.status, code) {
        (OutcomeStatus::Failed, _) | (_, "MODEL_ERROR") => StatusCode::INTERNAL_SERVER_ERROR,
        (_, "QUOTA_EXCEEDED" | "IN_FLIGHT_EXCEEDED") => StatusCode::TOO_MANY_REQUESTS,
        (_, "MODEL_NOT_ALLOWED" | "UNKNOWN_TENANT") => StatusCode::FORBIDDEN,
        (_, "UNKNOWN_MODEL" | "UNKNOWN_MODEL_VERSION") => StatusCode::NOT_FOUND,
        (_, "MODEL_NOT_LOADED" | "MODEL_REFUSED") => StatusCode::SERVICE_UNAVAILABLE,
        (_, "EXPLAIN_INVALID") => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let mut error = ApiError::new(status, code, detail).details(details);
    if status == StatusCode::TOO_MANY_REQUESTS {
        let millis = u64::try_from(outcome.retry_after_ms.unwrap_or(1000)).unwrap_or(1000);
        error = error.retry_after(millis.div_ceil(1000));
        if let Some(tenant) = outcome.lineage.tenant.as_deref().and_then(|t| policy.tenant(t)) {
            error.rate_limit = Some((tenant.rate_per_sec, tenant.burst));
        }
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        error = error.retry_after(1);
    }
    Some(error)
}

fn prediction_json(id: &str, outcome: &PredictionOutcome) -> Value {
    let mut prediction = json!({
        "request_id": id,
        "score": outcome.score,
        "label": outcome.label,
        "model": outcome.model,
        "version": outcome.model_version,
        "backend": outcome.backend,
    });
    if let Some(explanation) = &outcome.explanation {
        prediction["explanation"] = explanation_json(explanation);
    }
    prediction
}

/// An explanation as callers read it: the baseline's score, every feature's attribution by
/// name, and the top reasons (feature, its value, its attribution), largest |φ| first.
pub fn explanation_json(e: &streamscore_contracts::Explanation) -> Value {
    let attributions: serde_json::Map<String, Value> =
        e.attributions.iter().map(|a| (a.feature.clone(), json!(a.attribution))).collect();
    let top: Vec<Value> =
        e.top.iter().map(|a| json!({"feature": a.feature, "value": a.value, "attribution": a.attribution})).collect();
    let mut body = json!({
        "method": e.method,
        "baseline_score": e.baseline_score,
        "score": e.score,
        "attributions": attributions,
        "top": top,
    });
    if let Some(n) = e.permutations {
        body["permutations"] = json!(n);
    }
    if let Some(bound) = e.error_bound {
        body["error_bound"] = json!(bound);
    }
    body
}

/// Refuses an explanation of a version that has none (no baseline in its metadata) before
/// anything is published.
fn explainable(version: &ModelVersion, explain: bool) -> Result<(), ApiError> {
    if explain && version.meta.baseline_row().is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "EXPLANATION_UNAVAILABLE",
            format!(
                "{} has no baseline in its metadata.json, so it cannot be explained; ask without explain",
                version.key()
            ),
        ));
    }
    Ok(())
}

/// The `explain` flag of a query string (`explain=true` or `explain=false`); `None` without it.
fn query_explain(query: &str) -> Result<Option<bool>, ApiError> {
    let mut found = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "explain" {
            found = Some(match value {
                "true" => true,
                "false" => false,
                other => {
                    return Err(ApiError::bad_request(format!("explain={other}: give explain=true or explain=false")))
                }
            });
        }
    }
    Ok(found)
}

/// Parses an Open Inference Protocol v2 inference body into its rows (feature name to value)
/// for a model taking the features `names`. Every bad body is a 400 or 415 [`ApiError`].
pub fn parse_oip(body: &[u8], names: &[&str]) -> Result<(OipRequest, Vec<Features>), ApiError> {
    let request: OipRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not an inference request: {e}")))?;
    let rows = request.rows(names)?;
    Ok((request, rows))
}

/// Parses a `/v1` predict body; [`PredictRequest::take_rows`] gives its rows.
pub fn parse_predict(body: &[u8]) -> Result<PredictRequest, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not a prediction request: {e}")))
}

impl PredictRequest {
    /// Whether the call asks for explanations: `?explain=true` or `"explain": true`; the two
    /// may not disagree.
    pub fn explain(&self, query: &str) -> Result<bool, ApiError> {
        match (query_explain(query)?, self.explain) {
            (Some(q), Some(b)) if q != b => {
                Err(ApiError::bad_request(format!("explain is {q} in the query and {b} in the body")))
            }
            (q, b) => Ok(q.or(b).unwrap_or(false)),
        }
    }

    /// The call's rows: `features` (one) or `instances` (1 to [`MAX_ROWS`]).
    pub fn take_rows(&mut self) -> Result<Vec<Features>, ApiError> {
        match (self.features.take(), self.instances.take()) {
            (Some(features), None) => Ok(vec![features]),
            (None, Some(instances)) if (1..=MAX_ROWS).contains(&instances.len()) => Ok(instances),
            (None, Some(instances)) => Err(ApiError::bad_request(format!(
                "instances has {} rows; a call takes 1 to {MAX_ROWS}",
                instances.len()
            ))),
            _ => Err(ApiError::bad_request("give either `features` (one row) or `instances` (a batch)")),
        }
    }
}

/// `POST /v1/models/{model}/predict`.
#[derive(Debug, Deserialize)]
pub struct PredictRequest {
    /// One row: feature name to value.
    #[serde(default)]
    features: Option<Features>,
    /// A batch of rows.
    #[serde(default)]
    instances: Option<Vec<Features>>,
    /// A version; else the tenant's pin, else the default.
    #[serde(default)]
    pub version: Option<String>,
    /// The caller's own id, echoed back (never the pipeline's request id).
    #[serde(default)]
    pub id: Option<String>,
    /// Explain each row (as `?explain=true`).
    #[serde(default)]
    pub explain: Option<bool>,
}

/// An Open Inference Protocol v2 inference request (JSON tensors only).
#[derive(Debug, Deserialize)]
pub struct OipRequest {
    #[serde(default)]
    pub id: Option<String>,
    inputs: Vec<OipTensor>,
    /// Request parameters; `explain: true` asks for explanations, other keys are ignored.
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct OipTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
}

impl OipRequest {
    /// Whether `parameters.explain` asks for explanations (a boolean when present).
    pub fn explain(&self) -> Result<bool, ApiError> {
        match self.parameters.as_ref().and_then(|p| p.get("explain")) {
            None => Ok(false),
            Some(Value::Bool(explain)) => Ok(*explain),
            Some(other) => Err(ApiError::bad_request(format!("parameters.explain is {other}; give true or false"))),
        }
    }

    /// The rows of the `features` tensor, each a map from feature name to value.
    fn rows(&self, names: &[&str]) -> Result<Vec<Features>, ApiError> {
        let [tensor] = self.inputs.as_slice() else {
            return Err(ApiError::bad_request(format!(
                "expected one input tensor named features, got {}",
                self.inputs.len()
            )));
        };
        if tensor.name != "features" {
            return Err(ApiError::bad_request(format!("unknown input {:?}: the model takes `features`", tensor.name)));
        }
        if tensor.parameters.as_ref().is_some_and(|p| p.contains_key("binary_data_size")) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "BINARY_TENSORS_UNSUPPORTED",
                "the binary tensor data extension is not supported: send the tensor as JSON `data`",
            ));
        }
        if !matches!(tensor.datatype.as_str(), "FP32" | "FP64") {
            return Err(ApiError::bad_request(format!("datatype {} is not supported: send FP32", tensor.datatype)));
        }
        let width = names.len();
        let rows = match tensor.shape.as_slice() {
            [n, k] if *k == width as i64 && *n >= 1 => usize::try_from(*n).unwrap_or(usize::MAX),
            [k] if *k == width as i64 => 1,
            shape => {
                return Err(ApiError::bad_request(format!(
                    "shape {shape:?} does not fit the model: expected [rows, {width}] with rows ≥ 1"
                )))
            }
        };
        if rows > MAX_ROWS {
            return Err(ApiError::bad_request(format!("{rows} rows; a call takes 1 to {MAX_ROWS}")));
        }
        let data = tensor.data.as_ref().ok_or_else(|| ApiError::bad_request("the features tensor has no `data`"))?;
        let mut flat = Vec::with_capacity(rows * width);
        flatten(data, &mut flat)?;
        if flat.len() != rows * width {
            return Err(ApiError::bad_request(format!(
                "data has {} values, shape {:?} needs {}",
                flat.len(),
                tensor.shape,
                rows * width
            )));
        }
        Ok(flat
            .chunks(width)
            .map(|row| names.iter().zip(row).map(|(name, value)| ((*name).to_owned(), *value)).collect())
            .collect())
    }
}

/// Flat or nested JSON arrays of numbers, in row-major order.
fn flatten(value: &Value, out: &mut Vec<f64>) -> Result<(), ApiError> {
    match value {
        Value::Array(items) => items.iter().try_for_each(|item| flatten(item, out)),
        Value::Number(n) => {
            out.push(n.as_f64().ok_or_else(|| ApiError::bad_request(format!("{n} is not a number the model takes")))?);
            Ok(())
        }
        other => Err(ApiError::bad_request(format!("tensor data must be numbers, found {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(shape: Vec<i64>, data: Value) -> OipRequest {
        OipRequest {
            id: None,
            parameters: None,
            inputs: vec![OipTensor {
                name: "features".to_owned(),
                shape,
                datatype: "FP32".to_owned(),
                data: Some(data),
                parameters: None,
            }],
        }
    }

    #[test]
    fn flat_and_nested_data_give_the_same_rows() {
        let names = ["a", "b"];
        let flat = tensor(vec![2, 2], json!([1, 2, 3, 4])).rows(&names).expect("flat");
        let nested = tensor(vec![2, 2], json!([[1, 2], [3, 4]])).rows(&names).expect("nested");
        assert_eq!(flat, nested);
        assert_eq!(flat[1]["b"], 4.0);
        assert_eq!(tensor(vec![2], json!([5, 6])).rows(&names).expect("one row")[0]["a"], 5.0);
    }

    #[test]
    fn bad_tensors_are_client_errors_naming_the_problem() {
        let names = ["a", "b"];
        let cases = [
            (tensor(vec![2, 3], json!([1, 2, 3, 4, 5, 6])), "shape"),
            (tensor(vec![2, 2], json!([1, 2, 3])), "3 values"),
            (tensor(vec![1, 2], json!([1, "x"])), "numbers"),
            (tensor(vec![1, 2], json!([1, null])), "numbers"),
            (tensor(vec![0, 2], json!([])), "rows ≥ 1"),
            (tensor(vec![1001, 2], json!([])), "1 to 1000"),
        ];
        for (request, says) in cases {
            let error = request.rows(&names).expect_err(says);
            assert!(error.status.is_client_error(), "{says}: {}", error.status);
            assert!(error.message.contains(says), "{says}: {}", error.message);
        }
        let mut int = tensor(vec![1, 2], json!([1, 2]));
        int.inputs[0].datatype = "BYTES".to_owned();
        assert_eq!(int.rows(&names).expect_err("datatype").status, StatusCode::BAD_REQUEST);
    }

    /// `path` with every `{name}` replaced by `value`.
    fn instance(path: &str, value: &str) -> Vec<String> {
        path.split('/')
            .filter(|s| !s.is_empty())
            .map(|s| if s.starts_with('{') { value.to_owned() } else { s.to_owned() })
            .collect()
    }

    #[test]
    fn every_route_of_the_table_resolves_to_itself() {
        for route in ROUTES {
            let segments = instance(route.path, "x");
            let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
            let method = Method::from_bytes(route.method.as_bytes()).expect("method");
            let (found, parameters) = resolve(&method, &segments).expect(route.path);
            assert_eq!(found.path, route.path, "{} {}: another route comes first", route.method, route.path);
            assert_eq!(parameters.len(), route.path.matches('{').count());
        }
    }

    #[test]
    fn a_known_path_under_another_method_names_the_methods_it_takes() {
        let resolved = |method: Method, path: &str| {
            let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            resolve(&method, &segments).map(|(route, parameters)| (route.label, parameters.join(",")))
        };
        assert_eq!(resolved(Method::DELETE, "/v1/models/fraud/predict"), Err(vec!["POST"]));
        assert_eq!(resolved(Method::POST, "/ready"), Err(vec!["GET"]));
        assert_eq!(resolved(Method::GET, "/v1/nothing"), Err(vec![]), "no such path: 404");
        assert_eq!(
            resolved(Method::GET, "/v2/models/fraud/versions/2"),
            Ok(("v2_model_metadata", "fraud,2".to_owned()))
        );
        assert_eq!(resolved(Method::GET, "/v1/requests/r-1"), Ok(("v1_request", "r-1".to_owned())));
        let response = ApiError::method_not_allowed(&Method::PUT, "/healthz", &["GET"]).render(Dialect::Own, "call");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()["allow"], "GET");
    }

    #[test]
    fn the_explain_flag_comes_from_the_query_the_body_or_the_parameters() {
        let predict = |body: &str| parse_predict(body.as_bytes()).expect("a predict body");
        let plain = predict(r#"{"features": {"a": 1}}"#);
        assert!(!plain.explain("").expect("a flag") && !plain.explain("x=1&explain=false").expect("a flag"));
        assert!(plain.explain("explain=true").expect("a flag") && plain.explain("v=2&explain=true").expect("a flag"));
        assert!(predict(r#"{"features": {"a": 1}, "explain": true}"#).explain("").expect("a flag"));
        assert!(predict(r#"{"features": {"a": 1}, "explain": true}"#).explain("explain=true").expect("a flag"));
        for (query, body) in [("explain=yes", r#"{"features": {}}"#), ("explain=false", r#"{"explain": true}"#)] {
            let error = predict(body).explain(query).expect_err(query);
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{query}: {}", error.message);
        }
        assert!(parse_predict(br#"{"explain": "yes"}"#).is_err(), "a boolean in the body");
        let oip = |parameters: &str| {
            let body = format!(
                r#"{{"inputs": [{{"name": "features", "shape": [1, 1], "datatype": "FP32", "data": [1]}}]{parameters}}}"#
            );
            parse_oip(body.as_bytes(), &["a"]).expect("an OIP body").0
        };
        assert!(!oip("").explain().expect("a flag"));
        assert!(oip(r#", "parameters": {"explain": true, "other": 1}"#).explain().expect("a flag"));
        assert!(!oip(r#", "parameters": {"explain": false}"#).explain().expect("a flag"));
        assert_eq!(
            oip(r#", "parameters": {"explain": "true"}"#).explain().expect_err("not a boolean").status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn an_explanation_is_answered_by_feature_with_the_top_reasons() {
        let attribution = |feature: &str, attribution: f64| streamscore_contracts::Attribution {
            feature: feature.to_owned(),
            value: 2.0,
            baseline: 1.0,
            attribution,
        };
        let mut outcome: PredictionOutcome = crate::tests::outcome("acme", "r1");
        outcome.explanation = Some(streamscore_contracts::Explanation {
            method: "exact_shapley".to_owned(),
            baseline_score: 0.25,
            score: 0.5,
            attributions: vec![attribution("a", 0.05), attribution("b", 0.2)],
            top: vec![attribution("b", 0.2), attribution("a", 0.05)],
            permutations: None,
            error_bound: None,
        });
        let json = prediction_json("r1", &outcome);
        assert_eq!(json["explanation"]["baseline_score"], 0.25);
        assert_eq!(json["explanation"]["attributions"]["b"], 0.2);
        assert_eq!(json["explanation"]["top"][0], json!({"feature": "b", "value": 2.0, "attribution": 0.2}));
        assert!(json["explanation"].get("error_bound").is_none(), "exact: no bound");
        outcome.explanation = None;
        assert!(prediction_json("r1", &outcome).get("explanation").is_none());
    }

    #[test]
    fn quota_rejections_are_429_with_retry_after_rounded_up() {
        let policy = streamscore_infer::quota::Policy::parse(
            std::path::Path::new("p.toml"),
            b"version = 1\n[tenants.acme]\nrate_per_sec = 5\nburst = 10\n",
        )
        .expect("policy");
        let mut outcome: PredictionOutcome = crate::tests::outcome("acme", "r1");
        outcome.status = OutcomeStatus::Rejected;
        outcome.reason = Some("QUOTA_EXCEEDED".to_owned());
        outcome.retry_after_ms = Some(1200);
        let error = outcome_error(&[("r1".to_owned(), outcome)], &policy).expect("an error");
        assert_eq!(error.status, StatusCode::TOO_MANY_REQUESTS);
        let response = error.render(Dialect::Own, "call");
        assert_eq!(response.headers()["retry-after"], "2");
        assert_eq!(response.headers()["ratelimit-limit"], "10");
        assert_eq!(response.headers()["ratelimit-remaining"], "0");
    }
}
