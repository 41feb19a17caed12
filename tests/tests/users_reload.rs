//! Users, tokens and permissions change without a restart: a new user and a widened
//! permission take effect on SIGHUP while an SFTP session stays open; a broken
//! configuration is refused whole, every problem listed, and the running users stay.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gateway_e2e::served::{GatewayFiles, ServedGateway};
use gateway_e2e::{gateway_bin, TestGateway};

/// Status code of a curl request with `token`.
fn status(gw: &ServedGateway, token: &str, args: &[&str], path: &str) -> String {
    let out = gw
        .curl()
        .args(["-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("Authorization: Bearer {token}")])
        .args(args)
        .arg(gw.url(&format!("/v1/files/{path}")))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_status(gw: &ServedGateway, token: &str, args: &[&str], path: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = status(gw, token, args, path);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "still {got}, want {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Replace the file the way configuration management does: a new file renamed over it.
fn write_atomic(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn reloads(files: &GatewayFiles) -> Vec<serde_json::Value> {
    files.audit().into_iter().filter(|r| r["operation"] == "users_reload").collect()
}

/// paramiko: log in as alice, say `ready`, wait for a line, then upload and say `uploaded`.
const OPEN_SESSION: &str = r#"
import sys, io, paramiko
port, key = int(sys.argv[1]), sys.argv[2]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(key))
sftp = paramiko.SFTPClient.from_transport(t)
sftp.listdir(".")
print("ready", flush=True)
sys.stdin.readline()
sftp.putfo(io.BytesIO(b"still here" * 1000), "after-reload.bin")
print("uploaded", sftp.stat("after-reload.bin").st_size, flush=True)
"#;

#[test]
fn users_change_on_sighup_without_dropping_sessions_and_a_bad_config_is_refused_whole() {
    let files = TestGateway::builder().sftp().local_only().files();
    let mut gw = files.serve();
    let config = files.config_path.clone();
    let original = std::fs::read_to_string(&config).unwrap();

    // An SFTP session open across every reload below.
    let script = files.dir.path().join("session.py");
    std::fs::write(&script, OPEN_SESSION).unwrap();
    let mut py = Command::new("python3")
        .arg(&script)
        .args([&gw.sftp_addr.port().to_string(), files.user_keys["alice"].to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut py_out = std::io::BufReader::new(py.stdout.take().unwrap()).lines();
    assert_eq!(py_out.next().unwrap().unwrap(), "ready");

    // A new user, made the way an operator makes one.
    let out = Command::new(gateway_bin())
        .args(["users", "new", "--name", "carol", "--tenant", "acme", "--home", "/partners/carol"])
        .args(["--permissions", "list,read,write"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stanza = String::from_utf8(out.stdout).unwrap();
    let carol = String::from_utf8(out.stderr).unwrap().lines().last().unwrap().trim().to_owned();
    let src = files.dir.path().join("small.bin");
    std::fs::write(&src, b"hello").unwrap();
    let src = src.to_str().unwrap();
    assert_eq!(status(&gw, &carol, &[], ""), "401", "not a user yet");
    let reader = files.tokens["reader"].clone();
    assert_eq!(status(&gw, &reader, &["-T", src], "r.bin"), "403", "reader may not write yet");

    // Widen reader's permissions and add carol; SIGHUP.
    let widened =
        original.replacen(r#"permissions = ["list", "read"]"#, r#"permissions = ["list", "read", "write"]"#, 1);
    assert_ne!(widened, original, "the test config names reader's permissions as expected");
    write_atomic(&config, &format!("{widened}\n{stanza}"));
    gw.signal("HUP");
    wait_status(&gw, &carol, &[], "", "200");
    assert_eq!(status(&gw, &carol, &["-T", src], "c.bin"), "201");
    assert_eq!(status(&gw, &reader, &["-T", src], "r.bin"), "201");
    let ok =
        files.wait_audit("the reload", |r| r.iter().any(|x| x["operation"] == "users_reload" && x["result"] == "ok"));
    assert!(ok.iter().any(|x| x["event"] == "auth_success" && x["user"] == "carol"), "carol's login is audited");
    // The session opened before the reload carries on.
    py.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(py_out.next().unwrap().unwrap(), "uploaded 10000");

    // A broken file: an unknown tenant and a bad permission. Refused whole, both problems
    // named; carol and reader keep what they have.
    let broken = format!(
        "{widened}\n{stanza}\n[[users]]\nname = \"dave\"\ntenant = \"nope\"\nhome = \"/d\"\npermissions = [\"fly\"]\n"
    );
    write_atomic(&config, &broken);
    gw.signal("HUP");
    files.wait_audit("the refusal", |r| r.iter().any(|x| x["operation"] == "users_reload" && x["result"] == "error"));
    let refused = reloads(&files).into_iter().find(|x| x["result"] == "error").unwrap();
    let why = refused["error"].as_str().unwrap();
    assert!(why.contains("nope") && why.contains("fly"), "every problem is named: {why}");
    let log = gw.log_text();
    assert!(log.contains("configuration reload refused"), "{log}");
    assert_eq!(status(&gw, &carol, &[], ""), "200");
    assert_eq!(status(&gw, &reader, &["-T", src], "r2.bin"), "201");

    // Tenants change only at a restart: a file that adds one is refused too.
    let tenant_added = format!("{widened}\n{stanza}\n[[tenants]]\nname = \"initech\"\n");
    write_atomic(&config, &tenant_added);
    gw.signal("HUP");
    files.wait_audit("the tenant refusal", |r| {
        r.iter().any(|x| x["operation"] == "users_reload" && x["error"].as_str().is_some_and(|e| e.contains("initech")))
    });

    // Back to the original file, found without a SIGHUP (the file is looked at every 2 s and
    // taken once two looks agree):
    // carol is gone, reader is read-only again.
    write_atomic(&config, &original);
    wait_status(&gw, &carol, &[], "", "401");
    assert_eq!(status(&gw, &reader, &["-T", src], "r3.bin"), "403");
    assert!(py.wait().unwrap().success());
    assert!(gw.child.try_wait().unwrap().is_none(), "SIGHUP never stops the gateway");
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(60)).success());
    let (ok, text) = files.verify();
    assert!(ok, "{text}");
    let results: Vec<String> = reloads(&files).iter().map(|r| r["result"].as_str().unwrap().to_owned()).collect();
    assert_eq!(results, ["ok", "error", "error", "ok"], "{:#?}", reloads(&files));
}
