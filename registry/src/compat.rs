//! Compatibility levels and checks, as Confluent defines them for Avro.
//!
//! - BACKWARD: the new schema can read data written with the latest one.
//! - FORWARD: the latest schema can read data written with the new one.
//! - FULL: both. `_TRANSITIVE`: against every earlier version, not just the latest.

use std::fmt;
use std::str::FromStr;

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

/// A Confluent compatibility level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    None,
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Level {
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn transitive(self) -> bool {
        matches!(self, Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive)
    }

    fn backward(self) -> bool {
        matches!(self, Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive)
    }

    fn forward(self) -> bool {
        matches!(self, Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive)
    }

    /// Checks `new` against the existing versions (oldest first). Returns what is incompatible,
    /// empty when compatible.
    pub fn check(self, new: &Schema, existing: &[(u32, &Schema)]) -> Vec<String> {
        let against: &[(u32, &Schema)] =
            if self.transitive() { existing } else { existing.last().map_or(&[], std::slice::from_ref) };
        let mut problems = Vec::new();
        for (version, old) in against {
            if self.backward() {
                if let Err(e) = SchemaCompatibility::can_read(old, new) {
                    problems.push(format!(
                        "{{backward: the new schema cannot read data written with version {version}: {e}}}"
                    ));
                }
            }
            if self.forward() {
                if let Err(e) = SchemaCompatibility::can_read(new, old) {
                    problems.push(format!(
                        "{{forward: version {version} cannot read data written with the new schema: {e}}}"
                    ));
                }
            }
        }
        problems
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "NONE" => Level::None,
            "BACKWARD" => Level::Backward,
            "BACKWARD_TRANSITIVE" => Level::BackwardTransitive,
            "FORWARD" => Level::Forward,
            "FORWARD_TRANSITIVE" => Level::ForwardTransitive,
            "FULL" => Level::Full,
            "FULL_TRANSITIVE" => Level::FullTransitive,
            _ => return Err(()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(r#"{{"type":"record","name":"R","fields":[{fields}]}}"#)).expect("valid")
    }

    #[test]
    fn levels_follow_confluent_semantics() {
        let v1 = schema(r#"{"name":"a","type":"string"}"#);
        let optional = schema(r#"{"name":"a","type":"string"},{"name":"b","type":["null","long"],"default":null}"#);
        let required = schema(r#"{"name":"a","type":"string"},{"name":"b","type":"long"}"#);
        let dropped = schema(r#"{"name":"b","type":["null","long"],"default":null}"#);

        // Adding a field with a default is fully compatible.
        assert!(Level::Full.check(&optional, &[(1, &v1)]).is_empty());
        // Adding a required field: new readers cannot read old data (not backward)...
        assert!(!Level::Backward.check(&required, &[(1, &v1)]).is_empty());
        // ...but old readers ignore it (forward).
        assert!(Level::Forward.check(&required, &[(1, &v1)]).is_empty());
        assert!(Level::None.check(&required, &[(1, &v1)]).is_empty());
        // Non-transitive checks only the latest; transitive checks all.
        assert!(Level::Backward.check(&dropped, &[(1, &v1), (2, &optional)]).is_empty());
        assert!(Level::BackwardTransitive.check(&dropped, &[(1, &v1), (2, &optional)]).is_empty());
        assert!(!Level::ForwardTransitive.check(&dropped, &[(1, &v1), (2, &optional)]).is_empty());
    }

    #[test]
    fn levels_parse_case_insensitively() {
        assert_eq!("full_transitive".parse::<Level>(), Ok(Level::FullTransitive));
        assert!("SIDEWAYS".parse::<Level>().is_err());
        assert_eq!(Level::default(), Level::Backward);
    }
}
