//! The rules' selectors other than names, indexed by value: for each query
//! attribute, a precomputed row (the set of rules a value may match: those
//! without a selector on it and those naming the value) per class of
//! values. A query's candidates are the intersection of its rows — a few
//! loads and ANDs per mask word, whatever the number of rules. The flags
//! (opcode, RD, DO, transport) share one table of all their combinations;
//! qtype, qclass, EDNS and listen address are a row each; sizes and
//! sources (ranges and prefixes, which may overlap) are cut into disjoint
//! intervals, each with its row, found by binary search — the cost grows
//! with the logarithm of their number — and only when a candidate left
//! has such a selector.
//!
//! Rows are `stride` words long (the rule count in words, rounded up to a
//! power of two): [`Index::narrow`] is generic over it, so its loops are
//! unrolled for the one or two words of a typical rule set.

use std::net::{IpAddr, SocketAddr};

use xdpdns_common::config::{EdnsMatch, MAX_RULES, SelectorSpec, TransportMatch};

use crate::dns::Query;

/// What the rules look at, beyond the name (and the query).
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub ip: IpAddr,
    pub local: SocketAddr,
    pub tcp: bool,
    /// The message's length.
    pub size: usize,
}

/// Mask words for [`MAX_RULES`] rules.
pub(super) const WORDS: usize = MAX_RULES / 64;

/// A set of rules by index, for building.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Mask(pub [u64; WORDS]);

impl Mask {
    pub const NONE: Mask = Mask([0; WORDS]);

    #[inline]
    pub fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn or(mut self, o: &Mask) -> Mask {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a |= b;
        }
        self
    }

    fn and(mut self, o: &Mask) -> Mask {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a &= b;
        }
        self
    }

    fn not(mut self) -> Mask {
        for a in &mut self.0 {
            *a = !*a;
        }
        self
    }
}

/// Rules by the values of one attribute, for building: those without a
/// selector on it (`any`), and for each value named, the rules naming it.
struct Attr<K> {
    any: Mask,
    keys: Vec<K>,
    masks: Vec<Mask>,
}

impl<K: Copy + Ord> Attr<K> {
    /// From each rule's accepted values (`None`: no selector).
    fn new<'a>(
        specs: impl Iterator<Item = &'a SelectorSpec>,
        accepts: impl Fn(&SelectorSpec) -> Option<Vec<K>>,
    ) -> Self {
        // By value, sorted (for the binary searches), in n log n: a source
        // list of thousands of prefixes compiles in milliseconds.
        let mut any = Mask::NONE;
        let mut by: std::collections::BTreeMap<K, Mask> = Default::default();
        for (i, s) in specs.enumerate() {
            match accepts(s) {
                None => any.set(i),
                Some(values) => {
                    for v in values {
                        by.entry(v).or_insert(Mask::NONE).set(i);
                    }
                }
            }
        }
        Attr {
            any,
            keys: by.keys().copied().collect(),
            masks: by.into_values().collect(),
        }
    }

    /// The rules value `v` may match.
    fn accepting(&self, v: K) -> Mask {
        match self.keys.binary_search(&v) {
            Ok(at) => self.any.or(&self.masks[at]),
            Err(_) => self.any,
        }
    }
}

/// Masks cut to `stride` words each, one after another.
struct Rows {
    stride: usize,
    data: Box<[u64]>,
}

impl Rows {
    fn new(stride: usize, masks: impl IntoIterator<Item = Mask>) -> Rows {
        let mut data = Vec::new();
        for m in masks {
            data.extend_from_slice(&m.0[..stride]);
        }
        Rows {
            stride,
            data: data.into_boxed_slice(),
        }
    }

    /// Row `i` as `W` words (`W` is the stride; `i` in range).
    #[inline(always)]
    fn row<const W: usize>(&self, i: usize) -> &[u64; W] {
        debug_assert_eq!(W, self.stride);
        self.data[i * W..i * W + W]
            .try_into()
            .expect("rows are W words")
    }
}

/// An attribute with few named values, found by a scan of the keys: row 0
/// for the values no rule names, row `1 + i` for `keys[i]`.
struct Classed<K> {
    keys: Box<[K]>,
    rows: Rows,
}

impl<K: Copy + Ord> Classed<K> {
    fn new(a: &Attr<K>, stride: usize) -> Classed<K> {
        let rows = std::iter::once(a.any).chain(a.keys.iter().map(|k| a.accepting(*k)));
        Classed {
            keys: a.keys.clone().into_boxed_slice(),
            rows: Rows::new(stride, rows),
        }
    }

    #[inline(always)]
    fn narrow<const W: usize>(&self, c: &mut [u64; W], v: K) {
        if self.keys.is_empty() {
            return;
        }
        let class = self.keys.iter().position(|k| *k == v).map_or(0, |i| i + 1);
        and(c, self.rows.row::<W>(class));
    }
}

/// Ranges of values that may overlap (size ranges, prefixes), cut into
/// disjoint intervals: interval `i` runs from `starts[i]` to the next
/// start, and its row holds the rules without a selector on the attribute
/// and those with a range containing it. The starts are bucketed by the
/// values' top byte, so a lookup reads one bucket bound and the few starts
/// in its value's bucket (none, for values far from every range).
struct Intervals<T> {
    starts: Box<[T]>,
    /// `below[b]`: how many starts are in buckets before `b`.
    below: Box<[u32; 257]>,
    rows: Rows,
}

/// The values an interval set works on.
trait Point: Copy + Ord {
    const MIN: Self;
    const MAX: Self;
    fn next(self) -> Self;
    /// The top byte.
    fn bucket(self) -> usize;
}

impl Point for u16 {
    const MIN: u16 = 0;
    const MAX: u16 = u16::MAX;
    fn next(self) -> u16 {
        self + 1
    }
    #[inline(always)]
    fn bucket(self) -> usize {
        usize::from(self >> 8)
    }
}

impl Point for u32 {
    const MIN: u32 = 0;
    const MAX: u32 = u32::MAX;
    fn next(self) -> u32 {
        self + 1
    }
    #[inline(always)]
    fn bucket(self) -> usize {
        (self >> 24) as usize
    }
}

impl Point for u128 {
    const MIN: u128 = 0;
    const MAX: u128 = u128::MAX;
    fn next(self) -> u128 {
        self + 1
    }
    #[inline(always)]
    fn bucket(self) -> usize {
        (self >> 120) as usize
    }
}

impl<T: Point> Intervals<T> {
    /// From the ranges `(first, last)` of `a` (both included), with `a`'s
    /// rules.
    fn new(a: &Attr<(T, T)>, stride: usize) -> Intervals<T> {
        let mut starts = vec![T::MIN];
        for (first, last) in &a.keys {
            starts.push(*first);
            if *last != T::MAX {
                starts.push(last.next());
            }
        }
        starts.sort();
        starts.dedup();
        let mut rows = vec![a.any; starts.len()];
        for ((first, last), m) in a.keys.iter().zip(&a.masks) {
            let from = starts.partition_point(|s| s < first);
            let to = if *last == T::MAX {
                starts.len()
            } else {
                starts.partition_point(|s| *s <= *last)
            };
            // Ranges of prefixes nest or are apart, so this touches each
            // interval at most once per nesting level; size ranges are
            // bounded by the rule count.
            for r in &mut rows[from..to] {
                *r = r.or(m);
            }
        }
        let mut below = Box::new([0u32; 257]);
        for (b, n) in below.iter_mut().enumerate() {
            *n = starts.partition_point(|s| s.bucket() < b) as u32;
        }
        Intervals {
            starts: starts.into_boxed_slice(),
            below,
            rows: Rows::new(stride, rows),
        }
    }

    /// The row of the interval `v` falls in.
    #[inline(always)]
    fn row<const W: usize>(&self, v: T) -> &[u64; W] {
        // `starts[0]` is `MIN`: at least one start is at most `v`. The
        // starts in `v`'s bucket: a few are counted (branch-free), more
        // searched.
        let b = v.bucket();
        let (from, to) = (self.below[b] as usize, self.below[b + 1] as usize);
        let bucket = &self.starts[from..to];
        let i = from
            + if bucket.len() <= 16 {
                bucket.iter().map(|s| usize::from(*s <= v)).sum::<usize>()
            } else {
                bucket.partition_point(|s| *s <= v)
            };
        self.rows.row::<W>(i.saturating_sub(1))
    }
}

/// `c &= r`, word by word.
#[inline(always)]
fn and<const W: usize>(c: &mut [u64; W], r: &[u64; W]) {
    for (c, r) in c.iter_mut().zip(r) {
        *c &= r;
    }
}

#[inline(always)]
fn any_left<const W: usize>(c: &[u64; W]) -> bool {
    c.iter().fold(0, |l, w| l | w) != 0
}

/// Whether some rule in `c` is also in `m`.
#[inline(always)]
fn meets<const W: usize>(c: &[u64; W], m: &[u64; W]) -> bool {
    c.iter().zip(m).fold(0, |l, (c, m)| l | (c & m)) != 0
}

/// The index of the flags table: opcode (4 bits), RD, DO, TCP.
#[inline(always)]
fn flags_at(opcode: u8, rd: bool, dnssec_ok: bool, tcp: bool) -> usize {
    usize::from(opcode & 15) << 3
        | usize::from(rd) << 2
        | usize::from(dnssec_ok) << 1
        | usize::from(tcp)
}

/// The selectors of every rule but names and `not`, indexed.
pub(super) struct Index {
    /// Words per row: the rule count in words, rounded up to a power of two.
    stride: usize,
    /// Qtypes below 256 (every common one): `small[t]` is the row of `t`;
    /// the others by binary search in `keys` (row `1 + i`), row 0 if absent.
    qtype_small: Box<[u16; 256]>,
    qtype_keys: Box<[u16]>,
    qtype: Rows,
    /// One row per combination of opcode, RD, DO and transport.
    flags: Rows,
    qclass: Classed<u16>,
    listen: Classed<SocketAddr>,
    /// Row 0: no EDNS; row 1: EDNS of a version no rule names; `2 + i`:
    /// version `edns_versions[i]`. Empty if no rule selects on EDNS.
    edns_versions: Box<[u8]>,
    edns: Option<Rows>,
    /// Rules with a size resp. source selector: the intervals are searched
    /// only if a candidate is one of them.
    size_need: Rows,
    size: Intervals<u16>,
    /// The rules without a size selector: all a message over 65,535 bytes
    /// could match (none is: TCP's length prefix has 16 bits).
    size_any: Rows,
    source_need: Rows,
    v4: Intervals<u32>,
    v6: Intervals<u128>,
}

impl Index {
    /// The index of `when`, the rules' selectors in order (at most
    /// [`MAX_RULES`]).
    pub fn new(when: &[&SelectorSpec]) -> Index {
        let words = when.len().div_ceil(64).max(1);
        let stride = words.next_power_of_two();
        let specs = || when.iter().copied();
        fn one<T>(v: Option<T>) -> Option<Vec<T>> {
            v.map(|v| vec![v])
        }
        fn list<T: Clone>(v: &[T]) -> Option<Vec<T>> {
            (!v.is_empty()).then(|| v.to_vec())
        }

        let qtype = Attr::new(specs(), |s| list(&s.qtypes));
        let mut qtype_small = Box::new([0u16; 256]);
        for (i, k) in qtype.keys.iter().enumerate() {
            if *k < 256 {
                qtype_small[usize::from(*k)] = i as u16 + 1;
            }
        }
        let qtype_rows =
            std::iter::once(qtype.any).chain(qtype.keys.iter().map(|k| qtype.accepting(*k)));

        let opcode = Attr::new(specs(), |s| one(s.opcode));
        let rd = Attr::new(specs(), |s| one(s.rd));
        let dnssec_ok = Attr::new(specs(), |s| one(s.dnssec_ok));
        let tcp = Attr::new(specs(), |s| {
            one(s.transport.map(|t| t == TransportMatch::Tcp))
        });
        let flags = (0..128).map(|at: usize| {
            let (op, rd_, do_, tcp_) = ((at >> 3) as u8, at & 4 != 0, at & 2 != 0, at & 1 != 0);
            debug_assert_eq!(flags_at(op, rd_, do_, tcp_), at);
            opcode
                .accepting(op)
                .and(&rd.accepting(rd_))
                .and(&dnssec_ok.accepting(do_))
                .and(&tcp.accepting(tcp_))
        });

        let edns = Attr::new(specs(), |s| match s.edns {
            None => None,
            Some(EdnsMatch::Absent) => Some(vec![None]),
            Some(EdnsMatch::Version(v)) => Some(vec![Some(v)]),
            // Under `present`, not under any key.
            Some(EdnsMatch::Present) => Some(Vec::new()),
        });
        let mut present = Mask::NONE;
        for (i, s) in specs().enumerate() {
            if s.edns == Some(EdnsMatch::Present) {
                present.set(i);
            }
        }
        let edns_versions: Vec<u8> = edns.keys.iter().filter_map(|k| *k).collect();
        let edns_rows = (edns.any != all_of(when.len())).then(|| {
            let absent = edns.accepting(None);
            let other = edns.any.or(&present);
            let named = edns_versions
                .iter()
                .map(|v| edns.accepting(Some(*v)).or(&present));
            Rows::new(stride, [absent, other].into_iter().chain(named))
        });

        let size = Attr::new(specs(), |s| one(s.query_size));
        let source_v4 = Attr::new(specs(), |s| {
            (!s.source.is_empty()).then(|| {
                s.source
                    .iter()
                    .filter_map(|p| match p.addr() {
                        IpAddr::V4(a) => {
                            let mask = prefix_mask(p.bits(), 32) as u32;
                            let net = u32::from(a) & mask;
                            Some((net, net | !mask))
                        }
                        IpAddr::V6(_) => None,
                    })
                    .collect()
            })
        });
        let source_v6 = Attr::new(specs(), |s| {
            (!s.source.is_empty()).then(|| {
                s.source
                    .iter()
                    .filter_map(|p| match p.addr() {
                        IpAddr::V6(a) => {
                            let mask = prefix_mask(p.bits(), 128);
                            let net = u128::from(a) & mask;
                            Some((net, net | !mask))
                        }
                        IpAddr::V4(_) => None,
                    })
                    .collect()
            })
        });
        let all = all_of(when.len());
        Index {
            stride,
            qtype_small,
            qtype_keys: qtype.keys.clone().into_boxed_slice(),
            qtype: Rows::new(stride, qtype_rows),
            flags: Rows::new(stride, flags),
            qclass: Classed::new(&Attr::new(specs(), |s| one(s.qclass)), stride),
            listen: Classed::new(&Attr::new(specs(), |s| list(&s.listen)), stride),
            edns_versions: edns_versions.into_boxed_slice(),
            edns: edns_rows,
            size_need: Rows::new(stride, [size.any.not().and(&all)]),
            size: Intervals::new(&size, stride),
            size_any: Rows::new(stride, [size.any]),
            // Both families share `any`: the rules without a source selector.
            source_need: Rows::new(stride, [source_v4.any.not().and(&all)]),
            v4: Intervals::new(&source_v4, stride),
            v6: Intervals::new(&source_v6, stride),
        }
    }

    /// Words per row: what [`Index::narrow`]'s `W` must be.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Narrows candidates `c` to the rules whose every selector but names
    /// and `not` holds for `q` and `f`; whether any remain.
    #[inline(always)]
    pub fn narrow<const W: usize>(&self, c: &mut [u64; W], q: &Query, f: &Facts) -> bool {
        let qtype = match self.qtype_small.get(usize::from(q.qtype)) {
            Some(r) => usize::from(*r),
            None => self.qtype_keys.binary_search(&q.qtype).map_or(0, |i| i + 1),
        };
        and(c, self.qtype.row::<W>(qtype));
        let dnssec_ok = q.edns.is_some_and(|e| e.dnssec_ok);
        and(
            c,
            self.flags
                .row::<W>(flags_at(q.opcode, q.rd, dnssec_ok, f.tcp)),
        );
        if !any_left(c) {
            return false;
        }
        self.qclass.narrow(c, q.qclass);
        self.listen.narrow(c, f.local);
        if let Some(rows) = &self.edns {
            let row = match q.edns {
                None => 0,
                Some(e) => self
                    .edns_versions
                    .iter()
                    .position(|v| *v == e.version)
                    .map_or(1, |i| i + 2),
            };
            and(c, rows.row::<W>(row));
        }
        if meets(c, self.size_need.row::<W>(0)) {
            match u16::try_from(f.size) {
                Ok(size) => and(c, self.size.row::<W>(size)),
                Err(_) => and(c, self.size_any.row::<W>(0)),
            }
        }
        if meets(c, self.source_need.row::<W>(0)) {
            match f.ip {
                IpAddr::V4(a) => and(c, self.v4.row::<W>(u32::from(a))),
                IpAddr::V6(a) => and(c, self.v6.row::<W>(u128::from(a))),
            }
        }
        any_left(c)
    }
}

/// The rules `0..n`.
fn all_of(n: usize) -> Mask {
    let mut m = Mask::NONE;
    for i in 0..n.min(MAX_RULES) {
        m.set(i);
    }
    m
}

/// The mask of a `bits`-long prefix of a `width`-bit address.
fn prefix_mask(bits: u8, width: u32) -> u128 {
    let len = u32::from(bits).min(width);
    if len == 0 {
        0
    } else {
        (u128::MAX << (128 - len)) >> (128 - width)
    }
}
