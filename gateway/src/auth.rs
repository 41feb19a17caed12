//! Who may log in, and as whom: users, tenants, homes, permissions and credentials.
//!
//! Bearer tokens are stored only as SHA-256 hashes and compared in constant time. A token
//! names its credential id (`gw1.<id>.<secret>`), so the lookup is by id; an unknown id still
//! costs one hash and one comparison, and the client sees the same answer either way.

use std::collections::HashMap;
use std::sync::Arc;

use gateway_certs::PeerCert;
use gateway_config::{CertBinding, Config, Permissions};

use crate::path::ObjectKey;
use crate::secrets::Token;

/// An authenticated user, as every frontend hands it to the transfer path.
/// Holds no secret: only the credential's id.
#[derive(Debug, Clone)]
pub struct Principal {
    /// User name.
    pub user: Arc<str>,
    /// The user's tenant (selects the storage key).
    pub tenant: Arc<str>,
    /// Tenant-relative prefix the user is confined to.
    pub home: ObjectKey,
    /// What the user may do.
    pub permissions: Permissions,
    /// `bearer`, `publickey`, …
    pub auth_method: &'static str,
    /// Token id or key fingerprint.
    pub credential_id: String,
}

/// A refused login; `credential_id` and `user` are what the client claimed, for the audit.
#[derive(Debug, Clone)]
pub struct AuthFailure {
    /// The claimed credential id, if one could be read.
    pub credential_id: Option<String>,
    /// The user that credential belongs to, if it exists.
    pub user: Option<String>,
    /// Why, for the audit trail only (clients always see the same answer).
    pub reason: &'static str,
}

struct UserEntry {
    name: Arc<str>,
    tenant: Arc<str>,
    home: ObjectKey,
    permissions: Permissions,
    /// Parsed `authorized_keys` with their fingerprints.
    ssh_keys: Vec<(russh::keys::PublicKey, String)>,
    /// PBKDF2 parameters; password login is off when absent.
    password: Option<PasswordHash>,
    /// Client certificates bound to the user; when any, HTTPS requires one of them.
    client_certs: Vec<CertBinding>,
    /// Second factor required after the first (`mfa = "totp"`).
    mfa: Option<gateway_config::MfaMethod>,
    /// When and from where the account may log in (checked by [`crate::accounts`]).
    account: gateway_config::UserAccount,
}

/// `pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>`, parsed.
struct PasswordHash {
    iterations: std::num::NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl PasswordHash {
    fn parse(text: &str) -> Result<PasswordHash, String> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut parts = text.split('$');
        let (Some("pbkdf2-sha256"), Some(iter), Some(salt), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("expected pbkdf2-sha256$<iterations>$<salt>$<hash>".into());
        };
        Ok(PasswordHash {
            iterations: iter.parse().map_err(|_| "bad iteration count".to_owned())?,
            salt: b64.decode(salt).map_err(|_| "salt is not base64".to_owned())?,
            hash: b64.decode(hash).map_err(|_| "hash is not base64".to_owned())?,
        })
    }

    fn verify(&self, password: &str) -> bool {
        aws_lc_rs::pbkdf2::verify(
            aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
            self.iterations,
            &self.salt,
            password.as_bytes(),
            &self.hash,
        )
        .is_ok()
    }
}

/// Iterations used by `gateway users password`.
pub const PBKDF2_ITERATIONS: u32 = 600_000;

/// Hash a password for the configuration (`password_hash`).
pub fn hash_password(password: &str) -> Result<String, crate::secrets::SecretError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let salt = crate::secrets::random_bytes::<16>()?;
    let mut out = [0u8; 32];
    let iterations = std::num::NonZeroU32::new(PBKDF2_ITERATIONS).unwrap_or(std::num::NonZeroU32::MIN);
    aws_lc_rs::pbkdf2::derive(aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256, iterations, &salt, password.as_bytes(), &mut out);
    Ok(format!("pbkdf2-sha256${PBKDF2_ITERATIONS}${}${}", b64.encode(salt), b64.encode(out)))
}

struct TokenEntry {
    user: Arc<UserEntry>,
    sha256: [u8; 32],
}

/// All users and their credentials, built once from the configuration.
pub struct Directory {
    users: HashMap<String, Arc<UserEntry>>,
    tokens: HashMap<String, TokenEntry>,
    /// Client-certificate bindings → their user (the configuration allows one user each).
    certs: HashMap<CertBinding, Arc<UserEntry>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").field("users", &self.users.len()).field("tokens", &self.tokens.len()).finish()
    }
}

/// The directory in force, replaced whole when the configuration is reloaded. Every
/// authentication reads the directory of its moment; a session keeps the principal it
/// logged in with.
#[derive(Debug)]
pub struct Users {
    current: std::sync::RwLock<Arc<Directory>>,
    /// Second-factor checks (secrets read on demand, replay memory), fixed at start.
    mfa: crate::mfa::Mfa,
}

impl Users {
    /// Start with `directory`.
    pub fn new(directory: Directory) -> Users {
        Users { current: std::sync::RwLock::new(Arc::new(directory)), mfa: crate::mfa::Mfa::disabled() }
    }

    /// Check second factors with `mfa` (without it, users that require MFA cannot log in).
    pub fn with_mfa(self, mfa: crate::mfa::Mfa) -> Users {
        Users { mfa, ..self }
    }

    /// The second-factor checks.
    pub fn mfa(&self) -> &crate::mfa::Mfa {
        &self.mfa
    }

    /// The directory in force now.
    pub fn current(&self) -> Arc<Directory> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Put `directory` in force for every authentication from now on.
    pub fn replace(&self, directory: Directory) {
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(directory);
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    // Fold every byte difference; no early exit.
    let diff = a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl Directory {
    /// Build from a validated configuration; every unusable key or hash is reported, with
    /// its field path.
    pub fn from_config(config: &Config) -> Result<Directory, Vec<String>> {
        let mut dir = Directory { users: HashMap::new(), tokens: HashMap::new(), certs: HashMap::new() };
        let mut errors = Vec::new();
        for (i, u) in config.users.iter().enumerate() {
            let home = match ObjectKey::home(&u.home) {
                Ok(h) => h,
                Err(e) => {
                    errors.push(format!("users[{i}].home: {e}"));
                    continue;
                }
            };
            let mut ssh_keys = Vec::new();
            for (j, line) in u.authorized_keys.iter().enumerate() {
                match crate::sftp::keys::parse_authorized_key(line) {
                    Ok(k) => {
                        let fp = crate::sftp::keys::fingerprint(&k);
                        ssh_keys.push((k, fp));
                    }
                    Err(e) => errors.push(format!("users[{i}].authorized_keys[{j}]: {e}")),
                }
            }
            let password = match u.password_hash.as_ref().map(|h| PasswordHash::parse(h.as_str())) {
                None => None,
                Some(Ok(h)) => Some(h),
                Some(Err(e)) => {
                    errors.push(format!("users[{i}].password_hash: {e}"));
                    None
                }
            };
            let entry = Arc::new(UserEntry {
                name: u.name.as_str().into(),
                tenant: u.tenant.as_str().into(),
                home,
                permissions: u.permissions,
                ssh_keys,
                password,
                client_certs: u.client_certificates.clone(),
                mfa: u.mfa,
                account: u.account.clone(),
            });
            for b in &u.client_certificates {
                dir.certs.insert(b.clone(), entry.clone());
            }
            dir.users.insert(u.name.clone(), entry);
            for t in &u.tokens {
                if let Err(e) = dir.add_token(&u.name, &t.id, t.sha256) {
                    errors.push(format!("users[{i}].tokens: {e}"));
                }
            }
        }
        if errors.is_empty() {
            Ok(dir)
        } else {
            Err(errors)
        }
    }

    /// The user names, sorted.
    pub fn user_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.users.keys().cloned().collect();
        names.sort();
        names
    }

    /// The tenant and account settings of `user`, if configured.
    pub fn account(&self, user: &str) -> Option<(&str, &gateway_config::UserAccount)> {
        self.users.get(user).map(|u| (&*u.tenant, &u.account))
    }

    /// Every user as (name, tenant, account settings), sorted by name.
    pub fn accounts(&self) -> Vec<(&str, &str, &gateway_config::UserAccount)> {
        let mut all: Vec<_> = self.users.values().map(|u| (&*u.name, &*u.tenant, &u.account)).collect();
        all.sort_by_key(|(name, _, _)| *name);
        all
    }

    /// The second factor `user` must pass, if any.
    pub fn mfa_of(&self, user: &str) -> Option<gateway_config::MfaMethod> {
        self.users.get(user).and_then(|u| u.mfa)
    }

    /// How many tokens are known.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// True when any user may log in with a password (so SSH offers the method at all).
    pub fn any_password_users(&self) -> bool {
        self.users.values().any(|u| u.password.is_some())
    }

    fn principal(user: &UserEntry, method: &'static str, credential_id: String) -> Principal {
        Principal {
            user: user.name.clone(),
            tenant: user.tenant.clone(),
            home: user.home.clone(),
            permissions: user.permissions,
            auth_method: method,
            credential_id,
        }
    }

    /// Check an SSH public key for `user` (the signature was already verified by the SSH
    /// layer, or this is the unsigned probe). Keys compare by key material, not comment.
    pub fn authenticate_publickey(&self, user: &str, key: &russh::keys::PublicKey) -> Result<Principal, AuthFailure> {
        let fp = crate::sftp::keys::fingerprint(key);
        let fail = |reason, known: bool| AuthFailure {
            credential_id: Some(fp.clone()),
            user: known.then(|| user.to_owned()),
            reason,
        };
        let Some(entry) = self.users.get(user) else { return Err(fail("unknown user", false)) };
        if let Err(_weak) = crate::sftp::keys::check_strength(key) {
            return Err(fail("key too weak", true));
        }
        match entry.ssh_keys.iter().find(|(k, _)| k.key_data() == key.key_data()) {
            Some((_, fp)) => Ok(Self::principal(entry, "publickey", fp.clone())),
            None => Err(fail("key not authorized for this user", true)),
        }
    }

    /// Check a password for `user`; only users with a `password_hash` may use one.
    pub fn authenticate_password(&self, user: &str, password: &str) -> Result<Principal, AuthFailure> {
        let fail = |reason, known: bool| AuthFailure {
            credential_id: Some("password".into()),
            user: known.then(|| user.to_owned()),
            reason,
        };
        match self.users.get(user) {
            Some(entry) => match &entry.password {
                Some(h) if h.verify(password) => Ok(Self::principal(entry, "password", "password".into())),
                Some(_) => Err(fail("wrong password", true)),
                None => Err(fail("password login is not enabled for this user", true)),
            },
            None => {
                // Spend the same effort as a real check, so unknown names do not answer faster.
                let dummy = PasswordHash {
                    iterations: std::num::NonZeroU32::new(PBKDF2_ITERATIONS).unwrap_or(std::num::NonZeroU32::MIN),
                    salt: vec![0; 16],
                    hash: vec![0; 32],
                };
                let _ = dummy.verify(password);
                Err(fail("unknown user", false))
            }
        }
    }

    /// Register one more token hash for `user` (the development demo token).
    pub fn add_token(&mut self, user: &str, id: &str, sha256: [u8; 32]) -> Result<(), String> {
        let user = self.users.get(user).cloned().ok_or_else(|| format!("unknown user {user:?}"))?;
        if self.tokens.contains_key(id) {
            return Err(format!("duplicate token id {id:?}"));
        }
        self.tokens.insert(id.to_owned(), TokenEntry { user, sha256 });
        Ok(())
    }

    /// The user a client certificate is bound to, by fingerprint, common name or SAN.
    /// `Err` when the certificate matches bindings of more than one user.
    fn cert_user(&self, cert: &PeerCert) -> Result<Option<&Arc<UserEntry>>, &'static str> {
        let mut found: Option<&Arc<UserEntry>> = None;
        let candidates = std::iter::once(CertBinding::Sha256(cert.sha256))
            .chain(cert.common_names.iter().map(|n| CertBinding::CommonName(n.clone())))
            .chain(cert.sans.iter().map(|n| CertBinding::San(n.clone())));
        for binding in candidates {
            if let Some(user) = self.certs.get(&binding) {
                match found {
                    Some(f) if !Arc::ptr_eq(f, user) => return Err("client certificate matches several users"),
                    _ => found = Some(user),
                }
            }
        }
        Ok(found)
    }

    /// Authenticate an HTTPS request: a bearer token, a client certificate bound to a user,
    /// or both. A certificate bound to another user than the token's is refused, and so is a
    /// token of a user with bound certificates that comes without one of them.
    pub fn authenticate_https(&self, header: Option<&str>, cert: Option<&PeerCert>) -> Result<Principal, AuthFailure> {
        let cert_user = match cert.map(|c| self.cert_user(c)).transpose() {
            Ok(u) => u.flatten(),
            Err(reason) => return Err(AuthFailure { credential_id: None, user: None, reason }),
        };
        if header.is_none() {
            return match (cert, cert_user) {
                (Some(c), Some(user)) => {
                    Ok(Self::principal(user, "client_certificate", format!("sha256:{}", c.sha256_hex())))
                }
                (Some(_), None) => Err(AuthFailure {
                    credential_id: None,
                    user: None,
                    reason: "client certificate is not bound to any user, and no token",
                }),
                (None, _) => Err(AuthFailure { credential_id: None, user: None, reason: "no credentials" }),
            };
        }
        let mut who = self.authenticate_bearer(header)?;
        let (credential_id, user) = (who.credential_id.clone(), who.user.to_string());
        let refuse = move |reason| AuthFailure { credential_id: Some(credential_id), user: Some(user), reason };
        let token_user = self.users.get(&*who.user);
        match (cert_user, token_user) {
            (Some(c), Some(t)) if !Arc::ptr_eq(c, t) => Err(refuse("client certificate belongs to another user")),
            (Some(_), _) => {
                who.auth_method = "bearer+client_certificate";
                Ok(who)
            }
            (None, Some(t)) if !t.client_certs.is_empty() => {
                Err(refuse("user requires a client certificate bound to it"))
            }
            (None, _) => Ok(who),
        }
    }

    /// Check an `Authorization` header value.
    pub fn authenticate_bearer(&self, header: Option<&str>) -> Result<Principal, AuthFailure> {
        let none = |reason| AuthFailure { credential_id: None, user: None, reason };
        let header = header.ok_or(none("no credentials"))?;
        let (scheme, value) = header.trim().split_once(' ').ok_or(none("malformed Authorization header"))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(none("unsupported authorization scheme"));
        }
        let token = Token::new(value.trim().to_owned());
        let presented = token.sha256();
        let id = token.id().map(str::to_owned);
        let entry = id.as_deref().and_then(|id| self.tokens.get(id));
        // Compare against something even for unknown ids, so both paths cost the same.
        let expected = entry.map(|e| e.sha256).unwrap_or([0xa5; 32]);
        let matches = constant_time_eq(&presented, &expected);
        match entry {
            Some(e) if matches => Ok(Self::principal(&e.user, "bearer", id.unwrap_or_default())),
            Some(e) => Err(AuthFailure {
                credential_id: id,
                user: Some(e.user.name.to_string()),
                reason: "token secret does not match",
            }),
            None => Err(AuthFailure { credential_id: id, user: None, reason: "unknown token" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(token: &Token) -> Directory {
        let text = format!(
            r#"mode = "production"
data_dir = "/tmp/x"
[[tenants]]
name = "acme"
[[users]]
name = "alice"
tenant = "acme"
home = "/in/alice"
permissions = ["read"]
[[users.tokens]]
id = "alice-1"
sha256 = "{}"
"#,
            hex::encode(token.sha256())
        );
        let (config, errors) = gateway_config::parse(&text, "test");
        assert!(errors.is_empty(), "{errors:?}");
        Directory::from_config(&config).unwrap()
    }

    #[test]
    fn bearer_tokens() {
        let token = Token::mint("alice-1").unwrap();
        let dir = directory(&token);
        let header = format!("Bearer {}", token.reveal());
        let p = dir.authenticate_bearer(Some(&header)).unwrap();
        assert_eq!(&*p.user, "alice");
        assert_eq!(p.home.as_str(), "in/alice");
        assert_eq!(p.credential_id, "alice-1");
        let forged = Token::mint("alice-1").unwrap();
        let f = dir.authenticate_bearer(Some(&format!("Bearer {}", forged.reveal()))).unwrap_err();
        assert_eq!(f.user.as_deref(), Some("alice"));
        let unknown = Token::mint("bob-1").unwrap();
        let u = dir.authenticate_bearer(Some(&format!("bearer {}", unknown.reveal()))).unwrap_err();
        assert_eq!(u.credential_id.as_deref(), Some("bob-1"));
        assert!(u.user.is_none());
        assert!(dir.authenticate_bearer(None).is_err());
        assert!(dir.authenticate_bearer(Some(&format!("Basic {}", token.reveal()))).is_err());
    }
}
