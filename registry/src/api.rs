//! The Confluent Schema Registry REST API (Avro), routed by hand over path segments so the
//! whole surface reads as one table.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use warp::http::{HeaderMap, Method, StatusCode};
use warp::Filter;

use crate::auth::Auth;
use crate::compat::Level;
use crate::error::{ApiError, CONTENT_TYPE};
use crate::state::{RegisterPlan, State, VersionSel};
use crate::store::Store;

/// Largest request body accepted.
const MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// A successful reply: status and JSON body.
#[derive(Debug)]
struct Reply(StatusCode, Vec<u8>);

impl Reply {
    fn json(value: &impl serde::Serialize) -> Self {
        Self(StatusCode::OK, serde_json::to_vec(value).unwrap_or_default())
    }
    fn raw(text: String) -> Self {
        Self(StatusCode::OK, text.into_bytes())
    }
}

fn response(result: Result<Reply, ApiError>) -> warp::reply::Response {
    match result {
        Ok(Reply(status, body)) => {
            let mut response = warp::reply::Response::new(body.into());
            *response.status_mut() = status;
            if let Ok(value) = warp::http::HeaderValue::from_str(CONTENT_TYPE) {
                response.headers_mut().insert(warp::http::header::CONTENT_TYPE, value);
            }
            response
        }
        Err(e) => warp::Reply::into_response(e),
    }
}

/// Body of register, lookup and compatibility requests.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

impl SchemaRequest {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let request: Self = serde_json::from_slice(body).map_err(ApiError::bad_request)?;
        match request.schema_type.as_deref() {
            None | Some("AVRO") => {}
            Some(other) => {
                return Err(ApiError::invalid_schema(format!(
                    "schema type {other} is not supported; this registry serves AVRO"
                )))
            }
        }
        if !request.references.is_empty() {
            return Err(ApiError::invalid_schema("schema references are not supported"));
        }
        Ok(request)
    }
}

/// Body of config updates.
#[derive(Debug, Deserialize)]
struct ConfigRequest {
    compatibility: String,
}

/// Renders the process's metrics in Prometheus text format, served on `GET /metrics`.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// The warp filter serving the API (and `/metrics` when `metrics` is given).
pub fn routes(
    store: Arc<Store>,
    auth: Arc<streamscore_tls::Current<Auth>>,
    metrics: Option<MetricsRender>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible> + Clone {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(move |method: Method, path: warp::path::FullPath, query: String, headers: HeaderMap, body| {
            let store = Arc::clone(&store);
            let auth = Arc::clone(&auth);
            let metrics = metrics.clone();
            async move {
                if let (true, Some(render)) = (path.as_str() == "/metrics" && method == Method::GET, &metrics) {
                    let mut response = warp::reply::Response::new(render().into());
                    response.headers_mut().insert(
                        warp::http::header::CONTENT_TYPE,
                        warp::http::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    return response;
                }
                let segments: Vec<String> =
                    path.as_str().split('/').filter(|s| !s.is_empty()).map(percent_decode).collect();
                let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
                let query = parse_query(&query);
                // Who may, then the body (counted as it arrives, chunked too), then the rest.
                let result = match auth.get().check(&headers, Auth::needed(&method, &segments)) {
                    Err(e) => Err(e),
                    Ok(()) => match read_limited(body, MAX_BODY_BYTES).await {
                        Err(e) => Err(e),
                        Ok(body) => handle(&store, &method, &segments, &query, &body).await,
                    },
                };
                metrics::counter!(
                    "streamscore_registry_requests_total",
                    "method" => method_label(&method),
                    "outcome" => if result.is_ok() { "ok" } else { "error" },
                )
                .increment(1);
                if let Err(e) = &result {
                    tracing::debug!(%method, path = path.as_str(), code = e.error_code, "{}", e.message);
                }
                response(result)
            }
        })
        .recover(|rejection: warp::Rejection| async move {
            let error = ApiError::bad_request(format!("{rejection:?}"));
            Ok::<_, std::convert::Infallible>(response(Err(error)))
        })
}

/// HTTP methods as a metric label: the ones the API has, anything else `other`.
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        _ => "other",
    }
}

/// Reads a body up to `limit` bytes, counting the bytes that arrive (a chunked body has no
/// length to check first): 413 as soon as it is over, before anything parses it.
async fn read_limited<S, B>(stream: S, limit: u64) -> Result<bytes::Bytes, ApiError>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures::StreamExt;
    let mut stream = std::pin::pin!(stream);
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if (body.len() + chunk.remaining()) as u64 > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            let n = piece.len();
            body.extend_from_slice(piece);
            chunk.advance(n);
        }
    }
    Ok(body.freeze())
}

/// Longest subject accepted.
pub const MAX_SUBJECT_CHARS: usize = 255;

/// A subject name must be 1 to 255 characters, none of them a control character.
fn check_subject(subject: &str) -> Result<(), ApiError> {
    if subject.is_empty() || subject.chars().count() > MAX_SUBJECT_CHARS {
        return Err(ApiError::invalid_subject(subject, "a subject has 1 to 255 characters"));
    }
    if subject.chars().any(char::is_control) {
        return Err(ApiError::invalid_subject(subject, "control characters are not allowed"));
    }
    Ok(())
}

/// Parses `a=1&b=true` into a map (later keys win).
fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    query.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn parse_id(text: &str) -> Result<u32, ApiError> {
    text.parse().map_err(|_| ApiError::schema_not_found())
}

fn parse_level(text: &str) -> Result<Level, ApiError> {
    text.parse().map_err(|()| ApiError::invalid_compatibility_level(text))
}

async fn handle(
    store: &Store,
    method: &Method,
    path: &[&str],
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let deleted = flag(query, "deleted");
    let permanent = flag(query, "permanent");
    match (method.as_str(), path) {
        ("GET", []) => Ok(Reply::json(&json!({}))),
        ("GET", ["schemas", "types"]) => Ok(Reply::json(&["AVRO"])),
        ("GET", ["mode"]) => Ok(Reply::json(&json!({"mode": "READWRITE"}))),

        ("GET", ["schemas", "ids", id]) => {
            let state = store.read();
            let entry = state.schema_by_id(parse_id(id)?)?;
            Ok(Reply::json(&json!({"schema": entry.text})))
        }
        ("GET", ["schemas", "ids", id, "schema"]) => {
            Ok(Reply::raw(store.read().schema_by_id(parse_id(id)?)?.text.clone()))
        }
        ("GET", ["schemas", "ids", id, "subjects"]) => {
            let state = store.read();
            let id = parse_id(id)?;
            state.schema_by_id(id)?;
            let mut subjects: Vec<String> = state.usages(id, deleted).into_iter().map(|(s, _)| s).collect();
            subjects.dedup();
            Ok(Reply::json(&subjects))
        }
        ("GET", ["schemas", "ids", id, "versions"]) => {
            let state = store.read();
            let id = parse_id(id)?;
            state.schema_by_id(id)?;
            let usages: Vec<Value> = state
                .usages(id, deleted)
                .into_iter()
                .map(|(subject, version)| json!({"subject": subject, "version": version}))
                .collect();
            Ok(Reply::json(&usages))
        }

        ("GET", ["subjects"]) => Ok(Reply::json(&store.read().subjects(deleted))),
        ("GET", ["subjects", subject, "versions"]) => Ok(Reply::json(&store.read().versions(subject, deleted)?)),
        ("GET", ["subjects", subject, "versions", version]) => {
            Ok(Reply::json(&store.read().version(subject, VersionSel::parse(version)?, deleted)?))
        }
        ("GET", ["subjects", subject, "versions", version, "schema"]) => {
            Ok(Reply::raw(store.read().version(subject, VersionSel::parse(version)?, deleted)?.schema))
        }
        ("GET", ["subjects", subject, "versions", version, "referencedby"]) => {
            store.read().version(subject, VersionSel::parse(version)?, deleted)?;
            Ok(Reply::json(&Vec::<u32>::new()))
        }
        ("POST", ["subjects", subject, "versions"]) => register(store, subject, body).await,
        ("POST", ["subjects", subject]) => {
            let request = SchemaRequest::parse(body)?;
            Ok(Reply::json(&store.read().lookup(subject, &request.schema, deleted)?))
        }
        ("DELETE", ["subjects", subject]) => {
            let _writer = store.writer().await?;
            let (versions, records) = store.read().plan_delete_subject(subject, permanent)?;
            store.append(&records).await?;
            Ok(Reply::json(&versions))
        }
        ("DELETE", ["subjects", subject, "versions", version]) => {
            let sel = VersionSel::parse(version)?;
            let _writer = store.writer().await?;
            let (version, record) = store.read().plan_delete_version(subject, sel, permanent)?;
            store.append(&[record]).await?;
            Ok(Reply::json(&version))
        }

        ("POST", ["compatibility", "subjects", subject, "versions", version]) => {
            compatibility(&store.read(), subject, Some(VersionSel::parse(version)?), body, flag(query, "verbose"))
        }
        ("POST", ["compatibility", "subjects", subject, "versions"]) => {
            compatibility(&store.read(), subject, None, body, flag(query, "verbose"))
        }

        ("GET", ["config"]) => Ok(Reply::json(&json!({"compatibilityLevel": store.read().global_level()}))),
        ("PUT", ["config"]) => set_config(store, None, body).await,
        ("GET", ["config", subject]) => {
            let state = store.read();
            match state.subject_level(subject) {
                Some(level) => Ok(Reply::json(&json!({"compatibilityLevel": level}))),
                None if flag(query, "defaultToGlobal") => {
                    Ok(Reply::json(&json!({"compatibilityLevel": state.global_level()})))
                }
                None => Err(ApiError::subject_level_compatibility_not_configured(subject)),
            }
        }
        ("PUT", ["config", subject]) => set_config(store, Some(subject), body).await,
        ("DELETE", ["config", subject]) => {
            let _writer = store.writer().await?;
            let previous = store.read().subject_level(subject).ok_or_else(|| ApiError::subject_not_found(subject))?;
            store.append(&[State::plan_config(Some(subject), None)]).await?;
            Ok(Reply::json(&json!({"compatibilityLevel": previous})))
        }

        (_, ["schemas" | "subjects" | "compatibility" | "config" | "mode", ..]) => Err(known_path_or_404(method, path)),
        _ => Err(ApiError::route_not_found()),
    }
}

/// A path the API knows with a method it does not serve answers 405; anything else 404.
fn known_path_or_404(method: &Method, path: &[&str]) -> ApiError {
    let known = matches!(
        path,
        ["subjects", ..]
            | ["config", ..]
            | ["compatibility", "subjects", _, "versions", ..]
            | ["schemas", "ids", ..]
            | ["mode"]
    );
    if known && method != Method::GET {
        ApiError::method_not_allowed()
    } else {
        ApiError::route_not_found()
    }
}

async fn register(store: &Store, subject: &str, body: &[u8]) -> Result<Reply, ApiError> {
    check_subject(subject)?;
    let request = SchemaRequest::parse(body)?;
    let _writer = store.writer().await?;
    let plan = store.read().plan_register(subject, &request.schema)?;
    let id = match plan {
        RegisterPlan::Existing { id } => id,
        RegisterPlan::New { id, record } => {
            store.append(&[record]).await?;
            tracing::info!(subject, id, "schema registered");
            id
        }
    };
    Ok(Reply::json(&json!({"id": id})))
}

fn compatibility(
    state: &State,
    subject: &str,
    sel: Option<VersionSel>,
    body: &[u8],
    verbose: bool,
) -> Result<Reply, ApiError> {
    let request = SchemaRequest::parse(body)?;
    let problems = state.check_compatibility(subject, sel, &request.schema)?;
    let mut reply = json!({"is_compatible": problems.is_empty()});
    if verbose {
        reply["messages"] = json!(problems);
    }
    Ok(Reply::json(&reply))
}

async fn set_config(store: &Store, subject: Option<&str>, body: &[u8]) -> Result<Reply, ApiError> {
    if let Some(subject) = subject {
        check_subject(subject)?;
    }
    let request: ConfigRequest = serde_json::from_slice(body).map_err(ApiError::bad_request)?;
    let level = parse_level(&request.compatibility)?;
    let _writer = store.writer().await?;
    store.append(&[State::plan_config(subject, Some(level))]).await?;
    Ok(Reply::json(&json!({"compatibility": level})))
}

/// Decodes `%XX` escapes in a path segment (subjects may contain escaped characters).
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c"), "a/b c");
        assert_eq!(percent_decode("plain-value"), "plain-value");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
    }
}
