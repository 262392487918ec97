//! Confluent's own serializers (confluent-kafka for Python: `AvroSerializer`,
//! `AvroDeserializer`, `SchemaRegistryClient`) work unchanged against our registry and codec.
//!
//! Needs `STREAMSCORE_PYTHON`: a Python with `confluent-kafka[avro,schemaregistry]`, which
//! `scripts/test.sh` sets up. Without it the test says it was skipped — except under CI,
//! where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

use streamscore_contracts::{Codec, InferenceRequest};

mod support;
use support::{samples, TestRegistry};

fn python() -> Option<String> {
    match std::env::var("STREAMSCORE_PYTHON") {
        Ok(python) => Some(python),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("STREAMSCORE_PYTHON is not set under CI; scripts/test.sh sets it up")
        }
        Err(_) => {
            eprintln!("SKIPPED: STREAMSCORE_PYTHON not set (scripts/test.sh sets it up)");
            None
        }
    }
}

fn script() -> String {
    format!("{}/tests/interop/confluent_serializer.py", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread")]
async fn confluent_python_serializer_and_our_codec_interoperate() {
    let Some(python) = python() else { return };
    let registry = TestRegistry::start().await;

    // Confluent's serializer registers the schema and frames the records; our codec reads them.
    let topic = support::unique("confluent-py");
    let schema_file = format!("{}/schemas/inference_request.avsc", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(&python)
        .args([&script(), "encode", &registry.url, &topic, &schema_file, "5"])
        .output()
        .expect("running the Confluent serializer");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let ours = Codec::<InferenceRequest>::with_url(&registry.url, &topic);
    let lines = String::from_utf8(output.stdout).unwrap();
    assert_eq!(lines.lines().count(), 5);
    for line in lines.lines() {
        let (hex, json) = line.split_once('\t').unwrap();
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let decoded = ours.decode(&bytes).await.expect("our codec reads Confluent's bytes");
        let expected: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::to_value(&decoded.value).unwrap(), expected);
    }
    let registered = ours.register().await.unwrap();
    assert_eq!(ours.decode(&ours.encode(&samples::request()).unwrap()).await.unwrap().schema_id, registered);

    // Our codec frames records; Confluent's deserializer reads them.
    let sample = samples::request();
    let bytes = ours.encode(&sample).unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut child = Command::new(&python)
        .args([&script(), "decode", &registry.url, &topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{hex}\n").as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let theirs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(theirs, serde_json::to_value(&sample).unwrap());
    registry.stop().await;
}
