//! The `streamscore` command-line program's library side: the local stack (tansu broker and
//! the built-in registry as background processes) and the commands' building blocks, so that
//! tests drive the same code the CLI runs.

pub mod acls;
pub mod demo;
pub mod loadgen;
pub mod pipeline;
pub mod run;
pub mod stack;

// The analysts' commands live in `streamscore-history` (history/); re-exported under their
// old paths.
pub use streamscore_history::{audit, lineage, quality, replay, replay_parquet};

/// Writes `rows` synthetic transactions from `seed` as CSV: the features in model input
/// order, then `is_fraud` and the rule's `fraud_probability`. Event times are one second apart
/// from the Unix epoch (only drift looks at them).
pub fn synth_csv(seed: u64, rows: u64, mut out: impl std::io::Write) -> std::io::Result<()> {
    use streamscore_synth::{Generator, FEATURES};
    let header: Vec<&str> = FEATURES.iter().map(|f| f.name).collect();
    writeln!(out, "{},is_fraud,fraud_probability", header.join(","))?;
    let mut generator = Generator::new(seed);
    for i in 0..rows {
        let t = generator.next(i64::try_from(i).unwrap_or(i64::MAX) * 1_000_000);
        for value in t.features {
            write!(out, "{value},")?;
        }
        writeln!(out, "{},{}", u8::from(t.is_fraud), t.fraud_probability)?;
    }
    out.flush()
}
