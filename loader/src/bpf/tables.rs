//! The program's maps as the loader writes and reads them: which
//! destinations are ours ([`Steering`]: listen addresses, forwarding
//! sources, backends, the ACL and the live settings word) and the counters.
//! Every change keeps the program's view consistent at every moment: new
//! entries go in before stale ones go out, and the ACL (its tries and their
//! fast path, per /16) is filled into the inactive slot and then switched to
//! with one word.

use std::borrow::BorrowMut;
use std::net::{IpAddr, SocketAddr};

use aya::Pod;
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use xdpdns_common::config::{Abuse, Acl, AclAction, BlockAction, LimitAction};
use xdpdns_common::maps::{
    AclFast, DEST_FORWARD, DestKey, DestV4Key, DestV6Key, Limits, ListenStat, MAP_ACL,
    MAP_ACL_FAST, MAP_BACKENDS_V4, MAP_BACKENDS_V6, MAP_BLOCK_HITS, MAP_DEST_V4, MAP_DEST_V6,
    MAP_LIMITS, MAP_LISTEN_STATS, MAP_POLICY, MAP_SETTINGS, MAP_STATS, MAX_BLOCK_HITS, MAX_LISTEN,
    POLICY_ANSWER_REFUSED, POLICY_ANSWER_TC, POLICY_BLOCK, POLICY_BLOCK_TCP, POLICY_EXEMPT,
    Settings, dest_listen,
};
use xdpdns_common::net::Prefix;

use super::attach::BpfError;
use super::maps::XdpCounters;

pub(super) fn map_err(name: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |source| BpfError::Map {
        name,
        source: Box::new(source),
    }
}

/// What the program is told: which traffic is ours and how to judge it.
#[derive(Debug, Clone, PartialEq)]
pub struct Steering {
    /// Listen addresses, in order: a listen address's position is its index
    /// in the per-listen counters. Empty: nothing is redirected.
    pub listen: Vec<SocketAddr>,
    /// Our source addresses toward AF_XDP backends: replies to them on a
    /// forwarding port are redirected.
    pub forward_sources: Vec<IpAddr>,
    /// The backends (address, port) replies are accepted from, each with
    /// the source its queries leave from (the program's one-lookup check).
    pub backends: Vec<(SocketAddr, IpAddr)>,
    pub acl: Acl,
    /// Rate limits, exempt and blocked prefixes: swapped with the ACL.
    pub abuse: Abuse,
    pub verify_checksums: bool,
    /// XDP_TX cannot be relied on (a veth): see [`Settings::NO_TX`].
    pub no_tx: bool,
}

/// The maps, open.
pub struct Tables {
    dest_v4: HashMap<MapData, DestV4Key, u32>,
    dest_v6: HashMap<MapData, DestV6Key, u32>,
    /// Values: the source address, in network order.
    backends_v4: HashMap<MapData, DestV4Key, [u8; 4]>,
    backends_v6: HashMap<MapData, DestV6Key, [u8; 16]>,
    acl_v4: [LpmTrie<MapData, [u8; 4], u32>; 2],
    acl_v6: [LpmTrie<MapData, [u8; 16], u32>; 2],
    acl_fast: Array<MapData, AclFast>,
    policy_v4: [LpmTrie<MapData, [u8; 4], u32>; 2],
    policy_v6: [LpmTrie<MapData, [u8; 16], u32>; 2],
    limits: Array<MapData, Limits>,
    block_hits: PerCpuArray<MapData, u64>,
    /// Each block's index in `block_hits`, kept while the block exists.
    block_index: std::collections::HashMap<Prefix, u32>,
    settings: Array<MapData, u32>,
    stats: PerCpuArray<MapData, u64>,
    listen_stats: PerCpuArray<MapData, u64>,
}

impl Tables {
    /// Opens the maps `take` hands out by name.
    pub fn open(
        mut take: impl FnMut(&'static str) -> Result<Map, BpfError>,
    ) -> Result<Tables, BpfError> {
        macro_rules! typed {
            ($name:expr) => {{
                let name: &'static str = $name;
                take(name)?.try_into().map_err(map_err(name))?
            }};
        }
        Ok(Tables {
            dest_v4: typed!(MAP_DEST_V4),
            dest_v6: typed!(MAP_DEST_V6),
            backends_v4: typed!(MAP_BACKENDS_V4),
            backends_v6: typed!(MAP_BACKENDS_V6),
            acl_v4: [typed!(MAP_ACL[0][0]), typed!(MAP_ACL[0][1])],
            acl_v6: [typed!(MAP_ACL[1][0]), typed!(MAP_ACL[1][1])],
            acl_fast: typed!(MAP_ACL_FAST),
            policy_v4: [typed!(MAP_POLICY[0][0]), typed!(MAP_POLICY[0][1])],
            policy_v6: [typed!(MAP_POLICY[1][0]), typed!(MAP_POLICY[1][1])],
            limits: typed!(MAP_LIMITS),
            block_hits: typed!(MAP_BLOCK_HITS),
            block_index: std::collections::HashMap::new(),
            settings: typed!(MAP_SETTINGS),
            stats: typed!(MAP_STATS),
            listen_stats: typed!(MAP_LISTEN_STATS),
        })
    }

    /// Makes the maps say `s`. Destinations and backends: added before
    /// removed. The ACL: filled into the inactive tries, then made active
    /// together with the other settings in one word.
    pub fn steer(&mut self, s: &Steering) -> Result<(), BpfError> {
        let mut dest4 = Vec::new();
        let mut dest6 = Vec::new();
        for (i, a) in s.listen.iter().take(MAX_LISTEN as usize).enumerate() {
            match DestKey::new(*a) {
                DestKey::V4(k) => dest4.push((k, dest_listen(i as u16))),
                DestKey::V6(k) => dest6.push((k, dest_listen(i as u16))),
            }
        }
        for ip in &s.forward_sources {
            match DestKey::new(SocketAddr::new(*ip, 0)) {
                DestKey::V4(k) => dest4.push((k, DEST_FORWARD)),
                DestKey::V6(k) => dest6.push((k, DEST_FORWARD)),
            }
        }
        sync(&mut self.dest_v4, MAP_DEST_V4, &dest4)?;
        sync(&mut self.dest_v6, MAP_DEST_V6, &dest6)?;
        let mut back4 = Vec::new();
        let mut back6 = Vec::new();
        for (b, source) in &s.backends {
            match (DestKey::new(*b), source) {
                (DestKey::V4(k), IpAddr::V4(s)) => back4.push((k, s.octets())),
                (DestKey::V6(k), IpAddr::V6(s)) => back6.push((k, s.octets())),
                // A source of the other family (not made by the resolver):
                // no fast path, the program checks the destination map.
                (DestKey::V4(k), IpAddr::V6(_)) => back4.push((k, [0; 4])),
                (DestKey::V6(k), IpAddr::V4(_)) => back6.push((k, [0; 16])),
            }
        }
        sync(&mut self.backends_v4, MAP_BACKENDS_V4, &back4)?;
        sync(&mut self.backends_v6, MAP_BACKENDS_V6, &back6)?;

        let now = self.settings.get(&0, 0).map_err(map_err(MAP_SETTINGS))?;
        let next = usize::from(now & Settings::ACL_SLOT == 0);
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for p in &s.acl.allow {
            match p.addr() {
                IpAddr::V4(a) => v4.push(LpmKey::new(u32::from(p.bits()), a.octets())),
                IpAddr::V6(a) => v6.push(LpmKey::new(u32::from(p.bits()), a.octets())),
            }
        }
        fill(&mut self.acl_v4[next], MAP_ACL[0][next], &v4, |_| 1)?;
        fill(&mut self.acl_v6[next], MAP_ACL[1][next], &v6, |_| 1)?;
        for v6 in [false, true] {
            let fast = AclFast::new(&s.acl.allow, v6);
            self.acl_fast
                .set(AclFast::entry(next, v6), fast, 0)
                .map_err(map_err(MAP_ACL_FAST))?;
        }
        // Limits, exempt and blocked prefixes: into the same inactive slot.
        let (mut p4, mut p6) = (Vec::new(), Vec::new());
        let policy = |list: &[Prefix], value: u32, p4: &mut Vec<_>, p6: &mut Vec<_>| {
            for p in list {
                match p.addr() {
                    IpAddr::V4(a) => p4.push((LpmKey::new(u32::from(p.bits()), a.octets()), value)),
                    IpAddr::V6(a) => p6.push((LpmKey::new(u32::from(p.bits()), a.octets()), value)),
                }
            }
        };
        policy(&s.abuse.exempt, POLICY_EXEMPT, &mut p4, &mut p6);
        self.index_blocks(&s.abuse.blocks);
        let tcp: std::collections::HashSet<&Prefix> = s.abuse.tcp_blocks.iter().collect();
        let answered: std::collections::HashMap<&Prefix, BlockAction> = s
            .abuse
            .answered_blocks
            .iter()
            .map(|(p, a)| (p, *a))
            .collect();
        for p in &s.abuse.blocks {
            let kind = if tcp.contains(p) {
                POLICY_BLOCK_TCP
            } else {
                POLICY_BLOCK
            };
            let how = match answered.get(p) {
                Some(BlockAction::Refused) => POLICY_ANSWER_REFUSED,
                Some(BlockAction::Tc) => POLICY_ANSWER_TC,
                Some(BlockAction::Drop) | None => 0,
            };
            let value = kind | how | (self.block_index.get(p).copied().unwrap_or(0) << 8);
            policy(std::slice::from_ref(p), value, &mut p4, &mut p6);
        }
        let keys4: Vec<_> = p4.iter().map(|(k, _)| *k).collect();
        let keys6: Vec<_> = p6.iter().map(|(k, _)| *k).collect();
        fill(
            &mut self.policy_v4[next],
            MAP_POLICY[0][next],
            &keys4,
            |i| p4[i].1,
        )?;
        fill(
            &mut self.policy_v6[next],
            MAP_POLICY[1][next],
            &keys6,
            |i| p6[i].1,
        )?;
        let limits = match &s.abuse.limit {
            Some(l) => Limits::new(
                l.qps,
                l.burst,
                l.v4_prefix,
                l.v6_prefix,
                match l.action {
                    LimitAction::Drop => Limits::DROP,
                    LimitAction::Refused => Limits::REFUSED,
                    LimitAction::Tc => Limits::TC,
                },
                l.slip,
                s.abuse.dry_run,
            ),
            None => Limits::off(s.abuse.dry_run),
        };
        self.limits
            .set(next as u32, limits, 0)
            .map_err(map_err(MAP_LIMITS))?;
        let mut word = 0;
        if next == 1 {
            word |= Settings::ACL_SLOT;
        }
        if s.acl.action == AclAction::Refused {
            word |= Settings::ACL_REFUSED;
        }
        if s.verify_checksums {
            word |= Settings::VERIFY_CSUM;
        }
        if s.no_tx {
            word |= Settings::NO_TX;
        }
        if s.abuse.limit.is_some() || !s.abuse.blocks.is_empty() || !s.abuse.exempt.is_empty() {
            word |= Settings::POLICE;
        }
        if !s.abuse.tcp_blocks.is_empty() {
            word |= Settings::TCP_BLOCKS;
        }
        self.settings.set(0, word, 0).map_err(map_err(MAP_SETTINGS))
    }

    /// Gives every block in `blocks` a hit counter: kept ones keep theirs,
    /// new ones get a free index, zeroed; those gone free theirs. Index 0 is
    /// shared by whatever exceeds the array (never in practice: the policy
    /// tries hold fewer).
    fn index_blocks(&mut self, blocks: &[Prefix]) {
        let wanted: std::collections::HashSet<&Prefix> = blocks.iter().collect();
        self.block_index.retain(|p, _| wanted.contains(p));
        let ncpu = self.block_hits.get(&0, 0).map(|v| v.len()).unwrap_or(1);
        let mut taken: std::collections::HashSet<u32> =
            self.block_index.values().copied().collect();
        let mut next = 1;
        for p in blocks {
            if self.block_index.contains_key(p) {
                continue;
            }
            while next < MAX_BLOCK_HITS && taken.contains(&next) {
                next += 1;
            }
            if next == MAX_BLOCK_HITS {
                self.block_index.insert(*p, 0);
                continue;
            }
            if let Ok(zero) = aya::maps::PerCpuValues::try_from(vec![0u64; ncpu]) {
                let _ = self.block_hits.set(next, zero, 0);
            }
            taken.insert(next);
            self.block_index.insert(*p, next);
        }
    }

    /// Hits per block, summed over CPUs.
    pub fn block_hits(&self) -> std::collections::HashMap<Prefix, u64> {
        self.block_index
            .iter()
            .map(|(p, i)| {
                let n = self
                    .block_hits
                    .get(i, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (*p, n)
            })
            .collect()
    }

    /// The program's per-outcome counters, summed over CPUs.
    pub fn counters(&self) -> XdpCounters {
        XdpCounters::read(&self.stats)
    }

    /// The first `n` listen addresses' counters, by [`ListenStat`].
    pub fn listen_counters(&self, n: usize) -> Vec<[u64; ListenStat::COUNT as usize]> {
        (0..n.min(MAX_LISTEN as usize))
            .map(|i| {
                let mut c = [0u64; ListenStat::COUNT as usize];
                for st in ListenStat::ALL {
                    let slot = i as u32 * ListenStat::COUNT + st as u32;
                    c[st as usize] = self
                        .listen_stats
                        .get(&slot, 0)
                        .map(|per_cpu| per_cpu.iter().sum())
                        .unwrap_or(0);
                }
                c
            })
            .collect()
    }
}

/// Makes a hash map hold exactly `wanted` (values included): new and
/// changed entries first, then the stale ones go.
fn sync<T: BorrowMut<MapData>, K: Pod + PartialEq, V: Pod>(
    map: &mut HashMap<T, K, V>,
    name: &'static str,
    wanted: &[(K, V)],
) -> Result<(), BpfError> {
    for (k, v) in wanted {
        map.insert(k, *v, 0).map_err(map_err(name))?;
    }
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.iter().any(|(w, _)| w == k))
        .collect();
    for k in stale {
        map.remove(&k).map_err(map_err(name))?;
    }
    Ok(())
}

/// Makes an (inactive) trie hold exactly `prefixes`, the i-th with value `value(i)`.
fn fill<T: BorrowMut<MapData>, K: Pod>(
    trie: &mut LpmTrie<T, K, u32>,
    name: &'static str,
    prefixes: &[LpmKey<K>],
    value: impl Fn(usize) -> u32,
) -> Result<(), BpfError> {
    let old: Vec<LpmKey<K>> = trie.keys().filter_map(Result::ok).collect();
    for k in old {
        trie.remove(&k).map_err(map_err(name))?;
    }
    for (i, k) in prefixes.iter().enumerate() {
        trie.insert(k, value(i), 0).map_err(map_err(name))?;
    }
    Ok(())
}
