//! `gateway audit verify`: check a trail's hash chain, sequence, checkpoint signatures and the
//! checkpoint sidecar, and name the first record that is wrong. It also lists the transfers
//! and changes whose `started` or `intent` record has no outcome yet: not tampering (a running
//! gateway has some in flight, and the next start after a crash records them as
//! `interrupted`), but worth a look in a trail that is not being written.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::pending::PendingOutcomes;
use super::record::{AuditEvent, AuditLine};
use super::{sidecar_path, signing, GENESIS};

/// How to verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Pin the checkpoint key (raw 32 bytes); otherwise the first checkpoint's key is taken
    /// and every later checkpoint must use the same one.
    pub public_key: Option<Vec<u8>>,
    /// The checkpoint sidecar; `None` means `<trail>.checkpoints` if it exists.
    pub sidecar: Option<PathBuf>,
}

/// What an intact trail contained.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Records (lines) checked.
    pub records: u64,
    /// Checkpoints among them.
    pub checkpoints: u64,
    /// `seq` of the last checkpoint.
    pub last_checkpoint: Option<u64>,
    /// Records after the last checkpoint: intact as far as the chain shows, but a truncation
    /// that removed only these could not be detected.
    pub unsealed: u64,
    /// The checkpoint key (base64), if any checkpoint was seen.
    pub public_key: Option<String>,
    /// The sidecar that was cross-checked, if any.
    pub sidecar: Option<PathBuf>,
    /// `transfer_id`s of `started`/`intent` records without an outcome, sorted.
    pub open: Vec<String>,
}

/// The first problem found.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: line {line}: {message}")]
pub struct VerifyError {
    /// The trail.
    pub file: PathBuf,
    /// 1-based line of the first bad record (0 for file-level problems).
    pub line: u64,
    /// What is wrong.
    pub message: String,
}

/// Verify one trail file.
pub fn verify_trail(path: &Path, options: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let fail = |line: u64, message: String| VerifyError { file: path.to_owned(), line, message };
    let file = File::open(path).map_err(|e| fail(0, e.to_string()))?;
    let mut reader = BufReader::new(file);
    let mut pinned = options.public_key.clone();
    let mut prev = GENESIS.to_owned();
    let mut line_no = 0u64;
    let mut checkpoints: HashMap<u64, String> = HashMap::new();
    let mut report = VerifyReport {
        records: 0,
        checkpoints: 0,
        last_checkpoint: None,
        unsealed: 0,
        public_key: None,
        sidecar: None,
        open: Vec::new(),
    };
    let mut pending = PendingOutcomes::default();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| fail(line_no + 1, e.to_string()))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let Some(line) = buf.strip_suffix(b"\n") else {
            return Err(fail(line_no, "incomplete record (no newline): the trail was cut mid-record".into()));
        };
        let rec: AuditLine = serde_json::from_slice(line)
            .map_err(|e| fail(line_no, format!("not a valid audit record ({e}): the line was altered")))?;
        if rec.seq != line_no {
            return Err(fail(
                line_no,
                format!(
                    "seq {} where {line_no} was expected: a record was removed, inserted or reordered here",
                    rec.seq
                ),
            ));
        }
        if rec.prev != prev {
            return Err(fail(
                line_no,
                format!(
                    "hash chain broken: prev does not match line {}; that record was altered or one was removed",
                    line_no.saturating_sub(1)
                ),
            ));
        }
        let hash = hex::encode(crate::digest::sha256(line));
        if rec.entry.event == AuditEvent::Checkpoint {
            let key_b64 = rec.entry.public_key.as_deref().unwrap_or_default();
            let key = B64.decode(key_b64).map_err(|_| fail(line_no, "checkpoint has no valid public_key".into()))?;
            match &pinned {
                Some(p) if *p != key => {
                    return Err(fail(line_no, "checkpoint signed with a different key than the trusted one".into()))
                }
                Some(_) => {}
                None => pinned = Some(key.clone()),
            }
            let sig = rec.entry.signature.as_deref().unwrap_or_default();
            if !signing::verify_checkpoint(&key, rec.seq, &rec.prev, sig) {
                return Err(fail(line_no, "checkpoint signature does not verify".into()));
            }
            report.checkpoints += 1;
            report.last_checkpoint = Some(rec.seq);
            report.unsealed = 0;
            checkpoints.insert(rec.seq, hash.clone());
        } else {
            report.unsealed += 1;
            pending.observe_entry(&rec.entry);
        }
        prev = hash;
        report.records += 1;
    }
    report.public_key = pinned.map(|k| B64.encode(k));
    report.open = pending.ids();

    let sidecar = match &options.sidecar {
        Some(p) => Some(p.clone()),
        None => Some(sidecar_path(path)).filter(|p| p.exists()),
    };
    if let Some(sidecar) = sidecar {
        check_sidecar(&sidecar, &checkpoints, report.records)
            .map_err(|(line, message)| fail(line, format!("{message} (checkpoint sidecar {})", sidecar.display())))?;
        report.sidecar = Some(sidecar);
    }
    Ok(report)
}

fn check_sidecar(sidecar: &Path, seen: &HashMap<u64, String>, records: u64) -> Result<(), (u64, String)> {
    #[derive(serde::Deserialize)]
    struct Entry {
        seq: u64,
        sha256: String,
    }
    let file = File::open(sidecar).map_err(|e| (0, e.to_string()))?;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| (0, e.to_string()))?;
        let entry: Entry =
            serde_json::from_str(&line).map_err(|e| (0, format!("sidecar line {} is malformed: {e}", i + 1)))?;
        if entry.seq > records {
            return Err((
                records + 1,
                format!("trail truncated: checkpoint {} is recorded but the trail ends at record {records}", entry.seq),
            ));
        }
        match seen.get(&entry.seq) {
            Some(h) if *h == entry.sha256 => {}
            Some(_) => return Err((entry.seq, format!("checkpoint {} differs from its recorded hash", entry.seq))),
            None => {
                return Err((entry.seq, format!("record {} should be a checkpoint but is not", entry.seq)));
            }
        }
    }
    Ok(())
}
