//! The Avro schemas of `schemas/*.avsc`, embedded at build time.

use apache_avro::Schema;

/// One schema file of `schemas/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaFile {
    /// File name under `schemas/`.
    pub file: &'static str,
    /// Full name of the top-level record.
    pub full_name: &'static str,
    /// The file's text.
    pub text: &'static str,
}

impl SchemaFile {
    /// Parses the file's text.
    ///
    /// # Panics
    /// Never for the embedded files: a test parses every one of them.
    #[allow(clippy::expect_used)]
    pub fn parse(&self) -> Schema {
        Schema::parse_str(self.text).expect("embedded schemas are valid Avro (checked by tests)")
    }
}

macro_rules! schema_file {
    ($ident:ident, $file:literal, $name:literal) => {
        #[doc = concat!("`schemas/", $file, "`: `", $name, "`.")]
        pub const $ident: SchemaFile =
            SchemaFile { file: $file, full_name: $name, text: include_str!(concat!("../../schemas/", $file)) };
    };
}

schema_file!(INFERENCE_REQUEST, "inference_request.avsc", "io.streamscore.v1.InferenceRequest");
schema_file!(VALIDATED_REQUEST, "validated_request.avsc", "io.streamscore.v1.ValidatedRequest");
schema_file!(PREDICTION_OUTCOME, "prediction_outcome.avsc", "io.streamscore.v1.PredictionOutcome");
schema_file!(DEAD_LETTER, "dead_letter.avsc", "io.streamscore.v1.DeadLetter");
schema_file!(AUDIT_RECORD, "audit_record.avsc", "io.streamscore.v1.AuditRecord");
schema_file!(DRIFT_ALERT, "drift_alert.avsc", "io.streamscore.v1.DriftAlert");
schema_file!(ROLLOUT, "rollout.avsc", "io.streamscore.v1.Rollout");
schema_file!(FEEDBACK, "feedback.avsc", "io.streamscore.v1.Feedback");
schema_file!(IDEMPOTENT_ANSWER, "idempotency.avsc", "io.streamscore.v1.IdempotentAnswer");

/// Every schema file, in data-flow order.
pub const ALL: [SchemaFile; 9] = [
    INFERENCE_REQUEST,
    VALIDATED_REQUEST,
    PREDICTION_OUTCOME,
    DEAD_LETTER,
    AUDIT_RECORD,
    DRIFT_ALERT,
    ROLLOUT,
    FEEDBACK,
    IDEMPOTENT_ANSWER,
];

/// Parses Avro schema JSON, refusing what apache-avro parses but cannot put in Parsing
/// Canonical Form: in apache-avro 0.22, `Schema::canonical_form` panics on some schemas
/// `Schema::parse` accepts (a field object that also holds `"fields": null`, found by the
/// `registry_state` fuzz target). The registry and the codec both compare schemas by canonical
/// form, so they parse through here, and `canonical_form` of a schema that passed is safe.
///
/// The panic is caught; the process's panic hook still reports it once on standard error.
pub fn parse_json(json: &serde_json::Value) -> Result<Schema, String> {
    let schema = Schema::parse(json).map_err(|e| e.to_string())?;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| schema.canonical_form()))
        .map_err(|_| "apache-avro cannot put it in Parsing Canonical Form".to_owned())?;
    Ok(schema)
}

/// [`parse_json`] of schema text.
pub fn parse_text(text: &str) -> Result<Schema, String> {
    parse_json(&serde_json::from_str(text).map_err(|e| e.to_string())?)
}

#[cfg(test)]
mod parse_tests {
    /// The `registry_state` fuzz find: parsed by apache-avro, no canonical form.
    const NO_CANONICAL_FORM: &str =
        r#"{"type":"record","name":"R","fields":[{"name":"b","type":["null","long"],"defaultme":"R","fields":null}]}"#;

    #[test]
    fn a_schema_without_a_canonical_form_is_refused_not_a_panic() {
        assert!(apache_avro::Schema::parse_str(NO_CANONICAL_FORM).is_ok(), "apache-avro parses it");
        let refused = super::parse_text(NO_CANONICAL_FORM).expect_err("refused");
        assert!(refused.contains("Canonical Form"), "{refused}");
        for file in super::ALL {
            assert!(super::parse_text(file.text).is_ok(), "{}", file.file);
        }
    }
}
