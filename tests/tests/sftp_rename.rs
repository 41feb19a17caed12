//! Rename authorisation end to end: for every combination of `rename`, `write` and `delete`,
//! OpenSSH `sftp` (`rename` = posix-rename, `rename -l` = SSH_FXP_RENAME) and paramiko
//! (`rename`, `posix_rename`) rename onto new names, existing files and directories. Checked:
//! what the client was told, what storage holds afterwards (a refused target is unchanged)
//! and the one `denied` or `operation` record per request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use gateway_e2e::{TestGateway, UserSpec};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// The eight users: `mv` is `rename`, `w` `write`, `d` `delete`; all may list and read.
const USERS: [(&str, &[&str]); 8] = [
    ("none", &["list", "read"]),
    ("w", &["list", "read", "write"]),
    ("d", &["list", "read", "delete"]),
    ("wd", &["list", "read", "write", "delete"]),
    ("mv", &["list", "read", "rename"]),
    ("mv-w", &["list", "read", "rename", "write"]),
    ("mv-d", &["list", "read", "rename", "delete"]),
    ("mv-wd", &["list", "read", "rename", "write", "delete"]),
];

#[derive(Clone, Copy, PartialEq, Debug)]
enum Client {
    /// `sftp -b`: `rename` (posix-rename) or `rename -l` (SSH_FXP_RENAME).
    OpenSsh,
    /// paramiko `rename` (SSH_FXP_RENAME) or `posix_rename`.
    Paramiko,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Absent,
    File,
    /// A directory holding one file, `f`.
    Dir,
}

/// One rename request, made by every user in their own directory of the shared home.
struct Case {
    client: Client,
    replace: bool,
    src: &'static str,
    src_kind: Kind,
    dst: &'static str,
    dst_kind: Kind,
}

const fn case(client: Client, replace: bool, src: &'static str, dst: &'static str, dst_kind: Kind) -> Case {
    Case { client, replace, src, src_kind: Kind::File, dst, dst_kind }
}

const CASES: [Case; 10] = [
    case(Client::OpenSsh, true, "o-a", "o-a2", Kind::Absent),
    case(Client::OpenSsh, true, "o-b", "o-b2", Kind::File),
    case(Client::OpenSsh, false, "o-c", "o-c2", Kind::Absent),
    case(Client::OpenSsh, false, "o-d", "o-d2", Kind::File),
    case(Client::Paramiko, false, "p-a", "p-a2", Kind::Absent),
    case(Client::Paramiko, false, "p-b", "p-b2", Kind::File),
    case(Client::Paramiko, true, "p-c", "p-c2", Kind::Absent),
    case(Client::Paramiko, true, "p-d", "p-d2", Kind::File),
    Case {
        client: Client::Paramiko,
        replace: true,
        src: "p-dir",
        src_kind: Kind::Dir,
        dst: "p-dir2",
        dst_kind: Kind::Absent,
    },
    case(Client::Paramiko, true, "p-e", "p-edir", Kind::Dir),
];

#[derive(Debug, PartialEq)]
enum Outcome {
    Moved,
    /// Refused for a missing permission: a `denied` record with this error.
    Denied(String),
    /// Refused by rename semantics (no replace, or a directory target): an `operation` error.
    Conflict,
}

/// The rule under test.
fn expected(perms: &[&str], c: &Case) -> Outcome {
    if !perms.contains(&"rename") {
        return Outcome::Denied("rename not permitted".into());
    }
    let missing: Vec<&str> = ["write", "delete"].into_iter().filter(|p| !perms.contains(p)).collect();
    match c.dst_kind {
        Kind::Absent => Outcome::Moved,
        Kind::Dir => Outcome::Conflict,
        Kind::File if !c.replace => Outcome::Conflict,
        Kind::File if missing.is_empty() => Outcome::Moved,
        Kind::File => Outcome::Denied(format!(
            "replacing an existing object needs write and delete: {} not permitted",
            missing.join(" and ")
        )),
    }
}

/// Every object a path of `kind` holds: the path itself, or `path/f` for a directory.
fn object(path: &str, kind: Kind) -> String {
    if kind == Kind::Dir {
        format!("{path}/f")
    } else {
        path.to_owned()
    }
}

/// Body of `path` as the owner sees it over HTTPS, `None` if absent.
async fn fetch(gw: &TestGateway, path: &str) -> Option<Bytes> {
    let r = gw.call("owner", "GET", &format!("/v1/files/{path}"), Bytes::new()).await;
    match r.status {
        200 => Some(r.body),
        404 => None,
        other => panic!("GET {path}: {other} {:?}", r.body),
    }
}

const PARAMIKO_SCRIPT: &str = r#"
import json, sys, paramiko
host, port = sys.argv[1], int(sys.argv[2])
out = {}
for job in json.load(sys.stdin):
    t = paramiko.Transport((host, port))
    t.connect(username=job["user"], pkey=paramiko.PKey.from_path(job["key"]))
    sftp = paramiko.SFTPClient.from_transport(t)
    results = []
    for posix, src, dst in job["ops"]:
        try:
            (sftp.posix_rename if posix else sftp.rename)(src, dst)
            results.append("ok")
        except OSError as e:
            results.append(type(e).__name__)
    out[job["user"]] = results
    sftp.close()
    t.close()
print(json.dumps(out))
"#;

async fn run(mut cmd: tokio::process::Command, stdin: &str) -> String {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.as_bytes()).await.unwrap();
    drop(pipe);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_and_posix_rename_need_write_and_delete_to_replace() {
    let mut users = vec![UserSpec { name: "owner", tenant: "acme", home: "/shared", permissions: &["all"] }];
    users.extend(USERS.iter().map(|&(name, permissions)| UserSpec {
        name,
        tenant: "acme",
        home: "/shared",
        permissions,
    }));
    let gw = TestGateway::builder().users(users).sftp().start().await;

    // Each user's directory: every source and existing target, each holding its own path.
    for (user, _) in USERS {
        for c in &CASES {
            for (name, kind) in [(c.src, c.src_kind), (c.dst, c.dst_kind)] {
                if kind != Kind::Absent {
                    let path = object(&format!("{user}/{name}"), kind);
                    let r = gw.call("owner", "PUT", &format!("/v1/files/{path}"), Bytes::from(path.clone())).await;
                    assert_eq!(r.status, 201, "PUT {path}");
                }
            }
        }
    }

    // OpenSSH: one batch per user; `-` keeps the batch going after a refusal.
    let mut openssh = Vec::new();
    for (user, _) in USERS {
        let batch: String = CASES
            .iter()
            .filter(|c| c.client == Client::OpenSsh)
            .map(|c| format!("-rename {}/{user}/{} /{user}/{}\n", if c.replace { "" } else { "-l " }, c.src, c.dst))
            .collect();
        let (_, out) = gw.sftp_batch(user, &batch, &[]).await;
        openssh.push(out);
    }

    // paramiko: one process, one connection per user.
    let jobs: Vec<Value> = USERS
        .iter()
        .map(|(user, _)| {
            let ops: Vec<Value> = CASES
                .iter()
                .filter(|c| c.client == Client::Paramiko)
                .map(|c| serde_json::json!([c.replace, format!("{user}/{}", c.src), format!("{user}/{}", c.dst)]))
                .collect();
            serde_json::json!({"user": user, "key": gw.user_keys[*user], "ops": ops})
        })
        .collect();
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args(["-c", PARAMIKO_SCRIPT, "127.0.0.1", &gw.sftp_port().to_string()]);
    let paramiko: Value = serde_json::from_str(run(cmd, &Value::from(jobs).to_string()).await.trim()).unwrap();

    let audit = gw.audit();
    let mut failures = Vec::new();
    for ((user, perms), openssh_out) in USERS.iter().zip(&openssh) {
        let mut paramiko_results = paramiko[*user].as_array().unwrap().iter();
        for c in &CASES {
            let (src, dst) = (format!("{user}/{}", c.src), format!("{user}/{}", c.dst));
            let want = expected(perms, c);
            let what =
                format!("{user} {:?} {} {src} -> {dst}", c.client, if c.replace { "posix-rename" } else { "rename" });

            // What the client was told.
            let told = match c.client {
                Client::OpenSsh => {
                    let line = format!("remote rename \"/{src}\" to \"/{dst}\": ");
                    match openssh_out.lines().find_map(|l| l.split_once(&line).map(|(_, why)| why.trim())) {
                        None => "ok".to_owned(),
                        Some(why) => why.to_owned(),
                    }
                }
                Client::Paramiko => paramiko_results.next().unwrap().as_str().unwrap().to_owned(),
            };
            let want_told = match (&want, c.client) {
                (Outcome::Moved, _) => "ok",
                (Outcome::Denied(_), Client::OpenSsh) => "Permission denied",
                (Outcome::Conflict, Client::OpenSsh) => "Failure",
                (Outcome::Denied(_), Client::Paramiko) => "PermissionError",
                (Outcome::Conflict, Client::Paramiko) => "OSError",
            };
            if told != want_told {
                failures.push(format!("{what}: client told {told:?}, expected {want_told:?}"));
            }

            // What storage holds: a moved source, or both sides untouched.
            let moved = want == Outcome::Moved;
            let src_obj = object(&src, c.src_kind);
            let checks = if moved {
                vec![(src_obj.clone(), None), (object(&dst, c.src_kind), Some(src_obj.clone()))]
            } else {
                let dst_obj = object(&dst, c.dst_kind);
                let dst_body = (c.dst_kind != Kind::Absent).then(|| dst_obj.clone());
                vec![(src_obj.clone(), Some(src_obj.clone())), (dst_obj, dst_body)]
            };
            for (path, body) in checks {
                let got = fetch(&gw, &path).await;
                if got.as_deref() != body.as_deref().map(str::as_bytes) {
                    failures.push(format!("{what}: {path} holds {got:?}, expected {body:?}"));
                }
            }

            // The one outcome of this request (a refusal, or the outcome of its `intent`).
            let path = format!("{src} -> {dst}");
            let this = |r: &&Value| r["user"] == *user && r["operation"] == "rename" && r["path"] == path.as_str();
            let recs: Vec<&Value> = audit.iter().filter(this).filter(|r| r["event"] != "intent").collect();
            let [r] = recs.as_slice() else {
                failures.push(format!("{what}: expected one record, found {recs:#?}"));
                continue;
            };
            let intents = audit.iter().filter(this).filter(|i| i["event"] == "intent").collect::<Vec<_>>();
            let announced = match intents.as_slice() {
                [] => r["event"] == "denied",
                [i] => {
                    r["event"] == "operation"
                        && i["transfer_id"] == r["transfer_id"]
                        && i["seq"].as_u64() < r["seq"].as_u64()
                }
                _ => false,
            };
            if !announced {
                failures.push(format!(
                    "{what}: a change needs one intent before its outcome, found {intents:#?} for {r:#}"
                ));
            }
            assert_eq!(r["object_key"], format!("shared/{src} -> shared/{dst}"), "{r:#}");
            assert_eq!(r["protocol"], "sftp", "{r:#}");
            let ok = match &want {
                Outcome::Moved => r["event"] == "operation" && r["result"] == "ok",
                Outcome::Denied(why) => r["event"] == "denied" && r["result"] == "denied" && r["error"] == why.as_str(),
                Outcome::Conflict => r["event"] == "operation" && r["result"] == "error",
            };
            if !ok {
                failures.push(format!("{what}: expected {want:?}, record {r:#}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}
