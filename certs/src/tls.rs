//! Restricted rustls crypto provider and server configuration.
//!
//! Cipher and key-exchange policy lives here only, so the gateway, its tests
//! and any client tooling agree on exactly what is offered.

use std::sync::Arc;

use rustls::crypto::aws_lc_rs::{cipher_suite as cs, default_provider, kx_group};
use rustls::crypto::CryptoProvider;
use rustls::ServerConfig;

use crate::client::ReloadableClientVerifier;
use crate::error::CertError;
use crate::reload::ReloadableCert;

/// Which cipher suites the listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherProfile {
    /// AES-256-GCM only (for deployments requiring 256-bit ciphers).
    Aes256,
    /// Broad modern compatibility: AES-256/128-GCM and ChaCha20-Poly1305.
    Intermediate,
}

/// The restricted provider for `profile` (also used by tests and clients).
///
/// TLS 1.3 + 1.2 AEAD suites only; key exchange X25519MLKEM768, X25519,
/// P-256, P-384 in that preference order.
pub fn provider(profile: CipherProfile) -> CryptoProvider {
    let cipher_suites = match profile {
        CipherProfile::Aes256 => vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ],
        CipherProfile::Intermediate => vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
    };
    CryptoProvider {
        cipher_suites,
        kx_groups: vec![kx_group::X25519MLKEM768, kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        ..default_provider()
    }
}

/// Build the listener's rustls config: TLS 1.3/1.2, server-preferred suites,
/// ALPN h2 then http/1.1, certificate from `resolver`; client certificates checked by
/// `clients` when given (mTLS), otherwise not asked for.
pub fn server_config(
    profile: CipherProfile,
    resolver: Arc<ReloadableCert>,
    clients: Option<Arc<ReloadableClientVerifier>>,
) -> Result<ServerConfig, CertError> {
    let builder = ServerConfig::builder_with_provider(Arc::new(provider(profile)))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(CertError::Tls)?;
    let builder = match clients {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.ignore_client_order = true;
    // TLS 1.3 resumption: one ticket per handshake (each resumption hands out its successor),
    // more only when a client asks for them (RFC 9149), at most four.
    config.send_tls13_tickets = 1;
    config.max_tls13_tickets = 4;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
