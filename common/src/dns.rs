//! DNS vocabulary the configuration speaks: record types and response codes by
//! name. The wire handling lives in the dataplane.

use serde::{Deserialize, Serialize};

/// Response codes a rule can answer with (RFC 1035 §4.1.1, RFC 6895).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rcode {
    /// NOERROR with no records: NODATA.
    NoError,
    FormErr,
    ServFail,
    NxDomain,
    NotImp,
    Refused,
}

impl Rcode {
    /// The 4-bit header value.
    pub const fn value(self) -> u8 {
        match self {
            Rcode::NoError => 0,
            Rcode::FormErr => 1,
            Rcode::ServFail => 2,
            Rcode::NxDomain => 3,
            Rcode::NotImp => 4,
            Rcode::Refused => 5,
        }
    }
}

const QTYPE_NAMES: &[(&str, u16)] = &[
    ("A", 1),
    ("NS", 2),
    ("CNAME", 5),
    ("SOA", 6),
    ("PTR", 12),
    ("HINFO", 13),
    ("MX", 15),
    ("TXT", 16),
    ("AAAA", 28),
    ("SRV", 33),
    ("NAPTR", 35),
    ("DS", 43),
    ("SSHFP", 44),
    ("RRSIG", 46),
    ("NSEC", 47),
    ("DNSKEY", 48),
    ("NSEC3", 50),
    ("TLSA", 52),
    ("SVCB", 64),
    ("HTTPS", 65),
    ("AXFR", 252),
    ("ANY", 255),
    ("CAA", 257),
];

/// Parses a record type mnemonic (`"AAAA"`) or the RFC 3597 form (`"TYPE28"`).
pub fn qtype_from_name(name: &str) -> Option<u16> {
    let upper = name.to_ascii_uppercase();
    if let Some(num) = upper.strip_prefix("TYPE") {
        return num.parse().ok();
    }
    QTYPE_NAMES
        .iter()
        .find(|(n, _)| *n == upper)
        .map(|(_, v)| *v)
}

/// Converts a presentation-format domain name to lower-case wire format,
/// e.g. `"Example.com."` to `\x07example\x03com\x00`. The trailing dot is
/// optional; `"."` is the root. Escapes are not supported.
pub fn name_to_wire(name: &str) -> Result<Vec<u8>, String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let mut wire = Vec::with_capacity(trimmed.len() + 2);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() {
                return Err(format!("{name:?} has an empty label"));
            }
            if label.len() > 63 {
                return Err(format!("{name:?} has a label longer than 63 bytes"));
            }
            if label.bytes().any(|b| b == b'\\' || !b.is_ascii_graphic()) {
                return Err(format!(
                    "{name:?}: labels must be printable ASCII without escapes"
                ));
            }
            wire.push(label.len() as u8);
            wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    wire.push(0);
    if wire.len() > 255 {
        return Err(format!("{name:?} is longer than 255 bytes in wire format"));
    }
    Ok(wire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qtypes_by_name_and_number() {
        assert_eq!(qtype_from_name("aaaa"), Some(28));
        assert_eq!(qtype_from_name("TYPE65"), Some(65));
        assert_eq!(qtype_from_name("type65535"), Some(65535));
        assert_eq!(qtype_from_name("TYPE65536"), None);
        assert_eq!(qtype_from_name("BOGUS"), None);
    }

    #[test]
    fn names_to_wire() {
        assert_eq!(name_to_wire(".").unwrap(), b"\0");
        assert_eq!(name_to_wire("").unwrap(), b"\0");
        assert_eq!(
            name_to_wire("Example.COM.").unwrap(),
            b"\x07example\x03com\0"
        );
        assert_eq!(name_to_wire("a.b").unwrap(), b"\x01a\x01b\0");
        assert!(name_to_wire("a..b").is_err());
        assert!(name_to_wire(&"x".repeat(64)).is_err());
        assert!(name_to_wire(&["abcdefghi"; 30].join(".")).is_err());
        assert!(name_to_wire("a b.c").is_err());
    }
}
