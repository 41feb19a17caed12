//! Uploads in progress, so that `stat` of a file being written answers as a regular file with
//! the bytes received so far (sshfs creates a file and looks it up before writing; SFTPGo's
//! issue #2010 is the same bug). The stored object still appears only at close: this is
//! metadata about an unfinished upload, never its data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// One upload's progress, updated by the task writing it.
#[derive(Debug)]
pub struct UploadState {
    bytes: AtomicU64,
    started: SystemTime,
}

impl UploadState {
    /// Record that `bytes` have been received in order.
    pub fn set_bytes(&self, bytes: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
    }
}

type Key = (String, String);

/// Every SFTP upload in progress, by tenant and object key.
#[derive(Debug, Default)]
pub struct UploadsInProgress {
    map: Mutex<HashMap<Key, Vec<Arc<UploadState>>>>,
}

/// Keeps an upload listed until dropped.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<UploadsInProgress>,
    key: Key,
    /// The upload's progress.
    pub state: Arc<UploadState>,
}

impl UploadsInProgress {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Arc<UploadState>>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// List an upload of `key` in `tenant` until the registration is dropped.
    pub fn register(self: &Arc<Self>, tenant: &str, key: &str) -> Registration {
        let state = Arc::new(UploadState { bytes: AtomicU64::new(0), started: SystemTime::now() });
        let key = (tenant.to_owned(), key.to_owned());
        self.lock().entry(key.clone()).or_default().push(state.clone());
        Registration { registry: self.clone(), key, state }
    }

    /// Bytes received so far and start time of the newest upload of `key`, if any.
    pub fn lookup(&self, tenant: &str, key: &str) -> Option<(u64, SystemTime)> {
        let map = self.lock();
        let newest = map.get(&(tenant.to_owned(), key.to_owned()))?.last()?;
        Some((newest.bytes.load(Ordering::Relaxed), newest.started))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.registry.lock();
        if let Some(list) = map.get_mut(&self.key) {
            list.retain(|s| !Arc::ptr_eq(s, &self.state));
            if list.is_empty() {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_upload_answers_and_entries_leave_with_their_registration() {
        let reg = Arc::new(UploadsInProgress::default());
        assert!(reg.lookup("acme", "in/a").is_none());
        let first = reg.register("acme", "in/a");
        first.state.set_bytes(10);
        assert_eq!(reg.lookup("acme", "in/a").unwrap().0, 10);
        assert!(reg.lookup("globex", "in/a").is_none(), "tenants are separate");
        let second = reg.register("acme", "in/a");
        second.state.set_bytes(3);
        assert_eq!(reg.lookup("acme", "in/a").unwrap().0, 3);
        drop(second);
        assert_eq!(reg.lookup("acme", "in/a").unwrap().0, 10);
        drop(first);
        assert!(reg.lookup("acme", "in/a").is_none());
        assert!(reg.lock().is_empty());
    }
}
