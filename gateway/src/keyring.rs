//! A tenant's storage keys: the configured key file and the keys rotated in after it.
//!
//! Layout: the tenant's `key_file` (say `keys/acme.key`) is generation 0 and stays valid on
//! its own; `gateway keys rotate` adds `keys/acme.key.1`, `keys/acme.key.2`, … beside it (each
//! a 0600 file of 64 hex characters, written under a temporary name and renamed into place,
//! so a reader never sees half a key). The highest generation is the *newest* key: new
//! objects are sealed with it. Every key has an id ([`KeyId`], derived from the key with
//! HMAC-SHA256, so it names the key without revealing anything about it) that sealed objects
//! carry in their header; objects written before key ids existed carry none and were sealed
//! with generation 0.
//!
//! The running gateway holds each tenant's ring in a [`SharedKeyring`], which the reloader
//! replaces when the files change (see `reload.rs`), so a rotation needs no restart.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::secrets::{SecretError, TenantKey};

/// Names a storage key without revealing it: the first 8 bytes of
/// HMAC-SHA256(key, "gateway storage key id v1").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of `key`.
    pub fn of(key: &TenantKey) -> KeyId {
        KeyId::of_bytes(key.expose())
    }

    /// The id of raw key material (an SSE-C key).
    pub fn of_bytes(key: &[u8]) -> KeyId {
        let mac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
        let tag = aws_lc_rs::hmac::sign(&mac_key, b"gateway storage key id v1");
        let mut id = [0u8; 8];
        id.copy_from_slice(tag.as_ref().get(..8).unwrap_or(&[0u8; 8]));
        KeyId(id)
    }

    /// Parse the 16 hex characters [`fmt::Display`] prints.
    pub fn parse(text: &str) -> Option<KeyId> {
        let mut id = [0u8; 8];
        hex::decode_to_slice(text, &mut id).ok()?;
        Some(KeyId(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// One key of a ring.
#[derive(Clone)]
pub struct RingKey {
    /// 0 for the key file itself, `n` for `<key_file>.<n>`.
    pub generation: u32,
    /// Its id.
    pub id: KeyId,
    /// The file it came from (empty for keys made in memory).
    pub path: PathBuf,
    key: TenantKey,
}

impl fmt::Debug for RingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingKey").field("generation", &self.generation).field("id", &self.id).finish()
    }
}

/// A tenant's keys: the key file and those rotated in after it, oldest first.
#[derive(Clone, Debug)]
pub struct TenantKeyring {
    base: RingKey,
    rotated: Vec<RingKey>,
}

/// The rotated key files beside `key_file` (`<key_file>.<n>`): `(generation, path)`, ascending.
pub fn rotated_files(key_file: &Path) -> Result<Vec<(u32, PathBuf)>, SecretError> {
    let dir = match key_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(base) = key_file.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{base}.");
    let entries = std::fs::read_dir(&dir).map_err(|source| SecretError::Io { path: dir.clone(), source })?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SecretError::Io { path: dir.clone(), source })?;
        let name = entry.file_name();
        let Some(suffix) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(generation) = suffix.parse::<u32>() else { continue };
        if generation == 0 {
            continue;
        }
        found.push((generation, entry.path()));
    }
    found.sort();
    Ok(found)
}

impl TenantKeyring {
    /// A ring of one key (generation 0), made in memory.
    pub fn single(key: TenantKey) -> TenantKeyring {
        TenantKeyring {
            base: RingKey { generation: 0, id: KeyId::of(&key), path: PathBuf::new(), key },
            rotated: Vec::new(),
        }
    }

    /// This ring with `key` added as the newest (in memory; for tests and tools).
    pub fn with_newer(mut self, key: TenantKey) -> TenantKeyring {
        let generation = self.newest().generation + 1;
        self.rotated.push(RingKey { generation, id: KeyId::of(&key), path: PathBuf::new(), key });
        self
    }

    /// Load `key_file` and every `<key_file>.<n>` beside it (each 0600, 64 hex characters).
    /// Two files holding the same key are refused (an id must name one key).
    pub fn load(key_file: &Path) -> Result<TenantKeyring, SecretError> {
        let base = TenantKey::load(key_file)?;
        let mut ring = TenantKeyring {
            base: RingKey { generation: 0, id: KeyId::of(&base), path: key_file.to_owned(), key: base },
            rotated: Vec::new(),
        };
        for (generation, path) in rotated_files(key_file)? {
            let key = TenantKey::load(&path)?;
            let id = KeyId::of(&key);
            if let Some(same) = ring.keys().find(|k| k.id == id) {
                return Err(SecretError::Malformed {
                    path,
                    what: format!("holds the same key as {} (key id {id})", same.path.display()),
                });
            }
            ring.rotated.push(RingKey { generation, id, path, key });
        }
        Ok(ring)
    }

    /// Add a fresh key as `<key_file>.<n+1>` (n the highest generation now present) and
    /// return it. The key is written to a temporary name and renamed into place, so a
    /// gateway looking at the directory sees either no new file or the whole key.
    pub fn rotate(key_file: &Path) -> Result<RingKey, SecretError> {
        let ring = TenantKeyring::load(key_file)?;
        let generation = ring.newest().generation + 1;
        let key = TenantKey::generate()?;
        let mut name = key_file.as_os_str().to_owned();
        name.push(format!(".{generation}"));
        let path = PathBuf::from(name);
        let mut tmp_name = key_file.as_os_str().to_owned();
        tmp_name.push(format!(".{generation}.tmp"));
        let tmp = PathBuf::from(tmp_name);
        key.save(&tmp)?;
        // Owned like the key file, so a gateway running as another user than this command
        // (say, the command as root) can read it.
        let owner =
            std::fs::metadata(key_file).map_err(|source| SecretError::Io { path: key_file.to_owned(), source })?;
        let mine = std::fs::metadata(&tmp).map_err(|source| SecretError::Io { path: tmp.clone(), source })?;
        if (owner.uid(), owner.gid()) != (mine.uid(), mine.gid()) {
            if let Err(source) = std::os::unix::fs::chown(&tmp, Some(owner.uid()), Some(owner.gid())) {
                let _ = std::fs::remove_file(&tmp);
                return Err(SecretError::Io { path: tmp, source });
            }
        }
        // link(2) never replaces: a rotation racing this one cannot lose either key.
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(SecretError::Malformed { path, what: "already exists; not overwritten (run again)".into() })
            }
            Err(source) => return Err(SecretError::Io { path, source }),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| SecretError::Io { path: dir.to_owned(), source })?;
        }
        Ok(RingKey { generation, id: KeyId::of(&key), path, key })
    }

    /// The key file itself (generation 0): the key of objects that carry no key id, and the
    /// root of keys derived for other purposes (listing cursors, fingerprints), which stay
    /// the same across rotations.
    pub fn base(&self) -> &TenantKey {
        &self.base.key
    }

    /// The newest key: new objects are sealed with it.
    pub fn newest(&self) -> &RingKey {
        self.rotated.last().unwrap_or(&self.base)
    }

    /// The key with this id.
    pub fn get(&self, id: &KeyId) -> Option<&TenantKey> {
        self.keys().find(|k| k.id == *id).map(|k| &k.key)
    }

    /// Every key, oldest first.
    pub fn keys(&self) -> impl Iterator<Item = &RingKey> {
        std::iter::once(&self.base).chain(&self.rotated)
    }

    /// Every key id, oldest first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys().map(|k| k.id).collect()
    }
}

impl RingKey {
    /// The key itself, for the storage cipher.
    pub fn key(&self) -> &TenantKey {
        &self.key
    }
}

/// A tenant's ring as the running gateway holds it: replaced whole by the reloader, read by
/// every object open and every new upload (which keep the ring they started with).
#[derive(Debug)]
pub struct SharedKeyring(RwLock<Arc<TenantKeyring>>);

impl SharedKeyring {
    /// Hold `ring`.
    pub fn new(ring: TenantKeyring) -> Arc<SharedKeyring> {
        Arc::new(SharedKeyring(RwLock::new(Arc::new(ring))))
    }

    /// The ring in force.
    pub fn current(&self) -> Arc<TenantKeyring> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Put `ring` in force.
    pub fn replace(&self, ring: TenantKeyring) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(ring);
    }
}

/// How often the key files are looked at (new rotated keys are renamed into place whole, so
/// one look suffices and no SIGHUP is needed).
pub const CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// One tenant's ring as the reloader watches it.
struct Watched {
    tenant: String,
    key_file: PathBuf,
    ring: Arc<SharedKeyring>,
    /// The last refusal reported, so a broken file is reported once, not every look.
    refused: Option<String>,
}

/// Looks at every tenant's key files every [`CHECK_INTERVAL`] and puts a changed ring in
/// force (a `gateway keys rotate` shows up within one interval, without a restart). A ring
/// that does not load (a loosened or malformed file) is refused, reported once and audited;
/// the ring in force stays. Every change is audited as `storage_key_reload` with the key ids
/// now in force.
pub struct KeyringReloader {
    watched: Vec<Watched>,
    /// SSE-C tenants: their key files and stores, and the last refusal reported.
    customer: Vec<(crate::storage::router::CustomerKeyWatch, Option<String>)>,
    audit: crate::audit::AuditLog,
    /// Refused key files raise `storage_key_refused` here.
    alerts: crate::alerts::Alerts,
}

/// The alert for a tenant's key files refused at reload (reported once per distinct error).
fn refused_alert(tenant: &str, file: &Path, kind: &str, error: &str) -> crate::alerts::Alert {
    crate::alerts::Alert {
        severity: crate::alerts::Severity::Warning,
        kind: "storage_key_refused",
        nature: format!("the {kind} keys of tenant {tenant} changed on disk and were refused: {error}"),
        scope: crate::alerts::Scope { files: vec![file.display().to_string()], count: 1, ..Default::default() },
        actions_taken: vec![
            "the keys in force stay: new objects are still sealed with the previous newest key".into(),
            "the attempt is in the audit trail with the error".into(),
        ],
        remediation: vec![
            "check who or what changed these files; if it was not a planned rotation, treat it as tampering".into(),
            "for a planned rotation, fix the file (32 bytes hex, mode 0600, no duplicate key) or rerun `gateway keys rotate`".into(),
        ],
        next_steps: vec![
            "`gateway keys` on the tenant shows the key ids; compare them with the audit trail's storage_key_reload records".into(),
        ],
    }
}

impl fmt::Debug for KeyringReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyringReloader").field("tenants", &self.watched.len()).finish()
    }
}

impl KeyringReloader {
    /// Watch `(tenant, key_file, ring in force)` for each tenant.
    pub fn new(tenants: Vec<(String, PathBuf, Arc<SharedKeyring>)>, audit: crate::audit::AuditLog) -> Self {
        let watched = tenants
            .into_iter()
            .map(|(tenant, key_file, ring)| Watched { tenant, key_file, ring, refused: None })
            .collect();
        KeyringReloader { watched, customer: Vec::new(), audit, alerts: crate::alerts::Alerts::disabled() }
    }

    /// Raise an alert for each refused set of key files.
    pub fn with_alerts(mut self, alerts: crate::alerts::Alerts) -> Self {
        self.alerts = alerts;
        self
    }

    /// Also watch these SSE-C tenants' key files: a changed set of SSE-C keys goes into a new
    /// store for the tenant (new requests use it; uploads in progress finish with theirs),
    /// audited as `sse_c_key_reload`.
    pub fn with_customer_keys(mut self, watches: Vec<crate::storage::router::CustomerKeyWatch>) -> Self {
        self.customer = watches.into_iter().map(|w| (w, None)).collect();
        self
    }

    /// Look at the SSE-C key files once; returns how many stores were replaced.
    async fn check_customer_keys(&mut self) -> usize {
        let mut replaced = 0;
        for (w, refused) in &mut self.customer {
            let Some(ring) = self.watched.iter().find(|t| t.tenant == w.tenant).map(|t| t.ring.current()) else {
                continue;
            };
            let current = w.store.store();
            let before = current.customer_key_ids();
            let loaded = crate::storage::router::customer_keys(&w.key_file, ring.base());
            let (result, error, ids) = match loaded {
                Ok((newest, older)) => {
                    let ids: Vec<String> = std::iter::once(&newest)
                        .chain(&older)
                        .filter_map(|k| match k {
                            crate::storage::s3::Sse::C { id, .. } => Some(id.clone()),
                            _ => None,
                        })
                        .rev()
                        .collect();
                    if ids == before {
                        *refused = None;
                        continue;
                    }
                    match current.with_keys(newest, older, ring.base()) {
                        Ok(store) => {
                            tracing::info!(
                                tenant = %w.tenant,
                                key_file = %w.key_file.display(),
                                key_ids = ?ids,
                                "SSE-C keys reloaded; new objects are written with the newest"
                            );
                            w.store.replace(store);
                            *refused = None;
                            replaced += 1;
                            ("ok", None, ids)
                        }
                        Err(e) => ("error", Some(e.to_string()), before),
                    }
                }
                Err(e) => ("error", Some(e), before),
            };
            if let Some(text) = &error {
                if refused.as_deref() == Some(text.as_str()) {
                    continue;
                }
                tracing::error!(tenant = %w.tenant, error = %text, "SSE-C keys refused; the keys in force stay");
                *refused = Some(text.clone());
                self.alerts.raise(refused_alert(&w.tenant, &w.key_file, "SSE-C", text));
            }
            let entry = crate::audit::AuditEntry {
                operation: Some("sse_c_key_reload".into()),
                tenant: Some(w.tenant.clone()),
                path: Some(w.key_file.display().to_string()),
                result: Some(result.into()),
                error,
                key_ids: Some(ids),
                ..crate::audit::AuditEntry::new(crate::audit::AuditEvent::Operation)
            };
            if let Err(e) = self.audit.append(entry, true).await {
                tracing::error!(error = %e, "SSE-C key reload could not be audited");
            }
        }
        replaced
    }

    /// Look at every tenant's key files once; returns how many rings were replaced.
    pub async fn check(&mut self) -> usize {
        let mut replaced = 0;
        for w in &mut self.watched {
            let path = w.key_file.clone();
            let loaded = tokio::task::spawn_blocking(move || TenantKeyring::load(&path)).await;
            let loaded = match loaded {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "storage key check failed");
                    continue;
                }
            };
            let before = w.ring.current();
            let (entry_result, error, ids) = match loaded {
                Ok(ring) if ring.ids() == before.ids() => {
                    w.refused = None;
                    continue;
                }
                Ok(ring) => {
                    let ids: Vec<String> = ring.ids().iter().map(ToString::to_string).collect();
                    let removed: Vec<String> =
                        before.ids().iter().filter(|id| ring.get(id).is_none()).map(ToString::to_string).collect();
                    tracing::info!(
                        tenant = %w.tenant,
                        key_file = %w.key_file.display(),
                        newest = %ring.newest().id,
                        generation = ring.newest().generation,
                        key_ids = ?ids,
                        ?removed,
                        "storage keys reloaded; new objects are sealed with the newest key"
                    );
                    w.ring.replace(ring);
                    w.refused = None;
                    replaced += 1;
                    ("ok", None, ids)
                }
                Err(e) => {
                    let text = e.to_string();
                    if w.refused.as_deref() == Some(text.as_str()) {
                        continue;
                    }
                    tracing::error!(tenant = %w.tenant, error = %text, "storage keys refused; the keys in force stay");
                    w.refused = Some(text.clone());
                    self.alerts.raise(refused_alert(&w.tenant, &w.key_file, "storage", &text));
                    ("error", Some(text), before.ids().iter().map(ToString::to_string).collect())
                }
            };
            let entry = crate::audit::AuditEntry {
                operation: Some("storage_key_reload".into()),
                tenant: Some(w.tenant.clone()),
                path: Some(w.key_file.display().to_string()),
                result: Some(entry_result.into()),
                error,
                key_ids: Some(ids),
                ..crate::audit::AuditEntry::new(crate::audit::AuditEvent::Operation)
            };
            if let Err(e) = self.audit.append(entry, true).await {
                tracing::error!(error = %e, "storage key reload could not be audited");
            }
        }
        replaced
    }

    /// Check every [`CHECK_INTERVAL`] until `stop` resolves.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {}
            }
            self.check().await;
            self.check_customer_keys().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn load_rotate_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("acme.key");
        let base = TenantKey::generate().unwrap();
        base.save(&file).unwrap();
        let ring = TenantKeyring::load(&file).unwrap();
        assert_eq!(ring.keys().count(), 1);
        assert_eq!(ring.newest().id, KeyId::of(&base));
        let r1 = TenantKeyring::rotate(&file).unwrap();
        let r2 = TenantKeyring::rotate(&file).unwrap();
        assert_eq!((r1.generation, r2.generation), (1, 2));
        assert_eq!(r2.path, dir.path().join("acme.key.2"));
        assert_ne!(r1.id, r2.id);
        let ring = TenantKeyring::load(&file).unwrap();
        assert_eq!(ring.ids(), vec![KeyId::of(&base), r1.id, r2.id]);
        assert_eq!(ring.newest().id, r2.id);
        assert_eq!(ring.base().expose(), base.expose());
        assert_eq!(ring.get(&r1.id).unwrap().expose(), r1.key().expose());
        assert!(ring.get(&KeyId([0; 8])).is_none());
        // No temporary file is left behind; an unrelated name is ignored.
        std::fs::write(dir.path().join("acme.key.bak"), "x").unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
        // The id is stable, printable and parses back; nothing of the key shows.
        assert_eq!(KeyId::parse(&r1.id.to_string()), Some(r1.id));
        assert!(!format!("{ring:?}").contains(&hex::encode(r1.key().expose())));
        // A loosened rotated key refuses the whole ring, naming the file.
        std::fs::set_permissions(&r1.path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = TenantKeyring::load(&file).unwrap_err().to_string();
        assert!(err.contains("acme.key.1") && err.contains("0644"), "{err}");
        std::fs::set_permissions(&r1.path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // The same key twice is refused.
        std::fs::copy(&file, dir.path().join("acme.key.7")).unwrap();
        let err = TenantKeyring::load(&file).unwrap_err().to_string();
        assert!(err.contains("acme.key.7") && err.contains("same key as"), "{err}");
    }
}
