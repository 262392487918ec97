//! Regenerates `tests/corpus/bad-bytes/`: records that must not decode as a request, each with
//! the typed error and dead-letter reason it must produce.
//!
//! The corpus assumes a registry where id 1 is the request schema and id 2 is a schema that
//! is not a request (the corpus test registers both, in that order, on a fresh registry).
//!
//! Run: `cargo run --example bad_bytes_corpus`

use std::path::Path;

use apache_avro::writer::datum::GenericDatumWriter;
use streamscore_contracts::codec::{WireHeader, HEADER_LEN};
use streamscore_contracts::{schemas, InferenceRequest};

/// The schema registered as id 2 by the corpus test: a record that is not a request.
pub const NOT_A_REQUEST: &str =
    r#"{"type":"record","name":"Other","namespace":"io.example","fields":[{"name":"x","type":"int"}]}"#;

fn framed(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    WireHeader { schema_id: id }.write(&mut out);
    out.extend_from_slice(body);
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schema = schemas::INFERENCE_REQUEST.parse();
    let request = InferenceRequest {
        request_id: "0b6f3c1e-2a4d-4e8f-9c7b-5a3d2e1f0a9b".to_owned(),
        tenant: "acme".to_owned(),
        model: "fraud".to_owned(),
        model_version: None,
        features: [("amount".to_owned(), 42.0), ("hour_of_day".to_owned(), 13.0)].into_iter().collect(),
        created_at: 1_764_000_000_000_000,
        reply_to: None,
        attributes: Default::default(),
    };
    let body = GenericDatumWriter::builder(&schema).build()?.write_ser_to_vec(&request)?;
    let valid = framed(1, &body);

    let entries: Vec<(&str, Vec<u8>, &str, &str, &str)> = vec![
        ("empty.bin", vec![], "Empty", "UNDECODABLE", "no bytes at all"),
        ("short-header.bin", vec![0, 0, 1], "ShortHeader", "UNDECODABLE", "3 bytes, shorter than the 5-byte header"),
        (
            "wrong-magic.bin",
            {
                let mut v = valid.clone();
                v[0] = 1;
                v
            },
            "BadMagic",
            "UNDECODABLE",
            "magic byte 1 instead of 0",
        ),
        (
            "json-not-avro.bin",
            br#"{"request_id":"x","tenant":"acme"}"#.to_vec(),
            "BadMagic",
            "UNDECODABLE",
            "JSON sent where Avro was expected",
        ),
        (
            "unknown-schema-id.bin",
            framed(0x7fff_ffff, &body),
            "UnknownSchema",
            "UNKNOWN_SCHEMA",
            "schema id 2147483647, not in the registry",
        ),
        (
            "schema-not-a-request.bin",
            framed(2, &[0x54]),
            "Incompatible",
            "SCHEMA_INVALID",
            "written with a registered schema that is not a request",
        ),
        ("header-only.bin", framed(1, &[]), "Body", "UNDECODABLE", "valid header, empty body"),
        (
            "truncated-body.bin",
            valid[..HEADER_LEN + body.len() / 2].to_vec(),
            "Body",
            "UNDECODABLE",
            "body cut in half",
        ),
        ("garbage-body.bin", framed(1, &[0xff; 12]), "Body", "UNDECODABLE", "varint that never ends"),
        ("negative-length.bin", framed(1, &[0x09, b'a']), "Body", "UNDECODABLE", "string length -5"),
        (
            "huge-length.bin",
            framed(1, &[0x80, 0x80, 0x80, 0x80, 0x08, b'a']),
            "Body",
            "UNDECODABLE",
            "string length 1 GiB with 1 byte present",
        ),
        (
            "trailing-bytes.bin",
            {
                let mut v = valid.clone();
                v.extend_from_slice(b"extra");
                v
            },
            "TrailingBytes",
            "UNDECODABLE",
            "a valid request followed by 5 extra bytes",
        ),
    ];

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/bad-bytes");
    std::fs::create_dir_all(&dir)?;
    let mut manifest = Vec::new();
    for (file, bytes, error, reason, what) in entries {
        std::fs::write(dir.join(file), &bytes)?;
        manifest.push(serde_json::json!({"file": file, "error": error, "reason": reason, "what": what}));
    }
    std::fs::write(dir.join("manifest.json"), serde_json::to_string_pretty(&manifest)? + "\n")?;
    std::fs::write(dir.join("not-a-request.avsc"), format!("{NOT_A_REQUEST}\n"))?;
    println!("wrote {} entries to {}", manifest.len(), dir.display());
    Ok(())
}
