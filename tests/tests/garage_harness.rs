//! The S3 test harness itself: Garage starts once per test binary and dies with it, buckets
//! are fresh, the boto3 helpers read and write them (SSE-C included), the fault proxy works
//! in front of Garage with a real S3 client, and an S3 test gateway gets the configuration
//! the S3 backend reads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use gateway_config::{S3Credentials, Sse, TenantStorage};
use gateway_e2e::fault_proxy::FaultProxy;
use gateway_e2e::s3::{Garage, S3Tenants};
use gateway_e2e::{random_bytes, TestGateway};

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn boto3_helpers_put_list_head_get_delete_on_fresh_buckets() {
    let garage = Garage::get_async().await;
    eprintln!("garage ready in {:?} at {}", garage.startup, garage.endpoint);
    assert!(garage.endpoint.starts_with("http://127.0.0.1:"));
    let (b, other) = (garage.create_bucket(), garage.create_bucket());
    assert_ne!(b.name, other.name);
    assert!(b.list("").await.is_empty(), "a new bucket is empty");

    let small = b"hello from the harness".to_vec();
    let big = random_bytes(3 * MIB + 5);
    let key: [u8; 32] = random_bytes(32).try_into().unwrap();
    b.put("acme/a.txt", &small, &[("sha256", "abc")], None).await;
    b.put("acme/dir/b.bin", &big, &[], Some(&key)).await;
    b.put("globex/c.txt", b"c", &[], None).await;

    let listed = b.list("acme/").await;
    let names: Vec<(&str, u64)> = listed.iter().map(|o| (o.key.as_str(), o.size)).collect();
    assert_eq!(names, [("acme/a.txt", small.len() as u64), ("acme/dir/b.bin", big.len() as u64)]);
    assert_eq!(b.keys("").await.len(), 3);
    assert!(other.list("").await.is_empty(), "buckets are independent");
    assert!(b.exists("acme/dir/b.bin").await);
    assert!(!b.exists("acme/dir").await, "exists is an exact match");

    let head = b.head("acme/a.txt", None).await.unwrap();
    assert_eq!(head.size, small.len() as u64);
    assert_eq!(head.metadata.get("sha256").map(String::as_str), Some("abc"));
    assert_eq!(head.sse_customer_algorithm, None);
    assert_eq!(b.get("acme/a.txt", None).await.unwrap(), small);

    // SSE-C: served with its key only.
    let head = b.head("acme/dir/b.bin", Some(&key)).await.unwrap();
    assert_eq!(head.sse_customer_algorithm.as_deref(), Some("AES256"));
    assert_eq!(head.size, big.len() as u64);
    assert_eq!(b.get("acme/dir/b.bin", Some(&key)).await.unwrap(), big);
    let err = b.head("acme/dir/b.bin", None).await.unwrap_err();
    assert_eq!(err.status, 400, "{err:?}");
    assert!(b.get("acme/dir/b.bin", None).await.is_err());
    let wrong: [u8; 32] = random_bytes(32).try_into().unwrap();
    assert!(b.get("acme/dir/b.bin", Some(&wrong)).await.is_err());

    // Multipart uploads left behind are listed, and can be aborted.
    let id = b.start_multipart_upload("acme/left.bin", None).await;
    let uploads = b.multipart_uploads("").await;
    assert_eq!(uploads.len(), 1);
    assert_eq!((uploads[0].key.as_str(), uploads[0].upload_id.as_str()), ("acme/left.bin", id.as_str()));
    assert!(b.multipart_uploads("globex/").await.is_empty());
    assert_eq!(b.abort_multipart_uploads("acme/").await, 1);
    assert!(b.multipart_uploads("").await.is_empty());

    b.delete("acme/a.txt").await;
    assert!(!b.exists("acme/a.txt").await);
    let err = b.get("acme/a.txt", None).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(err.code, "NoSuchKey");
}

#[tokio::test]
async fn bucket_keys_map_back_to_tenants() {
    let garage = Garage::get_async().await;
    let bucket = garage.create_bucket();
    let prefixes: BTreeMap<String, String> = [("acme", "acme/"), ("globex", "tenants/globex/")]
        .iter()
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect();
    let tenants = S3Tenants { bucket: bucket.clone(), prefixes, sse_c_keys: BTreeMap::new() };
    assert_eq!(tenants.key("globex", "x/y.bin"), "tenants/globex/x/y.bin");
    for k in ["acme/in/a.bin", "acme/in/", "tenants/globex/secret.txt", "stray.txt"] {
        bucket.put(k, b"x", &[], None).await;
    }
    assert_eq!(tenants.objects().await, ["?/stray.txt", "acme/in/a.bin", "globex/secret.txt"], "no directory markers");
}

#[tokio::test]
async fn fault_proxy_in_front_of_garage_with_boto3_retries() {
    let garage = Garage::get_async().await;
    let bucket = garage.create_bucket();
    let proxy = FaultProxy::start(garage.s3_addr).await;
    let via = bucket.via(&proxy.url());
    let data = random_bytes(MIB);

    // One injected 500 on the PUT: boto3 retries and the object lands.
    proxy.fail_next("PUT /");
    via.put("retried.bin", &data, &[], None).await;
    assert_eq!(proxy.stats().injected, 1);
    let puts = proxy.requests().iter().filter(|l| l.starts_with("PUT /") && l.contains("retried.bin")).count();
    assert_eq!(puts, 2, "{:?}", proxy.requests());
    assert_eq!(bucket.get("retried.bin", None).await.unwrap(), data);

    // Throttled past boto3's attempts: the error comes through.
    proxy.respond("GET /", 5, 503, "SlowDown");
    let err = via.get("retried.bin", None).await.unwrap_err();
    assert_eq!((err.status, err.code.as_str()), (503, "SlowDown"), "{err:?}");
    proxy.clear();

    // A connection cut mid-body: boto3 retries on a new connection.
    proxy.cut_after(200_000);
    via.put("cut.bin", &data, &[], None).await;
    assert_eq!(proxy.stats().cuts, 1);
    assert_eq!(bucket.get("cut.bin", None).await.unwrap(), data, "the retried upload is whole");
}

#[test]
fn s3_gateway_config_follows_the_backend_contract() {
    let w = TestGateway::builder()
        .s3()
        .s3_settings("endpoint_url = \"http://127.0.0.1:9\"\nparts_in_flight = 2")
        .tenant_settings("globex", "sse = \"sse-kms\"\nkms_key_id = \"test-key\"")
        .write_config();
    let t = &w.text;
    let s3 = w.s3.as_ref().expect("on S3");
    let garage = Garage::get();
    assert!(t.contains("[[storages]]\nname = \"s3\"\nbackend = \"s3\"\n"), "{t}");
    for line in [
        format!("bucket = {:?}", s3.bucket.name),
        "region = \"garage\"".into(),
        "force_path_style = true".into(),
        "part_size = \"5MiB\"".into(),
        "connect_timeout = \"5s\"".into(),
        "request_timeout = \"30s\"".into(),
        "max_attempts = 3".into(),
        "endpoint_url = \"http://127.0.0.1:9\"".into(),
        "parts_in_flight = 2".into(),
        "storage = \"s3\"".into(),
        "prefix = \"acme/\"".into(),
        "prefix = \"globex/\"".into(),
        "sse = \"sse-c\"".into(),
        "sse = \"sse-kms\"".into(),
    ] {
        assert!(t.lines().any(|l| l == line), "no line {line:?} in\n{t}");
    }
    // Settings replace the harness's values rather than repeating keys.
    assert_eq!(t.lines().filter(|l| l.starts_with("endpoint_url")).count(), 1, "{t}");
    assert_eq!(t.lines().filter(|l| l.starts_with("parts_in_flight")).count(), 1, "{t}");
    assert_eq!(t.lines().filter(|l| l.starts_with("storage = \"s3\"")).count(), 2, "{t}");
    assert_eq!(t.lines().filter(|l| l.starts_with("sse_c_key_file")).count(), 1, "{t}");

    // Credential and SSE-C key files: right content, owner-only.
    let file = |key: &str| {
        let line = t.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key}"));
        std::path::PathBuf::from(line.split_once('=').unwrap().1.trim().trim_matches('"'))
    };
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let id = file("access_key_id_file");
    let secret = file("secret_access_key_file");
    let sse_c = file("sse_c_key_file");
    assert_eq!(std::fs::read_to_string(&id).unwrap(), garage.access_key_id);
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), garage.secret_access_key);
    assert_eq!(mode(&secret), 0o600);
    assert_eq!(mode(&sse_c), 0o600);
    assert_eq!(std::fs::read(&sse_c).unwrap(), s3.sse_c_key("acme").unwrap());
    assert!(s3.sse_c_key("globex").is_none());
    assert_eq!(s3.key("acme", "partners/alice/x"), "acme/partners/alice/x");

    // The configuration crate reads it as the contract says.
    let config = gateway_config::load(&w.path).unwrap_or_else(|e| panic!("{e}\n{t}"));
    let [storage] = config.storages.as_slice() else { panic!("{:?}", config.storages) };
    assert_eq!(storage.name, "s3");
    assert_eq!(storage.s3.bucket, s3.bucket.name);
    assert_eq!(storage.s3.endpoint_url.as_deref(), Some("http://127.0.0.1:9"));
    assert_eq!((storage.s3.part_size, storage.s3.parts_in_flight, storage.s3.max_attempts), (5 * MIB as u64, 2, 3));
    assert_eq!(
        storage.s3.credentials,
        S3Credentials::Files { access_key_id: id, secret_access_key: secret, session_token: None }
    );
    let tenant = |name: &str| config.tenants.iter().find(|t| t.name == name).unwrap().storage.clone();
    let TenantStorage::S3 { storage, prefix, sse: Sse::C { key_file }, seal: false } = tenant("acme") else {
        panic!("{:?}", tenant("acme"))
    };
    assert_eq!((storage.as_str(), prefix.as_str(), key_file), ("s3", "acme/", sse_c));
    let TenantStorage::S3 { prefix, sse: Sse::Kms { key_id, .. }, .. } = tenant("globex") else {
        panic!("{:?}", tenant("globex"))
    };
    assert_eq!((prefix.as_str(), key_id.as_str()), ("globex/", "test-key"));

    // Local gateways get no S3 configuration, whatever the settings.
    let local = TestGateway::builder().local_only().s3_settings("bucket = \"x\"").write_config();
    assert!(local.s3.is_none());
    assert!(!local.text.contains("[[storages]]") && !local.text.contains("storage = "), "{}", local.text);
}

/// Used by [`garage_stops_when_the_test_process_ends`]: in a child test process, start
/// Garage, print where it runs, and exit. Does nothing otherwise.
#[test]
fn child_starts_garage_and_exits() {
    if std::env::var_os("GARAGE_HARNESS_CHILD").is_none() {
        return;
    }
    let g = Garage::get();
    println!("GARAGE_PID={} DIR={}", g.pid().unwrap(), g.dir.display());
}

#[test]
fn garage_stops_when_the_test_process_ends() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_starts_garage_and_exits", "--nocapture", "--test-threads=1"])
        .env("GARAGE_HARNESS_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // libtest prints the test's name on the same line.
    let at = stdout.find("GARAGE_PID=").unwrap_or_else(|| panic!("{stdout}"));
    let line = stdout[at + "GARAGE_PID=".len()..].lines().next().unwrap();
    let (pid, dir) = line.split_once(" DIR=").unwrap();
    let dir = std::path::PathBuf::from(dir);
    let t = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() || dir.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "garage {pid} still running or {} still there 30 s after its test process ended",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("garage {pid} gone {:?} after its test process ended", t.elapsed());
}
