//! Answers per client prefix, for the loader's dynamic block rules: a
//! fixed table (no allocation while counting), drained into a report every
//! [`REPORT_EVERY`]. A prefix that finds no room is not counted (`full`):
//! the table holds [`SLOTS`] prefixes per report interval.

use std::hash::Hasher;
use std::net::IpAddr;
use std::time::Duration;

use siphasher::sip::SipHasher13;

use xdpdns_common::config::TallySpec;
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

    pub fn spec(&self) -> TallySpec {
        self.spec
    }

    /// Counts one answer of `len` bytes with `rcode` to `client`.
    #[inline]
    pub fn observe(&mut self, client: IpAddr, rcode: u8, len: usize) {
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
            s.answers = s.answers.saturating_add(1);
            s.bytes = s.bytes.saturating_add(len.min(u16::MAX as usize) as u32);
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
            });
            *s = Slot::default();
        }
        self.used = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally() -> Tally {
        Tally::new(
            TallySpec {
                v4_prefix: 24,
                v6_prefix: 56,
            },
            (1, 2),
        )
    }

    #[test]
    fn answers_are_counted_per_prefix_and_drained() {
        let mut t = tally();
        for i in 0..10u8 {
            t.observe(IpAddr::from([192, 0, 2, i]), if i < 4 { 3 } else { 0 }, 100);
        }
        t.observe("2001:db8:0:1::1".parse().unwrap(), 2, 40);
        t.observe("2001:db8:0:1:ffff::9".parse().unwrap(), 5, 40);
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
            },
            (3, 4),
        );
        for i in 0..(SLOTS as u32 * 2) {
            t.observe(IpAddr::from(i.to_be_bytes()), 0, 50);
        }
        let r = t.drain();
        assert!(r.len() <= SLOTS);
        assert_eq!(r.len() as u64 + t.full, SLOTS as u64 * 2);
    }
}
