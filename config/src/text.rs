//! Checks on individual strings: names, home directories, hex digests.

/// Longest accepted name, to keep names usable as file names and log fields.
const MAX_NAME: usize = 64;
/// Longest accepted home segment, the usual file-system limit.
const MAX_SEGMENT: usize = 255;
/// Longest accepted home path overall.
const MAX_HOME: usize = 4096;

/// Checks a tenant, user or token name: 1..=64 of `[A-Za-z0-9._-]`, not
/// starting with `.` or `-`, so names are safe as file names and in logs.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("contains {c:?}; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"));
    }
    if name.len() > MAX_NAME {
        return Err(format!("is {} characters long; at most {MAX_NAME} are allowed", name.len()));
    }
    if name.starts_with(['.', '-']) {
        return Err("must not start with '.' or '-'".to_owned());
    }
    Ok(())
}

/// Normalises a home directory (`"/a/b/"` -> `"a/b"`, `"/"` and `""` -> `""`),
/// refusing anything that could escape or confuse path resolution.
pub(crate) fn normalize_home(home: &str) -> Result<String, String> {
    if home.is_empty() || home == "/" {
        return Ok(String::new());
    }
    if home.len() > MAX_HOME {
        return Err(format!("longer than {MAX_HOME} bytes"));
    }
    let inner = home.strip_prefix('/').unwrap_or(home);
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    for segment in inner.split('/') {
        if segment.is_empty() {
            return Err("empty path segment (\"//\")".to_owned());
        }
        if segment == "." || segment == ".." {
            return Err(format!("{segment:?} segments are not allowed"));
        }
        if segment.contains('\\') {
            return Err("backslashes are not allowed".to_owned());
        }
        if segment.chars().any(char::is_control) {
            return Err("control characters are not allowed".to_owned());
        }
        if segment.len() > MAX_SEGMENT {
            return Err(format!("a path segment is longer than {MAX_SEGMENT} bytes"));
        }
    }
    Ok(inner.to_owned())
}

/// Normalises a tenant's key prefix in a bucket (`"/acme"` -> `"acme/"`): the same rules as
/// a home, and never empty (a tenant must not own the whole bucket's namespace by accident).
pub(crate) fn normalize_prefix(prefix: &str) -> Result<String, String> {
    let inner = normalize_home(prefix)?;
    if inner.is_empty() {
        return Err("must name a directory (e.g. \"acme/\"); the bucket root is shared".to_owned());
    }
    if inner.split('/').any(|seg| seg.starts_with(".gateway")) {
        return Err("\".gateway\" segments are reserved for the gateway's own objects".to_owned());
    }
    Ok(format!("{inner}/"))
}

/// Checks an S3 bucket name (the rules every S3 implementation accepts).
pub(crate) fn check_bucket(name: &str) -> Result<(), String> {
    if !(3..=63).contains(&name.len()) {
        return Err("must be 3 to 63 characters".to_owned());
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))) {
        return Err(format!("contains {c:?}; only lowercase letters, digits, '-' and '.' are allowed"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) || !name.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("must start and end with a letter or digit".to_owned());
    }
    if name.contains("..") {
        return Err("must not contain \"..\"".to_owned());
    }
    Ok(())
}

/// Checks an S3 endpoint URL: `https://host[:port][/]`, or `http://` to a loopback address
/// only (object data must not cross a network in clear).
pub(crate) fn check_endpoint(url: &str) -> Result<(), String> {
    let (scheme, rest) = url.split_once("://").ok_or("expected a URL such as \"https://s3.example.com\"")?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) || authority.chars().any(char::is_whitespace) {
        return Err("expected scheme://host[:port] without a path, query or credentials".to_owned());
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split_once(']').map(|(h, _)| h).ok_or("unclosed '[' in an IPv6 address")?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    match scheme {
        "https" => Ok(()),
        "http" => {
            let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err("plain http:// is only allowed to a loopback address; use https://".to_owned())
            }
        }
        _ => Err(format!("unsupported scheme {scheme:?}; use https://")),
    }
}

/// A webhook URL: `scheme://host[:port]` as [`check_endpoint`] wants it (https, or http to
/// loopback only), then an optional path of printable ASCII without a fragment.
pub(crate) fn check_webhook_url(url: &str) -> Result<(), String> {
    let (scheme, rest) = url.split_once("://").ok_or("expected a URL such as \"https://alerts.example.com/hook\"")?;
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    check_endpoint(&format!("{scheme}://{authority}"))?;
    if url.len() > 2048 {
        return Err("longer than 2048 characters".to_owned());
    }
    if !path.chars().all(|c| c.is_ascii_graphic()) || path.contains('#') {
        return Err("the path must be printable ASCII without spaces or a #fragment".to_owned());
    }
    Ok(())
}

/// Decodes a SHA-256 digest written as exactly 64 hex digits (either case).
/// The value itself is never echoed, matching the redacted `Debug` output.
pub(crate) fn parse_sha256(s: &str) -> Result<[u8; 32], String> {
    if s.len() != 64 {
        return Err(format!("expected 64 hex characters (a SHA-256 digest), found {} characters", s.chars().count()));
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        let mut value = 0u8;
        for &digit in pair {
            let nibble = (digit as char)
                .to_digit(16)
                .ok_or_else(|| "expected 64 hex characters (a SHA-256 digest), found a non-hex character".to_owned())?;
            value = (value << 4) | nibble as u8;
        }
        *byte = value;
    }
    Ok(out)
}
