//! Dynamic blocks: the dataplanes report answers per client prefix every
//! 100 ms (validated before they get here); a prefix whose answers of a
//! rule's kind exceed the rule's rate over its window is blocked for the
//! rule's time, as a run-time block. Evaluated on every report tick, for
//! the prefixes reported since the last one only. The state is bounded
//! whatever the dataplanes send: at most `MAX_PREFIXES` prefixes (new ones
//! beyond are not tracked), each with one-second buckets back to the
//! longest window (61 at most).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use xdpdns_common::config::{BlockAction, Counted, DynamicRule, MAX_SUFFIX_RULES, TallySpec};
use xdpdns_common::ipc::ClientCount;
use xdpdns_common::net::Prefix;

/// Prefixes tracked at once.
pub const MAX_PREFIXES: usize = 16_384;

/// The counts of one prefix are kept per this long.
const BUCKET: Duration = Duration::from_secs(1);

/// How often prefixes no longer reported are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    answers: u64,
    nxdomain: u64,
    servfail: u64,
    refused: u64,
    bytes: u64,
    under: [u64; MAX_SUFFIX_RULES],
}

impl Counts {
    fn add(&mut self, c: &ClientCount) {
        self.answers += u64::from(c.answers);
        self.nxdomain += u64::from(c.nxdomain);
        self.servfail += u64::from(c.servfail);
        self.refused += u64::from(c.refused);
        self.bytes += u64::from(c.bytes);
        for (sum, n) in self.under.iter_mut().zip(c.under) {
            *sum += u64::from(n);
        }
    }

    fn of(&self, r: &DynamicRule) -> u64 {
        if let Some(i) = r.under {
            return self.under.get(usize::from(i)).copied().unwrap_or(0);
        }
        match r.counted {
            Counted::Answers => self.answers,
            Counted::Rcode(3) => self.nxdomain,
            Counted::Rcode(2) => self.servfail,
            Counted::Rcode(5) => self.refused,
            Counted::Rcode(_) => 0,
            Counted::Bytes => self.bytes,
        }
    }
}

type Key = (bool, [u8; 16]);

#[derive(Debug, Default)]
pub struct Dynamic {
    rules: Vec<DynamicRule>,
    spec: Option<TallySpec>,
    /// Per prefix: (bucket start, counts), oldest first.
    seen: HashMap<Key, VecDeque<(Instant, Counts)>>,
    /// Prefixes reported since the last evaluation.
    dirty: HashSet<Key>,
    last_sweep: Option<Instant>,
}

impl Dynamic {
    pub fn new(rules: Vec<DynamicRule>, spec: Option<TallySpec>) -> Dynamic {
        Dynamic {
            rules,
            spec,
            seen: HashMap::new(),
            dirty: HashSet::new(),
            last_sweep: None,
        }
    }

    /// New rules (a reload); counts so far are kept if the prefix lengths are.
    pub fn set_rules(&mut self, rules: Vec<DynamicRule>, spec: Option<TallySpec>) {
        if spec != self.spec {
            self.seen.clear();
            self.dirty.clear();
        }
        self.rules = rules;
        self.spec = spec;
    }

    fn horizon(&self) -> Duration {
        Duration::from_secs(u64::from(
            self.rules.iter().map(|r| r.window_s).max().unwrap_or(0),
        ))
    }

    /// One dataplane's report, at `now`.
    pub fn observe(&mut self, now: Instant, counts: &[ClientCount]) {
        if self.rules.is_empty() {
            return;
        }
        let horizon = self.horizon();
        for c in counts {
            let key = (c.v6, c.addr);
            if !self.seen.contains_key(&key) && self.seen.len() >= MAX_PREFIXES {
                continue;
            }
            let q = self.seen.entry(key).or_default();
            match q.back_mut() {
                Some((start, counts)) if now.duration_since(*start) < BUCKET => counts.add(c),
                _ => {
                    let mut counts = Counts::default();
                    counts.add(c);
                    q.push_back((now, counts));
                }
            }
            prune(q, now, horizon);
            self.dirty.insert(key);
        }
    }

    /// Prefixes a rule trips at `now`, each with its block time and action;
    /// forgets counts older than the longest window.
    pub fn evaluate(&mut self, now: Instant) -> Vec<(Prefix, Duration, BlockAction)> {
        let horizon = self.horizon();
        let Some((v4_prefix, v6_prefix)) = self.spec.as_ref().map(|s| (s.v4_prefix, s.v6_prefix))
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if self
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY)
        {
            self.last_sweep = Some(now);
            self.seen.retain(|_, q| {
                prune(q, now, horizon);
                !q.is_empty()
            });
        }
        // Only a prefix reported since the last evaluation can have
        // crossed a rate.
        for key in std::mem::take(&mut self.dirty) {
            let Some(q) = self.seen.get(&key) else {
                continue;
            };
            let (v6, addr) = (&key.0, &key.1);
            for r in &self.rules {
                let window = Duration::from_secs(u64::from(r.window_s));
                let n: u64 = q
                    .iter()
                    .filter(|(t, _)| now.duration_since(*t) <= window)
                    .map(|(_, c)| c.of(r))
                    .sum();
                if n > u64::from(r.rate) * u64::from(r.window_s) {
                    let (ip, bits) = if *v6 {
                        (IpAddr::from(*addr), v6_prefix)
                    } else {
                        (
                            IpAddr::from([addr[0], addr[1], addr[2], addr[3]]),
                            v4_prefix,
                        )
                    };
                    if let Ok(p) = Prefix::new(ip, bits) {
                        out.push((p, Duration::from_secs(u64::from(r.block_s)), r.action));
                    }
                    break;
                }
            }
        }
        // A blocked prefix starts afresh when the block ends.
        for (p, _, _) in &out {
            let key = match p.addr() {
                IpAddr::V4(a) => {
                    let mut b = [0u8; 16];
                    b[..4].copy_from_slice(&a.octets());
                    (false, b)
                }
                IpAddr::V6(a) => (true, a.octets()),
            };
            self.seen.remove(&key);
        }
        out
    }
}

/// Drops the buckets of `q` that started more than `horizon` before `now`.
fn prune(q: &mut VecDeque<(Instant, Counts)>, now: Instant, horizon: Duration) {
    while q
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) > horizon)
    {
        q.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(last: u8, answers: u32, nxdomain: u32) -> ClientCount {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[192, 0, 2, last]);
        ClientCount {
            v6: false,
            addr,
            answers,
            nxdomain,
            servfail: 0,
            refused: 0,
            bytes: 0,
            under: [0; MAX_SUFFIX_RULES],
        }
    }

    #[test]
    fn a_prefix_over_a_rule_is_blocked_and_others_are_not() {
        let rule = DynamicRule {
            counted: Counted::Rcode(3),
            rate: 50,
            under: None,
            window_s: 2,
            block_s: 60,
            action: BlockAction::Drop,
        };
        let spec = TallySpec {
            v4_prefix: 32,
            v6_prefix: 56,
            suffixes: Vec::new(),
        };
        let mut d = Dynamic::new(vec![rule], Some(spec));
        let t0 = Instant::now();
        // 20 reports over 2 s: the flooder 10 NXDOMAIN each (100/s), the
        // normal client 2 each (10/s), both from two queues.
        for i in 0..20u32 {
            let t = t0 + Duration::from_millis(u64::from(i) * 100);
            d.observe(t, &[count(9, 10, 5), count(7, 2, 1)]);
            d.observe(t, &[count(9, 10, 5), count(7, 2, 1)]);
        }
        let now = t0 + Duration::from_millis(1950);
        let blocked = d.evaluate(now);
        assert_eq!(
            blocked,
            vec![(
                "192.0.2.9/32".parse().unwrap(),
                Duration::from_secs(60),
                BlockAction::Drop
            )]
        );
        assert!(d.evaluate(now).is_empty(), "counted afresh after a block");
        // Old counts are forgotten.
        d.observe(now, &[count(7, 1, 1)]);
        assert!(d.evaluate(now + Duration::from_secs(10)).is_empty());
        assert!(d.seen.is_empty());
    }

    #[test]
    fn a_bytes_rule_counts_answer_bytes() {
        let rule = DynamicRule {
            counted: Counted::Bytes,
            under: None,
            rate: 10_000,
            window_s: 1,
            block_s: 5,
            action: BlockAction::Drop,
        };
        let spec = TallySpec {
            v4_prefix: 24,
            v6_prefix: 56,
            suffixes: Vec::new(),
        };
        let mut d = Dynamic::new(vec![rule], Some(spec));
        let t0 = Instant::now();
        let mut big = count(0, 10, 0);
        big.bytes = 6_000;
        d.observe(t0, &[big]);
        assert!(d.evaluate(t0).is_empty(), "6 kB in the window");
        d.observe(t0, &[big]);
        assert_eq!(d.evaluate(t0).len(), 1, "12 kB > 10 kB/s over 1 s");
    }

    #[test]
    fn the_state_is_bounded() {
        let rule = DynamicRule {
            counted: Counted::Answers,
            under: None,
            rate: 1_000_000,
            window_s: 5,
            block_s: 1,
            action: BlockAction::Drop,
        };
        let mut d = Dynamic::new(
            vec![rule],
            Some(TallySpec {
                v4_prefix: 32,
                v6_prefix: 128,
                suffixes: Vec::new(),
            }),
        );
        let t0 = Instant::now();
        for i in 0..(MAX_PREFIXES as u32 + 100) {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&i.to_be_bytes());
            d.observe(
                t0,
                &[ClientCount {
                    v6: false,
                    addr,
                    answers: 1,
                    nxdomain: 0,
                    servfail: 0,
                    refused: 0,
                    bytes: 0,
                    under: [0; MAX_SUFFIX_RULES],
                }],
            );
        }
        assert_eq!(d.seen.len(), MAX_PREFIXES);
    }

    #[test]
    fn a_suffix_rule_counts_only_under_its_suffix() {
        let spec = TallySpec {
            v4_prefix: 32,
            v6_prefix: 56,
            suffixes: vec![xdpdns_common::config::SuffixTally {
                wire: b"\x06victim\x04test\0".to_vec(),
                counted: Counted::Rcode(3),
            }],
        };
        let rule = DynamicRule {
            counted: Counted::Rcode(3),
            under: Some(0),
            rate: 50,
            window_s: 1,
            block_s: 30,
            action: BlockAction::Tc,
        };
        let mut d = Dynamic::new(vec![rule], Some(spec));
        let t0 = Instant::now();
        // 200 NXDOMAIN elsewhere: not this rule's.
        let mut elsewhere = count(7, 200, 200);
        elsewhere.under = [0, 0, 0, 0];
        let mut flooder = count(9, 60, 60);
        flooder.under = [60, 0, 0, 0];
        d.observe(t0, &[elsewhere, flooder]);
        assert_eq!(
            d.evaluate(t0),
            vec![(
                "192.0.2.9/32".parse().unwrap(),
                Duration::from_secs(30),
                BlockAction::Tc
            )]
        );
    }
}
