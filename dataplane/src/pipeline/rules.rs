//! The rule list, compiled: first match wins, else the default action.
//!
//! A query is not matched against every rule in turn. Names (exact,
//! suffixes, files) of all rules are in one [`NameTable`], looked up once
//! per label; every other selector indexes the rules by value. The
//! intersection is the bitset of rules whose selectors all hold; only
//! those are visited, in order, for their `not` tables (judged selector
//! by selector, [`Selector`]). Nothing here allocates per query.

use std::net::{IpAddr, SocketAddr};

use xdpdns_common::config::{
    Action, AnswerSpec, EdnsMatch, MAX_RULES, SelectorSpec, SoaSpec, SpoofRecord, TransportMatch,
};
use xdpdns_common::net::PrefixSet;

use super::names::{NameTable, Side};
use crate::dns::Query;

const WORDS: usize = MAX_RULES / 64;

/// A set of rules by index.
#[derive(Clone, Copy)]
struct Mask([u64; WORDS]);

impl Mask {
    const NONE: Mask = Mask([0; WORDS]);

    #[inline]
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
}

/// What the rules look at, beyond the name.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub ip: IpAddr,
    pub local: SocketAddr,
    pub tcp: bool,
    /// The message's length.
    pub size: usize,
}

/// A `not` table's selectors, judged one by one.
struct Selector {
    source: Option<PrefixSet>,
    listen: Box<[SocketAddr]>,
    has_names: bool,
    qtypes: Box<[u16]>,
    qclass: Option<u16>,
    opcode: Option<u8>,
    rd: Option<bool>,
    dnssec_ok: Option<bool>,
    edns: Option<EdnsMatch>,
    size: Option<(u16, u16)>,
    transport: Option<TransportMatch>,
}

impl Selector {
    fn new(s: &SelectorSpec) -> Selector {
        Selector {
            source: (!s.source.is_empty()).then(|| PrefixSet::new(&s.source)),
            listen: s.listen.clone().into_boxed_slice(),
            has_names: !s.names.is_empty(),
            qtypes: s.qtypes.clone().into_boxed_slice(),
            qclass: s.qclass,
            opcode: s.opcode,
            rd: s.rd,
            dnssec_ok: s.dnssec_ok,
            edns: s.edns,
            size: s.query_size,
            transport: s.transport,
        }
    }

    /// Whether every selector but the names holds.
    #[inline]
    fn holds(&self, q: &Query, f: &Facts) -> bool {
        if !self.qtypes.is_empty() && !self.qtypes.contains(&q.qtype) {
            return false;
        }
        if self.opcode.is_some_and(|o| o != q.opcode)
            || self.qclass.is_some_and(|c| c != q.qclass)
            || self.rd.is_some_and(|rd| rd != q.rd)
            || self
                .dnssec_ok
                .is_some_and(|d| d != q.edns.is_some_and(|e| e.dnssec_ok))
        {
            return false;
        }
        if let Some(t) = self.transport
            && (t == TransportMatch::Tcp) != f.tcp
        {
            return false;
        }
        if let Some(e) = self.edns {
            let ok = match (e, q.edns) {
                (EdnsMatch::Absent, e) => e.is_none(),
                (EdnsMatch::Present, e) => e.is_some(),
                (EdnsMatch::Version(v), Some(e)) => e.version == v,
                (EdnsMatch::Version(_), None) => false,
            };
            if !ok {
                return false;
            }
        }
        if let Some((lo, hi)) = self.size
            && !(usize::from(lo)..=usize::from(hi)).contains(&f.size)
        {
            return false;
        }
        if !self.listen.is_empty() && !self.listen.contains(&f.local) {
            return false;
        }
        self.source.as_ref().is_none_or(|s| s.contains(f.ip))
    }
}

/// What a rule answers with locally, beyond its rcode.
pub struct Local {
    pub answers: Vec<SpoofRecord>,
    pub soa: Option<SoaSpec>,
    pub aa: bool,
    pub ra: bool,
}

impl Local {
    pub const PLAIN: &'static Local = &Local {
        answers: Vec::new(),
        soa: None,
        aa: false,
        ra: false,
    };
}

/// A rule: its selectors are in the indexes of [`Rules`]; its `not`
/// table is judged per candidate.
struct Rule {
    not: Option<Selector>,
    action: Action,
    /// A forwarding rule's pool, as an index into the forward spec's pools.
    pool: Option<u16>,
    local: Local,
}

/// Rules by the values of one query attribute: those without a selector
/// on it (`any`), and for each value named, the rules accepting it.
struct Attr<K> {
    any: Mask,
    /// Values named, scanned per query (kept apart from their masks so a
    /// scan touches a few cache lines).
    keys: Vec<K>,
    masks: Vec<Mask>,
}

impl<K: Copy + Ord> Attr<K> {
    /// From each rule's accepted values (`None`: no selector).
    fn new<'a>(
        specs: impl Iterator<Item = &'a SelectorSpec>,
        accepts: impl Fn(&SelectorSpec) -> Option<Vec<K>>,
    ) -> Self {
        let mut a = Attr {
            any: Mask::NONE,
            keys: Vec::new(),
            masks: Vec::new(),
        };
        for (i, s) in specs.enumerate() {
            match accepts(s) {
                None => a.any.set(i),
                Some(values) => {
                    for v in values {
                        match a.keys.iter().position(|k| *k == v) {
                            Some(at) => a.masks[at].set(i),
                            None => {
                                let mut m = Mask::NONE;
                                m.set(i);
                                a.keys.push(v);
                                a.masks.push(m);
                            }
                        }
                    }
                }
            }
        }
        // Sorted, for the binary search of qtypes.
        let mut order: Vec<usize> = (0..a.keys.len()).collect();
        order.sort_by_key(|i| a.keys[*i]);
        a.keys = order.iter().map(|i| a.keys[*i]).collect();
        a.masks = order.iter().map(|i| a.masks[*i]).collect();
        a
    }

    /// Narrows candidates `c` (the mask words in use) to the rules `key`
    /// may match (nothing to do when no rule has this selector); whether
    /// candidates remain.
    #[inline(always)]
    fn narrow(&self, c: &mut [u64], key: K) -> bool {
        if self.keys.is_empty() {
            return true;
        }
        let (any, named) = self.pick(key);
        narrow_by(c, any, named)
    }

    /// The rules `key` may match: (without a selector, naming `key`).
    #[inline]
    fn pick(&self, key: K) -> (&Mask, Option<&Mask>) {
        let at = self.keys.iter().position(|k| *k == key);
        (&self.any, at.map(|at| &self.masks[at]))
    }
}

/// The qtype index: qtypes below 256 (every common one) by direct lookup,
/// the others by binary search.
struct Qtypes {
    attr: Attr<u16>,
    /// `small[t]`: 1 + the index of qtype `t` in `attr.keys`, 0 if none.
    small: Box<[u16; 256]>,
}

impl Qtypes {
    fn new(attr: Attr<u16>) -> Qtypes {
        let mut small = Box::new([0u16; 256]);
        for (i, k) in attr.keys.iter().enumerate() {
            if *k < 256 {
                small[usize::from(*k)] = i as u16 + 1;
            }
        }
        Qtypes { attr, small }
    }

    #[inline(always)]
    fn narrow(&self, c: &mut [u64], qtype: u16) -> bool {
        if self.attr.keys.is_empty() {
            return c.iter().any(|w| *w != 0);
        }
        let at = match self.small.get(usize::from(qtype)) {
            Some(0) => None,
            Some(i) => Some(usize::from(*i) - 1),
            None => self.attr.keys.binary_search(&qtype).ok(),
        };
        narrow_by(c, &self.attr.any, at.map(|at| &self.attr.masks[at]))
    }
}

/// An address prefix as the source index compares it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Net {
    v6: bool,
    net: u128,
    mask: u128,
}

fn ip_bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

impl Net {
    fn of(p: &xdpdns_common::net::Prefix) -> Net {
        let (v6, bits) = ip_bits(p.addr());
        let width = if v6 { 128 } else { 32 };
        let len = u32::from(p.bits()).min(width);
        let mask = if len == 0 {
            0
        } else {
            (u128::MAX << (128 - len)) >> (128 - width)
        };
        Net {
            v6,
            net: bits & mask,
            mask,
        }
    }
}

/// Rules by client prefix, one flat list per family (a v4 entry is eight
/// bytes: a scan of dozens stays within a few cache lines).
struct Sources {
    any: Mask,
    v4: Vec<(u32, u32)>,
    v4_masks: Vec<Mask>,
    v6: Vec<(u128, u128)>,
    v6_masks: Vec<Mask>,
}

impl Sources {
    fn new(a: Attr<Net>) -> Sources {
        let mut s = Sources {
            any: a.any,
            v4: Vec::new(),
            v4_masks: Vec::new(),
            v6: Vec::new(),
            v6_masks: Vec::new(),
        };
        for (n, m) in a.keys.iter().zip(a.masks) {
            if n.v6 {
                s.v6.push((n.net, n.mask));
                s.v6_masks.push(m);
            } else {
                s.v4.push((n.net as u32, n.mask as u32));
                s.v4_masks.push(m);
            }
        }
        s
    }

    /// Narrows `c` to the rules whose source selector `ip` satisfies.
    #[inline(always)]
    fn narrow(&self, c: &mut [u64], ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                narrow_multi(c, &self.any, || {
                    self.v4
                        .iter()
                        .zip(&self.v4_masks)
                        .filter(move |((net, mask), _)| a & mask == *net)
                        .map(|(_, m)| m)
                })
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                narrow_multi(c, &self.any, || {
                    self.v6
                        .iter()
                        .zip(&self.v6_masks)
                        .filter(move |((net, mask), _)| a & mask == *net)
                        .map(|(_, m)| m)
                })
            }
        }
    }
}

/// `c &= any | named`, word by word; whether candidates remain.
#[inline(always)]
fn narrow_by(c: &mut [u64], any: &Mask, named: Option<&Mask>) -> bool {
    let mut left = 0;
    for (word, c) in c.iter_mut().enumerate() {
        *c &= any.0[word] | named.map_or(0, |m| m.0[word]);
        left |= *c;
    }
    left != 0
}

/// `c &= any | (the union of `matching`)`, where the matching entries are
/// found (once) only if a candidate has this selector; whether candidates
/// remain.
#[inline(always)]
fn narrow_multi<'m, I: Iterator<Item = &'m Mask>>(
    c: &mut [u64],
    any: &Mask,
    matching: impl FnOnce() -> I,
) -> bool {
    if c.iter().enumerate().all(|(word, c)| c & !any.0[word] == 0) {
        return c.iter().any(|w| *w != 0);
    }
    let mut by = [0u64; WORDS];
    let by = &mut by[..c.len()];
    by.copy_from_slice(&any.0[..c.len()]);
    for m in matching() {
        for (word, b) in by.iter_mut().enumerate() {
            *b |= m.0[word];
        }
    }
    let mut left = 0;
    for (c, b) in c.iter_mut().zip(by.iter()) {
        *c &= b;
        left |= *c;
    }
    left != 0
}

/// Compiled rules.
pub struct Rules {
    rules: Vec<Rule>,
    default: Action,
    names: NameTable,
    /// Rules without names in their selectors: candidates whatever the name.
    nameless: Mask,
    /// Per attribute, the rules a query's value of it may match; a query's
    /// candidates are their intersection, so only rules whose every
    /// selector holds are visited (then only `not` is left to judge).
    qtype: Qtypes,
    qclass: Attr<u16>,
    opcode: Attr<u8>,
    rd: Attr<bool>,
    dnssec_ok: Attr<bool>,
    tcp: Attr<bool>,
    listen: Attr<SocketAddr>,
    /// EDNS: `by` keys are `None` (absent) or the version; `present` takes
    /// any version.
    edns: Attr<Option<u8>>,
    edns_present: Mask,
    source: Sources,
    size: Attr<(u16, u16)>,
    /// Words of the masks in use.
    words: usize,
}

impl Rules {
    /// The rules of `spec` (at most [`MAX_RULES`]; the loader's check
    /// refuses more, and any beyond are ignored); forwarding rules' pools
    /// are looked up by name in `pools` (the forward spec's, in order).
    pub fn new(spec: &AnswerSpec, pools: &[&str]) -> Self {
        let specs = &spec.rules[..spec.rules.len().min(MAX_RULES)];
        let names = NameTable::new(specs.iter().enumerate().flat_map(|(i, r)| {
            let when = r.when.names.iter().map(move |n| (i as u16, Side::When, n));
            let not = r
                .not
                .iter()
                .flat_map(|s| s.names.iter())
                .map(move |n| (i as u16, Side::Not, n));
            when.chain(not)
        }));
        let mut nameless = Mask::NONE;
        let mut edns_present = Mask::NONE;
        for (i, r) in specs.iter().enumerate() {
            if r.when.names.is_empty() {
                nameless.set(i);
            }
            if r.when.edns == Some(EdnsMatch::Present) {
                edns_present.set(i);
            }
        }
        let when = || specs.iter().map(|r| &r.when);
        fn one<T>(v: Option<T>) -> Option<Vec<T>> {
            v.map(|v| vec![v])
        }
        fn list<T: Clone>(v: &[T]) -> Option<Vec<T>> {
            (!v.is_empty()).then(|| v.to_vec())
        }
        Rules {
            qtype: Qtypes::new(Attr::new(when(), |s| list(&s.qtypes))),
            qclass: Attr::new(when(), |s| one(s.qclass)),
            opcode: Attr::new(when(), |s| one(s.opcode)),
            rd: Attr::new(when(), |s| one(s.rd)),
            dnssec_ok: Attr::new(when(), |s| one(s.dnssec_ok)),
            tcp: Attr::new(when(), |s| {
                one(s.transport.map(|t| t == TransportMatch::Tcp))
            }),
            listen: Attr::new(when(), |s| list(&s.listen)),
            edns: Attr::new(when(), |s| match s.edns {
                None => None,
                Some(EdnsMatch::Absent) => Some(vec![None]),
                Some(EdnsMatch::Version(v)) => Some(vec![Some(v)]),
                // In `edns_present`, not under any key.
                Some(EdnsMatch::Present) => Some(Vec::new()),
            }),
            edns_present,
            source: Sources::new(Attr::new(when(), |s| {
                (!s.source.is_empty()).then(|| s.source.iter().map(Net::of).collect())
            })),
            size: Attr::new(when(), |s| one(s.query_size)),
            rules: specs
                .iter()
                .map(|r| Rule {
                    not: r.not.as_ref().map(Selector::new),
                    action: r.action,
                    pool: r
                        .pool
                        .as_deref()
                        .and_then(|n| pools.iter().position(|p| *p == n))
                        .map(|i| i as u16),
                    local: Local {
                        answers: r.answers.clone(),
                        soa: r.soa.clone(),
                        aa: r.aa,
                        ra: r.ra,
                    },
                })
                .collect(),
            default: spec.default,
            names,
            nameless,
            words: specs.len().div_ceil(64),
        }
    }

    /// The pool rule `rule` forwards to, if it names one.
    pub fn pool_of(&self, rule: usize) -> Option<u16> {
        self.rules.get(rule).and_then(|r| r.pool)
    }

    /// What rule `rule` answers with (plain for the default).
    pub fn local(&self, rule: usize) -> &Local {
        self.rules.get(rule).map_or(Local::PLAIN, |r| &r.local)
    }

    /// Number of rules plus one for the default.
    pub fn slots(&self) -> usize {
        self.rules.len() + 1
    }

    /// The matching rule's index (`rules.len()` for the default) and its action.
    #[inline]
    pub fn decide(&self, msg: &[u8], q: &Query, f: &Facts) -> (usize, Action) {
        let w = self.words;
        if w == 0 {
            return (0, self.default);
        }
        // The name's hits: few per query (a blocklist entry, a zone).
        let mut hits = [(0u16, Side::When); 8];
        let mut nhits = 0;
        let mut overflow = false;
        if q.qdcount > 0 && !self.names.is_empty() {
            self.names.lookup(q.qname(msg), |rule, side| {
                if nhits < hits.len() {
                    hits[nhits] = (rule, side);
                    nhits += 1;
                } else {
                    overflow = true;
                }
            });
        }
        if overflow {
            return self.decide_many(msg, q, f);
        }
        let hit_word = |word: usize, which: Side| {
            hits[..nhits]
                .iter()
                .filter(|(r, s)| *s == which && usize::from(*r) / 64 == word)
                .fold(0u64, |m, (r, _)| m | 1 << (r % 64))
        };
        self.decide_with(q, f, hit_word)
    }

    /// Narrows `c` by the query's EDNS; whether candidates remain.
    #[inline(always)]
    fn narrow_edns(&self, c: &mut [u64], q: &Query) -> bool {
        let present = q.edns.is_some();
        if self.edns.keys.is_empty() && self.edns_present.0[..c.len()].iter().all(|m| *m == 0) {
            return true;
        }
        let (any, named) = self.edns.pick(q.edns.map(|e| e.version));
        let mut left = 0;
        for (word, c) in c.iter_mut().enumerate() {
            let p = if present {
                self.edns_present.0[word]
            } else {
                0
            };
            *c &= any.0[word] | named.map_or(0, |m| m.0[word]) | p;
            left |= *c;
        }
        left != 0
    }

    /// Narrows `c` by the message size (ranges may overlap: all are
    /// scanned, once, if a candidate has a size selector).
    #[inline(always)]
    fn narrow_size(&self, c: &mut [u64], size: usize) -> bool {
        narrow_multi(c, &self.size.any, || {
            self.size
                .keys
                .iter()
                .zip(&self.size.masks)
                .filter(move |((lo, hi), _)| (usize::from(*lo)..=usize::from(*hi)).contains(&size))
                .map(|(_, m)| m)
        })
    }

    /// [`Rules::decide`] for a name that many rules select: its hits in
    /// whole masks.
    #[cold]
    #[inline(never)]
    fn decide_many(&self, msg: &[u8], q: &Query, f: &Facts) -> (usize, Action) {
        let (mut when, mut not) = (Mask::NONE, Mask::NONE);
        self.names.lookup(q.qname(msg), |rule, side| match side {
            Side::When => when.set(usize::from(rule)),
            Side::Not => not.set(usize::from(rule)),
        });
        self.decide_with(q, f, |word, which| match which {
            Side::When => when.0[word],
            Side::Not => not.0[word],
        })
    }

    /// The first rule whose selectors hold, given the name's hits by mask
    /// word and side.
    #[inline(always)]
    fn decide_with(
        &self,
        q: &Query,
        f: &Facts,
        hit_word: impl Fn(usize, Side) -> u64,
    ) -> (usize, Action) {
        let w = self.words;
        let mut c = [0u64; WORDS];
        let c = &mut c[..w];
        for (word, c) in c.iter_mut().enumerate() {
            *c = self.nameless.0[word] | hit_word(word, Side::When);
        }
        // Most selective first; each attribute looked up once for all
        // words, and only while candidates remain.
        let dnssec_ok = q.edns.is_some_and(|e| e.dnssec_ok);
        let left = self.qtype.narrow(c, q.qtype)
            && self.opcode.narrow(c, q.opcode)
            && self.qclass.narrow(c, q.qclass)
            && self.tcp.narrow(c, f.tcp)
            && self.rd.narrow(c, q.rd)
            && self.dnssec_ok.narrow(c, dnssec_ok)
            && self.listen.narrow(c, f.local)
            && self.narrow_edns(c, q)
            && self.narrow_size(c, f.size)
            && self.source.narrow(c, f.ip);
        if !left {
            return (self.rules.len(), self.default);
        }
        for (word, c) in c.iter_mut().enumerate() {
            while *c != 0 {
                let i = word * 64 + c.trailing_zeros() as usize;
                *c &= *c - 1;
                let rule = &self.rules[i];
                if let Some(n) = &rule.not
                    && (!n.has_names || hit_word(word, Side::Not) & 1 << (i % 64) != 0)
                    && n.holds(q, f)
                {
                    continue;
                }
                return (i, rule.action);
            }
        }
        (self.rules.len(), self.default)
    }
}

#[cfg(test)]
mod tests;
