//! Human-friendly durations such as `"500ms"`, `"10s"`, `"5m"`, `"2h"`, `"90d"`.

use std::time::Duration;

/// The format hint appended to every duration error, so operators see a fix.
pub(crate) const DURATION_FORMAT: &str =
    "an integer followed by a unit (ms, s, m, h or d) with no space, e.g. \"500ms\", \"10s\", \"5m\", \"2h\", \"90d\"";

/// Upper bound (100 years), so later `Instant + Duration` arithmetic cannot overflow.
const MAX_SECS: u64 = 100 * 365 * 86_400;

/// Parses a duration written as an integer and a unit, so config files stay readable.
///
/// Accepted units: `ms`, `s`, `m`, `h`, `d`; no sign, fraction or spaces.
/// Zero is allowed; values above 100 years are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("invalid duration {s:?}: {why}; expected {DURATION_FORMAT}");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at_checked(split).ok_or_else(|| bad("malformed"))?;
    if number.is_empty() {
        return Err(bad("missing number"));
    }
    let n: u64 = number.parse().map_err(|_| bad("number too large"))?;
    let per_unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => return Err(bad("missing unit")),
        _ => return Err(bad("unknown unit")),
    };
    let millis =
        n.checked_mul(per_unit_ms).filter(|ms| *ms / 1_000 <= MAX_SECS).ok_or_else(|| bad("longer than 100 years"))?;
    Ok(Duration::from_millis(millis))
}
