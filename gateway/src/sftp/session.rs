//! The SFTP (protocol version 3) request loop, ours rather than russh-sftp's.
//!
//! russh-sftp's bundled loop awaits each request before reading the next, so a pipelining
//! client waits a round trip per request. Here one reader task drains the SSH channel and
//! only frames, charges and dispatches:
//!
//! * **The reader never waits on a reply.** russh hands channel data to us from its session
//!   loop; if we stop taking it, that loop stops reading the socket and never sees the
//!   client's window adjustments, while our replies wait for exactly those: both sides wait
//!   forever (paramiko's `get()` sends a READ for every chunk of a file at once). So the
//!   reader pushes into queues without awaiting their consumers, and what waits is bounded
//!   by **bytes** charged to the connection's and the process's [`Budget`]: a request costs
//!   its size plus [`REQUEST_OVERHEAD`], and consecutive READs of one handle (a prefetch)
//!   fold into one entry. Only when the budget is spent does the reader wait; if no reply
//!   goes out for the stall timeout meanwhile, the session cannot make progress and is
//!   closed with a log line and an audit record.
//! * Requests on an open handle go, in arrival order, to that handle's own task (writes and
//!   reads of one file in order, different files in parallel); every other request (open,
//!   stat, realpath, mkdir, …) goes to one of a few lanes chosen by the path it names, each
//!   served in order (requests about one path are processed in order, as the protocol
//!   requires; sshfs relies on it).
//! * One writer task sends the replies, gathering small ones into one channel write; a
//!   request's charge is released once its reply is written.
//! * The session ends when the client closes the channel (exit status 0), on a framing
//!   error, a stall or shutdown (exit status 1); it then sends EOF, `exit-status` and CLOSE,
//!   as OpenSSH does, so `scp` and friends report success.
//!
//! Every operation goes through [`Transfers`]: permissions, confinement and audit are the
//! same as over HTTPS. Uploads stream into storage without spooling; writes arriving out of
//! order are parked within [`REORDER_WINDOW`], each charged at least [`MIN_PARKED_CHARGE`]
//! against the budget (a handle whose parked data would overdraw it fails); the object
//! appears only on a successful `close`, whose status carries any storage failure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use russh_sftp::extensions::LimitsExtension;
use russh_sftp::protocol::{
    Attrs, ExtendedReply, File, FileAttributes, Handle, Name, OpenFlags, Packet, StatusCode, Version,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::budget::{Budget, Charge, MIN_PARKED_CHARGE, REQUEST_OVERHEAD};
use super::inflight::UploadsInProgress;
use super::queue::WorkQueue;
use crate::audit::{AuditEntry, AuditEvent};
use crate::auth::Principal;
use crate::path::{NameRefusal, PathError, RelPath};
use crate::storage::{EntryKind, ListEntry};
use crate::transfer::{ClientInfo, ReadSession, TransferError, Transfers, Upload};

/// Largest request packet accepted (OpenSSH's own limit).
pub const MAX_PACKET: u32 = 256 * 1024;
/// Largest read or write payload, advertised through `limits@openssh.com`.
pub const MAX_IO: u32 = 255 * 1024;
/// Open handles per session.
pub const MAX_HANDLES: usize = 64;
/// How far ahead of the sequential position a write may land and still be parked.
pub const REORDER_WINDOW: usize = 8 * 1024 * 1024;
/// Entries per `readdir` reply.
const READDIR_BATCH: usize = 128;
/// Lanes for path requests (open, stat, realpath, mkdir, …): up to this many are served at
/// once per session, requests about one path in order.
const PATH_LANES: usize = 16;
/// Packets at least this large are sliced out of the channel's buffer rather than copied;
/// smaller ones are copied so that a parked 1-byte write cannot pin a 32 KiB buffer.
const ZERO_COPY_MIN: usize = 8 * 1024;
/// Reply frames queued for the writer (bounds what read tasks run ahead).
const REPLY_QUEUE: usize = 32;
/// Replies smaller than this are gathered into one channel write, up to [`REPLY_BATCH`].
const SMALL_REPLY: usize = 4 * 1024;
const REPLY_BATCH: usize = 32 * 1024;
/// Time queued work and replies get to finish after the client closed the channel cleanly,
/// and after a shutdown or stall.
const DRAIN_CLEAN: Duration = Duration::from_secs(10);
const DRAIN_ABANDONED: Duration = Duration::from_secs(2);
/// Each of EOF, `exit-status` and CLOSE must reach the SSH layer within this.
const CONTROL_DEADLINE: Duration = Duration::from_secs(2);

/// What a session needs besides the shared frontend state.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// The connection's memory budget.
    pub budget: Budget,
    /// A session whose reader waits for budget while no reply goes out for this long is
    /// closed.
    pub stall_timeout: Duration,
    /// Cancelled to end the connection (shutdown, idle watchdog, a stalled session).
    pub stop: CancellationToken,
    /// Cancelled when shutdown gives up waiting: every task of the session stops where it is,
    /// dropping the uploads and downloads it holds (which audit themselves as failed).
    pub kill: CancellationToken,
}

/// Why the reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client sent EOF: what it sent is still processed and answered.
    ClientEof,
    /// The client closed the channel: what it sent is still processed, reads stop early
    /// (nobody can receive their data).
    ClientClosed,
    /// A packet length out of bounds: the stream cannot be framed any more.
    Framing,
    /// No progress while the budget was spent.
    Stalled,
    /// Shutdown or the connection watchdog.
    Stopped,
}

fn status(id: u32, code: StatusCode, message: &str) -> Packet {
    Packet::status(id, code, message, "en")
}

fn ok(id: u32) -> Packet {
    status(id, StatusCode::Ok, "OK")
}

/// The one mapping from transfer errors to SFTP status codes.
fn error_status(id: u32, e: &TransferError) -> Packet {
    let code = match e {
        TransferError::NotFound => StatusCode::NoSuchFile,
        TransferError::Forbidden(_) | TransferError::InvalidPath(_) => StatusCode::PermissionDenied,
        TransferError::RangeNotSatisfiable { .. } => StatusCode::Eof,
        _ => StatusCode::Failure,
    };
    status(id, code, &e.to_string())
}

/// Resolve a client path against the user's (virtual) root: `/` is the home; `.` and empty
/// segments are dropped; `..` is refused, and so are the characters `names` refuses. Names
/// mangled by a non-UTF-8 decode are refused rather than silently renamed.
fn resolve(raw: &str, names: NameRefusal) -> Result<RelPath, PathError> {
    if raw.contains('\u{FFFD}') {
        return Err(PathError::InvalidEncoding);
    }
    let kept: Vec<&str> = raw.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    RelPath::from_plain_with(&kept.join("/"), names)
}

/// `realpath`: the canonical absolute form, resolving `..` logically (never above `/`).
fn canonical(raw: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in raw.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn unix_secs(t: SystemTime) -> u32 {
    t.duration_since(UNIX_EPOCH).map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)).unwrap_or(0)
}

fn attrs_of(kind: EntryKind, size: u64, modified: SystemTime) -> FileAttributes {
    let mut a = FileAttributes::empty();
    a.size = Some(size);
    a.permissions = Some(match kind {
        EntryKind::Dir => 0o040_755,
        EntryKind::File => 0o100_644,
    });
    a.mtime = Some(unix_secs(modified));
    a.atime = Some(unix_secs(modified));
    a
}

fn longname(e: &ListEntry, user: &str) -> String {
    let perms = match e.kind {
        EntryKind::Dir => "drwxr-xr-x",
        EntryKind::File => "-rw-r--r--",
    };
    let when = time::OffsetDateTime::from(e.modified);
    let fmt = time::macros::format_description!("[month repr:short] [day padding:space] [hour]:[minute]");
    let date = when.format(fmt).unwrap_or_default();
    format!("{perms}    1 {user:<8} {user:<8} {:>8} {date} {}", e.size, e.name)
}

/// A request for an open handle.
enum HandleReq {
    /// `count` consecutive reads of `len` bytes: ids `id..id+count`, offsets `offset`,
    /// `offset+len`, … (a prefetching client's requests, folded into one entry).
    Read {
        id: u32,
        offset: u64,
        len: u32,
        count: u32,
    },
    Write {
        id: u32,
        offset: u64,
        data: Bytes,
    },
    Close {
        id: u32,
    },
    Fstat {
        id: u32,
    },
    Fsetstat {
        id: u32,
        attrs: FileAttributes,
    },
    Readdir {
        id: u32,
    },
}

impl HandleReq {
    fn id(&self) -> u32 {
        match self {
            HandleReq::Read { id, .. }
            | HandleReq::Write { id, .. }
            | HandleReq::Close { id }
            | HandleReq::Fstat { id }
            | HandleReq::Fsetstat { id, .. }
            | HandleReq::Readdir { id } => *id,
        }
    }
}

type HandleQueue = WorkQueue<(HandleReq, Option<Charge>)>;

/// Work for the path workers: a request, or a reply the reader decided on.
enum Job {
    Request(Packet),
    Reply(Packet),
}

/// Encoded reply frames (length prefix included) and the charges they release once sent.
type Out = mpsc::Sender<(Bytes, Option<Charge>)>;

/// Encode a reply; a packet that cannot be encoded becomes a plain failure status.
fn encode(packet: Packet) -> Bytes {
    let id = packet.get_request_id();
    Bytes::try_from(packet)
        .or_else(|_| Bytes::try_from(status(id, StatusCode::Failure, "reply could not be encoded")))
        .unwrap_or_default()
}

/// Open handles of a session, shared by the reader (routing) and the path workers (open).
#[derive(Default)]
struct Handles {
    map: HashMap<String, Arc<HandleQueue>>,
    next: u64,
    /// Set when the session ends: no new handle after that.
    closed: bool,
}

/// Everything a request task needs.
#[derive(Clone)]
struct Ctx {
    transfers: Transfers,
    who: Principal,
    client: ClientInfo,
    out: Out,
    budget: Budget,
    uploads: Arc<UploadsInProgress>,
    handles: Arc<Mutex<Handles>>,
    tasks: TaskTracker,
    /// [`SessionLimits::kill`]: every task spawned for the session ends with it.
    kill: CancellationToken,
    gone: Arc<std::sync::atomic::AtomicBool>,
}

impl Ctx {
    async fn reply(&self, packet: Packet, charge: Option<Charge>) {
        self.reply_frame(encode(packet), charge).await;
    }

    /// Queue a reply frame; false once nobody will send it any more.
    async fn reply_frame(&self, frame: Bytes, charge: Option<Charge>) -> bool {
        self.out.send((frame, charge)).await.is_ok()
    }

    /// True once the client closed the channel: replies can no longer reach it.
    fn client_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, Handles> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolve a path, auditing a refusal.
    async fn path(&self, op: &str, raw: &str) -> Result<RelPath, TransferError> {
        match resolve(raw, self.transfers.names()) {
            Ok(p) => Ok(p),
            Err(e) => {
                self.transfers.deny_path(&self.who, &self.client, op, raw, &e).await;
                Err(e.into())
            }
        }
    }

    /// Size and start of an upload of `rel` in progress in any session of this tenant.
    fn upload_in_progress(&self, rel: &RelPath) -> Option<(u64, SystemTime)> {
        self.uploads.lookup(&self.who.tenant, &self.who.home.join(rel).to_string())
    }

    /// Start a task for a new handle; `None` when the session has too many open.
    fn new_handle<F, Fut>(&self, task: F) -> Option<String>
    where
        F: FnOnce(Arc<HandleQueue>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let queue = Arc::new(HandleQueue::default());
        let name = {
            let mut handles = self.handles();
            if handles.closed || handles.map.len() >= MAX_HANDLES {
                return None;
            }
            handles.next += 1;
            let name = format!("h{}", handles.next);
            handles.map.insert(name.clone(), queue.clone());
            name
        };
        self.tasks.spawn(self.kill.clone().run_until_cancelled_owned(task(queue)));
        Some(name)
    }
}

/// Cuts the channel's byte stream into SFTP packets (without the length prefix).
#[derive(Default)]
struct Framer {
    /// Unconsumed data of the last channel message.
    pending: Bytes,
    /// A packet spanning channel messages, being assembled (length prefix included).
    partial: BytesMut,
}

/// A packet length the framer refuses.
#[derive(Debug)]
struct BadLength(u32);

fn check_len(len: u32) -> Result<usize, BadLength> {
    if len == 0 || len > MAX_PACKET + 1024 {
        return Err(BadLength(len));
    }
    Ok(len as usize)
}

fn be_u32(b: &[u8]) -> Option<u32> {
    b.get(..4)?.try_into().ok().map(u32::from_be_bytes)
}

impl Framer {
    fn push(&mut self, data: Bytes) {
        if self.pending.is_empty() {
            self.pending = data;
        } else {
            // Only when the caller did not drain: keep order by copying.
            let mut joined = BytesMut::with_capacity(self.pending.len() + data.len());
            joined.extend_from_slice(&self.pending);
            joined.extend_from_slice(&data);
            self.pending = joined.freeze();
        }
    }

    fn next_packet(&mut self) -> Result<Option<Bytes>, BadLength> {
        if self.partial.is_empty() {
            let Some(len) = be_u32(&self.pending) else {
                self.partial.extend_from_slice(&self.pending);
                self.pending.clear();
                return Ok(None);
            };
            let total = 4 + check_len(len)?;
            if self.pending.len() >= total {
                let body = self.pending.slice(4..total);
                self.pending.advance(total);
                let body = if body.len() >= ZERO_COPY_MIN { body } else { Bytes::copy_from_slice(&body) };
                return Ok(Some(body));
            }
            self.partial.reserve(total);
        }
        if self.partial.len() < 4 {
            let take = (4 - self.partial.len()).min(self.pending.len());
            self.partial.extend_from_slice(self.pending.get(..take).unwrap_or_default());
            self.pending.advance(take);
            let Some(len) = be_u32(&self.partial) else { return Ok(None) };
            self.partial.reserve(check_len(len)?);
        }
        let total = 4 + be_u32(&self.partial).map(|l| l as usize).unwrap_or(0);
        let take = (total - self.partial.len()).min(self.pending.len());
        self.partial.extend_from_slice(self.pending.get(..take).unwrap_or_default());
        self.pending.advance(take);
        if self.partial.len() < total {
            return Ok(None);
        }
        let mut packet = self.partial.split();
        packet.advance(4);
        Ok(Some(packet.freeze()))
    }
}

/// `SSH_FXP_READ`: `u32 id, string handle, u64 offset, u32 len`.
fn parse_read(packet: &[u8]) -> Option<(&str, u32, u64, u32)> {
    const SSH_FXP_READ: u8 = 5;
    if packet.first() != Some(&SSH_FXP_READ) {
        return None;
    }
    let id = be_u32(packet.get(1..)?)?;
    let handle_len = be_u32(packet.get(5..)?)? as usize;
    let handle = std::str::from_utf8(packet.get(9..9 + handle_len)?).ok()?;
    let rest = packet.get(9 + handle_len..)?;
    if rest.len() != 12 {
        return None;
    }
    let offset = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let len = be_u32(rest.get(8..)?)?;
    Some((handle, id, offset, len))
}

/// Fold a READ into `last` if it continues that run of reads (next id, next offset, same
/// length), as a prefetching client's requests do.
fn fold_read(last: &mut HandleReq, id: u32, offset: u64, len: u32) -> bool {
    let HandleReq::Read { id: first, offset: start, len: run_len, count } = last else { return false };
    let next_offset = u64::from(*count).checked_mul(u64::from(len)).and_then(|d| start.checked_add(d));
    let fits = *run_len == len && first.wrapping_add(*count) == id && next_offset == Some(offset) && *count < u32::MAX;
    if fits {
        *count += 1;
    }
    fits
}

/// The path workers of one session: [`PATH_LANES`] FIFO lanes, each served in order by at
/// most one worker. A request goes to the lane of the path it names, so requests about one
/// path are processed in the order they arrived (sshfs sends an OPEN that creates a file
/// and, without waiting, an LSTAT of it), while different paths proceed in parallel.
struct PathPool {
    lanes: Vec<Lane>,
}

#[derive(Default)]
struct Lane {
    queue: WorkQueue<(Job, Charge)>,
    busy: std::sync::atomic::AtomicBool,
}

impl Default for PathPool {
    fn default() -> Self {
        PathPool { lanes: (0..PATH_LANES).map(|_| Lane::default()).collect() }
    }
}

impl Lane {
    /// Become this lane's worker, unless it has one.
    fn claim(&self) -> bool {
        !self.busy.swap(true, Ordering::SeqCst)
    }
}

impl PathPool {
    fn lane(&self, i: usize) -> Option<&Lane> {
        self.lanes.get(i % PATH_LANES)
    }

    fn close(&self, abandon: bool) {
        for lane in &self.lanes {
            if abandon {
                lane.queue.abandon();
            } else {
                lane.queue.close();
            }
        }
    }
}

/// The lane of a request: by the path it names (as `realpath` would spell it), so that
/// `/a/b`, `a/b` and `a//b` meet in one lane.
fn lane_of(packet: &Packet) -> usize {
    let path = match packet {
        Packet::Open(o) => o.filename.as_str(),
        Packet::OpenDir(o) => o.path.as_str(),
        Packet::Stat(x) => x.path.as_str(),
        Packet::Lstat(x) => x.path.as_str(),
        Packet::SetStat(x) => x.path.as_str(),
        Packet::MkDir(x) => x.path.as_str(),
        Packet::RmDir(x) => x.path.as_str(),
        Packet::Remove(x) => x.filename.as_str(),
        Packet::Rename(x) => x.oldpath.as_str(),
        Packet::RealPath(x) => x.path.as_str(),
        _ => return 0,
    };
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    canonical(path).hash(&mut h);
    usize::try_from(h.finish() % PATH_LANES as u64).unwrap_or(0)
}

async fn lane_worker(pool: Arc<PathPool>, lane: usize, ctx: Ctx) {
    let Some(this) = pool.lane(lane) else { return };
    loop {
        while let Some((job, charge)) = this.queue.try_pop() {
            let reply = match job {
                Job::Reply(p) => p,
                Job::Request(p) => path_request(&ctx, p).await,
            };
            ctx.reply(reply, Some(charge)).await;
        }
        this.busy.store(false, Ordering::SeqCst);
        // The reader pushes and then claims; if it found the lane busy just before this
        // worker left, the job is still there for whoever claims next.
        if this.queue.is_empty() || !this.claim() {
            return;
        }
    }
}

/// The reader's state.
struct Reader {
    ctx: Ctx,
    pool: Arc<PathPool>,
    framer: Framer,
    progress: Arc<AtomicU64>,
    limits: SessionLimits,
}

impl Reader {
    async fn run(&mut self, rd: &mut russh::ChannelReadHalf) -> End {
        loop {
            let msg = tokio::select! {
                biased;
                () = self.limits.stop.cancelled() => return End::Stopped,
                m = rd.wait() => m,
            };
            match msg {
                Some(ChannelMsg::Data { data }) => {
                    self.framer.push(data);
                    loop {
                        match self.framer.next_packet() {
                            Ok(Some(packet)) => {
                                if let Err(end) = self.on_packet(packet).await {
                                    return end;
                                }
                            }
                            Ok(None) => break,
                            Err(BadLength(len)) => {
                                tracing::warn!(len, user = %self.ctx.who.user, "SFTP packet length out of bounds; closing the session");
                                let what =
                                    format!("SFTP packet length {len} out of bounds (1..={})", MAX_PACKET + 1024);
                                self.ctx.transfers.protocol_abuse(&self.ctx.who, &self.ctx.client, &what).await;
                                return End::Framing;
                            }
                        }
                    }
                }
                Some(ChannelMsg::Eof) => return End::ClientEof,
                Some(ChannelMsg::Close) | None => return End::ClientClosed,
                Some(_) => {}
            }
        }
    }

    /// Take `bytes` from the budget, waiting if it is spent; gives up when nothing has been
    /// sent for the stall timeout while waiting, or on stop.
    async fn charge(&self, bytes: usize) -> Result<Charge, End> {
        if let Some(c) = self.ctx.budget.try_charge(bytes) {
            return Ok(c);
        }
        let wait = self.ctx.budget.charge(bytes);
        tokio::pin!(wait);
        let mut seen = self.progress.load(Ordering::Relaxed);
        loop {
            tokio::select! {
                c = &mut wait => return Ok(c),
                () = self.limits.stop.cancelled() => return Err(End::Stopped),
                () = tokio::time::sleep(self.limits.stall_timeout) => {
                    let now = self.progress.load(Ordering::Relaxed);
                    // Stalled only if this connection holds budget that is not moving; waiting
                    // on the process-wide pool alone is someone else's doing.
                    if now == seen && self.ctx.budget.in_use() > 0 {
                        return Err(End::Stalled);
                    }
                    seen = now;
                }
            }
        }
    }

    async fn on_packet(&mut self, raw: Bytes) -> Result<(), End> {
        let cost = raw.len() + 4 + REQUEST_OVERHEAD;
        if let Some((handle, id, offset, len)) = parse_read(&raw) {
            // A prefetching client's next READ usually extends the run queued last.
            let queue = self.ctx.handles().map.get(handle).cloned();
            if let Some(q) = &queue {
                let folded = q.merge_into_last(|(last, _)| fold_read(last, id, offset, len));
                if folded {
                    return Ok(());
                }
            }
            let handle = handle.to_owned();
            let charge = self.charge(cost).await?;
            self.route(&handle, HandleReq::Read { id, offset, len, count: 1 }, charge);
            return Ok(());
        }
        let charge = self.charge(cost).await?;
        // Writes, the bulk of an upload, are parsed here without copying their data.
        if let Some((handle, req)) = parse_write(&raw) {
            self.route(&handle, req, charge);
            return Ok(());
        }
        let id = be_u32(raw.get(1..).unwrap_or_default()).unwrap_or(0);
        let mut body = raw;
        let packet = match Packet::try_from(&mut body) {
            Ok(p) => p,
            Err(_) => {
                self.path_job(0, Job::Reply(status(id, StatusCode::OpUnsupported, "unsupported request")), charge);
                return Ok(());
            }
        };
        let routed = match packet {
            Packet::Read(r) => (r.handle, HandleReq::Read { id: r.id, offset: r.offset, len: r.len, count: 1 }),
            Packet::Write(w) => (w.handle, HandleReq::Write { id: w.id, offset: w.offset, data: Bytes::from(w.data) }),
            Packet::Close(c) => (c.handle, HandleReq::Close { id: c.id }),
            Packet::Fstat(f) => (f.handle, HandleReq::Fstat { id: f.id }),
            Packet::FSetStat(f) => (f.handle, HandleReq::Fsetstat { id: f.id, attrs: f.attrs }),
            Packet::ReadDir(r) => (r.handle, HandleReq::Readdir { id: r.id }),
            other => {
                self.path_job(lane_of(&other), Job::Request(other), charge);
                return Ok(());
            }
        };
        self.route(&routed.0, routed.1, charge);
        Ok(())
    }

    fn path_job(&self, lane: usize, job: Job, charge: Charge) {
        let Some(l) = self.pool.lane(lane) else { return };
        if l.queue.push((job, charge)).is_ok() && l.claim() {
            let worker = lane_worker(self.pool.clone(), lane, self.ctx.clone());
            self.ctx.tasks.spawn(self.ctx.kill.clone().run_until_cancelled_owned(worker));
        }
    }

    /// Queue a request on its handle's task (in arrival order), or answer for a bad handle.
    fn route(&self, handle: &str, req: HandleReq, charge: Charge) {
        let id = req.id();
        let queue = {
            let mut handles = self.ctx.handles();
            if matches!(req, HandleReq::Close { .. }) {
                handles.map.remove(handle)
            } else {
                handles.map.get(handle).cloned()
            }
        };
        let refused = match queue {
            Some(q) => match q.push((req, Some(charge))) {
                Ok(()) => return,
                Err((_, charge)) => (status(id, StatusCode::Failure, "handle is no longer usable"), charge),
            },
            None => (status(id, StatusCode::Failure, "invalid handle"), Some(charge)),
        };
        if let (reply, Some(charge)) = refused {
            self.path_job(0, Job::Reply(reply), charge);
        }
    }
}

/// Send replies in order of arrival, gathering small ones into one channel write. Returns
/// false if the channel refused a write.
async fn write_replies(
    mut wr: impl AsyncWrite + Unpin,
    mut rx: mpsc::Receiver<(Bytes, Option<Charge>)>,
    progress: Arc<AtomicU64>,
) -> bool {
    let mut small = BytesMut::new();
    let mut held: Vec<Option<Charge>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some((frame, charge)) = next.take() {
            if frame.len() >= SMALL_REPLY {
                if !flush(&mut wr, &mut small, &mut held, &progress).await || wr.write_all(&frame).await.is_err() {
                    return false;
                }
                progress.fetch_add(1, Ordering::Relaxed);
                drop(charge);
            } else {
                small.extend_from_slice(&frame);
                held.push(charge);
                if small.len() >= REPLY_BATCH && !flush(&mut wr, &mut small, &mut held, &progress).await {
                    return false;
                }
            }
            next = rx.try_recv().ok();
        }
        if !flush(&mut wr, &mut small, &mut held, &progress).await {
            return false;
        }
    }
    true
}

async fn flush(
    wr: &mut (impl AsyncWrite + Unpin),
    small: &mut BytesMut,
    held: &mut Vec<Option<Charge>>,
    progress: &AtomicU64,
) -> bool {
    if small.is_empty() {
        return true;
    }
    if wr.write_all(small).await.is_err() {
        return false;
    }
    small.clear();
    progress.fetch_add(held.len() as u64, Ordering::Relaxed);
    held.clear();
    true
}

/// Serve one SFTP session until the client closes the channel, then end it the way
/// OpenSSH does: EOF, `exit-status`, CLOSE.
pub async fn run(
    channel: Channel<Msg>,
    shared: Arc<super::SftpShared>,
    who: Principal,
    client: ClientInfo,
    limits: SessionLimits,
) {
    let (mut rd, wr) = channel.split();
    let progress = Arc::new(AtomicU64::new(0));
    let (out_tx, out_rx) = mpsc::channel(REPLY_QUEUE);
    let replies = write_replies(wr.make_writer(), out_rx, progress.clone());
    let mut writer = tokio::spawn(limits.kill.clone().run_until_cancelled_owned(replies));
    let tasks = TaskTracker::new();
    let ctx = Ctx {
        transfers: shared.transfers.clone(),
        who,
        client,
        out: out_tx,
        budget: limits.budget.clone(),
        uploads: shared.uploads.clone(),
        handles: Arc::default(),
        tasks: tasks.clone(),
        kill: limits.kill.clone(),
        gone: Arc::default(),
    };
    let mut reader = Reader {
        ctx: ctx.clone(),
        pool: Arc::default(),
        framer: Framer::default(),
        progress: progress.clone(),
        limits: limits.clone(),
    };
    let end = reader.run(&mut rd).await;
    // From here on russh may deliver into a closed receiver rather than wait for us.
    drop(rd);
    let clean = matches!(end, End::ClientEof | End::ClientClosed);
    if end != End::ClientEof {
        ctx.gone.store(true, Ordering::Relaxed);
    }
    let queues: Vec<Arc<HandleQueue>> = {
        let mut handles = ctx.handles();
        handles.closed = true;
        std::mem::take(&mut handles.map).into_values().collect()
    };
    for q in queues.iter().map(|q| q.as_ref()) {
        if clean {
            q.close();
        } else {
            q.abandon();
        }
    }
    reader.pool.close(!clean);
    drop(queues);
    let Reader { ctx: reader_ctx, pool, .. } = reader;
    drop((reader_ctx, pool));
    // Unfinished uploads and downloads audit themselves as failed when their tasks end.
    tasks.close();
    let deadline = if clean { DRAIN_CLEAN } else { DRAIN_ABANDONED };
    let who = ctx.who.clone();
    let audit_ctx = (ctx.transfers.clone(), ctx.client.clone());
    drop(ctx);
    let flushed = tokio::time::timeout(deadline, async {
        tasks.wait().await;
        (&mut writer).await.ok().flatten().unwrap_or(false)
    })
    .await;
    let flushed = match flushed {
        Ok(ok) => ok,
        Err(_) => {
            // The client stopped taking replies: drop them so the tasks can finish.
            writer.abort();
            tasks.wait().await;
            false
        }
    };
    if matches!(end, End::Stalled) {
        let secs = limits.stall_timeout.as_secs();
        tracing::warn!(user = %who.user, remote = %audit_ctx.1.remote_addr, secs, "SFTP session made no progress with its request budget spent; closing the connection");
        let entry = AuditEntry {
            operation: Some("session".into()),
            result: Some("error".into()),
            error: Some(format!(
                "closed: no reply could be sent for {secs}s while the client's queued requests filled the connection's budget"
            )),
            ..audit_ctx.1.user_entry(AuditEvent::Operation, &who)
        };
        if let Err(e) = audit_ctx.0.audit().append(entry, false).await {
            tracing::error!(error = %e, "could not audit a stalled session");
        }
    }
    if flushed {
        let code = if clean { 0 } else { 1 };
        let _ = tokio::time::timeout(CONTROL_DEADLINE, wr.eof()).await;
        let _ = tokio::time::timeout(CONTROL_DEADLINE, wr.exit_status(code)).await;
    }
    let _ = tokio::time::timeout(CONTROL_DEADLINE, wr.close()).await;
    if end == End::Stalled {
        // The connection's SSH layer is wedged behind this session: close all of it.
        limits.stop.cancel();
    }
}

/// `SSH_FXP_WRITE`: `u32 id, string handle, u64 offset, string data`, the data sliced out of
/// the packet rather than copied. `None` for any other packet or a malformed one (which
/// then takes the general path and gets its error status there).
fn parse_write(packet: &Bytes) -> Option<(String, HandleReq)> {
    const SSH_FXP_WRITE: u8 = 6;
    let mut b = packet.clone();
    if b.first() != Some(&SSH_FXP_WRITE) {
        return None;
    }
    let take_u32 = |b: &mut Bytes| -> Option<u32> {
        let v = be_u32(b)?;
        b.advance(4);
        Some(v)
    };
    b.advance(1);
    let id = take_u32(&mut b)?;
    let handle_len = take_u32(&mut b)? as usize;
    let handle = std::str::from_utf8(b.get(..handle_len)?).ok()?.to_owned();
    b.advance(handle_len);
    let offset = b.get(..8)?.try_into().ok().map(u64::from_be_bytes)?;
    b.advance(8);
    let data_len = take_u32(&mut b)? as usize;
    if b.len() != data_len {
        return None;
    }
    Some((handle, HandleReq::Write { id, offset, data: b }))
}

/// An `SSH_FXP_DATA` frame built straight from the payload (one copy, instead of the two a
/// `Packet::Data` round trip costs).
fn data_frame(id: u32, data: &[u8]) -> Bytes {
    const SSH_FXP_DATA: u8 = 103;
    let mut frame = bytes::BytesMut::with_capacity(13 + data.len());
    let body_len = u32::try_from(9 + data.len()).unwrap_or(u32::MAX);
    frame.extend_from_slice(&body_len.to_be_bytes());
    frame.extend_from_slice(&[SSH_FXP_DATA]);
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(data);
    frame.freeze()
}

async fn open_file(ctx: &Ctx, open: russh_sftp::protocol::Open) -> Packet {
    let id = open.id;
    let flags = open.pflags;
    let reading = flags.contains(OpenFlags::READ);
    let writing = flags.intersects(OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE | OpenFlags::TRUNCATE);
    let op = if writing { "upload" } else { "download" };
    let rel = match ctx.path(op, &open.filename).await {
        Ok(p) => p,
        Err(e) => return error_status(id, &e),
    };
    if reading && writing {
        return status(id, StatusCode::OpUnsupported, "files open either for reading or for writing, not both");
    }
    if flags.contains(OpenFlags::APPEND) {
        return status(id, StatusCode::OpUnsupported, "appending is not supported; files are written whole");
    }
    if ctx.handles().map.len() >= MAX_HANDLES {
        return status(id, StatusCode::Failure, "too many open handles");
    }
    if writing {
        let existing = ctx.transfers.head(&ctx.who, &rel).await;
        if let Ok(e) = &existing {
            if e.kind == EntryKind::Dir {
                return status(id, StatusCode::Failure, "path names a directory");
            }
            if flags.contains(OpenFlags::EXCLUDE) {
                return status(id, StatusCode::Failure, "file already exists");
            }
            if !flags.contains(OpenFlags::TRUNCATE) {
                return status(
                    id,
                    StatusCode::OpUnsupported,
                    "resuming or modifying an existing file is not supported; upload it whole (open with truncate)",
                );
            }
        }
        let upload = match ctx.transfers.begin_upload(&ctx.who, &ctx.client, &rel, None).await {
            Ok(u) => u,
            Err(e) => return error_status(id, &e),
        };
        let listed = ctx.uploads.register(&ctx.who.tenant, &ctx.who.home.join(&rel).to_string());
        let task_ctx = ctx.clone();
        return match ctx.new_handle(move |q| upload_task(q, upload, listed, task_ctx)) {
            Some(handle) => Packet::Handle(Handle { id, handle }),
            // Raced with other opens past the limit: the upload task never ran, so the
            // dropped upload records itself as failed.
            None => status(id, StatusCode::Failure, "too many open handles"),
        };
    }
    let reader = match ctx.transfers.open_read(&ctx.who, &ctx.client, &rel).await {
        Ok(r) => r,
        Err(e) => return error_status(id, &e),
    };
    let task_ctx = ctx.clone();
    match ctx.new_handle(move |q| read_task(q, reader, task_ctx)) {
        Some(handle) => Packet::Handle(Handle { id, handle }),
        None => status(id, StatusCode::Failure, "too many open handles"),
    }
}

async fn open_dir(ctx: &Ctx, id: u32, raw: &str) -> Packet {
    let rel = match ctx.path("list", raw).await {
        Ok(p) => p,
        Err(e) => return error_status(id, &e),
    };
    if ctx.handles().map.len() >= MAX_HANDLES {
        return status(id, StatusCode::Failure, "too many open handles");
    }
    // The first page is fetched (and audited) now, so a missing directory fails here.
    let first = match ctx.transfers.list(&ctx.who, &ctx.client, &rel, None, READDIR_BATCH).await {
        Ok(p) => p,
        Err(e) => return error_status(id, &e),
    };
    let task_ctx = ctx.clone();
    match ctx.new_handle(move |q| dir_task(q, rel, first, task_ctx)) {
        Some(handle) => Packet::Handle(Handle { id, handle }),
        None => status(id, StatusCode::Failure, "too many open handles"),
    }
}

/// `setstat`/`fsetstat`: storage keeps no modes, owners or times, so those are accepted
/// without effect; a size is accepted only where it is already the file's size (sshfs sets
/// size 0 on a file it has just created), since nothing can be truncated or extended.
fn set_attrs(id: u32, attrs: &FileAttributes, current_size: u64) -> Packet {
    match attrs.size {
        Some(size) if size != current_size => status(
            id,
            StatusCode::OpUnsupported,
            "changing a file's size is not supported; upload the file whole instead",
        ),
        _ => ok(id),
    }
}

/// A write parked in the reorder buffer, with its charge against the budget.
struct Parked {
    data: Bytes,
    _charge: Charge,
}

async fn upload_task(q: Arc<HandleQueue>, mut upload: Upload, listed: super::inflight::Registration, ctx: Ctx) {
    let mut next = 0u64;
    let mut parked: std::collections::BTreeMap<u64, Parked> = std::collections::BTreeMap::new();
    let mut parked_bytes = 0usize;
    let mut failure: Option<String> = None;
    while let Some((req, charge)) = q.pop().await {
        let reply = match req {
            HandleReq::Write { id, offset, data } => {
                if let Some(f) = &failure {
                    status(id, StatusCode::Failure, f)
                } else if data.len() > MAX_IO as usize + 1024 {
                    failure = Some("write larger than the advertised limit".into());
                    status(id, StatusCode::Failure, "write larger than the advertised limit")
                } else if offset == next {
                    let mut result = write_at(&mut upload, &mut next, data).await;
                    while result.is_ok() {
                        let Some(p) = parked.remove(&next) else { break };
                        parked_bytes -= p.data.len();
                        result = write_at(&mut upload, &mut next, p.data).await;
                    }
                    listed.state.set_bytes(next);
                    match result {
                        Ok(()) => ok(id),
                        Err(e) => {
                            failure = Some(e.to_string());
                            error_status(id, &e)
                        }
                    }
                } else if offset > next
                    && offset - next <= REORDER_WINDOW as u64
                    && parked_bytes + data.len() <= REORDER_WINDOW
                    && !parked.contains_key(&offset)
                {
                    let cost = data.len().max(MIN_PARKED_CHARGE) + REQUEST_OVERHEAD;
                    match ctx.budget.try_charge_parked(cost) {
                        Some(parked_charge) => {
                            parked_bytes += data.len();
                            parked.insert(offset, Parked { data, _charge: parked_charge });
                            ok(id)
                        }
                        None => {
                            let why =
                                "too much out-of-order data is buffered for this connection; write files sequentially";
                            failure = Some(why.into());
                            status(id, StatusCode::Failure, why)
                        }
                    }
                } else {
                    let why = if offset < next {
                        "overlapping or repeated writes are not supported; files are written sequentially"
                    } else {
                        "write is too far ahead of the sequential position (reorder window exceeded)"
                    };
                    failure = Some(why.into());
                    status(id, StatusCode::Failure, why)
                }
            }
            HandleReq::Close { id } => {
                let gap = !std::mem::take(&mut parked).is_empty();
                let reply = if let Some(f) = failure.take() {
                    let e = upload.fail(TransferError::Client(f)).await;
                    error_status(id, &e)
                } else if gap {
                    let e =
                        upload.fail(TransferError::Client("file has a gap: some writes never arrived".into())).await;
                    error_status(id, &e)
                } else {
                    match upload.finish(None).await {
                        Ok(_) => ok(id),
                        Err(e) => error_status(id, &e),
                    }
                };
                drop(listed);
                ctx.reply(reply, charge).await;
                return;
            }
            HandleReq::Fstat { id } => {
                let mut a = FileAttributes::empty();
                a.size = Some(next);
                a.permissions = Some(0o100_644);
                let now = unix_secs(SystemTime::now());
                a.mtime = Some(now);
                a.atime = Some(now);
                Packet::Attrs(Attrs { id, attrs: a })
            }
            HandleReq::Fsetstat { id, attrs } => set_attrs(id, &attrs, next),
            HandleReq::Read { id, .. } | HandleReq::Readdir { id } => {
                status(id, StatusCode::Failure, "handle is open for writing")
            }
        };
        ctx.reply(reply, charge).await;
    }
    // Session ended without close: `upload` drops here and audits itself as failed.
}

async fn write_at(upload: &mut Upload, next: &mut u64, data: Bytes) -> Result<(), TransferError> {
    let len = data.len() as u64;
    upload.write(data).await?;
    *next += len;
    Ok(())
}

async fn read_task(q: Arc<HandleQueue>, mut reader: ReadSession, ctx: Ctx) {
    while let Some((req, mut charge)) = q.pop().await {
        let reply = match req {
            HandleReq::Read { id, offset, len, count } => {
                // The request's charge covers it while queued; once read, the data is
                // charged to the connection's reply allowance until it is sent.
                let _request = charge.take();
                // Past the end once means past the end for every later offset of the run.
                let mut at_end = false;
                for i in 0..count {
                    if ctx.client_gone() {
                        break;
                    }
                    let rid = id.wrapping_add(i);
                    let at = offset.saturating_add(u64::from(i) * u64::from(len));
                    if at_end {
                        ctx.reply(status(rid, StatusCode::Eof, "end of file"), None).await;
                        continue;
                    }
                    let want = len.min(MAX_IO) as usize;
                    let held = ctx.budget.reply_charge(want + 13).await;
                    match reader.read_at(at, want).await {
                        Ok(Some(data)) => {
                            if !ctx.reply_frame(data_frame(rid, &data), held).await {
                                break;
                            }
                        }
                        Ok(None) => {
                            at_end = true;
                            ctx.reply(status(rid, StatusCode::Eof, "end of file"), held).await;
                        }
                        Err(e) => ctx.reply(error_status(rid, &e), held).await,
                    }
                }
                continue;
            }
            HandleReq::Close { id } => {
                let reply = match reader.close().await {
                    Ok(()) => ok(id),
                    Err(e) => error_status(id, &e),
                };
                ctx.reply(reply, charge).await;
                return;
            }
            HandleReq::Fstat { id } => {
                let m = reader.meta();
                Packet::Attrs(Attrs { id, attrs: attrs_of(EntryKind::File, m.size, m.modified) })
            }
            HandleReq::Fsetstat { id, attrs } => set_attrs(id, &attrs, reader.meta().size),
            HandleReq::Write { id, .. } | HandleReq::Readdir { id } => {
                status(id, StatusCode::Failure, "handle is open for reading")
            }
        };
        ctx.reply(reply, charge).await;
    }
}

async fn dir_task(q: Arc<HandleQueue>, rel: RelPath, first: crate::storage::ListPage, ctx: Ctx) {
    let mut page = Some(first);
    let mut after: Option<crate::storage::ListCursor> = None;
    let mut done = false;
    while let Some((req, charge)) = q.pop().await {
        let reply = match req {
            HandleReq::Readdir { id } => {
                let current = match page.take() {
                    Some(p) => Ok(p),
                    None if done => Ok(Default::default()),
                    None => ctx.transfers.list_continue(&ctx.who, &rel, after.as_ref(), READDIR_BATCH).await,
                };
                match current {
                    Ok(p) if p.entries.is_empty() => {
                        done = true;
                        status(id, StatusCode::Eof, "end of directory")
                    }
                    Ok(p) => {
                        done = p.next.is_none();
                        after = p.next.clone();
                        let user = ctx.who.user.to_string();
                        let files = p
                            .entries
                            .iter()
                            .map(|e| File {
                                filename: e.name.clone(),
                                longname: longname(e, &user),
                                attrs: attrs_of(e.kind, e.size, e.modified),
                            })
                            .collect();
                        Packet::Name(Name { id, files })
                    }
                    Err(e) => error_status(id, &e),
                }
            }
            HandleReq::Close { id } => {
                ctx.reply(ok(id), charge).await;
                return;
            }
            HandleReq::Fstat { id } => {
                Packet::Attrs(Attrs { id, attrs: attrs_of(EntryKind::Dir, 0, SystemTime::UNIX_EPOCH) })
            }
            HandleReq::Fsetstat { id, .. } => ok(id),
            HandleReq::Read { id, .. } | HandleReq::Write { id, .. } => {
                status(id, StatusCode::Failure, "handle is a directory")
            }
        };
        ctx.reply(reply, charge).await;
    }
}

/// `stat`/`lstat`: an upload in progress answers as a regular file with the bytes received
/// so far (the object itself appears only at close); otherwise what storage holds.
async fn stat_path(ctx: &Ctx, rel: &RelPath) -> Result<FileAttributes, TransferError> {
    let p = &ctx.who.permissions;
    if !(p.list || p.read) {
        return Err(TransferError::Forbidden("stat"));
    }
    if let Some((size, started)) = ctx.upload_in_progress(rel) {
        return Ok(attrs_of(EntryKind::File, size, started));
    }
    let e = ctx.transfers.head(&ctx.who, rel).await?;
    Ok(attrs_of(e.kind, e.size, e.modified))
}

/// Requests that name paths rather than handles (and open / opendir / init).
async fn path_request(ctx: &Ctx, packet: Packet) -> Packet {
    let (t, who, client) = (&ctx.transfers, &ctx.who, &ctx.client);
    match packet {
        Packet::Init(init) => {
            let mut v = Version::new();
            v.version = init.version.min(russh_sftp::protocol::VERSION);
            for (name, value) in [("limits@openssh.com", "1"), ("posix-rename@openssh.com", "1")] {
                v.extensions.insert(name.into(), value.into());
            }
            Packet::Version(v)
        }
        Packet::Open(open) => open_file(ctx, open).await,
        Packet::OpenDir(od) => open_dir(ctx, od.id, &od.path).await,
        Packet::RealPath(r) => {
            let path = canonical(&r.path);
            Packet::Name(Name { id: r.id, files: vec![File::dummy(path)] })
        }
        Packet::Stat(russh_sftp::protocol::Stat { id, path })
        | Packet::Lstat(russh_sftp::protocol::Lstat { id, path }) => {
            let result = match ctx.path("stat", &path).await {
                Ok(rel) => stat_path(ctx, &rel).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(attrs) => Packet::Attrs(Attrs { id, attrs }),
                Err(e) => error_status(id, &e),
            }
        }
        Packet::SetStat(s) => match ctx.path("setstat", &s.path).await {
            Ok(rel) => match stat_path(ctx, &rel).await {
                Ok(current) => set_attrs(s.id, &s.attrs, current.size.unwrap_or(0)),
                Err(e) => error_status(s.id, &e),
            },
            Err(e) => error_status(s.id, &e),
        },
        Packet::MkDir(m) => match ctx.path("mkdir", &m.path).await {
            Ok(rel) => result(m.id, t.mkdir(who, client, &rel).await),
            Err(e) => error_status(m.id, &e),
        },
        Packet::RmDir(r) => match ctx.path("rmdir", &r.path).await {
            Ok(rel) => result(r.id, t.rmdir(who, client, &rel).await),
            Err(e) => error_status(r.id, &e),
        },
        Packet::Remove(r) => match ctx.path("delete", &r.filename).await {
            Ok(rel) => result(r.id, t.delete(who, client, &rel).await),
            Err(e) => error_status(r.id, &e),
        },
        Packet::Rename(r) => rename(ctx, r.id, &r.oldpath, &r.newpath, false).await,
        Packet::Symlink(s) => status(s.id, StatusCode::PermissionDenied, "symbolic links are not supported"),
        Packet::ReadLink(r) => status(r.id, StatusCode::OpUnsupported, "symbolic links are not supported"),
        Packet::Extended(x) => extended(ctx, x).await,
        other => status(other.get_request_id(), StatusCode::OpUnsupported, "unsupported request"),
    }
}

fn result(id: u32, r: Result<(), TransferError>) -> Packet {
    match r {
        Ok(()) => ok(id),
        Err(e) => error_status(id, &e),
    }
}

async fn rename(ctx: &Ctx, id: u32, from: &str, to: &str, replace: bool) -> Packet {
    let from = match ctx.path("rename", from).await {
        Ok(p) => p,
        Err(e) => return error_status(id, &e),
    };
    let to = match ctx.path("rename", to).await {
        Ok(p) => p,
        Err(e) => return error_status(id, &e),
    };
    result(id, ctx.transfers.rename(&ctx.who, &ctx.client, &from, &to, replace).await)
}

async fn extended(ctx: &Ctx, x: russh_sftp::protocol::Extended) -> Packet {
    match x.request.as_str() {
        "limits@openssh.com" => {
            let limits = LimitsExtension {
                max_packet_len: u64::from(MAX_PACKET),
                max_read_len: u64::from(MAX_IO),
                max_write_len: u64::from(MAX_IO),
                max_open_handles: MAX_HANDLES as u64,
            };
            match russh_sftp::ser::to_bytes(&limits) {
                Ok(data) => Packet::ExtendedReply(ExtendedReply { id: x.id, data: data.to_vec() }),
                Err(_) => status(x.id, StatusCode::Failure, "cannot encode limits"),
            }
        }
        "posix-rename@openssh.com" => {
            // Same layout as hardlink@openssh.com: string oldpath, string newpath.
            let mut data = Bytes::from(x.data);
            match russh_sftp::de::from_bytes::<russh_sftp::extensions::HardlinkExtension>(&mut data) {
                Ok(r) => rename(ctx, x.id, &r.oldpath, &r.newpath, true).await,
                Err(_) => status(x.id, StatusCode::BadMessage, "malformed posix-rename request"),
            }
        }
        _ => status(x.id, StatusCode::OpUnsupported, "unsupported extension"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_under_the_virtual_root() {
        let resolve = |raw| super::resolve(raw, NameRefusal::default());
        assert_eq!(resolve("/a/./b//c").unwrap().display(), "a/b/c");
        assert!(resolve("/").unwrap().is_root());
        assert!(resolve(".").unwrap().is_root());
        assert_eq!(resolve("/a/../b"), Err(PathError::DotSegment));
        assert_eq!(resolve("a\\b"), Err(PathError::Backslash));
        assert_eq!(resolve("bad\u{FFFD}name"), Err(PathError::InvalidEncoding));
        assert!(matches!(resolve("/in/a\u{202E}gnp.exe"), Err(PathError::Invisible { code_point: 0x202E, .. })));
        assert!(super::resolve("/in/a\u{200B}b", NameRefusal::Bidi).is_ok());
        assert_eq!(canonical("/a/b/../../.."), "/");
        assert_eq!(canonical("."), "/");
        assert_eq!(canonical("x/./y/.."), "/x");
    }
}

#[cfg(test)]
mod write_tests {
    use super::*;

    fn write_packet(id: u32, handle: &str, offset: u64, data: &[u8]) -> Bytes {
        let mut p = vec![6u8];
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&(handle.len() as u32).to_be_bytes());
        p.extend_from_slice(handle.as_bytes());
        p.extend_from_slice(&offset.to_be_bytes());
        p.extend_from_slice(&(data.len() as u32).to_be_bytes());
        p.extend_from_slice(data);
        Bytes::from(p)
    }

    #[test]
    fn writes_parse_without_copy_and_bad_ones_fall_through() {
        let p = write_packet(7, "h3", 1 << 40, b"payload");
        let Some((handle, HandleReq::Write { id, offset, data })) = parse_write(&p) else { panic!("not parsed") };
        assert_eq!((handle.as_str(), id, offset, &data[..]), ("h3", 7, 1 << 40, &b"payload"[..]));
        assert_eq!(data.as_ptr(), p[p.len() - 7..].as_ptr(), "data is a slice of the packet");
        // Truncated, over-long, wrong type: left to the general parser.
        for cut in [0, 1, 5, 9, 12, 20, p.len() - 1] {
            assert!(parse_write(&p.slice(..cut)).is_none(), "cut {cut}");
        }
        let mut longer = p.to_vec();
        longer.push(0);
        assert!(parse_write(&Bytes::from(longer)).is_none());
        let mut other = p.to_vec();
        other[0] = 5;
        assert!(parse_write(&Bytes::from(other)).is_none());
        // A handle length that lies.
        let mut lie = p.to_vec();
        lie[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_write(&Bytes::from(lie)).is_none());
    }
}

#[cfg(test)]
mod framing_tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    fn read_packet(id: u32, handle: &str, offset: u64, len: u32) -> Vec<u8> {
        let mut p = vec![5u8];
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&(handle.len() as u32).to_be_bytes());
        p.extend_from_slice(handle.as_bytes());
        p.extend_from_slice(&offset.to_be_bytes());
        p.extend_from_slice(&len.to_be_bytes());
        p
    }

    #[test]
    fn packets_split_anywhere_across_channel_messages_come_out_whole() {
        let small = b"\x01\x00\x00\x00\x03".to_vec();
        let big = vec![7u8; ZERO_COPY_MIN + 100];
        let mut stream = frame(&small);
        stream.extend(frame(&big));
        stream.extend(frame(&small));
        for cut_a in [1, 3, 4, 5, 9, 20, stream.len() - 7] {
            for cut_b in [cut_a + 1, cut_a + 4, stream.len()] {
                let cut_b = cut_b.min(stream.len());
                let mut f = Framer::default();
                let mut out = Vec::new();
                for chunk in [&stream[..cut_a], &stream[cut_a..cut_b], &stream[cut_b..]] {
                    f.push(Bytes::copy_from_slice(chunk));
                    while let Some(p) = f.next_packet().unwrap() {
                        out.push(p);
                    }
                }
                assert_eq!(out.len(), 3, "cuts {cut_a} {cut_b}");
                assert_eq!((&out[0][..], &out[1][..], &out[2][..]), (&small[..], &big[..], &small[..]));
            }
        }
    }

    #[test]
    fn large_packets_inside_one_message_are_slices_and_small_ones_copies() {
        let big = vec![9u8; ZERO_COPY_MIN];
        let mut stream = frame(&big);
        stream.extend(frame(b"\x01abc"));
        let chunk = Bytes::from(stream);
        let mut f = Framer::default();
        f.push(chunk.clone());
        let first = f.next_packet().unwrap().unwrap();
        assert_eq!(first.as_ptr(), chunk[4..].as_ptr(), "sliced, not copied");
        let second = f.next_packet().unwrap().unwrap();
        assert_eq!(&second[..], b"\x01abc");
        assert_ne!(second.as_ptr(), chunk[chunk.len() - 4..].as_ptr(), "copied: must not pin the message");
        assert!(f.next_packet().unwrap().is_none());
    }

    #[test]
    fn lengths_out_of_bounds_are_refused() {
        for len in [0u32, MAX_PACKET + 1025, u32::MAX] {
            let mut f = Framer::default();
            f.push(Bytes::copy_from_slice(&len.to_be_bytes()));
            assert!(f.next_packet().is_err(), "{len}");
        }
        // Also when the length arrives in pieces.
        let mut f = Framer::default();
        f.push(Bytes::from_static(&[0xff, 0xff]));
        assert!(f.next_packet().unwrap().is_none());
        f.push(Bytes::from_static(&[0xff, 0xff]));
        assert!(f.next_packet().is_err());
    }

    #[test]
    fn reads_parse_and_anything_else_does_not() {
        let p = read_packet(9, "h12", 1 << 33, 32768);
        assert_eq!(parse_read(&p), Some(("h12", 9, 1 << 33, 32768)));
        for cut in 0..p.len() {
            assert_eq!(parse_read(&p[..cut]), None, "cut {cut}");
        }
        let mut longer = p.clone();
        longer.push(0);
        assert_eq!(parse_read(&longer), None);
        let mut write = p.clone();
        write[0] = 6;
        assert_eq!(parse_read(&write), None);
    }

    #[tokio::test]
    async fn consecutive_reads_fold_into_one_run_and_others_do_not() {
        let q = HandleQueue::default();
        let fold = |q: &HandleQueue, id, offset, len| q.merge_into_last(|(last, _)| fold_read(last, id, offset, len));
        q.push((HandleReq::Read { id: 10, offset: 0, len: 100, count: 1 }, None)).ok();
        assert!(fold(&q, 11, 100, 100));
        assert!(fold(&q, 12, 200, 100));
        assert!(!fold(&q, 14, 300, 100), "id gap");
        assert!(!fold(&q, 13, 350, 100), "offset gap");
        assert!(!fold(&q, 13, 300, 50), "other length");
        let Some((HandleReq::Read { id, offset, len, count }, _)) = q.try_pop() else { panic!("a run") };
        assert_eq!((id, offset, len, count), (10, 0, 100, 3));
    }
}
