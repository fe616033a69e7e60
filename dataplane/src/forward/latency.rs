//! How long each backend takes to answer, and from it when a query still
//! in flight is presumed lost.
//!
//! A backend that is merely slow (an overloaded one, a recursive resolver
//! on a cache miss) must keep its queries: giving them up wastes the work
//! already done. One that dropped a query will never answer it, and the
//! slot should be reused soon. The line between the two is drawn as TCP
//! draws its retransmission timeout from round-trip times (RFC 6298): the
//! smoothed latency plus four times its smoothed deviation, within bounds.
//! A steady backend's queries are given up soon after they are overdue; a
//! recursive resolver whose misses take a hundred times its hits has a
//! large deviation and keeps them.
//!
//! A query is only given up when its slot is wanted (the allocator comes
//! round to it), so the line matters only while the table cycles faster
//! than that: under load.
//!
//! Replies from socket backends can wait much longer on our side: 64
//! sockets' receive buffers hold seconds of them while the dataplane is
//! saturated, and that wait is in every latency measured. Giving those
//! queries up early throws away replies that are already here (measured:
//! stray replies, fewer answers), so for them the line is also at least
//! eight smoothed latencies and 20 ms. AF_XDP replies wait only in the RX
//! ring, served first.

/// Never presumed lost sooner than this (scheduling hiccups of a backend
/// on a busy machine take milliseconds).
const FLOOR_NS: u64 = 2_000_000;
/// For socket backends: at least this many smoothed latencies, and this.
const SOCKET_LATENCIES: u64 = 8;
const SOCKET_FLOOR_NS: u64 = 20_000_000;

/// RFC 6298's estimate for one backend, in nanoseconds.
#[derive(Debug, Default, Clone, Copy)]
struct Estimate {
    /// Smoothed latency; 0 before the first reply.
    srtt: u64,
    /// Smoothed mean deviation.
    rttvar: u64,
    /// Its replies come over sockets (see the module's comment).
    sockets: bool,
}

/// The estimate per backend tag (kept across reconfigurations: tags follow
/// backends).
#[derive(Debug, Default)]
pub struct Latency {
    /// (tag, estimate); a handful of backends.
    by_tag: Vec<(u16, Estimate)>,
}

impl Latency {
    /// Follows exactly the backends `tags` — (tag, whether its replies
    /// come over sockets) — kept ones keep their figure. Allocates here,
    /// never per reply.
    pub fn track(&mut self, tags: impl Iterator<Item = (u16, bool)>) {
        let old = std::mem::take(&mut self.by_tag);
        self.by_tag = tags
            .map(|(t, sockets)| {
                let e = old
                    .iter()
                    .find(|(o, _)| *o == t)
                    .map_or_else(Estimate::default, |(_, e)| *e);
                (t, Estimate { sockets, ..e })
            })
            .collect();
    }

    /// A reply from backend `tag` took `ns`.
    #[inline]
    pub fn observe(&mut self, tag: u16, ns: u64) {
        if let Some((_, e)) = self.by_tag.iter_mut().find(|(t, _)| *t == tag) {
            let ns = ns.max(1);
            if e.srtt == 0 {
                // RFC 6298 2.2: the first measurement.
                e.srtt = ns;
                e.rttvar = ns / 2;
            } else {
                // 2.3, with alpha 1/8 and beta 1/4 (the deviation first,
                // from the old average).
                e.rttvar = e.rttvar - e.rttvar / 4 + e.srtt.abs_diff(ns) / 4;
                e.srtt = e.srtt - e.srtt / 8 + ns / 8;
            }
        }
    }

    /// How old a query to `tag` must be to be presumed lost, given the
    /// query timeout (the ceiling is a quarter of it): with no reply seen
    /// yet, the ceiling.
    #[inline]
    pub fn lost_after_ns(&self, tag: u16, timeout_ms: u32) -> u64 {
        let ceiling = (u64::from(timeout_ms) * 1_000_000 / 4).max(FLOOR_NS);
        match self.by_tag.iter().find(|(t, _)| *t == tag) {
            Some((_, e)) if e.srtt > 0 => {
                let rto = e.srtt.saturating_add(e.rttvar.saturating_mul(4));
                let line = if e.sockets {
                    rto.max(e.srtt.saturating_mul(SOCKET_LATENCIES))
                        .max(SOCKET_FLOOR_NS)
                } else {
                    rto
                };
                line.clamp(FLOOR_NS, ceiling)
            }
            _ => ceiling,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_follows_the_latency_within_bounds() {
        let mut l = Latency::default();
        l.track([(1, false), (2, false)].into_iter());
        assert_eq!(
            l.lost_after_ns(1, 2000),
            500_000_000,
            "unknown: a quarter of the timeout"
        );
        l.observe(1, 100_000);
        assert_eq!(l.lost_after_ns(1, 2000), FLOOR_NS, "fast: the floor");
        for _ in 0..100 {
            l.observe(2, 30_000_000);
        }
        // Steady: the deviation dies away and the line nears the latency.
        let steady = l.lost_after_ns(2, 2000);
        assert!((30_000_000..=31_000_000).contains(&steady), "{steady}");
        // A resolver whose misses take 100 ms and hits 1 ms keeps its
        // misses: the deviation puts the line past them.
        for i in 0..400 {
            l.observe(2, if i % 4 == 0 { 100_000_000 } else { 1_000_000 });
        }
        let bimodal = l.lost_after_ns(2, 2000);
        assert!(bimodal > 110_000_000, "{bimodal}");
        for _ in 0..100 {
            l.observe(2, 900_000_000);
        }
        assert_eq!(l.lost_after_ns(2, 2000), 500_000_000, "capped");
        assert_eq!(
            l.lost_after_ns(1, 10),
            FLOOR_NS,
            "the floor beats a tiny timeout"
        );
        // A reconfiguration keeps what it keeps.
        l.track([(2, false), (3, false)].into_iter());
        assert_eq!(l.lost_after_ns(2, 2000), 500_000_000);
        assert_eq!(l.lost_after_ns(1, 2000), 500_000_000, "forgotten");
        l.observe(9, 1); // an unknown tag changes nothing
        assert_eq!(l.by_tag.len(), 2);
    }

    #[test]
    fn socket_backends_keep_their_queries_longer() {
        let mut l = Latency::default();
        l.track([(1, false), (2, true)].into_iter());
        for _ in 0..100 {
            l.observe(1, 100_000);
            l.observe(2, 100_000);
        }
        assert_eq!(l.lost_after_ns(1, 2000), FLOOR_NS);
        assert_eq!(
            l.lost_after_ns(2, 2000),
            SOCKET_FLOOR_NS,
            "the socket floor"
        );
        for _ in 0..100 {
            l.observe(1, 5_000_000);
            l.observe(2, 5_000_000);
        }
        let (xsk, sockets) = (l.lost_after_ns(1, 2000), l.lost_after_ns(2, 2000));
        assert!((5_000_000..6_000_000).contains(&xsk), "{xsk}");
        assert!(
            (39_000_000..=40_000_000).contains(&sockets),
            "eight latencies: {sockets}"
        );
        // A reload that moves a backend to AF_XDP keeps its estimate and
        // applies the AF_XDP line.
        l.track([(2, false)].into_iter());
        assert_eq!(l.lost_after_ns(2, 2000), xsk);
        // The ceiling holds for both.
        l.track([(2, true)].into_iter());
        assert_eq!(l.lost_after_ns(2, 100), 25_000_000);
    }
}
