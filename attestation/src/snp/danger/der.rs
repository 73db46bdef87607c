//! A minimal DER writer, enough to build AMD-style test certificates. Test-chain only.

pub(super) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

pub(super) fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

pub(super) fn set(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x31, &parts.concat())
}

/// `[n]` EXPLICIT (constructed, context-specific).
pub(super) fn explicit(n: u8, content: &[u8]) -> Vec<u8> {
    tlv(0xA0 | n, content)
}

/// A non-negative INTEGER from big-endian bytes.
pub(super) fn uint(be: &[u8]) -> Vec<u8> {
    let skip = be.iter().take_while(|&&b| b == 0).count();
    let mut content = Vec::new();
    match be.get(skip) {
        None => content.push(0),
        Some(&first) => {
            if first & 0x80 != 0 {
                content.push(0);
            }
            content.extend_from_slice(&be[skip..]);
        }
    }
    tlv(0x02, &content)
}

pub(super) fn uint_u64(v: u64) -> Vec<u8> {
    uint(&v.to_be_bytes())
}

pub(super) fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut content = Vec::new();
    let mut push = |mut v: u64| {
        let mut stack = vec![(v & 0x7F) as u8];
        v >>= 7;
        while v > 0 {
            stack.push(0x80 | (v & 0x7F) as u8);
            v >>= 7;
        }
        content.extend(stack.iter().rev());
    };
    if let [a, b, rest @ ..] = arcs {
        push(a * 40 + b);
        for &arc in rest {
            push(arc);
        }
    }
    tlv(0x06, &content)
}

pub(super) fn null() -> Vec<u8> {
    vec![0x05, 0x00]
}

pub(super) fn octets(content: &[u8]) -> Vec<u8> {
    tlv(0x04, content)
}

pub(super) fn bits(unused: u8, content: &[u8]) -> Vec<u8> {
    let mut body = vec![unused];
    body.extend_from_slice(content);
    tlv(0x03, &body)
}

pub(super) fn boolean(v: bool) -> Vec<u8> {
    vec![0x01, 0x01, if v { 0xFF } else { 0x00 }]
}

pub(super) fn utf8(s: &str) -> Vec<u8> {
    tlv(0x0C, s.as_bytes())
}

pub(super) fn ia5(s: &str) -> Vec<u8> {
    tlv(0x16, s.as_bytes())
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// UTCTime for 1950–2049, GeneralizedTime otherwise (RFC 5280 §4.1.2.5).
pub(super) fn time(unix: i64) -> Vec<u8> {
    let (year, month, day) = civil_from_days(unix.div_euclid(86_400));
    let secs = unix.rem_euclid(86_400);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if (1950..2050).contains(&year) {
        tlv(
            0x17,
            format!("{:02}{month:02}{day:02}{h:02}{m:02}{s:02}Z", year % 100).as_bytes(),
        )
    } else {
        tlv(
            0x18,
            format!("{year:04}{month:02}{day:02}{h:02}{m:02}{s:02}Z").as_bytes(),
        )
    }
}

/// PEM armour (RFC 7468) around `der`.
pub(super) fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 0x3F) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_known_values() {
        assert_eq!(
            oid(&[1, 3, 6, 1, 4, 1, 3704, 1, 4]),
            b"\x06\x09\x2B\x06\x01\x04\x01\x9C\x78\x01\x04"
        );
        assert_eq!(uint(&[0x00, 0x80]), b"\x02\x02\x00\x80");
        assert_eq!(uint(&[0, 0]), b"\x02\x01\x00");
        assert_eq!(time(0), b"\x17\x0D700101000000Z");
        assert_eq!(time(1_765_404_861), b"\x17\x0D251210221421Z");
        assert_eq!(time(2_556_057_600)[0], 0x18);
        assert_eq!(tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2C]);
        assert_eq!(pem("X", b"ab"), "-----BEGIN X-----\nYWI=\n-----END X-----\n");
        assert_eq!(pem("X", b"abcd"), "-----BEGIN X-----\nYWJjZA==\n-----END X-----\n");
    }
}
