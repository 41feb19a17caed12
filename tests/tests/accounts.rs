//! Account lifecycle with real clients: curl (HTTPS) and OpenSSH `sftp` refused for accounts
//! disabled in the configuration, expired, or outside their `allowed_sources` (and admitted
//! from inside them), with the reason in the audit trail; a dormant account (pre-seeded state
//! file, no sleeping for days) disabled at start with an `account_disabled` record and a
//! signed `account_dormant` alert at a local receiver; `gateway users list|disable|enable`
//! against the running gateway, a disable ending an open SFTP session, and `last_login`
//! surviving a restart; the absolute limits ending a busy paramiko SFTP session and a
//! kept-alive curl connection. About 20 s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gateway_e2e::served::{GatewayFiles, ServedGateway};
use gateway_e2e::{gateway_bin, TestGateway, UserSpec};
use serde_json::Value;

const ADMIN_TOKEN: &str = "admin-token-for-the-accounts-test";
const ALERT_KEY: &str = "alert-hmac-key-for-the-accounts-test-0123456789";

fn spec(name: &'static str) -> UserSpec {
    UserSpec { name, tenant: "acme", home: "/", permissions: &["all"] }
}

/// An `[admin]` listener with a token; returns the token file.
fn with_admin(files: &GatewayFiles) -> PathBuf {
    let token = files.dir.path().join("admin.token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    append_config(files, &format!("\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {token:?}\n"));
    token
}

fn append_config(files: &GatewayFiles, text: &str) {
    let mut config = std::fs::read_to_string(&files.config_path).unwrap();
    config.push_str(text);
    std::fs::write(&files.config_path, config).unwrap();
}

/// `gateway users ARGS --url … --token-file …`.
fn users_cli(gw: &ServedGateway, token: &Path, args: &[&str]) -> Output {
    Command::new(gateway_bin())
        .arg("users")
        .args(args)
        .arg("--url")
        .arg(format!("http://{}", gw.admin_addr.unwrap()))
        .arg("--token-file")
        .arg(token)
        .output()
        .unwrap()
}

/// `gateway users list`: user → (status, last login column).
fn listed(gw: &ServedGateway, token: &Path) -> Vec<(String, String, String)> {
    let out = users_cli(gw, token, &["list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[0].to_owned(), cols[2].to_owned(), cols[3..].join(" "))
        })
        .collect()
}

fn status_of(gw: &ServedGateway, token: &Path, user: &str) -> (String, String) {
    let row = listed(gw, token).into_iter().find(|(u, _, _)| u == user).unwrap();
    (row.1, row.2)
}

/// The HTTP status of a listing as `user` (with its token).
fn https_status(files: &GatewayFiles, gw: &ServedGateway, user: &str) -> String {
    let out = gw
        .curl()
        .args(["-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("Authorization: Bearer {}", files.tokens[user])])
        .arg(gw.url("/v1/files/"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One OpenSSH `sftp` batch (`ls`) as `user`: (success, stderr).
fn sftp_ls(files: &GatewayFiles, gw: &ServedGateway, user: &str) -> (bool, String) {
    let mut child = Command::new("sftp")
        .args(files.ssh_options(gw, user))
        .args(["-o", "ConnectTimeout=10", "-b", "-"])
        .arg(format!("{user}@127.0.0.1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"ls\n").unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn failures_of<'a>(records: &'a [Value], user: &str, protocol: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["event"] == "auth_failure" && r["user"] == user && r["protocol"] == protocol).collect()
}

fn ops<'a>(records: &'a [Value], op: &str, user: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["event"] == "operation" && r["operation"] == op && r["user"] == user).collect()
}

#[test]
fn disabled_expired_and_out_of_source_accounts_are_refused_over_https_and_sftp() {
    let t0 = Instant::now();
    let files = TestGateway::builder()
        .users(vec![spec("alice"), spec("off"), spec("old"), spec("remote"), spec("office")])
        .user_settings("off", "disabled = true")
        .user_settings("old", "expires_at = \"2020-01-01T00:00:00Z\"")
        .user_settings("remote", "allowed_sources = [\"192.0.2.0/24\", \"2001:db8::/32\"]")
        .user_settings("office", "allowed_sources = [\"10.0.0.0/8\", \"127.0.0.0/8\"]")
        .sftp()
        .local_only()
        .grace("2s")
        .files();
    let gw = files.serve();

    for (user, want) in [("alice", "200"), ("off", "401"), ("old", "401"), ("remote", "401"), ("office", "200")] {
        assert_eq!(https_status(&files, &gw, user), want, "HTTPS as {user}");
        let (ok, stderr) = sftp_ls(&files, &gw, user);
        assert_eq!(ok, want == "200", "SFTP as {user}: {stderr}");
        if want == "401" {
            assert!(stderr.contains("Permission denied"), "the usual failure for {user}: {stderr}");
        }
    }

    let records = files.wait_audit("the refusals over both protocols", |r| {
        ["off", "old", "remote"]
            .iter()
            .all(|u| !failures_of(r, u, "https").is_empty() && !failures_of(r, u, "sftp").is_empty())
    });
    for (user, reason, error) in [
        ("off", "disabled", "account disabled in the configuration"),
        ("old", "expired", "account expired"),
        ("remote", "source_not_allowed", "source address not in the account's allowed_sources"),
    ] {
        for protocol in ["https", "sftp"] {
            for r in failures_of(&records, user, protocol) {
                assert_eq!(r["reason"], reason, "{r}");
                assert_eq!(r["error"], error, "{r}");
                assert_eq!(r["remote_addr"].as_str().unwrap().split(':').next(), Some("127.0.0.1"), "{r}");
            }
        }
    }
    // The refused ones never logged in; the admitted ones did, on both protocols.
    for user in ["off", "old", "remote"] {
        assert!(!records.iter().any(|r| r["event"] == "auth_success" && r["user"] == user), "{user} logged in");
    }
    for user in ["alice", "office"] {
        let ok =
            |p: &str| records.iter().any(|r| r["event"] == "auth_success" && r["user"] == user && r["protocol"] == p);
        assert!(ok("https") && ok("sftp"), "{user}");
    }
    eprintln!("refusals over HTTPS and SFTP: {:?}", t0.elapsed());
}

/// One webhook delivery seen by [`Receiver`]: timestamp header, signature header, body.
type Delivery = (String, String, Vec<u8>);

/// A plain-HTTP webhook receiver on loopback (the gateway allows `http://` only there).
struct Receiver {
    port: u16,
    seen: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(i);
                    }
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let Some(head_end) = head_end else { continue };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_owned()))
                        .unwrap_or_default()
                };
                let length: usize = header("content-length").parse().unwrap_or(0);
                let mut body = buf[head_end + 4..].to_vec();
                while body.len() < length {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => body.extend_from_slice(&chunk[..n]),
                    }
                }
                log.lock().unwrap().push((header("x-gateway-timestamp"), header("x-gateway-signature"), body));
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        });
        Receiver { port, seen }
    }

    /// Wait for an alert of `kind`; checks its HMAC signature.
    fn wait_for(&self, kind: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (timestamp, signature, body) in self.seen.lock().unwrap().iter() {
                let v: Value = serde_json::from_slice(body).unwrap();
                if v["kind"] == kind {
                    let mut msg = timestamp.as_bytes().to_vec();
                    msg.push(b'.');
                    msg.extend_from_slice(body);
                    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, ALERT_KEY.as_bytes());
                    let want = format!("sha256={}", hex::encode(aws_lc_rs::hmac::sign(&key, &msg).as_ref()));
                    assert_eq!(signature, &want, "signed with the configured key");
                    return v;
                }
            }
            assert!(Instant::now() < deadline, "no {kind} alert arrived");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn a_dormant_account_is_disabled_at_start_audited_alerted_and_enabled_again_by_the_cli() {
    let t0 = Instant::now();
    let receiver = Receiver::start();
    let files = TestGateway::builder()
        .users(vec![spec("alice"), spec("bob"), spec("carol")])
        .sftp()
        .local_only()
        .grace("2s")
        .files();
    let token = with_admin(&files);
    let key_file = files.dir.path().join("alert.key");
    std::fs::write(&key_file, ALERT_KEY).unwrap();
    std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    append_config(
        &files,
        &format!(
            "\n[alerts]\nwebhook_url = \"http://127.0.0.1:{}/hook\"\nhmac_key_file = {key_file:?}\n\n[accounts]\ndormant_after = \"90d\"\n",
            receiver.port
        ),
    );
    // The state a long-running gateway would have left: bob's last login 95 days ago, alice's
    // yesterday; carol is new to the gateway (first seen at this start).
    let day = 86_400;
    let now = now_unix();
    let state = serde_json::json!({
        "version": 1,
        "users": {
            "alice": { "first_seen": now - 200 * day, "last_login": now - day },
            "bob": { "first_seen": now - 200 * day, "last_login": now - 95 * day },
        }
    });
    let dir = files.dir.path().join("data/accounts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("accounts.json"), serde_json::to_vec(&state).unwrap()).unwrap();

    let gw = files.serve();
    let records = files.wait_audit("bob disabled as dormant", |r| !ops(r, "account_disabled", "bob").is_empty());
    let disabled = ops(&records, "account_disabled", "bob");
    assert_eq!(disabled.len(), 1, "{disabled:#?}");
    assert_eq!(disabled[0]["reason"], "dormant");
    assert_eq!(disabled[0]["tenant"], "acme");
    assert!(
        ops(&records, "account_disabled", "alice").is_empty() && ops(&records, "account_disabled", "carol").is_empty()
    );

    let alert = receiver.wait_for("account_dormant");
    assert_eq!(alert["severity"], "warning");
    assert_eq!(alert["scope"]["users"], serde_json::json!(["bob"]));
    assert_eq!(alert["scope"]["count"], 1);
    let nature = alert["nature"].as_str().unwrap();
    assert!(nature.contains("90 days") && nature.contains("bob"), "{nature}");
    assert!(alert["actions_taken"][0].as_str().unwrap().contains("disabled"), "{alert}");
    for field in ["remediation", "next_steps"] {
        assert!(!alert[field].as_array().unwrap().is_empty(), "{field}");
    }
    assert!(alert["id"].as_str().is_some_and(|id| !id.is_empty()) && alert["detected_at"].is_string());

    // Refused like any failed login; the others are fine.
    assert_eq!(https_status(&files, &gw, "bob"), "401");
    assert!(!sftp_ls(&files, &gw, "bob").0);
    assert_eq!(https_status(&files, &gw, "alice"), "200");
    assert_eq!(https_status(&files, &gw, "carol"), "200");
    let records = files.wait_audit("bob's refusals", |r| !failures_of(r, "bob", "sftp").is_empty());
    assert!(failures_of(&records, "bob", "https").iter().all(|r| r["reason"] == "dormant"));
    assert!(failures_of(&records, "bob", "sftp").iter().all(|r| r["reason"] == "dormant"));

    assert_eq!(status_of(&gw, &token, "bob").0, "dormant");
    assert_eq!(status_of(&gw, &token, "alice").0, "active");
    let out = users_cli(&gw, &token, &["enable", "bob"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("enabled (was: dormant)"));
    assert_eq!(https_status(&files, &gw, "bob"), "200");
    assert!(sftp_ls(&files, &gw, "bob").0);
    let records = files.wait_audit("bob enabled", |r| !ops(r, "account_enabled", "bob").is_empty());
    let enabled = ops(&records, "account_enabled", "bob")[0];
    assert_eq!(enabled["reason"], "dormant");
    assert_eq!(enabled["remote_addr"], "127.0.0.1", "the operator's address");
    eprintln!("dormancy at start: {:?}", t0.elapsed());
}

#[test]
fn users_cli_disable_and_enable_take_effect_without_restart_and_last_login_survives_one() {
    let t0 = Instant::now();
    let files = TestGateway::builder()
        .users(vec![spec("alice"), spec("carol")])
        .user_settings("carol", "disabled = true")
        .sftp()
        .local_only()
        .grace("2s")
        .files();
    let token = with_admin(&files);
    let mut gw = files.serve();

    // Never logged in yet.
    let (status, last) = status_of(&gw, &token, "alice");
    assert_eq!(status, "active");
    assert!(last.starts_with("never"), "{last}");
    assert_eq!(status_of(&gw, &token, "carol").0, "disabled(config)");
    assert_eq!(https_status(&files, &gw, "alice"), "200");
    let (_, last_login) = status_of(&gw, &token, "alice");
    assert!(last_login.ends_with('Z') && !last_login.starts_with("never"), "{last_login}");

    // An open SFTP session of alice, then the operator disables her.
    let mut session = Command::new("sftp")
        .args(files.ssh_options(&gw, "alice"))
        .arg("alice@127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = session.stdin.take().unwrap();
    stdin.write_all(b"pwd\n").unwrap();
    files.wait_audit("alice's SFTP login", |r| {
        r.iter().any(|x| x["event"] == "auth_success" && x["user"] == "alice" && x["protocol"] == "sftp")
    });
    let out = users_cli(&gw, &token, &["disable", "alice"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("alice: disabled") && said.contains("SFTP connections ended: 1"), "{said}");
    // sftp notices a closed connection at its next request to the server: keep making one.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ended = loop {
        if let Some(st) = session.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the open SFTP session was not ended:\n{}", gw.log_text());
        let _ = stdin.write_all(b"ls\n");
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(stdin);
    let mut stderr = String::new();
    session.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!ended.success(), "the session ended by the server: {stderr}");
    assert!(stderr.to_lowercase().contains("closed"), "{stderr}");

    assert_eq!(https_status(&files, &gw, "alice"), "401");
    assert!(!sftp_ls(&files, &gw, "alice").0);
    assert_eq!(status_of(&gw, &token, "alice").0, "disabled(operator)");
    let out = users_cli(&gw, &token, &["disable", "nobody"]);
    assert_eq!(out.status.code(), Some(2), "unknown user");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user \"nobody\""));
    let wrong = files.dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-admin-token").unwrap();
    assert!(!users_cli(&gw, &wrong, &["disable", "carol"]).status.success(), "admin token required");

    // A configuration disable is not the operator's to lift.
    let out = users_cli(&gw, &token, &["enable", "carol"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("disabled = true"), "{out:?}");
    assert_eq!(https_status(&files, &gw, "carol"), "401");

    let out = users_cli(&gw, &token, &["enable", "alice"]);
    assert!(out.status.success());
    assert_eq!(https_status(&files, &gw, "alice"), "200");
    assert!(sftp_ls(&files, &gw, "alice").0);
    let (_, last_login) = status_of(&gw, &token, "alice");

    let records = files.wait_audit("the operator's changes", |r| !ops(r, "account_enabled", "alice").is_empty());
    let disabled = ops(&records, "account_disabled", "alice");
    assert_eq!(disabled.len(), 1);
    assert_eq!(disabled[0]["reason"], "operator");
    assert_eq!(disabled[0]["remote_addr"], "127.0.0.1");
    assert_eq!(ops(&records, "account_enabled", "alice")[0]["reason"], "operator");
    let refused = failures_of(&records, "alice", "https");
    assert!(!refused.is_empty() && refused.iter().all(|r| r["reason"] == "operator"), "{refused:#?}");

    // Restart: the last login (written at the latest at the clean stop) is still known.
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(30)).success());
    let gw = files.serve();
    assert_eq!(status_of(&gw, &token, "alice"), ("active".to_owned(), last_login));
    let state: Value =
        serde_json::from_slice(&std::fs::read(files.dir.path().join("data/accounts/accounts.json")).unwrap()).unwrap();
    assert!(state["users"]["alice"]["last_login"].as_u64().unwrap() > 0);
    eprintln!("users CLI round trip and restart: {:?}", t0.elapsed());
}

const PARAMIKO_BUSY: &str = r#"
import sys, time, paramiko
port, key = int(sys.argv[1]), sys.argv[2]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(key))
sftp = paramiko.SFTPClient.from_transport(t)
start = time.monotonic()
calls = 0
try:
    while time.monotonic() - start < 20:
        sftp.listdir(".")
        calls += 1
        time.sleep(0.1)
    print("survived", calls)
except Exception as e:
    print("ended", round(time.monotonic() - start, 2), calls, type(e).__name__)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_limits_end_a_busy_sftp_session_and_a_kept_alive_https_connection() {
    let t0 = Instant::now();
    let gw = TestGateway::builder()
        .sftp_settings("max_session_duration = \"3s\"")
        .https_settings("max_connection_duration = \"3s\"")
        .local_only()
        .start()
        .await;

    // SFTP: a session that works every 100 ms (never idle) is ended at ~3 s.
    let script = gw.dir.path().join("busy.py");
    std::fs::write(&script, PARAMIKO_BUSY).unwrap();
    let key = gw.user_keys["alice"].clone();
    let out = gateway_e2e::python(
        &[script.to_str().unwrap(), &gw.sftp_port().to_string(), key.to_str().unwrap()],
        Duration::from_secs(60),
    )
    .await;
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words[0], "ended", "{out}");
    let after: f64 = words[1].parse().unwrap();
    let calls: u32 = words[2].parse().unwrap();
    assert!((2.0..8.0).contains(&after), "ended after {after} s: {out}");
    assert!(calls >= 10, "the session was busy until then: {out}");
    let closed = gw
        .wait_audit("the SFTP connection closed at its limit", |r| {
            r["operation"] == "connection" && r["protocol"] == "sftp" && r["reason"] == "max_session_duration"
        })
        .await;
    assert_eq!(closed["error"], "closed by the server: max_session_duration reached");

    // HTTPS: one kept-alive curl making a request every 250 ms for ~6 s reconnects after the
    // server ends its first connection at 3 s; every request still succeeds.
    let urls: Vec<String> = (0..24).map(|_| gw.url("/v1/files/")).collect();
    let mut args: Vec<&str> = vec!["--http1.1", "--rate", "4/s", "-w", "%{http_code} %{num_connects}\\n"];
    let auth = format!("Authorization: Bearer {}", gw.token("alice"));
    args.extend(["-H", &auth]);
    for u in &urls {
        args.extend(["-o", "/dev/null", u.as_str()]);
    }
    let (code, stdout) = gw.curl(&args).await;
    let text = String::from_utf8_lossy(&stdout).into_owned();
    assert_eq!(code, 0, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 24, "{text}");
    assert!(lines.iter().all(|l| l.starts_with("200 ")), "{text}");
    let connects: Vec<u32> = lines.iter().map(|l| l.split(' ').nth(1).unwrap().parse().unwrap()).collect();
    assert_eq!(connects[0], 1);
    // New connections only after the server ended the previous one at its age limit: at
    // least one, and each connection served several requests (not one connection each).
    let starts: Vec<usize> = connects.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, _)| i).collect();
    assert!(starts.len() >= 2, "a new connection after 3 s: {connects:?}");
    assert!(starts.windows(2).all(|w| w[1] - w[0] >= 4), "each connection lived ~3 s: {connects:?}");
    let closed = gw
        .wait_audit("the HTTPS connection closed at its limit", |r| {
            r["operation"] == "connection" && r["protocol"] == "https" && r["reason"] == "max_connection_duration"
        })
        .await;
    assert_eq!(closed["remote_addr"].as_str().unwrap().split(':').next(), Some("127.0.0.1"));
    eprintln!("absolute limits: {:?}", t0.elapsed());
}
