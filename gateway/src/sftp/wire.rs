//! The TCP stream as russh sees it, with two additions russh does not offer:
//!
//! * a login grace deadline: until authentication succeeds, reads fail once
//!   `login_grace_time` has passed, which ends the connection;
//! * a passive copy of the client's version line and first (cleartext) KEXINIT, from which
//!   the negotiated kex, cipher and MAC are derived for the audit trail (russh keeps them
//!   private). Only the first [`SNIFF_LIMIT`] bytes are ever copied.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of the client's stream kept for parsing its version line and KEXINIT.
pub const SNIFF_LIMIT: usize = 64 * 1024;

/// What the client said before encryption started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The version line without CR LF, e.g. `SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u6`.
    pub version: String,
    /// Client's kex algorithms, in preference order.
    pub kex: Vec<String>,
    /// Client-to-server ciphers.
    pub ciphers: Vec<String>,
    /// Client-to-server MACs.
    pub macs: Vec<String>,
}

/// Algorithms both sides settled on, as RFC 4253 §7.1 picks them (the client's first choice
/// that the server also offers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// Key exchange.
    pub kex: Option<String>,
    /// Client-to-server cipher.
    pub cipher: Option<String>,
    /// MAC; `implicit` for AEAD ciphers, whose tag authenticates each packet.
    pub mac: Option<String>,
}

fn is_aead(cipher: &str) -> bool {
    cipher.contains("gcm") || cipher.contains("poly1305")
}

impl ClientHello {
    /// Negotiate against the server's lists.
    pub fn negotiate(&self, kex: &[String], ciphers: &[String], macs: &[String]) -> Negotiated {
        let pick = |client: &[String], server: &[String]| {
            client
                .iter()
                .filter(|c| !c.starts_with("ext-info-") && !c.starts_with("kex-strict-"))
                .find(|c| server.contains(c))
                .cloned()
        };
        let cipher = pick(&self.ciphers, ciphers);
        let mac = match &cipher {
            Some(c) if is_aead(c) => Some("implicit".to_owned()),
            _ => pick(&self.macs, macs),
        };
        Negotiated { kex: pick(&self.kex, kex), cipher, mac }
    }
}

/// Parse a version line and KEXINIT from the start of a client's stream; `None` until enough
/// bytes are there (or if they are malformed).
pub fn parse_client_hello(buf: &[u8]) -> Option<ClientHello> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    let version = String::from_utf8_lossy(buf.get(..nl)?).trim_end_matches('\r').to_owned();
    let rest = buf.get(nl + 1..)?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let packet = rest.get(4..4 + len)?;
    let padding = *packet.first()? as usize;
    let payload = packet.get(1..len.checked_sub(padding)?)?;
    if *payload.first()? != 20 {
        return None; // not SSH_MSG_KEXINIT
    }
    let mut pos = 17; // message byte + 16-byte cookie
    let mut lists = Vec::new();
    for _ in 0..6 {
        let n = u32::from_be_bytes(payload.get(pos..pos + 4)?.try_into().ok()?) as usize;
        let text = std::str::from_utf8(payload.get(pos + 4..pos + 4 + n)?).ok()?;
        lists.push(text.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>());
        pos += 4 + n;
    }
    let mut it = lists.into_iter();
    let kex = it.next()?;
    let _host_keys = it.next()?;
    let ciphers = it.next()?;
    let _ciphers_s2c = it.next()?;
    let macs = it.next()?;
    Some(ClientHello { version, kex, ciphers, macs })
}

/// Shared between the stream and the connection handler.
#[derive(Debug)]
pub struct WireState {
    /// Set once authentication succeeded: disarms the grace deadline.
    pub authenticated: AtomicBool,
    hello: Mutex<Option<ClientHello>>,
    start: std::time::Instant,
    /// Milliseconds after `start` of the last byte read or written.
    last_activity: AtomicU64,
}

impl Default for WireState {
    fn default() -> Self {
        WireState {
            authenticated: AtomicBool::new(false),
            hello: Mutex::new(None),
            start: std::time::Instant::now(),
            last_activity: AtomicU64::new(0),
        }
    }
}

impl WireState {
    /// Time since the connection was accepted.
    pub fn since_start(&self) -> std::time::Duration {
        self.start.elapsed()
    }

    /// Time since the last byte went either way.
    pub fn since_activity(&self) -> std::time::Duration {
        let last = std::time::Duration::from_millis(self.last_activity.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity.store(now, Ordering::Relaxed);
    }

    /// The client's hello, once seen.
    pub fn hello(&self) -> Option<ClientHello> {
        self.hello.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The wrapped TCP stream.
pub struct WireStream<S> {
    inner: S,
    grace: Pin<Box<tokio::time::Sleep>>,
    state: Arc<WireState>,
    sniff: Option<Vec<u8>>,
}

impl<S> WireStream<S> {
    /// Wrap `inner`; reads fail after `grace` unless authentication succeeded.
    pub fn new(inner: S, grace: std::time::Duration, state: Arc<WireState>) -> WireStream<S> {
        WireStream { inner, grace: Box::pin(tokio::time::sleep(grace)), state, sniff: Some(Vec::new()) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WireStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.state.authenticated.load(Ordering::Acquire) && this.grace.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "login grace time exceeded")));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.touch();
        }
        if let (Poll::Ready(Ok(())), Some(sniff)) = (&result, this.sniff.as_mut()) {
            let fresh = buf.filled().get(before..).unwrap_or_default();
            let room = SNIFF_LIMIT.saturating_sub(sniff.len());
            sniff.extend_from_slice(fresh.get(..fresh.len().min(room)).unwrap_or_default());
            if let Some(hello) = parse_client_hello(sniff) {
                *this.state.hello.lock().unwrap_or_else(|p| p.into_inner()) = Some(hello);
                this.sniff = None;
            } else if sniff.len() >= SNIFF_LIMIT || fresh.is_empty() {
                this.sniff = None;
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WireStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.state.touch();
        }
        result
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.state.touch();
        }
        result
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kexinit(lists: [&str; 10]) -> Vec<u8> {
        let mut payload = vec![20u8];
        payload.extend_from_slice(&[7u8; 16]);
        for l in lists {
            payload.extend_from_slice(&(l.len() as u32).to_be_bytes());
            payload.extend_from_slice(l.as_bytes());
        }
        payload.push(0);
        payload.extend_from_slice(&0u32.to_be_bytes());
        let padding = 8 - (payload.len() + 5) % 8 + 4;
        let len = (payload.len() + padding + 1) as u32;
        let mut out = b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n".to_vec();
        out.extend_from_slice(&len.to_be_bytes());
        out.push(padding as u8);
        out.extend_from_slice(&payload);
        out.extend(std::iter::repeat_n(0u8, padding));
        out
    }

    #[test]
    fn parses_and_negotiates() {
        let raw = kexinit([
            "sntrup761x25519-sha512,curve25519-sha256,ext-info-c,kex-strict-c-v00@openssh.com",
            "ssh-ed25519",
            "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com",
            "chacha20-poly1305@openssh.com",
            "hmac-sha2-256-etm@openssh.com",
            "hmac-sha2-256-etm@openssh.com",
            "none",
            "none",
            "",
            "",
        ]);
        for cut in [10, 40, raw.len() - 1] {
            assert_eq!(parse_client_hello(&raw[..cut]), None);
        }
        let hello = parse_client_hello(&raw).unwrap();
        assert_eq!(hello.version, "SSH-2.0-OpenSSH_9.2p1 Debian");
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let n = hello.negotiate(
            &s(&["mlkem768x25519-sha256", "curve25519-sha256"]),
            &s(&["aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]),
            &s(&["hmac-sha2-256-etm@openssh.com"]),
        );
        assert_eq!(n.kex.as_deref(), Some("curve25519-sha256"));
        assert_eq!(n.cipher.as_deref(), Some("chacha20-poly1305@openssh.com"));
        assert_eq!(n.mac.as_deref(), Some("implicit"));
    }
}
