//! Routing in the stage: each request through [`crate::router`] to its version's batcher or
//! a rejection, the quota metrics (handles kept per tenant), the policy's reloads (audited).

#[allow(clippy::wildcard_imports)]
use super::*;

/// Quota, then routing ([`crate::router`]), then the version's batcher (possibly after a
/// quota delay) or a rejection.
#[allow(clippy::too_many_arguments)] // the run loop's state, borrowed piecewise
pub(super) async fn route_one(
    shared: &Arc<Shared>,
    store: &SharedStore,
    mut quotas: Option<&mut Quotas>,
    quota_metrics: &mut QuotaMetrics,
    batchers: &HashMap<String, Lanes>,
    refused: &Refusals,
    validated: ValidatedRequest,
    ack: Ack,
) -> Result<(), InferError> {
    let tenant = &validated.request.tenant;
    if let Some(q) = quotas.as_deref_mut() {
        // The bucket this request meets is the one committed with its partition's offset
        // (once per assignment), and the bucket it leaves is committed with its own offset:
        // a redelivered request is decided exactly as it was the first time.
        let assignment = ack.assignment();
        q.adopt(tenant, assignment.generation, assignment.restored.get(tenant).map(String::as_str));
    }
    let availability = |key: &str| {
        if batchers.contains_key(key) {
            Availability::Loaded
        } else {
            refused.0.get(key).map_or(Availability::NotLoaded, |reason| Availability::Refused(reason.clone()))
        }
    };
    let current = store.current();
    let rollouts = shared.config.rollouts.current();
    let (route, quota) = router::route(
        &validated.request,
        validated.quota_time(),
        quotas.as_deref_mut(),
        &shared.config.pins,
        &rollouts,
        &current,
        availability,
    );
    if let Some(q) = quotas {
        if let Some(snapshot) = q.snapshot(tenant) {
            ack.set_state(tenant.clone(), snapshot);
        }
        if let Some(outcome) = quota {
            quota_metrics.record(q, tenant, outcome, &route);
        }
    }
    match route {
        Route::Score { version, delay_us, tier, routed_by, fallback, explain, .. } => {
            let key = version.key();
            let Some(lanes) = batchers.get(&key) else {
                return Err(InferError::Delivery(format!("batcher of {key} missing")));
            };
            let tx = if explain { &lanes.explain } else { &lanes.plain };
            let item = Box::new(Item { validated, routed_by, fallback, ack, enqueued: Instant::now(), tier });
            if delay_us == 0 {
                tx.send(item).await.map_err(|_| InferError::Delivery(format!("batcher of {key} stopped")))?;
            } else {
                // Other tenants go on while this request waits its turn.
                let tx = tx.clone();
                let wait = Duration::from_micros(u64::try_from(delay_us).unwrap_or(0));
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = tx.send(item).await;
                });
            }
            Ok(())
        }
        Route::Reject { reason, detail, retry_after_ms, admitted } => {
            reject(shared, validated, ack, reason, detail, retry_after_ms, admitted).await
        }
    }
}

/// The quota metrics, with a handle per tenant label kept: no label is built per request.
#[derive(Debug, Default)]
pub(super) struct QuotaMetrics {
    by_tenant: HashMap<String, TenantQuotaMetrics>,
}

#[derive(Debug)]
pub(super) struct TenantQuotaMetrics {
    admitted: metrics::Counter,
    delayed: metrics::Counter,
    rejected: metrics::Counter,
    tokens: metrics::Gauge,
}

impl QuotaMetrics {
    pub(super) fn record(&mut self, quotas: &Quotas, tenant: &str, outcome: QuotaOutcome, route: &Route) {
        // Labels stay bounded: a tenant outside the policy counts as `_default`.
        let label = if quotas.policy().file.tenants.contains_key(tenant) { tenant } else { "_default" };
        if !self.by_tenant.contains_key(label) {
            let counter = |decision: &'static str| metrics::counter!("streamscore_quota_decisions_total", "tenant" => label.to_owned(), "decision" => decision);
            let handles = TenantQuotaMetrics {
                admitted: counter("admitted"),
                delayed: counter("delayed"),
                rejected: counter("rejected"),
                tokens: metrics::gauge!("streamscore_quota_tokens", "tenant" => label.to_owned()),
            };
            self.by_tenant.insert(label.to_owned(), handles);
        }
        let Some(handles) = self.by_tenant.get(label) else { return };
        match outcome {
            QuotaOutcome::Admitted => handles.admitted.increment(1),
            QuotaOutcome::Delayed => handles.delayed.increment(1),
            QuotaOutcome::Rejected => handles.rejected.increment(1),
        }
        if let Some(tokens) = quotas.tokens(tenant) {
            handles.tokens.set(tokens);
        }
        if let Route::Score { delay_us, .. } = route {
            if *delay_us > 0 {
                #[allow(clippy::cast_precision_loss)]
                metrics::histogram!("streamscore_quota_delay_seconds").record(*delay_us as f64 / 1e6);
            }
        }
    }
}

pub(super) fn policy_details(policy: &Policy) -> HashMap<String, String> {
    HashMap::from([
        ("sha256".to_owned(), policy.sha256.clone()),
        ("version".to_owned(), policy.file.version.to_string()),
        ("tenants".to_owned(), policy.file.tenants.len().to_string()),
    ])
}

/// Reloads the policy file if its content changed; a file that does not validate is refused
/// (logged and audited) and the loaded policy stays.
pub(super) async fn reload_policy(quotas: &mut Quotas, audit: &AuditWriter) -> Result<(), InferError> {
    let path = quotas.policy().path.clone();
    let Ok(bytes) = std::fs::read(&path) else { return Ok(()) };
    let sha256 = streamscore_contracts::sha256_hex(&bytes);
    if sha256 == quotas.policy().sha256 {
        return Ok(());
    }
    let subject = path.display().to_string();
    match Policy::parse(&path, &bytes) {
        Ok(policy) => {
            tracing::info!(
                path = subject,
                sha256 = policy.sha256,
                version = policy.file.version,
                "tenant policy reloaded"
            );
            audit.record("POLICY_RELOADED", &subject, None, policy_details(&policy)).await?;
            quotas.reload(policy);
        }
        Err(e) => {
            tracing::error!(error = %e, "tenant policy refused; keeping the loaded one");
            let details = HashMap::from([("sha256".to_owned(), sha256), ("error".to_owned(), e.to_string())]);
            audit.record("POLICY_REFUSED", &subject, None, details).await?;
        }
    }
    Ok(())
}

/// `streamscore_rollout_share` for every version in the store: its share of its model's routed
/// traffic under the model's rollout, or 1 for the default version of a model without one.
pub(super) fn export_shares(store: &streamscore_modelstore::ModelStore, rollouts: &streamscore_control::Rollouts) {
    for version in store.versions() {
        let (model, v) = (&version.meta.name, &version.meta.version);
        let share = match rollouts.get(model) {
            Some(rollout) => {
                rollout.split.iter().find(|s| s.version == *v).map_or(0.0, |s| f64::from(s.basis_points) / 10_000.0)
            }
            None => match store.route(model, None, None) {
                Ok(default) if default.meta.version == *v => 1.0,
                _ => 0.0,
            },
        };
        metrics::gauge!("streamscore_rollout_share", "model" => model.clone(), "version" => v.clone()).set(share);
    }
}
