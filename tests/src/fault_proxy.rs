//! A fault-injecting TCP proxy for tests: listens on `127.0.0.1:0`, forwards every
//! connection to a target, and can be told at run time to
//!
//! * cut a connection once a number of request bytes (client → target) have passed
//!   ([`FaultProxy::cut_after`] once, [`FaultProxy::cut_each_after`] for every connection),
//!   with a TCP reset on both sides;
//! * stop forwarding in both directions for a while ([`FaultProxy::stall`]), or only on the
//!   connection carrying a matching request ([`FaultProxy::stall_next`]);
//! * answer the next request(s) whose first line contains a pattern with a canned error
//!   instead of forwarding them ([`FaultProxy::fail_next`], [`FaultProxy::respond`]): for
//!   example `"partNumber="` for S3 `UploadPart`.
//!
//! Requests are recognised by following HTTP/1.1 framing on the client's side (head, then a
//! `Content-Length` body). A connection whose bytes do not look like HTTP, or that sends a
//! chunked body, is forwarded as raw bytes from then on (byte faults still apply to it).
//! An injected reply discards the request body (none is awaited after
//! `Expect: 100-continue`), says `Connection: close`, and closes the connection after it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Longest request head the proxy buffers while looking for its end; a longer one switches
/// the connection to raw forwarding.
const MAX_HEAD: usize = 64 * 1024;

/// Counters of what went through a [`FaultProxy`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted.
    pub connections: u64,
    /// Bytes forwarded client → target.
    pub upstream_bytes: u64,
    /// Bytes forwarded target → client.
    pub downstream_bytes: u64,
    /// Connections cut by a byte fault.
    pub cuts: u64,
    /// Requests answered by the proxy instead of the target.
    pub injected: u64,
    /// Requests held by [`FaultProxy::stall_next`].
    pub stalled: u64,
}

#[derive(Clone, Debug)]
enum Action {
    Respond { status: u16, code: String },
    Stall(Duration),
}

#[derive(Debug)]
struct Rule {
    pattern: String,
    remaining: usize,
    action: Action,
}

#[derive(Debug, Default)]
struct State {
    /// Request bytes still allowed through (all connections together) before one is cut.
    cut_once: Option<u64>,
    /// Request bytes each connection may pass before it is cut.
    cut_each: Option<u64>,
    stall_until: Option<Instant>,
    rules: Vec<Rule>,
    requests: Vec<String>,
    /// Whole heads (first line and headers) of the requests in `requests`.
    heads: Vec<String>,
    stats: Stats,
}

struct Shared {
    target: SocketAddr,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters inconsistent in a way
        // that matters to a test; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running proxy; stops accepting and drops every connection it carries when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listen on `127.0.0.1:0` and forward each connection to `target`.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fault proxy");
        let addr = listener.local_addr().expect("fault proxy address");
        let shared = Arc::new(Shared { target, state: Mutex::new(State::default()) });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        FaultProxy { addr, shared, accept }
    }

    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, for an endpoint URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Once `bytes` more request bytes have been forwarded (all connections together), cut
    /// the connection that carried the last of them (reset to both peers). Fires once.
    pub fn cut_after(&self, bytes: u64) {
        self.shared.lock().cut_once = Some(bytes);
    }

    /// Cut every connection, current and future, once it has forwarded `bytes` request
    /// bytes in total, until [`FaultProxy::clear`].
    pub fn cut_each_after(&self, bytes: u64) {
        self.shared.lock().cut_each = Some(bytes);
    }

    /// Forward nothing, in either direction on any connection, for `duration` from now.
    pub fn stall(&self, duration: Duration) {
        self.shared.lock().stall_until = Some(Instant::now() + duration);
    }

    /// Hold the next request whose first line contains `pattern` (and anything else on its
    /// connection, both ways) for `duration` before forwarding it.
    pub fn stall_next(&self, pattern: &str, duration: Duration) {
        self.add_rule(pattern, 1, Action::Stall(duration));
    }

    /// Answer the next request whose first line contains `pattern` with
    /// `500 InternalError` instead of forwarding it.
    pub fn fail_next(&self, pattern: &str) {
        self.respond(pattern, 1, 500, "InternalError");
    }

    /// Answer the next `times` requests whose first line contains `pattern` with `status`
    /// and an S3-style XML error body carrying `code` (e.g. `503`, `SlowDown`).
    pub fn respond(&self, pattern: &str, times: usize, status: u16, code: &str) {
        self.add_rule(pattern, times, Action::Respond { status, code: code.to_owned() });
    }

    fn add_rule(&self, pattern: &str, times: usize, action: Action) {
        if times > 0 {
            self.shared.lock().rules.push(Rule { pattern: pattern.to_owned(), remaining: times, action });
        }
    }

    /// Disarm every fault (counters and the request log are kept).
    pub fn clear(&self) {
        let mut s = self.shared.lock();
        s.cut_once = None;
        s.cut_each = None;
        s.stall_until = None;
        s.rules.clear();
    }

    /// Whether a one-shot fault ([`FaultProxy::cut_after`], a request rule) is still waiting
    /// to fire.
    pub fn armed(&self) -> bool {
        let s = self.shared.lock();
        s.cut_once.is_some() || !s.rules.is_empty()
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats
    }

    /// First lines of every request seen so far (forwarded or answered by the proxy), oldest
    /// first.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Connection tasks live in this set: aborting the accept task drops them all.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((client, _)) = listener.accept().await else { continue };
        shared.lock().stats.connections += 1;
        conns.spawn(serve(client, shared.clone()));
    }
}

/// How one direction of a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The source closed; the other direction may go on.
    Eof,
    /// The proxy answered a request itself: close the whole connection gracefully.
    Close,
    /// A byte fault fired or an I/O error happened: drop everything (reset when cut).
    Reset,
}

/// Per-connection state shared by its two directions.
struct Conn {
    shared: Arc<Shared>,
    /// Set by a stall rule for this connection only.
    stall_until: Mutex<Option<Instant>>,
}

impl Conn {
    /// Sleep while the proxy or this connection is stalled.
    async fn wait_stall(&self) {
        loop {
            let global = self.shared.lock().stall_until;
            let local = *self.stall_until.lock().unwrap_or_else(|e| e.into_inner());
            let until = global.max(local);
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                _ => return,
            }
        }
    }
}

async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let Ok(upstream) = TcpStream::connect(shared.target).await else { return };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (upstream_r, upstream_w) = upstream.into_split();
    let client_w = Arc::new(tokio::sync::Mutex::new(client_w));
    let conn = Conn { shared, stall_until: Mutex::new(None) };

    let up = upstream_direction(&conn, client_r, upstream_w, &client_w);
    let down = downstream_direction(&conn, upstream_r, &client_w);
    tokio::pin!(up, down);
    let rest = tokio::select! {
        end = &mut up => if end == End::Eof { down.await } else { end },
        end = &mut down => if end == End::Eof { up.await } else { end },
    };
    if rest == End::Close {
        let _ = client_w.lock().await.shutdown().await;
    }
    // Everything is dropped here; a cut set zero linger on both sockets, so both peers get
    // a reset.
}

/// Framing of the client's byte stream.
enum Framing {
    /// Collecting a request head.
    Head,
    /// Forwarding this many more body bytes.
    Body(u64),
    /// Discarding this many more body bytes of a request the proxy answers itself.
    Discard { remaining: u64, status: u16, code: String },
    /// Not (or no longer) followed as HTTP.
    Raw,
}

async fn upstream_direction(
    conn: &Conn,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    client_w: &tokio::sync::Mutex<OwnedWriteHalf>,
) -> End {
    let mut framing = Framing::Head;
    let mut pending = BytesMut::with_capacity(64 * 1024);
    let mut sent: u64 = 0;
    loop {
        match from.read_buf(&mut pending).await {
            Ok(0) => {
                // Forward what is left (a head without its end) and pass the half-close on.
                if !pending.is_empty() {
                    let chunk = pending.split();
                    if forward(conn, &mut to, client_w, &chunk, &mut sent).await.is_err() {
                        return End::Reset;
                    }
                }
                let _ = to.shutdown().await;
                return End::Eof;
            }
            Ok(_) => {}
            Err(_) => return End::Reset,
        }
        while !pending.is_empty() {
            match &mut framing {
                Framing::Raw => {
                    let chunk = pending.split();
                    if forward(conn, &mut to, client_w, &chunk, &mut sent).await.is_err() {
                        return End::Reset;
                    }
                }
                Framing::Body(remaining) => {
                    let n = usize::try_from(*remaining).unwrap_or(usize::MAX).min(pending.len());
                    let chunk = pending.split_to(n);
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        framing = Framing::Head;
                    }
                    if forward(conn, &mut to, client_w, &chunk, &mut sent).await.is_err() {
                        return End::Reset;
                    }
                }
                Framing::Discard { remaining, status, code } => {
                    let n = usize::try_from(*remaining).unwrap_or(usize::MAX).min(pending.len());
                    pending.advance(n);
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        let (status, code) = (*status, std::mem::take(code));
                        return reply(conn, client_w, status, &code).await;
                    }
                }
                Framing::Head => {
                    if !looks_like_http(&pending) {
                        framing = Framing::Raw;
                        continue;
                    }
                    let Some(end) = find(&pending, b"\r\n\r\n") else {
                        if pending.len() > MAX_HEAD {
                            framing = Framing::Raw;
                            continue;
                        }
                        break; // read more
                    };
                    let head = pending.split_to(end + 4);
                    let parsed = parse_head(&head);
                    let action = conn.shared.lock().on_head(&head, &parsed.first_line);
                    match action {
                        Some(Action::Respond { status, code }) => {
                            if parsed.expect_continue || parsed.chunked || parsed.content_length == 0 {
                                return reply(conn, client_w, status, &code).await;
                            }
                            framing = Framing::Discard { remaining: parsed.content_length, status, code };
                            continue;
                        }
                        Some(Action::Stall(d)) => {
                            *conn.stall_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + d);
                        }
                        None => {}
                    }
                    framing = if parsed.chunked {
                        Framing::Raw
                    } else if parsed.content_length > 0 {
                        Framing::Body(parsed.content_length)
                    } else {
                        Framing::Head
                    };
                    if forward(conn, &mut to, client_w, &head, &mut sent).await.is_err() {
                        return End::Reset;
                    }
                }
            }
        }
    }
}

/// Why forwarding stopped.
struct Stop;

/// Forward `chunk` upstream, honouring stalls and byte cuts; `sent` counts this connection's
/// request bytes.
async fn forward(
    conn: &Conn,
    to: &mut OwnedWriteHalf,
    client_w: &tokio::sync::Mutex<OwnedWriteHalf>,
    chunk: &[u8],
    sent: &mut u64,
) -> Result<(), Stop> {
    conn.wait_stall().await;
    let len = chunk.len() as u64;
    // How much of the chunk may pass before a cut, if one falls inside it.
    let allowed = {
        let mut s = conn.shared.lock();
        let mut allowed: Option<u64> = None;
        if let Some(rem) = s.cut_once {
            if rem <= len {
                allowed = Some(rem);
                s.cut_once = None;
            } else {
                s.cut_once = Some(rem - len);
            }
        }
        if let Some(limit) = s.cut_each {
            let left = limit.saturating_sub(*sent);
            if left <= len {
                allowed = Some(allowed.map_or(left, |a| a.min(left)));
            }
        }
        let passed = allowed.unwrap_or(len);
        s.stats.upstream_bytes += passed;
        if allowed.is_some() {
            s.stats.cuts += 1;
        }
        allowed
    };
    let passed = usize::try_from(allowed.unwrap_or(len)).unwrap_or(chunk.len()).min(chunk.len());
    *sent += passed as u64;
    if passed > 0 && to.write_all(chunk.get(..passed).unwrap_or(chunk)).await.is_err() {
        return Err(Stop);
    }
    if allowed.is_some() {
        let _ = to.flush().await;
        let _ = to.as_ref().set_zero_linger();
        let _ = client_w.lock().await.as_ref().set_zero_linger();
        return Err(Stop);
    }
    Ok(())
}

async fn downstream_direction(
    conn: &Conn,
    mut from: OwnedReadHalf,
    client_w: &tokio::sync::Mutex<OwnedWriteHalf>,
) -> End {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                let _ = client_w.lock().await.shutdown().await;
                return End::Eof;
            }
            Ok(n) => n,
            Err(_) => return End::Reset,
        };
        conn.wait_stall().await;
        conn.shared.lock().stats.downstream_bytes += n as u64;
        if client_w.lock().await.write_all(buf.get(..n).unwrap_or(&buf)).await.is_err() {
            return End::Reset;
        }
    }
}

/// Write the canned error reply to the client.
async fn reply(conn: &Conn, client_w: &tokio::sync::Mutex<OwnedWriteHalf>, status: u16, code: &str) -> End {
    conn.wait_stall().await;
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected by the test fault proxy</Message><RequestId>fault-proxy</RequestId></Error>"
    );
    let text = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    );
    let mut w = client_w.lock().await;
    if w.write_all(text.as_bytes()).await.is_err() {
        return End::Reset;
    }
    let _ = w.flush().await;
    End::Close
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

impl State {
    /// Log a request and consume the first rule it matches.
    fn on_request(&mut self, first_line: &str) -> Option<Action> {
        if self.requests.len() < 100_000 {
            self.requests.push(first_line.to_owned());
        }
        let i = self.rules.iter().position(|r| first_line.contains(&r.pattern))?;
        let rule = self.rules.get_mut(i)?;
        let action = rule.action.clone();
        rule.remaining -= 1;
        if rule.remaining == 0 {
            self.rules.remove(i);
        }
        match action {
            Action::Respond { .. } => self.stats.injected += 1,
            Action::Stall(_) => self.stats.stalled += 1,
        }
        Some(action)
    }
}

/// Whether the start of a stream can be an HTTP/1.x request line (`TOKEN SP ...`).
fn looks_like_http(data: &[u8]) -> bool {
    for (i, b) in data.iter().take(20).enumerate() {
        match b {
            b'A'..=b'Z' | b'-' => {}
            b' ' => return i > 0,
            _ => return false,
        }
    }
    data.len() < 20
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct Head {
    first_line: String,
    content_length: u64,
    chunked: bool,
    expect_continue: bool,
}

fn parse_head(head: &[u8]) -> Head {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let first_line = lines.next().unwrap_or_default().to_owned();
    let mut h = Head { first_line, content_length: 0, chunked: false, expect_continue: false };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_ascii_lowercase());
        match name.as_str() {
            "content-length" => h.content_length = value.parse().unwrap_or(0),
            "transfer-encoding" => h.chunked = value.contains("chunked"),
            "expect" => h.expect_continue = value == "100-continue",
            _ => {}
        }
    }
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    /// A TCP echo server; returns its address and a counter of bytes it received.
    async fn echo_server() -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                counter.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    /// A minimal HTTP/1.1 server: reads each request (Content-Length bodies), logs its
    /// first line and body size, answers `200` with the body size; keeps connections alive.
    async fn http_server() -> (SocketAddr, Arc<Mutex<Vec<(String, usize)>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let log = log2.clone();
                tokio::spawn(async move {
                    let mut buf = BytesMut::new();
                    loop {
                        let end = loop {
                            if let Some(e) = find(&buf, b"\r\n\r\n") {
                                break e;
                            }
                            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                                return;
                            }
                        };
                        let head = parse_head(&buf.split_to(end + 4));
                        let len = head.content_length as usize;
                        while buf.len() < len {
                            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                                return;
                            }
                        }
                        buf.advance(len);
                        log.lock().unwrap().push((head.first_line, len));
                        let body = len.to_string();
                        let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, log)
    }

    /// Send one request on `s` and read one response (Content-Length framed); returns the
    /// status and body, or `None` when the connection ends first.
    async fn exchange(s: &mut TcpStream, first_line: &str, body: &[u8]) -> Option<(u16, String, bool)> {
        let head = format!("{first_line}\r\nhost: test\r\ncontent-length: {}\r\n\r\n", body.len());
        s.write_all(head.as_bytes()).await.ok()?;
        s.write_all(body).await.ok()?;
        let mut buf = BytesMut::new();
        let end = loop {
            if let Some(e) = find(&buf, b"\r\n\r\n") {
                break e;
            }
            if s.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        };
        let head_bytes = buf.split_to(end + 4);
        let text = String::from_utf8_lossy(&head_bytes).into_owned();
        let status: u16 = text.split(' ').nth(1)?.parse().ok()?;
        let close = text.to_ascii_lowercase().contains("connection: close");
        let len = parse_head(&head_bytes).content_length as usize;
        while buf.len() < len {
            if s.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        }
        Some((status, String::from_utf8_lossy(&buf[..len]).into_owned(), close))
    }

    #[tokio::test]
    async fn forwards_bytes_both_ways() {
        let (target, seen) = echo_server().await;
        let proxy = FaultProxy::start(target).await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut r, mut w) = s.split();
        let (_, back) = tokio::join!(
            async {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            },
            async {
                let mut back = Vec::new();
                r.read_to_end(&mut back).await.unwrap();
                back
            }
        );
        assert_eq!(back, data);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), data.len() as u64);
        let stats = proxy.stats();
        assert_eq!((stats.connections, stats.upstream_bytes, stats.downstream_bytes), (1, 1_000_000, 1_000_000));
    }

    #[tokio::test]
    async fn cut_after_resets_the_connection_at_the_byte_count_once() {
        let (target, seen) = echo_server().await;
        let proxy = FaultProxy::start(target).await;
        proxy.cut_after(1000);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        // Written in pieces: the cut falls inside the third one.
        let mut write_failed = false;
        for _ in 0..10 {
            if s.write_all(&[b'x'; 400]).await.is_err() {
                write_failed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut back = Vec::new();
        let read = s.read_to_end(&mut back).await;
        assert!(write_failed || read.is_err(), "the client saw a reset");
        assert!(back.len() <= 1000, "echoed {}", back.len());
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1000, "target got exactly 1000 bytes");
        assert_eq!(proxy.stats().cuts, 1);
        assert!(!proxy.armed());
        // Fired once: the next connection passes everything.
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(&[b'y'; 5000]).await.unwrap();
        let mut back = vec![0u8; 5000];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(proxy.stats().cuts, 1);
    }

    #[tokio::test]
    async fn cut_each_after_cuts_every_connection() {
        let (target, seen) = echo_server().await;
        let proxy = FaultProxy::start(target).await;
        proxy.cut_each_after(100);
        for _ in 0..3 {
            let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
            let _ = s.write_all(&[b'z'; 300]).await;
            let mut back = Vec::new();
            let _ = s.read_to_end(&mut back).await;
            assert!(back.len() <= 100);
        }
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 300);
        assert_eq!(proxy.stats().cuts, 3);
        proxy.clear();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(&[b'z'; 300]).await.unwrap();
        let mut back = vec![0u8; 300];
        s.read_exact(&mut back).await.unwrap();
    }

    #[tokio::test]
    async fn stall_holds_traffic_for_the_duration() {
        let (target, _) = echo_server().await;
        let proxy = FaultProxy::start(target).await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        proxy.stall(Duration::from_millis(600));
        let t = Instant::now();
        s.write_all(b"pong").await.unwrap();
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"pong");
        assert!(t.elapsed() >= Duration::from_millis(550), "{:?}", t.elapsed());
        // Over: no delay any more.
        let t = Instant::now();
        s.write_all(b"pang").await.unwrap();
        s.read_exact(&mut back).await.unwrap();
        assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn fail_next_answers_the_matching_request_and_follows_keep_alive_framing() {
        let (target, log) = http_server().await;
        let proxy = FaultProxy::start(target).await;
        proxy.fail_next("partNumber=");
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        // Two requests on one connection pass (the body of the first contains a request-like
        // line: framing must skip it).
        let tricky = b"PUT /b/k?partNumber=9 HTTP/1.1\r\n\r\n";
        let r = exchange(&mut s, "PUT /b/k HTTP/1.1", tricky).await.unwrap();
        assert_eq!((r.0, r.1), (200, tricky.len().to_string()));
        let r = exchange(&mut s, "GET /b?list-type=2 HTTP/1.1", b"").await.unwrap();
        assert_eq!(r.0, 200);
        // The matching one is answered by the proxy, with its body discarded.
        let body = vec![7u8; 300_000];
        let r = exchange(&mut s, "PUT /b/k?partNumber=1&uploadId=u HTTP/1.1", &body).await.unwrap();
        assert_eq!(r.0, 500);
        assert!(r.1.contains("<Code>InternalError</Code>"), "{}", r.1);
        assert!(r.2, "connection: close");
        let mut rest = Vec::new();
        assert_eq!(s.read_to_end(&mut rest).await.unwrap(), 0, "closed after the reply");
        // Once only: the retry goes through.
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let r = exchange(&mut s, "PUT /b/k?partNumber=1&uploadId=u HTTP/1.1", &body).await.unwrap();
        assert_eq!((r.0, r.1.as_str()), (200, "300000"));
        let seen: Vec<String> = log.lock().unwrap().iter().map(|(l, _)| l.clone()).collect();
        assert_eq!(
            seen,
            ["PUT /b/k HTTP/1.1", "GET /b?list-type=2 HTTP/1.1", "PUT /b/k?partNumber=1&uploadId=u HTTP/1.1"]
        );
        assert_eq!(proxy.requests().len(), 4);
        assert_eq!(proxy.stats().injected, 1);
    }

    #[tokio::test]
    async fn respond_repeats_with_the_given_status_and_code() {
        let (target, log) = http_server().await;
        let proxy = FaultProxy::start(target).await;
        proxy.respond("uploads", 2, 503, "SlowDown");
        for _ in 0..2 {
            let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
            let r = exchange(&mut s, "POST /b/k?uploads HTTP/1.1", b"").await.unwrap();
            assert_eq!(r.0, 503);
            assert!(r.1.contains("<Code>SlowDown</Code>"));
        }
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(exchange(&mut s, "POST /b/k?uploads HTTP/1.1", b"").await.unwrap().0, 200);
        assert_eq!(log.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn stall_next_holds_only_the_matching_request() {
        let (target, _) = http_server().await;
        let proxy = FaultProxy::start(target).await;
        proxy.stall_next("partNumber=", Duration::from_millis(700));
        let mut other = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut slow = TcpStream::connect(proxy.addr()).await.unwrap();
        let t = Instant::now();
        let (a, b) = tokio::join!(
            async {
                let r = exchange(&mut slow, "PUT /b/k?partNumber=1 HTTP/1.1", b"data").await;
                (r, t.elapsed())
            },
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let r = exchange(&mut other, "GET /b/k HTTP/1.1", b"").await;
                (r, t.elapsed())
            }
        );
        assert_eq!(a.0.unwrap().0, 200);
        assert!(a.1 >= Duration::from_millis(650), "stalled request took {:?}", a.1);
        assert_eq!(b.0.unwrap().0, 200);
        assert!(b.1 < Duration::from_millis(600), "other request took {:?}", b.1);
        assert_eq!(proxy.stats().stalled, 1);
    }
}

/// A request as the proxy saw it: its first line and its headers, in order, as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// `METHOD target HTTP/1.1`.
    pub first_line: String,
    /// Header names (as sent) and values, in order.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether a header named `name` is present (case-insensitive).
    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

impl FaultProxy {
    /// Every request seen so far (forwarded or answered by the proxy) with its headers,
    /// oldest first; nothing is redacted (tests only).
    pub fn request_heads(&self) -> Vec<RequestHead> {
        let heads = self.shared.lock().heads.clone();
        heads
            .iter()
            .map(|text| {
                let mut lines = text.split("\r\n");
                let first_line = lines.next().unwrap_or_default().to_owned();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                    .collect();
                RequestHead { first_line, headers }
            })
            .collect()
    }
}

impl State {
    /// [`State::on_request`], keeping the whole head for [`FaultProxy::request_heads`].
    fn on_head(&mut self, head: &[u8], first_line: &str) -> Option<Action> {
        if self.heads.len() < 100_000 {
            self.heads.push(String::from_utf8_lossy(head).into_owned());
        }
        self.on_request(first_line)
    }
}
