//! The one answering path shared by AF_XDP frames and kernel-socket
//! datagrams: parse, decide, write in place.

use xdpdns_common::config::AnswerSpec;
use xdpdns_common::dns::Rcode;
use xdpdns_common::stats::DropReason;

use crate::dns::{self, OPCODE_QUERY, Query};
use crate::frame;
use crate::rules::Rules;

/// What to do with a query.
#[derive(Debug)]
pub enum Response {
    /// Answered in place; the answer's length.
    Answer(usize),
    /// To be forwarded to a backend.
    Forward(Query),
}

/// Answers queries according to the configured rules.
pub struct Answerer {
    rules: Rules,
    udp_size: u16,
    verify_checksums: bool,
    /// Queries per rule (the last slot is the default action).
    hits: Box<[u64]>,
    /// The rules as configured, to tell whether a new spec changes them.
    rule_specs: Vec<xdpdns_common::config::RuleSpec>,
}

impl Answerer {
    pub fn new(spec: &AnswerSpec) -> Self {
        let rules = Rules::new(spec);
        Answerer {
            hits: vec![0; rules.slots()].into_boxed_slice(),
            rules,
            udp_size: spec.edns_udp_size,
            verify_checksums: spec.verify_checksums,
            rule_specs: spec.rules.clone(),
        }
    }

    /// An answerer for `spec` that keeps `old`'s rule hits if the rules
    /// are the same (the loader resets its totals only when they change).
    pub fn replacing(old: &Answerer, spec: &AnswerSpec) -> Self {
        let mut a = Answerer::new(spec);
        if a.rule_specs == old.rule_specs && a.hits.len() == old.hits.len() {
            a.hits.copy_from_slice(&old.hits);
        }
        a
    }

    /// Decides about the DNS message `buf[..len]`: answered in place (the
    /// answer's length), or to be forwarded (the parsed query). `buf` is the
    /// room the answer may use.
    #[inline]
    pub fn respond(&mut self, buf: &mut [u8], len: usize) -> Result<Response, DropReason> {
        let msg = buf.get(..len).ok_or(DropReason::DnsTruncated)?;
        let q = dns::parse_query(msg)?;
        let rcode = if q.opcode != OPCODE_QUERY {
            Rcode::NotImp
        } else {
            let (rule, action) = self.rules.decide(msg, &q);
            self.hits[rule] += 1;
            if action == xdpdns_common::config::Action::Forward {
                return Ok(Response::Forward(q));
            }
            action.rcode().ok_or(DropReason::RuleDrop)?
        };
        dns::write_answer(buf, &q, rcode, self.udp_size).map(Response::Answer)
    }

    /// Answers the query `q` in `buf` with `rcode` (a local answer when it
    /// cannot be forwarded).
    pub fn answer_with(
        &self,
        buf: &mut [u8],
        q: &Query,
        rcode: Rcode,
    ) -> Result<usize, DropReason> {
        dns::write_answer(buf, q, rcode, self.udp_size)
    }

    /// Answers the DNS message `buf[..len]` in place, REFUSED where it would
    /// be forwarded. Returns the answer's length.
    #[inline]
    pub fn answer_message(&mut self, buf: &mut [u8], len: usize) -> Result<usize, DropReason> {
        match self.respond(buf, len)? {
            Response::Answer(n) => Ok(n),
            Response::Forward(q) => self.answer_with(buf, &q, Rcode::Refused),
        }
    }

    pub fn verify_checksums(&self) -> bool {
        self.verify_checksums
    }

    /// Answers the Ethernet frame `buf[..len]` in place, headers included.
    /// `buf` runs to the end of the frame's buffer. Returns the reply's length.
    #[inline]
    pub fn answer_frame(&mut self, buf: &mut [u8], len: usize) -> Result<usize, DropReason> {
        let p = frame::parse(
            buf.get(..len).ok_or(DropReason::FrameTruncated)?,
            self.verify_checksums,
        )?;
        let payload = p.payload();
        let n = self.answer_message(&mut buf[payload..], p.payload_len)?;
        Ok(frame::write_reply(buf, &p, n))
    }

    /// Queries per rule since this answerer was built; the last slot is the default.
    pub fn rule_hits(&self) -> &[u64] {
        &self.hits
    }
}

#[cfg(test)]
mod tests;
