//! ssh-audit against the SFTP listener: no failures, no warnings beyond the documented
//! classical-kex note, strict kex offered, and exactly the configured algorithms (a policy
//! written from the configured defaults, `tests/fixtures/ssh-audit-policy.txt`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use gateway_config::SshAlgorithms;
use gateway_e2e::{ssh_audit_names, TestGateway};
use serde_json::Value;

/// The one warning accepted: classical key exchanges (kept for OpenSSH < 9.9, see README).
const PQ_WARNING: &str = "does not provide protection against post-quantum attacks";
const STRICT_KEX: &str = "kex-strict-s-v00@openssh.com";

fn policy_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/ssh-audit-policy.txt")
}

/// Run `ssh-audit ARGS`; returns (exit code, stdout, stderr).
async fn ssh_audit(args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new("ssh-audit");
    cmd.args(args).env("NO_COLOR", "1").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.kill_on_drop(true).output())
        .await
        .expect("ssh-audit timed out")
        .expect("ssh-audit is installed (pip install ssh-audit; .ci/run does it)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A standard audit as JSON.
async fn audit_json(gw: &TestGateway) -> (Value, String) {
    let port = gw.sftp_port().to_string();
    let (code, out, err) = ssh_audit(&["-j", "-p", &port, "127.0.0.1"]).await;
    let report: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("ssh-audit (exit {code}) gave no JSON ({e}):\n{out}\n{err}"));
    let pretty = serde_json::to_string_pretty(&report).unwrap();
    (report, pretty)
}

/// Every `fail` and every `warn` other than [`PQ_WARNING`] on a classical kex.
fn problems(report: &Value) -> Vec<String> {
    let mut found = Vec::new();
    for section in ["kex", "key", "enc", "mac"] {
        let Some(algs) = report[section].as_array() else {
            found.push(format!("report has no `{section}` section"));
            continue;
        };
        for alg in algs {
            let name = alg["algorithm"].as_str().unwrap_or("?");
            for level in ["fail", "warn"] {
                for note in alg["notes"][level].as_array().into_iter().flatten() {
                    let note = note.as_str().unwrap_or_default();
                    if !(level == "warn" && section == "kex" && note == PQ_WARNING) {
                        found.push(format!("{section} {name}: [{level}] {note}"));
                    }
                }
            }
        }
    }
    for cve in report["cves"].as_array().into_iter().flatten() {
        found.push(format!("CVE: {cve}"));
    }
    if let Some(critical) = report["recommendations"].get("critical") {
        found.push(format!("critical recommendations: {critical}"));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_audit_finds_no_failures_and_only_the_pq_warning() {
    // The product default rate limit (10 new connections per second per source), which
    // ssh-audit's DHEat test must see.
    let gw = TestGateway::builder().sftp_settings("connection_rate_per_source = 10").start().await;
    let (report, pretty) = audit_json(&gw).await;
    let found = problems(&report);
    assert!(found.is_empty(), "ssh-audit findings:\n  {}\n\nfull report:\n{pretty}", found.join("\n  "));
    let kex = ssh_audit_names(&report, "kex");
    assert!(kex.iter().any(|k| k == STRICT_KEX), "strict kex not offered: {kex:?}\n{pretty}");
    assert!(kex.iter().any(|k| k == "mlkem768x25519-sha256"), "{kex:?}");
    // The warnings that remain are exactly the classical kexes the README documents.
    let warned: Vec<&str> = report["kex"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["notes"]["warn"].as_array().is_some_and(|w| !w.is_empty()))
        .map(|a| a["algorithm"].as_str().unwrap())
        .collect();
    assert_eq!(
        warned,
        [
            "curve25519-sha256",
            "curve25519-sha256@libssh.org",
            "diffie-hellman-group16-sha512",
            "diffie-hellman-group18-sha512"
        ],
        "{pretty}"
    );
    assert_eq!(report["compression"], serde_json::json!(["none"]), "{pretty}");
    // Informational notes (Terrapin peer advice) are shown, not judged — except DHEat: the
    // per-source connection rate limit must make ssh-audit see throttling.
    for note in report["additional_notes"].as_array().into_iter().flatten() {
        let note = note.as_str().unwrap_or_default();
        eprintln!("ssh-audit note: {note}");
        assert!(!note.contains("DHEat"), "no connection throttling seen: {note}");
    }

    // Post-quantum only (README): no warnings at all.
    let pq = TestGateway::builder()
        .sftp_settings("kex = [\"mlkem768x25519-sha256\"]\nconnection_rate_per_source = 10")
        .start()
        .await;
    let (report, pretty) = audit_json(&pq).await;
    let found = problems(&report);
    assert!(found.is_empty(), "PQ-only findings:\n  {}\n\n{pretty}", found.join("\n  "));
    assert!(report["kex"].as_array().unwrap().iter().all(|a| a["notes"].get("warn").is_none()), "{pretty}");
    assert_eq!(ssh_audit_names(&report, "kex"), ["mlkem768x25519-sha256", "ext-info-s", STRICT_KEX], "{pretty}");
}

/// `key = a, b, c` lines of the policy fixture.
fn policy_list(text: &str, key: &str) -> Vec<String> {
    let line = text
        .lines()
        .find(|l| l.split('=').next().map(str::trim) == Some(key))
        .unwrap_or_else(|| panic!("policy has no `{key}` line"));
    line.split_once('=').unwrap().1.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_audit_policy_matches_the_configured_defaults() {
    let policy = policy_file();
    let text = std::fs::read_to_string(&policy)
        .unwrap_or_else(|e| panic!("policy fixture {} is missing: {e}", policy.display()));
    // The fixture is the configured default lists, plus the markers the server always adds.
    let d = SshAlgorithms::defaults();
    let mut kex = d.kex.clone();
    kex.extend(["ext-info-s".to_owned(), STRICT_KEX.to_owned()]);
    assert_eq!(policy_list(&text, "key exchanges"), kex);
    assert_eq!(policy_list(&text, "ciphers"), d.ciphers);
    assert_eq!(policy_list(&text, "macs"), d.macs);
    assert_eq!(policy_list(&text, "host keys"), d.host_key_algorithms);
    assert_eq!(policy_list(&text, "allow_algorithm_subset_and_reordering"), ["false"]);

    // Two scans back to back: the per-source connection rate limit (checked in the test
    // above) would reset the second one, so it is off for this gateway.
    let gw = TestGateway::builder().sftp_settings("connection_rate_per_source = 0").start().await;
    let port = gw.sftp_port().to_string();
    let policy_arg = policy.to_str().unwrap();
    let (code, out, err) = ssh_audit(&["-P", policy_arg, "-p", &port, "127.0.0.1"]).await;
    assert!(code == 0 && out.contains("Passed"), "policy audit failed (exit {code}):\n{out}\n{err}");
    let (_, out, err) = ssh_audit(&["-j", "-P", policy_arg, "-p", &port, "127.0.0.1"]).await;
    let result: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}:\n{out}\n{err}"));
    assert_eq!(result["passed"], true, "{result:#}");

    // The policy can fail: a gateway offering one cipher fewer does not pass it.
    let narrower = TestGateway::builder()
        .sftp_settings(
            "ciphers = [\"aes256-gcm@openssh.com\", \"chacha20-poly1305@openssh.com\"]\nconnection_rate_per_source = 0",
        )
        .start()
        .await;
    let port = narrower.sftp_port().to_string();
    let (code, out, err) = ssh_audit(&["-P", policy_arg, "-p", &port, "127.0.0.1"]).await;
    assert!(code != 0 && out.contains("Failed"), "policy passed a different cipher list (exit {code}):\n{out}\n{err}");
    assert!(out.contains("aes128-gcm@openssh.com"), "the failure names the difference:\n{out}");
}
