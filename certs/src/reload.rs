//! Hot-swappable server certificate for rotation without restarts.

use std::sync::{Arc, PoisonError, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::load::LoadedCert;

/// Holds the current certificate; swapped at runtime for rotation without dropping connections.
///
/// Existing connections keep the `Arc<CertifiedKey>` they were handshaken
/// with; only new handshakes see a replacement.
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<LoadedCert>,
}

impl ReloadableCert {
    /// Start serving `c`.
    pub fn new(c: LoadedCert) -> Self {
        Self { current: RwLock::new(c) }
    }

    /// Serve `c` for all handshakes from now on.
    pub fn replace(&self, c: LoadedCert) {
        // A poisoned lock only means a writer panicked mid-assignment of a
        // whole value; the inner value is still a complete LoadedCert.
        let mut guard = self.current.write().unwrap_or_else(PoisonError::into_inner);
        *guard = c;
    }

    /// The certificate currently being served (e.g. for expiry monitoring).
    pub fn current(&self) -> LoadedCert {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner).certified))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::{mint, KeyKind};

    #[test]
    fn reloadable_survives_poisoned_lock() {
        let dir = tempfile::tempdir().unwrap();
        let a = mint(dir.path(), KeyKind::EcdsaP256).unwrap();
        let la = crate::load_server_cert(&a.server_cert, &a.server_key).unwrap();
        let r = Arc::new(ReloadableCert::new(la.clone()));
        let r2 = r.clone();
        let _ = std::thread::spawn(move || {
            let _guard = r2.current.write().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(r.current.is_poisoned());
        assert_eq!(r.current().info.subject, "CN=localhost");
        r.replace(la);
    }
}
