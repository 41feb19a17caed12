//! Security alerts end to end: a `gateway serve` process with `[alerts]` posting to a local
//! HTTPS receiver (its certificate minted by `gateway_certs::dev::mint`, trusted through
//! `alerts.ca_file`) that checks the HMAC-SHA256 signature and the timestamp of every request.
//! Real events raise the alerts: a bad certificate written over the served one, a traversal
//! attempt with `curl --path-as-is`, repeated bad tokens, a broken host key. Then the receiver
//! goes away, alerts are raised, the gateway restarts on its persisted outbox, the receiver
//! comes back with the wrong key (every delivery refused, nothing lost) and then the right
//! one: each alert arrives exactly once, with the id it had in the outbox.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use bytes::Bytes;
use gateway_e2e::TestGateway;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;

const KEY: &str = "4f1c0e9a7b2d4c6e8f0a1b3c5d7e9f11223344556677889900aabbccddeeff00";
const WRONG_KEY: &str = "00ffeeddccbbaa998877665544332211f9e7d5c3b1a0f8e6c4b2d7a9e0c1f4";

/// One request the receiver saw.
#[derive(Debug, Clone)]
struct Seen {
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

/// What the receiver accepted (signature valid) and refused.
#[derive(Default)]
struct Log {
    accepted: Vec<Seen>,
    refused: Vec<Seen>,
}

/// `sha256=<hex>` over `"<timestamp>.<body>"` under `key`, checked in constant time.
fn verify(key: &str, seen: &Seen) -> bool {
    let Some(hex_sig) = seen.signature.strip_prefix("sha256=") else { return false };
    let Ok(sig) = hex::decode(hex_sig) else { return false };
    let mut msg = seen.timestamp.as_bytes().to_vec();
    msg.push(b'.');
    msg.extend_from_slice(&seen.body);
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes()), &msg, &sig).is_ok()
}

/// The timestamp is within five minutes of now (replay window).
fn fresh(seen: &Seen) -> bool {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    seen.timestamp.parse::<i64>().is_ok_and(|t| (now - t).abs() <= 300)
}

/// A webhook receiver on HTTPS: 200 for a valid signature and a fresh timestamp, 401 else.
struct Receiver {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    key: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(pki: &gateway_certs::dev::DevPki, bind: SocketAddr, key: &str) -> Receiver {
        let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(&pki.server_cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let private = rustls_pki_types::PrivateKeyDer::from_pem_file(&pki.server_key).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let key = Arc::new(Mutex::new(key.to_owned()));
        let (l, k) = (log.clone(), key.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, l, k) = (acceptor.clone(), l.clone(), k.clone());
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (l, k) = (l.clone(), k.clone());
                        async move {
                            let header = |n: &str| {
                                req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
                            };
                            let (timestamp, signature) = (header("x-gateway-timestamp"), header("x-gateway-signature"));
                            let body =
                                req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
                            let seen = Seen { timestamp, signature, body };
                            let key = k.lock().unwrap().clone();
                            let ok = verify(&key, &seen) && fresh(&seen);
                            let mut log = l.lock().unwrap();
                            let status = if ok {
                                log.accepted.push(seen);
                                StatusCode::OK
                            } else {
                                log.refused.push(seen);
                                StatusCode::UNAUTHORIZED
                            };
                            Ok::<_, std::convert::Infallible>(
                                Response::builder().status(status).body(Full::new(Bytes::new())).unwrap(),
                            )
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
                });
            }
        });
        Receiver { addr, log, key, task }
    }

    fn accepted(&self) -> Vec<(Seen, Value)> {
        let log = self.log.lock().unwrap();
        log.accepted.iter().map(|s| (s.clone(), serde_json::from_slice(&s.body).unwrap())).collect()
    }

    fn refused(&self) -> usize {
        self.log.lock().unwrap().refused.len()
    }

    /// Wait until an accepted alert satisfies `pred`.
    async fn wait_for(&self, what: &str, log: &Path, pred: impl Fn(&Value) -> bool) -> (Seen, Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(found) = self.accepted().into_iter().find(|(_, v)| pred(v)) {
                return found;
            }
            let got: Vec<Value> = self.accepted().into_iter().map(|(_, v)| v["kind"].clone()).collect();
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("no {what} alert arrived; got {got:?}; gateway log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop listening and drop every connection.
    fn stop(self) -> Arc<Mutex<Log>> {
        self.task.abort();
        self.log
    }
}

fn outbox_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.retain(|n| n.ends_with(".json"));
    names.sort();
    names
}

/// The incident fields every alert carries.
fn assert_incident_fields(v: &Value) {
    let id = v["id"].as_str().unwrap();
    assert!(id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()), "{v}");
    assert!(["info", "warning", "critical"].contains(&v["severity"].as_str().unwrap()), "{v}");
    let at = v["detected_at"].as_str().unwrap();
    let at = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).unwrap();
    assert!((time::OffsetDateTime::now_utc() - at).whole_minutes().abs() < 10, "{v}");
    assert!(!v["nature"].as_str().unwrap().is_empty(), "{v}");
    assert!(v["scope"]["count"].as_u64().unwrap() >= 1, "{v}");
    for list in ["actions_taken", "remediation", "next_steps"] {
        assert!(!v[list].as_array().unwrap().is_empty(), "{list}: {v}");
    }
    assert!(v["node"].is_string() && v["dropped_before"].is_u64(), "{v}");
}

/// `openssl dgst -sha256 -hmac` over what the receiver got: the signature a shell script
/// would compute.
fn openssl_signature(key: &str, seen: &Seen) -> String {
    let dir = tempfile::tempdir().unwrap();
    let signed = dir.path().join("signed");
    let mut msg = seen.timestamp.as_bytes().to_vec();
    msg.push(b'.');
    msg.extend_from_slice(&seen.body);
    std::fs::write(&signed, msg).unwrap();
    let out = Command::new("openssl").args(["dgst", "-sha256", "-hmac", key, "-r"]).arg(&signed).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    format!("sha256={}", text.split_whitespace().next().unwrap())
}

/// The alert figures of `/metrics` on the admin listener: `m("sent")`, ..., `m("outbox")`.
async fn metrics(gw: &gateway_e2e::served::ServedGateway) -> impl Fn(&str) -> u64 {
    let text = curl(&["--silent", &format!("http://{}/metrics", gw.admin_addr.unwrap())]).await;
    move |what: &str| {
        let prefix = match what {
            "outbox" => "gateway_alert_outbox ".to_owned(),
            r => format!("gateway_alerts_total{{result=\"{r}\"}} "),
        };
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{text}"))
            .parse()
            .unwrap()
    }
}

async fn curl(args: &[&str]) -> String {
    let out = tokio::process::Command::new("curl").args(args).output().await.unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_arrive_signed_and_survive_an_absent_receiver_and_a_restart() {
    let started = Instant::now();
    let receiver_pki_dir = tempfile::tempdir().unwrap();
    let receiver_pki =
        gateway_certs::dev::mint(receiver_pki_dir.path(), gateway_certs::dev::KeyKind::EcdsaP256).unwrap();
    let receiver = Receiver::start(&receiver_pki, "127.0.0.1:0".parse().unwrap(), KEY).await;
    let port = receiver.addr.port();

    let files = TestGateway::builder().sftp().local_only().files();
    let root = files.dir.path().to_owned();
    let key_file = root.join("alert.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut text = std::fs::read_to_string(&files.config_path).unwrap();
    text.push_str(&format!(
        "\n[alerts]\nwebhook_url = \"https://localhost:{port}/hooks/gateway\"\nhmac_key_file = {key_file:?}\n\
         ca_file = {:?}\ntimeout = \"5s\"\nauth_failure_threshold = 3\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        receiver_pki.ca_cert
    ));
    std::fs::write(&files.config_path, text).unwrap();
    let outbox = root.join("data/alerts/outbox");
    // A syslog collector over UDP, besides the webhook.
    let collector = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    collector.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut text = std::fs::read_to_string(&files.config_path).unwrap();
    text = text.replacen(
        "auth_failure_threshold = 3\n",
        &format!("auth_failure_threshold = 3\nsyslog = \"udp:{}\"\n", collector.local_addr().unwrap()),
        1,
    );
    std::fs::write(&files.config_path, text).unwrap();

    let mut gw = files.serve();
    let token = files.tokens["alice"].clone();

    // 1. A bad certificate written over the served one: refused at reload, alert delivered.
    let cert = root.join("pki/server.pem");
    let good_cert = std::fs::read(&cert).unwrap();
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
        .unwrap();
    let (seen, v) = receiver.wait_for("certificate_refused", &gw.log, |v| v["kind"] == "certificate_refused").await;
    assert_incident_fields(&v);
    assert_eq!(v["severity"], "warning");
    assert!(v["scope"]["files"].as_array().unwrap().iter().any(|f| f.as_str() == cert.to_str()), "{v}");
    assert!(v["scope"]["fingerprints"][0].as_str().unwrap().starts_with("serving sha256:"), "{v}");
    // The signature is what openssl computes with the shared key, and not with another key.
    assert!(verify(KEY, &seen) && fresh(&seen));
    assert_eq!(openssl_signature(KEY, &seen), seen.signature);
    assert!(!verify(WRONG_KEY, &seen), "a wrong key must fail verification");
    let mut tampered = seen.clone();
    tampered.body = String::from_utf8(seen.body.clone()).unwrap().replace("warning", "info").into_bytes();
    assert!(!verify(KEY, &tampered), "a changed body must fail verification");
    std::fs::write(&cert, &good_cert).unwrap();
    // The same alert went to syslog: RFC 5424, authpriv.warning (<84>), kind as MSGID, the id.
    let mut datagram = vec![0u8; 9000];
    let n = collector.recv(&mut datagram).unwrap();
    let line = String::from_utf8_lossy(&datagram[..n]).into_owned();
    assert!(line.starts_with("<84>1 "), "{line}");
    let id = v["id"].as_str().unwrap();
    assert!(line.contains(" gateway ") && line.contains(" certificate_refused "), "{line}");
    assert!(line.contains(&format!("[alert@32473 id=\"{id}\"] {{")), "{line}");
    // The trail also has the refusal; the alert carries no secret.
    files.wait_audit("certificate_reload error", |r| {
        r.iter().any(|r| r["operation"] == "certificate_reload" && r["result"] == "error")
    });
    let body = String::from_utf8(seen.body.clone()).unwrap();
    assert!(!body.contains("PRIVATE KEY") && !body.contains(KEY), "{body}");

    // 2. A traversal attempt: refused with 400, one alert naming user, source and path.
    let url = format!("https://localhost:{}/v1/files/docs/../../etc/passwd", gw.https_port);
    let status = curl(&[
        "--silent",
        "--path-as-is",
        "--cacert",
        files.ca_pem.to_str().unwrap(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &format!("Authorization: Bearer {token}"),
        &url,
    ])
    .await;
    assert_eq!(status, "400");
    let (_, v) = receiver.wait_for("traversal_attempt", &gw.log, |v| v["kind"] == "traversal_attempt").await;
    assert_incident_fields(&v);
    assert_eq!(v["scope"]["users"], serde_json::json!(["alice"]));
    assert_eq!(v["scope"]["sources"], serde_json::json!(["127.0.0.1"]));
    assert!(v["scope"]["files"][0].as_str().unwrap().contains("/../../etc/passwd"), "{v}");
    assert!(!v.to_string().contains(&token), "the token must not reach an alert");

    // 3. Three bad tokens from one source cross the threshold: one alert with the count.
    for _ in 0..3 {
        let status = curl(&[
            "--silent",
            "--cacert",
            files.ca_pem.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Authorization: Bearer gw1.mallory-1.c2VjcmV0c2VjcmV0c2VjcmV0",
            &gw.url("/v1/files/"),
        ])
        .await;
        assert_eq!(status, "401");
    }
    let (_, v) = receiver.wait_for("auth_failure_threshold", &gw.log, |v| v["kind"] == "auth_failure_threshold").await;
    assert_incident_fields(&v);
    assert_eq!(v["scope"]["count"], 3);
    assert_eq!(v["scope"]["sources"], serde_json::json!(["127.0.0.1"]));
    assert!(!v.to_string().contains("c2VjcmV0c2VjcmV0c2VjcmV0"), "token secrets never reach an alert");
    let delivered_before: BTreeSet<String> =
        receiver.accepted().iter().map(|(_, v)| v["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(delivered_before.len(), receiver.accepted().len(), "no alert delivered twice");
    // Delivered alerts leave the outbox.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !outbox_files(&outbox).is_empty() {
        assert!(Instant::now() < deadline, "outbox not emptied: {:?}", outbox_files(&outbox));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let m = metrics(&gw).await;
    assert_eq!((m("raised"), m("sent"), m("dropped"), m("outbox")), (3, 3, 0, 0));

    // 4. The receiver goes away; two alerts are raised and wait in the outbox.
    let first_log = receiver.stop();
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nYW5vdGhlciBiYWQgb25l\n-----END CERTIFICATE-----\n").unwrap();
    let host_key = root.join("ssh/host_ed25519");
    let good_host_key = std::fs::read(&host_key).unwrap();
    std::fs::write(&host_key, "-----BEGIN OPENSSH PRIVATE KEY-----\nbroken\n-----END OPENSSH PRIVATE KEY-----\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while outbox_files(&outbox).len() < 2 {
        assert!(Instant::now() < deadline, "alerts not in the outbox: {:?}", outbox_files(&outbox));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waiting = outbox_files(&outbox);
    assert_eq!(waiting.len(), 2, "{waiting:?}");
    let waiting_ids: BTreeSet<String> =
        waiting.iter().map(|n| n.trim_end_matches(".json").rsplit('-').next().unwrap().to_owned()).collect();
    let kinds: BTreeSet<String> = waiting
        .iter()
        .map(|n| {
            let v: Value = serde_json::from_slice(&std::fs::read(outbox.join(n)).unwrap()).unwrap();
            assert!(waiting_ids.contains(v["id"].as_str().unwrap()), "file name and body name the same id");
            v["kind"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(kinds, BTreeSet::from(["certificate_refused".to_owned(), "host_key_refused".to_owned()]));
    // Put the good material back (a restart needs it), then restart on the same outbox.
    std::fs::write(&cert, &good_cert).unwrap();
    std::fs::write(&host_key, &good_host_key).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(30)).success());
    assert_eq!(outbox_files(&outbox), waiting, "the outbox survives the stop untouched");
    let log = std::fs::read_to_string(&gw.log).unwrap();
    assert!(log.contains("security alert not delivered"), "{log}");
    drop(gw);

    // 5. The receiver comes back on the same address with the wrong key: every delivery is
    // refused (signatures are checked) and nothing leaves the outbox.
    let receiver = Receiver::start(&receiver_pki, SocketAddr::from(([127, 0, 0, 1], port)), WRONG_KEY).await;
    let gw = files.serve();
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.refused() < 2 {
        assert!(Instant::now() < deadline, "the restarted gateway did not send its outbox");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(receiver.accepted().is_empty());
    assert_eq!(outbox_files(&outbox), waiting);
    let m = metrics(&gw).await;
    // The second refusal the receiver saw may not be counted yet; the first one is.
    assert!(m("failed") >= 1 && m("outbox") == 2 && m("sent") == 0, "failed {} outbox {}", m("failed"), m("outbox"));

    // 6. With the right key, each waiting alert arrives exactly once, with its outbox id.
    *receiver.key.lock().unwrap() = KEY.to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.accepted().len() < 2 || !outbox_files(&outbox).is_empty() {
        assert!(Instant::now() < deadline, "outbox not delivered: {:?}", outbox_files(&outbox));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let accepted = receiver.accepted();
    let ids: Vec<String> = accepted.iter().map(|(_, v)| v["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), waiting_ids, "the ids raised before the restart");
    assert!(delivered_before.is_disjoint(&waiting_ids));
    assert_eq!(
        first_log.lock().unwrap().accepted.len(),
        delivered_before.len(),
        "nothing went to the first receiver late"
    );
    for (seen, v) in &accepted {
        assert_incident_fields(v);
        assert!(verify(KEY, seen) && fresh(seen));
    }
    let m = metrics(&gw).await;
    assert_eq!((m("raised"), m("sent"), m("outbox")), (0, 2, 0), "this run raised nothing, sent the two");
    let host = accepted.iter().find(|(_, v)| v["kind"] == "host_key_refused").unwrap();
    assert!(host.1["scope"]["files"].as_array().unwrap().iter().any(|f| f.as_str() == host_key.to_str()));
    drop(gw);
    eprintln!("alerts e2e took {:?}", started.elapsed());
}

/// The audit trail's file system fills up: the trail closes and an `audit_write_failure`
/// alert arrives — raised from the trail's state, not written through the trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_audit_trail_raises_a_critical_alert() {
    let receiver_pki_dir = tempfile::tempdir().unwrap();
    let receiver_pki =
        gateway_certs::dev::mint(receiver_pki_dir.path(), gateway_certs::dev::KeyKind::EcdsaP256).unwrap();
    let receiver = Receiver::start(&receiver_pki, "127.0.0.1:0".parse().unwrap(), KEY).await;
    let mut files = TestGateway::builder().sftp().local_only().files();
    let fs = gateway_e2e::served::Tmpfs::mount(&files.dir.path().join("trailfs"), "512k");
    let trail = fs.dir.join("audit.jsonl");
    files.audit_settings(&format!("path = {trail:?}\nappend_timeout = \"5s\""));
    send_alerts_to(&files, &receiver, &receiver_pki);
    let gw = files.serve();
    let filler = fs.fill("filler");
    let token = files.tokens["alice"].clone();
    let mut broke = false;
    for _ in 0..50 {
        let status = curl(&[
            "--silent",
            "--cacert",
            files.ca_pem.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("Authorization: Bearer {token}"),
            &gw.url("/v1/files/"),
        ])
        .await;
        if status == "503" {
            broke = true;
            break;
        }
    }
    assert!(broke, "the trail never failed on a full file system");
    let (seen, v) = receiver.wait_for("audit_write_failure", &gw.log, |v| v["kind"] == "audit_write_failure").await;
    assert_incident_fields(&v);
    assert_eq!(v["severity"], "critical");
    assert_eq!(v["scope"]["files"], serde_json::json!([trail.to_str().unwrap()]));
    assert!(verify(KEY, &seen) && fresh(&seen));
    // Raised once, not once per refused request.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = receiver.accepted().iter().filter(|(_, v)| v["kind"] == "audit_write_failure").count();
    assert_eq!(n, 1);
    drop(gw);
    std::fs::remove_file(filler).unwrap();
    drop(fs);
}

/// Point the gateway's `[alerts]` at `receiver` (key [`KEY`], CA of `pki`).
fn send_alerts_to(files: &gateway_e2e::served::GatewayFiles, receiver: &Receiver, pki: &gateway_certs::dev::DevPki) {
    let key_file = files.dir.path().join("alert.key");
    std::fs::write(&key_file, KEY).unwrap();
    std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut text = std::fs::read_to_string(&files.config_path).unwrap();
    text.push_str(&format!(
        "\n[alerts]\nwebhook_url = \"https://localhost:{}/hook\"\nhmac_key_file = {key_file:?}\nca_file = {:?}\n",
        receiver.addr.port(),
        pki.ca_cert
    ));
    std::fs::write(&files.config_path, text).unwrap();
}

/// A defender ban raises one `source_banned` alert with the incident fields: the source,
/// until when, what the gateway did (refused at accept) and how to lift it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_raises_an_alert_naming_the_source_and_the_action() {
    let receiver_pki_dir = tempfile::tempdir().unwrap();
    let receiver_pki =
        gateway_certs::dev::mint(receiver_pki_dir.path(), gateway_certs::dev::KeyKind::EcdsaP256).unwrap();
    let receiver = Receiver::start(&receiver_pki, "127.0.0.1:0".parse().unwrap(), KEY).await;
    let files = TestGateway::builder()
        .sftp()
        .local_only()
        .defender_settings("threshold = 4\nwindow = \"1m\"\nban_time = \"1m\"")
        .files();
    send_alerts_to(&files, &receiver, &receiver_pki);
    let gw = files.serve();
    // Unknown tokens weigh 2: the second one bans 127.0.0.1.
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(
            curl(&[
                "--silent",
                "--cacert",
                files.ca_pem.to_str().unwrap(),
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "Authorization: Bearer gw1.mallory-1.c2VjcmV0c2VjcmV0c2VjcmV0",
                &gw.url("/v1/files/"),
            ])
            .await,
        );
    }
    assert_eq!(codes, ["401", "401", "000"], "the third connection is refused at accept");
    let (seen, v) = receiver.wait_for("source_banned", &gw.log, |v| v["kind"] == "source_banned").await;
    assert!(verify(KEY, &seen) && fresh(&seen));
    assert_incident_fields(&v);
    assert_eq!(v["severity"], "warning", "a first ban");
    assert_eq!(v["scope"]["sources"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(v["scope"]["count"], 4, "the score at the ban");
    assert!(v["nature"].as_str().unwrap().contains("auth_failed_unknown_user"), "{v}");
    assert!(v["actions_taken"][0].as_str().unwrap().contains("refused at accept"), "{v}");
    assert!(v["remediation"].to_string().contains("gateway bans remove 127.0.0.1"), "{v}");
    // One ban, one alert.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.accepted().iter().filter(|(_, v)| v["kind"] == "source_banned").count(), 1);
}

/// An authenticated SFTP client that sends a packet of impossible length (paramiko, raw bytes
/// on the `sftp` subsystem channel): the session is closed, the trail has a `protocol_abuse`
/// record, and a `protocol_abuse` alert names the user and the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sftp_protocol_violation_is_recorded_and_alerted() {
    const RAW: &str = r#"
import struct, sys, paramiko
port, user, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username=user, pkey=paramiko.PKey.from_path(key))
ch = t.open_session()
ch.invoke_subsystem("sftp")
ch.sendall(struct.pack(">I", 0xFFFFFFF0) + b"\x01")
ch.settimeout(20)
try:
    data = ch.recv(1024)
    while data:
        data = ch.recv(1024)
    print("closed")
except Exception as e:
    print("error: %s" % e)
t.close()
"#;
    let receiver_pki_dir = tempfile::tempdir().unwrap();
    let receiver_pki =
        gateway_certs::dev::mint(receiver_pki_dir.path(), gateway_certs::dev::KeyKind::EcdsaP256).unwrap();
    let receiver = Receiver::start(&receiver_pki, "127.0.0.1:0".parse().unwrap(), KEY).await;
    let files = TestGateway::builder().sftp().local_only().files();
    send_alerts_to(&files, &receiver, &receiver_pki);
    let gw = files.serve();
    let key = files.user_keys["alice"].to_str().unwrap().to_owned();
    let out = tokio::process::Command::new("python3")
        .args(["-c", RAW, &gw.sftp_addr.port().to_string(), "alice", &key])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "closed", "the gateway closes the channel");
    let records = files.wait_audit("protocol_abuse", |r| r.iter().any(|x| x["operation"] == "protocol_abuse"));
    let rec = records.iter().find(|x| x["operation"] == "protocol_abuse").unwrap();
    assert_eq!(rec["user"], "alice");
    assert_eq!(rec["result"], "denied");
    assert!(rec["error"].as_str().unwrap().contains("4294967280"), "{rec}");
    let (seen, v) = receiver.wait_for("protocol_abuse", &gw.log, |v| v["kind"] == "protocol_abuse").await;
    assert!(verify(KEY, &seen) && fresh(&seen));
    assert_incident_fields(&v);
    assert_eq!(v["scope"]["users"], serde_json::json!(["alice"]));
    assert_eq!(v["scope"]["sources"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(v["scope"]["protocol"], "sftp");
}

/// Paths the test relies on exist where the builder puts them.
#[test]
fn builder_layout_is_what_the_alert_test_expects() {
    let files = TestGateway::builder().sftp().local_only().files();
    let root: PathBuf = files.dir.path().to_owned();
    assert!(root.join("pki/server.pem").exists());
    assert!(root.join("ssh/host_ed25519").exists());
    let text = std::fs::read_to_string(&files.config_path).unwrap();
    assert!(text.contains(&format!("data_dir = {:?}", root.join("data"))), "{text}");
}
