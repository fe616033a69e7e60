//! Choosing a backend from a pool: round-robin, smooth weighted round-robin,
//! least-outstanding, and consistent hashing on the query name. Backends that
//! are down (health check, or no MAC for AF_XDP) are skipped.

use xdpdns_common::config::Policy;
use xdpdns_common::hash::{Fnv1a, mix64};

/// One pool's members and the state its policy keeps.
pub struct Pool {
    policy: Policy,
    members: Vec<u16>,
    weights: Vec<i64>,
    /// Round-robin cursor.
    next: usize,
    /// Smooth weighted round-robin current weights.
    current: Vec<i64>,
    /// Consistent-hash ring: (point, member position), sorted by point.
    ring: Vec<(u64, usize)>,
}

/// Virtual nodes per unit of weight on the hash ring.
const VNODES: u32 = 64;

/// A case-insensitive hash of `bytes` (a name, or a member's key), spread
/// over the ring.
fn fnv(bytes: &[u8], seed: u64) -> u64 {
    let mut h = Fnv1a::with_seed(seed);
    for b in bytes {
        h.write_u8(b.to_ascii_lowercase());
    }
    mix64(h.finish())
}

impl Pool {
    /// `members` are backend ids with their weights; `keys` name each member
    /// stably (its address), so the hash ring survives reordering.
    pub fn new(policy: Policy, members: &[(u16, u32, String)]) -> Pool {
        let mut ring = Vec::new();
        if policy == Policy::ConsistentHash {
            for (pos, (_, weight, key)) in members.iter().enumerate() {
                for v in 0..weight.saturating_mul(VNODES) {
                    ring.push((fnv(key.as_bytes(), u64::from(v)), pos));
                }
            }
            ring.sort_unstable();
        }
        Pool {
            policy,
            members: members.iter().map(|m| m.0).collect(),
            weights: members.iter().map(|m| i64::from(m.1)).collect(),
            next: 0,
            current: vec![0; members.len()],
            ring,
        }
    }

    pub fn members(&self) -> &[u16] {
        &self.members
    }

    /// The backend for a query named `qname` (wire format), or `None` if
    /// every member is down.
    pub fn pick(
        &mut self,
        qname: &[u8],
        up: impl Fn(u16) -> bool,
        outstanding: impl Fn(u16) -> u32,
    ) -> Option<u16> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        match self.policy {
            Policy::RoundRobin => {
                for i in 0..n {
                    let pos = (self.next + i) % n;
                    if up(self.members[pos]) {
                        self.next = (pos + 1) % n;
                        return Some(self.members[pos]);
                    }
                }
                None
            }
            Policy::Weighted => {
                let mut total = 0;
                let mut best: Option<usize> = None;
                for pos in 0..n {
                    if !up(self.members[pos]) {
                        continue;
                    }
                    self.current[pos] += self.weights[pos];
                    total += self.weights[pos];
                    if best.is_none_or(|b| self.current[pos] > self.current[b]) {
                        best = Some(pos);
                    }
                }
                let b = best?;
                self.current[b] -= total;
                Some(self.members[b])
            }
            Policy::LeastOutstanding => {
                // Ties rotate, so equal backends share the load.
                let start = self.next;
                self.next = (self.next + 1) % n;
                (0..n)
                    .map(|i| self.members[(start + i) % n])
                    .filter(|b| up(*b))
                    .min_by_key(|b| outstanding(*b))
            }
            Policy::ConsistentHash => {
                let h = fnv(qname, 0);
                let start = self.ring.partition_point(|(point, _)| *point < h);
                let len = self.ring.len();
                (0..len)
                    .map(|i| self.members[self.ring[(start + i) % len].1])
                    .find(|b| up(*b))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn pool(policy: Policy, weights: &[u32]) -> Pool {
        let members: Vec<(u16, u32, String)> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| (i as u16 * 10, *w, format!("192.0.2.{i}:53")))
            .collect();
        Pool::new(policy, &members)
    }

    fn names(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| xdpdns_common::dns::name_to_wire(&format!("q{i}.example.")).unwrap())
            .collect()
    }

    #[test]
    fn round_robin_cycles_and_skips_down_members() {
        let mut p = pool(Policy::RoundRobin, &[1, 1, 1]);
        let picks: Vec<_> = (0..6)
            .map(|_| p.pick(b"\0", |_| true, |_| 0).unwrap())
            .collect();
        assert_eq!(picks, [0, 10, 20, 0, 10, 20]);
        let picks: Vec<_> = (0..4)
            .map(|_| p.pick(b"\0", |b| b != 10, |_| 0).unwrap())
            .collect();
        assert_eq!(picks, [0, 20, 0, 20]);
        assert_eq!(p.pick(b"\0", |_| false, |_| 0), None);
        assert_eq!(
            pool(Policy::RoundRobin, &[]).pick(b"\0", |_| true, |_| 0),
            None
        );
    }

    #[test]
    fn weighted_follows_the_weights_smoothly() {
        let mut p = pool(Policy::Weighted, &[5, 1, 1]);
        let picks: Vec<_> = (0..7)
            .map(|_| p.pick(b"\0", |_| true, |_| 0).unwrap())
            .collect();
        let count = |b| picks.iter().filter(|x| **x == b).count();
        assert_eq!((count(0), count(10), count(20)), (5, 1, 1));
        assert_ne!(
            &picks[..2],
            &[10, 20],
            "smooth: the heavy member is not starved first"
        );
        let picks: Vec<_> = (0..6)
            .map(|_| p.pick(b"\0", |b| b != 0, |_| 0).unwrap())
            .collect();
        assert!(picks.iter().all(|b| *b != 0));
    }

    #[test]
    fn least_outstanding_prefers_the_idlest_up_member() {
        let mut p = pool(Policy::LeastOutstanding, &[1, 1, 1]);
        let load = |b: u16| match b {
            0 => 5,
            10 => 1,
            _ => 3,
        };
        assert_eq!(p.pick(b"\0", |_| true, load), Some(10));
        assert_eq!(p.pick(b"\0", |b| b != 10, load), Some(20));
        let even: Vec<_> = (0..3)
            .map(|_| p.pick(b"\0", |_| true, |_| 0).unwrap())
            .collect();
        let mut sorted = even.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 10, 20], "ties rotate: {even:?}");
    }

    #[test]
    fn consistent_hash_is_stable_case_insensitive_and_moves_only_what_it_must() {
        let mut p = pool(Policy::ConsistentHash, &[1, 1, 1, 1]);
        let qs = names(2000);
        let before: Vec<u16> = qs
            .iter()
            .map(|q| p.pick(q, |_| true, |_| 0).unwrap())
            .collect();
        let again: Vec<u16> = qs
            .iter()
            .map(|q| p.pick(q, |_| true, |_| 0).unwrap())
            .collect();
        assert_eq!(before, again, "deterministic");
        let upper = xdpdns_common::dns::name_to_wire("Q7.EXAMPLE.").unwrap();
        let lower = xdpdns_common::dns::name_to_wire("q7.example.").unwrap();
        assert_eq!(
            p.pick(&upper, |_| true, |_| 0),
            p.pick(&lower, |_| true, |_| 0)
        );
        let mut share: HashMap<u16, usize> = HashMap::new();
        for b in &before {
            *share.entry(*b).or_default() += 1;
        }
        for (b, n) in &share {
            assert!((300..=700).contains(n), "backend {b} got {n} of 2000");
        }
        // Take member 10 down: only its names move.
        let after: Vec<u16> = qs
            .iter()
            .map(|q| p.pick(q, |b| b != 10, |_| 0).unwrap())
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != 10 {
                assert_eq!(b, a, "names of up members stay put");
            } else {
                assert_ne!(*a, 10);
            }
        }
    }
}
