//! End-to-end tests of the S3 backend against real servers: Garage (SSE-C, multipart, faults,
//! start-up checks, directories) and moto (the SSE-KMS and SSE-S3 confirming path), with the
//! fault proxy in between where the test needs to see or break what the gateway sends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD as B64, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use gateway_e2e::fault_proxy::{FaultProxy, RequestHead};
use gateway_e2e::s3::{Bucket, Garage};
use gateway_e2e::{python, random_bytes, sha256_hex, write_random, TestGateway};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

const MIB: usize = 1024 * 1024;

/// A string field of an audit record ("" when absent).
fn s<'a>(r: &'a Value, field: &str) -> &'a str {
    r[field].as_str().unwrap_or_default()
}

/// The value of `key = "…"` in a configuration text (first occurrence).
fn config_value(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| panic!("no {key} in\n{text}"))
}

/// Base64 of the SSE-C key's MD5, as S3 wants it (computed by Python: an independent MD5).
async fn md5_b64(key: &[u8]) -> String {
    let code = "import base64, hashlib, sys; print(base64.b64encode(hashlib.md5(bytes.fromhex(sys.argv[1])).digest()).decode())";
    python(&["-c", code, &hex::encode(key)], Duration::from_secs(30)).await.trim().to_owned()
}

/// Every textual form of a key that must never be written down.
fn key_forms(key: &[u8]) -> Vec<String> {
    vec![
        hex::encode(key),
        hex::encode_upper(key),
        B64.encode(key),
        STANDARD_NO_PAD.encode(key),
        URL_SAFE.encode(key),
        URL_SAFE_NO_PAD.encode(key),
    ]
}

/// Panic if `key` (raw or in any of its textual forms) occurs in `file`.
fn assert_no_key_in(file: &Path, key: &[u8]) {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(!bytes.windows(key.len()).any(|w| w == key), "raw SSE-C key bytes in {}", file.display());
    let text = String::from_utf8_lossy(&bytes);
    for form in key_forms(key) {
        assert!(!text.contains(&form), "SSE-C key ({form}) in {}", file.display());
    }
}

/// Run `gateway <args>` to its end (at most `limit`; killed then); (exit status, stdout, stderr).
async fn run_gateway(args: &[&str], config: &Path, limit: Duration) -> (std::process::ExitStatus, String, String) {
    let child = tokio::process::Command::new(TestGateway::gateway_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("gateway {args:?} still running after {limit:?}"))
        .unwrap();
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `gateway serve` as a process whose stderr (`RUST_LOG=info`) goes to `log`; returns once it
/// prints its HTTPS address (panics with the log when it exits or takes over a minute).
async fn serve_until_listening(config: &Path, log: &Path) -> tokio::process::Child {
    serve_until_listening_with(config, log, "info").await
}

/// [`serve_until_listening`] with `RUST_LOG=rust_log`.
async fn serve_until_listening_with(config: &Path, log: &Path, rust_log: &str) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(TestGateway::gateway_bin())
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let started = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("gateway listening on https://") {
                return true;
            }
        }
        false
    })
    .await;
    if started != Ok(true) {
        panic!("gateway did not start:\n{}", std::fs::read_to_string(log).unwrap_or_default());
    }
    // Keep reading stdout so the gateway never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// `text` without ANSI escape sequences (the log colours its fields even in a file).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The S3 operation a request is, from its method, query and headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    PutObject,
    CreateMultipartUpload,
    UploadPart,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    CopyObject,
    UploadPartCopy,
    GetObject,
    HeadObject,
    DeleteObject,
    List,
}

/// (operation, bucket key, query) of a request to a path-style endpoint.
fn classify(h: &RequestHead) -> (Op, String, String) {
    let mut parts = h.first_line.split(' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: Vec<&str> = query.split('&').map(|p| p.split('=').next().unwrap_or_default()).collect();
    let has = |p: &str| params.contains(&p);
    // "/bucket/key…"
    let key = path.trim_start_matches('/').split_once('/').map(|(_, k)| k).unwrap_or_default();
    let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy().into_owned();
    let copy = h.has("x-amz-copy-source");
    let op = match method {
        "PUT" if has("partNumber") && copy => Op::UploadPartCopy,
        "PUT" if has("partNumber") => Op::UploadPart,
        "PUT" if copy => Op::CopyObject,
        "PUT" => Op::PutObject,
        "POST" if has("uploads") => Op::CreateMultipartUpload,
        "POST" if has("uploadId") => Op::CompleteMultipartUpload,
        "DELETE" if has("uploadId") => Op::AbortMultipartUpload,
        "DELETE" => Op::DeleteObject,
        "GET" if has("list-type") || has("uploads") || key.is_empty() => Op::List,
        "GET" => Op::GetObject,
        "HEAD" => Op::HeadObject,
        other => panic!("unexpected S3 request method {other}: {}", h.first_line),
    };
    (op, key, query.to_owned())
}

/// The value of query parameter `name`.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
}

/// A completed upload record of `path`.
fn completed_upload<'a>(records: &'a [Value], path: &str) -> Option<&'a Value> {
    records.iter().find(|r| s(r, "event") == "completed" && s(r, "operation") == "upload" && s(r, "path") == path)
}

// ---------------------------------------------------------------------------------------------
// 1. SSE-C, enforced by Garage
// ---------------------------------------------------------------------------------------------

/// Uploads over HTTPS (curl, multipart) and OpenSSH sftp (single put) to an SSE-C tenant:
/// Garage refuses the objects without the key and serves them with it, the digest metadata is
/// the SHA-256, the audit names SSE-C by fingerprint, and the key is in neither trail nor log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_c_is_enforced_by_garage_and_the_key_is_never_written_down() {
    let garage = Garage::get_async().await;
    let files = TestGateway::builder().s3().sftp().files();
    let text = std::fs::read_to_string(&files.config_path).unwrap();
    let bucket = Bucket { name: config_value(&text, "bucket"), endpoint: garage.endpoint.clone(), garage };
    let key_file = PathBuf::from(
        text.split("name = \"acme\"").nth(1).map(|t| config_value(t, "sse_c_key_file")).expect("acme's key file"),
    );
    let key: [u8; 32] = std::fs::read(&key_file).unwrap().try_into().expect("32 raw key bytes");
    let served = tokio::task::block_in_place(|| files.serve());

    let dir = tempfile::tempdir().unwrap();
    // HTTPS: 12 MiB with a Content-Length, so three 5 MiB parts and the metadata self-copy.
    let https_src = dir.path().join("https.bin");
    let https_sum = write_random(&https_src, 12 * MIB + 5);
    let auth = format!("Authorization: Bearer {}", files.tokens["alice"]);
    let out = tokio::process::Command::from(served.curl())
        .args(["-f", "-H", &auth, "-T"])
        .arg(&https_src)
        .arg(served.url("/v1/files/ssec/https.bin"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "curl upload: {}", String::from_utf8_lossy(&out.stderr));
    // SFTP: OpenSSH sftp, one PutObject.
    let sftp_src = dir.path().join("sftp.bin");
    let sftp_sum = write_random(&sftp_src, MIB + 7);
    let mut sftp = tokio::process::Command::new("sftp");
    sftp.args(files.ssh_options(&served, "alice")).args(["-b", "-", "alice@127.0.0.1"]);
    let batch = format!("put {} ssec-sftp.bin\n", sftp_src.display());
    let out = run_with_stdin(sftp, &batch).await;
    assert!(out.0, "sftp put: {}", out.1);

    for (path, sum, size) in [("ssec/https.bin", &https_sum, 12 * MIB + 5), ("ssec-sftp.bin", &sftp_sum, MIB + 7)] {
        let bucket_key = format!("acme/partners/alice/{path}");
        // Garage enforces SSE-C: no key, no object; a wrong key, no object.
        let err = bucket.get(&bucket_key, None).await.expect_err("served without its SSE-C key");
        assert_eq!(err.status, 400, "{bucket_key} without the key: {err:?}");
        let wrong: [u8; 32] = random_bytes(32).try_into().unwrap();
        assert!(bucket.get(&bucket_key, Some(&wrong)).await.is_err(), "{bucket_key} served with a wrong key");
        // With the tenant's key: the same bytes, and the digest metadata is their SHA-256.
        let (head, body) = bucket.get_with_head(&bucket_key, Some(&key)).await.unwrap();
        assert_eq!(body.len(), size, "{bucket_key}");
        assert_eq!(&sha256_hex(&body), sum, "{bucket_key}: other bytes than were uploaded");
        assert_eq!(head.sse_customer_algorithm.as_deref(), Some("AES256"), "{bucket_key}: {head:?}");
        assert_eq!(bucket.gateway_sha256(&bucket_key, Some(&key)).await.as_ref(), Some(sum), "{bucket_key}: {head:?}");

        let records = wait_trail(&files.audit_path, |r| completed_upload(r, path).is_some()).await;
        let done = completed_upload(&records, path).unwrap();
        assert_eq!(s(done, "sha256"), sum, "{done:#}");
        let s3 = &done["s3"];
        assert_eq!(s(s3, "bucket"), bucket.name, "{done:#}");
        assert_eq!(s(s3, "key"), bucket_key, "{done:#}");
        assert_eq!(s(s3, "sse"), "SSE-C", "{done:#}");
        assert!(s(s3, "sse_c_key_fingerprint").starts_with("hmac-sha256:"), "{done:#}");
        assert!(s3.get("kms_key_id").is_none_or(Value::is_null), "{done:#}");
        assert!(!s(s3, "etag").is_empty(), "{done:#}");
    }
    let trail = wait_trail(&files.audit_path, |r| completed_upload(r, "ssec-sftp.bin").is_some()).await;
    let https_rec = completed_upload(&trail, "ssec/https.bin").unwrap();
    assert_eq!(https_rec["s3"]["parts"], 3, "12 MiB in 5 MiB parts: {https_rec:#}");
    let sftp_rec = completed_upload(&trail, "ssec-sftp.bin").unwrap();
    assert_eq!(sftp_rec["s3"]["parts"], 1, "{sftp_rec:#}");
    // A single PutObject: the store's SHA-256 checksum is the whole object's.
    let whole = B64.encode(hex::decode(&sftp_sum).unwrap());
    assert_eq!(s(&sftp_rec["s3"], "checksum_sha256"), whole, "{sftp_rec:#}");
    // Multipart: a composite checksum over the 3 parts.
    let composite = s(&https_rec["s3"], "checksum_sha256");
    assert!(composite.ends_with("-3"), "{https_rec:#}");
    // One key, one fingerprint.
    assert_eq!(https_rec["s3"]["sse_c_key_fingerprint"], sftp_rec["s3"]["sse_c_key_fingerprint"]);

    // The key, in any spelling, is nowhere in the trail (and its sidecars) or the log.
    let audit_dir = files.audit_path.parent().unwrap();
    for entry in std::fs::read_dir(audit_dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() && p.extension().is_none_or(|e| e != "key") {
            assert_no_key_in(&p, &key);
        }
    }
    let log = served.log_text();
    assert!(log.contains("aborted orphaned multipart uploads"), "the log is the gateway's: {log}");
    assert_no_key_in(&served.log, &key);
}

/// Poll the trail at `path` until `pred` holds (at most 20 s).
async fn wait_trail(path: &Path, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let records: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if pred(&records) {
            return records;
        }
        assert!(Instant::now() < deadline, "the trail never showed what was expected:\n{records:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run `cmd` with `input` on stdin (at most 2 minutes); (success, stdout + stderr).
async fn run_with_stdin(mut cmd: tokio::process::Command, input: &str) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out =
        tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await.expect("timed out").unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// An operator debugging S3 raises `RUST_LOG`: the tenant's SSE-C key must still stay out of
/// the log (the start-up probe alone sends it with a PutObject).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_c_key_stays_out_of_the_log_at_debug_and_trace_levels() {
    Garage::get_async().await;
    let w = TestGateway::builder().s3().write_config();
    let key = *w.s3.as_ref().unwrap().sse_c_key("acme").unwrap();
    let secret = std::fs::read_to_string(config_value(&w.text, "secret_access_key_file")).unwrap();
    let mut leaks = Vec::new();
    for level in ["debug", "trace"] {
        let log = w.dir.path().join(format!("serve-{level}.log"));
        let mut child = serve_until_listening_with(&w.path, &log, level).await;
        child.kill().await.unwrap();
        let text = strip_ansi(&std::fs::read_to_string(&log).unwrap());
        assert!(text.contains("PutObject"), "RUST_LOG={level} shows the probe's requests");
        for form in key_forms(&key) {
            if let Some(at) = text.find(&form) {
                let start = text[..at].rfind('\n').map_or(0, |n| n + 1);
                let line = &text[start..];
                let line = &line[..line.find('\n').unwrap_or(line.len())];
                // Where it leaks: the line up to the key (its target, span and message).
                let shown = &line[..(at - start).min(line.len())];
                leaks.push(format!("RUST_LOG={level}: key ({form}) in: {}…", &shown[..shown.len().min(400)]));
                break;
            }
        }
        if text.contains(secret.trim()) {
            leaks.push(format!("RUST_LOG={level}: the S3 secret access key is in the log"));
        }
    }
    assert!(leaks.is_empty(), "the SSE-C key is written to the log:\n{}", leaks.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 2. Large files cross multipart
// ---------------------------------------------------------------------------------------------

const PARAMIKO_GET: &str = r#"
import sys, paramiko
port, key, remote, local = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(key))
s = paramiko.SFTPClient.from_transport(t)
s.get_channel().settimeout(120)
s.get(remote, local)  # default: prefetch
t.close()
"#;

/// 64 MiB over OpenSSH sftp and over HTTPS PUT (5 MiB parts): both are multipart objects that
/// come back identical through sftp, curl and paramiko (prefetch), with a matching
/// `Repr-Digest`, right ranges across part boundaries, and no upload left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_over_sftp_and_https_cross_multipart_and_read_back_whole() {
    let gw = TestGateway::builder().s3().sftp().s3_settings("part_size = \"5MiB\"").start().await;
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let sftp_src = dir.path().join("sftp-src.bin");
    let sftp_sum = write_random(&sftp_src, size);
    let https_src = dir.path().join("https-src.bin");
    let https_sum = write_random(&https_src, size);

    let (ok, out) = gw.sftp_batch("alice", &format!("put {} big-sftp.bin\n", sftp_src.display()), &[]).await;
    assert!(ok, "sftp put: {out}");
    let auth = format!("Authorization: Bearer {}", gw.token("alice"));
    let (code, out) =
        gw.curl(&["-f", "-H", &auth, "-T", https_src.to_str().unwrap(), &gw.url("/v1/files/big-https.bin")]).await;
    assert_eq!(code, 0, "curl upload: {}", String::from_utf8_lossy(&out));

    let s3 = gw.s3();
    let key = *s3.sse_c_key("acme").unwrap();
    for (name, sum) in [("big-sftp.bin", &sftp_sum), ("big-https.bin", &https_sum)] {
        let done = gw
            .wait_audit("upload completed", |r| {
                r["event"] == "completed" && r["operation"] == "upload" && r["path"] == name
            })
            .await;
        assert_eq!(done["bytes"], size as u64, "{done:#}");
        assert_eq!(s(&done, "sha256"), sum, "{done:#}");
        let parts = done["s3"]["parts"].as_u64().unwrap_or_else(|| panic!("no s3.parts: {done:#}"));
        assert!(parts > 1, "{name}: 64 MiB in {parts} part(s): {done:#}");
        let object = s3.key("acme", &format!("partners/alice/{name}"));
        let head = s3.bucket.head(&object, Some(&key)).await.unwrap();
        assert_eq!(head.size, size as u64);
        // A multipart object's digest lives in its digest object (no self-copy of the data),
        // tied to the object's ETag and encrypted with the same key.
        assert!(!head.metadata.contains_key("gateway-sha256"), "{head:?}");
        let side = s3.bucket.head(&format!(".gateway-sha256/{object}"), Some(&key)).await.unwrap();
        assert_eq!(side.metadata.get("gateway-etag"), Some(&head.etag), "{side:?}");
        assert_eq!(side.sse_customer_algorithm.as_deref(), Some("AES256"), "{side:?}");
        assert_eq!(s3.bucket.gateway_sha256(&object, Some(&key)).await.as_ref(), Some(sum), "{side:?}");
        if name == "big-https.bin" {
            // A Content-Length announces the size: the configured 5 MiB parts.
            assert_eq!(parts, 13, "64 MiB in 5 MiB parts: {done:#}");
        }
        let composite = s(&done["s3"], "checksum_sha256");
        assert!(composite.ends_with(&format!("-{parts}")), "composite checksum over {parts} parts: {done:#}");
    }

    // Back whole: OpenSSH sftp get, curl GET, paramiko get (prefetch), for both objects.
    let script = dir.path().join("get.py");
    std::fs::write(&script, PARAMIKO_GET).unwrap();
    for (name, sum) in [("big-sftp.bin", &sftp_sum), ("big-https.bin", &https_sum)] {
        let via_sftp = dir.path().join(format!("{name}.sftp"));
        let (ok, out) = gw.sftp_batch("alice", &format!("get {name} {}\n", via_sftp.display()), &[]).await;
        assert!(ok, "sftp get {name}: {out}");
        assert_eq!(&gateway_e2e::sha_file(&via_sftp), sum, "sftp get {name}");
        std::fs::remove_file(&via_sftp).unwrap();

        let via_curl = dir.path().join(format!("{name}.curl"));
        let url = gw.url(&format!("/v1/files/{name}"));
        let (code, _) = gw.curl(&["-f", "-H", &auth, "-o", via_curl.to_str().unwrap(), &url]).await;
        assert_eq!(code, 0, "curl GET {name}");
        assert_eq!(&gateway_e2e::sha_file(&via_curl), sum, "curl GET {name}");
        std::fs::remove_file(&via_curl).unwrap();

        let via_paramiko = dir.path().join(format!("{name}.paramiko"));
        let key_path = gw.user_keys["alice"].display().to_string();
        let args =
            [script.to_str().unwrap(), &gw.sftp_port().to_string(), &key_path, name, via_paramiko.to_str().unwrap()];
        python(&args, Duration::from_secs(180)).await;
        assert_eq!(&gateway_e2e::sha_file(&via_paramiko), sum, "paramiko get {name}");
        std::fs::remove_file(&via_paramiko).unwrap();

        // HEAD: Repr-Digest, from the digest object.
        let token = gw.token("alice").to_owned();
        let path = format!("/v1/files/{name}");
        let head = gw.request(true, "HEAD", &path, Some(&token), &[], Bytes::new()).await;
        assert_eq!(head.status, 200, "HEAD {name}");
        let digest = head.header("repr-digest").unwrap_or_else(|| panic!("HEAD {name}: no Repr-Digest"));
        assert_eq!(hex::encode(gateway::digest::parse_digest_field(digest).unwrap()), *sum, "HEAD {name}: {digest}");
        assert_eq!(head.header("content-length"), Some(size.to_string().as_str()), "HEAD {name}");
    }

    // Downloads are audited with the object's S3 facts too.
    for name in ["big-sftp.bin", "big-https.bin"] {
        let down = gw
            .wait_audit("download completed", |r| {
                r["event"] == "completed" && r["operation"] == "download" && r["path"] == name
            })
            .await;
        assert_eq!(s(&down["s3"], "key"), s3.key("acme", &format!("partners/alice/{name}")), "{down:#}");
        assert_eq!(s(&down["s3"], "sse"), "SSE-C", "{down:#}");
        assert!(s(&down["s3"], "sse_c_key_fingerprint").starts_with("hmac-sha256:"), "{down:#}");
    }

    // Ranges: across the 5 MiB and 7 MiB part boundaries, a suffix, the last byte.
    let data = std::fs::read(&https_src).unwrap();
    let sftp_data = std::fs::read(&sftp_src).unwrap();
    let token = gw.token("alice").to_owned();
    for (name, data) in [("big-https.bin", &data), ("big-sftp.bin", &sftp_data)] {
        let path = format!("/v1/files/{name}");
        for (spec, start, end) in [
            (format!("bytes={}-{}", 5 * MIB - 10, 5 * MIB + 9), 5 * MIB - 10, 5 * MIB + 10),
            (format!("bytes={}-{}", 7 * MIB - 3, 14 * MIB + 3), 7 * MIB - 3, 14 * MIB + 4),
            ("bytes=-1000".to_owned(), size - 1000, size),
            (format!("bytes={}-", size - 1), size - 1, size),
        ] {
            let r = gw.request(true, "GET", &path, Some(&token), &[("range", &spec)], Bytes::new()).await;
            assert_eq!(r.status, 206, "{name} {spec}");
            assert_eq!(r.body.len(), end - start, "{name} {spec}");
            assert!(r.body[..] == data[start..end], "{name} {spec}: wrong bytes");
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes {start}-{}/{size}", end - 1).as_str()),
                "{name} {spec}"
            );
        }
    }
    assert_eq!(s3.bucket.multipart_uploads("").await, [], "uploads left open");

    // Rename carries the digest object to the new name (new ETag); delete removes it.
    let (ok, out) = gw.sftp_batch("alice", "rename big-https.bin moved.bin\n", &[]).await;
    assert!(ok, "{out}");
    let (old, new) = (s3.key("acme", "partners/alice/big-https.bin"), s3.key("acme", "partners/alice/moved.bin"));
    assert!(!s3.bucket.exists(&format!(".gateway-sha256/{old}")).await, "the old name's digest object stays");
    assert_eq!(s3.bucket.gateway_sha256(&new, Some(&key)).await.as_ref(), Some(&https_sum));
    let head = gw.request(true, "HEAD", "/v1/files/moved.bin", Some(&token), &[], Bytes::new()).await;
    let digest = head.header("repr-digest").unwrap_or_else(|| panic!("HEAD moved.bin: no Repr-Digest"));
    assert_eq!(hex::encode(gateway::digest::parse_digest_field(digest).unwrap()), https_sum);
    assert_eq!(gw.call("alice", "DELETE", "/v1/files/moved.bin", Bytes::new()).await.status, 204);
    assert!(!s3.bucket.exists(&format!(".gateway-sha256/{new}")).await, "a deleted object's digest object stays");
}

// ---------------------------------------------------------------------------------------------
// 3. SSE-KMS on Garage: fail closed
// ---------------------------------------------------------------------------------------------

/// Garage does not implement SSE-KMS: a tenant asking for it must stop the start, with a
/// message naming the tenant and bucket and saying the encryption was not confirmed, and the
/// probe must not stay behind.
#[tokio::test]
async fn sse_kms_on_garage_stops_the_start_and_leaves_no_probe() {
    Garage::get_async().await;
    let w = TestGateway::builder()
        .s3()
        .tenant_settings("globex", "sse = \"sse-kms\"\nkms_key_id = \"test-key\"")
        .write_config();
    let bucket = w.s3.as_ref().unwrap().bucket.clone();
    let (status, stdout, stderr) = run_gateway(&["serve"], &w.path, Duration::from_secs(120)).await;
    assert!(!status.success(), "serve started with SSE-KMS on Garage:\n{stdout}\n{stderr}");
    eprintln!("serve refused SSE-KMS on Garage:\n{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("\"globex\"") && l.contains(&bucket.name))
        .unwrap_or_else(|| panic!("no message naming tenant globex and bucket {}:\n{stderr}", bucket.name));
    assert!(line.to_lowercase().contains("encryption not confirmed"), "{line}");
    assert!(line.contains("aws:kms"), "says what was asked for: {line}");
    // Only the tenant that cannot be served is named.
    assert!(!stderr.contains("tenant \"acme\""), "{stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
    assert_eq!(bucket.keys("").await, Vec::<String>::new(), "a probe object stayed behind");
    assert_eq!(bucket.multipart_uploads("").await, []);
}

// ---------------------------------------------------------------------------------------------
// 4. The confirming path (moto) and the headers on the wire
// ---------------------------------------------------------------------------------------------

/// A `moto_server` on a free loopback port, killed when dropped.
struct Moto {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    log: tempfile::NamedTempFile,
}

impl Moto {
    async fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = tempfile::NamedTempFile::new().unwrap();
        // moto_server, with its CompleteMultipartUpload answer fixed (see the fixture).
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_s3_server.py");
        let child = tokio::process::Command::new("python3")
            .arg(fixture)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 is installed");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut moto = Moto { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(st)) = moto.child.try_wait() {
                panic!("moto_server exited ({st}): {}", std::fs::read_to_string(moto.log.path()).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "moto_server did not listen within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moto
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A new bucket (region us-east-1).
    async fn create_bucket(&self, name: &str) -> Bucket {
        let code = "import boto3, sys\n\
                    boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='test', \
                    aws_secret_access_key='test').create_bucket(Bucket=sys.argv[2])";
        python(&["-c", code, &self.url(), name], Duration::from_secs(60)).await;
        // The boto3 helpers sign for Garage's region and key; moto accepts any.
        Bucket { name: name.to_owned(), endpoint: self.url(), garage: Garage::get_async().await }
    }
}

/// SSE-KMS (with a bucket key) and SSE-S3 tenants on moto, which confirms them: single and
/// multipart uploads succeed, the objects carry the encryption asked for, the audit says so,
/// and the proxy shows the encryption headers on every write and a SHA-256 checksum on every
/// PutObject and UploadPart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_kms_and_sse_s3_are_confirmed_by_moto_with_the_headers_on_every_write() {
    let moto = Moto::start().await;
    let bucket = moto.create_bucket("gateway-moto").await;
    let proxy = FaultProxy::start(moto.addr).await;
    let creds = tempfile::tempdir().unwrap();
    let (id_file, secret_file) = (creds.path().join("id"), creds.path().join("secret"));
    gateway_e2e::s3::write_private(&id_file, b"AKIDMOTOTEST").unwrap();
    gateway_e2e::s3::write_private(&secret_file, b"moto-secret-any").unwrap();
    let gw = TestGateway::builder()
        .s3()
        .s3_settings(&format!(
            "bucket = \"gateway-moto\"\nregion = \"us-east-1\"\nendpoint_url = {:?}\nforce_path_style = true\n\
             access_key_id_file = {id_file:?}\nsecret_access_key_file = {secret_file:?}\npart_size = \"5MiB\"",
            proxy.url()
        ))
        .tenant_settings("acme", "sse = \"sse-kms\"\nkms_key_id = \"test-key\"\nbucket_key = true")
        .tenant_settings("globex", "sse = \"sse-s3\"")
        .start()
        .await;

    let small = random_bytes(100_000);
    let big = random_bytes(12 * MIB + 17);
    let uploads = [
        ("alice", "acme/partners/alice/kms/small.bin", "/v1/files/kms/small.bin", &small),
        ("alice", "acme/partners/alice/kms/big.bin", "/v1/files/kms/big.bin", &big),
        ("bob", "globex/s3/small.bin", "/v1/files/s3/small.bin", &small),
        ("bob", "globex/s3/big.bin", "/v1/files/s3/big.bin", &big),
    ];
    for (user, bucket_key, path, data) in uploads {
        let r = gw.call(user, "PUT", path, Bytes::from(data.to_vec())).await;
        if r.status != 201 {
            let rel = path.trim_start_matches("/v1/files/");
            let failed: Vec<Value> =
                gw.audit().into_iter().filter(|r| r["event"] == "failed" && r["path"] == rel).collect();
            let wire: Vec<(String, Option<String>)> = proxy
                .request_heads()
                .iter()
                .map(|h| (h.first_line.clone(), h.header("x-amz-server-side-encryption").map(str::to_owned)))
                .collect();
            panic!("{user} PUT {path}: {} {:?}\naudit: {failed:#?}\nrequests: {wire:#?}", r.status, r.body);
        }
        let back = gw.call(user, "GET", path, Bytes::new()).await;
        assert_eq!(back.status, 200, "{user} GET {path}");
        assert!(back.body[..] == data[..], "{user} GET {path}: other bytes");

        let head = bucket.head(bucket_key, None).await.unwrap_or_else(|e| panic!("{bucket_key}: {e:?}"));
        assert_eq!(head.size, data.len() as u64);
        let kept = bucket.gateway_sha256(bucket_key, None).await;
        assert_eq!(kept, Some(sha256_hex(data)), "{bucket_key}: {head:?}");
        let rel = path.trim_start_matches("/v1/files/");
        let done = gw
            .wait_audit("upload completed", |r| {
                r["event"] == "completed" && r["operation"] == "upload" && r["path"] == rel && r["user"] == user
            })
            .await;
        let s3 = &done["s3"];
        assert_eq!(s(s3, "bucket"), "gateway-moto", "{done:#}");
        assert_eq!(s(s3, "key"), bucket_key, "{done:#}");
        assert!(s3.get("sse_c_key_fingerprint").is_none_or(Value::is_null), "{done:#}");
        assert_eq!(s3["parts"], if data.len() > 5 * MIB { 3 } else { 1 }, "{done:#}");
        if user == "alice" {
            assert_eq!(head.server_side_encryption.as_deref(), Some("aws:kms"), "{bucket_key}: {head:?}");
            assert_eq!(head.kms_key_id.as_deref(), Some("test-key"), "{bucket_key}: {head:?}");
            assert_eq!(s(s3, "sse"), "aws:kms", "{done:#}");
            assert_eq!(s(s3, "kms_key_id"), "test-key", "{done:#}");
        } else {
            assert_eq!(head.server_side_encryption.as_deref(), Some("AES256"), "{bucket_key}: {head:?}");
            assert_eq!(head.kms_key_id, None, "{bucket_key}: {head:?}");
            assert_eq!(s(s3, "sse"), "AES256", "{done:#}");
            assert!(s3.get("kms_key_id").is_none_or(Value::is_null), "{done:#}");
        }
    }

    // What went over the wire.
    let heads = proxy.request_heads();
    let mut seen: BTreeMap<(&str, Op), usize> = BTreeMap::new();
    for h in &heads {
        let (op, key, query) = classify(h);
        // A multipart object's digest object belongs to the tenant of its object.
        let key = key.strip_prefix(".gateway-sha256/").unwrap_or(&key).to_owned();
        let tenant = if key.starts_with("acme/") {
            "acme"
        } else if key.starts_with("globex/") {
            "globex"
        } else {
            continue;
        };
        *seen.entry((tenant, op)).or_default() += 1;
        let sse = h.header("x-amz-server-side-encryption");
        let writes = matches!(op, Op::PutObject | Op::CreateMultipartUpload | Op::CopyObject);
        if writes && tenant == "acme" {
            assert_eq!(sse, Some("aws:kms"), "{h:#?}");
            assert_eq!(h.header("x-amz-server-side-encryption-aws-kms-key-id"), Some("test-key"), "{h:#?}");
            assert_eq!(h.header("x-amz-server-side-encryption-bucket-key-enabled"), Some("true"), "{h:#?}");
            let context = h.header("x-amz-server-side-encryption-context").unwrap_or_else(|| panic!("{h:#?}"));
            let context: Value = serde_json::from_slice(&B64.decode(context).unwrap()).unwrap();
            assert_eq!(context["gateway-tenant"], "acme", "{h:#?}");
        } else if writes {
            assert_eq!(sse, Some("AES256"), "{h:#?}");
            assert!(!h.has("x-amz-server-side-encryption-aws-kms-key-id"), "{h:#?}");
        }
        if matches!(op, Op::PutObject | Op::UploadPart) {
            let sum = h.header("x-amz-checksum-sha256").unwrap_or_else(|| panic!("no SHA-256 checksum: {h:#?}"));
            // Where the body is known, the checksum is its SHA-256.
            let body: Option<&[u8]> = match (op, key.rsplit('/').next().unwrap_or_default()) {
                (Op::PutObject, "small.bin") => Some(&small),
                (Op::UploadPart, "big.bin") => {
                    let n: usize = query_param(&query, "partNumber").unwrap().parse().unwrap();
                    Some(&big[(n - 1) * 5 * MIB..(n * 5 * MIB).min(big.len())])
                }
                _ => None,
            };
            if let Some(body) = body {
                assert_eq!(sum, B64.encode(gateway::digest::sha256(body)), "{h:#?}");
            }
        }
    }
    eprintln!("requests by tenant and operation: {seen:?}");
    for tenant in ["acme", "globex"] {
        // The start-up probe, a small upload and the big one's digest object are PutObjects;
        // the big one is the rest.
        for (op, at_least) in [(Op::PutObject, 3), (Op::CreateMultipartUpload, 1), (Op::UploadPart, 3)] {
            let n = seen.get(&(tenant, op)).copied().unwrap_or(0);
            assert!(n >= at_least, "{tenant}: {n} {op:?} (expected at least {at_least}); seen {seen:?}");
        }
    }
    drop(gw);
    drop(moto);
}

/// SSE-C on Garage through the proxy: the customer algorithm, key and key MD5 go with every
/// request that writes, continues, reads or copies an object (copies: for the source too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_c_headers_go_with_every_object_request_to_garage() {
    let garage = Garage::get_async().await;
    let proxy = FaultProxy::start(garage.s3_addr).await;
    let gw = TestGateway::builder()
        .s3()
        .sftp()
        .s3_settings(&format!("endpoint_url = {:?}\npart_size = \"5MiB\"", proxy.url()))
        .start()
        .await;
    let key = *gw.s3().sse_c_key("acme").unwrap();
    let (key_b64, md5) = (B64.encode(key), md5_b64(&key).await);

    let small = random_bytes(10_000);
    let big = random_bytes(11 * MIB);
    for (path, data) in [("/v1/files/c/small.bin", &small), ("/v1/files/c/big.bin", &big)] {
        assert_eq!(gw.call("alice", "PUT", path, Bytes::from(data.to_vec())).await.status, 201, "PUT {path}");
        let back = gw.call("alice", "GET", path, Bytes::new()).await;
        assert_eq!(back.status, 200, "GET {path}");
        assert!(back.body[..] == data[..], "GET {path}");
    }
    let (ok, out) = gw.sftp_batch("alice", "rename c/small.bin c/moved.bin\nls -l c\n", &[]).await;
    assert!(ok, "{out}");

    let mut seen: BTreeMap<Op, usize> = BTreeMap::new();
    for h in proxy.request_heads() {
        let (op, key, _) = classify(&h);
        if !key.starts_with("acme/") && !key.starts_with("globex/") {
            continue;
        }
        *seen.entry(op).or_default() += 1;
        let needs = matches!(
            op,
            Op::PutObject
                | Op::CreateMultipartUpload
                | Op::UploadPart
                | Op::CompleteMultipartUpload
                | Op::GetObject
                | Op::HeadObject
                | Op::CopyObject
                | Op::UploadPartCopy
        );
        if !needs || !key.starts_with("acme/") {
            continue;
        }
        assert_eq!(h.header("x-amz-server-side-encryption-customer-algorithm"), Some("AES256"), "{op:?} {h:#?}");
        assert_eq!(h.header("x-amz-server-side-encryption-customer-key"), Some(key_b64.as_str()), "{op:?} {h:#?}");
        assert_eq!(h.header("x-amz-server-side-encryption-customer-key-md5"), Some(md5.as_str()), "{op:?} {h:#?}");
        assert!(!h.has("x-amz-server-side-encryption"), "SSE-C only, no SSE-S3/KMS: {h:#?}");
        if matches!(op, Op::CopyObject | Op::UploadPartCopy) {
            let src = "x-amz-copy-source-server-side-encryption-customer";
            assert_eq!(h.header(&format!("{src}-algorithm")), Some("AES256"), "{h:#?}");
            assert_eq!(h.header(&format!("{src}-key")), Some(key_b64.as_str()), "{h:#?}");
            assert_eq!(h.header(&format!("{src}-key-md5")), Some(md5.as_str()), "{h:#?}");
        }
        if matches!(op, Op::PutObject | Op::UploadPart) {
            assert!(h.has("x-amz-checksum-sha256"), "{h:#?}");
        }
    }
    eprintln!("requests by operation: {seen:?}");
    for op in [
        Op::PutObject,
        Op::CreateMultipartUpload,
        Op::UploadPart,
        Op::CompleteMultipartUpload,
        Op::GetObject,
        Op::HeadObject,
        Op::CopyObject,
    ] {
        assert!(seen.get(&op).copied().unwrap_or(0) > 0, "no {op:?} seen: {seen:?}");
    }
    // The rename is a copy (a multipart object's digest is a PutObject, not a self-copy).
    assert!(seen[&Op::CopyObject] >= 1, "{seen:?}");
    assert!(gw.s3().bucket.exists("acme/partners/alice/c/moved.bin").await);
    assert!(!gw.s3().bucket.exists("acme/partners/alice/c/small.bin").await);
}

// ---------------------------------------------------------------------------------------------
// 5. Faults between the gateway and Garage
// ---------------------------------------------------------------------------------------------

/// A gateway on Garage through a fresh fault proxy, 5 MiB parts, 3 s per request attempt.
async fn faulty_gateway(max_attempts: u32, sftp: bool) -> (TestGateway, FaultProxy) {
    let garage = Garage::get_async().await;
    let proxy = FaultProxy::start(garage.s3_addr).await;
    let mut b = TestGateway::builder().s3().s3_settings(&format!(
        "endpoint_url = {:?}\npart_size = \"5MiB\"\nrequest_timeout = \"3s\"\nconnect_timeout = \"2s\"\nmax_attempts = {max_attempts}",
        proxy.url()
    ));
    if sftp {
        b = b.sftp();
    }
    (b.start().await, proxy)
}

/// A 32 MiB HTTPS upload (HTTP/2) of `name` as alice; its status.
async fn put_32_mib(gw: &TestGateway, name: &str) -> u16 {
    let token = gw.token("alice").to_owned();
    let data = Bytes::from(random_bytes(32 * MIB));
    let r = gw.request(true, "PUT", &format!("/v1/files/faults/{name}"), Some(&token), &[], data).await;
    eprintln!("PUT {name}: {} {:?}", r.status, String::from_utf8_lossy(&r.body));
    r.status
}

/// After a failed upload of `path`: a `failed` record, no object, no open multipart upload
/// (the abort is awaited before the reply: allowed 5 s of polling), nothing of it listed.
async fn assert_failed_cleanly(gw: &TestGateway, path: &str, proxy: &FaultProxy) {
    let rec = gw.wait_audit("failed upload", |r| r["event"] == "failed" && r["path"] == path).await;
    assert!(!s(&rec, "error").is_empty(), "{rec:#}");
    assert!(
        gw.audit().iter().all(|r| !(r["event"] == "completed" && r["path"] == path)),
        "a completed record for {path}"
    );
    proxy.clear();
    // The upload had begun as a multipart upload, and the gateway aborted it.
    let requests = proxy.requests();
    assert!(requests.iter().any(|l| l.starts_with("POST ") && l.contains("?uploads")), "{requests:#?}");
    assert!(requests.iter().any(|l| l.starts_with("DELETE ") && l.contains("uploadId=")), "no abort: {requests:#?}");
    let bucket = &gw.s3().bucket;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = bucket.multipart_uploads("").await;
        if open.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "multipart uploads still open 5 s after the failure: {open:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let key = gw.s3().key("acme", &format!("partners/alice/{path}"));
    assert!(!bucket.exists(&key).await, "{key} is visible after a failed upload");
    assert_eq!(gw.stored_objects().await, Vec::<String>::new(), "objects after a failed upload");
    let token = gw.token("alice").to_owned();
    let get = gw.request(true, "GET", &format!("/v1/files/{path}"), Some(&token), &[], Bytes::new()).await;
    assert_eq!(get.status, 404, "GET {path} after its upload failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_part_fails_the_https_upload_and_aborts_it() {
    let (gw, proxy) = faulty_gateway(1, false).await;
    // Part 1 and some of part 2 pass, then the connection carrying the part is reset.
    proxy.cut_after(7 * MIB as u64);
    let status = put_32_mib(&gw, "cut.bin").await;
    assert!((500..600).contains(&status), "upload through a cut connection answered {status}");
    assert_eq!(proxy.stats().cuts, 1, "the cut fired");
    assert_failed_cleanly(&gw, "faults/cut.bin", &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_500_on_every_upload_part_fails_the_https_upload_after_retries_and_aborts_it() {
    let (gw, proxy) = faulty_gateway(2, false).await;
    proxy.respond("partNumber=", 1000, 500, "InternalError");
    let status = put_32_mib(&gw, "err500.bin").await;
    assert!((500..600).contains(&status), "upload with failing parts answered {status}");
    let parts: Vec<String> = proxy.requests().into_iter().filter(|l| l.contains("partNumber=")).collect();
    assert!(proxy.stats().injected >= 2, "a part was retried (max_attempts = 2): {parts:?}");
    let numbers: Vec<&str> =
        parts.iter().filter_map(|l| query_param(l.split(' ').nth(1).unwrap(), "partNumber")).collect();
    let mut tries: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &numbers {
        *tries.entry(n).or_default() += 1;
    }
    // The first part to fail twice fails the upload; the others are cancelled by the abort.
    assert!(tries.values().any(|t| *t == 2), "no part was retried: {parts:#?}");
    assert!(tries.values().all(|t| *t <= 2), "a part was sent more than max_attempts = 2 times: {parts:#?}");
    assert_failed_cleanly(&gw, "faults/err500.bin", &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_part_stalled_past_the_request_timeout_fails_the_https_upload_and_aborts_it() {
    let (gw, proxy) = faulty_gateway(1, false).await;
    proxy.stall_next("partNumber=", Duration::from_secs(20));
    let t = Instant::now();
    let status = put_32_mib(&gw, "stall.bin").await;
    let took = t.elapsed();
    assert!((500..600).contains(&status), "upload with a stalled part answered {status}");
    assert_eq!(proxy.stats().stalled, 1);
    // Failed by the 3 s request timeout, not by the end of the 20 s stall.
    assert!(took < Duration::from_secs(15), "the stalled part failed the upload only after {took:?}");
    assert_failed_cleanly(&gw, "faults/stall.bin", &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_500_on_complete_multipart_upload_fails_the_upload_and_aborts_it() {
    let (gw, proxy) = faulty_gateway(1, false).await;
    // CompleteMultipartUpload is `POST …?uploadId=`; parts and aborts carry `&uploadId=`.
    proxy.respond("?uploadId=", 1000, 500, "InternalError");
    let status = put_32_mib(&gw, "complete500.bin").await;
    assert!((500..600).contains(&status), "upload whose completion failed answered {status}");
    assert!(proxy.stats().injected >= 1, "{:#?}", proxy.requests());
    assert_failed_cleanly(&gw, "faults/complete500.bin", &proxy).await;
}

/// After CompleteMultipartUpload the object exists; when writing its digest object then
/// fails, the gateway must remove it again rather than leave an object without its digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_500_on_the_digest_object_fails_the_upload_and_removes_the_object() {
    let (gw, proxy) = faulty_gateway(1, false).await;
    proxy.respond("/.gateway-sha256/", 1000, 500, "InternalError");
    let status = put_32_mib(&gw, "digest500.bin").await;
    assert!((500..600).contains(&status), "upload whose digest object failed answered {status}");
    let requests = proxy.requests();
    assert!(proxy.stats().injected >= 1, "no digest object was attempted: {requests:#?}");
    assert!(
        requests.iter().any(|l| {
            l.starts_with("DELETE ")
                && l.contains("digest500.bin")
                && !l.contains("uploadId=")
                && !l.contains(".gateway-sha256")
        }),
        "the completed object was not deleted: {requests:#?}"
    );
    let rec = gw.wait_audit("failed upload", |r| r["event"] == "failed" && r["path"] == "faults/digest500.bin").await;
    assert!(!s(&rec, "error").is_empty(), "{rec:#}");
    proxy.clear();
    assert!(!gw.s3().bucket.exists("acme/partners/alice/faults/digest500.bin").await, "object left behind");
    assert_eq!(gw.s3().bucket.multipart_uploads("").await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_500_on_upload_parts_fails_an_sftp_put_and_aborts_it() {
    let (gw, proxy) = faulty_gateway(2, true).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    write_random(&src, 20 * MIB);
    proxy.respond("partNumber=", 1000, 500, "InternalError");
    let (ok, out) = gw.sftp_batch("alice", &format!("put {} sftp-err.bin\n", src.display()), &[]).await;
    assert!(!ok, "sftp put succeeded although every part failed: {out}");
    assert!(proxy.stats().injected >= 2, "{:?}", proxy.requests());
    assert_failed_cleanly(&gw, "sftp-err.bin", &proxy).await;
    let (ok, out) = gw.sftp_batch("alice", "ls -1\n", &[]).await;
    assert!(ok && !out.contains("sftp-err.bin"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_part_fails_an_sftp_put_and_aborts_it() {
    let (gw, proxy) = faulty_gateway(1, true).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    write_random(&src, 20 * MIB);
    proxy.cut_after(9 * MIB as u64);
    let (ok, out) = gw.sftp_batch("alice", &format!("put {} sftp-cut.bin\n", src.display()), &[]).await;
    assert!(!ok, "sftp put succeeded through a cut connection: {out}");
    assert_eq!(proxy.stats().cuts, 1);
    assert_failed_cleanly(&gw, "sftp-cut.bin", &proxy).await;
}

// ---------------------------------------------------------------------------------------------
// 6. Orphaned uploads at start
// ---------------------------------------------------------------------------------------------

/// A multipart upload left under a tenant's prefix, older than `orphan_upload_age`, is
/// aborted at start (and logged); one under no tenant's prefix is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_uploads_under_a_tenant_prefix_are_aborted_at_start() {
    Garage::get_async().await;
    let w = TestGateway::builder().s3().sftp().s3_settings("orphan_upload_age = \"1s\"").write_config();
    let s3 = w.s3.clone().unwrap();
    let key = *s3.sse_c_key("acme").unwrap();
    s3.bucket.start_multipart_upload("acme/partners/alice/left-by-a-crash.bin", Some(&key)).await;
    s3.bucket.start_multipart_upload("not-a-tenant/other.bin", None).await;
    assert_eq!(s3.bucket.multipart_uploads("").await.len(), 2);
    // Older than orphan_upload_age by the time the gateway looks.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let log = w.dir.path().join("serve.log");
    let mut child = serve_until_listening(&w.path, &log).await;
    let left: Vec<String> = s3.bucket.multipart_uploads("").await.into_iter().map(|u| u.key).collect();
    let text = strip_ansi(&std::fs::read_to_string(&log).unwrap());
    child.kill().await.unwrap();
    assert_eq!(left, ["not-a-tenant/other.bin"], "log:\n{text}");
    let line = text
        .lines()
        .find(|l| l.contains("aborted orphaned multipart uploads") && l.contains("\"acme\""))
        .unwrap_or_else(|| panic!("no orphan line for acme in the log:\n{text}"));
    assert!(line.contains("\"aborted\":1"), "{line}");
    assert!(line.contains(&s3.bucket.name), "{line}");
    let globex = text
        .lines()
        .find(|l| l.contains("aborted orphaned multipart uploads") && l.contains("\"globex\""))
        .unwrap_or_else(|| panic!("no orphan line for globex:\n{text}"));
    assert!(globex.contains("\"aborted\":0"), "{globex}");
}

// ---------------------------------------------------------------------------------------------
// 7. Start-up checks
// ---------------------------------------------------------------------------------------------

/// `serve` with this S3 configuration must fail within 60 s, naming the tenant and bucket.
async fn serve_fails_naming(w: &gateway_e2e::WrittenConfig, bucket: &str) -> String {
    let t = Instant::now();
    let (status, stdout, stderr) = run_gateway(&["serve"], &w.path, Duration::from_secs(60)).await;
    assert!(!status.success(), "serve started:\n{stdout}\n{stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
    for tenant in ["acme", "globex"] {
        assert!(
            stderr.lines().any(|l| l.contains(&format!("tenant \"{tenant}\"")) && l.contains(bucket)),
            "no message naming tenant {tenant} and bucket {bucket}:\n{stderr}"
        );
    }
    eprintln!("serve failed after {:?}:\n{stderr}", t.elapsed());
    stderr
}

#[tokio::test]
async fn an_unreachable_endpoint_stops_the_start_naming_tenant_and_bucket() {
    Garage::get_async().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let w = TestGateway::builder()
        .s3()
        .s3_settings(&format!(
            "endpoint_url = \"http://127.0.0.1:{closed}\"\nconnect_timeout = \"1s\"\nrequest_timeout = \"2s\"\nmax_attempts = 2"
        ))
        .write_config();
    let bucket = w.s3.as_ref().unwrap().bucket.name.clone();
    let t = Instant::now();
    let stderr = serve_fails_naming(&w, &bucket).await;
    assert!(t.elapsed() < Duration::from_secs(30), "took {:?}", t.elapsed());
    assert!(stderr.contains("could not reach the store") || stderr.contains("timed out"), "{stderr}");
}

#[tokio::test]
async fn a_missing_bucket_stops_the_start_naming_tenant_and_bucket() {
    Garage::get_async().await;
    let w = TestGateway::builder().s3().s3_settings("bucket = \"gw-no-such-bucket\"").write_config();
    serve_fails_naming(&w, "gw-no-such-bucket").await;
}

#[tokio::test]
async fn a_missing_bucket_is_reported_as_missing_not_as_a_missing_object() {
    Garage::get_async().await;
    let w = TestGateway::builder().s3().s3_settings("bucket = \"gw-no-such-bucket\"").write_config();
    let stderr = serve_fails_naming(&w, "gw-no-such-bucket").await;
    // Says what is wrong: the bucket does not exist (not "no such object").
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("nosuchbucket") || lower.contains("no such bucket") || lower.contains("does not exist"),
        "the message does not say the bucket is missing:\n{stderr}"
    );
}

#[tokio::test]
async fn a_read_only_bucket_stops_the_start_naming_tenant_and_bucket() {
    let garage = Garage::get_async().await;
    let name = format!("gw-read-only-{}", std::process::id());
    garage.run(&["bucket", "create", &name]).unwrap();
    garage.run(&["bucket", "allow", "--read", &name, "--key", &garage.access_key_id]).unwrap();
    let w = TestGateway::builder().s3().s3_settings(&format!("bucket = {name:?}")).write_config();
    let stderr = serve_fails_naming(&w, &name).await;
    assert!(stderr.contains("AccessDenied") || stderr.to_lowercase().contains("denied"), "{stderr}");
    let bucket = Bucket { name, endpoint: garage.endpoint.clone(), garage };
    assert_eq!(bucket.keys("").await, Vec::<String>::new());
}

#[tokio::test]
async fn check_config_reports_every_s3_problem_at_once() {
    Garage::get_async().await;
    let w = TestGateway::builder()
        .s3()
        .s3_settings("part_size = \"1MiB\"\nparts_in_flight = 0\norphan_upload_age = \"0s\"")
        .tenant_settings("globex", "storage = \"nowhere\"")
        .tenant_settings("acme", "sse = \"sse-xyz\"")
        .write_config();
    let (status, stdout, stderr) = run_gateway(&["check-config"], &w.path, Duration::from_secs(60)).await;
    assert!(!status.success(), "{stdout}{stderr}");
    for want in [
        "storages[0].part_size",
        "storages[0].parts_in_flight",
        "storages[0].orphan_upload_age",
        "unknown storage \"nowhere\"",
        "unknown sse \"sse-xyz\"",
    ] {
        assert!(stderr.contains(want), "check-config does not report {want}:\n{stderr}");
    }
    assert!(stderr.contains("problem(s) found"), "{stderr}");
    // serve refuses the same file with the same list, before touching any bucket.
    let (status, _, serve_err) = run_gateway(&["serve"], &w.path, Duration::from_secs(60)).await;
    assert!(!status.success());
    assert!(serve_err.contains("storages[0].part_size") && serve_err.contains("unknown storage"), "{serve_err}");
    assert!(serve_err.contains("not starting"), "{serve_err}");
}

// ---------------------------------------------------------------------------------------------
// 8. Directories over SFTP
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_directories_on_s3_markers_rmdir_and_renames() {
    let gw = TestGateway::builder().s3().sftp().start().await;
    let s3 = gw.s3();
    let key = *s3.sse_c_key("acme").unwrap();
    let home = "acme/partners/alice/";
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    let sums = [write_random(&a, 1000), write_random(&b, 2000), write_random(&c, 3000)];

    // mkdir: an empty directory is a marker, and ls shows it.
    let (ok, out) = gw.sftp_batch("alice", "mkdir empty\nls -1\n", &[]).await;
    assert!(ok, "{out}");
    assert!(out.lines().any(|l| l.trim() == "empty"), "ls does not show the new directory: {out}");
    assert!(s3.bucket.exists(&format!("{home}empty/")).await, "no marker: {:?}", s3.bucket.keys("").await);
    let (ok, out) = gw.sftp_batch("alice", "ls -l empty\n", &[]).await;
    assert!(ok, "ls of an empty directory: {out}");

    // rmdir of a non-empty directory is refused, and nothing in it is lost.
    let batch = format!("mkdir full\nput {} full/a.txt\n", a.display());
    let (ok, out) = gw.sftp_batch("alice", &batch, &[]).await;
    assert!(ok, "{out}");
    let (ok, out) = gw.sftp_batch("alice", "rmdir full\n", &[]).await;
    assert!(!ok, "rmdir of a non-empty directory succeeded: {out}");
    assert!(s3.bucket.exists(&format!("{home}full/a.txt")).await);
    // rmdir of the empty one works: the marker goes.
    let (ok, out) = gw.sftp_batch("alice", "rmdir empty\n", &[]).await;
    assert!(ok, "{out}");
    assert!(!s3.bucket.exists(&format!("{home}empty/")).await);

    // Rename a file: copy + delete, with its content and digest.
    let (ok, out) = gw.sftp_batch("alice", "rename full/a.txt full/renamed.txt\nls -1 full\n", &[]).await;
    assert!(ok, "{out}");
    assert!(out.contains("renamed.txt") && !out.lines().any(|l| l.trim().ends_with("a.txt")), "{out}");
    assert!(!s3.bucket.exists(&format!("{home}full/a.txt")).await, "old name still there");
    let (head, body) = s3.bucket.get_with_head(&format!("{home}full/renamed.txt"), Some(&key)).await.unwrap();
    assert_eq!(sha256_hex(&body), sums[0]);
    let kept = s3.bucket.gateway_sha256(&format!("{home}full/renamed.txt"), Some(&key)).await;
    assert_eq!(kept.as_ref(), Some(&sums[0]), "{head:?}");

    // Rename a small directory (with a subdirectory): every object moves, marker included.
    let batch =
        format!("mkdir small\nput {} small/b.txt\nmkdir small/sub\nput {} small/sub/c.txt\n", b.display(), c.display());
    let (ok, out) = gw.sftp_batch("alice", &batch, &[]).await;
    assert!(ok, "{out}");
    let (ok, out) = gw.sftp_batch("alice", "rename small moved\nls -1\nls -1 moved\nls -1 moved/sub\n", &[]).await;
    assert!(ok, "{out}");
    assert!(out.lines().any(|l| l.trim() == "moved"), "{out}");
    assert!(!out.lines().any(|l| l.trim() == "small"), "{out}");
    let keys = s3.bucket.keys(home).await;
    assert!(!keys.iter().any(|k| k.starts_with(&format!("{home}small"))), "old names remain: {keys:?}");
    for k in ["moved/", "moved/b.txt", "moved/sub/", "moved/sub/c.txt"] {
        assert!(keys.contains(&format!("{home}{k}")), "no {k} after the rename: {keys:?}");
    }
    let back = dir.path().join("back");
    let (ok, out) = gw.sftp_batch("alice", &format!("get moved/sub/c.txt {}\n", back.display()), &[]).await;
    assert!(ok, "{out}");
    assert_eq!(gateway_e2e::sha_file(&back), sums[2]);
    let (ok, out) = gw.sftp_batch("alice", "ls small\n", &[]).await;
    assert!(!ok, "the old directory still lists: {out}");
    assert_eq!(s3.bucket.multipart_uploads("").await, []);
}

/// Audit segments shipped to a bucket with Object Lock (moto) carry COMPLIANCE retention, as
/// the store reports it and as `gateway audit verify-shipped` counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_segments_shipped_under_object_lock_retention() {
    let moto = Moto::start().await;
    moto.create_bucket("gateway-data").await;
    let code = "import boto3, sys\n\
                boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='test', \
                aws_secret_access_key='test').create_bucket(Bucket=sys.argv[2], ObjectLockEnabledForBucket=True)";
    python(&["-c", code, &moto.url(), "audit-locked"], Duration::from_secs(60)).await;
    let creds = tempfile::tempdir().unwrap();
    let (id_file, secret_file) = (creds.path().join("id"), creds.path().join("secret"));
    gateway_e2e::s3::write_private(&id_file, b"AKIDMOTOTEST").unwrap();
    gateway_e2e::s3::write_private(&secret_file, b"moto-secret-any").unwrap();
    let mut gw = TestGateway::builder()
        .s3()
        .checkpoint_every(3)
        .s3_settings(&format!(
            "bucket = \"gateway-data\"\nregion = \"us-east-1\"\nendpoint_url = {:?}\nforce_path_style = true\n\
             access_key_id_file = {id_file:?}\nsecret_access_key_file = {secret_file:?}",
            moto.url()
        ))
        .tenant_settings("acme", "sse = \"sse-s3\"")
        .tenant_settings("globex", "sse = \"sse-s3\"")
        .https_settings(
            "\n[audit.ship]\nstorage = \"s3\"\nbucket = \"audit-locked\"\nnode = \"gw-1\"\ninterval = \"500ms\"\nretention_days = 2\n",
        )
        .start()
        .await;
    for i in 0..3 {
        let r = gw.call("alice", "PUT", &format!("/v1/files/locked-{i}.txt"), Bytes::from_static(b"kept")).await;
        assert_eq!(r.status, 201);
    }
    gw.stop().await;
    let check = "import boto3, sys, json\n\
                 s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='test', \
                 aws_secret_access_key='test')\n\
                 keys = [o['Key'] for o in s3.list_objects_v2(Bucket='audit-locked', Prefix='audit/gw-1/').get('Contents', [])]\n\
                 out = [(k, s3.head_object(Bucket='audit-locked', Key=k).get('ObjectLockMode', 'none')) for k in keys]\n\
                 print(json.dumps(out))";
    let out = python(&["-c", check, &moto.url()], Duration::from_secs(60)).await;
    let segments: Vec<(String, String)> = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(!segments.is_empty(), "no segments shipped");
    assert!(segments.iter().all(|(_, mode)| mode == "COMPLIANCE"), "{segments:?}");
    let verify = std::process::Command::new(TestGateway::gateway_bin())
        .args(["audit", "verify-shipped", "--config"])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{text}");
    let n = segments.len();
    assert!(text.contains(&format!("node gw-1: OK: {n} segments ({n} under Object Lock retention)")), "{text}");
}
