//! The audit trail: a product feature, not debug logging.
//!
//! One JSON line per event. Each line carries `seq` (1, 2, 3, … per file) and `prev`, the
//! SHA-256 of the previous line's exact bytes, so changing, removing, inserting or reordering a
//! line breaks the chain at that point. Every [`AuditConfig::checkpoint_every_records`] records,
//! every [`AuditConfig::checkpoint_interval`] and at shutdown a `checkpoint` line is added,
//! signed with Ed25519 over its `seq` and `prev`; its hash is also appended to the
//! `<trail>.checkpoints` sidecar, so truncating the trail past a checkpoint is detected.
//!
//! All writes go through one thread that owns the file: callers send an [`AuditEntry`] and,
//! for durable events, wait until the line is written and `fdatasync`ed. Queued entries are
//! written and synced together (group commit). If a write fails the log fails closed: every
//! later append returns [`AuditError::Unavailable`], and the gateway refuses transfers.

mod record;
pub mod signing;
pub mod verify;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use record::{AuditEntry, AuditEvent, AuditLine};
pub use signing::CheckpointKey;

/// Hash of the line before the first one.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Settings of the audit writer.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The JSON Lines trail.
    pub path: PathBuf,
    /// Records between checkpoints.
    pub checkpoint_every_records: u64,
    /// Longest time an unsealed record waits for a checkpoint.
    pub checkpoint_interval: Duration,
}

/// Why an audit record could not be written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The trail could not be written; the gateway must not proceed with the operation.
    #[error("audit trail unavailable: {0}")]
    Unavailable(String),
    /// The trail on disk cannot be continued.
    #[error("{path}: {message}")]
    Open {
        /// The trail.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

type Ack = tokio::sync::oneshot::Sender<Result<u64, AuditError>>;

enum Msg {
    Append { entry: Box<AuditEntry>, durable: bool, ack: Option<Ack> },
    Close(tokio::sync::oneshot::Sender<()>),
}

/// Handle to the audit writer; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

/// The sidecar file holding checkpoint hashes.
pub fn sidecar_path(trail: &Path) -> PathBuf {
    let mut s = trail.as_os_str().to_owned();
    s.push(".checkpoints");
    PathBuf::from(s)
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(now.millisecond() as u32 * 1_000_000).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

impl AuditLog {
    /// Open (or continue) the trail and start the writer thread.
    pub fn open(config: AuditConfig, key: CheckpointKey) -> Result<AuditLog, AuditError> {
        let open_err = |message: String| AuditError::Open { path: config.path.clone(), message };
        if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::secrets::create_private_dir(parent).map_err(|e| open_err(e.to_string()))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&config.path)
            .map_err(|e| open_err(e.to_string()))?;
        let (seq, prev) = read_tail(&mut file).map_err(open_err)?;
        let sidecar = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(sidecar_path(&config.path))
            .map_err(|e| open_err(format!("checkpoint sidecar: {e}")))?;
        let mut writer = Writer {
            file,
            sidecar,
            seq,
            prev,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            key,
            config,
            broken: None,
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::Unavailable(format!("cannot start audit writer: {e}")))?;
        Ok(AuditLog { tx, thread: Arc::new(Mutex::new(Some(thread))) })
    }

    /// Write an entry and wait until it is on disk (`durable` also waits for fdatasync).
    /// Returns the record's `seq`.
    pub async fn append(&self, entry: AuditEntry, durable: bool) -> Result<u64, AuditError> {
        let (ack, done) = tokio::sync::oneshot::channel();
        self.tx
            .send(Msg::Append { entry: Box::new(entry), durable, ack: Some(ack) })
            .map_err(|_| AuditError::Unavailable("audit writer stopped".into()))?;
        done.await.map_err(|_| AuditError::Unavailable("audit writer stopped".into()))?
    }

    /// Queue an entry without waiting: for paths that cannot wait, such as a transfer
    /// dropped mid-way. Still written in order, before the final checkpoint.
    pub fn append_detached(&self, entry: AuditEntry) {
        if self.tx.send(Msg::Append { entry: Box::new(entry), durable: true, ack: None }).is_err() {
            tracing::error!("audit writer stopped; a record was lost");
        }
    }

    /// Write everything queued, a final checkpoint, and stop the writer.
    pub async fn close(&self) {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Msg::Close(done_tx)).is_ok() {
            let _ = done_rx.await;
        }
        let handle = self.thread.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// Find the last record of an existing trail: its `seq` and the hash of its line.
fn read_tail(file: &mut File) -> Result<(u64, String), String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len == 0 {
        return Ok((0, GENESIS.to_owned()));
    }
    let window = len.min(1 << 20);
    file.seek(SeekFrom::Start(len - window)).map_err(|e| e.to_string())?;
    let mut tail = Vec::with_capacity(window as usize);
    file.read_to_end(&mut tail).map_err(|e| e.to_string())?;
    if tail.last() != Some(&b'\n') {
        return Err("the trail ends with an incomplete record; check it with `gateway audit verify` \
                    and move it aside before starting"
            .into());
    }
    let body = tail.get(..tail.len() - 1).unwrap_or_default();
    let line = body.rsplit(|&b| b == b'\n').next().unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    let parsed: Seq = serde_json::from_slice(line).map_err(|e| {
        format!("the last record is not a valid audit record ({e}); check it with `gateway audit verify`")
    })?;
    Ok((parsed.seq, hex::encode(crate::digest::sha256(line))))
}

struct Writer {
    file: File,
    sidecar: File,
    seq: u64,
    prev: String,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    key: CheckpointKey,
    config: AuditConfig,
    broken: Option<String>,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            let wait = if self.since_checkpoint > 0 {
                self.config.checkpoint_interval.saturating_sub(self.last_checkpoint.elapsed())
            } else {
                Duration::from_secs(3600)
            };
            match rx.recv_timeout(wait) {
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < 4096 {
                        match rx.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    if let Some(closer) = self.write_batch(batch) {
                        self.checkpoint_if_needed(true);
                        let _ = closer.send(());
                        return;
                    }
                    self.checkpoint_if_needed(self.since_checkpoint >= self.config.checkpoint_every_records);
                }
                Err(RecvTimeoutError::Timeout) => self.checkpoint_if_needed(true),
                Err(RecvTimeoutError::Disconnected) => {
                    self.checkpoint_if_needed(true);
                    return;
                }
            }
        }
    }

    /// Serialise one line, chained to the previous one; advances `seq` and `prev`.
    fn chain(&mut self, entry: &AuditEntry, buf: &mut Vec<u8>) -> Result<(u64, String), String> {
        let seq = self.seq + 1;
        let start = buf.len();
        record::write_line(buf, seq, &now_rfc3339(), entry, &self.prev).map_err(|e| e.to_string())?;
        let hash = hex::encode(crate::digest::sha256(buf.get(start..).unwrap_or_default()));
        buf.push(b'\n');
        self.seq = seq;
        self.prev = hash.clone();
        Ok((seq, hash))
    }

    /// Write a batch; returns the close request if one was in it (entries after it are refused).
    fn write_batch(&mut self, batch: Vec<Msg>) -> Option<tokio::sync::oneshot::Sender<()>> {
        let mut buf = Vec::with_capacity(batch.len() * 512);
        let mut acks: Vec<(Option<Ack>, u64)> = Vec::new();
        let mut durable = false;
        let mut closer = None;
        for msg in batch {
            match msg {
                Msg::Close(c) => closer = Some(c),
                Msg::Append { entry, durable: d, ack } => {
                    if closer.is_some() || self.broken.is_some() {
                        if let Some(ack) = ack {
                            let _ = ack.send(Err(self.unavailable()));
                        }
                        continue;
                    }
                    match self.chain(&entry, &mut buf) {
                        Ok((seq, _)) => {
                            durable |= d;
                            self.since_checkpoint += 1;
                            acks.push((ack, seq));
                        }
                        Err(e) => {
                            self.broken = Some(e);
                            if let Some(ack) = ack {
                                let _ = ack.send(Err(self.unavailable()));
                            }
                        }
                    }
                }
            }
        }
        let result = self.file.write_all(&buf).and_then(|()| if durable { self.file.sync_data() } else { Ok(()) });
        if let Err(e) = result {
            tracing::error!(error = %e, "audit trail write failed; refusing further operations");
            self.broken = Some(e.to_string());
        }
        for (ack, seq) in acks {
            let reply = match &self.broken {
                None => Ok(seq),
                Some(_) => Err(self.unavailable()),
            };
            if let Some(ack) = ack {
                let _ = ack.send(reply);
            }
        }
        closer
    }

    fn unavailable(&self) -> AuditError {
        AuditError::Unavailable(self.broken.clone().unwrap_or_else(|| "audit trail is closing".into()))
    }

    fn checkpoint_if_needed(&mut self, due: bool) {
        if !due || self.since_checkpoint == 0 || self.broken.is_some() {
            return;
        }
        if let Err(e) = self.checkpoint() {
            tracing::error!(error = %e, "audit checkpoint failed; refusing further operations");
            self.broken = Some(e);
        }
    }

    fn checkpoint(&mut self) -> Result<(), String> {
        let seq = self.seq + 1;
        let signature = self.key.sign_checkpoint(seq, &self.prev);
        let entry = AuditEntry {
            public_key: Some(self.key.public_key_b64()),
            signature: Some(signature),
            ..AuditEntry::new(AuditEvent::Checkpoint)
        };
        let mut buf = Vec::with_capacity(512);
        let (seq, hash) = self.chain(&entry, &mut buf)?;
        self.file.write_all(&buf).and_then(|()| self.file.sync_data()).map_err(|e| e.to_string())?;
        let side = format!("{{\"seq\":{seq},\"sha256\":\"{hash}\"}}\n");
        self.sidecar
            .write_all(side.as_bytes())
            .and_then(|()| self.sidecar.sync_data())
            .map_err(|e| format!("checkpoint sidecar: {e}"))?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, every: u64, interval: Duration) -> AuditConfig {
        AuditConfig { path: dir.join("audit.jsonl"), checkpoint_every_records: every, checkpoint_interval: interval }
    }

    fn lines(dir: &Path) -> Vec<AuditLine> {
        std::fs::read_to_string(dir.join("audit.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn checkpoint_after_interval_and_chain_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("k.key");
        CheckpointKey::generate(&key_path).unwrap();
        let log = AuditLog::open(
            config(dir.path(), 1000, Duration::from_millis(100)),
            CheckpointKey::load(&key_path).unwrap(),
        )
        .unwrap();
        log.append(AuditEntry::new(AuditEvent::Operation), true).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let l = lines(dir.path());
        assert_eq!(l.len(), 2, "a time-based checkpoint follows the record");
        assert_eq!(l[1].entry.event, AuditEvent::Checkpoint);
        log.close().await;
        assert!(log.append(AuditEntry::new(AuditEvent::Operation), false).await.is_err(), "closed log refuses");

        // A second run continues the same chain.
        let log =
            AuditLog::open(config(dir.path(), 1000, Duration::from_secs(60)), CheckpointKey::load(&key_path).unwrap())
                .unwrap();
        let seq = log.append(AuditEntry::new(AuditEvent::Operation), false).await.unwrap();
        assert_eq!(seq, 3);
        log.close().await;
        let l = lines(dir.path());
        assert_eq!(l.last().unwrap().entry.event, AuditEvent::Checkpoint, "final checkpoint at close");
        let report = verify::verify_trail(&dir.path().join("audit.jsonl"), &Default::default()).unwrap();
        assert_eq!(report.records, 4);
        assert_eq!(report.unsealed, 0);
    }

    #[tokio::test]
    async fn count_based_checkpoints_and_incomplete_tail_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = CheckpointKey::generate(&dir.path().join("k.key")).unwrap();
        let log = AuditLog::open(config(dir.path(), 3, Duration::from_secs(60)), key).unwrap();
        for _ in 0..7 {
            log.append(AuditEntry::new(AuditEvent::Operation), false).await.unwrap();
        }
        log.close().await;
        let events: Vec<AuditEvent> = lines(dir.path()).iter().map(|l| l.entry.event).collect();
        let checkpoints = events.iter().filter(|e| **e == AuditEvent::Checkpoint).count();
        assert_eq!(checkpoints, 3, "{events:?}");
        // A half-written last line is not silently continued.
        let path = dir.path().join("audit.jsonl");
        let mut text = std::fs::read(&path).unwrap();
        text.extend_from_slice(b"{\"seq\":99");
        std::fs::write(&path, text).unwrap();
        let key = CheckpointKey::load(&dir.path().join("k.key")).unwrap();
        let err = AuditLog::open(config(dir.path(), 3, Duration::from_secs(60)), key).unwrap_err();
        assert!(err.to_string().contains("incomplete"), "{err}");
    }
}
