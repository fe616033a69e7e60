//! The instance's status: a snapshot of what the run loop's owners hold,
//! sent as JSON over the control socket, printed as a table by
//! `xdpdns status`, rendered for Prometheus by `metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use xdpdns_common::config::Live;
use xdpdns_common::ipc::workers::MetricsCounters;
use xdpdns_common::ipc::{BackendLive, ForwardSpec};
use xdpdns_common::maps::ListenStat;
use xdpdns_common::stats::{
    DataplaneCounters, DropReason, PathCounters, RingLevels, TcpCounters, XskKernelStats,
};

use crate::bpf::{SteerCounters, XdpCounters};
use crate::workers::queues::QueueState;
use crate::workers::supervisor::Phase;

/// What a snapshot is made of, borrowed from the run loop's owners.
pub struct Sources<'a> {
    pub instance: &'a str,
    pub interface: &'a str,
    pub ifindex: u32,
    /// (program id, attach mode, pin directory).
    pub program: (u32, Option<&'static str>, String),
    pub xdp: XdpCounters,
    pub uptime: Duration,
    pub config_path: &'a std::path::Path,
    pub live: &'a Live,
    pub queues: &'a BTreeMap<u32, QueueState>,
    /// Forwarding's spec and its backends' health, if forwarding is on.
    pub forwarding: Option<(&'a ForwardSpec, &'a [BackendLive])>,
    pub tcp: TcpStatus,
    /// What the TCP workers' pipelines counted (rule hits, backends).
    pub tcp_pipeline: Option<&'a DataplaneCounters>,
    /// What the metrics exporter served, if there is one.
    pub exporter: Option<MetricsCounters>,
    /// The XDP program's counters per listen address, by [`ListenStat`].
    pub listen_counters: Vec<[u64; ListenStat::COUNT as usize]>,
    /// What the socket-reply steering program did, if it runs.
    pub steering: Option<SteerCounters>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub instance: String,
    pub interface: String,
    pub ifindex: u32,
    /// native / generic, as the kernel reports it.
    pub xdp_mode: Option<String>,
    pub program_id: u32,
    pub pin_dir: String,
    pub uptime_secs: u64,
    /// Every queue has a registered dataplane.
    pub ready: bool,
    pub listen: Vec<String>,
    /// Whether the listen addresses are redirected to AF_XDP.
    pub redirect: bool,
    /// The file the running configuration came from.
    pub config_path: String,
    pub acl: AclStatus,
    pub queues: Vec<QueueStatus>,
    /// Queries per rule, in order; the last is the default action.
    pub rules: Vec<RuleStatus>,
    pub backends: Vec<BackendStatus>,
    pub tcp: TcpStatus,
    /// The metrics exporter's requests (when `[metrics]` is set).
    pub exporter: Option<MetricsCounters>,
    /// The XDP program's frames per outcome.
    pub xdp: BTreeMap<String, u64>,
    /// Socket backends' replies the sk_lookup program handed to a
    /// dataplane's receiving socket, dropped or left on the pool socket
    /// (when it runs).
    #[serde(default)]
    pub steering: Option<SteerCounters>,
    pub totals: Counters,
}

/// Who may query, and what the XDP program counted per listen address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AclStatus {
    pub allow: Vec<String>,
    /// drop / refused.
    pub action: String,
    /// The allow list admits every address of some family.
    pub open: bool,
    pub listen: Vec<ListenStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenStatus {
    pub address: String,
    pub allowed: u64,
    pub acl_dropped: u64,
    pub acl_refused: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: String,
    pub pool: String,
    pub xsk: bool,
    pub source: String,
    pub up: bool,
    pub mac: Option<String>,
    pub queries: u64,
    pub replies: u64,
    pub timeouts: u64,
    pub latency_avg_us: u64,
    pub latency_sum_us: u64,
    /// Counts per bucket of [`xdpdns_common::stats::LATENCY_BUCKETS_US`], plus overflow.
    pub latency_buckets: Vec<u64>,
}

/// DNS over TCP, summed over the TCP workers and their lives.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TcpStatus {
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Closed at once for `max_connections`, for `max_connections_per_client`.
    pub refused_total: u64,
    pub refused_client: u64,
    /// Closed at once: the client is outside the ACL.
    pub acl_denied: u64,
    pub idle_closed: u64,
    pub io_closed: u64,
    pub duration_closed: u64,
    pub query_limit_closed: u64,
    pub bad_framing: u64,
    pub queries: u64,
    pub answered: u64,
    /// Queries dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    pub backend_failures: u64,
    pub backend_connects: u64,
    pub backend_connect_errors: u64,
    pub backend_stray: u64,
    pub workers: Vec<WorkerStatus>,
}

/// A TCP worker or the metrics exporter.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub name: String,
    pub pid: Option<u32>,
    pub running: bool,
    pub restarts: u32,
    pub uptime_secs: Option<u64>,
    pub last_exit: Option<String>,
}

impl TcpStatus {
    pub fn from_counters(t: &TcpCounters, workers: Vec<WorkerStatus>) -> TcpStatus {
        let q: PathStatus = (&t.queries).into();
        TcpStatus {
            accepted: t.accepted,
            open: t.open,
            refused_total: t.refused_total,
            refused_client: t.refused_client,
            acl_denied: t.acl_denied,
            idle_closed: t.idle_closed,
            io_closed: t.io_closed,
            duration_closed: t.duration_closed,
            query_limit_closed: t.query_limit_closed,
            bad_framing: t.bad_framing,
            queries: q.received,
            answered: q.answered,
            dropped: q.dropped,
            backend_failures: t.backend_failures,
            backend_connects: t.backend_connects,
            backend_connect_errors: t.backend_connect_errors,
            backend_stray: t.backend_stray,
            workers,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleStatus {
    pub label: String,
    pub hits: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueStatus {
    pub queue: u32,
    pub phase: Phase,
    pub pid: Option<u32>,
    pub uptime_secs: Option<u64>,
    pub restarts: u32,
    /// copy / zero-copy.
    pub xsk_mode: Option<String>,
    pub registered: bool,
    /// Milliseconds since the current dataplane's socket entered the XSKMAP.
    pub registered_ms_ago: Option<u64>,
    pub last_exit: Option<String>,
    /// Dataplanes that did not die when killed (the queue then stays on
    /// the kernel path until `restart-queue`).
    #[serde(default)]
    pub unkillable: u32,
    pub counters: Counters,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathStatus {
    pub received: u64,
    pub answered: u64,
    pub dropped_total: u64,
    pub dropped: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Counters {
    pub xsk: PathStatus,
    pub kernel: PathStatus,
    pub tx_ring_short: u64,
    pub kicks: u64,
    pub kick_errors: u64,
    pub sleeps: u64,
    pub iterations: u64,
    pub kernel_send_errors: u64,
    /// Queries outside the ACL answered REFUSED by a dataplane (kernel path).
    pub acl_refused: u64,
    pub xsk_kernel: XskKernelStats,
    pub rings: RingLevels,
    pub forward: xdpdns_common::stats::ForwardCounters,
    /// The shared packet cache, as this queue (or all) used it.
    #[serde(default)]
    pub cache: xdpdns_common::stats::CacheCounters,
    /// Queries answered FORMERR, NOTIMP or BADVERS, by reason.
    #[serde(default)]
    pub error_answers: BTreeMap<String, u64>,
}

impl From<&PathCounters> for PathStatus {
    fn from(p: &PathCounters) -> Self {
        PathStatus {
            received: p.received,
            answered: p.answered,
            dropped_total: p.dropped_total(),
            dropped: DropReason::ALL
                .iter()
                .map(|r| (r.name().to_string(), p.dropped_for(*r)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

impl From<&DataplaneCounters> for Counters {
    fn from(c: &DataplaneCounters) -> Self {
        Counters {
            xsk: (&c.xsk).into(),
            kernel: (&c.kernel).into(),
            tx_ring_short: c.tx_ring_short,
            kicks: c.kicks,
            kick_errors: c.kick_errors,
            sleeps: c.sleeps,
            iterations: c.iterations,
            kernel_send_errors: c.kernel_send_errors,
            acl_refused: c.acl_refused,
            xsk_kernel: c.xsk_kernel.clone(),
            rings: c.rings,
            forward: c.forward.clone(),
            cache: c.cache.clone(),
            error_answers: DropReason::ALL
                .iter()
                .map(|r| (r.name().to_string(), c.error_answers_for(*r)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

/// One line of packet cache counters, for `status` and `cache stats`.
fn cache_line(c: &xdpdns_common::stats::CacheCounters) -> String {
    let looked = c.hits + c.misses;
    format!(
        "hits={} misses={} ({:.1}% hits) stale={} inserts={} evictions={} collisions={} bypassed={} uncacheable={} purged={}",
        c.hits,
        c.misses,
        if looked > 0 {
            c.hits as f64 * 100.0 / looked as f64
        } else {
            0.0
        },
        c.stale,
        c.inserts,
        c.evictions,
        c.collisions,
        c.bypassed,
        c.uncacheable,
        c.purged
    )
}

impl Status {
    pub fn collect(src: &Sources<'_>) -> Status {
        let queues: Vec<QueueStatus> = src
            .queues
            .iter()
            .map(|(queue, q)| QueueStatus {
                queue: *queue,
                phase: q.phase,
                pid: q.pid,
                uptime_secs: q
                    .started_at
                    .filter(|_| q.pid.is_some())
                    .map(|t| t.elapsed().as_secs()),
                restarts: q.restarts,
                xsk_mode: q
                    .zero_copy
                    .map(|z| if z { "zero-copy" } else { "copy" }.to_string()),
                registered: q.registered_at.is_some(),
                registered_ms_ago: q.registered_at.map(|t| t.elapsed().as_millis() as u64),
                last_exit: q.last_exit.clone(),
                unkillable: q.unkillable,
                counters: (&q.totals()).into(),
            })
            .collect();
        let mut totals = DataplaneCounters::new();
        for q in src.queues.values() {
            totals.accumulate(&q.totals());
        }
        if let Some(t) = src.tcp_pipeline {
            totals.accumulate(t);
        }
        // The in-flight gauge sums over queues.
        totals.forward.in_flight = src.queues.values().map(|q| q.live.forward.in_flight).sum();
        let backends = src
            .forwarding
            .map(|(spec, live)| {
                spec.backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let c = totals.backends.get(i).cloned().unwrap_or_default();
                        let l = live.get(i).copied();
                        BackendStatus {
                            address: b.address.to_string(),
                            pool: spec
                                .pools
                                .get(usize::from(b.pool))
                                .map(|p| p.name.clone())
                                .unwrap_or_default(),
                            xsk: b.xsk,
                            source: b.source.to_string(),
                            up: l.is_some_and(|l| l.up),
                            mac: l.and_then(|l| l.mac).map(|m| {
                                m.iter()
                                    .map(|x| format!("{x:02x}"))
                                    .collect::<Vec<_>>()
                                    .join(":")
                            }),
                            queries: c.queries,
                            replies: c.replies,
                            timeouts: c.timeouts,
                            latency_avg_us: c.latency_sum_us.checked_div(c.replies).unwrap_or(0),
                            latency_sum_us: c.latency_sum_us,
                            latency_buckets: c.latency.clone(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let answer = src.live.answer_spec();
        let mut labels: Vec<String> = src.live.rule.iter().map(|r| r.label()).collect();
        labels.push(format!("default,action={}", answer.default.name()));
        let rules = labels
            .into_iter()
            .enumerate()
            .map(|(i, label)| RuleStatus {
                label,
                hits: totals.rule_hits.get(i).copied().unwrap_or(0),
            })
            .collect();
        let (program_id, mode, pin_dir) = src.program.clone();
        let acl = &src.live.acl;
        let acl = AclStatus {
            allow: acl.allow.iter().map(|p| p.to_string()).collect(),
            action: acl.action.name().to_string(),
            open: acl.open_to_a_family(),
            listen: src
                .live
                .redirected()
                .iter()
                .zip(src.listen_counters.iter().chain(std::iter::repeat(&[0; 3])))
                .map(|(a, c)| ListenStatus {
                    address: a.to_string(),
                    allowed: c[ListenStat::Allowed as usize],
                    acl_dropped: c[ListenStat::AclDropped as usize],
                    acl_refused: c[ListenStat::AclRefused as usize],
                })
                .collect(),
        };
        Status {
            instance: src.instance.to_string(),
            interface: src.interface.to_string(),
            ifindex: src.ifindex,
            xdp_mode: mode.map(str::to_string),
            program_id,
            pin_dir,
            uptime_secs: src.uptime.as_secs(),
            ready: queues.iter().all(|q| q.registered),
            listen: src.live.listen.iter().map(|a| a.to_string()).collect(),
            redirect: src.live.xdp.redirect,
            config_path: src.config_path.display().to_string(),
            acl,
            queues,
            rules,
            backends,
            tcp: src.tcp.clone(),
            exporter: src.exporter,
            xdp: src
                .xdp
                .by_outcome
                .iter()
                .map(|(o, n)| (o.name().to_string(), *n))
                .collect(),
            steering: src.steering,
            totals: (&totals).into(),
        }
    }

    /// The packet cache's counters per queue and in total (`cache stats`).
    pub fn render_cache(&self) -> String {
        let mut s = String::new();
        for q in &self.queues {
            let _ = writeln!(s, "queue {}  {}", q.queue, cache_line(&q.counters.cache));
        }
        let _ = writeln!(s, "total    {}", cache_line(&self.totals.cache));
        s
    }

    /// The human-readable table.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "instance {}  interface {} (ifindex {})  XDP {} (program {})  up {}s  {}",
            self.instance,
            self.interface,
            self.ifindex,
            self.xdp_mode.as_deref().unwrap_or("?"),
            self.program_id,
            self.uptime_secs,
            if self.ready { "ready" } else { "NOT READY" }
        );
        let _ = writeln!(s, "listen   {}", self.listen.join(", "));
        let _ = writeln!(s, "pins     {}", self.pin_dir);
        let _ = writeln!(
            s,
            "acl      {} (outside: {}){}",
            self.acl.allow.join(", "),
            self.acl.action,
            if self.acl.open {
                "  OPEN TO EVERY ADDRESS"
            } else {
                ""
            }
        );
        for l in &self.acl.listen {
            let _ = writeln!(
                s,
                "         {} allowed={} acl_dropped={} acl_refused={}",
                l.address, l.allowed, l.acl_dropped, l.acl_refused
            );
        }
        let _ = writeln!(
            s,
            "\n{:>5} {:<12} {:>8} {:>7} {:>8} {:<9} {:>11} {:>11} {:>9} {:>9} {:>9} {:>6} {:>6} {:>6}",
            "queue",
            "state",
            "pid",
            "uptime",
            "restarts",
            "xsk",
            "xsk in",
            "xsk out",
            "xsk drop",
            "kern in",
            "kern out",
            "fill",
            "rx",
            "tx"
        );
        for q in &self.queues {
            let c = &q.counters;
            let _ = writeln!(
                s,
                "{:>5} {:<12} {:>8} {:>7} {:>8} {:<9} {:>11} {:>11} {:>9} {:>9} {:>9} {:>6} {:>6} {:>6}",
                q.queue,
                format!("{:?}", q.phase).to_lowercase(),
                q.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                q.uptime_secs
                    .map(|u| format!("{u}s"))
                    .unwrap_or_else(|| "-".into()),
                q.restarts,
                q.xsk_mode.as_deref().unwrap_or("-"),
                c.xsk.received,
                c.xsk.answered,
                c.xsk.dropped_total,
                c.kernel.received,
                c.kernel.answered,
                c.rings.fill,
                c.rings.rx,
                c.rings.tx,
            );
        }
        let t = &self.totals;
        let mut drops: BTreeMap<&str, u64> = BTreeMap::new();
        for (k, v) in t.xsk.dropped.iter().chain(&t.kernel.dropped) {
            *drops.entry(k).or_default() += v;
        }
        let _ = writeln!(
            s,
            "\ndrops    {}",
            if drops.is_empty() {
                "none".to_string()
            } else {
                drops
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        );
        let k = &t.xsk_kernel;
        let _ = writeln!(
            s,
            "kernel   rx_dropped={} rx_invalid={} tx_invalid={} rx_ring_full={} fill_empty={} tx_empty={}",
            k.rx_dropped,
            k.rx_invalid_descs,
            k.tx_invalid_descs,
            k.rx_ring_full,
            k.rx_fill_ring_empty_descs,
            k.tx_ring_empty_descs
        );
        let _ = writeln!(
            s,
            "xdp      {}",
            self.xdp
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        if let Some(t) = &self.steering {
            let _ = writeln!(
                s,
                "steering steered={} not_peer={} no_receiver={} refused={}",
                t.steered, t.not_peer, t.no_receiver, t.refused
            );
        }
        let _ = writeln!(
            s,
            "rules    {}",
            self.rules
                .iter()
                .map(|r| format!("[{}]={}", r.label, r.hits))
                .collect::<Vec<_>>()
                .join(" ")
        );
        for b in &self.backends {
            let _ = writeln!(
                s,
                "backend  {} pool {} {} {} mac {} queries={} replies={} timeouts={} avg={}us",
                b.address,
                b.pool,
                if b.xsk { "af_xdp" } else { "socket" },
                if b.up { "UP" } else { "DOWN" },
                b.mac.as_deref().unwrap_or("-"),
                b.queries,
                b.replies,
                b.timeouts,
                b.latency_avg_us
            );
        }
        if !self.backends.is_empty() {
            let f = &self.totals.forward;
            let _ = writeln!(
                s,
                "forward  in_flight={} evicted={} pool_down={} stray={} duplicate={} bad={} large={} send_errors={} steered={}",
                f.in_flight,
                f.evicted,
                f.pool_down,
                f.stray_replies,
                f.duplicate_replies,
                f.bad_replies,
                f.large_replies,
                f.send_errors,
                f.steered_replies
            );
            let _ = writeln!(s, "cache    {}", cache_line(&self.totals.cache));
        }
        let t = &self.tcp;
        let _ = writeln!(
            s,
            "tcp      open={} accepted={} queries={} answered={} refused={}+{} acl_denied={} closed idle={} io={} duration={} limit={} framing={} backend_failures={}",
            t.open,
            t.accepted,
            t.queries,
            t.answered,
            t.refused_total,
            t.refused_client,
            t.acl_denied,
            t.idle_closed,
            t.io_closed,
            t.duration_closed,
            t.query_limit_closed,
            t.bad_framing,
            t.backend_failures
        );
        for w in &t.workers {
            let _ = writeln!(
                s,
                "worker   {} {} pid {} restarts={}{}",
                w.name,
                if w.running { "running" } else { "DOWN" },
                w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                w.restarts,
                w.last_exit
                    .as_ref()
                    .map(|e| format!(" last exit: {e}"))
                    .unwrap_or_default()
            );
        }
        let exits: Vec<String> = self
            .queues
            .iter()
            .filter_map(|q| {
                q.last_exit
                    .as_ref()
                    .map(|e| format!("queue {}: {e}", q.queue))
            })
            .collect();
        for e in exits {
            let _ = writeln!(s, "last exit {e}");
        }
        s
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Instant;
    use xdpdns_common::config::Config;
    use xdpdns_common::ipc::{BackendSpec, PoolSpec};

    fn live() -> Live {
        Config::from_toml(
            "[xdp]\ninterface = \"eth0\"\n[[listen]]\naddress = \"192.0.2.1:53\"\n\
             [[rule]]\nqname_suffix = \"blocked.test.\"\naction = \"nxdomain\"\n\
             [[backend]]\naddress = \"192.0.2.10:53\"\n",
        )
        .unwrap()
        .live
    }

    fn queue(received: u64, replies: u64) -> QueueState {
        let mut q = QueueState::new();
        q.phase = Phase::Running;
        q.pid = Some(100);
        q.started_at = Some(Instant::now());
        q.registered_at = Some(Instant::now());
        q.zero_copy = Some(false);
        q.base.xsk.received = received;
        q.live.xsk.answered = received;
        q.live.xsk.drop(DropReason::DnsShort);
        q.live.rule_hits = vec![2, received - 2];
        q.live.size_backends(1);
        q.live.backends[0].replies = replies;
        q.live.backends[0].observe(300);
        q.live.forward.in_flight = 4;
        q.base.cache.hits = received / 2;
        q.live.cache.inserts = replies;
        q
    }

    fn forward() -> ForwardSpec {
        ForwardSpec {
            backends: vec![BackendSpec {
                tag: 0,
                address: "192.0.2.10:53".parse().unwrap(),
                source: "192.0.2.1".parse().unwrap(),
                xsk: true,
                weight: 1,
                pool: 0,
            }],
            pools: vec![PoolSpec {
                name: "default".into(),
                policy: Default::default(),
                members: vec![0],
                cache: true,
            }],
            default_pool: 0,
            timeout_ms: 1000,
            timeout_action: xdpdns_common::config::FailAction::Drop,
            all_down_action: xdpdns_common::config::FailAction::ServFail,
            port_base: 30000,
            ports: 1024,
            backend_sockets: 4,
            steered: Vec::new(),
            frame_size: 2048,
            mtu: 1500,
            max_in_flight: 64,
            regions: 2,
            local_mac: [2, 0, 0, 0, 0, 1],
            live: Vec::new(),
            cache: None,
        }
    }

    #[test]
    fn cache_stats_show_every_queue_and_the_total() {
        let t = snapshot().render_cache();
        assert!(t.contains("queue 0"), "{t}");
        assert!(t.contains("queue 1  hits=10 "), "{t}");
        assert!(t.contains("total    hits=15 "), "{t}");
    }

    pub(crate) fn snapshot() -> Status {
        let live = live();
        let queues: BTreeMap<u32, QueueState> = [(0, queue(10, 3)), (1, queue(20, 5))].into();
        let fwd = forward();
        let health = [BackendLive {
            up: true,
            mac: Some([2, 0, 0, 0, 0, 0x0b]),
        }];
        Status::collect(&Sources {
            instance: "t",
            interface: "veth0",
            ifindex: 7,
            program: (42, Some("native"), "/sys/fs/bpf/x/t".into()),
            xdp: XdpCounters::default(),
            steering: None,
            uptime: Duration::from_secs(9),
            config_path: std::path::Path::new("/etc/xdpdns/t.toml"),
            live: &live,
            queues: &queues,
            forwarding: Some((&fwd, &health)),
            tcp: TcpStatus::default(),
            tcp_pipeline: None,
            exporter: None,
            listen_counters: vec![[7, 2, 0]],
        })
    }

    #[test]
    fn a_snapshot_sums_queues_and_names_rules_and_backends() {
        let s = snapshot();
        assert!(s.ready);
        assert_eq!(s.queues.len(), 2);
        assert_eq!(s.totals.xsk.received, 30);
        assert_eq!(s.totals.xsk.dropped["dns_short"], 2);
        assert_eq!(s.totals.forward.in_flight, 8, "the gauge sums over queues");
        assert_eq!(s.rules.len(), 2);
        assert_eq!(s.rules[0].label, "suffix=blocked.test.,action=nxdomain");
        assert_eq!(s.rules[0].hits, 4);
        assert_eq!(s.rules[1].label, "default,action=forward");
        assert_eq!(s.rules[1].hits, 26);
        let b = &s.backends[0];
        assert_eq!((b.replies, b.up), (8, true));
        assert_eq!(b.mac.as_deref(), Some("02:00:00:00:00:0b"));
        assert_eq!(b.latency_avg_us, 600 / 8);
        assert_eq!(s.queues[0].xsk_mode.as_deref(), Some("copy"));
        assert_eq!(s.acl.action, "drop");
        assert!(!s.acl.open, "the default ACL is not open");
        assert_eq!(s.acl.listen.len(), 1);
        assert_eq!(s.acl.listen[0].address, "192.0.2.1:53");
        assert_eq!(
            (s.acl.listen[0].allowed, s.acl.listen[0].acl_dropped),
            (7, 2)
        );
        // It survives the control socket's JSON.
        let back: Status = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.totals.xsk.received, 30);
    }

    #[test]
    fn the_table_shows_queues_drops_rules_and_backends() {
        let t = snapshot().render();
        assert!(
            t.contains("instance t  interface veth0 (ifindex 7)  XDP native (program 42)"),
            "{t}"
        );
        assert!(t.contains("drops    dns_short=2"), "{t}");
        assert!(t.contains("[default,action=forward]=26"), "{t}");
        assert!(
            t.contains("backend  192.0.2.10:53 pool default af_xdp UP"),
            "{t}"
        );
        assert!(t.contains("in_flight=8"), "{t}");
        assert!(t.contains("192.0.2.1:53 allowed=7 acl_dropped=2"), "{t}");
    }
}
