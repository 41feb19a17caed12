//! Account lifecycle settings: per user `disabled`, `expires_at`, `allowed_sources`; the
//! `[accounts]` table (`dormant_after`, `state_dir`). Parsed here, enforced by the gateway's
//! `accounts` module.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Cidr;

/// `[accounts]`: automatic disabling of unused accounts and where the login state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountsConfig {
    /// An account with no login for this long (counted from its last login, or from when
    /// the gateway first saw it) is disabled (default 90d; `"0"` or `"off"`: never).
    pub dormant_after: Option<Duration>,
    /// Directory of the login state file `accounts.json` (default `data_dir/accounts`).
    pub state_dir: PathBuf,
}

impl AccountsConfig {
    /// The defaults under `data_dir`.
    pub fn defaults(data_dir: &Path) -> AccountsConfig {
        AccountsConfig { dormant_after: Some(DEFAULT_DORMANT_AFTER), state_dir: data_dir.join("accounts") }
    }
}

/// 90 days, as PCI DSS 8.2.6 and NIST SP 800-53 AC-2(3) suggest for inactive accounts.
pub const DEFAULT_DORMANT_AFTER: Duration = Duration::from_secs(90 * 86_400);

/// What a `[[users]]` entry says about when and from where the account may log in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserAccount {
    /// `disabled = true`: no login at all, until the configuration says otherwise.
    pub disabled: bool,
    /// `expires_at`: no login from this instant on.
    pub expires_at: Option<SystemTime>,
    /// `allowed_sources`: when non-empty, logins only from these blocks.
    pub allowed_sources: Vec<Cidr>,
}

/// Parse an RFC 3339 date-time with an offset (`2027-01-31T00:00:00Z`,
/// `2027-01-31T18:00:00+01:00`; fractions of a second are ignored).
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    let hint = "expected an RFC 3339 date-time with an offset, such as \"2027-01-31T00:00:00Z\"";
    let dt: toml::value::Datetime = text.parse().map_err(|_| format!("invalid date-time {text:?}: {hint}"))?;
    datetime_to_system_time(&dt).map_err(|why| format!("{text:?}: {why}; {hint}"))
}

/// A TOML offset date-time as an instant; local date-times (no offset) and bare dates are
/// refused: they would mean different instants on different hosts.
pub(crate) fn datetime_to_system_time(dt: &toml::value::Datetime) -> Result<SystemTime, String> {
    let (Some(date), Some(time), Some(offset)) = (dt.date, dt.time, dt.offset) else {
        return Err("a date, a time and an offset (Z or +hh:mm) are all required".into());
    };
    let offset_minutes: i64 = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => i64::from(minutes),
    };
    let days = days_from_civil(i64::from(date.year), i64::from(date.month), i64::from(date.day));
    let secs = days * 86_400 + i64::from(time.hour) * 3600 + i64::from(time.minute) * 60 + i64::from(time.second)
        - offset_minutes * 60;
    let secs = u64::try_from(secs).map_err(|_| "before 1970".to_owned())?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_instants() {
        let at = |s| parse_rfc3339(s).unwrap().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(at("1970-01-01T00:00:00Z"), 0);
        assert_eq!(at("2000-03-01T00:00:00Z"), 951_868_800);
        assert_eq!(at("2026-12-04T20:41:46Z"), 1_796_416_906);
        assert_eq!(at("2026-12-04T21:41:46+01:00"), 1_796_416_906);
        assert_eq!(at("2026-12-04T20:41:46.999Z"), 1_796_416_906);
        for bad in ["2026-12-04", "2026-12-04T20:41:46", "tomorrow", "2026-13-01T00:00:00Z", "1969-12-31T23:59:59Z"] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    fn user(extra: &str) -> String {
        format!(
            "mode = \"production\"\ndata_dir = \"/srv/gw\"\n[[tenants]]\nname = \"t\"\n[[users]]\nname = \"u\"\ntenant = \"t\"\nhome = \"/\"\npermissions = [\"all\"]\n{extra}\n"
        )
    }

    fn errors(text: &str) -> Vec<String> {
        crate::parse(text, "test").1.into_iter().map(|e| format!("{}: {}", e.path, e.message)).collect()
    }

    #[test]
    fn defaults_and_values() {
        let (config, errs) = crate::parse(&user(""), "test");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(config.accounts.dormant_after, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(config.accounts.state_dir, Path::new("/srv/gw/accounts"));
        assert_eq!(config.users[0].account, UserAccount::default());
        assert_eq!(config.https.max_connection_duration, Duration::from_secs(3600));

        let text = user(
            "disabled = true\nexpires_at = \"2027-01-31T00:00:00Z\"\nallowed_sources = [\"10.0.0.0/8\", \"2001:db8::1\"]\n\
             [accounts]\ndormant_after = \"30d\"\nstate_dir = \"/var/lib/gw-accounts\"\n[sftp]\nmax_session_duration = \"2h\"\n\
             [https]\nmax_connection_duration = \"10m\"",
        );
        let (config, errs) = crate::parse(&text, "test");
        assert!(errs.is_empty(), "{errs:?}");
        let a = &config.users[0].account;
        assert!(a.disabled);
        assert_eq!(a.expires_at, Some(parse_rfc3339("2027-01-31T00:00:00Z").unwrap()));
        assert_eq!(a.allowed_sources.len(), 2);
        assert!(a.allowed_sources[0].contains("10.1.2.3".parse().unwrap()));
        assert_eq!(config.accounts.dormant_after, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(config.accounts.state_dir, Path::new("/var/lib/gw-accounts"));
        assert_eq!(config.sftp.unwrap().max_session_duration, Duration::from_secs(7200));
        assert_eq!(config.https.max_connection_duration, Duration::from_secs(600));

        // TOML's own date-time type is taken too.
        let (config, errs) = crate::parse(&user("expires_at = 2027-01-31T01:00:00+01:00"), "test");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(config.users[0].account.expires_at, Some(parse_rfc3339("2027-01-31T00:00:00Z").unwrap()));

        for off in ["\"off\"", "\"0\"", "\"0s\""] {
            let (config, errs) = crate::parse(&user(&format!("[accounts]\ndormant_after = {off}")), "test");
            assert!(errs.is_empty(), "{off}: {errs:?}");
            assert_eq!(config.accounts.dormant_after, None, "{off}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let got = errors(&user(
            "disabled = \"yes\"\nexpires_at = \"next week\"\nallowed_sources = [\"10.0.0.1/8\", 7]\n\
             [accounts]\ndormant_after = \"90 days\"\ncolour = 1\n[sftp]\nmax_session_duration = \"0s\"",
        ));
        let want = [
            "users[0].disabled: expected true or false",
            "users[0].expires_at: invalid date-time \"next week\"",
            "users[0].allowed_sources[0]: \"10.0.0.1/8\" has host bits set",
            "users[0].allowed_sources[1]: expected a string",
            "accounts.dormant_after: invalid duration \"90 days\"",
            "accounts.colour: unknown key \"colour\" (accepted: dormant_after, state_dir)",
            "sftp.max_session_duration: must be greater than 0",
        ];
        for w in want {
            assert!(got.iter().any(|g| g.starts_with(w)), "missing {w:?} in {got:#?}");
        }
        let got = errors(&user("expires_at = 2027-01-31T00:00:00"));
        assert!(got.iter().any(|g| g.starts_with("users[0].expires_at:") && g.contains("offset")), "{got:#?}");
    }
}
