//! Password guessing must not starve transfers: PBKDF2 runs on at most half the cores. A
//! timing comparison, so it lives in its own test binary (cargo runs binaries one at a time)
//! and shares the machine with no other test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use gateway_e2e::{random_bytes, TestGateway};

const MIB: usize = 1024 * 1024;

/// Run `python3 args…` with a time limit; returns stdout, panics with stderr on failure.
async fn python(args: &[&str], limit: Duration) -> String {
    let out =
        tokio::time::timeout(limit, tokio::process::Command::new("python3").args(args).kill_on_drop(true).output())
            .await
            .unwrap_or_else(|_| panic!("python {args:?} did not finish within {limit:?}"))
            .expect("python3 is installed");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "python {args:?} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

const PARAMIKO_PUT: &str = r#"
import sys, paramiko
port, key, local, remote = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(key))
paramiko.SFTPClient.from_transport(t).put(local, remote)
"#;

async fn put_file(port: u16, key: &Path, dir: &Path, size: usize, remote: &str) {
    let local = dir.join("put-src");
    std::fs::write(&local, random_bytes(size)).unwrap();
    let script = dir.join("put.py");
    std::fs::write(&script, PARAMIKO_PUT).unwrap();
    let args = [script.to_str().unwrap(), &port.to_string(), key.to_str().unwrap(), local.to_str().unwrap(), remote];
    python(&args, Duration::from_secs(120)).await;
}

const PASSWORD_GUESSES: &str = r#"
import sys, threading, paramiko
port, n = int(sys.argv[1]), int(sys.argv[2])
refused = []
def guess(i):
    t = paramiko.Transport(("127.0.0.1", port))
    try:
        t.connect()
        t.auth_password("alice", "wrong-%d" % i)
    except paramiko.AuthenticationException:
        refused.append(i)
    except Exception as e:
        print("error", e, file=sys.stderr)
    finally:
        t.close()
threads = [threading.Thread(target=guess, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(len(refused))
"#;

const TIMED_GET: &str = r#"
import sys, time, paramiko
port, key, dest = int(sys.argv[1]), sys.argv[2], sys.argv[3]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username="alice", pkey=paramiko.Ed25519Key.from_private_key_file(key))
s = paramiko.SFTPClient.from_transport(t)
started = time.time()
s.get("/dl.bin", dest)
print(time.time() - started)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_parallel_password_guesses_do_not_starve_a_download() {
    let gw = TestGateway::builder().password("alice", "correct horse battery staple").sftp().start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = gw.user_keys["alice"].clone();
    put_file(gw.sftp_port(), &key, dir.path(), 64 * MIB, "/dl.bin").await;
    let get = dir.path().join("get.py");
    std::fs::write(&get, TIMED_GET).unwrap();
    let guesses = dir.path().join("guess.py");
    std::fs::write(&guesses, PASSWORD_GUESSES).unwrap();
    let port = gw.sftp_port().to_string();
    let dest = dir.path().join("dl").display().to_string();
    let timed = |get: PathBuf, port: String, key: PathBuf, dest: String| async move {
        let out = python(&[get.to_str().unwrap(), &port, key.to_str().unwrap(), &dest], Duration::from_secs(120)).await;
        out.trim().parse::<f64>().unwrap()
    };
    let alone = timed(get.clone(), port.clone(), key.clone(), dest.clone()).await;
    let guessing = {
        let (guesses, port) = (guesses.clone(), port.clone());
        tokio::spawn(async move { python(&[guesses.to_str().unwrap(), &port, "50"], Duration::from_secs(300)).await })
    };
    // Let the guesses pile up in front of the password check first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let contended = timed(get, port, key, dest).await;
    let refused: usize = guessing.await.unwrap().trim().parse().unwrap();
    eprintln!("download alone {alone:.2}s, during 50 password guesses {contended:.2}s");
    assert_eq!(refused, 50, "every guess was refused");
    let failures = gw.audit().iter().filter(|r| r["event"] == "auth_failure" && r["auth_method"] == "password").count();
    assert!(failures >= 50, "each guess audited ({failures})");
    // Stated factor: password hashing runs on at most half the cores, so a download keeps
    // the rest; 3x (plus half a second) allows for this 2-core machine's noise. Without
    // the cap, 50 hashes at once take both cores and the download waits for all of them.
    assert!(contended < alone * 3.0 + 0.5, "download took {contended:.2}s with guessing vs {alone:.2}s alone");
}
