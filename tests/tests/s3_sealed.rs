//! A tenant on S3 with gateway-side sealing as well (`seal = true`), against Garage: what lands
//! in the bucket is the sealed form (SSE-C on top), the gateway serves the plaintext back,
//! whole and in ranges, and a changed byte in the bucket is refused rather than served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
use bytes::Bytes;
use gateway_e2e::{gateway_bin, random_bytes, sha256_hex, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_tenant_stores_ciphertext_and_serves_plaintext() {
    let gw = TestGateway::builder()
        .s3()
        .s3_settings("part_size = \"5MiB\"")
        .tenant_settings("acme", "seal = true")
        .start()
        .await;
    let s3 = gw.s3();
    let data = random_bytes(12 * 1024 * 1024 + 321);
    let put = gw.call("alice", "PUT", "/v1/files/sealed.bin", Bytes::from(data.clone())).await;
    assert_eq!(put.status, 201, "{:?}", put.json());

    // In the bucket: the sealed layout, not the plaintext, readable only with the SSE-C key.
    let key = s3.key("acme", "partners/alice/sealed.bin");
    let stored = s3.bucket.get(&key, s3.sse_c_key("acme")).await.expect("readable with the tenant's SSE-C key");
    assert_eq!(&stored[..8], b"GWSEAL04", "the streaming layout with a key id");
    assert_ne!(stored.len(), data.len());
    assert!(!stored.windows(64).any(|w| w == &data[1000..1064]), "plaintext visible in the bucket");
    assert!(s3.bucket.get(&key, None).await.is_err(), "SSE-C: no key, no object");

    // Through the gateway: the plaintext, its digest, and ranges across chunk and part edges.
    let get = gw.call("alice", "GET", "/v1/files/sealed.bin", Bytes::new()).await;
    assert_eq!(get.status, 200);
    assert_eq!(sha256_hex(&get.body), sha256_hex(&data));
    let head = gw.request(false, "HEAD", "/v1/files/sealed.bin", Some(gw.token("alice")), &[], Bytes::new()).await;
    assert_eq!(head.header("content-length"), Some(data.len().to_string().as_str()));
    assert!(head.header("repr-digest").is_some_and(|d| d.starts_with("sha-256=:")), "{:?}", head.header("repr-digest"));
    for (a, b) in [
        (0usize, 0usize),
        (65_535, 65_537),
        (5 * 1024 * 1024 - 3, 5 * 1024 * 1024 + 70_000),
        (data.len() - 10, data.len() - 1),
    ] {
        let range = format!("bytes={a}-{b}");
        let r = gw
            .request(false, "GET", "/v1/files/sealed.bin", Some(gw.token("alice")), &[("range", &range)], Bytes::new())
            .await;
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(&r.body[..], &data[a..=b], "{range}");
    }
    let list = gw.call("alice", "GET", "/v1/files/", Bytes::new()).await.json();
    let entry = list["entries"].as_array().unwrap().iter().find(|e| e["name"] == "sealed.bin").unwrap().clone();
    assert_eq!(entry["size"], data.len() as u64, "listings show the plaintext size");

    // A byte changed in the bucket (by someone holding the S3 credentials and SSE-C key) is
    // detected, not served.
    let mut tampered = stored.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x40;
    s3.bucket.put(&key, &tampered, &[], s3.sse_c_key("acme")).await;
    // The first chunk still authenticates, so the status line goes out; the stream then
    // breaks at the changed chunk instead of delivering it.
    let auth = format!("Authorization: Bearer {}", gw.token("alice"));
    let (code, body) = gw.curl(&["-H", &auth, &gw.url("/v1/files/sealed.bin")]).await;
    assert_ne!(code, 0, "curl completed a download of a tampered object");
    assert!(body.len() < data.len(), "{} bytes of {} delivered", body.len(), data.len());
    assert_eq!(&body[..], &data[..body.len()], "only authenticated bytes before the break");
    let failed = gw.wait_audit("failed download", |r| r["event"] == "failed" && r["operation"] == "download").await;
    assert!(failed["error"].as_str().is_some_and(|e| e.contains("integrity")), "{failed}");
}

/// The key id in the header of a sealed object in the bucket (`GWSEAL04`).
async fn bucket_key_id(gw: &TestGateway, name: &str) -> String {
    let s3 = gw.s3();
    let stored = s3.bucket.get(&s3.key("acme", &format!("partners/alice/{name}")), s3.sse_c_key("acme")).await.unwrap();
    assert_eq!(&stored[..8], b"GWSEAL04", "{name}");
    stored[12..20].iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_tenant_key_seals_new_objects_and_old_ones_stay_readable() {
    let gw = TestGateway::builder().s3().tenant_settings("acme", "seal = true").start().await;
    let old = random_bytes(300_000);
    assert_eq!(gw.call("alice", "PUT", "/v1/files/old.bin", Bytes::from(old.clone())).await.status, 201);
    let old_id = bucket_key_id(&gw, "old.bin").await;

    let out = std::process::Command::new(gateway_bin())
        .args(["keys", "rotate", "--tenant", "acme", "--config"])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let at = text.find("(key id ").unwrap() + "(key id ".len();
    let new_id = text[at..at + 16].to_owned();
    assert_ne!(new_id, old_id);
    let reload = gw.wait_audit("the key reload", |r| r["operation"] == "storage_key_reload").await;
    assert_eq!(reload["key_ids"], serde_json::json!([old_id, new_id]), "{reload}");

    let new = random_bytes(70_000);
    assert_eq!(gw.call("alice", "PUT", "/v1/files/new.bin", Bytes::from(new.clone())).await.status, 201);
    assert_eq!(bucket_key_id(&gw, "new.bin").await, new_id);
    assert_eq!(bucket_key_id(&gw, "old.bin").await, old_id);
    for (name, data) in [("old.bin", &old), ("new.bin", &new)] {
        let got = gw.call("alice", "GET", &format!("/v1/files/{name}"), Bytes::new()).await;
        assert_eq!(got.status, 200, "{name}");
        assert_eq!(sha256_hex(&got.body), sha256_hex(data), "{name}");
    }
}
