//! The dataplane's packet paths around the [`Pipeline`]: an AF_XDP frame
//! ([`Engine::frame`]) and a kernel-socket datagram ([`Engine::datagram`])
//! are parsed down to their DNS message, [`Pipeline::decide`] decides, and
//! the verdict is carried out — an answer written in place, a query
//! re-addressed to its backend, or a counted drop. Backend replies arriving
//! as frames are relayed here too. The worker loop, the criterion benchmark
//! and the no-allocation test all call these two functions.

use std::net::SocketAddr;

use xdpdns_common::stats::{DataplaneCounters, DropReason};

use crate::forward::{Emit, Forwarder, Sent};
use crate::frame;
use crate::pipeline::{Peer, Pipeline, Transport, Verdict};
use crate::tally::Tally;
use crate::xsk::Fate;

/// What becomes of a kernel-path datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    /// Send back the first `n` bytes of the buffer.
    Answer(usize),
    /// Forwarded to a backend; its reply is relayed later.
    Forwarded,
    /// Nothing to send; counted.
    Dropped,
}

/// The decision and what carries it out.
pub struct Engine {
    pub pipeline: Pipeline,
    pub forwarder: Option<Forwarder>,
    /// Answers per client, when dynamic block rules need them.
    pub tally: Option<Tally>,
}

impl Engine {
    /// The pipeline answers from the forwarder's packet cache, if it has one.
    pub fn new(mut pipeline: Pipeline, forwarder: Option<Forwarder>) -> Engine {
        pipeline.set_cache(forwarder.as_ref().and_then(Forwarder::cache));
        Engine {
            pipeline,
            forwarder,
            tally: None,
        }
    }

    /// One received AF_XDP frame, `chunk[head..head + len]` in a chunk the
    /// caller owns: answered in place, forwarded, a backend's reply relayed,
    /// or dropped and counted.
    #[inline]
    pub fn frame(
        &mut self,
        chunk: &mut [u8],
        head: usize,
        len: usize,
        c: &mut DataplaneCounters,
        emit: &mut dyn Emit,
    ) -> Fate {
        c.xsk.received += 1;
        match self.frame_inner(chunk, head, len, c, emit) {
            Ok(fate) => {
                if let (Some(t), Fate::Transmit { head, len }) = (self.tally.as_mut(), fate) {
                    tally_frame(t, &chunk[head..head + len]);
                }
                fate
            }
            Err(reason) => {
                c.xsk.drop(reason);
                Fate::Recycle
            }
        }
    }

    fn frame_inner(
        &mut self,
        chunk: &mut [u8],
        head: usize,
        len: usize,
        c: &mut DataplaneCounters,
        emit: &mut dyn Emit,
    ) -> Result<Fate, DropReason> {
        let bytes = chunk
            .get(head..head + len)
            .ok_or(DropReason::FrameTruncated)?;
        // Queries' checksums were judged by the XDP program (a mismatch
        // never gets here: the kernel judges it); replies' are ours to check.
        let p = frame::parse(bytes)?;
        if let Some(f) = self.forwarder.as_mut() {
            let dport = u16::from_be_bytes([chunk[head + p.l4 + 2], chunk[head + p.l4 + 3]]);
            if f.is_reply_port(dport) {
                if !frame::udp_checksum_ok(&chunk[head..head + len], &p, true) {
                    return Err(DropReason::BadChecksum);
                }
                return Ok(f.reply_frame(chunk, head, &p, self.pipeline.ttl_clamp(), c, emit));
            }
        }
        let at = head + p.payload();
        let answer = |n: usize, chunk: &mut [u8]| Fate::Transmit {
            head,
            len: frame::write_reply(&mut chunk[head..], &p, n),
        };
        let peer = Peer {
            ip: p.source_ip(&chunk[head..]),
            transport: Transport::Xsk,
            local: p.dest(&chunk[head..]),
        };
        let (backend, query, cache) =
            match self
                .pipeline
                .decide(&mut chunk[at..], p.payload_len, peer, c)
            {
                Verdict::Answer(n) => return Ok(answer(n, chunk)),
                Verdict::Drop(reason) => return Err(reason),
                Verdict::Forward {
                    backend,
                    query,
                    cache,
                } => (backend, query, cache),
            };
        let sent = match (self.forwarder.as_mut(), self.pipeline.backends()) {
            (Some(f), Some(backends)) => {
                f.forward_frame(chunk, head, &p, &query, (backend, cache), backends, c)
            }
            _ => Sent::Failed(xdpdns_common::config::FailAction::Refused),
        };
        match sent {
            Sent::Frame { head, len } => Ok(Fate::Transmit { head, len }),
            Sent::Socket => Ok(Fate::Recycle),
            Sent::Failed(action) => match self.pipeline.fail(&mut chunk[at..], &query, action) {
                Verdict::Answer(n) => Ok(answer(n, chunk)),
                Verdict::Drop(reason) => Err(reason),
                Verdict::Forward { .. } => Err(DropReason::FailDrop),
            },
        }
    }

    /// One datagram `buf[..len]` from `from`, received on the kernel-path
    /// socket bound to `local`; `buf` is the room an answer may use.
    #[inline]
    pub fn datagram(
        &mut self,
        buf: &mut [u8],
        len: usize,
        from: SocketAddr,
        local: SocketAddr,
        c: &mut DataplaneCounters,
    ) -> Datagram {
        if from.port() == 0 {
            c.kernel.drop(DropReason::BadSource);
            return Datagram::Dropped;
        }
        let peer = Peer {
            ip: from.ip(),
            transport: Transport::Udp,
            local,
        };
        let verdict = match self.pipeline.decide(buf, len, peer, c) {
            Verdict::Forward {
                backend,
                query,
                cache,
            } => {
                let sent = match (self.forwarder.as_mut(), self.pipeline.backends()) {
                    (Some(f), Some(backends)) => f.forward_datagram(
                        &mut buf[..len],
                        &query,
                        (backend, cache),
                        from,
                        local,
                        backends,
                        c,
                    ),
                    _ => Err(xdpdns_common::config::FailAction::Refused),
                };
                match sent {
                    Ok(()) => return Datagram::Forwarded,
                    Err(action) => self.pipeline.fail(buf, &query, action),
                }
            }
            v => v,
        };
        match verdict {
            Verdict::Answer(n) => {
                if let (Some(t), Some(msg)) = (self.tally.as_mut(), buf.get(..n)) {
                    t.observe(from.ip(), msg);
                }
                Datagram::Answer(n)
            }
            Verdict::Drop(reason) => {
                c.kernel.drop(reason);
                Datagram::Dropped
            }
            // `fail` never forwards.
            Verdict::Forward { .. } => {
                c.kernel.drop(DropReason::FailDrop);
                Datagram::Dropped
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;

/// Counts a frame we send if it is an answer (QR set): to its destination.
/// Queries forwarded to backends are not answers.
fn tally_frame(t: &mut Tally, f: &[u8]) {
    let Ok(p) = frame::parse(f) else { return };
    let dns = p.payload();
    if let Some(&flags) = f.get(dns + 2)
        && flags & 0x80 != 0
    {
        let a = p.addrs(f);
        let to = if a.v6 {
            std::net::IpAddr::from(a.dst_ip)
        } else {
            std::net::IpAddr::from([a.dst_ip[0], a.dst_ip[1], a.dst_ip[2], a.dst_ip[3]])
        };
        t.observe(to, &f[dns..]);
    }
}
