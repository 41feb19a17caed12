//! `gateway keys reencrypt` for the local store: re-seal a tenant's objects under the newest
//! key of its ring.
//!
//! Each object not already sealed with the newest key is opened with the key its header
//! names (every block authenticated), sealed again chunk by chunk into a new staging file
//! with the same plaintext size, SHA-256 and times, fsynced, and renamed over the original,
//! then the directory is fsynced: the commit discipline of uploads, so a reader sees the old
//! object or the new one, never a mix. Just before the rename the original is checked to be
//! the very file that was read (same inode, same header, whose salt is random per object);
//! if an upload, delete or rename changed it meanwhile, the new copy is dropped and the
//! object is reported as changed (it is already under the newest key if the running gateway
//! wrote it). A small window remains between that check and the rename, so a rewrite can in
//! rare cases undo a change committed in that instant: run it when uploads are quiet.
//!
//! Staging files are named `reencrypt-*.part`; the gateway removes anything in staging at
//! start, so an interrupted run leaves nothing behind after the next start, and running the
//! command again continues where it stopped (objects already under the newest key are
//! skipped after reading their header).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::local::open_sealed;
use super::sealed::{self, Layout, Sealer, CHUNK, DATA_OFFSET, HEADER_LEN, META_LEN, TAG};
use super::StorageError;
use crate::digest::Sha256;
use crate::keyring::TenantKeyring;
use crate::secrets::random_bytes;

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Already sealed with the newest key; untouched.
    Current,
    /// Sealed again with the newest key; `bytes` of plaintext.
    Rewritten {
        /// Plaintext size.
        bytes: u64,
    },
    /// Changed, moved or removed while it was being rewritten; the original was left alone.
    Changed,
}

/// Every object file of a tenant under the local store's `root`, in name order, with its
/// size on disk. Symlinks and special files are not objects and are skipped.
pub fn tenant_objects(root: &Path, tenant: &str) -> Result<Vec<(PathBuf, u64)>, StorageError> {
    let top = root.join("objects").join(tenant);
    let mut out = Vec::new();
    let mut dirs = vec![top];
    while let Some(dir) = dirs.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(StorageError::Backend(format!("{}: {e}", dir.display()))),
        };
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::Backend(format!("{}: {e}", dir.display())))?;
            let meta = entry.metadata().map_err(|e| StorageError::Backend(format!("{}: {e}", dir.display())))?;
            if meta.is_dir() {
                dirs.push(entry.path());
            } else if meta.is_file() {
                out.push((entry.path(), meta.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn at(path: &Path) -> impl Fn(std::io::Error) -> StorageError + '_ {
    move |e| StorageError::Backend(format!("{}: {e}", path.display()))
}

/// Re-seal the object file at `path` under `ring`'s newest key, using a staging file in
/// `staging` (the store's `staging/` directory).
pub fn reencrypt_file(path: &Path, ring: &TenantKeyring, staging: &Path) -> Result<Outcome, StorageError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Outcome::Changed),
        Err(e) => return Err(at(path)(e)),
    };
    let before = file.metadata().map_err(at(path))?;
    let (opener, meta, header) = open_sealed(&mut file, ring)?;
    if sealed::header_key_id(&header, Layout::MetaFirst).map_err(|e| StorageError::Integrity(e.0))?
        == Some(ring.newest().id)
    {
        return Ok(Outcome::Current);
    }
    let name = hex::encode(random_bytes::<16>().map_err(|e| StorageError::Backend(e.to_string()))?);
    let staged = staging.join(format!("reencrypt-{name}.part"));
    let result = (|| {
        let mut out = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&staged).map_err(at(&staged))?;
        // Owned like the original, so a gateway running as another user than this command
        // (say, the command as root) can still read it.
        let mine = out.metadata().map_err(at(&staged))?;
        if (before.uid(), before.gid()) != (mine.uid(), mine.gid()) {
            std::os::unix::fs::fchown(&out, Some(before.uid()), Some(before.gid())).map_err(|e| {
                StorageError::Backend(format!(
                    "{}: cannot give the new copy the owner of the original ({}:{}): {e}; run as the gateway's user or root",
                    path.display(),
                    before.uid(),
                    before.gid()
                ))
            })?;
        }
        let mut sealer = Sealer::new(ring).map_err(|e| StorageError::Integrity(e.0))?;
        out.write_all(sealer.header()).map_err(at(&staged))?;
        out.write_all(&[0u8; META_LEN]).map_err(at(&staged))?;
        file.seek(SeekFrom::Start(DATA_OFFSET)).map_err(at(path))?;
        let chunks = sealed::chunk_count(meta.size);
        let mut hasher = Sha256::default();
        let mut buf = vec![0u8; CHUNK + TAG];
        let mut sealed_out = Vec::with_capacity(CHUNK + TAG);
        let mut left = meta.size;
        for index in 0..chunks {
            let plain_len = left.min(CHUNK as u64) as usize;
            let data = buf.get_mut(..plain_len + TAG).ok_or(StorageError::Integrity("chunk".into()))?;
            file.read_exact(data).map_err(|e| match e.kind() {
                ErrorKind::UnexpectedEof => StorageError::Integrity("object shrank while being read".into()),
                _ => at(path)(e),
            })?;
            let last = index + 1 == chunks;
            let plain = opener.open_chunk(index, last, data).map_err(|e| StorageError::Integrity(e.0))?;
            hasher.update(plain);
            sealed_out.clear();
            sealer.seal_chunk(plain, last, &mut sealed_out).map_err(|e| StorageError::Integrity(e.0))?;
            out.write_all(&sealed_out).map_err(at(&staged))?;
            left -= plain_len as u64;
        }
        if hasher.finish() != meta.sha256 {
            return Err(StorageError::Integrity("plaintext does not match its sealed SHA-256".into()));
        }
        let block = sealer.seal_meta(&meta).map_err(|e| StorageError::Integrity(e.0))?;
        out.seek(SeekFrom::Start(HEADER_LEN as u64)).map_err(at(&staged))?;
        out.write_all(&block).map_err(at(&staged))?;
        // Keep the time listings show (the file's own mtime), not the time of the rewrite.
        if let Ok(mtime) = before.modified() {
            out.set_modified(mtime).map_err(at(&staged))?;
        }
        out.sync_all().map_err(at(&staged))?;
        drop(out);
        // Is the original still the file we read? (An upload, delete or rename since then
        // replaced or removed it.)
        let same = match File::open(path) {
            Ok(mut now) => {
                let m = now.metadata().map_err(at(path))?;
                let mut head = [0u8; HEADER_LEN];
                m.ino() == before.ino()
                    && m.dev() == before.dev()
                    && m.len() == before.len()
                    && now.read_exact(&mut head).is_ok()
                    && head == header
            }
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return Err(at(path)(e)),
        };
        if !same {
            return Ok(Outcome::Changed);
        }
        fs::rename(&staged, path).map_err(at(path))?;
        if let Some(parent) = path.parent() {
            File::open(parent).and_then(|d| d.sync_all()).map_err(at(parent))?;
        }
        Ok(Outcome::Rewritten { bytes: meta.size })
    })();
    if !matches!(result, Ok(Outcome::Rewritten { .. })) {
        let _ = fs::remove_file(&staged);
    }
    result
}

/// Where a whole-tenant run stands, reported after each object.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Objects looked at so far.
    pub done: usize,
    /// Objects in the tenant.
    pub total: usize,
    /// Stored bytes looked at so far.
    pub bytes_done: u64,
    /// Stored bytes in the tenant.
    pub bytes_total: u64,
    /// Objects sealed again.
    pub rewritten: usize,
    /// Plaintext bytes sealed again.
    pub rewritten_bytes: u64,
    /// Objects already under the newest key.
    pub current: usize,
    /// Objects changed or removed meanwhile (left alone).
    pub changed: usize,
    /// Objects that could not be read or rewritten: (path under the tenant, why).
    pub failed: Vec<(String, String)>,
    /// Staging files an interrupted earlier run left, removed before this one.
    pub stale_removed: usize,
}

/// A staging file of an interrupted run is one not written to for this long (a run in
/// progress writes to its file continuously).
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// Remove `reencrypt-*.part` files in `staging` that nothing has written to for
/// [`STALE_AFTER`] (left by an interrupted run; the gateway's own start removes them too).
fn remove_stale(staging: &Path) -> usize {
    let Ok(entries) = fs::read_dir(staging) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let ours = name.to_str().is_some_and(|n| n.starts_with("reencrypt-") && n.ends_with(".part"));
        let idle = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= STALE_AFTER);
        if ours && idle && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Re-seal every object of `tenant` in the local store at `root` under `ring`'s newest key,
/// calling `report` after each object. One object's failure (a tampered object, an unknown
/// key id) is recorded and the run goes on.
pub fn reencrypt_tenant(
    root: &Path,
    tenant: &str,
    ring: &TenantKeyring,
    mut report: impl FnMut(&Progress),
) -> Result<Progress, StorageError> {
    let staging = root.join("staging");
    if !staging.is_dir() {
        return Err(StorageError::Backend(format!(
            "{}: no staging directory; is storage.root the gateway's store?",
            staging.display()
        )));
    }
    let stale_removed = remove_stale(&staging);
    let objects = tenant_objects(root, tenant)?;
    let top = root.join("objects").join(tenant);
    let mut p = Progress {
        total: objects.len(),
        bytes_total: objects.iter().map(|(_, len)| len).sum(),
        stale_removed,
        ..Progress::default()
    };
    report(&p);
    for (path, len) in objects {
        match reencrypt_file(&path, ring, &staging) {
            Ok(Outcome::Current) => p.current += 1,
            Ok(Outcome::Rewritten { bytes }) => {
                p.rewritten += 1;
                p.rewritten_bytes += bytes;
            }
            Ok(Outcome::Changed) => p.changed += 1,
            Err(e) => {
                let name = path.strip_prefix(&top).unwrap_or(&path).display().to_string();
                p.failed.push((name, e.to_string()));
            }
        }
        p.done += 1;
        p.bytes_done += len;
        report(&p);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bytes::Bytes;
    use futures_util::TryStreamExt;

    use super::*;
    use crate::keyring::{KeyId, SharedKeyring};
    use crate::path::ObjectKey;
    use crate::secrets::TenantKey;
    use crate::storage::local::LocalStore;
    use crate::storage::{ObjectStore, RangeRequest};

    async fn put(store: &LocalStore, name: &str, data: &[u8]) {
        let mut w = store.begin_put("t", &ObjectKey::home(name).unwrap(), None).await.unwrap();
        w.write(Bytes::copy_from_slice(data)).await.unwrap();
        w.commit(None).await.unwrap();
    }

    async fn get(store: &LocalStore, name: &str) -> Result<Vec<u8>, StorageError> {
        let read = store.open("t", &ObjectKey::home(name).unwrap(), RangeRequest::All).await?;
        let back: Vec<Bytes> = read.body.try_collect().await?;
        Ok(back.concat())
    }

    fn key_id_on_disk(path: &Path) -> Option<KeyId> {
        let bytes = fs::read(path).unwrap();
        let header: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
        sealed::header_key_id(&header, Layout::MetaFirst).unwrap()
    }

    /// Write an object the way gateways before key ids did (`GWSEAL01`, base key).
    fn write_legacy(path: &Path, key: &TenantKey, data: &[u8]) {
        let mut s = Sealer::legacy(key, Layout::MetaFirst).unwrap();
        let mut out = s.header().to_vec();
        out.extend_from_slice(&[0u8; META_LEN]);
        let chunks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(CHUNK).collect() };
        for (i, c) in chunks.iter().enumerate() {
            s.seal_chunk(c, i + 1 == chunks.len(), &mut out).unwrap();
        }
        let meta = sealed::SealedMeta { size: data.len() as u64, sha256: crate::digest::sha256(data), modified: 5 };
        out[HEADER_LEN..HEADER_LEN + META_LEN].copy_from_slice(&s.seal_meta(&meta).unwrap());
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, out).unwrap();
    }

    #[tokio::test]
    async fn rotation_keeps_old_objects_readable_and_reencrypt_moves_all_once() {
        let dir = tempfile::tempdir().unwrap();
        let base = TenantKey::generate().unwrap();
        let shared = SharedKeyring::new(TenantKeyring::single(base.clone()));
        let store = LocalStore::open(dir.path(), HashMap::from([("t".to_owned(), shared.clone())])).unwrap();
        let path = |n: &str| dir.path().join("objects/t").join(n);
        let legacy: Vec<u8> = (0..3 * CHUNK + 11).map(|i| (i % 253) as u8).collect();
        write_legacy(&path("sub/legacy"), &base, &legacy);
        put(&store, "a", b"written under the base key").await;
        put(&store, "empty", b"").await;
        assert_eq!(key_id_on_disk(&path("a")), Some(KeyId::of(&base)));

        // Rotate: new writes use the new id, every older object stays readable.
        let ring = TenantKeyring::single(base.clone()).with_newer(TenantKey::generate().unwrap());
        let newest = ring.newest().id;
        shared.replace(ring.clone());
        put(&store, "b", &vec![7u8; CHUNK * 2]).await;
        assert_eq!(key_id_on_disk(&path("b")), Some(newest));
        assert_eq!(get(&store, "sub/legacy").await.unwrap(), legacy);
        assert_eq!(get(&store, "a").await.unwrap(), b"written under the base key");
        assert_eq!(get(&store, "empty").await.unwrap(), b"");
        let mtime_before = fs::metadata(path("a")).unwrap().modified().unwrap();

        // A ring that lacks the new key: a clear error, never data.
        let only_new = TenantKeyring::single(ring.newest().key().clone());
        shared.replace(only_new);
        let err = get(&store, "a").await.unwrap_err().to_string();
        assert!(err.contains(&KeyId::of(&base).to_string()) && err.contains("not in the tenant's keyring"), "{err}");
        shared.replace(ring.clone());

        let staging = dir.path().join("staging");
        let objects = tenant_objects(dir.path(), "t").unwrap();
        assert_eq!(objects.len(), 4);
        let outcomes: Vec<Outcome> = objects.iter().map(|(p, _)| reencrypt_file(p, &ring, &staging).unwrap()).collect();
        let rewritten = outcomes.iter().filter(|o| matches!(o, Outcome::Rewritten { .. })).count();
        assert_eq!(rewritten, 3, "{outcomes:?}");
        assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Current).count(), 1);
        for (p, _) in &objects {
            assert_eq!(key_id_on_disk(p), Some(newest), "{}", p.display());
        }
        assert_eq!(fs::metadata(path("a")).unwrap().modified().unwrap(), mtime_before);
        assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
        // Everything reads back, also with a ring of only the newest key.
        shared.replace(TenantKeyring::single(ring.newest().key().clone()));
        assert_eq!(get(&store, "sub/legacy").await.unwrap(), legacy);
        assert_eq!(get(&store, "a").await.unwrap(), b"written under the base key");
        assert_eq!(get(&store, "b").await.unwrap(), vec![7u8; CHUNK * 2]);
        assert_eq!(get(&store, "empty").await.unwrap(), b"");
        let stat = store.stat("t", &ObjectKey::home("sub/legacy").unwrap()).await.unwrap();
        assert_eq!((stat.size, stat.sha256), (legacy.len() as u64, Some(crate::digest::sha256(&legacy))));
        // Idempotent: a second run rewrites nothing; it removes what an interrupted run left
        // in staging, but not a file another run is writing now.
        let old = staging.join("reencrypt-old.part");
        let fresh = staging.join("reencrypt-fresh.part");
        fs::write(&old, b"x").unwrap();
        fs::write(&fresh, b"x").unwrap();
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - STALE_AFTER * 2)
            .unwrap();
        let again = reencrypt_tenant(dir.path(), "t", &ring, |_| {}).unwrap();
        assert_eq!((again.total, again.current, again.rewritten, again.stale_removed), (4, 4, 0, 1), "{again:?}");
        assert!(!old.exists() && fresh.exists());
    }

    #[tokio::test]
    async fn tampered_objects_are_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let base = TenantKey::generate().unwrap();
        let shared = SharedKeyring::new(TenantKeyring::single(base.clone()));
        let store = LocalStore::open(dir.path(), HashMap::from([("t".to_owned(), shared)])).unwrap();
        put(&store, "x", &vec![3u8; CHUNK + 1]).await;
        let p = dir.path().join("objects/t/x");
        let ring = TenantKeyring::single(base).with_newer(TenantKey::generate().unwrap());
        let staging = dir.path().join("staging");
        for pos in [14, HEADER_LEN + 2, DATA_OFFSET as usize + CHUNK + 3] {
            let good = fs::read(&p).unwrap();
            let mut bad = good.clone();
            bad[pos] ^= 1;
            fs::write(&p, &bad).unwrap();
            let got = reencrypt_file(&p, &ring, &staging);
            assert!(matches!(got, Err(StorageError::Integrity(_))), "flip at {pos}: {got:?}");
            assert_eq!(fs::read(&p).unwrap(), bad, "a failed object is left as it was");
            assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
            fs::write(&p, &good).unwrap();
        }
        assert!(
            matches!(reencrypt_file(&p, &ring, &staging).unwrap(), Outcome::Rewritten { bytes } if bytes == CHUNK as u64 + 1)
        );
    }
}
