//! The bridge's edge against the real pipeline on the test stack (tansu and a registry), over
//! real HTTP: JWT bearer tokens checked against a JWKS made in the test (a valid token scores
//! with its tenant claim's tenant whatever the body says; expired, another audience, another
//! issuer, `alg: none`, HS256 keyed with the public key, an unknown key and a tampered
//! signature are 401 `invalid_token`; a missing scope is 403 `insufficient_scope`), and keys
//! rotated without a restart (a key removed from the policy is refused within 5 s, a JWKS
//! replaced is in force within 5 s), and HTTPS with a test CA (calls score, plain HTTP to the
//! TLS listener fails, a renewed certificate is served within 5 s, `tritonclient.http` with
//! `ssl=True` works), and `Idempotency-Key` (the same key twice publishes once and answers the
//! same; the same key with another body is a 422), and authentication events in the audit log
//! (refusals aggregated, reloads with their fingerprints) that `audit verify` finds ok; mutual
//! TLS (a client certificate's subject names its tenant through the policy, a certificate of
//! another CA or none gets no answer, the identities are audited); and the registry over HTTPS
//! (a stage trusts it through `STREAMSCORE_REGISTRY_CA`, Confluent's Python client through
//! `ssl.ca.location`, and its users file is re-read without a restart).
//!
//! The key material comes from `tests/interop/edge_keys.py` (PyJWT and cryptography) under
//! `STREAMSCORE_PYTHON`, as the other interoperability tests drive Python.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use streamscore_bridge::BridgeConfig;
use streamscore_contracts::{Codec, InferenceRequest};
use streamscore_infer::TractBackend;

mod support;
use support::{StageTopics, TestRegistry};

const ISSUER: &str = "https://idp.streamscore.test";
const AUDIENCE: &str = "streamscore-bridge";
const ACME: &str = "acme-key";
const GLOBEX: &str = "globex-key";

fn sha(key: &str) -> String {
    format!("{:x}", Sha256::digest(key.as_bytes()))
}

/// The policy: acme and globex, each with a key unless `without` names it.
fn policy_text(without: &[&str]) -> String {
    let key = |tenant: &str, key: &str| {
        if without.contains(&tenant) {
            String::new()
        } else {
            format!("api_key_sha256 = [\"{}\"]\n", sha(key))
        }
    };
    format!(
        "version = 1\nunknown_tenants = \"refuse\"\n\n[tenants.acme]\n{}rate_per_sec = 100000\nburst = 100000\n\
         max_in_flight = 100000\n\n[tenants.globex]\n{}allowed_models = [\"fraud\"]\nrate_per_sec = 100000\nburst = 100000\n\
         max_in_flight = 100000\n",
        key("acme", ACME),
        key("globex", GLOBEX)
    )
}

/// Replaces `path` as a deployment tool would: a new file renamed over the old one.
fn replace(path: &Path, contents: &[u8]) {
    let next = path.with_extension("next");
    std::fs::write(&next, contents).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// The Python the interoperability tests run, or `None` to skip (never under CI).
fn python() -> Option<String> {
    match std::env::var("STREAMSCORE_PYTHON") {
        Ok(python) => Some(python),
        Err(_) if std::env::var_os("CI").is_some() => panic!("STREAMSCORE_PYTHON is not set under CI"),
        Err(_) => {
            eprintln!("SKIPPED: STREAMSCORE_PYTHON not set (scripts/test.sh sets it up)");
            None
        }
    }
}

/// Key material and tokens made fresh for this test: see tests/interop/edge_keys.py.
struct Keys {
    dir: tempfile::TempDir,
    tokens: Value,
}

impl Keys {
    fn make(python: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = format!("{}/tests/interop/edge_keys.py", env!("CARGO_MANIFEST_DIR"));
        let output = std::process::Command::new(python)
            .args([script.as_str(), dir.path().to_str().unwrap(), ISSUER, AUDIENCE])
            .output()
            .unwrap();
        assert!(output.status.success(), "edge_keys.py: {}", String::from_utf8_lossy(&output.stderr));
        let tokens = serde_json::from_slice(&output.stdout).unwrap();
        Self { dir, tokens }
    }

    fn token(&self, name: &str) -> &str {
        self.tokens[name].as_str().unwrap_or_else(|| panic!("no token {name}"))
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

/// A registry, topics, a policy file and (when asked) the fused pipeline on them.
struct Stack {
    registry: TestRegistry,
    topics: StageTopics,
    policy: PathBuf,
    /// The pipeline's audit topic (the bridge's too, where a test wants one log).
    audit: String,
    _dir: tempfile::TempDir,
    pipeline: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    /// The answers to idempotent calls every bridge of the test keeps and reads back (the
    /// test's own: another test's or run's keys are not this one's).
    idempotency: String,
}

impl Stack {
    async fn start(prefix: &str) -> Self {
        let registry = TestRegistry::start().await;
        let topics = StageTopics::create(prefix).await;
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("tenants.toml");
        std::fs::write(&policy, policy_text(&[])).unwrap();
        let audit = support::unique("audit");
        let idempotency = support::unique(&format!("{prefix}.idempotency"));
        Self { registry, topics, policy, audit, _dir: dir, pipeline: None, idempotency }
    }

    fn start_pipeline(&mut self) {
        let mut config = support::pipeline_config(
            &support::kafka(),
            &self.registry.url,
            self.topics.pipeline(),
            &support::unique("edge-pipeline"),
            "edge-test",
        );
        config.infer.audit_topic = self.audit.clone();
        config.infer.quota_state_topic = support::unique("quota");
        config.infer.policy = Some(self.policy.clone());
        // As `streamscore pipeline --policy` does: the policy's tenants, which ingest follows.
        let policy = streamscore_infer::quota::Policy::load(&self.policy).unwrap();
        config.tenants = streamscore::pipeline::ingest_tenants(&policy);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            streamscore::pipeline::run(config, Arc::new(TractBackend), Arc::default(), async {
                let _ = stop_rx.await;
            })
            .await
            .map(|_| ())
        });
        self.pipeline = Some((stop, task));
    }

    fn config(&self, keys: Option<&Keys>) -> BridgeConfig {
        let mut config =
            BridgeConfig::new(support::kafka(), &self.registry.url, support::models_dir(), self.policy.clone());
        config.requests_topic = self.topics.requests.clone();
        config.predictions_topic = self.topics.predictions.clone();
        config.deadline = Duration::from_secs(10);
        config.idempotency_topic = Some(self.idempotency.clone());
        config.jwt = keys.map(|keys| streamscore_bridge::JwtConfig {
            jwks_file: keys.path("jwks.json"),
            expect: streamscore_bridge::jwt::Expectations {
                issuer: ISSUER.to_owned(),
                audience: AUDIENCE.to_owned(),
                tenant_claim: "tenant".to_owned(),
            },
        });
        config
    }

    /// A bridge's config (API keys only) recording authentication events on `audit_topic` (made
    /// if missing), refusals counted over 1 s windows.
    async fn audited_config(&self, audit_topic: &str) -> BridgeConfig {
        let spec = streamscore_kafka::TopicSpec::event(audit_topic, 1);
        streamscore_kafka::topics::ensure_topics(&support::kafka(), &[spec]).await.unwrap();
        let mut config = self.config(None);
        config.audit_topic = Some(audit_topic.to_owned());
        config.audit_window = Duration::from_secs(1);
        config
    }

    /// Stops the pipeline (its audit chain closed), if it runs.
    async fn stop_pipeline(&mut self) {
        if let Some((stop, task)) = self.pipeline.take() {
            let _ = stop.send(());
            task.await.unwrap().expect("the pipeline ran");
        }
    }

    async fn stop(mut self) {
        self.stop_pipeline().await;
        self.registry.stop().await;
    }
}

/// A bridge serving on a free port.
struct Bridge {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), streamscore_bridge::BridgeError>>,
    http: reqwest::Client,
}

impl Bridge {
    async fn start(config: BridgeConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(streamscore_bridge::serve(config, listener, None, async {
            let _ = stop_rx.await;
        }));
        let bridge = Self { url: format!("http://{addr}"), stop, task, http: streamscore_contracts::http::client() };
        for _ in 0..200 {
            if let Ok(r) = bridge.http.get(format!("{}/ready", bridge.url)).send().await {
                if r.status() == 200 {
                    return bridge;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the bridge did not become ready");
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().expect("the bridge ran");
    }

    /// POST with `Authorization: Bearer credential`: status, `WWW-Authenticate`, body.
    async fn post(&self, path: &str, credential: &str, body: &Value) -> (u16, String, Value) {
        let response =
            self.http.post(format!("{}{path}", self.url)).bearer_auth(credential).json(body).send().await.unwrap();
        read(response).await
    }

    /// GET the model's metadata with `credential`: status, `WWW-Authenticate`, body.
    async fn metadata(&self, credential: &str) -> (u16, String, Value) {
        let response =
            self.http.get(format!("{}/v2/models/fraud", self.url)).bearer_auth(credential).send().await.unwrap();
        read(response).await
    }
}

async fn read(response: reqwest::Response) -> (u16, String, Value) {
    let status = response.status().as_u16();
    let challenge =
        response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let text = response.text().await.unwrap();
    (status, challenge, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// One valid row of features, by name.
fn features(seed: u64) -> Value {
    let mut generator = streamscore_synth::Generator::new(seed);
    let row: std::collections::HashMap<String, f64> = generator.next(0).by_name();
    json!(row)
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_bearer_tokens_score_with_their_tenant_and_bad_ones_are_refused() {
    let Some(python) = python() else { return };
    let keys = Keys::make(&python);
    let mut stack = Stack::start("edge-jwt").await;
    stack.start_pipeline();
    let bridge = Bridge::start(stack.config(Some(&keys))).await;
    let predict = "/v1/models/fraud/predict";

    // Valid tokens of each algorithm score; the body's "tenant" is not read.
    let mut scored = Vec::new();
    for name in ["rsa", "ec", "ed", "no_kid", "expired_within_skew"] {
        let body = json!({"features": features(scored.len() as u64), "tenant": "globex"});
        let (status, _, answer) = bridge.post(predict, keys.token(name), &body).await;
        assert_eq!(status, 200, "{name}: {answer}");
        scored.push((name, answer["predictions"][0]["request_id"].as_str().unwrap().to_owned()));
    }
    // An API key still works beside the tokens.
    let (status, _, answer) = bridge.post(predict, ACME, &json!({"features": features(9)})).await;
    assert_eq!(status, 200, "API key: {answer}");

    // The requests topic says whose each call was: the token's tenant claim (the ec token's
    // is globex, with its scopes in `scp`), never the body's.
    let codec = Codec::<InferenceRequest>::with_url(&stack.registry.url, &stack.topics.requests);
    let records = support::read_records(&[&stack.topics.requests], scored.len() + 1, Duration::from_secs(30));
    let mut tenants = std::collections::HashMap::new();
    for record in &records {
        let request = codec.decode(rdkafka::message::Message::payload(record).unwrap()).await.unwrap().value;
        tenants.insert(request.request_id, request.tenant);
    }
    for (name, id) in &scored {
        let expected = if *name == "ec" { "globex" } else { "acme" };
        assert_eq!(tenants.get(id).map(String::as_str), Some(expected), "{name}");
    }

    // Each bad token is a 401 with the RFC 6750 challenge, on the /v1 and the /v2 routes.
    for name in [
        "expired",
        "no_exp",
        "other_audience",
        "other_issuer",
        "alg_none",
        "hs256_public_key",
        "tampered",
        "rsa_next",
        "no_tenant",
    ] {
        let (status, challenge, answer) =
            bridge.post(predict, keys.token(name), &json!({"features": features(1)})).await;
        assert_eq!(status, 401, "{name}: {answer}");
        assert_eq!(answer["error"]["code"], "INVALID_TOKEN", "{name}: {answer}");
        assert!(
            challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
            "{name}: {challenge}"
        );
        let (status, challenge, answer) = bridge.metadata(keys.token(name)).await;
        assert_eq!(status, 401, "{name} on /v2: {answer}");
        assert!(challenge.contains("error=\"invalid_token\""), "{name} on /v2: {challenge}");
    }
    let (status, _, answer) = bridge.post(predict, keys.token("alg_none"), &json!({"features": features(1)})).await;
    assert!(answer["error"]["message"].as_str().unwrap().contains("none"), "{status} {answer}");
    let (_, _, answer) = bridge.post(predict, keys.token("hs256_public_key"), &json!({"features": features(1)})).await;
    assert!(answer["error"]["message"].as_str().unwrap().contains("HS256"), "{answer}");

    // A valid token without the scope is a 403 naming it: feedback-only may not predict, a
    // predict-only token may not ask for explanations nor send feedback.
    let (status, challenge, answer) =
        bridge.post(predict, keys.token("feedback_only"), &json!({"features": features(2)})).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("INSUFFICIENT_SCOPE")), "{answer}");
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("scope=\"predict\""),
        "{challenge}"
    );
    let (status, challenge, answer) = bridge
        .post(&format!("{predict}?explain=true"), keys.token("predict_only"), &json!({"features": features(3)}))
        .await;
    assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("INSUFFICIENT_SCOPE")), "{answer}");
    assert!(challenge.contains("scope=\"explain\""), "{challenge}");
    let label = json!({"request_id": scored[0].1, "actual": 1.0});
    let (status, challenge, answer) = bridge.post("/v1/feedback", keys.token("predict_only"), &label).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("INSUFFICIENT_SCOPE")), "{answer}");
    assert!(challenge.contains("scope=\"feedback\""), "{challenge}");

    // A tenant the policy does not list cannot call, whatever the token says.
    let (status, _, answer) =
        bridge.post(predict, keys.token("unlisted_tenant"), &json!({"features": features(4)})).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("UNKNOWN_TENANT")), "{answer}");

    // Nothing refused reached the requests topic: exactly the scored calls are there.
    let all = support::read_all(&[&stack.topics.requests], Duration::from_secs(2));
    assert_eq!(all.len(), scored.len() + 1, "only the accepted calls were published");

    bridge.stop().await;
    stack.stop().await;
}

/// POST `body` to predict as `credential` with `Idempotency-Key: key`: status, whether the
/// answer was replayed, and the body's text.
async fn post_once(bridge: &Bridge, credential: &str, key: &str, body: &Value) -> (u16, bool, String) {
    post_keyed(bridge, "/v1/models/fraud/predict", credential, Some(key), body).await
}

/// POST `body` to `path` as `credential`, with `Idempotency-Key: key` when given: status,
/// whether the answer was replayed, and the body's text.
async fn post_keyed(
    bridge: &Bridge,
    path: &str,
    credential: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, bool, String) {
    let mut request = bridge.http.post(format!("{}{path}", bridge.url)).bearer_auth(credential).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let replayed = response.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
    (status, replayed, response.text().await.unwrap())
}

/// The requests on the requests topic, in order.
async fn published(stack: &Stack) -> Vec<InferenceRequest> {
    let codec = Codec::<InferenceRequest>::with_url(&stack.registry.url, &stack.topics.requests);
    let mut requests = Vec::new();
    for record in support::read_all(&[&stack.topics.requests], Duration::from_secs(2)) {
        requests.push(codec.decode(rdkafka::message::Message::payload(&record).unwrap()).await.unwrap().value);
    }
    requests
}

/// The request ids on the requests topic, in order.
async fn published_ids(stack: &Stack) -> Vec<String> {
    published(stack).await.into_iter().map(|r| r.request_id).collect()
}

/// The first request id an answer names (`predictions[0].request_id` or, for the Open
/// Inference Protocol, `parameters.request_ids[0]`).
fn answered_id(answer: &str) -> String {
    let answer: Value = serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    let id = answer["predictions"][0]["request_id"].as_str().or(answer["parameters"]["request_ids"][0].as_str());
    id.unwrap_or_else(|| panic!("no request id in {answer}")).to_owned()
}

/// The bridge's fingerprint of a call: method, path (without its first slash) and query, each
/// with its length, then the body as reqwest's `json` sends it.
fn fingerprint(method: &str, path: &str, query: &str, body: &Value) -> [u8; 32] {
    let mut bytes = Vec::new();
    for part in [method, path, query] {
        bytes.extend_from_slice(&(part.len() as u64).to_be_bytes());
        bytes.extend_from_slice(part.as_bytes());
    }
    bytes.extend_from_slice(&serde_json::to_vec(body).unwrap());
    streamscore_contracts::sha256(&bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_idempotency_key_twice_publishes_once_and_answers_the_same() {
    let mut stack = Stack::start("edge-idempotent").await;
    stack.start_pipeline();
    let bridge = Bridge::start(stack.config(None)).await;
    let body = json!({"features": features(21)});

    let (status, replayed, first) = post_once(&bridge, ACME, "order-1", &body).await;
    assert_eq!((status, replayed), (200, false), "{first}");
    let (status, replayed, second) = post_once(&bridge, ACME, "order-1", &body).await;
    assert_eq!((status, replayed), (200, true), "{second}");
    assert_eq!(second, first, "a retry gets the first answer, request ids included");

    // The same key with another body is a 422; another tenant's key of the same name is its own.
    let (status, _, answer) = post_once(&bridge, ACME, "order-1", &json!({"features": features(22)})).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer.contains("IDEMPOTENCY_KEY_REUSED"), "{answer}");
    let (status, replayed, other) = post_once(&bridge, GLOBEX, "order-1", &body).await;
    assert_eq!((status, replayed), (200, false), "{other}");
    let (status, _, answer) = post_once(&bridge, ACME, "bad key", &body).await;
    assert_eq!(status, 400, "{answer}");

    // One record per first call on the requests topic: acme's once, globex's once.
    let records = support::read_all(&[&stack.topics.requests], Duration::from_secs(2));
    let codec = Codec::<InferenceRequest>::with_url(&stack.registry.url, &stack.topics.requests);
    let mut tenants = Vec::new();
    for record in &records {
        tenants.push(codec.decode(rdkafka::message::Message::payload(record).unwrap()).await.unwrap().value.tenant);
    }
    tenants.sort();
    assert_eq!(tenants, ["acme", "globex"]);

    bridge.stop().await;
    stack.stop().await;
}

/// Issue 29, item 4: the answers kept for retries live on `bridge.idempotency`, sealed, and
/// every bridge reads them back at start and follows them. A key answered by bridge A is
/// answered the same, byte for byte and marked replayed, by bridge B started after A stopped,
/// with one record on the requests topic; another body with it is a 422 on B; an answer B
/// keeps is known to C, running beside B, within 5 s; and answers forged on the topic (one
/// unsealed, one sealed with another key), for the exact key and request of a later call, are
/// never replayed: the call runs and publishes.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_answer_survives_a_restart_reaches_the_other_instances_and_a_forged_one_is_never_replayed() {
    let mut stack = Stack::start("edge-idempotent-restart").await;
    // acme may use fraud only: a call to another model is refused (403) after its key is
    // looked up and before anything is kept or published, which shows what a bridge knows.
    let policy = policy_text(&[]).replace("[tenants.acme]\n", "[tenants.acme]\nallowed_models = [\"fraud\"]\n");
    std::fs::write(&stack.policy, policy).unwrap();
    stack.start_pipeline();
    let predict = "/v1/models/fraud/predict";
    let body = json!({"features": features(41)});

    // Bridge A answers a call with a key, and stops.
    let a = Bridge::start(stack.config(None)).await;
    let (status, replayed, first) = post_keyed(&a, predict, ACME, Some("restart-1"), &body).await;
    assert_eq!((status, replayed), (200, false), "{first}");
    a.stop().await;

    // B, a new instance: A's answer, publishing nothing; another body with the key is a 422.
    let b = Bridge::start(stack.config(None)).await;
    let (status, replayed, again) = post_keyed(&b, predict, ACME, Some("restart-1"), &body).await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(again, first, "after a restart a retry gets the first answer, request ids included");
    let (status, _, reused) =
        post_keyed(&b, predict, ACME, Some("restart-1"), &json!({"features": features(42)})).await;
    assert_eq!(status, 422, "{reused}");
    assert!(reused.contains("IDEMPOTENCY_KEY_REUSED"), "{reused}");

    // C runs beside B.
    let c = Bridge::start(stack.config(None)).await;

    // Forged answers for two fresh keys, for exactly the request a caller will send with them:
    // one unsealed, one sealed with another audit key.
    let forged_request = json!({"features": features(43)});
    let forged_answer = br#"{"predictions":[{"request_id":"forged","score":0.0,"label":"legit"}]}"#;
    let codec = Codec::<streamscore_contracts::IdempotentAnswer>::with_url(&stack.registry.url, &stack.idempotency);
    codec.register().await.unwrap();
    let other_key = streamscore_contracts::audit::AuditKey::new(b"not the bridges' audit key, 32 bytes or more");
    for (key, sealed) in [("forged-1", false), ("forged-2", true)] {
        let record = streamscore_contracts::IdempotentAnswer {
            key_sha256: streamscore_contracts::sha256_hex(format!("acme\0{key}").as_bytes()),
            request_sha256: streamscore_contracts::hex(&fingerprint("POST", &predict[1..], "", &forged_request)),
            status: 200,
            content_type: Some("application/json".to_owned()),
            body: forged_answer.to_vec(),
            kept_at: streamscore_contracts::now_micros(),
            instance: "bridge:forger".to_owned(),
        };
        let value = codec.encode(&record).unwrap();
        let mac = other_key.event_hash(&value);
        let seal = sealed.then_some((mac.as_str(), other_key.id()));
        support::produce_sealed(&stack.idempotency, &record.key_sha256, &value, seal).await;
    }

    // An answer B keeps now, after the forged records, is known to C within 5 s. C is asked with
    // the key for a model acme may not use: 403 (nothing kept) while it does not know the key,
    // 422 (the key was used for another request) once it does.
    let shared = json!({"features": features(44)});
    let (status, replayed, on_b) = post_keyed(&b, predict, ACME, Some("shared-1"), &shared).await;
    assert_eq!((status, replayed), (200, false), "{on_b}");
    let took = within(Duration::from_secs(5), "C knows the answer B kept", || async {
        let (status, _, answer) = post_keyed(&c, "/v1/models/other/predict", ACME, Some("shared-1"), &shared).await;
        assert!(status == 403 || status == 422, "{status} {answer}");
        status == 422
    })
    .await;
    eprintln!("C knew the answer B kept after {took:?}");
    let (status, replayed, on_c) = post_keyed(&c, predict, ACME, Some("shared-1"), &shared).await;
    assert_eq!((status, replayed), (200, true), "{on_c}");
    assert_eq!(on_c, on_b, "another instance answers B's answer");

    // C has read the forged records (before B's on the topic's one partition): neither is
    // replayed; each call runs and publishes.
    for key in ["forged-1", "forged-2"] {
        let (status, replayed, answer) = post_keyed(&c, predict, ACME, Some(key), &forged_request).await;
        assert_eq!((status, replayed), (200, false), "{key}: {answer}");
        assert_ne!(answer.as_bytes(), forged_answer, "{key}: the forged answer was handed over");
        assert_ne!(answered_id(&answer), "forged", "{key}: {answer}");
    }

    // One record per first call: A's, B's and the two forged keys' calls; none for a retry.
    let ids = published_ids(&stack).await;
    for answer in [&first, &on_b] {
        let id = answered_id(answer);
        assert_eq!(ids.iter().filter(|i| **i == id).count(), 1, "{id} in {ids:?}");
    }
    assert_eq!(ids.len(), 4, "{ids:?}");

    // On the topic: the caller's key never, a hash of it; the bridges' records sealed.
    let kept = support::read_all(&[&stack.idempotency], Duration::from_secs(2));
    assert_eq!(kept.len(), 6, "A's, B's, C's two and the two forged");
    for record in &kept {
        use rdkafka::message::{Headers, Message};
        let key = std::str::from_utf8(record.key().unwrap()).unwrap();
        assert!(key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
        let value = record.payload().unwrap();
        for raw in [&b"restart-1"[..], b"shared-1"] {
            assert!(!value.windows(raw.len()).any(|w| w == raw), "the caller's key is on the topic");
        }
        let decoded = codec.decode(value).await.unwrap().value;
        if decoded.instance != "bridge:forger" {
            let headers = record.headers().unwrap();
            let names: Vec<&str> = headers.iter().map(|h| h.key).collect();
            assert!(names.contains(&"streamscore-mac") && names.contains(&"streamscore-key-id"), "{names:?}");
        }
    }

    b.stop().await;
    c.stop().await;
    stack.stop().await;
}

/// Issue 29, item 4: without `Idempotency-Key`, the caller's own request id (the body's `id`)
/// repeated is a retry: the same id and request get the first answer and publish nothing,
/// another request with it is a 422; another tenant's id of the same name is its own, and an
/// `Idempotency-Key` of the same text is another key.
#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_request_id_is_answered_once() {
    let mut stack = Stack::start("edge-request-id").await;
    stack.start_pipeline();
    let bridge = Bridge::start(stack.config(None)).await;
    let predict = "/v1/models/fraud/predict";

    let body = json!({"features": features(51), "id": "caller-7"});
    let (status, replayed, first) = post_keyed(&bridge, predict, ACME, None, &body).await;
    assert_eq!((status, replayed), (200, false), "{first}");
    let (status, replayed, second) = post_keyed(&bridge, predict, ACME, None, &body).await;
    assert_eq!((status, replayed), (200, true), "{second}");
    assert_eq!(second, first);
    let other = json!({"features": features(52), "id": "caller-7"});
    let (status, _, reused) = post_keyed(&bridge, predict, ACME, None, &other).await;
    assert_eq!(status, 422, "{reused}");
    assert!(reused.contains("IDEMPOTENCY_KEY_REUSED") && reused.contains("caller-7"), "{reused}");
    let (status, replayed, globex) = post_keyed(&bridge, predict, GLOBEX, None, &body).await;
    assert_eq!((status, replayed), (200, false), "{globex}");
    let (status, replayed, keyed) = post_keyed(&bridge, predict, ACME, Some("caller-7"), &body).await;
    assert_eq!((status, replayed), (200, false), "a header key is not a request id: {keyed}");

    // The Open Inference Protocol's `id` too.
    let version = streamscore_modelstore::ModelStore::open(support::models_dir()).unwrap().get("fraud", "1").unwrap();
    let row: std::collections::HashMap<String, f64> = streamscore_synth::Generator::new(53).next(0).by_name();
    let data: Vec<f64> = version.meta.features.iter().map(|f| row[&f.name]).collect();
    let infer = json!({"id": "oip-7", "inputs": [{"name": "features", "shape": [1, data.len()], "datatype": "FP32", "data": data}]});
    let (status, replayed, oip) = post_keyed(&bridge, "/v2/models/fraud/infer", ACME, None, &infer).await;
    assert_eq!((status, replayed), (200, false), "{oip}");
    let (status, replayed, oip_again) = post_keyed(&bridge, "/v2/models/fraud/infer", ACME, None, &infer).await;
    assert_eq!((status, replayed), (200, true), "{oip_again}");
    assert_eq!(oip_again, oip);

    // Published once each: acme's id, globex's, the header key's call and the infer.
    let ids = published_ids(&stack).await;
    for answer in [&first, &globex, &keyed, &oip] {
        let id = answered_id(answer);
        assert_eq!(ids.iter().filter(|i| **i == id).count(), 1, "{id} in {ids:?}");
    }
    assert_eq!(ids.len(), 4, "{ids:?}");

    bridge.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_and_reloads_are_audited_aggregated_and_audit_verify_is_ok() {
    let stack = Stack::start("edge-audit").await;
    let audit_topic = support::unique("edge-audit-log");
    let config = stack.audited_config(&audit_topic).await;
    let bridge = Bridge::start(config).await;

    // A flood of 40 bad keys and 5 calls without one: a few aggregated entries, not 45.
    for i in 0..40 {
        assert_eq!(bridge.metadata(&format!("guess-{i}")).await.0, 401);
    }
    for _ in 0..5 {
        let response = bridge.http.get(format!("{}/v2/models/fraud", bridge.url)).send().await.unwrap();
        assert_eq!(response.status(), 401);
    }
    // A model globex may not use: an authorization refusal, recorded as well.
    let response = bridge.http.get(format!("{}/v2/models/other", bridge.url)).bearer_auth(GLOBEX).send().await.unwrap();
    assert_eq!(response.status(), 403);
    // A reload: globex's key revoked.
    let revoked = policy_text(&["globex"]);
    replace(&stack.policy, revoked.as_bytes());
    within(Duration::from_secs(5), "the revoked key refused", || async { bridge.metadata(GLOBEX).await.0 == 401 })
        .await;
    bridge.stop().await;

    let codec = Codec::<streamscore_contracts::AuditRecord>::with_url(&stack.registry.url, &audit_topic);
    let mut entries = Vec::new();
    for record in support::read_all(&[&audit_topic], Duration::from_secs(2)) {
        entries.push(codec.decode(rdkafka::message::Message::payload(&record).unwrap()).await.unwrap().value);
    }
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    assert!(entries.iter().all(|e| e.stage == "bridge"), "{kinds:?}");
    let policy_sha = |text: &str| format!("{:x}", Sha256::digest(text.as_bytes()));
    let loaded = entries.iter().find(|e| e.kind == "AUTH_LOADED").unwrap_or_else(|| panic!("{kinds:?}"));
    assert_eq!(loaded.details["file"], "tenant policy");
    assert_eq!(loaded.details["sha256"], policy_sha(&policy_text(&[])), "the fingerprint of the policy at start");
    let reloaded = entries.iter().find(|e| e.kind == "AUTH_RELOADED").unwrap_or_else(|| panic!("{kinds:?}"));
    assert_eq!(reloaded.details["sha256"], policy_sha(&revoked), "the fingerprint of the reloaded policy");
    let refused: Vec<_> = entries.iter().filter(|e| e.kind == "AUTH_REFUSED").collect();
    let count = |subject: &str| -> u64 {
        refused.iter().filter(|e| e.subject == subject).map(|e| e.details["count"].parse::<u64>().unwrap()).sum()
    };
    // 45 refusals before the reload, and the polls for globex's revoked key after it.
    assert!(count("unauthenticated") >= 46, "{refused:#?}");
    assert!(refused.len() < 20, "refusals are aggregated per window: {} entries", refused.len());
    assert!(refused.iter().any(|e| e.subject == "globex" && e.details["code"] == "MODEL_NOT_ALLOWED"), "{refused:#?}");
    assert!(refused.iter().all(|e| e.details["code"] == "UNAUTHENTICATED" || e.subject == "globex"), "{refused:#?}");

    let report = verify_audit(&stack, &audit_topic).await;
    assert!(report.ok(), "{:#?}", report.problems);
    assert_eq!(report.chains, 1, "the bridge's chain");
    assert!(report.open_chains.is_empty(), "the bridge closed its chain: {:?}", report.open_chains);
    stack.stop().await;
}

/// `streamscore audit verify` over `audit_topic` and the stack's outputs, with the stages' key.
async fn verify_audit(stack: &Stack, audit_topic: &str) -> streamscore_contracts::audit::Report {
    streamscore::audit::verify(&streamscore::audit::VerifyConfig {
        kafka: support::kafka(),
        registry_url: stack.registry.url.clone(),
        audit_topic: audit_topic.to_owned(),
        predictions_topic: stack.topics.predictions.clone(),
        dead_letter_topic: stack.topics.dead_letter.clone(),
        key: streamscore_contracts::audit::AuditKey::from_env().unwrap(),
        heads: Vec::new(),
        window: streamscore_contracts::audit::Window::ALL,
    })
    .await
    .unwrap()
    .0
}

/// Calls `probe` every 100 ms until it returns true; the time that took, failing past `limit`.
async fn within<F, Fut>(limit: Duration, what: &str, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if probe().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_removed_from_the_policy_is_refused_within_5_s_without_a_restart() {
    let stack = Stack::start("edge-rotate").await;
    let bridge = Bridge::start(stack.config(None)).await;
    assert_eq!(bridge.metadata(ACME).await.0, 200);
    assert_eq!(bridge.metadata(GLOBEX).await.0, 200);

    // Revoked: acme's key is gone from the policy.
    replace(&stack.policy, policy_text(&["acme"]).as_bytes());
    let took =
        within(Duration::from_secs(5), "the revoked key refused", || async { bridge.metadata(ACME).await.0 == 401 })
            .await;
    eprintln!("revoked key refused after {took:?}");
    // From then on, and globex's key is untouched.
    for _ in 0..5 {
        assert_eq!(bridge.metadata(ACME).await.0, 401);
        assert_eq!(bridge.metadata(GLOBEX).await.0, 200);
    }

    // A policy that does not check is refused and the loaded one stays: globex keeps working,
    // acme stays revoked, across several polls.
    replace(&stack.policy, b"version = 1\n[tenants.acme\n");
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert_eq!(bridge.metadata(GLOBEX).await.0, 200, "a broken policy file replaced the loaded one");
        assert_eq!(bridge.metadata(ACME).await.0, 401);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A key given back is taken within 5 s too.
    replace(&stack.policy, policy_text(&[]).as_bytes());
    within(Duration::from_secs(5), "the restored key taken", || async { bridge.metadata(ACME).await.0 == 200 }).await;

    bridge.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_jwks_is_in_force_within_5_s_without_a_restart() {
    let Some(python) = python() else { return };
    let keys = Keys::make(&python);
    let stack = Stack::start("edge-jwks").await;
    let bridge = Bridge::start(stack.config(Some(&keys))).await;
    assert_eq!(bridge.metadata(keys.token("rsa")).await.0, 200);
    assert_eq!(bridge.metadata(keys.token("rsa_next")).await.0, 401, "rsa-2 is not in the JWKS yet");

    // The identity provider rotated: rsa-1 out, rsa-2 in.
    replace(&keys.path("jwks.json"), &std::fs::read(keys.path("jwks-next.json")).unwrap());
    within(Duration::from_secs(5), "the new key taken", || async {
        bridge.metadata(keys.token("rsa_next")).await.0 == 200
    })
    .await;
    assert_eq!(bridge.metadata(keys.token("rsa")).await.0, 401, "rsa-1 left the JWKS");
    assert_eq!(bridge.metadata(keys.token("ec")).await.0, 200, "ec-1 stayed");

    // A JWKS with only an HMAC key is refused; the loaded one stays.
    replace(&keys.path("jwks.json"), br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "rsa-2"}]}"#);
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert_eq!(bridge.metadata(keys.token("rsa_next")).await.0, 200, "an HMAC-only JWKS replaced the loaded one");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    bridge.stop().await;
    stack.stop().await;
}

/// An HTTPS client trusting only `ca`: rustls on ring, one request per connection.
struct Https {
    addr: std::net::SocketAddr,
    connector: tokio_rustls::TlsConnector,
}

impl Https {
    fn new(addr: std::net::SocketAddr, ca: &Path) -> Self {
        Self::with_identity(addr, ca, None)
    }

    /// A client showing the certificate `name`.pem (with its key `name`.key) of `keys`.
    fn with_certificate(addr: std::net::SocketAddr, keys: &Keys, name: &str) -> Self {
        Self::with_identity(
            addr,
            &keys.path("ca.pem"),
            Some((&keys.path(&format!("{name}.pem")), &keys.path(&format!("{name}.key")))),
        )
    }

    fn with_identity(addr: std::net::SocketAddr, ca: &Path, identity: Option<(&Path, &Path)>) -> Self {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        #[allow(deprecated)] // ring, as the bridge uses: see tls/src/server.rs
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match identity {
            None => config.with_no_client_auth(),
            Some((cert, key)) => {
                let chain =
                    rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect();
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
                config.with_client_auth_cert(chain, key).unwrap()
            }
        };
        Self { addr, connector: tokio_rustls::TlsConnector::from(Arc::new(config)) }
    }

    /// Connects and completes the handshake, verifying the certificate for 127.0.0.1.
    async fn connect(&self) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        self.connector.connect(name, tcp).await
    }

    /// The DER of the certificate the bridge presents to a new connection.
    async fn peer_certificate(&self) -> Vec<u8> {
        let stream = self.connect().await.unwrap();
        stream.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
    }

    /// One HTTP/1.1 request over TLS: status and JSON body.
    async fn request(&self, method: &str, path: &str, credential: Option<&str>, body: Option<&Value>) -> (u16, Value) {
        self.try_request(method, path, credential, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: no HTTP answer: {e}"))
    }

    /// As [`Https::request`], or why no HTTP answer came (the handshake or the connection
    /// refused).
    async fn try_request(
        &self,
        method: &str,
        path: &str,
        credential: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = self.connect().await.map_err(|e| format!("handshake: {e}"))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(credential) = credential {
            head.push_str(&format!("Authorization: Bearer {credential}\r\n"));
        }
        head.push_str("\r\n");
        // With TLS 1.3 a refused client certificate shows after the handshake, as an alert
        // on the first read (or a failed write).
        stream.write_all(head.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        stream.write_all(body.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        // A peer closing without close_notify is an error to rustls; what came before counts.
        let read = stream.read_to_end(&mut response).await;
        let text = String::from_utf8(response).unwrap();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return Err(format!("no HTTP response ({read:?}): {text:?}"));
        };
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Ok((status, serde_json::from_str(&body).unwrap_or(Value::String(body))))
    }
}

/// A chunked body's content.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// The DER of the first certificate of a PEM file.
fn der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path).unwrap().next().unwrap().unwrap().as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bridge_over_tls_scores_refuses_plain_http_reloads_its_certificate_and_serves_tritonclient() {
    let Some(python) = python() else { return };
    let keys = Keys::make(&python);
    let mut stack = Stack::start("edge-tls").await;
    stack.start_pipeline();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("bridge.pem"), certs.path().join("bridge.key"));
    std::fs::copy(keys.path("server.pem"), &cert).unwrap();
    std::fs::copy(keys.path("server.key"), &key).unwrap();
    let mut config = stack.config(Some(&keys));
    config.tls = Some(streamscore_bridge::tls::ServerFiles::new(cert.clone(), key.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(streamscore_bridge::serve(config, listener, None, async {
        let _ = stop_rx.await;
    }));
    let https = Https::new(addr, &keys.path("ca.pem"));
    within(Duration::from_secs(20), "the TLS bridge ready", || async {
        https.connect().await.is_ok() && https.request("GET", "/ready", None, None).await.0 == 200
    })
    .await;

    // HTTPS scores, with an API key and with a token.
    for credential in [ACME, keys.token("rsa")] {
        let (status, body) = https
            .request("POST", "/v1/models/fraud/predict", Some(credential), Some(&json!({"features": features(5)})))
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(body["predictions"][0]["score"].is_number(), "{body}");
    }
    let (status, _) = https
        .request(
            "POST",
            "/v1/models/fraud/predict",
            Some(keys.token("expired")),
            Some(&json!({"features": features(5)})),
        )
        .await;
    assert_eq!(status, 401);

    // Plain HTTP to the TLS listener fails: no HTTP answer comes back.
    let plain = streamscore_contracts::http::client().get(format!("http://{addr}/healthz")).send().await;
    assert!(plain.is_err(), "plain HTTP was answered: {:?}", plain.map(|r| r.status()));

    // A renewed certificate is served to new connections within 5 s, without a restart.
    assert_eq!(https.peer_certificate().await, der(&keys.path("server.pem")));
    replace(&key, &std::fs::read(keys.path("server2.key")).unwrap());
    replace(&cert, &std::fs::read(keys.path("server2.pem")).unwrap());
    let renewed = der(&keys.path("server2.pem"));
    within(Duration::from_secs(5), "the renewed certificate served", || async {
        https.peer_certificate().await == renewed
    })
    .await;
    assert_eq!(https.request("GET", "/healthz", None, None).await.0, 200);

    // NVIDIA's tritonclient.http with ssl=True, verifying the certificate against the test CA.
    let script = format!("{}/tests/interop/triton_client.py", env!("CARGO_MANIFEST_DIR"));
    let version = streamscore_modelstore::ModelStore::open(support::models_dir()).unwrap().get("fraud", "1").unwrap();
    let mut generator = streamscore_synth::Generator::new(77);
    let rows: Vec<Vec<f32>> = (0..2)
        .map(|i| {
            let row: std::collections::HashMap<String, f64> = generator.next(i).by_name();
            version.meta.features.iter().map(|f| row[&f.name] as f32).collect()
        })
        .collect();
    let args = vec![
        script,
        addr.to_string(),
        ACME.to_owned(),
        "fraud".to_owned(),
        serde_json::to_string(&rows).unwrap(),
        keys.path("ca.pem").display().to_string(),
    ];
    let output = tokio::task::spawn_blocking(move || std::process::Command::new(python).args(args).output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success(), "tritonclient over TLS failed: {}", String::from_utf8_lossy(&output.stderr));
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((&out["live"], &out["ready"], &out["model_ready"]), (&json!(true), &json!(true), &json!(true)), "{out}");
    assert_eq!(out["metadata"]["name"], "fraud", "{out}");
    assert_eq!(out["scores"].as_array().map(Vec::len), Some(2), "{out}");
    assert_eq!(out["unknown_key"]["status"], "401", "{out}");

    let _ = stop.send(());
    task.await.unwrap().expect("the bridge ran");
    stack.stop().await;
}

/// The policy with `subject` (RFC 4514) as acme's client certificate, if given.
fn policy_with_subject(subject: Option<&str>) -> String {
    let line = subject.map(|s| format!("client_certificate_subjects = ['{s}']\n")).unwrap_or_default();
    policy_text(&[]).replace("[tenants.acme]\n", &format!("[tenants.acme]\n{line}"))
}

/// The tenant of the request `id` on the requests topic, as the bridge published it.
async fn published_tenant(stack: &Stack, id: &str) -> String {
    let request = published(stack).await.into_iter().find(|r| r.request_id == id);
    request.unwrap_or_else(|| panic!("request {id} is not on {}", stack.topics.requests)).tenant
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_names_the_tenant_by_certificate_subject_refuses_other_cas_and_is_audited() {
    let Some(python) = python() else { return };
    let keys = Keys::make(&python);
    let mut stack = Stack::start("edge-mtls").await;
    let subject = keys.token("client_subject").to_owned();
    std::fs::write(&stack.policy, policy_with_subject(Some(&subject))).unwrap();
    stack.start_pipeline();
    // One audit log: the pipeline's chains and the bridge's, which `audit verify` checks together.
    let audit_topic = stack.audit.clone();
    let mut config = stack.audited_config(&audit_topic).await;
    config.tls = Some(streamscore_bridge::tls::ServerFiles {
        cert: keys.path("server.pem"),
        key: keys.path("server.key"),
        client: Some(streamscore_bridge::tls::ClientAuth { ca: keys.path("ca.pem"), required: true }),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(streamscore_bridge::serve(config, listener, None, async {
        let _ = stop_rx.await;
    }));
    let acme = Https::with_certificate(addr, &keys, "client");
    let unlisted = Https::with_certificate(addr, &keys, "client-other");
    let rogue = Https::with_identity(
        addr,
        &keys.path("ca.pem"),
        Some((&keys.path("rogue-client.pem"), &keys.path("rogue-client.key"))),
    );
    let anonymous = Https::new(addr, &keys.path("ca.pem"));
    within(Duration::from_secs(20), "the mTLS bridge ready", || async {
        matches!(acme.try_request("GET", "/ready", None, None).await, Ok((200, _)))
    })
    .await;
    let predict = json!({"features": features(9)});
    let path = "/v1/models/fraud/predict";

    // The certificate alone names acme: scored, and published as acme's.
    let (status, body) = acme.request("POST", path, None, Some(&predict)).await;
    assert_eq!(status, 200, "{body}");
    let id = body["predictions"][0]["request_id"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned();
    assert_eq!(published_tenant(&stack, &id).await, "acme");
    // With acme's own key too: fine; with globex's key: one call, one tenant.
    assert_eq!(acme.request("POST", path, Some(ACME), Some(&predict)).await.0, 200);
    let (status, body) = acme.request("POST", path, Some(GLOBEX), Some(&predict)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("CERTIFICATE_TENANT_MISMATCH")), "{body}");

    // A certificate of the CA whose subject no tenant lists: 401 naming it, unless a key says who.
    let (status, body) = unlisted.request("POST", path, None, Some(&predict)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("CN=unlisted-client"), "{body}");
    let (status, body) = unlisted.request("POST", path, Some(GLOBEX), Some(&predict)).await;
    assert_eq!(status, 200, "{body}");
    let id = body["predictions"][0]["request_id"].as_str().unwrap().to_owned();
    assert_eq!(published_tenant(&stack, &id).await, "globex");

    // No certificate, or acme's very subject signed by another CA: no HTTP answer at all.
    let refused = anonymous.try_request("POST", path, Some(ACME), Some(&predict)).await;
    assert!(refused.is_err(), "a caller without a certificate was answered: {refused:?}");
    let refused = rogue.try_request("POST", path, None, Some(&predict)).await;
    assert!(refused.is_err(), "a certificate of another CA was answered: {refused:?}");

    // The subject taken out of the policy: refused within 5 s, without a restart.
    replace(&stack.policy, policy_with_subject(None).as_bytes());
    within(Duration::from_secs(5), "the unlisted subject refused", || async {
        acme.request("GET", "/v2/models/fraud", None, None).await.0 == 401
    })
    .await;
    let _ = stop.send(());
    task.await.unwrap().expect("the bridge ran");
    stack.stop_pipeline().await;

    // The identities are in the audit log, aggregated, with the certificates' fingerprints.
    let codec = Codec::<streamscore_contracts::AuditRecord>::with_url(&stack.registry.url, &audit_topic);
    let mut entries = Vec::new();
    for record in support::read_all(&[&audit_topic], Duration::from_secs(2)) {
        entries.push(codec.decode(rdkafka::message::Message::payload(&record).unwrap()).await.unwrap().value);
    }
    let seen: Vec<_> = entries.iter().filter(|e| e.kind == "AUTH_CLIENT_CERTIFICATE").collect();
    let calls = |tenant: &str, name: &str| -> u64 {
        seen.iter()
            .filter(|e| {
                e.subject == tenant
                    && e.details["certificate_subject"] == keys.token(&format!("{name}_subject"))
                    && e.details["certificate_sha256"] == keys.token(&format!("{name}_sha256"))
            })
            .map(|e| e.details["count"].parse::<u64>().unwrap())
            .sum()
    };
    assert!(calls("acme", "client") >= 3, "three calls as acme: {seen:#?}");
    assert!(calls("unmapped", "client_other") >= 2, "{seen:#?}");
    assert!(calls("unmapped", "client") >= 1, "acme's certificate after its subject was removed: {seen:#?}");
    assert!(seen.iter().all(|e| e.details["certificate_sha256"] != keys.token("rogue_client_sha256")), "{seen:#?}");
    let ca_loaded = entries
        .iter()
        .find(|e| e.kind == "AUTH_LOADED" && e.details["file"] == "TLS client CA")
        .unwrap_or_else(|| panic!("{entries:#?}"));
    assert_eq!(
        ca_loaded.details["sha256"],
        format!("{:x}", Sha256::digest(std::fs::read(keys.path("ca.pem")).unwrap()))
    );
    let refused: Vec<_> = entries.iter().filter(|e| e.kind == "AUTH_REFUSED").collect();
    assert!(
        refused.iter().any(|e| e.subject == "globex" && e.details["code"] == "CERTIFICATE_TENANT_MISMATCH"),
        "{refused:#?}"
    );
    let report = verify_audit(&stack, &audit_topic).await;
    assert!(report.ok(), "{:#?}", report.problems);
    stack.stop().await;
}

/// The registry over HTTPS on 127.0.0.1:0 with `users` re-read every 200 ms, each reload sent
/// to `reloads`: its URL, its stop, its task.
async fn tls_registry(
    keys: &Keys,
    users: &Path,
    reloads: tokio::sync::mpsc::UnboundedSender<streamscore_tls::Reload>,
) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let store = streamscore_registry::Store::open(&support::kafka(), &support::unique("_schemas-tls")).await.unwrap();
    let (sha256, contents) = streamscore_tls::files::fingerprint(&[users.to_owned()]).unwrap();
    let auth = streamscore_registry::Auth::parse(std::str::from_utf8(&contents[0]).unwrap()).unwrap();
    let auth = Arc::new(streamscore_registry::Current::new(auth));
    let tls =
        streamscore_tls::Tls::load(streamscore_tls::ServerFiles::new(keys.path("server.pem"), keys.path("server.key")))
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = streamscore_registry::auth::watch(
        users.to_owned(),
        sha256,
        false,
        Arc::clone(&auth),
        Duration::from_millis(200),
        move |reload: &streamscore_tls::Reload| {
            let _ = reloads.send(reload.clone());
        },
    );
    let task = tokio::spawn(async move {
        streamscore_registry::serve_with(Arc::new(store), auth, None, listener, Some(&tls), async {
            let _ = stop_rx.await;
        })
        .await;
        watcher.abort();
    });
    (url, stop, task)
}

/// `streamscore ARGS` with `STREAMSCORE_REGISTRY_CA` set to `ca` (or unset): success, output.
async fn streamscore_with_ca(ca: Option<&Path>, args: &[&str]) -> (bool, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_streamscore"));
    command.args(args).env("STREAMSCORE_LOG", "warn");
    match ca {
        Some(ca) => command.env(streamscore_contracts::http::CA_ENV, ca),
        None => command.env_remove(streamscore_contracts::http::CA_ENV),
    };
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_over_tls_serves_the_stages_and_confluents_client_and_reloads_its_users() {
    let Some(python) = python() else { return };
    let keys = Keys::make(&python);
    let users = keys.path("registry-users");
    let hash = streamscore_registry::auth::password_sha256;
    let with_writer = format!("writer:writer:{}\nadmin:admin:{}\n", hash("w-secret"), hash("a-secret"));
    std::fs::write(&users, &with_writer).unwrap();
    let (reloads_tx, mut reloads) = tokio::sync::mpsc::unbounded_channel();
    let (url, stop, task) = tls_registry(&keys, &users, reloads_tx).await;
    let ca = keys.path("ca.pem");
    let authority = url.trim_start_matches("https://").to_owned();

    // A stage's client trusts the registry through STREAMSCORE_REGISTRY_CA, and only then.
    let subjects = format!("{url}/subjects");
    let (ok, output) = streamscore_with_ca(None, &["probe", &subjects]).await;
    assert!(!ok, "the registry's certificate was trusted without its CA: {output}");
    let (ok, output) = streamscore_with_ca(Some(&ca), &["probe", &subjects]).await;
    assert!(ok, "probe with STREAMSCORE_REGISTRY_CA: {output}");
    let bootstrap = support::kafka().bootstrap;
    let writer_url = format!("https://writer:w-secret@{authority}");
    let (ok, output) =
        streamscore_with_ca(Some(&ca), &["topics", "--bootstrap", &bootstrap, "--registry-url", &writer_url]).await;
    assert!(ok, "topics --registry-url https://...: {output}");
    assert!(output.contains("registered inference.requests-value"), "{output}");
    let (ok, output) = streamscore_with_ca(Some(&keys.path("missing-ca.pem")), &["probe", &subjects]).await;
    assert!(!ok && output.contains(streamscore_contracts::http::CA_ENV), "a CA file that cannot be read: {output}");

    // Confluent's Python client, trusting the CA through ssl.ca.location.
    let script = format!("{}/tests/interop/registry_tls.py", env!("CARGO_MANIFEST_DIR"));
    let args = [
        script,
        url.clone(),
        ca.display().to_string(),
        "writer:w-secret".to_owned(),
        "inference.requests-value".to_owned(),
    ];
    let output = tokio::task::spawn_blocking(move || std::process::Command::new(python).args(args).output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success(), "SchemaRegistryClient over TLS: {}", String::from_utf8_lossy(&output.stderr));
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(out["subjects"].as_array().unwrap().contains(&json!("inference.requests-value")), "{out}");
    assert!(out["registered_id"].as_u64().is_some(), "{out}");

    // Plain HTTP to the TLS listener gets no answer.
    let plain = streamscore_contracts::http::client().get(format!("http://{authority}/subjects")).send().await;
    assert!(plain.is_err(), "plain HTTP was answered: {:?}", plain.map(|r| r.status()));

    // The users file re-read: the writer removed is refused within 5 s; an empty file (which
    // would open the registry) is refused and the users in force stay.
    streamscore_contracts::http::install_provider();
    let client = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let register = |user: Option<(&'static str, &'static str)>| {
        let request = client
            .post(format!("{url}/subjects/tls-reload-value/versions"))
            .json(&json!({"schema": "{\"type\": \"long\"}"}));
        let request = match user {
            Some((name, password)) => request.basic_auth(name, Some(password)),
            None => request,
        };
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(register(Some(("writer", "w-secret"))).await, 200);
    replace(&users, format!("admin:admin:{}\n", hash("a-secret")).as_bytes());
    within(Duration::from_secs(5), "the removed writer refused", || async {
        register(Some(("writer", "w-secret"))).await == 401
    })
    .await;
    assert!(reloads.recv().await.unwrap().loaded());
    assert_eq!(register(Some(("admin", "a-secret"))).await, 200);
    replace(&users, b"# nobody\n");
    let refused = tokio::time::timeout(Duration::from_secs(5), reloads.recv()).await.unwrap().unwrap();
    assert!(!refused.loaded(), "an empty users file was taken: {refused:?}");
    assert_eq!(register(None).await, 401, "an empty users file opened the registry");
    assert_eq!(register(Some(("admin", "a-secret"))).await, 200);

    let _ = stop.send(());
    task.await.unwrap();
}

/// The policy with globex's table left out entirely (acme only).
fn policy_without_globex() -> String {
    let text = policy_text(&[]);
    text[..text.find("[tenants.globex]").unwrap()].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_removed_from_the_policy_is_refused_by_ingest_within_5_s_without_a_restart() {
    let mut stack = Stack::start("edge-ingest-policy").await;
    stack.start_pipeline();
    let codec = Codec::<InferenceRequest>::with_url(&stack.registry.url, &stack.topics.requests);
    codec.register().await.unwrap();
    let dead_letters =
        Codec::<streamscore_contracts::DeadLetter>::with_url(&stack.registry.url, &stack.topics.dead_letter);
    let seed = std::sync::atomic::AtomicU64::new(0);
    // A request of `tenant` straight onto the requests topic (no bridge): its id.
    let send = |tenant: &'static str| {
        let seed = seed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = uuid::Uuid::new_v4().to_string();
        let request = support::synth_request(seed, id.clone(), tenant, None, streamscore_contracts::now_micros());
        let record = (tenant.as_bytes().to_vec(), codec.encode(&request).unwrap());
        let topic = stack.topics.requests.clone();
        async move {
            support::produce(&topic, &[record]).await;
            id
        }
    };
    // What became of each request: `<stage>/<reason>` of its dead letter, or its outcome's
    // status; read until every id in `ids` has one.
    let outcomes =
        Codec::<streamscore_contracts::PredictionOutcome>::with_url(&stack.registry.url, &stack.topics.predictions);
    let fates = |ids: Vec<String>| {
        let (topics, dead_letters, outcomes) = (&stack.topics, &dead_letters, &outcomes);
        async move {
            let mut fates = std::collections::HashMap::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while ids.iter().any(|id| !fates.contains_key(id)) {
                assert!(Instant::now() < deadline, "no fate within 60 s for some of {ids:?}: {fates:?}");
                let records =
                    support::read_all(&[&topics.dead_letter, &topics.predictions], Duration::from_millis(500));
                for record in records {
                    use rdkafka::message::Message;
                    let payload = record.payload().unwrap();
                    if record.topic() == topics.dead_letter {
                        let letter = dead_letters.decode(payload).await.unwrap().value;
                        if let Some(id) = letter.lineage.request_id.clone() {
                            fates.insert(id, format!("{}/{}", letter.lineage.stage, letter.reason.code()));
                        }
                    } else {
                        let outcome = outcomes.decode(payload).await.unwrap().value;
                        if let (Some(id), false) = (outcome.lineage.request_id.clone(), outcome.shadow) {
                            fates.insert(id, format!("{:?}", outcome.status));
                        }
                    }
                }
            }
            fates
        }
    };
    let before = send("globex").await;
    assert_eq!(fates(vec![before.clone()]).await[&before], "Scored", "globex is in the policy");

    // globex taken out: its requests, sent every 250 ms for 6 s, are refused by ingest from
    // at most 5 s on (infer, which re-reads the policy every 5 s, would reject them itself, as
    // REJECTED outcomes: the dead letters are ingest's).
    replace(&stack.policy, policy_without_globex().as_bytes());
    let replaced = Instant::now();
    let mut sent = Vec::new();
    let mut pace = tokio::time::interval(Duration::from_millis(250));
    while replaced.elapsed() < Duration::from_secs(6) {
        pace.tick().await;
        let at = replaced.elapsed();
        sent.push((send("globex").await, at));
    }
    let acme = send("acme").await;
    let mut ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    ids.push(acme.clone());
    let fates = fates(ids).await;
    assert_eq!(fates[&acme], "Scored", "acme is still in the policy");
    let late: Vec<_> = sent.iter().filter(|(_, at)| *at >= Duration::from_secs(5)).collect();
    assert!(!late.is_empty());
    for (id, at) in &late {
        assert_eq!(fates[id], "ingest/UNKNOWN_TENANT", "globex's request {at:?} after the policy changed");
    }
    let first = sent.iter().find(|(id, _)| fates[id] == "ingest/UNKNOWN_TENANT").unwrap();
    eprintln!("ingest refused globex from {:?} after the policy changed", first.1);
    stack.stop().await;
}
