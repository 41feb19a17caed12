//! The trail fails for real (a full file system) or the gateway is killed mid-upload: no
//! change without its audit record, and the next start closes what was left open.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use gateway_e2e::served::{GatewayFiles, ServedGateway, Tmpfs};
use gateway_e2e::{write_random, TestGateway};
use serde_json::Value;

/// Status code and body of a curl request as alice.
fn call(files: &GatewayFiles, gw: &ServedGateway, args: &[&str], path: &str) -> (String, String) {
    let auth = format!("Authorization: Bearer {}", files.tokens["alice"]);
    let out = gw
        .curl()
        .args(["-w", "\n%{http_code}", "-H", &auth])
        .args(args)
        .arg(gw.url(&format!("/v1/files/{path}")))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    // curl's own error (a reset connection: code 000) goes with the body into messages.
    (code.to_owned(), format!("{body}{}", String::from_utf8_lossy(&out.stderr)))
}

/// paramiko: log in and make `dir`, say `ready`, wait for a line on stdin, then try each
/// change and print how it went (one JSON line each).
const SFTP_CHANGES: &str = r#"
import sys, json, paramiko
port, key, local = int(sys.argv[1]), sys.argv[2], sys.argv[3]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(key))
sftp = paramiko.SFTPClient.from_transport(t)
sftp.mkdir("dir")
print("ready", flush=True)
sys.stdin.readline()
def attempt(name, f):
    try:
        f()
        print(json.dumps({"op": name, "ok": True}), flush=True)
    except Exception as e:
        print(json.dumps({"op": name, "ok": False, "error": str(e)}), flush=True)
attempt("put", lambda: sftp.put(local, "sftp-new.bin"))
attempt("remove", lambda: sftp.remove("keep2.bin"))
attempt("rename", lambda: sftp.rename("keep2.bin", "renamed.bin"))
attempt("mkdir", lambda: sftp.mkdir("newdir"))
attempt("rmdir", lambda: sftp.rmdir("dir"))
"#;

#[test]
fn a_full_trail_file_system_refuses_every_change_and_the_trail_verifies_after_recovery() {
    let mut files = TestGateway::builder().sftp().local_only().files();
    let fs = Tmpfs::mount(&files.dir.path().join("trailfs"), "512k");
    files.audit_settings(&format!("path = {:?}\nappend_timeout = \"5s\"", fs.dir.join("audit.jsonl")));
    let mut gw = files.serve();
    let src = files.dir.path().join("src.bin");
    write_random(&src, 100_000);
    let src_s = src.to_str().unwrap();
    for name in ["keep.bin", "keep2.bin"] {
        assert_eq!(call(&files, &gw, &["-T", src_s], name).0, "201");
    }
    let script = files.dir.path().join("changes.py");
    std::fs::write(&script, SFTP_CHANGES).unwrap();
    let mut py = Command::new("python3")
        .arg(&script)
        .args([&gw.sftp_addr.port().to_string(), files.user_keys["alice"].to_str().unwrap(), src_s])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut py_out = std::io::BufReader::new(py.stdout.take().unwrap()).lines();
    assert_eq!(py_out.next().unwrap().unwrap(), "ready");

    // Fill the file system. The trail's last page may still take a record or two: list
    // until the first write fails (the trail then stays closed until a restart).
    let filler = fs.fill("filler");
    let broke = (0..50).find(|_| call(&files, &gw, &[], "").0 == "503");
    assert!(broke.is_some(), "the trail never failed on a full file system");

    // HTTPS: 503, nothing stored, nothing deleted.
    let (code, body) = call(&files, &gw, &["-T", src_s], "new.bin");
    assert_eq!(code, "503", "{body}");
    assert!(body.contains("audit_unavailable"), "{body}");
    assert_eq!(call(&files, &gw, &["-X", "DELETE"], "keep.bin").0, "503");
    // SFTP: a failure status for each change, none made.
    py.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let results: Vec<Value> = py_out.map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    assert!(py.wait().unwrap().success());
    assert_eq!(results.len(), 5, "{results:#?}");
    for r in &results {
        assert_eq!(r["ok"], false, "{r}");
        assert!(r["error"].as_str().unwrap().contains("audit trail unavailable"), "SSH_FX_FAILURE: {r}");
    }
    let alice = |name: &str| files.stored("acme", &format!("partners/alice/{name}"));
    for present in ["keep.bin", "keep2.bin", "dir"] {
        assert!(alice(present).exists(), "{present} must still exist");
    }
    for absent in ["new.bin", "sftp-new.bin", "renamed.bin", "newdir"] {
        assert!(!alice(absent).exists(), "{absent} must not exist");
    }
    assert!(gw.log_text().contains("audit trail write failed"), "{}", gw.log_text());

    // Recovery: space again, a restart, and the trail continues and verifies.
    std::fs::remove_file(filler).unwrap();
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(60)).success());
    let mut gw = files.serve();
    let (code, body) = call(&files, &gw, &["-o", "/dev/null"], "keep.bin");
    assert_eq!(code, "200", "{body}");
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(60)).success());
    let (ok, text) = files.verify();
    assert!(ok, "{text}");
    assert!(!text.contains("WARNING"), "every intent and start has its outcome: {text}");
    drop(fs);
}

#[test]
fn an_upload_cut_by_kill_9_is_recorded_as_interrupted_at_the_next_start() {
    let files = TestGateway::builder().sftp().local_only().files();
    let mut gw = files.serve();
    let src = files.dir.path().join("src.bin");
    write_random(&src, 8 << 20);
    let auth = format!("Authorization: Bearer {}", files.tokens["alice"]);
    let mut curl = gw
        .curl()
        .args(["--limit-rate", "100k", "-o", "/dev/null", "-H", &auth, "-T"])
        .arg(&src)
        .arg(gw.url("/v1/files/slow.bin"))
        .spawn()
        .unwrap();
    let trail = files
        .wait_audit("the upload started", |r| r.iter().any(|x| x["event"] == "started" && x["path"] == "slow.bin"));
    let started = trail.iter().find(|x| x["event"] == "started").unwrap().clone();
    let id = started["transfer_id"].as_str().unwrap().to_owned();
    // Mid-upload: its bytes are arriving in staging.
    let staging = files.store_root.join("staging");
    files.wait_audit("bytes in staging", |_| {
        std::fs::read_dir(&staging)
            .map(|d| d.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0)))
            .unwrap_or(false)
    });
    gw.signal("KILL");
    gw.wait(Duration::from_secs(10));
    let _ = curl.kill();
    let _ = curl.wait();

    let (ok, text) = files.verify();
    assert!(ok, "{text}");
    assert!(text.contains("WARNING") && text.contains(&id), "verify names the open upload: {text}");

    let mut gw = files.serve();
    let trail = files.audit();
    let ends: Vec<&Value> =
        trail.iter().filter(|r| r["transfer_id"] == id.as_str() && r["event"] != "started").collect();
    assert_eq!(ends.len(), 1, "{trail:#?}");
    let end = ends[0];
    assert_eq!(end["event"], "interrupted");
    for field in ["user", "tenant", "path", "object_key", "operation", "protocol", "remote_addr"] {
        assert_eq!(end[field], started[field], "{field}");
    }
    assert!(gw.log_text().contains("recording them as interrupted"), "{}", gw.log_text());
    assert!(!files.stored("acme", "partners/alice/slow.bin").exists());
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(60)).success());
    let (ok, text) = files.verify();
    assert!(ok && !text.contains("WARNING"), "{text}");
    // Once recorded, a further start has nothing to add.
    let before = files.audit().len();
    let mut gw = files.serve();
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(60)).success());
    assert_eq!(files.audit().len(), before, "a clean trail is not scanned or extended");
}
