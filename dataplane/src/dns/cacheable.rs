//! The response side of the packet cache: whether a backend's answer may be
//! cached and for how long (RFC 2308 for negative answers), and the TTLs of
//! an answer served from the cache, aged in place.

use xdpdns_common::config::CacheTtls;

use super::query::{OPTION_COOKIE, OPTION_ECS, option_bits, skip_record};
use super::{HEADER_LEN, TYPE_OPT};

const TYPE_SOA: u16 = 6;

/// Why an answer is not cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uncacheable {
    /// Not a complete, well-formed answer to one question.
    Malformed,
    /// TC=1, a rcode other than NOERROR/NXDOMAIN/SERVFAIL, SERVFAIL with
    /// `servfail = 0`, a negative answer without an SOA, a lifetime of 0.
    Policy,
    /// It carries a COOKIE or CLIENT-SUBNET option: meant for one client.
    PerClient,
}

fn be16(m: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([m[at], m[at + 1]])
}

fn be32(m: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]])
}

/// How long the answer `msg` (to one question, of `question_end` bytes of
/// header and question) may be served from the cache, in seconds.
pub fn lifetime(msg: &[u8], question_end: usize, ttls: &CacheTtls) -> Result<u32, Uncacheable> {
    if msg.len() < question_end || question_end < HEADER_LEN + 5 {
        return Err(Uncacheable::Malformed);
    }
    let (flags, rcode) = (msg[2], msg[3] & 0x0f);
    if flags & 0x80 == 0 || (flags >> 3) & 0x0f != 0 || be16(msg, 4) != 1 {
        return Err(Uncacheable::Malformed);
    }
    if flags & 0x02 != 0 {
        return Err(Uncacheable::Policy);
    }
    let (an, ns, ar) = (be16(msg, 6), be16(msg, 8), be16(msg, 10));
    let mut at = question_end;
    let mut min_ttl = u32::MAX;
    let mut negative: Option<u32> = None;
    for i in 0..(u32::from(an) + u32::from(ns) + u32::from(ar)) {
        let rr = skip_record(msg, at).map_err(|_| Uncacheable::Malformed)?;
        let ttl = be32(msg, rr.rdata - 6);
        if rr.rtype == TYPE_OPT {
            let options =
                option_bits(&msg[rr.rdata..rr.next]).map_err(|_| Uncacheable::Malformed)?;
            if options & ((1 << OPTION_COOKIE) | (1 << OPTION_ECS)) != 0 {
                return Err(Uncacheable::PerClient);
            }
        } else {
            min_ttl = min_ttl.min(ttl);
            let in_authority = i >= u32::from(an) && i < u32::from(an) + u32::from(ns);
            if in_authority && rr.rtype == TYPE_SOA && rr.next >= rr.rdata + 4 {
                // RFC 2308 §5: the SOA's TTL or its MINIMUM, the lower.
                negative = Some(ttl.min(be32(msg, rr.next - 4)));
            }
        }
        at = rr.next;
    }
    if at != msg.len() {
        return Err(Uncacheable::Malformed);
    }
    let secs = match (rcode, an) {
        (0, 1..) => min_ttl.clamp(ttls.min, ttls.max.max(ttls.min)),
        // NODATA and NXDOMAIN: from the SOA only (RFC 2308 §5).
        (0, 0) | (3, _) => match negative {
            Some(t) => t.min(ttls.negative),
            None => return Err(Uncacheable::Policy),
        },
        (2, _) => ttls.servfail,
        _ => return Err(Uncacheable::Policy),
    };
    if secs == 0 {
        return Err(Uncacheable::Policy);
    }
    Ok(secs)
}

/// Lowers every TTL of `msg` but OPT's by `secs` (at least to 0), or sets
/// them all to 0 (`expired`). Stops at the first malformed record.
pub fn age(msg: &mut [u8], question_end: usize, secs: u32, expired: bool) {
    if msg.len() < HEADER_LEN || (secs == 0 && !expired) {
        return;
    }
    let records = u32::from(be16(msg, 6)) + u32::from(be16(msg, 8)) + u32::from(be16(msg, 10));
    let mut at = question_end;
    for _ in 0..records {
        let Ok(rr) = skip_record(msg, at) else {
            return;
        };
        if rr.rtype != TYPE_OPT {
            let t = &mut msg[rr.rdata - 6..rr.rdata - 2];
            let ttl = u32::from_be_bytes([t[0], t[1], t[2], t[3]]);
            let new = if expired { 0 } else { ttl.saturating_sub(secs) };
            t.copy_from_slice(&new.to_be_bytes());
        }
        at = rr.next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTLS: CacheTtls = CacheTtls {
        min: 0,
        max: 86_400,
        negative: 3_600,
        servfail: 5,
        stale: 0,
    };

    /// `a.` A: header with `rcode`, an A record (TTL `ttl`) if `answer`,
    /// an SOA (TTL 7200, MINIMUM 300) in authority if `soa`, an OPT.
    fn response(rcode: u8, answer: bool, soa: bool, ttl: u32) -> Vec<u8> {
        let mut m = vec![
            0,
            1,
            0x81,
            0x80 | rcode,
            0,
            1,
            0,
            u8::from(answer),
            0,
            u8::from(soa),
            0,
            1,
        ];
        m.extend_from_slice(b"\x01a\0\0\x01\0\x01");
        if answer {
            m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
            m.extend_from_slice(&ttl.to_be_bytes());
            m.extend_from_slice(&[0, 4, 192, 0, 2, 1]);
        }
        if soa {
            m.extend_from_slice(&[0xc0, 12, 0, 6, 0, 1]);
            m.extend_from_slice(&7200u32.to_be_bytes());
            let mut rdata = vec![0, 0];
            rdata.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4]);
            rdata.extend_from_slice(&300u32.to_be_bytes());
            m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            m.extend_from_slice(&rdata);
        }
        m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 0]);
        m
    }

    const QE: usize = 12 + 3 + 4;

    #[test]
    fn lifetimes_follow_the_ttls_and_rfc_2308() {
        assert_eq!(lifetime(&response(0, true, false, 120), QE, &TTLS), Ok(120));
        let clamp = CacheTtls {
            min: 200,
            max: 1000,
            ..TTLS
        };
        assert_eq!(
            lifetime(&response(0, true, false, 120), QE, &clamp),
            Ok(200)
        );
        assert_eq!(
            lifetime(&response(0, true, false, 9999), QE, &clamp),
            Ok(1000)
        );
        // NXDOMAIN / NODATA: min(SOA TTL 7200, MINIMUM 300), at most negative.
        assert_eq!(lifetime(&response(3, false, true, 0), QE, &TTLS), Ok(300));
        assert_eq!(lifetime(&response(0, false, true, 0), QE, &TTLS), Ok(300));
        let short = CacheTtls {
            negative: 60,
            ..TTLS
        };
        assert_eq!(lifetime(&response(3, false, true, 0), QE, &short), Ok(60));
        assert_eq!(
            lifetime(&response(3, false, false, 0), QE, &TTLS),
            Err(Uncacheable::Policy),
            "no SOA: not cached"
        );
        assert_eq!(lifetime(&response(2, false, false, 0), QE, &TTLS), Ok(5));
        let no_servfail = CacheTtls {
            servfail: 0,
            ..TTLS
        };
        assert_eq!(
            lifetime(&response(2, false, false, 0), QE, &no_servfail),
            Err(Uncacheable::Policy)
        );
        assert_eq!(
            lifetime(&response(5, false, false, 0), QE, &TTLS),
            Err(Uncacheable::Policy),
            "REFUSED"
        );
        assert_eq!(
            lifetime(&response(0, true, false, 0), QE, &TTLS),
            Err(Uncacheable::Policy),
            "TTL 0"
        );
        let mut tc = response(0, true, false, 60);
        tc[2] |= 0x02;
        assert_eq!(lifetime(&tc, QE, &TTLS), Err(Uncacheable::Policy), "TC=1");
    }

    #[test]
    fn per_client_and_malformed_answers_are_refused() {
        let mut cookie = response(0, true, false, 60);
        let n = cookie.len();
        cookie[n - 2..].copy_from_slice(&12u16.to_be_bytes());
        cookie.extend_from_slice(&[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(lifetime(&cookie, QE, &TTLS), Err(Uncacheable::PerClient));
        let full = response(0, true, true, 60);
        for cut in 0..full.len() {
            assert!(lifetime(&full[..cut], QE.min(cut), &TTLS).is_err(), "{cut}");
        }
        let mut query = full.clone();
        query[2] &= !0x80;
        assert_eq!(lifetime(&query, QE, &TTLS), Err(Uncacheable::Malformed));
        let mut trailing = full;
        trailing.push(0);
        assert_eq!(lifetime(&trailing, QE, &TTLS), Err(Uncacheable::Malformed));
    }

    #[test]
    fn served_answers_are_aged_but_not_opt() {
        let mut m = response(0, true, true, 120);
        age(&mut m, QE, 20, false);
        let be = |m: &[u8], at: usize| u32::from_be_bytes(m[at..at + 4].try_into().unwrap());
        assert_eq!(be(&m, QE + 6), 100);
        assert_eq!(be(&m, QE + 16 + 6), 7180);
        let opt_ttl = m.len() - 6;
        assert_eq!(be(&m, opt_ttl), 0x8000, "OPT's flags untouched");
        age(&mut m, QE, 500, false);
        assert_eq!(be(&m, QE + 6), 0, "never below 0");
        age(&mut m, QE, 0, true);
        assert_eq!(be(&m, QE + 16 + 6), 0, "stale: 0");
        let mut cut = response(0, true, true, 120);
        cut.truncate(40);
        age(&mut cut, QE, 5, false);
    }
}
