//! Layouts of the BPF maps, shared with `bpf/xdpdns.bpf.c` through
//! `bpf/xdpdns_abi.h`. A test below parses that header and checks every value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::net::Prefix;

/// Name of the XSKMAP (queue id -> AF_XDP socket).
pub const MAP_XSKS: &str = "xsks";
/// Name of the IPv4 destination hash map.
pub const MAP_DEST_V4: &str = "dest_v4";
/// Name of the IPv6 destination hash map.
pub const MAP_DEST_V6: &str = "dest_v6";
/// Name of the per-CPU outcome counters.
pub const MAP_STATS: &str = "stats";
/// Name of the one-entry array holding the loader's fingerprint.
pub const MAP_META: &str = "meta";
/// Names of the ACL tries: `[family][slot]`, v4 first.
pub const MAP_ACL: [[&str; 2]; 2] = [["acl_v4_0", "acl_v4_1"], ["acl_v6_0", "acl_v6_1"]];
/// Name of the ACL's fast path ([`AclFast`], entry [`AclFast::entry`]).
pub const MAP_ACL_FAST: &str = "acl_fast";
/// Name of the one-entry array of live settings ([`Settings`]).
pub const MAP_SETTINGS: &str = "settings";
/// Names of the backend maps (replies are redirected only from these).
pub const MAP_BACKENDS_V4: &str = "backends_v4";
pub const MAP_BACKENDS_V6: &str = "backends_v6";
/// Name of the per-listen, per-CPU counters.
pub const MAP_LISTEN_STATS: &str = "listen_stats";
/// Names of the per-client policy tries (exempt, blocked): `[family][slot]`,
/// flipped with the ACL's slot.
pub const MAP_POLICY: [[&str; 2]; 2] = [
    ["policy_v4_0", "policy_v4_1"],
    ["policy_v6_0", "policy_v6_1"],
];
/// Name of the two-entry array of rate-limit parameters ([`Limits`]).
pub const MAP_LIMITS: &str = "limits";
/// Names of the per-client-prefix rate state (LRU hashes).
pub const MAP_RATE_V4: &str = "rate_v4";
pub const MAP_RATE_V6: &str = "rate_v6";
/// Name of the per-CPU hit counters of blocks.
pub const MAP_BLOCK_HITS: &str = "block_hits";
/// Blocks with a hit counter of their own.
pub const MAX_BLOCK_HITS: u32 = 8192;
/// Client prefixes the rate state tracks at once, per family.
pub const RATE_ENTRIES: u32 = 65536;
/// Policy trie values; the longest matching prefix decides.
pub const POLICY_EXEMPT: u32 = 1;
pub const POLICY_BLOCK: u32 = 2;
/// Blocked for TCP to listen addresses too.
pub const POLICY_BLOCK_TCP: u32 = 3;
/// Or-ed into a block's value: its UDP queries answered REFUSED, or TC=1,
/// by the program (dropped where XDP_TX does not reach the peer).
pub const POLICY_ANSWER_REFUSED: u32 = 16;
pub const POLICY_ANSWER_TC: u32 = 32;

/// Rate-limit parameters as the program reads them (`struct xdpdns_limits`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// One query per this many ns on average, per client prefix.
    pub interval_ns: u64,
    /// How far ahead of that a prefix may run (its burst, in ns).
    pub tolerance_ns: u64,
    pub v4_prefix: u32,
    pub v6_prefix: u32,
    /// [`Limits::ON`], [`Limits::DRY_RUN`].
    pub flags: u32,
    /// [`Limits::DROP`], [`Limits::REFUSED`], [`Limits::TC`].
    pub action: u32,
    /// With [`Limits::DROP`]: every `slip`th limited query answered TC=1 (0: none).
    pub slip: u32,
    pub reserved: u32,
}

impl Limits {
    pub const ON: u32 = 1;
    pub const DRY_RUN: u32 = 2;
    pub const DROP: u32 = 0;
    pub const REFUSED: u32 = 1;
    pub const TC: u32 = 2;

    /// `qps` queries a second with bursts of `burst`, per prefix; over it,
    /// `action` (with `slip` for [`Limits::DROP`]).
    pub fn new(
        qps: u32,
        burst: u32,
        v4_prefix: u8,
        v6_prefix: u8,
        action: u32,
        slip: u32,
        dry_run: bool,
    ) -> Limits {
        let interval_ns = 1_000_000_000 / u64::from(qps.max(1));
        Limits {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(burst)),
            v4_prefix: u32::from(v4_prefix),
            v6_prefix: u32::from(v6_prefix),
            flags: Limits::ON | if dry_run { Limits::DRY_RUN } else { 0 },
            action,
            slip,
            reserved: 0,
        }
    }

    /// No limits; blocks still apply (dry run: they only count).
    pub fn off(dry_run: bool) -> Limits {
        Limits {
            v4_prefix: 32,
            v6_prefix: 128,
            flags: if dry_run { Limits::DRY_RUN } else { 0 },
            ..Limits::default()
        }
    }
}

#[cfg(feature = "aya")]
// SAFETY: repr(C), integers only, no padding (size asserted), any bit pattern valid.
unsafe impl aya::Pod for Limits {}
const _: () = assert!(std::mem::size_of::<Limits>() == 40);

/// Words of each [`AclFast`] bitmap: one bit per /16 of a family.
pub const ACL_FAST_WORDS: usize = 1024;

/// The ACL's fast path as the program reads it (`struct acl_fast`): for
/// each /16 of one family (an address's first 16 bits), whether the allow
/// list covers all of it (`all`), or some of it (`some`: the trie decides).
/// Neither: denied without walking the trie. Filled with the trie of the
/// same slot, before the slot is made active.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AclFast {
    pub all: [u64; ACL_FAST_WORDS],
    pub some: [u64; ACL_FAST_WORDS],
}

impl AclFast {
    /// The map entry of a slot's family.
    pub const fn entry(slot: usize, v6: bool) -> u32 {
        (slot as u32) * 2 + v6 as u32
    }

    /// The fast path of the allow list `allow`'s prefixes of one family
    /// (`v6`); the others are left out.
    pub fn new(allow: &[Prefix], v6: bool) -> Box<AclFast> {
        let mut f = Box::new(AclFast {
            all: [0; ACL_FAST_WORDS],
            some: [0; ACL_FAST_WORDS],
        });
        for p in allow {
            let top = match p.addr() {
                IpAddr::V4(a) if !v6 => u32::from(a) >> 16,
                IpAddr::V6(a) if v6 => u32::from(a.segments()[0]),
                _ => continue,
            };
            if p.bits() > 16 {
                set(&mut f.some, top);
                continue;
            }
            let span = 1u32 << (16 - p.bits());
            let first = top & !(span - 1);
            for b in first..first + span {
                set(&mut f.all, b);
            }
        }
        f
    }

    /// What the program decides for an address whose first 16 bits are
    /// `top`: `Some(allowed)`, or `None` where the trie decides.
    pub fn verdict(&self, top: u16) -> Option<bool> {
        let (w, bit) = (usize::from(top >> 6), 1u64 << (top & 63));
        if self.all[w] & bit != 0 {
            Some(true)
        } else if self.some[w] & bit != 0 {
            None
        } else {
            Some(false)
        }
    }
}

fn set(words: &mut [u64; ACL_FAST_WORDS], block: u32) {
    words[(block >> 6) as usize % ACL_FAST_WORDS] |= 1u64 << (block & 63);
}

#[cfg(feature = "aya")]
// SAFETY: repr(C), integers only, no padding (size asserted), any bit pattern valid.
unsafe impl aya::Pod for AclFast {}
const _: () = assert!(std::mem::size_of::<AclFast>() == 16384);

/// Name of the program in the object.
pub const PROGRAM_NAME: &str = "xdpdns";
/// Name of the read-only global holding the largest frame AF_XDP can take.
pub const GLOBAL_MAX_FRAME_LEN: &str = "max_frame_len";
/// Names of the read-only globals holding the forwarding port range.
pub const GLOBAL_FWD_PORT_LO: &str = "fwd_port_lo";
pub const GLOBAL_FWD_PORTS: &str = "fwd_ports";

/// Kernel constant `XDP_PACKET_HEADROOM`: copy-mode frames start this far into a chunk.
pub const XDP_PACKET_HEADROOM: u32 = 256;
/// Capacity of each destination map.
pub const MAX_DESTINATIONS: u32 = 4096;
/// Listen addresses the per-listen counters cover (and the most there may be).
pub const MAX_LISTEN: u32 = 256;
/// Prefixes per ACL trie; backends per backend map.
pub const MAX_ACL: u32 = 4096;
pub const MAX_BACKENDS: u32 = 4096;
/// Destination map values: the kind in the low 16 bits, for a listen
/// address its index (in the configuration's order) above.
pub const DEST_LISTEN: u32 = 1;
pub const DEST_FORWARD: u32 = 2;

/// A listen address's destination value.
pub const fn dest_listen(index: u16) -> u32 {
    DEST_LISTEN | ((index as u32) << 16)
}

/// The live settings word.
pub struct Settings;

impl Settings {
    /// The `_1` ACL tries are active.
    pub const ACL_SLOT: u32 = 1;
    /// Queries from outside the ACL are answered REFUSED (else dropped).
    pub const ACL_REFUSED: u32 = 2;
    /// Queries' UDP checksums are verified before redirection.
    pub const VERIFY_CSUM: u32 = 4;
    /// XDP_TX does not reach the wire here (a veth): REFUSED for clients
    /// outside the ACL comes from the kernel path instead.
    pub const NO_TX: u32 = 8;
    /// Limits, exempt or blocked prefixes exist: the program looks them up.
    pub const POLICE: u32 = 16;
    /// Some block covers TCP: the program judges TCP to listen addresses.
    pub const TCP_BLOCKS: u32 = 32;
}

/// Per-listen counters, [`ListenStat::COUNT`] per listen index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ListenStat {
    Allowed = 0,
    AclDropped = 1,
    AclRefused = 2,
}

impl ListenStat {
    pub const COUNT: u32 = 3;
    pub const ALL: [ListenStat; 3] = [
        ListenStat::Allowed,
        ListenStat::AclDropped,
        ListenStat::AclRefused,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            ListenStat::Allowed => "allowed",
            ListenStat::AclDropped => "acl_dropped",
            ListenStat::AclRefused => "acl_refused",
        }
    }
}

/// Key of `dest_v4`: address and port in network byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DestV4Key {
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub pad: u16,
}

/// Key of `dest_v6`: address and port in network byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DestV6Key {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub pad: u16,
}

/// A destination map key of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestKey {
    V4(DestV4Key),
    V6(DestV6Key),
}

impl DestKey {
    pub fn new(addr: SocketAddr) -> Self {
        let port = addr.port().to_be_bytes();
        match addr {
            SocketAddr::V4(a) => DestKey::V4(DestV4Key {
                addr: a.ip().octets(),
                port,
                pad: 0,
            }),
            SocketAddr::V6(a) => DestKey::V6(DestV6Key {
                addr: a.ip().octets(),
                port,
                pad: 0,
            }),
        }
    }

    pub fn socket_addr(&self) -> SocketAddr {
        match self {
            DestKey::V4(k) => {
                SocketAddr::from((Ipv4Addr::from(k.addr), u16::from_be_bytes(k.port)))
            }
            DestKey::V6(k) => {
                SocketAddr::from((Ipv6Addr::from(k.addr), u16::from_be_bytes(k.port)))
            }
        }
    }
}

#[cfg(feature = "aya")]
// SAFETY: repr(C), only integer arrays, no padding (size asserted below), any bit pattern valid.
unsafe impl aya::Pod for DestV4Key {}
#[cfg(feature = "aya")]
// SAFETY: as for DestV4Key.
unsafe impl aya::Pod for DestV6Key {}

const _: () = assert!(std::mem::size_of::<DestV4Key>() == 8);
const _: () = assert!(std::mem::size_of::<DestV6Key>() == 20);

/// Outcomes the XDP program counts, one slot each in `stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum XdpOutcome {
    Redirect = 0,
    NoSocket = 1,
    TooLarge = 2,
    OtherDest = 3,
    NotIp = 4,
    NotUdp = 5,
    Fragment = 6,
    Ipv4Options = 7,
    Ipv6Ext = 8,
    Truncated = 9,
    AclDropped = 10,
    AclRefused = 11,
    NotBackend = 12,
    BadCsum = 13,
    Unverified = 14,
    AclKernel = 15,
    /// Redirected queries (also counted as `Redirect`) whose checksum field
    /// held just the pseudo-header sum: a local peer's TX offload.
    PartialCsum = 16,
    /// From a blocked prefix: dropped.
    Blocked = 17,
    /// Over the client prefix's rate: dropped.
    RateLimited = 18,
    /// Would have been blocked or limited, but the limits are a dry run
    /// (counted besides the outcome the query then had).
    DryRun = 19,
    /// Over the client prefix's rate: answered REFUSED or TC=1 in XDP.
    LimitAnswered = 20,
    BlockAnswered = 21,
}

impl XdpOutcome {
    pub const COUNT: usize = 22;
    pub const ALL: [XdpOutcome; Self::COUNT] = [
        XdpOutcome::Redirect,
        XdpOutcome::NoSocket,
        XdpOutcome::TooLarge,
        XdpOutcome::OtherDest,
        XdpOutcome::NotIp,
        XdpOutcome::NotUdp,
        XdpOutcome::Fragment,
        XdpOutcome::Ipv4Options,
        XdpOutcome::Ipv6Ext,
        XdpOutcome::Truncated,
        XdpOutcome::AclDropped,
        XdpOutcome::AclRefused,
        XdpOutcome::NotBackend,
        XdpOutcome::BadCsum,
        XdpOutcome::Unverified,
        XdpOutcome::AclKernel,
        XdpOutcome::PartialCsum,
        XdpOutcome::Blocked,
        XdpOutcome::RateLimited,
        XdpOutcome::DryRun,
        XdpOutcome::LimitAnswered,
        XdpOutcome::BlockAnswered,
    ];

    /// Stable lower-case name, used in status output and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            XdpOutcome::Redirect => "redirect",
            XdpOutcome::NoSocket => "no_socket",
            XdpOutcome::TooLarge => "too_large",
            XdpOutcome::OtherDest => "other_dest",
            XdpOutcome::NotIp => "not_ip",
            XdpOutcome::NotUdp => "not_udp",
            XdpOutcome::Fragment => "fragment",
            XdpOutcome::Ipv4Options => "ipv4_options",
            XdpOutcome::Ipv6Ext => "ipv6_ext",
            XdpOutcome::Truncated => "truncated",
            XdpOutcome::AclDropped => "acl_dropped",
            XdpOutcome::AclRefused => "acl_refused",
            XdpOutcome::NotBackend => "not_backend",
            XdpOutcome::BadCsum => "bad_csum",
            XdpOutcome::Unverified => "unverified",
            XdpOutcome::AclKernel => "acl_to_kernel",
            XdpOutcome::PartialCsum => "partial_csum",
            XdpOutcome::Blocked => "blocked",
            XdpOutcome::RateLimited => "rate_limited",
            XdpOutcome::DryRun => "dry_run",
            XdpOutcome::LimitAnswered => "limit_answered",
            XdpOutcome::BlockAnswered => "block_answered",
        }
    }

    /// The verdict the program returns for this outcome.
    pub const fn verdict(self) -> &'static str {
        match self {
            XdpOutcome::Redirect => "redirect",
            XdpOutcome::AclDropped
            | XdpOutcome::NotBackend
            | XdpOutcome::Blocked
            | XdpOutcome::RateLimited => "drop",
            XdpOutcome::AclRefused | XdpOutcome::LimitAnswered | XdpOutcome::BlockAnswered => "tx",
            XdpOutcome::PartialCsum => "subset_of_redirect",
            XdpOutcome::DryRun => "subset",
            _ => "pass",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../bpf/xdpdns_abi.h"));

    fn define(name: &str) -> String {
        HEADER
            .lines()
            .filter_map(|l| l.trim().strip_prefix("#define "))
            .find_map(|l| {
                let mut parts = l.split_whitespace();
                (parts.next() == Some(name)).then(|| parts.next().unwrap_or("").to_string())
            })
            .unwrap_or_else(|| panic!("{name} is not defined in xdpdns_abi.h"))
    }

    #[test]
    fn header_and_rust_agree() {
        assert_eq!(define("XDPDNS_MAP_XSKS"), MAP_XSKS);
        assert_eq!(define("XDPDNS_MAP_DEST_V4"), MAP_DEST_V4);
        assert_eq!(define("XDPDNS_MAP_DEST_V6"), MAP_DEST_V6);
        assert_eq!(define("XDPDNS_MAP_STATS"), MAP_STATS);
        assert_eq!(define("XDPDNS_MAP_META"), MAP_META);
        assert_eq!(
            define("XDPDNS_XDP_PACKET_HEADROOM"),
            XDP_PACKET_HEADROOM.to_string()
        );
        assert_eq!(
            define("XDPDNS_MAX_DESTINATIONS"),
            MAX_DESTINATIONS.to_string()
        );
        assert_eq!(define("XDPDNS_DEST_LISTEN"), DEST_LISTEN.to_string());
        assert_eq!(define("XDPDNS_DEST_FORWARD"), DEST_FORWARD.to_string());
        assert_eq!(define("XDPDNS_MAX_LISTEN"), MAX_LISTEN.to_string());
        assert_eq!(define("XDPDNS_MAX_ACL"), MAX_ACL.to_string());
        assert_eq!(define("XDPDNS_MAX_BACKENDS"), MAX_BACKENDS.to_string());
        assert_eq!(define("XDPDNS_MAP_SETTINGS"), MAP_SETTINGS);
        assert_eq!(define("XDPDNS_MAP_ACL_FAST"), MAP_ACL_FAST);
        assert_eq!(define("XDPDNS_ACL_FAST_WORDS"), ACL_FAST_WORDS.to_string());
        assert_eq!(define("XDPDNS_MAP_BACKENDS_V4"), MAP_BACKENDS_V4);
        assert_eq!(define("XDPDNS_MAP_BACKENDS_V6"), MAP_BACKENDS_V6);
        assert_eq!(define("XDPDNS_MAP_LISTEN_STATS"), MAP_LISTEN_STATS);
        assert_eq!(define("XDPDNS_MAP_LIMITS"), MAP_LIMITS);
        assert_eq!(define("XDPDNS_MAP_RATE_V4"), MAP_RATE_V4);
        assert_eq!(define("XDPDNS_MAP_RATE_V6"), MAP_RATE_V6);
        assert_eq!(define("XDPDNS_RATE_ENTRIES"), RATE_ENTRIES.to_string());
        assert_eq!(define("XDPDNS_MAP_BLOCK_HITS"), MAP_BLOCK_HITS);
        assert_eq!(define("XDPDNS_MAX_BLOCK_HITS"), MAX_BLOCK_HITS.to_string());
        assert_eq!(define("XDPDNS_POLICY_EXEMPT"), POLICY_EXEMPT.to_string());
        assert_eq!(define("XDPDNS_POLICY_BLOCK"), POLICY_BLOCK.to_string());
        assert_eq!(
            define("XDPDNS_POLICY_BLOCK_TCP"),
            POLICY_BLOCK_TCP.to_string()
        );
        assert_eq!(
            define("XDPDNS_POLICY_ANSWER_REFUSED"),
            POLICY_ANSWER_REFUSED.to_string()
        );
        assert_eq!(
            define("XDPDNS_POLICY_ANSWER_TC"),
            POLICY_ANSWER_TC.to_string()
        );
        assert_eq!(
            define("XDPDNS_SETTING_TCP_BLOCKS"),
            Settings::TCP_BLOCKS.to_string()
        );
        assert_eq!(define("XDPDNS_LIMIT_ON"), Limits::ON.to_string());
        assert_eq!(define("XDPDNS_LIMIT_DRY_RUN"), Limits::DRY_RUN.to_string());
        assert_eq!(define("XDPDNS_LIMIT_DROP"), Limits::DROP.to_string());
        assert_eq!(define("XDPDNS_LIMIT_REFUSED"), Limits::REFUSED.to_string());
        assert_eq!(define("XDPDNS_LIMIT_TC"), Limits::TC.to_string());
        for (f, fam) in ["V4", "V6"].iter().enumerate() {
            for (slot, name) in MAP_POLICY[f].iter().enumerate() {
                assert_eq!(define(&format!("XDPDNS_MAP_POLICY_{fam}_{slot}")), *name);
            }
        }
        for (f, fam) in ["V4", "V6"].iter().enumerate() {
            for (slot, name) in MAP_ACL[f].iter().enumerate() {
                assert_eq!(define(&format!("XDPDNS_MAP_ACL_{fam}_{slot}")), *name);
            }
        }
        assert_eq!(
            define("XDPDNS_SETTING_ACL_SLOT"),
            Settings::ACL_SLOT.to_string()
        );
        assert_eq!(
            define("XDPDNS_SETTING_ACL_REFUSED"),
            Settings::ACL_REFUSED.to_string()
        );
        assert_eq!(
            define("XDPDNS_SETTING_VERIFY_CSUM"),
            Settings::VERIFY_CSUM.to_string()
        );
        assert_eq!(define("XDPDNS_SETTING_NO_TX"), Settings::NO_TX.to_string());
        assert_eq!(
            define("XDPDNS_SETTING_POLICE"),
            Settings::POLICE.to_string()
        );
        assert_eq!(
            define("XDPDNS_LISTEN_STAT_COUNT"),
            ListenStat::COUNT.to_string()
        );
        for st in ListenStat::ALL {
            let name = format!("XDPDNS_LISTEN_STAT_{}", st.name().to_ascii_uppercase());
            assert_eq!(define(&name), (st as u32).to_string(), "{name}");
        }
        assert_eq!(define("XDPDNS_STAT_COUNT"), XdpOutcome::COUNT.to_string());
        for outcome in XdpOutcome::ALL {
            let name = format!("XDPDNS_STAT_{}", outcome.name().to_ascii_uppercase());
            assert_eq!(define(&name), (outcome as u32).to_string(), "{name}");
        }
    }

    fn prefixes(list: &[&str]) -> Vec<Prefix> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    /// The fast path agrees with the list itself wherever it decides, and
    /// leaves to the trie exactly the /16s a longer prefix lies in.
    #[test]
    fn acl_fast_path_decides_whole_sixteens_only() {
        let allow = prefixes(&[
            "10.0.0.0/8",
            "192.168.0.0/16",
            "192.0.2.0/25",
            "100.64.0.0/10",
            "fc00::/7",
            "2001:db8::2/128",
        ]);
        let v4 = AclFast::new(&allow, false);
        let top4 = |a: &str| (u32::from(a.parse::<Ipv4Addr>().unwrap()) >> 16) as u16;
        assert_eq!(v4.verdict(top4("10.0.0.0")), Some(true));
        assert_eq!(v4.verdict(top4("10.255.255.255")), Some(true));
        assert_eq!(v4.verdict(top4("11.0.0.0")), Some(false));
        assert_eq!(v4.verdict(top4("9.255.0.0")), Some(false));
        assert_eq!(v4.verdict(top4("192.168.1.1")), Some(true));
        assert_eq!(v4.verdict(top4("192.169.0.0")), Some(false));
        assert_eq!(
            v4.verdict(top4("192.0.2.200")),
            None,
            "the /25's /16: the trie"
        );
        assert_eq!(v4.verdict(top4("100.127.255.255")), Some(true));
        assert_eq!(v4.verdict(top4("100.128.0.0")), Some(false));
        let count = |w: &[u64]| w.iter().map(|w| w.count_ones()).sum::<u32>();
        assert_eq!(count(&v4.all), 256 + 1 + 64);
        assert_eq!(count(&v4.some), 1);
        // The v6 prefixes are not in the v4 map, and the reverse.
        let v6 = AclFast::new(&allow, true);
        assert_eq!(count(&v6.all), 512);
        assert_eq!(v6.verdict(0xfc00), Some(true));
        assert_eq!(v6.verdict(0xfdff), Some(true));
        assert_eq!(v6.verdict(0xfe00), Some(false));
        assert_eq!(v6.verdict(0x2001), None);
        assert_eq!(v6.verdict(0x0a00), Some(false));
    }

    #[test]
    fn acl_fast_path_of_everything_and_of_nothing() {
        let open = prefixes(&["0.0.0.0/0", "::/0"]);
        for v6 in [false, true] {
            let f = AclFast::new(&open, v6);
            assert!(f.all.iter().all(|w| *w == u64::MAX));
            assert!((0..=u16::MAX).all(|t| f.verdict(t) == Some(true)));
            let none = AclFast::new(&[], v6);
            assert!((0..=u16::MAX).all(|t| none.verdict(t) == Some(false)));
        }
        // Host prefixes: the trie decides their /16 and nothing else.
        let hosts = AclFast::new(&prefixes(&["127.0.0.1/32", "::1/128"]), false);
        assert_eq!(hosts.verdict(0x7f00), None);
        assert_eq!(hosts.verdict(0x0000), Some(false));
        assert_eq!(AclFast::entry(0, false), 0);
        assert_eq!(AclFast::entry(1, true), 3);
    }

    #[test]
    fn outcome_table_is_dense() {
        for (i, o) in XdpOutcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
    }

    #[test]
    fn keys_round_trip_in_network_order() {
        let a: SocketAddr = "192.0.2.1:53".parse().unwrap();
        let DestKey::V4(k) = DestKey::new(a) else {
            panic!()
        };
        assert_eq!(k.addr, [192, 0, 2, 1]);
        assert_eq!(k.port, [0, 53]);
        assert_eq!(DestKey::new(a).socket_addr(), a);
        let b: SocketAddr = "[2001:db8::1]:5353".parse().unwrap();
        assert_eq!(DestKey::new(b).socket_addr(), b);
    }
}
