//! Storage key rotation on a running gateway: `gateway keys rotate` adds a key that new
//! uploads are sealed with (taken without a restart), objects written before stay readable,
//! and `gateway keys reencrypt` moves every object to the newest key (idempotent), with the
//! key ids visible in the files' headers and the reloads in the audit trail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gateway_e2e::served::{GatewayFiles, ServedGateway};
use gateway_e2e::{gateway_bin, TestGateway};

/// The key id in a sealed file's header (`GWSEAL03`), or `None` for the older format.
fn key_id_on_disk(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).unwrap();
    match &bytes[..8] {
        b"GWSEAL03" => Some(hex(&bytes[12..20])),
        b"GWSEAL01" => None,
        other => panic!("{}: not a sealed object: {other:?}", path.display()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn upload(gw: &ServedGateway, token: &str, name: &str, src: &Path) {
    let out = gw
        .curl()
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("Authorization: Bearer {token}")])
        .arg("-T")
        .arg(src)
        .arg(gw.url(&format!("/v1/files/{name}")))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201", "{}", String::from_utf8_lossy(&out.stderr));
}

fn download(gw: &ServedGateway, token: &str, name: &str) -> Vec<u8> {
    let out = gw
        .curl()
        .args(["-sS", "--fail", "-H", &format!("Authorization: Bearer {token}")])
        .arg(gw.url(&format!("/v1/files/{name}")))
        .output()
        .unwrap();
    assert!(out.status.success(), "download {name}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn keys(files: &GatewayFiles, command: &str) -> (bool, String, String) {
    let out = Command::new(gateway_bin())
        .args(["keys", command, "--tenant", "acme", "--config"])
        .arg(&files.config_path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The key id `gateway keys rotate` reported.
fn rotated_id(stdout: &str) -> String {
    let at = stdout.find("(key id ").unwrap() + "(key id ".len();
    stdout[at..at + 16].to_owned()
}

#[test]
fn rotate_without_restart_then_reencrypt_everything() {
    let files = TestGateway::builder().sftp().local_only().files();
    // Alerts to a receiver that is not there: they wait in the outbox, where the test reads them.
    let alert_key = files.dir.path().join("alert.key");
    std::fs::write(&alert_key, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n").unwrap();
    std::fs::set_permissions(&alert_key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut text = std::fs::read_to_string(&files.config_path).unwrap();
    text.push_str(&format!("\n[alerts]\nwebhook_url = \"https://{dead}/hook\"\nhmac_key_file = {alert_key:?}\n"));
    std::fs::write(&files.config_path, text).unwrap();
    let mut gw = files.serve();
    let token = files.tokens["alice"].clone();
    let first: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let src1 = files.dir.path().join("first.bin");
    std::fs::write(&src1, &first).unwrap();
    upload(&gw, &token, "first.bin", &src1);
    let empty = files.dir.path().join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    upload(&gw, &token, "dir/empty.bin", &empty);
    let stored = |name: &str| files.stored("acme", &format!("partners/alice/{name}"));
    let base_id = key_id_on_disk(&stored("first.bin")).expect("new objects carry a key id");

    // Rotate while serving: the gateway takes the new key within a couple of seconds.
    let (ok, out, err) = keys(&files, "rotate");
    assert!(ok, "{out}{err}");
    let new_id = rotated_id(&out);
    assert_ne!(new_id, base_id);
    let key_file = files.dir.path().join("data/keys/acme.key.1");
    assert!(key_file.exists(), "{out}");
    files.wait_audit("the key reload", |r| {
        r.iter().any(|x| x["operation"] == "storage_key_reload" && x["result"] == "ok" && x["tenant"] == "acme")
    });
    let reload = files.audit().into_iter().find(|x| x["operation"] == "storage_key_reload").unwrap();
    assert_eq!(reload["key_ids"], serde_json::json!([base_id, new_id]), "{reload}");
    let key_hex = std::fs::read_to_string(&key_file).unwrap();
    assert!(!std::fs::read_to_string(&files.audit_path).unwrap().contains(key_hex.trim()), "no key in the trail");
    assert!(!gw.log_text().contains(key_hex.trim()), "no key in the log");

    let second: Vec<u8> = (0..70_000u32).map(|i| (i % 13) as u8).collect();
    let src2 = files.dir.path().join("second.bin");
    std::fs::write(&src2, &second).unwrap();
    upload(&gw, &token, "second.bin", &src2);
    assert_eq!(key_id_on_disk(&stored("second.bin")).as_deref(), Some(new_id.as_str()));
    assert_eq!(key_id_on_disk(&stored("first.bin")).as_deref(), Some(base_id.as_str()));
    assert_eq!(download(&gw, &token, "first.bin"), first);
    assert_eq!(download(&gw, &token, "second.bin"), second);

    // Re-encrypt while the gateway serves: everything moves to the new key, reads go on.
    let before_mtime = std::fs::metadata(stored("first.bin")).unwrap().modified().unwrap();
    let (ok, out, err) = keys(&files, "reencrypt");
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("3 objects") && out.contains("2 re-encrypted") && out.contains("1 already under key"),
        "{out}"
    );
    assert!(err.contains("3/3 objects"), "progress is shown: {err}");
    for name in ["first.bin", "second.bin", "dir/empty.bin"] {
        assert_eq!(key_id_on_disk(&stored(name)).as_deref(), Some(new_id.as_str()), "{name}");
    }
    assert_eq!(std::fs::metadata(stored("first.bin")).unwrap().modified().unwrap(), before_mtime);
    assert_eq!(download(&gw, &token, "first.bin"), first);
    assert_eq!(download(&gw, &token, "second.bin"), second);
    assert_eq!(download(&gw, &token, "dir/empty.bin"), b"");
    // Idempotent.
    let (ok, out, _) = keys(&files, "reencrypt");
    assert!(ok && out.contains("0 re-encrypted") && out.contains("3 already under key"), "{out}");

    // A key file loosened after the fact is refused by the running gateway (once, audited);
    // the keys in force stay and serve.
    let (ok, out, err) = keys(&files, "rotate");
    assert!(ok, "{out}{err}");
    let third = files.dir.path().join("data/keys/acme.key.2");
    files.wait_audit("the second reload", |r| {
        r.iter().filter(|x| x["operation"] == "storage_key_reload" && x["result"] == "ok").count() == 2
    });
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&third, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = files.wait_audit("the refusal", |r| {
        r.iter().any(|x| x["operation"] == "storage_key_reload" && x["result"] == "error")
    });
    let refusal = refused.iter().find(|x| x["result"] == "error" && x["operation"] == "storage_key_reload").unwrap();
    assert!(refusal["error"].as_str().unwrap().contains("acme.key.2"), "{refusal}");
    upload(&gw, &token, "third.bin", &src2);
    assert_eq!(download(&gw, &token, "third.bin"), second);
    std::thread::sleep(Duration::from_secs(3));
    let refusals =
        files.audit().iter().filter(|x| x["operation"] == "storage_key_reload" && x["result"] == "error").count();
    assert_eq!(refusals, 1, "a broken file is reported once, not every look");
    // And raised once as an alert naming the tenant and the file, without the key.
    let outbox = files.dir.path().join("data/alerts/outbox");
    let alerts: Vec<serde_json::Value> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .filter(|v: &serde_json::Value| v["kind"] == "storage_key_refused")
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(alerts[0]["nature"].as_str().unwrap().contains("tenant acme"), "{}", alerts[0]);
    assert!(alerts[0]["scope"]["files"][0].as_str().unwrap().ends_with("acme.key"), "{}", alerts[0]);
    let third_hex = std::fs::read_to_string(&third).unwrap();
    assert!(!alerts[0].to_string().contains(third_hex.trim()), "no key in an alert");
    // `reencrypt` refuses the broken ring too, naming the file, and changes nothing.
    let (ok, _, err) = keys(&files, "reencrypt");
    assert!(!ok && err.contains("acme.key.2") && err.contains("0644"), "{err}");

    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        assert!(gw.child.try_wait().unwrap().is_none());
        std::thread::sleep(Duration::from_millis(100));
    }
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(60)).success());
    let (ok, text) = files.verify();
    assert!(ok, "{text}");
}

/// Run OpenSSH `sftp` as alice with these batch commands; they must all succeed.
fn sftp_batch(files: &GatewayFiles, gw: &ServedGateway, commands: &str) {
    let batch = files.dir.path().join("batch.txt");
    std::fs::write(&batch, commands).unwrap();
    let out = Command::new("sftp")
        .args(files.ssh_options(gw, "alice"))
        .arg("-b")
        .arg(&batch)
        .arg("alice@127.0.0.1")
        .output()
        .unwrap();
    assert!(out.status.success(), "sftp {commands}: {}", String::from_utf8_lossy(&out.stderr));
}

fn rotate_sse_c(files: &GatewayFiles) -> String {
    let out = Command::new(gateway_bin())
        .args(["keys", "rotate", "--sse-c", "--tenant", "acme", "--config"])
        .arg(&files.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    rotated_id(&text)
}

/// The `repr-digest` a HEAD reports (the whole-object SHA-256 the gateway knows).
fn repr_digest(gw: &ServedGateway, token: &str, name: &str) -> Option<String> {
    let out = gw
        .curl()
        .args(["-sS", "-I", "-H", &format!("Authorization: Bearer {token}")])
        .arg(gw.url(&format!("/v1/files/{name}")))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("repr-digest:").map(|v| v.trim().to_owned()))
}

#[test]
fn sse_c_key_rotation_and_rekey_by_copy_on_garage() {
    let files = TestGateway::builder().s3().s3_settings("part_size = \"5MiB\"").sftp().files();
    let mut gw = files.serve();
    let token = files.tokens["alice"].clone();
    let small: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    // Over one part: a multipart object whose SHA-256 lives in a digest object.
    let big: Vec<u8> = (0..(6 * 1024 * 1024 + 17) as u32).map(|i| (i % 239) as u8).collect();
    let (src_small, src_big) = (files.dir.path().join("small.bin"), files.dir.path().join("big.bin"));
    std::fs::write(&src_small, &small).unwrap();
    std::fs::write(&src_big, &big).unwrap();
    upload(&gw, &token, "old.bin", &src_small);
    upload(&gw, &token, "big.bin", &src_big);
    let big_digest = repr_digest(&gw, &token, "big.bin").expect("the digest object gives big.bin a digest");
    // A directory (a marker object, encrypted too) with a file in it, made over SFTP.
    sftp_batch(&files, &gw, &format!("mkdir sub\nput {} sub/in-dir.bin\n", src_small.display()));

    // A new SSE-C key; the running gateway writes with it and still reads the old.
    let new_id = rotate_sse_c(&files);
    let rotated = files.dir.path().join("data/keys/acme.sse-c.1");
    assert!(rotated.exists());
    // check-config looks at rotated SSE-C keys too: a loosened one is named.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rotated, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(gateway_bin()).args(["check-config", "--config"]).arg(&files.config_path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("acme.sse-c.1") && err.contains("0644"), "{err}");
    std::fs::set_permissions(&rotated, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The running gateway takes it within a couple of seconds, no restart (the loosened file
    // may have been seen and refused first).
    let records = files.wait_audit("the SSE-C key reload", |r| {
        r.iter().any(|x| x["operation"] == "sse_c_key_reload" && x["result"] == "ok")
    });
    let reload = records.iter().find(|x| x["operation"] == "sse_c_key_reload" && x["result"] == "ok").unwrap();
    assert_eq!(reload["tenant"], "acme");
    assert_eq!(reload["key_ids"].as_array().unwrap().last().unwrap(), &serde_json::json!(new_id), "{reload}");
    upload(&gw, &token, "new.bin", &src_small);
    assert_eq!(download(&gw, &token, "old.bin"), small);
    assert_eq!(download(&gw, &token, "big.bin"), big);
    assert_eq!(download(&gw, &token, "new.bin"), small);
    assert_eq!(repr_digest(&gw, &token, "big.bin").as_deref(), Some(big_digest.as_str()));

    // Re-key by copy while serving: the older objects move; new.bin, written by the running
    // gateway after the rotation, is already under the new key.
    let (ok, out, err) = keys(&files, "reencrypt");
    assert!(ok, "{out}{err}");
    // old.bin, big.bin, the sub/ marker and sub/in-dir.bin move; new.bin is current.
    assert!(out.contains("5 objects") && out.contains("4 re-keyed") && out.contains("1 already"), "{out}");
    assert!(out.contains("0 skipped") && out.contains("0 failed"), "{out}");
    assert!(err.contains("5/5 objects"), "progress is shown: {err}");
    let (ok, out, err) = keys(&files, "reencrypt");
    assert!(ok && out.contains("0 re-keyed") && out.contains("5 already"), "idempotent: {out}{err}");
    assert_eq!(download(&gw, &token, "big.bin"), big);

    // Proof that nothing needs the first key any more: replace it with a key that opens
    // nothing and restart; every object, and big.bin's digest, is still served.
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(60)).success());
    let first = files.dir.path().join("data/keys/acme.sse-c");
    std::fs::remove_file(&first).unwrap();
    gateway_e2e::s3::write_private(&first, &[7u8; 32]).unwrap();
    let mut gw = files.serve();
    assert_eq!(download(&gw, &token, "old.bin"), small);
    assert_eq!(download(&gw, &token, "big.bin"), big);
    assert_eq!(download(&gw, &token, "new.bin"), small);
    assert_eq!(repr_digest(&gw, &token, "big.bin").as_deref(), Some(big_digest.as_str()));
    // A directory rename copies the marker and the file: both open with the new key.
    sftp_batch(&files, &gw, "rename sub moved\n");
    assert_eq!(download(&gw, &token, "moved/in-dir.bin"), small);
    assert!(!new_id.is_empty());
    let key_b64 = std::fs::read_to_string(files.dir.path().join("data/keys/acme.sse-c.1")).unwrap();
    assert!(!gw.log_text().contains(key_b64.trim()), "no SSE-C key in the log");
    assert!(!std::fs::read_to_string(&files.audit_path).unwrap().contains(key_b64.trim()), "no key in the trail");
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(60)).success());
}
