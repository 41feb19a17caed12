//! The defender with real clients against a `gateway serve` process: curl with a wrong
//! token until the source is banned, then refused at TCP accept (no TLS handshake: openssl
//! s_client receives no certificate); OpenSSH `sftp` with a key the user does not have until
//! banned (ssh sees the connection closed before the SSH version exchange); bans and unbans
//! in the trail and the metrics; `gateway bans list|remove` through the admin listener; a
//! ban that survives a restart; a safelisted source that is never banned; a traversal attempt
//! scored as protocol abuse; the per-source connection caps on both listeners. About 8 s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gateway_e2e::served::{GatewayFiles, ServedGateway};
use gateway_e2e::{gateway_bin, TestGateway};

const ADMIN_TOKEN: &str = "admin-token-for-the-defender-test";

/// An `[admin]` listener with a token; returns the token file.
fn with_admin(files: &GatewayFiles) -> PathBuf {
    let token = files.dir.path().join("admin.token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut text = std::fs::read_to_string(&files.config_path).unwrap();
    text.push_str(&format!("\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {token:?}\n"));
    std::fs::write(&files.config_path, text).unwrap();
    token
}

/// `gateway bans ARGS --url … --token-file …`.
fn bans(gw: &ServedGateway, token: &Path, args: &[&str]) -> Output {
    Command::new(gateway_bin())
        .arg("bans")
        .args(args)
        .arg("--url")
        .arg(format!("http://{}", gw.admin_addr.unwrap()))
        .arg("--token-file")
        .arg(token)
        .output()
        .unwrap()
}

/// The HTTP status of a listing with `token` (curl's own error as `curl exit N`).
fn list_with(gw: &ServedGateway, token: &str) -> String {
    let out = gw
        .curl()
        .args(["-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("Authorization: Bearer {token}")])
        .arg(gw.url("/v1/files/"))
        .output()
        .unwrap();
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        format!("curl exit {}: {}", out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).trim())
    }
}

/// Refused at accept: curl fails at connect/handshake (7, 35, 56) and `openssl s_client`
/// receives no certificate.
fn assert_refused_before_tls(gw: &ServedGateway, token: &str) {
    let got = list_with(gw, token);
    assert!(
        ["curl exit 7:", "curl exit 35:", "curl exit 56:"].iter().any(|p| got.starts_with(p)),
        "expected the connection to be refused, got {got}"
    );
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{}", gw.https_port), "-servername", "localhost"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("BEGIN CERTIFICATE") && !text.contains("Server certificate"), "{text}");
    assert!(text.contains("no peer certificate available"), "{text}");
}

/// Records of `operation` (`ban`, `unban`).
fn ops<'a>(records: &'a [serde_json::Value], op: &str) -> Vec<&'a serde_json::Value> {
    records.iter().filter(|r| r["event"] == "operation" && r["operation"] == op).collect()
}

fn scrape(gw: &ServedGateway) -> String {
    let out = Command::new("curl")
        .args(["--silent", "--fail", "-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .arg(format!("http://{}/metrics", gw.admin_addr.unwrap()))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in metrics"))
        .parse()
        .unwrap()
}

/// One `sftp` session with `key` as alice: (success, stderr).
fn sftp_with(files: &GatewayFiles, gw: &ServedGateway, key: &Path) -> (bool, String) {
    let mut child = Command::new("sftp")
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
        .args(["-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10", "-P", &gw.sftp_addr.port().to_string()])
        .arg("-i")
        .arg(key)
        .args(["-b", "-"])
        .arg(format!("alice@{}", gw.sftp_addr.ip()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"ls\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = files;
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn wrong_key(dir: &Path) -> PathBuf {
    let key = dir.join("id_wrong");
    let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap();
    assert!(st.success());
    key
}

#[test]
fn https_bad_tokens_ban_at_accept_the_cli_unbans_and_a_ban_survives_a_restart() {
    let t0 = Instant::now();
    let files = TestGateway::builder()
        .sftp()
        .local_only()
        .grace("2s")
        .defender_settings("threshold = 6\nwindow = \"1m\"\nban_time = \"40s\"\nban_time_max = \"2m\"")
        .files();
    let token_file = with_admin(&files);
    let mut gw = files.serve();
    let good = files.tokens["alice"].clone();

    assert_eq!(list_with(&gw, &good), "200");
    // An unknown token weighs 2: the third reaches the threshold of 6 (each still gets 401).
    // All on one kept-alive connection (HTTP/1.1, then HTTP/2): after the ban it gets no
    // more guesses (403, no record, and the connection closed).
    let out = gw
        .curl()
        .arg("--http1.1")
        .args(["-w", "%{http_code} %{num_connects}\n", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null"])
        .args(["-o", "/dev/null", "-o", "/dev/null", "-H", "Authorization: Bearer not-a-token"])
        .args((0..5).map(|_| gw.url("/v1/files/")))
        .output()
        .unwrap();
    let codes: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    // The 403 closes that connection (Connection: close); the next one is refused at accept.
    assert_eq!(codes, ["401 1", "401 0", "401 0", "403 0", "000 1"], "one connection, banned after the third");
    assert_refused_before_tls(&gw, &good);
    let records = files.wait_audit("a ban", |r| !ops(r, "ban").is_empty());
    let failures = records.iter().filter(|r| r["event"] == "auth_failure").count();
    assert_eq!(failures, 3, "the refusals after the ban leave no record");
    let ban = ops(&records, "ban")[0];
    assert_eq!(ban["remote_addr"], "127.0.0.1");
    assert_eq!(ban["ban"]["score"], 6);
    assert_eq!(ban["ban"]["offence"], "auth_failed_unknown_user");
    assert_eq!(ban["ban"]["offences"], 1);
    assert!(ban["ban"]["until"].as_str().unwrap().ends_with('Z'), "{ban}");
    let m = scrape(&gw);
    assert_eq!(metric(&m, "gateway_defender_bans_total"), 1.0);
    assert_eq!(metric(&m, "gateway_defender_banned_sources"), 1.0);
    assert!(metric(&m, "gateway_connections_refused_total{protocol=\"https\",reason=\"banned\"}") >= 2.0);

    // The CLI: list, remove, and access is back.
    let out = bans(&gw, &token_file, &["list"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && listed.contains("127.0.0.1") && listed.lines().count() == 2, "{listed}");
    let wrong = files.dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-admin-token\n").unwrap();
    let out = bans(&gw, &wrong, &["list"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("401"), "{out:?}");
    let out = bans(&gw, &token_file, &["remove", "127.0.0.1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(list_with(&gw, &good), "200", "unbanned");
    assert_eq!(bans(&gw, &token_file, &["remove", "127.0.0.1"]).status.code(), Some(2), "nothing left to remove");
    assert_eq!(String::from_utf8_lossy(&bans(&gw, &token_file, &["list"]).stdout).trim(), "no bans");
    let records = files.wait_audit("an unban", |r| !ops(r, "unban").is_empty());
    assert_eq!(ops(&records, "unban")[0]["ban"]["reason"], "removed");

    // Banned again, this time over one HTTP/2 connection: its 403 comes with a GOAWAY, and
    // the next request needs a connection, which is refused at accept.
    let out = gw
        .curl()
        .arg("--http2")
        .args(["-w", "%{http_code} %{num_connects} %{http_version}\n", "-H", "Authorization: Bearer not-a-token"])
        .args((0..5).flat_map(|_| ["-o".to_owned(), "/dev/null".to_owned(), gw.url("/v1/files/")]))
        .output()
        .unwrap();
    let codes: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(codes, ["401 1 2", "401 0 2", "401 0 2", "403 0 2", "000 1 0"], "HTTP/2, banned after the third");
    assert_refused_before_tls(&gw, &good);
    // Then restarted on the same data: still refused, still listed.
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(30)).success());
    let saved = std::fs::read_to_string(files.dir.path().join("data/defender/bans.json")).unwrap();
    assert!(saved.contains("127.0.0.1"), "{saved}");
    let gw = files.serve();
    assert_refused_before_tls(&gw, &good);
    let listed = String::from_utf8_lossy(&bans(&gw, &token_file, &["list"]).stdout).into_owned();
    assert!(listed.contains("127.0.0.1"), "{listed}");
    assert!(bans(&gw, &token_file, &["remove", "127.0.0.1"]).status.success());
    assert_eq!(list_with(&gw, &good), "200");
    drop(gw);
    let (ok, report) = files.verify();
    assert!(ok, "{report}");
    eprintln!("defender https test took {:?}", t0.elapsed());
}

#[test]
fn sftp_wrong_keys_ban_a_safelisted_source_is_never_banned_and_both_listeners_cap_connections_per_source() {
    let t0 = Instant::now();
    let files = TestGateway::builder()
        .sftp()
        .local_only()
        .grace("2s")
        .defender_settings("threshold = 3\nban_time = \"1m\"")
        .files();
    let token_file = with_admin(&files);
    let gw = files.serve();
    let wrong = wrong_key(files.dir.path());
    let right = files.user_keys["alice"].clone();
    assert!(sftp_with(&files, &gw, &right).0, "the right key works before");
    // Each connection that never authenticates scores a pre-auth disconnect (1).
    for i in 0..3 {
        let (ok, err) = sftp_with(&files, &gw, &wrong);
        assert!(!ok, "attempt {i}: {err}");
    }
    let records = files.wait_audit("an SFTP ban", |r| !ops(r, "ban").is_empty());
    assert_eq!(ops(&records, "ban")[0]["ban"]["offence"], "pre_auth_disconnect");
    let (ok, err) = sftp_with(&files, &gw, &right);
    assert!(!ok, "banned: even the right key is refused");
    assert!(err.contains("kex_exchange_identification") || err.contains("Connection reset"), "{err}");
    // The ban holds for HTTPS too (one defender for both listeners).
    assert_refused_before_tls(&gw, &files.tokens["alice"]);
    assert!(String::from_utf8_lossy(&bans(&gw, &token_file, &["list"]).stdout).contains("127.0.0.1"));
    drop(gw);

    // Safelisted: the same misbehaviour and more is never banned.
    let files = TestGateway::builder()
        .sftp()
        .local_only()
        .grace("2s")
        .https_settings("max_connections_per_source = 2")
        .sftp_settings("max_connections_per_source = 2")
        .defender_settings("threshold = 3\nban_time = \"1m\"\nsafelist = [\"127.0.0.1\"]")
        .files();
    let token_file = with_admin(&files);
    let gw = files.serve();
    let wrong = wrong_key(files.dir.path());
    for _ in 0..5 {
        assert!(!sftp_with(&files, &gw, &wrong).0);
        assert_eq!(list_with(&gw, "not-a-token"), "401");
    }
    assert!(sftp_with(&files, &gw, &files.user_keys["alice"]).0, "safelisted: never banned");
    assert_eq!(list_with(&gw, &files.tokens["alice"]), "200");
    assert_eq!(String::from_utf8_lossy(&bans(&gw, &token_file, &["list"]).stdout).trim(), "no bans");

    // Slowloris: two idle connections take this source's HTTPS share; a third is refused at
    // accept, and once they close, connections are served again.
    let idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(("127.0.0.1", gw.https_port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let got = list_with(&gw, &files.tokens["alice"]);
    assert!(got.starts_with("curl exit"), "a third connection from this source: {got}");
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(list_with(&gw, &files.tokens["alice"]), "200");
    // The same on the SFTP listener.
    let idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(gw.sftp_addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let (ok, err) = sftp_with(&files, &gw, &files.user_keys["alice"]);
    assert!(!ok, "a third SSH connection from this source: {err}");
    drop(idle);
    std::thread::sleep(Duration::from_millis(500));
    assert!(sftp_with(&files, &gw, &files.user_keys["alice"]).0, "served again once they closed");
    let m = scrape(&gw);
    assert!(metric(&m, "gateway_connections_refused_total{protocol=\"https\",reason=\"concurrent\"}") >= 1.0);
    assert!(metric(&m, "gateway_connections_refused_total{protocol=\"sftp\",reason=\"concurrent\"}") >= 1.0);
    assert_eq!(metric(&m, "gateway_defender_bans_total"), 0.0);
    drop(gw);
    assert!(ops(&files.audit(), "ban").is_empty());
    eprintln!("defender sftp/safelist test took {:?}", t0.elapsed());
}

#[test]
fn a_traversal_attempt_is_protocol_abuse() {
    let files = TestGateway::builder()
        .sftp()
        .local_only()
        .grace("2s")
        .defender_settings("threshold = 3\nban_time = \"1m\"")
        .files();
    let gw = files.serve();
    let good = files.tokens["alice"].clone();
    // `..` (weight 3) with a valid token: refused as a bad path, and the source banned.
    let out = gw
        .curl()
        .args(["--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("Authorization: Bearer {good}")])
        .arg(gw.url("/v1/files/a/../../etc/passwd"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
    let records = files.wait_audit("a ban", |r| !ops(r, "ban").is_empty());
    assert!(records.iter().any(|r| r["event"] == "denied"), "the bad path has its denied record");
    assert_eq!(ops(&records, "ban")[0]["ban"]["offence"], "protocol_abuse");
    assert_refused_before_tls(&gw, &good);
}
