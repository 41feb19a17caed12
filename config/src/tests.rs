//! Unit tests: shipped samples parse cleanly, bad input yields every error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::text::{check_name, normalize_home, parse_sha256};
use crate::*;

const SAMPLE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml"));
const PRODUCTION: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/production.example.toml"));

/// Parses text expected to be valid and returns the config.
fn ok(text: &str) -> Config {
    let (config, errors) = parse(text, "test.toml");
    assert!(errors.is_empty(), "unexpected errors: {errors:#?}");
    config
}

/// Parses text and returns `(path, message)` pairs of the errors.
fn errs(text: &str) -> Vec<(String, String)> {
    let (_, errors) = parse(text, "test.toml");
    errors.into_iter().map(|e| (e.path, e.message)).collect()
}

fn has(errors: &[(String, String)], path: &str, needle: &str) -> bool {
    errors.iter().any(|(p, m)| p == path && m.contains(needle))
}

const MINIMAL: &str = "mode = \"development\"\n";

#[test]
fn defender_settings_and_their_errors() {
    let d = ok(MINIMAL).defender;
    assert!(d.enabled);
    assert_eq!((d.threshold, d.window, d.ban_time), (15, Duration::from_secs(600), Duration::from_secs(900)));
    assert_eq!((d.ipv6_prefix, d.max_sources, d.safelist.len()), (64, 65_536, 0));
    assert_eq!(d.weights, DefenderWeights::default());
    let c = ok(&format!(
        "{MINIMAL}[https]\nmax_connections_per_source = 3\nconnection_rate_per_source = 0\n\
         [sftp]\nlisten = \"127.0.0.1:2222\"\nmax_connections_per_source = 2\n\
         [defender]\nenabled = false\nthreshold = 4\nwindow = \"1m\"\nban_time = \"2s\"\nban_time_max = \"8s\"\n\
         ipv6_prefix = 48\nsafelist = [\"127.0.0.1\", \"2001:db8::/32\"]\nmax_sources = 100\n\
         [defender.weights]\nprotocol_abuse = 0\nlimit_hit = 7\n"
    ));
    let d = &c.defender;
    assert!(!d.enabled);
    assert_eq!(
        (d.threshold, d.window, d.ban_time, d.ban_time_max),
        (4, Duration::from_secs(60), Duration::from_secs(2), Duration::from_secs(8))
    );
    assert_eq!((d.ipv6_prefix, d.max_sources), (48, 100));
    assert_eq!(d.safelist.iter().map(ToString::to_string).collect::<Vec<_>>(), ["127.0.0.1/32", "2001:db8::/32"]);
    assert_eq!((d.weights.protocol_abuse, d.weights.limit_hit, d.weights.auth_failed_known_user), (0, 7, 1));
    assert_eq!((c.https.max_connections_per_source, c.https.connection_rate_per_source), (3, 0));
    assert_eq!(c.sftp.unwrap().max_connections_per_source, 2);
    let e = errs(&format!(
        "{MINIMAL}[https]\nmax_connections_per_source = -1\n[defender]\nenabled = 1\nthreshold = 0\nwindow = \"0s\"\n\
         ban_time = \"1h\"\nban_time_max = \"1m\"\nipv6_prefix = 129\nsafelist = [\"10.0.0.1/8\", 5, \"nope\"]\n\
         max_sources = 1\nbogus = 1\n[defender.weights]\nlimit_hit = 1001\nfoo = 1\n"
    ));
    for (path, needle) in [
        ("https.max_connections_per_source", "between 0 and"),
        ("defender.enabled", "true or false"),
        ("defender.threshold", "between 1 and 100000"),
        ("defender.window", "greater than 0"),
        ("defender.ban_time_max", "at least ban_time"),
        ("defender.ipv6_prefix", "between 1 and 128"),
        ("defender.safelist[0]", "host bits"),
        ("defender.safelist[1]", "a string"),
        ("defender.safelist[2]", "invalid address"),
        ("defender.max_sources", "between 16 and"),
        ("defender.bogus", "unknown key"),
        ("defender.weights.limit_hit", "between 0 and 1000"),
        ("defender.weights.foo", "unknown key"),
    ] {
        assert!(has(&e, path, needle), "no {path}: {needle} in {e:#?}");
    }
}

#[test]
fn shipped_sample_parses_cleanly() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml"));
    let config = load(path).unwrap();
    assert_eq!(config.mode, Mode::Development);
    assert_eq!(config.data_dir, PathBuf::from("./data"));
    assert_eq!(config.https.listen, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(config.https.tls_profile, TlsProfile::Aes256);
    assert_eq!(config.tenants.len(), 1);
    let demo = config.users.iter().find(|u| u.name == "demo").unwrap();
    assert_eq!(demo.tenant, "demo");
    assert_eq!(demo.home, "demo");
    assert_eq!(demo.permissions.names(), ["list", "read", "write", "delete", "rename", "mkdir"]);
    assert!(demo.tokens.is_empty());
    // A demo user with no token, key or password is fine.
    assert!(demo.authorized_keys.is_empty() && demo.password_hash.is_none());
    assert_eq!(config.development.demo_user.as_deref(), Some("demo"));
    let sftp = config.sftp.as_ref().expect("the development sample enables [sftp]");
    assert_eq!(sftp.listen, "127.0.0.1:2222".parse().unwrap());
    assert_eq!(sftp.algorithms, SshAlgorithms::defaults());
    // Same result through the lenient entry point.
    let _ = ok(SAMPLE);
}

#[test]
fn production_example_parses_cleanly() {
    let config = ok(PRODUCTION);
    assert_eq!(config.mode, Mode::Production);
    assert_eq!(config.tenants.len(), 2);
    assert_eq!(config.tenants[1].key_file, PathBuf::from("/etc/gateway/keys/globex.key"));
    assert_eq!(config.users.len(), 3);
    assert_eq!(config.users[1].home, "");
    assert_eq!(config.users[1].tokens.len(), 2);
    assert_eq!(config.users[2].tokens[0].sha256, [0xde, 0xad, 0xbe, 0xef].repeat(8)[..]);
    assert!(config.development.demo_user.is_none());
    let sftp = config.sftp.as_ref().unwrap();
    assert_eq!(sftp.listen, "0.0.0.0:22".parse().unwrap());
    assert_eq!(
        sftp.host_keys,
        [Path::new("/etc/gateway/ssh/ssh_host_ed25519_key"), Path::new("/etc/gateway/ssh/ssh_host_rsa_key")]
    );
    assert_eq!(sftp.max_auth_attempts, 3);
    assert_eq!(sftp.algorithms.profile, SshProfile::Strict);
    assert_eq!(sftp.algorithms, SshAlgorithms::defaults());
    assert_eq!(config.users[0].authorized_keys.len(), 1);
    assert!(config.users[0].authorized_keys[0].starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"));
    assert!(config.users[1].authorized_keys.is_empty());
}

#[test]
fn defaults() {
    let config = ok(MINIMAL);
    assert_eq!(config.data_dir, PathBuf::from("./data"));
    assert_eq!(config.shutdown_grace, Duration::from_secs(30));
    let h = &config.https;
    assert_eq!(h.listen, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(h.tls_profile, TlsProfile::Aes256);
    assert_eq!(h.cert, Path::new("./data/tls/server.pem"));
    assert_eq!(h.key, Path::new("./data/tls/server.key"));
    assert_eq!(h.handshake_timeout, Duration::from_secs(10));
    assert_eq!(h.idle_timeout, Duration::from_secs(60));
    assert_eq!(h.max_connections, 1024);
    assert_eq!(h.hsts_max_age, Duration::from_secs(365 * 86_400));
    let StorageBackend::Local { root } = &config.storage.backend;
    assert_eq!(root, Path::new("./data/store"));
    assert_eq!(config.storage.keys_dir, Path::new("./data/keys"));
    assert_eq!(config.audit.path, Path::new("./data/audit/audit.jsonl"));
    assert_eq!(config.audit.signing_key, Path::new("./data/audit/checkpoint.key"));
    assert_eq!(config.audit.checkpoint_every_records, 1000);
    assert_eq!(config.audit.checkpoint_interval, Duration::from_secs(60));
    assert!(config.tenants.is_empty() && config.users.is_empty());
    assert!(config.development.demo_user.is_none());
    assert!(config.sftp.is_none(), "no [sftp] section means SFTP is off");
}

#[test]
fn derived_paths_use_data_dir_and_keys_dir_declared_later() {
    // [storage] keys_dir comes after the tenants that default to it.
    let config = ok(r#"
mode = "production"
data_dir = "/d"

[[tenants]]
name = "t"

[https]
listen = "[::1]:9443"

[[tenants]]
name = "u"
key_file = "u.key"

[storage]
keys_dir = "/k"
"#);
    assert_eq!(config.https.cert, Path::new("/d/tls/server.pem"));
    assert_eq!(config.https.listen, "[::1]:9443".parse().unwrap());
    assert_eq!(config.tenants[0].key_file, Path::new("/k/t.key"));
    assert_eq!(config.tenants[1].key_file, Path::new("u.key"));
    assert_eq!(config.audit.path, Path::new("/d/audit/audit.jsonl"));
}

#[test]
fn data_dir_after_sections_is_still_used() {
    // Top-level keys must precede tables in TOML, but a dotted key can set
    // data_dir "later" in the text; defaults must still follow it.
    let config = ok("mode = \"development\"\nhttps.listen = \"127.0.0.1:1\"\ndata_dir = \"/late\"\n");
    assert_eq!(config.https.cert, Path::new("/late/tls/server.pem"));
    assert_eq!(config.storage.keys_dir, Path::new("/late/keys"));
}

#[test]
fn bad_config_reports_every_error_at_once() {
    let text = r#"
mode = "development"
colour = "blue"

[https]
listen = "localhost:8443"
idle_timeout = "10 s"

[[tenants]]
name = "acme"

[[users]]
name = "alice"
tenant = "acme"
home = "/in"
permissions = ["read"]

[[users]]
name = "bob"
tenant = "nope"
home = "/"
permissions = ["read", "fly"]

[[users.tokens]]
id = "bob-1"
sha256 = "abc"

[[users]]
name = "alice"
tenant = "acme"
home = "/"
permissions = ["all"]
"#;
    let (config, errors) = parse(text, "bad.toml");
    let got: Vec<(String, String)> = errors.iter().map(|e| (e.path.clone(), e.message.clone())).collect();
    assert!(has(&got, "colour", "unknown key \"colour\""), "{got:#?}");
    assert!(has(&got, "colour", "accepted: mode, data_dir"), "{got:#?}");
    assert!(has(&got, "https.listen", "invalid socket address"), "{got:#?}");
    assert!(has(&got, "https.idle_timeout", "\"10s\""), "{got:#?}");
    assert!(has(&got, "users[1].tenant", "unknown tenant \"nope\" (configured: acme)"), "{got:#?}");
    assert!(has(&got, "users[1].permissions[1]", "unknown permission \"fly\""), "{got:#?}");
    assert!(has(&got, "users[1].tokens[0].sha256", "64 hex"), "{got:#?}");
    assert!(has(&got, "users[2].name", "duplicate user name \"alice\""), "{got:#?}");
    assert_eq!(got.len(), 7, "{got:#?}");
    assert!(errors.iter().all(|e| e.origin == "bad.toml"));
    // Lenient result: defaults for bad fields, bad entries dropped.
    assert_eq!(config.https.listen, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(config.users.len(), 1);
    assert_eq!(config.users[0].name, "alice");
    // Display formats.
    assert_eq!(
        errors[0].to_string(),
        "bad.toml: colour: unknown key \"colour\" (accepted: mode, data_dir, shutdown_grace, https, sftp, admin, storage, storages, audit, tenants, users, development, defender, alerts, mfa, accounts)"
    );
    let all = ConfigErrors(errors).to_string();
    assert_eq!(all.lines().count(), 7);
}

#[test]
fn unknown_keys_at_every_level() {
    let got = errs(
        r#"
mode = "development"
[https]
lsiten = "x"
[storage]
rot = "x"
[audit]
x = 1
[[tenants]]
name = "a"
kye_file = "x"
[[users]]
name = "u"
tenant = "a"
home = "/"
permissions = ["all"]
admin = true
[[users.tokens]]
id = "t"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
secret = "x"
[development]
demo = "u"
"#,
    );
    for path in [
        "https.lsiten",
        "storage.rot",
        "audit.x",
        "tenants[0].kye_file",
        "users[0].admin",
        "users[0].tokens[0].secret",
        "development.demo",
    ] {
        assert!(has(&got, path, "unknown key"), "{path}: {got:#?}");
    }
    assert_eq!(got.len(), 7, "{got:#?}");
    assert!(has(&got, "https.lsiten", "accepted: listen, tls_profile"));
}

#[test]
fn odd_keys_are_quoted_in_paths() {
    let got = errs("mode = \"development\"\n\"we ird\" = 1\n");
    assert!(has(&got, "\"we ird\"", "unknown key"), "{got:#?}");
}

#[test]
fn mode_is_required_and_typed() {
    let got = errs("");
    assert!(has(&got, "mode", "missing required key"), "{got:#?}");
    assert_eq!(got.len(), 1);
    let got = errs("mode = \"prod\"");
    assert!(has(&got, "mode", "unknown mode \"prod\" (accepted: development, production)"), "{got:#?}");
    let got = errs("mode = 1");
    assert!(has(&got, "mode", "expected a string, found an integer"), "{got:#?}");
    // Lenient fallback is the mode that generates nothing.
    assert_eq!(parse("", "x").0.mode, Mode::Production);
}

#[test]
fn wrong_types_name_the_expected_type() {
    let got = errs(
        r#"
mode = "development"
data_dir = 5
shutdown_grace = 30
https = "yes"
tenants = "a"
[audit]
checkpoint_every_records = "1000"
"#,
    );
    assert!(has(&got, "data_dir", "expected a string, found an integer"));
    assert!(has(&got, "shutdown_grace", "expected a duration string"));
    assert!(has(&got, "shutdown_grace", "\"10s\""));
    assert!(has(&got, "https", "expected a table, found a string"));
    assert!(has(&got, "tenants", "expected an array of tables"));
    assert!(has(&got, "audit.checkpoint_every_records", "expected an integer, found a string"));
    assert_eq!(got.len(), 5, "{got:#?}");
}

#[test]
fn syntax_error_is_one_error_with_position() {
    let (config, errors) = parse("mode = \"development\"\n[https\n", "s.toml");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].path, "");
    assert!(errors[0].message.contains("line 2"), "{errors:#?}");
    assert!(errors[0].message.contains("column"), "{errors:#?}");
    assert!(!errors[0].message.contains('\n'));
    assert!(errors[0].to_string().starts_with("s.toml: invalid TOML"));
    assert_eq!(config.https.max_connections, 1024);
}

#[test]
fn range_and_enum_checks() {
    let got = errs(
        r#"
mode = "development"
[https]
tls_profile = "modern"
max_connections = 0
handshake_timeout = "0s"
hsts_max_age = "0s"
[storage]
backend = "s3"
[audit]
checkpoint_every_records = 0
checkpoint_interval = "0ms"
"#,
    );
    assert!(has(&got, "https.tls_profile", "unknown tls_profile \"modern\" (accepted: aes256, intermediate)"));
    assert!(has(&got, "https.max_connections", "between 1 and 1000000"));
    assert!(has(&got, "https.handshake_timeout", "greater than 0"));
    assert!(has(&got, "storage.backend", "unknown backend \"s3\" (accepted: local)"));
    assert!(has(&got, "audit.checkpoint_every_records", "at least 1"));
    assert!(has(&got, "audit.checkpoint_interval", "greater than 0"));
    assert_eq!(got.len(), 6, "{got:#?}");
    assert!(errs("mode = \"development\"\nhttps.max_connections = 1000001")
        .iter()
        .any(|(p, _)| p == "https.max_connections"));
    assert_eq!(ok("mode = \"development\"\nhttps.max_connections = 1000000").https.max_connections, 1_000_000);
}

#[test]
fn names_tenants_and_tokens() {
    let got = errs(
        r#"
mode = "development"
[[tenants]]
name = "-bad"
[[tenants]]
name = "a"
[[tenants]]
name = "a"
[[tenants]]
name = "b"
key_file = "./data/keys/a.key"
[[tenants]]
[[users]]
name = "u1"
tenant = "a"
home = "/"
permissions = ["read"]
[[users.tokens]]
id = "tok"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[[users]]
name = "u2"
tenant = "a"
home = "/"
permissions = ["read"]
[[users.tokens]]
id = "tok"
sha256 = "000000000000000000000000000000000000000000000000000000000000000g"
[[users.tokens]]
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
"#,
    );
    assert!(has(&got, "tenants[0].name", "must not start with"), "{got:#?}");
    assert!(has(&got, "tenants[2].name", "duplicate tenant name \"a\" (first defined at tenants[1])"), "{got:#?}");
    assert!(has(&got, "tenants[3].key_file", "already used by tenants[1]"), "{got:#?}");
    assert!(has(&got, "tenants[4].name", "missing required key"), "{got:#?}");
    assert!(
        has(&got, "users[1].tokens[0].id", "duplicate token id \"tok\" (first defined at users[0].tokens[0])"),
        "{got:#?}"
    );
    assert!(has(&got, "users[1].tokens[0].sha256", "non-hex"), "{got:#?}");
    assert!(has(&got, "users[1].tokens[1].id", "missing required key"), "{got:#?}");
    assert_eq!(got.len(), 7, "{got:#?}");
}

#[test]
fn users_need_tenant_home_and_permissions() {
    let got = errs(
        r#"
mode = "development"
[[users]]
name = "u"
[[users]]
name = "v"
tenant = "t"
home = "/"
permissions = []
"#,
    );
    assert!(has(&got, "users[0].tenant", "missing required key"), "{got:#?}");
    assert!(has(&got, "users[0].home", "missing required key"), "{got:#?}");
    assert!(has(&got, "users[0].permissions", "grants nothing"), "{got:#?}");
    assert!(has(&got, "users[1].tenant", "no tenants are configured"), "{got:#?}");
    assert!(has(&got, "users[1].permissions", "grants nothing"), "{got:#?}");
    assert_eq!(got.len(), 5, "{got:#?}");
}

#[test]
fn permissions_parse() {
    let config = ok(r#"
mode = "development"
[[tenants]]
name = "t"
[[users]]
name = "a"
tenant = "t"
home = ""
permissions = ["read", "read", "list"]
[[users]]
name = "b"
tenant = "t"
home = "x"
permissions = ["all", "read"]
"#);
    assert_eq!(config.users[0].permissions.names(), ["list", "read"]);
    assert!(!config.users[0].permissions.write);
    assert_eq!(config.users[1].permissions.names().len(), 6);
    assert_eq!(Permissions::default().names(), Vec::<&str>::new());
}

#[test]
fn development_section_rules() {
    let users =
        "[[tenants]]\nname = \"t\"\n[[users]]\nname = \"u\"\ntenant = \"t\"\nhome = \"/\"\npermissions = [\"read\"]\n";
    let got = errs(&format!("mode = \"production\"\n{users}[development]\ndemo_user = \"u\"\n"));
    assert!(has(&got, "development", "not allowed when mode = \"production\""), "{got:#?}");
    assert_eq!(got.len(), 1, "{got:#?}");
    let got = errs(&format!("mode = \"development\"\n{users}[development]\ndemo_user = \"nobody\"\n"));
    assert!(has(&got, "development.demo_user", "unknown user \"nobody\" (configured: u)"), "{got:#?}");
    assert_eq!(got.len(), 1, "{got:#?}");
    let config = ok(&format!("mode = \"development\"\n{users}[development]\ndemo_user = \"u\"\n"));
    assert_eq!(config.development.demo_user.as_deref(), Some("u"));
}

#[test]
fn home_normalisation() {
    for (input, want) in [
        ("", ""),
        ("/", ""),
        ("/partners/acme", "partners/acme"),
        ("partners/acme", "partners/acme"),
        ("/partners/acme/", "partners/acme"),
        ("a", "a"),
        ("a/", "a"),
        ("ünïcode/ok", "ünïcode/ok"),
        ("..a/b..", "..a/b.."),
    ] {
        assert_eq!(normalize_home(input).as_deref(), Ok(want), "{input:?}");
    }
    let long = "x".repeat(256);
    for bad in
        ["..", "/../x", "a/./b", ".", "a//b", "//", "//a", "a//", "a\\b", "a\u{0}b", "a\nb", "a\u{7f}", long.as_str()]
    {
        assert!(normalize_home(bad).is_err(), "{bad:?}");
    }
    assert!(normalize_home(&"x".repeat(255)).is_ok());
    // Through the parser, with the path of the field.
    let got = errs(
        "mode = \"development\"\n[[tenants]]\nname = \"t\"\n[[users]]\nname = \"u\"\ntenant = \"t\"\nhome = \"/a/../b\"\npermissions = [\"all\"]\n",
    );
    assert!(has(&got, "users[0].home", "invalid home"), "{got:#?}");
}

#[test]
fn name_rules() {
    for good in ["a", "A-z_0.9", "demo", "x.", &"n".repeat(64)] {
        assert!(check_name(good).is_ok(), "{good:?}");
    }
    for bad in ["", ".x", "-x", "a b", "a/b", "é", &"n".repeat(65)] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn sha256_rules() {
    let d = parse_sha256(&"Ab".repeat(32)).unwrap();
    assert_eq!(d, [0xab; 32]);
    assert!(parse_sha256(&"a".repeat(63)).is_err());
    assert!(parse_sha256(&"a".repeat(65)).is_err());
    assert!(parse_sha256(&format!("{}zz", "a".repeat(62))).is_err());
    assert!(parse_sha256("").is_err());
}

#[test]
fn token_debug_is_redacted() {
    let token = TokenConfig { id: "t1".to_owned(), sha256: [0xab; 32] };
    let shown = format!("{token:?}");
    assert!(shown.contains("t1") && shown.contains("sha256: <redacted>"), "{shown}");
    assert!(!shown.contains("171") && !shown.to_lowercase().contains("abab"));
}

#[test]
fn durations() {
    for (input, want) in [
        ("0s", Duration::ZERO),
        ("0ms", Duration::ZERO),
        ("500ms", Duration::from_millis(500)),
        ("10s", Duration::from_secs(10)),
        ("5m", Duration::from_secs(300)),
        ("2h", Duration::from_secs(7200)),
        ("90d", Duration::from_secs(90 * 86_400)),
        ("007s", Duration::from_secs(7)),
        ("36500d", Duration::from_secs(36_500 * 86_400)),
    ] {
        assert_eq!(parse_duration(input), Ok(want), "{input:?}");
    }
    for bad in [
        "",
        "10",
        "s",
        "10 s",
        " 10s",
        "10s ",
        "-1s",
        "+1s",
        "1.5s",
        "10S",
        "10sec",
        "1h30m",
        "10us",
        "36501d",
        "99999999999999999999s",
    ] {
        let err = parse_duration(bad).unwrap_err();
        assert!(err.contains("\"500ms\""), "{bad:?}: {err}");
    }
}

#[test]
fn load_reports_unreadable_file_and_bad_content() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let errors = load(&missing).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].path, "");
    assert!(errors.0[0].message.contains("missing.toml"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "mode = \"development\"\nx = 1\ny = 2\n").unwrap();
    let errors = load(&bad).unwrap_err();
    assert_eq!(errors.0.len(), 2);
    assert_eq!(errors.0[0].origin, bad.display().to_string());
    let shown = errors.to_string();
    assert_eq!(shown.lines().count(), 2);
    assert!(shown.lines().all(|l| l.starts_with(&bad.display().to_string())));
}

// ---------------------------------------------------------------- SFTP / SSH

/// A syntactically valid (fake) Ed25519 public key line.
const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5Zm9yZXhhbXBsZXNvbmx5MDEyMzQ1Njc4OTAx alice@laptop";
const KEY_B: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBF== bob@desk";
/// A well-formed password hash (fake salt and hash).
const HASH: &str = "pbkdf2-sha256$600000$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g=";

/// One tenant `t` and one user `u` with `extra` appended to the user table.
fn with_user(extra: &str) -> String {
    format!(
        "mode = \"development\"\n[[tenants]]\nname = \"t\"\n[[users]]\nname = \"u\"\ntenant = \"t\"\nhome = \"/\"\npermissions = [\"all\"]\n{extra}\n"
    )
}

#[test]
fn sftp_defaults() {
    let config = ok("mode = \"development\"\ndata_dir = \"/srv/gw\"\n[sftp]\n");
    let sftp = config.sftp.unwrap();
    assert_eq!(sftp.listen, "127.0.0.1:2222".parse().unwrap());
    assert_eq!(
        sftp.host_keys,
        [Path::new("/srv/gw/ssh/ssh_host_ed25519_key"), Path::new("/srv/gw/ssh/ssh_host_rsa_key")]
    );
    assert_eq!(sftp.login_grace_time, Duration::from_secs(30));
    assert_eq!(sftp.max_auth_attempts, 6);
    assert_eq!(sftp.auth_rejection_delay, Duration::from_secs(1));
    assert_eq!(sftp.idle_timeout, Duration::from_secs(600));
    assert_eq!(sftp.max_connections, 256);
    assert_eq!(sftp.connection_rate_per_source, 10);
    assert_eq!(sftp.max_buffer_per_connection, 16 << 20);
    assert_eq!(sftp.max_buffer_total, None, "a quarter of the machine's memory, decided at start");
    assert_eq!(sftp.algorithms, SshAlgorithms::defaults());
    // The defaults, in preference order.
    let d = SshAlgorithms::defaults();
    assert_eq!(
        d.kex,
        [
            "mlkem768x25519-sha256",
            "curve25519-sha256",
            "curve25519-sha256@libssh.org",
            "diffie-hellman-group16-sha512",
            "diffie-hellman-group18-sha512"
        ]
    );
    assert_eq!(d.ciphers, ["aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com"]);
    assert_eq!(d.macs, ["hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com"]);
    assert_eq!(d.host_key_algorithms, ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]);
}

#[test]
fn sftp_section_absent_is_none_and_must_be_a_table() {
    assert!(ok(MINIMAL).sftp.is_none());
    assert!(ok(&with_user(&format!("authorized_keys = [\"{KEY_A}\"]"))).sftp.is_none());
    let got = errs("mode = \"development\"\nsftp = true\n");
    assert!(has(&got, "sftp", "expected a table, found a boolean"), "{got:#?}");
}

#[test]
fn sftp_explicit_values() {
    let sftp = ok(r#"
mode = "production"
[sftp]
listen = "[::]:22"
host_keys = ["/k/ed25519"]
kex = ["mlkem768x25519-sha256"]
ciphers = ["aes128-ctr", "aes256-gcm@openssh.com"]
macs = ["hmac-sha2-256"]
host_key_algorithms = ["rsa-sha2-256"]
login_grace_time = "1m"
max_auth_attempts = 20
auth_rejection_delay = "0s"
idle_timeout = "2h"
max_connections = 100000
"#)
    .sftp
    .unwrap();
    assert_eq!(sftp.listen, "[::]:22".parse().unwrap());
    assert_eq!(sftp.host_keys, [PathBuf::from("/k/ed25519")]);
    assert_eq!(sftp.algorithms.kex, ["mlkem768x25519-sha256"]);
    assert_eq!(sftp.algorithms.ciphers, ["aes128-ctr", "aes256-gcm@openssh.com"]);
    assert_eq!(sftp.algorithms.macs, ["hmac-sha2-256"]);
    assert_eq!(sftp.algorithms.host_key_algorithms, ["rsa-sha2-256"]);
    assert_eq!(sftp.login_grace_time, Duration::from_secs(60));
    assert_eq!(sftp.max_auth_attempts, 20);
    assert_eq!(sftp.auth_rejection_delay, Duration::ZERO);
    assert_eq!(sftp.idle_timeout, Duration::from_secs(7200));
    assert_eq!(sftp.max_connections, 100_000);
}

#[test]
fn sftp_profiles_choose_the_lists() {
    let algorithms = |profile: &str| {
        ok(&format!("mode = \"development\"\n[sftp]\nprofile = \"{profile}\"\n")).sftp.unwrap().algorithms
    };
    // strict is the default and what SshAlgorithms::defaults() means.
    assert_eq!(algorithms("strict"), SshAlgorithms::defaults());
    assert_eq!(SshAlgorithms::defaults().profile, SshProfile::Strict);
    assert_eq!(ok("mode = \"development\"\n[sftp]\n").sftp.unwrap().algorithms.profile, SshProfile::Strict);

    // compatible: strict plus AES-CTR with SHA-2 HMACs, ETM first; nothing else changes.
    let strict = SshAlgorithms::defaults();
    let c = algorithms("compatible");
    assert_eq!(c.profile, SshProfile::Compatible);
    assert_eq!(c.kex, strict.kex);
    assert_eq!(
        c.ciphers,
        [
            "aes256-gcm@openssh.com",
            "chacha20-poly1305@openssh.com",
            "aes128-gcm@openssh.com",
            "aes256-ctr",
            "aes192-ctr",
            "aes128-ctr"
        ]
    );
    assert_eq!(
        c.macs,
        ["hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com", "hmac-sha2-512", "hmac-sha2-256"]
    );
    assert_eq!(c.host_key_algorithms, strict.host_key_algorithms);
    assert_eq!(c.explicit, ExplicitAlgorithms::default());

    // post-quantum: ML-KEM key exchange only.
    let pq = algorithms("post-quantum");
    assert_eq!(pq.profile, SshProfile::PostQuantum);
    assert_eq!(pq.kex, ["mlkem768x25519-sha256"]);
    assert_eq!(
        (pq.ciphers, pq.macs, pq.host_key_algorithms),
        (strict.ciphers, strict.macs, strict.host_key_algorithms)
    );

    // No profile ever offers a weak name: every list is within the allow-list.
    for p in SshProfile::ALL {
        let a = p.algorithms();
        assert_eq!(algorithms(p.name()), a);
        for (kind, list) in
            crate::ssh::ALGORITHM_KINDS.iter().zip([&a.kex, &a.ciphers, &a.macs, &a.host_key_algorithms])
        {
            assert!(list.iter().all(|n| kind.accepted.contains(&n.as_str())), "{p}: {list:?}");
        }
    }
}

#[test]
fn sftp_explicit_lists_override_the_profile_per_category() {
    let a = ok(r#"
mode = "development"
[sftp]
profile = "compatible"
ciphers = ["aes128-ctr"]
"#)
    .sftp
    .unwrap()
    .algorithms;
    assert_eq!(a.profile, SshProfile::Compatible);
    assert_eq!(a.ciphers, ["aes128-ctr"]);
    // The other categories still come from the profile.
    assert_eq!(a.macs, SshProfile::Compatible.algorithms().macs);
    assert_eq!(a.kex, SshProfile::Compatible.algorithms().kex);
    assert_eq!(a.explicit, ExplicitAlgorithms { ciphers: true, ..ExplicitAlgorithms::default() });
    // Another profile keeps the explicit list and swaps the rest.
    let pq = a.with_profile(SshProfile::PostQuantum);
    assert_eq!(pq.profile, SshProfile::PostQuantum);
    assert_eq!(pq.ciphers, ["aes128-ctr"]);
    assert_eq!(pq.kex, ["mlkem768x25519-sha256"]);
    assert_eq!(pq.macs, SshProfile::PostQuantum.algorithms().macs);
    assert_eq!(SshAlgorithms::defaults().with_profile(SshProfile::Compatible), SshProfile::Compatible.algorithms());

    // An explicit kex wins over post-quantum's.
    let a = ok("mode = \"development\"\n[sftp]\nprofile = \"post-quantum\"\nkex = [\"curve25519-sha256\"]\n")
        .sftp
        .unwrap()
        .algorithms;
    assert_eq!(a.kex, ["curve25519-sha256"]);
    assert_eq!(a.ciphers, SshProfile::PostQuantum.algorithms().ciphers);
    assert!(a.explicit.kex && !a.explicit.ciphers && !a.explicit.macs && !a.explicit.host_key_algorithms);
}

#[test]
fn sftp_unknown_profile_is_reported_with_its_path() {
    let got = errs("mode = \"development\"\n[sftp]\nprofile = \"legacy\"\nciphers = [\"aes256-cbc\"]\n");
    assert!(
        has(&got, "sftp.profile", "unknown profile \"legacy\" (accepted: strict, compatible, post-quantum)"),
        "{got:#?}"
    );
    // Other problems are still reported alongside.
    assert!(has(&got, "sftp.ciphers[0]", "CBC mode"), "{got:#?}");
    assert_eq!(got.len(), 2, "{got:#?}");
    let got = errs("mode = \"development\"\n[sftp]\nprofile = 1\n");
    assert!(has(&got, "sftp.profile", "expected a string, found an integer"), "{got:#?}");
    // Names are exact: no case folding, no underscores.
    for bad in ["Strict", "post_quantum", "postquantum", ""] {
        let got = errs(&format!("mode = \"development\"\n[sftp]\nprofile = \"{bad}\"\n"));
        assert!(has(&got, "sftp.profile", "unknown profile"), "{bad}: {got:#?}");
    }
    // The lenient result falls back to strict.
    let (config, _) = parse("mode = \"development\"\n[sftp]\nprofile = \"legacy\"\n", "x");
    assert_eq!(config.sftp.unwrap().algorithms, SshAlgorithms::defaults());
}

#[test]
fn bad_algorithm_names_are_all_reported_with_reasons() {
    let got = errs(
        r#"
mode = "development"
[sftp]
kex = ["curve25519-sha256", "diffie-hellman-group14-sha1", "sntrup761x25519-sha512@openssh.com", "aes256-gcm@openssh.com"]
ciphers = ["aes256-cbc", "none", "arcfour256", "3des-cbc", "aes256-gcm@openssh.com"]
macs = ["hmac-sha1", "hmac-md5-96", "hmac-sha2-256"]
host_key_algorithms = ["ssh-rsa", "ssh-ed25519", "ssh-dss", "ssh-ed25519"]
"#,
    );
    let kex_accepted = "(accepted: mlkem768x25519-sha256, curve25519-sha256, curve25519-sha256@libssh.org, \
                        diffie-hellman-group16-sha512, diffie-hellman-group18-sha512)";
    assert!(has(&got, "sftp.kex[1]", "\"diffie-hellman-group14-sha1\" is refused: uses SHA-1"), "{got:#?}");
    assert!(has(&got, "sftp.kex[1]", kex_accepted), "{got:#?}");
    assert!(has(&got, "sftp.kex[2]", "\"sntrup761x25519-sha512@openssh.com\" is refused: not allowed"), "{got:#?}");
    assert!(has(&got, "sftp.kex[3]", "it is a cipher name, not a key exchange name"), "{got:#?}");
    assert!(has(&got, "sftp.ciphers[0]", "\"aes256-cbc\" is refused: CBC mode"), "{got:#?}");
    assert!(has(&got, "sftp.ciphers[0]", "aes256-ctr, aes192-ctr, aes128-ctr)"), "{got:#?}");
    assert!(has(&got, "sftp.ciphers[1]", "\"none\" is refused: no encryption/integrity"), "{got:#?}");
    assert!(has(&got, "sftp.ciphers[2]", "RC4"), "{got:#?}");
    assert!(has(&got, "sftp.ciphers[3]", "CBC mode"), "{got:#?}");
    assert!(has(&got, "sftp.macs[0]", "MAC \"hmac-sha1\" is refused: uses SHA-1"), "{got:#?}");
    assert!(has(&got, "sftp.macs[1]", "uses MD5"), "{got:#?}");
    assert!(has(&got, "sftp.host_key_algorithms[0]", "\"ssh-rsa\" is refused: uses SHA-1"), "{got:#?}");
    assert!(has(&got, "sftp.host_key_algorithms[0]", "(accepted: ssh-ed25519, rsa-sha2-512, rsa-sha2-256)"));
    assert!(has(&got, "sftp.host_key_algorithms[2]", "DSA"), "{got:#?}");
    assert!(
        has(
            &got,
            "sftp.host_key_algorithms[3]",
            "duplicate host key algorithm \"ssh-ed25519\" (first listed at sftp.host_key_algorithms[1])"
        ),
        "{got:#?}"
    );
    assert_eq!(got.len(), 12, "{got:#?}");
    // The lenient result keeps only the vetted entries.
    let (config, _) =
        parse("mode = \"development\"\nsftp.kex = [\"curve25519-sha256\", \"diffie-hellman-group1-sha1\"]\n", "x");
    assert_eq!(config.sftp.unwrap().algorithms.kex, ["curve25519-sha256"]);
}

#[test]
fn sftp_ranges_types_and_unknown_keys() {
    let got = errs(
        r#"
mode = "development"
[https]
listen = "0.0.0.0:8022"
[sftp]
listen = "127.0.0.1:8022"
host_keys = ["/a", "", "/a", 7]
kex = []
ciphers = "aes256-gcm@openssh.com"
macs = [1]
login_grace_time = "0s"
max_auth_attempts = 21
auth_rejection_delay = 1
idle_timeout = "0m"
max_connections = 100001
permit_root_login = true
"#,
    );
    assert!(has(&got, "sftp.listen", "overlaps https.listen (0.0.0.0:8022)"), "{got:#?}");
    assert!(has(&got, "sftp.host_keys[1]", "must not be empty"), "{got:#?}");
    assert!(
        has(&got, "sftp.host_keys[2]", "duplicate host key \"/a\" (first listed at sftp.host_keys[0])"),
        "{got:#?}"
    );
    assert!(has(&got, "sftp.host_keys[3]", "expected a string, found an integer"), "{got:#?}");
    assert!(has(&got, "sftp.kex", "must list at least one key exchange (accepted: mlkem768x25519-sha256"), "{got:#?}");
    assert!(has(&got, "sftp.ciphers", "expected an array of strings, found a string"), "{got:#?}");
    assert!(has(&got, "sftp.macs[0]", "expected a string, found an integer"), "{got:#?}");
    assert!(has(&got, "sftp.login_grace_time", "greater than 0"), "{got:#?}");
    assert!(has(&got, "sftp.max_auth_attempts", "between 1 and 20, found 21"), "{got:#?}");
    assert!(has(&got, "sftp.auth_rejection_delay", "expected a duration string"), "{got:#?}");
    assert!(has(&got, "sftp.idle_timeout", "greater than 0"), "{got:#?}");
    assert!(has(&got, "sftp.max_connections", "between 1 and 100000, found 100001"), "{got:#?}");
    assert!(has(
        &got,
        "sftp.permit_root_login",
        "unknown key \"permit_root_login\" (accepted: listen, host_keys, profile, kex"
    ));
    assert_eq!(got.len(), 13, "{got:#?}");

    let got =
        errs("mode = \"development\"\n[sftp]\nhost_keys = []\nmax_auth_attempts = 0\nlisten = \"localhost:22\"\n");
    assert!(has(&got, "sftp.host_keys", "at least one host key"), "{got:#?}");
    assert!(has(&got, "sftp.max_auth_attempts", "between 1 and 20, found 0"), "{got:#?}");
    assert!(has(&got, "sftp.listen", "expected IP:port such as \"127.0.0.1:2222\""), "{got:#?}");
    assert_eq!(got.len(), 3, "{got:#?}");

    // Port 0 (ephemeral, as in tests) never counts as a clash.
    let config = ok("mode = \"development\"\nhttps.listen = \"127.0.0.1:0\"\nsftp.listen = \"127.0.0.1:0\"\n");
    assert_eq!(config.sftp.unwrap().listen.port(), 0);
    // A different IP on the same port is fine; the same IP is not.
    assert!(
        errs("mode = \"development\"\nhttps.listen = \"127.0.0.1:22\"\nsftp.listen = \"127.0.0.2:22\"\n").is_empty()
    );
    assert_eq!(
        errs("mode = \"development\"\nhttps.listen = \"127.0.0.1:22\"\nsftp.listen = \"127.0.0.1:22\"\n").len(),
        1
    );
}

#[test]
fn authorized_keys_are_trimmed_and_checked() {
    let config = ok(&with_user(&format!(
        "authorized_keys = [\"  {KEY_A}\\n\", \"{KEY_B}\", \"sk-ssh-ed25519@openssh.com AAAAGnNr\", \"ssh-rsa AAAAB3NzaC1yc2E=\"]"
    )));
    let keys = &config.users[0].authorized_keys;
    assert_eq!(keys.len(), 4);
    assert_eq!(keys[0], KEY_A);
    assert_eq!(keys[1], KEY_B);

    let got = errs(&with_user(&format!(
        r#"authorized_keys = [
    "",
    "ssh-ed25519 AAAA first\nssh-ed25519 BBBB second",
    "ssh-ed25519",
    "ssh-ed25519 not-base64!",
    'from="10.0.0.0/8" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5',
    "AAAAC3NzaC1lZDI1NTE5 alice",
    "{KEY_A}",
    "{KEY_A} other-comment",
    3,
]"#
    )));
    assert!(has(&got, "users[0].authorized_keys[0]", "must not be empty"), "{got:#?}");
    assert!(has(&got, "users[0].authorized_keys[1]", "single line"), "{got:#?}");
    assert!(has(&got, "users[0].authorized_keys[2]", "found only the key type"), "{got:#?}");
    assert!(has(&got, "users[0].authorized_keys[3]", "not base64"), "{got:#?}");
    assert!(has(&got, "users[0].authorized_keys[4]", "options before the key type are not supported"), "{got:#?}");
    assert!(has(&got, "users[0].authorized_keys[5]", "options before the key type are not supported"), "{got:#?}");
    assert!(has(&got, "users[0].authorized_keys[7]", "duplicate key (same key as users[0].authorized_keys[6])"));
    assert!(has(&got, "users[0].authorized_keys[8]", "expected a string, found an integer"), "{got:#?}");
    assert_eq!(got.len(), 8, "{got:#?}");
    // The user itself is kept, with only the good key.
    let (config, _) = parse(&with_user(&format!("authorized_keys = [\"{KEY_A}\", \"bad\"]")), "x");
    assert_eq!(config.users[0].authorized_keys, [KEY_A]);

    let got = errs(&with_user("authorized_keys = \"ssh-ed25519 AAAA\""));
    assert!(has(&got, "users[0].authorized_keys", "expected an array of strings, found a string"), "{got:#?}");
}

#[test]
fn password_hash_is_shape_checked_and_never_shown() {
    let config = ok(&with_user(&format!("password_hash = \"{HASH}\"")));
    let user = &config.users[0];
    assert_eq!(user.password_hash.as_ref().map(PasswordHash::as_str), Some(HASH));
    let shown = format!("{user:?}");
    assert!(shown.contains("password_hash: Some(<set>)"), "{shown}");
    assert!(!shown.contains("pbkdf2") && !shown.contains("c2FsdHNhbHRzYWx0") && !shown.contains("aGFzaGhh"), "{shown}");
    let shown = format!("{config:?}");
    assert!(!shown.contains("pbkdf2") && !shown.contains("aGFzaGhh"), "{shown}");
    assert!(format!("{:?}", ok(&with_user("")).users[0]).contains("password_hash: None"));

    let secret = "c2VjcmV0c2VjcmV0";
    for (bad, why) in [
        ("".to_owned(), "found 1 '$'-separated parts"),
        (format!("pbkdf2-sha256$600000${secret}"), "found 3"),
        (format!("pbkdf2-sha256$600000${secret}${secret}$x"), "found 5"),
        (format!("pbkdf2-sha1$600000${secret}${secret}"), "unsupported scheme"),
        (format!("argon2id$600000${secret}${secret}"), "unsupported scheme"),
        (format!("pbkdf2-sha256$99999${secret}${secret}"), "99999 iterations is too few (at least 100000)"),
        (format!("pbkdf2-sha256$+600000${secret}${secret}"), "iterations must be an integer"),
        (format!("pbkdf2-sha256$lots${secret}${secret}"), "iterations must be an integer"),
        (format!("pbkdf2-sha256$99999999999${secret}${secret}"), "iterations must be an integer"),
        (format!("pbkdf2-sha256$600000$${secret}"), "the salt is empty or not base64"),
        (format!("pbkdf2-sha256$600000$sa lt${secret}"), "the salt is empty or not base64"),
        (format!("pbkdf2-sha256$600000${secret}$"), "the hash is empty or not base64"),
        (format!("pbkdf2-sha256$600000${secret}$ab=c"), "the hash is empty or not base64"),
    ] {
        let err = PasswordHash::parse(&bad).unwrap_err();
        assert!(err.contains(why), "{bad:?}: {err}");
        assert!(!err.contains(secret), "the message echoes the value: {err}");
        let got = errs(&with_user(&format!("password_hash = {bad:?}")));
        assert!(has(&got, "users[0].password_hash", why), "{bad:?}: {got:#?}");
        assert_eq!(got.len(), 1, "{got:#?}");
    }
    assert!(PasswordHash::parse("pbkdf2-sha256$100000$a$b").is_ok());
    let got = errs(&with_user("password_hash = 5"));
    assert!(has(&got, "users[0].password_hash", "expected a string, found an integer"), "{got:#?}");
}

#[test]
fn add_authorized_key_edits_only_that_user() {
    let text = r#"# top comment
mode = "development"

[[tenants]]
name = "t"

# Alice, our partner.
[[users]]
name = "alice"   # keep me
tenant = "t"
home = "/"
permissions = ["read"]

[[users]]
name = "bob"
tenant = "t"
home = "/"
permissions = ["read"]
authorized_keys = ["ssh-ed25519 AAAAbob bob@desk"]
"#;
    let out = add_authorized_key(text, "alice", &format!("  {KEY_A}\n")).unwrap();
    assert!(out.contains("# top comment\n") && out.contains("# Alice, our partner.\n"), "{out}");
    assert!(out.contains("name = \"alice\"   # keep me\n"), "{out}");
    assert!(out.contains(&format!("authorized_keys = [\n    \"{KEY_A}\",\n]\n")), "{out}");
    let config = ok(&out);
    assert_eq!(config.users[0].authorized_keys, [KEY_A]);
    assert_eq!(config.users[1].authorized_keys, ["ssh-ed25519 AAAAbob bob@desk"]);

    // Appending to an existing array, and then to a multi-line one.
    let out = add_authorized_key(&out, "bob", KEY_A).unwrap();
    let out = add_authorized_key(&out, "alice", KEY_B).unwrap();
    assert!(out.contains(&format!("authorized_keys = [\n    \"{KEY_A}\",\n    \"{KEY_B}\",\n]\n")), "{out}");
    let config = ok(&out);
    assert_eq!(config.users[0].authorized_keys, [KEY_A, KEY_B]);
    assert_eq!(config.users[1].authorized_keys, ["ssh-ed25519 AAAAbob bob@desk", KEY_A]);
    assert!(out.contains("# keep me") && out.contains("# top comment"));
}

#[test]
fn add_authorized_key_keeps_comments_inside_arrays() {
    let text = "[[users]]\nname = \"a\"\nauthorized_keys = [\n  \"ssh-ed25519 AAAA a\" # laptop\n]\n# after\n";
    let out = add_authorized_key(text, "a", KEY_A).unwrap();
    assert_eq!(
        out,
        format!("[[users]]\nname = \"a\"\nauthorized_keys = [\n  \"ssh-ed25519 AAAA a\", # laptop\n  \"{KEY_A}\",\n]\n# after\n")
    );
    let text = "[[users]]\nname = \"a\"\nauthorized_keys = [\n  \"ssh-ed25519 AAAA a\", # laptop\n]\n";
    let out = add_authorized_key(text, "a", KEY_A).unwrap();
    assert_eq!(
        out,
        format!(
            "[[users]]\nname = \"a\"\nauthorized_keys = [\n  \"ssh-ed25519 AAAA a\", # laptop\n  \"{KEY_A}\",\n]\n"
        )
    );
    // Inline tables get a one-line array.
    let out =
        add_authorized_key("users = [{ name = \"b\" }, { name = \"a\", authorized_keys = [] }]\n", "a", KEY_A).unwrap();
    let parsed: toml::Table = out.parse().unwrap();
    assert_eq!(parsed["users"][1]["authorized_keys"][0].as_str(), Some(KEY_A));
    assert!(parsed["users"][0].get("authorized_keys").is_none());
}

#[test]
fn add_authorized_key_refusals() {
    let text = with_user(&format!("authorized_keys = [\"{KEY_A}\"]"));
    let err = add_authorized_key(&text, "nobody", KEY_B).unwrap_err();
    assert!(err.contains("no [[users]] entry is named \"nobody\""), "{err}");
    let err = add_authorized_key(MINIMAL, "u", KEY_B).unwrap_err();
    assert!(err.contains("no [[users]] entry"), "{err}");
    let err = add_authorized_key(&text, "u", &format!(" {KEY_A} ")).unwrap_err();
    assert!(err.contains("already has this key"), "{err}");
    // Same key with another comment: the loader would refuse it, so refuse here.
    let same_key = KEY_A.replace("alice@laptop", "alice@phone");
    assert!(add_authorized_key(&text, "u", &same_key).unwrap_err().contains("already has this key"));
    let err = add_authorized_key("mode = \n", "u", KEY_B).unwrap_err();
    assert!(err.starts_with("invalid TOML"), "{err}");
    let err = add_authorized_key(&text, "u", "from=\"x\" ssh-ed25519 AAAA").unwrap_err();
    assert!(err.contains("options before the key type"), "{err}");
    let err = add_authorized_key(&with_user("authorized_keys = \"x\""), "u", KEY_B).unwrap_err();
    assert!(err.contains("not an array"), "{err}");
    let dup = format!("{}[[users]]\nname = \"u\"\n", with_user(""));
    assert!(add_authorized_key(&dup, "u", KEY_B).unwrap_err().contains("2 [[users]] entries"));
}

#[test]
fn add_authorized_key_to_shipped_samples() {
    let out = add_authorized_key(SAMPLE, "demo", KEY_A).unwrap();
    let config = ok(&out);
    assert_eq!(config.users[0].authorized_keys, [KEY_A]);
    // Every comment line of the sample survives.
    for line in SAMPLE.lines().filter(|l| l.trim_start().starts_with('#')) {
        assert!(out.contains(line), "lost comment {line:?}");
    }
    let out = add_authorized_key(PRODUCTION, "acme-upload", KEY_B).unwrap();
    let config = ok(&out);
    assert_eq!(config.users[0].authorized_keys.len(), 2);
    assert_eq!(config.users[0].authorized_keys[1], KEY_B);
    assert!(config.users[1].authorized_keys.is_empty() && config.users[2].authorized_keys.is_empty());
}

#[test]
fn ssh_rules_unit() {
    use crate::ssh::{check_authorized_key, refusal_reason, CIPHERS, KEX};
    assert!(check_authorized_key(KEY_A).is_ok());
    assert!(check_authorized_key("ssh-ed25519 AAAA=").is_ok());
    assert!(check_authorized_key("ssh-ed25519 AAAA===").is_err());
    assert!(check_authorized_key("ssh-ed25519 =").is_err());
    assert!(check_authorized_key("ssh-ed25519 AA=A").is_err());
    assert_eq!(refusal_reason(&KEX, "ecdh-sha2-nistp256"), "not allowed");
    assert_eq!(refusal_reason(&CIPHERS, "rijndael-cbc@lysator.liu.se"), "CBC mode");
    assert_eq!(refusal_reason(&CIPHERS, "aes128-cbc"), "CBC mode");
}

#[test]
fn sftp_buffer_budgets_parse_and_refuse_what_cannot_hold_a_packet() {
    let config =
        ok("mode = \"development\"\n[sftp]\nmax_buffer_per_connection = \"64MiB\"\nmax_buffer_total = \"2GiB\"\n");
    let sftp = config.sftp.unwrap();
    assert_eq!((sftp.max_buffer_per_connection, sftp.max_buffer_total), (64 << 20, Some(2 << 30)));
    let got =
        errs("mode = \"development\"\n[sftp]\nmax_buffer_per_connection = \"512KiB\"\nmax_buffer_total = \"lots\"\n");
    assert!(has(&got, "sftp.max_buffer_per_connection", "at least 1MiB"), "{got:#?}");
    assert!(has(&got, "sftp.max_buffer_total", ""), "{got:#?}");
    assert_eq!(got.len(), 2, "{got:#?}");
}

const S3_OK: &str = r#"
mode = "production"
[[storages]]
name = "main"
backend = "s3"
bucket = "partner-drop"
region = "eu-west-1"
part_size = "32MiB"
parts_in_flight = 8
request_timeout = "20s"

[[storages]]
name = "garage"
backend = "s3"
bucket = "gw-test"
region = "garage"
endpoint_url = "http://127.0.0.1:3900"
force_path_style = true
access_key_id_file = "/run/secrets/s3-id"
secret_access_key_file = "/run/secrets/s3-secret"

[[tenants]]
name = "acme"
storage = "main"
sse = "sse-kms"
kms_key_id = "arn:aws:kms:eu-west-1:111122223333:key/abc"
bucket_key = true

[[tenants]]
name = "globex"
storage = "main"
prefix = "/customers/globex"
seal = true
sse = "sse-c"
sse_c_key_file = "/etc/gateway/globex.ssec"

[[tenants]]
name = "initech"
storage = "garage"

[[tenants]]
name = "local"
"#;

#[test]
fn storages_and_tenant_placement_parse() {
    let config = ok(S3_OK);
    assert_eq!(config.storages.len(), 2);
    let main = &config.storages[0].s3;
    assert_eq!((main.bucket.as_str(), main.region.as_str()), ("partner-drop", "eu-west-1"));
    assert_eq!((main.part_size, main.parts_in_flight, main.max_attempts), (32 << 20, 8, 3));
    assert_eq!(main.request_timeout, Duration::from_secs(20));
    assert_eq!(main.credentials, S3Credentials::Chain);
    assert_eq!(main.endpoint_url, None);
    let garage = &config.storages[1].s3;
    assert!(garage.force_path_style);
    assert!(matches!(garage.credentials, S3Credentials::Files { session_token: None, .. }));
    let placement: Vec<&TenantStorage> = config.tenants.iter().map(|t| &t.storage).collect();
    assert_eq!(
        placement[0],
        &TenantStorage::S3 {
            storage: "main".into(),
            prefix: "acme/".into(),
            sse: Sse::Kms { key_id: "arn:aws:kms:eu-west-1:111122223333:key/abc".into(), bucket_key: true },
            seal: false,
        }
    );
    assert_eq!(
        placement[1],
        &TenantStorage::S3 {
            storage: "main".into(),
            prefix: "customers/globex/".into(),
            sse: Sse::C { key_file: "/etc/gateway/globex.ssec".into() },
            seal: true,
        }
    );
    assert!(matches!(placement[2], TenantStorage::S3 { sse: Sse::S3, prefix, .. } if prefix == "initech/"));
    assert_eq!(placement[3], &TenantStorage::Local);
}

#[test]
fn storage_problems_are_all_reported_with_their_paths() {
    let text = r#"
mode = "production"
[[storages]]
name = "s"
backend = "gcs"
bucket = "Bad_Bucket"
region = "eu west"
endpoint_url = "http://s3.example.com"
part_size = "1MiB"
parts_in_flight = 0
access_key_id_file = "/id"

[[storages]]
name = "s"
backend = "s3"
bucket = "ok-bucket"
region = "r"

[[tenants]]
name = "a"
storage = "nowhere"
sse = "none"

[[tenants]]
name = "b"
storage = "s"
prefix = "shared"
sse = "sse-kms"

[[tenants]]
name = "c"
storage = "s"
prefix = "shared/c"
sse = "sse-c"
kms_key_id = "k"

[[tenants]]
name = "d"
sse = "sse-s3"
"#;
    let e = errs(text);
    let expect = [
        ("storages[0].backend", "unknown backend \"gcs\""),
        ("storages[0].bucket", "only lowercase letters"),
        ("storages[0].region", "letters, digits"),
        ("storages[0].endpoint_url", "only allowed to a loopback"),
        ("storages[0].part_size", "between 5MiB and 5GiB"),
        ("storages[0].parts_in_flight", "between 1 and 64"),
        ("storages[0]", "go together"),
        ("storages[1].name", "duplicate storage name"),
        ("tenants[0].storage", "unknown storage \"nowhere\""),
        ("tenants[0].sse", "always encrypted"),
        ("tenants[1].kms_key_id", "missing required key"),
        ("tenants[2].prefix", "overlaps \"shared/\""),
        ("tenants[2].sse_c_key_file", "missing required key"),
        ("tenants[2].kms_key_id", "only applies with sse = \"sse-kms\""),
        ("tenants[3].sse", "only applies to a tenant on a [[storages]] entry"),
    ];
    for (path, needle) in expect {
        assert!(has(&e, path, needle), "no {path}: {needle} in {e:#?}");
    }
    assert_eq!(e.len(), expect.len(), "{e:#?}");
}

#[test]
fn endpoints_buckets_and_prefixes() {
    use crate::text::{check_bucket, check_endpoint, normalize_prefix};
    assert!(check_endpoint("https://s3.eu-west-1.amazonaws.com").is_ok());
    assert!(check_endpoint("http://127.0.0.1:3900").is_ok());
    assert!(check_endpoint("http://[::1]:3900/").is_ok());
    assert!(check_endpoint("http://localhost:9000").is_ok());
    assert!(check_endpoint("http://10.0.0.5:9000").is_err());
    assert!(check_endpoint("https://user:pw@host").is_err());
    assert!(check_endpoint("https://host/path").is_err());
    assert!(check_endpoint("ftp://host").is_err());
    assert!(check_bucket("my.bucket-1").is_ok());
    assert!(check_bucket("ab").is_err());
    assert!(check_bucket("-ab").is_err());
    assert!(check_bucket("a..b").is_err());
    assert_eq!(normalize_prefix("/a/b/").unwrap(), "a/b/");
    assert!(normalize_prefix("/").is_err());
    assert!(normalize_prefix("a/../b").is_err());
    assert!(normalize_prefix("a/.gateway").is_err());
}

#[test]
fn audit_append_timeout_defaults_to_ten_seconds_and_must_be_positive() {
    assert_eq!(ok("mode = \"development\"").audit.append_timeout, Duration::from_secs(10));
    assert_eq!(
        ok("mode = \"development\"\n[audit]\nappend_timeout = \"1500ms\"").audit.append_timeout,
        Duration::from_millis(1500)
    );
    let got = errs("mode = \"development\"\n[audit]\nappend_timeout = \"0s\"");
    assert!(has(&got, "audit.append_timeout", "greater than 0"), "{got:#?}");
}

#[test]
fn admin_listener_is_opt_in_with_loopback_default_and_checked_keys() {
    assert!(ok(MINIMAL).admin.is_none(), "no [admin] section, no admin listener");
    let admin = ok(&format!("{MINIMAL}[admin]\n")).admin.unwrap();
    assert_eq!(admin.listen.to_string(), "127.0.0.1:9090");
    assert!(admin.token_file.is_none());
    let admin = ok(&format!("{MINIMAL}[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"/etc/t\"\n")).admin.unwrap();
    assert_eq!(admin.token_file.as_deref(), Some(std::path::Path::new("/etc/t")));
    let got = errs(&format!("{MINIMAL}[admin]\nlisten = \"nowhere\"\ntoken = \"x\"\n"));
    assert!(has(&got, "admin.listen", ""), "{got:#?}");
    assert!(has(&got, "admin.token", "unknown key"), "{got:#?}");
}

#[test]
fn client_auth_and_certificate_bindings() {
    let base = "mode = \"development\"\n[https.client_auth]\nmode = \"optional\"\nca = \"/etc/gw/clients.pem\"\ncrls = [\"/etc/gw/a.crl\"]\n\
                [[tenants]]\nname = \"acme\"\n";
    let fp = "AB:".repeat(31) + "AB";
    let config = ok(&format!(
        "{base}[[users]]\nname = \"alice\"\ntenant = \"acme\"\nhome = \"/\"\npermissions = [\"read\"]\n\
         client_certificates = [\"sha256:{fp}\", \"cn:alice\", \"san:alice@example.com\"]\n"
    ));
    let ca = config.https.client_auth.clone().unwrap();
    assert_eq!(ca.mode, ClientAuthMode::Optional);
    assert_eq!(ca.crls.len(), 1);
    assert_eq!(
        config.users[0].client_certificates,
        vec![
            CertBinding::Sha256([0xab; 32]),
            CertBinding::CommonName("alice".into()),
            CertBinding::San("alice@example.com".into())
        ]
    );
    // Every problem at once, with its path.
    let got = errs(
        "mode = \"development\"\n[https.client_auth]\nmode = \"sometimes\"\nkey = \"x\"\n[[tenants]]\nname = \"acme\"\n\
         [[users]]\nname = \"a\"\ntenant = \"acme\"\nhome = \"/\"\npermissions = [\"read\"]\nclient_certificates = [\"sha256:12\", \"uid:7\", \"cn:x\"]\n\
         [[users]]\nname = \"b\"\ntenant = \"acme\"\nhome = \"/\"\npermissions = [\"read\"]\nclient_certificates = [\"cn:x\"]\n",
    );
    assert!(has(&got, "https.client_auth.mode", "unknown mode"), "{got:#?}");
    assert!(has(&got, "https.client_auth.ca", "missing required key"), "{got:#?}");
    assert!(has(&got, "https.client_auth.key", "unknown key"), "{got:#?}");
    assert!(has(&got, "users[0].client_certificates[0]", "64 hex digits"), "{got:#?}");
    assert!(has(&got, "users[0].client_certificates[1]", "unknown binding kind"), "{got:#?}");
    assert!(
        has(&got, "users[1].client_certificates[0]", "already bound at users[0].client_certificates[2]"),
        "{got:#?}"
    );
    // Bindings without a client CA can never match: refused.
    let got = errs(
        "mode = \"development\"\n[[tenants]]\nname = \"acme\"\n[[users]]\nname = \"a\"\ntenant = \"acme\"\nhome = \"/\"\n\
         permissions = [\"read\"]\nclient_certificates = [\"cn:a\"]\n",
    );
    assert!(has(&got, "users[0].client_certificates", "no [https.client_auth]"), "{got:#?}");
}

#[test]
fn audit_ship_section() {
    let storages = "[[storages]]\nname = \"s3\"\nbackend = \"s3\"\nbucket = \"data\"\nregion = \"garage\"\n";
    let config =
        ok(&format!("mode = \"development\"\n[audit.ship]\nstorage = \"s3\"\nbucket = \"audit-trail\"\n{storages}"));
    let ship = config.audit.ship.unwrap();
    assert_eq!((ship.prefix.as_str(), ship.interval, ship.retention), ("audit/", Duration::from_secs(60), None));
    let ship = ok(&format!(
        "mode = \"development\"\n[audit.ship]\nstorage = \"s3\"\nnode = \"gw-1\"\nretention_days = 400\nretention_mode = \"governance\"\n{storages}"
    ))
    .audit
    .ship
    .unwrap();
    assert_eq!(ship.retention, Some(Retention { mode: RetentionMode::Governance, days: 400 }));
    let got = errs(
        "mode = \"development\"\n[audit.ship]\nstorage = \"nowhere\"\nprefix = \"/abs\"\nretention_days = 0\nbucket = \"A_B\"\nspeed = 1\n",
    );
    assert!(has(&got, "audit.ship.storage", "unknown storage \"nowhere\""), "{got:#?}");
    assert!(has(&got, "audit.ship.prefix", "invalid prefix"), "{got:#?}");
    assert!(has(&got, "audit.ship.retention_days", "1 to 36500"), "{got:#?}");
    assert!(has(&got, "audit.ship.bucket", "invalid bucket name"), "{got:#?}");
    assert!(has(&got, "audit.ship.speed", "unknown key"), "{got:#?}");
}

#[test]
fn storage_refuse_in_names() {
    assert_eq!(ok(MINIMAL).storage.refuse_in_names, NameRefusal::Invisible);
    for (value, want) in
        [("invisible", NameRefusal::Invisible), ("bidi", NameRefusal::Bidi), ("none", NameRefusal::Nothing)]
    {
        let config = ok(&format!("mode = \"development\"\n[storage]\nrefuse_in_names = {value:?}\n"));
        assert_eq!(config.storage.refuse_in_names, want, "{value}");
    }
    let got = errs("mode = \"development\"\n[storage]\nrefuse_in_names = \"zero-width\"\n");
    assert!(
        has(
            &got,
            "storage.refuse_in_names",
            "unknown refuse_in_names \"zero-width\" (accepted: invisible, bidi, none)"
        ),
        "{got:#?}"
    );
    let got = errs("mode = \"development\"\n[storage]\nrefuse_in_names = false\n");
    assert!(has(&got, "storage.refuse_in_names", "expected a string"), "{got:#?}");
    assert_eq!(got.len(), 1, "{got:#?}");
}

#[test]
fn alerts_section() {
    let absent = ok(MINIMAL);
    assert!(absent.alerts.is_none());
    let config = ok(&format!(
        "{MINIMAL}[alerts]\nwebhook_url = \"https://alerts.example.com:8443/hooks/gw\"\n\
         hmac_key_file = \"/etc/gateway/alert.key\"\nmin_severity = \"warning\"\nmax_outbox = 50\n"
    ));
    let alerts = config.alerts.unwrap();
    assert_eq!(alerts.webhook_url, "https://alerts.example.com:8443/hooks/gw");
    assert_eq!(alerts.hmac_key_file, PathBuf::from("/etc/gateway/alert.key"));
    assert_eq!(alerts.ca_file, None);
    assert_eq!(alerts.timeout, Duration::from_secs(10));
    assert_eq!(alerts.max_outbox, 50);
    assert_eq!(alerts.min_severity, AlertSeverity::Warning);
    assert_eq!((alerts.auth_failure_threshold, alerts.auth_failure_window), (5, Duration::from_secs(600)));
    assert!(AlertSeverity::Info < AlertSeverity::Warning && AlertSeverity::Warning < AlertSeverity::Critical);
    assert_eq!(alerts.syslog, None);
    let loopback = ok(&format!("{MINIMAL}[alerts]\nwebhook_url = \"http://127.0.0.1:9/x\"\nhmac_key_file = \"k\"\n"));
    assert_eq!(loopback.alerts.unwrap().webhook_url, "http://127.0.0.1:9/x");
    for (text, want) in [
        ("unix:/dev/log", SyslogTarget::Unix(PathBuf::from("/dev/log"))),
        ("udp:127.0.0.1:514", SyslogTarget::Udp("127.0.0.1:514".parse().unwrap())),
        ("udp:[::1]:5514", SyslogTarget::Udp("[::1]:5514".parse().unwrap())),
    ] {
        let c = ok(&format!(
            "{MINIMAL}[alerts]\nwebhook_url = \"https://a.example/\"\nhmac_key_file = \"k\"\nsyslog = {text:?}\n"
        ));
        assert_eq!(c.alerts.unwrap().syslog, Some(want));
    }
    for bad in ["dev/log", "unix:dev/log", "udp:loghost:514", "tcp:127.0.0.1:514"] {
        let got = errs(&format!(
            "{MINIMAL}[alerts]\nwebhook_url = \"https://a.example/\"\nhmac_key_file = \"k\"\nsyslog = {bad:?}\n"
        ));
        assert!(has(&got, "alerts.syslog", "expected \"unix:/dev/log\""), "{bad}: {got:#?}");
    }

    let got = errs(&format!(
        "{MINIMAL}[alerts]\nwebhook_url = \"http://alerts.example.com/hook\"\nca_file = \"\"\ntimeout = \"0s\"\n\
         max_outbox = 0\nmin_severity = \"loud\"\nauth_failure_threshold = 0\ncolour = 1\n"
    ));
    assert!(has(&got, "alerts.webhook_url", "only allowed to a loopback address"), "{got:#?}");
    assert!(has(&got, "alerts.hmac_key_file", "missing required key"), "{got:#?}");
    assert!(has(&got, "alerts.ca_file", "must not be empty"), "{got:#?}");
    assert!(has(&got, "alerts.timeout", "greater than 0"), "{got:#?}");
    assert!(has(&got, "alerts.max_outbox", "between 1 and 100000"), "{got:#?}");
    assert!(has(&got, "alerts.min_severity", "accepted: info, warning, critical"), "{got:#?}");
    assert!(has(&got, "alerts.auth_failure_threshold", "between 1 and 10000"), "{got:#?}");
    assert!(has(&got, "alerts.colour", "unknown key"), "{got:#?}");
    let got = errs(&format!("{MINIMAL}[alerts]\nhmac_key_file = \"k\"\n"));
    assert!(has(&got, "alerts.webhook_url", "missing required key"), "{got:#?}");
    let got = errs(&format!("{MINIMAL}[alerts]\nwebhook_url = \"https://a.example/x y\"\nhmac_key_file = \"k\"\n"));
    assert!(has(&got, "alerts.webhook_url", "printable ASCII"), "{got:#?}");
}

#[test]
fn auth_failure_folding_settings() {
    let c = ok("mode = \"development\"");
    assert_eq!((c.audit.auth_failures_per_source, c.audit.auth_failure_window), (10, Duration::from_secs(60)));
    let c = ok("mode = \"development\"\n[audit]\nauth_failures_per_source = 3\nauth_failure_window = \"2s\"");
    assert_eq!((c.audit.auth_failures_per_source, c.audit.auth_failure_window), (3, Duration::from_secs(2)));
    let got = errs("mode = \"development\"\n[audit]\nauth_failures_per_source = 0\nauth_failure_window = \"0s\"");
    assert!(has(&got, "audit.auth_failures_per_source", ""), "{got:#?}");
    assert!(has(&got, "audit.auth_failure_window", ""), "{got:#?}");
}

#[test]
fn mfa_settings_and_their_errors() {
    let user = "[[tenants]]\nname = \"acme\"\n[[users]]\nname = \"alice\"\ntenant = \"acme\"\nhome = \"/\"\npermissions = [\"read\"]\n";
    let c = ok(&format!("{MINIMAL}data_dir = \"/srv/gw\"\n{user}"));
    assert_eq!(c.mfa.key_file, Path::new("/srv/gw/mfa/mfa.key"));
    assert_eq!(c.mfa.secrets_dir, Path::new("/srv/gw/mfa/secrets"));
    assert_eq!(c.mfa.issuer, "gateway");
    assert_eq!(c.users[0].mfa, None);
    let c = ok(&format!(
        "{MINIMAL}[mfa]\nkey_file = \"/k/mfa.key\"\nsecrets_dir = \"/k/s\"\nissuer = \"ACME Gateway\"\n{user}mfa = \"totp\"\n"
    ));
    assert_eq!((c.mfa.key_file.as_path(), c.mfa.issuer.as_str()), (Path::new("/k/mfa.key"), "ACME Gateway"));
    assert_eq!(c.users[0].mfa, Some(MfaMethod::TotpSha256));
    assert_eq!(ok(&format!("{MINIMAL}{user}mfa = \"totp-sha1\"\n")).users[0].mfa, Some(MfaMethod::TotpSha1));
    let got = errs(&format!("{MINIMAL}[mfa]\nissuer = \"a:b\"\nsalt = 1\n{user}mfa = \"sms\"\n"));
    assert!(has(&got, "mfa.issuer", "without ':'"), "{got:#?}");
    assert!(has(&got, "mfa.salt", "unknown key"), "{got:#?}");
    assert!(has(&got, "users[0].mfa", "accepted: totp, totp-sha1"), "{got:#?}");
}
