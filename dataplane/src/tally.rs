//! Answers per client prefix, for the loader's dynamic block rules: a
//! fixed table (no allocation while counting), drained into a report every
//! [`REPORT_EVERY`]. A prefix that finds no room is not counted (`full`):
//! the table holds [`SLOTS`] prefixes per report interval. Answers to
//! names under the spec's suffixes are counted apart too, per suffix, of
//! the kind its rule counts (the random-subdomain rate under one zone).

use std::hash::Hasher;
use std::net::IpAddr;
use std::time::Duration;

use siphasher::sip::SipHasher13;

use xdpdns_common::config::{Counted, MAX_SUFFIX_RULES, TallySpec};
use xdpdns_common::ipc::{ClientCount, MAX_CLIENT_COUNTS};

/// Prefixes counted per report.
pub const SLOTS: usize = MAX_CLIENT_COUNTS;
/// How often the table is reported and emptied.
pub const REPORT_EVERY: Duration = Duration::from_millis(100);
/// Slots probed for a prefix before it counts as no room.
const PROBES: usize = 8;

#[derive(Clone, Copy, Default)]
struct Slot {
    used: bool,
    v6: bool,
    addr: [u8; 16],
    answers: u32,
    nxdomain: u32,
    servfail: u32,
    refused: u32,
    bytes: u32,
    under: [u32; MAX_SUFFIX_RULES],
}

pub struct Tally {
    spec: TallySpec,
    /// Keys of the slot hash: a sender who picks its source addresses
    /// cannot aim them at one slot chain.
    key: (u64, u64),
    slots: Box<[Slot]>,
    used: usize,
    /// Answers not counted for want of a slot (since start).
    pub full: u64,
}

fn mask(bytes: &mut [u8], bits: u8) {
    let bits = usize::from(bits);
    for (i, b) in bytes.iter_mut().enumerate() {
        let keep = bits.saturating_sub(i * 8).min(8);
        *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
}

impl Tally {
    pub fn new(spec: TallySpec, key: (u64, u64)) -> Tally {
        Tally {
            spec,
            key,
            slots: vec![Slot::default(); SLOTS].into_boxed_slice(),
            used: 0,
            full: 0,
        }
    }

    pub fn spec(&self) -> &TallySpec {
        &self.spec
    }

    /// Counts one answer, the DNS message `msg`, sent to `client`.
    #[inline]
    pub fn observe(&mut self, client: IpAddr, msg: &[u8]) {
        let Some(&flags) = msg.get(3) else { return };
        let rcode = flags & 0x0f;
        let len = msg.len();
        let (v6, mut addr) = match client {
            IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                mask(&mut b[..4], self.spec.v4_prefix);
                (false, b)
            }
            IpAddr::V6(a) => {
                let mut b = a.octets();
                mask(&mut b, self.spec.v6_prefix);
                (true, b)
            }
        };
        if !v6 {
            addr[4..].fill(0);
        }
        let mut hasher = SipHasher13::new_with_keys(self.key.0, self.key.1);
        hasher.write(&addr);
        hasher.write_u8(u8::from(v6));
        let h = hasher.finish() as usize;
        for i in 0..PROBES {
            let s = &mut self.slots[(h + i) % SLOTS];
            if !s.used {
                *s = Slot {
                    used: true,
                    v6,
                    addr,
                    ..Slot::default()
                };
                self.used += 1;
            } else if s.v6 != v6 || s.addr != addr {
                continue;
            }
            let len = len.min(u16::MAX as usize) as u32;
            s.answers = s.answers.saturating_add(1);
            s.bytes = s.bytes.saturating_add(len);
            if !self.spec.suffixes.is_empty() {
                under_suffixes(&self.spec, msg, rcode, len, &mut s.under);
            }
            match rcode {
                3 => s.nxdomain = s.nxdomain.saturating_add(1),
                2 => s.servfail = s.servfail.saturating_add(1),
                5 => s.refused = s.refused.saturating_add(1),
                _ => {}
            }
            return;
        }
        self.full += 1;
    }

    /// The counts since the last drain, and an empty table.
    pub fn drain(&mut self) -> Vec<ClientCount> {
        let mut out = Vec::with_capacity(self.used);
        for s in self.slots.iter_mut().filter(|s| s.used) {
            out.push(ClientCount {
                v6: s.v6,
                addr: s.addr,
                answers: s.answers,
                nxdomain: s.nxdomain,
                servfail: s.servfail,
                refused: s.refused,
                bytes: s.bytes,
                under: s.under,
            });
            *s = Slot::default();
        }
        self.used = 0;
        out
    }
}

/// Adds the answer `msg` (`rcode`, `len` bytes) to the count of each suffix
/// of `spec` its question name is at or below, if its rule counts it.
fn under_suffixes(
    spec: &TallySpec,
    msg: &[u8],
    rcode: u8,
    len: u32,
    under: &mut [u32; MAX_SUFFIX_RULES],
) {
    const QUESTION: usize = 12;
    if msg.get(4..6) != Some(&[0, 1]) {
        return;
    }
    // The question's name ends where its root label is; a pointer or a
    // name running off the message counts under no suffix.
    let mut p = QUESTION;
    let end = loop {
        match msg.get(p) {
            Some(0) => break p + 1,
            Some(&l) if l < 64 => p += 1 + usize::from(l),
            _ => return,
        }
    };
    let name = &msg[QUESTION..end];
    let mut p = 0;
    while p < name.len() {
        let rest = &name[p..];
        for (i, s) in spec.suffixes.iter().enumerate().take(MAX_SUFFIX_RULES) {
            if s.wire.len() == rest.len() && s.wire.eq_ignore_ascii_case(rest) {
                let add = match s.counted {
                    Counted::Answers => 1,
                    Counted::Rcode(r) => u32::from(r == rcode),
                    Counted::Bytes => len,
                };
                under[i] = under[i].saturating_add(add);
            }
        }
        p += 1 + usize::from(name[p]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xdpdns_common::config::SuffixTally;
    use xdpdns_common::dns::name_to_wire;

    fn tally() -> Tally {
        Tally::new(
            TallySpec {
                v4_prefix: 24,
                v6_prefix: 56,
                suffixes: Vec::new(),
            },
            (1, 2),
        )
    }

    /// An answer for `name` with `rcode`, `len` bytes long (at least its
    /// header and question).
    fn answer(name: &str, rcode: u8, len: usize) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80 | rcode, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend(name_to_wire(name).unwrap());
        m.extend([0, 1, 0, 1]);
        m.resize(len.max(m.len()), 0);
        m
    }

    fn ans(rcode: u8, len: usize) -> Vec<u8> {
        answer("a.example", rcode, len)
    }

    #[test]
    fn answers_are_counted_per_prefix_and_drained() {
        let mut t = tally();
        for i in 0..10u8 {
            t.observe(
                IpAddr::from([192, 0, 2, i]),
                &ans(if i < 4 { 3 } else { 0 }, 100),
            );
        }
        t.observe("2001:db8:0:1::1".parse().unwrap(), &ans(2, 40));
        t.observe("2001:db8:0:1:ffff::9".parse().unwrap(), &ans(5, 40));
        let mut r = t.drain();
        r.sort_by_key(|c| c.v6);
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(&r[0].addr[..4], &[192, 0, 2, 0]);
        assert_eq!((r[0].answers, r[0].nxdomain, r[0].bytes), (10, 4, 1000));
        assert_eq!(
            r[1].addr[..8],
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0],
            "masked to /56"
        );
        assert_eq!((r[1].answers, r[1].servfail, r[1].refused), (2, 1, 1));
        assert!(t.drain().is_empty(), "emptied");
    }

    #[test]
    fn a_full_table_counts_what_it_cannot_hold() {
        let mut t = Tally::new(
            TallySpec {
                v4_prefix: 32,
                v6_prefix: 128,
                suffixes: Vec::new(),
            },
            (3, 4),
        );
        for i in 0..(SLOTS as u32 * 2) {
            t.observe(IpAddr::from(i.to_be_bytes()), &ans(0, 50));
        }
        let r = t.drain();
        assert!(r.len() <= SLOTS);
        assert_eq!(r.len() as u64 + t.full, SLOTS as u64 * 2);
    }

    #[test]
    fn answers_under_a_suffix_are_counted_apart_of_their_rules_kind() {
        let suffix = |name: &str, counted| SuffixTally {
            wire: name_to_wire(name).unwrap(),
            counted,
        };
        let mut t = Tally::new(
            TallySpec {
                v4_prefix: 32,
                v6_prefix: 56,
                suffixes: vec![
                    suffix("victim.test", Counted::Rcode(3)),
                    suffix("test", Counted::Answers),
                    suffix("victim.test", Counted::Bytes),
                ],
            },
            (5, 6),
        );
        let c = IpAddr::from([192, 0, 2, 7]);
        t.observe(c, &answer("X1.Victim.TEST", 3, 100));
        t.observe(c, &answer("victim.test", 3, 60));
        t.observe(c, &answer("x2.victim.test", 0, 80));
        // Not under victim.test: a label boundary, not a byte suffix.
        t.observe(c, &answer("xvictim.test", 3, 70));
        t.observe(c, &answer("other.example", 3, 50));
        // No question, or a pointer for a name: under no suffix.
        let mut bare = ans(3, 40);
        bare[5] = 0;
        t.observe(c, &bare);
        let mut pointer = vec![0, 0, 0x81, 0x83, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12];
        pointer.extend([0, 1, 0, 1]);
        t.observe(c, &pointer);
        let r = t.drain();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].answers, 7);
        assert_eq!(r[0].under, [2, 4, 240, 0], "{r:?}");
    }
}
