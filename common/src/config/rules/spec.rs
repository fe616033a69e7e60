//! The compiled rules as they travel to the dataplanes and TCP workers:
//! names in lower-case wire format, types and classes as numbers, records
//! as wire RDATA. The receiver builds its lookup structures from these.

use serde::{Deserialize, Serialize};

use super::Action;
use super::records::{SoaSpec, SpoofRecord};
use crate::net::Prefix;

/// A name a selector matches: exactly, or it and every name below it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NameEntry {
    /// Lower-case wire format, root label included.
    #[serde(with = "wire_bytes")]
    pub wire: Vec<u8>,
    pub exact: bool,
}

/// What the OPT record must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EdnsMatch {
    Absent,
    Present,
    Version(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TransportMatch {
    Udp,
    Tcp,
}

/// A compiled selector: `None` or empty means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SelectorSpec {
    pub source: Vec<Prefix>,
    pub listen: Vec<std::net::SocketAddr>,
    /// Names from `qname`, `qname_suffix` and `qname_file` together: the
    /// selector holds if any of them matches.
    pub names: Vec<NameEntry>,
    pub qtypes: Vec<u16>,
    pub qclass: Option<u16>,
    pub opcode: Option<u8>,
    pub rd: Option<bool>,
    pub dnssec_ok: Option<bool>,
    pub edns: Option<EdnsMatch>,
    /// Message size range, both ends included.
    pub query_size: Option<(u16, u16)>,
    pub transport: Option<TransportMatch>,
}

/// A compiled rule as the dataplane evaluates it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuleSpec {
    pub when: SelectorSpec,
    pub not: Option<SelectorSpec>,
    pub action: Action,
    /// The pool a forwarding rule sends to, by name.
    pub pool: Option<String>,
    /// Records a spoofing rule answers with.
    pub answers: Vec<SpoofRecord>,
    /// The SOA a negative answer carries.
    pub soa: Option<SoaSpec>,
    pub aa: bool,
    pub ra: bool,
}

impl RuleSpec {
    /// The rule's identity across reloads: equal rules, equal values (the
    /// same in every process of a build). Kept instead of the rule itself
    /// so that a reload can match rules without a second copy of every
    /// blocklist.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    /// A rule of selectors `when` doing `action`, with nothing else.
    pub fn new(when: SelectorSpec, action: Action) -> RuleSpec {
        RuleSpec {
            when,
            not: None,
            action,
            pool: None,
            answers: Vec::new(),
            soa: None,
            aa: false,
            ra: false,
        }
    }
}

/// Everything a dataplane needs to answer locally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerSpec {
    pub rules: Vec<RuleSpec>,
    /// The action when no rule matches.
    pub default: Action,
    /// UDP payload size advertised in our OPT records.
    pub edns_udp_size: u16,
    /// Who may be answered on the kernel path and over TCP (AF_XDP frames
    /// were judged by the XDP program already).
    pub acl: crate::config::Acl,
    /// Answers tallied per client for the dynamic block rules, if any.
    #[serde(default)]
    pub tally: Option<crate::config::TallySpec>,
    /// TTLs of forwarded answers are raised to `min_ttl` and lowered to
    /// `max_ttl` (0: no clamping).
    #[serde(default)]
    pub min_ttl: u32,
    #[serde(default)]
    pub max_ttl: u32,
}

/// Byte strings (names, RDATA) as MessagePack binaries, one byte per byte
/// rather than an array of integers (a 100 k-name blocklist stays a few MiB
/// on the wire), and at most [`MAX_WIRE_BYTES`] each.
pub(super) mod wire_bytes {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    /// Longest name or RDATA accepted.
    pub const MAX_WIRE_BYTES: usize = 2048;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string of at most 2048 bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                if v.len() > MAX_WIRE_BYTES {
                    return Err(E::invalid_length(v.len(), &self));
                }
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                self.visit_bytes(&v)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    if out.len() >= MAX_WIRE_BYTES {
                        return Err(de::Error::invalid_length(out.len() + 1, &Bytes));
                    }
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}
