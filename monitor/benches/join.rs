//! The quality join's cost per million predictions: `cargo bench -p streamscore-monitor
//! --bench join -- --bench [PREDICTIONS] [LABELED_SHARE]` (default 1,000,000 and 0.5).
//!
//! Writes PREDICTIONS outcomes (each with a shadow, as the main job scores them: two rows per
//! request) and labels for LABELED_SHARE of the requests into a fresh store on local disk, in
//! the monitor's batches (2,000 records a commit), half the labels before their outcome
//! (pending, then joined) and half after; then computes the figures once, as a refresh does.
//! Prints records/s of the join, the process's peak resident memory, the store's size on disk
//! per million predictions, and the refresh's time. Without `--bench` (as `cargo test` runs
//! benches) it does a quick pass of 20,000.

use std::time::Instant;

use streamscore_monitor::quality::store::{Label, Prediction, QualityStore, Record};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let numbers: Vec<f64> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let requests = if bench { numbers.first().copied().unwrap_or(1e6) as u64 } else { 20_000 };
    let share = numbers.get(1).copied().unwrap_or(0.5);
    let dir = tempfile::tempdir_in(std::env::var_os("STREAMSCORE_BENCH_DIR").unwrap_or_else(|| ".".into()))
        .expect("a temporary directory");
    let mut store = QualityStore::open(dir.path(), 30 * 86_400_000_000).expect("store");
    let now = streamscore_contracts::now_micros();
    let record = |offset: i64| Record {
        topic: "inference.feedback".to_owned(),
        partition: 0,
        offset,
        key: Some(b"tenant-01".to_vec()),
        value: vec![0; 80],
        timestamp_ms: Some(0),
    };
    let rss_before = peak_rss_mib();
    let started = Instant::now();
    let mut records = 0_u64;
    for i in 0..requests {
        let id = format!("{:08x}-0000-4000-8000-{:012x}", i >> 16, i);
        let tenant = format!("tenant-0{}", i % 4 + 1);
        let created_at = now - 3_600_000_000 + i64::try_from(i).unwrap_or(0);
        let score = (i % 1000) as f64 / 1000.0;
        let labeled = (i as f64 * share).fract() + share >= 1.0 || share >= 1.0;
        let label = Label {
            request_id: id.clone(),
            tenant: tenant.clone(),
            actual: f64::from(u8::from(i % 37 == 0)),
            observed_at: created_at + 86_400_000_000,
            record: record(i64::try_from(i).unwrap_or(0)),
        };
        let early = labeled && (i / 2) % 2 == 0;
        if early {
            store.add_label(&label, now).expect("label");
            records += 1;
        }
        for (version, shadow) in [("1", false), ("2", true)] {
            let p = Prediction {
                request_id: id.clone(),
                model: "fraud".to_owned(),
                version: version.to_owned(),
                tenant: tenant.clone(),
                shadow,
                created_at,
                score,
                predicted: Some(score >= 0.5),
            };
            store.add_prediction(&p).expect("prediction");
            records += 1;
        }
        if labeled && !early {
            store.add_label(&label, now).expect("label");
            records += 1;
        }
        if records % 2_000 < 3 {
            store.commit().expect("commit");
        }
    }
    store.commit().expect("commit");
    let seconds = started.elapsed().as_secs_f64();
    let stats = store.stats().expect("stats");
    let join_rss = peak_rss_mib();
    let refresh = Instant::now();
    let report = streamscore_monitor::quality::report::read(dir.path(), now, &|_, _| None).expect("report");
    let refresh_seconds = refresh.elapsed().as_secs_f64();
    let per_million = 1e6 / requests as f64;
    println!(
        "join: {requests} requests ({} outcome rows with shadows, {} labels): {records} records in {seconds:.2} s = {:.0} records/s",
        2 * requests,
        stats.labels,
        records as f64 / seconds
    );
    println!(
        "store: {:.1} MB on disk ({:.1} MB per million predictions), {} predictions, {} labeled pairs, {} pending",
        stats.bytes as f64 / 1e6,
        stats.bytes as f64 / 1e6 * per_million,
        stats.predictions,
        stats.labeled,
        stats.pending
    );
    println!(
        "memory: peak resident {join_rss:.1} MiB through the join (at start {rss_before:.1} MiB; SQLite's page cache is bounded at 32 MiB)"
    );
    println!(
        "refresh: {} rows of figures from {} labeled pairs in {refresh_seconds:.2} s, peak resident {:.1} MiB after it",
        report.rows.len(),
        stats.labeled,
        peak_rss_mib()
    );
}
