//! Which transfers and changes are still waiting for their outcome.
//!
//! A `started` or `intent` record opens its `transfer_id`; `completed`, `failed`,
//! `interrupted` or an `operation` record with that id closes it. The writer keeps this set
//! for the records it writes (so shutdown can close what is left), [`super::AuditLog::open`]
//! rebuilds it from the trail after a crash, and `audit verify` reports what is left open.
//! The set holds only what is open, so it stays as small as the transfers in flight.

use std::collections::HashMap;

use super::record::{AuditEntry, AuditEvent};

/// Whether `event` opens a `transfer_id`, closes it, or neither.
fn role(event: AuditEvent) -> Option<bool> {
    match event {
        AuditEvent::Started | AuditEvent::Intent => Some(true),
        AuditEvent::Completed | AuditEvent::Failed | AuditEvent::Interrupted | AuditEvent::Operation => Some(false),
        AuditEvent::AuthSuccess | AuditEvent::AuthFailure | AuditEvent::Denied | AuditEvent::Checkpoint => None,
    }
}

/// Whether a record with this event needs its full fields kept (it may open an id).
pub(crate) fn opens(event: AuditEvent) -> bool {
    role(event) == Some(true)
}

/// `transfer_id` → the last record that opened it (for the `interrupted` record's fields).
#[derive(Debug, Default)]
pub(crate) struct PendingOutcomes {
    open: HashMap<String, AuditEntry>,
}

impl PendingOutcomes {
    /// Account for one record. `entry` is only read when the record opens an id, so callers
    /// scanning a trail may pass `None` for the fields of a closing record.
    pub(crate) fn observe(&mut self, event: AuditEvent, transfer_id: Option<&str>, entry: Option<&AuditEntry>) {
        let Some(id) = transfer_id else { return };
        match role(event) {
            Some(true) => {
                if let Some(entry) = entry {
                    self.open.insert(id.to_owned(), entry.clone());
                }
            }
            Some(false) => {
                self.open.remove(id);
            }
            None => {}
        }
    }

    /// Account for a whole entry.
    pub(crate) fn observe_entry(&mut self, entry: &AuditEntry) {
        self.observe(entry.event, entry.transfer_id.as_deref(), Some(entry));
    }

    /// Nothing is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The open ids, sorted.
    pub(crate) fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.open.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Close everything: the `interrupted` records to write, in id order, with `why`.
    pub(crate) fn interrupt_all(&mut self, why: Interruption) -> Vec<AuditEntry> {
        let mut open: Vec<(String, AuditEntry)> = self.open.drain().collect();
        open.sort_by(|a, b| a.0.cmp(&b.0));
        open.into_iter().map(|(_, last)| interrupted(last, why)).collect()
    }
}

/// Why an outcome is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interruption {
    /// Found at start: the previous run ended without writing it (crash, kill -9, power).
    Crash,
    /// At shutdown: the transfer was still running when the trail had to be closed.
    Shutdown,
}

/// The `interrupted` record for `last`, the record that opened the id.
fn interrupted(last: AuditEntry, why: Interruption) -> AuditEntry {
    let when = match why {
        Interruption::Crash => "the gateway stopped (crash or kill) before its outcome was recorded",
        Interruption::Shutdown => "the gateway shut down before it ended",
    };
    let what = match (last.event, last.operation.as_deref()) {
        (AuditEvent::Intent, Some(op)) => format!("; the {op} may or may not have taken effect"),
        (AuditEvent::Intent, None) => "; it may or may not have taken effect".to_owned(),
        (_, Some("upload")) => "; the upload was not committed, nothing was stored".to_owned(),
        _ => String::new(),
    };
    AuditEntry {
        event: AuditEvent::Interrupted,
        result: Some("error".into()),
        error: Some(format!("{when}{what}")),
        bytes: None,
        sha256: None,
        duration_ms: None,
        ..last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(event: AuditEvent, id: &str) -> AuditEntry {
        AuditEntry { transfer_id: Some(id.into()), operation: Some("upload".into()), ..AuditEntry::new(event) }
    }

    #[test]
    fn outcomes_close_what_started_and_intents_opened() {
        let mut p = PendingOutcomes::default();
        for e in [
            rec(AuditEvent::Started, "a"),
            rec(AuditEvent::Started, "b"),
            rec(AuditEvent::Intent, "b"),
            rec(AuditEvent::Intent, "c"),
            rec(AuditEvent::Started, "d"),
            rec(AuditEvent::Completed, "a"),
            rec(AuditEvent::Operation, "c"),
            rec(AuditEvent::Failed, "nope"),
            AuditEntry::new(AuditEvent::Operation),
        ] {
            p.observe_entry(&e);
        }
        assert_eq!(p.ids(), ["b", "d"]);
        let out = p.interrupt_all(Interruption::Crash);
        assert!(p.is_empty());
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].event, AuditEvent::Interrupted);
        assert_eq!(out[0].transfer_id.as_deref(), Some("b"));
        assert!(out[0].error.as_deref().unwrap().contains("may or may not"), "{:?}", out[0].error);
        assert!(out[1].error.as_deref().unwrap().contains("nothing was stored"), "{:?}", out[1].error);
    }
}
