//! Parsing a DNS query (RFC 1035 §4.1, RFC 6891 for OPT), defensively: every
//! length is checked, compression pointers are never followed, and the work
//! is bounded by the message length.

use xdpdns_common::stats::DropReason;

use super::{HEADER_LEN, TYPE_OPT};

/// EDNS parameters of a query's OPT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A parsed query: offsets into the message it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// The header's flags word (bytes 2–3).
    pub flags: u16,
    pub opcode: u8,
    pub rd: bool,
    pub cd: bool,
    /// The question name, wire format, `msg[12..qname_end]` (root label included).
    pub qname_end: usize,
    pub qtype: u16,
    pub qclass: u16,
    /// Where the question section ends (answers are written from here).
    pub question_end: usize,
    pub edns: Option<Edns>,
    /// Where the OPT record's UDP payload size is in the message.
    pub opt_size_at: Option<usize>,
}

impl Query {
    pub fn qname<'m>(&self, msg: &'m [u8]) -> &'m [u8] {
        &msg[HEADER_LEN..self.qname_end]
    }
}

#[inline]
fn be16(b: &[u8], at: usize) -> Result<u16, DropReason> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => Err(DropReason::DnsTruncated),
    }
}

/// Parses `msg`, a complete DNS message.
pub fn parse_query(msg: &[u8]) -> Result<Query, DropReason> {
    if msg.len() < HEADER_LEN {
        return Err(DropReason::DnsShort);
    }
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & 0x8000 != 0 {
        return Err(DropReason::DnsResponse);
    }
    if be16(msg, 4)? != 1 {
        return Err(DropReason::DnsQdcount);
    }
    let ancount = be16(msg, 6)?;
    let nscount = be16(msg, 8)?;
    let arcount = be16(msg, 10)?;

    let qname_end = question_name_end(msg)?;
    let qtype = be16(msg, qname_end)?;
    let qclass = be16(msg, qname_end + 2)?;
    let question_end = qname_end + 4;

    let mut at = question_end;
    for _ in 0..(u32::from(ancount) + u32::from(nscount)) {
        at = skip_record(msg, at)?.next;
    }
    let mut edns = None;
    let mut opt_size_at = None;
    for _ in 0..arcount {
        let rr = skip_record(msg, at)?;
        if rr.rtype == TYPE_OPT {
            // RFC 6891 §6.1.1: owner must be root, at most one OPT.
            if rr.name_len != 1 || edns.is_some() {
                return Err(DropReason::DnsBadOpt);
            }
            let ttl = rr.ttl;
            edns = Some(Edns {
                udp_size: rr.class,
                version: (ttl >> 16) as u8,
                dnssec_ok: ttl & 0x8000 != 0,
            });
            opt_size_at = Some(at + rr.name_len + 2);
        }
        at = rr.next;
    }

    Ok(Query {
        id: u16::from_be_bytes([msg[0], msg[1]]),
        flags,
        opcode: ((flags >> 11) & 0xf) as u8,
        rd: flags & 0x0100 != 0,
        cd: flags & 0x0010 != 0,
        qname_end,
        qtype,
        qclass,
        question_end,
        edns,
        opt_size_at,
    })
}

/// Walks the question name at offset 12. Pointers are refused: nothing before
/// the question can be a name, so a pointer here is malformed or hostile.
fn question_name_end(msg: &[u8]) -> Result<usize, DropReason> {
    let mut at = HEADER_LEN;
    loop {
        let len = *msg.get(at).ok_or(DropReason::DnsTruncated)?;
        match len {
            0 => {
                at += 1;
                break;
            }
            1..=63 => at += 1 + usize::from(len),
            _ => return Err(DropReason::DnsBadQname),
        }
        if at - HEADER_LEN > 255 {
            return Err(DropReason::DnsBadQname);
        }
    }
    if at - HEADER_LEN > 255 {
        return Err(DropReason::DnsBadQname);
    }
    Ok(at)
}

struct Record {
    name_len: usize,
    rtype: u16,
    class: u16,
    ttl: u32,
    next: usize,
}

/// Skips one resource record starting at `at`. Owner names may end in a
/// pointer, which is skipped (never followed), so loops cannot occur.
fn skip_record(msg: &[u8], start: usize) -> Result<Record, DropReason> {
    let mut at = start;
    loop {
        let len = *msg.get(at).ok_or(DropReason::DnsTruncated)?;
        match len {
            0 => {
                at += 1;
                break;
            }
            1..=63 => at += 1 + usize::from(len),
            0xc0..=0xff => {
                at += 2;
                break;
            }
            _ => return Err(DropReason::DnsBadQname),
        }
        if at - start > 255 {
            return Err(DropReason::DnsBadQname);
        }
    }
    let name_len = at - start;
    let rtype = be16(msg, at)?;
    let class = be16(msg, at + 2)?;
    let ttl = (u32::from(be16(msg, at + 4)?) << 16) | u32::from(be16(msg, at + 6)?);
    let rdlen = usize::from(be16(msg, at + 8)?);
    let next = at + 10 + rdlen;
    if next > msg.len() {
        return Err(DropReason::DnsTruncated);
    }
    Ok(Record {
        name_len,
        rtype,
        class,
        ttl,
        next,
    })
}
