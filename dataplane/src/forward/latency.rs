//! How long each backend takes to answer, and from it when a query still
//! in flight is presumed lost.
//!
//! A backend that is merely slow (an overloaded one, a recursive resolver
//! on a cache miss) must keep its queries: giving them up wastes the work
//! already done. One that dropped a query will never answer it, and the
//! slot should be reused soon. The line between the two is a multiple of
//! the backend's smoothed latency (as TCP's retransmission timeout is of
//! its round-trip time), within bounds.

/// A query older than this many smoothed latencies is presumed lost.
const LATENCIES: u64 = 8;
/// Never presumed lost sooner than this.
const FLOOR_NS: u64 = 20_000_000;

/// Smoothed latency per backend tag (kept across reconfigurations: tags
/// follow backends).
#[derive(Debug, Default)]
pub struct Latency {
    /// (tag, smoothed latency in ns, 0 before the first reply); a handful
    /// of backends.
    by_tag: Vec<(u16, u64)>,
}

impl Latency {
    /// Follows exactly the backends `tags` (kept ones keep their figure).
    /// Allocates here, never per reply.
    pub fn track(&mut self, tags: impl Iterator<Item = u16>) {
        let old = std::mem::take(&mut self.by_tag);
        self.by_tag = tags
            .map(|t| old.iter().copied().find(|(o, _)| *o == t).unwrap_or((t, 0)))
            .collect();
    }

    /// A reply from backend `tag` took `ns`.
    #[inline]
    pub fn observe(&mut self, tag: u16, ns: u64) {
        if let Some((_, s)) = self.by_tag.iter_mut().find(|(t, _)| *t == tag) {
            // An exponentially weighted average, weight 1/8 (RFC 6298's).
            *s = if *s == 0 {
                ns.max(1)
            } else {
                *s - *s / 8 + ns / 8
            };
        }
    }

    /// How old a query to `tag` must be to be presumed lost, given the
    /// query timeout (the ceiling is a quarter of it): with no reply seen
    /// yet, the ceiling.
    #[inline]
    pub fn lost_after_ns(&self, tag: u16, timeout_ms: u32) -> u64 {
        let ceiling = (u64::from(timeout_ms) * 1_000_000 / 4).max(FLOOR_NS);
        match self.by_tag.iter().find(|(t, _)| *t == tag) {
            Some((_, s)) if *s > 0 => s.saturating_mul(LATENCIES).clamp(FLOOR_NS, ceiling),
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
        l.track([1, 2].into_iter());
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
        let slow = l.lost_after_ns(2, 2000);
        assert!((230_000_000..=240_000_000).contains(&slow), "{slow}");
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
        l.track([2, 3].into_iter());
        assert_eq!(l.lost_after_ns(2, 2000), 500_000_000);
        assert_eq!(l.lost_after_ns(1, 2000), 500_000_000, "forgotten");
        l.observe(9, 1); // an unknown tag changes nothing
        assert_eq!(l.by_tag.len(), 2);
    }
}
