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
    // QDCOUNT 1, ANCOUNT 0, NSCOUNT 0, ARCOUNT 0 or 1.
    buf[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(q.edns.is_some())]);
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
