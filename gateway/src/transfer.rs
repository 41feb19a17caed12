//! THE choke point: every frontend reaches storage only through [`Transfers`].
//!
//! Each operation runs: authorise (permission + confined path) → audit `started` → stream →
//! audit `completed` or `failed`. Reads (list, stat) write one `operation` record with their
//! result; refusals write a `denied` record. An [`Upload`] or download stream dropped
//! half-way (client gone, shutdown) still writes its `failed` record from `Drop`, and an
//! unfinished upload leaves nothing in storage.
//!
//! Changes are audited write-ahead ([`write_ahead`]): an upload's commit, a delete, rename,
//! mkdir or rmdir first writes a durable `intent` record (with the `transfer_id` its outcome
//! will carry), then touches storage, then writes the durable outcome (`completed`/`failed`
//! for an upload, `operation` otherwise). If the intent cannot be written nothing happens and
//! the request fails ([`TransferError::Audit`]: HTTPS 503, SFTP failure). If the outcome
//! cannot be written the change is undone where that is possible and the request fails:
//! an upload's new object is deleted (an object it replaced is not restored), a rename is
//! renamed back (likewise), a new directory is removed, a removed directory is made again;
//! a delete cannot be undone. An intent left without an outcome is recorded as `interrupted`
//! at the next start.
//!
//! Every audit append is bounded in time (`audit.append_timeout`), so a stalled trail fails
//! requests rather than hanging them. Every transfer object holds a token of the in-flight
//! tracker ([`Transfers::wait_until_idle`]), so shutdown can wait until each one has queued
//! its terminal record before the trail is closed.

#[cfg(test)]
mod tests;
mod write_ahead;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use tokio_util::task::task_tracker::{TaskTracker, TaskTrackerToken};
use write_ahead::{append_outcome, open_record, outcome, settle, take_back, Undo};

use crate::audit::{AuditEntry, AuditError, AuditEvent, AuditLog};
use crate::auth::Principal;
use crate::path::{escape_invisible, NameRefusal, ObjectKey, PathError, RelPath};
use crate::secrets::random_bytes;
use crate::storage::{
    ByteRange, ByteStream, EntryKind, ListCursor, ListEntry, ListPage, ObjectMeta, ObjectStore, ObjectWriter,
    RangeRequest, StorageError,
};

/// Which frontend a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTPS API.
    Https,
    /// SFTP subsystem.
    Sftp,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Https => "https",
            Protocol::Sftp => "sftp",
        }
    }
}

/// What the audit trail records about the client's connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Frontend.
    pub protocol: Protocol,
    /// Peer address.
    pub remote_addr: SocketAddr,
    /// TLS version, for HTTPS.
    pub tls_version: Option<String>,
    /// TLS cipher suite, for HTTPS.
    pub tls_cipher: Option<String>,
    /// The verified TLS client certificate, for HTTPS with mTLS.
    pub client_cert: Option<Arc<gateway_certs::PeerCert>>,
    /// SSH client version string, for SFTP.
    pub ssh_client: Option<String>,
    /// SSH kex, for SFTP.
    pub ssh_kex: Option<String>,
    /// SSH cipher, for SFTP.
    pub ssh_cipher: Option<String>,
    /// SSH MAC, for SFTP.
    pub ssh_mac: Option<String>,
}

impl ClientInfo {
    /// An HTTPS client.
    pub fn https(remote_addr: SocketAddr, tls_version: Option<String>, tls_cipher: Option<String>) -> ClientInfo {
        ClientInfo {
            protocol: Protocol::Https,
            remote_addr,
            tls_version,
            tls_cipher,
            client_cert: None,
            ssh_client: None,
            ssh_kex: None,
            ssh_cipher: None,
            ssh_mac: None,
        }
    }

    /// An audit entry carrying the connection's fields and who is logged in on it.
    pub fn user_entry(&self, event: AuditEvent, who: &Principal) -> AuditEntry {
        AuditEntry {
            user: Some(who.user.to_string()),
            tenant: Some(who.tenant.to_string()),
            auth_method: Some(who.auth_method.into()),
            credential_id: Some(who.credential_id.clone()),
            ..self.entry(event)
        }
    }

    /// An audit entry carrying the connection's fields.
    pub fn entry(&self, event: AuditEvent) -> AuditEntry {
        AuditEntry {
            protocol: Some(self.protocol.as_str().into()),
            remote_addr: Some(self.remote_addr.to_string()),
            tls_version: self.tls_version.clone(),
            tls_cipher: self.tls_cipher.clone(),
            client_cert_sha256: self.client_cert.as_ref().map(|c| c.sha256_hex()),
            client_cert_subject: self.client_cert.as_ref().map(|c| c.subject.clone()),
            ssh_client: self.ssh_client.clone(),
            ssh_kex: self.ssh_kex.clone(),
            ssh_cipher: self.ssh_cipher.clone(),
            ssh_mac: self.ssh_mac.clone(),
            ..AuditEntry::new(event)
        }
    }
}

/// Permissions an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Listing directories.
    List,
    /// Reading objects and their metadata.
    Read,
    /// Creating or replacing objects.
    Write,
    /// Removing objects and empty directories.
    Delete,
    /// Renaming.
    Rename,
    /// Creating directories.
    Mkdir,
}

impl Permission {
    /// The permission's name as the configuration spells it.
    fn name(self) -> &'static str {
        match self {
            Permission::List => "list",
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Delete => "delete",
            Permission::Rename => "rename",
            Permission::Mkdir => "mkdir",
        }
    }

    fn granted(self, who: &Principal) -> bool {
        let p = &who.permissions;
        match self {
            Permission::List => p.list,
            Permission::Read => p.read,
            Permission::Write => p.write,
            Permission::Delete => p.delete,
            Permission::Rename => p.rename,
            Permission::Mkdir => p.mkdir,
        }
    }
}

/// Why an operation failed; each frontend maps these to its protocol's codes in one place.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The path was malformed or would escape the home.
    #[error("{0}")]
    InvalidPath(#[from] PathError),
    /// The user lacks the permission.
    #[error("permission denied: {0} is not allowed for this user")]
    Forbidden(&'static str),
    /// No such object.
    #[error("no such object")]
    NotFound,
    /// The path names a directory where an object is needed, or the reverse.
    #[error("{0}")]
    Conflict(String),
    /// Range outside the object.
    #[error("range not satisfiable")]
    RangeNotSatisfiable {
        /// The object's size.
        size: u64,
    },
    /// The client's digest did not match what arrived; nothing was stored.
    #[error("content digest does not match the received body; nothing was stored")]
    DigestMismatch,
    /// Stored data failed its integrity check.
    #[error("stored object failed its integrity check")]
    Integrity,
    /// The backend failed; detail is in the server log only.
    #[error("storage failure")]
    Storage(String),
    /// The backend is unreachable, slow or throttling, or the object changed mid-request:
    /// retrying later may succeed. Detail is in the server log only.
    #[error("storage temporarily unavailable; try again")]
    Unavailable(String),
    /// The client's body stream failed, was cut short or stalled.
    #[error("{0}")]
    Client(String),
    /// The upload is larger than the configured maximum; nothing was stored.
    #[error("object larger than the maximum of {max} bytes; nothing was stored")]
    TooLarge {
        /// `storage.max_object_size`.
        max: u64,
    },
    /// The audit trail could not be written, so the operation did not happen.
    #[error("audit trail unavailable")]
    Audit(#[from] AuditError),
}

impl From<StorageError> for TransferError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound => TransferError::NotFound,
            StorageError::Conflict(m) => TransferError::Conflict(m),
            StorageError::RangeNotSatisfiable { size } => TransferError::RangeNotSatisfiable { size },
            StorageError::DigestMismatch => TransferError::DigestMismatch,
            StorageError::Integrity(m) => {
                tracing::error!(detail = %m, "integrity check failed");
                TransferError::Integrity
            }
            e @ (StorageError::Throttled(_) | StorageError::Unavailable(_) | StorageError::PreconditionFailed(_)) => {
                tracing::warn!(error = %e, "storage unavailable");
                TransferError::Unavailable(e.to_string())
            }
            other => {
                tracing::error!(error = %other, "storage failure");
                TransferError::Storage(other.to_string())
            }
        }
    }
}

impl TransferError {
    /// Short text for the audit record's `error` field.
    fn audit_text(&self) -> String {
        match self {
            TransferError::Storage(detail) => format!("storage failure: {detail}"),
            TransferError::Unavailable(detail) => format!("storage unavailable: {detail}"),
            other => other.to_string(),
        }
    }
}

/// The result of a committed upload.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// Audit transfer id.
    pub transfer_id: String,
    /// Object size.
    pub size: u64,
    /// Object SHA-256.
    pub sha256: [u8; 32],
}

/// The transfer path.
#[derive(Clone)]
pub struct Transfers {
    store: Arc<dyn ObjectStore>,
    audit: AuditLog,
    max_object_size: u64,
    /// Characters refused in client names beyond the always-refused ones (`[storage]
    /// refuse_in_names`); the frontends parse paths with it.
    names: NameRefusal,
    /// Uploads, downloads and read sessions alive (each holds a token).
    live: TaskTracker,
    /// Scores misbehaving sources (both frontends report through [`Transfers::offence`]).
    defender: Option<Arc<crate::defender::Defender>>,
    /// Security alerts (traversal attempts, encryption not confirmed); the frontends reach
    /// it through [`Transfers::alerts`] for authentication failures.
    alerts: crate::alerts::Alerts,
    /// Authentication failures beyond a rate per source, folded into summary records.
    auth_folder: Option<Arc<crate::audit::fold::AuthFailureFolder>>,
    /// Who may log in now (disabled, expired, dormant, source); both frontends ask it
    /// after a credential checked out ([`Transfers::accounts`]).
    accounts: crate::accounts::Accounts,
}

impl std::fmt::Debug for Transfers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transfers")
    }
}

/// Sources whose authentication failures are being folded at once.
const AUTH_FOLD_SOURCES: usize = 10_000;

fn new_transfer_id() -> String {
    random_bytes::<16>().map(hex::encode).unwrap_or_else(|_| "unavailable".into())
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Transfers {
    /// The transfer path over a store and an audit trail; uploads stop at `max_object_size`.
    pub fn new(store: Arc<dyn ObjectStore>, audit: AuditLog, max_object_size: u64) -> Transfers {
        Transfers {
            store,
            audit,
            max_object_size,
            names: NameRefusal::default(),
            live: TaskTracker::new(),
            defender: None,
            alerts: crate::alerts::Alerts::disabled(),
            auth_folder: None,
            accounts: crate::accounts::Accounts::unchecked(),
        }
    }

    /// Write at most `limit` authentication failures per source per `window`; fold the rest
    /// into summary records.
    pub fn with_auth_folding(self, limit: u32, window: Duration) -> Transfers {
        let folder = crate::audit::fold::AuthFailureFolder::new(limit, window, AUTH_FOLD_SOURCES);
        Transfers { auth_folder: Some(Arc::new(folder)), ..self }
    }

    /// Audit an authentication failure from `source`: written, or counted into the
    /// source's summary record when it is over its rate (see [`crate::audit::fold`]).
    pub async fn audit_auth_failure(&self, entry: AuditEntry, source: std::net::IpAddr) -> Result<(), AuditError> {
        let entry = crate::accounts::annotate(entry);
        let Some(folder) = &self.auth_folder else {
            return self.audit.append(entry, false).await.map(|_| ());
        };
        let (fold, summaries) = folder.check(source, &entry, Instant::now());
        for s in summaries {
            self.audit.append(s, false).await?;
        }
        match fold {
            crate::audit::fold::Fold::Write => self.audit.append(entry, false).await.map(|_| ()),
            crate::audit::fold::Fold::Folded => Ok(()),
        }
    }

    /// Write the summaries of ended windows (all of them when `all`, at shutdown).
    pub async fn flush_auth_summaries(&self, all: bool) {
        let Some(folder) = &self.auth_folder else { return };
        for s in folder.flush(Instant::now(), all) {
            if let Err(e) = self.audit.append(s, false).await {
                tracing::error!(error = %e, "could not write an authentication failure summary");
            }
        }
    }

    /// Check logins against `accounts` (default: no account checks).
    pub fn with_accounts(self, accounts: crate::accounts::Accounts) -> Transfers {
        Transfers { accounts, ..self }
    }

    /// The account checks the frontends apply after a credential checked out.
    pub fn accounts(&self) -> &crate::accounts::Accounts {
        &self.accounts
    }

    /// Raise security alerts through `alerts`.
    pub fn with_alerts(self, alerts: crate::alerts::Alerts) -> Transfers {
        Transfers { alerts, ..self }
    }

    /// The alert sink, for events the frontends see (authentication failures).
    pub fn alerts(&self) -> &crate::alerts::Alerts {
        &self.alerts
    }

    /// Score misbehaviour with `defender` (and refuse banned sources at accept).
    pub fn with_defender(self, defender: Arc<crate::defender::Defender>) -> Transfers {
        Transfers { defender: Some(defender), ..self }
    }

    /// The defender, when one is configured.
    pub fn defender(&self) -> Option<&Arc<crate::defender::Defender>> {
        self.defender.as_ref()
    }

    /// Whether the defender bans the source `ip` now.
    pub fn banned(&self, ip: std::net::IpAddr) -> bool {
        self.defender
            .as_ref()
            .is_some_and(|d| matches!(d.check(ip, std::time::SystemTime::now()), crate::defender::Verdict::Refuse(_)))
    }

    /// Count `offence` against the source `ip` (nothing without a defender).
    pub fn offence(&self, ip: std::net::IpAddr, offence: crate::defender::Offence) {
        if let Some(d) = &self.defender {
            d.record(ip, offence, std::time::SystemTime::now());
        }
    }

    /// Parse client paths under `names` (default: [`NameRefusal::Invisible`]).
    pub fn with_names(self, names: NameRefusal) -> Transfers {
        Transfers { names, ..self }
    }

    /// What client names may not hold: frontends pass it to [`RelPath::from_url_with`] and
    /// [`RelPath::from_plain_with`].
    pub fn names(&self) -> NameRefusal {
        self.names
    }

    /// At shutdown, once the frontends have ended every connection: wait (at most `limit`)
    /// until every upload, download and read session has been dropped, and so has queued its
    /// terminal record. Returns how many are still alive.
    pub async fn wait_until_idle(&self, limit: Duration) -> usize {
        self.live.close();
        match tokio::time::timeout(limit, self.live.wait()).await {
            Ok(()) => 0,
            Err(_) => self.live.len(),
        }
    }

    /// Write a transfer's `started` record; if it may still land after a timeout, its
    /// `failed` outcome is queued behind it.
    async fn start(&self, base: &AuditEntry) -> Result<(), TransferError> {
        let abandoned = AuditEntry {
            bytes: Some(0),
            ..outcome(base, AuditEvent::Failed, Some("not started: the audit trail did not confirm the start".into()))
        };
        Ok(open_record(&self.audit, base.clone(), false, abandoned).await?)
    }

    /// A change to storage, audited write-ahead: durable `intent`, the change, durable
    /// `operation` outcome, with `undo` applied when the outcome cannot be written.
    async fn change<T>(
        &self,
        who: &Principal,
        base: AuditEntry,
        run: impl std::future::Future<Output = Result<T, TransferError>>,
        undo: Undo,
    ) -> Result<T, TransferError> {
        let base = AuditEntry { transfer_id: Some(new_transfer_id()), ..base };
        let intent = AuditEntry { event: AuditEvent::Intent, ..base.clone() };
        let abandoned = outcome(
            &base,
            AuditEvent::Operation,
            Some("not performed: the audit trail did not confirm the intent".into()),
        );
        open_record(&self.audit, intent, true, abandoned).await?;
        let started = Instant::now();
        let result = run.await;
        let entry = AuditEntry {
            duration_ms: Some(elapsed_ms(started)),
            ..outcome(&base, AuditEvent::Operation, result.as_ref().err().map(TransferError::audit_text))
        };
        let undo = if result.is_ok() { undo } else { Undo::Nothing };
        settle(&self.audit, self.store.as_ref(), &who.tenant, entry, undo).await?;
        result
    }

    /// Largest object an upload may create.
    pub fn max_object_size(&self) -> u64 {
        self.max_object_size
    }

    /// The audit trail, for frontends' authentication records.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    fn entry(&self, event: AuditEvent, who: &Principal, client: &ClientInfo, op: &str, rel: &RelPath) -> AuditEntry {
        AuditEntry {
            operation: Some(op.into()),
            path: Some(rel.display()),
            object_key: Some(who.home.join(rel).to_string()),
            ..client.user_entry(event, who)
        }
    }

    /// Check a permission; a refusal is audited as `denied`.
    async fn authorise(
        &self,
        who: &Principal,
        client: &ClientInfo,
        need: Permission,
        op: &'static str,
        rel: &RelPath,
    ) -> Result<ObjectKey, TransferError> {
        if !need.granted(who) {
            self.deny(self.entry(AuditEvent::Denied, who, client, op, rel), format!("{op} not permitted")).await?;
            return Err(TransferError::Forbidden(op));
        }
        Ok(who.home.join(rel))
    }

    /// Write the `denied` record for `base` with `error` (which must hold no peer input).
    async fn deny(&self, base: AuditEntry, error: String) -> Result<(), TransferError> {
        let entry = AuditEntry { event: AuditEvent::Denied, result: Some("denied".into()), error: Some(error), ..base };
        self.audit.append(entry, false).await?;
        Ok(())
    }

    /// Record a refusal that happened before any operation could be named precisely
    /// (a malformed path, say). The path is bounded, without control characters, and
    /// with invisible ones written `<U+XXXX>`, so the record shows what was sent.
    pub async fn deny_path(&self, who: &Principal, client: &ClientInfo, op: &str, raw: &str, why: &PathError) {
        if matches!(why, PathError::DotSegment | PathError::EncodedSeparator | PathError::Backslash) {
            // A traversal attempt: protocol abuse for the defender.
            self.offence(client.remote_addr.ip(), crate::defender::Offence::ProtocolAbuse);
        }
        let entry = AuditEntry {
            operation: Some(op.into()),
            path: Some(escape_invisible(raw).chars().take(1024).collect()),
            result: Some("denied".into()),
            error: Some(why.to_string()),
            ..client.user_entry(AuditEvent::Denied, who)
        };
        if let Err(e) = self.audit.append(entry, false).await {
            tracing::error!(error = %e, "could not audit a refused path");
        }
        if matches!(why, PathError::DotSegment | PathError::EncodedSeparator | PathError::Backslash) {
            let path: String = raw.chars().filter(|c| !c.is_control()).take(1024).collect();
            let protocol = client.protocol.as_str();
            self.alerts.traversal_attempt(protocol, client.remote_addr.ip(), &who.user, &path, &why.to_string());
        }
    }

    /// An authenticated client broke the protocol (`what`, already bounded by the caller):
    /// a `protocol_abuse` record, a defender offence and an alert. The caller ends the session.
    pub async fn protocol_abuse(&self, who: &Principal, client: &ClientInfo, what: &str) {
        self.offence(client.remote_addr.ip(), crate::defender::Offence::ProtocolAbuse);
        let entry = AuditEntry {
            operation: Some("protocol_abuse".into()),
            result: Some("denied".into()),
            error: Some(what.to_owned()),
            ..client.user_entry(AuditEvent::Denied, who)
        };
        if let Err(e) = self.audit.append(entry, false).await {
            tracing::error!(error = %e, "could not audit a protocol violation");
        }
        self.alerts.protocol_abuse(client.protocol.as_str(), client.remote_addr.ip(), &who.user, what);
    }

    /// Begin an upload of `rel`. The object appears only when [`Upload::finish`] succeeds.
    pub async fn begin_upload(
        &self,
        who: &Principal,
        client: &ClientInfo,
        rel: &RelPath,
        size_hint: Option<u64>,
    ) -> Result<Upload, TransferError> {
        if rel.is_dir() {
            return Err(TransferError::Conflict("cannot upload to a directory path".into()));
        }
        let key = self.authorise(who, client, Permission::Write, "upload", rel).await?;
        let transfer_id = new_transfer_id();
        let base = AuditEntry {
            transfer_id: Some(transfer_id.clone()),
            ..self.entry(AuditEvent::Started, who, client, "upload", rel)
        };
        // The `started` record is queued, not waited for: it only has to be on disk before
        // storage changes, and the durable `intent` that precedes the commit comes after it
        // in the trail, so that append confirms it (or fails, and nothing is committed). A
        // broken trail refuses the upload here already. Meanwhile the store prepares (local:
        // nothing visible before commit); a writer not wanted is aborted.
        let started = async { Ok::<_, TransferError>(self.audit.append_queued(base.clone()).await?) };
        let (started, writer) =
            tokio::join!(started, self.store.begin_upload(&who.tenant, &key, size_hint, &transfer_id));
        if let Err(e) = started {
            if let Ok(w) = writer {
                w.abort().await;
            }
            return Err(e);
        }
        let mut upload = Upload {
            writer: None,
            bytes: 0,
            max: self.max_object_size,
            started: Instant::now(),
            audit: self.audit.clone(),
            base,
            transfer_id,
            done: false,
            store: self.store.clone(),
            tenant: who.tenant.clone(),
            key: key.clone(),
            alerts: self.alerts.clone(),
            _live: self.live.token(),
        };
        match writer {
            Ok(w) => upload.writer = Some(w),
            Err(e) => {
                let e = TransferError::from(e);
                upload.record_failure(&e).await;
                return Err(e);
            }
        }
        Ok(upload)
    }

    /// Open `rel` for download; the returned stream writes the terminal audit record.
    pub async fn download(
        &self,
        who: &Principal,
        client: &ClientInfo,
        rel: &RelPath,
        range: RangeRequest,
    ) -> Result<Download, TransferError> {
        let key = self.authorise(who, client, Permission::Read, "download", rel).await?;
        let transfer_id = new_transfer_id();
        let base = AuditEntry {
            transfer_id: Some(transfer_id),
            ..self.entry(AuditEvent::Started, who, client, "download", rel)
        };
        self.start(&base).await?;
        let started = Instant::now();
        match self.store.open(&who.tenant, &key, range).await {
            Ok(read) => Ok(Download {
                meta: read.meta.clone(),
                range: read.range,
                body: AuditedBody {
                    inner: read.body,
                    audit: self.audit.clone(),
                    base: AuditEntry { s3: read.meta.location.as_ref().map(|l| l.audit()), ..base },
                    sha256: read.meta.sha256,
                    bytes: 0,
                    expected: read.range.len(),
                    started,
                    done: false,
                    _live: self.live.token(),
                },
            }),
            Err(e) => {
                let e = TransferError::from(e);
                let entry = AuditEntry {
                    result: Some("error".into()),
                    error: Some(e.audit_text()),
                    bytes: Some(0),
                    duration_ms: Some(elapsed_ms(started)),
                    event: AuditEvent::Failed,
                    ..base
                };
                append_outcome(&self.audit, entry, false).await?;
                Err(e)
            }
        }
    }

    /// A read (stat, list) and its one `operation` record.
    async fn operation<T>(
        &self,
        who: &Principal,
        client: &ClientInfo,
        rel: &RelPath,
        op: &'static str,
        run: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, TransferError> {
        let started = Instant::now();
        let result = run.await.map_err(TransferError::from);
        let entry = AuditEntry {
            result: Some(if result.is_ok() { "ok" } else { "error" }.into()),
            error: result.as_ref().err().map(TransferError::audit_text),
            duration_ms: Some(elapsed_ms(started)),
            ..self.entry(AuditEvent::Operation, who, client, op, rel)
        };
        self.audit.append(entry, false).await?;
        result
    }

    /// Metadata of an object.
    pub async fn stat(&self, who: &Principal, client: &ClientInfo, rel: &RelPath) -> Result<ObjectMeta, TransferError> {
        let key = self.authorise(who, client, Permission::Read, "stat", rel).await?;
        self.operation(who, client, rel, "stat", self.store.stat(&who.tenant, &key)).await
    }

    /// Remove an object.
    pub async fn delete(&self, who: &Principal, client: &ClientInfo, rel: &RelPath) -> Result<(), TransferError> {
        if rel.is_dir() {
            return Err(TransferError::Conflict("cannot delete a directory path".into()));
        }
        let key = self.authorise(who, client, Permission::Delete, "delete", rel).await?;
        let base = self.entry(AuditEvent::Operation, who, client, "delete", rel);
        let undo = Undo::Impossible("a deleted object cannot be restored");
        self.change(who, base, async { Ok(self.store.delete(&who.tenant, &key).await?) }, undo).await
    }

    /// What a path is (object or directory) without auditing: a metadata lookup that SFTP
    /// clients make constantly (`stat`, `lstat`). Needs `list` or `read`.
    pub async fn head(&self, who: &Principal, rel: &RelPath) -> Result<ListEntry, TransferError> {
        if !(who.permissions.list || who.permissions.read) {
            return Err(TransferError::Forbidden("stat"));
        }
        let key = who.home.join(rel);
        if key == who.home {
            // The home itself always exists for the user, even before the first upload.
            return match self.store.head(&who.tenant, &key).await {
                Ok(e) => Ok(e),
                Err(StorageError::NotFound) => Ok(ListEntry {
                    name: String::new(),
                    kind: EntryKind::Dir,
                    size: 0,
                    modified: std::time::UNIX_EPOCH,
                }),
                Err(e) => Err(e.into()),
            };
        }
        Ok(self.store.head(&who.tenant, &key).await?)
    }

    /// Create a directory.
    pub async fn mkdir(&self, who: &Principal, client: &ClientInfo, rel: &RelPath) -> Result<(), TransferError> {
        let key = self.authorise(who, client, Permission::Mkdir, "mkdir", rel).await?;
        let base = self.entry(AuditEvent::Operation, who, client, "mkdir", rel);
        let made = async {
            self.ensure_home(who).await?;
            Ok(self.store.mkdir(&who.tenant, &key).await?)
        };
        self.change(who, base, made, Undo::Rmdir(key.clone())).await
    }

    /// Remove an empty directory.
    pub async fn rmdir(&self, who: &Principal, client: &ClientInfo, rel: &RelPath) -> Result<(), TransferError> {
        let key = self.authorise(who, client, Permission::Delete, "rmdir", rel).await?;
        let base = self.entry(AuditEvent::Operation, who, client, "rmdir", rel);
        self.change(who, base, async { Ok(self.store.rmdir(&who.tenant, &key).await?) }, Undo::Mkdir(key.clone())).await
    }

    /// Rename within the user's home.
    ///
    /// Both paths are `RelPath`s joined under the home, so both are confined to it, and the
    /// user needs `rename` (permissions are per user, so this one check covers source and
    /// target). Plain rename (`replace == false`, SFTP's `SSH_FXP_RENAME`) never replaces
    /// anything: an existing target is a conflict. `replace` (`posix-rename@openssh.com`)
    /// destroys an existing object at the target, so it additionally needs `write` and
    /// `delete`; a user without both gets `denied` when the target is an object, and the store
    /// is asked *not* to replace, so an object that appears at the target after that check
    /// is refused by the store rather than overwritten. A directory is never replaced (the
    /// store refuses). Each refusal is one `denied` record with both paths (each a bounded
    /// `RelPath`) and the missing permission; everything else an `intent` and its
    /// `operation` outcome.
    pub async fn rename(
        &self,
        who: &Principal,
        client: &ClientInfo,
        from: &RelPath,
        to: &RelPath,
        replace: bool,
    ) -> Result<(), TransferError> {
        let src = who.home.join(from);
        let dst = who.home.join(to);
        let record = |event| AuditEntry {
            path: Some(format!("{} -> {}", from.display(), to.display())),
            object_key: Some(format!("{src} -> {dst}")),
            ..self.entry(event, who, client, "rename", from)
        };
        if !Permission::Rename.granted(who) {
            self.deny(record(AuditEvent::Denied), "rename not permitted".into()).await?;
            return Err(TransferError::Forbidden("rename"));
        }
        let missing: Vec<&str> = [Permission::Write, Permission::Delete]
            .into_iter()
            .filter(|p| !p.granted(who))
            .map(Permission::name)
            .collect();
        if replace && !missing.is_empty() {
            // Absent, a directory or unreadable: the store (told not to replace) decides.
            if let Ok(ListEntry { kind: EntryKind::File, .. }) = self.store.head(&who.tenant, &dst).await {
                let why = format!(
                    "replacing an existing object needs write and delete: {} not permitted",
                    missing.join(" and ")
                );
                self.deny(record(AuditEvent::Denied), why).await?;
                return Err(TransferError::Forbidden("replacing an existing object"));
            }
        }
        let renamed = async { Ok(self.store.rename(&who.tenant, &src, &dst, replace && missing.is_empty()).await?) };
        let undo = Undo::RenameBack { from: src.clone(), to: dst.clone() };
        self.change(who, record(AuditEvent::Operation), renamed, undo).await
    }

    /// Create the user's home directory if it does not exist yet (homes are implicit).
    async fn ensure_home(&self, who: &Principal) -> Result<(), TransferError> {
        let mut key = ObjectKey::home("").map_err(TransferError::InvalidPath)?;
        for seg in who.home.segments() {
            let rel = RelPath::from_plain_with(seg, NameRefusal::Nothing)?;
            key = key.join(&rel);
            match self.store.mkdir(&who.tenant, &key).await {
                Ok(()) | Err(StorageError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Continue a listing already audited by [`Transfers::list`] (SFTP `readdir` pages).
    pub async fn list_continue(
        &self,
        who: &Principal,
        rel: &RelPath,
        after: Option<&ListCursor>,
        limit: usize,
    ) -> Result<ListPage, TransferError> {
        if !who.permissions.list {
            return Err(TransferError::Forbidden("list"));
        }
        Ok(self.store.list(&who.tenant, &who.home.join(rel), after, limit).await?)
    }

    /// Open an object for reads at arbitrary offsets (SFTP). Audited as one download from
    /// open to close.
    pub async fn open_read(
        &self,
        who: &Principal,
        client: &ClientInfo,
        rel: &RelPath,
    ) -> Result<ReadSession, TransferError> {
        let key = self.authorise(who, client, Permission::Read, "download", rel).await?;
        let base = AuditEntry {
            transfer_id: Some(new_transfer_id()),
            ..self.entry(AuditEvent::Started, who, client, "download", rel)
        };
        self.start(&base).await?;
        let started = Instant::now();
        match self.store.stat(&who.tenant, &key).await {
            Ok(meta) => Ok(ReadSession {
                store: self.store.clone(),
                tenant: who.tenant.clone(),
                key,
                base: AuditEntry { s3: meta.location.as_ref().map(|l| l.audit()), ..base },
                meta,
                cursor: None,
                window: None,
                window_end: 0,
                bytes: 0,
                audit: self.audit.clone(),
                started,
                done: false,
                _live: self.live.token(),
            }),
            Err(e) => {
                let e = TransferError::from(e);
                let entry = AuditEntry {
                    event: AuditEvent::Failed,
                    result: Some("error".into()),
                    error: Some(e.audit_text()),
                    bytes: Some(0),
                    duration_ms: Some(elapsed_ms(started)),
                    ..base
                };
                append_outcome(&self.audit, entry, false).await?;
                Err(e)
            }
        }
    }

    /// One page of a directory listing.
    pub async fn list(
        &self,
        who: &Principal,
        client: &ClientInfo,
        rel: &RelPath,
        after: Option<&ListCursor>,
        limit: usize,
    ) -> Result<ListPage, TransferError> {
        let key = self.authorise(who, client, Permission::List, "list", rel).await?;
        let is_home = key == who.home;
        let listing = async {
            match self.store.list(&who.tenant, &key, after, limit).await {
                // Homes are implicit: before the first upload the home lists as empty.
                Err(StorageError::NotFound) if is_home => Ok(ListPage::default()),
                other => other,
            }
        };
        self.operation(who, client, rel, "list", listing).await
    }
}

/// An upload in progress. Drop without [`Upload::finish`] = failed, nothing stored.
pub struct Upload {
    writer: Option<Box<dyn ObjectWriter>>,
    bytes: u64,
    max: u64,
    started: Instant,
    audit: AuditLog,
    base: AuditEntry,
    transfer_id: String,
    done: bool,
    /// Where the object goes, to delete it again if its `completed` record cannot be written.
    store: Arc<dyn ObjectStore>,
    tenant: Arc<str>,
    key: ObjectKey,
    alerts: crate::alerts::Alerts,
    /// Holds shutdown until this upload is dropped (after its `Drop` queued any record).
    _live: TaskTrackerToken,
}

impl Upload {
    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The audit transfer id.
    pub fn transfer_id(&self) -> &str {
        &self.transfer_id
    }

    fn failed_entry(&self, error: String) -> AuditEntry {
        AuditEntry {
            event: AuditEvent::Failed,
            result: Some("error".into()),
            error: Some(error),
            bytes: Some(self.bytes),
            duration_ms: Some(elapsed_ms(self.started)),
            ..self.base.clone()
        }
    }

    async fn record_failure(&mut self, e: &TransferError) {
        // Already failed and audited (a storage error during `write`, then the frontend's
        // own `fail` at close): one outcome per transfer.
        if self.done {
            return;
        }
        if let Some(writer) = self.writer.take() {
            // Wait until nothing of the upload remains (S3: the multipart upload is aborted).
            writer.abort().await;
        }
        self.done = true;
        let entry = self.failed_entry(e.audit_text());
        if let Err(ae) = append_outcome(&self.audit, entry, true).await {
            tracing::error!(error = %ae, "could not audit a failed upload");
        }
    }

    /// Append bytes. On a storage error the upload is already failed and audited.
    pub async fn write(&mut self, data: Bytes) -> Result<(), TransferError> {
        if self.writer.is_none() {
            return Err(TransferError::Storage("upload already finished".into()));
        }
        if self.bytes.saturating_add(data.len() as u64) > self.max {
            let e = TransferError::TooLarge { max: self.max };
            self.record_failure(&e).await;
            return Err(e);
        }
        let Some(writer) = self.writer.as_mut() else {
            return Err(TransferError::Storage("upload already finished".into()));
        };
        self.bytes += data.len() as u64;
        if let Err(e) = writer.write(data).await {
            let e = self.storage_failure(e);
            self.record_failure(&e).await;
            return Err(e);
        }
        Ok(())
    }

    /// A storage error of this upload as a transfer error; a store that did not confirm the
    /// tenant's encryption (the write was undone, fail closed) also raises an alert.
    fn storage_failure(&self, e: StorageError) -> TransferError {
        if let StorageError::EncryptionNotConfirmed(detail) = &e {
            let b = &self.base;
            self.alerts.raise(crate::alerts::Alert {
                severity: crate::alerts::Severity::Critical,
                kind: "encryption_not_confirmed",
                nature: format!("the store did not confirm server-side encryption of an upload: {detail}"),
                scope: crate::alerts::Scope {
                    protocol: None,
                    users: b.user.iter().cloned().collect(),
                    sources: b.remote_addr.iter().cloned().collect(),
                    files: b.path.iter().cloned().collect(),
                    count: 1,
                    ..Default::default()
                },
                actions_taken: vec![
                    "the object was deleted again (fail closed) and the upload failed; the client was told".into(),
                    "the failed transfer is in the audit trail".into(),
                ],
                remediation: vec![
                    format!("check the bucket's encryption settings and the KMS key of tenant {}", self.tenant),
                    "check that nothing between the gateway and the store strips encryption headers".into(),
                ],
                next_steps: vec![
                    "list the bucket for objects without server-side encryption".into(),
                    "uploads keep failing closed until the store confirms encryption again".into(),
                ],
            });
        }
        TransferError::from(e)
    }

    /// Abandon the upload with a reason (client error, timeout); audited as `failed`.
    pub async fn fail(mut self, error: TransferError) -> TransferError {
        self.record_failure(&error).await;
        error
    }

    /// Write the durable `intent` to commit, check the digest (if the client sent one),
    /// commit, and write the durable `completed` record before returning, so success is only
    /// reported for audited, stored data. Without the intent nothing is committed; without
    /// the `completed` record the object is deleted again and the upload fails.
    ///
    /// The intent and the store's preparations (local: seal the rest, fsync the data) run at
    /// the same time: neither changes what is visible, and a close then waits for the longer
    /// of the two instead of their sum. The store commits once told that the intent is
    /// durable ([`ObjectWriter::commit_after`](crate::storage::ObjectWriter::commit_after);
    /// local: all in one blocking call); the intent's append also confirms the `started`
    /// record queued before it.
    pub async fn finish(mut self, expected_sha256: Option<[u8; 32]>) -> Result<Receipt, TransferError> {
        let Some(writer) = self.writer.take() else {
            return Err(TransferError::Storage("upload already finished".into()));
        };
        let intent = AuditEntry { event: AuditEvent::Intent, bytes: Some(self.bytes), ..self.base.clone() };
        let (go, gate) = tokio::sync::oneshot::channel();
        let logged = async {
            let logged = self.audit.append(intent, true).await;
            let _ = go.send(logged.is_ok());
            logged
        };
        // The `completed` record goes out as soon as the object has its name, while the store
        // makes that name durable (local: the directory fsync), so a close waits for the
        // longer of the two, not their sum. A crash in between leaves the record and the
        // staging file, named after this transfer: the next start puts the object in place
        // (`ObjectStore::recover_uploads`).
        let (placed, on_placed) = tokio::sync::oneshot::channel::<ObjectMeta>();
        let (audit, base, bytes, started) = (&self.audit, &self.base, self.bytes, self.started);
        // -> whether the object was placed, and its `completed` record with how its append went.
        let recorded = async move {
            let Ok(meta) = on_placed.await else { return (false, None) };
            let Some(entry) = meta.sha256.map(|sha| completed_entry(base, bytes, started, &meta, sha)) else {
                return (true, None);
            };
            let appended = append_outcome(audit, entry.clone(), true).await;
            (true, Some((entry, appended)))
        };
        let (logged, committed, (was_placed, recorded)) =
            tokio::join!(logged, writer.commit_placed(expected_sha256, gate, placed), recorded);
        // On any error before the object was placed the writer has removed what it staged
        // (and committed nothing unless the intent is durable); the `failed` record answers
        // the intent too, should it land.
        if let Err(e) = logged {
            return Err(self.fail(e.into()).await);
        }
        let meta = match committed {
            Ok(meta) => meta,
            Err(e) => {
                let e = self.storage_failure(e);
                if was_placed {
                    // Placed, but its name could not be made durable: the object goes again,
                    // and the `failed` record follows the `completed` one, if that landed.
                    if let Err(d) = self.store.delete(&self.tenant, &self.key).await {
                        tracing::error!(error = %d, "could not remove an object whose name could not be made durable");
                    }
                }
                return Err(self.fail(e).await);
            }
        };
        // Every writer hashes what passes through it; a digest-less commit is a backend bug,
        // and the object it committed must not stay without its `completed` record.
        let Some(sha256) = meta.sha256 else {
            if let Err(e) = self.store.delete(&self.tenant, &self.key).await {
                tracing::error!(error = %e, "could not remove an object committed without a digest");
            }
            return Err(self.fail(TransferError::Storage("the store reported no digest".into())).await);
        };
        self.done = true;
        let undo = Undo::Delete(self.key.clone());
        match recorded {
            Some((_, Ok(_))) => {}
            Some((entry, Err(e))) => {
                return Err(take_back(&self.audit, self.store.as_ref(), &self.tenant, &entry, undo, e).await.into())
            }
            // A backend that never said when the object was placed: record it now.
            None => {
                let entry = completed_entry(&self.base, self.bytes, self.started, &meta, sha256);
                settle(&self.audit, self.store.as_ref(), &self.tenant, entry, undo).await?;
            }
        }
        Ok(Receipt { transfer_id: self.transfer_id.clone(), size: self.bytes, sha256 })
    }
}

/// The `completed` record of an upload (`base`: its `started` record) of `bytes` begun at
/// `started`, stored as `meta` says.
fn completed_entry(base: &AuditEntry, bytes: u64, started: Instant, meta: &ObjectMeta, sha256: [u8; 32]) -> AuditEntry {
    AuditEntry {
        event: AuditEvent::Completed,
        result: Some("ok".into()),
        bytes: Some(bytes),
        sha256: Some(hex::encode(sha256)),
        duration_ms: Some(elapsed_ms(started)),
        s3: meta.location.as_ref().map(|l| l.audit()),
        ..base.clone()
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.done {
            let entry =
                self.failed_entry("transfer aborted before completion (client disconnected or shutdown)".into());
            self.audit.append_detached(entry);
        }
    }
}

/// A download: metadata and the audited body.
pub struct Download {
    /// The object's metadata.
    pub meta: ObjectMeta,
    /// The range being sent.
    pub range: ByteRange,
    /// The bytes; writes the terminal audit record when it ends or is dropped.
    pub body: AuditedBody,
}

/// A download body that audits its own end.
pub struct AuditedBody {
    inner: ByteStream,
    audit: AuditLog,
    base: AuditEntry,
    sha256: Option<[u8; 32]>,
    bytes: u64,
    /// Length of the range being sent: reaching it completes the transfer, even if the
    /// HTTP layer never polls the stream to its end.
    expected: u64,
    started: Instant,
    done: bool,
    /// Holds shutdown until this body is dropped (after its `Drop` queued any record).
    _live: TaskTrackerToken,
}

impl AuditedBody {
    fn finish(&mut self, error: Option<String>) {
        if self.done {
            return;
        }
        self.done = true;
        let entry = AuditEntry {
            event: if error.is_some() { AuditEvent::Failed } else { AuditEvent::Completed },
            result: Some(if error.is_some() { "error" } else { "ok" }.into()),
            error,
            bytes: Some(self.bytes),
            sha256: self.sha256.map(hex::encode),
            duration_ms: Some(elapsed_ms(self.started)),
            ..self.base.clone()
        };
        self.audit.append_detached(entry);
    }
}

impl Stream for AuditedBody {
    type Item = Result<Bytes, StorageError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(b))) => {
                this.bytes += b.len() as u64;
                if this.bytes >= this.expected {
                    this.finish(None);
                }
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::error!(error = %e, "download failed mid-stream");
                this.finish(Some(TransferError::from(e).audit_text()));
                Poll::Ready(Some(Err(StorageError::Backend("download failed".into()))))
            }
            Poll::Ready(None) => {
                this.finish(None);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for AuditedBody {
    fn drop(&mut self) {
        self.finish(Some("client disconnected before the download completed".into()));
    }
}

/// Bytes fetched for a read that jumps away from the current stream (and kept for the reads
/// that follow inside it): at most this much per open read handle.
const READ_WINDOW: usize = 128 * 1024;

/// An object opened for reads at any offset (SFTP `open` … `close`, `reget`).
/// Sequential reads continue one stream; a jump fetches a bounded window (later reads inside
/// it are served from it); reading on from a window's end opens a stream there again.
pub struct ReadSession {
    store: Arc<dyn ObjectStore>,
    tenant: Arc<str>,
    key: ObjectKey,
    meta: ObjectMeta,
    /// Position of the open stream, the stream, and bytes read from it but not yet returned.
    cursor: Option<(u64, ByteStream, Bytes)>,
    /// The last window fetched for a read away from the stream: its offset and bytes.
    window: Option<(u64, Bytes)>,
    /// Where the last window ended: a read there continues sequentially, so it opens a stream.
    window_end: u64,
    bytes: u64,
    audit: AuditLog,
    base: AuditEntry,
    started: Instant,
    done: bool,
    /// Holds shutdown until this session is dropped (after its `Drop` queued any record).
    _live: TaskTrackerToken,
}

impl ReadSession {
    /// The object's metadata.
    pub fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    /// Up to `len` bytes at `offset`; `None` at or past the end.
    pub async fn read_at(&mut self, offset: u64, len: usize) -> Result<Option<Bytes>, TransferError> {
        if offset >= self.meta.size || len == 0 {
            return Ok(None);
        }
        let want = len.min(usize::try_from(self.meta.size - offset).unwrap_or(usize::MAX));
        let on_stream = matches!(&self.cursor, Some((pos, _, _)) if *pos == offset);
        if !on_stream {
            // A read inside the last window is served from it.
            if let Some((start, bytes)) = &self.window {
                let skip = offset.checked_sub(*start).and_then(|d| usize::try_from(d).ok());
                if let Some(part) = skip.and_then(|skip| bytes.get(skip..skip + want)) {
                    let out = bytes.slice_ref(part);
                    self.bytes += want as u64;
                    return Ok(Some(out));
                }
            }
            if offset != self.window_end {
                // A jump: fetch a bounded window (scattered reads cost one request per
                // window, not one per read, and never an open-ended body left half-read).
                return self.read_window(offset, want).await;
            }
            // Sequential from where a window ended: stream from here.
            let read =
                match self.store.open_known(&self.tenant, &self.key, RangeRequest::From(offset), &self.meta).await {
                    Ok(r) => r,
                    Err(e) => return Err(self.fail(e.into())),
                };
            self.cursor = Some((offset, read.body, Bytes::new()));
        }
        let Some((pos, stream, leftover)) = self.cursor.as_mut() else {
            return Ok(None);
        };
        if leftover.len() >= want {
            // The common case for sequential reads: no copy.
            let out = leftover.split_to(want);
            *pos += want as u64;
            self.bytes += want as u64;
            return Ok(Some(out));
        }
        let mut out = bytes::BytesMut::with_capacity(want);
        while out.len() < want {
            if leftover.is_empty() {
                match futures_util::StreamExt::next(stream).await {
                    Some(Ok(b)) => *leftover = b,
                    Some(Err(e)) => {
                        self.cursor = None;
                        return Err(self.fail(e.into()));
                    }
                    None => break,
                }
            }
            let take = (want - out.len()).min(leftover.len());
            out.extend_from_slice(&leftover.split_to(take));
        }
        *pos += out.len() as u64;
        self.bytes += out.len() as u64;
        Ok(if out.is_empty() { None } else { Some(out.freeze()) })
    }

    /// Fetch `[offset, offset + max(want, READ_WINDOW))` (within the object) and serve the
    /// first `want` bytes of it.
    async fn read_window(&mut self, offset: u64, want: usize) -> Result<Option<Bytes>, TransferError> {
        let end = (offset + want.max(READ_WINDOW) as u64).min(self.meta.size);
        let range = RangeRequest::Inclusive(offset, end - 1);
        let read = match self.store.open_known(&self.tenant, &self.key, range, &self.meta).await {
            Ok(r) => r,
            Err(e) => return Err(self.fail(e.into())),
        };
        let mut buf = bytes::BytesMut::with_capacity(usize::try_from(end - offset).unwrap_or(0));
        let mut body = read.body;
        while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
            match chunk {
                Ok(b) => buf.extend_from_slice(&b),
                Err(e) => return Err(self.fail(e.into())),
            }
        }
        let bytes = buf.freeze();
        let out = bytes.slice(..want.min(bytes.len()));
        self.bytes += out.len() as u64;
        self.window_end = offset + bytes.len() as u64;
        self.window = Some((offset, bytes));
        Ok(if out.is_empty() { None } else { Some(out) })
    }

    fn terminal(&mut self, error: Option<String>) -> Option<AuditEntry> {
        if self.done {
            return None;
        }
        self.done = true;
        Some(AuditEntry {
            event: if error.is_some() { AuditEvent::Failed } else { AuditEvent::Completed },
            result: Some(if error.is_some() { "error" } else { "ok" }.into()),
            error,
            bytes: Some(self.bytes),
            sha256: self.meta.sha256.map(hex::encode),
            duration_ms: Some(elapsed_ms(self.started)),
            ..self.base.clone()
        })
    }

    fn fail(&mut self, e: TransferError) -> TransferError {
        if let Some(entry) = self.terminal(Some(e.audit_text())) {
            self.audit.append_detached(entry);
        }
        e
    }

    /// The client closed the handle: the download is complete (however much it read).
    pub async fn close(mut self) -> Result<(), TransferError> {
        if let Some(entry) = self.terminal(None) {
            append_outcome(&self.audit, entry, false).await?;
        }
        Ok(())
    }
}

impl Drop for ReadSession {
    fn drop(&mut self) {
        if let Some(entry) = self.terminal(Some("session ended before the file was closed".into())) {
            self.audit.append_detached(entry);
        }
    }
}
