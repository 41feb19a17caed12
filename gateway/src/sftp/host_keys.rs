//! The host keys being served: the russh configuration each new connection is handed,
//! rebuilt with a new key set when the host key files change ([`crate::reload::HostKeyReloader`]).
//! A connection takes the configuration in force when it is accepted and keeps it; a swap
//! never touches connections already open.
//!
//! russh signs the key exchange with the *first* listed key that fits the negotiated host key
//! algorithm, and offers an algorithm only when some key fits it. So two keys of different
//! types (Ed25519 and RSA) are both served, and a client is given whichever its `known_hosts`
//! knows (OpenSSH puts the algorithms it holds keys for first); a second key of a type
//! already listed is never served, which [`check_set`] reports.

use std::sync::{Arc, PoisonError, RwLock};

use gateway_config::SftpConfig;
use russh::keys::{Algorithm, PrivateKey};
use russh::server::Config as SshConfig;

/// The key set in force and the configuration built from it.
struct Served {
    ssh: Arc<SshConfig>,
    fingerprints: Vec<String>,
    lines: Vec<String>,
}

/// The russh configuration new connections get; its host keys can be replaced at runtime.
pub struct ServedHostKeys {
    settings: SftpConfig,
    passwords: bool,
    current: RwLock<Served>,
}

impl std::fmt::Debug for ServedHostKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedHostKeys").field("fingerprints", &self.fingerprints()).finish()
    }
}

/// What a key set looks like to a client: which keys are served and which are not, and why.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SetReport {
    /// Fingerprints of the keys a client can be given.
    pub served: Vec<String>,
    /// One line per key that is never served (another key of its type comes first, or no
    /// configured host key algorithm fits it).
    pub unused: Vec<String>,
}

/// Whether `key` can sign for the host key algorithm `alg` (every RSA variant fits every RSA key).
fn fits(key: &PrivateKey, alg: &Algorithm) -> bool {
    match alg {
        Algorithm::Rsa { .. } => key.algorithm().is_rsa(),
        other => key.algorithm() == *other,
    }
}

/// Which keys of `keys` a client can be given under the host key algorithms `algorithms`.
/// Refused when none can: no client could complete a key exchange.
pub fn check_set(keys: &[PrivateKey], algorithms: &[String]) -> Result<SetReport, String> {
    let algs: Vec<Algorithm> = algorithms.iter().filter_map(|a| Algorithm::new(a).ok()).collect();
    let mut report = SetReport::default();
    for (i, key) in keys.iter().enumerate() {
        let fp = super::keys::fingerprint(key.public_key());
        let earlier = keys.iter().take(i).find(|k| fits_same(k, key));
        if let Some(first) = earlier {
            report.unused.push(format!(
                "{fp} is not served: {} is listed before it and has the same type (one key per type is served)",
                super::keys::fingerprint(first.public_key())
            ));
        } else if !algs.iter().any(|a| fits(key, a)) {
            report.unused.push(format!(
                "{fp} is not served: no configured host key algorithm ({}) fits a {} key",
                algorithms.join(", "),
                key.algorithm().as_str()
            ));
        } else {
            report.served.push(fp);
        }
    }
    if report.served.is_empty() {
        return Err(format!("no key of the set can be served ({})", report.unused.join("; ")));
    }
    Ok(report)
}

/// Whether two keys compete for the same host key algorithms.
fn fits_same(a: &PrivateKey, b: &PrivateKey) -> bool {
    if a.algorithm().is_rsa() {
        b.algorithm().is_rsa()
    } else {
        a.algorithm() == b.algorithm()
    }
}

impl ServedHostKeys {
    /// Serve `keys` with the settings of `[sftp]` (`passwords`: whether password login is
    /// offered). Refused when no key of the set can be served.
    pub fn new(
        settings: &SftpConfig,
        passwords: bool,
        keys: Vec<PrivateKey>,
    ) -> Result<(ServedHostKeys, SetReport), String> {
        let report =
            check_set(&keys, &settings.algorithms.host_key_algorithms).map_err(|e| format!("sftp.host_keys: {e}"))?;
        let settings = settings.clone();
        let served = build(&settings, passwords, keys)?;
        Ok((ServedHostKeys { settings, passwords, current: RwLock::new(served) }, report))
    }

    /// The configuration for a connection accepted now.
    pub fn ssh(&self) -> Arc<SshConfig> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).ssh.clone()
    }

    /// `SHA256:…` fingerprints of the keys in force, in their configured order.
    pub fn fingerprints(&self) -> Vec<String> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).fingerprints.clone()
    }

    /// `ssh-keygen -l` style lines for the keys in force.
    pub fn lines(&self) -> Vec<String> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).lines.clone()
    }

    /// The configured host key algorithms, in preference order.
    pub fn algorithms(&self) -> &[String] {
        &self.settings.algorithms.host_key_algorithms
    }

    /// New connections get `keys` from now on; open connections keep what they have. Refused
    /// (and nothing changes) when no key of the set can be served.
    pub fn replace(&self, keys: Vec<PrivateKey>) -> Result<SetReport, String> {
        let report = check_set(&keys, self.algorithms())?;
        let served = build(&self.settings, self.passwords, keys)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = served;
        Ok(report)
    }
}

fn build(settings: &SftpConfig, passwords: bool, keys: Vec<PrivateKey>) -> Result<Served, String> {
    let fingerprints = keys.iter().map(|k| super::keys::fingerprint(k.public_key())).collect();
    let lines = keys.iter().map(|k| super::keys::describe(k.public_key())).collect();
    let ssh = super::ssh_config(settings, passwords, keys)?;
    Ok(Served { ssh: Arc::new(ssh), fingerprints, lines })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn key(alg: Algorithm) -> PrivateKey {
        PrivateKey::random(&mut russh::keys::key::safe_rng(), alg).unwrap()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn one_key_per_type_is_served_and_the_rest_reported() {
        let (a, b) = (key(Algorithm::Ed25519), key(Algorithm::Ed25519));
        let algs = names(&["ssh-ed25519", "rsa-sha2-512"]);
        let report = check_set(&[a.clone(), b.clone()], &algs).unwrap();
        assert_eq!(report.served, vec![super::super::keys::fingerprint(a.public_key())]);
        assert_eq!(report.unused.len(), 1);
        assert!(report.unused[0].starts_with(&super::super::keys::fingerprint(b.public_key())), "{report:?}");
        assert!(report.unused[0].contains("same type"), "{report:?}");
    }

    #[test]
    fn a_set_no_configured_algorithm_fits_is_refused() {
        let err = check_set(&[key(Algorithm::Ed25519)], &names(&["rsa-sha2-512", "rsa-sha2-256"])).unwrap_err();
        assert!(err.contains("no configured host key algorithm"), "{err}");
        assert!(check_set(&[], &names(&["ssh-ed25519"])).is_err());
    }
}
