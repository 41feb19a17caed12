//! SSH key material: host keys (load, generate for development, fingerprints) and users'
//! authorized keys (parse, refuse weak ones).

use std::path::Path;

use russh::keys::ssh_key::private::{KeypairData, RsaKeypair};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};

/// Smallest RSA modulus accepted for users' keys (the policy's RSA ≥ 2048).
pub const MIN_RSA_BITS: usize = 2048;
/// Smallest RSA modulus accepted for host keys (stricter: they outlive any one client).
pub const MIN_HOST_RSA_BITS: usize = 3072;
/// Size of RSA host keys generated for development.
pub const DEV_RSA_BITS: usize = 3072;

/// `SHA256:…` as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Bits and type label as `ssh-keygen -l` prints them, e.g. `3072 … (RSA)`.
pub fn describe(key: &PublicKey) -> String {
    let (bits, label) = match key.algorithm() {
        Algorithm::Ed25519 => (256, "ED25519".to_owned()),
        Algorithm::Rsa { .. } => (key.key_data().rsa().map(|r| r.key_size() as usize).unwrap_or(0), "RSA".to_owned()),
        Algorithm::Ecdsa { curve } => {
            let bits = match curve.as_str() {
                "nistp256" => 256,
                "nistp384" => 384,
                _ => 521,
            };
            (bits, "ECDSA".to_owned())
        }
        other => (0, other.as_str().to_uppercase()),
    };
    let comment = if key.comment().is_empty() { "no comment" } else { key.comment().as_str_lossy() };
    format!("{bits} {} {comment} ({label})", fingerprint(key))
}

/// Why a key was refused.
pub fn check_strength(key: &PublicKey) -> Result<(), String> {
    match key.algorithm() {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } => Ok(()),
        Algorithm::Rsa { .. } => {
            let bits = key.key_data().rsa().map(|r| r.key_size() as usize).unwrap_or(0);
            if bits < MIN_RSA_BITS {
                Err(format!("RSA key is {bits} bits; at least {MIN_RSA_BITS} required"))
            } else {
                Ok(())
            }
        }
        other => Err(format!("key type {} is not accepted", other.as_str())),
    }
}

/// Parse one `authorized_keys` line (no options) and check its strength.
pub fn parse_authorized_key(line: &str) -> Result<PublicKey, String> {
    let key = PublicKey::from_openssh(line.trim()).map_err(|e| format!("not an OpenSSH public key: {e}"))?;
    check_strength(&key)?;
    Ok(key)
}

/// Load a host key (OpenSSH or PEM private key file, 0600).
pub fn load_host_key(path: &Path) -> Result<PrivateKey, String> {
    crate::secrets::check_private(path).map_err(|e| e.to_string())?;
    let key = russh::keys::load_secret_key(path, None).map_err(|e| format!("{}: {e}", path.display()))?;
    match key.algorithm() {
        Algorithm::Ed25519 => Ok(key),
        Algorithm::Rsa { .. } => {
            let bits = key.key_data().rsa().map(|r| r.key_size() as usize).unwrap_or(0);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "{}: RSA host key is {bits} bits; at least {MIN_RSA_BITS} required",
                    path.display()
                ));
            }
            Ok(key)
        }
        other => {
            Err(format!("{}: host key type {} is not supported (use Ed25519 or RSA)", path.display(), other.as_str()))
        }
    }
}

/// Development only: generate a host key at `path` (0600) — RSA-3072 when the file name
/// contains `rsa`, Ed25519 otherwise.
pub fn generate_host_key(path: &Path) -> Result<PrivateKey, String> {
    let mut rng = russh::keys::key::safe_rng();
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let key = if name.contains("rsa") {
        let pair = RsaKeypair::random(&mut rng, DEV_RSA_BITS).map_err(|e| e.to_string())?;
        PrivateKey::new(KeypairData::from(pair), "gateway-dev-host").map_err(|e| e.to_string())?
    } else {
        let mut k = PrivateKey::random(&mut rng, Algorithm::Ed25519).map_err(|e| e.to_string())?;
        k.set_comment("gateway-dev-host");
        k
    };
    let text = key.to_openssh(LineEnding::LF).map_err(|e| e.to_string())?;
    crate::secrets::write_secret_file(path, text.as_bytes()).map_err(|e| e.to_string())?;
    Ok(key)
}
