//! "What the bytes are", apart from "where they live": gateway-side sealing over any
//! [`ObjectStore`], for S3 tenants with `seal = true` (on top of the store's own encryption).
//!
//! Objects use the streaming layout of [`sealed`](super::sealed) (`GWSEAL04`: header with the
//! key id, chunks, then the sealed metadata block; `GWSEAL02` objects from before key ids stay
//! readable), written front to back in one pass, so it fits a multipart
//! upload. Reads fetch the metadata block with a ranged read of the object's last bytes, then
//! only the chunks covering the requested range, authenticating each: a changed, reordered,
//! dropped or truncated byte is an integrity error, never data. Sizes in listings are the
//! plaintext sizes (derived from the stored length). The inner store's own digest metadata
//! (`x-amz-meta-gateway-sha256` on S3) is of the sealed bytes; the plaintext digest is inside
//! the sealed metadata and is what the gateway reports.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use super::sealed::{self, Opener, SealedMeta, Sealer, CHUNK, HEADER_LEN, META_LEN, TAG};
use super::{
    ByteRange, ListCursor, ListEntry, ListPage, ObjectMeta, ObjectRead, ObjectStore, ObjectWriter, RangeRequest,
    StorageError,
};
use crate::digest::Sha256;
use crate::keyring::SharedKeyring;
use crate::path::ObjectKey;

/// Chunks sealed per write to the inner store (1 MiB of plaintext).
const BATCH_CHUNKS: usize = 16;

fn integrity(e: sealed::SealError) -> StorageError {
    StorageError::Integrity(e.0)
}

/// Seals one tenant's objects before they reach `inner`.
pub struct SealingStore {
    inner: Arc<dyn ObjectStore>,
    /// The tenant's keyring (replaced when keys rotate): new objects under its newest key,
    /// reads with the key each object's header names.
    key: Arc<SharedKeyring>,
}

impl std::fmt::Debug for SealingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingStore")
    }
}

impl SealingStore {
    /// Seal with the keys of `key` on top of `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, key: Arc<SharedKeyring>) -> SealingStore {
        SealingStore { inner, key }
    }

    /// Read and authenticate the header and metadata of the stored object at `key`.
    async fn open_meta(&self, tenant: &str, key: &ObjectKey) -> Result<(Opener, SealedMeta, ObjectMeta), StorageError> {
        let stored = self.inner.stat(tenant, key).await?;
        let Some(size) = sealed::plaintext_len(stored.size) else {
            return Err(StorageError::Integrity(format!("a sealed object cannot be {} bytes long", stored.size)));
        };
        let head =
            read_all(self.inner.open(tenant, key, RangeRequest::Inclusive(0, HEADER_LEN as u64 - 1)).await?).await?;
        let tail_start = stored.size - META_LEN as u64;
        let tail = read_all(self.inner.open(tenant, key, RangeRequest::From(tail_start)).await?).await?;
        let header: &[u8; HEADER_LEN] =
            head.as_ref().try_into().map_err(|_| StorageError::Integrity("short header".into()))?;
        let block: &[u8; META_LEN] =
            tail.as_ref().try_into().map_err(|_| StorageError::Integrity("short metadata block".into()))?;
        let opener = Opener::streaming(&self.key.current(), header).map_err(integrity)?;
        let meta = opener.open_meta(block).map_err(integrity)?;
        if meta.size != size {
            return Err(StorageError::Integrity("stored length and sealed size disagree".into()));
        }
        Ok((opener, meta, stored))
    }
}

async fn read_all(read: ObjectRead) -> Result<Bytes, StorageError> {
    let mut out = BytesMut::with_capacity(usize::try_from(read.range.len()).unwrap_or(0));
    let mut body = read.body;
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out.freeze())
}

fn plain_meta(meta: &SealedMeta, stored: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        size: meta.size,
        sha256: Some(meta.sha256),
        modified: UNIX_EPOCH + Duration::from_secs(meta.modified),
        location: stored.location,
    }
}

/// An upload being sealed on its way to the inner writer.
struct SealingWriter {
    inner: Option<Box<dyn ObjectWriter>>,
    sealer: Sealer,
    hasher: Sha256,
    /// Plaintext not yet sealed: at most one chunk, kept back until more arrives so that the
    /// final chunk is sealed as final.
    pending: BytesMut,
    /// Sealed bytes waiting to go to the inner writer.
    out: Vec<u8>,
    size: u64,
}

impl SealingWriter {
    fn inner(&mut self) -> Result<&mut Box<dyn ObjectWriter>, StorageError> {
        self.inner.as_mut().ok_or_else(|| StorageError::Backend("upload already ended".into()))
    }

    async fn flush(&mut self) -> Result<(), StorageError> {
        let out = Bytes::from(std::mem::take(&mut self.out));
        self.inner()?.write(out).await
    }
}

impl ObjectWriter for SealingWriter {
    fn write(&mut self, data: Bytes) -> BoxFuture<'_, Result<(), StorageError>> {
        async move {
            self.hasher.update(&data);
            self.size += data.len() as u64;
            let mut rest: &[u8] = &data;
            while !rest.is_empty() {
                if self.pending.len() == CHUNK {
                    // More data follows, so this full chunk is not the last one.
                    let start = self.out.len();
                    self.out.extend_from_slice(&self.pending);
                    self.pending.clear();
                    self.sealer.seal_tail(&mut self.out, start, false).map_err(integrity)?;
                    if self.out.len() >= BATCH_CHUNKS * (CHUNK + TAG) {
                        self.flush().await?;
                    }
                }
                let take = (CHUNK - self.pending.len()).min(rest.len());
                let (now, later) = rest.split_at(take);
                self.pending.extend_from_slice(now);
                rest = later;
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
            let sha256 = std::mem::take(&mut self.hasher).finish();
            if expected_sha256.is_some_and(|want| want != sha256) {
                if let Some(inner) = self.inner.take() {
                    inner.abort().await;
                }
                return Err(StorageError::DigestMismatch);
            }
            let start = self.out.len();
            self.out.extend_from_slice(&self.pending);
            self.sealer.seal_tail(&mut self.out, start, true).map_err(integrity)?;
            let meta = SealedMeta {
                size: self.size,
                sha256,
                modified: std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            };
            let block = self.sealer.seal_meta(&meta).map_err(integrity)?;
            self.out.extend_from_slice(&block);
            self.flush().await?;
            let inner = self.inner.take().ok_or_else(|| StorageError::Backend("upload already ended".into()))?;
            let stored = inner.commit(None).await?;
            Ok(plain_meta(&meta, stored))
        }
        .boxed()
    }

    fn abort(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        async move {
            if let Some(inner) = self.inner.take() {
                inner.abort().await;
            }
        }
        .boxed()
    }
}

/// Decrypts the chunks of a ranged read as they arrive.
struct Unsealer {
    opener: Opener,
    range: ByteRange,
    /// Index of the next chunk.
    next: u64,
    final_chunk: u64,
    buf: BytesMut,
}

impl Unsealer {
    /// Open every complete chunk in `buf` (all that remain when `end`), returning the
    /// plaintext inside the range.
    fn drain(&mut self, end: bool) -> Result<Bytes, StorageError> {
        let mut out = BytesMut::new();
        loop {
            let last = self.next == self.final_chunk;
            let full = self.buf.len() >= CHUNK + TAG;
            if !(full || (end && !self.buf.is_empty())) {
                break;
            }
            let take = self.buf.len().min(CHUNK + TAG);
            if !full && !last {
                return Err(StorageError::Integrity("object ends inside a chunk".into()));
            }
            let mut chunk = self.buf.split_to(take);
            let chunk_start = self.next * CHUNK as u64;
            let plain = self.opener.open_chunk(self.next, last, &mut chunk).map_err(integrity)?;
            let lo = self.range.start.saturating_sub(chunk_start).min(plain.len() as u64) as usize;
            let hi = self.range.end.saturating_sub(chunk_start).min(plain.len() as u64) as usize;
            if let Some(part) = plain.get(lo..hi) {
                out.extend_from_slice(part);
            }
            self.next += 1;
        }
        Ok(out.freeze())
    }
}

impl ObjectStore for SealingStore {
    fn begin_put(
        &self,
        tenant: &str,
        key: &ObjectKey,
        size_hint: Option<u64>,
    ) -> BoxFuture<'_, Result<Box<dyn ObjectWriter>, StorageError>> {
        let inner = self.inner.begin_put(tenant, key, size_hint.map(sealed::sealed_len));
        let sealer = Sealer::streaming(&self.key.current());
        async move {
            let sealer = sealer.map_err(integrity)?;
            let mut inner = inner.await?;
            if let Err(e) = inner.write(Bytes::copy_from_slice(sealer.header())).await {
                inner.abort().await;
                return Err(e);
            }
            Ok(Box::new(SealingWriter {
                inner: Some(inner),
                sealer,
                hasher: Sha256::default(),
                pending: BytesMut::with_capacity(CHUNK),
                out: Vec::new(),
                size: 0,
            }) as Box<dyn ObjectWriter>)
        }
        .boxed()
    }

    fn stat(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<ObjectMeta, StorageError>> {
        let key = key.clone();
        let tenant = tenant.to_owned();
        async move {
            let (_, meta, stored) = self.open_meta(&tenant, &key).await?;
            Ok(plain_meta(&meta, stored))
        }
        .boxed()
    }

    fn open(
        &self,
        tenant: &str,
        key: &ObjectKey,
        range: RangeRequest,
    ) -> BoxFuture<'_, Result<ObjectRead, StorageError>> {
        let key = key.clone();
        let tenant = tenant.to_owned();
        async move {
            let (opener, meta, stored) = self.open_meta(&tenant, &key).await?;
            let range = range.resolve(meta.size).map_err(|u| StorageError::RangeNotSatisfiable { size: u.size })?;
            let final_chunk = sealed::chunk_count(meta.size) - 1;
            let (first, last) = if range.is_empty() {
                (0, 0) // an empty object: still authenticate its one (empty, final) chunk
            } else {
                (range.start / CHUNK as u64, (range.end - 1) / CHUNK as u64)
            };
            let from = HEADER_LEN as u64 + first * (CHUNK + TAG) as u64;
            let to = (HEADER_LEN as u64 + (last + 1) * (CHUNK + TAG) as u64).min(stored.size - META_LEN as u64);
            let inner = self.inner.open(&tenant, &key, RangeRequest::Inclusive(from, to.saturating_sub(1))).await?;
            let mut state = Unsealer { opener, range, next: first, final_chunk, buf: BytesMut::new() };
            // Authenticate the first chunk before anything is sent (a tampered object fails
            // before a status line goes out).
            let mut body = inner.body;
            let mut ready = Bytes::new();
            let mut ended = false;
            while state.next == first && !ended {
                match body.next().await {
                    Some(chunk) => state.buf.extend_from_slice(&chunk?),
                    None => ended = true,
                }
                ready = state.drain(ended)?;
            }
            let rest = futures_util::stream::try_unfold(
                (body, state, ended),
                move |(mut body, mut state, ended)| async move {
                    if ended {
                        return Ok(None);
                    }
                    loop {
                        match body.next().await {
                            Some(chunk) => {
                                state.buf.extend_from_slice(&chunk?);
                                let out = state.drain(false)?;
                                if !out.is_empty() {
                                    return Ok(Some((out, (body, state, false))));
                                }
                            }
                            None => {
                                let out = state.drain(true)?;
                                if state.next <= state.final_chunk.min(last) {
                                    return Err(StorageError::Integrity("object ended early".into()));
                                }
                                return Ok(Some((out, (body, state, true))));
                            }
                        }
                    }
                },
            );
            let first = (!ready.is_empty()).then_some(Ok::<Bytes, StorageError>(ready));
            let rest = rest.filter(|r: &Result<Bytes, StorageError>| {
                std::future::ready(r.as_ref().map_or(true, |b| !b.is_empty()))
            });
            let body = futures_util::stream::iter(first).chain(rest);
            Ok(ObjectRead { meta: plain_meta(&meta, stored), range, body: Box::pin(body) })
        }
        .boxed()
    }

    fn delete(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner.delete(tenant, key)
    }

    fn ready<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        self.inner.ready(tenant)
    }

    fn head(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<ListEntry, StorageError>> {
        let inner = self.inner.head(tenant, key);
        async move {
            let mut entry = inner.await?;
            entry.size = sealed::plaintext_len(entry.size).unwrap_or(0);
            Ok(entry)
        }
        .boxed()
    }

    fn mkdir(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner.mkdir(tenant, key)
    }

    fn rmdir(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner.rmdir(tenant, key)
    }

    fn rename<'a>(
        &'a self,
        tenant: &'a str,
        from: &'a ObjectKey,
        to: &'a ObjectKey,
        replace: bool,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        self.inner.rename(tenant, from, to, replace)
    }

    fn list<'a>(
        &'a self,
        tenant: &'a str,
        prefix: &'a ObjectKey,
        after: Option<&'a ListCursor>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ListPage, StorageError>> {
        let inner = self.inner.list(tenant, prefix, after, limit);
        async move {
            let mut page = inner.await?;
            for e in &mut page.entries {
                if e.kind == super::EntryKind::File {
                    e.size = sealed::plaintext_len(e.size).unwrap_or(0);
                }
            }
            Ok(page)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use futures_util::TryStreamExt;

    use super::*;
    use crate::storage::EntryKind;

    /// Bytes in a map: just enough of a store to exercise the sealing layer on its own (the
    /// end-to-end tests run it over Garage).
    #[derive(Default)]
    struct Memory(Arc<Mutex<BTreeMap<String, Vec<u8>>>>);

    struct MemWriter(Arc<Mutex<BTreeMap<String, Vec<u8>>>>, String, Vec<u8>);

    impl ObjectWriter for MemWriter {
        fn write(&mut self, data: Bytes) -> BoxFuture<'_, Result<(), StorageError>> {
            self.2.extend_from_slice(&data);
            async { Ok(()) }.boxed()
        }
        fn commit(self: Box<Self>, _: Option<[u8; 32]>) -> BoxFuture<'static, Result<ObjectMeta, StorageError>> {
            let size = self.2.len() as u64;
            self.0.lock().unwrap().insert(self.1.clone(), self.2);
            async move { Ok(ObjectMeta { size, sha256: None, modified: UNIX_EPOCH, location: None }) }.boxed()
        }
        fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
            async {}.boxed()
        }
    }

    impl ObjectStore for Memory {
        fn begin_put(
            &self,
            _: &str,
            key: &ObjectKey,
            _: Option<u64>,
        ) -> BoxFuture<'_, Result<Box<dyn ObjectWriter>, StorageError>> {
            let w = MemWriter(self.0.clone(), key.as_str().to_owned(), Vec::new());
            async move { Ok(Box::new(w) as Box<dyn ObjectWriter>) }.boxed()
        }
        fn stat(&self, _: &str, key: &ObjectKey) -> BoxFuture<'_, Result<ObjectMeta, StorageError>> {
            let size = self.0.lock().unwrap().get(key.as_str()).map(|v| v.len() as u64);
            async move {
                Ok(ObjectMeta {
                    size: size.ok_or(StorageError::NotFound)?,
                    sha256: None,
                    modified: UNIX_EPOCH,
                    location: None,
                })
            }
            .boxed()
        }
        fn open(
            &self,
            _: &str,
            key: &ObjectKey,
            range: RangeRequest,
        ) -> BoxFuture<'_, Result<ObjectRead, StorageError>> {
            let data = self.0.lock().unwrap().get(key.as_str()).cloned();
            async move {
                let data = data.ok_or(StorageError::NotFound)?;
                let range =
                    range.resolve(data.len() as u64).map_err(|u| StorageError::RangeNotSatisfiable { size: u.size })?;
                let slice = Bytes::copy_from_slice(&data[range.start as usize..range.end as usize]);
                // Hand the bytes out in odd pieces, as a network would.
                let pieces: Vec<Result<Bytes, StorageError>> =
                    slice.chunks(7919).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
                let meta = ObjectMeta { size: data.len() as u64, sha256: None, modified: UNIX_EPOCH, location: None };
                Ok(ObjectRead { meta, range, body: Box::pin(futures_util::stream::iter(pieces)) })
            }
            .boxed()
        }
        fn delete(&self, _: &str, _: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>> {
            async { Ok(()) }.boxed()
        }
        fn head(&self, _: &str, key: &ObjectKey) -> BoxFuture<'_, Result<ListEntry, StorageError>> {
            let size = self.0.lock().unwrap().get(key.as_str()).map(|v| v.len() as u64).unwrap_or(0);
            let name = key.file_name().to_owned();
            async move { Ok(ListEntry { name, kind: EntryKind::File, size, modified: UNIX_EPOCH }) }.boxed()
        }
        fn mkdir(&self, _: &str, _: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>> {
            async { Ok(()) }.boxed()
        }
        fn rmdir(&self, _: &str, _: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>> {
            async { Ok(()) }.boxed()
        }
        fn rename<'a>(
            &'a self,
            _: &'a str,
            _: &'a ObjectKey,
            _: &'a ObjectKey,
            _: bool,
        ) -> BoxFuture<'a, Result<(), StorageError>> {
            async { Ok(()) }.boxed()
        }
        fn list<'a>(
            &'a self,
            _: &'a str,
            _: &'a ObjectKey,
            _: Option<&'a ListCursor>,
            _: usize,
        ) -> BoxFuture<'a, Result<ListPage, StorageError>> {
            async { Ok(ListPage::default()) }.boxed()
        }
    }

    fn ring() -> Arc<SharedKeyring> {
        SharedKeyring::new(crate::keyring::TenantKeyring::single(crate::secrets::TenantKey::generate().unwrap()))
    }

    async fn read(store: &SealingStore, name: &str, range: RangeRequest) -> Result<Vec<u8>, StorageError> {
        let r = store.open("t", &ObjectKey::home(name).unwrap(), range).await?;
        let parts: Vec<Bytes> = r.body.try_collect().await?;
        Ok(parts.concat())
    }

    #[tokio::test]
    async fn round_trips_ranges_and_sizes_through_the_streaming_layout() {
        let mem = Arc::new(Memory::default());
        let store = SealingStore::new(mem.clone(), ring());
        for size in [0usize, 1, CHUNK - 1, CHUNK, CHUNK + 1, 17 * CHUNK + 5, 40 * CHUNK] {
            let data: Vec<u8> = (0..size).map(|i| (i * 13 % 251) as u8).collect();
            let name = format!("f{size}");
            let key = ObjectKey::home(&name).unwrap();
            let mut w = store.begin_put("t", &key, None).await.unwrap();
            for piece in data.chunks(10_007) {
                w.write(Bytes::copy_from_slice(piece)).await.unwrap();
            }
            let meta = w.commit(Some(crate::digest::sha256(&data))).await.unwrap();
            assert_eq!((meta.size, meta.sha256), (size as u64, Some(crate::digest::sha256(&data))));
            let stored = mem.0.lock().unwrap().get(key.as_str()).cloned().unwrap();
            assert_eq!(stored.len() as u64, sealed::sealed_len(size as u64));
            assert_eq!(&stored[..8], sealed::MAGIC_TRAILER_KEYED);
            assert_eq!(read(&store, &name, RangeRequest::All).await.unwrap(), data, "{size}");
            assert_eq!(store.head("t", &key).await.unwrap().size, size as u64);
            assert_eq!(store.stat("t", &key).await.unwrap().sha256, Some(crate::digest::sha256(&data)));
            if size > 2 {
                let (a, b) = (size as u64 / 3, 2 * size as u64 / 3);
                assert_eq!(
                    read(&store, &name, RangeRequest::Inclusive(a, b)).await.unwrap(),
                    &data[a as usize..=b as usize]
                );
                assert_eq!(read(&store, &name, RangeRequest::Suffix(1)).await.unwrap(), &data[size - 1..]);
            }
        }
    }

    #[tokio::test]
    async fn tampering_truncation_and_wrong_keys_fail_and_a_bad_digest_stores_nothing() {
        let mem = Arc::new(Memory::default());
        let store = SealingStore::new(mem.clone(), ring());
        let data = vec![9u8; 3 * CHUNK + 10];
        let key = ObjectKey::home("x").unwrap();
        let mut w = store.begin_put("t", &key, None).await.unwrap();
        w.write(Bytes::from(data.clone())).await.unwrap();
        w.commit(None).await.unwrap();
        let good = mem.0.lock().unwrap().get("x").cloned().unwrap();
        for pos in [3, 20, HEADER_LEN + 5, HEADER_LEN + CHUNK + TAG + 1, good.len() - 40, good.len() - 1] {
            let mut bad = good.clone();
            bad[pos] ^= 1;
            mem.0.lock().unwrap().insert("x".into(), bad);
            let got = read(&store, "x", RangeRequest::All).await;
            assert!(matches!(got, Err(StorageError::Integrity(_))), "flip at {pos}: {got:?}");
        }
        // Drop a whole chunk: the length no longer matches the sealed size.
        let mut cut = good.clone();
        cut.drain(HEADER_LEN..HEADER_LEN + CHUNK + TAG);
        mem.0.lock().unwrap().insert("x".into(), cut);
        assert!(matches!(read(&store, "x", RangeRequest::All).await, Err(StorageError::Integrity(_))));
        mem.0.lock().unwrap().insert("x".into(), good);
        let other = SealingStore::new(mem.clone(), ring());
        assert!(matches!(read(&other, "x", RangeRequest::All).await, Err(StorageError::Integrity(_))));
        let y = ObjectKey::home("y").unwrap();
        let mut w = store.begin_put("t", &y, None).await.unwrap();
        w.write(Bytes::from_static(b"abc")).await.unwrap();
        assert!(matches!(w.commit(Some([0; 32])).await, Err(StorageError::DigestMismatch)));
        assert!(mem.0.lock().unwrap().get("y").is_none());
    }

    #[tokio::test]
    async fn rotated_keys_seal_new_objects_and_older_ones_stay_readable() {
        use crate::keyring::{KeyId, TenantKeyring};
        let mem = Arc::new(Memory::default());
        let base = crate::secrets::TenantKey::generate().unwrap();
        let shared = SharedKeyring::new(TenantKeyring::single(base.clone()));
        let store = SealingStore::new(mem.clone(), shared.clone());
        let put = |name: &'static str, data: Vec<u8>| {
            let store = &store;
            async move {
                let mut w = store.begin_put("t", &ObjectKey::home(name).unwrap(), None).await.unwrap();
                w.write(Bytes::from(data)).await.unwrap();
                w.commit(None).await.unwrap();
            }
        };
        let id_of = |name: &str| {
            let stored = mem.0.lock().unwrap().get(name).cloned().unwrap();
            sealed::header_key_id(stored[..HEADER_LEN].try_into().unwrap(), sealed::Layout::Trailer).unwrap()
        };
        // An object from before key ids (GWSEAL02, the base key).
        let legacy = vec![5u8; CHUNK + 3];
        let mut s = Sealer::legacy(&base, sealed::Layout::Trailer).unwrap();
        let mut out = s.header().to_vec();
        s.seal_chunk(&legacy[..CHUNK], false, &mut out).unwrap();
        s.seal_chunk(&legacy[CHUNK..], true, &mut out).unwrap();
        let meta = SealedMeta { size: legacy.len() as u64, sha256: crate::digest::sha256(&legacy), modified: 1 };
        out.extend_from_slice(&s.seal_meta(&meta).unwrap());
        mem.0.lock().unwrap().insert("legacy".into(), out);
        assert_eq!(id_of("legacy"), None);
        put("old", b"old".to_vec()).await;
        assert_eq!(id_of("old"), Some(KeyId::of(&base)));
        let ring = TenantKeyring::single(base).with_newer(crate::secrets::TenantKey::generate().unwrap());
        shared.replace(ring.clone());
        put("new", b"new".to_vec()).await;
        assert_eq!(id_of("new"), Some(ring.newest().id));
        assert_eq!(read(&store, "legacy", RangeRequest::All).await.unwrap(), legacy);
        assert_eq!(read(&store, "old", RangeRequest::All).await.unwrap(), b"old");
        assert_eq!(read(&store, "new", RangeRequest::All).await.unwrap(), b"new");
        // Without the newest key the new object is a clear error naming its key id.
        shared.replace(TenantKeyring::single(crate::secrets::TenantKey::generate().unwrap()));
        match read(&store, "new", RangeRequest::All).await {
            Err(StorageError::Integrity(e)) => assert!(e.contains(&ring.newest().id.to_string()), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
