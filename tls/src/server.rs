//! HTTPS for a warp route table: rustls on ring, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`.
//!
//! warp 0.4 has no TLS of its own: [`Tls::serve`] accepts TCP, completes the handshake (at
//! most [`HANDSHAKE_TIMEOUT`]) and serves HTTP/1.1 or HTTP/2 on the stream with hyper, through
//! the same routes as plain HTTP, with the same graceful shutdown as `warp::serve`. A client
//! speaking plain HTTP to this listener fails its handshake and is closed.
//!
//! The certificate (and the client CA, with mutual TLS) is read from PEM files and re-read when
//! they change ([`Tls::watch`]): new connections get the new one, open ones keep theirs. With
//! [`ClientAuth`], a client must show a certificate the CA signed (or may, when not
//! `required`); the routes find it as a [`PeerCertificate`] request extension
//! (`warp::ext::optional::<PeerCertificate>()`), which only this listener can put there.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::files::{fingerprint, watch, Current, Reload};
use crate::peer::PeerCertificate;

/// The longest a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Client certificates (mutual TLS): the CA that signs them and whether one is required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// The CA certificates (PEM) a client's certificate must chain to.
    pub ca: PathBuf,
    /// Refuse the handshake of a client without a certificate (otherwise it goes on and the
    /// routes decide, with other credentials).
    pub required: bool,
}

/// Where a listener's certificate chain and key are (PEM), and its client certificates' CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// The certificate, then any intermediates.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Mutual TLS; `None`: no client certificate is asked for.
    pub client: Option<ClientAuth>,
}

impl ServerFiles {
    /// Serves `cert` and `key`, asking for no client certificate.
    pub fn new(cert: PathBuf, key: PathBuf) -> Self {
        Self { cert, key, client: None }
    }

    fn pair(&self) -> Vec<PathBuf> {
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

// rustls 0.23.48 deprecates its ring provider for having no post-quantum key exchange; ring
// is kept (aws-lc-rs needs cmake and a C toolchain to build), so key exchange is X25519 and
// the NIST curves.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The verifier of client certificates signed by the CA in `ca_pem`, or why there is none.
pub fn client_verifier(ca_pem: &[u8], required: bool) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("the client CA file is not PEM certificates: {e}"))?;
        roots.add(cert).map_err(|e| format!("a client CA certificate cannot be used: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the client CA file holds no CERTIFICATE block".into());
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = if required { builder } else { builder.allow_unauthenticated() };
    builder.build().map_err(|e| format!("the client CA cannot verify certificates: {e}"))
}

/// Hands every handshake the certificate in force now.
#[derive(Debug)]
struct Resolver(Arc<Current<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }
}

/// The client certificates' verifier in force, swapped whole when the CA file changes.
type Verifying = Arc<Current<Arc<dyn ClientCertVerifier>>>;

/// Checks each client certificate with the CA in force now. It sends no CA names in its
/// request (they would have to outlive a reload); clients offer the certificate they have.
#[derive(Debug)]
struct Verifier(Verifying);

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.get().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.get().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.get().supported_verify_schemes()
    }
}

/// A listener's TLS: the certificate (and client CA) in force, their fingerprints at start,
/// and the acceptor that serves them.
pub struct Tls {
    files: ServerFiles,
    certificate: (Arc<Current<CertifiedKey>>, String),
    client: Option<(Verifying, String)>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

/// What [`Tls`] calls the certificate pair in its reports.
pub const CERTIFICATE: &str = "TLS certificate";
/// What [`Tls`] calls the client CA in its reports.
pub const CLIENT_CA: &str = "TLS client CA";

impl Tls {
    /// Reads and checks the files, or says which cannot be used and why.
    pub fn load(files: ServerFiles) -> Result<Self, String> {
        let (sha256, contents) = fingerprint(&files.pair())
            .ok_or_else(|| format!("cannot read {} and {}", files.cert.display(), files.key.display()))?;
        let certified = certified_key(&contents[0], &contents[1])?;
        let certificate = (Arc::new(Current::new(certified)), sha256);
        let client = match &files.client {
            None => None,
            Some(auth) => {
                let (sha256, contents) = fingerprint(std::slice::from_ref(&auth.ca))
                    .ok_or_else(|| format!("cannot read the client CA {}", auth.ca.display()))?;
                let verifier = client_verifier(&contents[0], auth.required)
                    .map_err(|e| format!("client CA {}: {e}", auth.ca.display()))?;
                Some((Arc::new(Current::new(verifier)), sha256))
            }
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &client {
            None => builder.with_no_client_auth(),
            Some((current, _)) => builder.with_client_cert_verifier(Arc::new(Verifier(Arc::clone(current)))),
        };
        let mut config = builder.with_cert_resolver(Arc::new(Resolver(Arc::clone(&certificate.0))));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Ok(Self { files, certificate, client, acceptor })
    }

    /// The files served.
    pub fn files(&self) -> &ServerFiles {
        &self.files
    }

    /// What is in force at start: ([`CERTIFICATE`], sha256 over the pair) and, with mutual
    /// TLS, ([`CLIENT_CA`], sha256 of its file).
    pub fn fingerprints(&self) -> Vec<(&'static str, String)> {
        let mut all = vec![(CERTIFICATE, self.certificate.1.clone())];
        if let Some((_, sha256)) = &self.client {
            all.push((CLIENT_CA, sha256.clone()));
        }
        all
    }

    /// Re-reads the files every `every`: the certificate pair, and the client CA; each reload
    /// or refusal goes to `report`. Abort the tasks to stop.
    pub fn watch<R>(&self, every: Duration, report: R) -> Vec<tokio::task::JoinHandle<()>>
    where
        R: Fn(&Reload) + Clone + Send + 'static,
    {
        let mut tasks = vec![watch(
            CERTIFICATE,
            self.files.pair(),
            self.certificate.1.clone(),
            Arc::clone(&self.certificate.0),
            |contents: &[Vec<u8>]| certified_key(&contents[0], &contents[1]),
            every,
            report.clone(),
        )];
        if let (Some((current, sha256)), Some(auth)) = (&self.client, &self.files.client) {
            let required = auth.required;
            tasks.push(watch(
                CLIENT_CA,
                vec![auth.ca.clone()],
                sha256.clone(),
                Arc::clone(current),
                move |contents: &[Vec<u8>]| client_verifier(&contents[0], required),
                every,
                report,
            ));
        }
        tasks
    }

    /// Serves `routes` over TLS on `listener` until `shutdown`, then waits for the connections
    /// in flight as `warp::serve(..).graceful(..)` does. Each failed or timed-out handshake
    /// counts in `handshake_failures`.
    pub async fn serve<F>(
        &self,
        routes: F,
        listener: tokio::net::TcpListener,
        handshake_failures: metrics::Counter,
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
            let (acceptor, routes, watcher) = (self.acceptor.clone(), routes.clone(), graceful.watcher());
            let failures = handshake_failures.clone();
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        failures.increment(1);
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        failures.increment(1);
                        return;
                    }
                };
                let certificate = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|der| PeerCertificate::from_der(der.as_ref()));
                let service = WithPeer { inner: warp::service(routes), certificate };
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
}

/// The routes' service with the connection's client certificate put on each request (and
/// any extension of that type a request came with replaced).
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    certificate: Option<PeerCertificate>,
}

impl<S, B> tower_service::Service<http::Request<B>> for WithPeer<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match &self.certificate {
            Some(certificate) => {
                request.extensions_mut().insert(certificate.clone());
            }
            None => {
                request.extensions_mut().remove::<PeerCertificate>();
            }
        }
        self.inner.call(request)
    }
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
        let error = client_verifier(b"", true).expect_err("no CA");
        assert!(error.contains("no CERTIFICATE"), "{error}");
    }
}
