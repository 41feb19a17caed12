//! The Ed25519 key that signs audit checkpoints.
//!
//! The private key is a PKCS#8 document in a PEM file (0600); the public key is written
//! beside it as `<name>.pub` (base64 of the 32 raw bytes) so reviewers can pin it with
//! `gateway audit verify --public-key`.

use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::secrets::{read_secret_file, write_secret_file, SecretError};

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// What a checkpoint signature covers.
pub fn checkpoint_message(seq: u64, prev: &str) -> Vec<u8> {
    format!("gateway-audit-checkpoint-v1\n{seq}\n{prev}").into_bytes()
}

/// The checkpoint signing key.
pub struct CheckpointKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CheckpointKey(public {})", self.public_key_b64())
    }
}

/// Where the public half of a signing key is written.
pub fn public_key_path(private: &Path) -> PathBuf {
    private.with_extension("pub")
}

impl CheckpointKey {
    /// Generate a key, write it (0600) and its public half; fails if the file exists.
    pub fn generate(path: &Path) -> Result<CheckpointKey, SecretError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| SecretError::Random)?;
        let pem = zeroize::Zeroizing::new(format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", B64.encode(doc.as_ref())));
        write_secret_file(path, pem.as_bytes())?;
        let key = Self::from_pkcs8(path, doc.as_ref())?;
        let pub_path = public_key_path(path);
        std::fs::write(&pub_path, format!("{}\n", key.public_key_b64()))
            .map_err(|source| SecretError::Io { path: pub_path, source })?;
        Ok(key)
    }

    /// Load a key written by [`CheckpointKey::generate`].
    pub fn load(path: &Path) -> Result<CheckpointKey, SecretError> {
        let raw = read_secret_file(path)?;
        let malformed = |what: &str| SecretError::Malformed { path: path.to_owned(), what: what.to_owned() };
        let text = std::str::from_utf8(&raw).map_err(|_| malformed("not a PEM file"))?;
        let body: String = text
            .trim()
            .strip_prefix(PEM_BEGIN)
            .and_then(|t| t.strip_suffix(PEM_END))
            .ok_or_else(|| malformed("expected a PEM 'PRIVATE KEY' block"))?
            .split_whitespace()
            .collect();
        let der = zeroize::Zeroizing::new(B64.decode(body).map_err(|_| malformed("PEM body is not base64"))?);
        Self::from_pkcs8(path, &der)
    }

    fn from_pkcs8(path: &Path, der: &[u8]) -> Result<CheckpointKey, SecretError> {
        let pair = Ed25519KeyPair::from_pkcs8(der).map_err(|_| SecretError::Malformed {
            path: path.to_owned(),
            what: "not an Ed25519 PKCS#8 private key".into(),
        })?;
        Ok(CheckpointKey { pair })
    }

    /// The public key, base64.
    pub fn public_key_b64(&self) -> String {
        B64.encode(self.pair.public_key().as_ref())
    }

    /// Sign checkpoint `seq` whose predecessor hashes to `prev`; base64 signature.
    pub fn sign_checkpoint(&self, seq: u64, prev: &str) -> String {
        B64.encode(self.pair.sign(&checkpoint_message(seq, prev)).as_ref())
    }
}

/// Check a checkpoint signature made by [`CheckpointKey::sign_checkpoint`].
pub fn verify_checkpoint(public_key: &[u8], seq: u64, prev: &str, signature_b64: &str) -> bool {
    let Ok(sig) = B64.decode(signature_b64) else { return false };
    UnparsedPublicKey::new(&ED25519, public_key).verify(&checkpoint_message(seq, prev), &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_load_sign_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit/checkpoint.key");
        let k = CheckpointKey::generate(&path).unwrap();
        let k2 = CheckpointKey::load(&path).unwrap();
        assert_eq!(k.public_key_b64(), k2.public_key_b64());
        let pubkey = B64.decode(std::fs::read_to_string(public_key_path(&path)).unwrap().trim()).unwrap();
        let sig = k2.sign_checkpoint(5, "ab");
        assert!(verify_checkpoint(&pubkey, 5, "ab", &sig));
        assert!(!verify_checkpoint(&pubkey, 6, "ab", &sig));
        assert!(!verify_checkpoint(&pubkey, 5, "ac", &sig));
        assert!(!format!("{k:?}").contains("PRIVATE"));
    }
}
