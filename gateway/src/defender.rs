//! The defender, shared by both listeners: a score per source address within an observation
//! window, and a ban (refusal at accept, before any TLS or SSH work) once the score reaches
//! the threshold.
//!
//! - Events ([`Offence`]) each add their configured weight; only events inside `window`
//!   count. At the threshold the source is banned for `ban_time`, doubled on each further
//!   offence up to `ban_time_max`; its events are cleared.
//! - IPv4 sources are single addresses; IPv6 sources are grouped by `ipv6_prefix` (/64 by
//!   default: one customer's LAN). IPv4-mapped IPv6 addresses count as IPv4.
//! - Safelisted sources are never scored nor refused.
//! - The table is bounded (`max_sources`). Only an event inserts a source; accepting only
//!   looks one up. Making room costs O(1) amortised: two queues of keys with a sequence
//!   number (stale items skipped, compacted when the queue outgrows the table twice): the
//!   least recently scored *unbanned* source goes first, and a banned one only when every
//!   tracked source is banned, so flooding from fresh addresses cannot evict an attacker's
//!   own ban (short of filling the whole table with bans, each of which costs a threshold's
//!   worth of misbehaviour).
//! - Every ban and unban is a [`BanChange`] handed to the notifier the server installs (it
//!   writes the audit record, counts the metric and is where an alert would be raised).
//! - Time is a parameter (`now`) everywhere, so tests drive it without sleeping. Bans and
//!   offence counts are saved to a small JSON file ([`Defender::save`], atomic replace) and
//!   loaded at start.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_config::{canonical_ip, mask_ip, DefenderConfig};

use crate::audit::{AuditEntry, AuditEvent, AuditLog, BanFacts};
use serde::{Deserialize, Serialize};

/// What a source did that counts against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offence {
    /// Authentication failed for a user that exists.
    AuthFailedKnownUser,
    /// Authentication failed for a user (or token id) that does not exist.
    AuthFailedUnknownUser,
    /// Malformed requests, traversal attempts, paths the user may not reach.
    ProtocolAbuse,
    /// A connection refused by a per-source limit.
    LimitHit,
    /// An SSH connection that ended (or was ended) before authenticating.
    PreAuthDisconnect,
}

impl Offence {
    /// The name in audit records and logs.
    pub fn name(self) -> &'static str {
        match self {
            Offence::AuthFailedKnownUser => "auth_failed_known_user",
            Offence::AuthFailedUnknownUser => "auth_failed_unknown_user",
            Offence::ProtocolAbuse => "protocol_abuse",
            Offence::LimitHit => "limit_hit",
            Offence::PreAuthDisconnect => "pre_auth_disconnect",
        }
    }
}

/// A source as the defender tracks it: an IPv4 address, or an IPv6 address with every bit
/// past the configured prefix cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    network: IpAddr,
    prefix: u8,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.network {
            IpAddr::V6(_) if self.prefix < 128 => write!(f, "{}/{}", self.network, self.prefix),
            ip => write!(f, "{ip}"),
        }
    }
}

/// Why a ban ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnbanReason {
    /// Its time ran out.
    Expired,
    /// An operator removed it (`gateway bans remove`).
    Removed,
    /// The table was full of bans and this, the oldest, made room.
    Evicted,
}

impl UnbanReason {
    /// The name in audit records.
    pub fn name(self) -> &'static str {
        match self {
            UnbanReason::Expired => "expired",
            UnbanReason::Removed => "removed",
            UnbanReason::Evicted => "evicted",
        }
    }
}

/// A ban that began or ended: what the audit trail, the metrics and alerts hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BanChange {
    /// A source reached the threshold and is refused for a while.
    Banned {
        /// Who.
        source: Source,
        /// Its score when banned.
        score: u32,
        /// The event that crossed the threshold.
        offence: Offence,
        /// End of the ban.
        until: SystemTime,
        /// Bans this source has had, this one included.
        offences: u32,
    },
    /// A source is admitted again.
    Unbanned {
        /// Who.
        source: Source,
        /// Why.
        reason: UnbanReason,
    },
}

/// The answer at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve the connection.
    Admit,
    /// Close it at once: the source is banned until then.
    Refuse(SystemTime),
}

/// One ban as `gateway bans list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanInfo {
    /// The source (address, or IPv6 network).
    pub source: String,
    /// End of the ban, RFC 3339.
    pub until: String,
    /// Bans this source has had, this one included.
    pub offences: u32,
}

/// What a tracked source carries.
#[derive(Debug)]
struct Entry {
    /// (time, weight) of the events in the window, oldest first; their weights sum to less
    /// than the threshold (reaching it bans and clears them), so at most `threshold` items.
    events: VecDeque<(SystemTime, u32)>,
    banned_until: Option<SystemTime>,
    offences: u32,
    /// Matches the entry's current item in its queue; older items are stale.
    seq: u64,
}

/// The bounded table: the map plus one eviction queue per standing.
#[derive(Debug, Default)]
struct Table {
    map: HashMap<Source, Entry>,
    /// Unbanned sources, least recently scored first.
    clean: VecDeque<(Source, u64)>,
    /// Banned sources, oldest ban first.
    banned: VecDeque<(Source, u64)>,
    next_seq: u64,
    /// Something worth saving changed since the last save.
    dirty: bool,
}

impl Table {
    /// Give `source`'s entry a fresh place at the back of the queue for its standing.
    fn requeue(&mut self, source: Source) {
        self.next_seq += 1;
        let seq = self.next_seq;
        let Some(entry) = self.map.get_mut(&source) else { return };
        entry.seq = seq;
        if entry.banned_until.is_some() {
            self.banned.push_back((source, seq));
        } else {
            self.clean.push_back((source, seq));
        }
        self.compact();
    }

    /// Drop stale queue items once a queue holds more than twice the table: amortised O(1).
    fn compact(&mut self) {
        let limit = self.map.len() * 2 + 64;
        let map = &self.map;
        for (queue, banned) in [(&mut self.clean, false), (&mut self.banned, true)] {
            if queue.len() > limit {
                queue
                    .retain(|(s, seq)| map.get(s).is_some_and(|e| e.seq == *seq && e.banned_until.is_some() == banned));
            }
        }
    }

    /// Remove one entry to make room: the least recently scored unbanned source, else the
    /// oldest ban (reported).
    fn evict(&mut self) -> Option<BanChange> {
        while let Some((source, seq)) = self.clean.pop_front() {
            if self.map.get(&source).is_some_and(|e| e.seq == seq && e.banned_until.is_none()) {
                self.map.remove(&source);
                return None;
            }
        }
        while let Some((source, seq)) = self.banned.pop_front() {
            if self.map.get(&source).is_some_and(|e| e.seq == seq && e.banned_until.is_some()) {
                self.map.remove(&source);
                self.dirty = true;
                return Some(BanChange::Unbanned { source, reason: UnbanReason::Evicted });
            }
        }
        None
    }
}

/// Receives every [`BanChange`] as it happens (called with the table unlocked).
pub type Notify = Box<dyn Fn(&BanChange) + Send + Sync>;

/// The defender: configuration, the table, and who hears about bans.
pub struct Defender {
    config: DefenderConfig,
    table: Mutex<Table>,
    notify: Notify,
    /// A second listener, installed once after start: where a ban raises an alert.
    hook: OnceLock<Notify>,
    /// Where bans are saved (`data_dir/defender/bans.json`), when serving.
    state_file: Option<PathBuf>,
}

/// How often the serving defender ends expired bans and saves a changed table.
const MAINTAIN_EVERY: Duration = Duration::from_secs(2);

/// The file under `data_dir` that keeps bans across restarts.
pub fn state_file(data_dir: &Path) -> PathBuf {
    data_dir.join("defender").join("bans.json")
}

/// The serving defender: bans and unbans go to the audit trail (as `operation` records
/// `ban`/`unban`, which also move the metrics); the bans of the last run are loaded from
/// `data_dir`.
pub fn open(config: &DefenderConfig, data_dir: &Path, audit: AuditLog) -> Result<Arc<Defender>, String> {
    let path = state_file(data_dir);
    let mut defender = Defender::new(config.clone()).with_notify(Box::new(move |change| {
        let entry = audit_entry(change);
        tracing::warn!(
            remote_addr = entry.remote_addr.as_deref().unwrap_or(""),
            operation = entry.operation.as_deref().unwrap_or(""),
            "defender"
        );
        audit.append_detached(entry);
    }));
    let loaded = defender.load(&path).map_err(|e| format!("defender state: {e}"))?;
    if loaded > 0 {
        tracing::info!(sources = loaded, "defender: bans and offence counts of the last run loaded");
    }
    defender.state_file = Some(path);
    Ok(Arc::new(defender))
}

/// What a refused credential counts as: a failure for a known or an unknown user. Not
/// scored: a request that offered no credential at all, and SSH public keys (keys cannot be
/// guessed, and an agent offering several keys before the right one is no attack; a
/// connection that never authenticates is scored as a pre-auth disconnect instead).
pub fn auth_offence(method: &str, failure: &crate::auth::AuthFailure) -> Option<Offence> {
    if failure.reason == "no credentials" || method == "publickey" {
        return None;
    }
    Some(if failure.user.is_some() { Offence::AuthFailedKnownUser } else { Offence::AuthFailedUnknownUser })
}

/// Scores a connection that ends (or is dropped) before it authenticated: a
/// `pre_auth_disconnect`. Made at accept, dropped with the connection task.
pub struct PreAuthWatch {
    defender: Option<Arc<Defender>>,
    ip: IpAddr,
    authenticated: Box<dyn Fn() -> bool + Send + Sync>,
}

impl PreAuthWatch {
    /// Watch the connection from `ip`; `authenticated` says whether it got past login.
    pub fn new(
        defender: Option<Arc<Defender>>,
        ip: IpAddr,
        authenticated: impl Fn() -> bool + Send + Sync + 'static,
    ) -> PreAuthWatch {
        PreAuthWatch { defender, ip, authenticated: Box::new(authenticated) }
    }
}

impl Drop for PreAuthWatch {
    fn drop(&mut self) {
        if let Some(d) = &self.defender {
            if !(self.authenticated)() {
                d.record(self.ip, Offence::PreAuthDisconnect, SystemTime::now());
            }
        }
    }
}

/// The audit record of a ban or unban.
pub fn audit_entry(change: &BanChange) -> AuditEntry {
    let (source, operation, ban) = match change {
        BanChange::Banned { source, score, offence, until, offences } => (
            source,
            "ban",
            BanFacts {
                score: Some(*score),
                offence: Some(offence.name().to_owned()),
                until: Some(rfc3339(*until)),
                offences: Some(*offences),
                reason: None,
            },
        ),
        BanChange::Unbanned { source, reason } => {
            (source, "unban", BanFacts { reason: Some(reason.name().to_owned()), ..BanFacts::default() })
        }
    };
    AuditEntry {
        remote_addr: Some(source.to_string()),
        operation: Some(operation.to_owned()),
        result: Some("ok".to_owned()),
        ban: Some(ban),
        ..AuditEntry::new(AuditEvent::Operation)
    }
}

impl fmt::Debug for Defender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Defender").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Defender {
    /// A defender with an empty table that tells nobody about bans.
    pub fn new(config: DefenderConfig) -> Defender {
        Defender {
            config,
            table: Mutex::new(Table::default()),
            notify: Box::new(|_| {}),
            hook: OnceLock::new(),
            state_file: None,
        }
    }

    /// Also hand every ban and unban to `hook` (once; later calls are ignored). This is
    /// where a ban raises a security alert.
    pub fn set_hook(&self, hook: Notify) {
        let _ = self.hook.set(hook);
    }

    /// Until `stop`: end expired bans and save a changed table every few seconds; at `stop`,
    /// save once more.
    pub async fn maintain(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let Some(path) = self.state_file.clone() else { return };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(MAINTAIN_EVERY) => {}
            }
            self.expire(SystemTime::now());
            self.save_logged(&path, false).await;
        }
        self.save_logged(&path, true).await;
    }

    async fn save_logged(self: &Arc<Self>, path: &Path, force: bool) {
        let (me, path) = (self.clone(), path.to_owned());
        match tokio::task::spawn_blocking(move || me.save(&path, force)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "defender: could not save the bans; retried"),
            Err(e) => tracing::error!(error = %e, "defender: save task failed"),
        }
    }

    /// Hand every ban and unban to `notify` from now on.
    pub fn with_notify(mut self, notify: Notify) -> Defender {
        self.notify = notify;
        self
    }

    /// The configuration in force.
    pub fn config(&self) -> &DefenderConfig {
        &self.config
    }

    /// The source `ip` counts as.
    pub fn source_of(&self, ip: IpAddr) -> Source {
        match canonical_ip(ip) {
            v4 @ IpAddr::V4(_) => Source { network: v4, prefix: 32 },
            v6 => Source { network: mask_ip(v6, self.config.ipv6_prefix), prefix: self.config.ipv6_prefix },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tell(&self, changes: &[BanChange]) {
        for change in changes {
            (self.notify)(change);
            if let Some(hook) = self.hook.get() {
                hook(change);
            }
        }
        if !changes.is_empty() {
            let banned = self.lock().map.values().filter(|e| e.banned_until.is_some()).count();
            crate::metrics::metrics().set_banned_sources(banned);
        }
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        !self.config.enabled || self.config.safelist.iter().any(|c| c.contains(ip))
    }

    /// At accept: refuse a banned source. A ban found expired ends here (reported).
    pub fn check(&self, ip: IpAddr, now: SystemTime) -> Verdict {
        if self.exempt(ip) {
            return Verdict::Admit;
        }
        let source = self.source_of(ip);
        let mut changes = Vec::new();
        let verdict = {
            let mut table = self.lock();
            match table.map.get_mut(&source) {
                Some(Entry { banned_until: Some(until), .. }) if *until > now => Verdict::Refuse(*until),
                Some(entry @ Entry { banned_until: Some(_), .. }) => {
                    entry.banned_until = None;
                    table.dirty = true;
                    table.requeue(source);
                    changes.push(BanChange::Unbanned { source, reason: UnbanReason::Expired });
                    Verdict::Admit
                }
                _ => Verdict::Admit,
            }
        };
        self.tell(&changes);
        verdict
    }

    /// Count `offence` against `ip`; returns the ban it caused, if any (also reported).
    pub fn record(&self, ip: IpAddr, offence: Offence, now: SystemTime) -> Option<BanChange> {
        let weight = self.weight(offence);
        if weight == 0 || self.exempt(ip) {
            return None;
        }
        let source = self.source_of(ip);
        let mut changes = Vec::new();
        {
            let mut table = self.lock();
            if !table.map.contains_key(&source) {
                if table.map.len() >= self.config.max_sources {
                    changes.extend(table.evict());
                }
                table.map.insert(source, Entry { events: VecDeque::new(), banned_until: None, offences: 0, seq: 0 });
            }
            let (window, threshold) = (self.config.window, self.config.threshold);
            let entry = table.map.get_mut(&source)?;
            match entry.banned_until {
                // Still banned (a connection opened before the ban): nothing more to count.
                Some(until) if until > now => return None,
                Some(_) => {
                    entry.banned_until = None;
                    changes.push(BanChange::Unbanned { source, reason: UnbanReason::Expired });
                }
                None => {}
            }
            let mut dirty = !changes.is_empty();
            while entry.events.front().is_some_and(|(at, _)| now.duration_since(*at).unwrap_or_default() >= window) {
                entry.events.pop_front();
            }
            entry.events.push_back((now, weight));
            let score: u32 = entry.events.iter().map(|(_, w)| *w).fold(0, u32::saturating_add);
            if score >= threshold {
                entry.events.clear();
                entry.offences = entry.offences.saturating_add(1);
                let until = later(now, self.ban_time(entry.offences));
                entry.banned_until = Some(until);
                let offences = entry.offences;
                dirty = true;
                changes.push(BanChange::Banned { source, score, offence, until, offences });
            }
            table.dirty |= dirty;
            table.requeue(source);
        }
        self.tell(&changes);
        changes.into_iter().find(|c| matches!(c, BanChange::Banned { .. }))
    }

    fn weight(&self, offence: Offence) -> u32 {
        let w = &self.config.weights;
        match offence {
            Offence::AuthFailedKnownUser => w.auth_failed_known_user,
            Offence::AuthFailedUnknownUser => w.auth_failed_unknown_user,
            Offence::ProtocolAbuse => w.protocol_abuse,
            Offence::LimitHit => w.limit_hit,
            Offence::PreAuthDisconnect => w.pre_auth_disconnect,
        }
    }

    /// Length of the `offences`-th ban: `ban_time` doubled per earlier offence, capped.
    fn ban_time(&self, offences: u32) -> Duration {
        let factor = 2u32.checked_pow(offences.saturating_sub(1)).unwrap_or(u32::MAX);
        self.config.ban_time.saturating_mul(factor).min(self.config.ban_time_max)
    }

    /// End the ban on the source `addr` names (an address, or an IPv6 network as listed).
    /// False when it was not banned.
    pub fn remove(&self, addr: IpAddr, now: SystemTime) -> bool {
        let source = self.source_of(addr);
        let removed = {
            let mut table = self.lock();
            let banned = table.map.get(&source).and_then(|e| e.banned_until).is_some_and(|u| u > now);
            if banned {
                // Forget the source entirely: an operator's unban is a fresh start.
                table.map.remove(&source);
                table.dirty = true;
            }
            banned
        };
        if removed {
            self.tell(&[BanChange::Unbanned { source, reason: UnbanReason::Removed }]);
        }
        removed
    }

    /// End every ban whose time has run out (reported). A sweep of the table, for the
    /// periodic task, never for accept.
    pub fn expire(&self, now: SystemTime) {
        let mut changes = Vec::new();
        {
            let mut table = self.lock();
            let expired: Vec<Source> =
                table.map.iter().filter(|(_, e)| e.banned_until.is_some_and(|u| u <= now)).map(|(s, _)| *s).collect();
            for source in expired {
                if let Some(e) = table.map.get_mut(&source) {
                    e.banned_until = None;
                }
                table.dirty = true;
                table.requeue(source);
                changes.push(BanChange::Unbanned { source, reason: UnbanReason::Expired });
            }
        }
        self.tell(&changes);
    }

    /// The bans in force, soonest to end first.
    pub fn bans(&self, now: SystemTime) -> Vec<BanInfo> {
        let table = self.lock();
        let mut bans: Vec<(SystemTime, BanInfo)> = table
            .map
            .iter()
            .filter_map(|(s, e)| {
                let until = e.banned_until.filter(|u| *u > now)?;
                Some((until, BanInfo { source: s.to_string(), until: rfc3339(until), offences: e.offences }))
            })
            .collect();
        bans.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.source.cmp(&b.1.source)));
        bans.into_iter().map(|(_, b)| b).collect()
    }

    /// Sources tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.lock().map.len()
    }

    /// Write the bans and offence counts to `path` (temporary file, fsync, rename) when
    /// something changed since the last save, or always with `force`.
    pub fn save(&self, path: &Path, force: bool) -> std::io::Result<()> {
        let state = {
            let mut table = self.lock();
            if !table.dirty && !force {
                return Ok(());
            }
            table.dirty = false;
            Saved {
                version: 1,
                sources: table
                    .map
                    .iter()
                    .filter(|(_, e)| e.offences > 0)
                    .map(|(s, e)| SavedSource {
                        source: s.network,
                        offences: e.offences,
                        banned_until: e.banned_until.map(unix),
                    })
                    .collect(),
            }
        };
        let result = write_atomic(path, &state);
        if result.is_err() {
            self.lock().dirty = true;
        }
        result
    }

    /// Load what [`Defender::save`] wrote; a missing file is an empty table. Returns how
    /// many sources were loaded.
    pub fn load(&self, path: &Path) -> Result<usize, String> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let saved: Saved = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if saved.version != 1 {
            return Err(format!("{}: unknown version {}", path.display(), saved.version));
        }
        let mut table = self.lock();
        let mut loaded = 0;
        for s in saved.sources.into_iter().take(self.config.max_sources) {
            let source = self.source_of(s.source);
            let banned_until = s.banned_until.map(|secs| later(UNIX_EPOCH, Duration::from_secs(secs)));
            table.map.insert(source, Entry { events: VecDeque::new(), banned_until, offences: s.offences, seq: 0 });
            table.requeue(source);
            loaded += 1;
        }
        let banned = table.map.values().filter(|e| e.banned_until.is_some()).count();
        crate::metrics::metrics().set_banned_sources(banned);
        Ok(loaded)
    }
}

/// The file's form.
#[derive(Serialize, Deserialize)]
struct Saved {
    version: u32,
    sources: Vec<SavedSource>,
}

#[derive(Serialize, Deserialize)]
struct SavedSource {
    source: IpAddr,
    offences: u32,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    banned_until: Option<u64>,
}

/// `t + d`, or a time a century past `t` when that would overflow.
fn later(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d).or_else(|| t.checked_add(Duration::from_secs(100 * 365 * 86_400))).unwrap_or(t)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// RFC 3339 (UTC, seconds) of `t`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = i64::try_from(unix(t)).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

fn write_atomic(path: &Path, state: &Saved) -> std::io::Result<()> {
    use std::io::Write as _;
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use gateway_config::Cidr;
    use std::sync::Arc;

    fn config() -> DefenderConfig {
        DefenderConfig {
            threshold: 5,
            window: Duration::from_secs(60),
            ban_time: Duration::from_secs(100),
            ban_time_max: Duration::from_secs(350),
            max_sources: 16,
            ..DefenderConfig::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    #[test]
    fn threshold_bans_and_the_ban_ends() {
        let d = Defender::new(config());
        let a = ip("192.0.2.1");
        for i in 0..4 {
            assert_eq!(d.record(a, Offence::AuthFailedKnownUser, at(i)), None, "score {} < 5", i + 1);
            assert_eq!(d.check(a, at(i)), Verdict::Admit);
        }
        let ban = d.record(a, Offence::AuthFailedKnownUser, at(4)).expect("fifth failure bans");
        assert_eq!(
            ban,
            BanChange::Banned {
                source: d.source_of(a),
                score: 5,
                offence: Offence::AuthFailedKnownUser,
                until: at(104),
                offences: 1
            }
        );
        assert_eq!(d.check(a, at(50)), Verdict::Refuse(at(104)));
        assert_eq!(d.check(ip("192.0.2.2"), at(50)), Verdict::Admit, "only that address");
        assert_eq!(d.bans(at(50)).len(), 1);
        assert_eq!(d.check(a, at(104)), Verdict::Admit, "ends on time");
        assert!(d.bans(at(104)).is_empty());
    }

    #[test]
    fn weights_add_up_and_old_events_leave_the_window() {
        let d = Defender::new(config());
        let a = ip("192.0.2.1");
        // Unknown user weighs 2: two of them and a known-user failure make 5.
        assert!(d.record(a, Offence::AuthFailedUnknownUser, at(0)).is_none());
        assert!(d.record(a, Offence::AuthFailedUnknownUser, at(10)).is_none());
        // 61 s later the first event has left the 60 s window: 2 + 1 = 3.
        assert!(d.record(a, Offence::AuthFailedKnownUser, at(61)).is_none());
        assert_eq!(d.check(a, at(61)), Verdict::Admit);
        // Protocol abuse weighs 3: 2 + 1 + 3 = 6 bans.
        let ban = d.record(a, Offence::ProtocolAbuse, at(62)).unwrap();
        assert!(matches!(ban, BanChange::Banned { score: 6, offence: Offence::ProtocolAbuse, .. }), "{ban:?}");
        // A slow trickle never bans: one failure every 20 s keeps the score at 3.
        let b = ip("192.0.2.9");
        for i in 0..50 {
            assert!(d.record(b, Offence::AuthFailedKnownUser, at(i * 20)).is_none());
        }
    }

    #[test]
    fn repeat_offences_double_the_ban_up_to_the_cap() {
        let d = Defender::new(config());
        let a = ip("198.51.100.7");
        let mut t = 0;
        let mut lengths = Vec::new();
        for _ in 0..4 {
            let mut ban = None;
            while ban.is_none() {
                ban = d.record(a, Offence::ProtocolAbuse, at(t));
                t += 1;
            }
            let Some(BanChange::Banned { until, .. }) = ban else { unreachable!() };
            lengths.push(until.duration_since(at(t - 1)).unwrap().as_secs());
            t = until.duration_since(at(0)).unwrap().as_secs();
            assert_eq!(d.check(a, at(t)), Verdict::Admit);
        }
        assert_eq!(lengths, [100, 200, 350, 350]);
        // However many offences, the length stays capped (no overflow).
        for n in [33, 64, u32::MAX] {
            assert_eq!(d.ban_time(n), Duration::from_secs(350));
        }
        assert_eq!(d.ban_time(0), Duration::from_secs(100));
    }

    #[test]
    fn ipv6_sources_group_by_prefix() {
        let d = Defender::new(config());
        // Five addresses in one /64 add up to one ban for the whole /64.
        for i in 0..5u16 {
            let a = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, i, 0, 0, 1));
            d.record(a, Offence::AuthFailedKnownUser, at(0));
        }
        assert!(matches!(d.check(ip("2001:db8:1:2:ffff::5"), at(1)), Verdict::Refuse(_)));
        assert_eq!(d.check(ip("2001:db8:1:3::1"), at(1)), Verdict::Admit, "next /64 is another source");
        assert_eq!(d.bans(at(1))[0].source, "2001:db8:1:2::/64");
        // A /48 setting groups wider.
        let wide = Defender::new(DefenderConfig { ipv6_prefix: 48, ..config() });
        for i in 0..5u16 {
            let a = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, i, 0, 0, 0, 1));
            wide.record(a, Offence::AuthFailedKnownUser, at(0));
        }
        assert!(matches!(wide.check(ip("2001:db8:1:ff::"), at(1)), Verdict::Refuse(_)));
        // Mapped IPv4 is IPv4.
        assert_eq!(d.source_of(ip("::ffff:192.0.2.1")).to_string(), "192.0.2.1");
        // Removal by any address of the network.
        assert!(d.remove(ip("2001:db8:1:2::77"), at(2)));
        assert_eq!(d.check(ip("2001:db8:1:2::1"), at(2)), Verdict::Admit);
        assert!(!d.remove(ip("2001:db8:1:2::77"), at(2)), "nothing left to remove");
    }

    #[test]
    fn safelisted_and_disabled_are_never_banned() {
        let d = Defender::new(DefenderConfig { safelist: vec![Cidr::parse("127.0.0.0/8").unwrap()], ..config() });
        for i in 0..100 {
            assert!(d.record(ip("127.0.0.1"), Offence::ProtocolAbuse, at(i)).is_none());
        }
        assert_eq!(d.check(ip("127.0.0.1"), at(100)), Verdict::Admit);
        assert_eq!(d.tracked(), 0, "not even tracked");
        let off = Defender::new(DefenderConfig { enabled: false, ..config() });
        for i in 0..100 {
            assert!(off.record(ip("192.0.2.1"), Offence::ProtocolAbuse, at(i)).is_none());
        }
        assert_eq!(off.check(ip("192.0.2.1"), at(100)), Verdict::Admit);
    }

    #[test]
    fn a_full_table_evicts_clean_sources_before_bans() {
        let d = Defender::new(config()); // 16 sources
        let attacker = ip("203.0.113.66");
        for i in 0..2 {
            d.record(attacker, Offence::ProtocolAbuse, at(i));
        }
        assert!(matches!(d.check(attacker, at(2)), Verdict::Refuse(_)));
        // A slow-burning score that was touched recently...
        let slow = ip("203.0.113.1");
        // ...and a flood of fresh sources, each with one event.
        for i in 0..1000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            d.record(a, Offence::AuthFailedKnownUser, at(3));
            if i == 990 {
                d.record(slow, Offence::AuthFailedKnownUser, at(3));
                d.record(slow, Offence::AuthFailedKnownUser, at(3));
            }
            assert!(d.tracked() <= 16);
        }
        assert!(matches!(d.check(attacker, at(4)), Verdict::Refuse(_)), "the ban survives the flood");
        // The slow source's two events survive too (it was scored recently): 2 + 3 = 5.
        assert!(d.record(slow, Offence::ProtocolAbuse, at(5)).is_some(), "its score was kept");
        // Queues stay bounded by the table.
        let table = d.lock();
        assert!(table.clean.len() <= table.map.len() * 2 + 64 + 1);
    }

    #[test]
    fn a_table_full_of_bans_drops_the_oldest_and_says_so() {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        let d = Defender::new(config()).with_notify(Box::new(move |c| h.lock().unwrap().push(c.clone())));
        for i in 0..17u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0xc000_0200 + i));
            d.record(a, Offence::ProtocolAbuse, at(u64::from(i)));
            d.record(a, Offence::ProtocolAbuse, at(u64::from(i)));
        }
        assert_eq!(d.tracked(), 16);
        assert_eq!(d.check(ip("192.0.2.0"), at(20)), Verdict::Admit, "the oldest ban made room");
        assert!(matches!(d.check(ip("192.0.2.16"), at(20)), Verdict::Refuse(_)));
        let heard = heard.lock().unwrap();
        assert_eq!(heard.iter().filter(|c| matches!(c, BanChange::Banned { .. })).count(), 17);
        assert!(
            heard.contains(&BanChange::Unbanned { source: d.source_of(ip("192.0.2.0")), reason: UnbanReason::Evicted })
        );
    }

    #[test]
    fn bans_and_offences_survive_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("defender/bans.json");
        let d = Defender::new(config());
        let a = ip("192.0.2.1");
        for _ in 0..2 {
            d.record(a, Offence::ProtocolAbuse, at(0));
        }
        d.record(ip("192.0.2.2"), Offence::AuthFailedKnownUser, at(0));
        d.save(&path, false).unwrap();
        let again = Defender::new(config());
        assert_eq!(again.load(&path).unwrap(), 1, "only sources with offences are kept");
        assert!(matches!(again.check(a, at(10)), Verdict::Refuse(u) if u == at(100)));
        // The offence count came along: the next ban is twice as long.
        assert_eq!(again.check(a, at(100)), Verdict::Admit);
        let Some(BanChange::Banned { until, offences, .. }) =
            [0, 0].iter().find_map(|_| again.record(a, Offence::ProtocolAbuse, at(101)))
        else {
            panic!("no second ban")
        };
        assert_eq!((offences, until), (2, at(301)));
        assert_eq!(Defender::new(config()).load(&dir.path().join("absent.json")), Ok(0));
        // A file from elsewhere with an absurd end of ban loads without overflow.
        let far = r#"{"version":1,"sources":[{"source":"192.0.2.9","offences":4000000000,"banned_until":18446744073709551615}]}"#;
        std::fs::write(&path, far).unwrap();
        let odd = Defender::new(config());
        assert_eq!(odd.load(&path), Ok(1));
        assert!(matches!(odd.check(ip("192.0.2.9"), at(0)), Verdict::Refuse(_)));
        assert_eq!(odd.bans(at(0)).len(), 1);
        std::fs::write(&path, "{").unwrap();
        assert!(Defender::new(config()).load(&path).unwrap_err().contains("bans.json"));
    }

    #[test]
    fn expire_reports_ended_bans() {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        let d = Defender::new(config()).with_notify(Box::new(move |c| h.lock().unwrap().push(c.clone())));
        let a = ip("192.0.2.1");
        d.record(a, Offence::ProtocolAbuse, at(0));
        d.record(a, Offence::ProtocolAbuse, at(0));
        d.expire(at(99));
        assert_eq!(heard.lock().unwrap().len(), 1, "still banned at 99");
        d.expire(at(100));
        assert_eq!(
            heard.lock().unwrap().last(),
            Some(&BanChange::Unbanned { source: d.source_of(a), reason: UnbanReason::Expired })
        );
        assert_eq!(d.check(a, at(100)), Verdict::Admit);
        assert_eq!(heard.lock().unwrap().len(), 2, "reported once");
    }
}
