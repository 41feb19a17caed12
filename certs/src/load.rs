//! Loading and validating a PEM certificate chain and private key.
//!
//! Everything an operator can get wrong (missing file, wrong PEM type, chain
//! out of order, mismatched key, expired or weak certificate) is detected here
//! at startup / reload time, so the TLS listener never runs with bad material.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::signature_algorithm::SignatureAlgorithm;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::error::CertError;
use crate::tls::{provider, CipherProfile};

/// A validated certificate chain + key, ready for rustls.
#[derive(Clone)]
pub struct LoadedCert {
    /// Chain and signing key in the form rustls serves.
    pub certified: Arc<CertifiedKey>,
    /// Human-readable summary for logs and `check-config`.
    pub info: CertInfo,
}

impl fmt::Debug for LoadedCert {
    // Hand-written so the signing key can never end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert").field("info", &self.info).finish_non_exhaustive()
    }
}

/// Summary of the leaf certificate, for logging and expiry monitoring.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Subject distinguished name, e.g. `CN=localhost`.
    pub subject: String,
    /// End of validity (UTC).
    pub not_after: OffsetDateTime,
    /// Key description, e.g. "ECDSA P-256", "RSA 3072", "Ed25519".
    pub key: String,
    /// SHA-256 of the leaf DER, uppercase hex, colon-separated (as `openssl x509 -fingerprint`).
    pub sha256_fingerprint: String,
}

/// Load and validate a certificate chain and key for serving.
///
/// The gateway calls this at startup and on rotation; any problem is returned
/// as a [`CertError`] naming the file at fault.
pub fn load_server_cert(cert_path: &Path, key_path: &Path) -> Result<LoadedCert, CertError> {
    load_at(cert_path, key_path, OffsetDateTime::now_utc())
}

/// Run exactly the checks of [`load_server_cert`] and return the summary.
///
/// Used by `check-config` so operators can validate files before deploying them.
pub fn validate_cert_files(cert_path: &Path, key_path: &Path) -> Result<CertInfo, CertError> {
    load_server_cert(cert_path, key_path).map(|loaded| loaded.info)
}

/// Core of [`load_server_cert`], with the clock injectable for tests.
pub(crate) fn load_at(cert_path: &Path, key_path: &Path, now: OffsetDateTime) -> Result<LoadedCert, CertError> {
    let chain = read_chain(cert_path)?;
    let Some(leaf_der) = chain.first() else {
        // read_chain guarantees at least one certificate.
        return Err(CertError::NoCertificate { path: cert_path.to_path_buf(), hint: String::new() });
    };
    // Parse every certificate so a corrupt intermediate is caught now, not by clients.
    let mut parsed = Vec::with_capacity(chain.len());
    for (i, der) in chain.iter().enumerate() {
        let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| CertError::CertParse {
            path: cert_path.to_path_buf(),
            index: i + 1,
            detail: e.to_string(),
        })?;
        parsed.push(cert);
    }
    let Some(leaf) = parsed.first() else {
        return Err(CertError::NoCertificate { path: cert_path.to_path_buf(), hint: String::new() });
    };

    check_signature(cert_path, leaf)?;
    let key_desc = describe_key(key_path, leaf)?;
    check_validity(cert_path, leaf, now)?;

    let key_der = read_key(key_path)?;
    let signing_key = provider(CipherProfile::Intermediate)
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| CertError::KeyUnusable { path: key_path.to_path_buf(), detail: e.to_string() })?;
    let key_spki = signing_key.public_key().map(|spki| spki.into_owned());
    let certified = CertifiedKey::new(chain.clone(), signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            // The provider cannot export the public key; nothing more we can check.
        }
        Err(_) => {
            // Give a precise hint when the chain is merely in the wrong order.
            let position =
                key_spki.as_ref().and_then(|spki| parsed.iter().position(|c| c.public_key().raw == spki.as_ref()));
            return Err(match position {
                Some(i) if i > 0 => CertError::ChainOrder {
                    key_path: key_path.to_path_buf(),
                    cert_path: cert_path.to_path_buf(),
                    index: i + 1,
                },
                _ => CertError::KeyMismatch { key_path: key_path.to_path_buf(), cert_path: cert_path.to_path_buf() },
            });
        }
    }

    let info = CertInfo {
        subject: leaf.subject().to_string(),
        not_after: leaf.validity().not_after.to_datetime(),
        key: key_desc,
        sha256_fingerprint: fingerprint(leaf_der.as_ref()),
    };
    Ok(LoadedCert { certified: Arc::new(certified), info })
}

/// Read a file, mapping errors to [`CertError::Io`] with the path.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Io { path: path.to_path_buf(), source })
}

/// Read all `CERTIFICATE` blocks (at least one) from a PEM file.
pub(crate) fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = read_file(path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadPem { path: path.to_path_buf(), detail: pem_error_detail(&e) })?;
    if chain.is_empty() {
        let hint = if contains(&bytes, b"PRIVATE KEY-----") {
            "; this file looks like a private key"
        } else if !contains(&bytes, b"-----BEGIN ") {
            "; the file is not PEM (DER certificates must be converted to PEM)"
        } else {
            ""
        };
        return Err(CertError::NoCertificate { path: path.to_path_buf(), hint: hint.to_owned() });
    }
    Ok(chain)
}

/// Read the first private key (PKCS#8, SEC1 or PKCS#1) from a PEM file.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            let hint = if contains(&bytes, b"ENCRYPTED PRIVATE KEY") {
                "; encrypted private keys are not supported"
            } else if contains(&bytes, b"CERTIFICATE-----") {
                "; this file looks like a certificate"
            } else {
                ""
            };
            CertError::NoKey { path: path.to_path_buf(), hint: hint.to_owned() }
        }
        // Deliberately generic for key files: never echo anything from them.
        _ => CertError::BadPem { path: path.to_path_buf(), detail: "malformed PEM block".to_owned() },
    })
}

/// Describe a PEM parse error without echoing file contents.
fn pem_error_detail(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a PEM block has no END line".to_owned(),
        pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line".to_owned(),
        pem::Error::Base64Decode(_) => "bad base64 inside a PEM block".to_owned(),
        pem::Error::SectionTooLarge => "PEM block too large".to_owned(),
        _ => "malformed PEM".to_owned(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Refuse leaf certificates signed with a broken hash.
fn check_signature(path: &Path, leaf: &X509Certificate<'_>) -> Result<(), CertError> {
    let alg = &leaf.signature_algorithm;
    let oid = alg.algorithm.to_id_string();
    let weak = match oid.as_str() {
        "1.2.840.113549.1.1.2" => Some("md2WithRSAEncryption"),
        "1.2.840.113549.1.1.3" => Some("md4WithRSAEncryption"),
        "1.2.840.113549.1.1.4" | "1.3.14.3.2.3" | "1.3.14.3.2.25" => Some("md5WithRSAEncryption"),
        "1.2.840.113549.1.1.5" | "1.3.14.3.2.29" => Some("sha1WithRSAEncryption"),
        "1.2.840.10045.4.1" => Some("ecdsa-with-SHA1"),
        "1.2.840.10040.4.3" | "1.3.14.3.2.27" => Some("dsa-with-SHA1"),
        // RSASSA-PSS: the hash is in the parameters (absent means SHA-1).
        "1.2.840.113549.1.1.10" => match SignatureAlgorithm::try_from(alg) {
            Ok(SignatureAlgorithm::RSASSA_PSS(params)) => match params.hash_algorithm_oid().to_id_string().as_str() {
                "1.3.14.3.2.26" => Some("RSASSA-PSS with SHA-1"),
                "1.2.840.113549.2.5" => Some("RSASSA-PSS with MD5"),
                _ => None,
            },
            _ => Some("RSASSA-PSS with unreadable parameters"),
        },
        _ => None,
    };
    match weak {
        Some(name) => Err(CertError::WeakSignature { path: path.to_path_buf(), algorithm: name.to_owned() }),
        None => Ok(()),
    }
}

/// Enforce the key policy on the leaf's public key and describe it.
///
/// Errors name the key file: replacing the key is the fix.
fn describe_key(key_path: &Path, leaf: &X509Certificate<'_>) -> Result<String, CertError> {
    match classify_key(leaf.public_key()) {
        Ok((name, _bits)) => Ok(name),
        Err(KeyRefusal::Weak { bits }) => Err(CertError::WeakRsaKey { path: key_path.to_path_buf(), bits }),
        Err(KeyRefusal::Unsupported(algorithm)) => {
            Err(CertError::UnsupportedKey { path: key_path.to_path_buf(), algorithm })
        }
    }
}

/// Why the gateway's key policy refuses a public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyRefusal {
    /// RSA below 2048 bits.
    Weak {
        /// Modulus size.
        bits: usize,
    },
    /// An algorithm or curve the gateway does not serve (its description).
    Unsupported(String),
}

/// The key policy, in one place: a public key's description ("ECDSA P-256", "RSA 3072",
/// "Ed25519") and size in bits, or why the gateway refuses it.
pub(crate) fn classify_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<(String, usize), KeyRefusal> {
    let unsupported = |algorithm: &str| KeyRefusal::Unsupported(algorithm.to_owned());
    let alg_oid = spki.algorithm.algorithm.to_id_string();
    match alg_oid.as_str() {
        "1.3.101.112" => Ok(("Ed25519".to_owned(), 256)),
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string())
                .unwrap_or_default();
            match curve.as_str() {
                "1.2.840.10045.3.1.7" => Ok(("ECDSA P-256".to_owned(), 256)),
                "1.3.132.0.34" => Ok(("ECDSA P-384".to_owned(), 384)),
                "1.3.132.0.35" => Ok(("ECDSA P-521".to_owned(), 521)),
                "" => Err(unsupported("ECDSA with unnamed curve")),
                other => Err(unsupported(&format!("ECDSA curve {other}"))),
            }
        }
        "1.2.840.113549.1.1.1" => match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => {
                let bits = modulus_bits(rsa.modulus);
                if bits < 2048 {
                    Err(KeyRefusal::Weak { bits })
                } else {
                    Ok((format!("RSA {bits}"), bits))
                }
            }
            _ => Err(unsupported("RSA with malformed public key")),
        },
        "1.2.840.113549.1.1.10" => Err(unsupported("RSASSA-PSS-only key")),
        "1.3.101.113" => Err(unsupported("Ed448")),
        "1.2.840.10040.4.1" => Err(unsupported("DSA")),
        other => Err(unsupported(&format!("with OID {other}"))),
    }
}

/// Bit length of a big-endian unsigned integer (leading zero bytes ignored).
fn modulus_bits(modulus: &[u8]) -> usize {
    let mut bytes = modulus.iter().skip_while(|b| **b == 0);
    match bytes.next() {
        Some(first) => {
            let rest = bytes.count();
            rest * 8 + (8 - first.leading_zeros() as usize)
        }
        None => 0,
    }
}

/// Refuse a leaf that is not valid at `now`.
fn check_validity(path: &Path, leaf: &X509Certificate<'_>, now: OffsetDateTime) -> Result<(), CertError> {
    let validity = leaf.validity();
    let not_before = validity.not_before.to_datetime();
    let not_after = validity.not_after.to_datetime();
    if now < not_before {
        return Err(CertError::NotYetValid { path: path.to_path_buf(), not_before: rfc3339(not_before) });
    }
    if now > not_after {
        return Err(CertError::Expired { path: path.to_path_buf(), not_after: rfc3339(not_after) });
    }
    Ok(())
}

/// Format a timestamp as RFC 3339 (falls back to `Display` for out-of-range years).
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// SHA-256 fingerprint in `openssl x509 -fingerprint -sha256` style.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_bits_counts_significant_bits() {
        assert_eq!(modulus_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(modulus_bits(&[0x01, 0x00]), 9);
        assert_eq!(modulus_bits(&[0x00]), 0);
        assert_eq!(modulus_bits(&[]), 0);
    }

    #[test]
    fn fingerprint_format() {
        let fp = fingerprint(b"abc");
        assert_eq!(
            fp,
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }
}
