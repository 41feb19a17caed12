//! The SFTP frontend: russh for SSH, our own SFTP request loop, the shared transfer path.
//!
//! The accept loop only accepts (a semaphore caps connections); each connection runs in its
//! own task: TCP_NODELAY, the [`wire::WireStream`] (login grace deadline, client hello copy
//! for the audit), then russh's session with our [`handler::SshConnection`]. SFTP sessions
//! run on a [`TaskTracker`] so shutdown can wait for them, and their `failed` records, before
//! the audit trail is sealed.

pub mod handler;
pub mod keys;
pub mod negotiation;
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
use tokio_util::task::TaskTracker;

use crate::auth::Directory;
use crate::transfer::Transfers;

/// What every connection of the frontend shares.
pub struct SftpShared {
    /// Users and credentials.
    pub directory: Arc<Directory>,
    /// The transfer path.
    pub transfers: Transfers,
    /// Configured algorithm lists, to derive what a connection negotiated.
    pub algorithms: SshAlgorithms,
    /// Whether any user may use a password.
    pub passwords: bool,
    /// Running SFTP sessions.
    pub sessions: TaskTracker,
}

/// A configured SFTP frontend.
pub struct SftpFrontend {
    ssh: Arc<SshConfig>,
    shared: Arc<SftpShared>,
    login_grace: Duration,
    max_connections: usize,
    connection_rate: u32,
    /// Fingerprint lines of the host keys, as `ssh-keygen -l` prints them.
    pub host_key_lines: Vec<String>,
}

impl std::fmt::Debug for SftpFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpFrontend").field("host_keys", &self.host_key_lines).finish()
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

impl SftpFrontend {
    /// Build from configuration and loaded host keys.
    pub fn new(
        config: &SftpConfig,
        host_keys: Vec<PrivateKey>,
        directory: Arc<Directory>,
        transfers: Transfers,
    ) -> Result<SftpFrontend, String> {
        let passwords = directory.any_password_users();
        let host_key_lines = host_keys.iter().map(|k| keys::describe(k.public_key())).collect();
        let ssh = SshConfig {
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
            channel_buffer_size: 256,
            nodelay: true,
            preferred: preferred(&config.algorithms)?,
            ..Default::default()
        };
        Ok(SftpFrontend {
            ssh: Arc::new(ssh),
            shared: Arc::new(SftpShared {
                directory,
                transfers,
                algorithms: config.algorithms.clone(),
                passwords,
                sessions: TaskTracker::new(),
            }),
            login_grace: config.login_grace_time,
            max_connections: config.max_connections,
            connection_rate: config.connection_rate_per_source,
            host_key_lines,
        })
    }

    /// Serve until `shutdown`; then stop accepting, give sessions `grace` to finish,
    /// disconnect the rest and wait until every session has written its records.
    pub async fn serve(self, listener: TcpListener, grace: Duration, shutdown: impl Future<Output = ()>) {
        let stop = tokio_util::sync::CancellationToken::new();
        let (ssh, shared, grace_time) = (self.ssh.clone(), self.shared.clone(), self.login_grace);
        let limit = crate::listener::SourceRateLimit::new(self.connection_rate);
        let mut conns = crate::listener::accept_until(listener, self.max_connections, limit, shutdown, |tcp, peer| {
            let (ssh, shared, stop) = (ssh.clone(), shared.clone(), stop.clone());
            async move {
                let wire = Arc::new(wire::WireState::default());
                let stream = wire::WireStream::new(tcp, grace_time, wire.clone());
                let negotiation = negotiation::NegotiationReport::new(&shared, peer, &wire);
                let conn = handler::SshConnection::new(shared, peer, wire);
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
                tokio::select! {
                    r = &mut running => {
                        if let Err(e) = r {
                            negotiation.report(&e).await;
                            tracing::debug!(%peer, error = %e, "SSH session ended with an error");
                        }
                    }
                    () = stop.cancelled() => {
                        let _ = handle
                            .disconnect(russh::Disconnect::ByApplication, "server shutting down".into(), "en".into())
                            .await;
                        let _ = tokio::time::timeout(Duration::from_secs(5), &mut running).await;
                    }
                }
            }
        })
        .await;
        let sessions = self.shared.sessions.clone();
        sessions.close();
        let drained = tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("SFTP grace period over; disconnecting the remaining sessions");
            stop.cancel();
            while conns.join_next().await.is_some() {}
        }
        // Sessions whose channel closed write their `failed` records as they end.
        if tokio::time::timeout(Duration::from_secs(10), sessions.wait()).await.is_err() {
            tracing::warn!("SFTP sessions did not end after disconnect");
        }
    }
}
