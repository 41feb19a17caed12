//! Typed configuration of the gateway.
//!
//! The gateway reads one TOML file at start-up. This crate turns that text
//! into typed values (socket addresses, durations, enums, normalised paths)
//! exactly once, so the rest of the gateway never re-parses strings, and it
//! reports *every* problem in one pass, each with the path of the offending
//! field (`https.listen`, `users[1].tenant`, ...), so an operator fixes the
//! whole file in one round trip instead of one error per restart.
//!
//! Unknown keys are errors at every level: a misspelt security setting must
//! not be silently ignored. The crate is pure text-to-types; file-system
//! checks (does the certificate exist, are key permissions tight) belong to
//! the gateway.
//!
//! [`add_authorized_key`] is the one writer: it edits a configuration text in
//! place (keeping comments and layout) for the `gateway users add-key` command.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

mod accounts;
mod cidr;
mod duration;
mod edit;
mod size;
mod ssh;
mod text;
mod walk;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use accounts::{parse_rfc3339, AccountsConfig, UserAccount, DEFAULT_DORMANT_AFTER};
pub use cidr::{canonical as canonical_ip, mask as mask_ip, Cidr};
pub use duration::parse_duration;
pub use edit::add_authorized_key;
pub use size::parse_size;

/// Parses configuration text leniently, so callers see every problem at once.
///
/// `origin` names the source (usually the file path) and is copied into each
/// error. Fields that are missing or invalid fall back to their defaults and
/// entries whose identity or scope cannot be established (a tenant or user
/// with a bad name, a user with an unknown tenant or a bad home, a token with
/// a bad id or hash) are left out, so the returned `Config` is only
/// trustworthy when the error list is empty. A missing or invalid `mode`
/// falls back to [`Mode::Production`], which generates nothing.
pub fn parse(text: &str, origin: &str) -> (Config, Vec<ConfigError>) {
    walk::parse(text, origin)
}

/// Reads and parses a configuration file, failing if anything is wrong.
///
/// This is the strict entry point the gateway uses at start-up: a read error
/// becomes one [`ConfigError`] with an empty path naming the file, and any
/// parse or validation error makes the whole load fail.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            return Err(ConfigErrors(vec![ConfigError {
                origin: origin.clone(),
                path: String::new(),
                message: format!("cannot read configuration file {origin}: {err}"),
            }]));
        }
    };
    let (config, errors) = parse(&text, &origin);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// One problem in the configuration, located precisely so it can be fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the text came from (usually the file path), so messages stand alone.
    pub origin: String,
    /// Field path such as `users[1].tenant`; empty for whole-file problems.
    pub path: String,
    /// What is wrong and, where useful, what would be accepted.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a configuration, so they can be reported together.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, err) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{err}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The whole gateway configuration, already validated and typed.
#[derive(Debug, Clone)]
pub struct Config {
    /// Whether development conveniences (generated keys and certs) are allowed.
    pub mode: Mode,
    /// Base directory from which default paths are derived (`./data` by default).
    pub data_dir: PathBuf,
    /// How long in-flight transfers may finish after a shutdown signal (default 30s).
    pub shutdown_grace: Duration,
    /// The HTTPS front end.
    pub https: HttpsConfig,
    /// Where and how file contents are stored.
    pub storage: StorageConfig,
    /// Named remote stores (`[[storages]]`) that tenants may live on instead of the local one.
    pub storages: Vec<NamedStorage>,
    /// The tamper-evident audit trail.
    pub audit: AuditConfig,
    /// Isolated storage namespaces, each with its own key.
    pub tenants: Vec<TenantConfig>,
    /// Accounts allowed to log in, each confined to one tenant.
    pub users: Vec<UserConfig>,
    /// The SFTP (SSH) front end; `None` when the `[sftp]` section is absent.
    pub sftp: Option<SftpConfig>,
    /// The admin listener (metrics, health); `None` when the `[admin]` section is absent.
    pub admin: Option<AdminConfig>,
    /// Settings that only make sense in development mode.
    pub development: DevelopmentConfig,
    /// The defender shared by both listeners: scores misbehaving sources, bans them.
    pub defender: DefenderConfig,
    /// The security alert sink; `None` when the `[alerts]` section is absent.
    pub alerts: Option<AlertsConfig>,
    /// Where enrolled TOTP secrets live (`[mfa]`, defaults under `data_dir/mfa`).
    pub mfa: MfaConfig,
    /// Account lifecycle (`[accounts]`): dormancy and where the login state is kept.
    pub accounts: AccountsConfig,
}

/// `[mfa]`: where `gateway users mfa enroll` keeps the users' TOTP secrets, encrypted
/// (AES-256-GCM) under `key_file`. The secrets are never in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaConfig {
    /// 32-byte key (64 hex characters, mode 0600) that seals the secrets; created by the
    /// first enrolment (default `data_dir/mfa/mfa.key`).
    pub key_file: PathBuf,
    /// One sealed file per enrolled user (default `data_dir/mfa/secrets`).
    pub secrets_dir: PathBuf,
    /// The issuer shown by authenticator apps (`otpauth://` URI), default `gateway`.
    pub issuer: String,
}

/// A user's second factor (`mfa` of a `[[users]]` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MfaMethod {
    /// TOTP (RFC 6238), HMAC-SHA-256: `mfa = "totp"`.
    TotpSha256,
    /// TOTP with HMAC-SHA-1, for authenticator apps that support nothing else:
    /// `mfa = "totp-sha1"`.
    TotpSha1,
}

/// `[alerts]`: security alerts (incident notices) posted to an HTTPS webhook, signed with
/// HMAC-SHA256, kept in a durable outbox under `data_dir` until the receiver takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    /// Where alerts are posted: `https://host[:port]/path` (plain `http://` only to a
    /// loopback address).
    pub webhook_url: String,
    /// File holding the HMAC-SHA256 key (at least 32 characters, mode 0600).
    pub hmac_key_file: PathBuf,
    /// PEM bundle of the CAs that may issue the receiver's certificate (default: the
    /// system's roots).
    pub ca_file: Option<PathBuf>,
    /// Longest one delivery attempt may take (default 10s).
    pub timeout: Duration,
    /// Most alerts the outbox holds while the receiver is away (default 1000, 1 to 100000);
    /// past it the oldest of the least severe are dropped, counted and logged.
    pub max_outbox: usize,
    /// Alerts below this severity are not raised (default `info`).
    pub min_severity: AlertSeverity,
    /// Authentication failures from one source within `auth_failure_window` that raise an
    /// `auth_failure_threshold` alert (default 5, as fail2ban; 1 to 10000).
    pub auth_failure_threshold: u32,
    /// The window of `auth_failure_threshold` (default 10m).
    pub auth_failure_window: Duration,
    /// Also send each alert to syslog (RFC 5424, facility authpriv), best effort.
    pub syslog: Option<SyslogTarget>,
}

/// Where `[alerts] syslog` sends: `unix:/dev/log` or `udp:host-ip:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    /// A local datagram socket (`/dev/log`).
    Unix(PathBuf),
    /// A syslog collector over UDP.
    Udp(SocketAddr),
}

/// How urgent an alert is; ordered, so `min_severity` filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlertSeverity {
    /// Worth knowing; nothing is at risk.
    Info,
    /// Someone should look soon (an attack in progress, a refused rotation).
    Warning,
    /// Security or integrity is at stake now (audit trail down, encryption not confirmed).
    Critical,
}

impl AlertSeverity {
    /// The name used in the configuration and in alerts.
    pub fn name(self) -> &'static str {
        match self {
            AlertSeverity::Info => "info",
            AlertSeverity::Warning => "warning",
            AlertSeverity::Critical => "critical",
        }
    }
}

/// Deployment mode; a closed choice so that "production" can never be misspelt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Generates missing keys, certificates and a demo token for local use.
    Development,
    /// Generates nothing; every key and certificate must be provisioned.
    Production,
}

/// Settings of the HTTPS listener.
#[derive(Debug, Clone)]
pub struct HttpsConfig {
    /// Address to listen on (default `127.0.0.1:8443`).
    pub listen: SocketAddr,
    /// Which cipher-suite policy to offer clients.
    pub tls_profile: TlsProfile,
    /// PEM certificate chain, leaf first (default `data_dir/tls/server.pem`).
    pub cert: PathBuf,
    /// PEM private key of the leaf certificate (default `data_dir/tls/server.key`).
    pub key: PathBuf,
    /// Longest a TLS handshake may take before the connection is dropped (default 10s).
    pub handshake_timeout: Duration,
    /// Longest a connection or request body may sit idle (default 60s).
    pub idle_timeout: Duration,
    /// Cap on concurrent connections, to bound resource use (default 1024).
    pub max_connections: usize,
    /// Connections one source address may hold open at once, so one source cannot take
    /// every slot (slowloris); 0 = no cap (default 64, at most 1000000).
    pub max_connections_per_source: u32,
    /// New connections per second accepted from one source address (bursts of as many);
    /// 0 = unlimited (default 50, at most 10000).
    pub connection_rate_per_source: u32,
    /// `Strict-Transport-Security` max-age sent to browsers (default 365d).
    pub hsts_max_age: Duration,
    /// Client certificates (mTLS), when `[https.client_auth]` is configured.
    pub client_auth: Option<ClientAuthConfig>,
    /// Longest one connection may live, however busy (default 1h): a kept-alive client must
    /// reconnect and present its credential again, so a disabled account or a revoked
    /// certificate cannot ride an old connection for long.
    pub max_connection_duration: Duration,
}

/// `[https.client_auth]`: which client certificates the HTTPS listener asks for and trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuthConfig {
    /// Whether a client must present a certificate.
    pub mode: ClientAuthMode,
    /// PEM bundle of the CAs that issue client certificates.
    pub ca: PathBuf,
    /// Certificate revocation lists (PEM or DER), checked for the client's own certificate.
    pub crls: Vec<PathBuf>,
}

/// Whether the HTTPS listener requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// Asked for; a client without one still connects (and then needs a token). A certificate
    /// that is presented must verify.
    Optional,
    /// Every handshake must present a certificate that verifies.
    Required,
}

/// What ties a client certificate to a user (`users.client_certificates`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CertBinding {
    /// `sha256:<hex>`: the SHA-256 of the certificate (DER), colons optional.
    Sha256([u8; 32]),
    /// `cn:<name>`: the subject's common name.
    CommonName(String),
    /// `san:<name>`: a DNS name, e-mail address or URI among the subject alternative names.
    San(String),
}

impl CertBinding {
    /// Parse `sha256:…`, `cn:…` or `san:…`.
    pub fn parse(text: &str) -> Result<CertBinding, String> {
        let (kind, value) =
            text.split_once(':').ok_or_else(|| "expected sha256:<hex>, cn:<name> or san:<name>".to_owned())?;
        if value.is_empty() || value.len() > 1024 || value.chars().any(char::is_control) {
            return Err(format!("{kind}: value must be 1 to 1024 printable characters"));
        }
        match kind {
            "sha256" => {
                let hex: String = value.chars().filter(|c| *c != ':').collect();
                let mut out = [0u8; 32];
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err("sha256: expected 64 hex digits (colons allowed)".into());
                }
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
                }
                Ok(CertBinding::Sha256(out))
            }
            "cn" => Ok(CertBinding::CommonName(value.to_owned())),
            "san" => Ok(CertBinding::San(value.to_owned())),
            other => Err(format!("unknown binding kind {other:?} (accepted: sha256, cn, san)")),
        }
    }
}

impl fmt::Display for CertBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertBinding::Sha256(d) => {
                f.write_str("sha256:")?;
                d.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
            CertBinding::CommonName(n) => write!(f, "cn:{n}"),
            CertBinding::San(n) => write!(f, "san:{n}"),
        }
    }
}

/// TLS cipher-suite policy, named rather than listed so operators cannot weaken it piecemeal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsProfile {
    /// TLS 1.3 (and 1.2) with AES-256-GCM suites only (the default).
    Aes256,
    /// Broader suite list for older clients.
    Intermediate,
}

/// The admin listener: Prometheus `/metrics`, `/healthz`, `/readyz`, plain HTTP, meant for
/// loopback or a private network.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address to listen on (default `127.0.0.1:9090`).
    pub listen: SocketAddr,
    /// File holding a bearer token (0600) that `/metrics` then requires; the health
    /// endpoints stay open for load balancers.
    pub token_file: Option<PathBuf>,
}

/// `[defender]`: a score per source within a window; past the threshold the source is
/// banned (refused at accept, before TLS or SSH) for a time that doubles on each repeat.
#[derive(Debug, Clone)]
pub struct DefenderConfig {
    /// Whether sources are scored and banned at all (default true).
    pub enabled: bool,
    /// Score at which a source is banned (default 15, 1 to 100000).
    pub threshold: u32,
    /// Events older than this no longer count (default 10m).
    pub window: Duration,
    /// First ban (default 15m); each further offence doubles it, up to `ban_time_max`.
    pub ban_time: Duration,
    /// Longest ban (default 24h, at least `ban_time`).
    pub ban_time_max: Duration,
    /// Score added per event.
    pub weights: DefenderWeights,
    /// IPv6 sources are grouped by this prefix (default 64, 1 to 128).
    pub ipv6_prefix: u8,
    /// Sources never scored nor banned.
    pub safelist: Vec<Cidr>,
    /// Sources tracked at once (default 65536, 16 to 10000000); the oldest unbanned one
    /// makes room first.
    pub max_sources: usize,
}

/// Score per event kind (each 0 to 1000; 0 ignores the kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefenderWeights {
    /// A failed authentication for a user that exists (default 1).
    pub auth_failed_known_user: u32,
    /// A failed authentication for a user (or token id) that does not exist (default 2).
    pub auth_failed_unknown_user: u32,
    /// Malformed requests, traversal attempts, paths the user may not reach (default 3).
    pub protocol_abuse: u32,
    /// A connection refused by a per-source limit (default 1).
    pub limit_hit: u32,
    /// An SSH connection dropped before authenticating (default 1).
    pub pre_auth_disconnect: u32,
}

impl Default for DefenderWeights {
    fn default() -> DefenderWeights {
        DefenderWeights {
            auth_failed_known_user: 1,
            auth_failed_unknown_user: 2,
            protocol_abuse: 3,
            limit_hit: 1,
            pre_auth_disconnect: 1,
        }
    }
}

impl Default for DefenderConfig {
    fn default() -> DefenderConfig {
        DefenderConfig {
            enabled: true,
            threshold: 15,
            window: Duration::from_secs(600),
            ban_time: Duration::from_secs(900),
            ban_time_max: Duration::from_secs(86_400),
            weights: DefenderWeights::default(),
            ipv6_prefix: 64,
            safelist: Vec::new(),
            max_sources: 65_536,
        }
    }
}

/// Settings of the SFTP (SSH) listener, present only when `[sftp]` is configured.
#[derive(Debug, Clone)]
pub struct SftpConfig {
    /// Address to listen on (default `127.0.0.1:2222`).
    pub listen: SocketAddr,
    /// Host private keys, non-empty and without duplicates (default
    /// `data_dir/ssh/ssh_host_ed25519_key` and `data_dir/ssh/ssh_host_rsa_key`).
    pub host_keys: Vec<PathBuf>,
    /// Algorithms offered to clients, in preference order: the named `profile` (default
    /// `strict`), with any explicit `kex`/`ciphers`/`macs`/`host_key_algorithms` list
    /// replacing the profile's list for that category.
    pub algorithms: SshAlgorithms,
    /// Longest a client may take to authenticate after connecting (default 30s, more than 0).
    pub login_grace_time: Duration,
    /// Authentication attempts allowed per connection (default 6, 1 to 20).
    pub max_auth_attempts: u32,
    /// Constant delay before every authentication rejection, to slow guessing (default 1s).
    pub auth_rejection_delay: Duration,
    /// Longest a session may sit idle before it is closed (default 10m, more than 0).
    pub idle_timeout: Duration,
    /// Cap on concurrent SSH connections, to bound resource use (default 256, 1 to 100000).
    pub max_connections: usize,
    /// SSH connections one source address may hold open at once; 0 = no cap (default 32,
    /// at most 100000).
    pub max_connections_per_source: u32,
    /// New connections per second accepted from one source address (and at most that many
    /// at once),
    /// against floods of expensive key exchanges (DHEat, CVE-2002-20001); 0 = unlimited
    /// (default 10, at most 10000).
    pub connection_rate_per_source: u32,
    /// Bytes one connection may hold on the client's behalf: queued requests and writes
    /// parked out of order (default 16MiB, at least 1MiB). When it is spent the connection's
    /// sessions stop reading; parked writes that do not fit fail their handle.
    pub max_buffer_per_connection: usize,
    /// The same for all connections together (default: a quarter of the machine's memory).
    pub max_buffer_total: Option<usize>,
    /// Longest one SSH connection may live, however busy (default 8h: a working day, so a
    /// login is re-checked at least daily).
    pub max_session_duration: Duration,
}

/// Named SSH algorithm profile of an `[sftp]` listener (`profile`), as AWS Transfer Family
/// names its security policies: a choice operators can reason about, with explicit lists
/// still able to override one category each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshProfile {
    /// AEAD ciphers only, ETM MACs, classical and hybrid post-quantum kex (the default).
    Strict,
    /// `strict` plus AES-CTR ciphers with SHA-2 HMACs (ETM first), for libssh2 before 1.11
    /// (curl, PHP ssh2) and appliances; still no SHA-1, CBC, `ssh-rsa` or DH group 14-SHA1.
    Compatible,
    /// `strict` with the hybrid ML-KEM key exchange only (OpenSSH 9.9 and later).
    PostQuantum,
}

impl SshProfile {
    /// Every profile, in the order documented.
    pub const ALL: [SshProfile; 3] = [SshProfile::Strict, SshProfile::Compatible, SshProfile::PostQuantum];

    /// The name used in the configuration (`profile = "..."`).
    pub fn name(self) -> &'static str {
        match self {
            SshProfile::Strict => "strict",
            SshProfile::Compatible => "compatible",
            SshProfile::PostQuantum => "post-quantum",
        }
    }

    /// The profile's own lists, none overridden.
    pub fn algorithms(self) -> SshAlgorithms {
        let owned = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
        SshAlgorithms {
            profile: self,
            kex: owned(ssh::KEX.defaults(self)),
            ciphers: owned(ssh::CIPHERS.defaults(self)),
            macs: owned(ssh::MACS.defaults(self)),
            host_key_algorithms: owned(ssh::HOST_KEY_ALGORITHMS.defaults(self)),
            explicit: ExplicitAlgorithms::default(),
        }
    }
}

impl fmt::Display for SshProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// SSH algorithm names offered to clients, each list in preference order: the profile's
/// lists, except where `[sftp]` sets a list explicitly.
///
/// Only names from a vetted allow-list are accepted, so no list can contain
/// SHA-1, CBC, RC4, MD5 or `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshAlgorithms {
    /// The profile the lists start from.
    pub profile: SshProfile,
    /// Key-exchange methods (hybrid post-quantum ML-KEM first).
    pub kex: Vec<String>,
    /// Ciphers (AEAD first; the `-ctr` ones are paired with a MAC).
    pub ciphers: Vec<String>,
    /// MACs, used only with non-AEAD ciphers.
    pub macs: Vec<String>,
    /// Signature algorithms the server proves its host key with.
    pub host_key_algorithms: Vec<String>,
    /// Which lists were set explicitly, overriding the profile's.
    pub explicit: ExplicitAlgorithms,
}

/// Which algorithm lists `[sftp]` sets itself (`true`) rather than taking from the profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExplicitAlgorithms {
    /// `kex` is set.
    pub kex: bool,
    /// `ciphers` is set.
    pub ciphers: bool,
    /// `macs` is set.
    pub macs: bool,
    /// `host_key_algorithms` is set.
    pub host_key_algorithms: bool,
}

impl SshAlgorithms {
    /// The default lists (the `strict` profile): post-quantum hybrid key exchange
    /// preferred, classical Curve25519/large-group DH kept for clients older than
    /// OpenSSH 9.9.
    pub fn defaults() -> Self {
        SshProfile::Strict.algorithms()
    }

    /// What this listener would offer under `profile`, keeping the explicit lists: used to
    /// tell an operator which profile would admit a client that failed to negotiate.
    pub fn with_profile(&self, profile: SshProfile) -> SshAlgorithms {
        let base = profile.algorithms();
        let pick = |explicit: bool, own: &Vec<String>, other: Vec<String>| if explicit { own.clone() } else { other };
        let e = self.explicit;
        SshAlgorithms {
            profile,
            kex: pick(e.kex, &self.kex, base.kex),
            ciphers: pick(e.ciphers, &self.ciphers, base.ciphers),
            macs: pick(e.macs, &self.macs, base.macs),
            host_key_algorithms: pick(e.host_key_algorithms, &self.host_key_algorithms, base.host_key_algorithms),
            explicit: e,
        }
    }
}

/// Where encrypted file contents and tenant keys live.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The storage backend holding encrypted objects.
    pub backend: StorageBackend,
    /// Directory holding tenant keys by default (default `data_dir/keys`).
    pub keys_dir: PathBuf,
    /// Largest object a client may upload, in bytes: bounds what one transfer can take
    /// from the disk (`max_object_size`, default "64GiB", at least 1B).
    pub max_object_size: u64,
    /// Which characters a client's file and directory names may not hold, beyond the ones
    /// always refused (`refuse_in_names`, default "invisible").
    pub refuse_in_names: NameRefusal,
}

/// `[storage] refuse_in_names`: characters that make a name display as something it is not
/// (`a<U+202E>gnp.exe` shows as "aexe.png"). Control characters, `/`, `\`, `.` and `..`
/// are refused whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameRefusal {
    /// `"invisible"`: every Unicode Default_Ignorable_Code_Point (bidirectional controls,
    /// zero-width characters, the BOM, variation selectors, tags, fillers).
    #[default]
    Invisible,
    /// `"bidi"`: only the bidirectional controls (U+061C, U+200E, U+200F, U+202A–U+202E,
    /// U+2066–U+2069), for deployments whose names need zero-width joiners (Persian,
    /// Indic scripts) or emoji variation selectors.
    Bidi,
    /// `"none"`: nothing beyond the characters always refused.
    Nothing,
}

/// Storage backends; an enum so each backend carries exactly its own settings.
#[derive(Debug, Clone)]
pub enum StorageBackend {
    /// Files on a local file system.
    Local {
        /// Root directory of the store (default `data_dir/store`).
        root: PathBuf,
    },
}

/// Settings of the append-only, signed audit trail.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// JSON-lines audit log (default `data_dir/audit/audit.jsonl`).
    pub path: PathBuf,
    /// Key used to sign checkpoints (default `data_dir/audit/checkpoint.key`).
    pub signing_key: PathBuf,
    /// Write a signed checkpoint after this many records (default 1000, at least 1).
    pub checkpoint_every_records: u64,
    /// Also write a checkpoint at least this often (default 60s, more than 0).
    pub checkpoint_interval: Duration,
    /// Longest a request waits for its audit record to be written (default 10s, more than
    /// 0); past it the request fails (HTTPS 503, SFTP failure) and nothing is changed.
    pub append_timeout: Duration,
    /// Authentication failures written one by one per source and window; beyond it they are
    /// counted into one summary record per source and window (default 10, 1 to 100000).
    pub auth_failures_per_source: u32,
    /// The window of `auth_failures_per_source` (default 60s).
    pub auth_failure_window: Duration,
    /// Shipping of sealed segments to an audit bucket, when `[audit.ship]` is configured.
    pub ship: Option<AuditShipConfig>,
}

/// `[audit.ship]`: each node copies its trail, a sealed segment at a time (records up to a
/// signed checkpoint), into an S3 bucket; `gateway audit verify-shipped` checks the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditShipConfig {
    /// The `[[storages]]` entry whose endpoint and credentials are used.
    pub storage: String,
    /// Bucket (default: that storage's bucket). A bucket of its own is better: with Object
    /// Lock enabled, and writable only by the gateways.
    pub bucket: Option<String>,
    /// Key prefix (default `audit/`); segments go to `<prefix><node>/<first>-<last>.jsonl`.
    pub prefix: String,
    /// This node's name in the keys (default: the host name).
    pub node: Option<String>,
    /// How often new sealed records are looked for (default 60s).
    pub interval: Duration,
    /// Object Lock retention put on every segment, if set.
    pub retention: Option<Retention>,
}

/// S3 Object Lock retention for shipped segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `compliance` (nobody can shorten it) or `governance`.
    pub mode: RetentionMode,
    /// Days from the upload.
    pub days: u32,
}

/// S3 Object Lock modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionMode {
    /// Nobody, root included, can delete the version or shorten its retention.
    Compliance,
    /// Users with a special permission can.
    Governance,
}

/// One `[[storages]]` entry: a remote store tenants can name.
#[derive(Debug, Clone)]
pub struct NamedStorage {
    /// The name tenants refer to (`tenants[].storage`).
    pub name: String,
    /// Its settings.
    pub s3: S3Storage,
}

/// An S3 (or S3-compatible) bucket.
#[derive(Debug, Clone)]
pub struct S3Storage {
    /// Bucket name (3 to 63 lowercase letters, digits, `-` and `.`).
    pub bucket: String,
    /// Signing region (e.g. `eu-west-1`; Garage: `garage`).
    pub region: String,
    /// Endpoint of an S3-compatible store; `https://` (plain `http://` only to a loopback
    /// address). `None` for AWS itself.
    pub endpoint_url: Option<String>,
    /// Address buckets in the path (`host/bucket/key`) rather than as a subdomain.
    pub force_path_style: bool,
    /// Where the credentials come from.
    pub credentials: S3Credentials,
    /// Bytes per multipart part (default 16MiB, 5MiB to 5GiB); also the single-PUT threshold.
    /// Grows per upload when an object would need more than 10,000 parts.
    pub part_size: u64,
    /// Parts uploaded concurrently per upload (default 4, 1 to 64): an upload holds at most
    /// `part_size × parts_in_flight` bytes.
    pub parts_in_flight: usize,
    /// Longest a TCP/TLS connect to the store may take (default 5s).
    pub connect_timeout: Duration,
    /// Longest one request attempt may take (default 60s): a stalled store fails the transfer.
    pub request_timeout: Duration,
    /// Attempts per request on transient failures (default 3, 1 to 10): every S3 call the
    /// gateway makes is idempotent (puts of a part or object, gets, heads, lists, copies,
    /// deletes, completes) except `CreateMultipartUpload`, which is never retried.
    pub max_attempts: u32,
    /// Multipart uploads of the gateway's older than this are aborted at start (default 24h).
    pub orphan_upload_age: Duration,
}

/// S3 credentials: the standard AWS chain, or files holding the secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Credentials {
    /// Environment, shared profile, web identity, container and instance metadata.
    Chain,
    /// `access_key_id_file` and `secret_access_key_file` (and `session_token_file`).
    Files {
        /// File holding the access key id.
        access_key_id: PathBuf,
        /// File holding the secret access key (must not be readable by group or others).
        secret_access_key: PathBuf,
        /// File holding a session token, for temporary credentials.
        session_token: Option<PathBuf>,
    },
}

/// Where a tenant's objects live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantStorage {
    /// The local store of `[storage]`, sealed with the tenant's key.
    Local,
    /// A `[[storages]]` bucket under a key prefix, encrypted by the store.
    S3 {
        /// The `[[storages]]` name.
        storage: String,
        /// Key prefix of the tenant's objects, ending in `/` (default `<tenant>/`).
        prefix: String,
        /// Server-side encryption of every object.
        sse: Sse,
        /// Also seal objects in the gateway with the tenant key (`seal = true`) before they
        /// reach the bucket: then only the gateway can read them.
        seal: bool,
    },
}

/// Server-side encryption modes for S3 tenants (there is no unencrypted mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    /// `AES256`: keys managed by the store (the default).
    S3,
    /// `aws:kms` under the tenant's own KMS key.
    Kms {
        /// KMS key id or ARN.
        key_id: String,
        /// Use an S3 bucket key (fewer KMS calls).
        bucket_key: bool,
    },
    /// SSE-C: a 256-bit key of the tenant's, sent with every request, never stored by S3.
    C {
        /// File holding the key: 32 raw bytes or their base64 (mode 0600).
        key_file: PathBuf,
    },
}

/// One tenant: an isolated namespace encrypted under its own key.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// Tenant name, validated to be safe in paths and logs.
    pub name: String,
    /// Key file of the tenant (default `keys_dir/<name>.key`).
    pub key_file: PathBuf,
    /// Where the tenant's objects live (default: the local store).
    pub storage: TenantStorage,
}

/// One user account and what it may do.
#[derive(Debug, Clone)]
pub struct UserConfig {
    /// Login name, validated to be safe in paths and logs.
    pub name: String,
    /// Name of the (configured) tenant the user belongs to.
    pub tenant: String,
    /// Directory inside the tenant the user is confined to, normalised
    /// (no leading or trailing `/`); empty means the whole tenant.
    pub home: String,
    /// Operations the user may perform.
    pub permissions: Permissions,
    /// Bearer tokens accepted for this user, stored only as hashes.
    pub tokens: Vec<TokenConfig>,
    /// SSH public keys (OpenSSH `authorized_keys` lines, trimmed, without
    /// options) accepted for this user; the gateway parses the keys itself.
    pub authorized_keys: Vec<String>,
    /// PBKDF2 password hash; password login is enabled only when this is set.
    pub password_hash: Option<PasswordHash>,
    /// Client certificates that are this user's (`sha256:`, `cn:`, `san:`). A user with any
    /// must present one of them on HTTPS; one alone also logs the user in.
    pub client_certificates: Vec<CertBinding>,
    /// Second factor required at login (`mfa = "totp"`), `None` for none.
    pub mfa: Option<MfaMethod>,
    /// When and from where the account may log in (`disabled`, `expires_at`,
    /// `allowed_sources`).
    pub account: UserAccount,
}

/// A password hash `pbkdf2-sha256$<iterations>$<salt base64>$<hash base64>`,
/// shape-checked at load; its `Debug` never prints the value.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Checks the shape (scheme, iterations of at least 100000, non-empty
    /// base64 salt and hash); the error message never echoes the value.
    pub fn parse(s: &str) -> Result<Self, String> {
        ssh::check_password_hash(s)?;
        Ok(PasswordHash(s.to_owned()))
    }

    /// The full hash string, for the gateway's verifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<set>")
    }
}

/// Operations a user may perform, as flags so checks are cheap and explicit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Permissions {
    /// List directory contents.
    pub list: bool,
    /// Download files.
    pub read: bool,
    /// Upload or overwrite files.
    pub write: bool,
    /// Delete files and empty directories.
    pub delete: bool,
    /// Rename or move entries.
    pub rename: bool,
    /// Create directories.
    pub mkdir: bool,
}

impl Permissions {
    /// Names of the granted permissions in canonical order, for display and logs.
    pub fn names(&self) -> Vec<&'static str> {
        [
            ("list", self.list),
            ("read", self.read),
            ("write", self.write),
            ("delete", self.delete),
            ("rename", self.rename),
            ("mkdir", self.mkdir),
        ]
        .into_iter()
        .filter_map(|(name, granted)| granted.then_some(name))
        .collect()
    }
}

/// A bearer token, stored as the SHA-256 of the secret so the file holds no secrets.
#[derive(Clone)]
pub struct TokenConfig {
    /// Public identifier of the token, unique across all users (for audit and revocation).
    pub id: String,
    /// SHA-256 digest of the token secret.
    pub sha256: [u8; 32],
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig").field("id", &self.id).field("sha256", &format_args!("<redacted>")).finish()
    }
}

/// Development-only conveniences; refused in production.
#[derive(Debug, Clone, Default)]
pub struct DevelopmentConfig {
    /// User for whom a demo token is generated (written to `data_dir/dev/demo.token`).
    pub demo_user: Option<String>,
}
