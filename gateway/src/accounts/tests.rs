//! The account checks driven through a [`ManualClock`]: days pass without sleeping.

use std::sync::Arc;

use super::*;
use crate::audit::{AuditConfig, CheckpointKey};

const DAY: Duration = Duration::from_secs(86_400);
/// 2026-12-01T00:00:00Z.
const T0: u64 = 1_796_083_200;

struct Fixture {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    audit: AuditLog,
    alerts: Alerts,
    users: Arc<Users>,
    config: gateway_config::Config,
}

fn config_text(dir: &Path, users: &str, accounts: &str) -> String {
    format!(
        "mode = \"production\"\ndata_dir = {:?}\n[[tenants]]\nname = \"t\"\n{users}\n[accounts]\n{accounts}\n",
        dir.join("data")
    )
}

fn user(name: &str, extra: &str) -> String {
    format!("[[users]]\nname = {name:?}\ntenant = \"t\"\nhome = \"/{name}\"\npermissions = [\"all\"]\n{extra}\n")
}

fn principal(name: &str) -> Principal {
    Principal {
        user: name.into(),
        tenant: "t".into(),
        home: crate::path::ObjectKey::home(name).unwrap(),
        permissions: gateway_config::Permissions::default(),
        auth_method: "bearer",
        credential_id: format!("{name}-1"),
    }
}

fn fixture(users: &str, accounts: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (config, errors) = gateway_config::parse(&config_text(dir.path(), users, accounts), "test");
    assert!(errors.is_empty(), "{errors:?}");
    let users = Arc::new(Users::new(crate::auth::Directory::from_config(&config).unwrap()));
    let key = CheckpointKey::generate(&dir.path().join("k.key")).unwrap();
    let audit = AuditLog::open(
        AuditConfig {
            path: dir.path().join("audit.jsonl"),
            checkpoint_every_records: 1000,
            checkpoint_interval: Duration::from_secs(3600),
            append_timeout: Duration::from_secs(5),
        },
        key,
    )
    .unwrap();
    let hmac = dir.path().join("alert.key");
    crate::secrets::write_secret_file(&hmac, b"0123456789abcdef0123456789abcdef").unwrap();
    let alerts = Alerts::open(
        &gateway_config::AlertsConfig {
            webhook_url: "http://127.0.0.1:9/none".into(),
            hmac_key_file: hmac,
            ca_file: None,
            timeout: Duration::from_secs(1),
            max_outbox: 100,
            min_severity: Severity::Info,
            auth_failure_threshold: 5,
            auth_failure_window: Duration::from_secs(600),
            syslog: None,
        },
        &dir.path().join("data"),
    )
    .unwrap();
    let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(T0)));
    Fixture { dir, clock, audit, alerts, users, config }
}

impl Fixture {
    fn open(&self) -> Accounts {
        Accounts::open(
            &self.config.accounts,
            self.users.clone(),
            self.audit.clone(),
            self.alerts.clone(),
            self.clock.clone(),
        )
        .unwrap()
    }

    fn records(&self, operation: &str) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["operation"] == operation)
            .collect()
    }

    /// The alerts in the outbox (after the outbox thread has written them).
    async fn alerts(&self) -> Vec<serde_json::Value> {
        self.alerts.close().await;
        let dir = self.dir.path().join("data/alerts/outbox");
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                out.push(v);
            }
        }
        out
    }

    fn state(&self) -> serde_json::Value {
        let path = self.dir.path().join("data/accounts/accounts.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn refusal(accounts: &Accounts, name: &str, from: &str) -> Option<&'static str> {
    accounts.admit(principal(name), ip(from)).err().map(|f| f.reason)
}

fn status(accounts: &Accounts, name: &str) -> Status {
    accounts.list().into_iter().find(|a| a.user == name).unwrap().status
}

#[tokio::test]
async fn dormancy_counts_from_first_sight_or_last_login_and_disables_once_with_a_record_and_an_alert() {
    let f = fixture(&format!("{}{}", user("alice", ""), user("bob", "")), "dormant_after = \"90d\"");
    let accounts = f.open();
    // Both start their clock now (written at open).
    assert_eq!(f.state()["users"]["bob"]["first_seen"], T0);
    assert!(f.state()["users"]["bob"].get("last_login").is_none());

    f.clock.advance(60 * DAY);
    assert_eq!(refusal(&accounts, "alice", "192.0.2.1"), None);
    accounts.logged_in("alice");
    f.clock.advance(29 * DAY);
    assert!(accounts.check_dormant().await.is_empty(), "89 days: nobody yet");
    assert_eq!(status(&accounts, "bob"), Status::Active);

    f.clock.advance(DAY);
    // 90 days since bob was first seen: refused at once, even before the sweep marks it.
    assert_eq!(status(&accounts, "bob"), Status::Dormant);
    assert_eq!(refusal(&accounts, "bob", "192.0.2.1"), Some(Refusal::Dormant.text()));
    assert_eq!(accounts.check_dormant().await, ["bob"]);
    assert!(accounts.check_dormant().await.is_empty(), "disabled once");
    assert_eq!(status(&accounts, "alice"), Status::Active, "alice logged in 30 days ago");
    assert_eq!(f.state()["users"]["bob"]["disabled"]["by"], "dormant", "durable before it is audited");

    let records = f.records("account_disabled");
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["user"], "bob");
    assert_eq!(records[0]["tenant"], "t");
    assert_eq!(records[0]["reason"], "dormant");

    // Alice's turn comes 90 days after her login.
    f.clock.advance(59 * DAY);
    assert!(accounts.check_dormant().await.is_empty());
    f.clock.advance(DAY);
    assert_eq!(accounts.check_dormant().await, ["alice"]);

    let alerts = f.alerts().await;
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    for a in &alerts {
        assert_eq!(a["kind"], "account_dormant");
        assert_eq!(a["severity"], "warning");
        assert!(a["actions_taken"][0].as_str().unwrap().contains("disabled"), "{a}");
        assert!(!a["remediation"].as_array().unwrap().is_empty() && !a["next_steps"].as_array().unwrap().is_empty());
    }
    let named: Vec<&str> = alerts.iter().map(|a| a["scope"]["users"][0].as_str().unwrap()).collect();
    assert!(named.contains(&"bob") && named.contains(&"alice"), "{named:?}");
    let bob = alerts.iter().find(|a| a["scope"]["users"][0] == "bob").unwrap();
    assert!(bob["nature"].as_str().unwrap().contains("no login since the gateway first saw it"), "{bob}");
}

#[tokio::test]
async fn enable_restarts_the_dormancy_clock_and_disable_takes_effect_for_new_logins() {
    let f = fixture(&user("bob", ""), "dormant_after = \"30d\"");
    let accounts = f.open();
    f.clock.advance(31 * DAY);
    assert_eq!(accounts.check_dormant().await, ["bob"]);
    let change = accounts.enable("bob", Some(ip("127.0.0.1"))).await.unwrap();
    assert!(change.changed && change.status == Status::Active, "{change:?}");
    assert_eq!(refusal(&accounts, "bob", "192.0.2.1"), None);
    f.clock.advance(29 * DAY);
    assert_eq!(status(&accounts, "bob"), Status::Active, "the clock restarted at enable");
    f.clock.advance(DAY);
    assert_eq!(status(&accounts, "bob"), Status::Dormant);
    accounts.enable("bob", None).await.unwrap();

    // An operator's disable: refused from now on, an SFTP connection registered for bob ends.
    let (ended, stop) = (CancellationToken::new(), CancellationToken::new());
    ended.cancel();
    accounts.watch_session("bob", ended);
    accounts.watch_session("bob", stop.clone());
    let change = accounts.disable("bob", Some(ip("127.0.0.1"))).await.unwrap();
    assert!(change.changed && change.message.contains("SFTP connections ended: 1"), "{change:?}");
    assert!(stop.is_cancelled());
    assert_eq!(refusal(&accounts, "bob", "192.0.2.1"), Some(Refusal::DisabledByOperator.text()));
    assert_eq!(status(&accounts, "bob"), Status::DisabledOperator);
    assert!(!accounts.disable("bob", None).await.unwrap().changed, "already disabled");
    assert_eq!(f.state()["users"]["bob"]["disabled"]["by"], "operator");
    accounts.enable("bob", None).await.unwrap();
    assert_eq!(refusal(&accounts, "bob", "192.0.2.1"), None);

    let disabled = f.records("account_disabled");
    let enabled = f.records("account_enabled");
    let reasons =
        |rs: &[serde_json::Value]| rs.iter().map(|r| r["reason"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(reasons(&disabled), ["dormant", "operator"]);
    assert_eq!(reasons(&enabled), ["dormant", "dormant", "operator"]);
    assert_eq!(disabled[1]["remote_addr"], "127.0.0.1", "who asked");
    assert!(matches!(accounts.disable("nobody", None).await, Err(AccountError::UnknownUser(_))));
}

#[tokio::test]
async fn configuration_disable_expiry_and_allowed_sources() {
    let users = [
        user("off", "disabled = true"),
        user("temp", "expires_at = \"2026-12-10T00:00:00Z\""),
        user("office", "allowed_sources = [\"10.0.0.0/8\", \"2001:db8::/32\"]"),
    ]
    .concat();
    let f = fixture(&users, "dormant_after = \"off\"");
    let accounts = f.open();
    assert_eq!(refusal(&accounts, "off", "10.1.1.1"), Some(Refusal::DisabledByConfig.text()));
    let change = accounts.enable("off", None).await.unwrap();
    assert_eq!(change.status, Status::DisabledConfig);
    assert!(change.message.contains("disabled = true"), "{}", change.message);
    assert_eq!(
        refusal(&accounts, "off", "10.1.1.1"),
        Some(Refusal::DisabledByConfig.text()),
        "only the file undoes it"
    );

    assert_eq!(refusal(&accounts, "temp", "10.1.1.1"), None);
    f.clock.advance(9 * DAY - Duration::from_secs(1));
    assert_eq!(refusal(&accounts, "temp", "10.1.1.1"), None, "one second before expiry");
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(refusal(&accounts, "temp", "10.1.1.1"), Some(Refusal::Expired.text()));
    assert_eq!(status(&accounts, "temp"), Status::Expired);

    assert_eq!(refusal(&accounts, "office", "10.200.0.1"), None);
    assert_eq!(refusal(&accounts, "office", "::ffff:10.0.0.9"), None, "IPv4-mapped counts as IPv4");
    assert_eq!(refusal(&accounts, "office", "2001:db8::7"), None);
    assert_eq!(refusal(&accounts, "office", "127.0.0.1"), Some(Refusal::SourceNotAllowed.text()));
    assert_eq!(refusal(&accounts, "office", "192.0.2.1"), Some(Refusal::SourceNotAllowed.text()));

    // With dormancy off nobody goes dormant, however long.
    f.clock.advance(3650 * DAY);
    assert!(accounts.check_dormant().await.is_empty());
    assert_eq!(status(&accounts, "office"), Status::Active);

    // The audit record of a refused login gets its reason code.
    let entry = AuditEntry { error: Some(Refusal::Expired.text().into()), ..AuditEntry::new(AuditEvent::AuthFailure) };
    assert_eq!(annotate(entry).reason.as_deref(), Some("expired"));
    let entry = AuditEntry { error: Some("wrong password".into()), ..AuditEntry::new(AuditEvent::AuthFailure) };
    assert_eq!(annotate(entry).reason, None);
}

#[tokio::test]
async fn logins_are_written_debounced_and_survive_a_restart() {
    let f = fixture(&format!("{}{}", user("alice", ""), user("bob", "")), "");
    let accounts = f.open();
    f.clock.advance(DAY);
    accounts.logged_in("alice");
    // In memory at once, not yet on disk.
    assert!(f.state()["users"]["alice"].get("last_login").is_none());
    let info = accounts.list().into_iter().find(|a| a.user == "alice").unwrap();
    assert_eq!(info.last_login.as_deref(), Some("2026-12-02T00:00:00Z"));
    assert_eq!(info.first_seen, "2026-12-01T00:00:00Z");
    // maintain writes it (here: at its stop).
    accounts.clone().maintain(async {}).await;
    assert_eq!(f.state()["users"]["alice"]["last_login"], T0 + 86_400);

    // A new process on the same state: the login is remembered, first sight is not reset.
    f.clock.advance(DAY);
    let again = f.open();
    let info = again.list().into_iter().find(|a| a.user == "alice").unwrap();
    assert_eq!(info.last_login.as_deref(), Some("2026-12-02T00:00:00Z"));
    assert_eq!(info.first_seen, "2026-12-01T00:00:00Z");
    assert_eq!(f.state()["version"], 1);
}

#[tokio::test]
async fn a_damaged_state_file_stops_the_start_with_its_name() {
    let f = fixture(&user("alice", ""), "");
    let path = f.dir.path().join("data/accounts/accounts.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"{ not json").unwrap();
    let err = Accounts::open(&f.config.accounts, f.users.clone(), f.audit.clone(), f.alerts.clone(), f.clock.clone())
        .unwrap_err();
    assert!(err.contains("accounts.json") && err.contains("move the file aside"), "{err}");
    std::fs::write(&path, br#"{"version": 9, "users": {}}"#).unwrap();
    let err = Accounts::open(&f.config.accounts, f.users.clone(), f.audit.clone(), f.alerts.clone(), f.clock.clone())
        .unwrap_err();
    assert!(err.contains("unknown version 9"), "{err}");
    assert!(check_state(&f.config.accounts).unwrap_err().contains("unknown version 9"), "check-config reports it too");
    std::fs::remove_file(&path).unwrap();
    assert!(check_state(&f.config.accounts).is_ok(), "no file yet is fine");
}

#[tokio::test]
async fn unchecked_admits_everyone() {
    let accounts = Accounts::unchecked();
    assert!(accounts.admit(principal("anyone"), ip("192.0.2.1")).is_ok());
    assert!(accounts.list().is_empty());
}
