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
