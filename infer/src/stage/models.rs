//! The model versions of the stage: loading each into the backend and auditing the load
//! (`MODEL_LOADED`, with its sha256), and refusing a version that cannot load (`MODEL_REFUSED`,
//! once per reason) while the others are served.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Versions refused by the store or the backend, by `model/version`, with the reason. Each
/// refusal is audited (`MODEL_REFUSED`) once per reason, not at every rescan.
#[derive(Debug, Default)]
pub(super) struct Refusals(pub(super) HashMap<String, String>);

impl Refusals {
    pub(super) async fn refuse(
        &mut self,
        audit: &AuditWriter,
        key: String,
        reason: String,
        mut details: HashMap<String, String>,
    ) -> Result<(), InferError> {
        if self.0.get(&key) == Some(&reason) {
            return Ok(());
        }
        details.insert("reason".to_owned(), reason.clone());
        audit.record("MODEL_REFUSED", &key, None, details).await?;
        metrics::counter!("streamscore_infer_models_refused_total").increment(1);
        tracing::error!(model = key, reason, "model version refused; the other versions are served");
        self.0.insert(key, reason);
        Ok(())
    }

    pub(super) async fn store_refused(&mut self, audit: &AuditWriter, refusal: &Refused) -> Result<(), InferError> {
        let mut details = HashMap::from([("path".to_owned(), refusal.path.display().to_string())]);
        if let Some(sha256) = &refusal.sha256 {
            details.insert("sha256".to_owned(), sha256.clone());
        }
        self.refuse(audit, refusal.key(), refusal.reason.clone(), details).await
    }
}

/// Loads a version into the backend and records the load (with its sha256) in the audit log.
/// A version the backend cannot load is refused (audited) and the error returned inside `Ok`:
/// only a failure to write the audit log stops the stage.
pub(super) async fn load(
    backend: &dyn Backend,
    audit: &AuditWriter,
    version: Arc<ModelVersion>,
    models: &mut HashMap<String, Arc<Loaded>>,
    refused: &mut Refusals,
) -> Result<Result<(), BackendError>, InferError> {
    let key = version.key();
    let scorer = match backend.load(&version) {
        Ok(scorer) => scorer,
        Err(e) => {
            let details = HashMap::from([
                ("sha256".to_owned(), version.meta.sha256.clone()),
                ("requested_backend".to_owned(), backend.name().to_owned()),
                ("path".to_owned(), version.onnx_path.display().to_string()),
            ]);
            refused.refuse(audit, key, e.to_string(), details).await?;
            return Ok(Err(e));
        }
    };
    refused.0.remove(&key);
    let runs_on = scorer.backend();
    models.insert(key.clone(), Arc::new(Loaded { version: Arc::clone(&version), scorer }));
    let details = HashMap::from([
        ("sha256".to_owned(), version.meta.sha256.clone()),
        ("backend".to_owned(), runs_on.to_owned()),
        ("requested_backend".to_owned(), backend.name().to_owned()),
        ("path".to_owned(), version.onnx_path.display().to_string()),
    ]);
    audit.record("MODEL_LOADED", &key, None, details).await?;
    metrics::gauge!(
        "streamscore_backend_info",
        "model" => key.clone(),
        "backend" => runs_on,
        "requested" => backend.name(),
    )
    .set(1.0);
    tracing::info!(
        model = key,
        sha256 = version.meta.sha256,
        backend = runs_on,
        requested = backend.name(),
        "model loaded"
    );
    Ok(Ok(()))
}
