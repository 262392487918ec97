//! Lineage: where an event came from and who wrote it.
//!
//! Event ids are deterministic: a UUIDv5 of the source coordinates, the stage and the kind
//! of output. A redelivered input therefore yields byte-for-byte the same ids, and readers
//! de-duplicate on `event_id`. Ids hang on the source offset rather than the request id so
//! that two distinct records that reuse a request id never collapse into one.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace of every streamscore event id (UUIDv5).
pub const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5f0c_6a2e_7d1b_4c8e_9a3f_1e2d_3c4b_5a69);

/// Kafka coordinates of the record an event derives from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
pub struct SourceOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl SourceOffset {
    pub fn new(topic: impl Into<String>, partition: i32, offset: i64) -> Self {
        Self { topic: topic.into(), partition, offset }
    }
}

impl fmt::Display for SourceOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// The stage that wrote an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Ingest,
    Infer,
    Monitor,
    Bridge,
    Replay,
    Registry,
}

impl Stage {
    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Infer => "infer",
            Stage::Monitor => "monitor",
            Stage::Bridge => "bridge",
            Stage::Replay => "replay",
            Stage::Registry => "registry",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lineage carried by every derived event (`io.streamscore.v1.Lineage`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
pub struct Lineage {
    /// Deterministic id of this event, see [`Lineage::event_id_for`].
    pub event_id: String,
    /// The request this event derives from; `None` only when it could not be decoded.
    pub request_id: Option<String>,
    /// The request's tenant; `None` only when it could not be decoded.
    pub tenant: Option<String>,
    /// The record this event was derived from.
    pub source: SourceOffset,
    /// See [`Stage::as_str`].
    pub stage: String,
    /// Instance of the stage that wrote it.
    pub instance: String,
    /// When the event was written, microseconds since the Unix epoch.
    #[avro(with = timestamp_micros)]
    pub written_at: i64,
}

impl Lineage {
    /// The deterministic event id of output `kind` written by `stage` for the record at `source`.
    ///
    /// The UUIDv5 of `<topic>/<partition>/<offset>/<stage>/<kind>` in [`EVENT_ID_NAMESPACE`]
    /// (the name is hashed piece by piece, never formatted into a string).
    pub fn event_id_for(source: &SourceOffset, stage: Stage, kind: &str) -> Uuid {
        let mut partition = itoa::Buffer::new();
        let mut offset = itoa::Buffer::new();
        uuid_v5(
            &EVENT_ID_NAMESPACE,
            &[
                source.topic.as_bytes(),
                b"/",
                partition.format(source.partition).as_bytes(),
                b"/",
                offset.format(source.offset).as_bytes(),
                b"/",
                stage.as_str().as_bytes(),
                b"/",
                kind.as_bytes(),
            ],
        )
    }

    /// Lineage of output `kind` derived from the record at `source`, written now.
    pub fn derive(
        source: SourceOffset,
        stage: Stage,
        kind: &str,
        instance: &str,
        request_id: Option<String>,
        tenant: Option<String>,
    ) -> Self {
        Self {
            event_id: hyphenated(Self::event_id_for(&source, stage, kind)),
            request_id,
            tenant,
            source,
            stage: stage.as_str().to_owned(),
            instance: instance.to_owned(),
            written_at: now_micros(),
        }
    }
}

/// `uuid`'s text form (lower-case, hyphenated), without going through `fmt`.
pub fn hyphenated(uuid: Uuid) -> String {
    let mut text = [0_u8; uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated().encode_lower(&mut text).to_owned()
}

/// The UUIDv5 (RFC 9562, section 5.5) of the name made of `parts`, in `namespace`: equal to
/// `Uuid::new_v5(namespace, parts.concat())`. The SHA-1 is the `sha1` crate's, which uses the
/// CPU's SHA extensions where it has them; uuid's own is a portable one, and two of these per
/// event were 8% of the pipeline's CPU.
pub fn uuid_v5(namespace: &Uuid, parts: &[&[u8]]) -> Uuid {
    use sha1::Digest;
    let mut sha1 = sha1::Sha1::new();
    sha1.update(namespace.as_bytes());
    for part in parts {
        sha1.update(part);
    }
    let digest = sha1.finalize();
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// The Avro schema of every timestamp field (`long` with logical type `timestamp-micros`),
/// for `#[avro(with = ...)]` on `i64` fields.
pub fn timestamp_micros(
    _: &mut std::collections::HashSet<apache_avro::schema::Name>,
    _: apache_avro::schema::NamespaceRef<'_>,
) -> apache_avro::Schema {
    apache_avro::Schema::TimestampMicros
}

/// The Avro schema of an optional timestamp (`["null", timestamp-micros]`), for
/// `#[avro(with = ...)]` on `Option<i64>` fields.
pub fn optional_timestamp_micros(
    _: &mut std::collections::HashSet<apache_avro::schema::Name>,
    _: apache_avro::schema::NamespaceRef<'_>,
) -> apache_avro::Schema {
    match apache_avro::schema::UnionSchema::new(vec![apache_avro::Schema::Null, apache_avro::Schema::TimestampMicros]) {
        Ok(union) => apache_avro::Schema::Union(union),
        Err(_) => unreachable!("null and a timestamp are a valid union"),
    }
}

/// Microseconds since the Unix epoch, the unit of every timestamp in the contracts.
pub fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// A name for this process in lineage: `host:pid`.
pub fn default_instance() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_v5_equals_uuids_own() {
        let names: [&[u8]; 5] = [b"", b"a", &[0xff; 55], &[7; 56], &[b'x'; 200]];
        for name in names {
            for split in [0, name.len() / 3, name.len()] {
                let (head, tail) = name.split_at(split);
                assert_eq!(uuid_v5(&EVENT_ID_NAMESPACE, &[head, tail]), Uuid::new_v5(&EVENT_ID_NAMESPACE, name));
                assert_eq!(uuid_v5(&Uuid::NAMESPACE_DNS, &[head, tail]), Uuid::new_v5(&Uuid::NAMESPACE_DNS, name));
            }
        }
        // RFC 9562's example: "www.example.com" in the DNS namespace.
        assert_eq!(
            uuid_v5(&Uuid::NAMESPACE_DNS, &[b"www.example.com"]).to_string(),
            "2ed6657d-e927-568b-95e1-2665a8aea6a2"
        );
    }

    #[test]
    fn event_ids_are_the_uuid_v5_of_the_formatted_name() {
        for (topic, partition, offset) in [("inference.requests", 0, 0), ("t", -1, i64::MAX), ("ä/b", i32::MAX, -5)] {
            let source = SourceOffset::new(topic, partition, offset);
            for stage in [Stage::Ingest, Stage::Infer, Stage::Bridge] {
                let name = format!("{topic}/{partition}/{offset}/{stage}/prediction");
                let id = Lineage::event_id_for(&source, stage, "prediction");
                assert_eq!(id, Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes()));
                assert_eq!(hyphenated(id), id.to_string());
            }
        }
    }

    #[test]
    fn event_ids_are_deterministic_and_distinct() {
        let a = SourceOffset::new("inference.requests", 2, 41);
        let b = SourceOffset::new("inference.requests", 2, 42);
        assert_eq!(
            Lineage::event_id_for(&a, Stage::Ingest, "validated"),
            Lineage::event_id_for(&a, Stage::Ingest, "validated")
        );
        assert_ne!(
            Lineage::event_id_for(&a, Stage::Ingest, "validated"),
            Lineage::event_id_for(&b, Stage::Ingest, "validated")
        );
        assert_ne!(
            Lineage::event_id_for(&a, Stage::Ingest, "validated"),
            Lineage::event_id_for(&a, Stage::Infer, "validated")
        );
    }
}
