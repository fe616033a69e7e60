//! Records a rule answers with, from their presentation form to wire RDATA.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::dns::name_to_wire;

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;

/// Most records one spoofing rule answers with.
pub const MAX_SPOOF_RECORDS: usize = 16;

/// One record of a spoofed answer; its owner is the query's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SpoofRecord {
    pub rtype: u16,
    pub ttl: u32,
    #[serde(with = "super::spec::wire_bytes")]
    pub rdata: Vec<u8>,
}

/// The SOA of a synthesized negative answer (RFC 2308 §3).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SoaSpec {
    /// Owner, lower-case wire format.
    #[serde(with = "super::spec::wire_bytes")]
    pub owner: Vec<u8>,
    /// The record's TTL: the SOA MINIMUM, which RFC 2308 makes the
    /// negative answer's lifetime.
    pub ttl: u32,
    #[serde(with = "super::spec::wire_bytes")]
    pub rdata: Vec<u8>,
}

/// "A 192.0.2.1", "AAAA 2001:db8::1", "CNAME target.", "TXT any text".
pub fn parse_record(text: &str, ttl: u32) -> Result<SpoofRecord, String> {
    let (kind, value) = text
        .trim()
        .split_once(char::is_whitespace)
        .ok_or_else(|| format!("{text:?}: write a type and a value, e.g. \"A 192.0.2.1\""))?;
    let value = value.trim();
    let (rtype, rdata) = match kind.to_ascii_uppercase().as_str() {
        "A" => {
            let a: Ipv4Addr = value
                .parse()
                .map_err(|_| format!("{value:?} is not an IPv4 address"))?;
            (TYPE_A, a.octets().to_vec())
        }
        "AAAA" => {
            let a: Ipv6Addr = value
                .parse()
                .map_err(|_| format!("{value:?} is not an IPv6 address"))?;
            (TYPE_AAAA, a.octets().to_vec())
        }
        "CNAME" => (TYPE_CNAME, name_to_wire(value)?),
        "TXT" => {
            if value.is_empty() || value.len() > 1024 {
                return Err("TXT text must be 1 to 1024 bytes".into());
            }
            let mut rdata = Vec::with_capacity(value.len() + value.len() / 255 + 1);
            for chunk in value.as_bytes().chunks(255) {
                rdata.push(chunk.len() as u8);
                rdata.extend_from_slice(chunk);
            }
            (TYPE_TXT, rdata)
        }
        other => {
            return Err(format!(
                "{other:?}: spoofed records are A, AAAA, CNAME or TXT"
            ));
        }
    };
    Ok(SpoofRecord { rtype, ttl, rdata })
}

/// "MNAME RNAME SERIAL REFRESH RETRY EXPIRE MINIMUM" owned by `zone`.
pub fn parse_soa(text: &str, zone: &str) -> Result<SoaSpec, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [mname, rname, numbers @ ..] = fields.as_slice() else {
        return Err("write MNAME RNAME SERIAL REFRESH RETRY EXPIRE MINIMUM".into());
    };
    if numbers.len() != 5 {
        return Err("write MNAME RNAME SERIAL REFRESH RETRY EXPIRE MINIMUM".into());
    }
    let mut rdata = name_to_wire(mname)?;
    rdata.extend(name_to_wire(rname)?);
    let mut minimum = 0;
    for n in numbers {
        let v: u32 = n
            .parse()
            .map_err(|_| format!("{n:?} is not a 32-bit number"))?;
        rdata.extend_from_slice(&v.to_be_bytes());
        minimum = v;
    }
    Ok(SoaSpec {
        owner: name_to_wire(zone)?,
        ttl: minimum,
        rdata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_to_wire() {
        assert_eq!(
            parse_record("A 192.0.2.99", 60).unwrap().rdata,
            [192, 0, 2, 99]
        );
        assert_eq!(
            parse_record("aaaa 2001:db8::99", 5).unwrap().rtype,
            TYPE_AAAA
        );
        assert_eq!(
            parse_record("CNAME Target.Example.", 5).unwrap().rdata,
            b"\x06target\x07example\0"
        );
        let long = "x".repeat(300);
        let txt = parse_record(&format!("TXT {long}"), 5).unwrap();
        assert_eq!(txt.rdata.len(), 302);
        assert_eq!(txt.rdata[0], 255);
        assert_eq!(txt.rdata[256], 45);
        for bad in [
            "A",
            "A 1.2.3",
            "AAAA 1.2.3.4",
            "MX 10 x.",
            "CNAME a..b",
            "A  ",
        ] {
            assert!(parse_record(bad, 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn soa_parses_with_minimum_as_ttl() {
        let s = parse_soa(
            "ns.gone.test. hostmaster.gone.test. 1 3600 600 86400 300",
            "gone.test.",
        )
        .unwrap();
        assert_eq!(s.ttl, 300);
        assert_eq!(s.owner, b"\x04gone\x04test\0");
        assert_eq!(&s.rdata[s.rdata.len() - 4..], &300u32.to_be_bytes());
        for bad in ["a. b. 1 2 3 4", "a. b. 1 2 3 4 x", "", "a. b. 1 2 3 4 5 6"] {
            assert!(parse_soa(bad, "z.").is_err(), "{bad}");
        }
    }
}
