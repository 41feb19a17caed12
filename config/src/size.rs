//! Human-friendly byte sizes such as `"512MiB"`, `"64GiB"`, `"2TiB"`.

/// The format hint appended to every size error.
pub(crate) const SIZE_FORMAT: &str =
    "an integer followed by a unit (B, KiB, MiB, GiB or TiB) with no space, e.g. \"512MiB\", \"64GiB\"";

/// Parses a byte size written as an integer and a binary unit.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("invalid size {s:?}: {why}; expected {SIZE_FORMAT}");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at_checked(split).ok_or_else(|| bad("malformed"))?;
    if number.is_empty() {
        return Err(bad("missing number"));
    }
    let n: u64 = number.parse().map_err(|_| bad("number too large"))?;
    let per_unit: u64 = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "" => return Err(bad("missing unit")),
        _ => return Err(bad("unknown unit")),
    };
    n.checked_mul(per_unit).ok_or_else(|| bad("too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("0B"), Ok(0));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        for bad in ["", "GiB", "12", "1.5GiB", "1 GiB", "1GB", "-1MiB", "99999999999999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
