//! Shared by the load harnesses.

/// user + system CPU seconds of process `pid` (`self` for this one), from /proc (1/100 s ticks).
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The local stack's addresses, or what to do about their absence.
pub fn stack_env() -> anyhow::Result<(String, String)> {
    match (std::env::var("STREAMSCORE_BOOTSTRAP"), std::env::var("STREAMSCORE_REGISTRY_URL")) {
        (Ok(bootstrap), Ok(registry)) => Ok((bootstrap, registry)),
        _ => anyhow::bail!(
            "set STREAMSCORE_BOOTSTRAP and STREAMSCORE_REGISTRY_URL (streamscore stack up writes them to .streamscore/stack.env)"
        ),
    }
}
