//! Names that deceive: a bidirectional override (U+202E shows `a<U+202E>gnp.exe` as
//! "aexe.png"), a zero-width space or a BOM in a path segment is refused over HTTPS (curl:
//! 400 `invalid_path`) and SFTP (paramiko: permission denied) with a `denied` record that
//! names the code point and writes it as `<U+XXXX>`; nothing is stored. `[storage]
//! refuse_in_names = "bidi"` lets zero-width joiners through and still refuses overrides.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use gateway_e2e::TestGateway;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// Percent-encoded names (as curl sends them) and the refusal each must get.
const URL_NAMES: [(&str, &str); 4] = [
    ("a%E2%80%AEgnp.exe", "U+202E RIGHT-TO-LEFT OVERRIDE is not allowed in names"),
    ("zero%E2%80%8Bwidth.txt", "U+200B ZERO WIDTH SPACE is not allowed in names"),
    ("%EF%BB%BFbom.txt", "U+FEFF ZERO WIDTH NO-BREAK SPACE (BYTE ORDER MARK) is not allowed in names"),
    // In a directory segment too.
    ("in%E2%81%A7side/x.txt", "U+2067 RIGHT-TO-LEFT ISOLATE is not allowed in names"),
];

/// paramiko: each job is `[op, path, path2]`; prints one result per job: "ok" or
/// "<ExceptionType>: <message>".
const PARAMIKO_SCRIPT: &str = r#"
import io, json, sys, paramiko
port, user, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username=user, pkey=paramiko.PKey.from_path(key))
sftp = paramiko.SFTPClient.from_transport(t)
out = []
for op, path, path2 in json.load(sys.stdin):
    try:
        if op == "put":
            sftp.putfo(io.BytesIO(b"payload"), path, confirm=False)
        elif op == "mkdir":
            sftp.mkdir(path)
        elif op == "rename":
            sftp.rename(path, path2)
        elif op == "stat":
            sftp.stat(path)
        elif op == "open":
            sftp.open(path, "rb").close()
        out.append("ok")
    except OSError as e:
        out.append("%s: %s" % (type(e).__name__, e))
sftp.close()
t.close()
print(json.dumps(out))
"#;

async fn paramiko(gw: &TestGateway, user: &str, jobs: Value) -> Vec<String> {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args(["-c", PARAMIKO_SCRIPT, &gw.sftp_port().to_string(), user, gw.user_keys[user].to_str().unwrap()]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().expect("python3 is installed");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(jobs.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.unwrap().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "paramiko failed:\n{stdout}\n{stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The raw trail holds none of these characters: refusals name them instead.
fn assert_trail_free_of(gw: &TestGateway, chars: &[char]) {
    let raw = std::fs::read_to_string(&gw.audit_path).unwrap();
    for c in chars {
        assert!(!raw.contains(*c), "the audit trail holds U+{:04X} raw", u32::from(*c));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_and_bidi_names_are_refused_over_https_and_sftp() {
    let gw = TestGateway::builder().sftp().start().await;
    let auth = format!("Authorization: Bearer {}", gw.token("alice"));
    assert_eq!(gw.call("alice", "PUT", "/v1/files/plain.txt", Bytes::from_static(b"ok")).await.status, 201);

    // HTTPS with curl: upload, download, delete, each refused with the code point named.
    for (name, message) in URL_NAMES {
        let url = gw.url(&format!("/v1/files/{name}"));
        for method in ["PUT", "GET", "DELETE"] {
            let mut args = vec!["-X", method, "-H", auth.as_str(), "-w", "\n%{http_code}", url.as_str()];
            if method == "PUT" {
                args.splice(0..0, ["--data-binary", "payload"]);
            }
            let (code, out) = gw.curl(&args).await;
            assert_eq!(code, 0, "curl {method} {name}");
            let out = String::from_utf8(out).unwrap();
            let (body, status) = out.rsplit_once('\n').unwrap();
            assert_eq!(status, "400", "{method} {name}: {body}");
            let body: Value = serde_json::from_str(body).unwrap();
            assert_eq!(body["error"], "invalid_path", "{method} {name}");
            assert_eq!(body["message"], message, "{method} {name}");
            let path = format!("/v1/files/{name}");
            gw.wait_audit(&format!("denied {method} {name}"), |r| {
                r["event"] == "denied"
                    && r["result"] == "denied"
                    && r["user"] == "alice"
                    && r["protocol"] == "https"
                    && r["operation"] == method
                    && r["path"] == path.as_str()
                    && r["error"] == message
            })
            .await;
        }
    }

    // SFTP with paramiko: upload, mkdir, rename onto, stat, open for reading.
    let names = [
        ("a\u{202E}gnp.exe", "a<U+202E>gnp.exe", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("zero\u{200B}width.txt", "zero<U+200B>width.txt", "U+200B ZERO WIDTH SPACE"),
        ("\u{FEFF}bom.txt", "<U+FEFF>bom.txt", "U+FEFF ZERO WIDTH NO-BREAK SPACE (BYTE ORDER MARK)"),
    ];
    let mut jobs = Vec::new();
    let mut expected = Vec::new();
    for (raw, shown, what) in names {
        for (op, path, path2, audited_op, audited_path) in [
            ("put", format!("/{raw}"), String::new(), "upload", format!("/{shown}")),
            ("put", format!("/sub/{raw}"), String::new(), "upload", format!("/sub/{shown}")),
            ("mkdir", format!("/d{raw}"), String::new(), "mkdir", format!("/d{shown}")),
            ("rename", "/plain.txt".to_owned(), format!("/{raw}"), "rename", format!("/{shown}")),
            ("stat", format!("/{raw}"), String::new(), "stat", format!("/{shown}")),
            ("open", format!("/{raw}"), String::new(), "download", format!("/{shown}")),
        ] {
            jobs.push(serde_json::json!([op, path, path2]));
            expected.push((op, raw, what, audited_op, audited_path));
        }
    }
    let results = paramiko(&gw, "alice", Value::from(jobs)).await;
    assert_eq!(results.len(), expected.len());
    let audit = gw.audit();
    for (result, (op, raw, what, audited_op, audited_path)) in results.iter().zip(&expected) {
        let message = format!("{what} is not allowed in names");
        assert_eq!(result, &format!("PermissionError: [Errno 13] {message}"), "paramiko {op} {raw:?}");
        let found = audit.iter().any(|r| {
            r["event"] == "denied"
                && r["protocol"] == "sftp"
                && r["user"] == "alice"
                && r["operation"] == *audited_op
                && r["path"] == audited_path.as_str()
                && r["error"] == message.as_str()
        });
        assert!(found, "no denied record for paramiko {op} {audited_path}; trail:\n{audit:#?}");
    }

    // Nothing was stored or renamed, and the trail never holds the characters themselves.
    assert_eq!(gw.stored_objects().await, ["acme/partners/alice/plain.txt"]);
    let listing = gw.call("alice", "GET", "/v1/files/", Bytes::new()).await;
    let listed = listing.json();
    let names: Vec<&str> = listed["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["plain.txt"], "{:?}", listing.body);
    assert_trail_free_of(&gw, &['\u{202E}', '\u{200B}', '\u{FEFF}', '\u{2067}']);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_rule_admits_zero_width_joiners_and_still_refuses_overrides() {
    let gw = TestGateway::builder().sftp().storage_settings("refuse_in_names = \"bidi\"").start().await;
    let auth = format!("Authorization: Bearer {}", gw.token("alice"));
    // A Persian name needs U+200C ZERO WIDTH NON-JOINER: accepted under "bidi".
    let persian = "%D9%85%DB%8C%E2%80%8C%D8%AE%D9%88%D8%A7%D9%87%D9%85.txt";
    let url = gw.url(&format!("/v1/files/{persian}"));
    let (code, out) = gw
        .curl(&["-X", "PUT", "--data-binary", "zwnj", "-H", &auth, "-w", "%{http_code}", "-o", "/dev/null", &url])
        .await;
    assert_eq!((code, String::from_utf8(out).unwrap().as_str()), (0, "201"));
    let url = gw.url("/v1/files/a%E2%80%AEgnp.exe");
    let (code, out) =
        gw.curl(&["-X", "PUT", "--data-binary", "x", "-H", &auth, "-w", "%{http_code}", "-o", "/dev/null", &url]).await;
    assert_eq!((code, String::from_utf8(out).unwrap().as_str()), (0, "400"));

    let jobs = serde_json::json!([["put", "/emoji\u{2764}\u{FE0F}.png", ""], ["put", "/a\u{2066}b.txt", ""]]);
    let results = paramiko(&gw, "alice", jobs).await;
    assert_eq!(results[0], "ok");
    assert_eq!(results[1], "PermissionError: [Errno 13] U+2066 LEFT-TO-RIGHT ISOLATE is not allowed in names");
    gw.wait_audit("denied isolate", |r| {
        r["event"] == "denied" && r["protocol"] == "sftp" && r["path"] == "/a<U+2066>b.txt"
    })
    .await;
    assert_eq!(
        gw.stored_objects().await,
        ["acme/partners/alice/emoji\u{2764}\u{FE0F}.png", "acme/partners/alice/می\u{200C}خواهم.txt"]
    );
}
