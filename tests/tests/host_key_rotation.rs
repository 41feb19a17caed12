//! SSH host key rotation without a restart, as OpenSSH clients with a strict `known_hosts` see
//! it: a second key added beside the first (overlap: clients knowing either key connect), a
//! corrupt key file refused while the set in force serves on, the old key removed (clients
//! knowing only it are refused), a key file replaced in place picked up by the periodic look;
//! an SFTP session opened before the first swap works after the last. Every attempt is audited
//! with the fingerprints before and after.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use gateway_e2e::served::{GatewayFiles, ServedGateway};
use gateway_e2e::TestGateway;

/// `SHA256:…` of the public half of `key`, as `ssh-keygen -l` prints it.
fn fingerprint(key: &Path) -> String {
    let out = Command::new("ssh-keygen").arg("-lf").arg(key.with_extension("pub")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().split_whitespace().nth(1).unwrap().to_owned()
}

/// A `known_hosts` file naming only `key` for the gateway's address.
fn known_hosts(dir: &Path, name: &str, gw: &ServedGateway, key: &Path) -> PathBuf {
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let mut fields = public.split_whitespace();
    let (kind, blob) = (fields.next().unwrap(), fields.next().unwrap());
    let path = dir.join(name);
    std::fs::write(&path, format!("[127.0.0.1]:{} {kind} {blob}\n", gw.sftp_addr.port())).unwrap();
    path
}

/// `sftp -b` with strict host key checking against `known`: (success, the host key line
/// OpenSSH logged, everything it printed).
fn connect(files: &GatewayFiles, gw: &ServedGateway, known: &Path, extra: &[&str]) -> (bool, String, String) {
    let batch = files.dir.path().join("batch");
    std::fs::write(&batch, "ls\n").unwrap();
    let mut cmd = Command::new("sftp");
    cmd.arg("-v").arg("-b").arg(&batch);
    for opt in [
        "StrictHostKeyChecking=yes".to_owned(),
        format!("UserKnownHostsFile={}", known.display()),
        "GlobalKnownHostsFile=/dev/null".to_owned(),
        "BatchMode=yes".to_owned(),
        "IdentitiesOnly=yes".to_owned(),
        "ConnectTimeout=20".to_owned(),
    ] {
        cmd.arg("-o").arg(opt);
    }
    for e in extra {
        cmd.arg("-o").arg(e);
    }
    cmd.arg("-P").arg(gw.sftp_addr.port().to_string()).arg("-i").arg(&files.user_keys["alice"]);
    let out = cmd.arg("alice@127.0.0.1").stdin(Stdio::null()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let offered = text.lines().find_map(|l| l.split_once("Server host key: ")).map(|(_, k)| k.trim().to_owned());
    (out.status.success(), offered.unwrap_or_default(), text)
}

/// Point `[sftp] host_keys` at `keys` (a new file renamed over the configuration).
fn set_host_keys(config: &Path, keys: &[&Path]) {
    let text = std::fs::read_to_string(config).unwrap();
    let list = keys.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ");
    let mut found = false;
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("host_keys = ") {
                found = true;
                format!("host_keys = [{list}]\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(found, "the test configuration has a host_keys line");
    let tmp = config.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, config).unwrap();
}

/// Replace `path` by `content` (0600) the way a deployment does: a new file renamed over it.
fn replace_file(path: &Path, content: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn reloads(files: &GatewayFiles) -> Vec<serde_json::Value> {
    files.audit().into_iter().filter(|r| r["operation"] == "host_key_reload").collect()
}

/// Wait for the `n`th host key reload record and return it.
fn nth_reload(files: &GatewayFiles, n: usize) -> serde_json::Value {
    files.wait_audit(&format!("host key reload #{n}"), |r| {
        r.iter().filter(|x| x["operation"] == "host_key_reload").count() >= n
    });
    reloads(files)[n - 1].clone()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap_or(&Vec::new()).iter().map(|s| s.as_str().unwrap().to_owned()).collect()
}

/// paramiko: log in as alice, print `ready <host key base64>`, wait for a line, then upload,
/// stat and say `uploaded <size>`.
const OPEN_SESSION: &str = r#"
import sys, io, paramiko
port, key = int(sys.argv[1]), sys.argv[2]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(key))
sftp = paramiko.SFTPClient.from_transport(t)
sftp.listdir(".")
print("ready", t.get_remote_server_key().get_base64(), flush=True)
sys.stdin.readline()
sftp.putfo(io.BytesIO(b"still here" * 1000), "after-rotation.bin")
print("uploaded", sftp.stat("after-rotation.bin").st_size, flush=True)
"#;

#[test]
fn host_keys_rotate_with_an_overlap_while_strict_openssh_clients_keep_connecting() {
    let files = TestGateway::builder().sftp().local_only().files();
    let dir = files.dir.path().to_owned();
    let (a, b) = (dir.join("ssh/host_ed25519"), dir.join("ssh/host_rsa"));
    let (fp_a, fp_b) = (fingerprint(&a), fingerprint(&b));
    set_host_keys(&files.config_path, &[&a]);
    let mut gw = files.serve();
    let knows_a = known_hosts(&dir, "known_a", &gw, &a);
    let knows_b = known_hosts(&dir, "known_b", &gw, &b);

    // Only A is served: a client knowing A connects, one knowing only B is refused.
    let (ok, offered, text) = connect(&files, &gw, &knows_a, &[]);
    assert!(ok && offered.contains(&fp_a), "{text}");
    let (ok, _, text) = connect(&files, &gw, &knows_b, &[]);
    assert!(!ok && text.contains("Host key verification failed"), "{text}");

    // A session opened now, used after the last rotation.
    let script = dir.join("session.py");
    std::fs::write(&script, OPEN_SESSION).unwrap();
    let mut py = Command::new("python3")
        .arg(&script)
        .args([&gw.sftp_addr.port().to_string(), files.user_keys["alice"].to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut py_out = std::io::BufReader::new(py.stdout.take().unwrap()).lines();
    let ready = py_out.next().unwrap().unwrap();
    let a_blob =
        std::fs::read_to_string(a.with_extension("pub")).unwrap().split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(ready, format!("ready {a_blob}"), "the open session was given A");

    // Overlap: A and B both served. A client knowing either connects, each given its own.
    set_host_keys(&files.config_path, &[&a, &b]);
    gw.signal("HUP");
    let rec = nth_reload(&files, 1);
    assert_eq!(rec["result"], "ok", "{rec}");
    assert_eq!(strings(&rec["host_keys"]["previous_sha256"]), vec![fp_a.clone()], "{rec}");
    assert_eq!(strings(&rec["host_keys"]["sha256"]), vec![fp_a.clone(), fp_b.clone()], "{rec}");
    let (ok, offered, text) = connect(&files, &gw, &knows_a, &[]);
    assert!(ok && offered.contains(&fp_a), "{text}");
    let (ok, offered, text) = connect(&files, &gw, &knows_b, &[]);
    assert!(ok && offered.contains(&fp_b), "{text}");
    // russh 0.65 cannot send `hostkeys-00@openssh.com`: UpdateHostKeys learns nothing, and
    // the overlap is what carries clients across (README, "Host key rotation").
    let before = std::fs::read_to_string(&knows_a).unwrap();
    let (ok, _, text) = connect(&files, &gw, &knows_a, &["UpdateHostKeys=yes"]);
    assert!(ok, "{text}");
    assert_eq!(std::fs::read_to_string(&knows_a).unwrap(), before, "known_hosts unchanged");

    // A corrupt B (caught by the periodic look, no SIGHUP) is refused; A and B serve on.
    let b_good = std::fs::read(&b).unwrap();
    replace_file(&b, b"-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n-----END OPENSSH PRIVATE KEY-----\n");
    let rec = nth_reload(&files, 2);
    assert_eq!(rec["result"], "error", "{rec}");
    assert!(rec["error"].as_str().unwrap().contains("sftp.host_keys[1]"), "{rec}");
    assert!(rec["host_keys"]["previous_sha256"].is_null(), "{rec}");
    assert_eq!(strings(&rec["host_keys"]["sha256"]), vec![fp_a.clone(), fp_b.clone()], "still served: {rec}");
    assert!(gw.log_text().contains("new SSH host keys refused"), "{}", gw.log_text());
    let (ok, offered, text) = connect(&files, &gw, &knows_b, &[]);
    assert!(ok && offered.contains(&fp_b), "B is still served: {text}");
    // Put back, the set is the one in force: nothing to reload, nothing recorded.
    replace_file(&b, &b_good);

    // A removed: only B. A client knowing only A is refused now; the open session carries on.
    set_host_keys(&files.config_path, &[&b]);
    gw.signal("HUP");
    let rec = nth_reload(&files, 3);
    assert_eq!(rec["result"], "ok", "{rec}");
    assert_eq!(strings(&rec["host_keys"]["previous_sha256"]), vec![fp_a.clone(), fp_b.clone()], "{rec}");
    assert_eq!(strings(&rec["host_keys"]["sha256"]), vec![fp_b.clone()], "{rec}");
    let (ok, offered, text) = connect(&files, &gw, &knows_b, &[]);
    assert!(ok && offered.contains(&fp_b), "{text}");
    let (ok, _, text) = connect(&files, &gw, &knows_a, &[]);
    assert!(!ok && text.contains("Host key verification failed"), "{text}");
    py.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(py_out.next().unwrap().unwrap(), "uploaded 10000", "the session opened under A works after");
    assert!(py.wait().unwrap().success());

    // B's file replaced in place by a new key C, no SIGHUP: the periodic look takes it.
    let c = dir.join("ssh/host_c");
    gateway_e2e::ssh_keygen(&c, "ed25519");
    let fp_c = fingerprint(&c);
    replace_file(&b, &std::fs::read(&c).unwrap());
    let t0 = std::time::Instant::now();
    let rec = nth_reload(&files, 4);
    eprintln!("a key file replaced in place was served {:?} later", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert_eq!(rec["result"], "ok", "{rec}");
    assert_eq!(strings(&rec["host_keys"]["previous_sha256"]), vec![fp_b.clone()], "{rec}");
    assert_eq!(strings(&rec["host_keys"]["sha256"]), vec![fp_c.clone()], "{rec}");
    let knows_c = known_hosts(&dir, "known_c", &gw, &c);
    let (ok, offered, text) = connect(&files, &gw, &knows_c, &[]);
    assert!(ok && offered.contains(&fp_c), "{text}");
    let (ok, _, text) = connect(&files, &gw, &knows_b, &[]);
    assert!(!ok && text.contains("Host key verification failed"), "{text}");

    // Two keys of one type (C and A, both Ed25519): only the first is ever served, and the
    // log says so. A same-type rotation overlaps in the clients' known_hosts instead.
    set_host_keys(&files.config_path, &[&b, &a]);
    gw.signal("HUP");
    let rec = nth_reload(&files, 5);
    assert_eq!(strings(&rec["host_keys"]["sha256"]), vec![fp_c.clone(), fp_a.clone()], "{rec}");
    assert!(gw.log_text().contains(&format!("{fp_a} is not served")), "{}", gw.log_text());
    let (ok, _, text) = connect(&files, &gw, &knows_a, &[]);
    assert!(!ok && text.contains("Host key verification failed"), "{text}");
    let both = dir.join("known_both");
    let lines = [&knows_a, &knows_c].map(|k| std::fs::read_to_string(k).unwrap()).concat();
    std::fs::write(&both, lines).unwrap();
    let (ok, offered, text) = connect(&files, &gw, &both, &[]);
    assert!(ok && offered.contains(&fp_c), "{text}");

    assert_eq!(reloads(&files).len(), 5, "{:#?}", reloads(&files));
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(60)).success());
    let (ok, text) = files.verify();
    assert!(ok, "{text}");
    // No private key material in the log or the trail.
    let secret_line = String::from_utf8(b_good).unwrap().lines().nth(1).unwrap().to_owned();
    assert!(!gw.log_text().contains(&secret_line));
    assert!(!std::fs::read_to_string(&files.audit_path).unwrap().contains(&secret_line));
}
