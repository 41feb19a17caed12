//! Walks the parsed TOML tree by hand, building typed values and collecting
//! every error with its field path instead of stopping at the first one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

use crate::duration::{parse_duration, DURATION_FORMAT};
use crate::ssh::{self, AlgorithmKind};
use crate::text::{check_name, normalize_home, parse_sha256};
use crate::{
    AdminConfig, AlertSeverity, AlertsConfig, AuditConfig, AuditShipConfig, CertBinding, Cidr, ClientAuthConfig,
    ClientAuthMode, Config, ConfigError, DefenderConfig, DefenderWeights, DevelopmentConfig, ExplicitAlgorithms,
    HttpsConfig, Mode, NamedStorage, PasswordHash, Permissions, Retention, RetentionMode, S3Credentials, S3Storage,
    SftpConfig, Sse, SshAlgorithms, SshProfile, StorageBackend, StorageConfig, SyslogTarget, TenantConfig,
    TenantStorage, TlsProfile, TokenConfig, UserConfig,
};

const TOP_KEYS: &[&str] = &[
    "mode",
    "data_dir",
    "shutdown_grace",
    "https",
    "sftp",
    "admin",
    "storage",
    "storages",
    "audit",
    "tenants",
    "users",
    "development",
    "defender",
    "alerts",
    "mfa",
    "accounts",
];
const ACCOUNTS_KEYS: &[&str] = &["dormant_after", "state_dir"];
const MFA_KEYS: &[&str] = &["key_file", "secrets_dir", "issuer"];
const MFA_METHODS: &[(&str, crate::MfaMethod)] =
    &[("totp", crate::MfaMethod::TotpSha256), ("totp-sha1", crate::MfaMethod::TotpSha1)];
const ALERTS_KEYS: &[&str] = &[
    "webhook_url",
    "hmac_key_file",
    "ca_file",
    "timeout",
    "max_outbox",
    "min_severity",
    "auth_failure_threshold",
    "auth_failure_window",
    "syslog",
];
const ALERT_SEVERITIES: &[(&str, AlertSeverity)] =
    &[("info", AlertSeverity::Info), ("warning", AlertSeverity::Warning), ("critical", AlertSeverity::Critical)];
const HTTPS_KEYS: &[&str] = &[
    "listen",
    "tls_profile",
    "cert",
    "key",
    "handshake_timeout",
    "idle_timeout",
    "max_connections",
    "max_connections_per_source",
    "connection_rate_per_source",
    "hsts_max_age",
    "client_auth",
    "max_connection_duration",
];
const CLIENT_AUTH_KEYS: &[&str] = &["mode", "ca", "crls"];
const CLIENT_AUTH_MODES: &[(&str, ClientAuthMode)] =
    &[("optional", ClientAuthMode::Optional), ("required", ClientAuthMode::Required)];
const ADMIN_KEYS: &[&str] = &["listen", "token_file"];
const STORAGE_KEYS: &[&str] = &["backend", "root", "keys_dir", "max_object_size", "refuse_in_names"];
const NAME_REFUSALS: &[(&str, crate::NameRefusal)] = &[
    ("invisible", crate::NameRefusal::Invisible),
    ("bidi", crate::NameRefusal::Bidi),
    ("none", crate::NameRefusal::Nothing),
];
const AUDIT_KEYS: &[&str] = &[
    "path",
    "signing_key",
    "checkpoint_every_records",
    "checkpoint_interval",
    "append_timeout",
    "ship",
    "auth_failures_per_source",
    "auth_failure_window",
];
const AUDIT_SHIP_KEYS: &[&str] =
    &["storage", "bucket", "prefix", "node", "interval", "retention_days", "retention_mode"];
const RETENTION_MODES: &[(&str, RetentionMode)] =
    &[("compliance", RetentionMode::Compliance), ("governance", RetentionMode::Governance)];
const TENANT_KEYS: &[&str] =
    &["name", "key_file", "storage", "prefix", "sse", "kms_key_id", "bucket_key", "sse_c_key_file", "seal"];
const STORAGES_KEYS: &[&str] = &[
    "name",
    "backend",
    "bucket",
    "region",
    "endpoint_url",
    "force_path_style",
    "access_key_id_file",
    "secret_access_key_file",
    "session_token_file",
    "part_size",
    "parts_in_flight",
    "connect_timeout",
    "request_timeout",
    "max_attempts",
    "orphan_upload_age",
];
const SSE_MODES: &[&str] = &["sse-s3", "sse-kms", "sse-c"];
/// S3's own limits on a part.
const MIN_PART: u64 = 5 << 20;
const MAX_PART: u64 = 5 << 30;
const SFTP_KEYS: &[&str] = &[
    "listen",
    "host_keys",
    "profile",
    "kex",
    "ciphers",
    "macs",
    "host_key_algorithms",
    "login_grace_time",
    "max_auth_attempts",
    "auth_rejection_delay",
    "idle_timeout",
    "max_connections",
    "max_connections_per_source",
    "connection_rate_per_source",
    "max_buffer_per_connection",
    "max_buffer_total",
    "max_session_duration",
];
const USER_KEYS: &[&str] = &[
    "name",
    "tenant",
    "home",
    "permissions",
    "tokens",
    "authorized_keys",
    "password_hash",
    "client_certificates",
    "mfa",
    "disabled",
    "expires_at",
    "allowed_sources",
];
const TOKEN_KEYS: &[&str] = &["id", "sha256"];
const DEVELOPMENT_KEYS: &[&str] = &["demo_user"];
const DEFENDER_KEYS: &[&str] = &[
    "enabled",
    "threshold",
    "window",
    "ban_time",
    "ban_time_max",
    "weights",
    "ipv6_prefix",
    "safelist",
    "max_sources",
];
const WEIGHT_KEYS: &[&str] =
    &["auth_failed_known_user", "auth_failed_unknown_user", "protocol_abuse", "limit_hit", "pre_auth_disconnect"];

const MODES: &[(&str, Mode)] = &[("development", Mode::Development), ("production", Mode::Production)];
const TLS_PROFILES: &[(&str, TlsProfile)] =
    &[("aes256", TlsProfile::Aes256), ("intermediate", TlsProfile::Intermediate)];
const SSH_PROFILES: &[(&str, SshProfile)] = &[
    ("strict", SshProfile::Strict),
    ("compatible", SshProfile::Compatible),
    ("post-quantum", SshProfile::PostQuantum),
];

/// Backend names, resolved before their backend-specific settings are read.
#[derive(Clone, Copy)]
enum BackendKind {
    Local,
}
const BACKENDS: &[(&str, BackendKind)] = &[("local", BackendKind::Local)];

const PERMISSION_NAMES: &[&str] = &["list", "read", "write", "delete", "rename", "mkdir", "all"];

const MAX_CONNECTIONS: i64 = 1_000_000;
const MAX_SFTP_CONNECTIONS: i64 = 100_000;
const MAX_AUTH_ATTEMPTS: i64 = 20;

/// Entry point behind [`crate::parse`].
pub(crate) fn parse(text: &str, origin: &str) -> (Config, Vec<ConfigError>) {
    let mut ctx = Ctx { origin, errors: Vec::new() };
    match text.parse::<Table>() {
        Ok(root) => {
            let config = ctx.config(&root);
            (config, ctx.errors)
        }
        Err(err) => {
            // Nothing below the syntax error is trustworthy: report it alone
            // and hand back pure defaults.
            let mut scratch = Ctx { origin, errors: Vec::new() };
            let config = scratch.config(&Table::new());
            ctx.err("", syntax_message(text, &err));
            (config, ctx.errors)
        }
    }
}

/// Renders a TOML syntax error on one line with its line and column.
fn syntax_message(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().lines().map(str::trim).collect::<Vec<_>>().join("; ");
    match err.span().and_then(|span| text.get(..span.start)) {
        Some(before) => {
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("invalid TOML at line {line}, column {column}: {message}")
        }
        None => format!("invalid TOML: {message}"),
    }
}

/// Path of `key` inside the table at `path`; odd keys are quoted as in TOML.
fn child(path: &str, key: &str) -> String {
    let bare = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare { key.to_owned() } else { format!("{key:?}") };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// Path of element `i` of the array at `path`.
fn item(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Describes a value's TOML type for "expected X, found Y" messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Names for "configured: a, b" style hints.
fn listing<'a>(names: impl Iterator<Item = &'a String>) -> String {
    names.map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// Whether two listeners would fight over the same port: same port (not the
/// ephemeral 0) and the same IP, or either bound to the wildcard address.
fn listens_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Error collector plus typed accessors that record problems as they go.
struct Ctx<'o> {
    origin: &'o str,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            origin: self.origin.to_owned(),
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn wrong_type(&mut self, path: &str, expected: &str, found: &Value) {
        self.err(path, format!("expected {expected}, found {}", type_name(found)));
    }

    fn missing(&mut self, path: &str, key: &str, hint: &str) {
        self.err(&child(path, key), format!("missing required key {key:?}{hint}"));
    }

    fn check_keys(&mut self, table: &Table, path: &str, accepted: &[&str]) {
        for key in table.keys() {
            if !accepted.contains(&key.as_str()) {
                self.err(&child(path, key), format!("unknown key {key:?} (accepted: {})", accepted.join(", ")));
            }
        }
    }

    fn string<'t>(&mut self, table: &'t Table, path: &str, key: &str) -> Option<&'t str> {
        match table.get(key)? {
            Value::String(s) => Some(s),
            other => {
                self.wrong_type(&child(path, key), "a string", other);
                None
            }
        }
    }

    fn required_string<'t>(&mut self, table: &'t Table, path: &str, key: &str, hint: &str) -> Option<&'t str> {
        if !table.contains_key(key) {
            self.missing(path, key, hint);
            return None;
        }
        self.string(table, path, key)
    }

    fn integer(&mut self, table: &Table, path: &str, key: &str) -> Option<i64> {
        match table.get(key)? {
            Value::Integer(n) => Some(*n),
            other => {
                self.wrong_type(&child(path, key), "an integer", other);
                None
            }
        }
    }

    fn boolean(&mut self, table: &Table, path: &str, key: &str, default: bool) -> bool {
        match table.get(key) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(other) => {
                self.wrong_type(&child(path, key), "true or false", other);
                default
            }
        }
    }

    fn table<'t>(&mut self, table: &'t Table, path: &str, key: &str) -> Option<&'t Table> {
        match table.get(key)? {
            Value::Table(t) => Some(t),
            other => {
                self.wrong_type(&child(path, key), "a table", other);
                None
            }
        }
    }

    /// An array of tables; each element that is not a table is reported and skipped.
    fn tables<'t>(&mut self, table: &'t Table, path: &str, key: &str) -> Vec<(String, &'t Table)> {
        let here = child(path, key);
        match table.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, value) in items.iter().enumerate() {
                    let at = item(&here, i);
                    match value {
                        Value::Table(t) => out.push((at, t)),
                        other => self.wrong_type(&at, "a table", other),
                    }
                }
                out
            }
            Some(other) => {
                self.wrong_type(&here, "an array of tables", other);
                Vec::new()
            }
        }
    }

    fn choice<T: Copy>(&mut self, table: &Table, path: &str, key: &str, options: &[(&str, T)]) -> Option<T> {
        let value = self.string(table, path, key)?;
        let found = options.iter().find(|(name, _)| *name == value).map(|(_, v)| *v);
        if found.is_none() {
            let accepted: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
            self.err(&child(path, key), format!("unknown {key} {value:?} (accepted: {})", accepted.join(", ")));
        }
        found
    }

    fn path(&mut self, table: &Table, path: &str, key: &str) -> Option<PathBuf> {
        let value = self.string(table, path, key)?;
        if value.is_empty() {
            self.err(&child(path, key), "path must not be empty");
            return None;
        }
        if value.contains('\0') {
            self.err(&child(path, key), "path must not contain NUL");
            return None;
        }
        Some(PathBuf::from(value))
    }

    fn duration(&mut self, table: &Table, path: &str, key: &str, default: Duration) -> Duration {
        let here = child(path, key);
        match table.get(key) {
            None => default,
            Some(Value::String(s)) => match parse_duration(s) {
                Ok(d) => d,
                Err(message) => {
                    self.err(&here, message);
                    default
                }
            },
            Some(other) => {
                self.err(&here, format!("expected a duration string, {DURATION_FORMAT}; found {}", type_name(other)));
                default
            }
        }
    }

    /// A byte size such as "64GiB", at least one byte.
    fn size(&mut self, table: &Table, path: &str, key: &str, default: u64) -> u64 {
        let here = child(path, key);
        match table.get(key) {
            None => default,
            Some(Value::String(s)) => match crate::size::parse_size(s) {
                Ok(0) => {
                    self.err(&here, "must be at least 1B");
                    default
                }
                Ok(n) => n,
                Err(message) => {
                    self.err(&here, message);
                    default
                }
            },
            Some(other) => {
                self.err(
                    &here,
                    format!("expected a size string, {}; found {}", crate::size::SIZE_FORMAT, type_name(other)),
                );
                default
            }
        }
    }

    /// A duration that must be strictly positive (timeouts, intervals).
    fn positive_duration(&mut self, table: &Table, path: &str, key: &str, default: Duration) -> Duration {
        let value = self.duration(table, path, key, default);
        if value.is_zero() {
            self.err(&child(path, key), "must be greater than 0");
            default
        } else {
            value
        }
    }

    /// An integer within `min..=max`; the default when absent or out of range.
    fn bounded(&mut self, table: &Table, path: &str, key: &str, (min, max): (i64, i64), default: i64) -> i64 {
        match self.integer(table, path, key) {
            None => default,
            Some(n) if (min..=max).contains(&n) => n,
            Some(n) => {
                self.err(&child(path, key), format!("must be between {min} and {max}, found {n}"));
                default
            }
        }
    }

    fn socket_addr(&mut self, table: &Table, path: &str, key: &str, default: SocketAddr) -> SocketAddr {
        let Some(s) = self.string(table, path, key) else { return default };
        match s.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                let port = default.port();
                self.err(
                    &child(path, key),
                    format!("invalid socket address {s:?}: expected IP:port such as \"{default}\" or \"[::1]:{port}\""),
                );
                default
            }
        }
    }

    /// An array of strings; elements of another type are reported and skipped.
    /// `None` (after reporting) when the value is not an array.
    fn strings<'t>(&mut self, table: &'t Table, path: &str, key: &str) -> Option<Vec<(String, &'t str)>> {
        let here = child(path, key);
        match table.get(key)? {
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, value) in items.iter().enumerate() {
                    let at = item(&here, i);
                    match value {
                        Value::String(s) => out.push((at, s.as_str())),
                        other => self.wrong_type(&at, "a string", other),
                    }
                }
                Some(out)
            }
            other => {
                self.wrong_type(&here, "an array of strings", other);
                None
            }
        }
    }

    fn config(&mut self, root: &Table) -> Config {
        self.check_keys(root, "", TOP_KEYS);

        let mode = if root.contains_key("mode") {
            self.choice(root, "", "mode", MODES)
        } else {
            self.missing("", "mode", " (accepted: development, production)");
            None
        };
        let data_dir = self.path(root, "", "data_dir").unwrap_or_else(|| PathBuf::from("./data"));
        let shutdown_grace = self.duration(root, "", "shutdown_grace", Duration::from_secs(30));

        let empty = Table::new();
        let https_table = self.table(root, "", "https").unwrap_or(&empty);
        let https = self.https(https_table, &data_dir);
        let storage_table = self.table(root, "", "storage").unwrap_or(&empty);
        let storage = self.storage(storage_table, &data_dir);
        let audit_table = self.table(root, "", "audit").unwrap_or(&empty);
        let audit = self.audit(audit_table, &data_dir);
        let sftp = self.table(root, "", "sftp").map(|t| self.sftp(t, &data_dir, https.listen));
        let admin = self.table(root, "", "admin").map(|t| self.admin(t));
        let alerts = self.table(root, "", "alerts").map(|t| self.alerts(t));
        let mfa_table = self.table(root, "", "mfa").unwrap_or(&empty);
        let mfa = self.mfa(mfa_table, &data_dir);
        let accounts_table = self.table(root, "", "accounts").unwrap_or(&empty);
        let accounts = self.accounts(accounts_table, &data_dir);

        let storage_entries = self.tables(root, "", "storages");
        let storages = self.storages(&storage_entries);
        if let Some(ship) = &audit.ship {
            if !ship.storage.is_empty() && !storages.iter().any(|st| st.name == ship.storage) {
                let known = if storages.is_empty() {
                    "no [[storages]] are configured".to_owned()
                } else {
                    format!("configured: {}", listing(storages.iter().map(|st| &st.name)))
                };
                self.err("audit.ship.storage", format!("unknown storage {:?} ({known})", ship.storage));
            }
        }
        let tenant_entries = self.tables(root, "", "tenants");
        let (tenants, tenant_names) = self.tenants(&tenant_entries, &storage.keys_dir, &storages);
        let user_entries = self.tables(root, "", "users");
        let (users, user_names) = self.users(&user_entries, &tenant_names);
        if https.client_auth.is_none() {
            for (at, t) in &user_entries {
                if matches!(t.get("client_certificates"), Some(Value::Array(a)) if !a.is_empty()) {
                    self.err(
                        &child(at, "client_certificates"),
                        "no [https.client_auth] is configured, so no client can present a certificate",
                    );
                }
            }
        }

        let development = match self.table(root, "", "development") {
            Some(table) => self.development(table, mode, &user_names),
            None => DevelopmentConfig::default(),
        };
        let defender = match self.table(root, "", "defender") {
            Some(table) => self.defender(table),
            None => DefenderConfig::default(),
        };

        Config {
            mode: mode.unwrap_or(Mode::Production),
            data_dir,
            shutdown_grace,
            https,
            storage,
            storages,
            audit,
            tenants,
            users,
            sftp,
            admin,
            development,
            defender,
            alerts,
            mfa,
            accounts,
        }
    }

    fn accounts(&mut self, t: &Table, data_dir: &std::path::Path) -> crate::AccountsConfig {
        const P: &str = "accounts";
        self.check_keys(t, P, ACCOUNTS_KEYS);
        let defaults = crate::AccountsConfig::defaults(data_dir);
        let dormant_after = match t.get("dormant_after") {
            None => defaults.dormant_after,
            Some(Value::String(s)) if s == "off" || s == "0" => None,
            Some(_) => {
                let d = self.duration(t, P, "dormant_after", crate::accounts::DEFAULT_DORMANT_AFTER);
                (!d.is_zero()).then_some(d)
            }
        };
        let state_dir = self.path(t, P, "state_dir").unwrap_or(defaults.state_dir);
        crate::AccountsConfig { dormant_after, state_dir }
    }

    /// `disabled`, `expires_at` and `allowed_sources` of the user at `at`.
    fn user_account(&mut self, t: &Table, at: &str) -> crate::UserAccount {
        let disabled = self.boolean(t, at, "disabled", false);
        let expires_at = match t.get("expires_at") {
            None => None,
            Some(Value::String(s)) => match crate::accounts::parse_rfc3339(s) {
                Ok(when) => Some(when),
                Err(why) => {
                    self.err(&child(at, "expires_at"), why);
                    None
                }
            },
            Some(Value::Datetime(dt)) => match crate::accounts::datetime_to_system_time(dt) {
                Ok(when) => Some(when),
                Err(why) => {
                    self.err(&child(at, "expires_at"), format!("{dt}: {why}"));
                    None
                }
            },
            Some(other) => {
                self.wrong_type(&child(at, "expires_at"), "an RFC 3339 date-time string", other);
                None
            }
        };
        let allowed_sources = self
            .strings(t, at, "allowed_sources")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(item_at, s)| match Cidr::parse(s) {
                Ok(c) => Some(c),
                Err(message) => {
                    self.err(&item_at, message);
                    None
                }
            })
            .collect();
        crate::UserAccount { disabled, expires_at, allowed_sources }
    }

    fn mfa(&mut self, t: &Table, data_dir: &std::path::Path) -> crate::MfaConfig {
        const P: &str = "mfa";
        self.check_keys(t, P, MFA_KEYS);
        let key_file = self.path(t, P, "key_file").unwrap_or_else(|| data_dir.join("mfa").join("mfa.key"));
        let secrets_dir = self.path(t, P, "secrets_dir").unwrap_or_else(|| data_dir.join("mfa").join("secrets"));
        let issuer = self.string(t, P, "issuer").unwrap_or("gateway").to_owned();
        if issuer.is_empty() || issuer.len() > 64 || issuer.chars().any(|c| c.is_control() || c == ':') {
            self.err(&child(P, "issuer"), "must be 1 to 64 characters, without ':' or control characters");
        }
        crate::MfaConfig { key_file, secrets_dir, issuer }
    }

    fn alerts(&mut self, t: &Table) -> AlertsConfig {
        const P: &str = "alerts";
        self.check_keys(t, P, ALERTS_KEYS);
        let webhook_url =
            self.required_string(t, P, "webhook_url", " (https://host[:port]/path of the alert receiver)");
        if let Some(url) = webhook_url {
            if let Err(why) = crate::text::check_webhook_url(url) {
                self.err(&child(P, "webhook_url"), format!("{url:?}: {why}"));
            }
        }
        let hmac_key_file = if t.contains_key("hmac_key_file") {
            self.path(t, P, "hmac_key_file")
        } else {
            self.missing(P, "hmac_key_file", " (a file holding the HMAC-SHA256 key, mode 0600)");
            None
        };
        let ca_file = self.path(t, P, "ca_file");
        let timeout = self.positive_duration(t, P, "timeout", Duration::from_secs(10));
        let max_outbox = usize::try_from(self.bounded(t, P, "max_outbox", (1, 100_000), 1000)).unwrap_or(1000);
        let min_severity = self.choice(t, P, "min_severity", ALERT_SEVERITIES).unwrap_or(AlertSeverity::Info);
        let auth_failure_threshold =
            u32::try_from(self.bounded(t, P, "auth_failure_threshold", (1, 10_000), 5)).unwrap_or(5);
        let auth_failure_window = self.positive_duration(t, P, "auth_failure_window", Duration::from_secs(600));
        let syslog = self.string(t, P, "syslog").and_then(|s| {
            let target = if let Some(path) = s.strip_prefix("unix:") {
                (path.starts_with('/') && !path.contains('\0')).then(|| SyslogTarget::Unix(PathBuf::from(path)))
            } else {
                s.strip_prefix("udp:").and_then(|a| a.parse::<SocketAddr>().ok()).map(SyslogTarget::Udp)
            };
            if target.is_none() {
                self.err(
                    &child(P, "syslog"),
                    format!("{s:?}: expected \"unix:/dev/log\" or \"udp:IP:port\" such as \"udp:127.0.0.1:514\""),
                );
            }
            target
        });
        AlertsConfig {
            webhook_url: webhook_url.unwrap_or_default().to_owned(),
            hmac_key_file: hmac_key_file.unwrap_or_default(),
            ca_file,
            timeout,
            max_outbox,
            min_severity,
            auth_failure_threshold,
            auth_failure_window,
            syslog,
        }
    }

    fn defender(&mut self, t: &Table) -> DefenderConfig {
        const P: &str = "defender";
        let d = DefenderConfig::default();
        self.check_keys(t, P, DEFENDER_KEYS);
        let enabled = self.boolean(t, P, "enabled", d.enabled);
        let threshold =
            u32::try_from(self.bounded(t, P, "threshold", (1, 100_000), i64::from(d.threshold))).unwrap_or(d.threshold);
        let window = self.positive_duration(t, P, "window", d.window);
        let ban_time = self.positive_duration(t, P, "ban_time", d.ban_time);
        let mut ban_time_max = self.positive_duration(t, P, "ban_time_max", d.ban_time_max.max(ban_time));
        if ban_time_max < ban_time {
            self.err(&child(P, "ban_time_max"), "must be at least ban_time");
            ban_time_max = ban_time;
        }
        let mut weights = DefenderWeights::default();
        if let Some(w) = self.table(t, P, "weights") {
            const W: &str = "defender.weights";
            self.check_keys(w, W, WEIGHT_KEYS);
            let mut weight = |key: &str, default: u32| {
                u32::try_from(self.bounded(w, W, key, (0, 1000), i64::from(default))).unwrap_or(default)
            };
            weights = DefenderWeights {
                auth_failed_known_user: weight("auth_failed_known_user", weights.auth_failed_known_user),
                auth_failed_unknown_user: weight("auth_failed_unknown_user", weights.auth_failed_unknown_user),
                protocol_abuse: weight("protocol_abuse", weights.protocol_abuse),
                limit_hit: weight("limit_hit", weights.limit_hit),
                pre_auth_disconnect: weight("pre_auth_disconnect", weights.pre_auth_disconnect),
            };
        }
        let ipv6_prefix = u8::try_from(self.bounded(t, P, "ipv6_prefix", (1, 128), i64::from(d.ipv6_prefix)))
            .unwrap_or(d.ipv6_prefix);
        let safelist = self
            .strings(t, P, "safelist")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(at, s)| match Cidr::parse(s) {
                Ok(c) => Some(c),
                Err(message) => {
                    self.err(&at, message);
                    None
                }
            })
            .collect();
        let max_sources =
            usize::try_from(self.bounded(t, P, "max_sources", (16, 10_000_000), 65_536)).unwrap_or(65_536);
        DefenderConfig {
            enabled,
            threshold,
            window,
            ban_time,
            ban_time_max,
            weights,
            ipv6_prefix,
            safelist,
            max_sources,
        }
    }

    fn admin(&mut self, t: &Table) -> AdminConfig {
        const P: &str = "admin";
        self.check_keys(t, P, ADMIN_KEYS);
        let listen = self.socket_addr(t, P, "listen", SocketAddr::from(([127, 0, 0, 1], 9090)));
        let token_file = self.path(t, P, "token_file");
        AdminConfig { listen, token_file }
    }

    fn https(&mut self, t: &Table, data_dir: &std::path::Path) -> HttpsConfig {
        const P: &str = "https";
        self.check_keys(t, P, HTTPS_KEYS);
        let listen = self.socket_addr(t, P, "listen", SocketAddr::from(([127, 0, 0, 1], 8443)));
        let tls_profile = self.choice(t, P, "tls_profile", TLS_PROFILES).unwrap_or(TlsProfile::Aes256);
        let cert = self.path(t, P, "cert").unwrap_or_else(|| data_dir.join("tls").join("server.pem"));
        let key = self.path(t, P, "key").unwrap_or_else(|| data_dir.join("tls").join("server.key"));
        let handshake_timeout = self.positive_duration(t, P, "handshake_timeout", Duration::from_secs(10));
        let idle_timeout = self.positive_duration(t, P, "idle_timeout", Duration::from_secs(60));
        let max_connections =
            usize::try_from(self.bounded(t, P, "max_connections", (1, MAX_CONNECTIONS), 1024)).unwrap_or(1024);
        let max_connections_per_source =
            u32::try_from(self.bounded(t, P, "max_connections_per_source", (0, MAX_CONNECTIONS), 64)).unwrap_or(64);
        let connection_rate_per_source =
            u32::try_from(self.bounded(t, P, "connection_rate_per_source", (0, 10_000), 50)).unwrap_or(50);
        let hsts_max_age = self.duration(t, P, "hsts_max_age", Duration::from_secs(365 * 86_400));
        let client_auth = self.table(t, P, "client_auth").map(|t| self.client_auth(t));
        let max_connection_duration =
            self.positive_duration(t, P, "max_connection_duration", Duration::from_secs(3600));
        HttpsConfig {
            listen,
            tls_profile,
            cert,
            key,
            handshake_timeout,
            idle_timeout,
            max_connections,
            max_connections_per_source,
            connection_rate_per_source,
            hsts_max_age,
            client_auth,
            max_connection_duration,
        }
    }

    fn client_auth(&mut self, t: &Table) -> ClientAuthConfig {
        const P: &str = "https.client_auth";
        self.check_keys(t, P, CLIENT_AUTH_KEYS);
        let mode = if t.contains_key("mode") {
            self.choice(t, P, "mode", CLIENT_AUTH_MODES).unwrap_or(ClientAuthMode::Required)
        } else {
            self.missing(P, "mode", " (accepted: optional, required)");
            ClientAuthMode::Required
        };
        let ca = if t.contains_key("ca") {
            self.path(t, P, "ca")
        } else {
            self.missing(P, "ca", " (PEM bundle of the CAs that issue client certificates)");
            None
        };
        let crls = self
            .strings(t, P, "crls")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(at, s)| {
                if s.is_empty() || s.contains('\0') {
                    self.err(&at, "path must be non-empty and without NUL");
                    None
                } else {
                    Some(PathBuf::from(s))
                }
            })
            .collect();
        ClientAuthConfig { mode, ca: ca.unwrap_or_default(), crls }
    }

    fn sftp(&mut self, t: &Table, data_dir: &std::path::Path, https_listen: SocketAddr) -> SftpConfig {
        const P: &str = "sftp";
        self.check_keys(t, P, SFTP_KEYS);
        let listen = self.socket_addr(t, P, "listen", SocketAddr::from(([127, 0, 0, 1], 2222)));
        if listens_overlap(listen, https_listen) {
            self.err(
                &child(P, "listen"),
                format!("{listen} overlaps https.listen ({https_listen}); SFTP needs its own port"),
            );
        }
        let host_keys = self.host_keys(t, P).unwrap_or_else(|| {
            let dir = data_dir.join("ssh");
            vec![dir.join("ssh_host_ed25519_key"), dir.join("ssh_host_rsa_key")]
        });
        let profile = self.choice(t, P, "profile", SSH_PROFILES).unwrap_or(SshProfile::Strict);
        let [kex, ciphers, macs, host_key_algorithms] =
            ssh::ALGORITHM_KINDS.map(|kind| self.algorithms(t, P, kind, profile));
        let explicit = ExplicitAlgorithms {
            kex: t.contains_key(ssh::KEX.key),
            ciphers: t.contains_key(ssh::CIPHERS.key),
            macs: t.contains_key(ssh::MACS.key),
            host_key_algorithms: t.contains_key(ssh::HOST_KEY_ALGORITHMS.key),
        };
        let algorithms = SshAlgorithms { profile, kex, ciphers, macs, host_key_algorithms, explicit };
        let login_grace_time = self.positive_duration(t, P, "login_grace_time", Duration::from_secs(30));
        let max_auth_attempts =
            u32::try_from(self.bounded(t, P, "max_auth_attempts", (1, MAX_AUTH_ATTEMPTS), 6)).unwrap_or(6);
        let auth_rejection_delay = self.duration(t, P, "auth_rejection_delay", Duration::from_secs(1));
        let idle_timeout = self.positive_duration(t, P, "idle_timeout", Duration::from_secs(600));
        let max_connections =
            usize::try_from(self.bounded(t, P, "max_connections", (1, MAX_SFTP_CONNECTIONS), 256)).unwrap_or(256);
        let max_connections_per_source =
            u32::try_from(self.bounded(t, P, "max_connections_per_source", (0, MAX_SFTP_CONNECTIONS), 32))
                .unwrap_or(32);
        let connection_rate_per_source =
            u32::try_from(self.bounded(t, P, "connection_rate_per_source", (0, 10_000), 10)).unwrap_or(10);
        let max_buffer_per_connection = self.buffer_size(t, P, "max_buffer_per_connection", 16 << 20);
        let max_buffer_total =
            t.contains_key("max_buffer_total").then(|| self.buffer_size(t, P, "max_buffer_total", 1 << 30));
        let max_session_duration = self.positive_duration(t, P, "max_session_duration", Duration::from_secs(8 * 3600));
        SftpConfig {
            listen,
            host_keys,
            algorithms,
            login_grace_time,
            max_auth_attempts,
            auth_rejection_delay,
            idle_timeout,
            max_connections,
            max_connections_per_source,
            connection_rate_per_source,
            max_buffer_per_connection,
            max_buffer_total,
            max_session_duration,
        }
    }

    /// A memory budget: a size of at least 1 MiB (a full SFTP packet must fit).
    fn buffer_size(&mut self, t: &Table, path: &str, key: &str, default: usize) -> usize {
        let n = self.size(t, path, key, default as u64);
        if n < 1 << 20 {
            self.err(&child(path, key), "must be at least 1MiB (one SFTP packet must fit)");
            return default;
        }
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    /// Explicit host key paths; `None` (use the defaults) when absent or unusable.
    fn host_keys(&mut self, t: &Table, path: &str) -> Option<Vec<PathBuf>> {
        let here = child(path, "host_keys");
        let entries = self.strings(t, path, "host_keys")?;
        let total = match t.get("host_keys") {
            Some(Value::Array(items)) => items.len(),
            _ => 0,
        };
        if total == 0 {
            self.err(&here, "must list at least one host key file");
            return None;
        }
        let mut keys: Vec<PathBuf> = Vec::new();
        let mut seen: BTreeMap<&str, String> = BTreeMap::new();
        for (at, value) in entries {
            if value.is_empty() {
                self.err(&at, "path must not be empty");
            } else if value.contains('\0') {
                self.err(&at, "path must not contain NUL");
            } else if let Some(first) = seen.get(value) {
                self.err(&at, format!("duplicate host key {value:?} (first listed at {first})"));
            } else {
                seen.insert(value, at);
                keys.push(PathBuf::from(value));
            }
        }
        (!keys.is_empty()).then_some(keys)
    }

    /// One algorithm list checked against its allow-list; the profile's list
    /// when absent, and the valid entries (or the profile's if none) after errors.
    fn algorithms(&mut self, t: &Table, path: &str, kind: &AlgorithmKind, profile: SshProfile) -> Vec<String> {
        let defaults = || kind.defaults(profile).iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let here = child(path, kind.key);
        let accepted = kind.accepted.join(", ");
        let Some(entries) = self.strings(t, path, kind.key) else { return defaults() };
        if matches!(t.get(kind.key), Some(Value::Array(items)) if items.is_empty()) {
            self.err(&here, format!("must list at least one {} (accepted: {accepted})", kind.what));
            return defaults();
        }
        let mut names: Vec<String> = Vec::new();
        let mut seen: BTreeMap<&str, String> = BTreeMap::new();
        for (at, name) in entries {
            if !kind.accepted.contains(&name) {
                let why = ssh::refusal_reason(kind, name);
                self.err(&at, format!("{} {name:?} is refused: {why} (accepted: {accepted})", kind.what));
            } else if let Some(first) = seen.get(name) {
                self.err(&at, format!("duplicate {} {name:?} (first listed at {first})", kind.what));
            } else {
                seen.insert(name, at);
                names.push(name.to_owned());
            }
        }
        if names.is_empty() {
            defaults()
        } else {
            names
        }
    }

    fn storage(&mut self, t: &Table, data_dir: &std::path::Path) -> StorageConfig {
        const P: &str = "storage";
        self.check_keys(t, P, STORAGE_KEYS);
        let kind = self.choice(t, P, "backend", BACKENDS).unwrap_or(BackendKind::Local);
        let backend = match kind {
            BackendKind::Local => {
                StorageBackend::Local { root: self.path(t, P, "root").unwrap_or_else(|| data_dir.join("store")) }
            }
        };
        let keys_dir = self.path(t, P, "keys_dir").unwrap_or_else(|| data_dir.join("keys"));
        let max_object_size = self.size(t, P, "max_object_size", 64 << 30);
        let refuse_in_names = self.choice(t, P, "refuse_in_names", NAME_REFUSALS).unwrap_or_default();
        StorageConfig { backend, keys_dir, max_object_size, refuse_in_names }
    }

    fn audit(&mut self, t: &Table, data_dir: &std::path::Path) -> AuditConfig {
        const P: &str = "audit";
        self.check_keys(t, P, AUDIT_KEYS);
        let path = self.path(t, P, "path").unwrap_or_else(|| data_dir.join("audit").join("audit.jsonl"));
        let signing_key =
            self.path(t, P, "signing_key").unwrap_or_else(|| data_dir.join("audit").join("checkpoint.key"));
        let checkpoint_every_records = match self.integer(t, P, "checkpoint_every_records") {
            None => 1000,
            Some(n) => match u64::try_from(n) {
                Ok(v) if v >= 1 => v,
                _ => {
                    self.err(&child(P, "checkpoint_every_records"), format!("must be at least 1, found {n}"));
                    1000
                }
            },
        };
        let checkpoint_interval = self.positive_duration(t, P, "checkpoint_interval", Duration::from_secs(60));
        let append_timeout = self.positive_duration(t, P, "append_timeout", Duration::from_secs(10));
        let ship = self.table(t, P, "ship").map(|t| self.audit_ship(t));
        let auth_failures_per_source =
            u32::try_from(self.bounded(t, P, "auth_failures_per_source", (1, 100_000), 10)).unwrap_or(10);
        let auth_failure_window = self.positive_duration(t, P, "auth_failure_window", Duration::from_secs(60));
        AuditConfig {
            path,
            signing_key,
            checkpoint_every_records,
            checkpoint_interval,
            append_timeout,
            auth_failures_per_source,
            auth_failure_window,
            ship,
        }
    }

    fn audit_ship(&mut self, t: &Table) -> AuditShipConfig {
        const P: &str = "audit.ship";
        self.check_keys(t, P, AUDIT_SHIP_KEYS);
        let storage = self.required_string(t, P, "storage", " (the name of an [[storages]] entry)").unwrap_or_default();
        let bucket = self.string(t, P, "bucket").map(str::to_owned);
        if let Some(b) = &bucket {
            if let Err(why) = crate::text::check_bucket(b) {
                self.err(&child(P, "bucket"), format!("invalid bucket name {b:?}: {why}"));
            }
        }
        let prefix = self.string(t, P, "prefix").unwrap_or("audit/").to_owned();
        if !(prefix.is_empty() || prefix.ends_with('/'))
            || prefix.starts_with('/')
            || prefix.split('/').any(|s| s == "." || s == "..")
            || prefix.chars().any(char::is_control)
        {
            self.err(
                &child(P, "prefix"),
                format!("invalid prefix {prefix:?}: use segments ending in '/', e.g. \"audit/\""),
            );
        }
        let node = match self.string(t, P, "node") {
            Some(n) => match check_name(n) {
                Ok(()) => Some(n.to_owned()),
                Err(why) => {
                    self.err(&child(P, "node"), format!("invalid node name {n:?}: {why}"));
                    None
                }
            },
            None => None,
        };
        let interval = self.positive_duration(t, P, "interval", Duration::from_secs(60));
        let days = self.integer(t, P, "retention_days");
        let mode = self.choice(t, P, "retention_mode", RETENTION_MODES);
        let retention = match days {
            Some(d) if (1..=36_500).contains(&d) => {
                Some(Retention { mode: mode.unwrap_or(RetentionMode::Compliance), days: u32::try_from(d).unwrap_or(1) })
            }
            Some(d) => {
                self.err(&child(P, "retention_days"), format!("must be 1 to 36500, found {d}"));
                None
            }
            None => {
                if mode.is_some() {
                    self.err(&child(P, "retention_mode"), "set retention_days too");
                }
                None
            }
        };
        AuditShipConfig { storage: storage.to_owned(), bucket, prefix, node, interval, retention }
    }

    /// Reads and validates a name field; `None` if missing or invalid.
    fn name<'t>(&mut self, t: &'t Table, path: &str, key: &str) -> Option<&'t str> {
        let name = self.required_string(t, path, key, "")?;
        match check_name(name) {
            Ok(()) => Some(name),
            Err(why) => {
                self.err(&child(path, key), format!("invalid name {name:?}: {why}"));
                None
            }
        }
    }

    /// Returns the valid tenants and every tenant name mentioned (valid
    /// syntax), so users referring to a broken tenant do not cascade errors.
    fn tenants(
        &mut self,
        entries: &[(String, &Table)],
        keys_dir: &std::path::Path,
        storages: &[NamedStorage],
    ) -> (Vec<TenantConfig>, BTreeMap<String, String>) {
        // (storage, prefix) -> where it was defined, to refuse overlapping namespaces.
        let mut prefixes: Vec<(String, String, String)> = Vec::new();
        let mut tenants = Vec::new();
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        let mut key_files: BTreeMap<PathBuf, String> = BTreeMap::new();
        for (at, t) in entries {
            self.check_keys(t, at, TENANT_KEYS);
            let name = self.name(t, at, "name");
            let explicit_key = self.path(t, at, "key_file");
            let Some(name) = name else { continue };
            if let Some(first) = names.get(name) {
                self.err(&child(at, "name"), format!("duplicate tenant name {name:?} (first defined at {first})"));
                continue;
            }
            names.insert(name.to_owned(), at.clone());
            let key_file = explicit_key.unwrap_or_else(|| keys_dir.join(format!("{name}.key")));
            if let Some(first) = key_files.get(&key_file) {
                self.err(
                    &child(at, "key_file"),
                    format!(
                        "key file {:?} is already used by {first}; each tenant needs its own key",
                        key_file.display().to_string()
                    ),
                );
            } else {
                key_files.insert(key_file.clone(), at.clone());
            }
            let storage = self.tenant_storage(t, at, name, storages, &mut prefixes);
            tenants.push(TenantConfig { name: name.to_owned(), key_file, storage });
        }
        (tenants, names)
    }

    /// `storage`, `prefix` and the `sse` settings of one tenant.
    fn tenant_storage(
        &mut self,
        t: &Table,
        at: &str,
        tenant: &str,
        storages: &[NamedStorage],
        prefixes: &mut Vec<(String, String, String)>,
    ) -> TenantStorage {
        let s3_only = ["prefix", "sse", "kms_key_id", "bucket_key", "sse_c_key_file", "seal"];
        let Some(storage) = self.string(t, at, "storage") else {
            for key in s3_only.iter().filter(|k| t.contains_key(**k)) {
                self.err(&child(at, key), "only applies to a tenant on a [[storages]] entry (set `storage`)");
            }
            return TenantStorage::Local;
        };
        if !storages.iter().any(|s| s.name == storage) {
            let configured = if storages.is_empty() {
                "no [[storages]] are configured".to_owned()
            } else {
                format!("configured: {}", storages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "))
            };
            self.err(&child(at, "storage"), format!("unknown storage {storage:?} ({configured})"));
        }
        let prefix = match self.string(t, at, "prefix") {
            None => format!("{tenant}/"),
            Some(p) => match crate::text::normalize_prefix(p) {
                Ok(p) => p,
                Err(why) => {
                    self.err(&child(at, "prefix"), format!("invalid prefix {p:?}: {why}"));
                    format!("{tenant}/")
                }
            },
        };
        for (other_storage, other_prefix, other_at) in prefixes.iter() {
            if other_storage == storage && (prefix.starts_with(other_prefix) || other_prefix.starts_with(&prefix)) {
                self.err(
                    &child(at, "prefix"),
                    format!(
                        "prefix {prefix:?} overlaps {other_prefix:?} of {other_at} on the same storage; \
                         each tenant needs its own namespace"
                    ),
                );
            }
        }
        prefixes.push((storage.to_owned(), prefix.clone(), at.to_owned()));
        let mode = self.string(t, at, "sse").unwrap_or("sse-s3");
        let sse = match mode {
            "sse-s3" => Sse::S3,
            "sse-kms" => {
                let key_id = self.required_string(t, at, "kms_key_id", " (the tenant's KMS key id or ARN)");
                let bucket_key = self.boolean(t, at, "bucket_key", false);
                if key_id.is_some_and(|k| k.is_empty() || k.len() > 2048 || k.chars().any(char::is_control)) {
                    self.err(&child(at, "kms_key_id"), "must be a non-empty key id or ARN without control characters");
                }
                Sse::Kms { key_id: key_id.unwrap_or_default().to_owned(), bucket_key }
            }
            "sse-c" => {
                let key_file = if t.contains_key("sse_c_key_file") {
                    self.path(t, at, "sse_c_key_file")
                } else {
                    self.missing(at, "sse_c_key_file", " (a file holding the tenant's 256-bit key, mode 0600)");
                    None
                };
                Sse::C { key_file: key_file.unwrap_or_default() }
            }
            other => {
                let hint = if other == "none" { "; objects on S3 are always encrypted" } else { "" };
                self.err(
                    &child(at, "sse"),
                    format!("unknown sse {other:?} (accepted: {}){hint}", SSE_MODES.join(", ")),
                );
                Sse::S3
            }
        };
        if !matches!(sse, Sse::Kms { .. }) {
            for key in ["kms_key_id", "bucket_key"].iter().filter(|k| t.contains_key(**k)) {
                self.err(&child(at, key), "only applies with sse = \"sse-kms\"");
            }
        }
        if !matches!(sse, Sse::C { .. }) && t.contains_key("sse_c_key_file") {
            self.err(&child(at, "sse_c_key_file"), "only applies with sse = \"sse-c\"");
        }
        let seal = self.boolean(t, at, "seal", false);
        TenantStorage::S3 { storage: storage.to_owned(), prefix, sse, seal }
    }

    /// The `[[storages]]` entries.
    fn storages(&mut self, entries: &[(String, &Table)]) -> Vec<NamedStorage> {
        let mut out: Vec<NamedStorage> = Vec::new();
        for (at, t) in entries {
            self.check_keys(t, at, STORAGES_KEYS);
            let name = self.name(t, at, "name");
            match self.required_string(t, at, "backend", " (accepted: s3)") {
                Some("s3") | None => {}
                Some(other) => self.err(&child(at, "backend"), format!("unknown backend {other:?} (accepted: s3)")),
            }
            let bucket = self.required_string(t, at, "bucket", "");
            if let Some(b) = bucket {
                if let Err(why) = crate::text::check_bucket(b) {
                    self.err(&child(at, "bucket"), format!("invalid bucket name {b:?}: {why}"));
                }
            }
            let region = self.required_string(t, at, "region", " (e.g. \"eu-west-1\"; Garage: \"garage\")");
            if region.is_some_and(|r| r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')) {
                self.err(&child(at, "region"), "must be letters, digits and '-'");
            }
            let endpoint_url = self.string(t, at, "endpoint_url");
            if let Some(url) = endpoint_url {
                if let Err(why) = crate::text::check_endpoint(url) {
                    self.err(&child(at, "endpoint_url"), format!("{url:?}: {why}"));
                }
            }
            let force_path_style = self.boolean(t, at, "force_path_style", false);
            let key_id = self.path(t, at, "access_key_id_file");
            let secret = self.path(t, at, "secret_access_key_file");
            let token = self.path(t, at, "session_token_file");
            let credentials = match (key_id, secret) {
                (Some(access_key_id), Some(secret_access_key)) => {
                    S3Credentials::Files { access_key_id, secret_access_key, session_token: token }
                }
                (None, None) if token.is_none() => S3Credentials::Chain,
                _ => {
                    self.err(
                        at,
                        "access_key_id_file and secret_access_key_file go together (or leave all credential \
                         files out to use the AWS credential chain)",
                    );
                    S3Credentials::Chain
                }
            };
            let part_size = self.size(t, at, "part_size", 16 << 20);
            let part_size = if (MIN_PART..=MAX_PART).contains(&part_size) {
                part_size
            } else {
                self.err(&child(at, "part_size"), "must be between 5MiB and 5GiB (S3's limits on a part)");
                16 << 20
            };
            let parts_in_flight = usize::try_from(self.bounded(t, at, "parts_in_flight", (1, 64), 4)).unwrap_or(4);
            let connect_timeout = self.positive_duration(t, at, "connect_timeout", Duration::from_secs(5));
            let request_timeout = self.positive_duration(t, at, "request_timeout", Duration::from_secs(60));
            let max_attempts = u32::try_from(self.bounded(t, at, "max_attempts", (1, 10), 3)).unwrap_or(3);
            let orphan_upload_age = self.positive_duration(t, at, "orphan_upload_age", Duration::from_secs(24 * 3600));
            let Some(name) = name else { continue };
            if let Some(first) = out.iter().position(|s| s.name == name) {
                self.err(
                    &child(at, "name"),
                    format!("duplicate storage name {name:?} (first defined at storages[{first}])"),
                );
                continue;
            }
            out.push(NamedStorage {
                name: name.to_owned(),
                s3: S3Storage {
                    bucket: bucket.unwrap_or_default().to_owned(),
                    region: region.unwrap_or_default().to_owned(),
                    endpoint_url: endpoint_url.map(str::to_owned),
                    force_path_style,
                    credentials,
                    part_size,
                    parts_in_flight,
                    connect_timeout,
                    request_timeout,
                    max_attempts,
                    orphan_upload_age,
                },
            });
        }
        out
    }

    fn users(
        &mut self,
        entries: &[(String, &Table)],
        tenant_names: &BTreeMap<String, String>,
    ) -> (Vec<UserConfig>, BTreeMap<String, String>) {
        let mut users = Vec::new();
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        let mut token_ids: BTreeMap<String, String> = BTreeMap::new();
        let mut bindings: BTreeMap<CertBinding, String> = BTreeMap::new();
        for (at, t) in entries {
            self.check_keys(t, at, USER_KEYS);
            let mut ok = true;

            let name = self.name(t, at, "name");
            if let Some(name) = name {
                if let Some(first) = names.get(name) {
                    self.err(&child(at, "name"), format!("duplicate user name {name:?} (first defined at {first})"));
                    ok = false;
                } else {
                    names.insert(name.to_owned(), at.clone());
                }
            }

            let tenant = self.required_string(t, at, "tenant", "");
            if let Some(tenant) = tenant {
                if !tenant_names.contains_key(tenant) {
                    let configured = if tenant_names.is_empty() {
                        "no tenants are configured".to_owned()
                    } else {
                        format!("configured: {}", listing(tenant_names.keys()))
                    };
                    self.err(&child(at, "tenant"), format!("unknown tenant {tenant:?} ({configured})"));
                    ok = false;
                }
            }

            let home = match self.required_string(t, at, "home", " (use \"/\" for the whole tenant)") {
                Some(raw) => match normalize_home(raw) {
                    Ok(home) => Some(home),
                    Err(why) => {
                        self.err(&child(at, "home"), format!("invalid home {raw:?}: {why}"));
                        None
                    }
                },
                None => None,
            };

            let permissions = self.permissions(t, at);
            let tokens = self.tokens(t, at, &mut token_ids);
            let authorized_keys = self.authorized_keys(t, at);
            let password_hash = self.string(t, at, "password_hash").and_then(|s| match PasswordHash::parse(s) {
                Ok(hash) => Some(hash),
                Err(why) => {
                    self.err(&child(at, "password_hash"), why);
                    None
                }
            });

            let client_certificates = self.client_certificates(t, at, &mut bindings);
            let mfa = self.choice(t, at, "mfa", MFA_METHODS);
            let account = self.user_account(t, at);

            if let (true, Some(name), Some(tenant), Some(home)) = (ok, name, tenant, home) {
                users.push(UserConfig {
                    name: name.to_owned(),
                    tenant: tenant.to_owned(),
                    home,
                    permissions,
                    tokens,
                    authorized_keys,
                    password_hash,
                    client_certificates,
                    mfa,
                    account,
                });
            }
        }
        (users, names)
    }

    fn permissions(&mut self, t: &Table, at: &str) -> Permissions {
        let here = child(at, "permissions");
        let mut perms = Permissions::default();
        let items = match t.get("permissions") {
            None => {
                self.missing(
                    at,
                    "permissions",
                    &format!("; a user without permissions grants nothing (accepted: {})", PERMISSION_NAMES.join(", ")),
                );
                return perms;
            }
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.wrong_type(&here, "an array of permission names", other);
                return perms;
            }
        };
        let mut bad_entry = false;
        for (j, value) in items.iter().enumerate() {
            let at_j = item(&here, j);
            let Value::String(name) = value else {
                self.wrong_type(&at_j, "a string", value);
                bad_entry = true;
                continue;
            };
            match name.as_str() {
                "list" => perms.list = true,
                "read" => perms.read = true,
                "write" => perms.write = true,
                "delete" => perms.delete = true,
                "rename" => perms.rename = true,
                "mkdir" => perms.mkdir = true,
                "all" => {
                    perms = Permissions { list: true, read: true, write: true, delete: true, rename: true, mkdir: true }
                }
                _ => {
                    self.err(&at_j, format!("unknown permission {name:?} (accepted: {})", PERMISSION_NAMES.join(", ")));
                    bad_entry = true;
                }
            }
        }
        if perms == Permissions::default() && !bad_entry {
            self.err(&here, format!("grants nothing; list at least one of: {}", PERMISSION_NAMES.join(", ")));
        }
        perms
    }

    /// The user's client-certificate bindings; one binding may name one user only.
    fn client_certificates(
        &mut self,
        t: &Table,
        at: &str,
        seen: &mut BTreeMap<CertBinding, String>,
    ) -> Vec<CertBinding> {
        let mut out = Vec::new();
        for (at_j, raw) in self.strings(t, at, "client_certificates").unwrap_or_default() {
            match CertBinding::parse(raw.trim()) {
                Ok(b) => {
                    if let Some(first) = seen.get(&b) {
                        self.err(&at_j, format!("{b} is already bound at {first}; a certificate names one user"));
                        continue;
                    }
                    seen.insert(b.clone(), at_j);
                    out.push(b);
                }
                Err(why) => self.err(&at_j, why),
            }
        }
        out
    }

    /// The user's SSH keys, trimmed; bad or repeated lines are reported and skipped.
    fn authorized_keys(&mut self, t: &Table, at: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut seen: BTreeMap<(&str, &str), String> = BTreeMap::new();
        for (at_j, raw) in self.strings(t, at, "authorized_keys").unwrap_or_default() {
            let line = raw.trim();
            if let Err(why) = ssh::check_authorized_key(line) {
                self.err(&at_j, why);
                continue;
            }
            let identity = ssh::key_identity(line);
            if let Some(first) = seen.get(&identity) {
                self.err(&at_j, format!("duplicate key (same key as {first})"));
                continue;
            }
            seen.insert(identity, at_j);
            keys.push(line.to_owned());
        }
        keys
    }

    fn tokens(&mut self, t: &Table, at: &str, token_ids: &mut BTreeMap<String, String>) -> Vec<TokenConfig> {
        let mut tokens = Vec::new();
        for (at_k, tt) in self.tables(t, at, "tokens") {
            self.check_keys(tt, &at_k, TOKEN_KEYS);
            let mut id = self.name(tt, &at_k, "id");
            if let Some(token_id) = id {
                if let Some(first) = token_ids.get(token_id) {
                    self.err(
                        &child(&at_k, "id"),
                        format!("duplicate token id {token_id:?} (first defined at {first})"),
                    );
                    id = None;
                } else {
                    token_ids.insert(token_id.to_owned(), at_k.clone());
                }
            }
            let digest = match self.required_string(tt, &at_k, "sha256", "") {
                Some(hex) => match parse_sha256(hex) {
                    Ok(digest) => Some(digest),
                    Err(why) => {
                        self.err(&child(&at_k, "sha256"), why);
                        None
                    }
                },
                None => None,
            };
            if let (Some(id), Some(sha256)) = (id, digest) {
                tokens.push(TokenConfig { id: id.to_owned(), sha256 });
            }
        }
        tokens
    }

    fn development(
        &mut self,
        t: &Table,
        mode: Option<Mode>,
        user_names: &BTreeMap<String, String>,
    ) -> DevelopmentConfig {
        const P: &str = "development";
        self.check_keys(t, P, DEVELOPMENT_KEYS);
        let production = mode == Some(Mode::Production);
        if production {
            self.err(P, "the [development] section is not allowed when mode = \"production\"");
        }
        let demo_user = self.string(t, P, "demo_user");
        if production {
            return DevelopmentConfig::default();
        }
        let demo_user = demo_user.and_then(|user| {
            if user_names.contains_key(user) {
                Some(user.to_owned())
            } else {
                let configured = if user_names.is_empty() {
                    "no users are configured".to_owned()
                } else {
                    format!("configured: {}", listing(user_names.keys()))
                };
                self.err(&child(P, "demo_user"), format!("unknown user {user:?} ({configured})"));
                None
            }
        });
        DevelopmentConfig { demo_user }
    }
}
