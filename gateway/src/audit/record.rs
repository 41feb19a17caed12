//! The audit record: what one line of the trail says.

use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    /// A credential was accepted.
    AuthSuccess,
    /// A credential was refused (or none was offered).
    AuthFailure,
    /// An authenticated user asked for something their permissions or home do not allow.
    Denied,
    /// A transfer (upload or download) began.
    Started,
    /// A transfer finished and, for uploads, the object is durable and visible.
    Completed,
    /// A transfer failed; for uploads nothing was stored.
    Failed,
    /// A change (upload commit, delete, rename, mkdir, rmdir) is about to be made: written
    /// and synced before storage is touched. Its outcome (`completed`/`failed` for an upload,
    /// `operation` otherwise) carries the same `transfer_id`.
    Intent,
    /// A `started` or `intent` record that never got its outcome: the gateway stopped (crash,
    /// kill, or shutdown with the transfer still running). Written at the next start (or at
    /// shutdown) with the original `transfer_id`, user and path.
    Interrupted,
    /// A non-transfer operation (list, stat, delete, …) and its result.
    Operation,
    /// A signed seal over every record before it.
    Checkpoint,
}

/// The fields of one record apart from `seq`, `time` and `prev`, which the writer adds.
/// Never holds a secret: credentials appear only as their id or fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// What happened.
    pub event: AuditEvent,
    /// Groups the `started` (or `intent`) record with its outcome.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub transfer_id: Option<String>,
    /// `https` or `sftp`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub protocol: Option<String>,
    /// The authenticated (or claimed, for failures) user.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user: Option<String>,
    /// The user's tenant.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tenant: Option<String>,
    /// `bearer`, `publickey`, …
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub auth_method: Option<String>,
    /// Token id or key fingerprint: never the secret itself.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub credential_id: Option<String>,
    /// Peer address.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub remote_addr: Option<String>,
    /// Negotiated TLS version.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tls_version: Option<String>,
    /// Negotiated TLS cipher suite.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tls_cipher: Option<String>,
    /// SHA-256 (hex) of the TLS client certificate the peer presented (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_sha256: Option<String>,
    /// Subject of that client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_subject: Option<String>,
    /// SSH client version string.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ssh_client: Option<String>,
    /// Negotiated SSH key exchange.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ssh_kex: Option<String>,
    /// Negotiated SSH cipher.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ssh_cipher: Option<String>,
    /// Negotiated SSH MAC (`implicit` for AEAD ciphers).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ssh_mac: Option<String>,
    /// `upload`, `download`, `list`, `stat`, `delete`, …
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub operation: Option<String>,
    /// The path as the client named it (relative to its home).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path: Option<String>,
    /// The tenant-relative storage key.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub object_key: Option<String>,
    /// For a summary record (`auth_failure_summary`): how many events it stands for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub count: Option<u64>,
    /// Bytes moved.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bytes: Option<u64>,
    /// Hex SHA-256 of the bytes moved (whole object).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sha256: Option<String>,
    /// How long the operation took.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub duration_ms: Option<u64>,
    /// `ok`, `error` or `denied`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub result: Option<String>,
    /// What went wrong, in words safe to keep.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// Why, as a stable code: an account refused or disabled (`disabled`, `operator`,
    /// `dormant`, `expired`, `source_not_allowed`), a session ended (`max_session_duration`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// For a storage key reload: the tenant's key ids in force after it, oldest first (the
    /// last one seals new objects). Ids only, never key material.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key_ids: Option<Vec<String>>,
    /// Checkpoint: the Ed25519 public key (base64).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub public_key: Option<String>,
    /// Checkpoint: signature (base64) over `seq` and `prev`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub signature: Option<String>,
    /// For objects on S3: where and how the store keeps the object.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub s3: Option<S3Facts>,
    /// For a certificate reload: the certificate served before and the one served now.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub certificate: Option<CertFacts>,
    /// For an SSH host key reload: the keys served before and the ones served now.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub host_keys: Option<HostKeyFacts>,
    /// For a `ban` or `unban` by the defender: the source and what it did.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ban: Option<BanFacts>,
}

/// A TLS certificate reload: what is served after it (the new certificate, or the old one if
/// the new was refused) and, when it changed, what was served before. Public facts only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertFacts {
    /// SHA-256 fingerprint of the certificate served before, when a new one went live.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub previous_sha256: Option<String>,
    /// SHA-256 fingerprint (uppercase, colon-separated) of the certificate now served.
    pub sha256: String,
    /// Its subject.
    pub subject: String,
    /// Its end of validity (RFC 3339).
    pub not_after: String,
}

/// An SSH host key reload: the keys served after it (the new set, or the old one if the new
/// was refused) and, when they changed, the keys served before. Public facts only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKeyFacts {
    /// `SHA256:…` fingerprints of the keys served before, when a new set went live.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub previous_sha256: Option<Vec<String>>,
    /// `SHA256:…` fingerprints (as `ssh-keygen -l` prints them) of the keys now served, in
    /// their configured order.
    pub sha256: Vec<String>,
    /// The key files the attempt looked at.
    pub files: Vec<String>,
}

/// A defender ban or unban. The source is also the record's `remote_addr`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanFacts {
    /// Score when banned (the sum of event weights in the window).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub score: Option<u32>,
    /// The event that crossed the threshold.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub offence: Option<String>,
    /// End of the ban (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub until: Option<String>,
    /// Bans this source has had, this one included.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub offences: Option<u32>,
    /// Why a ban ended: `expired`, `removed` (by an operator), `evicted` (table full).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

/// What S3 said about an object a transfer wrote or read. Never key material: SSE-C keys
/// appear as a keyed fingerprint only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Facts {
    /// Bucket.
    pub bucket: String,
    /// Object key in the bucket, tenant prefix included.
    pub key: String,
    /// Version id, in a versioned bucket.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version_id: Option<String>,
    /// ETag returned by the store.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub etag: Option<String>,
    /// Server-side encryption: `AES256`, `aws:kms` or `SSE-C`.
    pub sse: String,
    /// The KMS key (SSE-KMS).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kms_key_id: Option<String>,
    /// Keyed fingerprint of the SSE-C key.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sse_c_key_fingerprint: Option<String>,
    /// `x-amz-checksum-sha256` the store returned (composite `…-N` after a multipart upload).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checksum_sha256: Option<String>,
    /// Parts the object was uploaded in.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parts: Option<u32>,
}

/// Longest a name-like field (user, credential id, method, addresses, negotiated names) may
/// be in a record, in bytes: what a peer claims is cut here, so a record's size does not grow
/// with what an outsider sends (a 60 KB token id became a 60 KB line).
pub const MAX_NAME_FIELD: usize = 256;
/// Longest a path, object key, certificate subject or error text may be, in bytes.
pub const MAX_TEXT_FIELD: usize = 2048;

/// Cut `value` to at most `max` bytes (on a character boundary), saying how much was cut.
fn bound(value: &mut Option<String>, max: usize) {
    let Some(v) = value.as_mut() else { return };
    if v.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(24);
    while end > 0 && !v.is_char_boundary(end) {
        end -= 1;
    }
    let cut = v.len() - end;
    v.truncate(end);
    v.push_str(&format!("…[+{cut} bytes]"));
}

impl AuditEntry {
    /// Cut every field a peer can influence to its bound ([`MAX_NAME_FIELD`],
    /// [`MAX_TEXT_FIELD`]). The writer does this for every record.
    pub fn bound_fields(&mut self) {
        for f in [
            &mut self.transfer_id,
            &mut self.protocol,
            &mut self.user,
            &mut self.tenant,
            &mut self.auth_method,
            &mut self.credential_id,
            &mut self.remote_addr,
            &mut self.tls_version,
            &mut self.tls_cipher,
            &mut self.client_cert_sha256,
            &mut self.ssh_client,
            &mut self.ssh_kex,
            &mut self.ssh_cipher,
            &mut self.ssh_mac,
            &mut self.operation,
            &mut self.result,
            &mut self.reason,
        ] {
            bound(f, MAX_NAME_FIELD);
        }
        for f in [&mut self.path, &mut self.object_key, &mut self.error, &mut self.client_cert_subject] {
            bound(f, MAX_TEXT_FIELD);
        }
    }

    /// An entry with only its event set.
    pub fn new(event: AuditEvent) -> AuditEntry {
        AuditEntry {
            event,
            transfer_id: None,
            protocol: None,
            user: None,
            tenant: None,
            auth_method: None,
            credential_id: None,
            remote_addr: None,
            tls_version: None,
            tls_cipher: None,
            client_cert_sha256: None,
            client_cert_subject: None,
            ssh_client: None,
            ssh_kex: None,
            ssh_cipher: None,
            ssh_mac: None,
            operation: None,
            path: None,
            object_key: None,
            count: None,
            bytes: None,
            sha256: None,
            duration_ms: None,
            result: None,
            error: None,
            reason: None,
            key_ids: None,
            public_key: None,
            signature: None,
            s3: None,
            certificate: None,
            host_keys: None,
            ban: None,
        }
    }
}

/// A whole line as read back by the verifier and by tests.
#[derive(Debug, Clone, Deserialize)]
pub struct AuditLine {
    /// Position in the trail, from 1.
    pub seq: u64,
    /// When it was written.
    pub time: String,
    /// Hex SHA-256 of the previous line.
    pub prev: String,
    /// Everything else.
    #[serde(flatten)]
    pub entry: AuditEntry,
}

#[derive(Serialize)]
struct LineOut<'a> {
    seq: u64,
    time: &'a str,
    #[serde(flatten)]
    entry: &'a AuditEntry,
    prev: &'a str,
}

/// Append the JSON line (without newline) for `entry` to `buf`.
pub(crate) fn write_line(
    buf: &mut Vec<u8>,
    seq: u64,
    time: &str,
    entry: &AuditEntry,
    prev: &str,
) -> Result<(), serde_json::Error> {
    serde_json::to_writer(buf, &LineOut { seq, time, entry, prev })
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn peer_supplied_fields_are_cut_to_their_bounds() {
        let mut e = AuditEntry::new(AuditEvent::AuthFailure);
        e.credential_id = Some("x".repeat(60_000));
        e.user = Some("é".repeat(1000));
        e.path = Some("p/".repeat(5000));
        e.error = Some("short".into());
        e.bound_fields();
        let id = e.credential_id.as_deref().unwrap();
        assert!(id.len() <= MAX_NAME_FIELD && id.ends_with("bytes]"), "{id}");
        assert!(id.contains(&format!("+{} bytes", 60_000 - (MAX_NAME_FIELD - 24))), "{id}");
        let user = e.user.as_deref().unwrap();
        assert!(user.len() <= MAX_NAME_FIELD && user.starts_with("éé"), "{user}");
        assert!(e.path.as_deref().unwrap().len() <= MAX_TEXT_FIELD);
        assert_eq!(e.error.as_deref(), Some("short"));
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.len() < 4 * 1024, "{}", line.len());
    }
}
