//! Secret material on disk: tenant storage keys, the audit signing key, bearer tokens.
//!
//! Secrets live in types whose `Debug` prints `MASKED` and whose memory is wiped on drop.
//! Secret files are created `0600` (parent directories `0700`) and refused when group or world
//! can read them, so a loosened permission is noticed instead of silently tolerated.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SecureRandom;
use zeroize::{Zeroize, Zeroizing};

/// A problem with a secret file; the message names the file, never the content.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Missing or unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Group- or world-accessible.
    #[error("{path}: permissions {mode:04o} let group or others read it; run `chmod 600 {path}`")]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// Content does not have the expected shape.
    #[error("{path}: {what}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the content).
        what: String,
    },
    /// The system random generator failed.
    #[error("random number generator failed")]
    Random,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SecretError + '_ {
    move |source| SecretError::Io { path: path.to_owned(), source }
}

/// Fill a buffer from the system CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], SecretError> {
    let mut buf = [0u8; N];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut buf).map_err(|_| SecretError::Random)?;
    Ok(buf)
}

/// Create `dir` and its missing parents with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), SecretError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))
}

/// Write a new secret file with mode 0600; fails if it already exists (never overwrites).
pub fn write_secret_file(path: &Path, content: &[u8]) -> Result<(), SecretError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_err(path))?;
    f.write_all(content).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Read a secret file, refusing it if group or others may read it.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    check_private(path)?;
    fs::read(path).map(Zeroizing::new).map_err(io_err(path))
}

/// Refuse a file whose mode lets group or others read or write it.
pub fn check_private(path: &Path) -> Result<(), SecretError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::TooOpen { path: path.to_owned(), mode });
    }
    Ok(())
}

/// A tenant's 256-bit storage key (the policy's customer-specific key).
#[derive(Clone)]
pub struct TenantKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl TenantKey {
    /// Generate a fresh random key.
    pub fn generate() -> Result<TenantKey, SecretError> {
        Ok(TenantKey { bytes: Zeroizing::new(random_bytes::<32>()?) })
    }

    /// Load from a key file: 64 hex characters (and an optional newline), mode 0600.
    pub fn load(path: &Path) -> Result<TenantKey, SecretError> {
        let raw = read_secret_file(path)?;
        let text = std::str::from_utf8(&raw).map_err(|_| SecretError::Malformed {
            path: path.to_owned(),
            what: "tenant key file is not text; expected 64 hex characters".into(),
        })?;
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), bytes.as_mut()).map_err(|_| SecretError::Malformed {
            path: path.to_owned(),
            what: "tenant key must be exactly 64 hex characters (a 256-bit key)".into(),
        })?;
        Ok(TenantKey { bytes })
    }

    /// Write this key to a new file (0600).
    pub fn save(&self, path: &Path) -> Result<(), SecretError> {
        let mut text = Zeroizing::new(hex::encode(self.bytes.as_ref()));
        text.push('\n');
        write_secret_file(path, text.as_bytes())
    }

    /// The raw key, for the storage cipher only.
    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.bytes
    }
}

impl fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TenantKey(MASKED)")
    }
}

/// A bearer token as presented by a client or just minted; never printed by `Debug`.
pub struct Token(String);

impl Token {
    /// Prefix that marks our tokens (lets secret scanners find leaked ones).
    pub const PREFIX: &'static str = "gw1.";

    /// Mint a token for credential `id`: `gw1.<id>.<43 chars of base64url randomness>`.
    pub fn mint(id: &str) -> Result<Token, SecretError> {
        use base64::Engine;
        let mut secret = random_bytes::<32>()?;
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        secret.zeroize();
        Ok(Token(format!("{}{id}.{encoded}", Self::PREFIX)))
    }

    /// Wrap a presented token.
    pub fn new(s: String) -> Token {
        Token(s)
    }

    /// The credential id embedded in the token, if it has our shape.
    pub fn id(&self) -> Option<&str> {
        let rest = self.0.strip_prefix(Self::PREFIX)?;
        let (id, secret) = rest.rsplit_once('.')?;
        (!id.is_empty() && !secret.is_empty()).then_some(id)
    }

    /// SHA-256 of the whole token: what the configuration stores.
    pub fn sha256(&self) -> [u8; 32] {
        crate::digest::sha256(self.0.as_bytes())
    }

    /// The token text, for showing once to an operator.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(MASKED)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_key_round_trip_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/acme.key");
        let key = TenantKey::generate().unwrap();
        key.save(&path).unwrap();
        let back = TenantKey::load(&path).unwrap();
        assert_eq!(key.expose(), back.expose());
        assert_eq!(format!("{back:?}"), "TenantKey(MASKED)");
        assert!(key.save(&path).is_err(), "must never overwrite a key");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = TenantKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("acme.key") && err.contains("0644"), "{err}");
    }

    #[test]
    fn token_shape() {
        let t = Token::mint("alice-1").unwrap();
        assert!(t.reveal().starts_with("gw1.alice-1."));
        assert_eq!(t.id(), Some("alice-1"));
        assert_eq!(format!("{t:?}"), "Token(MASKED)");
        assert_eq!(Token::new("gw1.a.b.c".into()).id(), Some("a.b"));
        assert_eq!(Token::new("nope".into()).id(), None);
        assert_eq!(Token::new("gw1..x".into()).id(), None);
    }
}
