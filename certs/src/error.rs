//! Error type for certificate loading, validation and generation.
//!
//! Every file-related variant names the file first so an operator can fix the
//! right thing from a single log line. No variant ever carries key material.

use std::path::PathBuf;

/// Why certificate or key material was refused (or could not be produced).
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// Underlying OS error.
        #[source]
        source: std::io::Error,
    },

    /// The file contains malformed PEM (bad base64, unterminated block, ...).
    #[error("{}: invalid PEM: {detail}", path.display())]
    BadPem {
        /// File involved.
        path: PathBuf,
        /// What is wrong (never includes file contents).
        detail: String,
    },

    /// The certificate file contains no `CERTIFICATE` block.
    #[error("{}: no certificate found (expected PEM 'CERTIFICATE' blocks){hint}", path.display())]
    NoCertificate {
        /// File involved.
        path: PathBuf,
        /// Optional extra hint, starting with "; " (empty if none).
        hint: String,
    },

    /// A certificate in the chain is not valid X.509 DER.
    #[error("{}: certificate #{index} in the chain could not be parsed: {detail}", path.display())]
    CertParse {
        /// File involved.
        path: PathBuf,
        /// 1-based position in the file.
        index: usize,
        /// Parser message.
        detail: String,
    },

    /// The key file contains no supported private key block.
    #[error("{}: no private key found (expected PEM 'PRIVATE KEY', 'EC PRIVATE KEY' or 'RSA PRIVATE KEY'){hint}", path.display())]
    NoKey {
        /// File involved.
        path: PathBuf,
        /// Optional extra hint, starting with "; " (empty if none).
        hint: String,
    },

    /// The private key could not be loaded by the crypto provider.
    #[error("{}: private key could not be loaded: {detail}", path.display())]
    KeyUnusable {
        /// File involved.
        path: PathBuf,
        /// Provider message (never key material).
        detail: String,
    },

    /// The leaf certificate's `notBefore` lies in the future.
    #[error("{}: certificate is not valid until {not_before}", path.display())]
    NotYetValid {
        /// File involved.
        path: PathBuf,
        /// RFC 3339 timestamp.
        not_before: String,
    },

    /// The leaf certificate's `notAfter` lies in the past.
    #[error("{}: certificate expired on {not_after}", path.display())]
    Expired {
        /// File involved.
        path: PathBuf,
        /// RFC 3339 timestamp.
        not_after: String,
    },

    /// The RSA key is shorter than policy allows.
    #[error("{}: RSA key is {bits} bits; at least 2048 required", path.display())]
    WeakRsaKey {
        /// Key file involved.
        path: PathBuf,
        /// Modulus size.
        bits: usize,
    },

    /// The key uses an algorithm or curve we do not accept.
    #[error("{}: unsupported key type {algorithm}; use RSA (>= 2048 bits), ECDSA P-256/P-384/P-521 or Ed25519", path.display())]
    UnsupportedKey {
        /// Key file involved.
        path: PathBuf,
        /// Algorithm or curve description (OID if unknown).
        algorithm: String,
    },

    /// The leaf certificate is signed with a broken hash (SHA-1, MD5, ...).
    #[error("{}: certificate is signed with {algorithm}; SHA-1 and MD5 signatures are refused", path.display())]
    WeakSignature {
        /// Certificate file involved.
        path: PathBuf,
        /// Signature algorithm name.
        algorithm: String,
    },

    /// The private key does not belong to the leaf certificate.
    #[error("{}: private key does not match the certificate in {}", key_path.display(), cert_path.display())]
    KeyMismatch {
        /// Key file.
        key_path: PathBuf,
        /// Certificate file.
        cert_path: PathBuf,
    },

    /// The private key matches a later certificate in the chain: wrong order.
    #[error("{}: private key matches certificate #{index} in {}, not the first one; the server (leaf) certificate must come first", key_path.display(), cert_path.display())]
    ChainOrder {
        /// Key file.
        key_path: PathBuf,
        /// Certificate file.
        cert_path: PathBuf,
        /// 1-based position of the matching certificate.
        index: usize,
    },

    /// An output file exists and `--force` was not given.
    #[error("{}: already exists; pass --force to replace it", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },

    /// A request to issue a certificate is not acceptable (bad SAN, validity past the CA, ...).
    #[error("{0}")]
    BadRequest(String),

    /// Certificate generation (dev PKI) failed.
    #[error("{}: certificate generation failed: {detail}", path.display())]
    Generate {
        /// File (or directory) being generated.
        path: PathBuf,
        /// Generator message.
        detail: String,
    },

    /// rustls refused the TLS configuration (not tied to a file).
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
}
