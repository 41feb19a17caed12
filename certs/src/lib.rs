//! Certificate and key material for the gateway's TLS listeners.
//!
//! This crate owns everything the gateway needs to terminate TLS safely:
//!
//! * loading a PEM certificate chain and private key, refusing weak or broken
//!   material up front with an error that names the offending file
//!   ([`load_server_cert`], [`validate_cert_files`]);
//! * a restricted rustls crypto provider and server configuration
//!   ([`provider`], [`server_config`]) so cipher policy lives in one place;
//! * hot certificate rotation without dropping connections ([`ReloadableCert`]);
//! * issuing server and client certificates from a CA ([`issue`]) and reading them back
//!   for people and monitors ([`inspect`]), behind `gateway certs`;
//! * a development PKI generator ([`dev`]) for local runs, tests and `gateway certs dev`.
//!
//! Only the aws-lc-rs crypto stack is used (through rustls, rcgen and aws-lc-rs).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

mod client;
pub mod dev;
mod error;
mod files;
pub mod inspect;
pub mod issue;
mod load;
mod reload;
mod tls;

pub use client::{load_client_trust, ClientTrust, PeerCert, ReloadableClientVerifier};
pub use error::CertError;
pub use load::{load_server_cert, validate_cert_files, CertInfo, LoadedCert};
pub use reload::ReloadableCert;
pub use tls::{provider, server_config, CipherProfile};

#[cfg(test)]
mod tests;
