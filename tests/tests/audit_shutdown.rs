//! Shutdown with clients still mid-transfer when the grace period runs out: the gateway ends
//! them by force, and only then closes the trail, so every `started` record gets its
//! `failed` record and nothing is lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use gateway_e2e::{write_random, TestGateway};
use serde_json::Value;

/// paramiko, 32 KiB at a time with a pause after each: a download (`get`), a download that
/// asks for the whole file at once (`prefetch`; the test then stops the process, so the
/// gateway's replies back up: a stuck client), or an upload (`put`), each still running long
/// after the grace period.
const SLOW_SFTP: &str = r#"
import sys, time, paramiko
port, key, mode, remote, local = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(key))
sftp = paramiko.SFTPClient.from_transport(t)
try:
    if mode in ("get", "prefetch"):
        f = sftp.open(remote, "rb")
        if mode == "prefetch":
            f.prefetch()
        while f.read(32768):
            print("progress", flush=True)
            time.sleep(0.2)
    else:
        f = sftp.open(remote, "wb")
        data = open(local, "rb").read()
        for i in range(0, len(data), 32768):
            f.write(data[i:i + 32768])
            print("progress", flush=True)
            time.sleep(0.2)
        f.close()
    print("finished", flush=True)
except Exception as e:
    print("ended:", e, flush=True)
"#;

/// Start `cmd` with its stdout read line by line into a channel.
fn spawn_lines(mut cmd: Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

fn id(r: &Value) -> &str {
    r["transfer_id"].as_str().unwrap_or_default()
}

#[test]
fn transfers_running_past_the_grace_period_end_with_failed_records_before_the_trail_closes() {
    let files = TestGateway::builder().sftp().local_only().grace("1s").files();
    let mut gw = files.serve();
    let big = files.dir.path().join("big.bin");
    write_random(&big, 16 << 20);
    let auth = format!("Authorization: Bearer {}", files.tokens["alice"]);
    let out = gw
        .curl()
        .args(["-o", "/dev/null", "-w", "%{http_code}", "-H", &auth, "-T"])
        .arg(&big)
        .arg(gw.url("/v1/files/big.bin"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201", "{}", String::from_utf8_lossy(&out.stderr));

    // Four slow transfers: two SFTP downloads (one of them stuck), an SFTP upload, an HTTPS
    // download (HTTP/2 if curl speaks it, so the body lives in a stream task of its own).
    let script = files.dir.path().join("slow.py");
    std::fs::write(&script, SLOW_SFTP).unwrap();
    let key = files.user_keys["alice"].display().to_string();
    let port = gw.sftp_addr.port().to_string();
    let mut clients = Vec::new();
    for (mode, remote) in [("get", "big.bin"), ("prefetch", "big.bin"), ("put", "upload.bin")] {
        let mut cmd = Command::new("python3");
        cmd.arg(&script).args([port.as_str(), key.as_str(), mode, remote]).arg(&big);
        clients.push(spawn_lines(cmd));
    }
    let mut curl = gw.curl();
    curl.args(["--limit-rate", "64k", "-o", "/dev/null", "-H", &auth]).arg(gw.url("/v1/files/big.bin"));
    let curl = curl.spawn().unwrap();
    for (_, lines) in &clients {
        let first = lines.recv_timeout(Duration::from_secs(60)).expect("the slow SFTP client made no progress");
        assert_eq!(first, "progress");
    }
    // The prefetching client stops reading altogether.
    let stuck = clients[1].0.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &stuck]).status().unwrap().success());
    let started =
        files.wait_audit("four transfers in flight", |r| r.iter().filter(|x| x["event"] == "started").count() >= 5);
    let in_flight: Vec<String> = started
        .iter()
        .filter(|x| x["event"] == "started")
        .map(|x| id(x).to_owned())
        .filter(|t| !started.iter().any(|y| id(y) == t && y["event"] == "completed"))
        .collect();
    assert_eq!(in_flight.len(), 4, "{started:#?}");

    gw.signal("TERM");
    let status = gw.wait(Duration::from_secs(90));
    assert!(status.success(), "{status:?}\n{}", gw.log_text());
    let _ = Command::new("kill").args(["-CONT", &stuck]).status();
    for (mut child, lines) in clients {
        let _ = child.kill();
        let _ = child.wait();
        let said: Vec<String> = lines.try_iter().collect();
        assert!(!said.iter().any(|l| l == "finished"), "the slow client finished before shutdown: {said:?}");
    }
    let mut curl = curl;
    let _ = curl.kill();
    let _ = curl.wait();

    let log = gw.log_text();
    assert!(!log.contains("a record was lost"), "{log}");
    assert!(log.contains("grace period over"), "the grace period ran out with transfers in flight:\n{log}");
    let trail = files.audit();
    for t in &in_flight {
        let ends: Vec<&Value> = trail.iter().filter(|r| id(r) == t && r["event"] != "started").collect::<Vec<_>>();
        assert_eq!(ends.len(), 1, "one terminal record for {t}: {ends:#?}");
        assert_eq!(ends[0]["event"], "failed", "ended by the shutdown, audited by its own Drop: {:#?}", ends[0]);
    }
    let last = trail.last().unwrap();
    assert_eq!((last["event"].as_str(), last["operation"].as_str()), (Some("checkpoint"), Some("shutdown")));
    let (ok, text) = files.verify();
    assert!(ok && !text.contains("WARNING"), "{text}");
}
