//! Replay rows as a Parquet file: one row per event, flat columns.

use std::path::Path;

use anyhow::Result;

use crate::replay::Row;

/// Writes `rows` to `path`.
pub fn write(path: &Path, rows: &[Row]) -> Result<()> {
    let _ = rows;
    anyhow::bail!("{}: Parquet output is not built yet; use a .jsonl file", path.display())
}
