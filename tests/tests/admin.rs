//! The admin listener as operators use it: Prometheus `/metrics` (parsed with the
//! `prometheus_client` text parser, values moving with real HTTPS and SFTP traffic),
//! `/healthz`, `/readyz` (storage unreachable → 503; at SIGTERM it flips to 503 while a
//! transfer is still draining), and the token `/metrics` asks for.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gateway_e2e::served::{GatewayFiles, ServedGateway};
use gateway_e2e::{write_random, TestGateway};

/// Parse exposition text with prometheus_client; one entry per sample, keyed
/// `name{label="value",...}` with labels sorted.
const PARSE: &str = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;

const TOKEN: &str = "admin-token-for-the-metrics-test";

/// (status, body) of a GET on the admin listener.
fn admin_get(gw: &ServedGateway, path: &str, token: Option<&str>) -> (String, String) {
    let addr = gw.admin_addr.expect("the admin listener is configured");
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--max-time", "20", "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(format!("http://{addr}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_owned(), body.to_owned())
}

fn scrape(gw: &ServedGateway) -> BTreeMap<String, f64> {
    let (code, body) = admin_get(gw, "/metrics", Some(TOKEN));
    assert_eq!(code, "200", "{body}");
    let mut py =
        Command::new("python3").args(["-c", PARSE]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    py.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success(), "prometheus_client could not parse:\n{body}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn get(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("no sample {key} in {:#?}", m.keys().collect::<Vec<_>>()))
}

fn with_admin(files: &GatewayFiles) {
    let token = files.dir.path().join("admin.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut text = std::fs::read_to_string(&files.config_path).unwrap();
    text.push_str(&format!("\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {token:?}\n"));
    std::fs::write(&files.config_path, text).unwrap();
}

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !check() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_move_with_traffic_and_readiness_follows_storage_and_shutdown() {
    let files = TestGateway::builder().sftp().local_only().grace("5s").files();
    with_admin(&files);
    let mut gw = files.serve();

    assert_eq!(admin_get(&gw, "/healthz", None).0, "200");
    let (code, body) = admin_get(&gw, "/readyz", None);
    assert_eq!(code, "200", "{body}");
    let (code, _) = admin_get(&gw, "/metrics", None);
    assert_eq!(code, "401", "/metrics without the token");
    assert_eq!(admin_get(&gw, "/metrics", Some("wrong-token-wrong-token")).0, "401");

    let before = scrape(&gw);
    let expiry = get(&before, "gateway_tls_certificate_expiry_seconds{}");
    assert!(expiry > 86_400.0, "the test certificate has days left: {expiry}");

    // Traffic: an HTTPS upload and download, a refused token, an SFTP upload.
    let src = files.dir.path().join("one.bin");
    write_random(&src, 1 << 20);
    let auth = format!("Authorization: Bearer {}", files.tokens["alice"]);
    let run = |args: &[&str]| {
        let out = gw.curl().args(args).output().unwrap();
        assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["-f", "-o", "/dev/null", "-H", &auth, "-T", src.to_str().unwrap(), &gw.url("/v1/files/m.bin")]);
    run(&["-f", "-o", "/dev/null", "-H", &auth, &gw.url("/v1/files/m.bin")]);
    run(&["-o", "/dev/null", "-H", "Authorization: Bearer nonsense", &gw.url("/v1/files/")]);
    let mut sftp = Command::new("sftp")
        .args(files.ssh_options(&gw, "alice"))
        .args(["-b", "-"])
        .arg(format!("alice@{}", gw.sftp_addr.ip()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    sftp.stdin.take().unwrap().write_all(format!("put {} s.bin\n", src.display()).as_bytes()).unwrap();
    assert!(sftp.wait().unwrap().success());

    let after = scrape(&gw);
    let delta = |key: &str| get(&after, key) - get(&before, key);
    let t = |p: &str, d: &str, r: &str| {
        format!("gateway_transfers_total{{direction=\"{d}\",protocol=\"{p}\",result=\"{r}\"}}")
    };
    assert_eq!(delta(&t("https", "upload", "completed")), 1.0);
    assert_eq!(delta(&t("https", "download", "completed")), 1.0);
    assert_eq!(delta(&t("sftp", "upload", "completed")), 1.0);
    assert_eq!(delta(&t("https", "upload", "failed")), 0.0);
    assert_eq!(delta("gateway_transfer_bytes_total{direction=\"upload\",protocol=\"https\"}"), (1 << 20) as f64);
    assert_eq!(delta("gateway_transfer_bytes_total{direction=\"upload\",protocol=\"sftp\"}"), (1 << 20) as f64);
    assert_eq!(delta("gateway_transfer_duration_seconds_count{direction=\"upload\",protocol=\"https\"}"), 1.0);
    assert_eq!(delta("gateway_auth_failures_total{protocol=\"https\"}"), 1.0);
    assert!(delta("gateway_audit_append_seconds_count{}") >= 6.0, "audit appends counted");
    assert_eq!(get(&after, "gateway_audit_append_failures_total{}"), 0.0);

    // An open SFTP session shows in the gauge, and leaves it when it ends.
    let mut idle = Command::new("sftp")
        .args(files.ssh_options(&gw, "alice"))
        .arg(format!("alice@{}", gw.sftp_addr.ip()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sessions = "gateway_sessions_active{protocol=\"sftp\"}";
    wait_for("the SFTP session counted", Duration::from_secs(20), || get(&scrape(&gw), sessions) == 1.0);
    drop(idle.stdin.take());
    idle.wait().unwrap();
    wait_for("the SFTP session uncounted", Duration::from_secs(20), || get(&scrape(&gw), sessions) == 0.0);

    // Storage gone: not ready, naming the tenant; back: ready again.
    let objects = files.store_root.join("objects");
    let moved = files.store_root.join("objects.away");
    std::fs::rename(&objects, &moved).unwrap();
    wait_for("readyz 503 for storage", Duration::from_secs(15), || {
        let (code, body) = admin_get(&gw, "/readyz", None);
        code == "503" && body.contains("storage of tenant acme")
    });
    std::fs::rename(&moved, &objects).unwrap();
    wait_for("readyz 200 again", Duration::from_secs(15), || admin_get(&gw, "/readyz", None).0 == "200");

    // SIGTERM with an upload still running: readiness says draining while it drains.
    let big = files.dir.path().join("big.bin");
    write_random(&big, 4 << 20);
    let mut slow = gw
        .curl()
        .args(["--limit-rate", "200k", "-o", "/dev/null", "-H", &auth, "-T"])
        .arg(&big)
        .arg(gw.url("/v1/files/slow.bin"))
        .spawn()
        .unwrap();
    files.wait_audit("the slow upload started", |r| {
        r.iter().any(|x| x["event"] == "started" && x["path"] == "slow.bin")
    });
    gw.signal("TERM");
    wait_for("readyz 503 draining", Duration::from_secs(4), || {
        let (code, body) = admin_get(&gw, "/readyz", None);
        code == "503" && body.contains("draining")
    });
    assert_eq!(admin_get(&gw, "/healthz", None).0, "200", "alive while draining");
    assert!(gw.wait(Duration::from_secs(60)).success());
    let _ = slow.wait();
    let (ok, text) = files.verify();
    assert!(ok, "{text}");
}
