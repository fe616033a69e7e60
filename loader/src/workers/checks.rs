//! What the loader accepts from a worker: counters of a shape the
//! configuration allows that never go backwards within a life, at a bounded
//! rate. A worker that fails a check is killed and replaced; nothing it
//! sends can panic, stall or mislead the loader.

use std::time::{Duration, Instant};

use xdpdns_common::stats::{DataplaneCounters, DropReason, LATENCY_BUCKETS_US, PathCounters};

/// More messages than this within a second is a flood.
pub const MAX_MESSAGES_PER_SECOND: u32 = 50;

/// Messages per second from one worker.
#[derive(Debug)]
pub struct RateLimit {
    window: Instant,
    count: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            window: Instant::now(),
            count: 0,
        }
    }
}

impl RateLimit {
    /// Counts one message; an error past the limit.
    pub fn hit(&mut self) -> Result<(), String> {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.count = 0;
        }
        self.count += 1;
        if self.count > MAX_MESSAGES_PER_SECOND {
            return Err(format!(
                "more than {MAX_MESSAGES_PER_SECOND} messages a second: killed"
            ));
        }
        Ok(())
    }
}

fn path_shape(p: &PathCounters) -> bool {
    p.dropped.len() <= DropReason::COUNT
}

fn path_monotonic(new: &PathCounters, old: &PathCounters) -> bool {
    new.received >= old.received
        && new.answered >= old.answered
        && new.dropped.iter().zip(&old.dropped).all(|(n, o)| n >= o)
}

/// More events a second than any queue can count (a 400 Gb/s port carries
/// 600 M minimal frames a second; loop iterations stay far below this too).
pub const MAX_EVENTS_PER_SECOND: u64 = 10_000_000_000;

/// A reply's latency beyond this (µs) is impossible: timeouts are shorter.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Checks a dataplane's counters against the configuration (`rules` rules,
/// `backends` backends), its previous report of this life and how long it
/// has lived (`life_secs`): no counter may exceed what that life could have
/// counted, so totals never saturate on a liar's numbers.
pub fn dataplane_counters(
    new: &DataplaneCounters,
    old: &DataplaneCounters,
    rules: usize,
    backends: usize,
    life_secs: u64,
) -> Result<(), String> {
    let shape = path_shape(&new.xsk)
        && path_shape(&new.kernel)
        && new.rule_hits.len() <= rules + 1
        && new.error_answers.len() <= DropReason::COUNT
        && new.backends.len() <= backends
        && new.cache.stale <= new.cache.hits
        && new.cache.evictions <= new.cache.inserts
        && new
            .backends
            .iter()
            .all(|b| b.latency.len() <= LATENCY_BUCKETS_US.len() + 1);
    if !shape {
        return Err("counters of an impossible shape: killed".into());
    }
    let monotonic = path_monotonic(&new.xsk, &old.xsk)
        && path_monotonic(&new.kernel, &old.kernel)
        && new.acl_refused >= old.acl_refused
        && new
            .error_answers
            .iter()
            .enumerate()
            .all(|(i, n)| *n >= old.error_answers.get(i).copied().unwrap_or(0))
        && new
            .forward
            .events()
            .iter()
            .zip(old.forward.events())
            .all(|(n, o)| *n >= o)
        && new
            .cache
            .events()
            .iter()
            .zip(old.cache.events())
            .all(|(n, o)| *n >= o);
    if !monotonic {
        return Err("counters went backwards: killed".into());
    }
    let bound = life_secs
        .saturating_add(1)
        .saturating_mul(MAX_EVENTS_PER_SECOND);
    let latency_ok = new
        .backends
        .iter()
        .all(|b| b.latency_sum_us <= b.replies.saturating_mul(MAX_LATENCY_US));
    if new.largest() > bound || !latency_ok {
        return Err(format!(
            "counters beyond what {life_secs} s of life can count: killed"
        ));
    }
    Ok(())
}

/// Checks a dataplane's answers-per-client report against the tally the
/// answer spec asked for (`tally`): no report without one, at most
/// `MAX_CLIENT_COUNTS` entries, every address masked to the spec's prefix
/// length, per-rcode counts within the answers, no more answers than a
/// report interval could hold; counts under a suffix only for the spec's
/// suffixes, each within the answers (or bytes) it is part of.
pub fn client_counts(
    counts: &[xdpdns_common::ipc::ClientCount],
    tally: Option<&xdpdns_common::config::TallySpec>,
) -> Result<(), String> {
    let Some(spec) = tally else {
        return Err("client counts nobody asked for: killed".into());
    };
    if counts.len() > xdpdns_common::ipc::MAX_CLIENT_COUNTS {
        return Err("client counts of an impossible shape: killed".into());
    }
    for c in counts {
        let bits = if c.v6 { spec.v6_prefix } else { spec.v4_prefix };
        let bytes = if c.v6 { &c.addr[..] } else { &c.addr[..4] };
        let masked = bytes.iter().enumerate().all(|(i, b)| {
            let keep = usize::from(bits).saturating_sub(i * 8).min(8);
            let mask = if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
            b & !mask == 0
        });
        let v4_rest_zero = c.v6 || c.addr[4..].iter().all(|b| *b == 0);
        let by_rcode = u64::from(c.nxdomain) + u64::from(c.servfail) + u64::from(c.refused);
        let under_ok = c.under.iter().enumerate().all(|(i, &n)| {
            match spec.suffixes.get(i).map(|s| s.counted) {
                None => n == 0,
                Some(xdpdns_common::config::Counted::Bytes) => n <= c.bytes,
                Some(_) => n <= c.answers,
            }
        });
        if !masked || !v4_rest_zero || by_rcode > u64::from(c.answers) || !under_ok {
            return Err("client counts that cannot be: killed".into());
        }
        if u64::from(c.answers) > MAX_EVENTS_PER_SECOND
            || u64::from(c.bytes) > u64::from(c.answers) * u64::from(u16::MAX)
        {
            return Err("client counts beyond what a report interval can count: killed".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_or_backward_counters_are_refused() {
        let old = DataplaneCounters::new();
        let mut ok = DataplaneCounters::new();
        ok.xsk.received = 10;
        ok.rule_hits = vec![1, 2];
        assert!(dataplane_counters(&ok, &old, 1, 0, 0).is_ok());
        let mut big = ok.clone();
        big.rule_hits = vec![1; 4000];
        assert!(
            dataplane_counters(&big, &old, 1, 0, 0)
                .unwrap_err()
                .contains("shape")
        );
        let mut back = DataplaneCounters::new();
        back.xsk.received = 5;
        assert!(
            dataplane_counters(&back, &ok, 1, 0, 0)
                .unwrap_err()
                .contains("backwards")
        );
        let mut drops = DataplaneCounters::new();
        drops.xsk.dropped = vec![0; DropReason::COUNT + 1];
        assert!(dataplane_counters(&drops, &old, 1, 0, 0).is_err());
    }

    #[test]
    fn client_counts_are_checked_against_the_tally() {
        use xdpdns_common::config::TallySpec;
        use xdpdns_common::config::{Counted, SuffixTally};
        use xdpdns_common::ipc::ClientCount;
        let spec = TallySpec {
            v4_prefix: 24,
            v6_prefix: 56,
            suffixes: vec![SuffixTally {
                wire: b"\x04test\0".to_vec(),
                counted: Counted::Bytes,
            }],
        };
        let spec = Some(&spec);
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[192, 0, 2, 0]);
        let ok = ClientCount {
            v6: false,
            addr,
            answers: 10,
            nxdomain: 4,
            servfail: 3,
            refused: 3,
            bytes: 1000,
            under: [900, 0, 0, 0],
        };
        assert!(client_counts(&[ok], spec).is_ok());
        let mut under = ok;
        under.under[0] = 1001;
        assert!(
            client_counts(&[under], spec).is_err(),
            "more bytes under a suffix than in all"
        );
        under.under = [0, 1, 0, 0];
        assert!(
            client_counts(&[under], spec).is_err(),
            "a count for a suffix the spec has not"
        );
        assert!(client_counts(&[ok], None).is_err(), "not asked for");
        let mut host = ok;
        host.addr[3] = 7;
        assert!(client_counts(&[host], spec).is_err(), "host bits past /24");
        let mut tail = ok;
        tail.addr[9] = 1;
        assert!(
            client_counts(&[tail], spec).is_err(),
            "IPv4 with bytes past 4"
        );
        let mut more = ok;
        more.nxdomain = 5;
        assert!(
            client_counts(&[more], spec).is_err(),
            "more by rcode than answers"
        );
        let many = vec![ok; xdpdns_common::ipc::MAX_CLIENT_COUNTS + 1];
        assert!(client_counts(&many, spec).is_err(), "too many");
        let mut v6 = ok;
        v6.v6 = true;
        v6.addr = [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(client_counts(&[v6], spec).is_err(), "bit 57 set under /56");
        v6.addr[7] = 0;
        assert!(client_counts(&[v6], spec).is_ok());
    }

    #[test]
    fn counters_a_life_cannot_have_counted_are_refused() {
        let old = DataplaneCounters::new();
        let mut c = DataplaneCounters::new();
        c.kernel.answered = MAX_EVENTS_PER_SECOND * 2;
        assert!(
            dataplane_counters(&c, &old, 0, 0, 0)
                .unwrap_err()
                .contains("beyond")
        );
        assert!(
            dataplane_counters(&c, &old, 0, 0, 1).is_ok(),
            "two seconds' worth"
        );
        let mut max = DataplaneCounters::new();
        max.forward.bad_entries = u64::MAX;
        assert!(
            dataplane_counters(&max, &old, 0, 0, u64::MAX).is_ok(),
            "no overflow in the bound"
        );
        assert!(dataplane_counters(&max, &old, 0, 0, 10 * 365 * 86_400).is_err());
        let mut lat = DataplaneCounters::new();
        lat.size_backends(1);
        lat.backends[0].replies = 1;
        lat.backends[0].latency_sum_us = u64::MAX;
        assert!(dataplane_counters(&lat, &old, 0, 1, 10).is_err());
        for field in 0..3 {
            let mut one = DataplaneCounters::new();
            match field {
                0 => one.iterations = u64::MAX,
                1 => one.rule_hits = vec![u64::MAX],
                _ => one.xsk.dropped[3] = u64::MAX,
            }
            assert!(
                dataplane_counters(&one, &old, 1, 0, 1).is_err(),
                "field {field}"
            );
        }
    }

    #[test]
    fn a_flood_is_cut() {
        let mut r = RateLimit::default();
        for _ in 0..MAX_MESSAGES_PER_SECOND {
            r.hit().unwrap();
        }
        assert!(r.hit().is_err());
    }
}
