//! `gateway users list|disable|enable`: the accounts of a running gateway, through its admin
//! listener (`GET /users`, `POST /users/NAME/disable|enable`) with the admin token.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;

use crate::bans_command::{call, get_json, AdminArgs};

/// Account commands against the running gateway.
#[derive(Subcommand)]
pub enum AccountsCommand {
    /// List every account: user, tenant, status (active, disabled(config),
    /// disabled(operator), dormant, expired), last login.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Refuse every new login of NAME (HTTPS and SFTP) and end its open SFTP connections,
    /// without a restart. Audited.
    Disable {
        /// User name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Clear an operator's or a dormancy disable of NAME and restart its dormancy clock.
    /// (`disabled = true` in the configuration is undone only by editing it.) Audited.
    Enable {
        /// User name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Run a `gateway users list|disable|enable` command.
pub fn run(command: AccountsCommand) -> anyhow::Result<ExitCode> {
    match command {
        AccountsCommand::List { admin } => {
            let accounts: Vec<gateway::accounts::AccountInfo> = get_json(&admin, "/users")?;
            println!("{:<24} {:<16} {:<20} LAST LOGIN", "USER", "TENANT", "STATUS");
            for a in accounts {
                let last = a.last_login.unwrap_or_else(|| format!("never (first seen {})", a.first_seen));
                println!("{:<24} {:<16} {:<20} {last}", a.user, a.tenant, a.status.name());
            }
            Ok(ExitCode::SUCCESS)
        }
        AccountsCommand::Disable { name, admin } => change(&admin, &name, "disable"),
        AccountsCommand::Enable { name, admin } => change(&admin, &name, "enable"),
    }
}

fn change(admin: &AdminArgs, name: &str, verb: &str) -> anyhow::Result<ExitCode> {
    let encoded = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string();
    let (status, body) = call(admin, "POST", &format!("/users/{encoded}/{verb}"))?;
    match status {
        200 => {
            println!("{}", body.trim());
            Ok(ExitCode::SUCCESS)
        }
        404 => {
            eprintln!("{}", body.trim());
            Ok(ExitCode::from(2))
        }
        _ => bail!("POST /users/{name}/{verb}: {status} {}", body.trim()),
    }
}
