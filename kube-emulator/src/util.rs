//! Small helpers: timestamps, uids, generated names, name validation, continue tokens.

use std::time::{SystemTime, UNIX_EPOCH};

/// `2025-01-02T03:04:05Z`, as Kubernetes writes `metav1.Time`.
pub(crate) fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

pub(crate) fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// A 64-bit mixer (splitmix64) for uids and generated names.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A per-process seed, so two emulators (or two runs) do not hand out the same uids.
pub(crate) fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    mix(nanos ^ (u64::from(std::process::id()) << 32))
}

/// A version-4-shaped UUID from a counter value.
pub(crate) fn uid(seed: u64, n: u64) -> String {
    let a = mix(seed ^ n);
    let b = mix(a ^ 0x5555_5555_5555_5555);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// The 5-character suffix the real server appends to `generateName`.
pub(crate) fn name_suffix(seed: u64, n: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = mix(seed ^ n.rotate_left(17));
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// Why `name` is not a DNS-1123 label (namespaces, services) or subdomain (pods, policies).
pub(crate) fn name_problem(name: &str, label: bool) -> Option<String> {
    let max = if label { 63 } else { 253 };
    if name.is_empty() {
        return Some("name or generateName is required".into());
    }
    if name.len() > max {
        return Some(format!("must be no more than {max} characters"));
    }
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.');
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let first = name.chars().next().is_some_and(alnum);
    let last = name.chars().last().is_some_and(alnum);
    if !name.chars().all(ok_char) || !first || !last {
        let what = if label {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        } else {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        };
        return Some(format!("Invalid value: {name:?}: {what}"));
    }
    None
}

/// A continue token: the snapshot resourceVersion and the last key returned, hex-encoded so it
/// is opaque (the real server base64-encodes a JSON document with the same two fields).
pub(crate) fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    let raw = format!("{rv}\u{0}{ns}\u{0}{name}");
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn decode_continue(token: &str) -> Option<(u64, String, String)> {
    if !token.len().is_multiple_of(2) || !token.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16).ok())
        .collect();
    let raw = String::from_utf8(bytes?).ok()?;
    let mut parts = raw.split('\u{0}');
    let rv = parts.next()?.parse().ok()?;
    let ns = parts.next()?.to_string();
    let name = parts.next()?.to_string();
    if parts.next().is_some() || name.is_empty() {
        return None;
    }
    Some((rv, ns, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_787_045), "2025-01-02T03:04:05Z");
    }

    #[test]
    fn tokens_round_trip() {
        let t = encode_continue(42, "ns", "a.b");
        assert_eq!(decode_continue(&t), Some((42, "ns".into(), "a.b".into())));
        assert_eq!(decode_continue("zz"), None);
        assert_eq!(decode_continue("abc"), None);
        assert_eq!(decode_continue("é1"), None);
    }

    #[test]
    fn names() {
        assert!(name_problem("web-1", true).is_none());
        assert!(name_problem("a.b", true).is_some());
        assert!(name_problem("a.b", false).is_none());
        assert!(name_problem("Web", false).is_some());
        assert!(name_problem("-a", false).is_some());
        assert!(name_problem("", false).is_some());
        assert_ne!(uid(1, 1), uid(1, 2));
        assert_eq!(uid(1, 1).len(), 36);
        assert_eq!(name_suffix(1, 1).len(), 5);
    }
}
