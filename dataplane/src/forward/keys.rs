//! The keys forwarded queries leave with: a source port and a DNS ID that
//! an off-path attacker cannot predict, whatever it has seen of earlier
//! ones (RFC 5452: the ID and as many port bits as practical). Each is
//! SipHash-1-3 of a counter under a key this dataplane draws from the
//! kernel's random source when it starts, so a restarted dataplane's keys
//! have nothing to do with its predecessor's.

use std::hash::Hasher;
use std::io;

use siphasher::sip::SipHasher13;

/// A source of unpredictable 64-bit values.
pub struct Draws {
    k0: u64,
    k1: u64,
    counter: u64,
}

impl Draws {
    /// Keyed from getrandom(2).
    pub fn new() -> io::Result<Draws> {
        let mut seed = [0u8; 24];
        let mut got = 0;
        while got < seed.len() {
            // SAFETY: getrandom writes at most `len - got` bytes into the
            // live buffer from `got` on.
            let r =
                unsafe { libc::getrandom(seed[got..].as_mut_ptr().cast(), seed.len() - got, 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            got += r as usize;
        }
        let word =
            |i: usize| u64::from_le_bytes(seed[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Ok(Draws {
            k0: word(0),
            k1: word(1),
            counter: word(2),
        })
    }

    /// The next value.
    #[inline]
    pub fn draw(&mut self) -> u64 {
        self.counter = self.counter.wrapping_add(1);
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write_u64(self.counter);
        h.finish()
    }
}

/// An index in `0..n` from 32 random bits (multiply-shift: no modulo bias
/// worth the name for n ≪ 2³²).
#[inline]
pub fn below(bits: u32, n: u32) -> u32 {
    ((u64::from(bits) * u64::from(n)) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_differ_between_instances_and_show_no_counter() {
        let mut a = Draws::new().unwrap();
        let mut b = Draws::new().unwrap();
        let xs: Vec<u64> = (0..1000).map(|_| a.draw()).collect();
        let ys: Vec<u64> = (0..1000).map(|_| b.draw()).collect();
        assert!(xs.iter().zip(&ys).all(|(x, y)| x != y), "keyed apart");
        let ids: Vec<u16> = xs.iter().map(|x| *x as u16).collect();
        let close = ids
            .windows(2)
            .filter(|w| (1..=8).contains(&w[1].wrapping_sub(w[0])))
            .count();
        assert!(close < 10, "{close} of 999 successive IDs 1..8 apart");
        let mut seen = std::collections::HashSet::new();
        for x in &xs {
            seen.insert(below(*x as u32, 1024));
        }
        assert!(seen.len() > 600, "ports spread: {}", seen.len());
        assert!(xs.iter().all(|x| below(*x as u32, 7) < 7));
    }
}
