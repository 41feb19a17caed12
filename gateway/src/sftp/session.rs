//! The SFTP (protocol version 3) request loop, ours rather than russh-sftp's.
//!
//! russh-sftp's bundled loop awaits each handler before reading the next request, so a
//! pipelining client (OpenSSH keeps 64 reads or writes in flight) waits a round trip per
//! request. Here the reader only parses and dispatches:
//!
//! * requests on an open handle go, in arrival order, to that handle's own task (so writes
//!   and reads of one file are processed in order, and different files in parallel);
//! * path requests (stat, realpath, mkdir, …) run as their own tasks;
//! * at most [`MAX_IN_FLIGHT`] requests and [`MAX_IN_FLIGHT_BYTES`] of request data are
//!   outstanding per session, and the reply queue is bounded.
//!
//! Every operation goes through [`Transfers`]: permissions, confinement and audit are the
//! same as over HTTPS. Uploads stream into storage without spooling; writes arriving out of
//! order are reordered within [`REORDER_WINDOW`]; the object appears only on a successful
//! `close`, whose status carries any storage failure.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use russh::server::Msg;
use russh::ChannelStream;
use russh_sftp::extensions::LimitsExtension;
use russh_sftp::protocol::{
    Attrs, ExtendedReply, File, FileAttributes, Handle, Name, OpenFlags, Packet, StatusCode, Version,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::SftpShared;
use crate::auth::Principal;
use crate::path::{PathError, RelPath};
use crate::storage::{EntryKind, ListEntry};
use crate::transfer::{ClientInfo, ReadSession, TransferError, Transfers, Upload};

/// Largest request packet accepted (OpenSSH's own limit).
pub const MAX_PACKET: u32 = 256 * 1024;
/// Largest read or write payload, advertised through `limits@openssh.com`.
pub const MAX_IO: u32 = 255 * 1024;
/// Requests outstanding per session.
pub const MAX_IN_FLIGHT: usize = 64;
/// Request bytes outstanding per session: with the reorder window, this bounds what one
/// session holds in memory.
pub const MAX_IN_FLIGHT_BYTES: usize = 8 * 1024 * 1024;
/// Open handles per session.
pub const MAX_HANDLES: usize = 64;
/// How far ahead of the sequential position a write may land, and how many bytes of such
/// writes are held per upload while waiting for the gap to fill.
pub const REORDER_WINDOW: usize = 8 * 1024 * 1024;
/// Entries per `readdir` reply.
const READDIR_BATCH: usize = 128;

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
/// segments are dropped; `..` is refused. Names mangled by a non-UTF-8 decode are refused
/// rather than silently renamed.
fn resolve(raw: &str) -> Result<RelPath, PathError> {
    if raw.contains('\u{FFFD}') {
        return Err(PathError::InvalidEncoding);
    }
    let kept: Vec<&str> = raw.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    RelPath::from_plain(&kept.join("/"))
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

/// A request for an open handle, with the in-flight slot it holds.
enum HandleReq {
    Read { id: u32, offset: u64, len: u32 },
    Write { id: u32, offset: u64, data: Bytes },
    Close { id: u32 },
    Fstat { id: u32 },
    Fsetstat { id: u32 },
    Readdir { id: u32 },
}

impl HandleReq {
    fn id(&self) -> u32 {
        match self {
            HandleReq::Read { id, .. }
            | HandleReq::Write { id, .. }
            | HandleReq::Close { id }
            | HandleReq::Fstat { id }
            | HandleReq::Fsetstat { id }
            | HandleReq::Readdir { id } => *id,
        }
    }
}

/// A request's claim on the session's budget: one request slot and its size in KiB.
/// Released when the reply is queued for sending.
struct Slot {
    _request: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// Encoded reply frames (length prefix included) and the in-flight slots they release.
type Out = mpsc::Sender<(Bytes, Option<Slot>)>;

/// Encode a reply; a packet that cannot be encoded becomes a plain failure status.
fn encode(packet: Packet) -> Bytes {
    let id = packet.get_request_id();
    Bytes::try_from(packet)
        .or_else(|_| Bytes::try_from(status(id, StatusCode::Failure, "reply could not be encoded")))
        .unwrap_or_default()
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
type HandleTx = mpsc::Sender<(HandleReq, Slot)>;
type HandleRx = mpsc::Receiver<(HandleReq, Slot)>;

/// Everything a request task needs.
#[derive(Clone)]
struct Ctx {
    transfers: Transfers,
    who: Principal,
    client: ClientInfo,
    out: Out,
}

impl Ctx {
    async fn reply(&self, packet: Packet, permit: Slot) {
        self.reply_frame(encode(packet), permit).await;
    }

    async fn reply_frame(&self, frame: Bytes, permit: Slot) {
        let _ = self.out.send((frame, Some(permit))).await;
    }

    /// Resolve a path, auditing a refusal.
    async fn path(&self, op: &str, raw: &str) -> Result<RelPath, TransferError> {
        match resolve(raw) {
            Ok(p) => Ok(p),
            Err(e) => {
                self.transfers.deny_path(&self.who, &self.client, op, raw, &e).await;
                Err(e.into())
            }
        }
    }
}

/// Serve one SFTP session until the client closes the channel.
pub async fn run(stream: ChannelStream<Msg>, shared: Arc<SftpShared>, who: Principal, client: ClientInfo) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (out_tx, mut out_rx) = mpsc::channel::<(Bytes, Option<Slot>)>(32);
    let writer = tokio::spawn(async move {
        while let Some((bytes, permit)) = out_rx.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
            drop(permit);
        }
        let _ = wr.shutdown().await;
    });
    let ctx = Ctx { transfers: shared.transfers.clone(), who, client, out: out_tx };
    let requests = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let kib = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES / 1024));
    let mut handles: HashMap<String, HandleTx> = HashMap::new();
    let mut next_handle = 0u64;
    let mut tasks = JoinSet::new();
    // The loop ends when the client closes the channel.
    while let Ok(len) = rd.read_u32().await {
        if len == 0 || len > MAX_PACKET + 1024 {
            tracing::warn!(len, "SFTP packet length out of bounds; closing the session");
            break;
        }
        // Read into spare capacity (no zero-filling), exactly `len` bytes.
        let mut body = bytes::BytesMut::with_capacity(len as usize);
        let mut limited = (&mut rd).take(u64::from(len));
        while body.len() < len as usize {
            match limited.read_buf(&mut body).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if body.len() < len as usize {
            break;
        }
        let mut raw = body.freeze();
        let id = raw.get(1..5).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes).unwrap_or(0);
        // Writes, the bulk of an upload, are parsed here without copying their data.
        if let Some((handle, req)) = parse_write(&raw) {
            let Ok(request) = requests.clone().acquire_owned().await else { break };
            let Ok(bytes) = kib.clone().acquire_many_owned(1 + len / 1024).await else { break };
            route(handle, req, Slot { _request: request, _bytes: bytes }, &ctx, &mut handles).await;
            continue;
        }
        let packet = match Packet::try_from(&mut raw) {
            Ok(p) => p,
            Err(_) => {
                let _ =
                    ctx.out.send((encode(status(id, StatusCode::OpUnsupported, "unsupported request")), None)).await;
                continue;
            }
        };
        let Ok(request) = requests.clone().acquire_owned().await else { break };
        let Ok(bytes) = kib.clone().acquire_many_owned(1 + len / 1024).await else { break };
        let permit = Slot { _request: request, _bytes: bytes };
        while tasks.try_join_next().is_some() {}
        dispatch(packet, permit, &ctx, &mut handles, &mut next_handle, &mut tasks).await;
    }
    // Closing the handle queues ends each handle task; unfinished uploads and downloads
    // audit themselves as failed when dropped.
    drop(handles);
    while tasks.join_next().await.is_some() {}
    drop(ctx);
    let _ = writer.await;
}

async fn dispatch(
    packet: Packet,
    permit: Slot,
    ctx: &Ctx,
    handles: &mut HashMap<String, HandleTx>,
    next_handle: &mut u64,
    tasks: &mut JoinSet<()>,
) {
    let to_handle = |handle: &str, req: HandleReq| (handle.to_owned(), req);
    let routed = match packet {
        Packet::Init(init) => {
            let mut v = Version::new();
            v.version = init.version.min(russh_sftp::protocol::VERSION);
            for (name, value) in [("limits@openssh.com", "1"), ("posix-rename@openssh.com", "1")] {
                v.extensions.insert(name.into(), value.into());
            }
            ctx.reply(Packet::Version(v), permit).await;
            return;
        }
        Packet::Read(r) => to_handle(&r.handle, HandleReq::Read { id: r.id, offset: r.offset, len: r.len }),
        Packet::Write(w) => {
            to_handle(&w.handle, HandleReq::Write { id: w.id, offset: w.offset, data: Bytes::from(w.data) })
        }
        Packet::Close(c) => to_handle(&c.handle, HandleReq::Close { id: c.id }),
        Packet::Fstat(f) => to_handle(&f.handle, HandleReq::Fstat { id: f.id }),
        Packet::FSetStat(f) => to_handle(&f.handle, HandleReq::Fsetstat { id: f.id }),
        Packet::ReadDir(r) => to_handle(&r.handle, HandleReq::Readdir { id: r.id }),
        Packet::Open(open) => {
            let reply = open_file(ctx, open, handles, next_handle, tasks).await;
            ctx.reply(reply, permit).await;
            return;
        }
        Packet::OpenDir(od) => {
            let reply = open_dir(ctx, od.id, &od.path, handles, next_handle, tasks).await;
            ctx.reply(reply, permit).await;
            return;
        }
        other => {
            let ctx = ctx.clone();
            tasks.spawn(async move {
                let reply = path_request(&ctx, other).await;
                ctx.reply(reply, permit).await;
            });
            return;
        }
    };
    let (handle, req) = routed;
    route(handle, req, permit, ctx, handles).await;
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
        let v = b.get(..4)?.try_into().ok().map(u32::from_be_bytes)?;
        bytes::Buf::advance(b, 4);
        Some(v)
    };
    bytes::Buf::advance(&mut b, 1);
    let id = take_u32(&mut b)?;
    let handle_len = take_u32(&mut b)? as usize;
    let handle = std::str::from_utf8(b.get(..handle_len)?).ok()?.to_owned();
    bytes::Buf::advance(&mut b, handle_len);
    let offset = b.get(..8)?.try_into().ok().map(u64::from_be_bytes)?;
    bytes::Buf::advance(&mut b, 8);
    let data_len = take_u32(&mut b)? as usize;
    if b.len() != data_len {
        return None;
    }
    Some((handle, HandleReq::Write { id, offset, data: b }))
}

/// Queue a request on its handle's task (in arrival order), or answer for a bad handle.
async fn route(handle: String, req: HandleReq, permit: Slot, ctx: &Ctx, handles: &mut HashMap<String, HandleTx>) {
    let is_close = matches!(req, HandleReq::Close { .. });
    let tx = if is_close { handles.remove(&handle) } else { handles.get(&handle).cloned() };
    match tx {
        Some(tx) => {
            let id = req.id();
            if let Err(mpsc::error::SendError((_, permit))) = tx.send((req, permit)).await {
                ctx.reply(status(id, StatusCode::Failure, "handle is no longer usable"), permit).await;
            }
        }
        None => ctx.reply(status(req.id(), StatusCode::Failure, "invalid handle"), permit).await,
    }
}

fn new_handle(
    handles: &mut HashMap<String, HandleTx>,
    next_handle: &mut u64,
) -> Result<(String, HandleRx), &'static str> {
    if handles.len() >= MAX_HANDLES {
        return Err("too many open handles");
    }
    *next_handle += 1;
    let name = format!("h{}", *next_handle);
    let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
    handles.insert(name.clone(), tx);
    Ok((name, rx))
}

async fn open_file(
    ctx: &Ctx,
    open: russh_sftp::protocol::Open,
    handles: &mut HashMap<String, HandleTx>,
    next_handle: &mut u64,
    tasks: &mut JoinSet<()>,
) -> Packet {
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
        let upload = match ctx.transfers.begin_upload(&ctx.who, &ctx.client, &rel).await {
            Ok(u) => u,
            Err(e) => return error_status(id, &e),
        };
        let (name, rx) = match new_handle(handles, next_handle) {
            Ok(x) => x,
            Err(m) => return status(id, StatusCode::Failure, m),
        };
        tasks.spawn(upload_task(rx, upload, ctx.clone()));
        return Packet::Handle(Handle { id, handle: name });
    }
    let reader = match ctx.transfers.open_read(&ctx.who, &ctx.client, &rel).await {
        Ok(r) => r,
        Err(e) => return error_status(id, &e),
    };
    let (name, rx) = match new_handle(handles, next_handle) {
        Ok(x) => x,
        Err(m) => return status(id, StatusCode::Failure, m),
    };
    tasks.spawn(read_task(rx, reader, ctx.clone()));
    Packet::Handle(Handle { id, handle: name })
}

async fn open_dir(
    ctx: &Ctx,
    id: u32,
    raw: &str,
    handles: &mut HashMap<String, HandleTx>,
    next_handle: &mut u64,
    tasks: &mut JoinSet<()>,
) -> Packet {
    let rel = match ctx.path("list", raw).await {
        Ok(p) => p,
        Err(e) => return error_status(id, &e),
    };
    // The first page is fetched (and audited) now, so a missing directory fails here.
    let first = match ctx.transfers.list(&ctx.who, &ctx.client, &rel, None, READDIR_BATCH).await {
        Ok(p) => p,
        Err(e) => return error_status(id, &e),
    };
    let (name, rx) = match new_handle(handles, next_handle) {
        Ok(x) => x,
        Err(m) => return status(id, StatusCode::Failure, m),
    };
    tasks.spawn(dir_task(rx, rel, first, ctx.clone()));
    Packet::Handle(Handle { id, handle: name })
}

async fn upload_task(mut rx: HandleRx, mut upload: Upload, ctx: Ctx) {
    let mut next = 0u64;
    let mut pending: BTreeMap<u64, Bytes> = BTreeMap::new();
    let mut pending_bytes = 0usize;
    let mut failure: Option<String> = None;
    while let Some((req, permit)) = rx.recv().await {
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
                        let Some(chunk) = pending.remove(&next) else { break };
                        pending_bytes -= chunk.len();
                        result = write_at(&mut upload, &mut next, chunk).await;
                    }
                    match result {
                        Ok(()) => ok(id),
                        Err(e) => {
                            failure = Some(e.to_string());
                            error_status(id, &e)
                        }
                    }
                } else if offset > next
                    && offset - next <= REORDER_WINDOW as u64
                    && pending_bytes + data.len() <= REORDER_WINDOW
                    && !pending.contains_key(&offset)
                {
                    pending_bytes += data.len();
                    pending.insert(offset, data);
                    ok(id)
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
                let reply = if let Some(f) = failure.take() {
                    let e = upload.fail(TransferError::Client(f)).await;
                    error_status(id, &e)
                } else if !pending.is_empty() {
                    let e =
                        upload.fail(TransferError::Client("file has a gap: some writes never arrived".into())).await;
                    error_status(id, &e)
                } else {
                    match upload.finish(None).await {
                        Ok(_) => ok(id),
                        Err(e) => error_status(id, &e),
                    }
                };
                ctx.reply(reply, permit).await;
                return;
            }
            HandleReq::Fstat { id } => {
                let mut a = FileAttributes::empty();
                a.size = Some(next);
                a.permissions = Some(0o100_644);
                Packet::Attrs(Attrs { id, attrs: a })
            }
            HandleReq::Fsetstat { id } => ok(id),
            HandleReq::Read { id, .. } | HandleReq::Readdir { id } => {
                status(id, StatusCode::Failure, "handle is open for writing")
            }
        };
        ctx.reply(reply, permit).await;
    }
    // Session ended without close: `upload` drops here and audits itself as failed.
}

async fn write_at(upload: &mut Upload, next: &mut u64, data: Bytes) -> Result<(), TransferError> {
    let len = data.len() as u64;
    upload.write(data).await?;
    *next += len;
    Ok(())
}

async fn read_task(mut rx: HandleRx, mut reader: ReadSession, ctx: Ctx) {
    while let Some((req, permit)) = rx.recv().await {
        let reply = match req {
            HandleReq::Read { id, offset, len } => match reader.read_at(offset, len.min(MAX_IO) as usize).await {
                Ok(Some(data)) => {
                    ctx.reply_frame(data_frame(id, &data), permit).await;
                    continue;
                }
                Ok(None) => status(id, StatusCode::Eof, "end of file"),
                Err(e) => error_status(id, &e),
            },
            HandleReq::Close { id } => {
                let reply = match reader.close().await {
                    Ok(()) => ok(id),
                    Err(e) => error_status(id, &e),
                };
                ctx.reply(reply, permit).await;
                return;
            }
            HandleReq::Fstat { id } => {
                let m = reader.meta();
                Packet::Attrs(Attrs { id, attrs: attrs_of(EntryKind::File, m.size, m.modified) })
            }
            HandleReq::Fsetstat { id } => ok(id),
            HandleReq::Write { id, .. } | HandleReq::Readdir { id } => {
                status(id, StatusCode::Failure, "handle is open for reading")
            }
        };
        ctx.reply(reply, permit).await;
    }
}

async fn dir_task(mut rx: HandleRx, rel: RelPath, first: crate::storage::ListPage, ctx: Ctx) {
    let mut page = Some(first);
    let mut after: Option<String> = None;
    let mut done = false;
    while let Some((req, permit)) = rx.recv().await {
        let reply = match req {
            HandleReq::Readdir { id } => {
                let current = match page.take() {
                    Some(p) => Ok(p),
                    None if done => Ok(Default::default()),
                    None => ctx.transfers.list_continue(&ctx.who, &rel, after.as_deref(), READDIR_BATCH).await,
                };
                match current {
                    Ok(p) if p.entries.is_empty() => {
                        done = true;
                        status(id, StatusCode::Eof, "end of directory")
                    }
                    Ok(p) => {
                        after = p.entries.last().map(|e| e.name.clone());
                        done = p.next.is_none();
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
                ctx.reply(ok(id), permit).await;
                return;
            }
            HandleReq::Fstat { id } => {
                Packet::Attrs(Attrs { id, attrs: attrs_of(EntryKind::Dir, 0, SystemTime::UNIX_EPOCH) })
            }
            HandleReq::Fsetstat { id } => ok(id),
            HandleReq::Read { id, .. } | HandleReq::Write { id, .. } => {
                status(id, StatusCode::Failure, "handle is a directory")
            }
        };
        ctx.reply(reply, permit).await;
    }
}

/// Requests that name paths rather than handles.
async fn path_request(ctx: &Ctx, packet: Packet) -> Packet {
    let (t, who, client) = (&ctx.transfers, &ctx.who, &ctx.client);
    match packet {
        Packet::RealPath(r) => {
            let path = canonical(&r.path);
            Packet::Name(Name { id: r.id, files: vec![File::dummy(path)] })
        }
        Packet::Stat(russh_sftp::protocol::Stat { id, path })
        | Packet::Lstat(russh_sftp::protocol::Lstat { id, path }) => {
            let result = match ctx.path("stat", &path).await {
                Ok(rel) => t.head(who, &rel).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(e) => Packet::Attrs(Attrs { id, attrs: attrs_of(e.kind, e.size, e.modified) }),
                Err(e) => error_status(id, &e),
            }
        }
        Packet::SetStat(s) => match ctx.path("setstat", &s.path).await {
            // Attributes (mode, owner, times) are accepted and ignored: storage keeps none.
            Ok(rel) => match t.head(who, &rel).await {
                Ok(_) => ok(s.id),
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
        assert_eq!(resolve("/a/./b//c").unwrap().display(), "a/b/c");
        assert!(resolve("/").unwrap().is_root());
        assert!(resolve(".").unwrap().is_root());
        assert_eq!(resolve("/a/../b"), Err(PathError::DotSegment));
        assert_eq!(resolve("a\\b"), Err(PathError::Backslash));
        assert_eq!(resolve("bad\u{FFFD}name"), Err(PathError::InvalidEncoding));
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
