//! Posting one alert to the webhook: HTTP/1.1 over rustls (the receiver's certificate checked
//! against `ca_file` or the system roots; plain HTTP only to loopback, as the configuration
//! allows), signed with HMAC-SHA256 over `"<timestamp>.<body>"`, under one timeout.
//!
//! Also the retry back-off: exponential from [`BACKOFF_BASE`] to [`BACKOFF_MAX`], each wait
//! drawn uniformly from its upper half (jitter, so gateways that lost the same receiver do not
//! come back in step).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

/// The signature header: `sha256=<hex HMAC-SHA256 over "<timestamp>.<body>">`.
pub const SIGNATURE_HEADER: &str = "x-gateway-signature";
/// The timestamp header: Unix seconds at which this attempt was signed.
pub const TIMESTAMP_HEADER: &str = "x-gateway-timestamp";
/// Shortest HMAC key accepted, in bytes of the key file's (trimmed) text.
pub const MIN_KEY_LEN: usize = 32;

/// First retry wait (upper bound).
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry wait.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Where and how alerts are posted.
pub(crate) struct Webhook {
    host: String,
    port: u16,
    authority: String,
    path: String,
    tls: Option<tokio_rustls::TlsConnector>,
    key: hmac::Key,
    timeout: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("authority", &self.authority).field("path", &self.path).finish()
    }
}

/// The HMAC key from its file: 0600 (refused when loosened), its trimmed text at least
/// [`MIN_KEY_LEN`] bytes. The receiver uses the same text as its key.
pub(crate) fn load_key(path: &Path) -> Result<hmac::Key, String> {
    let raw = crate::secrets::read_secret_file(path).map_err(|e| e.to_string())?;
    let text = Zeroizing::new(String::from_utf8_lossy(&raw).trim().to_owned());
    if text.len() < MIN_KEY_LEN {
        return Err(format!(
            "{}: the HMAC key must be at least {MIN_KEY_LEN} characters (e.g. `openssl rand -hex 32`)",
            path.display()
        ));
    }
    Ok(hmac::Key::new(hmac::HMAC_SHA256, text.as_bytes()))
}

/// `sha256=<hex>` over `"<timestamp>.<body>"`.
pub(crate) fn signature(key: &hmac::Key, timestamp: u64, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            for (i, cert) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
                let cert = cert.map_err(|e| format!("{}: certificate {}: {e}", path.display(), i + 1))?;
                roots.add(cert).map_err(|e| format!("{}: certificate {}: {e}", path.display(), i + 1))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no PEM certificate found", path.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "a system CA certificate could not be loaded");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("no system CA certificates found; set alerts.ca_file".into());
            }
        }
    }
    Ok(roots)
}

/// Check what `[alerts]` names (key file, CA file, URL) as the gateway would at start: for
/// `check-config`.
pub fn check(config: &gateway_config::AlertsConfig) -> Result<(), String> {
    Webhook::open(config).map(drop)
}

impl Webhook {
    /// From the configuration: URL, key, trust. Every problem names its setting.
    pub(crate) fn open(config: &gateway_config::AlertsConfig) -> Result<Webhook, String> {
        let uri: Uri = config.webhook_url.parse().map_err(|e| format!("alerts.webhook_url: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("alerts.webhook_url: expected https://".into()),
        };
        let host = uri.host().ok_or("alerts.webhook_url: no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_else(|| host.clone());
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let key = load_key(&config.hmac_key_file).map_err(|e| format!("alerts.hmac_key_file: {e}"))?;
        let tls = if https {
            let roots = roots(config.ca_file.as_deref()).map_err(|e| format!("alerts.ca_file: {e}"))?;
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("alerts: TLS: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(tokio_rustls::TlsConnector::from(Arc::new(tls)))
        } else {
            None
        };
        Ok(Webhook { host, port, authority, path, tls, key, timeout: config.timeout })
    }

    /// Post `body` once; `Ok` with the receiver's status (only 2xx counts as delivered).
    pub(crate) async fn post(&self, body: &[u8]) -> Result<StatusCode, String> {
        match tokio::time::timeout(self.timeout, self.attempt(body)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn attempt(&self, body: &[u8]) -> Result<StatusCode, String> {
        let mut last = format!("{}: no address", self.host);
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port)).await.map_err(|e| e.to_string())?;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        let tcp = tcp.ok_or(last)?;
        let _ = tcp.set_nodelay(true);
        let timestamp = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
        let request = Request::post(self.path.as_str())
            .header(header::HOST, self.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, concat!("gateway/", env!("CARGO_PKG_VERSION")))
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature(&self.key, timestamp, body))
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| e.to_string())?;
        match &self.tls {
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| e.to_string())?;
                let tls = connector.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
                send(tls, request).await
            }
            None => send(tcp, request).await,
        }
    }
}

async fn send<T>(io: T, request: Request<Full<Bytes>>) -> Result<StatusCode, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let result = sender.send_request(request).await.map_err(|e| e.to_string()).map(|r| r.status());
    driver.abort();
    result
}

/// Retry waits: exponential, bounded, jittered.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The upper bound of the next wait, before jitter.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(20)).unwrap_or(u32::MAX);
        BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
    }

    /// Count a failure; the wait before the next attempt, in `[ceiling/2, ceiling]`.
    pub(crate) fn next(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let r = crate::secrets::random_bytes::<8>().map(u64::from_le_bytes).unwrap_or(u64::MAX / 2);
        let half = ceiling / 2;
        let extra_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(if extra_ms == 0 { 0 } else { r % (extra_ms + 1) })
    }

    /// A delivery went through.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_bounded_with_jitter() {
        let mut b = Backoff::default();
        let mut ceilings = Vec::new();
        for _ in 0..40 {
            let ceiling = b.ceiling();
            let wait = b.next();
            assert!(wait >= ceiling / 2 && wait <= ceiling, "{wait:?} outside [{:?}, {ceiling:?}]", ceiling / 2);
            assert!(wait <= BACKOFF_MAX);
            ceilings.push(ceiling);
        }
        assert_eq!(ceilings[0], BACKOFF_BASE);
        assert_eq!(ceilings[1], BACKOFF_BASE * 2);
        assert_eq!(ceilings[5], BACKOFF_BASE * 32);
        assert!(ceilings.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*ceilings.last().unwrap(), BACKOFF_MAX);
        // Jitter: many draws at the cap are not all the same.
        let draws: std::collections::BTreeSet<Duration> = (0..20).map(|_| b.next()).collect();
        assert!(draws.len() > 1, "no jitter: {draws:?}");
        b.reset();
        assert_eq!(b.ceiling(), BACKOFF_BASE);
    }

    #[test]
    fn signature_format_matches_an_independent_hmac() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef0123456789abcdef");
        let sig = signature(&key, 1_733_300_000, b"{\"a\":1}");
        // openssl: printf '1733300000.{"a":1}' | openssl dgst -sha256 -hmac 0123456789abcdef0123456789abcdef
        let expected = hmac::sign(&key, b"1733300000.{\"a\":1}");
        assert_eq!(sig, format!("sha256={}", hex::encode(expected.as_ref())));
        assert_eq!(sig.len(), "sha256=".len() + 64);
        assert_ne!(sig, signature(&key, 1_733_300_001, b"{\"a\":1}"), "the timestamp is signed");
        assert_ne!(sig, signature(&key, 1_733_300_000, b"{\"a\":2}"), "the body is signed");
    }

    #[test]
    fn key_file_rules() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alert.key");
        crate::secrets::write_secret_file(&path, b"short\n").unwrap();
        let err = load_key(&path).unwrap_err();
        assert!(err.contains("at least 32") && !err.contains("short"), "{err}");
        std::fs::remove_file(&path).unwrap();
        crate::secrets::write_secret_file(&path, b"0123456789abcdef0123456789abcdef\n").unwrap();
        assert!(load_key(&path).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_key(&path).unwrap_err();
        assert!(err.contains("0644") && !err.contains("0123456789"), "{err}");
    }
}
