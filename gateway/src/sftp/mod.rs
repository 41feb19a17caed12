//! The SFTP frontend: russh for SSH, our own SFTP request loop, the shared transfer path.
//!
//! The accept loop only accepts (a semaphore caps connections); each connection runs in its
//! own task: TCP_NODELAY, the [`wire::WireStream`] (login grace deadline, client hello copy
//! for the audit), then russh's session with our [`handler::SshConnection`]. SFTP sessions
//! run on a [`TaskTracker`] so shutdown can wait for them, and their `failed` records, before
//! the audit trail is sealed. At shutdown sessions get the grace period, then are asked to
//! end (disconnect); whatever still runs after [`DISCONNECT_LIMIT`] is cancelled outright
//! ([`SftpShared::kill`]) and awaited, so every upload and download it held is dropped and
//! has queued its `failed` record before [`SftpFrontend::serve`] returns.

pub mod budget;
pub mod handler;
pub mod host_keys;
pub mod inflight;
pub mod keys;
pub mod negotiation;
pub mod queue;
pub mod session;
pub mod wire;

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gateway_config::{SftpConfig, SshAlgorithms};
use russh::keys::{Algorithm, PrivateKey};
use russh::server::Config as SshConfig;
use russh::{cipher, compression, kex, mac, Preferred, SshId};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Users;
use crate::transfer::Transfers;

/// What every connection of the frontend shares.
pub struct SftpShared {
    /// Users and credentials.
    pub directory: Arc<Users>,
    /// The transfer path.
    pub transfers: Transfers,
    /// Configured algorithm lists, to derive what a connection negotiated.
    pub algorithms: SshAlgorithms,
    /// Whether any user may use a password.
    pub passwords: bool,
    /// Running SFTP sessions.
    pub sessions: TaskTracker,
    /// Cancelled when shutdown stops waiting: every session task ends where it is.
    pub kill: CancellationToken,
    /// Uploads in progress, for `stat` of a file being written.
    pub uploads: Arc<inflight::UploadsInProgress>,
    /// The process-wide pool every connection's budget draws on.
    pub global_budget: budget::GlobalBudget,
    /// Bytes each connection may hold on the client's behalf.
    pub connection_budget: usize,
    /// Password hashes computed at once (PBKDF2 is deliberately slow: a few must not
    /// crowd out everything else).
    pub password_checks: Arc<tokio::sync::Semaphore>,
    /// The session idle timeout, also the stall limit of a session whose budget is spent.
    pub idle_timeout: Duration,
    /// Longest a connection may live, however busy (`max_session_duration`).
    pub max_session: Duration,
}

/// A configured SFTP frontend.
pub struct SftpFrontend {
    /// The russh configuration (host keys) handed to each new connection.
    host_keys: Arc<host_keys::ServedHostKeys>,
    shared: Arc<SftpShared>,
    login_grace: Duration,
    max_connections: usize,
    connection_rate: u32,
    max_per_source: u32,
}

impl std::fmt::Debug for SftpFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpFrontend").field("host_keys", &self.host_keys).finish()
    }
}

/// How long sessions get, after the grace period and the disconnect, to end by themselves.
pub const DISCONNECT_LIMIT: Duration = Duration::from_secs(10);

/// A quarter of the machine's memory (from `/proc/meminfo`), or 1 GiB where that cannot be
/// read: the default for everything all SFTP connections together may hold buffered.
pub fn default_total_budget() -> usize {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
    });
    total_kib.map(|kib| kib.saturating_mul(1024) / 4).unwrap_or(1 << 30)
}

/// Password hashes computed at once: half the cores, at least one, so guesses can never
/// take every core from transfers.
fn password_parallelism() -> usize {
    std::thread::available_parallelism().map(|n| n.get() / 2).unwrap_or(1).max(1)
}

/// Why the watchdog ends a connection.
const LOGIN_GRACE: &str = "login grace time exceeded";
const IDLE: &str = "idle timeout";
const MAX_SESSION: &str = "max_session_duration reached";

/// Log and audit that the server closed a connection (`why`: idle, login grace, the
/// absolute limit).
async fn close_audited(shared: &SftpShared, peer: std::net::SocketAddr, why: &str) {
    if why == MAX_SESSION {
        tracing::info!(%peer, reason = why, "closing an SSH connection at its maximum duration");
    } else {
        tracing::warn!(%peer, reason = why, "closing an SSH connection that made no progress");
    }
    let reason = match why {
        LOGIN_GRACE => "login_grace_time",
        IDLE => "idle_timeout",
        MAX_SESSION => "max_session_duration",
        _ => "other",
    };
    let entry = crate::audit::AuditEntry {
        protocol: Some("sftp".into()),
        remote_addr: Some(peer.to_string()),
        operation: Some("connection".into()),
        result: Some("error".into()),
        error: Some(format!("closed by the server: {why}")),
        reason: Some(reason.into()),
        ..crate::audit::AuditEntry::new(crate::audit::AuditEvent::Operation)
    };
    if let Err(e) = shared.transfers.audit().append(entry, false).await {
        tracing::error!(error = %e, "could not audit a closed connection");
    }
}

/// Resolves when a connection must be closed whatever russh is doing: not authenticated
/// within the login grace time, nothing read or written for the idle timeout, or alive for
/// `max_session` however busy. russh enforces the first two itself while its session loop
/// runs; this also holds when that loop is held up (a handler waiting, a channel not
/// drained).
async fn watchdog(wire: &wire::WireState, grace: Duration, idle: Duration, max_session: Duration) -> &'static str {
    let slack = Duration::from_secs(1);
    loop {
        let authenticated = wire.authenticated.load(std::sync::atomic::Ordering::Acquire);
        let since_start = wire.since_start();
        if !authenticated && since_start >= grace + slack {
            return LOGIN_GRACE;
        }
        if since_start >= max_session {
            return MAX_SESSION;
        }
        let quiet = wire.since_activity();
        if quiet >= idle + slack {
            return IDLE;
        }
        let mut wait = (idle + slack).saturating_sub(quiet).min(max_session.saturating_sub(since_start));
        if !authenticated {
            wait = wait.min((grace + slack).saturating_sub(since_start));
        }
        tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
    }
}

/// Map configured names to russh's; the configuration crate already refused anything weak
/// or unknown, so a failure here is a programming error reported as a startup error.
fn preferred(algs: &SshAlgorithms) -> Result<Preferred, String> {
    let mut kexes = Vec::new();
    for k in &algs.kex {
        kexes.push(kex::Name::try_from(k.as_str()).map_err(|_| format!("sftp.kex: {k} is not supported"))?);
    }
    // Strict kex (Terrapin countermeasure) and ext-info are always offered.
    kexes.push(kex::EXTENSION_SUPPORT_AS_SERVER);
    kexes.push(kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER);
    let mut ciphers = Vec::new();
    for c in &algs.ciphers {
        ciphers.push(cipher::Name::try_from(c.as_str()).map_err(|_| format!("sftp.ciphers: {c} is not supported"))?);
    }
    let mut macs = Vec::new();
    for m in &algs.macs {
        macs.push(mac::Name::try_from(m.as_str()).map_err(|_| format!("sftp.macs: {m} is not supported"))?);
    }
    let mut host = Vec::new();
    for h in &algs.host_key_algorithms {
        let alg = Algorithm::new(h).map_err(|_| format!("sftp.host_key_algorithms: {h} is not supported"))?;
        if matches!(alg, Algorithm::Rsa { hash: None }) {
            return Err("sftp.host_key_algorithms: ssh-rsa (SHA-1) is not allowed".into());
        }
        host.push(alg);
    }
    Ok(Preferred {
        kex: Cow::Owned(kexes),
        key: Cow::Owned(host),
        host_key_certificates: Cow::Borrowed(&[]),
        cipher: Cow::Owned(ciphers),
        mac: Cow::Owned(macs),
        compression: Cow::Borrowed(&[compression::NONE]),
    })
}

/// The russh server configuration for `[sftp]` with these host keys (`passwords`: whether
/// password login is offered).
fn ssh_config(config: &SftpConfig, passwords: bool, host_keys: Vec<PrivateKey>) -> Result<SshConfig, String> {
    Ok(SshConfig {
        server_id: SshId::Standard(Cow::Owned(format!("SSH-2.0-Gateway_{}", env!("CARGO_PKG_VERSION")))),
        methods: handler::methods(passwords),
        auth_rejection_time: config.auth_rejection_delay,
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: host_keys,
        max_auth_attempts: config.max_auth_attempts as usize,
        inactivity_timeout: Some(config.idle_timeout),
        keepalive_interval: None,
        window_size: 16 * 1024 * 1024,
        maximum_packet_size: 64 * 1024,
        // The session reader drains its channel at once; a short buffer bounds what
        // russh holds per channel when a session's budget is spent (64 × 32 KiB).
        channel_buffer_size: 64,
        nodelay: true,
        preferred: preferred(&config.algorithms)?,
        ..Default::default()
    })
}

impl SftpFrontend {
    /// Build from configuration and loaded host keys.
    pub fn new(
        config: &SftpConfig,
        host_keys: Vec<PrivateKey>,
        directory: Arc<Users>,
        transfers: Transfers,
    ) -> Result<SftpFrontend, String> {
        let passwords = directory.current().any_password_users();
        let (served, report) = host_keys::ServedHostKeys::new(config, passwords, host_keys)?;
        for line in report.unused {
            tracing::warn!("sftp.host_keys: {line}");
        }
        Ok(SftpFrontend {
            host_keys: Arc::new(served),
            shared: Arc::new(SftpShared {
                directory,
                transfers,
                algorithms: config.algorithms.clone(),
                passwords,
                sessions: TaskTracker::new(),
                kill: CancellationToken::new(),
                uploads: Arc::default(),
                global_budget: budget::GlobalBudget::new(config.max_buffer_total.unwrap_or_else(default_total_budget)),
                connection_budget: config.max_buffer_per_connection,
                password_checks: Arc::new(tokio::sync::Semaphore::new(password_parallelism())),
                idle_timeout: config.idle_timeout,
                max_session: config.max_session_duration,
            }),
            login_grace: config.login_grace_time,
            max_connections: config.max_connections,
            connection_rate: config.connection_rate_per_source,
            max_per_source: config.max_connections_per_source,
        })
    }

    /// The host keys in force, for the reloader to swap and the banner to print.
    pub fn host_keys(&self) -> Arc<host_keys::ServedHostKeys> {
        self.host_keys.clone()
    }

    /// Serve until `shutdown`; then stop accepting, give sessions `grace` to finish,
    /// disconnect the rest and wait until every session has written its records.
    pub async fn serve(self, listener: TcpListener, grace: Duration, shutdown: impl Future<Output = ()>) {
        let stop = tokio_util::sync::CancellationToken::new();
        let (host_keys, shared, grace_time) = (self.host_keys.clone(), self.shared.clone(), self.login_grace);
        let defender = self.shared.transfers.defender().cloned();
        let gate = crate::listener::SourceGate {
            protocol: "sftp",
            ipv6_prefix: defender.as_ref().map_or(64, |d| d.config().ipv6_prefix),
            defender,
            rate: crate::listener::SourceRateLimit::new(self.connection_rate),
            max_per_source: self.max_per_source,
        };
        let mut conns = crate::listener::accept_until(listener, self.max_connections, gate, shutdown, |tcp, peer| {
            // The host keys in force when the connection is accepted: a reload changes what
            // later connections get, never this one's.
            let (ssh, shared, stop) = (host_keys.ssh(), shared.clone(), stop.clone());
            async move {
                let _session = crate::metrics::metrics().session("sftp");
                let conn_stop = stop.child_token();
                let wire = Arc::new(wire::WireState::default());
                let _pre_auth = crate::defender::PreAuthWatch::new(shared.transfers.defender().cloned(), peer.ip(), {
                    let wire = wire.clone();
                    move || wire.authenticated.load(std::sync::atomic::Ordering::Acquire)
                });
                let stream = wire::WireStream::new(tcp, grace_time, wire.clone());
                let negotiation = negotiation::NegotiationReport::new(&shared, peer, &wire);
                let idle = shared.idle_timeout;
                let conn = handler::SshConnection::new(shared.clone(), peer, wire.clone(), conn_stop.clone());
                let running = match tokio::time::timeout(grace_time, russh::server::run_stream(ssh, stream, conn)).await
                {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        negotiation.report(&e).await;
                        tracing::debug!(%peer, error = %e, "SSH session failed to start");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "SSH version exchange timed out");
                        return;
                    }
                };
                let handle = running.handle();
                tokio::pin!(running);
                let watchdog = watchdog(&wire, grace_time, idle, shared.max_session);
                tokio::pin!(watchdog);
                let disconnect = |why: &'static str| {
                    let handle = handle.clone();
                    async move {
                        let bye = handle.disconnect(russh::Disconnect::ByApplication, why.into(), "en".into());
                        let _ = tokio::time::timeout(Duration::from_secs(2), bye).await;
                    }
                };
                tokio::select! {
                    r = &mut running => {
                        match r {
                            // russh's own idle limit (its loop was free to notice).
                            Err(russh::Error::InactivityTimeout) => close_audited(&shared, peer, IDLE).await,
                            Err(e) => {
                                negotiation.report(&e).await;
                                tracing::debug!(%peer, error = %e, "SSH session ended with an error");
                            }
                            Ok(()) => {}
                        }
                    }
                    () = conn_stop.cancelled() => {
                        disconnect("server closing the connection").await;
                        let _ = tokio::time::timeout(Duration::from_secs(3), &mut running).await;
                    }
                    why = &mut watchdog => {
                        close_audited(&shared, peer, why).await;
                        conn_stop.cancel();
                        disconnect(why).await;
                        let _ = tokio::time::timeout(Duration::from_secs(3), &mut running).await;
                    }
                }
                // Whatever ended the connection ends its sessions (dropping `running` has
                // closed the socket).
                conn_stop.cancel();
            }
        })
        .await;
        let sessions = self.shared.sessions.clone();
        sessions.close();
        let drained = tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("SFTP grace period over; disconnecting the remaining sessions");
            stop.cancel();
        }
        // Sessions whose connection ended tell their clients and write their records as they
        // end; give them a moment...
        let ended = tokio::time::timeout(DISCONNECT_LIMIT, async {
            while conns.join_next().await.is_some() {}
            sessions.wait().await;
        })
        .await;
        if ended.is_err() {
            tracing::warn!("SFTP sessions still running after disconnect; ending them");
        }
        // ...then end whatever is left where it stands and wait until it is gone: its uploads
        // and downloads are dropped and queue their `failed` records before this returns.
        self.shared.kill.cancel();
        conns.shutdown().await;
        sessions.wait().await;
    }
}
