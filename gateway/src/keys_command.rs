//! `gateway keys rotate` and `gateway keys reencrypt`: a tenant's storage keys.
//!
//! Neither writes the audit trail: it has one writer, the running gateway. The gateway audits
//! the rotation itself when it puts the new key in force (`storage_key_reload`, within 2 s);
//! re-encryption reports what it did on standard output, and the operator keeps that.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use gateway::keyring::TenantKeyring;
use gateway::storage::reencrypt::{reencrypt_tenant, Progress};

/// The tenant's key file and storage, from the configuration at `config`.
fn tenant(config: &Path, name: &str) -> anyhow::Result<(gateway_config::Config, PathBuf)> {
    let text = std::fs::read_to_string(config).with_context(|| format!("{}", config.display()))?;
    let (parsed, errors) = gateway_config::parse(&text, &config.display().to_string());
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        bail!("{}", list.join("\n"));
    }
    let Some(t) = parsed.tenants.iter().find(|t| t.name == name) else {
        let names: Vec<&str> = parsed.tenants.iter().map(|t| t.name.as_str()).collect();
        bail!("{}: no tenant {name:?} (tenants: {})", config.display(), names.join(", "));
    };
    let key_file = t.key_file.clone();
    Ok((parsed, key_file))
}

/// The tenant's SSE-C key file, if it uses SSE-C.
fn sse_c_key_file(config: &gateway_config::Config, name: &str) -> Option<PathBuf> {
    let t = config.tenants.iter().find(|t| t.name == name)?;
    match &t.storage {
        gateway_config::TenantStorage::S3 { sse: gateway_config::Sse::C { key_file }, .. } => Some(key_file.clone()),
        _ => None,
    }
}

/// `gateway keys rotate --tenant T --sse-c`: add `<sse_c_key_file>.<n>`, a fresh 256-bit
/// SSE-C key (base64, 0600, owned like the first), written under a temporary name and linked
/// into place.
fn rotate_sse_c(config: &Path, name: &str) -> anyhow::Result<ExitCode> {
    use std::os::unix::fs::MetadataExt;
    let (parsed, _) = tenant(config, name)?;
    let Some(key_file) = sse_c_key_file(&parsed, name) else {
        bail!("tenant {name:?} does not use SSE-C (sse = \"sse-c\" with an sse_c_key_file)");
    };
    let generation = gateway::keyring::rotated_files(&key_file)?.last().map_or(1, |(n, _)| n + 1);
    let path = PathBuf::from(format!("{}.{generation}", key_file.display()));
    let tmp = PathBuf::from(format!("{}.{generation}.tmp", key_file.display()));
    let raw = zeroize::Zeroizing::new(gateway::secrets::random_bytes::<32>()?);
    let mut text = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(raw.as_slice()));
    text.push('\n');
    gateway::secrets::write_secret_file(&tmp, text.as_bytes())?;
    let owner = std::fs::metadata(&key_file).with_context(|| format!("{}", key_file.display()))?;
    let linked = (|| {
        let mine = std::fs::metadata(&tmp)?;
        if (owner.uid(), owner.gid()) != (mine.uid(), mine.gid()) {
            std::os::unix::fs::chown(&tmp, Some(owner.uid()), Some(owner.gid()))?;
        }
        std::fs::hard_link(&tmp, &path)
    })();
    let _ = std::fs::remove_file(&tmp);
    linked.with_context(|| format!("{}", path.display()))?;
    let id = gateway::keyring::KeyId::of_bytes(raw.as_slice());
    println!("tenant {name}: added SSE-C key generation {generation} (key id {id}) in {}", path.display());
    println!(
        "a running gateway writes with it within 2 seconds (no restart); objects under older keys \
         stay readable; `gateway keys reencrypt --tenant {name}` then copies them to the new key"
    );
    Ok(ExitCode::SUCCESS)
}

/// `gateway keys rotate --tenant T [--sse-c]`: add a new newest key beside the tenant's key
/// file (or its SSE-C key file).
pub fn rotate(config: &Path, name: &str, sse_c: bool) -> anyhow::Result<ExitCode> {
    if sse_c {
        return rotate_sse_c(config, name);
    }
    let (_, key_file) = tenant(config, name)?;
    let new = TenantKeyring::rotate(&key_file)?;
    let ring = TenantKeyring::load(&key_file)?;
    println!(
        "tenant {name}: added storage key generation {} (key id {}) in {}",
        new.generation,
        new.id,
        new.path.display()
    );
    println!(
        "keys in force, oldest first: {}",
        ring.keys().map(|k| format!("{} ({})", k.id, k.generation)).collect::<Vec<_>>().join(", ")
    );
    println!(
        "a running gateway seals new objects with it within 2 seconds (no restart); \
         existing objects stay readable with their keys; \
         `gateway keys reencrypt --tenant {name}` moves them to the new key"
    );
    Ok(ExitCode::SUCCESS)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// One progress line: `[#####.....]  12/40 objects  1.2/3.4 MiB`.
fn bar(p: &Progress) -> String {
    const WIDTH: usize = 30;
    let filled = if p.bytes_total == 0 {
        (WIDTH * p.done).checked_div(p.total).unwrap_or(WIDTH)
    } else {
        (WIDTH as u128 * u128::from(p.bytes_done) / u128::from(p.bytes_total)) as usize
    };
    format!(
        "[{}{}] {}/{} objects, {}/{}",
        "#".repeat(filled.min(WIDTH)),
        ".".repeat(WIDTH - filled.min(WIDTH)),
        p.done,
        p.total,
        mib(p.bytes_done),
        mib(p.bytes_total)
    )
}

/// `gateway keys reencrypt --tenant T`: move the tenant's objects to its newest key.
pub fn reencrypt(config: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let (parsed, key_file) = tenant(config, name)?;
    let Some(t) = parsed.tenants.iter().find(|t| t.name == name) else { bail!("no tenant {name:?}") };
    if t.storage != gateway_config::TenantStorage::Local {
        return reencrypt_s3(&parsed, name);
    }
    let gateway_config::StorageBackend::Local { root } = &parsed.storage.backend;
    let ring = TenantKeyring::load(&key_file)?;
    let newest = ring.newest();
    println!(
        "tenant {name}: re-encrypting objects under {} to key id {} (generation {})",
        root.display(),
        newest.id,
        newest.generation
    );
    let terminal = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_line = Instant::now();
    let summary = reencrypt_tenant(root, name, &ring, |p| {
        if terminal {
            eprint!("\r{}", bar(p));
            let _ = std::io::stderr().flush();
        } else if p.done == p.total || last_line.elapsed() >= Duration::from_secs(5) {
            // Not a terminal (a log): a plain line now and then instead of redrawing.
            eprintln!("{}", bar(p));
            last_line = Instant::now();
        }
    })?;
    if terminal {
        eprintln!();
    }
    if summary.stale_removed > 0 {
        println!("removed {} staging file(s) an interrupted earlier run left", summary.stale_removed);
    }
    for (path, why) in &summary.failed {
        eprintln!("FAILED {path}: {why}");
    }
    println!(
        "tenant {name}: {} objects in {:.1}s: {} re-encrypted ({}), {} already under key {}, {} changed meanwhile (left alone), {} failed",
        summary.total,
        started.elapsed().as_secs_f64(),
        summary.rewritten,
        mib(summary.rewritten_bytes),
        summary.current,
        newest.id,
        summary.changed,
        summary.failed.len()
    );
    if summary.changed > 0 {
        println!(
            "objects changed meanwhile were written by the running gateway (under the newest key); run again to check"
        );
    }
    Ok(if summary.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `gateway keys reencrypt` for an S3 tenant with SSE-C: copy every object not under the
/// newest SSE-C key onto itself under it.
fn reencrypt_s3(config: &gateway_config::Config, name: &str) -> anyhow::Result<ExitCode> {
    use gateway::storage::s3::Rekey;
    if sse_c_key_file(config, name).is_none() {
        bail!(
            "tenant {name:?} is on S3 without SSE-C: the store holds its encryption keys, there is nothing \
             for the gateway to re-key"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = gateway::storage::router::tenant_store(config, name).await.map_err(|e| anyhow::anyhow!(e))?;
        println!("tenant {name}: re-keying its S3 objects to the newest SSE-C key (CopyObject onto itself)");
        let objects = store.object_keys().await?;
        let terminal = std::io::stderr().is_terminal();
        let started = Instant::now();
        let mut last_line = Instant::now();
        let mut p = Progress {
            total: objects.len(),
            bytes_total: objects.iter().map(|(_, n)| n).sum(),
            ..Progress::default()
        };
        let mut too_large = Vec::new();
        for (key, size) in objects {
            match store.rekey(&key).await {
                Ok(Rekey::Current) => p.current += 1,
                Ok(Rekey::Rewritten { bytes }) => {
                    p.rewritten += 1;
                    p.rewritten_bytes += bytes;
                }
                Ok(Rekey::Changed) => p.changed += 1,
                Ok(Rekey::TooLarge { bytes }) => too_large.push((key.clone(), bytes)),
                Err(e) => p.failed.push((key.clone(), e.to_string())),
            }
            p.done += 1;
            p.bytes_done += size;
            if terminal {
                eprint!("\r{}", bar(&p));
                let _ = std::io::stderr().flush();
            } else if p.done == p.total || last_line.elapsed() >= Duration::from_secs(5) {
                eprintln!("{}", bar(&p));
                last_line = Instant::now();
            }
        }
        if terminal {
            eprintln!();
        }
        for (key, why) in &p.failed {
            eprintln!("FAILED {key}: {why}");
        }
        for (key, bytes) in &too_large {
            eprintln!("SKIPPED {key}: {} is over the 5 GiB one CopyObject copies; it stays under its key", mib(*bytes));
        }
        println!(
            "tenant {name}: {} objects in {:.1}s: {} re-keyed ({}), {} already under the newest key, {} changed meanwhile (left alone), {} skipped (over 5 GiB), {} failed",
            p.total,
            started.elapsed().as_secs_f64(),
            p.rewritten,
            mib(p.rewritten_bytes),
            p.current,
            p.changed,
            too_large.len(),
            p.failed.len()
        );
        if config.tenants.iter().any(|t| t.name == name && matches!(t.storage, gateway_config::TenantStorage::S3 { seal: true, .. })) {
            println!("note: with seal = true the gateway-side seal keeps the tenant key it was written with; only the SSE-C layer was re-keyed");
        }
        Ok(if p.failed.is_empty() && too_large.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    })
}
