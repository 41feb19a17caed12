//! The second factor: per-user TOTP (RFC 6238), for users whose configuration says
//! `mfa = "totp"` (HMAC-SHA-256) or `mfa = "totp-sha1"`.
//!
//! * Secrets are enrolled by `gateway users mfa enroll NAME` and kept sealed on disk
//!   ([`store`]); the running gateway reads them on demand at each check, so a new or
//!   replaced enrolment counts at once, without restart or reload.
//! * A code is good for one login: the last step accepted is remembered per user, and a code
//!   of that step or an older one is refused as a replay. The memory is this process's: with
//!   several nodes, a code used on one node can be used once more on another within its
//!   90-second window (per-node replay protection).
//! * SFTP: after a valid public key (or password) the server answers partial success and
//!   asks for the code by keyboard-interactive (`sftp/handler.rs`). HTTPS: a bearer token
//!   with a client certificate bound to the user is two factors; otherwise the code comes in
//!   `X-Gateway-TOTP` and is checked once per connection ([`HttpsSession`]).
//! * Refused codes are auth failures like any other (audit record with the reason, the
//!   defender's score, the alert threshold of `[alerts]`) and, per user,
//!   [`ALERT_AFTER`] of them within [`ALERT_WINDOW`] raise one `mfa_failure` alert.

pub mod store;
pub mod totp;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use gateway_config::MfaMethod;

use crate::alerts::{Alert, Alerts, Scope, Severity};
use crate::auth::{AuthFailure, Directory, Principal};
use store::Store;
use totp::Algorithm;

/// Refused second factors of one user within [`ALERT_WINDOW`] that raise an `mfa_failure`
/// alert (then quiet for a window; later failures go into the next alert).
pub const ALERT_AFTER: u64 = 3;
/// See [`ALERT_AFTER`].
pub const ALERT_WINDOW: Duration = Duration::from_secs(600);
/// Users tracked for alerts (a refused second factor needs a valid first one, so these are
/// configured users; the bound is a backstop).
const MAX_TRACKED: usize = 10_000;
/// The HTTPS header that carries a code.
pub const HEADER: &str = "x-gateway-totp";

struct Failures {
    since: Instant,
    count: u64,
    sources: Vec<String>,
    reasons: Vec<&'static str>,
    quiet_until: Option<Instant>,
}

impl Failures {
    fn new(now: Instant) -> Failures {
        Failures { since: now, count: 0, sources: Vec::new(), reasons: Vec::new(), quiet_until: None }
    }
}

/// Checks second factors; one per process, held by [`crate::auth::Users`].
pub struct Mfa {
    store: Option<Store>,
    /// Last step accepted, per user (replay protection).
    last_step: Mutex<HashMap<String, u64>>,
    failures: Mutex<HashMap<String, Failures>>,
    alerts: Alerts,
}

impl std::fmt::Debug for Mfa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mfa").field("store", &self.store).finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Mfa {
    /// No store: every user that requires MFA is refused.
    pub fn disabled() -> Mfa {
        Mfa {
            store: None,
            last_step: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            alerts: Alerts::disabled(),
        }
    }

    /// Secrets from `[mfa]`, failures alerted to `alerts`.
    pub fn new(config: &gateway_config::MfaConfig, alerts: Alerts) -> Mfa {
        Mfa { store: Some(Store::new(config)), alerts, ..Mfa::disabled() }
    }

    /// Whether `user` can answer a code at all (enrolled, secret readable, for the configured
    /// algorithm); the reason for the audit trail when not.
    pub fn ready(&self, user: &str, method: MfaMethod) -> Result<(), &'static str> {
        self.secret(user, method).map(drop)
    }

    fn secret(&self, user: &str, method: MfaMethod) -> Result<store::TotpSecret, &'static str> {
        let store = self.store.as_ref().ok_or("mfa required but no [mfa] store is configured")?;
        match store.load(user) {
            Ok(Some(secret)) if secret.algorithm == Algorithm::of(method) => Ok(secret),
            Ok(Some(_)) => Err("mfa enrolment is for another algorithm than the user's mfa setting; enrol again"),
            Ok(None) => Err("mfa required but the user is not enrolled"),
            Err(e) => {
                // The error names the file and the problem, never the content.
                tracing::error!(user, error = %e, "cannot read an MFA secret");
                Err("mfa secret cannot be read")
            }
        }
    }

    /// Check `code` for `user` now; a code is accepted once.
    pub fn verify(&self, user: &str, method: MfaMethod, code: &str) -> Result<(), &'static str> {
        self.verify_at(user, method, code, unix_now())
    }

    /// [`Mfa::verify`] at `unix_seconds`.
    pub fn verify_at(&self, user: &str, method: MfaMethod, code: &str, unix_seconds: u64) -> Result<(), &'static str> {
        let secret = self.secret(user, method)?;
        let mut last = self.last_step.lock().unwrap_or_else(PoisonError::into_inner);
        let step = totp::verify(&secret.bytes, secret.algorithm, code, unix_seconds, last.get(user).copied())
            .map_err(totp::Refusal::reason)?;
        last.insert(user.to_owned(), step);
        Ok(())
    }

    /// Count a refused second factor; the [`ALERT_AFTER`]th of a user within
    /// [`ALERT_WINDOW`] raises one `mfa_failure` alert.
    pub fn failed(&self, protocol: &'static str, source: IpAddr, user: &str, reason: &'static str) {
        self.failed_at(protocol, source, user, reason, Instant::now());
    }

    fn failed_at(&self, protocol: &'static str, source: IpAddr, user: &str, reason: &'static str, now: Instant) {
        if !self.alerts.enabled() {
            return;
        }
        let (count, sources, reasons) = {
            let mut map = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            if map.len() >= MAX_TRACKED && !map.contains_key(user) {
                map.retain(|_, f| now.saturating_duration_since(f.since) < ALERT_WINDOW);
                if map.len() >= MAX_TRACKED {
                    return;
                }
            }
            let f = map.entry(user.to_owned()).or_insert_with(|| Failures::new(now));
            let quiet = f.quiet_until.is_some_and(|q| q > now);
            if !quiet && now.saturating_duration_since(f.since) >= ALERT_WINDOW {
                *f = Failures::new(now);
            }
            f.count += 1;
            let source = source.to_string();
            if f.sources.len() < 20 && !f.sources.contains(&source) {
                f.sources.push(source);
            }
            if !f.reasons.contains(&reason) {
                f.reasons.push(reason);
            }
            if quiet || f.count < ALERT_AFTER {
                return;
            }
            let taken = (f.count, std::mem::take(&mut f.sources), std::mem::take(&mut f.reasons));
            *f = Failures { quiet_until: Some(now + ALERT_WINDOW), ..Failures::new(now) };
            taken
        };
        let minutes = ALERT_WINDOW.as_secs() / 60;
        self.alerts.raise(Alert {
            severity: Severity::Warning,
            kind: "mfa_failure",
            nature: format!(
                "{count} refused second factors for user {user} over {protocol} within {minutes} minutes, each after a valid first factor ({})",
                reasons.join("; ")
            ),
            scope: Scope { protocol: Some(protocol), users: vec![user.to_owned()], sources: sources.clone(), count, ..Scope::default() },
            actions_taken: vec![
                "every attempt was refused and recorded in the audit trail (auth_failure with the reason)".into(),
                "each refusal counts as an authentication failure for the defender".into(),
            ],
            remediation: vec![
                format!("if {user} did not try to log in, treat the user's key, password or token as stolen: revoke it and issue a new one"),
                format!("if the codes come from a wrong or lost authenticator, enrol again: gateway users mfa enroll --force {user}"),
            ],
            next_steps: vec![
                format!("search the audit trail for auth_failure and auth_success records of user {user}"),
                format!("check the sources ({}) against the user's known locations", sources.join(", ")),
            ],
        });
    }

    /// HTTPS: the second factor for `who` (already authenticated by token and/or client
    /// certificate). Users without MFA and token + bound certificate pass as they are; a
    /// connection that passed a code keeps it for the same credential; otherwise `code` (the
    /// `X-Gateway-TOTP` header) is checked and, if good, remembered in `session`.
    pub fn check_https(
        &self,
        directory: &Directory,
        who: Principal,
        code: Option<&str>,
        session: &HttpsSession,
        source: IpAddr,
    ) -> Result<Principal, AuthFailure> {
        let Some(method) = directory.mfa_of(&who.user) else { return Ok(who) };
        if who.auth_method == "bearer+client_certificate" {
            return Ok(who);
        }
        let with_code = match who.auth_method {
            "client_certificate" => "client_certificate+totp",
            _ => "bearer+totp",
        };
        let mut verified = session.0.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.as_deref() == Some(who.credential_id.as_str()) {
            return Ok(Principal { auth_method: with_code, ..who });
        }
        let result = match code {
            None => Err("mfa required: no X-Gateway-TOTP header and no client certificate bound to the user"),
            Some(code) => self.verify(&who.user, method, code),
        };
        match result {
            Ok(()) => {
                *verified = Some(who.credential_id.clone());
                Ok(Principal { auth_method: with_code, ..who })
            }
            Err(reason) => {
                drop(verified);
                self.failed("https", source, &who.user, reason);
                Err(AuthFailure { credential_id: Some(who.credential_id), user: Some(who.user.to_string()), reason })
            }
        }
    }
}

/// An HTTPS connection's passed second factor: the credential id it was passed with. Later
/// requests on the same connection with the same credential need no new code.
#[derive(Debug, Default)]
pub struct HttpsSession(Mutex<Option<String>>);

#[cfg(test)]
mod tests {
    use super::*;

    fn mfa(dir: &std::path::Path) -> (Mfa, Store) {
        let config =
            gateway_config::MfaConfig { key_file: dir.join("k"), secrets_dir: dir.join("s"), issuer: "gateway".into() };
        (Mfa::new(&config, Alerts::disabled()), Store::new(&config))
    }

    #[test]
    fn verify_once_per_step_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let (m, s) = mfa(dir.path());
        let t = 1_700_000_000;
        assert_eq!(
            m.verify_at("alice", MfaMethod::TotpSha256, "123456", t),
            Err("mfa required but the user is not enrolled")
        );
        assert_eq!(
            Mfa::disabled().ready("alice", MfaMethod::TotpSha256),
            Err("mfa required but no [mfa] store is configured")
        );
        let secret = store::TotpSecret::generate(Algorithm::Sha256).unwrap();
        s.save("alice", &secret, false).unwrap();
        assert!(m.ready("alice", MfaMethod::TotpSha256).is_ok());
        assert!(m.ready("alice", MfaMethod::TotpSha1).unwrap_err().contains("another algorithm"));
        let code = |at: u64| format!("{:06}", totp::hotp(&secret.bytes, Algorithm::Sha256, totp::step(at), 6));
        let wrong = format!("{:06}", (code(t).parse::<u32>().unwrap() + 1) % 1_000_000);
        assert_eq!(m.verify_at("alice", MfaMethod::TotpSha256, &wrong, t), Err("wrong mfa code"));
        assert_eq!(m.verify_at("alice", MfaMethod::TotpSha256, &code(t), t), Ok(()));
        assert_eq!(m.verify_at("alice", MfaMethod::TotpSha256, &code(t), t + 1), Err("mfa code already used (replay)"));
        assert_eq!(m.verify_at("alice", MfaMethod::TotpSha256, &code(t + 30), t + 30), Ok(()));
        assert_eq!(m.verify_at("alice", MfaMethod::TotpSha256, "12345", t + 60), Err("mfa code is not 6 digits"));
        // Replay memory is per user: bob's first code of a step alice used is fine.
        let bob = store::TotpSecret::generate(Algorithm::Sha256).unwrap();
        s.save("bob", &bob, false).unwrap();
        let bob_code = format!("{:06}", totp::hotp(&bob.bytes, Algorithm::Sha256, totp::step(t + 30), 6));
        assert_eq!(m.verify_at("bob", MfaMethod::TotpSha256, &bob_code, t + 30), Ok(()));
    }

    fn principal(directory: &Directory, token: &crate::secrets::Token) -> Principal {
        directory.authenticate_bearer(Some(&format!("Bearer {}", token.reveal()))).unwrap()
    }

    #[test]
    fn https_second_factor() {
        let dir = tempfile::tempdir().unwrap();
        let (m, s) = mfa(dir.path());
        let (alice, bob) =
            (crate::secrets::Token::mint("alice-1").unwrap(), crate::secrets::Token::mint("bob-1").unwrap());
        let text = format!(
            "mode = \"production\"\n[[tenants]]\nname = \"acme\"\n\
             [[users]]\nname = \"alice\"\ntenant = \"acme\"\nhome = \"/\"\npermissions = [\"read\"]\nmfa = \"totp\"\n\
             [[users.tokens]]\nid = \"alice-1\"\nsha256 = \"{}\"\n\
             [[users]]\nname = \"bob\"\ntenant = \"acme\"\nhome = \"/\"\npermissions = [\"read\"]\n\
             [[users.tokens]]\nid = \"bob-1\"\nsha256 = \"{}\"\n",
            hex::encode(alice.sha256()),
            hex::encode(bob.sha256())
        );
        let (config, errors) = gateway_config::parse(&text, "test");
        assert!(errors.is_empty(), "{errors:?}");
        let directory = Directory::from_config(&config).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let session = HttpsSession::default();
        // No MFA: unchanged.
        let who = m.check_https(&directory, principal(&directory, &bob), None, &session, ip).unwrap();
        assert_eq!(who.auth_method, "bearer");
        // MFA, no code; not enrolled: refused with the reason, the user and token id kept.
        let f = m.check_https(&directory, principal(&directory, &alice), None, &session, ip).unwrap_err();
        assert!(f.reason.starts_with("mfa required: no X-Gateway-TOTP"), "{}", f.reason);
        assert_eq!((f.user.as_deref(), f.credential_id.as_deref()), (Some("alice"), Some("alice-1")));
        let f = m.check_https(&directory, principal(&directory, &alice), Some("123456"), &session, ip).unwrap_err();
        assert_eq!(f.reason, "mfa required but the user is not enrolled");
        // Enrolled: a good code passes and is remembered for this connection only.
        let secret = store::TotpSecret::generate(Algorithm::Sha256).unwrap();
        s.save("alice", &secret, false).unwrap();
        let now = unix_now();
        let code = format!("{:06}", totp::hotp(secret.expose(), Algorithm::Sha256, totp::step(now), 6));
        let who = m.check_https(&directory, principal(&directory, &alice), Some(&code), &session, ip).unwrap();
        assert_eq!(who.auth_method, "bearer+totp");
        let who = m.check_https(&directory, principal(&directory, &alice), None, &session, ip).unwrap();
        assert_eq!(who.auth_method, "bearer+totp");
        let other = HttpsSession::default();
        let f = m.check_https(&directory, principal(&directory, &alice), Some(&code), &other, ip).unwrap_err();
        assert_eq!(f.reason, "mfa code already used (replay)");
        // Token + bound certificate: two factors, no code asked.
        let both = Principal { auth_method: "bearer+client_certificate", ..principal(&directory, &alice) };
        assert!(m.check_https(&directory, both, None, &HttpsSession::default(), ip).is_ok());
        // A refused code is an auth failure of a known user for the defender.
        assert_eq!(
            crate::defender::auth_offence("keyboard-interactive", &f),
            Some(crate::defender::Offence::AuthFailedKnownUser)
        );
    }

    #[tokio::test]
    async fn alert_after_three_failures_per_user_then_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let config = gateway_config::AlertsConfig {
            webhook_url: "http://127.0.0.1:9/hook".into(),
            hmac_key_file: dir.path().join("hmac.key"),
            ca_file: None,
            timeout: Duration::from_secs(1),
            max_outbox: 100,
            min_severity: Severity::Info,
            auth_failure_threshold: 5,
            auth_failure_window: Duration::from_secs(600),
            syslog: None,
        };
        crate::secrets::write_secret_file(&config.hmac_key_file, &[b'k'; 40]).unwrap();
        let alerts = Alerts::open(&config, dir.path()).unwrap();
        let (m, _) = mfa(dir.path());
        let m = Mfa { alerts: alerts.clone(), ..m };
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        m.failed_at("sftp", ip, "alice", "wrong mfa code", at(0));
        m.failed_at("sftp", ip, "alice", "wrong mfa code", at(1));
        m.failed_at("sftp", ip, "bob", "wrong mfa code", at(1));
        // The third of alice's raises the alert ...
        m.failed_at("https", ip, "alice", "mfa code already used (replay)", at(2));
        // ... then quiet for the window, even past the threshold again.
        for i in 3..8 {
            m.failed_at("sftp", ip, "alice", "wrong mfa code", at(i));
        }
        // Failures spread wider than the window never add up.
        for i in 1..4 {
            m.failed_at("sftp", ip, "carol", "wrong mfa code", t0 + ALERT_WINDOW * i);
        }
        alerts.close().await;
        let files: Vec<_> =
            std::fs::read_dir(dir.path().join("alerts/outbox")).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
        assert_eq!(v["kind"], "mfa_failure");
        assert_eq!(v["scope"]["count"], 3);
        assert_eq!(v["scope"]["users"], serde_json::json!(["alice"]));
        assert_eq!(v["scope"]["sources"], serde_json::json!(["192.0.2.7"]));
        let nature = v["nature"].as_str().unwrap();
        assert!(nature.contains("wrong mfa code") && nature.contains("replay"), "{nature}");
    }
}
