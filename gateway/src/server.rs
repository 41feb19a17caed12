//! Assembling a gateway from its configuration, and running it.
//!
//! [`Gateway::new`] loads every certificate and key the configuration names and reports all
//! problems at once; nothing is bound. [`Gateway::run`] takes listeners that are already bound
//! (tests bind `127.0.0.1:0`) and a shutdown future, like mini-redis' `server::run`.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gateway_certs::{CipherProfile, ReloadableCert};
use gateway_config::{Config, Mode, TlsProfile};
use tokio::net::TcpListener;

use crate::audit::{AuditConfig, AuditLog, CheckpointKey};
use crate::auth::{Directory, Users};
use crate::https::{self, Api, HttpsSettings};
use crate::secrets::{TenantKey, Token};
use crate::sftp::SftpFrontend;
use crate::transfer::Transfers;

/// Everything that stopped the gateway from starting, one line each.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct StartupError(pub Vec<String>);

/// What development mode generated or found for the first run.
#[derive(Debug, Default)]
pub struct DevMaterial {
    /// The dev CA certificate clients should trust.
    pub ca_cert: Option<PathBuf>,
    /// What was created this time (for the banner).
    pub generated: Vec<String>,
    /// The demo user's token and where it is stored.
    pub demo: Option<DemoToken>,
}

/// The demo user's development token.
#[derive(Debug)]
pub struct DemoToken {
    /// User it belongs to.
    pub user: String,
    /// Credential id.
    pub id: String,
    /// File holding the token (0600).
    pub path: PathBuf,
    /// The token.
    pub token: Token,
}

/// Development only: create whatever key material is missing. Production generates nothing.
pub fn prepare_development(config: &Config) -> Result<DevMaterial, StartupError> {
    let mut out = DevMaterial::default();
    if config.mode != Mode::Development {
        return Ok(out);
    }
    let mut errors = Vec::new();
    let dev_dir = config.data_dir.join("dev");
    match gateway_certs::dev::ensure_dev_pki(&dev_dir, &config.https.cert, &config.https.key) {
        Ok(pki) => {
            if pki.generated {
                out.generated.push(format!(
                    "TLS certificate {} (dev CA {})",
                    pki.server_cert.display(),
                    pki.ca_cert.display()
                ));
            }
            out.ca_cert = Some(pki.ca_cert);
        }
        Err(e) => errors.push(e.to_string()),
    }
    for tenant in &config.tenants {
        if !tenant.key_file.exists() {
            match TenantKey::generate().and_then(|k| k.save(&tenant.key_file)) {
                Ok(()) => out.generated.push(format!(
                    "storage key for tenant {} in {}",
                    tenant.name,
                    tenant.key_file.display()
                )),
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    if !config.audit.signing_key.exists() {
        match CheckpointKey::generate(&config.audit.signing_key) {
            Ok(_) => out.generated.push(format!("audit signing key {}", config.audit.signing_key.display())),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if let Some(sftp) = &config.sftp {
        for path in &sftp.host_keys {
            if !path.exists() {
                match crate::sftp::keys::generate_host_key(path) {
                    Ok(k) => out.generated.push(format!(
                        "SSH host key {} ({})",
                        path.display(),
                        crate::sftp::keys::describe(k.public_key())
                    )),
                    Err(e) => errors.push(format!("{}: {e}", path.display())),
                }
            }
        }
    }
    if let Some(user) = &config.development.demo_user {
        let path = dev_dir.join(format!("{user}.token"));
        let id = format!("{user}-dev");
        let token = if path.exists() {
            crate::secrets::read_secret_file(&path).and_then(|raw| {
                String::from_utf8(raw.to_vec()).map(|s| Token::new(s.trim().to_owned())).map_err(|_| {
                    crate::secrets::SecretError::Malformed { path: path.clone(), what: "token file is not text".into() }
                })
            })
        } else {
            Token::mint(&id).and_then(|t| {
                crate::secrets::write_secret_file(&path, format!("{}\n", t.reveal()).as_bytes())?;
                out.generated.push(format!("bearer token for user {user} in {}", path.display()));
                Ok(t)
            })
        };
        match token {
            Ok(token) => out.demo = Some(DemoToken { user: user.clone(), id, path, token }),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(StartupError(errors))
    }
}

/// Check every file the configuration names: certificates (validity, key strength, match),
/// tenant keys, the audit signing key. In development mode missing files are fine (they will
/// be generated); in production they are errors. Used by `check-config` and at start.
pub fn check_files(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let dev = config.mode == Mode::Development;
    let missing = |p: &Path| dev && !p.exists();
    if !(missing(&config.https.cert) && missing(&config.https.key)) {
        if let Err(e) = gateway_certs::validate_cert_files(&config.https.cert, &config.https.key) {
            problems.push(format!("https.cert/https.key: {e}"));
        }
    }
    for (i, t) in config.tenants.iter().enumerate() {
        if !missing(&t.key_file) {
            if let Err(e) = crate::keyring::TenantKeyring::load(&t.key_file) {
                problems.push(format!("tenants[{i}].key_file: {e}"));
            }
        }
    }
    for (i, t) in config.tenants.iter().enumerate() {
        if let gateway_config::TenantStorage::S3 { sse: gateway_config::Sse::C { key_file }, .. } = &t.storage {
            // The key file and the keys `gateway keys rotate --sse-c` added beside it.
            let rotated = crate::keyring::rotated_files(key_file).map(|r| r.into_iter().map(|(_, p)| p));
            let files = std::iter::once(key_file.clone()).chain(rotated.into_iter().flatten());
            for file in files {
                let key = crate::secrets::read_secret_file(&file).map_err(|e| e.to_string()).and_then(|content| {
                    crate::storage::s3::decode_customer_key(&content)
                        .map(drop)
                        .map_err(|e| format!("{}: {e}", file.display()))
                });
                if let Err(e) = key {
                    problems.push(format!("tenants[{i}].sse_c_key_file: {e}"));
                }
            }
        }
    }
    if let Some(alerts) = &config.alerts {
        if let Err(e) = crate::alerts::webhook::check(alerts) {
            problems.push(e);
        }
    }
    if let Some(path) = config.admin.as_ref().and_then(|a| a.token_file.as_ref()) {
        if let Err(e) = admin_token(path) {
            problems.push(format!("admin.token_file: {e}"));
        }
    }
    for (i, s) in config.storages.iter().enumerate() {
        if let gateway_config::S3Credentials::Files { access_key_id, secret_access_key, session_token } =
            &s.s3.credentials
        {
            if let Err(e) = std::fs::metadata(access_key_id) {
                problems.push(format!("storages[{i}].access_key_id_file: {}: {e}", access_key_id.display()));
            }
            for (field, path) in
                [("secret_access_key_file", Some(secret_access_key)), ("session_token_file", session_token.as_ref())]
            {
                if let Some(path) = path {
                    if let Err(e) = crate::secrets::read_secret_file(path) {
                        problems.push(format!("storages[{i}].{field}: {e}"));
                    }
                }
            }
        }
    }
    if !missing(&config.audit.signing_key) {
        if let Err(e) = CheckpointKey::load(&config.audit.signing_key) {
            problems.push(format!("audit.signing_key: {e}"));
        }
    }
    if let Some(sftp) = &config.sftp {
        for (i, path) in sftp.host_keys.iter().enumerate() {
            if !missing(path) {
                if let Err(e) = crate::sftp::keys::load_host_key(path) {
                    problems.push(format!("sftp.host_keys[{i}]: {e}"));
                }
            }
        }
    }
    if let Err(errors) = Directory::from_config(config) {
        problems.extend(errors);
    }
    if let Err(e) = crate::accounts::check_state(&config.accounts) {
        problems.push(e);
    }
    problems
}

/// How long shutdown waits, once every connection task has ended, for the transfer objects
/// they held to be dropped: only tasks outside the frontends' control (none are known) could
/// hold one; the trail records any left as `interrupted`.
const TRANSFERS_DROP_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// SHA-256 of the admin bearer token in `path` (0600, one line, not empty).
fn admin_token(path: &Path) -> Result<[u8; 32], String> {
    let content = crate::secrets::read_secret_file(path).map_err(|e| e.to_string())?;
    let token = std::str::from_utf8(&content).map_err(|_| format!("{}: not UTF-8", path.display()))?.trim();
    if token.len() < 16 {
        return Err(format!("{}: the token must be at least 16 characters", path.display()));
    }
    Ok(crate::digest::sha256(token.as_bytes()))
}

/// A configured gateway, ready to run on bound listeners.
pub struct Gateway {
    tls: Arc<rustls::ServerConfig>,
    cert: Arc<ReloadableCert>,
    /// Certificate and key files, watched for rotation.
    cert_files: (std::path::PathBuf, std::path::PathBuf),
    /// The client CA bundle and CRLs (mTLS), watched like the certificate.
    clients: Option<crate::reload::ClientTrustWatch>,
    /// The SSH host key files loaded at start, watched for rotation.
    host_key_files: Vec<std::path::PathBuf>,
    /// Each tenant's key file and the keyring in force, watched for rotated keys.
    keyrings: Vec<(String, std::path::PathBuf, Arc<crate::keyring::SharedKeyring>)>,
    /// SSE-C tenants' key files and stores, watched for rotated SSE-C keys.
    customer_keys: Vec<crate::storage::router::CustomerKeyWatch>,
    /// Notified to look at the certificate files and the configuration now (SIGHUP).
    reload: Arc<tokio::sync::Notify>,
    /// The users in force (replaced on a configuration reload).
    users: Arc<Users>,
    /// Tenants served (a reload may not change them).
    tenants: Vec<String>,
    /// The development demo token, kept across reloads.
    extra_token: Option<crate::reload::ExtraToken>,
    /// The configuration file to watch for user changes, once [`Gateway::watch_config`] names it.
    config_file: Option<std::path::PathBuf>,
    /// Ships sealed audit segments to the audit bucket, when configured, and how often.
    shipper: Option<(crate::audit::ship::Shipper, std::time::Duration)>,
    /// What `/readyz` looks at; flips to draining first at shutdown.
    readiness: Arc<crate::admin::Readiness>,
    /// SHA-256 of the admin token `/metrics` requires, if configured.
    admin_token: Option<[u8; 32]>,
    /// The security alert sink (disabled without `[alerts]`).
    alerts: crate::alerts::Alerts,
    /// The audit trail's file, named in an `audit_write_failure` alert.
    audit_path: PathBuf,
    api: Arc<Api>,
    sftp: Option<SftpFrontend>,
    audit: AuditLog,
    transfers: Transfers,
    https: HttpsSettings,
}

/// The sockets a gateway serves, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// HTTPS.
    pub https: TcpListener,
    /// SFTP, when configured.
    pub sftp: Option<TcpListener>,
    /// The admin endpoints (`/metrics`, `/healthz`, `/readyz`), when configured.
    pub admin: Option<TcpListener>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("https", &self.https).finish()
    }
}

impl Gateway {
    /// Load all material named by `config` (plus the development demo token, if any).
    /// Async because S3 buckets are probed (reachable, writable, encryption confirmed) before
    /// anything is served.
    pub async fn new(config: &Config, dev: &DevMaterial) -> Result<Gateway, StartupError> {
        let mut errors = check_files(config);
        if !errors.is_empty() {
            return Err(StartupError(errors));
        }
        let cert = match gateway_certs::load_server_cert(&config.https.cert, &config.https.key) {
            Ok(c) => Some(Arc::new(ReloadableCert::new(c))),
            Err(e) => {
                errors.push(e.to_string());
                None
            }
        };
        let profile = match config.https.tls_profile {
            TlsProfile::Aes256 => CipherProfile::Aes256,
            TlsProfile::Intermediate => CipherProfile::Intermediate,
        };
        let clients = match &config.https.client_auth {
            Some(ca) => {
                let mandatory = ca.mode == gateway_config::ClientAuthMode::Required;
                match gateway_certs::load_client_trust(profile, &ca.ca, &ca.crls, mandatory) {
                    Ok(trust) => Some(crate::reload::ClientTrustWatch::new(ca, profile, &trust)),
                    Err(e) => {
                        errors.push(format!("https.client_auth: {e}"));
                        None
                    }
                }
            }
            None => None,
        };
        let mut keys = HashMap::new();
        for t in &config.tenants {
            match crate::keyring::TenantKeyring::load(&t.key_file) {
                Ok(ring) => {
                    keys.insert(t.name.clone(), crate::keyring::SharedKeyring::new(ring));
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        let signing = CheckpointKey::load(&config.audit.signing_key).map_err(|e| e.to_string());
        let mut host_keys = Vec::new();
        if let Some(sftp) = &config.sftp {
            for path in &sftp.host_keys {
                match crate::sftp::keys::load_host_key(path) {
                    Ok(k) => host_keys.push(k),
                    Err(e) => errors.push(e),
                }
            }
        }
        let mut directory = Directory::from_config(config).map_err(StartupError)?;
        if let Some(demo) = &dev.demo {
            if let Err(e) = directory.add_token(&demo.user, &demo.id, demo.token.sha256()) {
                errors.push(format!("development demo token: {e}"));
            }
        }
        let signing = match signing {
            Ok(k) => Some(k),
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let (Some(cert), Some(signing), true) = (cert, signing, errors.is_empty()) else {
            return Err(StartupError(errors));
        };
        let keyrings = config
            .tenants
            .iter()
            .filter_map(|t| keys.get(&t.name).map(|r| (t.name.clone(), t.key_file.clone(), r.clone())))
            .collect();
        let (store, customer_keys) =
            crate::storage::router::open_stores_watched(config, keys).await.map_err(StartupError)?;
        let shipper = match &config.audit.ship {
            Some(ship) => Some((open_shipper(config, ship).await.map_err(|e| StartupError(vec![e]))?, ship.interval)),
            None => None,
        };
        let (audit, completed) = AuditLog::open_recovering(
            AuditConfig {
                path: config.audit.path.clone(),
                checkpoint_every_records: config.audit.checkpoint_every_records,
                checkpoint_interval: config.audit.checkpoint_interval,
                append_timeout: config.audit.append_timeout,
            },
            signing,
            &store.interrupted_uploads(),
        )
        .map_err(|e| StartupError(vec![e.to_string()]))?;
        // An upload whose `completed` record was written while its name was being made durable
        // (the two overlap) is put in place; the other interrupted uploads are removed.
        let finished = store
            .recover_uploads(&completed)
            .await
            .map_err(|e| StartupError(vec![format!("storage: finishing interrupted uploads: {e}")]))?;
        if !finished.is_empty() {
            tracing::warn!(
                count = finished.len(),
                objects = ?finished.get(..finished.len().min(20)).unwrap_or_default(),
                "the previous run stopped while uploads with a completed record were being made durable; put them in place"
            );
        }
        let tls = gateway_certs::server_config(profile, cert.clone(), clients.as_ref().map(|c| c.verifier()))
            .map_err(|e| StartupError(vec![e.to_string()]))?;
        let readiness = Arc::new(crate::admin::Readiness::new(
            audit.clone(),
            cert.clone(),
            store.clone(),
            config.tenants.iter().map(|t| t.name.clone()).collect(),
        ));
        let admin_token = match config.admin.as_ref().and_then(|a| a.token_file.as_deref()) {
            Some(path) => Some(admin_token(path).map_err(|e| StartupError(vec![format!("admin.token_file: {e}")]))?),
            None => None,
        };
        let alerts = match &config.alerts {
            Some(a) => crate::alerts::Alerts::open(a, &config.data_dir).map_err(|e| StartupError(vec![e]))?,
            None => crate::alerts::Alerts::disabled(),
        };
        let transfers = Transfers::new(store, audit.clone(), config.storage.max_object_size)
            .with_names(config.storage.refuse_in_names)
            .with_alerts(alerts.clone())
            .with_auth_folding(config.audit.auth_failures_per_source, config.audit.auth_failure_window);
        // The defender: bans of the last run loaded, bans and unbans audited.
        let transfers = if config.defender.enabled {
            let defender = crate::defender::open(&config.defender, &config.data_dir, audit.clone())
                .map_err(|e| StartupError(vec![e]))?;
            if alerts.enabled() {
                let alerts = alerts.clone();
                defender.set_hook(Box::new(move |change| alerts.ban(change)));
            }
            transfers.with_defender(defender)
        } else {
            transfers
        };
        let https_defender = transfers.defender().cloned();
        let https_audit = audit.clone();
        let directory = Arc::new(Users::new(directory).with_mfa(crate::mfa::Mfa::new(&config.mfa, alerts.clone())));
        // Who may log in now: disabled, expired, dormant, source (state under [accounts]).
        let accounts = crate::accounts::Accounts::open(
            &config.accounts,
            directory.clone(),
            audit.clone(),
            alerts.clone(),
            Arc::new(crate::accounts::SystemClock),
        )
        .map_err(|e| StartupError(vec![e]))?;
        let transfers = transfers.with_accounts(accounts);
        let sftp = match &config.sftp {
            Some(sftp) => Some(
                SftpFrontend::new(sftp, host_keys, directory.clone(), transfers.clone())
                    .map_err(|e| StartupError(vec![e]))?,
            ),
            None => None,
        };
        let api = Api::new(directory.clone(), transfers.clone(), config.https.hsts_max_age, config.https.idle_timeout);
        Ok(Gateway {
            tls: Arc::new(tls),
            cert,
            cert_files: (config.https.cert.clone(), config.https.key.clone()),
            host_key_files: config.sftp.as_ref().map(|s| s.host_keys.clone()).unwrap_or_default(),
            clients,
            keyrings,
            customer_keys,
            reload: Arc::new(tokio::sync::Notify::new()),
            users: directory.clone(),
            tenants: config.tenants.iter().map(|t| t.name.clone()).collect(),
            extra_token: dev.demo.as_ref().map(|d| crate::reload::ExtraToken {
                user: d.user.clone(),
                id: d.id.clone(),
                sha256: d.token.sha256(),
            }),
            config_file: None,
            shipper,
            readiness,
            admin_token,
            alerts,
            audit_path: config.audit.path.clone(),
            api: Arc::new(api),
            sftp,
            audit,
            transfers,
            https: HttpsSettings {
                handshake_timeout: config.https.handshake_timeout,
                idle_timeout: config.https.idle_timeout,
                max_connections: config.https.max_connections,
                max_connections_per_source: config.https.max_connections_per_source,
                connection_rate_per_source: config.https.connection_rate_per_source,
                defender: https_defender,
                grace: config.shutdown_grace,
                max_connection_duration: config.https.max_connection_duration,
                audit: Some(https_audit),
            },
        })
    }

    /// The live certificate holder (swap it to rotate without a restart).
    pub fn certificate(&self) -> Arc<ReloadableCert> {
        self.cert.clone()
    }

    /// Reload users, tokens and SSH keys from `path` (the file this configuration came from)
    /// when it changes or on SIGHUP.
    pub fn watch_config(&mut self, path: std::path::PathBuf) {
        self.config_file = Some(path);
    }

    /// Notify this to make the gateway look at its certificate files now (what SIGHUP does);
    /// it also looks every [`crate::reload::CHECK_INTERVAL`].
    pub fn reload_trigger(&self) -> Arc<tokio::sync::Notify> {
        self.reload.clone()
    }

    /// Host key fingerprint lines (`ssh-keygen -l` style), when SFTP is configured.
    pub fn host_key_fingerprints(&self) -> Vec<String> {
        self.sftp.as_ref().map(|s| s.host_keys().lines()).unwrap_or_default()
    }

    /// Serve until `shutdown` resolves; then drain, fail what is left, write the final
    /// checkpoint and return.
    ///
    /// The order matters: each frontend gives its connections the grace period, then ends
    /// the rest by force and waits until their tasks are gone; then every transfer object
    /// must have been dropped (and so have queued its `failed` record); only then is the
    /// trail closed. Anything still open at that point is recorded as `interrupted`.
    pub async fn run(self, listeners: Listeners, shutdown: impl Future<Output = ()>) {
        let stop = tokio_util::sync::CancellationToken::new();
        let grace = self.https.grace;
        let (cert_path, key_path) = self.cert_files.clone();
        let mut cert = crate::reload::CertReloader::new(cert_path, key_path, self.cert.clone(), self.audit.clone());
        cert.watch_clients(self.clients);
        cert.set_alerts(self.alerts.clone());
        let alert_stop = tokio_util::sync::CancellationToken::new();
        let delivering = tokio::spawn(self.alerts.clone().deliver(alert_stop.clone().cancelled_owned()));
        let audit_watch = tokio::spawn(self.alerts.clone().watch_audit(
            self.audit.clone(),
            self.audit_path.clone(),
            alert_stop.clone().cancelled_owned(),
        ));
        let users = self.config_file.clone().map(|path| {
            crate::reload::UsersReloader::new(
                path,
                self.users.clone(),
                self.tenants.clone(),
                self.extra_token.clone(),
                self.audit.clone(),
            )
        });
        let host_keys = self.sftp.as_ref().map(|s| {
            crate::reload::HostKeyReloader::new(
                self.host_key_files.clone(),
                self.config_file.clone(),
                s.host_keys(),
                self.audit.clone(),
            )
            .with_alerts(self.alerts.clone())
        });
        let folding = {
            let transfers = self.transfers.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    transfers.flush_auth_summaries(false).await;
                }
            })
        };
        let reloading = tokio::spawn(crate::reload::run(
            cert,
            users,
            host_keys,
            self.reload.clone(),
            stop.clone().cancelled_owned(),
        ));
        let keyrings = tokio::spawn(
            crate::keyring::KeyringReloader::new(self.keyrings.clone(), self.audit.clone())
                .with_customer_keys(self.customer_keys.clone())
                .with_alerts(self.transfers.alerts().clone())
                .run(stop.clone().cancelled_owned()),
        );
        let ship_stop = tokio_util::sync::CancellationToken::new();
        let shipping =
            self.shipper.map(|(shipper, every)| tokio::spawn(shipper.run(every, ship_stop.clone().cancelled_owned())));
        // Dormancy checks (at once, then every minute) and the login state written (debounced,
        // and once more at the end).
        let accounts = tokio::spawn(self.transfers.accounts().clone().maintain(stop.clone().cancelled_owned()));
        // Ends expired bans and saves the table every few seconds, and once more at the end.
        let defending =
            self.transfers.defender().cloned().map(|d| tokio::spawn(d.maintain(stop.clone().cancelled_owned())));
        let https = https::serve(listeners.https, self.tls, self.api, self.https, stop.clone().cancelled_owned());
        let sftp = async {
            match (self.sftp, listeners.sftp) {
                (Some(frontend), Some(listener)) => {
                    frontend.serve(listener, grace, stop.clone().cancelled_owned()).await
                }
                (Some(_), None) => tracing::warn!("SFTP is configured but no listener was given"),
                _ => {}
            }
        };
        let readiness = self.readiness.clone();
        let trigger = async {
            shutdown.await;
            // Readiness first, so load balancers stop sending while the front ends drain.
            readiness.start_draining();
            stop.cancel();
        };
        let admin_stop = tokio_util::sync::CancellationToken::new();
        let admin = listeners.admin.map(|l| {
            tokio::spawn(crate::admin::serve(
                l,
                self.readiness.clone(),
                self.admin_token,
                self.transfers.defender().cloned(),
                self.transfers.accounts().clone(),
                admin_stop.clone().cancelled_owned(),
            ))
        });
        tokio::join!(https, sftp, trigger);
        if let Some(task) = defending {
            let _ = task.await;
        }
        let _ = accounts.await;
        let _ = reloading.await;
        let _ = keyrings.await;
        folding.abort();
        let _ = folding.await;
        let alive = self.transfers.wait_until_idle(TRANSFERS_DROP_LIMIT).await;
        if alive > 0 {
            tracing::warn!(alive, "transfers still alive after every connection ended; closing the audit trail anyway");
        }
        // Failures folded and not yet summarised are written before the trail closes.
        self.transfers.flush_auth_summaries(true).await;
        self.audit.close().await;
        // The trail is closed (final checkpoint written): ship what is left.
        ship_stop.cancel();
        if let Some(task) = shipping {
            if let Ok(mut shipper) = task.await {
                if tokio::time::timeout(SHIP_AT_EXIT_LIMIT, shipper.ship_logged()).await.is_err() {
                    tracing::error!("the last audit segments were not shipped in time; the next start ships them");
                }
            }
        }
        admin_stop.cancel();
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        // Alerts last: whatever was raised is in the outbox (sent at the next start if the
        // receiver did not take it now).
        alert_stop.cancel();
        let _ = audit_watch.await;
        let _ = delivering.await;
        self.alerts.close().await;
    }
}

/// Longest the last shipping pass at shutdown may take.
const SHIP_AT_EXIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The audit shipper of `[audit.ship]`: the named storage's endpoint and credentials, its
/// bucket unless one is given, this node's name.
async fn open_shipper(
    config: &Config,
    ship: &gateway_config::AuditShipConfig,
) -> Result<crate::audit::ship::Shipper, String> {
    let named = config
        .storages
        .iter()
        .find(|s| s.name == ship.storage)
        .ok_or_else(|| format!("audit.ship.storage: unknown storage {:?}", ship.storage))?;
    let client = crate::storage::router::client_for(named).await.map_err(|e| format!("audit.ship: {e}"))?;
    let bucket = ship.bucket.clone().unwrap_or_else(|| named.s3.bucket.clone());
    let node = crate::audit::ship::node_name(ship.node.as_deref());
    crate::audit::ship::Shipper::open(client, bucket, &ship.prefix, &node, &config.audit.path, ship.retention).await
}
