//! Clients that pipeline without limit: paramiko's prefetching `get()`, raw floods of small
//! requests, scattered out-of-order writes and password guessing. Each must finish, within
//! the memory budget, without starving other clients, and shutdown must not wait on them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gateway_e2e::{paramiko_put, python, random_bytes, sha256_hex, TestGateway};
use serde_json::Value;

const MIB: usize = 1024 * 1024;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

fn last_json(out: &str) -> Value {
    let line = out.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON in {out}"));
    serde_json::from_str(line).unwrap()
}

const PARAMIKO_PREFETCH: &str = r#"
import hashlib, json, sys, paramiko
port, key, local, back1, back2 = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(key))
s = paramiko.SFTPClient.from_transport(t)
s.get_channel().settimeout(120)
s.put(local, "/big.bin")
s.get("/big.bin", back1)  # default: prefetch, a READ for every 32 KiB chunk at once
with open(back2, "wb") as f:
    s.getfo("/big.bin", f)
def sha(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()
print(json.dumps({"get": sha(back1), "getfo": sha(back2)}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paramiko_get_and_getfo_with_default_prefetch_finish_for_256_mib() {
    let gw = TestGateway::builder().sftp().start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(256 * MIB);
    let want = sha256_hex(&data);
    let local = dir.path().join("big.bin");
    std::fs::write(&local, &data).unwrap();
    drop(data);
    let script = dir.path().join("prefetch.py");
    std::fs::write(&script, PARAMIKO_PREFETCH).unwrap();
    let port = gw.sftp_port().to_string();
    let key = gw.user_keys["alice"].display().to_string();
    let (back1, back2) = (dir.path().join("back1"), dir.path().join("back2"));
    let out = python(
        &[
            script.to_str().unwrap(),
            &port,
            &key,
            local.to_str().unwrap(),
            back1.to_str().unwrap(),
            back2.to_str().unwrap(),
        ],
        Duration::from_secs(600),
    )
    .await;
    let sums = last_json(&out);
    assert_eq!(sums["get"], want.as_str(), "get() returned different bytes");
    assert_eq!(sums["getfo"], want.as_str(), "getfo() returned different bytes");
    let downloads: Vec<Value> = gw
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "completed" && r["operation"] == "download" && r["path"] == "big.bin")
        .collect();
    assert_eq!(downloads.len(), 2, "two audited downloads");
    // At least the whole file each time. paramiko's prefetch can decide too early that it is
    // done (a race between its request thread and the replies; its PR #2519) and then read
    // the rest again with plain READs, so a record may count some bytes twice.
    for d in downloads {
        eprintln!("download record: {} bytes", d["bytes"]);
        assert!(d["bytes"].as_u64().unwrap() >= 256 * MIB as u64, "{d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_100k_small_requests_sent_before_any_reply_is_read_is_answered_in_full() {
    let gw = TestGateway::builder().sftp().spawn_process();
    let dir = tempfile::tempdir().unwrap();
    let key = gw.user_keys["alice"].clone();
    paramiko_put(gw.sftp_addr.port(), &key, dir.path(), MIB, "/src.bin").await;
    let (peak_before, _) = gw.rss_kib();
    let out = python(
        &[
            fixture("sftp_flood.py").to_str().unwrap(),
            &gw.sftp_addr.port().to_string(),
            "alice",
            key.to_str().unwrap(),
            "100000",
            "mixed",
            "/src.bin",
        ],
        Duration::from_secs(300),
    )
    .await;
    let r = last_json(&out);
    eprintln!("flood: {r}");
    assert_eq!(r["replies"], 100_000, "{r}");
    assert_eq!(r["wrong"], 0, "{r}");
    assert_eq!(r["missing"], 0, "{r}");
    assert_eq!(r["close_ok"], true, "{r}");
    assert_eq!(r["stored_size"], r["writes"], "every 1-byte write was stored: {r}");
    let (peak_after, _) = gw.rss_kib();
    let growth_mib = peak_after.saturating_sub(peak_before) / 1024;
    eprintln!("gateway peak RSS {peak_before} KiB -> {peak_after} KiB");
    // Queued requests are charged to the connection's 16 MiB budget; what the process
    // holds beyond that is replies in flight and allocator slack.
    assert!(growth_mib < 64, "peak RSS grew by {growth_mib} MiB for one flooding connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_flood_ends_the_process_within_the_grace_period() {
    let mut gw = TestGateway::builder().grace("3s").sftp().spawn_process();
    let key = gw.user_keys["alice"].clone();
    let mut flood = tokio::process::Command::new("python3")
        .arg(fixture("sftp_flood.py"))
        .args([&gw.sftp_addr.port().to_string(), "alice", key.to_str().unwrap(), "300000", "writes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Let the flood get going: the upload is open and its writes are queued.
    let mut started = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if gw.audit().iter().any(|r| r["event"] == "started" && r["path"] == "flood.bin") {
            started = true;
            break;
        }
    }
    assert!(started, "the flood's upload never started");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = Instant::now();
    gw.terminate();
    let status = loop {
        if let Some(st) = gw.child.try_wait().unwrap() {
            break st;
        }
        assert!(asked.elapsed() < Duration::from_secs(3 + 12), "gateway still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("gateway exited {status} {:?} after SIGTERM", asked.elapsed());
    assert!(status.success(), "{status}");
    let _ = flood.kill().await;
    let audit = gw.audit();
    let failed = audit.iter().find(|r| r["event"] == "failed" && r["path"] == "flood.bin");
    assert!(failed.is_some(), "the interrupted upload has a failed record");
    assert_eq!(audit.last().unwrap()["event"], "checkpoint", "the trail was sealed at shutdown");
    let verify = std::process::Command::new(gateway_e2e::gateway_bin())
        .args(["audit", "verify", "--public-key"])
        .arg(&gw.audit_pub)
        .arg(&gw.audit_path)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scattered_out_of_order_writes_on_64_handles_stay_within_the_memory_budget() {
    let gw = TestGateway::builder().sftp().spawn_process();
    let key = gw.user_keys["alice"].clone();
    let (peak_before, _) = gw.rss_kib();
    let port = gw.sftp_addr.port().to_string();
    // Four connections, as in the measurement that found 500 MiB held: each scatters
    // 2,000 1-byte writes and 64 × 32 KiB writes on each of 64 handles, never filling the
    // gap at offset 0 (128 MiB of parked data per connection if nothing bounded it).
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (port, key) = (port.clone(), key.clone());
            tokio::spawn(async move {
                let out = python(
                    &[
                        fixture("paramiko_scatter.py").to_str().unwrap(),
                        &port,
                        "alice",
                        key.to_str().unwrap(),
                        "64",
                        "2000",
                        "64",
                    ],
                    Duration::from_secs(300),
                )
                .await;
                last_json(&out)
            })
        })
        .collect();
    for c in clients {
        let r = c.await.unwrap();
        eprintln!("scatter: {r}");
    }
    let (peak_after, rss_after) = gw.rss_kib();
    let growth_mib = peak_after.saturating_sub(peak_before) / 1024;
    eprintln!("gateway peak RSS {peak_before} KiB -> {peak_after} KiB (now {rss_after} KiB)");
    // Documented bound: 16 MiB budget per connection (4 here) plus slack for replies,
    // framing and the allocator.
    assert!(growth_mib < 4 * 16 + 64, "peak RSS grew by {growth_mib} MiB");
    // paramiko ignores errors on close, so the trail tells what happened to each upload:
    // every one failed (its gap never filled), and the budget refused parked data.
    let audit = gw.audit();
    let failed: Vec<&Value> = audit.iter().filter(|r| r["event"] == "failed").collect();
    assert_eq!(failed.len(), 4 * 64, "one failed record per upload");
    let refused =
        failed.iter().filter(|r| r["error"].as_str().unwrap_or_default().contains("out-of-order data")).count();
    eprintln!("{refused} uploads refused by the budget, the rest failed on their gap; e.g. {}", failed[0]);
    assert!(refused > 0, "the connection budget refused parked data");
    assert!(!audit.iter().any(|r| r["event"] == "completed"), "nothing with a gap was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_cannot_make_progress_is_closed_audited_and_frees_its_slot() {
    // One connection allowed, a small budget and idle timeout: a client that floods writes
    // and never reads a reply wedges its session, which must be closed rather than hold
    // the only slot.
    let gw = TestGateway::builder()
        .sftp_settings("idle_timeout = \"3s\"\nmax_connections = 1\nmax_buffer_per_connection = \"1MiB\"")
        .start()
        .await;
    let key = gw.user_keys["alice"].clone();
    let mut flood = tokio::process::Command::new("python3")
        .arg(fixture("sftp_flood.py"))
        .args([&gw.sftp_port().to_string(), "alice", key.to_str().unwrap(), "1000000", "writes-noread"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = Instant::now();
    // Either the session notices that nothing moves while its budget is spent, or the
    // connection watchdog that nothing crossed the socket for the idle timeout.
    // (Building a million requests takes the client a few seconds; allow for a busy machine.)
    let closed = loop {
        let found = gw
            .audit()
            .into_iter()
            .find(|r| (r["operation"] == "session" || r["operation"] == "connection") && r["result"] == "error");
        if let Some(r) = found {
            break r;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "the wedged session was never closed: {:#?}", gw.audit());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("wedged session closed after {:?}: {closed}", started.elapsed());
    let why = closed["error"].as_str().unwrap();
    assert!(why.contains("no reply could be sent for 3s") || why.contains("idle timeout"), "{closed}");
    gw.wait_audit("the flood's upload failed", |r| r["event"] == "failed" && r["path"] == "flood.bin").await;
    // The server dropped the connection: the only slot is free again (the flooding client
    // may still be running, or may have given up when its connection went).
    let (ok, text) = gw.sftp_batch("bob", "ls\n", &[]).await;
    assert!(ok, "{text}");
    let _ = flood.kill().await;
}
