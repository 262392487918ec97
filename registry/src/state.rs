//! The registry's in-memory state, rebuilt by applying the records of its Kafka topic in order.
//!
//! Writes are planned against the current state ([`State::plan_register`] and friends return
//! the log records to append), appended to the topic, and take effect when the topic's reader
//! applies them ([`State::apply`]): one code path for live writes and for rebuilding after a
//! restart. The record format follows Confluent's `_schemas` topic: a JSON key with a
//! `keytype`, a JSON value, and a null value as a tombstone.

use std::collections::{BTreeMap, HashMap};

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::compat::Level;
use crate::error::ApiError;

/// Key of a record in the registry topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keytype", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LogKey {
    Schema { subject: String, version: u32, magic: u8 },
    Config { subject: Option<String>, magic: u8 },
    Noop { magic: u8 },
}

/// Value of a `SCHEMA` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaValue {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_type: Option<String>,
}

/// Value of a `CONFIG` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigValue {
    pub compatibility_level: Level,
}

/// One record to append to the registry topic: key and value as JSON, `None` = tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub key: LogKey,
    pub value: Option<String>,
}

impl LogRecord {
    fn schema(value: SchemaValue) -> Self {
        Self {
            key: LogKey::Schema { subject: value.subject.clone(), version: value.version, magic: 1 },
            value: serde_json::to_string(&value).ok(),
        }
    }

    fn config(subject: Option<&str>, level: Option<Level>) -> Self {
        Self {
            key: LogKey::Config { subject: subject.map(str::to_owned), magic: 0 },
            value: level.and_then(|l| serde_json::to_string(&ConfigValue { compatibility_level: l }).ok()),
        }
    }
}

/// A parsed schema, known by its id.
#[derive(Debug)]
pub struct SchemaEntry {
    pub id: u32,
    /// Normalized JSON text (parsed and re-serialized), returned by the API.
    pub text: String,
    pub schema: Schema,
}

/// One version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionEntry {
    pub id: u32,
    pub deleted: bool,
}

#[derive(Debug, Default)]
struct SubjectEntry {
    versions: BTreeMap<u32, VersionEntry>,
    level: Option<Level>,
}

impl SubjectEntry {
    fn live(&self) -> impl Iterator<Item = (u32, VersionEntry)> + '_ {
        self.versions.iter().filter(|(_, v)| !v.deleted).map(|(n, v)| (*n, *v))
    }
}

/// What a registration will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterPlan {
    /// The subject already has this schema: its id.
    Existing { id: u32 },
    /// Append `record` to register it under `id`.
    New { id: u32, record: LogRecord },
}

/// A version selector: a number or `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSel {
    Number(u32),
    Latest,
}

impl VersionSel {
    /// Parses `latest`, `-1` or a version in `[1, 2^31-1]`.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        if text == "latest" || text == "-1" {
            return Ok(Self::Latest);
        }
        match text.parse::<u32>() {
            Ok(n) if (1..=i32::MAX as u32).contains(&n) => Ok(Self::Number(n)),
            _ => Err(ApiError::invalid_version(text)),
        }
    }
}

/// A subject version as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
}

/// Normalizes schema text: parses it as Avro (so invalid schemas are refused) and returns the
/// schema with its text as compact JSON.
pub fn parse_schema(text: &str) -> Result<(Schema, String), ApiError> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(ApiError::invalid_schema)?;
    let schema = streamscore_contracts::schemas::parse_json(&json).map_err(ApiError::invalid_schema)?;
    Ok((schema, json.to_string()))
}

/// The whole registry state.
#[derive(Debug, Default)]
pub struct State {
    schemas: BTreeMap<u32, SchemaEntry>,
    by_text: HashMap<String, u32>,
    subjects: BTreeMap<String, SubjectEntry>,
    global: Level,
}

impl State {
    /// Applies one record of the registry topic. Records that do not parse are skipped with a
    /// warning: the topic is shared with nobody, but a foreign record must not stop the registry.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        let key: LogKey = match serde_json::from_slice(key) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(error = %e, "skipping registry record with an unreadable key");
                return;
            }
        };
        match (key, value) {
            (LogKey::Schema { subject, version, .. }, None) => {
                if let Some(entry) = self.subjects.get_mut(&subject) {
                    entry.versions.remove(&version);
                    if entry.versions.is_empty() && entry.level.is_none() {
                        self.subjects.remove(&subject);
                    }
                }
            }
            (LogKey::Schema { .. }, Some(value)) => match serde_json::from_slice::<SchemaValue>(value) {
                Ok(value) => self.apply_schema(value),
                Err(e) => tracing::warn!(error = %e, "skipping unreadable SCHEMA record"),
            },
            (LogKey::Config { subject, .. }, value) => {
                let level = match value.map(serde_json::from_slice::<ConfigValue>) {
                    None => None,
                    Some(Ok(config)) => Some(config.compatibility_level),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "skipping unreadable CONFIG record");
                        return;
                    }
                };
                match subject {
                    None => self.global = level.unwrap_or_default(),
                    Some(subject) => {
                        let entry = self.subjects.entry(subject.clone()).or_default();
                        entry.level = level;
                        if entry.versions.is_empty() && entry.level.is_none() {
                            self.subjects.remove(&subject);
                        }
                    }
                }
            }
            (LogKey::Noop { .. }, _) => {}
        }
    }

    fn apply_schema(&mut self, value: SchemaValue) {
        if !self.schemas.contains_key(&value.id) {
            match parse_schema(&value.schema) {
                Ok((schema, text)) => {
                    self.by_text.insert(text.clone(), value.id);
                    self.schemas.insert(value.id, SchemaEntry { id: value.id, text, schema });
                }
                Err(e) => {
                    tracing::warn!(id = value.id, error = %e, "skipping SCHEMA record with an invalid schema");
                    return;
                }
            }
        }
        self.subjects
            .entry(value.subject)
            .or_default()
            .versions
            .insert(value.version, VersionEntry { id: value.id, deleted: value.deleted });
    }

    // ---- reads ----

    pub fn global_level(&self) -> Level {
        self.global
    }

    /// The subject's own level, if one is set.
    pub fn subject_level(&self, subject: &str) -> Option<Level> {
        self.subjects.get(subject).and_then(|s| s.level)
    }

    /// The level that applies to `subject`.
    pub fn effective_level(&self, subject: &str) -> Level {
        self.subject_level(subject).unwrap_or(self.global)
    }

    /// Subjects with at least one version (live, or also soft-deleted with `deleted`).
    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, s)| if deleted { !s.versions.is_empty() } else { s.live().next().is_some() })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// A subject's versions; 40401 if it has none.
    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<u32>, ApiError> {
        let versions: Vec<u32> = self
            .subjects
            .get(subject)
            .map(|s| s.versions.iter().filter(|(_, v)| deleted || !v.deleted).map(|(n, _)| *n).collect())
            .unwrap_or_default();
        if versions.is_empty() {
            return Err(ApiError::subject_not_found(subject));
        }
        Ok(versions)
    }

    /// A schema by id, if any subject version refers to it (soft-deleted ones included, so old
    /// data stays readable).
    pub fn schema_by_id(&self, id: u32) -> Result<&SchemaEntry, ApiError> {
        let referenced = self.subjects.values().any(|s| s.versions.values().any(|v| v.id == id));
        self.schemas.get(&id).filter(|_| referenced).ok_or_else(ApiError::schema_not_found)
    }

    /// The subject/version pairs that use schema `id`.
    pub fn usages(&self, id: u32, deleted: bool) -> Vec<(String, u32)> {
        self.subjects
            .iter()
            .flat_map(|(name, s)| {
                s.versions
                    .iter()
                    .filter(move |(_, v)| v.id == id && (deleted || !v.deleted))
                    .map(move |(n, _)| (name.clone(), *n))
            })
            .collect()
    }

    /// One version of a subject.
    pub fn version(&self, subject: &str, sel: VersionSel, deleted: bool) -> Result<SubjectVersion, ApiError> {
        let entry =
            self.subjects.get(subject).filter(
                |s| {
                    if deleted {
                        !s.versions.is_empty()
                    } else {
                        s.live().next().is_some()
                    }
                },
            );
        let entry = entry.ok_or_else(|| ApiError::subject_not_found(subject))?;
        let (version, v) = match sel {
            VersionSel::Latest => {
                entry.versions.iter().rev().find(|(_, v)| deleted || !v.deleted).map(|(n, v)| (*n, *v))
            }
            VersionSel::Number(n) => entry.versions.get(&n).filter(|v| deleted || !v.deleted).map(|v| (n, *v)),
        }
        .ok_or_else(|| match sel {
            VersionSel::Number(n) => ApiError::version_not_found(subject, n),
            VersionSel::Latest => ApiError::subject_not_found(subject),
        })?;
        let schema = self.schemas.get(&v.id).ok_or_else(ApiError::schema_not_found)?;
        Ok(SubjectVersion { subject: subject.to_owned(), version, id: v.id, schema: schema.text.clone() })
    }

    /// The version of `subject` whose schema is `text` (POST /subjects/{subject}).
    pub fn lookup(&self, subject: &str, text: &str, deleted: bool) -> Result<SubjectVersion, ApiError> {
        let entry = self
            .subjects
            .get(subject)
            .filter(|s| if deleted { !s.versions.is_empty() } else { s.live().next().is_some() })
            .ok_or_else(|| ApiError::subject_not_found(subject))?;
        let (schema, normalized) = parse_schema(text)?;
        let canonical = schema.canonical_form();
        let candidates = || entry.versions.iter().rev().filter(|(_, v)| deleted || !v.deleted);
        // The very schema first (what registering it again answers), then one that differs
        // only in what the canonical form drops (defaults, docs, aliases), newest first.
        let found =
            candidates().find(|(_, v)| self.schemas.get(&v.id).is_some_and(|s| s.text == normalized)).or_else(|| {
                candidates()
                    .find(|(_, v)| self.schemas.get(&v.id).is_some_and(|s| s.schema.canonical_form() == canonical))
            });
        let (version, v) = found.ok_or_else(ApiError::schema_not_found)?;
        let schema = self.schemas.get(&v.id).ok_or_else(ApiError::schema_not_found)?;
        Ok(SubjectVersion { subject: subject.to_owned(), version: *version, id: v.id, schema: schema.text.clone() })
    }

    /// Whether `text` is compatible with `subject`'s versions under the subject's level.
    /// `sel = None` checks against every version the level asks for; `Some` against that one.
    pub fn check_compatibility(
        &self,
        subject: &str,
        sel: Option<VersionSel>,
        text: &str,
    ) -> Result<Vec<String>, ApiError> {
        let (schema, _) = parse_schema(text)?;
        let level = self.effective_level(subject);
        let existing = match sel {
            None => self.live_schemas(subject),
            Some(VersionSel::Latest) if self.subjects.get(subject).is_some_and(|s| s.live().next().is_some()) => {
                self.live_schemas(subject)
            }
            Some(sel) => {
                let v = self.version(subject, sel, false)?;
                let entry = self.schemas.get(&v.id).ok_or_else(ApiError::schema_not_found)?;
                vec![(v.version, &entry.schema)]
            }
        };
        if sel.is_some() && existing.is_empty() {
            return Err(ApiError::subject_not_found(subject));
        }
        Ok(level.check(&schema, &existing))
    }

    fn live_schemas(&self, subject: &str) -> Vec<(u32, &Schema)> {
        self.subjects
            .get(subject)
            .map(|s| s.live().filter_map(|(n, v)| self.schemas.get(&v.id).map(|e| (n, &e.schema))).collect())
            .unwrap_or_default()
    }

    fn next_id(&self) -> u32 {
        self.schemas.keys().next_back().map_or(1, |id| id + 1)
    }

    // ---- write plans ----

    /// Plans registering `text` under `subject`.
    pub fn plan_register(&self, subject: &str, text: &str) -> Result<RegisterPlan, ApiError> {
        let (schema, normalized) = parse_schema(text)?;
        if let Some(entry) = self.subjects.get(subject) {
            let same = entry.live().find(|(_, v)| self.schemas.get(&v.id).is_some_and(|e| e.text == normalized));
            if let Some((_, v)) = same {
                return Ok(RegisterPlan::Existing { id: v.id });
            }
        }
        let problems = self.effective_level(subject).check(&schema, &self.live_schemas(subject));
        if !problems.is_empty() {
            return Err(ApiError::incompatible(subject, &problems));
        }
        let id = self.by_text.get(&normalized).copied().unwrap_or_else(|| self.next_id());
        let version = self.subjects.get(subject).and_then(|s| s.versions.keys().next_back().copied()).unwrap_or(0) + 1;
        let record = LogRecord::schema(SchemaValue {
            subject: subject.to_owned(),
            version,
            id,
            schema: normalized,
            deleted: false,
            schema_type: None,
        });
        Ok(RegisterPlan::New { id, record })
    }

    /// Plans deleting a subject: soft (marks every version deleted) or permanent (tombstones,
    /// only after a soft delete). Returns the versions deleted and the records to append.
    pub fn plan_delete_subject(&self, subject: &str, permanent: bool) -> Result<(Vec<u32>, Vec<LogRecord>), ApiError> {
        let entry = self
            .subjects
            .get(subject)
            .filter(|s| !s.versions.is_empty())
            .ok_or_else(|| ApiError::subject_not_found(subject))?;
        let any_live = entry.live().next().is_some();
        if permanent {
            if any_live {
                return Err(ApiError::subject_not_soft_deleted(subject));
            }
            let versions: Vec<u32> = entry.versions.keys().copied().collect();
            let records = versions
                .iter()
                .map(|&version| LogRecord {
                    key: LogKey::Schema { subject: subject.to_owned(), version, magic: 1 },
                    value: None,
                })
                .chain(entry.level.map(|_| LogRecord::config(Some(subject), None)))
                .collect();
            return Ok((versions, records));
        }
        if !any_live {
            return Err(ApiError::subject_soft_deleted(subject));
        }
        let mut versions = Vec::new();
        let mut records = Vec::new();
        for (version, v) in entry.live() {
            versions.push(version);
            records.push(self.deleted_record(subject, version, v.id)?);
        }
        Ok((versions, records))
    }

    /// Plans deleting one version, soft or permanent (after a soft delete).
    pub fn plan_delete_version(
        &self,
        subject: &str,
        sel: VersionSel,
        permanent: bool,
    ) -> Result<(u32, LogRecord), ApiError> {
        let entry = self
            .subjects
            .get(subject)
            .filter(|s| !s.versions.is_empty())
            .ok_or_else(|| ApiError::subject_not_found(subject))?;
        let (version, v) = match sel {
            VersionSel::Number(n) => entry.versions.get(&n).map(|v| (n, *v)),
            VersionSel::Latest => entry.live().last(),
        }
        .ok_or_else(|| match sel {
            VersionSel::Number(n) => ApiError::version_not_found(subject, n),
            VersionSel::Latest => ApiError::subject_not_found(subject),
        })?;
        if permanent {
            if !v.deleted {
                return Err(ApiError::version_not_soft_deleted(subject, version));
            }
            let key = LogKey::Schema { subject: subject.to_owned(), version, magic: 1 };
            return Ok((version, LogRecord { key, value: None }));
        }
        if v.deleted {
            return Err(ApiError::version_soft_deleted(subject, version));
        }
        Ok((version, self.deleted_record(subject, version, v.id)?))
    }

    fn deleted_record(&self, subject: &str, version: u32, id: u32) -> Result<LogRecord, ApiError> {
        let schema = self.schemas.get(&id).ok_or_else(ApiError::schema_not_found)?;
        Ok(LogRecord::schema(SchemaValue {
            subject: subject.to_owned(),
            version,
            id,
            schema: schema.text.clone(),
            deleted: true,
            schema_type: None,
        }))
    }

    /// Plans setting (or with `None`, removing) a level, globally or for one subject.
    pub fn plan_config(subject: Option<&str>, level: Option<Level>) -> LogRecord {
        LogRecord::config(subject, level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#;
    const V2: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":["null","long"],"default":null}]}"#;
    const BAD: &str =
        r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"c","type":"long"}]}"#;

    fn write(state: &mut State, record: &LogRecord) {
        let key = serde_json::to_vec(&record.key).expect("key serializes");
        state.apply(&key, record.value.as_deref().map(str::as_bytes));
    }

    fn register(state: &mut State, subject: &str, text: &str) -> Result<u32, ApiError> {
        match state.plan_register(subject, text)? {
            RegisterPlan::Existing { id } => Ok(id),
            RegisterPlan::New { id, record } => {
                write(state, &record);
                Ok(id)
            }
        }
    }

    #[test]
    fn ids_are_global_and_stable_versions_per_subject() {
        let mut state = State::default();
        assert_eq!(register(&mut state, "a-value", V1), Ok(1));
        assert_eq!(register(&mut state, "a-value", V1), Ok(1), "same schema twice, same id");
        assert_eq!(register(&mut state, "b-value", V1), Ok(1), "same schema, other subject, same id");
        assert_eq!(register(&mut state, "a-value", V2), Ok(2));
        assert_eq!(state.versions("a-value", false), Ok(vec![1, 2]));
        assert_eq!(state.versions("b-value", false), Ok(vec![1]));
        let latest = state.version("a-value", VersionSel::Latest, false).expect("latest");
        assert_eq!((latest.version, latest.id), (2, 2));
        assert_eq!(register(&mut state, "a-value", BAD).map_err(|e| e.error_code), Err(409));
    }

    #[test]
    fn soft_then_hard_delete() {
        let mut state = State::default();
        register(&mut state, "s", V1).expect("v1");
        assert_eq!(state.plan_delete_subject("s", true).map_err(|e| e.error_code), Err(40405));
        let (versions, records) = state.plan_delete_subject("s", false).expect("soft");
        assert_eq!(versions, vec![1]);
        records.iter().for_each(|r| write(&mut state, r));
        assert_eq!(state.versions("s", false).map_err(|e| e.error_code), Err(40401));
        assert_eq!(state.versions("s", true), Ok(vec![1]));
        assert!(state.schema_by_id(1).is_ok(), "soft-deleted schemas stay readable by id");
        assert_eq!(state.plan_delete_subject("s", false).map_err(|e| e.error_code), Err(40404));
        let (_, records) = state.plan_delete_subject("s", true).expect("hard");
        records.iter().for_each(|r| write(&mut state, r));
        assert_eq!(state.schema_by_id(1).map(|e| e.id).map_err(|e| e.error_code), Err(40403));
        assert!(state.subjects(true).is_empty());
        // Re-registering the same schema reuses its id.
        assert_eq!(register(&mut state, "s", V1), Ok(1));
    }

    #[test]
    fn invalid_schema_and_version_are_refused() {
        let state = State::default();
        assert_eq!(state.plan_register("s", "{not json").map_err(|e| e.error_code), Err(42201));
        assert_eq!(state.plan_register("s", r#"{"type":"record","name":"R"}"#).map_err(|e| e.error_code), Err(42201));
        assert_eq!(VersionSel::parse("0").map_err(|e| e.error_code), Err(42202));
        assert_eq!(VersionSel::parse("latest"), Ok(VersionSel::Latest));
    }
}
