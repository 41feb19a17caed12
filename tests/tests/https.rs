//! End-to-end HTTPS tests: a real gateway, real TLS, a Rust client and the curl binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use gateway_e2e::{random_bytes, sha256_hex, TestGateway};
use tokio::io::AsyncWriteExt;

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn round_trip_over_h2_and_http1_with_audit() {
    let gw = TestGateway::start().await;
    let data = random_bytes(5 * MIB + 123);
    let sum = sha256_hex(&data);
    for (http2, name) in [(true, "h2.bin"), (false, "h1.bin")] {
        let token = gw.token("alice").to_owned();
        let path = format!("/v1/files/in/{name}");
        let put = gw.request(http2, "PUT", &path, Some(&token), &[], Bytes::from(data.clone())).await;
        assert_eq!(put.status, 201, "{:?}", put.body);
        let receipt = put.json();
        assert_eq!(receipt["size"], data.len() as u64);
        assert_eq!(receipt["sha256"], sum);
        assert_eq!(receipt["path"], format!("in/{name}"));
        assert!(put.header("strict-transport-security").unwrap().starts_with("max-age="));

        let get = gw.request(http2, "GET", &path, Some(&token), &[], Bytes::new()).await;
        assert_eq!(get.status, 200);
        assert_eq!(sha256_hex(&get.body), sum);
        assert_eq!(get.header("etag").unwrap(), format!("\"{sum}\""));
        let digest = get.header("repr-digest").unwrap();
        assert_eq!(gateway::digest::parse_digest_field(digest).unwrap().to_vec(), hex::decode(&sum).unwrap());

        // Audit: started + completed with the same transfer id, bytes and sha256.
        let tid = receipt["transfer_id"].as_str().unwrap().to_owned();
        let done = gw.wait_audit("upload completed", |r| r["event"] == "completed" && r["transfer_id"] == tid).await;
        assert_eq!(done["bytes"], data.len() as u64);
        assert_eq!(done["sha256"], sum);
        assert_eq!(done["user"], "alice");
        assert_eq!(done["tenant"], "acme");
        assert_eq!(done["credential_id"], "alice-1");
        assert_eq!(done["object_key"], format!("partners/alice/in/{name}"));
        assert_eq!(done["tls_version"], "TLSv1.3");
        assert_eq!(done["tls_cipher"], "TLS13_AES_256_GCM_SHA384");
        assert!(gw.audit().iter().any(|r| r["event"] == "started" && r["transfer_id"] == tid));
        gw.wait_audit("download completed", |r| {
            r["event"] == "completed" && r["operation"] == "download" && r["path"] == format!("in/{name}")
        })
        .await;
    }
    // The stored object is encrypted at rest (sealed on disk, or SSE-C on S3).
    gw.assert_sealed("acme", "partners/alice/in/h2.bin", &data).await;
    // No token ever reaches the trail.
    let trail = std::fs::read_to_string(&gw.audit_path).unwrap();
    for t in gw.tokens.values() {
        assert!(!trail.contains(t.as_str()));
        let secret = t.rsplit('.').next().unwrap();
        assert!(!trail.contains(secret));
    }
}

#[tokio::test]
async fn curl_round_trip_range_head_list_delete() {
    let gw = TestGateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    let data = random_bytes(3 * MIB + 7);
    std::fs::write(&src, &data).unwrap();
    let auth = format!("Authorization: Bearer {}", gw.token("alice"));
    let url = gw.url("/v1/files/reports/q1.bin");

    let (code, out) = gw.curl(&["-f", "-H", &auth, "-T", src.to_str().unwrap(), &url]).await;
    assert_eq!(code, 0);
    let receipt: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(receipt["sha256"], sha256_hex(&data));

    let dst = dir.path().join("dst.bin");
    let (code, _) = gw.curl(&["-f", "-H", &auth, "-o", dst.to_str().unwrap(), &url]).await;
    assert_eq!(code, 0);
    assert_eq!(sha256_hex(&std::fs::read(&dst).unwrap()), sha256_hex(&data));

    // Range across a chunk boundary (chunks are 64 KiB).
    let (code, part) = gw.curl(&["-f", "-H", &auth, "-r", "65530-65545", &url]).await;
    assert_eq!(code, 0);
    assert_eq!(part, &data[65530..=65545]);
    let tail = gw.call("alice", "GET", "/v1/files/reports/q1.bin", Bytes::new()).await;
    assert_eq!(tail.status, 200);
    let gw_ref = &gw;
    let range = |spec: &'static str| async move {
        let token = gw_ref.token("alice");
        gw_ref.request(true, "GET", "/v1/files/reports/q1.bin", Some(token), &[("range", spec)], Bytes::new()).await
    };
    let r = range("bytes=-100").await;
    assert_eq!(r.status, 206);
    assert_eq!(&r.body[..], &data[data.len() - 100..]);
    assert_eq!(
        r.header("content-range").unwrap(),
        format!("bytes {}-{}/{}", data.len() - 100, data.len() - 1, data.len())
    );
    let r = range("bytes=99999999-").await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range").unwrap(), format!("bytes */{}", data.len()));

    // HEAD
    let (code, head) = gw.curl(&["-f", "-I", "-H", &auth, &url]).await;
    assert_eq!(code, 0);
    let head = String::from_utf8(head).unwrap().to_lowercase();
    assert!(head.contains(&format!("content-length: {}", data.len())), "{head}");
    // Refused HEADs answer with their status and no body, over HTTP/2 too (a JSON body on a
    // HEAD was a protocol error there: curl error 92).
    for (args, status) in [
        (vec!["--http2", "-I", "-H", &auth, &gw.url("/v1/files/reports/missing.bin")], "404"),
        (vec!["--http2", "-I", "-H", "Authorization: Bearer gw1.nobody.x", &url], "401"),
        (vec!["--http1.1", "-I", "-H", &auth, &gw.url("/v1/files/reports/missing.bin")], "404"),
    ] {
        let mut all = vec!["-o", "/dev/null", "-w", "%{http_code} %{http_version}"];
        all.extend(args.iter().copied());
        let (code, out) = gw.curl(&all).await;
        let out = String::from_utf8(out).unwrap();
        assert_eq!((code, out.split(' ').next()), (0, Some(status)), "{args:?}: {out}");
    }

    // Listing with pagination.
    for i in 0..5 {
        let r = gw.call("alice", "PUT", &format!("/v1/files/reports/f{i}.txt"), Bytes::from(format!("file {i}"))).await;
        assert_eq!(r.status, 201);
    }
    let page = gw.call("alice", "GET", "/v1/files/reports/?limit=4", Bytes::new()).await.json();
    let names: Vec<&str> = page["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["f0.txt", "f1.txt", "f2.txt", "f3.txt"]);
    // The cursor is opaque (a name on the local store, a continuation token on S3).
    let next = page["next"].as_str().expect("a next cursor");
    let after = percent_encoding::utf8_percent_encode(next, percent_encoding::NON_ALPHANUMERIC);
    let page2 =
        gw.call("alice", "GET", &format!("/v1/files/reports/?limit=4&after={after}"), Bytes::new()).await.json();
    let names: Vec<&str> = page2["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["f4.txt", "q1.bin"]);
    assert!(page2["next"].is_null());
    let q1 = &page2["entries"][1];
    assert_eq!(q1["size"], data.len() as u64);
    assert_eq!(q1["type"], "file");
    let root = gw.call("alice", "GET", "/v1/files/", Bytes::new()).await.json();
    assert_eq!(root["entries"][0]["name"], "reports");
    assert_eq!(root["entries"][0]["type"], "dir");

    // Delete, then it is gone.
    let (code, _) = gw.curl(&["-f", "-X", "DELETE", "-H", &auth, &url]).await;
    assert_eq!(code, 0);
    assert_eq!(gw.call("alice", "GET", "/v1/files/reports/q1.bin", Bytes::new()).await.status, 404);
    gw.wait_audit("delete", |r| r["operation"] == "delete" && r["result"] == "ok").await;
}

#[tokio::test]
async fn unauthenticated_and_forbidden() {
    let gw = TestGateway::start().await;
    // A fresh user's home lists as empty (homes are implicit), and is audited as a success.
    let empty = gw.call("alice", "GET", "/v1/files/", Bytes::new()).await;
    assert_eq!(empty.status, 200, "{:?}", empty.body);
    assert_eq!(empty.json()["entries"].as_array().unwrap().len(), 0);
    gw.wait_audit("empty home listed", |r| r["operation"] == "list" && r["result"] == "ok").await;
    assert_eq!(gw.call("alice", "GET", "/v1/files/nothing/", Bytes::new()).await.status, 404);

    // Missing, malformed, wrong-secret and unknown-id tokens all look the same.
    let forged = gateway::secrets::Token::mint("alice-1").unwrap();
    let unknown = gateway::secrets::Token::mint("nobody-1").unwrap();
    let mut bodies = Vec::new();
    for token in [None, Some("garbage"), Some(forged.reveal()), Some(unknown.reveal())] {
        let r = gw.request(true, "GET", "/v1/files/x", token, &[], Bytes::new()).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.header("www-authenticate").unwrap(), "Bearer realm=\"gateway\"");
        bodies.push(r.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    let fail = gw.wait_audit("auth failure", |r| r["event"] == "auth_failure" && r["credential_id"] == "alice-1").await;
    assert_eq!(fail["user"], "alice");
    assert!(fail["remote_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    gw.wait_audit("unknown id", |r| r["event"] == "auth_failure" && r["credential_id"] == "nobody-1").await;
    // A claimed token id of 60 KB does not make a 60 KB record: peer-supplied fields are cut.
    let long = format!("gw1.{}.secret", "i".repeat(60_000));
    assert_eq!(gw.request(true, "GET", "/v1/files/x", Some(&long), &[], Bytes::new()).await.status, 401);
    let cut = gw
        .wait_audit("long id", |r| {
            r["event"] == "auth_failure" && r["credential_id"].as_str().is_some_and(|c| c.starts_with("iiii"))
        })
        .await;
    assert!(cut.to_string().len() < 2048, "record of {} bytes", cut.to_string().len());
    assert!(cut["credential_id"].as_str().unwrap().ends_with(" bytes]"), "{cut}");

    // A read-only user cannot write or delete; a denied record is written.
    assert_eq!(gw.call("alice", "PUT", "/v1/files/a.txt", Bytes::from_static(b"x")).await.status, 201);
    let r = gw.call("reader", "PUT", "/v1/files/b.txt", Bytes::from_static(b"x")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "forbidden");
    assert_eq!(gw.call("reader", "DELETE", "/v1/files/a.txt", Bytes::new()).await.status, 403);
    assert_eq!(gw.call("reader", "GET", "/v1/files/a.txt", Bytes::new()).await.status, 200);
    gw.wait_audit("denied", |r| r["event"] == "denied" && r["user"] == "reader" && r["operation"] == "upload").await;
    // Tenants are isolated: bob (globex, home "/") does not see acme's objects.
    assert_eq!(gw.call("bob", "GET", "/v1/files/partners/alice/a.txt", Bytes::new()).await.status, 404);
    // Nothing was stored for the refused write.
    assert!(!gw.object_exists("acme", "partners/alice/b.txt").await);
}

/// A refused upload gets its answer, not a reset: the gateway answers before it reads the
/// body, while curl is still sending it (no `Expect: 100-continue`). Over HTTP/2 an answer
/// followed by RST_STREAM(NO_ERROR) is error 92 to curl 7.x, with no status: the gateway
/// reads and discards the rest of the body instead.
#[tokio::test]
async fn refused_uploads_are_answered_not_reset() {
    let gw = TestGateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    std::fs::write(&src, random_bytes(8 * MIB)).unwrap();
    let src = src.to_str().unwrap();
    let reader = format!("Authorization: Bearer {}", gw.token("reader"));
    let url = gw.url("/v1/files/refused.bin");
    for (auth, want) in [(reader.as_str(), "403"), ("Authorization: Bearer garbage", "401")] {
        for http in ["--http1.1", "--http2"] {
            for round in 0..4 {
                let args = [http, "-H", auth, "-H", "Expect:", "-w", "\n%{http_code}", "-T", src, &url];
                let (code, out) = gw.curl(&args).await;
                let text = String::from_utf8_lossy(&out);
                let status = text.rsplit('\n').next().unwrap_or_default();
                assert_eq!(status, want, "{http} round {round}: curl exit {code}, output {text:?}");
                assert!(text.contains("\"error\""), "{http} round {round}: the JSON error body: {text:?}");
            }
        }
    }
    assert!(!gw.object_exists("acme", "partners/alice/refused.bin").await);
}

#[tokio::test]
async fn path_traversal_corpus_is_refused() {
    let gw = TestGateway::start().await;
    // A secret next to alice's home that she must never reach.
    assert_eq!(gw.call("bob", "PUT", "/v1/files/secret.txt", Bytes::from_static(b"globex")).await.status, 201);
    assert_eq!(gw.call("alice", "PUT", "/v1/files/ok.txt", Bytes::from_static(b"ok")).await.status, 201);
    let corpus = [
        "/v1/files/../../globex/secret.txt",
        "/v1/files/..%2f..%2fsecret.txt",
        "/v1/files/%2e%2e/%2e%2e/secret.txt",
        "/v1/files/%2E%2E/x",
        "/v1/files/a/%2e%2e/%2e%2e/%2e%2e/x",
        "/v1/files/..%5c..%5csecret.txt",
        "/v1/files/a%5c..%5c..%5cx",
        "/v1/files//etc/passwd",
        "/v1/files/a//b",
        "/v1/files/./ok.txt",
        "/v1/files/ok.txt%00.png",
        "/v1/files/a%0d%0aX-Injected:%201",
        "/v1/files/%c0%ae%c0%ae/x",
        "/v1/files/%",
        "/v1/files/%zz",
    ];
    let long = format!("/v1/files/{}", "a".repeat(300));
    let deep = format!("/v1/files/{}", vec!["d"; 40].join("/"));
    let auth = format!("Authorization: Bearer {}", gw.token("alice"));
    for path in corpus.iter().copied().chain([long.as_str(), deep.as_str()]) {
        for method in ["GET", "PUT"] {
            let r = gw.call("alice", method, path, Bytes::from_static(b"evil")).await;
            assert!(r.status == 400 || r.status == 403, "{method} {path} -> {} {:?}", r.status, r.body);
            assert!(!String::from_utf8_lossy(&r.body).contains("globex"));
        }
        // curl with --path-as-is sends the raw path too.
        let (code, out) =
            gw.curl(&["--path-as-is", "-H", &auth, "-w", "%{http_code}", "-o", "/dev/null", &gw.url(path)]).await;
        assert_eq!(code, 0);
        let status = String::from_utf8(out).unwrap();
        assert!(status == "400" || status == "403", "curl {path} -> {status}");
    }
    // Backslash sent raw (curl would not): refused too.
    let r = gw.call("alice", "GET", "/v1/files/a\\..\\x", Bytes::new()).await;
    assert!(r.status == 400 || r.status == 403, "{}", r.status);
    gw.wait_audit("denied path", |r| r["event"] == "denied" && r["error"].as_str().is_some_and(|e| e.contains("'..'")))
        .await;
    // Nothing was written anywhere but alice's own file and bob's secret.
    assert_eq!(gw.stored_objects().await, ["acme/partners/alice/ok.txt", "globex/secret.txt"]);
}

#[tokio::test]
async fn digest_mismatch_stores_nothing() {
    let gw = TestGateway::start().await;
    let data = random_bytes(200_000);
    let wrong = gateway::digest::to_digest_field(&gateway::digest::sha256(b"something else"));
    let right = gateway::digest::to_digest_field(&gateway::digest::sha256(&data));
    let token = gw.token("alice").to_owned();
    let r = gw
        .request(true, "PUT", "/v1/files/d.bin", Some(&token), &[("content-digest", &wrong)], Bytes::from(data.clone()))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "digest_mismatch");
    assert_eq!(gw.call("alice", "GET", "/v1/files/d.bin", Bytes::new()).await.status, 404);
    gw.wait_audit("digest failure", |r| r["event"] == "failed" && r["path"] == "d.bin").await;
    assert_eq!(gw.wait_pending_uploads_gone(Duration::from_secs(10)).await, 0);
    let r = gw
        .request(false, "PUT", "/v1/files/d.bin", Some(&token), &[("repr-digest", &right)], Bytes::from(data.clone()))
        .await;
    assert_eq!(r.status, 201);
    let r = gw
        .request(
            true,
            "PUT",
            "/v1/files/e.bin",
            Some(&token),
            &[("content-digest", "sha-256=nonsense")],
            Bytes::from(data),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_digest");
}

#[tokio::test]
async fn tampered_object_is_detected_not_served() {
    // Flips bytes in the local store's sealed files.
    let gw = TestGateway::builder().local_only().start().await;
    let data = random_bytes(MIB * 3);
    assert_eq!(gw.call("alice", "PUT", "/v1/files/t.bin", Bytes::from(data.clone())).await.status, 201);
    let path = gw.stored_file("acme", "partners/alice/t.bin");
    let original = std::fs::read(&path).unwrap();

    // A flipped byte in the first chunk: refused before any data is sent.
    let mut bad = original.clone();
    bad[200] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();
    let r = gw.call("alice", "GET", "/v1/files/t.bin", Bytes::new()).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"], "integrity_error");
    gw.wait_audit("integrity failure", |r| {
        r["event"] == "failed"
            && r["operation"] == "download"
            && r["error"].as_str().unwrap_or("").contains("integrity")
    })
    .await;

    // A flipped byte deep inside: the stream is cut, the client never gets the full body.
    let mut bad = original.clone();
    let pos = bad.len() - 100_000;
    bad[pos] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    let auth = format!("Authorization: Bearer {}", gw.token("alice"));
    let (code, body) = gw.curl(&["-H", &auth, &gw.url("/v1/files/t.bin")]).await;
    assert_ne!(code, 0, "curl must report the broken transfer (got {} of {} bytes)", body.len(), data.len());
    assert!(body.len() < data.len());
    assert_ne!(sha256_hex(&body), sha256_hex(&data));

    // Truncation is caught too.
    std::fs::write(&path, &original[..original.len() - 10]).unwrap();
    assert_eq!(gw.call("alice", "GET", "/v1/files/t.bin", Bytes::new()).await.status, 500);
    // Restored, it reads again.
    std::fs::write(&path, &original).unwrap();
    let r = gw.call("alice", "GET", "/v1/files/t.bin", Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data));
}

#[tokio::test]
async fn client_disconnect_mid_upload_leaves_nothing() {
    let gw = TestGateway::start().await;
    let mut tls = gw.connect_tls(&[b"http/1.1"]).await;
    let head = format!(
        "PUT /v1/files/partial.bin HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\n\r\n",
        gw.token("alice"),
        10 * MIB
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&random_bytes(2 * MIB)).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(tls);
    let rec = gw.wait_audit("failed upload", |r| r["event"] == "failed" && r["path"] == "partial.bin").await;
    assert!(rec["bytes"].as_u64().unwrap() > 0, "{rec}");
    assert!(rec["bytes"].as_u64().unwrap() < (10 * MIB) as u64);
    assert_eq!(gw.call("alice", "GET", "/v1/files/partial.bin", Bytes::new()).await.status, 404);
    assert!(!gw.object_exists("acme", "partners/alice/partial.bin").await);
    assert_eq!(gw.wait_pending_uploads_gone(Duration::from_secs(10)).await, 0, "upload left behind");
}

#[tokio::test]
async fn graceful_shutdown_lets_uploads_finish_and_seals_the_trail() {
    let mut gw = TestGateway::builder().grace("10s").start().await;
    let mut tls = gw.connect_tls(&[b"http/1.1"]).await;
    let body = random_bytes(MIB);
    let head = format!(
        "PUT /v1/files/slow.bin HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\n\r\n",
        gw.token("alice"),
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body[..MIB / 2]).await.unwrap();
    tls.flush().await.unwrap();
    gw.wait_audit("upload started", |r| r["event"] == "started" && r["path"] == "slow.bin").await;
    gw.trigger_shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are refused while draining.
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err());
    tls.write_all(&body[MIB / 2..]).await.unwrap();
    tls.flush().await.unwrap();
    use tokio::io::AsyncReadExt;
    let mut resp = vec![0u8; 4096];
    let n = tls.read(&mut resp).await.unwrap();
    let resp = String::from_utf8_lossy(&resp[..n]).into_owned();
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    gw.join().await;
    let trail = gw.audit();
    assert!(trail.iter().any(|r| r["event"] == "completed" && r["path"] == "slow.bin"));
    assert_eq!(trail.last().unwrap()["event"], "checkpoint", "final checkpoint at shutdown");
    let report = gateway::audit::verify::verify_trail(&gw.audit_path, &Default::default()).unwrap();
    assert_eq!(report.unsealed, 0);
}

#[tokio::test]
async fn grace_period_over_fails_the_upload_with_a_record() {
    let mut gw = TestGateway::builder().grace("500ms").start().await;
    let mut tls = gw.connect_tls(&[b"http/1.1"]).await;
    let head = format!(
        "PUT /v1/files/stuck.bin HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\n\r\n",
        gw.token("alice"),
        MIB
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&random_bytes(1000)).await.unwrap();
    tls.flush().await.unwrap();
    gw.wait_audit("upload started", |r| r["event"] == "started" && r["path"] == "stuck.bin").await;
    gw.trigger_shutdown();
    gw.join().await;
    let trail = gw.audit();
    let failed = trail.iter().find(|r| r["event"] == "failed" && r["path"] == "stuck.bin").expect("failed record");
    assert_eq!(failed["bytes"], 1000);
    assert_eq!(trail.last().unwrap()["event"], "checkpoint");
    gateway::audit::verify::verify_trail(&gw.audit_path, &Default::default()).unwrap();
    assert!(!gw.object_exists("acme", "partners/alice/stuck.bin").await);
    drop(tls);
}

/// Authentication failures beyond the rate per source fold into one summary record per
/// window: the trail grows with time, not with the attacker's request rate, and nothing is
/// dropped silently (the summary counts every folded failure, also at shutdown).
#[tokio::test]
async fn auth_failures_beyond_the_rate_fold_into_summaries() {
    let mut gw = TestGateway::builder()
        .audit_settings("auth_failures_per_source = 3\nauth_failure_window = \"2s\"")
        .start()
        .await;
    let alice = gateway::secrets::Token::mint("alice-1").unwrap();
    for _ in 0..20 {
        let r = gw.request(true, "GET", "/v1/files/x", Some(alice.reveal()), &[], Bytes::new()).await;
        assert_eq!(r.status, 401);
    }
    let summary = gw
        .wait_audit("summary after the window", |r| {
            r["event"] == "auth_failure" && r["operation"] == "auth_failure_summary"
        })
        .await;
    assert_eq!(summary["count"], 17, "{summary}");
    assert!(summary["error"].as_str().unwrap().contains("alice"), "{summary}");
    let single = |gw: &TestGateway| {
        gw.audit().iter().filter(|r| r["event"] == "auth_failure" && r["operation"].is_null()).count()
    };
    assert_eq!(single(&gw), 3);
    // A new window: three written, the rest summarised when the gateway stops.
    for _ in 0..10 {
        gw.request(true, "GET", "/v1/files/x", Some(alice.reveal()), &[], Bytes::new()).await;
    }
    gw.stop().await;
    assert_eq!(single(&gw), 6);
    let counts: Vec<u64> = gw
        .audit()
        .iter()
        .filter(|r| r["operation"] == "auth_failure_summary")
        .map(|r| r["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [17, 7]);
}
