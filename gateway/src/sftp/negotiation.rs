//! What to tell the operator when a client and this listener share no algorithm.
//!
//! russh ends such a connection with [`russh::Error::NoCommonAlgo`] while reading the
//! client's KEXINIT, before any credential is seen; the client only hears that the key
//! exchange failed (curl: "Unable to exchange encryption keys"). So that an operator can
//! act on it, the failure is logged and audited with what the client offered (its version
//! line and kex/cipher/MAC lists, from the passive copy in [`super::wire`]) and which
//! [`SshProfile`] would have admitted it, e.g. `compatible` for libssh2 before 1.11.
//!
//! Everything here is peer-supplied: names are reduced to printable ASCII and each list is
//! cut at [`MAX_LIST_CHARS`], the version at [`MAX_VERSION_CHARS`].

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use gateway_config::{SshAlgorithms, SshProfile};
use russh::AlgorithmKind;

use super::wire::{ClientHello, WireState};
use super::SftpShared;
use crate::audit::{AuditEntry, AuditEvent};
use crate::transfer::{ClientInfo, Protocol};

/// Longest rendering of one peer-supplied algorithm list, brackets included.
pub const MAX_LIST_CHARS: usize = 1024;
/// Longest client version string kept (as the handler keeps it for logins).
pub const MAX_VERSION_CHARS: usize = 255;

/// The algorithm category that had no name in common.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Key exchange.
    Kex,
    /// Host key signature algorithm.
    HostKey,
    /// Cipher.
    Cipher,
    /// MAC (needed by a non-AEAD cipher).
    Mac,
    /// Compression (we only offer `none`).
    Compression,
}

impl Category {
    fn of(kind: &AlgorithmKind) -> Category {
        match kind {
            AlgorithmKind::Kex => Category::Kex,
            AlgorithmKind::Key => Category::HostKey,
            AlgorithmKind::Cipher => Category::Cipher,
            AlgorithmKind::Mac => Category::Mac,
            AlgorithmKind::Compression => Category::Compression,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Category::Kex => "key exchange",
            Category::HostKey => "host key algorithm",
            Category::Cipher => "cipher",
            Category::Mac => "MAC",
            Category::Compression => "compression",
        }
    }
}

/// One failed negotiation, described from the error and the client's hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiationFailure {
    /// The category without a common name.
    pub category: Category,
    /// The client's version line, bounded; `None` if it was not seen.
    pub client_version: Option<String>,
    /// Profiles other than the listener's that would admit this client (keeping the
    /// listener's explicit lists).
    pub admitted_by: Vec<SshProfile>,
    /// The whole finding in one bounded line, for the log and the audit record's `error`.
    pub summary: String,
}

/// What the client offered, per category; `None` where it is not known.
#[derive(Debug, Default)]
struct Offered<'a> {
    kex: Option<&'a [String]>,
    ciphers: Option<&'a [String]>,
    macs: Option<&'a [String]>,
}

/// Describe `error` if it is a failed algorithm negotiation (`NoCommonAlgo`); `None` for
/// every other error, which is not ours to explain.
pub fn describe(
    error: &russh::Error,
    hello: Option<&ClientHello>,
    algorithms: &SshAlgorithms,
) -> Option<NegotiationFailure> {
    let russh::Error::NoCommonAlgo { kind, theirs, .. } = error else { return None };
    let category = Category::of(kind);
    // The client's lists from its KEXINIT; the error's own copy of the failed list stands in
    // if the KEXINIT was not captured.
    let from_error = |c: Category| (category == c).then_some(theirs.as_slice());
    let offered = Offered {
        kex: hello.map(|h| h.kex.as_slice()).or_else(|| from_error(Category::Kex)),
        ciphers: hello.map(|h| h.ciphers.as_slice()).or_else(|| from_error(Category::Cipher)),
        macs: hello.map(|h| h.macs.as_slice()).or_else(|| from_error(Category::Mac)),
    };
    // Profiles differ only in kex, ciphers and MACs: a host key or compression mismatch is
    // the same under every profile.
    let admitted_by: Vec<SshProfile> = match category {
        Category::HostKey | Category::Compression => Vec::new(),
        Category::Kex | Category::Cipher | Category::Mac => SshProfile::ALL
            .into_iter()
            .filter(|p| *p != algorithms.profile && admits(&algorithms.with_profile(*p), &offered))
            .collect(),
    };
    let client_version = hello.map(|h| h.version.chars().filter(|c| !c.is_control()).take(MAX_VERSION_CHARS).collect());

    let mut summary = format!("algorithm negotiation failed: no common {}; client offered", category.what());
    let mut lists: Vec<(&str, &[String])> = Vec::new();
    lists.extend(offered.kex.map(|l| ("kex", l)));
    if category == Category::HostKey {
        lists.push(("host key algorithms", theirs));
    }
    lists.extend(offered.ciphers.map(|l| ("ciphers", l)));
    lists.extend(offered.macs.map(|l| ("MACs", l)));
    if category == Category::Compression {
        lists.push(("compression", theirs));
    }
    for (i, (name, list)) in lists.iter().enumerate() {
        let sep = if i == 0 { " " } else { ", " };
        let _ = write!(summary, "{sep}{name} {}", render(list));
    }
    let verdict = match admitted_by.as_slice() {
        [] => "no profile would admit it".to_owned(),
        [one] => format!("profile '{one}' would admit it"),
        many => {
            let names: Vec<String> = many.iter().map(|p| format!("'{p}'")).collect();
            format!("profiles {} would admit it", names.join(", "))
        }
    };
    let _ = write!(summary, "; {verdict} (this listener: '{}'", algorithms.profile);
    let e = algorithms.explicit;
    if e.kex || e.ciphers || e.macs || e.host_key_algorithms {
        summary.push_str(", with explicit lists");
    }
    summary.push(')');
    Some(NegotiationFailure { category, client_version, admitted_by, summary })
}

/// Whether a server offering `algs` would settle on every category the client offered, as
/// russh chooses (RFC 4253 §7.1: the client's first name the server also has; a MAC only
/// for a non-AEAD cipher). Unknown categories count as agreeing.
fn admits(algs: &SshAlgorithms, offered: &Offered<'_>) -> bool {
    let first_common = |client: &[String], server: &[String]| client.iter().find(|c| server.contains(c)).cloned();
    if offered.kex.is_some_and(|k| first_common(k, &algs.kex).is_none()) {
        return false;
    }
    let cipher = match offered.ciphers {
        Some(c) => match first_common(c, &algs.ciphers) {
            Some(cipher) => Some(cipher),
            None => return false,
        },
        None => None,
    };
    let needs_mac = cipher.as_deref().is_none_or(|c| !(c.contains("-gcm@") || c.contains("poly1305")));
    !(needs_mac && offered.macs.is_some_and(|m| first_common(m, &algs.macs).is_none()))
}

/// `[a, b, c]` with every name reduced to printable ASCII, cut at [`MAX_LIST_CHARS`].
fn render(names: &[String]) -> String {
    const CUT: &str = "...]";
    let mut out = String::from("[");
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.extend(name.chars().map(|c| if c.is_ascii_graphic() { c } else { '?' }));
        if out.len() > MAX_LIST_CHARS {
            break;
        }
    }
    out.push(']');
    if out.len() > MAX_LIST_CHARS {
        // Only ASCII was pushed, so every byte index is a char boundary.
        out.truncate(MAX_LIST_CHARS - CUT.len());
        out.push_str(CUT);
    }
    out
}

/// Reports a connection's failed negotiation. Made when the connection starts, since the
/// handler takes the shared state and wire copy for itself.
pub struct NegotiationReport {
    shared: Arc<SftpShared>,
    peer: SocketAddr,
    wire: Arc<WireState>,
}

impl NegotiationReport {
    /// A reporter for the connection from `peer`.
    pub fn new(shared: &Arc<SftpShared>, peer: SocketAddr, wire: &Arc<WireState>) -> NegotiationReport {
        NegotiationReport { shared: shared.clone(), peer, wire: wire.clone() }
    }

    /// If the session ended because negotiation failed, log it and write an `auth_failure`
    /// record (operation `connect`) saying what the client offered and which profile would
    /// admit it. Returns whether it was such a failure.
    pub async fn report(&self, error: &russh::Error) -> bool {
        let hello = self.wire.hello();
        let Some(failure) = describe(error, hello.as_ref(), &self.shared.algorithms) else { return false };
        let peer = self.peer;
        let client = failure.client_version.as_deref().unwrap_or("(no version line seen)");
        tracing::warn!(%peer, client, profile = %self.shared.algorithms.profile, "SSH {}", failure.summary);
        let info = ClientInfo {
            protocol: Protocol::Sftp,
            remote_addr: peer,
            tls_version: None,
            tls_cipher: None,
            client_cert: None,
            ssh_client: failure.client_version,
            ssh_kex: None,
            ssh_cipher: None,
            ssh_mac: None,
        };
        let entry = AuditEntry {
            operation: Some("connect".into()),
            result: Some("error".into()),
            error: Some(failure.summary),
            ..info.entry(AuditEvent::AuthFailure)
        };
        if let Err(e) = self.shared.transfers.audit().append(entry, false).await {
            tracing::error!(error = %e, "could not audit a failed SSH negotiation");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// What Debian 12's curl (libssh2 1.10.0) offers, shortened.
    fn libssh2_1_10() -> ClientHello {
        ClientHello {
            version: "SSH-2.0-libssh2_1.10.0".into(),
            kex: strings(&[
                "curve25519-sha256",
                "ecdh-sha2-nistp256",
                "diffie-hellman-group-exchange-sha256",
                "diffie-hellman-group14-sha1",
            ]),
            ciphers: strings(&["aes128-ctr", "aes192-ctr", "aes256-ctr", "aes256-cbc", "3des-cbc"]),
            macs: strings(&["hmac-sha2-256", "hmac-sha2-512", "hmac-sha1"]),
        }
    }

    fn no_common(kind: AlgorithmKind, theirs: &[String]) -> russh::Error {
        russh::Error::NoCommonAlgo { kind, ours: Vec::new(), theirs: theirs.to_vec() }
    }

    #[test]
    fn libssh2_1_10_under_strict_needs_compatible() {
        let hello = libssh2_1_10();
        let err = no_common(AlgorithmKind::Cipher, &hello.ciphers);
        let f = describe(&err, Some(&hello), &SshAlgorithms::defaults()).unwrap();
        assert_eq!(f.category, Category::Cipher);
        assert_eq!(f.admitted_by, [SshProfile::Compatible]);
        assert_eq!(f.client_version.as_deref(), Some("SSH-2.0-libssh2_1.10.0"));
        assert_eq!(
            f.summary,
            "algorithm negotiation failed: no common cipher; client offered kex [curve25519-sha256, \
             ecdh-sha2-nistp256, diffie-hellman-group-exchange-sha256, diffie-hellman-group14-sha1], ciphers \
             [aes128-ctr, aes192-ctr, aes256-ctr, aes256-cbc, 3des-cbc], MACs [hmac-sha2-256, hmac-sha2-512, \
             hmac-sha1]; profile 'compatible' would admit it (this listener: 'strict')"
        );
        // Under post-quantum it fails at kex first; still only compatible admits it.
        let pq = SshProfile::PostQuantum.algorithms();
        let f = describe(&no_common(AlgorithmKind::Kex, &hello.kex), Some(&hello), &pq).unwrap();
        assert_eq!(f.admitted_by, [SshProfile::Compatible]);
        assert!(f.summary.contains("no common key exchange"), "{}", f.summary);
    }

    #[test]
    fn classical_client_under_post_quantum_is_admitted_by_both_others() {
        let hello = ClientHello {
            version: "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u6".into(),
            kex: strings(&["sntrup761x25519-sha512@openssh.com", "curve25519-sha256", "ext-info-c"]),
            ciphers: strings(&["chacha20-poly1305@openssh.com", "aes128-ctr"]),
            macs: strings(&["umac-64-etm@openssh.com", "hmac-sha2-256-etm@openssh.com"]),
        };
        let pq = SshProfile::PostQuantum.algorithms();
        let f = describe(&no_common(AlgorithmKind::Kex, &hello.kex), Some(&hello), &pq).unwrap();
        assert_eq!(f.admitted_by, [SshProfile::Strict, SshProfile::Compatible]);
        assert!(f.summary.ends_with("profiles 'strict', 'compatible' would admit it (this listener: 'post-quantum')"));
    }

    #[test]
    fn explicit_lists_are_kept_when_judging_other_profiles() {
        // The operator pinned the ciphers to AEAD: compatible would not help.
        let mut algs = SshAlgorithms::defaults();
        algs.explicit.ciphers = true;
        let hello = libssh2_1_10();
        let f = describe(&no_common(AlgorithmKind::Cipher, &hello.ciphers), Some(&hello), &algs).unwrap();
        assert!(f.admitted_by.is_empty());
        assert!(f.summary.ends_with("no profile would admit it (this listener: 'strict', with explicit lists)"));
    }

    #[test]
    fn a_ctr_cipher_needs_a_common_mac() {
        // CTR ciphers but only SHA-1 MACs: compatible has the cipher, not the MAC.
        let hello = ClientHello { macs: strings(&["hmac-sha1", "hmac-md5"]), ..libssh2_1_10() };
        let f = describe(&no_common(AlgorithmKind::Cipher, &hello.ciphers), Some(&hello), &SshAlgorithms::defaults())
            .unwrap();
        assert!(f.admitted_by.is_empty(), "{f:?}");
        // An AEAD cipher needs no MAC at all.
        let hello = ClientHello { ciphers: strings(&["aes256-gcm@openssh.com"]), ..hello };
        let offered = Offered { kex: Some(&hello.kex), ciphers: Some(&hello.ciphers), macs: Some(&hello.macs) };
        assert!(admits(&SshAlgorithms::defaults(), &offered));
    }

    #[test]
    fn host_key_and_compression_mismatches_are_no_profile_matter() {
        let hello = ClientHello { ciphers: strings(&["aes128-ctr"]), ..libssh2_1_10() };
        let err = no_common(AlgorithmKind::Key, &strings(&["ssh-rsa", "ssh-dss"]));
        let f = describe(&err, Some(&hello), &SshAlgorithms::defaults()).unwrap();
        assert!(f.admitted_by.is_empty());
        assert!(f.summary.contains("no common host key algorithm"), "{}", f.summary);
        assert!(f.summary.contains("host key algorithms [ssh-rsa, ssh-dss]"), "{}", f.summary);
        let err = no_common(AlgorithmKind::Compression, &strings(&["zlib"]));
        let f = describe(&err, Some(&hello), &SshAlgorithms::defaults()).unwrap();
        assert!(f.admitted_by.is_empty() && f.summary.contains("compression [zlib]"), "{}", f.summary);
    }

    #[test]
    fn without_a_captured_hello_the_error_list_is_used() {
        let theirs = strings(&["aes128-ctr"]);
        let f = describe(&no_common(AlgorithmKind::Cipher, &theirs), None, &SshAlgorithms::defaults()).unwrap();
        assert_eq!(f.client_version, None);
        assert_eq!(f.admitted_by, [SshProfile::Compatible]);
        assert!(f.summary.contains("client offered ciphers [aes128-ctr];"), "{}", f.summary);
    }

    #[test]
    fn other_errors_are_not_negotiation_failures() {
        for e in [russh::Error::KexInit, russh::Error::Version, russh::Error::Disconnect, russh::Error::UnknownAlgo] {
            assert_eq!(describe(&e, Some(&libssh2_1_10()), &SshAlgorithms::defaults()), None, "{e}");
        }
    }

    #[test]
    fn peer_strings_are_bounded_and_cleaned() {
        let hostile = ClientHello {
            version: format!("SSH-2.0-evil\u{1b}[31m\u{7}{}", "v".repeat(10_000)),
            kex: vec!["x".repeat(5000), "new\nline".into()],
            ciphers: (0..2000).map(|i| format!("c{i}\u{202e}\t")).collect(),
            macs: vec!["é".into()],
        };
        let err = no_common(AlgorithmKind::Cipher, &hostile.ciphers);
        let f = describe(&err, Some(&hostile), &SshAlgorithms::defaults()).unwrap();
        let version = f.client_version.unwrap();
        assert!(version.chars().count() <= MAX_VERSION_CHARS && !version.chars().any(char::is_control), "{version}");
        assert!(version.starts_with("SSH-2.0-evil[31m"), "{version}");
        assert!(f.summary.is_ascii() && !f.summary.chars().any(|c| c.is_ascii_control()), "{}", f.summary);
        // Three lists of at most MAX_LIST_CHARS each, plus the fixed words.
        assert!(f.summary.len() < 3 * MAX_LIST_CHARS + 300, "{}", f.summary.len());
        assert!(f.summary.contains("MACs [?]"), "{}", f.summary);
        let kex = render(&hostile.kex);
        assert_eq!(kex.len(), MAX_LIST_CHARS);
        assert!(kex.ends_with("...]") && kex.starts_with("[xxx"));
        assert_eq!(render(&strings(&["new\nline"])), "[new?line]");
        assert_eq!(render(&[]), "[]");
    }
}
