//! Audit shipping to a real S3 store (Garage): sealed segments appear in the audit bucket
//! while the gateway runs and after it stops; together they are byte for byte the local
//! trail; `gateway audit verify-shipped` accepts them, and names an altered or a missing
//! segment; a restart continues the set without gaps or duplicates; Object Lock retention on
//! a store without it is refused at start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_e2e::s3::{Bucket, Garage};
use gateway_e2e::TestGateway;

fn ship_settings(bucket: &str, extra: &str) -> String {
    format!("\n[audit.ship]\nstorage = \"s3\"\nbucket = {bucket:?}\nnode = \"node-a\"\ninterval = \"500ms\"\n{extra}\n")
}

/// `gateway audit verify-shipped`; (success, stdout).
fn verify_shipped(config: &Path, public_key: &Path) -> (bool, String) {
    let out = std::process::Command::new(TestGateway::gateway_bin())
        .args(["audit", "verify-shipped", "--config"])
        .arg(config)
        .arg("--public-key")
        .arg(public_key)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

async fn segments(bucket: &Bucket) -> Vec<String> {
    bucket.keys("audit/node-a/").await
}

async fn shipped_bytes(bucket: &Bucket) -> Vec<u8> {
    let mut all = Vec::new();
    for key in segments(bucket).await {
        all.extend(bucket.get(&key, None).await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_segments_are_shipped_and_verified() {
    let garage = Garage::get_async().await;
    let audit = garage.create_bucket();
    let mut gw =
        TestGateway::builder().s3().checkpoint_every(4).https_settings(&ship_settings(&audit.name, "")).start().await;
    // Shipped while running (checkpoints every 4 records, looked at every 500 ms): two
    // batches of uploads, two segments at least.
    for batch in 0..2 {
        for i in 0..3 {
            let r =
                gw.call("alice", "PUT", &format!("/v1/files/r{batch}-{i}.csv"), Bytes::from(vec![b'x'; 1000])).await;
            assert_eq!(r.status, 201);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while segments(&audit).await.len() < batch + 1 {
            assert!(Instant::now() < deadline, "segment {} not shipped while running", batch + 1);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    gw.stop().await;
    // After the stop the final (shutdown) checkpoint is shipped too: the set is the trail.
    let local = std::fs::read(&gw.audit_path).unwrap();
    assert_eq!(shipped_bytes(&audit).await, local, "shipped segments differ from the local trail");
    let (ok, out) = verify_shipped(&gw.config_path, &gw.audit_pub);
    assert!(ok, "{out}");
    let lines = local.iter().filter(|b| **b == b'\n').count();
    assert!(out.contains(&format!("{lines} records")), "{out}");

    // A restart continues the set from the state file: no gap, no duplicate.
    let config = gateway_config::load(&gw.config_path).unwrap();
    let again = gateway::Gateway::new(&config, &gateway::DevMaterial::default()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(again.run(gateway::Listeners { https: listener, sftp: None, admin: None }, async move {
        let _ = rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), run).await.unwrap().unwrap();
    let local = std::fs::read(&gw.audit_path).unwrap();
    assert_eq!(shipped_bytes(&audit).await, local, "after a restart the set still equals the trail");
    let (ok, out) = verify_shipped(&gw.config_path, &gw.audit_pub);
    assert!(ok, "{out}");

    // Tampering with a shipped segment is named.
    let keys = segments(&audit).await;
    assert!(keys.len() >= 3, "{keys:?}");
    let victim = &keys[1];
    let original = audit.get(victim, None).await.unwrap();
    let text = String::from_utf8(original.clone()).unwrap();
    let altered = text.replacen("\"alice\"", "\"mallory\"", 1);
    assert_ne!(altered, text, "segment {victim} should name alice");
    audit.put(victim, altered.as_bytes(), &[], None).await;
    let (ok, out) = verify_shipped(&gw.config_path, &gw.audit_pub);
    assert!(!ok && out.contains("node node-a") && out.contains("hash chain"), "{out}");
    // A missing segment is named with the records it held.
    audit.delete(victim).await;
    let (ok, out) = verify_shipped(&gw.config_path, &gw.audit_pub);
    assert!(!ok && out.contains("missing"), "{out}");
    audit.put(victim, &original, &[], None).await;
    let (ok, out) = verify_shipped(&gw.config_path, &gw.audit_pub);
    assert!(ok, "restored: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_a_store_without_object_lock_is_refused_at_start() {
    let garage = Garage::get_async().await;
    let audit = garage.create_bucket();
    let written =
        TestGateway::builder().s3().https_settings(&ship_settings(&audit.name, "retention_days = 30")).write_config();
    let config = gateway_config::load(&written.path).unwrap();
    let err = gateway::Gateway::new(&config, &gateway::DevMaterial::default()).await.unwrap_err();
    let text = err.0.join("\n");
    assert!(text.contains("audit.ship") && text.contains("Object Lock") && text.contains(&audit.name), "{text}");
}
