//! Storage behind a trait that speaks only the gateway's own types.
//!
//! Frontends never call storage directly: the transfer path (`crate::transfer`) does, after
//! authorisation and the `started` audit record. Keys arrive already confined
//! ([`ObjectKey`]); no SDK or file-system type crosses this boundary, so an S3 backend can sit
//! beside [`local::LocalStore`] without the frontends noticing.
//!
//! Writes are two-phase: [`ObjectStore::begin_put`] hands out an [`ObjectWriter`]; nothing is
//! visible until [`ObjectWriter::commit`] succeeds, and a writer dropped without commit leaves
//! nothing behind.

pub mod local;
pub mod reencrypt;
pub mod router;
pub mod s3;
pub mod sealed;
pub mod sealing;

use std::collections::HashMap;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::path::ObjectKey;

/// Storage failures, in the gateway's own terms: no file-system or SDK type leaks out.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No object at that key.
    #[error("no such object")]
    NotFound,
    /// The key names a directory where an object was expected (or the reverse), or a
    /// target exists that must not be replaced.
    #[error("{0}")]
    Conflict(String),
    /// Stored data failed authentication: tampering or corruption.
    #[error("stored object failed its integrity check: {0}")]
    Integrity(String),
    /// The requested range lies outside the object.
    #[error("range not satisfiable for an object of {size} bytes")]
    RangeNotSatisfiable {
        /// The object's size.
        size: u64,
    },
    /// The plaintext did not match the digest the client announced; nothing was stored.
    #[error("content digest does not match the received body")]
    DigestMismatch,
    /// No key for this tenant is loaded.
    #[error("no storage key loaded for tenant {0:?}")]
    NoTenantKey(String),
    /// The store did not confirm the server-side encryption asked for; the object was
    /// removed (fail closed).
    #[error("server-side encryption not confirmed: {0}")]
    EncryptionNotConfirmed(String),
    /// A conditional request failed: the object changed underneath the operation.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// The backend asked the gateway to slow down (S3 `SlowDown`, HTTP 503/429).
    #[error("storage throttled: {0}")]
    Throttled(String),
    /// A transient failure (timeout, connection reset, 5xx): retrying may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Anything else the backend could not do; the message is for operators' logs.
    #[error("storage failure: {0}")]
    Backend(String),
}

impl StorageError {
    /// Whether repeating the same idempotent request may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Throttled(_) | StorageError::Unavailable(_))
    }
}

/// What a committed object is.
#[derive(Debug, Clone)]
pub struct ObjectMeta {
    /// Plaintext size in bytes.
    pub size: u64,
    /// SHA-256 of the plaintext, recorded at upload; `None` for an object the gateway did not
    /// write (put into a bucket by another tool) and so cannot vouch for.
    pub sha256: Option<[u8; 32]>,
    /// When the object was committed.
    pub modified: SystemTime,
    /// Where and how the backend stored it (bucket, key, encryption), for the audit trail;
    /// `None` for the local store, whose location is the object key itself.
    pub location: Option<Box<StoredAt>>,
}

impl StoredAt {
    /// The audit record's form of these facts.
    pub fn audit(&self) -> crate::audit::S3Facts {
        crate::audit::S3Facts {
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            version_id: self.version_id.clone(),
            etag: self.etag.clone(),
            sse: self.sse.clone(),
            kms_key_id: self.kms_key_id.clone(),
            sse_c_key_fingerprint: self.sse_c_fingerprint.clone(),
            checksum_sha256: self.checksum_sha256.clone(),
            parts: self.parts,
        }
    }
}

/// Backend facts about a stored object, recorded in the audit trail. Never holds key
/// material: SSE-C keys appear only as a keyed fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredAt {
    /// Bucket name.
    pub bucket: String,
    /// Full object key in the bucket (tenant prefix included).
    pub key: String,
    /// Version id, when the bucket is versioned.
    pub version_id: Option<String>,
    /// The ETag the store returned.
    pub etag: Option<String>,
    /// Server-side encryption in force: `AES256`, `aws:kms`, `SSE-C` or `none`.
    pub sse: String,
    /// KMS key id (SSE-KMS) as the store reported it.
    pub kms_key_id: Option<String>,
    /// Keyed fingerprint of the SSE-C key (never the key).
    pub sse_c_fingerprint: Option<String>,
    /// The SHA-256 checksum the store returned (base64; composite `-N` for multipart).
    pub checksum_sha256: Option<String>,
    /// Number of parts (1 for a single PUT).
    pub parts: Option<u32>,
}

/// A half-open byte range `[start, end)` within an object, already checked against its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// True for an empty range.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A streamed object body.
pub type ByteStream = BoxStream<'static, Result<Bytes, StorageError>>;

/// An object opened for reading: its metadata and the requested range as a stream.
pub struct ObjectRead {
    /// Metadata of the whole object.
    pub meta: ObjectMeta,
    /// The range the stream yields.
    pub range: ByteRange,
    /// The plaintext bytes of `range`, verified chunk by chunk.
    pub body: ByteStream,
}

/// Kinds of directory entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// An object.
    File,
    /// A prefix with objects below it.
    Dir,
}

/// One entry of a listing.
#[derive(Debug, Clone)]
pub struct ListEntry {
    /// The last path segment.
    pub name: String,
    /// File or directory.
    pub kind: EntryKind,
    /// Plaintext size (0 for directories).
    pub size: u64,
    /// Last modification.
    pub modified: SystemTime,
}

/// One page of a listing, names in byte order.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// Entries of this page.
    pub entries: Vec<ListEntry>,
    /// Where the next page starts, if there is one.
    pub next: Option<ListCursor>,
}

/// Where a listing continues: opaque to callers, who hand back what a page gave them. The
/// local store puts the last name there; S3 its continuation token (a name would land back
/// inside a common prefix when listing with a delimiter).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct ListCursor(String);

impl ListCursor {
    /// Longest cursor accepted back from a client.
    pub const MAX_LEN: usize = 4096;

    /// A cursor made by a backend.
    pub fn new(s: String) -> ListCursor {
        ListCursor(s)
    }

    /// A cursor a client sent back (HTTPS `after=`); `None` when empty or too long.
    pub fn from_client(s: &str) -> Option<ListCursor> {
        (!s.is_empty() && s.len() <= Self::MAX_LEN).then(|| ListCursor(s.to_owned()))
    }

    /// The cursor's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A pending upload. Nothing is visible before [`ObjectWriter::commit`] succeeds; a failed
/// upload should be ended with [`ObjectWriter::abort`], which removes every trace of it
/// (S3: `AbortMultipartUpload`). Dropping a writer also discards it, on a best-effort basis
/// for backends whose cleanup needs a request.
pub trait ObjectWriter: Send + 'static {
    /// Append plaintext. Waits while the backend is busy (back-pressure), so memory stays
    /// bounded whatever the object size.
    fn write(&mut self, data: Bytes) -> BoxFuture<'_, Result<(), StorageError>>;
    /// Discard the upload and wait until nothing of it remains.
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()>;
    /// Optional: do the work of [`ObjectWriter::commit`] that comes before the object becomes
    /// visible (the local store: seal the rest, check `expected_sha256`, make the data durable),
    /// so that it can run while the caller writes its durable `intent` record. Nothing is
    /// visible afterwards; `commit` (with the same digest) does the rest, `abort` undoes it.
    /// After an error only `abort` remains.
    fn prepare(&mut self, _expected_sha256: Option<[u8; 32]>) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async { Ok(()) })
    }
    /// Make the object visible, atomically and durably, and return its size and SHA-256
    /// (computed by the writer as the bytes went through). With `expected_sha256`, a
    /// different digest fails with [`StorageError::DigestMismatch`] and nothing appears.
    fn commit(
        self: Box<Self>,
        expected_sha256: Option<[u8; 32]>,
    ) -> BoxFuture<'static, Result<ObjectMeta, StorageError>>;
    /// [`prepare`](ObjectWriter::prepare), then wait for `go` (the caller's durable `intent`
    /// record), then [`commit`](ObjectWriter::commit). When `go` says false or is dropped,
    /// or `prepare` fails, the upload is aborted (nothing of it remains) before this returns
    /// an error; nothing is visible before `go` said true. Backends override it to do the
    /// whole close in fewer steps (local: one blocking call).
    fn commit_after(
        mut self: Box<Self>,
        expected_sha256: Option<[u8; 32]>,
        go: tokio::sync::oneshot::Receiver<bool>,
    ) -> BoxFuture<'static, Result<ObjectMeta, StorageError>> {
        Box::pin(async move {
            if let Err(e) = self.prepare(expected_sha256).await {
                self.abort().await;
                return Err(e);
            }
            if !go.await.unwrap_or(false) {
                self.abort().await;
                return Err(not_committed());
            }
            self.commit(expected_sha256).await
        })
    }
    /// [`commit_after`](ObjectWriter::commit_after), sending the object's metadata on `placed`
    /// as soon as the object has its name, before the commit returns: a backend that still
    /// has to make that name durable (local: fsync the directory) lets the caller write its
    /// outcome record meanwhile. When the commit fails after `placed` was sent, the object
    /// may exist: the caller removes it. Default: `placed` once the commit succeeded.
    fn commit_placed(
        self: Box<Self>,
        expected_sha256: Option<[u8; 32]>,
        go: tokio::sync::oneshot::Receiver<bool>,
        placed: tokio::sync::oneshot::Sender<ObjectMeta>,
    ) -> BoxFuture<'static, Result<ObjectMeta, StorageError>> {
        Box::pin(async move {
            let meta = self.commit_after(expected_sha256, go).await?;
            let _ = placed.send(meta.clone());
            Ok(meta)
        })
    }
}

/// The error of [`ObjectWriter::commit_after`] when its caller said not to commit.
pub fn not_committed() -> StorageError {
    StorageError::Backend("not committed: the intent to commit was not recorded".into())
}

/// A storage backend.
pub trait ObjectStore: Send + Sync + 'static {
    /// Start writing `key` for `tenant`. `size_hint` is the announced size, when known
    /// (HTTP `Content-Length`): S3 sends an object below its part size as one PutObject.
    fn begin_put(
        &self,
        tenant: &str,
        key: &ObjectKey,
        size_hint: Option<u64>,
    ) -> BoxFuture<'_, Result<Box<dyn ObjectWriter>, StorageError>>;
    /// [`ObjectStore::begin_put`] for the upload `upload_id` (its transfer id). The local
    /// store names its staging file after it, so that a start after a crash can finish a
    /// commit whose `completed` record was written ([`ObjectStore::recover_uploads`]).
    fn begin_upload(
        &self,
        tenant: &str,
        key: &ObjectKey,
        size_hint: Option<u64>,
        _upload_id: &str,
    ) -> BoxFuture<'_, Result<Box<dyn ObjectWriter>, StorageError>> {
        self.begin_put(tenant, key, size_hint)
    }
    /// Uploads a crash left between their commit and its end (local: staging files named
    /// after an upload id), found when the store was opened.
    fn interrupted_uploads(&self) -> Vec<String> {
        Vec::new()
    }
    /// Settle [`ObjectStore::interrupted_uploads`]: those with a `completed` record in
    /// `completed` (upload id → that record) are put in place, the rest are removed. Returns
    /// what was put in place, as `tenant:key`.
    fn recover_uploads<'a>(
        &'a self,
        _completed: &'a HashMap<String, crate::audit::AuditEntry>,
    ) -> BoxFuture<'a, Result<Vec<String>, StorageError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Metadata of one object.
    fn stat(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<ObjectMeta, StorageError>>;
    /// Open `key` and stream `range` of it; the range is resolved against the object's size
    /// here, an unsatisfiable one is [`StorageError::RangeNotSatisfiable`].
    fn open(
        &self,
        tenant: &str,
        key: &ObjectKey,
        range: RangeRequest,
    ) -> BoxFuture<'_, Result<ObjectRead, StorageError>>;
    /// [`ObjectStore::open`] for an object whose metadata the caller already has (from
    /// `stat`): a backend may skip looking it up again. S3 does, and sends `If-Match` on the
    /// known ETag, so a replaced object fails as [`StorageError::PreconditionFailed`] rather
    /// than mixing two versions.
    fn open_known<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a ObjectKey,
        range: RangeRequest,
        _meta: &'a ObjectMeta,
    ) -> BoxFuture<'a, Result<ObjectRead, StorageError>> {
        self.open(tenant, key, range)
    }
    /// Remove an object.
    fn delete(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>>;
    /// Can `tenant`'s objects be reached now? One cheap request (S3: `HeadBucket`), for
    /// readiness checks.
    fn ready<'a>(&'a self, _tenant: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async { Ok(()) })
    }
    /// What `key` is (object or directory), cheaply and without decrypting anything.
    fn head(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<ListEntry, StorageError>>;
    /// Create the directory `key`; its parent must exist.
    fn mkdir(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>>;
    /// Remove the empty directory `key`.
    fn rmdir(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>>;
    /// Rename an object or directory within a tenant; `replace` allows an existing target
    /// object to be replaced atomically. Without it an existing object is never replaced,
    /// not even one created concurrently (callers rely on this for authorisation).
    fn rename<'a>(
        &'a self,
        tenant: &'a str,
        from: &'a ObjectKey,
        to: &'a ObjectKey,
        replace: bool,
    ) -> BoxFuture<'a, Result<(), StorageError>>;
    /// List the directory `prefix`, continuing at `after` (a cursor an earlier page gave),
    /// at most `limit` entries.
    fn list<'a>(
        &'a self,
        tenant: &'a str,
        prefix: &'a ObjectKey,
        after: Option<&'a ListCursor>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ListPage, StorageError>>;
}

/// A byte range as a client asked for it, before the object's size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RangeRequest {
    /// The whole object.
    #[default]
    All,
    /// From `start` to the end (`bytes=500-`).
    From(u64),
    /// `start..=last` (`bytes=0-499`).
    Inclusive(u64, u64),
    /// The last `n` bytes (`bytes=-500`).
    Suffix(u64),
}

/// The requested range cannot be served for an object of this size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("range not satisfiable for an object of {size} bytes")]
pub struct Unsatisfiable {
    /// The object's size, for `Content-Range: bytes */size`.
    pub size: u64,
}

impl RangeRequest {
    /// Resolve against an object size (RFC 9110 §14.1.2 semantics).
    pub fn resolve(self, size: u64) -> Result<ByteRange, Unsatisfiable> {
        let unsat = Unsatisfiable { size };
        match self {
            RangeRequest::All => Ok(ByteRange { start: 0, end: size }),
            RangeRequest::From(start) if start < size => Ok(ByteRange { start, end: size }),
            RangeRequest::Inclusive(start, last) if start < size && start <= last => {
                Ok(ByteRange { start, end: last.saturating_add(1).min(size) })
            }
            RangeRequest::Suffix(n) if n > 0 && size > 0 => Ok(ByteRange { start: size.saturating_sub(n), end: size }),
            _ => Err(unsat),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve() {
        assert_eq!(RangeRequest::All.resolve(10), Ok(ByteRange { start: 0, end: 10 }));
        assert_eq!(RangeRequest::From(3).resolve(10), Ok(ByteRange { start: 3, end: 10 }));
        assert_eq!(RangeRequest::Inclusive(2, 4).resolve(10), Ok(ByteRange { start: 2, end: 5 }));
        assert_eq!(RangeRequest::Inclusive(2, 400).resolve(10), Ok(ByteRange { start: 2, end: 10 }));
        assert_eq!(RangeRequest::Suffix(4).resolve(10), Ok(ByteRange { start: 6, end: 10 }));
        assert_eq!(RangeRequest::Suffix(40).resolve(10), Ok(ByteRange { start: 0, end: 10 }));
        assert!(RangeRequest::From(10).resolve(10).is_err());
        assert!(RangeRequest::Inclusive(5, 4).resolve(10).is_err());
        assert!(RangeRequest::Suffix(0).resolve(10).is_err());
        assert!(RangeRequest::Suffix(3).resolve(0).is_err());
    }
}
