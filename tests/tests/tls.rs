//! TLS policy seen from the outside, with `openssl s_client`: what the default (AES-256)
//! profile refuses, and, as a control that the probe can see acceptance, what the
//! intermediate profile accepts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use gateway_e2e::TestGateway;

/// Run `openssl s_client` with extra arguments; returns whether a handshake completed and
/// the negotiated cipher as printed by openssl.
async fn probe(gw: &TestGateway, args: &[&str]) -> (bool, String) {
    let connect = format!("127.0.0.1:{}", gw.addr.port());
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &connect, "-servername", "localhost", "-CAfile"])
        .arg(&gw.ca_pem)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("openssl is installed");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let cipher = text.lines().find_map(|l| l.split_once("Cipher is ").map(|(_, c)| c)).unwrap_or("").trim().to_owned();
    let ok = out.status.success() && !cipher.is_empty() && cipher != "(NONE)" && cipher != "0000";
    if std::env::var_os("TLS_PROBE_DEBUG").is_some() {
        eprintln!("{args:?} -> {:?}\n{text}", out.status);
    }
    (ok, cipher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_profile_accepts_only_aes256_gcm() {
    let gw = TestGateway::start().await;
    let (ok, cipher) = probe(&gw, &["-tls1_3"]).await;
    assert!(ok, "TLS 1.3 must work: {cipher}");
    assert_eq!(cipher, "TLS_AES_256_GCM_SHA384");
    let (ok, cipher) = probe(&gw, &["-tls1_2"]).await;
    assert!(ok, "TLS 1.2 must work");
    assert_eq!(cipher, "ECDHE-ECDSA-AES256-GCM-SHA384");

    let refused: &[(&str, &[&str])] = &[
        ("TLS 1.0", &["-tls1", "-cipher", "ALL:@SECLEVEL=0"]),
        ("TLS 1.1", &["-tls1_1", "-cipher", "ALL:@SECLEVEL=0"]),
        (
            "TLS 1.2 CBC",
            &[
                "-tls1_2",
                "-cipher",
                "ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA:AES256-SHA256",
            ],
        ),
        (
            "TLS 1.2 AES-128-GCM only",
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"],
        ),
        ("TLS 1.2 ChaCha20 only", &["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"]),
        ("TLS 1.2 RSA key exchange", &["-tls1_2", "-cipher", "AES256-GCM-SHA384:AES128-GCM-SHA256"]),
        ("TLS 1.3 AES-128-GCM only", &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"]),
        ("TLS 1.3 ChaCha20 only", &["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"]),
        ("SHA-1 signatures only", &["-tls1_2", "-sigalgs", "ECDSA+SHA1:RSA+SHA1"]),
    ];
    for (what, args) in refused {
        let (ok, cipher) = probe(&gw, args).await;
        assert!(!ok, "{what} must be refused under the default profile, got {cipher}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intermediate_profile_adds_aes128_and_chacha_but_not_legacy() {
    let gw = TestGateway::builder().tls_profile("intermediate").start().await;
    // Control: the same probe that the default profile refuses succeeds here.
    let (ok, cipher) = probe(&gw, &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"]).await;
    assert!(ok, "intermediate accepts AES-128-GCM");
    assert_eq!(cipher, "TLS_AES_128_GCM_SHA256");
    let (ok, _) = probe(&gw, &["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"]).await;
    assert!(ok, "intermediate accepts ChaCha20 on TLS 1.2");
    for args in
        [&["-tls1_1", "-cipher", "ALL:@SECLEVEL=0"][..], &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"][..]]
    {
        let (ok, cipher) = probe(&gw, args).await;
        assert!(!ok, "{args:?} must be refused, got {cipher}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_offers_h2_and_http11() {
    let gw = TestGateway::start().await;
    for (alpn, want) in [("h2", "h2"), ("http/1.1", "http/1.1")] {
        let connect = format!("127.0.0.1:{}", gw.addr.port());
        let out = tokio::process::Command::new("openssl")
            .args(["s_client", "-connect", &connect, "-alpn", alpn, "-CAfile"])
            .arg(&gw.ca_pem)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("ALPN protocol: {want}")), "{text}");
        assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    }
}
