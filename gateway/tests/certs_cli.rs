//! `gateway certs`: dev, issue, inspect and check, judged by `openssl` and `curl`, and a
//! certificate issued by it served (and rotated, audited) by a real gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Run `gateway certs <args>`; returns (exit code, stdout + stderr).
fn certs(args: &[&str]) -> (i32, String) {
    let out = gateway().arg("certs").args(args).output().unwrap();
    (out.status.code().unwrap(), text(&out))
}

/// Run openssl, which must succeed; its stdout.
fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `AB:CD:..` from `openssl x509 -fingerprint -sha256` (of the first certificate in `file`).
fn openssl_fingerprint(file: &Path) -> String {
    let out = openssl(&["x509", "-in", s(file), "-noout", "-fingerprint", "-sha256"]);
    out.trim().split_once('=').unwrap().1.to_owned()
}

/// The value after `label` in `certs inspect` text output, for each certificate.
fn inspect_field(output: &str, label: &str) -> Vec<String> {
    output.lines().filter_map(|l| l.trim().strip_prefix(label)).map(|v| v.trim().to_owned()).collect()
}

#[test]
fn dev_writes_a_ca_server_and_client_that_openssl_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");
    let (code, t) = certs(&["dev", "--out", s(&out)]);
    assert_eq!(code, 0, "{t}");
    let f = |n: &str| out.join(n);
    for key in ["ca.key", "server.key", "client.key"] {
        assert_eq!(mode(&f(key)), 0o600, "{key}");
        assert!(std::fs::read_to_string(f(key)).unwrap().contains("PRIVATE KEY"));
        assert!(!t.contains("PRIVATE KEY"), "no key material printed: {t}");
    }
    assert_eq!(mode(&out) & 0o077, 0, "the directory is private");
    let verified = openssl(&["verify", "-CAfile", s(&f("ca.pem")), s(&f("server.pem")), s(&f("client.pem"))]);
    assert!(verified.contains("server.pem: OK") && verified.contains("client.pem: OK"), "{verified}");
    // The server chain is leaf then CA; names and purposes as asked.
    let server_ext =
        openssl(&["x509", "-in", s(&f("server.pem")), "-noout", "-ext", "subjectAltName,extendedKeyUsage"]);
    for needle in
        ["DNS:localhost", "IP Address:127.0.0.1", "IP Address:0:0:0:0:0:0:0:1", "TLS Web Server Authentication"]
    {
        assert!(server_ext.contains(needle), "{needle} in {server_ext}");
    }
    assert_eq!(std::fs::read_to_string(f("server.pem")).unwrap().matches("BEGIN CERTIFICATE").count(), 2);
    let ca_in_chain = std::fs::read_to_string(f("server.pem")).unwrap();
    assert!(ca_in_chain.ends_with(&std::fs::read_to_string(f("ca.pem")).unwrap()), "CA last in the chain");
    let client = openssl(&["x509", "-in", s(&f("client.pem")), "-noout", "-subject", "-ext", "extendedKeyUsage"]);
    assert!(client.contains("CN = client") && client.contains("TLS Web Client Authentication"), "{client}");
    openssl(&["verify", "-purpose", "sslclient", "-CAfile", s(&f("ca.pem")), s(&f("client.pem"))]);
    // Key and certificate belong together.
    assert_eq!(
        openssl(&["pkey", "-in", s(&f("server.key")), "-pubout"]),
        openssl(&["x509", "-in", s(&f("server.pem")), "-noout", "-pubkey"])
    );

    // inspect's fingerprints are openssl's, for the leaf and the CA behind it.
    let (code, shown) = certs(&["inspect", s(&f("server.pem"))]);
    assert_eq!(code, 0, "{shown}");
    let fps = inspect_field(&shown, "SHA-256:");
    assert_eq!(fps, [openssl_fingerprint(&f("server.pem")), openssl_fingerprint(&f("ca.pem"))]);
    assert_eq!(inspect_field(&shown, "SANs:")[0], "DNS:localhost, IP:127.0.0.1, IP:::1");
    assert_eq!(inspect_field(&shown, "key:")[0], "ECDSA P-256 (256 bits)");
    assert!(t.contains(&fps[0]), "dev prints the server fingerprint: {t}");
    let serial = openssl(&["x509", "-in", s(&f("server.pem")), "-noout", "-serial"]);
    assert_eq!(inspect_field(&shown, "serial:")[0], serial.trim().trim_start_matches("serial="));

    // A second run refuses, naming a file, and changes nothing; --force replaces all and
    // prints the fingerprint each replaced.
    let before = std::fs::read(f("server.pem")).unwrap();
    let (code, t) = certs(&["dev", "--out", s(&out)]);
    assert_eq!(code, 1, "{t}");
    assert!(t.contains("ca.pem: already exists") && t.contains("--force"), "{t}");
    assert_eq!(std::fs::read(f("server.pem")).unwrap(), before);
    let (code, t) = certs(&[
        "dev",
        "--out",
        s(&out),
        "--force",
        "--san",
        "gw.example",
        "--san",
        "10.9.8.7",
        "--client-name",
        "alice",
    ]);
    assert_eq!(code, 0, "{t}");
    assert!(t.contains(&format!("old SHA-256 {}", fps[0])), "{t}");
    assert_ne!(openssl_fingerprint(&f("server.pem")), fps[0]);
    assert_eq!(mode(&f("server.key")), 0o600);
    let server_ext = openssl(&["x509", "-in", s(&f("server.pem")), "-noout", "-ext", "subjectAltName"]);
    assert!(server_ext.contains("DNS:gw.example") && server_ext.contains("IP Address:10.9.8.7"), "{server_ext}");
    assert!(!server_ext.contains("localhost"), "{server_ext}");
    let client = openssl(&["x509", "-in", s(&f("client.pem")), "-noout", "-subject"]);
    assert!(client.contains("CN = alice"), "{client}");
    openssl(&["verify", "-CAfile", s(&f("ca.pem")), s(&f("server.pem")), s(&f("client.pem"))]);
}

#[test]
fn issue_each_key_type_verified_by_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    assert_eq!(certs(&["dev", "--out", s(&pki)]).0, 0);
    let (ca_cert, ca_key) = (pki.join("ca.pem"), pki.join("ca.key"));
    let issue = |extra: &[&str], cert: &Path, key: &Path| {
        let mut args = vec!["issue", "--ca-cert", s(&ca_cert), "--ca-key", s(&ca_key), "--out-cert", s(cert)];
        args.extend(["--out-key", s(key)]);
        args.extend_from_slice(extra);
        certs(&args)
    };
    for (key_type, text_says, inspect_says) in [
        ("p256", "ASN1 OID: prime256v1", "ECDSA P-256 (256 bits)"),
        ("p384", "ASN1 OID: secp384r1", "ECDSA P-384 (384 bits)"),
        ("rsa3072", "Public-Key: (3072 bit)", "RSA 3072 (3072 bits)"),
        ("ed25519", "ED25519", "Ed25519 (256 bits)"),
    ] {
        let (cert, key) = (dir.path().join(format!("{key_type}.pem")), dir.path().join(format!("out/{key_type}.key")));
        let (code, t) = issue(
            &["--key-type", key_type, "--san", "files.example.com", "--san", "192.0.2.10", "--days", "45"],
            &cert,
            &key,
        );
        assert_eq!(code, 0, "{key_type}: {t}");
        assert_eq!(mode(&key), 0o600, "{key_type}");
        let verified = openssl(&["verify", "-CAfile", s(&ca_cert), "-purpose", "sslserver", s(&cert)]);
        assert!(verified.contains(": OK"), "{key_type}: {verified}");
        let described = openssl(&["x509", "-in", s(&cert), "-noout", "-text"]);
        assert!(described.contains(text_says), "{key_type}: {described}");
        assert!(described.contains("Subject: CN = files.example.com"), "{key_type}: {described}");
        assert!(described.contains("DNS:files.example.com, IP Address:192.0.2.10"), "{key_type}: {described}");
        assert_eq!(
            openssl(&["pkey", "-in", s(&key), "-pubout"]),
            openssl(&["x509", "-in", s(&cert), "-noout", "-pubkey"]),
            "{key_type}: key and certificate match"
        );
        let fp = openssl_fingerprint(&cert);
        assert!(t.contains(&fp), "{key_type}: issue prints the fingerprint: {t}");
        let (_, shown) = certs(&["inspect", s(&cert)]);
        assert_eq!(inspect_field(&shown, "key:")[0], inspect_says, "{shown}");
        assert_eq!(inspect_field(&shown, "SHA-256:")[0], fp);
        let not_after = &inspect_field(&shown, "not after:")[0];
        assert!(not_after.contains("(44 days left)") || not_after.contains("(45 days left)"), "{not_after}");
    }

    // A client certificate: clientAuth, CN as given.
    let (cert, key) = (dir.path().join("partner.pem"), dir.path().join("partner.key"));
    let (code, t) = issue(&["--kind", "client", "--cn", "partner-acme", "--key-type", "p384"], &cert, &key);
    assert_eq!(code, 0, "{t}");
    openssl(&["verify", "-CAfile", s(&ca_cert), "-purpose", "sslclient", s(&cert)]);
    let described = openssl(&["x509", "-in", s(&cert), "-noout", "-subject", "-ext", "extendedKeyUsage"]);
    assert!(
        described.contains("CN = partner-acme") && described.contains("TLS Web Client Authentication"),
        "{described}"
    );
    // JSON: an array, one object a certificate (leaf, then the CA).
    let out = gateway().args(["certs", "inspect", "--json"]).arg(&cert).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let array = json.as_array().unwrap();
    assert_eq!(array.len(), 2);
    assert_eq!(array[0]["subject"], "CN=partner-acme");
    assert_eq!(array[0]["extended_key_usage"][0], "clientAuth");
    assert_eq!(array[0]["sha256"], openssl_fingerprint(&cert));
    assert_eq!(array[1]["is_ca"], true);

    // Existing files are kept without --force (the message names the file); with it the old
    // and new fingerprints are printed, and the new one is what is on disk.
    let cert = dir.path().join("p256.pem");
    let key = dir.path().join("out/p256.key");
    let old = openssl_fingerprint(&cert);
    let old_key = std::fs::read(&key).unwrap();
    let (code, t) = issue(&["--san", "files.example.com"], &cert, &key);
    assert_eq!(code, 1, "{t}");
    assert!(t.contains("p256.pem: already exists; pass --force"), "{t}");
    assert_eq!(openssl_fingerprint(&cert), old);
    assert_eq!(std::fs::read(&key).unwrap(), old_key);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, t) = issue(&["--san", "files.example.com", "--force"], &cert, &key);
    assert_eq!(code, 0, "{t}");
    let new = openssl_fingerprint(&cert);
    assert_ne!(new, old);
    assert!(t.contains(&format!("old SHA-256 {old}")) && t.contains(&format!("new SHA-256 {new}")), "{t}");
    assert!(t.contains("certificate_reload"), "says who audits the rotation: {t}");
    assert_eq!(mode(&key), 0o600, "a replaced key is 0600 again");

    // Refusals with reasons: no SAN for a server, validity past the CA, a leaf as CA, a bad SAN.
    let other = (dir.path().join("x.pem"), dir.path().join("x.key"));
    let (code, t) = issue(&[], &other.0, &other.1);
    assert!(code != 0 && t.contains("at least one SAN"), "{t}");
    let (code, t) = issue(&["--san", "a.example", "--days", "4000"], &other.0, &other.1);
    assert!(code != 0 && t.contains("outlast the CA"), "{t}");
    let (code, t) = issue(&["--san", "bad name!"], &other.0, &other.1);
    assert!(code != 0 && t.contains("bad name!"), "{t}");
    let (server_pem, server_key) = (pki.join("server.pem"), pki.join("server.key"));
    let (code, t) = certs(&[
        "issue",
        "--san",
        "a.example",
        "--ca-cert",
        s(&server_pem),
        "--ca-key",
        s(&server_key),
        "--out-cert",
        s(&other.0),
        "--out-key",
        s(&other.1),
    ]);
    assert!(code != 0 && t.contains("server.pem") && t.contains("not a CA"), "{t}");
    assert!(!other.0.exists() && !other.1.exists(), "nothing written on refusal");
}

#[test]
fn check_exit_status_follows_days_left() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    assert_eq!(certs(&["dev", "--out", s(&pki)]).0, 0);
    let (cert, key) = (dir.path().join("short.pem"), dir.path().join("short.key"));
    let (code, t) = certs(&[
        "issue",
        "--ca-cert",
        s(&pki.join("ca.pem")),
        "--ca-key",
        s(&pki.join("ca.key")),
        "--san",
        "short.example",
        "--days",
        "5",
        "--out-cert",
        s(&cert),
        "--out-key",
        s(&key),
    ]);
    assert_eq!(code, 0, "{t}");

    let (code, t) = certs(&["check", "--days", "30", s(&cert)]);
    assert_eq!(code, 1, "{t}");
    assert!(t.contains("short.pem") && t.contains("CN=short.example") && t.contains("not after"), "{t}");
    assert_eq!(t.lines().count(), 1, "only the leaf fails (the CA has a year): {t}");
    let (code, t) = certs(&["check", "--days", "1", s(&cert)]);
    assert_eq!(code, 0, "{t}");
    assert!(t.contains("OK"), "{t}");
    // Several files: one failing one makes it 1.
    let (code, _) = certs(&["check", "--days", "30", s(&pki.join("server.pem")), s(&cert)]);
    assert_eq!(code, 1);
    let (code, _) = certs(&["check", "--days", "30", s(&pki.join("server.pem")), s(&pki.join("client.pem"))]);
    assert_eq!(code, 0);
    // The CA lives a year: fails a 400-day demand.
    let (code, t) = certs(&["check", "--days", "400", s(&pki.join("ca.pem"))]);
    assert_eq!(code, 1, "{t}");

    // Unreadable or not a certificate: 2, naming the file.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    for (file, says) in [(dir.path().join("missing.pem"), "missing.pem"), (garbage.clone(), "garbage.pem")] {
        let (code, t) = certs(&["check", "--days", "1", s(&file), s(&cert)]);
        assert_eq!(code, 2, "{t}");
        assert!(t.contains(says), "{t}");
    }
    // A key file given as a certificate: 2, with a hint.
    let (code, t) = certs(&["check", s(&key)]);
    assert_eq!(code, 2, "{t}");
    assert!(t.contains("looks like a private key"), "{t}");
    // An expired certificate (openssl backdates a CA-signed one): 1.
    let expired = dir.path().join("expired.pem");
    let csr = dir.path().join("e.csr");
    openssl(&["req", "-new", "-key", s(&key), "-subj", "/CN=old", "-out", s(&csr)]);
    let ca_conf = dir.path().join("ca.cnf");
    std::fs::write(&ca_conf, "[ca]\ndefault_ca=c\n[c]\ndatabase=DIR/index\nnew_certs_dir=DIR\nserial=DIR/serial\npolicy=p\ndefault_md=sha256\n[p]\ncommonName=supplied\n".replace("DIR", s(dir.path()))).unwrap();
    std::fs::write(dir.path().join("index"), "").unwrap();
    std::fs::write(dir.path().join("serial"), "01\n").unwrap();
    openssl(&[
        "ca",
        "-batch",
        "-config",
        s(&ca_conf),
        "-cert",
        s(&pki.join("ca.pem")),
        "-keyfile",
        s(&pki.join("ca.key")),
        "-startdate",
        "20200101000000Z",
        "-enddate",
        "20200201000000Z",
        "-in",
        s(&csr),
        "-out",
        s(&expired),
        "-notext",
    ]);
    let (code, t) = certs(&["check", "--days", "0", s(&expired)]);
    assert_eq!(code, 1, "{t}");
    assert!(t.contains("EXPIRED") && t.contains("2020-02-01"), "{t}");
    let (_, shown) = certs(&["inspect", s(&expired)]);
    assert!(shown.contains("EXPIRED"), "{shown}");
}

/// A production gateway serving a certificate issued by `gateway certs issue` (RSA 3072), then
/// a rotation with `issue --force` while it runs: curl trusts both through the CA, and the
/// gateway's audit trail records the rotation with the old and new fingerprints `issue` printed.
#[test]
fn issued_certificate_is_served_and_its_rotation_audited() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let pki = root.join("pki");
    assert_eq!(certs(&["dev", "--out", s(&pki)]).0, 0);
    let (cert, key) = (root.join("tls/gateway.pem"), root.join("tls/gateway.key"));
    let (ca_cert, ca_key) = (pki.join("ca.pem"), pki.join("ca.key"));
    let issue = |key_type: &str, force: bool| {
        let mut args = vec!["issue", "--ca-cert", s(&ca_cert), "--ca-key", s(&ca_key)];
        args.extend(["--san", "localhost", "--san", "127.0.0.1", "--key-type", key_type]);
        args.extend(["--out-cert", s(&cert), "--out-key", s(&key)]);
        if force {
            args.push("--force");
        }
        let (code, t) = certs(&args);
        assert_eq!(code, 0, "{t}");
        t
    };
    issue("rsa3072", false);
    let data = root.join("data");
    let tenant_key = root.join("acme.key");
    for (kind, file) in [("tenant", tenant_key.clone()), ("audit", data.join("audit/checkpoint.key"))] {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let out = gateway().args(["keys", kind]).arg(&file).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let config = root.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"production\"\ndata_dir = {data:?}\nshutdown_grace = \"1s\"\n[https]\nlisten = \"127.0.0.1:0\"\n\
             cert = {cert:?}\nkey = {key:?}\n[[tenants]]\nname = \"acme\"\nkey_file = {tenant_key:?}\n\
             [[users]]\nname = \"alice\"\ntenant = \"acme\"\nhome = \"/alice\"\npermissions = [\"read\"]\n"
        ),
    )
    .unwrap();
    let out = gateway().arg("check-config").arg("--config").arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let mut child = gateway()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stop = Terminate(child.id());
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let line = lines.next().expect("the gateway prints where it listens").unwrap();
        if let Some(rest) = line.strip_prefix("gateway listening on https://localhost:") {
            break rest.split('/').next().unwrap().to_owned();
        }
    };
    let url = format!("https://localhost:{port}/v1/files/");
    let curl = || {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", s(&pki.join("ca.pem")), &url])
            .output()
            .unwrap();
        assert!(out.status.success(), "curl: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    // Verified TLS through the CA; the request itself has no token.
    assert_eq!(curl(), "401");
    let served = || {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let pem = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut x509 = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut x509.stdin.take().unwrap(), pem.as_bytes()).unwrap();
        let fp = String::from_utf8(x509.wait_with_output().unwrap().stdout).unwrap();
        fp.trim().split_once('=').map(|(_, f)| f.to_owned()).unwrap_or_default()
    };
    let first = openssl_fingerprint(&cert);
    assert_eq!(served(), first);

    // Rotate to a P-384 certificate while it serves.
    let t = issue("p384", true);
    let second = openssl_fingerprint(&cert);
    assert!(t.contains(&format!("old SHA-256 {first}")) && t.contains(&format!("new SHA-256 {second}")), "{t}");
    let trail = data.join("audit/audit.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    let record = loop {
        let text = std::fs::read_to_string(&trail).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["operation"] == "certificate_reload" && r["result"] == "ok");
        if let Some(r) = found {
            break r;
        }
        assert!(Instant::now() < deadline, "no certificate_reload record:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(record["certificate"]["previous_sha256"], first.as_str(), "{record}");
    assert_eq!(record["certificate"]["sha256"], second.as_str(), "{record}");
    assert_eq!(served(), second);
    assert_eq!(curl(), "401");
    drop(stop);
    assert!(child.wait().unwrap().success());
}

/// Sends SIGTERM to the process when dropped (also when an assertion fails first).
struct Terminate(u32);

impl Drop for Terminate {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.to_string()).status();
    }
}
