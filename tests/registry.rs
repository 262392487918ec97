//! The registry's REST API against a real server and broker: Confluent's routes, content
//! type, error bodies and codes, configs, deletes, and state that survives a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

mod support;
use support::TestRegistry;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
const V1: &str =
    r#"{"type":"record","name":"Payment","namespace":"io.example","fields":[{"name":"amount","type":"double"}]}"#;
const V2: &str = r#"{"type":"record","name":"Payment","namespace":"io.example","fields":[{"name":"amount","type":"double"},{"name":"currency","type":"string","default":"EUR"}]}"#;
const V3_REQUIRED: &str = r#"{"type":"record","name":"Payment","namespace":"io.example","fields":[{"name":"amount","type":"double"},{"name":"merchant","type":"string"}]}"#;

struct Api {
    client: Client,
    url: String,
}

impl Api {
    fn new(registry: &TestRegistry) -> Self {
        Self { client: streamscore_contracts::http::client(), url: registry.url.clone() }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.url)).header("accept", CONTENT_TYPE);
        if let Some(body) = body {
            request = request.header("content-type", CONTENT_TYPE).body(body.to_string());
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(content_type.as_deref(), Some(CONTENT_TYPE), "{path}");
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    async fn register(&self, subject: &str, schema: &str) -> (StatusCode, Value) {
        self.call(Method::POST, &format!("/subjects/{subject}/versions"), Some(json!({"schema": schema}))).await
    }

    async fn error_code(&self, method: Method, path: &str, body: Option<Value>) -> u64 {
        let (status, body) = self.call(method, path, body).await;
        assert!(!status.is_success(), "{path}: expected an error, got {status} {body}");
        assert!(body["message"].is_string(), "{path}: {body}");
        let code = body["error_code"].as_u64().expect("error_code");
        let expected_status = if code >= 10_000 { code / 100 } else { code };
        assert_eq!(u64::from(status.as_u16()), expected_status, "{path}: status matches the error code");
        code
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn register_lookup_and_read_back() {
    let registry = TestRegistry::start().await;
    let api = Api::new(&registry);

    assert_eq!(api.get("/subjects").await, (StatusCode::OK, json!([])));
    let (status, body) = api.register("payments-value", V1).await;
    assert_eq!(status, StatusCode::OK);
    let id1 = body["id"].as_u64().unwrap();
    assert_eq!(api.register("payments-value", V1).await.1["id"], id1, "same schema twice, same id");
    // Whitespace and key order do not make a new schema.
    let reformatted: Value = serde_json::from_str(V1).unwrap();
    assert_eq!(api.register("payments-value", &serde_json::to_string_pretty(&reformatted).unwrap()).await.1["id"], id1);
    assert_eq!(api.register("refunds-value", V1).await.1["id"], id1, "ids are global across subjects");
    let id2 = api.register("payments-value", V2).await.1["id"].as_u64().unwrap();
    assert_ne!(id1, id2);

    assert_eq!(api.get("/subjects").await.1, json!(["payments-value", "refunds-value"]));
    assert_eq!(api.get("/subjects/payments-value/versions").await.1, json!([1, 2]));
    let (_, latest) = api.get("/subjects/payments-value/versions/latest").await;
    assert_eq!(
        (latest["subject"].clone(), latest["version"].clone(), latest["id"].clone()),
        (json!("payments-value"), json!(2), json!(id2))
    );
    let (_, v1) = api.get("/subjects/payments-value/versions/1").await;
    assert_eq!(v1["id"], id1);
    let (_, raw) = api.get("/subjects/payments-value/versions/1/schema").await;
    assert_eq!(raw["name"], "Payment", "raw schema endpoint returns the schema itself");
    let (_, by_id) = api.get(&format!("/schemas/ids/{id2}")).await;
    assert!(by_id["schema"].as_str().unwrap().contains("currency"));
    assert_eq!(api.get(&format!("/schemas/ids/{id1}/schema")).await.1["type"], "record");
    assert_eq!(api.get(&format!("/schemas/ids/{id1}/subjects")).await.1, json!(["payments-value", "refunds-value"]));
    assert_eq!(api.get("/schemas/types").await.1, json!(["AVRO"]));

    let (status, found) = api.call(Method::POST, "/subjects/payments-value", Some(json!({"schema": V2}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((found["version"].clone(), found["id"].clone()), (json!(2), json!(id2)));
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn confluent_error_codes() {
    let registry = TestRegistry::start().await;
    let api = Api::new(&registry);
    api.register("s-value", V1).await;

    assert_eq!(api.error_code(Method::GET, "/subjects/nope/versions", None).await, 40401);
    assert_eq!(api.error_code(Method::GET, "/subjects/nope/versions/latest", None).await, 40401);
    assert_eq!(api.error_code(Method::GET, "/subjects/s-value/versions/9", None).await, 40402);
    assert_eq!(api.error_code(Method::GET, "/schemas/ids/999", None).await, 40403);
    assert_eq!(api.error_code(Method::POST, "/subjects/s-value", Some(json!({"schema": V2}))).await, 40403);
    assert_eq!(api.error_code(Method::POST, "/subjects/nope", Some(json!({"schema": V1}))).await, 40401);
    assert_eq!(
        api.error_code(Method::POST, "/subjects/s-value/versions", Some(json!({"schema": "{\"type\":\"record\"}"})))
            .await,
        42201
    );
    assert_eq!(
        api.error_code(Method::POST, "/subjects/s-value/versions", Some(json!({"schema": "not json"}))).await,
        42201
    );
    assert_eq!(
        api.error_code(
            Method::POST,
            "/subjects/s-value/versions",
            Some(json!({"schema": V1, "schemaType": "PROTOBUF"}))
        )
        .await,
        42201
    );
    assert_eq!(api.error_code(Method::GET, "/subjects/s-value/versions/0", None).await, 42202);
    assert_eq!(api.error_code(Method::GET, "/subjects/s-value/versions/abc", None).await, 42202);
    assert_eq!(api.error_code(Method::PUT, "/config", Some(json!({"compatibility": "SIDEWAYS"}))).await, 42203);
    assert_eq!(
        api.error_code(Method::POST, "/subjects/s-value/versions", Some(json!({"schema": V3_REQUIRED}))).await,
        409
    );
    assert_eq!(api.error_code(Method::GET, "/config/s-value", None).await, 40408);
    assert_eq!(api.error_code(Method::GET, "/no/such/route", None).await, 404);
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compatibility_levels_and_checks() {
    let registry = TestRegistry::start().await;
    let api = Api::new(&registry);
    assert_eq!(api.get("/config").await.1, json!({"compatibilityLevel": "BACKWARD"}));
    api.register("c-value", V1).await;

    let check = |schema: &'static str| json!({"schema": schema});
    let (_, ok) = api.call(Method::POST, "/compatibility/subjects/c-value/versions/latest", Some(check(V2))).await;
    assert_eq!(ok, json!({"is_compatible": true}));
    let (_, not_ok) = api
        .call(Method::POST, "/compatibility/subjects/c-value/versions/1?verbose=true", Some(check(V3_REQUIRED)))
        .await;
    assert_eq!(not_ok["is_compatible"], false);
    assert!(!not_ok["messages"].as_array().unwrap().is_empty());
    assert_eq!(
        api.error_code(Method::POST, "/compatibility/subjects/nope/versions/latest", Some(check(V1))).await,
        40401
    );
    assert_eq!(
        api.error_code(Method::POST, "/compatibility/subjects/c-value/versions/7", Some(check(V1))).await,
        40402
    );

    // FORWARD for the subject only: a new required field is fine (old readers ignore it).
    let (status, body) = api.call(Method::PUT, "/config/c-value", Some(json!({"compatibility": "forward"}))).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"compatibility": "FORWARD"})));
    assert_eq!(api.get("/config/c-value").await.1, json!({"compatibilityLevel": "FORWARD"}));
    assert_eq!(api.get("/config").await.1, json!({"compatibilityLevel": "BACKWARD"}), "global unchanged");
    assert_eq!(api.register("c-value", V3_REQUIRED).await.0, StatusCode::OK);

    // Back to the global level after the subject's config is deleted.
    assert_eq!(api.call(Method::DELETE, "/config/c-value", None).await.1, json!({"compatibilityLevel": "FORWARD"}));
    assert_eq!(api.get("/config/c-value?defaultToGlobal=true").await.1, json!({"compatibilityLevel": "BACKWARD"}));

    // Global NONE accepts anything; FULL_TRANSITIVE checks every version.
    assert_eq!(
        api.call(Method::PUT, "/config", Some(json!({"compatibility": "FULL_TRANSITIVE"}))).await.0,
        StatusCode::OK
    );
    assert_eq!(api.get("/config").await.1, json!({"compatibilityLevel": "FULL_TRANSITIVE"}));
    assert_eq!(api.register("t-value", V1).await.0, StatusCode::OK);
    assert_eq!(
        api.error_code(Method::POST, "/subjects/t-value/versions", Some(json!({"schema": V3_REQUIRED}))).await,
        409
    );
    assert_eq!(api.call(Method::PUT, "/config", Some(json!({"compatibility": "NONE"}))).await.0, StatusCode::OK);
    assert_eq!(api.register("t-value", V3_REQUIRED).await.0, StatusCode::OK);
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn soft_and_hard_deletes() {
    let registry = TestRegistry::start().await;
    let api = Api::new(&registry);
    let id1 = api.register("d-value", V1).await.1["id"].clone();
    api.register("d-value", V2).await;

    // Version delete: soft, then permanent.
    assert_eq!(api.error_code(Method::DELETE, "/subjects/d-value/versions/2?permanent=true", None).await, 40407);
    assert_eq!(api.call(Method::DELETE, "/subjects/d-value/versions/2", None).await, (StatusCode::OK, json!(2)));
    assert_eq!(api.error_code(Method::DELETE, "/subjects/d-value/versions/2", None).await, 40406);
    assert_eq!(api.get("/subjects/d-value/versions").await.1, json!([1]));
    assert_eq!(api.get("/subjects/d-value/versions?deleted=true").await.1, json!([1, 2]));
    assert_eq!(api.error_code(Method::GET, "/subjects/d-value/versions/2", None).await, 40402);
    assert_eq!(api.get("/subjects/d-value/versions/2?deleted=true").await.0, StatusCode::OK);
    assert_eq!(api.call(Method::DELETE, "/subjects/d-value/versions/2?permanent=true", None).await.1, json!(2));
    assert_eq!(api.get("/subjects/d-value/versions?deleted=true").await.1, json!([1]));

    // Subject delete: permanent needs a soft delete first.
    assert_eq!(api.error_code(Method::DELETE, "/subjects/d-value?permanent=true", None).await, 40405);
    assert_eq!(api.call(Method::DELETE, "/subjects/d-value", None).await.1, json!([1]));
    assert_eq!(api.error_code(Method::DELETE, "/subjects/d-value", None).await, 40404);
    assert_eq!(api.get("/subjects").await.1, json!([]));
    assert_eq!(api.get("/subjects?deleted=true").await.1, json!(["d-value"]));
    assert_eq!(api.get(&format!("/schemas/ids/{id1}")).await.0, StatusCode::OK, "soft-deleted ids stay readable");
    assert_eq!(api.call(Method::DELETE, "/subjects/d-value?permanent=true", None).await.1, json!([1]));
    assert_eq!(api.error_code(Method::GET, &format!("/schemas/ids/{id1}"), None).await, 40403);
    assert_eq!(api.error_code(Method::DELETE, "/subjects/d-value", None).await, 40401);

    // After a hard delete the subject starts over; the schema keeps its id.
    let again = api.register("d-value", V1).await;
    assert_eq!(again.1["id"], id1);
    assert_eq!(api.get("/subjects/d-value/versions").await.1, json!([1]));
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn state_survives_a_restart_with_the_same_ids() {
    let first = TestRegistry::start().await;
    let topic = first.topic.clone();
    let api = Api::new(&first);
    let a1 = api.register("a-value", V1).await.1["id"].clone();
    let a2 = api.register("a-value", V2).await.1["id"].clone();
    let b1 = api.register("b-value", V3_REQUIRED).await.1["id"].clone();
    api.call(Method::PUT, "/config/b-value", Some(json!({"compatibility": "NONE"}))).await;
    api.call(Method::DELETE, "/subjects/a-value/versions/1", None).await;
    let before = (
        api.get("/subjects").await.1,
        api.get("/subjects/a-value/versions?deleted=true").await.1,
        api.get("/subjects/a-value/versions/latest").await.1,
        api.get("/config/b-value").await.1,
    );
    first.stop().await;

    let second = TestRegistry::start_on(&topic).await;
    let api = Api::new(&second);
    let after = (
        api.get("/subjects").await.1,
        api.get("/subjects/a-value/versions?deleted=true").await.1,
        api.get("/subjects/a-value/versions/latest").await.1,
        api.get("/config/b-value").await.1,
    );
    assert_eq!(before, after);
    assert_eq!(api.get("/subjects/a-value/versions").await.1, json!([2]), "the soft delete survived");
    for id in [&a1, &a2, &b1] {
        assert_eq!(api.get(&format!("/schemas/ids/{id}")).await.0, StatusCode::OK);
    }
    assert_eq!(api.register("a-value", V2).await.1["id"], a2, "same schema, same id after restart");
    let new = api.register("c-value", r#"{"type":"string"}"#).await.1["id"].as_u64().unwrap();
    assert!(new > b1.as_u64().unwrap(), "ids keep increasing after a restart");
    second.stop().await;
}

/// Writes need a user (HTTP basic authentication, as Confluent's clients send it, or the
/// credentials in the URL), deletes and config changes need the admin role, reads stay open;
/// bodies are limited on the bytes that arrive (chunked too) and subjects are checked.
#[tokio::test(flavor = "multi_thread")]
async fn writes_need_credentials_and_deletes_the_admin_role() {
    use streamscore_registry::auth::{password_sha256, Auth};
    let users = format!("writer:writer:{}\nadmin:admin:{}\n", password_sha256("w-pass"), password_sha256("a-pass"));
    let registry = TestRegistry::start_with(&support::unique("_schemas-auth"), Auth::parse(&users).unwrap()).await;
    let client = streamscore_contracts::http::client();
    let url = &registry.url;
    let subject = support::unique("auth");
    let register = |user: Option<(&str, &str)>| {
        let mut request = client.post(format!("{url}/subjects/{subject}/versions")).json(&json!({ "schema": V1 }));
        if let Some((name, password)) = user {
            request = request.basic_auth(name, Some(password));
        }
        request.send()
    };

    let anonymous = register(None).await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(anonymous.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));
    assert_eq!(anonymous.json::<Value>().await.unwrap()["error_code"], 40101);
    assert_eq!(register(Some(("writer", "wrong"))).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let registered = register(Some(("writer", "w-pass"))).await.unwrap();
    assert_eq!(registered.status(), StatusCode::OK);
    let id = registered.json::<Value>().await.unwrap()["id"].as_u64().unwrap();

    // Reads are open.
    let read = client.get(format!("{url}/schemas/ids/{id}")).send().await.unwrap();
    assert_eq!(read.status(), StatusCode::OK);

    // Our codec, with the credentials in the URL (as `streamscore stack up` writes it).
    let authed_url = url.replacen("http://", "http://writer:w-pass@", 1);
    let topic = support::unique("auth-topic");
    let codec = streamscore_contracts::Codec::<streamscore_contracts::InferenceRequest>::with_url(&authed_url, &topic);
    codec.register().await.expect("the codec registers with the URL's credentials");
    let refused = streamscore_contracts::Codec::<streamscore_contracts::InferenceRequest>::with_url(url, &topic);
    // (A 401 counts as retryable, as every registry answer not about the request itself:
    // a stage with wrong credentials waits, saying so, rather than dead-letter data.)
    refused.register().await.expect_err("no credentials, no registration");

    // Deletes and config: the writer is refused (403), the admin may.
    let delete = |name: &str, password: &str| {
        client.delete(format!("{url}/subjects/{subject}")).basic_auth(name, Some(password)).send()
    };
    let forbidden = delete("writer", "w-pass").await.unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    assert_eq!(forbidden.json::<Value>().await.unwrap()["error_code"], 40301);
    let config = client.put(format!("{url}/config")).json(&json!({"compatibility": "NONE"})).send().await.unwrap();
    assert_eq!(config.status(), StatusCode::UNAUTHORIZED, "PUT /config NONE needs the admin");
    assert_eq!(delete("admin", "a-pass").await.unwrap().status(), StatusCode::OK);

    // A subject that is too long, or holds a control character: 422 with Confluent's code.
    for bad in ["x".repeat(256), "bad%0Asubject".to_owned()] {
        let response = client
            .post(format!("{url}/subjects/{bad}/versions"))
            .basic_auth("writer", Some("w-pass"))
            .json(&json!({ "schema": V1 }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(response.json::<Value>().await.unwrap()["error_code"], 42208);
    }
    registry.stop().await;
}

/// The body limit counts the bytes that arrive: a chunked body (no Content-Length) over it is
/// refused with 413, before anything parses it.
#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_body_over_the_limit_is_refused() {
    use std::io::{Read, Write};
    let registry = TestRegistry::start().await;
    let addr = registry.url.trim_start_matches("http://").to_owned();
    let status = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        write!(
            stream,
            "POST /subjects/big-value/versions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .unwrap();
        let chunk = vec![b' '; 1024 * 1024];
        for _ in 0..20 {
            if write!(stream, "{:x}\r\n", chunk.len()).is_err() || stream.write_all(&chunk).is_err() || stream.write_all(b"\r\n").is_err() {
                break;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n");
        let mut response = [0_u8; 64];
        let n = stream.read(&mut response).unwrap();
        String::from_utf8_lossy(&response[..n]).split_whitespace().nth(1).unwrap_or("").to_owned()
    })
    .await
    .unwrap();
    assert_eq!(status, "413");
    registry.stop().await;
}

/// A write acknowledged by the broker but not applied in time answers 50002; the next write
/// must not be planned on the stale state (it would hand the same id to another schema): it
/// waits for the earlier record or answers 50002 itself, and once the state catches up each
/// schema has its own id.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_after_a_50002_is_never_planned_on_stale_state() {
    use std::sync::Arc;
    use std::time::Duration;
    let topic = support::unique("_schemas-race");
    let mut store = streamscore_registry::Store::open(&support::kafka(), &topic).await.unwrap();
    store.set_write_timeout(Duration::from_millis(1500));
    let store = Arc::new(store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(streamscore_registry::serve(Arc::clone(&store), Arc::default(), None, listener, async {
        let _ = stopped.await;
    }));
    let client = streamscore_contracts::http::client();
    let subject = support::unique("race");
    let other =
        r#"{"type":"record","name":"Refund","namespace":"io.example","fields":[{"name":"amount","type":"double"}]}"#;
    let register = |schema: &str| {
        client
            .post(format!("{url}/subjects/{subject}-{}/versions", schema.len()))
            .json(&json!({ "schema": schema }))
            .send()
    };

    store.hold_applying(true);
    let first = register(V1).await.unwrap();
    assert_eq!(first.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(first.json::<Value>().await.unwrap()["error_code"], 50002, "acknowledged, not applied in time");
    let second = register(other).await.unwrap();
    assert_eq!(second.status(), StatusCode::INTERNAL_SERVER_ERROR, "not planned on the stale state");
    assert_eq!(second.json::<Value>().await.unwrap()["error_code"], 50002);

    store.hold_applying(false);
    let second = register(other).await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    let other_id = second.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    let first_id = register(V1).await.unwrap().json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    assert_ne!(first_id, other_id, "two schemas, two ids");
    for (id, name) in [(first_id, "Payment"), (other_id, "Refund")] {
        let schema: Value = client.get(format!("{url}/schemas/ids/{id}")).send().await.unwrap().json().await.unwrap();
        assert!(schema["schema"].as_str().unwrap().contains(name), "id {id} is {name}: {schema}");
    }
    let _ = stop.send(());
    server.await.unwrap();
}
