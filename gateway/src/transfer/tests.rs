//! Write-ahead auditing against a trail that fails or stalls on demand (the audit writer's
//! test fault injection) over a real local store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::audit::faults::Fault;
use crate::audit::{verify, AuditConfig, AuditLine, CheckpointKey};
use crate::storage::local::LocalStore;

struct Fixture {
    dir: tempfile::TempDir,
    keys: HashMap<String, Arc<crate::keyring::SharedKeyring>>,
    store: Arc<LocalStore>,
    audit: AuditLog,
    transfers: Transfers,
    who: Principal,
    client: ClientInfo,
}

fn audit_config(dir: &std::path::Path, append_timeout: Duration) -> AuditConfig {
    AuditConfig {
        path: dir.join("audit.jsonl"),
        checkpoint_every_records: 1000,
        checkpoint_interval: Duration::from_secs(3600),
        append_timeout,
    }
}

fn fixture(append_timeout: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = HashMap::from([(
        "t".to_owned(),
        crate::keyring::SharedKeyring::new(crate::keyring::TenantKeyring::single(
            crate::secrets::TenantKey::generate().unwrap(),
        )),
    )]);
    let store = Arc::new(LocalStore::open(&dir.path().join("store"), keys.clone()).unwrap());
    let key = CheckpointKey::generate(&dir.path().join("k.key")).unwrap();
    let audit = AuditLog::open(audit_config(dir.path(), append_timeout), key).unwrap();
    let transfers = Transfers::new(store.clone(), audit.clone(), 1 << 20);
    let who = Principal {
        user: "alice".into(),
        tenant: "t".into(),
        home: ObjectKey::home("home").unwrap(),
        permissions: gateway_config::Permissions {
            list: true,
            read: true,
            write: true,
            delete: true,
            rename: true,
            mkdir: true,
        },
        auth_method: "bearer",
        credential_id: "alice-1".into(),
    };
    let client = ClientInfo::https("127.0.0.1:1".parse().unwrap(), None, None);
    Fixture { dir, keys, store, audit, transfers, who, client }
}

fn rel(p: &str) -> RelPath {
    RelPath::from_plain(p).unwrap()
}

impl Fixture {
    async fn put(&self, name: &str, data: &'static [u8]) -> Result<Receipt, TransferError> {
        let mut up = self.transfers.begin_upload(&self.who, &self.client, &rel(name), None).await?;
        up.write(Bytes::from_static(data)).await?;
        up.finish(None).await
    }

    async fn exists(&self, name: &str) -> bool {
        match self.store.head("t", &self.who.home.join(&rel(name))).await {
            Ok(_) => true,
            Err(StorageError::NotFound) => false,
            Err(e) => panic!("{e}"),
        }
    }

    fn fail_when(&self, pred: impl Fn(&str) -> bool + Send + Sync + 'static) {
        self.audit.faults().set(move |text| pred(text).then_some(Fault::Fail));
    }

    fn lines(&self) -> Vec<AuditLine> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Close, then start again on the same trail (a restart), and close that too; returns
    /// the ids `audit verify` reports open in between and after.
    async fn restart(&self) -> (Vec<String>, Vec<String>) {
        self.audit.close().await;
        let trail = self.dir.path().join("audit.jsonl");
        let before = verify::verify_trail(&trail, &Default::default()).unwrap().open;
        let key = CheckpointKey::load(&self.dir.path().join("k.key")).unwrap();
        AuditLog::open(audit_config(self.dir.path(), Duration::from_secs(10)), key).unwrap().close().await;
        let after = verify::verify_trail(&trail, &Default::default()).unwrap().open;
        (before, after)
    }
}

fn is_audit(e: &TransferError) -> bool {
    matches!(e, TransferError::Audit(_))
}

fn outcome_of(op: &'static str) -> impl Fn(&str) -> bool {
    move |t: &str| t.contains("\"event\":\"operation\"") && t.contains(&format!("\"operation\":\"{op}\""))
}

#[tokio::test]
async fn without_the_intent_nothing_changes() {
    // One fixture per change: a failed write breaks the trail for good.
    let f = fixture(Duration::from_secs(10));
    f.put("keep.bin", b"keep").await.unwrap();
    f.fail_when(|t| t.contains("\"event\":\"intent\""));
    // The `started` record is queued at open; a waited append behind it puts it on disk on
    // its own (an SFTP client's writes usually give the writer that time).
    let mut up = f.transfers.begin_upload(&f.who, &f.client, &rel("new.bin"), None).await.unwrap();
    f.transfers.audit().append(AuditEntry::new(AuditEvent::Operation), false).await.unwrap();
    up.write(Bytes::from_static(b"new")).await.unwrap();
    assert!(is_audit(&up.finish(None).await.unwrap_err()));
    assert!(!f.exists("new.bin").await, "no object without its intent");
    assert!(is_audit(&f.transfers.delete(&f.who, &f.client, &rel("keep.bin")).await.unwrap_err()));
    assert!(f.exists("keep.bin").await, "no delete without its intent");
    let (open, after) = f.restart().await;
    assert_eq!(open.len(), 1, "the upload's started record: {open:?}");
    assert!(after.is_empty(), "{after:?}");
    let interrupted = f.lines().into_iter().filter(|l| l.entry.event == AuditEvent::Interrupted).count();
    assert_eq!(interrupted, 1);

    // Queued `started` and failing `intent` in one write: both are cut off together, so the
    // upload fails, nothing is stored and nothing is left open.
    let f = fixture(Duration::from_secs(10));
    let held = Arc::new(AtomicBool::new(true));
    let hold = held.clone();
    f.audit.faults().set(move |t| {
        if t.contains("barrier") {
            Some(Fault::Hold(hold.clone()))
        } else {
            t.contains("\"event\":\"intent\"").then_some(Fault::Fail)
        }
    });
    // The writer is held on a record of its own while the upload queues both.
    f.audit.append_detached(AuditEntry { path: Some("barrier".into()), ..AuditEntry::new(AuditEvent::Operation) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut up = f.transfers.begin_upload(&f.who, &f.client, &rel("new.bin"), None).await.unwrap();
    up.write(Bytes::from_static(b"new")).await.unwrap();
    let finish = tokio::spawn(up.finish(None));
    tokio::time::sleep(Duration::from_millis(200)).await;
    held.store(false, Ordering::SeqCst);
    assert!(is_audit(&finish.await.unwrap().unwrap_err()));
    assert!(!f.lines().iter().any(|l| l.entry.event == AuditEvent::Started), "cut off with the intent");
    assert!(!f.exists("new.bin").await, "no object without its intent");
    assert_eq!(f.restart().await, (vec![], vec![]));

    let f = fixture(Duration::from_secs(10));
    f.put("a.bin", b"a").await.unwrap();
    f.fail_when(|t| t.contains("\"event\":\"intent\""));
    let e = f.transfers.rename(&f.who, &f.client, &rel("a.bin"), &rel("b.bin"), false).await.unwrap_err();
    assert!(is_audit(&e));
    assert!(f.exists("a.bin").await && !f.exists("b.bin").await, "no rename without its intent");
    assert_eq!(f.restart().await, (vec![], vec![]));

    let f = fixture(Duration::from_secs(10));
    f.fail_when(|t| t.contains("\"event\":\"intent\""));
    assert!(is_audit(&f.transfers.mkdir(&f.who, &f.client, &rel("d")).await.unwrap_err()));
    assert!(!f.exists("d").await, "no mkdir without its intent");
    assert!(f.store.head("t", &f.who.home).await.is_err(), "not even the implicit home");

    let f = fixture(Duration::from_secs(10));
    f.transfers.mkdir(&f.who, &f.client, &rel("d")).await.unwrap();
    f.fail_when(|t| t.contains("\"event\":\"intent\""));
    assert!(is_audit(&f.transfers.rmdir(&f.who, &f.client, &rel("d")).await.unwrap_err()));
    assert!(f.exists("d").await, "no rmdir without its intent");
}

#[tokio::test]
async fn without_the_outcome_what_can_be_undone_is() {
    let f = fixture(Duration::from_secs(10));
    f.fail_when(|t| t.contains("\"event\":\"completed\""));
    assert!(is_audit(&f.put("up.bin", b"data").await.unwrap_err()));
    assert!(!f.exists("up.bin").await, "the committed object is deleted again");
    let (open, after) = f.restart().await;
    assert_eq!(open.len(), 1, "the intent stays open until the restart: {open:?}");
    assert!(after.is_empty());
    let l = f.lines();
    let events: Vec<AuditEvent> = l.iter().map(|l| l.entry.event).collect();
    assert_eq!(events, [AuditEvent::Started, AuditEvent::Intent, AuditEvent::Interrupted, AuditEvent::Checkpoint]);

    let f = fixture(Duration::from_secs(10));
    f.put("a.bin", b"a").await.unwrap();
    f.fail_when(outcome_of("rename"));
    let e = f.transfers.rename(&f.who, &f.client, &rel("a.bin"), &rel("b.bin"), false).await.unwrap_err();
    assert!(is_audit(&e));
    assert!(f.exists("a.bin").await && !f.exists("b.bin").await, "renamed back");
    assert_eq!(f.restart().await.1, Vec::<String>::new());

    let f = fixture(Duration::from_secs(10));
    f.fail_when(outcome_of("mkdir"));
    assert!(is_audit(&f.transfers.mkdir(&f.who, &f.client, &rel("d")).await.unwrap_err()));
    assert!(!f.exists("d").await, "removed again");

    let f = fixture(Duration::from_secs(10));
    f.transfers.mkdir(&f.who, &f.client, &rel("d")).await.unwrap();
    f.fail_when(outcome_of("rmdir"));
    assert!(is_audit(&f.transfers.rmdir(&f.who, &f.client, &rel("d")).await.unwrap_err()));
    assert!(f.exists("d").await, "made again");

    // A delete cannot be undone: the client is told it failed, the intent says what was
    // attempted, and the restart records it as interrupted.
    let f = fixture(Duration::from_secs(10));
    f.put("gone.bin", b"x").await.unwrap();
    f.fail_when(outcome_of("delete"));
    assert!(is_audit(&f.transfers.delete(&f.who, &f.client, &rel("gone.bin")).await.unwrap_err()));
    assert!(!f.exists("gone.bin").await);
    let (open, after) = f.restart().await;
    assert_eq!(open.len(), 1);
    assert!(after.is_empty());
    let interrupted = f.lines().into_iter().find(|l| l.entry.event == AuditEvent::Interrupted).unwrap();
    assert_eq!(interrupted.entry.operation.as_deref(), Some("delete"));
    assert_eq!(interrupted.entry.path.as_deref(), Some("gone.bin"));
    assert_eq!(interrupted.entry.transfer_id.as_deref(), Some(open[0].as_str()));
}

#[tokio::test]
async fn a_completed_upload_whose_name_a_crash_lost_is_put_in_place_at_the_next_start() {
    let f = fixture(Duration::from_secs(10));
    let receipt = f.put("in/x.bin", b"committed before the crash").await.unwrap();
    f.put("in/y.bin", b"y").await.unwrap();
    // The crash came after the `completed` record and before the new directory entry was on
    // disk: the object is back under its staging name, and the trail has no clean end.
    let object = f.dir.path().join("store/objects/t/home/in/x.bin");
    let staging = f.dir.path().join(format!("store/staging/u-{}.part", receipt.transfer_id));
    std::fs::rename(&object, &staging).unwrap();
    // An upload interrupted before its commit: its staging file goes.
    let unfinished = f.dir.path().join("store/staging/u-0123456789abcdef.part");
    std::fs::write(&unfinished, b"partial").unwrap();
    f.fail_when(|_| true);
    assert!(f.audit.append(AuditEntry::new(AuditEvent::Operation), true).await.is_err());
    f.audit.close().await;

    let store = LocalStore::open(&f.dir.path().join("store"), f.keys.clone()).unwrap();
    let key = CheckpointKey::load(&f.dir.path().join("k.key")).unwrap();
    let (audit, completed) = AuditLog::open_recovering(
        audit_config(f.dir.path(), Duration::from_secs(10)),
        key,
        &store.interrupted_uploads(),
    )
    .unwrap();
    assert_eq!(store.recover_uploads(&completed).await.unwrap(), ["t:home/in/x.bin"]);
    audit.close().await;
    assert!(!staging.exists() && !unfinished.exists());
    let read = store.open("t", &ObjectKey::home("home/in/x.bin").unwrap(), RangeRequest::All).await.unwrap();
    let body: Vec<Bytes> = futures_util::TryStreamExt::try_collect(read.body).await.unwrap();
    assert_eq!(body.concat(), b"committed before the crash");
    let report = verify::verify_trail(&f.dir.path().join("audit.jsonl"), &Default::default()).unwrap();
    assert!(report.open.is_empty(), "{:?}", report.open);
}

#[tokio::test]
async fn a_stalled_trail_fails_requests_in_time_and_closes_what_it_opened() {
    let f = fixture(Duration::from_millis(300));
    f.put("keep.bin", b"keep").await.unwrap();
    let held = Arc::new(AtomicBool::new(true));
    let hold = held.clone();
    f.audit.faults().set(move |t| t.contains("\"event\":\"intent\"").then(|| Fault::Hold(hold.clone())));
    let e = f.transfers.delete(&f.who, &f.client, &rel("keep.bin")).await.unwrap_err();
    assert!(matches!(e, TransferError::Audit(AuditError::Timeout { .. })), "{e:?}");
    assert!(f.exists("keep.bin").await, "not deleted");
    held.store(false, Ordering::Release);

    // The completed record stalls: the upload is undone and says so once the trail moves.
    let held = Arc::new(AtomicBool::new(true));
    let hold = held.clone();
    f.audit.faults().set(move |t| t.contains("\"event\":\"completed\"").then(|| Fault::Hold(hold.clone())));
    let e = f.put("late.bin", b"late").await.unwrap_err();
    assert!(matches!(e, TransferError::Audit(AuditError::Timeout { .. })), "{e:?}");
    assert!(!f.exists("late.bin").await, "deleted again");
    held.store(false, Ordering::Release);

    let (open, after) = f.restart().await;
    assert!(open.is_empty(), "every intent got its outcome once the trail moved: {open:?}");
    assert!(after.is_empty());
    let l = f.lines();
    let delete: Vec<&AuditLine> = l.iter().filter(|l| l.entry.operation.as_deref() == Some("delete")).collect();
    assert_eq!(delete.len(), 2);
    assert_eq!(delete[1].entry.result.as_deref(), Some("error"));
    assert!(delete[1].entry.error.as_deref().unwrap().contains("not performed"), "{:?}", delete[1]);
    let late: Vec<(AuditEvent, Option<String>)> = l
        .iter()
        .filter(|l| l.entry.path.as_deref() == Some("late.bin"))
        .map(|l| (l.entry.event, l.entry.error.clone()))
        .collect();
    assert_eq!(late.len(), 4, "{late:?}");
    assert_eq!(late[2].0, AuditEvent::Completed, "the stalled record landed after all");
    assert_eq!(late[3].0, AuditEvent::Failed, "{late:?}");
    assert!(late[3].1.as_deref().unwrap().contains("removed again"), "{late:?}");
}

#[tokio::test]
async fn shutdown_waits_for_every_transfer_object() {
    let f = fixture(Duration::from_secs(10));
    let up = f.transfers.begin_upload(&f.who, &f.client, &rel("x.bin"), None).await.unwrap();
    assert_eq!(f.transfers.wait_until_idle(Duration::from_millis(50)).await, 1);
    let dropper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(up);
    });
    assert_eq!(f.transfers.wait_until_idle(Duration::from_secs(10)).await, 0);
    dropper.await.unwrap();
    f.audit.close().await;
    let events: Vec<AuditEvent> = f.lines().iter().map(|l| l.entry.event).collect();
    assert_eq!(events, [AuditEvent::Started, AuditEvent::Failed, AuditEvent::Checkpoint]);
}

#[tokio::test]
async fn a_failed_write_then_fail_records_one_outcome() {
    let f = fixture(Duration::from_secs(10));
    let mut up = f.transfers.begin_upload(&f.who, &f.client, &rel("big.bin"), None).await.unwrap();
    let e = up.write(Bytes::from(vec![0u8; 2 << 20])).await.unwrap_err();
    assert!(matches!(e, TransferError::TooLarge { .. }), "{e}");
    // The frontend then abandons it as it would at close (SFTP) or on its own error.
    let _ = up.fail(TransferError::Storage("closed after the failed write".into())).await;
    f.audit.close().await;
    let failed = f.lines().iter().filter(|l| l.entry.event == AuditEvent::Failed).count();
    assert_eq!(failed, 1, "one transfer, one outcome");
}

#[tokio::test]
async fn an_unconfirmed_encryption_raises_a_critical_alert_naming_user_and_path() {
    let f = fixture(Duration::from_secs(5));
    let key = f.dir.path().join("alert.key");
    crate::secrets::write_secret_file(&key, b"0123456789abcdef0123456789abcdef").unwrap();
    let config = gateway_config::AlertsConfig {
        webhook_url: "http://127.0.0.1:9/none".into(),
        hmac_key_file: key,
        ca_file: None,
        timeout: Duration::from_secs(1),
        max_outbox: 10,
        min_severity: gateway_config::AlertSeverity::Info,
        auth_failure_threshold: 5,
        auth_failure_window: Duration::from_secs(600),
        syslog: None,
    };
    let alerts = crate::alerts::Alerts::open(&config, f.dir.path()).unwrap();
    let transfers = f.transfers.clone().with_alerts(alerts.clone());
    let up = transfers.begin_upload(&f.who, &f.client, &rel("secret.pdf"), None).await.unwrap();
    let e =
        up.storage_failure(StorageError::EncryptionNotConfirmed("PutObject: no x-amz-server-side-encryption".into()));
    assert!(matches!(e, TransferError::Storage(_)), "{e:?}");
    // Other storage errors raise nothing.
    let _ = up.storage_failure(StorageError::Unavailable("timeout".into()));
    let _ = up.fail(e).await;
    alerts.close().await;
    let outbox = f.dir.path().join("alerts/outbox");
    let files: Vec<_> = std::fs::read_dir(&outbox).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(v["kind"], "encryption_not_confirmed");
    assert_eq!(v["severity"], "critical");
    assert_eq!(v["scope"]["users"], serde_json::json!(["alice"]));
    assert_eq!(v["scope"]["sources"], serde_json::json!(["127.0.0.1:1"]));
    assert_eq!(v["scope"]["files"], serde_json::json!(["secret.pdf"]));
    assert!(v["nature"].as_str().unwrap().contains("no x-amz-server-side-encryption"), "{v}");
}
