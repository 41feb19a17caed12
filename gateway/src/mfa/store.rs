//! Enrolled TOTP secrets on disk, sealed with AES-256-GCM under the `[mfa] key_file`.
//!
//! `secrets_dir/<user>.totp` holds `GWMFA01` ‖ algorithm byte ‖ 12-byte random nonce ‖
//! ciphertext ‖ tag; the additional data binds the magic, the algorithm and the user name,
//! so a file copied to another user's name, or edited to another algorithm, does not open.
//! Key and secret files are 0600 (directories 0700) and refused when group or others can
//! read them (`secrets.rs`). Nothing here prints or logs a secret; errors name files only.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use zeroize::Zeroizing;

use super::totp::Algorithm;
use crate::secrets::{random_bytes, read_secret_file, write_secret_file, SecretError};

const MAGIC: &[u8; 7] = b"GWMFA01";
const TAG_LEN: usize = 16;

/// A TOTP secret as enrolled; never printed by `Debug`, wiped on drop.
pub struct TotpSecret {
    /// Raw secret bytes.
    pub(crate) bytes: Zeroizing<Vec<u8>>,
    /// The HMAC it was enrolled for.
    pub algorithm: Algorithm,
}

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TotpSecret({:?}, MASKED)", self.algorithm)
    }
}

impl TotpSecret {
    /// The raw secret, for the enrolment URI (shown once) and code checks only.
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }

    /// A fresh random secret of the algorithm's length (20 bytes SHA-1, 32 bytes SHA-256).
    pub fn generate(algorithm: Algorithm) -> Result<TotpSecret, SecretError> {
        let raw = Zeroizing::new(random_bytes::<32>()?);
        let bytes = Zeroizing::new(raw.get(..algorithm.secret_len()).unwrap_or(&raw[..]).to_vec());
        Ok(TotpSecret { bytes, algorithm })
    }
}

/// Where the sealing key and the secrets are.
#[derive(Debug, Clone)]
pub struct Store {
    key_file: PathBuf,
    secrets_dir: PathBuf,
}

fn malformed(path: &Path, what: &str) -> SecretError {
    SecretError::Malformed { path: path.to_owned(), what: what.to_owned() }
}

impl Store {
    /// The store of `[mfa]`.
    pub fn new(config: &gateway_config::MfaConfig) -> Store {
        Store { key_file: config.key_file.clone(), secrets_dir: config.secrets_dir.clone() }
    }

    /// The sealed file of `user`.
    pub fn path_of(&self, user: &str) -> PathBuf {
        self.secrets_dir.join(format!("{user}.totp"))
    }

    /// Whether `user` has an enrolment file (readable or not).
    pub fn enrolled(&self, user: &str) -> bool {
        self.path_of(user).exists()
    }

    fn load_key(&self) -> Result<LessSafeKey, SecretError> {
        let raw = read_secret_file(&self.key_file)?;
        let text =
            std::str::from_utf8(&raw).map_err(|_| malformed(&self.key_file, "not text; expected 64 hex characters"))?;
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), bytes.as_mut())
            .map_err(|_| malformed(&self.key_file, "the MFA key must be exactly 64 hex characters (a 256-bit key)"))?;
        let key = UnboundKey::new(&AES_256_GCM, bytes.as_ref())
            .map_err(|_| malformed(&self.key_file, "not a usable AES-256 key"))?;
        Ok(LessSafeKey::new(key))
    }

    /// The sealing key, created (0600) when it does not exist yet.
    fn key_or_create(&self) -> Result<LessSafeKey, SecretError> {
        if !self.key_file.exists() {
            let key = Zeroizing::new(random_bytes::<32>()?);
            let mut text = Zeroizing::new(hex::encode(key.as_ref()));
            text.push('\n');
            match write_secret_file(&self.key_file, text.as_bytes()) {
                // Another enrolment made it meanwhile: use theirs.
                Err(SecretError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                other => other?,
            }
        }
        self.load_key()
    }

    fn aad(user: &str, algorithm: Algorithm) -> Vec<u8> {
        let mut aad = MAGIC.to_vec();
        aad.push(algorithm.tag());
        aad.extend_from_slice(user.as_bytes());
        aad
    }

    /// Seal `secret` for `user`. Without `replace`, an existing enrolment is an error; with
    /// it, the new file replaces the old one atomically (temporary file, fsync, rename).
    pub fn save(&self, user: &str, secret: &TotpSecret, replace: bool) -> Result<PathBuf, SecretError> {
        if user.is_empty() || user.contains(['/', '\0']) || user.starts_with('.') {
            return Err(malformed(&self.secrets_dir, "user name cannot name a file"));
        }
        let path = self.path_of(user);
        if path.exists() && !replace {
            return Err(malformed(
                &path,
                "already enrolled (use --force to replace the secret; the old one stops working)",
            ));
        }
        let key = self.key_or_create()?;
        let nonce_bytes = random_bytes::<NONCE_LEN>()?;
        let mut sealed = Zeroizing::new(secret.bytes.to_vec());
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(Self::aad(user, secret.algorithm)),
            &mut *sealed,
        )
        .map_err(|_| malformed(&path, "could not seal the secret"))?;
        let mut content = MAGIC.to_vec();
        content.push(secret.algorithm.tag());
        content.extend_from_slice(&nonce_bytes);
        content.extend_from_slice(&sealed);
        let tmp = self.secrets_dir.join(format!(".{user}.totp.tmp"));
        let _ = std::fs::remove_file(&tmp);
        write_secret_file(&tmp, &content)?;
        std::fs::rename(&tmp, &path).map_err(|source| SecretError::Io { path: path.clone(), source })?;
        if let Ok(dir) = std::fs::File::open(&self.secrets_dir) {
            let _ = dir.sync_all();
        }
        Ok(path)
    }

    /// The secret of `user`: `Ok(None)` when not enrolled; an error when the file or the
    /// key cannot be read, is too open, or does not open under the key.
    pub fn load(&self, user: &str) -> Result<Option<TotpSecret>, SecretError> {
        let path = self.path_of(user);
        let raw = match read_secret_file(&path) {
            Ok(raw) => raw,
            Err(SecretError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = || malformed(&path, "not a sealed TOTP secret (enrol the user again)");
        let (magic, rest) = raw.split_at_checked(MAGIC.len()).ok_or_else(bad)?;
        if magic != MAGIC {
            return Err(bad());
        }
        let (&tag, rest) = rest.split_first().ok_or_else(bad)?;
        let algorithm = Algorithm::from_tag(tag).ok_or_else(bad)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN).ok_or_else(bad)?;
        if sealed.len() < TAG_LEN + 16 {
            return Err(bad());
        }
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let key = self.load_key()?;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let plain = key.open_in_place(nonce, Aad::from(Self::aad(user, algorithm)), &mut buf).map_err(|_| {
            malformed(&path, "does not open under the MFA key (wrong key_file, another user's file, or tampered)")
        })?;
        Ok(Some(TotpSecret { bytes: Zeroizing::new(plain.to_vec()), algorithm }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn store(dir: &Path) -> Store {
        Store::new(&gateway_config::MfaConfig {
            key_file: dir.join("mfa/mfa.key"),
            secrets_dir: dir.join("mfa/secrets"),
            issuer: "gateway".into(),
        })
    }

    #[test]
    fn seal_open_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        assert!(s.load("alice").unwrap().is_none());
        let secret = TotpSecret::generate(Algorithm::Sha256).unwrap();
        assert_eq!(secret.bytes.len(), 32);
        assert_eq!(TotpSecret::generate(Algorithm::Sha1).unwrap().bytes.len(), 20);
        assert_eq!(format!("{secret:?}"), "TotpSecret(Sha256, MASKED)");
        let path = s.save("alice", &secret, false).unwrap();
        for p in [&path, &dir.path().join("mfa/mfa.key")] {
            assert_eq!(std::fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o600, "{p:?}");
        }
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(secret.bytes.len()).any(|w| w == secret.bytes.as_slice()), "secret in plaintext");
        let back = s.load("alice").unwrap().unwrap();
        assert_eq!((back.bytes.as_slice(), back.algorithm), (secret.bytes.as_slice(), Algorithm::Sha256));

        // No silent overwrite; --force replaces.
        assert!(s.save("alice", &secret, false).unwrap_err().to_string().contains("already enrolled"));
        let second = TotpSecret::generate(Algorithm::Sha1).unwrap();
        s.save("alice", &second, true).unwrap();
        assert_eq!(s.load("alice").unwrap().unwrap().algorithm, Algorithm::Sha1);

        // Another user's file does not open under this name; neither does a tampered one.
        std::fs::copy(&path, s.path_of("bob")).unwrap();
        std::fs::set_permissions(s.path_of("bob"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = s.load("bob").unwrap_err().to_string();
        assert!(err.contains("bob.totp") && err.contains("does not open"), "{err}");
        let mut tampered = std::fs::read(&path).unwrap();
        if let Some(b) = tampered.last_mut() {
            *b ^= 1;
        }
        std::fs::write(&path, &tampered).unwrap();
        assert!(s.load("alice").unwrap_err().to_string().contains("does not open"));
        std::fs::write(&path, b"GWMFA01").unwrap();
        assert!(s.load("alice").unwrap_err().to_string().contains("not a sealed TOTP secret"));
        // Too open: refused.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(s.load("alice").unwrap_err().to_string().contains("0644"));
        assert!(s.save("../x", &secret, false).is_err());
    }
}
