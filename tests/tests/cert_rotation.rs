//! TLS certificate rotation without a restart: files swapped the way certbot and Kubernetes
//! swap them (a symlinked directory replaced atomically), seen by a client handshaking in a
//! loop, by `openssl s_client` and by curl; a bad pair refused while the old one serves on;
//! SIGHUP asks for a look and does not stop the process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_e2e::served::ServedGateway;
use gateway_e2e::TestGateway;
use rustls_pki_types::pem::PemObject;

/// SHA-256 fingerprint as the gateway and `openssl x509 -fingerprint` print it.
fn fingerprint(der: &[u8]) -> String {
    let hex = hex::encode_upper(gateway::digest::sha256(der));
    hex.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(":")
}

fn leaf_fingerprint(pem: &Path) -> String {
    let first = rustls_pki_types::CertificateDer::pem_file_iter(pem).unwrap().next().unwrap().unwrap();
    fingerprint(first.as_ref())
}

/// A verified TLS connection to the gateway; returns it and the leaf's fingerprint.
fn handshake(
    cfg: &Arc<rustls::ClientConfig>,
    port: u16,
) -> Result<(rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).map_err(|e| e.to_string())?;
    }
    let leaf = tls.conn.peer_certificates().and_then(|c| c.first()).ok_or("no certificate")?;
    let fp = fingerprint(leaf.as_ref());
    Ok((tls, fp))
}

/// Issue a server certificate for localhost from the test CA with openssl, into `dir`
/// (`server.pem` = leaf + CA, `server.key`).
fn issue(pki: &Path, dir: &Path, days: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    let (ca, ca_key) = (pki.join("ca.pem"), pki.join("ca.key"));
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        ca.to_str().unwrap(),
        "-CAkey",
        ca_key.to_str().unwrap(),
        "-set_serial",
        &format!("{}", std::process::id() as u64 * 1000 + dir.as_os_str().len() as u64),
        "-days",
        &days.to_string(),
        "-copy_extensions",
        "copy",
        "-out",
        "leaf.pem",
    ]);
    let chain =
        format!("{}{}", std::fs::read_to_string(dir.join("leaf.pem")).unwrap(), std::fs::read_to_string(&ca).unwrap());
    std::fs::write(dir.join("server.pem"), chain).unwrap();
    std::fs::set_permissions(dir.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// Point `tls/live` at `tls/<version>` atomically (a new symlink renamed over the old one).
fn swap_live(tls: &Path, version: &str) {
    let tmp = tls.join("live.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, tls.join("live")).unwrap();
}

/// The leaf fingerprint `openssl s_client` is served.
fn openssl_fingerprint(gw: &ServedGateway, ca: &Path) -> String {
    let connect = format!("127.0.0.1:{}", gw.https_port);
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &connect, "-servername", "localhost", "-verify_return_error", "-CAfile"])
        .arg(ca)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    x509.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = x509.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    line.split_once('=').map(|(_, f)| f.to_owned()).unwrap_or(line)
}

/// Handshakes in a loop on a thread: counts successes and failures, remembers the last
/// fingerprint seen.
struct Prober {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    last: Arc<Mutex<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(cfg: Arc<rustls::ClientConfig>, port: u16) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let last = Arc::new(Mutex::new(String::new()));
        let (s, o, f, l) = (stop.clone(), ok.clone(), failures.clone(), last.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match handshake(&cfg, port) {
                    Ok((_, fp)) => {
                        *l.lock().unwrap() = fp;
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => f.lock().unwrap().push(e),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Prober { stop, ok, failures, last, thread: Some(thread) }
    }

    /// Wait until the loop is handed `fp`; returns how long that took.
    fn wait_for(&self, fp: &str, limit: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            if *self.last.lock().unwrap() == fp {
                return t0.elapsed();
            }
            assert!(t0.elapsed() < limit, "still served {} after {limit:?}, want {fp}", self.last.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        (self.ok.load(Ordering::Relaxed), self.failures.lock().unwrap().clone())
    }
}

/// `GET /v1/files/` on an open connection; returns the status line.
fn get_on(tls: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>, token: &str) -> String {
    let req = format!("GET /v1/files/ HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");
    tls.write_all(req.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = tls.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned()
}

fn reloads(files: &gateway_e2e::served::GatewayFiles) -> Vec<serde_json::Value> {
    files.audit().into_iter().filter(|r| r["operation"] == "certificate_reload").collect()
}

#[test]
fn a_certificate_swapped_on_disk_is_served_to_new_handshakes_without_a_single_failure() {
    let files = TestGateway::builder().sftp().local_only().files();
    let root = files.dir.path().to_owned();
    let pki = root.join("pki");
    let tls = root.join("tls");
    // The served pair lives behind a symlinked directory, as certbot's live/ and a
    // Kubernetes secret volume keep it.
    for v in ["v1"] {
        std::fs::create_dir_all(tls.join(v)).unwrap();
        for f in ["server.pem", "server.key"] {
            std::fs::copy(pki.join(f), tls.join(v).join(f)).unwrap();
        }
    }
    swap_live(&tls, "v1");
    let live = |f: &str| -> PathBuf { tls.join("live").join(f) };
    let text = std::fs::read_to_string(&files.config_path).unwrap();
    let text = text
        .replace(&format!("{:?}", pki.join("server.pem")), &format!("{:?}", live("server.pem")))
        .replace(&format!("{:?}", pki.join("server.key")), &format!("{:?}", live("server.key")));
    std::fs::write(&files.config_path, text).unwrap();
    let mut gw = files.serve();
    let cfg = gateway_e2e::client_tls_trusting(&files.ca_pem, &[b"http/1.1"]);
    let v1 = leaf_fingerprint(&tls.join("v1/server.pem"));
    assert_eq!(openssl_fingerprint(&gw, &files.ca_pem), v1);

    // A connection opened before the rotation, used after it.
    let (mut before, fp) = handshake(&cfg, gw.https_port).unwrap();
    assert_eq!(fp, v1);
    let token = files.tokens["alice"].clone();
    assert!(get_on(&mut before, &token).contains("200"));

    let prober = Prober::start(cfg.clone(), gw.https_port);
    prober.wait_for(&v1, Duration::from_secs(10));
    issue(&pki, &tls.join("v2"), 5);
    let v2 = leaf_fingerprint(&tls.join("v2/server.pem"));
    assert_ne!(v1, v2);
    swap_live(&tls, "v2");
    let took = prober.wait_for(&v2, Duration::from_secs(10));
    eprintln!("new certificate served {took:?} after the swap");
    assert_eq!(openssl_fingerprint(&gw, &files.ca_pem), v2);
    let out = gw
        .curl()
        .args(["-w", "%{http_code}", "-o", "/dev/null", "-H", &format!("Authorization: Bearer {token}")])
        .arg(gw.url("/v1/files/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{}", String::from_utf8_lossy(&out.stderr));
    assert!(get_on(&mut before, &token).contains("200"), "the connection opened before the rotation continues");
    let rec = files.wait_audit("the reload", |r| r.iter().any(|x| x["operation"] == "certificate_reload"));
    let rec = rec.iter().find(|x| x["operation"] == "certificate_reload").unwrap();
    assert_eq!(rec["result"], "ok", "{rec}");
    assert_eq!(rec["certificate"]["previous_sha256"], v1.as_str(), "{rec}");
    assert_eq!(rec["certificate"]["sha256"], v2.as_str(), "{rec}");
    // v2 is valid for 5 days: the log warns (once) that it expires within 7.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.log_text().contains("expires within 7 day(s)") {
        assert!(Instant::now() < deadline, "no expiry warning: {}", gw.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }

    // A bad pair (the new certificate with the old key, as a half-finished copy leaves
    // it) is refused; v2 keeps serving.
    std::fs::create_dir_all(tls.join("v3")).unwrap();
    issue(&pki, &tls.join("v3-src"), 90);
    std::fs::copy(tls.join("v3-src/server.pem"), tls.join("v3/server.pem")).unwrap();
    std::fs::copy(tls.join("v1/server.key"), tls.join("v3/server.key")).unwrap();
    swap_live(&tls, "v3");
    files.wait_audit("the refusal", |r| {
        r.iter().any(|x| x["operation"] == "certificate_reload" && x["result"] == "error")
    });
    let refused = reloads(&files).into_iter().find(|x| x["result"] == "error").unwrap();
    assert!(refused["error"].as_str().unwrap().contains("does not match"), "{refused}");
    assert_eq!(refused["certificate"]["sha256"], v2.as_str(), "what still serves: {refused}");
    assert!(gw.log_text().contains("new TLS certificate refused"), "{}", gw.log_text());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(*prober.last.lock().unwrap(), v2);

    // The key follows: the pair is taken. SIGHUP asks for a look now and the process lives on.
    std::fs::copy(tls.join("v3-src/server.key"), tls.join("v3/server.key")).unwrap();
    gw.signal("HUP");
    let v3 = leaf_fingerprint(&tls.join("v3/server.pem"));
    prober.wait_for(&v3, Duration::from_secs(10));
    gw.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(gw.child.try_wait().unwrap().is_none(), "SIGHUP must not stop the gateway");
    assert_eq!(openssl_fingerprint(&gw, &files.ca_pem), v3);

    let (ok, failures) = prober.stop();
    assert!(
        failures.is_empty(),
        "{} of {} handshakes failed: {failures:?}",
        failures.len(),
        ok as usize + failures.len()
    );
    assert!(ok > 20, "the loop handshook {ok} times");
    eprintln!("{ok} handshakes across three rotations, none failed");
    let log = gw.log_text();
    assert_eq!(log.matches("expires within 7 day(s)").count(), 1, "warned once: {log}");
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(60)).success());
    let (ok, text) = files.verify();
    assert!(ok, "{text}");
    assert_eq!(reloads(&files).iter().filter(|r| r["result"] == "ok").count(), 2, "{:#?}", reloads(&files));
}
