//! Path normalisation and confinement.
//!
//! Every path a client names is parsed here into a [`RelPath`] (segments relative to the
//! user's home, each one checked) before anything else sees it. A [`RelPath`] cannot hold
//! `.`, `..`, an empty segment, a separator, a control character or a backslash, so joining it
//! under a home ([`ObjectKey::join`]) can never leave that home. Storage only ever receives an
//! [`ObjectKey`] built this way.
//!
//! Names that display as something they are not are refused too, as `[storage]
//! refuse_in_names` says ([`NameRefusal`]): by default every Unicode
//! `Default_Ignorable_Code_Point` (bidirectional overrides such as U+202E, which shows
//! `a<U+202E>gnp.exe` as "aexe.png", zero-width characters, the BOM, variation selectors,
//! tags), or only the bidirectional controls.

use std::fmt;

pub use gateway_config::NameRefusal;

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
    /// A bidirectional control or other default-ignorable (invisible) code point, refused
    /// by [`NameRefusal`]. The message names it (`U+202E RIGHT-TO-LEFT OVERRIDE`) rather
    /// than echoing it.
    #[error("U+{code_point:04X} {name} is not allowed in names")]
    Invisible {
        /// The code point.
        code_point: u32,
        /// Its Unicode name, or the name of its group for ranges.
        name: &'static str,
    },
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
    /// Parse the percent-encoded remainder of a URL path (after `/v1/files/`), refusing
    /// invisible characters as the default [`NameRefusal`] does.
    pub fn from_url(raw: &str) -> Result<RelPath, PathError> {
        Self::from_url_with(raw, NameRefusal::default())
    }

    /// [`RelPath::from_url`] under the deployment's [`NameRefusal`].
    pub fn from_url_with(raw: &str, names: NameRefusal) -> Result<RelPath, PathError> {
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
        Self::parse_relative(&text, names)
    }

    /// Parse a plain (not percent-encoded) path; a leading `/` means the home itself, as
    /// SFTP clients expect. Refuses invisible characters as the default [`NameRefusal`] does.
    pub fn from_plain(text: &str) -> Result<RelPath, PathError> {
        Self::from_plain_with(text, NameRefusal::default())
    }

    /// [`RelPath::from_plain`] under the deployment's [`NameRefusal`]; used directly by
    /// protocol frontends that carry raw names.
    pub fn from_plain_with(text: &str, names: NameRefusal) -> Result<RelPath, PathError> {
        let text = text.strip_prefix('/').unwrap_or(text);
        Self::parse_relative(text, names)
    }

    fn parse_relative(text: &str, names: NameRefusal) -> Result<RelPath, PathError> {
        if text.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        if text.chars().any(|c| c.is_control()) {
            return Err(PathError::ControlCharacter);
        }
        if let Some((code_point, name)) = text.chars().find_map(|c| refused(c, names)) {
            return Err(PathError::Invisible { code_point, name });
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

/// Unicode `Default_Ignorable_Code_Point` (DerivedCoreProperties.txt of Unicode 14.0 to 16.0;
/// compared code point by code point with Perl's `\p{Default_Ignorable_Code_Point}`): sorted,
/// disjoint inclusive ranges with the name shown in refusals (the character's own name, or
/// its group's for a range). The property is `Other_Default_Ignorable_Code_Point`, format
/// characters (Cf) and variation selectors, less white space, the interlinear annotation
/// characters and the prepended concatenation marks.
const DEFAULT_IGNORABLE: &[(u32, u32, &str)] = &[
    (0x00AD, 0x00AD, "SOFT HYPHEN"),
    (0x034F, 0x034F, "COMBINING GRAPHEME JOINER"),
    (0x061C, 0x061C, "ARABIC LETTER MARK"),
    (0x115F, 0x115F, "HANGUL CHOSEONG FILLER"),
    (0x1160, 0x1160, "HANGUL JUNGSEONG FILLER"),
    (0x17B4, 0x17B4, "KHMER VOWEL INHERENT AQ"),
    (0x17B5, 0x17B5, "KHMER VOWEL INHERENT AA"),
    (0x180B, 0x180D, "MONGOLIAN FREE VARIATION SELECTOR"),
    (0x180E, 0x180E, "MONGOLIAN VOWEL SEPARATOR"),
    (0x180F, 0x180F, "MONGOLIAN FREE VARIATION SELECTOR FOUR"),
    (0x200B, 0x200B, "ZERO WIDTH SPACE"),
    (0x200C, 0x200C, "ZERO WIDTH NON-JOINER"),
    (0x200D, 0x200D, "ZERO WIDTH JOINER"),
    (0x200E, 0x200E, "LEFT-TO-RIGHT MARK"),
    (0x200F, 0x200F, "RIGHT-TO-LEFT MARK"),
    (0x202A, 0x202A, "LEFT-TO-RIGHT EMBEDDING"),
    (0x202B, 0x202B, "RIGHT-TO-LEFT EMBEDDING"),
    (0x202C, 0x202C, "POP DIRECTIONAL FORMATTING"),
    (0x202D, 0x202D, "LEFT-TO-RIGHT OVERRIDE"),
    (0x202E, 0x202E, "RIGHT-TO-LEFT OVERRIDE"),
    (0x2060, 0x2060, "WORD JOINER"),
    (0x2061, 0x2061, "FUNCTION APPLICATION"),
    (0x2062, 0x2062, "INVISIBLE TIMES"),
    (0x2063, 0x2063, "INVISIBLE SEPARATOR"),
    (0x2064, 0x2064, "INVISIBLE PLUS"),
    (0x2065, 0x2065, "UNASSIGNED DEFAULT IGNORABLE"),
    (0x2066, 0x2066, "LEFT-TO-RIGHT ISOLATE"),
    (0x2067, 0x2067, "RIGHT-TO-LEFT ISOLATE"),
    (0x2068, 0x2068, "FIRST STRONG ISOLATE"),
    (0x2069, 0x2069, "POP DIRECTIONAL ISOLATE"),
    (0x206A, 0x206A, "INHIBIT SYMMETRIC SWAPPING"),
    (0x206B, 0x206B, "ACTIVATE SYMMETRIC SWAPPING"),
    (0x206C, 0x206C, "INHIBIT ARABIC FORM SHAPING"),
    (0x206D, 0x206D, "ACTIVATE ARABIC FORM SHAPING"),
    (0x206E, 0x206E, "NATIONAL DIGIT SHAPES"),
    (0x206F, 0x206F, "NOMINAL DIGIT SHAPES"),
    (0x3164, 0x3164, "HANGUL FILLER"),
    (0xFE00, 0xFE0F, "VARIATION SELECTOR"),
    (0xFEFF, 0xFEFF, "ZERO WIDTH NO-BREAK SPACE (BYTE ORDER MARK)"),
    (0xFFA0, 0xFFA0, "HALFWIDTH HANGUL FILLER"),
    (0xFFF0, 0xFFF8, "UNASSIGNED DEFAULT IGNORABLE"),
    (0x1BCA0, 0x1BCA3, "SHORTHAND FORMAT CONTROL"),
    (0x1D173, 0x1D17A, "MUSICAL SYMBOL FORMAT CONTROL"),
    (0xE0000, 0xE0000, "UNASSIGNED DEFAULT IGNORABLE"),
    (0xE0001, 0xE0001, "LANGUAGE TAG"),
    (0xE0002, 0xE001F, "UNASSIGNED DEFAULT IGNORABLE"),
    (0xE0020, 0xE007F, "TAG CHARACTER"),
    (0xE0080, 0xE00FF, "UNASSIGNED DEFAULT IGNORABLE"),
    (0xE0100, 0xE01EF, "VARIATION SELECTOR"),
    (0xE01F0, 0xE0FFF, "UNASSIGNED DEFAULT IGNORABLE"),
];

/// Unicode `Bidi_Control` (PropList.txt): the characters that reorder what follows them.
fn is_bidi_control(cp: u32) -> bool {
    matches!(cp, 0x061C | 0x200E | 0x200F | 0x202A..=0x202E | 0x2066..=0x2069)
}

/// The code point and name of `c` when it is default-ignorable.
fn default_ignorable(c: char) -> Option<(u32, &'static str)> {
    let cp = u32::from(c);
    if cp < 0xAD {
        return None;
    }
    let i = DEFAULT_IGNORABLE.partition_point(|&(_, hi, _)| hi < cp);
    match DEFAULT_IGNORABLE.get(i) {
        Some(&(lo, _, name)) if lo <= cp => Some((cp, name)),
        _ => None,
    }
}

/// The code point and name of `c` when `names` refuses it.
fn refused(c: char, names: NameRefusal) -> Option<(u32, &'static str)> {
    match names {
        NameRefusal::Nothing => None,
        NameRefusal::Invisible => default_ignorable(c),
        NameRefusal::Bidi => default_ignorable(c).filter(|(cp, _)| is_bidi_control(*cp)),
    }
}

/// `text` safe to write to a log or audit record: each default-ignorable code point (which
/// would reorder or hide what a reader sees) as `<U+XXXX>`, control characters dropped.
pub fn escape_invisible(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().filter(|c| !c.is_control()) {
        match default_ignorable(c) {
            Some((cp, _)) => out.push_str(&format!("<U+{cp:04X}>")),
            None => out.push(c),
        }
    }
    out
}

/// A tenant-relative storage key: `/`-joined checked segments, never `..`, never absolute.
/// Built only from a home (validated by the configuration) and a [`RelPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// The home prefix of a user; `home` is already normalised by the configuration crate
    /// (no leading or trailing slash, no dot or empty segments). Re-checked here anyway.
    /// Homes are the operator's, not a client's: no [`NameRefusal`] applies.
    pub fn home(home: &str) -> Result<ObjectKey, PathError> {
        let rel = RelPath::parse_relative(home, NameRefusal::Nothing)?;
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
    fn refuses_bidi_controls_and_invisible_characters() {
        // The names from the issue: bidi override, zero-width space, BOM.
        let err = RelPath::from_url("a%E2%80%AEgnp.exe").unwrap_err();
        assert_eq!(err, PathError::Invisible { code_point: 0x202E, name: "RIGHT-TO-LEFT OVERRIDE" });
        assert_eq!(err.to_string(), "U+202E RIGHT-TO-LEFT OVERRIDE is not allowed in names");
        assert_eq!(
            RelPath::from_plain("/in/a\u{200B}b").unwrap_err().to_string(),
            "U+200B ZERO WIDTH SPACE is not allowed in names"
        );
        assert_eq!(
            RelPath::from_plain("\u{FEFF}report.csv").unwrap_err().to_string(),
            "U+FEFF ZERO WIDTH NO-BREAK SPACE (BYTE ORDER MARK) is not allowed in names"
        );
        // A directory segment, not only the last one.
        assert!(matches!(RelPath::from_plain("x\u{2067}/y"), Err(PathError::Invisible { code_point: 0x2067, .. })));
        // The message never carries the character itself.
        for c in ['\u{202E}', '\u{200B}', '\u{FEFF}', '\u{E0041}'] {
            let msg = RelPath::from_plain(&format!("a{c}b")).unwrap_err().to_string();
            assert!(!msg.contains(c), "{msg:?}");
        }
        // Visible non-ASCII names stay accepted.
        for ok in ["résumé.pdf", "报告.xlsx", "Ωmega", "naïve café", "emoji😀.png", "a\u{00A0}b"] {
            assert!(RelPath::from_plain(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn every_default_ignorable_code_point_is_refused_and_nothing_else() {
        let ranges = DEFAULT_IGNORABLE;
        for w in ranges.windows(2) {
            let [(lo, hi, _), (next, _, _)] = w else { unreachable!() };
            assert!(lo <= hi && hi < next, "table not sorted and disjoint at U+{lo:04X}");
        }
        // The ranges of DerivedCoreProperties.txt, merged; the table is checked against them
        // code point by code point over all of Unicode.
        let derived: [(u32, u32); 17] = [
            (0x00AD, 0x00AD),
            (0x034F, 0x034F),
            (0x061C, 0x061C),
            (0x115F, 0x1160),
            (0x17B4, 0x17B5),
            (0x180B, 0x180F),
            (0x200B, 0x200F),
            (0x202A, 0x202E),
            (0x2060, 0x206F),
            (0x3164, 0x3164),
            (0xFE00, 0xFE0F),
            (0xFEFF, 0xFEFF),
            (0xFFA0, 0xFFA0),
            (0xFFF0, 0xFFF8),
            (0x1BCA0, 0x1BCA3),
            (0x1D173, 0x1D17A),
            (0xE0000, 0xE0FFF),
        ];
        let mut refused_count = 0;
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let cp = u32::from(c);
            let want = derived.iter().any(|&(lo, hi)| (lo..=hi).contains(&cp));
            assert_eq!(default_ignorable(c).is_some(), want, "U+{cp:04X}");
            if want {
                refused_count += 1;
                let seg = format!("x{c}y");
                assert!(matches!(RelPath::from_plain(&seg), Err(PathError::Invisible { .. })), "U+{cp:04X}");
                assert_eq!(RelPath::from_plain_with(&seg, NameRefusal::Nothing).unwrap().segments(), [seg.as_str()]);
                let bidi = RelPath::from_plain_with(&seg, NameRefusal::Bidi);
                assert_eq!(bidi.is_err(), is_bidi_control(cp), "U+{cp:04X} under \"bidi\"");
            }
        }
        assert_eq!(refused_count, 4174);
    }

    #[test]
    fn bidi_rule_refuses_exactly_the_bidi_controls() {
        let bidi: Vec<u32> = (0..=0x10FFFFu32)
            .filter_map(char::from_u32)
            .filter(|&c| RelPath::from_plain_with(&format!("a{c}"), NameRefusal::Bidi).is_err())
            .map(u32::from)
            .filter(|&cp| !char::from_u32(cp).is_some_and(|c| c.is_control() || c == '/' || c == '\\' || c == '.'))
            .collect();
        let want: Vec<u32> =
            [0x061C, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069].into();
        assert_eq!(bidi, want);
        // Zero-width joiners (Persian names) and emoji presentation selectors pass under it.
        assert!(RelPath::from_plain_with("می\u{200C}خواهم.txt", NameRefusal::Bidi).is_ok());
        assert!(RelPath::from_plain_with("\u{2764}\u{FE0F}.png", NameRefusal::Bidi).is_ok());
        assert!(RelPath::from_url_with("a%E2%80%AEgnp.exe", NameRefusal::Bidi).is_err());
        assert!(RelPath::from_url_with("a%E2%80%AEgnp.exe", NameRefusal::Nothing).is_ok());
        // Control characters stay refused whatever the rule.
        assert_eq!(RelPath::from_plain_with("a\u{0}b", NameRefusal::Nothing), Err(PathError::ControlCharacter));
    }

    #[test]
    fn escape_invisible_shows_code_points() {
        assert_eq!(escape_invisible("/a\u{202E}gnp.exe"), "/a<U+202E>gnp.exe");
        assert_eq!(escape_invisible("\u{FEFF}x\u{200B}\n"), "<U+FEFF>x<U+200B>");
        assert_eq!(escape_invisible("plain é"), "plain é");
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
