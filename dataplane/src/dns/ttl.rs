//! The response side of the pipeline: clamping the TTLs of a relayed
//! answer, in place.

use super::query::skip_record;
use super::{HEADER_LEN, TYPE_OPT};

/// TTL bounds for forwarded answers; 0 leaves that side alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TtlClamp {
    pub min: u32,
    pub max: u32,
}

impl TtlClamp {
    pub fn is_off(&self) -> bool {
        self.min == 0 && self.max == 0
    }

    /// Clamps the TTL of every record of `msg` (a response) but OPT's.
    /// Walks at most the message; stops at the first malformed part, leaving
    /// the rest as it came. Returns the records changed.
    pub fn apply(&self, msg: &mut [u8]) -> usize {
        if self.is_off() || msg.len() < HEADER_LEN {
            return 0;
        }
        let count = |at: usize| u32::from(u16::from_be_bytes([msg[at], msg[at + 1]]));
        let (qd, records) = (count(4), count(6) + count(8) + count(10));
        let mut at = HEADER_LEN;
        for _ in 0..qd {
            match skip_name(msg, at) {
                Some(end) if end + 4 <= msg.len() => at = end + 4,
                _ => return 0,
            }
        }
        let mut changed = 0;
        for _ in 0..records {
            let Ok(rr) = skip_record(msg, at) else {
                break;
            };
            if rr.rtype != TYPE_OPT {
                let t = &mut msg[rr.rdata - 6..rr.rdata - 2];
                let ttl = u32::from_be_bytes([t[0], t[1], t[2], t[3]]);
                let mut new = ttl.max(self.min);
                if self.max != 0 {
                    new = new.min(self.max);
                }
                if new != ttl {
                    t.copy_from_slice(&new.to_be_bytes());
                    changed += 1;
                }
            }
            at = rr.next;
        }
        changed
    }
}

/// The end of the (possibly compressed) name at `start`.
fn skip_name(msg: &[u8], start: usize) -> Option<usize> {
    let mut at = start;
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            1..=63 => at += 1 + usize::from(len),
            0xc0..=0xff => return (at + 2 <= msg.len()).then_some(at + 2),
            _ => return None,
        }
        if at - start > 255 {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response to `a.` A with an A record (TTL `ttl`), an SOA in the
    /// authority section (TTL 7200) and an OPT record.
    fn response(ttl: u32) -> Vec<u8> {
        let mut m = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 1, 0, 1];
        m.extend_from_slice(b"\x01a\0\0\x01\0\x01");
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&[0, 4, 192, 0, 2, 1]);
        m.extend_from_slice(&[0xc0, 12, 0, 6, 0, 1]);
        m.extend_from_slice(&7200u32.to_be_bytes());
        m.extend_from_slice(&[0, 2, 0xc0, 12]);
        m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 0]);
        m
    }

    fn ttls(m: &[u8]) -> (u32, u32, u32) {
        let be = |at: usize| u32::from_be_bytes(m[at..at + 4].try_into().unwrap());
        (be(25), be(41), be(54))
    }

    #[test]
    fn ttls_are_clamped_but_not_opt() {
        let mut m = response(5);
        let c = TtlClamp { min: 30, max: 3600 };
        assert_eq!(c.apply(&mut m), 2);
        assert_eq!(ttls(&m), (30, 3600, 0x8000), "OPT's flags untouched");
        let mut m = response(100);
        assert_eq!(TtlClamp { min: 0, max: 60 }.apply(&mut m), 2);
        assert_eq!(ttls(&m).0, 60);
        let mut m = response(100);
        assert_eq!(TtlClamp::default().apply(&mut m), 0);
        assert_eq!(ttls(&m).0, 100);
    }

    #[test]
    fn malformed_responses_are_walked_safely() {
        let c = TtlClamp { min: 30, max: 60 };
        let full = response(5);
        for cut in 0..full.len() {
            let mut m = full[..cut].to_vec();
            c.apply(&mut m);
        }
        let mut lying = full.clone();
        lying[7] = 200; // ANCOUNT far beyond the records
        assert_eq!(c.apply(&mut lying), 2);
        let mut bad = full;
        bad[12] = 0x80; // a reserved label type
        assert_eq!(c.apply(&mut bad), 0);
    }
}
