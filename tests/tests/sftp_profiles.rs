//! The named SSH algorithm profiles (`[sftp] profile`): curl with libssh2 1.10 (Debian 12,
//! no AES-GCM, ChaCha20 or ETM MACs) moves a 64 MiB file both ways under `compatible` and is
//! refused under `strict` with an audit record naming what it offered and the profile that
//! would admit it; ssh-audit finds no failure in any profile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::process::Stdio;
use std::time::Duration;

use gateway_config::SshProfile;
use gateway_e2e::{random_bytes, sha256_hex, ssh_audit_names, TestGateway};
use serde_json::Value;

const MIB: usize = 1024 * 1024;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);
const STRICT_KEX: &str = "kex-strict-s-v00@openssh.com";

fn s<'a>(r: &'a Value, field: &str) -> &'a str {
    r[field].as_str().unwrap_or("")
}

/// The base64 SHA-256 of the gateway's Ed25519 host key (what `--hostpubsha256` wants;
/// libssh2 prefers Ed25519 over RSA).
fn ed25519_host_sha256(gw: &TestGateway) -> String {
    let line = gw.host_key_fingerprints.iter().find(|l| l.ends_with("(ED25519)")).unwrap();
    line.split_whitespace().find_map(|w| w.strip_prefix("SHA256:")).unwrap().to_owned()
}

/// Run `curl` (libssh2) as alice with her key, pinning the host key; returns
/// (exit code, stderr).
async fn curl_sftp(gw: &TestGateway, args: &[&str]) -> (i32, String) {
    let key = &gw.user_keys["alice"];
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["--silent", "--show-error", "--user", "alice:", "--hostpubsha256", &ed25519_host_sha256(gw)])
        .arg("--key")
        .arg(key)
        .arg("--pubkey")
        .arg(key.with_extension("pub"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(CLIENT_TIMEOUT, cmd.output()).await.expect("curl timed out").expect("curl runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn url(gw: &TestGateway, path: &str) -> String {
    format!("sftp://127.0.0.1:{}/{path}", gw.sftp_port())
}

/// The libssh2 version curl links, e.g. `1.10.0`.
async fn libssh2_version() -> String {
    let out = tokio::process::Command::new("curl").arg("--version").output().await.expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("libssh2/"))
        .unwrap_or_else(|| panic!("curl has no libssh2 (no sftp://):\n{text}"))
        .to_owned()
}

/// The negotiation-failure record of a client whose version line starts with `client`.
async fn negotiation_failure(gw: &TestGateway, client: &str) -> Value {
    gw.wait_audit("negotiation failure", |r| {
        s(r, "event") == "auth_failure" && s(r, "operation") == "connect" && s(r, "ssh_client").starts_with(client)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_libssh2_moves_64_mib_both_ways_under_compatible() {
    let version = libssh2_version().await;
    eprintln!("curl links libssh2 {version}");
    let gw = TestGateway::builder().sftp_settings("profile = \"compatible\"").start().await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("big.bin");
    let data = random_bytes(64 * MIB + 12_345);
    let sum = sha256_hex(&data);
    std::fs::write(&local, &data).unwrap();
    drop(data);

    let (code, err) = curl_sftp(&gw, &["-T", local.to_str().unwrap(), &url(&gw, "big.bin")]).await;
    assert_eq!(code, 0, "curl upload failed: {err}");
    let back = dir.path().join("back.bin");
    let (code, err) = curl_sftp(&gw, &["-o", back.to_str().unwrap(), &url(&gw, "big.bin")]).await;
    assert_eq!(code, 0, "curl download failed: {err}");
    assert_eq!(sha256_hex(&std::fs::read(&back).unwrap()), sum, "downloaded bytes differ");

    // The trail: both transfers complete with the right digest, and the logins show what
    // libssh2 negotiated — a CTR cipher with a SHA-2 HMAC, since it has no AEAD.
    let upload = gw
        .wait_audit("curl upload", |r| {
            s(r, "event") == "completed" && s(r, "operation") == "upload" && s(r, "path") == "big.bin"
        })
        .await;
    assert_eq!(s(&upload, "sha256"), sum, "{upload:#}");
    assert_eq!(upload["bytes"], (64 * MIB + 12_345) as u64);
    let download = gw
        .wait_audit("curl download", |r| {
            s(r, "event") == "completed" && s(r, "operation") == "download" && s(r, "path") == "big.bin"
        })
        .await;
    assert_eq!(upload["ssh_client"], download["ssh_client"]);
    let login = gw.wait_audit("curl login", |r| s(r, "event") == "auth_success" && s(r, "user") == "alice").await;
    assert!(s(&login, "ssh_client").starts_with("SSH-2.0-libssh2_"), "{login:#}");
    if version.starts_with("1.10.") {
        assert!(s(&login, "ssh_cipher").ends_with("-ctr"), "{login:#}");
        assert!(s(&login, "ssh_mac").starts_with("hmac-sha2-"), "{login:#}");
    }
    assert!(!gw.audit().iter().any(|r| s(r, "event") == "failed"), "{:#?}", gw.audit());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_libssh2_1_10_is_refused_under_strict_and_the_trail_says_why() {
    let version = libssh2_version().await;
    if !version.starts_with("1.10.") && !version.starts_with("1.9.") {
        eprintln!("libssh2 {version} has AES-GCM: nothing to refuse; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("small.bin");
    std::fs::write(&local, random_bytes(1000)).unwrap();

    // strict, the default.
    let gw = TestGateway::builder().sftp().start().await;
    let (code, err) = curl_sftp(&gw, &["-T", local.to_str().unwrap(), &url(&gw, "small.bin")]).await;
    assert_ne!(code, 0, "libssh2 {version} connected under strict");
    eprintln!("curl under strict: exit {code}: {err}");
    let r = negotiation_failure(&gw, "SSH-2.0-libssh2_1.").await;
    let error = s(&r, "error");
    assert_eq!(s(&r, "protocol"), "sftp", "{r:#}");
    assert_eq!(s(&r, "result"), "error", "{r:#}");
    assert!(s(&r, "remote_addr").starts_with("127.0.0.1:"), "{r:#}");
    assert!(r.get("user").is_none_or(Value::is_null), "no user before authentication: {r:#}");
    assert!(error.starts_with("algorithm negotiation failed: no common cipher; client offered kex ["), "{error}");
    for offered in ["curve25519-sha256", "aes128-ctr", "aes256-ctr", "hmac-sha2-256"] {
        assert!(error.contains(offered), "{offered} missing: {error}");
    }
    assert!(error.ends_with("profile 'compatible' would admit it (this listener: 'strict')"), "{error}");
    // Nothing got further.
    assert!(!gw.audit().iter().any(|r| s(r, "event") == "auth_success" || s(r, "event") == "started"));

    // post-quantum fails earlier, at the key exchange; compatible would still admit it.
    let pq = TestGateway::builder().sftp_settings("profile = \"post-quantum\"").start().await;
    let (code, _) = curl_sftp(&pq, &["-T", local.to_str().unwrap(), &url(&pq, "small.bin")]).await;
    assert_ne!(code, 0);
    let r = negotiation_failure(&pq, "SSH-2.0-libssh2_1.").await;
    let error = s(&r, "error");
    assert!(error.starts_with("algorithm negotiation failed: no common key exchange;"), "{error}");
    assert!(error.ends_with("profile 'compatible' would admit it (this listener: 'post-quantum')"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_is_unaffected_by_compatible_and_named_under_post_quantum() {
    // compatible adds CTR ciphers, but OpenSSH still picks an AEAD one.
    let gw = TestGateway::builder().sftp_settings("profile = \"compatible\"").start().await;
    let (ok, out) = gw.sftp_batch("alice", "ls\n", &[]).await;
    assert!(ok, "sftp under compatible failed:\n{out}");
    let login = gw.wait_audit("OpenSSH login", |r| s(r, "event") == "auth_success").await;
    assert!(
        ["gcm@openssh.com", "poly1305@openssh.com"].iter().any(|a| s(&login, "ssh_cipher").ends_with(a)),
        "{login:#}"
    );
    assert_eq!(s(&login, "ssh_mac"), "implicit", "{login:#}");

    // post-quantum: a client without ML-KEM (OpenSSH before 9.9) is refused, and the record
    // says that either classical profile would admit it. A newer OpenSSH just connects.
    let pq = TestGateway::builder().sftp_settings("profile = \"post-quantum\"").start().await;
    let (ok, out) = pq.sftp_batch("alice", "ls\n", &[]).await;
    let has_mlkem = std::process::Command::new("ssh")
        .args(["-Q", "kex"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l == "mlkem768x25519-sha256"))
        .unwrap_or(false);
    if has_mlkem {
        assert!(ok, "OpenSSH with ML-KEM refused under post-quantum:\n{out}");
    } else {
        assert!(!ok, "OpenSSH without ML-KEM connected under post-quantum:\n{out}");
        let r = negotiation_failure(&pq, "SSH-2.0-OpenSSH_").await;
        let error = s(&r, "error");
        assert!(error.starts_with("algorithm negotiation failed: no common key exchange;"), "{error}");
        assert!(error.contains("curve25519-sha256"), "{error}");
        assert!(
            error.ends_with("profiles 'strict', 'compatible' would admit it (this listener: 'post-quantum')"),
            "{error}"
        );
    }
}

// ------------------------------------------------------------------------------ ssh-audit

/// Run `ssh-audit -j` against the gateway; its exit code (0 good, 2 warnings, 3 failures)
/// and JSON report.
async fn ssh_audit_json(gw: &TestGateway) -> (i32, Value) {
    let port = gw.sftp_port().to_string();
    let mut cmd = tokio::process::Command::new("ssh-audit");
    cmd.args(["-j", "-p", &port, "127.0.0.1"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("ssh-audit timed out")
        .expect("ssh-audit is installed (pip install ssh-audit; .ci/run does it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("ssh-audit gave no JSON ({e}):\n{text}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), report)
}

/// `(section, algorithm, level, note)` for every `fail` and `warn` note.
fn findings(report: &Value) -> Vec<(String, String, String, String)> {
    let mut found = Vec::new();
    for section in ["kex", "key", "enc", "mac"] {
        for alg in report[section].as_array().into_iter().flatten() {
            let name = alg["algorithm"].as_str().unwrap_or("?");
            for level in ["fail", "warn"] {
                for note in alg["notes"][level].as_array().into_iter().flatten() {
                    let note = note.as_str().unwrap_or_default();
                    found.push((section.to_owned(), name.to_owned(), level.to_owned(), note.to_owned()));
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_audit_finds_no_failure_in_any_profile() {
    for profile in SshProfile::ALL {
        // The product's default rate limit, which ssh-audit's DHEat test must see.
        let gw = TestGateway::builder()
            .sftp_settings(&format!("profile = \"{profile}\"\nconnection_rate_per_source = 10"))
            .start()
            .await;
        let (code, report) = ssh_audit_json(&gw).await;
        let pretty = serde_json::to_string_pretty(&report).unwrap();
        let found = findings(&report);
        for (section, name, level, note) in &found {
            eprintln!("ssh-audit {profile}: {section} {name}: [{level}] {note}");
        }
        let fails: Vec<_> = found.iter().filter(|f| f.2 == "fail").collect();
        assert!(fails.is_empty(), "{profile}: ssh-audit failures {fails:#?}\n{pretty}");
        assert!(report["cves"].as_array().is_none_or(Vec::is_empty), "{profile}: CVEs\n{pretty}");
        assert!(report["recommendations"].get("critical").is_none(), "{profile}: critical recommendations\n{pretty}");
        for note in report["additional_notes"].as_array().into_iter().flatten() {
            assert!(!note.as_str().unwrap_or_default().contains("DHEat"), "{profile}: no throttling seen: {note}");
        }

        // Exactly the profile's lists are offered (plus the two kex markers).
        let a = profile.algorithms();
        let mut kex = a.kex.clone();
        kex.extend(["ext-info-s".to_owned(), STRICT_KEX.to_owned()]);
        assert_eq!(ssh_audit_names(&report, "kex"), kex, "{profile}\n{pretty}");
        assert_eq!(ssh_audit_names(&report, "enc"), a.ciphers, "{profile}\n{pretty}");
        assert_eq!(ssh_audit_names(&report, "mac"), a.macs, "{profile}\n{pretty}");

        // The warnings are the ones README's profile table documents.
        let mut warned: Vec<String> =
            found.iter().map(|(sec, name, _, note)| format!("{sec} {name}: {note}")).collect();
        warned.sort();
        let pq = "does not provide protection against post-quantum attacks";
        let eam = "using encrypt-and-MAC mode";
        let expected: Vec<String> = match profile {
            SshProfile::PostQuantum => Vec::new(),
            SshProfile::Strict | SshProfile::Compatible => {
                let mut w: Vec<String> = [
                    "curve25519-sha256",
                    "curve25519-sha256@libssh.org",
                    "diffie-hellman-group16-sha512",
                    "diffie-hellman-group18-sha512",
                ]
                .iter()
                .map(|k| format!("kex {k}: {pq}"))
                .collect();
                if profile == SshProfile::Compatible {
                    w.extend(["mac hmac-sha2-256: ", "mac hmac-sha2-512: "].iter().map(|m| format!("{m}{eam}")));
                }
                w.sort();
                w
            }
        };
        assert_eq!(warned, expected, "{profile}\n{pretty}");
        assert_eq!(code, if expected.is_empty() { 0 } else { 2 }, "{profile}: ssh-audit exit code\n{pretty}");
        drop(gw);
    }
}
