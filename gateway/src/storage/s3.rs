//! S3 backend: a tenant's objects in a bucket under a key prefix, encrypted by the store
//! (SSE-S3, SSE-KMS or SSE-C), readable by any S3 tool holding the right credentials and key.
//!
//! Uploads stream as multipart uploads: parts of `part_size` go out while the next fills,
//! at most `parts_in_flight` at a time, so an upload holds at most
//! `(parts_in_flight + 1) × part_size` bytes whatever the object size, and a slow store slows
//! the client (the writer's `write` waits for a free slot). An object smaller than one part is
//! a single PutObject. Every part and single put carries `x-amz-checksum-sha256`; the
//! whole-object SHA-256 is computed in the same pass, and HEAD and GET turn it back into
//! `Repr-Digest`. A single put carries it as user metadata `x-amz-meta-gateway-sha256` (hex).
//! A multipart upload cannot (its metadata is fixed before the first byte), so after
//! `CompleteMultipartUpload` a zero-byte *digest object* is written at
//! [`DIGEST_PREFIX`]`<object key>` with user metadata `gateway-sha256` and `gateway-etag` (the
//! object's ETag), encrypted like the object. It counts only while the ETag matches, so an
//! object overwritten by another tool never shows a stale digest. (Copying the object onto
//! itself to set its metadata would rewrite every byte in the store: with SSE-C, decrypted and
//! encrypted again.) Rename carries it, delete removes it.
//!
//! Fail closed: every write response must confirm the encryption asked for (algorithm, KMS key,
//! SSE-C key MD5); if one does not, the object is deleted (or the upload aborted) and the
//! transfer fails with [`StorageError::EncryptionNotConfirmed`]. A failed or abandoned upload
//! is aborted (`AbortMultipartUpload`), so nothing partial is ever visible; uploads a crash
//! left behind are aborted at start ([`S3Store::abort_orphans`]).
//!
//! Directories are prefixes. An empty directory is a zero-byte marker object `dir/`; `rmdir`
//! of a prefix with objects under it is refused. Rename is copy + delete (`CopyObject`, or
//! `UploadPartCopy` above 5 GiB, carrying the encryption): not atomic on S3 — a crash between
//! the two leaves both names, never neither — and a directory rename moves at most
//! [`MAX_DIR_RENAME`] objects.
//!
//! Retries: the SDK retries transient failures (timeouts, 5xx, throttling) up to
//! `max_attempts` for calls that are idempotent: puts of a part or object, gets, heads, lists,
//! copies, deletes, completes. `CreateMultipartUpload` is never retried (a retry could leave a
//! second, orphaned upload behind).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkBody;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, MetadataDirective, ServerSideEncryption,
};
use aws_sdk_s3::Client;
use base64::engine::general_purpose::STANDARD as B64;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::task::JoinSet;
use zeroize::Zeroizing;

use super::{
    EntryKind, ListCursor, ListEntry, ListPage, ObjectMeta, ObjectRead, ObjectStore, ObjectWriter, RangeRequest,
    StorageError, StoredAt,
};
use crate::digest::Sha256;
use crate::path::ObjectKey;
use crate::secrets::TenantKey;

/// Set the tenant's encryption on a request that creates an object.
macro_rules! write_sse {
    ($req:expr, $sse:expr) => {{
        let req = $req;
        match $sse {
            Sse::S3 => req.server_side_encryption(ServerSideEncryption::Aes256),
            Sse::Kms { key_id, bucket_key, context } => req
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(key_id.as_str())
                .ssekms_encryption_context(context.as_str())
                .bucket_key_enabled(*bucket_key),
            Sse::C { key, md5, .. } => {
                req.sse_customer_algorithm("AES256").sse_customer_key(key.as_str()).sse_customer_key_md5(md5.as_str())
            }
        }
    }};
}
/// Set the SSE-C headers (only) on a request that reads or continues an object.
macro_rules! ssec {
    ($req:expr, $sse:expr) => {{
        let req = $req;
        match $sse {
            Sse::C { key, md5, .. } => {
                req.sse_customer_algorithm("AES256").sse_customer_key(key.as_str()).sse_customer_key_md5(md5.as_str())
            }
            _ => req,
        }
    }};
}
/// Set the copy-source SSE-C headers on a copy request.
macro_rules! copy_source_ssec {
    ($req:expr, $sse:expr) => {{
        let req = $req;
        match $sse {
            Sse::C { key, md5, .. } => req
                .copy_source_sse_customer_algorithm("AES256")
                .copy_source_sse_customer_key(key.as_str())
                .copy_source_sse_customer_key_md5(md5.as_str()),
            _ => req,
        }
    }};
}

/// S3's limit on the number of parts of one upload.
const MAX_PARTS: u64 = 10_000;
/// Largest object `CopyObject` copies in one request; above it, `UploadPartCopy`.
const MAX_SINGLE_COPY: u64 = 5 << 30;
/// Most objects a directory rename moves (each is a copy and a delete).
pub const MAX_DIR_RENAME: usize = 1000;
/// User metadata key holding the hex SHA-256 of the object (`x-amz-meta-gateway-sha256`).
pub const DIGEST_META: &str = "gateway-sha256";
/// Bucket-level key prefix of the digest objects of multipart uploads (outside every
/// tenant's prefix: a prefix may not have a `.gateway` segment).
pub const DIGEST_PREFIX: &str = ".gateway-sha256/";
/// User metadata key naming the SSE-C key an object is encrypted with
/// (`x-amz-meta-gateway-key-id`): its id, never the key.
pub const KEY_ID_META: &str = "gateway-key-id";
/// Digest object metadata: the ETag of the object the digest is of.
const DIGEST_ETAG_META: &str = "gateway-etag";

/// Name prefix of the probe objects written at start to check a bucket is writable.
const PROBE: &str = ".gateway-probe-";

/// Settings shared by every tenant on one bucket.
#[derive(Debug, Clone)]
pub struct BucketSettings {
    /// Bucket name.
    pub bucket: String,
    /// Configured part size (grown per upload so 10,000 parts always suffice).
    pub part_size: u64,
    /// Parts uploaded at once per upload.
    pub parts_in_flight: usize,
    /// Largest object an upload may create (sizes the part when no size is announced).
    pub max_object_size: u64,
}

/// Server-side encryption of one tenant's objects, with the key material it needs. `Debug`
/// never shows a key.
#[derive(Clone)]
pub enum Sse {
    /// SSE-S3 (`AES256`).
    S3,
    /// SSE-KMS under the tenant's key, with an encryption context naming the tenant.
    Kms {
        /// Key id or ARN.
        key_id: String,
        /// S3 bucket key.
        bucket_key: bool,
        /// Base64 JSON encryption context.
        context: String,
    },
    /// SSE-C with the tenant's 256-bit key.
    C {
        /// Base64 of the key.
        key: Zeroizing<String>,
        /// Its id (see [`crate::keyring::KeyId`]), recorded with each object it encrypts.
        id: String,
        /// Base64 MD5 of the key, as S3 wants it.
        md5: String,
        /// Keyed fingerprint for the audit trail.
        fingerprint: String,
    },
}

impl fmt::Debug for Sse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sse::S3 => f.write_str("Sse::S3"),
            Sse::Kms { key_id, bucket_key, .. } => {
                f.debug_struct("Sse::Kms").field("key_id", key_id).field("bucket_key", bucket_key).finish()
            }
            Sse::C { fingerprint, .. } => f.debug_struct("Sse::C").field("fingerprint", fingerprint).finish(),
        }
    }
}

impl Sse {
    /// SSE-KMS for `tenant`.
    pub fn kms(tenant: &str, key_id: String, bucket_key: bool) -> Sse {
        let context = serde_json::json!({ "gateway-tenant": tenant }).to_string();
        Sse::Kms { key_id, bucket_key, context: B64.encode(context) }
    }

    /// SSE-C from a key file's content (32 raw bytes, or their base64), fingerprinted with
    /// the tenant's own key so the audit can name the key without revealing anything about it.
    pub fn customer_key(content: &[u8], tenant_key: &TenantKey) -> Result<Sse, String> {
        let raw = decode_customer_key(content)?;
        let md5 = {
            use md5::Digest as _;
            B64.encode(md5::Md5::digest(raw.as_slice()))
        };
        let mac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, tenant_key.expose());
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&mac_key);
        ctx.update(b"gateway sse-c key fingerprint v1\0");
        ctx.update(&raw);
        let tag = ctx.sign();
        let fingerprint = format!("hmac-sha256:{}", hex::encode(tag.as_ref().get(..16).unwrap_or_default()));
        let id = crate::keyring::KeyId::of_bytes(&raw).to_string();
        Ok(Sse::C { key: Zeroizing::new(B64.encode(raw.as_slice())), id, md5, fingerprint })
    }

    /// The mode's name in audit records.
    pub fn name(&self) -> &'static str {
        match self {
            Sse::S3 => "AES256",
            Sse::Kms { .. } => "aws:kms",
            Sse::C { .. } => "SSE-C",
        }
    }

    fn facts(&self, bucket: &str, key: &str) -> StoredAt {
        StoredAt {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            sse: self.name().to_owned(),
            kms_key_id: match self {
                Sse::Kms { key_id, .. } => Some(key_id.clone()),
                _ => None,
            },
            sse_c_fingerprint: match self {
                Sse::C { fingerprint, .. } => Some(fingerprint.clone()),
                _ => None,
            },
            ..StoredAt::default()
        }
    }

    /// Check what a write response says about encryption against what was asked for.
    fn confirm(
        &self,
        what: &str,
        algorithm: Option<&ServerSideEncryption>,
        kms_key: Option<&str>,
        customer_md5: Option<&str>,
    ) -> Result<(), StorageError> {
        let fail = |detail: String| Err(StorageError::EncryptionNotConfirmed(format!("{what}: {detail}")));
        match self {
            Sse::S3 => match algorithm {
                Some(ServerSideEncryption::Aes256) => Ok(()),
                other => fail(format!("asked for AES256, the store answered {}", describe(other))),
            },
            Sse::Kms { key_id, .. } => match (algorithm, kms_key) {
                (Some(ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse), Some(got))
                    if kms_key_matches(key_id, got) =>
                {
                    Ok(())
                }
                (Some(ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse), got) => {
                    fail(format!("asked for KMS key {key_id}, the store used {}", got.unwrap_or("no key id")))
                }
                (other, _) => fail(format!("asked for aws:kms, the store answered {}", describe(other))),
            },
            Sse::C { md5, .. } => match customer_md5 {
                Some(got) if got == md5 => Ok(()),
                Some(_) => fail("the store echoed a different SSE-C key MD5".into()),
                None => fail("the store did not confirm SSE-C".into()),
            },
        }
    }
}

fn describe(algorithm: Option<&ServerSideEncryption>) -> String {
    algorithm.map_or_else(|| "no server-side encryption".to_owned(), |a| a.as_str().to_owned())
}

/// An SSE-C key file's content: 32 raw bytes, or their base64 (whitespace around it ignored).
/// Errors never include the content.
pub fn decode_customer_key(content: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let raw: Zeroizing<Vec<u8>> = if content.len() == 32 {
        Zeroizing::new(content.to_vec())
    } else {
        let text = std::str::from_utf8(content).map_err(|_| "neither 32 raw bytes nor base64 text".to_owned())?;
        Zeroizing::new(
            B64.decode(text.trim()).map_err(|_| "neither 32 raw bytes nor valid base64 of 32 bytes".to_owned())?,
        )
    };
    if raw.len() != 32 {
        return Err(format!("the key is {} bytes; SSE-C needs 32 (AES-256)", raw.len()));
    }
    Ok(raw)
}

/// AWS reports the key ARN; the configuration may hold the ARN or the bare key id.
fn kms_key_matches(configured: &str, reported: &str) -> bool {
    configured == reported || reported.ends_with(&format!("/{configured}"))
}

/// Map an SDK error to the gateway's kinds; the text carries the S3 error code and message,
/// never request contents (keys are redacted by the SDK and not formatted here).
fn map_err<E: ProvideErrorMetadata + std::error::Error + 'static>(
    what: &str,
    err: SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> StorageError {
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().unwrap_or("").to_owned();
    let message = err.message().unwrap_or("").to_owned();
    match &err {
        SdkError::TimeoutError(_) => return StorageError::Unavailable(format!("{what}: timed out")),
        SdkError::DispatchFailure(e) => {
            let kind = if e.is_timeout() { "timed out" } else { "could not reach the store" };
            return StorageError::Unavailable(format!("{what}: {kind}"));
        }
        SdkError::ResponseError(_) => {
            return StorageError::Unavailable(format!("{what}: the store's response was cut short or unreadable"))
        }
        SdkError::ConstructionFailure(_) => {
            return StorageError::Backend(format!("{what}: the request could not be built"));
        }
        _ => {}
    }
    let detail = match (code.is_empty(), message.is_empty()) {
        (true, true) => {
            // No S3 error code (an unparsable or unexpected response): the SDK's own account,
            // which names what it could not read (never request headers), kept short.
            let context = aws_smithy_types::error::display::DisplayErrorContext(&err).to_string();
            let context: String = context.chars().filter(|c| !c.is_control()).take(300).collect();
            format!("HTTP {}: {context}", status.unwrap_or(0))
        }
        (false, true) => code.clone(),
        (_, false) => format!("{code} {message}").trim().to_owned(),
    };
    let text = format!("{what}: {detail}");
    match (status, code.as_str()) {
        (_, "NoSuchBucket") => StorageError::Backend(format!("{what}: the bucket does not exist (NoSuchBucket)")),
        (_, "NoSuchKey" | "NotFound") | (Some(404), "") => StorageError::NotFound,
        (Some(412), _) | (_, "PreconditionFailed") => StorageError::PreconditionFailed(text),
        (Some(429), _) | (_, "SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded") => {
            StorageError::Throttled(text)
        }
        (Some(s), _) if s >= 500 => StorageError::Unavailable(text),
        _ => StorageError::Backend(text),
    }
}

/// Whether a refused request may have been refused for its SSE-C key alone.
fn maybe_wrong_key<E>(e: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> bool {
    matches!(e.raw_response().map(|r| r.status().as_u16()), Some(400 | 403))
}

/// One tenant's view of a bucket.
pub struct S3Store {
    client: Client,
    settings: Arc<BucketSettings>,
    /// Key prefix, ending in `/`.
    prefix: String,
    sse: Arc<Sse>,
    /// Older SSE-C keys (newest first): objects written before a rotation are read with the
    /// one that fits, until `gateway keys reencrypt` copies them to the newest.
    older: Vec<Arc<Sse>>,
    /// Seals listing cursors handed to clients.
    cursor_key: LessSafeKey,
}

fn cursor_key(tenant: &TenantKey) -> Result<LessSafeKey, StorageError> {
    let prk = Salt::new(HKDF_SHA256, b"gateway list cursor v1").extract(tenant.expose());
    let okm = prk
        .expand(&[b"s3 continuation token"], &AES_256_GCM)
        .map_err(|_| StorageError::Backend("key derivation failed".into()))?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.settings.bucket)
            .field("prefix", &self.prefix)
            .field("sse", &self.sse)
            .finish()
    }
}

fn hex_digest(meta: Option<&HashMap<String, String>>) -> Option<[u8; 32]> {
    let text = meta?.get(DIGEST_META)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    t.and_then(|t| u64::try_from(t.secs()).ok()).map_or(UNIX_EPOCH, |s| UNIX_EPOCH + Duration::from_secs(s))
}

/// `bucket/key` with the key percent-encoded, as `x-amz-copy-source` wants it.
fn copy_source(bucket: &str, key: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'/').remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    format!("{bucket}/{}", percent_encoding::utf8_percent_encode(key, KEEP))
}

/// Part size for an upload: the configured one, grown so that `max_size` fits in 10,000
/// parts (rounded up to a MiB).
fn part_size_for(configured: u64, max_size: u64) -> u64 {
    let needed = max_size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    configured.max(needed)
}

impl S3Store {
    /// A tenant on `client`'s bucket under `prefix` (which ends in `/`).
    pub fn new(
        client: Client,
        settings: Arc<BucketSettings>,
        prefix: String,
        sse: Sse,
        tenant_key: &TenantKey,
    ) -> Result<S3Store, StorageError> {
        let cursor_key = cursor_key(tenant_key)?;
        Ok(S3Store { client, settings, prefix, sse: Arc::new(sse), older: Vec::new(), cursor_key })
    }

    /// The same tenant's store with other SSE-C keys: `newest` for writes, `older` (newest
    /// first) for objects written before.
    pub fn with_keys(&self, newest: Sse, older: Vec<Sse>, tenant_key: &TenantKey) -> Result<S3Store, StorageError> {
        Ok(S3Store::new(self.client.clone(), self.settings.clone(), self.prefix.clone(), newest, tenant_key)?
            .with_older_keys(older))
    }

    /// The ids of the SSE-C keys in use, oldest first (the last one writes); empty for other
    /// modes.
    pub fn customer_key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::iter::once(&self.sse)
            .chain(&self.older)
            .filter_map(|k| match &**k {
                Sse::C { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect();
        ids.reverse();
        ids
    }

    /// Also read objects encrypted with these older SSE-C keys (newest first).
    pub fn with_older_keys(mut self, older: Vec<Sse>) -> S3Store {
        self.older = older.into_iter().map(Arc::new).collect();
        self
    }

    /// The `gateway-key-id` metadata entry for objects written now (SSE-C only).
    fn key_id_meta(&self) -> Option<(String, String)> {
        match &*self.sse {
            Sse::C { id, .. } => Some((KEY_ID_META.to_owned(), id.clone())),
            _ => None,
        }
    }

    /// Run `attempt` with the newest key and, while the store refuses it in a way a wrong
    /// SSE-C key would (400 on Garage, 403 on AWS), with each older key. The first error is
    /// returned if no key fits.
    async fn with_read_key<T, E, Fut>(
        &self,
        mut attempt: impl FnMut(Arc<Sse>) -> Fut,
    ) -> Result<T, SdkError<E, aws_smithy_runtime_api::http::Response>>
    where
        Fut: std::future::Future<Output = Result<T, SdkError<E, aws_smithy_runtime_api::http::Response>>>,
    {
        let first = attempt(self.sse.clone()).await;
        match &first {
            Err(e) if !self.older.is_empty() && maybe_wrong_key(e) => {}
            _ => return first,
        }
        for sse in &self.older {
            match attempt(sse.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if maybe_wrong_key(&e) => {}
                Err(e) => return Err(e),
            }
        }
        first
    }

    /// A listing cursor for clients: the S3 continuation token sealed with a key derived from
    /// the tenant key, so clients see neither the bucket's layout (tokens encode keys) nor can
    /// they hand S3 a token of their own. Every node with the same configuration opens it.
    fn seal_cursor(&self, token: &str) -> Result<ListCursor, StorageError> {
        let nonce = crate::secrets::random_bytes::<NONCE_LEN>().map_err(|e| StorageError::Backend(e.to_string()))?;
        let mut data = token.as_bytes().to_vec();
        self.cursor_key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .map_err(|_| StorageError::Backend("cannot seal a listing cursor".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(ListCursor::new(B64URL.encode(out)))
    }

    fn open_cursor(&self, cursor: &ListCursor) -> Result<String, StorageError> {
        let invalid =
            || StorageError::Conflict("invalid listing cursor: pass back the `next` value of a previous page".into());
        let raw = B64URL.decode(cursor.as_str()).map_err(|_| invalid())?;
        let (nonce, sealed) = raw.split_at_checked(NONCE_LEN).ok_or_else(invalid)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| invalid())?;
        let mut sealed = sealed.to_vec();
        let plain = self.cursor_key.open_in_place(nonce, Aad::empty(), &mut sealed).map_err(|_| invalid())?;
        String::from_utf8(plain.to_vec()).map_err(|_| invalid())
    }

    fn full_key(&self, key: &ObjectKey) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }

    /// The prefix under which `key`'s children live.
    fn dir_prefix(&self, key: &ObjectKey) -> String {
        if key.is_root() {
            self.prefix.clone()
        } else {
            format!("{}{}/", self.prefix, key.as_str())
        }
    }

    fn bucket(&self) -> &str {
        &self.settings.bucket
    }

    /// Check that the bucket is reachable and writable for this tenant and that the store
    /// confirms the tenant's encryption: write, read back and delete a probe object.
    pub async fn probe(&self) -> Result<(), StorageError> {
        let name = format!(
            "{}{PROBE}{}",
            self.prefix,
            hex::encode(crate::secrets::random_bytes::<8>().map_err(|e| StorageError::Backend(e.to_string()))?)
        );
        let body = Bytes::from_static(b"gateway probe");
        let put = self.put_single(&name, body, None).await;
        // Whatever happened, leave nothing behind.
        let _ = self.client.delete_object().bucket(self.bucket()).key(&name).send().await;
        match put {
            Ok(_) => Ok(()),
            // A put cannot miss an object: a 404 means the bucket is not there.
            Err(StorageError::NotFound) => Err(StorageError::Backend(
                "PutObject: the bucket does not exist (or is not visible to these credentials)".into(),
            )),
            Err(e) => Err(e),
        }
    }

    /// Abort multipart uploads under this tenant's prefix older than `age`; returns how many.
    pub async fn abort_orphans(&self, age: Duration) -> Result<usize, StorageError> {
        let cutoff = SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH);
        let mut aborted = 0;
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(self.bucket())
                .prefix(&self.prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| map_err("ListMultipartUploads", e))?;
            for upload in page.uploads() {
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else { continue };
                if to_system_time(upload.initiated()) > cutoff {
                    continue;
                }
                self.client
                    .abort_multipart_upload()
                    .bucket(self.bucket())
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                    .map_err(|e| map_err("AbortMultipartUpload", e))?;
                aborted += 1;
            }
            if page.is_truncated() != Some(true) {
                return Ok(aborted);
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(aborted);
            }
        }
    }

    /// One PutObject with checksum, digest metadata and encryption; verifies the response.
    async fn put_single(&self, key: &str, body: Bytes, sha256: Option<[u8; 32]>) -> Result<StoredAt, StorageError> {
        let part_sha = crate::digest::sha256(&body);
        let len = body.len() as u64;
        let req = self
            .client
            .put_object()
            .bucket(self.bucket())
            .key(key)
            .content_length(i64::try_from(len).unwrap_or(i64::MAX))
            .checksum_sha256(B64.encode(part_sha))
            .set_metadata({
                let meta: HashMap<String, String> = sha256
                    .map(|d| (DIGEST_META.to_owned(), hex::encode(d)))
                    .into_iter()
                    .chain(self.key_id_meta())
                    .collect();
                (!meta.is_empty()).then_some(meta)
            })
            .body(SdkBody::from(body));
        let out = write_sse!(req, &*self.sse).send().await.map_err(|e| map_err("PutObject", e))?;
        let confirmed = self.sse.confirm(
            "PutObject",
            out.server_side_encryption(),
            out.ssekms_key_id(),
            out.sse_customer_key_md5(),
        );
        if let Err(e) = confirmed {
            self.delete_quietly(key).await;
            return Err(e);
        }
        Ok(StoredAt {
            version_id: out.version_id().map(str::to_owned),
            etag: out.e_tag().map(str::to_owned),
            checksum_sha256: out.checksum_sha256().map(str::to_owned),
            parts: Some(1),
            kms_key_id: out.ssekms_key_id().map(str::to_owned).or_else(|| self.sse.facts("", "").kms_key_id),
            ..self.sse.facts(self.bucket(), key)
        })
    }

    async fn delete_quietly(&self, key: &str) {
        if let Err(e) = self.client.delete_object().bucket(self.bucket()).key(key).send().await {
            tracing::error!(bucket = %self.bucket(), key, error = %map_err("DeleteObject", e), "could not remove an object after a failed write");
        }
    }

    /// Write the digest object of `key` (whose ETag is `etag`), encrypted like the object.
    async fn put_digest(&self, key: &str, sha256: [u8; 32], etag: &str) -> Result<(), StorageError> {
        let mut meta = HashMap::from([
            (DIGEST_META.to_owned(), hex::encode(sha256)),
            (DIGEST_ETAG_META.to_owned(), etag.to_owned()),
        ]);
        meta.extend(self.key_id_meta());
        let digest_key = format!("{DIGEST_PREFIX}{key}");
        let req = self
            .client
            .put_object()
            .bucket(self.bucket())
            .key(&digest_key)
            .content_length(0)
            .checksum_sha256(B64.encode(crate::digest::sha256(b"")))
            .set_metadata(Some(meta))
            .body(SdkBody::from(Bytes::new()));
        let out = write_sse!(req, &*self.sse).send().await.map_err(|e| map_err("PutObject", e))?;
        if let Err(e) =
            self.sse.confirm("PutObject", out.server_side_encryption(), out.ssekms_key_id(), out.sse_customer_key_md5())
        {
            self.delete_quietly(&digest_key).await;
            return Err(e);
        }
        Ok(())
    }

    /// The whole-object SHA-256 of `key`, whose HEAD is `head`: its metadata, else its digest
    /// object while that names the same ETag. `None` for objects written by other tools.
    async fn digest_of(
        &self,
        key: &str,
        head: &aws_sdk_s3::operation::head_object::HeadObjectOutput,
    ) -> Result<Option<[u8; 32]>, StorageError> {
        if let Some(d) = hex_digest(head.metadata()) {
            return Ok(Some(d));
        }
        let Some(etag) = head.e_tag() else { return Ok(None) };
        let side = match self.head_object(&format!("{DIGEST_PREFIX}{key}")).await {
            Ok(side) => side,
            Err(StorageError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let same = side.metadata().and_then(|m| m.get(DIGEST_ETAG_META)).is_some_and(|e| e == etag);
        Ok(if same { hex_digest(side.metadata()) } else { None })
    }

    /// Delete the digest object of `key`, if any (best effort: a stale one never counts).
    async fn delete_digest(&self, key: &str) {
        let digest_key = format!("{DIGEST_PREFIX}{key}");
        if let Err(e) = self.client.delete_object().bucket(self.bucket()).key(&digest_key).send().await {
            tracing::warn!(bucket = %self.bucket(), key = %digest_key, error = %map_err("DeleteObject", e), "could not remove a digest object; it no longer matches its object and is ignored");
        }
    }

    /// Copy `src` → `dst` and, when `src`'s digest lives in a digest object, give `dst` one
    /// for its new ETag.
    async fn copy_with_digest(&self, src: &str, dst: &str) -> Result<(), StorageError> {
        let head = self.head_object(src).await?;
        let side_digest = if hex_digest(head.metadata()).is_none() { self.digest_of(src, &head).await? } else { None };
        let at = self.copy(src, dst, &head).await?;
        if let (Some(d), Some(etag)) = (side_digest, at.etag.as_deref()) {
            if let Err(e) = self.put_digest(dst, d, etag).await {
                self.delete_quietly(dst).await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn head_object(
        &self,
        key: &str,
    ) -> Result<aws_sdk_s3::operation::head_object::HeadObjectOutput, StorageError> {
        self.with_read_key(|sse| {
            let req = self.client.head_object().bucket(self.bucket()).key(key);
            let req = ssec!(req, &*sse);
            async move { req.send().await }
        })
        .await
        .map_err(|e| map_err("HeadObject", e))
    }

    /// Is there anything under `dir_prefix` (a marker or objects)? Returns whether the prefix
    /// exists and whether it holds anything besides its own marker.
    async fn dir_state(&self, dir_prefix: &str) -> Result<(bool, bool), StorageError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(self.bucket())
            .prefix(dir_prefix)
            .max_keys(2)
            .send()
            .await
            .map_err(|e| map_err("ListObjectsV2", e))?;
        let keys: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
        let exists = !keys.is_empty();
        let non_empty = keys.iter().any(|k| *k != dir_prefix);
        Ok((exists, non_empty))
    }

    async fn kind_of(&self, key: &ObjectKey) -> Result<Option<EntryKind>, StorageError> {
        if key.is_root() {
            return Ok(Some(EntryKind::Dir));
        }
        match self.head_object(&self.full_key(key)).await {
            Ok(_) => return Ok(Some(EntryKind::File)),
            Err(StorageError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let (exists, _) = self.dir_state(&self.dir_prefix(key)).await?;
        Ok(exists.then_some(EntryKind::Dir))
    }

    /// Server-side copy `src` (whose HEAD is `head`) → `dst` keeping metadata, with the
    /// tenant's encryption on both sides; `UploadPartCopy` above 5 GiB.
    async fn copy(
        &self,
        src: &str,
        dst: &str,
        head: &aws_sdk_s3::operation::head_object::HeadObjectOutput,
    ) -> Result<StoredAt, StorageError> {
        let size = head.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        let source = copy_source(self.bucket(), src);
        if size <= MAX_SINGLE_COPY {
            // With SSE-C the copy is under the newest key whatever the source's: the key id
            // in its metadata is replaced to say so.
            let replaced = self.key_id_meta().map(|kv| {
                let mut meta = head.metadata().cloned().unwrap_or_default();
                meta.extend([kv]);
                meta
            });
            let out = self
                .with_read_key(|src_sse| {
                    let req = self
                        .client
                        .copy_object()
                        .bucket(self.bucket())
                        .key(dst)
                        .copy_source(&source)
                        .checksum_algorithm(ChecksumAlgorithm::Sha256);
                    let req = match &replaced {
                        Some(meta) => {
                            req.metadata_directive(MetadataDirective::Replace).set_metadata(Some(meta.clone()))
                        }
                        None => req.metadata_directive(MetadataDirective::Copy),
                    };
                    let req = write_sse!(req, &*self.sse);
                    let req = copy_source_ssec!(req, &*src_sse);
                    async move { req.send().await }
                })
                .await
                .map_err(|e| map_err("CopyObject", e))?;
            if let Err(e) = self.sse.confirm(
                "CopyObject",
                out.server_side_encryption(),
                out.ssekms_key_id(),
                out.sse_customer_key_md5(),
            ) {
                self.delete_quietly(dst).await;
                return Err(e);
            }
            return Ok(StoredAt {
                version_id: out.version_id().map(str::to_owned),
                etag: out.copy_object_result().and_then(|r| r.e_tag()).map(str::to_owned),
                checksum_sha256: out.copy_object_result().and_then(|r| r.checksum_sha256()).map(str::to_owned),
                ..self.sse.facts(self.bucket(), dst)
            });
        }
        // Multipart copy: the source's metadata travels only if we pass it along.
        let meta = match self.key_id_meta() {
            Some(kv) => {
                let mut meta = head.metadata().cloned().unwrap_or_default();
                meta.extend([kv]);
                Some(meta)
            }
            None => head.metadata().cloned(),
        };
        let create = self
            .client
            .create_multipart_upload()
            .bucket(self.bucket())
            .key(dst)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .set_metadata(meta);
        let created = write_sse!(create, &*self.sse)
            .customize()
            .config_override(
                aws_sdk_s3::config::Config::builder().retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled()),
            )
            .send()
            .await
            .map_err(|e| map_err("CreateMultipartUpload", e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let abort = || async {
            let _ =
                self.client.abort_multipart_upload().bucket(self.bucket()).key(dst).upload_id(&upload_id).send().await;
        };
        if let Err(e) = self.sse.confirm(
            "CreateMultipartUpload",
            created.server_side_encryption(),
            created.ssekms_key_id(),
            created.sse_customer_key_md5(),
        ) {
            abort().await;
            return Err(e);
        }
        let part = part_size_for(MAX_SINGLE_COPY.min(1 << 30), size);
        let mut parts = Vec::new();
        let mut start = 0u64;
        let mut number = 1i32;
        while start < size {
            let end = (start + part).min(size);
            let sent = self
                .with_read_key(|src_sse| {
                    let req = self
                        .client
                        .upload_part_copy()
                        .bucket(self.bucket())
                        .key(dst)
                        .upload_id(&upload_id)
                        .part_number(number)
                        .copy_source(&source)
                        .copy_source_range(format!("bytes={start}-{}", end - 1));
                    let req = ssec!(req, &*self.sse);
                    let req = copy_source_ssec!(req, &*src_sse);
                    async move { req.send().await }
                })
                .await;
            let out = match sent {
                Ok(o) => o,
                Err(e) => {
                    abort().await;
                    return Err(map_err("UploadPartCopy", e));
                }
            };
            let result = out.copy_part_result();
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(result.and_then(|r| r.e_tag()).map(str::to_owned))
                    .set_checksum_sha256(result.and_then(|r| r.checksum_sha256()).map(str::to_owned))
                    .build(),
            );
            start = end;
            number += 1;
        }
        let count = parts.len();
        let complete = self
            .client
            .complete_multipart_upload()
            .bucket(self.bucket())
            .key(dst)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
        let out = match ssec!(complete, &*self.sse).send().await {
            Ok(o) => o,
            Err(e) => {
                abort().await;
                return Err(map_err("CompleteMultipartUpload", e));
            }
        };
        if !matches!(*self.sse, Sse::C { .. }) {
            if let Err(e) =
                self.sse.confirm("CompleteMultipartUpload", out.server_side_encryption(), out.ssekms_key_id(), None)
            {
                self.delete_quietly(dst).await;
                return Err(e);
            }
        }
        Ok(StoredAt {
            version_id: out.version_id().map(str::to_owned),
            etag: out.e_tag().map(str::to_owned),
            checksum_sha256: out.checksum_sha256().map(str::to_owned),
            parts: u32::try_from(count).ok(),
            ..self.sse.facts(self.bucket(), dst)
        })
    }

    /// Every object key under `dir_prefix` (for a directory rename), at most `limit`.
    async fn keys_under(&self, dir_prefix: &str, limit: usize) -> Result<Vec<String>, StorageError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(self.bucket())
                .prefix(dir_prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| map_err("ListObjectsV2", e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    out.push(k.to_owned());
                }
            }
            if out.len() > limit {
                return Err(StorageError::Conflict(format!(
                    "directory holds more than {limit} objects; on S3 a rename copies each one, so move its \
                     contents in smaller steps"
                )));
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// Every object of the tenant (bucket key and stored size), directory markers included
    /// (they are encrypted too, and a directory rename copies them), probe objects left out:
    /// what `gateway keys reencrypt` walks.
    pub async fn object_keys(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(self.bucket())
                .prefix(&self.prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| map_err("ListObjectsV2", e))?;
            for o in page.contents() {
                let Some(k) = o.key() else { continue };
                let name = k.rsplit('/').next().unwrap_or_default();
                if name.starts_with(PROBE) {
                    continue;
                }
                out.push((k.to_owned(), o.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0)));
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// Re-key one SSE-C object (bucket key `key`) to the newest key: a `CopyObject` onto
    /// itself with the old key as copy source, conditional on the ETag it had when its key
    /// was found (so an object replaced meanwhile is left alone), its metadata kept and its
    /// key id replaced; a digest object is written again for the new ETag.
    pub async fn rekey(&self, key: &str) -> Result<Rekey, StorageError> {
        if !matches!(*self.sse, Sse::C { .. }) {
            return Err(StorageError::Backend("the tenant does not use SSE-C: the store holds its keys".into()));
        }
        let head_with = |sse: Arc<Sse>| {
            let req = self.client.head_object().bucket(self.bucket()).key(key);
            let req = ssec!(req, &*sse);
            async move { req.send().await }
        };
        let first = match head_with(self.sse.clone()).await {
            Ok(_) => return Ok(Rekey::Current),
            Err(e) => e,
        };
        if !maybe_wrong_key(&first) {
            return match map_err("HeadObject", first) {
                StorageError::NotFound => Ok(Rekey::Changed),
                e => Err(e),
            };
        }
        let mut found = None;
        for sse in &self.older {
            if let Ok(head) = head_with(sse.clone()).await {
                found = Some((sse.clone(), head));
                break;
            }
        }
        let Some((old, head)) = found else {
            return Err(StorageError::Backend(format!(
                "{key}: none of the tenant's SSE-C keys opens it (a key file removed, or written by another tool)"
            )));
        };
        let size = head.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        if size > MAX_SINGLE_COPY {
            return Ok(Rekey::TooLarge { bytes: size });
        }
        let side_digest = if hex_digest(head.metadata()).is_none() { self.digest_of(key, &head).await? } else { None };
        let mut meta = head.metadata().cloned().unwrap_or_default();
        meta.extend(self.key_id_meta());
        let req = self
            .client
            .copy_object()
            .bucket(self.bucket())
            .key(key)
            .copy_source(copy_source(self.bucket(), key))
            .set_copy_source_if_match(head.e_tag().map(str::to_owned))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .metadata_directive(MetadataDirective::Replace)
            .set_metadata(Some(meta));
        let req = write_sse!(req, &*self.sse);
        let req = copy_source_ssec!(req, &*old);
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) => {
                return match map_err("CopyObject", e) {
                    StorageError::PreconditionFailed(_) | StorageError::NotFound => Ok(Rekey::Changed),
                    e => Err(e),
                }
            }
        };
        self.sse.confirm(
            "CopyObject",
            out.server_side_encryption(),
            out.ssekms_key_id(),
            out.sse_customer_key_md5(),
        )?;
        if let (Some(d), Some(etag)) = (side_digest, out.copy_object_result().and_then(|r| r.e_tag())) {
            self.put_digest(key, d, etag).await?;
        }
        Ok(Rekey::Rewritten { bytes: size })
    }
}

/// What [`S3Store::rekey`] did with one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rekey {
    /// Already under the newest SSE-C key.
    Current,
    /// Copied under the newest key.
    Rewritten {
        /// Stored size.
        bytes: u64,
    },
    /// Replaced or removed meanwhile; left alone.
    Changed,
    /// Larger than one `CopyObject` may copy (5 GiB); left under its key.
    TooLarge {
        /// Stored size.
        bytes: u64,
    },
}

/// Parts being uploaded, and the upload they belong to.
struct Multipart {
    upload_id: String,
    running: JoinSet<Result<CompletedPart, StorageError>>,
    done: Vec<CompletedPart>,
    next_number: i32,
}

/// A streaming upload; see the module docs.
/// Part buffers of one upload, reused: a part's memory comes back here when the SDK drops
/// the body it was sent from. Without it every part was a fresh `part_size` allocation, and
/// glibc (whose mmap threshold rises to the size of the first such block freed) served them
/// from per-thread arenas that kept growing: a 4 GiB upload peaked 80% above a 256 MiB one.
#[derive(Clone)]
struct PartPool {
    free: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    part_size: usize,
    /// Most buffers kept for reuse (the parts in flight and the one filling).
    keep: usize,
}

impl PartPool {
    fn new(part_size: usize, keep: usize) -> PartPool {
        PartPool { free: Arc::default(), part_size, keep }
    }

    /// An empty buffer of `part_size` capacity, reused when one is free.
    fn take(&self) -> Vec<u8> {
        let reused = self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
        reused.unwrap_or_else(|| Vec::with_capacity(self.part_size))
    }

    /// `buf` as a body whose memory returns to the pool when the last reference goes.
    fn freeze(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(PooledPart { buf, pool: self.clone() })
    }
}

struct PooledPart {
    buf: Vec<u8>,
    pool: PartPool,
}

impl AsRef<[u8]> for PooledPart {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledPart {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        if buf.capacity() < self.pool.part_size {
            return;
        }
        buf.clear();
        let mut free = self.pool.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if free.len() < self.pool.keep {
            free.push(buf);
        }
    }
}

struct S3Writer {
    store: Arc<S3Store>,
    key: String,
    part_size: usize,
    /// The part being filled (grows on demand for the first part, so a small object never
    /// holds a whole part's worth of memory).
    buffer: Vec<u8>,
    pool: PartPool,
    hasher: Sha256,
    size: u64,
    multipart: Option<Multipart>,
    finished: bool,
}

impl S3Writer {
    /// Start the multipart upload on the first full part.
    async fn ensure_multipart(&mut self) -> Result<&mut Multipart, StorageError> {
        if self.multipart.is_none() {
            let store = &self.store;
            let req = store
                .client
                .create_multipart_upload()
                .bucket(store.bucket())
                .key(&self.key)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .set_metadata(store.key_id_meta().map(|kv| HashMap::from([kv])));
            let created = write_sse!(req, &*store.sse)
                .customize()
                .config_override(
                    aws_sdk_s3::config::Config::builder()
                        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled()),
                )
                .send()
                .await
                .map_err(|e| map_err("CreateMultipartUpload", e))?;
            let upload_id = created.upload_id().unwrap_or_default().to_owned();
            if let Err(e) = store.sse.confirm(
                "CreateMultipartUpload",
                created.server_side_encryption(),
                created.ssekms_key_id(),
                created.sse_customer_key_md5(),
            ) {
                abort_upload(&store.client, store.bucket(), &self.key, &upload_id).await;
                return Err(e);
            }
            self.multipart = Some(Multipart { upload_id, running: JoinSet::new(), done: Vec::new(), next_number: 1 });
        }
        self.multipart.as_mut().ok_or_else(|| StorageError::Backend("multipart upload missing".into()))
    }

    /// Send `part` as the next part, first waiting for a free slot (back-pressure).
    async fn send_part(&mut self, part: Bytes) -> Result<(), StorageError> {
        let limit = self.store.settings.parts_in_flight.max(1);
        let store = self.store.clone();
        let key = self.key.clone();
        let mp = self.ensure_multipart().await?;
        while mp.running.len() >= limit {
            if let Some(joined) = mp.running.join_next().await {
                mp.done.push(joined.map_err(|e| StorageError::Backend(format!("part upload task failed: {e}")))??);
            }
        }
        let number = mp.next_number;
        mp.next_number += 1;
        let upload_id = mp.upload_id.clone();
        mp.running.spawn(async move {
            let checksum = B64.encode(crate::digest::sha256(&part));
            let len = part.len() as i64;
            let req = store
                .client
                .upload_part()
                .bucket(store.bucket())
                .key(&key)
                .upload_id(&upload_id)
                .part_number(number)
                .content_length(len)
                .checksum_sha256(&checksum)
                .body(SdkBody::from(part));
            let out = ssec!(req, &*store.sse).send().await.map_err(|e| map_err("UploadPart", e))?;
            if matches!(*store.sse, Sse::C { .. }) {
                store.sse.confirm("UploadPart", None, None, out.sse_customer_key_md5())?;
            }
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .checksum_sha256(out.checksum_sha256().map_or(checksum, str::to_owned))
                .build())
        });
        Ok(())
    }

    async fn discard(&mut self) {
        self.finished = true;
        if let Some(mut mp) = self.multipart.take() {
            mp.running.abort_all();
            while mp.running.join_next().await.is_some() {}
            abort_upload(&self.store.client, self.store.bucket(), &self.key, &mp.upload_id).await;
        }
    }

    async fn commit_inner(&mut self, expected: Option<[u8; 32]>) -> Result<ObjectMeta, StorageError> {
        let sha256 = std::mem::take(&mut self.hasher).finish();
        let mismatch = expected.is_some_and(|want| want != sha256);
        let Some(_) = self.multipart else {
            if mismatch {
                return Err(StorageError::DigestMismatch);
            }
            let body = Bytes::from(std::mem::take(&mut self.buffer));
            let at = self.store.put_single(&self.key, body, Some(sha256)).await?;
            return Ok(self.meta(sha256, at));
        };
        if !self.buffer.is_empty() {
            let last = self.pool.freeze(std::mem::take(&mut self.buffer));
            self.send_part(last).await?;
        }
        let mp = self.ensure_multipart().await?;
        while let Some(joined) = mp.running.join_next().await {
            mp.done.push(joined.map_err(|e| StorageError::Backend(format!("part upload task failed: {e}")))??);
        }
        if mismatch {
            return Err(StorageError::DigestMismatch);
        }
        let mut parts = std::mem::take(&mut mp.done);
        parts.sort_by_key(|p| p.part_number());
        let count = parts.len();
        let upload_id = mp.upload_id.clone();
        let store = self.store.clone();
        let req = store
            .client
            .complete_multipart_upload()
            .bucket(store.bucket())
            .key(&self.key)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
        let out = ssec!(req, &*store.sse).send().await.map_err(|e| map_err("CompleteMultipartUpload", e))?;
        // From here the object exists: any failure must remove it.
        self.multipart = None;
        self.finished = true;
        if !matches!(*store.sse, Sse::C { .. }) {
            if let Err(e) =
                store.sse.confirm("CompleteMultipartUpload", out.server_side_encryption(), out.ssekms_key_id(), None)
            {
                store.delete_quietly(&self.key).await;
                return Err(e);
            }
        }
        // Record the whole-object digest beside the object (its metadata cannot change now).
        let etag = out.e_tag().unwrap_or_default().to_owned();
        if let Err(e) = store.put_digest(&self.key, sha256, &etag).await {
            store.delete_quietly(&self.key).await;
            return Err(e);
        }
        Ok(self.meta(
            sha256,
            StoredAt {
                version_id: out.version_id().map(str::to_owned),
                etag: Some(etag).filter(|e| !e.is_empty()),
                checksum_sha256: out.checksum_sha256().map(str::to_owned),
                parts: u32::try_from(count).ok(),
                kms_key_id: out.ssekms_key_id().map(str::to_owned).or_else(|| store.sse.facts("", "").kms_key_id),
                ..store.sse.facts(store.bucket(), &self.key)
            },
        ))
    }

    fn meta(&self, sha256: [u8; 32], at: StoredAt) -> ObjectMeta {
        ObjectMeta { size: self.size, sha256: Some(sha256), modified: SystemTime::now(), location: Some(Box::new(at)) }
    }
}

async fn abort_upload(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    let sent = client.abort_multipart_upload().bucket(bucket).key(key).upload_id(upload_id).send().await;
    if let Err(e) = sent {
        tracing::error!(bucket, key, error = %map_err("AbortMultipartUpload", e), "could not abort a multipart upload; it is aborted at the next start once it is old enough");
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped without commit or abort (a task cancelled mid-upload): abort in the
        // background, the only thing Drop can do.
        if let (Some(mut mp), Ok(handle)) = (self.multipart.take(), tokio::runtime::Handle::try_current()) {
            mp.running.abort_all();
            let (client, bucket, key) = (self.store.client.clone(), self.store.bucket().to_owned(), self.key.clone());
            handle.spawn(async move {
                while mp.running.join_next().await.is_some() {}
                abort_upload(&client, &bucket, &key, &mp.upload_id).await;
            });
        }
    }
}

impl ObjectWriter for S3Writer {
    fn write(&mut self, data: Bytes) -> BoxFuture<'_, Result<(), StorageError>> {
        async move {
            self.hasher.update(&data);
            self.size += data.len() as u64;
            let mut rest = data;
            while !rest.is_empty() {
                let room = self.part_size - self.buffer.len();
                let take = rest.split_to(room.min(rest.len()));
                self.buffer.extend_from_slice(&take);
                if self.buffer.len() == self.part_size {
                    let full = std::mem::replace(&mut self.buffer, self.pool.take());
                    let part = self.pool.freeze(full);
                    if let Err(e) = self.send_part(part).await {
                        self.discard().await;
                        return Err(e);
                    }
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn commit(
        mut self: Box<Self>,
        expected_sha256: Option<[u8; 32]>,
    ) -> BoxFuture<'static, Result<ObjectMeta, StorageError>> {
        async move {
            let result = self.commit_inner(expected_sha256).await;
            if result.is_err() {
                self.discard().await;
            }
            self.finished = true;
            result
        }
        .boxed()
    }

    fn abort(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        async move { self.discard().await }.boxed()
    }
}

/// A [`ObjectStore`] for one tenant, as the router hands it out. The store inside is
/// replaced whole when the tenant's SSE-C keys change ([`TenantS3::replace`]); each request
/// takes the store in force, and an upload keeps the one it began with (one key per upload).
#[derive(Debug, Clone)]
pub struct TenantS3(Arc<std::sync::RwLock<Arc<S3Store>>>);

impl TenantS3 {
    /// Serve `store`.
    pub fn new(store: Arc<S3Store>) -> TenantS3 {
        TenantS3(Arc::new(std::sync::RwLock::new(store)))
    }

    /// The store in force.
    pub fn store(&self) -> Arc<S3Store> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Put `store` in force for new requests.
    pub fn replace(&self, store: S3Store) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(store);
    }

    /// Ranged `GetObject` of an object whose metadata is known (size, and the ETag sent as
    /// `If-Match`, so a replaced object is refused rather than mixed in).
    async fn get(&self, full: String, meta: ObjectMeta, range: RangeRequest) -> Result<ObjectRead, StorageError> {
        let range = range.resolve(meta.size).map_err(|u| StorageError::RangeNotSatisfiable { size: u.size })?;
        if range.is_empty() {
            return Ok(ObjectRead { meta, range, body: Box::pin(futures_util::stream::empty()) });
        }
        let etag = meta.location.as_ref().and_then(|l| l.etag.clone());
        let store = self.store();
        let out = store
            .with_read_key(|sse| {
                let req = store
                    .client
                    .get_object()
                    .bucket(store.bucket())
                    .key(&full)
                    .range(format!("bytes={}-{}", range.start, range.end - 1))
                    .set_if_match(etag.clone());
                let req = ssec!(req, &*sse);
                async move { req.send().await }
            })
            .await
            .map_err(|e| map_err("GetObject", e))?;
        let body = futures_util::stream::try_unfold(out.body, |mut body| async move {
            match body.try_next().await {
                Ok(Some(chunk)) => Ok(Some((chunk, body))),
                Ok(None) => Ok(None),
                Err(e) => Err(StorageError::Unavailable(format!("GetObject body: {e}"))),
            }
        });
        Ok(ObjectRead { meta, range, body: Box::pin(body) })
    }
}

impl ObjectStore for TenantS3 {
    fn begin_put(
        &self,
        _tenant: &str,
        key: &ObjectKey,
        size_hint: Option<u64>,
    ) -> BoxFuture<'_, Result<Box<dyn ObjectWriter>, StorageError>> {
        let store = self.store();
        let full = store.full_key(key);
        let key = key.clone();
        let parent = key.parent();
        async move {
            if key.is_root() {
                return Err(StorageError::Conflict("path names a directory".into()));
            }
            // A directory of that name, or a file where a parent directory should be.
            if store.kind_of(&key).await? == Some(EntryKind::Dir) {
                return Err(StorageError::Conflict("path names a directory".into()));
            }
            if !parent.is_root() && store.kind_of(&parent).await? == Some(EntryKind::File) {
                return Err(StorageError::Conflict("a parent of this path is a file".into()));
            }
            let max = size_hint.unwrap_or(store.settings.max_object_size);
            let part_size = usize::try_from(part_size_for(store.settings.part_size, max)).unwrap_or(usize::MAX);
            let pool = PartPool::new(part_size, store.settings.parts_in_flight + 1);
            Ok(Box::new(S3Writer {
                store,
                key: full,
                part_size,
                buffer: Vec::new(),
                pool,
                hasher: Sha256::default(),
                size: 0,
                multipart: None,
                finished: false,
            }) as Box<dyn ObjectWriter>)
        }
        .boxed()
    }

    fn stat(&self, _tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<ObjectMeta, StorageError>> {
        let key = key.clone();
        let full = self.store().full_key(&key);
        async move {
            if key.is_root() {
                return Err(StorageError::Conflict("path names a directory".into()));
            }
            let head = match self.store().head_object(&full).await {
                Ok(h) => h,
                Err(StorageError::NotFound) => {
                    return match self.store().kind_of(&key).await? {
                        Some(EntryKind::Dir) => Err(StorageError::Conflict("path names a directory".into())),
                        _ => Err(StorageError::NotFound),
                    }
                }
                Err(e) => return Err(e),
            };
            let mut meta = head_meta(&self.store(), &full, &head);
            meta.sha256 = self.store().digest_of(&full, &head).await?;
            Ok(meta)
        }
        .boxed()
    }

    fn open(
        &self,
        tenant: &str,
        key: &ObjectKey,
        range: RangeRequest,
    ) -> BoxFuture<'_, Result<ObjectRead, StorageError>> {
        let full = self.store().full_key(key);
        let stat = self.stat(tenant, key);
        async move { self.get(full, stat.await?, range).await }.boxed()
    }

    fn open_known<'a>(
        &'a self,
        _tenant: &'a str,
        key: &'a ObjectKey,
        range: RangeRequest,
        meta: &'a ObjectMeta,
    ) -> BoxFuture<'a, Result<ObjectRead, StorageError>> {
        self.get(self.store().full_key(key), meta.clone(), range).boxed()
    }

    fn ready<'a>(&'a self, _tenant: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            self.store()
                .client
                .head_bucket()
                .bucket(self.store().bucket())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| map_err("HeadBucket", e))
        }
        .boxed()
    }

    fn delete(&self, _tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>> {
        let key = key.clone();
        let full = self.store().full_key(&key);
        async move {
            match self.store().kind_of(&key).await? {
                Some(EntryKind::File) => {}
                Some(EntryKind::Dir) => return Err(StorageError::Conflict("path names a directory".into())),
                None => return Err(StorageError::NotFound),
            }
            self.store()
                .client
                .delete_object()
                .bucket(self.store().bucket())
                .key(&full)
                .send()
                .await
                .map_err(|e| map_err("DeleteObject", e))?;
            self.store().delete_digest(&full).await;
            Ok(())
        }
        .boxed()
    }

    fn head(&self, _tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<ListEntry, StorageError>> {
        let key = key.clone();
        let full = self.store().full_key(&key);
        let name = key.file_name().to_owned();
        async move {
            if key.is_root() {
                return Ok(ListEntry { name, kind: EntryKind::Dir, size: 0, modified: UNIX_EPOCH });
            }
            match self.store().head_object(&full).await {
                Ok(h) => {
                    let size = h.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
                    return Ok(ListEntry {
                        name,
                        kind: EntryKind::File,
                        size,
                        modified: to_system_time(h.last_modified()),
                    });
                }
                Err(StorageError::NotFound) => {}
                Err(e) => return Err(e),
            }
            match self.store().dir_state(&self.store().dir_prefix(&key)).await? {
                (true, _) => Ok(ListEntry { name, kind: EntryKind::Dir, size: 0, modified: UNIX_EPOCH }),
                (false, _) => Err(StorageError::NotFound),
            }
        }
        .boxed()
    }

    fn mkdir(&self, _tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>> {
        let key = key.clone();
        let marker = self.store().dir_prefix(&key);
        async move {
            if key.is_root() {
                return Err(StorageError::Conflict("already exists".into()));
            }
            if self.store().kind_of(&key).await?.is_some() {
                return Err(StorageError::Conflict("already exists".into()));
            }
            let parent = key.parent();
            match self.store().kind_of(&parent).await? {
                Some(EntryKind::Dir) => {}
                Some(EntryKind::File) => return Err(StorageError::Conflict("a parent of this path is a file".into())),
                None => return Err(StorageError::NotFound),
            }
            self.store().put_single(&marker, Bytes::new(), None).await.map(|_| ())
        }
        .boxed()
    }

    fn rmdir(&self, _tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>> {
        let key = key.clone();
        let marker = self.store().dir_prefix(&key);
        async move {
            if key.is_root() {
                return Err(StorageError::Conflict("the home directory cannot be removed".into()));
            }
            if self.store().kind_of(&key).await? == Some(EntryKind::File) {
                return Err(StorageError::Conflict("not a directory".into()));
            }
            match self.store().dir_state(&marker).await? {
                (false, _) => Err(StorageError::NotFound),
                (true, true) => Err(StorageError::Conflict("directory not empty".into())),
                (true, false) => {
                    self.store()
                        .client
                        .delete_object()
                        .bucket(self.store().bucket())
                        .key(&marker)
                        .send()
                        .await
                        .map_err(|e| map_err("DeleteObject", e))?;
                    Ok(())
                }
            }
        }
        .boxed()
    }

    fn rename<'a>(
        &'a self,
        _tenant: &'a str,
        from: &'a ObjectKey,
        to: &'a ObjectKey,
        replace: bool,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            let s = &self.store();
            if from.is_root() || to.is_root() {
                return Err(StorageError::Conflict("the home directory cannot be renamed".into()));
            }
            if to.as_str().starts_with(&format!("{}/", from.as_str())) {
                return Err(StorageError::Conflict("cannot move a directory into itself".into()));
            }
            let src_kind = s.kind_of(from).await?.ok_or(StorageError::NotFound)?;
            match s.kind_of(to).await? {
                Some(EntryKind::Dir) => return Err(StorageError::Conflict("target is a directory".into())),
                Some(EntryKind::File) if !replace => {
                    return Err(StorageError::Conflict("target already exists".into()))
                }
                Some(EntryKind::File) if src_kind == EntryKind::Dir => {
                    return Err(StorageError::Conflict("cannot replace a file with a directory".into()))
                }
                _ => {}
            }
            match s.kind_of(&to.parent()).await? {
                Some(EntryKind::Dir) => {}
                Some(EntryKind::File) => return Err(StorageError::Conflict("a parent of this path is a file".into())),
                None => return Err(StorageError::NotFound),
            }
            match src_kind {
                EntryKind::File => {
                    let (src, dst) = (s.full_key(from), s.full_key(to));
                    s.copy_with_digest(&src, &dst).await?;
                    s.client
                        .delete_object()
                        .bucket(s.bucket())
                        .key(&src)
                        .send()
                        .await
                        .map_err(|e| map_err("DeleteObject", e))?;
                    s.delete_digest(&src).await;
                }
                EntryKind::Dir => {
                    let (src_dir, dst_dir) = (s.dir_prefix(from), s.dir_prefix(to));
                    for key in s.keys_under(&src_dir, MAX_DIR_RENAME).await? {
                        let dst = format!("{dst_dir}{}", &key[src_dir.len()..]);
                        s.copy_with_digest(&key, &dst).await?;
                        s.client
                            .delete_object()
                            .bucket(s.bucket())
                            .key(&key)
                            .send()
                            .await
                            .map_err(|e| map_err("DeleteObject", e))?;
                        s.delete_digest(&key).await;
                    }
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn list<'a>(
        &'a self,
        _tenant: &'a str,
        prefix: &'a ObjectKey,
        after: Option<&'a ListCursor>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ListPage, StorageError>> {
        async move {
            let s = &self.store();
            let dir = s.dir_prefix(prefix);
            if !prefix.is_root() && after.is_none() {
                match s.kind_of(prefix).await? {
                    Some(EntryKind::Dir) => {}
                    Some(EntryKind::File) => {
                        return Err(StorageError::Conflict("path names a file, not a directory".into()))
                    }
                    None => return Err(StorageError::NotFound),
                }
            }
            let out = s
                .client
                .list_objects_v2()
                .bucket(s.bucket())
                .prefix(&dir)
                .delimiter("/")
                .max_keys(i32::try_from(limit.clamp(1, 1000)).unwrap_or(1000))
                .set_continuation_token(after.map(|c| s.open_cursor(c)).transpose()?)
                .send()
                .await
                .map_err(|e| map_err("ListObjectsV2", e))?;
            let mut entries = Vec::new();
            for p in out.common_prefixes() {
                let Some(name) = p.prefix().and_then(|k| k.strip_prefix(dir.as_str())).map(|n| n.trim_end_matches('/'))
                else {
                    continue;
                };
                if !name.is_empty() {
                    entries.push(ListEntry {
                        name: name.to_owned(),
                        kind: EntryKind::Dir,
                        size: 0,
                        modified: UNIX_EPOCH,
                    });
                }
            }
            for o in out.contents() {
                let Some(name) = o.key().and_then(|k| k.strip_prefix(dir.as_str())) else { continue };
                if name.is_empty() || name.starts_with(PROBE) {
                    continue; // the directory's own marker, or a start-up probe
                }
                let size = o.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
                entries.push(ListEntry {
                    name: name.to_owned(),
                    kind: EntryKind::File,
                    size,
                    modified: to_system_time(o.last_modified()),
                });
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            let next = match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => Some(s.seal_cursor(t)?),
                _ => None,
            };
            Ok(ListPage { entries, next })
        }
        .boxed()
    }
}

fn head_meta(store: &S3Store, key: &str, head: &aws_sdk_s3::operation::head_object::HeadObjectOutput) -> ObjectMeta {
    ObjectMeta {
        size: head.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
        sha256: hex_digest(head.metadata()),
        modified: to_system_time(head.last_modified()),
        location: Some(Box::new(StoredAt {
            version_id: head.version_id().map(str::to_owned),
            etag: head.e_tag().map(str::to_owned),
            checksum_sha256: head.checksum_sha256().map(str::to_owned),
            parts: head.parts_count().and_then(|n| u32::try_from(n).ok()),
            kms_key_id: head.ssekms_key_id().map(str::to_owned).or_else(|| store.sse.facts("", "").kms_key_id),
            ..store.sse.facts(store.bucket(), key)
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_to_fit_ten_thousand_parts() {
        assert_eq!(part_size_for(16 << 20, 1 << 30), 16 << 20);
        let five_tib = 5u64 << 40;
        let p = part_size_for(16 << 20, five_tib);
        assert!(p * MAX_PARTS >= five_tib && p.is_multiple_of(1 << 20), "{p}");
        assert_eq!(part_size_for(5 << 20, 0), 5 << 20);
    }

    #[test]
    fn copy_source_is_percent_encoded() {
        assert_eq!(copy_source("b", "t/a b/ü+x.txt"), "b/t/a%20b/%C3%BC%2Bx.txt");
    }

    #[test]
    fn kms_key_ids_match_their_arns() {
        assert!(kms_key_matches("abc", "arn:aws:kms:eu-west-1:1:key/abc"));
        assert!(kms_key_matches("arn:aws:kms:eu-west-1:1:key/abc", "arn:aws:kms:eu-west-1:1:key/abc"));
        assert!(!kms_key_matches("abc", "arn:aws:kms:eu-west-1:1:key/abcd"));
    }

    #[test]
    fn sse_c_keys_never_show_and_are_checked() {
        let tenant = TenantKey::generate().unwrap();
        let sse = Sse::customer_key(&[7u8; 32], &tenant).unwrap();
        let shown = format!("{sse:?}");
        assert!(!shown.contains(&B64.encode([7u8; 32])), "{shown}");
        assert!(shown.contains("hmac-sha256:"), "{shown}");
        let again = Sse::customer_key(format!("{}\n", B64.encode([7u8; 32])).as_bytes(), &tenant).unwrap();
        let (Sse::C { md5: a, fingerprint: fa, .. }, Sse::C { md5: b, fingerprint: fb, .. }) = (&sse, &again) else {
            panic!("not SSE-C")
        };
        assert_eq!((a, fa), (b, fb));
        assert!(Sse::customer_key(&[1u8; 16], &tenant).is_err());
        assert!(sse.confirm("t", None, None, Some(a)).is_ok());
        assert!(matches!(sse.confirm("t", None, None, None), Err(StorageError::EncryptionNotConfirmed(_))));
        let kms = Sse::kms("acme", "k1".into(), false);
        assert!(kms.confirm("t", Some(&ServerSideEncryption::AwsKms), Some("arn:x:key/k1"), None).is_ok());
        assert!(kms.confirm("t", Some(&ServerSideEncryption::Aes256), None, None).is_err());
        assert!(kms.confirm("t", None, None, None).is_err());
        assert!(Sse::S3.confirm("t", Some(&ServerSideEncryption::Aes256), None, None).is_ok());
        assert!(Sse::S3.confirm("t", None, None, None).is_err());
    }
}
