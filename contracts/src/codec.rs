//! Encode and decode events on the Confluent wire format.
//!
//! A [`Codec`] is bound to one event type and one topic (subject `<topic>-value`). Encoding
//! writes the id under which [`Codec::register`] registered the contract's schema. Decoding
//! reads the writer's schema id from the header, fetches that schema from the registry once
//! (cached), and resolves it against the contract's schema, so producers on an older or newer
//! compatible schema keep working. When the writer's schema is the reader's, the body is
//! deserialized straight from the bytes, without an intermediate `Value`.

mod error;
pub mod outcome;
pub mod request;
mod wire;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use schema_registry_converter::async_impl::schema_registry::{get_schema_by_id, post_schema, SrSettings};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

pub use error::{redact_credentials, DecodeError, EncodeError, RegistryError};
pub use wire::{WireHeader, HEADER_LEN, MAGIC_BYTE, SCHEMA_ID_LEN};

use crate::events::Event;
use crate::topics::value_subject;

/// Largest allocation a decoded body may ask for. Protects against garbage lengths.
pub const MAX_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;
/// How long one call to the schema registry may take.
pub const REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an id the registry does not know is remembered as unknown.
const UNKNOWN_ID_TTL: Duration = Duration::from_secs(30);

/// How many schema lookups [`Codec::prefetch`] runs at once.
const MAX_CONCURRENT_FETCHES: usize = 16;

/// How many unknown ids are remembered at once: random ids on the wire cannot grow the
/// memory without bound (each still costs one registry lookup per [`UNKNOWN_ID_TTL`]).
const MAX_UNKNOWN_IDS: usize = 10_000;

/// Ids the registry said it does not know, each remembered for [`UNKNOWN_ID_TTL`], at most
/// [`MAX_UNKNOWN_IDS`] of them (expired ones go first, then the oldest).
#[derive(Debug, Default)]
struct UnknownIds {
    seen: HashMap<u32, Instant>,
}

impl UnknownIds {
    /// Whether `id` is known to be unknown at `now` (forgetting it once its time is up).
    fn remembers(&mut self, id: u32, now: Instant) -> bool {
        match self.seen.get(&id) {
            Some(&at) if now.duration_since(at) < UNKNOWN_ID_TTL => true,
            Some(_) => {
                self.seen.remove(&id);
                false
            }
            None => false,
        }
    }

    fn insert(&mut self, id: u32, now: Instant) {
        if self.seen.len() >= MAX_UNKNOWN_IDS && !self.seen.contains_key(&id) {
            self.seen.retain(|_, &mut at| now.duration_since(at) < UNKNOWN_ID_TTL);
            if self.seen.len() >= MAX_UNKNOWN_IDS {
                if let Some(oldest) = self.seen.iter().min_by_key(|(_, &at)| at).map(|(&id, _)| id) {
                    self.seen.remove(&oldest);
                }
            }
        }
        self.seen.insert(id, now);
    }
}

/// A decoded value and the schema id it was written with.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<T> {
    pub value: T,
    pub schema_id: u32,
}

/// Parsed schemas live for the whole process: the contract's few schemas and the writer schemas
/// seen on the wire. Leaking them lets readers hold `'static` resolved schemas instead of
/// re-resolving names on every record.
fn leak(schema: Schema) -> &'static Schema {
    Box::leak(Box::new(schema))
}

/// How many distinct writer schemas (by canonical form) the process keeps for ever. A real
/// topic sees a handful (one per compatible version); ids registered only to be sent on the
/// wire cannot grow the memory past this: later schemas are decoded without being kept.
const MAX_KEPT_WRITER_SCHEMAS: usize = 1024;

/// How many schema ids one codec caches. Past this, records with an id not cached fetch their
/// schema from the registry each time (slow, bounded, never wrong).
const MAX_CACHED_WRITER_IDS: usize = 4096;

/// Writer schemas kept for the life of the process, one per canonical form, at most `capacity`.
#[derive(Debug)]
struct KeptSchemas {
    by_form: std::collections::BTreeMap<String, &'static Schema>,
    capacity: usize,
}

impl KeptSchemas {
    const fn new(capacity: usize) -> Self {
        Self { by_form: std::collections::BTreeMap::new(), capacity }
    }

    /// The kept schema with `schema`'s canonical form, keeping `schema` when there is room;
    /// `Err(schema)` once full.
    fn keep(&mut self, schema: Schema) -> Result<&'static Schema, Box<Schema>> {
        let form = schema.canonical_form();
        if let Some(kept) = self.by_form.get(&form) {
            return Ok(kept);
        }
        if self.by_form.len() >= self.capacity {
            return Err(Box::new(schema));
        }
        let kept = leak(schema);
        self.by_form.insert(form, kept);
        Ok(kept)
    }
}

fn keep_writer_schema(schema: Schema) -> Result<&'static Schema, Box<Schema>> {
    static KEPT: Mutex<KeptSchemas> = Mutex::new(KeptSchemas::new(MAX_KEPT_WRITER_SCHEMAS));
    KEPT.lock().unwrap_or_else(PoisonError::into_inner).keep(schema)
}

fn reader_schema_of<T: Event>() -> &'static Schema {
    static READERS: OnceLock<Mutex<HashMap<&'static str, &'static Schema>>> = OnceLock::new();
    let mut map = READERS.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    map.entry(T::SCHEMA.file).or_insert_with(|| leak(T::SCHEMA.parse()))
}

enum Writer {
    /// Written with the reader's schema: deserialize directly.
    Same(GenericDatumReader<'static>),
    /// Written with another compatible schema: decode, then resolve to the reader's.
    Resolving(GenericDatumReader<'static>),
    /// A compatible schema past the bound on kept schemas: the reader is built per record.
    Unkept(Box<Schema>),
    /// Cannot be read as the contract type.
    Incompatible(String),
}

/// Encoder and decoder of one event type on one topic.
pub struct Codec<T: Event> {
    subject: String,
    registry: SrSettings,
    /// Where the registry is, for errors and logs (credentials left out).
    registry_address: String,
    reader: &'static Schema,
    writer: GenericDatumWriter<'static>,
    schema_id: OnceLock<u32>,
    writers: RwLock<HashMap<u32, Arc<Writer>>>,
    unknown: Mutex<UnknownIds>,
    _event: PhantomData<fn() -> T>,
}

impl<T: Event> std::fmt::Debug for Codec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("subject", &self.subject)
            .field("schema", &T::SCHEMA.full_name)
            .field("schema_id", &self.schema_id.get())
            .finish_non_exhaustive()
    }
}

impl<T: Event> Codec<T> {
    /// A codec for `T` on `topic`, resolving schemas through `registry`.
    ///
    /// # Panics
    /// Never: the embedded schemas are valid (tested).
    #[allow(clippy::expect_used)]
    pub fn new(registry: SrSettings, topic: &str) -> Self {
        apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
        let reader = reader_schema_of::<T>();
        let writer = GenericDatumWriter::builder(reader).build().expect("the contract schema resolves (tested)");
        Self {
            subject: value_subject(topic),
            registry,
            registry_address: "(its SrSettings)".to_owned(),
            reader,
            writer,
            schema_id: OnceLock::new(),
            writers: RwLock::default(),
            unknown: Mutex::default(),
            _event: PhantomData,
        }
    }

    /// A codec whose registry is at `url` (e.g. `http://127.0.0.1:8081`). Every call to the
    /// registry gives up after [`REGISTRY_TIMEOUT`] (a retryable failure), so a registry that
    /// accepts connections and never answers cannot hold a record for ever.
    pub fn with_url(url: &str, topic: &str) -> Self {
        // HTTPS trusts the system's roots and STREAMSCORE_REGISTRY_CA (crate::http).
        let settings = SrSettings::new_builder(url.to_owned())
            .set_timeout(REGISTRY_TIMEOUT)
            .build_with(crate::http::builder())
            .unwrap_or_else(|_| {
                crate::http::install_provider();
                SrSettings::new(url.to_owned())
            });
        Self { registry_address: redact_credentials(url), ..Self::new(settings, topic) }
    }

    /// Uses `id` for the contract's schema without asking the registry, and caches it for
    /// decoding: for offline use (benchmarks, fixtures) where the id is known.
    #[must_use]
    pub fn with_known_id(self, id: u32) -> Self {
        let _ = self.schema_id.set(id);
        let writer = Arc::new(self.writer_for(T::SCHEMA.text));
        self.writers.write().unwrap_or_else(PoisonError::into_inner).insert(id, writer);
        self
    }

    /// The registry's URL without credentials, for messages.
    pub fn registry(&self) -> &str {
        &self.registry_address
    }

    /// The registry subject (`<topic>-value`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The contract's schema.
    pub fn schema(&self) -> &'static Schema {
        self.reader
    }

    /// The id encoding uses, once registered.
    pub fn schema_id(&self) -> Option<u32> {
        self.schema_id.get().copied()
    }

    /// Registers the contract's schema under the subject (idempotent: the registry returns the
    /// existing id) and uses that id from now on. Returns the id.
    pub async fn register(&self) -> Result<u32, RegistryError> {
        let supplied =
            SuppliedSchema::new(Some(T::SCHEMA.full_name.to_owned()), SchemaType::Avro, T::SCHEMA.text.to_owned());
        let registered = post_schema(&self.registry, self.subject.clone(), supplied)
            .await
            .map_err(|e| RegistryError::from_src(&e, &self.registry_address))?;
        let id = *self.schema_id.get_or_init(|| registered.id);
        Ok(id)
    }

    /// Encodes `value` as a Confluent-framed record.
    pub fn encode(&self, value: &T) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(value, &mut out)?;
        Ok(out)
    }

    /// Appends the Confluent-framed encoding of `value` to `out`.
    pub fn encode_into(&self, value: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let schema_id = self.schema_id().ok_or_else(|| EncodeError::NotRegistered { subject: self.subject.clone() })?;
        let start = out.len();
        WireHeader { schema_id }.write(out);
        self.writer.write_ser(out, value).map_err(|e| {
            out.truncate(start);
            EncodeError::Invalid { schema: T::SCHEMA.full_name, reason: e.to_string() }
        })?;
        Ok(())
    }

    /// Decodes a Confluent-framed record, fetching the writer's schema on first sight.
    pub async fn decode(&self, bytes: &[u8]) -> Result<Decoded<T>, DecodeError> {
        let (header, body) = WireHeader::parse(bytes)?;
        let writer = match self.cached_writer(header.schema_id) {
            Some(writer) => writer,
            None => self.fetch_writer(header.schema_id).await?,
        };
        self.decode_body(header.schema_id, &writer, body)
    }

    /// Decodes with the writer schemas already cached; an id never seen gives
    /// [`DecodeError::Registry`] (retryable) rather than a network call.
    pub fn decode_cached(&self, bytes: &[u8]) -> Result<Decoded<T>, DecodeError> {
        let (header, body) = WireHeader::parse(bytes)?;
        let id = header.schema_id;
        let writer = self.cached_writer(id).ok_or_else(|| DecodeError::Registry {
            id,
            source: RegistryError { error_code: None, message: "schema not fetched yet".to_owned(), retryable: true },
        })?;
        self.decode_body(id, &writer, body)
    }

    /// Whether decoding a record written with schema `id` would ask the registry now (the id
    /// is neither cached nor remembered as unknown).
    pub fn would_fetch(&self, id: u32) -> bool {
        self.cached_writer(id).is_none()
            && !self.unknown.lock().unwrap_or_else(PoisonError::into_inner).remembers(id, Instant::now())
    }

    /// Looks up the writer schemas of `ids` that [`Codec::would_fetch`], concurrently (at
    /// most 16 at a time), caching what the registry answers, known or unknown. Failures
    /// (the registry unreachable) are left for [`Codec::decode`] to meet and retry.
    pub async fn prefetch(&self, ids: impl IntoIterator<Item = u32>) {
        use futures::StreamExt;
        let ids: std::collections::BTreeSet<u32> = ids.into_iter().filter(|&id| self.would_fetch(id)).collect();
        futures::stream::iter(ids)
            .for_each_concurrent(MAX_CONCURRENT_FETCHES, |id| async move {
                let _ = self.fetch_writer(id).await;
            })
            .await;
    }

    fn cached_writer(&self, id: u32) -> Option<Arc<Writer>> {
        self.writers.read().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }

    async fn fetch_writer(&self, id: u32) -> Result<Arc<Writer>, DecodeError> {
        {
            let mut unknown = self.unknown.lock().unwrap_or_else(PoisonError::into_inner);
            if unknown.remembers(id, Instant::now()) {
                return Err(DecodeError::UnknownSchema { id });
            }
        }
        let registered = match get_schema_by_id(id, &self.registry).await {
            Ok(registered) => registered,
            Err(e) => {
                let err = RegistryError::from_src(&e, &self.registry_address);
                if matches!(err.error_code, Some(40403 | 40401)) {
                    self.unknown.lock().unwrap_or_else(PoisonError::into_inner).insert(id, Instant::now());
                    return Err(DecodeError::UnknownSchema { id });
                }
                return Err(DecodeError::Registry { id, source: err });
            }
        };
        let writer = Arc::new(self.writer_for(&registered.schema));
        let mut writers = self.writers.write().unwrap_or_else(PoisonError::into_inner);
        if writers.len() < MAX_CACHED_WRITER_IDS {
            writers.insert(id, Arc::clone(&writer));
        }
        Ok(writer)
    }

    fn writer_for(&self, text: &str) -> Writer {
        self.writer_kept_in(text, keep_writer_schema)
    }

    fn writer_kept_in(&self, text: &str, keep: impl FnOnce(Schema) -> Result<&'static Schema, Box<Schema>>) -> Writer {
        let schema = match crate::schemas::parse_text(text) {
            Ok(schema) => schema,
            Err(e) => return Writer::Incompatible(format!("registry schema does not parse: {e}")),
        };
        if schema.canonical_form() == self.reader.canonical_form() {
            return match GenericDatumReader::builder(self.reader).build() {
                Ok(reader) => Writer::Same(reader),
                Err(e) => Writer::Incompatible(e.to_string()),
            };
        }
        if let Err(e) = SchemaCompatibility::can_read(&schema, self.reader) {
            return Writer::Incompatible(e.to_string());
        }
        let schema = match keep(schema) {
            Ok(kept) => kept,
            Err(unkept) => {
                return match GenericDatumReader::builder(&unkept).reader_schema(self.reader).build() {
                    Ok(_) => Writer::Unkept(unkept),
                    Err(e) => Writer::Incompatible(e.to_string()),
                }
            }
        };
        match GenericDatumReader::builder(schema).reader_schema(self.reader).build() {
            Ok(reader) => Writer::Resolving(reader),
            Err(e) => Writer::Incompatible(e.to_string()),
        }
    }

    fn decode_body(&self, id: u32, writer: &Writer, body: &[u8]) -> Result<Decoded<T>, DecodeError> {
        let mut rest = body;
        let body_error = |e: apache_avro::Error| DecodeError::Body { id, reason: e.to_string() };
        let value = match writer {
            Writer::Same(reader) => match T::read_direct(body) {
                Some(value) => {
                    rest = &[];
                    value
                }
                None => reader.read_deser::<T>(&mut rest).map_err(body_error)?,
            },
            Writer::Resolving(reader) => {
                let value = reader.read_value(&mut rest).map_err(body_error)?;
                apache_avro::from_value::<T>(&value).map_err(body_error)?
            }
            Writer::Unkept(schema) => {
                let reader =
                    GenericDatumReader::builder(schema).reader_schema(self.reader).build().map_err(body_error)?;
                let value = reader.read_value(&mut rest).map_err(body_error)?;
                apache_avro::from_value::<T>(&value).map_err(body_error)?
            }
            Writer::Incompatible(reason) => {
                return Err(DecodeError::Incompatible { id, reader: T::SCHEMA.full_name, reason: reason.clone() })
            }
        };
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { id, extra: rest.len() });
        }
        Ok(Decoded { value, schema_id: id })
    }
}

impl Codec<crate::events::PredictionOutcome> {
    /// [`Codec::encode`] through the direct encoder of [`outcome`], with the `features` field
    /// written from `features` instead of the outcome's map: infer passes the model's input
    /// row and the version's feature names, and builds no map.
    pub fn encode_outcome<'a>(
        &self,
        value: &crate::events::PredictionOutcome,
        features: impl ExactSizeIterator<Item = (&'a str, f64)>,
    ) -> Result<Vec<u8>, EncodeError> {
        let schema_id = self.schema_id().ok_or_else(|| EncodeError::NotRegistered { subject: self.subject.clone() })?;
        let mut out = Vec::with_capacity(384);
        WireHeader { schema_id }.write(&mut out);
        outcome::write_outcome(&mut out, value, features);
        Ok(out)
    }
}

#[cfg(test)]
mod unknown_ids_tests {
    use super::*;

    #[test]
    fn unknown_ids_are_remembered_for_their_time_and_bounded() {
        let start = Instant::now();
        let mut ids = UnknownIds::default();
        ids.insert(7, start);
        assert!(ids.remembers(7, start + Duration::from_secs(1)));
        assert!(!ids.remembers(8, start));
        assert!(!ids.remembers(7, start + UNKNOWN_ID_TTL), "forgotten once its time is up");
        assert!(ids.seen.is_empty());
        // Random ids cannot grow it past the bound: expired ones go first, then the oldest.
        for id in 0..u32::try_from(MAX_UNKNOWN_IDS).unwrap_or(u32::MAX) {
            ids.insert(id, start + Duration::from_millis(u64::from(id)));
        }
        assert_eq!(ids.seen.len(), MAX_UNKNOWN_IDS);
        ids.insert(1_000_000, start + Duration::from_secs(20));
        assert_eq!(ids.seen.len(), MAX_UNKNOWN_IDS);
        assert!(!ids.seen.contains_key(&0), "the oldest made room");
        let later = start + UNKNOWN_ID_TTL + Duration::from_secs(15);
        ids.insert(2_000_000, later);
        assert!(ids.seen.len() < MAX_UNKNOWN_IDS, "the expired ones were dropped first");
    }
}

#[cfg(test)]
mod kept_schemas_tests {
    use super::*;
    use crate::events::InferenceRequest;

    /// The request's schema with one extra int field `name` (default 0) at the end: another
    /// compatible writer schema.
    fn padded_writer(name: &str) -> String {
        let mut schema: serde_json::Value = serde_json::from_str(InferenceRequest::SCHEMA.text).unwrap_or_default();
        if let Some(fields) = schema.get_mut("fields").and_then(serde_json::Value::as_array_mut) {
            fields.push(serde_json::json!({"name": name, "type": "int", "default": 0}));
        }
        schema.to_string()
    }

    #[test]
    fn writer_schemas_past_the_bound_still_decode_without_being_kept() {
        let codec = {
            crate::http::install_provider();
            Codec::<InferenceRequest>::new(SrSettings::new("http://127.0.0.1:9".to_owned()), "t")
        }
        .with_known_id(1);
        let request = InferenceRequest {
            request_id: "r-1".into(),
            tenant: "acme".into(),
            model: "fraud".into(),
            model_version: None,
            features: crate::Features::from_iter([("amount".to_owned(), 12.5)]),
            created_at: 1_700_000_000_000_000,
            reply_to: None,
            attributes: HashMap::new(),
        };
        let mut body = codec.encode(&request).unwrap_or_default()[HEADER_LEN..].to_vec();
        body.push(0); // the pad field: zig-zag 0

        let mut kept = KeptSchemas::new(2);
        let first = codec.writer_kept_in(&padded_writer("pad_a"), |s| kept.keep(s));
        let again = codec.writer_kept_in(&padded_writer("pad_a"), |s| kept.keep(s));
        let second = codec.writer_kept_in(&padded_writer("pad_b"), |s| kept.keep(s));
        let third = codec.writer_kept_in(&padded_writer("pad_c"), |s| kept.keep(s));
        assert!(matches!(first, Writer::Resolving(_)));
        assert!(matches!(again, Writer::Resolving(_)));
        assert!(matches!(second, Writer::Resolving(_)));
        assert!(matches!(third, Writer::Unkept(_)), "the bound of 2 distinct schemas is reached");
        assert_eq!(kept.by_form.len(), 2, "the same schema twice is kept once");
        for writer in [&first, &second, &third] {
            let decoded = codec.decode_body(9, writer, &body).map(|d| d.value);
            assert_eq!(decoded, Ok(request.clone()));
        }
        // The reader's own schema is never copied into the kept set.
        assert!(matches!(codec.writer_kept_in(InferenceRequest::SCHEMA.text, |s| kept.keep(s)), Writer::Same(_)));
        assert_eq!(kept.by_form.len(), 2);
    }
}
