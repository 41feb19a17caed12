//! `gateway certs`: development PKI, issuing, inspecting and checking certificates.
//!
//! Argument parsing and printing only; the work is in `gateway_certs::{dev, issue, inspect}`.
//! Nothing here writes to the audit trail (it has a single writer, the running gateway):
//! replacing the files a gateway serves is recorded by that gateway as `certificate_reload`
//! with the old and new fingerprints when it loads them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use gateway_certs::dev::{create_dev_set, DevFile, DevSetOptions};
use gateway_certs::inspect::{inspect_file, CertSummary, Standing};
use gateway_certs::issue::{issue, write_issued, CertKind, KeyKind, LeafRequest, SigningCa, SubjectAltName, MAX_DAYS};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// What the running gateway does when the files it serves change (printed after a rotation).
const ROTATION_NOTE: &str = "a gateway serving these files loads them within 2 s (or at SIGHUP) and writes a \
                             certificate_reload audit record with the old and new SHA-256";

/// `gateway certs ...`
#[derive(Subcommand)]
pub enum CertsCommand {
    /// Development only: a new CA, server certificate and client certificate in DIR.
    ///
    /// Writes a new CA (ca.pem, ca.key), a server certificate (server.pem:
    /// leaf then CA; server.key) and a client certificate (client.pem, client.key; clientAuth)
    /// into DIR. Keys are 0600; existing files are kept unless --force.
    Dev {
        /// Directory to write into (created 0700).
        #[arg(long)]
        out: PathBuf,
        /// Server SAN (repeatable): a DNS name or IP address, or DNS:/IP:/email:/URI: prefixed.
        /// Default: localhost, 127.0.0.1, ::1.
        #[arg(long = "san", value_name = "SAN")]
        sans: Vec<SubjectAltName>,
        /// Common name of the client certificate.
        #[arg(long, default_value = "client")]
        client_name: String,
        /// Key type of all three keys.
        #[arg(long, value_enum, default_value_t = KeyType::P256)]
        key_type: KeyType,
        /// Replace existing files (old and new fingerprints are printed).
        #[arg(long)]
        force: bool,
    },
    /// Issue a server or client certificate from a CA.
    ///
    /// Writes the chain (leaf, then the CA
    /// file's certificates) and a new key (0600). Replacing files needs --force; then the old
    /// and new SHA-256 fingerprints are printed, and a running gateway that serves the files
    /// loads them within 2 s (or at SIGHUP) and audits the rotation (certificate_reload, old
    /// and new fingerprints) itself.
    Issue {
        /// CA certificate (PEM; the CA first, then any chain above it).
        #[arg(long)]
        ca_cert: PathBuf,
        /// CA private key (PEM).
        #[arg(long)]
        ca_key: PathBuf,
        /// server (serverAuth) or client (clientAuth).
        #[arg(long, value_enum, default_value_t = Kind::Server)]
        kind: Kind,
        /// Subject alternative name (repeatable; at least one for a server): a DNS name
        /// (`*.` allowed) or IP address, or DNS:/IP:/email:/URI: prefixed.
        #[arg(long = "san", value_name = "SAN")]
        sans: Vec<SubjectAltName>,
        /// Subject common name (default: the first SAN).
        #[arg(long)]
        cn: Option<String>,
        /// Validity in days from now (never past the CA's end).
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
        /// Key type. The gateway serves all four, but many clients (browsers among them) do not
        /// accept an Ed25519 server certificate.
        #[arg(long, value_enum, default_value_t = KeyType::P256)]
        key_type: KeyType,
        /// Certificate (chain) file to write.
        #[arg(long)]
        out_cert: PathBuf,
        /// Key file to write (0600).
        #[arg(long)]
        out_key: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Show every certificate in PEM files.
    ///
    /// For each: subject, issuer, SANs, serial, validity, key,
    /// signature algorithm, SHA-256 fingerprint (as `openssl x509 -fingerprint -sha256`).
    Inspect {
        /// PEM files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// One JSON array of objects instead of text.
        #[arg(long)]
        json: bool,
    },
    /// For monitoring: exit 1 if a certificate expires within --days, 2 if a file is unreadable.
    ///
    /// Exit 0 if every certificate in every file is valid now and for at least
    /// --days more days, 1 if one is not (a line for each), 2 if a file cannot be read or parsed.
    Check {
        /// Days each certificate must still be valid.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// PEM files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// `--key-type`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    /// ECDSA P-256 with SHA-256.
    P256,
    /// ECDSA P-384 with SHA-384.
    P384,
    /// RSA 3072, PKCS#1 v1.5 with SHA-256.
    Rsa3072,
    /// Ed25519 (not accepted by many TLS clients as a server certificate).
    Ed25519,
}

impl KeyType {
    fn describe(self) -> &'static str {
        match self {
            KeyType::P256 => "ECDSA P-256",
            KeyType::P384 => "ECDSA P-384",
            KeyType::Rsa3072 => "RSA 3072",
            KeyType::Ed25519 => "Ed25519",
        }
    }
}

impl From<KeyType> for KeyKind {
    fn from(k: KeyType) -> Self {
        match k {
            KeyType::P256 => KeyKind::EcdsaP256,
            KeyType::P384 => KeyKind::EcdsaP384,
            KeyType::Rsa3072 => KeyKind::Rsa3072,
            KeyType::Ed25519 => KeyKind::Ed25519,
        }
    }
}

/// `--kind`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// TLS server certificate (extended key usage serverAuth).
    Server,
    /// TLS client certificate (extended key usage clientAuth).
    Client,
}

/// Run one `certs` subcommand.
pub fn run(command: CertsCommand) -> anyhow::Result<ExitCode> {
    match command {
        CertsCommand::Dev { out, sans, client_name, key_type, force } => {
            let mut options = DevSetOptions { key: key_type.into(), client_name, ..DevSetOptions::default() };
            if !sans.is_empty() {
                options.server_sans = sans;
            }
            let set = create_dev_set(&out, &options, force)?;
            for (what, file) in [("CA", &set.ca), ("server", &set.server), ("client", &set.client)] {
                print_written(what, file);
            }
            println!("DEVELOPMENT material: trust {} in clients; never use it in production", set.ca.cert.display());
            println!(
                "serve it with:  [https] cert = \"{}\"  key = \"{}\"",
                set.server.cert.display(),
                set.server.key.display()
            );
            if [&set.ca, &set.server, &set.client].iter().any(|f| f.previous_sha256.is_some()) {
                println!("{ROTATION_NOTE}");
            }
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::Issue { ca_cert, ca_key, kind, sans, cn, days, key_type, out_cert, out_key, force } => {
            let ca = SigningCa::load(&ca_cert, &ca_key)?;
            let request = LeafRequest {
                kind: match kind {
                    Kind::Server => CertKind::Server,
                    Kind::Client => CertKind::Client,
                },
                common_name: cn,
                sans,
                days,
                key: key_type.into(),
            };
            let issued = issue(&ca, &request, OffsetDateTime::now_utc())?;
            let written = write_issued(&issued, &out_cert, &out_key, force)?;
            let kind = if kind == Kind::Server { "server" } else { "client" };
            println!(
                "wrote {kind} certificate {} ({}, {}, valid until {}, issued by {}) and key {} (0600)",
                out_cert.display(),
                issued.subject,
                key_type.describe(),
                rfc3339(issued.not_after),
                ca.subject(),
                out_key.display()
            );
            match written.previous_sha256 {
                Some(old) => {
                    println!("replaced {}: old SHA-256 {old}", out_cert.display());
                    println!("                new SHA-256 {}", issued.sha256_fingerprint);
                    println!("{ROTATION_NOTE}");
                }
                None => println!("SHA-256 {}", issued.sha256_fingerprint),
            }
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::Inspect { files, json } => inspect(&files, json),
        CertsCommand::Check { days, files } => Ok(check(&files, days)),
    }
}

fn print_written(what: &str, file: &DevFile) {
    println!(
        "wrote {what}: {} and {} (0600), SHA-256 {}",
        file.cert.display(),
        file.key.display(),
        file.sha256_fingerprint
    );
    if let Some(old) = &file.previous_sha256 {
        println!("  replaced {what} certificate with old SHA-256 {old}");
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn inspect(files: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    let now = OffsetDateTime::now_utc();
    let mut all = Vec::new();
    for file in files {
        let summaries = inspect_file(file)?;
        all.extend(summaries.into_iter().map(|s| (file.as_path(), s)));
    }
    if json {
        let array: Vec<_> = all.iter().map(|(file, s)| summary_json(file, s, now)).collect();
        println!("{}", serde_json::to_string_pretty(&array)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (file, s) in &all {
        let count = all.iter().filter(|(f, _)| f == file).count();
        println!("{}: certificate {} of {count}", file.display(), s.index);
        println!("  subject:      {}", s.subject);
        println!("  issuer:       {}", s.issuer);
        println!("  SANs:         {}", if s.sans.is_empty() { "(none)".to_owned() } else { s.sans.join(", ") });
        println!("  serial:       {}", s.serial);
        println!("  not before:   {}", rfc3339(s.not_before));
        println!("  not after:    {} ({})", rfc3339(s.not_after), days_left_text(s, now));
        let bits = s.key_bits.map(|b| format!(" ({b} bits)")).unwrap_or_default();
        let refused = s.key_refused.as_ref().map(|r| format!("; the gateway refuses it: {r}")).unwrap_or_default();
        println!("  key:          {}{bits}{refused}", s.key_type);
        println!("  signature:    {}", s.signature_algorithm);
        if s.is_ca {
            println!("  CA:           yes");
        }
        if !s.extended_key_usage.is_empty() {
            println!("  EKU:          {}", s.extended_key_usage.join(", "));
        }
        println!("  SHA-256:      {}", s.sha256_fingerprint);
    }
    Ok(ExitCode::SUCCESS)
}

fn days_left_text(s: &CertSummary, now: OffsetDateTime) -> String {
    match s.standing(now, 0) {
        Standing::Expired => format!("EXPIRED {} days ago", -s.days_left(now)),
        Standing::NotYetValid => "NOT YET VALID".to_owned(),
        _ => format!("{} days left", s.days_left(now)),
    }
}

fn summary_json(file: &Path, s: &CertSummary, now: OffsetDateTime) -> serde_json::Value {
    serde_json::json!({
        "file": file.display().to_string(),
        "index": s.index,
        "subject": s.subject,
        "issuer": s.issuer,
        "sans": s.sans,
        "serial": s.serial,
        "not_before": rfc3339(s.not_before),
        "not_after": rfc3339(s.not_after),
        "days_left": s.days_left(now),
        "key_type": s.key_type,
        "key_bits": s.key_bits,
        "key_refused": s.key_refused,
        "signature_algorithm": s.signature_algorithm,
        "is_ca": s.is_ca,
        "extended_key_usage": s.extended_key_usage,
        "sha256": s.sha256_fingerprint,
    })
}

/// Exit 0: all valid for `days`; 1: at least one is not; 2: a file could not be read (that
/// wins: nothing can be said about it).
fn check(files: &[PathBuf], days: u32) -> ExitCode {
    let now = OffsetDateTime::now_utc();
    let (mut failing, mut unreadable, mut ok) = (0usize, 0usize, 0usize);
    for file in files {
        let summaries = match inspect_file(file) {
            Ok(s) => s,
            Err(e) => {
                println!("UNKNOWN {e}");
                unreadable += 1;
                continue;
            }
        };
        for s in summaries {
            let where_ = format!("{}: certificate {} ({})", file.display(), s.index, s.subject);
            match s.standing(now, days) {
                Standing::Valid => ok += 1,
                Standing::ExpiresSoon => {
                    failing += 1;
                    println!(
                        "EXPIRING {where_}: not after {} ({} days left, fewer than {days})",
                        rfc3339(s.not_after),
                        s.days_left(now)
                    );
                }
                Standing::Expired => {
                    failing += 1;
                    println!("EXPIRED {where_}: not after {}", rfc3339(s.not_after));
                }
                Standing::NotYetValid => {
                    failing += 1;
                    println!(
                        "NOT YET VALID {where_}: not before {}, not after {}",
                        rfc3339(s.not_before),
                        rfc3339(s.not_after)
                    );
                }
            }
        }
    }
    if unreadable > 0 {
        ExitCode::from(2)
    } else if failing > 0 {
        ExitCode::from(1)
    } else {
        println!("OK: {ok} certificate(s) in {} file(s) valid for at least {days} more days", files.len());
        ExitCode::SUCCESS
    }
}
