//! The sealed object format of the local store: AES-256-GCM in a STREAM construction.
//!
//! ```text
//! offset 0    magic "GWSEAL03"                      8 bytes
//!        8    chunk size (u32 BE, 65536)             4 bytes
//!        12   key id (which tenant key sealed it)    8 bytes
//!        20   salt (random per object)              24 bytes
//!        44   sealed metadata: size u64 | sha256 | modified u64, + tag   64 bytes
//!        108  chunks: ciphertext of CHUNK plaintext bytes + 16-byte tag, the last one shorter
//! ```
//!
//! The per-object key is HKDF-SHA256(tenant key, salt), so nonces never repeat across objects.
//! Chunk `i` uses the nonce `00 00 00 | i (u64 BE) | last-flag`; the metadata block uses a nonce
//! whose first byte is 1. Every block is authenticated with the 44 header bytes as AAD, so a
//! changed header (the key id included), a reordered, dropped or appended chunk, or a truncated
//! tail fails to open. An empty object still has one (empty, final) chunk.
//!
//! Versions: `GWSEAL01` (metadata first) and `GWSEAL02` (metadata last, see [`MAGIC_TRAILER`])
//! were written before keys could rotate: no key id, a 32-byte salt in its place, and always
//! the tenant's base key (its key file, generation 0). They stay readable; new objects are
//! `GWSEAL03` / `GWSEAL04`, the same layouts with the key id. The header length is the same in
//! every version, so sizes follow from file lengths alike. An id not in the tenant's keyring
//! is an error that names the id, never data.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};

use crate::keyring::{KeyId, TenantKeyring};
use crate::secrets::{random_bytes, TenantKey};

/// File magic and format version: metadata block after the header (local store), no key id.
pub const MAGIC: &[u8; 8] = b"GWSEAL01";
/// Streaming variant: the same chunks, the metadata block last (a trailer), so an object can
/// be written front to back in one pass (S3 multipart parts cannot be rewritten). Same length
/// for the same plaintext; the magic is part of the AAD, so one layout never opens as the other.
pub const MAGIC_TRAILER: &[u8; 8] = b"GWSEAL02";
/// [`MAGIC`] with a key id: what the local store writes.
pub const MAGIC_KEYED: &[u8; 8] = b"GWSEAL03";
/// [`MAGIC_TRAILER`] with a key id: what gateway-side sealing on S3 writes.
pub const MAGIC_TRAILER_KEYED: &[u8; 8] = b"GWSEAL04";
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
const HKDF_INFO_KEYED: &[u8] = b"gateway sealed object v3";

/// Authentication failed, or the bytes are not a sealed object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SealError(pub String);

impl SealError {
    fn new(what: &str) -> SealError {
        SealError(what.to_owned())
    }
}

/// Which layout an object has: the metadata block after the header, or last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Metadata after the header (the local store; `GWSEAL01`/`03`).
    MetaFirst,
    /// Metadata last (streaming, gateway-side sealing on S3; `GWSEAL02`/`04`).
    Trailer,
}

impl Layout {
    fn magics(self) -> (&'static [u8; 8], &'static [u8; 8]) {
        match self {
            Layout::MetaFirst => (MAGIC, MAGIC_KEYED),
            Layout::Trailer => (MAGIC_TRAILER, MAGIC_TRAILER_KEYED),
        }
    }
}

/// The key id a header names: `Ok(None)` for a header from before key ids (sealed with the
/// tenant's base key), an error if it is no sealed header of `layout` at all.
pub fn header_key_id(header: &[u8; HEADER_LEN], layout: Layout) -> Result<Option<KeyId>, SealError> {
    let (legacy, keyed) = layout.magics();
    let magic = header.get(..8).ok_or_else(|| SealError::new("short header"))?;
    if magic == keyed {
        let mut id = [0u8; 8];
        id.copy_from_slice(header.get(12..20).ok_or_else(|| SealError::new("short header"))?);
        Ok(Some(KeyId(id)))
    } else if magic == legacy {
        Ok(None)
    } else {
        Err(SealError::new("not a sealed object (bad magic)"))
    }
}

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

fn object_key(tenant: &TenantKey, salt: &[u8], info: &[u8]) -> Result<LessSafeKey, SealError> {
    let prk = Salt::new(HKDF_SHA256, salt).extract(tenant.expose());
    let infos = [info];
    let okm = prk.expand(&infos, &AES_256_GCM).map_err(|_| SealError::new("key derivation failed"))?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// Seals one new object.
pub struct Sealer {
    key: LessSafeKey,
    header: [u8; HEADER_LEN],
    next: u64,
}

impl Sealer {
    /// A sealer with a fresh random salt, under the ring's newest key ([`MAGIC_KEYED`]).
    pub fn new(ring: &TenantKeyring) -> Result<Sealer, SealError> {
        Sealer::keyed(ring, Layout::MetaFirst)
    }

    /// A sealer for the streaming layout ([`MAGIC_TRAILER_KEYED`]): header, chunks, metadata.
    pub fn streaming(ring: &TenantKeyring) -> Result<Sealer, SealError> {
        Sealer::keyed(ring, Layout::Trailer)
    }

    fn keyed(ring: &TenantKeyring, layout: Layout) -> Result<Sealer, SealError> {
        let newest = ring.newest();
        let salt = random_bytes::<24>().map_err(|_| SealError::new("random generator failed"))?;
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(layout.magics().1);
        header[8..12].copy_from_slice(&(CHUNK as u32).to_be_bytes());
        header[12..20].copy_from_slice(&newest.id.0);
        header[20..].copy_from_slice(&salt);
        Ok(Sealer { key: object_key(newest.key(), &salt, HKDF_INFO_KEYED)?, header, next: 0 })
    }

    /// A sealer of the format before key ids ([`MAGIC`] / [`MAGIC_TRAILER`]), to make the
    /// objects older gateways wrote.
    #[cfg(test)]
    pub fn legacy(tenant: &TenantKey, layout: Layout) -> Result<Sealer, SealError> {
        let salt = random_bytes::<32>().map_err(|_| SealError::new("random generator failed"))?;
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(layout.magics().0);
        header[8..12].copy_from_slice(&(CHUNK as u32).to_be_bytes());
        header[12..].copy_from_slice(&salt);
        Ok(Sealer { key: object_key(tenant, &salt, HKDF_INFO)?, header, next: 0 })
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
            return Err(SealError::new("chunk of wrong size"));
        }
        let in_out = out.get_mut(start..).ok_or(SealError::new("buffer"))?;
        let tag = self
            .key
            .seal_in_place_separate_tag(chunk_nonce(self.next, last), Aad::from(&self.header), in_out)
            .map_err(|_| SealError::new("encryption failed"))?;
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
            .map_err(|_| SealError::new("encryption failed"))?;
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
    /// Check the header and derive the object key, with the ring's key the header names.
    pub fn new(ring: &TenantKeyring, header: &[u8; HEADER_LEN]) -> Result<Opener, SealError> {
        Opener::with_layout(ring, header, Layout::MetaFirst)
    }

    /// Check the header of a streaming-layout object ([`MAGIC_TRAILER`], [`MAGIC_TRAILER_KEYED`]).
    pub fn streaming(ring: &TenantKeyring, header: &[u8; HEADER_LEN]) -> Result<Opener, SealError> {
        Opener::with_layout(ring, header, Layout::Trailer)
    }

    fn with_layout(ring: &TenantKeyring, header: &[u8; HEADER_LEN], layout: Layout) -> Result<Opener, SealError> {
        let id = header_key_id(header, layout)?;
        if header[8..12] != (CHUNK as u32).to_be_bytes() {
            return Err(SealError::new("unsupported chunk size"));
        }
        let key = match id {
            None => object_key(ring.base(), &header[12..], HKDF_INFO)?,
            Some(id) => {
                let tenant = ring.get(&id).ok_or_else(|| {
                    SealError(format!(
                        "sealed with key id {id}, which is not in the tenant's keyring (in force: {}); \
                         was a rotated key file removed?",
                        ring.ids().iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    ))
                })?;
                object_key(tenant, &header[20..], HKDF_INFO_KEYED)?
            }
        };
        Ok(Opener { key, header: *header })
    }

    /// Authenticate and decode the metadata block.
    pub fn open_meta(&self, block: &[u8; META_LEN]) -> Result<SealedMeta, SealError> {
        let mut buf = *block;
        let plain = self
            .key
            .open_in_place(meta_nonce(), Aad::from(&self.header), &mut buf)
            .map_err(|_| SealError::new("metadata block failed authentication"))?;
        let mut size = [0u8; 8];
        let mut sha256 = [0u8; 32];
        let mut modified = [0u8; 8];
        size.copy_from_slice(plain.get(..8).ok_or(SealError::new("short metadata"))?);
        sha256.copy_from_slice(plain.get(8..40).ok_or(SealError::new("short metadata"))?);
        modified.copy_from_slice(plain.get(40..48).ok_or(SealError::new("short metadata"))?);
        Ok(SealedMeta { size: u64::from_be_bytes(size), sha256, modified: u64::from_be_bytes(modified) })
    }

    /// Authenticate chunk `index` in place (`data` is ciphertext + tag); returns the plaintext.
    pub fn open_chunk<'a>(&self, index: u64, last: bool, data: &'a mut [u8]) -> Result<&'a mut [u8], SealError> {
        self.key
            .open_in_place(chunk_nonce(index, last), Aad::from(&self.header), data)
            .map_err(|_| SealError::new("chunk failed authentication"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal_all(ring: &TenantKeyring, data: &[u8]) -> (Vec<u8>, Vec<usize>) {
        seal_with(Sealer::new(ring).unwrap(), data)
    }

    fn seal_with(mut s: Sealer, data: &[u8]) -> (Vec<u8>, Vec<usize>) {
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

    fn open_all(ring: &TenantKeyring, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let header: [u8; HEADER_LEN] = sealed[..HEADER_LEN].try_into().unwrap();
        let o = Opener::new(ring, &header)?;
        let meta = o.open_meta(sealed[HEADER_LEN..DATA_OFFSET as usize].try_into().unwrap())?;
        if sealed_len(meta.size) != sealed.len() as u64 {
            return Err(SealError::new("length"));
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
        let key = TenantKeyring::single(TenantKey::generate().unwrap());
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
        let key = TenantKeyring::single(TenantKey::generate().unwrap());
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
        let key = TenantKeyring::single(TenantKey::generate().unwrap());
        let (sealed, _) = seal_all(&key, &vec![1u8; 2 * CHUNK]);
        assert!(open_all(&TenantKeyring::single(TenantKey::generate().unwrap()), &sealed).is_err());
        // Drop the final chunk and its tag: the (now) last chunk was not sealed as last.
        let mut cut = sealed.clone();
        cut.truncate(sealed.len() - (CHUNK + TAG));
        assert!(open_all(&key, &cut).is_err());
    }

    #[test]
    fn key_ids_rotation_and_old_objects() {
        let base = TenantKey::generate().unwrap();
        let ring = TenantKeyring::single(base.clone());
        let data: Vec<u8> = (0..CHUNK + 9).map(|i| i as u8).collect();
        // An object from before key ids: no id, the base key; still readable after rotation.
        let (legacy, _) = seal_with(Sealer::legacy(&base, Layout::MetaFirst).unwrap(), &data);
        assert_eq!(&legacy[..8], MAGIC);
        let header: [u8; HEADER_LEN] = legacy[..HEADER_LEN].try_into().unwrap();
        assert_eq!(header_key_id(&header, Layout::MetaFirst).unwrap(), None);
        let (old, _) = seal_all(&ring, &data);
        assert_eq!(&old[..8], MAGIC_KEYED);
        let header: [u8; HEADER_LEN] = old[..HEADER_LEN].try_into().unwrap();
        assert_eq!(header_key_id(&header, Layout::MetaFirst).unwrap(), Some(KeyId::of(&base)));
        assert!(header_key_id(&header, Layout::Trailer).is_err(), "one layout never passes as the other");
        let rotated = ring.clone().with_newer(TenantKey::generate().unwrap());
        let (new, _) = seal_all(&rotated, &data);
        let header: [u8; HEADER_LEN] = new[..HEADER_LEN].try_into().unwrap();
        assert_eq!(header_key_id(&header, Layout::MetaFirst).unwrap(), Some(rotated.newest().id));
        assert_ne!(rotated.newest().id, KeyId::of(&base));
        for sealed in [&legacy, &old, &new] {
            assert_eq!(open_all(&rotated, sealed).unwrap(), data);
        }
        // The old ring does not know the new key: a clear error naming the id, no data.
        let err = open_all(&ring, &new).unwrap_err().0;
        assert!(err.contains(&rotated.newest().id.to_string()) && err.contains("not in the tenant's keyring"), "{err}");
        // The key id is authenticated: pointing it at another key of the ring fails to open,
        // and so does dropping it (claiming the old format).
        let mut swapped = new.clone();
        swapped[12..20].copy_from_slice(&KeyId::of(&base).0);
        assert!(open_all(&rotated, &swapped).is_err());
        let mut downgraded = new.clone();
        downgraded[..8].copy_from_slice(MAGIC);
        assert!(open_all(&rotated, &downgraded).is_err());
    }
}
