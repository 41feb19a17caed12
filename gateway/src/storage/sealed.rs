//! The sealed object format of the local store: AES-256-GCM in a STREAM construction.
//!
//! ```text
//! offset 0    magic "GWSEAL01"                      8 bytes
//!        8    chunk size (u32 BE, 65536)             4 bytes
//!        12   salt (random per object)              32 bytes
//!        44   sealed metadata: size u64 | sha256 | modified u64, + tag   64 bytes
//!        108  chunks: ciphertext of CHUNK plaintext bytes + 16-byte tag, the last one shorter
//! ```
//!
//! The per-object key is HKDF-SHA256(tenant key, salt), so nonces never repeat across objects.
//! Chunk `i` uses the nonce `00 00 00 | i (u64 BE) | last-flag`; the metadata block uses a nonce
//! whose first byte is 1. Every block is authenticated with the 44 header bytes as AAD, so a
//! changed header, a reordered, dropped or appended chunk, or a truncated tail fails to open.
//! An empty object still has one (empty, final) chunk.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};

use crate::secrets::{random_bytes, TenantKey};

/// File magic and format version: metadata block after the header (local store).
pub const MAGIC: &[u8; 8] = b"GWSEAL01";
/// Streaming variant: the same chunks, the metadata block last (a trailer), so an object can
/// be written front to back in one pass (S3 multipart parts cannot be rewritten). Same length
/// for the same plaintext; the magic is part of the AAD, so one layout never opens as the other.
pub const MAGIC_TRAILER: &[u8; 8] = b"GWSEAL02";
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
/// AES-GCM tag length.
pub const TAG: usize = 16;
/// Header bytes covered as AAD by every block.
pub const HEADER_LEN: usize = 8 + 4 + 32;
const META_PLAIN: usize = 8 + 32 + 8;
/// Length of the sealed metadata block.
pub const META_LEN: usize = META_PLAIN + TAG;
/// Where chunk 0 starts.
pub const DATA_OFFSET: u64 = (HEADER_LEN + META_LEN) as u64;
const HKDF_INFO: &[u8] = b"gateway sealed object v1";

/// Authentication failed, or the bytes are not a sealed object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SealError(pub &'static str);

/// Metadata stored sealed inside the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedMeta {
    /// Plaintext size.
    pub size: u64,
    /// Plaintext SHA-256.
    pub sha256: [u8; 32],
    /// Commit time, seconds since the Unix epoch.
    pub modified: u64,
}

/// Number of chunks of an object of `size` plaintext bytes.
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK as u64).max(1)
}

/// Length on disk of an object of `size` plaintext bytes.
pub fn sealed_len(size: u64) -> u64 {
    DATA_OFFSET + size + TAG as u64 * chunk_count(size)
}

/// Plaintext size implied by a sealed file's length, if the length is possible at all.
pub fn plaintext_len(file_len: u64) -> Option<u64> {
    let body = file_len.checked_sub(DATA_OFFSET)?;
    let chunks = body.div_ceil((CHUNK + TAG) as u64).max(1);
    let size = body.checked_sub(chunks * TAG as u64)?;
    (sealed_len(size) == file_len).then_some(size)
}

fn chunk_nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[3..11].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

fn meta_nonce() -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[0] = 1;
    Nonce::assume_unique_for_key(n)
}

fn object_key(tenant: &TenantKey, salt: &[u8]) -> Result<LessSafeKey, SealError> {
    let prk = Salt::new(HKDF_SHA256, salt).extract(tenant.expose());
    let okm = prk.expand(&[HKDF_INFO], &AES_256_GCM).map_err(|_| SealError("key derivation failed"))?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// Seals one new object.
pub struct Sealer {
    key: LessSafeKey,
    header: [u8; HEADER_LEN],
    next: u64,
}

impl Sealer {
    /// A sealer with a fresh random salt.
    pub fn new(tenant: &TenantKey) -> Result<Sealer, SealError> {
        Sealer::with_magic(tenant, MAGIC)
    }

    /// A sealer for the streaming layout ([`MAGIC_TRAILER`]): header, chunks, metadata.
    pub fn streaming(tenant: &TenantKey) -> Result<Sealer, SealError> {
        Sealer::with_magic(tenant, MAGIC_TRAILER)
    }

    fn with_magic(tenant: &TenantKey, magic: &[u8; 8]) -> Result<Sealer, SealError> {
        let salt = random_bytes::<32>().map_err(|_| SealError("random generator failed"))?;
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(magic);
        header[8..12].copy_from_slice(&(CHUNK as u32).to_be_bytes());
        header[12..].copy_from_slice(&salt);
        Ok(Sealer { key: object_key(tenant, &salt)?, header, next: 0 })
    }

    /// The header to write at offset 0.
    pub fn header(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }

    /// Seal the next chunk (at most [`CHUNK`] bytes; only the last may be shorter) and append
    /// ciphertext and tag to `out`.
    pub fn seal_chunk(&mut self, plaintext: &[u8], last: bool, out: &mut Vec<u8>) -> Result<(), SealError> {
        let start = out.len();
        out.extend_from_slice(plaintext);
        self.seal_tail(out, start, last)
    }

    /// Seal, in place, the plaintext chunk that occupies `out[start..]`, and append its tag.
    /// Lets callers assemble a chunk from several buffers without an extra copy.
    pub fn seal_tail(&mut self, out: &mut Vec<u8>, start: usize, last: bool) -> Result<(), SealError> {
        let len = out.len().saturating_sub(start);
        if len > CHUNK || (!last && len != CHUNK) {
            return Err(SealError("chunk of wrong size"));
        }
        let in_out = out.get_mut(start..).ok_or(SealError("buffer"))?;
        let tag = self
            .key
            .seal_in_place_separate_tag(chunk_nonce(self.next, last), Aad::from(&self.header), in_out)
            .map_err(|_| SealError("encryption failed"))?;
        out.extend_from_slice(tag.as_ref());
        self.next += 1;
        Ok(())
    }

    /// Seal the metadata block written at offset [`HEADER_LEN`] once the object is complete.
    pub fn seal_meta(&self, meta: &SealedMeta) -> Result<[u8; META_LEN], SealError> {
        let mut block = [0u8; META_LEN];
        block[..8].copy_from_slice(&meta.size.to_be_bytes());
        block[8..40].copy_from_slice(&meta.sha256);
        block[40..48].copy_from_slice(&meta.modified.to_be_bytes());
        let tag = self
            .key
            .seal_in_place_separate_tag(meta_nonce(), Aad::from(&self.header), &mut block[..META_PLAIN])
            .map_err(|_| SealError("encryption failed"))?;
        block[META_PLAIN..].copy_from_slice(tag.as_ref());
        Ok(block)
    }
}

/// Opens an existing object.
pub struct Opener {
    key: LessSafeKey,
    header: [u8; HEADER_LEN],
}

impl Opener {
    /// Check the header and derive the object key.
    pub fn new(tenant: &TenantKey, header: &[u8; HEADER_LEN]) -> Result<Opener, SealError> {
        Opener::with_magic(tenant, header, MAGIC)
    }

    /// Check the header of a streaming-layout object ([`MAGIC_TRAILER`]).
    pub fn streaming(tenant: &TenantKey, header: &[u8; HEADER_LEN]) -> Result<Opener, SealError> {
        Opener::with_magic(tenant, header, MAGIC_TRAILER)
    }

    fn with_magic(tenant: &TenantKey, header: &[u8; HEADER_LEN], magic: &[u8; 8]) -> Result<Opener, SealError> {
        if &header[..8] != magic {
            return Err(SealError("not a sealed object (bad magic)"));
        }
        if header[8..12] != (CHUNK as u32).to_be_bytes() {
            return Err(SealError("unsupported chunk size"));
        }
        Ok(Opener { key: object_key(tenant, &header[12..])?, header: *header })
    }

    /// Authenticate and decode the metadata block.
    pub fn open_meta(&self, block: &[u8; META_LEN]) -> Result<SealedMeta, SealError> {
        let mut buf = *block;
        let plain = self
            .key
            .open_in_place(meta_nonce(), Aad::from(&self.header), &mut buf)
            .map_err(|_| SealError("metadata block failed authentication"))?;
        let mut size = [0u8; 8];
        let mut sha256 = [0u8; 32];
        let mut modified = [0u8; 8];
        size.copy_from_slice(plain.get(..8).ok_or(SealError("short metadata"))?);
        sha256.copy_from_slice(plain.get(8..40).ok_or(SealError("short metadata"))?);
        modified.copy_from_slice(plain.get(40..48).ok_or(SealError("short metadata"))?);
        Ok(SealedMeta { size: u64::from_be_bytes(size), sha256, modified: u64::from_be_bytes(modified) })
    }

    /// Authenticate chunk `index` in place (`data` is ciphertext + tag); returns the plaintext.
    pub fn open_chunk<'a>(&self, index: u64, last: bool, data: &'a mut [u8]) -> Result<&'a mut [u8], SealError> {
        self.key
            .open_in_place(chunk_nonce(index, last), Aad::from(&self.header), data)
            .map_err(|_| SealError("chunk failed authentication"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal_all(key: &TenantKey, data: &[u8]) -> (Vec<u8>, Vec<usize>) {
        let mut s = Sealer::new(key).unwrap();
        let mut out = s.header().to_vec();
        out.extend_from_slice(&[0u8; META_LEN]);
        let chunks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(CHUNK).collect() };
        let mut lens = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            s.seal_chunk(c, i + 1 == chunks.len(), &mut out).unwrap();
            lens.push(c.len());
        }
        let meta = s
            .seal_meta(&SealedMeta { size: data.len() as u64, sha256: crate::digest::sha256(data), modified: 7 })
            .unwrap();
        out[HEADER_LEN..HEADER_LEN + META_LEN].copy_from_slice(&meta);
        (out, lens)
    }

    fn open_all(key: &TenantKey, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let header: [u8; HEADER_LEN] = sealed[..HEADER_LEN].try_into().unwrap();
        let o = Opener::new(key, &header)?;
        let meta = o.open_meta(sealed[HEADER_LEN..DATA_OFFSET as usize].try_into().unwrap())?;
        if sealed_len(meta.size) != sealed.len() as u64 {
            return Err(SealError("length"));
        }
        let n = chunk_count(meta.size);
        let mut out = Vec::new();
        let mut rest = sealed[DATA_OFFSET as usize..].to_vec();
        for i in 0..n {
            let take = rest.len().min(CHUNK + TAG);
            let mut c: Vec<u8> = rest.drain(..take).collect();
            out.extend_from_slice(o.open_chunk(i, i + 1 == n, &mut c)?);
        }
        Ok(out)
    }

    #[test]
    fn round_trip_sizes() {
        let key = TenantKey::generate().unwrap();
        for size in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let (sealed, _) = seal_all(&key, &data);
            assert_eq!(sealed.len() as u64, sealed_len(size as u64));
            assert_eq!(plaintext_len(sealed.len() as u64), Some(size as u64));
            assert_eq!(open_all(&key, &sealed).unwrap(), data, "size {size}");
        }
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let key = TenantKey::generate().unwrap();
        let data = vec![42u8; 2 * CHUNK + 5];
        let (sealed, _) = seal_all(&key, &data);
        for pos in [0, 9, 20, HEADER_LEN + 3, DATA_OFFSET as usize + 1, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[pos] ^= 0x01;
            assert!(open_all(&key, &bad).is_err(), "flip at {pos} not detected");
        }
    }

    #[test]
    fn wrong_key_and_truncation_are_detected() {
        let key = TenantKey::generate().unwrap();
        let (sealed, _) = seal_all(&key, &vec![1u8; 2 * CHUNK]);
        assert!(open_all(&TenantKey::generate().unwrap(), &sealed).is_err());
        // Drop the final chunk and its tag: the (now) last chunk was not sealed as last.
        let mut cut = sealed.clone();
        cut.truncate(sealed.len() - (CHUNK + TAG));
        assert!(open_all(&key, &cut).is_err());
    }
}
