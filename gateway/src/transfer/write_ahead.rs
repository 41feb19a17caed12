//! Write-ahead auditing of changes: the durable `intent` before storage is touched, the
//! durable outcome after, and what happens when either cannot be written.
//!
//! | change | undo when its outcome cannot be recorded |
//! |---|---|
//! | upload commit | the new object is deleted (an object it replaced is gone for good) |
//! | rename | renamed back, never replacing (an object it replaced is gone for good) |
//! | mkdir | the directory is removed |
//! | rmdir | the directory is made again |
//! | delete | none: the object is gone |
//!
//! Whatever the undo did is queued as a further outcome record (written if the trail
//! recovers, e.g. from a stall). If the trail is broken for good, the `intent` stays without
//! an outcome and the next start records it as `interrupted` ("may or may not have taken
//! effect").

use crate::audit::{AuditEntry, AuditError, AuditEvent, AuditLog};
use crate::path::ObjectKey;
use crate::storage::{ObjectStore, StorageError};

/// How to take a change back.
#[derive(Debug)]
pub(super) enum Undo {
    /// The change did not happen (it failed): nothing to take back.
    Nothing,
    /// Cannot be taken back; says why.
    Impossible(&'static str),
    /// Delete the object just committed.
    Delete(ObjectKey),
    /// Rename `to` back to `from`, never replacing.
    RenameBack {
        /// Original name.
        from: ObjectKey,
        /// Name it was given.
        to: ObjectKey,
    },
    /// Remove the directory just made.
    Rmdir(ObjectKey),
    /// Make the directory just removed again.
    Mkdir(ObjectKey),
}

impl Undo {
    async fn run(&self, store: &dyn ObjectStore, tenant: &str) -> Result<&'static str, StorageError> {
        match self {
            Undo::Nothing | Undo::Impossible(_) => Ok("nothing done"),
            Undo::Delete(key) => store.delete(tenant, key).await.map(|()| "the object was removed again"),
            Undo::RenameBack { from, to } => {
                store.rename(tenant, to, from, false).await.map(|()| "it was renamed back")
            }
            Undo::Rmdir(key) => store.rmdir(tenant, key).await.map(|()| "the directory was removed again"),
            Undo::Mkdir(key) => store.mkdir(tenant, key).await.map(|()| "the directory was made again"),
        }
    }
}

/// The outcome of `base` (its `started` or `intent` record): `ok`, or `error` with `error`.
pub(super) fn outcome(base: &AuditEntry, event: AuditEvent, error: Option<String>) -> AuditEntry {
    AuditEntry { event, result: Some(if error.is_none() { "ok" } else { "error" }.into()), error, ..base.clone() }
}

/// Write an outcome record and wait for it. If it timed out before the writer took it, it is
/// queued again without waiting, so the record it answers does not stay open.
pub(super) async fn append_outcome(audit: &AuditLog, entry: AuditEntry, durable: bool) -> Result<u64, AuditError> {
    match audit.append(entry.clone(), durable).await {
        Err(e @ AuditError::Timeout { pending: false, .. }) => {
            audit.append_detached(entry);
            Err(e)
        }
        other => other,
    }
}

/// Write the record that opens `base` (`started`, `intent`) and wait for it; when it cannot
/// be written nothing may happen. If it timed out after the writer took it, it may still
/// land, so `abandoned` (its outcome) is queued behind it.
pub(super) async fn open_record(
    audit: &AuditLog,
    opening: AuditEntry,
    durable: bool,
    abandoned: AuditEntry,
) -> Result<(), AuditError> {
    match audit.append(opening, durable).await {
        Ok(_) => Ok(()),
        Err(e) => {
            if e.may_still_be_written() {
                audit.append_detached(abandoned);
            }
            Err(e)
        }
    }
}

/// Write a change's outcome durably. If that fails, take the change back where `undo` can and
/// queue a record saying what was done; the error is returned (the client is told the change
/// failed).
pub(super) async fn settle(
    audit: &AuditLog,
    store: &dyn ObjectStore,
    tenant: &str,
    outcome_entry: AuditEntry,
    undo: Undo,
) -> Result<(), AuditError> {
    match append_outcome(audit, outcome_entry.clone(), true).await {
        Ok(_) => Ok(()),
        Err(e) => Err(take_back(audit, store, tenant, &outcome_entry, undo, e).await),
    }
}

/// The outcome record of a change could not be written (`e`): take the change back where
/// `undo` can and queue a record saying what was done. Returns `e`.
pub(super) async fn take_back(
    audit: &AuditLog,
    store: &dyn ObjectStore,
    tenant: &str,
    outcome_entry: &AuditEntry,
    undo: Undo,
    e: AuditError,
) -> AuditError {
    let what = outcome_entry.operation.clone().unwrap_or_default();
    let note = match &undo {
        Undo::Nothing => return e,
        Undo::Impossible(why) => {
            tracing::error!(error = %e, operation = %what, "the outcome of a change could not be recorded and it cannot be undone ({why})");
            return e;
        }
        _ => match undo.run(store, tenant).await {
            Ok(done) => {
                tracing::warn!(error = %e, operation = %what, "the outcome of a change could not be recorded; {done}");
                format!("its outcome could not be recorded ({e}), so {done}")
            }
            Err(u) => {
                tracing::error!(error = %e, undo_error = %u, operation = %what, "the outcome of a change could not be recorded and undoing it failed");
                format!("its outcome could not be recorded ({e}) and undoing it failed ({u})")
            }
        },
    };
    let event = match outcome_entry.event {
        AuditEvent::Completed => AuditEvent::Failed,
        other => other,
    };
    audit.append_detached(outcome(outcome_entry, event, Some(note)));
    e
}
