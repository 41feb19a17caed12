//! Development PKI: a local CA, a `localhost` server certificate and a client certificate.
//!
//! Development only. Lets the gateway start over HTTPS with zero setup ([`ensure_dev_pki`],
//! which reuses the CA across runs so a developer only has to trust `ca.pem` once), gives
//! tests real CA-signed chains ([`mint`]), and backs `gateway certs dev` ([`create_dev_set`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{KeyPair, PublicKeyData};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::error::CertError;
use crate::files::{create_parent, create_private_dir, refuse_existing, write};
pub use crate::issue::KeyKind;
use crate::issue::{issue, write_key_pem, CertKind, LeafRequest, SigningCa, SubjectAltName};
use crate::load::{fingerprint, read_chain, read_file, validate_cert_files};

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
        create_parent(path)?;
    }

    let ca = match load_ca(&pki.ca_cert, &pki.ca_key, now) {
        Some(ca) => ca,
        None => new_ca(KeyKind::EcdsaP256, now, &pki.ca_cert, &pki.ca_key, true)?,
    };
    let days = SERVER_DAYS.min((ca.not_after() - now).whole_days());
    write_leaf(&ca, &localhost_request(KeyKind::EcdsaP256, days), now, &pki.server_cert, &pki.server_key, true)?;
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
    let ca = new_ca(key, now, &pki.ca_cert, &pki.ca_key, true)?;
    write_leaf(&ca, &localhost_request(key, SERVER_DAYS), now, &pki.server_cert, &pki.server_key, true)?;
    Ok(pki)
}

/// What `gateway certs dev` makes.
#[derive(Debug, Clone)]
pub struct DevSetOptions {
    /// Key algorithm of all three keys.
    pub key: KeyKind,
    /// SANs of the server certificate (its CN is the first).
    pub server_sans: Vec<SubjectAltName>,
    /// CN of the client certificate.
    pub client_name: String,
}

impl Default for DevSetOptions {
    fn default() -> Self {
        DevSetOptions { key: KeyKind::EcdsaP256, server_sans: localhost_sans(), client_name: "client".to_owned() }
    }
}

/// One certificate of a [`DevSet`]: where it went and its fingerprints.
#[derive(Debug, Clone)]
pub struct DevFile {
    /// Certificate (chain) file.
    pub cert: PathBuf,
    /// Key file (0600).
    pub key: PathBuf,
    /// SHA-256 of the new certificate (the leaf for server and client).
    pub sha256_fingerprint: String,
    /// SHA-256 of the certificate it replaced (with `force`), if one was readable.
    pub previous_sha256: Option<String>,
}

/// The files written by [`create_dev_set`].
#[derive(Debug, Clone)]
pub struct DevSet {
    /// `ca.pem` / `ca.key`.
    pub ca: DevFile,
    /// `server.pem` (leaf then CA) / `server.key`.
    pub server: DevFile,
    /// `client.pem` (leaf then CA) / `client.key`.
    pub client: DevFile,
}

/// Development only: write a new CA (`ca.pem`, `ca.key`), a server certificate (`server.pem`,
/// leaf then CA, `server.key`) and a client certificate (`client.pem`, `client.key`,
/// `clientAuth`) into `dir` (created 0700). Keys are 0600. Refuses, before writing anything,
/// if any of the six files exists, unless `force`.
pub fn create_dev_set(dir: &Path, options: &DevSetOptions, force: bool) -> Result<DevSet, CertError> {
    let file = |cert: &str, key: &str| DevFile {
        cert: dir.join(cert),
        key: dir.join(key),
        sha256_fingerprint: String::new(),
        previous_sha256: None,
    };
    let mut set = DevSet {
        ca: file("ca.pem", "ca.key"),
        server: file("server.pem", "server.key"),
        client: file("client.pem", "client.key"),
    };
    let all = [&set.ca, &set.server, &set.client];
    refuse_existing(&all.iter().flat_map(|f| [f.cert.as_path(), f.key.as_path()]).collect::<Vec<_>>(), force)?;
    create_private_dir(dir)?;
    for f in [&mut set.ca, &mut set.server, &mut set.client] {
        f.previous_sha256 = read_chain(&f.cert).ok().and_then(|c| c.first().map(|d| fingerprint(d.as_ref())));
    }

    let now = OffsetDateTime::now_utc();
    let ca = new_ca(options.key, now, &set.ca.cert, &set.ca.key, force)?;
    set.ca.sha256_fingerprint = read_chain(&set.ca.cert)?.first().map(|d| fingerprint(d.as_ref())).unwrap_or_default();
    let server = LeafRequest {
        kind: CertKind::Server,
        common_name: None,
        sans: options.server_sans.clone(),
        days: SERVER_DAYS as u32,
        key: options.key,
    };
    set.server.sha256_fingerprint = write_leaf(&ca, &server, now, &set.server.cert, &set.server.key, force)?;
    let client = LeafRequest {
        kind: CertKind::Client,
        common_name: Some(options.client_name.clone()),
        sans: Vec::new(),
        days: SERVER_DAYS as u32,
        key: options.key,
    };
    set.client.sha256_fingerprint = write_leaf(&ca, &client, now, &set.client.cert, &set.client.key, force)?;
    Ok(set)
}

/// `localhost`, `127.0.0.1`, `::1`.
fn localhost_sans() -> Vec<SubjectAltName> {
    vec![
        SubjectAltName::Dns("localhost".to_owned()),
        SubjectAltName::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SubjectAltName::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]
}

/// The development server certificate: CN `localhost`, [`localhost_sans`].
fn localhost_request(key: KeyKind, days: i64) -> LeafRequest {
    LeafRequest {
        kind: CertKind::Server,
        common_name: Some("localhost".to_owned()),
        sans: localhost_sans(),
        days: u32::try_from(days.max(1)).unwrap_or(1),
        key,
    }
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
fn load_ca(cert_path: &Path, key_path: &Path, now: OffsetDateTime) -> Option<SigningCa> {
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
    let key_pem = String::from_utf8(read_file(key_path).ok()?).ok()?;
    let key = KeyPair::from_pem(&key_pem).ok()?;
    if key.subject_public_key_info() != cert.public_key().raw {
        return None;
    }
    SigningCa::from_parts(der, key)
}

/// Create a new self-signed development CA and write it (key first).
fn new_ca(
    kind: KeyKind,
    now: OffsetDateTime,
    cert_path: &Path,
    key_path: &Path,
    force: bool,
) -> Result<SigningCa, CertError> {
    let (ca, key) = SigningCa::generate(kind, CA_CN, CA_DAYS, now)
        .map_err(|detail| CertError::Generate { path: cert_path.to_path_buf(), detail })?;
    write_key_pem(key_path, &key, force)?;
    write(cert_path, ca.cert_pem().as_bytes(), false, force)?;
    Ok(ca)
}

/// Issue a leaf from `ca` and write chain + key (key first: a chain without its key is
/// useless, the reverse is harmless); returns the leaf's fingerprint.
fn write_leaf(
    ca: &SigningCa,
    request: &LeafRequest,
    now: OffsetDateTime,
    cert_path: &Path,
    key_path: &Path,
    force: bool,
) -> Result<String, CertError> {
    let issued = issue(ca, request, now).map_err(|e| match e {
        CertError::BadRequest(detail) => CertError::Generate { path: cert_path.to_path_buf(), detail },
        other => other,
    })?;
    write_key_pem(key_path, &issued.key_pem, force)?;
    write(cert_path, issued.chain_pem.as_bytes(), false, force)?;
    Ok(issued.sha256_fingerprint)
}
