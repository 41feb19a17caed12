//! Path normalisation and confinement.
//!
//! Every path a client names is parsed here into a [`RelPath`] (segments relative to the
//! user's home, each one checked) before anything else sees it. A [`RelPath`] cannot hold
//! `.`, `..`, an empty segment, a separator, a control character or a backslash, so joining it
//! under a home ([`ObjectKey::join`]) can never leave that home. Storage only ever receives an
//! [`ObjectKey`] built this way.

use std::fmt;

/// Longest single path segment, in bytes (the usual file-system limit).
pub const MAX_SEGMENT_BYTES: usize = 255;
/// Longest whole relative path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Deepest nesting a client may name.
pub const MAX_DEPTH: usize = 32;

/// Why a client-supplied path was refused. The text is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%2F`, `%5C` or similar: a separator hidden from the router.
    #[error("encoded path separators are not allowed")]
    EncodedSeparator,
    /// Bad percent-escape or bytes that are not UTF-8.
    #[error("path is not valid percent-encoded UTF-8")]
    InvalidEncoding,
    /// NUL, other C0 controls or DEL.
    #[error("control characters are not allowed in paths")]
    ControlCharacter,
    /// Backslashes are refused rather than guessed at.
    #[error("backslashes are not allowed in paths")]
    Backslash,
    /// `.` or `..` anywhere in the path.
    #[error("'.' and '..' segments are not allowed")]
    DotSegment,
    /// `a//b`, or a path starting with `/` inside the files namespace.
    #[error("empty path segments are not allowed")]
    EmptySegment,
    /// One segment longer than [`MAX_SEGMENT_BYTES`].
    #[error("a path segment is longer than {MAX_SEGMENT_BYTES} bytes")]
    SegmentTooLong,
    /// Whole path longer than [`MAX_PATH_BYTES`].
    #[error("path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    /// More than [`MAX_DEPTH`] segments.
    #[error("path is nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// An object operation named no object.
    #[error("path names no object")]
    Empty,
}

/// A checked path relative to a user's home. `dir` records a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RelPath {
    segments: Vec<String>,
    dir: bool,
}

impl RelPath {
    /// Parse the percent-encoded remainder of a URL path (after `/v1/files/`).
    pub fn from_url(raw: &str) -> Result<RelPath, PathError> {
        if raw.len() > MAX_PATH_BYTES * 3 {
            return Err(PathError::TooLong);
        }
        let bytes = raw.as_bytes();
        let mut decoded = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if b == b'%' {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::InvalidEncoding)?;
                let hex = std::str::from_utf8(hex).map_err(|_| PathError::InvalidEncoding)?;
                let v = u8::from_str_radix(hex, 16).map_err(|_| PathError::InvalidEncoding)?;
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    _ => decoded.push(v),
                }
                i += 3;
            } else {
                decoded.push(b);
                i += 1;
            }
        }
        let text = String::from_utf8(decoded).map_err(|_| PathError::InvalidEncoding)?;
        Self::parse_relative(&text)
    }

    /// Parse a plain (not percent-encoded) path; a leading `/` means the home itself, as
    /// SFTP clients expect. Used directly by protocol frontends that carry raw names.
    pub fn from_plain(text: &str) -> Result<RelPath, PathError> {
        let text = text.strip_prefix('/').unwrap_or(text);
        Self::parse_relative(text)
    }

    fn parse_relative(text: &str) -> Result<RelPath, PathError> {
        if text.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        if text.chars().any(|c| c.is_control()) {
            return Err(PathError::ControlCharacter);
        }
        if text.contains('\\') {
            return Err(PathError::Backslash);
        }
        if text.is_empty() {
            return Ok(RelPath { segments: Vec::new(), dir: true });
        }
        let (body, dir) = match text.strip_suffix('/') {
            Some(body) => (body, true),
            None => (text, false),
        };
        let mut segments = Vec::new();
        for seg in body.split('/') {
            match seg {
                "" => return Err(PathError::EmptySegment),
                "." | ".." => return Err(PathError::DotSegment),
                s if s.len() > MAX_SEGMENT_BYTES => return Err(PathError::SegmentTooLong),
                s => segments.push(s.to_owned()),
            }
        }
        if segments.len() > MAX_DEPTH {
            return Err(PathError::TooDeep);
        }
        Ok(RelPath { segments, dir })
    }

    /// True when the client named a directory (trailing slash, or the home itself).
    pub fn is_dir(&self) -> bool {
        self.dir || self.segments.is_empty()
    }

    /// True for the home itself.
    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// The checked segments.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The path as the client sees it, `/`-joined without a leading slash.
    pub fn display(&self) -> String {
        let mut s = self.segments.join("/");
        if self.dir && !s.is_empty() {
            s.push('/');
        }
        s
    }
}

/// A tenant-relative storage key: `/`-joined checked segments, never `..`, never absolute.
/// Built only from a home (validated by the configuration) and a [`RelPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// The home prefix of a user; `home` is already normalised by the configuration crate
    /// (no leading or trailing slash, no dot or empty segments). Re-checked here anyway.
    pub fn home(home: &str) -> Result<ObjectKey, PathError> {
        let rel = RelPath::parse_relative(home)?;
        Ok(ObjectKey(rel.segments.join("/")))
    }

    /// `home` + `rel`: confined by construction.
    pub fn join(&self, rel: &RelPath) -> ObjectKey {
        let mut key = self.0.clone();
        for seg in &rel.segments {
            if !key.is_empty() {
                key.push('/');
            }
            key.push_str(seg);
        }
        ObjectKey(key)
    }

    /// The key's segments (empty for the tenant root).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for the tenant root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }

    /// The key without its last segment.
    pub fn parent(&self) -> ObjectKey {
        match self.0.rsplit_once('/') {
            Some((parent, _)) => ObjectKey(parent.to_owned()),
            None => ObjectKey(String::new()),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        let p = RelPath::from_url("reports/2026/q1%20final.csv").unwrap();
        assert_eq!(p.segments(), ["reports", "2026", "q1 final.csv"]);
        assert!(!p.is_dir());
        let d = RelPath::from_url("reports/").unwrap();
        assert!(d.is_dir());
        assert!(RelPath::from_url("").unwrap().is_root());
    }

    #[test]
    fn refuses_traversal_corpus() {
        let cases = [
            ("..", PathError::DotSegment),
            ("../etc/passwd", PathError::DotSegment),
            ("a/../../b", PathError::DotSegment),
            ("%2e%2e/x", PathError::DotSegment),
            ("%2E%2E%2Fx", PathError::EncodedSeparator),
            ("a%2fb", PathError::EncodedSeparator),
            ("a%5cb", PathError::EncodedSeparator),
            ("a\\b", PathError::Backslash),
            ("a%00b", PathError::ControlCharacter),
            ("a%0ab", PathError::ControlCharacter),
            ("a//b", PathError::EmptySegment),
            ("/etc/passwd", PathError::EmptySegment),
            ("./x", PathError::DotSegment),
            ("%zz", PathError::InvalidEncoding),
            ("%c3%28", PathError::InvalidEncoding),
            ("%", PathError::InvalidEncoding),
        ];
        for (raw, want) in cases {
            assert_eq!(RelPath::from_url(raw), Err(want), "{raw}");
        }
        let long = "a".repeat(256);
        assert_eq!(RelPath::from_url(&long), Err(PathError::SegmentTooLong));
        let deep = vec!["a"; 40].join("/");
        assert_eq!(RelPath::from_url(&deep), Err(PathError::TooDeep));
    }

    #[test]
    fn join_stays_under_home() {
        let home = ObjectKey::home("partners/acme").unwrap();
        let key = home.join(&RelPath::from_url("in/x.csv").unwrap());
        assert_eq!(key.as_str(), "partners/acme/in/x.csv");
        assert_eq!(key.parent().as_str(), "partners/acme/in");
        assert_eq!(key.file_name(), "x.csv");
        let root = ObjectKey::home("").unwrap();
        assert_eq!(root.join(&RelPath::from_url("x").unwrap()).as_str(), "x");
        assert!(ObjectKey::home("a/../b").is_err());
    }
}
