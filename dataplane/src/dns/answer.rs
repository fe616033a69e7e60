//! Writing an answer over the query, in place: header-only, or with a
//! rule's records (spoofed answers, the SOA of a negative answer).

use xdpdns_common::config::{SoaSpec, SpoofRecord, TYPE_CNAME, TYPE_SOA};
use xdpdns_common::dns::Rcode;
use xdpdns_common::stats::DropReason;

use super::{BADVERS_EXT, HEADER_LEN, Query, TYPE_OPT};

const OPT_LEN: usize = 11;
const CLASS_IN: u16 = 1;
const QTYPE_ANY: u16 = 255;

/// What a local answer carries beyond its rcode.
#[derive(Debug, Clone, Copy)]
pub struct Extra<'a> {
    /// Records to answer with; those of the query's type are written (all
    /// for ANY, a CNAME whatever the type), for class IN or ANY only.
    pub answers: &'a [SpoofRecord],
    /// The SOA for the authority section of an answer without records.
    pub soa: Option<&'a SoaSpec>,
    pub aa: bool,
    pub ra: bool,
    /// Set TC (and write no records).
    pub tc: bool,
    /// The largest answer the client takes: beyond it, records are left
    /// out and TC is set (RFC 1035 §4.2.1, RFC 6891 §6.2.5).
    pub max_len: usize,
}

impl Extra<'_> {
    pub const NONE: Extra<'static> = Extra {
        answers: &[],
        soa: None,
        aa: false,
        ra: false,
        tc: false,
        max_len: usize::MAX,
    };
}

/// Turns the query in `buf` (parsed as `q`) into an answer with `rcode` and no
/// records: the question is kept; if the query had an OPT record, ours follows
/// it (RFC 6891: payload size `udp_size`, version 0, DO copied; BADVERS for a
/// version above 0). Returns the answer's length. `buf` may be longer than the
/// query: it is the room available.
pub fn write_answer(
    buf: &mut [u8],
    q: &Query,
    rcode: Rcode,
    udp_size: u16,
) -> Result<usize, DropReason> {
    write_answer_with(buf, q, rcode, udp_size, &Extra::NONE)
}

/// Bytes record `r` takes with a compressed owner.
fn record_len(r: &SpoofRecord) -> usize {
    12 + r.rdata.len()
}

/// The records of `answers` a query of `qtype` is answered with: those of
/// its type, all of them for ANY, a CNAME whatever the type.
pub fn records_for(answers: &[SpoofRecord], qtype: u16) -> impl Iterator<Item = &SpoofRecord> {
    let cname = answers.iter().any(|r| r.rtype == TYPE_CNAME);
    answers
        .iter()
        .filter(move |r| cname || qtype == QTYPE_ANY || r.rtype == qtype)
}

/// As [`write_answer`], with `extra`'s records and flags.
pub fn write_answer_with(
    buf: &mut [u8],
    q: &Query,
    rcode: Rcode,
    udp_size: u16,
    extra: &Extra<'_>,
) -> Result<usize, DropReason> {
    if q.question_end < HEADER_LEN {
        return Err(DropReason::AnswerTooLarge);
    }
    let has_question = q.qdcount > 0 && q.question_end > HEADER_LEN;
    let badvers = q.edns.is_some_and(|e| e.version > 0);
    let class_ok = q.qclass == CLASS_IN || q.qclass == QTYPE_ANY;
    let mut tc = extra.tc;
    let mut answers = 0usize;
    let mut records_len = 0usize;
    if has_question && class_ok && !tc && !badvers {
        for r in records_for(extra.answers, q.qtype) {
            answers += 1;
            records_len += record_len(r);
        }
    }
    let soa = extra
        .soa
        .filter(|_| answers == 0 && has_question && !tc && !badvers);
    let soa_len = soa.map_or(0, |s| s.owner.len() + 10 + s.rdata.len());
    let opt_len = if q.edns.is_some() { OPT_LEN } else { 0 };
    let mut end = q.question_end + records_len + soa_len + opt_len;
    let (mut answers, mut soa) = (answers, soa);
    if end > extra.max_len.min(buf.len()) && records_len + soa_len > 0 {
        // Too large for the client: the records go, TC says so.
        tc = true;
        answers = 0;
        soa = None;
        end = q.question_end + opt_len;
    }
    if end > buf.len() {
        return Err(DropReason::AnswerTooLarge);
    }
    let (rcode_low, ext) = if badvers {
        (0, BADVERS_EXT)
    } else {
        (rcode.value(), 0)
    };
    let opcode = q.opcode & 0x0f;
    buf[2] = 0x80 | (opcode << 3) | u8::from(extra.aa) << 2 | u8::from(tc) << 1 | u8::from(q.rd);
    buf[3] = u8::from(extra.ra) << 7 | (if q.cd { 0x10 } else { 0 }) | rcode_low;
    // QDCOUNT as kept (1, or 0 without a question), then the records'.
    let qd = u8::from(has_question);
    let an = (answers as u16).to_be_bytes();
    buf[4..12].copy_from_slice(&[
        0,
        qd,
        an[0],
        an[1],
        0,
        u8::from(soa.is_some()),
        0,
        u8::from(q.edns.is_some()),
    ]);
    let mut at = q.question_end;
    if answers > 0 {
        for r in records_for(extra.answers, q.qtype) {
            let rr = &mut buf[at..at + record_len(r)];
            rr[0..2].copy_from_slice(&[0xc0, HEADER_LEN as u8]);
            rr[2..4].copy_from_slice(&r.rtype.to_be_bytes());
            rr[4..6].copy_from_slice(&CLASS_IN.to_be_bytes());
            rr[6..10].copy_from_slice(&r.ttl.to_be_bytes());
            rr[10..12].copy_from_slice(&(r.rdata.len() as u16).to_be_bytes());
            rr[12..].copy_from_slice(&r.rdata);
            at += rr.len();
        }
    }
    if let Some(s) = soa {
        let o = s.owner.len();
        let rr = &mut buf[at..at + soa_len];
        rr[..o].copy_from_slice(&s.owner);
        rr[o..o + 2].copy_from_slice(&TYPE_SOA.to_be_bytes());
        rr[o + 2..o + 4].copy_from_slice(&CLASS_IN.to_be_bytes());
        rr[o + 4..o + 8].copy_from_slice(&s.ttl.to_be_bytes());
        rr[o + 8..o + 10].copy_from_slice(&(s.rdata.len() as u16).to_be_bytes());
        rr[o + 10..].copy_from_slice(&s.rdata);
        at += soa_len;
    }
    if let Some(e) = q.edns {
        let opt = &mut buf[at..at + OPT_LEN];
        opt[0] = 0;
        opt[1..3].copy_from_slice(&TYPE_OPT.to_be_bytes());
        opt[3..5].copy_from_slice(&udp_size.to_be_bytes());
        opt[5] = ext;
        opt[6] = 0;
        opt[7] = if e.dnssec_ok { 0x80 } else { 0 };
        opt[8] = 0;
        opt[9..11].copy_from_slice(&[0, 0]);
    }
    Ok(end)
}

/// Writes the answer to a query that is no longer at hand (it timed out at a
/// backend) into `buf`: the original query's ID and header flags (opcode,
/// RD, CD), its question bytes as sent, and OPT if it had one — then the
/// same writer as every other answer.
pub fn write_answer_for(
    buf: &mut [u8],
    original: &Original<'_>,
    rcode: Rcode,
    udp_size: u16,
) -> Result<usize, DropReason> {
    let qlen = original.question.len();
    let end = HEADER_LEN + qlen;
    // A question-less query (forwarded header-only) is answered header-only.
    if qlen != 0 && qlen < 5 || end > buf.len() {
        return Err(DropReason::AnswerTooLarge);
    }
    buf[0..2].copy_from_slice(&original.id.to_be_bytes());
    buf[2..4].copy_from_slice(&original.flags.to_be_bytes());
    buf[4..12].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
    buf[HEADER_LEN..end].copy_from_slice(original.question);
    if qlen == 0 {
        let q = Query {
            id: original.id,
            flags: original.flags,
            opcode: ((original.flags >> 11) & 0xf) as u8,
            rd: original.flags & 0x0100 != 0,
            cd: original.flags & 0x0010 != 0,
            qname_end: HEADER_LEN,
            labels: super::LabelStarts::default(),
            qtype: 0,
            qclass: 0,
            question_end: HEADER_LEN,
            edns: original.edns,
            opt_size_at: None,
            qdcount: 0,
            cookie: false,
            ecs: false,
            problem: None,
        };
        return write_answer(buf, &q, rcode, udp_size);
    }
    let q = Query {
        id: original.id,
        flags: original.flags,
        opcode: ((original.flags >> 11) & 0xf) as u8,
        rd: original.flags & 0x0100 != 0,
        cd: original.flags & 0x0010 != 0,
        qname_end: end - 4,
        labels: super::LabelStarts::scan(&buf[HEADER_LEN..end - 4]),
        qtype: u16::from_be_bytes([buf[end - 4], buf[end - 3]]),
        qclass: u16::from_be_bytes([buf[end - 2], buf[end - 1]]),
        question_end: end,
        edns: original.edns,
        opt_size_at: None,
        qdcount: 1,
        cookie: false,
        ecs: false,
        problem: None,
    };
    write_answer(buf, &q, rcode, udp_size)
}

/// What is kept of a forwarded query to answer it without the query.
#[derive(Debug, Clone, Copy)]
pub struct Original<'q> {
    pub id: u16,
    /// The query's header flags word (bytes 2–3).
    pub flags: u16,
    /// Question name, type and class, wire format.
    pub question: &'q [u8],
    pub edns: Option<super::Edns>,
}
