//! The durable outbox: one file per alert under `data_dir/alerts/outbox`, written to a
//! temporary name, fsynced, renamed into place and the directory fsynced before the alert
//! counts as raised; deleted only after the receiver answered 2xx.
//!
//! File names sort in the order alerts were raised and carry the severity, so the outbox is
//! rebuilt from a directory listing at start (nothing else to keep consistent):
//! `<unix ms, 13 digits>-<sequence, 8 digits>-<severity digit>-<id>.json`.
//!
//! Bounded by a count (`[alerts] max_outbox`; each body is capped at [`super::MAX_BODY`] bytes,
//! so the count bounds the bytes too). When full, the policy keeps the newest and never lets a
//! less severe alert push out a more severe one: the victim is the oldest alert of the lowest
//! severity held, if that severity is at most the new alert's; otherwise the new alert is the
//! one dropped. A flood of low-severity alerts (an attacker probing paths) thus cannot evict
//! the critical "audit trail down" notice, and among equals the newest picture wins.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use gateway_config::AlertSeverity as Severity;

/// One stored alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) severity: Severity,
    pub(crate) bytes: u64,
}

/// What [`Outbox::admit`] decided for a new alert.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Write it under this name; `evicted` (if any) was removed to make room.
    Write { name: String, evicted: Option<String> },
    /// The outbox is full of more severe alerts: the new one is dropped.
    Refused,
}

/// The index of the outbox directory.
#[derive(Debug)]
pub(crate) struct Outbox {
    dir: PathBuf,
    max: usize,
    held: BTreeMap<String, Held>,
    seq: u64,
}

fn severity_digit(s: Severity) -> char {
    match s {
        Severity::Info => '0',
        Severity::Warning => '1',
        Severity::Critical => '2',
    }
}

fn parse_name(name: &str) -> Option<Severity> {
    let stem = name.strip_suffix(".json")?;
    let mut parts = stem.splitn(4, '-');
    let (ms, seq, sev, id) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(seq) || id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match sev {
        "0" => Some(Severity::Info),
        "1" => Some(Severity::Warning),
        "2" => Some(Severity::Critical),
        _ => None,
    }
}

impl Outbox {
    /// Open (create) the directory, remove temporaries an interrupted write left, index the
    /// alerts held; trims to `max` by the drop policy (returns how many were dropped).
    pub(crate) fn open(dir: &Path, max: usize) -> Result<(Outbox, u64), String> {
        crate::secrets::create_private_dir(dir).map_err(|e| e.to_string())?;
        let mut held = BTreeMap::new();
        let listing = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for item in listing {
            let item = item.map_err(|e| format!("{}: {e}", dir.display()))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                let _ = fs::remove_file(item.path());
                continue;
            }
            match parse_name(&name) {
                Some(severity) => {
                    let bytes = item.metadata().map(|m| m.len()).unwrap_or(0);
                    held.insert(name, Held { severity, bytes });
                }
                None => tracing::warn!(file = %item.path().display(), "not an alert file; left alone"),
            }
        }
        let mut outbox = Outbox { dir: dir.to_owned(), max: max.max(1), held, seq: 0 };
        let mut dropped = 0;
        while outbox.held.len() > outbox.max {
            let Some(victim) = outbox.victim() else { break };
            outbox.remove(&victim);
            dropped += 1;
        }
        Ok((outbox, dropped))
    }

    /// Alerts held.
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.held.values().map(|h| h.bytes).sum()
    }

    /// The oldest alert of the lowest severity held.
    fn victim(&self) -> Option<String> {
        let lowest = self.held.values().map(|h| h.severity).min()?;
        self.held.iter().find(|(_, h)| h.severity == lowest).map(|(n, _)| n.clone())
    }

    /// Decide where a new alert goes, evicting (index and file) by the drop policy if full.
    pub(crate) fn admit(&mut self, severity: Severity, id: &str, now_ms: u64) -> Admission {
        let mut evicted = None;
        if self.held.len() >= self.max {
            match self.victim() {
                Some(v) if self.held.get(&v).is_some_and(|h| h.severity <= severity) => {
                    self.remove(&v);
                    evicted = Some(v);
                }
                _ => return Admission::Refused,
            }
        }
        self.seq += 1;
        let name = format!("{now_ms:013}-{:08}-{}-{id}.json", self.seq % 100_000_000, severity_digit(severity));
        Admission::Write { name, evicted }
    }

    /// Write `body` as `name` durably (temporary file, fsync, rename, fsync of the directory)
    /// and index it. Does not need the lock of the index while writing: call [`Outbox::insert`]
    /// after.
    pub(crate) fn write_file(dir: &Path, name: &str, body: &[u8]) -> std::io::Result<()> {
        let tmp = dir.join(format!(".tmp-{name}"));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(body)?;
            f.sync_all()?;
            fs::rename(&tmp, dir.join(name))?;
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Index a file [`Outbox::write_file`] wrote.
    pub(crate) fn insert(&mut self, name: String, severity: Severity, bytes: u64) {
        self.held.insert(name, Held { severity, bytes });
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The oldest alert held (next to send).
    pub(crate) fn oldest(&self) -> Option<String> {
        self.held.keys().next().cloned()
    }

    /// Forget and delete an alert (sent, or evicted).
    pub(crate) fn remove(&mut self, name: &str) {
        if self.held.remove(name).is_some() {
            if let Err(e) = fs::remove_file(self.dir.join(name)) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::error!(file = %self.dir.join(name).display(), error = %e, "could not delete an alert file");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(o: &mut Outbox, s: Severity, id: &str, ms: u64) -> Option<String> {
        match o.admit(s, id, ms) {
            Admission::Write { name, .. } => {
                Outbox::write_file(o.dir(), &name, b"{}").unwrap();
                o.insert(name.clone(), s, 2);
                Some(name)
            }
            Admission::Refused => None,
        }
    }

    #[test]
    fn bounded_and_keeps_the_more_severe() {
        let dir = tempfile::tempdir().unwrap();
        let (mut o, dropped) = Outbox::open(dir.path(), 3).unwrap();
        assert_eq!(dropped, 0);
        let crit = add(&mut o, Severity::Critical, "aa", 1).unwrap();
        let w1 = add(&mut o, Severity::Warning, "bb", 2).unwrap();
        let w2 = add(&mut o, Severity::Warning, "cc", 3).unwrap();
        // Full: a new warning evicts the oldest warning, never the critical one.
        let w3 = add(&mut o, Severity::Warning, "dd", 4).unwrap();
        assert_eq!(o.len(), 3);
        assert!(!dir.path().join(&w1).exists());
        let names: Vec<String> = o.held.keys().cloned().collect();
        assert_eq!(names, vec![crit.clone(), w2.clone(), w3.clone()]);
        // An info alert cannot push out warnings: it is the one dropped.
        assert_eq!(o.admit(Severity::Info, "ee", 5), Admission::Refused);
        assert_eq!(o.len(), 3);
        // Critical alerts push out warnings (oldest first), then each other.
        add(&mut o, Severity::Critical, "f1", 6).unwrap();
        add(&mut o, Severity::Critical, "f2", 7).unwrap();
        assert!(!dir.path().join(&w2).exists() && !dir.path().join(&w3).exists());
        let last = add(&mut o, Severity::Critical, "f3", 8).unwrap();
        assert!(!dir.path().join(&crit).exists(), "the oldest critical goes when all are critical");
        assert_eq!(o.oldest().unwrap(), o.held.keys().next().unwrap().clone());
        assert!(dir.path().join(&last).exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3, "files match the index");
    }

    #[test]
    fn reopened_in_order_temporaries_removed_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut o, _) = Outbox::open(dir.path(), 10).unwrap();
        let a = add(&mut o, Severity::Info, "01", 10).unwrap();
        let b = add(&mut o, Severity::Critical, "02", 11).unwrap();
        let c = add(&mut o, Severity::Warning, "03", 12).unwrap();
        fs::write(dir.path().join(".tmp-0000000000013-00000009-0-04.json"), b"half").unwrap();
        fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let (o, dropped) = Outbox::open(dir.path(), 10).unwrap();
        assert_eq!((o.len(), dropped), (3, 0));
        assert_eq!(o.oldest(), Some(a.clone()));
        assert!(!dir.path().join(".tmp-0000000000013-00000009-0-04.json").exists());
        assert!(dir.path().join("notes.txt").exists(), "foreign files are left alone");
        // A smaller bound at start drops the least severe first.
        let (o, dropped) = Outbox::open(dir.path(), 2).unwrap();
        assert_eq!(dropped, 1);
        assert_eq!(o.held.keys().cloned().collect::<Vec<_>>(), vec![b, c]);
        assert!(!dir.path().join(&a).exists());
    }

    #[test]
    fn names_parse_back() {
        assert_eq!(parse_name("0001733300000000-00000001-2-abcdef.json"), Some(Severity::Critical));
        assert_eq!(parse_name("1-2-0-ab.json"), Some(Severity::Info));
        assert_eq!(parse_name("1-2-3-ab.json"), None);
        assert_eq!(parse_name("1-2-1-../x.json"), None);
        assert_eq!(parse_name("x-2-1-ab.json"), None);
        assert_eq!(parse_name("1-2-1-ab.txt"), None);
    }
}
