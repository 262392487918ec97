//! Fuzzing on stable Rust: proptest-generated inputs, mostly mutations of valid seeds, against
//! every parser that takes outside input. Each target runs for a share of a time budget
//! (`STREAMSCORE_FUZZ_SECS`, 50 s in all by default; `0` replays the corpus only) and prints
//! how many inputs it ran.
//!
//! | target | what it feeds | what must hold |
//! | --- | --- | --- |
//! | `wire_avro` | bytes to the Confluent header parser and the Avro decoder (request and validated-request contracts) | a typed error or a value that re-encodes to stable bytes; never a panic |
//! | `registry_state` | sequences of register / delete / config operations, planned and applied as the registry does | an id never names two schemas; what was registered is found under its id |
//! | `registry_apply` | arbitrary `_schemas` records to `State::apply` | never a panic |
//! | `registry_http` | method, path, query and body to a real registry server (on the test broker) | never a 5xx; every error is Confluent JSON with an `error_code` |
//! | `policy` | tenant policy files, then quota decisions at extreme event times and restored snapshots | a typed error, or decisions without a panic |
//! | `model_metadata` | `metadata.json` of a version in a model store | a typed error or a version whose feature check runs |
//! | `onnx_mlp` | ONNX bytes to the CUDA backend's graph reader | a typed error or a network whose forward pass has the declared shape |
//! | `bridge_body` | `/v2` and `/v1` bodies to the bridge's parsers | a 400/415 error with a stable code, or 1..=1000 rows of the model's width |
//!
//! Seeds and regression cases live in `tests/corpus/fuzz/<target>/` and run first, every time.
//! A failing input is shrunk, written to `target/fuzz-failures/<target>/`, and the test fails
//! naming the file: move it into the corpus with the fix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use serde::{Deserialize, Serialize};
use streamscore_contracts::codec::WireHeader;
use streamscore_contracts::{Codec, DecodeError, InferenceRequest, ValidatedRequest};

mod support;

const DEFAULT_BUDGET_SECS: f64 = 50.0;

/// The targets, each with its share of the budget.
const TARGETS: [(&str, f64); 8] = [
    ("wire_avro", 0.14),
    ("registry_state", 0.14),
    ("registry_apply", 0.06),
    ("registry_http", 0.16),
    ("policy", 0.1),
    ("model_metadata", 0.1),
    ("onnx_mlp", 0.1),
    ("bridge_body", 0.1),
];

fn main() {
    let args = Arguments::from_args();
    let total = std::env::var("STREAMSCORE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(DEFAULT_BUDGET_SECS)
        .max(0.0);
    // Panics are caught and reported by proptest (with the shrunk input); the default hook
    // would print every one met while shrinking.
    std::panic::set_hook(Box::new(|_| {}));
    let trials = TARGETS
        .iter()
        .map(|&(name, share)| {
            let budget = Duration::from_secs_f64(total * share);
            Trial::test(name, move || run_target(name, budget))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

fn run_target(name: &str, budget: Duration) -> Result<(), Failed> {
    match name {
        "wire_avro" => wire_avro(budget),
        "registry_state" => registry_state(budget),
        "registry_apply" => registry_apply(budget),
        "registry_http" => registry_http(budget),
        "policy" => policy(budget),
        "model_metadata" => model_metadata(budget),
        "onnx_mlp" => onnx_mlp(budget),
        "bridge_body" => bridge_body(budget),
        other => Err(format!("no target {other}").into()),
    }
}

// ---- the harness ----

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/fuzz").join(target)
}

/// The corpus files of `target` (seeds and regressions), sorted by name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(corpus_dir(target)) else { return Vec::new() };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default()))
        .collect();
    files.sort();
    files
}

/// Runs `check` on every corpus file of `target`, then on generated inputs until `budget` is
/// spent. Prints the number of inputs run. `save` turns a failing input into corpus bytes.
fn fuzz<S: Strategy>(
    target: &str,
    budget: Duration,
    replay: impl Fn(&[u8]) -> Option<S::Value>,
    strategy: S,
    save: impl Fn(&S::Value) -> Vec<u8>,
    check: impl Fn(&S::Value) -> Result<(), String>,
) -> Result<(), Failed>
where
    S::Value: std::fmt::Debug,
{
    let started = Instant::now();
    OUTCOMES.with(|o| o.borrow_mut().clear());
    let mut replayed = 0;
    for (file, bytes) in corpus(target) {
        let Some(value) = replay(&bytes) else { continue };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&value)));
        match outcome {
            Ok(Ok(())) => replayed += 1,
            Ok(Err(e)) => return Err(format!("corpus file {target}/{file}: {e}").into()),
            Err(panic) => return Err(format!("corpus file {target}/{file} panicked: {}", panic_text(&panic)).into()),
        }
    }
    let executions = AtomicU64::new(0);
    let seed: u64 = std::env::var("STREAMSCORE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let deadline = started + budget;
    let mut round = 0_u64;
    while Instant::now() < deadline {
        let mut key = [0_u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&round.to_le_bytes());
        let config = Config { cases: 64, failure_persistence: None, max_shrink_iters: 4096, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
        let result = runner.run(&strategy, |value| {
            executions.fetch_add(1, Relaxed);
            check(&value).map_err(TestCaseError::fail)
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(reason, value)) => {
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures").join(target);
                std::fs::create_dir_all(&dir).ok();
                let bytes = save(&value);
                let file = dir.join(format!("crash-{seed}-{round}"));
                std::fs::write(&file, &bytes).ok();
                return Err(format!(
                    "{target}: {reason}\ninput: {value:?}\nwritten to {} (seed {seed}, round {round}); once fixed, \
                     move it into tests/corpus/fuzz/{target}/",
                    file.display()
                )
                .into());
            }
            Err(TestError::Abort(reason)) => return Err(format!("{target}: aborted: {reason}").into()),
        }
        round += 1;
    }
    let runs = executions.load(Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let outcomes = OUTCOMES.with(|o| o.borrow().iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "));
    println!(
        "fuzz {target}: {replayed} corpus inputs, {runs} generated inputs in {secs:.1} s ({:.0}/s), seed {seed}; {outcomes}",
        runs as f64 / secs.max(1e-9)
    );
    Ok(())
}

thread_local! {
    /// What the inputs of the target running on this thread came to (accepted, refused, ...).
    static OUTCOMES: std::cell::RefCell<std::collections::BTreeMap<String, u64>> = Default::default();
}

/// Counts one input's outcome for the summary line.
fn tally(outcome: impl Into<String>) {
    OUTCOMES.with(|o| *o.borrow_mut().entry(outcome.into()).or_default() += 1);
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

/// Tokens that break parsers: extreme numbers, wrong types, odd strings.
const TOKENS: [&str; 18] = [
    "0",
    "-1",
    "1e309",
    "-0",
    "4294967296",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "1e-400",
    "NaN",
    "\"\"",
    "null",
    "[]",
    "{}",
    "\"\u{10FFFF}\u{0}\"",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "true",
    "2147483648",
];

/// One edit of a seed: what, where, and a byte of data.
type Edit = (u8, Index, Index, u8);

/// Applies byte-level and token-level edits to `data`, splicing from `seeds` when asked.
fn mutate(mut data: Vec<u8>, edits: &[Edit], seeds: &[Vec<u8>]) -> Vec<u8> {
    for (kind, at, other, byte) in edits {
        let len = data.len();
        match kind % 8 {
            0 if len > 0 => data[at.index(len)] ^= 1 << (byte % 8),
            1 => data.insert(at.index(len + 1), *byte),
            2 if len > 0 => {
                let i = at.index(len);
                let end = (i + 1 + usize::from(*byte % 16)).min(len);
                data.drain(i..end);
            }
            3 if len > 0 => {
                let i = at.index(len);
                let end = (i + 1 + usize::from(*byte % 32)).min(len);
                let chunk = data[i..end].to_vec();
                let j = other.index(len + 1);
                data.splice(j..j, chunk);
            }
            4 => data.truncate(at.index(len + 1)),
            5 => {
                // Replace the run of digits (or letters) at or after a point with a token.
                let token = TOKENS[usize::from(*byte) % TOKENS.len()].as_bytes();
                let start = at.index(len + 1);
                let begin = data[start..].iter().position(|b| b.is_ascii_alphanumeric()).map_or(len, |p| start + p);
                let end = data[begin..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'.'))
                    .map_or(len, |p| begin + p);
                data.splice(begin..end, token.iter().copied());
            }
            6 if !seeds.is_empty() => {
                let seed = &seeds[other.index(seeds.len())];
                if !seed.is_empty() {
                    let i = at.index(seed.len());
                    let end = (i + 1 + usize::from(*byte) * 4).min(seed.len());
                    let j = at.index(len + 1);
                    data.splice(j..j, seed[i..end].iter().copied());
                }
            }
            7 if len > 0 => {
                data[at.index(len)] = [0x00, 0xff, 0x7f, 0x80, b'"', b'\\', b'{', b'['][usize::from(*byte % 8)]
            }
            _ => {}
        }
    }
    data
}

/// Inputs built from `seeds`: mostly seeds with a few edits, sometimes a seed as it is, a cut
/// seed or raw bytes.
fn mutations(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    assert!(!seeds.is_empty(), "a byte target needs seeds");
    let pool = seeds.clone();
    let unchanged = prop::sample::select(seeds.clone());
    let edited = (any::<Index>(), prop::collection::vec(any::<Edit>(), 0..8))
        .prop_map(move |(seed, edits)| mutate(pool[seed.index(pool.len())].clone(), &edits, &pool));
    prop_oneof![
        3 => unchanged,
        8 => edited,
        1 => prop::collection::vec(any::<u8>(), 0..96),
        1 => (any::<Index>(), any::<Index>()).prop_map(move |(seed, cut)| {
            let seed = &seeds[seed.index(seeds.len())];
            seed[..cut.index(seed.len() + 1)].to_vec()
        }),
    ]
}

fn byte_seeds(target: &str, extra: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, bytes)| bytes).collect();
    seeds.extend(extra);
    seeds
}

fn fuzz_bytes(
    target: &str,
    budget: Duration,
    extra_seeds: Vec<Vec<u8>>,
    check: impl Fn(&Vec<u8>) -> Result<(), String>,
) -> Result<(), Failed> {
    let seeds = byte_seeds(target, extra_seeds);
    fuzz(target, budget, |bytes| Some(bytes.to_vec()), mutations(seeds), Clone::clone, check)
}

// ---- wire header and Avro decode ----

fn codecs() -> (Codec<InferenceRequest>, Codec<ValidatedRequest>) {
    let settings = || {
        streamscore_contracts::http::install_provider();
        SrSettings::new("http://127.0.0.1:9".to_owned())
    };
    (
        Codec::new(settings(), "fuzz-requests").with_known_id(1),
        Codec::new(settings(), "fuzz-validated").with_known_id(1),
    )
}

fn wire_avro(budget: Duration) -> Result<(), Failed> {
    let (requests, validated) = codecs();
    let mut seeds = Vec::new();
    for i in 0..6_u64 {
        let mut request = support::synth_request(i, format!("r-{i}"), "tenant-01", None, 1_700_000_000_000_000);
        if i % 2 == 0 {
            request.reply_to = Some("http-bridge".to_owned());
            request.attributes.insert("k".to_owned(), "v".repeat(usize::try_from(i).unwrap_or(0)));
        }
        if i == 5 {
            request.features.clear();
            request.request_id.clear();
        }
        seeds.push(requests.encode(&request).unwrap());
        let source = streamscore_contracts::SourceOffset::new("inference.requests", 0, i64::try_from(i).unwrap_or(0));
        seeds.push(validated.encode(&support::validated_from(request, source)).unwrap());
    }
    // The bad-bytes corpus (the decoder's hand-written hostile inputs) seeds it too.
    let bad_bytes = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/bad-bytes");
    for entry in std::fs::read_dir(bad_bytes).map_err(|e| e.to_string())?.filter_map(Result::ok) {
        if entry.path().extension().is_some_and(|e| e == "bin") {
            seeds.push(std::fs::read(entry.path()).map_err(|e| e.to_string())?);
        }
    }
    fuzz_bytes("wire_avro", budget, seeds, |bytes| {
        match WireHeader::parse(bytes) {
            Ok((header, body)) => {
                if bytes.len() < 5 || bytes[0] != 0 {
                    return Err("a header was read from bytes that are not a Confluent header".to_owned());
                }
                let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
                if header.schema_id != id || body != &bytes[5..] {
                    return Err(format!("header id {} / body do not match the bytes (id {id})", header.schema_id));
                }
            }
            Err(_) if bytes.len() >= 5 && bytes[0] == 0 => {
                return Err("a well-formed header was refused".to_owned());
            }
            Err(_) => {}
        }
        check_decode(&requests, bytes)?;
        check_decode(&validated, bytes)
    })
}

/// A decode gives a typed error, or a value that encodes and decodes back to itself. (Compared
/// as JSON values: maps are `HashMap`s, whose encoding order is not fixed.)
fn check_decode<T: streamscore_contracts::Event + Serialize>(codec: &Codec<T>, bytes: &[u8]) -> Result<(), String> {
    match codec.decode_cached(bytes) {
        Ok(decoded) => {
            let first = codec.encode(&decoded.value).map_err(|e| format!("a decoded value does not encode: {e}"))?;
            let again = codec.decode_cached(&first).map_err(|e| format!("its encoding does not decode: {e}"))?;
            let json = |value: &T| serde_json::to_value(value).map_err(|e| e.to_string());
            if json(&decoded.value)? != json(&again.value)? {
                return Err("decode → encode → decode does not give the value back".to_owned());
            }
            tally("decoded");
            Ok(())
        }
        Err(e) => {
            tally(if matches!(e, DecodeError::Registry { .. }) { "id not fetched" } else { e.reason().code() });
            if e.to_string().is_empty() {
                return Err("an error without a message".to_owned());
            }
            let unknown_id = matches!(e, DecodeError::Registry { .. });
            if e.is_retryable() != unknown_id {
                return Err(format!("only an id not fetched yet may be retryable: {e}"));
            }
            Ok(())
        }
    }
}

// ---- the registry's state machine ----

const SCHEMAS: [&str; 7] = [
    r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#,
    r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":["null","long"],"default":null}]}"#,
    r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#,
    r#"{"type":"enum","name":"E","symbols":["A","B"]}"#,
    r#""string""#,
    r#"{"type":"record","name":"R","fields":[{"name":"b","type":["null","long"],"default":null}]}"#,
    r#"{"type":"array","items":"long"}"#,
];

const LEVELS: [&str; 7] =
    ["NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"];

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Op {
    Register { subject: u8, schema: u8 },
    RegisterText { subject: u8, text: String },
    DeleteSubject { subject: u8, permanent: bool },
    DeleteVersion { subject: u8, version: Option<u8>, permanent: bool },
    Config { subject: Option<u8>, level: Option<u8> },
}

fn subject_name(n: u8) -> String {
    format!("s{}", n % 3)
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u8>(), any::<u8>()).prop_map(|(subject, schema)| Op::Register { subject, schema }),
        1 => (any::<u8>(), any::<u8>(), prop::collection::vec(any::<Edit>(), 1..4)).prop_map(|(subject, schema, edits)| {
            let seed = SCHEMAS[usize::from(schema) % SCHEMAS.len()].as_bytes().to_vec();
            Op::RegisterText { subject, text: String::from_utf8_lossy(&mutate(seed, &edits, &[])).into_owned() }
        }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(subject, permanent)| Op::DeleteSubject { subject, permanent }),
        2 => (any::<u8>(), any::<Option<u8>>(), any::<bool>())
            .prop_map(|(subject, version, permanent)| Op::DeleteVersion { subject, version: version.map(|v| v % 5), permanent }),
        2 => (any::<Option<u8>>(), any::<Option<u8>>()).prop_map(|(subject, level)| Op::Config { subject, level }),
    ]
}

fn apply_records(state: &mut streamscore_registry::state::State, records: &[streamscore_registry::state::LogRecord]) {
    for record in records {
        let key = serde_json::to_vec(&record.key).unwrap();
        state.apply(&key, record.value.as_deref().map(str::as_bytes));
    }
}

fn run_ops(ops: &[Op]) -> Result<(), String> {
    use streamscore_registry::compat::Level;
    use streamscore_registry::state::{RegisterPlan, State, VersionSel};
    let mut state = State::default();
    // Every id handed out, with the normalized text it names.
    let mut ids: HashMap<u32, String> = HashMap::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Register { subject, .. } | Op::RegisterText { subject, .. } => {
                let text = match op {
                    Op::Register { schema, .. } => SCHEMAS[usize::from(*schema) % SCHEMAS.len()].to_owned(),
                    Op::RegisterText { text, .. } => text.clone(),
                    _ => unreachable!(),
                };
                let subject = subject_name(*subject);
                let Ok(plan) = state.plan_register(&subject, &text) else {
                    tally("register refused");
                    continue;
                };
                let id = match plan {
                    RegisterPlan::Existing { id } => {
                        tally("register existing");
                        id
                    }
                    RegisterPlan::New { id, record } => {
                        tally("register new");
                        apply_records(&mut state, &[record]);
                        id
                    }
                };
                let normalized = streamscore_registry::state::parse_schema(&text).map_err(|e| e.to_string())?.1;
                if let Some(before) = ids.insert(id, normalized.clone()) {
                    if before != normalized {
                        return Err(format!(
                            "step {step}: id {id} was given to two schemas: {before} and {normalized}"
                        ));
                    }
                }
                let found = state.lookup(&subject, &text, false).map_err(|e| format!("step {step}: {e}"))?;
                if found.id != id {
                    return Err(format!("step {step}: registered as id {id}, looked up as {}", found.id));
                }
            }
            Op::DeleteSubject { subject, permanent } => {
                match state.plan_delete_subject(&subject_name(*subject), *permanent) {
                    Ok((_, records)) => {
                        tally("delete subject");
                        apply_records(&mut state, &records);
                    }
                    Err(_) => tally("delete refused"),
                }
            }
            Op::DeleteVersion { subject, version, permanent } => {
                let sel = version.map_or(VersionSel::Latest, |v| VersionSel::Number(u32::from(v) + 1));
                match state.plan_delete_version(&subject_name(*subject), sel, *permanent) {
                    Ok((_, record)) => {
                        tally("delete version");
                        apply_records(&mut state, &[record]);
                    }
                    Err(_) => tally("delete refused"),
                }
            }
            Op::Config { subject, level } => {
                let level =
                    level.map(|l| serde_json::from_value::<Level>(LEVELS[usize::from(l) % LEVELS.len()].into()));
                let level = match level {
                    None => None,
                    Some(Ok(level)) => Some(level),
                    Some(Err(e)) => return Err(format!("level does not parse: {e}")),
                };
                let subject = subject.map(subject_name);
                tally("config");
                apply_records(&mut state, &[State::plan_config(subject.as_deref(), level)]);
            }
        }
        for (id, text) in &ids {
            if let Ok(entry) = state.schema_by_id(*id) {
                if &entry.text != text {
                    return Err(format!("step {step}: id {id} now names {} instead of {text}", entry.text));
                }
            }
        }
    }
    Ok(())
}

fn registry_state(budget: Duration) -> Result<(), Failed> {
    fuzz(
        "registry_state",
        budget,
        |bytes| serde_json::from_slice::<Vec<Op>>(bytes).ok(),
        prop::collection::vec(op_strategy(), 1..40),
        |ops| serde_json::to_vec_pretty(ops).unwrap_or_default(),
        |ops| run_ops(ops),
    )
}

fn registry_apply(budget: Duration) -> Result<(), Failed> {
    let seeds: Vec<Vec<u8>> = vec![
        br#"{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}"#.to_vec(),
        br#"{"subject":"s","version":1,"id":1,"schema":"\"string\"","deleted":false}"#.to_vec(),
        br#"{"keytype":"CONFIG","subject":"s","magic":0}"#.to_vec(),
        br#"{"compatibilityLevel":"FULL"}"#.to_vec(),
        br#"{"keytype":"NOOP","magic":0}"#.to_vec(),
        br#"{"subject":"s","version":4294967295,"id":4294967295,"schema":"{\"type\":\"record\",\"name\":\"R\",\"fields\":[]}","deleted":true}"#.to_vec(),
    ];
    let pairs = (mutations(seeds.clone()), prop::option::of(mutations(seeds)));
    let strategy = prop::collection::vec(pairs, 1..12);
    fuzz(
        "registry_apply",
        budget,
        |bytes| serde_json::from_slice::<Vec<(Vec<u8>, Option<Vec<u8>>)>>(bytes).ok(),
        strategy,
        |records| serde_json::to_vec(records).unwrap_or_default(),
        |records| {
            let mut state = streamscore_registry::state::State::default();
            for (key, value) in records {
                state.apply(key, value.as_deref());
            }
            let _ = state.subjects(true);
            Ok(())
        },
    )
}

// ---- the registry over HTTP ----

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HttpCall {
    method: String,
    path: String,
    body: Vec<u8>,
}

const SEGMENTS: [&str; 24] = [
    "subjects",
    "schemas",
    "ids",
    "versions",
    "config",
    "mode",
    "compatibility",
    "latest",
    "-1",
    "1",
    "2",
    "0",
    "99999999999",
    "fuzz-a",
    "fuzz-b",
    "%2e%2e",
    "a%20b",
    "%00",
    "referencedby",
    "types",
    "schema",
    "subject",
    "contexts",
    "%F0%9F%98%80",
];

/// The registry's routes, with `{s}` a subject and `{v}` a version or id.
const ROUTES: [&str; 12] = [
    "subjects/{s}/versions",
    "subjects/{s}",
    "subjects/{s}/versions/{v}",
    "subjects/{s}/versions/{v}/schema",
    "subjects/{s}/versions/{v}/referencedby",
    "compatibility/subjects/{s}/versions/{v}",
    "compatibility/subjects/{s}/versions",
    "config/{s}",
    "config",
    "schemas/ids/{v}",
    "schemas/ids/{v}/versions",
    "mode/{s}",
];

fn http_strategy() -> impl Strategy<Value = HttpCall> {
    let mut bodies: Vec<Vec<u8>> = SCHEMAS
        .iter()
        .map(|schema| format!(r#"{{"schema": {}}}"#, serde_json::to_string(schema).unwrap_or_default()).into_bytes())
        .collect();
    bodies.extend([
        format!(r#"{{"schema": {}, "schemaType": "AVRO"}}"#, serde_json::to_string(SCHEMAS[1]).unwrap_or_default())
            .into_bytes(),
        br#"{"compatibility": "BACKWARD"}"#.to_vec(),
        br#"{"compatibility": "NONE"}"#.to_vec(),
        br#"{"mode": "READWRITE"}"#.to_vec(),
        b"{}".to_vec(),
    ]);
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]);
    let random_path = prop::collection::vec(prop::sample::select(SEGMENTS.to_vec()), 0..5).prop_map(|p| p.join("/"));
    let subjects = prop::sample::select(vec!["fuzz-a", "fuzz-b", "fuzz-a", "a%20b", "%00", "..", "%F0%9F%98%80"]);
    let versions = prop::sample::select(vec!["1", "2", "3", "latest", "-1", "0", "-2", "99999999999", "x"]);
    let routed = (prop::sample::select(ROUTES.to_vec()), subjects, versions)
        .prop_map(|(route, s, v)| route.replace("{s}", s).replace("{v}", v));
    let path = prop_oneof![4 => routed, 1 => random_path];
    let query =
        prop::sample::select(vec!["", "", "?permanent=true", "?deleted=true", "?normalize=true", "?verbose=true&x"]);
    let repeat = prop::sample::select(vec![0_usize, 0, 0, 0, 0, 300]);
    (method, path, query, repeat, mutations(bodies)).prop_map(|(method, mut path, query, repeat, body)| {
        if repeat > 0 {
            path.push_str(&"x".repeat(repeat));
        }
        HttpCall { method: method.to_owned(), path: format!("/{path}{query}"), body }
    })
}

fn registry_http(budget: Duration) -> Result<(), Failed> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let registry = runtime.block_on(support::TestRegistry::start());
    let client =
        streamscore_contracts::http::builder().timeout(Duration::from_secs(20)).build().map_err(|e| e.to_string())?;
    let url = registry.url.clone();
    let result = fuzz(
        "registry_http",
        budget,
        |bytes| serde_json::from_slice::<HttpCall>(bytes).ok(),
        http_strategy(),
        |call| serde_json::to_vec_pretty(call).unwrap_or_default(),
        |call| {
            runtime.block_on(async {
                let method = reqwest::Method::from_bytes(call.method.as_bytes()).map_err(|e| e.to_string())?;
                let response = client
                    .request(method.clone(), format!("{url}{}", call.path))
                    .header("content-type", "application/vnd.schemaregistry.v1+json")
                    .body(call.body.clone())
                    .send()
                    .await
                    .map_err(|e| format!("{} {}: no answer: {e}", call.method, call.path))?;
                let status = response.status();
                tally(status.as_u16().to_string());
                let body = response.bytes().await.map_err(|e| e.to_string())?;
                if status.is_server_error() {
                    return Err(format!(
                        "{} {} answered {status}: {}",
                        call.method,
                        call.path,
                        String::from_utf8_lossy(&body)
                    ));
                }
                if status.is_client_error() && method != reqwest::Method::HEAD {
                    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
                        format!(
                            "{} {} answered {status} without JSON: {:?}",
                            call.method,
                            call.path,
                            String::from_utf8_lossy(&body)
                        )
                    })?;
                    if json.get("error_code").and_then(serde_json::Value::as_u64).is_none() {
                        return Err(format!(
                            "{} {} answered {status} without error_code: {json}",
                            call.method, call.path
                        ));
                    }
                }
                Ok(())
            })
        },
    );
    // The registry still answers after all of it.
    let alive = runtime.block_on(async { client.get(format!("{url}/subjects")).send().await.map(|r| r.status()) });
    runtime.block_on(registry.stop());
    result?;
    match alive {
        Ok(status) if status.is_success() => Ok(()),
        other => Err(format!("the registry no longer answers: {other:?}").into()),
    }
}

// ---- the tenant policy and the quotas it drives ----

fn policy(budget: Duration) -> Result<(), Failed> {
    use streamscore_infer::quota::{Policy, Quotas};
    let shipped = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/tenants.toml")).unwrap();
    let seeds = vec![
        shipped,
        b"version = 1\nunknown_tenants = \"default\"\n[default]\nrate_per_sec = 4294967295\nburst = 4294967295\nmax_in_flight = 0\n"
            .to_vec(),
        b"version = 1\n[tenants.t]\nrate_per_sec = 1\nburst = 1\non_exceed = \"delay\"\nmax_delay_ms = 18446744073709551615\n".to_vec(),
        br#"{"tokens_micro": 1, "last_us": 1}"#.to_vec(),
    ];
    let times = prop::sample::select(vec![i64::MIN, -1, 0, 1, 1_700_000_000_000_000, i64::MAX - 1, i64::MAX]);
    let strategy = (mutations(seeds.clone()), mutations(seeds), prop::collection::vec(times, 1..6));
    fuzz(
        "policy",
        budget,
        |bytes| Some((bytes.to_vec(), Vec::new(), vec![0, i64::MAX, i64::MIN])),
        strategy,
        |(policy, ..)| policy.clone(),
        |(bytes, snapshot, times)| {
            let Ok(policy) = Policy::parse(Path::new("fuzz.toml"), bytes) else {
                tally("refused");
                return Ok(());
            };
            tally("parsed");
            let tenants: Vec<String> = policy.file.tenants.keys().cloned().chain(["stranger".to_owned()]).collect();
            let mut quotas = Quotas::new(policy);
            let snapshot = String::from_utf8_lossy(snapshot).into_owned();
            for tenant in &tenants {
                quotas.adopt(tenant, 1, Some(&snapshot));
                for &at in times {
                    let _ = quotas.decide(tenant, "fraud", at);
                    if let Some(tokens) = quotas.tokens(tenant) {
                        if tokens.is_nan() {
                            return Err(format!("tenant {tenant} has NaN tokens at {at}"));
                        }
                    }
                    quotas.release(tenant);
                }
                let _ = quotas.snapshot(tenant);
            }
            Ok(())
        },
    )
}

// ---- model metadata and the ONNX reader ----

fn model_metadata(budget: Duration) -> Result<(), Failed> {
    let store = tempfile::tempdir().map_err(|e| e.to_string())?;
    let shipped = support::models_dir().join("fraud");
    let family = store.path().join("fraud");
    std::fs::create_dir_all(family.join("1")).map_err(|e| e.to_string())?;
    std::fs::copy(shipped.join("model.json"), family.join("model.json")).map_err(|e| e.to_string())?;
    std::fs::copy(shipped.join("1/model.onnx"), family.join("1/model.onnx")).map_err(|e| e.to_string())?;
    let seeds = vec![std::fs::read(shipped.join("1/metadata.json")).map_err(|e| e.to_string())?];
    fuzz_bytes("model_metadata", budget, seeds, |bytes| {
        std::fs::write(family.join("1/metadata.json"), bytes).map_err(|e| e.to_string())?;
        match streamscore_modelstore::ModelStore::open(store.path()) {
            Ok(opened) => {
                let version = opened.get("fraud", "1").ok_or("opened without fraud/1")?;
                if version.meta.features.is_empty() {
                    return Err("a version without features was accepted".to_owned());
                }
                let features: HashMap<String, f64> =
                    version.meta.features.iter().map(|f| (f.name.clone(), f.min)).collect();
                let _ = version.check(&features);
                tally("loaded");
                Ok(())
            }
            Err(e) if e.to_string().is_empty() => Err("an error without a message".to_owned()),
            Err(_) => {
                tally("refused");
                Ok(())
            }
        }
    })
}

fn onnx_mlp(budget: Duration) -> Result<(), Failed> {
    use streamscore_infer::mlp::Mlp;
    let models = support::models_dir().join("fraud");
    let seeds = vec![
        std::fs::read(models.join("1/model.onnx")).map_err(|e| e.to_string())?,
        std::fs::read(models.join("2/model.onnx")).map_err(|e| e.to_string())?,
    ];
    fuzz_bytes("onnx_mlp", budget, seeds, |bytes| match Mlp::from_onnx_bytes(bytes) {
        Ok(mlp) => {
            if mlp.inputs() == 0 || mlp.outputs() == 0 {
                return Err(format!("a network of {} inputs and {} outputs was accepted", mlp.inputs(), mlp.outputs()));
            }
            tally("read");
            if mlp.inputs().saturating_mul(mlp.outputs()) > 1 << 24 {
                return Ok(()); // a huge but consistent network: reading it was the point
            }
            let out = mlp.forward(&vec![0.5; mlp.inputs() * 2], 2);
            if out.len() != mlp.outputs() * 2 {
                return Err(format!("forward gave {} values for 2 rows of {} outputs", out.len(), mlp.outputs()));
            }
            Ok(())
        }
        Err(e) if e.to_string().is_empty() => Err("an error without a message".to_owned()),
        Err(_) => {
            tally("refused");
            Ok(())
        }
    })
}

// ---- the bridge's bodies ----

fn bridge_body(budget: Duration) -> Result<(), Failed> {
    use streamscore_bridge::api::{parse_oip, parse_predict, MAX_ROWS};
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(support::models_dir().join("fraud/1/metadata.json")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let names: Vec<String> = meta["features"]
        .as_array()
        .map(|features| features.iter().filter_map(|f| f["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let row: Vec<f64> = (0..names.len()).map(|i| i as f64 * 0.5).collect();
    let features: serde_json::Map<String, serde_json::Value> =
        names.iter().zip(&row).map(|(n, v)| ((*n).to_owned(), (*v).into())).collect();
    let seeds = [
        serde_json::json!({"id": "a", "inputs": [{"name": "features", "shape": [1, names.len()], "datatype": "FP32", "data": row}]}),
        serde_json::json!({"inputs": [{"name": "features", "shape": [2, names.len()], "datatype": "FP64", "data": [row, row]}]}),
        serde_json::json!({"features": features, "version": "2", "id": "x"}),
        serde_json::json!({"instances": [features, features]}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect();
    fuzz_bytes("bridge_body", budget, seeds, |bytes| {
        let stable = |e: &streamscore_bridge::api::ApiError| {
            let ok = matches!(e.status.as_u16(), 400 | 415) && !e.code.is_empty() && !e.message.is_empty();
            if ok {
                Ok(())
            } else {
                Err(format!("a bad body gave {} {} {:?}", e.status, e.code, e.message))
            }
        };
        match parse_oip(bytes, &names) {
            Ok((_, rows)) => {
                if rows.is_empty() || rows.len() > MAX_ROWS || rows.iter().any(|r| r.len() != names.len()) {
                    return Err(format!(
                        "{} rows accepted, widths {:?}",
                        rows.len(),
                        rows.iter().map(HashMap::len).max()
                    ));
                }
                tally("v2 rows");
            }
            Err(e) => {
                tally(format!("v2 {}", e.status.as_u16()));
                stable(&e)?;
            }
        }
        match parse_predict(bytes).and_then(|mut request| request.take_rows()) {
            Ok(rows) if rows.is_empty() || rows.len() > MAX_ROWS => Err(format!("{} rows accepted", rows.len())),
            Ok(_) => {
                tally("v1 rows");
                Ok(())
            }
            Err(e) => {
                tally(format!("v1 {}", e.status.as_u16()));
                stable(&e)
            }
        }
    })
}
