//! Client certificates (mTLS): the trusted CA bundle and CRLs, a verifier that can be
//! swapped at runtime, and the facts of a presented certificate that users are bound by.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use crate::error::CertError;
use crate::tls::{provider, CipherProfile};

/// What the listener trusts for client certificates, loaded and checked.
#[derive(Debug, Clone)]
pub struct ClientTrust {
    /// The verifier built from the CA bundle and CRLs.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// How many CA certificates the bundle holds.
    pub cas: usize,
    /// How many CRLs were loaded.
    pub crls: usize,
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Io { path: path.to_path_buf(), source })
}

fn bad(path: &Path, detail: impl Into<String>) -> CertError {
    CertError::BadPem { path: path.to_path_buf(), detail: detail.into() }
}

/// Load the client CA bundle (PEM) and CRLs (PEM `X509 CRL` blocks, or one DER CRL per
/// file) and build a verifier: `mandatory` refuses handshakes without a certificate;
/// revocation is checked for the client's own certificate (an issuer without a CRL among
/// `crls` is fine only when no CRLs are configured at all).
pub fn load_client_trust(
    profile: CipherProfile,
    ca: &Path,
    crls: &[PathBuf],
    mandatory: bool,
) -> Result<ClientTrust, CertError> {
    let bytes = read(ca)?;
    let mut roots = RootCertStore::empty();
    let mut count = 0usize;
    for (i, item) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let der = item.map_err(|_| bad(ca, format!("CA bundle block #{} is malformed", i + 1)))?;
        roots.add(der).map_err(|e| CertError::CertParse {
            path: ca.to_path_buf(),
            index: i + 1,
            detail: e.to_string(),
        })?;
        count += 1;
    }
    if count == 0 {
        return Err(CertError::NoCertificate {
            path: ca.to_path_buf(),
            hint: "; the client CA bundle is empty".into(),
        });
    }
    let mut lists = Vec::new();
    for path in crls {
        let bytes = read(path)?;
        let pem: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&bytes).collect();
        if pem.is_empty() {
            if bytes.first() != Some(&0x30) {
                return Err(bad(path, "neither PEM 'X509 CRL' blocks nor a DER CRL"));
            }
            lists.push((path, CertificateRevocationListDer::from(bytes)));
        } else {
            for (i, item) in pem.into_iter().enumerate() {
                let der = item.map_err(|_| bad(path, format!("CRL block #{} is malformed", i + 1)))?;
                lists.push((path, der));
            }
        }
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(provider(profile));
    // Parse each CRL on its own first, so a bad one is named by its file.
    for (path, der) in &lists {
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls([der.clone()])
            .build()
            .map_err(|e| bad(path, format!("CRL refused: {e}")))?;
    }
    let crl_count = lists.len();
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider)
        .with_crls(lists.into_iter().map(|(_, der)| der))
        .only_check_end_entity_revocation();
    if crl_count == 0 {
        builder = builder.allow_unknown_revocation_status();
    }
    if !mandatory {
        builder = builder.allow_unauthenticated();
    }
    let verifier = builder.build().map_err(|e| bad(ca, format!("client verifier: {e}")))?;
    Ok(ClientTrust { verifier, cas: count, crls: crl_count })
}

/// A client verifier whose trust (CA bundle, CRLs) can be replaced while the listener runs.
/// Handshakes in progress keep the verifier they started with.
///
/// It sends no CA names in its certificate request (the names would have to outlive a
/// swap); clients with one certificate send it regardless.
#[derive(Debug)]
pub struct ReloadableClientVerifier {
    mandatory: bool,
    current: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl ReloadableClientVerifier {
    /// Start with `trust`.
    pub fn new(trust: &ClientTrust, mandatory: bool) -> ReloadableClientVerifier {
        ReloadableClientVerifier { mandatory, current: RwLock::new(trust.verifier.clone()) }
    }

    /// Verify every handshake from now on against `trust`.
    pub fn replace(&self, trust: &ClientTrust) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = trust.verifier.clone();
    }

    fn get(&self) -> Arc<dyn ClientCertVerifier> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl ClientCertVerifier for ReloadableClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
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
        self.get().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// SHA-256 of the certificate (DER).
    pub sha256: [u8; 32],
    /// Subject, as text.
    pub subject: String,
    /// The subject's common names.
    pub common_names: Vec<String>,
    /// DNS names, e-mail addresses and URIs among the subject alternative names.
    pub sans: Vec<String>,
}

impl PeerCert {
    /// Read the facts of `der` (already verified by the handshake).
    pub fn from_der(der: &[u8]) -> Option<PeerCert> {
        use x509_parser::extensions::GeneralName;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let sha256: [u8; 32] = digest.as_ref().try_into().ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject().to_string();
        let common_names =
            cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok().map(str::to_owned)).collect();
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                        sans.push((*s).to_owned())
                    }
                    _ => {}
                }
            }
        }
        Some(PeerCert { sha256, subject, common_names, sans })
    }

    /// The fingerprint as lower-case hex.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}
