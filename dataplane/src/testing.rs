//! Query frames and a forwarding set-up for benchmarks, allocation tests and
//! the end-to-end tests (built with the same helpers the unit tests use, and
//! checked with a checksum written independently of the one under test).

use std::net::{SocketAddr, UdpSocket};

use xdpdns_common::config::{
    Action, AnswerSpec, FailAction, NameEntry, Policy, RuleSpec, SelectorSpec,
};
use xdpdns_common::ipc::{BackendLive, BackendSpec, ForwardSpec, PoolSpec};

pub use crate::dns::testing::query;
pub use crate::frame::testing::{
    CLIENT_MAC, FrameSpec, Received, SERVER_MAC, build, receive, receive_from, reference_checksum,
};

use crate::engine::Engine;
use crate::forward::{ForwardFds, Forwarder};
use crate::pipeline::Pipeline;
use crate::shm::inflight::Table;

/// The next hop toward [`BACKEND`] in [`forward_spec`].
pub const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
/// The first backend of [`forward_spec`]; the next ones count up.
pub const BACKEND: &str = "192.0.2.10:53";
/// Our source address toward the backends.
pub const SOURCE: &str = "192.0.2.1";

/// `rules` (`n` suffix rules) and a default action.
pub fn answer_spec(rules: usize, default: Action) -> AnswerSpec {
    AnswerSpec {
        rules: (0..rules)
            .map(|i| RuleSpec::new(suffix(&format!("blocked{i}.example.")), Action::NxDomain))
            .collect(),
        default,
        edns_udp_size: 1232,
        acl: open_acl(),
        tally: None,
        min_ttl: 0,
        max_ttl: 0,
    }
}

/// A selector of one name and below.
pub fn suffix(name: &str) -> SelectorSpec {
    SelectorSpec {
        names: vec![NameEntry {
            wire: xdpdns_common::dns::name_to_wire(name).unwrap(),
            exact: false,
        }],
        ..SelectorSpec::default()
    }
}

/// A production-like rule set in the configuration's own words, for the
/// criterion benchmarks, `make bench` and the tests: 100 rules with mixed
/// selectors (suffixes, exact names, sources, qtypes, opcodes, flags, EDNS,
/// sizes, transports, `not`) — the first a 100 k-name `qname_file` at
/// `blocklist_path`, the last spoofing `spoof.example.` (A and AAAA) — none
/// of which matches `q….example.com.` type A from 192.0.2.0/24 or [`PEER`].
/// Returns the `[[rule]]` tables and the blocklist's text.
pub fn production_rules_toml(blocklist_path: &str) -> (String, String) {
    let mut blocklist = String::from("# 100 k names: = marks an exact name\n");
    for i in 0..100_000 {
        let exact = if i % 3 == 0 { "=" } else { "" };
        blocklist.push_str(&format!("{exact}ads{i}.tracker{}.example\n", i % 97));
    }
    let mut rules = format!("[[rule]]\nqname_file = \"{blocklist_path}\"\naction = \"nxdomain\"\n");
    for i in 1..99u32 {
        rules.push_str("[[rule]]\n");
        rules.push_str(&match i % 10 {
            0 => format!("qname_suffix = \"zone{i}.example.\"\n"),
            1 => format!("qname = \"host{i}.example.com.\"\n"),
            2 => format!("source = [\"198.51.{i}.0/24\"]\n"),
            3 => format!("qtype = \"TYPE{}\"\n", 1000 + i),
            4 => format!("opcode = \"update\"\nqtype = \"TYPE{}\"\n", 2000 + i),
            5 => format!("rd = false\nsource = [\"203.0.113.{i}/32\"]\n"),
            6 => format!("edns = 1\nqtype = \"TYPE{}\"\n", 3000 + i),
            7 => format!("query_size = [{}, {}]\n", 1000 + i * 4, 1003 + i * 4),
            8 => format!("transport = \"tcp\"\nqtype = \"TYPE{}\"\n", 4000 + i),
            _ => format!("qtype = \"TXT\"\nqname_suffix = \"txt{i}.example.\"\n"),
        });
        if i % 7 == 0 {
            rules.push_str("not = { qtype = \"A\" }\n");
        }
        rules.push_str("action = \"refused\"\n");
    }
    rules.push_str(
        "[[rule]]\nqname = \"spoof.example.\"\naction = \"spoof\"\n\
         answers = [\"A 192.0.2.99\", \"AAAA 2001:db8::99\"]\nttl = 60\n",
    );
    (rules, blocklist)
}

/// [`production_rules_toml`] compiled as the loader compiles it, with
/// `default` as the default action.
pub fn production_rules(default: Action) -> AnswerSpec {
    let path = "/etc/xdpdns/blocklist.txt";
    let (rules, blocklist) = production_rules_toml(path);
    let text =
        format!("[xdp]\ninterface = \"eth0\"\n[[listen]]\naddress = \"192.0.2.1:53\"\n{rules}");
    let read = |p: &std::path::Path| {
        if p == std::path::Path::new(path) {
            Ok(blocklist.clone())
        } else {
            Err("no such file".to_string())
        }
    };
    let config = xdpdns_common::config::Config::from_toml_with(&text, &read)
        .expect("the production rule set is valid");
    let mut spec = config.live.answer_spec();
    spec.default = default;
    spec.acl = open_acl();
    spec
}

/// An engine answering locally under [`production_rules`].
pub fn production_engine() -> Engine {
    Engine::new(
        Pipeline::new(&production_rules(Action::Refused), None),
        None,
    )
}

/// A client on the kernel path, inside the default ACL.
pub const PEER: crate::pipeline::Peer = crate::pipeline::Peer {
    ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)),
    transport: crate::pipeline::Transport::Udp,
    local: std::net::SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
        53,
    ),
};

/// An ACL that lets everyone in.
pub fn open_acl() -> xdpdns_common::config::Acl {
    xdpdns_common::config::Acl {
        allow: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        action: xdpdns_common::config::AclAction::Drop,
    }
}

/// `backends` AF_XDP backends, all up with a known MAC, in one pool.
pub fn forward_spec(backends: usize) -> ForwardSpec {
    let first: SocketAddr = BACKEND.parse().unwrap();
    ForwardSpec {
        backends: (0..backends)
            .map(|i| {
                let mut address = first;
                if let std::net::IpAddr::V4(v4) = first.ip() {
                    let mut o = v4.octets();
                    o[3] += i as u8;
                    address.set_ip(o.into());
                }
                BackendSpec {
                    tag: 100 + i as u16,
                    address,
                    source: SOURCE.parse().unwrap(),
                    xsk: true,
                    weight: 1,
                    pool: 0,
                }
            })
            .collect(),
        pools: vec![PoolSpec {
            name: "default".into(),
            policy: Policy::RoundRobin,
            members: (0..backends as u16).collect(),
            cache: true,
        }],
        default_pool: 0,
        timeout_ms: 1000,
        timeout_action: FailAction::ServFail,
        all_down_action: FailAction::ServFail,
        port_base: 30000,
        ports: 1024,
        backend_sockets: 2,
        steered: Vec::new(),
        frame_size: 2048,
        mtu: 1500,
        max_in_flight: 4096,
        regions: 2,
        local_mac: SERVER_MAC,
        live: vec![
            BackendLive {
                up: true,
                mac: Some(BACKEND_MAC),
            };
            backends
        ],
        cache: None,
    }
}

/// An engine answering locally with `rules` rules (REFUSED by default).
pub fn local_engine(rules: usize) -> Engine {
    Engine::new(
        Pipeline::new(&answer_spec(rules, Action::Refused), None),
        None,
    )
}

/// An engine of queue 0 forwarding to one AF_XDP backend, over an anonymous
/// in-flight table (the production code path, without a loader).
pub fn forwarding_engine(rules: usize) -> Engine {
    forwarding_engine_with(answer_spec(rules, Action::Forward), forward_spec(1), None)
}

/// The TTL bounds of [`cached_forwarding_engine`]: the defaults.
pub const CACHE_TTLS: xdpdns_common::config::CacheTtls = xdpdns_common::config::CacheTtls {
    min: 0,
    max: 86_400,
    negative: 3_600,
    servfail: 5,
    stale: 30,
};

/// [`forwarding_engine`] with a packet cache of 1,024 entries in anonymous
/// shared memory (a second engine may share it: `shared`).
pub fn cached_forwarding_engine(
    rules: usize,
    shared: Option<std::sync::Arc<crate::shm::cache::Cache>>,
) -> (Engine, std::sync::Arc<crate::shm::cache::Cache>) {
    let mut spec = forward_spec(1);
    spec.cache = Some(xdpdns_common::ipc::CacheSpec {
        slots: 1024,
        ttls: CACHE_TTLS,
        key: (7, 8),
    });
    let cache = shared.unwrap_or_else(|| {
        std::sync::Arc::new(crate::shm::cache::Cache::anonymous(1024, (7, 8)).expect("cache"))
    });
    let answer = answer_spec(rules, Action::Forward);
    (
        forwarding_engine_with(answer, spec, Some(cache.clone())),
        cache,
    )
}

/// [`production_rules`] forwarding what they do not answer, with a packet
/// cache (as [`cached_forwarding_engine`]).
pub fn production_cached_engine() -> Engine {
    let mut spec = forward_spec(1);
    spec.cache = Some(xdpdns_common::ipc::CacheSpec {
        slots: 1024,
        ttls: CACHE_TTLS,
        key: (7, 8),
    });
    let cache =
        std::sync::Arc::new(crate::shm::cache::Cache::anonymous(1024, (7, 8)).expect("cache"));
    forwarding_engine_with(production_rules(Action::Forward), spec, Some(cache))
}

/// An engine of queue 0 forwarding to one socket backend at `backend`
/// (loopback) over `sockets` sockets connected to it, over an anonymous
/// in-flight table: the socket path, without a loader.
pub fn socket_forwarding_engine(backend: SocketAddr, sockets: u32) -> Engine {
    let mut spec = forward_spec(1);
    spec.backends[0].address = backend;
    spec.backends[0].source = backend.ip();
    spec.backends[0].xsk = false;
    spec.live[0].mac = None;
    spec.backend_sockets = sockets;
    forwarding_engine_with(answer_spec(0, Action::Forward), spec, None)
}

/// An engine of queue 0 forwarding to one socket backend at `backend`
/// (on 127.0.0.1) over one unconnected pool socket on 127.0.0.1, its
/// replies steered to a receiving socket — without the loader's sk_lookup
/// program: the receiver sits on 127.0.0.2 at the pool socket's port, where
/// the backend is to send its replies (the returned address), so that
/// IP_ORIGDSTADDR reports the pool port as it does for a steered reply.
pub fn steered_forwarding_engine(backend: SocketAddr) -> (Engine, SocketAddr) {
    let mut spec = forward_spec(1);
    spec.backends[0].address = backend;
    spec.backends[0].source = backend.ip();
    spec.backends[0].xsk = false;
    spec.live[0].mac = None;
    spec.backend_sockets = 1;
    spec.steered = vec![false];
    let pool = UdpSocket::bind("127.0.0.1:0").expect("loopback socket");
    let at = SocketAddr::from(([127, 0, 0, 2], pool.local_addr().expect("address").port()));
    let rx = UdpSocket::bind(at).expect("a receiver on 127.0.0.2");
    nix::sys::socket::setsockopt(&rx, nix::sys::socket::sockopt::Ipv4OrigDstAddr, &true)
        .expect("IP_RECVORIGDSTADDR");
    let fds = ForwardFds {
        table: None,
        cache: None,
        backends: vec![vec![pool.into()]],
        steered: vec![rx.into()],
    };
    (
        forwarder_engine(answer_spec(0, Action::Forward), spec, fds, None),
        at,
    )
}

fn forwarding_engine_with(
    answer: AnswerSpec,
    spec: ForwardSpec,
    cache: Option<std::sync::Arc<crate::shm::cache::Cache>>,
) -> Engine {
    // The first backend's sockets: connected to it if it is a socket
    // backend; an AF_XDP backend with a MAC never uses them.
    let first = &spec.backends[0];
    let socks = (0..spec.backend_sockets)
        .map(|_| {
            if first.xsk {
                UdpSocket::bind("127.0.0.1:0").expect("loopback socket")
            } else {
                let s = UdpSocket::bind((first.address.ip(), 0)).expect("loopback socket");
                s.connect(first.address).expect("connect");
                s
            }
            .into()
        })
        .collect();
    let fds = ForwardFds {
        table: None,
        cache: None,
        backends: vec![socks],
        steered: Vec::new(),
    };
    forwarder_engine(answer, spec, fds, cache)
}

fn forwarder_engine(
    answer: AnswerSpec,
    spec: ForwardSpec,
    fds: ForwardFds,
    cache: Option<std::sync::Arc<crate::shm::cache::Cache>>,
) -> Engine {
    let table = Table::anonymous(spec.regions, spec.max_in_flight).expect("anonymous table");
    let alloc = table.allocator(0);
    let mut f = Forwarder::with_table(0, spec.clone(), fds, table, alloc).expect("forwarder");
    f.set_cache(cache);
    f.set_listen(&[
        "192.0.2.1:53".parse().expect("address"),
        "[2001:db8::1]:53".parse().expect("address"),
    ]);
    Engine::new(Pipeline::new(&answer, Some(&spec)), Some(f))
}

/// The backend's reply to a forwarded query frame: addresses turned round,
/// QR set, NOERROR, nothing else changed.
pub fn backend_reply(forwarded: &[u8]) -> Vec<u8> {
    backend_reply_with(forwarded, |_| {})
}

/// [`backend_reply`] with its DNS payload changed by `edit` first.
pub fn backend_reply_with(forwarded: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let got = receive_from(forwarded, SERVER_MAC, BACKEND_MAC);
    let mut payload = got.payload;
    payload[2] |= 0x80;
    edit(&mut payload);
    let spec = FrameSpec {
        src_mac: BACKEND_MAC,
        dst_mac: SERVER_MAC,
        src: got.dst,
        dst: got.src,
        vlan: None,
        zero_udp_checksum: false,
    };
    build(&spec, &payload)
}

/// [`turn_round`] with an answer: one A record (TTL 300) appended to the
/// reply (a query without OPT: its payload ends with the question), the
/// IPv4 and UDP lengths and the IPv4 checksum fixed. Without allocating.
pub fn turn_round_with_answer(fwd: &[u8], out: &mut [u8]) -> usize {
    const RR: [u8; 16] = [0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 192, 0, 2, 80];
    let n = turn_round(fwd, out);
    out[n..n + RR.len()].copy_from_slice(&RR);
    out[42 + 7] = 1;
    let ip_len = u16::from_be_bytes([out[16], out[17]]) + RR.len() as u16;
    out[16..18].copy_from_slice(&ip_len.to_be_bytes());
    let udp_len = u16::from_be_bytes([out[38], out[39]]) + RR.len() as u16;
    out[38..40].copy_from_slice(&udp_len.to_be_bytes());
    out[24..26].copy_from_slice(&[0, 0]);
    let sum: u32 = out[14..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    out[24..26].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    n + RR.len()
}

/// The backend's reply to a forwarded IPv4 frame, made in `out` without
/// allocating, the cheapest valid way: MACs, addresses and ports swapped
/// (the IPv4 header checksum does not change), QR set, UDP checksum 0 (none,
/// allowed over IPv4). Returns its length.
pub fn turn_round(fwd: &[u8], out: &mut [u8]) -> usize {
    let out = &mut out[..fwd.len()];
    out.copy_from_slice(fwd);
    out[..6].copy_from_slice(&fwd[6..12]);
    out[6..12].copy_from_slice(&fwd[..6]);
    out[26..30].copy_from_slice(&fwd[30..34]);
    out[30..34].copy_from_slice(&fwd[26..30]);
    out[34..36].copy_from_slice(&fwd[36..38]);
    out[36..38].copy_from_slice(&fwd[34..36]);
    out[40..42].copy_from_slice(&[0, 0]);
    out[44] |= 0x80;
    fwd.len()
}

/// A deterministic xorshift generator for randomized tests: each call
/// gives a number below its argument (which must not be 0).
pub fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |below| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    }
}

/// [`production_cached_engine`] with the answer to `plain` (a query
/// without OPT, for [`build`]'s IPv4 frame) in its cache: the query
/// forwarded and the backend's reply relayed once, so that asking it again
/// is a hit.
pub fn warm_cached_engine(plain: &[u8]) -> Engine {
    struct NoEmit;
    impl crate::forward::Emit for NoEmit {
        fn kernel(&mut self, _: SocketAddr, _: SocketAddr, _: &[u8]) -> bool {
            false
        }
        fn frame(&mut self, _: &crate::frame::Headers, _: &[u8]) -> bool {
            false
        }
    }
    let mut cached = production_cached_engine();
    let frame = build(&FrameSpec::v4(), plain);
    let mut fbuf = vec![0u8; 2048];
    let mut reply = vec![0u8; 2048];
    fbuf[..frame.len()].copy_from_slice(&frame);
    let mut warm = xdpdns_common::stats::DataplaneCounters::new();
    if let crate::xsk::Fate::Transmit { head, len } =
        cached.frame(&mut fbuf, 0, frame.len(), &mut warm, &mut NoEmit)
    {
        let n = turn_round_with_answer(&fbuf[head..head + len], &mut reply);
        cached.frame(&mut reply, 0, n, &mut warm, &mut NoEmit);
    }
    assert_eq!(warm.cache.inserts, 1, "the cache is warm");
    cached
}
