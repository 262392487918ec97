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

/// Every schema file, in data-flow order.
pub const ALL: [SchemaFile; 6] =
    [INFERENCE_REQUEST, VALIDATED_REQUEST, PREDICTION_OUTCOME, DEAD_LETTER, AUDIT_RECORD, DRIFT_ALERT];
