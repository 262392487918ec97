//! Replay rows as a Parquet file (arrow + parquet crates): one row per request, flat columns,
//! `created_at` as a UTC microsecond timestamp, written in row groups of 8,192.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;

use crate::replay::Row;

const ROW_GROUP: usize = 8192;

/// The file's schema.
pub fn schema() -> Schema {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Schema::new(vec![
        text("request_id", false),
        text("tenant", false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("created_at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        text("decision", false),
        text("reason", true),
        text("model", false),
        text("version", true),
        Field::new("score", DataType::Float64, true),
        text("label", true),
        text("original_decision", true),
        text("original_reason", true),
        text("original_version", true),
        Field::new("original_score", DataType::Float64, true),
        text("original_label", true),
        Field::new("score_diff", DataType::Float64, true),
        Field::new("label_changed", DataType::Boolean, false),
        Field::new("decision_changed", DataType::Boolean, false),
    ])
}

fn batch(schema: &Arc<Schema>, rows: &[Row]) -> Result<RecordBatch> {
    let strings = |get: &dyn Fn(&Row) -> Option<&str>| -> ArrayRef {
        let mut builder = StringBuilder::new();
        for row in rows {
            builder.append_option(get(row));
        }
        Arc::new(builder.finish())
    };
    let floats = |get: &dyn Fn(&Row) -> Option<f64>| -> ArrayRef {
        let mut builder = Float64Builder::new();
        for row in rows {
            builder.append_option(get(row));
        }
        Arc::new(builder.finish())
    };
    let flags = |get: &dyn Fn(&Row) -> bool| -> ArrayRef {
        let mut builder = BooleanBuilder::new();
        for row in rows {
            builder.append_value(get(row));
        }
        Arc::new(builder.finish())
    };
    let mut partitions = Int32Builder::new();
    let mut offsets = Int64Builder::new();
    let mut created = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    for row in rows {
        partitions.append_value(row.partition);
        offsets.append_value(row.offset);
        created.append_value(row.created_at);
    }
    let columns: Vec<ArrayRef> = vec![
        strings(&|r| Some(r.request_id.as_str())),
        strings(&|r| Some(r.tenant.as_str())),
        Arc::new(partitions.finish()),
        Arc::new(offsets.finish()),
        Arc::new(created.finish()),
        strings(&|r| Some(r.decision.as_str())),
        strings(&|r| r.reason.as_deref()),
        strings(&|r| Some(r.model.as_str())),
        strings(&|r| r.version.as_deref()),
        floats(&|r| r.score),
        strings(&|r| r.label.as_deref()),
        strings(&|r| r.original_decision.as_deref()),
        strings(&|r| r.original_reason.as_deref()),
        strings(&|r| r.original_version.as_deref()),
        floats(&|r| r.original_score),
        strings(&|r| r.original_label.as_deref()),
        floats(&|r| r.score_diff),
        flags(&|r| r.label_changed),
        flags(&|r| r.decision_changed),
    ];
    RecordBatch::try_new(Arc::clone(schema), columns).context("building a record batch")
}

/// Writes `rows` to `path`.
pub fn write(path: &Path, rows: &[Row]) -> Result<()> {
    let schema = Arc::new(schema());
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), None).context("starting the Parquet file")?;
    for chunk in rows.chunks(ROW_GROUP) {
        writer.write(&batch(&schema, chunk)?).context("writing Parquet rows")?;
    }
    writer.close().context("finishing the Parquet file")?;
    Ok(())
}
