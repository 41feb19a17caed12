//! End-to-end SFTP tests: a real gateway driven by real clients — OpenSSH `sftp`, rclone,
//! paramiko and lftp — with SHA-256 comparisons of multi-MiB random files, audit checks, and
//! the refusals (weak algorithms, wrong keys, traversal, missing permissions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use gateway_e2e::{random_bytes, sha256_hex, sha_file, ssh_keygen, write_random, TestGateway};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const MIB: usize = 1024 * 1024;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

// ------------------------------------------------------------------------------ helpers

/// `SHA256:…` of a public key file, as `ssh-keygen -lf` prints it.
async fn fingerprint(public_key: &Path) -> String {
    let out = tokio::process::Command::new("ssh-keygen").arg("-lf").arg(public_key).output().await.unwrap();
    assert!(out.status.success(), "ssh-keygen -lf failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let fp = text.split_whitespace().nth(1).unwrap().to_owned();
    assert!(fp.starts_with("SHA256:"), "{text}");
    fp
}

fn pub_of(key: &Path) -> PathBuf {
    key.with_extension("pub")
}

/// Run a prepared command with a timeout; returns (success, stdout, stderr).
async fn run(mut cmd: tokio::process::Command, stdin: Option<&str>) -> (bool, String, String) {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let program = format!("{:?}", cmd.as_std().get_program());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{program} is installed: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} timed out"))
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// OpenSSH options for logging in to `gw` with an arbitrary key file. The log level stays at
/// INFO: OpenSSH reports "Unable to negotiate … no matching …" at that level.
fn ssh_opts(key: &Path) -> Vec<String> {
    [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=20",
        "-i",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([key.display().to_string()])
    .collect()
}

/// `sftp -b -` as `login` with `key`; returns (success, stdout+stderr).
async fn sftp_as(gw: &TestGateway, login: &str, key: &Path, batch: &str, extra: &[&str]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new("sftp");
    cmd.args(ssh_opts(key)).arg("-P").arg(gw.sftp_port().to_string()).args(extra).args(["-b", "-"]);
    cmd.arg(format!("{login}@127.0.0.1"));
    let (ok, out, err) = run(cmd, Some(batch)).await;
    (ok, format!("{out}{err}"))
}

fn s<'a>(r: &'a Value, field: &str) -> &'a str {
    r[field].as_str().unwrap_or("")
}

fn records(gw: &TestGateway, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    gw.audit().into_iter().filter(|r| pred(r)).collect()
}

/// The `started` and terminal record of the one SFTP transfer of `path` by `user`
/// with operation `op`; asserts there is exactly one started and one completed record.
fn one_transfer(gw: &TestGateway, user: &str, op: &str, path: &str) -> (Value, Value) {
    let mine = |event: &str| {
        records(gw, |r| {
            s(r, "event") == event
                && s(r, "protocol") == "sftp"
                && s(r, "user") == user
                && s(r, "operation") == op
                && s(r, "path") == path
        })
    };
    let started = mine("started");
    let completed = mine("completed");
    assert_eq!(started.len(), 1, "{op} {path}: started records: {started:#?}");
    assert_eq!(completed.len(), 1, "{op} {path}: completed records: {completed:#?}");
    assert!(mine("failed").is_empty(), "{op} {path} has a failed record");
    let (st, done) = (started[0].clone(), completed[0].clone());
    assert_eq!(st["transfer_id"], done["transfer_id"]);
    assert!(!s(&st, "transfer_id").is_empty());
    (st, done)
}

/// Connection fields every SFTP record carries for an OpenSSH client.
fn assert_openssh_client(r: &Value, fp: &str) {
    assert_eq!(s(r, "protocol"), "sftp", "{r:#}");
    assert_eq!(s(r, "credential_id"), fp, "{r:#}");
    assert!(s(r, "ssh_client").starts_with("SSH-2.0-OpenSSH"), "{r:#}");
    assert!(!s(r, "ssh_kex").is_empty(), "{r:#}");
    assert!(!s(r, "ssh_cipher").is_empty(), "{r:#}");
    assert!(s(r, "remote_addr").starts_with("127.0.0.1:"), "{r:#}");
    assert!(r.get("tls_version").is_none_or(Value::is_null), "{r:#}");
}

/// Keys of every object stored for `tenant`, sorted.
async fn stored_paths(gw: &TestGateway, tenant: &str) -> Vec<String> {
    let prefix = format!("{tenant}/");
    gw.stored_objects().await.into_iter().filter_map(|o| o.strip_prefix(&prefix).map(str::to_owned)).collect()
}

/// Names printed by `ls -1` in sftp batch output (command echo lines dropped).
fn listed(out: &str) -> Vec<String> {
    out.lines().filter(|l| !l.starts_with("sftp>") && !l.trim().is_empty()).map(|l| l.trim().to_owned()).collect()
}

// ------------------------------------------------------------------------------ 1. OpenSSH sftp

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_batch_operations_round_trip_and_audit() {
    let gw = TestGateway::builder().sftp().start().await;
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    let (a_size, b_size) = (5 * MIB + 123, 3 * MIB + 7);
    let a_sum = write_random(&l.join("a.bin"), a_size);
    let b_sum = write_random(&l.join("b.bin"), b_size);
    let fp = fingerprint(&pub_of(&gw.user_keys["alice"])).await;
    let d = l.display();

    // put, get, ls, mkdir, rename.
    let batch = format!(
        "mkdir inbox\nput {d}/a.bin inbox/a.bin\nput {d}/b.bin inbox/b.bin\nls -l inbox\n\
         get inbox/a.bin {d}/a.down\nrename inbox/b.bin inbox/c.bin\n"
    );
    let (ok, out) = gw.sftp_batch("alice", &batch, &[]).await;
    assert!(ok, "sftp batch failed:\n{out}");
    assert_eq!(sha_file(&l.join("a.down")), a_sum, "get returned different bytes");
    let long = out.lines().find(|line| line.ends_with(" a.bin") && line.starts_with("-rw")).unwrap_or_else(|| {
        panic!("`ls -l` shows no a.bin:\n{out}");
    });
    assert!(long.contains(&a_size.to_string()), "ls -l size: {long}");

    let (ok, out) = gw.sftp_batch("alice", "ls -1 inbox\n", &[]).await;
    assert!(ok, "{out}");
    assert_eq!(listed(&out), ["inbox/a.bin", "inbox/c.bin"], "{out}");

    // The renamed file is the uploaded one, seen over HTTPS too; the old name is gone.
    let get = gw.call("alice", "GET", "/v1/files/inbox/c.bin", Bytes::new()).await;
    assert_eq!(get.status, 200);
    assert_eq!(sha256_hex(&get.body), b_sum);
    assert_eq!(gw.call("alice", "GET", "/v1/files/inbox/b.bin", Bytes::new()).await.status, 404);
    let original = std::fs::read(l.join("a.bin")).unwrap();
    gw.assert_sealed("acme", "partners/alice/inbox/a.bin", &original).await;

    // reget: resume a partial download from a truncated local copy.
    let partial = MIB + 17;
    std::fs::write(l.join("a.part"), &original[..partial]).unwrap();
    let (ok, out) = gw.sftp_batch("alice", &format!("reget inbox/a.bin {d}/a.part\n"), &[]).await;
    assert!(ok, "reget failed:\n{out}");
    assert_eq!(sha_file(&l.join("a.part")), a_sum, "reget produced different bytes");
    let downloads = records(&gw, |r| {
        s(r, "event") == "completed"
            && s(r, "protocol") == "sftp"
            && s(r, "operation") == "download"
            && s(r, "path") == "inbox/a.bin"
    });
    assert_eq!(downloads.len(), 2, "get and reget: {downloads:#?}");
    assert_eq!(downloads[0]["bytes"], a_size as u64);
    assert_eq!(downloads[1]["bytes"], (a_size - partial) as u64, "reget read only the missing tail");

    // reader: may list and read, may not write (denied, audited, nothing stored).
    let (ok, out) = gw.sftp_batch("reader", &format!("ls -1 inbox\nget inbox/c.bin {d}/c.reader\n"), &[]).await;
    assert!(ok, "reader list/get:\n{out}");
    assert_eq!(sha_file(&l.join("c.reader")), b_sum);
    let (ok, out) = gw.sftp_batch("reader", &format!("put {d}/a.bin inbox/r.bin\n"), &[]).await;
    assert!(!ok, "reader's put succeeded:\n{out}");
    assert!(out.to_lowercase().contains("permission denied"), "{out}");
    let denied = gw
        .wait_audit("reader's upload denied", |r| {
            s(r, "event") == "denied" && s(r, "user") == "reader" && s(r, "operation") == "upload"
        })
        .await;
    assert_eq!(s(&denied, "path"), "inbox/r.bin");
    assert_eq!(s(&denied, "result"), "denied");
    assert_eq!(gw.call("alice", "GET", "/v1/files/inbox/r.bin", Bytes::new()).await.status, 404);
    assert!(records(&gw, |r| s(r, "user") == "reader" && s(r, "event") == "started").len() == 1, "only the get");

    // rm, rmdir; then the directory is gone.
    let (ok, out) = gw.sftp_batch("alice", "rm inbox/a.bin\nrm inbox/c.bin\nrmdir inbox\nls -1\n", &[]).await;
    assert!(ok, "{out}");
    assert!(listed(&out).is_empty(), "home not empty after rm/rmdir: {out}");
    assert_eq!(gw.call("alice", "GET", "/v1/files/inbox/a.bin", Bytes::new()).await.status, 404);

    // ---- audit: one started + completed per transfer, with the connection details.
    let auth =
        records(&gw, |r| s(r, "event") == "auth_success" && s(r, "user") == "alice" && s(r, "protocol") == "sftp");
    assert!(auth.len() >= 4, "one auth_success per alice connection: {auth:#?}");
    for r in &auth {
        assert_openssh_client(r, &fp);
        assert_eq!(s(r, "auth_method"), "publickey");
    }
    for (path, size, sum) in [("inbox/a.bin", a_size, &a_sum), ("inbox/b.bin", b_size, &b_sum)] {
        let (st, done) = one_transfer(&gw, "alice", "upload", path);
        for r in [&st, &done] {
            assert_openssh_client(r, &fp);
            assert_eq!(s(r, "tenant"), "acme");
            assert_eq!(s(r, "object_key"), format!("partners/alice/{path}"));
        }
        assert_eq!(done["bytes"], size as u64, "{done:#}");
        assert_eq!(s(&done, "sha256"), sum);
        assert_eq!(s(&done, "result"), "ok");
    }
    let get_started = records(&gw, |r| {
        s(r, "event") == "started"
            && s(r, "protocol") == "sftp"
            && s(r, "operation") == "download"
            && s(r, "path") == "inbox/a.bin"
    });
    assert_eq!(get_started.len(), 2, "{get_started:#?}\n{:#?}", gw.audit());
    for r in get_started.iter().chain(&downloads) {
        assert_openssh_client(r, &fp);
    }
    assert_eq!(s(&downloads[0], "sha256"), a_sum);
    assert_eq!(get_started[0]["transfer_id"], downloads[0]["transfer_id"]);
    let op = |name: &str, path: &str| {
        let found = records(&gw, |r| {
            s(r, "event") == "operation"
                && s(r, "user") == "alice"
                && s(r, "operation") == name
                && s(r, "path").trim_end_matches('/') == path
        });
        assert!(!found.is_empty(), "no `{name}` record for {path}; trail:\n{:#?}", gw.audit());
        for r in &found {
            assert_eq!(s(r, "result"), "ok", "{r:#}");
            assert_openssh_client(r, &fp);
        }
    };
    op("mkdir", "inbox");
    op("list", "inbox");
    op("rename", "inbox/b.bin -> inbox/c.bin");
    op("delete", "inbox/a.bin");
    op("delete", "inbox/c.bin");
    op("rmdir", "inbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_traversal_is_refused_and_nothing_outside_the_home_is_touched() {
    let gw = TestGateway::builder().sftp().start().await;
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    let d = l.display();
    let a_sum = write_random(&l.join("a.bin"), 2 * MIB + 5);
    let secret = random_bytes(MIB);
    // bob's tenant (home /) and alice's tenant outside her home.
    let put = gw.call("bob", "PUT", "/v1/files/secret.bin", Bytes::from(secret.clone())).await;
    assert_eq!(put.status, 201);
    let (ok, out) = gw.sftp_batch("alice", &format!("mkdir inbox\nput {d}/a.bin inbox/a.bin\n"), &[]).await;
    assert!(ok, "{out}");
    let globex_before = stored_paths(&gw, "globex").await;
    assert_eq!(globex_before, ["secret.bin"]);

    let attempts = [
        format!("get ../../secret.bin {d}/t1"),
        format!("get /../../../globex/secret.bin {d}/t2"),
        format!("get inbox/../../../secret.bin {d}/t3"),
        format!("put {d}/a.bin /../x.bin"),
        format!("put {d}/a.bin ../../../globex/x.bin"),
        format!("put {d}/a.bin inbox/../../escape.bin"),
        "mkdir ../escape".to_owned(),
        "rename inbox/a.bin ../../moved.bin".to_owned(),
        "rm ../../secret.bin".to_owned(),
        "rmdir ../../partners".to_owned(),
        "ls ../..".to_owned(),
    ];
    for attempt in &attempts {
        let before = records(&gw, |r| s(r, "event") == "denied" && s(r, "user") == "alice").len();
        let (ok, out) = gw.sftp_batch("alice", &format!("{attempt}\n"), &[]).await;
        assert!(!ok, "`{attempt}` succeeded:\n{out}");
        let denied = records(&gw, |r| s(r, "event") == "denied" && s(r, "user") == "alice");
        assert!(denied.len() > before, "`{attempt}` left no denied record:\n{out}\n{denied:#?}");
        for r in denied.iter().skip(before) {
            assert_eq!(s(r, "result"), "denied");
            assert!(s(r, "path").contains(".."), "{r:#}");
            assert!(r["object_key"].is_null(), "a refused path never becomes an object key: {r:#}");
        }
    }
    for t in ["t1", "t2", "t3"] {
        let p = l.join(t);
        assert!(!p.exists() || std::fs::metadata(&p).unwrap().len() == 0, "{t} received data");
    }

    // `cd ..` above the root stays at the (virtual) root: the upload lands in the home.
    let (ok, out) = gw.sftp_batch("alice", &format!("cd ../..\npwd\nput {d}/a.bin escaped.bin\n"), &[]).await;
    assert!(ok, "{out}");
    assert!(out.contains("Remote working directory: /\n"), "{out}");
    let got = gw.call("alice", "GET", "/v1/files/escaped.bin", Bytes::new()).await;
    assert_eq!(got.status, 200);
    assert_eq!(sha256_hex(&got.body), a_sum);

    // Nothing outside the home was created, moved or removed.
    assert_eq!(stored_paths(&gw, "acme").await, ["partners/alice/escaped.bin", "partners/alice/inbox/a.bin"]);
    assert_eq!(stored_paths(&gw, "globex").await, globex_before);
    let secret_now = gw.call("bob", "GET", "/v1/files/secret.bin", Bytes::new()).await;
    assert_eq!(secret_now.status, 200);
    assert_eq!(sha256_hex(&secret_now.body), sha256_hex(&secret));
    assert!(
        records(&gw, |r| s(r, "user") == "alice" && s(r, "result") == "ok" && s(r, "path").contains("..")).is_empty(),
        "an operation on a `..` path succeeded"
    );
}

// ------------------------------------------------------------------------------ 2. ciphers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_round_trips_with_each_aead_cipher() {
    let gw = TestGateway::builder().sftp().start().await;
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    let d = l.display();
    for (i, cipher) in ["aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"].into_iter().enumerate() {
        let size = 4 * MIB + 1000 * i + 1;
        let sum = write_random(&l.join(format!("{i}.bin")), size);
        let batch = format!("put {d}/{i}.bin c{i}.bin\nget c{i}.bin {d}/{i}.down\n");
        let (ok, out) = gw.sftp_batch("alice", &batch, &["-c", cipher, "-v"]).await;
        assert!(ok, "{cipher}:\n{out}");
        assert_eq!(sha_file(&l.join(format!("{i}.down"))), sum, "{cipher}");
        // What the client itself says it negotiated.
        assert!(out.contains(&format!("kex: client->server cipher: {cipher}")), "{cipher}:\n{out}");
        let client_kex = out
            .lines()
            .find_map(|line| line.split("kex: algorithm: ").nth(1))
            .unwrap_or_else(|| panic!("no kex line in:\n{out}"))
            .trim()
            .to_owned();
        for op in ["upload", "download"] {
            let (st, done) = one_transfer(&gw, "alice", op, &format!("c{i}.bin"));
            for r in [&st, &done] {
                assert_eq!(s(r, "ssh_cipher"), cipher, "{r:#}");
                assert_eq!(s(r, "ssh_kex"), client_kex, "{r:#}");
                assert_eq!(s(r, "ssh_mac"), "implicit", "AEAD ciphers use no separate MAC: {r:#}");
            }
            assert_eq!(s(&done, "sha256"), sum);
            assert_eq!(done["bytes"], size as u64);
        }
    }
}

// ------------------------------------------------------------------------------ 3. disconnect

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_upload_leaves_nothing_and_a_failed_record() {
    let gw = TestGateway::builder().sftp().start().await;
    let local = tempfile::tempdir().unwrap();
    let big = local.path().join("big.bin");
    let size = 200 * MIB;
    write_random(&big, size);
    let mut cmd = tokio::process::Command::new("sftp");
    // 16 Mbit/s: the upload takes minutes, so it is surely cut off mid-way.
    cmd.args(gw.ssh_options("alice"))
        .args(["-l", "16000", "-b", "-", "alice@127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("sftp is installed");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("put {} big.bin\n", big.display()).as_bytes()).await.unwrap();
    drop(stdin);
    let started = gw
        .wait_audit("upload started", |r| {
            s(r, "event") == "started" && s(r, "operation") == "upload" && s(r, "path") == "big.bin"
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(child.try_wait().unwrap().is_none(), "sftp finished a 200 MiB upload at 16 Mbit/s?");
    // Kill sftp and its ssh child at once: the connection drops without a close.
    let pgid = child.id().unwrap();
    let st = tokio::process::Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status().await.unwrap();
    assert!(st.success());
    let _ = child.wait().await;

    let tid = s(&started, "transfer_id").to_owned();
    let failed = gw.wait_audit("upload failed", |r| s(r, "event") == "failed" && s(r, "transfer_id") == tid).await;
    let bytes = failed["bytes"].as_u64().unwrap();
    assert!(bytes > 0 && bytes < size as u64, "bytes received: {bytes}");
    assert_eq!(s(&failed, "result"), "error");
    assert!(!s(&failed, "error").is_empty());
    assert!(records(&gw, |r| s(r, "event") == "completed" && s(r, "transfer_id") == tid).is_empty());

    // Nothing visible, over either protocol; staging emptied.
    assert_eq!(gw.call("alice", "GET", "/v1/files/big.bin", Bytes::new()).await.status, 404);
    let (ok, out) = gw.sftp_batch("alice", "ls -1\n", &[]).await;
    assert!(ok, "{out}");
    assert!(!out.contains("big.bin"), "{out}");
    assert!(!gw.object_exists("acme", "partners/alice/big.bin").await);
    assert_eq!(gw.wait_pending_uploads_gone(Duration::from_secs(10)).await, 0, "upload left behind");
}

// ------------------------------------------------------------------------------ 4. rclone

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rclone_copy_check_lsjson_and_back() {
    let gw = TestGateway::builder().sftp().start().await;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let up = w.join("up");
    std::fs::create_dir_all(up.join("sub")).unwrap();
    let files = [("one.bin", 3 * MIB + 3), ("two.bin", MIB + 5), ("sub/three.bin", 2 * MIB), ("empty.txt", 0)];
    let sums: Vec<String> = files.iter().map(|(n, size)| write_random(&up.join(n), *size)).collect();

    // Verify the host key too: known_hosts with the gateway's host keys.
    let mut known = String::new();
    for key in ["host_ed25519", "host_rsa"] {
        let host_pub = std::fs::read_to_string(gw.dir.path().join(format!("ssh/{key}.pub"))).unwrap();
        known.push_str(&format!("[127.0.0.1]:{} {}\n", gw.sftp_port(), host_pub.trim()));
    }
    let known_hosts = w.join("known_hosts");
    std::fs::write(&known_hosts, known).unwrap();
    let conf = w.join("rclone.conf");
    std::fs::write(
        &conf,
        format!(
            "[gw]\ntype = sftp\nhost = 127.0.0.1\nport = {}\nuser = alice\nkey_file = {}\nknown_hosts_file = {}\n\
             disable_hashcheck = true\nshell_type = none\n",
            gw.sftp_port(),
            gw.user_keys["alice"].display(),
            known_hosts.display()
        ),
    )
    .unwrap();
    let rclone = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new("rclone");
        cmd.arg("--config").arg(&conf).args(["--retries", "1", "--low-level-retries", "1", "--contimeout", "20s"]);
        cmd.args(args).env("RCLONE_CONFIG_PASS", "").current_dir(w);
        cmd
    };
    let up_s = up.display().to_string();

    let (ok, out, err) = run(rclone(&["copy", "-v", &up_s, "gw:rc/up"]), None).await;
    assert!(ok, "rclone copy up failed:\n{out}\n{err}");

    let (ok, out, err) = run(rclone(&["check", &up_s, "gw:rc/up"]), None).await;
    assert!(ok, "rclone check failed:\n{out}\n{err}");
    assert!(err.contains("0 differences found"), "{err}");
    assert!(err.contains(&format!("{} matching files", files.len())), "{err}");

    let (ok, out, err) = run(rclone(&["lsjson", "-R", "--files-only", "gw:rc/up"]), None).await;
    assert!(ok, "rclone lsjson failed:\n{out}\n{err}");
    let listing: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mut got: Vec<(String, u64)> =
        listing.iter().map(|e| (e["Path"].as_str().unwrap().to_owned(), e["Size"].as_u64().unwrap())).collect();
    got.sort();
    let mut want: Vec<(String, u64)> = files.iter().map(|(n, size)| ((*n).to_owned(), *size as u64)).collect();
    want.sort();
    assert_eq!(got, want);

    let down = w.join("down");
    let (ok, out, err) = run(rclone(&["copy", "-v", "gw:rc/up", &down.display().to_string()]), None).await;
    assert!(ok, "rclone copy down failed:\n{out}\n{err}");
    for ((name, _), sum) in files.iter().zip(&sums) {
        assert_eq!(&sha_file(&down.join(name)), sum, "{name}");
    }

    // A mismatch is noticed: change one stored file over HTTPS, check must fail.
    let put = gw.call("alice", "PUT", "/v1/files/rc/up/two.bin", Bytes::from(random_bytes(MIB + 6))).await;
    assert_eq!(put.status, 201);
    let (ok, _, err) = run(rclone(&["check", &up_s, "gw:rc/up"]), None).await;
    assert!(!ok, "rclone check passed on a changed file:\n{err}");
    assert!(err.contains("1 differences found"), "{err}");

    for ((name, size), sum) in files.iter().zip(&sums) {
        let (_, done) = one_transfer(&gw, "alice", "upload", &format!("rc/up/{name}"));
        assert_eq!(s(&done, "sha256"), sum.as_str());
        assert_eq!(done["bytes"], *size as u64);
        assert!(s(&done, "ssh_client").starts_with("SSH-2.0-"), "{done:#}");
    }
}

// ------------------------------------------------------------------------------ 5. paramiko

const PARAMIKO_SCRIPT: &str = r#"
import json, sys, paramiko
host, port, user, key, local, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
if mode == "ssh-rsa":
    # A legacy client: signs with ssh-rsa (SHA-1) whatever server-sig-algs says.
    # (paramiko 5 can no longer make such signatures itself; give it SHA-1 back.)
    from cryptography.hazmat.primitives import hashes
    paramiko.RSAKey.HASHES["ssh-rsa"] = hashes.SHA1
    paramiko.auth_handler.AuthHandler._finalize_pubkey_algorithm = lambda self, key_type: "ssh-rsa"
t = paramiko.Transport((host, port))
try:
    t.connect(username=user, pkey=paramiko.PKey.from_path(key))
except paramiko.AuthenticationException as e:
    print(json.dumps({"auth": "refused", "error": str(e)}))
    sys.exit(0)
sftp = paramiko.SFTPClient.from_transport(t)
out = {"auth": "ok", "cipher": t.remote_cipher, "host_key": t.get_remote_server_key().get_name() + " "
       + t.get_remote_server_key().get_base64()}
if mode == "reorder":
    import hashlib, os
    a, b = os.urandom(40000), os.urandom(40000)
    # Pipelined writes sent out of order: the second half first.
    f = sftp.open("ooo.bin", "wb", bufsize=0)
    f.set_pipelined(True)
    f.seek(40000)
    f.write(b)
    f.seek(0)
    f.write(a)
    f.close()
    out["ooo_sha"] = hashlib.sha256(a + b).hexdigest()
    # A write far beyond the reorder window is refused, and close reports it.
    f = sftp.open("far.bin", "wb", bufsize=0)
    f.set_pipelined(True)
    f.seek(64 * 1024 * 1024)
    f.write(b"x" * 1000)
    try:
        f.close()
        out["far"] = "stored"
    except IOError as e:
        out["far"] = "refused: " + str(e)
    out["listing"] = sorted(sftp.listdir("."))
elif mode != "full":
    out["listing"] = sftp.listdir(".")
else:
    sftp.mkdir("pm")
    attrs = sftp.put(local + "/a.bin", "pm/a.bin")
    out["put_size"] = attrs.st_size
    out["listing"] = sftp.listdir("pm")
    out["stat_size"] = sftp.stat("pm/a.bin").st_size
    out["stat_dir"] = bool(sftp.stat("pm").st_mode & 0o040000)
    sftp.get("pm/a.bin", local + "/a.down")
    sftp.rename("pm/a.bin", "pm/b.bin")
    out["after_rename"] = sftp.listdir("pm")
    try:
        sftp.stat("pm/a.bin")
        out["stat_missing"] = "found"
    except FileNotFoundError:
        out["stat_missing"] = "not found"
    try:
        sftp.open("../escape.bin", "wb").close()
        out["escape"] = "written"
    except PermissionError:
        out["escape"] = "refused"
    sftp.remove("pm/b.bin")
    out["after_remove"] = sftp.listdir("pm")
    sftp.rmdir("pm")
    out["home"] = sftp.listdir(".")
sftp.close()
t.close()
print(json.dumps(out))
"#;

/// Run the paramiko script as alice with `key`; returns its JSON output.
async fn paramiko(gw: &TestGateway, key: &Path, local: &Path, mode: &str) -> (bool, Value, String) {
    let script = local.join("client.py");
    std::fs::write(&script, PARAMIKO_SCRIPT).unwrap();
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(&script).arg("127.0.0.1").arg(gw.sftp_port().to_string()).arg("alice");
    cmd.arg(key).arg(local).arg(mode);
    let (ok, out, err) = run(cmd, None).await;
    let json = if ok { serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}")) } else { Value::Null };
    (ok, json, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paramiko_put_get_listdir_stat_rename_remove() {
    let gw = TestGateway::builder().sftp().start().await;
    let local = tempfile::tempdir().unwrap();
    let size = 4 * MIB + 321;
    let sum = write_random(&local.path().join("a.bin"), size);
    let (ok, out, err) = paramiko(&gw, &gw.user_keys["alice"], local.path(), "full").await;
    assert!(ok, "paramiko failed:\n{err}");
    assert_eq!(out["put_size"], size as u64, "{out:#}");
    assert_eq!(out["listing"], serde_json::json!(["a.bin"]));
    assert_eq!(out["stat_size"], size as u64);
    assert_eq!(out["stat_dir"], true);
    assert_eq!(out["after_rename"], serde_json::json!(["b.bin"]));
    assert_eq!(out["stat_missing"], "not found");
    assert_eq!(out["escape"], "refused");
    assert_eq!(out["after_remove"], serde_json::json!([]));
    assert_eq!(out["home"], serde_json::json!([]));
    assert_eq!(sha_file(&local.path().join("a.down")), sum);
    let host_pub = std::fs::read_to_string(gw.dir.path().join("ssh/host_ed25519.pub")).unwrap();
    let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();
    assert_eq!(out["host_key"], host_pub.join(" "), "paramiko saw another host key");

    let fp = fingerprint(&pub_of(&gw.user_keys["alice"])).await;
    for op in ["upload", "download"] {
        let (st, done) = one_transfer(&gw, "alice", op, "pm/a.bin");
        assert!(s(&st, "ssh_client").starts_with("SSH-2.0-paramiko"), "{st:#}");
        assert_eq!(s(&done, "credential_id"), fp);
        assert_eq!(s(&done, "sha256"), sum);
        if op == "download" {
            // paramiko's prefetching get() can decide too early that it is done (a race in
            // its request thread, its PR #2519) and read the rest again with plain READs:
            // the record counts what was sent, at least the whole file.
            assert!(done["bytes"].as_u64().unwrap() >= size as u64, "{done:#}");
        } else {
            assert_eq!(done["bytes"], size as u64);
        }
        assert_eq!(s(&done, "ssh_cipher"), out["cipher"].as_str().unwrap());
    }
    for (op, path) in [("rename", "pm/a.bin -> pm/b.bin"), ("delete", "pm/b.bin"), ("mkdir", "pm"), ("rmdir", "pm")] {
        let found = records(&gw, |r| s(r, "operation") == op && s(r, "path").trim_end_matches('/') == path);
        assert!(found.iter().any(|r| s(r, "result") == "ok"), "no {op} record for {path}");
    }
    gw.wait_audit("paramiko escape denied", |r| {
        s(r, "event") == "denied" && s(r, "user") == "alice" && s(r, "path") == "../escape.bin"
    })
    .await;
}

// ------------------------------------------------------------------------------ 6. lftp

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lftp_round_trip() {
    let gw = TestGateway::builder().sftp().start().await;
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    let size = 3 * MIB + 77;
    let sum = write_random(&l.join("a.bin"), size);
    let key = gw.user_keys["alice"].display().to_string();
    let connect = format!(
        "ssh -a -x -i {key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
         -o IdentitiesOnly=yes -o LogLevel=ERROR"
    );
    let script = format!(
        "set cmd:fail-exit yes; set net:max-retries 1; set net:timeout 30; set sftp:connect-program '{connect}'; \
         mkdir lf; put -O lf {d}/a.bin; cls -1 lf; get lf/a.bin -o {d}/a.down; mv lf/a.bin lf/b.bin; cls -1 lf; \
         rm lf/b.bin; rmdir lf; bye",
        d = l.display()
    );
    let mut cmd = tokio::process::Command::new("lftp");
    cmd.args(["-u", "alice,", "-e", &script]).arg(format!("sftp://127.0.0.1:{}", gw.sftp_port()));
    cmd.env("HOME", l); // no ~/.lftprc or ~/.ssh of the machine's
    let (ok, out, err) = run(cmd, None).await;
    assert!(ok, "lftp failed:\n{out}\n{err}");
    assert_eq!(sha_file(&l.join("a.down")), sum);
    let names = listed(&out);
    assert!(names.len() == 2 && names[0].ends_with("a.bin") && names[1].ends_with("b.bin"), "{out}");
    let fp = fingerprint(&pub_of(&gw.user_keys["alice"])).await;
    for op in ["upload", "download"] {
        let (_, done) = one_transfer(&gw, "alice", op, "lf/a.bin");
        assert_openssh_client(&done, &fp);
        assert_eq!(s(&done, "sha256"), sum);
        assert_eq!(done["bytes"], size as u64);
    }
    assert_eq!(gw.call("alice", "GET", "/v1/files/lf/b.bin", Bytes::new()).await.status, 404);
}

// ------------------------------------------------------------------------------ 7. refusals

/// `sftp` with `extra` options must fail, saying `why`.
async fn refused(gw: &TestGateway, what: &str, key: &Path, extra: &[&str], why: &str) -> String {
    let (ok, out) = sftp_as(gw, "alice", key, "ls\n", extra).await;
    assert!(!ok, "{what}: connection succeeded:\n{out}");
    assert!(out.contains(why), "{what}: expected `{why}` in:\n{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_algorithms_and_wrong_keys_are_refused() {
    let gw = TestGateway::builder().sftp().extra_user_key("alice", "rsa").start().await;
    let key = gw.user_keys["alice"].clone();
    // The baseline works, so each refusal below is the option's doing.
    let (ok, out) = sftp_as(&gw, "alice", &key, "ls\n", &[]).await;
    assert!(ok, "{out}");
    refused(&gw, "ssh-rsa host key", &key, &["-o", "HostKeyAlgorithms=ssh-rsa"], "no matching host key type").await;
    refused(&gw, "CBC", &key, &["-c", "aes256-cbc"], "no matching cipher").await;
    refused(&gw, "CTR (not in the default list)", &key, &["-c", "aes256-ctr"], "no matching cipher").await;
    refused(&gw, "SHA-1 MAC", &key, &["-o", "MACs=hmac-sha1", "-c", "aes256-ctr"], "no matching").await;
    refused(
        &gw,
        "SHA-1 kex",
        &key,
        &["-o", "KexAlgorithms=diffie-hellman-group14-sha1"],
        "no matching key exchange method",
    )
    .await;
    assert!(
        records(&gw, |r| s(r, "event") == "auth_success").len() == 1,
        "a refused negotiation must not reach authentication"
    );

    // A key nobody authorised: refused and audited with its fingerprint and address.
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = fresh_dir.path().join("id_fresh");
    ssh_keygen(&fresh, "ed25519");
    let fresh_fp = fingerprint(&pub_of(&fresh)).await;
    refused(&gw, "unknown key", &fresh, &[], "Permission denied").await;
    let failure = gw
        .wait_audit("auth_failure for the fresh key", |r| {
            s(r, "event") == "auth_failure" && s(r, "credential_id") == fresh_fp
        })
        .await;
    assert!(s(&failure, "remote_addr").starts_with("127.0.0.1:"), "{failure:#}");
    assert_eq!(s(&failure, "auth_method"), "publickey");
    assert_eq!(s(&failure, "protocol"), "sftp");
    assert!(s(&failure, "ssh_client").starts_with("SSH-2.0-OpenSSH"), "{failure:#}");
    assert!(records(&gw, |r| s(r, "event") == "auth_success" && s(r, "credential_id") == fresh_fp).is_empty());

    // An RSA user key: fine with rsa-sha2-*, refused when the client may only sign with ssh-rsa.
    let rsa = gw.user_keys["alice_rsa"].clone();
    let rsa_fp = fingerprint(&pub_of(&rsa)).await;
    let (ok, out) = sftp_as(&gw, "alice", &rsa, "ls\n", &[]).await;
    assert!(ok, "RSA key with rsa-sha2 signatures:\n{out}");
    gw.wait_audit("RSA login", |r| s(r, "event") == "auth_success" && s(r, "credential_id") == rsa_fp).await;
    let successes = records(&gw, |r| s(r, "event") == "auth_success").len();
    // OpenSSH never signs with ssh-rsa here: the server's server-sig-algs omits it, so the
    // client finds "no mutual signature algorithm" and gives up.
    refused(&gw, "ssh-rsa signature", &rsa, &["-o", "PubkeyAcceptedAlgorithms=ssh-rsa"], "Permission denied").await;
    assert_eq!(records(&gw, |r| s(r, "event") == "auth_success").len(), successes);
    // A legacy client that signs with ssh-rsa regardless (paramiko, patched) is refused by
    // the server, and the refusal is audited with the key and the reason; the same client
    // and key with rsa-sha2 signatures get in.
    let local = tempfile::tempdir().unwrap();
    let (ok, out, err) = paramiko(&gw, &rsa, local.path(), "ssh-rsa").await;
    assert!(ok, "{err}");
    assert_eq!(out["auth"], "refused", "ssh-rsa signature accepted: {out:#}\n{err}");
    let failure = gw
        .wait_audit("ssh-rsa refusal", |r| {
            s(r, "event") == "auth_failure"
                && s(r, "credential_id") == rsa_fp
                && s(r, "ssh_client").starts_with("SSH-2.0-paramiko")
        })
        .await;
    assert!(s(&failure, "error").contains("ssh-rsa"), "{failure:#}");
    assert_eq!(records(&gw, |r| s(r, "event") == "auth_success").len(), successes);
    let (ok, out, err) = paramiko(&gw, &rsa, local.path(), "connect-only").await;
    assert!(ok && out["auth"] == "ok", "paramiko with rsa-sha2: {out:#}\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha1_mac_refused_even_where_ctr_ciphers_are_enabled() {
    // With CTR enabled the negotiation gets as far as the MAC, which must then fail.
    let gw =
        TestGateway::builder().sftp_settings("ciphers = [\"aes256-gcm@openssh.com\", \"aes256-ctr\"]\n").start().await;
    let key = gw.user_keys["alice"].clone();
    refused(&gw, "SHA-1 MAC", &key, &["-o", "MACs=hmac-sha1", "-c", "aes256-ctr"], "no matching MAC").await;
    refused(&gw, "SHA-1 MAC (96)", &key, &["-o", "MACs=hmac-sha1-96,hmac-md5", "-c", "aes256-ctr"], "no matching MAC")
        .await;
    // The control: the same cipher with a SHA-2 ETM MAC works, and is audited with its MAC.
    let local = tempfile::tempdir().unwrap();
    let sum = write_random(&local.path().join("m.bin"), 2 * MIB + 9);
    let batch = format!("put {0}/m.bin m.bin\nget m.bin {0}/m.down\n", local.path().display());
    let (ok, out) =
        sftp_as(&gw, "alice", &key, &batch, &["-c", "aes256-ctr", "-o", "MACs=hmac-sha2-256-etm@openssh.com"]).await;
    assert!(ok, "{out}");
    assert_eq!(sha_file(&local.path().join("m.down")), sum);
    let (_, done) = one_transfer(&gw, "alice", "upload", "m.bin");
    assert_eq!(s(&done, "ssh_cipher"), "aes256-ctr");
    assert_eq!(s(&done, "ssh_mac"), "hmac-sha2-256-etm@openssh.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_quantum_only_kex_refuses_openssh_9_2_but_serves_mlkem_clients() {
    let gw = TestGateway::builder().sftp_settings("kex = [\"mlkem768x25519-sha256\"]\n").start().await;
    let key = gw.user_keys["alice"].clone();
    let version = tokio::process::Command::new("ssh").arg("-V").output().await.unwrap();
    let version = String::from_utf8_lossy(&version.stderr).into_owned();
    let (ok, out) = sftp_as(&gw, "alice", &key, "ls\n", &[]).await;
    let mlkem_client = {
        let q = tokio::process::Command::new("ssh").args(["-Q", "kex"]).output().await.unwrap();
        String::from_utf8_lossy(&q.stdout).lines().any(|l| l == "mlkem768x25519-sha256")
    };
    if mlkem_client {
        // A newer OpenSSH (9.9+) on the machine: it negotiates ML-KEM.
        assert!(ok, "{version}: {out}");
    } else {
        assert!(!ok, "{version} connected without ML-KEM:\n{out}");
        assert!(out.contains("no matching key exchange method"), "{out}");
        assert!(records(&gw, |r| s(r, "event") == "auth_success").is_empty());
    }
    // paramiko (4.0+) speaks mlkem768x25519-sha256: the PQ-only gateway serves it.
    let local = tempfile::tempdir().unwrap();
    let (ok, out, err) = paramiko(&gw, &gw.user_keys["alice"], local.path(), "connect-only").await;
    assert!(ok, "paramiko with ML-KEM:\n{err}");
    assert_eq!(out["listing"], serde_json::json!([]));
    let login = gw
        .wait_audit("paramiko login", |r| {
            s(r, "event") == "auth_success" && s(r, "ssh_client").starts_with("SSH-2.0-paramiko")
        })
        .await;
    assert_eq!(s(&login, "ssh_kex"), "mlkem768x25519-sha256", "{login:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_writes_are_reordered_and_far_ones_refused() {
    let gw = TestGateway::builder().sftp().start().await;
    let local = tempfile::tempdir().unwrap();
    let (ok, out, err) = paramiko(&gw, &gw.user_keys["alice"], local.path(), "reorder").await;
    assert!(ok, "paramiko failed:\n{err}");
    // The reordered file reads back whole and in order.
    let r = gw.call("alice", "GET", "/v1/files/ooo.bin", bytes::Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(gateway_e2e::sha256_hex(&r.body), out["ooo_sha"].as_str().unwrap(), "{out:#}");
    // paramiko swallows errors on close (SFTPFile._close ignores IOError), so the refusal is
    // checked where it is recorded: nothing visible, and a failed record saying why.
    assert_eq!(out["listing"], serde_json::json!(["ooo.bin"]), "nothing visible for the refused upload: {out:#}");
    let failed = gw.wait_audit("far upload failed", |r| s(r, "event") == "failed" && s(r, "path") == "far.bin").await;
    assert!(s(&failed, "error").contains("reorder window"), "{failed:#}");
}

/// Malformed SFTP traffic, sent raw over an authenticated channel: every packet gets a
/// status or the session ends; the server survives and keeps serving.
const GARBAGE_SCRIPT: &str = r#"
import json, os, random, struct, sys, paramiko
host, port, user, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
random.seed(7)
t = paramiko.Transport((host, port))
t.connect(username=user, pkey=paramiko.PKey.from_path(key))
replies = 0
def session():
    ch = t.open_session()
    ch.settimeout(5)
    ch.invoke_subsystem("sftp")
    ch.sendall(struct.pack(">IBI", 5, 1, 3))  # INIT v3
    ch.recv(65536)
    return ch
ch = session()
for i in range(300):
    kind = random.choice([3, 4, 5, 6, 7, 8, 11, 12, 16, 17, 18, 20, 200, 0, 255])
    body = bytes([kind]) + os.urandom(random.choice([0, 1, 3, 4, 9, 40, 300]))
    if random.random() < 0.3:
        # a string length that lies about what follows
        body = bytes([kind]) + struct.pack(">II", i, 0xFFFFFFF0) + b"abc"
    try:
        ch.sendall(struct.pack(">I", len(body)) + body)
        data = ch.recv(65536)
        if data:
            replies += 1
        else:
            ch = session()
    except Exception:
        ch = session()
# Lies about the packet length itself end the session, not the server.
try:
    ch.sendall(struct.pack(">I", 0x7FFFFFFF) + b"x" * 10)
    ch.recv(10)
except Exception:
    pass
sftp = paramiko.SFTPClient.from_transport(t)
print(json.dumps({"replies": replies, "listing": sftp.listdir(".")}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sftp_packets_get_answers_and_break_nothing() {
    let gw = TestGateway::builder().sftp().start().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("garbage.py");
    std::fs::write(&script, GARBAGE_SCRIPT).unwrap();
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(&script).arg("127.0.0.1").arg(gw.sftp_port().to_string()).arg("alice").arg(&gw.user_keys["alice"]);
    let (ok, out, err) = run(cmd, None).await;
    assert!(ok, "garbage client failed:\n{err}\n{out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(v["replies"].as_u64().unwrap() >= 200, "{v}");
    assert_eq!(v["listing"], serde_json::json!([]));
    // The gateway still serves other clients afterwards.
    let (ok, text) = gw.sftp_batch("bob", "ls\n", &[]).await;
    assert!(ok, "{text}");
}
