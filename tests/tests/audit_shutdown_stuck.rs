//! Shutdown with an SFTP session that does not end by itself: its upload is stuck inside a
//! storage call (an S3 `UploadPart` held by the fault proxy far longer than the shutdown
//! takes). After the grace period and the disconnect, the gateway must cancel the session
//! task, so the upload is dropped and writes its `failed` record, and only then close the
//! trail; it must not wait for the store, nor close the trail with the record still to come.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use gateway_e2e::fault_proxy::FaultProxy;
use gateway_e2e::s3::{Bucket, Garage};
use gateway_e2e::{write_random, TestGateway};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const MIB: usize = 1024 * 1024;

/// How long the proxy holds the first `UploadPart` (and the store's per-attempt timeout):
/// far beyond any shutdown bound.
const STALL: Duration = Duration::from_secs(120);

/// `shutdown_grace` (1 s) + the SFTP disconnect limit (10 s) + margin for a busy machine.
const EXIT_BOUND: Duration = Duration::from_secs(30);

fn id(r: &Value) -> &str {
    r["transfer_id"].as_str().unwrap_or_default()
}

fn event(r: &Value) -> &str {
    r["event"].as_str().unwrap_or_default()
}

/// The value of the first `key = "…"` line of a configuration text.
fn config_value(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| panic!("{key} not in the configuration:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sftp_upload_stuck_in_a_storage_call_is_cancelled_at_shutdown_and_audited_before_the_trail_closes() {
    let garage = Garage::get_async().await;
    let proxy = FaultProxy::start(garage.s3_addr).await;
    let files = TestGateway::builder()
        .s3()
        .sftp()
        .grace("1s")
        .s3_settings(&format!(
            "endpoint_url = {:?}\npart_size = \"5MiB\"\nrequest_timeout = \"{}s\"\nmax_attempts = 1",
            proxy.url(),
            STALL.as_secs()
        ))
        .files();
    let text = std::fs::read_to_string(&files.config_path).unwrap();
    let bucket = Bucket { name: config_value(&text, "bucket"), endpoint: garage.endpoint.clone(), garage };
    let mut served = tokio::task::block_in_place(|| files.serve());

    // Three parts (5 + 5 + 2 MiB); the first `UploadPart` is held far past the shutdown.
    proxy.stall_next("partNumber=", STALL);
    let src = files.dir.path().join("stuck-src.bin");
    write_random(&src, 12 * MIB);
    let mut sftp = tokio::process::Command::new("sftp")
        .args(files.ssh_options(&served, "alice"))
        .args(["-b", "-", "alice@127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("sftp is installed");
    let mut stdin = sftp.stdin.take().unwrap();
    stdin.write_all(format!("put {} stuck.bin\n", src.display()).as_bytes()).await.unwrap();
    drop(stdin);

    // Wait until the part is held and the session is committing: `intent` written, so the
    // session task now waits inside the store's commit for the held part.
    let deadline = Instant::now() + Duration::from_secs(90);
    let transfer = loop {
        let trail = files.audit();
        let started = trail.iter().find(|r| event(r) == "started" && r["path"] == "stuck.bin");
        if let Some(started) = started {
            let t = id(started).to_owned();
            if proxy.stats().stalled == 1 && trail.iter().any(|r| id(r) == t && event(r) == "intent") {
                break t;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the upload never got stuck committing (stalled: {}):\n{trail:#?}\n{}",
            proxy.stats().stalled,
            served.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        files.audit().iter().all(|r| !(id(r) == transfer && event(r) != "started" && event(r) != "intent")),
        "the upload ended before shutdown: {:#?}",
        files.audit()
    );

    let t = Instant::now();
    served.signal("TERM");
    let status = tokio::task::block_in_place(|| served.wait(EXIT_BOUND));
    let took = t.elapsed();
    eprintln!("gateway exited {took:?} after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", served.log_text());
    assert!(took < STALL / 2, "shutdown waited for the stalled store: {took:?}");
    assert_eq!(proxy.stats().stalled, 1, "{:#?}", proxy.requests());
    let client = tokio::time::timeout(Duration::from_secs(20), sftp.wait()).await;
    assert!(client.is_ok_and(|st| !st.unwrap().success()), "the sftp put did not fail with the gateway gone");
    proxy.clear();

    let log = served.log_text();
    assert!(!log.contains("a record was lost"), "{log}");
    assert!(log.contains("grace period over"), "the grace period ran out with the upload in flight:\n{log}");
    assert!(
        log.contains("SFTP sessions still running after disconnect; ending them"),
        "the session did not outlive the disconnect, so its cancellation was not exercised:\n{log}"
    );

    let trail = files.audit();
    let mine: Vec<&Value> = trail.iter().filter(|r| id(r) == transfer).collect();
    let starts = mine.iter().filter(|r| event(r) == "started").count();
    assert_eq!(starts, 1, "{mine:#?}");
    let ends: Vec<&&Value> =
        mine.iter().filter(|r| matches!(event(r), "completed" | "failed" | "interrupted")).collect();
    assert_eq!(ends.len(), 1, "exactly one terminal record for {transfer}: {mine:#?}");
    assert_eq!(event(ends[0]), "failed", "ended by the shutdown, audited by its own Drop: {:#?}", ends[0]);
    assert!(
        trail.iter().all(|r| !(r["path"] == "stuck.bin" && event(r) == "completed")),
        "a completed record for the stuck upload: {trail:#?}"
    );
    let last = trail.last().unwrap();
    assert_eq!((last["event"].as_str(), last["operation"].as_str()), (Some("checkpoint"), Some("shutdown")));
    let (ok, verify) = tokio::task::block_in_place(|| files.verify());
    assert!(ok && !verify.contains("WARNING"), "{verify}");

    let objects: Vec<String> = bucket.keys("").await.into_iter().filter(|k| !k.ends_with('/')).collect();
    assert_eq!(objects, Vec::<String>::new(), "objects visible after the stuck upload was cancelled");
}
