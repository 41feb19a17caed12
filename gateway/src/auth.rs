//! Who may log in, and as whom: users, tenants, homes, permissions and credentials.
//!
//! Bearer tokens are stored only as SHA-256 hashes and compared in constant time. A token
//! names its credential id (`gw1.<id>.<secret>`), so the lookup is by id; an unknown id still
//! costs one hash and one comparison, and the client sees the same answer either way.

use std::collections::HashMap;
use std::sync::Arc;

use gateway_config::{Config, Permissions};

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

#[derive(Debug)]
struct UserEntry {
    name: Arc<str>,
    tenant: Arc<str>,
    home: ObjectKey,
    permissions: Permissions,
}

struct TokenEntry {
    user: Arc<UserEntry>,
    sha256: [u8; 32],
}

/// All users and their credentials, built once from the configuration.
pub struct Directory {
    users: HashMap<String, Arc<UserEntry>>,
    tokens: HashMap<String, TokenEntry>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").field("users", &self.users.len()).field("tokens", &self.tokens.len()).finish()
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    // Fold every byte difference; no early exit.
    let diff = a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl Directory {
    /// Build from a validated configuration.
    pub fn from_config(config: &Config) -> Result<Directory, String> {
        let mut dir = Directory { users: HashMap::new(), tokens: HashMap::new() };
        for u in &config.users {
            let home = ObjectKey::home(&u.home).map_err(|e| format!("users.{}: home: {e}", u.name))?;
            let entry = Arc::new(UserEntry {
                name: u.name.as_str().into(),
                tenant: u.tenant.as_str().into(),
                home,
                permissions: u.permissions,
            });
            dir.users.insert(u.name.clone(), entry);
            for t in &u.tokens {
                dir.add_token(&u.name, &t.id, t.sha256)?;
            }
        }
        Ok(dir)
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
            Some(e) if matches => Ok(Principal {
                user: e.user.name.clone(),
                tenant: e.user.tenant.clone(),
                home: e.user.home.clone(),
                permissions: e.user.permissions,
                auth_method: "bearer",
                credential_id: id.unwrap_or_default(),
            }),
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
