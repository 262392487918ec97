//! The metric catalog (`streamscore_telemetry::catalog`) against everything that names a
//! metric: the sources' `metrics::` calls, the README's table, the Grafana dashboard's queries,
//! and the deployment files that wire them up (Prometheus' scrape config through `promtool`,
//! the compose file through `docker compose config` or, without compose, a YAML check).
//! `tests/prometheus.rs` checks what the running stages serve.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use streamscore_telemetry::catalog::{self, Kind, METRICS};

mod support;
use support::deploy;

/// Every `metrics::counter!/gauge!/histogram!` call in the crates' sources: (name, kind, where).
fn recorded_in_sources() -> Vec<(String, Kind, String)> {
    let consts: BTreeMap<String, String> = std::fs::read_to_string(deploy::root().join("telemetry/src/catalog.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("pub const ")?;
            let (name, value) = rest.split_once(": &str = \"")?;
            Some((name.to_owned(), value.strip_suffix("\";")?.to_owned()))
        })
        .collect();
    let mut found = Vec::new();
    let crates = [
        "src",
        "contracts",
        "kafka",
        "registry",
        "ingest",
        "infer",
        "monitor",
        "bridge",
        "telemetry",
        "modelstore",
        "control",
    ];
    for dir in
        crates.iter().map(|c| if *c == "src" { deploy::root().join("src") } else { deploy::root().join(c).join("src") })
    {
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for (macro_, kind) in [
                        ("metrics::counter!(", Kind::Counter),
                        ("metrics::gauge!(", Kind::Gauge),
                        ("metrics::histogram!(", Kind::Histogram),
                    ] {
                        for (at, _) in text.match_indices(macro_) {
                            let arg = text[at + macro_.len()..].trim_start();
                            let name = if let Some(literal) = arg.strip_prefix('"') {
                                literal[..literal.find('"').unwrap()].to_owned()
                            } else {
                                let path_expr: String = arg
                                    .chars()
                                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                                    .collect();
                                let last = path_expr.rsplit("::").next().unwrap();
                                consts.get(last).cloned().unwrap_or_else(|| {
                                    panic!(
                                        "{}: {macro_}{path_expr}: not a literal or a catalog constant",
                                        path.display()
                                    )
                                })
                            };
                            let line = text[..at].lines().count();
                            found.push((
                                name,
                                kind,
                                format!("{}:{line}", path.strip_prefix(deploy::root()).unwrap().display()),
                            ));
                        }
                    }
                }
            }
        }
    }
    found
}

#[test]
fn the_catalog_lists_exactly_what_the_sources_record() {
    let recorded = recorded_in_sources();
    assert!(recorded.len() > 30, "the scan finds the metrics calls ({})", recorded.len());
    let mut problems = Vec::new();
    for (name, kind, place) in &recorded {
        match catalog::find(name) {
            None => problems.push(format!("{place}: {name} is not in the catalog (telemetry/src/catalog.rs)")),
            Some(m) if m.kind != *kind => problems.push(format!(
                "{place}: {name} is recorded as a {} but listed as a {}",
                kind.name(),
                m.kind.name()
            )),
            Some(_) => {}
        }
    }
    let used: BTreeSet<&str> = recorded.iter().map(|(n, _, _)| n.as_str()).collect();
    for m in METRICS.iter().filter(|m| !used.contains(m.name)) {
        problems.push(format!("{}: listed in the catalog but recorded nowhere", m.name));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_readme_table_is_the_catalog() {
    let readme = std::fs::read_to_string(deploy::root().join("README.md")).unwrap();
    let rows: BTreeMap<String, String> = readme
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("| `streamscore_")?;
            let (name, rest) = rest.split_once("` | ")?;
            let kind = rest.split(" |").next()?.trim().to_owned();
            Some((format!("streamscore_{name}"), kind))
        })
        .collect();
    let mut problems = Vec::new();
    for m in METRICS {
        match rows.get(m.name) {
            None => problems.push(format!("{}: not in the README's metrics table", m.name)),
            Some(kind) if kind != m.kind.name() => {
                problems.push(format!("{}: the README says {kind}, the catalog {}", m.name, m.kind.name()))
            }
            Some(_) => {}
        }
    }
    for name in rows.keys().filter(|n| catalog::find(n).is_none()) {
        problems.push(format!("{name}: in the README's table but not exported"));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn every_dashboard_query_names_exported_metrics_and_their_labels() {
    let queries = deploy::dashboard_queries();
    assert!(queries.len() >= 12, "the dashboard has its panels ({})", queries.len());
    let mut problems = Vec::new();
    for q in &queries {
        let names = deploy::metric_names(&q.expr);
        if names.is_empty() {
            problems.push(format!("{}: names no streamscore metric: {}", q.place, q.expr));
        }
        let mut labels: BTreeSet<&str> = ["job", "instance"].into();
        for name in &names {
            let metric = catalog::find(name).or_else(|| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .and_then(catalog::find)
                    .filter(|m| m.kind == Kind::Histogram)
            });
            match metric {
                None => problems.push(format!("{}: {name} is not a metric streamscore exports", q.place)),
                Some(m) => {
                    labels.extend(m.labels.iter().copied());
                    if m.kind == Kind::Histogram {
                        labels.insert("le");
                    }
                }
            }
        }
        for label in deploy::label_names(&q.expr) {
            if !labels.contains(label.as_str()) {
                problems.push(format!("{}: label {label} is not one of {labels:?}", q.place));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");

    // The panels use the provisioned data source, and the checks above can fail.
    let provisioning =
        std::fs::read_to_string(deploy::root().join("deploy/grafana/provisioning/datasources/prometheus.yml")).unwrap();
    let dashboard = std::fs::read_to_string(deploy::dashboard_path()).unwrap();
    let uid = provisioning.lines().find_map(|l| l.trim().strip_prefix("uid: ")).expect("the data source has a uid");
    assert!(dashboard.contains(&format!("\"uid\": \"{uid}\"")), "the dashboard uses data source {uid}");
    assert!(!dashboard.contains("\"uid\": \"${"), "no unresolved data source variables");
    assert_eq!(deploy::metric_names("sum(rate(streamscore_nope_total[1m]))"), ["streamscore_nope_total"]);
    assert_eq!(deploy::label_names("sum by (a, b) (x{c=\"1\", d!~\"2\"})"), ["a", "b", "c", "d"]);
}

#[test]
fn the_dashboard_covers_what_operators_ask() {
    let queries = deploy::dashboard_queries();
    let text: String = queries.iter().map(|q| q.expr.clone() + "\n").collect();
    for (what, metric) in [
        ("events in per stage", catalog::SOURCE_RECORDS),
        ("events out per stage", catalog::SINK_RECORDS),
        ("end-to-end latency", "streamscore_prediction_latency_seconds_bucket"),
        ("queue wait", "streamscore_infer_queue_wait_seconds_bucket"),
        ("dead letters by reason", "streamscore_ingest_records_total"),
        ("quota decisions per tenant", "streamscore_quota_decisions_total"),
        ("consumer lag in records", "streamscore_consumer_lag_records"),
        ("consumer lag in seconds", "streamscore_consumer_lag_seconds"),
        ("drift per feature and version", catalog::DRIFT_STATISTIC),
        ("what drives each version: mean |φ| per feature", catalog::ATTRIBUTION_MEAN_ABS),
        ("explanation time", "streamscore_infer_explanation_seconds_bucket"),
        ("drift alert annotations", "streamscore_drift_alerts_total"),
        ("backend and versions loaded", "streamscore_backend_info"),
        ("model quality per version", "streamscore_quality_auc"),
        ("quality degraded", "streamscore_quality_degraded"),
        ("label delay", "streamscore_quality_label_delay_seconds"),
    ] {
        assert!(text.contains(metric), "no panel shows {what} ({metric})");
    }
    for q in ["0.5", "0.95", "0.99"] {
        assert!(text.contains(&format!("histogram_quantile({q}, ")), "p{q} latency");
    }
}

#[test]
fn promtool_accepts_the_scrape_configs() {
    for file in ["deploy/prometheus/prometheus.yml", "deploy/prometheus/local.yml"] {
        let output = std::process::Command::new(deploy::prometheus_tool("promtool"))
            .args(["check", "config", "--syntax-only"])
            .arg(deploy::root().join(file))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{file}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `docker compose config` where the docker CLI has compose; else a YAML parse (Python) and a
/// check of the services, images, ports and mounted files.
#[test]
fn the_compose_file_is_valid() {
    let compose = deploy::root().join("docker-compose.yml");
    let has_compose =
        std::process::Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success());
    if has_compose {
        let output = std::process::Command::new("docker")
            .args(["compose", "-f"])
            .arg(&compose)
            .args(["config", "--quiet"])
            .output()
            .unwrap();
        assert!(output.status.success(), "docker compose config: {}", String::from_utf8_lossy(&output.stderr));
    } else {
        eprintln!("docker compose is not available here: checking the file's YAML and services instead");
    }
    let python = std::env::var("STREAMSCORE_PYTHON").expect("STREAMSCORE_PYTHON (scripts/test.sh sets it)");
    let output = std::process::Command::new(python)
        .arg(deploy::root().join("tests/interop/check_compose.py"))
        .arg(&compose)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn the_dockerfile_builds_a_non_root_image_with_a_health_check() {
    let dockerfile = std::fs::read_to_string(deploy::root().join("Dockerfile")).unwrap();
    let stages = dockerfile.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "a multi-stage build");
    let runtime = &dockerfile[dockerfile.rfind("\nFROM ").unwrap()..];
    assert!(runtime.contains("\nUSER streamscore"), "the runtime runs as a non-root user");
    assert!(runtime.contains("\nHEALTHCHECK "), "the runtime has a health check");
    for copied in ["models", "policies"] {
        assert!(runtime.contains(&format!("COPY {copied} ")), "the image holds {copied}");
        assert!(Path::new(&deploy::root().join(copied)).is_dir());
    }
    let ignore = std::fs::read_to_string(deploy::root().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "target"), "the build context leaves target/ out");
}

/// The alert rules (`deploy/prometheus/rules/`): promtool accepts them, every alert has a
/// `promtool test rules` case that fires and one that stays quiet (and they pass), a summary, a
/// description and a runbook section in the README, and names only exported metrics. A rule
/// broken on purpose fails its case.
#[test]
fn every_alert_rule_is_tested_and_has_a_runbook() {
    let rules_dir = deploy::root().join("deploy/prometheus/rules");
    let rules_file = rules_dir.join("streamscore.yml");
    let tests_file = rules_dir.join("tests/streamscore_test.yml");
    let promtool = deploy::prometheus_tool("promtool");
    let run = |args: &[&std::ffi::OsStr]| {
        let output = std::process::Command::new(&promtool).args(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    };
    let (ok, said) = run(&["check".as_ref(), "rules".as_ref(), rules_file.as_os_str()]);
    assert!(ok, "promtool check rules: {said}");
    let (ok, said) = run(&["test".as_ref(), "rules".as_ref(), tests_file.as_os_str()]);
    assert!(ok, "promtool test rules: {said}");

    let rules = std::fs::read_to_string(&rules_file).unwrap();
    let tests = std::fs::read_to_string(&tests_file).unwrap();
    let readme = std::fs::read_to_string(deploy::root().join("README.md")).unwrap();
    let alerts: Vec<(&str, &str)> = rules
        .split("- alert: ")
        .skip(1)
        .map(|block| block.split_once('\n').unwrap())
        .map(|(name, body)| (name.trim(), body))
        .collect();
    assert!(alerts.len() >= 9, "{} alerts", alerts.len());
    let mut problems = Vec::new();
    for (name, body) in &alerts {
        for case in [format!("{name} fires: "), format!("{name} stays quiet")] {
            if !tests.contains(&case) {
                problems.push(format!("{name}: no promtool case named \"{case}...\""));
            }
        }
        for annotation in ["summary:", "description:", "runbook:"] {
            if !body.contains(annotation) {
                problems.push(format!("{name}: no {annotation} annotation"));
            }
        }
        let anchor = format!("runbook: \"README.md#{}\"", name.to_ascii_lowercase());
        if !body.contains(&anchor) {
            problems.push(format!("{name}: its runbook should be {anchor}"));
        }
        if !readme.lines().any(|l| l.trim() == format!("#### {name}")) {
            problems.push(format!("{name}: no \"#### {name}\" runbook section in the README"));
        }
    }
    for name in deploy::metric_names(&rules) {
        let known = catalog::find(&name)
            .or_else(|| name.strip_suffix("_bucket").and_then(catalog::find).filter(|m| m.kind == Kind::Histogram));
        if known.is_none() {
            problems.push(format!("the rules name {name}, which streamscore does not export"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");

    // The cases can fail: with a threshold moved out of reach, a firing case does not fire.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    let broken = rules.replace("streamscore_consumer_lag_seconds) > 60", "streamscore_consumer_lag_seconds) > 6000");
    assert_ne!(broken, rules, "the rule to break is there");
    std::fs::write(dir.path().join("streamscore.yml"), broken).unwrap();
    std::fs::write(dir.path().join("tests/streamscore_test.yml"), &tests).unwrap();
    let (ok, said) =
        run(&["test".as_ref(), "rules".as_ref(), dir.path().join("tests/streamscore_test.yml").as_os_str()]);
    assert!(!ok && said.contains("ConsumerLagHigh"), "a broken rule fails its case: {said}");
}
