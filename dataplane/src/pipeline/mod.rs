//! The one packet pipeline. Whatever brought a query — an AF_XDP frame, a
//! kernel-socket datagram, a TCP message — [`Pipeline::decide`] decides its
//! fate: answered in place (by a rule, or from the shared packet cache),
//! forwarded to a chosen backend, or dropped with a counted reason; the
//! answers of forwarded queries go into the cache through
//! [`Pipeline::remember`] (or the forwarder). Transports only move bytes
//! and carry the verdict out; when forwarding then fails (no slot, a
//! timeout), [`Pipeline::fail`] answers with the same answer writer as
//! every local answer.

pub mod backends;
mod names;
pub mod policy;
pub mod rules;

#[cfg(test)]
mod tests;

use xdpdns_common::config::{AclAction, Action, AnswerSpec, FailAction, RuleSpec, rule_map};
use xdpdns_common::dns::Rcode;
use xdpdns_common::ipc::ForwardSpec;
use xdpdns_common::net::PrefixSet;
use xdpdns_common::stats::{DataplaneCounters, DropReason};

use std::sync::Arc;

use crate::dns::{self, OPCODE_QUERY, Query};
use crate::shm::cache::{Cache, Miss, Variant};
use backends::Backends;
use rules::Rules;

/// Where a query came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// An AF_XDP frame: the XDP program applied the ACL already.
    Xsk,
    /// A kernel-path UDP socket.
    Udp,
    Tcp,
}

/// Who asked, how, and at which of our addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub ip: std::net::IpAddr,
    pub transport: Transport,
    /// The listen address the query came to.
    pub local: std::net::SocketAddr,
}

/// What becomes of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An answer of this many bytes was written over the query.
    Answer(usize),
    /// Send it to this backend (an index into the forwarding spec); its
    /// answer goes into the packet cache under this variant, if any.
    Forward {
        backend: u16,
        query: Query,
        cache: Option<Variant>,
    },
    /// Send nothing; counted under this reason.
    Drop(DropReason),
}

/// Rules, answer settings and backends: everything a verdict depends on.
pub struct Pipeline {
    /// Clients allowed (kernel path and TCP; XDP enforces it for frames).
    acl: PrefixSet,
    acl_action: AclAction,
    rules: Rules,
    /// Queries per rule (the last slot is the default action).
    hits: Box<[u64]>,
    /// Each rule's fingerprint, to find it again in a new spec.
    rule_ids: Vec<u64>,
    udp_size: u16,
    backends: Option<Backends>,
    /// The response side: TTL bounds for forwarded answers.
    ttl_clamp: dns::TtlClamp,
    /// The shared packet cache, once mapped, and how it is used.
    cache: Option<Arc<Cache>>,
    cache_use: Option<CacheUse>,
}

/// How forwarded queries use the packet cache: the spec's TTLs and, per
/// pool, whether its answers are cached.
struct CacheUse {
    ttls: xdpdns_common::config::CacheTtls,
    stale_ms: u64,
    pools: Vec<bool>,
    default_pool: u16,
}

impl Pipeline {
    pub fn new(answer: &AnswerSpec, forward: Option<&ForwardSpec>) -> Pipeline {
        let pool_names: Vec<&str> = forward
            .map(|f| f.pools.iter().map(|p| p.name.as_str()).collect())
            .unwrap_or_default();
        let rules = Rules::new(answer, &pool_names);
        Pipeline {
            acl: PrefixSet::new(&answer.acl.allow),
            acl_action: answer.acl.action,
            hits: vec![0; rules.slots()].into_boxed_slice(),
            rules,
            rule_ids: answer.rules.iter().map(RuleSpec::fingerprint).collect(),
            udp_size: answer.edns_udp_size,
            backends: forward.map(Backends::new),
            ttl_clamp: dns::TtlClamp {
                min: answer.min_ttl,
                max: answer.max_ttl,
            },
            cache: None,
            cache_use: forward.and_then(|f| {
                f.cache.map(|c| CacheUse {
                    ttls: c.ttls,
                    stale_ms: u64::from(c.ttls.stale) * 1000,
                    pools: f.pools.iter().map(|p| p.cache).collect(),
                    default_pool: f.default_pool,
                })
            }),
        }
    }

    /// Stores a backend's answer `msg` to a query forwarded with `variant`
    /// (its question `question`) in the packet cache, if there is one
    /// (transports whose forwarder has no cache of its own: TCP).
    pub fn remember(
        &self,
        variant: Option<Variant>,
        question: &[u8],
        msg: &[u8],
        c: &mut DataplaneCounters,
    ) {
        if let (Some(v), Some(cache), Some(u)) =
            (variant, self.cache.as_deref(), self.cache_use.as_ref())
        {
            cache.store_answer(&u.ttls, v, question, msg, &mut c.cache);
        }
    }

    /// Answers forwarded queries from `cache` too (None: not at all).
    pub fn set_cache(&mut self, cache: Option<Arc<Cache>>) {
        self.cache = cache;
    }

    /// The pipeline after a reconfiguration: a rule kept (the same rule,
    /// wherever it moved) keeps its hits, as does the default action (the
    /// loader maps its totals the same way, with [`rule_map`]), and what is
    /// outstanding with kept backends stays counted.
    pub fn reconfigured(
        old: &Pipeline,
        answer: &AnswerSpec,
        forward: Option<&ForwardSpec>,
    ) -> Pipeline {
        let mut p = Pipeline::new(answer, forward);
        for (new, from) in rule_map(&old.rule_ids, &p.rule_ids).into_iter().enumerate() {
            if let Some(o) = from {
                p.hits[new] = old.hits.get(o).copied().unwrap_or(0);
            }
        }
        if let (Some(new), Some(old)) = (p.backends.as_mut(), old.backends.as_ref()) {
            new.take_over(old);
        }
        p.cache = old.cache.clone();
        p
    }

    /// Decides about the DNS message `buf[..len]` from `peer`; `buf` is
    /// the room an answer may use.
    #[inline]
    pub fn decide(
        &mut self,
        buf: &mut [u8],
        len: usize,
        peer: Peer,
        c: &mut DataplaneCounters,
    ) -> Verdict {
        let Some(msg) = buf.get(..len) else {
            return Verdict::Drop(DropReason::DnsTruncated);
        };
        let denied = peer.transport != Transport::Xsk && !self.acl.contains(peer.ip);
        if denied && self.acl_action == AclAction::Drop {
            return Verdict::Drop(DropReason::AclDenied);
        }
        let q = match dns::parse_query(msg) {
            Ok(q) => q,
            Err(reason) => return Verdict::Drop(reason),
        };
        if denied {
            c.acl_refused += 1;
            return self.answer(buf, &q, Rcode::Refused);
        }
        // What the RFCs require before any answer (RFC 1035 §4.1.1, RFC
        // 6891 §6.1.1, RFC 9619, RFC 7873 §5.4, RFC 8906 §3.1.3): FORMERR for
        // a malformed query, NOTIMP for an opcode nobody behind us takes.
        // With backends every opcode is theirs, as a transparent frontend's.
        if let Some(reason) = q.problem {
            c.error_answer(reason);
            return self.answer(buf, &q, Rcode::FormErr);
        }
        let forwards = self.backends.is_some();
        if q.opcode != OPCODE_QUERY && !forwards {
            c.error_answer(DropReason::DnsOpcode);
            return self.answer(buf, &q, Rcode::NotImp);
        }
        if q.opcode == OPCODE_QUERY && q.qdcount == 0 && !(forwards && q.cookie) {
            c.error_answer(DropReason::DnsQdcount);
            return self.answer(buf, &q, Rcode::FormErr);
        }
        let facts = rules::Facts {
            ip: peer.ip,
            local: peer.local,
            tcp: peer.transport == Transport::Tcp,
            size: len,
        };
        let (rule, action) = self.rules.decide(msg, &q, &facts);
        if action.rcode().is_some() && q.edns.is_some_and(|e| e.version > 0) {
            // Answered here: BADVERS (the answer writer sets it).
            self.hits[rule] += 1;
            c.error_answer(DropReason::DnsBadVersion);
            return self.answer(buf, &q, Rcode::NoError);
        }
        self.hits[rule] += 1;
        match action {
            Action::Forward => {
                let pool = self.rules.pool_of(rule);
                self.forward(buf, q, pool, peer.transport, c)
            }
            Action::Drop => Verdict::Drop(DropReason::RuleDrop),
            other => match other.rcode() {
                Some(rcode) => {
                    let local = self.rules.local(rule);
                    let extra = dns::Extra {
                        answers: &local.answers,
                        soa: local.soa.as_ref(),
                        aa: local.aa,
                        ra: local.ra,
                        tc: other == Action::Tc,
                        max_len: client_limit(&q, peer.transport),
                    };
                    match dns::write_answer_with(buf, &q, rcode, self.udp_size, &extra) {
                        Ok(n) => Verdict::Answer(n),
                        Err(reason) => Verdict::Drop(reason),
                    }
                }
                None => Verdict::Drop(DropReason::RuleDrop),
            },
        }
    }

    /// Answers from the packet cache, or picks a backend; with the whole
    /// pool down, an expired answer still in the cache (`stale_ttl`) or
    /// the pool's failure action is the verdict.
    fn forward(
        &mut self,
        buf: &mut [u8],
        q: Query,
        pool: Option<u16>,
        transport: Transport,
        c: &mut DataplaneCounters,
    ) -> Verdict {
        let variant = self.cache_variant(&q, pool, c);
        let room = buf.len().min(client_limit(&q, transport));
        // The clock only for the cache: plain forwarding pays nothing.
        let now_ms = crate::shm::cache_clock_ms;
        if let (Some(v), Some(cache)) = (variant, self.cache.as_deref()) {
            match cache.lookup(buf, &q, v, room, now_ms(), 0) {
                Ok(hit) => {
                    c.cache.hits += 1;
                    return Verdict::Answer(hit.len);
                }
                Err(Miss::Collision) => {
                    c.cache.collisions += 1;
                    c.cache.misses += 1;
                }
                Err(_) => c.cache.misses += 1,
            }
        }
        let Some(b) = self.backends.as_mut() else {
            // A rule forwards, but no backend is configured.
            return self.fail(buf, &q, FailAction::Refused);
        };
        let picked = match pool {
            Some(p) => b.pick_in(p, q.qname(buf)),
            None => b.pick(q.qname(buf)),
        };
        match picked {
            Some(backend) => Verdict::Forward {
                backend,
                query: q,
                cache: variant,
            },
            None => {
                c.forward.pool_down += 1;
                let action = b.all_down_action();
                let stale_ms = self.cache_use.as_ref().map_or(0, |u| u.stale_ms);
                if let (Some(v), Some(cache), true) = (variant, self.cache.as_deref(), stale_ms > 0)
                    && let Ok(hit) = cache.lookup(buf, &q, v, room, now_ms(), stale_ms)
                {
                    c.cache.hits += 1;
                    c.cache.stale += u64::from(hit.stale);
                    return Verdict::Answer(hit.len);
                }
                self.fail(buf, &q, action)
            }
        }
    }

    /// The cache variant of a query forwarded to `pool` (None: the default
    /// pool), if its answer may come from or go into the cache: not with
    /// an ECS or COOKIE option (counted), not for a pool with `cache =
    /// false`, not without a cache.
    fn cache_variant(
        &self,
        q: &Query,
        pool: Option<u16>,
        c: &mut DataplaneCounters,
    ) -> Option<Variant> {
        let u = self.cache_use.as_ref()?;
        self.cache.as_ref()?;
        let pool = pool.unwrap_or(u.default_pool);
        if !u.pools.get(usize::from(pool)).copied().unwrap_or(false) || q.qdcount != 1 {
            return None;
        }
        if q.ecs || q.cookie {
            c.cache.bypassed += 1;
            return None;
        }
        Some(Variant::of(q, pool))
    }

    /// The answer (or silence) for a query that could not be forwarded:
    /// `action` written over the query in `buf`.
    pub fn fail(&self, buf: &mut [u8], q: &Query, action: FailAction) -> Verdict {
        match action.rcode() {
            Some(rcode) => self.answer(buf, q, rcode),
            None => Verdict::Drop(DropReason::FailDrop),
        }
    }

    fn answer(&self, buf: &mut [u8], q: &Query, rcode: Rcode) -> Verdict {
        match dns::write_answer(buf, q, rcode, self.udp_size) {
            Ok(n) => Verdict::Answer(n),
            Err(reason) => Verdict::Drop(reason),
        }
    }

    /// Backends configured (0 without forwarding).
    pub fn backend_count(&self) -> usize {
        self.backends.as_ref().map_or(0, Backends::len)
    }

    pub fn backends(&mut self) -> Option<&mut Backends> {
        self.backends.as_mut()
    }

    /// What forwarded answers' TTLs are clamped to, on every transport.
    pub fn ttl_clamp(&self) -> dns::TtlClamp {
        self.ttl_clamp
    }

    /// UDP payload size advertised in our OPT records.
    pub fn udp_size(&self) -> u16 {
        self.udp_size
    }

    /// Queries per rule since the rules last changed; the last slot is the default.
    pub fn rule_hits(&self) -> &[u64] {
        &self.hits
    }
}

/// The largest answer a client takes: 512 bytes over UDP without EDNS, its
/// advertised size (at least 512) with it, a TCP message's 65,535.
fn client_limit(q: &Query, transport: Transport) -> usize {
    match (transport, q.edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (_, Some(e)) => usize::from(e.udp_size.max(512)),
        (_, None) => 512,
    }
}
