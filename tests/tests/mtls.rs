//! Client certificates (mTLS) on the HTTPS listener, driven by curl and `openssl s_client`:
//! a certificate bound to a user logs in alone or with that user's token; unknown CA,
//! expired and revoked certificates fail the handshake; a token with another user's
//! certificate, or a user with bound certificates without one, is refused and audited; the
//! CRL is reloaded (a new revocation takes effect, a bad CRL is refused and the old one
//! stays); `required` refuses a handshake without a certificate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gateway_e2e::TestGateway;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// The client PKI of one test: a client CA, certificates, and a way to write CRLs.
struct Pki {
    dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
}

/// A client certificate on disk.
struct Client {
    cert: PathBuf,
    key: PathBuf,
    sha256: String,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        Pki { dir: dir.to_owned(), ca: Issuer::new(params, key) }
    }

    fn ca_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// A client certificate for `cn` with `serial`, valid from `from` for `days`.
    fn client(&self, file: &str, cn: &str, serial: u64, from: OffsetDateTime, days: i64) -> Client {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = from;
        params.not_after = from + Duration::days(days);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (cert_path, key_path) = (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Client { cert: cert_path, key: key_path, sha256: hex::encode(gateway::digest::sha256(cert.der())) }
    }

    /// Write a CRL revoking `serials` to `path`.
    fn crl(&self, path: &Path, number: u64, serials: &[u64]) {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(7),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca).unwrap();
        // Write beside and rename, as an operator's tooling would.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, crl.pem().unwrap()).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
}

/// curl with a client certificate (and optionally a token); returns (exit code, HTTP status).
async fn curl(gw: &TestGateway, client: Option<&Client>, token: Option<&str>, args: &[&str]) -> (i32, String) {
    let mut all: Vec<String> = vec!["-o".into(), "/dev/null".into(), "-w".into(), "%{http_code}".into()];
    if let Some(c) = client {
        all.extend(["--cert".into(), c.cert.display().to_string(), "--key".into(), c.key.display().to_string()]);
    }
    if let Some(t) = token {
        all.extend(["-H".into(), format!("Authorization: Bearer {t}")]);
    }
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let (code, out) = gw.curl(&refs).await;
    (code, String::from_utf8_lossy(&out).into_owned())
}

/// One HTTP/1.1 GET through `openssl s_client` with `client`'s certificate; the response text.
fn s_client_get(gw: &TestGateway, client: &Client, path: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(format!("127.0.0.1:{}", gw.addr.port()))
        .args(["-servername", "localhost", "-verify_return_error", "-CAfile"])
        .arg(&gw.ca_pem)
        .arg("-cert")
        .arg(&client.cert)
        .arg("-key")
        .arg(&client.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn client_auth(mode: &str, ca: &Path, crl: &Path) -> String {
    format!("\n[https.client_auth]\nmode = {mode:?}\nca = {ca:?}\ncrls = [{crl:?}]\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_bind_users_and_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("clients"), "client-ca");
    let now = OffsetDateTime::now_utc() - Duration::hours(1);
    let alice = pki.client("alice", "alice", 1, now, 30);
    let alice_spare = pki.client("alice2", "alice", 2, now, 30);
    let bob = pki.client("bob", "bob-laptop", 3, now, 30);
    let expired = pki.client("expired", "alice", 4, now - Duration::days(40), 30);
    let revoked = pki.client("revoked", "alice", 5, now, 30);
    let stranger = Pki::new(&tmp.path().join("other"), "other-ca").client("stranger", "alice", 1, now, 30);
    let crl = tmp.path().join("clients/crl.pem");
    pki.crl(&crl, 1, &[5]);

    let mut gw = TestGateway::builder()
        .local_only()
        .https_settings(&client_auth("optional", &pki.ca_file("client-ca"), &crl))
        .user_settings("alice", "client_certificates = [\"cn:alice\"]")
        .user_settings("bob", &format!("client_certificates = [\"sha256:{}\"]", bob.sha256))
        .start()
        .await;
    let list = gw.url("/v1/files/");
    let alice_token = gw.token("alice").to_owned();
    let bob_token = gw.token("bob").to_owned();
    let reader_token = gw.token("reader").to_owned();

    // A certificate bound to alice logs her in without a token (curl and openssl s_client).
    assert_eq!(curl(&gw, Some(&alice), None, &[&list]).await, (0, "200".into()));
    let login = gw
        .wait_audit("certificate login", |r| {
            r["event"] == "auth_success" && r["auth_method"] == "client_certificate" && r["user"] == "alice"
        })
        .await;
    assert_eq!(login["client_cert_sha256"], alice.sha256);
    assert_eq!(login["client_cert_subject"], "CN=alice");
    let reply = s_client_get(&gw, &alice_spare, "/v1/files/");
    assert!(reply.starts_with("HTTP/1.1 200"), "openssl s_client: {reply}");

    // Token and her certificate: the upload's records carry the fingerprint.
    let file = tmp.path().join("report.csv");
    std::fs::write(&file, b"a,b\n1,2\n").unwrap();
    let put = gw.url("/v1/files/report.csv");
    assert_eq!(curl(&gw, Some(&alice), Some(&alice_token), &["-T", file.to_str().unwrap(), &put]).await.1, "201");
    let done = gw.wait_audit("upload", |r| r["event"] == "completed" && r["path"] == "report.csv").await;
    assert_eq!(done["client_cert_sha256"], alice.sha256);
    assert_eq!(done["auth_method"], "bearer+client_certificate");

    // bob's token with alice's certificate: refused and audited.
    assert_eq!(curl(&gw, Some(&alice), Some(&bob_token), &[&list]).await.1, "401");
    gw.wait_audit("wrong user", |r| {
        r["event"] == "auth_failure"
            && r["user"] == "bob"
            && r["error"] == "client certificate belongs to another user"
            && r["client_cert_sha256"] == alice.sha256.as_str()
    })
    .await;
    // bob has a bound certificate, so his token alone is not enough; with it, it is.
    assert_eq!(curl(&gw, None, Some(&bob_token), &[&list]).await.1, "401");
    gw.wait_audit("missing certificate", |r| {
        r["event"] == "auth_failure"
            && r["user"] == "bob"
            && r["error"] == "user requires a client certificate bound to it"
    })
    .await;
    assert_eq!(curl(&gw, Some(&bob), Some(&bob_token), &[&list]).await.1, "200");
    // A user without bindings still logs in with a token alone (optional mode).
    assert_eq!(curl(&gw, None, Some(&reader_token), &[&list]).await.1, "200");
    // No token and no certificate: 401.
    assert_eq!(curl(&gw, None, None, &[&list]).await.1, "401");

    // Unknown CA, expired, revoked: the handshake fails (curl exit 35/56, no HTTP status).
    for (what, c) in [("unknown CA", &stranger), ("expired", &expired), ("revoked", &revoked)] {
        let (code, status) = curl(&gw, Some(c), Some(&alice_token), &[&list]).await;
        assert!(code != 0 && status == "000", "{what}: curl exit {code}, status {status}");
    }

    // Revoke alice's first certificate by a new CRL: reloaded, audited, and it no longer works.
    pki.crl(&crl, 2, &[5, 1]);
    gw.wait_audit("crl reload", |r| r["operation"] == "client_ca_reload" && r["result"] == "ok").await;
    let (code, status) = curl(&gw, Some(&alice), None, &[&list]).await;
    assert!(code != 0 && status == "000", "revoked by reload: curl exit {code}, status {status}");
    assert_eq!(curl(&gw, Some(&alice_spare), None, &[&list]).await, (0, "200".into()));

    // A broken CRL is refused whole; the last good one stays in force.
    std::fs::write(&crl, "-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n").unwrap();
    let refused = gw.wait_audit("bad crl", |r| r["operation"] == "client_ca_reload" && r["result"] == "error").await;
    assert!(refused["error"].as_str().unwrap().contains("crl.pem"), "{refused}");
    let (code, _) = curl(&gw, Some(&alice), None, &[&list]).await;
    assert_ne!(code, 0, "the refused CRL must not un-revoke");
    assert_eq!(curl(&gw, Some(&bob), Some(&bob_token), &[&list]).await.1, "200");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_mode_refuses_handshakes_without_a_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("clients"), "client-ca");
    let now = OffsetDateTime::now_utc() - Duration::hours(1);
    let reader = pki.client("reader", "someone", 7, now, 30);
    let crl = tmp.path().join("clients/crl.pem");
    pki.crl(&crl, 1, &[]);
    let mut gw = TestGateway::builder()
        .local_only()
        .https_settings(&client_auth("required", &pki.ca_file("client-ca"), &crl))
        .start()
        .await;
    let list = gw.url("/v1/files/");
    let token = gw.token("reader").to_owned();
    let (code, status) = curl(&gw, None, Some(&token), &[&list]).await;
    assert!(code != 0 && status == "000", "no certificate: curl exit {code}, status {status}");
    // A certificate from the CA bound to nobody admits the connection; the token logs in.
    assert_eq!(curl(&gw, Some(&reader), Some(&token), &[&list]).await, (0, "200".into()));
    let ok = gw.wait_audit("login", |r| r["event"] == "auth_success" && r["user"] == "reader").await;
    assert_eq!(ok["client_cert_sha256"], reader.sha256);
    // Alone it names no user.
    assert_eq!(curl(&gw, Some(&reader), None, &[&list]).await.1, "401");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_client_ca_or_crl_is_refused_at_start_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("clients"), "client-ca");
    let crl = tmp.path().join("clients/crl.pem");
    pki.crl(&crl, 1, &[]);
    let not_a_ca = tmp.path().join("empty.pem");
    std::fs::write(&not_a_ca, "no certificates here\n").unwrap();
    let bad_crl = tmp.path().join("bad.crl");
    std::fs::write(&bad_crl, b"\x30\x03\x02\x01\x01").unwrap();
    for (ca, crl, needle) in [(&not_a_ca, &crl, "empty.pem"), (&pki.ca_file("client-ca"), &bad_crl, "bad.crl")] {
        let written =
            TestGateway::builder().local_only().https_settings(&client_auth("optional", ca, crl)).write_config();
        let config = gateway_config::load(&written.path).unwrap();
        let err = gateway::Gateway::new(&config, &gateway::DevMaterial::default()).await.unwrap_err();
        let text = err.0.join("\n");
        assert!(text.contains("https.client_auth") && text.contains(needle), "{text}");
    }
}
