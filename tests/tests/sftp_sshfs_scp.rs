//! Clients that lean on corners of SFTP the plain `sftp` tool does not: sshfs (creates a file
//! and looks it up before writing, sets times; reads, lists, renames and removes through a
//! FUSE mount) and OpenSSH 9 `scp` (SFTP underneath; its exit code depends on the server
//! ending the session with `exit-status` 0). Every process runs under a timeout, and the mount
//! is always taken down, also when an assertion fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use gateway_e2e::{sha256_hex, sha_file, write_random, TestGateway};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const MIB: usize = 1024 * 1024;
/// Longest any one client command may take; a hang fails the test instead of blocking CI.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

// ------------------------------------------------------------------------------ helpers

/// What a finished client process reported.
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Run `program args…` with `stdin` (or /dev/null) under [`CLIENT_TIMEOUT`]; the process is
/// killed if the test gives up on it.
async fn run(program: &str, args: &[String], stdin: Option<&str>) -> Output {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{program} is installed: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`{program} {}` timed out after {CLIENT_TIMEOUT:?}", args.join(" ")))
        .unwrap();
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// [`run`] that must succeed.
async fn run_ok(program: &str, args: &[String]) -> Output {
    let out = run(program, args, None).await;
    assert!(out.ok(), "`{program} {}` failed: {out}", args.join(" "));
    out
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// SHA-256 of a file read by a separate `sha256sum` process (for files on the mount, so a
/// stuck FUSE read is bounded by the timeout rather than hanging a test thread).
async fn sha256sum(path: &Path) -> String {
    let out = run_ok("sha256sum", &[p(path)]).await;
    out.stdout.split_whitespace().next().unwrap_or_default().to_owned()
}

fn s<'a>(r: &'a Value, field: &str) -> &'a str {
    r[field].as_str().unwrap_or("")
}

/// Audit records of `event` for SFTP `operation` on `path` by alice.
fn transfers(gw: &TestGateway, event: &str, operation: &str, path: &str) -> Vec<Value> {
    gw.audit()
        .into_iter()
        .filter(|r| {
            s(r, "event") == event
                && s(r, "protocol") == "sftp"
                && s(r, "user") == "alice"
                && s(r, "operation") == operation
                && s(r, "path") == path
        })
        .collect()
}

/// Asserts the trail holds exactly one `started` and one `completed` upload of `path` with
/// `size` bytes and SHA-256 `sum`, and no `failed` one.
async fn assert_one_completed_upload(gw: &TestGateway, path: &str, size: usize, sum: &str) {
    let done = gw
        .wait_audit(&format!("completed upload of {path}"), |r| {
            s(r, "event") == "completed" && s(r, "operation") == "upload" && s(r, "path") == path
        })
        .await;
    assert_eq!(done["bytes"], size as u64, "{done:#}");
    assert_eq!(s(&done, "sha256"), sum, "{done:#}");
    assert_eq!(s(&done, "result"), "ok", "{done:#}");
    assert!(s(&done, "ssh_client").starts_with("SSH-2.0-OpenSSH"), "{done:#}");
    let started = transfers(gw, "started", "upload", path);
    let completed = transfers(gw, "completed", "upload", path);
    let failed = transfers(gw, "failed", "upload", path);
    assert_eq!(started.len(), 1, "started uploads of {path}: {started:#?}");
    assert_eq!(completed.len(), 1, "completed uploads of {path}: {completed:#?}");
    assert!(failed.is_empty(), "failed uploads of {path}: {failed:#?}");
    assert_eq!(started[0]["transfer_id"], done["transfer_id"]);
}

/// Asserts the trail holds one `completed` upload of `path` with `size` bytes and SHA-256
/// `sum`, no `failed` one, and otherwise only empty uploads (a placeholder, or sshfs
/// truncating the file before writing it).
async fn assert_completed_upload(gw: &TestGateway, path: &str, size: usize, sum: &str) {
    gw.wait_audit(&format!("completed upload of {path} with {size} bytes"), |r| {
        s(r, "event") == "completed"
            && s(r, "operation") == "upload"
            && s(r, "path") == path
            && r["bytes"] == size as u64
    })
    .await;
    let completed = transfers(gw, "completed", "upload", path);
    let (full, empty): (Vec<&Value>, Vec<&Value>) = completed.iter().partition(|r| r["bytes"] == size as u64);
    assert_eq!(full.len(), 1, "uploads of {path}: {completed:#?}");
    assert_eq!(s(full[0], "sha256"), sum, "{:#}", full[0]);
    assert_eq!(s(full[0], "result"), "ok", "{:#}", full[0]);
    assert!(empty.iter().all(|r| r["bytes"] == 0), "uploads of {path}: {completed:#?}");
    let failed = transfers(gw, "failed", "upload", path);
    assert!(failed.is_empty(), "failed uploads of {path}: {failed:#?}");
    assert_eq!(transfers(gw, "started", "upload", path).len(), completed.len(), "started vs completed of {path}");
}

/// OpenSSH options as `ssh` itself takes them (`-p`, not `-P`) for alice.
fn ssh_client_args(gw: &TestGateway) -> Vec<String> {
    let mut args = Vec::new();
    for opt in [
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        "ConnectTimeout=20",
    ] {
        args.extend(["-o".to_owned(), opt.to_owned()]);
    }
    args.extend(["-i".to_owned(), p(&gw.user_keys["alice"]), "-p".to_owned(), gw.sftp_port().to_string()]);
    args
}

/// The first line of `program`'s version report (for the test log).
async fn version(program: &str, arg: &str) -> String {
    let out = run(program, &[arg.to_owned()], None).await;
    let text = format!("{}{}", out.stdout, out.stderr);
    let lower = program.to_lowercase();
    text.lines().find(|l| l.to_lowercase().contains(&lower)).unwrap_or_default().to_owned()
}

// ------------------------------------------------------------------------------ the mount

/// An sshfs mount of alice's home. Dropping it unmounts lazily, so a failed assertion never
/// leaves a mount behind; the mount point directory goes away after that.
struct SshfsMount {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl SshfsMount {
    async fn mount(gw: &TestGateway) -> SshfsMount {
        let dir = tempfile::tempdir().unwrap();
        let opts = format!(
            "IdentityFile={},StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,BatchMode=yes,\
             IdentitiesOnly=yes,ConnectTimeout=20",
            gw.user_keys["alice"].display()
        );
        let args = vec![
            "-p".to_owned(),
            gw.sftp_port().to_string(),
            "-o".to_owned(),
            opts,
            "alice@127.0.0.1:/".to_owned(),
            p(dir.path()),
        ];
        // sshfs connects, mounts, then daemonises: once it exits 0 the mount is up.
        let mut mount = SshfsMount { dir, mounted: true };
        let out = run("sshfs", &args, None).await;
        if !out.ok() {
            mount.mounted = false;
            panic!("sshfs {} failed: {out}", args.join(" "));
        }
        assert!(mount.is_mounted(), "sshfs exited 0 but {} is not a mount point", mount.path().display());
        mount
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Whether the mount point is listed as an sshfs mount in this namespace.
    fn is_mounted(&self) -> bool {
        let want = self.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()) && l.contains("fuse.sshfs"))
    }

    /// Unmount now (not lazily); asserts it worked.
    fn unmount(&mut self) {
        let how = unmount(self.path(), false);
        assert!(how.is_some(), "could not unmount {}", self.path().display());
        self.mounted = false;
        assert!(!self.is_mounted(), "{} still mounted after {how:?}", self.path().display());
    }
}

impl Drop for SshfsMount {
    fn drop(&mut self) {
        if self.mounted && unmount(self.path(), true).is_none() {
            eprintln!("WARNING: could not unmount {}", self.path().display());
        }
    }
}

/// Unmount with `fusermount3`, `fusermount` or `umount`, whichever works first (lazily with
/// `lazy`, for the drop path); returns the command that did it. Each try is bounded.
fn unmount(path: &Path, lazy: bool) -> Option<String> {
    let tries: [(&str, &[&str]); 3] = if lazy {
        [("fusermount3", &["-u", "-z"]), ("fusermount", &["-u", "-z"]), ("umount", &["-l"])]
    } else {
        [("fusermount3", &["-u"]), ("fusermount", &["-u"]), ("umount", &[])]
    };
    for (program, flags) in tries {
        let Ok(mut child) = std::process::Command::new(program)
            .args(flags)
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
        else {
            continue;
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match child.try_wait() {
                Ok(Some(st)) if st.success() => return Some(format!("{program} {}", flags.join(" "))),
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    None
}

// ------------------------------------------------------------------------------ 1. sshfs

/// sshfs creates a file with OPEN(WRITE|CREAT|EXCL) and sends LSTAT of the same path right
/// behind it, without waiting for the handle; if that LSTAT fails it closes the handle and
/// the `create` fails with ENOENT. SFTP v3 (draft-ietf-secsh-filexfer-02, section 6) requires
/// requests relating to the same file to be processed in order, so the LSTAT must see the
/// upload the OPEN began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshfs_creates_new_files() {
    let gw = TestGateway::builder().sftp().start().await;
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    let size = 3 * MIB + 11;
    let sum = write_random(&l.join("new.bin"), size);
    let mut mnt = SshfsMount::mount(&gw).await;

    run_ok("cp", &[p(&l.join("new.bin")), p(&mnt.join("new.bin"))]).await;
    run_ok("touch", &[p(&mnt.join("empty.txt"))]).await;
    let stat = run_ok("stat", &["-c".to_owned(), "%F %s".to_owned(), p(&mnt.join("new.bin"))]).await.stdout;
    assert_eq!(stat.trim(), format!("regular file {size}"), "stat through the mount");
    assert_one_completed_upload(&gw, "new.bin", size, &sum).await;
    assert_one_completed_upload(&gw, "empty.txt", 0, &sha256_hex(b"")).await;
    let (ok, out) = gw.sftp_batch("alice", &format!("get new.bin {}\n", l.join("new.down").display()), &[]).await;
    assert!(ok, "sftp get failed:\n{out}");
    assert_eq!(sha_file(&l.join("new.down")), sum, "sftp get of the file sshfs created");
    mnt.unmount();
}

/// What a user does on an sshfs mount, with a 64 MiB file: `cp` in (creating new files) and
/// out, `mkdir`, `ls -l`, `mv`, `rm`, `rmdir`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshfs_copy_in_and_out_list_rename_remove() {
    let started = Instant::now();
    eprintln!("{} / {}", version("sshfs", "--version").await, version("ssh", "-V").await);
    let gw = TestGateway::builder().sftp().start().await;
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    let size = 64 * MIB;
    let sum = write_random(&l.join("big.bin"), size);
    let small_size = 100_007;
    let small_sum = write_random(&l.join("small.bin"), small_size);

    let mut mnt = SshfsMount::mount(&gw).await;
    let m = |rel: &str| p(&mnt.join(rel));

    run_ok("mkdir", &[m("dir")]).await;
    run_ok("mkdir", &[m("dir/sub")]).await;
    // `cp` creates both files through the mount (OPEN with CREAT|EXCL, then a pipelined
    // LSTAT of the new path).

    let t = Instant::now();
    run_ok("cp", &[p(&l.join("big.bin")), m("dir/big.bin")]).await;
    eprintln!("sshfs: cp of {size} bytes in took {:?}", t.elapsed());
    run_ok("cp", &[p(&l.join("small.bin")), m("dir/sub/small.bin")]).await;
    assert_completed_upload(&gw, "dir/big.bin", size, &sum).await;
    assert_completed_upload(&gw, "dir/sub/small.bin", small_size, &small_sum).await;

    // The stored copy, seen by OpenSSH sftp over its own connection.
    let (ok, out) = gw.sftp_batch("alice", &format!("get dir/big.bin {}\n", l.join("sftp.down").display()), &[]).await;
    assert!(ok, "sftp get failed:\n{out}");
    assert_eq!(sha_file(&l.join("sftp.down")), sum, "sftp get of the file sshfs wrote");

    // Read back through the mount, and copied out again.
    assert_eq!(sha256sum(&mnt.join("dir/big.bin")).await, sum, "read through the mount");
    let t = Instant::now();
    run_ok("cp", &[m("dir/big.bin"), p(&l.join("out.bin"))]).await;
    eprintln!("sshfs: cp of {size} bytes out took {:?}", t.elapsed());
    assert_eq!(sha_file(&l.join("out.bin")), sum, "cp out of the mount");
    // The mount's reads reached the server (not only the page cache): besides sftp's get,
    // at least one whole read of the file over sshfs.
    let downloads = transfers(&gw, "completed", "download", "dir/big.bin");
    let bytes = |rs: &[Value]| rs.iter().map(|r| r["bytes"].as_u64().unwrap_or(0)).collect::<Vec<_>>();
    let uploads = transfers(&gw, "completed", "upload", "dir/big.bin");
    eprintln!("dir/big.bin: uploads of {:?} bytes, downloads of {:?} bytes", bytes(&uploads), bytes(&downloads));
    assert!(
        downloads.iter().skip(1).any(|r| r["bytes"] == size as u64),
        "no whole read of dir/big.bin over sshfs: {downloads:#?}"
    );

    // ls -l: type and size.
    let ls = run_ok("ls", &["-l".to_owned(), m("dir")]).await.stdout;
    let line = |name: &str| {
        ls.lines()
            .find(|l| l.split_whitespace().last() == Some(name))
            .unwrap_or_else(|| panic!("`ls -l` shows no {name}:\n{ls}"))
            .to_owned()
    };
    let big = line("big.bin");
    assert!(big.starts_with('-'), "big.bin is a regular file: {big}");
    assert_eq!(big.split_whitespace().nth(4), Some(size.to_string().as_str()), "size of big.bin: {big}");
    let sub = line("sub");
    assert!(sub.starts_with('d'), "sub is a directory: {sub}");
    let ls_sub = run_ok("ls", &["-l".to_owned(), m("dir/sub")]).await.stdout;
    assert!(
        ls_sub.lines().any(|l| l.starts_with('-')
            && l.split_whitespace().nth(4) == Some(small_size.to_string().as_str())
            && l.ends_with(" small.bin")),
        "small.bin in `ls -l`:\n{ls_sub}"
    );

    // mv (rename): the old name is gone and the new one holds the same bytes.
    run_ok("mv", &[m("dir/big.bin"), m("dir/moved.bin")]).await;
    let names = run_ok("ls", &["-1A".to_owned(), m("dir")]).await.stdout;
    let mut names: Vec<&str> = names.lines().collect();
    names.sort_unstable();
    assert_eq!(names, ["moved.bin", "sub"], "after mv");
    let (ok, out) = gw.sftp_batch("alice", "ls -1 dir\n", &[]).await;
    assert!(ok, "{out}");
    assert!(out.contains("dir/moved.bin") && !out.contains("dir/big.bin"), "sftp sees the rename:\n{out}");
    let get = format!("get dir/moved.bin {}\n", l.join("moved.down").display());
    let (ok, out) = gw.sftp_batch("alice", &get, &[]).await;
    assert!(ok, "{out}");
    assert_eq!(sha_file(&l.join("moved.down")), sum, "renamed file");

    // rm, rmdir: the home is empty again.
    run_ok("rm", &[m("dir/moved.bin"), m("dir/sub/small.bin")]).await;
    run_ok("rmdir", &[m("dir/sub")]).await;
    run_ok("rmdir", &[m("dir")]).await;
    let left = run_ok("ls", &["-A".to_owned(), p(mnt.path())]).await.stdout;
    assert!(left.trim().is_empty(), "home not empty through the mount: {left}");
    let (ok, out) = gw.sftp_batch("alice", "ls -1\n", &[]).await;
    assert!(ok, "{out}");
    assert!(!out.lines().any(|l| l.trim() == "dir"), "home not empty over sftp:\n{out}");
    assert!(!gw.object_exists("acme", "partners/alice/dir/moved.bin").await);

    mnt.unmount();

    // Audit: each of those operations was recorded, and succeeded.
    let ops: Vec<(String, String, String)> = gw
        .audit()
        .into_iter()
        .filter(|r| s(r, "event") == "operation" && s(r, "user") == "alice")
        .map(|r| {
            (s(&r, "operation").to_owned(), s(&r, "path").trim_end_matches('/').to_owned(), s(&r, "result").to_owned())
        })
        .collect();
    for (op, path) in [
        ("mkdir", "dir"),
        ("mkdir", "dir/sub"),
        ("rename", "dir/big.bin -> dir/moved.bin"),
        ("delete", "dir/moved.bin"),
        ("delete", "dir/sub/small.bin"),
        ("rmdir", "dir/sub"),
        ("rmdir", "dir"),
    ] {
        assert!(
            ops.iter().any(|(o, pth, res)| o == op && pth == path && res == "ok"),
            "no successful `{op}` of {path} in {ops:#?}"
        );
    }
    eprintln!("sshfs test took {:?}", started.elapsed());
}

// ------------------------------------------------------------------------------ 2. scp, sftp -b

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_up_and_down_exit_zero_and_a_missing_source_fails() {
    let started = Instant::now();
    eprintln!("{}", version("ssh", "-V").await);
    let gw = TestGateway::builder().sftp().start().await;
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    let size = 64 * MIB + 3;
    let sum = write_random(&l.join("up.bin"), size);
    let scp = |from: String, to: String| {
        let mut args = gw.ssh_options("alice");
        args.extend([from, to]);
        args
    };
    let remote = |path: &str| format!("alice@127.0.0.1:{path}");

    let t = Instant::now();
    let out = run("scp", &scp(p(&l.join("up.bin")), remote("/up.bin")), None).await;
    assert!(out.ok(), "scp upload: {out}");
    eprintln!("scp: {size} bytes up in {:?}", t.elapsed());
    assert_one_completed_upload(&gw, "up.bin", size, &sum).await;

    let t = Instant::now();
    let out = run("scp", &scp(remote("/up.bin"), p(&l.join("down.bin"))), None).await;
    assert!(out.ok(), "scp download: {out}");
    eprintln!("scp: {size} bytes down in {:?}", t.elapsed());
    assert_eq!(sha_file(&l.join("down.bin")), sum, "scp download");
    let down = gw
        .wait_audit("completed download of up.bin", |r| {
            s(r, "event") == "completed" && s(r, "operation") == "download" && s(r, "path") == "up.bin"
        })
        .await;
    assert_eq!(down["bytes"], size as u64, "{down:#}");

    // A source that does not exist: scp says so and exits non-zero; nothing is written.
    let out = run("scp", &scp(remote("/nope.bin"), p(&l.join("nope.bin"))), None).await;
    assert!(!out.ok() && out.code.is_some(), "scp of a missing file: {out}");
    assert!(out.stderr.to_lowercase().contains("no such file"), "scp of a missing file: {out}");
    assert!(!l.join("nope.bin").exists(), "scp created a local file for a missing source");

    // sftp -b: a failing command makes the batch fail; a good batch exits 0.
    let (ok, out) = gw.sftp_batch("alice", &format!("get /nope {}\n", l.join("nope2").display()), &[]).await;
    assert!(!ok, "sftp -b with a failing get exited 0:\n{out}");
    assert!(out.to_lowercase().contains("not found") || out.to_lowercase().contains("no such file"), "{out}");
    let (ok, out) = gw.sftp_batch("alice", "pwd\nls -l\n", &[]).await;
    assert!(ok, "good sftp batch failed:\n{out}");
    assert!(out.contains("up.bin"), "{out}");
    eprintln!("scp test took {:?}", started.elapsed());
}

// ------------------------------------------------------------------------------ 3. exit-status

/// OpenSSH's client logs, at debug1, the channel request it got and the status it exits
/// with ("Exit status -1" when the server sent none).
fn assert_exit_status_zero(what: &str, out: &Output) {
    assert!(out.ok(), "{what}: {out}");
    assert!(
        out.stderr.lines().any(|l| l.contains("rtype exit-status")),
        "{what}: the server sent no exit-status request: {out}"
    );
    assert!(out.stderr.lines().any(|l| l.trim_end() == "debug1: Exit status 0"), "{what}: {out}");
    for line in out.stderr.lines().filter(|l| l.contains("exit-status") || l.contains("Exit status")) {
        eprintln!("{what}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_end_carries_exit_status_zero() {
    let gw = TestGateway::builder().sftp().start().await;

    // The bare subsystem: stdin at EOF, so the client closes its side at once.
    let mut args = ssh_client_args(&gw);
    args.extend(strings(&["-v", "-s", "alice@127.0.0.1", "sftp"]));
    let out = run("ssh", &args, None).await;
    assert_exit_status_zero("ssh -s sftp < /dev/null", &out);

    // A whole sftp session.
    let mut args = gw.ssh_options("alice");
    args.extend(strings(&["-v", "-b", "-", "alice@127.0.0.1"]));
    let out = run("sftp", &args, Some("pwd\n")).await;
    assert_exit_status_zero("sftp -v -b -", &out);
    assert!(out.stdout.contains("Remote working directory: /"), "{out}");

    // scp -v, uploading a small file.
    let local = tempfile::tempdir().unwrap();
    let sum = write_random(&local.path().join("x.bin"), 1000);
    let mut args = gw.ssh_options("alice");
    args.extend(["-v".to_owned(), p(&local.path().join("x.bin")), "alice@127.0.0.1:/x.bin".to_owned()]);
    let out = run("scp", &args, None).await;
    assert_exit_status_zero("scp -v", &out);
    assert_one_completed_upload(&gw, "x.bin", 1000, &sum).await;
}
