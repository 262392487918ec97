//! The deployment files (`deploy/`, `docker-compose.yml`) as the tests read them, and the
//! Prometheus tools (Debian's `prometheus` package; scripts/test.sh installs it).

use std::path::{Path, PathBuf};

use serde_json::Value;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn dashboard_path() -> PathBuf {
    root().join("deploy/grafana/dashboards/streamscore.json")
}

/// One PromQL query of the dashboard: where it is and its text.
#[derive(Debug, Clone)]
pub struct Query {
    pub place: String,
    pub expr: String,
}

/// Every Prometheus query of the dashboard: each panel target and each annotation.
pub fn dashboard_queries() -> Vec<Query> {
    let text = std::fs::read_to_string(dashboard_path()).expect("reading the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
            queries.push(Query {
                place: format!("panel {title:?} target {}", target["refId"].as_str().unwrap_or("?")),
                expr: expr.to_owned(),
            });
        }
    }
    for annotation in dashboard["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = annotation["expr"].as_str() {
            queries.push(Query {
                place: format!("annotation {:?}", annotation["name"].as_str().unwrap_or("?")),
                expr: expr.to_owned(),
            });
        }
    }
    queries
}

/// `expr` with Grafana's variables replaced by what a query to Prometheus' API needs.
pub fn substitute(expr: &str, rate_interval: &str) -> String {
    expr.replace("$__rate_interval", rate_interval).replace("$method", "psi").replace("$quality_window", "1h")
}

/// A tool of Debian's `prometheus` package (`prometheus`, `promtool`): on PATH, or in
/// `STREAMSCORE_PROMETHEUS_BIN` (a directory).
pub fn prometheus_tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("STREAMSCORE_PROMETHEUS_BIN").map(PathBuf::from).into_iter().collect();
    dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("{name} is not installed: install Debian's prometheus package (apt-get install prometheus; scripts/test.sh does)")
    })
}

/// The metric names (`streamscore_…`) a PromQL expression mentions.
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(found) = expr[i..].find("streamscore_") {
        let start = i + found;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if boundary {
            names.push(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// The label names a PromQL expression groups by (`by (…)`) or selects on (`{…}`).
pub fn label_names(expr: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        let after = &rest[at + 4..];
        let close = after.find(')').expect("by (…) closes");
        labels.extend(after[..close].split(',').map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()));
        rest = &after[close..];
    }
    let mut rest = expr;
    while let Some(at) = rest.find('{') {
        let after = &rest[at + 1..];
        let close = after.find('}').expect("{…} closes");
        for matcher in after[..close].split(',') {
            let name: String = matcher.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                labels.push(name);
            }
        }
        rest = &after[close..];
    }
    labels
}
