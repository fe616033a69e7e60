//! Counters a dataplane reports to the loader. The loader sums them across
//! restarts so every figure it shows is monotonic.

use serde::{Deserialize, Serialize};

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// Why a dataplane dropped a frame or datagram instead of answering.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $(#[doc = $doc] $variant,)*
        }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();

            /// Stable name, used in status output and metric labels.
            pub const fn name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }
        }
    };
}

drop_reasons! {
    FrameTruncated => "frame_truncated", "Ethernet/IP/UDP headers cut short.";
    NotUdp => "not_udp", "Not IPv4/IPv6 UDP (the XDP program should not redirect it).";
    BadIpHeader => "bad_ip_header", "IP version, header length or total length inconsistent with the frame.";
    IpOptions => "ip_options", "IPv4 options or IPv6 extension headers.";
    Fragment => "fragment", "An IPv4 fragment.";
    BadUdpLength => "bad_udp_length", "UDP length field inconsistent with the IP payload.";
    BadChecksum => "bad_checksum", "UDP checksum wrong (or zero over IPv6).";
    BadSource => "bad_source", "Source address or port that must not be answered (multicast, broadcast, port 0).";
    DnsShort => "dns_short", "DNS message shorter than its 12-byte header.";
    DnsResponse => "dns_response", "QR=1: a response, never answered (no loops).";
    DnsQdcount => "dns_qdcount", "QDCOUNT other than 1.";
    DnsBadQname => "dns_bad_qname", "Question name malformed: bad label, compression pointer, over 255 bytes.";
    DnsTruncated => "dns_truncated", "The question or a record runs past the end of the message.";
    DnsBadOpt => "dns_bad_opt", "OPT record malformed or not in the additional section's rules.";
    AnswerTooLarge => "answer_too_large", "The answer would not fit the buffer.";
    RuleDrop => "rule_drop", "A rule's action was drop.";
    FailDrop => "fail_drop", "Not forwarded (pool down, no slot, timeout) and the failure action is drop.";
    AclDenied => "acl_denied", "The client is outside the ACL and its action is drop (kernel path, TCP; XDP counts its own).";
    SendFailed => "send_failed", "The answer could not be sent (no socket for its address, or the send failed).";
    DnsTrailing => "dns_trailing", "Bytes after the last record the header announces.";
    DnsOpcode => "dns_opcode", "An opcode answered here is only QUERY: others go to a backend, or get NOTIMP.";
    DnsBadVersion => "dns_badvers", "EDNS version above 0 (RFC 6891: BADVERS).";
}

/// Counters of one path: AF_XDP frames, or kernel-stack datagrams.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathCounters {
    /// Frames (XSK) or datagrams (kernel sockets) received.
    pub received: u64,
    /// Answers sent.
    pub answered: u64,
    /// Drops by [`DropReason`], indexed by its discriminant.
    pub dropped: Vec<u64>,
}

impl PathCounters {
    pub fn new() -> Self {
        PathCounters {
            received: 0,
            answered: 0,
            dropped: vec![0; DropReason::COUNT],
        }
    }

    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.dropped[reason as usize] += 1;
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason as usize).copied().unwrap_or(0)
    }

    pub fn accumulate(&mut self, other: &PathCounters) {
        self.received = self.received.saturating_add(other.received);
        self.answered = self.answered.saturating_add(other.answered);
        if self.dropped.len() < other.dropped.len() {
            self.dropped.resize(other.dropped.len(), 0);
        }
        for (a, b) in self.dropped.iter_mut().zip(&other.dropped) {
            *a = a.saturating_add(*b);
        }
    }
}

/// The kernel's `XDP_STATISTICS` for one socket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XskKernelStats {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

impl XskKernelStats {
    fn accumulate(&mut self, o: &XskKernelStats) {
        self.rx_dropped = self.rx_dropped.saturating_add(o.rx_dropped);
        self.rx_invalid_descs = self.rx_invalid_descs.saturating_add(o.rx_invalid_descs);
        self.tx_invalid_descs = self.tx_invalid_descs.saturating_add(o.tx_invalid_descs);
        self.rx_ring_full = self.rx_ring_full.saturating_add(o.rx_ring_full);
        self.rx_fill_ring_empty_descs = self
            .rx_fill_ring_empty_descs
            .saturating_add(o.rx_fill_ring_empty_descs);
        self.tx_ring_empty_descs = self
            .tx_ring_empty_descs
            .saturating_add(o.tx_ring_empty_descs);
    }
}

/// Ring occupancy at the moment of the report (gauges, not summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingLevels {
    /// Frames handed to the kernel for reception.
    pub fill: u32,
    /// Frames received, not yet processed.
    pub rx: u32,
    /// Frames queued for transmission, not yet sent.
    pub tx: u32,
    /// Frames sent, not yet reclaimed.
    pub completion: u32,
    /// Frames owned by the dataplane, free for use.
    pub free: u32,
    /// Answers waiting for room in the TX ring.
    pub tx_backlog: u32,
}

/// Everything one dataplane counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneCounters {
    pub xsk: PathCounters,
    pub kernel: PathCounters,
    /// Times the TX ring had less room than answers waiting.
    pub tx_ring_short: u64,
    /// Wake-up system calls (TX kicks and fill-ring wake-ups).
    pub kicks: u64,
    /// Kicks that failed with an error other than EAGAIN/EBUSY/ENOBUFS.
    pub kick_errors: u64,
    /// Times the loop slept in poll() for lack of work.
    #[serde(default)]
    pub sleeps: u64,
    /// Loop iterations.
    #[serde(default)]
    pub iterations: u64,
    /// Kernel-socket sends that failed.
    pub kernel_send_errors: u64,
    /// Queries from clients outside the ACL answered REFUSED (kernel path, TCP).
    #[serde(default)]
    pub acl_refused: u64,
    pub xsk_kernel: XskKernelStats,
    pub rings: RingLevels,
    /// Queries answered or dropped per rule, in rule order; the last entry is
    /// the default action.
    #[serde(default)]
    pub rule_hits: Vec<u64>,
    /// Per backend, in `ForwardSpec` order.
    #[serde(default)]
    pub backends: Vec<BackendCounters>,
    #[serde(default)]
    pub forward: ForwardCounters,
    /// Queries answered with an error the RFCs require instead of their
    /// answer (FORMERR, NOTIMP, BADVERS), by [`DropReason`] discriminant.
    #[serde(default)]
    pub error_answers: Vec<u64>,
    #[serde(default)]
    pub cache: CacheCounters,
}

/// What one dataplane did with the shared packet cache.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheCounters {
    /// Queries answered from the cache (stale ones included).
    pub hits: u64,
    /// Queries looked up and not found (or found expired): forwarded.
    pub misses: u64,
    /// Hits on expired entries while their pool was down.
    pub stale: u64,
    /// Entries whose hash matched but whose contents did not (a collision,
    /// a race with a writer, corruption): treated as misses.
    pub collisions: u64,
    /// Queries that bypassed the cache: they carry an ECS or COOKIE option.
    pub bypassed: u64,
    /// Answers stored.
    pub inserts: u64,
    /// Of those, over another name's live entry (its bucket was full).
    pub evictions: u64,
    /// Answers not stored: TC=1, an rcode or negative answer the cache does
    /// not keep, per-client options, too large, malformed.
    pub uncacheable: u64,
    /// Entries removed by `xdpdns cache purge` (done by one dataplane for
    /// all).
    #[serde(default)]
    pub purged: u64,
}

impl CacheCounters {
    pub fn events(&self) -> [u64; 9] {
        [
            self.purged,
            self.hits,
            self.misses,
            self.stale,
            self.collisions,
            self.bypassed,
            self.inserts,
            self.evictions,
            self.uncacheable,
        ]
    }

    fn accumulate(&mut self, o: &CacheCounters) {
        self.hits = self.hits.saturating_add(o.hits);
        self.misses = self.misses.saturating_add(o.misses);
        self.stale = self.stale.saturating_add(o.stale);
        self.collisions = self.collisions.saturating_add(o.collisions);
        self.bypassed = self.bypassed.saturating_add(o.bypassed);
        self.inserts = self.inserts.saturating_add(o.inserts);
        self.evictions = self.evictions.saturating_add(o.evictions);
        self.uncacheable = self.uncacheable.saturating_add(o.uncacheable);
        self.purged = self.purged.saturating_add(o.purged);
    }
}

/// Upper bounds (µs) of the backend latency histogram buckets; a last,
/// unbounded bucket follows.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    250, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
];

/// What one dataplane saw of one backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendCounters {
    pub queries: u64,
    pub replies: u64,
    pub timeouts: u64,
    /// Reply latency histogram: counts per [`LATENCY_BUCKETS_US`] bucket plus overflow.
    pub latency: Vec<u64>,
    pub latency_sum_us: u64,
}

impl BackendCounters {
    /// Counters with the latency histogram in place.
    pub fn sized() -> Self {
        BackendCounters {
            latency: vec![0; LATENCY_BUCKETS_US.len() + 1],
            ..Default::default()
        }
    }

    pub fn observe(&mut self, us: u64) {
        if self.latency.len() != LATENCY_BUCKETS_US.len() + 1 {
            self.latency.resize(LATENCY_BUCKETS_US.len() + 1, 0);
        }
        let i = LATENCY_BUCKETS_US.partition_point(|b| *b < us);
        self.latency[i] += 1;
        self.latency_sum_us += us;
    }

    fn accumulate(&mut self, o: &BackendCounters) {
        self.queries = self.queries.saturating_add(o.queries);
        self.replies = self.replies.saturating_add(o.replies);
        self.timeouts = self.timeouts.saturating_add(o.timeouts);
        self.latency_sum_us = self.latency_sum_us.saturating_add(o.latency_sum_us);
        if self.latency.len() < o.latency.len() {
            self.latency.resize(o.latency.len(), 0);
        }
        for (a, b) in self.latency.iter_mut().zip(&o.latency) {
            *a = a.saturating_add(*b);
        }
    }
}

/// Forwarding events of one dataplane.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardCounters {
    /// Queries in flight now (a gauge; returns to 0 when load stops).
    pub in_flight: u64,
    /// Queries given up unanswered to make room for new ones: the queue's
    /// region of the in-flight table was full and they were a quarter of
    /// `timeout_ms` old.
    pub evicted: u64,
    /// Queries dropped, not forwarded: the queue's region was full of
    /// younger queries in flight (overload), or no index cell was free.
    #[serde(default)]
    pub no_slot: u64,
    /// Every backend of the pool was down.
    pub pool_down: u64,
    /// Shared in-flight entries that named no query of ours (another
    /// dataplane wrote them, or they are corrupt): nothing was sent.
    #[serde(default)]
    pub bad_entries: u64,
    /// Expired queries freed unanswered: a sweep answers a bounded number.
    #[serde(default)]
    pub sweep_limited: u64,
    /// Replies matching no query: wrong ID, unknown source, stale.
    pub stray_replies: u64,
    /// Replies to a query already answered (duplicates).
    pub duplicate_replies: u64,
    /// Replies that are not valid DNS answers to the query.
    pub bad_replies: u64,
    /// Replies larger than a frame, relayed through the kernel path.
    pub large_replies: u64,
    /// Sends to a backend that failed.
    pub send_errors: u64,
    /// Replies from socket backends read on the dataplane's receiving
    /// socket, where the loader's sk_lookup program steers what arrives on
    /// its pool sockets (the rest were read on the pool socket itself).
    #[serde(default)]
    pub steered_replies: u64,
}

impl ForwardCounters {
    /// Every event counter (the in-flight gauge left out): what must never
    /// go backwards within a dataplane's life.
    pub fn events(&self) -> [u64; 11] {
        [
            self.evicted,
            self.no_slot,
            self.pool_down,
            self.bad_entries,
            self.sweep_limited,
            self.stray_replies,
            self.duplicate_replies,
            self.bad_replies,
            self.large_replies,
            self.send_errors,
            self.steered_replies,
        ]
    }

    fn accumulate(&mut self, o: &ForwardCounters) {
        self.in_flight = o.in_flight;
        self.evicted = self.evicted.saturating_add(o.evicted);
        self.no_slot = self.no_slot.saturating_add(o.no_slot);
        self.pool_down = self.pool_down.saturating_add(o.pool_down);
        self.bad_entries = self.bad_entries.saturating_add(o.bad_entries);
        self.sweep_limited = self.sweep_limited.saturating_add(o.sweep_limited);
        self.stray_replies = self.stray_replies.saturating_add(o.stray_replies);
        self.duplicate_replies = self.duplicate_replies.saturating_add(o.duplicate_replies);
        self.bad_replies = self.bad_replies.saturating_add(o.bad_replies);
        self.large_replies = self.large_replies.saturating_add(o.large_replies);
        self.send_errors = self.send_errors.saturating_add(o.send_errors);
        self.steered_replies = self.steered_replies.saturating_add(o.steered_replies);
    }
}

impl DataplaneCounters {
    /// Re-indexes the per-backend counters after the backend list changed:
    /// new backend `i` takes the counters of old backend `map[i]`, if any;
    /// counters of backends no longer listed are dropped.
    pub fn remap_backends(&mut self, map: &[Option<usize>]) {
        let old = std::mem::take(&mut self.backends);
        self.backends = map
            .iter()
            .map(|m| m.and_then(|o| old.get(o).cloned()).unwrap_or_default())
            .collect();
    }

    /// Per-rule hits follow their rule to its new index after a reload
    /// (`map[new]` = old index, `None` for a new rule; see
    /// [`crate::config::rule_map`]).
    pub fn remap_rule_hits(&mut self, map: &[Option<usize>]) {
        let old = std::mem::take(&mut self.rule_hits);
        if old.is_empty() {
            return;
        }
        self.rule_hits = map
            .iter()
            .map(|m| m.and_then(|o| old.get(o).copied()).unwrap_or(0))
            .collect();
    }

    /// Counters for `n` backends, sized now so that counting never allocates.
    pub fn size_backends(&mut self, n: usize) {
        self.backends.resize_with(n, BackendCounters::sized);
        for b in &mut self.backends {
            b.latency.resize(LATENCY_BUCKETS_US.len() + 1, 0);
        }
    }

    /// The counters of backend `i`, growing the list as needed.
    pub fn backend(&mut self, i: usize) -> &mut BackendCounters {
        if self.backends.len() <= i {
            self.backends.resize(i + 1, BackendCounters::default());
        }
        &mut self.backends[i]
    }
}

impl DataplaneCounters {
    pub fn new() -> Self {
        DataplaneCounters {
            xsk: PathCounters::new(),
            kernel: PathCounters::new(),
            error_answers: vec![0; DropReason::COUNT],
            ..Default::default()
        }
    }

    /// Counts a query answered with an error code for `reason`.
    #[inline]
    pub fn error_answer(&mut self, reason: DropReason) {
        if let Some(n) = self.error_answers.get_mut(reason as usize) {
            *n += 1;
        }
    }

    pub fn error_answers_for(&self, reason: DropReason) -> u64 {
        self.error_answers
            .get(reason as usize)
            .copied()
            .unwrap_or(0)
    }

    /// The largest event counter (gauges and the latency sum left out): what
    /// the loader compares with how many events a life could have counted.
    pub fn largest(&self) -> u64 {
        let k = &self.xsk_kernel;
        let paths = [&self.xsk, &self.kernel].into_iter().flat_map(|p| {
            [p.received, p.answered]
                .into_iter()
                .chain(p.dropped.iter().copied())
        });
        let backends = self.backends.iter().flat_map(|b| {
            [b.queries, b.replies, b.timeouts]
                .into_iter()
                .chain(b.latency.iter().copied())
        });
        [
            self.tx_ring_short,
            self.kicks,
            self.kick_errors,
            self.sleeps,
            self.iterations,
            self.kernel_send_errors,
            self.acl_refused,
            k.rx_dropped,
            k.rx_invalid_descs,
            k.tx_invalid_descs,
            k.rx_ring_full,
            k.rx_fill_ring_empty_descs,
            k.tx_ring_empty_descs,
        ]
        .into_iter()
        .chain(self.forward.events())
        .chain(self.cache.events())
        .chain(paths)
        .chain(self.rule_hits.iter().copied())
        .chain(self.error_answers.iter().copied())
        .chain(backends)
        .max()
        .unwrap_or(0)
    }

    /// Adds `other`'s counters to ours; ring gauges take `other`'s values.
    pub fn accumulate(&mut self, other: &DataplaneCounters) {
        self.xsk.accumulate(&other.xsk);
        self.kernel.accumulate(&other.kernel);
        self.tx_ring_short = self.tx_ring_short.saturating_add(other.tx_ring_short);
        self.kicks = self.kicks.saturating_add(other.kicks);
        self.kick_errors = self.kick_errors.saturating_add(other.kick_errors);
        self.sleeps = self.sleeps.saturating_add(other.sleeps);
        self.iterations = self.iterations.saturating_add(other.iterations);
        self.kernel_send_errors = self
            .kernel_send_errors
            .saturating_add(other.kernel_send_errors);
        self.acl_refused = self.acl_refused.saturating_add(other.acl_refused);
        self.xsk_kernel.accumulate(&other.xsk_kernel);
        self.rings = other.rings;
        if self.rule_hits.len() < other.rule_hits.len() {
            self.rule_hits.resize(other.rule_hits.len(), 0);
        }
        for (a, b) in self.rule_hits.iter_mut().zip(&other.rule_hits) {
            *a = a.saturating_add(*b);
        }
        for (i, b) in other.backends.iter().enumerate() {
            self.backend(i).accumulate(b);
        }
        self.forward.accumulate(&other.forward);
        self.cache.accumulate(&other.cache);
        if self.error_answers.len() < other.error_answers.len() {
            self.error_answers.resize(other.error_answers.len(), 0);
        }
        for (a, b) in self.error_answers.iter_mut().zip(&other.error_answers) {
            *a = a.saturating_add(*b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_have_unique_names_and_dense_indices() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }

    #[test]
    fn accumulation_sums_counters_and_keeps_latest_gauges() {
        let mut total = DataplaneCounters::new();
        let mut a = DataplaneCounters::new();
        a.xsk.received = 10;
        a.xsk.drop(DropReason::DnsShort);
        a.rings.fill = 7;
        let mut b = DataplaneCounters::new();
        b.xsk.received = 5;
        b.kernel.answered = 2;
        b.xsk.drop(DropReason::DnsShort);
        b.rings.fill = 3;
        total.accumulate(&a);
        total.accumulate(&b);
        assert_eq!(total.xsk.received, 15);
        assert_eq!(total.kernel.answered, 2);
        assert_eq!(total.xsk.dropped_for(DropReason::DnsShort), 2);
        assert_eq!(total.rings.fill, 3);
    }

    #[test]
    fn backend_counters_follow_their_backend_through_a_remap() {
        let mut c = DataplaneCounters::new();
        c.backend(0).queries = 10;
        c.backend(1).queries = 20;
        c.backend(2).queries = 30;
        // Backend 1 removed, 2 moves to 0, 0 to 1, a new one at 2.
        c.remap_backends(&[Some(2), Some(0), None]);
        let q: Vec<u64> = c.backends.iter().map(|b| b.queries).collect();
        assert_eq!(q, [30, 10, 0]);
        // A stale index (beyond the old list) yields fresh counters.
        c.remap_backends(&[Some(7)]);
        assert_eq!(c.backends.len(), 1);
        assert_eq!(c.backends[0].queries, 0);
    }
}

/// What one TCP worker counted. Monotonic except `open`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpCounters {
    /// Connections accepted and kept (within every limit).
    pub accepted: u64,
    /// Connections open now (a gauge).
    pub open: u64,
    /// Closed at once: the worker had `max_connections` open.
    pub refused_total: u64,
    /// Closed at once: the client had `max_connections_per_client` open.
    pub refused_client: u64,
    /// Closed at once: the client is outside the ACL.
    pub acl_denied: u64,
    /// Closed for silence between queries (`idle_timeout_ms`).
    pub idle_closed: u64,
    /// Closed for a message not read, or an answer not written, within
    /// `io_timeout_ms` (slow senders, zero-window readers).
    pub io_closed: u64,
    /// Closed at `max_connection_duration_ms`.
    pub duration_closed: u64,
    /// Closed after `max_queries_per_connection`.
    pub query_limit_closed: u64,
    /// Closed for a length prefix shorter than a DNS header, or a response.
    pub bad_framing: u64,
    /// Backend connections opened, and attempts that failed.
    pub backend_connects: u64,
    pub backend_connect_errors: u64,
    /// Forwarded queries that got no answer: the backend connection failed
    /// or `forwarding.timeout_ms` passed.
    pub backend_failures: u64,
    /// Backend answers matching no query in flight (wrong ID or question).
    pub backend_stray: u64,
    /// Queries received, answered, and dropped by reason.
    pub queries: PathCounters,
    /// The pipeline's counters: rule hits, per-backend figures, ACL REFUSED,
    /// pools down.
    pub pipeline: DataplaneCounters,
}

impl TcpCounters {
    pub fn new() -> Self {
        TcpCounters {
            queries: PathCounters::new(),
            pipeline: DataplaneCounters::new(),
            ..Default::default()
        }
    }

    /// Adds `o` to these (the gauge included: totals over workers).
    pub fn accumulate(&mut self, o: &TcpCounters) {
        self.accepted = self.accepted.saturating_add(o.accepted);
        self.open = self.open.saturating_add(o.open);
        self.refused_total = self.refused_total.saturating_add(o.refused_total);
        self.refused_client = self.refused_client.saturating_add(o.refused_client);
        self.acl_denied = self.acl_denied.saturating_add(o.acl_denied);
        self.idle_closed = self.idle_closed.saturating_add(o.idle_closed);
        self.io_closed = self.io_closed.saturating_add(o.io_closed);
        self.duration_closed = self.duration_closed.saturating_add(o.duration_closed);
        self.query_limit_closed = self.query_limit_closed.saturating_add(o.query_limit_closed);
        self.bad_framing = self.bad_framing.saturating_add(o.bad_framing);
        self.backend_connects = self.backend_connects.saturating_add(o.backend_connects);
        self.backend_connect_errors = self
            .backend_connect_errors
            .saturating_add(o.backend_connect_errors);
        self.backend_failures = self.backend_failures.saturating_add(o.backend_failures);
        self.backend_stray = self.backend_stray.saturating_add(o.backend_stray);
        self.queries.accumulate(&o.queries);
        self.pipeline.accumulate(&o.pipeline);
    }
}
