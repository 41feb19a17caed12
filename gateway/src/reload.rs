//! Live rotation of the TLS server certificate.
//!
//! [`CertReloader`] looks at the certificate and key files every [`CHECK_INTERVAL`] and
//! whenever it is asked to (SIGHUP). It compares what the paths lead to now (following
//! symlinks, so a certbot `live/` link or a Kubernetes `..data` swap is seen) with what it
//! last loaded, by content. New content is validated in full ([`gateway_certs::load_server_cert`]:
//! parses, key matches, chain order, strength, validity) before it is served: a good pair
//! goes live for new handshakes while open connections keep theirs; a bad pair is refused with
//! an error in the log and an audit record, and the old pair keeps serving. A pair half-way
//! through being replaced (new certificate, old key) is refused the same way and taken as
//! soon as the key follows, since the content changes again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gateway_certs::{LoadedCert, ReloadableCert};
use tokio::sync::Notify;

use crate::audit::{AuditEntry, AuditEvent, AuditLog, CertFacts};

/// Days before the end of validity at which the log warns, once each.
pub const EXPIRY_WARNINGS: [i64; 3] = [30, 7, 1];

/// How often the files are looked at without a SIGHUP.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The files hold what is being served (or what was last refused).
    Unchanged,
    /// New material is being served.
    Reloaded,
    /// New material was refused; the old pair keeps serving.
    Refused,
}

/// Watches one certificate/key pair and swaps it into a [`ReloadableCert`].
pub struct CertReloader {
    cert_path: PathBuf,
    key_path: PathBuf,
    holder: Arc<ReloadableCert>,
    audit: AuditLog,
    /// SHA-256 over the certificate and key file contents last looked at.
    seen: Option<[u8; 32]>,
    /// The expiry warning last given: (fingerprint, threshold in days).
    warned: Option<(String, i64)>,
}

impl std::fmt::Debug for CertReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertReloader").field("cert_path", &self.cert_path).field("key_path", &self.key_path).finish()
    }
}

impl CertReloader {
    /// A reloader for the pair at these paths, now being served by `holder`.
    pub fn new(cert_path: PathBuf, key_path: PathBuf, holder: Arc<ReloadableCert>, audit: AuditLog) -> Self {
        let mut reloader = CertReloader { cert_path, key_path, holder, audit, seen: None, warned: None };
        reloader.seen = reloader.content_digest();
        reloader
    }

    /// Digest of both files' current contents; `None` if either cannot be read.
    fn content_digest(&self) -> Option<[u8; 32]> {
        let cert = std::fs::read(&self.cert_path).ok()?;
        let key = std::fs::read(&self.key_path).ok()?;
        let mut both = Vec::with_capacity(cert.len() + key.len() + 16);
        for part in [&cert, &key] {
            both.extend_from_slice(&(part.len() as u64).to_be_bytes());
            both.extend_from_slice(part);
        }
        Some(crate::digest::sha256(&both))
    }

    /// Look at the files once; load, validate and swap in new content.
    pub async fn check(&mut self) -> Outcome {
        let digest = self.content_digest();
        // Unreadable files (mid-swap, or removed) are looked at again next time; a file
        // that stays unreadable is reported when someone asks (SIGHUP) and at the next start.
        if digest.is_none() || digest == self.seen {
            return Outcome::Unchanged;
        }
        self.seen = digest;
        let old = self.holder.current();
        match gateway_certs::load_server_cert(&self.cert_path, &self.key_path) {
            Ok(new) if new.info.sha256_fingerprint == old.info.sha256_fingerprint => Outcome::Unchanged,
            Ok(new) => {
                self.holder.replace(new.clone());
                tracing::info!(
                    subject = %new.info.subject,
                    key = %new.info.key,
                    not_after = %rfc3339(&new),
                    old_sha256 = %old.info.sha256_fingerprint,
                    new_sha256 = %new.info.sha256_fingerprint,
                    "TLS certificate reloaded; new handshakes use it"
                );
                self.record(&old, Some(&new), None).await;
                Outcome::Reloaded
            }
            Err(e) => {
                tracing::error!(error = %e, serving = %old.info.sha256_fingerprint, "new TLS certificate refused; the old one keeps serving");
                self.record(&old, None, Some(e.to_string())).await;
                Outcome::Refused
            }
        }
    }

    /// Warn once as the served certificate crosses each of [`EXPIRY_WARNINGS`].
    pub fn warn_expiry(&mut self, now: time::OffsetDateTime) {
        let served = self.holder.current();
        let left = served.info.not_after - now;
        let Some(&threshold) = EXPIRY_WARNINGS.iter().rev().find(|&&d| left <= time::Duration::days(d)) else {
            return;
        };
        let key = (served.info.sha256_fingerprint.clone(), threshold);
        if self.warned.as_ref() == Some(&key) {
            return;
        }
        self.warned = Some(key);
        tracing::warn!(
            days_left = left.whole_days(),
            hours_left = left.whole_hours(),
            not_after = %rfc3339(&served),
            sha256 = %served.info.sha256_fingerprint,
            cert = %self.cert_path.display(),
            "TLS certificate expires within {threshold} day(s); rotate it (replace the files: they are reloaded)"
        );
    }

    async fn record(&self, old: &LoadedCert, new: Option<&LoadedCert>, error: Option<String>) {
        let serving = new.unwrap_or(old);
        let entry = AuditEntry {
            protocol: Some("https".into()),
            operation: Some("certificate_reload".into()),
            path: Some(self.cert_path.display().to_string()),
            result: Some(if error.is_none() { "ok" } else { "error" }.into()),
            error,
            certificate: Some(CertFacts {
                previous_sha256: new.map(|_| old.info.sha256_fingerprint.clone()),
                sha256: serving.info.sha256_fingerprint.clone(),
                subject: serving.info.subject.clone(),
                not_after: rfc3339(serving),
            }),
            ..AuditEntry::new(AuditEvent::Operation)
        };
        if let Err(e) = self.audit.append(entry, true).await {
            tracing::error!(error = %e, "certificate reload could not be audited");
        }
    }

    /// Check every [`CHECK_INTERVAL`] and whenever `hup` is notified, until `stop` resolves.
    pub async fn run(mut self, hup: Arc<Notify>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {}
                () = hup.notified() => {
                    // Asked explicitly: look again even at content already refused.
                    self.seen = None;
                    if self.content_digest().is_none() {
                        tracing::error!(cert = %self.cert_path.display(), key = %self.key_path.display(), "SIGHUP: the TLS certificate or key cannot be read; the old pair keeps serving");
                    }
                }
            }
            self.check().await;
            self.warn_expiry(time::OffsetDateTime::now_utc());
        }
    }
}

fn rfc3339(c: &LoadedCert) -> String {
    c.info.not_after.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
