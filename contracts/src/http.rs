//! HTTP clients of the stages (the registry's, first of all), over HTTPS where the URL says so.
//!
//! reqwest runs on rustls with ring (no aws-lc: it needs cmake and a C toolchain), installed as
//! the process's crypto provider by [`install_provider`], which every client built here calls
//! first. Servers are trusted through the system's roots and, when `STREAMSCORE_REGISTRY_CA`
//! names a PEM file, its certificates too (a private CA, as Confluent's clients take
//! `schema.registry.ssl.ca.location`). A CA file that cannot be used is an error at start
//! ([`check_ca`]); a client built past that trusts nothing over HTTPS rather than less.

use std::path::PathBuf;
use std::time::Duration;

/// The PEM file of extra CA certificates the stages trust for HTTPS (the registry's).
pub const CA_ENV: &str = "STREAMSCORE_REGISTRY_CA";

/// Installs rustls' ring provider for the process (once; later calls do nothing). Call it
/// before building any reqwest client by hand.
pub fn install_provider() {
    // rustls 0.23.48 deprecates ring for having no post-quantum key exchange; see tls/.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The CA file `STREAMSCORE_REGISTRY_CA` names, if set.
pub fn ca_file() -> Option<PathBuf> {
    std::env::var_os(CA_ENV).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The certificates of `STREAMSCORE_REGISTRY_CA`, or why they cannot be used.
pub fn ca_certificates() -> Result<Vec<reqwest::Certificate>, String> {
    let Some(path) = ca_file() else { return Ok(Vec::new()) };
    let pem = std::fs::read(&path).map_err(|e| format!("{CA_ENV}={}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{CA_ENV}={}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{CA_ENV}={}: no CERTIFICATE block", path.display()));
    }
    Ok(certs)
}

/// Whether `STREAMSCORE_REGISTRY_CA`, if set, can be used; the commands check it at start.
pub fn check_ca() -> Result<(), String> {
    ca_certificates().map(|_| ())
}

/// A client builder on ring trusting the system's roots and `STREAMSCORE_REGISTRY_CA`.
pub fn builder() -> reqwest::ClientBuilder {
    install_provider();
    let builder = reqwest::Client::builder();
    match ca_certificates() {
        Ok(certs) => certs.into_iter().fold(builder, reqwest::ClientBuilder::add_root_certificate),
        Err(e) => {
            warn(&e);
            builder.tls_certs_only(Vec::new())
        }
    }
}

/// A client as [`builder`] makes it.
pub fn client() -> reqwest::Client {
    builder().build().unwrap_or_else(|e| {
        // Building fails only for TLS settings reqwest cannot use; say so, and trust nothing.
        warn(&e.to_string());
        reqwest::Client::builder().tls_certs_only(Vec::new()).build().unwrap_or_default()
    })
}

/// A client as [`builder`] makes it, giving up on a call after `timeout`.
pub fn client_with_timeout(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    builder().timeout(timeout).build()
}

// The commands check the CA at start, so this is reached only when the file changed (or
// vanished) underneath a running process.
fn warn(error: &str) {
    tracing::error!(error, "HTTPS servers are not trusted until {CA_ENV} is fixed");
}

/// `GET url` with a [`client`]: the body as text, or why not.
pub async fn get_text(url: &str) -> Result<String, reqwest::Error> {
    client().get(url).send().await?.text().await
}

/// `GET url` with a [`client`]: the body as JSON, or why not.
pub async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> Result<T, reqwest::Error> {
    client().get(url).send().await?.json().await
}
