//! SHA-256 helpers and the RFC 9530 `sha-256=:…:` digest field syntax.

use base64::Engine;

/// One-shot SHA-256.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Incremental SHA-256 over a streamed body.
#[derive(Clone)]
pub struct Sha256(aws_lc_rs::digest::Context);

impl Default for Sha256 {
    fn default() -> Self {
        Sha256(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }
}

impl Sha256 {
    /// Feed more bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything fed.
    pub fn finish(self) -> [u8; 32] {
        let d = self.0.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

/// Format a digest as an RFC 9530 field value: `sha-256=:<base64>:`.
pub fn to_digest_field(sha: &[u8; 32]) -> String {
    format!("sha-256=:{}:", base64::engine::general_purpose::STANDARD.encode(sha))
}

/// Why a `Content-Digest`/`Repr-Digest` header could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestFieldError {
    /// Syntax is not a dictionary of `alg=:base64:` members.
    #[error("malformed digest field; expected sha-256=:<base64>:")]
    Malformed,
    /// Only algorithms we do not verify were offered.
    #[error("no sha-256 member in digest field (only sha-256 is supported)")]
    NoSha256,
}

/// Find the `sha-256` member of an RFC 9530 dictionary such as
/// `sha-512=:…:, sha-256=:…:`. Other algorithms are ignored.
pub fn parse_digest_field(value: &str) -> Result<[u8; 32], DigestFieldError> {
    for member in value.split(',') {
        let (alg, rest) = member.trim().split_once('=').ok_or(DigestFieldError::Malformed)?;
        if !alg.trim().eq_ignore_ascii_case("sha-256") {
            continue;
        }
        let b64 = rest.trim().strip_prefix(':').and_then(|r| r.strip_suffix(':')).ok_or(DigestFieldError::Malformed)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| DigestFieldError::Malformed)?;
        return <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| DigestFieldError::Malformed);
    }
    Err(DigestFieldError::NoSha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_field_round_trip() {
        let d = sha256(b"hello");
        let field = to_digest_field(&d);
        assert_eq!(parse_digest_field(&field), Ok(d));
        let multi = format!("sha-512=:AAAA:, {field}");
        assert_eq!(parse_digest_field(&multi), Ok(d));
        assert_eq!(parse_digest_field("md5=:AAAA:"), Err(DigestFieldError::NoSha256));
        assert_eq!(parse_digest_field("sha-256=abc"), Err(DigestFieldError::Malformed));
        assert_eq!(parse_digest_field("sha-256=:AAAA:"), Err(DigestFieldError::Malformed));
    }
}
