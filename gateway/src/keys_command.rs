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

/// `gateway keys rotate --tenant T`: add a new newest key beside the tenant's key file.
pub fn rotate(config: &Path, name: &str) -> anyhow::Result<ExitCode> {
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
        bail!(
            "tenant {name:?} is stored on S3: re-encryption covers the local store only for now; \
             objects on S3 stay readable with the keys they were written with"
        );
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
