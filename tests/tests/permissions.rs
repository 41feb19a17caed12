//! The permissions table of the README, row by row, with the real clients: every HTTPS
//! (hyper client) and SFTP (paramiko) operation is made by users holding exactly one
//! permission (or the set a row needs) and by users holding every permission but one. A
//! row is allowed exactly when the user holds what the table says; a refusal is HTTPS 403
//! `forbidden` / SFTP permission denied with one `denied` record naming the operation (SFTP
//! `stat` is the documented exception: refused without a record), and it changes nothing
//! in storage. One gateway, one paramiko process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use gateway_e2e::{TestGateway, UserSpec};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const ALL: [&str; 6] = ["list", "read", "write", "delete", "rename", "mkdir"];

/// The users: one permission each, every permission but one, and the set a replacing
/// rename needs.
const USERS: [(&str, &[&str]); 13] = [
    ("only-list", &["list"]),
    ("only-read", &["read"]),
    ("only-write", &["write"]),
    ("only-delete", &["delete"]),
    ("only-rename", &["rename"]),
    ("only-mkdir", &["mkdir"]),
    ("rename-write-delete", &["rename", "write", "delete"]),
    ("but-list", &["read", "write", "delete", "rename", "mkdir"]),
    ("but-read", &["list", "write", "delete", "rename", "mkdir"]),
    ("but-write", &["list", "read", "delete", "rename", "mkdir"]),
    ("but-delete", &["list", "read", "write", "rename", "mkdir"]),
    ("but-rename", &["list", "read", "write", "delete", "mkdir"]),
    ("but-mkdir", &["list", "read", "write", "delete", "rename"]),
];

/// What a row needs.
#[derive(Clone, Copy, Debug)]
enum Need {
    AllOf(&'static [&'static str]),
    AnyOf(&'static [&'static str]),
}

impl Need {
    fn met(self, perms: &[&str]) -> bool {
        match self {
            Need::AllOf(need) => need.iter().all(|p| perms.contains(p)),
            Need::AnyOf(need) => need.iter().any(|p| perms.contains(p)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    Https,
    Sftp,
}

/// One row of the README's table.
struct Row {
    proto: Proto,
    /// The request: HTTPS method, or the paramiko operation.
    op: &'static str,
    /// Path under the user's directory; `dir/` for a listing.
    path: &'static str,
    /// Second path (rename target).
    to: &'static str,
    need: Need,
    /// The `operation` of its `denied` record; `None`: refused without a record.
    audited: Option<&'static str>,
    /// What the user's directory holds afterwards when allowed / refused: (path, body).
    after: Effect,
}

#[derive(Clone, Copy, Debug)]
enum Effect {
    /// Read-only: nothing changes.
    None,
    /// `path` exists (with `body`) when allowed, absent when refused.
    Creates(&'static str, &'static [u8]),
    /// `path` holds `new` when allowed, its seed when refused.
    Replaces(&'static str, &'static [u8]),
    /// `path` is gone when allowed, still there when refused.
    Removes(&'static str),
    /// Directory `path` (listed) exists when allowed, absent when refused.
    MakesDir(&'static str),
    /// `from` moved to `to` (replacing what `to` held) when allowed; both unchanged when refused.
    Moves(&'static str, &'static str),
}

const NEW: &[u8] = b"new contents";

const ROWS: [Row; 17] = [
    Row {
        proto: Proto::Https,
        op: "GET",
        path: "dir/",
        to: "",
        need: Need::AllOf(&["list"]),
        audited: Some("list"),
        after: Effect::None,
    },
    Row {
        proto: Proto::Https,
        op: "GET",
        path: "h-read",
        to: "",
        need: Need::AllOf(&["read"]),
        audited: Some("download"),
        after: Effect::None,
    },
    Row {
        proto: Proto::Https,
        op: "HEAD",
        path: "h-read",
        to: "",
        need: Need::AllOf(&["read"]),
        audited: Some("stat"),
        after: Effect::None,
    },
    Row {
        proto: Proto::Https,
        op: "PUT",
        path: "h-new",
        to: "",
        need: Need::AllOf(&["write"]),
        audited: Some("upload"),
        after: Effect::Creates("h-new", NEW),
    },
    // An upload makes the directories above it: `write` alone, no `mkdir`.
    Row {
        proto: Proto::Https,
        op: "PUT",
        path: "deep/er/h-new",
        to: "",
        need: Need::AllOf(&["write"]),
        audited: Some("upload"),
        after: Effect::Creates("deep/er/h-new", NEW),
    },
    Row {
        proto: Proto::Https,
        op: "PUT",
        path: "h-over",
        to: "",
        need: Need::AllOf(&["write"]),
        audited: Some("upload"),
        after: Effect::Replaces("h-over", NEW),
    },
    Row {
        proto: Proto::Https,
        op: "DELETE",
        path: "h-del",
        to: "",
        need: Need::AllOf(&["delete"]),
        audited: Some("delete"),
        after: Effect::Removes("h-del"),
    },
    Row {
        proto: Proto::Sftp,
        op: "listdir",
        path: "dir",
        to: "",
        need: Need::AllOf(&["list"]),
        audited: Some("list"),
        after: Effect::None,
    },
    Row {
        proto: Proto::Sftp,
        op: "read",
        path: "s-read",
        to: "",
        need: Need::AllOf(&["read"]),
        audited: Some("download"),
        after: Effect::None,
    },
    Row {
        proto: Proto::Sftp,
        op: "stat",
        path: "s-read",
        to: "",
        need: Need::AnyOf(&["list", "read"]),
        audited: None,
        after: Effect::None,
    },
    Row {
        proto: Proto::Sftp,
        op: "put",
        path: "s-new",
        to: "",
        need: Need::AllOf(&["write"]),
        audited: Some("upload"),
        after: Effect::Creates("s-new", NEW),
    },
    Row {
        proto: Proto::Sftp,
        op: "put",
        path: "s-over",
        to: "",
        need: Need::AllOf(&["write"]),
        audited: Some("upload"),
        after: Effect::Replaces("s-over", NEW),
    },
    Row {
        proto: Proto::Sftp,
        op: "remove",
        path: "s-del",
        to: "",
        need: Need::AllOf(&["delete"]),
        audited: Some("delete"),
        after: Effect::Removes("s-del"),
    },
    Row {
        proto: Proto::Sftp,
        op: "rmdir",
        path: "s-empty",
        to: "",
        need: Need::AllOf(&["delete"]),
        audited: Some("rmdir"),
        after: Effect::Removes("s-empty/"),
    },
    Row {
        proto: Proto::Sftp,
        op: "mkdir",
        path: "s-made",
        to: "",
        need: Need::AllOf(&["mkdir"]),
        audited: Some("mkdir"),
        after: Effect::MakesDir("s-made/"),
    },
    Row {
        proto: Proto::Sftp,
        op: "rename",
        path: "s-mv",
        to: "s-mv2",
        need: Need::AllOf(&["rename"]),
        audited: Some("rename"),
        after: Effect::Moves("s-mv", "s-mv2"),
    },
    Row {
        proto: Proto::Sftp,
        op: "posix_rename",
        path: "s-rp",
        to: "s-rp2",
        need: Need::AllOf(&["rename", "write", "delete"]),
        audited: Some("rename"),
        after: Effect::Moves("s-rp", "s-rp2"),
    },
];

/// Objects the owner puts in each user's directory first; each holds its own name.
const SEEDED: [&str; 10] = ["dir/a", "h-read", "h-over", "h-del", "s-read", "s-over", "s-del", "s-mv", "s-rp", "s-rp2"];
/// Directories the owner makes (empty).
const SEEDED_DIRS: [&str; 1] = ["s-empty"];

/// paramiko: jobs `{user, key, ops: [[op, path, to]]}`, one connection each; per op "ok",
/// "ok <detail>" (names listed, bytes read) or "<ExceptionType>: <message>".
const PARAMIKO_SCRIPT: &str = r#"
import io, json, sys, paramiko
port = int(sys.argv[1])
out = {}
for job in json.load(sys.stdin):
    t = paramiko.Transport(("127.0.0.1", port))
    t.connect(username=job["user"], pkey=paramiko.PKey.from_path(job["key"]))
    sftp = paramiko.SFTPClient.from_transport(t)
    results = []
    for op, path, to in job["ops"]:
        try:
            detail = ""
            if op == "put":
                sftp.putfo(io.BytesIO(to.encode() if to else b"new contents"), path, confirm=False)
            elif op == "listdir":
                detail = ",".join(sorted(sftp.listdir(path)))
            elif op == "read":
                with sftp.open(path, "rb") as f:
                    detail = f.read().decode()
            elif op == "stat":
                sftp.stat(path)
            elif op == "remove":
                sftp.remove(path)
            elif op == "rmdir":
                sftp.rmdir(path)
            elif op == "mkdir":
                sftp.mkdir(path)
            elif op == "rename":
                sftp.rename(path, to)
            elif op == "posix_rename":
                sftp.posix_rename(path, to)
            results.append(("ok " + detail).strip())
        except OSError as e:
            results.append("%s: %s" % (type(e).__name__, e))
    out[job["user"]] = results
    sftp.close()
    t.close()
print(json.dumps(out))
"#;

async fn paramiko(gw: &TestGateway, jobs: Value) -> Value {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args(["-c", PARAMIKO_SCRIPT, &gw.sftp_port().to_string()]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().expect("python3 is installed");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(jobs.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await.unwrap().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "paramiko failed:\n{stdout}\n{stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Body of `path` as the owner sees it, `None` if absent; for `dir/`: `Some` listing when
/// the directory exists.
async fn fetch(gw: &TestGateway, path: &str) -> Option<Bytes> {
    let r = gw.call("owner", "GET", &format!("/v1/files/{path}"), Bytes::new()).await;
    match r.status {
        200 => Some(r.body),
        404 => None,
        other => panic!("owner GET {path}: {other} {:?}", r.body),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_permissions_table() {
    let started = std::time::Instant::now();
    let mut users = vec![UserSpec { name: "owner", tenant: "acme", home: "/shared", permissions: &["all"] }];
    users.extend(USERS.iter().map(|&(name, permissions)| UserSpec {
        name,
        tenant: "acme",
        home: "/shared",
        permissions,
    }));
    let gw = TestGateway::builder().users(users).sftp().start().await;

    // Seed every user's directory over SFTP as the owner (one connection).
    let mut seed = Vec::new();
    for (user, _) in USERS {
        for d in ["", "/dir"].into_iter().chain(SEEDED_DIRS.map(|d| format!("/{d}")).iter().map(String::as_str)) {
            seed.push(serde_json::json!(["mkdir", format!("/{user}{d}"), ""]));
        }
        for f in SEEDED {
            seed.push(serde_json::json!(["put", format!("/{user}/{f}"), f]));
        }
    }
    let owner_key = gw.user_keys["owner"].clone();
    let seeded = paramiko(&gw, serde_json::json!([{"user": "owner", "key": owner_key, "ops": seed}])).await;
    assert!(seeded["owner"].as_array().unwrap().iter().all(|r| r == "ok"), "seeding: {seeded}");

    // HTTPS rows: one request each.
    let mut https = Vec::new();
    for (user, _) in USERS {
        for row in ROWS.iter().filter(|r| r.proto == Proto::Https) {
            let body = if row.op == "PUT" { Bytes::from_static(NEW) } else { Bytes::new() };
            https.push(gw.call(user, row.op, &format!("/v1/files/{user}/{}", row.path), body).await);
        }
    }
    // SFTP rows: one paramiko connection per user.
    let jobs: Vec<Value> = USERS
        .iter()
        .map(|(user, _)| {
            let ops: Vec<Value> = ROWS
                .iter()
                .filter(|r| r.proto == Proto::Sftp)
                .map(|r| {
                    let to = if r.to.is_empty() { String::new() } else { format!("/{user}/{}", r.to) };
                    serde_json::json!([r.op, format!("/{user}/{}", r.path), to])
                })
                .collect();
            serde_json::json!({"user": user, "key": gw.user_keys[*user], "ops": ops})
        })
        .collect();
    let sftp = paramiko(&gw, Value::from(jobs)).await;

    let audit = gw.audit();
    let mut failures = Vec::new();
    let mut https_replies = https.iter();
    for (user, perms) in USERS {
        let mut sftp_results = sftp[user].as_array().unwrap().iter();
        for row in &ROWS {
            let allowed = row.need.met(perms);
            let what = format!("{user} {:?} {} {}", row.proto, row.op, row.path);
            let path = format!("{user}/{}", row.path);

            // What the client was told.
            match row.proto {
                Proto::Https => {
                    let r = https_replies.next().unwrap();
                    let want = match (allowed, row.op) {
                        (false, _) => 403,
                        (true, "PUT") => 201,
                        (true, "DELETE") => 204,
                        (true, _) => 200,
                    };
                    if r.status != want {
                        failures.push(format!("{what}: status {} {:?}, expected {want}", r.status, r.body));
                    } else if (!allowed && row.op != "HEAD" && r.json()["error"] != "forbidden")
                        || (allowed && row.op == "GET" && row.path == "h-read" && r.body != "h-read")
                    {
                        failures.push(format!("{what}: body {:?}", r.body));
                    } else if allowed && row.path == "dir/" && r.json()["entries"][0]["name"] != "a" {
                        failures.push(format!("{what}: listing {:?}", r.body));
                    }
                }
                Proto::Sftp => {
                    let told = sftp_results.next().unwrap().as_str().unwrap();
                    let want = match (allowed, row.op) {
                        (false, _) => "PermissionError: ",
                        (true, "listdir") => "ok a",
                        (true, "read") => "ok s-read",
                        (true, _) => "ok",
                    };
                    let ok = if allowed { told == want } else { told.starts_with(want) };
                    if !ok {
                        failures.push(format!("{what}: client told {told:?}, expected {want:?}"));
                    }
                }
            }

            // The audit trail: one `denied` record for a refusal, none when allowed.
            let proto = if row.proto == Proto::Https { "https" } else { "sftp" };
            let denied: Vec<&Value> = audit
                .iter()
                .filter(|r| r["event"] == "denied" && r["user"] == user && r["protocol"] == proto)
                .filter(|r| {
                    let p = r["path"].as_str().unwrap_or_default();
                    p == path || p == format!("{path}/") || p.starts_with(&format!("{path} -> "))
                })
                // HEAD and GET of `h-read` share a path: told apart by operation.
                .filter(|r| r["operation"] == row.audited.unwrap_or("stat"))
                .collect();
            let want_records = usize::from(!allowed && row.audited.is_some());
            if denied.len() != want_records {
                failures.push(format!("{what}: {} denied records, expected {want_records}: {denied:#?}", denied.len()));
            } else if let [r] = denied.as_slice() {
                let op = row.audited.unwrap();
                let why = r["error"].as_str().unwrap_or_default();
                let named = if row.op == "posix_rename" && perms.contains(&"rename") {
                    why.starts_with("replacing an existing object needs write and delete")
                } else {
                    why == format!("{op} not permitted")
                };
                if r["result"] != "denied" || !named {
                    failures.push(format!("{what}: denied record {r:#}"));
                }
            }

            // What storage holds afterwards.
            let at = |p: &str| format!("{user}/{p}");
            let check = match row.after {
                Effect::None => vec![],
                Effect::Creates(p, body) => vec![(at(p), allowed.then_some(body.to_vec()))],
                Effect::Replaces(p, new) => {
                    vec![(at(p), Some(if allowed { new.to_vec() } else { p.as_bytes().to_vec() }))]
                }
                Effect::Removes(p) if p.ends_with('/') => {
                    vec![(at(p), (!allowed).then(|| br#""entries":[]"#.to_vec()))]
                }
                Effect::Removes(p) => vec![(at(p), (!allowed).then(|| p.as_bytes().to_vec()))],
                Effect::MakesDir(p) => vec![(at(p), allowed.then(|| br#""entries":[]"#.to_vec()))],
                Effect::Moves(from, to) => {
                    let to_before = SEEDED.contains(&to).then(|| to.as_bytes().to_vec());
                    vec![
                        (at(from), (!allowed).then(|| from.as_bytes().to_vec())),
                        (at(to), if allowed { Some(from.as_bytes().to_vec()) } else { to_before }),
                    ]
                }
            };
            for (p, want) in check {
                let got = fetch(&gw, &p).await;
                let matches = match (&got, &want) {
                    (None, None) => true,
                    // A listing: holds the expected fragment.
                    (Some(g), Some(w)) if p.ends_with('/') => g.windows(w.len()).any(|x| x == w.as_slice()),
                    (Some(g), Some(w)) => g == w,
                    _ => false,
                };
                if !matches {
                    failures.push(format!("{what}: {p} holds {got:?}, expected {:?}", want.map(Bytes::from)));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    // Every permission was both granted and withheld somewhere in the matrix.
    for p in ALL {
        assert!(USERS.iter().any(|(_, ps)| *ps == [p]) && USERS.iter().any(|(_, ps)| !ps.contains(&p)), "{p}");
    }
    eprintln!("permissions matrix: {} users x {} rows in {:?}", USERS.len(), ROWS.len(), started.elapsed());
}
