//! Authentication failures beyond a rate per source fold into one summary record, so the
//! trail grows with time, not with an outsider's request rate. Per source and window the
//! first `limit` failures are written as they come; the rest are counted (with the first and
//! last time and a few of the user names tried) and written as one `auth_failure` record with
//! `operation: auth_failure_summary` and `count` when the window ends (looked at every few
//! seconds), when the table must make room, and at shutdown. Nothing is dropped silently.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{now_rfc3339, AuditEntry, AuditEvent};

/// User names kept as a sample per summary.
const SAMPLE_USERS: usize = 5;

/// One source's current window.
#[derive(Debug)]
struct Window {
    started: Instant,
    written: u32,
    folded: u64,
    first: Option<String>,
    last: Option<String>,
    users: Vec<String>,
    protocols: Vec<String>,
}

/// What to do with one authentication failure.
#[derive(Debug)]
pub enum Fold {
    /// Write it.
    Write,
    /// Counted into the source's summary; not written now.
    Folded,
}

/// Per-source windows of authentication failures.
#[derive(Debug)]
pub struct AuthFailureFolder {
    limit: u32,
    window: Duration,
    max_sources: usize,
    sources: Mutex<HashMap<IpAddr, Window>>,
}

impl AuthFailureFolder {
    /// Write at most `limit` failures per source per `window`; track at most `max_sources`.
    pub fn new(limit: u32, window: Duration, max_sources: usize) -> AuthFailureFolder {
        AuthFailureFolder { limit, window, max_sources: max_sources.max(1), sources: Mutex::new(HashMap::new()) }
    }

    /// Decide for a failure from `source`; returns summaries that must be written first
    /// (the source's ended window, or a window evicted to make room).
    pub fn check(&self, source: IpAddr, entry: &AuditEntry, now: Instant) -> (Fold, Vec<AuditEntry>) {
        let mut summaries = Vec::new();
        let mut sources = self.sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(w) = sources.get(&source) {
            if now.duration_since(w.started) >= self.window {
                if let Some(w) = sources.remove(&source) {
                    summaries.extend(summary(source, w));
                }
            }
        }
        if !sources.contains_key(&source) && sources.len() >= self.max_sources {
            // Make room: the oldest window goes, its summary written now.
            if let Some(oldest) = sources.iter().min_by_key(|(_, w)| w.started).map(|(k, _)| *k) {
                if let Some(w) = sources.remove(&oldest) {
                    summaries.extend(summary(oldest, w));
                }
            }
        }
        let w = sources.entry(source).or_insert_with(|| Window {
            started: now,
            written: 0,
            folded: 0,
            first: None,
            last: None,
            users: Vec::new(),
            protocols: Vec::new(),
        });
        if w.written < self.limit {
            w.written += 1;
            return (Fold::Write, summaries);
        }
        w.folded += 1;
        let time = now_rfc3339();
        w.first.get_or_insert_with(|| time.clone());
        w.last = Some(time);
        if let Some(u) = &entry.user {
            if w.users.len() < SAMPLE_USERS && !w.users.contains(u) {
                w.users.push(u.chars().take(64).collect());
            }
        }
        if let Some(p) = &entry.protocol {
            if !w.protocols.contains(p) {
                w.protocols.push(p.clone());
            }
        }
        (Fold::Folded, summaries)
    }

    /// Summaries of windows that have ended (all of them when `all`), removed from the table.
    pub fn flush(&self, now: Instant, all: bool) -> Vec<AuditEntry> {
        let mut sources = self.sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ended: Vec<IpAddr> = sources
            .iter()
            .filter(|(_, w)| all || now.duration_since(w.started) >= self.window)
            .map(|(k, _)| *k)
            .collect();
        ended.into_iter().filter_map(|k| sources.remove(&k).and_then(|w| summary(k, w))).collect()
    }
}

/// The summary record of a window that folded anything.
fn summary(source: IpAddr, w: Window) -> Option<AuditEntry> {
    if w.folded == 0 {
        return None;
    }
    let users = if w.users.is_empty() { "none named".to_owned() } else { w.users.join(", ") };
    Some(AuditEntry {
        protocol: (w.protocols.len() == 1).then(|| w.protocols.join("")),
        remote_addr: Some(source.to_string()),
        operation: Some("auth_failure_summary".into()),
        result: Some("error".into()),
        count: Some(w.folded),
        error: Some(format!(
            "{} further authentication failure(s) from {source} between {} and {} were not written one by one (sample of users tried: {users})",
            w.folded,
            w.first.as_deref().unwrap_or("?"),
            w.last.as_deref().unwrap_or("?"),
        )),
        ..AuditEntry::new(AuditEvent::AuthFailure)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(user: &str) -> AuditEntry {
        AuditEntry {
            user: Some(user.into()),
            protocol: Some("https".into()),
            ..AuditEntry::new(AuditEvent::AuthFailure)
        }
    }

    #[test]
    fn beyond_the_limit_failures_fold_into_one_summary_per_window() {
        let f = AuthFailureFolder::new(3, Duration::from_secs(60), 100);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        let mut written = 0;
        for i in 0..20 {
            let (fold, s) = f.check(a, &failure(&format!("u{}", i % 7)), t0);
            assert!(s.is_empty());
            written += usize::from(matches!(fold, Fold::Write));
        }
        assert_eq!(written, 3);
        // Another source has its own allowance.
        assert!(matches!(f.check(b, &failure("x"), t0).0, Fold::Write));
        assert!(f.flush(t0 + Duration::from_secs(30), false).is_empty(), "window not over");
        let s = f.flush(t0 + Duration::from_secs(61), false);
        assert_eq!(s.len(), 1, "b folded nothing: no summary for it");
        assert_eq!(s[0].count, Some(17));
        assert_eq!(s[0].remote_addr.as_deref(), Some("192.0.2.1"));
        let text = s[0].error.as_deref().unwrap();
        assert!(text.contains("17 further") && text.contains("u3"), "{text}");
        assert_eq!(text.matches(", ").count(), SAMPLE_USERS - 1, "five sample users: {text}");
        // A new window writes again.
        assert!(matches!(f.check(a, &failure("u"), t0 + Duration::from_secs(62)).0, Fold::Write));
    }

    #[test]
    fn the_table_is_bounded_and_evicted_windows_are_summarised_not_lost() {
        let f = AuthFailureFolder::new(1, Duration::from_secs(60), 2);
        let t0 = Instant::now();
        let ips: Vec<IpAddr> = (1..=3).map(|i| format!("198.51.100.{i}").parse().unwrap()).collect();
        for (n, ip) in ips.iter().take(2).enumerate() {
            let t = t0 + Duration::from_secs(n as u64);
            f.check(*ip, &failure("a"), t);
            f.check(*ip, &failure("b"), t);
        }
        let (_, evicted) = f.check(ips[2], &failure("c"), t0 + Duration::from_secs(5));
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].remote_addr.as_deref(), Some("198.51.100.1"));
        assert_eq!(evicted[0].count, Some(1));
        let rest = f.flush(t0, true);
        assert_eq!(rest.iter().map(|s| s.count.unwrap_or(0)).sum::<u64>(), 1);
    }
}
