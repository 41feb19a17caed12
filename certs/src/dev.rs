//! Development PKI: a local CA and a `localhost` server certificate.
//!
//! Development only. Lets the gateway start over HTTPS with zero setup, and
//! gives tests real CA-signed chains. The CA is reused across runs so a
//! developer only has to trust `ca.pem` once.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, RsaKeySize, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::error::CertError;
use crate::load::{read_chain, read_file, validate_cert_files};

/// Subject CN of the development CA.
const CA_CN: &str = "Gateway Development CA";
/// CA lifetime.
const CA_DAYS: i64 = 365;
/// Server certificate lifetime.
const SERVER_DAYS: i64 = 90;
/// Reuse an existing CA only if it stays valid at least this long.
const CA_MIN_REMAINING_DAYS: i64 = 7;

/// Paths of a development PKI, and whether this call created the material.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// CA certificate (PEM); trust this in a browser / client for local testing.
    pub ca_cert: PathBuf,
    /// CA private key (PEM, mode 0600).
    pub ca_key: PathBuf,
    /// Server chain (PEM): leaf first, then the CA.
    pub server_cert: PathBuf,
    /// Server private key (PEM, mode 0600).
    pub server_key: PathBuf,
    /// `true` if a new server certificate was written by this call.
    pub generated: bool,
}

/// Key algorithm for minted certificates (CA and server use the same kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256 with SHA-256 (the dev default).
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256.
    Rsa2048,
    /// RSA 3072 with PKCS#1 v1.5 SHA-256.
    Rsa3072,
}

/// Development only: create (or reuse if present and the server cert is valid for > 1 more day) a dev CA and a server certificate signed by it.
///
/// CA files are `dir/ca.pem` and `dir/ca.key`; the server chain (leaf then CA)
/// and key go to the given paths, whose parent directories are created (0700).
/// A still-valid CA is kept when only the server certificate needs renewing.
pub fn ensure_dev_pki(dir: &Path, server_cert: &Path, server_key: &Path) -> Result<DevPki, CertError> {
    let mut pki = DevPki {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        server_cert: server_cert.to_path_buf(),
        server_key: server_key.to_path_buf(),
        generated: false,
    };
    let now = OffsetDateTime::now_utc();

    if server_is_reusable(&pki, now) {
        return Ok(pki);
    }

    create_private_dir(dir)?;
    for path in [server_cert, server_key] {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_private_dir(parent)?;
        }
    }

    let ca = match load_ca(&pki.ca_cert, &pki.ca_key, now) {
        Some(ca) => ca,
        None => {
            let ca = new_ca(KeyKind::EcdsaP256, now, &pki.ca_cert)?;
            write_file(&pki.ca_key, ca.issuer.key().serialize_pem().as_bytes(), true)?;
            write_file(&pki.ca_cert, ca.pem.as_bytes(), false)?;
            ca
        }
    };
    let server_not_after = (now + Duration::days(SERVER_DAYS)).min(ca.not_after);
    write_server(&ca, KeyKind::EcdsaP256, now, server_not_after, &pki)?;
    pki.generated = true;
    Ok(pki)
}

/// Mint a fresh CA + server cert into `dir` (ca.pem, ca.key, server.pem, server.key); for tests.
pub fn mint(dir: &Path, key: KeyKind) -> Result<DevPki, CertError> {
    let pki = DevPki {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        generated: true,
    };
    let now = OffsetDateTime::now_utc();
    create_private_dir(dir)?;
    let ca = new_ca(key, now, &pki.ca_cert)?;
    write_file(&pki.ca_key, ca.issuer.key().serialize_pem().as_bytes(), true)?;
    write_file(&pki.ca_cert, ca.pem.as_bytes(), false)?;
    write_server(&ca, key, now, now + Duration::days(SERVER_DAYS), &pki)?;
    Ok(pki)
}

/// A CA able to sign server certificates.
struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    /// PEM of the CA certificate (exactly one block).
    pem: String,
    not_after: OffsetDateTime,
}

/// True if the existing server chain/key are valid for > 1 day and chain up to the current CA file.
fn server_is_reusable(pki: &DevPki, now: OffsetDateTime) -> bool {
    let Ok(info) = validate_cert_files(&pki.server_cert, &pki.server_key) else {
        return false;
    };
    if info.not_after <= now + Duration::days(1) {
        return false;
    }
    let (Ok(chain), Ok(ca)) = (read_chain(&pki.server_cert), read_chain(&pki.ca_cert)) else {
        return false;
    };
    // Key must also exist, otherwise a future renewal could not reuse the CA.
    pki.ca_key.is_file() && chain.len() > 1 && chain.last() == ca.first()
}

/// Load `ca.pem` + `ca.key` if they form a usable, sufficiently long-lived CA.
///
/// Anything wrong (missing, corrupt, mismatched, expiring) yields `None`, and
/// the caller generates a fresh CA: this is development material.
fn load_ca(cert_path: &Path, key_path: &Path, now: OffsetDateTime) -> Option<DevCa> {
    let chain = read_chain(cert_path).ok()?;
    let [der] = chain.as_slice() else {
        return None;
    };
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let not_after = cert.validity().not_after.to_datetime();
    if !cert.is_ca()
        || now < cert.validity().not_before.to_datetime()
        || not_after <= now + Duration::days(CA_MIN_REMAINING_DAYS)
    {
        return None;
    }
    let pem = extract_cert_block(&String::from_utf8(read_file(cert_path).ok()?).ok()?)?;
    let key_pem = String::from_utf8(read_file(key_path).ok()?).ok()?;
    let key = KeyPair::from_pem(&key_pem).ok()?;
    if key.subject_public_key_info() != cert.public_key().raw {
        return None;
    }
    let issuer = Issuer::from_ca_cert_der(der, key).ok()?;
    Some(DevCa { issuer, pem, not_after })
}

/// Generate a key pair of the given kind.
fn generate_key(kind: KeyKind) -> Result<KeyPair, rcgen::Error> {
    match kind {
        KeyKind::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyKind::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyKind::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyKind::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
    }
}

/// Random positive 16-byte serial (browsers reject reused issuer+serial pairs).
fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "random number generator failed".to_owned())?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never zero-length after normalisation
    Ok(SerialNumber::from_slice(&bytes))
}

fn gen_err(path: &Path) -> impl Fn(String) -> CertError + '_ {
    move |detail| CertError::Generate { path: path.to_path_buf(), detail }
}

/// Create a new self-signed development CA (not yet written to disk).
fn new_ca(kind: KeyKind, now: OffsetDateTime, ca_path: &Path) -> Result<DevCa, CertError> {
    let err = gen_err(ca_path);
    let key = generate_key(kind).map_err(|e| err(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_CN);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(CA_DAYS);
    params.serial_number = Some(random_serial().map_err(&err)?);
    let cert = params.self_signed(&key).map_err(|e| err(e.to_string()))?;
    Ok(DevCa { pem: cert.pem(), not_after: params.not_after, issuer: Issuer::new(params, key) })
}

/// Issue a `localhost` server certificate from `ca` and write chain + key.
fn write_server(
    ca: &DevCa,
    kind: KeyKind,
    now: OffsetDateTime,
    not_after: OffsetDateTime,
    pki: &DevPki,
) -> Result<(), CertError> {
    let err = gen_err(&pki.server_cert);
    let key = generate_key(kind).map_err(|e| err(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".to_owned().try_into().map_err(|e: rcgen::Error| err(e.to_string()))?),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - Duration::hours(1);
    params.not_after = not_after;
    params.serial_number = Some(random_serial().map_err(&err)?);
    let cert = params.signed_by(&key, &ca.issuer).map_err(|e| err(e.to_string()))?;

    let mut chain = cert.pem();
    if !chain.ends_with('\n') {
        chain.push('\n');
    }
    chain.push_str(&ca.pem);
    // Key first: a chain without its key is useless, the reverse is harmless.
    write_file(&pki.server_key, key.serialize_pem().as_bytes(), true)?;
    write_file(&pki.server_cert, chain.as_bytes(), false)
}

/// The single `CERTIFICATE` block of a PEM text, normalised to end in a newline.
fn extract_cert_block(text: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = text.find(BEGIN)?;
    let end = start + text.get(start..)?.find(END)? + END.len();
    Some(format!("{}\n", text.get(start..end)?))
}

/// Create `dir` (and missing parents) with mode 0700; existing dirs are left alone.
fn create_private_dir(dir: &Path) -> Result<(), CertError> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| CertError::Io { path: dir.to_path_buf(), source })
}

/// Atomically write `contents` to `path` (temp file + rename); `private` => mode 0600.
///
/// Atomic so a gateway reloading on file change never reads a half-written file.
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), CertError> {
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| CertError::Io { path: p, source }
    };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));

    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let result = (|| {
        let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
        #[cfg(unix)]
        {
            // `mode` only applies on creation; enforce it if a stale temp file existed.
            use std::os::unix::fs::PermissionsExt;
            let mode = if private { 0o600 } else { 0o644 };
            file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io_err(&tmp))?;
        }
        file.write_all(contents).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_single_block() {
        let text = "subject=CN=x\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\ntrailer";
        assert_eq!(extract_cert_block(text).unwrap(), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        assert!(extract_cert_block("-----BEGIN CERTIFICATE-----\nAAAA").is_none());
    }
}
