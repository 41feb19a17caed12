//! Which backend holds which tenant: the one [`ObjectStore`] the transfer path sees, routing
//! each call by tenant to the local store or that tenant's S3 bucket and prefix.
//!
//! Built at start from `[storage]`, `[[storages]]` and each tenant's placement
//! ([`open_stores`]): one SDK client per `[[storages]]` entry, shared by its tenants; every S3
//! tenant's bucket is probed (write, confirm encryption, delete) and orphaned multipart
//! uploads under its prefix are aborted, so a misconfigured bucket stops the start with a
//! message naming it rather than failing the first transfer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use futures_util::future::BoxFuture;
use gateway_config::{Config, NamedStorage, S3Credentials, StorageBackend, TenantStorage};

use super::local::LocalStore;
use super::s3::{BucketSettings, S3Store, Sse, TenantS3};
use super::sealing::SealingStore;
use super::{
    ListCursor, ListEntry, ListPage, ObjectMeta, ObjectRead, ObjectStore, ObjectWriter, RangeRequest, StorageError,
};
use crate::keyring::SharedKeyring;
use crate::path::ObjectKey;

/// Routes every call to the tenant's backend.
pub struct TenantRouter {
    stores: HashMap<String, Arc<dyn ObjectStore>>,
    /// The local store (shared by every local tenant): its interrupted uploads are the
    /// store's, not a tenant's.
    local: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for TenantRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantRouter").field("tenants", &self.stores.len()).finish()
    }
}

impl TenantRouter {
    fn store(&self, tenant: &str) -> Result<&Arc<dyn ObjectStore>, StorageError> {
        self.stores.get(tenant).ok_or_else(|| StorageError::NoTenantKey(tenant.to_owned()))
    }
}

macro_rules! route {
    ($self:ident, $tenant:expr, |$s:ident| $call:expr) => {
        match $self.store($tenant) {
            Ok($s) => $call,
            Err(e) => Box::pin(async move { Err(e) }),
        }
    };
}

impl ObjectStore for TenantRouter {
    fn begin_put(
        &self,
        tenant: &str,
        key: &ObjectKey,
        size_hint: Option<u64>,
    ) -> BoxFuture<'_, Result<Box<dyn ObjectWriter>, StorageError>> {
        route!(self, tenant, |s| s.begin_put(tenant, key, size_hint))
    }
    fn begin_upload(
        &self,
        tenant: &str,
        key: &ObjectKey,
        size_hint: Option<u64>,
        upload_id: &str,
    ) -> BoxFuture<'_, Result<Box<dyn ObjectWriter>, StorageError>> {
        route!(self, tenant, |s| s.begin_upload(tenant, key, size_hint, upload_id))
    }
    fn interrupted_uploads(&self) -> Vec<String> {
        self.local.interrupted_uploads()
    }
    fn recover_uploads<'a>(
        &'a self,
        completed: &'a HashMap<String, crate::audit::AuditEntry>,
    ) -> BoxFuture<'a, Result<Vec<String>, StorageError>> {
        self.local.recover_uploads(completed)
    }
    fn stat(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<ObjectMeta, StorageError>> {
        route!(self, tenant, |s| s.stat(tenant, key))
    }
    fn open(
        &self,
        tenant: &str,
        key: &ObjectKey,
        range: RangeRequest,
    ) -> BoxFuture<'_, Result<ObjectRead, StorageError>> {
        route!(self, tenant, |s| s.open(tenant, key, range))
    }
    fn open_known<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a ObjectKey,
        range: RangeRequest,
        meta: &'a ObjectMeta,
    ) -> BoxFuture<'a, Result<ObjectRead, StorageError>> {
        route!(self, tenant, |s| s.open_known(tenant, key, range, meta))
    }
    fn delete(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>> {
        route!(self, tenant, |s| s.delete(tenant, key))
    }
    fn ready<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        route!(self, tenant, |s| s.ready(tenant))
    }
    fn head(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<ListEntry, StorageError>> {
        route!(self, tenant, |s| s.head(tenant, key))
    }
    fn mkdir(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>> {
        route!(self, tenant, |s| s.mkdir(tenant, key))
    }
    fn rmdir(&self, tenant: &str, key: &ObjectKey) -> BoxFuture<'_, Result<(), StorageError>> {
        route!(self, tenant, |s| s.rmdir(tenant, key))
    }
    fn rename<'a>(
        &'a self,
        tenant: &'a str,
        from: &'a ObjectKey,
        to: &'a ObjectKey,
        replace: bool,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        route!(self, tenant, |s| s.rename(tenant, from, to, replace))
    }
    fn list<'a>(
        &'a self,
        tenant: &'a str,
        prefix: &'a ObjectKey,
        after: Option<&'a ListCursor>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ListPage, StorageError>> {
        route!(self, tenant, |s| s.list(tenant, prefix, after, limit))
    }
}

/// Read a credential file: trimmed, non-empty, and (for secrets) private to its owner.
fn read_credential(path: &Path, secret: bool) -> Result<String, String> {
    let bytes = if secret {
        crate::secrets::read_secret_file(path).map_err(|e| e.to_string())?
    } else {
        zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?)
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| format!("{}: not UTF-8 text", path.display()))?.trim();
    if text.is_empty() {
        return Err(format!("{}: empty", path.display()));
    }
    Ok(text.to_owned())
}

/// An SDK client for one `[[storages]]` entry.
pub(crate) async fn client_for(named: &NamedStorage) -> Result<aws_sdk_s3::Client, String> {
    let s = &named.s3;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(s.region.clone()))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(s.connect_timeout)
                .operation_attempt_timeout(s.request_timeout)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(s.max_attempts));
    if let S3Credentials::Files { access_key_id, secret_access_key, session_token } = &s.credentials {
        let id = read_credential(access_key_id, false)?;
        let secret = read_credential(secret_access_key, true)?;
        let token = session_token.as_deref().map(|p| read_credential(p, true)).transpose()?;
        loader = loader.credentials_provider(Credentials::new(id, secret, token, None, "gateway-config-files"));
    }
    let shared = loader.load().await;
    let mut builder = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(s.force_path_style)
        // The gateway sends its own SHA-256 checksums; no second (CRC) pass by the SDK.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        // Latency and errors per operation, for /metrics.
        .interceptor(crate::metrics::S3Interceptor);
    if let Some(url) = &s.endpoint_url {
        builder = builder.endpoint_url(url);
    }
    Ok(aws_sdk_s3::Client::from_conf(builder.build()))
}

/// Open every tenant's store: the local one for local tenants, a probed S3 store for the
/// others. Every problem is collected, each naming its tenant or storage.
pub async fn open_stores(
    config: &Config,
    keys: HashMap<String, Arc<SharedKeyring>>,
) -> Result<Arc<dyn ObjectStore>, Vec<String>> {
    open_stores_watched(config, keys).await.map(|(store, _)| store)
}

/// An S3 tenant with SSE-C as the key reloader watches it: its key file (rotated keys sit
/// beside it) and the store to replace when they change.
#[derive(Debug, Clone)]
pub struct CustomerKeyWatch {
    /// The tenant.
    pub tenant: String,
    /// Its `sse_c_key_file`.
    pub key_file: std::path::PathBuf,
    /// Its store.
    pub store: TenantS3,
}

/// [`open_stores`], and the SSE-C tenants' stores for the key reloader.
pub async fn open_stores_watched(
    config: &Config,
    keys: HashMap<String, Arc<SharedKeyring>>,
) -> Result<(Arc<dyn ObjectStore>, Vec<CustomerKeyWatch>), Vec<String>> {
    let mut watches = Vec::new();
    let mut errors = Vec::new();
    let mut clients = HashMap::new();
    for named in &config.storages {
        if config
            .tenants
            .iter()
            .any(|t| matches!(&t.storage, TenantStorage::S3 { storage, .. } if *storage == named.name))
        {
            match client_for(named).await {
                Ok(c) => {
                    clients.insert(named.name.clone(), c);
                }
                Err(e) => errors.push(format!("storages {:?}: {e}", named.name)),
            }
        }
    }
    let local_keys: HashMap<String, Arc<SharedKeyring>> = config
        .tenants
        .iter()
        .filter(|t| t.storage == TenantStorage::Local)
        .filter_map(|t| keys.get(&t.name).map(|k| (t.name.clone(), k.clone())))
        .collect();
    let StorageBackend::Local { root } = &config.storage.backend;
    let local: Arc<dyn ObjectStore> = match LocalStore::open(root, local_keys) {
        Ok(s) => Arc::new(s),
        Err(e) => return Err(vec![format!("storage.root: {e}")]),
    };
    let mut stores: HashMap<String, Arc<dyn ObjectStore>> = HashMap::new();
    let mut probes = Vec::new();
    for tenant in &config.tenants {
        let TenantStorage::S3 { storage, prefix, sse, seal } = &tenant.storage else {
            stores.insert(tenant.name.clone(), local.clone());
            continue;
        };
        let (Some(client), Some(named)) = (clients.get(storage), config.storages.iter().find(|s| s.name == *storage))
        else {
            continue;
        };
        let Some(ring) = keys.get(&tenant.name) else { continue };
        // Listing cursors and the SSE-C fingerprint derive from the base key, which rotation
        // leaves in place, so they stay the same across rotations.
        let base = ring.current();
        let tenant_key = base.base();
        let mut older_keys = Vec::new();
        let sse_mode = sse;
        let sse = match sse {
            gateway_config::Sse::S3 => Sse::S3,
            gateway_config::Sse::Kms { key_id, bucket_key } => Sse::kms(&tenant.name, key_id.clone(), *bucket_key),
            gateway_config::Sse::C { key_file } => match customer_keys(key_file, tenant_key) {
                Ok((newest, older)) => {
                    older_keys = older;
                    newest
                }
                Err(e) => {
                    errors.push(format!("tenant {:?}: sse_c_key_file: {e}", tenant.name));
                    continue;
                }
            },
        };
        let settings = Arc::new(BucketSettings {
            bucket: named.s3.bucket.clone(),
            part_size: named.s3.part_size,
            parts_in_flight: named.s3.parts_in_flight,
            max_object_size: config.storage.max_object_size,
        });
        let store = match S3Store::new(client.clone(), settings, prefix.clone(), sse, tenant_key) {
            Ok(s) => Arc::new(s.with_older_keys(older_keys)),
            Err(e) => {
                errors.push(format!("tenant {:?}: {e}", tenant.name));
                continue;
            }
        };
        probes.push((tenant.name.clone(), named.s3.bucket.clone(), named.s3.orphan_upload_age, store.clone()));
        let tenant_s3 = TenantS3::new(store);
        if let gateway_config::Sse::C { key_file } = sse_mode {
            watches.push(CustomerKeyWatch {
                tenant: tenant.name.clone(),
                key_file: key_file.clone(),
                store: tenant_s3.clone(),
            });
        }
        let s3: Arc<dyn ObjectStore> = Arc::new(tenant_s3);
        let routed: Arc<dyn ObjectStore> = if *seal { Arc::new(SealingStore::new(s3, ring.clone())) } else { s3 };
        stores.insert(tenant.name.clone(), routed);
    }
    for (tenant, bucket, age, store) in probes {
        if let Err(e) = store.probe().await {
            errors.push(format!(
                "tenant {tenant:?}: bucket {bucket:?} is not usable: {e} (checked by writing a probe object, \
                 checking the store confirms its encryption, and deleting it)"
            ));
            continue;
        }
        match store.abort_orphans(age).await {
            Ok(n) => {
                tracing::info!(tenant, bucket, aborted = n, "aborted orphaned multipart uploads (left by a crash)")
            }
            Err(e) => errors.push(format!("tenant {tenant:?}: bucket {bucket:?}: cannot clean up old uploads: {e}")),
        }
    }
    if errors.is_empty() {
        Ok((Arc::new(TenantRouter { stores, local }), watches))
    } else {
        Err(errors)
    }
}

/// A tenant's SSE-C keys: `key_file` and the `<key_file>.<n>` that `gateway keys rotate
/// --sse-c` added beside it. Returns the newest (what new objects are written with) and the
/// older ones, newest first (what older objects may need). Errors name the file.
pub fn customer_keys(key_file: &Path, tenant_key: &crate::secrets::TenantKey) -> Result<(Sse, Vec<Sse>), String> {
    let rotated = crate::keyring::rotated_files(key_file).map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    for path in std::iter::once(key_file.to_path_buf()).chain(rotated.into_iter().map(|(_, p)| p)) {
        let sse = crate::secrets::read_secret_file(&path).map_err(|e| e.to_string()).and_then(|content| {
            Sse::customer_key(&content, tenant_key).map_err(|e| format!("{}: {e}", path.display()))
        })?;
        keys.push(sse);
    }
    let newest = keys.pop().ok_or_else(|| format!("{}: no key", key_file.display()))?;
    keys.reverse();
    Ok((newest, keys))
}

/// One S3 tenant's store as `gateway keys reencrypt` needs it: no probe, no clean-up of
/// uploads (a running gateway may own them).
pub async fn tenant_store(config: &Config, tenant: &str) -> Result<Arc<S3Store>, String> {
    let t = config.tenants.iter().find(|t| t.name == tenant).ok_or_else(|| format!("no tenant {tenant:?}"))?;
    let TenantStorage::S3 { storage, prefix, sse, .. } = &t.storage else {
        return Err(format!("tenant {tenant:?} is not on S3"));
    };
    let named = config.storages.iter().find(|s| s.name == *storage).ok_or_else(|| format!("no storage {storage:?}"))?;
    let ring = crate::keyring::TenantKeyring::load(&t.key_file).map_err(|e| e.to_string())?;
    let (sse, older) = match sse {
        gateway_config::Sse::C { key_file } => customer_keys(key_file, ring.base())?,
        _ => return Err(format!("tenant {tenant:?} does not use SSE-C: the store holds its keys")),
    };
    let client = client_for(named).await?;
    let settings = Arc::new(BucketSettings {
        bucket: named.s3.bucket.clone(),
        part_size: named.s3.part_size,
        parts_in_flight: named.s3.parts_in_flight,
        max_object_size: config.storage.max_object_size,
    });
    let store = S3Store::new(client, settings, prefix.clone(), sse, ring.base()).map_err(|e| e.to_string())?;
    Ok(Arc::new(store.with_older_keys(older)))
}
