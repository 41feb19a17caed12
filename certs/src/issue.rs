//! Issuing server and client certificates from a CA (`gateway certs issue`, and the
//! leaves of the development PKI).
//!
//! A [`SigningCa`] is either loaded from a CA certificate and key ([`SigningCa::load`],
//! checked: a CA, valid now, key matching) or generated ([`SigningCa::generate`]). [`issue`]
//! makes a leaf from a [`LeafRequest`] (SANs, validity, key type); [`write_issued`] writes the
//! chain (leaf, then the CA file's certificates, the order the gateway's loader wants) and
//! the key (0600), never over an existing file unless forced.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, RsaKeySize, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::error::CertError;
use crate::files;
use crate::load::{fingerprint, read_chain, read_key, rfc3339};

/// Longest validity `issue` accepts, in days (about 100 years).
pub const MAX_DAYS: u32 = 36_500;

/// Key algorithm for minted certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256 with SHA-256 (the default).
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256.
    Rsa2048,
    /// RSA 3072 with PKCS#1 v1.5 SHA-256.
    Rsa3072,
    /// Ed25519. Served by the gateway (TLS 1.3 and 1.2), but many clients, browsers
    /// among them, do not accept Ed25519 server certificates.
    Ed25519,
}

/// Generate a key pair of the given kind.
pub(crate) fn generate_key(kind: KeyKind) -> Result<KeyPair, rcgen::Error> {
    match kind {
        KeyKind::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyKind::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyKind::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyKind::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
        KeyKind::Ed25519 => {
            // PKCS#8 v1 (RFC 8410): OpenSSL 3.0 cannot read the v2 form rcgen writes.
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let der = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8v1(&rng)
                .map_err(|_| rcgen::Error::KeyGenerationUnavailable)?;
            KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der.as_ref()), &rcgen::PKCS_ED25519)
        }
    }
}

/// What a leaf certificate is for: its extended key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// TLS server (`serverAuth`).
    Server,
    /// TLS client (`clientAuth`).
    Client,
}

/// One subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectAltName {
    /// A DNS name (`*.` allowed as the first label).
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
    /// An e-mail address (`email:` prefix).
    Email(String),
    /// A URI (`URI:` prefix).
    Uri(String),
}

impl FromStr for SubjectAltName {
    type Err = String;

    /// `name`, `1.2.3.4` or `::1`; or with a prefix `DNS:`, `IP:`, `email:`, `URI:`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (prefix, value) = match s.split_once(':') {
            Some((p, v)) if ["dns", "ip", "email", "uri"].contains(&p.to_ascii_lowercase().as_str()) => {
                (Some(p.to_ascii_lowercase()), v)
            }
            _ => (None, s),
        };
        let value = value.trim();
        match prefix.as_deref() {
            Some("ip") => value.parse().map(Self::Ip).map_err(|_| format!("SAN {s:?}: not an IP address")),
            Some("email") if is_email(value) => Ok(Self::Email(value.to_owned())),
            Some("email") => Err(format!("SAN {s:?}: not an e-mail address")),
            Some("uri") if value.contains(':') && value.is_ascii() && !value.contains(char::is_whitespace) => {
                Ok(Self::Uri(value.to_owned()))
            }
            Some("uri") => Err(format!("SAN {s:?}: not a URI")),
            Some(_) => dns_name(s, value),
            None => match value.parse() {
                Ok(ip) => Ok(Self::Ip(ip)),
                Err(_) => dns_name(s, value),
            },
        }
    }
}

impl fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(d) => write!(f, "DNS:{d}"),
            Self::Ip(ip) => write!(f, "IP:{ip}"),
            Self::Email(e) => write!(f, "email:{e}"),
            Self::Uri(u) => write!(f, "URI:{u}"),
        }
    }
}

fn is_email(s: &str) -> bool {
    matches!(s.split_once('@'), Some((local, domain)) if !local.is_empty() && dns_name(s, domain).is_ok())
        && s.is_ascii()
        && !s.contains(char::is_whitespace)
}

/// A DNS name: letters, digits, `-` and `_` in labels of 1 to 63, at most 253 in all; `*` only
/// as the whole first label.
fn dns_name(original: &str, name: &str) -> Result<SubjectAltName, String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let bad = |why: &str| format!("SAN {original:?}: not a DNS name or IP address ({why})");
    if name.is_empty() || name.len() > 253 {
        return Err(bad("length"));
    }
    for (i, label) in name.split('.').enumerate() {
        if i == 0 && label == "*" && name.contains('.') {
            continue;
        }
        if label.is_empty() || label.len() > 63 {
            return Err(bad("empty or over-long label"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(bad("letters, digits, '-' and '_' only; '*' only as the first label"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label starts or ends with '-'"));
        }
    }
    Ok(SubjectAltName::Dns(name))
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// Server or client.
    pub kind: CertKind,
    /// Subject CN; defaults to the first SAN's value.
    pub common_name: Option<String>,
    /// Subject alternative names (at least one for a server certificate).
    pub sans: Vec<SubjectAltName>,
    /// Validity from now, in days (1 to [`MAX_DAYS`]).
    pub days: u32,
    /// Key algorithm of the new key.
    pub key: KeyKind,
}

/// A PEM private key. Never printed: `Debug` shows only that it is there.
pub struct PrivateKeyPem(String);

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

/// A CA able to sign certificates.
pub struct SigningCa {
    issuer: Issuer<'static, KeyPair>,
    /// PEM of the CA file's certificates (the CA first), appended to every issued leaf.
    chain_pem: String,
    subject: String,
    not_after: OffsetDateTime,
}

impl fmt::Debug for SigningCa {
    // Hand-written: the signing key must never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningCa")
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl SigningCa {
    /// Load a CA from its certificate (PEM; the first certificate is the CA, any others are
    /// its own chain) and key, refusing one that is not a CA, cannot sign certificates, is not
    /// valid now, or whose key does not match.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<SigningCa, CertError> {
        let chain = read_chain(cert_path)?;
        let Some(der) = chain.first() else {
            return Err(CertError::NoCertificate { path: cert_path.to_path_buf(), hint: String::new() });
        };
        let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| CertError::CertParse {
            path: cert_path.to_path_buf(),
            index: 1,
            detail: e.to_string(),
        })?;
        let refuse = |why: String| CertError::BadRequest(format!("{}: {why}", cert_path.display()));
        if !cert.is_ca() {
            return Err(refuse("not a CA certificate (no basicConstraints CA:TRUE)".to_owned()));
        }
        if let Ok(Some(ku)) = cert.key_usage() {
            if !ku.value.key_cert_sign() {
                return Err(refuse("the CA's keyUsage does not allow signing certificates (keyCertSign)".to_owned()));
            }
        }
        let now = OffsetDateTime::now_utc();
        let (not_before, not_after) =
            (cert.validity().not_before.to_datetime(), cert.validity().not_after.to_datetime());
        if now < not_before {
            return Err(CertError::NotYetValid { path: cert_path.to_path_buf(), not_before: rfc3339(not_before) });
        }
        if now > not_after {
            return Err(CertError::Expired { path: cert_path.to_path_buf(), not_after: rfc3339(not_after) });
        }
        let key_der = read_key(key_path)?;
        let key = KeyPair::try_from(&key_der)
            .map_err(|e| CertError::KeyUnusable { path: key_path.to_path_buf(), detail: e.to_string() })?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(CertError::KeyMismatch {
                key_path: key_path.to_path_buf(),
                cert_path: cert_path.to_path_buf(),
            });
        }
        let subject = cert.subject().to_string();
        let issuer =
            Issuer::from_ca_cert_der(der, key).map_err(|e| refuse(format!("cannot sign with this CA: {e}")))?;
        Ok(SigningCa { issuer, chain_pem: chain.iter().map(pem_of).collect(), subject, not_after })
    }

    /// A new self-signed CA named `common_name`, valid `days` from `now`, that may sign
    /// leaves only (path length 0). Returns its key PEM too, for the caller to write.
    pub fn generate(
        kind: KeyKind,
        common_name: &str,
        days: i64,
        now: OffsetDateTime,
    ) -> Result<(SigningCa, PrivateKeyPem), String> {
        let key = generate_key(kind).map_err(|e| e.to_string())?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(days);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        let key_pem = PrivateKeyPem(key.serialize_pem());
        let ca = SigningCa {
            chain_pem: pem_of(cert.der()),
            subject: format!("CN={common_name}"),
            not_after: params.not_after,
            issuer: Issuer::new(params, key),
        };
        Ok((ca, key_pem))
    }

    /// Build from a parsed CA certificate and its key (the dev PKI's reuse path).
    pub(crate) fn from_parts(der: &CertificateDer<'_>, key: KeyPair) -> Option<SigningCa> {
        let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
        let subject = cert.subject().to_string();
        let not_after = cert.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(der, key).ok()?;
        Some(SigningCa { issuer, chain_pem: pem_of(der), subject, not_after })
    }

    /// PEM of the CA certificate(s).
    pub fn cert_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The CA's subject, e.g. `CN=Gateway Development CA`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// End of the CA's validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }
}

/// PEM text of one DER certificate.
fn pem_of(der: &CertificateDer<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Random positive 16-byte serial (browsers reject reused issuer+serial pairs).
pub(crate) fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "random number generator failed".to_owned())?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never zero-length after normalisation
    Ok(SerialNumber::from_slice(&bytes))
}

/// A freshly issued certificate and its key, not yet written.
#[derive(Debug)]
pub struct IssuedCert {
    /// Leaf then the CA's certificate(s), PEM.
    pub chain_pem: String,
    /// The new private key.
    pub key_pem: PrivateKeyPem,
    /// Subject of the leaf.
    pub subject: String,
    /// End of the leaf's validity.
    pub not_after: OffsetDateTime,
    /// SHA-256 of the leaf, `AB:CD:...`.
    pub sha256_fingerprint: String,
}

/// Issue a leaf certificate from `ca` as `request` says, valid from an hour before `now`
/// (clock skew) for `request.days`. Refused: a server certificate without a SAN, a client
/// certificate with neither CN nor SAN, a validity of 0 or past [`MAX_DAYS`] or past the CA's.
pub fn issue(ca: &SigningCa, request: &LeafRequest, now: OffsetDateTime) -> Result<IssuedCert, CertError> {
    let bad = |why: String| CertError::BadRequest(why);
    if request.days == 0 || request.days > MAX_DAYS {
        return Err(bad(format!("validity of {} days: must be 1 to {MAX_DAYS}", request.days)));
    }
    let not_after = now + Duration::days(i64::from(request.days));
    if not_after > ca.not_after {
        let left = (ca.not_after - now).whole_days();
        return Err(bad(format!(
            "{} days would outlast the CA {} (valid until {}); at most {left} days",
            request.days,
            ca.subject,
            rfc3339(ca.not_after)
        )));
    }
    if request.kind == CertKind::Server && request.sans.is_empty() {
        return Err(bad("a server certificate needs at least one SAN (--san): clients check names there".into()));
    }
    let common_name = match (&request.common_name, request.sans.first()) {
        (Some(cn), _) if !cn.trim().is_empty() => cn.trim().to_owned(),
        (_, Some(san)) => match san {
            SubjectAltName::Dns(v) | SubjectAltName::Email(v) | SubjectAltName::Uri(v) => v.clone(),
            SubjectAltName::Ip(ip) => ip.to_string(),
        },
        _ => return Err(bad("a client certificate needs a common name (--cn) or a SAN".into())),
    };
    if common_name.chars().count() > 64 || common_name.contains(char::is_control) {
        return Err(bad(format!("common name {common_name:?}: at most 64 printable characters")));
    }

    let generate = |detail: String| CertError::BadRequest(format!("certificate generation failed: {detail}"));
    let key = generate_key(request.key).map_err(|e| generate(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name.as_str());
    params.subject_alt_names = request.sans.iter().map(san_type).collect::<Result<_, _>>().map_err(bad)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match request.kind {
        CertKind::Server => ExtendedKeyUsagePurpose::ServerAuth,
        CertKind::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - Duration::hours(1);
    params.not_after = not_after;
    params.serial_number = Some(random_serial().map_err(generate)?);
    let cert = params.signed_by(&key, &ca.issuer).map_err(|e| generate(e.to_string()))?;

    let mut chain_pem = pem_of(cert.der());
    chain_pem.push_str(&ca.chain_pem);
    Ok(IssuedCert {
        chain_pem,
        key_pem: PrivateKeyPem(key.serialize_pem()),
        subject: format!("CN={common_name}"),
        not_after,
        sha256_fingerprint: fingerprint(cert.der()),
    })
}

fn san_type(san: &SubjectAltName) -> Result<SanType, String> {
    let ia5 = |v: &str| v.to_owned().try_into().map_err(|e: rcgen::Error| format!("SAN {san}: {e}"));
    Ok(match san {
        SubjectAltName::Dns(d) => SanType::DnsName(ia5(d)?),
        SubjectAltName::Ip(ip) => SanType::IpAddress(*ip),
        SubjectAltName::Email(e) => SanType::Rfc822Name(ia5(e)?),
        SubjectAltName::Uri(u) => SanType::URI(ia5(u)?),
    })
}

/// What [`write_issued`] replaced.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// SHA-256 of the first certificate of the file that was replaced, if there was a
    /// readable one: with the new fingerprint, the record of a rotation.
    pub previous_sha256: Option<String>,
}

/// Write `issued` to `cert_path` (chain, 0644) and `key_path` (0600), creating missing
/// directories (0700). Without `force`, refuses (before writing anything) if either exists;
/// with it, each file is replaced atomically.
pub fn write_issued(issued: &IssuedCert, cert_path: &Path, key_path: &Path, force: bool) -> Result<Written, CertError> {
    if cert_path == key_path {
        return Err(CertError::BadRequest(format!(
            "{}: the certificate and the key need different files",
            cert_path.display()
        )));
    }
    files::refuse_existing(&[cert_path, key_path], force)?;
    let previous_sha256 = read_chain(cert_path).ok().and_then(|c| c.first().map(|der| fingerprint(der.as_ref())));
    for path in [cert_path, key_path] {
        files::create_parent(path)?;
    }
    write_key_pem(key_path, &issued.key_pem, force)?;
    files::write(cert_path, issued.chain_pem.as_bytes(), false, force)?;
    Ok(Written { previous_sha256 })
}

/// Write a private key PEM (0600); a chain without its key is useless, so keys go first.
pub(crate) fn write_key_pem(path: &Path, key: &PrivateKeyPem, force: bool) -> Result<(), CertError> {
    files::write(path, key.0.as_bytes(), true, force)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_parse_with_and_without_prefix() {
        let ok = |s: &str| s.parse::<SubjectAltName>().unwrap();
        assert_eq!(ok("Example.COM"), SubjectAltName::Dns("example.com".into()));
        assert_eq!(ok("*.example.com"), SubjectAltName::Dns("*.example.com".into()));
        assert_eq!(ok("127.0.0.1"), SubjectAltName::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(ok("::1"), SubjectAltName::Ip("::1".parse().unwrap()));
        assert_eq!(ok("IP:10.0.0.1").to_string(), "IP:10.0.0.1");
        assert_eq!(ok("DNS:gw.internal"), SubjectAltName::Dns("gw.internal".into()));
        assert_eq!(ok("email:ops@example.com").to_string(), "email:ops@example.com");
        assert_eq!(ok("URI:spiffe://acme/gw").to_string(), "URI:spiffe://acme/gw");
        for bad in ["", "a..b", "-a.com", "a b", "*", "x.*.com", "IP:300.1.1.1", "email:nobody", "ex\u{e9}.com"] {
            let err = bad.parse::<SubjectAltName>().unwrap_err();
            assert!(err.contains("SAN"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn requests_out_of_bounds_are_refused_with_a_reason() {
        let now = OffsetDateTime::now_utc();
        let (ca, _) = SigningCa::generate(KeyKind::EcdsaP256, "Test CA", 30, now).unwrap();
        let req = |kind, sans: &[&str], days| LeafRequest {
            kind,
            common_name: None,
            sans: sans.iter().map(|s| s.parse().unwrap()).collect(),
            days,
            key: KeyKind::EcdsaP256,
        };
        let err = |r: LeafRequest| issue(&ca, &r, now).unwrap_err().to_string();
        assert!(err(req(CertKind::Server, &[], 10)).contains("at least one SAN"));
        assert!(err(req(CertKind::Client, &[], 10)).contains("--cn"));
        assert!(err(req(CertKind::Server, &["a.example"], 0)).contains("1 to"));
        let past_ca = err(req(CertKind::Server, &["a.example"], 31));
        assert!(past_ca.contains("outlast the CA") && past_ca.contains("Test CA"), "{past_ca}");
        let ok = issue(&ca, &req(CertKind::Client, &["email:ops@example.com"], 30), now).unwrap();
        assert_eq!(ok.subject, "CN=ops@example.com");
        assert!(!format!("{ok:?}").contains("PRIVATE KEY"), "Debug must not show the key");
    }

    #[test]
    fn loaded_ca_issues_each_key_type_the_loader_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::dev::mint(dir.path(), KeyKind::EcdsaP384).unwrap();
        let ca = SigningCa::load(&pki.ca_cert, &pki.ca_key).unwrap();
        assert_eq!(ca.subject(), "CN=Gateway Development CA");
        for (key, described) in [
            (KeyKind::EcdsaP256, "ECDSA P-256"),
            (KeyKind::EcdsaP384, "ECDSA P-384"),
            (KeyKind::Rsa3072, "RSA 3072"),
            (KeyKind::Ed25519, "Ed25519"),
        ] {
            let request = LeafRequest {
                kind: CertKind::Server,
                common_name: None,
                sans: vec!["gw.example".parse().unwrap(), "10.1.2.3".parse().unwrap()],
                days: 20,
                key,
            };
            let issued = issue(&ca, &request, OffsetDateTime::now_utc()).unwrap();
            let (cert, key_file) = (dir.path().join(format!("{key:?}.pem")), dir.path().join(format!("{key:?}.key")));
            let written = write_issued(&issued, &cert, &key_file, false).unwrap();
            assert!(written.previous_sha256.is_none());
            let info = crate::validate_cert_files(&cert, &key_file).unwrap();
            assert_eq!(info.key, described);
            assert_eq!(info.subject, "CN=gw.example");
            assert_eq!(info.sha256_fingerprint, issued.sha256_fingerprint);
            // The chain is the leaf, then the CA.
            let chain = read_chain(&cert).unwrap();
            assert_eq!(chain.len(), 2);
            assert_eq!(chain[1], read_chain(&pki.ca_cert).unwrap()[0]);
            // Again without force: refused, naming the file; with force: replaced, old fingerprint kept.
            let again = issue(&ca, &request, OffsetDateTime::now_utc()).unwrap();
            let err = write_issued(&again, &cert, &key_file, false).unwrap_err().to_string();
            assert!(err.contains(&format!("{key:?}.pem")) && err.contains("--force"), "{err}");
            let written = write_issued(&again, &cert, &key_file, true).unwrap();
            assert_eq!(written.previous_sha256.as_deref(), Some(issued.sha256_fingerprint.as_str()));
            assert_eq!(
                crate::validate_cert_files(&cert, &key_file).unwrap().sha256_fingerprint,
                again.sha256_fingerprint
            );
        }
    }

    #[test]
    fn not_a_ca_or_a_foreign_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = crate::dev::mint(&dir.path().join("a"), KeyKind::EcdsaP256).unwrap();
        let b = crate::dev::mint(&dir.path().join("b"), KeyKind::EcdsaP256).unwrap();
        let err = SigningCa::load(&a.server_cert, &a.server_key).unwrap_err().to_string();
        assert!(err.contains("server.pem") && err.contains("not a CA"), "{err}");
        let err = SigningCa::load(&a.ca_cert, &b.ca_key).unwrap_err();
        assert!(matches!(err, CertError::KeyMismatch { .. }), "{err}");
        let err = SigningCa::load(&dir.path().join("none.pem"), &a.ca_key).unwrap_err().to_string();
        assert!(err.contains("none.pem"), "{err}");
    }
}
