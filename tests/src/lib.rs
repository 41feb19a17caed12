//! Test harness: a real gateway on `127.0.0.1:0` in production mode, with key material
//! minted per test (rcgen certificates, fresh tenant and audit keys, minted tokens), and a
//! small HTTPS client (hyper over tokio-rustls) trusting the test CA.
//!
//! Storage: tenants live in the local store, or, with [`Builder::s3`] or
//! `GATEWAY_TEST_STORAGE=s3` in the environment, in a fresh bucket of a real S3 store
//! ([`s3::Garage`]). Tests that look at the local store's files call [`Builder::local_only`];
//! [`TestGateway::object_exists`], [`TestGateway::stored_objects`] and
//! [`TestGateway::pending_uploads`] work on both.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

pub mod fault_proxy;
pub mod s3;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway::secrets::{TenantKey, Token};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// A user the test gateway knows.
#[derive(Clone, Debug)]
pub struct UserSpec {
    pub name: &'static str,
    pub tenant: &'static str,
    pub home: &'static str,
    pub permissions: &'static [&'static str],
}

/// Builds a [`TestGateway`].
pub struct Builder {
    profile: &'static str,
    users: Vec<UserSpec>,
    grace: &'static str,
    idle: &'static str,
    checkpoint_every: u64,
    sftp: bool,
    sftp_extra: String,
    extra_keys: Vec<(&'static str, &'static str)>,
    https_extra: String,
    storage_extra: String,
    passwords: Vec<(&'static str, String)>,
    /// `None`: as `GATEWAY_TEST_STORAGE` says.
    storage: Option<StorageKind>,
    s3_extra: String,
    tenant_extra: Vec<(String, String)>,
    user_extra: Vec<(String, String)>,
    defender_extra: String,
    audit_extra: String,
}

/// Where a test gateway keeps its tenants' objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageKind {
    /// The encrypted local store under the test's directory.
    Local,
    /// A fresh bucket on the test binary's Garage node.
    S3,
}

impl StorageKind {
    /// `GATEWAY_TEST_STORAGE`: unset, empty or `local` → local; `s3` → S3.
    pub fn from_env() -> StorageKind {
        match std::env::var("GATEWAY_TEST_STORAGE").as_deref() {
            Err(_) | Ok("") | Ok("local") => StorageKind::Local,
            Ok("s3") => StorageKind::S3,
            Ok(other) => panic!("GATEWAY_TEST_STORAGE={other:?}: expected \"local\" or \"s3\""),
        }
    }
}

/// Keys set by TOML `lines` (`key = value`, one per line).
fn toml_keys(lines: &str) -> Vec<String> {
    lines
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_owned()))
        .collect()
}

/// The string value of `key` in TOML `lines`, if set there.
fn toml_string(lines: &str, key: &str) -> Option<String> {
    lines.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
    })
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            profile: "aes256",
            users: vec![
                UserSpec { name: "alice", tenant: "acme", home: "/partners/alice", permissions: &["all"] },
                UserSpec { name: "reader", tenant: "acme", home: "/partners/alice", permissions: &["list", "read"] },
                UserSpec { name: "bob", tenant: "globex", home: "/", permissions: &["all"] },
            ],
            grace: "5s",
            idle: "10s",
            checkpoint_every: 1000,
            sftp: false,
            sftp_extra: String::new(),
            https_extra: String::new(),
            storage_extra: String::new(),
            extra_keys: Vec::new(),
            passwords: Vec::new(),
            storage: None,
            s3_extra: String::new(),
            tenant_extra: Vec::new(),
            user_extra: Vec::new(),
            audit_extra: String::new(),
            defender_extra: String::new(),
        }
    }
}

impl Builder {
    pub fn tls_profile(mut self, p: &'static str) -> Self {
        self.profile = p;
        self
    }
    pub fn grace(mut self, g: &'static str) -> Self {
        self.grace = g;
        self
    }
    pub fn idle_timeout(mut self, t: &'static str) -> Self {
        self.idle = t;
        self
    }
    pub fn checkpoint_every(mut self, n: u64) -> Self {
        self.checkpoint_every = n;
        self
    }
    /// Also serve SFTP on 127.0.0.1:0, with an Ed25519 and an RSA-3072 host key and an
    /// Ed25519 client key per user (made with `ssh-keygen`).
    pub fn sftp(mut self) -> Self {
        self.sftp = true;
        self
    }
    /// Lines for a `[storage]` section (e.g. `max_object_size = "1MiB"`).
    pub fn storage_settings(mut self, lines: &str) -> Self {
        self.storage_extra.push_str(lines);
        self.storage_extra.push('\n');
        self
    }
    /// Extra lines for the `[https]` section (e.g. `max_connections = 2`).
    pub fn https_settings(mut self, lines: &str) -> Self {
        self.https_extra.push_str(lines);
        self.https_extra.push('\n');
        self
    }
    /// Lines for the `[defender]` section. Without them the defender is off (`enabled =
    /// false`): tests make many connections and refused logins from one address.
    pub fn defender_settings(mut self, lines: &str) -> Self {
        self.defender_extra.push_str(lines);
        self.defender_extra.push('\n');
        self
    }
    /// Extra lines for the `[sftp]` section (e.g. `kex = [...]`).
    pub fn sftp_settings(mut self, lines: &str) -> Self {
        self.sftp = true;
        self.sftp_extra.push_str(lines);
        self.sftp_extra.push('\n');
        self
    }

    /// Also authorise a second client key of `kind` (`ed25519` or `rsa`) for `user`; it is
    /// at `user_keys["{user}_{kind}"]`.
    pub fn extra_user_key(mut self, user: &'static str, kind: &'static str) -> Self {
        self.sftp = true;
        self.extra_keys.push((user, kind));
        self
    }

    /// Let `user` also log in over SFTP with `password` (stored as a PBKDF2 hash).
    pub fn password(mut self, user: &'static str, password: &str) -> Self {
        self.sftp = true;
        self.passwords.push((user, gateway::auth::hash_password(password).unwrap()));
        self
    }

    /// Keep every tenant on a fresh bucket of the test S3 store (Garage), whatever
    /// `GATEWAY_TEST_STORAGE` says. Each tenant gets `storage = "s3"`, `prefix = "<name>/"` and
    /// SSE-C with its own key (Garage implements SSE-C only), unless
    /// [`Builder::tenant_settings`] sets those keys.
    pub fn s3(mut self) -> Self {
        self.storage = Some(StorageKind::S3);
        self
    }

    /// Keep every tenant in the local store, whatever `GATEWAY_TEST_STORAGE` says: for tests
    /// that inspect the store's files ([`TestGateway::stored_file`],
    /// [`TestGateway::staging_files`]).
    pub fn local_only(mut self) -> Self {
        self.storage = Some(StorageKind::Local);
        self
    }

    /// Extra lines for the `[[storages]]` entry of the S3 store; a key set here replaces the
    /// harness's value (e.g. `endpoint_url = "http://127.0.0.1:<proxy port>"`). Only used on S3.
    pub fn s3_settings(mut self, lines: &str) -> Self {
        self.s3_extra.push_str(lines);
        self.s3_extra.push('\n');
        self
    }

    /// Extra lines for `tenant`'s `[[tenants]]` entry (e.g. `sse = "none"`); a key set here
    /// replaces the harness's value. An `sse_c_key_file` named here is read for
    /// [`TestGateway::s3`]'s `sse_c_keys`.
    pub fn tenant_settings(mut self, tenant: &str, lines: &str) -> Self {
        self.tenant_extra.push((tenant.to_owned(), format!("{lines}\n")));
        self
    }

    /// Serve these users instead of the default alice, reader and bob.
    /// Extra lines in `[audit]`.
    pub fn audit_settings(mut self, lines: &str) -> Self {
        self.audit_extra.push_str(lines);
        self.audit_extra.push('\n');
        self
    }

    /// Extra lines in one user's `[[users]]` stanza.
    pub fn user_settings(mut self, user: &str, lines: &str) -> Self {
        self.user_extra.push((user.to_owned(), format!("{lines}\n")));
        self
    }

    pub fn users(mut self, users: Vec<UserSpec>) -> Self {
        self.users = users;
        self
    }

    /// Write config and key material, start the gateway.
    pub async fn start(self) -> TestGateway {
        let sftp = self.sftp;
        let p = self.prepare();
        let config = gateway_config::load(&p.config_path).unwrap_or_else(|e| panic!("{e}\n{}", p.text));
        let gw = gateway::Gateway::new(&config, &gateway::DevMaterial::default()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sftp = if sftp { Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()) } else { None };
        let sftp_addr = sftp.as_ref().map(|l| l.local_addr().unwrap());
        let host_key_fingerprints = gw.host_key_fingerprints().to_vec();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(gw.run(gateway::Listeners { https: listener, sftp, admin: None }, async move {
            let _ = rx.await;
        }));
        TestGateway {
            addr,
            sftp_addr,
            user_keys: p.user_keys,
            host_key_fingerprints,
            ca_pem: p.ca_pem,
            tokens: p.tokens,
            audit_path: config.audit.path.clone(),
            audit_pub: p.dir.path().join("data/audit/checkpoint.pub"),
            store_root: p.dir.path().join("data/store"),
            config_path: p.config_path,
            s3: p.s3,
            dir: p.dir,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Write config and key material, then run the `gateway serve` binary on it as its own
    /// process (for signals and for measuring its memory).
    pub fn spawn_process(self) -> GatewayProcess {
        assert!(self.sftp, "spawn_process serves SFTP; call .sftp()");
        let p = self.prepare();
        let mut child = std::process::Command::new(gateway_bin())
            .arg("serve")
            .arg("--config")
            .arg(&p.config_path)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("SFTP listening on ") {
                    let addr: SocketAddr = rest.split(';').next().unwrap().parse().unwrap();
                    let _ = tx.send(addr);
                }
            }
        });
        let sftp_addr = rx.recv_timeout(Duration::from_secs(30)).expect("gateway process did not start");
        GatewayProcess {
            child,
            sftp_addr,
            user_keys: p.user_keys,
            audit_path: p.dir.path().join("data/audit/audit.jsonl"),
            audit_pub: p.dir.path().join("data/audit/checkpoint.pub"),
            store_root: p.dir.path().join("data/store"),
            s3: p.s3,
            dir: p.dir,
        }
    }

    /// Write the configuration and key material without starting anything (to look at the
    /// configuration a test gateway would get).
    pub fn write_config(self) -> WrittenConfig {
        let p = self.prepare();
        WrittenConfig { path: p.config_path, text: p.text, s3: p.s3, dir: p.dir }
    }

    /// The configuration file and key material a gateway runs on.
    fn prepare(self) -> Prepared {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let pki = gateway_certs::dev::mint(&root.join("pki"), gateway_certs::dev::KeyKind::EcdsaP256).unwrap();
        let mut tenants: Vec<&str> = self.users.iter().map(|u| u.tenant).collect();
        tenants.sort();
        tenants.dedup();
        let mut text = format!(
            "mode = \"production\"\ndata_dir = {:?}\nshutdown_grace = {:?}\n\n[https]\nlisten = \"127.0.0.1:0\"\n\
             tls_profile = {:?}\ncert = {:?}\nkey = {:?}\nidle_timeout = {:?}\n{}\n[storage]\n{}\n[audit]\ncheckpoint_every_records = {}\n{}\n",
            root.join("data"),
            self.grace,
            self.profile,
            pki.server_cert,
            pki.server_key,
            self.idle,
            {
                // Per-source connection limits are off unless a test sets them (one address).
                // They go first: a test's lines may open sub-tables ([https.client_auth],
                // [audit.ship]) that keys written after them would land in.
                let mut https = String::new();
                for key in ["max_connections_per_source", "connection_rate_per_source"] {
                    if !self.https_extra.contains(key) {
                        https.push_str(&format!("{key} = 0\n"));
                    }
                }
                https.push_str(&self.https_extra);
                https
            },
            self.storage_extra,
            self.checkpoint_every,
            {
                // Every authentication failure is written unless a test sets a rate: tests
                // look for particular failures among many from one address.
                let mut audit = self.audit_extra.clone();
                if !audit.contains("auth_failures_per_source") {
                    audit.push_str("auth_failures_per_source = 100000\n");
                }
                audit
            },
        );
        let kind = self.storage.unwrap_or_else(StorageKind::from_env);
        let mut s3 = None;
        if kind == StorageKind::S3 {
            let garage = s3::Garage::get();
            let bucket = garage.create_bucket();
            let id_file = root.join("s3/access_key_id");
            let secret_file = root.join("s3/secret_access_key");
            s3::write_private(&id_file, garage.access_key_id.as_bytes()).unwrap();
            s3::write_private(&secret_file, garage.secret_access_key.as_bytes()).unwrap();
            let defaults = [
                ("bucket", format!("{:?}", bucket.name)),
                ("region", format!("{:?}", garage.region)),
                ("endpoint_url", format!("{:?}", garage.endpoint)),
                ("force_path_style", "true".to_owned()),
                ("access_key_id_file", format!("{id_file:?}")),
                ("secret_access_key_file", format!("{secret_file:?}")),
                ("part_size", "\"5MiB\"".to_owned()),
                ("parts_in_flight", "4".to_owned()),
                ("connect_timeout", "\"5s\"".to_owned()),
                ("request_timeout", "\"30s\"".to_owned()),
                ("max_attempts", "3".to_owned()),
            ];
            let overridden = toml_keys(&self.s3_extra);
            text.push_str("[[storages]]\nname = \"s3\"\nbackend = \"s3\"\n");
            for (k, v) in defaults.iter().filter(|(k, _)| !overridden.iter().any(|o| o == k)) {
                text.push_str(&format!("{k} = {v}\n"));
            }
            text.push_str(&self.s3_extra);
            text.push('\n');
            s3 = Some(s3::S3Tenants { bucket, prefixes: BTreeMap::new(), sse_c_keys: BTreeMap::new() });
        }
        for t in &tenants {
            let key = root.join(format!("data/keys/{t}.key"));
            TenantKey::generate().unwrap().save(&key).unwrap();
            text.push_str(&format!("[[tenants]]\nname = {t:?}\nkey_file = {key:?}\n"));
            let extra: String =
                self.tenant_extra.iter().filter(|(n, _)| n == t).map(|(_, lines)| lines.as_str()).collect();
            if let Some(s3) = &mut s3 {
                let set = toml_keys(&extra);
                let has = |k: &str| set.iter().any(|s| s == k);
                if !has("storage") {
                    text.push_str("storage = \"s3\"\n");
                }
                let prefix = toml_string(&extra, "prefix").unwrap_or_else(|| format!("{t}/"));
                if !has("prefix") {
                    text.push_str(&format!("prefix = {prefix:?}\n"));
                }
                s3.prefixes.insert((*t).to_owned(), prefix);
                if !has("sse") && !has("sse_c_key_file") {
                    let file = root.join(format!("data/keys/{t}.sse-c"));
                    s3::write_private(&file, &random_bytes(32)).unwrap();
                    text.push_str(&format!("sse = \"sse-c\"\nsse_c_key_file = {file:?}\n"));
                }
                let sse = toml_string(&extra, "sse").unwrap_or_else(|| "sse-c".into());
                let key_file = toml_string(&extra, "sse_c_key_file")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| root.join(format!("data/keys/{t}.sse-c")));
                if sse == "sse-c" {
                    if let Ok(k) = std::fs::read(&key_file) {
                        if let Ok(k) = <[u8; 32]>::try_from(k.as_slice()) {
                            s3.sse_c_keys.insert((*t).to_owned(), k);
                        }
                    }
                }
            }
            text.push_str(&extra);
            text.push('\n');
        }
        gateway::audit::CheckpointKey::generate(&root.join("data/audit/checkpoint.key")).unwrap();
        let mut user_keys = HashMap::new();
        if self.sftp {
            let ssh = root.join("ssh");
            std::fs::create_dir_all(&ssh).unwrap();
            for (file, kind) in [("host_ed25519", "ed25519"), ("host_rsa", "rsa")] {
                ssh_keygen(&ssh.join(file), kind);
            }
            // Test defaults, unless the test sets the key itself.
            let mut defaults = String::new();
            // The connection rate limit is off unless a test turns it on: tests open many
            // sessions from one address in quick succession.
            for (key, value) in [
                ("login_grace_time", "\"10s\""),
                ("auth_rejection_delay", "\"100ms\""),
                ("connection_rate_per_source", "0"),
                ("max_connections_per_source", "0"),
            ] {
                if !self.sftp_extra.contains(key) {
                    defaults.push_str(&format!("{key} = {value}\n"));
                }
            }
            text.push_str(&format!(
                "[sftp]\nlisten = \"127.0.0.1:0\"\nhost_keys = [{:?}, {:?}]\n{defaults}{}\n",
                ssh.join("host_ed25519"),
                ssh.join("host_rsa"),
                self.sftp_extra
            ));
            for u in &self.users {
                let key = ssh.join(format!("id_{}", u.name));
                ssh_keygen(&key, "ed25519");
                user_keys.insert(u.name.to_owned(), key);
            }
            for (user, kind) in &self.extra_keys {
                let key = ssh.join(format!("id_{user}_{kind}"));
                ssh_keygen(&key, kind);
                user_keys.insert(format!("{user}_{kind}"), key);
            }
        }
        let mut tokens = HashMap::new();
        for u in &self.users {
            let token = Token::mint(&format!("{}-1", u.name)).unwrap();
            let perms: Vec<String> = u.permissions.iter().map(|p| format!("{p:?}")).collect();
            let own = user_keys.get(u.name).into_iter();
            let extra =
                self.extra_keys.iter().filter(|(n, _)| *n == u.name).map(|(n, k)| &user_keys[&format!("{n}_{k}")]);
            let lines: Vec<String> = own
                .chain(extra)
                .map(|k| format!("{:?}", std::fs::read_to_string(k.with_extension("pub")).unwrap().trim()))
                .collect();
            let mut keys =
                if lines.is_empty() { String::new() } else { format!("authorized_keys = [{}]\n", lines.join(", ")) };
            for (_, hash) in self.passwords.iter().filter(|(n, _)| *n == u.name) {
                keys.push_str(&format!("password_hash = {hash:?}\n"));
            }
            for (_, lines) in self.user_extra.iter().filter(|(n, _)| n == u.name) {
                keys.push_str(lines);
            }
            text.push_str(&format!(
                "[[users]]\nname = {:?}\ntenant = {:?}\nhome = {:?}\npermissions = [{}]\n{keys}[[users.tokens]]\nid = \"{}-1\"\nsha256 = \"{}\"\n\n",
                u.name,
                u.tenant,
                u.home,
                perms.join(", "),
                u.name,
                hex::encode(token.sha256())
            ));
            tokens.insert(u.name.to_owned(), token.reveal().to_owned());
        }
        if self.defender_extra.is_empty() {
            text.push_str("[defender]\nenabled = false\n\n");
        } else {
            text.push_str(&format!("[defender]\n{}\n", self.defender_extra));
        }
        let config_path = root.join("gateway.toml");
        std::fs::write(&config_path, &text).unwrap();
        Prepared { dir, config_path, text, user_keys, tokens, ca_pem: pki.ca_cert, s3 }
    }
}

/// What [`Builder::write_config`] wrote.
pub struct WrittenConfig {
    /// The configuration file.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
    /// Where the tenants live when on S3.
    pub s3: Option<s3::S3Tenants>,
    /// The directory holding it and the key material.
    pub dir: tempfile::TempDir,
}

struct Prepared {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    text: String,
    user_keys: HashMap<String, PathBuf>,
    tokens: HashMap<String, String>,
    ca_pem: PathBuf,
    s3: Option<s3::S3Tenants>,
}

/// A `gateway serve` process; killed when dropped.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub sftp_addr: SocketAddr,
    pub user_keys: HashMap<String, PathBuf>,
    pub audit_path: PathBuf,
    pub audit_pub: PathBuf,
    pub store_root: PathBuf,
    /// Where the tenants live when on S3.
    pub s3: Option<s3::S3Tenants>,
    pub dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Peak and current resident set size of the process, in KiB (`VmHWM`, `VmRSS`).
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        let st = std::process::Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        assert!(st.success());
    }

    /// Every audit record written so far.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running gateway.
pub struct TestGateway {
    pub addr: SocketAddr,
    /// SFTP address, when started with [`Builder::sftp`].
    pub sftp_addr: Option<SocketAddr>,
    /// Private key file per user (public key beside it as `.pub`).
    pub user_keys: HashMap<String, PathBuf>,
    /// Host key fingerprint lines as the gateway prints them.
    pub host_key_fingerprints: Vec<String>,
    pub ca_pem: PathBuf,
    pub tokens: HashMap<String, String>,
    pub audit_path: PathBuf,
    pub audit_pub: PathBuf,
    pub store_root: PathBuf,
    pub config_path: PathBuf,
    /// Where the tenants live when on S3 ([`Builder::s3`]).
    pub s3: Option<s3::S3Tenants>,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

/// A response with its whole body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestGateway {
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub async fn start() -> TestGateway {
        Builder::default().start().await
    }

    pub fn token(&self, user: &str) -> &str {
        &self.tokens[user]
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// Ask the gateway to stop and wait for it (final checkpoint written).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), h).await.expect("gateway did not stop").unwrap();
        }
    }

    /// Start shutdown without waiting.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Wait for the gateway task to finish after [`TestGateway::trigger_shutdown`].
    pub async fn join(&mut self) {
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), h).await.expect("gateway did not stop").unwrap();
        }
    }

    /// Every audit record written so far.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Poll the trail until a record matches (records written from Drop arrive a bit later).
    pub async fn wait_audit(&self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        for _ in 0..200 {
            if let Some(r) = self.audit().into_iter().find(|r| pred(r)) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no audit record {what}; trail:\n{:#?}", self.audit());
    }

    /// Path of a stored (sealed) object on disk. Local store only: a test using it calls
    /// [`Builder::local_only`] (or uses [`TestGateway::object_exists`]).
    pub fn stored_file(&self, tenant: &str, key: &str) -> PathBuf {
        self.assert_local("stored_file");
        self.store_root.join("objects").join(tenant).join(key)
    }

    /// Files currently in the upload staging area. Local store only (see
    /// [`TestGateway::pending_uploads`]).
    pub fn staging_files(&self) -> usize {
        self.assert_local("staging_files");
        local_staging_files(&self.store_root)
    }

    fn assert_local(&self, what: &str) {
        assert!(
            self.s3.is_none(),
            "{what} looks at the local store but this gateway keeps its tenants on S3: call \
             .local_only() on the builder, or use object_exists / stored_objects / pending_uploads"
        );
    }

    /// Whether the tenants live on S3.
    pub fn is_s3(&self) -> bool {
        self.s3.is_some()
    }

    /// Where the tenants live on S3; panics for a local gateway.
    pub fn s3(&self) -> &s3::S3Tenants {
        self.s3.as_ref().expect("this test gateway keeps its tenants in the local store")
    }

    /// Whether an object is stored at `key` for `tenant` (a file in the local store, or an
    /// object in the bucket).
    pub async fn object_exists(&self, tenant: &str, key: &str) -> bool {
        match &self.s3 {
            None => self.store_root.join("objects").join(tenant).join(key).is_file(),
            Some(s3) => s3.bucket.exists(&s3.key(tenant, key)).await,
        }
    }

    /// Every stored object as `tenant/key`, sorted: files, not directories (on S3: no
    /// directory markers; `?/key` for a bucket key under no tenant's prefix).
    pub async fn stored_objects(&self) -> Vec<String> {
        match &self.s3 {
            None => {
                let base = self.store_root.join("objects");
                let mut out: Vec<String> = walk_files(&base)
                    .into_iter()
                    .map(|p| p.strip_prefix(&base).unwrap().to_string_lossy().into_owned())
                    .collect();
                out.sort();
                out
            }
            // Directory markers (`dir/`) are how S3 keeps empty directories, not files.
            Some(s3) => s3.objects().await.into_iter().filter(|k| !k.ends_with('/')).collect(),
        }
    }

    /// Uploads in progress or left behind: files in the local staging area plus, on S3,
    /// incomplete multipart uploads in the bucket.
    pub async fn pending_uploads(&self) -> usize {
        let local = local_staging_files(&self.store_root);
        match &self.s3 {
            None => local,
            Some(s3) => local + s3.bucket.multipart_uploads("").await.len(),
        }
    }

    /// Check that the object stored for `tenant` at `key` (holding `plaintext`) is encrypted
    /// at rest: in the local store, the sealed file is larger and holds no 64-byte run of the
    /// plaintext; on S3, the object is SSE-C encrypted with the tenant's key and the store
    /// refuses to serve it without that key (for a tenant without SSE-C: it exists).
    pub async fn assert_sealed(&self, tenant: &str, key: &str, plaintext: &[u8]) {
        match &self.s3 {
            None => {
                let path = self.store_root.join("objects").join(tenant).join(key);
                let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(stored.len() > plaintext.len(), "sealed object is larger than the plaintext");
                let mid = plaintext.len() / 2;
                let needle = &plaintext[mid..(mid + 64).min(plaintext.len())];
                assert!(!stored.windows(needle.len()).any(|w| w == needle), "plaintext found in the store");
            }
            Some(s3) => {
                let bucket_key = s3.key(tenant, key);
                match s3.sse_c_key(tenant) {
                    Some(sse) => {
                        let head = s3
                            .bucket
                            .head(&bucket_key, Some(sse))
                            .await
                            .unwrap_or_else(|e| panic!("{bucket_key} with the SSE-C key of {tenant}: {e:?}"));
                        assert_eq!(head.sse_customer_algorithm.as_deref(), Some("AES256"), "{bucket_key}: {head:?}");
                        let plain = s3.bucket.get(&bucket_key, None).await;
                        assert!(plain.is_err(), "{bucket_key} was served without its SSE-C key");
                    }
                    None => assert!(s3.bucket.exists(&bucket_key).await, "{bucket_key} is not in the bucket"),
                }
            }
        }
    }

    /// Poll [`TestGateway::pending_uploads`] until it is 0 or `within` is over; the last count.
    pub async fn wait_pending_uploads_gone(&self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let n = self.pending_uploads().await;
            if n == 0 || tokio::time::Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(if self.is_s3() { 200 } else { 20 })).await;
        }
    }

    /// A rustls client config trusting the test CA, restricted to `alpn`.
    pub fn client_tls(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        client_tls_trusting(&self.ca_pem, alpn)
    }

    /// Open a TLS connection (for raw tests such as a mid-upload disconnect).
    pub async fn connect_tls(&self, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(self.client_tls(alpn));
        connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap()
    }

    /// One request over a fresh connection; `http2` picks the protocol.
    pub async fn request(
        &self,
        http2: bool,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        let alpn: &[&[u8]] = if http2 { &[b"h2"] } else { &[b"http/1.1"] };
        let tls = self.connect_tls(alpn).await;
        let mut req = http::Request::builder().method(method).uri(self.url(path));
        if !http2 {
            req = req.header("host", format!("localhost:{}", self.addr.port()));
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).unwrap();
        let resp = if http2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply { status, headers, body }
    }

    /// Shorthand: HTTP/2 request as `user`.
    pub async fn call(&self, user: &str, method: &str, path: &str, body: Bytes) -> Reply {
        let token = self.token(user).to_owned();
        self.request(true, method, path, Some(&token), &[], body).await
    }

    /// Run the `curl` binary against this gateway; returns (exit code, stdout).
    pub async fn curl(&self, args: &[&str]) -> (i32, Vec<u8>) {
        let out = tokio::process::Command::new("curl")
            .arg("--silent")
            .arg("--show-error")
            .arg("--max-time")
            .arg("60")
            .arg("--cacert")
            .arg(&self.ca_pem)
            .args(args)
            .output()
            .await
            .expect("curl is installed");
        if !out.stderr.is_empty() {
            eprintln!("curl stderr: {}", String::from_utf8_lossy(&out.stderr));
        }
        (out.status.code().unwrap_or(-1), out.stdout)
    }

    /// The `gateway` binary, built by cargo for the workspace.
    pub fn gateway_bin() -> PathBuf {
        gateway_bin()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn local_staging_files(store_root: &Path) -> usize {
    std::fs::read_dir(store_root.join("staging")).map(|d| d.count()).unwrap_or(0)
}

/// Every file under `dir`, recursively (nothing when it does not exist).
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Random bytes for test files.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    use aws_lc_rs::rand::SecureRandom;
    aws_lc_rs::rand::SystemRandom::new().fill(&mut v).unwrap();
    v
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(gateway::digest::sha256(data))
}

/// The algorithm names listed in one section (`kex`, `enc`, …) of an ssh-audit JSON report.
pub fn ssh_audit_names(report: &serde_json::Value, section: &str) -> Vec<String> {
    report[section]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["algorithm"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Write `n` random bytes to `path`; returns their hex SHA-256.
pub fn write_random(path: &Path, n: usize) -> String {
    let data = random_bytes(n);
    std::fs::write(path, &data).unwrap();
    sha256_hex(&data)
}

/// Hex SHA-256 of a file.
pub fn sha_file(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// Run `python3 args…` within `limit`; returns its stdout, panics with its output on failure
/// or when it runs too long (the process is killed then).
pub async fn python(args: &[&str], limit: Duration) -> String {
    python_env(args, &[], limit).await
}

/// [`python`] with extra environment variables.
pub async fn python_env(args: &[&str], env: &[(&str, &str)], limit: Duration) -> String {
    let child = tokio::process::Command::new("python3")
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 is installed");
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("python {args:?} did not finish within {limit:?}"))
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "python {args:?} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

const PARAMIKO_PUT: &str = r#"
import sys, paramiko
port, key, local, remote = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(key))
paramiko.SFTPClient.from_transport(t).put(local, remote)
"#;

/// Upload `size` random bytes as `remote` with paramiko (user alice, key `key`), using
/// `dir` for the local file and script.
pub async fn paramiko_put(port: u16, key: &Path, dir: &Path, size: usize, remote: &str) {
    let local = dir.join("put-src");
    std::fs::write(&local, random_bytes(size)).unwrap();
    let script = dir.join("put.py");
    std::fs::write(&script, PARAMIKO_PUT).unwrap();
    let args = [script.to_str().unwrap(), &port.to_string(), key.to_str().unwrap(), local.to_str().unwrap(), remote];
    python(&args, Duration::from_secs(120)).await;
}

/// Path of the `gateway` binary next to the test executable's target dir.
pub fn gateway_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/test-xxxx -> target/<profile>/gateway
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("gateway");
    assert!(bin.exists(), "{} not built; run `cargo build -p gateway` first", bin.display());
    bin
}

/// Make an OpenSSH key pair with `ssh-keygen` (`kind`: ed25519 or rsa).
pub fn ssh_keygen(path: &Path, kind: &str) {
    let mut cmd = std::process::Command::new("ssh-keygen");
    cmd.args(["-q", "-N", "", "-C", "test", "-t", kind, "-f"]).arg(path);
    if kind == "rsa" {
        cmd.args(["-b", "3072"]);
    }
    let st = cmd.stdin(std::process::Stdio::null()).status().expect("ssh-keygen is installed");
    assert!(st.success(), "ssh-keygen failed");
}

impl TestGateway {
    /// Port of the SFTP listener.
    pub fn sftp_port(&self) -> u16 {
        self.sftp_addr.expect("started with .sftp()").port()
    }

    /// OpenSSH client options for this gateway, without an identity: no host key prompts,
    /// no agent, only the identities named with `-i`.
    pub fn ssh_base_options(&self) -> Vec<String> {
        let mut o = Vec::new();
        for opt in ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "BatchMode=yes", "IdentitiesOnly=yes"] {
            o.push("-o".into());
            o.push(opt.into());
        }
        o.push("-P".into());
        o.push(self.sftp_port().to_string());
        o
    }

    /// Common OpenSSH client options for talking to this gateway as `user`.
    pub fn ssh_options(&self, user: &str) -> Vec<String> {
        let mut o = self.ssh_base_options();
        o.extend(["-o".into(), "LogLevel=ERROR".into(), "-i".into(), self.user_keys[user].display().to_string()]);
        o
    }

    /// An interactive `sftp` session as `user` that sends no command: stdin is kept open
    /// (take it from the child), stderr is piped, and the process dies with the handle.
    pub fn idle_sftp_session(&self, user: &str) -> tokio::process::Child {
        tokio::process::Command::new("sftp")
            .args(self.ssh_options(user))
            .arg(format!("{user}@127.0.0.1"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("sftp is installed")
    }

    /// Run OpenSSH `sftp -b -` with `batch` on stdin as `user`; returns (success, stdout+stderr).
    pub async fn sftp_batch(&self, user: &str, batch: &str, extra: &[&str]) -> (bool, String) {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new("sftp");
        cmd.args(self.ssh_options(user)).args(extra).arg("-b").arg("-").arg(format!("{user}@127.0.0.1"));
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("sftp is installed");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(batch.as_bytes()).await.unwrap();
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("sftp timed out")
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

/// `gateway serve` as a process on files that outlive it (restarts, crashes), with its log.
pub mod served;

/// A rustls client config trusting the CA certificates in `ca_pem`, restricted to `alpn`.
pub fn client_tls_trusting(ca_pem: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}
