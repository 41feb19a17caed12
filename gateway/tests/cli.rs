//! The `gateway` binary: check-config, audit verify, users, keys, and a development first run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use gateway::audit::{AuditConfig, AuditEntry, AuditEvent, AuditLog, CheckpointKey};

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn check_config_reports_every_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let weak = dir.path().join("weak");
    std::fs::create_dir_all(&weak).unwrap();
    // A 1024-bit RSA certificate: refused as weak.
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:1024", "-nodes", "-days", "30", "-subj", "/CN=weak"])
        .arg("-keyout")
        .arg(weak.join("key.pem"))
        .arg("-out")
        .arg(weak.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let short_key = dir.path().join("short.key");
    std::fs::write(&short_key, "abcd\n").unwrap();
    std::fs::set_permissions(&short_key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        format!(
            r#"mode = "production"
data_dir = "{d}"
colour = "blue"
[https]
listen = "localhost:99999"
cert = "{cert}"
key = "{key}"
[audit]
signing_key = "{d}/missing-audit.key"
[[tenants]]
name = "acme"
key_file = "{short}"
[[users]]
name = "alice"
tenant = "acmee"
home = "/alice"
permissions = ["read"]
"#,
            d = dir.path().display(),
            cert = weak.join("cert.pem").display(),
            key = weak.join("key.pem").display(),
            short = short_key.display(),
        ),
    )
    .unwrap();
    let out = gateway().arg("check-config").arg("--config").arg(&config).output().unwrap();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    for needle in [
        "colour",              // unknown key
        "https.listen",        // bad address
        "users[0].tenant",     // unknown tenant
        "1024",                // weak RSA key
        "tenants[0].key_file", // malformed tenant key
        "missing-audit.key",   // missing file (production)
    ] {
        assert!(t.contains(needle), "missing {needle:?} in:\n{t}");
    }
    assert!(t.contains("problem(s) found"), "{t}");

    // The shipped sample is fine.
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml");
    let out = gateway().arg("check-config").arg("--config").arg(&sample).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// A user with `mfa` but no enrolment: check-config passes with a warning naming the user and
/// the missing file; once the file exists the warning is gone.
#[test]
fn check_config_warns_about_mfa_users_not_enrolled() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mfa.toml");
    std::fs::write(
        &config,
        format!(
            r#"mode = "development"
data_dir = "{d}"
[https]
listen = "127.0.0.1:0"
[[tenants]]
name = "acme"
[[users]]
name = "alice"
tenant = "acme"
home = "/alice"
permissions = ["read"]
[[users]]
name = "bob"
tenant = "acme"
home = "/bob"
permissions = ["read"]
mfa = "totp"
"#,
            d = dir.path().display()
        ),
    )
    .unwrap();
    let out = gateway().arg("check-config").arg("--config").arg(&config).output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("warning: users[1] (bob): mfa is set but the user is not enrolled"), "{t}");
    assert!(!t.contains("(alice)"), "{t}");
    let secrets = dir.path().join("mfa/secrets");
    assert!(t.contains(&secrets.join("bob.totp").display().to_string()), "{t}");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("bob.totp"), b"sealed").unwrap();
    let out = gateway().arg("check-config").arg("--config").arg(&config).output().unwrap();
    assert!(out.status.success() && !text(&out).contains("warning"), "{}", text(&out));
}

/// Write a trail with `n` records and a checkpoint every `every`, closed cleanly.
fn make_trail(dir: &Path, n: usize, every: u64) -> (PathBuf, PathBuf) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key_path = dir.join("checkpoint.key");
    let key = CheckpointKey::generate(&key_path).unwrap();
    let path = dir.join("audit.jsonl");
    rt.block_on(async {
        let log = AuditLog::open(
            AuditConfig {
                path: path.clone(),
                checkpoint_every_records: every,
                checkpoint_interval: Duration::from_secs(3600),
                append_timeout: Duration::from_secs(10),
            },
            key,
        )
        .unwrap();
        for i in 0..n {
            let entry = AuditEntry {
                user: Some("alice".into()),
                path: Some(format!("file-{i}")),
                operation: Some("upload".into()),
                ..AuditEntry::new(AuditEvent::Completed)
            };
            log.append(entry, false).await.unwrap();
        }
        log.close().await;
    });
    (path, key_path.with_extension("pub"))
}

fn verify(trail: &Path, extra: &[&str]) -> (bool, String) {
    let out = gateway().args(["audit", "verify"]).args(extra).arg(trail).output().unwrap();
    (out.status.success(), text(&out))
}

#[test]
fn audit_verify_detects_each_kind_of_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let (trail, pubkey) = make_trail(dir.path(), 20, 5);
    let original = std::fs::read_to_string(&trail).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.iter().filter(|l| l.contains("\"checkpoint\"")).count() >= 4);
    let (ok, t) = verify(&trail, &["--public-key", pubkey.to_str().unwrap()]);
    assert!(ok, "{t}");
    assert!(t.contains("OK"), "{t}");

    let tamper = |name: &str, new: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, new).unwrap();
        std::fs::copy(gateway::audit::sidecar_path(&trail), gateway::audit::sidecar_path(&p)).unwrap();
        p
    };
    let join = |ls: &[&str]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();

    // A changed byte in record 7 is caught at line 8 (the chain) — the message names line 7.
    let mut changed: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    changed[6] = changed[6].replace("file-", "fike-");
    let p = tamper("changed.jsonl", join(&changed.iter().map(String::as_str).collect::<Vec<_>>()));
    let (ok, t) = verify(&p, &[]);
    assert!(!ok);
    assert!(t.contains("line 8") && t.contains("line 7"), "{t}");

    // A removed record.
    let mut removed = lines.clone();
    removed.remove(3);
    let (ok, t) = verify(&tamper("removed.jsonl", join(&removed)), &[]);
    assert!(!ok);
    assert!(t.contains("line 4"), "{t}");

    // An inserted record (a copy of another).
    let mut inserted = lines.clone();
    inserted.insert(10, lines[2]);
    let (ok, t) = verify(&tamper("inserted.jsonl", join(&inserted)), &[]);
    assert!(!ok);
    assert!(t.contains("line 11"), "{t}");

    // Two records swapped.
    let mut reordered = lines.clone();
    reordered.swap(12, 13);
    let (ok, t) = verify(&tamper("reordered.jsonl", join(&reordered)), &[]);
    assert!(!ok);
    assert!(t.contains("line 13"), "{t}");

    // Truncated past the last checkpoint (the sidecar remembers it).
    let last_cp = lines.iter().rposition(|l| l.contains("\"checkpoint\"")).unwrap();
    let (ok, t) = verify(&tamper("truncated.jsonl", join(&lines[..last_cp - 2])), &[]);
    assert!(!ok);
    assert!(t.contains("truncated"), "{t}");

    // A forged checkpoint signed with another key is refused when the key is pinned.
    let other = tempfile::tempdir().unwrap();
    let (forged, _) = make_trail(other.path(), 20, 5);
    let (ok, t) = verify(&forged, &["--public-key", pubkey.to_str().unwrap()]);
    assert!(!ok);
    assert!(t.contains("different key"), "{t}");

    // A cut mid-line.
    let (ok, t) = verify(&tamper("cut.jsonl", original[..original.len() - 10].to_owned()), &[]);
    assert!(!ok);
    assert!(t.contains("incomplete"), "{t}");
}

#[test]
fn users_new_prints_a_valid_stanza_and_the_token_once() {
    let out = gateway()
        .args([
            "users",
            "new",
            "--name",
            "carol",
            "--tenant",
            "acme",
            "--home",
            "/in/carol",
            "--permissions",
            "list,read,write",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stanza = String::from_utf8(out.stdout).unwrap();
    let token = String::from_utf8(out.stderr).unwrap().lines().last().unwrap().trim().to_owned();
    assert!(token.starts_with("gw1.carol-"));
    assert!(!stanza.contains(&token), "the stanza must hold only the hash");
    let config = format!("mode = \"production\"\n[[tenants]]\nname = \"acme\"\n{stanza}");
    let (cfg, errors) = gateway_config::parse(&config, "stanza");
    assert!(errors.is_empty(), "{errors:?}");
    let hash = gateway::secrets::Token::new(token).sha256();
    assert_eq!(cfg.users[0].tokens[0].sha256, hash);
    // A bad permission is refused with a message.
    let out = gateway()
        .args(["users", "new", "--name", "x", "--tenant", "acme", "--home", "/", "--permissions", "fly"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("fly"));
}

/// A development-mode config in `dir` (its data under `dir/data`).
fn dev_config(dir: &Path) -> PathBuf {
    let config = dir.join("dev.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"development\"\ndata_dir = \"{}\"\nshutdown_grace = \"1s\"\n[https]\nlisten = \"127.0.0.1:0\"\n\
             [[tenants]]\nname = \"demo\"\n[[users]]\nname = \"demo\"\ntenant = \"demo\"\nhome = \"/demo\"\n\
             permissions = [\"all\"]\n[development]\ndemo_user = \"demo\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    config
}

/// Start `cmd` (a `serve`) and read its stdout until the development banner is complete.
fn serve_until_banner(cmd: &mut Command) -> (std::process::Child, String) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut banner = String::new();
    let mut reader = std::io::BufReader::new(stdout);
    loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut reader, &mut line).unwrap() == 0 {
            break;
        }
        banner.push_str(&line);
        if line.contains("Authorization: Bearer") && banner.matches("curl").count() >= 3 {
            break;
        }
    }
    (child, banner)
}

#[test]
fn development_first_run_generates_material_and_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dev_config(dir.path());
    let (mut child, banner) =
        serve_until_banner(gateway().arg("serve").arg("--config").arg(&config).stderr(Stdio::null()));
    assert!(banner.contains("DEVELOPMENT"), "{banner}");
    assert!(banner.contains("curl --cacert"), "{banner}");
    let data = dir.path().join("data");
    for f in
        ["dev/ca.pem", "tls/server.pem", "tls/server.key", "keys/demo.key", "audit/checkpoint.key", "dev/demo.token"]
    {
        assert!(data.join(f).exists(), "{f} not generated");
    }
    for secret in ["tls/server.key", "keys/demo.key", "audit/checkpoint.key", "dev/demo.token"] {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(data.join(secret)).unwrap().permissions());
        assert_eq!(mode & 0o077, 0, "{secret} is {mode:o}");
    }
    let token = std::fs::read_to_string(data.join("dev/demo.token")).unwrap();
    assert!(!banner.contains(token.trim()), "the banner must not print the token itself");
    // SIGTERM: graceful stop, final checkpoint.
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    let trail = std::fs::read_to_string(data.join("audit/audit.jsonl")).unwrap_or_default();
    // No requests were made, so the trail may be empty; if not, it ends sealed.
    if let Some(last) = trail.lines().last() {
        assert!(last.contains("\"checkpoint\""));
    }
}

/// Logs written to a file (not a terminal) carry no ANSI colour codes in any format, and are
/// JSON lines unless `human` is asked for.
#[test]
fn logs_in_a_file_are_json_lines_without_colour_codes() {
    for (format, json) in [(None, true), (Some("json"), true), (Some("human"), false)] {
        let dir = tempfile::tempdir().unwrap();
        let config = dev_config(dir.path());
        let log = dir.path().join("gateway.log");
        let mut cmd = gateway();
        cmd.env_remove("GATEWAY_LOG_FORMAT").env("RUST_LOG", "info");
        if let Some(f) = format {
            cmd.args(["--log-format", f]);
        }
        cmd.arg("serve").arg("--config").arg(&config).stderr(std::fs::File::create(&log).unwrap());
        let (mut child, banner) = serve_until_banner(&mut cmd);
        assert!(banner.contains("curl --cacert"), "{format:?}: {banner}");
        Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        assert!(child.wait().unwrap().success());
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.len() >= 2, "{format:?}: the start and the stop are logged: {text}");
        assert!(!text.contains('\u{1b}'), "{format:?}: an escape code in the log file: {text:?}");
        for line in &lines {
            let parsed = serde_json::from_str::<serde_json::Value>(line);
            if json {
                let v = parsed.unwrap_or_else(|e| panic!("{format:?}: not a JSON line ({e}): {line}"));
                assert!(v["timestamp"].is_string() && v["level"].is_string(), "{format:?}: {line}");
                assert!(v["message"].is_string(), "{format:?}: {line}");
            } else {
                assert!(parsed.is_err(), "human format: {line}");
                assert!([" INFO ", " WARN ", " ERROR "].iter().any(|l| line.contains(l)), "human format: {line}");
            }
        }
    }
    // A format that does not exist is refused, naming the choices.
    let out = gateway().args(["--log-format", "xml", "check-config"]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("human") && text(&out).contains("json"), "{}", text(&out));
}

fn keygen(path: &Path, args: &[&str]) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", "partner@example"])
        .args(args)
        .arg("-f")
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn users_add_key_edits_the_config_and_refuses_weak_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        "# operators' comment kept\nmode = \"production\"\n[[tenants]]\nname = \"acme\"\n\
         [[users]]\nname = \"alice\"\ntenant = \"acme\"\nhome = \"/alice\"\npermissions = [\"all\"]\n",
    )
    .unwrap();
    let good = dir.path().join("id_ed25519");
    keygen(&good, &["-t", "ed25519"]);
    let out = gateway()
        .args(["users", "add-key", "--config"])
        .arg(&config)
        .arg("alice")
        .arg(good.with_extension("pub"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("SHA256:"), "{}", text(&out));
    let edited = std::fs::read_to_string(&config).unwrap();
    assert!(edited.contains("# operators' comment kept"));
    let (cfg, errors) = gateway_config::parse(&edited, "edited");
    assert!(errors.is_empty(), "{errors:?}");
    let pub_line = std::fs::read_to_string(good.with_extension("pub")).unwrap();
    assert_eq!(cfg.users[0].authorized_keys, [pub_line.trim().to_owned()]);

    // The same key twice, an unknown user and a 1024-bit RSA key are refused; the file is unchanged.
    let weak = dir.path().join("id_rsa1024");
    keygen(&weak, &["-t", "rsa", "-b", "1024"]);
    for (user, key, why) in [
        ("alice", good.with_extension("pub"), "already"),
        ("mallory", good.with_extension("pub"), "mallory"),
        ("alice", weak.with_extension("pub"), "1024"),
    ] {
        let out = gateway().args(["users", "add-key", "--config"]).arg(&config).arg(user).arg(&key).output().unwrap();
        assert!(!out.status.success(), "{user} {key:?} accepted");
        assert!(text(&out).contains(why), "expected {why:?} in: {}", text(&out));
        assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    }
}
