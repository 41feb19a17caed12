//! The HTTPS frontend: accept loop, per-connection TLS handshake, HTTP/1.1 and HTTP/2.
//!
//! The accept loop only accepts: each connection gets its own task, which runs the TLS
//! handshake under [`HttpsSettings::handshake_timeout`] and then serves HTTP. A semaphore caps
//! concurrent connections (the loop waits for a free slot rather than accepting and dropping).
//! A connection lives at most [`HttpsSettings::max_connection_duration`], however busy: then
//! it is told to finish the same way as at shutdown, gets [`LIFETIME_DRAIN`], and ends; the
//! client reconnects and presents its credential again.
//! On shutdown the listener closes, open connections are told to finish (HTTP/2 GOAWAY,
//! HTTP/1.1 close after the current request) and get [`HttpsSettings::grace`] to do so;
//! connections still busy after that are aborted, and so are HTTP/2 stream tasks (which
//! hyper spawns apart from their connection, on our [`StreamExecutor`]); [`serve`] returns
//! only once all of them are gone, so every transfer they held has audited itself as failed.

pub mod api;
pub mod body;
pub mod error;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use api::Api;
use api::Connection;

use crate::transfer::ClientInfo;

/// Limits of the HTTPS frontend.
#[derive(Debug, Clone)]
pub struct HttpsSettings {
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// Longest a connection may wait for request headers, or a body for its next bytes.
    pub idle_timeout: Duration,
    /// Concurrent connections.
    pub max_connections: usize,
    /// Concurrent connections per source; 0 = no cap.
    pub max_connections_per_source: u32,
    /// New connections per second per source; 0 = unlimited.
    pub connection_rate_per_source: u32,
    /// Refuses banned sources at accept.
    pub defender: Option<Arc<crate::defender::Defender>>,
    /// Time in-flight requests get to finish at shutdown.
    pub grace: Duration,
    /// Longest one connection may live, however busy.
    pub max_connection_duration: Duration,
    /// Where a connection ended for its age is recorded.
    pub audit: Option<crate::audit::AuditLog>,
}

/// What requests still running on a connection that reached its maximum duration get to
/// finish before it is closed anyway.
pub const LIFETIME_DRAIN: Duration = Duration::from_secs(5);

/// Log and audit that a connection reached `max_connection_duration`.
async fn lifetime_ended(settings: &HttpsSettings, peer: std::net::SocketAddr) {
    tracing::info!(%peer, "closing an HTTPS connection at its maximum duration");
    let Some(audit) = &settings.audit else { return };
    let entry = crate::audit::AuditEntry {
        protocol: Some("https".into()),
        remote_addr: Some(peer.to_string()),
        operation: Some("connection".into()),
        result: Some("error".into()),
        error: Some(format!(
            "closed by the server: max_connection_duration ({}s) reached",
            settings.max_connection_duration.as_secs()
        )),
        reason: Some("max_connection_duration".into()),
        ..crate::audit::AuditEntry::new(crate::audit::AuditEvent::Operation)
    };
    if let Err(e) = audit.append(entry, false).await {
        tracing::error!(error = %e, "could not audit a closed connection");
    }
}

/// Largest HTTP/2 header list and HTTP/1 read buffer we accept.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// HTTP/2 streams per connection.
const MAX_STREAMS: u32 = 64;

fn tls_names(conn: &rustls::ServerConnection) -> (Option<String>, Option<String>) {
    let version = conn.protocol_version().map(|v| match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_owned(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_owned(),
        other => format!("{other:?}"),
    });
    let suite = conn
        .negotiated_cipher_suite()
        .map(|s| s.suite().as_str().map(str::to_owned).unwrap_or_else(|| format!("{:?}", s.suite())));
    (version, suite)
}

/// Runs the tasks hyper spawns (one per HTTP/2 stream: the handler and the response body)
/// where shutdown can cancel them and wait until they are gone. With `TokioExecutor` they
/// would outlive their aborted connection, holding a download's body past the audit trail's
/// close.
#[derive(Clone, Default)]
struct StreamExecutor {
    tasks: TaskTracker,
    kill: CancellationToken,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.tasks.spawn(self.kill.clone().run_until_cancelled_owned(fut));
    }
}

impl StreamExecutor {
    /// Cancel every stream task and wait until all have ended.
    async fn end(&self) {
        self.kill.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Serve HTTPS on `listener` until `shutdown` resolves, then drain within the grace period.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    api: Arc<Api>,
    settings: HttpsSettings,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    // Cancelled at shutdown: every connection is told to finish.
    let draining = CancellationToken::new();
    let max = settings.max_connections;
    let grace = settings.grace;
    let streams = StreamExecutor::default();
    let defender = settings.defender.clone();
    let gate = crate::listener::SourceGate {
        protocol: "https",
        ipv6_prefix: defender.as_ref().map_or(64, |d| d.config().ipv6_prefix),
        defender,
        rate: crate::listener::SourceRateLimit::new(settings.connection_rate_per_source),
        max_per_source: settings.max_connections_per_source,
    };
    let mut tasks = crate::listener::accept_until(listener, max, gate, shutdown, |tcp, peer| {
        let streams = streams.clone();
        let acceptor = acceptor.clone();
        let api = api.clone();
        let settings = settings.clone();
        let draining = draining.clone();
        async move {
            let tls = match tokio::time::timeout(settings.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let _session = crate::metrics::metrics().session("https");
            let (version, suite) = tls_names(tls.get_ref().1);
            let mut client = ClientInfo::https(peer, version, suite);
            // Verified by the handshake (mTLS); kept for binding users and for the audit.
            client.client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| gateway_certs::PeerCert::from_der(leaf.as_ref()))
                .map(Arc::new);
            let conn = Arc::new(Connection::new(client));
            let end = conn.end.clone();
            let service = service_fn(move |req| {
                let api = api.clone();
                let conn = conn.clone();
                async move { Ok::<_, std::convert::Infallible>(api.handle(req, &conn).await) }
            });
            let mut builder = auto::Builder::new(streams);
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(settings.idle_timeout)
                .max_buf_size(MAX_HEADER_BYTES);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(MAX_STREAMS)
                .max_header_list_size(MAX_HEADER_BYTES as u32)
                .keep_alive_interval(settings.idle_timeout / 2)
                .keep_alive_timeout(settings.idle_timeout / 2)
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(2 << 20)
                .max_frame_size(1 << 16);
            let conn = builder.serve_connection(TokioIo::new(tls), service).into_owned();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = draining.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
                () = end.cancelled() => {
                    // Banned meanwhile: the answer in flight goes out, then the connection ends.
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(LIFETIME_DRAIN, conn.as_mut()).await.unwrap_or(Ok(()))
                }
                () = tokio::time::sleep(settings.max_connection_duration) => {
                    lifetime_ended(&settings, peer).await;
                    conn.as_mut().graceful_shutdown();
                    // Requests in flight get a moment; then the connection ends, busy or not
                    // (their transfers record themselves as failed).
                    tokio::time::timeout(LIFETIME_DRAIN, conn.as_mut()).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
    })
    .await;
    tracing::info!(connections = tasks.len(), "HTTPS listener closed; draining");
    draining.cancel();
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!("grace period over; dropping the remaining connections");
    }
    // Connections still in their handshake or over the grace period end here, and so do
    // their HTTP/2 streams; their transfers write `failed` records from Drop.
    tasks.shutdown().await;
    streams.end().await;
}
