//! TLS at the edge: the room for what the HTTP listeners (the bridge, the registry) need to
//! speak HTTPS and know who called.
//!
//! - [`files`]: a value read from files and swapped whole when their bytes change
//!   ([`files::Current`], [`files::watch`]): certificates here, and the bridge's tenant
//!   policy and JWKS, the registry's users file.
//! - [`server`]: rustls on ring for a warp route table: the certificate in force at each
//!   handshake, optional client certificates checked against a CA (mutual TLS), and the
//!   caller's certificate handed to the routes as a request extension ([`PeerCertificate`]).
//!
//! All on ring: no aws-lc (C and cmake) and no PEM crates (rustls' pki-types reads PEM).

pub mod files;
pub mod peer;
pub mod server;

pub use files::{Current, Reload};
pub use peer::PeerCertificate;
pub use server::{ClientAuth, ServerFiles, Tls};
