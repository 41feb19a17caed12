//! The embedded default backend: a local directory, every object sealed with its tenant's key.
//!
//! Layout under `root`: `objects/<tenant>/<key>` holds committed objects in the
//! [`sealed`](super::sealed) format; `staging/` holds uploads in progress. A commit writes
//! the metadata block, fsyncs the file, renames it into place and fsyncs the directory, so an
//! object is either absent or complete, also after a crash. Staging is emptied at start.
//! File-system work runs on the blocking pool, in batches of [`BATCH`] bytes.
//!
//! Where an upload's time goes, and what overlaps:
//! - A large upload asks the kernel to write its staging file back every [`FLUSH_EVERY`]
//!   bytes (`fdatasync` on a second blocking thread, while sealing goes on), so the final
//!   fsync at commit finds little left to write instead of the whole file.
//! - [`ObjectWriter::prepare`] seals the last chunk, writes the metadata block and fsyncs the
//!   file while the caller writes its durable `intent` record; only the rename waits for both.
//! - After the rename, the parent directory is fsynced; its ancestors up to the tenant root
//!   only until they are known durable ([`DurableDirs`]), not again for every file.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use super::sealed::{self, Opener, SealedMeta, Sealer, CHUNK, DATA_OFFSET, HEADER_LEN, META_LEN, TAG};
use super::{
    ByteRange, EntryKind, ListCursor, ListEntry, ListPage, ObjectMeta, ObjectRead, ObjectStore, ObjectWriter,
    RangeRequest, StorageError,
};
use crate::audit::AuditEntry;
use crate::digest::Sha256;
use crate::keyring::{SharedKeyring, TenantKeyring};
use crate::path::ObjectKey;
use crate::secrets::random_bytes;

/// Plaintext buffered per upload before it is sealed and written (bounds memory per transfer).
pub const BATCH: usize = 16 * CHUNK;

/// Bytes an upload writes to its staging file between two background flushes (`fdatasync` on
/// another blocking thread). Without them the whole file waits in the page cache (below the
/// kernel's dirty thresholds) for the final fsync, which then takes as long as the disk needs
/// for all of it, after the last byte arrived.
pub const FLUSH_EVERY: u64 = 16 * 1024 * 1024;

/// Most directories remembered as durable (the set starts over when full).
const DURABLE_DIRS_MAX: usize = 4096;

/// Object directories whose entry, and every ancestor's up to the tenant root, is known to be
/// on disk (fsynced by this process), by path with the inode number they had then. A commit
/// into one of them fsyncs only the directory itself for the new name. Removing or renaming a
/// directory forgets them all; a directory that was replaced since (another inode at the same
/// path) does not match.
#[derive(Default)]
struct DurableDirs(std::sync::Mutex<HashMap<PathBuf, u64>>);

impl DurableDirs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, u64>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    fn contains(&self, dir: &Path, ino: u64) -> bool {
        self.lock().get(dir) == Some(&ino)
    }
    fn insert(&self, dirs: Vec<(PathBuf, u64)>) {
        let mut known = self.lock();
        if known.len() + dirs.len() > DURABLE_DIRS_MAX {
            known.clear();
        }
        known.extend(dirs);
    }
    fn forget_all(&self) {
        self.lock().clear();
    }
}

/// Encrypted local object store.
pub struct LocalStore {
    objects: PathBuf,
    staging: PathBuf,
    keys: HashMap<String, Arc<SharedKeyring>>,
    durable_dirs: Arc<DurableDirs>,
    /// Staging files of uploads a crash interrupted, by upload id, found at open and kept
    /// until [`ObjectStore::recover_uploads`] settles them.
    interrupted: std::sync::Mutex<Vec<(String, PathBuf)>>,
}

/// Prefix of a staging file named after its upload id (`u-<id>.part`); other staging files
/// have random names.
const UPLOAD_STAGING_PREFIX: &str = "u-";

/// The upload id a staging file name carries, if it is one of ours and the id is plain.
fn upload_id_of(name: &str) -> Option<&str> {
    let id = name.strip_prefix(UPLOAD_STAGING_PREFIX)?.strip_suffix(".part")?;
    plain_id(id).then_some(id)
}

/// Ids that can name a file: 1 to 64 ASCII letters, digits, `-` or `_`.
fn plain_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore").field("objects", &self.objects).field("tenants", &self.keys.len()).finish()
    }
}

/// File-system errors in storage terms (this backend's only; S3 maps its own).
impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            ErrorKind::NotFound => StorageError::NotFound,
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => StorageError::Unavailable(e.to_string()),
            _ => StorageError::Backend(e.to_string()),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StorageError::Backend(format!("storage task failed: {e}")))?
}

fn integrity(e: sealed::SealError) -> StorageError {
    StorageError::Integrity(e.0)
}

impl LocalStore {
    /// Open (creating if needed) a store under `root` serving the given tenants.
    pub fn open(root: &Path, keys: HashMap<String, Arc<SharedKeyring>>) -> Result<LocalStore, StorageError> {
        let objects = root.join("objects");
        let staging = root.join("staging");
        for dir in [&objects, &staging] {
            crate::secrets::create_private_dir(dir).map_err(|e| StorageError::Backend(e.to_string()))?;
        }
        for tenant in keys.keys() {
            crate::secrets::create_private_dir(&objects.join(tenant))
                .map_err(|e| StorageError::Backend(e.to_string()))?;
        }
        // Anything left in staging is an upload a crash interrupted. Files named after an
        // upload wait for `recover_uploads` (its `completed` record may be written while its
        // name was not yet durable); the rest were never visible and go now.
        let mut interrupted = Vec::new();
        for entry in fs::read_dir(&staging)? {
            let entry = entry?;
            if let Some(id) = entry.file_name().to_str().and_then(upload_id_of) {
                interrupted.push((id.to_owned(), entry.path()));
                continue;
            }
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "could not remove stale staging file");
            }
        }
        Ok(LocalStore {
            objects,
            staging,
            keys,
            durable_dirs: Arc::default(),
            interrupted: std::sync::Mutex::new(interrupted),
        })
    }

    /// The tenant's keyring in force now.
    fn key(&self, tenant: &str) -> Result<Arc<TenantKeyring>, StorageError> {
        self.keys.get(tenant).map(|k| k.current()).ok_or_else(|| StorageError::NoTenantKey(tenant.to_owned()))
    }

    fn object_path(&self, tenant: &str, key: &ObjectKey) -> PathBuf {
        let mut p = self.objects.join(tenant);
        for seg in key.segments() {
            p.push(seg);
        }
        p
    }
}

fn mtime_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Read and authenticate header and metadata of an open sealed file.
pub(super) fn open_sealed(
    file: &mut File,
    key: &TenantKeyring,
) -> Result<(Opener, SealedMeta, [u8; HEADER_LEN]), StorageError> {
    let mut head = [0u8; DATA_OFFSET as usize];
    file.read_exact(&mut head).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => StorageError::Integrity("object is shorter than its header".into()),
        _ => StorageError::from(e),
    })?;
    let (header, meta_block) = head.split_at(HEADER_LEN);
    let header: &[u8; HEADER_LEN] = header.try_into().map_err(|_| StorageError::Integrity("header".into()))?;
    let meta_block: &[u8; META_LEN] = meta_block.try_into().map_err(|_| StorageError::Integrity("header".into()))?;
    let opener = Opener::new(key, header).map_err(integrity)?;
    let meta = opener.open_meta(meta_block).map_err(integrity)?;
    let len = file.metadata()?.len();
    if len != sealed::sealed_len(meta.size) {
        return Err(StorageError::Integrity(format!(
            "object is {len} bytes on disk, {} expected: truncated or extended",
            sealed::sealed_len(meta.size)
        )));
    }
    Ok((opener, meta, *header))
}

fn to_meta(m: &SealedMeta) -> ObjectMeta {
    ObjectMeta {
        size: m.size,
        sha256: Some(m.sha256),
        modified: UNIX_EPOCH + Duration::from_secs(m.modified),
        location: None,
    }
}

fn open_file(path: &Path) -> Result<File, StorageError> {
    let file = File::open(path)?;
    if file.metadata()?.is_dir() {
        return Err(StorageError::Conflict("path names a directory".into()));
    }
    Ok(file)
}

/// Reads the chunks covering a range, a batch at a time.
struct ChunkReader {
    file: File,
    opener: Opener,
    range: ByteRange,
    /// Next chunk to read.
    next: u64,
    /// Chunk holding the last byte of the range (inclusive).
    last_needed: u64,
    /// Final chunk of the object.
    final_chunk: u64,
}

impl ChunkReader {
    /// Read up to [`BATCH`] bytes of plaintext; `None` when the range is done.
    fn read_batch(&mut self) -> Result<Option<Bytes>, StorageError> {
        if self.next > self.last_needed {
            return Ok(None);
        }
        let count = (self.last_needed - self.next + 1).min((BATCH / CHUNK) as u64);
        let offset = DATA_OFFSET + self.next * (CHUNK + TAG) as u64;
        let end_chunk = self.next + count; // exclusive
        let end_offset = if end_chunk > self.final_chunk {
            self.file.metadata()?.len()
        } else {
            DATA_OFFSET + end_chunk * (CHUNK + TAG) as u64
        };
        // Read into spare capacity: no zero-filling of a buffer that is overwritten anyway.
        let want = end_offset - offset;
        let mut buf = Vec::with_capacity(want as usize);
        self.file.seek(SeekFrom::Start(offset))?;
        (&self.file).take(want).read_to_end(&mut buf)?;
        if buf.len() as u64 != want {
            return Err(StorageError::Integrity("object shrank while being read".into()));
        }
        let mut write = 0usize;
        let mut read = 0usize;
        for index in self.next..end_chunk {
            let clen = (buf.len() - read).min(CHUNK + TAG);
            let chunk_start = index * CHUNK as u64;
            let plain_len = {
                let data = buf.get_mut(read..read + clen).ok_or(StorageError::Integrity("short chunk".into()))?;
                self.opener.open_chunk(index, index == self.final_chunk, data).map_err(integrity)?.len()
            };
            // Keep only the part of this chunk inside the range.
            let lo = self.range.start.saturating_sub(chunk_start).min(plain_len as u64) as usize;
            let hi = (self.range.end.saturating_sub(chunk_start)).min(plain_len as u64) as usize;
            if hi > lo {
                buf.copy_within(read + lo..read + hi, write);
                write += hi - lo;
            }
            read += clen;
        }
        buf.truncate(write);
        self.next = end_chunk;
        Ok(Some(Bytes::from(buf)))
    }
}

/// The blocking side of an upload: file, cipher and digest. Owned by whichever batch is
/// being sealed, so receiving the next batch overlaps with sealing and writing this one.
struct Sealing {
    /// The staging file, made with the first batch (or at `prepare`), so opening an upload
    /// costs no file-system round trip and a small file is created, sealed and synced in one.
    file: Option<File>,
    /// Set when the writer is dropped uncommitted: a batch still in flight must not leave a
    /// staging file behind (it may create the file after the writer removed it).
    abandoned: Arc<AtomicBool>,
    path: PathBuf,
    sealer: Sealer,
    hasher: Sha256,
    out: Vec<u8>,
}

impl Sealing {
    /// The staging file, created (header and a blank metadata block) on first use.
    fn file(&mut self) -> Result<&mut File, StorageError> {
        if self.file.is_none() {
            let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&self.path)?;
            // Checked after creating: either the writer's drop sees the file and removes it,
            // or this sees the flag (both sides are SeqCst).
            if self.abandoned.load(Ordering::SeqCst) {
                let _ = fs::remove_file(&self.path);
                return Err(StorageError::Backend("upload abandoned".into()));
            }
            file.write_all(self.sealer.header())?;
            file.write_all(&[0u8; META_LEN])?;
            self.file = Some(file);
        }
        self.file.as_mut().ok_or_else(|| StorageError::Backend("staging file missing".into()))
    }

    /// Seal `frames` (a whole number of chunks, unless `last`) and write them.
    fn seal_frames(&mut self, frames: Vec<Bytes>, last: bool) -> Result<(), StorageError> {
        self.out.clear();
        let mut chunk_start = 0;
        let mut remaining: usize = frames.iter().map(Bytes::len).sum();
        for frame in &frames {
            let mut rest: &[u8] = frame;
            while !rest.is_empty() {
                let room = CHUNK - (self.out.len() - chunk_start);
                let (take, more) = rest.split_at(room.min(rest.len()));
                self.hasher.update(take);
                self.out.extend_from_slice(take);
                remaining -= take.len();
                rest = more;
                // A full chunk is sealed now unless it ends the object: that one is the final
                // chunk and is sealed as such below.
                if self.out.len() - chunk_start == CHUNK && (remaining > 0 || !last) {
                    self.sealer.seal_tail(&mut self.out, chunk_start, false).map_err(integrity)?;
                    chunk_start = self.out.len();
                }
            }
        }
        let partial = self.out.len() > chunk_start;
        if last {
            // The final chunk: whatever remains, possibly nothing (an empty object, or a size
            // that is a multiple of the chunk size still ends with an empty sealed chunk).
            self.sealer.seal_tail(&mut self.out, chunk_start, true).map_err(integrity)?;
        } else if partial {
            return Err(StorageError::Backend("internal error: partial chunk in a non-final batch".into()));
        }
        let out = std::mem::take(&mut self.out);
        let written = self.file().and_then(|f| Ok(f.write_all(&out)?));
        self.out = out;
        written
    }
}

impl Sealing {
    /// Seal the last frames, check the digest, write the metadata block and make the staging
    /// file durable (data and size; the name it will have is made durable by `publish`).
    fn finish(
        &mut self,
        frames: Vec<Bytes>,
        size: u64,
        expected_sha256: Option<[u8; 32]>,
    ) -> Result<SealedMeta, StorageError> {
        self.seal_frames(frames, true)?;
        let sha256 = std::mem::take(&mut self.hasher).finish();
        if expected_sha256.is_some_and(|want| want != sha256) {
            return Err(StorageError::DigestMismatch);
        }
        let meta = SealedMeta { size, sha256, modified: mtime_secs(SystemTime::now()) };
        let block = self.sealer.seal_meta(&meta).map_err(integrity)?;
        let file = self.file()?;
        file.seek(SeekFrom::Start(HEADER_LEN as u64))?;
        file.write_all(&block)?;
        file.sync_data()?;
        Ok(meta)
    }
}

/// An upload into staging; see [`ObjectWriter`].
struct LocalWriter {
    /// The sealing state, when no batch is in flight.
    sealing: Option<Sealing>,
    /// The batch being sealed and written on the blocking pool.
    in_flight: Option<tokio::task::JoinHandle<Result<Sealing, StorageError>>>,
    /// Received plaintext not yet handed to a batch.
    frames: Vec<Bytes>,
    frames_len: usize,
    size: u64,
    /// Plaintext handed to batches so far, and how much of it the last flush covers.
    handed: u64,
    flushed_to: u64,
    /// The background flush of the staging file (see [`FLUSH_EVERY`]), if one was started.
    flush: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Set by [`ObjectWriter::prepare`]: sealed, digest checked, durable; only the rename left.
    prepared: Option<SealedMeta>,
    staging_path: PathBuf,
    final_path: PathBuf,
    tenant_root: PathBuf,
    durable_dirs: Arc<DurableDirs>,
    /// Shared with the sealing state: set when dropped uncommitted.
    abandoned: Arc<AtomicBool>,
    done: bool,
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if !self.done {
            // Not committed: the staged bytes must not survive, also if a batch in flight
            // creates the file only now (it checks `abandoned` after creating).
            self.abandoned.store(true, Ordering::SeqCst);
            let _ = fs::remove_file(&self.staging_path);
        }
    }
}

impl LocalWriter {
    /// The whole close in one blocking call (one thread hand-off, not two): seal the rest and
    /// fsync the data, then wait there for `go` (the caller's durable `intent`), then rename,
    /// say so on `placed`, and fsync the directory. On an error before the rename (or no
    /// `go`) the staging file is removed before this returns.
    async fn close(
        mut self: Box<Self>,
        expected_sha256: Option<[u8; 32]>,
        go: tokio::sync::oneshot::Receiver<bool>,
        placed: Option<tokio::sync::oneshot::Sender<ObjectMeta>>,
    ) -> Result<ObjectMeta, StorageError> {
        let prepared = self.prepared.take();
        let sealing = match prepared {
            Some(_) => None,
            None => Some((self.settle().await?, std::mem::take(&mut self.frames))),
        };
        self.join_flush().await?;
        let size = self.size;
        let final_path = self.final_path.clone();
        let staging_path = self.staging_path.clone();
        let tenant_root = self.tenant_root.clone();
        let known = self.durable_dirs.clone();
        let meta = blocking(move || {
            let meta = match (prepared, sealing) {
                (Some(meta), _) => meta,
                (None, Some((mut sealing, frames))) => sealing.finish(frames, size, expected_sha256)?,
                (None, None) => return Err(StorageError::Backend("upload not prepared".into())),
            };
            if expected_sha256.is_some_and(|want| want != meta.sha256) {
                return Err(StorageError::DigestMismatch);
            }
            if !go.blocking_recv().unwrap_or(false) {
                return Err(super::not_committed());
            }
            place(&staging_path, &final_path)?;
            if let Some(placed) = placed {
                let _ = placed.send(to_meta(&meta));
            }
            sync_parents(&final_path, &tenant_root, &known)?;
            Ok(meta)
        })
        .await;
        match meta {
            Ok(meta) => {
                self.done = true;
                Ok(to_meta(&meta))
            }
            // `Drop` removes the staging file (not done).
            Err(e) => Err(e),
        }
    }

    /// Wait for the batch in flight (if any) and take back the sealing state.
    async fn settle(&mut self) -> Result<Sealing, StorageError> {
        if let Some(task) = self.in_flight.take() {
            let sealing = task.await.map_err(|e| StorageError::Backend(format!("storage task failed: {e}")))??;
            return Ok(sealing);
        }
        self.sealing.take().ok_or_else(|| StorageError::Backend("upload writer used after a failure".into()))
    }

    /// Wait for the background flush, if one was started; its error fails the upload.
    async fn join_flush(&mut self) -> Result<(), StorageError> {
        if let Some(task) = self.flush.take() {
            task.await.map_err(|e| StorageError::Backend(format!("storage task failed: {e}")))??;
        }
        Ok(())
    }

    /// Start a background flush of what `sealing` has written, once [`FLUSH_EVERY`] bytes
    /// have gone out since the last one and that one is done (a disk that falls behind skips
    /// a turn rather than holding up the upload).
    async fn flush_behind(&mut self, sealing: &Sealing) -> Result<(), StorageError> {
        if self.handed - self.flushed_to < FLUSH_EVERY || self.flush.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        self.join_flush().await?;
        let Some(file) = &sealing.file else { return Ok(()) };
        let file = file.try_clone()?;
        self.flushed_to = self.handed;
        self.flush = Some(tokio::task::spawn_blocking(move || file.sync_data()));
        Ok(())
    }

    /// Split off the largest whole number of chunks from the received frames, keeping at
    /// least one byte back so that the final chunk is sealed as final at commit.
    fn take_batch(&mut self) -> Vec<Bytes> {
        let mut want = (self.frames_len.saturating_sub(1) / CHUNK) * CHUNK;
        self.frames_len -= want;
        let mut batch = Vec::new();
        let mut rest = std::mem::take(&mut self.frames).into_iter();
        for mut frame in rest.by_ref() {
            if want == 0 {
                self.frames.push(frame);
                break;
            }
            if frame.len() <= want {
                want -= frame.len();
                batch.push(frame);
            } else {
                batch.push(frame.split_to(want));
                want = 0;
                self.frames.push(frame);
            }
        }
        self.frames.extend(rest);
        batch
    }
}

impl ObjectWriter for LocalWriter {
    fn abort(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        async move {
            // Let a batch in flight finish writing before the staging file goes.
            let _ = self.settle().await;
            let path = self.staging_path.clone();
            self.done = true;
            drop(self);
            let _ = blocking(move || Ok(fs::remove_file(&path)?)).await;
        }
        .boxed()
    }

    fn write(&mut self, data: Bytes) -> BoxFuture<'_, Result<(), StorageError>> {
        async move {
            self.size += data.len() as u64;
            self.frames_len += data.len();
            self.frames.push(data);
            if self.frames_len > BATCH {
                let mut sealing = self.settle().await?;
                // Everything handed so far is written now: flush it while the next batch seals.
                if let Err(e) = self.flush_behind(&sealing).await {
                    self.sealing = Some(sealing);
                    return Err(e);
                }
                let batch = self.take_batch();
                self.handed += batch.iter().map(|b| b.len() as u64).sum::<u64>();
                self.in_flight =
                    Some(tokio::task::spawn_blocking(move || sealing.seal_frames(batch, false).map(|()| sealing)));
            }
            Ok(())
        }
        .boxed()
    }

    /// Seal the rest, check the digest, write the metadata block and make the staging file
    /// durable: everything but the rename, so it overlaps with the caller's `intent` record.
    fn prepare(&mut self, expected_sha256: Option<[u8; 32]>) -> BoxFuture<'_, Result<(), StorageError>> {
        async move {
            if self.prepared.is_some() {
                return Ok(());
            }
            let mut sealing = self.settle().await?;
            self.join_flush().await?;
            let frames = std::mem::take(&mut self.frames);
            let size = self.size;
            let meta = blocking(move || sealing.finish(frames, size, expected_sha256)).await?;
            self.prepared = Some(meta);
            Ok(())
        }
        .boxed()
    }

    /// [`LocalWriter::close`] without telling anyone when the object is placed.
    fn commit_after(
        self: Box<Self>,
        expected_sha256: Option<[u8; 32]>,
        go: tokio::sync::oneshot::Receiver<bool>,
    ) -> BoxFuture<'static, Result<ObjectMeta, StorageError>> {
        self.close(expected_sha256, go, None).boxed()
    }

    /// As `commit_after`, with `placed` sent right after the rename, while the directory
    /// is fsynced.
    fn commit_placed(
        self: Box<Self>,
        expected_sha256: Option<[u8; 32]>,
        go: tokio::sync::oneshot::Receiver<bool>,
        placed: tokio::sync::oneshot::Sender<ObjectMeta>,
    ) -> BoxFuture<'static, Result<ObjectMeta, StorageError>> {
        self.close(expected_sha256, go, Some(placed)).boxed()
    }

    fn commit(
        mut self: Box<Self>,
        expected_sha256: Option<[u8; 32]>,
    ) -> BoxFuture<'static, Result<ObjectMeta, StorageError>> {
        async move {
            self.prepare(expected_sha256).await?;
            let meta = self.prepared.take().ok_or_else(|| StorageError::Backend("upload not prepared".into()))?;
            if expected_sha256.is_some_and(|want| want != meta.sha256) {
                return Err(StorageError::DigestMismatch);
            }
            let final_path = self.final_path.clone();
            let staging_path = self.staging_path.clone();
            let tenant_root = self.tenant_root.clone();
            let known = self.durable_dirs.clone();
            blocking(move || publish(&staging_path, &final_path, &tenant_root, &known)).await?;
            self.done = true;
            Ok(to_meta(&meta))
        }
        .boxed()
    }
}

/// Rename a finished staging file into place and make the rename durable: the parent
/// directory is fsynced, and its ancestors up to the tenant root unless `known` says they are
/// durable already.
fn publish(staging: &Path, target: &Path, tenant_root: &Path, known: &DurableDirs) -> Result<(), StorageError> {
    place(staging, target)?;
    sync_parents(target, tenant_root, known)
}

/// Rename a finished staging file into place (making its parent directories as needed).
fn place(staging: &Path, target: &Path) -> Result<(), StorageError> {
    let parent = target.parent().ok_or_else(|| StorageError::Backend("object has no parent directory".into()))?;
    if let Err(e) = fs::create_dir_all(parent) {
        return Err(match e.kind() {
            ErrorKind::AlreadyExists | ErrorKind::NotADirectory => {
                StorageError::Conflict("a parent of this path is a file".into())
            }
            _ => e.into(),
        });
    }
    if fs::metadata(target).map(|m| m.is_dir()).unwrap_or(false) {
        return Err(StorageError::Conflict("path names a directory".into()));
    }
    fs::rename(staging, target)?;
    Ok(())
}

/// Make the directory entries of a new `target` durable, up to the tenant root or the first
/// directory known to be durable with all its ancestors.
fn sync_parents(target: &Path, tenant_root: &Path, known: &DurableDirs) -> Result<(), StorageError> {
    let parent = target.parent().ok_or_else(|| StorageError::Backend("object has no parent directory".into()))?;
    let mut learned = Vec::new();
    let mut dir = Some(parent);
    while let Some(d) = dir {
        let handle = File::open(d)?;
        let ino = handle.metadata()?.ino();
        handle.sync_all()?;
        if d == tenant_root || known.contains(d, ino) {
            break;
        }
        learned.push((d.to_path_buf(), ino));
        dir = d.parent();
    }
    known.insert(learned);
    Ok(())
}

/// Move the object file `src` to `dst` unless `dst` exists, without the window between a
/// check and `rename(2)` (which replaces silently): `link(2)` fails if the target exists,
/// also one that appeared after our check. A crash between link and unlink leaves both
/// names, never neither. File systems without hard links fall back to check-then-rename.
fn move_no_replace(src: &Path, dst: &Path) -> Result<(), StorageError> {
    match fs::hard_link(src, dst) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            return Err(StorageError::Conflict("target already exists".into()))
        }
        Err(e) if matches!(e.kind(), ErrorKind::Unsupported | ErrorKind::PermissionDenied) => {
            if fs::symlink_metadata(dst).is_ok() {
                return Err(StorageError::Conflict("target already exists".into()));
            }
            return Ok(fs::rename(src, dst)?);
        }
        Err(e) => return Err(e.into()),
    }
    if let Err(e) = fs::remove_file(src) {
        let _ = fs::remove_file(dst);
        return Err(e.into());
    }
    Ok(())
}

impl LocalStore {
    /// [`ObjectStore::begin_put`], with the writer's own type.
    fn begin_writer(
        &self,
        tenant: &str,
        key: &ObjectKey,
        upload_id: Option<&str>,
    ) -> impl std::future::Future<Output = Result<LocalWriter, StorageError>> {
        let named = upload_id.filter(|id| plain_id(id)).map(|id| format!("{UPLOAD_STAGING_PREFIX}{id}.part"));
        let tenant_key = self.key(tenant);
        let final_path = self.object_path(tenant, key);
        let tenant_root = self.objects.join(tenant);
        let staging = self.staging.clone();
        let durable_dirs = self.durable_dirs.clone();
        let is_root = key.is_root();
        async move {
            let tenant_key = tenant_key?;
            if is_root {
                return Err(StorageError::Conflict("path names a directory".into()));
            }
            let name = match named {
                Some(name) => name,
                None => format!(
                    "{}.part",
                    hex::encode(random_bytes::<16>().map_err(|e| StorageError::Backend(e.to_string()))?)
                ),
            };
            let staging_path = staging.join(name);
            let sealer = Sealer::new(&tenant_key).map_err(integrity)?;
            let abandoned = Arc::new(AtomicBool::new(false));
            let sealing = Sealing {
                file: None,
                abandoned: abandoned.clone(),
                path: staging_path.clone(),
                sealer,
                hasher: Sha256::default(),
                out: Vec::new(),
            };
            Ok(LocalWriter {
                sealing: Some(sealing),
                in_flight: None,
                frames: Vec::new(),
                frames_len: 0,
                size: 0,
                handed: 0,
                flushed_to: 0,
                flush: None,
                prepared: None,
                staging_path,
                final_path,
                tenant_root,
                durable_dirs,
                abandoned,
                done: false,
            })
        }
    }
}

impl ObjectStore for LocalStore {
    fn begin_put(
        &self,
        tenant: &str,
        key: &ObjectKey,
        _size_hint: Option<u64>,
    ) -> BoxFuture<'_, Result<Box<dyn ObjectWriter>, StorageError>> {
        let writer = self.begin_writer(tenant, key, None);
        async move { Ok(Box::new(writer.await?) as Box<dyn ObjectWriter>) }.boxed()
    }
    fn begin_upload(
        &self,
        tenant: &str,
        key: &ObjectKey,
        _size_hint: Option<u64>,
        upload_id: &str,
    ) -> BoxFuture<'_, Result<Box<dyn ObjectWriter>, StorageError>> {
        let writer = self.begin_writer(tenant, key, Some(upload_id));
        async move { Ok(Box::new(writer.await?) as Box<dyn ObjectWriter>) }.boxed()
    }
    fn interrupted_uploads(&self) -> Vec<String> {
        self.interrupted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }
    fn recover_uploads<'a>(
        &'a self,
        completed: &'a HashMap<String, AuditEntry>,
    ) -> BoxFuture<'a, Result<Vec<String>, StorageError>> {
        let left = std::mem::take(&mut *self.interrupted.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let mut plan = Vec::new();
        for (id, staging) in left {
            // The `completed` record of an upload names its tenant and key; without one the
            // upload was never finished and its staging file goes.
            let target = completed.get(&id).and_then(|entry| {
                let tenant = entry.tenant.as_deref().filter(|t| self.keys.contains_key(*t))?;
                let key = ObjectKey::home(entry.object_key.as_deref()?).ok().filter(|k| !k.is_root())?;
                Some((format!("{tenant}:{key}"), self.object_path(tenant, &key), self.objects.join(tenant)))
            });
            plan.push((staging, target));
        }
        let known = self.durable_dirs.clone();
        async move {
            blocking(move || {
                let mut placed = Vec::new();
                for (staging, target) in plan {
                    match target {
                        Some((name, path, tenant_root)) => {
                            publish(&staging, &path, &tenant_root, &known)?;
                            placed.push(name);
                        }
                        None => {
                            if let Err(e) = fs::remove_file(&staging) {
                                tracing::warn!(path = %staging.display(), error = %e, "could not remove stale staging file");
                            }
                        }
                    }
                }
                Ok(placed)
            })
            .await
        }
        .boxed()
    }

    fn stat(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<ObjectMeta, StorageError>> {
        let tenant_key = self.key(tenant);
        let path = self.object_path(tenant, key);
        async move {
            let tenant_key = tenant_key?;
            blocking(move || {
                let mut file = open_file(&path)?;
                let (_, meta, _) = open_sealed(&mut file, &tenant_key)?;
                Ok(to_meta(&meta))
            })
            .await
        }
        .boxed()
    }

    fn open(
        &self,
        tenant: &str,
        key: &ObjectKey,
        range: RangeRequest,
    ) -> BoxFuture<'_, Result<ObjectRead, StorageError>> {
        let tenant_key = self.key(tenant);
        let path = self.object_path(tenant, key);
        async move {
            let tenant_key = tenant_key?;
            let (reader, first, meta, range) = blocking(move || {
                let mut file = open_file(&path)?;
                let (opener, meta, _) = open_sealed(&mut file, &tenant_key)?;
                let range = range.resolve(meta.size).map_err(|u| StorageError::RangeNotSatisfiable { size: u.size })?;
                let final_chunk = sealed::chunk_count(meta.size) - 1;
                let (next, last_needed) = if range.is_empty() {
                    // Empty object: still authenticate its one (empty, final) chunk.
                    (0, 0)
                } else {
                    (range.start / CHUNK as u64, (range.end - 1) / CHUNK as u64)
                };
                let mut reader = ChunkReader { file, opener, range, next, last_needed, final_chunk };
                // Read the first batch now, so a tampered object fails before any header is sent.
                let first = reader.read_batch()?;
                Ok((reader, first, meta, range))
            })
            .await?;
            // Read one batch ahead, so decrypting the next batch overlaps with sending this one.
            let read_ahead = |mut reader: ChunkReader| {
                tokio::task::spawn_blocking(move || {
                    let batch = reader.read_batch();
                    (reader, batch)
                })
            };
            let rest = futures_util::stream::try_unfold(Some(read_ahead(reader)), move |next| async move {
                let Some(next) = next else { return Ok(None) };
                let (reader, batch) =
                    next.await.map_err(|e| StorageError::Backend(format!("storage task failed: {e}")))?;
                Ok(batch?.map(|b| (b, Some(read_ahead(reader)))))
            });
            let body = futures_util::stream::iter(first.map(Ok::<Bytes, StorageError>)).chain(rest);
            Ok(ObjectRead { meta: to_meta(&meta), range, body: Box::pin(body) })
        }
        .boxed()
    }

    fn ready<'a>(&'a self, _tenant: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            for dir in [&self.objects, &self.staging] {
                let meta = tokio::fs::metadata(dir).await?;
                if !meta.is_dir() {
                    return Err(StorageError::Backend(format!("{} is not a directory", dir.display())));
                }
            }
            Ok(())
        })
    }

    fn delete(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>> {
        let path = self.object_path(tenant, key);
        let has_key = self.key(tenant).map(|_| ());
        async move {
            has_key?;
            blocking(move || {
                if fs::symlink_metadata(&path)?.is_dir() {
                    return Err(StorageError::Conflict("path names a directory".into()));
                }
                fs::remove_file(&path)?;
                if let Some(parent) = path.parent() {
                    File::open(parent)?.sync_all()?;
                }
                Ok(())
            })
            .await
        }
        .boxed()
    }

    fn head(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<ListEntry, StorageError>> {
        let path = self.object_path(tenant, key);
        let name = key.file_name().to_owned();
        let has_key = self.key(tenant).map(|_| ());
        async move {
            has_key?;
            blocking(move || {
                let meta = match fs::symlink_metadata(&path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == ErrorKind::NotADirectory => return Err(StorageError::NotFound),
                    Err(e) => return Err(e.into()),
                };
                let modified = meta.modified().unwrap_or(UNIX_EPOCH);
                if meta.is_dir() {
                    Ok(ListEntry { name, kind: EntryKind::Dir, size: 0, modified })
                } else if meta.is_file() {
                    let size = sealed::plaintext_len(meta.len()).unwrap_or(0);
                    Ok(ListEntry { name, kind: EntryKind::File, size, modified })
                } else {
                    // Symlinks and special files are never served.
                    Err(StorageError::NotFound)
                }
            })
            .await
        }
        .boxed()
    }

    fn mkdir(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>> {
        let path = self.object_path(tenant, key);
        let has_key = self.key(tenant).map(|_| ());
        async move {
            has_key?;
            blocking(move || {
                match fs::DirBuilder::new().mode(0o700).create(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        return Err(StorageError::Conflict("already exists".into()))
                    }
                    Err(e) if e.kind() == ErrorKind::NotADirectory => {
                        return Err(StorageError::Conflict("a parent of this path is a file".into()))
                    }
                    Err(e) => return Err(e.into()),
                }
                if let Some(parent) = path.parent() {
                    File::open(parent)?.sync_all()?;
                }
                Ok(())
            })
            .await
        }
        .boxed()
    }

    fn rmdir(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>> {
        let path = self.object_path(tenant, key);
        let has_key = self.key(tenant).map(|_| ());
        let is_root = key.is_root();
        let known = self.durable_dirs.clone();
        async move {
            has_key?;
            if is_root {
                return Err(StorageError::Conflict("the home directory cannot be removed".into()));
            }
            blocking(move || {
                if !fs::symlink_metadata(&path)?.is_dir() {
                    return Err(StorageError::Conflict("not a directory".into()));
                }
                known.forget_all();
                let removed = fs::remove_dir(&path);
                known.forget_all();
                match removed {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => {
                        Err(StorageError::Conflict("directory not empty".into()))
                    }
                    Err(e) => Err(e.into()),
                }
            })
            .await
        }
        .boxed()
    }

    fn rename<'a>(
        &'a self,
        tenant: &'a str,
        from: &'a ObjectKey,
        to: &'a ObjectKey,
        replace: bool,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let src = self.object_path(tenant, from);
        let dst = self.object_path(tenant, to);
        let roots = from.is_root() || to.is_root();
        let known = self.durable_dirs.clone();
        async move {
            self.key(tenant)?;
            if roots {
                return Err(StorageError::Conflict("the home directory cannot be renamed".into()));
            }
            if to.as_str().starts_with(&format!("{}/", from.as_str())) {
                return Err(StorageError::Conflict("cannot move a directory into itself".into()));
            }
            blocking(move || {
                let src_meta = fs::symlink_metadata(&src)?;
                if !(src_meta.is_file() || src_meta.is_dir()) {
                    return Err(StorageError::NotFound);
                }
                match fs::symlink_metadata(&dst) {
                    Ok(m) if m.is_dir() => return Err(StorageError::Conflict("target is a directory".into())),
                    Ok(_) if !replace => return Err(StorageError::Conflict("target already exists".into())),
                    Ok(_) if src_meta.is_dir() => {
                        return Err(StorageError::Conflict("cannot replace a file with a directory".into()))
                    }
                    _ => {}
                }
                if replace || src_meta.is_dir() {
                    // A directory moves: the paths known durable may name other directories now.
                    known.forget_all();
                    let moved = fs::rename(&src, &dst);
                    known.forget_all();
                    moved?;
                } else {
                    move_no_replace(&src, &dst)?;
                }
                for dir in [src.parent(), dst.parent()].into_iter().flatten() {
                    File::open(dir)?.sync_all()?;
                }
                Ok(())
            })
            .await
        }
        .boxed()
    }

    fn list<'a>(
        &'a self,
        tenant: &'a str,
        prefix: &'a ObjectKey,
        after: Option<&'a ListCursor>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ListPage, StorageError>> {
        let dir = self.object_path(tenant, prefix);
        let after = after.map(|c| c.as_str().to_owned());
        let is_root = prefix.is_root();
        async move {
            self.key(tenant)?;
            blocking(move || {
                let read = match fs::read_dir(&dir) {
                    Ok(r) => r,
                    Err(e) if e.kind() == ErrorKind::NotFound && is_root => return Ok(ListPage::default()),
                    Err(e) if e.kind() == ErrorKind::NotADirectory => {
                        return Err(StorageError::Conflict("path names a file, not a directory".into()))
                    }
                    Err(e) => return Err(e.into()),
                };
                let mut names = Vec::new();
                for entry in read {
                    let entry = entry?;
                    if let Ok(name) = entry.file_name().into_string() {
                        if after.as_deref().is_none_or(|a| name.as_str() > a) {
                            names.push((name, entry));
                        }
                    }
                }
                names.sort_by(|a, b| a.0.cmp(&b.0));
                let more = names.len() > limit;
                names.truncate(limit);
                let mut entries = Vec::with_capacity(names.len());
                for (name, entry) in names {
                    let meta = entry.metadata()?;
                    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
                    if meta.is_dir() {
                        entries.push(ListEntry { name, kind: EntryKind::Dir, size: 0, modified });
                    } else if meta.is_file() {
                        let size = sealed::plaintext_len(meta.len()).unwrap_or(0);
                        entries.push(ListEntry { name, kind: EntryKind::File, size, modified });
                    }
                }
                let next = if more { entries.last().map(|e| ListCursor::new(e.name.clone())) } else { None };
                Ok(ListPage { entries, next })
            })
            .await
        }
        .boxed()
    }
}

/// Shared handle type the rest of the gateway holds.
pub type SharedStore = Arc<dyn ObjectStore>;

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;

    async fn round_trip(store: &LocalStore, name: &str, data: &[u8], piece: usize) {
        let key = ObjectKey::home(name).unwrap();
        let mut w = store.begin_put("t", &key, None).await.unwrap();
        for p in data.chunks(piece.max(1)) {
            w.write(Bytes::copy_from_slice(p)).await.unwrap();
        }
        let meta = w.commit(None).await.unwrap();
        assert_eq!(meta.size, data.len() as u64);
        assert_eq!(meta.sha256, Some(crate::digest::sha256(data)));
        let path = store.object_path("t", &key);
        assert_eq!(fs::metadata(&path).unwrap().len(), sealed::sealed_len(data.len() as u64), "{name}");
        let read = store.open("t", &key, RangeRequest::All).await.unwrap();
        let back: Vec<Bytes> = read.body.try_collect().await.unwrap();
        assert_eq!(back.concat(), data, "{name}");
        let read = store.open("t", &key, RangeRequest::From(data.len() as u64 / 2)).await;
        if !data.is_empty() {
            let back: Vec<Bytes> = read.unwrap().body.try_collect().await.unwrap();
            assert_eq!(back.concat(), &data[data.len() / 2..], "{name} tail");
        }
    }

    #[tokio::test]
    async fn sizes_on_chunk_and_batch_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path());
        let sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, BATCH, BATCH + 1, 3 * BATCH, 3 * BATCH + 7];
        for (i, size) in sizes.into_iter().enumerate() {
            let data: Vec<u8> = (0..size).map(|j| (j * 7 + i) as u8).collect();
            for piece in [size, 1000, CHUNK, 3 * CHUNK + 5] {
                round_trip(&store, &format!("f{i}-{piece}"), &data, piece).await;
            }
        }
        assert_eq!(fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn digest_mismatch_and_drop_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path());
        let key = ObjectKey::home("x").unwrap();
        let mut w = store.begin_put("t", &key, None).await.unwrap();
        w.write(Bytes::from(vec![1u8; 3 * BATCH])).await.unwrap();
        assert!(matches!(w.commit(Some([0u8; 32])).await, Err(StorageError::DigestMismatch)));
        let mut w = store.begin_put("t", &key, None).await.unwrap();
        w.write(Bytes::from(vec![1u8; 3 * BATCH])).await.unwrap();
        drop(w);
        assert!(!store.object_path("t", &key).exists());
        // A batch still in flight removes a staging file it creates after the drop.
        for _ in 0..100 {
            if staged(dir.path()) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(staged(dir.path()), 0);
    }

    async fn put(store: &LocalStore, name: &str, data: &[u8]) {
        let mut w = store.begin_put("t", &ObjectKey::home(name).unwrap(), None).await.unwrap();
        w.write(Bytes::copy_from_slice(data)).await.unwrap();
        w.commit(None).await.unwrap();
    }

    async fn get(store: &LocalStore, name: &str) -> Vec<u8> {
        let read = store.open("t", &ObjectKey::home(name).unwrap(), RangeRequest::All).await.unwrap();
        let back: Vec<Bytes> = read.body.try_collect().await.unwrap();
        back.concat()
    }

    /// A fresh key for tenant `t`.
    fn test_keys() -> HashMap<String, Arc<SharedKeyring>> {
        HashMap::from([(
            "t".to_owned(),
            SharedKeyring::new(TenantKeyring::single(crate::secrets::TenantKey::generate().unwrap())),
        )])
    }

    fn test_store(dir: &Path) -> LocalStore {
        LocalStore::open(dir, test_keys()).unwrap()
    }

    fn staged(dir: &Path) -> usize {
        fs::read_dir(dir.join("staging")).unwrap().count()
    }

    #[tokio::test]
    async fn a_start_after_a_crash_puts_in_place_what_has_a_completed_record_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let keys = test_keys();
        let store = LocalStore::open(dir.path(), keys.clone()).unwrap();
        let data = vec![9u8; BATCH + 5];
        // Two uploads sealed and durable but not renamed, then the process dies (no drop).
        for id in ["placed", "unfinished"] {
            let key = ObjectKey::home(&format!("in/{id}.bin")).unwrap();
            let mut w = store.begin_upload("t", &key, None, id).await.unwrap();
            w.write(Bytes::from(data.clone())).await.unwrap();
            w.prepare(None).await.unwrap();
            std::mem::forget(w);
        }
        fs::write(dir.path().join("staging/0123abcd.part"), b"a staging file of no upload").unwrap();
        drop(store);

        let store = LocalStore::open(dir.path(), keys).unwrap();
        let mut found = store.interrupted_uploads();
        found.sort();
        assert_eq!(found, ["placed", "unfinished"]);
        assert_eq!(staged(dir.path()), 2, "a staging file not named after an upload goes at open");
        let completed = HashMap::from([(
            "placed".to_owned(),
            AuditEntry {
                tenant: Some("t".into()),
                object_key: Some("in/placed.bin".into()),
                operation: Some("upload".into()),
                transfer_id: Some("placed".into()),
                ..AuditEntry::new(crate::audit::AuditEvent::Completed)
            },
        )]);
        assert_eq!(store.recover_uploads(&completed).await.unwrap(), ["t:in/placed.bin"]);
        assert_eq!(get(&store, "in/placed.bin").await, data);
        assert!(matches!(
            store.head("t", &ObjectKey::home("in/unfinished.bin").unwrap()).await,
            Err(StorageError::NotFound)
        ));
        assert_eq!(staged(dir.path()), 0);
        assert!(store.interrupted_uploads().is_empty());
        // An id that could not name a file gets a random staging name.
        let mut w = store.begin_upload("t", &ObjectKey::home("z").unwrap(), None, "../x").await.unwrap();
        w.write(Bytes::from_static(b"z")).await.unwrap();
        w.prepare(None).await.unwrap();
        let names: Vec<String> = fs::read_dir(dir.path().join("staging"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.len() == 1 && upload_id_of(&names[0]).is_none() && names[0].ends_with(".part"), "{names:?}");
        w.abort().await;
        assert_eq!(staged(dir.path()), 0);
    }

    #[tokio::test]
    async fn prepare_makes_nothing_visible_and_commit_or_abort_follow() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path());
        let key = ObjectKey::home("p").unwrap();
        let data = vec![5u8; BATCH + 3];
        // prepare, then abort: nothing anywhere.
        let mut w = store.begin_put("t", &key, None).await.unwrap();
        assert_eq!(staged(dir.path()), 0, "the staging file is made with the first batch");
        w.write(Bytes::from(data.clone())).await.unwrap();
        w.prepare(None).await.unwrap();
        assert!(!store.object_path("t", &key).exists());
        assert_eq!(staged(dir.path()), 1);
        w.abort().await;
        assert_eq!(staged(dir.path()), 0);
        // A wrong digest fails at prepare, and commit refuses it too.
        let mut w = store.begin_put("t", &key, None).await.unwrap();
        w.write(Bytes::from(data.clone())).await.unwrap();
        assert!(matches!(w.prepare(Some([0u8; 32])).await, Err(StorageError::DigestMismatch)));
        w.abort().await;
        let mut w = store.begin_put("t", &key, None).await.unwrap();
        w.write(Bytes::from(data.clone())).await.unwrap();
        w.prepare(None).await.unwrap();
        assert!(matches!(w.commit(Some([0u8; 32])).await, Err(StorageError::DigestMismatch)));
        assert!(!store.object_path("t", &key).exists());
        assert_eq!(staged(dir.path()), 0);
        // prepare, then commit: the object, whole.
        let mut w = store.begin_put("t", &key, None).await.unwrap();
        w.write(Bytes::from(data.clone())).await.unwrap();
        w.prepare(Some(crate::digest::sha256(&data))).await.unwrap();
        let meta = w.commit(Some(crate::digest::sha256(&data))).await.unwrap();
        assert_eq!(meta.size, data.len() as u64);
        assert_eq!(get(&store, "p").await, data);
        assert_eq!(staged(dir.path()), 0);
    }

    #[tokio::test]
    async fn commit_after_waits_for_go_and_leaves_nothing_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path());
        for (name, data) in [("q", vec![7u8; 16 << 10]), ("r", vec![8u8; BATCH * 2 + 5])] {
            let key = ObjectKey::home(name).unwrap();
            // Sealed and synced, then held until told: nothing visible meanwhile.
            let mut w = store.begin_put("t", &key, None).await.unwrap();
            w.write(Bytes::from(data.clone())).await.unwrap();
            let (go, gate) = tokio::sync::oneshot::channel();
            let commit = tokio::spawn(w.commit_after(None, gate));
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!commit.is_finished(), "{:?}", commit.await);
            assert!(!store.object_path("t", &key).exists());
            assert_eq!(staged(dir.path()), 1);
            go.send(false).unwrap();
            assert!(commit.await.unwrap().is_err());
            assert!(!store.object_path("t", &key).exists());
            assert_eq!(staged(dir.path()), 0);
            // A sender dropped counts as no.
            let mut w = store.begin_put("t", &key, None).await.unwrap();
            w.write(Bytes::from(data.clone())).await.unwrap();
            let (go, gate) = tokio::sync::oneshot::channel::<bool>();
            drop(go);
            assert!(w.commit_after(None, gate).await.is_err());
            assert_eq!(staged(dir.path()), 0);
            // A wrong digest: refused even when told to go.
            let mut w = store.begin_put("t", &key, None).await.unwrap();
            w.write(Bytes::from(data.clone())).await.unwrap();
            let (go, gate) = tokio::sync::oneshot::channel();
            go.send(true).unwrap();
            assert!(matches!(w.commit_after(Some([0u8; 32]), gate).await, Err(StorageError::DigestMismatch)));
            assert!(!store.object_path("t", &key).exists());
            assert_eq!(staged(dir.path()), 0);
            // Told to go: the object, whole.
            let mut w = store.begin_put("t", &key, None).await.unwrap();
            w.write(Bytes::from(data.clone())).await.unwrap();
            let (go, gate) = tokio::sync::oneshot::channel();
            go.send(true).unwrap();
            let meta = w.commit_after(Some(crate::digest::sha256(&data)), gate).await.unwrap();
            assert_eq!(meta.size, data.len() as u64);
            assert_eq!(get(&store, name).await, data);
            assert_eq!(staged(dir.path()), 0);
        }
    }

    #[tokio::test]
    async fn a_large_upload_is_flushed_while_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path());
        let key = ObjectKey::home("big").unwrap();
        let data: Vec<u8> = (0..(2 * FLUSH_EVERY as usize + 5 * BATCH)).map(|i| (i % 251) as u8).collect();
        let mut w = store.begin_writer("t", &key, None).await.unwrap();
        for piece in data.chunks(256 * 1024) {
            w.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        // Flushes started behind the sealing: at least the first FLUSH_EVERY bytes.
        assert!(w.flushed_to >= FLUSH_EVERY, "flushed to {}", w.flushed_to);
        assert!(w.flush.is_some());
        Box::new(w).commit(None).await.unwrap();
        assert_eq!(get(&store, "big").await, data);
    }

    #[tokio::test]
    async fn directories_known_durable_are_not_fsynced_again_until_one_is_removed_or_moved() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path());
        let root = store.objects.join("t");
        let known = |p: &str| {
            let path = root.join(p);
            let ino = fs::metadata(&path).map(|m| m.ino()).unwrap_or(0);
            store.durable_dirs.contains(&path, ino)
        };
        put(&store, "top", b"1").await;
        assert_eq!(store.durable_dirs.lock().len(), 0, "the tenant root is fsynced each time, never remembered");
        put(&store, "a/b/c/f", b"2").await;
        assert!(known("a/b/c") && known("a/b") && known("a"));
        put(&store, "a/b/g", b"3").await;
        assert_eq!(store.durable_dirs.lock().len(), 3);
        // A directory removed and made again is another one: nothing is trusted after rmdir.
        store.mkdir("t", &ObjectKey::home("a/e").unwrap()).await.unwrap();
        store.rmdir("t", &ObjectKey::home("a/e").unwrap()).await.unwrap();
        assert_eq!(store.durable_dirs.lock().len(), 0);
        put(&store, "a/b/c/h", b"4").await;
        assert!(known("a/b/c") && known("a/b") && known("a"));
        // Moving a directory forgets them all as well; moving a file does not.
        store.rename("t", &ObjectKey::home("top").unwrap(), &ObjectKey::home("a/top").unwrap(), false).await.unwrap();
        assert!(known("a/b/c"));
        store.rename("t", &ObjectKey::home("a/b").unwrap(), &ObjectKey::home("x").unwrap(), false).await.unwrap();
        assert_eq!(store.durable_dirs.lock().len(), 0);
        put(&store, "x/c/i", b"5").await;
        assert!(known("x/c") && known("x"));
        assert_eq!(get(&store, "x/c/f").await, b"2");
        // A path remembered with an inode it no longer has does not count.
        assert!(!store.durable_dirs.contains(&root.join("x"), 0));
    }

    #[tokio::test]
    async fn rename_replaces_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path());
        let k = |n: &str| ObjectKey::home(n).unwrap();
        put(&store, "a", b"aaa").await;
        put(&store, "b", b"bbb").await;
        let refused = store.rename("t", &k("a"), &k("b"), false).await;
        assert!(matches!(refused, Err(StorageError::Conflict(_))), "{refused:?}");
        assert_eq!((get(&store, "a").await, get(&store, "b").await), (b"aaa".to_vec(), b"bbb".to_vec()));
        store.rename("t", &k("a"), &k("c"), false).await.unwrap();
        assert!(!store.object_path("t", &k("a")).exists());
        store.rename("t", &k("c"), &k("b"), true).await.unwrap();
        assert_eq!(get(&store, "b").await, b"aaa");
        // A target that appears after the existence check is still not replaced.
        put(&store, "d", b"ddd").await;
        let (src, dst) = (store.object_path("t", &k("b")), store.object_path("t", &k("d")));
        assert!(matches!(move_no_replace(&src, &dst), Err(StorageError::Conflict(_))));
        assert_eq!((get(&store, "b").await, get(&store, "d").await), (b"aaa".to_vec(), b"ddd".to_vec()));
        // Directories move whole, without replacing.
        store.mkdir("t", &k("dir")).await.unwrap();
        store.rename("t", &k("d"), &ObjectKey::home("dir/d").unwrap(), false).await.unwrap();
        store.rename("t", &k("dir"), &k("moved"), false).await.unwrap();
        assert_eq!(get(&store, "moved/d").await, b"ddd");
        let onto_dir = store.rename("t", &k("b"), &k("moved"), true).await;
        assert!(matches!(onto_dir, Err(StorageError::Conflict(_))), "{onto_dir:?}");
    }
}
