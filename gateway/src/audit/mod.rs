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
//! written and synced together (group commit). The queue is bounded ([`QUEUE_LIMIT`]) and an
//! append that is not confirmed within [`AuditConfig::append_timeout`] fails with
//! [`AuditError::Timeout`]. If a write fails the log fails closed: a partly written line is
//! cut off again (so the trail can be continued after a restart) and every later append
//! returns [`AuditError::Unavailable`], and the gateway refuses transfers.
//!
//! Every `started` or `intent` record is owed an outcome with the same `transfer_id`
//! ([`pending`]). At shutdown whatever is still open gets an `interrupted` record and the
//! final checkpoint is marked `"operation":"shutdown"`; at start a trail that does not end
//! with that mark (a crash, kill -9) is scanned and each transfer or change left without an
//! outcome gets its `interrupted` record, so no `started` or `intent` stays unanswered.

pub mod fold;
mod pending;
mod record;
pub mod ship;
pub mod signing;
pub mod verify;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use pending::{Interruption, PendingOutcomes};
pub use record::{AuditEntry, AuditEvent, AuditLine, BanFacts, CertFacts, HostKeyFacts, S3Facts};
pub use signing::CheckpointKey;

/// Hash of the line before the first one.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Records that may wait for the writer at once (one group commit takes up to this many).
/// A further [`AuditLog::append`] waits for a slot, within its timeout.
pub const QUEUE_LIMIT: usize = 4096;

/// The `operation` of the checkpoint written at a clean shutdown.
const SHUTDOWN_MARK: &str = "shutdown";

/// Settings of the audit writer.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The JSON Lines trail.
    pub path: PathBuf,
    /// Records between checkpoints.
    pub checkpoint_every_records: u64,
    /// Longest time an unsealed record waits for a checkpoint.
    pub checkpoint_interval: Duration,
    /// Longest an [`AuditLog::append`] waits for its record to be queued and written.
    pub append_timeout: Duration,
}

/// Why an audit record could not be written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The trail could not be written; the gateway must not proceed with the operation.
    #[error("audit trail unavailable: {0}")]
    Unavailable(String),
    /// The record was not confirmed within [`AuditConfig::append_timeout`] (a stalled disk or
    /// a full queue); the gateway must not proceed with the operation.
    #[error("audit trail did not confirm the record within {after:?}")]
    Timeout {
        /// The configured limit.
        after: Duration,
        /// The writer had already taken the record, so it may still appear in the trail.
        /// Otherwise it was withdrawn and never will.
        pending: bool,
    },
    /// The trail on disk cannot be continued.
    #[error("{path}: {message}")]
    Open {
        /// The trail.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl AuditError {
    /// The record this error is about may still be written (a timeout after the writer took
    /// it): whoever depends on it must account for both cases.
    pub fn may_still_be_written(&self) -> bool {
        matches!(self, AuditError::Timeout { pending: true, .. })
    }
}

type Ack = tokio::sync::oneshot::Sender<Result<u64, AuditError>>;

/// A queued record's claim: the writer takes it, or the caller withdraws it after a timeout;
/// whichever comes first wins.
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

/// A bounded append's queue slot, released when the writer is done with the record.
struct Slot {
    _permit: OwnedSemaphorePermit,
    claim: Arc<AtomicU8>,
}

impl Slot {
    /// The writer takes the record; false when the caller has withdrawn it.
    fn take(&self) -> bool {
        self.claim.compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

enum Msg {
    Append { entry: Box<AuditEntry>, durable: bool, ack: Option<Ack>, slot: Option<Slot> },
    Close(tokio::sync::oneshot::Sender<()>),
}

/// Handle to the audit writer; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    slots: Arc<Semaphore>,
    append_timeout: Duration,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// Why the trail refuses records, once it does (shared with the writer).
    broken: Arc<Mutex<Option<String>>>,
    #[cfg(test)]
    faults: Arc<faults::Faults>,
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

fn stopped() -> AuditError {
    AuditError::Unavailable("audit writer stopped".into())
}

/// At most this many ids in a log line.
const IDS_IN_LOG: usize = 20;

impl AuditLog {
    /// Open (or continue) the trail and start the writer thread. A trail that did not end
    /// with a clean shutdown is scanned first, and every transfer or change it left without
    /// an outcome gets an `interrupted` record (written and synced before this returns).
    pub fn open(config: AuditConfig, key: CheckpointKey) -> Result<AuditLog, AuditError> {
        Ok(AuditLog::open_recovering(config, key, &[])?.0)
    }

    /// [`AuditLog::open`], also returning the `completed` upload records of the transfers
    /// in `uploads` (ids of uploads the store found interrupted,
    /// [`crate::storage::ObjectStore::interrupted_uploads`]) when the trail did not end with
    /// a clean shutdown: their objects were committed, but their names may not have reached
    /// the disk. After a clean shutdown the map is empty (every commit had ended).
    pub fn open_recovering(
        config: AuditConfig,
        key: CheckpointKey,
        uploads: &[String],
    ) -> Result<(AuditLog, HashMap<String, AuditEntry>), AuditError> {
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
        let tail = read_tail(&mut file).map_err(open_err)?;
        let mut pending = PendingOutcomes::default();
        let mut completed = HashMap::new();
        if tail.seq > 0 && !tail.clean_shutdown {
            (pending, completed) = scan_pending(&config.path, uploads).map_err(open_err)?;
        }
        let sidecar = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(sidecar_path(&config.path))
            .map_err(|e| open_err(format!("checkpoint sidecar: {e}")))?;
        #[cfg(test)]
        let faults = Arc::new(faults::Faults::default());
        let mut writer = Writer {
            trail: TrailFile {
                good_len: tail.len,
                file,
                #[cfg(test)]
                faults: faults.clone(),
            },
            sidecar,
            seq: tail.seq,
            prev: tail.prev,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            key,
            broken: None,
            shared_broken: Arc::default(),
            pending: PendingOutcomes::default(),
            clean_tail: tail.clean_shutdown,
            config: config.clone(),
        };
        if !pending.is_empty() {
            let ids = pending.ids();
            tracing::warn!(
                count = ids.len(),
                ids = ?ids.get(..ids.len().min(IDS_IN_LOG)).unwrap_or_default(),
                "the previous run stopped with transfers or changes whose outcome was not recorded; recording them as interrupted"
            );
            writer.write_entries(&pending.interrupt_all(Interruption::Crash)).map_err(open_err)?;
        }
        let broken = writer.shared_broken.clone();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::Unavailable(format!("cannot start audit writer: {e}")))?;
        let log = AuditLog {
            tx,
            slots: Arc::new(Semaphore::new(QUEUE_LIMIT)),
            append_timeout: config.append_timeout,
            thread: Arc::new(Mutex::new(Some(thread))),
            broken,
            #[cfg(test)]
            faults,
        };
        Ok((log, completed))
    }

    /// Write an entry and wait until it is on disk (`durable` also waits for fdatasync).
    /// Returns the record's `seq`. Waits for a queue slot when [`QUEUE_LIMIT`] records are
    /// queued; fails with [`AuditError::Timeout`] when the record is not confirmed within
    /// [`AuditConfig::append_timeout`] (withdrawing it if the writer has not taken it yet).
    pub async fn append(&self, mut entry: AuditEntry, durable: bool) -> Result<u64, AuditError> {
        entry.bound_fields();
        crate::metrics::metrics().observe_record(&entry);
        let started = Instant::now();
        let result = self.append_inner(entry, durable).await;
        crate::metrics::metrics().audit_append(started.elapsed(), result.is_ok());
        result
    }

    /// Why the trail refuses records, if it does (for readiness).
    pub fn broken(&self) -> Option<String> {
        self.broken.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    async fn append_inner(&self, entry: AuditEntry, durable: bool) -> Result<u64, AuditError> {
        let claim = Arc::new(AtomicU8::new(QUEUED));
        let write = async {
            let permit = self.slots.clone().acquire_owned().await.map_err(|_| stopped())?;
            let (ack, done) = tokio::sync::oneshot::channel();
            let slot = Slot { _permit: permit, claim: claim.clone() };
            self.tx
                .send(Msg::Append { entry: Box::new(entry), durable, ack: Some(ack), slot: Some(slot) })
                .map_err(|_| stopped())?;
            done.await.map_err(|_| stopped())?
        };
        match tokio::time::timeout(self.append_timeout, write).await {
            Ok(result) => result,
            Err(_) => {
                let withdrawn = claim.compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire).is_ok();
                Err(AuditError::Timeout { after: self.append_timeout, pending: !withdrawn })
            }
        }
    }

    /// Queue an entry (not durable) without waiting for the writer: for a record that only has
    /// to be on disk before a later durable one, which it precedes in the trail (the queue is
    /// one FIFO), so that append confirms both. Refused at once while the trail is broken;
    /// takes a queue slot like [`AuditLog::append`] (waiting at most
    /// [`AuditConfig::append_timeout`] for one, nothing queued then). A write error after this
    /// returns is not reported here: it breaks the trail, and the later append fails.
    pub async fn append_queued(&self, mut entry: AuditEntry) -> Result<(), AuditError> {
        if let Some(why) = self.broken() {
            return Err(AuditError::Unavailable(why));
        }
        entry.bound_fields();
        let permit = match tokio::time::timeout(self.append_timeout, self.slots.clone().acquire_owned()).await {
            Ok(permit) => permit.map_err(|_| stopped())?,
            Err(_) => return Err(AuditError::Timeout { after: self.append_timeout, pending: false }),
        };
        crate::metrics::metrics().observe_record(&entry);
        let slot = Slot { _permit: permit, claim: Arc::new(AtomicU8::new(QUEUED)) };
        self.tx
            .send(Msg::Append { entry: Box::new(entry), durable: false, ack: None, slot: Some(slot) })
            .map_err(|_| stopped())
    }

    /// Queue an entry without waiting: for paths that cannot wait, such as a transfer
    /// dropped mid-way, and for the outcome owed to a record already queued. Still written in
    /// order, before the final checkpoint. This bypasses the queue bound: such records are
    /// bounded by the transfers in flight (each owes at most one or two), not by clients.
    pub fn append_detached(&self, mut entry: AuditEntry) {
        entry.bound_fields();
        crate::metrics::metrics().observe_record(&entry);
        if self.tx.send(Msg::Append { entry: Box::new(entry), durable: true, ack: None, slot: None }).is_err() {
            tracing::error!("audit writer stopped; a record was lost");
        }
    }

    /// Write everything queued, an `interrupted` record for each transfer still open, a
    /// final checkpoint, and stop the writer.
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

    /// Fault injection for tests.
    #[cfg(test)]
    pub(crate) fn faults(&self) -> &faults::Faults {
        &self.faults
    }
}

/// What the end of an existing trail says.
struct Tail {
    /// `seq` of the last record (0 for an empty trail).
    seq: u64,
    /// Hash of the last line.
    prev: String,
    /// The file's length.
    len: u64,
    /// The last record is the checkpoint of a clean shutdown: nothing was left open.
    clean_shutdown: bool,
}

/// Find the last record of an existing trail.
fn read_tail(file: &mut File) -> Result<Tail, String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len == 0 {
        return Ok(Tail { seq: 0, prev: GENESIS.to_owned(), len, clean_shutdown: false });
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
    struct Last {
        seq: u64,
        #[serde(default)]
        event: Option<String>,
        #[serde(default)]
        operation: Option<String>,
    }
    let parsed: Last = serde_json::from_slice(line).map_err(|e| {
        format!("the last record is not a valid audit record ({e}); check it with `gateway audit verify`")
    })?;
    let clean_shutdown =
        parsed.event.as_deref() == Some("checkpoint") && parsed.operation.as_deref() == Some(SHUTDOWN_MARK);
    Ok(Tail { seq: parsed.seq, prev: hex::encode(crate::digest::sha256(line)), len, clean_shutdown })
}

/// Read the whole trail and return what it left without an outcome, and the `completed`
/// upload records of the transfers in `uploads`. Lines that do not parse are skipped (with a
/// warning): finding them is `audit verify`'s job, not the start's.
fn scan_pending(path: &Path, uploads: &[String]) -> Result<(PendingOutcomes, HashMap<String, AuditEntry>), String> {
    let uploads: HashSet<&str> = uploads.iter().map(String::as_str).collect();
    let mut completed = HashMap::new();
    #[derive(serde::Deserialize)]
    struct Peek<'a> {
        event: AuditEvent,
        #[serde(borrow, default)]
        transfer_id: Option<std::borrow::Cow<'a, str>>,
    }
    let started = Instant::now();
    let file = File::open(path).map_err(|e| format!("scanning the trail: {e}"))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut pending = PendingOutcomes::default();
    let mut line = Vec::new();
    let (mut records, mut unreadable) = (0u64, 0u64);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(|e| format!("scanning the trail: {e}"))? == 0 {
            break;
        }
        records += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let Ok(peek) = serde_json::from_slice::<Peek>(text) else {
            unreadable += 1;
            continue;
        };
        if pending::opens(peek.event) {
            match serde_json::from_slice::<AuditLine>(text) {
                Ok(full) => pending.observe_entry(&full.entry),
                Err(_) => unreadable += 1,
            }
        } else if peek.event == AuditEvent::Completed
            && peek.transfer_id.as_deref().is_some_and(|id| uploads.contains(id))
        {
            pending.observe(peek.event, peek.transfer_id.as_deref(), None);
            match serde_json::from_slice::<AuditLine>(text) {
                Ok(full) if full.entry.operation.as_deref() == Some("upload") => {
                    if let Some(id) = full.entry.transfer_id.clone() {
                        completed.insert(id, full.entry);
                    }
                }
                Ok(_) => {}
                Err(_) => unreadable += 1,
            }
        } else {
            pending.observe(peek.event, peek.transfer_id.as_deref(), None);
        }
    }
    if unreadable > 0 {
        tracing::warn!(unreadable, "the audit trail has records that do not parse; run `gateway audit verify`");
    }
    tracing::info!(records, ms = started.elapsed().as_millis() as u64, "scanned the audit trail after an unclean stop");
    Ok((pending, completed))
}

/// The trail file, with the length of what is known to be whole records.
struct TrailFile {
    file: File,
    good_len: u64,
    #[cfg(test)]
    faults: Arc<faults::Faults>,
}

impl TrailFile {
    /// Append `buf` (whole lines), syncing when `durable`. On failure the file is cut back to
    /// its last whole record, so a restart can continue the chain.
    fn append(&mut self, buf: &[u8], durable: bool) -> Result<(), String> {
        if buf.is_empty() {
            return Ok(());
        }
        match self.write(buf, durable) {
            Ok(()) => {
                self.good_len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(t) = self.file.set_len(self.good_len) {
                    tracing::error!(error = %t, "could not cut a partly written audit record off the trail");
                }
                Err(e.to_string())
            }
        }
    }

    fn write(&mut self, buf: &[u8], durable: bool) -> std::io::Result<()> {
        #[cfg(test)]
        match self.faults.check(buf) {
            Some(faults::Fault::Fail) => {
                self.file.write_all(buf.get(..buf.len() / 2).unwrap_or_default())?;
                return Err(std::io::Error::other("injected write failure"));
            }
            Some(faults::Fault::Hold(held)) => {
                while held.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            None => {}
        }
        self.file.write_all(buf)?;
        if durable {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

struct Writer {
    trail: TrailFile,
    sidecar: File,
    seq: u64,
    prev: String,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    key: CheckpointKey,
    config: AuditConfig,
    broken: Option<String>,
    /// `broken`, as the handles see it.
    shared_broken: Arc<Mutex<Option<String>>>,
    /// Transfers and changes written without their outcome yet.
    pending: PendingOutcomes,
    /// Nothing was written since the clean-shutdown checkpoint that ends the trail.
    clean_tail: bool,
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
                    while batch.len() < QUEUE_LIMIT {
                        match rx.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    if let Some(closer) = self.write_batch(batch) {
                        self.shutdown();
                        // Anything still queued arrived after the close and cannot be written.
                        let late = rx.try_iter().filter(|m| matches!(m, Msg::Append { .. })).count();
                        if late > 0 {
                            tracing::error!(count = late, "audit trail closed; a record was lost");
                        }
                        let _ = closer.send(());
                        return;
                    }
                    self.checkpoint_if_needed(self.since_checkpoint >= self.config.checkpoint_every_records);
                    self.publish_broken();
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.checkpoint_if_needed(true);
                    self.publish_broken();
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.shutdown();
                    return;
                }
            }
        }
    }

    /// Let the handles see that the trail broke.
    fn publish_broken(&self) {
        if let Some(why) = &self.broken {
            let mut shared = self.shared_broken.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if shared.is_none() {
                *shared = Some(why.clone());
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
        self.pending.observe_entry(entry);
        self.clean_tail = false;
        Ok((seq, hash))
    }

    /// Write a batch; returns the close request if one was in it (entries after it are refused).
    fn write_batch(&mut self, batch: Vec<Msg>) -> Option<tokio::sync::oneshot::Sender<()>> {
        let mut buf = Vec::with_capacity(batch.len() * 512);
        let mut acks: Vec<(Option<Ack>, u64, Option<Slot>)> = Vec::new();
        let mut durable = false;
        let mut closer = None;
        for msg in batch {
            match msg {
                Msg::Close(c) => closer = Some(c),
                Msg::Append { entry, durable: d, ack, slot } => {
                    if slot.as_ref().is_some_and(|s| !s.take()) {
                        continue; // withdrawn by its caller after a timeout
                    }
                    if closer.is_some() || self.broken.is_some() {
                        match ack {
                            Some(ack) => {
                                let _ = ack.send(Err(self.unavailable()));
                            }
                            None if closer.is_some() => tracing::error!("audit trail closed; a record was lost"),
                            None => {}
                        }
                        continue;
                    }
                    match self.chain(&entry, &mut buf) {
                        Ok((seq, _)) => {
                            durable |= d;
                            self.since_checkpoint += 1;
                            acks.push((ack, seq, slot));
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
        if let Err(e) = self.trail.append(&buf, durable) {
            tracing::error!(error = %e, "audit trail write failed; refusing further operations");
            self.broken = Some(e);
        }
        // Before anyone hears of it, so that a caller told of the failure finds the trail
        // broken ([`AuditLog::append_queued`] refuses at once).
        self.publish_broken();
        for (ack, seq, _slot) in acks {
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

    /// Write `entries` and sync.
    fn write_entries(&mut self, entries: &[AuditEntry]) -> Result<(), String> {
        let mut buf = Vec::with_capacity(entries.len() * 512);
        for entry in entries {
            self.chain(entry, &mut buf)?;
            self.since_checkpoint += 1;
        }
        self.trail.append(&buf, true)
    }

    fn unavailable(&self) -> AuditError {
        AuditError::Unavailable(self.broken.clone().unwrap_or_else(|| "audit trail is closing".into()))
    }

    /// Close what is still open (`interrupted`) and write the clean-shutdown checkpoint.
    fn shutdown(&mut self) {
        if self.broken.is_some() {
            return;
        }
        if !self.pending.is_empty() {
            let ids = self.pending.ids();
            tracing::warn!(
                count = ids.len(),
                ids = ?ids.get(..ids.len().min(IDS_IN_LOG)).unwrap_or_default(),
                "transfers still open as the audit trail closes; recording them as interrupted"
            );
            let entries = self.pending.interrupt_all(Interruption::Shutdown);
            if let Err(e) = self.write_entries(&entries) {
                tracing::error!(error = %e, "audit trail write failed at shutdown");
                self.broken = Some(e);
                return;
            }
        }
        if self.clean_tail {
            return; // nothing written since the last clean shutdown
        }
        if let Err(e) = self.checkpoint(true) {
            tracing::error!(error = %e, "final audit checkpoint failed");
            self.broken = Some(e);
        }
    }

    fn checkpoint_if_needed(&mut self, due: bool) {
        if !due || self.since_checkpoint == 0 || self.broken.is_some() {
            return;
        }
        if let Err(e) = self.checkpoint(false) {
            tracing::error!(error = %e, "audit checkpoint failed; refusing further operations");
            self.broken = Some(e);
        }
    }

    /// A signed checkpoint; `last` marks the clean-shutdown one (written with nothing open).
    fn checkpoint(&mut self, last: bool) -> Result<(), String> {
        let seq = self.seq + 1;
        let signature = self.key.sign_checkpoint(seq, &self.prev);
        let entry = AuditEntry {
            public_key: Some(self.key.public_key_b64()),
            signature: Some(signature),
            operation: last.then(|| SHUTDOWN_MARK.to_owned()),
            ..AuditEntry::new(AuditEvent::Checkpoint)
        };
        let mut buf = Vec::with_capacity(512);
        let (seq, hash) = self.chain(&entry, &mut buf)?;
        self.trail.append(&buf, true)?;
        let side = format!("{{\"seq\":{seq},\"sha256\":\"{hash}\"}}\n");
        self.sidecar
            .write_all(side.as_bytes())
            .and_then(|()| self.sidecar.sync_data())
            .map_err(|e| format!("checkpoint sidecar: {e}"))?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.clean_tail = last;
        Ok(())
    }
}

/// Fault injection for unit tests: fail or stall the write of a batch whose bytes match.
#[cfg(test)]
pub(crate) mod faults {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};

    /// What to do to a matching write.
    #[derive(Debug, Clone)]
    pub(crate) enum Fault {
        /// Write half of it, then fail (the trail breaks).
        Fail,
        /// Wait while the flag is set (a stalled disk).
        Hold(Arc<AtomicBool>),
    }

    type Rule = Box<dyn Fn(&str) -> Option<Fault> + Send + Sync>;

    /// The rule in force (none by default).
    #[derive(Default)]
    pub(crate) struct Faults {
        rule: Mutex<Option<Rule>>,
    }

    impl Faults {
        /// Apply `rule` to every later write (it sees the batch's text).
        pub(crate) fn set(&self, rule: impl Fn(&str) -> Option<Fault> + Send + Sync + 'static) {
            *self.rule.lock().unwrap() = Some(Box::new(rule));
        }

        pub(super) fn check(&self, buf: &[u8]) -> Option<Fault> {
            let rule = self.rule.lock().unwrap();
            rule.as_ref().and_then(|r| r(&String::from_utf8_lossy(buf)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, every: u64, interval: Duration) -> AuditConfig {
        AuditConfig {
            path: dir.join("audit.jsonl"),
            checkpoint_every_records: every,
            checkpoint_interval: interval,
            append_timeout: Duration::from_secs(10),
        }
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
        let l = lines(dir.path());
        assert_eq!(l.len(), 3, "the clean-shutdown checkpoint follows");
        assert_eq!(l[2].entry.operation.as_deref(), Some(SHUTDOWN_MARK));

        // A second run continues the same chain.
        let log =
            AuditLog::open(config(dir.path(), 1000, Duration::from_secs(60)), CheckpointKey::load(&key_path).unwrap())
                .unwrap();
        let seq = log.append(AuditEntry::new(AuditEvent::Operation), false).await.unwrap();
        assert_eq!(seq, 4);
        log.close().await;
        let l = lines(dir.path());
        assert_eq!(l.last().unwrap().entry.event, AuditEvent::Checkpoint, "final checkpoint at close");
        let report = verify::verify_trail(&dir.path().join("audit.jsonl"), &Default::default()).unwrap();
        assert_eq!(report.records, 5);
        assert_eq!(report.unsealed, 0);

        // A run that writes nothing adds nothing after a clean shutdown.
        let log =
            AuditLog::open(config(dir.path(), 1000, Duration::from_secs(60)), CheckpointKey::load(&key_path).unwrap())
                .unwrap();
        log.close().await;
        assert_eq!(lines(dir.path()).len(), 5);
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

    fn opened(event: AuditEvent, id: &str, op: &str) -> AuditEntry {
        AuditEntry {
            transfer_id: Some(id.into()),
            user: Some("alice".into()),
            operation: Some(op.into()),
            path: Some(format!("{id}.bin")),
            ..AuditEntry::new(event)
        }
    }

    fn open_log(dir: &Path, timeout: Duration) -> AuditLog {
        let key_path = dir.join("k.key");
        if !key_path.exists() {
            CheckpointKey::generate(&key_path).unwrap();
        }
        let config = AuditConfig { append_timeout: timeout, ..config(dir, 1000, Duration::from_secs(60)) };
        AuditLog::open(config, CheckpointKey::load(&key_path).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_failed_write_breaks_the_log_and_leaves_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path(), Duration::from_secs(10));
        log.append(opened(AuditEvent::Started, "t1", "upload"), false).await.unwrap();
        log.faults().set(|text| text.contains("\"intent\"").then_some(faults::Fault::Fail));
        let err = log.append(opened(AuditEvent::Intent, "t1", "upload"), true).await.unwrap_err();
        assert!(matches!(err, AuditError::Unavailable(_)), "{err:?}");
        let later = log.append(AuditEntry::new(AuditEvent::Operation), false).await.unwrap_err();
        assert!(matches!(later, AuditError::Unavailable(_)), "the log stays closed: {later:?}");
        log.close().await;
        // The half-written intent was cut off: the trail ends with a whole record, and it
        // verifies, with t1 reported as open.
        let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        assert!(text.ends_with('\n') && !text.contains("\"intent\""), "{text}");
        let report = verify::verify_trail(&dir.path().join("audit.jsonl"), &Default::default()).unwrap();
        assert_eq!(report.open, ["t1"]);
    }

    #[tokio::test]
    async fn a_queued_record_precedes_the_next_append_and_its_write_failure_fails_that_append() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path(), Duration::from_secs(10));
        log.append_queued(opened(AuditEvent::Started, "t1", "upload")).await.unwrap();
        let seq = log.append(opened(AuditEvent::Intent, "t1", "upload"), true).await.unwrap();
        let events: Vec<(u64, AuditEvent)> = lines(dir.path()).iter().map(|l| (l.seq, l.entry.event)).collect();
        assert_eq!(events, [(seq - 1, AuditEvent::Started), (seq, AuditEvent::Intent)]);
        // The queued record cannot be written: the trail breaks, the append after it fails,
        // and nothing more is queued.
        log.faults().set(|text| text.contains("\"t2\"").then_some(faults::Fault::Fail));
        log.append_queued(opened(AuditEvent::Started, "t2", "upload")).await.unwrap();
        let err = log.append(opened(AuditEvent::Intent, "t3", "upload"), true).await.unwrap_err();
        assert!(matches!(err, AuditError::Unavailable(_)), "{err:?}");
        let refused = log.append_queued(opened(AuditEvent::Started, "t4", "upload")).await.unwrap_err();
        assert!(refused.to_string().contains("audit trail unavailable"), "{refused}");
        log.close().await;
        let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        assert!(!text.contains("\"t2\"") && !text.contains("\"t3\"") && !text.contains("\"t4\""), "{text}");
    }

    #[tokio::test]
    async fn an_unconfirmed_append_times_out_and_a_record_not_yet_taken_is_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path(), Duration::from_millis(300));
        let held = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let hold = held.clone();
        log.faults().set(move |text| text.contains("slow").then(|| faults::Fault::Hold(hold.clone())));
        let slow = AuditEntry { path: Some("slow".into()), ..AuditEntry::new(AuditEvent::Operation) };
        let first = log.append(slow, true).await.unwrap_err();
        assert!(matches!(first, AuditError::Timeout { pending: true, .. }), "{first:?}");
        assert!(first.may_still_be_written());
        // Queued while the writer is stuck on the first record: never taken, so withdrawn.
        let late = AuditEntry { path: Some("withdrawn".into()), ..AuditEntry::new(AuditEvent::Operation) };
        let second = log.append(late, true).await.unwrap_err();
        assert!(matches!(second, AuditError::Timeout { pending: false, .. }), "{second:?}");
        // The disk recovers: later records are written, the withdrawn one never is.
        held.store(false, Ordering::Release);
        log.append(AuditEntry::new(AuditEvent::Operation), true).await.unwrap();
        log.close().await;
        let paths: Vec<Option<String>> = lines(dir.path()).into_iter().map(|l| l.entry.path).collect();
        assert!(paths.contains(&Some("slow".into())), "{paths:?}");
        assert!(!paths.contains(&Some("withdrawn".into())), "{paths:?}");
    }

    #[tokio::test]
    async fn after_an_unclean_stop_the_next_open_records_what_was_left_open() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path(), Duration::from_secs(10));
        log.append(opened(AuditEvent::Started, "up", "upload"), false).await.unwrap();
        log.append(opened(AuditEvent::Started, "done", "upload"), false).await.unwrap();
        log.append(opened(AuditEvent::Completed, "done", "upload"), true).await.unwrap();
        log.append(opened(AuditEvent::Intent, "del", "delete"), true).await.unwrap();
        // Stop the way a crash does: no outcome, no shutdown checkpoint (the trail breaks,
        // so close writes nothing).
        log.faults().set(|_| Some(faults::Fault::Fail));
        assert!(log.append(AuditEntry::new(AuditEvent::Operation), true).await.is_err());
        log.close().await;
        let report = verify::verify_trail(&dir.path().join("audit.jsonl"), &Default::default()).unwrap();
        assert_eq!(report.open, ["del", "up"]);

        let log = open_log(dir.path(), Duration::from_secs(10));
        log.close().await;
        let l = lines(dir.path());
        let interrupted: Vec<&AuditEntry> =
            l.iter().map(|l| &l.entry).filter(|e| e.event == AuditEvent::Interrupted).collect();
        assert_eq!(interrupted.len(), 2, "{l:#?}");
        assert_eq!(interrupted[0].transfer_id.as_deref(), Some("del"));
        assert_eq!(interrupted[0].path.as_deref(), Some("del.bin"));
        assert_eq!(interrupted[0].user.as_deref(), Some("alice"));
        assert!(interrupted[0].error.as_deref().unwrap().contains("delete may or may not"));
        assert_eq!(interrupted[1].transfer_id.as_deref(), Some("up"));
        let report = verify::verify_trail(&dir.path().join("audit.jsonl"), &Default::default()).unwrap();
        assert!(report.open.is_empty(), "{:?}", report.open);
        assert_eq!(l.last().unwrap().entry.operation.as_deref(), Some(SHUTDOWN_MARK));

        // Recovered once: a further start finds nothing to do.
        let log = open_log(dir.path(), Duration::from_secs(10));
        log.close().await;
        assert_eq!(lines(dir.path()).len(), l.len());
    }

    #[tokio::test]
    async fn after_an_unclean_stop_the_completed_records_of_interrupted_uploads_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("k.key");
        let log = open_log(dir.path(), Duration::from_secs(10));
        for id in ["placed", "unfinished", "elsewhere"] {
            log.append(opened(AuditEvent::Intent, id, "upload"), true).await.unwrap();
        }
        log.append(
            AuditEntry {
                object_key: Some("in/placed.bin".into()),
                ..opened(AuditEvent::Completed, "placed", "upload")
            },
            true,
        )
        .await
        .unwrap();
        log.append(opened(AuditEvent::Completed, "elsewhere", "upload"), true).await.unwrap();
        log.append(opened(AuditEvent::Operation, "renamed", "rename"), true).await.unwrap();
        log.faults().set(|_| Some(faults::Fault::Fail));
        assert!(log.append(AuditEntry::new(AuditEvent::Operation), true).await.is_err());
        log.close().await;

        // The store asks about the uploads it found interrupted, "elsewhere" is not one.
        let asked = ["placed".to_owned(), "unfinished".to_owned(), "renamed".to_owned()];
        let config = config(dir.path(), 1000, Duration::from_secs(60));
        let (log, completed) =
            AuditLog::open_recovering(config.clone(), CheckpointKey::load(&key_path).unwrap(), &asked).unwrap();
        log.close().await;
        assert_eq!(completed.keys().collect::<Vec<_>>(), ["placed"]);
        assert_eq!(completed["placed"].object_key.as_deref(), Some("in/placed.bin"));
        let interrupted: Vec<Option<String>> = lines(dir.path())
            .into_iter()
            .filter(|l| l.entry.event == AuditEvent::Interrupted)
            .map(|l| l.entry.transfer_id)
            .collect();
        assert_eq!(interrupted, [Some("unfinished".to_owned())]);

        // After the clean stop that followed, nothing is reported again.
        let (log, completed) =
            AuditLog::open_recovering(config, CheckpointKey::load(&key_path).unwrap(), &asked).unwrap();
        log.close().await;
        assert!(completed.is_empty(), "{completed:?}");
    }

    #[tokio::test]
    async fn close_records_transfers_still_open_as_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path(), Duration::from_secs(10));
        log.append(opened(AuditEvent::Started, "stuck", "download"), false).await.unwrap();
        log.close().await;
        log.append_detached(opened(AuditEvent::Failed, "stuck", "download"));
        let l = lines(dir.path());
        let events: Vec<AuditEvent> = l.iter().map(|l| l.entry.event).collect();
        assert_eq!(events, [AuditEvent::Started, AuditEvent::Interrupted, AuditEvent::Checkpoint]);
        assert!(l[1].entry.error.as_deref().unwrap().contains("shut down"));
        assert_eq!(l[2].entry.operation.as_deref(), Some(SHUTDOWN_MARK));
    }
}
