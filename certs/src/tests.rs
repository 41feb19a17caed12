//! Crate-level tests: loading policy, dev PKI, TLS config and live handshakes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::ServerName;
use rustls::{CipherSuite, ClientConfig, ClientConnection, RootCertStore, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::dev::{ensure_dev_pki, mint, KeyKind};
use crate::{load_server_cert, provider, server_config, validate_cert_files, CertError, CipherProfile, ReloadableCert};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Write a self-signed certificate built from `params` plus its key.
fn self_signed(dir: &Path, params: &CertificateParams, key: &KeyPair) -> (PathBuf, PathBuf) {
    let cert = params.self_signed(key).unwrap();
    let (cp, kp) = (dir.join("cert.pem"), dir.join("cert.key"));
    std::fs::write(&cp, cert.pem()).unwrap();
    std::fs::write(&kp, key.serialize_pem()).unwrap();
    (cp, kp)
}

/// Run openssl; `None` if the binary is not installed (test then skips), panics if it fails.
fn openssl(args: &[&str]) -> Option<()> {
    match Command::new("openssl").args(args).output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("openssl not installed; skipping");
            None
        }
        Err(e) => panic!("running openssl: {e}"),
        Ok(out) => {
            assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
            Some(())
        }
    }
}

/// `openssl req -x509` self-signed cert into dir; returns (cert, key).
fn openssl_cert(dir: &Path, extra: &[&str]) -> Option<(PathBuf, PathBuf)> {
    let (cp, kp) = (dir.join("o.pem"), dir.join("o.key"));
    let mut args = vec!["req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout"];
    args.push(s(&kp));
    args.extend(["-out", s(&cp)]);
    args.extend_from_slice(extra);
    openssl(&args)?;
    Some((cp, kp))
}

#[test]
fn mint_and_load_round_trip_each_kind() {
    let cases = [
        (KeyKind::EcdsaP256, "ECDSA P-256"),
        (KeyKind::EcdsaP384, "ECDSA P-384"),
        (KeyKind::Rsa2048, "RSA 2048"),
        (KeyKind::Rsa3072, "RSA 3072"),
    ];
    for (kind, desc) in cases {
        let dir = tempfile::tempdir().unwrap();
        let pki = mint(&dir.path().join("pki"), kind).unwrap();
        assert!(pki.generated);
        let loaded = load_server_cert(&pki.server_cert, &pki.server_key).unwrap();
        assert_eq!(loaded.info.key, desc, "{kind:?}");
        assert_eq!(loaded.info.subject, "CN=localhost");
        assert_eq!(loaded.certified.cert.len(), 2, "leaf + CA");
        let days_left = (loaded.info.not_after - OffsetDateTime::now_utc()).whole_days();
        assert!((88..=90).contains(&days_left), "{days_left}");
        let fp = &loaded.info.sha256_fingerprint;
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.chars().all(|c| c == ':' || c.is_ascii_digit() || c.is_ascii_uppercase()));

        // Chain is leaf then CA; CA file is the second block.
        let chain: Vec<_> = CertificateDer::pem_file_iter(&pki.server_cert).unwrap().collect::<Result<_, _>>().unwrap();
        let ca = CertificateDer::from_pem_file(&pki.ca_cert).unwrap();
        assert_eq!(chain[1], ca);

        // validate_cert_files agrees.
        let info = validate_cert_files(&pki.server_cert, &pki.server_key).unwrap();
        assert_eq!(info.sha256_fingerprint, *fp);

        // Cross-check the fingerprint with openssl when available.
        if let Ok(out) = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(&pki.server_cert)
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(fp.as_str()), "{text} vs {fp}");
        }

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&pki.server_key), 0o600);
            assert_eq!(mode(&pki.ca_key), 0o600);
            assert_eq!(mode(&dir.path().join("pki")), 0o700);
        }
        // Debug never shows key material.
        let dbg = format!("{loaded:?}");
        assert!(dbg.contains("CN=localhost") && !dbg.contains("PRIVATE"));
    }
}

#[test]
fn ed25519_and_key_formats_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let (cp, kp) = self_signed(dir.path(), &params, &key);
    assert_eq!(load_server_cert(&cp, &kp).unwrap().info.key, "Ed25519");

    // SEC1 ("EC PRIVATE KEY") and PKCS#1 ("RSA PRIVATE KEY") keys load too.
    let pki = mint(&dir.path().join("ec"), KeyKind::EcdsaP256).unwrap();
    let sec1 = dir.path().join("sec1.key");
    if openssl(&["ec", "-in", s(&pki.server_key), "-out", s(&sec1)]).is_some() {
        assert!(std::fs::read_to_string(&sec1).unwrap().contains("BEGIN EC PRIVATE KEY"));
        load_server_cert(&pki.server_cert, &sec1).unwrap();
    }
    let pki = mint(&dir.path().join("rsa"), KeyKind::Rsa2048).unwrap();
    let pkcs1 = dir.path().join("pkcs1.key");
    let args = ["pkey", "-traditional", "-in", s(&pki.server_key), "-out"];
    if openssl(&[&args[..], &[s(&pkcs1)]].concat()).is_some() {
        assert!(std::fs::read_to_string(&pkcs1).unwrap().contains("BEGIN RSA PRIVATE KEY"));
        load_server_cert(&pki.server_cert, &pkcs1).unwrap();
    }
}

#[test]
fn expired_and_not_yet_valid_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let (cp, kp) = self_signed(dir.path(), &params, &key);
    let err = load_server_cert(&cp, &kp).unwrap_err();
    assert!(matches!(err, CertError::Expired { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("{}: certificate expired on 2021-01-01T00:00:00Z", s(&cp)));
    assert!(validate_cert_files(&cp, &kp).is_err());

    params.not_before = OffsetDateTime::now_utc() + Duration::days(10);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(100);
    let (cp, kp) = self_signed(dir.path(), &params, &key);
    let err = load_server_cert(&cp, &kp).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}: certificate is not valid until 20", s(&cp))), "{err}");
}

#[test]
fn mismatched_key_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = mint(&dir.path().join("a"), KeyKind::EcdsaP256).unwrap();
    let b = mint(&dir.path().join("b"), KeyKind::EcdsaP256).unwrap();
    let err = load_server_cert(&a.server_cert, &b.server_key).unwrap_err();
    assert!(matches!(err, CertError::KeyMismatch { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("{}: private key does not match the certificate in {}", s(&b.server_key), s(&a.server_cert))
    );
    // Same key type but different algorithm family also refused.
    let r = mint(&dir.path().join("r"), KeyKind::Rsa2048).unwrap();
    assert!(load_server_cert(&a.server_cert, &r.server_key).is_err());
}

#[test]
fn chain_out_of_order_reported() {
    let dir = tempfile::tempdir().unwrap();
    let pki = mint(dir.path(), KeyKind::EcdsaP256).unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&pki.server_cert).unwrap().collect::<Result<_, _>>().unwrap();
    // CA first, then leaf.
    let text = std::fs::read_to_string(&pki.server_cert).unwrap();
    let end = "-----END CERTIFICATE-----\n";
    let first_end = text.find(end).unwrap() + end.len();
    let swapped = format!("{}{}", &text[first_end..], &text[..first_end]);
    let bad = dir.path().join("swapped.pem");
    std::fs::write(&bad, swapped).unwrap();
    assert_eq!(chain.len(), 2);
    let err = load_server_cert(&bad, &pki.server_key).unwrap_err();
    assert!(matches!(err, CertError::ChainOrder { index: 2, .. }), "{err:?}");
    assert!(err.to_string().contains("must come first"));
}

#[test]
fn rsa_1024_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some((cp, kp)) = openssl_cert(dir.path(), &["-newkey", "rsa:1024", "-sha256"]) else {
        return;
    };
    let err = load_server_cert(&cp, &kp).unwrap_err();
    assert_eq!(err.to_string(), format!("{}: RSA key is 1024 bits; at least 2048 required", s(&kp)));
}

#[test]
fn sha1_signature_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some((cp, kp)) = openssl_cert(dir.path(), &["-newkey", "rsa:2048", "-sha1"]) else {
        return;
    };
    let err = load_server_cert(&cp, &kp).unwrap_err();
    assert!(matches!(err, CertError::WeakSignature { .. }), "{err:?}");
    assert!(err.to_string().starts_with(s(&cp)), "{err}");
    assert!(err.to_string().contains("sha1WithRSAEncryption"), "{err}");
}

#[test]
fn unsupported_curve_refused() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"];
    let Some((cp, kp)) = openssl_cert(dir.path(), &extra) else {
        return;
    };
    let err = load_server_cert(&cp, &kp).unwrap_err();
    assert!(matches!(err, CertError::UnsupportedKey { .. }), "{err:?}");
    assert!(err.to_string().starts_with(s(&kp)), "{err}");
}

#[test]
fn garbage_and_missing_files_refused_with_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let pki = mint(&dir.path().join("pki"), KeyKind::EcdsaP256).unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();

    let err = load_server_cert(&garbage, &pki.server_key).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}: no certificate found (expected PEM 'CERTIFICATE' blocks)", s(&garbage))),
        "{err}"
    );

    let err = load_server_cert(&pki.server_cert, &garbage).unwrap_err();
    assert!(matches!(err, CertError::NoKey { .. }), "{err:?}");
    assert!(err.to_string().starts_with(s(&garbage)), "{err}");

    // Swapped arguments get a hint.
    let err = load_server_cert(&pki.server_key, &pki.server_cert).unwrap_err().to_string();
    assert!(err.contains("looks like a private key"), "{err}");
    assert!(!err.contains("BEGIN"), "{err}");

    // Corrupt base64 inside a CERTIFICATE block.
    let corrupt = dir.path().join("corrupt.pem");
    std::fs::write(&corrupt, "-----BEGIN CERTIFICATE-----\n!!!!notbase64!!!!\n-----END CERTIFICATE-----\n").unwrap();
    let err = load_server_cert(&corrupt, &pki.server_key).unwrap_err();
    assert!(matches!(err, CertError::BadPem { .. } | CertError::CertParse { .. }), "{err:?}");
    assert!(err.to_string().starts_with(s(&corrupt)), "{err}");

    // Valid base64 but not a certificate.
    std::fs::write(&corrupt, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    let err = load_server_cert(&corrupt, &pki.server_key).unwrap_err();
    assert!(matches!(err, CertError::CertParse { index: 1, .. }), "{err:?}");
    assert!(err.to_string().starts_with(s(&corrupt)), "{err}");

    let missing = dir.path().join("missing.pem");
    let err = load_server_cert(&missing, &pki.server_key).unwrap_err();
    assert!(matches!(err, CertError::Io { .. }), "{err:?}");
    assert!(err.to_string().starts_with(s(&missing)), "{err}");
}

#[test]
fn server_config_suites_per_profile() {
    let dir = tempfile::tempdir().unwrap();
    let pki = mint(dir.path(), KeyKind::EcdsaP256).unwrap();
    let resolver = Arc::new(ReloadableCert::new(load_server_cert(&pki.server_cert, &pki.server_key).unwrap()));
    let suites = |profile| -> Vec<CipherSuite> {
        let cfg = server_config(profile, resolver.clone(), None).unwrap();
        assert!(cfg.ignore_client_order);
        assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        let groups: Vec<_> = cfg.crypto_provider().kx_groups.iter().map(|g| g.name()).collect();
        use rustls::NamedGroup as G;
        assert_eq!(groups, vec![G::X25519MLKEM768, G::X25519, G::secp256r1, G::secp384r1]);
        cfg.crypto_provider().cipher_suites.iter().map(|c| c.suite()).collect()
    };
    use CipherSuite as C;
    assert_eq!(
        suites(CipherProfile::Aes256),
        vec![
            C::TLS13_AES_256_GCM_SHA384,
            C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ]
    );
    assert_eq!(
        suites(CipherProfile::Intermediate),
        vec![
            C::TLS13_AES_256_GCM_SHA384,
            C::TLS13_AES_128_GCM_SHA256,
            C::TLS13_CHACHA20_POLY1305_SHA256,
            C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ]
    );
}

/// In-memory handshake between a client and server connection.
fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), rustls::Error> {
    for _ in 0..20 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
            server.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

struct Client {
    ca: PathBuf,
    profile: CipherProfile,
    tls12_only: bool,
    suites: Option<Vec<rustls::SupportedCipherSuite>>,
}

fn connect(c: &Client, server_cfg: &Arc<rustls::ServerConfig>) -> Result<Done, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&c.ca).unwrap()).unwrap();
    let mut prov = provider(c.profile);
    if let Some(suites) = &c.suites {
        prov.cipher_suites = suites.clone();
    }
    let versions: &[&rustls::SupportedProtocolVersion] =
        if c.tls12_only { &[&rustls::version::TLS12] } else { &[&rustls::version::TLS13, &rustls::version::TLS12] };
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(prov))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Client prefers http/1.1; the server's order (h2 first) must win.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
    let mut client = ClientConnection::new(Arc::new(cfg), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut server = ServerConnection::new(server_cfg.clone()).unwrap();
    handshake(&mut client, &mut server)?;
    Ok(Done {
        suite: server.negotiated_cipher_suite().unwrap().suite(),
        alpn: client.alpn_protocol().map(<[u8]>::to_vec),
        leaf: client.peer_certificates().unwrap()[0].clone().into_owned(),
    })
}

struct Done {
    suite: CipherSuite,
    alpn: Option<Vec<u8>>,
    leaf: CertificateDer<'static>,
}

#[test]
fn handshakes_follow_profile() {
    let dir = tempfile::tempdir().unwrap();
    let ec = mint(&dir.path().join("ec"), KeyKind::EcdsaP256).unwrap();
    let rsa = mint(&dir.path().join("rsa"), KeyKind::Rsa2048).unwrap();
    let load = |p: &crate::dev::DevPki| load_server_cert(&p.server_cert, &p.server_key).unwrap();
    let client = |ca: &Path, tls12_only| Client {
        ca: ca.to_path_buf(),
        profile: CipherProfile::Intermediate,
        tls12_only,
        suites: None,
    };

    // Aes256: TLS 1.3 picks AES-256 even though the client offers all suites.
    let resolver = Arc::new(ReloadableCert::new(load(&ec)));
    let cfg = Arc::new(server_config(CipherProfile::Aes256, resolver.clone(), None).unwrap());
    let done = connect(&client(&ec.ca_cert, false), &cfg).unwrap();
    assert_eq!(done.suite, CipherSuite::TLS13_AES_256_GCM_SHA384);
    assert_eq!(done.alpn.as_deref(), Some(&b"h2"[..]));
    let done = connect(&client(&ec.ca_cert, true), &cfg).unwrap();
    assert_eq!(done.suite, CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384);

    // A client offering only AES-128 cannot connect to the Aes256 profile.
    let mut weak = client(&ec.ca_cert, false);
    weak.suites = Some(vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256]);
    assert!(connect(&weak, &cfg).is_err());
    // ... but can with Intermediate.
    let cfg_i = Arc::new(server_config(CipherProfile::Intermediate, resolver.clone(), None).unwrap());
    assert_eq!(connect(&weak, &cfg_i).unwrap().suite, CipherSuite::TLS13_AES_128_GCM_SHA256);

    // Rotation: replace() takes effect for new handshakes on the same config.
    let rsa_loaded = load(&rsa);
    resolver.replace(rsa_loaded.clone());
    assert_eq!(resolver.current().info.sha256_fingerprint, rsa_loaded.info.sha256_fingerprint);
    let done = connect(&client(&rsa.ca_cert, true), &cfg).unwrap();
    assert_eq!(done.suite, CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384);
    assert_eq!(done.leaf, rsa_loaded.certified.cert[0]);
    // The old CA no longer validates the served certificate.
    assert!(connect(&client(&ec.ca_cert, false), &cfg).is_err());
}

#[test]
fn reloadable_replace_swaps() {
    let dir = tempfile::tempdir().unwrap();
    let a = mint(&dir.path().join("a"), KeyKind::EcdsaP256).unwrap();
    let b = mint(&dir.path().join("b"), KeyKind::EcdsaP384).unwrap();
    let la = load_server_cert(&a.server_cert, &a.server_key).unwrap();
    let lb = load_server_cert(&b.server_cert, &b.server_key).unwrap();
    let r = ReloadableCert::new(la.clone());
    assert_eq!(r.current().info.sha256_fingerprint, la.info.sha256_fingerprint);
    r.replace(lb.clone());
    assert_eq!(r.current().info.sha256_fingerprint, lb.info.sha256_fingerprint);
    assert_eq!(r.current().info.key, "ECDSA P-384");
    assert!(Arc::ptr_eq(&r.current().certified, &lb.certified));
}

#[test]
fn ensure_dev_pki_generates_then_reuses() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("dev");
    let cert = dir.path().join("tls/nested/server.pem");
    let key = dir.path().join("tls/nested/server.key");

    let first = ensure_dev_pki(&pki_dir, &cert, &key).unwrap();
    assert!(first.generated);
    assert_eq!(first.ca_cert, pki_dir.join("ca.pem"));
    assert_eq!(first.ca_key, pki_dir.join("ca.key"));
    let info = validate_cert_files(&cert, &key).unwrap();
    assert_eq!(info.key, "ECDSA P-256");
    let ca_text = std::fs::read_to_string(&first.ca_cert).unwrap();
    let ca_info = x509_parser::pem::parse_x509_pem(ca_text.as_bytes()).unwrap().1;
    let ca_x509 = ca_info.parse_x509().unwrap();
    assert_eq!(ca_x509.subject().to_string(), "CN=Gateway Development CA");
    assert!(ca_x509.is_ca());
    let ca_days = (ca_x509.validity().not_after.to_datetime() - OffsetDateTime::now_utc()).whole_days();
    assert!((364..=365).contains(&ca_days), "{ca_days}");

    // The leaf carries the expected SANs.
    let leaf_der = CertificateDer::pem_file_iter(&cert).unwrap().next().unwrap().unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san.value.general_names.iter().map(|n| n.to_string()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().any(|n| n.contains("localhost")), "{names:?}");
    assert!(leaf.validity().not_before.to_datetime() < OffsetDateTime::now_utc() - Duration::minutes(50));

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&first.ca_key), 0o600);
        assert_eq!(mode(&pki_dir), 0o700);
        assert_eq!(mode(&dir.path().join("tls/nested")), 0o700);
    }

    // Second call: nothing regenerated.
    let second = ensure_dev_pki(&pki_dir, &cert, &key).unwrap();
    assert!(!second.generated);
    assert_eq!(validate_cert_files(&cert, &key).unwrap().sha256_fingerprint, info.sha256_fingerprint);

    // Server cert lost: re-issued by the same CA (developers keep trusting ca.pem).
    std::fs::remove_file(&cert).unwrap();
    let third = ensure_dev_pki(&pki_dir, &cert, &key).unwrap();
    assert!(third.generated);
    assert_eq!(std::fs::read_to_string(&first.ca_cert).unwrap(), ca_text);
    let new_info = validate_cert_files(&cert, &key).unwrap();
    assert_ne!(new_info.sha256_fingerprint, info.sha256_fingerprint);
    let chain: Vec<_> = CertificateDer::pem_file_iter(&cert).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(chain[1], CertificateDer::from_pem_file(&first.ca_cert).unwrap());

    // Re-issued cert verifies against the reused CA in a real handshake.
    let resolver = Arc::new(ReloadableCert::new(load_server_cert(&cert, &key).unwrap()));
    let cfg = Arc::new(server_config(CipherProfile::Aes256, resolver, None).unwrap());
    let c = Client { ca: first.ca_cert.clone(), profile: CipherProfile::Aes256, tls12_only: false, suites: None };
    connect(&c, &cfg).unwrap();

    // Server cert about to expire: regenerated.
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(&first.ca_key).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_text, ca_key).unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
    params.not_after = OffsetDateTime::now_utc() + Duration::hours(12);
    let short_key = KeyPair::generate().unwrap();
    let short = params.signed_by(&short_key, &issuer).unwrap();
    std::fs::write(&cert, format!("{}{}", short.pem(), ca_text)).unwrap();
    std::fs::write(&key, short_key.serialize_pem()).unwrap();
    validate_cert_files(&cert, &key).unwrap();
    assert!(ensure_dev_pki(&pki_dir, &cert, &key).unwrap().generated);
    let days = (validate_cert_files(&cert, &key).unwrap().not_after - OffsetDateTime::now_utc()).whole_days();
    assert!(days >= 88, "{days}");
}

#[test]
fn ensure_dev_pki_replaces_broken_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("dev");
    std::fs::create_dir_all(&pki_dir).unwrap();
    std::fs::write(pki_dir.join("ca.pem"), "garbage").unwrap();
    std::fs::write(pki_dir.join("ca.key"), "garbage").unwrap();
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    let pki = ensure_dev_pki(&pki_dir, &cert, &key).unwrap();
    assert!(pki.generated);
    let chain: Vec<_> = CertificateDer::pem_file_iter(&cert).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(chain[1], CertificateDer::from_pem_file(&pki.ca_cert).unwrap());
}

/// Counts the TLS 1.3 tickets a client is given; stores them like the default cache.
#[derive(Debug)]
struct CountingTickets {
    inner: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountingTickets {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group);
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(&self, name: ServerName<'static>, value: rustls::client::Tls12ClientSessionValue) {
        self.inner.set_tls12_session(name, value);
    }
    fn tls12_session(&self, name: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name);
    }
    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: rustls::client::Tls13ClientSessionValue) {
        self.tickets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, value);
    }
    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

/// TLS 1.3 resumption: the server hands out one ticket per handshake, full or resumed (rustls'
/// default is two), and each next connection resumes with the one it got.
#[test]
fn one_ticket_per_handshake_and_the_next_connection_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = mint(dir.path(), KeyKind::EcdsaP256).unwrap();
    let resolver = Arc::new(ReloadableCert::new(load_server_cert(&pki.server_cert, &pki.server_key).unwrap()));
    let server_cfg = Arc::new(server_config(CipherProfile::Aes256, resolver, None).unwrap());
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&pki.ca_cert).unwrap()).unwrap();
    let store = Arc::new(CountingTickets {
        inner: rustls::client::ClientSessionMemoryCache::new(8),
        tickets: std::sync::atomic::AtomicUsize::new(0),
    });
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider(CipherProfile::Aes256)))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::store(store.clone());
    let cfg = Arc::new(cfg);
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let mut client = ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
        let mut server = ServerConnection::new(server_cfg.clone()).unwrap();
        handshake(&mut client, &mut server).unwrap();
        // The tickets follow the handshake: deliver what the server has left to send.
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets().unwrap();
        }
        kinds.push(server.handshake_kind());
    }
    use rustls::HandshakeKind::{Full, Resumed};
    assert_eq!(kinds, [Some(Full), Some(Resumed), Some(Resumed)]);
    assert_eq!(store.tickets.load(std::sync::atomic::Ordering::SeqCst), 3, "one ticket per handshake");
}
