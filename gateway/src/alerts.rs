//! Security alerts: incident notices posted to a webhook, durable until delivered.
//!
//! [`Alerts::raise`] is what the rest of the gateway calls: cheap, never blocks, never fails
//! the caller. It stamps the alert (random id, detection time, node), bounds every field and
//! hands the JSON to the outbox thread, which writes it as a file under
//! `data_dir/alerts/outbox` (temporary name, fsync, rename, fsync of the directory) — only then
//! is it counted as raised. The delivery task ([`Alerts::deliver`], spawned by `Gateway::run`)
//! posts the oldest file with HMAC-SHA256 signature and timestamp headers and deletes it after
//! a 2xx; failures wait an exponential, jittered back-off. Files left by a previous run are
//! sent at start, so nothing raised is lost while the receiver is away or the gateway
//! restarts; delivery is at-least-once (a receiver that answered 2xx too late for us to see
//! gets the same alert again, with the same `id`, so receivers deduplicate by `id`).
//!
//! Alerts never depend on the audit trail (the trail breaking is itself an alert) and never
//! carry a secret: credentials appear as ids or fingerprints only.
//!
//! Peer-driven kinds are coalesced so an attacker cannot turn requests into alerts at line
//! rate: auth failures raise one `auth_failure_threshold` alert per source when a sliding
//! count crosses the threshold and then stay quiet for a window (the count of what followed
//! goes into the next alert); path traversal attempts raise at most one alert per source per
//! [`COALESCE_WINDOW`], likewise counted. The defender (bans) can call [`Alerts::raise`] too.

mod outbox;
mod syslog;
pub mod webhook;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use gateway_config::AlertSeverity as Severity;
use serde::Serialize;

use outbox::{Admission, Outbox};

/// Longest text of one field; longer is cut (alerts stay small, logs readable).
const MAX_TEXT: usize = 1024;
/// Most entries of one list (users, sources, files, steps); `scope.count` keeps the total.
const MAX_ITEMS: usize = 20;
/// Upper bound of one alert's JSON (a little over what the field bounds allow).
pub const MAX_BODY: usize = 64 * 1024;
/// Alerts waiting for the outbox thread; past it they are dropped (counted, logged).
const QUEUE: usize = 1024;
/// Peer-driven alerts of one kind from one source: at most one per this window.
pub const COALESCE_WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked by the coalescing and auth-failure tables (each O(1) in size).
const MAX_SOURCES: usize = 10_000;

/// What happened, where, and what to do: the incident fields of the policy. `id`,
/// `detected_at` and `node` are added when it is raised.
#[derive(Debug, Clone)]
pub struct Alert {
    /// How urgent.
    pub severity: Severity,
    /// Stable machine name of the kind (`certificate_refused`, `audit_write_failure`, ...).
    pub kind: &'static str,
    /// Nature: what was detected, in a sentence.
    pub nature: String,
    /// Scope: who and what is concerned.
    pub scope: Scope,
    /// What the gateway already did.
    pub actions_taken: Vec<String>,
    /// What an operator should do to fix it.
    pub remediation: Vec<String>,
    /// What to check or watch next.
    pub next_steps: Vec<String>,
}

/// Who and what an alert concerns. Never secrets: credentials as ids, keys and certificates
/// as fingerprints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scope {
    /// Protocol (`https`, `sftp`), when one is concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    /// User names concerned (claimed ones too, for failures).
    pub users: Vec<String>,
    /// Source addresses.
    pub sources: Vec<String>,
    /// Files (paths of configuration files, client paths).
    pub files: Vec<String>,
    /// Fingerprints of certificates or keys concerned.
    pub fingerprints: Vec<String>,
    /// How many events this alert stands for.
    pub count: u64,
}

/// The JSON of an alert.
#[derive(Serialize)]
struct Wire<'a> {
    id: &'a str,
    kind: &'a str,
    severity: &'a str,
    detected_at: &'a str,
    node: &'a str,
    nature: String,
    scope: Scope,
    actions_taken: Vec<String>,
    remediation: Vec<String>,
    next_steps: Vec<String>,
    /// Alerts this process dropped before this one (outbox full or queue overrun): a gap the
    /// receiver should know about.
    dropped_before: u64,
}

fn clean(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).take(MAX_TEXT).collect();
    if s.chars().count() > MAX_TEXT {
        out.push('…');
    }
    out
}

fn clean_list(items: &[String]) -> Vec<String> {
    let mut out: Vec<String> = items.iter().take(MAX_ITEMS).map(|s| clean(s)).collect();
    if items.len() > MAX_ITEMS {
        out.push(format!("… and {} more", items.len() - MAX_ITEMS));
    }
    out
}

impl Alert {
    /// The JSON body as sent, with the fields bounded.
    fn to_json(&self, id: &str, detected_at: &str, node: &str, dropped_before: u64) -> Vec<u8> {
        let scope = Scope {
            protocol: self.scope.protocol,
            users: clean_list(&self.scope.users),
            sources: clean_list(&self.scope.sources),
            files: clean_list(&self.scope.files),
            fingerprints: clean_list(&self.scope.fingerprints),
            count: self.scope.count.max(1),
        };
        let wire = Wire {
            id,
            kind: self.kind,
            severity: self.severity.name(),
            detected_at,
            node,
            nature: clean(&self.nature),
            scope,
            actions_taken: clean_list(&self.actions_taken),
            remediation: clean_list(&self.remediation),
            next_steps: clean_list(&self.next_steps),
            dropped_before,
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }
}

/// The process's alert counters, rendered into `/metrics` by [`crate::metrics`].
struct Counters {
    raised: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    outbox: AtomicI64,
    outbox_bytes: AtomicI64,
}

static COUNTERS: Counters = Counters {
    raised: AtomicU64::new(0),
    sent: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
    outbox: AtomicI64::new(0),
    outbox_bytes: AtomicI64::new(0),
};

/// The alert figures in the Prometheus text format (appended by `Metrics::render`).
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write as _;
    let c = &COUNTERS;
    let _ = writeln!(out, "# HELP gateway_alerts_total Security alerts: raised (in the outbox), sent (2xx), failed (delivery attempts), dropped.");
    let _ = writeln!(out, "# TYPE gateway_alerts_total counter");
    for (what, v) in [("raised", &c.raised), ("sent", &c.sent), ("failed", &c.failed), ("dropped", &c.dropped)] {
        let _ = writeln!(out, "gateway_alerts_total{{result=\"{what}\"}} {}", v.load(Ordering::Relaxed));
    }
    let _ = writeln!(out, "# HELP gateway_alert_outbox Alerts waiting in the outbox for delivery.");
    let _ = writeln!(out, "# TYPE gateway_alert_outbox gauge");
    let _ = writeln!(out, "gateway_alert_outbox {}", c.outbox.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP gateway_alert_outbox_bytes Bytes of the alerts waiting in the outbox.");
    let _ = writeln!(out, "# TYPE gateway_alert_outbox_bytes gauge");
    let _ = writeln!(out, "gateway_alert_outbox_bytes {}", c.outbox_bytes.load(Ordering::Relaxed));
}

fn publish_outbox(o: &Outbox) {
    COUNTERS.outbox.store(i64::try_from(o.len()).unwrap_or(i64::MAX), Ordering::Relaxed);
    COUNTERS.outbox_bytes.store(i64::try_from(o.bytes()).unwrap_or(i64::MAX), Ordering::Relaxed);
}

/// Counts of drops since start, for `dropped_before`.
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn dropped(n: u64, why: &str) {
    COUNTERS.dropped.fetch_add(n, Ordering::Relaxed);
    let total = DROPPED.fetch_add(n, Ordering::Relaxed) + n;
    tracing::error!(dropped = n, dropped_since_start = total, reason = why, "SECURITY ALERTS DROPPED");
}

enum Msg {
    Alert { severity: Severity, id: String, body: Vec<u8>, syslog: Option<Vec<u8>> },
    Close(tokio::sync::oneshot::Sender<()>),
}

/// A peer-driven event count from one source.
#[derive(Debug, Clone, Copy)]
struct SourceCount {
    /// Start of the current window.
    window_start: Instant,
    /// Events in the current window.
    current: u64,
    /// Events in the previous window (weighted into the sliding estimate).
    previous: u64,
    /// Until when alerts for this source stay quiet (counting into `quiet`).
    quiet_until: Option<Instant>,
    /// Events while quiet, reported with the next alert.
    quiet: u64,
}

impl SourceCount {
    fn new(now: Instant) -> SourceCount {
        SourceCount { window_start: now, current: 0, previous: 0, quiet_until: None, quiet: 0 }
    }

    /// Count one event; the sliding estimate of events in the last `window`.
    fn add(&mut self, now: Instant, window: Duration) -> u64 {
        let mut elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= window {
            let windows = elapsed.as_nanos() / window.as_nanos().max(1);
            self.previous = if windows == 1 { self.current } else { 0 };
            self.current = 0;
            self.window_start += window * u32::try_from(windows).unwrap_or(u32::MAX);
            elapsed = now.saturating_duration_since(self.window_start);
        }
        self.current += 1;
        let left = 1.0 - elapsed.as_secs_f64() / window.as_secs_f64().max(f64::MIN_POSITIVE);
        self.current + (self.previous as f64 * left.clamp(0.0, 1.0)).round() as u64
    }

    fn stale(&self, now: Instant, window: Duration) -> bool {
        now.saturating_duration_since(self.window_start) >= window * 2
            && self.quiet_until.is_none_or(|q| q <= now)
            && self.quiet == 0
    }
}

/// A bounded table of per-source counts (sources beyond the bound are not tracked until a
/// sweep of stale entries makes room; the defender owns the real per-source table).
#[derive(Debug, Default)]
struct Sources {
    map: HashMap<(IpAddr, &'static str), SourceCount>,
    users: HashMap<IpAddr, Vec<String>>,
    /// When the full table was last swept (at most once a second, so a flood of new sources
    /// does not pay a sweep each).
    swept: Option<Instant>,
}

impl Sources {
    fn entry(&mut self, key: (IpAddr, &'static str), now: Instant, window: Duration) -> Option<&mut SourceCount> {
        if !self.map.contains_key(&key) && self.map.len() >= MAX_SOURCES {
            if self.swept.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1)) {
                return None;
            }
            self.swept = Some(now);
            self.map.retain(|_, c| !c.stale(now, window));
            let map = &self.map;
            self.users.retain(|ip, _| map.keys().any(|(k, _)| k == ip));
            if self.map.len() >= MAX_SOURCES {
                return None;
            }
        }
        Some(self.map.entry(key).or_insert_with(|| SourceCount::new(now)))
    }
}

struct Inner {
    min_severity: Severity,
    node: String,
    queue: mpsc::SyncSender<Msg>,
    outbox: Arc<Mutex<Outbox>>,
    wake: Arc<tokio::sync::Notify>,
    webhook: webhook::Webhook,
    /// Also sent to syslog, when configured.
    syslog: bool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    sources: Mutex<Sources>,
    auth_threshold: u64,
    auth_window: Duration,
}

/// Handle to the alert sink; cheap to clone. [`Alerts::disabled`] (no `[alerts]` section)
/// accepts every call and does nothing.
#[derive(Clone, Default)]
pub struct Alerts {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.inner.is_some() { "Alerts(webhook)" } else { "Alerts(disabled)" })
    }
}

fn new_id() -> String {
    crate::secrets::random_bytes::<16>().map(hex::encode).unwrap_or_else(|_| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        format!("{now:032x}")
    })
}

fn now_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

impl Alerts {
    /// A sink that does nothing.
    pub fn disabled() -> Alerts {
        Alerts::default()
    }

    /// Open the sink of `config` (outbox under `data_dir/alerts/outbox`): loads the HMAC key
    /// and the receiver's trust, indexes what a previous run left, starts the outbox thread.
    /// Delivery starts with [`Alerts::deliver`].
    pub fn open(config: &gateway_config::AlertsConfig, data_dir: &Path) -> Result<Alerts, String> {
        let webhook = webhook::Webhook::open(config)?;
        let syslog = config.syslog.as_ref().map(syslog::Syslog::open).transpose()?;
        let to_syslog = syslog.is_some();
        let dir = data_dir.join("alerts").join("outbox");
        let (outbox, trimmed) = Outbox::open(&dir, config.max_outbox).map_err(|e| format!("alerts outbox: {e}"))?;
        if trimmed > 0 {
            dropped(trimmed, "the outbox held more than alerts.max_outbox at start");
        }
        if outbox.len() > 0 {
            tracing::warn!(count = outbox.len(), dir = %dir.display(), "undelivered security alerts from before; sending them");
        }
        publish_outbox(&outbox);
        let outbox = Arc::new(Mutex::new(outbox));
        let wake = Arc::new(tokio::sync::Notify::new());
        let (queue, rx) = mpsc::sync_channel(QUEUE);
        let thread = {
            let (outbox, wake) = (outbox.clone(), wake.clone());
            std::thread::Builder::new()
                .name("alert-outbox".into())
                .spawn(move || persist(rx, &outbox, &wake, syslog.as_ref()))
                .map_err(|e| format!("cannot start the alert outbox thread: {e}"))?
        };
        let node = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "gateway".into());
        Ok(Alerts {
            inner: Some(Arc::new(Inner {
                min_severity: config.min_severity,
                node: clean(&node),
                queue,
                outbox,
                wake,
                webhook,
                syslog: to_syslog,
                thread: Mutex::new(Some(thread)),
                sources: Mutex::new(Sources::default()),
                auth_threshold: u64::from(config.auth_failure_threshold),
                auth_window: config.auth_failure_window,
            })),
        })
    }

    /// Whether alerts go anywhere.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Raise an alert: stamped, bounded, queued for the outbox. Never blocks, never fails;
    /// returns the alert's id (`None` when disabled, below `min_severity`, or dropped).
    pub fn raise(&self, alert: Alert) -> Option<String> {
        let inner = self.inner.as_ref()?;
        if alert.severity < inner.min_severity {
            return None;
        }
        let id = new_id();
        let detected_at = crate::audit::now_rfc3339();
        let mut body = alert.to_json(&id, &detected_at, &inner.node, DROPPED.load(Ordering::Relaxed));
        if body.len() > MAX_BODY {
            body.truncate(0);
        }
        if body.is_empty() {
            tracing::error!(kind = alert.kind, "an alert could not be serialised");
            return None;
        }
        tracing::warn!(id = %id, kind = alert.kind, severity = alert.severity.name(), nature = %clean(&alert.nature), "security alert");
        let syslog =
            inner.syslog.then(|| syslog::format(alert.severity, alert.kind, &id, &detected_at, &inner.node, &body));
        match inner.queue.try_send(Msg::Alert { severity: alert.severity, id: id.clone(), body, syslog }) {
            Ok(()) => Some(id),
            Err(_) => {
                dropped(1, "the alert queue is full or the outbox thread stopped");
                None
            }
        }
    }

    /// Count an authentication failure from `source`; past `auth_failure_threshold` within
    /// `auth_failure_window` (sliding), raise one `auth_failure_threshold` alert, then stay
    /// quiet for a window, counting what follows into the next alert.
    pub fn auth_failure(&self, protocol: &'static str, source: IpAddr, user: Option<&str>) {
        let Some(inner) = self.inner.as_ref() else { return };
        let now = Instant::now();
        let window = inner.auth_window;
        let (count, users) = {
            let mut sources = inner.sources.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(c) = sources.entry((source, "auth"), now, window) else { return };
            let estimate = c.add(now, window);
            let crossed = if c.quiet_until.is_some_and(|q| q > now) {
                c.quiet += 1;
                None
            } else if estimate >= inner.auth_threshold {
                let count = estimate + std::mem::take(&mut c.quiet);
                c.quiet_until = Some(now + window);
                Some(count)
            } else {
                None
            };
            match crossed {
                Some(count) => (Some(count), sources.users.remove(&source).unwrap_or_default()),
                None => (None, Vec::new()),
            }
        };
        let Some(count) = count else {
            if let Some(user) = user {
                let mut sources = inner.sources.lock().unwrap_or_else(PoisonError::into_inner);
                if sources.map.contains_key(&(source, "auth")) {
                    let seen = sources.users.entry(source).or_default();
                    if seen.len() < MAX_ITEMS && !seen.iter().any(|u| u == user) {
                        seen.push(clean(user));
                    }
                }
            }
            return;
        };
        let mut users = users;
        if let Some(user) = user {
            if !users.iter().any(|u| u == user) {
                users.push(clean(user));
            }
        }
        let minutes = window.as_secs().div_ceil(60);
        self.raise(Alert {
            severity: Severity::Warning,
            kind: "auth_failure_threshold",
            nature: format!(
                "{count} failed {protocol} authentications from {source} within {minutes} minute(s) (threshold {})",
                inner.auth_threshold
            ),
            scope: Scope {
                protocol: Some(protocol),
                users,
                sources: vec![source.to_string()],
                count,
                ..Scope::default()
            },
            actions_taken: vec![
                "every failure was refused and recorded in the audit trail (auth_failure)".into(),
                format!("further failures from {source} are counted into the next alert, not raised one by one"),
            ],
            remediation: vec![
                format!("if {source} is not a known client, block it at the firewall or let the defender ban it"),
                "if it is a known client, check its credentials (expired token, rotated key)".into(),
            ],
            next_steps: vec![
                format!("search the audit trail for auth_failure records with remote_addr {source}"),
                "check whether any auth_success from the same source followed".into(),
            ],
        });
    }

    /// The defender banned a source, or had to drop a ban to make room: one alert each (a
    /// ban is already the summary of many offences; repeat bans double in length, so their
    /// number stays small). Expired and operator-removed bans are audited, not alerted.
    pub fn ban(&self, change: &crate::defender::BanChange) {
        use crate::defender::{BanChange, UnbanReason};
        if !self.enabled() {
            return;
        }
        match change {
            BanChange::Banned { source, score, offence, until, offences } => {
                let until = crate::defender::rfc3339(*until);
                self.raise(Alert {
                    severity: if *offences > 1 { Severity::Critical } else { Severity::Warning },
                    kind: "source_banned",
                    nature: format!(
                        "source {source} banned until {until}: score {score} reached the defender's threshold, the last offence {} (ban number {offences} for this source)",
                        offence.name()
                    ),
                    scope: Scope { sources: vec![source.to_string()], count: u64::from(*score), ..Scope::default() },
                    actions_taken: vec![
                        format!("new HTTPS and SFTP connections from {source} are refused at accept until {until}, before any TLS or SSH work"),
                        "requests on HTTPS connections it already had open are answered 403".into(),
                        "recorded in the audit trail (ban)".into(),
                    ],
                    remediation: vec![
                        format!("if {source} is an attacker, block it at the firewall for longer"),
                        format!(
                            "if it is a known partner or a load balancer, lift the ban (`gateway bans remove {source}`) and add it to [defender] safelist"
                        ),
                    ],
                    next_steps: vec![
                        format!("search the audit trail for records with remote_addr {source} before the ban (auth_failure, auth_failure_summary, denied)"),
                        "check whether any login from that source succeeded before it was banned".into(),
                    ],
                });
            }
            BanChange::Unbanned { source, reason: UnbanReason::Evicted } => {
                self.raise(Alert {
                    severity: Severity::Critical,
                    kind: "ban_evicted",
                    nature: format!(
                        "the defender's table is full of banned sources; the oldest ban ({source}) was lifted to make room"
                    ),
                    scope: Scope { sources: vec![source.to_string()], count: 1, ..Scope::default() },
                    actions_taken: vec![format!("{source} is admitted again")],
                    remediation: vec![
                        "a large number of sources is attacking: block them upstream (firewall, provider DDoS protection)".into(),
                        "raise [defender] max_sources if memory allows".into(),
                    ],
                    next_steps: vec!["watch gateway_defender_banned_sources and the ban records of the audit trail".into()],
                });
            }
            BanChange::Unbanned { .. } => {}
        }
    }

    /// Count one peer-driven event of `what` from `source`: `Some(events)` when an alert is
    /// due (the first in a [`COALESCE_WINDOW`], carrying the ones held back since), `None`
    /// while the window is quiet (or alerts are off).
    fn coalesce(&self, source: IpAddr, what: &'static str) -> Option<u64> {
        let inner = self.inner.as_ref()?;
        let now = Instant::now();
        let mut sources = inner.sources.lock().unwrap_or_else(PoisonError::into_inner);
        let c = sources.entry((source, what), now, COALESCE_WINDOW)?;
        c.add(now, COALESCE_WINDOW);
        if c.quiet_until.is_some_and(|q| q > now) {
            c.quiet += 1;
            return None;
        }
        c.quiet_until = Some(now + COALESCE_WINDOW);
        Some(1 + std::mem::take(&mut c.quiet))
    }

    /// An authenticated client broke the protocol (an SFTP packet of impossible length):
    /// at most one alert per source per [`COALESCE_WINDOW`].
    pub fn protocol_abuse(&self, protocol: &'static str, source: IpAddr, user: &str, what: &str) {
        let Some(count) = self.coalesce(source, "abuse") else { return };
        self.raise(Alert {
            severity: Severity::Warning,
            kind: "protocol_abuse",
            nature: format!("{protocol} client {source} (user {user}) broke the protocol: {what}"),
            scope: Scope {
                protocol: Some(protocol),
                users: vec![user.to_owned()],
                sources: vec![source.to_string()],
                count,
                ..Scope::default()
            },
            actions_taken: vec![
                "the session was closed and the event recorded in the audit trail (protocol_abuse)".into(),
                "the defender scored it as protocol abuse".into(),
            ],
            remediation: vec![
                format!("if the client of user {user} is not a known SFTP implementation, treat its credentials as misused and rotate them"),
                format!("consider blocking {source}"),
            ],
            next_steps: vec![format!("review the audit trail for user {user} and {source} around this time")],
        });
    }

    /// A client path refused as an attempt to leave the user's home (`..`, encoded
    /// separators, backslashes): at most one alert per source per [`COALESCE_WINDOW`].
    pub fn traversal_attempt(&self, protocol: &'static str, source: IpAddr, user: &str, path: &str, why: &str) {
        let Some(count) = self.coalesce(source, "traversal") else { return };
        self.raise(Alert {
            severity: Severity::Warning,
            kind: "traversal_attempt",
            nature: format!("{protocol} client {source} (user {user}) asked for a path outside the rules: {why}"),
            scope: Scope {
                protocol: Some(protocol),
                users: vec![user.to_owned()],
                sources: vec![source.to_string()],
                files: vec![path.to_owned()],
                count,
                ..Scope::default()
            },
            actions_taken: vec![
                "the request was refused before reaching storage and recorded as denied in the audit trail".into(),
                format!(
                    "more attempts from {source} within {}s are counted into the next alert",
                    COALESCE_WINDOW.as_secs()
                ),
            ],
            remediation: vec![
                format!(
                    "treat the credentials of user {user} as possibly misused; rotate them if the client is not yours"
                ),
                format!("consider blocking {source}"),
            ],
            next_steps: vec![format!("review the audit trail's denied records for user {user} and {source}")],
        });
    }

    /// Deliver the outbox until `stop`: the oldest alert first, deleted after a 2xx, retried
    /// with back-off otherwise. A stop during a post leaves the alert for the next start.
    pub async fn deliver(self, stop: impl std::future::Future<Output = ()>) {
        let Some(inner) = self.inner.clone() else { return };
        tokio::pin!(stop);
        let mut backoff = webhook::Backoff::default();
        loop {
            let next = {
                let outbox = inner.outbox.lock().unwrap_or_else(PoisonError::into_inner);
                outbox.oldest().map(|name| (outbox.dir().join(&name), name))
            };
            let Some((path, name)) = next else {
                tokio::select! {
                    () = &mut stop => return,
                    () = inner.wake.notified() => continue,
                }
            };
            let body = match tokio::fs::read(&path).await {
                Ok(b) => b,
                Err(e) => {
                    let mut outbox = inner.outbox.lock().unwrap_or_else(PoisonError::into_inner);
                    outbox.remove(&name);
                    publish_outbox(&outbox);
                    // Gone: evicted (and counted) while it was next in line.
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::error!(file = %path.display(), error = %e, "an alert file cannot be read; dropping it");
                        dropped(1, "unreadable alert file");
                    }
                    continue;
                }
            };
            let result = tokio::select! {
                () = &mut stop => return,
                r = inner.webhook.post(&body) => r,
            };
            let problem = match result {
                Ok(status) if status.is_success() => {
                    COUNTERS.sent.fetch_add(1, Ordering::Relaxed);
                    backoff.reset();
                    let mut outbox = inner.outbox.lock().unwrap_or_else(PoisonError::into_inner);
                    outbox.remove(&name);
                    publish_outbox(&outbox);
                    continue;
                }
                Ok(status) => format!("the receiver answered {status}"),
                Err(e) => e,
            };
            COUNTERS.failed.fetch_add(1, Ordering::Relaxed);
            let wait = backoff.next();
            let waiting = inner.outbox.lock().unwrap_or_else(PoisonError::into_inner).len();
            tracing::warn!(error = %problem, waiting, retry_in_ms = wait.as_millis() as u64, "security alert not delivered; retrying");
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Write everything queued to the outbox and stop the outbox thread (at shutdown, after
    /// the last alert could be raised).
    pub async fn close(&self) {
        let Some(inner) = self.inner.as_ref() else { return };
        let (done, wait) = tokio::sync::oneshot::channel();
        let queue = inner.queue.clone();
        let sent = tokio::task::spawn_blocking(move || queue.send(Msg::Close(done)).is_ok()).await.unwrap_or(false);
        if sent {
            let _ = wait.await;
        }
        let thread = inner.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Watch the audit trail's health (its in-memory state, not the trail itself) and raise
    /// `audit_write_failure` once when it breaks. Runs until `stop`.
    pub async fn watch_audit(
        self,
        audit: crate::audit::AuditLog,
        path: std::path::PathBuf,
        stop: impl std::future::Future<Output = ()>,
    ) {
        if !self.enabled() {
            return;
        }
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {}
            }
            if let Some(why) = audit.broken() {
                self.raise(Alert {
                    severity: Severity::Critical,
                    kind: "audit_write_failure",
                    nature: format!("the audit trail cannot be written: {why}"),
                    scope: Scope { files: vec![path.display().to_string()], count: 1, ..Scope::default() },
                    actions_taken: vec![
                        "the trail was closed at its last whole record; every request that needs an audit record now fails (HTTPS 503, SFTP failure), nothing is changed unaudited".into(),
                        "/readyz reports not ready".into(),
                    ],
                    remediation: vec![
                        "fix the cause (disk full, I/O error, permissions) and restart the gateway".into(),
                    ],
                    next_steps: vec![
                        "after the restart, run `gateway audit verify` on the trail".into(),
                        "check the gateway's log for the write error".into(),
                    ],
                });
                return;
            }
        }
    }
}

/// The outbox thread: write each alert durably, then wake the delivery task.
fn persist(rx: mpsc::Receiver<Msg>, outbox: &Mutex<Outbox>, wake: &tokio::sync::Notify, to: Option<&syslog::Syslog>) {
    for msg in rx {
        let (severity, id, body) = match msg {
            Msg::Alert { severity, id, body, syslog } => {
                if let (Some(to), Some(line)) = (to, syslog) {
                    to.send(&line);
                }
                (severity, id, body)
            }
            Msg::Close(done) => {
                let _ = done.send(());
                return;
            }
        };
        let (dir, admission) = {
            let mut o = outbox.lock().unwrap_or_else(PoisonError::into_inner);
            (o.dir().to_owned(), o.admit(severity, &id, now_ms()))
        };
        let name = match admission {
            Admission::Refused => {
                dropped(1, "the outbox is full of more severe alerts (alerts.max_outbox)");
                continue;
            }
            Admission::Write { name, evicted } => {
                if evicted.is_some() {
                    dropped(1, "the outbox is full (alerts.max_outbox); the oldest of the least severe was dropped");
                }
                name
            }
        };
        match Outbox::write_file(&dir, &name, &body) {
            Ok(()) => {
                let mut o = outbox.lock().unwrap_or_else(PoisonError::into_inner);
                o.insert(name, severity, body.len() as u64);
                publish_outbox(&o);
                COUNTERS.raised.fetch_add(1, Ordering::Relaxed);
                wake.notify_one();
            }
            Err(e) => {
                tracing::error!(id = %id, dir = %dir.display(), error = %e, "a security alert could not be written to the outbox");
                dropped(1, "outbox write failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_incident_fields_and_bounds() {
        let alert = Alert {
            severity: Severity::Critical,
            kind: "test_kind",
            nature: format!("bad\nthing {}", "x".repeat(5000)),
            scope: Scope {
                users: (0..30).map(|i| format!("u{i}")).collect(),
                sources: vec!["192.0.2.1".into()],
                ..Scope::default()
            },
            actions_taken: vec!["refused".into()],
            remediation: vec!["fix it".into()],
            next_steps: vec!["look".into()],
        };
        let body = alert.to_json("00ff", "2026-12-04T18:00:00.000Z", "node-1", 3);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "00ff");
        assert_eq!(v["severity"], "critical");
        assert_eq!(v["kind"], "test_kind");
        assert_eq!(v["detected_at"], "2026-12-04T18:00:00.000Z");
        assert_eq!(v["node"], "node-1");
        assert_eq!(v["dropped_before"], 3);
        let nature = v["nature"].as_str().unwrap();
        assert!(!nature.contains('\n') && nature.chars().count() == MAX_TEXT + 1, "{}", nature.len());
        assert_eq!(v["scope"]["users"].as_array().unwrap().len(), MAX_ITEMS + 1);
        assert_eq!(v["scope"]["users"][MAX_ITEMS], "… and 10 more");
        assert_eq!(v["scope"]["count"], 1);
        for field in ["actions_taken", "remediation", "next_steps"] {
            assert_eq!(v[field].as_array().unwrap().len(), 1, "{field}");
        }
        assert!(body.len() < MAX_BODY);
    }

    #[test]
    fn sliding_count_crosses_and_forgets() {
        let window = Duration::from_secs(600);
        let t0 = Instant::now();
        let mut c = SourceCount::new(t0);
        for i in 1..=4 {
            assert_eq!(c.add(t0 + Duration::from_secs(i), window), i);
        }
        // Half a window into the next one, half of the previous window still counts.
        assert_eq!(c.add(t0 + window + window / 2, window), 1 + 2);
        // Two windows later nothing old counts.
        assert_eq!(c.add(t0 + window * 4, window), 1);
    }

    #[tokio::test]
    async fn raise_persists_before_counting_and_threshold_coalesces() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("alert.key");
        crate::secrets::write_secret_file(&key, b"0123456789abcdef0123456789abcdef").unwrap();
        let config = gateway_config::AlertsConfig {
            webhook_url: "http://127.0.0.1:9/none".into(),
            hmac_key_file: key,
            ca_file: None,
            timeout: Duration::from_secs(1),
            max_outbox: 100,
            min_severity: Severity::Warning,
            auth_failure_threshold: 3,
            auth_failure_window: Duration::from_secs(600),
            syslog: None,
        };
        let alerts = Alerts::open(&config, dir.path()).unwrap();
        let src: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..2 {
            alerts.auth_failure("https", src, Some("alice"));
        }
        alerts.auth_failure("https", src, Some("bob"));
        // Quiet for the window: these count into the next alert.
        for _ in 0..10 {
            alerts.auth_failure("https", src, None);
        }
        let below = Alert {
            severity: Severity::Info,
            kind: "x",
            nature: String::new(),
            scope: Scope::default(),
            actions_taken: vec![],
            remediation: vec![],
            next_steps: vec![],
        };
        assert!(alerts.raise(below).is_none(), "below min_severity");
        alerts.close().await;
        let outbox = dir.path().join("alerts/outbox");
        let files: Vec<_> = std::fs::read_dir(&outbox).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
        assert_eq!(v["kind"], "auth_failure_threshold");
        assert_eq!(v["scope"]["count"], 3);
        assert_eq!(v["scope"]["sources"][0], "192.0.2.7");
        assert_eq!(v["scope"]["users"], serde_json::json!(["alice", "bob"]));
        assert!(v["id"].as_str().unwrap().len() == 32);
        let mut metrics = String::new();
        render_metrics(&mut metrics);
        let raised: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("gateway_alerts_total{result=\"raised\"} "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(raised >= 1, "{metrics}");
        assert!(metrics.contains("# TYPE gateway_alert_outbox gauge"), "{metrics}");
    }

    #[test]
    fn a_full_source_table_is_swept_at_most_once_a_second() {
        let mut sources = Sources::default();
        let now = Instant::now();
        let window = Duration::from_secs(1);
        for i in 0..MAX_SOURCES {
            let ip = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            sources.entry((ip, "auth"), now, window).unwrap().add(now, window);
        }
        let new: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(sources.entry((new, "auth"), now, window).is_none(), "full of live sources");
        // Everything is stale later, but the next sweep waits a second after the last one.
        let later = now + window * 3;
        assert!(sources.entry((new, "auth"), now + Duration::from_millis(500), window).is_none());
        assert!(sources.entry((new, "auth"), later, window).is_some(), "stale sources swept");
        assert_eq!(sources.map.len(), 1);
    }
}
