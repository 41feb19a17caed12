//! Account lifecycle: who may log in *now*, beyond holding a valid credential.
//!
//! A login is refused (after its credential checked out, before anything is served) when the
//! configuration disables the account (`disabled = true`), its `expires_at` has passed, an
//! operator disabled it (`gateway users disable`), it is dormant (no login for
//! `[accounts] dormant_after`, counted from its last login, or from when the gateway first
//! saw it, or from an operator's `enable`), or the source address is outside its
//! `allowed_sources`. Clients see the usual authentication failure; the frontends audit it
//! as `auth_failure` with the reason and feed the defender as any failed login.
//!
//! State kept per user in `accounts.json` (under `[accounts] state_dir`): when the gateway
//! first saw the user, the last login, the last `enable`, and a disable by an operator or by
//! dormancy. What is durable when: an operator's enable/disable and a dormancy disable are
//! written (temporary file, fsync, rename, fsync of the directory) before they are reported
//! or audited; logins only mark the state dirty and [`Accounts::maintain`] writes it at most
//! every [`SAVE_EVERY`] and at shutdown, so a login never waits for a disk write, and a crash
//! loses at most the last few seconds of `last_login` updates (which can only make an
//! account look *less* recently used: dormancy errs on the safe side).
//!
//! Time comes from a [`Clock`], so tests drive days through it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::alerts::{Alert, Alerts, Scope, Severity};
use crate::audit::{AuditEntry, AuditEvent, AuditLog};
use crate::auth::{AuthFailure, Principal, Users};

/// How often the state is written when logins changed it.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);
/// How often accounts are looked at for dormancy (also once at start).
pub const CHECK_EVERY: Duration = Duration::from_secs(60);
/// Largest state file read (a few hundred bytes per user).
const MAX_STATE_BYTES: u64 = 64 << 20;
/// Users one dormancy alert names; beyond them it counts.
const ALERT_USERS: usize = 50;

/// Where time comes from: the system's, or one a test moves.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that stands still until moved (tests).
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
}

impl ManualClock {
    /// Stopped at `start`.
    pub fn new(start: SystemTime) -> ManualClock {
        ManualClock { now: Mutex::new(start) }
    }

    /// Move forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now = now.checked_add(by).unwrap_or(*now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a login with a valid credential is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `disabled = true` in the configuration.
    DisabledByConfig,
    /// `gateway users disable`.
    DisabledByOperator,
    /// No login for `dormant_after`.
    Dormant,
    /// `expires_at` has passed.
    Expired,
    /// The source is outside `allowed_sources`.
    SourceNotAllowed,
}

/// Every refusal, for mapping audit texts back to codes.
const REFUSALS: [Refusal; 5] = [
    Refusal::DisabledByConfig,
    Refusal::DisabledByOperator,
    Refusal::Dormant,
    Refusal::Expired,
    Refusal::SourceNotAllowed,
];

impl Refusal {
    /// The stable code, the audit record's `reason`.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::DisabledByConfig => "disabled",
            Refusal::DisabledByOperator => "operator",
            Refusal::Dormant => "dormant",
            Refusal::Expired => "expired",
            Refusal::SourceNotAllowed => "source_not_allowed",
        }
    }

    /// The words of the audit record's `error` (never sent to the client).
    pub fn text(self) -> &'static str {
        match self {
            Refusal::DisabledByConfig => "account disabled in the configuration",
            Refusal::DisabledByOperator => "account disabled by an operator",
            Refusal::Dormant => "account disabled as dormant",
            Refusal::Expired => "account expired",
            Refusal::SourceNotAllowed => "source address not in the account's allowed_sources",
        }
    }
}

/// Set `reason` on an `auth_failure` record whose error is an account refusal (both
/// frontends write failures through [`crate::transfer::Transfers::audit_auth_failure`]).
pub fn annotate(mut entry: AuditEntry) -> AuditEntry {
    if entry.reason.is_none() {
        if let Some(r) = REFUSALS.iter().find(|r| entry.error.as_deref() == Some(r.text())) {
            entry.reason = Some(r.code().to_owned());
        }
    }
    entry
}

/// What `gateway users list` shows for an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// May log in (from its allowed sources).
    #[serde(rename = "active")]
    Active,
    /// `disabled = true` in the configuration.
    #[serde(rename = "disabled(config)")]
    DisabledConfig,
    /// Disabled by an operator.
    #[serde(rename = "disabled(operator)")]
    DisabledOperator,
    /// Disabled (or due to be) for lack of logins.
    #[serde(rename = "dormant")]
    Dormant,
    /// Past its `expires_at`.
    #[serde(rename = "expired")]
    Expired,
}

impl Status {
    /// As listed.
    pub fn name(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::DisabledConfig => "disabled(config)",
            Status::DisabledOperator => "disabled(operator)",
            Status::Dormant => "dormant",
            Status::Expired => "expired",
        }
    }
}

/// One account as `GET /users` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountInfo {
    /// User name.
    pub user: String,
    /// Tenant.
    pub tenant: String,
    /// Status now.
    pub status: Status,
    /// Last login (RFC 3339), if any since the gateway first saw the user.
    pub last_login: Option<String>,
    /// When the gateway first saw the user (RFC 3339).
    pub first_seen: String,
    /// `expires_at` of the configuration (RFC 3339).
    pub expires_at: Option<String>,
}

/// The state file's form.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    version: u32,
    users: BTreeMap<String, SavedUser>,
}

/// One user's state; times in Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SavedUser {
    first_seen: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_login: Option<u64>,
    /// The last `gateway users enable`: restarts the dormancy clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enabled_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    disabled: Option<SavedDisable>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct SavedDisable {
    by: DisabledBy,
    at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DisabledBy {
    Operator,
    Dormant,
}

impl SavedUser {
    fn new(now: u64) -> SavedUser {
        SavedUser { first_seen: now, last_login: None, enabled_at: None, disabled: None }
    }

    /// Since when the account counts as unused.
    fn quiet_since(&self) -> u64 {
        self.first_seen.max(self.last_login.unwrap_or(0)).max(self.enabled_at.unwrap_or(0))
    }
}

struct State {
    users: BTreeMap<String, SavedUser>,
    /// Changed since the last write.
    dirty: bool,
}

/// Why an operator's request could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// No such user in the configuration.
    #[error("no user {0:?} in the configuration")]
    UnknownUser(String),
    /// The state could not be written; nothing changed.
    #[error("could not save the account state ({path}): {message}")]
    Save {
        /// The state file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// What an operator's enable or disable did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Whether anything changed (false: it already was so).
    pub changed: bool,
    /// Status after it.
    pub status: Status,
    /// What to tell the operator.
    pub message: String,
}

struct Inner {
    users: Arc<Users>,
    clock: Arc<dyn Clock>,
    dormant_after: Option<Duration>,
    path: PathBuf,
    state: Mutex<State>,
    /// Serialises writes of the file (logins keep updating `state` meanwhile).
    writing: tokio::sync::Mutex<()>,
    audit: AuditLog,
    alerts: Alerts,
    /// Open SFTP connections per user, ended when an operator disables the user.
    sessions: Mutex<HashMap<String, Vec<CancellationToken>>>,
}

/// The account checks; a cheap handle. [`Accounts::unchecked`] admits everyone (unit tests of
/// other parts).
#[derive(Clone, Default)]
pub struct Accounts {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Some(i) => f.debug_struct("Accounts").field("state", &i.path).finish_non_exhaustive(),
            None => f.write_str("Accounts(unchecked)"),
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// RFC 3339 (UTC, seconds) of Unix seconds.
fn rfc3339(secs: u64) -> String {
    crate::defender::rfc3339(UNIX_EPOCH + Duration::from_secs(secs))
}

/// The state file under `state_dir`.
pub fn state_file(state_dir: &Path) -> PathBuf {
    state_dir.join("accounts.json")
}

fn load(path: &Path) -> Result<BTreeMap<String, SavedUser>, String> {
    use std::io::Read as _;
    let advice = "fix or move the file aside (the gateway then starts every account's dormancy clock afresh and forgets operator disables)";
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(format!("{}: larger than {} MiB; {advice}", path.display(), MAX_STATE_BYTES >> 20));
    }
    let saved: Saved = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not an account state file ({e}); {advice}", path.display()))?;
    if saved.version != 1 {
        return Err(format!("{}: unknown version {}; {advice}", path.display(), saved.version));
    }
    Ok(saved.users)
}

/// Whether the state file of `config` can be read (for `check-config`; a missing file is fine).
pub fn check_state(config: &gateway_config::AccountsConfig) -> Result<(), String> {
    load(&state_file(&config.state_dir)).map(|_| ()).map_err(|e| format!("account state: {e}"))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Accounts {
    /// No checks at all: every login is admitted and nothing is recorded.
    pub fn unchecked() -> Accounts {
        Accounts { inner: None }
    }

    /// The checks for the users in force in `users`, with the state of `config`'s
    /// `[accounts] state_dir` (loaded; users not seen before start their clock now; written
    /// back at once so that start is durable).
    pub fn open(
        config: &gateway_config::AccountsConfig,
        users: Arc<Users>,
        audit: AuditLog,
        alerts: Alerts,
        clock: Arc<dyn Clock>,
    ) -> Result<Accounts, String> {
        let path = state_file(&config.state_dir);
        let loaded = load(&path).map_err(|e| format!("account state: {e}"))?;
        let inner = Inner {
            users,
            clock,
            dormant_after: config.dormant_after,
            path,
            state: Mutex::new(State { users: loaded, dirty: true }),
            writing: tokio::sync::Mutex::new(()),
            audit,
            alerts,
            sessions: Mutex::new(HashMap::new()),
        };
        let accounts = Accounts { inner: Some(Arc::new(inner)) };
        if let Some(inner) = &accounts.inner {
            inner.known(unix(inner.clock.now()));
            let bytes = inner.snapshot();
            write_atomic(&inner.path, &bytes).map_err(|e| format!("account state: {}: {e}", inner.path.display()))?;
        }
        Ok(accounts)
    }

    /// May `who` (whose credential checked out) log in from `ip` now? The refusal is an
    /// [`AuthFailure`] for the frontends' usual failure path.
    pub fn admit(&self, who: Principal, ip: IpAddr) -> Result<Principal, AuthFailure> {
        let Some(inner) = &self.inner else { return Ok(who) };
        match inner.check(&who.user, ip) {
            None => Ok(who),
            Some(refusal) => Err(AuthFailure {
                credential_id: Some(who.credential_id.clone()),
                user: Some(who.user.to_string()),
                reason: refusal.text(),
            }),
        }
    }

    /// `user` logged in (the login is audited): the dormancy clock restarts. In memory at
    /// once, on disk within [`SAVE_EVERY`].
    pub fn logged_in(&self, user: &str) {
        let Some(inner) = &self.inner else { return };
        let now = unix(inner.clock.now());
        let mut state = inner.lock();
        let entry = state.users.entry(user.to_owned()).or_insert_with(|| SavedUser::new(now));
        entry.last_login = Some(now);
        state.dirty = true;
    }

    /// Register an open SFTP connection of `user`, ended (`stop` cancelled) if an operator
    /// disables the user. The connection cancels `stop` when it ends; cancelled tokens are
    /// dropped whenever the user's list is touched, so it holds about as many as are open.
    pub fn watch_session(&self, user: &str, stop: CancellationToken) {
        let Some(inner) = &self.inner else { return };
        let mut sessions = inner.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let list = sessions.entry(user.to_owned()).or_default();
        list.retain(|t| !t.is_cancelled());
        list.push(stop);
    }

    /// Every configured account with its status and last login.
    pub fn list(&self) -> Vec<AccountInfo> {
        let Some(inner) = &self.inner else { return Vec::new() };
        let directory = inner.users.current();
        let now = inner.clock.now();
        let state = inner.lock();
        directory
            .accounts()
            .into_iter()
            .map(|(user, tenant, account)| {
                let saved = state.users.get(user).cloned().unwrap_or_else(|| SavedUser::new(unix(now)));
                AccountInfo {
                    user: user.to_owned(),
                    tenant: tenant.to_owned(),
                    status: inner.status(account, &saved, now),
                    last_login: saved.last_login.map(rfc3339),
                    first_seen: rfc3339(saved.first_seen),
                    expires_at: account.expires_at.map(|t| rfc3339(unix(t))),
                }
            })
            .collect()
    }

    /// An operator disables `user` (written before it returns; audited). Open SFTP
    /// connections of the user are ended; HTTPS checks every request, so the next one is
    /// refused.
    pub async fn disable(&self, user: &str, operator: Option<IpAddr>) -> Result<Change, AccountError> {
        let Some(inner) = &self.inner else { return Err(AccountError::UnknownUser(user.to_owned())) };
        let tenant = inner.tenant(user)?;
        let now = unix(inner.clock.now());
        let changed = {
            let mut state = inner.lock();
            let entry = state.users.entry(user.to_owned()).or_insert_with(|| SavedUser::new(now));
            let changed = entry.disabled.map(|d| d.by) != Some(DisabledBy::Operator);
            if changed {
                entry.disabled = Some(SavedDisable { by: DisabledBy::Operator, at: now });
                state.dirty = true;
            }
            changed
        };
        if changed {
            inner.save().await?;
            inner.record("account_disabled", user, &tenant, Refusal::DisabledByOperator.code(), operator).await;
        }
        let ended = inner.end_sessions(user);
        let message = if changed {
            format!("{user}: disabled; new logins are refused (SFTP connections ended: {ended})")
        } else {
            format!("{user}: already disabled by an operator")
        };
        Ok(Change { changed, status: Status::DisabledOperator, message })
    }

    /// An operator enables `user`: clears a disable by an operator or by dormancy and
    /// restarts the dormancy clock (written before it returns; audited). A `disabled = true`
    /// or a past `expires_at` of the configuration stays in force: only the file changes it.
    pub async fn enable(&self, user: &str, operator: Option<IpAddr>) -> Result<Change, AccountError> {
        let Some(inner) = &self.inner else { return Err(AccountError::UnknownUser(user.to_owned())) };
        let tenant = inner.tenant(user)?;
        let directory = inner.users.current();
        let account = directory.account(user).map(|(_, a)| a.clone()).unwrap_or_default();
        let clock_now = inner.clock.now();
        let now = unix(clock_now);
        let (previous, was) = {
            let mut state = inner.lock();
            let entry = state.users.entry(user.to_owned()).or_insert_with(|| SavedUser::new(now));
            let was = inner.status(&account, entry, clock_now);
            let previous = entry.disabled.take();
            entry.enabled_at = Some(now);
            state.dirty = true;
            (previous, was)
        };
        inner.save().await?;
        let reason = match (previous.map(|d| d.by), was) {
            (Some(DisabledBy::Operator), _) => "operator",
            (Some(DisabledBy::Dormant), _) | (None, Status::Dormant) => "dormant",
            _ => "dormancy_clock_reset",
        };
        inner.record("account_enabled", user, &tenant, reason, operator).await;
        let status = self.list().into_iter().find(|a| a.user == user).map_or(Status::Active, |a| a.status);
        let message = match status {
            Status::Active => format!("{user}: enabled (was: {reason}); the dormancy clock starts now"),
            Status::DisabledConfig => format!(
                "{user}: the operator disable is cleared, but the configuration still says disabled = true; edit it (the users reload picks it up)"
            ),
            Status::Expired => {
                format!("{user}: the operator disable is cleared, but the account expired (expires_at); edit the configuration")
            }
            other => format!("{user}: {}", other.name()),
        };
        Ok(Change { changed: previous.is_some(), status, message })
    }

    /// Disable every account whose quiet time has reached `dormant_after`: one
    /// `account_disabled` record (reason `dormant`) each, written after the state, and one
    /// alert naming them. Returns the users disabled.
    pub async fn check_dormant(&self) -> Vec<String> {
        let Some(inner) = &self.inner else { return Vec::new() };
        let Some(after) = inner.dormant_after else { return Vec::new() };
        let directory = inner.users.current();
        let now = inner.clock.now();
        let now_s = unix(now);
        let mut disabled = Vec::new();
        {
            let mut state = inner.lock();
            for (user, tenant, account) in directory.accounts() {
                if account.disabled || account.expires_at.is_some_and(|t| t <= now) {
                    continue;
                }
                let entry = state.users.entry(user.to_owned()).or_insert_with(|| SavedUser::new(now_s));
                if entry.disabled.is_some() || now_s.saturating_sub(entry.quiet_since()) < after.as_secs() {
                    continue;
                }
                entry.disabled = Some(SavedDisable { by: DisabledBy::Dormant, at: now_s });
                disabled.push((user.to_owned(), tenant.to_owned(), entry.quiet_since(), entry.last_login));
                state.dirty = true;
            }
        }
        if disabled.is_empty() {
            return Vec::new();
        }
        if let Err(e) = inner.save().await {
            // Still refused in memory (and recomputed after a restart): dormancy is derived
            // from the last login, which the file holds.
            tracing::error!(error = %e, "accounts: could not save dormancy disables");
        }
        for (user, tenant, _, _) in &disabled {
            tracing::warn!(user = %user, "account disabled as dormant");
            inner.record("account_disabled", user, tenant, Refusal::Dormant.code(), None).await;
        }
        inner.alert_dormant(&disabled, after);
        disabled.into_iter().map(|(u, ..)| u).collect()
    }

    /// Look for dormant accounts at once and every [`CHECK_EVERY`]; write the state when
    /// logins changed it, at most every [`SAVE_EVERY`]; once more when `stop` resolves.
    pub async fn maintain(self, stop: impl std::future::Future<Output = ()>) {
        let Some(inner) = self.inner.clone() else { return };
        tokio::pin!(stop);
        let mut last_check = tokio::time::Instant::now();
        self.check_dormant().await;
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(SAVE_EVERY) => {}
            }
            if last_check.elapsed() >= CHECK_EVERY {
                last_check = tokio::time::Instant::now();
                self.check_dormant().await;
            }
            if let Err(e) = inner.save_if_dirty().await {
                tracing::error!(error = %e, "accounts: could not save the login state; retried");
            }
        }
        if let Err(e) = inner.save_if_dirty().await {
            tracing::error!(error = %e, "accounts: could not save the login state at shutdown");
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Give every configured user a state entry (first seen `now`) and forget users no
    /// longer configured, so the file stays as large as the configuration.
    fn known(&self, now: u64) {
        let directory = self.users.current();
        let mut state = self.lock();
        let configured: Vec<&str> = directory.accounts().into_iter().map(|(u, _, _)| u).collect();
        state.users.retain(|u, _| configured.binary_search(&u.as_str()).is_ok());
        for user in configured {
            state.users.entry(user.to_owned()).or_insert_with(|| SavedUser::new(now));
        }
        state.dirty = true;
    }

    fn tenant(&self, user: &str) -> Result<String, AccountError> {
        self.users
            .current()
            .account(user)
            .map(|(tenant, _)| tenant.to_owned())
            .ok_or_else(|| AccountError::UnknownUser(user.to_owned()))
    }

    fn status(&self, account: &gateway_config::UserAccount, saved: &SavedUser, now: SystemTime) -> Status {
        if account.disabled {
            return Status::DisabledConfig;
        }
        if account.expires_at.is_some_and(|t| t <= now) {
            return Status::Expired;
        }
        match saved.disabled.map(|d| d.by) {
            Some(DisabledBy::Operator) => return Status::DisabledOperator,
            Some(DisabledBy::Dormant) => return Status::Dormant,
            None => {}
        }
        if let Some(after) = self.dormant_after {
            if unix(now).saturating_sub(saved.quiet_since()) >= after.as_secs() {
                return Status::Dormant;
            }
        }
        Status::Active
    }

    fn check(&self, user: &str, ip: IpAddr) -> Option<Refusal> {
        let directory = self.users.current();
        let (_, account) = directory.account(user)?;
        let now = self.clock.now();
        let saved = {
            let mut state = self.lock();
            if !state.users.contains_key(user) {
                // A user added by a reload: the clock starts at the first sight.
                state.users.insert(user.to_owned(), SavedUser::new(unix(now)));
                state.dirty = true;
            }
            state.users.get(user).cloned()?
        };
        let refusal = match self.status(account, &saved, now) {
            Status::Active => None,
            Status::DisabledConfig => Some(Refusal::DisabledByConfig),
            Status::DisabledOperator => Some(Refusal::DisabledByOperator),
            Status::Dormant => Some(Refusal::Dormant),
            Status::Expired => Some(Refusal::Expired),
        };
        refusal.or_else(|| {
            let outside =
                !account.allowed_sources.is_empty() && !account.allowed_sources.iter().any(|c| c.contains(ip));
            outside.then_some(Refusal::SourceNotAllowed)
        })
    }

    /// The file's bytes for the state now; clears `dirty` (set again if the write fails).
    fn snapshot(&self) -> Vec<u8> {
        let mut state = self.lock();
        state.dirty = false;
        let saved = Saved { version: 1, users: state.users.clone() };
        serde_json::to_vec_pretty(&saved).unwrap_or_default()
    }

    async fn save(self: &Arc<Self>) -> Result<(), AccountError> {
        let _turn = self.writing.lock().await;
        let bytes = self.snapshot();
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        result.map_err(|e| {
            self.lock().dirty = true;
            AccountError::Save { path: self.path.clone(), message: e.to_string() }
        })
    }

    async fn save_if_dirty(self: &Arc<Self>) -> Result<(), AccountError> {
        if !self.lock().dirty {
            return Ok(());
        }
        self.save().await
    }

    /// End the open SFTP connections of `user`; how many there were.
    fn end_sessions(&self, user: &str) -> usize {
        let list = self.sessions.lock().unwrap_or_else(PoisonError::into_inner).remove(user).unwrap_or_default();
        let open: Vec<_> = list.into_iter().filter(|t| !t.is_cancelled()).collect();
        for stop in &open {
            stop.cancel();
        }
        open.len()
    }

    async fn record(&self, operation: &str, user: &str, tenant: &str, reason: &str, operator: Option<IpAddr>) {
        let entry = AuditEntry {
            operation: Some(operation.to_owned()),
            user: Some(user.to_owned()),
            tenant: Some(tenant.to_owned()),
            remote_addr: operator.map(|ip| ip.to_string()),
            result: Some("ok".into()),
            reason: Some(reason.to_owned()),
            ..AuditEntry::new(AuditEvent::Operation)
        };
        if let Err(e) = self.audit.append(entry, true).await {
            tracing::error!(error = %e, operation, user, "accounts: could not audit an account change");
        }
    }

    fn alert_dormant(&self, disabled: &[(String, String, u64, Option<u64>)], after: Duration) {
        let days = after.as_secs() / 86_400;
        let period = if days > 0 { format!("{days} days") } else { format!("{} s", after.as_secs()) };
        let users: Vec<String> = disabled.iter().take(ALERT_USERS).map(|(u, ..)| u.clone()).collect();
        let last: Vec<String> = disabled
            .iter()
            .take(ALERT_USERS)
            .map(|(u, t, _, last)| match last {
                Some(at) => format!("{u} (tenant {t}): last login {}", rfc3339(*at)),
                None => format!("{u} (tenant {t}): no login since the gateway first saw it"),
            })
            .collect();
        self.alerts.raise(Alert {
            severity: Severity::Warning,
            kind: "account_dormant",
            nature: format!(
                "{} account(s) had no login for {period} ([accounts] dormant_after) and were disabled: {}",
                disabled.len(),
                last.join("; ")
            ),
            scope: Scope { users, files: vec![self.path.display().to_string()], count: disabled.len() as u64, ..Scope::default() },
            actions_taken: vec![
                "the accounts were disabled: every login (HTTPS and SFTP, any credential) is refused".into(),
                "recorded in the audit trail (account_disabled, reason dormant)".into(),
            ],
            remediation: vec![
                "if an account is no longer needed, remove it (and its tokens and keys) from the configuration".into(),
                "if it is still needed, confirm with its owner and run `gateway users enable NAME`".into(),
            ],
            next_steps: vec![
                "review the account's credentials (tokens, SSH keys, certificates) before enabling it".into(),
                "watch the audit trail for auth_failure records with reason dormant for these users: someone may be trying an abandoned credential".into(),
            ],
        });
    }
}

#[cfg(test)]
mod tests;
