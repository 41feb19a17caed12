//! SSH host keys without a restart: [`HostKeyReloader`] looks at the configured host key files
//! (and, when the configuration file is watched, at its `[sftp] host_keys` list) every
//! [`super::CHECK_INTERVAL`] and on SIGHUP. A new set is loaded and validated whole as at start
//! (each file 0600, parses, Ed25519 or RSA ≥ 2048, at least one key a configured host key
//! algorithm can use); a good set is handed to every connection accepted from then on while
//! open connections keep theirs, a bad one is refused with the problems in the log and an
//! audit record, and the old set serves on. Every attempt is audited (`host_key_reload`) with
//! the fingerprints served before and after.
//!
//! Like the users reloader, a change seen by the periodic look is acted on once the next look
//! finds the same content (a key file or configuration caught half-written is not refused),
//! and at once on SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Outcome;
use crate::audit::{AuditEntry, AuditEvent, AuditLog, HostKeyFacts};
use crate::sftp::host_keys::ServedHostKeys;

/// Watches the host key files and swaps new sets into a [`ServedHostKeys`].
pub struct HostKeyReloader {
    /// The files of the set in force, in their configured order.
    paths: Vec<PathBuf>,
    /// The configuration file whose `[sftp] host_keys` names the files, when it is watched.
    config: Option<PathBuf>,
    served: Arc<ServedHostKeys>,
    audit: AuditLog,
    /// Digest of the file list, contents and modes last acted on.
    seen: Option<[u8; 32]>,
    /// New content is taken once two periodic looks agree.
    settling: super::Settle,
    /// Refused sets raise alerts here.
    alerts: crate::alerts::Alerts,
}

impl std::fmt::Debug for HostKeyReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKeyReloader").field("paths", &self.paths).field("config", &self.config).finish()
    }
}

impl HostKeyReloader {
    /// Watch `paths` (the files `served` was loaded from); with `config`, the list itself is
    /// read from that file's `[sftp] host_keys` at each look.
    pub fn new(
        paths: Vec<PathBuf>,
        config: Option<PathBuf>,
        served: Arc<ServedHostKeys>,
        audit: AuditLog,
    ) -> HostKeyReloader {
        let mut reloader = HostKeyReloader {
            paths,
            config,
            served,
            audit,
            seen: None,
            settling: super::Settle::default(),
            alerts: crate::alerts::Alerts::disabled(),
        };
        let paths = reloader.configured_paths();
        reloader.seen = Some(digest(&paths));
        reloader
    }

    /// The host key files the configuration names now; the list in force when the file
    /// cannot be read, does not parse (the users reloader reports why) or has no `[sftp]`
    /// (the listener itself changes only at a restart).
    fn configured_paths(&self) -> Vec<PathBuf> {
        let Some(config) = &self.config else {
            return self.paths.clone();
        };
        let Ok(text) = std::fs::read_to_string(config) else {
            return self.paths.clone();
        };
        let (parsed, errors) = gateway_config::parse(&text, &config.display().to_string());
        match parsed.sftp {
            Some(sftp) if errors.is_empty() => sftp.host_keys,
            _ => self.paths.clone(),
        }
    }

    /// Raise an alert for every refused set.
    pub fn with_alerts(self, alerts: crate::alerts::Alerts) -> HostKeyReloader {
        HostKeyReloader { alerts, ..self }
    }

    /// Look again at what was last refused (SIGHUP: a permission fixed with `chmod` changes
    /// the mode, but an operator may also ask after fixing something else).
    pub fn forget(&mut self) {
        self.seen = None;
    }

    /// Look once; load, validate and swap in a changed set if `now` (SIGHUP) or the
    /// previous look saw the same change.
    pub async fn check(&mut self, now: bool) -> Outcome {
        let paths = self.configured_paths();
        let digest = Some(digest(&paths));
        if digest == self.seen {
            return Outcome::Unchanged;
        }
        if !self.settling.ready(digest, now) {
            return Outcome::Unchanged;
        }
        self.seen = digest;
        let old = self.served.fingerprints();
        let mut keys = Vec::new();
        let mut problems = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            match crate::sftp::keys::load_host_key(path) {
                Ok(k) => keys.push(k),
                Err(e) => problems.push(format!("sftp.host_keys[{i}]: {e}")),
            }
        }
        if paths.is_empty() {
            problems.push("sftp.host_keys: no host key configured".into());
        }
        if !problems.is_empty() {
            return self.refuse(&paths, &old, problems).await;
        }
        let new: Vec<String> = keys.iter().map(|k| crate::sftp::keys::fingerprint(k.public_key())).collect();
        if new == old {
            self.paths = paths;
            return Outcome::Unchanged;
        }
        let lines: Vec<String> = keys.iter().map(|k| crate::sftp::keys::describe(k.public_key())).collect();
        match self.served.replace(keys) {
            Ok(report) => {
                for line in &report.unused {
                    tracing::warn!("sftp.host_keys: {line}");
                }
                tracing::info!(
                    old_sha256 = ?old,
                    new_sha256 = ?new,
                    keys = ?lines,
                    "SSH host keys reloaded; new connections are offered them, open sessions carry on"
                );
                self.paths = paths;
                self.record(&self.paths, Some(&old), &new, None).await;
                Outcome::Reloaded
            }
            Err(e) => self.refuse(&paths, &old, vec![format!("sftp.host_keys: {e}")]).await,
        }
    }

    async fn refuse(&self, paths: &[PathBuf], serving: &[String], problems: Vec<String>) -> Outcome {
        for p in &problems {
            tracing::error!(problem = %p, "host key problem");
        }
        tracing::error!(
            problems = problems.len(),
            serving = ?serving,
            "new SSH host keys refused; the keys in force keep serving"
        );
        self.alerts.raise(super::refused_alert(
            "host_key_refused",
            format!("a new set of SSH host keys was refused at reload: {}", problems.join("; ")),
            paths.iter().map(|p| p.display().to_string()).collect(),
            serving.to_vec(),
            "the host keys in force keep serving",
        ));
        self.record(paths, None, serving, Some(problems.join("; "))).await;
        Outcome::Refused
    }

    /// `serving`: what is served after the attempt; `previous`: what was served before, when
    /// a new set went live.
    async fn record(&self, paths: &[PathBuf], previous: Option<&[String]>, serving: &[String], error: Option<String>) {
        let entry = AuditEntry {
            protocol: Some("sftp".into()),
            operation: Some("host_key_reload".into()),
            result: Some(if error.is_none() { "ok" } else { "error" }.into()),
            error,
            host_keys: Some(HostKeyFacts {
                previous_sha256: previous.map(<[String]>::to_vec),
                sha256: serving.to_vec(),
                files: paths.iter().map(|p| p.display().to_string()).collect(),
            }),
            ..AuditEntry::new(AuditEvent::Operation)
        };
        if let Err(e) = self.audit.append(entry, true).await {
            tracing::error!(error = %e, "host key reload could not be audited");
        }
    }
}

/// SHA-256 over the file list, and each file's content and permission bits (or why it cannot
/// be read), so a replaced file, a changed list and a `chmod` all count as a change.
fn digest(paths: &[PathBuf]) -> [u8; 32] {
    // Private key bytes pass through: wiped when dropped.
    let mut all = zeroize::Zeroizing::new(Vec::new());
    for path in paths {
        part(&mut all, path.as_os_str().as_encoded_bytes());
        match read(path) {
            Ok((content, mode)) => {
                part(&mut all, &content);
                all.extend_from_slice(&mode.to_be_bytes());
            }
            Err(kind) => part(&mut all, format!("unreadable: {kind:?}").as_bytes()),
        }
    }
    crate::digest::sha256(&all)
}

fn part(all: &mut Vec<u8>, bytes: &[u8]) {
    all.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    all.extend_from_slice(bytes);
}

fn read(path: &Path) -> Result<(zeroize::Zeroizing<Vec<u8>>, u32), std::io::ErrorKind> {
    use std::os::unix::fs::PermissionsExt;
    let content = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| e.kind())?);
    let mode = std::fs::metadata(path).map_err(|e| e.kind())?.permissions().mode();
    Ok((content, mode))
}
