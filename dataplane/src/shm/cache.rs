//! The packet cache: answers from backends, in memory shared by every
//! dataplane of the instance, so a name asked on one queue is answered from
//! the cache on all of them, and the cache outlives any dataplane.
//!
//! The region is a header (word 0: the purge epoch) and buckets of
//! [`WAYS`] entries of [`SLOT_WORDS`] words. An entry's key is the question
//! (name lower-cased, type, class) and a [`Variant`] (RD, CD, EDNS, DO, the
//! client's payload-size class, the pool); its bucket comes from SipHash-1-3
//! of the key under a per-instance secret, so clients cannot aim names at
//! one bucket. Each entry is a **seqlock**: word 0 is odd while a writer
//! fills it; a reader copies the entry out (atomic loads only) and keeps the
//! copy only if word 0 did not change meanwhile. Neither side ever waits: a
//! writer that finds an entry being written gives up (the answer is simply
//! not cached), a reader that races a writer counts a miss.
//!
//! Trust: every dataplane writes here, so a compromised one can store any
//! answer for any name, and every queue would serve it until it expires or
//! is purged — the cache trusts every dataplane, as the in-flight table
//! does (docs/security.md). What a reader does guards against corrupt or
//! hostile contents crashing or confusing *it*: lengths and offsets are
//! bounds-checked against the fixed geometry, an entry is served only if
//! its copied question equals the query's (case-insensitively: the query's
//! own bytes are kept, 0x20 case included), and the answer carries the
//! query's ID.

use std::hash::Hasher;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use siphasher::sip::SipHasher13;
use xdpdns_common::cache::{ENTRY_HEADER_WORDS, HEADER_WORDS, MAX_RESPONSE, SLOT_WORDS, WAYS};

use super::{SharedRegion, ShmError};
use crate::dns::Query;

/// What, beside the question, makes two queries' answers differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant(u32);

impl Variant {
    /// RD and CD, EDNS or not, DO, the payload size class (under 1232,
    /// under 4096, more), and the pool (`u16::MAX`: the default).
    pub fn of(q: &Query, pool: u16) -> Variant {
        let (edns, dnssec_ok, class) = match q.edns {
            Some(e) => (
                true,
                e.dnssec_ok,
                match e.udp_size {
                    0..1232 => 0,
                    1232..4096 => 1,
                    _ => 2,
                },
            ),
            None => (false, false, 0),
        };
        Variant(
            u32::from(q.rd)
                | (u32::from(q.cd) << 1)
                | (u32::from(edns) << 2)
                | (u32::from(dnssec_ok) << 3)
                | (class << 4)
                | (u32::from(pool) << 16),
        )
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    pub fn from_bits(bits: u32) -> Variant {
        Variant(bits)
    }
}

/// Why a lookup found nothing to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No entry for the key.
    Absent,
    /// An entry, expired (and not servable stale).
    Expired,
    /// An entry larger than the client takes, or than the room there is.
    TooLarge,
    /// An entry being written, or whose contents do not check out (a
    /// hash collision, a race with a writer, corruption).
    Collision,
}

/// An answer written from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub len: usize,
    /// Served after its expiry (the pool is down).
    pub stale: bool,
}

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Into a free or expired entry, or over the same key's.
    Fresh,
    /// Over another key's live entry (the bucket was full).
    Evicted,
}

/// Why an insert stored nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    TooLarge,
    /// Not an answer to one well-formed question.
    Malformed,
    /// Every way of the bucket was being written.
    Busy,
}

pub struct Cache {
    region: SharedRegion,
    buckets: usize,
    key: (u64, u64),
}

/// Longest question name (wire format).
const MAX_NAME: usize = 255;

impl Cache {
    /// Maps the cache the loader created (`fd`) with `slots` entries.
    pub fn open(fd: BorrowedFd<'_>, slots: u32, key: (u64, u64)) -> Result<Cache, ShmError> {
        let len = xdpdns_common::cache::table_bytes(slots) as usize;
        Cache::new(SharedRegion::map(fd, len)?, slots, key)
    }

    /// A cache in anonymous shared memory (tests, benchmarks).
    pub fn anonymous(slots: u32, key: (u64, u64)) -> Result<Cache, ShmError> {
        let len = xdpdns_common::cache::table_bytes(slots) as usize;
        Cache::new(SharedRegion::anonymous(len)?, slots, key)
    }

    fn new(region: SharedRegion, slots: u32, key: (u64, u64)) -> Result<Cache, ShmError> {
        let want = HEADER_WORDS + slots as usize * SLOT_WORDS;
        if !slots.is_power_of_two() || (slots as usize) < WAYS || region.words().len() < want {
            return Err(ShmError::Size {
                have: region.words().len() as u64 * 8,
                want: want as u64 * 8,
            });
        }
        Ok(Cache {
            region,
            buckets: slots as usize / WAYS,
            key,
        })
    }

    fn epoch(&self) -> &AtomicU64 {
        &self.region.words()[0]
    }

    fn entry(&self, i: usize) -> &[AtomicU64] {
        let start = HEADER_WORDS + i * SLOT_WORDS;
        &self.region.words()[start..start + SLOT_WORDS]
    }

    /// The bucket's first entry and the key's hash. `name` is the wire
    /// name (any case), `tail` its type and class.
    fn locate(&self, name: &[u8], tail: &[u8], variant: Variant) -> (usize, u64) {
        let mut lower = [0u8; MAX_NAME];
        let n = name.len().min(MAX_NAME);
        for (d, s) in lower.iter_mut().zip(&name[..n]) {
            *d = s.to_ascii_lowercase();
        }
        let mut h = SipHasher13::new_with_keys(self.key.0, self.key.1);
        h.write(&lower[..n]);
        h.write(tail);
        h.write_u32(variant.0);
        let hash = h.finish();
        ((hash as usize & (self.buckets - 1)) * WAYS, hash)
    }

    /// Writes the cached answer to the query `q` in `msg` over it (at most
    /// `room` bytes), if there is one: the query's ID and question (its
    /// case) kept, TTLs aged. An expired entry is served, TTLs 0, if it
    /// expired less than `stale_ms` ago.
    pub fn lookup(
        &self,
        msg: &mut [u8],
        q: &Query,
        variant: Variant,
        room: usize,
        now_ms: u64,
        stale_ms: u64,
    ) -> Result<Hit, Miss> {
        let qe = q.question_end;
        let name = msg.get(12..q.qname_end).ok_or(Miss::Absent)?;
        let tail = msg.get(q.qname_end..qe).ok_or(Miss::Absent)?;
        let (first, hash) = self.locate(name, tail, variant);
        let epoch = self.epoch().load(Ordering::Acquire);
        for way in 0..WAYS {
            let w = self.entry(first + way);
            let seq = w[0].load(Ordering::Acquire);
            if seq == 0 || w[1].load(Ordering::Relaxed) != hash {
                continue;
            }
            if seq & 1 == 1 {
                return Err(Miss::Collision);
            }
            let w2 = w[2].load(Ordering::Relaxed);
            if w2 as u32 != variant.0 {
                continue;
            }
            let len = usize::from((w2 >> 32) as u16);
            let (inserted, expires) = (w[3].load(Ordering::Relaxed), w[4].load(Ordering::Relaxed));
            if w[5].load(Ordering::Relaxed) != epoch {
                return Err(Miss::Absent);
            }
            let stale = now_ms >= expires;
            if stale && now_ms >= expires.saturating_add(stale_ms) {
                return Err(Miss::Expired);
            }
            if len > room || len > msg.len() {
                return Err(Miss::TooLarge);
            }
            if len > MAX_RESPONSE || len < qe {
                return Err(Miss::Collision);
            }
            let mut bytes = [0u8; MAX_RESPONSE];
            let words = len.div_ceil(8);
            for (d, s) in bytes[..words * 8]
                .chunks_exact_mut(8)
                .zip(&w[ENTRY_HEADER_WORDS..])
            {
                d.copy_from_slice(&s.load(Ordering::Relaxed).to_le_bytes());
            }
            fence(Ordering::Acquire);
            if w[0].load(Ordering::Relaxed) != seq {
                return Err(Miss::Collision);
            }
            let r = &bytes[..len];
            // Only an answer to this very question is served.
            let same = r[2] & 0x80 != 0
                && r[4..6] == [0, 1]
                && r[12..q.qname_end].eq_ignore_ascii_case(name)
                && r[q.qname_end..qe] == *tail;
            if !same {
                return Err(Miss::Collision);
            }
            msg[2..12].copy_from_slice(&r[2..12]);
            msg[qe..len].copy_from_slice(&r[qe..len]);
            let age = now_ms.saturating_sub(inserted) / 1000;
            crate::dns::cacheable::age(
                &mut msg[..len],
                qe,
                u32::try_from(age).unwrap_or(u32::MAX),
                stale,
            );
            return Ok(Hit { len, stale });
        }
        Err(Miss::Absent)
    }

    /// Stores the answer `msg` (to the question `msg[12..question_end]`,
    /// `qname_end` where its name ends) for `secs` from `now_ms`.
    pub fn insert(
        &self,
        msg: &[u8],
        qname_end: usize,
        question_end: usize,
        variant: Variant,
        secs: u32,
        now_ms: u64,
    ) -> Result<Stored, NotStored> {
        if msg.len() > MAX_RESPONSE {
            return Err(NotStored::TooLarge);
        }
        if qname_end <= 12 || question_end != qname_end + 4 || msg.len() < question_end {
            return Err(NotStored::Malformed);
        }
        let (first, hash) =
            self.locate(&msg[12..qname_end], &msg[qname_end..question_end], variant);
        let epoch = self.epoch().load(Ordering::Acquire);
        // The same key's entry, else a free or dead one, else the one
        // closest to expiry.
        let mut pick: Option<(usize, u64, bool)> = None;
        let mut soonest = u64::MAX;
        for way in 0..WAYS {
            let w = self.entry(first + way);
            let seq = w[0].load(Ordering::Acquire);
            if seq & 1 == 1 {
                continue;
            }
            let same = seq != 0
                && w[1].load(Ordering::Relaxed) == hash
                && w[2].load(Ordering::Relaxed) as u32 == variant.0;
            let expires = w[4].load(Ordering::Relaxed);
            let dead = seq == 0 || w[5].load(Ordering::Relaxed) != epoch || expires <= now_ms;
            if same || dead {
                pick = Some((first + way, seq, false));
                if same {
                    break;
                }
            } else if pick.is_none_or(|(_, _, evicts)| evicts) && expires < soonest {
                soonest = expires;
                pick = Some((first + way, seq, true));
            }
        }
        let (i, seq, evicts) = pick.ok_or(NotStored::Busy)?;
        let w = self.entry(i);
        if w[0]
            .compare_exchange(seq, seq | 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return Err(NotStored::Busy);
        }
        // Readers that see any word below see the odd sequence too.
        fence(Ordering::Release);
        let put = |k: usize, v: u64| w[k].store(v, Ordering::Relaxed);
        put(1, hash);
        put(2, u64::from(variant.0) | ((msg.len() as u64) << 32));
        put(3, now_ms);
        put(4, now_ms.saturating_add(u64::from(secs) * 1000));
        put(5, epoch);
        for (k, chunk) in msg.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            put(ENTRY_HEADER_WORDS + k, u64::from_le_bytes(b));
        }
        w[0].store((seq | 1) + 1, Ordering::Release);
        Ok(if evicts {
            Stored::Evicted
        } else {
            Stored::Fresh
        })
    }

    /// Stores a backend's answer `msg` to the question `question` (name,
    /// type, class, as forwarded) if the answer may be cached
    /// (`dns::cacheable`) and its question is that one, byte for byte;
    /// counted in `c`.
    pub fn store_answer(
        &self,
        ttls: &xdpdns_common::config::CacheTtls,
        variant: Variant,
        question: &[u8],
        msg: &[u8],
        c: &mut xdpdns_common::stats::CacheCounters,
    ) {
        let question_end = 12 + question.len();
        if question.len() < 5 || msg.get(12..question_end) != Some(question) {
            c.uncacheable += 1;
            return;
        }
        let Ok(secs) = crate::dns::cacheable::lifetime(msg, question_end, ttls) else {
            c.uncacheable += 1;
            return;
        };
        let now_ms = super::cache_clock_ms();
        match self.insert(msg, question_end - 4, question_end, variant, secs, now_ms) {
            Ok(stored) => {
                c.inserts += 1;
                c.evictions += u64::from(stored == Stored::Evicted);
            }
            Err(_) => c.uncacheable += 1,
        }
    }

    /// Forgets every entry at once (they stay in memory, dead).
    pub fn purge_all(&self) {
        self.epoch().fetch_add(1, Ordering::AcqRel);
    }

    /// Removes the entries for `name` (wire format; any case matches), or
    /// at or below it with `suffix`, of `qtype` only if given. Walks the
    /// whole cache; returns how many it removed. An entry being written is
    /// skipped.
    pub fn purge(&self, name: &[u8], qtype: Option<u16>, suffix: bool) -> u64 {
        let epoch = self.epoch().load(Ordering::Acquire);
        let mut removed = 0;
        // Header and question at most: the name, type and class.
        const QUESTION_WORDS: usize = (12 + MAX_NAME + 4).div_ceil(8);
        for i in 0..self.buckets * WAYS {
            let w = self.entry(i);
            let seq = w[0].load(Ordering::Acquire);
            if seq == 0 || seq & 1 == 1 || w[5].load(Ordering::Relaxed) != epoch {
                continue;
            }
            let len = usize::from((w[2].load(Ordering::Relaxed) >> 32) as u16).min(MAX_RESPONSE);
            let mut bytes = [0u8; QUESTION_WORDS * 8];
            for (d, s) in bytes
                .chunks_exact_mut(8)
                .zip(&w[ENTRY_HEADER_WORDS..ENTRY_HEADER_WORDS + QUESTION_WORDS])
            {
                d.copy_from_slice(&s.load(Ordering::Relaxed).to_le_bytes());
            }
            fence(Ordering::Acquire);
            if w[0].load(Ordering::Relaxed) != seq {
                continue;
            }
            let r = &bytes[..len.min(bytes.len())];
            let Some((qname, rtype)) = question(r) else {
                continue;
            };
            let named = if suffix {
                under(qname, name)
            } else {
                qname.eq_ignore_ascii_case(name)
            };
            if !named || qtype.is_some_and(|t| t != rtype) {
                continue;
            }
            if w[0]
                .compare_exchange(seq, seq | 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                fence(Ordering::Release);
                w[5].store(epoch.wrapping_sub(1), Ordering::Relaxed);
                w[0].store((seq | 1) + 1, Ordering::Release);
                removed += 1;
            }
        }
        removed
    }
}

/// The question name and type of the answer `r`, if its question parses
/// (labels only, within the message).
fn question(r: &[u8]) -> Option<(&[u8], u16)> {
    let mut at = 12;
    loop {
        let l = *r.get(at)?;
        match l {
            0 => break,
            1..=63 => at += 1 + usize::from(l),
            _ => return None,
        }
        if at - 12 > MAX_NAME {
            return None;
        }
    }
    let t = r.get(at + 1..at + 3)?;
    Some((&r[12..=at], u16::from_be_bytes([t[0], t[1]])))
}

/// `name` is `zone` or below it (wire format, any case).
fn under(name: &[u8], zone: &[u8]) -> bool {
    let mut at = 0;
    while at < name.len() {
        if name[at..].eq_ignore_ascii_case(zone) {
            return true;
        }
        at += 1 + usize::from(name[at]);
    }
    zone == [0]
}

#[cfg(test)]
mod tests;
