//! Human sizes: `512M`, `1G`, `1.5g`, `65536`, `256MiB`.

/// Parse a size in bytes with an optional K, M, G or T suffix (powers of 1024).
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let err = || {
        format!("invalid size '{s}': use a number with an optional K, M, G or T suffix, e.g. 256M")
    };
    let lower = t.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, mult) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 1u64 << 10),
        Some('m') => (&body[..body.len() - 1], 1 << 20),
        Some('g') => (&body[..body.len() - 1], 1 << 30),
        Some('t') => (&body[..body.len() - 1], 1 << 40),
        Some(c) if c.is_ascii_digit() => (body, 1),
        _ => return Err(err()),
    };
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(err());
    }
    let v: f64 = num.parse().map_err(|_| err())?;
    let bytes = v * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(err());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn sizes() {
        assert_eq!(parse("256M"), Ok(256 << 20));
        assert_eq!(parse("1g"), Ok(1 << 30));
        assert_eq!(parse("1.5G"), Ok(3 << 29));
        assert_eq!(parse("512MiB"), Ok(512 << 20));
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("64k"), Ok(64 << 10));
        for bad in ["12XB", "", "M", "-5M", "1..2G", "abc", "0"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
