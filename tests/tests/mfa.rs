//! MFA (TOTP) end to end, with real clients and codes computed by `pyotp` from the
//! `otpauth://` URI that `gateway users mfa enroll` prints (enrolled while the gateway runs:
//! no restart). SFTP: paramiko (public key → partial success → keyboard-interactive) and
//! OpenSSH `sftp` (the code fed through `SSH_ASKPASS`); good, replayed and wrong codes, a
//! user without enrolment, a user without MFA. HTTPS: curl with token + `X-Gateway-TOTP`
//! (good, missing, wrong, replayed; later requests on the same connection need no new code)
//! and token + a client certificate bound to the user (no code). Refusals are audited with
//! their reason and raise an `mfa_failure` alert. The CLI: URI shape, secret file 0600 and
//! sealed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gateway_e2e::{python, TestGateway, UserSpec};

/// `otp.py URI OFFSET`: the code of the step at now + OFFSET seconds.
const OTP: &str = r#"
import sys, time, pyotp
print(pyotp.parse_uri(sys.argv[1]).at(int(time.time()) + int(sys.argv[2])))
"#;

/// `kbd.py PORT KEY USER URI CODES...`: for each code (`now` = the current one, reused as it
/// was first computed), one SSH connection: public key, then keyboard-interactive with that
/// code, then an SFTP listing. Prints one JSON line per attempt.
const KBD: &str = r#"
import sys, json, socket, paramiko, pyotp
port, key, user, uri = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
otp = pyotp.parse_uri(uri)
now = otp.now()
pkey = paramiko.Ed25519Key.from_private_key_file(key)
for spec in sys.argv[5:]:
    if spec.startswith("loop:"):
        # One connection, the same wrong code again and again: how many prompts are answered
        # before the server ends it.
        t = paramiko.transport.ServiceRequestingTransport(socket.create_connection(("127.0.0.1", port)))
        t.start_client(timeout=20)
        t.auth_publickey(user, pkey)
        answered = []
        def wrong(title, instructions, ps):
            answered.append(1)
            return [spec[5:] for _ in ps]
        for _ in range(10):
            try:
                t.auth_interactive(user, wrong)
                break
            except paramiko.AuthenticationException:
                if not t.is_active():
                    break
            except Exception:
                break
        print(json.dumps({"code": "loop", "answered": len(answered), "active": t.is_active()}), flush=True)
        t.close()
        continue
    code = now if spec == "now" else spec
    # ServiceRequestingTransport (paramiko >= 3.2) asks for the ssh-userauth service once;
    # the plain Transport asks again before each method, which russh ignores.
    t = paramiko.transport.ServiceRequestingTransport(socket.create_connection(("127.0.0.1", port)))
    t.start_client(timeout=20)
    out = {"code": spec}
    try:
        out["after_key"] = t.auth_publickey(user, pkey)
        prompts = []
        def handler(title, instructions, ps):
            prompts.extend([p, e] for p, e in ps)
            return [code for _ in ps]
        t.auth_interactive(user, handler)
        out["prompts"] = prompts
        out["listing"] = paramiko.SFTPClient.from_transport(t).listdir(".")
        out["result"] = "ok"
    except paramiko.AuthenticationException as e:
        out["prompts"] = prompts if "prompts" in dir() else []
        out["result"] = "refused"
    finally:
        t.close()
    print(json.dumps(out), flush=True)
"#;

const GINA_PASSWORD: &str = "correct horse battery staple";

fn users() -> Vec<UserSpec> {
    let user = |name| UserSpec { name, tenant: "acme", home: "/", permissions: &["list", "read"] };
    vec![user("alice"), user("carol"), user("dave"), user("erin"), user("frank"), user("gina"), user("reader")]
}

async fn enroll(config: &Path, user: &str) -> String {
    let out = tokio::process::Command::new(TestGateway::gateway_bin())
        .args(["users", "mfa", "enroll", "--no-qr", "--config"])
        .arg(config)
        .arg(user)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "enroll {user}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().next().unwrap().to_owned()
}

async fn code(dir: &Path, uri: &str, offset: i64) -> String {
    let script = dir.join("otp.py");
    std::fs::write(&script, OTP).unwrap();
    python(&[script.to_str().unwrap(), uri, &offset.to_string()], Duration::from_secs(30)).await.trim().to_owned()
}

/// OpenSSH `sftp` (commands on stdin, not `-b`, which would set BatchMode) with
/// publickey,keyboard-interactive; the code comes from an SSH_ASKPASS program that prints
/// `code_file` and logs its prompt. Returns (success, output).
async fn openssh_sftp(gw: &TestGateway, user: &str, dir: &Path, code: &str) -> (bool, String) {
    openssh_sftp_with(gw, user, dir, code, None).await
}

/// [`openssh_sftp`]; with `password`, the first factor is that password (asked through the
/// same SSH_ASKPASS program, which tells the prompts apart).
async fn openssh_sftp_with(
    gw: &TestGateway,
    user: &str,
    dir: &Path,
    code: &str,
    password: Option<&str>,
) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    let code_file = dir.join(format!("code-{user}"));
    std::fs::write(&code_file, code).unwrap();
    let password_file = dir.join(format!("password-{user}"));
    std::fs::write(&password_file, password.unwrap_or("")).unwrap();
    let askpass = dir.join(format!("askpass-{user}.sh"));
    std::fs::write(
        &askpass,
        format!(
            "#!/bin/sh\necho \"$1\" >> {:?}\ncase \"$1\" in *Verification*) cat {:?};; *) cat {:?};; esac\n",
            dir.join("prompts.log"),
            code_file,
            password_file
        ),
    )
    .unwrap();
    let first = if password.is_some() { "password" } else { "publickey" };
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = tokio::process::Command::new("sftp")
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes"])
        .args([
            "-o",
            &format!("PreferredAuthentications={first},keyboard-interactive"),
            "-o",
            "NumberOfPasswordPrompts=1",
        ])
        .args(["-o", "LogLevel=ERROR", "-P", &gw.sftp_port().to_string(), "-i"])
        .arg(&gw.user_keys[user])
        .arg(format!("{user}@127.0.0.1"))
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("sftp is installed");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"pwd\nbye\n").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.unwrap().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && text.contains("Remote working directory"), text)
}

/// curl: (HTTP status(es), joined by ',') for `args` (token and headers included by the caller).
async fn curl(gw: &TestGateway, extra: &[String]) -> String {
    let mut args: Vec<String> = vec!["-o".into(), "/dev/null".into(), "-w".into(), "%{http_code},".into()];
    args.extend(extra.iter().cloned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, out) = gw.curl(&refs).await;
    String::from_utf8_lossy(&out).trim_end_matches(',').to_owned()
}

fn failure<'a>(records: &'a [serde_json::Value], user: &str, error: &str) -> Vec<&'a serde_json::Value> {
    records.iter().filter(|r| r["event"] == "auth_failure" && r["user"] == user && r["error"] == error).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_over_sftp_and_https() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A client CA and a certificate for frank (bound to him: token + certificate = two factors).
    let options = gateway_certs::dev::DevSetOptions { client_name: "frank".into(), ..Default::default() };
    let pki = gateway_certs::dev::create_dev_set(&dir.join("clients"), &options, false).unwrap();
    let hmac_key = dir.join("alert.key");
    gateway::secrets::write_secret_file(&hmac_key, b"0123456789abcdef0123456789abcdef").unwrap();
    let gw = TestGateway::builder()
        .local_only()
        .sftp()
        .sftp_settings("max_auth_attempts = 3")
        .users(users())
        .https_settings(&format!("\n[https.client_auth]\nmode = \"optional\"\nca = {:?}\n", pki.ca.cert))
        .user_settings("alice", "mfa = \"totp\"")
        .user_settings("carol", "mfa = \"totp-sha1\"")
        .user_settings("dave", "mfa = \"totp\"")
        .user_settings("gina", "mfa = \"totp\"")
        .password("gina", GINA_PASSWORD)
        .user_settings("erin", "mfa = \"totp\"")
        .user_settings("frank", "mfa = \"totp\"\nclient_certificates = [\"cn:frank\"]")
        // [alerts] to a receiver that is not there: raised alerts wait in the outbox.
        .defender_settings(&format!(
            "enabled = false\n\n[alerts]\nwebhook_url = \"http://127.0.0.1:9/hook\"\nhmac_key_file = {hmac_key:?}\n"
        ))
        .start()
        .await;
    // Enrolled while the gateway runs.
    let mut uris = std::collections::HashMap::new();
    for user in ["alice", "carol", "erin", "frank", "gina"] {
        uris.insert(user, enroll(&gw.config_path, user).await);
    }
    assert!(uris["carol"].contains("algorithm=SHA1") && uris["alice"].contains("algorithm=SHA256"));

    // --- SFTP with paramiko: key → partial success → the code prompt; good, replayed, wrong.
    let kbd = dir.join("kbd.py");
    std::fs::write(&kbd, KBD).unwrap();
    let wrong = code(dir, &uris["alice"], 3600).await;
    let port = gw.sftp_port().to_string();
    let key = gw.user_keys["alice"].display().to_string();
    let args = [kbd.to_str().unwrap(), &port, &key, "alice", &uris["alice"], "now", "now", &wrong, "12345"];
    let out = python(&args, Duration::from_secs(60)).await;
    let tries: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(tries.len(), 4, "{out}");
    let alice_records: Vec<_> = gw.audit().into_iter().filter(|r| r["user"] == "alice").collect();
    assert_eq!(tries[0]["after_key"], serde_json::json!(["keyboard-interactive"]), "{out}\n{alice_records:#?}");
    assert_eq!(tries[0]["prompts"], serde_json::json!([["Verification code: ", false]]), "{out}\n{alice_records:#?}");
    assert_eq!(tries[0]["result"], "ok", "{out}");
    for t in &tries[1..] {
        assert_eq!(t["result"], "refused", "{out}");
    }
    let ok = gw.wait_audit("alice totp login", |r| r["event"] == "auth_success" && r["user"] == "alice").await;
    assert_eq!(ok["auth_method"], "publickey+totp");
    gw.wait_audit("alice malformed", |r| r["user"] == "alice" && r["error"] == "mfa code is not 6 digits").await;
    // Tries on one connection are capped by sftp.max_auth_attempts (3 here).
    let args = [kbd.to_str().unwrap(), &port, &key, "alice", &uris["alice"], &format!("loop:{wrong}")];
    let out = python(&args, Duration::from_secs(60)).await;
    let looped: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((looped["answered"].as_u64(), looped["active"].as_bool()), (Some(3), Some(false)), "{out}");
    let records = gw.audit();
    let replay = failure(&records, "alice", "mfa code already used (replay)");
    assert_eq!(replay.len(), 1, "{records:#?}");
    assert_eq!(replay[0]["auth_method"], "keyboard-interactive");
    assert!(
        replay[0]["credential_id"].as_str().unwrap().starts_with("SHA256:"),
        "the key's fingerprint: {:?}",
        replay[0]
    );
    assert_eq!(failure(&records, "alice", "wrong mfa code").len(), 1 + 3, "{records:#?}");
    // The code never reaches the trail.
    let trail = std::fs::read_to_string(&gw.audit_path).unwrap();
    assert!(!trail.contains(&wrong), "a presented code is in the audit trail");

    // --- OpenSSH sftp, SHA-1 user, the code through SSH_ASKPASS: good, then the same again.
    let carol_code = code(dir, &uris["carol"], 0).await;
    let (ok, text) = openssh_sftp(&gw, "carol", dir, &carol_code).await;
    assert!(ok, "carol with a good code: {text}");
    let prompts = std::fs::read_to_string(dir.join("prompts.log")).unwrap();
    assert!(prompts.contains("Verification code:"), "askpass prompts: {prompts}");
    let (ok, text) = openssh_sftp(&gw, "carol", dir, &carol_code).await;
    assert!(!ok, "a replayed code must be refused: {text}");
    gw.wait_audit("carol replay", |r| r["user"] == "carol" && r["error"] == "mfa code already used (replay)").await;
    let (ok, text) = openssh_sftp(&gw, "carol", dir, "000000").await;
    assert!(!ok || carol_code == "000000", "a wrong code must be refused: {text}");
    let carol_ok = gw.wait_audit("carol login", |r| r["event"] == "auth_success" && r["user"] == "carol").await;
    assert_eq!(carol_ok["auth_method"], "publickey+totp");

    // --- Password, then the code (both through SSH_ASKPASS).
    let gina_code = code(dir, &uris["gina"], 0).await;
    let (ok, text) = openssh_sftp_with(&gw, "gina", dir, &gina_code, Some(GINA_PASSWORD)).await;
    assert!(ok, "gina with password and code: {text}");
    let g = gw.wait_audit("gina login", |r| r["event"] == "auth_success" && r["user"] == "gina").await;
    assert_eq!(g["auth_method"], "password+totp");
    let next = code(dir, &uris["gina"], 30).await;
    let (ok, text) = openssh_sftp_with(&gw, "gina", dir, &next, Some("not her password")).await;
    assert!(!ok, "a wrong password is not rescued by a good code: {text}");

    // --- Not enrolled: refused at the key, with the reason; without MFA: key alone, as before.
    let (ok, text) = openssh_sftp(&gw, "dave", dir, "123456").await;
    assert!(!ok, "dave is not enrolled: {text}");
    gw.wait_audit("dave", |r| r["user"] == "dave" && r["error"] == "mfa required but the user is not enrolled").await;
    let (ok, text) = gw.sftp_batch("reader", "pwd\n", &[]).await;
    assert!(ok, "reader (no MFA) with the key alone: {text}");
    let r = gw.wait_audit("reader", |r| r["event"] == "auth_success" && r["user"] == "reader").await;
    assert_eq!(r["auth_method"], "publickey");

    // --- HTTPS: token + X-Gateway-TOTP.
    let list = gw.url("/v1/files/");
    let bearer = |u: &str| vec!["-H".to_owned(), format!("Authorization: Bearer {}", gw.token(u))];
    let totp = |c: &str| vec!["-H".to_owned(), format!("X-Gateway-TOTP: {c}")];
    let erin_code = code(dir, &uris["erin"], 0).await;
    let with = |c: &str| [bearer("erin"), totp(c), vec![list.clone()]].concat();
    assert_eq!(curl(&gw, &[bearer("erin"), vec![list.clone()]].concat()).await, "401", "no code");
    assert_eq!(curl(&gw, &with("99999x")).await, "401", "malformed");
    let erin_wrong = code(dir, &uris["erin"], 3600).await;
    assert_eq!(curl(&gw, &with(&erin_wrong)).await, "401", "wrong");
    assert_eq!(curl(&gw, &with(&erin_code)).await, "200", "good");
    assert_eq!(curl(&gw, &with(&erin_code)).await, "401", "replayed on a new connection");
    // One connection: the next step's code on the first request; the second request (curl
    // --next, same connection) carries no code and is admitted by the connection's factor.
    let next = code(dir, &uris["erin"], 30).await;
    let two = [
        with(&next),
        vec![
            "--next".into(),
            "--cacert".into(),
            gw.ca_pem.display().to_string(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code},%{num_connects}".into(),
        ],
        bearer("erin"),
        vec![list.clone()],
    ]
    .concat();
    assert_eq!(curl(&gw, &two).await, "200,200,0", "second request on the same connection");
    let records = gw.audit();
    for reason in [
        "mfa required: no X-Gateway-TOTP header and no client certificate bound to the user",
        "mfa code is not 6 digits",
        "wrong mfa code",
        "mfa code already used (replay)",
    ] {
        let f = failure(&records, "erin", reason);
        assert_eq!(f.len(), 1, "{reason}: {records:#?}");
        assert_eq!(f[0]["protocol"], "https");
    }
    assert!(records
        .iter()
        .any(|r| r["event"] == "auth_success" && r["user"] == "erin" && r["auth_method"] == "bearer+totp"));
    assert!(!std::fs::read_to_string(&gw.audit_path).unwrap().contains(&erin_code));

    // --- HTTPS: token + frank's bound certificate = two factors, no code; certificate alone is one.
    let cert = vec![
        "--cert".to_owned(),
        pki.client.cert.display().to_string(),
        "--key".into(),
        pki.client.key.display().to_string(),
    ];
    assert_eq!(curl(&gw, &[cert.clone(), bearer("frank"), vec![list.clone()]].concat()).await, "200");
    assert_eq!(curl(&gw, &[cert.clone(), vec![list.clone()]].concat()).await, "401", "certificate alone");
    let frank_code = code(dir, &uris["frank"], 0).await;
    assert_eq!(curl(&gw, &[cert, totp(&frank_code), vec![list.clone()]].concat()).await, "200", "certificate + code");
    let records = gw.audit();
    assert!(records.iter().any(|r| r["user"] == "frank" && r["auth_method"] == "bearer+client_certificate"));
    assert!(records.iter().any(|r| r["user"] == "frank" && r["auth_method"] == "client_certificate+totp"));
    // A user without MFA: token alone, as before.
    assert_eq!(curl(&gw, &[bearer("reader"), vec![list.clone()]].concat()).await, "200");

    // --- Alerts: alice (3 refusals over SFTP) and erin (4 over HTTPS) each raised one.
    let outbox = gw.dir.path().join("data/alerts/outbox");
    let deadline = Instant::now() + Duration::from_secs(10);
    let alerts = loop {
        let alerts: Vec<serde_json::Value> = gateway_e2e::walk_files(&outbox)
            .iter()
            .filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok())
            .filter(|a: &serde_json::Value| a["kind"] == "mfa_failure")
            .collect();
        if alerts.len() >= 2 || Instant::now() > deadline {
            break alerts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let users: Vec<&str> = alerts.iter().map(|a| a["scope"]["users"][0].as_str().unwrap()).collect();
    assert!(users.contains(&"alice") && users.contains(&"erin"), "{alerts:#?}");
    assert!(alerts.iter().all(|a| a["scope"]["sources"][0] == "127.0.0.1"), "{alerts:#?}");
    eprintln!("mfa e2e took {:?}", started.elapsed());
}

/// `gateway users mfa enroll`: the URI parses (pyotp) with issuer, algorithm, digits and
/// period; the secret file is 0600 and does not hold the secret in the clear; a second
/// enrolment needs --force; the QR code is printed by default.
#[tokio::test]
async fn enroll_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"production\"\ndata_dir = {:?}\n[mfa]\nissuer = \"ACME Files\"\n[[tenants]]\nname = \"acme\"\n\
             [[users]]\nname = \"alice\"\ntenant = \"acme\"\nhome = \"/\"\npermissions = [\"read\"]\nmfa = \"totp\"\n",
            tmp.path().join("data")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(TestGateway::gateway_bin())
        .args(["users", "mfa", "enroll", "--config"])
        .arg(&config)
        .arg("alice")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let uri = stdout.lines().next().unwrap();
    assert!(stdout.contains('█') || stdout.contains('▀'), "no QR code: {stdout}");
    let check = r#"
import sys, base64, pyotp, urllib.parse
uri = sys.argv[1]
t = pyotp.parse_uri(uri)
q = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)
secret = base64.b32decode(t.secret + "=" * (-len(t.secret) % 8))
print(t.name, t.issuer, t.digest().name, t.digits, t.interval, len(secret), secret.hex())
"#;
    let script = tmp.path().join("check.py");
    std::fs::write(&script, check).unwrap();
    let parsed = python(&[script.to_str().unwrap(), uri], Duration::from_secs(30)).await;
    let fields: Vec<&str> = parsed.split_whitespace().collect();
    assert_eq!(&fields[..7], &["alice", "ACME", "Files", "sha256", "6", "30", "32"], "{parsed}");
    let secret = hex::decode(fields[7]).unwrap();
    let file: PathBuf = tmp.path().join("data/mfa/secrets/alice.totp");
    for f in [&file, &tmp.path().join("data/mfa/mfa.key")] {
        assert_eq!(std::fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600, "{f:?}");
    }
    let sealed = std::fs::read(&file).unwrap();
    assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_slice()), "secret stored in the clear");
    let b32 = uri.split("secret=").nth(1).unwrap().split('&').next().unwrap();
    assert!(!String::from_utf8_lossy(&sealed).contains(b32));
    // Again without --force: refused, the enrolment kept.
    let again = std::process::Command::new(TestGateway::gateway_bin())
        .args(["users", "mfa", "enroll", "--config"])
        .arg(&config)
        .arg("alice")
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already enrolled"));
    assert_eq!(std::fs::read(&file).unwrap(), sealed);
}
