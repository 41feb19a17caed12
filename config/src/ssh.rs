//! SSH-specific checks: algorithm allow-lists, `authorized_keys` lines and
//! password hashes.

use crate::SshProfile;

/// One configurable SSH algorithm list: its key, what it holds, the names
/// accepted, and the names each profile offers when the key is absent (in
/// preference order).
pub(crate) struct AlgorithmKind {
    /// TOML key in `[sftp]`.
    pub(crate) key: &'static str,
    /// What one entry is, for messages ("key exchange", "cipher", ...).
    pub(crate) what: &'static str,
    /// Every accepted name; the `compatible` list comes first.
    pub(crate) accepted: &'static [&'static str],
    /// Offered by the `strict` profile (the default).
    strict: &'static [&'static str],
    /// Offered by the `compatible` profile.
    compatible: &'static [&'static str],
    /// Offered by the `post-quantum` profile.
    post_quantum: &'static [&'static str],
}

impl AlgorithmKind {
    /// The names `profile` offers when the key is absent.
    pub(crate) fn defaults(&self, profile: SshProfile) -> &'static [&'static str] {
        match profile {
            SshProfile::Strict => self.strict,
            SshProfile::Compatible => self.compatible,
            SshProfile::PostQuantum => self.post_quantum,
        }
    }
}

/// Key exchanges: hybrid post-quantum first, then the classical ones every
/// profile but `post-quantum` keeps for clients older than OpenSSH 9.9.
const KEX_NAMES: &[&str] = &[
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
];

pub(crate) const KEX: AlgorithmKind = AlgorithmKind {
    key: "kex",
    what: "key exchange",
    accepted: KEX_NAMES,
    strict: KEX_NAMES,
    compatible: KEX_NAMES,
    post_quantum: &["mlkem768x25519-sha256"],
};

/// AEAD ciphers: what `strict` and `post-quantum` offer.
const AEAD_CIPHERS: &[&str] = &["aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com"];
/// AEAD first, then AES-CTR for clients without AEAD (libssh2 before 1.11).
const CIPHER_NAMES: &[&str] = &[
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
];

pub(crate) const CIPHERS: AlgorithmKind = AlgorithmKind {
    key: "ciphers",
    what: "cipher",
    accepted: CIPHER_NAMES,
    strict: AEAD_CIPHERS,
    compatible: CIPHER_NAMES,
    post_quantum: AEAD_CIPHERS,
};

/// Encrypt-then-MAC only: what `strict` and `post-quantum` offer.
const ETM_MACS: &[&str] = &["hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com"];
/// Encrypt-then-MAC first, then the classic SHA-2 HMACs (libssh2 before 1.11 has no ETM).
const MAC_NAMES: &[&str] =
    &["hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com", "hmac-sha2-512", "hmac-sha2-256"];

pub(crate) const MACS: AlgorithmKind = AlgorithmKind {
    key: "macs",
    what: "MAC",
    accepted: MAC_NAMES,
    strict: ETM_MACS,
    compatible: MAC_NAMES,
    post_quantum: ETM_MACS,
};

/// Host key signatures: the same in every profile (never `ssh-rsa`).
const HOST_KEY_NAMES: &[&str] = &["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"];

pub(crate) const HOST_KEY_ALGORITHMS: AlgorithmKind = AlgorithmKind {
    key: "host_key_algorithms",
    what: "host key algorithm",
    accepted: HOST_KEY_NAMES,
    strict: HOST_KEY_NAMES,
    compatible: HOST_KEY_NAMES,
    post_quantum: HOST_KEY_NAMES,
};

/// The four lists, in the order their keys are read.
pub(crate) const ALGORITHM_KINDS: [&AlgorithmKind; 4] = [&KEX, &CIPHERS, &MACS, &HOST_KEY_ALGORITHMS];

/// Why a name outside the allow-list of `kind` is refused, so operators learn
/// what is wrong with it rather than just that it is missing from a list.
pub(crate) fn refusal_reason(kind: &AlgorithmKind, name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if lower == "none" {
        return "no encryption/integrity".to_owned();
    }
    if lower.contains("sha1") || lower == "ssh-rsa" || lower.starts_with("ssh-rsa-cert") {
        return "uses SHA-1".to_owned();
    }
    if lower.contains("-cbc") || lower == "rijndael-cbc@lysator.liu.se" {
        return "CBC mode".to_owned();
    }
    if lower.starts_with("arcfour") {
        return "RC4 (arcfour) is broken".to_owned();
    }
    if lower.contains("md5") {
        return "uses MD5".to_owned();
    }
    if lower.starts_with("ssh-dss") {
        return "DSA keys are limited to 1024 bits".to_owned();
    }
    if let Some(other) = ALGORITHM_KINDS.iter().find(|k| k.key != kind.key && k.accepted.contains(&name)) {
        return format!("it is a {} name, not a {} name", other.what, kind.what);
    }
    "not allowed".to_owned()
}

/// Key types an `authorized_keys` line may start with.
const KEY_TYPE_PREFIXES: &[&str] = &["ssh-", "ecdsa-sha2-", "sk-"];

/// Light check of one OpenSSH `authorized_keys` line (already trimmed): the
/// gateway parses the key itself, this only catches obvious mistakes early.
pub(crate) fn check_authorized_key(line: &str) -> Result<(), String> {
    if line.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if line.contains(['\n', '\r']) {
        return Err("must be a single line (one key per array entry)".to_owned());
    }
    let mut fields = line.split_whitespace();
    let key_type = fields.next().unwrap_or_default();
    if !KEY_TYPE_PREFIXES.iter().any(|p| key_type.starts_with(p)) {
        return Err("does not start with a key type (ssh-..., ecdsa-sha2-..., sk-...); \
             options before the key type are not supported"
            .to_owned());
    }
    let Some(blob) = fields.next() else {
        return Err(format!("expected \"{key_type} <base64 key> [comment]\", found only the key type"));
    };
    if !is_base64(blob) {
        return Err("the second field (the key) is not base64".to_owned());
    }
    Ok(())
}

/// Identity of a key line for duplicate detection: key type and key, ignoring the comment.
pub(crate) fn key_identity(line: &str) -> (&str, &str) {
    let mut fields = line.split_whitespace();
    (fields.next().unwrap_or_default(), fields.next().unwrap_or_default())
}

/// Non-empty and only base64 characters, with `=` padding only at the end.
fn is_base64(s: &str) -> bool {
    let data = s.trim_end_matches('=');
    !data.is_empty()
        && s.len() - data.len() <= 2
        && data.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Smallest accepted PBKDF2 iteration count.
const MIN_ITERATIONS: u32 = 100_000;

/// Checks the shape of `pbkdf2-sha256$<iterations>$<salt base64>$<hash base64>`.
/// Messages never echo the value, which is as sensitive as a password.
pub(crate) fn check_password_hash(s: &str) -> Result<(), String> {
    const FORMAT: &str = "expected \"pbkdf2-sha256$<iterations>$<salt base64>$<hash base64>\"";
    let parts: Vec<&str> = s.split('$').collect();
    let [scheme, iterations, salt, hash] = parts.as_slice() else {
        return Err(format!("{FORMAT}, found {} '$'-separated parts", parts.len()));
    };
    if *scheme != "pbkdf2-sha256" {
        return Err(format!("{FORMAT}: unsupported scheme (only pbkdf2-sha256 is accepted)"));
    }
    let digits = !iterations.is_empty() && iterations.bytes().all(|b| b.is_ascii_digit());
    match iterations.parse::<u32>() {
        Ok(n) if digits && n >= MIN_ITERATIONS => {}
        Ok(n) if digits => return Err(format!("{FORMAT}: {n} iterations is too few (at least {MIN_ITERATIONS})")),
        _ => return Err(format!("{FORMAT}: iterations must be an integer between {MIN_ITERATIONS} and {}", u32::MAX)),
    }
    if !is_base64(salt) {
        return Err(format!("{FORMAT}: the salt is empty or not base64"));
    }
    if !is_base64(hash) {
        return Err(format!("{FORMAT}: the hash is empty or not base64"));
    }
    Ok(())
}
