//! The rule list, compiled: first match wins, else the default action.
//!
//! A query is not matched against every rule in turn. Names (exact,
//! suffixes, files) of all rules are in one [`NameTable`], looked up once
//! per label; every other selector indexes the rules by value
//! (`rules/index.rs`: precomputed rows, intersected). The
//! intersection is the bitset of rules whose selectors all hold; only
//! those are visited, in order, for their `not` tables (judged selector
//! by selector, [`Selector`]). Nothing here allocates per query.

use std::net::SocketAddr;

use xdpdns_common::config::{
    Action, AnswerSpec, EdnsMatch, MAX_RULES, SelectorSpec, SoaSpec, SpoofRecord, TransportMatch,
};
use xdpdns_common::net::PrefixSet;

use super::names::{NameTable, Side};
use crate::dns::Query;

use index::{Index, Mask, WORDS};

pub use index::Facts;

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

/// Compiled rules.
pub struct Rules {
    rules: Vec<Rule>,
    default: Action,
    names: NameTable,
    /// Rules without names in their selectors: candidates whatever the name.
    nameless: Mask,
    /// The other selectors.
    index: Index,
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
        for (i, r) in specs.iter().enumerate() {
            if r.when.names.is_empty() {
                nameless.set(i);
            }
        }
        let when: Vec<&SelectorSpec> = specs.iter().map(|r| &r.when).collect();
        Rules {
            index: Index::new(&when),
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
            self.names.lookup(q.qname(msg), &q.labels, |rule, side| {
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

    /// [`Rules::decide`] for a name that many rules select: its hits in
    /// whole masks.
    #[cold]
    #[inline(never)]
    fn decide_many(&self, msg: &[u8], q: &Query, f: &Facts) -> (usize, Action) {
        let (mut when, mut not) = (Mask::NONE, Mask::NONE);
        self.names
            .lookup(q.qname(msg), &q.labels, |rule, side| match side {
                Side::When => when.set(usize::from(rule)),
                Side::Not => not.set(usize::from(rule)),
            });
        self.decide_with(q, f, |word, which| match which {
            Side::When => when.0[word],
            Side::Not => not.0[word],
        })
    }

    /// The first rule whose selectors hold, given the name's hits by mask
    /// word and side: with the mask words rounded up to the index's row
    /// length, so the narrowing loops are unrolled.
    #[inline(always)]
    fn decide_with(
        &self,
        q: &Query,
        f: &Facts,
        hit_word: impl Fn(usize, Side) -> u64,
    ) -> (usize, Action) {
        match self.index.stride() {
            1 => self.decide_in::<1>(q, f, hit_word),
            2 => self.decide_in::<2>(q, f, hit_word),
            4 => self.decide_in::<4>(q, f, hit_word),
            8 => self.decide_in::<8>(q, f, hit_word),
            _ => self.decide_in::<WORDS>(q, f, hit_word),
        }
    }

    #[inline(always)]
    fn decide_in<const W: usize>(
        &self,
        q: &Query,
        f: &Facts,
        hit_word: impl Fn(usize, Side) -> u64,
    ) -> (usize, Action) {
        let mut c = [0u64; W];
        let mut any = 0;
        for (word, c) in c.iter_mut().enumerate() {
            *c = self.nameless.0[word] | hit_word(word, Side::When);
            any |= *c;
        }
        if any == 0 || !self.index.narrow(&mut c, q, f) {
            return (self.rules.len(), self.default);
        }
        // Only `not` is left to judge, in rule order.
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

mod index;
#[cfg(test)]
mod tests;
