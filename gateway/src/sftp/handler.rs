//! One SSH connection: authentication (public key; password only where a user has one),
//! audit of every success and failure, and the `sftp` subsystem. Nothing else (shell, exec,
//! forwarding) is served.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use russh::keys::{Algorithm, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};
use tokio_util::sync::CancellationToken;

use super::budget::Budget;
use super::session::SessionLimits;
use super::wire::WireState;
use super::SftpShared;
use crate::audit::{AuditEntry, AuditEvent};
use crate::auth::{AuthFailure, Principal};
use crate::transfer::{ClientInfo, Protocol};

/// Session channels one connection may open.
const MAX_CHANNELS: usize = 4;

/// The authentication methods the server offers.
pub fn methods(passwords: bool) -> MethodSet {
    let mut set = MethodSet::empty();
    set.push(MethodKind::PublicKey);
    if passwords {
        set.push(MethodKind::Password);
    }
    set
}

/// What the server offers after a first factor, for a user that must pass a second.
fn second_factor_methods() -> MethodSet {
    let mut set = MethodSet::empty();
    set.push(MethodKind::KeyboardInteractive);
    set
}

/// The prompt of the second factor (echo off).
const CODE_PROMPT: &str = "Verification code: ";

/// Per-connection SSH handler.
pub struct SshConnection {
    shared: Arc<SftpShared>,
    peer: SocketAddr,
    wire: Arc<WireState>,
    principal: Option<Principal>,
    /// A first factor passed by a user that must also pass `mfa` (keyboard-interactive).
    mfa_pending: Option<(Principal, gateway_config::MfaMethod)>,
    channels: HashMap<ChannelId, Channel<Msg>>,
    opened: usize,
    /// Memory this connection's sessions may hold for the client.
    budget: Budget,
    /// Cancelled when the connection ends (or must end).
    stop: CancellationToken,
}

impl SshConnection {
    /// A handler for a connection from `peer`; `stop` ends the connection and its sessions.
    pub fn new(
        shared: Arc<SftpShared>,
        peer: SocketAddr,
        wire: Arc<WireState>,
        stop: CancellationToken,
    ) -> SshConnection {
        let budget = Budget::new(shared.connection_budget, shared.global_budget.clone());
        SshConnection {
            shared,
            peer,
            wire,
            principal: None,
            mfa_pending: None,
            channels: HashMap::new(),
            opened: 0,
            budget,
            stop,
        }
    }

    /// Connection details for the audit trail, from what the wire saw.
    fn client(&self) -> ClientInfo {
        let hello = self.wire.hello();
        let algs = &self.shared.algorithms;
        let negotiated = hello.as_ref().map(|h| h.negotiate(&algs.kex, &algs.ciphers, &algs.macs));
        ClientInfo {
            protocol: Protocol::Sftp,
            remote_addr: self.peer,
            tls_version: None,
            tls_cipher: None,
            client_cert: None,
            ssh_client: hello.map(|h| h.version.chars().filter(|c| !c.is_control()).take(255).collect()),
            ssh_kex: negotiated.as_ref().and_then(|n| n.kex.clone()),
            ssh_cipher: negotiated.as_ref().and_then(|n| n.cipher.clone()),
            ssh_mac: negotiated.and_then(|n| n.mac),
        }
    }

    async fn audit_failure(&self, method: &str, failure: AuthFailure) {
        if let Some(offence) = crate::defender::auth_offence(method, &failure) {
            self.shared.transfers.offence(self.peer.ip(), offence);
        }
        self.shared.transfers.alerts().auth_failure("sftp", self.peer.ip(), failure.user.as_deref());
        let entry = AuditEntry {
            user: failure.user,
            auth_method: Some(method.into()),
            credential_id: failure.credential_id,
            result: Some("error".into()),
            error: Some(failure.reason.into()),
            ..self.client().entry(AuditEvent::AuthFailure)
        };
        if let Err(e) = self.shared.transfers.audit_auth_failure(entry, self.peer.ip()).await {
            tracing::error!(error = %e, "could not audit an authentication failure");
        }
    }

    /// Record the success; refuses the login if the audit trail cannot take it.
    async fn accept(&mut self, who: Principal) -> Auth {
        let entry = AuditEntry { result: Some("ok".into()), ..self.client().user_entry(AuditEvent::AuthSuccess, &who) };
        match self.shared.transfers.audit().append(entry, false).await {
            Ok(_) => {
                // The dormancy clock restarts; an operator's disable ends this connection.
                self.shared.transfers.accounts().logged_in(&who.user);
                self.shared.transfers.accounts().watch_session(&who.user, self.stop.clone());
                self.principal = Some(who);
                Auth::Accept
            }
            Err(e) => {
                tracing::error!(error = %e, "audit unavailable; refusing login");
                self.reject()
            }
        }
    }

    /// A first factor passed: log in, or, for a user with `mfa`, answer partial success and
    /// wait for the code (keyboard-interactive). A user that cannot answer one (not enrolled,
    /// secret unreadable) is refused here, with the reason in the audit trail.
    async fn first_factor(&mut self, who: Principal, method: &str) -> Auth {
        let Some(mfa) = self.shared.directory.current().mfa_of(&who.user) else { return self.accept(who).await };
        if let Err(reason) = self.shared.directory.mfa().ready(&who.user, mfa) {
            let failure = AuthFailure {
                credential_id: Some(who.credential_id.clone()),
                user: Some(who.user.to_string()),
                reason,
            };
            self.shared.directory.mfa().failed("sftp", self.peer.ip(), &who.user, reason);
            self.audit_failure(method, failure).await;
            return self.reject();
        }
        self.mfa_pending = Some((who, mfa));
        Auth::Reject { proceed_with_methods: Some(second_factor_methods()), partial_success: true }
    }

    fn reject(&self) -> Auth {
        Auth::Reject { proceed_with_methods: Some(methods(self.shared.passwords)), partial_success: false }
    }

    /// Public-key checks shared by the probe and the signed request.
    fn check_key(&self, user: &str, key: &PublicKey, algorithm: &Algorithm) -> Result<Principal, AuthFailure> {
        if matches!(algorithm, Algorithm::Rsa { hash: None }) {
            return Err(AuthFailure {
                credential_id: Some(super::keys::fingerprint(key)),
                user: None,
                reason: "ssh-rsa (SHA-1) signatures are refused; use rsa-sha2-256/512",
            });
        }
        // The key, then the account (disabled, expired, dormant, source); the unsigned probe
        // too, so a refused account's client never gets as far as signing.
        self.shared
            .directory
            .current()
            .authenticate_publickey(user, key)
            .and_then(|who| self.shared.transfers.accounts().admit(who, self.peer.ip()))
    }
}

impl Handler for SshConnection {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(self.reject())
    }

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        match self.check_key(user, offer.public_key, offer.algorithm) {
            Ok(_) => Ok(Auth::Accept),
            Err(f) => {
                self.audit_failure("publickey", f).await;
                Ok(self.reject())
            }
        }
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        match self.check_key(user, key.public_key, key.algorithm) {
            Ok(who) => Ok(self.first_factor(who, "publickey").await),
            Err(f) => {
                self.audit_failure("publickey", f).await;
                Ok(self.reject())
            }
        }
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let directory = self.shared.directory.current();
        let (user_owned, pw) = (user.to_owned(), zeroize::Zeroizing::new(password.to_owned()));
        // PBKDF2 is deliberately slow: keep it off the async workers, and compute only a few
        // at once (known and unknown users alike) so guesses cannot take every core from
        // transfers. A guess waits its turn; the watchdog's login grace still applies.
        let busy = AuthFailure { credential_id: None, user: None, reason: "password check failed" };
        let Ok(_turn) = self.shared.password_checks.clone().acquire_owned().await else {
            self.audit_failure("password", busy).await;
            return Ok(self.reject());
        };
        let result = tokio::task::spawn_blocking(move || directory.authenticate_password(&user_owned, &pw))
            .await
            .unwrap_or(Err(busy))
            .and_then(|who| self.shared.transfers.accounts().admit(who, self.peer.ip()));
        match result {
            Ok(who) => Ok(self.first_factor(who, "password").await),
            Err(f) => {
                self.audit_failure("password", f).await;
                Ok(self.reject())
            }
        }
    }

    /// The second factor, only after a first one for the same user: the first request gets
    /// the prompt, the answer is checked (once-only codes). A refusal keeps the first factor
    /// and offers the prompt again; russh's `max_auth_attempts` bounds the tries.
    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let Some((who, mfa)) = self.mfa_pending.clone().filter(|(who, _)| &*who.user == user) else {
            return Ok(self.reject());
        };
        let Some(mut response) = response else {
            return Ok(Auth::Partial {
                name: "".into(),
                instructions: "".into(),
                prompts: vec![(CODE_PROMPT.into(), false)].into(),
            });
        };
        let answer = response.next().unwrap_or_default();
        let code = zeroize::Zeroizing::new(String::from_utf8_lossy(&answer).into_owned());
        match self.shared.directory.mfa().verify(user, mfa, &code) {
            Ok(()) => {
                self.mfa_pending = None;
                let method = if who.auth_method == "password" { "password+totp" } else { "publickey+totp" };
                Ok(self.accept(Principal { auth_method: method, ..who }).await)
            }
            Err(reason) => {
                self.shared.directory.mfa().failed("sftp", self.peer.ip(), user, reason);
                let failure =
                    AuthFailure { credential_id: Some(who.credential_id), user: Some(user.to_owned()), reason };
                self.audit_failure("keyboard-interactive", failure).await;
                Ok(Auth::Reject { proceed_with_methods: Some(second_factor_methods()), partial_success: false })
            }
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        self.wire.authenticated.store(true, Ordering::Release);
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.principal.is_none() || self.opened >= MAX_CHANNELS {
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        }
        self.opened += 1;
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn subsystem_request(&mut self, id: ChannelId, name: &str, session: &mut Session) -> Result<(), Self::Error> {
        match (name, self.channels.remove(&id), self.principal.clone()) {
            ("sftp", Some(channel), Some(who)) => {
                session.channel_success(id)?;
                let client = self.client();
                let shared = self.shared.clone();
                let limits = SessionLimits {
                    budget: self.budget.clone(),
                    stall_timeout: self.shared.idle_timeout,
                    stop: self.stop.clone(),
                    kill: self.shared.kill.clone(),
                };
                // Boxed: `run_until_cancelled_owned` is an `async fn`, whose state would hold
                // the session's future twice (as argument and as the awaited value).
                let session = Box::pin(super::session::run(channel, shared, who, client, limits));
                self.shared.sessions.spawn(self.shared.kill.clone().run_until_cancelled_owned(session));
            }
            _ => session.channel_failure(id)?,
        }
        Ok(())
    }

    async fn exec_request(&mut self, id: ChannelId, _data: &[u8], session: &mut Session) -> Result<(), Self::Error> {
        session.channel_failure(id)?;
        Ok(())
    }

    async fn shell_request(&mut self, id: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_failure(id)?;
        Ok(())
    }
}
