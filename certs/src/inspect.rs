//! Reading certificates for people and monitors (`gateway certs inspect` and `certs check`).
//!
//! [`inspect_file`] summarises every certificate of a PEM file: names, validity, key (with
//! the gateway's own key policy, [`crate::load`]'s), signature algorithm and the SHA-256
//! fingerprint as `openssl x509 -fingerprint -sha256` prints it. [`CertSummary::standing`]
//! says whether one stays valid for a given number of days.

use std::net::IpAddr;
use std::path::Path;

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid2sn, oid_registry};
use x509_parser::prelude::FromDer;

use crate::error::CertError;
use crate::load::{classify_key, fingerprint, read_chain, KeyRefusal};

/// What one certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// 1-based position in its file.
    pub index: usize,
    /// Subject DN, e.g. `CN=localhost`.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Subject alternative names: `DNS:name`, `IP:addr`, `email:..`, `URI:..`.
    pub sans: Vec<String>,
    /// Serial number, uppercase hex (as `openssl x509 -serial`).
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Key type, e.g. "ECDSA P-256", "RSA 3072", "Ed25519".
    pub key_type: String,
    /// Key size in bits, where known.
    pub key_bits: Option<usize>,
    /// Why the gateway would refuse this key for its TLS listener, if it would.
    pub key_refused: Option<String>,
    /// Signature algorithm, e.g. `ecdsa-with-SHA256`.
    pub signature_algorithm: String,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    /// Extended key usages, e.g. `serverAuth`.
    pub extended_key_usage: Vec<String>,
    /// SHA-256 of the DER, `AB:CD:..` (as `openssl x509 -fingerprint -sha256`).
    pub sha256_fingerprint: String,
}

/// Where a certificate stands against a number of days from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Valid now and for at least the days asked.
    Valid,
    /// Valid now but ends within the days asked.
    ExpiresSoon,
    /// Already ended.
    Expired,
    /// Not valid yet.
    NotYetValid,
}

impl CertSummary {
    /// Whole days from `now` to the end of validity (negative once expired).
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        (self.not_after - now).whole_days()
    }

    /// Whether this certificate is valid at `now` and still at `now + min_days`.
    pub fn standing(&self, now: OffsetDateTime, min_days: u32) -> Standing {
        if now < self.not_before {
            Standing::NotYetValid
        } else if now > self.not_after {
            Standing::Expired
        } else if self.not_after < now + time::Duration::days(i64::from(min_days)) {
            Standing::ExpiresSoon
        } else {
            Standing::Valid
        }
    }
}

/// Summarise every certificate in the PEM file at `path` (at least one, or an error naming
/// the file).
pub fn inspect_file(path: &Path) -> Result<Vec<CertSummary>, CertError> {
    read_chain(path)?
        .iter()
        .enumerate()
        .map(|(i, der)| {
            summarize(der.as_ref(), i + 1).map_err(|detail| CertError::CertParse {
                path: path.to_path_buf(),
                index: i + 1,
                detail,
            })
        })
        .collect()
}

/// Summarise one DER certificate.
fn summarize(der: &[u8], index: usize) -> Result<CertSummary, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let sans = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext.value.general_names.iter().map(general_name).collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("subjectAltName: {e}")),
    };
    let extended_key_usage = match cert.extended_key_usage() {
        Ok(Some(ext)) => {
            let eku = ext.value;
            [
                (eku.server_auth, "serverAuth"),
                (eku.client_auth, "clientAuth"),
                (eku.code_signing, "codeSigning"),
                (eku.email_protection, "emailProtection"),
                (eku.time_stamping, "timeStamping"),
                (eku.ocsp_signing, "OCSPSigning"),
                (eku.any, "anyExtendedKeyUsage"),
            ]
            .into_iter()
            .filter(|(set, _)| *set)
            .map(|(_, name)| name.to_owned())
            .chain(eku.other.iter().map(|oid| oid.to_id_string()))
            .collect()
        }
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("extendedKeyUsage: {e}")),
    };
    let (key_type, key_bits, key_refused) = match classify_key(cert.public_key()) {
        Ok((name, bits)) => (name, Some(bits), None),
        Err(KeyRefusal::Weak { bits }) => {
            (format!("RSA {bits}"), Some(bits), Some("RSA below 2048 bits is refused".to_owned()))
        }
        Err(KeyRefusal::Unsupported(what)) => (what, None, Some("the gateway does not serve this key type".to_owned())),
    };
    let sig_oid = &cert.signature_algorithm.algorithm;
    Ok(CertSummary {
        index,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans,
        serial: cert.tbs_certificate.raw_serial().iter().map(|b| format!("{b:02X}")).collect(),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        key_type,
        key_bits,
        key_refused,
        signature_algorithm: oid2sn(sig_oid, oid_registry()).map_or_else(|_| sig_oid.to_id_string(), str::to_owned),
        is_ca: cert.is_ca(),
        extended_key_usage,
        sha256_fingerprint: fingerprint(der),
    })
}

fn general_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::IPAddress(bytes) => match <[u8; 4]>::try_from(*bytes) {
            Ok(v4) => format!("IP:{}", IpAddr::from(v4)),
            Err(_) => match <[u8; 16]>::try_from(*bytes) {
                Ok(v6) => format!("IP:{}", IpAddr::from(v6)),
                Err(_) => format!("IP:<{} bytes>", bytes.len()),
            },
        },
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::DirectoryName(n) => format!("DirName:{n}"),
        GeneralName::RegisteredID(oid) => format!("RID:{}", oid.to_id_string()),
        GeneralName::OtherName(oid, _) => format!("othername:{}", oid.to_id_string()),
        other => format!("{other:?}").chars().filter(|c| !c.is_control()).take(80).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn summary(not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertSummary {
        CertSummary {
            index: 1,
            subject: String::new(),
            issuer: String::new(),
            sans: Vec::new(),
            serial: String::new(),
            not_before,
            not_after,
            key_type: String::new(),
            key_bits: None,
            key_refused: None,
            signature_algorithm: String::new(),
            is_ca: false,
            extended_key_usage: Vec::new(),
            sha256_fingerprint: String::new(),
        }
    }

    #[test]
    fn standing_against_days() {
        let now = OffsetDateTime::now_utc();
        let five = summary(now - Duration::hours(1), now + Duration::days(5));
        assert_eq!(five.standing(now, 30), Standing::ExpiresSoon);
        assert_eq!(five.standing(now, 5), Standing::Valid);
        assert_eq!(five.standing(now, 6), Standing::ExpiresSoon);
        assert_eq!(five.standing(now, 0), Standing::Valid);
        assert_eq!(five.days_left(now), 5);
        assert_eq!(summary(now - Duration::days(9), now - Duration::days(1)).standing(now, 0), Standing::Expired);
        assert_eq!(summary(now + Duration::days(1), now + Duration::days(9)).standing(now, 0), Standing::NotYetValid);
    }
}
