//! The Rust event types match `schemas/*.avsc`, and encode/decode losslessly against them.

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use streamscore_contracts::{schemas, topics, Event};

#[path = "support/samples.rs"]
mod samples;

fn file_schema<T: Event>() -> Schema {
    Schema::parse_str(T::SCHEMA.text).unwrap_or_else(|e| panic!("{} does not parse: {e}", T::SCHEMA.file))
}

fn assert_matches_file<T: Event + std::fmt::Debug + PartialEq>(sample: &T) {
    let file = file_schema::<T>();
    let derived = T::get_schema();
    assert_eq!(
        derived.canonical_form(),
        file.canonical_form(),
        "Rust type for {} does not match the file (Parsing Canonical Form differs)",
        T::SCHEMA.file
    );
    assert_eq!(file.name().map(|n| n.fullname(None)), Some(T::SCHEMA.full_name.to_owned()));
    // Written with the file's schema and read back with it, the value is unchanged.
    let writer = GenericDatumWriter::builder(&file).build().expect("writer");
    let bytes = writer.write_ser_to_vec(sample).expect("sample encodes");
    let reader = GenericDatumReader::builder(&file).build().expect("reader");
    let back: T = reader.read_deser(&mut bytes.as_slice()).expect("sample decodes");
    assert_eq!(&back, sample);
}

#[test]
fn every_schema_file_is_embedded_and_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("schemas/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".avsc"))
        .collect();
    on_disk.sort();
    let mut embedded: Vec<String> = schemas::ALL.iter().map(|s| s.file.to_owned()).collect();
    embedded.sort();
    assert_eq!(on_disk, embedded, "every file of schemas/ is a contract, and only those");
    for file in schemas::ALL {
        let text = std::fs::read_to_string(dir.join(file.file)).expect("read");
        assert_eq!(text, file.text);
        Schema::parse_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.file));
    }
    assert_eq!(topics::EVENT_TOPICS.len(), schemas::ALL.len());
}

#[test]
fn rust_types_match_the_schema_files() {
    assert_matches_file(&samples::request());
    assert_matches_file(&samples::validated());
    assert_matches_file(&samples::prediction());
    assert_matches_file(&samples::dead_letter());
    assert_matches_file(&samples::audit());
    assert_matches_file(&samples::alert());
    assert_matches_file(&samples::rollout());
    assert_matches_file(&samples::feedback());
    assert_matches_file(&samples::idempotent_answer());
}

#[test]
fn every_derived_event_carries_lineage() {
    // Lineage is a named record shared by every derived event's schema.
    for file in [schemas::VALIDATED_REQUEST, schemas::PREDICTION_OUTCOME, schemas::DEAD_LETTER, schemas::AUDIT_RECORD] {
        let canonical = file.parse().canonical_form();
        assert!(canonical.contains("\"name\":\"io.streamscore.v1.Lineage\""), "{} lacks Lineage", file.file);
        for field in ["event_id", "request_id", "tenant", "source", "stage", "instance", "written_at"] {
            assert!(canonical.contains(&format!("\"name\":\"{field}\"")), "{} lacks lineage.{field}", file.file);
        }
    }
    let prediction = schemas::PREDICTION_OUTCOME.parse().canonical_form();
    for field in ["model", "model_version", "model_sha256", "backend", "features"] {
        assert!(prediction.contains(&format!("\"name\":\"{field}\"")), "prediction lacks {field}");
    }
}
