//! Parsing a DNS query (RFC 1035 §4.1, RFC 6891 for OPT), defensively: every
//! length is checked, compression pointers are never followed, and the work
//! is bounded by the message length.
//!
//! Only what cannot be answered at all is an error (shorter than a header,
//! or a response). Anything else yields a [`Query`]; one that is malformed
//! carries the reason in [`Query::problem`] and as much of itself as parsed
//! (the question only if it parsed whole), so the pipeline answers FORMERR
//! as RFC 1035 §4.1.1, RFC 6891 §6.1.1 and RFC 9619 ask.

use xdpdns_common::stats::DropReason;

use super::{HEADER_LEN, TYPE_OPT};

/// EDNS parameters of a query's OPT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// How many of a name's last labels [`LabelStarts`] remembers.
pub const LABEL_TAIL: usize = 8;

/// Where the last [`LABEL_TAIL`] labels of a name start, recorded while
/// it is parsed, so a walk from the root (the rules' name lookup) need
/// not scan the name again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LabelStarts {
    /// Labels, the root aside.
    count: u8,
    /// `tail[k % LABEL_TAIL]`: where label `k` (0: the leftmost) starts,
    /// from the name's first byte, for the last [`LABEL_TAIL`] labels.
    tail: [u8; LABEL_TAIL],
}

impl LabelStarts {
    /// Of wire name `name` (validated: at most 255 bytes, 127 labels).
    pub fn scan(name: &[u8]) -> LabelStarts {
        let mut s = LabelStarts::default();
        let mut i = 0;
        while i < name.len() && name[i] != 0 && s.count < 127 {
            s.push(i);
            i += 1 + usize::from(name[i]);
        }
        s
    }

    #[inline(always)]
    fn push(&mut self, start: usize) {
        self.tail[usize::from(self.count) % LABEL_TAIL] = start as u8;
        self.count += 1;
    }

    /// Labels, the root aside.
    #[inline(always)]
    pub fn count(&self) -> usize {
        usize::from(self.count)
    }

    /// Where label `k` starts, if it is one of the last [`LABEL_TAIL`].
    #[inline(always)]
    pub fn start(&self, k: usize) -> Option<usize> {
        (k < self.count() && k + LABEL_TAIL >= self.count())
            .then(|| usize::from(self.tail[k % LABEL_TAIL]))
    }
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
    /// Where its last labels start.
    pub labels: LabelStarts,
    pub qtype: u16,
    pub qclass: u16,
    /// Where the question section ends (answers are written from here).
    pub question_end: usize,
    pub edns: Option<Edns>,
    /// Where the OPT record's UDP payload size is in the message.
    pub opt_size_at: Option<usize>,
    /// Questions kept in `msg[12..question_end]`: 1, or 0 for a header-only
    /// query (or one whose question is malformed).
    pub qdcount: u16,
    /// The OPT record carries a COOKIE option (RFC 7873).
    pub cookie: bool,
    /// The OPT record carries a CLIENT-SUBNET option (RFC 7871).
    pub ecs: bool,
    /// Why the query is malformed (answered FORMERR), if it is.
    pub problem: Option<DropReason>,
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

/// EDNS option code of COOKIE (RFC 7873).
pub(super) const OPTION_COOKIE: u16 = 10;
/// EDNS option code of CLIENT-SUBNET (RFC 7871).
pub(super) const OPTION_ECS: u16 = 8;

/// Parses `msg`, a complete DNS message. Errors only for what must never
/// be answered; a malformed query is `Ok` with [`Query::problem`] set.
pub fn parse_query(msg: &[u8]) -> Result<Query, DropReason> {
    if msg.len() < HEADER_LEN {
        return Err(DropReason::DnsShort);
    }
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & 0x8000 != 0 {
        return Err(DropReason::DnsResponse);
    }
    let mut q = Query {
        id: u16::from_be_bytes([msg[0], msg[1]]),
        flags,
        opcode: ((flags >> 11) & 0xf) as u8,
        rd: flags & 0x0100 != 0,
        cd: flags & 0x0010 != 0,
        qname_end: HEADER_LEN,
        labels: LabelStarts::default(),
        qtype: 0,
        qclass: 0,
        question_end: HEADER_LEN,
        edns: None,
        opt_size_at: None,
        qdcount: 0,
        cookie: false,
        ecs: false,
        problem: None,
    };
    if let Err(reason) = parse_body(msg, &mut q) {
        q.problem = Some(reason);
        // Nothing after a malformed part can be trusted: OPT included.
        q.edns = None;
        q.opt_size_at = None;
        q.cookie = false;
        q.ecs = false;
    }
    Ok(q)
}

/// The question and the records after the header, into `q`.
fn parse_body(msg: &[u8], q: &mut Query) -> Result<(), DropReason> {
    let qdcount = be16(msg, 4)?;
    let ancount = be16(msg, 6)?;
    let nscount = be16(msg, 8)?;
    let arcount = be16(msg, 10)?;
    if qdcount > 1 {
        return Err(DropReason::DnsQdcount);
    }
    let mut at = HEADER_LEN;
    if qdcount == 1 {
        let (qname_end, labels) = question_name(msg)?;
        q.labels = labels;
        q.qtype = be16(msg, qname_end)?;
        q.qclass = be16(msg, qname_end + 2)?;
        q.qname_end = qname_end;
        q.question_end = qname_end + 4;
        q.qdcount = 1;
        at = q.question_end;
    }
    for _ in 0..(u32::from(ancount) + u32::from(nscount)) {
        let rr = skip_record(msg, at)?;
        // RFC 6891 §6.1.1: OPT only in the additional section.
        if rr.rtype == TYPE_OPT {
            return Err(DropReason::DnsBadOpt);
        }
        at = rr.next;
    }
    for _ in 0..arcount {
        let rr = skip_record(msg, at)?;
        if rr.rtype == TYPE_OPT {
            // RFC 6891 §6.1.1: owner must be root, at most one OPT.
            if rr.name_len != 1 || q.edns.is_some() {
                return Err(DropReason::DnsBadOpt);
            }
            let ttl = rr.ttl;
            q.edns = Some(Edns {
                udp_size: rr.class,
                version: (ttl >> 16) as u8,
                dnssec_ok: ttl & 0x8000 != 0,
            });
            q.opt_size_at = Some(at + rr.name_len + 2);
            let options = option_bits(&msg[rr.rdata..rr.next])?;
            q.cookie = options & (1 << OPTION_COOKIE) != 0;
            q.ecs = options & (1 << OPTION_ECS) != 0;
        }
        at = rr.next;
    }
    if at != msg.len() {
        return Err(DropReason::DnsTrailing);
    }
    Ok(())
}

/// Bit `code` set for every option (of codes below 64) the OPT RDATA
/// `rdata` holds; malformed options (one running past the RDATA) make the
/// OPT malformed.
pub(super) fn option_bits(rdata: &[u8]) -> Result<u64, DropReason> {
    let mut at = 0;
    let mut bits = 0u64;
    while at < rdata.len() {
        let c = be16(rdata, at).map_err(|_| DropReason::DnsBadOpt)?;
        let len = usize::from(be16(rdata, at + 2).map_err(|_| DropReason::DnsBadOpt)?);
        at += 4 + len;
        if at > rdata.len() {
            return Err(DropReason::DnsBadOpt);
        }
        if c < 64 {
            bits |= 1 << c;
        }
    }
    Ok(bits)
}

/// Walks the question name at offset 12: where it ends, and where its
/// labels start. Pointers are refused: nothing before the question can be
/// a name, so a pointer here is malformed or hostile.
fn question_name(msg: &[u8]) -> Result<(usize, LabelStarts), DropReason> {
    let mut at = HEADER_LEN;
    let mut labels = LabelStarts::default();
    loop {
        let len = *msg.get(at).ok_or(DropReason::DnsTruncated)?;
        match len {
            0 => {
                at += 1;
                break;
            }
            1..=63 => {
                // Within 255 bytes (checked below): at most 127 labels.
                labels.push(at - HEADER_LEN);
                at += 1 + usize::from(len);
            }
            _ => return Err(DropReason::DnsBadQname),
        }
        if at - HEADER_LEN > 255 {
            return Err(DropReason::DnsBadQname);
        }
    }
    if at - HEADER_LEN > 255 {
        return Err(DropReason::DnsBadQname);
    }
    Ok((at, labels))
}

pub(super) struct Record {
    name_len: usize,
    pub(super) rtype: u16,
    class: u16,
    ttl: u32,
    /// Where its RDATA starts (its TTL is the 4 bytes 6 before); it ends at
    /// `next`.
    pub(super) rdata: usize,
    pub(super) next: usize,
}

/// Skips one resource record starting at `at`. Owner names may end in a
/// pointer, which is skipped (never followed), so loops cannot occur.
pub(super) fn skip_record(msg: &[u8], start: usize) -> Result<Record, DropReason> {
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
        rdata: at + 10,
        next,
    })
}
