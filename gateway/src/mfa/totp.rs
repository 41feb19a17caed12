//! TOTP (RFC 6238) over HOTP (RFC 4226), with aws-lc-rs HMAC: 6 digits, 30 s steps, the
//! step before and after accepted for clock drift, and a step at or below the last one
//! accepted refused as a replay.

use aws_lc_rs::hmac;

/// Digits of a code.
pub const DIGITS: u32 = 6;
/// Seconds per step.
pub const PERIOD: u64 = 30;
/// Steps accepted either side of the current one.
pub const SKEW: u64 = 1;

/// The HMAC under a TOTP secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA-1, only for authenticator apps that support nothing else.
    Sha1,
    /// HMAC-SHA-256, the default.
    Sha256,
}

impl Algorithm {
    /// From the user's configuration.
    pub fn of(method: gateway_config::MfaMethod) -> Algorithm {
        match method {
            gateway_config::MfaMethod::TotpSha1 => Algorithm::Sha1,
            gateway_config::MfaMethod::TotpSha256 => Algorithm::Sha256,
        }
    }

    /// The name in an `otpauth://` URI.
    pub fn uri_name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
        }
    }

    /// Secret length: the HMAC's output size (RFC 4226 asks for at least 160 bits).
    pub fn secret_len(self) -> usize {
        match self {
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
        }
    }

    /// One byte for the sealed secret file.
    pub(crate) fn tag(self) -> u8 {
        match self {
            Algorithm::Sha1 => 1,
            Algorithm::Sha256 => 2,
        }
    }

    pub(crate) fn from_tag(tag: u8) -> Option<Algorithm> {
        match tag {
            1 => Some(Algorithm::Sha1),
            2 => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            Algorithm::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Algorithm::Sha256 => hmac::HMAC_SHA256,
        }
    }
}

/// HOTP (RFC 4226 §5.3): dynamic truncation of HMAC(secret, counter), `digits` decimal digits.
pub fn hotp(secret: &[u8], algorithm: Algorithm, counter: u64, digits: u32) -> u32 {
    let key = hmac::Key::new(algorithm.hmac(), secret);
    let tag = hmac::sign(&key, &counter.to_be_bytes());
    let mac = tag.as_ref();
    let offset = usize::from(mac.last().copied().unwrap_or(0) & 0x0f);
    let mut word = [0u8; 4];
    for (i, b) in word.iter_mut().enumerate() {
        *b = mac.get(offset + i).copied().unwrap_or(0);
    }
    let binary = u32::from_be_bytes(word) & 0x7fff_ffff;
    binary % 10u32.pow(digits.min(9))
}

/// The TOTP step of `unix_seconds`.
pub fn step(unix_seconds: u64) -> u64 {
    unix_seconds / PERIOD
}

/// Why a code was refused (for the audit trail; the client hears only "refused").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not exactly six ASCII digits.
    Malformed,
    /// Matches no step within the window.
    Wrong,
    /// Matches a step already used (or older than the last one used).
    Replayed,
}

impl Refusal {
    /// For the audit trail.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Malformed => "mfa code is not 6 digits",
            Refusal::Wrong => "wrong mfa code",
            Refusal::Replayed => "mfa code already used (replay)",
        }
    }
}

/// Parse a presented code: six ASCII digits, surrounding white space ignored.
fn parse(code: &str) -> Option<u32> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

/// Check `code` at `unix_seconds` against the steps `now - SKEW ..= now + SKEW`; steps at or
/// below `last_used` are replays. Returns the step matched. Every candidate is computed and
/// compared, so the time taken does not say which step matched.
pub fn verify(
    secret: &[u8],
    algorithm: Algorithm,
    code: &str,
    unix_seconds: u64,
    last_used: Option<u64>,
) -> Result<u64, Refusal> {
    let presented = parse(code).ok_or(Refusal::Malformed)?;
    let now = step(unix_seconds);
    let mut matched: Option<u64> = None;
    for s in now.saturating_sub(SKEW)..=now.saturating_add(SKEW) {
        let expected = hotp(secret, algorithm, s, DIGITS);
        let equal = std::hint::black_box(expected ^ presented) == 0;
        // The latest step that matches (two steps may share a code).
        if equal {
            matched = Some(s);
        }
    }
    match matched {
        None => Err(Refusal::Wrong),
        Some(s) if last_used.is_some_and(|l| s <= l) => Err(Refusal::Replayed),
        Some(s) => Ok(s),
    }
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding, as `otpauth://` URIs carry secrets.
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32.get(((buffer >> bits) & 31) as usize).copied().unwrap_or(b'A')));
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(BASE32.get(((buffer << (5 - bits)) & 31) as usize).copied().unwrap_or(b'A')));
    }
    out
}

/// The `otpauth://totp/ISSUER:USER?secret=..&issuer=..&algorithm=..&digits=6&period=30` URI
/// (Google Authenticator key URI format) that enrolls an authenticator app.
pub fn uri(issuer: &str, user: &str, secret: &[u8], algorithm: Algorithm) -> zeroize::Zeroizing<String> {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let secret = zeroize::Zeroizing::new(base32(secret));
    zeroize::Zeroizing::new(format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm={}&digits={DIGITS}&period={PERIOD}",
        enc(issuer),
        enc(user),
        secret.as_str(),
        enc(issuer),
        algorithm.uri_name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA1_SEED: &[u8] = b"12345678901234567890";
    const SHA256_SEED: &[u8] = b"12345678901234567890123456789012";

    /// RFC 6238 Appendix B (8 digits).
    #[test]
    fn rfc6238_test_vectors() {
        let vectors: &[(u64, u32, u32)] = &[
            (59, 94287082, 46119246),
            (1111111109, 7081804, 68084774),
            (1111111111, 14050471, 67062674),
            (1234567890, 89005924, 91819424),
            (2000000000, 69279037, 90698825),
            (20000000000, 65353130, 77737706),
        ];
        for &(t, sha1, sha256) in vectors {
            assert_eq!(hotp(SHA1_SEED, Algorithm::Sha1, step(t), 8), sha1, "SHA-1 at {t}");
            assert_eq!(hotp(SHA256_SEED, Algorithm::Sha256, step(t), 8), sha256, "SHA-256 at {t}");
        }
    }

    /// RFC 4226 Appendix D (HOTP, SHA-1, 6 digits).
    #[test]
    fn rfc4226_test_vectors() {
        let expected = [755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489];
        for (counter, code) in expected.iter().enumerate() {
            assert_eq!(hotp(SHA1_SEED, Algorithm::Sha1, counter as u64, 6), *code);
        }
    }

    #[test]
    fn window_skew_and_replay() {
        let t = 1_111_111_111;
        let code = |s: u64| format!("{:06}", hotp(SHA256_SEED, Algorithm::Sha256, s, 6));
        let now = step(t);
        assert_eq!(verify(SHA256_SEED, Algorithm::Sha256, &code(now), t, None), Ok(now));
        assert_eq!(verify(SHA256_SEED, Algorithm::Sha256, &code(now - 1), t, None), Ok(now - 1));
        assert_eq!(verify(SHA256_SEED, Algorithm::Sha256, &code(now + 1), t, None), Ok(now + 1));
        assert_eq!(verify(SHA256_SEED, Algorithm::Sha256, &code(now - 2), t, None), Err(Refusal::Wrong));
        assert_eq!(verify(SHA256_SEED, Algorithm::Sha256, &code(now + 2), t, None), Err(Refusal::Wrong));
        // Once used, the same step (and any older) is a replay; a newer one still works.
        assert_eq!(verify(SHA256_SEED, Algorithm::Sha256, &code(now), t, Some(now)), Err(Refusal::Replayed));
        assert_eq!(verify(SHA256_SEED, Algorithm::Sha256, &code(now - 1), t, Some(now)), Err(Refusal::Replayed));
        assert_eq!(verify(SHA256_SEED, Algorithm::Sha256, &code(now + 1), t, Some(now)), Ok(now + 1));
        // The SHA-1 code of the same step is not the SHA-256 one.
        let sha1 = format!("{:06}", hotp(SHA256_SEED, Algorithm::Sha1, now, 6));
        assert_ne!(verify(SHA256_SEED, Algorithm::Sha256, &sha1, t, None), Ok(now));
        for bad in ["", "12345", "1234567", "12a456", "+12345", "１２３４５６"] {
            assert_eq!(verify(SHA256_SEED, Algorithm::Sha256, bad, t, None), Err(Refusal::Malformed), "{bad:?}");
        }
        assert_eq!(verify(SHA256_SEED, Algorithm::Sha256, &format!(" {}\n", code(now)), t, None), Ok(now));
    }

    #[test]
    fn base32_and_uri() {
        // RFC 4648 §10.
        for (input, output) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32(input.as_bytes()), output);
        }
        let u = uri("ACME Gateway", "alice", SHA1_SEED, Algorithm::Sha1);
        assert_eq!(
            u.as_str(),
            "otpauth://totp/ACME%20Gateway:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=ACME%20Gateway&algorithm=SHA1&digits=6&period=30"
        );
    }
}
