//! `gateway bans list|remove ADDR`: the defender's bans of a running gateway, through its
//! admin listener (`GET /bans`, `DELETE /bans/ADDR`) with the admin token.

use std::io::{Read, Write};
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

/// Longest the admin listener may take to answer.
const LIMIT: Duration = Duration::from_secs(10);
/// Largest answer read.
const MAX_ANSWER: u64 = 4 << 20;

/// Where the admin listener is and how to authenticate to it.
#[derive(Args)]
pub struct AdminArgs {
    /// The admin listener (`[admin] listen`).
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    url: String,
    /// File holding the admin token (`[admin] token_file`).
    #[arg(long)]
    token_file: PathBuf,
}

/// What to do with the bans.
#[derive(Subcommand)]
pub enum BansCommand {
    /// List the sources banned now (source, end of the ban, offences).
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// End the ban on ADDR: an address, or an IPv6 network as `list` shows it.
    Remove {
        /// The source to admit again.
        addr: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Run a `gateway bans` command.
pub fn run(command: BansCommand) -> anyhow::Result<ExitCode> {
    match command {
        BansCommand::List { admin } => {
            let bans: Vec<gateway::defender::BanInfo> = get_json(&admin, "/bans")?;
            if bans.is_empty() {
                println!("no bans");
            } else {
                println!("{:<44} {:<22} OFFENCES", "SOURCE", "UNTIL");
                for b in bans {
                    println!("{:<44} {:<22} {}", b.source, b.until, b.offences);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BansCommand::Remove { addr, admin } => {
            let encoded = percent_encoding::utf8_percent_encode(&addr, percent_encoding::NON_ALPHANUMERIC).to_string();
            let (status, body) = call(&admin, "DELETE", &format!("/bans/{encoded}"))?;
            match status {
                200 => {
                    println!("{}", body.trim());
                    Ok(ExitCode::SUCCESS)
                }
                404 => {
                    eprintln!("{}", body.trim());
                    Ok(ExitCode::from(2))
                }
                _ => bail!("DELETE /bans/{addr}: {status} {}", body.trim()),
            }
        }
    }
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--token-file {}", path.display()))?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        bail!("--token-file {}: empty", path.display());
    }
    Ok(token)
}

/// GET `path` from the admin listener and parse its JSON answer; anything but 200 is an
/// error carrying the status and body.
pub(crate) fn get_json<T: serde::de::DeserializeOwned>(admin: &AdminArgs, path: &str) -> anyhow::Result<T> {
    let (status, body) = call(admin, "GET", path)?;
    if status != 200 {
        bail!("GET {path}: {status} {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("GET {path}: the answer is not the expected JSON"))
}

/// One HTTP/1.1 request to the admin listener: (status, body).
pub(crate) fn call(admin: &AdminArgs, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let token = read_token(&admin.token_file)?;
    let rest = admin.url.strip_prefix("http://").context("--url: only http:// URLs (the admin listener)")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("--url: {authority}: not an address"))?
        .next()
        .with_context(|| format!("--url: {authority}: no address"))?;
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, LIMIT).with_context(|| admin.url.clone())?;
    tcp.set_read_timeout(Some(LIMIT))?;
    tcp.set_write_timeout(Some(LIMIT))?;
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    tcp.take(MAX_ANSWER).read_to_end(&mut answer).with_context(|| admin.url.clone())?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("{}: not an HTTP answer", admin.url))?;
    Ok((status, body.to_owned()))
}
