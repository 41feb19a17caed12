//! The `gateway` command: parse arguments, then hand over to the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use clap::{Parser, Subcommand};
use gateway::audit::verify::{verify_trail, VerifyOptions};
use gateway::secrets::{TenantKey, Token};
use gateway::{check_files, prepare_development, Gateway};
use gateway_config::Mode;

mod accounts_command;
mod bans_command;
mod certs_command;

const DEFAULT_CONFIG: &str = "config/gateway.toml";

mod keys_command;
mod mfa_command;

/// Secure file-exchange gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format on standard error: `human` (coloured only on a terminal), `json` (one JSON
    /// object a line), or `auto`: human on a terminal, JSON lines otherwise.
    #[arg(long, global = true, env = "GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human on a terminal, JSON lines otherwise.
    Auto,
    /// Human-readable lines; ANSI colour only when standard error is a terminal.
    Human,
    /// One JSON object a line (timestamp, level, target, message, fields).
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Exit 0 if a plain-HTTP URL answers 200 (the container HEALTHCHECK: the admin
    /// listener's `/healthz`).
    Healthcheck {
        /// URL to GET.
        #[arg(long, default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
    /// Run the gateway.
    Serve {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check a configuration and every file it names; list every problem.
    CheckConfig {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Create users and tokens (prints configuration stanzas; shows each token once).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Generate key files for production.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The defender's bans on a running gateway (through its admin listener).
    Bans {
        #[command(subcommand)]
        command: bans_command::BansCommand,
    },
    /// TLS certificates: a development PKI, issuing from a CA, inspecting, expiry checks.
    Certs {
        #[command(subcommand)]
        command: certs_command::CertsCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the segments shipped to the audit bucket of `[audit.ship]`: none missing, each
    /// sealed by a checkpoint, and together a valid trail per node.
    VerifyShipped {
        /// Configuration file (its `[audit.ship]` and `[[storages]]` name the bucket).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Only this node (default: every node under the prefix).
        #[arg(long)]
        node: Option<String>,
        /// Trust only this checkpoint public key (the `.pub` file beside the signing key).
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Verify hash chain, sequence, checkpoint signatures and sidecar of each trail.
    Verify {
        /// Trust only this checkpoint public key (the `.pub` file beside the signing key).
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Checkpoint sidecar (default: `<FILE>.checkpoints` when present).
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        /// Trail files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Print a `[[users]]` stanza with a fresh token for a new user.
    New {
        /// User name.
        #[arg(long)]
        name: String,
        /// Tenant the user belongs to.
        #[arg(long)]
        tenant: String,
        /// Home directory inside the tenant.
        #[arg(long)]
        home: String,
        /// Comma-separated permissions: list,read,write,delete,rename,mkdir or all.
        #[arg(long, default_value = "list,read")]
        permissions: String,
    },
    /// Print a `[[users.tokens]]` stanza with a fresh token for an existing user.
    Token {
        /// User name.
        #[arg(long)]
        user: String,
    },
    /// Add an SSH public key to a user's `authorized_keys` in the configuration file
    /// (comments and layout are kept; the result is validated before it is written).
    AddKey {
        /// Configuration file to edit.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// User name.
        user: String,
        /// OpenSSH public key file (`id_ed25519.pub`).
        public_key_file: PathBuf,
    },
    /// Print a `password_hash` for a user; reads the password from standard input.
    Password,
    #[command(flatten)]
    Accounts(accounts_command::AccountsCommand),
    /// Second factor (TOTP) enrolment.
    Mfa {
        #[command(subcommand)]
        command: mfa_command::MfaCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a new 256-bit tenant storage key (0600). Never overwrites.
    Tenant {
        /// Key file to create.
        file: PathBuf,
    },
    /// Write a new Ed25519 audit checkpoint key (0600) and its `.pub`. Never overwrites.
    Audit {
        /// Key file to create.
        file: PathBuf,
    },
    /// Add a new storage key for a tenant (`<key_file>.<n>`, 0600): new objects are sealed
    /// with it, older ones stay readable with theirs. A running gateway takes it within 2 s.
    Rotate {
        /// Configuration file naming the tenant's key file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// Add an SSE-C key (`<sse_c_key_file>.<n>`) instead, for a tenant on S3 with SSE-C;
        /// a running gateway writes with it within 2 s.
        #[arg(long)]
        sse_c: bool,
    },
    /// Re-seal a tenant's stored objects under its newest key (local store), or copy its S3
    /// objects to its newest SSE-C key; with progress; idempotent, and a re-run continues an
    /// interrupted one.
    Reencrypt {
        /// Configuration file naming the tenant's key file and the store.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Tenant name.
        #[arg(long)]
        tenant: String,
    },
}

/// Whatever `RUST_LOG` asks for, the SDK's request signer never logs below `info` and the
/// rest of the AWS and HTTP stack never below `debug`: at those levels they print request
/// headers, which carry the SSE-C key (and signatures).
fn no_secrets_in(target: &str, level: tracing::Level) -> bool {
    if target.starts_with("aws_sigv4") {
        return level <= tracing::Level::INFO;
    }
    let sdk = ["aws_", "hyper", "h2", "rustls"].iter().any(|p| target.starts_with(p));
    !sdk || level <= tracing::Level::DEBUG
}

/// Log to standard error in `format`, never with colour codes unless it is a terminal, and
/// never below the levels [`no_secrets_in`] allows.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Auto => !terminal,
        LogFormat::Human => false,
        LogFormat::Json => true,
    };
    let layer = if json {
        tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(std::io::stderr).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_ansi(terminal).with_writer(std::io::stderr).boxed()
    };
    let env = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(
            layer
                .with_filter(env)
                .with_filter(tracing_subscriber::filter::filter_fn(|meta| no_secrets_in(meta.target(), *meta.level()))),
        )
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Healthcheck { url } => healthcheck(&url),
        Command::CheckConfig { config } => check_config(&config),
        Command::Audit { command: AuditCommand::Verify { public_key, checkpoints, files } } => {
            audit_verify(public_key, checkpoints, &files)
        }
        Command::Audit { command: AuditCommand::VerifyShipped { config, node, public_key } } => {
            audit_verify_shipped(&config, node.as_deref(), public_key)
        }
        Command::Users { command } => users(command),
        Command::Certs { command } => certs_command::run(command),
        Command::Bans { command } => bans_command::run(command),
        Command::Keys { command: KeysCommand::Tenant { file } } => TenantKey::generate()
            .and_then(|k| k.save(&file))
            .map(|()| {
                println!("wrote tenant key {}", file.display());
                ExitCode::SUCCESS
            })
            .map_err(Into::into),
        Command::Keys { command: KeysCommand::Rotate { config, tenant, sse_c } } => {
            keys_command::rotate(&config, &tenant, sse_c)
        }
        Command::Keys { command: KeysCommand::Reencrypt { config, tenant } } => {
            keys_command::reencrypt(&config, &tenant)
        }
        Command::Keys { command: KeysCommand::Audit { file } } => gateway::audit::CheckpointKey::generate(&file)
            .map(|k| {
                println!("wrote audit signing key {} (public key {})", file.display(), k.public_key_b64());
                ExitCode::SUCCESS
            })
            .map_err(Into::into),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let origin = path.display().to_string();
    let (config, mut problems): (_, Vec<String>) = {
        let (config, errors) = gateway_config::parse(&text, &origin);
        (config, errors.iter().map(ToString::to_string).collect())
    };
    problems.extend(check_files(&config).into_iter().map(|p| format!("{origin}: {p}")));
    // Not errors (the gateway starts), but these users cannot log in yet.
    let store = gateway::mfa::store::Store::new(&config.mfa);
    for (i, user) in config.users.iter().enumerate() {
        if user.mfa.is_some() && !store.enrolled(&user.name) {
            eprintln!(
                "{origin}: warning: users[{i}] ({}): mfa is set but the user is not enrolled (no {}); logins are refused until `gateway users mfa enroll {}`",
                user.name,
                store.path_of(&user.name).display(),
                user.name
            );
        }
    }
    if problems.is_empty() {
        let mode = if config.mode == Mode::Development { "development" } else { "production" };
        println!("{origin}: OK ({mode}, {} tenants, {} users)", config.tenants.len(), config.users.len());
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        eprintln!("{} problem(s) found", problems.len());
        Ok(ExitCode::FAILURE)
    }
}

fn read_public_key(path: Option<PathBuf>) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(p) = path else { return Ok(None) };
    let text = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .with_context(|| format!("{}: not a base64 public key", p.display()))?;
    Ok(Some(key))
}

fn audit_verify_shipped(config: &Path, node: Option<&str>, public_key: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = gateway_config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let options = VerifyOptions { public_key: read_public_key(public_key)?, sidecar: None };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match runtime.block_on(gateway::audit::ship::verify_configured(&config, node, &options)) {
        Ok(reports) => {
            for r in reports {
                println!(
                    "node {}: OK: {} segments ({} under Object Lock retention), {} records, {} checkpoints (last at seq {})",
                    r.node,
                    r.segments,
                    r.locked,
                    r.trail.records,
                    r.trail.checkpoints,
                    r.trail.last_checkpoint.map_or("-".to_owned(), |s| s.to_string()),
                );
                if options.public_key.is_none() {
                    if let Some(k) = &r.trail.public_key {
                        println!("  checkpoint key {k} (pass --public-key to pin it)");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("FAILED: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn audit_verify(
    public_key: Option<PathBuf>,
    checkpoints: Option<PathBuf>,
    files: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let public_key = match public_key {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
            Some(
                base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .with_context(|| format!("{}: not a base64 public key", p.display()))?,
            )
        }
    };
    let mut ok = true;
    for file in files {
        let options = VerifyOptions { public_key: public_key.clone(), sidecar: checkpoints.clone() };
        match verify_trail(file, &options) {
            Ok(r) => {
                println!(
                    "{}: OK: {} records, {} checkpoints (last at seq {}), {} record(s) after the last checkpoint",
                    file.display(),
                    r.records,
                    r.checkpoints,
                    r.last_checkpoint.map_or("-".to_owned(), |s| s.to_string()),
                    r.unsealed
                );
                match (&options.public_key, &r.public_key) {
                    (None, Some(k)) => println!("  checkpoint key {k} (pass --public-key to pin it)"),
                    (_, None) => println!("  no checkpoint: signatures could not be checked"),
                    _ => {}
                }
                if r.sidecar.is_none() {
                    println!("  no checkpoint sidecar: truncation past the last checkpoint cannot be detected");
                }
                if !r.open.is_empty() {
                    // Not tampering: in flight if the gateway is running; otherwise its next
                    // start records them as interrupted.
                    const SHOWN: usize = 20;
                    let more = r.open.len().saturating_sub(SHOWN);
                    println!(
                        "  WARNING: {} transfer(s)/change(s) without an outcome (in flight, or left by a crash until the next start records them as interrupted): {}{}",
                        r.open.len(),
                        r.open.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", "),
                        if more > 0 { format!(" and {more} more") } else { String::new() }
                    );
                }
            }
            Err(e) => {
                eprintln!("TAMPERED {e}");
                ok = false;
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn add_key(config: &Path, user: &str, key_file: &Path) -> anyhow::Result<ExitCode> {
    let line = std::fs::read_to_string(key_file).with_context(|| format!("{}", key_file.display()))?;
    let line = line.lines().find(|l| !l.trim().is_empty() && !l.starts_with('#')).unwrap_or("").trim().to_owned();
    let key =
        gateway::sftp::keys::parse_authorized_key(&line).map_err(|e| anyhow::anyhow!("{}: {e}", key_file.display()))?;
    let text = std::fs::read_to_string(config).with_context(|| format!("{}", config.display()))?;
    let edited = gateway_config::add_authorized_key(&text, user, &line).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_, errors) = gateway_config::parse(&edited, &config.display().to_string());
    if let Some(e) = errors.first() {
        anyhow::bail!("the edited configuration would be invalid: {e}");
    }
    let tmp = config.with_extension("toml.tmp");
    std::fs::write(&tmp, edited).with_context(|| format!("{}", tmp.display()))?;
    std::fs::rename(&tmp, config).with_context(|| format!("{}", config.display()))?;
    println!("added {} to user {user} in {}", gateway::sftp::keys::describe(&key), config.display());
    println!("restart the gateway to apply it");
    Ok(ExitCode::SUCCESS)
}

fn users(command: UsersCommand) -> anyhow::Result<ExitCode> {
    let suffix = hex::encode(gateway::secrets::random_bytes::<4>()?);
    match command {
        UsersCommand::AddKey { config, user, public_key_file } => return add_key(&config, &user, &public_key_file),
        UsersCommand::Accounts(command) => return accounts_command::run(command),
        UsersCommand::Mfa { command } => return mfa_command::run(command),
        UsersCommand::Password => {
            let mut pw = zeroize::Zeroizing::new(String::new());
            std::io::stdin().read_line(&mut pw)?;
            let pw = pw.trim_end_matches(['\n', '\r']);
            if pw.len() < 12 {
                anyhow::bail!("passwords must be at least 12 characters");
            }
            println!("password_hash = \"{}\"", gateway::auth::hash_password(pw)?);
        }
        UsersCommand::New { name, tenant, home, permissions } => {
            let token = Token::mint(&format!("{name}-{suffix}"))?;
            let perms: Vec<String> = permissions.split(',').map(|p| format!("{:?}", p.trim())).collect();
            // Validate the stanza exactly as the gateway would before printing it.
            let stanza = format!(
                "[[users]]\nname = {name:?}\ntenant = {tenant:?}\nhome = {home:?}\npermissions = [{}]\n\n[[users.tokens]]\nid = \"{name}-{suffix}\"\nsha256 = \"{}\"\n",
                perms.join(", "),
                hex::encode(token.sha256())
            );
            let probe = format!("mode = \"production\"\n[[tenants]]\nname = {tenant:?}\n{stanza}");
            let (_, errors) = gateway_config::parse(&probe, "users new");
            if let Some(e) = errors.first() {
                anyhow::bail!("{}", e.message);
            }
            println!("# Add to the configuration:\n{stanza}");
            eprintln!("Token for {name} (shown once; only its hash is stored):\n{}", token.reveal());
        }
        UsersCommand::Token { user } => {
            let id = format!("{user}-{suffix}");
            let token = Token::mint(&id)?;
            println!(
                "# Add under the [[users]] entry of {user}:\n[[users.tokens]]\nid = \"{id}\"\nsha256 = \"{}\"\n",
                hex::encode(token.sha256())
            );
            eprintln!("Token (shown once; only its hash is stored):\n{}", token.reveal());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match gateway_config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} problem(s) found; not starting", errors.0.len());
            return Ok(ExitCode::FAILURE);
        }
    };
    let dev = prepare_development(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut gateway = Gateway::new(&config, &dev).await?;
        gateway.watch_config(path.to_owned());
        let listener = bind("https.listen", config.https.listen).await?;
        let addr = listener.local_addr()?;
        let sftp = match &config.sftp {
            Some(s) => Some(bind("sftp.listen", s.listen).await?),
            None => None,
        };
        let sftp_addr = sftp.as_ref().map(|l| l.local_addr()).transpose()?;
        let admin = match &config.admin {
            Some(a) => Some(bind("admin.listen", a.listen).await?),
            None => None,
        };
        let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
        let shutdown = shutdown_signal().context("cannot install the SIGINT/SIGTERM handlers")?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot install the SIGHUP handler")?;
        let reload = gateway.reload_trigger();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: looking at the certificate files and the configuration");
                reload.notify_one();
            }
        });
        print_banner(&config, &dev, addr);
        if let Some(sftp_addr) = sftp_addr {
            println!("SFTP listening on {sftp_addr}; host keys:");
            for line in gateway.host_key_fingerprints() {
                println!("  {line}");
            }
            if let Some(demo) = &dev.demo {
                println!(
                    "  add your key:  gateway users add-key --config {} {} ~/.ssh/id_ed25519.pub",
                    path.display(),
                    demo.user
                );
                println!("  then:          sftp -P {} {}@{}", sftp_addr.port(), demo.user, sftp_addr.ip());
            }
        }
        if let Some(a) = admin_addr {
            println!("admin listening on http://{a}/metrics (also /healthz, /readyz)");
        }
        gateway.run(gateway::Listeners { https: listener, sftp, admin }, shutdown).await;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Bind the listener configured at `field`, naming the field if that fails.
async fn bind(field: &str, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("{field}: cannot bind {addr}"))
}

/// SIGINT or SIGTERM. The handlers are installed when this is called, before the banner
/// tells anyone the server is up: a signal sent right after the banner must stop the
/// server gracefully rather than kill it.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("shutdown requested");
    })
}

fn print_banner(config: &gateway_config::Config, dev: &gateway::DevMaterial, addr: SocketAddr) {
    let host = if addr.ip().is_loopback() { "localhost".to_owned() } else { addr.ip().to_string() };
    println!("gateway listening on https://{host}:{}/v1/files/", addr.port());
    println!("audit trail: {}", config.audit.path.display());
    if config.mode != Mode::Development {
        return;
    }
    println!("DEVELOPMENT mode (config marks itself as development; never use it in production)");
    for g in &dev.generated {
        println!("  generated {g}");
    }
    if let (Some(ca), Some(demo)) = (&dev.ca_cert, &dev.demo) {
        let auth = format!("-H \"Authorization: Bearer $(cat {})\"", demo.path.display());
        let base = format!("https://{host}:{}/v1/files", addr.port());
        println!("dev CA: {}   demo user: {} (token in {})", ca.display(), demo.user, demo.path.display());
        println!("try:");
        println!("  curl --cacert {} {auth} -T README.md {base}/README.md", ca.display());
        println!("  curl --cacert {} {auth} {base}/README.md", ca.display());
        println!("  curl --cacert {} {auth} {base}/", ca.display());
    }
}

/// GET a plain-HTTP URL (the admin listener's `/healthz`) and succeed on 200: the container's
/// HEALTHCHECK, which has no shell or curl to call.
fn healthcheck(url: &str) -> anyhow::Result<ExitCode> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(3);
    let rest = url.strip_prefix("http://").context("healthcheck: only http:// URLs (the admin listener)")?;
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{p}")),
        None => (rest, "/".to_owned()),
    };
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("healthcheck: {authority}: not an address"))?
        .next()
        .with_context(|| format!("healthcheck: {authority}: no address"))?;
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, LIMIT).with_context(|| format!("healthcheck: {url}"))?;
    tcp.set_read_timeout(Some(LIMIT))?;
    tcp.set_write_timeout(Some(LIMIT))?;
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")?;
    let mut head = Vec::new();
    tcp.take(4096).read_to_end(&mut head).with_context(|| format!("healthcheck: {url}"))?;
    let text = String::from_utf8_lossy(&head);
    let status = text.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("healthcheck: {url}: {status}");
        Ok(ExitCode::FAILURE)
    }
}
