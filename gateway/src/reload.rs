//! Live changes without a restart: the TLS server certificate ([`CertReloader`]) and the
//! users, their tokens and SSH keys ([`UsersReloader`]); [`run`] looks at both every
//! [`CHECK_INTERVAL`] and on SIGHUP.
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
//!
//! [`HostKeyReloader`] (in `reload/host_keys.rs`) does the same for the SSH host keys.

mod host_keys;

pub use host_keys::HostKeyReloader;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gateway_certs::{LoadedCert, ReloadableCert};
use tokio::sync::Notify;

use crate::audit::{AuditEntry, AuditEvent, AuditLog, CertFacts};

/// SHA-256 over the contents of `paths` (each length-prefixed); `None` if one cannot be read.
/// Key material passes through: wiped when dropped.
fn files_digest<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> Option<[u8; 32]> {
    let mut all = zeroize::Zeroizing::new(Vec::new());
    for path in paths {
        let part = zeroize::Zeroizing::new(std::fs::read(path).ok()?);
        all.extend_from_slice(&(part.len() as u64).to_be_bytes());
        all.extend_from_slice(&part);
    }
    Some(crate::digest::sha256(&all))
}

/// A change is taken once two looks in a row see the same content (a file being written is
/// not read half-way), or at once when asked (SIGHUP).
#[derive(Debug, Default)]
pub(crate) struct Settle {
    settling: Option<[u8; 32]>,
}

impl Settle {
    /// Whether the changed content `digest` may be taken now.
    pub(crate) fn ready(&mut self, digest: Option<[u8; 32]>, now: bool) -> bool {
        if !now && self.settling != digest {
            self.settling = digest;
            return false;
        }
        self.settling = None;
        true
    }
}

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
    /// The client CA bundle and CRLs, when the listener asks for client certificates.
    clients: Option<ClientTrustWatch>,
    /// Refused certificates and client trust raise alerts here.
    alerts: crate::alerts::Alerts,
}

/// The client CA bundle and CRLs of `[https.client_auth]`, reloaded like the certificate:
/// by content, validated whole, refused material leaves the old trust in force.
pub struct ClientTrustWatch {
    ca: PathBuf,
    crls: Vec<PathBuf>,
    profile: gateway_certs::CipherProfile,
    mandatory: bool,
    holder: Arc<gateway_certs::ReloadableClientVerifier>,
    seen: Option<[u8; 32]>,
}

impl std::fmt::Debug for ClientTrustWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTrustWatch").field("ca", &self.ca).field("crls", &self.crls).finish()
    }
}

impl ClientTrustWatch {
    /// Watch the files of `config`, whose content `trust` was loaded from.
    pub fn new(
        config: &gateway_config::ClientAuthConfig,
        profile: gateway_certs::CipherProfile,
        trust: &gateway_certs::ClientTrust,
    ) -> ClientTrustWatch {
        let mandatory = config.mode == gateway_config::ClientAuthMode::Required;
        let mut watch = ClientTrustWatch {
            ca: config.ca.clone(),
            crls: config.crls.clone(),
            profile,
            mandatory,
            holder: Arc::new(gateway_certs::ReloadableClientVerifier::new(trust, mandatory)),
            seen: None,
        };
        watch.seen = watch.content_digest();
        watch
    }

    /// The verifier the listener uses.
    pub fn verifier(&self) -> Arc<gateway_certs::ReloadableClientVerifier> {
        self.holder.clone()
    }

    fn content_digest(&self) -> Option<[u8; 32]> {
        files_digest(std::iter::once(&self.ca).chain(self.crls.iter()))
    }

    async fn check(&mut self, audit: &AuditLog, alerts: &crate::alerts::Alerts) -> Outcome {
        let digest = self.content_digest();
        if digest.is_none() || digest == self.seen {
            return Outcome::Unchanged;
        }
        let previous = self.seen.map(hex::encode);
        self.seen = digest;
        let now = digest.map(hex::encode);
        let (outcome, error) = match gateway_certs::load_client_trust(
            self.profile,
            &self.ca,
            &self.crls,
            self.mandatory,
        ) {
            Ok(trust) => {
                self.holder.replace(&trust);
                tracing::info!(cas = trust.cas, crls = trust.crls, ca = %self.ca.display(), "client CA bundle and CRLs reloaded; new handshakes use them");
                (Outcome::Reloaded, None)
            }
            Err(e) => {
                tracing::error!(error = %e, "new client CA bundle or CRL refused; the old ones stay in force");
                let mut files = vec![self.ca.display().to_string()];
                files.extend(self.crls.iter().map(|p| p.display().to_string()));
                alerts.raise(refused_alert(
                    "client_trust_refused",
                    format!("a new client CA bundle or CRL was refused at reload: {e}"),
                    files,
                    self.seen.map(|d| format!("content sha256:{}", hex::encode(d))).into_iter().collect(),
                    "the client CA bundle and CRLs in force stay in force for new handshakes",
                ));
                (Outcome::Refused, Some(e.to_string()))
            }
        };
        let entry = AuditEntry {
            protocol: Some("https".into()),
            operation: Some("client_ca_reload".into()),
            path: Some(self.ca.display().to_string()),
            result: Some(if error.is_none() { "ok" } else { "error" }.into()),
            error,
            certificate: Some(CertFacts {
                previous_sha256: previous,
                sha256: now.unwrap_or_default(),
                subject: format!("client CA bundle {} and {} CRL file(s)", self.ca.display(), self.crls.len()),
                not_after: String::new(),
            }),
            ..AuditEntry::new(AuditEvent::Operation)
        };
        if let Err(e) = audit.append(entry, true).await {
            tracing::error!(error = %e, "client CA reload could not be audited");
        }
        outcome
    }
}

impl std::fmt::Debug for CertReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertReloader").field("cert_path", &self.cert_path).field("key_path", &self.key_path).finish()
    }
}

impl CertReloader {
    /// A reloader for the pair at these paths, now being served by `holder`.
    pub fn new(cert_path: PathBuf, key_path: PathBuf, holder: Arc<ReloadableCert>, audit: AuditLog) -> Self {
        crate::metrics::metrics().set_cert_not_after(holder.current().info.not_after.unix_timestamp());
        let mut reloader = CertReloader {
            cert_path,
            key_path,
            holder,
            audit,
            seen: None,
            warned: None,
            clients: None,
            alerts: crate::alerts::Alerts::disabled(),
        };
        reloader.seen = reloader.content_digest();
        reloader
    }

    /// Digest of both files' current contents; `None` if either cannot be read.
    fn content_digest(&self) -> Option<[u8; 32]> {
        files_digest([&self.cert_path, &self.key_path])
    }

    /// Also watch the client CA bundle and CRLs.
    pub fn watch_clients(&mut self, clients: Option<ClientTrustWatch>) {
        self.clients = clients;
    }

    /// Raise an alert for every refused certificate or client trust.
    pub fn set_alerts(&mut self, alerts: crate::alerts::Alerts) {
        self.alerts = alerts;
    }

    /// Look at the client CA bundle and CRLs once.
    pub async fn check_clients(&mut self) -> Outcome {
        match self.clients.as_mut() {
            Some(c) => c.check(&self.audit, &self.alerts).await,
            None => Outcome::Unchanged,
        }
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
                crate::metrics::metrics().set_cert_not_after(new.info.not_after.unix_timestamp());
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
                self.alerts.raise(refused_alert(
                    "certificate_refused",
                    format!("a new TLS certificate or key was refused at reload: {e}"),
                    vec![self.cert_path.display().to_string(), self.key_path.display().to_string()],
                    vec![format!("serving sha256:{}", old.info.sha256_fingerprint)],
                    "the certificate in force keeps serving; nothing else changed",
                ));
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
}

/// The alert for refused certificate, trust or key material at reload.
pub(crate) fn refused_alert(
    kind: &'static str,
    nature: String,
    files: Vec<String>,
    fingerprints: Vec<String>,
    kept: &str,
) -> crate::alerts::Alert {
    crate::alerts::Alert {
        severity: crate::alerts::Severity::Warning,
        kind,
        nature,
        scope: crate::alerts::Scope { files, fingerprints, count: 1, ..Default::default() },
        actions_taken: vec![
            format!("the new material was refused: {kept}"),
            "the attempt is in the audit trail with the error".into(),
        ],
        remediation: vec![
            "check who or what replaced these files; if it was not a planned rotation, treat it as tampering".into(),
            "for a planned rotation, fix the files (chain, key match, expiry, permissions) and send SIGHUP".into(),
        ],
        next_steps: vec![
            "`gateway certs inspect` / `gateway check-config` on the files show what is wrong".into(),
            "the material in force may be near its expiry: check the gateway_tls_certificate_expiry_seconds metric"
                .into(),
        ],
    }
}

/// Look at the certificate files and the configuration every [`CHECK_INTERVAL`] and whenever
/// `hup` is notified, until `stop` resolves.
pub async fn run(
    mut cert: CertReloader,
    mut users: Option<UsersReloader>,
    mut host_keys: Option<HostKeyReloader>,
    hup: Arc<Notify>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
            () = hup.notified() => {
                // Asked explicitly: look again even at content already refused.
                cert.seen = None;
                if let Some(c) = cert.clients.as_mut() {
                    c.seen = None;
                }
                if cert.content_digest().is_none() {
                    tracing::error!(cert = %cert.cert_path.display(), key = %cert.key_path.display(), "SIGHUP: the TLS certificate or key cannot be read; the old pair keeps serving");
                }
                if let Some(u) = users.as_mut() {
                    u.check(true).await;
                }
                if let Some(h) = host_keys.as_mut() {
                    h.forget();
                    h.check(true).await;
                }
            }
        }
        cert.check().await;
        cert.check_clients().await;
        cert.warn_expiry(time::OffsetDateTime::now_utc());
        if let Some(u) = users.as_mut() {
            u.check(false).await;
        }
        if let Some(h) = host_keys.as_mut() {
            h.check(false).await;
        }
    }
}

/// A token that is not in the configuration file but must survive a reload (the development
/// demo token).
#[derive(Clone)]
pub struct ExtraToken {
    /// Its user.
    pub user: String,
    /// Its credential id.
    pub id: String,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
}

/// Rebuilds the user directory from the configuration file when its content changes. The
/// new file is validated whole (every problem listed, as `check-config` does); any problem,
/// or a change to the set of tenants (which, like every other section, changes only at a
/// restart), refuses it whole and the running directory stays.
pub struct UsersReloader {
    path: PathBuf,
    users: Arc<crate::auth::Users>,
    tenants: Vec<String>,
    extra: Option<ExtraToken>,
    audit: AuditLog,
    /// Digest of the content last acted on.
    seen: Option<[u8; 32]>,
    /// New content is taken once two periodic looks agree (so a file caught half-written by
    /// an editor is not refused).
    settling: Settle,
}

impl std::fmt::Debug for UsersReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsersReloader").field("path", &self.path).field("tenants", &self.tenants).finish()
    }
}

/// At most this many problems go into the audit record of a refused reload (all are logged).
const PROBLEMS_IN_RECORD: usize = 10;

impl UsersReloader {
    /// Watch `path` (the configuration the process started from, whose tenants are
    /// `tenants`) and swap new directories into `users`.
    pub fn new(
        path: PathBuf,
        users: Arc<crate::auth::Users>,
        mut tenants: Vec<String>,
        extra: Option<ExtraToken>,
        audit: AuditLog,
    ) -> Self {
        tenants.sort();
        let seen = std::fs::read(&path).ok().map(|t| crate::digest::sha256(&t));
        UsersReloader { path, users, tenants, extra, audit, seen, settling: Settle::default() }
    }

    /// Look at the file once; rebuild and swap in the directory if its content changed and
    /// either `now` (SIGHUP) or the previous look saw the same new content.
    pub async fn check(&mut self, now: bool) -> Outcome {
        let Ok(bytes) = std::fs::read(&self.path) else {
            if now {
                tracing::error!(config = %self.path.display(), "SIGHUP: the configuration cannot be read; the running users stay in force");
            }
            return Outcome::Unchanged; // mid-replacement, or gone: looked at again next time
        };
        let digest = Some(crate::digest::sha256(&bytes));
        if digest == self.seen {
            return Outcome::Unchanged;
        }
        if !self.settling.ready(digest, now) {
            return Outcome::Unchanged;
        }
        self.seen = digest;
        match self.build(&bytes) {
            Ok(directory) => {
                let before = self.users.current();
                let (old, new) = (before.user_names(), directory.user_names());
                let added: Vec<&String> = new.iter().filter(|n| !old.contains(n)).collect();
                let removed: Vec<&String> = old.iter().filter(|n| !new.contains(n)).collect();
                tracing::info!(
                    users = new.len(),
                    tokens = directory.token_count(),
                    ?added,
                    ?removed,
                    config = %self.path.display(),
                    "configuration reloaded: users, tokens and SSH keys in force for new logins and requests"
                );
                self.users.replace(directory);
                self.record(None).await;
                Outcome::Reloaded
            }
            Err(problems) => {
                for p in &problems {
                    tracing::error!(config = %self.path.display(), problem = %p, "configuration problem");
                }
                tracing::error!(
                    problems = problems.len(),
                    config = %self.path.display(),
                    "configuration reload refused; the running users stay in force"
                );
                let mut text = problems.iter().take(PROBLEMS_IN_RECORD).cloned().collect::<Vec<_>>().join("; ");
                if problems.len() > PROBLEMS_IN_RECORD {
                    text.push_str(&format!("; and {} more", problems.len() - PROBLEMS_IN_RECORD));
                }
                self.record(Some(text)).await;
                Outcome::Refused
            }
        }
    }

    fn build(&self, bytes: &[u8]) -> Result<crate::auth::Directory, Vec<String>> {
        let text = std::str::from_utf8(bytes).map_err(|_| vec![format!("{}: not UTF-8", self.path.display())])?;
        let (config, errors) = gateway_config::parse(text, &self.path.display().to_string());
        if !errors.is_empty() {
            return Err(errors.iter().map(ToString::to_string).collect());
        }
        let mut tenants: Vec<String> = config.tenants.iter().map(|t| t.name.clone()).collect();
        tenants.sort();
        if tenants != self.tenants {
            return Err(vec![format!(
                "{}: [[tenants]] changed (running: {}; file: {}); tenants and storage change only at a restart",
                self.path.display(),
                self.tenants.join(", "),
                tenants.join(", ")
            )]);
        }
        let mut directory = crate::auth::Directory::from_config(&config)?;
        if let Some(extra) = &self.extra {
            directory.add_token(&extra.user, &extra.id, extra.sha256).map_err(|e| vec![e])?;
        }
        Ok(directory)
    }

    async fn record(&self, error: Option<String>) {
        let entry = AuditEntry {
            operation: Some("users_reload".into()),
            path: Some(self.path.display().to_string()),
            result: Some(if error.is_none() { "ok" } else { "error" }.into()),
            error,
            ..AuditEntry::new(AuditEvent::Operation)
        };
        if let Err(e) = self.audit.append(entry, true).await {
            tracing::error!(error = %e, "configuration reload could not be audited");
        }
    }
}

fn rfc3339(c: &LoadedCert) -> String {
    c.info.not_after.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
