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
    assert_eq!(config.development.demo_user.as_deref(), Some("demo"));
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
        "bad.toml: colour: unknown key \"colour\" (accepted: mode, data_dir, shutdown_grace, https, storage, audit, tenants, users, development)"
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
