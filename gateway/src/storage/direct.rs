//! Writing a large upload's staging file around the page cache (`O_DIRECT`).
//!
//! On the machines we measure, handing out page-cache pages for a `write(2)` costs about ten
//! times the copy itself: about half of the gateway's CPU for a large upload (see
//! docs/benchmarks.md). The pages buy nothing here: the upload is fsynced at commit and is not
//! read back soon. So once an upload is larger than one batch, its sealed bytes go to the disk
//! directly, in whole aligned blocks, from buffers aligned in memory, while the next batch is
//! sealed. What does not fill a block waits for the next batch; the last partial block, the
//! metadata block and the final `fdatasync` go through the ordinary descriptor at the end.
//!
//! Everything falls back to the page cache: a file system that refuses `O_DIRECT` at open
//! (tmpfs) or at the first write (`EINVAL`: another alignment), or a buffer that could not be
//! aligned. Alignment comes from `align_offset` inside an over-allocated `Vec` (the crate
//! forbids `unsafe`).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// Alignment of file offsets, lengths and buffer addresses of direct writes (covers devices
/// with 512-byte and 4 KiB logical blocks).
pub const ALIGN: usize = 4096;

/// Direct writes of one upload outstanding at once (each one batch): the disk works on one
/// while the next is sealed.
const IN_FLIGHT: usize = 2;

/// A finished write: its buffer back for reuse, and where it went.
struct Done {
    buf: Vec<u8>,
    pad: usize,
    pos: u64,
    result: io::Result<()>,
}

/// The direct-write side of one staging file.
pub struct DirectWrites {
    direct: Arc<File>,
    /// File offset of the first byte not yet handed to a write (a multiple of [`ALIGN`]).
    pos: u64,
    /// Sealed bytes after `pos` that do not fill a block yet.
    carry: Vec<u8>,
    spare: Vec<Vec<u8>>,
    pending: VecDeque<tokio::sync::oneshot::Receiver<Done>>,
    runtime: tokio::runtime::Handle,
    /// False once the file system refused a direct write: the rest goes through the page cache.
    active: bool,
}

impl DirectWrites {
    /// Open the (just created, empty) staging file at `path` for direct writes, the file
    /// starting with `head`. `None` where that is not possible: the caller writes through the
    /// page cache as before.
    pub fn open(path: &Path, head: &[u8]) -> Option<DirectWrites> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let direct = open_direct(path)?;
        Some(DirectWrites {
            direct: Arc::new(direct),
            pos: 0,
            carry: head.to_vec(),
            spare: Vec::new(),
            pending: VecDeque::new(),
            runtime,
            active: true,
        })
    }

    /// Whether writes still bypass the page cache.
    pub fn active(&self) -> bool {
        self.active
    }

    /// A buffer to seal up to `sealed_len` more bytes into, and the offset `pad` in it where
    /// the file's bytes start (an aligned address): the carried-over bytes are already there.
    pub fn buffer(&mut self, sealed_len: usize) -> (Vec<u8>, usize) {
        let mut out = self.spare.pop().unwrap_or_default();
        out.clear();
        // Room for the alignment padding, the carry and the batch: no reallocation (which
        // would move the buffer) while the batch is sealed.
        out.reserve(ALIGN + self.carry.len() + sealed_len);
        let pad = out.as_ptr().align_offset(ALIGN).min(ALIGN);
        out.resize(pad, 0);
        out.extend_from_slice(&self.carry);
        self.carry.clear();
        (out, pad)
    }

    /// Write the whole blocks of `out[pad..]` (in the background while they fit in
    /// [`IN_FLIGHT`]) and keep the rest for the next batch. `plain` is the ordinary
    /// descriptor of the same file, for the fallbacks.
    pub fn submit(&mut self, mut out: Vec<u8>, pad: usize, plain: &File) -> io::Result<()> {
        let whole = (out.len() - pad) / ALIGN * ALIGN;
        self.carry.extend_from_slice(after(&out, pad + whole));
        out.truncate(pad + whole);
        let pos = self.pos;
        self.pos += whole as u64;
        let aligned = out.as_ptr().wrapping_add(pad).align_offset(ALIGN) == 0;
        if !self.active || !aligned || whole == 0 {
            plain.write_all_at(after(&out, pad), pos)?;
            self.keep(out);
            return Ok(());
        }
        while self.pending.len() >= IN_FLIGHT {
            self.reap(plain)?;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let file = self.direct.clone();
        self.runtime.spawn_blocking(move || {
            let result = file.write_all_at(after(&out, pad), pos);
            let _ = tx.send(Done { buf: out, pad, pos, result });
        });
        self.pending.push_back(rx);
        Ok(())
    }

    /// Wait for every write; the offset and bytes of the unwritten tail, for the caller to
    /// finish through the ordinary descriptor.
    pub fn finish(&mut self, plain: &File) -> io::Result<(u64, Vec<u8>)> {
        while !self.pending.is_empty() {
            self.reap(plain)?;
        }
        Ok((self.pos, std::mem::take(&mut self.carry)))
    }

    /// Wait for the oldest write. A file system that refuses a direct write (`EINVAL`) gets
    /// the same bytes through the page cache, and every later write too.
    fn reap(&mut self, plain: &File) -> io::Result<()> {
        let Some(rx) = self.pending.pop_front() else { return Ok(()) };
        // Called on the blocking pool (sealing and finishing run there), never on the runtime.
        let done = rx.blocking_recv().map_err(|_| io::Error::other("storage write task failed"))?;
        match done.result {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                self.active = false;
                plain.write_all_at(after(&done.buf, done.pad), done.pos)?;
            }
            Err(e) => return Err(e),
        }
        self.keep(done.buf);
        Ok(())
    }

    fn keep(&mut self, buf: Vec<u8>) {
        if self.spare.len() < IN_FLIGHT {
            self.spare.push(buf);
        }
    }
}

/// `buf[from..]`, empty past the end (`from` is always within the buffer here).
fn after(buf: &[u8], from: usize) -> &[u8] {
    buf.get(from..).unwrap_or_default()
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path).ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> Option<File> {
    None
}
