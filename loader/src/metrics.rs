//! The Prometheus exposition (`[metrics] address`), rendered here with
//! prometheus-client from the same snapshot `xdpdns status` shows (so
//! counters are monotonic across worker restarts), and handed as a sealed
//! memfd to the unprivileged exporter that serves it over HTTP: the loader
//! parses no HTTP.

use std::os::fd::OwnedFd;

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::status::{Counters, Status};

type Labels = Vec<(String, String)>;

/// The exposition text in a sealed memfd, for the exporter: it can read
/// it, but neither it nor anyone else can change it.
pub fn snapshot(text: &str) -> nix::Result<OwnedFd> {
    let fd = memfd_create(
        c"xdpdns-metrics",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut written = 0;
    while written < text.len() {
        written += nix::unistd::write(&fd, &text.as_bytes()[written..])?;
    }
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(fd)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Counters in a family, set from absolute values of the snapshot.
struct CounterFamily(Family<Labels, Counter>);

impl CounterFamily {
    fn new(reg: &mut Registry, name: &str, help: &str) -> Self {
        let f = Family::<Labels, Counter>::default();
        reg.register(name, help, f.clone());
        CounterFamily(f)
    }
    fn set(&self, l: Labels, v: u64) {
        self.0.get_or_create(&l).inc_by(v);
    }
}

struct GaugeFamily(Family<Labels, Gauge>);

impl GaugeFamily {
    fn new(reg: &mut Registry, name: &str, help: &str) -> Self {
        let f = Family::<Labels, Gauge>::default();
        reg.register(name, help, f.clone());
        GaugeFamily(f)
    }
    fn set(&self, l: Labels, v: i64) {
        self.0.get_or_create(&l).set(v);
    }
}

/// The Prometheus text exposition of a status snapshot.
pub fn render(s: &Status) -> String {
    let mut reg = Registry::with_prefix("xdpdns");
    let xdp = CounterFamily::new(
        &mut reg,
        "xdp_frames",
        "Frames seen by the XDP program, by outcome",
    );
    let received = CounterFamily::new(
        &mut reg,
        "received",
        "Queries received, by queue and path (xsk, kernel)",
    );
    let answered = CounterFamily::new(&mut reg, "answered", "Answers sent, by queue and path");
    let dropped = CounterFamily::new(
        &mut reg,
        "dropped",
        "Queries dropped, by queue, path and reason",
    );
    let xsk_kernel = CounterFamily::new(
        &mut reg,
        "xsk_kernel_events",
        "The kernel's XDP_STATISTICS, by queue",
    );
    let tx_short = CounterFamily::new(
        &mut reg,
        "tx_ring_short",
        "Times answers waited for TX ring space",
    );
    let kicks = CounterFamily::new(&mut reg, "kicks", "TX wake-up system calls");
    let restarts = CounterFamily::new(
        &mut reg,
        "dataplane_restarts",
        "Dataplane restarts, by queue",
    );
    let unkillable = CounterFamily::new(
        &mut reg,
        "dataplane_unkillable",
        "Dataplanes that did not die when killed, by queue (the queue stays on the kernel path)",
    );
    let rules = CounterFamily::new(
        &mut reg,
        "rule_hits",
        "Queries per rule (since the rule list last changed)",
    );
    let up = GaugeFamily::new(
        &mut reg,
        "dataplane_up",
        "1 if the queue's AF_XDP socket is registered",
    );
    let kernel_only = GaugeFamily::new(
        &mut reg,
        "queue_kernel_only",
        "1 if the queue exhausted its restart budget and is served by the kernel path",
    );
    let rings = GaugeFamily::new(
        &mut reg,
        "ring_entries",
        "Ring occupancy, by queue and ring",
    );
    let ready = GaugeFamily::new(
        &mut reg,
        "ready",
        "1 when every queue is served over AF_XDP",
    );
    let uptime = GaugeFamily::new(
        &mut reg,
        "uptime_seconds",
        "Seconds since the loader started",
    );

    for (outcome, n) in &s.xdp {
        let verdict = xdpdns_common::maps::XdpOutcome::ALL
            .iter()
            .find(|o| o.name() == outcome)
            .map_or("pass", |o| o.verdict());
        xdp.set(labels(&[("outcome", outcome), ("verdict", verdict)]), *n);
    }
    if let Some(t) = &s.steering {
        let steer = CounterFamily::new(
            &mut reg,
            "reply_steering",
            "Socket backends' replies by what the sk_lookup program did: steered to the dataplane's receiving socket, dropped as not from the pool socket's backend (not_peer), or left on the pool socket (no_receiver, refused)",
        );
        for (outcome, n) in [
            ("steered", t.steered),
            ("not_peer", t.not_peer),
            ("no_receiver", t.no_receiver),
            ("refused", t.refused),
        ] {
            steer.set(labels(&[("outcome", outcome)]), n);
        }
    }
    let listen = CounterFamily::new(
        &mut reg,
        "listen_queries",
        "Frames to a listen address judged by the XDP program's ACL, by outcome (allowed, acl_dropped, acl_refused)",
    );
    for l in &s.acl.listen {
        for (outcome, n) in [
            ("allowed", l.allowed),
            ("acl_dropped", l.acl_dropped),
            ("acl_refused", l.acl_refused),
        ] {
            listen.set(labels(&[("listen", &l.address), ("outcome", outcome)]), n);
        }
    }
    let acl_refused = CounterFamily::new(
        &mut reg,
        "acl_refused",
        "Kernel-path queries from outside the ACL answered REFUSED, by queue",
    );
    let error_answers = CounterFamily::new(
        &mut reg,
        "error_answers",
        "Queries answered FORMERR, NOTIMP or BADVERS as the RFCs require, by reason (every path, TCP included)",
    );
    for (reason, n) in &s.totals.error_answers {
        error_answers.set(labels(&[("reason", reason)]), *n);
    }
    for q in &s.queues {
        let queue = q.queue.to_string();
        per_queue(
            &queue,
            &q.counters,
            &received,
            &answered,
            &dropped,
            &xsk_kernel,
        );
        tx_short.set(labels(&[("queue", &queue)]), q.counters.tx_ring_short);
        acl_refused.set(labels(&[("queue", &queue)]), q.counters.acl_refused);
        kicks.set(labels(&[("queue", &queue)]), q.counters.kicks);
        restarts.set(labels(&[("queue", &queue)]), u64::from(q.restarts));
        unkillable.set(labels(&[("queue", &queue)]), u64::from(q.unkillable));
        up.set(labels(&[("queue", &queue)]), i64::from(q.registered));
        let is_kernel_only = matches!(q.phase, crate::workers::supervisor::Phase::KernelOnly);
        kernel_only.set(labels(&[("queue", &queue)]), i64::from(is_kernel_only));
        let r = &q.counters.rings;
        for (ring, v) in [
            ("fill", r.fill),
            ("rx", r.rx),
            ("tx", r.tx),
            ("completion", r.completion),
            ("free", r.free),
            ("tx_backlog", r.tx_backlog),
        ] {
            rings.set(labels(&[("queue", &queue), ("ring", ring)]), i64::from(v));
        }
    }
    for r in &s.rules {
        rules.set(labels(&[("rule", &r.label)]), r.hits);
    }
    if !s.backends.is_empty() {
        let queries =
            CounterFamily::new(&mut reg, "backend_queries", "Queries forwarded, by backend");
        let replies =
            CounterFamily::new(&mut reg, "backend_replies", "Replies relayed, by backend");
        let timeouts = CounterFamily::new(
            &mut reg,
            "backend_timeouts",
            "Forwarded queries that timed out, by backend",
        );
        let healthy = GaugeFamily::new(
            &mut reg,
            "backend_up",
            "1 if the backend is up (health check and, for AF_XDP, a next-hop MAC)",
        );
        for b in &s.backends {
            let l = labels(&[("backend", &b.address), ("pool", &b.pool)]);
            queries.set(l.clone(), b.queries);
            replies.set(l.clone(), b.replies);
            timeouts.set(l.clone(), b.timeouts);
            healthy.set(l, i64::from(b.up));
        }
        let f = &s.totals.forward;
        let fwd = CounterFamily::new(
            &mut reg,
            "forward_events",
            "Forwarding events: oldest query evicted, pool down, stray/duplicate/bad replies, large replies, send errors",
        );
        for (event, n) in [
            ("evicted", f.evicted),
            ("pool_down", f.pool_down),
            ("stray_reply", f.stray_replies),
            ("duplicate_reply", f.duplicate_replies),
            ("bad_reply", f.bad_replies),
            ("large_reply", f.large_replies),
            ("send_error", f.send_errors),
            ("no_slot", f.no_slot),
            ("steered_reply", f.steered_replies),
        ] {
            fwd.set(labels(&[("event", event)]), n);
        }
        let in_flight = GaugeFamily::new(
            &mut reg,
            "forward_in_flight",
            "Forwarded queries awaiting a reply, by queue",
        );
        for q in &s.queues {
            in_flight.set(
                labels(&[("queue", &q.queue.to_string())]),
                q.counters.forward.in_flight as i64,
            );
        }
        reg.register_collector(Box::new(LatencyCollector(s.backends.clone())));
        let cache = CounterFamily::new(
            &mut reg,
            "cache_events",
            "Packet cache: hits (stale ones among them), misses, collisions, bypassed queries, inserts, evictions, uncacheable answers, by queue",
        );
        for q in &s.queues {
            let c = &q.counters.cache;
            let queue = q.queue.to_string();
            for (event, n) in [
                ("hit", c.hits),
                ("miss", c.misses),
                ("stale", c.stale),
                ("collision", c.collisions),
                ("bypassed", c.bypassed),
                ("insert", c.inserts),
                ("eviction", c.evictions),
                ("uncacheable", c.uncacheable),
            ] {
                cache.set(labels(&[("queue", &queue), ("event", event)]), n);
            }
        }
    }

    let tcp = CounterFamily::new(
        &mut reg,
        "tcp_events",
        "DNS over TCP: connections accepted and closed (by cause), queries, answers, backend failures",
    );
    let t = &s.tcp;
    for (event, n) in [
        ("accepted", t.accepted),
        ("refused_total", t.refused_total),
        ("refused_client", t.refused_client),
        ("acl_denied", t.acl_denied),
        ("idle_closed", t.idle_closed),
        ("io_closed", t.io_closed),
        ("duration_closed", t.duration_closed),
        ("query_limit_closed", t.query_limit_closed),
        ("bad_framing", t.bad_framing),
        ("query", t.queries),
        ("answer", t.answered),
        ("backend_failure", t.backend_failures),
    ] {
        tcp.set(labels(&[("event", event)]), n);
    }
    let tcp_open = GaugeFamily::new(&mut reg, "tcp_connections", "TCP client connections open");
    tcp_open.set(Vec::new(), t.open as i64);
    let workers_up = GaugeFamily::new(
        &mut reg,
        "worker_up",
        "1 if the worker (tcp-N, metrics) is running",
    );
    for w in &t.workers {
        workers_up.set(labels(&[("worker", &w.name)]), i64::from(w.running));
    }
    ready.set(Vec::new(), i64::from(s.ready));
    uptime.set(Vec::new(), s.uptime_secs as i64);

    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

/// The backends' reply latency as Prometheus histograms.
#[derive(Debug)]
struct LatencyCollector(Vec<crate::status::BackendStatus>);

impl prometheus_client::collector::Collector for LatencyCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::NoLabelSet;
        use prometheus_client::metrics::MetricType;
        use xdpdns_common::stats::LATENCY_BUCKETS_US;
        let mut family = encoder.encode_descriptor(
            "backend_latency_seconds",
            "Time from forwarding a query to relaying its reply, by backend",
            None,
            MetricType::Histogram,
        )?;
        for b in &self.0 {
            let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_US
                .iter()
                .enumerate()
                .map(|(i, us)| {
                    (
                        *us as f64 / 1e6,
                        b.latency_buckets.get(i).copied().unwrap_or(0),
                    )
                })
                .collect();
            buckets.push((
                f64::INFINITY,
                b.latency_buckets
                    .get(LATENCY_BUCKETS_US.len())
                    .copied()
                    .unwrap_or(0),
            ));
            let count = buckets.iter().map(|(_, n)| n).sum();
            let sum = b.latency_sum_us as f64 / 1e6;
            let l = labels(&[("backend", &b.address), ("pool", &b.pool)]);
            family
                .encode_family(&l)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

fn per_queue(
    queue: &str,
    c: &Counters,
    received: &CounterFamily,
    answered: &CounterFamily,
    dropped: &CounterFamily,
    xsk_kernel: &CounterFamily,
) {
    for (path, p) in [("xsk", &c.xsk), ("kernel", &c.kernel)] {
        received.set(labels(&[("queue", queue), ("path", path)]), p.received);
        answered.set(labels(&[("queue", queue), ("path", path)]), p.answered);
        for (reason, n) in &p.dropped {
            dropped.set(
                labels(&[("queue", queue), ("path", path), ("reason", reason)]),
                *n,
            );
        }
    }
    let k = &c.xsk_kernel;
    for (event, n) in [
        ("rx_dropped", k.rx_dropped),
        ("rx_invalid_descs", k.rx_invalid_descs),
        ("tx_invalid_descs", k.tx_invalid_descs),
        ("rx_ring_full", k.rx_ring_full),
        ("rx_fill_ring_empty_descs", k.rx_fill_ring_empty_descs),
        ("tx_ring_empty_descs", k.tx_ring_empty_descs),
    ] {
        xsk_kernel.set(labels(&[("queue", queue), ("event", event)]), n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn the_exposition_carries_every_family_with_labels() {
        let text = render(&crate::status::tests::snapshot());
        assert_eq!(
            value(
                &text,
                "xdpdns_cache_events_total{queue=\"1\",event=\"hit\"}"
            ),
            Some(10.0)
        );
        assert_eq!(
            value(
                &text,
                "xdpdns_cache_events_total{queue=\"0\",event=\"insert\"}"
            ),
            Some(3.0)
        );
        assert_eq!(
            value(&text, "xdpdns_received_total{queue=\"1\",path=\"xsk\"}"),
            Some(20.0)
        );
        assert_eq!(
            value(
                &text,
                "xdpdns_dropped_total{queue=\"0\",path=\"xsk\",reason=\"dns_short\"}"
            ),
            Some(1.0)
        );
        assert_eq!(value(&text, "xdpdns_dataplane_up{queue=\"0\"}"), Some(1.0));
        assert_eq!(
            value(
                &text,
                "xdpdns_rule_hits_total{rule=\"suffix=blocked.test.,action=nxdomain\"}"
            ),
            Some(4.0)
        );
        assert_eq!(
            value(
                &text,
                "xdpdns_backend_replies_total{backend=\"192.0.2.10:53\",pool=\"default\"}"
            ),
            Some(8.0)
        );
        assert_eq!(
            value(
                &text,
                "xdpdns_backend_latency_seconds_count{backend=\"192.0.2.10:53\",pool=\"default\"}"
            ),
            Some(2.0)
        );
        assert!(
            text.contains("xdpdns_backend_latency_seconds_bucket{le=\"0.0005\",backend=\"192.0.2.10:53\",pool=\"default\"} 2")
                || text.contains("xdpdns_backend_latency_seconds_bucket{backend=\"192.0.2.10:53\",pool=\"default\",le=\"0.0005\"} 2"),
            "{text}"
        );
        assert_eq!(
            value(&text, "xdpdns_forward_in_flight{queue=\"1\"}"),
            Some(4.0)
        );
        assert_eq!(value(&text, "xdpdns_ready"), Some(1.0));
        assert_eq!(
            value(
                &text,
                "xdpdns_listen_queries_total{listen=\"192.0.2.1:53\",outcome=\"acl_dropped\"}"
            ),
            Some(2.0)
        );
    }
}
