//! The certificate a client showed (mutual TLS), as the routes see it.

use x509_cert::der::Decode;

/// A verified client certificate: its subject and fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerCertificate {
    /// The subject's distinguished name as RFC 4514 writes it (`CN=scorer,O=Acme`, the last
    /// RDN first, as `openssl x509 -noout -subject -nameopt RFC2253` prints it); empty when
    /// the certificate could not be parsed (rustls verified it; this parser is stricter).
    pub subject: String,
    /// The sha256 (hex) of its DER bytes (`openssl x509 -noout -fingerprint -sha256`, lower
    /// case without colons).
    pub sha256: String,
}

impl PeerCertificate {
    /// The subject and fingerprint of a DER certificate.
    pub fn from_der(der: &[u8]) -> Self {
        use sha2::Digest;
        let sha256 = sha2::Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect();
        let subject = match x509_cert::Certificate::from_der(der) {
            Ok(cert) => cert.tbs_certificate.subject.to_string(),
            Err(e) => {
                tracing::warn!(error = %e, "a client certificate's subject could not be read");
                String::new()
            }
        };
        Self { subject, sha256 }
    }
}
