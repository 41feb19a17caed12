//! Process metrics in the Prometheus text format, for the admin listener.
//!
//! Transfer, authentication and reload figures are taken from the audit records as they are
//! submitted ([`Metrics::observe_record`]), so the metrics count exactly what the trail
//! records. Sessions are counted by the front ends, audit append latency by [`crate::audit`],
//! S3 request latency and errors by an SDK interceptor ([`S3Interceptor`]). One registry per
//! process ([`metrics`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crate::audit::{AuditEntry, AuditEvent};

const PROTOCOLS: [&str; 2] = ["https", "sftp"];
const DIRECTIONS: [&str; 2] = ["upload", "download"];
const RESULTS: [&str; 2] = ["completed", "failed"];
const REFUSALS: [&str; 3] = ["banned", "rate", "concurrent"];

/// Upper bounds (seconds) of the transfer duration buckets.
const TRANSFER_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Upper bounds (seconds) of the audit append and storage request buckets.
const LATENCY_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

/// A histogram with fixed buckets; sums in microseconds.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            if let Some(c) = self.counts.get(i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Bucket, sum and count lines for `name` with `labels` (`k="v",...` or empty).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// One S3 operation's request latency and its failures by kind.
type StorageOp = (Histogram, BTreeMap<String, u64>);

/// Every metric the gateway exports.
pub struct Metrics {
    /// protocol × direction × result.
    transfers: [AtomicU64; 8],
    /// protocol × direction.
    bytes: [AtomicU64; 4],
    /// protocol × direction.
    durations: Vec<Histogram>,
    /// protocol.
    auth_failures: [AtomicU64; 2],
    /// protocol.
    sessions: [AtomicI64; 2],
    audit_append: Histogram,
    audit_append_failures: AtomicU64,
    /// (what, result) → count, for certificate, configuration and host key reloads.
    reloads: Mutex<BTreeMap<(String, String), u64>>,
    /// operation → (latency, errors by kind), for S3 requests.
    storage: Mutex<BTreeMap<String, StorageOp>>,
    /// End of validity of the served TLS certificate, Unix seconds (0: unknown).
    cert_not_after: AtomicI64,
    /// Audit segments shipped, and shipping passes that failed.
    audit_shipped: [AtomicU64; 2],
    /// Defender: `ban` and `unban` records.
    defender_changes: [AtomicU64; 2],
    /// Connections closed at accept, by protocol × why (banned, rate, concurrent).
    refused: [AtomicU64; 6],
    /// Sources banned now.
    banned: AtomicI64,
}

/// The process's registry.
pub fn metrics() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    GLOBAL.get_or_init(Metrics::new)
}

fn index(list: &[&str], value: Option<&str>) -> Option<usize> {
    list.iter().position(|v| Some(*v) == value)
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            transfers: Default::default(),
            bytes: Default::default(),
            durations: (0..4).map(|_| Histogram::new(&TRANSFER_BUCKETS)).collect(),
            auth_failures: Default::default(),
            sessions: Default::default(),
            audit_append: Histogram::new(&LATENCY_BUCKETS),
            audit_append_failures: AtomicU64::new(0),
            reloads: Mutex::new(BTreeMap::new()),
            storage: Mutex::new(BTreeMap::new()),
            cert_not_after: AtomicI64::new(0),
            audit_shipped: Default::default(),
            defender_changes: Default::default(),
            refused: Default::default(),
            banned: AtomicI64::new(0),
        }
    }

    /// Count what an audit record says happened.
    pub fn observe_record(&self, entry: &AuditEntry) {
        let protocol = index(&PROTOCOLS, entry.protocol.as_deref());
        match entry.event {
            AuditEvent::Completed | AuditEvent::Failed => {
                let (Some(p), Some(d)) = (protocol, index(&DIRECTIONS, entry.operation.as_deref())) else {
                    return;
                };
                let r = usize::from(entry.event == AuditEvent::Failed);
                if let Some(c) = self.transfers.get(p * 4 + d * 2 + r) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(c) = self.bytes.get(p * 2 + d) {
                    c.fetch_add(entry.bytes.unwrap_or(0), Ordering::Relaxed);
                }
                if let (Some(h), Some(ms)) = (self.durations.get(p * 2 + d), entry.duration_ms) {
                    h.observe(Duration::from_millis(ms));
                }
            }
            AuditEvent::AuthFailure => {
                if let Some(c) = protocol.and_then(|p| self.auth_failures.get(p)) {
                    // A summary record stands for `count` failures.
                    c.fetch_add(entry.count.unwrap_or(1), Ordering::Relaxed);
                }
            }
            AuditEvent::Operation => {
                let op = entry.operation.as_deref().unwrap_or_default();
                if let Some(c) =
                    ["ban", "unban"].iter().position(|o| *o == op).and_then(|i| self.defender_changes.get(i))
                {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                if op.ends_with("_reload") {
                    let what = op.trim_end_matches("_reload").to_owned();
                    let result = entry.result.clone().unwrap_or_default();
                    *self.reloads.lock().unwrap_or_else(PoisonError::into_inner).entry((what, result)).or_default() +=
                        1;
                }
            }
            _ => {}
        }
    }

    /// One audit append took `d` (`ok` false: it failed or timed out).
    pub fn audit_append(&self, d: Duration, ok: bool) {
        self.audit_append.observe(d);
        if !ok {
            self.audit_append_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A session (HTTPS connection or SSH connection) of `protocol` opened; it is counted
    /// until the guard is dropped.
    pub fn session(&'static self, protocol: &str) -> SessionGuard {
        let slot = index(&PROTOCOLS, Some(protocol)).and_then(|p| self.sessions.get(p));
        if let Some(s) = slot {
            s.fetch_add(1, Ordering::Relaxed);
        }
        SessionGuard { slot }
    }

    /// A connection of `protocol` was closed at accept: `why` is `banned`, `rate` or
    /// `concurrent`.
    pub fn refused_at_accept(&self, protocol: &str, why: &str) {
        let (Some(p), Some(w)) = (index(&PROTOCOLS, Some(protocol)), index(&REFUSALS, Some(why))) else { return };
        if let Some(c) = self.refused.get(p * 3 + w) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sources the defender bans now.
    pub fn set_banned_sources(&self, n: usize) {
        self.banned.store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// An audit segment was shipped (`ok`), or a shipping pass failed.
    pub fn audit_segment_shipped(&self, ok: bool) {
        if let Some(c) = self.audit_shipped.get(usize::from(!ok)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The served certificate is valid until `not_after` (Unix seconds).
    pub fn set_cert_not_after(&self, not_after: i64) {
        self.cert_not_after.store(not_after, Ordering::Relaxed);
    }

    /// One S3 request (`operation`, e.g. `PutObject`) took `d`; `error` names its failure
    /// (an HTTP status such as `503`, or `transport`).
    pub fn storage_request(&self, operation: &str, d: Duration, error: Option<&str>) {
        let mut map = self.storage.lock().unwrap_or_else(PoisonError::into_inner);
        let (h, errors) =
            map.entry(operation.to_owned()).or_insert_with(|| (Histogram::new(&LATENCY_BUCKETS), BTreeMap::new()));
        h.observe(d);
        if let Some(e) = error {
            *errors.entry(e.to_owned()).or_default() += 1;
        }
    }

    /// The whole registry in the Prometheus text format (version 0.0.4).
    pub fn render(&self, now_unix: i64) -> String {
        let mut out = String::with_capacity(8192);
        let o = &mut out;
        header(o, "gateway_transfers_total", "counter", "Transfers that ended, by protocol, direction and result.");
        for (p, protocol) in PROTOCOLS.iter().enumerate() {
            for (d, direction) in DIRECTIONS.iter().enumerate() {
                for (r, result) in RESULTS.iter().enumerate() {
                    let v = self.transfers.get(p * 4 + d * 2 + r).map_or(0, |c| c.load(Ordering::Relaxed));
                    let _ = writeln!(
                        o,
                        "gateway_transfers_total{{protocol=\"{protocol}\",direction=\"{direction}\",result=\"{result}\"}} {v}"
                    );
                }
            }
        }
        header(o, "gateway_transfer_bytes_total", "counter", "Bytes moved by ended transfers.");
        for (p, protocol) in PROTOCOLS.iter().enumerate() {
            for (d, direction) in DIRECTIONS.iter().enumerate() {
                let v = self.bytes.get(p * 2 + d).map_or(0, |c| c.load(Ordering::Relaxed));
                let _ = writeln!(
                    o,
                    "gateway_transfer_bytes_total{{protocol=\"{protocol}\",direction=\"{direction}\"}} {v}"
                );
            }
        }
        header(o, "gateway_transfer_duration_seconds", "histogram", "Duration of ended transfers.");
        for (p, protocol) in PROTOCOLS.iter().enumerate() {
            for (d, direction) in DIRECTIONS.iter().enumerate() {
                if let Some(h) = self.durations.get(p * 2 + d) {
                    h.render(
                        o,
                        "gateway_transfer_duration_seconds",
                        &format!("protocol=\"{protocol}\",direction=\"{direction}\""),
                    );
                }
            }
        }
        header(o, "gateway_sessions_active", "gauge", "Open HTTPS connections and SSH connections.");
        for (p, protocol) in PROTOCOLS.iter().enumerate() {
            let v = self.sessions.get(p).map_or(0, |c| c.load(Ordering::Relaxed));
            let _ = writeln!(o, "gateway_sessions_active{{protocol=\"{protocol}\"}} {v}");
        }
        header(o, "gateway_auth_failures_total", "counter", "Refused credentials, by protocol.");
        for (p, protocol) in PROTOCOLS.iter().enumerate() {
            let v = self.auth_failures.get(p).map_or(0, |c| c.load(Ordering::Relaxed));
            let _ = writeln!(o, "gateway_auth_failures_total{{protocol=\"{protocol}\"}} {v}");
        }
        header(o, "gateway_audit_append_seconds", "histogram", "Time for an audit record to be confirmed written.");
        self.audit_append.render(o, "gateway_audit_append_seconds", "");
        header(o, "gateway_audit_append_failures_total", "counter", "Audit appends that failed or timed out.");
        let _ =
            writeln!(o, "gateway_audit_append_failures_total {}", self.audit_append_failures.load(Ordering::Relaxed));
        header(
            o,
            "gateway_reloads_total",
            "counter",
            "Certificate, configuration and SSH host key reloads, by result.",
        );
        for ((what, result), v) in self.reloads.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let _ = writeln!(o, "gateway_reloads_total{{what=\"{what}\",result=\"{result}\"}} {v}");
        }
        header(
            o,
            "gateway_tls_certificate_expiry_seconds",
            "gauge",
            "Seconds until the served TLS certificate expires.",
        );
        let not_after = self.cert_not_after.load(Ordering::Relaxed);
        let _ = writeln!(o, "gateway_tls_certificate_expiry_seconds {}", not_after.saturating_sub(now_unix));
        header(o, "gateway_audit_segments_shipped_total", "counter", "Audit segments shipped to the audit bucket.");
        let _ = writeln!(
            o,
            "gateway_audit_segments_shipped_total {}",
            self.audit_shipped.first().map_or(0, |c| c.load(Ordering::Relaxed))
        );
        header(o, "gateway_audit_ship_failures_total", "counter", "Audit shipping passes that failed (retried).");
        let _ = writeln!(
            o,
            "gateway_audit_ship_failures_total {}",
            self.audit_shipped.get(1).map_or(0, |c| c.load(Ordering::Relaxed))
        );
        header(o, "gateway_defender_bans_total", "counter", "Sources the defender banned (audited as ban).");
        let _ = writeln!(
            o,
            "gateway_defender_bans_total {}",
            self.defender_changes.first().map_or(0, |c| c.load(Ordering::Relaxed))
        );
        header(o, "gateway_defender_unbans_total", "counter", "Bans that ended (audited as unban).");
        let _ = writeln!(
            o,
            "gateway_defender_unbans_total {}",
            self.defender_changes.get(1).map_or(0, |c| c.load(Ordering::Relaxed))
        );
        header(o, "gateway_defender_banned_sources", "gauge", "Sources banned now.");
        let _ = writeln!(o, "gateway_defender_banned_sources {}", self.banned.load(Ordering::Relaxed));
        header(
            o,
            "gateway_connections_refused_total",
            "counter",
            "Connections closed at accept, before TLS or SSH, by protocol and reason.",
        );
        for (p, protocol) in PROTOCOLS.iter().enumerate() {
            for (w, why) in REFUSALS.iter().enumerate() {
                let v = self.refused.get(p * 3 + w).map_or(0, |c| c.load(Ordering::Relaxed));
                let _ =
                    writeln!(o, "gateway_connections_refused_total{{protocol=\"{protocol}\",reason=\"{why}\"}} {v}");
            }
        }
        let storage = self.storage.lock().unwrap_or_else(PoisonError::into_inner);
        header(o, "gateway_storage_request_seconds", "histogram", "S3 request latency by operation (each attempt).");
        for (op, (h, _)) in storage.iter() {
            h.render(o, "gateway_storage_request_seconds", &format!("backend=\"s3\",operation=\"{op}\""));
        }
        header(
            o,
            "gateway_storage_request_errors_total",
            "counter",
            "S3 requests that failed, by operation and error.",
        );
        for (op, (_, errors)) in storage.iter() {
            for (e, v) in errors {
                let _ = writeln!(
                    o,
                    "gateway_storage_request_errors_total{{backend=\"s3\",operation=\"{op}\",error=\"{e}\"}} {v}"
                );
            }
        }
        drop(storage);
        crate::alerts::render_metrics(o);
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Counts one open session until dropped.
pub struct SessionGuard {
    slot: Option<&'static AtomicI64>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some(s) = self.slot {
            s.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Times every S3 request attempt and counts its failures, per operation.
#[derive(Debug)]
pub struct S3Interceptor;

/// Start time of the current attempt, kept in the SDK's per-request config bag.
#[derive(Debug, Clone)]
struct AttemptStart(std::time::Instant);

impl aws_smithy_types::config_bag::Storable for AttemptStart {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for S3Interceptor {
    fn name(&self) -> &'static str {
        "GatewayMetrics"
    }

    fn read_before_attempt(
        &self,
        _ctx: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        cfg.interceptor_state().store_put(AttemptStart(std::time::Instant::now()));
        Ok(())
    }

    fn read_after_attempt(
        &self,
        ctx: &aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef<'_>,
        _rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let Some(start) = cfg.load::<AttemptStart>() else { return Ok(()) };
        let elapsed = start.0.elapsed();
        let operation = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map_or("unknown", |m| m.name())
            .to_owned();
        let error = match ctx.response() {
            Some(resp) if resp.status().is_success() => None,
            Some(resp) => Some(resp.status().as_u16().to_string()),
            None => Some("transport".to_owned()),
        };
        metrics().storage_request(&operation, elapsed, error.as_deref());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_move_the_counters_and_the_text_is_well_formed() {
        let m = Metrics::new();
        let mut e = AuditEntry::new(AuditEvent::Completed);
        e.protocol = Some("sftp".into());
        e.operation = Some("upload".into());
        e.bytes = Some(1000);
        e.duration_ms = Some(1500);
        m.observe_record(&e);
        e.event = AuditEvent::Failed;
        m.observe_record(&e);
        let mut f = AuditEntry::new(AuditEvent::AuthFailure);
        f.protocol = Some("https".into());
        m.observe_record(&f);
        m.audit_append(Duration::from_micros(700), true);
        m.storage_request("PutObject", Duration::from_millis(3), Some("503"));
        m.set_cert_not_after(1000);
        let mut ban = AuditEntry::new(AuditEvent::Operation);
        ban.operation = Some("ban".into());
        m.observe_record(&ban);
        m.refused_at_accept("sftp", "banned");
        m.set_banned_sources(3);
        let text = m.render(400);
        for line in [
            "gateway_transfers_total{protocol=\"sftp\",direction=\"upload\",result=\"completed\"} 1",
            "gateway_transfers_total{protocol=\"sftp\",direction=\"upload\",result=\"failed\"} 1",
            "gateway_transfers_total{protocol=\"https\",direction=\"upload\",result=\"completed\"} 0",
            "gateway_transfer_bytes_total{protocol=\"sftp\",direction=\"upload\"} 2000",
            "gateway_transfer_duration_seconds_bucket{protocol=\"sftp\",direction=\"upload\",le=\"1\"} 0",
            "gateway_transfer_duration_seconds_bucket{protocol=\"sftp\",direction=\"upload\",le=\"5\"} 2",
            "gateway_transfer_duration_seconds_count{protocol=\"sftp\",direction=\"upload\"} 2",
            "gateway_auth_failures_total{protocol=\"https\"} 1",
            "gateway_audit_append_seconds_bucket{le=\"0.001\"} 1",
            "gateway_tls_certificate_expiry_seconds 600",
            "gateway_defender_bans_total 1",
            "gateway_defender_unbans_total 0",
            "gateway_defender_banned_sources 3",
            "gateway_connections_refused_total{protocol=\"sftp\",reason=\"banned\"} 1",
            "gateway_connections_refused_total{protocol=\"https\",reason=\"rate\"} 0",
            "gateway_storage_request_errors_total{backend=\"s3\",operation=\"PutObject\",error=\"503\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
