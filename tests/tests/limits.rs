//! Peer-controlled time and size limits of the HTTPS frontend, observed from outside.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_e2e::TestGateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_after_the_handshake_timeout() {
    let gw = TestGateway::builder().https_settings("handshake_timeout = \"1s\"").start().await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    // Say nothing: the server must close the connection on its own.
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await.expect("server kept the socket");
    assert_eq!(n.unwrap_or(0), 0);
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upload_body_fails_after_the_idle_timeout() {
    let gw = TestGateway::builder().idle_timeout("1s").start().await;
    let mut tls = gw.connect_tls(&[b"http/1.1"]).await;
    let head = format!(
        "PUT /v1/files/stall.bin HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\ncontent-length: 1000000\r\n\r\n",
        gw.token("alice")
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&[7u8; 1000]).await.unwrap();
    tls.flush().await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut resp)).await.expect("no answer");
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("stalled"), "{text}");
    let rec = gw.wait_audit("stalled upload", |r| r["event"] == "failed" && r["path"] == "stall.bin").await;
    assert_eq!(rec["bytes"], 1000);
    assert_eq!(gw.call("alice", "GET", "/v1/files/stall.bin", Bytes::new()).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped() {
    let gw = TestGateway::builder().https_settings("max_connections = 2").start().await;
    let a = gw.connect_tls(&[b"http/1.1"]).await;
    let b = gw.connect_tls(&[b"http/1.1"]).await;
    // A third handshake does not complete while both slots are taken...
    let third = tokio::time::timeout(Duration::from_millis(800), gw.connect_tls(&[b"http/1.1"])).await;
    assert!(third.is_err(), "a third connection was served beyond max_connections = 2");
    // ...and does once one is released.
    drop(a);
    let c = tokio::time::timeout(Duration::from_secs(5), gw.connect_tls(&[b"http/1.1"])).await;
    assert!(c.is_ok(), "a freed slot was not reused");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_login_grace_time_ends_idle_logins() {
    let gw = TestGateway::builder().sftp_settings("login_grace_time = \"1s\"").start().await;
    let mut tcp = tokio::net::TcpStream::connect(gw.sftp_addr.unwrap()).await.unwrap();
    tcp.write_all(b"SSH-2.0-slowpoke_1.0\r\n").await.unwrap();
    let start = Instant::now();
    let mut sink = Vec::new();
    // Never authenticate: the server must hang up once the grace time is over.
    let _ = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut sink))
        .await
        .expect("server kept the socket");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(8), "{waited:?}");
    assert!(sink.starts_with(b"SSH-2.0-"), "server banner expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_auth_attempts_are_capped_and_each_rejection_is_delayed() {
    let gw =
        TestGateway::builder().sftp_settings("max_auth_attempts = 3\nauth_rejection_delay = \"700ms\"").start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = gw.ssh_base_options();
    for i in 0..6 {
        let key = dir.path().join(format!("wrong{i}"));
        gateway_e2e::ssh_keygen(&key, "ed25519");
        args.push("-i".into());
        args.push(key.display().to_string());
    }
    let start = Instant::now();
    let out = tokio::process::Command::new("sftp")
        .args(&args)
        .arg("-b")
        .arg("/dev/null")
        .arg("alice@127.0.0.1")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let waited = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "wrong keys must not log in");
    let failures: Vec<_> =
        gw.audit().into_iter().filter(|r| r["event"] == "auth_failure" && r["user"] == "alice").collect();
    // Six keys offered, but the server stops after three failed attempts.
    assert!(!failures.is_empty() && failures.len() <= 3, "{} failures recorded: {failures:#?}", failures.len());
    assert!(failures.iter().all(|r| r["credential_id"].as_str().unwrap_or("").starts_with("SHA256:")));
    // Each rejection waits the configured delay.
    assert!(
        waited >= Duration::from_millis(700 * failures.len() as u64),
        "{waited:?} for {} rejections",
        failures.len()
    );
    assert!(stderr.contains("Too many authentication") || stderr.contains("Permission denied"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_ssh_sessions_are_closed() {
    use tokio::io::AsyncBufReadExt;
    let gw = TestGateway::builder().sftp_settings("idle_timeout = \"2s\"").start().await;
    // An authenticated sftp session that never sends a command (stdin stays open; the sftp
    // client itself only notices the closed connection at its next command, so the test
    // watches for ssh's own report of the server closing it).
    let mut child = gw.idle_sftp_session("alice");
    let _stdin = child.stdin.take();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    gw.wait_audit("login", |r| r["event"] == "auth_success" && r["user"] == "alice").await;
    let start = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("closed by remote host") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(closed, Ok(true), "the server did not close the idle session");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_disconnects_idle_ssh_sessions_after_the_grace_period() {
    let mut gw = TestGateway::builder().sftp().grace("1s").start().await;
    let mut child = gw.idle_sftp_session("alice");
    let _stdin = child.stdin.take();
    gw.wait_audit("login", |r| r["event"] == "auth_success" && r["user"] == "alice").await;
    let start = Instant::now();
    gw.trigger_shutdown();
    gw.join().await;
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(10), "{took:?}");
    let trail = gw.audit();
    assert_eq!(trail.last().unwrap()["event"], "checkpoint", "final checkpoint after the SFTP drain");
    gateway::audit::verify::verify_trail(&gw.audit_path, &Default::default()).unwrap();
    let _ = child.start_kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_larger_than_max_object_size_are_refused() {
    let gw = TestGateway::builder().storage_settings("max_object_size = \"1MiB\"").sftp().start().await;
    let exact = vec![5u8; 1024 * 1024];
    assert_eq!(gw.call("alice", "PUT", "/v1/files/fits.bin", Bytes::from(exact)).await.status, 201);
    // Declared too large: refused before the body is read.
    let r = gw.call("alice", "PUT", "/v1/files/big.bin", Bytes::from(vec![5u8; 1024 * 1024 + 1])).await;
    assert_eq!(r.status, 413, "{:?}", r.body);
    assert_eq!(r.json()["error"], "too_large");
    // Undeclared length (chunked from stdin): refused once the limit is crossed.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    std::fs::write(&src, vec![6u8; 3 * 1024 * 1024]).unwrap();
    let auth = format!("Authorization: Bearer {}", gw.token("alice"));
    let (_, out) = gw
        .curl(&[
            "--http1.1",
            "-H",
            &auth,
            "-H",
            "Transfer-Encoding: chunked",
            "-T",
            src.to_str().unwrap(),
            "-w",
            "\n%{http_code}",
            &gw.url("/v1/files/chunked.bin"),
        ])
        .await;
    let out = String::from_utf8_lossy(&out);
    // The 413 is sent while curl is still sending; when the connection closes under it curl
    // may report the broken pipe with the last status it saw (000, or 100 from
    // `Expect: 100-continue`) instead. Never a success; nothing stored (checked below).
    let code = out.trim_end().rsplit('\n').next().unwrap_or("");
    assert!(["413", "000", "100"].contains(&code), "{out}");
    // SFTP: the put fails and nothing is visible.
    let (ok, text) = gw.sftp_batch("alice", &format!("put {} sftp-big.bin\n", src.display()), &[]).await;
    assert!(!ok, "{text}");
    for name in ["big.bin", "chunked.bin", "sftp-big.bin"] {
        assert_eq!(gw.call("alice", "GET", &format!("/v1/files/{name}"), Bytes::new()).await.status, 404, "{name}");
        let rec = gw.wait_audit("too large", |r| r["event"] == "failed" && r["path"] == name).await;
        assert!(rec["error"].as_str().unwrap().contains("larger than the maximum"), "{rec}");
    }
    assert_eq!(gw.pending_uploads().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_connection_floods_from_one_source_are_cut_off() {
    let gw = TestGateway::builder().sftp_settings("connection_rate_per_source = 5").start().await;
    let addr = gw.sftp_addr.unwrap();
    // 15 connections at once: a burst of 5 gets a banner, the rest are closed unanswered.
    let mut banners = 0;
    let mut conns = Vec::new();
    for _ in 0..15 {
        conns.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    for mut c in conns {
        let mut buf = [0u8; 8];
        let got = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
        if matches!(got, Ok(Ok(n)) if n > 0 && buf.starts_with(b"SSH-2.0")) {
            banners += 1;
        }
    }
    assert!((5..=7).contains(&banners), "{banners} of 15 connections were served");
    // After a pause the source may connect again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.unwrap().unwrap();
    assert!(n > 0 && buf.starts_with(b"SSH-2.0"));
}
