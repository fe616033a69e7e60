//! Writing a header-only answer over the query, in place.

use xdpdns_common::dns::Rcode;
use xdpdns_common::stats::DropReason;

use super::{BADVERS_EXT, HEADER_LEN, Query, TYPE_OPT};

const OPT_LEN: usize = 11;

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
    let end = q.question_end + if q.edns.is_some() { OPT_LEN } else { 0 };
    if end > buf.len() || q.question_end < HEADER_LEN {
        return Err(DropReason::AnswerTooLarge);
    }
    let (rcode_low, ext) = match q.edns {
        Some(e) if e.version > 0 => (0, BADVERS_EXT),
        _ => (rcode.value(), 0),
    };
    let opcode = q.opcode & 0x0f;
    buf[2] = 0x80 | (opcode << 3) | u8::from(q.rd);
    buf[3] = (if q.cd { 0x10 } else { 0 }) | rcode_low;
    // QDCOUNT as kept (1, or 0 without a question), ANCOUNT 0, NSCOUNT 0,
    // ARCOUNT 0 or 1.
    let qd = u8::from(q.qdcount > 0 && q.question_end > HEADER_LEN);
    buf[4..12].copy_from_slice(&[0, qd, 0, 0, 0, 0, 0, u8::from(q.edns.is_some())]);
    if let Some(e) = q.edns {
        let opt = &mut buf[q.question_end..end];
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
            qtype: 0,
            qclass: 0,
            question_end: HEADER_LEN,
            edns: original.edns,
            opt_size_at: None,
            qdcount: 0,
            cookie: false,
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
        qtype: u16::from_be_bytes([buf[end - 4], buf[end - 3]]),
        qclass: u16::from_be_bytes([buf[end - 2], buf[end - 1]]),
        question_end: end,
        edns: original.edns,
        opt_size_at: None,
        qdcount: 1,
        cookie: false,
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
