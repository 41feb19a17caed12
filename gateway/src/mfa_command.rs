//! `gateway users mfa enroll NAME`: a fresh TOTP secret for a user, sealed into the `[mfa]`
//! store, shown once as an `otpauth://` URI and a QR code for the user's authenticator app.
//! The running gateway reads the store at each login, so the enrolment counts at once.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use gateway::mfa::store::{Store, TotpSecret};
use gateway::mfa::totp::{self, Algorithm};

/// Second-factor enrolment.
#[derive(Subcommand)]
pub enum MfaCommand {
    /// Create a TOTP secret for NAME (HMAC-SHA-256, or SHA-1 for `mfa = "totp-sha1"`), seal
    /// it under `[mfa] key_file` (created on first use, 0600) and print the `otpauth://` URI
    /// and its QR code. The secret is shown only here.
    Enroll {
        /// Configuration file (its `[[users]]` and `[mfa]`).
        #[arg(long, default_value = super::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Replace an existing enrolment (the old secret stops working at once).
        #[arg(long)]
        force: bool,
        /// Do not print the QR code (the URI only).
        #[arg(long)]
        no_qr: bool,
        /// User name.
        name: String,
    },
}

/// Run an `mfa` subcommand.
pub fn run(command: MfaCommand) -> anyhow::Result<ExitCode> {
    let MfaCommand::Enroll { config: path, force, no_qr, name } = command;
    let config = match gateway_config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let Some(user) = config.users.iter().find(|u| u.name == name) else {
        bail!("{}: no user {name:?} in [[users]]", path.display());
    };
    let method = user.mfa.unwrap_or(gateway_config::MfaMethod::TotpSha256);
    let algorithm = Algorithm::of(method);
    let secret = TotpSecret::generate(algorithm)?;
    let store = Store::new(&config.mfa);
    let file = store.save(&name, &secret, force).context("cannot store the MFA secret")?;
    let uri = totp::uri(&config.mfa.issuer, &name, secret.expose(), algorithm);
    println!("{}", uri.as_str());
    if !no_qr {
        let code = qrcode::QrCode::new(uri.as_bytes()).context("the URI does not fit a QR code")?;
        // Light modules drawn, dark left blank: reads on the usual dark terminal background.
        let image = code
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build();
        println!("{image}");
    }
    eprintln!(
        "enrolled {name} ({}, {} digits, {} s): sealed in {}",
        algorithm.uri_name(),
        totp::DIGITS,
        totp::PERIOD,
        file.display()
    );
    eprintln!("scan the QR code (or paste the URI) into the user's authenticator app; it is not shown again");
    if user.mfa.is_none() {
        eprintln!("note: {name} has no mfa = \"totp\" in {} yet; codes are asked only once it has", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
