//! Replay rows, and `quality`'s labeled predictions, as Parquet files (arrow + parquet
//! crates): one row per request (per labeled prediction), flat columns, times as UTC
//! microsecond timestamps, the features as one nullable `feature_<name>` column each (the
//! model's input order), written in row groups of 8,192.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;

use std::collections::BTreeMap;

use crate::quality::LabeledRow;
use crate::replay::Row;

const ROW_GROUP: usize = 8192;

/// The replay file's schema, without its feature columns.
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

/// The feature columns' fields.
fn feature_fields(order: &[String]) -> Vec<Field> {
    order.iter().map(|name| Field::new(format!("feature_{name}"), DataType::Float64, true)).collect()
}

/// The feature columns of `rows`.
fn feature_columns(order: &[String], rows: &[&BTreeMap<String, f64>]) -> Vec<ArrayRef> {
    order
        .iter()
        .map(|name| {
            let mut builder = Float64Builder::with_capacity(rows.len());
            for features in rows {
                builder.append_option(features.get(name).copied());
            }
            Arc::new(builder.finish()) as ArrayRef
        })
        .collect()
}

/// Every feature name of the rows, sorted.
pub fn feature_names<'a>(rows: impl Iterator<Item = &'a BTreeMap<String, f64>>) -> Vec<String> {
    let mut names: Vec<String> = rows.flat_map(BTreeMap::keys).cloned().collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn batch(schema: &Arc<Schema>, rows: &[Row], order: &[String]) -> Result<RecordBatch> {
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
    let mut columns: Vec<ArrayRef> = vec![
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
    let features: Vec<&BTreeMap<String, f64>> = rows.iter().map(|r| &r.features).collect();
    columns.extend(feature_columns(order, &features));
    RecordBatch::try_new(Arc::clone(schema), columns).context("building a record batch")
}

/// Writes `rows` to `path`, with a column per feature name (sorted).
pub fn write(path: &Path, rows: &[Row]) -> Result<()> {
    let order = feature_names(rows.iter().map(|r| &r.features));
    let mut fields: Vec<Field> = schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(feature_fields(&order));
    let schema = Arc::new(Schema::new(fields));
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), None).context("starting the Parquet file")?;
    for chunk in rows.chunks(ROW_GROUP) {
        writer.write(&batch(&schema, chunk, &order)?).context("writing Parquet rows")?;
    }
    writer.close().context("finishing the Parquet file")?;
    Ok(())
}

/// The schema of `quality --out`, without its feature columns.
pub fn labeled_schema() -> Schema {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let time = |name: &str| Field::new(name, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false);
    Schema::new(vec![
        text("request_id", false),
        text("tenant", false),
        text("model", false),
        text("version", false),
        Field::new("shadow", DataType::Boolean, false),
        time("created_at"),
        Field::new("score", DataType::Float64, false),
        text("label", true),
        Field::new("actual", DataType::Float64, false),
        time("observed_at"),
        Field::new("delay_seconds", DataType::Float64, false),
    ])
}

/// Writes `quality`'s labeled predictions to `path`, features in `order`.
pub fn write_labeled(path: &Path, rows: &[LabeledRow], order: &[String]) -> Result<()> {
    let mut fields: Vec<Field> = labeled_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(feature_fields(order));
    let schema = Arc::new(Schema::new(fields));
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), None).context("starting the Parquet file")?;
    for chunk in rows.chunks(ROW_GROUP) {
        let strings = |get: &dyn Fn(&LabeledRow) -> Option<&str>| -> ArrayRef {
            let mut builder = StringBuilder::new();
            for row in chunk {
                builder.append_option(get(row));
            }
            Arc::new(builder.finish())
        };
        let floats = |get: &dyn Fn(&LabeledRow) -> f64| -> ArrayRef {
            let mut builder = Float64Builder::new();
            for row in chunk {
                builder.append_value(get(row));
            }
            Arc::new(builder.finish())
        };
        let times = |get: &dyn Fn(&LabeledRow) -> i64| -> ArrayRef {
            let mut builder = TimestampMicrosecondBuilder::new().with_timezone("UTC");
            for row in chunk {
                builder.append_value(get(row));
            }
            Arc::new(builder.finish())
        };
        let mut shadow = BooleanBuilder::new();
        for row in chunk {
            shadow.append_value(row.shadow);
        }
        #[allow(clippy::cast_precision_loss)]
        let mut columns: Vec<ArrayRef> = vec![
            strings(&|r| Some(r.request_id.as_str())),
            strings(&|r| Some(r.tenant.as_str())),
            strings(&|r| Some(r.model.as_str())),
            strings(&|r| Some(r.version.as_str())),
            Arc::new(shadow.finish()),
            times(&|r| r.created_at),
            floats(&|r| r.score),
            strings(&|r| r.label.as_deref()),
            floats(&|r| r.actual),
            times(&|r| r.observed_at),
            floats(&|r| (r.observed_at - r.created_at) as f64 / 1e6),
        ];
        let features: Vec<&BTreeMap<String, f64>> = chunk.iter().map(|r| &r.features).collect();
        columns.extend(feature_columns(order, &features));
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns).context("building a record batch")?;
        writer.write(&batch).context("writing Parquet rows")?;
    }
    writer.close().context("finishing the Parquet file")?;
    Ok(())
}
