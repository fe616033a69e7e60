//! The names the rules select on, in one static hash table: a query's name
//! is looked up once per label (it and each of its suffixes), whatever the
//! number of names — a 100 k-entry blocklist costs what ten names do.
//!
//! The table is built once per (re)configuration with linear probing, and
//! its longest probe sequence is recorded: no lookup probes further, so a
//! query cannot be crafted to make lookups slow whatever the hash (the
//! names are the operator's; only the query is hostile). The hash chains
//! labels from the root, so every suffix's hash comes from one pass over
//! the name.

use xdpdns_common::config::NameEntry;
use xdpdns_common::hash::mix64;

/// Room for the labels of a 255-byte name besides the root (127 one-byte
/// labels; a longer, invalid name is cut there).
const MAX_LABELS: usize = 128;

/// Which selector of a rule a name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The rule's selectors.
    When,
    /// Its `not` table.
    Not,
}

/// A name's meaning for one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ref {
    rule: u16,
    side: Side,
    /// The name only, not below it.
    exact: bool,
}

#[derive(Clone, Copy)]
struct Slot {
    hash: u64,
    /// The key, `keys[key..key + len]`; `len == 0` marks an empty slot.
    key: u32,
    len: u16,
    /// Its refs, `refs[refs..refs + nrefs]`.
    refs: u32,
    nrefs: u32,
}

const EMPTY: Slot = Slot {
    hash: 0,
    key: 0,
    len: 0,
    refs: 0,
    nrefs: 0,
};

pub struct NameTable {
    slots: Box<[Slot]>,
    mask: usize,
    /// Probes a lookup makes at most.
    max_probe: usize,
    keys: Box<[u8]>,
    refs: Box<[Ref]>,
    seed: u64,
    /// Bit `d` set: some name has `d` labels. Only suffixes of those
    /// depths are looked up.
    depths: u128,
    /// A Bloom filter of the keys' hashes (8 bits per key, two probes:
    /// ~5 % false positives), small enough to stay in cache while the
    /// table is not: most names asked are in no list, and are then
    /// answered without touching the table.
    bloom: Box<[u64]>,
    bloom_mask: u64,
}

/// The filter's word for `hash` (of `mask + 1` words) and its two bits
/// there: one memory access per test.
#[inline]
fn bloom_bits(hash: u64, mask: u64) -> (usize, u64) {
    let word = ((hash >> 32) & mask) as usize;
    (word, 1 << ((hash >> 20) & 63) | 1 << ((hash >> 26) & 63))
}

/// ASCII upper-case letters of the eight bytes of `v` lowered (SWAR:
/// bytes with the top bit set are left alone).
#[inline]
fn lower8(v: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let low7 = v & (ONES * 0x7f);
    // Per byte: the top bit set iff the byte is above 'Z', resp. at least 'A'.
    let above_z = low7 + ONES * (0x7f - b'Z') as u64;
    let from_a = low7 + ONES * (0x80 - b'A') as u64;
    let upper = (from_a ^ above_z) & !v & (ONES * 0x80);
    v | (upper >> 2)
}

/// Hash of one label (its length octet included), lower-cased, eight
/// bytes at a time.
#[inline]
fn label_hash(label: &[u8]) -> u64 {
    let step = |h: u64, v: u64| {
        (h ^ lower8(v))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29)
    };
    let mut h = label.len() as u64;
    let mut chunks = label.chunks_exact(8);
    for c in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        h = step(h, u64::from_le_bytes(b));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let v = rest
            .iter()
            .enumerate()
            .fold(0u64, |v, (i, b)| v | u64::from(*b) << (8 * i));
        h = step(h, v);
    }
    h
}

/// Calls `each(k, suffix, hash)` for the suffixes of `name` whose label
/// count (0 for the root) is in `depths`, from the root up, while it
/// returns true: `k` counts labels from the left (0: the whole name),
/// `hash` chains the labels' hashes from the root, so each byte is hashed
/// once, and labels deeper than the deepest of `depths` are not hashed at
/// all. `name` must be a validated uncompressed name of at most 255 bytes.
#[inline]
fn for_each_suffix(
    seed: u64,
    name: &[u8],
    depths: u128,
    mut each: impl FnMut(usize, &[u8], u64) -> bool,
) {
    // Label offsets; a 255-byte name has at most 127 labels.
    let mut at = [0u8; MAX_LABELS];
    let mut n = 0;
    let mut i = 0;
    if depths == 0 {
        return;
    }
    while i < name.len() && name[i] != 0 && n < MAX_LABELS - 1 {
        at[n] = i as u8;
        n += 1;
        i += 1 + usize::from(name[i]);
    }
    let root = i.min(name.len().saturating_sub(1));
    let mut h = mix64(seed);
    if depths & 1 != 0 && !each(n, &name[root..], h) {
        return;
    }
    let deepest = 127 - depths.leading_zeros() as usize;
    let mut end = root;
    for k in (n.saturating_sub(deepest)..n).rev() {
        let start = usize::from(at[k]);
        h = mix64(h ^ label_hash(&name[start..end]));
        if depths >> (n - k) & 1 != 0 && !each(k, &name[start..], h) {
            return;
        }
        end = start;
    }
}

/// The label count of wire name `name` (0 for the root).
fn depth(name: &[u8]) -> usize {
    let (mut n, mut i) = (0, 0);
    while i < name.len() && name[i] != 0 {
        n += 1;
        i += 1 + usize::from(name[i]);
    }
    n
}

impl NameTable {
    /// The table of `names`: for each rule, its selectors' names.
    pub fn new<'a>(names: impl Iterator<Item = (u16, Side, &'a NameEntry)>) -> NameTable {
        let mut grouped: std::collections::HashMap<&[u8], Vec<Ref>> = Default::default();
        for (rule, side, e) in names {
            let refs = grouped.entry(&e.wire[..]).or_default();
            let r = Ref {
                rule,
                side,
                exact: e.exact,
            };
            if !refs.contains(&r) {
                refs.push(r);
            }
        }
        // Every proper ancestor of a name (but the root) is an entry too,
        // without refs: the walk from the root stops at the first suffix
        // absent from the table.
        let names: Vec<&[u8]> = grouped.keys().copied().collect();
        for name in names {
            let mut at = 0;
            while at < name.len() && name[at] != 0 {
                at += 1 + usize::from(name[at]);
                if at < name.len() - 1 {
                    grouped.entry(&name[at..]).or_default();
                }
            }
        }
        let mut entries: Vec<(&[u8], Vec<Ref>)> = grouped.into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let cap = (entries.len() * 2).next_power_of_two().max(16);
        let mut best: Option<NameTable> = None;
        for attempt in 0..8u64 {
            let t = Self::build(&entries, cap, 0x9e37_79b9_7f4a_7c15 ^ attempt);
            if t.max_probe <= 24 {
                return t;
            }
            if best.as_ref().is_none_or(|b| t.max_probe < b.max_probe) {
                best = Some(t);
            }
        }
        best.expect("eight attempts")
    }

    fn build(entries: &[(&[u8], Vec<Ref>)], cap: usize, seed: u64) -> NameTable {
        let mut slots = vec![EMPTY; cap];
        let mut keys = Vec::new();
        let mut refs = Vec::new();
        let mut max_probe = 0;
        let words = (entries.len() * 8 / 64).next_power_of_two().max(1);
        let bloom_mask = words as u64 - 1;
        let mut bloom = vec![0u64; words];
        for (key, r) in entries {
            let mut hash = 0;
            for_each_suffix(seed, key, u128::MAX, |k, _, h| {
                if k == 0 {
                    hash = h;
                }
                true
            });
            let mut i = hash as usize & (cap - 1);
            let mut probe = 1;
            while slots[i].len != 0 {
                i = (i + 1) & (cap - 1);
                probe += 1;
            }
            max_probe = max_probe.max(probe);
            let (word, bits) = bloom_bits(hash, bloom_mask);
            bloom[word] |= bits;
            slots[i] = Slot {
                hash,
                key: keys.len() as u32,
                len: key.len() as u16,
                refs: refs.len() as u32,
                nrefs: r.len() as u32,
            };
            keys.extend_from_slice(key);
            refs.extend_from_slice(r);
        }
        NameTable {
            slots: slots.into_boxed_slice(),
            mask: cap - 1,
            max_probe: if entries.is_empty() { 0 } else { max_probe },
            depths: entries
                .iter()
                .fold(0, |d, (k, _)| d | 1u128 << depth(k).min(127)),
            keys: keys.into_boxed_slice(),
            refs: refs.into_boxed_slice(),
            seed,
            bloom: bloom.into_boxed_slice(),
            bloom_mask,
        }
    }

    #[inline]
    fn may_hold(&self, hash: u64) -> bool {
        let (word, bits) = bloom_bits(hash, self.bloom_mask);
        self.bloom[word] & bits == bits
    }

    pub fn is_empty(&self) -> bool {
        self.max_probe == 0
    }

    /// Calls `hit(rule, side)` for every rule selector a name of which
    /// matches `qname` (validated wire format): exactly, or as a suffix.
    #[inline]
    pub fn lookup(&self, qname: &[u8], mut hit: impl FnMut(u16, Side)) {
        if self.is_empty() || qname.is_empty() {
            return;
        }
        // Every ancestor of a name is in the table (without refs), so a
        // suffix that is not ends the walk: nothing below it can be.
        for_each_suffix(self.seed, qname, self.depths, |k, suffix, hash| {
            let root = suffix.len() == 1;
            if !self.may_hold(hash) {
                return root;
            }
            let mut i = hash as usize & self.mask;
            for _ in 0..self.max_probe {
                let s = &self.slots[i];
                if s.len == 0 {
                    break;
                }
                if s.hash == hash && self.key_is(s, suffix) {
                    let refs = &self.refs[s.refs as usize..(s.refs + s.nrefs) as usize];
                    for r in refs {
                        if !r.exact || k == 0 {
                            hit(r.rule, r.side);
                        }
                    }
                    return true;
                }
                i = (i + 1) & self.mask;
            }
            root
        });
    }

    #[inline]
    fn key_is(&self, s: &Slot, suffix: &[u8]) -> bool {
        let key = &self.keys[s.key as usize..s.key as usize + usize::from(s.len)];
        key.len() == suffix.len()
            && key
                .iter()
                .zip(suffix)
                .all(|(k, q)| *k == q.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xdpdns_common::dns::name_to_wire;

    fn entry(name: &str, exact: bool) -> NameEntry {
        NameEntry {
            wire: name_to_wire(name).unwrap(),
            exact,
        }
    }

    fn hits(t: &NameTable, name: &str) -> Vec<(u16, Side)> {
        let mut wire = name_to_wire(name).unwrap();
        // Queries keep their case: upper-case the first letter.
        if wire.len() > 1 {
            wire[1] = wire[1].to_ascii_uppercase();
        }
        let mut v = Vec::new();
        t.lookup(&wire, |r, s| v.push((r, s)));
        v.sort_by_key(|(r, s)| (*r, *s == Side::Not));
        v
    }

    #[test]
    fn exact_names_suffixes_and_label_boundaries() {
        let names = [
            (0, Side::When, entry("example.com.", false)),
            (1, Side::When, entry("www.example.com.", true)),
            (2, Side::Not, entry("com.", false)),
            (3, Side::When, entry(".", false)),
        ];
        let t = NameTable::new(names.iter().map(|(r, s, e)| (*r, *s, e)));
        assert_eq!(
            hits(&t, "www.example.com."),
            [
                (0, Side::When),
                (1, Side::When),
                (2, Side::Not),
                (3, Side::When)
            ]
        );
        assert_eq!(
            hits(&t, "a.www.example.com."),
            [(0, Side::When), (2, Side::Not), (3, Side::When)],
            "exact names do not match below"
        );
        assert_eq!(
            hits(&t, "badexample.com."),
            [(2, Side::Not), (3, Side::When)],
            "suffixes end on a label boundary"
        );
        assert_eq!(hits(&t, "."), [(3, Side::When)]);
        let empty = NameTable::new(std::iter::empty());
        assert!(hits(&empty, "x.").is_empty());
    }

    #[test]
    fn a_hundred_thousand_names_keep_short_probes() {
        let names: Vec<NameEntry> = (0..100_000)
            .map(|i| entry(&format!("host{i}.block.example."), false))
            .collect();
        let t = NameTable::new(names.iter().map(|e| (7, Side::When, e)));
        assert!(t.max_probe <= 24, "{}", t.max_probe);
        assert_eq!(hits(&t, "x.host99999.block.example."), [(7, Side::When)]);
        for i in (0..100_000).step_by(997) {
            let name = format!("host{i}.block.example.");
            assert_eq!(
                hits(&t, &name),
                [(7, Side::When)],
                "no false negative: {name}"
            );
        }
        let passed = (0..10_000).filter(|i: &u64| !t.may_hold(mix64(*i))).count();
        assert!(
            passed > 9_000,
            "the filter keeps most misses off the table: {passed}"
        );
        assert!(hits(&t, "host100000.block.example.").is_empty());
        assert!(hits(&t, "block.example.").is_empty());
    }

    #[test]
    fn letters_are_lowered_eight_at_a_time_and_nothing_else() {
        for b in 0..=255u8 {
            let v = u64::from_le_bytes([b, b'A', b'z', b'@', b'[', 0xc1, b'Z', b'`']);
            let want: Vec<u8> = v.to_le_bytes().iter().map(u8::to_ascii_lowercase).collect();
            assert_eq!(lower8(v).to_le_bytes().to_vec(), want, "{b}");
        }
    }

    #[test]
    fn longest_names_and_most_labels_are_handled() {
        let many = "a.".repeat(127);
        let t = NameTable::new([entry(&many, true)].iter().map(|e| (0, Side::When, e)));
        assert_eq!(hits(&t, &many), [(0, Side::When)]);
    }
}
