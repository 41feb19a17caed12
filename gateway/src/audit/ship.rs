//! Shipping the trail off the node: every `[audit.ship] interval` the records written since
//! the last shipped one, up to the newest signed checkpoint, go to the audit bucket as one
//! *segment* object `<prefix><node>/<first seq>-<last seq>.jsonl` (zero-padded, so keys sort
//! in trail order), with Object Lock retention where configured. A segment always ends with a
//! checkpoint, so each is sealed by a signature and the segments of a node, concatenated,
//! are exactly its trail: `gateway audit verify-shipped` checks them with the same verifier
//! as a local trail (hash chain across segments, sequence, signatures) and that none is
//! missing. What has been shipped is kept in `<trail>.shipped` (seq, byte offset, hash), so a
//! restart continues where it stopped; a failed upload is tried again at the next interval,
//! and the local trail keeps everything meanwhile.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use gateway_config::{Retention, RetentionMode};
use serde::{Deserialize, Serialize};

use super::verify::{verify_trail, VerifyOptions, VerifyReport};
use super::GENESIS;

/// Most bytes one segment may hold; a longer run without a checkpoint is shipped up to the
/// last checkpoint inside this bound (checkpoints come every `checkpoint_every_records`).
const MAX_SEGMENT: u64 = 64 << 20;

/// What has been shipped, kept beside the trail.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct ShipState {
    /// `seq` of the last shipped record (0: none yet).
    seq: u64,
    /// Byte offset in the trail just after it.
    offset: u64,
    /// SHA-256 (hex) of that record's line, which the next segment's first `prev` must be.
    hash: String,
}

/// Copies sealed segments of one node's trail into the audit bucket.
pub struct Shipper {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// `<prefix><node>/`.
    prefix: String,
    trail: PathBuf,
    state_path: PathBuf,
    state: ShipState,
    retention: Option<Retention>,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper").field("bucket", &self.bucket).field("prefix", &self.prefix).finish()
    }
}

/// The state file beside `trail`.
pub fn state_path(trail: &Path) -> PathBuf {
    let mut s = trail.as_os_str().to_owned();
    s.push(".shipped");
    PathBuf::from(s)
}

/// This node's name: the configured one, else the host name.
pub fn node_name(configured: Option<&str>) -> String {
    if let Some(n) = configured {
        return n.to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let clean: String = host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.').collect();
    if clean.is_empty() {
        "node".to_owned()
    } else {
        clean
    }
}

fn segment_key(prefix: &str, first: u64, last: u64) -> String {
    format!("{prefix}{first:012}-{last:012}.jsonl")
}

fn parse_segment_key(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".jsonl")?;
    let (a, b) = stem.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Trail bytes from the shipped offset through a checkpoint line.
struct Segment {
    bytes: Vec<u8>,
    first: u64,
    last: u64,
    /// SHA-256 (hex) of the last line.
    hash: String,
}

#[derive(Deserialize)]
struct Head {
    seq: u64,
    prev: String,
    event: String,
}

impl Shipper {
    /// A shipper for `trail` into `bucket` under `<prefix><node>/`; checks that the bucket
    /// answers and, when retention is asked for, that it has Object Lock enabled.
    pub async fn open(
        client: aws_sdk_s3::Client,
        bucket: String,
        prefix: &str,
        node: &str,
        trail: &Path,
        retention: Option<Retention>,
    ) -> Result<Shipper, String> {
        client
            .head_bucket()
            .bucket(&bucket)
            .send()
            .await
            .map_err(|e| format!("audit.ship: bucket {bucket:?} cannot be reached: {}", sdk_message(&e)))?;
        if retention.is_some() {
            let lock = client.get_object_lock_configuration().bucket(&bucket).send().await.map_err(|e| {
                format!(
                    "audit.ship: retention_days needs Object Lock, but bucket {bucket:?} has none or the store does not support it: {}",
                    sdk_message(&e)
                )
            })?;
            let enabled = lock
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                .is_some_and(|e| e.as_str() == "Enabled");
            if !enabled {
                return Err(format!("audit.ship: bucket {bucket:?} does not have Object Lock enabled"));
            }
        }
        let state_path = state_path(trail);
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("audit.ship: {} is not a shipping state ({e})", state_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ShipState { seq: 0, offset: 0, hash: GENESIS.to_owned() }
            }
            Err(e) => return Err(format!("audit.ship: {}: {e}", state_path.display())),
        };
        Ok(Shipper {
            client,
            bucket,
            prefix: format!("{prefix}{node}/"),
            trail: trail.to_owned(),
            state_path,
            state,
            retention,
        })
    }

    /// Ship what is sealed and not yet shipped, a segment at a time. Returns the number of
    /// segments written.
    pub async fn ship_pending(&mut self) -> Result<usize, String> {
        let mut shipped = 0;
        while let Some(Segment { bytes, first, last, hash }) = self.next_segment()? {
            let key = segment_key(&self.prefix, first, last);
            self.put(&key, bytes.clone(), first, last).await?;
            self.state = ShipState { seq: last, offset: self.state.offset + bytes.len() as u64, hash };
            self.save_state()?;
            tracing::info!(key = %key, bucket = %self.bucket, records = last - first + 1, "audit segment shipped");
            crate::metrics::metrics().audit_segment_shipped(true);
            shipped += 1;
        }
        Ok(shipped)
    }

    /// Ship in a loop every `interval` until `stop`; then once more (the final checkpoint is
    /// written by then, when the trail was closed first).
    pub async fn run(mut self, interval: Duration, stop: impl std::future::Future<Output = ()>) -> Shipper {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => return self,
                _ = tick.tick() => {}
            }
            self.ship_logged().await;
        }
    }

    /// One pass; failures are logged and counted, and tried again next time.
    pub async fn ship_logged(&mut self) {
        if let Err(e) = self.ship_pending().await {
            crate::metrics::metrics().audit_segment_shipped(false);
            tracing::error!(error = %e, "audit segment shipping failed; the local trail keeps the records and shipping is tried again");
        }
    }

    /// The next segment: bytes from the shipped offset through the last checkpoint line
    /// within [`MAX_SEGMENT`]; `None` when no checkpoint follows what was shipped.
    fn next_segment(&self) -> Result<Option<Segment>, String> {
        let mut file = std::fs::File::open(&self.trail).map_err(|e| format!("{}: {e}", self.trail.display()))?;
        let len = file.metadata().map_err(|e| format!("{}: {e}", self.trail.display()))?.len();
        if len < self.state.offset {
            return Err(format!(
                "{} is shorter ({len} bytes) than what was shipped ({} bytes, through record {}): the trail was replaced or cut; see {}",
                self.trail.display(),
                self.state.offset,
                self.state.seq,
                self.state_path.display()
            ));
        }
        file.seek(SeekFrom::Start(self.state.offset)).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        file.take(MAX_SEGMENT).read_to_end(&mut buf).map_err(|e| e.to_string())?;
        let mut pos = 0usize;
        let mut end = None;
        let mut first = None;
        let mut expect_seq = self.state.seq + 1;
        let mut prev = self.state.hash.clone();
        while let Some(nl) = buf.get(pos..).and_then(|rest| rest.iter().position(|b| *b == b'\n')) {
            let line = buf.get(pos..pos + nl).unwrap_or_default();
            let head: Head = serde_json::from_slice(line).map_err(|e| {
                format!(
                    "{}: record after seq {} is not valid JSON ({e}); not shipping past it",
                    self.trail.display(),
                    expect_seq - 1
                )
            })?;
            if head.seq != expect_seq || head.prev != prev {
                return Err(format!(
                    "{}: record {} does not continue the shipped trail (expected seq {expect_seq} after the shipped record); not shipping",
                    self.trail.display(),
                    head.seq
                ));
            }
            first.get_or_insert(head.seq);
            prev = hex::encode(crate::digest::sha256(line));
            expect_seq += 1;
            pos += nl + 1;
            if head.event == "checkpoint" {
                end = Some((pos, head.seq, prev.clone()));
            }
        }
        let (Some((end, last, hash)), Some(first)) = (end, first) else { return Ok(None) };
        buf.truncate(end);
        Ok(Some(Segment { bytes: buf, first, last, hash }))
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, first: u64, last: u64) -> Result<(), String> {
        use md5::Digest;
        let sha = B64.encode(crate::digest::sha256(&bytes));
        let md5 = B64.encode(md5::Md5::digest(&bytes));
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/x-ndjson")
            .content_md5(md5)
            .checksum_sha256(sha)
            .metadata("gateway-first-seq", first.to_string())
            .metadata("gateway-last-seq", last.to_string())
            .body(ByteStream::from(bytes));
        if let Some(r) = self.retention {
            let until = std::time::SystemTime::now() + Duration::from_secs(u64::from(r.days) * 86_400);
            req = req
                .object_lock_mode(match r.mode {
                    RetentionMode::Compliance => aws_sdk_s3::types::ObjectLockMode::Compliance,
                    RetentionMode::Governance => aws_sdk_s3::types::ObjectLockMode::Governance,
                })
                .object_lock_retain_until_date(aws_smithy_types::DateTime::from(until));
        }
        req.send().await.map_err(|e| format!("uploading {key} to bucket {:?}: {}", self.bucket, sdk_message(&e)))?;
        Ok(())
    }

    fn save_state(&self) -> Result<(), String> {
        let tmp = self.state_path.with_extension("shipped.tmp");
        let text = serde_json::to_vec(&self.state).map_err(|e| e.to_string())?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.state_path)?;
            if let Some(dir) = self.state_path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| format!("{}: {e}", self.state_path.display()))
    }
}

fn sdk_message<E: ProvideErrorMetadata + std::error::Error + 'static>(
    e: &SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> String {
    match e {
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(_) => "could not reach the store".into(),
        _ => {
            let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
            let text = format!("{} {}", e.code().unwrap_or(""), e.message().unwrap_or(""));
            let text: String = text.trim().chars().filter(|c| !c.is_control()).take(300).collect();
            format!("HTTP {status} {text}").trim().to_owned()
        }
    }
}

/// One node's shipped set, checked.
#[derive(Debug, Clone)]
pub struct ShippedReport {
    /// The node.
    pub node: String,
    /// Segments found.
    pub segments: usize,
    /// Segments carrying Object Lock retention (as the store reports it).
    pub locked: usize,
    /// The trail check of the concatenated segments.
    pub trail: VerifyReport,
}

/// Check every node's shipped segments under `prefix` (or only `node`'s): names match
/// their contents, none missing, each ends with a checkpoint, and together they verify as a
/// trail (chain, sequence, signatures, with `options.public_key` when given).
pub async fn verify_shipped(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    node: Option<&str>,
    options: &VerifyOptions,
) -> Result<Vec<ShippedReport>, String> {
    let nodes = match node {
        Some(n) => vec![n.to_owned()],
        None => {
            let mut nodes = Vec::new();
            let mut pages =
                client.list_objects_v2().bucket(bucket).prefix(prefix).delimiter("/").into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| format!("listing {bucket}/{prefix}: {}", sdk_message(&e)))?;
                for p in page.common_prefixes() {
                    if let Some(n) = p.prefix().and_then(|p| p.strip_prefix(prefix)).and_then(|p| p.strip_suffix('/')) {
                        nodes.push(n.to_owned());
                    }
                }
            }
            if nodes.is_empty() {
                return Err(format!("no shipped segments under {bucket}/{prefix}"));
            }
            nodes
        }
    };
    let mut reports = Vec::new();
    for n in nodes {
        reports.push(verify_node(client, bucket, &format!("{prefix}{n}/"), &n, options).await?);
    }
    Ok(reports)
}

async fn verify_node(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    node: &str,
    options: &VerifyOptions,
) -> Result<ShippedReport, String> {
    let mut keys = Vec::new();
    let mut pages = client.list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| format!("listing {bucket}/{prefix}: {}", sdk_message(&e)))?;
        for o in page.contents() {
            if let Some(k) = o.key() {
                keys.push(k.to_owned());
            }
        }
    }
    keys.sort();
    if keys.is_empty() {
        return Err(format!("node {node}: no segments under {bucket}/{prefix}"));
    }
    let dir = tempfile_dir()?;
    let joined = dir.join(format!("{node}.jsonl"));
    let mut out = std::fs::File::create(&joined).map_err(|e| e.to_string())?;
    let mut next = 1u64;
    let mut locked = 0;
    for key in &keys {
        let name = key.strip_prefix(prefix).unwrap_or(key);
        let (first, last) = parse_segment_key(name)
            .ok_or_else(|| format!("node {node}: {key} is not a segment name (<first>-<last>.jsonl)"))?;
        if first != next {
            return Err(if first > next {
                format!(
                    "node {node}: records {next} to {} are missing (no segment holds them; next is {key})",
                    first - 1
                )
            } else {
                format!("node {node}: {key} overlaps the segment before it (starts at {first}, expected {next})")
            });
        }
        let got = client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| format!("node {node}: reading {key}: {}", sdk_message(&e)))?;
        let locked_here = got.object_lock_mode().is_some() && got.object_lock_retain_until_date().is_some();
        let body = got.body.collect().await.map_err(|e| format!("node {node}: reading {key}: {e}"))?.into_bytes();
        let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        let seq_of = |l: &[u8]| serde_json::from_slice::<Head>(l).ok();
        let (Some(h1), Some(hn)) = (lines.first().and_then(|l| seq_of(l)), lines.last().and_then(|l| seq_of(l))) else {
            return Err(format!("node {node}: {key} holds no readable records: it was altered"));
        };
        if h1.seq != first || hn.seq != last || lines.len() as u64 != last - first + 1 {
            return Err(format!(
                "node {node}: {key} holds records {}..{} ({} lines), not what its name says: it was altered",
                h1.seq,
                hn.seq,
                lines.len()
            ));
        }
        if hn.event != "checkpoint" {
            return Err(format!("node {node}: {key} does not end with a checkpoint: it was altered"));
        }
        if locked_here {
            locked += 1;
        }
        use std::io::Write;
        out.write_all(&body).map_err(|e| e.to_string())?;
        next = last + 1;
    }
    drop(out);
    let trail = verify_trail(&joined, &VerifyOptions { sidecar: None, ..options.clone() })
        .map_err(|e| format!("node {node}: shipped trail: line {} (seq {}): {}", e.line, e.line, e.message));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ShippedReport { node: node.to_owned(), segments: keys.len(), locked, trail: trail? })
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!(
        "gateway-verify-shipped-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// [`verify_shipped`] for the audit bucket that `config`'s `[audit.ship]` names.
pub async fn verify_configured(
    config: &gateway_config::Config,
    node: Option<&str>,
    options: &VerifyOptions,
) -> Result<Vec<ShippedReport>, String> {
    let ship = config.audit.ship.as_ref().ok_or("the configuration has no [audit.ship] section")?;
    let named = config
        .storages
        .iter()
        .find(|s| s.name == ship.storage)
        .ok_or_else(|| format!("audit.ship.storage: unknown storage {:?}", ship.storage))?;
    let client = crate::storage::router::client_for(named).await?;
    let bucket = ship.bucket.clone().unwrap_or_else(|| named.s3.bucket.clone());
    verify_shipped(&client, &bucket, &ship.prefix, node, options).await
}
