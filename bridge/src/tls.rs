//! TLS for the bridge: rustls on ring, the certificate chain and key read from PEM files and
//! re-read when they change ([`crate::rotate`]), so a renewed certificate is served to new
//! connections without a restart (connections already open keep theirs).
//!
//! warp 0.4 has no TLS of its own: [`serve`] accepts TCP, completes the handshake (at most
//! [`HANDSHAKE_TIMEOUT`]) and serves HTTP/1.1 or HTTP/2 (ALPN) on the stream with hyper,
//! through the same routes as plain HTTP, with the same graceful shutdown as `warp::serve`.
//! A client speaking plain HTTP to this listener fails its handshake and is closed.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::rotate::Current;

/// The longest a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the certificate chain and its key are (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate, then any intermediates.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn paths(&self) -> Vec<PathBuf> {
        vec![self.cert.clone(), self.key.clone()]
    }
}

/// A certificate chain and key as the handshake uses them, or why they cannot be used.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate file is not PEM certificates: {e}"))?;
    if chain.is_empty() {
        return Err("the certificate file holds no CERTIFICATE block".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("the key file holds no private key PEM block (PKCS#8, PKCS#1 or SEC1): {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the private key cannot sign (RSA, ECDSA P-256/P-384 or Ed25519 are): {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| format!("the key is not the certificate's: {e}"))?;
    Ok(certified)
}

/// Hands every handshake the certificate in force now.
#[derive(Debug)]
struct Resolver(Arc<Current<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }
}

/// The acceptor serving whatever `current` holds: TLS 1.2 and 1.3, ring's safe defaults,
/// ALPN h2 and http/1.1.
pub fn acceptor(current: Arc<Current<CertifiedKey>>) -> Result<tokio_rustls::TlsAcceptor, String> {
    // rustls 0.23.48 deprecates its ring provider for having no post-quantum key exchange;
    // ring is kept (aws-lc-rs needs cmake and a C toolchain to build), so key exchange is
    // X25519 and the NIST curves.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(current)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `routes` over TLS on `listener` until `shutdown`, then waits for the connections
/// in flight as `warp::serve(..).graceful(..)` does.
pub async fn serve<F>(
    routes: F,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    F: warp::Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (acceptor, service, watcher) = (acceptor.clone(), warp::service(routes.clone()), graceful.watcher());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    metrics::counter!("streamscore_bridge_tls_handshake_failures_total").increment(1);
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    metrics::counter!("streamscore_bridge_tls_handshake_failures_total").increment(1);
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(service);
            let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let connection = http.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_a_certificate_and_key_are_refused_saying_which() {
        let error = certified_key(b"", b"").expect_err("empty");
        assert!(error.contains("no CERTIFICATE"), "{error}");
        let cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let error = certified_key(cert, b"not a key").expect_err("no key");
        assert!(error.contains("no private key"), "{error}");
    }
}
